#!/usr/bin/env bash
# Install what regferry's demo, tests and benchmark need on Debian, when missing.
#   scripts/deps.sh          the demo: the CNCF distribution registry (package
#                            docker-registry) and curl
#   scripts/deps.sh --test   the tests as well: nginx (fronts: TLS, body limits,
#                            redirects), tinyproxy (per-registry proxies), skopeo
#                            (a real client reading regferry's OCI layouts),
#                            Chromium (the status page), promtool (alert rules),
#                            and from pip moto's S3 server (registries on object
#                            storage), kubernetes-validate, openapi-spec-validator,
#                            schemathesis and helm-python-sdk (deployment files,
#                            the OpenAPI document and the live API against it, the
#                            Helm chart rendered by Helm's Go SDK), and PostgreSQL
#                            (the tests start throwaway clusters of their own),
#                            faketime (a worker whose clock runs ahead), and
#                            Pulp's container registry (pulp-container from
#                            PyPI, pinned in scripts/pulp-requirements.txt) in a
#                            virtualenv at ~/.cache/regferry/pulp-venv
#   scripts/deps.sh --bench  the benchmark: nginx, moto, skopeo, PostgreSQL, jq and GNU
#                            time (/usr/bin/time, for peak RSS and CPU time)
# PostgreSQL is installed without its system cluster (none is created or started).
set -euo pipefail
mode="${1:-}"
want=()
pips=()
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || want+=(docker-registry)
command -v curl >/dev/null 2>&1 || want+=(curl)
if [ "$mode" = "--test" ] || [ "$mode" = "--bench" ]; then
  [ -x /usr/sbin/nginx ] || want+=(nginx-light)
  command -v moto_server >/dev/null 2>&1 || pips+=('moto[server]')
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want+=(postgresql)
fi
if [ "$mode" = "--test" ]; then
  [ -x /usr/bin/tinyproxy ] || want+=(tinyproxy)
  command -v skopeo >/dev/null 2>&1 || want+=(skopeo)
  command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || want+=(chromium)
  command -v promtool >/dev/null 2>&1 || want+=(prometheus)
  command -v faketime >/dev/null 2>&1 || want+=(faketime)
  command -v kubernetes-validate >/dev/null 2>&1 || pips+=(kubernetes-validate)
  command -v openapi-spec-validator >/dev/null 2>&1 || pips+=(openapi-spec-validator)
  command -v schemathesis >/dev/null 2>&1 || pips+=(schemathesis)
  python3 -c 'import helm_python' >/dev/null 2>&1 || pips+=(helm-python-sdk)
fi
if [ "$mode" = "--bench" ]; then
  command -v skopeo >/dev/null 2>&1 || want+=(skopeo)
  [ -x /usr/bin/time ] || want+=(time)
  command -v jq >/dev/null 2>&1 || want+=(jq)   # bench/run.sh --quota/--platforms read regferry's --json
fi
[ ${#pips[@]} -gt 0 ] && ! command -v pip3 >/dev/null 2>&1 && want+=(python3-pip)
if [ ${#want[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  echo "installing: ${want[*]}" >&2
  if [[ " ${want[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    # Tests run clusters of their own: no system cluster "main".
    $sudo mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  apt=(apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold)
  $sudo "${apt[@]}" "${want[@]}" </dev/null \
    || { $sudo apt-get update </dev/null && $sudo "${apt[@]}" "${want[@]}" </dev/null; }
fi
if [ "$mode" = "--test" ]; then
  # Pulp's container registry (a second registry implementation for the
  # tests, testkit/src/pulp.rs): pinned versions in a virtualenv of its own,
  # kept between runs (skipped when present).
  pulp_venv="${REGFERRY_PULP_VENV:-$HOME/.cache/regferry/pulp-venv}"
  if [ ! -x "$pulp_venv/bin/pulpcore-api" ]; then
    echo "installing: pulp-container into $pulp_venv (pip)" >&2
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      sudo=""
      [ "$(id -u)" -eq 0 ] || sudo="sudo"
      $sudo apt-get install -y --no-install-recommends python3-venv </dev/null \
        || { $sudo apt-get update </dev/null && $sudo apt-get install -y --no-install-recommends python3-venv </dev/null; }
    fi
    rm -rf "$pulp_venv"
    python3 -m venv "$pulp_venv"
    "$pulp_venv/bin/pip" install -q -r "$(dirname "$0")/pulp-requirements.txt" </dev/null
  fi
fi
for p in ${pips[@]+"${pips[@]}"}; do
  echo "installing: $p (pip)" >&2
  pip3 install -q "$p" </dev/null 2>/dev/null || pip3 install -q --break-system-packages "$p" </dev/null
done
