//! regferry: replicate container images between OCI / Docker registries,
//! exactly (same digests, same media types), cheaply (digest-aware, mount
//! before upload, streaming) and provably.
//!
//! Data flows one way: a scope (from the CLI or a policy) is turned into a
//! [`engine::plan::Plan`] by discovery and diffing, the plan is executed by
//! the [`engine`], and every task's fate is recorded in [`state`]. [`job`]
//! wires those steps together for every command, and [`pass`] runs one
//! policy's pass over its destinations for `run`, the daemon and failover.

pub mod daemon;
pub mod dr;
pub mod engine;
pub mod job;
pub mod pass;
pub mod policy;
pub mod process;
pub mod registry;
pub mod scheme;
pub mod state;
pub mod worker;
