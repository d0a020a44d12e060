//! The layout scheme's manifest verbs. A tag resolves through `index.json`
//! (its descriptor gives digest and media type, so a `HEAD` by tag reads no
//! blob); a digest resolves to its blob. Reads are checked against the
//! digest they are filed under; writes store the exact bytes as a blob
//! first and only then point the tag at them, so a tag never names a
//! missing manifest. Never re-serialises a manifest.

use bytes::Bytes;

use super::OciDir;
use crate::registry::digest::digest_like;
use crate::registry::manifest::{self, MAX_MANIFEST_BYTES, ManifestError};
use crate::registry::{Digest, ManifestBody, ManifestHead, Reference, RegistryError, RepoName};

impl OciDir {
    /// The digest and (when `index.json` gives it) media type `reference`
    /// stands for; `None` when absent.
    async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<Option<(Digest, Option<String>)>, RegistryError> {
        match reference {
            Reference::Tag(tag) => {
                let entries = match self.index(repo).await {
                    Ok(entries) => entries,
                    Err(e) if e.status() == Some(404) => return Ok(None),
                    Err(e) => return Err(e),
                };
                Ok(entries.into_iter().rev().find(|e| e.tag.as_deref() == Some(tag.as_str())).map(|e| (e.digest, e.media_type)))
            }
            Reference::Digest(d) => Ok(self.has_blob(repo, d, None).await?.then(|| (d.clone(), None))),
        }
    }

    pub(super) async fn head(&self, repo: &RepoName, reference: &Reference) -> Result<Option<ManifestHead>, RegistryError> {
        match self.resolve(repo, reference).await? {
            None => Ok(None),
            Some((digest, Some(media_type))) if manifest::kind_of(&media_type).is_some() => Ok(Some(ManifestHead { digest, media_type })),
            Some(_) => {
                let body = self.get(repo, reference).await?;
                Ok(Some(ManifestHead { digest: body.digest, media_type: body.content_type }))
            }
        }
    }

    pub(super) async fn get(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestBody, RegistryError> {
        let layout = self.layout(repo)?;
        let Some((digest, media_type)) = self.resolve(repo, reference).await? else {
            return Err(self.absent("READ", &layout.join("index.json"), "MANIFEST_UNKNOWN", format!("manifest {repo}:{reference} is not in the layout")));
        };
        let path = Self::blob_path(&layout, &digest);
        let manifest_error = |source| RegistryError::Manifest {
            registry: self.name.clone(),
            repo: repo.to_string(),
            reference: reference.to_string(),
            source,
        };
        let size = tokio::fs::metadata(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                self.absent("READ", &path, "MANIFEST_UNKNOWN", format!("manifest {repo}@{digest} is named in index.json but its blob is missing"))
            }
            _ => self.io(&path, &e),
        })?;
        if size.len() > MAX_MANIFEST_BYTES as u64 {
            return Err(manifest_error(ManifestError::TooLarge(usize::try_from(size.len()).unwrap_or(usize::MAX))));
        }
        let bytes = tokio::fs::read(&path).await.map_err(|e| self.io(&path, &e))?;
        let actual = digest_like(&digest, &bytes);
        if actual != digest {
            return Err(RegistryError::DigestMismatch { registry: self.name.clone(), what: format!("manifest {repo}@{digest}"), expected: digest, actual });
        }
        // The descriptor's media type, else what the bytes say they are.
        let content_type = match media_type.filter(|m| manifest::kind_of(m).is_some()) {
            Some(m) => m,
            None => manifest::parse(&bytes, "").map(|p| p.media_type).map_err(manifest_error)?,
        };
        Ok(ManifestBody { bytes: Bytes::from(bytes), content_type, digest, ignored_header: None })
    }

    pub(super) async fn put(&self, repo: &RepoName, reference: &Reference, bytes: Bytes, media_type: &str) -> Result<Digest, RegistryError> {
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = digest_like(expected, &bytes);
                if &actual != expected {
                    return Err(RegistryError::DigestMismatch {
                        registry: self.name.clone(),
                        what: format!("pushed manifest {repo}@{expected}"),
                        expected: expected.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        let size = bytes.len() as u64;
        self.write_bytes(repo, &digest, bytes).await?;
        if let Reference::Tag(tag) = reference {
            self.set_tag(repo, tag.as_str(), &digest, media_type, size).await?;
        }
        Ok(digest)
    }
}
