//! `run --dry-run`: what one pass of a policy would do — the fence's
//! verdict, the plan of every destination (what would be copied and why),
//! and the deletions `delete: true` would make with the deletion guard's
//! verdict on them.
//!
//! Reads only: registries are asked for listings and HEADs with pull
//! scope, the state database for the direction and the retry state. It
//! never copies, deletes, records an execution or takes a lease.

use std::sync::Arc;

use crate::pass::prune::{Guard, PruneReport, prune};
use crate::engine::plan::Plan;
use crate::engine::stats::PlanCounters;
use crate::job::Job;
use crate::policy::Policy;
use crate::state::StateDb;

use super::{FenceCheck, check_fence, hold_back, jobs_of};

/// What a pass would do at one destination.
#[derive(Debug)]
pub struct Preview {
    pub source: String,
    pub destination: String,
    pub reversed: bool,
    /// Why the pass would not run (fence, unreachable registry, listing).
    pub error: Option<String>,
    pub plan: Option<Plan>,
    /// Tags that failed before and whose retry is not due (left out).
    pub deferred: usize,
    /// `delete: true`: what would be deleted (`deleted`) and the guard's refusals.
    pub prune: Option<PruneReport>,
}

/// Plan one pass of `policy` without changing anything; planning progress
/// goes to `counters`.
pub async fn preview(policy: &Policy, state: &StateDb, counters: &Arc<PlanCounters>) -> Vec<Preview> {
    let failed = |e: String| vec![Preview { source: policy.source.url.to_string(), destination: String::new(), reversed: false, error: Some(e), plan: None, deferred: 0, prune: None }];
    let (specs, reversed) = match (jobs_of(policy, state).await, state.is_reversed(&policy.name).await) {
        (Ok(specs), Ok(reversed)) => (specs, reversed),
        (Err(e), _) | (_, Err(e)) => return failed(e.to_string()),
    };
    let fence = check_fence(policy, reversed).await;
    let mut out = Vec::new();
    for (i, mut spec) in specs.into_iter().enumerate() {
        spec.scope.counters = counters.clone();
        let mut p = Preview {
            source: spec.source.url.to_string(),
            destination: spec.destination.url.to_string(),
            reversed: spec.reversed,
            error: None,
            plan: None,
            deferred: 0,
            prune: None,
        };
        match &fence {
            FenceCheck::Refused(why) => p.error = Some(format!("would be refused: {why}")),
            FenceCheck::Unreadable(why) if i == 0 => p.error = Some(format!("would be refused: {why}")),
            _ => {}
        }
        if p.error.is_some() {
            out.push(p);
            continue;
        }
        let scope_key = spec.scope_key();
        let job = match Job::connect(spec).await {
            Ok(job) => job,
            Err(e) => {
                p.error = Some(e.to_string());
                out.push(p);
                continue;
            }
        };
        let mut plan = match job.plan_read_only().await {
            Ok(plan) => plan,
            Err(e) => {
                p.error = Some(e.to_string());
                out.push(p);
                continue;
            }
        };
        match hold_back(&mut plan, state, &scope_key, policy.retry.give_up_after).await {
            Ok(n) => p.deferred = n,
            Err(e) => p.error = Some(e.to_string()),
        }
        if policy.delete {
            let concurrency = policy.concurrency.max(4) * 2;
            let guard = Guard { max_delete: policy.max_delete, force: policy.force_delete, dry_run: true };
            let destination = job.spec.destination.url.base().as_str().trim_end_matches('/').to_string();
            let decided = match state.owned(&policy.name, &destination).await {
                Ok(owned) => prune(&*job.src, &*job.dst, &job.spec.scope, &policy.tags, concurrency, guard, &owned).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            p.prune = Some(decided.unwrap_or_else(|e| PruneReport { errors: vec![format!("deletions not decided: {e}")], dry_run: true, ..PruneReport::default() }));
        }
        p.plan = Some(plan);
        out.push(p);
    }
    out
}
