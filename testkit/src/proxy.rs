//! A fault-injecting HTTP proxy to put in front of a real registry: with
//! seeded randomness it answers 5xx / 429 + `Retry-After`, drops
//! connections, cuts, stalls or corrupts blob bodies, loses upload sessions
//! (`BLOB_UPLOAD_UNKNOWN`, or a bare `404 Path not found`), refuses
//! upload state (`BLOB_UPLOAD_INVALID`) or manifests (`MANIFEST_INVALID`),
//! refuses chunked uploads, claims just-listed tags
//! are unknown, lies in `Docker-Content-Digest`, redirects blob downloads to
//! a separate "object storage" listener, holds requests until released, and
//! adds latency. It can also answer fixed paths with canned responses (for
//! bodies a real registry refuses to store, such as broken manifests). It
//! counts and logs every request, so it doubles as a request meter.
//!
//! Decisions are deterministic: whether the n-th request with a given
//! identity (method, path without upload session id, digest) gets a fault
//! depends only on the seed, that identity and n — not on how concurrent
//! requests interleave.
//!
//! Everything it does not inject is forwarded byte for byte (streamed both
//! ways); the `Host` header is kept so the registry's `Location` headers
//! point back at the proxy.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};

/// What to inject, as probabilities per matching request (0.0–1.0).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub seed: u64,
    /// 500 / 502 / 503 on any request (not forwarded).
    pub server_error: f64,
    /// 429 TOOMANYREQUESTS with `Retry-After` (not forwarded).
    pub too_many_requests: f64,
    /// The `Retry-After` seconds sent with 429 (0 means 1).
    pub retry_after_secs: u64,
    /// Close the connection without an answer.
    pub reset: f64,
    /// Blob GET: forward, but cut the body short.
    pub truncate: f64,
    /// Blob GET: forward, but flip a byte (same length).
    pub corrupt: f64,
    /// Blob GET: forward half the body, then send nothing more (until the
    /// client gives up).
    pub stall: f64,
    /// Upload PATCH/PUT: answer 404 BLOB_UPLOAD_UNKNOWN (not forwarded).
    pub upload_unknown: f64,
    /// Upload PATCH/PUT: answer 404 `Path not found` without a registry
    /// error code, like an S3-backed registry behind a load balancer whose
    /// new session is not visible yet (not forwarded).
    pub upload_path_not_found: f64,
    /// Upload PATCH/PUT: answer 400 BLOB_UPLOAD_INVALID, like registry
    /// replicas that do not share `http.secret` (not forwarded).
    pub upload_invalid: f64,
    /// Manifest PUT: answer 400 MANIFEST_INVALID, like a registry that
    /// commits blobs to the repository asynchronously (not forwarded).
    pub manifest_put_invalid: f64,
    /// Upload PATCH: answer 405 UNSUPPORTED, like registries without
    /// chunked uploads (not forwarded).
    pub refuse_chunked: f64,
    /// Manifest GET/HEAD by tag: answer 404 MANIFEST_UNKNOWN (not forwarded).
    pub manifest_unknown: f64,
    /// Manifest HEAD: answer 403 DENIED, as a front that forbids HEAD does
    /// (not forwarded; the GET still is).
    pub refuse_manifest_head: f64,
    /// Mount POST: answer as if the mount was refused (drop `mount`/`from`,
    /// so the registry opens an ordinary session: 202).
    pub refuse_mount: f64,
    /// Blob GET: answer `307` to the proxy's storage listener (needs
    /// [`FaultProxy::start_with_storage`]), which serves the bytes itself.
    pub redirect_blobs: f64,
    /// Manifest GET/HEAD: replace `Docker-Content-Digest` with this value.
    pub wrong_digest: Option<String>,
    /// Matching requests wait until [`FaultProxy::release`] (then are
    /// forwarded).
    pub hold: f64,
    /// Only requests whose `METHOD /path?query` contains every one of these
    /// strings are eligible for faults (empty: every request).
    pub only: Vec<String>,
    /// At most this many injections of each fault (0: no limit).
    pub limit: u64,
    /// Added to every request.
    pub latency: Duration,
    /// Bytes per second of the link (0: unlimited): request and response
    /// bodies are paced to it, each direction capped separately (a
    /// full-duplex link) and shared by all connections through the proxy.
    pub bandwidth: u64,
    /// Docker Hub's pull quota: this many manifest `GET`s are answered
    /// (counted over the proxy's life), then `429 TOOMANYREQUESTS`; every
    /// manifest answer (`HEAD` too, which costs nothing) carries
    /// `RateLimit-Limit` / `RateLimit-Remaining: N;w=WINDOW` (None: off).
    pub pull_quota: Option<u64>,
    /// The quota window announced (`w=`), in seconds (0: Docker Hub's 21600).
    pub quota_window_secs: u64,
}

/// Paces bytes through one direction of a capped link shared by every
/// connection: each piece of `n` bytes is released when the link would have
/// finished sending everything before it plus those `n` bytes. An idle link
/// saves up no more than [`PACE_SLACK`] of burst (which makes up for timer
/// wake-ups that come late, so the average rate is the one asked for).
#[derive(Debug)]
struct Link {
    next_free: Mutex<Instant>,
}

/// Bodies are paced in pieces of at most this size, so the rate is smooth
/// even when the transport hands over large chunks.
const PACE_PIECE: usize = 16 * 1024;

/// How far behind the schedule the link may fall before it stops catching up.
const PACE_SLACK: Duration = Duration::from_millis(20);

impl Link {
    fn new() -> Link {
        Link { next_free: Mutex::new(Instant::now()) }
    }

    /// Wait until `n` more bytes may cross a link of `bandwidth` bytes per
    /// second (0: at once).
    async fn pace(&self, n: usize, bandwidth: u64) {
        if bandwidth == 0 || n == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(n as f64 / bandwidth as f64);
        let until = {
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = (*next).max(now.checked_sub(PACE_SLACK).unwrap_or(now));
            *next = start + cost;
            *next
        };
        tokio::time::sleep_until(until.into()).await;
    }
}

/// `stream` paced through `link` at `bandwidth` bytes per second (0: not
/// paced), in pieces of at most [`PACE_PIECE`] bytes.
fn paced<E: Send + 'static>(
    stream: impl futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
    link: Arc<Link>,
    bandwidth: u64,
) -> impl futures::Stream<Item = Result<Bytes, E>> + Send + 'static {
    stream
        .map(move |chunk| {
            let pieces: Vec<Result<Bytes, E>> = match chunk {
                Ok(b) if bandwidth > 0 && b.len() > PACE_PIECE => {
                    (0..b.len()).step_by(PACE_PIECE).map(|i| Ok(b.slice(i..(i + PACE_PIECE).min(b.len())))).collect()
                }
                other => vec![other],
            };
            futures::stream::iter(pieces)
        })
        .flatten()
        .then(move |chunk| {
            let link = link.clone();
            async move {
                if let Ok(b) = &chunk {
                    link.pace(b.len(), bandwidth).await;
                }
                chunk
            }
        })
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    /// Method, path without upload session id, and the `digest` parameter:
    /// what a retry of the same operation has in common with the original.
    pub key: String,
    /// The fault injected into it, if any.
    pub fault: Option<&'static str>,
    /// The `Authorization` header it carried.
    pub authorization: Option<String>,
}

/// One request the storage listener (redirect target) received.
#[derive(Debug, Clone)]
pub struct StorageRequest {
    pub path: String,
    /// Header names and values, lowercase names.
    pub headers: Vec<(String, String)>,
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
    /// Every request, in arrival order.
    pub seen: Mutex<Vec<Seen>>,
    /// Requests received by the storage listener.
    pub storage: Mutex<Vec<StorageRequest>>,
}

impl Counters {
    pub fn injected(&self, fault: &str) -> u64 {
        self.injected.lock().map(|m| m.get(fault).copied().unwrap_or(0)).unwrap_or(0)
    }

    pub fn total_injected(&self) -> u64 {
        self.injected.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    /// Every fault injected so far, by name.
    pub fn injected_map(&self) -> BTreeMap<&'static str, u64> {
        self.injected.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn kind(&self, kind: &str) -> u64 {
        self.by_kind.lock().map(|m| m.get(kind).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// A copy of the request log.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// A copy of what the storage listener received.
    pub fn storage_requests(&self) -> Vec<StorageRequest> {
        self.storage.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn note(&self, fault: &'static str) {
        if let Ok(mut m) = self.injected.lock() {
            *m.entry(fault).or_default() += 1;
        }
    }

    /// Count `fault` unless `limit` (0: none) injections of it were already
    /// counted; says whether it was counted.
    fn note_within(&self, fault: &'static str, limit: u64) -> bool {
        let Ok(mut m) = self.injected.lock() else { return false };
        let n = m.entry(fault).or_default();
        if limit > 0 && *n >= limit {
            return false;
        }
        *n += 1;
        true
    }
}

/// A fixed answer for one path.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Canned {
    /// A manifest served with `content_type` and a truthful
    /// `Docker-Content-Digest`.
    pub fn manifest(content_type: &str, body: impl Into<Bytes>) -> Canned {
        let body = body.into();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        Canned {
            status: 200,
            headers: vec![("content-type".into(), content_type.into()), ("docker-content-digest".into(), digest)],
            body,
        }
    }

    /// A JSON document (a catalog or tag list).
    pub fn json(value: &serde_json::Value) -> Canned {
        Canned {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(value.to_string()),
        }
    }
}

/// A running proxy. Dropping it stops it.
pub struct FaultProxy {
    pub port: u16,
    pub url: String,
    pub counters: Arc<Counters>,
    /// Where the storage listener answers, if started with one.
    pub storage_url: Option<String>,
    faults: Arc<Mutex<Faults>>,
    canned: Arc<Mutex<HashMap<String, Canned>>>,
    gate: Arc<tokio::sync::watch::Sender<u64>>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    faults: Arc<Mutex<Faults>>,
    canned: Arc<Mutex<HashMap<String, Canned>>>,
    /// (fault, request key) → how many such requests were rolled for.
    occurrences: Mutex<HashMap<(&'static str, String), u64>>,
    counters: Arc<Counters>,
    gate: Arc<tokio::sync::watch::Sender<u64>>,
    storage_url: Option<String>,
    /// Manifest `GET`s answered under [`Faults::pull_quota`].
    pulls: AtomicU64,
    /// The capped link, client → registry and registry → client.
    uplink: Arc<Link>,
    downlink: Arc<Link>,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, body: &str, headers: &[(&str, &str)]) -> Response<Body> {
    let mut r = Response::builder().status(status);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        r = r.header("content-type", "application/json");
    }
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

/// What a retry of a request has in common with it, and nothing that
/// depends on how concurrent work happened to interleave: a blob download
/// or upload is keyed by its digest alone (whichever repository moves a
/// shared layer first), a mount by the digest it asks for, an upload
/// session by its repository (never its random id); everything else by
/// method and path.
pub fn request_key(method: &str, path: &str, query: Option<&str>) -> String {
    let param = |name: &str| {
        query.unwrap_or("").split('&').find_map(|p| p.strip_prefix(name).and_then(|v| v.strip_prefix('='))).map(str::to_string)
    };
    if let Some(i) = path.find("/blobs/uploads") {
        let repo = &path[..i];
        if let Some(d) = param("digest") {
            return format!("{method} upload {d}");
        }
        if let Some(d) = param("mount") {
            return format!("{method} mount {d}");
        }
        return format!("{method} upload-session {repo}");
    }
    if method == "GET" && path_kind(path) == "blob" {
        return format!("GET blob {}", path.rsplit('/').next().unwrap_or_default());
    }
    format!("{method} {path}")
}

impl Shared {
    fn faults(&self) -> Faults {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Decide whether `fault` (at rate `p`) hits the request `key`.
    fn roll(&self, faults: &Faults, eligible: bool, fault: &'static str, key: &str, p: f64) -> bool {
        if p <= 0.0 || !eligible {
            return false;
        }
        if faults.limit > 0 && self.counters.injected(fault) >= faults.limit {
            return false;
        }
        let n = {
            let mut occ = self.occurrences.lock().unwrap_or_else(|e| e.into_inner());
            let slot = occ.entry((fault, key.to_string())).or_default();
            *slot += 1;
            *slot
        };
        let h = Sha256::digest(format!("{}|{fault}|{key}|{n}", faults.seed).as_bytes());
        let x = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        let hit = ((x >> 11) as f64 / (1u64 << 53) as f64) < p;
        // Check the limit and count the hit under one lock: concurrent
        // requests must not both slip under it.
        hit && self.counters.note_within(fault, faults.limit)
    }
}

impl FaultProxy {
    /// Proxy `upstream` (e.g. `http://127.0.0.1:5000`) on a free loopback port.
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        FaultProxy::launch(upstream, faults, None)
    }

    /// Like [`FaultProxy::start`], plus a storage listener on another
    /// loopback address that serves blobs from the registry storage root
    /// `storage` (what [`crate::TestRegistry::storage`] returns): the
    /// target of `redirect_blobs`.
    pub fn start_with_storage(upstream: &str, faults: Faults, storage: PathBuf) -> FaultProxy {
        FaultProxy::launch(upstream, faults, Some(storage))
    }

    fn launch(upstream: &str, faults: Faults, storage: Option<PathBuf>) -> FaultProxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let counters = Arc::new(Counters::default());
        let faults = Arc::new(Mutex::new(faults));
        let canned = Arc::new(Mutex::new(HashMap::new()));
        let gate = Arc::new(tokio::sync::watch::channel(0u64).0);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

        // The storage listener lives on another loopback address (another
        // host, as far as origins go) when the system allows it.
        let storage_listener = storage.map(|root| {
            let l = std::net::TcpListener::bind("127.0.0.2:0")
                .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind storage listener");
            l.set_nonblocking(true).expect("nonblocking");
            (l, root)
        });
        let storage_url = storage_listener.as_ref().map(|(l, _)| format!("http://{}", l.local_addr().expect("addr")));
        if let Some((listener, root)) = storage_listener {
            let counters = counters.clone();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (root, counters) = (root.clone(), counters.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| serve_storage(root.clone(), counters.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    });
                }
            });
        }

        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .danger_accept_invalid_certs(true)
                .pool_max_idle_per_host(64)
                .build()
                .expect("proxy client"),
            faults: faults.clone(),
            canned: canned.clone(),
            occurrences: Mutex::new(HashMap::new()),
            counters: counters.clone(),
            gate: gate.clone(),
            storage_url: storage_url.clone(),
            pulls: AtomicU64::new(0),
            uplink: Arc::new(Link::new()),
            downlink: Arc::new(Link::new()),
        });
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
        FaultProxy {
            port,
            url: format!("http://127.0.0.1:{port}"),
            counters,
            storage_url,
            faults,
            canned,
            gate,
            runtime: Some(runtime),
        }
    }

    /// Change the faults while running.
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.faults.lock() {
            *f = faults;
        }
    }

    /// Answer GET and HEAD requests for exactly `path` (query ignored) with
    /// `canned` instead of forwarding them.
    pub fn answer(&self, path: &str, canned: Canned) {
        if let Ok(mut m) = self.canned.lock() {
            m.insert(path.to_string(), canned);
        }
    }

    /// Let every held request go on, and hold no more.
    pub fn release(&self) {
        if let Ok(mut f) = self.faults.lock() {
            f.hold = 0.0;
        }
        self.gate.send_modify(|g| *g += 1);
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.gate.send_modify(|g| *g += 1);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn canned_response(c: &Canned, head: bool) -> Response<Body> {
    let mut r = Response::builder().status(c.status);
    for (k, v) in &c.headers {
        r = r.header(k.as_str(), v.as_str());
    }
    r = r.header("content-length", c.body.len());
    let body = if head {
        Empty::new().map_err(|never: Infallible| match never {}).boxed()
    } else {
        Full::new(c.body.clone()).map_err(|never: Infallible| match never {}).boxed()
    };
    r.body(body).expect("canned response")
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let faults = shared.faults();
    let c = &shared.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let original_query = req.uri().query().map(str::to_string);
    let target = match &original_query {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let key = request_key(method.as_str(), &path, original_query.as_deref());
    let kind = path_kind(&path);
    if let Ok(mut m) = c.by_kind.lock() {
        *m.entry(format!("{method} {kind}")).or_default() += 1;
    }
    let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let log_index = {
        let mut seen = c.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.push(Seen { at: Instant::now(), method: method.to_string(), target: target.clone(), key: key.clone(), fault: None, authorization });
        seen.len() - 1
    };
    let mark = |fault: &'static str| {
        if let Some(s) = c.seen.lock().as_mut().ok().and_then(|seen| seen.get_mut(log_index)) {
            s.fault = Some(fault);
        }
    };
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }

    let canned = shared.canned.lock().ok().and_then(|m| m.get(&path).cloned());
    if let Some(canned) = canned.filter(|_| method == Method::GET || method == Method::HEAD) {
        c.note("canned");
        mark("canned");
        return Ok(canned_response(&canned, method == Method::HEAD));
    }

    let described = format!("{method} {target}");
    let eligible = faults.only.iter().all(|s| described.contains(s.as_str()));
    let is_v2 = path.starts_with("/v2/") && path != "/v2/";
    let elig = eligible && is_v2;
    let roll = |fault: &'static str, p: f64| {
        let hit = shared.roll(&faults, elig, fault, &key, p);
        if hit {
            mark(fault);
        }
        hit
    };

    if roll("hold", faults.hold) {
        let mut gate = shared.gate.subscribe();
        let _ = gate.changed().await;
    }
    if roll("reset", faults.reset) {
        return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset"));
    }
    // Docker Hub's pull quota: manifest GETs are counted, HEADs are free.
    let mut quota_headers: Vec<(String, String)> = Vec::new();
    if let Some(limit) = faults.pull_quota.filter(|_| kind == "manifest" && (method == Method::GET || method == Method::HEAD)) {
        let window = if faults.quota_window_secs == 0 { 21600 } else { faults.quota_window_secs };
        let used = if method == Method::GET {
            let before = shared.pulls.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1));
            match before {
                Ok(n) => n + 1,
                Err(_) => {
                    c.note("quota");
                    mark("quota");
                    let mut body = req.into_body();
                    while let Some(Ok(_)) = body.frame().await {}
                    let limit_h = format!("{limit};w={window}");
                    let remaining_h = format!("0;w={window}");
                    return Ok(full(
                        StatusCode::TOO_MANY_REQUESTS,
                        r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your unauthenticated pull rate limit. https://www.docker.com/increase-rate-limit"}]}"#,
                        &[("ratelimit-limit", &limit_h), ("ratelimit-remaining", &remaining_h)],
                    ));
                }
            }
        } else {
            shared.pulls.load(Ordering::SeqCst)
        };
        quota_headers.push(("ratelimit-limit".into(), format!("{limit};w={window}")));
        quota_headers.push(("ratelimit-remaining".into(), format!("{};w={window}", limit.saturating_sub(used))));
    }
    // An injected answer is given after reading the request body, as a
    // server that looked at the whole request would: the client then
    // reliably sees the answer, not a connection closed under its upload.
    let injected: Option<Response<Body>> = 'inject: {
        if roll("server_error", faults.server_error) {
            let status = [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE]
                [(c.requests.load(Ordering::Relaxed) % 3) as usize];
            break 'inject Some(full(status, "<html>injected failure</html>", &[("content-type", "text/html")]));
        }
        if roll("too_many_requests", faults.too_many_requests) {
            let after = faults.retry_after_secs.max(1).to_string();
            break 'inject Some(full(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
                &[("retry-after", &after)],
            ));
        }
        let upload_write = kind == "upload" && (method == Method::PATCH || method == Method::PUT);
        if upload_write && roll("upload_unknown", faults.upload_unknown) {
            break 'inject Some(registry_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry"));
        }
        if upload_write && roll("upload_path_not_found", faults.upload_path_not_found) {
            break 'inject Some(full(StatusCode::NOT_FOUND, "Path not found", &[("content-type", "text/plain")]));
        }
        if upload_write && roll("upload_invalid", faults.upload_invalid) {
            break 'inject Some(registry_error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", "blob upload invalid"));
        }
        if kind == "manifest" && method == Method::PUT && roll("manifest_put_invalid", faults.manifest_put_invalid) {
            break 'inject Some(registry_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", "manifest invalid"));
        }
        if kind == "upload" && method == Method::PATCH && roll("refuse_chunked", faults.refuse_chunked) {
            break 'inject Some(registry_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "chunked uploads are not supported"));
        }
        let by_tag = kind == "manifest" && !path.contains("/manifests/sha256:");
        if by_tag && (method == Method::GET || method == Method::HEAD) && roll("manifest_unknown", faults.manifest_unknown) {
            break 'inject Some(registry_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "manifest unknown"));
        }
        if kind == "manifest" && method == Method::HEAD && roll("refuse_manifest_head", faults.refuse_manifest_head) {
            break 'inject Some(registry_error(StatusCode::FORBIDDEN, "DENIED", "HEAD is not allowed here"));
        }
        if kind == "blob" && method == Method::GET && shared.storage_url.is_some() && roll("redirect", faults.redirect_blobs) {
            let digest = path.rsplit('/').next().unwrap_or_default();
            let location = format!("{}/blob/{digest}", shared.storage_url.as_deref().unwrap_or_default());
            break 'inject Some(full(StatusCode::TEMPORARY_REDIRECT, "", &[("location", &location)]));
        }
        None
    };
    if let Some(answer) = injected {
        let mut body = req.into_body();
        while let Some(Ok(_)) = body.frame().await {}
        return Ok(answer);
    }

    // Forward.
    let mut query = original_query.clone();
    if kind == "upload" && method == Method::POST && query.as_deref().is_some_and(|q| q.contains("mount=")) && roll("refuse_mount", faults.refuse_mount) {
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
    builder = builder.body(reqwest::Body::wrap_stream(paced(up, shared.uplink.clone(), faults.bandwidth)));
    let resp = match builder.send().await {
        Ok(r) => r,
        Err(e) => return Err(std::io::Error::other(format!("upstream: {e}"))),
    };
    let status = resp.status();
    let lie = faults.wrong_digest.as_ref().filter(|_| kind == "manifest" && elig);
    if lie.is_some() {
        c.note("wrong_digest");
        mark("wrong_digest");
    }
    let mut out = Response::builder().status(status.as_u16());
    for (name, value) in resp.headers() {
        if matches!(name.as_str(), "connection" | "keep-alive" | "transfer-encoding") {
            continue;
        }
        if name.as_str() == "docker-content-digest" && lie.is_some() {
            continue;
        }
        out = out.header(name, value);
    }
    if let Some(lie) = lie {
        out = out.header("docker-content-digest", lie.as_str());
    }
    for (name, value) in &quota_headers {
        out = out.header(name.as_str(), value.as_str());
    }
    let blob_body = kind == "blob" && method == Method::GET && status.is_success();
    let truncate = blob_body && roll("truncate", faults.truncate);
    let corrupt = blob_body && !truncate && roll("corrupt", faults.corrupt);
    let stall = blob_body && !truncate && !corrupt && roll("stall", faults.stall);
    let length = resp.content_length().unwrap_or(0);
    let counters = shared.counters.clone();
    let mut sent: u64 = 0;
    let mut flipped = false;
    let stream = paced(resp.bytes_stream(), shared.downlink.clone(), faults.bandwidth)
        .then(move |chunk| {
            let cut = (truncate || stall) && chunk.as_ref().is_ok_and(|c| sent + c.len() as u64 >= length / 2);
            if let Ok(c) = &chunk {
                sent += c.len() as u64;
            }
            async move {
                if cut && stall {
                    // Send nothing more, ever: the client must time out.
                    futures::future::pending::<()>().await;
                }
                (chunk, cut)
            }
        })
        .map(move |(chunk, cut)| {
            let mut chunk = chunk.map_err(std::io::Error::other)?;
            if cut {
                return Err(std::io::Error::other("injected truncation"));
            }
            if corrupt && !flipped && !chunk.is_empty() {
                let mut v = chunk.to_vec();
                v[0] ^= 0xff;
                chunk = Bytes::from(v);
                flipped = true;
            }
            counters.bytes_down.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok(Frame::data(chunk))
        });
    out.body(BodyExt::boxed(StreamBody::new(stream))).map_err(std::io::Error::other)
}

/// The storage listener: `GET /blob/<digest>` from the registry's storage
/// root, recording every request's headers.
async fn serve_storage(root: PathBuf, counters: Arc<Counters>, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let path = req.uri().path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("<binary>").to_string()))
        .collect();
    if let Ok(mut log) = counters.storage.lock() {
        log.push(StorageRequest { path: path.clone(), headers });
    }
    let hex = path.strip_prefix("/blob/sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(full(StatusCode::NOT_FOUND, "not found", &[]));
    }
    let file = root.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    match tokio::fs::read(&file).await {
        Ok(bytes) => Ok(Response::builder()
            .status(200)
            .header("content-type", "application/octet-stream")
            .header("content-length", bytes.len())
            .body(Full::new(Bytes::from(bytes)).map_err(|never: Infallible| match never {}).boxed())
            .map_err(std::io::Error::other)?),
        Err(_) => Ok(full(StatusCode::NOT_FOUND, "not found", &[])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Access, Registry, TestRegistry};

    /// Download `digest` from `repo` through `base` and return how many bytes came.
    async fn download(http: &reqwest::Client, base: &str, repo: &str, digest: &str) -> usize {
        let resp = http.get(format!("{base}/v2/{repo}/blobs/{digest}")).send().await.expect("GET blob");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("blob body").len()
    }

    #[tokio::test]
    async fn bandwidth_caps_both_directions_across_connections() {
        const RATE: u64 = 2 << 20;
        const SIZE: u64 = 1 << 20;
        let registry = TestRegistry::start();
        let proxy = FaultProxy::start(&registry.url, Faults { bandwidth: RATE, ..Faults::default() });
        // At least the time the bytes need on the link (a lower bound only:
        // a busy machine can make it slower, never faster).
        let floor = |bytes: u64| Duration::from_secs_f64(bytes as f64 / RATE as f64 * 0.9);

        let up = Instant::now();
        let digest = Registry::new(&proxy.url, Access::Anonymous).push_random_blob("bw", "bandwidth", 2 * SIZE).await;
        assert!(up.elapsed() >= floor(2 * SIZE), "2 MiB went up in {:?} at 2 MiB/s", up.elapsed());

        let http = reqwest::Client::new();
        let down = Instant::now();
        assert_eq!(download(&http, &proxy.url, "bw", &digest).await as u64, 2 * SIZE);
        assert!(down.elapsed() >= floor(2 * SIZE), "2 MiB came down in {:?} at 2 MiB/s", down.elapsed());

        // Two connections share the one link.
        let both = Instant::now();
        let (a, b) = tokio::join!(download(&http, &proxy.url, "bw", &digest), download(&http, &proxy.url, "bw", &digest));
        assert_eq!((a + b) as u64, 4 * SIZE);
        assert!(both.elapsed() >= floor(4 * SIZE), "two 2 MiB downloads took {:?} together at 2 MiB/s", both.elapsed());

        // Unlimited again: a local download is far quicker than the link.
        proxy.set_faults(Faults::default());
        let free = Instant::now();
        download(&http, &proxy.url, "bw", &digest).await;
        assert!(free.elapsed() < floor(2 * SIZE), "an uncapped download took {:?}", free.elapsed());
    }

    #[test]
    fn request_keys_ignore_session_ids_and_which_repository_moves_a_blob() {
        assert_eq!(
            request_key("PUT", "/v2/a/blobs/uploads/1234-uuid", Some("_state=xyz&digest=sha256%3Aab")),
            "PUT upload sha256%3Aab"
        );
        assert_eq!(request_key("POST", "/v2/a/blobs/uploads/", None), "POST upload-session /v2/a");
        assert_eq!(request_key("PATCH", "/v2/a/blobs/uploads/1234", Some("_state=x")), "PATCH upload-session /v2/a");
        assert_eq!(request_key("POST", "/v2/b/blobs/uploads/", Some("mount=sha256%3Aab&from=a")), "POST mount sha256%3Aab");
        assert_eq!(request_key("GET", "/v2/a/blobs/sha256:ab", None), "GET blob sha256:ab");
        assert_eq!(request_key("HEAD", "/v2/a/blobs/sha256:ab", None), "HEAD /v2/a/blobs/sha256:ab");
        assert_eq!(request_key("HEAD", "/v2/a/manifests/v1", None), "HEAD /v2/a/manifests/v1");
    }
}
