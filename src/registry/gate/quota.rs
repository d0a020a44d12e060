//! A registry's announced pull quota, kept by its [`Gate`]: reading
//! `RateLimit-Remaining` (and `RateLimit-Reset`, or `Retry-After`, for when
//! a spent quota comes back) off the answers, counting the pulls sent
//! since, and stopping new pulls (manifest `GET`s) at [`QUOTA_RESERVE`]
//! until the window resets.
//!
//! Like the rest of the gate it never sends a request itself (the client
//! probes for the quota and reports with [`Gate::note_quota_known`]),
//! never logs a header value (only the counts read from one), and says
//! the quota is low once, not once per task.

use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::time::Instant;

use super::{Condition, Gate, State};
use crate::registry::error::RegistryError;

/// With this many requests left in the registry's quota window, no new
/// work is started on it (in-flight tasks may use the rest).
pub const QUOTA_RESERVE: u64 = 10;

impl Gate {
    /// Whether a pull (manifest `GET`) may be sent: not while the quota
    /// is at or below the reserve (`HEAD`s and blobs are not pulls and
    /// always may). A window that has passed its reset time lets pulls go
    /// again (the next answer tells the new count).
    pub fn pull_refused(&self) -> Option<RegistryError> {
        let mut s = self.lock();
        if let Some(reset) = s.quota_reset
            && reset <= Instant::now()
            && matches!(s.condition, Some(Condition::QuotaLow { .. }))
        {
            s.condition = None;
            s.quota_reset = None;
            s.pulls_left = None;
            return None;
        }
        if s.condition.is_none()
            && let Some(left) = s.pulls_left
        {
            if left > QUOTA_RESERVE {
                // This pull is on its way: one less.
                s.pulls_left = Some(left - 1);
                return None;
            }
            if s.quota_reset.is_none() {
                s.quota_reset = s.quota_window.map(|w| Instant::now() + Duration::from_secs(w));
            }
            self.quota_low(&mut s, left, None);
        }
        drop(s);
        self.halted(false).filter(|e| matches!(e, RegistryError::QuotaLow { .. }))
    }

    /// Whether the registry's quota (or that it announces none) is known.
    pub fn quota_known(&self) -> bool {
        self.lock().quota_known
    }

    /// The quota was probed (announced or not).
    pub fn note_quota_known(&self) {
        self.lock().quota_known = true;
    }

    /// How long until the quota that stopped work resets, if it did.
    pub fn quota_resets_in(&self) -> Option<Duration> {
        let s = self.lock();
        if !matches!(s.condition, Some(Condition::QuotaLow { .. })) {
            return None;
        }
        s.quota_reset.map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// Read the quota headers of an answer that was an error (`429` and
    /// others carry `RateLimit-Remaining` too). A `429` that says no
    /// request is left (`RateLimit-Remaining: 0`), or arrives while the
    /// quota is known to be low, spends the quota: returns true, and the
    /// caller does not retry it.
    pub fn note_refusal(&self, status: u16, headers: &HeaderMap) -> bool {
        let mut s = self.lock();
        let quota = rate_limit_remaining(headers);
        if let Some(q) = quota {
            self.note_quota(&mut s, q, headers);
        }
        let spent = status == 429
            && (quota.is_some_and(|(r, _)| r == 0) || matches!(s.condition, Some(Condition::QuotaLow { .. })));
        if spent {
            let window = quota.and_then(|(_, w)| w).or(match &s.condition {
                Some(Condition::QuotaLow { window, .. }) => *window,
                _ => None,
            });
            self.note_quota(&mut s, (0, window), headers);
            if let Some(reset) = reset_after(headers) {
                s.quota_reset = Some(Instant::now() + reset);
            }
        }
        drop(s);
        self.changed.notify_waiters();
        spent
    }

    pub(super) fn note_quota(&self, s: &mut State, (remaining, window): (u64, Option<u64>), headers: &HeaderMap) {
        s.quota_known = true;
        s.pulls_left = Some(s.pulls_left.map_or(remaining, |left| left.min(remaining)));
        s.quota_window = window.or(s.quota_window);
        if remaining > QUOTA_RESERVE {
            // Answers overtake each other: a higher count after a low one
            // may be older. With a reset time known, the quota stays low
            // until then ([`Gate::pull_refused`] lifts it).
            if matches!(s.condition, Some(Condition::QuotaLow { .. }))
                && s.quota_reset.is_none()
                && s.pulls_left.is_none_or(|left| left > QUOTA_RESERVE)
            {
                s.condition = None;
            }
            return;
        }
        // The registry's word on the reset, else one window from now at
        // the latest (a sliding window frees a pull at most that late).
        if let Some(reset) = quota_reset(headers).or_else(|| window.map(Duration::from_secs)) {
            let at = Instant::now() + reset;
            if quota_reset(headers).is_some() || s.quota_reset.is_none() {
                s.quota_reset = Some(at);
            }
        }
        self.quota_low(s, remaining, window);
    }

    /// The quota is at or below the reserve: say so once, stop new work.
    fn quota_low(&self, s: &mut State, remaining: u64, window: Option<u64>) {
        match &mut s.condition {
            Some(Condition::QuotaLow { remaining: r, window: w }) => {
                *r = remaining.min(*r);
                *w = window.or(*w);
            }
            Some(_) => {}
            None => {
                let window = window.or(s.quota_window);
                let span = window.map(|w| format!(" (the window is {w}s)")).unwrap_or_default();
                tracing::warn!(
                    "{}: its rate limit allows only {remaining} more requests{span}; no new work is started on it, \
                     the rest waits for a later run",
                    self.label
                );
                s.condition = Some(Condition::QuotaLow { remaining, window });
            }
        }
    }
}

/// `RateLimit-Remaining: N;w=SECONDS` (Docker Hub), or plain `N`.
pub fn rate_limit_remaining(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = headers.get("ratelimit-remaining")?.to_str().ok()?;
    let mut parts = v.split(';');
    let remaining = parts.next()?.trim().parse().ok()?;
    let window = parts.find_map(|p| p.trim().strip_prefix("w=").and_then(|w| w.trim().parse().ok()));
    Some((remaining, window))
}

/// `RateLimit-Reset: SECONDS` (the IETF draft's header), if sent.
fn quota_reset(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("ratelimit-reset")?.to_str().ok()?;
    v.split(';').next()?.trim().parse().ok().map(Duration::from_secs)
}

/// When a spent quota comes back: `RateLimit-Reset`, else `Retry-After`
/// in seconds.
fn reset_after(headers: &HeaderMap) -> Option<Duration> {
    quota_reset(headers).or_else(|| headers.get("retry-after")?.to_str().ok()?.trim().parse().ok().map(Duration::from_secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::Limits;
    use reqwest::header::HeaderValue;

    #[test]
    fn rate_limit_remaining_reads_docker_hub_headers() {
        let mut h = HeaderMap::new();
        h.insert("ratelimit-remaining", HeaderValue::from_static("76;w=21600"));
        assert_eq!(rate_limit_remaining(&h), Some((76, Some(21600))));
        h.insert("ratelimit-remaining", HeaderValue::from_static("3"));
        assert_eq!(rate_limit_remaining(&h), Some((3, None)));
        assert_eq!(rate_limit_remaining(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_low_quota_halts_new_work() {
        let gate = Gate::new("source https://hub".into(), &Limits::default());
        let mut h = HeaderMap::new();
        h.insert("ratelimit-remaining", HeaderValue::from_static("5;w=21600"));
        gate.admit("GET").await.unwrap().observe("GET", "/v2/a/manifests/1", Some(&h), None);
        let e = gate.halted(false).expect("halted");
        assert!(e.to_string().contains("5"), "{e}");
        assert!(gate.admit("GET").await.is_ok(), "in-flight work may finish");
    }

    #[tokio::test]
    async fn a_429_that_spends_the_quota_stops_pulls_until_the_reset() {
        let spent = |extra: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            h.insert("ratelimit-remaining", HeaderValue::from_static("0;w=21600"));
            for (k, v) in extra {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let gate = Gate::new("source https://hub".into(), &Limits::default());
        assert!(gate.pull_refused().is_none());
        assert!(gate.note_refusal(429, &spent(&[])), "a 429 with nothing left spends the quota");
        let e = gate.pull_refused().expect("no more pulls");
        assert!(matches!(e, RegistryError::QuotaLow { remaining: 0, .. }) && !e.is_transient(), "{e}");
        assert!(e.to_string().contains("waiting for the registry's quota (resets in 5h 59m"), "{e}");
        assert!(gate.quota_resets_in().is_some_and(|d| d > Duration::from_secs(21500)));
        // An older answer with more left does not lift it before the reset.
        let mut more = HeaderMap::new();
        more.insert("ratelimit-remaining", HeaderValue::from_static("50;w=21600"));
        gate.admit("HEAD").await.unwrap().observe("HEAD", "/v2/a/manifests/1", Some(&more), None);
        assert!(gate.pull_refused().is_some());

        // The registry's own word on the reset wins; once it passed, pulls go again.
        let gate = Gate::new("source https://hub".into(), &Limits::default());
        assert!(gate.note_refusal(429, &spent(&[("ratelimit-reset", "1")])));
        assert!(gate.quota_resets_in().is_some_and(|d| d <= Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(gate.pull_refused().is_none(), "the window reset");

        // A 429 from a registry that announces no quota is an ordinary pause.
        let gate = Gate::new("source http://r".into(), &Limits::default());
        assert!(!gate.note_refusal(429, &HeaderMap::new()));
        assert!(gate.pull_refused().is_none() && gate.halted(false).is_none());
    }

    #[test]
    fn pulls_are_counted_as_they_are_sent_down_to_the_reserve() {
        let gate = Gate::new("source https://hub".into(), &Limits::default());
        let mut h = HeaderMap::new();
        h.insert("ratelimit-remaining", HeaderValue::from_static("16;w=3600"));
        gate.note_refusal(404, &h);
        let sent = (0..20).take_while(|_| gate.pull_refused().is_none()).count();
        assert_eq!(sent, 6, "16 left, 10 kept in reserve");
        // A late answer announcing more does not give pulls back.
        gate.note_refusal(404, &h);
        let e = gate.pull_refused().expect("at the reserve");
        assert!(e.to_string().contains("resets in 59m"), "{e}");
    }
}
