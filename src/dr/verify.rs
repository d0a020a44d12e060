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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::engine::EngineError;
use crate::engine::diff::{DiffOptions, diff};
use crate::engine::discover::{AllTags, Discovered, Scope, discover};
use crate::engine::plan::{Action, CopyReason, SkipReason};
use crate::engine::platforms::{self, PlatformFilter, Selection};
use crate::engine::left_behind::settle_subject_bound;
use crate::engine::referrers::{ReferrerOptions, missing_referrers, referrer_gap};
use crate::registry::referrers::{fallback_subject, subject_of_tag};
use crate::policy::TagFilter;
use crate::registry::manifest::{self, Kind};
use crate::registry::{Digest, Reference, RegistryError, RepoName, Scopes, Tag};
use crate::scheme::Scheme;

/// How to verify.
#[derive(Clone)]
pub struct VerifyOptions {
    /// Also prove that every child manifest and blob is present at the destination.
    pub deep: bool,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Which destination-only tags count as "in scope" (a policy's name
    /// filters); `None`: every tag.
    pub covers: Option<Arc<TagFilter>>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { deep: false, concurrency: 8, covers: None }
    }
}

/// What is wrong with one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Missing,
    DigestDiffers,
    MediaTypeDiffers,
    OnlyAtDestination,
    NotPullable,
    /// A subject's referrers are not (all) listed or present at the destination.
    ReferrersMissing,
    /// The destination's tag does not meet the policy's `require:` there.
    Unsigned,
    Error,
}

impl ProblemKind {
    pub fn label(self) -> &'static str {
        match self {
            ProblemKind::Missing => "missing",
            ProblemKind::DigestDiffers => "digest differs",
            ProblemKind::MediaTypeDiffers => "media type differs",
            ProblemKind::OnlyAtDestination => "only at destination",
            ProblemKind::NotPullable => "not pullable",
            ProblemKind::ReferrersMissing => "referrers missing",
            ProblemKind::Unsigned => "unsigned",
            ProblemKind::Error => "error",
        }
    }
}

/// One tag that is not identical (or not pullable).
#[derive(Debug, Clone, Serialize)]
pub struct TagProblem {
    pub kind: ProblemKind,
    pub source_repository: Option<String>,
    pub destination_repository: Option<String>,
    pub tag: Option<String>,
    pub source_digest: Option<String>,
    pub destination_digest: Option<String>,
    pub source_media_type: Option<String>,
    pub destination_media_type: Option<String>,
    /// Deep: manifests referenced by the tag that the destination does not serve.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_manifests: Vec<String>,
    /// Deep: blobs referenced by the tag that the destination does not serve.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_blobs: Vec<String>,
    pub error: Option<String>,
}

impl TagProblem {
    fn new(kind: ProblemKind) -> TagProblem {
        TagProblem {
            kind,
            source_repository: None,
            destination_repository: None,
            tag: None,
            source_digest: None,
            destination_digest: None,
            source_media_type: None,
            destination_media_type: None,
            missing_manifests: Vec::new(),
            missing_blobs: Vec::new(),
            error: None,
        }
    }

    /// `repo:tag` at the destination (or the source when there is none).
    pub fn name(&self) -> String {
        let repo = self.destination_repository.as_deref().or(self.source_repository.as_deref()).unwrap_or("?");
        match &self.tag {
            Some(t) => format!("{repo}:{t}"),
            None => repo.to_string(),
        }
    }
}

/// Counts and problems of one verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub source: String,
    pub destination: String,
    pub deep: bool,
    pub repositories: usize,
    /// Source tags compared.
    pub tags: usize,
    pub identical: usize,
    pub missing: usize,
    pub digest_differs: usize,
    pub media_type_differs: usize,
    pub only_at_destination: usize,
    pub not_pullable: usize,
    pub referrers_missing: usize,
    /// Destination tags that do not meet the policy's `require:` there.
    pub unsigned: usize,
    pub errors: usize,
    /// Deep: distinct manifests fetched and distinct (repository, blob) pairs checked.
    pub manifests_checked: usize,
    pub blobs_checked: usize,
    /// Tags skipped because their index holds none of the selected
    /// platforms (with the signature companions of such an index).
    pub no_selected_platform: usize,
    /// Tags whose index a platform filter narrowed: what the destination
    /// was compared against (`linux/amd64 of sha256:… (rewritten to sha256:…)`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub narrowed: Vec<NarrowedTag>,
    pub problems: Vec<TagProblem>,
    /// Repository globs that matched nothing at the source (a warning: the
    /// scope is probably not what was meant).
    pub unmatched_patterns: Vec<String>,
    /// The destination's in-scope tags (repository, tag, digest), for
    /// [`check_required`].
    #[serde(skip)]
    pub held: Vec<(RepoName, Tag, Digest)>,
}

/// A tag compared against its index narrowed to the selected platforms.
#[derive(Debug, Clone, Serialize)]
pub struct NarrowedTag {
    pub destination_repository: String,
    pub tag: String,
    /// The digest the destination must hold.
    pub expected_digest: String,
    /// `linux/amd64,linux/arm64 of sha256:… (rewritten to sha256:…)`.
    pub selection: String,
}

impl VerifyReport {
    /// Everything in scope identical (and pullable, when deep).
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn push(&mut self, p: TagProblem) {
        match p.kind {
            ProblemKind::Missing => self.missing += 1,
            ProblemKind::DigestDiffers => self.digest_differs += 1,
            ProblemKind::MediaTypeDiffers => self.media_type_differs += 1,
            ProblemKind::OnlyAtDestination => self.only_at_destination += 1,
            ProblemKind::NotPullable => self.not_pullable += 1,
            ProblemKind::ReferrersMissing => self.referrers_missing += 1,
            ProblemKind::Unsigned => self.unsigned += 1,
            ProblemKind::Error => self.errors += 1,
        }
        self.problems.push(p);
    }
}

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

/// What a manifest tree at the destination lacks.
#[derive(Debug, Clone, Default)]
struct Missing {
    manifests: BTreeSet<String>,
    blobs: BTreeSet<String>,
    errors: BTreeSet<String>,
}

impl Missing {
    fn is_empty(&self) -> bool {
        self.manifests.is_empty() && self.blobs.is_empty() && self.errors.is_empty()
    }

    /// `repo:tag` (at `digest`) is not pullable: it lacks this.
    fn problem(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> TagProblem {
        let mut t = TagProblem::new(ProblemKind::NotPullable);
        t.destination_repository = Some(repo.to_string());
        t.tag = Some(tag.to_string());
        t.destination_digest = Some(digest.to_string());
        self.fill(&mut t);
        t
    }

    fn fill(&self, p: &mut TagProblem) {
        p.missing_manifests = self.manifests.iter().cloned().collect();
        p.missing_blobs = self.blobs.iter().cloned().collect();
        if !self.errors.is_empty() {
            p.error = Some(self.errors.iter().cloned().collect::<Vec<_>>().join("; "));
        }
    }
}

struct Deep {
    /// (repository, top manifest digest) → what its tree lacks.
    missing: HashMap<(RepoName, Digest), Missing>,
    manifests: usize,
    blobs: usize,
}

/// One destination manifest as fetched.
enum Node {
    Absent,
    Failed(String),
    Tree { children: Vec<Digest>, blobs: Vec<Digest> },
}

/// Walk every manifest tree at the destination once per (repository,
/// digest), then `HEAD` every distinct (repository, blob) once.
async fn deep_check(dst: &dyn Scheme, roots: &[(RepoName, Tag, Digest)], concurrency: usize, narrowed_by: Option<&PlatformFilter>, counters: &crate::engine::stats::PlanCounters) -> Deep {
    let root_keys: HashSet<(RepoName, Digest)> = roots.iter().map(|(r, _, d)| (r.clone(), d.clone())).collect();
    let mut nodes: HashMap<(RepoName, Digest), Node> = HashMap::new();
    let mut level: Vec<(RepoName, Digest)> = {
        let set: BTreeSet<(RepoName, String)> = roots.iter().map(|(r, _, d)| (r.clone(), d.to_string())).collect();
        set.into_iter().filter_map(|(r, d)| d.parse().ok().map(|d| (r, d))).collect()
    };
    while !level.is_empty() {
        let fetched: Vec<((RepoName, Digest), Node)> = futures::stream::iter(level)
            .map(|(repo, digest)| {
                let is_root = root_keys.contains(&(repo.clone(), digest.clone()));
                async move {
                let node = match dst.get_manifest(&repo, &Reference::Digest(digest.clone()), &Scopes::pull(&repo)).await {
                    Ok(body) => match manifest::parse(&body.bytes, &body.content_type) {
                        Ok(p) => Node::Tree {
                            children: match (p.kind, narrowed_by.filter(|_| is_root)) {
                                // A tag's index narrowed to some platforms (sparse: the
                                // original index, only the selected children copied):
                                // only the selected children must be there.
                                (Kind::Index, Some(filter)) => match platforms::select(filter, &body.bytes, &body.content_type) {
                                    Ok(Selection::Narrowed(n)) => n.children.into_iter().map(|d| d.digest).collect(),
                                    _ => p.manifests.into_iter().map(|d| d.digest).collect(),
                                },
                                (Kind::Index, None) => p.manifests.into_iter().map(|d| d.digest).collect(),
                                _ => Vec::new(),
                            },
                            blobs: p.blobs.into_iter().filter(|b| !b.foreign).map(|b| b.digest).collect(),
                        },
                        Err(e) => Node::Failed(format!("manifest {digest}: {e}")),
                    },
                    Err(e) if is_not_found(&e) => Node::Absent,
                    Err(e) => Node::Failed(e.to_string()),
                };
                crate::engine::stats::Stats::add(&counters.deep_checked, 1);
                ((repo, digest), node)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut next = Vec::new();
        for (key, node) in fetched {
            if let Node::Tree { children, .. } = &node {
                for c in children {
                    let k = (key.0.clone(), c.clone());
                    if !nodes.contains_key(&k) && !next.contains(&k) {
                        next.push(k);
                    }
                }
            }
            nodes.insert(key, node);
        }
        next.retain(|k| !nodes.contains_key(k));
        level = next;
    }

    let blobs: BTreeSet<(RepoName, String)> = nodes
        .iter()
        .flat_map(|((repo, _), node)| match node {
            Node::Tree { blobs, .. } => blobs.iter().map(|b| (repo.clone(), b.to_string())).collect(),
            _ => Vec::new(),
        })
        .collect();
    let checked = blobs.len();
    let blob_state: HashMap<(RepoName, String), Result<bool, String>> = futures::stream::iter(blobs)
        .map(|(repo, digest)| async move {
            let state = match digest.parse::<Digest>() {
                Ok(d) => dst.blob_exists(&repo, &d, &Scopes::pull(&repo)).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            crate::engine::stats::Stats::add(&counters.deep_checked, 1);
            ((repo, digest), state)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;

    let mut missing = HashMap::new();
    for (repo, _, digest) in roots {
        let key = (repo.clone(), digest.clone());
        if missing.contains_key(&key) {
            continue;
        }
        let mut m = Missing::default();
        let mut stack = vec![digest.clone()];
        let mut seen = HashSet::new();
        while let Some(d) = stack.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            match nodes.get(&(repo.clone(), d.clone())) {
                Some(Node::Absent) | None => {
                    m.manifests.insert(d.to_string());
                }
                Some(Node::Failed(e)) => {
                    m.errors.insert(e.clone());
                }
                Some(Node::Tree { children, blobs }) => {
                    stack.extend(children.iter().cloned());
                    for b in blobs {
                        match blob_state.get(&(repo.clone(), b.to_string())) {
                            Some(Ok(true)) => {}
                            Some(Ok(false)) | None => {
                                m.blobs.insert(b.to_string());
                            }
                            Some(Err(e)) => {
                                m.errors.insert(format!("blob {b}: {e}"));
                            }
                        }
                    }
                }
            }
        }
        missing.insert(key, m);
    }
    Deep { missing, manifests: nodes.len(), blobs: checked }
}
