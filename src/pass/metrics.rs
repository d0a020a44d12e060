//! Prometheus metrics of passes, per policy and destination, rendered in
//! the text exposition format (the daemon serves them on `/metrics`).
//!
//! In-memory counters fed by finished passes; rendering never touches the
//! network or the state database. Label values are escaped; URLs in labels
//! never carry credentials (endpoints refuse user info).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::DestinationOutcome;

#[derive(Debug, Default, Clone)]
struct Series {
    tags_copied: u64,
    tags_skipped: u64,
    tags_failed: u64,
    blobs_uploaded: u64,
    blobs_mounted: u64,
    blobs_skipped: u64,
    bytes_uploaded: u64,
    passes: u64,
    failed_passes: u64,
    helped_passes: u64,
    last_duration_seconds: f64,
    last_pass_timestamp: f64,
    last_success_timestamp: f64,
    reversed: bool,
    tags_deleted: u64,
    deletions_refused: u64,
    fenced_passes: u64,
    unmatched_patterns: u64,
    tags_unsigned: u64,
}

/// The daemon's metrics (cheap to share behind an `Arc`).
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String), Series>>,
    policies: Mutex<usize>,
    /// The worker these counters belong to (a label on every series, so
    /// that what each of several workers did can be told apart).
    worker: String,
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// Metrics of worker `worker`.
    pub fn for_worker(worker: &str) -> Metrics {
        Metrics { worker: worker.to_string(), ..Metrics::default() }
    }

    /// The number of policies loaded.
    pub fn set_policies(&self, n: usize) {
        if let Ok(mut p) = self.policies.lock() {
            *p = n;
        }
    }

    /// Add a finished pass at one destination.
    pub fn record(&self, policy: &str, outcome: &DestinationOutcome) {
        let Ok(mut all) = self.series.lock() else { return };
        let s = all.entry((policy.to_string(), outcome.destination.clone())).or_default();
        let now = unix_now();
        if outcome.helped.is_some() {
            // Its share of a pass another worker holds (and counts as a pass).
            s.helped_passes += 1;
            if let Some(r) = &outcome.report {
                let c = &r.counts;
                s.tags_copied += c.tags_copied;
                s.tags_failed += c.tags_failed;
                s.blobs_uploaded += c.blobs_uploaded;
                s.blobs_mounted += c.blobs_mounted;
                s.blobs_skipped += c.blobs_skipped;
                s.bytes_uploaded += c.bytes_uploaded;
            }
            return;
        }
        s.passes += 1;
        s.last_pass_timestamp = now;
        s.reversed = outcome.reversed;
        if let Some(r) = &outcome.report {
            let c = &r.counts;
            s.tags_copied += c.tags_copied;
            s.tags_skipped += c.tags_skipped;
            s.tags_failed += c.tags_failed;
            s.blobs_uploaded += c.blobs_uploaded;
            s.blobs_mounted += c.blobs_mounted;
            s.blobs_skipped += c.blobs_skipped;
            s.bytes_uploaded += c.bytes_uploaded;
            s.last_duration_seconds = r.elapsed.as_secs_f64();
        }
        if let Some(p) = &outcome.prune {
            s.tags_deleted += p.deleted.len() as u64;
            s.deletions_refused += u64::from(!p.refused.is_empty());
        }
        s.fenced_passes += u64::from(outcome.fenced);
        if let Some(r) = &outcome.report {
            s.unmatched_patterns = outcome.unmatched.len() as u64;
            s.tags_unsigned = r.unsigned.len() as u64;
        }
        if outcome.ok() {
            s.last_success_timestamp = now;
        } else {
            s.failed_passes += 1;
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let series = self.series.lock().map(|s| s.clone()).unwrap_or_default();
        let policies = self.policies.lock().map(|p| *p).unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "# HELP regferry_policies Policies loaded.\n# TYPE regferry_policies gauge\nregferry_policies {policies}");
        type Get = fn(&Series) -> f64;
        let families: [(&str, &str, &str, Get); 19] = [
            ("regferry_tags_copied_total", "counter", "Tags copied.", |s| s.tags_copied as f64),
            ("regferry_tags_skipped_total", "counter", "Tags left alone (up to date, deferred or not to be overwritten).", |s| {
                s.tags_skipped as f64
            }),
            ("regferry_tags_failed_total", "counter", "Tags that failed.", |s| s.tags_failed as f64),
            ("regferry_blobs_uploaded_total", "counter", "Blobs uploaded.", |s| s.blobs_uploaded as f64),
            ("regferry_blobs_mounted_total", "counter", "Blobs mounted from another repository.", |s| s.blobs_mounted as f64),
            ("regferry_blobs_skipped_total", "counter", "Blobs already present at the destination.", |s| s.blobs_skipped as f64),
            ("regferry_bytes_uploaded_total", "counter", "Blob bytes uploaded.", |s| s.bytes_uploaded as f64),
            ("regferry_passes_total", "counter", "Passes run.", |s| s.passes as f64),
            ("regferry_failed_passes_total", "counter", "Passes with failures.", |s| s.failed_passes as f64),
            ("regferry_helped_passes_total", "counter", "Passes of another worker this worker helped with (claimed tasks of).", |s| {
                s.helped_passes as f64
            }),
            ("regferry_execution_duration_seconds", "gauge", "Duration of the last execution.", |s| s.last_duration_seconds),
            ("regferry_last_pass_timestamp_seconds", "gauge", "When the last pass ended (Unix time).", |s| s.last_pass_timestamp),
            ("regferry_last_success_timestamp_seconds", "gauge", "When the last fully successful pass ended (Unix time, 0: never).", |s| {
                s.last_success_timestamp
            }),
            ("regferry_policy_reversed", "gauge", "1 when the policy runs reversed after a failover.", |s| f64::from(u8::from(s.reversed))),
            ("regferry_tags_deleted_total", "counter", "Destination tags deleted because the source no longer has them (delete: true).", |s| {
                s.tags_deleted as f64
            }),
            ("regferry_deletions_refused_total", "counter", "Passes whose deletions the deletion guard refused (max_delete, or a source listing no tags).", |s| {
                s.deletions_refused as f64
            }),
            ("regferry_fenced_passes_total", "counter", "Passes refused because the failover fence at the DR site contradicts the state.", |s| {
                s.fenced_passes as f64
            }),
            ("regferry_tags_unsigned", "gauge", "Tags held back in the last pass because they do not meet the policy's require (unsigned).", |s| {
                s.tags_unsigned as f64
            }),
            ("regferry_policy_unmatched_patterns", "gauge", "Repository globs of the policy that matched no source repository in the last pass.", |s| {
                s.unmatched_patterns as f64
            }),
        ];
        for (name, kind, help, get) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((policy, destination), s) in &series {
                let _ = writeln!(
                    out,
                    "{name}{{policy=\"{}\",destination=\"{}\",worker=\"{}\"}} {}",
                    escape(policy),
                    escape(destination),
                    escape(&self.worker),
                    get(s)
                );
            }
        }
        out
    }
}

/// Whether this worker exports the shared-state series (the lag
/// families below): one worker of those sharing a state does.
pub fn render_exporter(exporter: bool) -> String {
    format!(
        "# HELP regferry_shared_series_exporter 1 on the one worker that exports the series read from the shared state (replication lag, outstanding tags).\n\
         # TYPE regferry_shared_series_exporter gauge\nregferry_shared_series_exporter {}\n",
        u8::from(exporter)
    )
}

/// The replication lag families, from the state database's view of each
/// policy in its current direction (a policy that never ran has no lag
/// sample, only its outstanding count of 0).
pub fn render_lag(lags: &[crate::state::lag::Lag]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP regferry_replication_lag_seconds Age of the oldest source change not yet replicated (0: all caught up).\n\
         # TYPE regferry_replication_lag_seconds gauge"
    );
    for lag in lags {
        if let Some(secs) = lag.lag_seconds {
            let _ = writeln!(out, "regferry_replication_lag_seconds{{policy=\"{}\",direction=\"{}\"}} {secs}", escape(&lag.policy), lag.direction);
        }
    }
    let _ = writeln!(
        out,
        "# HELP regferry_outstanding_tags Tags the latest passes have not replicated yet.\n# TYPE regferry_outstanding_tags gauge"
    );
    for lag in lags {
        let _ = writeln!(out, "regferry_outstanding_tags{{policy=\"{}\",direction=\"{}\"}} {}", escape(&lag.policy), lag.direction, lag.outstanding_tags);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Failure, Report};

    /// Tags held back by `require:` show as a gauge of the last pass.
    #[test]
    fn unsigned_tags_are_a_gauge_of_the_last_pass() {
        let metrics = Metrics::for_worker("w1");
        let held = |n: usize| {
            let mut outcome = DestinationOutcome::new("http://src".into(), "http://dst".into(), false);
            outcome.report = Some(Report {
                execution: Some(1),
                resumed: false,
                status: crate::state::ExecutionStatus::Succeeded,
                counts: Default::default(),
                failures: Vec::new(),
                elapsed: std::time::Duration::ZERO,
                source_requests: 0,
                destination_requests: 0,
                conditions: Vec::new(),
                not_attempted: 0,
                unsigned: (0..n).map(|i| Failure { repository: "a/b".into(), tag: format!("t{i}"), error: "not signed".into() }).collect(),
                usage: Vec::new(),
                quota_resets_in: None,
            });
            outcome
        };
        metrics.record("p", &held(2));
        let line = |text: &str| text.lines().find(|l| l.starts_with("regferry_tags_unsigned{")).map(str::to_string);
        assert_eq!(line(&metrics.render()).as_deref(), Some("regferry_tags_unsigned{policy=\"p\",destination=\"http://dst\",worker=\"w1\"} 2"));
        metrics.record("p", &held(0));
        assert!(line(&metrics.render()).is_some_and(|l| l.ends_with(" 0")), "once signed, the gauge falls");
        assert!(held(2).ok(), "held-back tags do not fail the pass");
    }
}
