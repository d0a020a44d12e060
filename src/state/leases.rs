//! Several workers on one state: who this process is (its worker id) and
//! who holds a job (a lease with a heartbeat and an expiry). Task claims
//! live in `claims.rs`, blob fences in `fences.rs`, push events in
//! `push_events.rs` (their types are re-exported here).
//!
//! Every lease is a row with `expires_at`, compared with the database's
//! clock ([`StateDb::clock`]: `now()` of the PostgreSQL server, this
//! machine's clock for SQLite), so a worker whose own clock runs ahead
//! takes nothing live. A worker that dies simply stops renewing its lease,
//! and after the lease time anyone may take it over. Queries use `$n`
//! placeholders in order of first use and `ON CONFLICT`/`RETURNING`, which
//! both backends understand. This module never talks to a registry and
//! never decides what to copy.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{StateDb, StateError};
pub use super::claims::{Claim, ClaimedTask};
pub use super::fences::StateFence;

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

    pub(super) fn lease_ms(&self) -> i64 {
        self.lease.as_millis().min(i64::MAX as u128) as i64
    }
}

/// This process's default worker id, `host:pid:xxxxxx` (the same for the
/// whole process): the host and PID say where it runs, the last part — six
/// random hex digits drawn once per process — keeps it unique where PIDs
/// repeat (every container's first process is PID 1, a host reboots).
pub fn default_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| id_of(&hostname(), std::process::id(), &unique_part())).clone()
}

/// `host:pid:unique`.
fn id_of(host: &str, pid: u32, unique: &str) -> String {
    format!("{host}:{pid}:{unique}")
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // or truncates within it.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

/// Six random hex digits (from the kernel; the time and the address of a
/// stack value where it cannot be read).
fn unique_part() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 3];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        let mixed = super::now_ms() as u64 ^ (&bytes as *const _ as u64).rotate_left(17) ^ u64::from(std::process::id()).rotate_left(40);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..3]);
    }
    hex::encode(bytes)
}

/// The host and PID of a default worker id (`host:pid:unique`, or
/// `host:pid` as older versions wrote it). Told apart by the number of
/// colons (a host name has none), never by whether the last part reads as a
/// number: a unique part of digits only is still not the PID.
fn host_and_pid(worker: &str) -> Option<(&str, libc::pid_t)> {
    let mut parts = worker.split(':');
    let (host, pid) = (parts.next()?, parts.next()?);
    let _unique = parts.next();
    if parts.next().is_some() || host.is_empty() {
        return None;
    }
    Some((host, pid.parse().ok()?))
}

/// Whether `worker` is a default id of a process of this machine that no
/// longer exists. A live process, a process of another machine, this
/// process, or an id set by hand: `false` (its lease expires on its own).
fn dead_here(worker: &str) -> bool {
    let Some((host, pid)) = host_and_pid(worker) else { return false };
    if worker == default_id() || host != hostname() || pid <= 0 || pid == std::process::id() as libc::pid_t {
        return false;
    }
    crate::process::gone(pid)
}

/// Who holds a job when this worker could not take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub worker: String,
    /// The execution it works, once it has recorded one.
    pub execution: Option<i64>,
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


impl StateDb {
    /// Take the lease of job `name`, or renew it when this worker holds it.
    /// `Ok(None)`: taken; `Ok(Some(holder))`: another live worker holds it.
    pub async fn acquire_lease(&self, name: &str) -> Result<Option<Holder>, StateError> {
        let now = self.clock().await?;
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
        let mut tx = self.begin_write().await?;
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
            .bind(self.clock().await?)
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
        let now = self.clock().await?;
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

    /// Policies with a running execution that no live worker holds (its
    /// worker died): the next pass of the policy takes it over.
    pub async fn orphaned_policies(&self) -> Result<Vec<String>, StateError> {
        let rows = sqlx::query(
            "SELECT DISTINCT e.policy FROM executions e WHERE e.status = 'running' AND e.policy IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = e.scope_key AND l.expires_at >= $1)",
        )
        .bind(self.clock().await?)
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
        .bind(self.clock().await?)
        .bind(&self.worker().id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| r.try_get("policy").map_err(StateError::from)).collect()
    }

    /// End every execution still `running` that no live lease covers (its
    /// process died and its lease expired): it becomes `canceled`, with
    /// an error saying so, and the next run of its job resumes it. Returns
    /// how many were ended.
    pub async fn end_abandoned_executions(&self) -> Result<u64, StateError> {
        let now = self.clock().await?;
        let done = sqlx::query(
            "UPDATE executions SET status = 'canceled', finished_at = $1, updated_at = $1, \
               error = COALESCE(error, 'interrupted: its worker stopped renewing its lease (the process ended without closing it)') \
             WHERE status = 'running' AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = executions.scope_key AND l.expires_at >= $1)",
        )
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// The live leases: (job, holder, execution).
    pub async fn leases(&self) -> Result<Vec<(String, Holder)>, StateError> {
        let rows = sqlx::query("SELECT name, holder, execution_id FROM leases WHERE expires_at >= $1 ORDER BY name")
            .bind(self.clock().await?)
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

/// Shared handle type for [`StateDb`]'s worker.
pub(super) type SharedWorker = Arc<Worker>;

#[cfg(test)]
mod tests {
    use super::{default_id, host_and_pid, hostname, id_of, unique_part};

    /// Two processes with the same host and PID (containers, PID
    /// namespaces, a reboot) get different ids; one process keeps its own.
    #[test]
    fn worker_ids_differ_where_host_and_pid_repeat() {
        let a = id_of("pod", 1, &unique_part());
        let b = id_of("pod", 1, &unique_part());
        assert_ne!(a, b, "same host and PID, different processes");
        assert!(a.starts_with("pod:1:") && b.starts_with("pod:1:"), "{a} {b}");
        assert_eq!(host_and_pid(&a), Some(("pod", 1)));
        assert_eq!(host_and_pid("pod:7"), Some(("pod", 7)), "the ids older versions wrote");
        assert_eq!(host_and_pid("by-hand"), None);
        // A unique part of digits only (one id in 17: six hex digits) is
        // still the unique part, not the PID.
        assert_eq!(host_and_pid("pod:1:123456"), Some(("pod", 1)));
        assert_eq!(default_id(), default_id(), "one id per process");
        assert!(default_id().starts_with(&format!("{}:{}:", hostname(), std::process::id())), "{}", default_id());
    }
}
