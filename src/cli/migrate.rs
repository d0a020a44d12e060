//! `regferry migrate`: copy a registry (or part of it) once, resumably.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use regferry::engine::discover::{AllTags, RepoFilter, Scope, TagSelector};
use regferry::engine::execute::{Cancel, ExecuteOptions};
use regferry::engine::plan::RepoMapping;
use regferry::engine::rename::{Rename, RenameRule};
use regferry::policy::TagFilter;
use regferry::engine::platforms::{FilterMode, PlatformFilter};
use regferry::engine::referrers::ReferrerOptions;
use regferry::engine::stats::Stats;
use regferry::job::{Job, JobSpec, Next};
use regferry::registry::Limits;
use regferry::state::ExecutionStatus;

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

    #[command(flatten)]
    pub tags: TagArgs,

    /// Rename repositories: REGEX=TEMPLATE over the name relative to the --from prefix
    /// (whole name unless the regex says ^ or $), e.g. 'library/(.*)=mirror/$1' or
    /// 'team/([^/]+)/([^/]+)=team-$1-$2'. Repeatable; the first rule that matches decides;
    /// other names are kept. Two names renamed to one are refused with both names.
    #[arg(long = "rename", value_name = "REGEX=TEMPLATE", value_parser = parse_rename)]
    pub rename: Vec<RenameRule>,
}

/// Which tags to copy (the policy's `tags:` rules as flags).
#[derive(Debug, Args, Clone, Default)]
pub struct TagArgs {
    /// Only tags matching REGEX (the whole tag unless the regex says ^ or $). Repeatable.
    #[arg(long = "tag", value_name = "REGEX", value_parser = parse_tag_regex)]
    pub tags: Vec<regex::Regex>,

    /// Only versions in this semver range (e.g. '>=1.20, <2'); tags that are not versions
    /// are unaffected (combine with --tag to leave them out).
    #[arg(long, value_name = "RANGE", value_parser = parse_semver)]
    pub semver: Option<semver::VersionReq>,

    /// Only the newest N versions of each repository (tags that are not versions are unaffected).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub latest: Option<u32>,
}

impl TagArgs {
    /// The tag rules, or `None` for every tag; with the words that make them part of the job's key.
    pub fn filter(&self) -> Option<(TagFilter, Vec<String>)> {
        if self.tags.is_empty() && self.semver.is_none() && self.latest.is_none() {
            return None;
        }
        let mut words: Vec<String> = self.tags.iter().map(|r| format!("tag:{r}")).collect();
        words.extend(self.semver.as_ref().map(|s| format!("semver:{s}")));
        words.extend(self.latest.map(|n| format!("latest:{n}")));
        let filter = TagFilter {
            include: self.tags.clone(),
            semver: self.semver.clone(),
            latest: self.latest.map(|n| n as usize),
            signatures: true,
            ..TagFilter::default()
        };
        Some((filter, words))
    }
}

fn parse_tag_regex(s: &str) -> Result<regex::Regex, String> {
    regferry::policy::tags::anchored(s).map_err(|e| e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
}

fn parse_semver(s: &str) -> Result<semver::VersionReq, String> {
    semver::VersionReq::parse(s).map_err(|e| format!("not a semver range ({e}); e.g. '>=1.2, <2' or '~1.4'"))
}

fn parse_rename(s: &str) -> Result<RenameRule, String> {
    RenameRule::parse(s).map_err(|e| e.to_string())
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
    let mut scope_words = args.repos.clone();
    scope_words.extend(args.rename.iter().map(|r| format!("rename:{r}")));
    let mapping = RepoMapping::new(source.url.prefix(), destination.url.prefix()).with_rename(Rename::new(args.rename.clone()), false);
    // Every tag is in the plan unless tag rules select some: only then is a
    // signature whose subject no planned tag names one of an untagged manifest.
    let selected = args.tags.filter();
    let every_tag = selected.is_none();
    let tags: Arc<dyn TagSelector> = match selected {
        Some((filter, words)) => {
            scope_words.extend(words);
            Arc::new(filter)
        }
        None => Arc::new(AllTags),
    };
    let concurrency = usize::from(args.concurrency);
    let platforms = match args.platforms.is_empty() {
        true => None,
        false => Some(
            PlatformFilter::parse(&args.platforms, args.platform_filter).map_err(|e| CliError::usage(format!("--platform: {e}")))?,
        ),
    };
    scope_words.extend(platforms.as_ref().map(PlatformFilter::scope_word));
    let spec = JobSpec {
        kind: "migrate".into(),
        policy: None,
        scope: Scope {
            referrers: Arc::new(ReferrerOptions { enabled: !args.no_referrers, types: args.referrer_types.clone(), untagged_subjects: every_tag }),
            immutable: args.missing_only,
            platforms: platforms.map(Arc::new),
            ..Scope::new(mapping, repos, tags)
        },
        scope_words,
        source,
        destination,
        overwrite: true,
        reversed: false,
        execute: ExecuteOptions { concurrency, attempts: args.attempts, ..ExecuteOptions::default() },
        client: args.timeouts.client_options(),
    };
    let title = format!("migrate {} → {}", spec.source.url, spec.destination.url);
    run_job(spec, &args.state, Output { dry_run: args.dry_run, json: args.json, quiet, title }, |_| Ok(())).await
}

/// How a one-shot job reports.
pub struct Output {
    pub dry_run: bool,
    pub json: bool,
    pub quiet: bool,
    /// The summary's first line.
    pub title: String,
}

/// Plan and run one job (migrate, copy) with a progress display, print its
/// plan (dry run) or summary, and pick the exit code. `check_plan` may
/// refuse a plan before anything is copied (copy: the tag must exist).
pub async fn run_job(
    spec: JobSpec,
    state_args: &StateArgs,
    out: Output,
    check_plan: impl FnOnce(&regferry::engine::plan::Plan) -> Result<(), CliError>,
) -> Result<u8, CliError> {
    let (from, to) = (spec.source.url.to_string(), spec.destination.url.to_string());
    let concurrency = spec.execute.concurrency;
    let job = Job::connect(spec).await?;
    let state = if out.dry_run { None } else { Some(super::open_state(state_args, concurrency).await?) };

    tracing::info!("planning: listing repositories and tags at {from}");
    let planning = super::progress::Planning::start(job.spec.scope.counters.clone(), out.quiet || out.json, "planning");
    let Some(state) = state else {
        let plan = job.plan_read_only().await;
        planning.finish().await;
        let plan = plan?;
        log_plan(&plan);
        check_plan(&plan)?;
        if out.json {
            println!("{}", output::plan_json(&plan));
        } else {
            print!("{}", output::plan_text(&plan, &from, &to));
        }
        return Ok(if plan.problems.is_empty() { exit::OK } else { exit::FAILED });
    };

    // Planned and run in parts of whole repositories (see `job::parts`):
    // one part unless the scope holds more tags than a part.
    let first = match job.parts(Some(&state)).await {
        // (The first part is always given, even with no repository.)
        Ok(mut parts) => parts.next().await.unwrap_or_else(|| Ok(Default::default())).map(|plan| (parts, plan)),
        Err(e) => Err(e),
    };
    planning.finish().await;
    let (mut parts, mut plan) = first?;
    log_plan(&plan);
    check_plan(&plan)?;

    let stats = Arc::new(Stats::default());
    let cancel = Cancel::default();
    signals::watch(cancel.clone(), Duration::from_secs(30));
    let progress = Progress::start(stats.clone(), out.quiet || out.json);
    let report = async {
        let lease = job.wait_for_lease(&state, &cancel).await?;
        let mut session = job.session(&state, lease);
        let ran = loop {
            // The next part is planned while this one runs.
            let (end, next) = parts.next_while(session.run_part(&plan, &stats, &cancel), &cancel.stop).await;
            match end {
                Err(e) => break Err(e),
                Ok(end) if end.canceled => break Ok(()),
                Ok(_) => {}
            }
            plan = match next {
                Next::Done => break Ok(()),
                Next::Part(Ok(next)) => next,
                Next::Part(Err(e)) => break Err(e),
                Next::Stopped => {
                    session.stopped();
                    break Ok(());
                }
            };
            log_plan(&plan);
        };
        match ran {
            Ok(()) => session.close(&stats).await,
            Err(e) => {
                session.release().await;
                Err(e)
            }
        }
    }
    .await;
    progress.finish().await;
    let report = report?;

    if out.json {
        println!("{}", output::report_json(&report));
    } else {
        print!("{}", output::report_text(&report, &out.title));
    }
    Ok(match report.status {
        ExecutionStatus::Succeeded => exit::OK,
        ExecutionStatus::Canceled => exit::INTERRUPTED,
        _ => exit::FAILED,
    })
}

/// Say what a plan (or a part of one) holds.
fn log_plan(plan: &regferry::engine::plan::Plan) {
    tracing::info!(
        repositories = plan.repositories,
        tags = plan.items.len(),
        to_copy = plan.count_copy(),
        problems = plan.problems.len(),
        "plan ready"
    );
}
