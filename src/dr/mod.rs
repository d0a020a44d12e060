//! Disaster recovery: prove that a destination is a faithful, pullable copy
//! ([`verify`]), react to registry push events ([`events`]), and fail a
//! policy over to its DR registry and back ([`failover`]), leaving a marker
//! in the registries that outlives the state database (`pass::fence`).
//! How far behind a destination is lives in the state (`state::lag`);
//! deletions for `delete: true` policies are the pass's own last step
//! (`pass::prune`), never run from here.
//!
//! Builds on the engine, the policies and the state database; never prints.

pub mod events;
pub mod failover;
pub mod repair;
pub mod verify;
