//! One pass of one policy: check the failover fence at the DR site, then run
//! each destination on its own ([`destination`]: connect, plan, hold back
//! tags that are backing off, execute, mirror deletions within the deletion
//! guard, and file the outcomes). The destinations run concurrently; with
//! two or more, their source clients read through one [`SourceShare`] of the
//! pass, so each source manifest and blob is read once for all (see
//! [`crate::scheme::shared`]); its spool is removed when the pass ends.
//!
//! A destination that fails (unreachable, wrong password) never stops the
//! others; a fence that contradicts the state stops the whole pass. This
//! module is shared by `regferry run`, the daemon and `failover` (so it sits
//! below all three and never reaches up into any of them); it never prints
//! and never decides when a pass happens.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use prune::{Guard, PruneReport, prune};
use crate::engine::execute::Cancel;
use crate::engine::plan::{Action, Plan, Problem, SkipReason};
use crate::engine::{left_behind, referrers};
use crate::engine::stats::Stats;
use crate::job::{Job, JobSpec, Report};
use crate::policy::Policy;
use crate::scheme::shared::SourceShare;
use crate::state::backoff::Outcome;
use crate::state::{StateDb, now_ms};

mod destination;
pub mod fence;
pub mod prune;
pub mod metrics;
pub mod preview;

use destination::{hold_back, run_destination};
use fence::Site;
use metrics::Metrics;

/// What happened at one destination.
#[derive(Debug)]
pub struct DestinationOutcome {
    /// Where the pass copied to (URL with prefix).
    pub destination: String,
    /// Where it copied from.
    pub source: String,
    pub reversed: bool,
    /// The run's report, when the job got as far as running.
    pub report: Option<Report>,
    /// Why the job could not run at all.
    pub error: Option<String>,
    /// Tags held back because their retry is not due yet.
    pub deferred: usize,
    /// Deletions mirrored at the destination (policies with `delete: true`).
    pub prune: Option<PruneReport>,
    /// Repository globs that matched nothing at the source (a warning).
    pub unmatched: Vec<String>,
    /// The pass was refused by the failover fence.
    pub fenced: bool,
    /// This worker only helped with this execution, which another worker
    /// holds (planned, and closes): the report counts its share.
    pub helped: Option<i64>,
}

impl DestinationOutcome {
    fn new(source: String, destination: String, reversed: bool) -> DestinationOutcome {
        DestinationOutcome { destination, source, reversed, report: None, error: None, deferred: 0, prune: None, unmatched: Vec::new(), fenced: false, helped: None }
    }

    /// Everything in scope is replicated (nothing failed, nothing held back,
    /// no deletion refused).
    pub fn ok(&self) -> bool {
        if self.helped.is_some() {
            return self.error.is_none();
        }
        self.deferred == 0
            && self.error.is_none()
            && self.prune.as_ref().is_none_or(|p| p.errors.is_empty() && p.refused.is_empty())
            && self.report.as_ref().is_some_and(|r| r.failures.is_empty() && r.status.as_str() == "succeeded")
    }
}

/// What one pass of a policy did.
#[derive(Debug)]
pub struct PassOutcome {
    pub policy: String,
    pub destinations: Vec<DestinationOutcome>,
}

impl PassOutcome {
    pub fn ok(&self) -> bool {
        self.destinations.iter().all(DestinationOutcome::ok)
    }
}

/// The name of `policy`'s switch lease: held by `failover`/`failback` from
/// their catch-up pass until the new direction is recorded. A pass that
/// finds another worker holding it gives its job lease back and waits.
pub fn switch_lease(policy: &str) -> String {
    format!("switch|{policy}")
}

/// Whether another worker is switching `policy` right now.
async fn switching_elsewhere(policy: &str, state: &StateDb) -> Result<bool, crate::state::StateError> {
    Ok(state.lease_holder(&switch_lease(policy)).await?.is_some_and(|h| h.worker != state.worker().id))
}

/// The jobs a pass of `policy` runs now: one per destination, or — after a
/// failover — one from the first destination back to the source.
pub async fn jobs_of(policy: &Policy, state: &StateDb) -> Result<Vec<JobSpec>, crate::state::StateError> {
    Ok(if state.is_reversed(&policy.name).await? {
        policy.destinations.first().map(|d| policy.reverse(d)).into_iter().collect()
    } else {
        policy.destinations.iter().map(|d| policy.forward(d)).collect()
    })
}

/// Run one pass of `policy`. `only` limits it to these source repositories
/// (names relative to the source prefix), e.g. for a push event.
pub async fn run_pass(policy: &Policy, state: &StateDb, cancel: &Cancel, metrics: &Metrics, only: Option<&HashSet<String>>) -> PassOutcome {
    let failed = |e: String| {
        let mut d = DestinationOutcome::new(policy.source.url.to_string(), String::new(), false);
        d.error = Some(e);
        PassOutcome { policy: policy.name.clone(), destinations: vec![d] }
    };
    let (specs, reversed) = match (jobs_of(policy, state).await, state.is_reversed(&policy.name).await) {
        (Ok(specs), Ok(reversed)) => (specs, reversed),
        (Err(e), _) | (_, Err(e)) => {
            let outcome = failed(e.to_string());
            record_errors(policy, state, &outcome.destinations).await;
            return outcome;
        }
    };
    // The fence at the DR site: a contradiction stops every job of the
    // pass; a fence that cannot be read stops the DR job only.
    let fence = check_fence(policy, reversed).await;
    // Several destinations: one read of the source for all of them.
    let share = (specs.len() > 1).then(|| Arc::new(SourceShare::new(&spool_root(state), policy.spool_budget)));
    let share = share.as_ref();
    let mut runs: Vec<BoxFuture<'_, DestinationOutcome>> = Vec::new();
    for (i, mut spec) in specs.into_iter().enumerate() {
        if let Some(only) = only {
            spec.scope.explicit = only.iter().cloned().collect();
        }
        let stop = match &fence {
            FenceCheck::Agrees => None,
            FenceCheck::Refused(why) => Some((why.clone(), true)),
            FenceCheck::Unreadable(why) if i == 0 && policy.ignore_unreadable_fence => {
                tracing::warn!(policy = %policy.name, reason = %why, "running without the failover fence (--ignore-unreadable-fence)");
                None
            }
            FenceCheck::Unreadable(why) if i == 0 => Some((format!("{why}: refusing the pass (a fence that cannot be read is not \"no fence\"; `regferry run --ignore-unreadable-fence` runs it once anyway)"), true)),
            FenceCheck::Unreadable(_) => None,
        };
        let events = only.is_some();
        runs.push(
            async move {
                let outcome = match stop {
                    Some((why, fenced)) => {
                        tracing::error!(policy = %policy.name, destination = %spec.destination.url, reason = %why, "pass refused");
                        let mut d = DestinationOutcome::new(spec.source.url.to_string(), spec.destination.url.to_string(), spec.reversed);
                        d.error = Some(why);
                        d.fenced = fenced;
                        d
                    }
                    None => {
                        let mut d = run_destination(policy, spec, state, cancel, share).await;
                        if events {
                            // A pass of pushed repositories only: the globs were not matched against the catalog.
                            d.unmatched.clear();
                        }
                        d
                    }
                };
                metrics.record(&policy.name, &outcome);
                outcome
            }
            .boxed(),
        );
    }
    let destinations = futures::future::join_all(runs).await;
    record_errors(policy, state, &destinations).await;
    PassOutcome { policy: policy.name.clone(), destinations }
}

/// Keep the pass-level errors and refusals of a pass (with their time) for
/// the status page, the API and `jobs list`: a pass refused before it
/// started has no execution to carry them.
async fn record_errors(policy: &Policy, state: &StateDb, destinations: &[DestinationOutcome]) {
    for d in destinations {
        let refused = d.prune.as_ref().map(|p| p.refused.iter().map(|r| format!("deletions refused: {r}")).collect::<Vec<_>>().join("; "));
        let error = match (&d.error, refused) {
            (Some(e), _) if d.fenced => format!("pass refused by the failover fence: {e}"),
            (Some(e), _) => format!("pass failed: {e}"),
            (None, Some(r)) if !r.is_empty() => r,
            _ => continue,
        };
        if let Err(e) = state.record_pass_error(&policy.name, &d.destination, &error).await {
            tracing::error!(policy = %policy.name, error = %e, "cannot record the pass's error");
        }
    }
}

/// What the fence at the DR site says about a pass.
pub(crate) enum FenceCheck {
    Agrees,
    /// It contradicts the state: the reason and the way out.
    Refused(String),
    /// It could not be read.
    Unreadable(String),
}

pub(crate) async fn check_fence(policy: &Policy, reversed: bool) -> FenceCheck {
    let site = match Site::dr(policy) {
        None => return FenceCheck::Agrees,
        Some(Ok(site)) => site,
        Some(Err(e)) => return FenceCheck::Unreadable(format!("cannot read the failover fence: {e}")),
    };
    match site.read(&policy.name).await {
        Ok(None) => FenceCheck::Agrees,
        Ok(Some(f)) => match fence::refusal(&f, reversed, &site.location(&policy.name)) {
            None => FenceCheck::Agrees,
            Some(why) => FenceCheck::Refused(why),
        },
        Err(e) => FenceCheck::Unreadable(format!("cannot read the failover fence {}: {e}", site.location(&policy.name))),
    }
}

/// Where passes spool source blobs: `spool/` beside a SQLite state, else
/// under the temporary directory.
fn spool_root(state: &StateDb) -> std::path::PathBuf {
    match state.location().path().and_then(std::path::Path::parent) {
        Some(dir) => dir.join("spool"),
        None => std::env::temp_dir().join("regferry-spool"),
    }
}
