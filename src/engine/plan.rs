//! The plan: which tags of which repositories go where, and why.
//!
//! A plan is pure data produced by discovery and diffing and consumed by the
//! executor, the dry-run printer and the state recorder. Building one costs
//! listings and `HEAD`s; executing one is the only thing that writes.

use std::fmt;

use super::rename::Rename;
use super::tag_rename::TagRename;
use crate::registry::{ManifestHead, Reference, RepoName, Tag};

/// One named tag whose manifest the source serves under another reference
/// (`copy SRC:TAG DEST:OTHER`, `copy SRC@DIGEST DEST:TAG`): the plan item of
/// `tag` reads `from` at the source and diffs and pushes `tag` at the
/// destination. Only a scope that names exactly this tag may carry one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The destination tag (what the scope's tag rules name).
    pub tag: Tag,
    /// Where the source has it: another tag, or a digest.
    pub from: Reference,
}

/// How source repository names become destination names: strip
/// `source_prefix/`, rename (see [`super::rename`]: ordered rules, first
/// match wins, none by default), then prepend `dest_prefix/`; tags keep
/// their names unless `tags.rename` gives a template. Discovery, verify,
/// prune, the fence's scope and push events all map names here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoMapping {
    pub source_prefix: String,
    pub dest_prefix: String,
    /// Renames of the names relative to the prefixes.
    pub rename: std::sync::Arc<Rename>,
    /// The mapping of a policy running backwards (after a failover): its
    /// rename is the inverse one, and scope globs still match the names
    /// the policy's source gives.
    pub backwards: bool,
    /// Refuse (per repository, at run time) names whose new name would not
    /// map back to them: a policy's renames must survive failover and failback.
    pub must_invert: bool,
    /// Why this (reversed) mapping cannot map names back: every name is refused.
    pub broken: Option<String>,
    /// `tags.rename`: the policy's template (applied forwards, inverted
    /// when running backwards; see [`super::tag_rename`]).
    pub tags: Option<std::sync::Arc<TagRename>>,
}

impl RepoMapping {
    pub fn new(source_prefix: &str, dest_prefix: &str) -> RepoMapping {
        RepoMapping {
            source_prefix: source_prefix.trim_matches('/').to_string(),
            dest_prefix: dest_prefix.trim_matches('/').to_string(),
            ..RepoMapping::default()
        }
    }

    /// This mapping with renaming rules.
    pub fn with_rename(mut self, rename: Rename, must_invert: bool) -> RepoMapping {
        self.rename = std::sync::Arc::new(rename);
        self.must_invert = must_invert;
        self
    }

    /// This mapping with a tag template.
    pub fn with_tag_rename(mut self, tags: Option<std::sync::Arc<TagRename>>) -> RepoMapping {
        self.tags = tags;
        self
    }

    /// The destination tag of the source tag `tag`: `None` when it is not
    /// the policy's (running backwards, a tag not fitting the template),
    /// an error when the renamed tag is not a valid tag.
    pub fn dest_tag(&self, tag: &Tag) -> Option<Result<Tag, String>> {
        match (&self.tags, self.backwards) {
            (None, _) => Some(Ok(tag.clone())),
            (Some(t), false) => Some(t.apply(tag)),
            (Some(t), true) => t.inverse(tag).map(Ok),
        }
    }

    /// The source tag whose destination tag is `tag`; `None` when no
    /// source tag maps there (a destination tag not fitting the template:
    /// not regferry's, never pruned).
    pub fn source_tag(&self, tag: &Tag) -> Option<Tag> {
        match (&self.tags, self.backwards) {
            (None, _) => Some(tag.clone()),
            (Some(t), false) => t.inverse(tag),
            (Some(t), true) => t.apply(tag).ok(),
        }
    }

    /// The name the policy's tag rules see for the source tag `tag` (the
    /// name at the policy's own source); `None` when it is not the policy's.
    pub fn scope_tag(&self, tag: &Tag) -> Option<Tag> {
        if self.backwards { self.dest_tag(tag).and_then(Result::ok) } else { Some(tag.clone()) }
    }

    /// The name the policy's tag rules see for the destination tag `tag`;
    /// `None` when it is not the policy's.
    pub fn scope_tag_of_dest(&self, tag: &Tag) -> Option<Tag> {
        if self.backwards { Some(tag.clone()) } else { self.source_tag(tag) }
    }

    /// The source tag of a tag named in the policy's tag rules (the inverse
    /// of [`RepoMapping::scope_tag`]).
    pub fn source_tag_of_scope(&self, tag: &Tag) -> Option<Tag> {
        if self.backwards { self.source_tag(tag) } else { Some(tag.clone()) }
    }

    /// The name a source repository gets at the destination, or `None` when
    /// it lies outside the source prefix.
    pub fn map(&self, source: &RepoName) -> Option<RepoName> {
        self.try_map(source)?.ok()
    }

    /// The name relative to the source prefix.
    pub fn relative(&self, source: &RepoName) -> Option<RepoName> {
        source.strip_prefix(&self.source_prefix)
    }

    /// The name scope globs (`--repo`, `repositories.include`) and a
    /// policy's tag and repository rules are matched against: the name
    /// relative to the source prefix, as the policy's own source names it
    /// (mapped back when the policy runs backwards).
    pub fn scope_name(&self, relative: &str) -> String {
        if self.backwards { self.rename.apply(relative) } else { relative.to_string() }
    }

    /// The name (relative to the source prefix) that a plain name in the
    /// scope's globs has at this mapping's source: itself, or — running
    /// backwards — its renamed name. The inverse of [`RepoMapping::scope_name`].
    pub fn source_name_of(&self, scope_name: &str) -> String {
        match self.backwards {
            true => self.rename.reversed().map_or_else(|_| scope_name.to_string(), |forward| forward.apply(scope_name)),
            false => scope_name.to_string(),
        }
    }

    /// The destination name of `source`: `None` when it lies outside the
    /// source prefix, an error when the name it would get breaks the
    /// grammar (e.g. over 255 characters once the prefix is added).
    pub fn try_map(&self, source: &RepoName) -> Option<Result<RepoName, crate::registry::name::NameError>> {
        let relative = source.strip_prefix(&self.source_prefix)?;
        if self.rename.is_empty() {
            return Some(relative.with_prefix(&self.dest_prefix));
        }
        Some(self.rename.apply(relative.as_str()).parse::<RepoName>().and_then(|r| r.with_prefix(&self.dest_prefix)))
    }

    /// The destination name relative to the destination prefix, as text
    /// (for messages about names that break the grammar).
    pub fn renamed(&self, relative: &str) -> String {
        self.rename.apply(relative)
    }

    /// Whether `repo` lies in the namespace this mapping writes to, when
    /// that namespace is itself inside the namespace it reads from: within
    /// one registry, such a repository is this mapping's own output
    /// (`mirror/team/app` for a registry mirrored into `mirror/`) and
    /// replicating it again would nest it (`mirror/mirror/team/app`).
    pub fn is_own_output(&self, repo: &RepoName) -> bool {
        let (src, dst) = (&self.source_prefix, &self.dest_prefix);
        let dst_inside_src = !dst.is_empty() && dst != src && (src.is_empty() || dst.starts_with(&format!("{src}/")));
        let name = repo.as_str();
        dst_inside_src && (name == dst || name.starts_with(&format!("{dst}/")))
    }

    /// The reverse mapping (for failover: destination becomes source),
    /// renames inverted. Rules that cannot be inverted (refused in
    /// policies by `policy check`) leave names unchanged on the way back,
    /// and every name is then refused by [`RepoMapping::conflicts`].
    pub fn reversed(&self) -> RepoMapping {
        let (rename, broken) = match self.rename.reversed() {
            Ok(r) => (std::sync::Arc::new(r), None),
            Err(e) => (std::sync::Arc::new(Rename::default()), Some(e.to_string())),
        };
        RepoMapping {
            source_prefix: self.dest_prefix.clone(),
            dest_prefix: self.source_prefix.clone(),
            rename,
            backwards: !self.backwards,
            must_invert: self.must_invert,
            broken,
            tags: self.tags.clone(),
        }
    }

    /// The names (relative to the source prefix) this mapping must refuse:
    /// two that get one destination name, and — for a policy — one whose
    /// destination name does not map back to it.
    pub fn conflicts<'a>(&self, relatives: impl IntoIterator<Item = &'a str>) -> Vec<super::rename::NameConflict> {
        match &self.broken {
            Some(why) => relatives
                .into_iter()
                .map(|r| super::rename::NameConflict { sources: vec![r.to_string()], message: why.clone() })
                .collect(),
            None => self.rename.check_names(relatives, self.must_invert),
        }
    }
}

/// Why a tag is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    Missing,
    DigestDiffers,
    MediaTypeDiffers,
    /// The tag is up to date, but the referrers the source's API lists for
    /// its manifest changed: only they are synced.
    ReferrersChanged,
}

/// Why a tag is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The destination already resolves the tag to the same digest.
    UpToDate,
    /// The destination tag differs and the policy forbids overwriting it.
    OverwriteForbidden,
    /// It failed on earlier passes and its next attempt is not due yet.
    RetryDeferred,
    /// An index with none of the selected platforms (nothing to push).
    NoSelectedPlatform,
    /// It does not meet the policy's `require:` (not signed by a trusted
    /// key, or a required referrer missing): held back until it does
    /// (the reason is in [`Plan::refused`]).
    Unsigned,
}

/// What to do with one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Copy(CopyReason),
    Skip(SkipReason),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Copy(CopyReason::Missing) => "missing",
            Action::Copy(CopyReason::DigestDiffers) => "digest differs",
            Action::Copy(CopyReason::MediaTypeDiffers) => "media type differs",
            Action::Copy(CopyReason::ReferrersChanged) => "referrers changed",
            Action::Skip(SkipReason::UpToDate) => "up to date",
            Action::Skip(SkipReason::OverwriteForbidden) => "differs, overwrite disabled",
            Action::Skip(SkipReason::RetryDeferred) => "failed before, retry not due yet",
            Action::Skip(SkipReason::NoSelectedPlatform) => "none of the selected platforms",
            Action::Skip(SkipReason::Unsigned) => "does not meet the policy's require (unsigned)",
        })
    }
}

/// One tag of the plan.
#[derive(Debug, Clone)]
pub struct PlanItem {
    pub source_repo: RepoName,
    pub dest_repo: RepoName,
    pub tag: Tag,
    /// Digest and media type at the source when planned.
    pub source: ManifestHead,
    /// Where the source has the manifest when not under `tag` (see [`Pin`]);
    /// `None` for every item of a listing or a policy.
    pub from: Option<Box<Reference>>,
    /// The source manifest's exact bytes, when planning already fetched them
    /// (boxed: most items have none, and a plan may hold many items).
    pub source_body: Option<Box<bytes::Bytes>>,
    /// Digest and media type at the destination when the tag exists there
    /// and differs; `None` when it is missing or, for an up-to-date tag,
    /// identical to `source` (not stored twice: a no-op pass over many tags
    /// keeps every item, so it is boxed too). Read it with [`PlanItem::dest_head`].
    pub dest: Option<Box<ManifestHead>>,
    pub action: Action,
    /// The index narrowed to the selected platforms, when a platform
    /// filter applies to this tag (see [`super::platforms`]).
    pub platforms: Option<Box<super::platforms::Narrowed>>,
}

impl PlanItem {
    /// The digest the destination tag resolves to once this item is
    /// copied: the source's, unless its index was rewritten.
    pub fn target_digest(&self) -> &crate::registry::Digest {
        self.platforms.as_deref().map_or(&self.source.digest, |n| n.destination_digest())
    }

    /// Where the source has this item's manifest: [`PlanItem::from`], or the tag.
    pub fn source_reference(&self) -> Reference {
        self.from.as_deref().cloned().unwrap_or_else(|| Reference::Tag(self.tag.clone()))
    }

    /// What the destination resolved the tag to when planned, `None` when it
    /// did not have it.
    pub fn dest_head(&self) -> Option<&ManifestHead> {
        match (&self.dest, self.action) {
            (Some(d), _) => Some(d.as_ref()),
            (None, Action::Skip(SkipReason::UpToDate)) => Some(&self.source),
            (None, _) => None,
        }
    }
}

/// Something that could not even be planned: a listing that failed, a name
/// that breaks the grammar, a tag that vanished. Each counts as a failed tag.
#[derive(Debug, Clone)]
pub struct Problem {
    pub source_repo: String,
    pub dest_repo: Option<String>,
    pub tag: Option<String>,
    pub error: String,
}

/// An immutable tag left unchecked: (source repository, destination
/// repository, destination tag, the source's tag when `tags.rename` makes it
/// differ).
pub type UncheckedTag = (RepoName, RepoName, Tag, Option<Tag>);

/// The outcome of discovery and diffing.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub items: Vec<PlanItem>,
    pub problems: Vec<Problem>,
    /// Repositories in scope.
    pub repositories: usize,
    /// Destination repositories that did not exist when planned: whatever
    /// they hold was put there by this run, so the copy need not ask them
    /// for blobs or manifests it has not put there itself.
    pub new_repos: std::collections::HashSet<RepoName>,
    /// Source manifests fetched while planning whose
    /// `Docker-Content-Digest` disagreed with their bytes (the bytes won).
    pub digest_mismatches: u64,
    /// How long discovery and diffing took.
    pub planning_time: std::time::Duration,
    /// Include globs that matched no source repository (a warning).
    pub unmatched: Vec<String>,
    /// Tags left alone unchecked because the destination lists them and
    /// tags are immutable (no item each: they cost nothing but the listing).
    pub unchecked: usize,
    /// Those tags, kept only when referrers travel: their referrers listed
    /// through the source's API are still checked each pass (see
    /// [`super::immutable`]).
    pub unchecked_tags: Vec<UncheckedTag>,
    /// Tags of [`Plan::unchecked_tags`] put back into `items` as up to date
    /// for that check alone: nothing was compared, so nothing is claimed
    /// about them (not recorded as written by regferry).
    pub rechecked: std::collections::HashSet<(RepoName, Tag)>,
    /// Tags bound to a manifest that will not be at the destination, dropped
    /// from `items` (see [`super::left_behind`]).
    pub left_behind: Vec<super::left_behind::LeftBehind>,
    /// Why each tag held back by the signature gate ([`SkipReason::Unsigned`])
    /// does not meet the policy's `require:`, by (source repository, tag).
    pub refused: std::collections::HashMap<(RepoName, Tag), String>,
}

impl Plan {
    pub fn to_copy(&self) -> impl Iterator<Item = &PlanItem> {
        self.items.iter().filter(|i| matches!(i.action, Action::Copy(_)))
    }

    pub fn count_copy(&self) -> usize {
        self.to_copy().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_strips_and_prepends() {
        let r = |s: &str| s.parse::<RepoName>().unwrap();
        let m = RepoMapping::new("", "mirror");
        assert_eq!(m.map(&r("bench/app")), Some(r("mirror/bench/app")));
        let m = RepoMapping::new("team", "");
        assert_eq!(m.map(&r("team/app")), Some(r("app")));
        assert_eq!(m.map(&r("other/app")), None);
        let m = RepoMapping::new("", "mirror").reversed();
        assert_eq!(m.map(&r("mirror/team/app")), Some(r("team/app")));
        assert_eq!(m.map(&r("team/app")), None);
    }

    #[test]
    fn own_output_and_long_names() {
        let r = |s: &str| s.parse::<RepoName>().unwrap();
        let m = RepoMapping::new("", "mirror");
        assert!(m.is_own_output(&r("mirror/team/app")));
        assert!(m.is_own_output(&r("mirror")));
        assert!(!m.is_own_output(&r("mirrors/app")));
        assert!(!m.is_own_output(&r("team/app")));
        let m = RepoMapping::new("team", "team/dr");
        assert!(m.is_own_output(&r("team/dr/app")));
        assert!(!m.is_own_output(&r("team/app")));
        // The destination namespace contains the source's (flattening), or
        // they are apart: nothing read is this mapping's output.
        assert!(!RepoMapping::new("mirror/team", "mirror").is_own_output(&r("mirror/team/app")));
        assert!(!RepoMapping::new("a", "b").is_own_output(&r("b/x")));
        assert!(!RepoMapping::new("", "").is_own_output(&r("x")));
        // A name that outgrows the grammar with the prefix is an error, not "outside".
        let long = r(&"a".repeat(250));
        assert!(matches!(RepoMapping::new("", "mirror").try_map(&long), Some(Err(_))));
        assert!(RepoMapping::new("x", "mirror").try_map(&long).is_none());
    }

    #[test]
    fn tag_template_forwards_and_backwards() {
        let t = |s: &str| s.parse::<Tag>().unwrap();
        let template = std::sync::Arc::new(TagRename::parse("{tag}-mirror").unwrap());
        let m = RepoMapping::new("", "dr").with_tag_rename(Some(template));
        assert_eq!(m.dest_tag(&t("1.0")), Some(Ok(t("1.0-mirror"))));
        assert_eq!(m.source_tag(&t("1.0-mirror")), Some(t("1.0")));
        assert_eq!(m.source_tag(&t("latest")), None, "not fitting the template: not ours");
        assert_eq!(m.scope_tag_of_dest(&t("1.0-mirror")), Some(t("1.0")));
        assert_eq!(m.scope_tag(&t("1.0")), Some(t("1.0")));
        // After a failover: DR's `1.0-mirror` goes home as `1.0`; DR's own `x` stays.
        let back = m.reversed();
        assert_eq!(back.dest_tag(&t("1.0-mirror")), Some(Ok(t("1.0"))));
        assert_eq!(back.dest_tag(&t("x")), None);
        assert_eq!(back.source_tag(&t("1.0")), Some(t("1.0-mirror")));
        assert_eq!(back.scope_tag(&t("1.0-mirror")), Some(t("1.0")));
        assert_eq!(back.scope_tag_of_dest(&t("1.0")), Some(t("1.0")));
        assert_eq!(back.source_tag_of_scope(&t("1.0")), Some(t("1.0-mirror")));
        assert_eq!(RepoMapping::new("", "").dest_tag(&t("a")), Some(Ok(t("a"))));
    }
}
