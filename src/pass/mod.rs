//! One pass of one policy: check the failover fence at the DR site, then for
//! each destination on its own, connect, plan, hold back tags that are
//! backing off, execute, mirror deletions within the deletion guard, and file
//! the outcomes. The destinations run concurrently; with two or more, their
//! source clients read through one [`SourceShare`] of the pass, so each
//! source manifest and blob is read once for all (see
//! [`crate::scheme::shared`]); its spool is removed when the pass ends.
//!
//! A destination that fails (unreachable, wrong password) never stops the
//! others; a fence that contradicts the state stops the whole pass. This module is shared by `regferry run`, the daemon and
//! `failover` (so it sits below all three and never reaches up into any of
//! them); it never prints and never decides when a pass happens.

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

pub mod fence;
pub mod prune;
pub mod metrics;
pub mod preview;

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

async fn run_destination(policy: &Policy, spec: JobSpec, state: &StateDb, cancel: &Cancel, share: Option<&Arc<SourceShare>>) -> DestinationOutcome {
    // This execution's own tokens: stopping the process stops it, but an
    // operator canceling the execution (`jobs cancel`, the API) stops only
    // it — not the daemon, nor the other destinations and policies.
    let cancel = &Cancel { stop: cancel.stop.child_token(), abort: cancel.abort.child_token() };
    let mut outcome = DestinationOutcome::new(spec.source.url.to_string(), spec.destination.url.to_string(), spec.reversed);
    let scope_key = spec.scope_key();
    let mut job = match Job::connect(spec).await {
        Ok(job) => job,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    // Deletions ask the source afresh (a tag gone is proof only from a
    // request of its own), never through what the pass shares.
    let fresh_src = job.src.clone();
    if let Some(share) = share {
        job.src = share.wrap(job.src.clone());
    }
    // One worker plans and closes a pass; the daemon's other workers help
    // with it, `run` waits for it to end.
    let mut told = false;
    let lease = loop {
        let held = match state.hold_lease(&scope_key).await {
            Ok(held) => held,
            Err(e) => {
                outcome.error = Some(e.to_string());
                return outcome;
            }
        };
        match held {
            // Fencing: never start while another worker switches the policy
            // (its catch-up pass needs this lease: give it back and wait).
            Ok(lease) => match switching_elsewhere(&policy.name, state).await {
                Ok(false) => break lease,
                Ok(true) => {
                    lease.release().await;
                    if !told {
                        told = true;
                        tracing::info!(policy = %policy.name, "the policy is being switched (failover/failback); waiting");
                    }
                }
                Err(e) => {
                    lease.release().await;
                    outcome.error = Some(e.to_string());
                    return outcome;
                }
            },
            Err(holder) if state.worker().joins => {
                if let Some(execution) = holder.execution {
                    let stats = Arc::new(Stats::default());
                    tracing::info!(policy = %policy.name, execution, holder = %holder.worker, "helping with a pass another worker holds");
                    match job.help(state, execution, &stats, cancel).await {
                        Ok(report) => outcome.report = Some(report),
                        Err(e) => outcome.error = Some(e.to_string()),
                    }
                    outcome.helped = Some(execution);
                    return outcome;
                }
                // The holder is still planning: look again shortly.
            }
            Err(holder) if !told => {
                told = true;
                tracing::info!(policy = %policy.name, holder = %holder.worker, "another worker holds this pass; waiting until it is done");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(if state.worker().joins { 250 } else { 1000 })) => {}
            _ = cancel.stop.cancelled() => {
                outcome.error = Some("stopped while another worker held the pass".into());
                return outcome;
            }
        }
    };
    // The direction and its generation, read under the lease: a pass built
    // for the other direction (it waited behind a switch) writes nothing.
    let direction = match state.direction(&policy.name).await {
        Ok(d) => d,
        Err(e) => {
            lease.release().await;
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    if direction.reversed != job.spec.reversed {
        lease.release().await;
        outcome.error = Some(format!(
            "policy {} was switched to run {} (generation {}) while this pass waited: not running the old direction",
            policy.name,
            if direction.reversed { "reversed" } else { "forward" },
            direction.generation
        ));
        outcome.fenced = true;
        return outcome;
    }
    let mut plan = match job.plan_remembering(Some(state)).await {
        Ok(plan) => plan,
        Err(e) => {
            lease.release().await;
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    outcome.unmatched = std::mem::take(&mut plan.unmatched);
    for pattern in &outcome.unmatched {
        tracing::warn!(policy = %policy.name, source = %outcome.source, pattern = %pattern, "repository pattern matches no repository at the source");
    }
    match hold_back(&mut plan, state, &scope_key, policy.retry.give_up_after).await {
        Ok(n) => outcome.deferred = n,
        Err(e) => {
            lease.release().await;
            outcome.error = Some(e.to_string());
            return outcome;
        }
    }
    // Referrers listed by a source's API: synced for unchanged tags only when the list changed.
    // A source known to lack the API is not asked again for a day.
    let seen = state.referrer_lists(&scope_key).await.unwrap_or_default();
    let concurrency = policy.concurrency.max(4) * 2;
    let api = if referrers::api_known_unsupported(&seen, now_ms()) {
        referrers::ApiCheck::default()
    } else {
        // Immutable tags the destination lists are not compared, but their
        // referrers are asked about like any other tag's.
        let narrowing = job.spec.scope.platforms.is_some();
        let back = crate::engine::immutable::bring_back(&*job.dst, &mut plan, &seen, narrowing, concurrency).await;
        let mut api = referrers::check_api_referrers(&*job.src, &mut plan, &job.spec.scope.referrers, &seen, concurrency).await;
        api.lists.extend(back);
        if !api.unsupported {
            api.lists.extend(left_behind::name_rewritten(&*job.src, &plan, &job.spec.scope.referrers.types, &seen, concurrency).await);
        }
        api
    };
    // Referrers whose subject will not be at the destination: named once.
    let left_rows = left_behind::name_tags(&plan.left_behind, &seen);
    tracing::info!(
        policy = %policy.name,
        destination = %outcome.destination,
        tags = plan.items.len(),
        to_copy = plan.count_copy(),
        deferred = outcome.deferred,
        "pass planned"
    );
    let stats = Arc::new(Stats::default());
    // Fencing while it writes: a switch recorded meanwhile (a failover that
    // could not reach the primary does not wait for this pass) stops it
    // before its next writes.
    let switched = tokio_util::sync::CancellationToken::new();
    let watch = tokio::spawn(watch_direction(state.clone(), policy.name.clone(), direction, cancel.stop.clone(), switched.clone()));
    job.spec.scope.counters.set_transfer(stats.clone());
    let report = job.run_leased(&plan, Some(state), &stats, cancel, Some(lease)).await;
    watch.abort();
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    if switched.is_cancelled() {
        outcome.error = Some(format!("policy {} was switched (failover/failback) during this pass: stopped it, nothing deleted", policy.name));
        outcome.fenced = true;
        outcome.report = Some(report);
        return outcome;
    }
    let retry = policy.retry;
    let delay = move |failures: u32| -> Duration { retry.delay(failures) };
    let outcomes = outcomes_of(&plan, &report);
    let failed: HashSet<(&str, &str)> = report.failures.iter().map(|f| (f.repository.as_str(), f.tag.as_str())).collect();
    let mut lists: Vec<(String, String, String)> = api
        .lists
        .into_iter()
        .map(|(n, subject, list)| (&plan.items[n], subject, list))
        .filter(|(i, _, _)| !matches!(i.action, Action::Skip(SkipReason::RetryDeferred)) && !failed.contains(&(i.source_repo.as_str(), i.tag.as_str())))
        .map(|(i, subject, list)| (i.source_repo.to_string(), subject, list))
        .collect();
    lists.extend(left_rows);
    if api.unsupported {
        let (repo, subject) = referrers::API_SENTINEL;
        lists.push((repo.to_string(), subject.to_string(), referrers::api_unsupported_mark(now_ms())));
    }
    if report.status.as_str() != "canceled"
        && let Err(e) = state.record_referrer_lists(&scope_key, &lists).await
    {
        tracing::error!(policy = %policy.name, error = %e, "cannot record referrer lists");
    }
    if let Err(e) = state.record_outcomes(&scope_key, &outcomes, &delay).await {
        tracing::error!(policy = %policy.name, error = %e, "cannot record retry state");
    }
    // What this pass wrote (or found identical to what it would write) is
    // regferry's at the destination: the only tags deletion sync may delete.
    let destination = job.spec.destination.url.base().as_str().trim_end_matches('/').to_string();
    if report.status.as_str() != "canceled"
        && let Err(e) = state.record_owned(&policy.name, &destination, direction, &owned_by(&plan, &report)).await
    {
        tracing::error!(policy = %policy.name, error = %e, "cannot record what the pass wrote");
    }
    // Deletions only after a pass that ran to its end, inside the job's
    // lease, and only while the direction is still the one this pass ran.
    if policy.delete && report.status.as_str() != "canceled" && !cancel.stop.is_cancelled() {
        let p = match prune_leased(policy, &job, &*fresh_src, state, &scope_key, direction, &destination).await {
            Ok(p) => p,
            Err(e) => PruneReport { errors: vec![format!("deletions not mirrored: {e}")], ..PruneReport::default() },
        };
        // A refused or failed sweep fails the pass, and its execution says why.
        let reasons: Vec<String> = p
            .refused
            .iter()
            .map(|r| format!("deletions refused: {r}"))
            .chain(p.errors.iter().map(|e| format!("deletion failed: {e}")))
            .collect();
        for r in &p.refused {
            tracing::error!(policy = %policy.name, destination = %outcome.destination, reason = %r, "deletions refused");
        }
        if let (false, Some(id)) = (reasons.is_empty(), report.execution)
            && let Err(e) = state.fail_execution(id, &reasons.join("; ")).await
        {
            tracing::error!(policy = %policy.name, error = %e, "cannot record the refused deletions");
        }
        outcome.prune = Some(p);
    }
    outcome.report = Some(report);
    outcome
}

/// Stop a pass (`stop`) and say so (`switched`) once the direction or its
/// generation differs from `direction`; read every second.
async fn watch_direction(state: StateDb, policy: String, direction: crate::state::Direction, stop: tokio_util::sync::CancellationToken, switched: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        if let Ok(now) = state.direction(&policy).await
            && now != direction
        {
            tracing::error!(policy = %policy, from = direction.generation, to = now.generation, "the policy was switched during this pass: stopping it");
            switched.cancel();
            stop.cancel();
            return;
        }
    }
}

/// The deletion sweep of a pass, under the job's lease (taken again: the
/// run gave it up) and only while the direction and its generation are the
/// ones the pass ran with. Returns a report that says why when it did not run.
/// `src` is the source as the job's own client reaches it (not shared).
async fn prune_leased(
    policy: &Policy,
    job: &Job,
    src: &dyn crate::scheme::Scheme,
    state: &StateDb,
    scope_key: &str,
    direction: crate::state::Direction,
    destination: &str,
) -> Result<PruneReport, String> {
    let lease = match state.hold_lease(scope_key).await.map_err(|e| e.to_string())? {
        Ok(lease) => lease,
        Err(holder) => {
            return Ok(PruneReport { kept: vec![format!("deletions wait for the next pass: worker {} holds this job now", holder.worker)], ..PruneReport::default() });
        }
    };
    let result = async {
        let now = state.direction(&policy.name).await.map_err(|e| e.to_string())?;
        if now != direction || switching_elsewhere(&policy.name, state).await.map_err(|e| e.to_string())? {
            return Err(format!(
                "policy {} is being switched or was switched (generation {} → {}) during this pass: nothing deleted",
                policy.name, direction.generation, now.generation
            ));
        }
        let owned = state.owned(&policy.name, destination).await.map_err(|e| e.to_string())?;
        let concurrency = policy.concurrency.max(4) * 2;
        let guard = Guard { max_delete: policy.max_delete, force: policy.force_delete, dry_run: false };
        let p = prune(src, &*job.dst, &job.spec.scope, &policy.tags, concurrency, guard, &owned).await.map_err(|e| e.to_string())?;
        for (repo, tag) in &p.forget {
            if let Err(e) = state.forget_owned(&policy.name, destination, repo, tag).await {
                tracing::error!(policy = %policy.name, error = %e, "cannot forget a deleted tag");
            }
        }
        Ok(p)
    }
    .await;
    lease.release().await;
    result
}

/// The tags a pass wrote at the destination, or found there identical to
/// what it would write: (destination repository, tag, digest).
fn owned_by(plan: &Plan, report: &Report) -> Vec<crate::state::Owned> {
    let failed: HashSet<(&str, &str)> = report.failures.iter().map(|f| (f.repository.as_str(), f.tag.as_str())).collect();
    plan.items
        .iter()
        .filter(|i| matches!(i.action, Action::Copy(_) | Action::Skip(SkipReason::UpToDate)))
        .filter(|i| plan.rechecked.is_empty() || !plan.rechecked.contains(&(i.source_repo.clone(), i.tag.clone())))
        .filter(|i| !failed.contains(&(i.source_repo.as_str(), i.tag.as_str())))
        .map(|i| crate::state::Owned { dest_repo: i.dest_repo.to_string(), tag: i.tag.to_string(), digest: i.target_digest().to_string() })
        .collect()
}

/// Hold back tags that failed on earlier passes: not yet due → skipped for
/// now; failed too often with the same source digest → given up (recorded as
/// failed, with the last error). Returns how many were deferred.
pub(crate) async fn hold_back(plan: &mut Plan, state: &StateDb, scope_key: &str, give_up_after: u32) -> Result<usize, crate::state::StateError> {
    let failing = state.failing_tags(scope_key).await?;
    if failing.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    let mut deferred = 0;
    let mut given_up = Vec::new();
    plan.items.retain_mut(|item| {
        if !matches!(item.action, Action::Copy(_)) {
            return true;
        }
        let key = (item.source_repo.to_string(), item.tag.to_string());
        let Some(f) = failing.get(&key) else { return true };
        if f.source_digest.as_deref() != Some(item.source.digest.as_str()) {
            return true; // the source changed: a fresh start
        }
        if f.failures >= give_up_after {
            given_up.push(Problem {
                source_repo: key.0,
                dest_repo: Some(item.dest_repo.to_string()),
                tag: Some(key.1),
                error: format!(
                    "gave up after {} failed passes (until the source tag changes or `regferry jobs retry`): {}",
                    f.failures,
                    f.last_error.as_deref().unwrap_or("unknown error")
                ),
            });
            return false;
        }
        if f.next_attempt_at > now {
            item.action = Action::Skip(SkipReason::RetryDeferred);
            deferred += 1;
        }
        true
    });
    plan.problems.extend(given_up);
    Ok(deferred)
}

/// Successes clear a tag's failure count; failures add to it. Given-up tags
/// (plan problems) are left as they are.
fn outcomes_of<'a>(plan: &'a Plan, report: &'a Report) -> Vec<Outcome<'a>> {
    let failed: HashSet<(&str, &str)> = report.failures.iter().map(|f| (f.repository.as_str(), f.tag.as_str())).collect();
    let mut out = Vec::new();
    for item in &plan.items {
        let (repo, tag) = (item.source_repo.as_str(), item.tag.as_str());
        match item.action {
            Action::Skip(SkipReason::RetryDeferred) => {}
            _ if failed.contains(&(repo, tag)) => {
                let error = report.failures.iter().find(|f| f.repository == repo && f.tag == tag).map_or("", |f| f.error.as_str());
                // Waiting for a registry's quota is not the tag's failure:
                // no backoff, no count towards giving up.
                if error.contains(crate::registry::error::QUOTA_WAIT) {
                    continue;
                }
                out.push(Outcome::Failed { repo, tag, digest: Some(item.source.digest.as_str()), error });
            }
            Action::Copy(_) | Action::Skip(SkipReason::UpToDate) => out.push(Outcome::Succeeded { repo, tag }),
            Action::Skip(_) => {}
        }
    }
    out
}
