#!/usr/bin/env bash
# The minimum Rust version check (a CI step of scripts/test.sh): the
# `rust-version` of Cargo.toml must be at least the highest `rust-version`
# any locked dependency declares (otherwise `cargo install` on that
# toolchain fails in a dependency), and no newer than the toolchain CI
# builds with (otherwise nothing has tested that it builds). No toolchain
# is downloaded: it reads `cargo metadata --locked --offline`.
set -euo pipefail
cd "$(dirname "$0")/.."
meta=$(mktemp)
trap 'rm -f "$meta"' EXIT
cargo metadata --locked --offline --format-version 1 >"$meta"
python3 - "$meta" "$(rustc --version)" <<'PY'
import json, re, sys

def parse(v):
    return tuple(int(x) for x in (v.split(".") + ["0", "0"])[:3])

def show(v):
    return ".".join(map(str, v))

meta = json.load(open(sys.argv[1]))
toolchain = re.search(r"rustc (\d+\.\d+\.\d+)", sys.argv[2]).group(1)
resolved = {n["id"] for n in meta["resolve"]["nodes"]}
members = set(meta["workspace_members"])
ours = next(p for p in meta["packages"] if p["name"] == "regferry" and p["id"] in members)
declared = ours.get("rust_version") or sys.exit("Cargo.toml: regferry declares no rust-version")
needs = sorted(((parse(p["rust_version"]), p["name"], p["version"]) for p in meta["packages"]
                if p["id"] in resolved and p["id"] not in members and p.get("rust_version")), reverse=True)
top = needs[0]
print(f"rust-version {declared}; the highest of the locked dependencies: {top[1]} {top[2]} needs {show(top[0])}; toolchain {toolchain}")
if parse(declared) < top[0]:
    above = ", ".join(f"{n} {v} ({show(r)})" for r, n, v in needs if r > parse(declared))
    sys.exit(f"Cargo.toml says rust-version = {declared}, but locked dependencies need more: {above}")
if parse(declared) > parse(toolchain):
    sys.exit(f"Cargo.toml says rust-version = {declared}, newer than the toolchain that builds and tests it ({toolchain})")
# README's Install section promises the same version.
said = re.search(r"needs Rust (\d+\.\d+(?:\.\d+)?)\s+or newer", open("README.md").read())
if not said or parse(said.group(1)) != parse(declared):
    sys.exit(f"README.md's Install section says {said.group(0) if said else 'no Rust version'}, Cargo.toml rust-version = {declared}")
PY
