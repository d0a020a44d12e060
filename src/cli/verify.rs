//! `regferry verify`: prove that a destination holds every in-scope tag at
//! the same digest and media type (and, with --deep, everything needed to
//! pull it), for two registries given on the command line or for policies;
//! with --repair, copy again what the deep check found missing first.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use regferry::pass::jobs_of;
use regferry::state::lag::Lag;
use regferry::dr::repair::RepairReport;
use regferry::dr::verify::{ProblemKind, VerifyOptions, VerifyReport, check_required, verify};
use regferry::scheme::Scheme;
use regferry::engine::discover::{AllTags, RepoFilter, Scope};
use regferry::engine::plan::RepoMapping;
use regferry::engine::platforms::{FilterMode, PlatformFilter};
use regferry::job::{Job, JobError};
use regferry::registry::{ClientOptions, Endpoint};
use regferry::state::StateDb;

use super::{AccessArgs, CliError, StateArgs, TimeoutArgs, exit};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Source registry: https://host[:port][/prefix] (https when no scheme), http:// for plain HTTP,
    /// or oci:/path, a directory of OCI image layouts (one per repository).
    #[arg(long, value_name = "URL", requires = "to")]
    pub from: Option<String>,

    /// Destination registry: https://host[:port][/prefix]; the prefix is prepended to repository names;
    /// or oci:/path (an export for an air-gapped site: oci:/path/REPO:TAG for skopeo).
    #[arg(long, value_name = "URL", requires = "from")]
    pub to: Option<String>,

    #[command(flatten)]
    pub access: AccessArgs,

    /// Verify the scope of the policies in this directory (or file) instead of --from/--to,
    /// in each policy's current direction, with its replication lag from the state database.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["from", "to"])]
    pub policies: Option<PathBuf>,

    /// Policies to verify (default: all); only with --policies.
    #[arg(value_name = "NAME", requires = "policies")]
    pub names: Vec<String>,

    #[command(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    /// Only repositories matching GLOB (relative to the --from prefix). Repeatable.
    #[arg(long = "repo", value_name = "GLOB", conflicts_with = "policies")]
    pub repos: Vec<String>,

    /// Also prove pullability: every child manifest and every blob of every tag exists at
    /// the destination (each distinct blob checked once).
    #[arg(long)]
    pub deep: bool,

    /// With --deep: copy again, from the source, exactly what the deep check found missing
    /// at the destination (blobs, then child manifests, by digest; no tag is written), then
    /// verify again. What could not be repaired is still reported.
    #[arg(long, requires = "deep")]
    pub repair: bool,

    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256), value_name = "N")]
    pub concurrency: u16,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// With --from/--to: compare multi-platform images as `migrate --platform` copied them
    /// (only these platforms; repeatable or a comma-separated list).
    #[arg(long = "platform", value_name = "PLATFORM", conflicts_with = "policies")]
    pub platforms: Vec<String>,

    /// With --platform: the --platform-filter the copy used (rewrite or sparse).
    #[arg(long, value_name = "MODE", requires = "platforms", default_value = "rewrite", value_parser = |s: &str| s.parse::<FilterMode>())]
    pub platform_filter: FilterMode,
}

/// One comparison: its report, or why it could not run.
pub(super) struct Outcome {
    policy: Option<String>,
    reversed: bool,
    source: String,
    destination: String,
    result: Result<VerifyReport, String>,
    /// What `--repair` copied again (before the verification reported).
    repair: Option<RepairReport>,
}

/// Verify, and with `repair` copy again what the deep check found missing, then verify again.
async fn checked(src: Arc<dyn Scheme>, dst: &Arc<dyn Scheme>, scope: &Scope, options: &VerifyOptions, repair: bool) -> (Result<VerifyReport, String>, Option<RepairReport>) {
    let first = verify(&*src, &**dst, scope, options).await.map_err(|e| JobError::from(e).to_string());
    let broken = |r: &VerifyReport| r.problems.iter().any(|p| p.kind == ProblemKind::NotPullable);
    let (result, repaired) = match first {
        Ok(r) if repair && broken(&r) => {
            let done = regferry::dr::repair::repair(src.clone(), &**dst, &r).await;
            let again = verify(&*src, &**dst, scope, options).await.map_err(|e| JobError::from(e).to_string());
            (again, Some(done))
        }
        other => (other, None),
    };
    // Tags at the destination that the policy's `require:` would not let through.
    let result = match result {
        Ok(mut report) => {
            check_required(dst, scope, &mut report, options.concurrency).await;
            Ok(report)
        }
        Err(e) => Err(e),
    };
    (result, repaired)
}

fn short(d: Option<&str>) -> &str {
    d.unwrap_or("-")
}

pub(super) fn text(o: &Outcome) -> String {
    let mut out = String::new();
    let title = match &o.policy {
        Some(p) => format!("{p}{} {} → {}", if o.reversed { " (reversed)" } else { "" }, o.source, o.destination),
        None => format!("{} → {}", o.source, o.destination),
    };
    if let Some(rep) = &o.repair {
        let _ = writeln!(
            out,
            "repair {title}: {} blob(s), {} manifest(s) copied again{}",
            rep.blobs.len(),
            rep.manifests.len(),
            if rep.errors.is_empty() { String::new() } else { format!("; not repaired: {}", rep.errors.join("; ")) }
        );
    }
    let r = match &o.result {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "verify {title}: failed: {e}");
            return out;
        }
    };
    out.push_str(&report_text(&title, r));
    out
}

/// The text of one verification report under `title`.
pub(super) fn report_text(title: &str, r: &VerifyReport) -> String {
    let mut out = String::new();
    let verdict = if r.ok() { "identical" } else { "DIFFERENT" };
    let _ = writeln!(out, "verify {title}{}: {verdict}", if r.deep { " (deep)" } else { "" });
    let _ = writeln!(
        out,
        "  {} repositories, {} tags: {} identical, {} missing, {} digest differs, {} media type differs, {} only at destination{}{}{}, {} errors",
        r.repositories,
        r.tags,
        r.identical,
        r.missing,
        r.digest_differs,
        r.media_type_differs,
        r.only_at_destination,
        if r.deep { format!(", {} not pullable", r.not_pullable) } else { String::new() },
        if r.referrers_missing > 0 { format!(", {} with referrers missing", r.referrers_missing) } else { String::new() },
        if r.unsigned > 0 { format!(", {} unsigned", r.unsigned) } else { String::new() },
        r.errors
    );
    if r.no_selected_platform > 0 {
        let _ = writeln!(out, "  {} tag(s) not replicated: an index with none of the selected platforms, or its signature", r.no_selected_platform);
    }
    for n in &r.narrowed {
        let _ = writeln!(out, "  {:<20} {}:{}  {}", "platforms", n.destination_repository, n.tag, n.selection);
    }
    if r.deep {
        let _ = writeln!(out, "  checked {} manifests and {} blobs at the destination", r.manifests_checked, r.blobs_checked);
    }
    for p in &r.problems {
        let mut detail = Vec::new();
        match p.kind {
            regferry::dr::verify::ProblemKind::DigestDiffers => {
                detail.push(format!("source {}, destination {}", short(p.source_digest.as_deref()), short(p.destination_digest.as_deref())));
            }
            regferry::dr::verify::ProblemKind::MediaTypeDiffers => detail.push(format!(
                "source {}, destination {}",
                short(p.source_media_type.as_deref()),
                short(p.destination_media_type.as_deref())
            )),
            _ => {}
        }
        for m in &p.missing_manifests {
            detail.push(format!("missing manifest {m}"));
        }
        for b in &p.missing_blobs {
            detail.push(format!("missing blob {b}"));
        }
        if let Some(e) = &p.error {
            detail.push(e.clone());
        }
        let detail = if detail.is_empty() { String::new() } else { format!("  ({})", detail.join("; ")) };
        let _ = writeln!(out, "  {:<20} {}{detail}", p.kind.label(), p.name());
    }
    for g in &r.unmatched_patterns {
        let _ = writeln!(out, "  warning: repository pattern {g:?} matches no repository at {}", r.source);
    }
    out
}

fn lag_text(l: &Lag) -> String {
    let now = regferry::state::now_ms();
    let ago = |t: i64| humantime::format_duration(std::time::Duration::from_secs(((now - t).max(0) / 1000) as u64)).to_string();
    match l.lag_seconds {
        None => format!("lag {} ({}): unknown, no pass recorded in this direction\n", l.policy, l.direction),
        Some(s) => format!(
            "lag {} ({}): {} ({} tag(s) outstanding{})\n",
            l.policy,
            l.direction,
            humantime::format_duration(std::time::Duration::from_secs(s as u64)),
            l.outstanding_tags,
            l.last_pass_at.map(|t| format!(", last pass {} ago", ago(t))).unwrap_or_default()
        ),
    }
}

async fn run_one(
    source: &Endpoint,
    destination: &Endpoint,
    scope: &Scope,
    options: &VerifyOptions,
    client: &ClientOptions,
    repair: bool,
) -> (Result<VerifyReport, String>, Option<RepairReport>) {
    let connected = async {
        let src = regferry::scheme::connect(source, client, "source").map_err(|e| format!("source {e}"))?;
        let dst = regferry::scheme::connect(destination, client, "destination").map_err(|e| format!("destination {e}"))?;
        let (a, b) = tokio::join!(src.ping(), dst.ping());
        a.map_err(|e| format!("source {e}"))?;
        b.map_err(|e| format!("destination {e}"))?;
        Ok::<_, String>((src, dst))
    };
    match connected.await {
        Ok((src, dst)) => checked(src, &dst, scope, options, repair).await,
        Err(e) => (Err(e), None),
    }
}

pub async fn run(args: VerifyArgs, quiet: bool) -> Result<u8, CliError> {
    let counters: Arc<regferry::engine::stats::PlanCounters> = Arc::default();
    let shown = super::progress::Planning::start(counters.clone(), quiet || args.json, if args.deep { "verify --deep" } else { "verify" });
    let result = verify_all(&args, counters).await;
    shown.finish().await;
    let (outcomes, lags) = result?;
    report(&args, outcomes, lags)
}

/// Verify every pair asked for, counting progress in `counters`.
async fn verify_all(args: &VerifyArgs, counters: Arc<regferry::engine::stats::PlanCounters>) -> Result<(Vec<Outcome>, Vec<regferry::state::lag::Lag>), CliError> {
    let concurrency = usize::from(args.concurrency);
    let mut outcomes = Vec::new();
    let mut lags = Vec::new();
    match (&args.from, &args.to, &args.policies) {
        (Some(from), Some(to), None) => {
            let (source, destination) = args.access.endpoints(from, to)?;
            let repos = RepoFilter::new(&args.repos, &[]).map_err(|e| CliError::usage(format!("--repo: {e}")))?;
            let mapping = RepoMapping::new(source.url.prefix(), destination.url.prefix());
            let platforms = match args.platforms.is_empty() {
                true => None,
                false => Some(Arc::new(
                    PlatformFilter::parse(&args.platforms, args.platform_filter).map_err(|e| CliError::usage(format!("--platform: {e}")))?,
                )),
            };
            // Compared as `migrate` copies: every tag, signatures of untagged manifests included.
            let referrers = Arc::new(regferry::engine::referrers::ReferrerOptions { untagged_subjects: true, ..Default::default() });
            let scope = Scope { platforms, referrers, counters, ..Scope::new(mapping, repos, Arc::new(AllTags)) };
            let options = VerifyOptions { deep: args.deep, concurrency, covers: None };
            let (result, repair) = run_one(&source, &destination, &scope, &options, &args.timeouts.client_options(), args.repair).await;
            outcomes.push(Outcome { policy: None, reversed: false, source: source.url.to_string(), destination: destination.url.to_string(), result, repair });
        }
        (None, None, Some(path)) => {
            let set = super::policy::load(path)?.with_timeouts(&args.timeouts.overrides());
            let mut policies = set.select(&args.names).map_err(CliError::usage)?;
            let state = StateDb::open(&args.state.state).await?;
            for p in &mut policies {
                p.progress = counters.clone();
                let p = &*p;
                let options = VerifyOptions { deep: args.deep, concurrency, covers: Some(p.tags.clone()) };
                outcomes.extend(policy_outcomes(p, &state, &options, args.repair, &[]).await?);
                lags.push(state.replication_lag(&p.name).await?);
            }
        }
        _ => return Err(CliError::usage("give either --from URL --to URL, or --policies PATH")),
    }
    Ok((outcomes, lags))
}

/// Verify each destination of `p` in its current direction (and with
/// `repair`, copy again what the deep check found missing, then verify
/// again), except the destinations named in `skip`.
pub(super) async fn policy_outcomes(p: &regferry::policy::Policy, state: &StateDb, options: &VerifyOptions, repair: bool, skip: &[String]) -> Result<Vec<Outcome>, CliError> {
    let mut outcomes = Vec::new();
    for spec in jobs_of(p, state).await? {
        let (source, destination, reversed) = (spec.source.url.to_string(), spec.destination.url.to_string(), spec.reversed);
        if skip.contains(&destination) {
            continue;
        }
        let (result, repair) = match Job::connect(spec).await {
            Ok(job) => checked(job.src.clone(), &job.dst, &job.spec.scope, options, repair).await,
            Err(e) => (Err(e.to_string()), None),
        };
        outcomes.push(Outcome { policy: Some(p.name.clone()), reversed, source, destination, result, repair });
    }
    Ok(outcomes)
}

/// `run --repair`'s verdict on one destination: the deep check after the
/// repair could run, nothing is left unpullable or unchecked, and the
/// repair copied everything it tried (tags that only differ are the pass's
/// business, reported but not judged here).
pub(super) fn repaired(o: &Outcome) -> bool {
    let left = |r: &VerifyReport| r.problems.iter().any(|p| matches!(p.kind, ProblemKind::NotPullable | ProblemKind::Error));
    o.result.as_ref().is_ok_and(|r| !left(r)) && o.repair.as_ref().is_none_or(|r| r.errors.is_empty())
}

/// `run --repair --json`: one object per destination checked.
pub(super) fn outcome_json(o: &Outcome) -> serde_json::Value {
    json!({
        "source": o.source,
        "destination": o.destination,
        "reversed": o.reversed,
        "ok": repaired(o),
        "error": o.result.as_ref().err(),
        "report": o.result.as_ref().ok(),
        "repair": o.repair,
    })
}

/// Print the outcomes (and lags) and pick the exit code.
fn report(args: &VerifyArgs, outcomes: Vec<Outcome>, lags: Vec<regferry::state::lag::Lag>) -> Result<u8, CliError> {
    let ok = outcomes.iter().all(|o| o.result.as_ref().is_ok_and(VerifyReport::ok));
    if args.json {
        let results: Vec<_> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "policy": o.policy,
                    "reversed": o.reversed,
                    "source": o.source,
                    "destination": o.destination,
                    "ok": o.result.as_ref().is_ok_and(VerifyReport::ok),
                    "error": o.result.as_ref().err(),
                    "report": o.result.as_ref().ok(),
                    "repair": o.repair,
                })
            })
            .collect();
        println!("{}", json!({ "ok": ok, "results": results, "lag": lags }));
    } else {
        for o in &outcomes {
            print!("{}", text(o));
        }
        for l in &lags {
            print!("{}", lag_text(l));
        }
    }
    Ok(if ok { exit::OK } else { exit::FAILED })
}
