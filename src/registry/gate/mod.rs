//! One gate per registry, shared by every task that talks to it: the
//! shared pause a `429`/`503` with `Retry-After` asks for, the optional
//! request and byte rates, the registry's announced quota
//! (`RateLimit-Remaining`), and the breaker that recognises a registry that
//! is down, read-only or out of space.
//!
//! Every request asks [`Gate::admit`] before it is sent and reports what
//! came back with [`Ticket::observe`]. A pause is honoured by every task
//! (tasks that arrive meanwhile wait before sending instead of each
//! discovering it), and after a pause one request goes first ("scout")
//! while the others wait for its answer, so a storm of `429`s costs about
//! one answer per task in flight, not one per task × retry × level.
//!
//! The request and byte rates are [`Pacer`]s (`pacer.rs`); the announced
//! quota is read and kept in `quota.rs`; admission and the breaker are here.
//!
//! This module never sends a request itself (the client runs the `/v2/`
//! probe the breaker asks for), never logs a header value, and announces
//! each condition and each pause once, not once per task.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::error::RegistryError;

mod pacer;
mod quota;

pub use pacer::Pacer;
pub use quota::{QUOTA_RESERVE, rate_limit_remaining};

/// Consecutive connection failures (across tasks, no answer in between)
/// after which the registry is probed once with `/v2/`. More than one
/// request's retries, so a single request (the first `/v2/` ping) fails
/// with its own "cannot reach" error.
const DOWN_AFTER: u32 = 8;
/// How long the others wait for a scout's answer before they go anyway
/// (a scout may be a long upload, answered only after its last byte).
const SCOUT_WAIT: Duration = Duration::from_secs(5);
/// Consecutive refused writes (across tasks, no accepted write in between)
/// after which the registry is taken as read-only or out of space.
const REFUSED_AFTER: u32 = 2;

/// Optional per-registry limits (policy `requests_per_second` /
/// `bytes_per_second`, flags `--from-rps`, `--to-bandwidth`…).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub requests_per_second: Option<f64>,
    /// Blob bytes per second (downloads from a source, uploads to a destination).
    pub bytes_per_second: Option<u64>,
}

pub use super::endpoint::parse_size;

/// A lasting condition of a registry, found by the breaker or announced
/// by the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Every request fails to connect, and so did a `/v2/` probe.
    Down(String),
    /// Uploads are refused with `405` (e.g. distribution's maintenance
    /// `readonly` mode).
    ReadOnly(String),
    /// Writes fail for lack of storage (`507`, "no space left on device").
    OutOfSpace(String),
    /// `RateLimit-Remaining` is at or below [`QUOTA_RESERVE`], or a `429`
    /// said the quota is spent.
    QuotaLow { remaining: u64, window: Option<u64> },
}

/// What the breaker wants the client to do after an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Carry,
    /// Probe `/v2/` once and report with [`Gate::probe_result`].
    Probe,
}

#[derive(Default)]
struct State {
    paused_until: Option<Instant>,
    /// After a pause: one request at a time until one is answered.
    half_open: bool,
    /// Since when a scout is out, if one is.
    scout_out: Option<Instant>,
    connect_failures: u32,
    write_refusals: u32,
    space_refusals: u32,
    probing: bool,
    condition: Option<Condition>,
    /// When the registry's quota window resets, when it said (or, at the
    /// latest, one window after the quota was found low).
    quota_reset: Option<Instant>,
    /// An answer said what the quota is, or a probe found none.
    quota_known: bool,
    /// Pulls left by our own count: the lowest count announced, less every
    /// pull sent since (answers overtake each other and lag behind the
    /// pulls in flight, so this errs low, never high).
    pulls_left: Option<u64>,
    /// The window the registry announced (`w=`), in seconds.
    quota_window: Option<u64>,
}

enum Wait {
    Pause(Instant),
    Scout(Instant),
}

/// See the module documentation.
pub struct Gate {
    /// `source http://host:port`, `destination …` or just the registry.
    label: String,
    state: Mutex<State>,
    changed: Notify,
    requests: Option<Pacer>,
    bytes: Option<std::sync::Arc<Pacer>>,
}

/// Permission to send one request; report its outcome with [`Ticket::observe`].
pub struct Ticket<'a> {
    gate: &'a Gate,
    scout: bool,
    write: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        // A scout dropped without an answer (canceled task): let another go.
        if self.scout {
            self.gate.lock().scout_out = None;
            self.gate.changed.notify_waiters();
        }
    }
}

impl Ticket<'_> {
    /// Report how the request ended. `headers` are the response's, when it
    /// was answered successfully.
    pub fn observe(mut self, method: &str, path: &str, headers: Option<&HeaderMap>, error: Option<&RegistryError>) -> Verdict {
        let scout = std::mem::take(&mut self.scout);
        self.gate.observe(scout, self.write, method, path, headers, error)
    }
}

/// True for methods that change the registry.
pub fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

impl Gate {
    pub fn new(label: String, limits: &Limits) -> Gate {
        Gate {
            label,
            state: Mutex::default(),
            changed: Notify::new(),
            requests: limits.requests_per_second.map(Pacer::new),
            bytes: limits.bytes_per_second.map(|b| std::sync::Arc::new(Pacer::new(b as f64))),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The same gate under another label (before any request was sent).
    pub fn relabel(&mut self, label: String) {
        self.label = label;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The byte pacer for blob streams, if the registry has a byte limit.
    pub fn bandwidth(&self) -> Option<std::sync::Arc<Pacer>> {
        self.bytes.clone()
    }

    /// Wait until a request may be sent: no shared pause, our turn after a
    /// pause, the request rate. Fails at once when the registry is known to
    /// be down, or (for writes) read-only or out of space.
    pub async fn admit(&self, method: &str) -> Result<Ticket<'_>, RegistryError> {
        let write = is_write(method);
        let ticket = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            let now = Instant::now();
            let wait = {
                let mut s = self.lock();
                if let Some(c) = &s.condition
                    && let Some(e) = self.refusal(c, write) {
                        return Err(e);
                    }
                match (s.paused_until, s.scout_out) {
                    (Some(t), _) if t > now => Wait::Pause(t),
                    (_, Some(since)) if s.half_open && since + SCOUT_WAIT > now => {
                        notified.as_mut().enable();
                        Wait::Scout(since + SCOUT_WAIT)
                    }
                    _ => {
                        // After a pause the first one scouts; a scout
                        // that takes too long lets everyone through.
                        let scout = s.half_open && s.scout_out.is_none();
                        if scout {
                            s.scout_out = Some(now);
                        } else {
                            s.half_open = false;
                        }
                        break Ticket { gate: self, scout, write };
                    }
                }
            };
            match wait {
                Wait::Pause(t) => tokio::time::sleep_until(t).await,
                Wait::Scout(deadline) => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
            }
        };
        if let Some(p) = &self.requests {
            p.request().await;
        }
        Ok(ticket)
    }

    /// The error for requests refused because of `c` (`None`: `c` does not
    /// stop this request).
    fn refusal(&self, c: &Condition, write: bool) -> Option<RegistryError> {
        let registry = self.label.clone();
        match c {
            Condition::Down(reason) => Some(RegistryError::Down { registry, reason: reason.clone() }),
            Condition::ReadOnly(reason) if write => Some(RegistryError::ReadOnly { registry, reason: reason.clone() }),
            Condition::OutOfSpace(reason) if write => Some(RegistryError::OutOfSpace { registry, reason: reason.clone() }),
            _ => None,
        }
    }

    /// Why no new work should start on this registry (`writes`: work that
    /// writes to it), if so.
    pub fn halted(&self, writes: bool) -> Option<RegistryError> {
        let s = self.lock();
        let c = s.condition.as_ref()?;
        if let Condition::QuotaLow { remaining, window } = c {
            let resets_in = s.quota_reset.map(|t| t.saturating_duration_since(Instant::now()));
            return Some(RegistryError::QuotaLow { registry: self.label.clone(), remaining: *remaining, window: *window, resets_in });
        }
        self.refusal(c, writes)
    }


    /// The registry's condition, if one was found.
    pub fn condition(&self) -> Option<Condition> {
        self.lock().condition.clone()
    }

    fn observe(
        &self,
        scout: bool,
        write: bool,
        method: &str,
        path: &str,
        headers: Option<&HeaderMap>,
        error: Option<&RegistryError>,
    ) -> Verdict {
        let mut verdict = Verdict::Carry;
        let mut s = self.lock();
        match error {
            None => {
                s.connect_failures = 0;
                if write {
                    s.write_refusals = 0;
                    s.space_refusals = 0;
                }
                if scout {
                    s.half_open = false;
                    s.scout_out = None;
                }
                if let Some(h) = headers
                    && let Some(quota) = rate_limit_remaining(h)
                {
                    self.note_quota(&mut s, quota, h);
                }
            }
            Some(RegistryError::Status { status, retry_after, errors, .. }) => {
                s.connect_failures = 0;
                let overloaded = matches!(status, 429 | 503);
                match retry_after {
                    Some(wait) if overloaded => self.pause(&mut s, *status, *wait),
                    _ => {
                        if scout && !overloaded {
                            s.half_open = false;
                        }
                        if scout {
                            s.scout_out = None;
                        }
                    }
                }
                let text = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ").to_ascii_lowercase();
                let codes = errors.iter().map(|e| e.code.as_str()).filter(|c| !c.is_empty()).collect::<Vec<_>>().join(" ");
                let what = format!("HTTP {status}{}{} on {method} {}", if codes.is_empty() { "" } else { " " }, codes, upload_path(path));
                if write && *status == 405 && is_upload_or_manifest_write(method, path) {
                    s.write_refusals += 1;
                    if s.write_refusals >= REFUSED_AFTER && s.condition.is_none() {
                        tracing::error!("{} is read-only (maintenance mode?): {what}; no more writes are sent to it", self.label);
                        s.condition = Some(Condition::ReadOnly(what));
                    }
                } else if write && (*status == 507 || ["no space left", "insufficient storage", "quota exceeded", "quotaexceeded"].iter().any(|t| text.contains(t))) {
                    s.space_refusals += 1;
                    if s.space_refusals >= REFUSED_AFTER && s.condition.is_none() {
                        tracing::error!("{} is out of space: {what}; no more writes are sent to it", self.label);
                        s.condition = Some(Condition::OutOfSpace(what));
                    }
                }
            }
            Some(e @ RegistryError::Connect { .. }) => {
                s.connect_failures += 1;
                if scout {
                    s.scout_out = None;
                }
                if s.connect_failures >= DOWN_AFTER && !s.probing && s.condition.is_none() {
                    s.probing = true;
                    verdict = Verdict::Probe;
                    tracing::debug!(error = %e, "{}: {} connection failures in a row; probing /v2/", self.label, s.connect_failures);
                }
            }
            Some(_) => {
                if scout {
                    s.scout_out = None;
                }
            }
        }
        drop(s);
        self.changed.notify_waiters();
        verdict
    }

    /// The outcome of the `/v2/` probe the breaker asked for: `Some(error)`
    /// when the registry could not be reached.
    pub fn probe_result(&self, failure: Option<String>) {
        let mut s = self.lock();
        s.probing = false;
        match failure {
            Some(reason) => {
                if s.condition.is_none() {
                    let reason = format!("{} requests in a row and a /v2/ probe could not connect ({reason})", s.connect_failures);
                    tracing::error!("{} is down: {reason}; the remaining work on it is not attempted", self.label);
                    s.condition = Some(Condition::Down(reason));
                }
            }
            None => s.connect_failures = 0,
        }
        drop(s);
        self.changed.notify_waiters();
    }

    fn pause(&self, s: &mut State, status: u16, wait: Duration) {
        let now = Instant::now();
        let until = now + wait;
        let paused = s.paused_until.is_some_and(|t| t > now);
        if !paused {
            tracing::warn!(
                "{} answered HTTP {status} with Retry-After {}s: every request to it waits until then",
                self.label,
                wait.as_secs_f64().ceil()
            );
        }
        if s.paused_until.is_none_or(|t| t < until) {
            s.paused_until = Some(until);
        }
        s.half_open = true;
        s.scout_out = None;
    }
}

/// Opening an upload session (a mount too) or pushing a manifest: the
/// writes a read-only registry refuses. (`PATCH` is not among them: `405`
/// on `PATCH` means "no chunked uploads".)
fn is_upload_or_manifest_write(method: &str, path: &str) -> bool {
    (method == "POST" && path.ends_with("/blobs/uploads/")) || (method == "PUT" && path.contains("/manifests/"))
}

/// An upload path without its session id, for messages.
fn upload_path(path: &str) -> String {
    match path.find("/blobs/uploads/") {
        Some(i) => format!("{}/blobs/uploads/", &path[..i]),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<u64>, code: &str) -> RegistryError {
        RegistryError::Status {
            registry: "r".into(),
            method: "POST".into(),
            path: "/v2/a/blobs/uploads/".into(),
            status,
            errors: if code.is_empty() {
                Vec::new()
            } else {
                vec![super::super::error::ApiError { code: code.into(), message: "m".into(), detail: None }]
            },
            retry_after: retry_after.map(Duration::from_millis),
        }
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("50MiB"), Ok(50 * 1024 * 1024));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("800k"), Ok(800 * 1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("fast").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[tokio::test]
    async fn a_retry_after_pauses_every_task_and_one_scout_goes_first() {
        let gate = Gate::new("source http://r".into(), &Limits::default());
        let t = gate.admit("GET").await.unwrap();
        let start = Instant::now();
        assert_eq!(t.observe("GET", "/v2/a/blobs/x", None, Some(&status(429, Some(300), "TOOMANYREQUESTS"))), Verdict::Carry);
        // A task arriving meanwhile waits the whole pause, then scouts.
        let scout = gate.admit("GET").await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(scout.scout);
        // Others wait for the scout's answer.
        let waiting = tokio::time::timeout(Duration::from_millis(200), gate.admit("GET")).await;
        assert!(waiting.is_err(), "a second request went out while the scout was out");
        scout.observe("GET", "/v2/a/blobs/x", None, None);
        let next = gate.admit("GET").await.unwrap();
        assert!(!next.scout);
    }

    #[tokio::test]
    async fn read_only_after_refused_uploads_only_for_writes() {
        let gate = Gate::new("destination http://d".into(), &Limits::default());
        for _ in 0..REFUSED_AFTER {
            let t = gate.admit("POST").await.unwrap();
            t.observe("POST", "/v2/a/blobs/uploads/", None, Some(&status(405, None, "UNSUPPORTED")));
        }
        let e = gate.admit("POST").await.err().expect("writes are refused");
        assert!(e.to_string().contains("read-only"), "{e}");
        assert!(gate.admit("HEAD").await.is_ok(), "reads still go");
        assert!(gate.halted(true).is_some() && gate.halted(false).is_none());
    }

    #[tokio::test]
    async fn full_storage_stops_writes() {
        let gate = Gate::new("destination http://d".into(), &Limits::default());
        for _ in 0..REFUSED_AFTER {
            let t = gate.admit("PUT").await.unwrap();
            let mut e = status(500, None, "UNKNOWN");
            if let RegistryError::Status { errors, method, .. } = &mut e {
                errors[0].message = "write /var/lib/registry/x: no space left on device".into();
                *method = "PUT".into();
            }
            t.observe("PUT", "/v2/a/blobs/uploads/abc", None, Some(&e));
        }
        let e = gate.admit("PUT").await.err().expect("writes are refused");
        assert!(matches!(e, RegistryError::OutOfSpace { .. }), "{e}");
        assert!(gate.admit("GET").await.is_ok());
    }

    #[tokio::test]
    async fn chunked_upload_refusals_are_not_read_only() {
        let gate = Gate::new("d".into(), &Limits::default());
        for _ in 0..5 {
            let t = gate.admit("PATCH").await.unwrap();
            t.observe("PATCH", "/v2/a/blobs/uploads/abc", None, Some(&status(405, None, "UNSUPPORTED")));
        }
        assert!(gate.condition().is_none());
    }

    #[tokio::test]
    async fn connection_failures_ask_for_one_probe_then_down() {
        let gate = Gate::new("source http://s".into(), &Limits::default());
        let refused = RegistryError::Connect { registry: "s".into(), message: "connection refused".into() };
        let mut probes = 0;
        for _ in 0..10 {
            let t = gate.admit("GET").await.unwrap();
            if t.observe("GET", "/v2/", None, Some(&refused)) == Verdict::Probe {
                probes += 1;
            }
        }
        assert_eq!(probes, 1);
        gate.probe_result(Some("connection refused".into()));
        let e = gate.admit("GET").await.err().expect("down");
        assert!(matches!(e, RegistryError::Down { .. }), "{e}");
    }
}
