//! The registry scheme: [`Scheme`] over the registry client in
//! [`crate::registry`], verb for verb. Thin on purpose: the transport
//! (auth, retries, gates, `HEAD` probing, uploads) stays in
//! `crate::registry`; what is here only adapts signatures, plus [`blob`], the
//! resumable download the engine reads source blobs through.
//!
//! This module must never decide what to copy and never change what the
//! client sends.

pub mod blob;

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::Method;

use super::{ByteStream, Scheme, UploadStream};
use crate::registry::client::Request;
use crate::registry::gate::Pacer;
use crate::registry::referrers::ApiAnswer;
use crate::registry::{Digest, ManifestBody, ManifestHead, Reference, RegistryClient, RegistryError, RegistryUrl, RepoName, Scopes};

impl Scheme for RegistryClient {
    fn name(&self) -> &str {
        RegistryClient::name(self)
    }
    fn url(&self) -> &RegistryUrl {
        RegistryClient::url(self)
    }
    fn request_count(&self) -> u64 {
        RegistryClient::request_count(self)
    }
    fn halted(&self, writes: bool) -> Option<RegistryError> {
        self.gate().halted(writes)
    }
    fn quota_resets_in(&self) -> Option<std::time::Duration> {
        self.gate().quota_resets_in()
    }
    fn bandwidth(&self) -> Option<Arc<Pacer>> {
        self.gate().bandwidth()
    }
    fn registry(&self) -> Option<&RegistryClient> {
        Some(self)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), RegistryError>> {
        RegistryClient::ping(self).boxed()
    }
    fn catalog(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        RegistryClient::catalog(self).boxed()
    }
    fn tags<'a>(&'a self, repo: &'a RepoName) -> BoxFuture<'a, Result<Vec<String>, RegistryError>> {
        RegistryClient::tags(self, repo).boxed()
    }
    fn tags_with<'a>(&'a self, repo: &'a RepoName, scopes: Scopes) -> BoxFuture<'a, Result<Vec<String>, RegistryError>> {
        RegistryClient::tags_with(self, repo, scopes).boxed()
    }

    fn head_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<Option<ManifestHead>, RegistryError>> {
        RegistryClient::head_manifest(self, repo, reference, scopes).boxed()
    }
    fn head_listed_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<Option<ManifestHead>, RegistryError>> {
        RegistryClient::head_listed_manifest(self, repo, reference, scopes).boxed()
    }
    fn get_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<ManifestBody, RegistryError>> {
        RegistryClient::get_manifest(self, repo, reference, scopes).boxed()
    }
    fn put_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, bytes: Bytes, media_type: &'a str)
    -> BoxFuture<'a, Result<Digest, RegistryError>> {
        RegistryClient::put_manifest(self, repo, reference, bytes, media_type).boxed()
    }
    /// `DELETE /v2/<repo>/manifests/<digest>`; a manifest already gone is
    /// fine. A deletion the registry only accepted (`202`: Pulp deletes by
    /// digest in a task worker, later) is done when a `HEAD` says `404`:
    /// asked after 0, 0.25, 0.5 … s for up to 10 s, then an error (never
    /// reported as deleted while it is still served).
    fn delete_manifest<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest) -> BoxFuture<'a, Result<(), RegistryError>> {
        async move {
            let url = self.endpoint_url(&format!("/v2/{repo}/manifests/{digest}"));
            let req = Request::new(Method::DELETE, url, Scopes::delete(repo)).also_ok(&[404]);
            let resp = self.send(&req).await?;
            if resp.status() != reqwest::StatusCode::ACCEPTED {
                return Ok(());
            }
            drop(resp);
            let reference = Reference::Digest(digest.clone());
            let started = std::time::Instant::now();
            let mut pause = std::time::Duration::from_millis(250);
            loop {
                if RegistryClient::head_manifest(self, repo, &reference, &Scopes::pull(repo)).await?.is_none() {
                    return Ok(());
                }
                if started.elapsed() + pause > std::time::Duration::from_secs(10) {
                    return Err(RegistryError::Protocol {
                        registry: self.name().to_string(),
                        message: format!(
                            "DELETE /v2/{repo}/manifests/{digest} was accepted (202) but the manifest is still served after \
                             {}s (deleted later by a worker?); not counted as deleted",
                            started.elapsed().as_secs()
                        ),
                    });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
        }
        .boxed()
    }

    /// `DELETE /v2/<repo>/manifests/<tag>` (OCI 1.1): `Ok(false)` when the
    /// registry answers that it cannot (distribution 2.8 and others refuse a
    /// tag there); a tag already gone is refused the same way, so nothing is
    /// assumed deleted that was not.
    fn delete_tag<'a>(&'a self, repo: &'a RepoName, tag: &'a crate::registry::Tag) -> BoxFuture<'a, Result<bool, RegistryError>> {
        async move {
            let url = self.endpoint_url(&format!("/v2/{repo}/manifests/{tag}"));
            let req = Request::new(Method::DELETE, url, Scopes::delete(repo));
            match self.send(&req).await {
                Ok(_) => Ok(true),
                Err(e) if tag_delete_refused(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
        .boxed()
    }

    /// The registry's referrers API is not asked here yet: the caller
    /// falls back to the `sha256-<hex>` tag (the referrers work plugs the
    /// `/v2/<name>/referrers/<digest>` request in at this verb).
    fn put_manifest_indexed<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, bytes: Bytes, media_type: &'a str)
    -> BoxFuture<'a, Result<(Digest, Option<Digest>), RegistryError>> {
        RegistryClient::put_manifest_indexed(self, repo, reference, bytes, media_type).boxed()
    }

    fn referrers<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, artifact_type: Option<&'a str>)
    -> BoxFuture<'a, Result<ApiAnswer, RegistryError>> {
        RegistryClient::referrers(self, repo, digest, artifact_type).boxed()
    }

    fn blob_exists<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, scopes: &'a Scopes) -> BoxFuture<'a, Result<bool, RegistryError>> {
        RegistryClient::blob_exists(self, repo, digest, scopes).boxed()
    }
    fn open_blob(self: Arc<Self>, repo: &RepoName, digest: &Digest, expected: Option<u64>)
    -> BoxFuture<'static, Result<(ByteStream, Option<u64>), RegistryError>> {
        let (repo, digest) = (repo.clone(), digest.clone());
        async move { blob::open(self, &repo, &digest, expected).await }.boxed()
    }
    /// One streamed upload (`PUT` when the size is known, else `PATCH` +
    /// `PUT`). The engine uses the registry's own capabilities (mounts,
    /// chunks) instead; this is the plain verb.
    fn put_blob<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, size: Option<u64>, body: UploadStream)
    -> BoxFuture<'a, Result<(), RegistryError>> {
        async move {
            let scopes = Scopes::push(repo);
            let session = self.start_upload(repo).await?;
            let result = match size {
                Some(size) => self.put_upload(session.clone(), digest, size, &scopes, body).await,
                None => match self.patch_upload(session.clone(), &scopes, body).await {
                    Ok(next) => self.finish_upload(next, digest, &scopes).await,
                    Err(e) => Err(e),
                },
            };
            if result.is_err() {
                self.cancel_upload(session, &scopes).await;
            }
            result
        }
        .boxed()
    }
}

/// Whether a registry's answer to `DELETE /v2/<name>/manifests/<tag>` says it
/// cannot delete a tag alone: distribution 2.8 answers `400 DIGEST_INVALID`
/// (it reads the tag as a digest), others `405` or `UNSUPPORTED`; a `404`
/// (no such tag, or no such route) deleted nothing either.
pub fn tag_delete_refused(e: &RegistryError) -> bool {
    matches!(e.status(), Some(400 | 404 | 405)) || ["UNSUPPORTED", "DIGEST_INVALID", "MANIFEST_UNKNOWN", "TAG_INVALID"].iter().any(|c| e.has_code(c))
}

#[cfg(test)]
mod delete_tag_tests {
    use super::*;
    use crate::registry::error::ApiError;

    fn answer(status: u16, code: &str) -> RegistryError {
        let errors = if code.is_empty() { Vec::new() } else { vec![ApiError { code: code.into(), message: String::new(), detail: None }] };
        RegistryError::Status { registry: "r".into(), method: "DELETE".into(), path: "/v2/a/manifests/t".into(), status, errors, retry_after: None }
    }

    #[test]
    fn a_registry_that_cannot_delete_a_tag_alone_is_told_apart_from_a_failure() {
        // docker-registry 2.8's own answer, seen against the real process.
        assert!(tag_delete_refused(&answer(400, "DIGEST_INVALID")));
        assert!(tag_delete_refused(&answer(405, "UNSUPPORTED")));
        assert!(tag_delete_refused(&answer(405, "")));
        assert!(tag_delete_refused(&answer(404, "MANIFEST_UNKNOWN")));
        assert!(!tag_delete_refused(&answer(403, "DENIED")), "a refusal of the credentials is an error, not a capability");
        assert!(!tag_delete_refused(&answer(500, "")));
        assert!(!tag_delete_refused(&answer(401, "UNAUTHORIZED")));
    }
}
