//! Repair before refusing: re-copy exactly what a deep verification found
//! missing at a destination whose tags look right ("tag lists match, pulls
//! 404") — the missing blobs, then the missing child manifests, by digest,
//! from the source — and nothing else.
//!
//! Used by `failover` (its catch-up pass, when the primary answers). Never
//! writes a tag, never deletes, never touches what the verification did not
//! name; the caller verifies again and refuses what could not be repaired.

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::verify::{ProblemKind, VerifyReport};
use crate::registry::{Digest, Reference, RepoName, Scopes};
use crate::scheme::Scheme;

/// What a repair did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    /// Blobs copied again (repository@digest at the destination).
    pub blobs: Vec<String>,
    /// Child manifests copied again.
    pub manifests: Vec<String>,
    /// What could not be repaired, and why.
    pub errors: Vec<String>,
}

impl RepairReport {
    pub fn repaired(&self) -> usize {
        self.blobs.len() + self.manifests.len()
    }
}

/// How many rounds of manifest puts: a parent waits for its children.
const ROUNDS: usize = 4;

/// Copy from `src` to `dst` what the not-pullable problems of `report` name.
pub async fn repair(src: Arc<dyn Scheme>, dst: &dyn Scheme, report: &VerifyReport) -> RepairReport {
    let mut out = RepairReport::default();
    for p in report.problems.iter().filter(|p| p.kind == ProblemKind::NotPullable) {
        let (Some(from), Some(to)) = (p.source_repository.as_deref(), p.destination_repository.as_deref()) else {
            out.errors.push(format!("{}: nothing to repair it from (no source repository)", p.name()));
            continue;
        };
        let (Ok(from), Ok(to)) = (from.parse::<RepoName>(), to.parse::<RepoName>()) else { continue };
        for b in &p.missing_blobs {
            let Ok(digest) = b.parse::<Digest>() else { continue };
            match copy_blob(src.clone(), dst, &from, &to, &digest).await {
                Ok(()) => {
                    tracing::info!(repository = %to, digest = %digest, "repaired: blob copied again");
                    out.blobs.push(format!("{to}@{digest}"));
                }
                Err(e) => out.errors.push(format!("cannot repair blob {to}@{digest} from {from}: {e}")),
            }
        }
        let mut pending: Vec<Digest> = p.missing_manifests.iter().filter_map(|m| m.parse().ok()).collect();
        for round in 0..ROUNDS {
            let mut again = Vec::new();
            for digest in pending {
                match copy_manifest(&*src, dst, &from, &to, &digest).await {
                    Ok(()) => {
                        tracing::info!(repository = %to, digest = %digest, "repaired: manifest copied again");
                        out.manifests.push(format!("{to}@{digest}"));
                    }
                    Err(e) if round + 1 == ROUNDS => out.errors.push(format!("cannot repair manifest {to}@{digest} from {from}: {e}")),
                    Err(_) => again.push(digest),
                }
            }
            pending = again;
            if pending.is_empty() {
                break;
            }
        }
    }
    out
}

async fn copy_blob(src: Arc<dyn Scheme>, dst: &dyn Scheme, from: &RepoName, to: &RepoName, digest: &Digest) -> Result<(), String> {
    let (body, size) = src.open_blob(from, digest, None).await.map_err(|e| e.to_string())?;
    let body = body.map(|r| r.map_err(std::io::Error::other)).boxed();
    dst.put_blob(to, digest, size, body).await.map_err(|e| e.to_string())
}

async fn copy_manifest(src: &dyn Scheme, dst: &dyn Scheme, from: &RepoName, to: &RepoName, digest: &Digest) -> Result<(), String> {
    let reference = Reference::Digest(digest.clone());
    let body = src.get_manifest(from, &reference, &Scopes::pull(from)).await.map_err(|e| e.to_string())?;
    if &body.digest != digest {
        return Err(format!("the source served {} for {digest}", body.digest));
    }
    let media_type = crate::registry::manifest::parse(&body.bytes, &body.content_type).map(|p| p.media_type).unwrap_or(body.content_type.clone());
    dst.put_manifest(to, &reference, body.bytes, &media_type).await.map(|_| ()).map_err(|e| e.to_string())
}
