//! What the source's referrers API last listed per subject of a job (see
//! `engine::referrers::check_api_referrers`): one digest per subject.
//!
//! Only bookkeeping; portable SQL (`$n` placeholders, no backend-specific
//! functions). Deciding what to sync is the engine's job.

use std::collections::HashMap;

use sqlx::Row;

use super::{StateDb, StateError, now_ms};

impl StateDb {
    /// Every recorded list digest of the job `scope_key`, by (source repository, subject).
    pub async fn referrer_lists(&self, scope_key: &str) -> Result<HashMap<(String, String), String>, StateError> {
        let rows = sqlx::query("SELECT source_repo, subject, list_digest FROM referrer_lists WHERE scope_key = $1")
            .bind(scope_key)
            .fetch_all(self.pool())
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            out.insert((r.try_get("source_repo")?, r.try_get("subject")?), r.try_get("list_digest")?);
        }
        Ok(out)
    }

    /// Record list digests `(source repository, subject, digest)` of the job `scope_key`.
    pub async fn record_referrer_lists(&self, scope_key: &str, lists: &[(String, String, String)]) -> Result<(), StateError> {
        if lists.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        for (repo, subject, digest) in lists {
            sqlx::query(
                "INSERT INTO referrer_lists (scope_key, source_repo, subject, list_digest, checked_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (scope_key, source_repo, subject) DO UPDATE SET list_digest = excluded.list_digest, checked_at = excluded.checked_at",
            )
            .bind(scope_key)
            .bind(repo)
            .bind(subject)
            .bind(digest)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn lists_round_trip_per_job() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        let row = |d: &str| ("team/app".to_string(), "sha256:aa".to_string(), d.to_string());
        db.record_referrer_lists("job", &[row("sha256:01")]).await.unwrap();
        db.record_referrer_lists("job", &[row("sha256:02")]).await.unwrap();
        let lists = db.referrer_lists("job").await.unwrap();
        assert_eq!(lists.get(&("team/app".into(), "sha256:aa".into())).map(String::as_str), Some("sha256:02"));
        assert!(db.referrer_lists("other").await.unwrap().is_empty());
    }
}
