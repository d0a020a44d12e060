//! Failover and failback of a policy: reverse its direction in the state
//! database (the DR registry — its first destination — becomes the source,
//! names mapped back), after a last catch-up pass while the old source is
//! still reachable; and restore it after syncing DR's changes back.
//!
//! A failover reports the recovery point (RPO) and proves the DR site
//! pullable (a deep verification) before it switches; both switches write
//! the failover fence into the registries ([`crate::pass::fence`]) before the
//! state, and a switch whose fence already records the requested direction
//! takes it over without a sync pass (the state database was lost or is
//! older than the fence).
//!
//! The policy file is never edited. Deletions at the new destination happen
//! only when the policy says `delete: true` (the passes here are ordinary
//! policy passes, within the deletion guard).

use std::time::Duration;

use serde::Serialize;

use crate::state::lag::Lag;
use super::repair::{RepairReport, repair};
use super::verify::{ProblemKind, VerifyOptions, VerifyReport, check_required, pullable, verify};
use crate::engine::execute::Cancel;
use crate::job::Job;
use crate::pass::fence::{Fence, Site};
use crate::pass::metrics::Metrics;
use crate::pass::{PassOutcome, run_pass};
use crate::policy::Policy;
use crate::registry::{ClientOptions, Endpoint};
use crate::state::{StateDb, StateError, now_ms};

/// Failover (forward → reversed) or failback (reversed → forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Switch {
    Failover,
    Failback,
}

/// How to switch.
#[derive(Debug, Clone, Copy, Default)]
pub struct SwitchOptions {
    /// Only report what would happen.
    pub dry_run: bool,
    /// Switch even when the sync pass did not replicate everything, the DR
    /// site is not pullable, or the fence cannot be written there.
    pub force: bool,
}

/// The recovery point of a failover: how much of the primary's recent
/// history the DR site may lack at the moment of switching.
#[derive(Debug, Clone, Serialize)]
pub struct Rpo {
    /// The catch-up pass ran and replicated everything: nothing seen is lost.
    pub caught_up: bool,
    /// When a pass of the policy last checked or copied (Unix ms).
    pub last_pass_at: Option<i64>,
    /// Tags known not yet at DR, and the age of the oldest (from the state).
    pub outstanding_tags: i64,
    pub lag_seconds: Option<f64>,
    /// 0 when caught up; otherwise the older of the oldest outstanding change
    /// and the last pass (whatever the primary received since was never
    /// seen); `None` when no pass ever ran.
    pub rpo_seconds: Option<f64>,
}

impl Rpo {
    fn of(lag: &Lag, caught_up: bool) -> Rpo {
        let since_pass = lag.last_pass_at.map(|t| (now_ms() - t).max(0) as f64 / 1000.0);
        let rpo_seconds = if caught_up {
            Some(0.0)
        } else {
            match (lag.lag_seconds, since_pass) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        };
        Rpo { caught_up, last_pass_at: lag.last_pass_at, outstanding_tags: lag.outstanding_tags, lag_seconds: lag.lag_seconds, rpo_seconds }
    }
}

/// What a switch did (or would do).
#[derive(Debug, Serialize)]
pub struct SwitchReport {
    pub policy: String,
    pub switch: Switch,
    /// The side the sync pass reads from.
    pub from: String,
    /// The side it writes to.
    pub to: String,
    /// Whether `from` answered (a failover skips the catch-up when the primary is down).
    pub from_reachable: bool,
    /// The direction was already the requested one: nothing done.
    pub already: bool,
    /// Dry run: tags the sync pass would copy.
    pub would_copy: Option<usize>,
    /// The sync pass, when one ran.
    #[serde(skip)]
    pub sync: Option<PassOutcome>,
    pub sync_ok: Option<bool>,
    /// The direction was changed in the state database.
    pub switched: bool,
    /// Why it did not switch.
    pub refused: Option<String>,
    /// The fence found at the DR site before switching.
    pub fence: Option<Fence>,
    /// The state did not know the direction the fence records and took it
    /// over (a dry run only says so).
    pub adopted: bool,
    /// Where the new fence was written (`site/repository:tag`, generation).
    pub fence_written: Vec<String>,
    /// Failover: the recovery point at the moment of switching.
    pub rpo: Option<Rpo>,
    /// Failover: the deep verification of the DR site (against the primary
    /// when it answers, on its own when it does not).
    pub verification: Option<VerifyReport>,
    /// Why the verification could not run.
    pub verification_error: Option<String>,
    /// Failover: what was missing at DR and copied again from the primary
    /// before the verification that decided.
    pub repair: Option<RepairReport>,
    /// Things the operator should know that did not stop the switch.
    pub warnings: Vec<String>,
}

/// Why a switch could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("policy {0} has no destination to fail over to")]
    NoDestination(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("interrupted while another worker was switching the policy")]
    Interrupted,
    #[error("lost the switch lease {0} (this worker stalled past it): the switch stopped where it was; run it again")]
    LeaseLost(String),
}

async fn reachable(endpoint: &Endpoint) -> bool {
    let options = ClientOptions { connect_timeout: Duration::from_secs(5), ..ClientOptions::default() };
    // (Not as a destination: a probe creates no layout directory.)
    let Ok(client) = crate::scheme::connect(endpoint, &options, "probe") else { return false };
    matches!(tokio::time::timeout(Duration::from_secs(15), client.ping()).await, Ok(Ok(())))
}

/// Problems that make a DR site unfit to switch to: anything but tags
/// that exist only at DR — and, before the sync pass (a dry run), anything
/// but what is not pullable or could not be checked (the pass would copy the rest).
fn unfit(report: &VerifyReport, synced: bool) -> usize {
    let counts = |k: ProblemKind| match k {
        ProblemKind::OnlyAtDestination => false,
        // A tag the gate would refuse is the DR site's own content: no sync pass fixes it.
        ProblemKind::NotPullable | ProblemKind::Error | ProblemKind::Unsigned => true,
        ProblemKind::Missing | ProblemKind::DigestDiffers | ProblemKind::MediaTypeDiffers | ProblemKind::ReferrersMissing => synced,
    };
    report.problems.iter().filter(|p| counts(p.kind)).count()
}

/// The pair a switch works on: the side it leaves as the source, the side
/// it switches to as the destination (with the scope read from the first).
fn sides(policy: &Policy, switch: Switch) -> Option<crate::job::JobSpec> {
    let dr = policy.destinations.first()?;
    Some(match switch {
        Switch::Failover => policy.forward(dr),
        Switch::Failback => policy.reverse(dr),
    })
}

/// Copy again, from the side being left, what `v` found missing at the side switched to.
async fn repair_target(policy: &Policy, switch: Switch, v: &VerifyReport) -> RepairReport {
    let Some(spec) = sides(policy, switch) else { return RepairReport::default() };
    let stores = crate::scheme::connect(&spec.source, &policy.client, "source")
        .and_then(|from| Ok((from, crate::scheme::connect(&spec.destination, &policy.client, "destination")?)));
    match stores {
        Ok((from, to)) => repair(from, &*to, v).await,
        Err(e) => RepairReport { errors: vec![format!("cannot connect to repair {}: {e}", spec.destination.url)], ..RepairReport::default() },
    }
}

/// Deep-verify the side switched to (DR for a failover, the primary for a
/// failback): against the side being left when it answers, else on its own.
async fn verify_target(policy: &Policy, switch: Switch, from_up: bool) -> Result<VerifyReport, String> {
    let spec = sides(policy, switch).ok_or("no DR destination")?;
    let options = VerifyOptions { deep: true, concurrency: policy.concurrency.max(4) * 2, covers: Some(policy.tags.clone()) };
    let to = crate::scheme::connect(&spec.destination, &policy.client, "probe").map_err(|e| format!("{} {e}", spec.destination.url))?;
    to.ping().await.map_err(|e| format!("{} {e}", spec.destination.url))?;
    let mut report = if from_up {
        let from = crate::scheme::connect(&spec.source, &policy.client, "source").map_err(|e| format!("{} {e}", spec.source.url))?;
        verify(&*from, &*to, &spec.scope, &options).await.map_err(|e| e.to_string())?
    } else {
        // The side switched to, on its own: its repositories as the source of the other direction.
        let other = match switch {
            Switch::Failover => Switch::Failback,
            Switch::Failback => Switch::Failover,
        };
        let back = sides(policy, other).ok_or("no DR destination")?;
        pullable(&*to, &back.destination.url, &back.scope, &options).await.map_err(|e| e.to_string())?
    };
    // The policy's `require:` (signed_by, referrer_types), judged by the
    // switched-to side's own signatures and referrers: promoting a tag the
    // gate would refuse hands it to admission controllers that refuse it.
    check_required(&to, &spec.scope, &mut report, options.concurrency).await;
    Ok(report)
}

/// What the refusal of a switch says about tags the gate would refuse at
/// `site`: each one named (up to ten), and what to do about them.
fn unsigned_advice(v: &VerifyReport, site: &str) -> Option<String> {
    let tags: Vec<String> = v
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::Unsigned)
        .map(|p| format!("{}:{}", p.destination_repository.as_deref().unwrap_or("?"), p.tag.as_deref().unwrap_or("?")))
        .collect();
    if tags.is_empty() {
        return None;
    }
    let more = if tags.len() > 10 { format!(" and {} more", tags.len() - 10) } else { String::new() };
    Some(format!(
        "{} tag(s) at {site} do not meet the policy's require: (signed_by / referrer_types): {}{more}; sign them there \
         (cosign sign --key …) or attach what is required, or delete them, then run the failover again",
        tags.len(),
        tags.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
    ))
}

/// Fail `policy` over to its first destination, or back. The policy's
/// switch lease ([`crate::pass::switch_lease`]) is held from before the
/// catch-up pass until the new direction is recorded: passes of other
/// workers wait, and then find the new direction (and generation).
pub async fn switch(policy: &Policy, state: &StateDb, switch: Switch, options: SwitchOptions, cancel: &Cancel) -> Result<SwitchReport, SwitchError> {
    if options.dry_run {
        return switch_held(policy, state, switch, options, cancel).await;
    }
    let name = crate::pass::switch_lease(&policy.name);
    let mut told = false;
    let lease = loop {
        match state.hold_lease(&name).await? {
            Ok(lease) => break lease,
            Err(holder) => {
                if !told {
                    told = true;
                    tracing::warn!(policy = %policy.name, holder = %holder.worker, "another worker is switching this policy; waiting");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = cancel.stop.cancelled() => return Err(SwitchError::Interrupted),
        }
    };
    let lost = lease.lost.clone();
    let result = tokio::select! {
        r = switch_held(policy, state, switch, options, cancel) => r,
        _ = lost.cancelled() => Err(SwitchError::LeaseLost(name.clone())),
    };
    lease.release().await;
    result
}

async fn switch_held(policy: &Policy, state: &StateDb, switch: Switch, options: SwitchOptions, cancel: &Cancel) -> Result<SwitchReport, SwitchError> {
    let dr = policy.destinations.first().ok_or_else(|| SwitchError::NoDestination(policy.name.clone()))?;
    let direction = state.direction(&policy.name).await?;
    let mut reversed = direction.reversed;
    let want_reversed = switch == Switch::Failover;
    // The sync pass runs in the current direction: primary → DR before a
    // failover, DR → primary before a failback.
    let spec = match switch {
        Switch::Failover => policy.forward(dr),
        Switch::Failback => policy.reverse(dr),
    };
    let mut report = SwitchReport {
        policy: policy.name.clone(),
        switch,
        from: spec.source.url.to_string(),
        to: spec.destination.url.to_string(),
        from_reachable: false,
        already: false,
        would_copy: None,
        sync: None,
        sync_ok: None,
        switched: false,
        refused: None,
        fence: None,
        adopted: false,
        fence_written: Vec::new(),
        rpo: None,
        verification: None,
        verification_error: None,
        repair: None,
        warnings: Vec::new(),
    };

    // The fence at DR is the word of an earlier switch; a state that does
    // not know it (lost, new or restored) takes its direction over first.
    let dr_site = Site::dr(policy).and_then(|s| s.ok());
    if let Some(site) = &dr_site {
        match site.read(&policy.name).await {
            Ok(f) => report.fence = f,
            Err(e) => report.warnings.push(format!("cannot read the failover fence at {}: {e}", site.url)),
        }
    }
    if let Some(f) = &report.fence
        && f.reversed != reversed
    {
        report.adopted = true;
        reversed = f.reversed;
        if !options.dry_run {
            let generation = f.generation.max(direction.generation);
            state.set_direction(&policy.name, crate::state::Direction { reversed, generation }).await?;
            tracing::warn!(policy = %policy.name, generation = f.generation, direction = if reversed { "reversed" } else { "forward" }, "took over the direction recorded by the failover fence");
        }
    }
    report.already = reversed == want_reversed;
    if report.already {
        return Ok(report);
    }

    report.from_reachable = reachable(&spec.source).await;
    if !report.from_reachable {
        match switch {
            Switch::Failover => {
                tracing::warn!(policy = %policy.name, primary = %report.from, "the primary does not answer: failing over without a catch-up pass");
            }
            Switch::Failback if !options.force => {
                report.refused = Some(format!("{} does not answer: the changes made there cannot be synced back (--force switches anyway)", report.from));
                return Ok(report);
            }
            Switch::Failback => {}
        }
    }
    // Both ways: the RPO of the side being left, and a deep check of the side switched to.
    let lag_before = Some(state.replication_lag(&policy.name).await?);
    if options.dry_run {
        if report.from_reachable {
            match Job::connect(spec).await {
                Ok(job) => match job.plan_read_only().await {
                    Ok(plan) => report.would_copy = Some(plan.count_copy()),
                    Err(e) => report.refused = Some(format!("cannot plan the sync pass: {e}")),
                },
                Err(e) => report.refused = Some(format!("cannot plan the sync pass: {e}")),
            }
        }
        if let Some(lag) = &lag_before {
            report.rpo = Some(Rpo::of(lag, false));
            check_target(policy, switch, &mut report, options, false).await;
        }
        return Ok(report);
    }
    if report.from_reachable {
        tracing::info!(policy = %policy.name, from = %report.from, to = %report.to, "sync pass before switching");
        // Only the DR destination matters here; others keep their own schedule.
        let mut only_dr = policy.clone();
        only_dr.destinations.truncate(1);
        let outcome = run_pass(&only_dr, state, cancel, &Metrics::default(), None).await;
        let ok = outcome.ok();
        report.sync_ok = Some(ok);
        report.sync = Some(outcome);
        if cancel.stop.is_cancelled() {
            report.refused = Some("interrupted".into());
            return Ok(report);
        }
        if !ok && !options.force {
            report.refused = Some("the sync pass did not replicate everything (see above; --force switches anyway)".into());
            return Ok(report);
        }
    }
    if let Some(lag) = &lag_before {
        // After a catch-up pass the state knows what is still outstanding.
        let caught_up = report.sync_ok == Some(true);
        let lag = if caught_up { state.replication_lag(&policy.name).await? } else { lag.clone() };
        report.rpo = Some(Rpo::of(&lag, caught_up && lag.outstanding_tags == 0));
        let warned = report.warnings.len();
        check_target(policy, switch, &mut report, options, true).await;
        // Repair before refusing: what the deep check found missing at DR
        // is copied again from the primary, then DR is verified again.
        let broken = report.verification.as_ref().is_some_and(|v| v.problems.iter().any(|p| p.kind == ProblemKind::NotPullable));
        if report.from_reachable && broken
            && let Some(v) = report.verification.take()
        {
            let repaired = repair_target(policy, switch, &v).await;
            tracing::info!(policy = %policy.name, repaired = repaired.repaired(), errors = repaired.errors.len(), "repaired the DR site from the primary");
            report.repair = Some(repaired);
            report.refused = None;
            report.warnings.truncate(warned);
            check_target(policy, switch, &mut report, options, true).await;
        }
        if report.refused.is_some() {
            return Ok(report);
        }
    }

    // The fence first: a state lost after this point is recovered from it.
    // The fencing token: above both what the fence and the state knew.
    let generation = report.fence.as_ref().map_or(0, |f| f.generation).max(direction.generation) + 1;
    let fence = Fence {
        policy: policy.name.clone(),
        reversed: want_reversed,
        generation,
        at: now_ms(),
        primary: policy.source.url.to_string(),
        dr: dr.url().to_string(),
    };
    match &dr_site {
        Some(site) => match site.write(&fence).await {
            Ok(()) => report.fence_written.push(format!("{} (generation {generation})", site.location(&policy.name))),
            Err(e) if options.force => report.warnings.push(format!("cannot write the failover fence at {}: {e}", site.url)),
            Err(e) => {
                report.refused = Some(format!("cannot write the failover fence at {}: {e} (--force switches without it)", site.url));
                return Ok(report);
            }
        },
        None => report.warnings.push("the DR site's fence repository name is not valid: no fence written".into()),
    }
    if report.from_reachable {
        match Site::primary(policy) {
            Ok(site) => match site.write(&fence).await {
                Ok(()) => report.fence_written.push(format!("{} (generation {generation})", site.location(&policy.name))),
                Err(e) => report.warnings.push(format!("cannot write the failover fence at the primary {}: {e}", site.url)),
            },
            Err(e) => report.warnings.push(format!("cannot write the failover fence at the primary: {e}")),
        }
    }
    state.set_direction(&policy.name, crate::state::Direction { reversed: want_reversed, generation }).await?;
    report.switched = true;
    tracing::info!(policy = %policy.name, direction = if want_reversed { "reversed" } else { "forward" }, generation, "direction changed");
    Ok(report)
}

/// Deep-verify the side switched to and refuse (unless forced) when it is
/// not fit to become the source. `synced`: the sync pass has run.
async fn check_target(policy: &Policy, switch: Switch, report: &mut SwitchReport, options: SwitchOptions, synced: bool) {
    let site = match switch {
        Switch::Failover => "the DR site",
        Switch::Failback => "the primary",
    };
    match verify_target(policy, switch, report.from_reachable).await {
        Ok(v) => {
            let bad = unfit(&v, synced);
            for g in &v.unmatched_patterns {
                report.warnings.push(format!("repository pattern {g:?} matches no repository at {}", v.source));
            }
            if bad > 0 && report.refused.is_none() {
                let what = match (switch, report.from_reachable) {
                    (Switch::Failover, true) => "is not identical to the primary or not pullable",
                    (Switch::Failback, true) => "is not identical to the DR site or not pullable",
                    (_, false) => "is not pullable",
                };
                let mut why = format!("{site} {what}: {bad} problem(s) (see the verification above)");
                if let Some(advice) = unsigned_advice(&v, site) {
                    why = format!("{why}; {advice}");
                }
                if options.force {
                    report.warnings.push(why);
                } else {
                    report.refused = Some(format!("{why}; --force switches anyway"));
                }
            }
            report.verification = Some(v);
        }
        Err(e) => {
            let why = format!("cannot verify {site}: {e}");
            if options.force {
                report.warnings.push(why.clone());
            } else if report.refused.is_none() {
                report.refused = Some(format!("{why}; --force switches anyway"));
            }
            report.verification_error = Some(e);
        }
    }
}
