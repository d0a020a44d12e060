//! The layout scheme's tag verbs and the one file they live in: the
//! catalog (directories holding an `oci-layout` file), the tags of a
//! repository (the `org.opencontainers.image.ref.name` annotations of its
//! `index.json`), and the only code that writes `index.json` — replaced
//! atomically, by one writer at a time, and only when it changes.
//!
//! Also where a layout is first set up (`oci-layout`, an empty
//! `index.json`, `blobs/sha256/`), so a layout is valid from its first
//! moment on. Never edits an entry it was not asked to.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{LAYOUT_FILE, OciDir, REF_NAME, TEMP_DIR, blocking};
use crate::registry::manifest::OCI_INDEX;
use crate::registry::{Digest, RegistryError, RepoName};

/// One descriptor of `index.json`.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub tag: Option<String>,
}

/// The descriptors of an `index.json` (unusable ones left out).
fn entries(index: &Value) -> Vec<Entry> {
    let Some(list) = index.get("manifests").and_then(Value::as_array) else { return Vec::new() };
    list.iter()
        .filter_map(|d| {
            Some(Entry {
                digest: d.get("digest")?.as_str()?.parse().ok()?,
                media_type: d.get("mediaType").and_then(Value::as_str).map(str::to_string),
                tag: d.get("annotations").and_then(|a| a.get(REF_NAME)).and_then(Value::as_str).map(str::to_string),
            })
        })
        .collect()
}

/// The descriptor `index.json` gets for a tag.
pub(super) fn tag_entry(tag: &str, digest: &Digest, media_type: &str, size: u64) -> Value {
    json!({ "mediaType": media_type, "digest": digest.as_str(), "size": size, "annotations": { REF_NAME: tag } })
}

/// A change to the `manifests` of an `index.json`; true when it changed something.
type Edit = Box<dyn FnOnce(&mut Vec<Value>) -> bool + Send>;

/// Why a write of `index.json` failed (handed to every edit of the batch).
#[derive(Debug, Clone)]
struct Failure {
    path: PathBuf,
    os: Option<i32>,
    message: String,
}

impl From<(PathBuf, std::io::Error)> for Failure {
    fn from((path, e): (PathBuf, std::io::Error)) -> Failure {
        Failure { path, os: e.raw_os_error(), message: e.to_string() }
    }
}

/// Told how the write that carried an edit went.
type Waiter = oneshot::Sender<Result<(), Failure>>;

/// The writer of one layout's `index.json`: its lock, and the edits
/// waiting for the next write.
#[derive(Default)]
pub(super) struct IndexWriter {
    write: tokio::sync::Mutex<()>,
    queue: std::sync::Mutex<Vec<(Edit, Waiter)>>,
}

fn empty_index() -> Value {
    json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] })
}

/// `path` with `bytes`, atomically: a temporary file, fsync, rename, and
/// an fsync of the directory so the rename itself survives a crash.
pub(super) fn replace_file(temp: &Path, path: &Path, bytes: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let mut f = File::create(temp).map_err(|e| (temp.to_path_buf(), e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| (temp.to_path_buf(), e))?;
    drop(f);
    if let Err(e) = fs::rename(temp, path) {
        let _ = fs::remove_file(temp);
        return Err((path.to_path_buf(), e));
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| (dir.to_path_buf(), e))
}

/// Whether the process that named a temporary file `what.<pid>.<n>` is gone
/// (only where `/proc` tells; elsewhere nothing is taken for stale).
fn stale(name: &str) -> bool {
    let mut parts = name.rsplit('.');
    let (Some(_n), Some(pid)) = (parts.next(), parts.next()) else { return false };
    let Ok(pid) = pid.parse::<u32>() else { return false };
    pid != std::process::id() && Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
}

fn read_index(layout: &Path) -> Result<Option<Value>, (PathBuf, std::io::Error)> {
    let path = layout.join("index.json");
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| (path, std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an index: {e}")))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err((path, e)),
    }
}

impl OciDir {
    /// Every repository: the directories below the root that hold an
    /// `oci-layout` file (a layout's `blobs/` and hidden entries are not
    /// looked into).
    pub(super) async fn list_layouts(&self) -> Result<Vec<String>, RegistryError> {
        let root = self.root.clone();
        if root.join("oci-layout").is_file() {
            return Err(self.local(
                &root,
                "this directory is itself one OCI layout; regferry keeps one layout per repository below the oci: \
                 directory (oci:/path holds repository REPO in /path/REPO): name its parent and --repo its name",
            ));
        }
        let found = blocking(move || -> Result<Vec<String>, (PathBuf, std::io::Error)> {
            let mut out = Vec::new();
            let mut stack = vec![(root.clone(), String::new())];
            while let Some((dir, rel)) = stack.pop() {
                let is_layout = dir.join("oci-layout").is_file();
                if is_layout && !rel.is_empty() {
                    out.push(rel.clone());
                }
                let list = match fs::read_dir(&dir) {
                    Ok(list) => list,
                    Err(e) if dir == root => return Err((dir, e)),
                    Err(_) => continue,
                };
                for entry in list.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') || (is_layout && name == "blobs") || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                    stack.push((entry.path(), child));
                }
            }
            out.sort();
            Ok(out)
        })
        .await;
        found.map_err(|(path, e)| self.io(&path, &e))
    }

    /// The descriptors of `repo`'s `index.json`; `404 NAME_UNKNOWN` when
    /// the repository has no layout.
    pub(super) async fn index(&self, repo: &RepoName) -> Result<Vec<Entry>, RegistryError> {
        let layout = self.layout(repo)?;
        let at = layout.clone();
        match blocking(move || read_index(&at)).await {
            Ok(Some(index)) => Ok(entries(&index)),
            Ok(None) => Err(self.absent("READ", &layout.join("index.json"), "NAME_UNKNOWN", format!("repository {repo} has no layout"))),
            Err((path, e)) => Err(self.io(&path, &e)),
        }
    }

    pub(super) async fn list_tags(&self, repo: &RepoName) -> Result<Vec<String>, RegistryError> {
        let mut tags: Vec<String> = self.index(repo).await?.into_iter().filter_map(|e| e.tag).collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Make sure `repo`'s layout exists (once per process): its
    /// directories, `oci-layout` and an `index.json`; partial files left by
    /// a process that died are removed. Returns the layout directory.
    pub(super) async fn prepare(&self, repo: &RepoName) -> Result<PathBuf, RegistryError> {
        let layout = self.layout(repo)?;
        if !self.writable {
            return Err(self.local(&layout, "the source layout is not written to"));
        }
        if self.prepared.lock().unwrap_or_else(|p| p.into_inner()).contains(&layout) {
            return Ok(layout);
        }
        let writer = self.index_writer(&layout);
        let _guard = writer.write.lock().await;
        let temp_layout = self.temp_path(&layout, "oci-layout");
        let temp_index = self.temp_path(&layout, "index.json");
        let at = layout.clone();
        let done = blocking(move || -> Result<(), (PathBuf, std::io::Error)> {
            let tmp = at.join(TEMP_DIR);
            for dir in [at.join("blobs").join("sha256"), tmp.clone()] {
                fs::create_dir_all(&dir).map_err(|e| (dir.clone(), e))?;
            }
            for entry in fs::read_dir(&tmp).map_err(|e| (tmp.clone(), e))?.flatten() {
                if stale(&entry.file_name().to_string_lossy()) {
                    let _ = fs::remove_file(entry.path());
                }
            }
            if !at.join("oci-layout").is_file() {
                replace_file(&temp_layout, &at.join("oci-layout"), LAYOUT_FILE.as_bytes())?;
            }
            if !at.join("index.json").is_file() {
                let bytes = serde_json::to_vec(&empty_index()).map_err(std::io::Error::other).map_err(|e| (at.clone(), e))?;
                let _file_lock = lock_file(&at)?;
                if !at.join("index.json").is_file() {
                    replace_file(&temp_index, &at.join("index.json"), &bytes)?;
                }
            }
            Ok(())
        })
        .await;
        done.map_err(|(path, e)| self.io(&path, &e))?;
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(layout.clone());
        Ok(layout)
    }

    /// Change `repo`'s `index.json` with `edit` (given its `manifests`
    /// array; returns whether it changed anything), under the layout's
    /// locks, re-reading the file first so a concurrent writer's entries
    /// survive. Edits queued while another write is under way go into the
    /// next write together; each call returns once its edit is durable.
    /// Nothing is written when nothing changed.
    pub(super) async fn update_index(
        &self,
        repo: &RepoName,
        edit: impl FnOnce(&mut Vec<Value>) -> bool + Send + 'static,
    ) -> Result<(), RegistryError> {
        let layout = self.prepare(repo).await?;
        let writer = self.index_writer(&layout);
        let (done, outcome) = oneshot::channel();
        writer.queue.lock().unwrap_or_else(|p| p.into_inner()).push((Box::new(edit), done));
        {
            let _guard = writer.write.lock().await;
            let batch = std::mem::take(&mut *writer.queue.lock().unwrap_or_else(|p| p.into_inner()));
            // Empty: an earlier writer took this edit along.
            if !batch.is_empty() {
                let (edits, waiting): (Vec<Edit>, Vec<_>) = batch.into_iter().unzip();
                let temp = self.temp_path(&layout, "index.json");
                let at = layout.clone();
                let result = blocking(move || write_index(&at, &temp, edits)).await;
                for w in waiting {
                    let _ = w.send(result.clone());
                }
            }
        }
        match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(self.io(&f.path, &f.os.map_or_else(|| std::io::Error::other(f.message.clone()), std::io::Error::from_raw_os_error))),
            Err(_) => Err(self.local(&layout.join("index.json"), "the write of index.json was abandoned")),
        }
    }

    /// Point `tag` of `repo` at the manifest `digest` (the only entry with
    /// that name afterwards); nothing is written when it already does.
    pub(super) async fn set_tag(&self, repo: &RepoName, tag: &str, digest: &Digest, media_type: &str, size: u64) -> Result<(), RegistryError> {
        let wanted = tag_entry(tag, digest, media_type, size);
        let tag = tag.to_string();
        self.update_index(repo, move |list| {
            let named = |d: &Value| d.get("annotations").and_then(|a| a.get(REF_NAME)).and_then(Value::as_str) == Some(tag.as_str());
            let same: Vec<&Value> = list.iter().filter(|d| named(d)).collect();
            if same.len() == 1 && same[0] == &wanted {
                return false;
            }
            list.retain(|d| !named(d));
            list.push(wanted);
            true
        })
        .await
    }

    /// Remove every entry of `repo`'s `index.json` that names `digest` (its
    /// blobs stay: unreferenced blobs are allowed in a layout).
    pub(super) async fn untag_digest(&self, repo: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
        if !self.layout(repo)?.join("index.json").is_file() {
            return Ok(());
        }
        let digest = digest.as_str().to_string();
        self.update_index(repo, move |list| {
            let before = list.len();
            list.retain(|d| d.get("digest").and_then(Value::as_str) != Some(digest.as_str()));
            list.len() != before
        })
        .await
    }
}

/// Apply `edits` to `layout`'s `index.json` under the file lock, and
/// replace it when any changed something.
fn write_index(layout: &Path, temp: &Path, edits: Vec<Edit>) -> Result<(), Failure> {
    let _file_lock = lock_file(layout)?;
    let mut index = read_index(layout)?.unwrap_or_else(empty_index);
    let invalid = |why: &str| Failure { path: layout.join("index.json"), os: None, message: why.to_string() };
    let obj = index.as_object_mut().ok_or_else(|| invalid("not a JSON object"))?;
    let manifests = obj.entry("manifests").or_insert_with(|| Value::Array(Vec::new()));
    if !manifests.is_array() {
        return Err(invalid("its manifests are not a list"));
    }
    let list = manifests.as_array_mut().ok_or_else(|| invalid("its manifests are not a list"))?;
    let mut changed = false;
    for edit in edits {
        changed |= edit(list);
    }
    if !changed {
        return Ok(());
    }
    let bytes = serde_json::to_vec(&index).map_err(|e| invalid(&e.to_string()))?;
    Ok(replace_file(temp, &layout.join("index.json"), &bytes)?)
}

/// The advisory lock that makes one process at a time write a layout's
/// `index.json` (held until the returned file is dropped).
fn lock_file(layout: &Path) -> Result<File, (PathBuf, std::io::Error)> {
    let path = layout.join(".regferry-index.lock");
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| (path.clone(), e))?;
    f.lock().map_err(|e| (path, e))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_ref_names_and_skip_unusable_descriptors() {
        let d = Digest::sha256_of(b"x");
        let index = json!({ "manifests": [
            tag_entry("v1", &d, "application/vnd.oci.image.manifest.v1+json", 3),
            { "digest": "nope" },
            { "digest": d.as_str(), "mediaType": "m" },
        ]});
        let e = entries(&index);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].tag.as_deref(), Some("v1"));
        assert_eq!(e[1].tag, None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_tag_edits_all_land_and_an_unchanged_tag_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::registry::RegistryUrl::parse(&format!("oci:{}", dir.path().display())).unwrap();
        let oci = std::sync::Arc::new(OciDir::new(&url, true).unwrap());
        let repo: RepoName = "team/app".parse().unwrap();
        let digest = |i: usize| Digest::sha256_of(format!("m{i}").as_bytes());
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (oci, repo) = (oci.clone(), repo.clone());
                tokio::spawn(async move { oci.set_tag(&repo, &format!("t{i}"), &digest(i), OCI_INDEX, 2).await })
            })
            .collect();
        for t in futures::future::join_all(tasks).await {
            t.unwrap().unwrap();
        }
        assert_eq!(oci.list_tags(&repo).await.unwrap().len(), 40, "no edit lost in a batch");
        let index = dir.path().join("team/app/index.json");
        let before = fs::metadata(&index).unwrap().modified().unwrap();
        oci.set_tag(&repo, "t7", &digest(7), OCI_INDEX, 2).await.unwrap();
        assert_eq!(fs::metadata(&index).unwrap().modified().unwrap(), before, "an unchanged tag rewrote index.json");
        oci.set_tag(&repo, "t7", &digest(8), OCI_INDEX, 2).await.unwrap();
        let entries = oci.index(&repo).await.unwrap();
        assert_eq!(entries.iter().filter(|e| e.tag.as_deref() == Some("t7")).map(|e| e.digest.clone()).collect::<Vec<_>>(), vec![digest(8)]);
        // t7 and t8 both name it now.
        oci.untag_digest(&repo, &digest(8)).await.unwrap();
        assert_eq!(oci.list_tags(&repo).await.unwrap().len(), 38);
        assert!(fs::read_dir(dir.path().join("team/app").join(TEMP_DIR)).unwrap().next().is_none(), "no temporary file left");
    }

    #[test]
    fn temporary_files_of_dead_processes_are_stale() {
        assert!(!stale(&format!("x.{}.1", std::process::id())), "our own");
        assert!(!stale("garbage"));
        if Path::new("/proc/self").exists() {
            assert!(stale("x.4000000000.1"));
        }
    }
}
