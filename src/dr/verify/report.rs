//! The verify report: how to verify ([`VerifyOptions`]), what can be wrong
//! with one tag ([`ProblemKind`], [`TagProblem`]) and the counts and
//! problems of one verification ([`VerifyReport`], [`NarrowedTag`]).
//!
//! Plain data: it never reads a registry and never prints (the CLI renders
//! a report); the checks that fill it are in `verify` and `deep`.

use std::sync::Arc;

use serde::Serialize;

use crate::policy::TagFilter;
use crate::registry::{Digest, RepoName, Tag};

/// How to verify.
#[derive(Clone)]
pub struct VerifyOptions {
    /// Also prove that every child manifest and blob is present at the destination.
    pub deep: bool,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Which destination-only tags count as "in scope" (a policy's name
    /// filters); `None`: every tag.
    pub covers: Option<Arc<TagFilter>>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { deep: false, concurrency: 8, covers: None }
    }
}

/// What is wrong with one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Missing,
    DigestDiffers,
    MediaTypeDiffers,
    OnlyAtDestination,
    NotPullable,
    /// A subject's referrers are not (all) listed or present at the destination.
    ReferrersMissing,
    /// The destination's tag does not meet the policy's `require:` there.
    Unsigned,
    Error,
}

impl ProblemKind {
    pub fn label(self) -> &'static str {
        match self {
            ProblemKind::Missing => "missing",
            ProblemKind::DigestDiffers => "digest differs",
            ProblemKind::MediaTypeDiffers => "media type differs",
            ProblemKind::OnlyAtDestination => "only at destination",
            ProblemKind::NotPullable => "not pullable",
            ProblemKind::ReferrersMissing => "referrers missing",
            ProblemKind::Unsigned => "unsigned",
            ProblemKind::Error => "error",
        }
    }
}

/// One tag that is not identical (or not pullable).
#[derive(Debug, Clone, Serialize)]
pub struct TagProblem {
    pub kind: ProblemKind,
    pub source_repository: Option<String>,
    pub destination_repository: Option<String>,
    pub tag: Option<String>,
    pub source_digest: Option<String>,
    pub destination_digest: Option<String>,
    pub source_media_type: Option<String>,
    pub destination_media_type: Option<String>,
    /// Deep: manifests referenced by the tag that the destination does not serve.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_manifests: Vec<String>,
    /// Deep: blobs referenced by the tag that the destination does not serve.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_blobs: Vec<String>,
    pub error: Option<String>,
}

impl TagProblem {
    pub(super) fn new(kind: ProblemKind) -> TagProblem {
        TagProblem {
            kind,
            source_repository: None,
            destination_repository: None,
            tag: None,
            source_digest: None,
            destination_digest: None,
            source_media_type: None,
            destination_media_type: None,
            missing_manifests: Vec::new(),
            missing_blobs: Vec::new(),
            error: None,
        }
    }

    /// `repo:tag` at the destination (or the source when there is none).
    pub fn name(&self) -> String {
        let repo = self.destination_repository.as_deref().or(self.source_repository.as_deref()).unwrap_or("?");
        match &self.tag {
            Some(t) => format!("{repo}:{t}"),
            None => repo.to_string(),
        }
    }
}

/// Counts and problems of one verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub source: String,
    pub destination: String,
    pub deep: bool,
    pub repositories: usize,
    /// Source tags compared.
    pub tags: usize,
    pub identical: usize,
    pub missing: usize,
    pub digest_differs: usize,
    pub media_type_differs: usize,
    pub only_at_destination: usize,
    pub not_pullable: usize,
    pub referrers_missing: usize,
    /// Destination tags that do not meet the policy's `require:` there.
    pub unsigned: usize,
    pub errors: usize,
    /// Deep: distinct manifests fetched and distinct (repository, blob) pairs checked.
    pub manifests_checked: usize,
    pub blobs_checked: usize,
    /// Tags skipped because their index holds none of the selected
    /// platforms (with the signature companions of such an index).
    pub no_selected_platform: usize,
    /// Tags whose index a platform filter narrowed: what the destination
    /// was compared against (`linux/amd64 of sha256:… (rewritten to sha256:…)`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub narrowed: Vec<NarrowedTag>,
    pub problems: Vec<TagProblem>,
    /// Repository globs that matched nothing at the source (a warning: the
    /// scope is probably not what was meant).
    pub unmatched_patterns: Vec<String>,
    /// The destination's in-scope tags (repository, tag, digest), for
    /// [`check_required`](super::check_required).
    #[serde(skip)]
    pub held: Vec<(RepoName, Tag, Digest)>,
}

/// A tag compared against its index narrowed to the selected platforms.
#[derive(Debug, Clone, Serialize)]
pub struct NarrowedTag {
    pub destination_repository: String,
    pub tag: String,
    /// The digest the destination must hold.
    pub expected_digest: String,
    /// `linux/amd64,linux/arm64 of sha256:… (rewritten to sha256:…)`.
    pub selection: String,
}

impl VerifyReport {
    /// Everything in scope identical (and pullable, when deep).
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub(super) fn push(&mut self, p: TagProblem) {
        match p.kind {
            ProblemKind::Missing => self.missing += 1,
            ProblemKind::DigestDiffers => self.digest_differs += 1,
            ProblemKind::MediaTypeDiffers => self.media_type_differs += 1,
            ProblemKind::OnlyAtDestination => self.only_at_destination += 1,
            ProblemKind::NotPullable => self.not_pullable += 1,
            ProblemKind::ReferrersMissing => self.referrers_missing += 1,
            ProblemKind::Unsigned => self.unsigned += 1,
            ProblemKind::Error => self.errors += 1,
        }
        self.problems.push(p);
    }
}
