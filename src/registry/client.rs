//! The HTTP client for one registry: connection pool, retries with backoff
//! that honour `Retry-After`, and the calls into [`super::authn`] that
//! authenticate each request.
//!
//! Every request to a registry goes through [`RegistryClient::send`] (or
//! [`RegistryClient::send_stream`] for bodies that cannot be replayed).
//! Redirects of `GET` and `HEAD` are followed by [`redirect`] (credentials
//! stay on the registry's own origin); nothing else is ever redirected. This
//! module never logs a header value and never puts a query string into an
//! error.
//!
//! Timeouts are about progress, never a deadline on a whole transfer: an
//! ordinary request fails when no response (or no byte of its body) arrives
//! for the stall timeout; a streamed upload fails when the registry takes no
//! byte of the body for the stall timeout, or gives no answer within the
//! commit wait after the last byte (see [`progress`]).

mod options;
mod progress;
mod redirect;
mod request;
pub use options::{ClientOptions, RetryConfig};
pub use request::Request;
pub(crate) use redirect::same_origin;

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use backon::Retryable;
use bytes::Bytes;
use futures::Stream;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::Scopes;
use super::authn::Authenticator;
use super::endpoint::{Endpoint, RegistryUrl};
use super::error::{RegistryError, parse_error_body};
use super::gate::{Gate, Ticket, Verdict};
use super::usage::Usage;
use progress::{Progress, Watched};

static CRYPTO: Once = Once::new();

/// Install the process-wide rustls crypto provider (ring) once.
fn ensure_crypto_provider() {
    CRYPTO.call_once(|| {
        // An error only means a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client for one registry.
pub struct RegistryClient {
    /// Ordinary requests: the stall timeout bounds the wait for the
    /// response and for each byte of its body.
    http: reqwest::Client,
    /// Streamed bodies: no read timeout. Uploads: the registry answers only
    /// after the whole body, [`RegistryClient::send_stream`] watches
    /// progress. Blob downloads: the wait for the response is bounded here,
    /// each wait for a body chunk by the reader (only while it reads, so a
    /// reader busy elsewhere is no stall).
    upload_http: reqwest::Client,
    stall_timeout: Duration,
    commit_timeout: Duration,
    /// Upload `PATCH` chunk size set for this registry (`None`: monolithic).
    chunk_size: Option<u64>,
    /// The registry refused a monolithic upload (`413`): upload in chunks.
    monolithic_refused: AtomicBool,
    /// The chunk size to stay within since the registry (or its front)
    /// refused a bigger chunk with `413`; 0 while none was refused.
    chunk_limit: AtomicU64,
    url: RegistryUrl,
    name: String,
    authn: Authenticator,
    retry: RetryConfig,
    requests: AtomicU64,
    /// Auth state of the other origins redirects led to.
    foreign: redirect::ForeignOrigins,
    /// Whether the registry answers `HEAD` on manifests.
    pub(super) manifest_head: super::manifests::HeadProbe,
    /// Shared by every task on this registry: pauses, rates, breaker.
    gate: Gate,
    /// What was asked of the registry (pulls, HEADs, bytes, 429s, retries).
    usage: Usage,
    /// Held by the one quota probe in flight (see [`RegistryClient::probe_quota`]).
    quota_probe: tokio::sync::Mutex<()>,
    /// The registry is marked insecure: an `http://` upload location of
    /// an `https://` registry is used (still without credentials).
    insecure: bool,
}

/// Build the message of a reqwest error: its chain of causes, without URLs.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        let text = if let Some(re) = err.downcast_ref::<reqwest::Error>() {
            let mut s = re.to_string();
            if let Some(url) = re.url() {
                s = s.replace(&format!(" for url ({url})"), "").replace(&format!(" ({url})"), "");
            }
            s
        } else {
            err.to_string()
        };
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    if e.is_timeout() && !parts.iter().any(|p| p.contains("timed out")) {
        parts.push("timed out".into());
    }
    parts.join(": ")
}

/// Why a TLS handshake failed, when trying again cannot help.
enum TlsFailure {
    /// The server's certificate was refused.
    Untrusted,
    /// The server answered with something that is not TLS.
    NotTls,
}

fn tls_failure(e: &reqwest::Error) -> Option<TlsFailure> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        // rustls errors travel inside (nested) io::Errors, whose `source`
        // skips the error they wrap.
        let mut inner: &(dyn std::error::Error + 'static) = err;
        while let Some(wrapped) = inner.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            inner = wrapped;
        }
        match inner.downcast_ref::<rustls::Error>() {
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => return Some(TlsFailure::Untrusted),
            Some(rustls::Error::InvalidMessage(_)) => return Some(TlsFailure::NotTls),
            _ => {}
        }
        current = err.source();
    }
    None
}

/// `Retry-After` as delay-seconds or as an HTTP date (RFC 9110 §10.2.3),
/// at most `cap`; a date in the past means now.
fn retry_after(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(v).ok()?;
            at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(cap))
}

impl RegistryClient {
    /// Build a client for `endpoint`. Fails only on an unreadable CA bundle.
    pub fn new(endpoint: &Endpoint, options: &ClientOptions) -> Result<RegistryClient, RegistryError> {
        ensure_crypto_provider();
        let name = endpoint.url.base().as_str().trim_end_matches('/').to_string();
        let protocol = |message: String| RegistryError::Protocol { registry: name.clone(), message };
        let roots = match &endpoint.tls.ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| protocol(format!("cannot read CA bundle {}: {e}", ca.display())))?;
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| protocol(format!("CA bundle {} is not PEM: {e}", ca.display())))?
            }
            None => Vec::new(),
        };
        let build = |read_timeout: Option<Duration>| {
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("regferry/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(options.connect_timeout)
                .pool_max_idle_per_host(options.max_idle_per_host)
                .pool_idle_timeout(Duration::from_secs(50))
                .tcp_nodelay(true);
            if let Some(t) = read_timeout {
                builder = builder.read_timeout(t);
            }
            if endpoint.tls.insecure_skip_verify {
                builder = builder.danger_accept_invalid_certs(true);
            }
            builder = endpoint.configure_transport(builder).map_err(protocol)?;
            for cert in &roots {
                builder = builder.add_root_certificate(cert.clone());
            }
            builder.build().map_err(|e| protocol(format!("HTTP client: {}", describe(&e))))
        };
        let http = build(Some(options.stall_timeout))?;
        let upload_http = build(None)?;
        Ok(RegistryClient {
            authn: Authenticator::new(endpoint, &name, http.clone(), options.retry.clone()),
            http,
            upload_http,
            stall_timeout: options.stall_timeout,
            commit_timeout: options.commit_timeout.max(options.stall_timeout),
            chunk_size: endpoint.chunk_size,
            monolithic_refused: AtomicBool::new(false),
            chunk_limit: AtomicU64::new(0),
            url: endpoint.url.clone(),
            retry: options.retry.clone(),
            requests: AtomicU64::new(0),
            foreign: Default::default(),
            manifest_head: Default::default(),
            gate: Gate::new(name.clone(), &endpoint.limits),
            usage: Usage::default(),
            quota_probe: tokio::sync::Mutex::new(()),
            insecure: endpoint.tls.insecure_skip_verify,
            name,
        })
    }

    /// Name the registry's role (`source`, `destination`) in the messages
    /// about its condition.
    pub fn with_role(mut self, role: &str) -> RegistryClient {
        self.gate.relabel(format!("{role} {}", self.name));
        self
    }

    /// The registry's gate: pauses, limits and condition (down, read-only…).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// What was asked of this registry so far.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Report a request's outcome to the gate and the counters (`sent`:
    /// body bytes of an upload, `took`: time to the answer), and run the
    /// `/v2/` probe the breaker asks for.
    async fn observe(&self, ticket: Ticket<'_>, method: &Method, url: &Url, result: &Result<Response, RegistryError>, sent: u64, took: Duration) {
        let (headers, error) = match result {
            Ok(r) => (Some(r.headers()), None),
            Err(e) => (None, Some(e)),
        };
        let status = match result {
            Ok(r) => Some(r.status().as_u16()),
            Err(e) => e.status(),
        };
        let bytes = match result {
            Ok(r) if method == Method::GET => r.content_length().unwrap_or(0),
            Ok(_) => sent,
            Err(_) => 0,
        };
        self.usage.record(&self.name, method.as_str(), url.path(), status, bytes, took);
        // Registries that count pulls announce the quota on every manifest
        // answer: after one, it is known (announced or not).
        if status.is_some() && url.path().contains("/manifests/") {
            self.gate.note_quota_known();
        }
        if ticket.observe(method.as_str(), url.path(), headers, error) == Verdict::Probe {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let probe = self.http.get(self.endpoint_url("/v2/")).send().await;
            self.gate.probe_result(probe.err().map(|e| describe(&e)));
        }
    }

    /// `scheme://host[:port]`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &RegistryUrl {
        &self.url
    }

    /// Requests sent so far (token requests included).
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed) + self.authn.request_count()
    }

    /// Whether the registry is marked insecure (certificate checks off).
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// The stall timeout this client applies.
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// Whether blobs go to this registry in `PATCH` chunks, and how big:
    /// the size set for it, or (once it refused a monolithic upload) the
    /// default; never above a size it refused.
    pub fn upload_chunk_size(&self) -> Option<u64> {
        let wanted = match self.chunk_size {
            Some(n) => n,
            None if self.monolithic_refused.load(Ordering::Relaxed) => DEFAULT_CHUNK_SIZE,
            None => return None,
        };
        let limit = self.chunk_limit.load(Ordering::Relaxed);
        Some(if limit > 0 { wanted.min(limit) } else { wanted })
    }

    /// Remember that the registry refused a monolithic upload as too large.
    pub fn note_monolithic_refused(&self) {
        if !self.monolithic_refused.swap(true, Ordering::Relaxed) {
            tracing::info!(registry = %self.name, "the registry refuses large monolithic uploads (413); uploading in chunks from now on");
        }
    }

    /// Remember that chunks of `refused` bytes are too large for the
    /// registry; returns the next size to try, if any above `min`.
    pub fn note_chunk_refused(&self, refused: u64, min: u64) -> Option<u64> {
        let next = (refused / 2).max(MIN_CHUNK_SIZE);
        if next >= refused || next < min {
            return None;
        }
        self.chunk_limit.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| Some(if cur == 0 { next } else { cur.min(next) })).ok();
        tracing::info!(registry = %self.name, "the registry refuses {refused}-byte chunks (413); trying {next}");
        Some(next)
    }

    /// Check that the registry answers `/v2/` and accepts our credentials.
    ///
    /// With no credentials configured, a refusal of `/v2/` (`401`) is not
    /// the end: some registries (Pulp, Artifactory, Nexus) refuse the
    /// anonymous probe yet serve public repositories anonymously. The
    /// repository requests then decide, and their errors name what was
    /// refused.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        match self.send(&Request::new(Method::GET, self.endpoint_url("/v2/"), Scopes::none())).await {
            Ok(_) => Ok(()),
            Err(e @ RegistryError::Auth { .. }) => {
                if !self.authn.is_anonymous().await {
                    return Err(e);
                }
                tracing::info!(
                    registry = %self.name, error = %e,
                    "the registry refuses anonymous access to /v2/; going on without credentials (the repository requests decide)"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `base` joined with an absolute path such as `/v2/x/tags/list`.
    pub fn endpoint_url(&self, path: &str) -> Url {
        let mut u = self.url.base().clone();
        u.set_path(&self.url.api_path(path));
        u
    }

    /// Send a replayable request, authenticating as needed and retrying
    /// transient failures. Returns responses with a 2xx status or one of
    /// `req.also_ok`; any other status becomes [`RegistryError::Status`].
    ///
    /// Every attempt passes the registry's [`Gate`] first. A transient
    /// failure that used up the retries comes back as
    /// [`RegistryError::Exhausted`], which callers do not retry again.
    pub async fn send(&self, req: &Request) -> Result<Response, RegistryError> {
        if super::usage::Kind::of(req.method.as_str(), req.url.path()) == super::usage::Kind::ManifestGet && !self.gate.quota_known() {
            self.probe_quota(req).await;
        }
        let cap = self.retry.max_retry_after;
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let attempt = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            // A pull is not sent while the registry's quota is at its reserve.
            if super::usage::Kind::of(req.method.as_str(), req.url.path()) == super::usage::Kind::ManifestGet
                && let Some(e) = self.gate.pull_refused()
            {
                return Err(e);
            }
            let ticket = self.gate.admit(req.method.as_str()).await?;
            let started = std::time::Instant::now();
            let result = self.send_following(req).await;
            self.observe(ticket, &req.method, &req.url, &result, 0, started.elapsed()).await;
            // A `429` that spent the registry's quota (see [`Gate::note_refusal`])
            // comes back as [`RegistryError::QuotaLow`], which is not retried.
            match result {
                Err(e) if e.status() == Some(429) => Err(self.gate.halted(false).filter(|q| matches!(q, RegistryError::QuotaLow { .. })).unwrap_or(e)),
                other => other,
            }
        };
        let result = attempt
            .retry(self.retry.backoff())
            .when(RegistryError::is_transient)
            .adjust(move |e: &RegistryError, d| d.map(|d| e.retry_after().map(|r| r.min(cap)).unwrap_or(d)))
            .notify(|e, d| {
                self.usage.retried(&self.name);
                tracing::debug!(registry = %self.name, error = %e, "retrying in {d:?}")
            })
            .await;
        // An upload session the registry lost is restarted by the caller, not given up.
        result.map_err(|e| match e {
            e if e.is_transient() && !e.has_code("BLOB_UPLOAD_UNKNOWN") => {
                RegistryError::Exhausted { attempts: attempts.load(Ordering::Relaxed), source: Box::new(e) }
            }
            e => e,
        })
    }

    /// Before the first pull (manifest `GET`) to a registry that has not
    /// answered any manifest request yet (whose quota is therefore not
    /// known): a `HEAD` of the same manifest (free on Docker Hub, and the
    /// way it documents reading the quota), one at a time, so that a
    /// registry at its reserve sees no pull at all. Not where `HEAD` on
    /// manifests is known to be refused. Its answer goes to the gate like
    /// any other; a failure is left to the `GET` itself.
    async fn probe_quota(&self, req: &Request) {
        let _one = self.quota_probe.lock().await;
        if self.gate.quota_known() || self.refuses_manifest_head() {
            return;
        }
        let head = Request {
            method: Method::HEAD,
            url: req.url.clone(),
            scopes: req.scopes.clone(),
            headers: req.headers.clone(),
            body: None,
            also_ok: &[404],
            download: false,
        };
        if let Ok(ticket) = self.gate.admit("HEAD").await {
            let started = std::time::Instant::now();
            let result = self.send_following(&head).await;
            self.observe(ticket, &head.method, &head.url, &result, 0, started.elapsed()).await;
        }
        self.gate.note_quota_known();
    }

    /// Send a request whose body is a one-shot stream: one attempt, with the
    /// cached authorization (the caller has just authenticated with the same
    /// scopes). A `401` drops the cached token and comes back retryable, so
    /// the caller can restart its whole operation. The request passes the
    /// registry's [`Gate`] first.
    ///
    /// It fails (retryably) when the registry takes no byte of the body for
    /// the stall timeout while bytes are ready, or gives no answer within
    /// the commit wait after the last byte; waiting for the body's own
    /// source is not the registry's stall.
    pub async fn send_stream(
        &self,
        method: Method,
        url: Url,
        scopes: &Scopes,
        headers: HeaderMap,
        body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<Response, RegistryError> {
        let ticket = self.gate.admit(method.as_str()).await?;
        let sent = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let started = std::time::Instant::now();
        let result = self.send_stream_once(method.clone(), url.clone(), scopes, headers, body).await;
        self.observe(ticket, &method, &url, &result, sent, started.elapsed()).await;
        result
    }

    async fn send_stream_once(
        &self,
        method: Method,
        url: Url,
        scopes: &Scopes,
        headers: HeaderMap,
        body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<Response, RegistryError> {
        // The registry's credentials go to its own origin only: an upload
        // session elsewhere (storage, another front) gets none.
        let own_origin = same_origin(&url, self.url.base());
        let auth = if own_origin { self.authorization(scopes, false).await? } else { None };
        // The HTTP stack stops asking for more once it has the promised
        // length: that is the last byte handed over.
        let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let (body, progress) = Watched::new(body, length);
        let mut builder =
            self.upload_http.request(method.clone(), url.clone()).headers(headers).body(reqwest::Body::wrap_stream(body));
        if let Some(a) = auth {
            builder = builder.header(header::AUTHORIZATION, a);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let sent = builder.send();
        tokio::pin!(sent);
        let tick = (self.stall_timeout / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let resp = loop {
            tokio::select! {
                r = &mut sent => break r.map_err(|e| self.transport_error(&method, &url, &e))?,
                _ = tokio::time::sleep(tick) => {
                    if let Some(message) = Progress::stalled(&progress, self.stall_timeout, self.commit_timeout) {
                        return Err(RegistryError::Transport {
                            registry: self.name.clone(),
                            method: method.to_string(),
                            path: url.path().to_string(),
                            message,
                        });
                    }
                }
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED && own_origin {
            self.authn.forget(scopes).await;
            return Err(RegistryError::Auth {
                registry: self.name.clone(),
                reason: format!("{method} {} was refused with 401 (token expired?)", url.path()),
                retryable: true,
            });
        }
        if resp.status().is_success() {
            return Ok(resp);
        }
        // (`status_error` bounds its wait for the error body itself.)
        Err(self.status_error(&method, &url, resp).await)
    }

    async fn send_authed(&self, req: &Request) -> Result<Response, RegistryError> {
        let mut auth = self.authorization(&req.scopes, false).await?;
        let mut round = 0;
        loop {
            let resp = self.send_raw(req, auth.clone()).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return self.check_status(req, resp).await;
            }
            // Gives up (with the reason) after a few rounds.
            let next = self.authn.unauthorized(&req.scopes, auth.as_ref(), resp.headers(), round, &req.method, req.url.path()).await?;
            auth = Some(next);
            round += 1;
        }
    }

    async fn check_status(&self, req: &Request, resp: Response) -> Result<Response, RegistryError> {
        let status = resp.status();
        if status.is_success() || req.also_ok.contains(&status.as_u16()) {
            return Ok(resp);
        }
        if redirect::is_redirect(status) && redirect::followable(&req.method) {
            return Ok(resp);
        }
        // A HEAD has no body: for a lasting refusal, ask again with GET to
        // read the registry's reason. Not for 408/429, which will be retried
        // anyway (and whose Retry-After the HEAD already carries).
        let transient = matches!(status.as_u16(), 408 | 425 | 429);
        if req.method == Method::HEAD && status.is_client_error() && status != StatusCode::NOT_FOUND && !transient {
            let get = Request {
                method: Method::GET,
                url: req.url.clone(),
                scopes: req.scopes.clone(),
                headers: req.headers.clone(),
                body: None,
                also_ok: &[],
                download: false,
            };
            let auth = self.authorization(&req.scopes, false).await?;
            let resp = self.send_raw(&get, auth).await?;
            if !resp.status().is_success() {
                return Err(self.status_error(&Method::HEAD, &req.url, resp).await);
            }
        }
        Err(self.status_error(&req.method, &req.url, resp).await)
    }

    async fn send_raw(&self, req: &Request, auth: Option<HeaderValue>) -> Result<Response, RegistryError> {
        let http = if req.download { &self.upload_http } else { &self.http };
        let mut builder = http.request(req.method.clone(), req.url.clone()).headers(req.headers.clone());
        if let Some(a) = auth {
            builder = builder.header(header::AUTHORIZATION, a);
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        } else if req.method == Method::POST || req.method == Method::PUT {
            builder = builder.header(header::CONTENT_LENGTH, "0");
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(registry = %self.name, method = %req.method, path = req.url.path(), "request");
        if req.download {
            return self.send_download(builder, &req.method, &req.url).await;
        }
        builder.send().await.map_err(|e| self.transport_error(&req.method, &req.url, &e))
    }

    /// Send a blob download on the client without a read timeout, bounding
    /// the wait for the response by the stall timeout.
    async fn send_download(&self, builder: reqwest::RequestBuilder, method: &Method, url: &Url) -> Result<Response, RegistryError> {
        match tokio::time::timeout(self.stall_timeout, builder.send()).await {
            Ok(sent) => sent.map_err(|e| self.transport_error(method, url, &e)),
            Err(_) => Err(RegistryError::Transport {
                registry: self.name.clone(),
                method: method.to_string(),
                path: url.path().to_string(),
                message: format!("no response for {} (stall timeout)", humantime::format_duration(self.stall_timeout)),
            }),
        }
    }

    pub(crate) fn transport_error(&self, method: &Method, url: &Url, e: &reqwest::Error) -> RegistryError {
        let message = describe(e);
        if e.is_connect() {
            let hint = match tls_failure(e) {
                Some(TlsFailure::Untrusted) => Some(
                    "the registry's TLS certificate is not trusted: give its CA bundle (--from-ca/--to-ca, or a policy's \
                     ca_file), or turn verification off for this registry explicitly (--from-insecure/--to-insecure, or \
                     insecure: true)",
                ),
                Some(TlsFailure::NotTls) => {
                    Some("the server does not speak TLS there; if it is a plain-HTTP registry, say so with an http:// URL")
                }
                None => None,
            };
            if let Some(hint) = hint {
                return RegistryError::Tls { registry: self.name.clone(), message: format!("{message}; {hint}") };
            }
            RegistryError::Connect { registry: self.name.clone(), message }
        } else {
            RegistryError::Transport {
                registry: self.name.clone(),
                method: method.to_string(),
                path: url.path().to_string(),
                message,
            }
        }
    }

    /// Turn an error response into [`RegistryError::Status`], reading (a
    /// bounded amount of) its body for the registry's error codes, waiting
    /// for it at most the stall timeout.
    /// The answer's quota headers go to the gate ([`Gate::note_refusal`]).
    pub(crate) async fn status_error(&self, method: &Method, url: &Url, resp: Response) -> RegistryError {
        let status = resp.status().as_u16();
        self.gate.note_refusal(status, resp.headers());
        let retry_after = retry_after(resp.headers(), self.retry.max_retry_after);
        let body = tokio::time::timeout(self.stall_timeout, read_limited(resp, 64 * 1024))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        RegistryError::Status {
            registry: self.name.clone(),
            method: method.to_string(),
            path: url.path().to_string(),
            status,
            errors: parse_error_body(&body),
            retry_after,
        }
    }

    /// The `Authorization` header for `scopes` (see [`Authenticator`]).
    async fn authorization(&self, scopes: &Scopes, _refresh: bool) -> Result<Option<HeaderValue>, RegistryError> {
        self.authn.authorization(scopes).await
    }
}

/// The chunk size used once a registry refused a monolithic upload and no
/// size was set for it.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

/// The smallest chunk regferry sends (but the last one of a blob).
pub const MIN_CHUNK_SIZE: u64 = 256 << 10;

/// Read at most `limit` bytes of a response body.
pub(crate) async fn read_limited(mut resp: Response, limit: usize) -> Result<Vec<u8>, RegistryError> {
    let path = resp.url().path().to_string();
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(RegistryError::Transport {
                    registry: resp.url().origin().ascii_serialization(),
                    method: "GET".into(),
                    path,
                    message: describe(&e),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    use super::retry_after;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_takes_seconds_and_dates_within_the_cap() {
        let cap = Duration::from_secs(120);
        assert_eq!(retry_after(&with("7"), cap), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&with("9999"), cap), Some(cap));
        let in_30s = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let waited = retry_after(&with(&in_30s), cap).unwrap();
        assert!(waited > Duration::from_secs(27) && waited <= Duration::from_secs(30), "{waited:?}");
        assert_eq!(retry_after(&with("Wed, 21 Oct 2015 07:28:00 GMT"), cap), Some(Duration::ZERO));
        assert_eq!(retry_after(&with("soon"), cap), None);
        assert_eq!(retry_after(&HeaderMap::new(), cap), None);
    }
}
