//! Live counters of one replication run, shared between the workers that
//! bump them and whoever displays progress or prints the summary.
//!
//! Only atomics: reading them never blocks a transfer.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one run. Every field only grows.
#[derive(Debug, Default)]
pub struct Stats {
    pub repos_total: AtomicU64,
    pub repos_done: AtomicU64,
    pub tags_total: AtomicU64,
    pub tags_copied: AtomicU64,
    pub tags_skipped: AtomicU64,
    pub tags_failed: AtomicU64,
    pub blobs_uploaded: AtomicU64,
    pub blobs_mounted: AtomicU64,
    pub blobs_skipped: AtomicU64,
    pub manifests_pushed: AtomicU64,
    /// Blob bytes sent to the destination (counted as they stream).
    pub bytes_uploaded: AtomicU64,
    /// Source manifests whose `Docker-Content-Digest` (or the digest planned
    /// from it) disagreed with their bytes; the bytes were copied.
    pub digest_mismatches: AtomicU64,
}

/// Counters of the long phases before and after copying — planning
/// (discovery and diffing) and deep verification — and the transfer in
/// progress, for a progress display while thousands of tags are listed,
/// compared and checked. Counters only grow.
#[derive(Debug, Default)]
pub struct PlanCounters {
    /// Repositories in scope (known once the catalog is read).
    pub repos_total: AtomicU64,
    /// Repositories whose tags are listed.
    pub repos_listed: AtomicU64,
    /// Tags selected so far.
    pub tags_found: AtomicU64,
    /// Tags compared with the destination so far.
    pub tags_compared: AtomicU64,
    /// Manifests fetched and blobs checked by a deep verification so far.
    pub deep_checked: AtomicU64,
    /// The counters of the transfer running now, once planning is done.
    transfer: std::sync::Mutex<Option<std::sync::Arc<Stats>>>,
    /// [`PlanCounters::read`] when that transfer started: what its planning
    /// found (later phases, e.g. a verification, count on).
    planned: std::sync::Mutex<Option<(u64, u64, u64, u64)>>,
}

impl PlanCounters {
    /// (repos listed, repos in scope, tags found, tags compared).
    pub fn read(&self) -> (u64, u64, u64, u64) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (g(&self.repos_listed), g(&self.repos_total), g(&self.tags_found), g(&self.tags_compared))
    }

    /// Manifests and blobs checked by a deep verification so far.
    pub fn deep_checked(&self) -> u64 {
        self.deep_checked.load(Ordering::Relaxed)
    }

    /// Say that `stats` count the transfer that runs now.
    pub fn set_transfer(&self, stats: std::sync::Arc<Stats>) {
        if let Ok(mut p) = self.planned.lock() {
            *p = Some(self.read());
        }
        if let Ok(mut t) = self.transfer.lock() {
            *t = Some(stats);
        }
    }

    /// What planning found when the latest transfer started; `None` before one.
    pub fn planned(&self) -> Option<(u64, u64, u64, u64)> {
        self.planned.lock().ok().and_then(|p| *p)
    }

    /// The transfer running now (the latest started), if any.
    pub fn transfer(&self) -> Option<Snapshot> {
        self.transfer.lock().ok().and_then(|t| t.as_ref().map(|s| s.snapshot()))
    }
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Snapshot {
    pub repos_total: u64,
    pub repos_done: u64,
    pub tags_total: u64,
    pub tags_copied: u64,
    pub tags_skipped: u64,
    pub tags_failed: u64,
    pub blobs_uploaded: u64,
    pub blobs_mounted: u64,
    pub blobs_skipped: u64,
    pub manifests_pushed: u64,
    pub bytes_uploaded: u64,
    pub digest_mismatches: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            repos_total: g(&self.repos_total),
            repos_done: g(&self.repos_done),
            tags_total: g(&self.tags_total),
            tags_copied: g(&self.tags_copied),
            tags_skipped: g(&self.tags_skipped),
            tags_failed: g(&self.tags_failed),
            blobs_uploaded: g(&self.blobs_uploaded),
            blobs_mounted: g(&self.blobs_mounted),
            blobs_skipped: g(&self.blobs_skipped),
            manifests_pushed: g(&self.manifests_pushed),
            bytes_uploaded: g(&self.bytes_uploaded),
            digest_mismatches: g(&self.digest_mismatches),
        }
    }
}

impl Snapshot {
    /// Tags whose fate is decided.
    pub fn tags_done(&self) -> u64 {
        self.tags_copied + self.tags_skipped + self.tags_failed
    }
}

/// `1.5 GiB`-style rendering of a byte count.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_render() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
