//! One read of the source for all destinations of a policy's pass (issue
//! #21 item 5). The destinations of a pass run concurrently, each with its
//! own job and source client; with two or more, each job's source is
//! wrapped in a [`SharedSource`] over one per-pass [`SourceShare`]:
//!
//! - a source manifest `GET` of `repo:reference` is sent once per pass
//!   ([`manifests`]), whichever destination asks first (a `404` is kept
//!   too; deletions never read through the share: a tag gone is proof only
//!   from a request of its own, see `pass::destination`); a `HEAD` that
//!   found the manifest likewise (one that did not is asked again);
//! - a source blob is read once per pass into the pass's spool
//!   ([`spool`]: a file per blob, written at the source's speed and
//!   followed by each destination at its own), within a disk budget;
//!   over budget, without a known size, or after a local failure (disk
//!   full) a destination reads the source itself, as it would alone.
//!
//! Every other verb goes to the job's own client unchanged (listings are
//! each destination's, and so is its request count and usage
//! report: the bytes a destination's client read from the source are the
//! ones it fetched for everyone, so the reports of a pass add up to the
//! bytes read once; [`Scheme::settle`] lets a job's report wait for the
//! spool writers its view started). A pass with one destination is not
//! wrapped at all.
//!
//! This module must never decide what to copy and never change a request
//! the client sends; it only decides who sends it.

pub mod manifests;
pub mod spool;

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{ByteStream, Scheme, UploadStream};
use crate::registry::gate::Pacer;
use crate::registry::referrers::ApiAnswer;
use crate::registry::{Digest, ManifestBody, ManifestHead, Reference, RegistryClient, RegistryError, RegistryUrl, RepoName, Scopes};
use manifests::{HeadKind, Manifests};
use spool::{Open, Spool, Writer};

/// What the destinations of one pass share about its source.
pub struct SourceShare {
    manifests: Manifests,
    /// `None`: the spool could not be made (each destination reads blobs itself).
    spool: Option<Spool>,
}

impl SourceShare {
    /// A share whose spool lives under `root` within `budget` bytes (0: no
    /// spool, manifests only).
    pub fn new(root: &Path, budget: u64) -> SourceShare {
        let spool = if budget == 0 {
            None
        } else {
            match Spool::create(root, budget) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(dir = %root.display(), error = %e, "cannot make the spool directory: each destination reads the source's blobs itself");
                    None
                }
            }
        };
        SourceShare { manifests: Manifests::default(), spool }
    }

    /// `source` (one destination's client of the source), reading through this share.
    pub fn wrap(self: &Arc<Self>, source: Arc<dyn Scheme>) -> Arc<dyn Scheme> {
        Arc::new(SharedSource { inner: source, share: self.clone(), writers: Mutex::new(Vec::new()) })
    }
}

/// One destination's view of the source through a [`SourceShare`].
pub struct SharedSource {
    inner: Arc<dyn Scheme>,
    share: Arc<SourceShare>,
    /// The spool writers this view started (they read through `inner`).
    writers: Mutex<Vec<Writer>>,
}

impl Scheme for SharedSource {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn url(&self) -> &RegistryUrl {
        self.inner.url()
    }
    fn request_count(&self) -> u64 {
        self.inner.request_count()
    }
    fn halted(&self, writes: bool) -> Option<RegistryError> {
        self.inner.halted(writes)
    }
    fn quota_resets_in(&self) -> Option<std::time::Duration> {
        self.inner.quota_resets_in()
    }
    /// None: the source's byte limit paces the reads of the source (in
    /// [`SharedSource::open_blob`]), not the reads of the spool.
    fn bandwidth(&self) -> Option<Arc<Pacer>> {
        None
    }
    fn registry(&self) -> Option<&RegistryClient> {
        self.inner.registry()
    }
    /// Until the spool writers this view started have finished (each
    /// bounded by its progress), so that its client's counters hold the
    /// bytes they read.
    fn settle(&self) -> BoxFuture<'_, ()> {
        let writers = std::mem::take(&mut *self.writers.lock().unwrap_or_else(|e| e.into_inner()));
        async move {
            futures::future::join_all(writers.into_iter().map(Writer::finished)).await;
        }
        .boxed()
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), RegistryError>> {
        self.inner.ping()
    }
    fn catalog(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        self.inner.catalog()
    }
    fn tags<'a>(&'a self, repo: &'a RepoName) -> BoxFuture<'a, Result<Vec<String>, RegistryError>> {
        self.inner.tags(repo)
    }
    fn tags_with<'a>(&'a self, repo: &'a RepoName, scopes: Scopes) -> BoxFuture<'a, Result<Vec<String>, RegistryError>> {
        self.inner.tags_with(repo, scopes)
    }
    fn head_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<Option<ManifestHead>, RegistryError>> {
        self.share.manifests.head(&*self.inner, repo, reference, scopes, HeadKind::Plain).boxed()
    }
    fn head_listed_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<Option<ManifestHead>, RegistryError>> {
        self.share.manifests.head(&*self.inner, repo, reference, scopes, HeadKind::Listed).boxed()
    }
    fn get_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<ManifestBody, RegistryError>> {
        self.share.manifests.get(&*self.inner, repo, reference, scopes).boxed()
    }
    fn put_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, bytes: Bytes, media_type: &'a str)
    -> BoxFuture<'a, Result<Digest, RegistryError>> {
        self.inner.put_manifest(repo, reference, bytes, media_type)
    }
    fn delete_manifest<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest) -> BoxFuture<'a, Result<(), RegistryError>> {
        self.inner.delete_manifest(repo, digest)
    }
    fn delete_tag<'a>(&'a self, repo: &'a RepoName, tag: &'a crate::registry::Tag) -> BoxFuture<'a, Result<bool, RegistryError>> {
        self.inner.delete_tag(repo, tag)
    }
    fn put_manifest_indexed<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, bytes: Bytes, media_type: &'a str)
    -> BoxFuture<'a, Result<(Digest, Option<Digest>), RegistryError>> {
        self.inner.put_manifest_indexed(repo, reference, bytes, media_type)
    }
    fn referrers<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, artifact_type: Option<&'a str>)
    -> BoxFuture<'a, Result<ApiAnswer, RegistryError>> {
        self.inner.referrers(repo, digest, artifact_type)
    }
    fn blob_exists<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, scopes: &'a Scopes) -> BoxFuture<'a, Result<bool, RegistryError>> {
        self.inner.blob_exists(repo, digest, scopes)
    }
    fn blob_exists_sized<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, size: Option<u64>, scopes: &'a Scopes)
    -> BoxFuture<'a, Result<bool, RegistryError>> {
        self.inner.blob_exists_sized(repo, digest, size, scopes)
    }
    /// From the pass's spool when it takes the blob, else from the source
    /// (paced by the source's byte limit either way: the spool's writer
    /// reads the source through it).
    fn open_blob(self: Arc<Self>, repo: &RepoName, digest: &Digest, expected: Option<u64>)
    -> BoxFuture<'static, Result<(ByteStream, Option<u64>), RegistryError>> {
        let open = match &self.share.spool {
            Some(spool) => spool.open(&self.inner, repo, digest, expected),
            None => Open::Direct,
        };
        match open {
            Open::Spooled(stream, size, writer) => {
                if let Some(w) = writer {
                    self.writers.lock().unwrap_or_else(|e| e.into_inner()).push(w);
                }
                futures::future::ready(Ok((stream, Some(size)))).boxed()
            }
            Open::Direct => {
                let pacer = self.inner.bandwidth();
                let opened = self.inner.clone().open_blob(repo, digest, expected);
                async move {
                    let (stream, size) = opened.await?;
                    Ok((crate::registry::throttle::limit(stream, [pacer]), size))
                }
                .boxed()
            }
        }
    }
    fn link_blob<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest) -> BoxFuture<'a, Result<bool, RegistryError>> {
        self.inner.link_blob(repo, digest)
    }
    fn put_blob<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, size: Option<u64>, body: UploadStream)
    -> BoxFuture<'a, Result<(), RegistryError>> {
        self.inner.put_blob(repo, digest, size, body)
    }
}
