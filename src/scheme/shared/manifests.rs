//! The source manifests of one pass, fetched once for all its
//! destinations: the first destination to need `repo:reference` sends the
//! `GET`, the others (also while it is in flight) get the same answer — the
//! bytes, or the registry's `404` (a tag that is not there, such as a
//! signature's fallback tag, is asked for once too). Any other failure is
//! not remembered: the next destination asks again.
//!
//! `HEAD`s likewise, but only what a `HEAD` found is kept: a tag not found
//! may be a tag just pushed that a replica does not serve yet, and the
//! diff's retries of it must each ask the registry (see `engine::diff`).
//! So a no-op pass with two destinations sends one source `HEAD` per tag.
//!
//! Within a pass the answer is the pass's view of the source, as one
//! destination alone would have it from its own `GET` a moment earlier or
//! later. Bounded: manifests are at most 4 MiB each, and once [`CAP`] bytes
//! are held, further manifests are fetched by each destination itself. This
//! module never decides what to fetch and never holds a lock across a
//! request (the in-flight wait is the request's own, with its timeouts).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::registry::error::ApiError;
use crate::registry::{ManifestBody, ManifestHead, Reference, RegistryError, RepoName, Scopes};
use crate::scheme::Scheme;

/// The most manifest bytes one pass keeps.
pub const CAP: u64 = 64 * 1024 * 1024;

/// The most `HEAD` answers one pass keeps (about 200 bytes each): beyond
/// them each destination sends its own.
pub const HEADS_CAP: usize = 200_000;

/// What the source answered, as kept.
enum Answer {
    Found(ManifestBody),
    /// `404`: the parts of the error, to hand each asker its own copy.
    Absent { registry: String, method: String, path: String, errors: Vec<ApiError> },
}

/// One manifest's answer, filled by the first to ask.
type Cell = Arc<OnceCell<Answer>>;

/// See the module documentation.
#[derive(Default)]
pub struct Manifests {
    cells: Mutex<HashMap<(RepoName, Reference), Cell>>,
    held: AtomicU64,
    heads: Mutex<HashMap<(RepoName, Reference), Arc<OnceCell<ManifestHead>>>>,
}

/// Why a shared `HEAD` found nothing to keep.
enum Miss {
    Absent,
    Failed(RegistryError),
}

/// Which `HEAD` a destination asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// [`Scheme::head_manifest`].
    Plain,
    /// [`Scheme::head_listed_manifest`] (a reference the source just listed).
    Listed,
}

impl Manifests {
    /// A `HEAD` of `repo:reference` at `source`: what an earlier `HEAD` of
    /// this pass found, or the answer of a new one (kept when found).
    pub async fn head(&self, source: &dyn Scheme, repo: &RepoName, reference: &Reference, scopes: &Scopes, kind: HeadKind)
    -> Result<Option<ManifestHead>, RegistryError> {
        let ask = || async {
            match kind {
                HeadKind::Plain => source.head_manifest(repo, reference, scopes).await,
                HeadKind::Listed => source.head_listed_manifest(repo, reference, scopes).await,
            }
        };
        let cell = {
            let mut heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
            match heads.get(&(repo.clone(), reference.clone())) {
                Some(cell) => Some(cell.clone()),
                None if heads.len() >= HEADS_CAP => None,
                None => Some(heads.entry((repo.clone(), reference.clone())).or_default().clone()),
            }
        };
        let Some(cell) = cell else { return ask().await };
        let found = cell
            .get_or_try_init(|| async {
                match ask().await {
                    Ok(Some(head)) => Ok(head),
                    Ok(None) => Err(Miss::Absent),
                    Err(e) => Err(Miss::Failed(e)),
                }
            })
            .await;
        match found {
            Ok(head) => Ok(Some(head.clone())),
            Err(Miss::Absent) => Ok(None),
            Err(Miss::Failed(e)) => Err(e),
        }
    }

    /// `repo:reference` from `source`, fetched once per pass.
    pub async fn get(&self, source: &dyn Scheme, repo: &RepoName, reference: &Reference, scopes: &Scopes) -> Result<ManifestBody, RegistryError> {
        if self.held.load(Ordering::Relaxed) >= CAP {
            return source.get_manifest(repo, reference, scopes).await;
        }
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            cells.entry((repo.clone(), reference.clone())).or_default().clone()
        };
        let answer = cell
            .get_or_try_init(|| async {
                match source.get_manifest(repo, reference, scopes).await {
                    Ok(body) => {
                        self.held.fetch_add(body.bytes.len() as u64, Ordering::Relaxed);
                        Ok(Answer::Found(body))
                    }
                    Err(RegistryError::Status { registry, method, path, status: 404, errors, .. }) => {
                        Ok(Answer::Absent { registry, method, path, errors })
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        match answer {
            Answer::Found(body) => Ok(body.clone()),
            Answer::Absent { registry, method, path, errors } => Err(RegistryError::Status {
                registry: registry.clone(),
                method: method.clone(),
                path: path.clone(),
                status: 404,
                errors: errors.clone(),
                retry_after: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryUrl;
    use crate::scheme::ocidir::OciDir;

    #[tokio::test]
    async fn an_answer_is_kept_and_an_absent_tag_stays_absent_for_the_pass() {
        let dir = tempfile::tempdir().unwrap();
        let url = RegistryUrl::parse(&format!("oci:{}", dir.path().display())).unwrap();
        let oci = OciDir::new(&url, true).unwrap();
        let repo: RepoName = "team/app".parse().unwrap();
        let tag = Reference::Tag("v1".parse().unwrap());
        let body = bytes::Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#);
        oci.put_manifest(&repo, &tag, body.clone(), "application/vnd.oci.image.index.v1+json").await.unwrap();
        let kept = Manifests::default();
        let scopes = Scopes::pull(&repo);
        let first = kept.get(&oci, &repo, &tag, &scopes).await.unwrap();
        // The store changes under the pass: the pass keeps its view.
        std::fs::remove_dir_all(dir.path().join("team")).unwrap();
        let second = kept.get(&oci, &repo, &tag, &scopes).await.unwrap();
        assert_eq!((first.bytes, first.digest), (second.bytes, second.digest));
        assert_eq!(kept.held.load(Ordering::Relaxed), body.len() as u64);
        let (other, absent) = ("other/app".parse::<RepoName>().unwrap(), Reference::Tag("gone".parse().unwrap()));
        let scopes = Scopes::pull(&other);
        let e = kept.get(&oci, &other, &absent, &scopes).await.unwrap_err();
        assert_eq!(e.status(), Some(404), "{e}");
        oci.put_manifest(&other, &absent, body, "application/vnd.oci.image.index.v1+json").await.unwrap();
        let e = kept.get(&oci, &other, &absent, &scopes).await.unwrap_err();
        assert_eq!(e.status(), Some(404), "the pass asked again for a tag it found absent: {e}");
        assert!(oci.get_manifest(&other, &absent, &scopes).await.is_ok(), "the layout did not take the tag");
    }

    #[tokio::test]
    async fn a_head_that_found_the_tag_is_kept_and_one_that_did_not_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let url = RegistryUrl::parse(&format!("oci:{}", dir.path().display())).unwrap();
        let oci = OciDir::new(&url, true).unwrap();
        let repo: RepoName = "team/app".parse().unwrap();
        let (v1, v2) = (Reference::Tag("v1".parse().unwrap()), Reference::Tag("v2".parse().unwrap()));
        let scopes = Scopes::pull(&repo);
        let media_type = "application/vnd.oci.image.index.v1+json";
        let body = bytes::Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#);
        oci.put_manifest(&repo, &v1, body.clone(), media_type).await.unwrap();
        let kept = Manifests::default();
        let first = kept.head(&oci, &repo, &v1, &scopes, HeadKind::Listed).await.unwrap();
        assert!(first.is_some(), "the tag was not found");
        // Not found: asked again, so a tag that appears meanwhile is found.
        assert_eq!(kept.head(&oci, &repo, &v2, &scopes, HeadKind::Plain).await.unwrap(), None);
        oci.put_manifest(&repo, &v2, body, media_type).await.unwrap();
        assert!(kept.head(&oci, &repo, &v2, &scopes, HeadKind::Plain).await.unwrap().is_some(), "a tag found absent once was never asked again");
        // Found: the pass keeps its view, as for a GET.
        std::fs::remove_dir_all(dir.path().join("team")).unwrap();
        assert_eq!(kept.head(&oci, &repo, &v1, &scopes, HeadKind::Plain).await.unwrap(), first);
    }
}
