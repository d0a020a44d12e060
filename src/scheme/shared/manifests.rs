//! The source manifests of one pass, fetched once for all its
//! destinations: the first destination to need `repo:reference` sends the
//! `GET`, the others (also while it is in flight) get the same bytes. A
//! `GET` that failed is not remembered (the next one asks again).
//!
//! Bounded: manifests are at most 4 MiB each, and once [`CAP`] bytes are
//! held, further manifests are fetched by each destination itself. This
//! module never decides what to fetch and never holds a lock across a
//! request (the in-flight wait is the request's own, with its timeouts).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::registry::{ManifestBody, Reference, RegistryError, RepoName, Scopes};
use crate::scheme::Scheme;

/// The most manifest bytes one pass keeps.
pub const CAP: u64 = 64 * 1024 * 1024;

/// See the module documentation.
#[derive(Default)]
pub struct Manifests {
    cells: Mutex<HashMap<(RepoName, Reference), Arc<OnceCell<ManifestBody>>>>,
    held: AtomicU64,
}

impl Manifests {
    /// `repo:reference` from `source`, fetched once per pass.
    pub async fn get(&self, source: &dyn Scheme, repo: &RepoName, reference: &Reference, scopes: &Scopes) -> Result<ManifestBody, RegistryError> {
        if self.held.load(Ordering::Relaxed) >= CAP {
            return source.get_manifest(repo, reference, scopes).await;
        }
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            cells.entry((repo.clone(), reference.clone())).or_default().clone()
        };
        let body = cell
            .get_or_try_init(|| async {
                let body = source.get_manifest(repo, reference, scopes).await?;
                self.held.fetch_add(body.bytes.len() as u64, Ordering::Relaxed);
                Ok::<_, RegistryError>(body)
            })
            .await?;
        Ok(body.clone())
    }
}
