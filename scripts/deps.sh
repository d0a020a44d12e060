#!/usr/bin/env bash
# Install what regferry's demo, tests and benchmark need on Debian, when missing:
# the CNCF distribution registry (package docker-registry), nginx (fronts:
# TLS, body limits, redirects), moto's S3 server (pip), Chromium (the status
# page test), promtool (alert rules), kubernetes-validate and
# openapi-spec-validator, schemathesis and helm-python-sdk (pip; deployment
# files, the OpenAPI document, the live API against it, and the Helm chart
# rendered by Helm's Go SDK)
# and, with --bench, skopeo and GNU time (/usr/bin/time, for peak RSS and CPU time).
set -euo pipefail
want=()
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || want+=(docker-registry)
command -v curl >/dev/null 2>&1 || want+=(curl)
[ -x /usr/sbin/nginx ] || want+=(nginx-light)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || want+=(chromium)
command -v promtool >/dev/null 2>&1 || want+=(prometheus)
if [ "${1:-}" = "--bench" ]; then
  command -v skopeo >/dev/null 2>&1 || want+=(skopeo)
  [ -x /usr/bin/time ] || want+=(time)
fi
# A local S3 server for registries on object storage (tests and benchmark).
if ! command -v moto_server >/dev/null 2>&1 || ! command -v kubernetes-validate >/dev/null 2>&1 \
   || ! command -v openapi-spec-validator >/dev/null 2>&1 || ! command -v schemathesis >/dev/null 2>&1 \
   || ! python3 -c 'import helm_python' >/dev/null 2>&1; then
  command -v pip3 >/dev/null 2>&1 || want+=(python3-pip)
fi
pip_install() {
  echo "installing: $* (pip)" >&2
  pip3 install -q "$@" </dev/null 2>/dev/null \
    || pip3 install -q --break-system-packages "$@" </dev/null
}
install_moto() {
  command -v moto_server >/dev/null 2>&1 || pip_install 'moto[server]'
  command -v kubernetes-validate >/dev/null 2>&1 || pip_install kubernetes-validate
  command -v openapi-spec-validator >/dev/null 2>&1 || pip_install openapi-spec-validator
  command -v schemathesis >/dev/null 2>&1 || pip_install schemathesis
  python3 -c 'import helm_python' >/dev/null 2>&1 || pip_install helm-python-sdk
  return 0
}
if [ ${#want[@]} -eq 0 ]; then install_moto; exit 0; fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "installing: ${want[*]}" >&2
$sudo apt-get install -y --no-install-recommends "${want[@]}" </dev/null \
  || { $sudo apt-get update </dev/null && $sudo apt-get install -y --no-install-recommends "${want[@]}" </dev/null; }
install_moto
