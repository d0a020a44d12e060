//! The blob spool of one pass: each source blob that the destinations of a
//! policy need is read from the source once, by a writer task, into a file
//! of this pass's own spool directory; every destination (the one that asked
//! first included) reads the file as it grows, at its own pace.
//!
//! Why a file that everyone follows, and not one stream teed to all: the
//! writer runs at the source's speed whoever reads, so a slow destination
//! never slows a fast one (nor the source read), and memory stays one chunk
//! per reader; a destination that asks for a blob after it was read gets it
//! from disk. The price is disk within a budget: a blob is spooled only
//! when its size (from the manifest) fits in what is left of the budget;
//! otherwise, and when spooling failed locally (disk full, no directory),
//! each destination reads it from the source itself, as with one
//! destination. A writer that failed on the source's side is tried again
//! by the next destination that asks (a new file, never the old one).
//!
//! What is trusted, and when: bytes are handed on as the writer writes
//! them (every reader checks the digest itself, as for a source stream);
//! the writer checks size and digest, `fsync`s and renames `<hex>.part` to
//! `<hex>` only when complete. Nothing on disk outlives its pass: the
//! pass's directory (`pass-<pid>-<process start>-<n>`) is removed when the
//! spool is dropped (its writers aborted first), and directories of passes
//! whose process is gone (a crash; also an earlier process with the same
//! pid, as a container's pid 1 is every time) are removed when the next
//! spool starts; no spool ever reads another pass's files.
//!
//! This module must never decide what to copy, never hold a lock across a
//! read or write, and never let a reader wait without bound (a writer
//! without progress for [`FOLLOW_STALL`], or longer when the source's stall
//! timeout allows, fails the readers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::registry::digest::Verifier;
use crate::registry::{Digest, RegistryError, RepoName};
use crate::scheme::{ByteStream, Scheme};

/// The spool budget when none is configured.
pub const DEFAULT_BUDGET: u64 = 2 * 1024 * 1024 * 1024;

/// The spool disk that passes running at once may use together (the
/// daemon's `--spool-budget`): each pass spools within its policy's own
/// budget and within what is left of this one.
#[derive(Debug)]
pub struct DiskBudget {
    limit: AtomicU64,
    used: AtomicU64,
}

impl DiskBudget {
    pub const fn new(limit: u64) -> DiskBudget {
        DiskBudget { limit: AtomicU64::new(limit), used: AtomicU64::new(0) }
    }

    /// The one of this process (unlimited until [`DiskBudget::set_limit`]).
    pub fn process() -> &'static DiskBudget {
        static PROCESS: DiskBudget = DiskBudget::new(u64::MAX);
        &PROCESS
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Take `size` bytes if they fit.
    fn take(&self, size: u64) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| used.checked_add(size).filter(|&n| n <= limit)).is_ok()
    }

    fn give_back(&self, size: u64) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(size)));
    }
}

/// How long a reader waits for the writer to make progress before failing,
/// at least: longer when the source's own stall timeout and resumes allow
/// its download to go quiet for longer (see [`follow_stall`]).
pub const FOLLOW_STALL: Duration = Duration::from_secs(120);

/// How long a reader of `source`'s blobs waits for the writer's next
/// bytes: as long as the source's download may stay quiet while still
/// alive (its stall timeout, once per resume), at least [`FOLLOW_STALL`].
fn follow_stall(source: &dyn Scheme) -> Duration {
    let stall = source.registry().map_or(Duration::ZERO, |c| c.stall_timeout());
    FOLLOW_STALL.max(stall.saturating_mul(crate::scheme::reg::blob::MAX_RESUMES + 1))
}

/// The most a reader reads from the file at once.
const READ_CHUNK: u64 = 256 * 1024;

/// How many bytes the writer gathers before it writes them to the file.
const WRITE_BATCH: usize = 256 * 1024;

/// How far a writer got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    /// This many bytes are in the file.
    Writing(u64),
    /// Complete, checked and renamed.
    Done,
    /// Failed; `local`: on this machine's side (disk), so not tried again.
    Failed { message: String, local: bool },
}

/// One blob being spooled or spooled.
struct Entry {
    size: u64,
    part: PathBuf,
    done: PathBuf,
    progress: watch::Receiver<Progress>,
    writer: tokio::task::AbortHandle,
    /// How long a reader waits for progress.
    stall: Duration,
}

/// What [`Spool::open`] decided for one request.
pub enum Open {
    /// Follow the spool file; with the writer when this request started it.
    Spooled(ByteStream, u64, Option<Writer>),
    /// Read the source directly (not spooled: no size, over budget, or
    /// spooling failed on this machine).
    Direct,
}

/// See the module documentation.
pub struct Spool {
    dir: PathBuf,
    budget: u64,
    used: AtomicU64,
    /// Shared with the other passes of the process.
    shared: &'static DiskBudget,
    /// Set once writing to the spool failed locally: nothing more is spooled.
    broken: Arc<AtomicBool>,
    entries: Mutex<HashMap<Digest, Arc<Entry>>>,
}

impl Spool {
    /// A spool for one pass under `root` (created when missing), holding
    /// at most `budget` bytes; removes what crashed passes left there.
    pub fn create(root: &Path, budget: u64) -> std::io::Result<Spool> {
        Spool::create_within(root, budget, DiskBudget::process())
    }

    /// [`Spool::create`] within `shared` instead of the process's budget.
    pub fn create_within(root: &Path, budget: u64, shared: &'static DiskBudget) -> std::io::Result<Spool> {
        std::fs::create_dir_all(root)?;
        sweep_dead(root);
        static PASSES: AtomicU64 = AtomicU64::new(0);
        let dir = root.join(format!("{}-{}", own_prefix(), PASSES.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&dir)?;
        Ok(Spool { dir, budget, used: AtomicU64::new(0), shared, broken: Arc::new(AtomicBool::new(false)), entries: Mutex::new(HashMap::new()) })
    }

    /// This pass's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The blob `repo@digest` of `source` (`expected` bytes, from the
    /// manifest): followed from the spool, its writer started by the first
    /// to ask, or [`Open::Direct`].
    pub fn open(&self, source: &Arc<dyn Scheme>, repo: &RepoName, digest: &Digest, expected: Option<u64>) -> Open {
        let Some(size) = expected else { return Open::Direct };
        if self.broken.load(Ordering::Relaxed) {
            return Open::Direct;
        }
        let entry = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let retry = match entries.get(digest) {
                None => false,
                // Another size for one digest: not this module's to settle.
                Some(e) if e.size != size => return Open::Direct,
                Some(e) => match &*e.progress.borrow() {
                    Progress::Failed { local: true, .. } => return Open::Direct,
                    Progress::Failed { local: false, .. } => true,
                    _ => false,
                },
            };
            match entries.get(digest) {
                Some(e) if !retry => (e.clone(), None),
                _ => {
                    // A failed earlier attempt (its file removed) gives its budget back.
                    if let Some(old) = entries.remove(digest) {
                        self.used.fetch_sub(old.size, Ordering::Relaxed);
                        self.shared.give_back(old.size);
                    }
                    if self.used.load(Ordering::Relaxed).saturating_add(size) > self.budget || !self.shared.take(size) {
                        tracing::debug!(blob = %digest.short(), size, budget = self.budget, "spool budget used up: the blob is read from the source by each destination");
                        return Open::Direct;
                    }
                    self.used.fetch_add(size, Ordering::Relaxed);
                    let entry = Arc::new(self.start(source.clone(), repo.clone(), digest.clone(), size));
                    entries.insert(digest.clone(), entry.clone());
                    let writer = Writer { progress: entry.progress.clone(), stall: entry.stall };
                    (entry, Some(writer))
                }
            }
        };
        let (entry, writer) = entry;
        Open::Spooled(follow(entry), size, writer)
    }

    /// Start the writer of one blob.
    fn start(&self, source: Arc<dyn Scheme>, repo: RepoName, digest: Digest, size: u64) -> Entry {
        let part = self.dir.join(format!("{}.part", digest.hex()));
        let done = self.dir.join(digest.hex());
        let (tx, rx) = watch::channel(Progress::Writing(0));
        let stall = follow_stall(&*source);
        let (p, d, broken) = (part.clone(), done.clone(), self.broken.clone());
        let writer = tokio::spawn(async move {
            let end = write(source, &repo, &digest, size, &p, &d, &tx).await;
            if let Err((message, local)) = end {
                let _ = tokio::fs::remove_file(&p).await;
                if local {
                    // Disk full, or the directory gone: stop spooling this pass.
                    broken.store(true, Ordering::Relaxed);
                    tracing::warn!(blob = %digest.short(), error = %message, "cannot spool: the destinations read the source each from now on");
                }
                tracing::debug!(blob = %digest.short(), error = %message, local, "spooling failed");
                tx.send_replace(Progress::Failed { message, local });
            }
        })
        .abort_handle();
        Entry { size, part, done, progress: rx, writer, stall }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.shared.give_back(*self.used.get_mut());
        let entries = self.entries.get_mut().unwrap_or_else(|e| e.into_inner());
        for e in entries.values() {
            e.writer.abort();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the pass's spool directory");
        }
    }
}

/// Read `repo@digest` from `source` into `part`, then check, `fsync` and
/// rename it to `done`. Errors: the message and whether it was local.
async fn write(
    source: Arc<dyn Scheme>,
    repo: &RepoName,
    digest: &Digest,
    size: u64,
    part: &Path,
    done: &Path,
    tx: &watch::Sender<Progress>,
) -> Result<(), (String, bool)> {
    let local = |what: &str, e: std::io::Error| (format!("spool file {}: {what}: {e}", part.display()), true);
    let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(part).await.map_err(|e| local("create", e))?;
    let pacer = source.bandwidth();
    let (stream, _) = source.clone().open_blob(repo, digest, Some(size)).await.map_err(|e: RegistryError| (e.to_string(), false))?;
    let mut stream = crate::registry::throttle::limit(stream, [pacer]);
    let mut verifier = Verifier::new(digest);
    // Chunks are gathered up to WRITE_BATCH before they are written and
    // announced: fewer trips to the blocking pool for the small pieces a
    // download arrives in, and never more than one batch in memory.
    let mut batch = BytesMut::new();
    loop {
        let chunk = stream.next().await.transpose().map_err(|e| (format!("reading blob {repo}@{digest} from {}: {e}", source.name()), false))?;
        if let Some(chunk) = &chunk {
            if verifier.len() + chunk.len() as u64 > size {
                return Err((format!("blob {repo}@{digest} at {}: more than the {size} bytes its manifest gives", source.name()), false));
            }
            verifier.update(chunk);
            batch.extend_from_slice(chunk);
        }
        if !batch.is_empty() && (chunk.is_none() || batch.len() >= WRITE_BATCH) {
            file.write_all(&batch).await.map_err(|e| local("write", e))?;
            file.flush().await.map_err(|e| local("write", e))?;
            batch.clear();
            tx.send_replace(Progress::Writing(verifier.len()));
        }
        if chunk.is_none() {
            break;
        }
    }
    if verifier.len() != size {
        return Err((format!("blob {repo}@{digest} at {}: {} bytes, its manifest gives {size}", source.name(), verifier.len()), false));
    }
    if !verifier.matches() {
        return Err((format!("blob {repo}@{digest} at {}: content digest mismatch (got {})", source.name(), verifier.actual()), false));
    }
    file.sync_all().await.map_err(|e| local("fsync", e))?;
    drop(file);
    tokio::fs::rename(part, done).await.map_err(|e| local("rename", e))?;
    tx.send_replace(Progress::Done);
    Ok(())
}

/// The writer of one spool entry, to wait for (see [`Writer::finished`]).
pub struct Writer {
    progress: watch::Receiver<Progress>,
    stall: Duration,
}

impl Writer {
    /// Until the writer is done or failed, or makes no progress for as
    /// long as a reader would wait: the source bytes it reads are counted
    /// by the client of the destination that started it, whose report
    /// should hold them.
    pub async fn finished(mut self) {
        loop {
            if matches!(*self.progress.borrow_and_update(), Progress::Done | Progress::Failed { .. }) {
                return;
            }
            match tokio::time::timeout(self.stall, self.progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }
}

/// A reader of one spool entry.
struct Follower {
    entry: Arc<Entry>,
    progress: watch::Receiver<Progress>,
    file: Option<tokio::fs::File>,
    pos: u64,
    failed: bool,
}

/// The bytes of `entry`, read from its file as the writer writes them.
fn follow(entry: Arc<Entry>) -> ByteStream {
    let progress = entry.progress.clone();
    let state = Follower { entry, progress, file: None, pos: 0, failed: false };
    Box::pin(futures::stream::unfold(state, |mut f| async move {
        if f.failed {
            return None;
        }
        match f.next().await {
            Ok(Some(bytes)) => Some((Ok(bytes), f)),
            Ok(None) => None,
            Err(e) => {
                f.failed = true;
                Some((Err(e), f))
            }
        }
    }))
}

impl Follower {
    /// The next chunk, once the writer has written it; the end only once
    /// the writer has checked the whole blob (a blob that fails the check
    /// ends its readers with an error, never with a clean end).
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            let state = self.progress.borrow_and_update().clone();
            let available = match state {
                Progress::Writing(n) => n,
                Progress::Done if self.pos == self.entry.size => return Ok(None),
                Progress::Done => self.entry.size,
                Progress::Failed { message, .. } => return Err(format!("spooled source blob: {message}")),
            };
            if available > self.pos {
                return self.read(available - self.pos, state == Progress::Done).await.map(Some);
            }
            match tokio::time::timeout(self.entry.stall, self.progress.changed()).await {
                Ok(Ok(())) => {}
                // The writer ended without a last word (aborted): the pass is ending.
                Ok(Err(_)) => return Err("the spool writer stopped".into()),
                Err(_) => return Err(format!("the source blob's spool writer made no progress for {}s", self.entry.stall.as_secs())),
            }
        }
    }

    /// Read up to `n` bytes at the reader's position.
    async fn read(&mut self, n: u64, done: bool) -> Result<Bytes, String> {
        if self.file.is_none() {
            // The writer renames the file when complete: the final name then.
            let first = if done { &self.entry.done } else { &self.entry.part };
            let file = match tokio::fs::File::open(first).await {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !done => tokio::fs::File::open(&self.entry.done).await,
                other => other,
            };
            let mut file = file.map_err(|e| format!("spool file of {}: {e}", self.entry.done.display()))?;
            if self.pos > 0 {
                use tokio::io::AsyncSeekExt;
                file.seek(std::io::SeekFrom::Start(self.pos)).await.map_err(|e| format!("spool file: {e}"))?;
            }
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else { return Err("spool file not open".into()) };
        let want = n.min(READ_CHUNK) as usize;
        let mut buf = BytesMut::zeroed(want);
        file.read_exact(&mut buf).await.map_err(|e| format!("spool file of {}: {e}", self.entry.done.display()))?;
        self.pos += want as u64;
        Ok(buf.freeze())
    }
}

/// `pass-<pid>-<start>`: what the names of this process's spool
/// directories begin with (`start`: when this process first made one, in
/// milliseconds since the epoch, which tells it apart from an earlier
/// process that had the same pid).
fn own_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        format!("pass-{}-{start}", std::process::id())
    })
}

/// Remove the spool directories under `root` of processes that are gone.
fn sweep_dead(root: &Path) {
    let Ok(dir) = std::fs::read_dir(root) else { return };
    let own = format!("{}-", own_prefix());
    for d in dir.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("pass-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else { continue };
        let gone = if pid == std::process::id() { !name.starts_with(&own) } else { libc::pid_t::try_from(pid).map_or(true, crate::process::gone) };
        if gone && let Err(e) = std::fs::remove_dir_all(d.path()) {
            tracing::warn!(dir = %d.path().display(), error = %e, "cannot remove a crashed pass's spool directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryUrl;
    use crate::scheme::ocidir::OciDir;

    /// An OCI layout holding `content` as a blob of `repo` (under its own
    /// digest, or under `name` when given: a corrupt source).
    async fn source(content: &[u8], name: Option<&Digest>) -> (tempfile::TempDir, Arc<dyn Scheme>, RepoName, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let url = RegistryUrl::parse(&format!("oci:{}", dir.path().display())).unwrap();
        let oci: Arc<dyn Scheme> = Arc::new(OciDir::new(&url, true).unwrap());
        let repo: RepoName = "team/app".parse().unwrap();
        let real = Digest::sha256_of(content);
        let body = futures::stream::iter(vec![Ok(Bytes::copy_from_slice(content))]).boxed();
        oci.put_blob(&repo, &real, Some(content.len() as u64), body).await.unwrap();
        let digest = match name {
            Some(other) => {
                let blobs = dir.path().join("team/app/blobs/sha256");
                std::fs::rename(blobs.join(real.hex()), blobs.join(other.hex())).unwrap();
                other.clone()
            }
            None => real,
        };
        (dir, oci, repo, digest)
    }

    /// The bytes of a spooled blob (compared by value, never printed: a mismatch names the lengths).
    async fn drain(open: Open) -> Result<Vec<u8>, String> {
        let Open::Spooled(mut stream, _, _) = open else { return Err("not spooled".into()) };
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    fn content() -> Vec<u8> {
        (0..700_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn every_reader_gets_the_blob_from_one_spool_file_which_goes_with_the_pass() {
        let (_src, oci, repo, digest) = source(&content(), None).await;
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::create(root.path(), 10 << 20).unwrap();
        let size = Some(content().len() as u64);
        let (a, b) = tokio::join!(drain(spool.open(&oci, &repo, &digest, size)), drain(spool.open(&oci, &repo, &digest, size)));
        assert!(a.unwrap() == content() && b.unwrap() == content(), "a reader got other bytes");
        // Complete: checked, renamed; one writer, one file.
        let done = spool.dir().join(digest.hex());
        assert!(std::fs::read(&done).unwrap() == content(), "the spool file holds other bytes");
        assert_eq!(spool.entries.lock().unwrap().len(), 1);
        assert!(drain(spool.open(&oci, &repo, &digest, size)).await.unwrap() == content(), "a late reader got other bytes");
        let dir = spool.dir().to_path_buf();
        drop(spool);
        assert!(!dir.exists(), "the pass's spool outlived it");
    }

    #[tokio::test]
    async fn over_budget_or_without_a_size_the_source_is_read_directly() {
        let (_src, oci, repo, digest) = source(&content(), None).await;
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::create(root.path(), 100_000).unwrap();
        assert!(matches!(spool.open(&oci, &repo, &digest, Some(content().len() as u64)), Open::Direct));
        assert!(matches!(spool.open(&oci, &repo, &digest, None), Open::Direct));
        assert_eq!(std::fs::read_dir(spool.dir()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn passes_at_once_spool_within_the_process_budget_and_give_it_back() {
        let (_src, oci, repo, digest) = source(&content(), None).await;
        let size = content().len() as u64;
        static SHARED: DiskBudget = DiskBudget::new(0);
        SHARED.set_limit(size + size / 2);
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (Spool::create_within(root.path(), 10 << 20, &SHARED).unwrap(), Spool::create_within(root.path(), 10 << 20, &SHARED).unwrap());
        assert!(drain(a.open(&oci, &repo, &digest, Some(size))).await.unwrap() == content());
        assert_eq!(a.used.load(Ordering::Relaxed), size, "the first pass did not spool the blob");
        // The other pass has room in its own budget but not in the process's.
        assert!(matches!(b.open(&oci, &repo, &digest, Some(size)), Open::Direct), "the process budget was exceeded");
        drop(a);
        assert_eq!(SHARED.used.load(Ordering::Relaxed), 0, "a finished pass kept its share of the process budget");
        assert!(matches!(b.open(&oci, &repo, &digest, Some(size)), Open::Spooled(..)), "the budget given back was not used");
    }

    #[tokio::test]
    async fn a_corrupt_source_blob_is_never_completed_and_is_tried_again() {
        let other = Digest::sha256_of(b"something else");
        let (_src, oci, repo, digest) = source(&content(), Some(&other)).await;
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::create(root.path(), 10 << 20).unwrap();
        let size = Some(content().len() as u64);
        let e = drain(spool.open(&oci, &repo, &digest, size)).await.err().unwrap_or_default();
        assert!(e.contains("digest mismatch"), "{e}");
        assert_eq!(std::fs::read_dir(spool.dir()).unwrap().count(), 0, "a failed spool file was left");
        // The next reader starts a new attempt (the source may have been at fault once).
        assert!(drain(spool.open(&oci, &repo, &digest, size)).await.err().unwrap_or_default().contains("digest mismatch"));
        assert_eq!(spool.used.load(Ordering::Relaxed), content().len() as u64, "a failed attempt kept its budget");
    }

    #[tokio::test]
    async fn a_spool_that_cannot_be_written_sends_every_later_reader_to_the_source() {
        let (_src, oci, repo, digest) = source(&content(), None).await;
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::create(root.path(), 10 << 20).unwrap();
        // The directory vanishes under the pass (as on a full or failing disk, the write fails).
        std::fs::remove_dir_all(spool.dir()).unwrap();
        let size = Some(content().len() as u64);
        assert!(drain(spool.open(&oci, &repo, &digest, size)).await.is_err());
        assert!(matches!(spool.open(&oci, &repo, &digest, size), Open::Direct));
        let other = Digest::sha256_of(b"another blob");
        assert!(matches!(spool.open(&oci, &repo, &other, Some(12)), Open::Direct), "spooling went on after a local failure");
    }

    #[test]
    fn what_a_crashed_pass_left_is_removed_and_never_read() {
        let root = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22 on Linux: this process does not exist.
        let dead = root.path().join("pass-4194305-1-0");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("abc"), b"complete-looking").unwrap();
        std::fs::write(dead.join("def.part"), b"half").unwrap();
        let live = root.path().join(format!("{}-999999", own_prefix()));
        std::fs::create_dir_all(&live).unwrap();
        // Our pid, another process (a container's pid 1 after a restart).
        let earlier = root.path().join(format!("pass-{}-1-0", std::process::id()));
        std::fs::create_dir_all(&earlier).unwrap();
        let spool = Spool::create(root.path(), 1).unwrap();
        assert!(!dead.exists(), "a crashed pass's spool was kept");
        assert!(live.exists(), "a running pass's spool was removed");
        assert!(!earlier.exists(), "an earlier process's spool with our pid was kept");
        assert_eq!(std::fs::read_dir(spool.dir()).unwrap().count(), 0);
    }
}
