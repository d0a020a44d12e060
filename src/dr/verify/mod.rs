//! Proving parity: every in-scope source tag resolves at the destination to
//! the same digest and media type, and (deep) everything it references —
//! child manifests and blobs — is there to be pulled.
//!
//! Only reads. Tag-level comparison reuses the diff (one `HEAD` per tag per
//! side); the deep check fetches each distinct destination manifest once and
//! `HEAD`s each distinct (repository, blob) once, with bounded concurrency.
//! Referrers: a source fallback tag (`sha256-<hex>`) must be matched by a
//! destination index listing every one of its entries, and each entry must
//! be a manifest the destination serves (deep: pullable, since the deep
//! check walks the destination's index like any other).
//!
//! Here the tag-level verification ([`verify`], [`check_required`],
//! [`pullable`] and the destination-only tags); the report's types are in
//! `report` (re-exported here), the deep check in `deep`.

mod deep;
mod report;

pub use report::{NarrowedTag, ProblemKind, TagProblem, VerifyOptions, VerifyReport};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;

use deep::deep_check;
use crate::engine::EngineError;
use crate::engine::diff::{DiffOptions, diff};
use crate::engine::discover::{AllTags, Discovered, Scope, discover};
use crate::engine::plan::{Action, CopyReason, SkipReason};
use crate::engine::left_behind::settle_subject_bound;
use crate::engine::referrers::{ReferrerOptions, missing_referrers, referrer_gap};
use crate::registry::referrers::{fallback_subject, subject_of_tag};
use crate::registry::{Digest, Reference, RegistryError, RepoName, Scopes, Tag};
use crate::scheme::Scheme;

fn is_not_found(e: &RegistryError) -> bool {
    e.status() == Some(404) || e.has_code("MANIFEST_UNKNOWN") || e.has_code("NAME_UNKNOWN") || e.has_code("BLOB_UNKNOWN")
}

/// Whether a destination-only tag is one the scope would replicate.
fn covered(options: &VerifyOptions, tag: &Tag) -> bool {
    options.covers.as_ref().is_none_or(|f| f.covers(tag.as_str()))
}

/// Compare `scope` of `src` with `dst`.
pub async fn verify(src: &dyn Scheme, dst: &dyn Scheme, scope: &Scope, options: &VerifyOptions) -> Result<VerifyReport, EngineError> {
    let concurrency = options.concurrency.max(1);
    let mut report = VerifyReport {
        source: format!("{}", src.url().with_prefix(&scope.mapping.source_prefix)),
        destination: format!("{}", dst.url().with_prefix(&scope.mapping.dest_prefix)),
        deep: options.deep,
        ..VerifyReport::default()
    };

    // Every source tag (for "only at destination"), then the scope's selection.
    let all = Scope { tags: Arc::new(AllTags), referrers: Arc::new(ReferrerOptions::default()), immutable: false, ..scope.clone() };
    let found = discover(src, dst.url(), &all, concurrency).await?;
    let mut source_tags: HashMap<RepoName, HashSet<Tag>> = HashMap::new();
    report.unmatched_patterns = found.unmatched.clone();
    let mut selected = Discovered {
        repos: Vec::new(),
        problems: found.problems,
        unmatched: found.unmatched,
        referrers: scope.referrers.clone(),
        immutable: false,
        counters: found.counters.clone(),
        narrowing: false,
        literal_companions: false,
        pin: None,
        tag_mapping: scope.mapping.clone(),
    };
    for mut r in found.repos {
        // By their destination names (`tags.rename`).
        let named = r.tags.iter().filter_map(|t| scope.mapping.dest_tag(t).and_then(Result::ok));
        source_tags.insert(r.dest.clone(), named.collect());
        r.tags = scope.select(&r.source, r.tags);
        selected.repos.push(r);
    }
    report.repositories = selected.repos.len();
    let dest_repos: Vec<(RepoName, RepoName)> = selected.repos.iter().map(|r| (r.source.clone(), r.dest.clone())).collect();

    let mut plan = diff(src, dst, selected, DiffOptions { concurrency, overwrite: true, writes: false }).await;
    if let Some(filter) = &scope.platforms {
        // No memory: verify reads every index it checks.
        crate::engine::platforms::narrow(src, dst, &mut plan, filter, concurrency, true, &Default::default()).await;
    }
    // Signatures and fallback tags of manifests that are not in scope.
    settle_subject_bound(dst, &mut plan, false, concurrency, scope.referrers.untagged_subjects).await;
    report.tags = plan.items.len();
    for p in &plan.problems {
        let mut t = TagProblem::new(ProblemKind::Error);
        t.source_repository = Some(p.source_repo.clone());
        t.destination_repository = p.dest_repo.clone();
        t.tag = p.tag.clone();
        t.error = Some(p.error.clone());
        report.push(t);
    }
    // The tags of each source manifest, for naming a referrer's subject.
    let mut subject_names: HashMap<(RepoName, Digest), Vec<String>> = HashMap::new();
    for i in plan.items.iter().filter(|i| subject_of_tag(&i.tag).is_none()) {
        subject_names.entry((i.source_repo.clone(), i.source.digest.clone())).or_default().push(format!("{}:{}", i.source_repo, i.tag));
    }
    let mut present: Vec<(RepoName, Tag, Digest)> = Vec::new();
    // Fallback tags already reported (their deep findings are not counted twice).
    let mut referrer_problems: HashSet<(RepoName, Tag)> = HashSet::new();
    for item in &plan.items {
        let mut t = TagProblem::new(ProblemKind::Missing);
        t.source_repository = Some(item.source_repo.to_string());
        t.destination_repository = Some(item.dest_repo.to_string());
        t.tag = Some(item.tag.to_string());
        t.source_digest = Some(item.source.digest.to_string());
        t.source_media_type = Some(item.source.media_type.clone());
        if let Some(n) = &item.platforms {
            // Compared against the narrowed index, not the source's: say so.
            t.source_digest = Some(format!("{} ({})", n.destination_digest(), n.describe(&item.source.digest)));
            report.narrowed.push(NarrowedTag {
                destination_repository: item.dest_repo.to_string(),
                tag: item.tag.to_string(),
                expected_digest: n.destination_digest().to_string(),
                selection: n.describe(&item.source.digest),
            });
        }
        if let Some(d) = item.dest_head() {
            t.destination_digest = Some(d.digest.to_string());
            t.destination_media_type = Some(d.media_type.clone());
            present.push((item.dest_repo.clone(), item.tag.clone(), d.digest.clone()));
        }
        if let Some(subject) = fallback_subject(&item.tag) {
            // Which tags the subject is (for naming it in reports).
            let named = subject_names.get(&(item.source_repo.clone(), subject.clone())).map(|tags| tags.join(", ")).unwrap_or_default();
            let subject_name = if named.is_empty() { format!("subject {subject}") } else { format!("subject {subject} (tag {named})") };
            // Whether the subject is at the destination: referrers travel
            // only with their subject (a platform the filter dropped, a
            // manifest not in scope), and a destination listing referrers
            // of a subject it does not hold is named.
            let listed = item.dest_head().is_some();
            if listed || matches!(item.action, Action::Copy(_)) {
                match dst.head_manifest(&item.dest_repo, &Reference::Digest(subject.clone()), &Scopes::pull(&item.dest_repo)).await {
                    Ok(Some(_)) => {}
                    Ok(None) if !listed => {
                        // Not replicated with its subject, which is not there (its own check reports it if it should be).
                        report.tags -= 1;
                        continue;
                    }
                    Ok(None) => {
                        let mut p = t.clone();
                        p.error = Some(format!("the destination lists referrers of {subject_name}, which it does not hold"));
                        report.push(TagProblem { kind: ProblemKind::ReferrersMissing, ..p });
                        continue;
                    }
                    Err(e) => {
                        let mut p = t.clone();
                        p.error = Some(format!("cannot check the {subject_name} at the destination: {e}"));
                        report.push(TagProblem { kind: ProblemKind::Error, ..p });
                        continue;
                    }
                }
            }
            // A fallback index at the destination may list more (others'
            // referrers): what counts is that it lists all of the source's.
            match item.action {
                Action::Copy(reason) => {
                    let gap = match referrer_gap(src, dst, &item.source_repo, &item.dest_repo, &item.tag, &scope.referrers.types).await {
                        Ok(gap) => gap,
                        Err(e) => {
                            t.error = Some(e.to_string());
                            report.push(TagProblem { kind: ProblemKind::Error, ..t });
                            continue;
                        }
                    };
                    let listed: Vec<String> = gap
                        .iter()
                        .map(|e| format!("{} ({})", e.digest, e.artifact_type.as_deref().unwrap_or("no artifactType")))
                        .collect();
                    t.missing_manifests = listed.clone();
                    t.error = Some(match reason {
                        CopyReason::Missing => format!("the destination does not list the referrers of {subject_name}: missing {}", listed.join(", ")),
                        _ => format!("the destination's referrers index of {subject_name} lacks {}", listed.join(", ")),
                    });
                    report.push(TagProblem { kind: ProblemKind::ReferrersMissing, ..t });
                }
                Action::Skip(_) => {
                    referrer_problems.insert((item.dest_repo.clone(), item.tag.clone()));
                    match missing_referrers(src, dst, &item.source_repo, &item.dest_repo, &item.tag, &scope.referrers.types).await {
                        Ok(missing) if missing.is_empty() => {
                            referrer_problems.remove(&(item.dest_repo.clone(), item.tag.clone()));
                            report.identical += 1;
                        }
                        Ok(missing) => {
                            t.missing_manifests = missing.iter().map(|d| d.to_string()).collect();
                            t.error = Some(format!("listed referrers of {subject_name} are not at the destination"));
                            report.push(TagProblem { kind: ProblemKind::ReferrersMissing, ..t });
                        }
                        Err(e) => {
                            t.error = Some(e.to_string());
                            report.push(TagProblem { kind: ProblemKind::Error, ..t });
                        }
                    }
                }
            }
            continue;
        }
        match item.action {
            Action::Copy(CopyReason::Missing) => report.push(t),
            Action::Copy(CopyReason::DigestDiffers) => report.push(TagProblem { kind: ProblemKind::DigestDiffers, ..t }),
            Action::Copy(CopyReason::MediaTypeDiffers) => report.push(TagProblem { kind: ProblemKind::MediaTypeDiffers, ..t }),
            Action::Skip(SkipReason::NoSelectedPlatform) => report.no_selected_platform += 1,
            // (Not produced by a verify's diff.)
            Action::Skip(_) | Action::Copy(CopyReason::ReferrersChanged) => report.identical += 1,
        }
    }

    only_at_destination(dst, scope, options, &dest_repos, &source_tags, &mut report).await;
    report.held = present.iter().filter(|(_, tag, _)| subject_of_tag(tag).is_none()).cloned().collect();

    if options.deep && !present.is_empty() {
        let identical: HashSet<(RepoName, Tag)> = plan
            .items
            .iter()
            .filter(|i| matches!(i.action, Action::Skip(s) if s != SkipReason::NoSelectedPlatform))
            .map(|i| (i.dest_repo.clone(), i.tag.clone()))
            .filter(|key| !referrer_problems.contains(key))
            .collect();
        // Where each destination repository comes from (a repair copies from there).
        let sources: HashMap<&RepoName, &RepoName> = plan.items.iter().map(|i| (&i.dest_repo, &i.source_repo)).collect();
                // Narrowed tags need only their selected platforms (a fuller index
        // held by a primary replicated back into is checked in full).
        let narrowed_by = scope.platforms.as_deref().filter(|f| !f.destination_may_hold_more);
        let deep = deep_check(dst, &present, concurrency, narrowed_by, &scope.counters).await;
        report.manifests_checked = deep.manifests;
        report.blobs_checked = deep.blobs;
        for (repo, tag, digest) in &present {
            let Some(missing) = deep.missing.get(&(repo.clone(), digest.clone())) else { continue };
            if missing.is_empty() {
                continue;
            }
            if !identical.contains(&(repo.clone(), tag.clone())) {
                // Already reported as differing; add what is missing to that entry.
                if let Some(p) = report.problems.iter_mut().find(|p| {
                    p.destination_repository.as_deref() == Some(repo.as_str()) && p.tag.as_deref() == Some(tag.as_str())
                }) {
                    missing.fill(p);
                }
                continue;
            }
            report.identical -= 1;
            let mut p = missing.problem(repo, tag, digest);
            p.source_repository = sources.get(repo).map(ToString::to_string);
            report.push(p);
        }
    }
    report.problems.sort_by_key(|p| (p.destination_repository.clone(), p.tag.clone()));
    Ok(report)
}

/// With a policy `require:`, judge every in-scope tag the destination
/// holds (see [`VerifyReport::held`]) by the destination's own signatures
/// and referrers: a tag there that would not pass the gate is reported
/// `unsigned`, with its reason. One judgement per distinct manifest.
pub async fn check_required(dst: &Arc<dyn Scheme>, scope: &Scope, report: &mut VerifyReport, concurrency: usize) {
    let Some(req) = scope.require.as_deref() else { return };
    let mut seen = HashSet::new();
    let held: Vec<(RepoName, Tag, Digest)> = report.held.iter().filter(|(r, _, d)| seen.insert((r.clone(), d.clone()))).cloned().collect();
    let judged: Vec<((RepoName, Digest), Result<Option<String>, RegistryError>)> = futures::stream::iter(held)
        .map(|(repo, _, digest)| async move { ((repo.clone(), digest.clone()), crate::engine::gate::judge_manifest(dst, &repo, &digest, req).await) })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let judged: HashMap<(RepoName, Digest), Result<Option<String>, RegistryError>> = judged.into_iter().collect();
    for (repo, tag, digest) in report.held.clone() {
        let (kind, error) = match judged.get(&(repo.clone(), digest.clone())) {
            Some(Ok(Some(why))) => (ProblemKind::Unsigned, why.clone()),
            Some(Err(e)) => (ProblemKind::Error, format!("cannot check its signature: {e}")),
            _ => continue,
        };
        let mut t = TagProblem::new(kind);
        t.destination_repository = Some(repo.to_string());
        t.tag = Some(tag.to_string());
        t.destination_digest = Some(digest.to_string());
        t.error = Some(error);
        if report.identical > 0 && !report.problems.iter().any(|p| p.destination_repository.as_deref() == Some(repo.as_str()) && p.tag.as_deref() == Some(tag.as_str())) {
            report.identical -= 1;
        }
        report.push(t);
    }
    report.problems.sort_by_key(|p| (p.destination_repository.clone(), p.tag.clone()));
}

/// Prove that `site` alone serves in full every tag of `scope` it holds
/// (its repositories are the scope's *source*; `elsewhere` is where they
/// would be replicated to, only compared with). For a DR site whose primary
/// is gone: there is nothing to compare with, but everything must pull.
/// Every tag is a deep check; the report's `tags` counts them.
pub async fn pullable(site: &dyn Scheme, elsewhere: &crate::registry::RegistryUrl, scope: &Scope, options: &VerifyOptions) -> Result<VerifyReport, EngineError> {
    let concurrency = options.concurrency.max(1);
    let at = format!("{}", site.url().with_prefix(&scope.mapping.source_prefix));
    let mut report = VerifyReport { source: at.clone(), destination: at, deep: true, ..VerifyReport::default() };
    let found = discover(site, elsewhere, scope, concurrency).await?;
    report.unmatched_patterns = found.unmatched;
    report.repositories = found.repos.len();
    for p in found.problems {
        let mut t = TagProblem::new(ProblemKind::Error);
        t.destination_repository = Some(p.source_repo);
        t.tag = p.tag;
        t.error = Some(p.error);
        report.push(t);
    }
    let tags: Vec<(RepoName, Tag)> = found.repos.iter().flat_map(|r| r.tags.iter().map(|t| (r.source.clone(), t.clone()))).collect();
    report.tags = tags.len();
    let heads: Vec<(RepoName, Tag, Result<Option<Digest>, String>)> = futures::stream::iter(tags)
        .map(|(repo, tag)| async move {
            let head = site.head_manifest(&repo, &Reference::Tag(tag.clone()), &Scopes::pull(&repo)).await;
            (repo, tag, head.map(|h| h.map(|h| h.digest)).map_err(|e| e.to_string()))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut present = Vec::new();
    for (repo, tag, head) in heads {
        let mut t = TagProblem::new(ProblemKind::NotPullable);
        t.destination_repository = Some(repo.to_string());
        t.tag = Some(tag.to_string());
        match head {
            Ok(Some(digest)) => present.push((repo, tag, digest)),
            Ok(None) => {
                t.error = Some("listed, but the tag does not resolve".into());
                report.push(t);
            }
            Err(e) => report.push(TagProblem { kind: ProblemKind::Error, error: Some(e), ..t }),
        }
    }
    report.held = present.iter().filter(|(_, tag, _)| subject_of_tag(tag).is_none()).cloned().collect();
    // The site holds what a platform filter selected (its policy's, in
    // either direction): only those children must be pullable.
    let deep = deep_check(site, &present, concurrency, scope.platforms.as_deref(), &scope.counters).await;
    report.manifests_checked = deep.manifests;
    report.blobs_checked = deep.blobs;
    for (repo, tag, digest) in &present {
        match deep.missing.get(&(repo.clone(), digest.clone())) {
            Some(missing) if !missing.is_empty() => {
                report.push(missing.problem(repo, tag, digest));
            }
            _ => report.identical += 1,
        }
    }
    report.problems.sort_by_key(|p| (p.destination_repository.clone(), p.tag.clone()));
    Ok(report)
}

/// Destination tags (of repositories in scope) that the source does not have.
async fn only_at_destination(
    dst: &dyn Scheme,
    scope: &Scope,
    options: &VerifyOptions,
    dest_repos: &[(RepoName, RepoName)],
    source_tags: &HashMap<RepoName, HashSet<Tag>>,
    report: &mut VerifyReport,
) {
    let mut repos: Vec<(Option<RepoName>, RepoName)> = dest_repos.iter().map(|(s, d)| (Some(s.clone()), d.clone())).collect();
    // Whole repositories that exist only at the destination (when it has a catalog).
    if scope.explicit.is_empty() {
        let back = scope.mapping.reversed();
        match dst.catalog().await {
            Ok(names) => {
                let known: HashSet<&RepoName> = dest_repos.iter().map(|(_, d)| d).collect();
                for name in names {
                    let Ok(repo) = name.parse::<RepoName>() else { continue };
                    let Some(relative) = back.relative(&repo) else { continue };
                    if !known.contains(&repo) && !crate::engine::discover::is_reserved(relative.as_str()) && scope.repos.matches(&back.scope_name(relative.as_str())) {
                        repos.push((back.map(&repo), repo));
                    }
                }
            }
            Err(e) => tracing::debug!(registry = %dst.name(), error = %e, "no destination catalog: repositories only at the destination are not looked for"),
        }
    }
    let empty = HashSet::new();
    let listings: Vec<_> = futures::stream::iter(repos)
        .map(|(source, dest)| async move {
            let tags = dst.tags(&dest).await;
            (source, dest, tags)
        })
        .buffered(options.concurrency.max(1))
        .collect()
        .await;
    for (source, dest, listing) in listings {
        let tags = match listing {
            Ok(t) => t,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => {
                let mut t = TagProblem::new(ProblemKind::Error);
                t.destination_repository = Some(dest.to_string());
                t.error = Some(format!("cannot list destination tags: {e}"));
                report.push(t);
                continue;
            }
        };
        let have = source_tags.get(&dest).unwrap_or(&empty);
        for tag in tags.iter().filter_map(|t| t.parse::<Tag>().ok()) {
            // A tag not fitting the policy's `tags.rename` template is not its business.
            let Some(named) = scope.mapping.scope_tag_of_dest(&tag) else { continue };
            if have.contains(&tag) || !covered(options, &named) {
                continue;
            }
            let mut t = TagProblem::new(ProblemKind::OnlyAtDestination);
            t.source_repository = source.as_ref().map(ToString::to_string);
            t.destination_repository = Some(dest.to_string());
            t.tag = Some(tag.to_string());
            report.push(t);
        }
    }
}
