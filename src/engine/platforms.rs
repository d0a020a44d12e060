//! Platform selection: copy only some platforms (`linux/amd64`,
//! `linux/arm64`) of multi-platform images, with the digest question
//! answered explicitly by the [`FilterMode`].
//!
//! * `rewrite` (the default) pushes, under the tag, a new index: the
//!   source's exact bytes with only the `manifests` array narrowed to the
//!   selected platforms. It has a new digest, computed here from the source
//!   index alone (deterministic: the same source index always narrows to the
//!   same bytes), so the diff can tell a destination in sync without any
//!   state. Every registry accepts it.
//! * `sparse` pushes the source index's own bytes (the digest is kept, so
//!   signatures of the index stay valid) and copies only the selected
//!   children. Registries that check an index's children on `PUT`
//!   (distribution does) refuse it; the error says so and names `rewrite`.
//!
//! After a failover (a policy replicating back, DR → primary) nothing is
//! narrowed: what the DR site holds goes back as it is, except that a
//! primary index whose narrowing is what the DR site holds is in sync (the
//! primary keeps every platform; see [`PlatformFilter::destination_may_hold_more`]).
//!
//! Only image indexes are narrowed: a single-platform image passes through
//! unchanged (its tag was chosen by the tag rules; it has no other platform
//! to drop), and so do referrers indexes (the fallback tags `sha256-<hex>`),
//! cosign companions (`.sig`, `.att`, `.sbom`) and any index none of whose
//! children names a platform (an artifact index): they are not images, and
//! filtering them would lose the signatures and SBOMs of what is copied.
//! A child without a `platform` is dropped, except buildkit's
//! attestation manifests (`vnd.docker.reference.digest`) of a kept child.
//!
//! This module decides and rewrites; it never pushes anything. It reads
//! source index bodies (one `GET` per index tag whose target it must know)
//! and changes plan items; [`crate::engine::copy`] carries them out.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::plan::{Action, CopyReason, Plan, PlanItem, SkipReason};
use crate::scheme::Scheme;
use crate::registry::manifest::{self, Descriptor, Kind};
use crate::registry::referrers::subject_of_tag;
use crate::registry::{Digest, Reference, RegistryError, RepoName, Scopes};

/// One platform: `os/architecture[/variant]`, as in an index's `platform`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// `None` matches every variant (`linux/arm64` takes `linux/arm64/v8`).
    pub variant: Option<String>,
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(format!("{s:?} is not a platform: write os/architecture[/variant], e.g. linux/amd64 or linux/arm/v7"));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What is pushed under a tag whose index was narrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FilterMode {
    /// A new index with only the selected platforms (new digest).
    #[default]
    Rewrite,
    /// The original index (digest kept) with only the selected children.
    Sparse,
}

impl FromStr for FilterMode {
    type Err = String;

    fn from_str(s: &str) -> Result<FilterMode, String> {
        match s.trim() {
            "rewrite" => Ok(FilterMode::Rewrite),
            "sparse" => Ok(FilterMode::Sparse),
            other => Err(format!("{other:?} is not a platform filter: write rewrite (a new index, new digest) or sparse (the original index, only the selected children)")),
        }
    }
}

impl fmt::Display for FilterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterMode::Rewrite => "rewrite",
            FilterMode::Sparse => "sparse",
        })
    }
}

/// The platforms to copy and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformFilter {
    pub platforms: Vec<Platform>,
    pub mode: FilterMode,
    /// The destination may hold fuller indexes than the source: an index
    /// there whose narrowing is what the source holds is in sync, never
    /// overwritten. Set for a policy replicating back after a failover:
    /// the primary keeps every platform of its images, the DR site only
    /// the selected ones.
    pub destination_may_hold_more: bool,
}

impl PlatformFilter {
    /// From values that are each a platform or a comma-separated list of
    /// them (`--platform linux/amd64,linux/arm64`). Duplicates are dropped.
    pub fn parse(values: &[String], mode: FilterMode) -> Result<PlatformFilter, String> {
        let mut platforms: Vec<Platform> = Vec::new();
        for v in values.iter().flat_map(|v| v.split(',')).filter(|v| !v.trim().is_empty()) {
            let p = v.parse::<Platform>()?;
            if !platforms.contains(&p) {
                platforms.push(p);
            }
        }
        if platforms.is_empty() {
            return Err("no platform given".into());
        }
        Ok(PlatformFilter { platforms, mode, destination_may_hold_more: false })
    }

    /// `linux/amd64,linux/arm64`.
    pub fn label(&self) -> String {
        self.platforms.iter().map(Platform::to_string).collect::<Vec<_>>().join(",")
    }

    /// The words this filter adds to a job's resume key: another selection
    /// is another job.
    pub fn scope_word(&self) -> String {
        format!("platforms={}:{}", self.label(), self.mode)
    }

    fn matches(&self, p: &RawPlatform) -> bool {
        self.platforms.iter().any(|want| {
            want.os.eq_ignore_ascii_case(&p.os)
                && want.architecture.eq_ignore_ascii_case(&p.architecture)
                && want.variant.as_ref().is_none_or(|v| p.variant.as_deref().is_some_and(|pv| pv.eq_ignore_ascii_case(v)))
        })
    }
}

/// What narrowing produced on earlier passes: source index digest →
/// destination digest, for one filter (narrowing is a function of the
/// source bytes and the filter, so a pair stays true forever). With it an
/// unchanged source index whose destination tag holds the remembered
/// digest is decided by `HEAD`s alone, without pulling the index again.
/// Loaded from and saved to the state by the caller (see `pass`); this
/// module only reads and fills it.
#[derive(Debug, Default)]
pub struct NarrowMemory {
    known: std::sync::Mutex<std::collections::HashMap<String, String>>,
    learned: std::sync::Mutex<Vec<(String, String)>>,
}

impl NarrowMemory {
    /// Add pairs (source digest, destination digest) read from the state.
    pub fn load(&self, pairs: impl IntoIterator<Item = (String, String)>) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).extend(pairs);
    }

    fn get(&self, source: &Digest) -> Option<String> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).get(source.as_str()).cloned()
    }

    /// Recorded for an index with none of the selected platforms.
    pub const NONE: &'static str = "none";

    fn learn(&self, source: &Digest, dest: &Digest) {
        self.learn_str(source, dest.as_str());
    }

    fn learn_none(&self, source: &Digest) {
        self.learn_str(source, Self::NONE);
    }

    fn learn_str(&self, source: &Digest, dest: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.get(source.as_str()).map(String::as_str) != Some(dest) {
            known.insert(source.to_string(), dest.to_string());
            self.learned.lock().unwrap_or_else(|p| p.into_inner()).push((source.to_string(), dest.to_string()));
        }
    }

    /// The pairs learned since the last call, for the state.
    pub fn take_learned(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.learned.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A tag whose index was narrowed: what to push and what to copy first.
#[derive(Debug, Clone)]
pub struct Narrowed {
    pub mode: FilterMode,
    /// Pushed under the tag: the narrowed index (`rewrite`) or the source's
    /// own bytes (`sparse`).
    pub bytes: Bytes,
    /// The digest of `bytes`: what the destination tag resolves to once copied.
    pub digest: Digest,
    pub media_type: String,
    /// The selected children, in index order: the only ones copied.
    pub children: Vec<Descriptor>,
    /// How many children the source index has.
    pub of: usize,
    /// The selection, for messages (`linux/amd64,linux/arm64`).
    pub label: String,
    /// The destination's own fuller index, when it narrows to `digest`
    /// (see [`PlatformFilter::destination_may_hold_more`]): left as it is.
    pub held_by_destination: Option<Digest>,
}

impl Narrowed {
    /// `linux/amd64,linux/arm64 of sha256:… (rewritten)` for reports.
    pub fn describe(&self, source: &Digest) -> String {
        if let Some(fuller) = &self.held_by_destination {
            return format!("{} of {fuller} at the destination is {source} (it holds more platforms; left as it is)", self.label);
        }
        match self.mode {
            FilterMode::Rewrite => format!("{} of {source} (rewritten to {})", self.label, self.digest),
            FilterMode::Sparse => format!("{} of {source} (sparse, digest kept)", self.label),
        }
    }

    /// What the destination tag resolves to once in sync.
    pub fn destination_digest(&self) -> &Digest {
        self.held_by_destination.as_ref().unwrap_or(&self.digest)
    }

    /// The error for a destination that refused this index. A sparse index
    /// refused for a missing child becomes an error that says why and
    /// names the mode that works (never retried: it cannot succeed).
    pub fn refusal(&self, registry: &str, repo: &str, tag: &str, e: RegistryError) -> RegistryError {
        let missing_child = e.has_code("MANIFEST_BLOB_UNKNOWN") || e.has_code("MANIFEST_UNKNOWN") || e.has_code("MANIFEST_INVALID")
            || matches!(e.status(), Some(400 | 404 | 422));
        if self.mode != FilterMode::Sparse || !missing_child {
            return e;
        }
        RegistryError::Protocol {
            registry: registry.to_string(),
            message: format!(
                "{repo}:{tag}: the destination refused the sparse index {} ({} of its {} platforms copied): it validates \
                 that every child of an index is present, so it cannot hold a sparse index; use platform filter `rewrite` \
                 (policy `platform_filter: rewrite`, migrate `--platform-filter rewrite`) to push an index holding only \
                 the selected platforms ({e})",
                self.digest,
                self.children.len(),
                self.of
            ),
        }
    }
}

/// What selecting platforms in one index gives.
#[derive(Debug, Clone)]
pub enum Selection {
    Narrowed(Narrowed),
    /// No child matches: the tag is skipped (an empty index is never pushed).
    /// The platforms the index has, for the message.
    NoMatch(Vec<String>),
    /// No child names a platform: not a multi-platform image (an artifact
    /// or referrers index); it passes through untouched.
    NotAnImageIndex,
}

#[derive(Deserialize)]
struct RawIndex<'a> {
    #[serde(borrow)]
    manifests: Vec<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawChild {
    #[serde(default)]
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

/// Buildkit marks an attestation manifest (`unknown/unknown`) with the image it describes.
const ATTESTATION_OF: &str = "vnd.docker.reference.digest";

/// Narrow the index `bytes` (media type `media_type`) to `filter`.
pub fn select(filter: &PlatformFilter, bytes: &Bytes, media_type: &str) -> Result<Selection, manifest::ManifestError> {
    let parsed = manifest::parse(bytes, media_type)?;
    let text = std::str::from_utf8(bytes).map_err(|e| manifest::ManifestError::NotJson(e.to_string()))?;
    let raw: RawIndex<'_> = serde_json::from_str(text).map_err(|e| manifest::ManifestError::NotJson(e.to_string()))?;
    if raw.manifests.len() != parsed.manifests.len() {
        return Err(manifest::ManifestError::MissingField("manifests"));
    }
    let children: Vec<RawChild> = raw
        .manifests
        .iter()
        .map(|r| serde_json::from_str(r.get()).map_err(|e| manifest::ManifestError::NotJson(e.to_string())))
        .collect::<Result<_, _>>()?;
    if !children.iter().any(|c| c.platform.is_some()) {
        return Ok(Selection::NotAnImageIndex);
    }
    let mut keep: Vec<bool> = children.iter().map(|c| c.platform.as_ref().is_some_and(|p| filter.matches(p))).collect();
    // Attestations of kept images travel with them.
    let kept: std::collections::HashSet<&str> =
        parsed.manifests.iter().zip(&keep).filter(|(_, k)| **k).map(|(d, _)| d.digest.as_str()).collect();
    let attestations: Vec<bool> =
        children.iter().map(|c| c.annotations.get(ATTESTATION_OF).is_some_and(|d| kept.contains(d.as_str()))).collect();
    for (k, a) in keep.iter_mut().zip(attestations) {
        *k |= a;
    }
    if !keep.iter().any(|k| *k) {
        let mut have: Vec<String> = children
            .iter()
            .filter_map(|c| c.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        have.sort();
        have.dedup();
        return Ok(Selection::NoMatch(have));
    }
    let selected: Vec<Descriptor> = parsed.manifests.iter().zip(&keep).filter(|(_, k)| **k).map(|(d, _)| d.clone()).collect();
    let of = parsed.manifests.len();
    let out = match filter.mode {
        FilterMode::Sparse => bytes.clone(),
        FilterMode::Rewrite if selected.len() == of => bytes.clone(),
        FilterMode::Rewrite => Bytes::from(splice(text, &raw.manifests, &keep)),
    };
    Ok(Selection::Narrowed(Narrowed {
        mode: filter.mode,
        digest: Digest::sha256_of(&out),
        bytes: out,
        media_type: parsed.media_type,
        children: selected,
        of,
        label: filter.label(),
        held_by_destination: None,
    }))
}

/// `text` with the `manifests` array holding only the elements marked in
/// `keep` (at least one): everything else, whitespace included, byte for
/// byte as it was; the kept elements joined by the separator the original
/// used between its first two elements.
fn splice(text: &str, elements: &[&RawValue], keep: &[bool]) -> String {
    let offset = |r: &RawValue| r.get().as_ptr() as usize - text.as_ptr() as usize;
    let spans: Vec<(usize, usize)> = elements.iter().map(|r| (offset(r), offset(r) + r.get().len())).collect();
    let separator = match spans.as_slice() {
        [a, b, ..] => &text[a.1..b.0],
        _ => ",",
    };
    let (start, end) = (spans[0].0, spans[spans.len() - 1].1);
    let kept: Vec<&str> = spans.iter().zip(keep).filter(|(_, k)| **k).map(|((s, e), _)| &text[*s..*e]).collect();
    format!("{}{}{}", &text[..start], kept.join(separator), &text[end..])
}

/// The children of an index that a plan item copies: the selected ones
/// when its index was narrowed, `None` when it copies them all (not
/// narrowed). For code that follows children (e.g. their referrers).
pub fn selected_children(item: &PlanItem) -> Option<&[Descriptor]> {
    item.platforms.as_deref().map(|n| n.children.as_slice())
}

/// Index tags the destination holds a fuller index of (one that narrows to
/// the source's own digest): in sync, left alone; every other tag is
/// copied as it is (not narrowed). One `GET` of the destination index per
/// differing index tag; any failure leaves the tag to be copied.
async fn keep_fuller_indexes(dst: &dyn Scheme, plan: &mut Plan, filter: &PlatformFilter, concurrency: usize) {
    let filter = &PlatformFilter { mode: FilterMode::Rewrite, ..filter.clone() };
    let candidates: Vec<(usize, RepoName, Digest, String, Digest)> = plan
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.action, Action::Copy(CopyReason::DigestDiffers) | Action::Skip(SkipReason::OverwriteForbidden)))
        .filter(|(_, i)| subject_of_tag(&i.tag).is_none())
        .filter(|(_, i)| manifest::kind_of(&manifest::normalise_media_type(&i.source.media_type)) == Some(Kind::Index))
        .filter_map(|(n, i)| {
            let target = i.source.digest.clone();
            let d = i.dest_head()?;
            (manifest::kind_of(&manifest::normalise_media_type(&d.media_type)) == Some(Kind::Index))
                .then(|| (n, i.dest_repo.clone(), d.digest.clone(), d.media_type.clone(), target))
        })
        .collect();
    let held: Vec<(usize, Narrowed)> = futures::stream::iter(candidates)
        .map(|(n, repo, digest, media_type, target)| async move {
            let body = dst.get_manifest(&repo, &Reference::Digest(digest.clone()), &Scopes::pull(&repo)).await.ok()?;
            match select(filter, &body.bytes, &media_type).ok()? {
                Selection::Narrowed(theirs) if theirs.digest == target => {
                    Some((n, Narrowed { held_by_destination: Some(digest), ..theirs }))
                }
                _ => None,
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|r| async move { r })
        .collect()
        .await;
    for (n, narrowed) in held {
        let item = &mut plan.items[n];
        item.action = Action::Skip(SkipReason::UpToDate);
        item.platforms = Some(Box::new(narrowed));
    }
}

/// What the action of an item becomes once the destination must hold `target`.
fn decide(item: &PlanItem, target: &Digest, overwrite: bool) -> Action {
    match item.dest_head() {
        None => Action::Copy(CopyReason::Missing),
        Some(d) if &d.digest == target => Action::Skip(SkipReason::UpToDate),
        Some(_) if overwrite => Action::Copy(CopyReason::DigestDiffers),
        Some(_) => Action::Skip(SkipReason::OverwriteForbidden),
    }
}

/// Apply `filter` to every index tag of `plan`: fetch its source index
/// (unless planning kept it), narrow it, and decide the tag against the
/// narrowed digest. With `rewrite` that is every index tag; with `sparse`
/// only those being copied (the digest is the source's, the diff decided
/// right). An index with no selected platform is skipped and logged.
///
/// With `rewrite`, an index whose source digest `memory` maps to the digest
/// the destination tag holds is up to date without a `GET` (an unchanged
/// pass costs `HEAD`s only); every digest narrowing produces is learned.
pub async fn narrow(
    src: &dyn Scheme,
    dst: &dyn Scheme,
    plan: &mut Plan,
    filter: &PlatformFilter,
    concurrency: usize,
    overwrite: bool,
    memory: &NarrowMemory,
) {
    if filter.destination_may_hold_more {
        // Replicating back: what the DR site holds goes back as it is.
        keep_fuller_indexes(dst, plan, filter, concurrency).await;
        return;
    }
    let mut remembered_none = std::collections::HashSet::new();
    if filter.mode == FilterMode::Rewrite {
        for item in plan.items.iter_mut().filter(|i| manifest::kind_of(&manifest::normalise_media_type(&i.source.media_type)) == Some(Kind::Index)) {
            let Some(known) = memory.get(&item.source.digest) else { continue };
            if known == NarrowMemory::NONE {
                if !matches!(item.action, Action::Skip(SkipReason::RetryDeferred)) {
                    tracing::debug!(repository = %item.source_repo, tag = %item.tag, digest = %item.source.digest, "skipped: the index has none of the selected platforms {} (remembered)", filter.label());
                    item.action = Action::Skip(SkipReason::NoSelectedPlatform);
                    remembered_none.insert((item.source_repo.clone(), item.source.digest.as_str().replacen(':', "-", 1)));
                }
                continue;
            }
            let remembered = matches!(item.action, Action::Copy(CopyReason::DigestDiffers) | Action::Skip(SkipReason::OverwriteForbidden))
                && item.dest_head().is_some_and(|d| d.digest.as_str() == known);
            let Ok(digest) = known.parse::<Digest>() else { continue };
            if remembered {
                item.action = Action::Skip(SkipReason::UpToDate);
                item.dest = None;
                item.platforms = Some(Box::new(Narrowed {
                    mode: filter.mode,
                    bytes: Bytes::new(),
                    digest,
                    media_type: item.source.media_type.clone(),
                    children: Vec::new(),
                    of: 0,
                    label: filter.label(),
                    held_by_destination: None,
                }));
            }
        }
    }
    // Owned inputs (no borrowed plan items inside the stream: a closure over
    // references makes the future unprovably Send for callers that spawn it).
    let wanted: Vec<(usize, RepoName, String, Digest, String, Option<Bytes>)> = plan
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| manifest::kind_of(&manifest::normalise_media_type(&i.source.media_type)) == Some(Kind::Index))
        // Referrers indexes and cosign companions exist for another manifest: never narrowed.
        .filter(|(_, i)| subject_of_tag(&i.tag).is_none())
        .filter(|(_, i)| i.platforms.is_none() && i.action != Action::Skip(SkipReason::NoSelectedPlatform))
        .filter(|(_, i)| match i.action {
            Action::Skip(SkipReason::RetryDeferred) => false,
            Action::Skip(_) => filter.mode == FilterMode::Rewrite,
            Action::Copy(_) => true,
        })
        .map(|(n, i)| (n, i.source_repo.clone(), i.tag.to_string(), i.source.digest.clone(), i.source.media_type.clone(), i.source_body.as_deref().cloned()))
        .collect();
    let fetched: Vec<(usize, Result<Selection, String>)> = futures::stream::iter(wanted)
        .map(|(n, repo, tag, digest, media_type, body)| async move {
            let bytes = match body {
                Some(b) => Ok(b),
                None => src
                    .get_manifest(&repo, &Reference::Digest(digest.clone()), &Scopes::pull(&repo))
                    .await
                    .map(|b| b.bytes)
                    .map_err(|e| e.to_string()),
            };
            let selection = bytes.and_then(|b| {
                select(filter, &b, &media_type).map_err(|e| format!("{repo}:{tag} ({digest}): cannot select platforms: {e}"))
            });
            (n, selection)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut not_copied = remembered_none;
    for (n, selection) in fetched {
        let item = &mut plan.items[n];
        match selection {
            Ok(Selection::Narrowed(narrowed)) => {
                if narrowed.mode == FilterMode::Rewrite {
                    memory.learn(&item.source.digest, &narrowed.digest);
                }
                let dest = item.dest_head().cloned();
                item.action = decide(item, &narrowed.digest, overwrite);
                // Keep what the destination holds when it is not the source digest.
                item.dest = dest.filter(|d| d.digest != item.source.digest).map(Box::new);
                tracing::debug!(repository = %item.source_repo, tag = %item.tag, selection = %narrowed.describe(&item.source.digest), action = %item.action, "platforms selected");
                item.platforms = Some(Box::new(narrowed));
            }
            Ok(Selection::NoMatch(have)) => {
                tracing::info!(
                    repository = %item.source_repo, tag = %item.tag, digest = %item.source.digest,
                    "skipped: the index has none of the selected platforms {} (it has {})", filter.label(), have.join(", ")
                );
                item.action = Action::Skip(SkipReason::NoSelectedPlatform);
                not_copied.insert((item.source_repo.clone(), item.source.digest.as_str().replacen(':', "-", 1)));
                if filter.mode == FilterMode::Rewrite {
                    memory.learn_none(&item.source.digest);
                }
            }
            Ok(Selection::NotAnImageIndex) => {
                tracing::debug!(repository = %item.source_repo, tag = %item.tag, "not a multi-platform image (no child names a platform): copied as it is");
            }
            Err(error) => failed.push((n, error)),
        }
    }
    // Cosign companions (`sha256-<hex>.sig` …) of an index not copied stay behind with it.
    for item in plan.items.iter_mut().filter(|i| i.tag.is_signature_companion()) {
        let subject = item.tag.as_str().rsplit_once('.').map_or("", |(s, _)| s).to_string();
        if not_copied.contains(&(item.source_repo.clone(), subject)) {
            item.action = Action::Skip(SkipReason::NoSelectedPlatform);
        }
    }
    // A tag whose index could not be read or narrowed cannot be decided: a problem, not a copy.
    failed.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    for (n, error) in failed {
        let item = plan.items.remove(n);
        plan.problems.push(super::plan::Problem {
            source_repo: item.source_repo.to_string(),
            dest_repo: Some(item.dest_repo.to_string()),
            tag: Some(item.tag.to_string()),
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::manifest::{DOCKER_LIST, OCI_INDEX};

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:x}").repeat(64).chars().take(64).collect::<String>())
    }

    fn index(children: &[(&str, &str, Option<&str>)]) -> Bytes {
        let entries: Vec<String> = children
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let v = variant.map(|v| format!(r#","variant":"{v}""#)).unwrap_or_default();
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"{os}"{v}}}}}"#,
                    d(i as u8 + 1),
                    100 + i
                )
            })
            .collect();
        Bytes::from(format!("{{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"{OCI_INDEX}\",\n  \"manifests\": [\n    {}\n  ],\n  \"annotations\": {{\"a\": \"b\"}}\n}}\n", entries.join(",\n    ")))
    }

    fn filter(p: &[&str], mode: FilterMode) -> PlatformFilter {
        PlatformFilter::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), mode).unwrap()
    }

    #[test]
    fn platforms_parse_and_print() {
        assert_eq!("linux/arm/v7".parse::<Platform>().unwrap().to_string(), "linux/arm/v7");
        assert_eq!("Linux/AMD64".parse::<Platform>().unwrap().to_string(), "linux/amd64");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
        let f = PlatformFilter::parse(&["linux/amd64,linux/arm64".into(), "linux/amd64".into()], FilterMode::Rewrite).unwrap();
        assert_eq!(f.label(), "linux/amd64,linux/arm64");
        assert!(PlatformFilter::parse(&[" , ".into()], FilterMode::Rewrite).is_err());
        assert_eq!("sparse".parse::<FilterMode>(), Ok(FilterMode::Sparse));
        assert!("both".parse::<FilterMode>().unwrap_err().contains("rewrite"));
        assert_eq!(FilterMode::default(), FilterMode::Rewrite);
    }

    #[test]
    fn rewrite_keeps_the_json_and_filters_only_the_array() {
        let src = index(&[("linux", "amd64", None), ("linux", "arm64", Some("v8")), ("linux", "s390x", None), ("windows", "amd64", None)]);
        let Selection::Narrowed(n) = select(&filter(&["linux/amd64", "linux/arm64"], FilterMode::Rewrite), &src, OCI_INDEX).unwrap() else {
            panic!("no match")
        };
        let text = std::str::from_utf8(&n.bytes).unwrap();
        let orig = std::str::from_utf8(&src).unwrap();
        // Only the two unselected entries are gone, with their separators.
        let dropped: Vec<&str> = orig.split(",\n    ").filter(|e| e.contains("s390x") || e.contains("windows")).collect();
        assert_eq!(dropped.len(), 2);
        let mut expected = orig.to_string();
        for e in &dropped {
            let e = e.split("\n  ]").next().unwrap();
            expected = expected.replace(&format!(",\n    {e}"), "");
        }
        assert_eq!(text, expected);
        assert!(text.contains("\"annotations\": {\"a\": \"b\"}") && text.ends_with("}\n"));
        assert_eq!(n.children.len(), 2);
        assert_eq!(n.of, 4);
        assert_eq!(n.children[0].digest.as_str(), d(1));
        assert_eq!(n.children[1].digest.as_str(), d(2));
        assert_eq!(n.digest, Digest::sha256_of(&n.bytes));
        assert_ne!(n.digest, Digest::sha256_of(&src));
        assert_eq!(n.media_type, OCI_INDEX);
        // Deterministic: the same source narrows to the same digest.
        let Selection::Narrowed(again) = select(&filter(&["linux/arm64", "linux/amd64"], FilterMode::Rewrite), &src, OCI_INDEX).unwrap() else {
            panic!()
        };
        assert_eq!(again.digest, n.digest);
        // The result is still an index we can parse.
        let p = manifest::parse(&n.bytes, OCI_INDEX).unwrap();
        assert_eq!(p.manifests.len(), 2);
    }

    #[test]
    fn variants_first_and_last_elements_and_everything_selected() {
        let src = index(&[("linux", "arm", Some("v6")), ("linux", "arm", Some("v7")), ("linux", "amd64", None)]);
        let Selection::Narrowed(n) = select(&filter(&["linux/arm/v7"], FilterMode::Rewrite), &src, OCI_INDEX).unwrap() else { panic!() };
        assert_eq!(n.children.len(), 1);
        assert_eq!(n.children[0].digest.as_str(), d(2));
        assert_eq!(manifest::parse(&n.bytes, OCI_INDEX).unwrap().manifests.len(), 1);
        let Selection::Narrowed(n) = select(&filter(&["linux/arm"], FilterMode::Rewrite), &src, OCI_INDEX).unwrap() else { panic!() };
        assert_eq!(n.children.len(), 2, "no variant asked: every variant");
        let Selection::Narrowed(n) = select(&filter(&["linux/amd64"], FilterMode::Rewrite), &src, OCI_INDEX).unwrap() else { panic!() };
        assert_eq!(n.children[0].digest.as_str(), d(3));
        // Every platform selected: the source's own bytes and digest.
        let Selection::Narrowed(n) = select(&filter(&["linux/arm", "linux/amd64"], FilterMode::Rewrite), &src, OCI_INDEX).unwrap() else { panic!() };
        assert_eq!(n.bytes, src);
        // Nothing selected: no index, the platforms it has instead.
        let Selection::NoMatch(have) = select(&filter(&["linux/ppc64le"], FilterMode::Rewrite), &src, OCI_INDEX).unwrap() else { panic!() };
        assert_eq!(have, vec!["linux/amd64", "linux/arm/v6", "linux/arm/v7"]);
    }

    #[test]
    fn sparse_keeps_the_bytes_and_copies_only_the_selection() {
        let src = index(&[("linux", "amd64", None), ("linux", "arm64", None), ("linux", "s390x", None)]);
        let Selection::Narrowed(n) = select(&filter(&["linux/arm64"], FilterMode::Sparse), &src, OCI_INDEX).unwrap() else { panic!() };
        assert_eq!(n.bytes, src);
        assert_eq!(n.digest, Digest::sha256_of(&src));
        assert_eq!(n.children.len(), 1);
        assert_eq!(n.children[0].digest.as_str(), d(2));
        assert!(n.describe(&n.digest).contains("sparse, digest kept"));
        // A validating registry's refusal names the mode to use; other errors pass unchanged.
        let refused = RegistryError::Status {
            registry: "dst".into(),
            method: "PUT".into(),
            path: "/v2/a/manifests/t".into(),
            status: 400,
            errors: vec![crate::registry::error::ApiError { code: "MANIFEST_BLOB_UNKNOWN".into(), message: "blob unknown".into(), detail: None }],
            retry_after: None,
        };
        let e = n.refusal("dst", "a", "t", refused).to_string();
        assert!(e.contains("validates") && e.contains("`rewrite`") && e.contains("1 of its 3"), "{e}");
    }

    /// What a narrowed tag's action becomes: in sync only when the
    /// destination holds the narrowed digest (a full index there is not).
    #[test]
    fn decisions_against_the_narrowed_digest() {
        use crate::registry::ManifestHead;
        let src = index(&[("linux", "amd64", None), ("linux", "arm64", None), ("linux", "s390x", None)]);
        let Selection::Narrowed(n) = select(&filter(&["linux/amd64"], FilterMode::Rewrite), &src, OCI_INDEX).unwrap() else { panic!() };
        let head = |d: &Digest| ManifestHead { digest: d.clone(), media_type: OCI_INDEX.into() };
        let source = Digest::sha256_of(&src);
        let item = |dest: Option<&Digest>, action| PlanItem {
            source_repo: "a/b".parse().unwrap(),
            dest_repo: "a/b".parse().unwrap(),
            tag: "v1".parse().unwrap(),
            source: head(&source),
            from: None,
            source_body: None,
            dest: dest.map(|d| Box::new(head(d))),
            action,
            platforms: None,
        };
        let copy = Action::Copy(CopyReason::DigestDiffers);
        assert_eq!(decide(&item(Some(&n.digest), copy), &n.digest, true), Action::Skip(SkipReason::UpToDate));
        assert_eq!(decide(&item(None, Action::Skip(SkipReason::UpToDate)), &n.digest, true), copy, "the full index is not the narrowed one");
        assert_eq!(decide(&item(None, Action::Copy(CopyReason::Missing)), &n.digest, true), Action::Copy(CopyReason::Missing));
        assert_eq!(decide(&item(Some(&n.digest), copy), &n.digest, false), Action::Skip(SkipReason::UpToDate));
        let other = Digest::sha256_of(b"other");
        assert_eq!(decide(&item(Some(&other), copy), &n.digest, false), Action::Skip(SkipReason::OverwriteForbidden));
        // Sparse: the target is the source digest, and what is copied is the selection.
        let Selection::Narrowed(s) = select(&filter(&["linux/amd64"], FilterMode::Sparse), &src, OCI_INDEX).unwrap() else { panic!() };
        assert_eq!(decide(&item(None, Action::Skip(SkipReason::UpToDate)), &s.digest, true), Action::Skip(SkipReason::UpToDate));
        let mut planned = item(None, Action::Copy(CopyReason::Missing));
        planned.platforms = Some(Box::new(s));
        assert_eq!(planned.target_digest(), &source);
        assert_eq!(selected_children(&planned).map(|c| c.len()), Some(1));
    }

    /// A referrers index (or any index whose children name no platform) is
    /// not a multi-platform image: it is never narrowed nor skipped.
    #[test]
    fn referrers_and_artifact_indexes_are_not_image_indexes() {
        let referrers = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":10,"artifactType":"application/spdx+json"}}]}}"#,
            d(1)
        ));
        for mode in [FilterMode::Rewrite, FilterMode::Sparse] {
            assert!(matches!(select(&filter(&["linux/amd64"], mode), &referrers, OCI_INDEX).unwrap(), Selection::NotAnImageIndex));
        }
        let empty = Bytes::from(format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#));
        assert!(matches!(select(&filter(&["linux/amd64"], FilterMode::Rewrite), &empty, OCI_INDEX).unwrap(), Selection::NotAnImageIndex));
    }

    #[test]
    fn attestations_follow_their_image_and_docker_lists_work() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{a}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{b}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{c}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}},"annotations":{{"vnd.docker.reference.digest":"{a}","vnd.docker.reference.type":"attestation-manifest"}}}},
{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{e}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}},"annotations":{{"vnd.docker.reference.digest":"{b}","vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#,
            a = d(1),
            b = d(2),
            c = d(3),
            e = d(4)
        );
        let src = Bytes::from(body);
        let Selection::Narrowed(n) = select(&filter(&["linux/amd64"], FilterMode::Rewrite), &src, DOCKER_LIST).unwrap() else { panic!() };
        let kept: Vec<&str> = n.children.iter().map(|c| c.digest.as_str()).collect();
        assert_eq!(kept, vec![d(1).as_str(), d(3).as_str()]);
        assert_eq!(n.media_type, DOCKER_LIST);
        assert_eq!(manifest::parse(&n.bytes, DOCKER_LIST).unwrap().manifests.len(), 2);
    }
}
