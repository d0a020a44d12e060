//! Registry push events waiting for the worker that holds their policy:
//! stored by whichever daemon received them, taken by the holder.

use std::collections::HashSet;

use sqlx::Row;

use super::{StateDb, StateError, now_ms};

impl StateDb {
    /// Store a push event for `policy` (repositories relative to its source).
    pub async fn store_push_event(&self, policy: &str, repos: &HashSet<String>) -> Result<(), StateError> {
        let mut repos: Vec<&String> = repos.iter().collect();
        repos.sort();
        sqlx::query("INSERT INTO push_events (policy, repos, received_at) VALUES ($1, $2, $3)")
            .bind(policy)
            .bind(serde_json::to_string(&repos).unwrap_or_else(|_| "[]".into()))
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Policies with push events nobody has taken.
    pub async fn policies_with_events(&self) -> Result<Vec<String>, StateError> {
        let rows = sqlx::query("SELECT DISTINCT policy FROM push_events WHERE taken_by IS NULL").fetch_all(self.pool()).await?;
        rows.iter().map(|r| r.try_get("policy").map_err(StateError::from)).collect()
    }

    /// Take the waiting push events of `policy`: the union of their
    /// repositories, `None` when there were none.
    pub async fn take_push_events(&self, policy: &str) -> Result<Option<HashSet<String>>, StateError> {
        let rows = sqlx::query(
            "UPDATE push_events SET taken_by = $1, taken_at = $2 WHERE policy = $3 AND taken_by IS NULL RETURNING repos",
        )
        .bind(&self.worker().id)
        .bind(now_ms())
        .bind(policy)
        .fetch_all(self.pool())
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut out = HashSet::new();
        for r in rows {
            let repos: String = r.try_get("repos")?;
            out.extend(serde_json::from_str::<Vec<String>>(&repos).unwrap_or_default());
        }
        Ok(Some(out))
    }

    /// Put push events this worker took for `policy` back (it did not act on them).
    pub async fn return_push_events(&self, policy: &str) -> Result<(), StateError> {
        sqlx::query("UPDATE push_events SET taken_by = NULL, taken_at = NULL WHERE policy = $1 AND taken_by = $2")
            .bind(policy)
            .bind(&self.worker().id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Forget push events taken more than `age_ms` ago.
    pub async fn prune_push_events(&self, cutoff_ms: i64) -> Result<(), StateError> {
        sqlx::query("DELETE FROM push_events WHERE taken_by IS NOT NULL AND taken_at < $1").bind(cutoff_ms).execute(self.pool()).await?;
        Ok(())
    }
}
