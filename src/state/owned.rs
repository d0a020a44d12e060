//! Ownership records: what regferry itself wrote at a destination (per
//! policy, destination registry, repository and tag: the digest, the
//! direction and its generation), kept beside the other records of a pass,
//! and the direction's generation (the fencing token of failover/failback).
//!
//! Deletion sync (`pass::prune`) deletes a destination tag only when a row
//! here says regferry wrote it with the digest the destination still has.
//! Only bookkeeping, portable SQL; it never decides a deletion and never
//! talks to a registry.

use std::collections::HashMap;

use sqlx::Row;

use super::{StateDb, StateError, now_ms};

/// The direction of a policy and its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Direction {
    /// DR → primary (after a failover).
    pub reversed: bool,
    /// Grows by one with every switch; 0 before the first.
    pub generation: u64,
}

/// One tag regferry wrote (or found identical to what it would write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub dest_repo: String,
    pub tag: String,
    pub digest: String,
}

impl StateDb {
    /// The direction of `policy` with its generation.
    pub async fn direction(&self, policy: &str) -> Result<Direction, StateError> {
        let row = sqlx::query("SELECT reversed, generation FROM policy_direction WHERE policy = $1").bind(policy).fetch_optional(self.pool()).await?;
        Ok(match row {
            Some(r) => Direction { reversed: r.try_get::<i64, _>("reversed")? != 0, generation: u64::try_from(r.try_get::<i64, _>("generation")?).unwrap_or(0) },
            None => Direction::default(),
        })
    }

    /// Record the direction of `policy` with its generation.
    pub async fn set_direction(&self, policy: &str, direction: Direction) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO policy_direction (policy, reversed, changed_at, generation) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (policy) DO UPDATE SET reversed = excluded.reversed, changed_at = excluded.changed_at, generation = excluded.generation",
        )
        .bind(policy)
        .bind(i64::from(direction.reversed))
        .bind(now_ms())
        .bind(i64::try_from(direction.generation).unwrap_or(i64::MAX))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Record that a pass of `policy` in `direction` wrote `rows` at `destination`.
    pub async fn record_owned(&self, policy: &str, destination: &str, direction: Direction, rows: &[Owned]) -> Result<(), StateError> {
        if rows.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        for chunk in rows.chunks(500) {
            let mut tx = self.pool().begin().await?;
            for o in chunk {
                sqlx::query(
                    "INSERT INTO owned_tags (policy, destination, dest_repo, tag, digest, reversed, generation, written_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (policy, destination, dest_repo, tag) DO UPDATE SET digest = excluded.digest, reversed = excluded.reversed, \
                     generation = excluded.generation, written_at = excluded.written_at",
                )
                .bind(policy)
                .bind(destination)
                .bind(&o.dest_repo)
                .bind(&o.tag)
                .bind(&o.digest)
                .bind(i64::from(direction.reversed))
                .bind(i64::try_from(direction.generation).unwrap_or(i64::MAX))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// What `policy` wrote at `destination`: digest by (repository, tag).
    pub async fn owned(&self, policy: &str, destination: &str) -> Result<HashMap<(String, String), String>, StateError> {
        let rows = sqlx::query("SELECT dest_repo, tag, digest FROM owned_tags WHERE policy = $1 AND destination = $2")
            .bind(policy)
            .bind(destination)
            .fetch_all(self.pool())
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            out.insert((r.try_get("dest_repo")?, r.try_get("tag")?), r.try_get("digest")?);
        }
        Ok(out)
    }

    /// Forget a tag that was deleted at `destination`.
    pub async fn forget_owned(&self, policy: &str, destination: &str, dest_repo: &str, tag: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM owned_tags WHERE policy = $1 AND destination = $2 AND dest_repo = $3 AND tag = $4")
            .bind(policy)
            .bind(destination)
            .bind(dest_repo)
            .bind(tag)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ownership_and_generation_round_trip() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        assert_eq!(db.direction("p").await.unwrap(), Direction::default());
        db.set_direction("p", Direction { reversed: true, generation: 3 }).await.unwrap();
        assert_eq!(db.direction("p").await.unwrap(), Direction { reversed: true, generation: 3 });
        assert!(db.is_reversed("p").await.unwrap());

        let row = |t: &str, d: &str| Owned { dest_repo: "m/app".into(), tag: t.into(), digest: d.into() };
        let dir = Direction { reversed: false, generation: 3 };
        db.record_owned("p", "http://dr", dir, &[row("v1", "sha256:01"), row("v2", "sha256:02")]).await.unwrap();
        db.record_owned("p", "http://dr", dir, &[row("v1", "sha256:03")]).await.unwrap();
        let owned = db.owned("p", "http://dr").await.unwrap();
        assert_eq!(owned.len(), 2);
        assert_eq!(owned.get(&("m/app".into(), "v1".into())).map(String::as_str), Some("sha256:03"));
        assert!(db.owned("p", "http://primary").await.unwrap().is_empty(), "per destination");
        assert!(db.owned("q", "http://dr").await.unwrap().is_empty(), "per policy");
        db.forget_owned("p", "http://dr", "m/app", "v1").await.unwrap();
        assert_eq!(db.owned("p", "http://dr").await.unwrap().len(), 1);
    }
}
