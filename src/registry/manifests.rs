//! Manifest requests: `HEAD` (digest and media type without the body),
//! `GET` (exact bytes, verified) and `PUT` (exact bytes, exact media type).
//!
//! A registry (or a front before it) that refuses `HEAD` on manifests
//! (`400`/`405`/`501`, or `404` for a tag its listing returned while `GET`
//! finds it) is asked with `GET` instead, and the client remembers that for
//! the rest of its life: while that is not yet known, only one `HEAD` at a
//! time is in flight, so a refusing registry sees one refused `HEAD`.
//!
//! This module never alters manifest bytes and never trusts a
//! `Docker-Content-Digest` header over the bytes themselves.

use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::Method;

use super::auth::Scopes;
use super::client::{Request, RegistryClient, read_limited};
use super::digest::{Digest, digest_like};
use super::error::RegistryError;
use super::manifest::{ACCEPT, MAX_MANIFEST_BYTES, ManifestError, normalise_media_type};
use super::name::{Reference, RepoName};

/// What a `HEAD` tells about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
}

/// A manifest's exact bytes with what the registry said about them.
#[derive(Debug, Clone)]
pub struct ManifestBody {
    pub bytes: Bytes,
    /// The `Content-Type` the registry served, normalised (may be generic).
    pub content_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
    /// The registry's `Docker-Content-Digest`, when it disagreed with the
    /// bytes (and was therefore ignored).
    pub ignored_header: Option<String>,
}

const HEAD_UNKNOWN: u8 = 0;
const HEAD_WORKS: u8 = 1;
const HEAD_REFUSED: u8 = 2;

/// What one client learned about `HEAD` on the registry's manifests.
#[derive(Default)]
pub(crate) struct HeadProbe {
    state: AtomicU8,
    /// Held by the one `HEAD` in flight while the answer is unknown.
    probing: tokio::sync::Mutex<()>,
}

impl HeadProbe {
    fn refused(&self) -> bool {
        self.state.load(Ordering::Relaxed) == HEAD_REFUSED
    }

    /// `Some(guard)` when this caller must probe (others wait for it).
    async fn probe(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.state.load(Ordering::Relaxed) != HEAD_UNKNOWN {
            return None;
        }
        let guard = self.probing.lock().await;
        (self.state.load(Ordering::Relaxed) == HEAD_UNKNOWN).then_some(guard)
    }

    fn works(&self) {
        let _ = self.state.compare_exchange(HEAD_UNKNOWN, HEAD_WORKS, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Remember the refusal; true the first time.
    fn refuse(&self) -> bool {
        self.state.swap(HEAD_REFUSED, Ordering::Relaxed) != HEAD_REFUSED
    }
}

/// What a `HEAD` would have said, from the body a `GET` returned.
fn head_of_body(body: ManifestBody) -> ManifestHead {
    let media_type =
        super::manifest::parse(&body.bytes, &body.content_type).map(|p| p.media_type).unwrap_or(body.content_type);
    ManifestHead { digest: body.digest, media_type }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl RegistryClient {
    fn manifest_url(&self, repo: &RepoName, reference: &Reference) -> url::Url {
        self.endpoint_url(&format!("/v2/{repo}/manifests/{reference}"))
    }

    /// Whether this client has learned that the registry refuses `HEAD`
    /// on manifests (and now asks with `GET`).
    pub fn refuses_manifest_head(&self) -> bool {
        self.manifest_head.refused()
    }

    fn note_head_refused(&self, why: &str) {
        if self.manifest_head.refuse() {
            tracing::warn!(registry = %self.name(), "the registry refuses HEAD on manifests ({why}); asking with GET from now on");
        }
    }

    /// Digest and media type of `repo:reference`, or `None` when absent.
    /// Costs one `HEAD` (plus a `GET` for registries that omit the digest),
    /// or one `GET` on registries that refuse `HEAD`.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        scopes: &Scopes,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        self.head_checked(repo, reference, scopes, false).await
    }

    /// Like [`RegistryClient::head_manifest`] for a reference the registry
    /// just listed: a `HEAD` that answers `404` is confirmed with a `GET`,
    /// and when the `GET` finds it, the registry's `HEAD` is not trusted
    /// again.
    pub async fn head_listed_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        scopes: &Scopes,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        self.head_checked(repo, reference, scopes, true).await
    }

    async fn head_checked(
        &self,
        repo: &RepoName,
        reference: &Reference,
        scopes: &Scopes,
        listed: bool,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        if self.manifest_head.refused() {
            return self.head_by_get(repo, reference, scopes).await;
        }
        // While nobody knows whether HEAD works, one HEAD (and the GET
        // that confirms its answer) at a time.
        let probe = self.manifest_head.probe().await;
        if self.manifest_head.refused() {
            return self.head_by_get(repo, reference, scopes).await;
        }
        let req = Request::new(Method::HEAD, self.manifest_url(repo, reference), scopes.clone())
            .header(header::ACCEPT, ACCEPT)
            .also_ok(&[404, 400, 405, 501]);
        let resp = self.send(&req).await?;
        let status = resp.status().as_u16();
        if matches!(status, 400 | 405 | 501) {
            drop(resp);
            let by_get = self.head_by_get(repo, reference, scopes).await;
            // A GET refused the same way is a real error, not a HEAD refusal.
            if !matches!(&by_get, Err(e) if e.status() == Some(status)) {
                self.note_head_refused(&format!("HEAD answered {status}"));
            }
            drop(probe);
            return by_get;
        }
        if status == 404 {
            drop(resp);
            if listed {
                let found = self.head_by_get(repo, reference, scopes).await?;
                if found.is_some() {
                    self.note_head_refused("HEAD answered 404 for a listed tag that GET found");
                } else {
                    self.manifest_head.works();
                }
                drop(probe);
                return Ok(found);
            }
            self.manifest_head.works();
            return Ok(None);
        }
        self.manifest_head.works();
        drop(probe);
        let digest = header_str(resp.headers(), "docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
        let media_type = header_str(resp.headers(), "content-type").map(|c| normalise_media_type(&c));
        match (digest, media_type) {
            (Some(digest), Some(media_type)) if media_type != "application/json" => {
                Ok(Some(ManifestHead { digest, media_type }))
            }
            _ => {
                let body = self.get_manifest(repo, reference, scopes).await?;
                Ok(Some(head_of_body(body)))
            }
        }
    }

    /// Digest and media type from a `GET` (`None` when absent).
    async fn head_by_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
        scopes: &Scopes,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        match self.get_manifest(repo, reference, scopes).await {
            Ok(body) => Ok(Some(head_of_body(body))),
            Err(e) if e.status() == Some(404) || e.has_code("MANIFEST_UNKNOWN") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The exact bytes of `repo:reference`. A digest reference is verified
    /// against the bytes; a `Docker-Content-Digest` header that disagrees
    /// with them is reported and ignored.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        scopes: &Scopes,
    ) -> Result<ManifestBody, RegistryError> {
        let url = self.manifest_url(repo, reference);
        let req = Request::new(Method::GET, url, scopes.clone()).header(header::ACCEPT, ACCEPT);
        let too_large = |size: usize| RegistryError::Manifest {
            registry: self.name().to_string(),
            repo: repo.to_string(),
            reference: reference.to_string(),
            source: ManifestError::TooLarge(size),
        };
        let resp = self.send(&req).await?;
        if let Some(len) = resp.content_length().filter(|&l| l > MAX_MANIFEST_BYTES as u64) {
            return Err(too_large(usize::try_from(len).unwrap_or(usize::MAX)));
        }
        let content_type = header_str(resp.headers(), "content-type").map(|c| normalise_media_type(&c)).unwrap_or_default();
        let announced = header_str(resp.headers(), "docker-content-digest");
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES + 1).await?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(too_large(bytes.len()));
        }
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = digest_like(expected, &bytes);
                if &actual != expected {
                    return Err(RegistryError::DigestMismatch {
                        registry: self.name().to_string(),
                        what: format!("manifest {repo}@{expected}"),
                        expected: expected.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        let ignored_header = announced.filter(|a| a.starts_with("sha256:") && *a != digest.as_str());
        if let Some(announced) = &ignored_header {
            tracing::warn!(
                registry = %self.name(), repository = %repo, reference = %reference,
                header = %announced, actual = %digest,
                "Docker-Content-Digest disagrees with the manifest bytes; using the digest of the bytes"
            );
        }
        Ok(ManifestBody { bytes: Bytes::from(bytes), content_type, digest, ignored_header })
    }

    /// Push `bytes` as `repo:reference` with `media_type`, and check the
    /// digest the registry reports (if any) against the bytes.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        self.put_manifest_headers(repo, reference, bytes, media_type).await.map(|(digest, _)| digest)
    }

    /// [`RegistryClient::put_manifest`] with the response's headers (for
    /// `OCI-Subject`, see [`super::referrers`]).
    pub(crate) async fn put_manifest_headers(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(Digest, HeaderMap), RegistryError> {
        let digest = Digest::sha256_of(&bytes);
        let req = Request::new(Method::PUT, self.manifest_url(repo, reference), Scopes::push(repo))
            .header(header::CONTENT_TYPE, media_type)
            .body(bytes);
        let resp = self.send(&req).await?;
        if let Some(reported) = header_str(resp.headers(), "docker-content-digest")
            && let Ok(reported) = reported.parse::<Digest>()
                && reported != digest {
                    return Err(RegistryError::DigestMismatch {
                        registry: self.name().to_string(),
                        what: format!("pushed manifest {repo}:{reference}"),
                        expected: digest,
                        actual: reported,
                    });
                }
        Ok((digest, resp.headers().clone()))
    }
}
