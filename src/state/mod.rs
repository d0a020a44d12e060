//! Durable job state: executions, one task per (repository, tag), and which
//! destination repositories hold which blobs (for mounts).
//!
//! The state lives in SQLite (one file, the default) or PostgreSQL (shared by
//! many processes), chosen by [`StateLocation`]. Every query of the data
//! model is written once here and in the modules beside this one, in SQL
//! both run (through sqlx's `Any` driver); opening, migrations and anything
//! else that differs per database live in [`backend`]. Writes that come in
//! bulk go in one transaction. This module stores registry URLs but never a
//! credential, never shows the password of a PostgreSQL URL, and never talks
//! to a registry.

pub mod backend;
pub mod backoff;
mod claims;
mod fences;
pub mod jobs;
pub mod lag;
pub mod leases;
mod location;
mod owned;
pub mod overview;
mod push_events;
mod refused;
pub mod pass_errors;
mod narrowed;
mod referrers;
mod plan_record;
mod recorder;
pub mod status;

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::{AnyPool, Row};

pub use backend::Backend;
pub use location::{LocationError, StateLocation};
pub use owned::{Direction, Owned};
pub use recorder::Recorder;
pub use status::{ExecutionStatus, TaskStatus};

use crate::engine::blobs::MountHints;
use crate::engine::stats::Snapshot;
use crate::registry::{Digest, RepoName};

/// What went wrong with the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `location` is shown redacted and `message` is scrubbed of its secret.
    #[error("state database {location}: {message}")]
    Open { location: String, message: String },
    #[error("state database {location}: cannot create its directory: {source}")]
    Dir { location: String, source: std::io::Error },
    #[error("state database {location}: schema migration failed: {message}")]
    Migrate { location: String, message: String },
    /// Named by the location this process opened (redacted).
    #[error("state database{shown}: {0}", shown = location::shown())]
    Query(#[from] sqlx::Error),
    #[error("state database holds an unknown status {0:?}")]
    BadStatus(String),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What an execution is about.
#[derive(Debug, Clone)]
pub struct ExecutionSpec {
    /// `migrate` or `policy`.
    pub kind: String,
    pub policy: Option<String>,
    /// Runs with the same key are the same job: an unfinished one is resumed.
    pub scope_key: String,
    pub source: String,
    pub destination: String,
    /// `forward`, or `reversed` after a failover.
    pub direction: String,
    /// Take over the latest execution even when it finished with failures
    /// (`migrate` does; policy passes start afresh and back off per tag).
    pub resume_failed: bool,
}

/// The execution a run records into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutionStart {
    pub id: i64,
    /// True when an earlier, unfinished execution of the same job was taken over.
    pub resumed: bool,
}

/// Handle to the state database (cheap to clone).
#[derive(Clone)]
pub struct StateDb {
    pool: AnyPool,
    location: StateLocation,
    backend: Backend,
    worker: leases::SharedWorker,
}

impl StateDb {
    /// Open (creating a SQLite file if needed) the state at `location` and
    /// bring its schema up to date. Safe when several processes open the
    /// same new state at once.
    pub async fn open(location: &StateLocation) -> Result<StateDb, StateError> {
        StateDb::open_for(location, 4).await
    }

    /// [`StateDb::open`] for a process that works `concurrency` tasks at
    /// once (its pool is sized for them).
    pub async fn open_for(location: &StateLocation, concurrency: usize) -> Result<StateDb, StateError> {
        let pool = Backend::open(location, concurrency).await?;
        location::opened(location);
        Ok(StateDb { pool, location: location.clone(), backend: Backend::of(location), worker: Default::default() })
    }

    /// The same database, used as worker `worker` (its id, lease time, and
    /// whether it helps a job another worker holds).
    pub fn with_worker(mut self, worker: leases::Worker) -> StateDb {
        self.worker = std::sync::Arc::new(worker);
        self
    }

    /// Who this process is among the workers of this state.
    pub fn worker(&self) -> &leases::Worker {
        &self.worker

    }

    /// Where the state lives (its `Display` hides any password).
    pub fn location(&self) -> &StateLocation {
        &self.location
    }

    /// Which database the state lives in.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for the queries of this module and those beside
    /// it. Code outside `state` asks a `StateDb` method instead.
    pub(in crate::state) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begin a transaction that writes. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`, waiting up to the busy timeout for another
    /// process): a deferred transaction that read first and then writes is
    /// refused at once with "database is locked" when another process wrote
    /// in between, and cannot wait for it.
    pub(in crate::state) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StateError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Now, in milliseconds since the Unix epoch, on the clock that decides
    /// expiries (leases, claims, fences): the PostgreSQL server's, shared by
    /// every worker whatever its own clock says; this machine's for SQLite,
    /// where every holder shares it anyway.
    pub async fn clock(&self) -> Result<i64, StateError> {
        match self.backend {
            Backend::Sqlite => Ok(now_ms()),
            Backend::Postgres => {
                let row = sqlx::query("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now").fetch_one(&self.pool).await?;
                Ok(row.try_get("now")?)
            }
        }
    }

    /// Whether the database answers within a few seconds (readiness checks).
    pub async fn ping(&self) -> Result<(), StateError> {
        match tokio::time::timeout(std::time::Duration::from_secs(3), sqlx::query("SELECT 1").execute(&self.pool)).await {
            Ok(r) => r.map(|_| ()).map_err(StateError::from),
            Err(_) => Err(StateError::Query(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Start recording a run: resume the latest execution of the same job if
    /// it did not finish cleanly (tasks it left running are taken back),
    /// else create a new one.
    pub async fn begin_execution(&self, spec: &ExecutionSpec) -> Result<ExecutionStart, StateError> {
        let now = self.clock().await?;
        let mut tx = self.begin_write().await?;
        let latest =
            // An execution an operator asked to retry comes first, then the latest.
            sqlx::query(
                "SELECT id, status, retry_requested, cancel_requested FROM executions WHERE scope_key = $1 \
                 ORDER BY retry_requested DESC, id DESC LIMIT 1",
            )
                .bind(&spec.scope_key)
                .fetch_optional(&mut *tx)
                .await?;
        let unfinished = match &latest {
            Some(row) => {
                let status: String = row.try_get("status")?;
                let status = ExecutionStatus::from_str(&status).map_err(|_| StateError::BadStatus(status))?;
                let retry: i64 = row.try_get("retry_requested")?;
                let canceled_by_operator: i64 = row.try_get("cancel_requested")?;
                match status {
                    ExecutionStatus::Succeeded => false,
                    ExecutionStatus::Running => true,
                    ExecutionStatus::Canceled => canceled_by_operator == 0 || retry != 0,
                    ExecutionStatus::Failed => spec.resume_failed || retry != 0,
                }
            }
            None => false,
        };
        let start = if let (Some(row), true) = (latest, unfinished) {
            let id: i64 = row.try_get("id")?;
            sqlx::query(
                "UPDATE executions SET status = 'running', updated_at = $1, finished_at = NULL, error = NULL, \
                 retry_requested = 0, cancel_requested = 0 WHERE id = $2",
            )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let taken = sqlx::query(
                "UPDATE tasks SET status = 'pending', updated_at = $1, \
                 last_error = COALESCE(last_error, 'interrupted: the previous run ended while this task was in flight') \
                 WHERE execution_id = $2 AND status IN ('running', 'retrying') AND COALESCE(lease_expires_at, 0) < $1",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if taken.rows_affected() > 0 {
                tracing::info!(execution = id, tasks = taken.rows_affected(), "took back tasks left running by an earlier run");
            }
            ExecutionStart { id, resumed: true }
        } else {
            let id = sqlx::query(
                "INSERT INTO executions (kind, policy, scope_key, source, destination, direction, status, started_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8) RETURNING id",
            )
            .bind(&spec.kind)
            .bind(&spec.policy)
            .bind(&spec.scope_key)
            .bind(&spec.source)
            .bind(&spec.destination)
            .bind(&spec.direction)
            .bind(now)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
            ExecutionStart { id, resumed: false }
        };
        tx.commit().await?;
        Ok(start)
    }

    /// When the latest execution of `scope_key` succeeded, mark it as
    /// checked now (`updated_at`) and return its id (a pass with nothing to do records no
    /// new execution).
    pub async fn touch_if_succeeded(&self, scope_key: &str) -> Result<Option<i64>, StateError> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE executions SET updated_at = $1 \
             WHERE id = (SELECT MAX(id) FROM executions WHERE scope_key = $2) AND status = 'succeeded' RETURNING id",
        )
        .bind(now)
        .bind(scope_key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// (source repository, tag, source digest) of the tasks the latest
    /// execution of `scope_key` recorded as `unsigned`.
    pub async fn latest_unsigned(&self, scope_key: &str) -> Result<std::collections::HashSet<(String, String, String)>, StateError> {
        let rows = sqlx::query(
            "SELECT source_repo, tag, source_digest FROM tasks \
             WHERE execution_id = (SELECT MAX(id) FROM executions WHERE scope_key = $1) AND status = 'unsigned'",
        )
        .bind(scope_key)
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashSet::new();
        for r in rows {
            let digest: Option<String> = r.try_get("source_digest")?;
            out.insert((r.try_get("source_repo")?, r.try_get("tag")?, digest.unwrap_or_default()));
        }
        Ok(out)
    }

    /// Close an execution. Tasks the run never reached (no longer in scope)
    /// are marked canceled unless the run itself was interrupted.
    pub async fn finish_execution(
        &self,
        execution: i64,
        status: ExecutionStatus,
        summary: &Snapshot,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        if status != ExecutionStatus::Canceled {
            sqlx::query(
                "UPDATE tasks SET status = 'canceled', last_error = 'no longer at the source or in scope', updated_at = $1 \
                 WHERE execution_id = $2 AND status IN ('pending', 'running', 'retrying')",
            )
            .bind(now)
            .bind(execution)
            .execute(&mut *tx)
            .await?;
        }
        let summary = serde_json::to_string(summary).unwrap_or_default();
        sqlx::query("UPDATE executions SET status = $1, finished_at = $2, updated_at = $3, summary = $4, error = $5 WHERE id = $6")
            .bind(status.as_str())
            .bind(now)
            .bind(now)
            .bind(summary)
            .bind(error)
            .bind(execution)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Cancel the tasks of `execution` nobody has started (it is being
    /// stopped or canceled); returns how many.
    pub async fn cancel_pending(&self, execution: i64) -> Result<u64, StateError> {
        let done = sqlx::query("UPDATE tasks SET status = 'canceled', updated_at = $1 WHERE execution_id = $2 AND status = 'pending'")
            .bind(now_ms())
            .bind(execution)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Mount hints for the destination registry `registry`, from what runs
    /// before this call recorded.
    pub async fn hints(&self, registry: &str) -> StateHints {
        let any = self.has_blob_locations(registry).await.unwrap_or(true);
        StateHints { db: self.clone(), registry: registry.to_string(), any }
    }

    /// Whether any blob location is recorded for `registry`.
    pub async fn has_blob_locations(&self, registry: &str) -> Result<bool, StateError> {
        let row = sqlx::query("SELECT 1 FROM blob_locations WHERE registry = $1 LIMIT 1")
            .bind(registry)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Destination repositories of `registry` known to hold `digest`, newest first.
    pub async fn blob_holders(&self, registry: &str, digest: &Digest) -> Result<Vec<RepoName>, StateError> {
        let rows = sqlx::query("SELECT repo FROM blob_locations WHERE registry = $1 AND digest = $2 ORDER BY seen_at DESC LIMIT 5")
            .bind(registry)
            .bind(digest.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().filter_map(|r| r.try_get::<String, _>("repo").ok()?.parse().ok()).collect())
    }
}

/// [`MountHints`] backed by the `blob_locations` table.
pub struct StateHints {
    db: StateDb,
    registry: String,
    /// Whether earlier runs recorded anything for this registry: when they
    /// did not (a first copy), there is nothing to look up per blob, and
    /// what this run records the engine already knows.
    any: bool,
}

impl MountHints for StateHints {
    fn holders<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Vec<RepoName>> {
        async move {
            if !self.any {
                return Vec::new();
            }
            self.db.blob_holders(&self.registry, digest).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read mount hints");
                Vec::new()
            })
        }
        .boxed()
    }
}

/// Test support for the state's users: a fresh SQLite state in a
/// temporary directory, an execution spec and a plan item with placeholder
/// names.
#[cfg(test)]
pub(crate) mod testing {
    use super::{ExecutionSpec, StateDb};
    use crate::engine::plan::{Action, PlanItem};
    use crate::registry::{Digest, ManifestHead};

    /// A new state (keep the directory alive as long as the state).
    pub async fn temp_state() -> (tempfile::TempDir, StateDb) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = StateDb::open(&dir.path().join("s.db").into()).await.expect("open state");
        (dir, db)
    }

    /// A job of `kind` (`migrate` resumes failed executions, `policy` is policy `p`).
    pub fn spec(kind: &str) -> ExecutionSpec {
        ExecutionSpec {
            kind: kind.into(),
            policy: (kind == "policy").then(|| "p".into()),
            scope_key: "k".into(),
            source: "http://a".into(),
            destination: "http://b".into(),
            direction: "forward".into(),
            resume_failed: kind == "migrate",
        }
    }

    /// `a/b:tag` at `digest`, to be handled as `action`.
    pub fn item(tag: &str, digest: &Digest, action: Action) -> PlanItem {
        PlanItem {
            source_repo: "a/b".parse().expect("repository"),
            dest_repo: "a/b".parse().expect("repository"),
            tag: tag.parse().expect("tag"),
            source: ManifestHead { digest: digest.clone(), media_type: "m".into() },
            from: None,
            source_body: None,
            dest: None,
            action,
            platforms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::item;
    use crate::engine::plan::{Action, CopyReason, Plan, SkipReason};
    use crate::registry::Digest;

    fn plan(action: Action, digest: &Digest) -> Plan {
        Plan { items: vec![item("v1", digest, action)], repositories: 1, ..Plan::default() }
    }

    /// A task left pending or running by a dead process, found up to date
    /// with its planned digest on resume, was copied before the crash: it
    /// is recorded as succeeded, not as skipped. A new digest stays skipped.
    #[tokio::test]
    async fn a_resumed_task_found_up_to_date_succeeded() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        let spec = crate::state::testing::spec("migrate");
        let id = db.begin_execution(&spec).await.unwrap().id;
        let (one, two) = (Digest::sha256_of(b"one"), Digest::sha256_of(b"two"));
        db.record_plan(id, &plan(Action::Copy(CopyReason::Missing), &one)).await.unwrap();
        assert_eq!(db.tasks(id).await.unwrap()[0].status, "pending");

        db.record_plan(id, &plan(Action::Skip(SkipReason::UpToDate), &one)).await.unwrap();
        let task = &db.tasks(id).await.unwrap()[0];
        assert_eq!((task.status.as_str(), task.reason.as_deref()), ("succeeded", Some("missing")));

        db.record_plan(id, &plan(Action::Copy(CopyReason::DigestDiffers), &two)).await.unwrap();
        db.record_plan(id, &plan(Action::Skip(SkipReason::UpToDate), &one)).await.unwrap();
        assert_eq!(db.tasks(id).await.unwrap()[0].status, "skipped", "planned with another digest");
    }

    /// `failed_tasks` is `tasks` narrowed to the failed ones (what a run
    /// reports), not every up-to-date tag of the execution.
    #[tokio::test]
    async fn failed_tasks_are_the_failed_ones_only() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        let id = db.begin_execution(&crate::state::testing::spec("migrate")).await.unwrap().id;
        let d = Digest::sha256_of(b"one");
        let mut plan = Plan { repositories: 1, ..Plan::default() };
        for (tag, action) in [("v1", Action::Skip(SkipReason::UpToDate)), ("v2", Action::Copy(CopyReason::Missing)), ("v3", Action::Skip(SkipReason::UpToDate))] {
            plan.items.push(item(tag, &d, action));
        }
        plan.problems.push(crate::engine::plan::Problem {
            source_repo: "a/b".into(),
            dest_repo: Some("a/b".into()),
            tag: Some("v4".into()),
            error: "gone".into(),
        });
        db.record_plan(id, &plan).await.unwrap();
        assert_eq!(db.tasks(id).await.unwrap().len(), 4);
        let failed = db.failed_tasks(id).await.unwrap();
        assert_eq!(failed.iter().map(|t| (t.tag.as_str(), t.status.as_str())).collect::<Vec<_>>(), [("v4", "failed")]);
        assert_eq!(failed[0].last_error.as_deref(), Some("gone"));
    }
}
