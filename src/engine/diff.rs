//! Diffing by digest: one manifest `HEAD` per tag on each side decides
//! whether a tag is copied, and why.
//!
//! Never pulls a manifest body for an unchanged tag and never looks at
//! blobs: steady state must cost listings plus two `HEAD`s per tag. The
//! destination's tag list of each repository is read first: a tag it does
//! not list is missing without a `HEAD`, and a repository it does not know
//! at all is recorded in [`Plan::new_repos`], so the copy can skip asking
//! that repository for blobs and manifests only this run can have put there.
//! For a tag the destination certainly lacks, the source manifest is fetched
//! with `GET` instead of `HEAD` and kept for the copy (within a memory budget;
//! once that is spent, the rest get a `HEAD` and one `GET` by the copy)
//! — unless its index is to be narrowed or the tag was named rather than
//! listed (then a `HEAD`: `GET`s are what quota-counting registries count),
//! or the source's pull quota is spent (a `HEAD` plans the tag, which waits).
//! Tags named by the rules are not listed; their fallback and cosign
//! companion tags are looked up by name (see [`literal_companion_tags`]).
//! Referrers fallback tags are diffed by content (see
//! [`super::referrers::plan_fallback`]); with immutable tags, a tag the
//! destination lists costs nothing beyond the listings.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;

use super::discover::Discovered;
use super::plan::{Action, CopyReason, Plan, PlanItem, Problem, SkipReason, UncheckedTag};
use crate::registry::manifest;
use crate::registry::{ManifestBody, ManifestHead, Reference, RegistryError, RepoName, Scopes, Tag};
use crate::scheme::Scheme;

/// How to compare.
#[derive(Debug, Clone, Copy)]
pub struct DiffOptions {
    pub concurrency: usize,
    /// Replace destination tags that differ (false: leave them, report them).
    pub overwrite: bool,
    /// The plan is for a run that writes to the destination: its listings
    /// and `HEAD`s there ask for push (and pull) at once, so the run needs
    /// one token per destination repository and a pull-only grant shows at
    /// its first write. False for read-only commands (dry runs, `verify`),
    /// which must never ask for push.
    pub writes: bool,
}

/// The scopes of the destination-side requests of a diff.
fn dest_scopes(repo: &RepoName, writes: bool) -> Scopes {
    if writes { Scopes::push(repo) } else { Scopes::pull(repo) }
}

/// A tag that was just listed may not be resolvable yet (replicas, caches):
/// ask again a couple of times before calling it gone. The first `404` is
/// confirmed with a `GET` (a front whose `HEAD` lies is then known).
async fn head_source(src: &dyn Scheme, repo: &RepoName, tag: &Tag) -> Result<Option<ManifestHead>, RegistryError> {
    let reference = Reference::Tag(tag.clone());
    let scopes = Scopes::pull(repo);
    if let Some(head) = src.head_listed_manifest(repo, &reference, &scopes).await? {
        return Ok(Some(head));
    }
    for pause in [Duration::from_millis(300), Duration::from_secs(1)] {
        tokio::time::sleep(pause).await;
        if let Some(head) = src.head_manifest(repo, &reference, &scopes).await? {
            return Ok(Some(head));
        }
    }
    Ok(None)
}

/// Like [`head_source`], but with the body: for a tag the destination
/// certainly lacks, whose manifest the copy needs anyway.
async fn get_source(src: &dyn Scheme, repo: &RepoName, tag: &Tag) -> Result<Option<ManifestBody>, RegistryError> {
    let reference = Reference::Tag(tag.clone());
    let scopes = Scopes::pull(repo);
    let unknown = |e: &RegistryError| e.status() == Some(404) || e.has_code("MANIFEST_UNKNOWN");
    for pause in [Duration::from_millis(300), Duration::from_secs(1)] {
        match src.get_manifest(repo, &reference, &scopes).await {
            Ok(body) => return Ok(Some(body)),
            Err(e) if unknown(&e) => tokio::time::sleep(pause).await,
            Err(e) => return Err(e),
        }
    }
    match src.get_manifest(repo, &reference, &scopes).await {
        Ok(body) => Ok(Some(body)),
        Err(e) if unknown(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a `HEAD` would have said about a fetched manifest.
fn head_of(body: &ManifestBody) -> ManifestHead {
    let media_type = manifest::parse(&body.bytes, &body.content_type).map(|p| p.media_type).unwrap_or_else(|_| body.content_type.clone());
    ManifestHead { digest: body.digest.clone(), media_type }
}

/// Manifest bodies a plan keeps for the copy, in bytes (beyond that, tags
/// are planned with a `HEAD` and the copy pulls them): a bound on the
/// memory a large first copy spends to save one request per tag. A body
/// already pulled is never dropped (that would pull it twice), so the
/// bound is this plus what the fetches in flight when it ran out brought:
/// at most the plan's concurrency × `MAX_MANIFEST_BYTES`.
const KEPT_BODIES_BUDGET: usize = 8 * 1024 * 1024;

/// Room in `budget` for one more kept body, sized as the largest body seen
/// so far (at least 4 KiB): the bytes set aside, or `None` when the budget
/// cannot take another.
fn reserve_body(budget: &AtomicUsize, largest: &AtomicUsize) -> Option<usize> {
    let want = largest.load(Ordering::Relaxed).max(4096);
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(want)).ok().map(|_| want)
}

/// Settle a body of `len` bytes (`None`: none was fetched) fetched with
/// `reserved` bytes of `budget` set aside: true when it is kept — always,
/// once pulled (what it did not need goes back; a bigger one takes what it
/// needs more, or all that is left: later tags are then planned with a
/// `HEAD`) — false when none was fetched (all of `reserved` goes back).
fn keep_body(budget: &AtomicUsize, largest: &AtomicUsize, reserved: usize, len: Option<usize>) -> bool {
    let Some(len) = len else {
        budget.fetch_add(reserved, Ordering::Relaxed);
        return false;
    };
    largest.fetch_max(len, Ordering::Relaxed);
    if len <= reserved {
        budget.fetch_add(reserved - len, Ordering::Relaxed);
    } else {
        let more = len - reserved;
        let _ = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| Some(left.saturating_sub(more)));
    }
    true
}

/// Same digest means same bytes, hence the same manifest: a destination
/// that reports another media type for it (a front rewriting
/// `Content-Type`, a registry normalising it) is up to date, because
/// copying the same bytes again cannot change what it reports. The caller
/// warns about such a tag (see [`media_type_note`]).
fn decide(source: &ManifestHead, dest: Option<&ManifestHead>, overwrite: bool) -> Action {
    let reason = match dest {
        None => return Action::Copy(CopyReason::Missing),
        Some(d) if d.digest != source.digest => CopyReason::DigestDiffers,
        Some(_) => return Action::Skip(SkipReason::UpToDate),
    };
    if overwrite { Action::Copy(reason) } else { Action::Skip(SkipReason::OverwriteForbidden) }
}

/// True when the destination holds the same digest under another media type.
fn media_type_note(source: &ManifestHead, dest: &ManifestHead) -> bool {
    dest.digest == source.digest && manifest::normalise_media_type(&dest.media_type) != manifest::normalise_media_type(&source.media_type)
}

/// What the destination's tag list says about one repository.
enum DestTags {
    /// The repository does not exist there (`404`).
    Absent,
    /// The tags it has.
    Listed(HashSet<String>),
    /// No usable answer (no permission to list, an odd registry): `HEAD` every tag.
    Unknown,
}

impl DestTags {
    /// False when the tag is certainly not at the destination.
    fn may_have(&self, tag: &Tag) -> bool {
        match self {
            DestTags::Absent => false,
            DestTags::Listed(tags) => tags.contains(tag.as_str()),
            DestTags::Unknown => true,
        }
    }
}

async fn dest_tags(dst: &dyn Scheme, repo: &RepoName, writes: bool) -> DestTags {
    match dst.tags_with(repo, dest_scopes(repo, writes)).await {
        Ok(tags) => DestTags::Listed(tags.into_iter().collect()),
        Err(e) if e.status() == Some(404) || e.has_code("NAME_UNKNOWN") => DestTags::Absent,
        Err(e) => {
            tracing::debug!(registry = %dst.name(), repository = %repo, error = %e, "cannot list destination tags; checking each tag");
            DestTags::Unknown
        }
    }
}

/// Compare every discovered tag between `src` and `dst`.
pub async fn diff(src: &dyn Scheme, dst: &dyn Scheme, discovered: Discovered, options: DiffOptions) -> Plan {
    let repositories = discovered.repos.len();
    let referrers = discovered.referrers.clone();
    let immutable = discovered.immutable;
    let narrowing = discovered.narrowing;
    let literal_companions = discovered.literal_companions;
    let pin = &discovered.pin;
    let tags: usize = discovered.repos.iter().map(|r| r.tags.len()).sum();
    let concurrency = options.concurrency.max(1);
    // One listing per destination repository that has tags to compare.
    // (Owned names, not a filtered iterator of references: a closure taking
    // a reference inside the stream makes the future unprovably Send.)
    let to_list: Vec<RepoName> = discovered.repos.iter().filter(|r| !r.tags.is_empty()).map(|r| r.dest.clone()).collect();
    let dest_listings: HashMap<RepoName, DestTags> = futures::stream::iter(to_list)
        .map(|repo| async move {
            let listing = dest_tags(dst, &repo, options.writes).await;
            (repo, listing)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let new_repos: HashSet<RepoName> =
        dest_listings.iter().filter(|(_, l)| matches!(l, DestTags::Absent)).map(|(r, _)| r.clone()).collect();
    // Immutable tags: one the destination lists is not checked (tags that
    // exist for another manifest are: cosign appends to a `.sig`, a
    // fallback index grows).
    let unchecked = &AtomicUsize::new(0);
    let unchecked_tags: &std::sync::Mutex<Vec<UncheckedTag>> = &std::sync::Mutex::default();
    let keep_unchecked = referrers.enabled;
    let literal_repos: HashSet<RepoName> = discovered.repos.iter().filter(|r| r.literal).map(|r| r.source.clone()).collect();
    let literal_repos = &literal_repos;
    // Each source tag with its destination name (`tags.rename`); running
    // backwards, a tag not fitting the template is not the policy's.
    let tag_mapping = discovered.tag_mapping.clone();
    let pairs = discovered
        .repos
        .into_iter()
        .flat_map(move |r| {
            let mapping = tag_mapping.clone();
            r.tags.into_iter().filter_map(move |t| mapping.dest_tag(&t).map(|d| (r.source.clone(), r.dest.clone(), t, d)))
        })
        .filter(|(source, dest, source_tag, tag)| {
            let Ok(tag) = tag else { return true };
            let listed = || matches!(dest_listings.get(dest), Some(DestTags::Listed(tags)) if tags.contains(tag.as_str()));
            let skip = immutable && crate::registry::referrers::subject_of_tag(tag).is_none() && listed();
            if skip {
                unchecked.fetch_add(1, Ordering::Relaxed);
                if keep_unchecked {
                    let renamed = (source_tag != tag).then(|| source_tag.clone());
                    unchecked_tags.lock().unwrap_or_else(|p| p.into_inner()).push((source.clone(), dest.clone(), tag.clone(), renamed));
                }
            }
            !skip
        });

    let dest_listings = &dest_listings;
    let referrers = &referrers;
    let budget = &AtomicUsize::new(KEPT_BODIES_BUDGET);
    let largest = &AtomicUsize::new(0);
    let mismatches = &AtomicU64::new(0);
    let counters = &discovered.counters.clone();
    let mut plan = Plan { repositories, problems: discovered.problems, new_repos, unmatched: discovered.unmatched, ..Plan::default() };
    // Straight into the plan (no intermediate Vec of results): what a plan
    // item costs is what a no-op pass over many tags holds in memory.
    plan.items.reserve_exact(tags);
    let plan = futures::stream::iter(pairs)
        .map(|(source_repo, dest_repo, source_tag, tag)| async move {
            super::stats::Stats::add(&counters.tags_compared, 1);
            let problem = |tag: &Tag, error: String| Problem {
                source_repo: source_repo.to_string(),
                dest_repo: Some(dest_repo.to_string()),
                tag: Some(tag.to_string()),
                error,
            };
            let tag = tag.map_err(|e| problem(&source_tag, e))?;
            let problem = |error: String| problem(&tag, error);
            let literal = literal_repos.contains(&source_repo);
            // A named tag the source has under another reference (`copy`),
            // or under its own name when the destination's differs (`tags.rename`).
            let from = pin
                .as_ref()
                .filter(|p| literal && p.tag == tag)
                .map(|p| p.from.clone())
                .or_else(|| (source_tag != tag).then(|| Reference::Tag(source_tag.clone())));
            let unknown = || {
                problem(if let Some(from) = &from {
                    format!("{source_repo}{}{from} does not exist at {}", if matches!(from, Reference::Digest(_)) { "@" } else { ":" }, src.name())
                } else if literal {
                    format!("tag {source_repo}:{tag} (named by the tag rules) does not exist at {}", src.name())
                } else {
                    format!("tag {source_repo}:{tag} was listed but its manifest is unknown at {}", src.name())
                })
            };
            let at_destination = dest_listings.get(&dest_repo).is_none_or(|l| l.may_have(&tag));
            if referrers.enabled && crate::registry::referrers::fallback_subject(&tag).is_some() {
                let scopes = dest_scopes(&dest_repo, options.writes);
                let (s, d, t) = (source_repo.clone(), dest_repo.clone(), tag.clone());
                return super::referrers::plan_fallback(src, dst, s, d, t, at_destination, scopes, &referrers.types, budget)
                    .await
                    .map_err(problem);
            }
            // A tag the destination may have: a HEAD. So too a tag to be
            // narrowed (what the state remembers may spare the pull) and a
            // named tag (it may not exist; one HEAD, its 404 is the answer).
            // Both sides at once: a no-op pass over many tags waits for
            // one round trip per tag, not two.
            let source = async {
                // Room to keep the body, set aside before the GET; none
                // left: a HEAD now and one GET by the copy (a body fetched
                // and then dropped would be pulled twice).
                let room = if at_destination || narrowing || literal { None } else { reserve_body(budget, largest) };
                if let Some(reserved) = room {
                    // Certainly missing at the destination: the copy will need
                    // the body, so fetch it now instead of a HEAD now and a GET later.
                    let fetched = get_source(src, &source_repo, &source_tag).await;
                    let len = fetched.as_ref().ok().and_then(Option::as_ref).map(|body| body.bytes.len());
                    let kept = keep_body(budget, largest, reserved, len);
                    match fetched {
                        Ok(Some(body)) => {
                            if body.ignored_header.is_some() {
                                mismatches.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((head_of(&body), kept.then(|| Box::new(body.bytes))))
                        }
                        Ok(None) => Err(unknown()),
                        // No pulls left: a HEAD (free) still plans the tag, which
                        // then waits for the quota.
                        Err(RegistryError::QuotaLow { .. }) => match head_source(src, &source_repo, &source_tag).await {
                            Ok(Some(h)) => Ok((h, None)),
                            Ok(None) => Err(unknown()),
                            Err(e) => Err(problem(e.to_string())),
                        },
                        Err(e) => Err(problem(e.to_string())),
                    }
                } else {
                    let head = if literal {
                        let reference = from.clone().unwrap_or_else(|| Reference::Tag(tag.clone()));
                        src.head_manifest(&source_repo, &reference, &Scopes::pull(&source_repo)).await
                    } else {
                        head_source(src, &source_repo, &source_tag).await
                    };
                    match head {
                        Ok(Some(h)) => Ok((h, None)),
                        Ok(None) => Err(unknown()),
                        Err(e) => Err(problem(e.to_string())),
                    }
                }
            };
            let dest = async {
                if at_destination {
                    dst.head_listed_manifest(&dest_repo, &Reference::Tag(tag.clone()), &dest_scopes(&dest_repo, options.writes))
                        .await
                        .map_err(|e| problem(e.to_string()))
                } else {
                    Ok(None)
                }
            };
            let (source, dest) = tokio::join!(source, dest);
            let ((source, source_body), dest) = (source?, dest?);
            let action = decide(&source, dest.as_ref(), options.overwrite);
            if let Some(d) = dest.as_ref().filter(|d| media_type_note(&source, d)) {
                // Once per tag and run: the diff sees each tag once.
                tracing::warn!(
                    repository = %dest_repo, tag = %tag, digest = %source.digest, source_media_type = %source.media_type,
                    destination_media_type = %d.media_type,
                    "the destination reports another media type for the same manifest digest; same bytes, so not copied again"
                );
            }
            // Identical to the source: not worth a second copy in memory.
            let dest = if action == Action::Skip(SkipReason::UpToDate) { None } else { dest.map(Box::new) };
            let from = from.map(Box::new);
            Ok(PlanItem { source_repo, dest_repo, tag, source, from, source_body, dest, action, platforms: None })
        })
        .buffer_unordered(concurrency)
        .fold(plan, |mut plan, r| async move {
            match r {
                Ok(item) => plan.items.push(item),
                Err(p) => plan.problems.push(p),
            }
            plan
        })
        .await;
    let mut plan = plan;
    if (referrers.enabled || literal_companions) && !literal_repos.is_empty() {
        let found = Found { referrers: referrers.enabled, companions: literal_companions };
        literal_companion_tags(src, dst, &mut plan, literal_repos, dest_listings, &referrers.types, budget, options, found).await;
    }
    plan.digest_mismatches = mismatches.load(Ordering::Relaxed);
    plan.unchecked = unchecked.load(Ordering::Relaxed);
    plan.unchecked_tags = std::mem::take(&mut *unchecked_tags.lock().unwrap_or_else(|p| p.into_inner()));
    // Order: by repository, images before their signature companions (the
    // keys are unique, so an unstable sort, which needs no buffer, is exact).
    plan.items.sort_unstable_by(|a, b| {
        (&a.source_repo, a.tag.is_signature_companion(), &a.tag).cmp(&(&b.source_repo, b.tag.is_signature_companion(), &b.tag))
    });
    plan
}

/// Which tags that exist for another manifest a named tag may have.
#[derive(Debug, Clone, Copy)]
struct Found {
    /// Its referrers fallback tag (`sha256-<hex>`).
    referrers: bool,
    /// Its cosign companions (`sha256-<hex>.sig|.att|.sbom`).
    companions: bool,
}

/// The tags that exist for the manifests of tags named by the tag rules
/// (referrers fallback tags, cosign companions), which no listing showed:
/// one `HEAD` each at the source (free on registries that count pulls);
/// those that exist are planned like listed ones. (Companions of an
/// index's children are found only through a listing.)
#[allow(clippy::too_many_arguments)]
async fn literal_companion_tags(
    src: &dyn Scheme,
    dst: &dyn Scheme,
    plan: &mut Plan,
    literal_repos: &HashSet<RepoName>,
    dest_listings: &HashMap<RepoName, DestTags>,
    types: &[String],
    budget: &AtomicUsize,
    options: DiffOptions,
    found: Found,
) {
    let mut seen = HashSet::new();
    let mut candidates: Vec<(RepoName, RepoName, Tag, bool)> = Vec::new();
    for i in plan.items.iter().filter(|i| literal_repos.contains(&i.source_repo)) {
        if crate::registry::referrers::fallback_subject(&i.tag).is_some() || i.tag.is_signature_companion() {
            continue;
        }
        let base = i.source.digest.as_str().replacen(':', "-", 1);
        let mut names = Vec::new();
        if found.referrers {
            names.push(base.clone());
        }
        if found.companions {
            names.extend(["sig", "att", "sbom"].map(|s| format!("{base}.{s}")));
        }
        for name in names {
            let Ok(tag) = name.parse::<Tag>() else { continue };
            let at_destination = dest_listings.get(&i.dest_repo).is_none_or(|l| l.may_have(&tag));
            if seen.insert((i.source_repo.clone(), tag.clone())) {
                candidates.push((i.source_repo.clone(), i.dest_repo.clone(), tag, at_destination));
            }
        }
    }
    let planned: Vec<Result<Option<PlanItem>, Problem>> = futures::stream::iter(candidates)
        .map(|(source_repo, dest_repo, tag, at_destination)| async move {
            let problem = |error: String| Problem {
                source_repo: source_repo.to_string(),
                dest_repo: Some(dest_repo.to_string()),
                tag: Some(tag.to_string()),
                error,
            };
            let source = match src.head_manifest(&source_repo, &Reference::Tag(tag.clone()), &Scopes::pull(&source_repo)).await {
                Ok(None) => return Ok(None),
                Ok(Some(head)) => head,
                Err(e) => return Err(problem(e.to_string())),
            };
            let scopes = dest_scopes(&dest_repo, options.writes);
            if crate::registry::referrers::fallback_subject(&tag).is_some() {
                let (s, d, t) = (source_repo.clone(), dest_repo.clone(), tag.clone());
                return super::referrers::plan_fallback(src, dst, s, d, t, at_destination, scopes, types, budget).await.map(Some).map_err(problem);
            }
            let dest = if at_destination {
                dst.head_listed_manifest(&dest_repo, &Reference::Tag(tag.clone()), &scopes).await.map_err(|e| problem(e.to_string()))?
            } else {
                None
            };
            let action = decide(&source, dest.as_ref(), options.overwrite);
            let dest = if action == Action::Skip(SkipReason::UpToDate) { None } else { dest.map(Box::new) };
            Ok(Some(PlanItem { source_repo, dest_repo, tag, source, from: None, source_body: None, dest, action, platforms: None }))
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    for r in planned {
        match r {
            Ok(Some(item)) => plan.items.push(item),
            Ok(None) => {}
            Err(p) => plan.problems.push(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(d: &str, mt: &str) -> ManifestHead {
        ManifestHead { digest: crate::registry::Digest::sha256_of(d.as_bytes()), media_type: mt.into() }
    }

    #[test]
    fn kept_bodies_set_room_aside_before_the_fetch_and_give_back_what_they_did_not_need() {
        let (budget, largest) = (AtomicUsize::new(10_000), AtomicUsize::new(0));
        let r = reserve_body(&budget, &largest).unwrap();
        assert_eq!((r, budget.load(Ordering::Relaxed)), (4096, 5904));
        assert!(keep_body(&budget, &largest, r, Some(1000)));
        assert_eq!(budget.load(Ordering::Relaxed), 9000);
        // Bigger than set aside: takes the rest while there is room.
        let r = reserve_body(&budget, &largest).unwrap();
        assert!(keep_body(&budget, &largest, r, Some(6000)));
        assert_eq!(budget.load(Ordering::Relaxed), 3000);
        // Now sized as the largest seen (6000): no room, plan with a HEAD.
        assert_eq!(reserve_body(&budget, &largest), None);
        assert_eq!(budget.load(Ordering::Relaxed), 3000);
        // A fetch that brought nothing gives all back.
        let (budget, largest) = (AtomicUsize::new(5000), AtomicUsize::new(0));
        let r = reserve_body(&budget, &largest).unwrap();
        assert!(!keep_body(&budget, &largest, r, None));
        assert_eq!(budget.load(Ordering::Relaxed), 5000);
    }

    #[test]
    fn a_body_already_pulled_is_kept_even_when_later_reservations_took_the_room() {
        // Two fetches start before any size is known (4 KiB set aside each);
        // the first brings 5,000 bytes, a third fetch sets aside 5,000, and
        // the second's 5,000 bytes then find 903 left of the 904 they need.
        let (budget, largest) = (AtomicUsize::new(14_999), AtomicUsize::new(0));
        let (r1, r2) = (reserve_body(&budget, &largest).unwrap(), reserve_body(&budget, &largest).unwrap());
        assert!(keep_body(&budget, &largest, r1, Some(5000)));
        let r3 = reserve_body(&budget, &largest).unwrap();
        assert_eq!((r3, budget.load(Ordering::Relaxed)), (5000, 903));
        // Dropping it would pull the same manifest again in the copy (a
        // second pull against a quota): it is kept, and the budget is spent.
        assert!(keep_body(&budget, &largest, r2, Some(5000)), "a pulled body was dropped");
        assert_eq!(budget.load(Ordering::Relaxed), 0);
        assert_eq!(reserve_body(&budget, &largest), None);
        // So is a body bigger than the whole budget (one per fetch in flight at most).
        let (budget, largest) = (AtomicUsize::new(5000), AtomicUsize::new(0));
        let r = reserve_body(&budget, &largest).unwrap();
        assert!(keep_body(&budget, &largest, r, Some(9000)));
        assert_eq!(budget.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn decisions() {
        let a = head("a", "x");
        assert_eq!(decide(&a, None, true), Action::Copy(CopyReason::Missing));
        assert_eq!(decide(&a, Some(&head("a", "x")), true), Action::Skip(SkipReason::UpToDate));
        assert_eq!(decide(&a, Some(&head("b", "x")), true), Action::Copy(CopyReason::DigestDiffers));
        // Same digest, same bytes: another reported media type is not worth a copy.
        assert_eq!(decide(&a, Some(&head("a", "y")), true), Action::Skip(SkipReason::UpToDate));
        assert!(media_type_note(&a, &head("a", "y")));
        assert!(!media_type_note(&a, &head("a", "X; charset=utf-8")));
        assert!(!media_type_note(&a, &head("b", "y")));
        assert_eq!(decide(&a, Some(&head("b", "x")), false), Action::Skip(SkipReason::OverwriteForbidden));
        assert_eq!(decide(&a, None, false), Action::Copy(CopyReason::Missing));
    }
}
