//! Where images live, behind one API: a registry ([`reg`], over the
//! transport in [`crate::registry`]) or an OCI image layout directory
//! ([`ocidir`], `oci:/path`). The engine, `verify` and the DR code talk to a
//! [`Scheme`] and never to a concrete store, so every command works the same
//! way with either on either side.
//!
//! The interface is an object-safe trait (`Arc<dyn Scheme>`, boxed futures)
//! rather than an enum: the verbs are the same for both stores, and a third
//! store is a new module, not a new arm in every caller. Byte streams cross
//! it boxed (`BoxStream`), so nothing is buffered. What only a registry can
//! do (cross-repository mounts, upload sessions and chunked uploads, request
//! gates and rate limits) is not part of the verbs: [`Scheme::registry`]
//! hands out the registry client when the store is one, and the engine
//! streams into [`Scheme::put_blob`] when it is not.
//!
//! This module must never decide what to copy (that is the engine's job) and
//! never reach up into the engine.

pub mod ocidir;
pub mod reg;
pub mod shared;

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::registry::gate::Pacer;
use crate::registry::referrers::ApiAnswer;
use crate::registry::{ClientOptions, Digest, Endpoint, ManifestBody, ManifestHead, Reference, RegistryClient, RegistryError, RegistryUrl, RepoName, Scopes};

/// A blob's bytes as they arrive (errors as messages, for
/// [`crate::engine::verify_stream::VerifiedStream`]).
pub type ByteStream = BoxStream<'static, Result<Bytes, String>>;

/// Bytes going into a store.
pub type UploadStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// One place images are read from or written to. The verbs mirror the
/// distribution API's (`scopes` are what a registry asks its token service
/// for; other stores ignore them); a store without some notion (a layout has
/// no request count, no gate) answers neutrally.
pub trait Scheme: Send + Sync {
    /// How logs and errors name the store (`http://host:port`, `oci:/path`).
    fn name(&self) -> &str;
    /// Its address (a layout's is `oci:/path`, see [`RegistryUrl::parse`]).
    fn url(&self) -> &RegistryUrl;
    /// Requests sent so far (0 for a store that sends none).
    fn request_count(&self) -> u64 {
        0
    }
    /// Why no new work should start on the store (down, read-only, out of
    /// space, quota), `writes` for a store being written to.
    fn halted(&self, _writes: bool) -> Option<RegistryError> {
        None
    }
    /// How long until the quota that stopped work on the store resets.
    fn quota_resets_in(&self) -> Option<std::time::Duration> {
        None
    }
    /// The byte rate the store is limited to, if any.
    fn bandwidth(&self) -> Option<Arc<Pacer>> {
        None
    }
    /// The registry-only capabilities (mounts, upload sessions, chunked
    /// uploads): `Some` when the store is a registry.
    fn registry(&self) -> Option<&RegistryClient> {
        None
    }
    /// Until work this store started in the background for the caller is
    /// over (reads shared by a pass's destinations, see [`shared`]), so its
    /// counters are final; at once for a store that starts none.
    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Reachable, and the credentials accepted (a layout: the directory is usable).
    fn ping(&self) -> BoxFuture<'_, Result<(), RegistryError>>;
    /// Every repository.
    fn catalog(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>>;
    /// Every tag of `repo` (an absent repository: `404` / `NAME_UNKNOWN`).
    fn tags<'a>(&'a self, repo: &'a RepoName) -> BoxFuture<'a, Result<Vec<String>, RegistryError>>;
    /// [`Scheme::tags`], asking for `scopes`.
    fn tags_with<'a>(&'a self, repo: &'a RepoName, scopes: Scopes) -> BoxFuture<'a, Result<Vec<String>, RegistryError>>;

    /// Digest and media type of `repo:reference`, `None` when absent.
    fn head_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<Option<ManifestHead>, RegistryError>>;
    /// [`Scheme::head_manifest`] for a reference the store just listed.
    fn head_listed_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<Option<ManifestHead>, RegistryError>>;
    /// The exact bytes of `repo:reference` (absent: `404` / `MANIFEST_UNKNOWN`).
    fn get_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<ManifestBody, RegistryError>>;
    /// Store `bytes` as `repo:reference` with `media_type`; returns their digest.
    fn put_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, bytes: Bytes, media_type: &'a str)
    -> BoxFuture<'a, Result<Digest, RegistryError>>;
    /// Remove the manifest `digest` (and every tag pointing at it) from `repo`;
    /// one already gone is fine.
    fn delete_manifest<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest) -> BoxFuture<'a, Result<(), RegistryError>>;
    /// Remove the tag `repo:tag` alone, leaving its manifest and every other
    /// tag on it (OCI 1.1 `DELETE /v2/<name>/manifests/<tag>`). `Ok(false)`:
    /// this store cannot delete a tag alone (nothing was deleted).
    fn delete_tag<'a>(&'a self, _repo: &'a RepoName, _tag: &'a crate::registry::Tag) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async { Ok(false) })
    }

    /// Store `bytes` as [`Scheme::put_manifest`] does, also returning the
    /// subject the store says it indexed among its referrers (a registry's
    /// `OCI-Subject` answer); `None`: the caller maintains the fallback tag.
    fn put_manifest_indexed<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, bytes: Bytes, media_type: &'a str)
    -> BoxFuture<'a, Result<(Digest, Option<Digest>), RegistryError>> {
        Box::pin(async move { Ok((self.put_manifest(repo, reference, bytes, media_type).await?, None)) })
    }

    /// The referrers of `repo@digest` as the store's referrers API lists them,
    /// or [`ApiAnswer::Unsupported`] when the store has no such API: the
    /// caller then reads the fallback tag `sha256-<hex>` with the manifest
    /// verbs (which is where a layout keeps them).
    fn referrers<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, artifact_type: Option<&'a str>)
    -> BoxFuture<'a, Result<ApiAnswer, RegistryError>>;

    /// Whether `repo` holds the blob `digest`.
    fn blob_exists<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, scopes: &'a Scopes) -> BoxFuture<'a, Result<bool, RegistryError>>;
    /// [`Scheme::blob_exists`] for a blob whose size a manifest gives: a
    /// store that can tell the size of what it holds (a layout) counts a
    /// blob of another size as absent.
    fn blob_exists_sized<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, _size: Option<u64>, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<bool, RegistryError>> {
        self.blob_exists(repo, digest, scopes)
    }
    /// Start reading the blob `repo@digest`; `expected` is the size the
    /// manifest gives. Returns the bytes and the size, when known. Fails
    /// when the store knows another size than `expected`.
    fn open_blob(self: Arc<Self>, repo: &RepoName, digest: &Digest, expected: Option<u64>)
    -> BoxFuture<'static, Result<(ByteStream, Option<u64>), RegistryError>>;
    /// Make `repo` hold the blob `digest` from another repository of the
    /// same store that holds it, without its bytes crossing: true when done
    /// (a layout hard-links a blob it wrote or saw in this run; a registry's
    /// mount needs a source repository and is [`Scheme::registry`]'s).
    fn link_blob<'a>(&'a self, _repo: &'a RepoName, _digest: &'a Digest) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async { Ok(false) })
    }
    /// Store the blob `digest` in `repo` from `body` (exactly `size` bytes
    /// when known), refusing bytes that do not hash to `digest`.
    fn put_blob<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, size: Option<u64>, body: UploadStream)
    -> BoxFuture<'a, Result<(), RegistryError>>;
}

/// The store behind `endpoint`: an OCI layout for `oci:` addresses, else a
/// registry client. `role` (`source`, `destination`) names it in logs; a
/// layout that is a destination is created on first write.
pub fn connect(endpoint: &Endpoint, options: &ClientOptions, role: &str) -> Result<Arc<dyn Scheme>, RegistryError> {
    if endpoint.url.is_layout() {
        return Ok(Arc::new(ocidir::OciDir::new(&endpoint.url, role == "destination")?));
    }
    Ok(Arc::new(RegistryClient::new(endpoint, options)?.with_role(role)))
}
