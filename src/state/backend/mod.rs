//! What differs between the two databases the state can live in: opening
//! (and creating) the database, its schema migrations, and making both safe
//! when several processes start at once. Everything else — every query of
//! the data model — is written once, in portable SQL run through sqlx's
//! `Any` driver (`$1` placeholders, `ON CONFLICT`, `RETURNING`, integer
//! timestamps and flags), and lives beside this module in `src/state`.
//!
//! An operation that only one database can do well (row locks with
//! `SKIP LOCKED`, advisory locks) gets a method on [`Backend`] that matches
//! on the variant and calls into `sqlite.rs` or `postgres.rs`.
//! This module never shows a PostgreSQL password: errors name the location
//! redacted and are scrubbed of the secret.

mod postgres;
mod sqlite;

use sqlx::AnyPool;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::SqlStr;

use super::{StateError, StateLocation};

/// The database engine behind a [`super::StateDb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file, one writer at a time; the embedded default.
    Sqlite,
    /// A shared server that several processes and machines use at once.
    Postgres,
}

impl Backend {
    pub fn of(location: &StateLocation) -> Backend {
        match location {
            StateLocation::Sqlite(_) => Backend::Sqlite,
            StateLocation::Postgres(_) => Backend::Postgres,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Connect to (creating a SQLite file if needed) `location` and bring
    /// its schema up to date. Safe when several processes do it at once.
    /// `concurrency`: how many tasks this process works at once; the
    /// pool has a connection for each, plus the lease's heartbeat, the claims'
    /// renewal, the recorder and the daemon's API (SQLite: one, its writer).
    pub(super) async fn open(location: &StateLocation, concurrency: usize) -> Result<AnyPool, StateError> {
        sqlx::any::install_default_drivers();
        match location {
            StateLocation::Sqlite(path) => sqlite::open(location, path).await,
            StateLocation::Postgres(_) => postgres::open(location, pool_size(concurrency)).await,
        }
    }
}

/// PostgreSQL connections for a process working `concurrency` tasks at once.
fn pool_size(concurrency: usize) -> u32 {
    u32::try_from(concurrency).unwrap_or(u32::MAX).saturating_add(6).clamp(8, 64)
}

/// One embedded schema migration. Each backend lists its own in
/// `src/state/migrations/<backend>/NNNN_name.sql`, with the same version
/// number for the same change of the data model.
fn migration(version: i64, description: &'static str, sql: &'static str) -> Migration {
    Migration::new(version, description.into(), MigrationType::Simple, SqlStr::from_static(sql), false)
}

fn migrator(migrations: Vec<Migration>) -> Migrator {
    Migrator::with_migrations(migrations)
}

/// An error from opening `location`, shown without its secret.
fn open_error(location: &StateLocation, e: impl std::fmt::Display) -> StateError {
    StateError::Open { location: location.redacted(), message: location.scrub(&e.to_string()) }
}

/// A migration error, shown without the location's secret.
fn migrate_error(location: &StateLocation, e: impl std::fmt::Display) -> StateError {
    StateError::Migrate { location: location.redacted(), message: location.scrub(&e.to_string()) }
}
