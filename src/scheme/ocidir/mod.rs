//! The OCI image layout scheme (`oci:/path`): a directory of OCI image
//! layouts (the image-layout spec: `oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`), read and written with the verbs of a registry.
//!
//! Mapping: repository `R` is the layout at `/path/R/`, and a tag `T` of it
//! is the descriptor in that layout's `index.json` whose
//! `org.opencontainers.image.ref.name` annotation is `T` — what skopeo
//! (`oci:/path/R:T`), regclient (`ocidir://path/R:T`) and oras
//! (`--oci-layout path/R:T`) read and write. The catalog is every
//! directory below `/path` holding an `oci-layout` file. Manifests pushed
//! by digest (children of an index, referrers) are blobs only, referenced
//! by what references them. Every layout is self-contained (it can be
//! carried alone); a blob several repositories share is stored once and
//! hard-linked into the others (`tar` keeps the links; a copy that does not
//! only costs space).
//!
//! Crash safety: a blob appears under its digest only complete, flushed,
//! fsynced and checked against its digest and size (written to a temporary
//! file in the layout, then renamed); a blob file already there is never
//! trusted by its name: its size is checked every time it is used and its
//! content hashed once per process before it is reused, hard-linked or
//! reported present, and one that is wrong (a file another tool or an
//! older version cut short) is replaced; `index.json` is replaced atomically (temporary file,
//! fsync, rename, directory fsync) by one writer at a time (an advisory
//! lock on `.regferry-index.lock`, plus an in-process lock), and the tag
//! edits that queue up meanwhile go into its next write together (so a
//! first export of many tags does not rewrite a large `index.json` once per
//! tag; each edit still returns only once it is durable). This module
//! never leaves a partial blob under `blobs/` and never rewrites an
//! `index.json` that would not change.
//!
//! One file per verb: [`ping`], [`tag`] (catalog, tags and `index.json`),
//! [`manifest`], [`blob`], [`referrer`].

mod blob;
mod manifest;
mod ping;
mod referrer;
mod tag;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{ByteStream, Scheme, UploadStream};
use crate::registry::error::ApiError;
use crate::registry::referrers::ApiAnswer;
use crate::registry::{Digest, ManifestBody, ManifestHead, Reference, RegistryError, RegistryUrl, RepoName, Scopes};

/// The annotation that names a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The content of the `oci-layout` file.
pub const LAYOUT_FILE: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// A directory of OCI image layouts, one per repository.
pub struct OciDir {
    root: PathBuf,
    url: RegistryUrl,
    name: String,
    /// A destination: layouts are created on first write.
    writable: bool,
    /// One `index.json` writer at a time per layout within this process
    /// (the file lock orders processes), with the edits waiting for it.
    index_writers: Mutex<HashMap<PathBuf, Arc<tag::IndexWriter>>>,
    /// Where this process wrote or found each blob complete (for
    /// [`Scheme::link_blob`]).
    seen: Mutex<HashMap<Digest, PathBuf>>,
    /// Blob files this process hashed (or wrote) and found right, with the
    /// size they had then: each is hashed once per process, its size
    /// checked every time it is used again.
    verified: Mutex<HashMap<PathBuf, u64>>,
    /// Layouts whose directories this process has made sure of.
    prepared: Mutex<std::collections::HashSet<PathBuf>>,
    temp_counter: AtomicU64,
}

impl OciDir {
    /// The layouts under `url` (an `oci:/path` address). `writable` for a
    /// destination.
    pub fn new(url: &RegistryUrl, writable: bool) -> Result<OciDir, RegistryError> {
        let root = url.layout_dir().ok_or_else(|| RegistryError::Protocol {
            registry: url.to_string(),
            message: "not an oci:/path address".into(),
        })?;
        Ok(OciDir {
            root,
            url: url.clone(),
            name: url.to_string(),
            writable,
            index_writers: Mutex::default(),
            prepared: Mutex::default(),
            seen: Mutex::default(),
            verified: Mutex::default(),
            temp_counter: AtomicU64::new(0),
        })
    }

    /// The layout directory of `repo`. A name that would put a layout into
    /// another layout's `blobs/` is refused.
    fn layout(&self, repo: &RepoName) -> Result<PathBuf, RegistryError> {
        let mut dir = self.root.clone();
        for part in repo.as_str().split('/') {
            if part == "blobs" && dir.join("oci-layout").is_file() {
                return Err(self.local(&dir.join(part), "this repository name would lie inside the blobs directory of another layout"));
            }
            dir.push(part);
        }
        Ok(dir)
    }

    /// `layout/blobs/<alg>/<hex>`.
    fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
        let (alg, hex) = digest.as_str().split_once(':').unwrap_or(("sha256", digest.as_str()));
        layout.join("blobs").join(alg).join(hex)
    }

    fn local(&self, path: &Path, message: impl Into<String>) -> RegistryError {
        RegistryError::Local { registry: self.name.clone(), path: path.display().to_string(), message: message.into() }
    }

    /// An I/O error on `path` (a full disk is the store's condition).
    fn io(&self, path: &Path, e: &std::io::Error) -> RegistryError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            return RegistryError::OutOfSpace { registry: self.name.clone(), reason: format!("{}: {e}", path.display()) };
        }
        self.local(path, e.to_string())
    }

    /// What a registry answers for something absent: `404` with `code`.
    fn absent(&self, method: &str, path: &Path, code: &str, message: String) -> RegistryError {
        RegistryError::Status {
            registry: self.name.clone(),
            method: method.into(),
            path: path.display().to_string(),
            status: 404,
            errors: vec![ApiError { code: code.into(), message, detail: None }],
            retry_after: None,
        }
    }

    fn index_writer(&self, layout: &Path) -> Arc<tag::IndexWriter> {
        let mut map = self.index_writers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(layout.to_path_buf()).or_default().clone()
    }

    /// A fresh temporary file name inside `layout` (never under `blobs/`).
    fn temp_path(&self, layout: &Path, what: &str) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        layout.join(TEMP_DIR).join(format!("{what}.{}.{n}", std::process::id()))
    }
}

/// Where partial files live inside a layout (a name no repository can have).
pub const TEMP_DIR: &str = ".regferry-tmp";

/// Run blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl Scheme for OciDir {
    fn name(&self) -> &str {
        &self.name
    }
    fn url(&self) -> &RegistryUrl {
        &self.url
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), RegistryError>> {
        self.check().boxed()
    }
    fn catalog(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        self.list_layouts().boxed()
    }
    fn tags<'a>(&'a self, repo: &'a RepoName) -> BoxFuture<'a, Result<Vec<String>, RegistryError>> {
        self.list_tags(repo).boxed()
    }
    fn tags_with<'a>(&'a self, repo: &'a RepoName, _scopes: Scopes) -> BoxFuture<'a, Result<Vec<String>, RegistryError>> {
        self.list_tags(repo).boxed()
    }

    fn head_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, _scopes: &'a Scopes)
    -> BoxFuture<'a, Result<Option<ManifestHead>, RegistryError>> {
        self.head(repo, reference).boxed()
    }
    fn head_listed_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, _scopes: &'a Scopes)
    -> BoxFuture<'a, Result<Option<ManifestHead>, RegistryError>> {
        self.head(repo, reference).boxed()
    }
    fn get_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, _scopes: &'a Scopes)
    -> BoxFuture<'a, Result<ManifestBody, RegistryError>> {
        self.get(repo, reference).boxed()
    }
    fn put_manifest<'a>(&'a self, repo: &'a RepoName, reference: &'a Reference, bytes: Bytes, media_type: &'a str)
    -> BoxFuture<'a, Result<Digest, RegistryError>> {
        self.put(repo, reference, bytes, media_type).boxed()
    }
    fn delete_manifest<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest) -> BoxFuture<'a, Result<(), RegistryError>> {
        self.untag_digest(repo, digest).boxed()
    }

    fn referrers<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, artifact_type: Option<&'a str>)
    -> BoxFuture<'a, Result<ApiAnswer, RegistryError>> {
        self.list_referrers(repo, digest, artifact_type).boxed()
    }

    fn blob_exists<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, _scopes: &'a Scopes) -> BoxFuture<'a, Result<bool, RegistryError>> {
        self.has_blob(repo, digest, None).boxed()
    }
    fn blob_exists_sized<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, size: Option<u64>, _scopes: &'a Scopes)
    -> BoxFuture<'a, Result<bool, RegistryError>> {
        self.has_blob(repo, digest, size).boxed()
    }
    fn open_blob(self: Arc<Self>, repo: &RepoName, digest: &Digest, expected: Option<u64>)
    -> BoxFuture<'static, Result<(ByteStream, Option<u64>), RegistryError>> {
        let (repo, digest) = (repo.clone(), digest.clone());
        async move { self.read_blob(&repo, &digest, expected).await }.boxed()
    }
    fn link_blob<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest) -> BoxFuture<'a, Result<bool, RegistryError>> {
        self.link(repo, digest).boxed()
    }
    fn put_blob<'a>(&'a self, repo: &'a RepoName, digest: &'a Digest, size: Option<u64>, body: UploadStream)
    -> BoxFuture<'a, Result<(), RegistryError>> {
        self.write_blob(repo, digest, size, body).boxed()
    }
}
