//! The referrers of unchanged tags, for a source that serves the OCI 1.1
//! referrers API (which has no change feed): one request per distinct
//! manifest per pass, each list's digest compared with the one the job's
//! state remembers, and only the tags whose list changed marked for a sync
//! of their referrers ([`CopyReason::ReferrersChanged`]). Also the marks a
//! job keeps about the source (no API: asked again after a day) and about
//! an index's children. It never copies anything and never touches the
//! state database (the caller records what it returns).

use std::collections::{HashMap, HashSet};

use futures::StreamExt;

use super::super::plan::{Action, CopyReason, Plan, SkipReason};
use super::ReferrerOptions;
use crate::registry::manifest;
use crate::registry::referrers::{self as verbs, ApiAnswer, ReferrerEntry, subject_of_tag};
use crate::registry::{Digest, Reference, RepoName, Scopes};
use crate::scheme::Scheme;

/// The digest of a referrers list: sha256 over its referrers' digests,
/// sorted (the order a registry lists them in does not matter).
pub fn list_digest(entries: &[ReferrerEntry]) -> String {
    let mut digests: Vec<&str> = entries.iter().map(|e| e.digest.as_str()).collect();
    digests.sort_unstable();
    digests.dedup();
    Digest::sha256_of(digests.join("\n").as_bytes()).to_string()
}

/// What [`check_api_referrers`] found.
#[derive(Debug, Default)]
pub struct ApiCheck {
    /// By plan index: (subject key, value) to record once that item
    /// succeeded — a subject's list digest, or an index's children
    /// ([`children_key`]).
    pub lists: Vec<(usize, String, String)>,
    /// The source answered `404`: it does not serve the API.
    pub unsupported: bool,
}

/// The key under which a job's state remembers the children of the index
/// `index` (their digests, space-separated). A digest names its bytes, so
/// the children never change: an unchanged index costs no `GET` to find them.
pub fn children_key(index: &Digest) -> String {
    format!("children@{index}")
}

/// The key under which a job's state remembers that its source does not
/// serve the referrers API (as a (repository, subject) pair no real one has).
pub const API_SENTINEL: (&str, &str) = ("", "referrers-api");

/// How long that is believed before the source is asked again.
pub const API_RECHECK_MS: i64 = 24 * 3600 * 1000;

/// The value recorded under [`API_SENTINEL`] for a source found without the API at `now_ms`.
pub fn api_unsupported_mark(now_ms: i64) -> String {
    format!("unsupported@{now_ms}")
}

/// Whether `seen` says the source lacked the API less than [`API_RECHECK_MS`] before `now_ms`.
pub fn api_known_unsupported(seen: &HashMap<(String, String), String>, now_ms: i64) -> bool {
    seen.get(&(API_SENTINEL.0.to_string(), API_SENTINEL.1.to_string()))
        .and_then(|v| v.strip_prefix("unsupported@"))
        .and_then(|ms| ms.parse::<i64>().ok())
        .is_some_and(|at| (0..API_RECHECK_MS).contains(&(now_ms - at)))
}

/// For a source that serves the referrers API (which has no change feed):
/// ask it for the referrers of the manifest of every tag of `plan` and of
/// every child of an index among them (one request per distinct manifest),
/// and mark the up-to-date tags for which one of those lists differs from
/// the one `seen` last time ([`CopyReason::ReferrersChanged`]): only their
/// referrers are synced. An index's children are read once (its `GET`, or
/// the body planning kept) and remembered under [`children_key`]. The lists
/// of a copied index's children are recorded only once the index is up to
/// date (a child already at the destination is not synced by the copy), so
/// its first no-op pass syncs a child whose list is not empty. A source
/// without the API costs one request (`404`) and nothing is marked: its
/// fallback tags are diffed like tags (the caller remembers that for a
/// day, see [`api_known_unsupported`], so a steady pass costs nothing here).
/// Never asked: the source digest of an index the destination holds
/// rewritten or narrowed (another manifest there, so its referrers would
/// have no subject), nor the children of such an index.
pub async fn check_api_referrers(
    src: &dyn Scheme,
    plan: &mut Plan,
    options: &ReferrerOptions,
    seen: &HashMap<(String, String), String>,
    concurrency: usize,
) -> ApiCheck {
    if !options.enabled {
        return ApiCheck::default();
    }
    let mut subjects: HashSet<(RepoName, Digest)> = HashSet::new();
    let candidates: Vec<(usize, RepoName, Digest)> = plan
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| subject_of_tag(&i.tag).is_none() && matches!(i.action, Action::Copy(_) | Action::Skip(SkipReason::UpToDate)))
        // A rewritten index is another manifest at the destination: the
        // source digest's referrers have no subject there and are not copied.
        .filter(|(_, i)| {
            let rewritten = i.target_digest() != &i.source.digest;
            if rewritten {
                tracing::debug!(repository = %i.source_repo, tag = %i.tag, subject = %i.source.digest, "referrers of the source index are not copied: the destination holds a rewritten index (another digest)");
            }
            !rewritten
        })
        .filter(|(_, i)| subjects.insert((i.source_repo.clone(), i.source.digest.clone())))
        .map(|(n, i)| (n, i.source_repo.clone(), i.source.digest.clone()))
        .collect();
    let one = match options.types.as_slice() {
        [t] => Some(t.as_str()),
        _ => None,
    };
    let ask = |(n, repo, digest): (usize, RepoName, Digest)| async move {
        let answer = src.referrers(&repo, &digest, one).await;
        (n, repo, digest, answer)
    };
    let mut rest = candidates.clone().into_iter();
    let Some(first) = rest.next() else { return ApiCheck::default() };
    let first = ask(first).await;
    match &first.3 {
        Ok(ApiAnswer::Listed { .. }) => {}
        Ok(ApiAnswer::Unsupported) => return ApiCheck { lists: Vec::new(), unsupported: true },
        Err(e) => {
            tracing::warn!(registry = %src.name(), error = %e, "cannot ask the source's referrers API; asked again next pass");
            return ApiCheck::default();
        }
    }
    let mut out = Vec::new();
    // The children of the (unnarrowed) indexes: remembered, else read once.
    let indexes: Vec<(usize, RepoName, Digest)> = candidates
        .into_iter()
        .filter(|(n, _, _)| {
            let i = &plan.items[*n];
            i.platforms.is_none() && manifest::kind_of(&manifest::normalise_media_type(&i.source.media_type)) == Some(manifest::Kind::Index)
        })
        .collect();
    let plan_ref = &*plan;
    let children: Vec<(usize, RepoName, Vec<Digest>, Option<String>)> = futures::stream::iter(indexes)
        .map(|(n, repo, digest)| async move {
            let known = seen.get(&(repo.to_string(), children_key(&digest)));
            if let Some(known) = known {
                let parsed: Result<Vec<Digest>, _> = known.split_whitespace().map(str::parse::<Digest>).collect();
                if let Ok(children) = parsed {
                    return Some((n, repo, children, None));
                }
            }
            let item = &plan_ref.items[n];
            let bytes = match &item.source_body {
                Some(b) => b.as_ref().clone(),
                None => match src.get_manifest(&repo, &Reference::Digest(digest.clone()), &Scopes::pull(&repo)).await {
                    Ok(body) => body.bytes,
                    Err(e) => {
                        tracing::warn!(repository = %repo, index = %digest, error = %e, "cannot read the index; its children's referrers are checked again next pass");
                        return None;
                    }
                },
            };
            match manifest::parse(&bytes, &item.source.media_type) {
                Ok(parsed) => {
                    let children: Vec<Digest> = parsed.manifests.into_iter().map(|d| d.digest).collect();
                    let record = children.iter().map(Digest::to_string).collect::<Vec<_>>().join(" ");
                    Some((n, repo, children, Some(record)))
                }
                Err(e) => {
                    tracing::warn!(repository = %repo, index = %digest, error = %e, "cannot parse the index; its children's referrers are not checked");
                    None
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|c| async move { c })
        .collect()
        .await;
    // The children asked (a copied index's children lists are not recorded).
    let mut child_of: HashSet<(RepoName, Digest)> = HashSet::new();
    let mut asked_children = Vec::new();
    for (n, repo, kids, record) in children {
        if let Some(record) = record {
            out.push((n, children_key(&plan.items[n].source.digest), record));
        }
        for child in kids {
            if subjects.insert((repo.clone(), child.clone())) {
                child_of.insert((repo.clone(), child.clone()));
                asked_children.push((n, repo.clone(), child));
            }
        }
    }
    let answers: Vec<_> = futures::stream::iter(rest.chain(asked_children)).map(ask).buffer_unordered(concurrency.max(1)).collect().await;
    for (n, repo, digest, answer) in std::iter::once(first).chain(answers) {
        let entries = match answer {
            Ok(ApiAnswer::Listed { entries, .. }) => verbs::filter(entries, &options.types),
            Ok(ApiAnswer::Unsupported) => continue,
            Err(e) => {
                tracing::warn!(repository = %repo, subject = %digest, error = %e, "cannot list referrers; they are checked again next pass");
                continue;
            }
        };
        let list = list_digest(&entries);
        let child = child_of.contains(&(repo.clone(), digest.clone()));
        let item = &mut plan.items[n];
        let known = seen.get(&(repo.to_string(), digest.to_string()));
        let up_to_date = matches!(item.action, Action::Skip(SkipReason::UpToDate) | Action::Copy(CopyReason::ReferrersChanged));
        if item.action == Action::Skip(SkipReason::UpToDate) && known != Some(&list) && !(known.is_none() && entries.is_empty()) {
            item.action = Action::Copy(CopyReason::ReferrersChanged);
        }
        if !child || up_to_date {
            out.push((n, digest.to_string(), list));
        }
    }
    ApiCheck { lists: out, unsupported: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_without_the_api_is_asked_again_after_a_day() {
        let mut seen = HashMap::new();
        assert!(!api_known_unsupported(&seen, 1_000));
        seen.insert((API_SENTINEL.0.to_string(), API_SENTINEL.1.to_string()), api_unsupported_mark(1_000));
        assert!(api_known_unsupported(&seen, 1_000 + 60_000));
        assert!(!api_known_unsupported(&seen, 1_000 + API_RECHECK_MS));
    }
}
