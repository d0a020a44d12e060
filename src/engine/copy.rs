//! Copying one tag: the manifest tree, children before parents, blobs
//! before the manifests that reference them, the tag itself last — with the
//! exact source bytes and media type, so digests are preserved.
//!
//! Invariant: a manifest is pushed only after everything it references was
//! confirmed present at the destination. A tag therefore never points at
//! missing content, whatever fails in between. Every manifest pushed here
//! has its referrers copied right after it (see [`super::referrers`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::blobs::BlobMover;
use super::converge::Converge;
use super::plan::PlanItem;
use super::platforms::Narrowed;
use super::referrers::{self, Referrers};
use super::stats::Stats;
use crate::registry::manifest::{self, Descriptor, Kind, Parsed};
use crate::registry::{Digest, ManifestBody, Reference, RegistryError, RepoName, Scopes};
use crate::scheme::Scheme;

/// Deeper indexes than this are refused (real ones nest once, rarely twice).
const MAX_DEPTH: usize = 4;

/// Copies manifest trees from one registry to another.
pub struct Copier {
    src: Arc<dyn Scheme>,
    dst: Arc<dyn Scheme>,
    blobs: BlobMover,
    stats: Arc<Stats>,
    /// Blobs / child manifests of one manifest handled at once.
    fan_out: usize,
    /// Destination repositories that did not exist when the run was planned.
    new_repos: Arc<HashSet<RepoName>>,
    /// Child manifests by destination repository: `true` once this run made
    /// sure the child is there. The lock makes tags that share a child (two
    /// tags of one index) wait for each other instead of both pushing it.
    children: Mutex<HashMap<(RepoName, Digest), ChildSlot>>,
    /// Referrers copied after their subjects (`None`: not copied).
    referrers: Option<Arc<Referrers>>,
    /// Manifest pushes refused while the registry catches up are tried again.
    converge: Converge,
}

/// What making sure of one manifest by digest did.
pub enum Ensured {
    /// It was at the destination already (or made sure of by this run).
    Present,
    /// Pushed now; the subject the registry said it indexed (`OCI-Subject`).
    Pushed { indexed_subject: Option<Digest> },
}

/// `true` once a child manifest is known present at the destination.
type ChildSlot = Arc<tokio::sync::Mutex<bool>>;

impl Copier {
    pub fn new(src: Arc<dyn Scheme>, dst: Arc<dyn Scheme>, blobs: BlobMover, stats: Arc<Stats>, fan_out: usize) -> Copier {
        Copier { src, dst, blobs, stats, fan_out: fan_out.max(1), new_repos: Arc::default(), children: Mutex::default(), referrers: None, converge: Converge::default() }
    }

    /// Copy the referrers of every manifest this copier pushes (see [`referrers`]).
    pub fn with_referrers(mut self, referrers: Referrers) -> Copier {
        self.referrers = Some(Arc::new(referrers));
        self
    }

    pub(super) fn referrers(&self) -> Option<&Referrers> {
        self.referrers.as_deref()
    }

    pub(super) fn source(&self) -> &dyn Scheme {
        &*self.src
    }

    pub(super) fn destination(&self) -> &dyn Scheme {
        &*self.dst
    }

    /// Copy one planned item: [`Copier::copy_tag`], except for tags that
    /// exist for another manifest (fallback tags, cosign companions), which
    /// are copied only when that manifest is at the destination. `false`:
    /// nothing to copy (the subject is not there).
    pub async fn copy_item(&self, item: &PlanItem) -> Result<bool, RegistryError> {
        if item.action == super::plan::Action::Copy(super::plan::CopyReason::ReferrersChanged) {
            if item.target_digest() != &item.source.digest {
                // A rewritten index: the source digest is not a subject at the destination.
                return Ok(false);
            }
            referrers::sync_subject(self, &item.source_repo, &item.dest_repo, &item.source.digest, 0, None).await?;
            referrers::sync_children(self, item).await?;
            return Ok(true);
        }
        match crate::registry::referrers::subject_of_tag(&item.tag) {
            Some(subject) if self.referrers.is_some() => referrers::copy_subject_bound(self, item, &subject).await,
            _ => self.copy_tag(item).await.map(|()| true),
        }
    }

    /// See [`BlobMover::with_new_repos`]: in these repositories a child
    /// manifest this run did not push is known to be missing.
    pub fn with_new_repos(mut self, repos: Arc<HashSet<RepoName>>) -> Copier {
        self.new_repos = repos;
        self
    }

    /// Why no new tag should start: the source cannot be read, or the
    /// destination cannot be written (down, read-only, out of space, quota).
    pub fn halted(&self) -> Option<RegistryError> {
        self.src.halted(false).or_else(|| self.dst.halted(true))
    }

    /// [`Copier::halted`] for `item`: a source whose pull quota is at its
    /// reserve still lets through an image whose manifest planning already
    /// pulled (its blobs are not pulls); an index needs its children pulled.
    pub fn halted_for(&self, item: &super::plan::PlanItem) -> Option<RegistryError> {
        let index = matches!(
            crate::registry::manifest::normalise_media_type(&item.source.media_type).as_str(),
            crate::registry::manifest::OCI_INDEX | crate::registry::manifest::DOCKER_LIST
        );
        let pulls = item.source_body.is_none() || index || item.platforms.is_some();
        let src = self.src.halted(false).filter(|e| pulls || !matches!(e, RegistryError::QuotaLow { .. }));
        src.or_else(|| self.dst.halted(true))
    }

    /// Whether this run made sure `digest` is in `repo` (pushed it there,
    /// or found it there): a tag that exists for that manifest (a cosign
    /// companion) then needs no `HEAD` to learn that its subject is there.
    pub(super) fn known_present(&self, repo: &RepoName, digest: &Digest) -> bool {
        let map = self.children.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(repo.clone(), digest.clone())).is_some_and(|slot| slot.try_lock().is_ok_and(|done| *done))
    }

    /// Note that the destination accepted `digest` in `repo` (see [`Copier::known_present`]).
    fn pushed(&self, repo: &RepoName, digest: &Digest) {
        if let Ok(mut done) = self.child_slot(repo, digest).try_lock() {
            *done = true;
        }
    }

    fn child_slot(&self, repo: &RepoName, digest: &Digest) -> ChildSlot {
        let mut map = self.children.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((repo.clone(), digest.clone())).or_default().clone()
    }

    fn manifest_error(&self, repo: &RepoName, reference: &Reference, source: manifest::ManifestError) -> RegistryError {
        RegistryError::Manifest {
            registry: self.src.name().to_string(),
            repo: repo.to_string(),
            reference: reference.to_string(),
            source,
        }
    }

    /// Fetch `src_repo:reference` and parse it; `media_type` is what the
    /// referrer said it is (`None`: the response decides).
    async fn fetch(&self, src_repo: &RepoName, reference: &Reference, media_type: Option<&str>) -> Result<(ManifestBody, Parsed), RegistryError> {
        let body = self.src.get_manifest(src_repo, reference, &Scopes::pull(src_repo)).await?;
        if body.ignored_header.is_some() {
            Stats::add(&self.stats.digest_mismatches, 1);
        }
        let content_type = match media_type {
            Some(m) if manifest::kind_of(m).is_some() => m.to_string(),
            _ => body.content_type.clone(),
        };
        let parsed = manifest::parse(&body.bytes, &content_type).map_err(|e| self.manifest_error(src_repo, reference, e))?;
        Ok((body, parsed))
    }

    /// Copy one planned tag. On success the destination resolves the tag
    /// to the digest of the bytes the source serves for it.
    ///
    /// The manifest is fetched by tag, not by the digest planned from a
    /// `HEAD`: the bytes decide what is copied. A registry whose
    /// `Docker-Content-Digest` names some other manifest cannot make us
    /// copy that one under this tag. A pinned item (see
    /// [`super::plan::Pin`]) is read under its own reference at the source
    /// (a digest is checked against the bytes) and pushed under `tag`.
    pub async fn copy_tag(&self, item: &PlanItem) -> Result<(), RegistryError> {
        let reference = Reference::Tag(item.tag.clone());
        let source_reference = item.source_reference();
        if let Some(narrowed) = &item.platforms {
            return self.copy_narrowed(item, narrowed, &reference).await;
        }
        let (bytes, parsed) = match &item.source_body {
            // Planning already fetched the tag's bytes and took its digest from them.
            Some(bytes) => {
                let parsed = manifest::parse(bytes, &item.source.media_type)
                    .map_err(|e| self.manifest_error(&item.source_repo, &source_reference, e))?;
                (bytes.as_ref().clone(), parsed)
            }
            None => {
                let (body, parsed) = self.fetch(&item.source_repo, &source_reference, None).await?;
                if body.digest != item.source.digest && body.ignored_header.is_none() {
                    Stats::add(&self.stats.digest_mismatches, 1);
                    tracing::warn!(
                        repository = %item.source_repo, tag = %item.tag, source = %source_reference, planned = %item.source.digest, actual = %body.digest,
                        "the tag's manifest bytes do not hash to the digest planned from its HEAD (the tag moved, or the \
                         registry's Docker-Content-Digest is wrong); copying the bytes"
                    );
                }
                (body.bytes, parsed)
            }
        };
        self.copy_references(&item.source_repo, &item.dest_repo, &parsed, 0).await?;
        // put_manifest checks the digest the destination reports against the bytes.
        let put = || self.dst.put_manifest(&item.dest_repo, &reference, bytes.clone(), &parsed.media_type);
        let digest = self.converge.put(&*self.dst, &item.dest_repo, &parsed, put).await?;
        Stats::add(&self.stats.manifests_pushed, 1);
        self.pushed(&item.dest_repo, &digest);
        referrers::sync_subject(self, &item.source_repo, &item.dest_repo, &digest, 0, None).await
    }

    /// Copy a tag whose index was narrowed to some platforms (see
    /// [`super::platforms`]): the selected children, then the planned bytes.
    async fn copy_narrowed(&self, item: &PlanItem, narrowed: &Narrowed, reference: &Reference) -> Result<(), RegistryError> {
        let (src, dst) = (&item.source_repo, &item.dest_repo);
        let work: Vec<BoxFuture<'_, Result<(), RegistryError>>> =
            narrowed.children.iter().map(|d| self.copy_child(src, dst, d, 1).boxed()).collect();
        futures::stream::iter(work).buffer_unordered(self.fan_out).try_collect::<Vec<()>>().await?;
        let put = || self.dst.put_manifest(dst, reference, narrowed.bytes.clone(), &narrowed.media_type);
        let pushed = match manifest::parse(&narrowed.bytes, &narrowed.media_type) {
            Ok(parsed) => self.converge.put(&*self.dst, dst, &parsed, put).await,
            Err(_) => put().await,
        };
        pushed.map_err(|e| narrowed.refusal(self.dst.name(), dst.as_str(), item.tag.as_str(), e))?;
        Stats::add(&self.stats.manifests_pushed, 1);
        Ok(())
    }

    /// Make sure everything `parsed` references exists in `dst_repo`.
    fn copy_references<'a>(
        &'a self,
        src_repo: &'a RepoName,
        dst_repo: &'a RepoName,
        parsed: &'a Parsed,
        depth: usize,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        async move {
            // Boxed up front: a closure inside this boxed future trips the
            // compiler's higher-ranked lifetime inference.
            let work: Vec<BoxFuture<'a, Result<(), RegistryError>>> = match parsed.kind {
                Kind::Image => parsed
                    .blobs
                    .iter()
                    .map(|d| self.blobs.ensure(src_repo, dst_repo, d).map(|r| r.map(drop)).boxed())
                    .collect(),
                Kind::Index => {
                    parsed.manifests.iter().map(|d| self.copy_child(src_repo, dst_repo, d, depth + 1).boxed()).collect()
                }
            };
            futures::stream::iter(work).buffer_unordered(self.fan_out).try_collect::<Vec<()>>().await?;
            Ok(())
        }
        .boxed()
    }

    /// Copy a manifest referenced by digest from an index.
    async fn copy_child(&self, src_repo: &RepoName, dst_repo: &RepoName, desc: &Descriptor, depth: usize) -> Result<(), RegistryError> {
        self.ensure_manifest(src_repo, dst_repo, &desc.digest, desc.media_type.as_deref(), depth).await.map(drop)
    }

    /// Make sure `src_repo@digest` (a child of an index, or a referrer) is
    /// in `dst_repo`, with what it references and its own referrers.
    pub(super) async fn ensure_manifest(
        &self,
        src_repo: &RepoName,
        dst_repo: &RepoName,
        digest: &Digest,
        media_type: Option<&str>,
        depth: usize,
    ) -> Result<Ensured, RegistryError> {
        let reference = Reference::Digest(digest.clone());
        if depth > MAX_DEPTH {
            return Err(RegistryError::Protocol {
                registry: self.src.name().to_string(),
                message: format!("{src_repo}@{digest}: indexes nested deeper than {MAX_DEPTH}"),
            });
        }
        // (Digests cannot form cycles, so waiting on a child's lock while
        // holding its parent's cannot deadlock.)
        let slot = self.child_slot(dst_repo, digest);
        let mut done = slot.lock().await;
        if *done {
            return Ok(Ensured::Present);
        }
        // Present at the destination means its references are too: the
        // destination accepted it, and we only ever push complete trees.
        // A repository that did not exist holds only what this run pushed.
        if !self.new_repos.contains(dst_repo) && self.dst.head_manifest(dst_repo, &reference, &Scopes::push(dst_repo)).await?.is_some() {
            *done = true;
            return Ok(Ensured::Present);
        }
        let (body, parsed) = self.fetch(src_repo, &reference, media_type).await?;
        self.copy_references(src_repo, dst_repo, &parsed, depth).await?;
        let put = || self.dst.put_manifest_indexed(dst_repo, &reference, body.bytes.clone(), &parsed.media_type);
        let (_, indexed_subject) = self.converge.put(&*self.dst, dst_repo, &parsed, put).await?;
        Stats::add(&self.stats.manifests_pushed, 1);
        *done = true;
        drop(done);
        referrers::sync_subject(self, src_repo, dst_repo, digest, depth, None).await?;
        Ok(Ensured::Pushed { indexed_subject })
    }
}
