//! One destination's share of a pass: connect, take the policy's lease (or
//! help the worker holding it), plan, hold back tags that are backing off,
//! execute, mirror deletions within the deletion guard, and record what
//! regferry wrote and how each tag fared. It stops when the policy's
//! direction changes under it. It must never touch another destination's
//! job, and never run a deletion without a lease and a fresh source read.

use super::*;
use crate::job::{Failure, Next, PartEnd};

pub(super) async fn run_destination(policy: &Policy, spec: JobSpec, state: &StateDb, cancel: &Cancel, share: Option<&Arc<SourceShare>>) -> DestinationOutcome {
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
    // Planned and run in parts (whole repositories, see `job::parts`): a
    // pass over a registry of any size holds one part's plan at a time.
    let mut parts = match job.parts(Some(state)).await {
        Ok(parts) => parts,
        Err(e) => {
            lease.release().await;
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    // Referrers listed by a source's API: synced for unchanged tags only when the list changed.
    // A source known to lack the API is not asked again for a day.
    let seen = state.referrer_lists(&scope_key).await.unwrap_or_default();
    let mut api_unsupported = referrers::api_known_unsupported(&seen, now_ms());
    let concurrency = policy.concurrency.max(4) * 2;
    let stats = Arc::new(Stats::default());
    // Fencing while it writes: a switch recorded meanwhile (a failover that
    // could not reach the primary does not wait for this pass) stops it
    // before its next writes.
    let switched = tokio_util::sync::CancellationToken::new();
    let watch = tokio::spawn(watch_direction(state.clone(), policy.name.clone(), direction, cancel.stop.clone(), switched.clone()));
    let destination = job.spec.destination.url.base().as_str().trim_end_matches('/').to_string();
    let mut session = job.session(state, lease);
    let mut part = 0;
    let mut next = Next::from(parts.next().await);
    let ran = loop {
        let mut plan = match std::mem::replace(&mut next, Next::Done) {
            Next::Done => break Ok(()),
            Next::Stopped => {
                session.stopped();
                break Ok(());
            }
            Next::Part(Ok(plan)) => plan,
            Next::Part(Err(e)) => break Err(e.to_string()),
        };
        part += 1;
        if part == 1 {
            // (A progress display shows planning until then.)
            job.spec.scope.counters.set_transfer(stats.clone());
        }
        for pattern in &plan.unmatched {
            tracing::warn!(policy = %policy.name, source = %outcome.source, pattern = %pattern, "repository pattern matches no repository at the source");
        }
        outcome.unmatched.append(&mut plan.unmatched);
        match hold_back(&mut plan, state, &scope_key, policy.retry.give_up_after).await {
            Ok(n) => outcome.deferred += n,
            Err(e) => break Err(e.to_string()),
        }
        let api = if api_unsupported {
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
            part,
            tags = plan.items.len(),
            to_copy = plan.count_copy(),
            deferred = outcome.deferred,
            "pass planned"
        );
        // The next part is planned while this one runs.
        let (end, upcoming) = parts.next_while(session.run_part(&plan, &stats, cancel), &cancel.stop).await;
        next = upcoming;
        let end = match end {
            Ok(end) => end,
            Err(e) => break Err(e.to_string()),
        };
        if switched.is_cancelled() {
            break Ok(());
        }
        api_unsupported |= api.unsupported;
        record_part(policy, state, &scope_key, (&destination, direction), &plan, &end, api, left_rows).await;
        if end.canceled {
            break Ok(());
        }
    };
    watch.abort();
    let report = match ran {
        Ok(()) => session.close(&stats).await.map_err(|e| e.to_string()),
        Err(e) => {
            session.release().await;
            Err(e)
        }
    };
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            outcome.error = Some(e);
            return outcome;
        }
    };
    if switched.is_cancelled() {
        outcome.error = Some(format!("policy {} was switched (failover/failback) during this pass: stopped it, nothing deleted", policy.name));
        outcome.fenced = true;
        outcome.report = Some(report);
        return outcome;
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

/// Record what one part of a pass found: how each tag fared (its retry
/// state), and unless the part was canceled, the referrer lists it read and
/// what it wrote at `destination` (or found there identical to what it
/// would write: the only tags deletion sync may delete).
#[allow(clippy::too_many_arguments)]
async fn record_part(
    policy: &Policy,
    state: &StateDb,
    scope_key: &str,
    (destination, direction): (&str, crate::state::Direction),
    plan: &Plan,
    end: &PartEnd,
    api: referrers::ApiCheck,
    left_rows: Vec<(String, String, String)>,
) {
    let retry = policy.retry;
    let delay = move |failures: u32| -> Duration { retry.delay(failures) };
    let outcomes = outcomes_of(plan, &end.failures);
    let failed: HashSet<(&str, &str)> = end.failures.iter().map(|f| (f.repository.as_str(), f.tag.as_str())).collect();
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
    if !end.canceled
        && let Err(e) = state.record_referrer_lists(scope_key, &lists).await
    {
        tracing::error!(policy = %policy.name, error = %e, "cannot record referrer lists");
    }
    if let Err(e) = state.record_outcomes(scope_key, &outcomes, &delay).await {
        tracing::error!(policy = %policy.name, error = %e, "cannot record retry state");
    }
    if !end.canceled
        && let Err(e) = state.record_owned(&policy.name, destination, direction, &owned_by(plan, &end.failures)).await
    {
        tracing::error!(policy = %policy.name, error = %e, "cannot record what the pass wrote");
    }
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
fn owned_by(plan: &Plan, failures: &[Failure]) -> Vec<crate::state::Owned> {
    let failed: HashSet<(&str, &str)> = failures.iter().map(|f| (f.repository.as_str(), f.tag.as_str())).collect();
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
fn outcomes_of<'a>(plan: &'a Plan, failures: &'a [Failure]) -> Vec<Outcome<'a>> {
    let failed: HashSet<(&str, &str)> = failures.iter().map(|f| (f.repository.as_str(), f.tag.as_str())).collect();
    let mut out = Vec::new();
    for item in &plan.items {
        let (repo, tag) = (item.source_repo.as_str(), item.tag.as_str());
        match item.action {
            Action::Skip(SkipReason::RetryDeferred) => {}
            _ if failed.contains(&(repo, tag)) => {
                let error = failures.iter().find(|f| f.repository == repo && f.tag == tag).map_or("", |f| f.error.as_str());
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
