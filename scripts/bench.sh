#!/usr/bin/env bash
# Reproducible performance comparison for the closing note: dflockd against redis on loopback.
#
#   scripts/bench.sh                 # everything, about 3 minutes on 2 cores
#   REPEATS=1 BENCH_SECONDS=2 scripts/bench.sh   # quicker, noisier
#
# What it measures (every number is printed with how it was obtained):
#   1. Lock throughput, --workers 1/10/50, one op = acquire + release (two requests), against
#      redis-benchmark PING_INLINE with the same client count. Ratio = ours / (redis / 2): the
#      share of redis's bare request rate we reach per request. Target: >= 0.8.
#   2. Pipelined throughput: --pipeline 16 --workers 10, requests/s. Target: >= 150000.
#   3. An extra redis baseline: SET NX PX (acquire) and a Lua compare-and-delete (release).
#   4. Server memory: VmRSS per idle connection and per held lock, each on a fresh server.
#
# Knobs (environment): BENCH_SECONDS (per run, default 5), REPEATS (median of, default 3),
# IDLE_CONNS (default 10000), HOLD_LOCKS (default 1000000), SKIP_REDIS=1, DFLOCKD_BIN (another
# server binary taking --host/--port/--max-locks, e.g. the Go upstream), DFLOCKD_PORT,
# REDIS_PORT. Everything binds 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."

BENCH_SECONDS=${BENCH_SECONDS:-5}
REPEATS=${REPEATS:-3}
IDLE_CONNS=${IDLE_CONNS:-10000}
HOLD_LOCKS=${HOLD_LOCKS:-1000000}
SKIP_REDIS=${SKIP_REDIS:-0}
DFLOCKD_BIN=${DFLOCKD_BIN:-target/release/dflockd}
BENCH=target/release/dflockd-bench
HOST=127.0.0.1
# Upper bound for any single command; the script as a whole stays within a few minutes.
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
die() { log "bench.sh: $*"; exit 1; }

# Forgets a PID we stopped ourselves.
forget() {
    local keep=() pid
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$1" ]] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# First port at or above $1 that nothing listens on.
free_port() {
    local port=$1
    while port_open "$port"; do
        port=$((port + 1))
        ((port < $1 + 200)) || die "no free port near $1"
    done
    echo "$port"
}

wait_port() {
    local i
    for i in $(seq 1 100); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Dies unless every argument is a number (a failed run leaves an empty field).
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

# Floating point helpers (awk, so no bc dependency).
calc() { awk "BEGIN {printf \"%.${2:-1}f\", $1}"; }
meets() { awk "BEGIN {exit !($1 >= $2)}" && echo "ok" || echo "BELOW TARGET"; }

# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------

ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
((IDLE_CONNS + 1000 <= $(ulimit -n))) || die "ulimit -n $(ulimit -n) is too low for IDLE_CONNS=$IDLE_CONNS"

if [[ $SKIP_REDIS != 1 ]] && ! command -v redis-server >/dev/null; then
    log "installing redis-server and redis-tools"
    # RUNLEVEL=1 keeps the package's init script from starting a system-wide redis.
    apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi

log "building (cargo build --release --bins)"
cargo build --release --bins --quiet
[[ -x $DFLOCKD_BIN ]] || die "$DFLOCKD_BIN is missing"

DFLOCKD_PORT=$(free_port "${DFLOCKD_PORT:-16388}")
REDIS_PORT=$(free_port "${REDIS_PORT:-16379}")
SERVER_PID=""

start_dflockd() {
    "$DFLOCKD_BIN" --host "$HOST" --port "$DFLOCKD_PORT" --max-locks $((HOLD_LOCKS + 100000)) \
        >"$WORK/dflockd.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_port "$DFLOCKD_PORT" "$SERVER_PID" || {
        cat "$WORK/dflockd.log" >&2
        die "$DFLOCKD_BIN did not start listening on $HOST:$DFLOCKD_PORT"
    }
}

stop_dflockd() { stop "$SERVER_PID"; }

bench() { timeout --kill-after=5 "$STEP_TIMEOUT" "$BENCH" --servers "$HOST:$DFLOCKD_PORT" "$@"; }

# ---------------------------------------------------------------------------------------------
# 1. Request throughput against redis PING_INLINE
# ---------------------------------------------------------------------------------------------

start_dflockd
if [[ $SKIP_REDIS != 1 ]]; then
    redis-server --bind "$HOST" --port "$REDIS_PORT" --save '' --appendonly no \
        --daemonize no --logfile "$WORK/redis.log" &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_port "$REDIS_PORT" "$REDIS_PID" || die "redis-server did not start on $HOST:$REDIS_PORT"
fi

redis_rps() {
    timeout --kill-after=5 "$STEP_TIMEOUT" redis-benchmark -h "$HOST" -p "$REDIS_PORT" -q "$@" |
        tr '\r' '\n' | sed -nE 's/.*[: ]([0-9.]+) requests per second.*/\1/p' | tail -n 1
}

# Rounds per worker that make one run last about BENCH_SECONDS, from a short calibration run.
rounds_for() {
    local workers=$1 probe ops
    shift
    probe=$(bench --workers "$workers" --rounds $((20000 / workers + 100)) --warmup 100 "$@" |
        awk '/throughput:/ {print $2}')
    numeric "$probe"
    ops=$(calc "$probe * $BENCH_SECONDS / $workers" 0)
    echo $((ops < 1000 ? 1000 : ops))
}

declare -A OURS REDIS P50 P99
for W in 1 10 50; do
    rounds=$(rounds_for "$W")
    log "workers=$W: $REPEATS x dflockd-bench --workers $W --rounds $rounds --warmup 100"
    runs=() p50s=() p99s=()
    for _ in $(seq 1 "$REPEATS"); do
        out=$(bench --workers "$W" --rounds "$rounds" --warmup 100)
        runs+=("$(awk '/throughput:/ {print $2}' <<<"$out")")
        p50s+=("$(awk '/p50/ {print $3}' <<<"$out")")
        p99s+=("$(awk '/p99/ {print $3}' <<<"$out")")
    done
    OURS[$W]=$(median "${runs[@]}")
    P50[$W]=$(median "${p50s[@]}")
    P99[$W]=$(median "${p99s[@]}")
    if [[ $SKIP_REDIS != 1 ]]; then
        probe=$(redis_rps -t ping_inline -c "$W" -n 20000)
        numeric "$probe"
        n=$(calc "$probe * $BENCH_SECONDS" 0)
        log "workers=$W: $REPEATS x redis-benchmark -t ping_inline -c $W -n $n -q"
        runs=()
        for _ in $(seq 1 "$REPEATS"); do
            runs+=("$(redis_rps -t ping_inline -c "$W" -n "$n")")
        done
        REDIS[$W]=$(median "${runs[@]}")
    fi
done

# ---------------------------------------------------------------------------------------------
# 2. Pipelined requests/s
# ---------------------------------------------------------------------------------------------

rounds=$(rounds_for 10 --pipeline 16)
log "pipeline: $REPEATS x dflockd-bench --pipeline 16 --workers 10 --rounds $rounds --warmup 100"
runs=()
for _ in $(seq 1 "$REPEATS"); do
    runs+=("$(bench --pipeline 16 --workers 10 --rounds "$rounds" --warmup 100 | awk '/requests\/s:/ {print $2}')")
done
PIPELINED=$(median "${runs[@]}")

# ---------------------------------------------------------------------------------------------
# 3. Redis lock baseline: SET NX PX acquire, Lua compare-and-delete release (50 clients)
# ---------------------------------------------------------------------------------------------

CAD="if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
if [[ $SKIP_REDIS != 1 ]]; then
    n=$(calc "${REDIS[50]} * $BENCH_SECONDS / 2" 0)
    log "redis lock baseline: SET NX PX and EVAL compare-and-delete, -c 50 -n $n"
    SETNX=$(redis_rps -c 50 -n "$n" -r 1000000 SET 'lock:__rand_int__' tok NX PX 10000)
    CADEL=$(redis_rps -c 50 -n "$n" -r 1000000 EVAL "$CAD" 1 'lock:__rand_int__' tok)
    numeric "$SETNX" "$CADEL"
    REDIS_PAIRS=$(calc "1 / (1 / $SETNX + 1 / $CADEL)")
    stop "$REDIS_PID"
fi
stop_dflockd

# ---------------------------------------------------------------------------------------------
# 4. Memory: VmRSS per idle connection and per held lock, each on a fresh server
# ---------------------------------------------------------------------------------------------

# Runs a memory helper in the background, waits for its report line, and sets HELPER_RSS to
# the server's VmRSS (kB) while the helper holds its connections.
rss_with_helper() {
    local pattern=$1 helper
    shift
    timeout --kill-after=5 "$STEP_TIMEOUT" "$BENCH" --servers "$HOST:$DFLOCKD_PORT" "$@" --hold-secs 0 \
        >"$WORK/helper.out" 2>&1 &
    helper=$!
    PIDS+=("$helper")
    for _ in $(seq 1 $((STEP_TIMEOUT * 10))); do
        grep -q "$pattern" "$WORK/helper.out" && break
        kill -0 "$helper" 2>/dev/null || { cat "$WORK/helper.out" >&2; die "memory helper failed: $*"; }
        sleep 0.1
    done
    grep -q "$pattern" "$WORK/helper.out" || die "memory helper timed out: $*"
    sleep 1
    log "$(cat "$WORK/helper.out")"
    HELPER_RSS=$(rss_kb "$SERVER_PID")
    stop "$helper"
}

start_dflockd
RSS_START=$(rss_kb "$SERVER_PID")
numeric "$RSS_START"
log "memory: $IDLE_CONNS idle connections"
rss_with_helper '^idle:' --idle-connections "$IDLE_CONNS"
RSS_IDLE=$HELPER_RSS
stop_dflockd

start_dflockd
RSS_BEFORE_HOLD=$(rss_kb "$SERVER_PID")
log "memory: $HOLD_LOCKS held locks"
rss_with_helper '^hold:' --hold "$HOLD_LOCKS" --workers 4 --pipeline 64 --lease 600
RSS_HOLD=$HELPER_RSS
stop_dflockd

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

echo
echo "dflockd benchmark: $(timeout 5 "$DFLOCKD_BIN" --version 2>/dev/null || echo "$DFLOCKD_BIN"), $(nproc) cores, $(uname -sr)"
echo "median of $REPEATS runs of ~${BENCH_SECONDS}s; one op = l + r (two requests); 127.0.0.1"
echo
printf '%-8s %14s %10s %10s %16s %12s %8s\n' workers "dflockd ops/s" "p50 ms" "p99 ms" "redis PING rps" "ops/(rps/2)" "≥ 0.8"
for W in 1 10 50; do
    if [[ $SKIP_REDIS != 1 ]]; then
        ratio=$(calc "${OURS[$W]} / (${REDIS[$W]} / 2)" 3)
        printf '%-8s %14s %10s %10s %16s %12s %8s\n' "$W" "${OURS[$W]}" "${P50[$W]}" "${P99[$W]}" \
            "${REDIS[$W]}" "$ratio" "$(meets "$ratio" 0.8)"
    else
        printf '%-8s %14s %10s %10s %16s %12s %8s\n' "$W" "${OURS[$W]}" "${P50[$W]}" "${P99[$W]}" - - -
    fi
done
echo
echo "pipelined (--pipeline 16 --workers 10): $PIPELINED requests/s (target ≥ 150000: $(meets "$PIPELINED" 150000))"
if [[ $SKIP_REDIS != 1 ]]; then
    echo "redis lock baseline (-c 50): SET NX PX $SETNX rps, EVAL compare-and-delete $CADEL rps," \
        "≈ $REDIS_PAIRS acquire+release pairs/s (dflockd, 50 workers: ${OURS[50]} ops/s)"
fi
echo
echo "server RSS at start: $RSS_START kB"
echo "idle connections: $IDLE_CONNS → $RSS_IDLE kB," \
    "$(calc "($RSS_IDLE - $RSS_START) * 1024 / $IDLE_CONNS" 0) bytes per connection"
echo "held locks: $HOLD_LOCKS (on 4 connections) → $RSS_HOLD kB," \
    "$(calc "($RSS_HOLD - $RSS_BEFORE_HOLD) * 1024 / $HOLD_LOCKS" 0) bytes per lock"
