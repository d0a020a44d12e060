//! Referrers left behind because their subject will not exist at the
//! destination: the signatures and fallback indexes of a tag the tag rules
//! exclude or of a platform the filter drops, and the referrers (listed by
//! the source's API) of an index the destination holds rewritten to some
//! platforms. They are never copied (a referrer must not arrive without its
//! subject); this module names each one so the operator knows, and says
//! what to remember so that a later pass does not name it again.
//!
//! [`settle_subject_bound`] finds, before execution, the tags whose subject
//! will not be at the destination, and drops them from the plan, so a pass
//! that copies nothing stays a no-op; [`name_tags`] and [`name_rewritten`]
//! warn about each referrer once.
//!
//! It never copies and never writes anywhere: the caller keeps the
//! returned keys in the job's referrer lists (`state::referrers`), under
//! [`tag_key`] or [`subject_key`], so that a referrer is named once.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;

use super::plan::{Action, Plan, PlanItem};
use super::referrers::{present, untagged_subjects_of};
use crate::registry::manifest;
use crate::registry::referrers::{self as verbs, ApiAnswer, fallback_subject, subject_of_tag};
use crate::registry::{Digest, RepoName, Scopes, Tag};
use crate::scheme::Scheme;

/// Drop, before execution, the tags that exist for another manifest
/// (fallback tags, cosign companions) that have something to copy but
/// whose subject is neither a tag of the plan nor at the destination, and
/// cannot arrive there in this pass: no index of the repository is copied
/// (its children might be the subject), and no fallback tag copied lists
/// it (a signature of an SBOM travels with the image's fallback tag) — a
/// fallback tag copied whose entries planning did not keep might list
/// anything, so its repository keeps them all. Dropping a fallback tag may
/// leave another without its subject: repeated until nothing more drops.
/// A signature of a tag the policy does not select thus costs one `HEAD`
/// per pass, and a pass that copies nothing stays a no-op.
/// Returns the dropped tags, to be named ([`name_tags`]).
pub async fn settle_subject_bound(dst: &dyn Scheme, plan: &mut Plan, writes: bool, concurrency: usize, untagged_subjects: bool) -> Vec<LeftBehind> {
    let untagged = if untagged_subjects { untagged_subjects_of(plan) } else { HashSet::new() };
    let tagged: HashSet<(RepoName, Digest)> = plan
        .items
        .iter()
        // (A tag whose index is narrowed to some platforms puts another
        // digest at the destination: its source digest is not a subject there.)
        .filter(|i| subject_of_tag(&i.tag).is_none() && i.target_digest() == &i.source.digest)
        .map(|i| (i.source_repo.clone(), i.source.digest.clone()))
        .collect();
    let mut here: HashMap<(RepoName, Digest), bool> = HashMap::new();
    let mut left = Vec::new();
    loop {
        let (open, brought) = arrivals(plan);
        let to_check: Vec<(usize, RepoName, RepoName, Digest)> = plan
            .items
            .iter()
            .enumerate()
            .filter(|(_, i)| matches!(i.action, Action::Copy(_)) && !open.contains(&i.source_repo))
            .filter_map(|(n, i)| {
                let subject = subject_of_tag(&i.tag)?;
                let key = (i.source_repo.clone(), subject.clone());
                let keep = tagged.contains(&key) || untagged.contains(&key) || brought.contains(&key);
                (!keep).then(|| (n, i.source_repo.clone(), i.dest_repo.clone(), subject))
            })
            .collect();
        let ask: Vec<(RepoName, RepoName, Digest)> = to_check
            .iter()
            .filter(|(_, s, _, d)| !here.contains_key(&(s.clone(), d.clone())))
            .map(|(_, s, r, d)| (s.clone(), r.clone(), d.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let answers: Vec<((RepoName, Digest), bool)> = futures::stream::iter(ask)
            .map(|(source_repo, repo, subject)| async move {
                let scopes = if writes { Scopes::push(&repo) } else { Scopes::pull(&repo) };
                // An error keeps the item: execution will say what is wrong.
                let at = present(dst, &repo, &subject, &scopes).await.unwrap_or(true);
                ((source_repo, subject), at)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        here.extend(answers);
        let absent: HashMap<usize, Digest> =
            to_check.into_iter().filter(|(_, s, _, d)| here.get(&(s.clone(), d.clone())) == Some(&false)).map(|(n, _, _, d)| (n, d)).collect();
        if absent.is_empty() {
            return left;
        }
        left.extend(plan.items.iter().enumerate().filter_map(|(n, i)| absent.get(&n).map(|s| LeftBehind::of(i, s.clone()))));
        let mut n = 0;
        plan.items.retain(|_| {
            n += 1;
            !absent.contains_key(&(n - 1))
        });
    }
}

/// What copying `plan` may bring to the destination besides its tags:
/// repositories where anything may arrive (an index is copied, or a
/// fallback tag whose entries are unknown), and the referrers the copied
/// fallback tags list, by source repository.
fn arrivals(plan: &Plan) -> (HashSet<RepoName>, HashSet<(RepoName, Digest)>) {
    let mut open = HashSet::new();
    let mut brought = HashSet::new();
    for i in plan.to_copy() {
        if fallback_subject(&i.tag).is_some() {
            match i.source_body.as_deref().and_then(|b| verbs::parse_index(b).ok()) {
                Some(entries) => brought.extend(entries.into_iter().map(|e| (i.source_repo.clone(), e.digest))),
                None => {
                    open.insert(i.source_repo.clone());
                }
            }
        } else if manifest::kind_of(&manifest::normalise_media_type(&i.source.media_type)) == Some(manifest::Kind::Index) {
            open.insert(i.source_repo.clone());
        }
    }
    (open, brought)
}

/// One tag (a fallback index or a cosign companion) whose subject will not
/// be at the destination, with the referrers it stands for when known.
#[derive(Debug, Clone)]
pub struct LeftBehind {
    pub source_repo: RepoName,
    pub tag: Tag,
    pub subject: Digest,
    /// The tag's own digest at the source: named again only once it changes.
    pub digest: Digest,
    /// (referrer, artifactType): a fallback index's entries when planning
    /// kept its body; a cosign companion is its own referrer.
    pub referrers: Vec<(Digest, Option<String>)>,
}

impl LeftBehind {
    /// The tag `item`, bound to `subject`, that is not copied.
    pub fn of(item: &PlanItem, subject: Digest) -> LeftBehind {
        let referrers = if fallback_subject(&item.tag).is_some() {
            item.source_body
                .as_deref()
                .and_then(|b| verbs::parse_index(b).ok())
                .map(|entries| entries.into_iter().map(|e| (e.digest, e.artifact_type)).collect())
                .unwrap_or_default()
        } else {
            vec![(item.source.digest.clone(), None)]
        };
        LeftBehind { source_repo: item.source_repo.clone(), tag: item.tag.clone(), subject, digest: item.source.digest.clone(), referrers }
    }
}

/// The key under which a job remembers that the tag `tag` was named.
pub fn tag_key(tag: &Tag) -> String {
    format!("left:{tag}")
}

/// The key under which a job remembers that the API-listed referrers of
/// the (rewritten) index `subject` were named.
pub fn subject_key(subject: &Digest) -> String {
    format!("left@{subject}")
}

/// Warn once about each of `left` that `seen` does not record with the
/// same digest; returns the (repository, key, value) rows to record.
pub fn name_tags(left: &[LeftBehind], seen: &HashMap<(String, String), String>) -> Vec<(String, String, String)> {
    let mut rows = Vec::new();
    for l in left {
        let key = (l.source_repo.to_string(), tag_key(&l.tag));
        if seen.get(&key).map(String::as_str) == Some(l.digest.as_str()) {
            continue;
        }
        if l.referrers.is_empty() {
            tracing::warn!(repository = %l.source_repo, tag = %l.tag, subject = %l.subject, "referrers not copied: their subject will not exist at the destination (its tag is excluded by the tag rules, or its platform by the platform filter)");
        }
        for (referrer, artifact_type) in &l.referrers {
            tracing::warn!(
                repository = %l.source_repo,
                tag = %l.tag,
                referrer = %referrer,
                artifact_type = artifact_type.as_deref().unwrap_or("-"),
                subject = %l.subject,
                "referrer not copied: its subject will not exist at the destination (its tag is excluded by the tag rules, or its platform by the platform filter)"
            );
        }
        rows.push((key.0, key.1, l.digest.to_string()));
    }
    rows
}

/// Ask the source's referrers API once about the source digest of each
/// index of `plan` the destination holds rewritten (another digest there,
/// so its referrers have no subject), warn about each referrer listed, and
/// return by plan index the (key, value) to record. An index already
/// named ([`subject_key`] in `seen`) costs nothing.
pub async fn name_rewritten(src: &dyn Scheme, plan: &Plan, types: &[String], seen: &HashMap<(String, String), String>, concurrency: usize) -> Vec<(usize, String, String)> {
    let rewritten: Vec<(usize, RepoName, Tag, Digest)> = plan
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| i.target_digest() != &i.source.digest)
        .filter(|(_, i)| !seen.contains_key(&(i.source_repo.to_string(), subject_key(&i.source.digest))))
        .map(|(n, i)| (n, i.source_repo.clone(), i.tag.clone(), i.source.digest.clone()))
        .collect();
    futures::stream::iter(rewritten)
        .map(|(n, repo, tag, subject)| async move {
            let entries = match src.referrers(&repo, &subject, None).await {
                Ok(ApiAnswer::Listed { entries, .. }) => verbs::filter(entries, types),
                // (Remembered too: a source without the API is asked once per index.)
                Ok(ApiAnswer::Unsupported) => return Some((n, subject_key(&subject), "unsupported".to_string())),
                Err(e) => {
                    tracing::debug!(repository = %repo, subject = %subject, error = %e, "cannot list the referrers of a rewritten index; asked again next pass");
                    return None;
                }
            };
            for e in &entries {
                tracing::warn!(
                    repository = %repo,
                    tag = %tag,
                    referrer = %e.digest,
                    artifact_type = e.artifact_type.as_deref().unwrap_or("-"),
                    subject = %subject,
                    "referrer not copied: its subject will not exist at the destination (the destination holds the index rewritten to the selected platforms, another digest)"
                );
            }
            Some((n, subject_key(&subject), super::referrers::list_digest(&entries)))
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|r| async move { r })
        .collect()
        .await
}
