//! One replication job end to end: connect → plan → record → execute →
//! close the execution. `migrate`, policy runs and the daemon all go
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
use crate::engine::events::EventSink;
use crate::engine::execute::{Cancel, ExecuteOptions, NOT_ATTEMPTED, TaskEnd, execute};
use crate::engine::plan::{Action, Plan};
use crate::engine::referrers::Referrers;
use crate::engine::stats::{Snapshot, Stats};
use crate::engine::EngineError;
use crate::registry::{ClientOptions, Endpoint, RegistryError};
use crate::scheme::{self, Scheme};
use crate::state::{ExecutionSpec, ExecutionStatus, Recorder, StateDb, StateError};

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
        let options = DiffOptions { concurrency, overwrite: self.spec.overwrite, writes };
        let mut plan = diff(&*self.src, &*self.dst, found, options).await;
        if let Some(filter) = &self.spec.scope.platforms {
            crate::engine::platforms::narrow(&*self.src, &*self.dst, &mut plan, filter, concurrency, self.spec.overwrite).await;
        }
        // Signatures and fallback tags of manifests that will not be there.
        crate::engine::referrers::settle_subject_bound(&*self.dst, &mut plan, writes, concurrency).await;
        plan.planning_time = started.elapsed();
        Ok(plan)
    }

    /// Execute `plan`, recording into `state` when given. `stats` is shared
    /// with whoever shows progress.
    pub async fn run(&self, plan: &Plan, state: Option<&StateDb>, stats: &Arc<Stats>, cancel: &Cancel) -> Result<Report, JobError> {
        let started = Instant::now();
        let skipped = plan.items.iter().filter(|i| matches!(i.action, Action::Skip(_))).count();
        Stats::add(&stats.repos_total, plan.repositories as u64);
        Stats::add(&stats.tags_total, (plan.items.len() + plan.problems.len() + plan.unchecked) as u64);
        Stats::add(&stats.tags_skipped, (skipped + plan.unchecked) as u64);
        Stats::add(&stats.tags_failed, plan.problems.len() as u64);
        Stats::add(&stats.digest_mismatches, plan.digest_mismatches);

        // A policy pass that finds nothing to do does not pile up executions:
        // the last successful one is marked as checked again.
        if let (Some(db), "policy", 0, true) = (state, self.spec.kind.as_str(), plan.count_copy(), plan.problems.is_empty())
            && let Some(id) = db.touch_if_succeeded(&self.spec.scope_key()).await? {
                return Ok(Report {
                    execution: Some(id),
                    resumed: false,
                    status: ExecutionStatus::Succeeded,
                    counts: stats.snapshot(),
                    failures: Vec::new(),
                    elapsed: plan.planning_time + started.elapsed(),
                    source_requests: self.src.request_count(),
                    destination_requests: self.dst.request_count(),
                    conditions: Vec::new(),
                    not_attempted: 0,
                });
            }

        let registry_key = self.dst.name().to_string();
        let mut execution = None;
        let mut resumed = false;
        let (sink, recorder, hints): (EventSink, Option<Recorder>, Option<Arc<dyn MountHints>>) = match state {
            Some(db) => {
                let spec = ExecutionSpec {
                    kind: self.spec.kind.clone(),
                    policy: self.spec.policy.clone(),
                    scope_key: self.spec.scope_key(),
                    source: self.spec.source.url.to_string(),
                    destination: self.spec.destination.url.to_string(),
                    direction: if self.spec.reversed { "reversed" } else { "forward" }.into(),
                    resume_failed: self.spec.kind == "migrate",
                };
                let start = db.begin_execution(&spec).await?;
                execution = Some(start.id);
                resumed = start.resumed;
                let ids = db.record_plan(start.id, plan).await?;
                let hints = db.hints(&registry_key).await;
                let (sink, recorder) = Recorder::spawn(db.clone(), ids, registry_key.clone());
                (sink, Some(recorder), Some(Arc::new(hints)))
            }
            None => (EventSink::discard(), None, None),
        };

        // `regferry jobs cancel ID` from another process: checked every 2 s.
        let watcher = match (state, execution) {
            (Some(db), Some(id)) => Some(tokio::spawn(watch_cancel_request(db.clone(), id, cancel.clone()))),
            _ => None,
        };
        let ends = {
            let streams = self.spec.execute.concurrency.max(1);
            let new_repos = Arc::new(plan.new_repos.clone());
            let blobs = BlobMover::new(self.src.clone(), self.dst.clone(), hints, stats.clone(), sink.clone(), streams)
                .with_new_repos(new_repos.clone());
            let referrers = Referrers::new(self.spec.scope.referrers.as_ref().clone()).with_plan(plan);
            let copier = Copier::new(self.src.clone(), self.dst.clone(), blobs, stats.clone(), 4)
                .with_new_repos(new_repos)
                .with_referrers(referrers);
            execute(&copier, plan, &self.spec.execute, stats, &sink, cancel).await
        };
        if let Some(w) = watcher {
            w.abort();
        }
        drop(sink);
        if let Some(r) = recorder {
            r.finish().await?;
        }

        let mut failures: Vec<Failure> = plan
            .problems
            .iter()
            .map(|p| Failure {
                repository: p.source_repo.clone(),
                tag: p.tag.clone().unwrap_or_default(),
                error: p.error.clone(),
            })
            .collect();
        let mut canceled = 0;
        for (index, end) in ends {
            match end {
                TaskEnd::Failed(error) => {
                    let item = &plan.items[index];
                    failures.push(Failure { repository: item.source_repo.to_string(), tag: item.tag.to_string(), error });
                }
                TaskEnd::Canceled => canceled += 1,
                TaskEnd::Succeeded => {}
            }
        }
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
        if let (Some(db), Some(id)) = (state, execution) {
            let error = (!failures.is_empty()).then(|| {
                let mut error = format!("{} tag(s) failed", failures.len());
                for c in &conditions {
                    error.push_str(&format!("; {c}"));
                }
                if not_attempted > 0 {
                    error.push_str(&format!("; {not_attempted} tag(s) not attempted"));
                }
                error
            });
            db.finish_execution(id, status, &counts, error.as_deref()).await?;
        }
        Ok(Report {
            execution,
            resumed,
            status,
            counts,
            failures,
            elapsed: plan.planning_time + started.elapsed(),
            source_requests: self.src.request_count(),
            destination_requests: self.dst.request_count(),
            conditions,
            not_attempted,
        })
    }
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
