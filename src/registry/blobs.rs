//! Blob requests: existence check, cross-repository mount, upload sessions
//! (monolithic streamed `PUT`) and downloads that follow storage redirects.
//!
//! This module moves bytes, it does not decide what to move: choosing
//! between skip, mount and upload is the engine's job. It never forwards the
//! registry's `Authorization` header to another host.

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::Scopes;
use super::client::{Request, RegistryClient};
use super::digest::Digest;
use super::error::RegistryError;
use super::name::RepoName;

/// What a mount request achieved.
#[derive(Debug)]
pub enum MountOutcome {
    /// `201`: the blob is now linked into the repository.
    Mounted,
    /// `202`: the registry opened an ordinary upload session instead.
    Session(Url),
}

const MAX_REDIRECTS: usize = 5;

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

impl RegistryClient {
    fn blob_url(&self, repo: &RepoName, digest: &Digest) -> Url {
        self.endpoint_url(&format!("/v2/{repo}/blobs/{digest}"))
    }

    fn location(&self, resp: &Response, what: &str) -> Result<Url, RegistryError> {
        let loc = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            RegistryError::Protocol { registry: self.name().to_string(), message: format!("{what}: no Location header") }
        })?;
        resp.url().join(loc).map_err(|e| RegistryError::Protocol {
            registry: self.name().to_string(),
            message: format!("{what}: unusable Location header: {e}"),
        })
    }

    /// Whether `repo` holds `digest` (`HEAD`).
    pub async fn blob_exists(&self, repo: &RepoName, digest: &Digest, scopes: &Scopes) -> Result<bool, RegistryError> {
        let req = Request::new(Method::HEAD, self.blob_url(repo, digest), scopes.clone()).also_ok(&[404]);
        let resp = self.send(&req).await?;
        Ok(resp.status().is_success())
    }

    /// Ask the registry to link `digest` from `from` into `repo`.
    pub async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: &RepoName) -> Result<MountOutcome, RegistryError> {
        let mut url = self.endpoint_url(&format!("/v2/{repo}/blobs/uploads/"));
        url.query_pairs_mut().append_pair("mount", digest.as_str()).append_pair("from", &self.url().api_repository(from.as_str()));
        let req = Request::new(Method::POST, url, Scopes::push(repo).and_pull(from));
        let resp = self.send(&req).await?;
        if resp.status() == StatusCode::CREATED {
            Ok(MountOutcome::Mounted)
        } else {
            Ok(MountOutcome::Session(self.location(&resp, "mount fallback session")?))
        }
    }

    /// Open an upload session in `repo`; returns its location.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<Url, RegistryError> {
        let url = self.endpoint_url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self.send(&Request::new(Method::POST, url, Scopes::push(repo))).await?;
        self.location(&resp, "upload session")
    }

    /// Complete `session` with the whole blob in one streamed `PUT`.
    /// The body must yield exactly `size` bytes hashing to `digest`; the
    /// registry re-checks the digest before it commits anything.
    pub async fn put_upload(
        &self,
        session: Url,
        digest: &Digest,
        size: u64,
        scopes: &Scopes,
        body: reqwest::Body,
    ) -> Result<(), RegistryError> {
        let mut url = session;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        let resp = self.send_stream(Method::PUT, url, scopes, headers, body).await?;
        if let Some(reported) = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok())
            && reported.trim() != digest.as_str() {
                return Err(RegistryError::Protocol {
                    registry: self.name().to_string(),
                    message: format!("upload of {digest} was committed as {}", reported.trim()),
                });
            }
        Ok(())
    }

    /// Send the whole blob as one streamed `PATCH` of unknown length
    /// (chunked transfer encoding); returns the session's next location.
    /// For blobs whose size nobody told us.
    pub async fn patch_upload(&self, session: Url, scopes: &Scopes, body: reqwest::Body) -> Result<Url, RegistryError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        let resp = self.send_stream(Method::PATCH, session, scopes, headers, body).await?;
        self.location(&resp, "upload PATCH")
    }

    /// Commit an upload session whose bytes were all sent by `PATCH`.
    pub async fn finish_upload(&self, session: Url, digest: &Digest, scopes: &Scopes) -> Result<(), RegistryError> {
        let mut url = session;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        self.send(&Request::new(Method::PUT, url, scopes.clone())).await.map(|_| ())
    }

    /// Abandon an upload session (best effort: sessions also expire).
    pub async fn cancel_upload(&self, session: Url, scopes: &Scopes) {
        let req = Request::new(Method::DELETE, session, scopes.clone()).also_ok(&[404]);
        if let Err(e) = self.send(&req).await {
            tracing::debug!(registry = %self.name(), error = %e, "could not cancel upload session");
        }
    }

    /// Start downloading `repo@digest`. Redirects are followed; the registry's
    /// credentials are only sent to the registry itself.
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Response, RegistryError> {
        let req = Request::new(Method::GET, self.blob_url(repo, digest), Scopes::pull(repo))
            .also_ok(&[301, 302, 303, 307, 308]);
        let mut resp = self.send(&req).await?;
        let origin = self.url().base().clone();
        for _ in 0..MAX_REDIRECTS {
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let target = self.location(&resp, "blob redirect")?;
            resp = if same_origin(&target, &origin) {
                self.send(&Request::new(Method::GET, target, Scopes::pull(repo)).also_ok(&[301, 302, 303, 307, 308]))
                    .await?
            } else {
                self.send_foreign(target).await?
            };
        }
        Err(RegistryError::Protocol {
            registry: self.name().to_string(),
            message: format!("GET blob {digest}: more than {MAX_REDIRECTS} redirects"),
        })
    }
}
