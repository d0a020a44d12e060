//! Repository names and tags, validated against the distribution grammar
//! before any request is built.
//!
//! Everything that ends up in a request path goes through [`RepoName`] or
//! [`Tag`] (or [`super::Digest`]), so path tricks (`..`, `%2F`, a leading `/`,
//! upper case, spaces) are rejected here and never reach a registry. This
//! module must never percent-decode or "repair" a name.

use std::fmt;
use std::str::FromStr;

use super::digest::Digest;

/// Why a repository name or tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid repository name {0:?}: components are lowercase letters and digits separated by '.', '_', '__' or '-', joined by '/', at most 255 characters")]
    Repository(String),
    #[error("invalid tag {0:?}: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag(String),
    #[error("invalid reference {0:?}: neither a tag nor a digest")]
    Reference(String),
}

/// A repository name such as `library/nginx` or `team/app`. Shared, not
/// copied, when cloned: every tag of a plan names its repositories.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(std::sync::Arc<str>);

fn component_ok(c: &str) -> bool {
    // [a-z0-9]+(?:(?:\.|_|__|[-]+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or "-+"
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `prefix/self`, or `self` when the prefix is empty.
    pub fn with_prefix(&self, prefix: &str) -> Result<RepoName, NameError> {
        if prefix.is_empty() {
            Ok(self.clone())
        } else {
            format!("{prefix}/{}", self.0).parse()
        }
    }

    /// `self` with `prefix/` removed, if it starts with it.
    pub fn strip_prefix(&self, prefix: &str) -> Option<RepoName> {
        if prefix.is_empty() {
            return Some(self.clone());
        }
        self.0
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.parse().ok())
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 255 || !s.split('/').all(component_ok) {
            return Err(NameError::Repository(s.chars().take(300).collect()));
        }
        Ok(RepoName(s.into()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag such as `v1.2.3` or `sha256-<hex>.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for cosign-style companion tags (`sha256-<hex>.sig|.att|.sbom`),
    /// which are best copied after the images they refer to.
    pub fn is_signature_companion(&self) -> bool {
        let Some(rest) = self.0.strip_prefix("sha256-") else {
            return false;
        };
        [".sig", ".att", ".sbom"].iter().any(|suffix| {
            rest.strip_suffix(suffix).is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        })
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        let ok = !b.is_empty()
            && b.len() <= 128
            && word(b[0])
            && b.iter().all(|&x| word(x) || x == b'.' || x == b'-');
        if ok { Ok(Tag(s.to_string())) } else { Err(NameError::Tag(s.chars().take(200).collect())) }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a manifest request names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t.as_str(),
            Reference::Digest(d) => d.as_str(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Tag> for Reference {
    fn from(t: Tag) -> Self {
        Reference::Tag(t)
    }
}

impl From<Digest> for Reference {
    fn from(d: Digest) -> Self {
        Reference::Digest(d)
    }
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            s.parse::<Digest>().map(Reference::Digest).map_err(|_| NameError::Reference(s.to_string()))
        } else {
            s.parse::<Tag>().map(Reference::Tag)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_grammar() {
        for ok in ["a", "library/nginx", "team/app-1", "a.b/c__d/e---f", "x/y/z"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in ["", "/abs", "a/../b", "..", "a/./b", "a%2Fb", "A/b", "a//b", "a/", "a b", "-a", "a-", "a___b", "a/.b"] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
    }

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "v1.2.3", "1", "_x", "sha256-abc.sig", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a%2F", "a:b", &"a".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        let r: RepoName = "bench/app".parse().unwrap();
        assert_eq!(r.with_prefix("mirror").unwrap().as_str(), "mirror/bench/app");
        assert_eq!(r.with_prefix("").unwrap().as_str(), "bench/app");
        let m: RepoName = "mirror/bench/app".parse().unwrap();
        assert_eq!(m.strip_prefix("mirror").unwrap(), r);
        assert!(m.strip_prefix("mir").is_none());
    }

    #[test]
    fn signature_companions() {
        let hex = "a".repeat(64);
        assert!(format!("sha256-{hex}.sig").parse::<Tag>().unwrap().is_signature_companion());
        assert!(format!("sha256-{hex}.att").parse::<Tag>().unwrap().is_signature_companion());
        assert!(!"sha256-abc.sig".parse::<Tag>().unwrap().is_signature_companion());
        assert!(!"v1".parse::<Tag>().unwrap().is_signature_companion());
    }
}
