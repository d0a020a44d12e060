//! The HTTP client for one registry: connection pool, authentication
//! (anonymous, basic, bearer tokens per scope set, cached and refreshed) and
//! retries with backoff that honour `Retry-After`.
//!
//! Every request to a registry goes through [`RegistryClient::send`] (or
//! [`RegistryClient::send_stream`] for bodies that cannot be replayed). This
//! module never follows a redirect on its own, never logs a header value and
//! never puts a query string into an error.
//!
//! Timeouts are about progress, never a deadline on a whole transfer: an
//! ordinary request fails when no response (or no byte of its body) arrives
//! for the stall timeout; a streamed upload fails when the registry takes no
//! byte of the body for the stall timeout, or gives no answer within the
//! commit wait after the last byte.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::Stream;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::{Challenge, Scopes, TokenResponse, parse_challenge};
use super::endpoint::{Credentials, Endpoint, RegistryUrl, Secret};
use super::error::{RegistryError, parse_error_body};

/// How hard to retry transient failures of a single request.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` we are willing to honour.
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            retries: 4,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// Transport settings shared by every registry client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub retry: RetryConfig,
    /// A request fails when no byte moves for this long: no response, no
    /// byte of a download, no byte of an upload taken by the registry. Not a
    /// deadline on the whole request: multi-GiB layers take as long as they
    /// take.
    pub stall_timeout: Duration,
    /// How long the registry may take to answer after the last byte of an
    /// upload (it may be verifying and moving a large blob in its storage).
    /// Never shorter than `stall_timeout`.
    pub commit_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_idle_per_host: usize,
}

impl ClientOptions {
    /// The default stall timeout.
    pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

    /// The default commit wait for a stall timeout: five minutes, or the
    /// stall timeout when that is longer.
    pub fn default_commit_timeout(stall: Duration) -> Duration {
        stall.max(Duration::from_secs(300))
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry: RetryConfig::default(),
            stall_timeout: ClientOptions::STALL_TIMEOUT,
            commit_timeout: ClientOptions::default_commit_timeout(ClientOptions::STALL_TIMEOUT),
            connect_timeout: Duration::from_secs(10),
            max_idle_per_host: 64,
        }
    }
}

/// One request that can be sent (and re-sent) as often as needed.
pub struct Request {
    pub method: Method,
    pub url: Url,
    pub scopes: Scopes,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Statuses besides 2xx the caller handles itself (e.g. 404 on HEAD).
    pub also_ok: &'static [u16],
}

impl Request {
    pub fn new(method: Method, url: Url, scopes: Scopes) -> Request {
        Request { method, url, scopes, headers: HeaderMap::new(), body: None, also_ok: &[] }
    }

    pub fn header(mut self, name: header::HeaderName, value: &str) -> Request {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub fn body(mut self, body: Bytes) -> Request {
        self.body = Some(body);
        self
    }

    pub fn also_ok(mut self, statuses: &'static [u16]) -> Request {
        self.also_ok = statuses;
        self
    }
}

struct CachedToken {
    token: Secret,
    valid_until: Instant,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: HashMap<String, CachedToken>,
}

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
    credentials: Credentials,
    auth: tokio::sync::Mutex<AuthState>,
    retry: RetryConfig,
    requests: AtomicU64,
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
            for cert in &roots {
                builder = builder.add_root_certificate(cert.clone());
            }
            builder.build().map_err(|e| protocol(format!("HTTP client: {}", describe(&e))))
        };
        let http = build(Some(options.stall_timeout))?;
        let upload_http = build(None)?;
        Ok(RegistryClient {
            http,
            upload_http,
            stall_timeout: options.stall_timeout,
            commit_timeout: options.commit_timeout.max(options.stall_timeout),
            chunk_size: endpoint.chunk_size,
            monolithic_refused: AtomicBool::new(false),
            chunk_limit: AtomicU64::new(0),
            url: endpoint.url.clone(),
            name,
            credentials: endpoint.credentials.clone(),
            auth: tokio::sync::Mutex::new(AuthState::default()),
            retry: options.retry.clone(),
            requests: AtomicU64::new(0),
        })
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
        self.requests.load(Ordering::Relaxed)
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
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.send(&Request::new(Method::GET, self.endpoint_url("/v2/"), Scopes::none())).await.map(|_| ())
    }

    /// `base` joined with an absolute path such as `/v2/x/tags/list`.
    pub fn endpoint_url(&self, path: &str) -> Url {
        let mut u = self.url.base().clone();
        u.set_path(path);
        u
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(self.retry.retries)
            .with_jitter()
    }

    /// Send a replayable request, authenticating as needed and retrying
    /// transient failures. Returns responses with a 2xx status or one of
    /// `req.also_ok`; any other status becomes [`RegistryError::Status`].
    pub async fn send(&self, req: &Request) -> Result<Response, RegistryError> {
        let cap = self.retry.max_retry_after;
        (|| self.send_authed(req))
            .retry(self.backoff())
            .when(RegistryError::is_transient)
            .adjust(move |e: &RegistryError, d| d.map(|d| e.retry_after().map(|r| r.min(cap)).unwrap_or(d)))
            .notify(|e, d| tracing::debug!(registry = %self.name, error = %e, "retrying in {d:?}"))
            .await
    }

    /// Send a request whose body is a one-shot stream: one attempt, with the
    /// cached authorization (the caller has just authenticated with the same
    /// scopes). A `401` drops the cached token and comes back retryable, so
    /// the caller can restart its whole operation.
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
        let auth = self.authorization(scopes, false).await?;
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
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.auth.lock().await.tokens.remove(&scopes.key());
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

    /// Send a request to a URL outside the registry (a blob storage
    /// redirect): no `Authorization` header, no retries.
    pub async fn send_foreign(&self, url: Url) -> Result<Response, RegistryError> {
        self.send_foreign_with(url, HeaderMap::new()).await
    }

    /// [`RegistryClient::send_foreign`] with extra (non-secret) headers, such as `Range`.
    pub async fn send_foreign_with(&self, url: Url, headers: HeaderMap) -> Result<Response, RegistryError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = self.send_download(self.upload_http.get(url.clone()).headers(headers), &Method::GET, &url).await?;
        if resp.status().is_success() || resp.status().is_redirection() {
            Ok(resp)
        } else {
            Err(self.status_error(&Method::GET, &url, resp).await)
        }
    }

    async fn send_authed(&self, req: &Request) -> Result<Response, RegistryError> {
        let auth = self.authorization(&req.scopes, false).await?;
        let resp = self.send_raw(req, auth).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return self.check_status(req, resp).await;
        }
        let header = resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let Some(challenge) = parse_challenge(header, self.url.base()) else {
            return Err(self.auth_error("401 without a usable WWW-Authenticate challenge", false));
        };
        self.auth.lock().await.challenge = Some(challenge.clone());
        let Some(auth) = self.authorization(&req.scopes, true).await? else {
            return Err(self.auth_error(
                "the registry requires credentials and none were given (use --from-creds/--to-creds, a policy's credentials, or docker login)",
                false,
            ));
        };
        let resp = self.send_raw(req, Some(auth)).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // Either way the token just sent was issued a moment ago.
            let reason = match challenge {
                Challenge::Basic => "username or password rejected".to_string(),
                Challenge::Bearer { .. } => {
                    let scope = req.scopes.key();
                    let scope = if scope.is_empty() { String::new() } else { format!(" (scope {scope})") };
                    format!(
                        "{} {} refused a freshly issued token{scope}; check the clocks and the registry's token settings",
                        req.method,
                        req.url.path()
                    )
                }
            };
            return Err(self.auth_error(&reason, false));
        }
        self.check_status(req, resp).await
    }

    async fn check_status(&self, req: &Request, resp: Response) -> Result<Response, RegistryError> {
        let status = resp.status();
        if status.is_success() || req.also_ok.contains(&status.as_u16()) {
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
        let download = is_blob_download(&req.method, &req.url);
        let http = if download { &self.upload_http } else { &self.http };
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
        if download {
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
    pub(crate) async fn status_error(&self, method: &Method, url: &Url, resp: Response) -> RegistryError {
        let status = resp.status().as_u16();
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

    fn auth_error(&self, reason: &str, retryable: bool) -> RegistryError {
        RegistryError::Auth { registry: self.name.clone(), reason: reason.to_string(), retryable }
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        use base64::Engine;
        match &self.credentials {
            Credentials::Anonymous => None,
            Credentials::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
                let mut v = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
                .ok()?;
                v.set_sensitive(true);
                Some(v)
            }
        }
    }

    /// The `Authorization` header for `scopes`, fetching a token when the
    /// registry uses bearer auth and we hold none (or `refresh` is asked).
    async fn authorization(&self, scopes: &Scopes, refresh: bool) -> Result<Option<HeaderValue>, RegistryError> {
        let mut state = self.auth.lock().await;
        let (realm, service) = match &state.challenge {
            None => return Ok(None),
            Some(Challenge::Basic) => return Ok(self.basic_header()),
            Some(Challenge::Bearer { realm, service }) => (realm.clone(), service.clone()),
        };
        let key = scopes.key();
        let now = Instant::now();
        if !refresh
            && let Some(t) = state.tokens.get(&key).filter(|t| t.valid_until > now) {
                return Ok(bearer(&t.token));
            }
        let (token, lifetime) = self.fetch_token(&realm, service.as_deref(), scopes).await?;
        // Renew a little early so a token does not expire in flight.
        let margin = (lifetime / 5).min(Duration::from_secs(10));
        let header = bearer(&token);
        state.tokens.insert(key, CachedToken { token, valid_until: now + lifetime - margin });
        Ok(header)
    }

    async fn fetch_token(
        &self,
        realm: &Url,
        service: Option<&str>,
        scopes: &Scopes,
    ) -> Result<(Secret, Duration), RegistryError> {
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes.iter() {
                q.append_pair("scope", s);
            }
        }
        let realm_name = format!("{}://{}", realm.scheme(), realm.host_str().unwrap_or_default());
        let attempt = || async {
            let mut builder = self.http.get(url.clone());
            if let Some(h) = self.basic_header() {
                builder = builder.header(header::AUTHORIZATION, h);
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let resp = builder.send().await.map_err(|e| self.transport_error(&Method::GET, &url, &e))?;
            match resp.status() {
                s if s.is_success() => {}
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let who = match self.credentials {
                        Credentials::Anonymous => "anonymous access",
                        Credentials::Basic { .. } => "the credentials",
                    };
                    return Err(self.auth_error(&format!("token service {realm_name} refused {who}"), false));
                }
                _ => return Err(self.status_error(&Method::GET, &url, resp).await),
            }
            let body = read_limited(resp, 1024 * 1024).await?;
            let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| RegistryError::Protocol {
                registry: self.name.clone(),
                message: format!("token service {realm_name} answered with something that is not a token"),
            })?;
            parsed.into_parts().ok_or_else(|| RegistryError::Protocol {
                registry: self.name.clone(),
                message: format!("token service {realm_name} answered without a token"),
            })
        };
        attempt.retry(self.backoff()).when(RegistryError::is_transient).await
    }
}

/// A blob download (`GET /v2/<name>/blobs/<digest>`), whose body is read
/// by a reader that bounds its own waits.
fn is_blob_download(method: &Method, url: &Url) -> bool {
    let path = url.path();
    method == Method::GET && path.contains("/blobs/") && !path.contains("/blobs/uploads")
}

/// The chunk size used once a registry refused a monolithic upload and no
/// size was set for it.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

/// The smallest chunk regferry sends (but the last one of a blob).
pub const MIN_CHUNK_SIZE: u64 = 256 << 10;

/// How far a streamed request body has got, for the stall watchdog of
/// [`RegistryClient::send_stream`].
#[derive(Debug)]
struct Progress {
    /// When the HTTP stack last asked for more of the body.
    last_asked: Instant,
    /// It asked and the body's own source has not delivered yet.
    waiting_on_source: bool,
    /// When the last byte was handed over.
    finished: Option<Instant>,
    /// Bytes handed over so far, and how many make the whole body (when known).
    sent: u64,
    length: Option<u64>,
}

impl Progress {
    /// Why the request counts as stalled, if it does.
    fn stalled(progress: &Mutex<Progress>, stall: Duration, commit: Duration) -> Option<String> {
        let p = progress.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match p.finished {
            Some(at) if now.duration_since(at) >= commit => Some(format!(
                "no answer within {} after the last byte was sent (commit timeout)",
                humantime::format_duration(commit)
            )),
            Some(_) => None,
            None if !p.waiting_on_source && now.duration_since(p.last_asked) >= stall => Some(format!(
                "the registry took no byte for {} (stall timeout)",
                humantime::format_duration(stall)
            )),
            None => None,
        }
    }
}

/// A request body that records its progress.
struct Watched<S> {
    inner: Pin<Box<S>>,
    progress: Arc<Mutex<Progress>>,
}

impl<S> Watched<S> {
    fn new(inner: S, length: Option<u64>) -> (Watched<S>, Arc<Mutex<Progress>>) {
        let now = Instant::now();
        let finished = (length == Some(0)).then_some(now);
        let progress = Arc::new(Mutex::new(Progress { last_asked: now, waiting_on_source: false, finished, sent: 0, length }));
        (Watched { inner: Box::pin(inner), progress: progress.clone() }, progress)
    }
}

impl<S: Stream<Item = Result<Bytes, std::io::Error>>> Stream for Watched<S> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        p.last_asked = now;
        match &polled {
            Poll::Pending => p.waiting_on_source = true,
            Poll::Ready(Some(Ok(chunk))) => {
                p.waiting_on_source = false;
                p.sent += chunk.len() as u64;
                if p.length.is_some_and(|l| p.sent >= l) {
                    p.finished.get_or_insert(now);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                p.waiting_on_source = false;
                p.finished.get_or_insert(now);
            }
        }
        polled
    }
}

fn bearer(token: &Secret) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
    v.set_sensitive(true);
    Some(v)
}

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
