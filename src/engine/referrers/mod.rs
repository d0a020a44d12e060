//! Referrers travel with their subject: discovering the OCI 1.1 referrers
//! of a manifest at the source, copying them after it (recursively: a
//! signature of an SBOM), and making the destination list them.
//!
//! Discovery asks the source's referrers API (`GET /v2/<name>/referrers/`)
//! until it answers `404` once, then reads the referrers tag schema's
//! fallback tag `sha256-<hex>` instead — and only for subjects whose
//! fallback tag the source's tag listing showed, so a subject without
//! referrers costs no request. At the destination, a registry that answers
//! a referrer's `PUT` with `OCI-Subject` lists it itself; otherwise the
//! fallback tag's index is merged: read, missing descriptors appended, and
//! put back — entries others pushed there survive, nothing is ever
//! overwritten. The fallback tag is written only through the ordinary
//! manifest verbs (get and put by tag), so this works on any backend.
//!
//! Cheap no-op: fallback tags are tags, so a pass sees their digests in its
//! listings anyway. [`plan_fallback`] diffs each one with one `GET` per
//! side (the cost of the two `HEAD`s of an ordinary tag): in sync when
//! every source entry is in the destination's index. A subject's referrers
//! are walked only when the subject is copied in this pass or its fallback
//! tag changed. Tags that exist for another manifest (fallback tags and
//! cosign's `.sig/.att/.sbom` companions) are executed after every other tag
//! of the plan and only when their subject is at the destination then (so
//! the companions of an index's children travel with it).
//!
//! Which unchanged tags' referrers changed, asked of a source that serves
//! the API, is [`api_check`].
//!
//! This module never decides which tags a policy selects and never touches
//! the state database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::copy::{Copier, Ensured};
use super::plan::{Action, CopyReason, Plan, PlanItem, SkipReason};
use crate::scheme::Scheme;
use crate::registry::manifest::{self, OCI_INDEX};
use crate::registry::referrers::{self as verbs, ApiAnswer, ReferrerEntry, fallback_subject, fallback_tag, subject_of_tag};
use crate::registry::{Digest, ManifestHead, Reference, RegistryError, RepoName, Scopes, Tag};

pub mod api_check;
pub use api_check::*;

/// Referrer chains followed this deep (image → SBOM → signature is 2).
pub const MAX_DEPTH: usize = 3;

/// More referrers than this on one subject fail the subject's copy (a
/// registry whose list loops, or a subject used as a message bus).
pub const MAX_PER_SUBJECT: usize = 1000;

/// What a run does with referrers (policy `referrers:`/`referrer_types:`,
/// `migrate --no-referrers`/`--referrer-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferrerOptions {
    pub enabled: bool,
    /// Only referrers with one of these `artifactType`s (all when empty).
    pub types: Vec<String>,
    /// Tags that exist for a manifest no tag of the source names any more
    /// (a signature of an image whose tag moved on) travel too, with that
    /// manifest copied by digest: `migrate` copies every tag. Policies keep
    /// "a signature never travels alone" (false).
    pub untagged_subjects: bool,
}

impl Default for ReferrerOptions {
    fn default() -> Self {
        ReferrerOptions { enabled: true, types: Vec::new(), untagged_subjects: false }
    }
}

/// Check an `artifactType` given by a user: a media type `type/subtype`.
pub fn check_artifact_type(value: &str) -> Result<(), String> {
    let ok = value.split_once('/').is_some_and(|(t, s)| {
        let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
        word(t) && word(s)
    });
    if ok { Ok(()) } else { Err(format!("{value:?} is not a media type (type/subtype, e.g. application/spdx+json)")) }
}

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// A subject's referrers as synced in this run: `true` once done.
type Slot = Arc<tokio::sync::Mutex<bool>>;

/// The referrer state of one run, held by its [`Copier`].
pub struct Referrers {
    options: ReferrerOptions,
    /// The source's fallback tags by repository, from the plan's listing
    /// (`None`: unknown, ask for every subject).
    source_fallback: Option<HashSet<(RepoName, Tag)>>,
    /// Whether the source serves the referrers API.
    api: AtomicU8,
    /// Whether the destination indexes referrers itself (`OCI-Subject`).
    indexes: AtomicU8,
    /// By (destination repository, subject): the lock makes two tasks that
    /// meet on one subject take turns, so no merge of the fallback index is lost.
    slots: Mutex<HashMap<(RepoName, Digest), Slot>>,
    /// (source repository, subject) of tags bound to a manifest that no tag
    /// of the plan names (with [`ReferrerOptions::untagged_subjects`]).
    untagged: HashSet<(RepoName, Digest)>,
}

impl Referrers {
    pub fn new(options: ReferrerOptions) -> Referrers {
        Referrers {
            options,
            source_fallback: None,
            api: AtomicU8::new(UNKNOWN),
            indexes: AtomicU8::new(UNKNOWN),
            slots: Mutex::default(),
            untagged: HashSet::new(),
        }
    }

    /// Learn the source's fallback tags from `plan` (its items are every
    /// fallback tag the listings showed, since discovery keeps them all).
    pub fn with_plan(mut self, plan: &Plan) -> Referrers {
        let tags = plan.items.iter().filter(|i| fallback_subject(&i.tag).is_some()).map(|i| (i.source_repo.clone(), i.tag.clone()));
        self.source_fallback = Some(tags.collect());
        if self.options.untagged_subjects {
            self.untagged = untagged_subjects_of(plan);
        }
        self
    }

    pub fn enabled(&self) -> bool {
        self.options.enabled
    }

    fn slot(&self, repo: &RepoName, subject: &Digest) -> Slot {
        let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((repo.clone(), subject.clone())).or_default().clone()
    }

    /// The referrers of `repo@subject` at the source, filtered, with the
    /// fallback tag's bytes when they came from one.
    async fn discover(&self, src: &dyn Scheme, repo: &RepoName, subject: &Digest) -> Result<(Vec<ReferrerEntry>, Option<Bytes>), RegistryError> {
        if self.api.load(Ordering::Relaxed) != NO {
            let one = match self.options.types.as_slice() {
                [t] => Some(t.as_str()),
                _ => None,
            };
            match src.referrers(repo, subject, one).await? {
                ApiAnswer::Listed { entries, .. } => {
                    self.api.store(YES, Ordering::Relaxed);
                    return Ok((verbs::filter(entries, &self.options.types), None));
                }
                ApiAnswer::Unsupported => {
                    if self.api.swap(NO, Ordering::Relaxed) != NO {
                        tracing::debug!(registry = %src.name(), "the source does not serve the referrers API; reading fallback tags");
                    }
                }
            }
        }
        let tag = fallback_tag(subject);
        if self.source_fallback.as_ref().is_some_and(|known| !known.contains(&(repo.clone(), tag.clone()))) {
            return Ok((Vec::new(), None));
        }
        match src.get_manifest(repo, &Reference::Tag(tag.clone()), &Scopes::pull(repo)).await {
            Ok(body) => {
                let all = verbs::parse_index(&body.bytes).map_err(|e| protocol(src, format!("{repo}:{tag}: {e}")))?;
                let n = all.len();
                let kept = verbs::filter(all, &self.options.types);
                let verbatim = (kept.len() == n).then_some(body.bytes);
                Ok((kept, verbatim))
            }
            Err(e) if e.status() == Some(404) || e.has_code("MANIFEST_UNKNOWN") => Ok((Vec::new(), None)),
            Err(e) => Err(e),
        }
    }
}

fn protocol(client: &dyn Scheme, message: String) -> RegistryError {
    RegistryError::Protocol { registry: client.name().to_string(), message }
}

/// Copy the referrers of `src_repo@subject` (already at the destination)
/// to `dst_repo`, then make the destination list them. `given`: the
/// entries (and fallback bytes) when the caller already read them.
pub fn sync_subject<'a>(
    copier: &'a Copier,
    src_repo: &'a RepoName,
    dst_repo: &'a RepoName,
    subject: &'a Digest,
    depth: usize,
    given: Option<(Vec<ReferrerEntry>, Option<Bytes>)>,
) -> BoxFuture<'a, Result<(), RegistryError>> {
    async move {
        let Some(state) = copier.referrers() else { return Ok(()) };
        if !state.enabled() {
            return Ok(());
        }
        if depth >= MAX_DEPTH {
            tracing::warn!(repository = %src_repo, subject = %subject, "referrers nested deeper than {MAX_DEPTH} are not followed");
            return Ok(());
        }
        let slot = state.slot(dst_repo, subject);
        let mut done = slot.lock().await;
        if *done {
            return Ok(());
        }
        let (entries, verbatim) = match given {
            Some(g) => g,
            None => state.discover(copier.source(), src_repo, subject).await?,
        };
        if entries.is_empty() {
            *done = true;
            return Ok(());
        }
        if entries.len() > MAX_PER_SUBJECT {
            return Err(protocol(
                copier.source(),
                format!("{src_repo}@{subject} has {} referrers, more than the {MAX_PER_SUBJECT} regferry copies", entries.len()),
            ));
        }
        let mut indexed = 0;
        for e in &entries {
            match copier.ensure_manifest(src_repo, dst_repo, &e.digest, e.media_type.as_deref(), depth + 1).await? {
                Ensured::Pushed { indexed_subject } => {
                    if indexed_subject.as_ref() == Some(subject) {
                        indexed += 1;
                        state.indexes.store(YES, Ordering::Relaxed);
                    } else {
                        state.indexes.store(NO, Ordering::Relaxed);
                    }
                }
                Ensured::Present => {}
            }
        }
        // Every referrer was pushed just now and indexed by the registry,
        // or the registry is known to index them: no fallback tag needed.
        let all_indexed = indexed == entries.len() || state.indexes.load(Ordering::Relaxed) == YES;
        if !all_indexed {
            merge_fallback(copier.destination(), dst_repo, subject, &entries, verbatim).await?;
        }
        *done = true;
        Ok(())
    }
    .boxed()
}

/// Sync the referrers of every child of the (unnarrowed) index `item`
/// names, whose lists [`check_api_referrers`] found changed: one `GET` of
/// the source index, then each child like a subject. Nothing for an image.
pub async fn sync_children(copier: &Copier, item: &PlanItem) -> Result<(), RegistryError> {
    if item.platforms.is_some() || manifest::kind_of(&manifest::normalise_media_type(&item.source.media_type)) != Some(manifest::Kind::Index) {
        return Ok(());
    }
    let (repo, reference) = (&item.source_repo, Reference::Digest(item.source.digest.clone()));
    let bytes = match &item.source_body {
        Some(b) => b.as_ref().clone(),
        None => copier.source().get_manifest(repo, &reference, &Scopes::pull(repo)).await?.bytes,
    };
    let parsed = manifest::parse(&bytes, &item.source.media_type).map_err(|e| protocol(copier.source(), format!("{repo}@{}: {e}", item.source.digest)))?;
    for child in &parsed.manifests {
        sync_subject(copier, repo, &item.dest_repo, &child.digest, 0, None).await?;
    }
    Ok(())
}

/// Add `entries` to the destination's fallback index of `subject`: read it,
/// append what it lacks, put it back. Never drops an entry that is there.
/// When the destination has none, the source's own bytes go (`verbatim`),
/// so an unmerged fallback tag keeps its digest. Returns whether it wrote.
pub async fn merge_fallback(
    dst: &dyn Scheme,
    repo: &RepoName,
    subject: &Digest,
    entries: &[ReferrerEntry],
    verbatim: Option<Bytes>,
) -> Result<bool, RegistryError> {
    let tag = fallback_tag(subject);
    let reference = Reference::Tag(tag.clone());
    let existing = match dst.get_manifest(repo, &reference, &Scopes::push(repo)).await {
        Ok(body) => Some(verbs::parse_index(&body.bytes).map_err(|e| {
            protocol(dst, format!("{repo}:{tag} exists but is not a referrers index ({e}); regferry does not overwrite it"))
        })?),
        Err(e) if e.status() == Some(404) || e.has_code("MANIFEST_UNKNOWN") => None,
        Err(e) => return Err(e),
    };
    let bytes = match existing {
        None => match verbatim {
            Some(b) => b,
            None => verbs::index_bytes(&entries.iter().map(|e| &e.raw).collect::<Vec<_>>()),
        },
        Some(have) => {
            let known: HashSet<&Digest> = have.iter().map(|e| &e.digest).collect();
            let missing: Vec<&ReferrerEntry> = entries.iter().filter(|e| !known.contains(&e.digest)).collect();
            if missing.is_empty() {
                return Ok(false);
            }
            let all: Vec<&serde_json::Value> = have.iter().map(|e| &e.raw).chain(missing.iter().map(|e| &e.raw)).collect();
            verbs::index_bytes(&all)
        }
    };
    dst.put_manifest(repo, &reference, bytes, OCI_INDEX).await?;
    Ok(true)
}

/// (source repository, subject) of the plan's tags that exist for a
/// manifest no other tag of the plan names (every tag of a repository is
/// in a `migrate` plan, so such a manifest is untagged at the source).
pub(super) fn untagged_subjects_of(plan: &Plan) -> HashSet<(RepoName, Digest)> {
    let tagged: HashSet<(&RepoName, &Digest)> =
        plan.items.iter().filter(|i| subject_of_tag(&i.tag).is_none()).map(|i| (&i.source_repo, &i.source.digest)).collect();
    plan.items
        .iter()
        .filter_map(|i| subject_of_tag(&i.tag).map(|s| (i.source_repo.clone(), s)))
        .filter(|(repo, s)| !tagged.contains(&(repo, s)))
        .collect()
}

/// Whether `repo@digest` is at `client`.
pub(super) async fn present(client: &dyn Scheme, repo: &RepoName, digest: &Digest, scopes: &Scopes) -> Result<bool, RegistryError> {
    Ok(client.head_manifest(repo, &Reference::Digest(digest.clone()), scopes).await?.is_some())
}

/// Execute one plan item whose tag exists for another manifest (a fallback
/// tag or a cosign companion): nothing happens unless that manifest is at
/// the destination. Returns `false` when it is not (nothing to copy).
pub async fn copy_subject_bound(copier: &Copier, item: &PlanItem, subject: &Digest) -> Result<bool, RegistryError> {
    // (Pushed by this run: known there without asking.)
    let there = copier.known_present(&item.dest_repo, subject)
        || present(copier.destination(), &item.dest_repo, subject, &Scopes::push(&item.dest_repo)).await?;
    if !there {
        let untagged = copier.referrers().is_some_and(|r| r.untagged.contains(&(item.source_repo.clone(), subject.clone())));
        if !untagged {
            tracing::debug!(repository = %item.dest_repo, tag = %item.tag, "its subject is not at the destination; not copied");
            return Ok(false);
        }
        // No tag names the subject at the source: it travels by digest with this tag.
        match copier.source().head_manifest(&item.source_repo, &Reference::Digest(subject.clone()), &Scopes::pull(&item.source_repo)).await? {
            Some(head) => {
                copier.ensure_manifest(&item.source_repo, &item.dest_repo, subject, Some(&head.media_type), 0).await?;
            }
            None => tracing::info!(repository = %item.source_repo, tag = %item.tag, subject = %subject, "its subject is not at the source either; the tag is copied alone"),
        }
    }
    if fallback_subject(&item.tag).is_none() {
        copier.copy_tag(item).await?;
        return Ok(true);
    }
    let Some(state) = copier.referrers() else { return Ok(true) };
    let types = &state.options.types;
    let given = match &item.source_body {
        Some(bytes) => {
            let all = verbs::parse_index(bytes).map_err(|e| protocol(copier.source(), format!("{}:{}: {e}", item.source_repo, item.tag)))?;
            let n = all.len();
            let kept = verbs::filter(all, types);
            let verbatim = (kept.len() == n).then(|| bytes.as_ref().clone());
            Some((kept, verbatim))
        }
        None => {
            let reference = Reference::Tag(item.tag.clone());
            let body = copier.source().get_manifest(&item.source_repo, &reference, &Scopes::pull(&item.source_repo)).await?;
            let all = verbs::parse_index(&body.bytes).map_err(|e| protocol(copier.source(), format!("{}:{}: {e}", item.source_repo, item.tag)))?;
            let n = all.len();
            let kept = verbs::filter(all, types);
            Some((kept.clone(), (kept.len() == n).then_some(body.bytes)))
        }
    };
    sync_subject(copier, &item.source_repo, &item.dest_repo, subject, 0, given).await?;
    Ok(true)
}

/// Diff one fallback tag: one `GET` per side. In sync when every source
/// entry (of the wanted types) is in the destination's index, whatever
/// else that index lists. `budget`: bytes of source bodies the plan may
/// still keep for the copy.
#[allow(clippy::too_many_arguments)]
pub async fn plan_fallback(
    src: &dyn Scheme,
    dst: &dyn Scheme,
    source_repo: RepoName,
    dest_repo: RepoName,
    tag: Tag,
    at_destination: bool,
    dest_scopes: Scopes,
    types: &[String],
    budget: &AtomicUsize,
) -> Result<PlanItem, String> {
    let reference = Reference::Tag(tag.clone());
    let body = match src.get_manifest(&source_repo, &reference, &Scopes::pull(&source_repo)).await {
        Ok(b) => b,
        Err(e) if e.status() == Some(404) || e.has_code("MANIFEST_UNKNOWN") => {
            return Err(format!("tag {source_repo}:{tag} was listed but its manifest is unknown at {}", src.name()));
        }
        Err(e) => return Err(e.to_string()),
    };
    let wanted = verbs::filter(verbs::parse_index(&body.bytes).map_err(|e| format!("{source_repo}:{tag}: {e}"))?, types);
    let media_type = manifest::parse(&body.bytes, &body.content_type).map(|p| p.media_type).unwrap_or_else(|_| OCI_INDEX.to_string());
    let source = ManifestHead { digest: body.digest.clone(), media_type };
    let len = body.bytes.len();
    let kept = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(len)).is_ok();
    let source_body = kept.then(|| Box::new(body.bytes));
    let item = |action, dest: Option<Box<ManifestHead>>, source_body| PlanItem {
        source_repo: source_repo.clone(),
        dest_repo: dest_repo.clone(),
        tag: tag.clone(),
        source: source.clone(),
        from: None,
        source_body,
        dest,
        action,
        platforms: None,
    };
    if !at_destination {
        return Ok(item(Action::Copy(CopyReason::Missing), None, source_body));
    }
    let dest = match dst.get_manifest(&dest_repo, &reference, &dest_scopes).await {
        Ok(b) => b,
        Err(e) if e.status() == Some(404) || e.has_code("MANIFEST_UNKNOWN") => {
            return Ok(item(Action::Copy(CopyReason::Missing), None, source_body));
        }
        Err(e) => return Err(e.to_string()),
    };
    let have: HashSet<Digest> = match verbs::parse_index(&dest.bytes) {
        Ok(entries) => entries.into_iter().map(|e| e.digest).collect(),
        Err(e) => return Err(format!("{dest_repo}:{tag} at {} is not a referrers index: {e}", dst.name())),
    };
    let dest_head = (dest.digest != source.digest).then(|| {
        let media_type = manifest::parse(&dest.bytes, &dest.content_type).map(|p| p.media_type).unwrap_or_else(|_| OCI_INDEX.to_string());
        Box::new(ManifestHead { digest: dest.digest.clone(), media_type })
    });
    if wanted.iter().all(|e| have.contains(&e.digest)) {
        Ok(item(Action::Skip(SkipReason::UpToDate), dest_head, None))
    } else {
        Ok(item(Action::Copy(CopyReason::DigestDiffers), dest_head, source_body))
    }
}

/// The entries (of the wanted `types`) the source's fallback tag `tag` lists.
async fn source_entries(src: &dyn Scheme, source_repo: &RepoName, tag: &Tag, types: &[String]) -> Result<Vec<ReferrerEntry>, RegistryError> {
    let body = src.get_manifest(source_repo, &Reference::Tag(tag.clone()), &Scopes::pull(source_repo)).await?;
    Ok(verbs::filter(verbs::parse_index(&body.bytes).map_err(|e| protocol(src, format!("{source_repo}:{tag}: {e}")))?, types))
}

/// The entries (of the wanted `types`) of the source's fallback tag `tag`
/// that the destination's index of the same tag does not list, for
/// `verify` to name each one.
pub async fn referrer_gap(
    src: &dyn Scheme,
    dst: &dyn Scheme,
    source_repo: &RepoName,
    dest_repo: &RepoName,
    tag: &Tag,
    types: &[String],
) -> Result<Vec<ReferrerEntry>, RegistryError> {
    let entries = source_entries(src, source_repo, tag, types).await?;
    let have: HashSet<Digest> = match dst.get_manifest(dest_repo, &Reference::Tag(tag.clone()), &Scopes::pull(dest_repo)).await {
        Ok(b) => verbs::parse_index(&b.bytes).map_err(|e| protocol(dst, format!("{dest_repo}:{tag}: {e}")))?.into_iter().map(|e| e.digest).collect(),
        Err(e) if e.status() == Some(404) || e.has_code("MANIFEST_UNKNOWN") => HashSet::new(),
        Err(e) => return Err(e),
    };
    Ok(entries.into_iter().filter(|e| !have.contains(&e.digest)).collect())
}

/// Destination referrers a verified fallback tag lists at the source but
/// the destination lacks (as manifests), for `verify`.
pub async fn missing_referrers(
    src: &dyn Scheme,
    dst: &dyn Scheme,
    source_repo: &RepoName,
    dest_repo: &RepoName,
    tag: &Tag,
    types: &[String],
) -> Result<Vec<Digest>, RegistryError> {
    let entries = source_entries(src, source_repo, tag, types).await?;
    let mut missing = Vec::new();
    for e in entries {
        if !present(dst, dest_repo, &e.digest, &Scopes::pull(dest_repo)).await? {
            missing.push(e.digest);
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_types_are_checked() {
        assert!(check_artifact_type("application/spdx+json").is_ok());
        assert!(check_artifact_type("application/vnd.dev.cosign.artifact.sig.v1+json").is_ok());
        assert!(check_artifact_type("spdx").is_err());
        assert!(check_artifact_type("a/b c").is_err());
        assert!(check_artifact_type("/x").is_err());
    }
}
