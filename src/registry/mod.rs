//! The registry transport: everything regferry says to an OCI / Docker
//! registry, and nothing about what to copy.
//!
//! Layout: [`endpoint`] (where and who), [`client`] (HTTP, retries),
//! [`authn`] (challenges, credentials, tokens),
//! [`listing`], [`manifests`], [`referrers`] and [`blobs`] (the requests themselves), plus
//! the pure data modules [`digest`], [`name`], [`manifest`], [`auth`] and
//! [`error`]. This module must never decide replication policy and never log
//! or return a credential.

pub mod auth;
pub mod authn;
pub mod blobs;
pub mod client;
pub mod digest;
pub mod docker_config;
pub mod endpoint;
pub mod error;
pub mod gate;
pub mod listing;
pub mod manifest;
pub mod manifests;
pub mod name;
pub mod referrers;
pub mod throttle;
pub mod usage;

pub use auth::Scopes;
pub use blobs::MountOutcome;
pub use client::{ClientOptions, RegistryClient, RetryConfig};
pub use digest::Digest;
pub use endpoint::{CredentialSource, Credentials, Endpoint, Proxy, RegistryUrl, Secret, Tls};
pub use error::RegistryError;
pub use gate::Limits;
pub use manifests::{ManifestBody, ManifestHead};
pub use name::{Reference, RepoName, Tag};
