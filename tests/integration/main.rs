//! Integration tests: the real `regferry` binary against real
//! `docker-registry` processes on loopback ports (see `testkit`).

mod support;

mod auth;
mod bad_input;
mod cli_errors;
mod convergence;
mod crash;
mod dr;
mod dr_safety;
mod dr_ownership;
mod dr_soak;
mod firsthour;
mod identities;
mod fanout;
mod install;
mod faults;
mod memory;
mod migrate;
mod parts;
mod ocidir;
mod operations;
mod platforms;
mod policies;
mod pulp;
mod referrers;
mod security;
mod shapes_storage;
mod shapes_limits;
mod shapes_transfer;
mod shapes_corners;
mod workers;
mod quota;
mod state_postgres;
mod state_wedge;
mod supply;
mod tag_rename;
