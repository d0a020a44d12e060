//! The scheduled replication daemon: runs each policy on its trigger, never
//! two passes of one policy at once, a bounded number of passes overall;
//! serves health and metrics; reloads policies on SIGHUP or when a file
//! changes; acts on operator requests (`jobs retry`); stops cleanly.
//!
//! Between passes it only sleeps: no polling of registries, and the only
//! periodic work is a stat of the policy files and one small query of the
//! state database every couple of seconds. It never parses CLI flags and
//! never prints; the binary turns its errors into messages.

pub mod api;
pub mod auth;
pub mod events;
pub mod http;
pub mod notify;
pub mod status_page;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use tokio::sync::{Mutex, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::engine::execute::Cancel;
use crate::policy::{self, Policy, PolicySet};
use crate::state::StateDb;
use crate::pass::metrics::Metrics;
use crate::pass::{PassOutcome, run_pass};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub policies: PathBuf,
    pub listen: SocketAddr,
    /// Passes running at once, across all policies.
    pub max_parallel: usize,
    /// Finished executions older than this are pruned.
    pub retention: Duration,
    /// How often policy files and operator requests are checked.
    pub poll: Duration,
    /// API tokens (read-only, admin) and the events token.
    pub tokens: auth::Tokens,
    /// Timeouts from the command line, over the policies' own.
    pub timeouts: policy::TimeoutOverrides,
}

/// What the HTTP handlers and the policy loops share.
pub struct Shared {
    pub state: StateDb,
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    /// One handle per policy name, kept across reloads.
    handles: Mutex<HashMap<String, Arc<Handle>>>,
    /// The policies in force (for matching push events).
    policies: std::sync::RwLock<Arc<PolicySet>>,
    pub tokens: auth::Tokens,
    parallel: Semaphore,
    notifier: notify::Notifier,
    /// Whether this daemon is the one of the workers sharing the state that
    /// exports the series read from it (replication lag, outstanding tags):
    /// it holds the [`SHARED_SERIES_LEASE`]. Every other worker leaves them
    /// out, so that dashboards and alerts count them once.
    pub exports_shared: AtomicBool,
}

/// The lease naming the worker that exports the shared-state series on
/// `/metrics` (`|` once: no job's scope key looks like it).
pub const SHARED_SERIES_LEASE: &str = "daemon|shared-series";

/// Per policy name: how to wake its loop, and what keeps passes apart.
#[derive(Default)]
struct Handle {
    wake: Notify,
    /// Repositories an event asked for; `None` in `Some(None)` means a full pass.
    requested: std::sync::Mutex<Option<Option<HashSet<String>>>>,
    /// Held for the whole of a pass: no two passes of one policy overlap.
    busy: Mutex<()>,
    /// When the last full pass ended.
    last_full: std::sync::Mutex<Option<SystemTime>>,
    /// A registry's quota stopped the last pass: the next one is when it resets.
    quota_reset: std::sync::Mutex<Option<SystemTime>>,
}

impl Handle {
    /// Ask for a pass soon: of `repos` only, or a full one (`None`).
    fn request(&self, repos: Option<HashSet<String>>) {
        if let Ok(mut r) = self.requested.lock() {
            *r = match (r.take(), repos) {
                (Some(Some(mut have)), Some(more)) => {
                    have.extend(more);
                    Some(Some(have))
                }
                (None, Some(more)) => Some(Some(more)),
                _ => Some(None),
            };
        }
        self.wake.notify_one();
    }
}

impl Shared {
    async fn handle(&self, name: &str) -> Arc<Handle> {
        self.handles.lock().await.entry(name.to_string()).or_default().clone()
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.read().map(|p| p.clone()).unwrap_or_default()
    }

    fn set_policies(&self, set: &PolicySet) {
        if let Ok(mut p) = self.policies.write() {
            *p = Arc::new(set.clone());
        }
    }

    /// Ask `policy` for a pass soon (a push event, an operator's retry).
    pub async fn request_pass(&self, policy: &str, repos: Option<HashSet<String>>) {
        self.handle(policy).await.request(repos);
    }
}

/// Fingerprint of the policy files, to notice edits.
fn fingerprint(path: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    policy::files(path)
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            (f, modified, meta.map_or(0, |m| m.len()))
        })
        .collect()
}

fn load(path: &Path) -> Result<PolicySet, policy::PolicyError> {
    policy::load(path, &|k| std::env::var(k).ok())
}

fn log_pass(outcome: &PassOutcome) {
    for d in &outcome.destinations {
        match (&d.error, &d.report) {
            (Some(e), _) => tracing::error!(policy = %outcome.policy, destination = %d.destination, error = %e, "pass failed"),
            (None, Some(r)) => {
                let c = &r.counts;
                let fields = (c.tags_copied, c.tags_skipped, c.tags_failed, c.bytes_uploaded);
                // What the pass asked of each registry (pulls are what quotas count).
                for u in r.usage.iter().filter(|u| u.usage != Default::default()) {
                    let n = &u.usage;
                    tracing::debug!(policy = %outcome.policy, role = u.role, registry = %u.registry, pulls = n.pulls, heads = n.heads,
                        bytes_read = n.blob_bytes_read, bytes_written = n.blob_bytes_written, throttled = n.throttled, retries = n.retries, "registry usage");
                }
                if r.failures.is_empty() {
                    tracing::info!(policy = %outcome.policy, destination = %d.destination, copied = fields.0, skipped = fields.1,
                        failed = fields.2, bytes = fields.3, deferred = d.deferred, execution = r.execution, status = %r.status, "pass finished");
                } else {
                    for f in r.failures.iter().take(20) {
                        tracing::warn!(policy = %outcome.policy, repository = %f.repository, tag = %f.tag, error = %f.error, "tag failed");
                    }
                    tracing::warn!(policy = %outcome.policy, destination = %d.destination, copied = fields.0, skipped = fields.1,
                        failed = fields.2, bytes = fields.3, deferred = d.deferred, execution = r.execution, status = %r.status, "pass finished with failures");
                }
            }
            (None, None) => {}
        }
    }
}

/// The loop of one policy until it is retired (reload) or the daemon stops.
async fn policy_loop(shared: Arc<Shared>, policy: Policy, retire: CancellationToken, cancel: Cancel) {
    let handle = shared.handle(&policy.name).await;
    loop {
        let last = handle.last_full.lock().ok().and_then(|l| *l);
        let quota_reset = handle.quota_reset.lock().ok().and_then(|r| *r);
        let due = quota_reset.unwrap_or_else(|| last.map_or_else(SystemTime::now, |t| policy.trigger.next_after(t)));
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        let mut only = tokio::select! {
            biased;
            _ = retire.cancelled() => return,
            _ = cancel.stop.cancelled() => return,
            _ = handle.wake.notified() => handle.requested.lock().ok().and_then(|mut r| r.take()).flatten(),
            _ = tokio::time::sleep(wait) => None,
        };
        let _busy = handle.busy.lock().await;
        let Ok(_permit) = shared.parallel.acquire().await else { return };
        if cancel.stop.is_cancelled() {
            return;
        }
        // Push events wait in the state for whichever worker gets here first.
        let took_events = match shared.state.take_push_events(&policy.name).await {
            Ok(Some(repos)) => {
                if let Some(only) = &mut only {
                    only.extend(repos);
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(policy = %policy.name, error = %e, "cannot read push events");
                false
            }
        };
        if only.as_ref().is_some_and(HashSet::is_empty) {
            continue; // woken for events another worker took
        }
        let full = only.is_none();
        match &only {
            Some(repos) => tracing::info!(policy = %policy.name, repositories = repos.len(), "pass for pushed repositories"),
            None => tracing::info!(policy = %policy.name, trigger = %policy.trigger, "pass started"),
        }
        let outcome = run_pass(&policy, &shared.state, &cancel, &shared.metrics, only.as_ref()).await;
        log_pass(&outcome);
        let helped = !outcome.destinations.is_empty() && outcome.destinations.iter().all(|d| d.helped.is_some());
        if helped && took_events {
            // Another worker holds the policy: the events wait for it.
            if let Err(e) = shared.state.return_push_events(&policy.name).await {
                tracing::warn!(policy = %policy.name, error = %e, "cannot give push events back");
            }
        }
        // A pass cut short by shutdown says nothing about the policy's health,
        // nor does this worker's share of another worker's pass.
        if !cancel.stop.is_cancelled() && !helped {
            shared.notifier.pass_finished(&policy, &outcome, full).await;
        }
        let resets_in = outcome.destinations.iter().filter_map(|d| d.report.as_ref()?.quota_resets_in).max();
        if let Ok(mut r) = handle.quota_reset.lock() {
            *r = resets_in.map(|d| SystemTime::now() + d + Duration::from_secs(1));
        }
        if let Some(d) = resets_in {
            tracing::info!(policy = %policy.name, "waiting for the registry's quota: the next pass starts when it resets, in {}", humantime::format_duration(Duration::from_secs(d.as_secs() + 1)));
        }
        if full
            && let Ok(mut l) = handle.last_full.lock() {
                *l = Some(SystemTime::now());
            }
    }
}

/// Start a loop for every policy of `set`; returns their retire token.
fn spawn_loops(shared: &Arc<Shared>, set: &PolicySet, cancel: &Cancel, tasks: &mut tokio::task::JoinSet<()>) -> CancellationToken {
    let retire = CancellationToken::new();
    shared.metrics.set_policies(set.policies.len());
    for p in &set.policies {
        tracing::info!(policy = %p.name, trigger = %p.trigger, destinations = p.destinations.len(), "policy loaded");
        tasks.spawn(policy_loop(shared.clone(), p.clone(), retire.clone(), cancel.clone()));
    }
    retire
}

/// Take or renew the [`SHARED_SERIES_LEASE`] every heartbeat (a third of
/// the lease time, as every lease) until `stop`.
async fn keep_electing(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.state.worker().heartbeat();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        elect_exporter(&shared).await;
    }
}

/// Take or renew the [`SHARED_SERIES_LEASE`]: the worker holding it
/// exports the shared-state series. A
/// state database that does not answer: not the exporter (nothing could be
/// read for those series anyway).
async fn elect_exporter(shared: &Shared) {
    let held = match shared.state.acquire_lease(SHARED_SERIES_LEASE).await {
        Ok(None) => true,
        Ok(Some(_)) => false,
        Err(e) => {
            tracing::debug!(error = %e, "cannot take the shared-series lease");
            false
        }
    };
    let was = shared.exports_shared.swap(held, std::sync::atomic::Ordering::Relaxed);
    if was != held {
        tracing::info!(exporter = held, "shared-state series on /metrics: {}", if held { "this worker exports them" } else { "another worker exports them" });
    }
}

/// Run the daemon until `cancel.stop` fires; in-flight passes then finish
/// their tags (until `cancel.abort`), and it returns.
pub async fn run(options: DaemonOptions, state: StateDb, cancel: Cancel, hangup: Arc<Notify>) -> Result<(), DaemonError> {
    let mut set = load(&options.policies)?.with_timeouts(&options.timeouts);
    let listener =
        tokio::net::TcpListener::bind(options.listen).await.map_err(|source| DaemonError::Listen { addr: options.listen, source })?;
    let pruned = state.prune(crate::state::now_ms() - options.retention.as_millis() as i64).await?;
    if pruned > 0 {
        tracing::info!(executions = pruned, "pruned old executions");
    }
    let shared = Arc::new(Shared {
        state: state.clone(),
        metrics: Arc::new(Metrics::for_worker(&state.worker().id)),
        ready: AtomicBool::new(false),
        handles: Mutex::new(HashMap::new()),
        policies: std::sync::RwLock::new(Arc::new(set.clone())),
        tokens: options.tokens.clone(),
        parallel: Semaphore::new(options.max_parallel.max(1)),
        notifier: notify::Notifier::start(state.clone()),
        exports_shared: AtomicBool::new(false),
    });
    elect_exporter(&shared).await;
    let exporter = tokio::spawn(keep_electing(shared.clone(), cancel.stop.clone()));
    let server = {
        let app = http::router(shared.clone());
        let stop = cancel.stop.clone();
        tokio::spawn(async move {
            let r = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };
    tracing::info!(listen = %options.listen, policies = set.policies.len(), "daemon started");

    let mut tasks = tokio::task::JoinSet::new();
    let mut retire = spawn_loops(&shared, &set, &cancel, &mut tasks);
    shared.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut files = fingerprint(&options.policies);
    let mut seen_retries: HashSet<i64> = HashSet::new();
    let mut last_prune = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(options.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let reload = tokio::select! {
            _ = cancel.stop.cancelled() => break,
            _ = hangup.notified() => { tracing::info!("SIGHUP: reloading policies"); true }
            _ = tick.tick() => {
                let now = fingerprint(&options.policies);
                let changed = now != files;
                files = now;
                if changed {
                    tracing::info!("policy files changed: reloading");
                }
                changed
            }
        };
        if reload {
            match load(&options.policies).map(|set| set.with_timeouts(&options.timeouts)) {
                Ok(new) => {
                    retire.cancel();
                    set = new;
                    shared.set_policies(&set);
                    retire = spawn_loops(&shared, &set, &cancel, &mut tasks);
                }
                Err(e) => tracing::error!(error = %e, "policies not reloaded; the previous set stays in force"),
            }
        }
        // Operator retries: wake the policy once per request.
        match state.pending_requests().await {
            Ok(requests) => {
                let current: HashSet<i64> = requests.iter().filter(|r| r.retry).map(|r| r.execution).collect();
                for r in requests.iter().filter(|r| r.retry && !seen_retries.contains(&r.execution)) {
                    if let Some(name) = r.policy.as_deref().filter(|n| set.get(n).is_some()) {
                        tracing::info!(policy = name, execution = r.execution, "retry requested");
                        shared.request_pass(name, None).await;
                    }
                }
                seen_retries = current;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read operator requests"),
        }
        // Other workers: a pass whose worker died is taken over, a pass
        // with tasks nobody works yet is helped with, push events stored by
        // any worker are acted on.
        for (what, found) in [
            ("orphaned", state.orphaned_policies().await),
            ("shared", state.joinable_policies().await),
            ("events", state.policies_with_events().await),
        ] {
            match found {
                Ok(names) => {
                    for name in names.iter().filter(|n| set.get(n).is_some()) {
                        tracing::debug!(policy = %name, what, "pass requested for other workers' work");
                        let repos = (what == "events").then(HashSet::new);
                        shared.request_pass(name, repos).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, what, "cannot read the work of other workers"),
            }
        }
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = tokio::time::Instant::now();
            match state.prune(crate::state::now_ms() - options.retention.as_millis() as i64).await {
                Ok(n) if n > 0 => tracing::info!(executions = n, "pruned old executions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot prune old executions"),
            }
            if let Err(e) = state.prune_push_events(crate::state::now_ms() - options.retention.as_millis() as i64).await {
                tracing::warn!(error = %e, "cannot prune old push events");
            }
        }
        while tasks.try_join_next().is_some() {}
    }

    shared.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = exporter.await;
    if shared.exports_shared.swap(false, std::sync::atomic::Ordering::Relaxed)
        && let Err(e) = state.release_lease(SHARED_SERIES_LEASE).await
    {
        tracing::warn!(error = %e, "cannot release the shared-series lease; it expires on its own");
    }
    tracing::info!("stopping: waiting for in-flight passes");
    while tasks.join_next().await.is_some() {}
    let _ = server.await;
    tracing::info!("daemon stopped");
    Ok(())
}
