//! The last refusal or pass-level error of each policy destination, with
//! its time: a pass refused before it started (the fence disagreed or could
//! not be read, a registry was down, the catalog could not be listed)
//! leaves no execution, so its reason lives here for the status page, the
//! API and `jobs list`. Portable SQL (`$n` placeholders); never talks to a
//! registry, never stores a credential (errors are the library's, which
//! never carry one).

use serde::Serialize;
use sqlx::Row;

use super::{StateDb, StateError, now_ms};

/// The last pass-level error of a policy at one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassError {
    pub policy: String,
    /// The job's destination (URL with prefix), or empty when the pass
    /// failed before choosing one.
    pub destination: String,
    pub error: String,
    /// When (Unix ms).
    pub at: i64,
}

/// Stored errors are cut to this many characters.
const MAX_ERROR: usize = 4000;

impl StateDb {
    /// Keep `error` as the last pass-level error of `policy` at `destination`.
    pub async fn record_pass_error(&self, policy: &str, destination: &str, error: &str) -> Result<(), StateError> {
        let error: String = error.chars().take(MAX_ERROR).collect();
        sqlx::query(
            "INSERT INTO pass_errors (policy, destination, error, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (policy, destination) DO UPDATE SET error = $3, at = $4",
        )
        .bind(policy)
        .bind(destination)
        .bind(&error)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The last pass-level errors of `policy` (all, when `None`), newest first.
    pub async fn pass_errors(&self, policy: Option<&str>) -> Result<Vec<PassError>, StateError> {
        let rows = match policy {
            Some(p) => {
                sqlx::query("SELECT policy, destination, error, at FROM pass_errors WHERE policy = $1 ORDER BY at DESC")
                    .bind(p)
                    .fetch_all(self.pool())
                    .await?
            }
            None => sqlx::query("SELECT policy, destination, error, at FROM pass_errors ORDER BY at DESC").fetch_all(self.pool()).await?,
        };
        rows.iter()
            .map(|r| Ok(PassError { policy: r.try_get("policy")?, destination: r.try_get("destination")?, error: r.try_get("error")?, at: r.try_get("at")? }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_last_error_per_destination_is_kept_with_its_time() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        assert!(db.pass_errors(Some("p")).await.unwrap().is_empty());
        db.record_pass_error("p", "http://dr/mirror", "cannot read the failover fence: 503").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        db.record_pass_error("p", "http://dr/mirror", "destination cannot connect").await.unwrap();
        db.record_pass_error("q", "http://x", "other").await.unwrap();
        let errors = db.pass_errors(Some("p")).await.unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].error, "destination cannot connect");
        assert!(errors[0].at > 0);
        assert_eq!(db.pass_errors(None).await.unwrap().len(), 2);
    }
}
