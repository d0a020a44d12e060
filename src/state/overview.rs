//! What the daemon's API and status page show about policies: the latest
//! execution of each of a policy's jobs, the tags that keep failing with
//! their last error, and the health streak the notifications follow.
//!
//! Read-only queries over the state database (plus the one write of the
//! health streak); never a registry request, never a credential.

use serde::Serialize;
use sqlx::Row;

use super::jobs::ExecutionRow;
use super::{StateDb, StateError, now_ms};

/// A tag that failed on the latest passes of a policy's job, and when it is
/// tried again.
#[derive(Debug, Clone, Serialize)]
pub struct FailingTag {
    pub source_repo: String,
    pub tag: String,
    pub source_digest: Option<String>,
    pub failures: i64,
    pub last_error: Option<String>,
    pub first_failed_at: i64,
    pub last_failed_at: i64,
    pub next_attempt_at: i64,
}

/// The health streak of a policy, as its notifications last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub failing: bool,
    /// When the current streak began (Unix ms).
    pub since: i64,
    pub direction: String,
}

/// What a policy has not yet replicated in one direction, as the latest
/// passes recorded it (the inputs of the replication lag).
#[derive(Debug, Clone, Default)]
pub struct Outstanding {
    /// When a pass last checked or copied (Unix ms); `None`: never ran.
    pub last_pass_at: Option<i64>,
    /// Tasks not done in the latest execution of each job, and when the oldest was planned.
    pub tasks: i64,
    pub oldest_task_at: Option<i64>,
    /// Tags backing off, and when the oldest first failed.
    pub failing_tags: i64,
    pub oldest_failing_at: Option<i64>,
}

impl StateDb {
    /// Failing tags of `policy` in `direction`, most failures first.
    pub async fn failing_tags_of(&self, policy: &str, direction: &str) -> Result<Vec<FailingTag>, StateError> {
        let rows = sqlx::query(
            "SELECT source_repo, tag, source_digest, failures, last_error, first_failed_at, last_failed_at, next_attempt_at \
             FROM failing_tags WHERE scope_key IN (SELECT DISTINCT scope_key FROM executions WHERE policy = $1 AND direction = $2) \
             ORDER BY failures DESC, source_repo, tag LIMIT 500",
        )
        .bind(policy)
        .bind(direction)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FailingTag {
                    source_repo: r.try_get("source_repo")?,
                    tag: r.try_get("tag")?,
                    source_digest: r.try_get("source_digest")?,
                    failures: r.try_get("failures")?,
                    last_error: r.try_get("last_error")?,
                    first_failed_at: r.try_get("first_failed_at")?,
                    last_failed_at: r.try_get("last_failed_at")?,
                    next_attempt_at: r.try_get("next_attempt_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StateError::from)
    }

    /// The latest execution of each of `policy`'s jobs (one per destination
    /// and direction), newest first.
    pub async fn latest_executions_of(&self, policy: &str) -> Result<Vec<ExecutionRow>, StateError> {
        let ids: Vec<i64> = sqlx::query(
            "SELECT MAX(id) AS id FROM executions WHERE policy = $1 GROUP BY scope_key ORDER BY MAX(id) DESC LIMIT 20",
        )
        .bind(policy)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, sqlx::Error>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = self.execution(id).await? {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// What `policy` has not yet replicated in `direction`.
    pub async fn outstanding(&self, policy: &str, direction: &str) -> Result<Outstanding, StateError> {
        let last_pass_at: Option<i64> = sqlx::query("SELECT MAX(updated_at) AS t FROM executions WHERE policy = $1 AND direction = $2")
            .bind(policy)
            .bind(direction)
            .fetch_one(self.pool())
            .await?
            .try_get("t")?;
        let tasks = sqlx::query(
            "SELECT MIN(t.created_at) AS oldest, COUNT(*) AS n FROM tasks t JOIN executions e ON t.execution_id = e.id \
             WHERE e.policy = $1 AND e.direction = $2 \
               AND e.id = (SELECT MAX(id) FROM executions x WHERE x.scope_key = e.scope_key) \
               AND t.status IN ('pending', 'running', 'retrying', 'failed', 'canceled')",
        )
        .bind(policy)
        .bind(direction)
        .fetch_one(self.pool())
        .await?;
        let failing = sqlx::query(
            "SELECT MIN(first_failed_at) AS oldest, COUNT(*) AS n FROM failing_tags \
             WHERE scope_key IN (SELECT DISTINCT scope_key FROM executions WHERE policy = $1 AND direction = $2)",
        )
        .bind(policy)
        .bind(direction)
        .fetch_one(self.pool())
        .await?;
        Ok(Outstanding {
            last_pass_at,
            tasks: tasks.try_get("n")?,
            oldest_task_at: tasks.try_get("oldest")?,
            failing_tags: failing.try_get("n")?,
            oldest_failing_at: failing.try_get("oldest")?,
        })
    }

    /// The health streak last recorded for `policy` (`None`: never).
    pub async fn health(&self, policy: &str) -> Result<Option<Health>, StateError> {
        let row = sqlx::query("SELECT failing, since, direction FROM policy_health WHERE policy = $1")
            .bind(policy)
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(r) => Some(Health { failing: r.try_get::<i64, _>("failing")? != 0, since: r.try_get("since")?, direction: r.try_get("direction")? }),
            None => None,
        })
    }

    /// Record the outcome of a pass of `policy` and return the health it
    /// had before (`None`: never recorded). A streak's start only moves
    /// when the policy flips between failing and healthy.
    pub async fn record_health(&self, policy: &str, failing: bool, direction: &str) -> Result<Option<Health>, StateError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let before = sqlx::query("SELECT failing, since, direction FROM policy_health WHERE policy = $1")
            .bind(policy)
            .fetch_optional(&mut *tx)
            .await?;
        let before = match before {
            Some(r) => Some(Health { failing: r.try_get::<i64, _>("failing")? != 0, since: r.try_get("since")?, direction: r.try_get("direction")? }),
            None => None,
        };
        let since = match &before {
            Some(h) if h.failing == failing => h.since,
            _ => now,
        };
        sqlx::query(
            "INSERT INTO policy_health (policy, failing, since, direction, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (policy) DO UPDATE SET failing = $2, since = $3, direction = $4, updated_at = $5",
        )
        .bind(policy)
        .bind(i64::from(failing))
        .bind(since)
        .bind(direction)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(before)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_health_streak_keeps_its_start_until_it_flips() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        assert_eq!(db.record_health("p", true, "forward").await.unwrap(), None);
        let first = db.health("p").await.unwrap().unwrap();
        assert!(first.failing);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let before = db.record_health("p", true, "forward").await.unwrap().unwrap();
        assert_eq!(before, first, "still failing: same streak");
        assert_eq!(db.health("p").await.unwrap().unwrap().since, first.since);
        let before = db.record_health("p", false, "forward").await.unwrap().unwrap();
        assert!(before.failing);
        let now = db.health("p").await.unwrap().unwrap();
        assert!(!now.failing && now.since > first.since);
    }
}
