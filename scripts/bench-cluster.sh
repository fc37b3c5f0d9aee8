#!/usr/bin/env bash
# The cluster-mode baseline: a 3-member etcd on loopback and its lock API, measured with
# dflockd-bench --etcd (the same keep-alive HTTP/1.1 loop as dflockd-bench --http).
#
#   scripts/bench-cluster.sh                     # about a minute on 2 cores
#   REPEATS=1 BENCH_SECONDS=2 scripts/bench-cluster.sh   # quicker, noisier
#
# What it measures (every figure printed with how it was obtained):
#   1. acquire+release/s (one op = /v3/lock/lock + /v3/lock/unlock with the worker's lease) at
#      1 and 10 workers, each worker on its own lock name;
#   2. hand-offs/s: 10 workers contending on one name (--shared-key), each op one hand-off.
# Every worker talks to the etcd leader, as a dflockd client talks to the leader.
#
# Then, in the same run, dflockd's side (scripts/bench-cluster-dflockd.py): a single node and a
# 3-member dflockd cluster at 1, 10 and 50 workers, and failover time over 20 leader kills.
# Needs Debian's etcd-server (apt-get install etcd-server etcd-client).
#
# Knobs (environment): BENCH_SECONDS (per run, default 5), REPEATS (median of, default 3),
# ETCD_BASE_PORT (default 23790: clients on +1..+3, peers on +11..+13). Everything binds
# 127.0.0.1; every process started here is stopped by its PID on exit.
set -euo pipefail

cd "$(dirname "$0")/.."

BENCH_SECONDS=${BENCH_SECONDS:-5}
REPEATS=${REPEATS:-3}
ETCD_BASE_PORT=${ETCD_BASE_PORT:-23790}
BENCH=${CARGO_TARGET_DIR:-target}/release/dflockd-bench
HOST=127.0.0.1
STEP_TIMEOUT=180

WORK=$(mktemp -d)
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '%s\n' "$*" >&2; }
die() { log "bench-cluster.sh: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

numeric() {
    local v
    for v in "$@"; do
        [[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "expected a number, got '$v'"
    done
}

median() {
    numeric "$@"
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}

calc() { awk "BEGIN {printf \"%.${2:-1}f\", $1}"; }

command -v etcd >/dev/null || die "etcd is not installed (apt-get install etcd-server etcd-client)"
command -v etcdctl >/dev/null || die "etcdctl is not installed (apt-get install etcd-client)"
if [[ ! -x $BENCH ]]; then
    log "building dflockd-bench (release)"
    cargo build --release --quiet --bin dflockd-bench
fi
[[ -x ${BENCH%-bench} ]] || cargo build --release --quiet --bin dflockd

# ---------------------------------------------------------------------------------------------
# A 3-member etcd on loopback
# ---------------------------------------------------------------------------------------------

CLUSTER=""
ENDPOINTS=""
for i in 1 2 3; do
    client=$((ETCD_BASE_PORT + i))
    peer=$((ETCD_BASE_PORT + 10 + i))
    for p in "$client" "$peer"; do
        port_open "$p" && die "port $p is in use (set ETCD_BASE_PORT)"
    done
    CLUSTER+="${CLUSTER:+,}e$i=http://$HOST:$peer"
    ENDPOINTS+="${ENDPOINTS:+,}$HOST:$client"
done
for i in 1 2 3; do
    client=$((ETCD_BASE_PORT + i))
    peer=$((ETCD_BASE_PORT + 10 + i))
    etcd --name "e$i" --data-dir "$WORK/e$i" \
        --listen-client-urls "http://$HOST:$client" --advertise-client-urls "http://$HOST:$client" \
        --listen-peer-urls "http://$HOST:$peer" --initial-advertise-peer-urls "http://$HOST:$peer" \
        --initial-cluster "$CLUSTER" --initial-cluster-state new \
        --initial-cluster-token "bench-cluster-$$" >"$WORK/e$i.log" 2>&1 &
    PIDS+=("$!")
done

healthy=0
for _ in $(seq 1 100); do
    if etcdctl --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1; then
        healthy=1
        break
    fi
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "an etcd member exited; see its log in $WORK"
    done
    sleep 0.2
done
((healthy)) || die "the etcd cluster did not become healthy"

LEADER=$(etcdctl --endpoints "$ENDPOINTS" endpoint status -w json |
    python3 -c 'import json,sys
for s in json.load(sys.stdin):
    if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
        print(s["Endpoint"])')
[[ -n $LEADER ]] || die "no etcd leader found"
log "etcd $(etcd --version | awk '/etcd Version/ {print $3}'): 3 members on $ENDPOINTS, leader $LEADER"

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

bench() { timeout --kill-after=5 "$STEP_TIMEOUT" "$BENCH" --etcd "$LEADER" "$@"; }

# Rounds per worker that make one run last about BENCH_SECONDS, from a short calibration run.
rounds_for() {
    local workers=$1 probe ops
    shift
    probe=$(bench --workers "$workers" --rounds $((500 / workers + 20)) --warmup 10 "$@" |
        awk '/throughput:/ {print $2}')
    numeric "$probe"
    ops=$(calc "$probe * $BENCH_SECONDS / $workers" 0)
    echo $((ops < 50 ? 50 : ops))
}

declare -A OPS P50 P99
measure() {
    local name=$1 workers=$2 rounds runs=() p50s=() p99s=() out
    shift 2
    rounds=$(rounds_for "$workers" "$@")
    log "$name: $REPEATS x dflockd-bench --etcd $LEADER --workers $workers --rounds $rounds --warmup 20 $*"
    for _ in $(seq 1 "$REPEATS"); do
        out=$(bench --workers "$workers" --rounds "$rounds" --warmup 20 "$@")
        grep -q 'errors    : 0' <<<"$out" || die "$name: failed operations: $(grep errors <<<"$out")"
        runs+=("$(awk '/throughput:/ {print $2}' <<<"$out")")
        p50s+=("$(awk '/p50/ {print $3}' <<<"$out")")
        p99s+=("$(awk '/p99/ {print $3}' <<<"$out")")
    done
    OPS[$name]=$(median "${runs[@]}")
    P50[$name]=$(median "${p50s[@]}")
    P99[$name]=$(median "${p99s[@]}")
}

measure "1 worker" 1
measure "10 workers" 10
measure "hand-offs, 10 workers, one name" 10 --shared-key

printf '\netcd lock API, 3 members on loopback (median of %s runs of ~%ss):\n' "$REPEATS" "$BENCH_SECONDS"
for name in "1 worker" "10 workers" "hand-offs, 10 workers, one name"; do
    printf '  %-34s %10s ops/s   p50 %s ms   p99 %s ms\n' "$name" "${OPS[$name]}" "${P50[$name]}" "${P99[$name]}"
done
printf '  (one op = /v3/lock/lock + /v3/lock/unlock)\n'
measure "50 workers" 50
printf '  %-34s %10s ops/s   p50 %s ms   p99 %s ms\n' "50 workers" "${OPS[50 workers]}" "${P50[50 workers]}" "${P99[50 workers]}"

TARGET=${CARGO_TARGET_DIR:-target} python3 scripts/bench-cluster-dflockd.py
