//! Deletions for policies with `delete: true`: a destination tag whose
//! source tag is gone is deleted at the destination — only in repositories
//! in scope and only for tags the policy's filters cover.
//!
//! Registries delete manifests by digest (which removes every tag on that
//! digest in the repository), so a tag whose digest is still carried by a
//! tag that stays is left alone and reported.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::engine::EngineError;
use crate::engine::discover::{AllTags, Scope, discover};
use crate::policy::TagFilter;
use crate::registry::{Digest, Reference, RegistryError, RepoName, Scopes, Tag};
use crate::scheme::Scheme;

/// What a deletion sweep did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// `repo:tag` deleted at the destination.
    pub deleted: Vec<String>,
    /// `repo:tag` left alone, with the reason.
    pub kept: Vec<String>,
    pub errors: Vec<String>,
}

/// Delete the manifest `digest` from `repo` (a registry: `DELETE
/// /v2/<repo>/manifests/<digest>`); a manifest already gone is fine.
pub async fn delete_manifest(dst: &dyn Scheme, repo: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
    dst.delete_manifest(repo, digest).await
}

/// Delete, at `dst`, the covered tags of the repositories in `scope` that
/// the source no longer has.
pub async fn prune(src: &dyn Scheme, dst: &dyn Scheme, scope: &Scope, covers: &Arc<TagFilter>, concurrency: usize) -> Result<PruneReport, EngineError> {
    let all = Scope { tags: Arc::new(AllTags), ..scope.clone() };
    let found = discover(src, dst.url(), &all, concurrency).await?;
    let results: Vec<PruneReport> = futures::stream::iter(found.repos)
        .map(|r| async move {
            let have: HashSet<Tag> = r.tags.into_iter().collect();
            prune_repo(dst, &r.dest, &have, covers).await
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut report = PruneReport::default();
    for r in results {
        report.deleted.extend(r.deleted);
        report.kept.extend(r.kept);
        report.errors.extend(r.errors);
    }
    report.deleted.sort();
    Ok(report)
}

async fn prune_repo(dst: &dyn Scheme, repo: &RepoName, have: &HashSet<Tag>, covers: &TagFilter) -> PruneReport {
    let mut report = PruneReport::default();
    let tags: Vec<Tag> = match dst.tags(repo).await {
        Ok(t) => t.iter().filter_map(|t| t.parse().ok()).collect(),
        Err(e) if e.status() == Some(404) || e.has_code("NAME_UNKNOWN") => return report,
        Err(e) => {
            report.errors.push(format!("cannot list tags of {repo} at {}: {e}", dst.name()));
            return report;
        }
    };
    let gone: Vec<&Tag> = tags.iter().filter(|t| !have.contains(*t) && covers.covers(t.as_str())).collect();
    if gone.is_empty() {
        return report;
    }
    // The digest of every destination tag: deleting by digest must not take a kept tag along.
    let mut digests: HashMap<&Tag, Digest> = HashMap::new();
    for t in &tags {
        match dst.head_manifest(repo, &Reference::Tag(t.clone()), &Scopes::pull(repo)).await {
            Ok(Some(h)) => {
                digests.insert(t, h.digest);
            }
            Ok(None) => {}
            Err(e) => {
                report.errors.push(format!("cannot resolve {repo}:{t} at {}: {e}", dst.name()));
                return report;
            }
        }
    }
    let kept: HashSet<&Digest> = tags.iter().filter(|t| !gone.contains(t)).filter_map(|t| digests.get(t)).collect();
    let mut done: HashSet<Digest> = HashSet::new();
    for t in gone {
        let Some(digest) = digests.get(t) else { continue };
        if kept.contains(digest) {
            report.kept.push(format!("{repo}:{t} (its digest {} is also tagged by a tag that stays)", digest.short()));
            continue;
        }
        if done.contains(digest) {
            report.deleted.push(format!("{repo}:{t}"));
            continue;
        }
        match delete_manifest(dst, repo, digest).await {
            Ok(()) => {
                tracing::info!(registry = %dst.name(), repository = %repo, tag = %t, digest = %digest, "deleted: no longer at the source");
                done.insert(digest.clone());
                report.deleted.push(format!("{repo}:{t}"));
            }
            Err(e) => report.errors.push(format!("cannot delete {repo}:{t} at {}: {e}", dst.name())),
        }
    }
    report
}
