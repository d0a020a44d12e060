//! The layout scheme's blob verbs: existence, a streamed read, and a
//! streamed, crash-safe write — bytes go to a temporary file inside the
//! layout while their digest is computed, and only a complete file whose
//! digest and size are right, flushed (so the last write's error is seen)
//! and fsynced, is renamed to `blobs/<alg>/<hex>`. A file already under a
//! blob's name is checked before it counts (size every time, content hashed
//! once per process) and replaced when wrong. Never buffers a blob, never
//! leaves a partial one under `blobs/`, and never trusts a file by its name.

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
    /// Whether `repo` holds the blob `digest` (of `size`, when known) whole:
    /// a file that is there but wrong counts as absent.
    pub(super) async fn has_blob(&self, repo: &RepoName, digest: &Digest, size: Option<u64>) -> Result<bool, RegistryError> {
        let path = Self::blob_path(&self.layout(repo)?, digest);
        let found = self.intact(&path, digest, size).await?;
        if found {
            self.saw(digest, path);
        }
        Ok(found)
    }

    fn saw(&self, digest: &Digest, path: PathBuf) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).entry(digest.clone()).or_insert(path);
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PathBuf, u64>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the file at `path` is the blob `digest` (of `size`, when
    /// known): its size is compared every time (with `size`, and with the
    /// size it had when hashed), its content hashed once per process. A
    /// wrong file is reported and left where it is (a write replaces it;
    /// `verify` only reads).
    async fn intact(&self, path: &Path, digest: &Digest, size: Option<u64>) -> Result<bool, RegistryError> {
        let len = match tokio::fs::metadata(path).await {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.io(path, &e)),
        };
        if let Some(expected) = size.filter(|&s| s != len) {
            tracing::warn!(layout = %self.name, blob = %digest.short(), path = %path.display(), size = len, expected, "a blob file has the wrong size: it counts as missing (a write replaces it)");
            self.verified().remove(path);
            return Ok(false);
        }
        if self.verified().get(path) == Some(&len) {
            return Ok(true);
        }
        let (at, expected) = (path.to_path_buf(), digest.clone());
        let hashed = blocking(move || -> std::io::Result<Option<Verifier>> {
            use std::io::Read;
            let mut file = match std::fs::File::open(&at) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut verifier = Verifier::new(&expected);
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match file.read(&mut buf)? {
                    0 => return Ok(Some(verifier)),
                    n => verifier.update(&buf[..n]),
                }
            }
        })
        .await
        .map_err(|e| self.io(path, &e))?;
        let Some(verifier) = hashed else { return Ok(false) };
        if verifier.matches() && size.is_none_or(|s| s == verifier.len()) {
            self.verified().insert(path.to_path_buf(), verifier.len());
            return Ok(true);
        }
        tracing::warn!(layout = %self.name, blob = %digest.short(), path = %path.display(), size = verifier.len(), actual = %verifier.actual(), "a blob file does not match its digest: it counts as missing (a write replaces it)");
        self.verified().remove(path);
        Ok(false)
    }

    /// Hard-link the blob into `repo`'s layout from where this process
    /// wrote or found it complete (and still finds it so); false when it
    /// knows no such place or the link cannot be made (another file system:
    /// the caller streams). A wrong file under the name is replaced.
    pub(super) async fn link(&self, repo: &RepoName, digest: &Digest) -> Result<bool, RegistryError> {
        let Some(from) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned() else { return Ok(false) };
        if !self.intact(&from, digest, None).await? {
            self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(digest);
            return Ok(false);
        }
        let layout = self.prepare(repo).await?;
        let path = Self::blob_path(&layout, digest);
        if self.intact(&path, digest, None).await? {
            return Ok(true);
        }
        let Some(size) = self.verified().get(&from).copied() else { return Ok(false) };
        // Linked under a temporary name, then renamed over the name: a
        // wrong file there is replaced in one step.
        let (temp, to) = (self.temp_path(&layout, digest.hex()), path.clone());
        let linked = blocking(move || -> std::io::Result<()> {
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::hard_link(&from, &temp)?;
            let renamed = std::fs::rename(&temp, &to);
            // (Already the same file: rename leaves both names.)
            let _ = std::fs::remove_file(&temp);
            renamed?;
            std::fs::File::open(to.parent().unwrap_or(std::path::Path::new(".")))?.sync_all()
        })
        .await;
        match linked {
            Ok(()) => {
                self.verified().insert(path, size);
                Ok(true)
            }
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
    /// documentation). A blob already there whole is kept and `body` left
    /// unread; a wrong file under its name is replaced.
    pub(super) async fn write_blob(&self, repo: &RepoName, digest: &Digest, size: Option<u64>, mut body: UploadStream) -> Result<(), RegistryError> {
        let layout = self.prepare(repo).await?;
        let path = Self::blob_path(&layout, digest);
        if self.intact(&path, digest, size).await? {
            self.saw(digest, path);
            return Ok(());
        }
        let temp = self.temp_path(&layout, digest.hex());
        let result = self.write_temp(&temp, repo, digest, size, &mut body).await;
        let result = match result {
            Ok(len) => self.commit(&temp, &path).await.map(|()| len),
            Err(e) => Err(e),
        };
        if let Ok(len) = result {
            self.verified().insert(path.clone(), len);
            self.saw(digest, path);
        }
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result.map(|_| ())
    }

    /// Store `bytes` (a manifest) as the blob `digest` of `repo`.
    pub(super) async fn write_bytes(&self, repo: &RepoName, digest: &Digest, bytes: Bytes) -> Result<(), RegistryError> {
        let size = bytes.len() as u64;
        self.write_blob(repo, digest, Some(size), futures::stream::iter([Ok(bytes)]).boxed()).await
    }

    /// Write `body` to `temp`, flushed and fsynced, and check it; returns
    /// its size.
    async fn write_temp(&self, temp: &Path, repo: &RepoName, digest: &Digest, size: Option<u64>, body: &mut UploadStream) -> Result<u64, RegistryError> {
        let mut file = tokio::fs::File::create(temp).await.map_err(|e| self.io(temp, &e))?;
        let mut verifier = Verifier::new(digest);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.local(temp, format!("the blob's bytes failed: {e}")))?;
            verifier.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| self.io(temp, &e))?;
        }
        // tokio's file writes in the background: the last write's error
        // comes with the flush (`sync_all` would drop it).
        file.flush().await.map_err(|e| self.io(temp, &e))?;
        let what = || format!("blob {repo}@{digest}");
        if let Some(expected) = size.filter(|&s| s != verifier.len()) {
            return Err(RegistryError::SizeMismatch { registry: self.name.clone(), what: what(), expected, actual: verifier.len() });
        }
        if !verifier.matches() {
            return Err(RegistryError::DigestMismatch { registry: self.name.clone(), what: what(), expected: digest.clone(), actual: verifier.actual() });
        }
        file.sync_all().await.map_err(|e| self.io(temp, &e))?;
        // What the disk holds, not what was handed to it.
        let on_disk = file.metadata().await.map_err(|e| self.io(temp, &e))?.len();
        if on_disk != verifier.len() {
            return Err(self.local(temp, format!("{} bytes were written but the file holds {on_disk}", verifier.len())));
        }
        Ok(verifier.len())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::RegistryUrl;

    fn layout_dir() -> (tempfile::TempDir, Arc<OciDir>) {
        let dir = tempfile::tempdir().unwrap();
        let url = RegistryUrl::parse(&format!("oci:{}", dir.path().display())).unwrap();
        let oci = Arc::new(OciDir::new(&url, true).unwrap());
        (dir, oci)
    }

    fn body(bytes: &[u8]) -> UploadStream {
        let chunks: Vec<Result<Bytes, std::io::Error>> = bytes.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures::stream::iter(chunks).boxed()
    }

    /// Put `content` under the blob name of `digest` in `repo`'s layout, as
    /// a cut-off write (or another tool) would have left it.
    fn plant(root: &Path, repo: &str, digest: &Digest, content: &[u8]) -> PathBuf {
        let path = root.join(repo).join("blobs/sha256").join(digest.hex());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(root.join(repo).join("oci-layout"), super::super::LAYOUT_FILE).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_planted_empty_or_truncated_blob_file_counts_as_missing_and_is_rewritten() {
        let (dir, oci) = layout_dir();
        let repo: RepoName = "team/app".parse().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#.to_vec();
        let (layer, config) = (Digest::sha256_of(&data), Digest::sha256_of(&manifest));
        let empty = plant(dir.path(), "team/app", &config, b"");
        let cut = plant(dir.path(), "team/app", &layer, &data[..4096]);

        // Neither is trusted by its name: with the size the manifest gives,
        // and without it (hashed).
        assert!(!oci.has_blob(&repo, &layer, Some(data.len() as u64)).await.unwrap());
        assert!(!oci.has_blob(&repo, &layer, None).await.unwrap());
        assert!(!oci.has_blob(&repo, &config, None).await.unwrap());
        // Nor read as a manifest.
        assert!(oci.get(&repo, &crate::registry::Reference::Digest(config.clone())).await.is_err());

        // Written again: replaced by the right bytes.
        oci.write_blob(&repo, &layer, Some(data.len() as u64), body(&data)).await.unwrap();
        oci.write_bytes(&repo, &config, Bytes::from(manifest.clone())).await.unwrap();
        assert_eq!(std::fs::read(&cut).unwrap(), data);
        assert_eq!(std::fs::read(&empty).unwrap(), manifest);
        assert!(oci.has_blob(&repo, &layer, Some(data.len() as u64)).await.unwrap());
        assert!(std::fs::read_dir(dir.path().join("team/app").join(crate::scheme::ocidir::TEMP_DIR)).unwrap().next().is_none(), "no temporary file left");

        // A file that is right is kept as it is (not rewritten).
        let before = std::fs::metadata(&cut).unwrap().modified().unwrap();
        oci.write_blob(&repo, &layer, Some(data.len() as u64), body(b"never read")).await.unwrap();
        assert_eq!(std::fs::metadata(&cut).unwrap().modified().unwrap(), before);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_wrong_file_where_a_blob_is_linked_is_replaced_by_the_link() {
        use std::os::unix::fs::MetadataExt;
        let (dir, oci) = layout_dir();
        let (a, b): (RepoName, RepoName) = ("a/app".parse().unwrap(), "b/app".parse().unwrap());
        let data = vec![42u8; 5000];
        let digest = Digest::sha256_of(&data);
        oci.write_blob(&a, &digest, Some(5000), body(&data)).await.unwrap();
        let wrong = plant(dir.path(), "b/app", &digest, &data[..100]);
        assert!(oci.link(&b, &digest).await.unwrap(), "linked");
        assert_eq!(std::fs::read(&wrong).unwrap(), data);
        let good = dir.path().join("a/app/blobs/sha256").join(digest.hex());
        assert_eq!(std::fs::metadata(&wrong).unwrap().ino(), std::fs::metadata(&good).unwrap().ino(), "one file, two names");

        // The source of links is checked too: cut short after it was
        // written, it is no longer linked from (the caller streams).
        std::fs::remove_file(&wrong).unwrap();
        std::fs::write(&good, &data[..10]).unwrap();
        assert!(!oci.link(&b, &digest).await.unwrap());
        assert!(!wrong.exists());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_blob_file_is_hashed_once_per_process_and_its_size_checked_every_time() {
        let (dir, oci) = layout_dir();
        let repo: RepoName = "team/app".parse().unwrap();
        let data = vec![9u8; 3000];
        let digest = Digest::sha256_of(&data);
        let path = plant(dir.path(), "team/app", &digest, &data);
        assert!(oci.has_blob(&repo, &digest, None).await.unwrap());
        // Same size, other bytes: this process hashed it already and trusts
        // that (once per run); a new one hashes it again and does not.
        std::fs::write(&path, vec![8u8; 3000]).unwrap();
        assert!(oci.has_blob(&repo, &digest, None).await.unwrap());
        let fresh = OciDir::new(&RegistryUrl::parse(&format!("oci:{}", dir.path().display())).unwrap(), false).unwrap();
        assert!(!fresh.has_blob(&repo, &digest, None).await.unwrap());
        // Another size: noticed at once, hashed or not.
        std::fs::write(&path, vec![9u8; 2999]).unwrap();
        assert!(!oci.has_blob(&repo, &digest, None).await.unwrap());
    }
}
