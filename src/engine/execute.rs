//! Executing a plan's tasks: one tag copied with retries and exponential
//! backoff ([`run_task`]), every state change reported as an [`Event`]
//! (the worker, [`crate::worker`], runs them `concurrency` at a time).
//!
//! Cancellation comes in two steps: `stop` lets in-flight tasks finish but
//! starts nothing new; `abort` drops in-flight tasks (they are reported as
//! canceled, and nothing half-done is ever pushed as a tag — see
//! [`super::copy`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::copy::Copier;
use super::events::{Event, EventSink};
use super::stats::Stats;
use crate::registry::RegistryError;

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
