//! What narrowing an index to some platforms produced (see
//! `engine::platforms::NarrowMemory`): per selection, source index digest →
//! destination digest. Facts about bytes, shared by every job with the same
//! selection.
//!
//! Only bookkeeping; portable SQL. Deciding what to copy is the engine's job.

use sqlx::Row;

use super::{StateDb, StateError, now_ms};

impl StateDb {
    /// Every recorded pair (source digest, destination digest) of `selection`.
    pub async fn narrowed_indexes(&self, selection: &str) -> Result<Vec<(String, String)>, StateError> {
        let rows = sqlx::query("SELECT source_digest, dest_digest FROM narrowed_indexes WHERE selection = $1")
            .bind(selection)
            .fetch_all(self.pool())
            .await?;
        rows.into_iter().map(|r| Ok((r.try_get("source_digest")?, r.try_get("dest_digest")?))).collect()
    }

    /// Record pairs (source digest, destination digest) of `selection`.
    pub async fn record_narrowed_indexes(&self, selection: &str, pairs: &[(String, String)]) -> Result<(), StateError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        for (source, dest) in pairs {
            sqlx::query(
                "INSERT INTO narrowed_indexes (selection, source_digest, dest_digest, recorded_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (selection, source_digest) DO UPDATE SET dest_digest = excluded.dest_digest, recorded_at = excluded.recorded_at",
            )
            .bind(selection)
            .bind(source)
            .bind(dest)
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
    async fn pairs_round_trip_per_selection() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        db.record_narrowed_indexes("platforms=linux/amd64:rewrite", &[("sha256:aa".into(), "sha256:01".into())]).await.unwrap();
        db.record_narrowed_indexes("platforms=linux/amd64:rewrite", &[("sha256:aa".into(), "sha256:02".into())]).await.unwrap();
        let pairs = db.narrowed_indexes("platforms=linux/amd64:rewrite").await.unwrap();
        assert_eq!(pairs, vec![("sha256:aa".to_string(), "sha256:02".to_string())]);
        assert!(db.narrowed_indexes("platforms=linux/arm64:rewrite").await.unwrap().is_empty());
    }
}
