//! Blob requests: existence check, cross-repository mount, upload sessions
//! (monolithic streamed `PUT`, or `PATCH` chunks with `Content-Range` and
//! the session's status for resuming) and downloads (whole or from an
//! offset with `Range`) that follow storage redirects.
//!
//! This module moves bytes, it does not decide what to move: choosing
//! between skip, mount and upload is the engine's job. It never forwards the
//! registry's `Authorization` header to another host.

use bytes::Bytes;
use futures::Stream;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::Scopes;
use super::client::{Request, RegistryClient, same_origin};
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

/// An open upload session.
#[derive(Debug, Clone)]
pub struct UploadSession {
    /// Where the next request of the session goes (the newest `Location`).
    pub location: Url,
    /// `OCI-Chunk-Min-Length`: the smallest chunk the registry takes.
    pub min_chunk: Option<u64>,
}

/// The end offset (exclusive) in an upload's `Range: 0-<last>` header.
/// Distribution says `0-0` both for an empty session and for one byte
/// stored; it is read as empty (regferry never sends a one-byte chunk but
/// as a whole one-byte blob, which is then simply sent again).
fn range_end(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    let (start, last) = v.split_once('-')?;
    if start.trim() != "0" {
        return None;
    }
    let last = last.trim();
    if last == "-1" || last == "0" || last.is_empty() {
        return Some(0);
    }
    last.parse::<u64>().ok().map(|l| l + 1)
}

impl RegistryClient {
    fn blob_url(&self, repo: &RepoName, digest: &Digest) -> Url {
        self.endpoint_url(&format!("/v2/{repo}/blobs/{digest}"))
    }

    fn location(&self, resp: &Response, what: &str) -> Result<Url, RegistryError> {
        let loc = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            RegistryError::Protocol { registry: self.name().to_string(), message: format!("{what}: no Location header") }
        })?;
        let url = resp.url().join(loc).map_err(|e| RegistryError::Protocol {
            registry: self.name().to_string(),
            message: format!("{what}: unusable Location header: {e}"),
        })?;
        self.check_downgrade(&url, what)?;
        Ok(url)
    }

    /// An `https://` registry's upload session must not continue over
    /// plain http (a TLS front that does not pass `X-Forwarded-Proto` makes
    /// the registry hand out `http://` locations): refused, unless the
    /// registry is marked insecure. Either way, no credentials go there
    /// (another origin, see [`super::client`]).
    fn check_downgrade(&self, url: &Url, what: &str) -> Result<(), RegistryError> {
        if self.url().base().scheme() == "https" && url.scheme() == "http" && !self.insecure() {
            let port = url.port_or_known_default().map(|p| format!(":{p}")).unwrap_or_default();
            return Err(RegistryError::Protocol {
                registry: self.name().to_string(),
                message: format!(
                    "{what}: the registry handed out a plain-http location (http://{}{port}{}) for an https registry; \
                     regferry refuses to downgrade to http (often a TLS front that does not pass X-Forwarded-Proto to \
                     the registry; fix the front, or mark the registry insecure to allow it)",
                    url.host_str().unwrap_or_default(),
                    url.path()
                ),
            });
        }
        Ok(())
    }

    /// Whether `repo` holds `digest` (`HEAD`, redirects followed).
    ///
    /// A registry on object storage answers `307` to a presigned storage
    /// URL; the `HEAD` follows it (without credentials) and the storage
    /// confirms. Storage that refuses the `HEAD` method on a URL presigned
    /// for `GET` (`400`/`403`/`405`/`501` from another origin) still means
    /// present: a registry only redirects to storage after finding the blob.
    /// A registry (or front) that refuses `HEAD` itself is asked with `GET`,
    /// whose body is not read.
    pub async fn blob_exists(&self, repo: &RepoName, digest: &Digest, scopes: &Scopes) -> Result<bool, RegistryError> {
        const REFUSED: [u16; 4] = [400, 403, 405, 501];
        let url = self.blob_url(repo, digest);
        let req = Request::new(Method::HEAD, url.clone(), scopes.clone()).also_ok(&[404, 400, 403, 405, 501]);
        let resp = self.send(&req).await?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(status.is_success());
        }
        let redirected = !same_origin(resp.url(), self.url().base());
        if redirected && REFUSED.contains(&status.as_u16()) {
            tracing::debug!(registry = %self.name(), %digest, status = status.as_u16(), "storage refused HEAD after the registry redirected: present");
            return Ok(true);
        }
        drop(resp);
        // The registry refuses HEAD (or refuses us: then the GET's error
        // body says why): ask with GET and only look at the status.
        let req = Request::new(Method::GET, url, scopes.clone()).also_ok(&[404]);
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
        Ok(self.open_upload(repo).await?.location)
    }

    /// Open an upload session in `repo`, with the registry's smallest chunk.
    pub async fn open_upload(&self, repo: &RepoName) -> Result<UploadSession, RegistryError> {
        let url = self.endpoint_url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self.send(&Request::new(Method::POST, url, Scopes::push(repo))).await?;
        let min_chunk = resp
            .headers()
            .get("oci-chunk-min-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&n| n > 0);
        Ok(UploadSession { location: self.location(&resp, "upload session")?, min_chunk })
    }

    /// Send bytes `start..start + chunk.len()` of a blob as one `PATCH` of
    /// `session`. Returns the session's next location and how many bytes
    /// the registry says it holds (when it says).
    pub async fn patch_chunk(
        &self,
        session: Url,
        scopes: &Scopes,
        start: u64,
        chunk: Bytes,
    ) -> Result<(Url, Option<u64>), RegistryError> {
        let len = chunk.len() as u64;
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Ok(v) = HeaderValue::from_str(&format!("{start}-{}", (start + len).saturating_sub(1))) {
            headers.insert(header::CONTENT_RANGE, v);
        }
        let body = futures::stream::iter([Ok::<_, std::io::Error>(chunk)]);
        let resp = self.send_stream(Method::PATCH, session, scopes, headers, body).await?;
        Ok((self.location(&resp, "upload PATCH")?, range_end(resp.headers())))
    }

    /// Ask an upload session how many bytes the registry holds (`GET` →
    /// `204` with `Range: 0-<last>`). Returns the session's location (a new
    /// one when the registry gives it) and that count.
    pub async fn upload_status(&self, session: Url, scopes: &Scopes) -> Result<(Url, u64), RegistryError> {
        let resp = self.send(&Request::new(Method::GET, session.clone(), scopes.clone())).await?;
        let location = if resp.headers().contains_key(header::LOCATION) { self.location(&resp, "upload status")? } else { session };
        let Some(end) = range_end(resp.headers()) else {
            return Err(RegistryError::Protocol {
                registry: self.name().to_string(),
                message: "upload status: no usable Range header".into(),
            });
        };
        Ok((location, end))
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
        body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<(), RegistryError> {
        let mut url = session;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        let resp = self.send_stream(Method::PUT, url, scopes, headers, body).await?;
        self.committed_as(&resp, digest)
    }

    /// A committed upload's `Docker-Content-Digest`, when the registry
    /// gives one, must be the digest it was committed under.
    fn committed_as(&self, resp: &Response, digest: &Digest) -> Result<(), RegistryError> {
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
    pub async fn patch_upload(
        &self,
        session: Url,
        scopes: &Scopes,
        body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<Url, RegistryError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        let resp = self.send_stream(Method::PATCH, session, scopes, headers, body).await?;
        self.location(&resp, "upload PATCH")
    }

    /// Commit an upload session whose bytes were all sent by `PATCH`. The
    /// registry may take a while (it verifies and moves the blob): this
    /// waits up to the commit timeout, not the stall timeout.
    pub async fn finish_upload(&self, session: Url, digest: &Digest, scopes: &Scopes) -> Result<(), RegistryError> {
        let mut url = session;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
        let resp = self.send_stream(Method::PUT, url, scopes, headers, futures::stream::empty::<Result<Bytes, std::io::Error>>()).await?;
        self.committed_as(&resp, digest)
    }

    /// Abandon an upload session (best effort: sessions also expire).
    pub async fn cancel_upload(&self, session: Url, scopes: &Scopes) {
        let req = Request::new(Method::DELETE, session, scopes.clone()).also_ok(&[404]);
        if let Err(e) = self.send(&req).await {
            tracing::debug!(registry = %self.name(), error = %e, "could not cancel upload session");
        }
    }

    /// Start downloading `repo@digest`. Redirects are followed (see
    /// [`super::client`]); the registry's credentials are only sent to the
    /// registry itself.
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Response, RegistryError> {
        self.get_blob_with(repo, digest, HeaderMap::new()).await
    }

    /// Download `repo@digest` from byte `offset` on (`Range: bytes=N-`).
    /// The answer may be `206` (the rest) or `200` (a registry that ignores
    /// `Range`: the whole blob); the caller checks which.
    pub async fn get_blob_from(&self, repo: &RepoName, digest: &Digest, offset: u64) -> Result<Response, RegistryError> {
        let mut headers = HeaderMap::new();
        if offset > 0
            && let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-"))
        {
            headers.insert(header::RANGE, v);
        }
        self.get_blob_with(repo, digest, headers).await
    }

    async fn get_blob_with(&self, repo: &RepoName, digest: &Digest, headers: HeaderMap) -> Result<Response, RegistryError> {
        let mut req = Request::new(Method::GET, self.blob_url(repo, digest), Scopes::pull(repo));
        req.headers = headers;
        self.send(&req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn upload_ranges() {
        assert_eq!(range_end(&with_range("0-1048575")), Some(1 << 20));
        assert_eq!(range_end(&with_range("bytes=0-9")), Some(10));
        assert_eq!(range_end(&with_range("0--1")), Some(0));
        assert_eq!(range_end(&with_range("0-0")), Some(0));
        assert_eq!(range_end(&with_range("5-9")), None);
        assert_eq!(range_end(&with_range("junk")), None);
        assert_eq!(range_end(&HeaderMap::new()), None);
    }
}
