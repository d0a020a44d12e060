//! One worker's share of a recorded execution: claim a task nobody works,
//! copy it, and claim the next — `concurrency` at a time — until nothing is
//! left to claim. Several processes (on one machine or many, against one
//! state) may do this on the same execution at once; the state hands each
//! task to one of them.
//!
//! Claims are renewed every heartbeat; a claim this worker finds taken by
//! another (it stalled past its lease) is aborted here, and what it would
//! still record is ignored by the state. This module never plans, never
//! opens or closes an execution, and never decides when a pass happens.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use crate::engine::copy::Copier;
use crate::engine::events::{Event, EventSink};
use crate::engine::execute::{Cancel, ExecuteOptions, TaskEnd, run_task};
use crate::engine::plan::{Action, CopyReason, PlanItem};
use crate::engine::stats::Stats;
use crate::registry::ManifestHead;
use crate::state::leases::ClaimedTask;
use crate::state::{StateDb, StateError, TaskStatus};

/// How often a worker with free slots looks for tasks released by others.
const POLL: Duration = Duration::from_millis(300);

/// What this worker did in an execution: the end of each task it claimed.
#[derive(Debug, Default)]
pub struct Share {
    pub ends: Vec<(i64, TaskEnd)>,
}

/// The plan item a claimed task stands for.
fn item_of(task: &ClaimedTask) -> Result<PlanItem, String> {
    let digest = task.source_digest.as_deref().ok_or("the task has no source digest")?;
    let reason = match task.reason.as_deref() {
        Some("digest differs") => CopyReason::DigestDiffers,
        Some("media type differs") => CopyReason::MediaTypeDiffers,
        _ => CopyReason::Missing,
    };
    Ok(PlanItem {
        source_repo: task.source_repo.parse().map_err(|e| format!("{e}"))?,
        dest_repo: task.dest_repo.parse().map_err(|e| format!("{e}"))?,
        tag: task.tag.parse().map_err(|e| format!("{e}"))?,
        source: ManifestHead { digest: digest.parse().map_err(|e| format!("{e}"))?, media_type: task.media_type.clone().unwrap_or_default() },
        // (A pinned item, `copy` under another reference, is never shared with helpers.)
        from: None,
        source_body: None,
        dest: None,
        action: Action::Copy(reason),
        // (A narrowed index is never claimed by a worker without the plan.)
        platforms: None,
    })
}

/// Work tasks of `execution` until none is left to claim (`known`: the plan
/// items of the tasks this worker planned, by task id). With `until_done`
/// (the worker that closes the execution) it also waits for the tasks other
/// workers hold, taking over those whose claims expire. A helper (`holder`:
/// the job whose lease another worker holds) stops claiming once that lease
/// expires, so that its daemon takes the whole pass over. Stops claiming
/// when `cancel.stop` fires; in-flight tasks end when `cancel.abort` does.
#[allow(clippy::too_many_arguments)]
pub async fn work(
    copier: &Copier,
    db: &StateDb,
    execution: i64,
    options: &ExecuteOptions,
    stats: &Arc<Stats>,
    events: &EventSink,
    cancel: &Cancel,
    until_done: bool,
    holder: Option<&str>,
    known: &HashMap<i64, &PlanItem>,
) -> Result<Share, StateError> {
    let concurrency = options.concurrency.max(1);
    let mut held: HashMap<i64, CancellationToken> = HashMap::new();
    let mut inflight = FuturesUnordered::new();
    // Transfers that ended while a state call was being made.
    let mut ended = VecDeque::new();
    // Ends the state did not take (it did not answer): tried again every heartbeat.
    let mut unrecorded: Vec<(i64, TaskStatus, Option<String>)> = Vec::new();
    let mut share = Share::default();
    let mut heartbeat = tokio::time::interval(db.worker().heartbeat());
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut exhausted = false;
    let mut orphaned = false;
    loop {
        if let Some((id, end)) = ended.pop_front() {
            held.remove(&id);
            let (status, error) = match &end {
                TaskEnd::Succeeded => (TaskStatus::Succeeded, None),
                TaskEnd::Failed(e) => (TaskStatus::Failed, Some(e.clone())),
                TaskEnd::Canceled => (TaskStatus::Canceled, None),
            };
            if let Err(e) = beside(&mut inflight, &mut ended, db.end_claim(id, status, error.as_deref())).await {
                tracing::warn!(task = id, error = %e, "cannot record the end of a claim; trying again");
                unrecorded.push((id, status, error));
            }
            share.ends.push((id, end));
            // A task decided may make others claimable at once (the
            // signatures of its manifest wait for it): look again now,
            // not after the next poll — a run whose tasks keep ending more
            // often than that would never look again, and the wait between
            // a pass's images and their signatures left both registries idle.
            exhausted = false;
            continue;
        }
        while inflight.len() < concurrency && !exhausted && !orphaned && !cancel.stop.is_cancelled() {
            let task = match beside(&mut inflight, &mut ended, db.claim_task(execution, until_done)).await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    exhausted = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(execution, error = %e, "cannot claim a task");
                    exhausted = true;
                    break;
                }
            };
            let id = task.id;
            let index = usize::try_from(id).unwrap_or(usize::MAX);
            // The planner's own item (with the manifest bytes planning
            // fetched) when this worker planned the task.
            let item = match known.get(&id).map(|i| Ok((*i).clone())).unwrap_or_else(|| item_of(&task)) {
                Ok(item) => item,
                Err(error) => {
                    events.send(Event::TaskFailed { index, attempts: 0, error: format!("cannot be copied: {error}") }).await;
                    ended.push_back((id, TaskEnd::Failed(error)));
                    held.insert(id, CancellationToken::new());
                    continue;
                }
            };
            tracing::debug!(execution, task = id, repository = %item.dest_repo, tag = %item.tag, "claimed");
            let abort = cancel.abort.child_token();
            held.insert(id, abort.clone());
            let task_cancel = Cancel { stop: cancel.stop.clone(), abort };
            inflight.push(async move {
                let end = run_task(copier, &item, index, options, stats, events, &task_cancel).await;
                (id, end)
            });
        }
        if !ended.is_empty() {
            continue;
        }
        if inflight.is_empty() {
            if !until_done || orphaned || cancel.stop.is_cancelled() {
                break;
            }
            if db.unfinished_tasks(execution).await? == 0 {
                break;
            }
        }
        tokio::select! {
            Some(end) = inflight.next() => ended.push_back(end),
            _ = heartbeat.tick() => {
                for (id, status, error) in std::mem::take(&mut unrecorded) {
                    if let Err(e) = beside(&mut inflight, &mut ended, db.end_claim(id, status, error.as_deref())).await {
                        tracing::warn!(task = id, error = %e, "cannot record the end of a claim; trying again");
                        unrecorded.push((id, status, error));
                    }
                }
                if let Some(name) = holder.filter(|_| !orphaned)
                    && let Ok(None) = beside(&mut inflight, &mut ended, db.lease_holder(name)).await
                {
                    tracing::warn!(execution, "the worker holding this pass is gone: taking it over after the tasks in flight");
                    orphaned = true;
                }
                if held.is_empty() {
                    continue;
                }
                match beside(&mut inflight, &mut ended, db.renew_claims(execution)).await {
                    Ok(mine) => {
                        for (id, abort) in &held {
                            if !mine.contains(id) && !abort.is_cancelled() {
                                tracing::error!(task = id, "lost the claim on a task (its lease expired and another worker took it): stopping it");
                                abort.cancel();
                            }
                        }
                    }
                    Err(e) => tracing::warn!(execution, error = %e, "cannot renew task claims"),
                }
            }
            _ = tokio::time::sleep(POLL), if inflight.len() < concurrency => exhausted = false,
            _ = cancel.abort.cancelled(), if inflight.is_empty() => break,
        }
    }
    // The last word on ends the state did not take: the run fails rather
    // than leave a task `running` under a claim nobody renews.
    for (id, status, error) in unrecorded {
        db.end_claim(id, status, error.as_deref()).await?;
    }
    Ok(share)
}

/// Await `call`, a state call, while the transfers in flight go on.
///
/// A transfer makes state calls of its own (mount hints, blob fences), and
/// while one of them holds a connection of the pool — SQLite's only one —
/// the call here may be waiting for that very connection: were the
/// transfers not polled meanwhile, the connection (or a PostgreSQL
/// transaction holding row locks) would never be given back and the run
/// would wedge. Transfers that end meanwhile are kept in `ended`.
async fn beside<F: Future, S: Stream + Unpin>(inflight: &mut S, ended: &mut VecDeque<S::Item>, call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    loop {
        tokio::select! {
            biased;
            out = &mut call => return out,
            Some(end) = inflight.next() => ended.push_back(end),
        }
    }
}
