//! `regferry failover` and `regferry failback`: reverse a policy's
//! direction after a last sync pass (reporting the RPO and deep-verifying the
//! DR site), and restore it after syncing back; both write the failover fence.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use regferry::dr::failover::{Rpo, Switch, SwitchOptions, SwitchReport, switch};
use regferry::engine::execute::Cancel;
use regferry::state::StateDb;

use super::run::{outcome_json, outcome_text};
use super::{CliError, StateArgs, exit, signals};

#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// The policy to switch.
    #[arg(long, value_name = "NAME")]
    pub policy: String,

    /// Directory of policy files (or one file).
    #[arg(long, default_value = "policies", value_name = "PATH")]
    pub policies: PathBuf,

    #[command(flatten)]
    pub state: StateArgs,

    /// Say what would happen (reachability, tags the sync pass would copy, and for a failover
    /// the RPO and the deep verification of DR); change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Switch even when the sync pass did not replicate everything, the DR site is not
    /// pullable, or the fence cannot be written there (for failback: even when DR does not answer).
    #[arg(long)]
    pub force: bool,

    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn which_word(which: Switch) -> &'static str {
    match which {
        Switch::Failover => "failover",
        Switch::Failback => "failback",
    }
}

fn report_text(r: &SwitchReport, dry_run: bool) -> String {
    let what = match r.switch {
        Switch::Failover => "failover",
        Switch::Failback => "failback",
    };
    let mut out = String::new();
    if let Some(f) = &r.fence
        && r.adopted
    {
        let direction = if f.reversed { "failed over (DR → primary)" } else { "forward (primary → DR)" };
        out.push_str(&format!(
            "{what} {}: the fence at DR (generation {}, written {}) says the policy runs {direction}; this state database did not know: {}\n",
            r.policy,
            f.generation,
            ago(f.at),
            if dry_run { "it would take that direction over" } else { "took that direction over (no sync pass for it)" }
        ));
    }
    if r.already {
        out.push_str(&format!(
            "{what} {}: nothing to do, the policy already runs {}\n",
            r.policy,
            if r.switch == Switch::Failover { "reversed" } else { "forward" }
        ));
        return out;
    }
    out.push_str(&format!("{what} {}: sync {} → {}", r.policy, r.from, r.to));
    out.push_str(if r.from_reachable { "\n" } else { " skipped: the source does not answer\n" });
    if let Some(sync) = &r.sync {
        out.push_str(&outcome_text(sync));
    }
    if let Some(n) = r.would_copy {
        out.push_str(&format!("  the sync pass would copy {n} tag(s)\n"));
    }
    if let Some(rpo) = &r.rpo {
        out.push_str(&rpo_text(rpo));
    }
    if let Some(rep) = &r.repair {
        out.push_str(&format!(
            "  repaired the DR site from the primary: {} blob(s), {} manifest(s) copied again{}\n",
            rep.blobs.len(),
            rep.manifests.len(),
            if rep.errors.is_empty() { String::new() } else { format!("; not repaired: {}", rep.errors.join("; ")) }
        ));
    }
    if let Some(v) = &r.verification {
        let side = if r.switch == Switch::Failover { "DR site" } else { "primary" };
        out.push_str(&super::verify::report_text(&format!("{side} {}", r.to), v));
    }
    if let Some(e) = &r.verification_error {
        out.push_str(&format!("  cannot verify the DR site: {e}\n"));
    }
    for w in &r.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    for f in &r.fence_written {
        out.push_str(&format!("  fence written {f}\n"));
    }
    if let Some(why) = &r.refused {
        out.push_str(&format!("{what} {}: not switched: {why}\n", r.policy));
    } else if r.switched {
        // Either way the synced pair swaps roles: replication now runs back.
        out.push_str(&format!("{what} {}: done; `run` and the daemon now replicate {} → {}\n", r.policy, r.to, r.from));
    } else if dry_run {
        out.push_str(&format!("{what} {}: dry run, nothing changed\n", r.policy));
    }
    out
}

fn ago(t: i64) -> String {
    let secs = (regferry::state::now_ms() - t).max(0) / 1000;
    format!("{} ago", humantime::format_duration(Duration::from_secs(secs as u64)))
}

fn rpo_text(rpo: &Rpo) -> String {
    let last = rpo.last_pass_at.map(|t| format!("last pass {}", ago(t))).unwrap_or_else(|| "no pass recorded".into());
    match rpo.rpo_seconds {
        _ if rpo.caught_up => format!("  RPO: 0s (the catch-up pass replicated everything; {last})\n"),
        Some(s) => format!(
            "  RPO: up to {} ({last}; {} tag(s) known outstanding{})\n",
            humantime::format_duration(Duration::from_secs(s as u64)),
            rpo.outstanding_tags,
            rpo.lag_seconds.filter(|l| *l > 0.0).map(|l| format!(", the oldest for {}", humantime::format_duration(Duration::from_secs(l as u64)))).unwrap_or_default()
        ),
        None => "  RPO: unknown (no pass of this policy recorded in this state database)\n".into(),
    }
}

pub async fn run(args: SwitchArgs, which: Switch, quiet: bool) -> Result<u8, CliError> {
    let set = super::policy::load(&args.policies)?;
    let policy = set.select(std::slice::from_ref(&args.policy)).map_err(CliError::usage)?.remove(0);
    let shown = super::progress::Planning::start(policy.progress.clone(), quiet || args.json, &format!("{} {}", which_word(which), policy.name));
    let state = StateDb::open(&args.state.state).await?;
    let cancel = Cancel::default();
    signals::watch(cancel.clone(), Duration::from_secs(30));
    let options = SwitchOptions { dry_run: args.dry_run, force: args.force };
    let report = switch(&policy, &state, which, options, &cancel).await;
    shown.finish().await;
    let report = report.map_err(|e| CliError::usage(e.to_string()))?;
    if args.json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["sync"] = report.sync.as_ref().map(outcome_json).unwrap_or(serde_json::Value::Null);
        println!("{}", json!(v));
    } else {
        print!("{}", report_text(&report, args.dry_run));
    }
    Ok(if cancel.stop.is_cancelled() {
        exit::INTERRUPTED
    } else if report.refused.is_some() {
        exit::FAILED
    } else {
        exit::OK
    })
}
