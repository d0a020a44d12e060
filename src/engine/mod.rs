//! The replication engine: discover → diff → execute.
//!
//! [`discover`] and [`diff`] turn a [`discover::Scope`] into a
//! [`plan::Plan`] using only listings and `HEAD`s; [`execute`] carries the
//! plan out through [`copy`] (manifest trees) and [`blobs`] (skip, mount or
//! stream) and [`referrers`] (what travels with a manifest), reporting
//! progress in [`stats`] and state changes as [`events`]. The engine never
//! touches the state database and never reads CLI flags or policy files: it
//! is handed a scope and two stores ([`crate::scheme::Scheme`]: registries
//! or OCI layouts).

pub mod blobs;
pub mod chunked;
pub mod converge;
pub mod copy;
pub mod cosign;
pub mod diff;
pub mod discover;
pub mod events;
pub mod execute;
pub mod gate;
pub mod immutable;
pub mod left_behind;
pub mod plan;
pub mod platforms;
pub mod referrers;
pub mod rename;
pub mod rename_collisions;
pub mod stats;
pub mod tag_rename;
pub mod verify_stream;

use crate::registry::RegistryError;

/// Errors that stop a whole run before any tag is attempted. Failures of
/// single tags are not errors of the run: they are recorded per task.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input (a glob, a name) caught before any request.
    #[error("{0}")]
    Input(String),
    /// The source catalog could not be read and no repository list was given.
    #[error("cannot list the source catalog (name the repositories with --repo or a policy's source.repositories): {0}")]
    Catalog(Box<RegistryError>),
    /// A registry could not be reached or refused us.
    #[error(transparent)]
    Registry(Box<RegistryError>),
}

// Boxed: a `RegistryError` is large, and an `EngineError` travels through
// every `?` of discovery and planning (clippy's `result_large_err`).
impl From<RegistryError> for EngineError {
    fn from(e: RegistryError) -> Self {
        EngineError::Registry(Box::new(e))
    }
}
