#!/usr/bin/env bash
# regferry's benchmark: regferry migrate vs `skopeo sync` vs the raw limit,
# side by side, on real docker-registry processes on loopback.
#
#   bench/run.sh                 # the main data set (initial copy + no-op resync)
#   bench/run.sh --quick         # a small main data set, for a smoke run
#   bench/run.sh --big           # main + one 1 GiB layer
#   bench/run.sh --scale         # main + a no-op pass over 10,000 tags
#   bench/run.sh --tls           # main + the main data set with nginx TLS in front of both registries
#   bench/run.sh --slow          # main + bigger layers to a destination behind a slow link
#   bench/run.sh --all           # all five
#   bench/run.sh --only tls      # just one scenario (main|big|scale|tls|slow)
#   bench/run.sh --workers 3     # only: one large pass by 1 daemon vs 3 daemons on one PostgreSQL,
#                                # each capped at BENCH_WORKER_BPS; then a kill -9 of the pass's holder
#   bench/run.sh --quota 16      # only: 30 tags to copy from a source answering as Docker Hub with a
#                                # quota of 16 pulls: pulls, 429s, time; then a pass with the quota spent
#   bench/run.sh --platforms     # only: a platform-filtered (linux/amd64, rewrite) initial copy of
#                                # multi-arch tags, then the no-op pass: its manifest GETs must be 0
#   bench/run.sh --tags 100000   # only: the scale scenario with 20 repositories × N/20 tags (initial
#                                # copy, then no-op passes with HEADs and with --missing-only)
#   bench/run.sh --fanout 2      # only: the main data set by a policy with N destinations (one read of
#                                # the source for all), against one destination and against N with
#                                # spool_budget: 0: source bytes read vs distinct bytes, wall times;
#                                # with the source on loopback, then behind a link (BENCH_FANOUT_SOURCE_BPS)
#
# The tls and slow scenarios run regferry single-threaded (--threads 1) and
# multi-threaded (--threads BENCH_THREADS, default: the cores) against
# skopeo sync, initial copies on fresh destinations.
#
# Every initial copy goes to a fresh destination registry; each no-op
# resync runs on the destination its tool just filled. Results (raw TSV,
# the registries' access-log lines of every run, each tool's output and a
# report) go to bench/out/<timestamp>/, the report also to stdout.
#
# Parameters (environment):
#   BENCH_REPOS=20 BENCH_TAGS=10            repositories × tags per repository
#   BENCH_BASE_LAYERS=2 BENCH_BASE_SIZE=4194304   shared base layers (bytes each)
#   BENCH_REPO_SIZE=2097152 BENCH_TAG_SIZE=524288 per-repository / per-tag layer bytes
#   BENCH_MULTI_ARCH_EVERY=3                every n-th tag is a 2-platform index
#   BENCH_CONCURRENCY=8                     regferry --concurrency and raw copy streams
#   BENCH_REPEAT=3                          repetitions of the main scenario (medians reported)
#   BENCH_BIG_SIZE=1073741824               the big layer
#   BENCH_SCALE_REPOS=100 BENCH_SCALE_TAGS=100    the scale scenario's data set
#   BENCH_SCALE_SKOPEO=0                    1: also sync the scale set with skopeo (slow)
#   BENCH_SCALE_CHECK=1                     0: skip the tag-by-tag comparison of the scale copy (2 HEADs a tag,
#                                           timed as a minimal client's no-op: rawheads)
#   BENCH_SCALE_SAME_IMAGE=0                1 (the default with --tags): every tag of a scale repository is
#                                           one small image (pushed once, then tagged concurrently: fast to make)
#   BENCH_PROFILE=release                   cargo profile the binaries are built with
#   BENCH_NO_BUILD=1                        use the binaries already built
#   BENCH_REGFERRY=PATH                     the regferry binary to run (e.g. a saved build, for before/after)
#   BENCH_TOOLS="raw rawimages regferry skopeo"   which contenders run (for quick iterations);
#                                           rawimages (main only): the raw copy plus listings, mounts
#                                           and each manifest GET and PUT once, the floor of a whole copy
#   BENCH_STORAGE=tmpfs                     where the registries keep their data: tmpfs
#                                           (/dev/shm) or disk ($TMPDIR); see docs/performance.md
#   BENCH_THREADS=$(nproc)                  regferry --threads of the multi-threaded runs (tls, slow)
#   BENCH_LINK_LATENCY_MS=40 BENCH_LINK_BANDWIDTH=50000000   the slow link (fault proxy before
#                                           the destination): latency per request, bytes/s each way
#   BENCH_SLOW_REPOS=4 BENCH_SLOW_TAGS=4 BENCH_SLOW_BASE_SIZE=33554432
#   BENCH_SLOW_REPO_SIZE=16777216 BENCH_SLOW_TAG_SIZE=8388608   the slow scenario's data set
#   BENCH_WORKER_BPS=2MiB                    each worker's bytes_per_second to the destination (workers)
#   BENCH_WORKER_REPOS=8 BENCH_WORKER_TAGS=12 BENCH_WORKER_TAG_SIZE=1048576  the workers scenario's data set
#   BENCH_LEASE=3s                           the workers' --lease-time (workers)
#   BENCH_FANOUT_SOURCE_BPS=10000000         the fanout scenario's second source link, bytes/s
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scenarios=(main)
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --big) scenarios+=(big) ;;
    --scale) scenarios+=(scale) ;;
    --all) scenarios=(main big scale tls slow) ;;
    --only) shift; scenarios=("$1") ;;
    --tls) scenarios+=(tls) ;;
    --slow) scenarios+=(slow) ;;
    --workers) shift; WORKERS="$1"; scenarios=(workers) ;;
    --quota) shift; QUOTA="$1"; scenarios=(quota) ;;
    --platforms) scenarios=(platforms) ;;
    --fanout) shift; FANOUT="$1"; scenarios=(fanout) ;;
    --tags) shift; BENCH_SCALE_REPOS=20; BENCH_SCALE_TAGS=$(( $1 / 20 )); : "${BENCH_SCALE_SAME_IMAGE:=1}"; scenarios=(scale) ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$quick" = 1 ]; then
  : "${BENCH_REPOS:=4}" "${BENCH_TAGS:=3}" "${BENCH_BASE_SIZE:=262144}" "${BENCH_REPO_SIZE:=131072}" "${BENCH_TAG_SIZE:=32768}"
  : "${BENCH_BIG_SIZE:=134217728}" "${BENCH_SCALE_REPOS:=10}" "${BENCH_SCALE_TAGS:=100}" "${BENCH_REPEAT:=1}"
  : "${BENCH_SLOW_REPOS:=2}" "${BENCH_SLOW_TAGS:=2}" "${BENCH_SLOW_BASE_SIZE:=8388608}" "${BENCH_SLOW_REPO_SIZE:=4194304}"
  : "${BENCH_SLOW_TAG_SIZE:=2097152}"
fi
REPOS=${BENCH_REPOS:-20}
TAGS=${BENCH_TAGS:-10}
BASE_LAYERS=${BENCH_BASE_LAYERS:-2}
BASE_SIZE=${BENCH_BASE_SIZE:-4194304}
REPO_SIZE=${BENCH_REPO_SIZE:-2097152}
TAG_SIZE=${BENCH_TAG_SIZE:-524288}
MULTI_ARCH_EVERY=${BENCH_MULTI_ARCH_EVERY:-3}
CONCURRENCY=${BENCH_CONCURRENCY:-8}
REPEAT=${BENCH_REPEAT:-3}
BIG_SIZE=${BENCH_BIG_SIZE:-1073741824}
SCALE_REPOS=${BENCH_SCALE_REPOS:-100}
SCALE_TAGS=${BENCH_SCALE_TAGS:-100}
SCALE_SKOPEO=${BENCH_SCALE_SKOPEO:-0}
SCALE_SAME_IMAGE=${BENCH_SCALE_SAME_IMAGE:-0}
SCALE_CHECK=${BENCH_SCALE_CHECK:-1}
PROFILE=${BENCH_PROFILE:-release}
TOOLS=" ${BENCH_TOOLS:-raw rawimages regferry skopeo} "
STORAGE=${BENCH_STORAGE:-tmpfs}
THREADS=${BENCH_THREADS:-$(nproc)}
LINK_LATENCY_MS=${BENCH_LINK_LATENCY_MS:-40}
LINK_BANDWIDTH=${BENCH_LINK_BANDWIDTH:-50000000}
SLOW_REPOS=${BENCH_SLOW_REPOS:-4}
SLOW_TAGS=${BENCH_SLOW_TAGS:-4}
SLOW_BASE_SIZE=${BENCH_SLOW_BASE_SIZE:-33554432}
SLOW_REPO_SIZE=${BENCH_SLOW_REPO_SIZE:-16777216}
SLOW_TAG_SIZE=${BENCH_SLOW_TAG_SIZE:-8388608}
FANOUT_SOURCE_BPS=${BENCH_FANOUT_SOURCE_BPS:-10000000}

scripts/deps.sh --bench
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  echo "building regferry and the test kit (profile $PROFILE)…" >&2
  cargo build --locked --profile "$PROFILE" --workspace --bins -q
fi
case "$PROFILE" in dev) bindir=target/debug ;; *) bindir=target/$PROFILE ;; esac
regferry="${BENCH_REGFERRY:-$root/$bindir/regferry}"
kit="$root/$bindir/regferry-testkit"

stamp=$(date +%Y%m%d-%H%M%S)
out="$root/bench/out/$stamp"
mkdir -p "$out"
work=$(mktemp -d /tmp/regferry-bench.XXXXXX)
case "$STORAGE" in
  tmpfs) storage=$(mktemp -d /dev/shm/regferry-bench.XXXXXX) ;;
  disk) storage=$(mktemp -d "${TMPDIR:-/tmp}/regferry-bench-storage.XXXXXX") ;;
  *) echo "BENCH_STORAGE must be tmpfs or disk" >&2; exit 2 ;;
esac
serve_pids=()

stop_registries() {
  local pid
  for pid in "${serve_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${serve_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  serve_pids=()
}
cleanup() {
  stop_registries
  rm -rf "$work" "$storage"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_registries NAME COUNT [SERVE ARGS…]: start COUNT registries (with
# `regferry-testkit serve` options such as --tls); their URL (the front's,
# if any), the registry's own URL, log, pid and storage are then
# ${NAME}_url[i], ${NAME}_backend[i], ${NAME}_log[i], ${NAME}_pid[i],
# ${NAME}_storage[i]; with --tls the CA file and a cert dir are ${NAME}_ca, ${NAME}_certdir.
start_registries() {
  local name=$1 count=$2 file="$work/$1.registries" i
  shift 2
  TMPDIR="$storage" "$kit" serve --count "$count" "$@" >"$file" 2>"$work/$name.serve.log" &
  serve_pids+=($!)
  for _ in $(seq 300); do grep -q '^READY=1' "$file" 2>/dev/null && break; sleep 0.1; done
  grep -q '^READY=1' "$file" || { cat "$work/$name.serve.log" >&2; echo "registries did not start" >&2; exit 1; }
  for i in $(seq 0 $((count - 1))); do
    eval "${name}_url[$i]=\$(sed -n 's/^REGISTRY_${i}=//p' \"\$file\")"
    eval "${name}_log[$i]=\$(sed -n 's/^REGISTRY_${i}_LOG=//p' \"\$file\")"
    eval "${name}_pid[$i]=\$(sed -n 's/^REGISTRY_${i}_PID=//p' \"\$file\")"
    eval "${name}_storage[$i]=\$(sed -n 's/^REGISTRY_${i}_STORAGE=//p' \"\$file\")"
    eval "${name}_backend[$i]=\$(sed -n 's/^REGISTRY_${i}_BACKEND=//p' \"\$file\")"
  done
  eval "${name}_ca=\$(sed -n 's/^CA=//p' \"\$file\")"
  eval "${name}_certdir=\$(sed -n 's/^CERT_DIR=//p' \"\$file\")"
}

access_count() { grep -a -c -E '"(GET|HEAD|POST|PUT|PATCH|DELETE) [^"]* HTTP/1\.1" [0-9]{3} ' "$1" || true; }
rchar() { awk '/^rchar:/ {print $2}' "/proc/$1/io"; }
# CPU seconds (user+system) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hostport() { echo "${1#*://}"; }

printf 'scenario\trep\ttool\tphase\texit\twall_s\tuser_s\tsys_s\trss_kib\treq_src\treq_dst\tbytes_to_dst\tsrc_cpu_s\tdst_cpu_s\n' >"$out/results.tsv"
ticks=$(getconf CLK_TCK)

# measure SCENARIO REP TOOL PHASE SRC_LOG SRC_PID DST_LOG DST_PID -- COMMAND...
# Runs COMMAND under /usr/bin/time and records wall/CPU time, peak RSS, the
# requests each registry logged meanwhile, the bytes the destination
# registry read (its rchar: request bodies and headers) and registry CPU.
measure() {
  local scenario=$1 rep=$2 tool=$3 phase=$4 slog=$5 spid=$6 dlog=$7 dpid=$8
  shift 9
  local id="$scenario-$rep-$tool-$phase"
  sync
  sleep 0.5
  local s0 d0 r0 sc0 dc0 code=0
  s0=$(wc -l <"$slog"); d0=$(wc -l <"$dlog"); r0=$(rchar "$dpid")
  sc0=$(cpu_ticks "$spid"); dc0=$(cpu_ticks "$dpid")
  /usr/bin/time -f '%e %U %S %M' -o "$out/$id.time" "$@" >"$out/$id.stdout" 2>"$out/$id.stderr" || code=$?
  sleep 0.3
  tail -n +$((s0 + 1)) "$slog" >"$out/$id.src.log"
  tail -n +$((d0 + 1)) "$dlog" >"$out/$id.dst.log"
  local r1 sc1 dc1
  r1=$(rchar "$dpid"); sc1=$(cpu_ticks "$spid"); dc1=$(cpu_ticks "$dpid")
  # shellcheck disable=SC2046
  set -- $(tail -n 1 "$out/$id.time")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$rep" "$tool" "$phase" "$code" "$1" "$2" "$3" "$4" \
    "$(access_count "$out/$id.src.log")" "$(access_count "$out/$id.dst.log")" "$((r1 - r0))" \
    "$(awk -v a="$sc0" -v b="$sc1" -v t="$ticks" 'BEGIN{printf "%.2f", (b-a)/t}')" \
    "$(awk -v a="$dc0" -v b="$dc1" -v t="$ticks" 'BEGIN{printf "%.2f", (b-a)/t}')" >>"$out/results.tsv"
  printf '  %-9s %-8s %-8s %6.2fs wall, exit %s\n' "$scenario" "$tool" "$phase" "$1" "$code" >&2
  if [ "$code" != 0 ]; then
    echo "  $tool $phase failed (exit $code); last lines of its stderr:" >&2
    tail -n 5 "$out/$id.stderr" >&2
  fi
}

# skopeo_yaml SRC_URL FILE [CERT_DIR [LIST_URL]]: a `skopeo sync --src yaml`
# file naming every source repository (listed at LIST_URL, default SRC_URL);
# with CERT_DIR, TLS is verified against the CA in it.
skopeo_yaml() {
  local src=$1 file=$2 certdir=${3:-} list=${4:-$1}
  {
    echo "$(hostport "$src"):"
    if [ -n "$certdir" ]; then
      echo "  tls-verify: true"
      echo "  cert-dir: $certdir"
    else
      echo "  tls-verify: false"
    fi
    echo "  images:"
    curl -fsS "$list/v2/_catalog?n=1000" | tr -d '{}[]"' | sed 's/^repositories://' | tr ',' '\n' | sed '/^$/d; s/^/    /; s/$/: []/'
  } >"$file"
}

# run_set SCENARIO REP SRC DSTS NOOP: raw, regferry and skopeo onto the
# fresh destinations ${DSTS}_*[0..2], rawimages onto ${DSTS}_*[3] when
# started; NOOP=1 adds the no-op resyncs.
run_set() {
  local scenario=$1 rep=$2 s=$3 d=$4 noop=$5
  local surl slog spid
  eval "surl=\${${s}_url[0]}; slog=\${${s}_log[0]}; spid=\${${s}_pid[0]}"
  local rurl rlog rpid kurl klog kpid aurl alog apid
  eval "rurl=\${${d}_url[0]}; rlog=\${${d}_log[0]}; rpid=\${${d}_pid[0]}"
  eval "kurl=\${${d}_url[1]}; klog=\${${d}_log[1]}; kpid=\${${d}_pid[1]}"
  eval "aurl=\${${d}_url[2]}; alog=\${${d}_log[2]}; apid=\${${d}_pid[2]}"
  local iurl ilog ipid
  eval "iurl=\${${d}_url[3]:-}; ilog=\${${d}_log[3]:-}; ipid=\${${d}_pid[3]:-}"
  local state="$work/$scenario-$rep.db" yaml="$work/$scenario.skopeo.yaml"
  skopeo_yaml "$surl" "$yaml"
  local skopeo_cmd=(skopeo sync --all --preserve-digests --src yaml --dest docker --dest-tls-verify=false "$yaml" "$(hostport "$kurl")/mirror")
  local regferry_cmd=("$regferry" -q migrate --from "$surl" --to "$rurl/mirror" --state "$state" --concurrency "$CONCURRENCY" --json)

  if [[ $TOOLS == *" raw "* ]]; then
    measure "$scenario" "$rep" raw initial "$slog" "$spid" "$alog" "$apid" -- \
      "$kit" rawcopy --from "$surl" --to "$aurl" --list "$out/$scenario.blobs.tsv" --concurrency "$CONCURRENCY"
  fi
  if [[ $TOOLS == *" rawimages "* ]] && [ -n "$iurl" ]; then
    measure "$scenario" "$rep" rawimages initial "$slog" "$spid" "$ilog" "$ipid" -- \
      "$kit" rawimages --from "$surl" --to "$iurl" --dest-prefix mirror --list "$out/$scenario.blobs.tsv" --concurrency "$CONCURRENCY"
  fi
  if [[ $TOOLS == *" regferry "* ]]; then
    measure "$scenario" "$rep" regferry initial "$slog" "$spid" "$rlog" "$rpid" -- "${regferry_cmd[@]}"
  fi
  if [[ $TOOLS == *" skopeo "* ]]; then
    measure "$scenario" "$rep" skopeo initial "$slog" "$spid" "$klog" "$kpid" -- "${skopeo_cmd[@]}"
  fi
  if [ "$noop" = 1 ] && [[ $TOOLS == *" regferry "* ]]; then
    measure "$scenario" "$rep" regferry noop "$slog" "$spid" "$rlog" "$rpid" -- "${regferry_cmd[@]}"
  fi
  if [ "$noop" = 1 ] && [[ $TOOLS == *" skopeo "* ]]; then
    measure "$scenario" "$rep" skopeo noop "$slog" "$spid" "$klog" "$kpid" -- "${skopeo_cmd[@]}"
  fi
  # Untimed: prove each copy complete (every tag, same digest and media type).
  [[ $TOOLS == *" regferry "* ]] && check_copy "$scenario-$rep-regferry" "$surl" "$rurl"
  [[ $TOOLS == *" rawimages "* ]] && [ -n "$iurl" ] && check_copy "$scenario-$rep-rawimages" "$surl" "$iurl"
  [[ $TOOLS == *" skopeo "* ]] && check_copy "$scenario-$rep-skopeo" "$surl" "$kurl" --basename
  return 0
}

# check_copy ID SRC_URL DST_URL [--basename]: compare the copy under mirror/
# with the source tag by tag into $out/ID.compare; a difference is printed.
check_copy() {
  local id=$1 src=$2 dst=$3
  shift 3
  "$kit" compare --from "$src" --to "$dst" --dest-prefix mirror "$@" >"$out/$id.compare" 2>&1 \
    || { echo "$id: the copy differs from the source:" >&2; cat "$out/$id.compare" >&2; }
}

# run_threads_set SCENARIO REP SRC DSTS: regferry --threads 1, regferry
# --threads $THREADS and skopeo, initial copies from ${SRC} onto the fresh
# destinations ${DSTS}_*[0..2] (over TLS when they were started with --tls);
# with a fourth destination, also the raw copy onto it (what the link delivers).
run_threads_set() {
  local scenario=$1 rep=$2 s=$3 d=$4
  local surl sback slog spid sca scertdir dca dcertdir
  eval "surl=\${${s}_url[0]}; sback=\${${s}_backend[0]}; slog=\${${s}_log[0]}; spid=\${${s}_pid[0]}"
  eval "sca=\${${s}_ca:-}; scertdir=\${${s}_certdir:-}; dca=\${${d}_ca:-}; dcertdir=\${${d}_certdir:-}"
  local state="$work/$scenario-$rep" yaml="$work/$scenario.skopeo.yaml" tls_args=() i
  [ -n "$sca" ] && tls_args+=(--from-ca "$sca")
  [ -n "$dca" ] && tls_args+=(--to-ca "$dca")
  local tools=(regferry-1t "regferry-${THREADS}t" skopeo) indexes=(0 1 2)
  if eval "[ -n \"\${${d}_url[3]:-}\" ]"; then tools+=(raw); indexes+=(3); fi
  for i in "${indexes[@]}"; do
    local tool=${tools[$i]} durl dback dlog dpid
    eval "durl=\${${d}_url[$i]}; dback=\${${d}_backend[$i]}; dlog=\${${d}_log[$i]}; dpid=\${${d}_pid[$i]}"
    case "$tool" in
      regferry-*)
        local threads=${tool#regferry-}
        threads=${threads%t}
        measure "$scenario" "$rep" "$tool" initial "$slog" "$spid" "$dlog" "$dpid" -- \
          "$regferry" -q --threads "$threads" migrate --from "$surl" --to "$durl/mirror" --state "$state-$tool.db" \
          --concurrency "$CONCURRENCY" --json "${tls_args[@]}"
        "$kit" compare --from "$sback" --to "$dback" --dest-prefix mirror >"$out/$scenario-$rep-$tool.compare" 2>&1 \
          || { echo "$tool's copy differs from the source:" >&2; cat "$out/$scenario-$rep-$tool.compare" >&2; }
        ;;
      skopeo)
        skopeo_yaml "$surl" "$yaml" "$scertdir" "$sback"
        local dest_tls=(--dest-tls-verify=false)
        [ -n "$dcertdir" ] && dest_tls=(--dest-cert-dir "$dcertdir")
        measure "$scenario" "$rep" skopeo initial "$slog" "$spid" "$dlog" "$dpid" -- \
          skopeo sync --all --preserve-digests --src yaml --dest docker "${dest_tls[@]}" "$yaml" "$(hostport "$durl")/mirror"
        "$kit" compare --from "$sback" --to "$dback" --dest-prefix mirror --basename >"$out/$scenario-$rep-skopeo.compare" 2>&1 \
          || { echo "skopeo's copy differs from the source:" >&2; cat "$out/$scenario-$rep-skopeo.compare" >&2; }
        ;;
      raw)
        measure "$scenario" "$rep" raw initial "$slog" "$spid" "$dlog" "$dpid" -- \
          "$kit" rawcopy --from "$sback" --to "$durl" --list "$out/$scenario.blobs.tsv" --concurrency "$CONCURRENCY"
        ;;
    esac
  done
}

params="$out/params.env"
{
  echo "machine_cpus=$(nproc)"
  echo "machine_cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "machine_mem_mib=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
  echo "loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "regferry_version=$("$regferry" --version)"
  echo "skopeo_version=$(skopeo --version)"
  echo "registry_version=$(/usr/bin/docker-registry --version 2>/dev/null | head -n 1)"
  echo "profile=$PROFILE"
  echo "concurrency=$CONCURRENCY"
  echo "threads=$THREADS"
  echo "storage=$STORAGE ($(df --output=fstype "$storage" | tail -n 1 | tr -d ' ') at $storage)"
  echo "repeat=$REPEAT"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty')"
} >"$params"

# The workers scenario: one large pass of one policy, by 1 daemon and then by
# $WORKERS daemons on one PostgreSQL (each to a fresh destination, each
# worker capped at $BENCH_WORKER_BPS, standing in for one machine's NIC);
# then $WORKERS daemons again, and a kill -9 of the one holding the pass.
run_workers() {
  local n=${WORKERS:-3} bps=${BENCH_WORKER_BPS:-2MiB} lease=${BENCH_LEASE:-3s}
  local repos=${BENCH_WORKER_REPOS:-8} tags=${BENCH_WORKER_TAGS:-12} tag_size=${BENCH_WORKER_TAG_SIZE:-1048576}
  local psql=/usr/lib/postgresql/15/bin/psql pgfile="$work/pg.env" pg_url i
  echo "== workers: 1 vs $n daemons on one PostgreSQL, $repos repositories × $tags tags, $bps per worker ==" >&2
  "$kit" postgres >"$pgfile" 2>"$work/pg.log" &
  serve_pids+=($!)
  for _ in $(seq 300); do grep -q '^READY=1' "$pgfile" 2>/dev/null && break; sleep 0.1; done
  pg_url=$(sed -n 's/^POSTGRES_URL=//p' "$pgfile")
  [ -n "$pg_url" ] || { cat "$work/pg.log" >&2; echo "postgres did not start" >&2; exit 1; }
  start_registries wsrc 1
  start_registries wdst 3
  "$kit" fill --registry "${wsrc_url[0]}" --prefix work --repos "$repos" --tags "$tags" --base-layers 2 \
    --base-size 2097152 --repo-size 1048576 --tag-size "$tag_size" --multi-arch-every 0 --no-signatures | tee "$out/workers.fill" >&2
  "$kit" rawcopy-plan --from "${wsrc_url[0]}" >"$out/workers.blobs.tsv"
  local distinct
  distinct=$(awk -F'\t' '{s += $3} END {print s + 0}' "$out/workers.blobs.tsv")
  # (Errors while the first daemon is still creating the schema are expected.)
  sql() { "$psql" "$pg_url" -tAq -c "$1" 2>/dev/null || true; }
  # workers_pass NAME DST COUNT [KILL]: run policy NAME to DST with COUNT daemons until its
  # first execution ends; prints the pass's seconds (from the execution's own timestamps).
  workers_pass() {
    local name=$1 dst=$2 count=$3 kill=${4:-} dir="$work/policies-$1" pids=() k status
    mkdir -p "$dir"
    printf 'name: %s\nsource: { registry: "%s" }\ndestinations:\n  - registry: "%s"\n    bytes_per_second: %s\ntrigger: { interval: 24h }\nconcurrency: 4\n' \
      "$name" "${wsrc_url[0]}" "$dst" "$bps" >"$dir/p.yaml"
    for k in $(seq 1 "$count"); do
      RUST_LOG=regferry=info "$regferry" daemon --policies "$dir" --state "$pg_url" --listen "127.0.0.1:0" \
        --worker-id "$name-w$k" --lease-time "$lease" 2>"$out/workers-$name-w$k.log" &
      pids+=($!)
      serve_pids+=($!)
    done
    if [ -n "$kill" ]; then
      for _ in $(seq 600); do
        [ "$(sql "SELECT count(*) FROM tasks t JOIN executions e ON e.id = t.execution_id WHERE e.policy = '$name' AND t.status = 'succeeded'")" -ge 3 ] 2>/dev/null && break
        sleep 0.1
      done
      local victim t0 t1 holder=""
      victim=$(sql "SELECT holder FROM leases l JOIN executions e ON e.id = l.execution_id WHERE e.policy = '$name'")
      for k in $(seq 1 "$count"); do [ "$name-w$k" = "$victim" ] && kill -KILL "${pids[$((k - 1))]}"; done
      t0=$(date +%s.%N)
      for _ in $(seq 1200); do
        holder=$(sql "SELECT holder FROM leases l JOIN executions e ON e.id = l.execution_id WHERE e.policy = '$name' AND l.holder <> '$victim' AND l.expires_at >= (extract(epoch from now()) * 1000)::bigint")
        [ -n "$holder" ] && break
        sleep 0.05
      done
      t1=$(date +%s.%N)
      echo "handover_victim=$victim handover_to=$holder handover_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')" >"$work/handover"
    fi
    for _ in $(seq 3000); do
      status=$(sql "SELECT status FROM executions WHERE policy = '$name' ORDER BY id LIMIT 1")
      [ -n "$status" ] && [ "$status" != running ] && break
      sleep 0.1
    done
    for k in "${pids[@]}"; do kill -TERM "$k" 2>/dev/null || true; done
    for k in "${pids[@]}"; do wait "$k" 2>/dev/null || true; done
    sql "SELECT status, round((finished_at - started_at) / 1000.0, 2) FROM executions WHERE policy = '$name' ORDER BY id LIMIT 1" >"$work/pass-$name"
    sql "SELECT worker, count(*) FROM tasks t JOIN executions e ON e.id = t.execution_id WHERE e.policy = '$name' GROUP BY worker ORDER BY worker" \
      | tr '\n' ' ' >"$work/share-$name"
  }
  workers_pass one "${wdst_url[0]}" 1
  workers_pass many "${wdst_url[1]}" "$n"
  workers_pass killed "${wdst_url[2]}" "$n" kill
  local one many killed
  one=$(cut -d'|' -f2 "$work/pass-one"); many=$(cut -d'|' -f2 "$work/pass-many"); killed=$(cut -d'|' -f2 "$work/pass-killed")
  {
    echo "workers: one pass of $repos × $tags tags, $distinct distinct blob bytes, each worker capped at $bps"
    echo "  1 worker:       $(cut -d'|' -f1 "$work/pass-one"), ${one} s, $(awk -v b="$distinct" -v t="$one" 'BEGIN{printf "%.2f", b/t/1048576}') MiB/s"
    echo "  $n workers:      $(cut -d'|' -f1 "$work/pass-many"), ${many} s, $(awk -v b="$distinct" -v t="$many" 'BEGIN{printf "%.2f", b/t/1048576}') MiB/s; tasks per worker: $(cat "$work/share-many")"
    echo "  throughput ratio ($n vs 1): $(awk -v a="$one" -v b="$many" 'BEGIN{printf "%.2f", a/b}') x (goal: >= 2.5 x for 3 workers)"
    echo "  kill -9 of the pass's holder mid-pass ($n workers, --lease-time $lease): $(cat "$work/handover")"
    echo "    that pass: $(cut -d'|' -f1 "$work/pass-killed"), ${killed} s; tasks per worker: $(cat "$work/share-killed")"
  } | tee "$out/workers.txt"
  { echo "workers_n=$n"; echo "workers_bps=$bps"; echo "workers_distinct_bytes=$distinct"; echo "workers_one_s=$one"; echo "workers_many_s=$many"; cat "$work/handover"; } >>"$params"
  stop_registries
}

# The cost scenarios (issue #21): each writes $out/<scenario>.txt.
# Pulls, HEADs and 429s are what regferry's --json reports for the source
# (checked against the fault proxy's view in tests/integration/quota.rs).
source_usage() { jq -r '[.registries[] | select(.role == "source")][0] | "\(.pulls) pulls, \(.heads) HEADs, \(.throttled) answered 429"' "$1"; }
start_proxy() {
  local file="$work/$1.proxy"
  shift
  "$kit" proxy "$@" >"$file" 2>"$file.log" &
  serve_pids+=($!)
  for _ in $(seq 100); do grep -q '^PROXY=' "$file" 2>/dev/null && break; sleep 0.1; done
  sed -n 's/^PROXY=//p' "$file"
}
timed_migrate() { # JSON-FILE ARGS…: runs regferry migrate --json, prints "exit wall_s"
  local json=$1 t0 t1 code=0
  shift
  t0=$(date +%s.%N)
  "$regferry" -q migrate --json "$@" >"$json" 2>"$json.log" || code=$?
  t1=$(date +%s.%N)
  echo "$code $(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }")"
}
run_quota() {
  local repos=${BENCH_QUOTA_REPOS:-3} tags=${BENCH_QUOTA_TAGS:-10} purl r
  echo "== quota: $repos × $tags tags, a source with a quota of $QUOTA pulls ==" >&2
  start_registries qsrc 1
  start_registries qdst 1
  "$kit" fill --registry "${qsrc_url[0]}" --prefix quota --repos "$repos" --tags "$tags" --base-layers 1 --base-size 65536 \
    --repo-size 16384 --tag-size 4096 --multi-arch-every 0 --no-signatures >&2
  purl=$(start_proxy quota --upstream "${qsrc_url[0]}" --pull-quota "$QUOTA" --quota-window-secs 3600)
  {
    echo "quota: $((repos * tags)) tags to copy, a quota of $QUOTA pulls (reserve 10)"
    r=$(timed_migrate "$out/quota-1.json" --from "$purl" --to "${qdst_url[0]}/mirror" --state "$work/quota-1.db")
    echo "  first pass:  exit ${r%% *} in ${r#* }s, $(source_usage "$out/quota-1.json"), $(jq -r '.counts.tags_copied' "$out/quota-1.json") copied, $(jq -r '.failures | length' "$out/quota-1.json") waiting for the quota"
    r=$(timed_migrate "$out/quota-2.json" --from "$purl" --to "${qdst_url[0]}/mirror" --state "$work/quota-2.db")
    echo "  second pass: exit ${r%% *} in ${r#* }s, $(source_usage "$out/quota-2.json") (quota at its reserve)"
  } | tee "$out/quota.txt" >&2
  stop_registries
}
run_platforms() {
  local repos=${BENCH_PLATFORM_REPOS:-5} tags=${BENCH_PLATFORM_TAGS:-10} r
  echo "== platforms: $repos × $tags multi-arch tags, --platform linux/amd64 (rewrite) ==" >&2
  start_registries psrc 1
  start_registries pdst 1
  "$kit" fill --registry "${psrc_url[0]}" --prefix plat --repos "$repos" --tags "$tags" --base-layers 1 --base-size 65536 \
    --repo-size 16384 --tag-size 4096 --multi-arch-every 1 --no-signatures >&2
  {
    echo "platforms: $((repos * tags)) two-platform indexes, narrowed to linux/amd64"
    r=$(timed_migrate "$out/platforms-1.json" --from "${psrc_url[0]}" --to "${pdst_url[0]}/mirror" --state "$work/platforms.db" --platform linux/amd64)
    echo "  initial copy: exit ${r%% *} in ${r#* }s, $(source_usage "$out/platforms-1.json")"
    r=$(timed_migrate "$out/platforms-2.json" --from "${psrc_url[0]}" --to "${pdst_url[0]}/mirror" --state "$work/platforms.db" --platform linux/amd64)
    echo "  no-op pass:   exit ${r%% *} in ${r#* }s, $(source_usage "$out/platforms-2.json") (manifest GETs must be 0)"
  } | tee "$out/platforms.txt" >&2
  stop_registries
}
# policy_run JSON-FILE NAME SOURCE SPOOL_BUDGET DESTINATION…: one pass of a
# policy from SOURCE to the destinations (run --json), prints "exit wall_s".
policy_run() {
  local json=$1 name=$2 source=$3 budget=$4 dir="$work/policies-$2" t0 t1 code=0 d
  shift 4
  mkdir -p "$dir"
  {
    echo "name: $name"; echo "source: { registry: '$source' }"; echo "destinations:"
    for d in "$@"; do echo "  - registry: '$d'"; done
    echo "concurrency: $CONCURRENCY"; echo "spool_budget: '$budget'"
  } >"$dir/p.yaml"
  t0=$(date +%s.%N)
  "$regferry" -q run --policies "$dir" --state "$work/$name.db" --json >"$json" 2>"$json.log" || code=$?
  t1=$(date +%s.%N)
  echo "$code $(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }")"
}
# Blob bytes / manifest GETs the pass's reports say were asked of the source (all destinations).
source_bytes() { jq '[.[0].destinations[].report.registries[]? | select(.role == "source") | .blob_bytes_read] | add // 0' "$1"; }
source_pulls() { jq '[.[0].destinations[].report.registries[]? | select(.role == "source") | .pulls] | add // 0' "$1"; }
# fanout_line LABEL JSON "EXIT WALL" DISTINCT [ONE_WALL]: one line of the fanout report.
fanout_line() {
  local bytes
  bytes=$(source_bytes "$2")
  printf '  %-34s exit %s in %ss, source blob bytes read %s (%s× distinct), %s pulls%s\n' "$1" "${3%% *}" "${3#* }" "$bytes" \
    "$(awk "BEGIN { printf \"%.2f\", $bytes / $4 }")" "$(source_pulls "$2")" \
    "${5:+; wall $(awk "BEGIN { printf \"%.2f\", ${3#* } / $5 }")× one destination}"
}
# fanout_set TAG SOURCE DISTINCT: 1 destination, N with the spool, N with
# spool_budget 0, each on fresh registries, then compared with the source.
fanout_set() {
  local tag=$1 source=$2 distinct=$3 n=$FANOUT i r1 r many=() unspooled=()
  start_registries "fdst_$tag" $((1 + 2 * n))
  local -n urls="fdst_${tag}_url"
  for i in $(seq 1 "$n"); do many+=("${urls[$i]}"); unspooled+=("${urls[$((n + i))]}"); done
  r1=$(policy_run "$out/fanout-$tag-1.json" "$tag-one" "$source" 2GiB "${urls[0]}")
  fanout_line "1 destination:" "$out/fanout-$tag-1.json" "$r1" "$distinct"
  r=$(policy_run "$out/fanout-$tag-$n.json" "$tag-many" "$source" 2GiB "${many[@]}")
  fanout_line "$n destinations (spool 2GiB):" "$out/fanout-$tag-$n.json" "$r" "$distinct" "${r1#* }"
  r=$(policy_run "$out/fanout-$tag-$n-nospool.json" "$tag-nospool" "$source" 0 "${unspooled[@]}")
  fanout_line "$n destinations (spool_budget 0):" "$out/fanout-$tag-$n-nospool.json" "$r" "$distinct" "${r1#* }"
  for i in $(seq 0 $((2 * n))); do
    "$kit" compare --from "${fsrc_url[0]}" --to "${urls[$i]}" >"$out/fanout-$tag-compare-$i" 2>&1 \
      || echo "  destination $i differs from the source (see fanout-$tag-compare-$i)"
  done
  kill -TERM "${serve_pids[-1]}"; wait "${serve_pids[-1]}" 2>/dev/null || true; unset 'serve_pids[-1]'
}
run_fanout() {
  local distinct slow
  echo "== fanout: $REPOS × $TAGS tags to 1 and to $FANOUT destinations of one policy ==" >&2
  start_registries fsrc 1
  "$kit" fill --registry "${fsrc_url[0]}" --prefix bench --repos "$REPOS" --tags "$TAGS" --base-layers "$BASE_LAYERS" \
    --base-size "$BASE_SIZE" --repo-size "$REPO_SIZE" --tag-size "$TAG_SIZE" --multi-arch-every "$MULTI_ARCH_EVERY" >&2
  "$kit" rawcopy-plan --from "${fsrc_url[0]}" >"$out/fanout.blobs.tsv"
  distinct=$(awk -F'\t' '{s += $3} END {print s + 0}' "$out/fanout.blobs.tsv")
  slow=$(start_proxy fanout --upstream "${fsrc_url[0]}" --bandwidth "$FANOUT_SOURCE_BPS")
  {
    echo "fanout: $REPOS × $TAGS tags, $distinct distinct blob bytes at the source"
    echo " source on loopback:"
    fanout_set local "${fsrc_url[0]}" "$distinct"
    echo " source behind a link of $FANOUT_SOURCE_BPS B/s:"
    fanout_set slow "$slow" "$distinct"
  } | tee "$out/fanout.txt" >&2
  stop_registries
}

for scenario in "${scenarios[@]}"; do
  case "$scenario" in
  fanout) run_fanout ;;
  quota) run_quota ;;
  platforms) run_platforms ;;
  main)
    echo "== main: $REPOS repositories × $TAGS tags ==" >&2
    start_registries msrc 1
    "$kit" fill --registry "${msrc_url[0]}" --prefix bench --repos "$REPOS" --tags "$TAGS" --base-layers "$BASE_LAYERS" \
      --base-size "$BASE_SIZE" --repo-size "$REPO_SIZE" --tag-size "$TAG_SIZE" --multi-arch-every "$MULTI_ARCH_EVERY" \
      | tee "$out/main.fill" >&2
    "$kit" rawcopy-plan --from "${msrc_url[0]}" >"$out/main.blobs.tsv"
    {
      echo "main_repos=$REPOS"; echo "main_tags_per_repo=$TAGS"; echo "main_base_layers=$BASE_LAYERS"
      echo "main_base_size=$BASE_SIZE"; echo "main_repo_size=$REPO_SIZE"; echo "main_tag_size=$TAG_SIZE"
      echo "main_multi_arch_every=$MULTI_ARCH_EVERY"
      echo "main_fill=$(cat "$out/main.fill")"
      echo "main_distinct_blobs=$(wc -l <"$out/main.blobs.tsv")"
      echo "main_distinct_bytes=$(awk -F'\t' '{s += $3} END {print s + 0}' "$out/main.blobs.tsv")"
    } >>"$params"
    for rep in $(seq 1 "$REPEAT"); do
      start_registries "mdst" 4
      run_set main "$rep" msrc mdst 1
      # stop this repetition's destinations (the source stays)
      kill -TERM "${serve_pids[-1]}"; wait "${serve_pids[-1]}" 2>/dev/null || true; unset 'serve_pids[-1]'
    done
    stop_registries
    ;;
  big)
    echo "== big: one $BIG_SIZE-byte layer ==" >&2
    start_registries bsrc 1
    "$kit" fill --registry "${bsrc_url[0]}" --prefix big --big-layer "$BIG_SIZE" | tee "$out/big.fill" >&2
    "$kit" rawcopy-plan --from "${bsrc_url[0]}" >"$out/big.blobs.tsv"
    { echo "big_size=$BIG_SIZE"; echo "big_distinct_bytes=$(awk -F'\t' '{s += $3} END {print s + 0}' "$out/big.blobs.tsv")"; } >>"$params"
    start_registries bdst 3
    run_set big 1 bsrc bdst 0
    stop_registries
    ;;
  scale)
    echo "== scale: $SCALE_REPOS repositories × $SCALE_TAGS tags ==" >&2
    start_registries ssrc 1
    start_registries sdst 2
    if [ "$SCALE_SAME_IMAGE" = 1 ]; then
      "$kit" fill --registry "${ssrc_url[0]}" --prefix scale --repos "$SCALE_REPOS" --tags "$SCALE_TAGS" --same-image \
        | tee "$out/scale.fill" >&2
    else
      "$kit" fill --registry "${ssrc_url[0]}" --prefix scale --repos "$SCALE_REPOS" --tags "$SCALE_TAGS" --base-layers 1 \
        --base-size 4096 --repo-size 1024 --tag-size 512 --multi-arch-every 3 --no-signatures | tee "$out/scale.fill" >&2
    fi
    { echo "scale_repos=$SCALE_REPOS"; echo "scale_tags_per_repo=$SCALE_TAGS"; echo "scale_fill=$(cat "$out/scale.fill")"; } >>"$params"
    state="$work/scale.db"
    src="${ssrc_url[0]}"
    dst="${sdst_url[0]}"
    rf=("$regferry" -q migrate --from "$src" --to "$dst/mirror" --state "$state" --concurrency "$CONCURRENCY" --json)
    measure scale 1 regferry initial "${ssrc_log[0]}" "${ssrc_pid[0]}" "${sdst_log[0]}" "${sdst_pid[0]}" -- "${rf[@]}"
    # 40% of the repositories, then all of them: the difference is what
    # 60% more tags cost (both past the warm-up of SQLite's page cache).
    part=()
    for i in $(seq 0 $(( SCALE_REPOS * 2 / 5 - 1 ))); do part+=(--repo "scale/repo-$i"); done
    if [ ${#part[@]} -gt 0 ]; then
      measure scale 1 regferry noop-part "${ssrc_log[0]}" "${ssrc_pid[0]}" "${sdst_log[0]}" "${sdst_pid[0]}" -- "${rf[@]}" "${part[@]}"
    fi
    measure scale 1 regferry noop "${ssrc_log[0]}" "${ssrc_pid[0]}" "${sdst_log[0]}" "${sdst_pid[0]}" -- "${rf[@]}"
    # Immutable tags: a tag the destination lists is not compared (listings only).
    measure scale 1 regferry noop-immutable "${ssrc_log[0]}" "${ssrc_pid[0]}" "${sdst_log[0]}" "${sdst_pid[0]}" -- "${rf[@]}" --missing-only
    if [ "$SCALE_SKOPEO" = 1 ]; then
      skopeo_yaml "$src" "$work/scale.skopeo.yaml"
      sk=(skopeo sync --all --preserve-digests --src yaml --dest docker --dest-tls-verify=false "$work/scale.skopeo.yaml" "$(hostport "${sdst_url[1]}")/mirror")
      measure scale 1 skopeo initial "${ssrc_log[0]}" "${ssrc_pid[0]}" "${sdst_log[1]}" "${sdst_pid[1]}" -- "${sk[@]}"
      measure scale 1 skopeo noop "${ssrc_log[0]}" "${ssrc_pid[0]}" "${sdst_log[1]}" "${sdst_pid[1]}" -- "${sk[@]}"
    fi
    if [ "$SCALE_CHECK" = 1 ]; then
      # Timed, as a minimal client's no-op (listings and two HEADs per tag,
      # nothing else), and the proof that regferry's copy is complete.
      measure scale 1 rawheads noop "${ssrc_log[0]}" "${ssrc_pid[0]}" "${sdst_log[0]}" "${sdst_pid[0]}" -- \
        "$kit" compare --from "$src" --to "$dst" --dest-prefix mirror
      cp "$out/scale-1-rawheads-noop.stdout" "$out/scale-1-regferry.compare"
    fi
    stop_registries
    ;;
  tls)
    echo "== tls: $REPOS repositories × $TAGS tags, nginx TLS in front of both registries ==" >&2
    start_registries tsrc 1 --tls
    "$kit" fill --registry "${tsrc_backend[0]}" --prefix bench --repos "$REPOS" --tags "$TAGS" --base-layers "$BASE_LAYERS" \
      --base-size "$BASE_SIZE" --repo-size "$REPO_SIZE" --tag-size "$TAG_SIZE" --multi-arch-every "$MULTI_ARCH_EVERY" \
      | tee "$out/tls.fill" >&2
    "$kit" rawcopy-plan --from "${tsrc_backend[0]}" >"$out/tls.blobs.tsv"
    {
      echo "tls_fill=$(cat "$out/tls.fill")"
      echo "tls_distinct_bytes=$(awk -F'\t' '{s += $3} END {print s + 0}' "$out/tls.blobs.tsv")"
    } >>"$params"
    for rep in $(seq 1 "$REPEAT"); do
      start_registries tdst 3 --tls
      run_threads_set tls "$rep" tsrc tdst
      kill -TERM "${serve_pids[-1]}"; wait "${serve_pids[-1]}" 2>/dev/null || true; unset 'serve_pids[-1]'
    done
    stop_registries
    ;;
  slow)
    echo "== slow: $SLOW_REPOS repositories × $SLOW_TAGS tags to a destination behind ${LINK_LATENCY_MS} ms, $LINK_BANDWIDTH B/s ==" >&2
    start_registries lsrc 1
    "$kit" fill --registry "${lsrc_url[0]}" --prefix slow --repos "$SLOW_REPOS" --tags "$SLOW_TAGS" --base-layers 2 \
      --base-size "$SLOW_BASE_SIZE" --repo-size "$SLOW_REPO_SIZE" --tag-size "$SLOW_TAG_SIZE" --multi-arch-every 0 \
      | tee "$out/slow.fill" >&2
    "$kit" rawcopy-plan --from "${lsrc_url[0]}" >"$out/slow.blobs.tsv"
    {
      echo "slow_fill=$(cat "$out/slow.fill")"
      echo "slow_latency_ms=$LINK_LATENCY_MS"; echo "slow_bandwidth=$LINK_BANDWIDTH"
      echo "slow_distinct_bytes=$(awk -F'\t' '{s += $3} END {print s + 0}' "$out/slow.blobs.tsv")"
    } >>"$params"
    for rep in $(seq 1 "$REPEAT"); do
      start_registries ldst 4 --link-latency-ms "$LINK_LATENCY_MS" --link-bandwidth "$LINK_BANDWIDTH"
      run_threads_set slow "$rep" lsrc ldst
      kill -TERM "${serve_pids[-1]}"; wait "${serve_pids[-1]}" 2>/dev/null || true; unset 'serve_pids[-1]'
    done
    stop_registries
    ;;
  workers)
    run_workers
    ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
done
echo "loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$params"

if [ "${scenarios[*]}" = workers ] || [ "${scenarios[*]}" = quota ] || [ "${scenarios[*]}" = platforms ] || [ "${scenarios[*]}" = fanout ]; then
  cp "$out/${scenarios[0]}.txt" "$out/report.txt"
else
  "$kit" bench-report --dir "$out" | tee "$out/report.txt"
fi
ln -sfn "$stamp" "$root/bench/out/latest"
echo "raw results: bench/out/$stamp/ (also bench/out/latest)" >&2
