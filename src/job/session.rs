//! One recorded run of a job, fed its plan part by part: the execution is
//! opened by the first part with something to record, every part's tasks
//! are recorded into it and worked, and [`Session::close`] closes it once —
//! so a pass planned in parts (see [`super::parts`]) is still one execution
//! with one status. A pass with nothing to do records no new execution: the
//! last successful one is marked as checked again.
//!
//! It holds the job's lease from open to close and never releases it
//! earlier; it never plans and never prints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Failure, Job, JobError, Report, count_plan, problems_of, unsigned_of, watch_cancel_request};
use crate::engine::execute::{Cancel, TaskEnd};
use crate::engine::plan::{Action, Plan, SkipReason};
use crate::engine::referrers::Referrers;
use crate::engine::stats::Stats;
use crate::state::leases::LeaseGuard;
use crate::state::{ExecutionSpec, StateDb};

/// How one part of a run ended.
#[derive(Debug, Default)]
pub struct PartEnd {
    /// The part's failed tags and problems.
    pub failures: Vec<Failure>,
    /// Some of its tasks were canceled (the run was stopped).
    pub canceled: bool,
}

/// A run of `job` in progress under its lease (see the module comment).
pub struct Session<'a> {
    job: &'a Job,
    db: &'a StateDb,
    lease: LeaseGuard,
    /// (id, resumed) once opened.
    execution: Option<(i64, bool)>,
    /// The earlier successful execution marked as checked again, while no
    /// part had anything to record.
    touched: Option<i64>,
    failures: Vec<Failure>,
    unsigned: Vec<Failure>,
    canceled: u64,
    /// The run was stopped before every part ran.
    stopped: bool,
    /// Planning and working time of the parts so far.
    elapsed: Duration,
}

impl Job {
    /// A recorded run of this job, holding its `lease` until closed.
    pub fn session<'a>(&'a self, db: &'a StateDb, lease: LeaseGuard) -> Session<'a> {
        Session { job: self, db, lease, execution: None, touched: None, failures: Vec::new(), unsigned: Vec::new(), canceled: 0, stopped: false, elapsed: Duration::ZERO }
    }
}

impl Session<'_> {
    /// Record `plan` (one part of the run) and work its tasks until every
    /// one is decided.
    pub async fn run_part(&mut self, plan: &Plan, stats: &Arc<Stats>, cancel: &Cancel) -> Result<PartEnd, JobError> {
        let started = Instant::now();
        let (job, db) = (self.job, self.db);
        count_plan(plan, stats);
        self.elapsed += plan.planning_time;
        self.unsigned.extend(unsigned_of(plan));
        let scope_key = job.spec.scope_key();
        let problems = problems_of(plan);
        // Nothing to copy and nothing new to say: no execution of its own
        // while none is open (tags held back by `require:` are news only
        // when the last execution did not already record them so).
        if self.execution.is_none() && job.spec.kind == "policy" && plan.count_copy() == 0 && problems.is_empty() {
            let refused_known = plan.refused.is_empty() || {
                let known = db.latest_unsigned(&scope_key).await?;
                plan.items
                    .iter()
                    .filter(|i| i.action == Action::Skip(SkipReason::Unsigned))
                    .all(|i| known.contains(&(i.source_repo.to_string(), i.tag.to_string(), i.source.digest.to_string())))
            };
            if refused_known && self.touched.is_none() {
                self.touched = db.touch_if_succeeded(&scope_key).await?;
            }
            if refused_known && self.touched.is_some() {
                self.elapsed += started.elapsed();
                return Ok(PartEnd::default());
            }
        }
        let id = match self.execution {
            Some((id, _)) => id,
            None => {
                let spec = ExecutionSpec {
                    kind: job.spec.kind.clone(),
                    policy: job.spec.policy.clone(),
                    scope_key: scope_key.clone(),
                    source: job.spec.source.url.to_string(),
                    destination: job.spec.destination.url.to_string(),
                    direction: if job.spec.reversed { "reversed" } else { "forward" }.into(),
                    resume_failed: job.spec.kind == "migrate",
                };
                let start = db.begin_execution(&spec).await?;
                db.set_lease_execution(&scope_key, start.id).await?;
                self.execution = Some((start.id, start.resumed));
                start.id
            }
        };
        let ids = db.record_plan(id, plan).await?;
        // The lease lost (this worker stalled past it): stop at once.
        let cancel = &Cancel { stop: cancel.stop.child_token(), abort: cancel.abort.child_token() };
        let linked = {
            let (lost, c) = (self.lease.lost.clone(), cancel.clone());
            tokio::spawn(async move {
                lost.cancelled().await;
                c.stop.cancel();
                c.abort.cancel();
            })
        };
        // `regferry jobs cancel ID` from another process: checked every 2 s.
        let watcher = tokio::spawn(watch_cancel_request(db.clone(), id, cancel.clone()));
        let known: std::collections::HashMap<i64, &crate::engine::plan::PlanItem> =
            ids.iter().copied().zip(plan.items.iter()).filter(|(_, i)| matches!(i.action, Action::Copy(_))).collect();
        let referrers = Referrers::new(job.spec.scope.referrers.as_ref().clone()).with_plan(plan);
        let share = job.work(db, id, Arc::new(plan.new_repos.clone()), stats, cancel, true, &known, referrers).await;
        watcher.abort();
        linked.abort();
        let share = share?;
        if self.lease.lost.is_cancelled() {
            return Err(JobError::LeaseLost(id));
        }
        let mut canceled = share.ends.iter().filter(|(_, e)| *e == TaskEnd::Canceled).count() as u64;
        if cancel.stop.is_cancelled() {
            canceled += db.cancel_pending(id).await?;
        }
        // Every worker's outcome of this part's tasks, as recorded.
        // (Sorted ids rather than a set: a part over many tags holds one
        // id per tag here.)
        let mut wanted = ids;
        wanted.sort_unstable();
        let mut failures = problems;
        failures.extend(
            db.failed_tasks(id)
                .await?
                .into_iter()
                .filter(|t| wanted.binary_search(&t.id).is_ok())
                .map(|t| Failure { repository: t.source_repo, tag: t.tag, error: t.last_error.unwrap_or_default() }),
        );
        let counted = stats.snapshot();
        Stats::add(&stats.repos_done, counted.repos_total.saturating_sub(counted.repos_done));
        job.src.settle().await;
        self.canceled += canceled;
        self.failures.extend(failures.iter().cloned());
        self.elapsed += started.elapsed();
        Ok(PartEnd { failures, canceled: canceled > 0 })
    }

    /// Say that the run was stopped with parts not run: it closes as
    /// canceled (and the next run of the job resumes its execution).
    pub fn stopped(&mut self) {
        self.stopped = true;
    }

    /// Give the lease back without closing the execution (a run that could
    /// not go on: the next run of the job resumes what it left).
    pub async fn release(self) {
        self.lease.release().await;
    }

    /// Close the execution (its status from every part) and give the lease back.
    pub async fn close(self, stats: &Arc<Stats>) -> Result<Report, JobError> {
        let Some((id, resumed)) = self.execution else {
            // Every part had nothing to do: the earlier execution stands.
            self.lease.release().await;
            let mut report = self.job.report(self.touched, false, Vec::new(), u64::from(self.stopped), self.unsigned, stats, self.elapsed);
            report.conditions.clear();
            report.quota_resets_in = None;
            return Ok(report);
        };
        let canceled = self.canceled + u64::from(self.stopped);
        let report = self.job.report(Some(id), resumed, self.failures, canceled, self.unsigned, stats, self.elapsed);
        let error = (!report.failures.is_empty()).then(|| {
            let mut error = format!("{} tag(s) failed", report.failures.len());
            for c in &report.conditions {
                error.push_str(&format!("; {c}"));
            }
            if report.not_attempted > 0 {
                error.push_str(&format!("; {} tag(s) not attempted", report.not_attempted));
            }
            error
        });
        self.db.finish_execution(id, report.status, &report.counts, error.as_deref()).await?;
        self.lease.release().await;
        Ok(report)
    }
}
