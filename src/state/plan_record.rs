//! Writing a plan into an execution's tasks: one row per plan item (and
//! one failed row per problem), in one transaction, many rows per
//! statement — a no-op pass over 100,000 tags writes 100,000 rows, and one
//! statement each made that a serial phase of seconds while the registries
//! sat idle. Rows of an earlier plan of the same execution (a resumed run)
//! are updated in place by the rules below. Only bookkeeping, portable SQL;
//! it never decides what to copy and never talks to a registry.

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::{StateDb, StateError, TaskStatus};
use crate::engine::plan::{Action, Plan, PlanItem, SkipReason};

/// Plan items per `INSERT` (7 values each, far below either database's
/// limit on bound values). Kept small: binding a statement's values costs
/// time in the square of their number with SQLite (sqlx looks each one's
/// name up, and SQLite finds a name by a scan of all of them); at 200 rows
/// that lookup was 5.5 % of a no-op pass's CPU.
const ROWS_PER_STATEMENT: usize = 32;

impl StateDb {
    /// Write the plan's tasks (and its problems, as failed tasks) into
    /// `execution`, in one transaction. Returns the task id of each plan
    /// item, in order. A task that already succeeded and is still up to
    /// date keeps its `succeeded` status.
    pub async fn record_plan(&self, execution: i64, plan: &Plan) -> Result<Vec<i64>, StateError> {
        let now = self.clock().await?;
        let mut tx = self.begin_write().await?;
        let mut ids = Vec::with_capacity(plan.items.len());
        let mut rest = &plan.items[..];
        while !rest.is_empty() {
            // A statement may touch a row once (PostgreSQL's ON CONFLICT):
            // a key seen again starts the next batch.
            let mut keys = HashSet::new();
            let n = rest.iter().take(ROWS_PER_STATEMENT).take_while(|i| keys.insert(key(i))).count().max(1);
            let (batch, after) = rest.split_at(n);
            // Rows go in in the plan's order (ids ascending with it: workers
            // claim the lowest pending id first, so the copy keeps that order).
            // Built from placeholders and constants only: every value is bound.
            let sql = sqlx::AssertSqlSafe(insert_items(batch.len()));
            let mut query = sqlx::query(sql).bind(execution).bind(now);
            for item in batch {
                let status = match item.action {
                    Action::Copy(_) => TaskStatus::Pending,
                    Action::Skip(SkipReason::Unsigned) => TaskStatus::Unsigned,
                    Action::Skip(_) => TaskStatus::Skipped,
                };
                query = query
                    .bind(item.source_repo.as_str())
                    .bind(item.dest_repo.as_str())
                    .bind(item.tag.as_str())
                    .bind(item.source.digest.as_str())
                    .bind(item.source.media_type.as_str())
                    .bind(item.action.to_string())
                    .bind(status.as_str());
            }
            let mut written: HashMap<(String, String, String), i64> = HashMap::with_capacity(batch.len());
            for row in query.fetch_all(&mut *tx).await? {
                written.insert((row.try_get("source_repo")?, row.try_get("dest_repo")?, row.try_get("tag")?), row.try_get("id")?);
            }
            for item in batch {
                let (s, d, t) = key(item);
                let id = written.get(&(s.to_string(), d.to_string(), t.to_string())).copied();
                ids.push(id.ok_or_else(|| StateError::Query(sqlx::Error::RowNotFound))?);
            }
            rest = after;
        }
        for (item, id) in plan.items.iter().zip(&ids) {
            if let Some(why) = plan.refused.get(&(item.source_repo.clone(), item.tag.clone())) {
                sqlx::query("UPDATE tasks SET last_error = $1 WHERE id = $2").bind(why).bind(id).execute(&mut *tx).await?;
            }
            if let Some(n) = &item.platforms {
                sqlx::query("UPDATE tasks SET dest_digest = $1, platforms = $2 WHERE id = $3")
                    .bind(n.destination_digest().as_str())
                    .bind(format!("{} ({})", n.label, n.mode))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for p in &plan.problems {
            sqlx::query(
                "INSERT INTO tasks (execution_id, source_repo, dest_repo, tag, reason, status, attempts, last_error, created_at, updated_at, finished_at) \
                 VALUES ($1, $2, $3, $4, 'could not be planned', 'failed', 1, $5, $6, $7, $8) \
                 ON CONFLICT (execution_id, source_repo, dest_repo, tag) DO UPDATE SET \
                   status = 'failed', attempts = tasks.attempts + 1, last_error = excluded.last_error, \
                   updated_at = excluded.updated_at, finished_at = excluded.finished_at",
            )
            .bind(execution)
            .bind(&p.source_repo)
            .bind(p.dest_repo.as_deref().unwrap_or(""))
            .bind(p.tag.as_deref().unwrap_or(""))
            .bind(&p.error)
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        // Tasks of an earlier plan of this execution that this plan no longer
        // has are not for any worker to claim.
        sqlx::query(
            "UPDATE tasks SET status = 'canceled', last_error = 'no longer at the source or in scope', updated_at = $1 \
             WHERE execution_id = $2 AND status = 'pending' AND updated_at <> $1",
        )
        .bind(now)
        .bind(execution)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids)
    }
}

/// What identifies a task within an execution.
fn key(item: &PlanItem) -> (&str, &str, &str) {
    (item.source_repo.as_str(), item.dest_repo.as_str(), item.tag.as_str())
}

/// The `INSERT` of `rows` plan items: `$1` the execution, `$2` the time,
/// then 7 values per item. When the execution already has the task (a
/// resumed run), a task left pending or running by a dead process that is
/// now found up to date with the digest it was planned with was copied by
/// this execution before the process died (only its record was lost): it
/// succeeded; a task another worker still holds keeps its status.
fn insert_items(rows: usize) -> String {
    let up_to_date = Action::Skip(SkipReason::UpToDate).to_string();
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let p = |k: usize| format!("${}", 3 + r * 7 + k);
            format!("($1, {}, {}, {}, {}, {}, {}, {}, $2, $2)", p(0), p(1), p(2), p(3), p(4), p(5), p(6))
        })
        .collect();
    let resumed_done = format!("excluded.reason = '{up_to_date}' AND tasks.status IN ('succeeded', 'running', 'retrying', 'pending') AND tasks.source_digest = excluded.source_digest");
    format!(
        "INSERT INTO tasks (execution_id, source_repo, dest_repo, tag, source_digest, media_type, reason, status, created_at, updated_at) \
         VALUES {} \
         ON CONFLICT (execution_id, source_repo, dest_repo, tag) DO UPDATE SET \
           status = CASE WHEN {resumed_done} THEN 'succeeded' \
                         WHEN tasks.status IN ('running', 'retrying') AND tasks.lease_expires_at >= excluded.updated_at \
                          AND tasks.source_digest = excluded.source_digest THEN tasks.status \
                         ELSE excluded.status END, \
           reason = CASE WHEN {resumed_done} THEN tasks.reason ELSE excluded.reason END, \
           finished_at = CASE WHEN excluded.reason = '{up_to_date}' AND tasks.status IN ('running', 'retrying', 'pending') \
                          AND tasks.source_digest = excluded.source_digest THEN excluded.updated_at ELSE tasks.finished_at END, \
           source_digest = excluded.source_digest, media_type = excluded.media_type, updated_at = excluded.updated_at \
         RETURNING id, source_repo, dest_repo, tag",
        values.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use crate::engine::plan::{Action, CopyReason, Plan, SkipReason};
    use crate::registry::Digest;
    use crate::state::testing::item;

    /// More items than one statement takes, of every kind, some of them
    /// again (a resumed run): each id returned is its own item's task.
    #[tokio::test]
    async fn every_item_of_a_plan_of_many_statements_gets_its_own_task() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        let id = db.begin_execution(&crate::state::testing::spec("migrate")).await.unwrap().id;
        let d = Digest::sha256_of(b"one");
        let actions = [Action::Skip(SkipReason::UpToDate), Action::Copy(CopyReason::Missing), Action::Skip(SkipReason::Unsigned)];
        let plan = |n: usize| Plan {
            items: (0..n).map(|i| item(&format!("v{i}"), &d, actions[i % actions.len()])).collect(),
            repositories: 1,
            ..Plan::default()
        };
        let first = plan(3 * super::ROWS_PER_STATEMENT + 7);
        let ids = db.record_plan(id, &first).await.unwrap();
        let again = db.record_plan(id, &plan(first.items.len() + 5)).await.unwrap();
        assert_eq!(&again[..ids.len()], &ids[..], "a resumed plan got new tasks for the same tags");
        let tasks = db.tasks(id).await.unwrap();
        assert_eq!(tasks.len(), first.items.len() + 5);
        let by_id: std::collections::HashMap<i64, _> = tasks.iter().map(|t| (t.id, t)).collect();
        for (n, id) in again.iter().enumerate() {
            let task = by_id[id];
            let status = match actions[n % actions.len()] {
                Action::Copy(_) => "pending",
                Action::Skip(SkipReason::Unsigned) => "unsigned",
                _ => "skipped",
            };
            assert_eq!((task.tag.as_str(), task.status.as_str()), (format!("v{n}").as_str(), status), "task {id}");
        }
    }
}
