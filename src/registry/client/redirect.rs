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
//! from its own token service, through an anonymous
//! [`Authenticator`] per origin. The registry's
//! credentials never go to another origin or to its token service.
//!
//! This module never follows a redirect of a `PUT`, `POST`, `PATCH` or
//! `DELETE` (those keep answering their `3xx` to the caller, which treats it
//! as an error), and never puts a URL's query (presigned signatures) into a
//! message or a log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::header;
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::{RegistryClient, Request, RetryConfig};
use crate::registry::auth::{Challenge, Scopes, read_challenges};
use crate::registry::authn::Authenticator;
use crate::registry::endpoint::{Credentials, Endpoint, RegistryUrl};
use crate::registry::error::RegistryError;
use crate::registry::name::RepoName;

/// The most redirects one request follows.
pub(crate) const MAX_HOPS: usize = 8;

/// Authentication state of the other origins redirects led to, keyed by
/// origin (`scheme://host:port`): their own challenges and token caches.
#[derive(Default)]
pub(super) struct ForeignOrigins {
    origins: Mutex<HashMap<String, Arc<Authenticator>>>,
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
            // Not followed, but still never credentials to another origin
            // (an upload session's `Location` may name one).
            return self.send_hop(req).await;
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
                download: req.download,
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
    /// that origin's own token service (its own [`Authenticator`]).
    async fn send_elsewhere(&self, req: &Request) -> Result<Response, RegistryError> {
        let origin = req.url.origin().ascii_serialization();
        let authn = self.foreign.authenticator(&origin, &req.url, &self.http, &self.retry)?;
        let scopes = scopes_for(&req.url);
        let mut auth = authn.authorization(&scopes).await?;
        let mut round = 0;
        loop {
            let resp = self.send_raw(req, auth.clone()).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return self.foreign_status(req, resp).await;
            }
            let values = resp.headers().get_all(header::WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
            if matches!(read_challenges(values, &req.url).chosen, Some(Challenge::Basic)) {
                return Err(RegistryError::Auth {
                    registry: self.name.clone(),
                    reason: format!(
                        "{} {} was redirected to {origin}, which asks for a password; regferry sends this registry's \
                         credentials to no other host (point regferry at {origin} directly to use credentials there)",
                        req.method,
                        req.url.path()
                    ),
                    retryable: false,
                });
            }
            let next = authn.unauthorized(&scopes, auth.as_ref(), resp.headers(), round, &req.method, req.url.path()).await?;
            auth = Some(next);
            round += 1;
        }
    }

    async fn foreign_status(&self, req: &Request, resp: Response) -> Result<Response, RegistryError> {
        let status = resp.status();
        if status.is_success() || is_redirect(status) || req.also_ok.contains(&status.as_u16()) {
            return Ok(resp);
        }
        Err(self.status_error(&req.method, &req.url, resp).await)
    }
}

impl ForeignOrigins {
    /// The anonymous authenticator of `origin`, made on first use.
    fn authenticator(
        &self,
        origin: &str,
        url: &Url,
        http: &reqwest::Client,
        retry: &RetryConfig,
    ) -> Result<Arc<Authenticator>, RegistryError> {
        let mut map = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = map.get(origin) {
            return Ok(a.clone());
        }
        let base = RegistryUrl::parse(&url.origin().ascii_serialization()).map_err(|e| RegistryError::Protocol {
            registry: origin.to_string(),
            message: format!("redirect target: {e}"),
        })?;
        let endpoint = Endpoint::new(base, Credentials::Anonymous);
        let authn = Arc::new(Authenticator::new(&endpoint, origin, http.clone(), retry.clone()));
        map.insert(origin.to_string(), authn.clone());
        Ok(authn)
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
