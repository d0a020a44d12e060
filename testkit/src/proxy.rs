//! A fault-injecting HTTP proxy to put in front of a real registry: with
//! seeded randomness it answers 5xx / 429 + `Retry-After`, drops
//! connections, cuts or corrupts blob bodies, loses upload sessions
//! (`BLOB_UPLOAD_UNKNOWN`), claims just-pushed tags are unknown, and adds
//! latency. It also counts every request, so it doubles as a request meter
//! for the benchmark.
//!
//! Everything it does not inject is forwarded byte for byte (streamed both
//! ways); the `Host` header is kept so the registry's `Location` headers
//! point back at the proxy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What to inject, as probabilities per matching request (0.0–1.0).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub seed: u64,
    /// 500 / 502 / 503 on any request (not forwarded).
    pub server_error: f64,
    /// 429 TOOMANYREQUESTS with `Retry-After: 1` (not forwarded).
    pub too_many_requests: f64,
    /// Close the connection without an answer.
    pub reset: f64,
    /// Blob GET: forward, but cut the body short.
    pub truncate: f64,
    /// Blob GET: forward, but flip a byte (same length).
    pub corrupt: f64,
    /// Upload PATCH/PUT: answer 404 BLOB_UPLOAD_UNKNOWN (not forwarded).
    pub upload_unknown: f64,
    /// Manifest GET/HEAD by tag: answer 404 MANIFEST_UNKNOWN (not forwarded).
    pub manifest_unknown: f64,
    /// Mount POST: answer as if the mount was refused (drop `mount`/`from`,
    /// so the registry opens an ordinary session: 202).
    pub refuse_mount: f64,
    /// Added to every request.
    pub latency: Duration,
}

/// Counters of what the proxy saw and did.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub injected: Mutex<BTreeMap<&'static str, u64>>,
    /// "METHOD path-kind" → count, e.g. "HEAD manifest".
    pub by_kind: Mutex<BTreeMap<String, u64>>,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

impl Counters {
    pub fn injected(&self, fault: &str) -> u64 {
        self.injected.lock().map(|m| m.get(fault).copied().unwrap_or(0)).unwrap_or(0)
    }

    pub fn total_injected(&self) -> u64 {
        self.injected.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    pub fn kind(&self, kind: &str) -> u64 {
        self.by_kind.lock().map(|m| m.get(kind).copied().unwrap_or(0)).unwrap_or(0)
    }

    fn note(&self, fault: &'static str) {
        if let Ok(mut m) = self.injected.lock() {
            *m.entry(fault).or_default() += 1;
        }
    }
}

/// A running proxy. Dropping it stops it.
pub struct FaultProxy {
    pub port: u16,
    pub url: String,
    pub counters: Arc<Counters>,
    faults: Arc<Mutex<Faults>>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    faults: Arc<Mutex<Faults>>,
    rng: Mutex<u64>,
    counters: Arc<Counters>,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, body: &str, headers: &[(&str, &str)]) -> Response<Body> {
    let mut r = Response::builder().status(status).header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from(body.to_string())).map_err(|never: Infallible| match never {}).boxed())
        .expect("static response")
}

fn registry_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    full(status, &format!(r#"{{"errors":[{{"code":"{code}","message":"{message}","detail":"injected by the test proxy"}}]}}"#), &[])
}

/// Classify a registry path for counting: `manifest`, `blob`, `upload`, `tags`, `catalog`, `base`.
pub fn path_kind(path: &str) -> &'static str {
    if path.contains("/manifests/") {
        "manifest"
    } else if path.contains("/blobs/uploads") {
        "upload"
    } else if path.contains("/blobs/") {
        "blob"
    } else if path.ends_with("/tags/list") {
        "tags"
    } else if path.ends_with("/_catalog") {
        "catalog"
    } else {
        "base"
    }
}

impl Shared {
    fn roll(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let mut s = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        ((*s >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

impl FaultProxy {
    /// Proxy `upstream` (e.g. `http://127.0.0.1:5000`) on a free loopback port.
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let counters = Arc::new(Counters::default());
        let faults = Arc::new(Mutex::new(faults));
        let seed = faults.lock().map(|f| f.seed).unwrap_or(1) | 1;
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .danger_accept_invalid_certs(true)
                .pool_max_idle_per_host(64)
                .build()
                .expect("proxy client"),
            faults: faults.clone(),
            rng: Mutex::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            counters: counters.clone(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        FaultProxy { port, url: format!("http://127.0.0.1:{port}"), counters, faults, runtime: Some(runtime) }
    }

    /// Change the faults while running.
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.faults.lock() {
            *f = faults;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let faults = shared.faults.lock().map(|f| f.clone()).unwrap_or_default();
    let c = &shared.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let kind = path_kind(&path);
    if let Ok(mut m) = c.by_kind.lock() {
        *m.entry(format!("{method} {kind}")).or_default() += 1;
    }
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let is_v2 = path.starts_with("/v2/") && path != "/v2/";
    if is_v2 && shared.roll(faults.reset) {
        c.note("reset");
        return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset"));
    }
    if is_v2 && shared.roll(faults.server_error) {
        c.note("server_error");
        let status = [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE]
            [(c.requests.load(Ordering::Relaxed) % 3) as usize];
        return Ok(full(status, "<html>injected failure</html>", &[("content-type", "text/html")]));
    }
    if is_v2 && shared.roll(faults.too_many_requests) {
        c.note("too_many_requests");
        return Ok(full(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
            &[("retry-after", "1")],
        ));
    }
    let upload_write = kind == "upload" && (method == hyper::Method::PATCH || method == hyper::Method::PUT);
    if upload_write && shared.roll(faults.upload_unknown) {
        c.note("upload_unknown");
        return Ok(registry_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry"));
    }
    let by_tag = kind == "manifest" && !path.contains("/manifests/sha256:");
    if by_tag && (method == hyper::Method::GET || method == hyper::Method::HEAD) && shared.roll(faults.manifest_unknown) {
        c.note("manifest_unknown");
        return Ok(registry_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "manifest unknown"));
    }

    // Forward.
    let mut query = req.uri().query().map(str::to_string);
    if kind == "upload" && method == hyper::Method::POST && query.as_deref().is_some_and(|q| q.contains("mount=")) && shared.roll(faults.refuse_mount) {
        c.note("refuse_mount");
        query = None;
    }
    let url = match &query {
        Some(q) => format!("{}{}?{}", shared.upstream, path, q),
        None => format!("{}{}", shared.upstream, path),
    };
    let mut builder = shared.http.request(method.clone(), url);
    for (name, value) in req.headers() {
        if !matches!(name.as_str(), "connection" | "keep-alive" | "transfer-encoding" | "te" | "upgrade") {
            builder = builder.header(name, value);
        }
    }
    let counters = shared.counters.clone();
    let up = req.into_body().into_data_stream().inspect_ok(move |b| {
        counters.bytes_up.fetch_add(b.len() as u64, Ordering::Relaxed);
    });
    builder = builder.body(reqwest::Body::wrap_stream(up));
    let resp = match builder.send().await {
        Ok(r) => r,
        Err(e) => return Err(std::io::Error::other(format!("upstream: {e}"))),
    };
    let status = resp.status();
    let mut out = Response::builder().status(status.as_u16());
    for (name, value) in resp.headers() {
        if !matches!(name.as_str(), "connection" | "keep-alive" | "transfer-encoding") {
            out = out.header(name, value);
        }
    }
    let blob_body = kind == "blob" && method == hyper::Method::GET && status.is_success();
    let truncate = blob_body && shared.roll(faults.truncate);
    let corrupt = blob_body && !truncate && shared.roll(faults.corrupt);
    if truncate {
        c.note("truncate");
    }
    if corrupt {
        c.note("corrupt");
    }
    let length = resp.content_length().unwrap_or(0);
    let counters = shared.counters.clone();
    let mut sent: u64 = 0;
    let mut flipped = false;
    let stream = resp.bytes_stream().map(move |chunk| {
        let mut chunk = chunk.map_err(std::io::Error::other)?;
        if truncate && sent + chunk.len() as u64 >= length / 2 {
            return Err(std::io::Error::other("injected truncation"));
        }
        if corrupt && !flipped && !chunk.is_empty() {
            let mut v = chunk.to_vec();
            v[0] ^= 0xff;
            chunk = Bytes::from(v);
            flipped = true;
        }
        sent += chunk.len() as u64;
        counters.bytes_down.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(Frame::data(chunk))
    });
    Ok(out.body(BodyExt::boxed(StreamBody::new(stream))).map_err(std::io::Error::other)?)
}
