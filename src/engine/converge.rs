//! Converging within the run on eventually consistent registries: a
//! manifest `PUT` refused with `MANIFEST_INVALID`, `MANIFEST_BLOB_UNKNOWN`
//! or `BLOB_UNKNOWN` although this run has just made everything it
//! references present (Pulp commits blobs to a repository asynchronously and
//! refuses a manifest that races another tag's commit; Harbor on S3 shows
//! the same family).
//!
//! On such a refusal the blobs and child manifests the manifest references
//! are asked for again at the destination (each one that answers missing is
//! asked once more after a short pause: a `404` right after a push may be the
//! registry catching up). All there: the `PUT` is tried again after a short,
//! bounded backoff, and from then on every manifest `PUT` into that
//! repository waits for the one before it (the registry showed the race
//! there). Something really missing: the refusal stays final and unchanged
//! (its code decides what the callers do), what is missing named in the
//! log. A refusal that goes on while everything is present ends after
//! [`BUDGET`], saying so. This module never sends content (no blob, no
//! child): deciding what to copy is [`super::copy`]'s job.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::registry::manifest::{Kind, Parsed};
use crate::registry::{Digest, Reference, RegistryError, RepoName, Scopes};
use crate::scheme::Scheme;

/// How long one manifest may be retried after refusals of the race.
const BUDGET: Duration = Duration::from_secs(20);
/// First pause after a refusal (doubling, capped at [`MAX_PAUSE`]).
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(4);
/// Pause before asking again for a reference that answered missing.
const RECHECK_PAUSE: Duration = Duration::from_millis(400);

/// A manifest `PUT` refused as if content it references were missing.
pub fn refused_for_content(e: &RegistryError) -> bool {
    matches!(e.status(), Some(400 | 404)) && ["MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN"].iter().any(|c| e.has_code(c))
}

/// Per-run memory of the repositories where the race showed.
#[derive(Default)]
pub struct Converge {
    racy: Mutex<HashSet<RepoName>>,
    locks: Mutex<HashMap<RepoName, Arc<tokio::sync::Mutex<()>>>>,
}

impl Converge {
    fn is_racy(&self, repo: &RepoName) -> bool {
        self.racy.lock().unwrap_or_else(|p| p.into_inner()).contains(repo)
    }

    fn lock_of(&self, repo: &RepoName) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(repo.clone()).or_default().clone()
    }

    /// Run `put` (a manifest `PUT` of `parsed` into `repo` of `dst`), trying
    /// again as the module documentation says.
    pub async fn put<T, F, Fut>(&self, dst: &dyn Scheme, repo: &RepoName, parsed: &Parsed, mut put: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut refusals = 0u32;
        loop {
            let lock = self.is_racy(repo).then(|| self.lock_of(repo));
            let serial = match &lock {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            let e = match put().await {
                Ok(v) => {
                    if refusals > 0 {
                        tracing::info!(repository = %repo, refusals, "the registry accepted the manifest after refusing it while it caught up");
                    }
                    return Ok(v);
                }
                Err(e) if refused_for_content(&e) => e,
                Err(e) => return Err(e),
            };
            let missing = missing(dst, repo, parsed).await?;
            if !missing.is_empty() {
                return Err(really_missing(e, &missing));
            }
            if started.elapsed() + pause > BUDGET {
                return Err(RegistryError::Protocol {
                    registry: dst.name().to_string(),
                    message: format!(
                        "{e}; refused {} times over {}s although everything it references is present (the registry \
                         did not catch up)",
                        refusals + 1,
                        started.elapsed().as_secs()
                    ),
                });
            }
            refusals += 1;
            if self.racy.lock().unwrap_or_else(|p| p.into_inner()).insert(repo.clone()) {
                tracing::info!(
                    repository = %repo, error = %e,
                    "the registry refused a manifest whose content is present (it commits asynchronously); retrying, and \
                     pushing manifests into this repository one at a time"
                );
            }
            drop(serial);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// The references of `parsed` that `repo` at `dst` does not hold, each
/// one asked twice (a pause between) before it counts as missing.
async fn missing(dst: &dyn Scheme, repo: &RepoName, parsed: &Parsed) -> Result<Vec<Digest>, RegistryError> {
    let mut absent = Vec::new();
    for round in 0..2 {
        if round == 1 {
            if absent.is_empty() {
                break;
            }
            tokio::time::sleep(RECHECK_PAUSE).await;
        }
        let asked: Vec<Digest> = if round == 0 { references(parsed) } else { std::mem::take(&mut absent) };
        for digest in asked {
            if !present(dst, repo, parsed.kind, &digest).await? {
                absent.push(digest);
            }
        }
    }
    Ok(absent)
}

fn references(parsed: &Parsed) -> Vec<Digest> {
    match parsed.kind {
        Kind::Image => parsed.blobs.iter().filter(|b| !b.foreign).map(|b| b.digest.clone()).collect(),
        Kind::Index => parsed.manifests.iter().map(|m| m.digest.clone()).collect(),
    }
}

async fn present(dst: &dyn Scheme, repo: &RepoName, kind: Kind, digest: &Digest) -> Result<bool, RegistryError> {
    let scopes = Scopes::push(repo);
    match kind {
        Kind::Image => dst.blob_exists(repo, digest, &scopes).await,
        Kind::Index => Ok(dst.head_manifest(repo, &Reference::Digest(digest.clone()), &scopes).await?.is_some()),
    }
}

/// The refusal `e`, kept as it is (its code decides what callers do with
/// it), with the missing references named in the log.
fn really_missing(e: RegistryError, missing: &[Digest]) -> RegistryError {
    let named: Vec<String> = missing.iter().take(5).map(|d| d.to_string()).collect();
    tracing::warn!(error = %e, missing = %named.join(", "), "the manifest was refused and content it references is really missing at the destination");
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::error::ApiError;

    fn refusal(status: u16, code: &str) -> RegistryError {
        RegistryError::Status {
            registry: "r".into(),
            method: "PUT".into(),
            path: "/v2/a/manifests/t".into(),
            status,
            errors: vec![ApiError { code: code.into(), message: String::new(), detail: None }],
            retry_after: None,
        }
    }

    #[test]
    fn only_content_refusals_are_reconsidered() {
        assert!(refused_for_content(&refusal(400, "MANIFEST_INVALID")));
        assert!(refused_for_content(&refusal(400, "MANIFEST_BLOB_UNKNOWN")));
        assert!(refused_for_content(&refusal(404, "BLOB_UNKNOWN")));
        assert!(!refused_for_content(&refusal(400, "TAG_INVALID")));
        assert!(!refused_for_content(&refusal(403, "DENIED")));
        assert!(!refused_for_content(&refusal(500, "MANIFEST_INVALID")));
    }
}
