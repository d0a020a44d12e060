//! The layout scheme's blob verbs: existence, a streamed read, and a
//! streamed, crash-safe write — bytes go to a temporary file inside the
//! layout while their digest is computed, and only a complete file whose
//! digest and size are right is fsynced and renamed to
//! `blobs/<alg>/<hex>`. Never buffers a blob and never leaves a partial
//! one under `blobs/`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::tag::sync_dir;
use super::{OciDir, blocking};
use crate::registry::digest::Verifier;
use crate::registry::{Digest, RegistryError, RepoName};
use crate::scheme::{ByteStream, UploadStream};

/// Bytes read from a blob file at a time.
const READ_CHUNK: usize = 256 * 1024;

impl OciDir {
    pub(super) async fn has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, RegistryError> {
        let path = Self::blob_path(&self.layout(repo)?, digest);
        let found = tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file());
        if found {
            self.saw(digest, path);
        }
        Ok(found)
    }

    fn saw(&self, digest: &Digest, path: PathBuf) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).entry(digest.clone()).or_insert(path);
    }

    /// Hard-link the blob into `repo`'s layout from where this process
    /// wrote or found it complete; false when it knows no such place or the
    /// link cannot be made (another file system: the caller streams).
    pub(super) async fn link(&self, repo: &RepoName, digest: &Digest) -> Result<bool, RegistryError> {
        let Some(from) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned() else { return Ok(false) };
        let layout = self.prepare(repo).await?;
        let path = Self::blob_path(&layout, digest);
        let to = path.clone();
        let linked = blocking(move || -> std::io::Result<()> {
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir)?;
            }
            match std::fs::hard_link(&from, &to) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                other => other,
            }?;
            std::fs::File::open(to.parent().unwrap_or(std::path::Path::new(".")))?.sync_all()
        })
        .await;
        match linked {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::debug!(layout = %self.name, blob = %digest.short(), error = %e, "cannot hard-link the blob; copying it");
                Ok(false)
            }
        }
    }

    pub(super) async fn read_blob(&self, repo: &RepoName, digest: &Digest, expected: Option<u64>) -> Result<(ByteStream, Option<u64>), RegistryError> {
        let path = Self::blob_path(&self.layout(repo)?, digest);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.absent("READ", &path, "BLOB_UNKNOWN", format!("blob {repo}@{digest} is not in the layout")));
            }
            Err(e) => return Err(self.io(&path, &e)),
        };
        let size = file.metadata().await.map_err(|e| self.io(&path, &e))?.len();
        if let Some(expected) = expected.filter(|&e| e != size) {
            return Err(RegistryError::SizeMismatch { registry: self.name.clone(), what: format!("blob {repo}@{digest}"), expected, actual: size });
        }
        let shown = path.display().to_string();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK).map(move |r| r.map_err(|e| format!("reading {shown}: {e}")));
        Ok((stream.boxed(), Some(size)))
    }

    /// Store `body` as the blob `digest` of `repo` (see the module
    /// documentation). A blob already there is kept and `body` left unread.
    pub(super) async fn write_blob(&self, repo: &RepoName, digest: &Digest, size: Option<u64>, mut body: UploadStream) -> Result<(), RegistryError> {
        let layout = self.prepare(repo).await?;
        let path = Self::blob_path(&layout, digest);
        if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
            self.saw(digest, path);
            return Ok(());
        }
        let temp = self.temp_path(&layout, digest.hex());
        let result = self.write_temp(&temp, repo, digest, size, &mut body).await;
        let result = match result {
            Ok(()) => self.commit(&temp, &path).await,
            Err(e) => Err(e),
        };
        if result.is_ok() {
            self.saw(digest, path);
        }
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    /// Store `bytes` (a manifest) as the blob `digest` of `repo`.
    pub(super) async fn write_bytes(&self, repo: &RepoName, digest: &Digest, bytes: Bytes) -> Result<(), RegistryError> {
        let size = bytes.len() as u64;
        self.write_blob(repo, digest, Some(size), futures::stream::iter([Ok(bytes)]).boxed()).await
    }

    async fn write_temp(&self, temp: &Path, repo: &RepoName, digest: &Digest, size: Option<u64>, body: &mut UploadStream) -> Result<(), RegistryError> {
        let mut file = tokio::fs::File::create(temp).await.map_err(|e| self.io(temp, &e))?;
        let mut verifier = Verifier::new(digest);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.local(temp, format!("the blob's bytes failed: {e}")))?;
            verifier.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| self.io(temp, &e))?;
        }
        let what = || format!("blob {repo}@{digest}");
        if let Some(expected) = size.filter(|&s| s != verifier.len()) {
            return Err(RegistryError::SizeMismatch { registry: self.name.clone(), what: what(), expected, actual: verifier.len() });
        }
        if !verifier.matches() {
            return Err(RegistryError::DigestMismatch { registry: self.name.clone(), what: what(), expected: digest.clone(), actual: verifier.actual() });
        }
        file.sync_all().await.map_err(|e| self.io(temp, &e))?;
        Ok(())
    }

    /// Move a complete, verified, fsynced temporary file to `path`, and make
    /// the rename durable.
    async fn commit(&self, temp: &Path, path: &Path) -> Result<(), RegistryError> {
        let (temp, path) = (temp.to_path_buf(), path.to_path_buf());
        let done = blocking(move || -> Result<(), (PathBuf, std::io::Error)> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
            }
            std::fs::rename(&temp, &path).map_err(|e| (path.clone(), e))?;
            sync_dir(path.parent().unwrap_or(std::path::Path::new(".")))
        })
        .await;
        done.map_err(|(p, e)| self.io(&p, &e))
    }
}
