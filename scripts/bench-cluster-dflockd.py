#!/usr/bin/env python3
"""dflockd's side of scripts/bench-cluster.sh: a single node and a 3-member cluster on
loopback, lock ops/s at 1, 10 and 50 workers (dflockd-bench over TCP against the leader),
then failover: KILLS times, kill -9 the leader and time until the first successful grant
(`l` answered `ok`) on any member, restart the killed member on its directory, wait until
it follows again. Prints median and p99.

Every process is started here and stopped by its PID (Popen.kill / terminate).
Knobs (environment): TARGET (cargo target dir), BASE_PORT (default 24700), BENCH_SECONDS
(default 4), KILLS (default 20), WORKERS (default "1 10 50"), DFLOCKD_BIN and
DFLOCKD_BENCH_BIN (binaries other than TARGET's, to compare builds), SINGLE (0: skip the
single node).

For the cluster it also prints, per member, the CPU time (utime + stime of /proc/PID/stat)
per committed entry (the commit index's growth, from `stats`) over the measured run.
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TARGET = os.environ.get("TARGET", "target")
BIN = os.environ.get("DFLOCKD_BIN") or os.path.join(TARGET, "release", "dflockd")
BENCH = os.environ.get("DFLOCKD_BENCH_BIN") or os.path.join(TARGET, "release", "dflockd-bench")
SINGLE = os.environ.get("SINGLE", "1") != "0"
TICK = os.sysconf("SC_CLK_TCK")
BASE = int(os.environ.get("BASE_PORT", "24700"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
KILLS = int(os.environ.get("KILLS", "20"))
WORKERS = [int(w) for w in os.environ.get("WORKERS", "1 10 50").split()]
TOKEN = "bench-member-token-at-least-32-bytes-long"
HOST = "127.0.0.1"

procs = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def request(addr, cmd, key, arg, timeout=1.0):
    """One request on a fresh connection; the reply line, or None."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"{cmd}\n{key}\n{arg}\n".encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    return None
                buf += chunk
            return buf.decode().strip()
    except OSError:
        return None


def wait_port(addr, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        if request(addr, "ping", "_", "") == "ok":
            return
        time.sleep(0.05)
    raise SystemExit(f"{addr} did not answer ping")


def start(args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen([BIN] + args, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.kill()
        p.wait()


def cpu_ticks(p):
    """utime + stime of process p, in clock ticks."""
    with open(f"/proc/{p.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def commit_index(addr):
    r = request(addr, "stats", "_", "", 2.0)
    if not r or "{" not in r:
        return None
    return json.loads(r[r.index("{"):])["cluster"]["commit_index"]


def bench(addr, workers, cluster=None):
    def run(rounds):
        out = subprocess.run(
            [BENCH, "--servers", addr, "--workers", str(workers), "--rounds", str(rounds),
             "--warmup", "5", "--timeout", "10"],
            capture_output=True, text=True, timeout=300).stdout
        ops = float(next(l.split()[1] for l in out.splitlines() if "throughput:" in l))
        errs = next((l for l in out.splitlines() if "errors" in l), "errors    : 0")
        return ops, errs
    probe, _ = run(max(20, 200 // workers))
    rounds = max(20, int(probe * SECONDS / workers))
    if cluster is None:
        ops, errs = run(rounds)
        return ops, errs, rounds, ""
    before = {i: (cpu_ticks(p), commit_index(cluster.client(i))) for i, p in cluster.members.items()}
    ops, errs = run(rounds)
    after = {i: (cpu_ticks(p), commit_index(cluster.client(i))) for i, p in cluster.members.items()}
    per = []
    for i in sorted(before):
        entries = (after[i][1] or 0) - (before[i][1] or 0)
        us = (after[i][0] - before[i][0]) * 1e6 / TICK / max(1, entries)
        per.append(f"{i}:{us:.0f}")
    total = sum(float(x.split(":")[1]) for x in per)
    return ops, errs, rounds, f"CPU us/entry {' '.join(per)} sum {total:.0f}"


class Cluster:
    def __init__(self, work):
        self.work = work
        self.members = {}
        self.peers = ",".join(
            f"{i}={HOST}:{BASE + 10 + i}@{HOST}:{BASE + i}" for i in (1, 2, 3))
        for i in (1, 2, 3):
            self.start(i)
        for i in (1, 2, 3):
            wait_port(self.client(i))

    def client(self, i):
        return f"{HOST}:{BASE + i}"

    def start(self, i):
        self.members[i] = start(
            ["--host", HOST, "--port", str(BASE + i), "--raft-dir", os.path.join(self.work, str(i)),
             "--node-id", str(i), "--raft-addr", f"{HOST}:{BASE + 10 + i}",
             "--cluster-peers", self.peers, "--orphan-ttl", "5"],
            {"DFLOCKD_RAFT_AUTH_TOKEN": TOKEN})

    def leader(self, deadline=30):
        end = time.time() + deadline
        while time.time() < end:
            for i, p in self.members.items():
                if p.poll() is None and request(self.client(i), "barrier", "_", "", 0.5) == "ok":
                    return i
            time.sleep(0.02)
        raise SystemExit("no leader")


def main():
    for b in (BIN, BENCH):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} is missing: cargo build --release --bin dflockd --bin dflockd-bench")
    work = tempfile.mkdtemp(prefix="dflockd-bench-cluster-")
    try:
        results = {}
        if SINGLE:
            single = start(["--host", HOST, "--port", str(BASE)])
            wait_port(f"{HOST}:{BASE}")
            for w in WORKERS:
                results[("single", w)] = bench(f"{HOST}:{BASE}", w)
            stop(single)
        cluster = Cluster(work)
        leader = cluster.leader()
        for w in WORKERS:
            results[("cluster", w)] = bench(cluster.client(leader), w, cluster)
        print("\ndflockd on loopback, same run (dflockd-bench over TCP, one op = l + r):")
        for w in WORKERS:
            s, c = results.get(("single", w)), results[("cluster", w)]
            single_text = f"single node {s[0]:>9.1f} ops/s   " if s else ""
            print(f"  {w:>3} workers: {single_text}3-member cluster (leader {leader}) "
                  f"{c[0]:>9.1f} ops/s   ({c[1].strip()}; rounds {c[2]}; {c[3]})")
        # Failover.
        times = []
        for k in range(KILLS):
            leader = cluster.leader()
            others = [i for i in (1, 2, 3) if i != leader]
            key = f"failover-{k}"
            t0 = time.monotonic()
            stop(cluster.members[leader])
            granted = None
            while granted is None:
                if time.monotonic() - t0 > 60:
                    raise SystemExit("no grant within 60 s of the kill")
                for i in others:
                    r = request(cluster.client(i), "l", key, "0 5", 0.5)
                    if r and r.startswith("ok "):
                        granted = time.monotonic() - t0
                        break
            times.append(granted * 1000)
            log(f"kill {k + 1}: leader {leader}, first grant after {granted * 1000:.0f} ms")
            cluster.start(leader)
            wait_port(cluster.client(leader))
        if not times:
            return
        times.sort()
        p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
        print(f"\nfailover, {KILLS} kills of the leader (kill -9 to the first granted l on another"
              f" member; election timeout 1-2 s, tick 100 ms):")
        print(f"  median {statistics.median(times):.0f} ms   p99 {p99:.0f} ms   "
              f"min {times[0]:.0f} ms   max {times[-1]:.0f} ms")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
