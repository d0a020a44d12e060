//! What regferry asked of each registry: per client (for a run's report:
//! manifest `GET`s — the "pulls" registries such as Docker Hub count —,
//! `HEAD`s, blob bytes read and written, `429`s, retries) and per process
//! (the Prometheus series `regferry_registry_*`, labelled by registry, not
//! by job: requests by method and status, retries, `429`s, request
//! latency histograms).
//!
//! Counting only: this module never sends a request, never decides
//! whether one is sent, and never sees a header value or a query string
//! (labels are the registry's `scheme://host[:port]` and the method).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// What one kind of request was, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET /v2/<name>/manifests/<ref>`: a pull on registries that count them.
    ManifestGet,
    /// Any `HEAD` (free on Docker Hub).
    Head,
    /// `GET /v2/<name>/blobs/<digest>` (and its redirect hops).
    BlobGet,
    /// A blob upload (`PUT`/`PATCH` of an upload session).
    BlobUpload,
    Other,
}

impl Kind {
    /// The kind of `method path`.
    pub fn of(method: &str, path: &str) -> Kind {
        match method {
            "HEAD" => Kind::Head,
            "GET" if path.contains("/manifests/") => Kind::ManifestGet,
            "GET" if path.contains("/blobs/") && !path.contains("/blobs/uploads") => Kind::BlobGet,
            "PUT" | "PATCH" if path.contains("/blobs/uploads/") => Kind::BlobUpload,
            _ => Kind::Other,
        }
    }
}

/// One client's counters (only grow).
#[derive(Debug, Default)]
pub struct Usage {
    pub manifest_gets: AtomicU64,
    pub heads: AtomicU64,
    pub blob_bytes_read: AtomicU64,
    pub blob_bytes_written: AtomicU64,
    pub throttled: AtomicU64,
    pub retries: AtomicU64,
}

/// A point-in-time copy of [`Usage`], for reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct UsageSnapshot {
    /// Manifest `GET`s ("pulls").
    pub pulls: u64,
    pub heads: u64,
    pub blob_bytes_read: u64,
    pub blob_bytes_written: u64,
    /// Answers `429`.
    pub throttled: u64,
    /// Requests sent again after a transient failure.
    pub retries: u64,
}

impl Usage {
    pub fn snapshot(&self) -> UsageSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UsageSnapshot {
            pulls: g(&self.manifest_gets),
            heads: g(&self.heads),
            blob_bytes_read: g(&self.blob_bytes_read),
            blob_bytes_written: g(&self.blob_bytes_written),
            throttled: g(&self.throttled),
            retries: g(&self.retries),
        }
    }

    /// Count one answered (or failed) request of `registry`: `status` is
    /// the HTTP status (`None`: no answer), `bytes` the body length of a
    /// blob read or write, `took` the time to the answer.
    pub fn record(&self, registry: &str, method: &str, path: &str, status: Option<u16>, bytes: u64, took: Duration) {
        let kind = Kind::of(method, path);
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        match kind {
            Kind::ManifestGet => add(&self.manifest_gets, 1),
            Kind::Head => add(&self.heads, 1),
            Kind::BlobGet => add(&self.blob_bytes_read, bytes),
            Kind::BlobUpload => add(&self.blob_bytes_written, bytes),
            Kind::Other => {}
        }
        if status == Some(429) {
            add(&self.throttled, 1);
        }
        global().record(registry, method, kind, status, bytes, took);
    }

    /// Count one retry of a request to `registry`.
    pub fn retried(&self, registry: &str) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        let mut g = global().lock();
        g.per_registry.entry(registry.to_string()).or_default().retries += 1;
    }
}

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Default, Clone)]
struct RegistrySeries {
    pulls: u64,
    heads: u64,
    blob_bytes_read: u64,
    blob_bytes_written: u64,
    throttled: u64,
    retries: u64,
}

#[derive(Debug, Default)]
struct Tables {
    /// (registry, method, status) → requests; status "error" for no answer.
    requests: BTreeMap<(String, String, String), u64>,
    per_registry: BTreeMap<String, RegistrySeries>,
    latency: BTreeMap<(String, String), Histogram>,
}

/// The process's counters, by registry.
#[derive(Debug, Default)]
pub struct Global {
    tables: Mutex<Tables>,
}

static GLOBAL: LazyLock<Global> = LazyLock::new(Global::default);

/// The process-wide counters.
pub fn global() -> &'static Global {
    &GLOBAL
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Global {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, registry: &str, method: &str, kind: Kind, status: Option<u16>, bytes: u64, took: Duration) {
        let mut t = self.lock();
        let status_label = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        *t.requests.entry((registry.to_string(), method.to_string(), status_label)).or_default() += 1;
        let s = t.per_registry.entry(registry.to_string()).or_default();
        match kind {
            Kind::ManifestGet => s.pulls += 1,
            Kind::Head => s.heads += 1,
            Kind::BlobGet => s.blob_bytes_read += bytes,
            Kind::BlobUpload => s.blob_bytes_written += bytes,
            Kind::Other => {}
        }
        if status == Some(429) {
            s.throttled += 1;
        }
        t.latency.entry((registry.to_string(), method.to_string())).or_default().observe(took.as_secs_f64());
    }

    /// The `regferry_registry_*` families and `regferry_build_info`, in
    /// the text exposition format.
    pub fn render(&self) -> String {
        let (requests, per, latency) = {
            let t = self.lock();
            (t.requests.clone(), t.per_registry.clone(), t.latency.clone())
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP regferry_build_info The running regferry's version (always 1).\n# TYPE regferry_build_info gauge\n\
             regferry_build_info{{version=\"{}\"}} 1",
            escape(env!("CARGO_PKG_VERSION"))
        );
        let _ = writeln!(
            out,
            "# HELP regferry_registry_requests_total Requests sent to each registry, by method and answer status (\"error\": no answer).\n\
             # TYPE regferry_registry_requests_total counter"
        );
        for ((registry, method, status), n) in &requests {
            let _ = writeln!(out, "regferry_registry_requests_total{{registry=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}", escape(registry));
        }
        type Get = fn(&RegistrySeries) -> u64;
        let families: [(&str, &str, Get); 6] = [
            ("regferry_registry_pulls_total", "Manifest GETs (the pulls quota-counting registries such as Docker Hub count).", |s| s.pulls),
            ("regferry_registry_heads_total", "HEAD requests.", |s| s.heads),
            ("regferry_registry_blob_bytes_read_total", "Blob bytes the registry served.", |s| s.blob_bytes_read),
            ("regferry_registry_blob_bytes_written_total", "Blob bytes sent to the registry.", |s| s.blob_bytes_written),
            ("regferry_registry_throttled_total", "Answers 429 (too many requests).", |s| s.throttled),
            ("regferry_registry_retries_total", "Requests sent again after a transient failure.", |s| s.retries),
        ];
        for (name, help, get) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (registry, s) in &per {
                let _ = writeln!(out, "{name}{{registry=\"{}\"}} {}", escape(registry), get(s));
            }
        }
        let name = "regferry_registry_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time from sending a request to its answer (the body of a blob not included).\n# TYPE {name} histogram");
        for ((registry, method), h) in &latency {
            let labels = format!("registry=\"{}\",method=\"{method}\"", escape(registry));
            for (le, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_counts() {
        assert_eq!(Kind::of("GET", "/v2/a/manifests/latest"), Kind::ManifestGet);
        assert_eq!(Kind::of("HEAD", "/v2/a/manifests/latest"), Kind::Head);
        assert_eq!(Kind::of("GET", "/v2/a/blobs/sha256:aa"), Kind::BlobGet);
        assert_eq!(Kind::of("GET", "/v2/a/blobs/uploads/xyz"), Kind::Other);
        assert_eq!(Kind::of("PUT", "/v2/a/blobs/uploads/xyz"), Kind::BlobUpload);
        let u = Usage::default();
        let r = "http://usage-test:1";
        u.record(r, "GET", "/v2/a/manifests/1", Some(200), 0, Duration::from_millis(3));
        u.record(r, "GET", "/v2/a/manifests/2", Some(429), 0, Duration::from_millis(30));
        u.record(r, "HEAD", "/v2/a/manifests/2", Some(200), 0, Duration::from_millis(2));
        u.record(r, "GET", "/v2/a/blobs/sha256:aa", Some(200), 1000, Duration::from_secs(2));
        u.retried(r);
        let s = u.snapshot();
        assert_eq!((s.pulls, s.heads, s.blob_bytes_read, s.throttled, s.retries), (2, 1, 1000, 1, 1));
        let text = global().render();
        assert!(text.contains(&format!("regferry_registry_requests_total{{registry=\"{r}\",method=\"GET\",status=\"429\"}} 1")), "{text}");
        assert!(text.contains(&format!("regferry_registry_request_duration_seconds_bucket{{registry=\"{r}\",method=\"GET\",le=\"0.005\"}} 1")), "{text}");
        assert!(text.contains(&format!("regferry_registry_request_duration_seconds_count{{registry=\"{r}\",method=\"GET\"}} 3")), "{text}");
        assert!(text.contains("regferry_build_info{version=\""), "{text}");
    }
}
