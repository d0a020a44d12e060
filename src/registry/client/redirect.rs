//! Following redirects on `GET` and `HEAD`, for every registry endpoint
//! (ping, catalog, tags, manifests, blobs): `301/302/303/307/308`, at most
//! [`MAX_HOPS`] of them, each `Location` resolved against the URL that
//! answered it.
//!
//! A hop on the registry's own origin (scheme, host, port) goes through the
//! ordinary authenticated path. A hop anywhere else (object storage, the
//! backing registry of a redirecting front) never carries the registry's
//! `Authorization`: it is sent bare, and if that origin challenges (`401`
//! with a bearer `WWW-Authenticate`), it gets an anonymous token of its own
//! from its own token service, cached per origin. The registry's
//! credentials never go to another origin or to its token service.
//!
//! This module never follows a redirect of a `PUT`, `POST`, `PATCH` or
//! `DELETE` (those keep answering their `3xx` to the caller, which treats it
//! as an error), and never puts a URL's query (presigned signatures) into a
//! message or a log.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::{RegistryClient, Request, read_limited};
use crate::registry::auth::{Challenge, Scopes, TokenResponse, parse_challenge};
use crate::registry::endpoint::Secret;
use crate::registry::error::RegistryError;
use crate::registry::name::RepoName;

/// The most redirects one request follows.
pub(crate) const MAX_HOPS: usize = 8;

/// Authentication state of the other origins redirects led to, keyed by
/// origin (`scheme://host:port`): their own challenges and token caches.
#[derive(Default)]
pub(super) struct ForeignOrigins {
    origins: tokio::sync::Mutex<HashMap<String, OriginAuth>>,
}

/// One foreign origin's bearer challenge (realm, service) and its tokens
/// by scope set, each with the instant it stops being used.
#[derive(Default)]
struct OriginAuth {
    bearer: Option<(Url, Option<String>)>,
    tokens: HashMap<String, (Secret, Instant)>,
}

fn bearer_header(token: &Secret) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The statuses that are followed.
pub(super) fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Whether requests with `method` are followed at all.
pub(super) fn followable(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// Same scheme, host and port.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// The pull scope a registry API path needs on a foreign origin (which
/// may call the repository by another name than the registry we asked).
fn scopes_for(url: &Url) -> Scopes {
    let Some(rest) = url.path().strip_prefix("/v2/") else { return Scopes::none() };
    if rest.starts_with("_catalog") {
        return Scopes::catalog();
    }
    for marker in ["/manifests/", "/blobs/", "/tags/", "/referrers/"] {
        if let Some(i) = rest.rfind(marker)
            && let Ok(repo) = rest[..i].parse::<RepoName>()
        {
            return Scopes::pull(&repo);
        }
    }
    Scopes::none()
}

impl RegistryClient {
    /// One attempt at `req`, following redirects when it is a `GET` or a
    /// `HEAD`. Errors come back unretried; [`RegistryClient::send`] decides.
    pub(super) async fn send_following(&self, req: &Request) -> Result<Response, RegistryError> {
        if !followable(&req.method) {
            return self.send_authed(req).await;
        }
        let mut resp = self.send_hop(req).await?;
        let mut hops = 0;
        loop {
            let status = resp.status();
            if !is_redirect(status) || req.also_ok.contains(&status.as_u16()) {
                return Ok(resp);
            }
            if hops == MAX_HOPS {
                return Err(RegistryError::Protocol {
                    registry: self.name.clone(),
                    message: format!("{} {}: more than {MAX_HOPS} redirects", req.method, req.url.path()),
                });
            }
            hops += 1;
            let target = self.redirect_target(&resp)?;
            // 303 means "see other": a GET (a HEAD stays a HEAD).
            let method = if status == StatusCode::SEE_OTHER { Method::GET } else { req.method.clone() };
            let method = if req.method == Method::HEAD { Method::HEAD } else { method };
            tracing::debug!(
                registry = %self.name, from = resp.url().path(), to = %target.origin().ascii_serialization(),
                status = status.as_u16(), "following redirect"
            );
            let next = Request {
                method,
                url: target,
                scopes: req.scopes.clone(),
                headers: req.headers.clone(),
                body: None,
                also_ok: req.also_ok,
            };
            resp = self.send_hop(&next).await?;
        }
    }

    /// Send one hop: authenticated on the registry's own origin, bare (or
    /// with that origin's own token) anywhere else.
    async fn send_hop(&self, req: &Request) -> Result<Response, RegistryError> {
        if same_origin(&req.url, self.url.base()) {
            self.send_authed(req).await
        } else {
            self.send_elsewhere(req).await
        }
    }

    /// `Location` of a redirect, resolved against the URL that answered.
    fn redirect_target(&self, resp: &Response) -> Result<Url, RegistryError> {
        let protocol = |message: String| RegistryError::Protocol { registry: self.name.clone(), message };
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| protocol(format!("{} redirect from {} without a Location", resp.status().as_u16(), resp.url().path())))?;
        let target = resp.url().join(loc).map_err(|e| protocol(format!("redirect from {}: unusable Location: {e}", resp.url().path())))?;
        if !matches!(target.scheme(), "http" | "https") {
            return Err(protocol(format!("redirect from {} to a {} URL", resp.url().path(), target.scheme())));
        }
        Ok(target)
    }

    /// A request to another origin: never the registry's `Authorization`;
    /// a bearer challenge there is answered with an anonymous token of
    /// that origin's own token service.
    async fn send_elsewhere(&self, req: &Request) -> Result<Response, RegistryError> {
        let origin = req.url.origin().ascii_serialization();
        let scopes = scopes_for(&req.url);
        let auth = self.foreign_authorization(&origin, &scopes, false).await?;
        let resp = self.send_raw(req, auth.clone()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return self.foreign_status(req, resp).await;
        }
        let value = resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let refused = |reason: String| RegistryError::Auth { registry: self.name.clone(), reason, retryable: false };
        match parse_challenge(value, &req.url) {
            Some(Challenge::Bearer { realm, service, .. }) => {
                self.foreign.origins.lock().await.entry(origin.clone()).or_default().bearer = Some((realm, service));
            }
            Some(Challenge::Basic) => {
                return Err(refused(format!(
                    "{} {} was redirected to {origin}, which asks for a password; regferry sends this registry's \
                     credentials to no other host (point regferry at {origin} directly to use credentials there)",
                    req.method,
                    req.url.path()
                )));
            }
            None => return Err(refused(format!("redirect target {origin} answered 401 without a usable challenge"))),
        }
        // Another task may have fetched a token meanwhile: a fresh one only
        // if the one just sent was refused.
        let auth = self.foreign_authorization(&origin, &scopes, auth.is_some()).await?;
        let resp = self.send_raw(req, auth).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(refused(format!(
                "redirect target {origin} refused its own anonymous token for {} {}",
                req.method,
                req.url.path()
            )));
        }
        self.foreign_status(req, resp).await
    }

    async fn foreign_status(&self, req: &Request, resp: Response) -> Result<Response, RegistryError> {
        let status = resp.status();
        if status.is_success() || is_redirect(status) || req.also_ok.contains(&status.as_u16()) {
            return Ok(resp);
        }
        Err(self.status_error(&req.method, &req.url, resp).await)
    }

    /// The `Authorization` for `origin` (never one of the registry's own).
    async fn foreign_authorization(
        &self,
        origin: &str,
        scopes: &Scopes,
        refresh: bool,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let mut origins = self.foreign.origins.lock().await;
        let state = origins.entry(origin.to_string()).or_default();
        let Some((realm, service)) = state.bearer.clone() else { return Ok(None) };
        let key = scopes.key();
        let now = Instant::now();
        if !refresh
            && let Some((token, _)) = state.tokens.get(&key).filter(|(_, until)| *until > now)
        {
            return Ok(bearer_header(token));
        }
        let (token, lifetime) = self.anonymous_token(origin, &realm, service.as_deref(), scopes).await?;
        // Renew a little early so a token does not expire in flight.
        let margin = (lifetime / 5).min(Duration::from_secs(10));
        let header = bearer_header(&token);
        state.tokens.insert(key, (token, now + lifetime - margin));
        Ok(header)
    }

    /// Ask a foreign origin's token service for an anonymous token.
    async fn anonymous_token(
        &self,
        origin: &str,
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
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = self.http.get(url.clone()).send().await.map_err(|e| self.transport_error(&Method::GET, &url, &e))?;
        let refused = |reason: String| RegistryError::Auth { registry: self.name.clone(), reason, retryable: false };
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(refused(format!(
                    "redirect target {origin} wants credentials of its own (its token service refused anonymous access); \
                     regferry sends this registry's credentials to no other host"
                )));
            }
            _ => return Err(self.status_error(&Method::GET, &url, resp).await),
        }
        let body = read_limited(resp, 1024 * 1024).await?;
        let not_a_token = || RegistryError::Protocol {
            registry: self.name.clone(),
            message: format!("the token service of redirect target {origin} answered without a token"),
        };
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| not_a_token())?;
        parsed.into_parts().ok_or_else(not_a_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_path_of_the_target() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(scopes_for(&u("http://b/v2/images/pause/manifests/3.9")).key(), "repository:images/pause:pull");
        assert_eq!(scopes_for(&u("http://b/v2/a/blobs/sha256:00")).key(), "repository:a:pull");
        assert_eq!(scopes_for(&u("http://b/v2/a/tags/list?n=10")).key(), "repository:a:pull");
        assert_eq!(scopes_for(&u("http://b/v2/_catalog?n=10")).key(), "registry:catalog:*");
        assert_eq!(scopes_for(&u("http://b/v2/")).key(), "");
        assert_eq!(scopes_for(&u("http://s3/bucket/docker/registry/v2/blobs/sha256/aa/data?X-Amz=1")).key(), "");
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(same_origin(&u("https://r.example/v2/"), &u("https://r.example:443/x")));
        assert!(!same_origin(&u("https://r.example/v2/"), &u("http://r.example/v2/")));
        assert!(!same_origin(&u("http://127.0.0.1:5000/"), &u("http://127.0.0.1:5001/")));
        assert!(is_redirect(StatusCode::TEMPORARY_REDIRECT) && !is_redirect(StatusCode::NOT_MODIFIED));
    }
}
