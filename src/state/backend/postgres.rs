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

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

use super::{migrate_error, migration, migrator, open_error};
use crate::state::{StateError, StateLocation};

/// Connections per process: the recorder, the daemon's API and a few
/// concurrent passes; PostgreSQL serves many processes.
const MAX_CONNECTIONS: u32 = 8;

/// How long opening or taking a connection may take before it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

fn migrations() -> Migrator {
    migrator(vec![
        migration(1, "init", include_str!("../migrations/postgres/0001_init.sql")),
        migration(2, "daemon", include_str!("../migrations/postgres/0002_daemon.sql")),
        migration(3, "health", include_str!("../migrations/postgres/0003_health.sql")),
        migration(4, "platforms", include_str!("../migrations/postgres/0004_platforms.sql")),
        migration(5, "referrers", include_str!("../migrations/postgres/0005_referrers.sql")),
        migration(6, "workers", include_str!("../migrations/postgres/0006_workers.sql")),
        migration(9, "narrowed", include_str!("../migrations/postgres/0009_narrowed.sql")),
    ])
}

pub(super) async fn open(location: &StateLocation) -> Result<AnyPool, StateError> {
    let Some(url) = location.secret_url() else {
        return Err(open_error(location, "not a PostgreSQL URL"));
    };
    let pool = AnyPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .map_err(|e| open_error(location, e))?;
    migrations().run(&pool).await.map_err(|e| migrate_error(location, e))?;
    Ok(pool)
}
