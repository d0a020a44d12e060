//! Tag renaming: a policy's `tags.rename` template holds `{tag}` exactly
//! once (`{tag}-mirror`, `v{tag}`); the destination tag is the template with
//! the source tag in its place, and the way back strips the literal prefix
//! and suffix again (failover and failback). A destination tag that does
//! not fit the template is not one regferry made: it maps back to nothing,
//! so it is never pruned, reported or copied back.
//!
//! Tags named by a digest (`sha256-<hex>` referrers fallback tags and the
//! cosign companions `.sig`/`.att`/`.sbom`) are never renamed: their name
//! is their subject's digest. This module decides names only: it never
//! talks to a registry, and [`crate::engine::plan::RepoMapping`] is the one
//! place that applies it.

use std::fmt;

use crate::registry::Tag;
use crate::registry::referrers::subject_of_tag;

/// The placeholder a template must hold exactly once.
pub const PLACEHOLDER: &str = "{tag}";

/// A checked `tags.rename` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRename {
    prefix: String,
    suffix: String,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagRenameError {
    #[error("tag template {0:?} has no {{tag}}: every source tag would get one name (write e.g. '{{tag}}-mirror')")]
    NoPlaceholder(String),
    #[error("tag template {0:?} has {{tag}} more than once: the destination tag could not be mapped back (use it once)")]
    Twice(String),
    #[error("tag template {template:?} makes invalid tags (e.g. {example:?}): a tag is letters, digits, '_', '.' and '-', starting with a letter, digit or '_'")]
    Invalid { template: String, example: String },
}

impl TagRename {
    /// A template, checked: `{tag}` exactly once, and the text around it
    /// allowed in a tag (with a one-letter source tag in its place).
    pub fn parse(template: &str) -> Result<TagRename, TagRenameError> {
        let mut parts = template.split(PLACEHOLDER);
        let (Some(prefix), Some(suffix)) = (parts.next(), parts.next()) else {
            return Err(TagRenameError::NoPlaceholder(template.into()));
        };
        if parts.next().is_some() {
            return Err(TagRenameError::Twice(template.into()));
        }
        let example = format!("{prefix}1{suffix}");
        if example.parse::<Tag>().is_err() {
            return Err(TagRenameError::Invalid { template: template.into(), example });
        }
        Ok(TagRename { prefix: prefix.into(), suffix: suffix.into() })
    }

    /// Whether `tag` keeps its name whatever the template says (it is
    /// named by a digest).
    fn digest_named(tag: &Tag) -> bool {
        subject_of_tag(tag).is_some()
    }

    /// The renamed tag, or why it cannot be (over 128 characters).
    pub fn apply(&self, tag: &Tag) -> Result<Tag, String> {
        if Self::digest_named(tag) {
            return Ok(tag.clone());
        }
        let renamed = format!("{}{tag}{}", self.prefix, self.suffix);
        renamed.parse::<Tag>().map_err(|_| {
            format!("tag {tag} cannot be renamed by {self}: {renamed:?} is not a valid tag (a tag holds at most 128 characters)")
        })
    }

    /// The tag `renamed` was made from, `None` when it does not fit the
    /// template (it is not ours).
    pub fn inverse(&self, renamed: &Tag) -> Option<Tag> {
        if Self::digest_named(renamed) {
            return Some(renamed.clone());
        }
        let inner = renamed.as_str().strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)?;
        let tag = inner.parse::<Tag>().ok()?;
        // `v{tag}` must not claim `vsha256-…`: the original must map to this name.
        (!Self::digest_named(&tag) && self.apply(&tag).ok().as_ref() == Some(renamed)).then_some(tag)
    }
}

impl fmt::Display for TagRename {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{PLACEHOLDER}{}", self.prefix, self.suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Tag {
        s.parse().unwrap()
    }

    #[test]
    fn renames_and_maps_back() {
        let r = TagRename::parse("{tag}-mirror").unwrap();
        assert_eq!(r.apply(&t("1.0")).unwrap(), t("1.0-mirror"));
        assert_eq!(r.inverse(&t("1.0-mirror")), Some(t("1.0")));
        assert_eq!(r.inverse(&t("1.0")), None, "a tag not fitting the template is not ours");
        assert_eq!(r.inverse(&t("a-mirror-b")), None);
        let v = TagRename::parse("v{tag}").unwrap();
        assert_eq!(v.apply(&t("2")).unwrap(), t("v2"));
        assert_eq!(v.inverse(&t("v2")), Some(t("2")));
        assert_eq!(v.inverse(&t("2")), None);
        assert_eq!(r.to_string(), "{tag}-mirror");
    }

    #[test]
    fn digest_named_tags_keep_their_names() {
        let hex = "a".repeat(64);
        for name in [format!("sha256-{hex}"), format!("sha256-{hex}.sig"), format!("sha256-{hex}.att"), format!("sha256-{hex}.sbom")] {
            let r = TagRename::parse("{tag}-mirror").unwrap();
            assert_eq!(r.apply(&t(&name)).unwrap(), t(&name));
            assert_eq!(r.inverse(&t(&name)), Some(t(&name)));
        }
        // `v{tag}` applied to a digest-named tag would read back as that tag: not ours.
        let v = TagRename::parse("v{tag}").unwrap();
        assert_eq!(v.inverse(&t(&format!("vsha256-{hex}"))), None);
    }

    #[test]
    fn bad_templates_are_refused_with_the_fix() {
        assert!(matches!(TagRename::parse("mirror"), Err(TagRenameError::NoPlaceholder(_))));
        assert!(matches!(TagRename::parse("{tag}-{tag}"), Err(TagRenameError::Twice(_))));
        assert!(matches!(TagRename::parse("{tag}/x"), Err(TagRenameError::Invalid { .. })));
        assert!(matches!(TagRename::parse("-{tag}"), Err(TagRenameError::Invalid { .. })));
        assert!(TagRename::parse("{tag}").is_ok());
        let long = TagRename::parse(&format!("{{tag}}{}", "x".repeat(100))).unwrap();
        assert!(long.apply(&t(&"y".repeat(40))).unwrap_err().contains("128"));
    }
}
