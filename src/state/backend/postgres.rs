//! The PostgreSQL backend: a shared database that many regferry processes
//! (on many machines) use at once, through a small connection pool.
//!
//! Migrating is safe when several processes start at once: sqlx's migrator
//! holds a PostgreSQL advisory lock (keyed on the database name) while it
//! creates its bookkeeping table and applies migrations, so one process
//! applies them and the others wait and find them applied. The database
//! itself must exist (an operator creates it); this module never creates
//! roles or databases, and never shows the password of the URL.

use std::time::Duration;

use sqlx::{AnyPool, Executor};
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

use super::{migrate_error, migration, migrator, open_error};
use crate::state::{StateError, StateLocation};

/// How long opening or taking a connection may take before that one call
/// fails (a state call that fails is retried by its caller; it never waits
/// for ever).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Set on every connection, so that nothing the database does can wedge a
/// run: a statement waits at most this long for a row lock, and …
const LOCK_TIMEOUT: &str = "10s";
/// … a transaction left open by a process that stopped talking (frozen,
/// or a bug) is ended by the server, releasing its locks.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "10s";

fn migrations() -> Migrator {
    migrator(vec![
        migration(1, "init", include_str!("../migrations/postgres/0001_init.sql")),
        migration(2, "daemon", include_str!("../migrations/postgres/0002_daemon.sql")),
        migration(3, "health", include_str!("../migrations/postgres/0003_health.sql")),
        migration(4, "platforms", include_str!("../migrations/postgres/0004_platforms.sql")),
        migration(5, "referrers", include_str!("../migrations/postgres/0005_referrers.sql")),
        migration(6, "workers", include_str!("../migrations/postgres/0006_workers.sql")),
        migration(8, "dr", include_str!("../migrations/postgres/0008_dr.sql")),
        migration(9, "narrowed", include_str!("../migrations/postgres/0009_narrowed.sql")),
        migration(11, "pass_errors", include_str!("../migrations/postgres/0011_pass_errors.sql")),
    ])
}

pub(super) async fn open(location: &StateLocation, connections: u32) -> Result<AnyPool, StateError> {
    let Some(url) = location.secret_url() else {
        return Err(open_error(location, "not a PostgreSQL URL"));
    };
    let pool = AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "SET lock_timeout = '{LOCK_TIMEOUT}'; SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'"
                )))
                .await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| open_error(location, e))?;
    migrations().run(&pool).await.map_err(|e| migrate_error(location, e))?;
    Ok(pool)
}
