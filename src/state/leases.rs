//! Several workers on one state: who holds a job (a lease with a heartbeat
//! and an expiry), who works a task (a claim with its own expiry), who is
//! putting a blob into a destination right now (a fence), and registry push
//! events waiting for the worker that holds their policy.
//!
//! Every lease here is a row with `expires_at`: a worker that dies simply
//! stops renewing it, and after the lease time anyone may take it over.
//! Claims are one atomic `UPDATE … RETURNING` (on PostgreSQL the candidate
//! row is picked `FOR UPDATE SKIP LOCKED`), so two workers never get the
//! same task. Queries use `$n` placeholders in order of first use and
//! `ON CONFLICT`/`RETURNING`, which both backends understand. This module
//! never talks to a registry and never decides what to copy.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::Row;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{StateDb, StateError, now_ms};
use crate::engine::blobs::BlobFence;
use crate::registry::{Digest, RepoName};

/// Who this process is among the workers of one state, and how long what it
/// holds stays its own without a heartbeat.
#[derive(Debug, Clone)]
pub struct Worker {
    /// `host:pid` unless set (`--worker-id`).
    pub id: String,
    /// A lease not renewed for this long is free for another worker.
    pub lease: Duration,
    /// When another worker holds a job: help it (claim its tasks, the
    /// daemon) rather than wait until it is done (`run`, `migrate`).
    pub joins: bool,
}

impl Default for Worker {
    fn default() -> Self {
        Worker { id: default_id(), lease: Duration::from_secs(30), joins: false }
    }
}

impl Worker {
    /// How often what this worker holds is renewed.
    pub fn heartbeat(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(100))
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis().min(i64::MAX as u128) as i64
    }
}

/// `host:pid`.
pub fn default_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // or truncates within it.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    };
    format!("{host}:{}", std::process::id())
}

/// Whether `worker` is a default id (`host:pid`) of a process of this
/// machine that no longer exists. A live process, a process of another
/// machine, or an id set by hand: `false` (its lease expires on its own).
fn dead_here(worker: &str) -> bool {
    let Some((host, pid)) = worker.rsplit_once(':') else { return false };
    let Ok(pid) = pid.parse::<libc::pid_t>() else { return false };
    let mine = default_id();
    let my_host = mine.rsplit_once(':').map_or("", |(h, _)| h);
    if host != my_host || pid <= 0 || pid == std::process::id() as libc::pid_t {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) }
}

/// Who holds a job when this worker could not take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub worker: String,
    /// The execution it works, once it has recorded one.
    pub execution: Option<i64>,
}

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

/// A held lease, renewed every [`Worker::heartbeat`] until released.
/// `lost` fires when a renewal finds the lease gone (it expired while this
/// worker stalled and another took it): the holder must stop working.
pub struct LeaseGuard {
    db: StateDb,
    name: String,
    pub lost: CancellationToken,
    heartbeat: JoinHandle<()>,
}

impl LeaseGuard {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Give the lease up (another worker may take the job at once).
    pub async fn release(self) {
        self.heartbeat.abort();
        if let Err(e) = self.db.release_lease(&self.name).await {
            tracing::warn!(lease = %self.name, error = %e, "cannot release the lease; it expires on its own");
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
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
    /// Take the lease of job `name`, or renew it when this worker holds it.
    /// `Ok(None)`: taken; `Ok(Some(holder))`: another live worker holds it.
    pub async fn acquire_lease(&self, name: &str) -> Result<Option<Holder>, StateError> {
        let now = now_ms();
        let w = self.worker();
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, acquired_at, heartbeat_at, expires_at) VALUES ($1, $2, $3, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, heartbeat_at = excluded.heartbeat_at, \
               expires_at = excluded.expires_at, \
               acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at ELSE excluded.acquired_at END, \
               execution_id = CASE WHEN leases.holder = excluded.holder THEN leases.execution_id ELSE NULL END \
             WHERE leases.holder = excluded.holder OR leases.expires_at < excluded.heartbeat_at \
             RETURNING holder",
        )
        .bind(name)
        .bind(&w.id)
        .bind(now)
        .bind(now + w.lease_ms())
        .fetch_optional(self.pool())
        .await?;
        if row.is_some() {
            return Ok(None);
        }
        let holder = self.lease_holder(name).await?;
        if let Some(h) = &holder
            && dead_here(&h.worker)
        {
            // A process of this machine that is gone (killed, crashed): what
            // it held is free now, not after the lease time.
            tracing::info!(worker = %h.worker, "the worker holding this job was a process of this machine that is gone: taking over");
            self.reap(&h.worker).await?;
            return Box::pin(self.acquire_lease(name)).await;
        }
        Ok(holder.or(Some(Holder { worker: "another worker".into(), execution: None })))
    }

    /// Expire everything worker `worker` holds: its leases, task claims and blob fences.
    async fn reap(&self, worker: &str) -> Result<(), StateError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE holder = $1").bind(worker).execute(&mut *tx).await?;
        sqlx::query("UPDATE tasks SET lease_expires_at = 0 WHERE worker = $1 AND status IN ('running', 'retrying')")
            .bind(worker)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blob_fences WHERE holder = $1").bind(worker).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Who holds job `name` now (a live lease), if anyone.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<Holder>, StateError> {
        let row = sqlx::query("SELECT holder, execution_id FROM leases WHERE name = $1 AND expires_at >= $2")
            .bind(name)
            .bind(now_ms())
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(r) => Some(Holder { worker: r.try_get("holder")?, execution: r.try_get("execution_id")? }),
            None => None,
        })
    }

    /// Take the lease of job `name` and keep it renewed; `None` while
    /// another live worker holds it.
    pub async fn hold_lease(&self, name: &str) -> Result<Result<LeaseGuard, Holder>, StateError> {
        if let Some(holder) = self.acquire_lease(name).await? {
            return Ok(Err(holder));
        }
        let lost = CancellationToken::new();
        let heartbeat = tokio::spawn(renew_loop(self.clone(), name.to_string(), lost.clone()));
        Ok(Ok(LeaseGuard { db: self.clone(), name: name.to_string(), lost, heartbeat }))
    }

    /// Renew this worker's lease of `name` (and its claims on the tasks of
    /// the execution the lease names). `false`: the lease is no longer ours.
    pub async fn renew_lease(&self, name: &str) -> Result<bool, StateError> {
        let now = now_ms();
        let w = self.worker();
        let done = sqlx::query("UPDATE leases SET heartbeat_at = $1, expires_at = $2 WHERE name = $3 AND holder = $4")
            .bind(now)
            .bind(now + w.lease_ms())
            .bind(name)
            .bind(&w.id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Give up this worker's lease of `name`.
    pub async fn release_lease(&self, name: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2").bind(name).bind(&self.worker().id).execute(self.pool()).await?;
        Ok(())
    }

    /// Note in this worker's lease of `name` which execution it works (other
    /// workers join that one).
    pub async fn set_lease_execution(&self, name: &str, execution: i64) -> Result<(), StateError> {
        sqlx::query("UPDATE leases SET execution_id = $1 WHERE name = $2 AND holder = $3")
            .bind(execution)
            .bind(name)
            .bind(&self.worker().id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Claim one task of `execution` that nobody works: a pending one, or one
    /// whose claim expired (its worker died or stalled). `None`: nothing to
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
        let now = now_ms();
        let w = self.worker();
        // Row locking for claims: PostgreSQL skips rows another worker is
        // claiming; SQLite has one writer, so the claim is atomic as it is.
        let lock = match self.backend() {
            super::Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            super::Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, worker = $1, lease_expires_at = $2, updated_at = $3 \
             WHERE id = (SELECT t.id FROM tasks t WHERE t.execution_id = $4 \
                           AND (t.status = 'pending' OR (t.status IN ('running', 'retrying') AND COALESCE(t.lease_expires_at, 0) < $3)) \
                           AND ($5 = 1 OR (t.platforms IS NULL AND COALESCE(t.reason, '') <> 'referrers changed')) \
                           AND (t.tag NOT LIKE 'sha256-%' OR NOT EXISTS (SELECT 1 FROM tasks p WHERE p.execution_id = $4 \
                                AND p.tag NOT LIKE 'sha256-%' AND p.status IN ('pending', 'running', 'retrying'))) \
                         ORDER BY t.id LIMIT 1 {lock}) \
               AND (status = 'pending' OR (status IN ('running', 'retrying') AND COALESCE(lease_expires_at, 0) < $3)) \
               AND EXISTS (SELECT 1 FROM executions e WHERE e.id = $4 AND e.status = 'running' AND e.cancel_requested = 0) \
             RETURNING id, source_repo, dest_repo, tag, source_digest, media_type, reason"
        );
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&w.id).bind(now + w.lease_ms()).bind(now).bind(execution).bind(i64::from(coordinator)).fetch_optional(&mut *tx).await?;
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
        let now = now_ms();
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
        let now = now_ms();
        let me = &self.worker().id;
        let mut tx = self.pool().begin().await?;
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

    /// Policies with a running execution that no live worker holds (its
    /// worker died): the next pass of the policy takes it over.
    pub async fn orphaned_policies(&self) -> Result<Vec<String>, StateError> {
        let rows = sqlx::query(
            "SELECT DISTINCT e.policy FROM executions e WHERE e.status = 'running' AND e.policy IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = e.scope_key AND l.expires_at >= $1)",
        )
        .bind(now_ms())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| r.try_get("policy").map_err(StateError::from)).collect()
    }

    /// Policies whose running execution another live worker holds and that
    /// has tasks nobody works yet: this worker can help.
    pub async fn joinable_policies(&self) -> Result<Vec<String>, StateError> {
        let rows = sqlx::query(
            "SELECT DISTINCT e.policy FROM leases l JOIN executions e ON e.id = l.execution_id \
             WHERE l.expires_at >= $1 AND l.holder <> $2 AND e.status = 'running' AND e.policy IS NOT NULL \
               AND EXISTS (SELECT 1 FROM tasks t WHERE t.execution_id = e.id AND t.status = 'pending')",
        )
        .bind(now_ms())
        .bind(&self.worker().id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| r.try_get("policy").map_err(StateError::from)).collect()
    }

    /// Try to become the one worker putting `digest` into `registry`.
    /// `false`: another live worker is at it.
    pub async fn enter_fence(&self, registry: &str, digest: &str) -> Result<bool, StateError> {
        let now = now_ms();
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

    /// Leave the fence of `digest` in `registry`, recording `holder_repo`
    /// as a repository that now holds it (in the same transaction, so the
    /// next worker through the fence mounts from there).
    pub async fn leave_fence(&self, registry: &str, digest: &str, holder_repo: Option<&str>) -> Result<(), StateError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
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

    /// The live leases: (job, holder, execution).
    pub async fn leases(&self) -> Result<Vec<(String, Holder)>, StateError> {
        let rows = sqlx::query("SELECT name, holder, execution_id FROM leases WHERE expires_at >= $1 ORDER BY name")
            .bind(now_ms())
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, Holder { worker: r.try_get("holder")?, execution: r.try_get("execution_id")? })))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StateError::from)
    }
}

async fn renew_loop(db: StateDb, name: String, lost: CancellationToken) {
    let every = db.worker().heartbeat();
    let mut failures_since = None;
    loop {
        tokio::time::sleep(every).await;
        match db.renew_lease(&name).await {
            Ok(true) => failures_since = None,
            Ok(false) => {
                tracing::error!(lease = %name, worker = %db.worker().id, "lost the lease (it expired and another worker took it): stopping");
                lost.cancel();
                return;
            }
            Err(e) => {
                // A state database that does not answer for a whole lease
                // time means the lease is as good as gone.
                let since = *failures_since.get_or_insert_with(tokio::time::Instant::now);
                tracing::warn!(lease = %name, error = %e, "cannot renew the lease");
                if since.elapsed() >= db.worker().lease {
                    lost.cancel();
                    return;
                }
            }
        }
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

impl BlobFence for StateFence {
    fn enter<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Vec<RepoName>> {
        async move {
            let mut waited = false;
            loop {
                match self.db.enter_fence(&self.registry, digest.as_str()).await {
                    Ok(true) => break,
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
                    if !matches!(db.enter_fence(&registry, &name).await, Ok(true)) {
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
}

/// Shared handle type for [`StateDb`]'s worker.
pub(super) type SharedWorker = Arc<Worker>;

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
}
