//! Referrers of immutable tags (policy `tags: { immutable: true }`): such a
//! tag is never compared again once the destination lists it, but a
//! signature or SBOM attached later to its manifest through the source's
//! referrers API must still travel. [`bring_back`] puts those tags back into
//! the plan as up to date, for [`super::referrers::check_api_referrers`] to
//! ask the API about them like about any other tag (one request per
//! manifest; only a changed list is synced).
//!
//! The subject is the manifest the destination holds under the tag (an
//! immutable tag is what it was when copied): its digest and media type are
//! read once with a `HEAD` at the destination and remembered under
//! [`tag_key`] in the job's referrer lists, so an unchanged tag costs one
//! referrers request per pass and no manifest request at all.
//!
//! Never brought back: an index a platform filter narrows (the destination
//! holds another manifest, with no referrers at the source). This module
//! never writes to a registry and never touches the state database.

use std::collections::HashMap;

use futures::StreamExt;

use super::plan::{Action, Plan, PlanItem, SkipReason};
use crate::registry::manifest;
use crate::registry::{Digest, ManifestHead, Reference, RepoName, Scopes, Tag};
use crate::scheme::Scheme;

/// The key under which a job's referrer lists remember the manifest (digest
/// and media type, space-separated) an immutable tag resolves to at the destination.
pub fn tag_key(tag: &Tag) -> String {
    format!("tag:{tag}")
}

fn remembered(seen: &HashMap<(String, String), String>, repo: &RepoName, tag: &Tag) -> Option<ManifestHead> {
    let value = seen.get(&(repo.to_string(), tag_key(tag)))?;
    let (digest, media_type) = value.split_once(' ')?;
    Some(ManifestHead { digest: digest.parse::<Digest>().ok()?, media_type: media_type.to_string() })
}

/// Put the plan's unchecked immutable tags ([`Plan::unchecked_tags`]) back
/// as up-to-date items (listed in [`Plan::rechecked`]). Returns, by plan
/// index, the (key, value) to remember once that item succeeded, for tags
/// whose manifest was read now. `narrowing`: a platform filter applies.
pub async fn bring_back(
    dst: &dyn Scheme,
    plan: &mut Plan,
    seen: &HashMap<(String, String), String>,
    narrowing: bool,
    concurrency: usize,
) -> Vec<(usize, String, String)> {
    let tags = std::mem::take(&mut plan.unchecked_tags);
    if tags.is_empty() {
        return Vec::new();
    }
    let found: Vec<(RepoName, RepoName, Tag, Option<Tag>, ManifestHead, bool)> = futures::stream::iter(tags)
        .map(|(source_repo, dest_repo, tag, source_tag)| async move {
            if let Some(head) = remembered(seen, &source_repo, &tag) {
                return Some((source_repo, dest_repo, tag, source_tag, head, false));
            }
            match dst.head_manifest(&dest_repo, &Reference::Tag(tag.clone()), &Scopes::push(&dest_repo)).await {
                Ok(Some(head)) => Some((source_repo, dest_repo, tag, source_tag, head, true)),
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!(repository = %dest_repo, tag = %tag, error = %e, "cannot read an immutable tag at the destination; its referrers are checked next pass");
                    None
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|f| async move { f })
        .collect()
        .await;
    let mut record = Vec::new();
    for (source_repo, dest_repo, tag, source_tag, head, read) in found {
        let index = manifest::kind_of(&manifest::normalise_media_type(&head.media_type)) == Some(manifest::Kind::Index);
        if narrowing && index {
            continue;
        }
        if read {
            record.push((plan.items.len(), tag_key(&tag), format!("{} {}", head.digest, head.media_type)));
        }
        plan.rechecked.insert((source_repo.clone(), tag.clone()));
        plan.unchecked = plan.unchecked.saturating_sub(1);
        plan.items.push(PlanItem {
            source_repo,
            dest_repo,
            tag,
            source: head,
            from: source_tag.map(|t| Box::new(Reference::Tag(t))),
            source_body: None,
            dest: None,
            action: Action::Skip(SkipReason::UpToDate),
            platforms: None,
        });
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_tag_needs_no_request() {
        let repo: RepoName = "team/app".parse().unwrap();
        let tag: Tag = "1.0".parse().unwrap();
        let digest = Digest::sha256_of(b"x");
        let mut seen = HashMap::new();
        assert!(remembered(&seen, &repo, &tag).is_none());
        seen.insert((repo.to_string(), tag_key(&tag)), format!("{digest} application/vnd.oci.image.manifest.v1+json"));
        let head = remembered(&seen, &repo, &tag).expect("remembered");
        assert_eq!(head.digest, digest);
        assert_eq!(head.media_type, "application/vnd.oci.image.manifest.v1+json");
        seen.insert((repo.to_string(), tag_key(&tag)), "garbage".into());
        assert!(remembered(&seen, &repo, &tag).is_none());
    }
}
