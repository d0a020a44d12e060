#!/usr/bin/env bash
# The demo: start two local registries, fill one with a synthetic data set
# (shared base layers, Docker and OCI images, multi-arch indexes, cosign-style
# signatures), show the plan, migrate it, and migrate again to show that an
# unchanged source costs only manifest HEADs. Everything runs on 127.0.0.1 and
# is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --locked --workspace --bins -q
bin=target/debug
work=$(mktemp -d)
serve_pid=""
cleanup() { [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM

"$bin/regferry-testkit" serve --count 2 >"$work/registries" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do grep -q '^READY=1' "$work/registries" 2>/dev/null && break; sleep 0.1; done
grep -q '^READY=1' "$work/registries" || { cat "$work/serve.log" >&2; exit 1; }
src=$(sed -n 's/^REGISTRY_0=//p' "$work/registries")
dst=$(sed -n 's/^REGISTRY_1=//p' "$work/registries")
echo "source registry:      $src"
echo "destination registry: $dst"

"$bin/regferry-testkit" fill --registry "$src" --repos "${DEMO_REPOS:-6}" --tags "${DEMO_TAGS:-4}"
state="$work/regferry.db"

echo; echo "== plan (dry run) =="
"$bin/regferry" migrate --from "$src" --to "$dst/mirror" --state "$state" --dry-run | tail -n 8
echo; echo "== migrate =="
"$bin/regferry" migrate --from "$src" --to "$dst/mirror" --state "$state"
echo; echo "== migrate again: nothing changed, nothing is copied =="
"$bin/regferry" migrate --from "$src" --to "$dst/mirror" --state "$state"
echo; echo "destination catalog: $(curl -fsS "$dst/v2/_catalog")"
