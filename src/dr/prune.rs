//! Deletions for policies with `delete: true`: a destination tag whose
//! source tag is gone is deleted at the destination — only in repositories
//! in scope and only for tags the policy's filters cover.
//!
//! Registries delete manifests by digest (which removes every tag on that
//! digest in the repository), so a tag whose digest is still carried by a
//! tag that stays is left alone and reported.
//!
//! The guard: a sweep first decides everything it would delete, then
//! deletes nothing from a repository whose source lists no tags at all, and
//! nothing at all when the deletions exceed the policy's `max_delete` share
//! of the destination's in-scope tags — unless the operator forces it for
//! this pass. A refusal is reported (the pass fails), never silent.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::engine::EngineError;
use crate::engine::discover::{AllTags, Scope, discover};
use crate::policy::{MaxDelete, TagFilter};
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
    /// Why deletions were refused by the guard (the pass fails with these).
    pub refused: Vec<String>,
    /// Covered destination tags in the repositories in scope.
    pub in_scope: usize,
    /// Deletions the sweep found due (before the guard).
    pub due: usize,
    /// The guard was overridden for this pass.
    pub forced: bool,
    /// Nothing was deleted: `deleted` is what would have been.
    pub dry_run: bool,
}

/// The deletion guard of a sweep.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    pub max_delete: MaxDelete,
    /// Delete beyond the share and from repositories whose source lists no tags.
    pub force: bool,
    /// Decide and report only (`run --dry-run`): `deleted` lists what would go.
    pub dry_run: bool,
}

/// Delete the manifest `digest` from `repo` (a registry: `DELETE
/// /v2/<repo>/manifests/<digest>`); a manifest already gone is fine.
pub async fn delete_manifest(dst: &dyn Scheme, repo: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
    dst.delete_manifest(repo, digest).await
}

/// What one repository would lose.
#[derive(Default)]
struct RepoSweep {
    repo: Option<RepoName>,
    /// The source lists no tags at all for this repository.
    source_empty: bool,
    /// Covered tags at the destination.
    covered: usize,
    /// (tag, digest) to delete; several tags may share a digest.
    delete: Vec<(Tag, Digest)>,
    kept: Vec<String>,
    errors: Vec<String>,
}

/// Delete, at `dst`, the covered tags of the repositories in `scope` that
/// the source no longer has, within the `guard`.
pub async fn prune(src: &dyn Scheme, dst: &dyn Scheme, scope: &Scope, covers: &Arc<TagFilter>, concurrency: usize, guard: Guard) -> Result<PruneReport, EngineError> {
    let all = Scope { tags: Arc::new(AllTags), ..scope.clone() };
    let found = discover(src, dst.url(), &all, concurrency).await?;
    let sweeps: Vec<RepoSweep> = futures::stream::iter(found.repos)
        .map(|r| async move {
            let have: HashSet<Tag> = r.tags.into_iter().collect();
            sweep_repo(dst, &r.dest, &have, covers).await
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut report = PruneReport { forced: guard.force, dry_run: guard.dry_run, ..PruneReport::default() };
    let mut due: Vec<RepoSweep> = Vec::new();
    for mut s in sweeps {
        report.in_scope += s.covered;
        report.kept.append(&mut s.kept);
        report.errors.append(&mut s.errors);
        report.due += s.delete.len();
        if !s.delete.is_empty() {
            due.push(s);
        }
    }
    if !guard.force {
        // A repository the source lists empty: a wrong credential scope or a
        // half-restored registry looks exactly like this.
        due.retain(|s| {
            let Some(repo) = &s.repo else { return true };
            if s.source_empty {
                report.refused.push(format!(
                    "not deleting the {} tag(s) of {repo}: the source lists no tags at all for it (force this pass with `regferry run --force-delete`)",
                    s.delete.len()
                ));
            }
            !s.source_empty
        });
        let count: usize = due.iter().map(|s| s.delete.len()).sum();
        let allowed = guard.max_delete.allowed(report.in_scope);
        if count > allowed {
            report.refused.push(format!(
                "not deleting {count} of {} in-scope tag(s) at {}: above max_delete {} (at most {allowed} per pass; force this pass with `regferry run --force-delete`)",
                report.in_scope,
                dst.url(),
                guard.max_delete
            ));
            due.clear();
        }
    }
    for s in due {
        let Some(repo) = &s.repo else { continue };
        let mut done: HashSet<&Digest> = HashSet::new();
        for (t, digest) in &s.delete {
            if done.contains(digest) || guard.dry_run {
                report.deleted.push(format!("{repo}:{t}"));
                continue;
            }
            match delete_manifest(dst, repo, digest).await {
                Ok(()) => {
                    tracing::info!(registry = %dst.name(), repository = %repo, tag = %t, digest = %digest, "deleted: no longer at the source");
                    done.insert(digest);
                    report.deleted.push(format!("{repo}:{t}"));
                }
                Err(e) => report.errors.push(format!("cannot delete {repo}:{t} at {}: {e}", dst.name())),
            }
        }
    }
    report.deleted.sort();
    Ok(report)
}

/// Decide what `repo` at `dst` would lose (reads only).
async fn sweep_repo(dst: &dyn Scheme, repo: &RepoName, have: &HashSet<Tag>, covers: &TagFilter) -> RepoSweep {
    let mut sweep = RepoSweep { repo: Some(repo.clone()), source_empty: have.is_empty(), ..RepoSweep::default() };
    let tags: Vec<Tag> = match dst.tags(repo).await {
        Ok(t) => t.iter().filter_map(|t| t.parse().ok()).collect(),
        Err(e) if e.status() == Some(404) || e.has_code("NAME_UNKNOWN") => return sweep,
        Err(e) => {
            sweep.errors.push(format!("cannot list tags of {repo} at {}: {e}", dst.name()));
            return sweep;
        }
    };
    sweep.covered = tags.iter().filter(|t| covers.covers(t.as_str())).count();
    let gone: Vec<&Tag> = tags.iter().filter(|t| !have.contains(*t) && covers.covers(t.as_str())).collect();
    if gone.is_empty() {
        return sweep;
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
                sweep.errors.push(format!("cannot resolve {repo}:{t} at {}: {e}", dst.name()));
                return sweep;
            }
        }
    }
    let kept: HashSet<&Digest> = tags.iter().filter(|t| !gone.contains(t)).filter_map(|t| digests.get(t)).collect();
    for t in gone {
        let Some(digest) = digests.get(t) else { continue };
        if kept.contains(digest) {
            sweep.kept.push(format!("{repo}:{t} (its digest {} is also tagged by a tag that stays)", digest.short()));
            continue;
        }
        sweep.delete.push((t.clone(), digest.clone()));
    }
    sweep
}
