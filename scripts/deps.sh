#!/usr/bin/env bash
# Install what regferry's demo, tests and benchmark need on Debian, when missing:
# the CNCF distribution registry (package docker-registry) and, with --bench,
# skopeo and GNU time (/usr/bin/time, for peak RSS and CPU time).
set -euo pipefail
want=()
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || want+=(docker-registry)
command -v curl >/dev/null 2>&1 || want+=(curl)
if [ "${1:-}" = "--bench" ]; then
  command -v skopeo >/dev/null 2>&1 || want+=(skopeo)
  [ -x /usr/bin/time ] || want+=(time)
fi
[ ${#want[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "installing: ${want[*]}" >&2
$sudo apt-get install -y --no-install-recommends "${want[@]}" </dev/null \
  || { $sudo apt-get update </dev/null && $sudo apt-get install -y --no-install-recommends "${want[@]}" </dev/null; }
