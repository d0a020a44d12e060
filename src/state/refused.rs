//! Passes refused after their transfer: when a pass's deletions are refused
//! by the deletion guard (or fail), its execution — already closed as
//! succeeded by the transfer — is marked failed with the reason, so that
//! `jobs show` and the API say why. Portable SQL (`$n` placeholders); never
//! talks to a registry.

use super::{StateDb, StateError, now_ms};

impl StateDb {
    /// Mark `execution` failed, adding `reason` to its error.
    pub async fn fail_execution(&self, execution: i64, reason: &str) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE executions SET status = 'failed', updated_at = $1, \
             error = CASE WHEN error IS NULL OR error = '' THEN $2 ELSE error || '; ' || $2 END \
             WHERE id = $3",
        )
        .bind(now_ms())
        .bind(reason)
        .bind(execution)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::stats::Snapshot;
    use crate::state::ExecutionStatus;

    #[tokio::test]
    async fn a_refusal_fails_the_execution_and_keeps_earlier_errors() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        let spec = crate::state::testing::spec("policy");
        let id = db.begin_execution(&spec).await.unwrap().id;
        db.finish_execution(id, ExecutionStatus::Succeeded, &Snapshot::default(), None).await.unwrap();
        db.fail_execution(id, "deletions refused: too many").await.unwrap();
        let row = db.execution(id).await.unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.error.as_deref()), ("failed", Some("deletions refused: too many")));
        db.fail_execution(id, "again").await.unwrap();
        assert_eq!(db.execution(id).await.unwrap().unwrap().error.as_deref(), Some("deletions refused: too many; again"));
    }
}
