//! Narrowing a plan to the policy's platforms: remembered narrowings,
//! the decision for each index tag, and destinations that already hold a
//! fuller index. It reads source and destination indexes and changes plan
//! items; it never pushes anything.

use bytes::Bytes;
use futures::StreamExt;

use super::{FilterMode, Narrowed, PlatformFilter, Selection, select};
use crate::engine::plan::{Action, CopyReason, Plan, PlanItem, SkipReason};
use crate::scheme::Scheme;
use crate::registry::manifest::{self, Kind};
use crate::registry::referrers::subject_of_tag;
use crate::registry::{Digest, Reference, RepoName, Scopes};

/// What narrowing produced on earlier passes: source index digest →
/// destination digest, for one filter (narrowing is a function of the
/// source bytes and the filter, so a pair stays true forever). With it an
/// unchanged source index whose destination tag holds the remembered
/// digest is decided by `HEAD`s alone, without pulling the index again.
/// Loaded from and saved to the state by the caller (see `pass`); this
/// module only reads and fills it.
#[derive(Debug, Default)]
pub struct NarrowMemory {
    known: std::sync::Mutex<std::collections::HashMap<String, String>>,
    learned: std::sync::Mutex<Vec<(String, String)>>,
}

impl NarrowMemory {
    /// Add pairs (source digest, destination digest) read from the state.
    pub fn load(&self, pairs: impl IntoIterator<Item = (String, String)>) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).extend(pairs);
    }

    fn get(&self, source: &Digest) -> Option<String> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).get(source.as_str()).cloned()
    }

    /// Recorded for an index with none of the selected platforms.
    pub const NONE: &'static str = "none";

    fn learn(&self, source: &Digest, dest: &Digest) {
        self.learn_str(source, dest.as_str());
    }

    fn learn_none(&self, source: &Digest) {
        self.learn_str(source, Self::NONE);
    }

    fn learn_str(&self, source: &Digest, dest: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.get(source.as_str()).map(String::as_str) != Some(dest) {
            known.insert(source.to_string(), dest.to_string());
            self.learned.lock().unwrap_or_else(|p| p.into_inner()).push((source.to_string(), dest.to_string()));
        }
    }

    /// The pairs learned since the last call, for the state.
    pub fn take_learned(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.learned.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Index tags the destination holds a fuller index of (one that narrows to
/// the source's own digest): in sync, left alone; every other tag is
/// copied as it is (not narrowed). One `GET` of the destination index per
/// differing index tag; any failure leaves the tag to be copied.
async fn keep_fuller_indexes(dst: &dyn Scheme, plan: &mut Plan, filter: &PlatformFilter, concurrency: usize) {
    let filter = &PlatformFilter { mode: FilterMode::Rewrite, ..filter.clone() };
    let candidates: Vec<(usize, RepoName, Digest, String, Digest)> = plan
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.action, Action::Copy(CopyReason::DigestDiffers) | Action::Skip(SkipReason::OverwriteForbidden)))
        .filter(|(_, i)| subject_of_tag(&i.tag).is_none())
        .filter(|(_, i)| manifest::kind_of(&manifest::normalise_media_type(&i.source.media_type)) == Some(Kind::Index))
        .filter_map(|(n, i)| {
            let target = i.source.digest.clone();
            let d = i.dest_head()?;
            (manifest::kind_of(&manifest::normalise_media_type(&d.media_type)) == Some(Kind::Index))
                .then(|| (n, i.dest_repo.clone(), d.digest.clone(), d.media_type.clone(), target))
        })
        .collect();
    let held: Vec<(usize, Narrowed)> = futures::stream::iter(candidates)
        .map(|(n, repo, digest, media_type, target)| async move {
            let body = dst.get_manifest(&repo, &Reference::Digest(digest.clone()), &Scopes::pull(&repo)).await.ok()?;
            match select(filter, &body.bytes, &media_type).ok()? {
                Selection::Narrowed(theirs) if theirs.digest == target => {
                    Some((n, Narrowed { held_by_destination: Some(digest), ..theirs }))
                }
                _ => None,
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|r| async move { r })
        .collect()
        .await;
    for (n, narrowed) in held {
        let item = &mut plan.items[n];
        item.action = Action::Skip(SkipReason::UpToDate);
        item.platforms = Some(Box::new(narrowed));
    }
}

/// What the action of an item becomes once the destination must hold `target`.
pub(super) fn decide(item: &PlanItem, target: &Digest, overwrite: bool) -> Action {
    match item.dest_head() {
        None => Action::Copy(CopyReason::Missing),
        Some(d) if &d.digest == target => Action::Skip(SkipReason::UpToDate),
        Some(_) if overwrite => Action::Copy(CopyReason::DigestDiffers),
        Some(_) => Action::Skip(SkipReason::OverwriteForbidden),
    }
}

/// Apply `filter` to every index tag of `plan`: fetch its source index
/// (unless planning kept it), narrow it, and decide the tag against the
/// narrowed digest. With `rewrite` that is every index tag; with `sparse`
/// only those being copied (the digest is the source's, the diff decided
/// right). An index with no selected platform is skipped and logged.
///
/// With `rewrite`, an index whose source digest `memory` maps to the digest
/// the destination tag holds is up to date without a `GET` (an unchanged
/// pass costs `HEAD`s only); every digest narrowing produces is learned.
pub async fn narrow(
    src: &dyn Scheme,
    dst: &dyn Scheme,
    plan: &mut Plan,
    filter: &PlatformFilter,
    concurrency: usize,
    overwrite: bool,
    memory: &NarrowMemory,
) {
    if filter.destination_may_hold_more {
        // Replicating back: what the DR site holds goes back as it is.
        keep_fuller_indexes(dst, plan, filter, concurrency).await;
        return;
    }
    let mut remembered_none = std::collections::HashSet::new();
    if filter.mode == FilterMode::Rewrite {
        for item in plan.items.iter_mut().filter(|i| manifest::kind_of(&manifest::normalise_media_type(&i.source.media_type)) == Some(Kind::Index)) {
            let Some(known) = memory.get(&item.source.digest) else { continue };
            if known == NarrowMemory::NONE {
                if !matches!(item.action, Action::Skip(SkipReason::RetryDeferred)) {
                    tracing::debug!(repository = %item.source_repo, tag = %item.tag, digest = %item.source.digest, "skipped: the index has none of the selected platforms {} (remembered)", filter.label());
                    item.action = Action::Skip(SkipReason::NoSelectedPlatform);
                    remembered_none.insert((item.source_repo.clone(), item.source.digest.as_str().replacen(':', "-", 1)));
                }
                continue;
            }
            let remembered = matches!(item.action, Action::Copy(CopyReason::DigestDiffers) | Action::Skip(SkipReason::OverwriteForbidden))
                && item.dest_head().is_some_and(|d| d.digest.as_str() == known);
            let Ok(digest) = known.parse::<Digest>() else { continue };
            if remembered {
                item.action = Action::Skip(SkipReason::UpToDate);
                item.dest = None;
                item.platforms = Some(Box::new(Narrowed {
                    mode: filter.mode,
                    bytes: Bytes::new(),
                    digest,
                    media_type: item.source.media_type.clone(),
                    children: Vec::new(),
                    of: 0,
                    label: filter.label(),
                    held_by_destination: None,
                }));
            }
        }
    }
    // Owned inputs (no borrowed plan items inside the stream: a closure over
    // references makes the future unprovably Send for callers that spawn it).
    let wanted: Vec<(usize, RepoName, String, Digest, String, Option<Bytes>)> = plan
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| manifest::kind_of(&manifest::normalise_media_type(&i.source.media_type)) == Some(Kind::Index))
        // Referrers indexes and cosign companions exist for another manifest: never narrowed.
        .filter(|(_, i)| subject_of_tag(&i.tag).is_none())
        .filter(|(_, i)| i.platforms.is_none() && i.action != Action::Skip(SkipReason::NoSelectedPlatform))
        .filter(|(_, i)| match i.action {
            Action::Skip(SkipReason::RetryDeferred) => false,
            Action::Skip(_) => filter.mode == FilterMode::Rewrite,
            Action::Copy(_) => true,
        })
        .map(|(n, i)| (n, i.source_repo.clone(), i.tag.to_string(), i.source.digest.clone(), i.source.media_type.clone(), i.source_body.as_deref().cloned()))
        .collect();
    let fetched: Vec<(usize, Result<Selection, String>)> = futures::stream::iter(wanted)
        .map(|(n, repo, tag, digest, media_type, body)| async move {
            let bytes = match body {
                Some(b) => Ok(b),
                None => src
                    .get_manifest(&repo, &Reference::Digest(digest.clone()), &Scopes::pull(&repo))
                    .await
                    .map(|b| b.bytes)
                    .map_err(|e| e.to_string()),
            };
            let selection = bytes.and_then(|b| {
                select(filter, &b, &media_type).map_err(|e| format!("{repo}:{tag} ({digest}): cannot select platforms: {e}"))
            });
            (n, selection)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut not_copied = remembered_none;
    for (n, selection) in fetched {
        let item = &mut plan.items[n];
        match selection {
            Ok(Selection::Narrowed(narrowed)) => {
                if narrowed.mode == FilterMode::Rewrite {
                    memory.learn(&item.source.digest, &narrowed.digest);
                }
                let dest = item.dest_head().cloned();
                item.action = decide(item, &narrowed.digest, overwrite);
                // Keep what the destination holds when it is not the source digest.
                item.dest = dest.filter(|d| d.digest != item.source.digest).map(Box::new);
                tracing::debug!(repository = %item.source_repo, tag = %item.tag, selection = %narrowed.describe(&item.source.digest), action = %item.action, "platforms selected");
                item.platforms = Some(Box::new(narrowed));
            }
            Ok(Selection::NoMatch(have)) => {
                tracing::info!(
                    repository = %item.source_repo, tag = %item.tag, digest = %item.source.digest,
                    "skipped: the index has none of the selected platforms {} (it has {})", filter.label(), have.join(", ")
                );
                item.action = Action::Skip(SkipReason::NoSelectedPlatform);
                not_copied.insert((item.source_repo.clone(), item.source.digest.as_str().replacen(':', "-", 1)));
                if filter.mode == FilterMode::Rewrite {
                    memory.learn_none(&item.source.digest);
                }
            }
            Ok(Selection::NotAnImageIndex) => {
                tracing::debug!(repository = %item.source_repo, tag = %item.tag, "not a multi-platform image (no child names a platform): copied as it is");
            }
            Err(error) => failed.push((n, error)),
        }
    }
    // Cosign companions (`sha256-<hex>.sig` …) of an index not copied stay behind with it.
    for item in plan.items.iter_mut().filter(|i| i.tag.is_signature_companion()) {
        let subject = item.tag.as_str().rsplit_once('.').map_or("", |(s, _)| s).to_string();
        if not_copied.contains(&(item.source_repo.clone(), subject)) {
            item.action = Action::Skip(SkipReason::NoSelectedPlatform);
        }
    }
    // A tag whose index could not be read or narrowed cannot be decided: a problem, not a copy.
    failed.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    for (n, error) in failed {
        let item = plan.items.remove(n);
        plan.problems.push(crate::engine::plan::Problem {
            source_repo: item.source_repo.to_string(),
            dest_repo: Some(item.dest_repo.to_string()),
            tag: Some(item.tag.to_string()),
            error,
        });
    }
}
