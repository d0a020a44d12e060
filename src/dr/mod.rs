//! Disaster recovery: prove that a destination is a faithful, pullable copy
//! ([`verify`]), know how far behind it is ([`lag`]), react to registry push
//! events ([`events`]), mirror deletions for `delete: true` policies
//! ([`prune`], within its deletion guard), and fail a policy over to its DR
//! registry and back ([`failover`]), leaving a marker in the registries
//! that outlives the state database (`pass::fence`).
//!
//! Builds on the engine, the policies and the state database; never prints.

pub mod events;
pub mod failover;
pub mod lag;
pub mod prune;
pub mod verify;
