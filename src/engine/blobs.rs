//! Getting one blob into one destination repository, as cheaply as
//! possible: already there (`HEAD`) → mount from a repository known to hold
//! it (the source repository itself when both sides are one registry) →
//! streamed, digest-checked upload.
//!
//! One lock per digest makes concurrent tasks that need the same blob wait
//! for each other, so a blob shared by many images crosses the wire at most
//! once per run and is mounted everywhere else. Uploads are one streamed
//! `PUT`, or `PATCH` chunks ([`super::chunked`]) when the destination
//! refused that (`413`) or is set to chunks. A destination that is not a
//! registry (an OCI layout, see [`crate::scheme`]) has no mounts or upload
//! sessions: the blob is linked from another repository of it that holds
//! it, else streamed into its `put_blob`. This module never buffers more
//! than one chunk of a blob and never reports a blob present that the
//! destination did not confirm.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use url::Url;

use super::chunked::{self, ChunkedError};
use super::events::{Event, EventSink};
use super::stats::Stats;
use super::verify_stream::{StreamFailure, VerifiedStream};
use crate::registry::blobs::UploadSession;
use crate::registry::manifest::Descriptor;
use crate::registry::{Digest, MountOutcome, RegistryClient, RegistryError, RepoName, Scopes};
use crate::scheme::{ByteStream, Scheme};

/// The pause before a new upload session after one was lost or refused.
const SESSION_PAUSE: Duration = Duration::from_millis(300);

/// Where else at the destination a blob is known to live (from earlier runs).
pub trait MountHints: Send + Sync {
    fn holders<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Vec<RepoName>>;
}

/// Keeps workers in other processes from putting the same blob into the
/// destination at the same time: the second one through finds where the
/// first put it, and mounts it from there (or finds it present).
pub trait BlobFence: Send + Sync {
    /// Wait until this worker alone moves `digest`; returns the destination
    /// repositories known, now, to hold it.
    fn enter<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Vec<RepoName>>;
    /// Done with `digest`; `at` holds it now (`None`: it did not get there).
    fn leave<'a>(&'a self, digest: &'a Digest, at: Option<&'a RepoName>) -> BoxFuture<'a, ()>;
    /// The transfer of `digest` ended without [`BlobFence::leave`] (it was
    /// aborted, its claim or lease lost): release the fence without waiting.
    fn abandon(&self, _digest: &Digest) {}
}

/// Inside a fence until dropped: a transfer that ends any other way than
/// through [`BlobFence::leave`] (its future dropped) abandons the fence.
struct Entered<'a> {
    fence: &'a dyn BlobFence,
    digest: &'a Digest,
    left: bool,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if !self.left {
            self.fence.abandon(self.digest);
        }
    }
}

#[derive(Default)]
struct Slot {
    /// Destination repositories confirmed to hold the blob during this run.
    holders: Vec<RepoName>,
    /// Repositories earlier runs saw holding it (unconfirmed).
    hinted: Vec<RepoName>,
    hints_loaded: bool,
}

/// How a blob got to where it is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    Present,
    Mounted,
    Uploaded,
    /// Foreign / non-distributable: clients fetch it elsewhere.
    Foreign,
}

/// See the module documentation.
pub struct BlobMover {
    src: Arc<dyn Scheme>,
    dst: Arc<dyn Scheme>,
    slots: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<Slot>>>>,
    hints: Option<Arc<dyn MountHints>>,
    fence: Option<Arc<dyn BlobFence>>,
    stats: Arc<Stats>,
    streams: Semaphore,
    events: EventSink,
    attempts: u32,
    /// Destination repositories that did not exist when the run was planned.
    new_repos: Arc<HashSet<RepoName>>,
}

impl BlobMover {
    /// `streams` bounds the number of blob byte-streams open at once.
    pub fn new(
        src: Arc<dyn Scheme>,
        dst: Arc<dyn Scheme>,
        hints: Option<Arc<dyn MountHints>>,
        stats: Arc<Stats>,
        events: EventSink,
        streams: usize,
    ) -> BlobMover {
        BlobMover {
            src,
            dst,
            slots: Mutex::new(HashMap::new()),
            hints,
            fence: None,
            stats,
            streams: Semaphore::new(streams.max(1)),
            events,
            attempts: 3,
            new_repos: Arc::default(),
        }
    }

    /// Destination repositories that did not exist when the run was planned
    /// ([`super::plan::Plan::new_repos`]): such a repository holds only what
    /// this run put there, so a blob it has not confirmed there is known to
    /// be missing and is not asked for with a `HEAD`. (Should someone else
    /// push into it meanwhile, the worst case is a redundant mount or upload.)
    pub fn with_new_repos(mut self, repos: Arc<HashSet<RepoName>>) -> BlobMover {
        self.new_repos = repos;
        self
    }

    /// Coordinate with workers in other processes through `fence`.
    pub fn with_fence(mut self, fence: Option<Arc<dyn BlobFence>>) -> BlobMover {
        self.fence = fence;
        self
    }

    fn slot(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<Slot>> {
        // A poisoned map only means another task panicked mid-insert; the
        // map itself is still sound.
        let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(digest.clone()).or_default().clone()
    }

    /// Make sure `dst_repo` holds the blob `desc` (read from `src_repo`).
    pub async fn ensure(&self, src_repo: &RepoName, dst_repo: &RepoName, desc: &Descriptor) -> Result<BlobOutcome, RegistryError> {
        if desc.foreign {
            return Ok(BlobOutcome::Foreign);
        }
        let slot = self.slot(&desc.digest);
        let mut slot = slot.lock().await;
        if slot.holders.contains(dst_repo) {
            Stats::add(&self.stats.blobs_skipped, 1);
            return Ok(BlobOutcome::Present);
        }
        let mut attempt = 1;
        let mut invalid_sessions = 0;
        loop {
            match self.ensure_once(src_repo, dst_repo, desc, &mut slot).await {
                Ok(outcome) => {
                    slot.holders.push(dst_repo.clone());
                    let counter = match outcome {
                        BlobOutcome::Present | BlobOutcome::Foreign => &self.stats.blobs_skipped,
                        BlobOutcome::Mounted => &self.stats.blobs_mounted,
                        BlobOutcome::Uploaded => &self.stats.blobs_uploaded,
                    };
                    Stats::add(counter, 1);
                    self.events.send(Event::BlobAt { digest: desc.digest.clone(), repo: dst_repo.clone() }).await;
                    return Ok(outcome);
                }
                // Upload state refused: once may be a session that expired;
                // again in a new session is what replicas do that do not
                // share the secret they sign upload state with.
                Err(e) if e.has_code("BLOB_UPLOAD_INVALID") => {
                    invalid_sessions += 1;
                    if invalid_sessions >= 2 || attempt >= self.attempts {
                        return Err(RegistryError::Protocol {
                            registry: self.dst.name().to_string(),
                            message: format!(
                                "{e}; refused as BLOB_UPLOAD_INVALID in {invalid_sessions} upload sessions in a row: usually \
                                 registry replicas behind a load balancer without a shared http.secret (a replica refuses \
                                 the upload state another one signed); give every replica the same http.secret"
                            ),
                        });
                    }
                    tracing::warn!(blob = %desc.digest.short(), repository = %dst_repo, error = %e, "upload state refused; trying a new session");
                    tokio::time::sleep(SESSION_PAUSE).await;
                    attempt += 1;
                }
                // A session lost (or not visible yet) right after its POST: a new one, soon.
                Err(e) if e.upload_session_lost() && attempt < self.attempts => {
                    tracing::warn!(blob = %desc.digest.short(), repository = %dst_repo, error = %e, "upload session lost; starting a new one");
                    tokio::time::sleep(SESSION_PAUSE * attempt).await;
                    attempt += 1;
                }
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    let pause = e.pause(Duration::from_millis(500 * 2u64.pow(attempt)));
                    tracing::warn!(blob = %desc.digest.short(), repository = %dst_repo, error = %e, "blob transfer failed; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn ensure_once(
        &self,
        src_repo: &RepoName,
        dst_repo: &RepoName,
        desc: &Descriptor,
        slot: &mut Slot,
    ) -> Result<BlobOutcome, RegistryError> {
        let digest = &desc.digest;
        let asked = !self.new_repos.contains(dst_repo);
        if asked && self.dst.blob_exists_sized(dst_repo, digest, desc.size, &Scopes::push(dst_repo)).await? {
            return Ok(BlobOutcome::Present);
        }
        let Some(fence) = &self.fence else { return self.ensure_missing(src_repo, dst_repo, desc, slot).await };
        let mut entered = Entered { fence: fence.as_ref(), digest, left: false };
        let holders = fence.enter(digest).await;
        // Put there by another worker meanwhile: asked again, as a record
        // may be older than the HEAD that said missing.
        if holders.contains(dst_repo) {
            let present = match asked {
                false => Ok(true),
                true => self.dst.blob_exists_sized(dst_repo, digest, desc.size, &Scopes::push(dst_repo)).await,
            };
            if !matches!(present, Ok(false)) {
                fence.leave(digest, None).await;
                entered.left = true;
                return present.map(|_| BlobOutcome::Present);
            }
        }
        for h in holders {
            if !slot.hinted.contains(&h) && &h != dst_repo {
                slot.hinted.insert(0, h);
            }
        }
        let result = self.ensure_missing(src_repo, dst_repo, desc, slot).await;
        fence.leave(digest, result.as_ref().ok().map(|_| dst_repo)).await;
        entered.left = true;
        result
    }

    /// [`BlobMover::ensure_once`] for a blob the destination repository does not hold.
    async fn ensure_missing(
        &self,
        src_repo: &RepoName,
        dst_repo: &RepoName,
        desc: &Descriptor,
        slot: &mut Slot,
    ) -> Result<BlobOutcome, RegistryError> {
        let digest = &desc.digest;
        // A store without mounts and upload sessions (an OCI layout): stream.
        let Some(dst) = self.dst.registry() else {
            if self.dst.link_blob(dst_repo, digest).await? {
                return Ok(BlobOutcome::Mounted);
            }
            self.store(src_repo, dst_repo, desc).await?;
            return Ok(BlobOutcome::Uploaded);
        };
        if !slot.hints_loaded {
            if let Some(h) = &self.hints {
                for r in h.holders(digest).await {
                    if !slot.hinted.contains(&r) {
                        slot.hinted.push(r);
                    }
                }
            }
            slot.hints_loaded = true;
        }
        let mut candidates: Vec<RepoName> = Vec::new();
        // Source and destination on one registry: the source repository
        // holds the blob, so it is mounted from there, never streamed.
        if self.src.url().base() == self.dst.url().base() && src_repo != dst_repo {
            candidates.push(src_repo.clone());
        }
        for r in slot.holders.iter().chain(slot.hinted.iter()) {
            if r != dst_repo && !candidates.contains(r) {
                candidates.push(r.clone());
            }
        }
        let mut session = None;
        for from in candidates.into_iter().take(3) {
            match dst.mount_blob(dst_repo, digest, &from).await {
                Ok(MountOutcome::Mounted) => {
                    tracing::debug!(blob = %digest.short(), from = %from, to = %dst_repo, "mounted");
                    return Ok(BlobOutcome::Mounted);
                }
                Ok(MountOutcome::Session(url)) => {
                    // Refused (202): upload into the session we were given.
                    slot.hinted.retain(|r| r != &from);
                    session = Some((url, Scopes::push(dst_repo).and_pull(&from)));
                    break;
                }
                Err(e) if e.is_transient() || e.gave_up() || e.is_registry_condition() => return Err(e),
                Err(e) => {
                    tracing::debug!(blob = %digest.short(), from = %from, error = %e, "mount refused");
                    slot.hinted.retain(|r| r != &from);
                }
            }
        }
        self.upload(dst, src_repo, dst_repo, desc, session).await?;
        Ok(BlobOutcome::Uploaded)
    }

    /// Into a store that is not a registry: one verified stream into its
    /// `put_blob` verb.
    async fn store(&self, src_repo: &RepoName, dst_repo: &RepoName, desc: &Descriptor) -> Result<(), RegistryError> {
        let _permit = self.streams.acquire().await.map_err(|_| RegistryError::Protocol {
            registry: self.dst.name().to_string(),
            message: "transfer pool closed".into(),
        })?;
        let digest = &desc.digest;
        let (bytes, size) = self.open_source(src_repo, desc).await?;
        let (stream, failure) = VerifiedStream::new(bytes, digest, size, self.stats.clone(), |s| &s.bytes_uploaded);
        match self.dst.put_blob(dst_repo, digest, size, Box::pin(stream)).await {
            Ok(()) => {
                tracing::debug!(blob = %digest.short(), repository = %dst_repo, "stored");
                Ok(())
            }
            Err(e) => Err(self.stream_error(src_repo, digest, &failure, e)),
        }
    }

    async fn upload(
        &self,
        dst: &RegistryClient,
        src_repo: &RepoName,
        dst_repo: &RepoName,
        desc: &Descriptor,
        session: Option<(Url, Scopes)>,
    ) -> Result<(), RegistryError> {
        let _permit = self.streams.acquire().await.map_err(|_| RegistryError::Protocol {
            registry: self.dst.name().to_string(),
            message: "transfer pool closed".into(),
        })?;
        let mut session = session;
        if dst.upload_chunk_size().is_none() {
            match self.upload_whole(dst, src_repo, dst_repo, desc, session.take()).await {
                // Too large for one request (a front's body limit): chunks,
                // for this blob and every later one to this registry.
                Err(e) if e.status() == Some(413) => dst.note_monolithic_refused(),
                other => return other,
            }
        }
        let chunk = dst.upload_chunk_size().unwrap_or(crate::registry::client::DEFAULT_CHUNK_SIZE);
        self.upload_chunked(dst, src_repo, dst_repo, desc, session, chunk).await
    }

    /// The one place a source blob's byte stream is opened (the source's
    /// `open_blob`: from a registry, a download that resumes after breaks,
    /// see [`crate::scheme::reg::blob`]), paced by both sides' byte
    /// limits; every upload reads from it through a [`VerifiedStream`].
    async fn open_source(&self, src_repo: &RepoName, desc: &Descriptor) -> Result<(ByteStream, Option<u64>), RegistryError> {
        let (bytes, size) = self.src.clone().open_blob(src_repo, &desc.digest, desc.size).await?;
        let bytes = crate::registry::throttle::limit(bytes, [self.src.bandwidth(), self.dst.bandwidth()]);
        Ok((bytes, size))
    }

    /// One streamed `PUT` with the whole blob.
    async fn upload_whole(
        &self,
        dst: &RegistryClient,
        src_repo: &RepoName,
        dst_repo: &RepoName,
        desc: &Descriptor,
        session: Option<(Url, Scopes)>,
    ) -> Result<(), RegistryError> {
        let digest = &desc.digest;
        let (bytes, size) = self.open_source(src_repo, desc).await?;
        let (session, scopes) = match session {
            Some(s) => s,
            None => (dst.start_upload(dst_repo).await?, Scopes::push(dst_repo)),
        };
        let (stream, failure) = VerifiedStream::new(bytes, digest, size, self.stats.clone(), |s| &s.bytes_uploaded);
        let result = match size {
            Some(size) => dst.put_upload(session.clone(), digest, size, &scopes, stream).await,
            None => match dst.patch_upload(session.clone(), &scopes, stream).await {
                Ok(next) => dst.finish_upload(next, digest, &scopes).await,
                Err(e) => Err(e),
            },
        };
        let Err(e) = result else {
            tracing::debug!(blob = %digest.short(), repository = %dst_repo, "uploaded");
            return Ok(());
        };
        dst.cancel_upload(session, &scopes).await;
        Err(self.stream_error(src_repo, digest, &failure, e))
    }

    /// `PATCH` chunks of `chunk` bytes, resumed where the registry says.
    async fn upload_chunked(
        &self,
        dst: &RegistryClient,
        src_repo: &RepoName,
        dst_repo: &RepoName,
        desc: &Descriptor,
        session: Option<(Url, Scopes)>,
        chunk: u64,
    ) -> Result<(), RegistryError> {
        let digest = &desc.digest;
        let (bytes, size) = self.open_source(src_repo, desc).await?;
        let (session, scopes) = match session {
            Some((location, scopes)) => (UploadSession { location, min_chunk: None }, scopes),
            None => (dst.open_upload(dst_repo).await?, Scopes::push(dst_repo)),
        };
        let (stream, failure) = VerifiedStream::new(bytes, digest, size, self.stats.clone(), |s| &s.bytes_uploaded);
        let mut location = session.location.clone();
        let e = match chunked::upload(dst, session, &mut location, &scopes, digest, stream, chunk).await {
            Ok(()) => {
                tracing::debug!(blob = %digest.short(), repository = %dst_repo, "uploaded in chunks");
                return Ok(());
            }
            Err(ChunkedError::Registry(e)) => e,
            Err(ChunkedError::Source) => RegistryError::Transport {
                registry: self.src.name().to_string(),
                method: "GET".into(),
                path: format!("/v2/{src_repo}/blobs/{digest}"),
                message: "the source stream failed".into(),
            },
        };
        dst.cancel_upload(location, &scopes).await;
        Err(self.stream_error(src_repo, digest, &failure, e))
    }

    /// The error of a failed upload: what went wrong with the source bytes
    /// when something did, else the destination's error `e`.
    fn stream_error(
        &self,
        src_repo: &RepoName,
        digest: &Digest,
        failure: &Arc<Mutex<Option<StreamFailure>>>,
        e: RegistryError,
    ) -> RegistryError {
        let failure = failure.lock().ok().and_then(|mut f| f.take());
        let what = format!("blob {src_repo}@{digest}");
        match failure {
            Some(StreamFailure::Source(message)) => RegistryError::Transport {
                registry: self.src.name().to_string(),
                method: "GET".into(),
                path: format!("/v2/{src_repo}/blobs/{digest}"),
                message,
            },
            Some(StreamFailure::Size { expected, actual }) => {
                RegistryError::SizeMismatch { registry: self.src.name().to_string(), what, expected, actual }
            }
            Some(StreamFailure::Digest { actual }) => RegistryError::DigestMismatch {
                registry: self.src.name().to_string(),
                what,
                expected: digest.clone(),
                actual,
            },
            None => e,
        }
    }
}
