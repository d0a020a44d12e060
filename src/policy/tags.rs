//! Which tags of a repository a policy replicates: include/exclude regexes
//! (anchored unless they say otherwise), an optional semver range, and "the newest N versions".
//!
//! Pure selection over tag names; it never talks to a registry. Cosign-style
//! companion tags (`sha256-<hex>.sig|.att|.sbom`) bypass the name filters —
//! they follow their images when the policy copies signatures.

use std::cmp::Reverse;

use regex::Regex;
use semver::{Version, VersionReq};

use crate::engine::discover::{LiteralTags, TagSelector};
use crate::registry::{RepoName, Tag};

/// The tag rules of one policy.
#[derive(Debug, Clone, Default)]
pub struct TagFilter {
    /// See [`anchored`]; empty means every tag.
    pub include: Vec<Regex>,
    /// See [`anchored`].
    pub exclude: Vec<Regex>,
    /// Versions outside the range are left out (tags that are not versions are unaffected).
    pub semver: Option<VersionReq>,
    /// Keep only the newest N versions (tags that are not versions are unaffected).
    pub latest: Option<usize>,
    /// Keep signature/attestation companion tags.
    pub signatures: bool,
    /// Immutable tags: one the destination lists is never checked again
    /// (applied by the diff, not by selection).
    pub immutable: bool,
    /// `tags.rename`: the destination tag's template (applied by the
    /// mapping, not by selection: the rules above name source tags).
    pub rename: Option<std::sync::Arc<crate::engine::tag_rename::TagRename>>,
}

/// A tag pattern: one without `^` or `$` must match the whole tag (`latest`
/// does not match `latest-dev`); one that says where it is anchored is used
/// as written (`-rc\d*$` matches any tag ending so).
pub fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    if pattern.contains('^') || pattern.contains('$') {
        Regex::new(pattern)
    } else {
        Regex::new(&format!("^(?:{pattern})$"))
    }
}

/// A tag read as a version: `1.2.3`, `v1.2.3`, `1.2` and `v1` count
/// (missing parts are zero); pre-release and build parts are kept.
pub fn version_of(tag: &str) -> Option<Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    if let Ok(v) = Version::parse(t) {
        return Some(v);
    }
    let (core, rest) = match t.find(['-', '+']) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let mut full = parts.join(".");
    for _ in parts.len()..3 {
        full.push_str(".0");
    }
    Version::parse(&format!("{full}{rest}")).ok()
}

impl TagFilter {
    fn by_name(&self, tag: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|r| r.is_match(tag))) && !self.exclude.iter().any(|r| r.is_match(tag))
    }

    /// Whether a tag of this name is the policy's business (its name rules,
    /// the semver range, signature companions when signatures travel). Used
    /// for tags the source no longer has, so "the newest N" cannot apply.
    /// A referrers fallback tag (`sha256-<hex>`) is never covered: its index
    /// may list referrers others pushed to the destination, so it is never
    /// deleted there.
    pub fn covers(&self, tag: &str) -> bool {
        if tag.parse::<Tag>().is_ok_and(|t| crate::registry::referrers::fallback_subject(&t).is_some()) {
            return false;
        }
        if tag.parse::<Tag>().is_ok_and(|t| t.is_signature_companion()) {
            return self.signatures;
        }
        self.by_name(tag) && version_of(tag).is_none_or(|v| self.semver.as_ref().is_none_or(|r| r.matches(&v)))
    }
}

impl TagSelector for TagFilter {
    fn select(&self, _repo: &RepoName, tags: Vec<Tag>) -> Vec<Tag> {
        let (companions, tags): (Vec<Tag>, Vec<Tag>) = tags.into_iter().partition(Tag::is_signature_companion);
        let mut plain = Vec::new();
        let mut versions = Vec::new();
        for tag in tags.into_iter().filter(|t| self.by_name(t.as_str())) {
            match version_of(tag.as_str()) {
                Some(v) if self.semver.as_ref().is_some_and(|r| !r.matches(&v)) => {}
                Some(v) => versions.push((v, tag)),
                None => plain.push(tag),
            }
        }
        if let Some(n) = self.latest {
            versions.sort_by(|a, b| Reverse(&a.0).cmp(&Reverse(&b.0)).then_with(|| a.1.as_str().cmp(b.1.as_str())));
            versions.truncate(n);
        }
        plain.extend(versions.into_iter().map(|(_, t)| t));
        if self.signatures {
            plain.extend(companions);
        }
        plain.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        plain
    }

    /// The include rules as names, when each one is a plain name (`latest`,
    /// `1.25.3`: no regex syntax but the dot) and nothing else needs the
    /// listing (no semver range, no "newest N"). Signature companions of
    /// the named tags are then looked up by name.
    fn literal(&self) -> Option<LiteralTags> {
        if self.include.is_empty() || self.semver.is_some() || self.latest.is_some() {
            return None;
        }
        let mut out = Vec::new();
        for r in &self.include {
            let name = r.as_str().strip_prefix("^(?:")?.strip_suffix(")$")?;
            // `.` is a regex's any-character, but in a tag rule it means the
            // dot (`1.25.3`): escaped or not, a name of tag characters is a name.
            let unescaped = name.replace(r"\.", ".").replace(r"\-", "-");
            if !unescaped.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
                return None;
            }
            let tag: Tag = unescaped.parse().ok()?;
            if self.by_name(tag.as_str()) {
                out.push(tag);
            }
        }
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        out.dedup();
        Some(LiteralTags { tags: out, companions: self.signatures })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(f: &TagFilter, tags: &[&str]) -> Vec<String> {
        let repo: RepoName = "a/b".parse().unwrap();
        let tags = tags.iter().map(|t| t.parse().unwrap()).collect();
        f.select(&repo, tags).into_iter().map(|t| t.to_string()).collect()
    }

    const SIG: &str = "sha256-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sig";

    #[test]
    fn exact_names_are_asked_for_without_a_listing() {
        let names = |patterns: &[&str]| TagFilter { include: patterns.iter().map(|p| anchored(p).unwrap()).collect(), ..TagFilter::default() };
        let got = |f: &TagFilter| f.literal().map(|l| l.tags.into_iter().map(|t| t.to_string()).collect::<Vec<_>>());
        assert_eq!(got(&names(&["latest", "1.25.3", r"1\.24\.0"])), Some(vec!["1.24.0".to_string(), "1.25.3".into(), "latest".into()]));
        assert_eq!(got(&names(&[r"v\d+", "latest"])), None);
        assert_eq!(got(&names(&["1.2[0-9]"])), None);
        assert_eq!(got(&names(&["^latest"])), None);
        assert_eq!(got(&TagFilter::default()), None, "no rule: every tag");
        let excluded = TagFilter { exclude: vec![anchored("old").unwrap()], ..names(&["old", "new"]) };
        assert_eq!(got(&excluded), Some(vec!["new".to_string()]));
        assert_eq!(got(&TagFilter { latest: Some(2), ..names(&["1"]) }), None);
        assert_eq!(TagFilter { signatures: true, ..names(&["1"]) }.literal().map(|l| l.companions), Some(true));
    }

    #[test]
    fn include_exclude_are_anchored() {
        let f = TagFilter {
            include: vec![anchored(r"v\d+\.\d+\.\d+").unwrap(), anchored("latest").unwrap()],
            exclude: vec![anchored(r"-rc\d*$").unwrap()],
            ..TagFilter::default()
        };
        assert_eq!(pick(&f, &["v1.2.3", "v1.2.3-rc1", "latest", "latest-dev", "xv1.2.3", SIG]), ["latest", "v1.2.3"]);
    }

    #[test]
    fn semver_range_and_newest_n() {
        let f = TagFilter { semver: Some(">=1.2.0".parse().unwrap()), latest: Some(2), signatures: true, ..TagFilter::default() };
        assert_eq!(pick(&f, &["1.1.9", "v1.2.0", "1.10.0", "1.9.0", "latest", SIG]), ["1.10.0", "1.9.0", "latest", SIG]);
    }

    #[test]
    fn versions_are_read_leniently() {
        assert_eq!(version_of("v1"), Some(Version::new(1, 0, 0)));
        assert_eq!(version_of("1.2"), Some(Version::new(1, 2, 0)));
        assert!(version_of("1.2.3-rc.1").is_some_and(|v| !v.pre.is_empty()));
        assert_eq!(version_of("latest"), None);
        assert_eq!(version_of("1..2"), None);
    }
}
