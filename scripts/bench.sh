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
#   5. Other paths, on a fresh server started with --http-port: lock ops over the HTTP REST
#      API (dflockd-bench --http) and through the client library (--client) at 1 and 10
#      workers, and signal fan-out, 1 publisher to FANOUT_SUBSCRIBERS subscribers (--fanout),
#      once unpaced (--pipeline 8) and once paced at FANOUT_RATE signals/s.
#   6. The engine's targets (issue #11), on one server with --http-port, redis beside it,
#      dflockd and redis runs interleaved: 1 worker own key unpipelined, ENGINE_REPEATS runs
#      (median and slowest/median) with the server's context switches per acquire+release
#      (voluntary + nonvoluntary over every thread in /proc/PID/task, before and after each
#      run); 10 and 50 workers; --shared-key at 10 workers against own key, beside redis's
#      own hand-off chain through the same client (--redis-handoff: a token passed along one
#      list with BLPOP + RPUSH, against a list per worker); --http at 10
#      workers against the line protocol, and its p99 (these three: ENGINE_REPEATS runs each,
#      interleaved). Ratios are against redis PING_INLINE
#      rps / 2 with the same client count. Then the same client against both servers at 1, 10
#      and 50 workers (dflockd-bench --redis-ping drives redis: two inline PINGs per op), with
#      each server's context switches and CPU time per op, so that the clients' difference is
#      not measured.
#
# Knobs (environment): BENCH_SECONDS (per run, default 5), REPEATS (median of, default 3),
# IDLE_CONNS (default 10000), HOLD_LOCKS (default 1000000), SKIP_REDIS=1, DFLOCKD_BIN (another
# server binary taking --host/--port/--max-locks, e.g. the Go upstream), DFLOCKD_PORT,
# REDIS_PORT. Everything binds 127.0.0.1; every process started here is stopped on exit.
# Parts can be skipped: SKIP_TCP=1 (1-3), SKIP_MEMORY=1 (4), SKIP_HTTP=1, SKIP_CLIENT=1,
# SKIP_FANOUT=1 (5), SKIP_ENGINE=1 (6); HTTP_PORT, FANOUT_SUBSCRIBERS (default 100),
# FANOUT_RATE (default 1000), ENGINE_REPEATS (default 5). BUSY_LOOPS=N runs N shell busy loops
# at normal priority for the whole run (the "two busy loops beside it" condition).
# ACCEPT=pin|reuseport starts the server with that thread model (DFLOCKD_BENCH_ACCEPT) and
# THREADS=N with N runtime threads (DFLOCKD_THREADS, i.e. --threads; spec/ARCHITECTURE.md, "The runtime"),
# SPIN_US=N with runtime threads polling N µs before they sleep (DFLOCKD_SPIN_US, i.e. --spin-us; 0 = never).
# HANDOFF_SPIN_US=N with a thread polling N µs after one of its connections was answered on a
# contended key (DFLOCKD_BENCH_HANDOFF_SPIN_US; 0 = never).
# CLIENT_SPIN_US=N (default 50; 0 skips it): part 6 runs its checks a second time with a client
# that polls N µs before it sleeps (dflockd-bench --client-spin), against dflockd and, through
# --redis-ping, against redis: a sleeping client's own wake-up can set the pace (on a virtual
# CPU that halts when idle), and this shows what the servers do when it does not.
# ASYNC_CLIENT=1 (default; 0 skips it): part 6 runs its 10-worker checks once more through
# smol's executor and reactor (dflockd-bench --io async, one thread), a common Rust async stack.
#
#   SKIP_TCP=1 SKIP_MEMORY=1 REPEATS=1 scripts/bench.sh   # only the HTTP/client/fan-out part
#   ONLY_ENGINE=1 BUSY_LOOPS=2 scripts/bench.sh            # only part 6, with two busy loops
set -euo pipefail

cd "$(dirname "$0")/.."

BENCH_SECONDS=${BENCH_SECONDS:-5}
REPEATS=${REPEATS:-3}
IDLE_CONNS=${IDLE_CONNS:-10000}
HOLD_LOCKS=${HOLD_LOCKS:-1000000}
SKIP_REDIS=${SKIP_REDIS:-0}
SKIP_TCP=${SKIP_TCP:-0}
SKIP_MEMORY=${SKIP_MEMORY:-0}
SKIP_HTTP=${SKIP_HTTP:-0}
SKIP_CLIENT=${SKIP_CLIENT:-0}
SKIP_FANOUT=${SKIP_FANOUT:-0}
SKIP_ENGINE=${SKIP_ENGINE:-0}
if [[ ${ONLY_ENGINE:-0} == 1 ]]; then
    SKIP_TCP=1 SKIP_MEMORY=1 SKIP_HTTP=1 SKIP_CLIENT=1 SKIP_FANOUT=1
fi
ENGINE_REPEATS=${ENGINE_REPEATS:-5}
BUSY_LOOPS=${BUSY_LOOPS:-0}
ACCEPT=${ACCEPT:-}
THREADS=${THREADS:-}
SPIN_US=${SPIN_US:-}
HANDOFF_SPIN_US=${HANDOFF_SPIN_US:-}
CLIENT_SPIN_US=${CLIENT_SPIN_US:-50}
ASYNC_CLIENT=${ASYNC_CLIENT:-1}
FANOUT_SUBSCRIBERS=${FANOUT_SUBSCRIBERS:-100}
FANOUT_RATE=${FANOUT_RATE:-1000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
DFLOCKD_BIN=${DFLOCKD_BIN:-$TARGET_DIR/release/dflockd}
BENCH=$TARGET_DIR/release/dflockd-bench
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

if [[ $SKIP_TCP == 1 && $SKIP_ENGINE == 1 ]]; then
    SKIP_REDIS=1
fi
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
HTTP_PORT=$(free_port "${HTTP_PORT:-16390}")
SERVER_PID=""

# Extra arguments go to the server.
start_dflockd() {
    DFLOCKD_BENCH_ACCEPT=$ACCEPT DFLOCKD_THREADS=$THREADS DFLOCKD_SPIN_US=$SPIN_US \
        DFLOCKD_BENCH_HANDOFF_SPIN_US=$HANDOFF_SPIN_US \
        "$DFLOCKD_BIN" --host "$HOST" --port "$DFLOCKD_PORT" --max-locks $((HOLD_LOCKS + 100000)) "$@" \
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

for _ in $(seq 1 "$BUSY_LOOPS"); do
    bash -c 'while :; do :; done' &
    PIDS+=("$!")
done
((BUSY_LOOPS == 0)) || log "running $BUSY_LOOPS busy loops beside the benchmark"

start_redis() {
    redis-server --bind "$HOST" --port "$REDIS_PORT" --save '' --appendonly no \
        --daemonize no --logfile "$WORK/redis.log" &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_port "$REDIS_PORT" "$REDIS_PID" || die "redis-server did not start on $HOST:$REDIS_PORT"
}

redis_rps() {
    timeout --kill-after=5 "$STEP_TIMEOUT" redis-benchmark -h "$HOST" -p "$REDIS_PORT" -q "$@" |
        tr '\r' '\n' | sed -nE 's/.*[: ]([0-9.]+) requests per second.*/\1/p' | tail -n 1
}

# ---------------------------------------------------------------------------------------------
# 1. Request throughput against redis PING_INLINE
# ---------------------------------------------------------------------------------------------

if [[ $SKIP_TCP != 1 ]]; then
start_dflockd
if [[ $SKIP_REDIS != 1 ]]; then
    start_redis
fi

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
fi # SKIP_TCP

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

if [[ $SKIP_MEMORY != 1 ]]; then
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
fi # SKIP_MEMORY

# ---------------------------------------------------------------------------------------------
# 5. Other paths: HTTP REST API, the client library, signal fan-out (one fresh server)
# ---------------------------------------------------------------------------------------------

# Runs the bench REPEATS times with the given arguments; sets RUNS[i] to each run's output.
repeat_bench() {
    local i
    RUNS=()
    for i in $(seq 1 "$REPEATS"); do
        RUNS+=("$(bench "$@")")
    done
}

# Median over RUNS of field $2 of the first line matching the awk pattern $1.
runs_median() {
    local out values=()
    for out in "${RUNS[@]}"; do
        values+=("$(awk "$1 {gsub(/,/, \"\", \$$2); print \$$2; exit}" <<<"$out")")
    done
    median "${values[@]}"
}

# Largest value over RUNS, same arguments.
runs_max() {
    local out values=()
    for out in "${RUNS[@]}"; do
        values+=("$(awk "$1 {gsub(/,/, \"\", \$$2); print \$$2; exit}" <<<"$out")")
    done
    numeric "${values[@]}"
    printf '%s\n' "${values[@]}" | sort -g | tail -n 1
}

declare -A PATH_OPS PATH_P50 PATH_P99 PATH_ERR FAN
if [[ $SKIP_HTTP != 1 || $SKIP_CLIENT != 1 || $SKIP_FANOUT != 1 ]]; then
    start_dflockd --http-port "$HTTP_PORT"
    wait_port "$HTTP_PORT" "$SERVER_PID" || die "$DFLOCKD_BIN did not open its HTTP port $HOST:$HTTP_PORT"
    for W in 1 10; do
        if [[ $SKIP_HTTP != 1 ]]; then
            rounds=$(rounds_for "$W" --http "$HOST:$HTTP_PORT")
            log "http: $REPEATS x dflockd-bench --http $HOST:$HTTP_PORT --workers $W --rounds $rounds --warmup 100"
            repeat_bench --http "$HOST:$HTTP_PORT" --workers "$W" --rounds "$rounds" --warmup 100
            PATH_OPS[http,$W]=$(runs_median '/throughput:/' 2)
            PATH_P50[http,$W]=$(runs_median '/p50/' 3)
            PATH_P99[http,$W]=$(runs_median '/p99/' 3)
            PATH_ERR[http,$W]=$(runs_max '/errors/' 3)
        fi
        if [[ $SKIP_CLIENT != 1 ]]; then
            rounds=$(rounds_for "$W" --client)
            log "client: $REPEATS x dflockd-bench --client --workers $W --rounds $rounds --warmup 100"
            repeat_bench --client --workers "$W" --rounds "$rounds" --warmup 100
            PATH_OPS[client,$W]=$(runs_median '/throughput:/' 2)
            PATH_P50[client,$W]=$(runs_median '/p50/' 3)
            PATH_P99[client,$W]=$(runs_median '/p99/' 3)
            PATH_ERR[client,$W]=0
        fi
    done
    if [[ $SKIP_FANOUT != 1 ]]; then
        for pace in flood paced; do
            if [[ $pace == flood ]]; then
                args=(--pipeline 8)
            else
                args=(--rate "$FANOUT_RATE")
            fi
            log "fan-out: $REPEATS x dflockd-bench --fanout --subscribers $FANOUT_SUBSCRIBERS --duration $BENCH_SECONDS ${args[*]}"
            repeat_bench --fanout --subscribers "$FANOUT_SUBSCRIBERS" --duration "$BENCH_SECONDS" "${args[@]}"
            FAN[$pace,published]=$(runs_median '/published  :/' 5)
            FAN[$pace,deliveries]=$(runs_median '/deliveries :/' 4)
            FAN[$pace,received]=$(runs_median '/received   :/' 4)
            FAN[$pace,p50]=$(runs_median '/p50/' 3)
            FAN[$pace,p99]=$(runs_median '/p99/' 3)
            FAN[$pace,evicted]=$(runs_max '/evictions  :/' 3)
            FAN[$pace,missing]=$(runs_max '/missing    :/' 3)
        done
    fi
    stop_dflockd
fi


# ---------------------------------------------------------------------------------------------
# 6. The engine's targets (issue #11)
# ---------------------------------------------------------------------------------------------

# Voluntary + nonvoluntary context switches of every thread of process $1 so far.
ctx_switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ {s += $2} END {print s + 0}'
}

# CPU time (user + system) of process $1 so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat 2>/dev/null || echo 0; }

# Field $2 of the first line of $3 matching awk pattern $1.
field() { awk "$1 {gsub(/,/, \"\", \$$2); print \$$2; exit}" <<<"$3"; }

declare -A ENG
if [[ $SKIP_ENGINE != 1 ]]; then
    start_dflockd --http-port "$HTTP_PORT"
    wait_port "$HTTP_PORT" "$SERVER_PID" || die "$DFLOCKD_BIN did not open its HTTP port $HOST:$HTTP_PORT"
    start_redis
    log "engine: server threads: $(ls /proc/"$SERVER_PID"/task | wc -l)"
    ENG[load0]=$(cut -d' ' -f1-3 /proc/loadavg)

    # 1 worker: ENGINE_REPEATS runs each of dflockd and redis, interleaved.
    rounds=$(rounds_for 1)
    probe=$(redis_rps -t ping_inline -c 1 -n 20000)
    numeric "$probe"
    n=$(calc "$probe * $BENCH_SECONDS" 0)
    log "engine, 1 worker: $ENGINE_REPEATS x (dflockd-bench --workers 1 --rounds $rounds, redis -c 1 -n $n)"
    ours=() theirs=() ctx=()
    for _ in $(seq 1 "$ENGINE_REPEATS"); do
        before=$(ctx_switches "$SERVER_PID")
        out=$(bench --workers 1 --rounds "$rounds" --warmup 100)
        after=$(ctx_switches "$SERVER_PID")
        ours+=("$(field '/throughput:/' 2 "$out")")
        ctx+=("$(calc "($after - $before) / ($rounds + 100)" 3)")
        theirs+=("$(redis_rps -t ping_inline -c 1 -n "$n")")
    done
    log "engine, 1 worker: dflockd ops/s ${ours[*]}; redis rps ${theirs[*]}; ctx/op ${ctx[*]}"
    ENG[1,ours]=$(median "${ours[@]}")
    ENG[1,slowest]=$(printf '%s\n' "${ours[@]}" | sort -g | head -n 1)
    ENG[1,redis]=$(median "${theirs[@]}")
    pairs=()
    for i in "${!ours[@]}"; do
        pairs+=("$(calc "${ours[$i]} / (${theirs[$i]} / 2)" 3)")
    done
    ENG[1,pairs]="${pairs[*]}"
    ENG[1,pairmed]=$(median "${pairs[@]}")
    ENG[1,ctx]=$(median "${ctx[@]}")
    ENG[1,ctxmax]=$(printf '%s\n' "${ctx[@]}" | sort -g | tail -n 1)

    for W in 10 50; do
        rounds=$(rounds_for "$W")
        probe=$(redis_rps -t ping_inline -c "$W" -n 20000)
        numeric "$probe"
        n=$(calc "$probe * $BENCH_SECONDS" 0)
        log "engine, $W workers: $REPEATS x (dflockd-bench --workers $W --rounds $rounds, redis -c $W -n $n)"
        ours=() theirs=()
        for _ in $(seq 1 "$REPEATS"); do
            ours+=("$(field '/throughput:/' 2 "$(bench --workers "$W" --rounds "$rounds" --warmup 100)")")
            theirs+=("$(redis_rps -t ping_inline -c "$W" -n "$n")")
        done
        ENG[$W,ours]=$(median "${ours[@]}")
        ENG[$W,redis]=$(median "${theirs[@]}")
    done

    # The same comparison with the client held fixed: dflockd-bench drives redis-server too
    # (--redis-ping: two inline PINGs per op), so a difference between the two clients is not
    # what is measured. Context switches and CPU time of both servers per op, from /proc.
    tick_us=$(calc "1000000 / $(getconf CLK_TCK)" 3)
    for W in 1 10 50; do
        rounds=$(rounds_for "$W")
        log "engine, same client, $W workers: $REPEATS x (dflockd, redis --redis-ping) --rounds $rounds"
        ours=() theirs=() octx=() tctx=() ocpu=() tcpu=()
        ops=$(((rounds + 100) * W))
        for _ in $(seq 1 "$REPEATS"); do
            before=$(ctx_switches "$SERVER_PID") cpu0=$(cpu_ticks "$SERVER_PID")
            ours+=("$(field '/throughput:/' 2 "$(bench --workers "$W" --rounds "$rounds" --warmup 100)")")
            after=$(ctx_switches "$SERVER_PID") cpu1=$(cpu_ticks "$SERVER_PID")
            octx+=("$(calc "($after - $before) / $ops" 3)")
            ocpu+=("$(calc "($cpu1 - $cpu0) * $tick_us / $ops" 1)")
            before=$(ctx_switches "$REDIS_PID") cpu0=$(cpu_ticks "$REDIS_PID")
            theirs+=("$(field '/throughput:/' 2 "$(timeout --kill-after=5 "$STEP_TIMEOUT" "$BENCH" \
                --servers "$HOST:$REDIS_PORT" --redis-ping --workers "$W" --rounds "$rounds" --warmup 100)")")
            after=$(ctx_switches "$REDIS_PID") cpu1=$(cpu_ticks "$REDIS_PID")
            tctx+=("$(calc "($after - $before) / $ops" 3)")
            tcpu+=("$(calc "($cpu1 - $cpu0) * $tick_us / $ops" 1)")
        done
        ENG[$W,same]=$(median "${ours[@]}")
        ENG[$W,sameredis]=$(median "${theirs[@]}")
        ENG[$W,samectx]=$(median "${octx[@]}")
        ENG[$W,sameredisctx]=$(median "${tctx[@]}")
        ENG[$W,samecpu]=$(median "${ocpu[@]}")
        ENG[$W,samerediscpu]=$(median "${tcpu[@]}")
    done

    # One hot key against own keys, and HTTP against the line protocol, at 10 workers,
    # interleaved run by run with the own-key line-protocol runs they are compared with.
    # $1 prefixes the ENG keys it sets (own, shared, http, http99, line99); the rest are
    # extra dflockd-bench flags for every run.
    ten_worker_checks() {
        local prefix=$1 rounds shared_rounds http_rounds out
        shift
        rounds=$(rounds_for 10 "$@")
        shared_rounds=$(rounds_for 10 --shared-key "$@")
        http_rounds=$(rounds_for 10 --http "$HOST:$HTTP_PORT" "$@")
        # ENGINE_REPEATS, not REPEATS: a median of three HTTP runs moved by about ±0.05.
        log "engine, 10 workers $*: $ENGINE_REPEATS x (own key, --shared-key, --http)"
        local own=() shared=() http=() http99=() line99=() rown=() rshared=()
        for _ in $(seq 1 "$ENGINE_REPEATS"); do
            out=$(bench --workers 10 --rounds "$rounds" --warmup 100 "$@")
            own+=("$(field '/throughput:/' 2 "$out")")
            line99+=("$(field '/p99/' 3 "$out")")
            shared+=("$(field '/throughput:/' 2 "$(bench --workers 10 --shared-key --rounds "$shared_rounds" --warmup 100 "$@")")")
            out=$(bench --http "$HOST:$HTTP_PORT" --workers 10 --rounds "$http_rounds" --warmup 100 "$@")
            http+=("$(field '/throughput:/' 2 "$out")")
            http99+=("$(field '/p99/' 3 "$out")")
            # The peer's hand-off chain through the same client: a token passed with BLPOP and
            # RPUSH along one redis list, against a list and token per worker.
            rown+=("$(field '/throughput:/' 2 "$(timeout --kill-after=5 "$STEP_TIMEOUT" "$BENCH" \
                --servers "$HOST:$REDIS_PORT" --redis-handoff --workers 10 --rounds "$rounds" --warmup 100 "$@")")")
            rshared+=("$(field '/throughput:/' 2 "$(timeout --kill-after=5 "$STEP_TIMEOUT" "$BENCH" \
                --servers "$HOST:$REDIS_PORT" --redis-handoff --shared-key --workers 10 \
                --rounds "$shared_rounds" --warmup 100 "$@")")")
        done
        log "engine, 10 workers $*: own ${own[*]}; shared ${shared[*]}; http ${http[*]}; redis hand-off own ${rown[*]}, shared ${rshared[*]}"
        ENG[${prefix}own]=$(median "${own[@]}")
        ENG[${prefix}shared]=$(median "${shared[@]}")
        ENG[${prefix}http]=$(median "${http[@]}")
        ENG[${prefix}http99]=$(median "${http99[@]}")
        ENG[${prefix}line99]=$(median "${line99[@]}")
        ENG[${prefix}rown]=$(median "${rown[@]}")
        ENG[${prefix}rshared]=$(median "${rshared[@]}")
    }
    ten_worker_checks ""
    if ((CLIENT_SPIN_US > 0)); then
        # The same checks through a client that polls before it sleeps, so that its own
        # wake-up is not what sets the pace; the redis peer through the same client.
        spin=(--client-spin "$CLIENT_SPIN_US")
        rounds=$(rounds_for 1 "${spin[@]}")
        log "engine, polling client ($CLIENT_SPIN_US µs), 1 worker: $ENGINE_REPEATS x (dflockd, redis --redis-ping) --rounds $rounds"
        ours=() theirs=() ctx=()
        for _ in $(seq 1 "$ENGINE_REPEATS"); do
            before=$(ctx_switches "$SERVER_PID")
            ours+=("$(field '/throughput:/' 2 "$(bench --workers 1 --rounds "$rounds" --warmup 100 "${spin[@]}")")")
            after=$(ctx_switches "$SERVER_PID")
            ctx+=("$(calc "($after - $before) / ($rounds + 100)" 3)")
            theirs+=("$(field '/throughput:/' 2 "$(timeout --kill-after=5 "$STEP_TIMEOUT" "$BENCH" \
                --servers "$HOST:$REDIS_PORT" --redis-ping --workers 1 --rounds "$rounds" --warmup 100 "${spin[@]}")")")
        done
        log "engine, polling client, 1 worker: dflockd ops/s ${ours[*]}; redis ops/s ${theirs[*]}; ctx/op ${ctx[*]}"
        ENG[s1,ours]=$(median "${ours[@]}")
        ENG[s1,slowest]=$(printf '%s\n' "${ours[@]}" | sort -g | head -n 1)
        ENG[s1,redis]=$(median "${theirs[@]}")
        ENG[s1,ctx]=$(median "${ctx[@]}")
        ten_worker_checks "s," "${spin[@]}"
    fi
    if ((ASYNC_CLIENT > 0)); then
        # The 10-worker checks through smol's executor and async-io's reactor: not written for
        # this bench, and slower per request than the loop client, which is why it rarely
        # sleeps before its answer is back (spec/ARCHITECTURE.md, "What a sleeping client
        # measures").
        ten_worker_checks "a," --io async
    fi
    ENG[load1]=$(cut -d' ' -f1-3 /proc/loadavg)
    stop "$REDIS_PID"
    stop_dflockd
fi

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

echo
echo "dflockd benchmark: $(timeout 5 "$DFLOCKD_BIN" --version 2>/dev/null || echo "$DFLOCKD_BIN"), $(nproc) cores, $(uname -sr)"
echo "median of $REPEATS runs of ~${BENCH_SECONDS}s; one op = l + r (two requests); 127.0.0.1"
if [[ $SKIP_TCP != 1 ]]; then
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
fi # SKIP_TCP
if [[ $SKIP_MEMORY != 1 ]]; then
echo
echo "server RSS at start: $RSS_START kB"
echo "idle connections: $IDLE_CONNS → $RSS_IDLE kB," \
    "$(calc "($RSS_IDLE - $RSS_START) * 1024 / $IDLE_CONNS" 0) bytes per connection"
echo "held locks: $HOLD_LOCKS (on 4 connections) → $RSS_HOLD kB," \
    "$(calc "($RSS_HOLD - $RSS_BEFORE_HOLD) * 1024 / $HOLD_LOCKS" 0) bytes per lock"
fi # SKIP_MEMORY
if [[ $SKIP_HTTP != 1 || $SKIP_CLIENT != 1 ]]; then
    echo
    echo "other paths to the same core (fresh server with --http-port; one op = acquire + release):"
    printf '%-26s %8s %12s %10s %10s %8s %12s\n' path workers "ops/s" "p50 ms" "p99 ms" errors "vs line"
    for name in http client; do
        [[ $name == http && $SKIP_HTTP == 1 ]] && continue
        [[ $name == client && $SKIP_CLIENT == 1 ]] && continue
        label="HTTP REST (--http)"
        [[ $name == client ]] && label="client library (--client)"
        for W in 1 10; do
            vs=-
            [[ -n ${OURS[$W]:-} ]] && vs=$(calc "${PATH_OPS[$name,$W]} / ${OURS[$W]}" 2)
            printf '%-26s %8s %12s %10s %10s %8s %12s\n' "$label" "$W" "${PATH_OPS[$name,$W]}" \
                "${PATH_P50[$name,$W]}" "${PATH_P99[$name,$W]}" "${PATH_ERR[$name,$W]}" "$vs"
        done
    done
    echo "(vs line = ops/s over the line-protocol figure of table 1; errors = most failed ops in one run: non-2xx, acquire timeout)"
fi
if [[ $SKIP_FANOUT != 1 ]]; then
    echo
    echo "signal fan-out, 1 publisher → $FANOUT_SUBSCRIBERS subscribers (--fanout; evictions and missing: worst run):"
    printf '%-22s %12s %14s %14s %9s %9s %10s %9s\n' run "signals/s" "deliveries/s" "received/s" "p50 ms" "p99 ms" evictions missing
    for pace in flood paced; do
        label="unpaced, --pipeline 8"
        [[ $pace == paced ]] && label="--rate $FANOUT_RATE"
        printf '%-22s %12s %14s %14s %9s %9s %10s %9s\n' "$label" "${FAN[$pace,published]}" \
            "${FAN[$pace,deliveries]}" "${FAN[$pace,received]}" "${FAN[$pace,p50]}" "${FAN[$pace,p99]}" \
            "${FAN[$pace,evicted]}/$FANOUT_SUBSCRIBERS" "${FAN[$pace,missing]}"
    done
    echo "(deliveries = sum of the publisher's ok <n>; received = push lines read by subscribers;"
    echo " latency = publish to receipt; an eviction is a subscriber the server closed, §9.4)"
fi
if [[ $SKIP_ENGINE != 1 ]]; then
    r1=$(calc "${ENG[1,ours]} / (${ENG[1,redis]} / 2)" 3)
    spread=$(calc "${ENG[1,slowest]} / ${ENG[1,ours]}" 3)
    echo
    echo "engine targets (issue #11; one server with --http-port, accept model ${ACCEPT:-default}," \
        "${THREADS:-default} threads, spin ${SPIN_US:-default} µs," \
        "hand-off spin ${HANDOFF_SPIN_US:-default} µs," \
        "$BUSY_LOOPS busy loops beside it; dflockd and redis runs interleaved;" \
        "load average ${ENG[load0]} before, ${ENG[load1]} after):"
    printf '%-44s %12s %12s %10s %8s\n' check dflockd peer ratio target
    printf '%-44s %12s %12s %10s %8s\n' "1 worker, median of $ENGINE_REPEATS (ops/s vs PING/2)" \
        "${ENG[1,ours]}" "${ENG[1,redis]}" "$r1" "$( ((BUSY_LOOPS > 0)) && echo 0.8 || echo 1.0)"
    printf '%-44s %12s %12s %10s %8s\n' "1 worker, median of run-by-run ratios" "(${ENG[1,pairs]})" \
        "" "${ENG[1,pairmed]}" "$( ((BUSY_LOOPS > 0)) && echo 0.8 || echo 1.0)"
    printf '%-44s %12s %12s %10s %8s\n' "1 worker, slowest / median" "${ENG[1,slowest]}" \
        "${ENG[1,ours]}" "$spread" 0.7
    printf '%-44s %12s %12s %10s %8s\n' "1 worker, server ctx switches per l+r" "${ENG[1,ctx]}" \
        "(max ${ENG[1,ctxmax]})" - "≤ 2.2"
    for W in 10 50; do
        printf '%-44s %12s %12s %10s %8s\n' "$W workers (ops/s vs PING/2)" "${ENG[$W,ours]}" \
            "${ENG[$W,redis]}" "$(calc "${ENG[$W,ours]} / (${ENG[$W,redis]} / 2)" 3)" 1.15
    done
    printf '%-44s %12s %12s %10s %8s\n' "--shared-key, 10 workers (vs own key)" "${ENG[shared]}" \
        "${ENG[own]}" "$(calc "${ENG[shared]} / ${ENG[own]}" 3)" 0.7
    printf '%-44s %12s %12s %10s %8s\n' "  redis, one BLPOP/RPUSH list (vs own lists)" "${ENG[rshared]}" \
        "${ENG[rown]}" "$(calc "${ENG[rshared]} / ${ENG[rown]}" 3)" -
    printf '%-44s %12s %12s %10s %8s\n' "--http, 10 workers (vs line protocol)" "${ENG[http]}" \
        "${ENG[own]}" "$(calc "${ENG[http]} / ${ENG[own]}" 3)" 0.7
    printf '%-44s %12s %12s %10s %8s\n' "--http, 10 workers, p99 ms (line p99)" "${ENG[http99]}" \
        "${ENG[line99]}" - "≤ 1"
    echo
    echo "the same client against both servers (dflockd-bench; --redis-ping for redis: one op = two"
    echo "PINGs), so the ratio is the servers'; per op, context switches and CPU µs (user + system)"
    echo "of each whole server process, dflockd / redis:"
    printf '%-36s %10s %10s %7s %15s %13s\n' check dflockd redis ratio "ctx/op" "CPU µs/op"
    for W in 1 10 50; do
        printf '%-36s %10s %10s %7s %15s %13s\n' "$W workers, ops/s, same client" "${ENG[$W,same]}" \
            "${ENG[$W,sameredis]}" "$(calc "${ENG[$W,same]} / ${ENG[$W,sameredis]}" 3)" \
            "${ENG[$W,samectx]} / ${ENG[$W,sameredisctx]}" "${ENG[$W,samecpu]} / ${ENG[$W,samerediscpu]}"
    done
    # The 10-worker rows of a client other than the default one ($1: the prefix of its ENG keys).
    ten_worker_rows() {
        local p=$1
        printf '%-44s %12s %12s %10s %8s\n' "--shared-key, 10 workers (vs own key)" "${ENG[${p}shared]}" \
            "${ENG[${p}own]}" "$(calc "${ENG[${p}shared]} / ${ENG[${p}own]}" 3)" 0.7
        printf '%-44s %12s %12s %10s %8s\n' "  redis, one BLPOP/RPUSH list (vs own lists)" \
            "${ENG[${p}rshared]}" "${ENG[${p}rown]}" "$(calc "${ENG[${p}rshared]} / ${ENG[${p}rown]}" 3)" -
        printf '%-44s %12s %12s %10s %8s\n' "--http, 10 workers (vs line protocol)" "${ENG[${p}http]}" \
            "${ENG[${p}own]}" "$(calc "${ENG[${p}http]} / ${ENG[${p}own]}" 3)" 0.7
        printf '%-44s %12s %12s %10s %8s\n' "--http, 10 workers, p99 ms" "${ENG[${p}http99]}" "" - "≤ 1"
    }
    if ((CLIENT_SPIN_US > 0)); then
        echo
        echo "the checks again with a client that polls $CLIENT_SPIN_US µs before it sleeps (--client-spin;"
        echo "redis through the same client, --redis-ping), so that the client's own wake-up does not set the pace:"
        printf '%-44s %12s %12s %10s %8s\n' check dflockd peer ratio target
        printf '%-44s %12s %12s %10s %8s\n' "1 worker, median of $ENGINE_REPEATS (vs redis, same client)" \
            "${ENG[s1,ours]}" "${ENG[s1,redis]}" "$(calc "${ENG[s1,ours]} / ${ENG[s1,redis]}" 3)" \
            "$( ((BUSY_LOOPS > 0)) && echo 0.8 || echo 1.0)"
        printf '%-44s %12s %12s %10s %8s\n' "1 worker, slowest / median" "${ENG[s1,slowest]}" \
            "${ENG[s1,ours]}" "$(calc "${ENG[s1,slowest]} / ${ENG[s1,ours]}" 3)" 0.7
        printf '%-44s %12s %12s %10s %8s\n' "1 worker, server ctx switches per l+r" "${ENG[s1,ctx]}" \
            "" - "≤ 2.2"
        ten_worker_rows s,
    fi
    if ((ASYNC_CLIENT > 0)); then
        echo
        echo "the 10-worker checks again through smol's executor and reactor (--io async, one thread;"
        echo "redis through the same client):"
        printf '%-44s %12s %12s %10s %8s\n' check dflockd peer ratio target
        ten_worker_rows a,
    fi
fi
