//! `regferry run`: one pass of some or all policies now, then exit.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use regferry::pass::metrics::Metrics;
use regferry::pass::preview::{Preview, preview};
use regferry::pass::{PassOutcome, run_pass};
use regferry::engine::execute::Cancel;
use regferry::dr::verify::VerifyOptions;

use super::output;
use super::{CliError, StateArgs, TimeoutArgs, exit, signals};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of policy files (or one file).
    #[arg(long, default_value = "policies", value_name = "PATH")]
    pub policies: PathBuf,

    /// Policies to run (default: all).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,

    #[command(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// For this pass only, let `delete: true` delete beyond the policy's `max_delete`
    /// and in repositories whose source lists no tags (the deletion guard is off).
    #[arg(long)]
    pub force_delete: bool,

    /// For this pass only, run even when the failover fence at the DR site cannot be
    /// read (401/403/5xx, a timeout, not a fence), as if there were none. Without it
    /// such a pass is refused: a fence that cannot be read is never taken for "no fence".
    #[arg(long)]
    pub ignore_unreadable_fence: bool,

    /// Print what each policy's pass would do — tags it would copy and why, tags it would
    /// delete (`delete: true`) and the deletion guard's verdict, a fence that would refuse
    /// it — and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// After each policy's pass, deep-check each destination it ran (every child manifest
    /// and blob of every tag), copy again from the source exactly what is missing (blobs,
    /// then child manifests, by digest; no tag is written, nothing deleted), then verify
    /// again. Fails when something is still not pullable.
    #[arg(long, conflicts_with = "dry_run")]
    pub repair: bool,

    /// Local disk a policy with several destinations may use in this pass to read each
    /// source blob once for all of them (files beside the state, removed when the pass
    /// ends); over it, each destination reads the source itself. Overrides every policy's
    /// spool_budget (default 2GiB); 0 turns the spool off.
    #[arg(long, value_parser = parse_spool_budget, value_name = "SIZE")]
    pub spool_budget: Option<u64>,
}

/// `--spool-budget`: a size (`500MiB`, `2GiB`) or 0.
pub(super) fn parse_spool_budget(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    regferry::registry::endpoint::parse_size(s)
}

/// `run --dry-run`, human form.
pub fn preview_text(policy: &regferry::policy::Policy, previews: &[Preview]) -> String {
    let mut out = String::new();
    for p in previews {
        let title = format!("policy {} {} → {}{}", policy.name, p.source, p.destination, if p.reversed { " (failed over)" } else { "" });
        if let Some(e) = &p.error {
            out.push_str(&format!("{title}: {e}\n"));
            continue;
        }
        if let Some(plan) = &p.plan {
            out.push_str(&format!("{title}\n"));
            out.push_str(&output::plan_text(plan, &p.source, &p.destination));
        }
        if p.deferred > 0 {
            out.push_str(&format!("  deferred      {} tag(s) that failed before; retry not due yet\n", p.deferred));
        }
        match &p.prune {
            None => out.push_str("  deletions     none (the policy does not say delete: true)\n"),
            Some(r) => {
                for t in &r.deleted {
                    out.push_str(&format!("  would delete  {t} (no longer at the source)\n"));
                }
                for t in &r.kept {
                    out.push_str(&format!("  not deleted   {t}\n"));
                }
                for e in &r.errors {
                    out.push_str(&format!("  delete check failed {e}\n"));
                }
                if r.refused.is_empty() {
                    out.push_str(&format!(
                        "  deletion guard: allows {} deletion(s) of {} in-scope tag(s) (max_delete {})\n",
                        r.deleted.len(),
                        r.in_scope,
                        policy.max_delete
                    ));
                } else {
                    for why in &r.refused {
                        out.push_str(&format!("  deletion guard: WOULD REFUSE {why}\n"));
                    }
                }
            }
        }
    }
    out
}

/// `run --dry-run --json`: one object per policy destination.
pub fn preview_json(policy: &regferry::policy::Policy, previews: &[Preview]) -> serde_json::Value {
    json!({
        "policy": policy.name,
        "dry_run": true,
        "destinations": previews.iter().map(|p| json!({
            "source": p.source,
            "destination": p.destination,
            "reversed": p.reversed,
            "error": p.error,
            "deferred": p.deferred,
            "plan": p.plan.as_ref().map(output::plan_json),
            "would_delete": p.prune.as_ref().map(|r| &r.deleted),
            "deletions_refused": p.prune.as_ref().map(|r| &r.refused),
            "deletion_errors": p.prune.as_ref().map(|r| &r.errors),
        })).collect::<Vec<_>>(),
    })
}

pub fn outcome_json(o: &PassOutcome) -> serde_json::Value {
    json!({
        "policy": o.policy,
        "ok": o.ok(),
        "destinations": o.destinations.iter().map(|d| json!({
            "source": d.source,
            "destination": d.destination,
            "reversed": d.reversed,
            "error": d.error,
            "deferred": d.deferred,
            "deleted": d.prune.as_ref().map(|p| &p.deleted),
            "deletions_refused": d.prune.as_ref().map(|p| &p.refused),
            "kept": d.prune.as_ref().map(|p| &p.kept),
            "fenced": d.fenced,
            "unmatched_patterns": d.unmatched,
            "report": d.report.as_ref().map(output::report_json),
        })).collect::<Vec<_>>(),
    })
}

pub fn outcome_text(o: &PassOutcome) -> String {
    let mut out = String::new();
    for d in &o.destinations {
        let title = format!("{} {} → {}", o.policy, d.source, d.destination);
        match (&d.error, &d.report) {
            (Some(e), _) => out.push_str(&format!("{title}: failed: {e}\n")),
            (None, Some(r)) => {
                out.push_str(&output::report_text(r, &title));
                if let Some(p) = &d.prune {
                    for t in &p.deleted {
                        out.push_str(&format!("  deleted       {t} (no longer at the source)\n"));
                    }
                    for t in &p.kept {
                        out.push_str(&format!("  not deleted   {t}\n"));
                    }
                    for e in &p.errors {
                        out.push_str(&format!("  delete failed {e}\n"));
                    }
                    for r in &p.refused {
                        out.push_str(&format!("  REFUSED       {r}\n"));
                    }
                    if p.forced && !p.deleted.is_empty() {
                        out.push_str("  deletion guard overridden for this pass (--force-delete)\n");
                    }
                }
                for g in &d.unmatched {
                    out.push_str(&format!("  warning       repository pattern {g:?} matches no repository at {}\n", d.source));
                }
                if d.deferred > 0 {
                    out.push_str(&format!("  deferred      {} tag(s) that failed before; retry not due yet\n", d.deferred));
                }
            }
            (None, None) => {}
        }
    }
    out
}

pub async fn run(args: RunArgs, quiet: bool) -> Result<u8, CliError> {
    let set = super::policy::load(&args.policies)?.with_timeouts(&args.timeouts.overrides());
    let mut policies = set.select(&args.names).map_err(CliError::usage)?;
    for p in &mut policies {
        p.force_delete = args.force_delete;
        p.ignore_unreadable_fence = args.ignore_unreadable_fence;
        if let Some(budget) = args.spool_budget {
            p.spool_budget = budget;
        }
    }
    let state = super::open_state(&args.state, 8).await?;
    if args.dry_run {
        let mut ok = true;
        let mut all = Vec::new();
        for p in &policies {
            let counters = std::sync::Arc::default();
            let planning = super::progress::Planning::start(std::sync::Arc::clone(&counters), quiet || args.json, &format!("planning {}", p.name));
            let previews = preview(p, &state, &counters).await;
            planning.finish().await;
            ok &= previews.iter().all(|d| d.error.is_none() && d.plan.as_ref().is_some_and(|pl| pl.problems.is_empty()));
            if args.json {
                all.push(preview_json(p, &previews));
            } else {
                print!("{}", preview_text(p, &previews));
            }
        }
        if args.json {
            println!("{}", serde_json::Value::Array(all));
        }
        return Ok(if ok { exit::OK } else { exit::FAILED });
    }
    let cancel = Cancel::default();
    signals::watch(cancel.clone(), Duration::from_secs(30));
    let metrics = Metrics::for_worker(&state.worker().id);
    let mut ok = true;
    let mut all = Vec::new();
    for p in &policies {
        if cancel.stop.is_cancelled() {
            break;
        }
        tracing::info!(policy = %p.name, "pass started");
        let shown = super::progress::Planning::start(p.progress.clone(), quiet || args.json, &format!("pass {}", p.name));
        let outcome = run_pass(p, &state, &cancel, &metrics, None).await;
        shown.finish().await;
        ok &= outcome.ok();
        let repairs = match args.repair && !cancel.stop.is_cancelled() {
            true => {
                // Not where the pass failed (or a fence refused it): only what it ran.
                let skip: Vec<String> = outcome.destinations.iter().filter(|d| d.error.is_some()).map(|d| d.destination.clone()).collect();
                let options = VerifyOptions { deep: true, concurrency: p.concurrency.max(4) * 2, covers: Some(p.tags.clone()) };
                let shown = super::progress::Planning::start(p.progress.clone(), quiet || args.json, &format!("repair {}", p.name));
                let repairs = super::verify::policy_outcomes(p, &state, &options, true, &skip).await;
                shown.finish().await;
                let repairs = repairs?;
                ok &= repairs.iter().all(super::verify::repaired);
                Some(repairs)
            }
            false => None,
        };
        if args.json {
            let mut value = outcome_json(&outcome);
            if let (Some(repairs), Some(obj)) = (&repairs, value.as_object_mut()) {
                obj.insert("repair".into(), repairs.iter().map(super::verify::outcome_json).collect());
            }
            all.push(value);
        } else {
            print!("{}", outcome_text(&outcome));
            for r in repairs.iter().flatten() {
                print!("{}", super::verify::text(r));
            }
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(all));
    }
    Ok(if cancel.stop.is_cancelled() {
        exit::INTERRUPTED
    } else if ok {
        exit::OK
    } else {
        exit::FAILED
    })
}
