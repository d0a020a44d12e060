#!/usr/bin/env bash
# The test command: installs the registry if needed, then runs every test
# (unit tests and the integration tests against real local registries).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test
cargo build --workspace --all-targets --locked
# Cargo.toml's rust-version is the real minimum (after the build: it reads
# the crates the build fetched).
scripts/msrv.sh
cargo test --workspace --locked
