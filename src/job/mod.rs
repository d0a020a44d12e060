//! One replication job end to end: connect → plan → record → execute →
//! close the execution (a big scope planned and run in parts, see
//! [`parts`] and [`session`]). `migrate`, policy runs and the daemon all go
//! through here, so they resume, record and summarise the same way.
//!
//! This module wires the engine to the state database; it never parses CLI
//! flags or policy files and never prints (the caller renders the report).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::blobs::{BlobMover, MountHints};
use crate::engine::copy::Copier;
use crate::engine::diff::{DiffOptions, diff};
use crate::engine::discover::{Scope, discover};
use crate::engine::execute::{Cancel, ExecuteOptions, NOT_ATTEMPTED};
use crate::engine::plan::{Action, Plan};
use crate::engine::referrers::Referrers;
use crate::engine::stats::{Snapshot, Stats};
use crate::engine::EngineError;
use crate::registry::{ClientOptions, Endpoint, RegistryError};
use crate::scheme::{self, Scheme};
use crate::state::leases::{Holder, LeaseGuard, StateFence};
use crate::state::{ExecutionStatus, Recorder, StateDb, StateError};

mod parts;
mod session;

pub use parts::{Next, PART_TAGS, Parts, part_tags, set_part_tags};
pub use session::{PartEnd, Session};

/// Why a job could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("source {0}")]
    Source(RegistryError),
    #[error("destination {0}")]
    Destination(RegistryError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("worker {} holds this job{}; stopped while waiting for it", .0.worker, .0.execution.map(|e| format!(" (execution {e})")).unwrap_or_default())]
    Held(Holder),
    #[error("lost the lease of execution {0} (it expired while this worker stalled, and another worker took the job over)")]
    LeaseLost(i64),
}

/// What to replicate, from where to where, and how.
#[derive(Clone)]
pub struct JobSpec {
    /// `migrate` or `policy`.
    pub kind: String,
    pub policy: Option<String>,
    pub source: Endpoint,
    pub destination: Endpoint,
    pub scope: Scope,
    /// Words that, with the endpoints, identify the job for resuming
    /// (e.g. the repository globs).
    pub scope_words: Vec<String>,
    pub overwrite: bool,
    /// A policy running in the reverse direction after a failover.
    pub reversed: bool,
    pub execute: ExecuteOptions,
    pub client: ClientOptions,
}

impl JobSpec {
    /// Runs with the same key are the same job.
    pub fn scope_key(&self) -> String {
        let mut words = self.scope_words.clone();
        words.sort();
        format!(
            "{}|{}|{}|{}|{}",
            self.kind,
            self.policy.as_deref().unwrap_or(""),
            self.source.url,
            self.destination.url,
            words.join(",")
        )
    }
}

/// A tag that did not make it, with the reason.
#[derive(Debug, Clone)]
pub struct Failure {
    pub repository: String,
    pub tag: String,
    pub error: String,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub execution: Option<i64>,
    pub resumed: bool,
    pub status: ExecutionStatus,
    pub counts: Snapshot,
    pub failures: Vec<Failure>,
    /// Planning and copying.
    pub elapsed: Duration,
    pub source_requests: u64,
    pub destination_requests: u64,
    /// Conditions of the registries found during the run (down,
    /// read-only, out of space, quota nearly used), one line each.
    pub conditions: Vec<String>,
    /// Tags not started because of such a condition.
    pub not_attempted: usize,
    /// Tags held back by the policy's `require:` (the reason in `error`).
    pub unsigned: Vec<Failure>,
    /// What was asked of each registry (pulls, HEADs, bytes, 429s).
    pub usage: Vec<RegistryUsage>,
    /// When a registry's quota ran out: how long until it resets (the
    /// daemon tries again then).
    pub quota_resets_in: Option<Duration>,
}

/// One registry's share of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegistryUsage {
    /// `source` or `destination`.
    pub role: &'static str,
    pub registry: String,
    #[serde(flatten)]
    pub usage: crate::registry::usage::UsageSnapshot,
}

/// Connected clients for a job.
pub struct Job {
    pub spec: JobSpec,
    pub src: Arc<dyn Scheme>,
    pub dst: Arc<dyn Scheme>,
}

impl Job {
    /// Build the clients and check that both registries answer and accept
    /// our credentials, so a typo fails in one clear line.
    pub async fn connect(spec: JobSpec) -> Result<Job, JobError> {
        let src = scheme::connect(&spec.source, &spec.client, "source").map_err(JobError::Source)?;
        let dst = scheme::connect(&spec.destination, &spec.client, "destination").map_err(JobError::Destination)?;
        let (a, b) = tokio::join!(src.ping(), dst.ping());
        a.map_err(JobError::Source)?;
        b.map_err(JobError::Destination)?;
        Ok(Job { spec, src, dst })
    }

    /// Discover and diff: listings plus one `HEAD` per tag per side, for a
    /// run that goes on to write (the destination is asked for push at once).
    pub async fn plan(&self) -> Result<Plan, JobError> {
        self.plan_for(true).await
    }

    /// [`Job::plan`] for a dry run: the destination is only asked for pull.
    pub async fn plan_read_only(&self) -> Result<Plan, JobError> {
        self.plan_for(false).await
    }

    async fn plan_for(&self, writes: bool) -> Result<Plan, JobError> {
        let started = Instant::now();
        let concurrency = self.spec.execute.concurrency.max(4) * 2;
        let found = discover(&*self.src, self.dst.url(), &self.spec.scope, concurrency).await?;
        Ok(self.plan_found(found, writes, started).await)
    }

    /// Diff what discovery found, narrow it to the policy's platforms, hold
    /// back what the signature gate refuses and settle subject-bound tags.
    async fn plan_found(&self, found: crate::engine::discover::Discovered, writes: bool, started: Instant) -> Plan {
        let concurrency = self.spec.execute.concurrency.max(4) * 2;
        let options = DiffOptions { concurrency, overwrite: self.spec.overwrite, writes };
        let mut plan = diff(&*self.src, &*self.dst, found, options).await;
        if let Some(filter) = &self.spec.scope.platforms {
            crate::engine::platforms::narrow(&*self.src, &*self.dst, &mut plan, filter, concurrency, self.spec.overwrite, &self.spec.scope.narrowed)
                .await;
        }
        // Tags that do not meet the policy's `require:` stay behind (and so do their signatures).
        if let Some(req) = &self.spec.scope.require {
            crate::engine::gate::hold_back_unsigned(&self.src, &mut plan, req, concurrency).await;
        }
        // Signatures and fallback tags of manifests that will not be there.
        plan.left_behind =
            crate::engine::left_behind::settle_subject_bound(&*self.dst, &mut plan, writes, concurrency, self.spec.scope.referrers.untagged_subjects).await;
        plan.planning_time = started.elapsed();
        plan
    }

    /// The lease of this job, waiting while another worker holds it.
    pub async fn wait_for_lease(&self, db: &StateDb, cancel: &Cancel) -> Result<LeaseGuard, JobError> {
        let key = self.spec.scope_key();
        let mut told = false;
        loop {
            match db.hold_lease(&key).await? {
                Ok(guard) => return Ok(guard),
                Err(holder) => {
                    if !told {
                        tracing::warn!(worker = %holder.worker, execution = ?holder.execution, "another worker holds this job; waiting until it is done");
                        told = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = cancel.stop.cancelled() => return Err(JobError::Held(holder)),
                    }
                }
            }
        }
    }

    /// Work tasks of the recorded `execution` until none is left to claim
    /// (`until_done`: and until every other worker's are decided too).
    #[allow(clippy::too_many_arguments)]
    async fn work(
        &self,
        db: &StateDb,
        execution: i64,
        new_repos: Arc<std::collections::HashSet<crate::registry::RepoName>>,
        stats: &Arc<Stats>,
        cancel: &Cancel,
        until_done: bool,
        known: &std::collections::HashMap<i64, &crate::engine::plan::PlanItem>,
        referrers: Referrers,
    ) -> Result<crate::worker::Share, JobError> {
        let registry_key = self.dst.name().to_string();
        let hints: Arc<dyn MountHints> = Arc::new(db.hints(&registry_key).await);
        // Across processes only where several workers share a pass (SQLite:
        // one process at a time works an execution; in-process dedup suffices).
        let fence: Option<Arc<dyn crate::engine::blobs::BlobFence>> = match db.backend() {
            crate::state::Backend::Postgres => Some(Arc::new(StateFence::new(db.clone(), registry_key.clone()))),
            crate::state::Backend::Sqlite => None,
        };
        let (sink, recorder) = Recorder::spawn(db.clone(), registry_key);
        let share = {
            let streams = self.spec.execute.concurrency.max(1);
            let blobs = BlobMover::new(self.src.clone(), self.dst.clone(), Some(hints), stats.clone(), sink.clone(), streams)
                .with_new_repos(new_repos.clone())
                .with_fence(fence);
            let copier = Copier::new(self.src.clone(), self.dst.clone(), blobs, stats.clone(), 4)
                .with_new_repos(new_repos)
                .with_referrers(referrers);
            let holder = (!until_done).then(|| self.spec.scope_key());
            crate::worker::work(&copier, db, execution, &self.spec.execute, stats, &sink, cancel, until_done, holder.as_deref(), known).await
        };
        drop(sink);
        recorder.finish().await?;
        Ok(share?)
    }

    /// Help with `execution`, which another worker holds: claim and copy its
    /// tasks until none is left to claim. The report counts what this
    /// worker did; the holder closes the execution.
    pub async fn help(&self, db: &StateDb, execution: i64, stats: &Arc<Stats>, cancel: &Cancel) -> Result<Report, JobError> {
        let started = Instant::now();
        let watcher = tokio::spawn(watch_cancel_request(db.clone(), execution, cancel.clone()));
        // (No plan here: the referrers of what this worker copies are found
        // by asking the source, not from the planner's tag listing.)
        let referrers = Referrers::new(self.spec.scope.referrers.as_ref().clone());
        let share = self.work(db, execution, Arc::default(), stats, cancel, false, &Default::default(), referrers).await;
        watcher.abort();
        let share = share?;
        tracing::info!(execution, tasks = share.ends.len(), "helped with an execution another worker holds");
        self.src.settle().await;
        let mut report = self.report(Some(execution), true, Vec::new(), 0, Vec::new(), stats, started.elapsed());
        report.status = ExecutionStatus::Running;
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        execution: Option<i64>,
        resumed: bool,
        failures: Vec<Failure>,
        canceled: u64,
        unsigned: Vec<Failure>,
        stats: &Arc<Stats>,
        elapsed: Duration,
    ) -> Report {
        let status = if canceled > 0 {
            ExecutionStatus::Canceled
        } else if failures.is_empty() {
            ExecutionStatus::Succeeded
        } else {
            ExecutionStatus::Failed
        };
        let counts = stats.snapshot();
        let not_attempted = failures.iter().filter(|f| f.error.starts_with(NOT_ATTEMPTED)).count();
        let conditions: Vec<String> =
            [self.src.halted(true), self.dst.halted(true)].into_iter().flatten().map(|e| e.to_string()).collect();
        Report {
            execution,
            resumed,
            status,
            counts,
            failures,
            elapsed,
            source_requests: self.src.request_count(),
            destination_requests: self.dst.request_count(),
            conditions,
            not_attempted,
            unsigned,
            usage: self.usage(),
            quota_resets_in: [self.src.quota_resets_in(), self.dst.quota_resets_in()].into_iter().flatten().max(),
        }
    }

    /// What each side was asked so far.
    fn usage(&self) -> Vec<RegistryUsage> {
        [("source", &self.src), ("destination", &self.dst)]
            .into_iter()
            .map(|(role, s)| RegistryUsage {
                role,
                registry: s.name().to_string(),
                usage: s.registry().map(|c| c.usage().snapshot()).unwrap_or_default(),
            })
            .collect()
    }
}

/// The tags `plan` holds back for the policy's `require:`, sorted.
fn unsigned_of(plan: &Plan) -> Vec<Failure> {
    let mut out: Vec<Failure> = plan
        .refused
        .iter()
        .map(|((repo, tag), why)| Failure { repository: repo.to_string(), tag: tag.to_string(), error: why.clone() })
        .collect();
    out.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
    out
}

/// The plan's problems (found while planning), as failures of the run.
fn problems_of(plan: &Plan) -> Vec<Failure> {
    plan.problems
        .iter()
        .map(|p| Failure { repository: p.source_repo.clone(), tag: p.tag.clone().unwrap_or_default(), error: p.error.clone() })
        .collect()
}

/// Count a plan (or a part of one) into the run's progress.
fn count_plan(plan: &Plan, stats: &Stats) {
    let skipped = plan.items.iter().filter(|i| matches!(i.action, Action::Skip(_))).count();
    Stats::add(&stats.repos_total, plan.repositories as u64);
    Stats::add(&stats.tags_total, (plan.items.len() + plan.problems.len() + plan.unchecked) as u64);
    Stats::add(&stats.tags_skipped, (skipped + plan.unchecked) as u64);
    Stats::add(&stats.tags_failed, plan.problems.len() as u64);
    Stats::add(&stats.digest_mismatches, plan.digest_mismatches);
}

/// Stop `cancel` when an operator asks (via the state database) to cancel
/// `execution`. Runs until aborted.
async fn watch_cancel_request(db: StateDb, execution: i64, cancel: Cancel) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        if let Ok(true) = db.cancel_requested(execution).await {
            tracing::warn!(execution, "canceled by an operator: no new tags are started");
            cancel.stop.cancel();
            return;
        }
    }
}
