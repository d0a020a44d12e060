//! Who is putting a blob into a destination right now (PostgreSQL only):
//! a fence row per (destination registry, digest) with an expiry, renewed
//! while its transfer goes on and released on every way the transfer
//! ends (left, or abandoned when the transfer's future is dropped). A
//! worker waiting on another's fence waits at most a bounded time, then
//! goes ahead itself (the blob is checked at the destination first), and
//! stops waiting when its transfer is cancelled. Expiries are read on the
//! database's clock. This module never talks to a registry.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::task::JoinHandle;

use super::{StateDb, StateError};
use crate::engine::blobs::BlobFence;
use crate::registry::{Digest, RepoName};

impl StateDb {
    /// Try to become the one worker putting `digest` into `registry`.
    /// `false`: another live worker is at it.
    pub async fn enter_fence(&self, registry: &str, digest: &str) -> Result<bool, StateError> {
        let now = self.clock().await?;
        let w = self.worker();
        let row = sqlx::query(
            "INSERT INTO blob_fences (registry, digest, holder, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (registry, digest) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE blob_fences.holder = excluded.holder OR blob_fences.expires_at < $5 RETURNING holder",
        )
        .bind(registry)
        .bind(digest)
        .bind(&w.id)
        .bind(now + w.lease_ms())
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Keep this worker's fence of `digest` in `registry`. `false`: it is
    /// no longer this worker's (left, or expired and taken by another).
    pub async fn renew_fence(&self, registry: &str, digest: &str) -> Result<bool, StateError> {
        let now = self.clock().await?;
        let w = self.worker();
        let done = sqlx::query("UPDATE blob_fences SET expires_at = $1 WHERE registry = $2 AND digest = $3 AND holder = $4")
            .bind(now + w.lease_ms())
            .bind(registry)
            .bind(digest)
            .bind(&w.id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Leave the fence of `digest` in `registry`, recording `holder_repo`
    /// as a repository that now holds it (in the same transaction, so the
    /// next worker through the fence mounts from there).
    pub async fn leave_fence(&self, registry: &str, digest: &str, holder_repo: Option<&str>) -> Result<(), StateError> {
        let now = self.clock().await?;
        let mut tx = self.begin_write().await?;
        if let Some(repo) = holder_repo {
            sqlx::query(
                "INSERT INTO blob_locations (registry, digest, repo, seen_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (registry, digest, repo) DO UPDATE SET seen_at = excluded.seen_at",
            )
            .bind(registry)
            .bind(digest)
            .bind(repo)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM blob_fences WHERE registry = $1 AND digest = $2 AND holder = $3")
            .bind(registry)
            .bind(digest)
            .bind(&self.worker().id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// [`BlobFence`] over the `blob_fences` table of one destination registry.
pub struct StateFence {
    db: StateDb,
    registry: String,
    /// Renewals of the fences this worker holds, by digest.
    renewals: std::sync::Mutex<std::collections::HashMap<Digest, JoinHandle<()>>>,
}

impl StateFence {
    pub fn new(db: StateDb, registry: String) -> StateFence {
        StateFence { db, registry, renewals: Default::default() }
    }
}

impl StateFence {
    /// How long a worker waits on another's fence before it goes ahead
    /// itself: twice the lease time. A live holder keeps
    /// its fence for as long as its transfer runs; past this bound the
    /// blob may cross twice, which the registry takes (same digest).
    fn patience(&self) -> Duration {
        self.db.worker().lease * 2
    }
}

impl BlobFence for StateFence {
    fn enter<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Vec<RepoName>> {
        async move {
            // Dropped (its transfer cancelled) while waiting: stops waiting.
            let give_up = tokio::time::Instant::now() + self.patience();
            let mut waited = false;
            loop {
                match self.db.enter_fence(&self.registry, digest.as_str()).await {
                    Ok(true) => break,
                    Ok(false) if tokio::time::Instant::now() >= give_up => {
                        tracing::warn!(blob = %digest.short(), waited = ?self.patience(), "another worker has been moving this blob for too long; moving it too");
                        return self.db.blob_holders(&self.registry, digest).await.unwrap_or_default();
                    }
                    Ok(false) => {
                        if !waited {
                            tracing::debug!(blob = %digest.short(), "another worker is moving this blob; waiting for it");
                            waited = true;
                        }
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                    Err(e) => {
                        // The state never stops a transfer: at worst the blob crosses twice.
                        tracing::warn!(blob = %digest.short(), error = %e, "cannot coordinate this blob with other workers");
                        return Vec::new();
                    }
                }
            }
            let (db, registry, name) = (self.db.clone(), self.registry.clone(), digest.as_str().to_string());
            let renew = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(db.worker().heartbeat()).await;
                    if !matches!(db.renew_fence(&registry, &name).await, Ok(true)) {
                        return;
                    }
                }
            });
            if let Some(old) = self.renewals.lock().unwrap_or_else(|p| p.into_inner()).insert(digest.clone(), renew) {
                old.abort();
            }
            self.db.blob_holders(&self.registry, digest).await.unwrap_or_default()
        }
        .boxed()
    }

    fn leave<'a>(&'a self, digest: &'a Digest, at: Option<&'a RepoName>) -> BoxFuture<'a, ()> {
        async move {
            if let Some(renew) = self.renewals.lock().unwrap_or_else(|p| p.into_inner()).remove(digest) {
                renew.abort();
            }
            if let Err(e) = self.db.leave_fence(&self.registry, digest.as_str(), at.map(RepoName::as_str)).await {
                tracing::warn!(blob = %digest.short(), error = %e, "cannot release this blob for other workers; it frees itself after the lease time");
            }
        }
        .boxed()
    }

    fn abandon(&self, digest: &Digest) {
        if let Some(renew) = self.renewals.lock().unwrap_or_else(|p| p.into_inner()).remove(digest) {
            renew.abort();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (db, registry, digest) = (self.db.clone(), self.registry.clone(), digest.clone());
        runtime.spawn(async move {
            if let Err(e) = db.leave_fence(&registry, digest.as_str(), None).await {
                tracing::warn!(blob = %digest.short(), error = %e, "cannot release this blob for other workers; it frees itself after the lease time");
            }
        });
    }
}

impl Drop for StateFence {
    fn drop(&mut self) {
        for (_, renew) in self.renewals.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            renew.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::StateFence;
    use crate::engine::blobs::BlobFence;
    use crate::registry::Digest;
    use crate::state::leases::Worker;

    /// Two workers of one state with a short lease.
    async fn two() -> (tempfile::TempDir, StateFence, StateFence) {
        let (dir, db) = crate::state::testing::temp_state().await;
        let worker = |id: &str| Worker { id: id.into(), lease: Duration::from_millis(400), joins: true };
        let a = StateFence::new(db.clone().with_worker(worker("a")), "dst".into());
        let b = StateFence::new(db.with_worker(worker("b")), "dst".into());
        (dir, a, b)
    }

    /// A fence whose transfer was dropped is released at once (not renewed
    /// until the process ends); a waiter then gets in without waiting.
    #[tokio::test]
    async fn an_abandoned_fence_is_released_at_once() {
        let (_dir, a, b) = two().await;
        let d = Digest::sha256_of(b"blob");
        a.enter(&d).await;
        a.abandon(&d);
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), b.enter(&d)).await.expect("b gets in");
        assert!(started.elapsed() < Duration::from_millis(600), "b waited {:?}", started.elapsed());
        assert!(a.renewals.lock().unwrap().is_empty(), "nothing renews a's fence any more");
        b.leave(&d, None).await;
    }

    /// A worker waiting on a fence another keeps renewing waits twice the
    /// lease time, then goes ahead (and stops waiting when dropped).
    #[tokio::test]
    async fn a_waiter_waits_a_bounded_time() {
        let (_dir, a, b) = two().await;
        let d = Digest::sha256_of(b"blob");
        a.enter(&d).await;
        assert!(tokio::time::timeout(Duration::from_millis(300), b.enter(&d)).await.is_err(), "b waits while a holds it");
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), b.enter(&d)).await.expect("b goes ahead after its patience");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(750) && waited < Duration::from_millis(1500), "b waited {waited:?}");
        assert!(b.renewals.lock().unwrap().is_empty(), "b did not take a fence a still holds");
        a.leave(&d, None).await;
    }
}
