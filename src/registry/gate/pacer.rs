//! Spacing work out to a configured rate (policy `requests_per_second` /
//! `bytes_per_second`, flags `--from-rps`, `--to-bandwidth`…): the
//! [`Pacer`] a gate holds for each limit, the byte one shared by blob
//! streams through [`Gate::bandwidth`](super::Gate::bandwidth).
//!
//! A pacer only books time and sleeps: it never sends a request itself,
//! never looks at an answer (pauses and quotas are the gate's), and never
//! logs.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spaces out units (requests, bytes) to at most `per_sec` per second.
#[derive(Debug)]
pub struct Pacer {
    per_sec: f64,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(per_sec: f64) -> Pacer {
        Pacer { per_sec: per_sec.max(f64::MIN_POSITIVE), next: Mutex::new(None) }
    }

    /// Book `amount` units; returns when they may start (`pay_first`:
    /// when they are paid for, i.e. after their share of time).
    fn book(&self, amount: f64, pay_first: bool) -> Instant {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let start = next.map_or(now, |n| n.max(now));
        let end = start + Duration::from_secs_f64(amount / self.per_sec);
        *next = Some(end);
        if pay_first { end } else { start }
    }

    /// Wait for a slot for one request (the first one goes at once).
    pub async fn request(&self) {
        tokio::time::sleep_until(self.book(1.0, false)).await;
    }

    /// Wait until `bytes` are paid for at the rate.
    pub async fn bytes(&self, bytes: usize) {
        tokio::time::sleep_until(self.book(bytes as f64, true)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::{Gate, Limits};

    #[tokio::test]
    async fn the_request_rate_spaces_requests() {
        let gate = Gate::new("r".into(), &Limits { requests_per_second: Some(20.0), bytes_per_second: None });
        let start = Instant::now();
        for _ in 0..9 {
            let _ = gate.admit("GET").await.unwrap();
        }
        assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
    }
}
