//! What the jobs CLI and the daemon read and ask of the state database:
//! executions with their task counts, the tasks of one execution, operator
//! requests (retry, cancel), pruning, and the direction of each policy.
//!
//! Plain queries over the schema; no registry access and no printing.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{ExecutionStatus, StateDb, StateError, now_ms};

/// Which executions to list.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub policy: Option<String>,
    /// An execution status, or a task status that at least one task has.
    pub status: Option<String>,
    /// A repository (source or destination name) that at least one task has.
    pub repo: Option<String>,
    /// Started at or after (Unix ms).
    pub since_ms: Option<i64>,
    pub limit: u32,
}

/// One execution, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionRow {
    pub id: i64,
    pub kind: String,
    pub policy: Option<String>,
    pub source: String,
    pub destination: String,
    pub direction: String,
    pub status: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    /// Task count per task status.
    pub tasks: BTreeMap<String, i64>,
    /// The counters of the last run, as recorded.
    pub summary: Option<serde_json::Value>,
}

/// One task, with everything an operator needs at 3 a.m.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub id: i64,
    pub source_repo: String,
    pub dest_repo: String,
    pub tag: String,
    pub source_digest: Option<String>,
    /// What the destination tag resolves to once copied, when a platform
    /// filter narrowed the index (`None`: the source digest).
    pub dest_digest: Option<String>,
    /// The platform selection that narrowed it (`linux/amd64,linux/arm64 (rewrite)`).
    pub platforms: Option<String>,
    pub media_type: Option<String>,
    pub reason: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub updated_at: i64,
    /// The worker that claimed it last (it ran the task, or runs it now).
    pub worker: Option<String>,
}

/// What `jobs cancel` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Still running somewhere: the daemon running it stops it.
    Requested,
    /// Not running: its unfinished tasks are canceled now.
    Canceled(u64),
    /// Already finished.
    Finished(ExecutionStatus),
}

/// An operator request the daemon has to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub execution: i64,
    pub policy: Option<String>,
    pub scope_key: String,
    pub retry: bool,
    pub cancel: bool,
}

fn execution_row(r: &AnyRow) -> Result<ExecutionRow, sqlx::Error> {
    let summary: Option<String> = r.try_get("summary")?;
    Ok(ExecutionRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        policy: r.try_get("policy")?,
        source: r.try_get("source")?,
        destination: r.try_get("destination")?,
        direction: r.try_get("direction")?,
        status: r.try_get("status")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        error: r.try_get("error")?,
        tasks: BTreeMap::new(),
        summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

impl StateDb {
    async fn task_counts(&self, rows: &mut [ExecutionRow]) -> Result<(), StateError> {
        for row in rows.iter_mut() {
            let counts = sqlx::query("SELECT status, COUNT(*) AS n FROM tasks WHERE execution_id = $1 GROUP BY status")
                .bind(row.id)
                .fetch_all(self.pool())
                .await?;
            for c in counts {
                row.tasks.insert(c.try_get("status")?, c.try_get("n")?);
            }
        }
        Ok(())
    }

    /// Executions matching `filter`, newest first.
    pub async fn list_executions(&self, filter: &ExecutionFilter) -> Result<Vec<ExecutionRow>, StateError> {
        self.end_abandoned_executions().await?;
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        let rows = sqlx::query(
            "SELECT e.id, e.kind, e.policy, e.source, e.destination, e.direction, e.status, e.started_at, e.finished_at, e.error, e.summary \
             FROM executions e \
             WHERE ($1 IS NULL OR e.policy = $1) \
               AND ($2 IS NULL OR e.status = $2 OR EXISTS (SELECT 1 FROM tasks t WHERE t.execution_id = e.id AND t.status = $2)) \
               AND ($3 IS NULL OR EXISTS (SELECT 1 FROM tasks t WHERE t.execution_id = e.id AND (t.source_repo = $3 OR t.dest_repo = $3))) \
               AND ($4 IS NULL OR e.started_at >= $4) \
             ORDER BY e.id DESC LIMIT $5",
        )
        .bind(&filter.policy)
        .bind(&filter.status)
        .bind(&filter.repo)
        .bind(filter.since_ms)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let mut out = rows.iter().map(execution_row).collect::<Result<Vec<_>, _>>()?;
        self.task_counts(&mut out).await?;
        Ok(out)
    }

    /// One execution.
    pub async fn execution(&self, id: i64) -> Result<Option<ExecutionRow>, StateError> {
        self.end_abandoned_executions().await?;
        let row = sqlx::query(
            "SELECT e.id, e.kind, e.policy, e.source, e.destination, e.direction, e.status, e.started_at, e.finished_at, e.error, e.summary \
             FROM executions e WHERE e.id = $1",
        )
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut rows = vec![execution_row(&row)?];
        self.task_counts(&mut rows).await?;
        Ok(rows.pop())
    }

    /// Every task of an execution: failures first, then by repository and tag.
    pub async fn tasks(&self, execution: i64) -> Result<Vec<TaskRow>, StateError> {
        self.task_rows(execution, false).await
    }

    /// The failed tasks of an execution, by repository and tag: what a run
    /// reports at its end (without reading the rows of every up-to-date tag
    /// of a pass over many tags).
    pub async fn failed_tasks(&self, execution: i64) -> Result<Vec<TaskRow>, StateError> {
        self.task_rows(execution, true).await
    }

    async fn task_rows(&self, execution: i64, failed_only: bool) -> Result<Vec<TaskRow>, StateError> {
        let rows = sqlx::query(
            "SELECT id, source_repo, dest_repo, tag, source_digest, dest_digest, platforms, media_type, reason, status, attempts, last_error, updated_at, worker \
             FROM tasks WHERE execution_id = $1 AND ($2 = 0 OR status = 'failed') \
             ORDER BY CASE status WHEN 'failed' THEN 0 WHEN 'running' THEN 1 WHEN 'retrying' THEN 1 WHEN 'pending' THEN 2 ELSE 3 END, \
                      source_repo, tag",
        )
        .bind(execution)
        .bind(i64::from(failed_only))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TaskRow {
                    id: r.try_get("id")?,
                    source_repo: r.try_get("source_repo")?,
                    dest_repo: r.try_get("dest_repo")?,
                    tag: r.try_get("tag")?,
                    source_digest: r.try_get("source_digest")?,
                    dest_digest: r.try_get("dest_digest")?,
                    platforms: r.try_get("platforms")?,
                    media_type: r.try_get("media_type")?,
                    reason: r.try_get("reason")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    updated_at: r.try_get("updated_at")?,
                    worker: r.try_get("worker")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StateError::from)
    }

    /// The latest execution of each job that ended with failed tasks
    /// (optionally of one policy).
    pub async fn failed_executions(&self, policy: Option<&str>) -> Result<Vec<i64>, StateError> {
        let rows = sqlx::query(
            "SELECT e.id FROM executions e \
             WHERE e.id = (SELECT MAX(id) FROM executions x WHERE x.scope_key = e.scope_key) \
               AND e.status <> 'running' \
               AND EXISTS (SELECT 1 FROM tasks t WHERE t.execution_id = e.id AND t.status = 'failed') \
               AND ($1 IS NULL OR e.policy = $2) ORDER BY e.id",
        )
        .bind(policy)
        .bind(policy)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| r.try_get("id").map_err(StateError::from)).collect()
    }

    /// Put an execution's failed and canceled tasks back to pending and flag
    /// it, so the next run of its job resumes it at once. Returns the number
    /// of tasks queued, or `None` when there is no such execution.
    pub async fn request_retry(&self, execution: i64) -> Result<Option<u64>, StateError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query("SELECT scope_key, status FROM executions WHERE id = $1").bind(execution).fetch_optional(&mut *tx).await?
        else {
            return Ok(None);
        };
        let scope_key: String = row.try_get("scope_key")?;
        let queued = sqlx::query(
            "UPDATE tasks SET status = 'pending', updated_at = $1 WHERE execution_id = $2 AND status IN ('failed', 'canceled') \
             RETURNING source_repo, tag",
        )
        .bind(now)
        .bind(execution)
        .fetch_all(&mut *tx)
        .await?;
        for t in &queued {
            sqlx::query("DELETE FROM failing_tags WHERE scope_key = $1 AND source_repo = $2 AND tag = $3")
                .bind(&scope_key)
                .bind(t.try_get::<String, _>("source_repo")?)
                .bind(t.try_get::<String, _>("tag")?)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE executions SET retry_requested = 1, cancel_requested = 0, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(execution)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(queued.len() as u64))
    }

    /// Cancel an execution: a running one is flagged for whoever runs it;
    /// one that is not running has its unfinished tasks canceled now.
    pub async fn request_cancel(&self, execution: i64) -> Result<Option<CancelOutcome>, StateError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query("SELECT status FROM executions WHERE id = $1").bind(execution).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let status: String = row.try_get("status")?;
        let status: ExecutionStatus = status.parse().map_err(|_| StateError::BadStatus(status))?;
        let pending: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM tasks WHERE execution_id = $1 AND status IN ('pending', 'running', 'retrying')",
        )
        .bind(execution)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        let outcome = match status {
            ExecutionStatus::Running => {
                sqlx::query("UPDATE executions SET cancel_requested = 1, retry_requested = 0, updated_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(execution)
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::Requested
            }
            _ if pending > 0 || status == ExecutionStatus::Failed => {
                let n = sqlx::query(
                    "UPDATE tasks SET status = 'canceled', last_error = COALESCE(last_error, 'canceled by an operator'), updated_at = $1 \
                     WHERE execution_id = $2 AND status IN ('pending', 'running', 'retrying')",
                )
                .bind(now)
                .bind(execution)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                sqlx::query(
                    "UPDATE executions SET status = 'canceled', cancel_requested = 1, retry_requested = 0, updated_at = $1, \
                     finished_at = COALESCE(finished_at, $2) WHERE id = $3",
                )
                .bind(now)
                .bind(now)
                .bind(execution)
                .execute(&mut *tx)
                .await?;
                CancelOutcome::Canceled(n)
            }
            other => CancelOutcome::Finished(other),
        };
        tx.commit().await?;
        Ok(Some(outcome))
    }

    /// Whether an operator asked to cancel `execution`.
    pub async fn cancel_requested(&self, execution: i64) -> Result<bool, StateError> {
        let row = sqlx::query("SELECT cancel_requested FROM executions WHERE id = $1").bind(execution).fetch_optional(self.pool()).await?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>("cancel_requested")? != 0,
            None => false,
        })
    }

    /// Operator requests waiting for the daemon: retries of any execution,
    /// cancellations of running ones.
    pub async fn pending_requests(&self) -> Result<Vec<Request>, StateError> {
        let rows = sqlx::query(
            "SELECT id, policy, scope_key, retry_requested, cancel_requested FROM executions \
             WHERE retry_requested = 1 OR (cancel_requested = 1 AND status = 'running')",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Request {
                    execution: r.try_get("id")?,
                    policy: r.try_get("policy")?,
                    scope_key: r.try_get("scope_key")?,
                    retry: r.try_get::<i64, _>("retry_requested")? != 0,
                    cancel: r.try_get::<i64, _>("cancel_requested")? != 0,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StateError::from)
    }

    /// Delete finished executions (and their tasks) that ended before
    /// `cutoff_ms`, keeping the latest execution of every job.
    pub async fn prune(&self, cutoff_ms: i64) -> Result<u64, StateError> {
        let done = sqlx::query(
            "DELETE FROM executions WHERE status <> 'running' AND COALESCE(finished_at, updated_at) < $1 \
             AND id <> (SELECT MAX(id) FROM executions x WHERE x.scope_key = executions.scope_key)",
        )
        .bind(cutoff_ms)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Whether `policy` currently runs reversed (after a failover).
    pub async fn is_reversed(&self, policy: &str) -> Result<bool, StateError> {
        let row = sqlx::query("SELECT reversed FROM policy_direction WHERE policy = $1").bind(policy).fetch_optional(self.pool()).await?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>("reversed")? != 0,
            None => false,
        })
    }

    /// Record the direction of `policy` (its generation unchanged; a switch
    /// sets both with `set_direction`).
    pub async fn set_reversed(&self, policy: &str, reversed: bool) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO policy_direction (policy, reversed, changed_at) VALUES ($1, $2, $3) \
             ON CONFLICT (policy) DO UPDATE SET reversed = excluded.reversed, changed_at = excluded.changed_at",
        )
        .bind(policy)
        .bind(i64::from(reversed))
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
