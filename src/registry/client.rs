//! The HTTP client for one registry: connection pool, authentication
//! (anonymous, basic, bearer tokens per scope set, cached and refreshed) and
//! retries with backoff that honour `Retry-After`.
//!
//! Every request to a registry goes through [`RegistryClient::send`] (or
//! [`RegistryClient::send_stream`] for bodies that cannot be replayed). This
//! module never follows a redirect on its own, never logs a header value and
//! never puts a query string into an error.

use std::collections::HashMap;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::{Challenge, Scopes, TokenResponse, parse_challenge};
use super::endpoint::{Credentials, Endpoint, RegistryUrl, Secret};
use super::error::{RegistryError, parse_error_body};
use super::gate::{Gate, Ticket, Verdict};

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
    /// A request fails when no byte arrives for this long (not a deadline on
    /// the whole request: multi-GiB layers take as long as they take).
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_idle_per_host: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry: RetryConfig::default(),
            stall_timeout: Duration::from_secs(60),
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
    http: reqwest::Client,
    url: RegistryUrl,
    name: String,
    credentials: Credentials,
    auth: tokio::sync::Mutex<AuthState>,
    retry: RetryConfig,
    requests: AtomicU64,
    /// Shared by every task on this registry: pauses, rates, breaker.
    gate: Gate,
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
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("regferry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.stall_timeout)
            .pool_max_idle_per_host(options.max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(50))
            .tcp_nodelay(true);
        if endpoint.tls.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &endpoint.tls.ca_file {
            let protocol = |message: String| RegistryError::Protocol { registry: name.clone(), message };
            let pem = std::fs::read(ca).map_err(|e| protocol(format!("cannot read CA bundle {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| protocol(format!("CA bundle {} is not PEM: {e}", ca.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| RegistryError::Protocol { registry: name.clone(), message: format!("HTTP client: {}", describe(&e)) })?;
        Ok(RegistryClient {
            http,
            url: endpoint.url.clone(),
            credentials: endpoint.credentials.clone(),
            auth: tokio::sync::Mutex::new(AuthState::default()),
            retry: options.retry.clone(),
            requests: AtomicU64::new(0),
            gate: Gate::new(name.clone(), &endpoint.limits),
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

    /// Report a request's outcome to the gate, and run the `/v2/` probe
    /// the breaker asks for.
    async fn observe(&self, ticket: Ticket<'_>, method: &Method, url: &Url, result: &Result<Response, RegistryError>) {
        let (headers, error) = match result {
            Ok(r) => (Some(r.headers()), None),
            Err(e) => (None, Some(e)),
        };
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
        self.requests.load(Ordering::Relaxed)
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
    ///
    /// Every attempt passes the registry's [`Gate`] first. A transient
    /// failure that used up the retries comes back as
    /// [`RegistryError::Exhausted`], which callers do not retry again.
    pub async fn send(&self, req: &Request) -> Result<Response, RegistryError> {
        let cap = self.retry.max_retry_after;
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let attempt = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            let ticket = self.gate.admit(req.method.as_str()).await?;
            let result = self.send_authed(req).await;
            self.observe(ticket, &req.method, &req.url, &result).await;
            result
        };
        let result = attempt
            .retry(self.backoff())
            .when(RegistryError::is_transient)
            .adjust(move |e: &RegistryError, d| d.map(|d| e.retry_after().map(|r| r.min(cap)).unwrap_or(d)))
            .notify(|e, d| tracing::debug!(registry = %self.name, error = %e, "retrying in {d:?}"))
            .await;
        // An upload session the registry lost is restarted by the caller, not given up.
        result.map_err(|e| match e {
            e if e.is_transient() && !e.has_code("BLOB_UPLOAD_UNKNOWN") => {
                RegistryError::Exhausted { attempts: attempts.load(Ordering::Relaxed), source: Box::new(e) }
            }
            e => e,
        })
    }

    /// Send a request whose body is a one-shot stream: one attempt, with the
    /// cached authorization (the caller has just authenticated with the same
    /// scopes). A `401` drops the cached token and comes back retryable, so
    /// the caller can restart its whole operation. The request passes the
    /// registry's [`Gate`] first.
    pub async fn send_stream(
        &self,
        method: Method,
        url: Url,
        scopes: &Scopes,
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<Response, RegistryError> {
        let ticket = self.gate.admit(method.as_str()).await?;
        let result = self.send_stream_once(method.clone(), url.clone(), scopes, headers, body).await;
        self.observe(ticket, &method, &url, &result).await;
        result
    }

    async fn send_stream_once(
        &self,
        method: Method,
        url: Url,
        scopes: &Scopes,
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<Response, RegistryError> {
        let auth = self.authorization(scopes, false).await?;
        let mut builder = self.http.request(method.clone(), url.clone()).headers(headers).body(body);
        if let Some(a) = auth {
            builder = builder.header(header::AUTHORIZATION, a);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = builder.send().await.map_err(|e| self.transport_error(&method, &url, &e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.auth.lock().await.tokens.remove(&scopes.key());
            return Err(RegistryError::Auth {
                registry: self.name.clone(),
                reason: format!("{method} {} was refused with 401 (token expired?)", url.path()),
                retryable: true,
            });
        }
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.status_error(&method, &url, resp).await)
        }
    }

    /// Send a request to a URL outside the registry (a blob storage
    /// redirect): no `Authorization` header, no retries.
    pub async fn send_foreign(&self, url: Url) -> Result<Response, RegistryError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = self.http.get(url.clone()).send().await.map_err(|e| self.transport_error(&Method::GET, &url, &e))?;
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
        let mut builder = self.http.request(req.method.clone(), req.url.clone()).headers(req.headers.clone());
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
        builder.send().await.map_err(|e| self.transport_error(&req.method, &req.url, &e))
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
    /// bounded amount of) its body for the registry's error codes.
    pub(crate) async fn status_error(&self, method: &Method, url: &Url, resp: Response) -> RegistryError {
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers(), self.retry.max_retry_after);
        let body = read_limited(resp, 64 * 1024).await.unwrap_or_default();
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
