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
//!
//! The filter itself is here; [`select`] narrows one index's bytes,
//! [`narrow`] applies that to a plan.

use std::fmt;
use std::str::FromStr;

use select::RawPlatform;

mod narrow;
mod select;

pub use narrow::{NarrowMemory, narrow};
pub use select::{Narrowed, Selection, select, selected_children};

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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::narrow::decide;
    use super::*;
    use crate::engine::plan::{Action, CopyReason, PlanItem, SkipReason};
    use crate::registry::{Digest, RegistryError, manifest};
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
