//! Deletions for policies with `delete: true`, the last step of a pass
//! (run by `pass`, inside the job's lease): a destination tag whose source
//! tag is gone is deleted at the destination — only in repositories in
//! scope, only for tags the policy's filters cover, and only when it never
//! destroys anything regferry did not write:
//!
//! - ownership: the state records the digest regferry wrote per destination
//!   tag (`state::owned`); a tag without such a record, or whose digest
//!   changed since (someone pushed there), is never deleted. A state that
//!   lost its records deletes nothing and says so;
//! - a fresh `GET` of the source tag right before the delete confirms it is
//!   really gone (another worker, a late push);
//! - reachability: a manifest digest reachable from any tag that stays (an
//!   index's children at any depth, the subject of a kept referrer or
//!   signature tag, another tag on the same digest) is never deleted by
//!   digest. Where the registry can delete a tag alone (OCI 1.1), the tag
//!   is deleted that way; otherwise it stays, with the reason.
//!
//! The guard: a sweep first decides everything it would delete, then
//! deletes nothing from a repository whose source lists no tags at all, and
//! nothing at all when the deletions exceed the policy's `max_delete` share
//! of the destination's in-scope tags — unless the operator forces it for
//! this pass. A refusal is reported (the pass fails), never silent.
//!
//! Reads the state's records through its caller (never the state itself),
//! and never copies anything.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::engine::EngineError;
use crate::engine::discover::{AllTags, Scope, discover};
use crate::engine::plan::RepoMapping;
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
    /// (destination repository, tag) deleted: their ownership records go.
    #[serde(skip)]
    pub forget: Vec<(String, String)>,
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

/// What regferry wrote at the destination: digest by (destination repository, tag).
pub type Owned = HashMap<(String, String), String>;

/// Delete the manifest `digest` from `repo` (a registry: `DELETE
/// /v2/<repo>/manifests/<digest>`); a manifest already gone is fine.
pub async fn delete_manifest(dst: &dyn Scheme, repo: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
    dst.delete_manifest(repo, digest).await
}

/// How a due tag goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// Its manifest, by digest (nothing that stays needs it).
    Digest,
    /// The tag alone: a tag that stays needs its manifest.
    TagOnly,
}

/// What one repository would lose.
#[derive(Default)]
struct RepoSweep {
    repo: Option<RepoName>,
    /// The source repository it mirrors (asked again right before a delete).
    source: Option<RepoName>,
    /// The source lists no tags at all for this repository.
    source_empty: bool,
    /// Covered tags at the destination.
    covered: usize,
    /// (tag, digest, how) to delete; several tags may share a digest.
    delete: Vec<(Tag, Digest, How)>,
    kept: Vec<String>,
    errors: Vec<String>,
}

/// The one place a sweep maps names: the source repository whose
/// destination is `dest` (as discovery paired them). A renaming mapping
/// hooks in here.
fn source_of(pair: &crate::engine::discover::RepoTags) -> (RepoName, RepoName) {
    (pair.source.clone(), pair.dest.clone())
}

/// Delete, at `dst`, the covered tags of the repositories in `scope` that
/// the source no longer has and that regferry wrote (`owned`), within the
/// `guard`, never taking along what a tag that stays needs.
pub async fn prune(src: &dyn Scheme, dst: &dyn Scheme, scope: &Scope, covers: &Arc<TagFilter>, concurrency: usize, guard: Guard, owned: &Owned) -> Result<PruneReport, EngineError> {
    let all = Scope { tags: Arc::new(AllTags), ..scope.clone() };
    let found = discover(src, dst.url(), &all, concurrency).await?;
    let sweeps: Vec<RepoSweep> = futures::stream::iter(found.repos)
        .map(|r| async move {
            let (source, dest) = source_of(&r);
            // By their destination names (`tags.rename`).
            let have: HashSet<Tag> = r.tags.iter().filter_map(|t| scope.mapping.dest_tag(t).and_then(Result::ok)).collect();
            sweep_repo(dst, source, &dest, &have, covers, &scope.mapping, owned).await
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut report = PruneReport { forced: guard.force, dry_run: guard.dry_run, ..PruneReport::default() };
    if owned.is_empty() && sweeps.iter().any(|s| !s.kept.is_empty()) {
        report.kept.push(format!(
            "the state has no record of what this policy wrote at {}: deleting nothing there until passes have recorded it",
            dst.url()
        ));
    }
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
        let (Some(repo), Some(source)) = (&s.repo, &s.source) else { continue };
        let mut done: HashSet<&Digest> = HashSet::new();
        for (t, digest, how) in &s.delete {
            if *how == How::Digest && done.contains(digest) {
                report.deleted.push(format!("{repo}:{t}"));
                report.forget.push((repo.to_string(), t.to_string()));
                continue;
            }
            // Right before the delete: is it really gone at the source?
            let Some(source_tag) = scope.mapping.source_tag(t) else { continue };
            match gone_at_source(src, source, &source_tag).await {
                Ok(true) => {}
                Ok(false) => {
                    report.kept.push(format!("{repo}:{t} (the source has it again)"));
                    continue;
                }
                Err(e) => {
                    report.errors.push(format!("not deleting {repo}:{t}: cannot confirm at the source that {source}:{source_tag} is gone: {e}"));
                    continue;
                }
            }
            if guard.dry_run {
                report.deleted.push(format!("{repo}:{t}"));
                continue;
            }
            let deleted = match how {
                How::Digest => delete_manifest(dst, repo, digest).await.map(|()| true),
                How::TagOnly => dst.delete_tag(repo, t).await,
            };
            match deleted {
                Ok(true) => {
                    tracing::info!(registry = %dst.name(), repository = %repo, tag = %t, digest = %digest, "deleted: no longer at the source");
                    if *how == How::Digest {
                        done.insert(digest);
                    }
                    report.deleted.push(format!("{repo}:{t}"));
                    report.forget.push((repo.to_string(), t.to_string()));
                }
                Ok(false) => report.kept.push(format!(
                    "{repo}:{t} (its manifest {} is still needed by a tag that stays, and {} cannot delete a tag alone)",
                    digest.short(),
                    dst.name()
                )),
                Err(e) => report.errors.push(format!("cannot delete {repo}:{t} at {}: {e}", dst.name())),
            }
        }
    }
    report.deleted.sort();
    Ok(report)
}

/// A fresh request to the source: `true` only when it clearly answers that
/// `repo:tag` does not exist (a `GET`: some fronts answer `HEAD` 404 for
/// manifests that exist).
async fn gone_at_source(src: &dyn Scheme, repo: &RepoName, tag: &Tag) -> Result<bool, RegistryError> {
    match src.get_manifest(repo, &Reference::Tag(tag.clone()), &Scopes::pull(repo)).await {
        Ok(_) => Ok(false),
        Err(e) if e.status() == Some(404) || e.has_code("MANIFEST_UNKNOWN") || e.has_code("NAME_UNKNOWN") => Ok(true),
        Err(e) => Err(e),
    }
}

/// How deep index children are followed when deciding what a kept tag needs.
const MAX_DEPTH: usize = 4;

/// Decide what `repo` at `dst` would lose (reads only).
async fn sweep_repo(dst: &dyn Scheme, source: RepoName, repo: &RepoName, have: &HashSet<Tag>, covers: &TagFilter, mapping: &RepoMapping, owned: &Owned) -> RepoSweep {
    let mut sweep = RepoSweep { repo: Some(repo.clone()), source: Some(source), source_empty: have.is_empty(), ..RepoSweep::default() };
    let tags: Vec<Tag> = match dst.tags(repo).await {
        Ok(t) => t.iter().filter_map(|t| t.parse().ok()).collect(),
        Err(e) if e.status() == Some(404) || e.has_code("NAME_UNKNOWN") => return sweep,
        Err(e) => {
            sweep.errors.push(format!("cannot list tags of {repo} at {}: {e}", dst.name()));
            return sweep;
        }
    };
    // Covered: named by the policy's rules (a tag not fitting its
    // `tags.rename` template is not its business, whatever it is called).
    let covered = |t: &Tag| mapping.scope_tag_of_dest(t).is_some_and(|named| covers.covers(named.as_str()));
    sweep.covered = tags.iter().filter(|t| covered(t)).count();
    let gone: Vec<&Tag> = tags.iter().filter(|t| !have.contains(*t) && covered(t)).collect();
    if gone.is_empty() {
        return sweep;
    }
    // The digest of every destination tag: deleting by digest must not take a kept tag along.
    let mut heads: HashMap<&Tag, crate::registry::ManifestHead> = HashMap::new();
    for t in &tags {
        match dst.head_manifest(repo, &Reference::Tag(t.clone()), &Scopes::pull(repo)).await {
            Ok(Some(h)) => {
                heads.insert(t, h);
            }
            Ok(None) => {}
            Err(e) => {
                sweep.errors.push(format!("cannot resolve {repo}:{t} at {}: {e}", dst.name()));
                return sweep;
            }
        }
    }
    // Only what regferry wrote, with the digest it wrote.
    let mut due: Vec<(&Tag, &Digest)> = Vec::new();
    for t in gone {
        let Some(head) = heads.get(t) else { continue };
        match owned.get(&(repo.to_string(), t.to_string())) {
            Some(d) if d == head.digest.as_str() => due.push((t, &head.digest)),
            Some(d) => sweep.kept.push(format!(
                "{repo}:{t} (it is {} now, not the {} regferry wrote: someone else pushed it)",
                head.digest.short(),
                d.get(..19).unwrap_or(d)
            )),
            None => sweep.kept.push(format!("{repo}:{t} (regferry has no record of writing it here)")),
        }
    }
    if due.is_empty() {
        return sweep;
    }
    // Everything a tag that stays needs: its manifest, an index's children
    // (at any depth), the subject of a referrer or signature tag.
    let leaving: HashSet<&Tag> = due.iter().map(|(t, _)| *t).collect();
    let stays: Vec<&Tag> = tags.iter().filter(|t| !leaving.contains(t)).collect();
    let needed = match needed_by(dst, repo, &stays, &heads).await {
        Ok(n) => n,
        Err(e) => {
            sweep.errors.push(format!("not deleting in {repo}: cannot read what the tags that stay need at {}: {e}", dst.name()));
            return sweep;
        }
    };
    for (t, digest) in due {
        let how = if needed.contains(digest) { How::TagOnly } else { How::Digest };
        sweep.delete.push((t.clone(), digest.clone(), how));
    }
    sweep
}

/// The manifest digests the tags `stays` need in `repo` at `dst`: their
/// own, an index's children at any depth (read with one `GET` per index),
/// and the subject a referrer or signature tag names (`sha256-<hex>…`; an
/// untagged referrer found only through the referrers API is not a tag that
/// stays, so it protects nothing here).
async fn needed_by(dst: &dyn Scheme, repo: &RepoName, stays: &[&Tag], heads: &HashMap<&Tag, crate::registry::ManifestHead>) -> Result<HashSet<Digest>, RegistryError> {
    let mut needed: HashSet<Digest> = HashSet::new();
    let mut indexes: Vec<(Digest, usize)> = Vec::new();
    for t in stays {
        if let Some(subject) = crate::registry::referrers::subject_of_tag(t) {
            needed.insert(subject);
        }
        let Some(head) = heads.get(*t) else { continue };
        if needed.insert(head.digest.clone()) && crate::registry::manifest::kind_of(&head.media_type) == Some(crate::registry::manifest::Kind::Index) {
            indexes.push((head.digest.clone(), 0));
        }
    }
    let mut seen: HashSet<Digest> = HashSet::new();
    while let Some((digest, depth)) = indexes.pop() {
        if depth >= MAX_DEPTH || !seen.insert(digest.clone()) {
            continue;
        }
        let body = dst.get_manifest(repo, &Reference::Digest(digest.clone()), &Scopes::pull(repo)).await?;
        let Ok(parsed) = crate::registry::manifest::parse(&body.bytes, &body.content_type) else { continue };
        if let Some(subject) = &parsed.subject {
            needed.insert(subject.digest.clone());
        }
        for child in parsed.manifests {
            let is_index = child.media_type.as_deref().and_then(crate::registry::manifest::kind_of) == Some(crate::registry::manifest::Kind::Index);
            if needed.insert(child.digest.clone()) && is_index {
                indexes.push((child.digest, depth + 1));
            }
        }
    }
    Ok(needed)
}
