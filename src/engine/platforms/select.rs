//! Selecting platforms in one index: the narrowed index's bytes (the
//! source's own, only the `manifests` array cut) and digest, or why the
//! index is not narrowed, and which children a narrowed plan item copies.
//! Pure: it never reads a registry.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{FilterMode, PlatformFilter};
use crate::engine::plan::PlanItem;
use crate::registry::manifest::{self, Descriptor};
use crate::registry::{Digest, RegistryError};

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
pub(super) struct RawPlatform {
    #[serde(default)]
    pub(super) os: String,
    #[serde(default)]
    pub(super) architecture: String,
    #[serde(default)]
    pub(super) variant: Option<String>,
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
