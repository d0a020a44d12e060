//! regferry's test and benchmark kit: real `docker-registry` processes,
//! synthetic images and data sets, an independent registry client for
//! checks, a token service, and (for fault tests) a fault-injecting proxy.
//!
//! Nothing here is used by regferry itself; it exists so tests talk to real
//! registries on loopback and never to anything off the machine.

pub mod bench_report;
pub mod client;
pub mod cosign;
pub mod dataset;
pub mod image;
pub mod nginx;
pub mod postgres;
pub mod proxy;
pub mod pulp;
pub mod rawcopy;
pub mod rawimages;
pub mod referrers;
pub mod s3;
pub mod registry;
pub mod tls;
pub mod token;

pub use client::{Access, Registry};
pub use proxy::{Canned, FaultProxy, Faults};
pub use nginx::{Front, Nginx};
pub use postgres::TestPostgres;
pub use pulp::{PulpAuth, PulpOptions, TestPulp};
pub use registry::{Auth, Options, TestRegistry, free_port};
pub use s3::{S3Server, S3Storage};
pub use token::TokenServer;
