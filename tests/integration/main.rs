//! Integration tests: the real `regferry` binary against real
//! `docker-registry` processes on loopback ports (see `testkit`).

mod support;

mod auth;
mod cli_errors;
mod dr;
mod memory;
mod migrate;
mod policies;
