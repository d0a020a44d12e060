//! Failover and failback of a policy: reverse its direction in the state
//! database (the DR registry — its first destination — becomes the source,
//! names mapped back), after a last catch-up pass while the old source is
//! still reachable; and restore it after syncing DR's changes back.
//!
//! The policy file is never edited. Deletions at the new destination happen
//! only when the policy says `delete: true` (the passes here are ordinary
//! policy passes).

use std::time::Duration;

use serde::Serialize;

use crate::pass::metrics::Metrics;
use crate::pass::{PassOutcome, run_pass};
use crate::engine::execute::Cancel;
use crate::job::Job;
use crate::policy::Policy;
use crate::registry::{ClientOptions, Endpoint};
use crate::state::{StateDb, StateError};

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
    /// Switch even when the sync pass did not replicate everything.
    pub force: bool,
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
}

/// Why a switch could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("policy {0} has no destination to fail over to")]
    NoDestination(String),
    #[error(transparent)]
    State(#[from] StateError),
}

async fn reachable(endpoint: &Endpoint) -> bool {
    let options = ClientOptions { connect_timeout: Duration::from_secs(5), ..ClientOptions::default() };
    // (Not as a destination: a probe creates no layout directory.)
    let Ok(client) = crate::scheme::connect(endpoint, &options, "probe") else { return false };
    matches!(tokio::time::timeout(Duration::from_secs(15), client.ping()).await, Ok(Ok(())))
}

/// Fail `policy` over to its first destination, or back.
pub async fn switch(policy: &Policy, state: &StateDb, switch: Switch, options: SwitchOptions, cancel: &Cancel) -> Result<SwitchReport, SwitchError> {
    let dr = policy.destinations.first().ok_or_else(|| SwitchError::NoDestination(policy.name.clone()))?;
    let reversed = state.is_reversed(&policy.name).await?;
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
        already: reversed == (switch == Switch::Failover),
        would_copy: None,
        sync: None,
        sync_ok: None,
        switched: false,
        refused: None,
    };
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
    state.set_reversed(&policy.name, switch == Switch::Failover).await?;
    report.switched = true;
    tracing::info!(policy = %policy.name, direction = if switch == Switch::Failover { "reversed" } else { "forward" }, "direction changed");
    Ok(report)
}
