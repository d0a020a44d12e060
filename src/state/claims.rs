//! Who works a task: a claim with its own expiry, taken by one atomic
//! `UPDATE … RETURNING` (on PostgreSQL the candidate row is picked
//! `FOR UPDATE SKIP LOCKED`), so two workers never get the same task;
//! renewed with the worker's heartbeat, ended when the task ends, and
//! logged in `task_claims`. Expiries are read on the database's clock
//! ([`StateDb::clock`]). This module never talks to a registry and never
//! decides what to copy.

use std::collections::HashSet;

use sqlx::Row;

use super::{StateDb, StateError};

/// A task claimed by this worker.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub id: i64,
    pub source_repo: String,
    pub dest_repo: String,
    pub tag: String,
    pub source_digest: Option<String>,
    pub media_type: Option<String>,
    pub reason: Option<String>,
}

fn claimed(r: &sqlx::any::AnyRow) -> Result<ClaimedTask, sqlx::Error> {
    Ok(ClaimedTask {
        id: r.try_get("id")?,
        source_repo: r.try_get("source_repo")?,
        dest_repo: r.try_get("dest_repo")?,
        tag: r.try_get("tag")?,
        source_digest: r.try_get("source_digest")?,
        media_type: r.try_get("media_type")?,
        reason: r.try_get("reason")?,
    })
}

impl StateDb {
    /// Claim one task of `execution` that nobody works: a pending one (the
    /// first by id), else one whose claim expired (its worker died or
    /// stalled). `None`: nothing to
    /// claim (or the execution is no longer running, or being canceled).
    ///
    /// The claim counts as the task's next attempt, recorded with it (a
    /// worker killed right after claiming has still used one).
    ///
    /// Two kinds of task wait: a task whose item only the planner has in
    /// full (an index narrowed to some platforms, referrers found changed)
    /// goes to the `coordinator` only; a tag that exists for another
    /// manifest (`sha256-…`: a referrers fallback tag, a cosign companion)
    /// is claimed only once no other task of the execution is left, so that
    /// its subject is at the destination first (as within one process).
    pub async fn claim_task(&self, execution: i64, coordinator: bool) -> Result<Option<ClaimedTask>, StateError> {
        let now = self.clock().await?;
        let w = self.worker();
        // Row locking for claims: PostgreSQL skips rows another worker is
        // claiming; SQLite has one writer, so the claim is atomic as it is.
        let lock = match self.backend() {
            super::Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            super::Backend::Sqlite => "",
        };
        // Pending tasks first, then those whose claim expired: each kind one
        // lookup along the index (execution_id, status, id). One query for
        // both (`status = 'pending' OR …`) made SQLite read and sort every
        // task of the execution per claim: quadratic, 53 claims/s at 15,000
        // of 100,000 tasks.
        let mut tx = self.begin_write().await?;
        let mut row = None;
        for kind in [CLAIMABLE_PENDING, CLAIMABLE_EXPIRED] {
            let sql = claim_sql(kind, lock);
            row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&w.id)
                .bind(now + w.lease_ms())
                .bind(now)
                .bind(execution)
                .bind(i64::from(coordinator))
                .fetch_optional(&mut *tx)
                .await?;
            if row.is_some() {
                break;
            }
        }
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let task = claimed(&row)?;
        sqlx::query("INSERT INTO task_claims (task_id, worker, claimed_at) VALUES ($1, $2, $3)")
            .bind(task.id)
            .bind(&w.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(task))
    }

    /// Renew this worker's claims on the tasks of `execution` it still works;
    /// returns their ids (a claim missing here was lost to another worker).
    pub async fn renew_claims(&self, execution: i64) -> Result<HashSet<i64>, StateError> {
        let now = self.clock().await?;
        let w = self.worker();
        let rows = sqlx::query(
            "UPDATE tasks SET lease_expires_at = $1 WHERE execution_id = $2 AND worker = $3 AND status IN ('running', 'retrying') \
             RETURNING id",
        )
        .bind(now + w.lease_ms())
        .bind(execution)
        .bind(&w.id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| r.try_get("id").map_err(StateError::from)).collect()
    }

    /// This worker is done with task `id`, which ended as `status` (with
    /// `error`): recorded before the worker claims another, so the state
    /// never shows more tasks in flight than the worker has.
    pub async fn end_claim(&self, id: i64, status: super::TaskStatus, error: Option<&str>) -> Result<(), StateError> {
        let now = self.clock().await?;
        let me = &self.worker().id;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE tasks SET status = $1, last_error = COALESCE($2, CASE WHEN $1 = 'succeeded' THEN NULL ELSE last_error END), \
             finished_at = CASE WHEN $1 = 'canceled' THEN finished_at ELSE $3 END, updated_at = $3 \
             WHERE id = $4 AND worker = $5 AND status IN ('running', 'retrying')",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(now)
        .bind(id)
        .bind(me)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE task_claims SET ended_at = $1 WHERE task_id = $2 AND worker = $3 AND ended_at IS NULL")
            .bind(now)
            .bind(id)
            .bind(me)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Tasks of `execution` not decided yet (pending, or claimed by a worker).
    pub async fn unfinished_tasks(&self, execution: i64) -> Result<i64, StateError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM tasks WHERE execution_id = $1 AND status IN ('pending', 'running', 'retrying')")
            .bind(execution)
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get("n")?)
    }
}

/// One claim of a task, as recorded (for operators and tests: no task is
/// ever worked by two workers at once).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Claim {
    pub task_id: i64,
    pub worker: String,
    pub claimed_at: i64,
    pub ended_at: Option<i64>,
}

impl StateDb {
    /// Every claim of the tasks of `execution`, by task and time.
    pub async fn claims(&self, execution: i64) -> Result<Vec<Claim>, StateError> {
        let rows = sqlx::query(
            "SELECT c.task_id, c.worker, c.claimed_at, c.ended_at FROM task_claims c JOIN tasks t ON t.id = c.task_id \
             WHERE t.execution_id = $1 ORDER BY c.task_id, c.claimed_at, c.id",
        )
        .bind(execution)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Claim {
                    task_id: r.try_get("task_id")?,
                    worker: r.try_get("worker")?,
                    claimed_at: r.try_get("claimed_at")?,
                    ended_at: r.try_get("ended_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StateError::from)
    }
}

/// Which tasks a claim looks for (see [`claim_sql`]).
const CLAIMABLE_PENDING: &str = "t.status = 'pending'";
const CLAIMABLE_EXPIRED: &str = "t.status IN ('running', 'retrying') AND COALESCE(t.lease_expires_at, 0) < $3";

/// The claim of the first task of `$4` that `kind` selects, for worker `$1`
/// with a lease until `$2` at time `$3` (`$5`: the coordinator). The outer
/// condition checks again that the task is still claimable.
fn claim_sql(kind: &str, lock: &str) -> String {
    format!(
        "UPDATE tasks SET status = 'running', attempts = attempts + 1, worker = $1, lease_expires_at = $2, updated_at = $3 \
         WHERE id = (SELECT t.id FROM tasks t WHERE t.execution_id = $4 AND {kind} \
                       AND ($5 = 1 OR (t.platforms IS NULL AND COALESCE(t.reason, '') <> 'referrers changed')) \
                       AND (t.tag NOT LIKE 'sha256-%' OR NOT EXISTS (SELECT 1 FROM tasks p WHERE p.execution_id = $4 \
                            AND p.tag NOT LIKE 'sha256-%' AND p.status IN ('pending', 'running', 'retrying'))) \
                     ORDER BY t.id LIMIT 1 {lock}) \
           AND (status = 'pending' OR (status IN ('running', 'retrying') AND COALESCE(lease_expires_at, 0) < $3)) \
           AND EXISTS (SELECT 1 FROM executions e WHERE e.id = $4 AND e.status = 'running' AND e.cancel_requested = 0) \
         RETURNING id, source_repo, dest_repo, tag, source_digest, media_type, reason"
    )
}

#[cfg(test)]
mod tests {
    use crate::engine::plan::{Action, CopyReason, Plan, PlanItem};
    use crate::registry::Digest;

    fn item(tag: &str) -> PlanItem {
        crate::state::testing::item(tag, &Digest::sha256_of(tag.as_bytes()), Action::Copy(CopyReason::Missing))
    }

    /// A signature tag waits until its subject's task is decided; a task
    /// only the planner can copy (a narrowed index) goes to the coordinator.
    #[tokio::test]
    async fn subject_bound_tags_wait_and_planner_only_tasks_go_to_the_coordinator() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        let spec = crate::state::testing::spec("policy");
        let id = db.begin_execution(&spec).await.unwrap().id;
        let sig = format!("sha256-{}.sig", "a".repeat(64));
        let plan = Plan { items: vec![item("v1"), item(&sig), item("multi")], repositories: 1, ..Plan::default() };
        let ids = db.record_plan(id, &plan).await.unwrap();
        sqlx::query("UPDATE tasks SET platforms = 'linux/amd64 (rewrite)' WHERE id = $1").bind(ids[2]).execute(db.pool()).await.unwrap();

        let first = db.claim_task(id, false).await.unwrap().expect("a plain task");
        assert_eq!(first.tag, "v1");
        assert!(db.claim_task(id, false).await.unwrap().is_none(), "the signature waits, the narrowed index is not a helper's");
        let narrowed = db.claim_task(id, true).await.unwrap().expect("the coordinator takes the narrowed index");
        assert_eq!(narrowed.tag, "multi");
        assert!(db.claim_task(id, true).await.unwrap().is_none(), "the signature still waits for both");
        db.end_claim(first.id, super::super::TaskStatus::Succeeded, None).await.unwrap();
        db.end_claim(narrowed.id, super::super::TaskStatus::Succeeded, None).await.unwrap();
        assert_eq!(db.claim_task(id, false).await.unwrap().expect("now the signature").tag, sig);
    }

    /// A claim walks the index (execution_id, status, id) to the first
    /// pending task: it does not read and sort every task of the execution
    /// (which made the claims of a pass over many tags quadratic).
    #[tokio::test]
    async fn a_claim_does_not_sort_the_tasks_of_its_execution() {
        use sqlx::Row;
        let (_dir, db) = crate::state::testing::temp_state().await;
        let sql = format!("EXPLAIN QUERY PLAN {}", super::claim_sql(super::CLAIMABLE_PENDING, ""));
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind("w")
            .bind(1i64)
            .bind(1i64)
            .bind(1i64)
            .bind(0i64)
            .fetch_all(db.pool())
            .await
            .unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>("detail").unwrap()).collect();
        assert!(!plan.iter().any(|d| d.contains("TEMP B-TREE")), "{plan:#?}");
        assert!(plan.iter().any(|d| d.contains("tasks_claimable (execution_id=? AND status=?)")), "{plan:#?}");
    }

    /// Pending tasks are claimed first; a task whose claim expired (its
    /// worker died) is claimed after them, not lost.
    #[tokio::test]
    async fn pending_tasks_go_first_then_those_whose_claim_expired() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        let id = db.begin_execution(&crate::state::testing::spec("migrate")).await.unwrap().id;
        let plan = Plan { items: vec![item("v1"), item("v2")], repositories: 1, ..Plan::default() };
        db.record_plan(id, &plan).await.unwrap();
        let first = db.claim_task(id, true).await.unwrap().expect("v1");
        assert_eq!(first.tag, "v1");
        sqlx::query("UPDATE tasks SET lease_expires_at = 1 WHERE id = $1").bind(first.id).execute(db.pool()).await.unwrap();
        assert_eq!(db.claim_task(id, true).await.unwrap().expect("the pending one").tag, "v2");
        let again = db.claim_task(id, true).await.unwrap().expect("the expired claim, taken over");
        assert_eq!((again.id, again.tag.as_str()), (first.id, "v1"));
        assert!(db.claim_task(id, true).await.unwrap().is_none());
    }

    /// An execution whose process died (its lease expired) is not left
    /// `running`: reading the executions ends it, and the next run of the
    /// job resumes it.
    #[tokio::test]
    async fn an_execution_whose_lease_expired_is_ended_and_resumed() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        let spec = crate::state::testing::spec("policy");
        db.acquire_lease(&spec.scope_key).await.unwrap();
        let id = db.begin_execution(&spec).await.unwrap().id;
        let filter = crate::state::jobs::ExecutionFilter::default();
        assert_eq!(db.list_executions(&filter).await.unwrap()[0].status, "running", "its lease is live");
        sqlx::query("UPDATE leases SET expires_at = 1").execute(db.pool()).await.unwrap();
        let row = db.execution(id).await.unwrap().expect("the execution");
        assert_eq!(row.status, "canceled");
        assert!(row.error.as_deref().unwrap_or("").contains("stopped renewing its lease"), "{:?}", row.error);
        let again = db.begin_execution(&spec).await.unwrap();
        assert_eq!((again.id, again.resumed), (id, true));
    }
}
