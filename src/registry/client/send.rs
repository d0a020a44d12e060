//! Sending requests to a registry. [`RegistryClient::send`] takes a
//! replayable request through the registry's gate, authentication rounds,
//! redirects (left to [`super::redirect`]) and retries with backoff that
//! honour `Retry-After`, with the quota probe before a first pull;
//! [`RegistryClient::send_stream`] sends a one-shot body once, watched for
//! stalls (see [`super::progress`]). Each answer is observed: reported to
//! the gate and the usage counters, and an error answer becomes
//! [`RegistryError::Status`] with the registry's error codes.
//!
//! This module never logs a header value and never puts a query string
//! into an error: messages and logs name the request's path only.

use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::Retryable;
use bytes::Bytes;
use futures::Stream;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::progress::{Progress, Watched};
use super::{RegistryClient, Request, describe, read_limited, redirect, same_origin};
use crate::registry::auth::Scopes;
use crate::registry::error::{RegistryError, parse_error_body};
use crate::registry::gate::{Ticket, Verdict};
use crate::registry::usage;
// Named in the documentation only.
#[cfg(doc)]
use crate::registry::{authn::Authenticator, gate::Gate};

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

    /// Send a replayable request, authenticating as needed and retrying
    /// transient failures. Returns responses with a 2xx status or one of
    /// `req.also_ok`; any other status becomes [`RegistryError::Status`].
    ///
    /// Every attempt passes the registry's [`Gate`] first. A transient
    /// failure that used up the retries comes back as
    /// [`RegistryError::Exhausted`], which callers do not retry again.
    pub async fn send(&self, req: &Request) -> Result<Response, RegistryError> {
        if usage::Kind::of(req.method.as_str(), req.url.path()) == usage::Kind::ManifestGet && !self.gate.quota_known() {
            self.probe_quota(req).await;
        }
        let cap = self.retry.max_retry_after;
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let attempt = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            // A pull is not sent while the registry's quota is at its reserve.
            if usage::Kind::of(req.method.as_str(), req.url.path()) == usage::Kind::ManifestGet
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

    pub(super) async fn send_authed(&self, req: &Request) -> Result<Response, RegistryError> {
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
        // On a manifest that GET is a pull where pulls are counted: it is
        // counted in the usage like any other, and not sent at all once the
        // registry's quota refuses pulls (the HEAD's status is reason enough).
        let transient = matches!(status.as_u16(), 408 | 425 | 429);
        let pull = req.url.path().contains("/manifests/");
        if req.method == Method::HEAD
            && status.is_client_error()
            && status != StatusCode::NOT_FOUND
            && !transient
            && !(pull && self.gate.pull_refused().is_some())
        {
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
            let started = std::time::Instant::now();
            let result = self.send_raw(&get, auth).await;
            let answered = match &result {
                Ok(r) => Some(r.status().as_u16()),
                Err(e) => e.status(),
            };
            self.usage.record(&self.name, Method::GET.as_str(), req.url.path(), answered, 0, started.elapsed());
            let resp = result?;
            if !resp.status().is_success() {
                return Err(self.status_error(&Method::HEAD, &req.url, resp).await);
            }
        }
        Err(self.status_error(&req.method, &req.url, resp).await)
    }

    pub(super) async fn send_raw(&self, req: &Request, auth: Option<HeaderValue>) -> Result<Response, RegistryError> {
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
