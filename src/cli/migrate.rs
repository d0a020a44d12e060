//! `regferry migrate`: copy a registry (or part of it) once, resumably.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use regferry::engine::discover::{AllTags, RepoFilter, Scope};
use regferry::engine::execute::{Cancel, ExecuteOptions};
use regferry::engine::plan::RepoMapping;
use regferry::engine::platforms::{FilterMode, PlatformFilter};
use regferry::engine::referrers::ReferrerOptions;
use regferry::engine::stats::Stats;
use regferry::job::{Job, JobSpec};
use regferry::registry::Limits;
use regferry::state::{ExecutionStatus, StateDb};

use super::output;
use super::progress::Progress;
use super::{CliError, RegistryArgs, StateArgs, TimeoutArgs, exit, parse_chunk_size, signals};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub registries: RegistryArgs,

    #[command(flatten)]
    pub state: StateArgs,

    /// Tags copied at once (also the number of blob streams open at once).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256), value_name = "N")]
    pub concurrency: u16,

    /// Only repositories matching GLOB (relative to the --from prefix; '*' stays within one
    /// path component, '**' crosses them). Repeatable. Plain names also work on registries
    /// that serve no catalog.
    #[arg(long = "repo", value_name = "GLOB")]
    pub repos: Vec<String>,

    /// Print what would be copied and why (missing, digest differs), and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Attempts per tag within this run, with exponential backoff between them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100), value_name = "N")]
    pub attempts: u32,

    /// Print the plan (with --dry-run) or the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    /// At most N requests per second to the source.
    #[arg(long, value_parser = parse_rate, value_name = "N")]
    pub from_rps: Option<f64>,

    /// At most N requests per second to the destination.
    #[arg(long, value_parser = parse_rate, value_name = "N")]
    pub to_rps: Option<f64>,

    /// At most SIZE blob bytes per second from the source, e.g. 50MiB.
    #[arg(long, value_parser = regferry::registry::gate::parse_size, value_name = "SIZE")]
    pub from_bandwidth: Option<u64>,

    /// At most SIZE blob bytes per second to the destination, e.g. 50MiB.
    #[arg(long, value_parser = regferry::registry::gate::parse_size, value_name = "SIZE")]
    pub to_bandwidth: Option<u64>,

    /// Upload blobs to the destination in PATCH chunks of SIZE (e.g. 8MiB) instead of one
    /// streamed PUT each. Without it, regferry switches to 8MiB chunks by itself when the
    /// destination refuses a whole blob as too large (413).
    #[arg(long, value_parser = parse_chunk_size, value_name = "SIZE")]
    pub to_chunk_size: Option<u64>,

    /// Copy only these platforms of multi-platform images (os/arch[/variant], e.g.
    /// linux/amd64). Repeatable, or a comma-separated list. Single-platform images are
    /// copied unchanged.
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub platforms: Vec<String>,

    /// With --platform: rewrite pushes a new index holding only those platforms (new
    /// digest; every registry accepts it); sparse pushes the original index (digest kept)
    /// with only their manifests, which registries that validate indexes refuse.
    #[arg(long, value_name = "MODE", requires = "platforms", value_parser = parse_filter_mode, default_value = "rewrite")]
    pub platform_filter: FilterMode,

    /// Do not copy OCI referrers (signatures, SBOMs, attestations attached with a `subject`)
    /// nor their `sha256-<hex>` fallback tags. By default they travel with their subject.
    #[arg(long)]
    pub no_referrers: bool,

    /// Copy only referrers with this artifactType (e.g. application/spdx+json). Repeatable.
    #[arg(long = "referrer-type", value_name = "MEDIA_TYPE", value_parser = parse_artifact_type, conflicts_with = "no_referrers")]
    pub referrer_types: Vec<String>,

    /// Immutable tags: a tag the destination already lists is never checked again (no
    /// per-tag request; a changed source tag is then not copied). Signature and referrer
    /// fallback tags are still compared.
    #[arg(long)]
    pub missing_only: bool,
}

fn parse_artifact_type(s: &str) -> Result<String, String> {
    regferry::engine::referrers::check_artifact_type(s).map(|()| s.to_string())
}

fn parse_filter_mode(s: &str) -> Result<FilterMode, String> {
    s.parse()
}

/// A rate above zero (requests per second).
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("{s:?} is not a rate above zero (requests per second, e.g. 20 or 0.5)")),
    }
}

pub async fn run(args: MigrateArgs, quiet: bool) -> Result<u8, CliError> {
    let (mut source, mut destination) = args.registries.endpoints()?;
    source.limits = Limits { requests_per_second: args.from_rps, bytes_per_second: args.from_bandwidth };
    destination.limits = Limits { requests_per_second: args.to_rps, bytes_per_second: args.to_bandwidth };
    destination.chunk_size = args.to_chunk_size;
    let repos = RepoFilter::new(&args.repos, &[]).map_err(|e| CliError::usage(format!("--repo: {e}")))?;
    let mapping = RepoMapping::new(source.url.prefix(), destination.url.prefix());
    let concurrency = usize::from(args.concurrency);
    let platforms = match args.platforms.is_empty() {
        true => None,
        false => Some(
            PlatformFilter::parse(&args.platforms, args.platform_filter).map_err(|e| CliError::usage(format!("--platform: {e}")))?,
        ),
    };
    let mut scope_words = args.repos.clone();
    scope_words.extend(platforms.as_ref().map(PlatformFilter::scope_word));
    let spec = JobSpec {
        kind: "migrate".into(),
        policy: None,
        scope: Scope {
            referrers: Arc::new(ReferrerOptions { enabled: !args.no_referrers, types: args.referrer_types.clone() }),
            immutable: args.missing_only,
            platforms: platforms.map(Arc::new),
            ..Scope::new(mapping, repos, Arc::new(AllTags))
        },
        scope_words,
        source,
        destination,
        overwrite: true,
        reversed: false,
        execute: ExecuteOptions { concurrency, attempts: args.attempts, ..ExecuteOptions::default() },
        client: args.timeouts.client_options(),
    };
    let (from, to) = (spec.source.url.to_string(), spec.destination.url.to_string());

    let job = Job::connect(spec).await?;
    let state = if args.dry_run { None } else { Some(StateDb::open(&args.state.state).await?.with_worker(args.state.worker(false))) };

    tracing::info!("planning: listing repositories and tags at {from}");
    let plan = if args.dry_run { job.plan_read_only().await? } else { job.plan_remembering(state.as_ref()).await? };
    tracing::info!(
        repositories = plan.repositories,
        tags = plan.items.len(),
        to_copy = plan.count_copy(),
        problems = plan.problems.len(),
        "plan ready"
    );

    if args.dry_run {
        if args.json {
            println!("{}", output::plan_json(&plan));
        } else {
            print!("{}", output::plan_text(&plan, &from, &to));
        }
        return Ok(if plan.problems.is_empty() { exit::OK } else { exit::FAILED });
    }

    let stats = Arc::new(Stats::default());
    let cancel = Cancel::default();
    signals::watch(cancel.clone(), Duration::from_secs(30));
    let progress = Progress::start(stats.clone(), quiet || args.json);
    let report = job.run(&plan, state.as_ref(), &stats, &cancel).await;
    progress.finish().await;
    let report = report?;

    if args.json {
        println!("{}", output::report_json(&report));
    } else {
        print!("{}", output::report_text(&report, &format!("migrate {from} → {to}")));
    }
    Ok(match report.status {
        ExecutionStatus::Succeeded => exit::OK,
        ExecutionStatus::Canceled => exit::INTERRUPTED,
        _ => exit::FAILED,
    })
}
