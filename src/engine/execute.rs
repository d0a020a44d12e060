//! Executing a plan: the tags to copy, `concurrency` at a time, each retried
//! with exponential backoff, every state change reported as an [`Event`].
//!
//! Cancellation comes in two steps: `stop` lets in-flight tasks finish but
//! starts nothing new; `abort` drops in-flight tasks (they are reported as
//! canceled, and nothing half-done is ever pushed as a tag — see
//! [`super::copy`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::copy::Copier;
use super::events::{Event, EventSink};
use super::plan::{Action, Plan};
use super::stats::Stats;
use crate::registry::{RegistryError, RepoName};

/// Knobs of an execution.
#[derive(Debug, Clone)]
pub struct ExecuteOptions {
    /// Tags copied at once.
    pub concurrency: usize,
    /// Attempts per tag within this run (1 = no retry).
    pub attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for ExecuteOptions {
    fn default() -> Self {
        ExecuteOptions { concurrency: 8, attempts: 3, backoff_min: Duration::from_secs(1), backoff_max: Duration::from_secs(30) }
    }
}

/// The two-step cancellation described in the module documentation.
#[derive(Clone, Default)]
pub struct Cancel {
    pub stop: CancellationToken,
    pub abort: CancellationToken,
}

/// How the error of a tag that was never started because of its
/// registry's condition begins.
pub const NOT_ATTEMPTED: &str = "not attempted: ";

/// Worth another attempt of the whole tag. Not a failure whose request
/// already used up its retries: the retry budget is per request, and does
/// not multiply with the levels above it.
pub fn worth_retrying(e: &RegistryError) -> bool {
    !e.gave_up() && e.is_transient()
        || ["MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID"]
            .iter()
            .any(|c| e.has_code(c))
}

/// Delay before attempt `attempt + 1` (exponential, capped).
pub fn backoff(options: &ExecuteOptions, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    options.backoff_min.saturating_mul(factor).min(options.backoff_max)
}

/// How one task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    Succeeded,
    Failed(String),
    Canceled,
}

/// Run every `Copy` item of `plan`. Returns when all are decided (or
/// canceled), with the end of each task by plan index. Counters go to
/// `stats`, state changes to `events`.
pub async fn execute(
    copier: &Copier,
    plan: &Plan,
    options: &ExecuteOptions,
    stats: &Arc<Stats>,
    events: &EventSink,
    cancel: &Cancel,
) -> Vec<(usize, TaskEnd)> {
    // Per-repository countdown, for the "repositories done" display.
    let mut remaining: HashMap<&RepoName, AtomicUsize> = HashMap::new();
    for item in plan.to_copy() {
        remaining.entry(&item.source_repo).or_insert_with(|| AtomicUsize::new(0)).fetch_add(1, Ordering::Relaxed);
    }
    let untouched = plan.repositories.saturating_sub(remaining.len());
    Stats::add(&stats.repos_done, untouched as u64);

    // Collected first: a lazy iterator of borrowing closures would keep the
    // returned future from being `Send` for callers that spawn it. Tags that
    // exist for another manifest (referrers fallback tags, cosign
    // companions) go after every other tag, so that manifest — a tag, a
    // child of an index, a referrer — is at the destination by then.
    let (bound, plain): (Vec<usize>, Vec<usize>) = plan
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.action, Action::Copy(_)))
        .map(|(n, _)| n)
        .partition(|&n| crate::registry::referrers::subject_of_tag(&plan.items[n].tag).is_some());
    let mut ends = run_phase(copier, plan, plain, options, stats, events, cancel, &remaining).await;
    ends.extend(run_phase(copier, plan, bound, options, stats, events, cancel, &remaining).await);
    ends
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    copier: &Copier,
    plan: &Plan,
    indices: Vec<usize>,
    options: &ExecuteOptions,
    stats: &Arc<Stats>,
    events: &EventSink,
    cancel: &Cancel,
    remaining: &HashMap<&RepoName, AtomicUsize>,
) -> Vec<(usize, TaskEnd)> {
    futures::stream::iter(indices)
        .map(|index| {
            async move {
                let end = run_task(copier, &plan.items[index], index, options, stats, events, cancel).await;
                let item = &plan.items[index];
                if let Some(left) = remaining.get(&item.source_repo)
                    && left.fetch_sub(1, Ordering::Relaxed) == 1 {
                        Stats::add(&stats.repos_done, 1);
                    }
                (index, end)
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await
}

/// Copy one item with retries, reporting its state changes under `index`
/// (the plan position, or whatever key the receiver of `events` expects).
pub async fn run_task(
    copier: &Copier,
    item: &super::plan::PlanItem,
    index: usize,
    options: &ExecuteOptions,
    stats: &Stats,
    events: &EventSink,
    cancel: &Cancel,
) -> TaskEnd {
    if cancel.stop.is_cancelled() {
        events.send(Event::TaskCanceled { index, attempts: 0 }).await;
        return TaskEnd::Canceled;
    }
    if let Some(e) = copier.halted_for(item) {
        return not_attempted(index, &e, stats, events).await;
    }
    events.send(Event::TaskStarted { index }).await;
    let mut attempt = 1;
    loop {
        let result = tokio::select! {
            r = copier.copy_item(item) => r,
            _ = cancel.abort.cancelled() => {
                events.send(Event::TaskCanceled { index, attempts: attempt }).await;
                return TaskEnd::Canceled;
            }
        };
        match result {
            Ok(copied) => {
                if copied {
                    tracing::debug!(repository = %item.dest_repo, tag = %item.tag, digest = %item.source.digest.short(), "copied");
                    Stats::add(&stats.tags_copied, 1);
                } else {
                    // Its subject did not travel: nothing to copy.
                    Stats::add(&stats.tags_skipped, 1);
                }
                events.send(Event::TaskSucceeded { index, attempts: attempt }).await;
                return TaskEnd::Succeeded;
            }
            Err(e) if worth_retrying(&e) && attempt < options.attempts && !cancel.stop.is_cancelled() => {
                let pause = e.pause(backoff(options, attempt));
                tracing::warn!(repository = %item.dest_repo, tag = %item.tag, attempt, error = %e, "copy failed; retrying in {pause:?}");
                events.send(Event::TaskRetrying { index, attempt, error: e.to_string() }).await;
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = cancel.abort.cancelled() => {
                        events.send(Event::TaskCanceled { index, attempts: attempt }).await;
                        return TaskEnd::Canceled;
                    }
                }
                attempt += 1;
            }
            Err(e) => {
                if e.is_registry_condition() {
                    // Announced once by the registry's gate, not once per tag.
                    tracing::debug!(repository = %item.dest_repo, tag = %item.tag, attempts = attempt, error = %e, "copy failed");
                } else {
                    tracing::error!(repository = %item.dest_repo, tag = %item.tag, attempts = attempt, error = %e, "copy failed");
                }
                Stats::add(&stats.tags_failed, 1);
                let error = e.to_string();
                events.send(Event::TaskFailed { index, attempts: attempt, error: error.clone() }).await;
                return TaskEnd::Failed(error);
            }
        }
    }
}

/// Record a tag that is not started because its registry is down,
/// read-only, out of space or out of quota.
async fn not_attempted(index: usize, e: &RegistryError, stats: &Stats, events: &EventSink) -> TaskEnd {
    Stats::add(&stats.tags_failed, 1);
    let error = format!("{NOT_ATTEMPTED}{e}");
    events.send(Event::TaskFailed { index, attempts: 0, error: error.clone() }).await;
    TaskEnd::Failed(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let o = ExecuteOptions { backoff_min: Duration::from_secs(1), backoff_max: Duration::from_secs(5), ..Default::default() };
        assert_eq!(backoff(&o, 1), Duration::from_secs(1));
        assert_eq!(backoff(&o, 2), Duration::from_secs(2));
        assert_eq!(backoff(&o, 3), Duration::from_secs(4));
        assert_eq!(backoff(&o, 4), Duration::from_secs(5));
        assert_eq!(backoff(&o, 40), Duration::from_secs(5));
    }
}
