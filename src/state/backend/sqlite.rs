//! The SQLite backend: one file, WAL journal, one connection per process
//! (SQLite has one writer anyway), and a busy timeout so that processes
//! sharing the file wait for each other instead of failing.
//!
//! Creating and migrating a new file is safe when several processes start
//! at once: the migrations run inside one `BEGIN IMMEDIATE` transaction, so
//! the first process applies them while the others wait for its write lock
//! and then find them applied (a start SQLite refuses at once with "database
//! is locked" is tried again within the busy timeout). Never stores or
//! shows a credential.

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

use super::{migrate_error, migration, migrator, open_error};
use crate::state::{StateError, StateLocation};

/// How long a connection waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

fn migrations() -> Migrator {
    migrator(vec![
        migration(1, "init", include_str!("../migrations/sqlite/0001_init.sql")),
        migration(2, "daemon", include_str!("../migrations/sqlite/0002_daemon.sql")),
        migration(3, "health", include_str!("../migrations/sqlite/0003_health.sql")),
        migration(4, "platforms", include_str!("../migrations/sqlite/0004_platforms.sql")),
        migration(5, "referrers", include_str!("../migrations/sqlite/0005_referrers.sql")),
        migration(6, "workers", include_str!("../migrations/sqlite/0006_workers.sql")),
        migration(8, "dr", include_str!("../migrations/sqlite/0008_dr.sql")),
        migration(9, "narrowed", include_str!("../migrations/sqlite/0009_narrowed.sql")),
        migration(11, "pass_errors", include_str!("../migrations/sqlite/0011_pass_errors.sql")),
    ])
}

/// `sqlite:` URL of `path` (created if missing), for the `Any` driver.
fn url(path: &Path) -> String {
    let mut encoded = String::new();
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'%' | b'?' | b'#' | b' ' | b'"' | b'<' | b'>' | b'`' | b'{' | b'}' => encoded.push_str(&format!("%{b:02X}")),
            0..=0x1f | 0x7f.. => encoded.push_str(&format!("%{b:02X}")),
            _ => encoded.push(char::from(*b)),
        }
    }
    format!("sqlite:{encoded}?mode=rwc")
}

pub(super) async fn open(location: &StateLocation, path: &Path) -> Result<AnyPool, StateError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Dir { location: location.redacted(), source })?;
    }
    // A file that is not a database fails here, at once, with SQLite's own
    // words (the pool would take it for a connection that may work later
    // and try again until its acquire timeout).
    let url = url(path);
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(20);
    loop {
        match check(&url).await {
            Ok(()) => break,
            Err(e) if is_locked(&e.to_string()) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(open_error(location, e)),
        }
    }
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(BUSY_TIMEOUT * 2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // busy_timeout first: everything after it waits for other processes' locks.
                conn.execute(
                    sqlx::AssertSqlSafe(format!(
                        "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                        BUSY_TIMEOUT.as_millis()
                    )),
                )
                .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(|e| open_error(location, e))?;
    // SQLite answers "database is locked" at once, without waiting, where
    // waiting could deadlock (e.g. while another process switches a new file
    // to WAL): such a start is tried again, within the busy timeout.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(20);
    loop {
        match migrate(&pool).await {
            Ok(()) => return Ok(pool),
            Err(e) if is_locked(&e.to_string()) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(migrate_error(location, e)),
        }
    }
}

/// Whether SQLite said another connection holds a lock (the only error
/// that is waited for).
fn is_locked(message: &str) -> bool {
    message.contains("database is locked") || message.contains("database table is locked") || message.contains("SQLITE_BUSY")
}

/// Open `url` once and read its header: an error unless it is a SQLite
/// database (or a new, empty file).
async fn check(url: &str) -> Result<(), sqlx::Error> {
    let mut conn = AnyConnection::connect(url).await?;
    let read = conn
        .execute(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {}; PRAGMA schema_version;", BUSY_TIMEOUT.as_millis())))
        .await;
    let _ = conn.close().await;
    read.map(|_| ())
}

/// Switch the file to WAL and apply the migrations under the write lock.
async fn migrate(pool: &AnyPool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut conn = pool.acquire().await?;
    // Persistent in the file; a no-op when another process switched it first.
    conn.execute("PRAGMA journal_mode = WAL").await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let migrator = migrations();
    // `run_direct` on the transaction's connection (not `run`, whose
    // `Acquire` bound makes this future not `Send`).
    migrator.run_direct(None, &mut *tx, false).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::state::StateDb;

    /// A file that is not a database fails at once, with SQLite's words,
    /// in one line (only a locked database is waited for).
    #[tokio::test]
    async fn a_file_that_is_not_a_database_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
        let started = std::time::Instant::now();
        let e = StateDb::open(&path.clone().into()).await.err().expect("garbage is not a state");
        let shown = e.to_string();
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "took {:?}: {shown}", started.elapsed());
        assert!(shown.contains("file is not a database") && shown.contains("garbage.db") && !shown.contains('\n'), "{shown}");
    }

    /// Two processes writing one file at once (here two pools) wait for
    /// each other: a transaction that reads and then writes takes the write
    /// lock first, so SQLite never refuses it at once as "database is
    /// locked" (seen with two migrates at once on one state file).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_writers_of_one_file_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let location: crate::state::StateLocation = dir.path().join("s.db").into();
        let (a, b) = (StateDb::open(&location).await.unwrap(), StateDb::open(&location).await.unwrap());
        let writer = |db: StateDb, name: &'static str| {
            tokio::spawn(async move {
                for i in 0..60 {
                    let mut spec = crate::state::testing::spec("migrate");
                    spec.scope_key = format!("{name}-{}", i % 3);
                    let id = db.begin_execution(&spec).await?.id;
                    db.request_retry(id).await?;
                }
                Ok::<_, crate::state::StateError>(())
            })
        };
        let (ra, rb) = tokio::join!(writer(a, "a"), writer(b, "b"));
        ra.unwrap().unwrap();
        rb.unwrap().unwrap();
    }

    /// Six connections creating one new file at once all open it (each
    /// process has its own pool; here each `open` does).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn six_opens_of_one_new_file_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new").join("s.db");
        let opens = (0..6).map(|_| {
            let location = path.clone().into();
            tokio::spawn(async move { StateDb::open(&location).await.map(|_| ()) })
        });
        for r in futures::future::join_all(opens).await {
            r.unwrap().unwrap();
        }
    }
}
