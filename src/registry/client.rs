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

mod redirect;
pub(crate) use redirect::same_origin;

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::Scopes;
use super::authn::Authenticator;
use super::endpoint::{Endpoint, RegistryUrl};
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
    authn: Authenticator,
    retry: RetryConfig,
    requests: AtomicU64,
    /// Auth state of the other origins redirects led to.
    foreign: redirect::ForeignOrigins,
    /// Whether the registry answers `HEAD` on manifests.
    pub(super) manifest_head: super::manifests::HeadProbe,
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
        builder = endpoint.configure_transport(builder).map_err(|message| RegistryError::Protocol { registry: name.clone(), message })?;
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
            authn: Authenticator::new(endpoint, &name, http.clone(), options.retry.clone()),
            http,
            url: endpoint.url.clone(),
            retry: options.retry.clone(),
            requests: AtomicU64::new(0),
            foreign: Default::default(),
            manifest_head: Default::default(),
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
        self.requests.load(Ordering::Relaxed) + self.authn.request_count()
    }

    /// Check that the registry answers `/v2/` and accepts our credentials.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.send(&Request::new(Method::GET, self.endpoint_url("/v2/"), Scopes::none())).await.map(|_| ())
    }

    /// `base` joined with an absolute path such as `/v2/x/tags/list`.
    pub fn endpoint_url(&self, path: &str) -> Url {
        let mut u = self.url.base().clone();
        u.set_path(&self.url.api_path(path));
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
            let result = self.send_following(req).await;
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
            self.authn.forget(scopes).await;
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

    /// The `Authorization` header for `scopes` (see [`Authenticator`]).
    async fn authorization(&self, scopes: &Scopes, _refresh: bool) -> Result<Option<HeaderValue>, RegistryError> {
        self.authn.authorization(scopes).await
    }
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
