"""Interop scenarios: the upstream Python client (dflockd-client 2.1.1)
against this server.

Run by tests/interop/run.sh, which starts three servers and passes their
addresses in DFLOCKD_ADDR (no auth), DFLOCKD_AUTH_ADDR (started with
--auth-token, the token in DFLOCKD_AUTH_TOKEN) and DFLOCKD_TLS_ADDR
(started with --tls-cert/--tls-key; the self-signed certificate, which is
its own CA, in DFLOCKD_TLS_CA). Each scenario prints one line; any failure
makes the script exit 1.

Time-based checks wait on the server (a blocked acquire that must time
out or be granted), never on a sleep standing in for a condition.
"""

import os
import socket
import ssl
import time
import sys
import threading
import traceback
import zlib

import dflockd_client as dc
from dflockd_client import _sync as low

HOST, PORT = os.environ["DFLOCKD_ADDR"].rsplit(":", 1)
SERVERS = [(HOST, int(PORT))]
AHOST, APORT = os.environ["DFLOCKD_AUTH_ADDR"].rsplit(":", 1)
AUTH_SERVERS = [(AHOST, int(APORT))]
TOKEN = os.environ["DFLOCKD_AUTH_TOKEN"]
THOST, TPORT = os.environ["DFLOCKD_TLS_ADDR"].rsplit(":", 1)
TLS_SERVERS = [(THOST, int(TPORT))]
TLS_CA = os.environ["DFLOCKD_TLS_CA"]


def tls_context(cafile=TLS_CA):
    return ssl.create_default_context(cafile=cafile)


def conn(servers=SERVERS, token=None):
    host, port = servers[0]
    c = low.open_conn(host, port, ssl_context=None, connect_timeout_s=10)
    if token is not None:
        low.authenticate(c, token)
    return c


def wait_waiters(key, n, deadline_s=10):
    """Polls stats until the lock `key` has `n` waiters."""
    c = conn()
    try:
        end = time.monotonic() + deadline_s
        while True:
            st = low.stats(c)
            got = sum(e.get("waiters", 0) for e in st["locks"] if e["key"] == key)
            if got == n:
                return
            check(time.monotonic() < end, f"{key}: {got} waiters, wanted {n}")
            time.sleep(0.01)
    finally:
        c.close()


def lock(key, **kw):
    kw.setdefault("servers", SERVERS)
    return dc.SyncDistributedLock(key, **kw)


def sem(key, limit, **kw):
    kw.setdefault("servers", SERVERS)
    return dc.SyncDistributedSemaphore(key, limit=limit, **kw)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def lock_acquire_release():
    a, b = lock("py-basic"), lock("py-basic", acquire_timeout_s=0)
    check(a.acquire(), "a acquires a free lock")
    check(len(a.token) == 32 and a.lease == 33, f"grant {a.token} {a.lease}")
    check(not b.acquire(), "b times out at once while a holds")
    check(a.release(), "a releases")
    check(b.acquire(), "b acquires after the release")
    check(b.release(), "b releases")
    with lock("py-basic") as c:
        check(c.token is not None, "context manager holds")


def background_renewal():
    # A 2 s lease, renewed every second by the client's thread. A blocked
    # acquire of 5 s on another connection must time out: without renewal
    # it would be granted after 2 s.
    a = lock("py-renew", lease_ttl_s=2)
    check(a.acquire(), "acquire with a 2 s lease")
    token = a.token
    check(a.lease == 2, f"lease {a.lease}")
    c = conn()
    try:
        low.acquire(c, "py-renew", 5)
        raise AssertionError("granted while the holder was renewing")
    except dc.DflockdTimeoutError:
        pass
    finally:
        c.close()
    check(a.token == token and a.lease == 2, "still held with the same token")
    check(a.release(), "release after five lease periods")


def two_phase():
    a, b = lock("py-2p"), lock("py-2p")
    check(a.enqueue() == "acquired", "fast path")
    check(a.wait(0), "wait on an acquired record")
    ta = a.token
    check(b.enqueue() == "queued", "b queues behind a")
    check(a.release(), "a releases")
    check(b.wait(5), "b collects the grant")
    check(dc.fence_from_token(b.token) > dc.fence_from_token(ta), "fence grows")
    check(b.release(), "b releases")
    # The low level: w without e.
    c = conn()
    try:
        low.wait(c, "py-2p", 0)
        raise AssertionError("w without e was granted")
    except dc.NotQueuedError:
        pass
    finally:
        c.close()


def semaphore_contention():
    limit, workers, rounds = 2, 6, 5
    holders = 0
    peak = 0
    guard = threading.Lock()
    errors = []

    def work():
        nonlocal holders, peak
        try:
            for _ in range(rounds):
                s = sem("py-sem", limit, acquire_timeout_s=30)
                check(s.acquire(), "worker acquires")
                with guard:
                    holders += 1
                    peak = max(peak, holders)
                with guard:
                    holders -= 1
                check(s.release(), "worker releases")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check(not errors, f"worker errors: {errors!r}")
    check(peak <= limit, f"{peak} holders at once, limit {limit}")
    # Full semaphore: a third times out; a different limit is refused.
    x, y = sem("py-sem", limit), sem("py-sem", limit)
    check(x.acquire() and y.acquire(), "fill the semaphore")
    check(not sem("py-sem", limit, acquire_timeout_s=0).acquire(), "full")
    try:
        sem("py-sem", limit + 1, acquire_timeout_s=0).acquire()
        raise AssertionError("limit mismatch accepted")
    except dc.LimitMismatchError:
        pass
    x.release()
    y.release()


def disconnect_release():
    a = lock("py-disc")
    check(a.acquire(), "a acquires")
    ta = a.token
    a.close()  # no release: the server frees it on disconnect
    b = lock("py-disc", acquire_timeout_s=5)
    check(b.acquire(), "b is granted after a's connection closed")
    check(dc.fence_from_token(b.token) > dc.fence_from_token(ta), "fence grows")
    b.release()
    # A blocked waiter that disconnects leaves the queue.
    h = lock("py-disc")
    check(h.acquire(), "h acquires")
    w = socket.create_connection(SERVERS[0], timeout=10)
    w.sendall(b"l\npy-disc\n30\n")
    wait_waiters("py-disc", 1)
    w.close()
    wait_waiters("py-disc", 0)
    check(h.release(), "h releases")
    n = lock("py-disc", acquire_timeout_s=0)
    check(n.acquire(), "nobody was left in the queue")
    n.release()


def auth():
    good = lock("py-auth", servers=AUTH_SERVERS, auth_token=TOKEN)
    check(good.acquire(), "acquire with the right token")
    check(good.release(), "release")
    for token in ("wrong", None):
        bad = lock("py-auth", servers=AUTH_SERVERS, auth_token=token)
        try:
            bad.acquire()
            raise AssertionError(f"token {token!r} was accepted")
        except (dc.AuthError, PermissionError, dc.DflockdError, ConnectionError):
            pass
        finally:
            bad.close()
    c = conn(AUTH_SERVERS, TOKEN)
    try:
        st = low.stats(c)
        check(isinstance(st["locks"], list), "stats after auth")
    finally:
        c.close()


def fences_increase():
    fences = []
    for i in range(5):
        for l in (lock(f"py-fence-{i}"), sem(f"py-fence-{i}", 3)):
            check(l.acquire(), "acquire")
            fences.append(dc.fence_from_token(l.token))
            l.release()
    check(fences == sorted(fences) and len(set(fences)) == len(fences),
          f"fences not strictly increasing: {fences}")


def stats_and_sharding():
    c = conn()
    try:
        g, _ = low.acquire(c, "py-stats", 0)
        st = low.stats(c)
        keys = [e["key"] for e in st["locks"]]
        check("py-stats" in keys, f"stats lists the held lock: {keys}")
        check(st["connections"] >= 1, "connections")
        low.release(c, "py-stats", g)
    finally:
        c.close()
    for key in ("a", "orders", "123456789"):
        check(dc.stable_hash_shard(key, 7) == zlib.crc32(key.encode()) % 7,
              "sharding is crc32 % n")


def async_client():
    import asyncio

    async def go():
        a = dc.AsyncDistributedLock("py-async", servers=SERVERS)
        check(await a.acquire(), "async acquire")
        check(await a.release(), "async release")

    asyncio.run(go())


def tls():
    ctx = tls_context()
    a = lock("py-tls", servers=TLS_SERVERS, ssl_context=ctx)
    b = lock("py-tls", servers=TLS_SERVERS, ssl_context=ctx, acquire_timeout_s=0)
    check(a.acquire(), "a acquires over TLS")
    check(len(a.token) == 32 and a.lease == 33, f"grant {a.token} {a.lease}")
    check(not b.acquire(), "b times out at once over TLS while a holds")
    ta = a.token
    check(a.release(), "a releases over TLS")
    check(b.acquire(), "b acquires over TLS after the release")
    check(dc.fence_from_token(b.token) > dc.fence_from_token(ta), "fence grows")
    check(b.release(), "b releases over TLS")
    # Renewal over TLS: a 2 s lease outlives a 5 s blocked acquire.
    r = lock("py-tls-renew", servers=TLS_SERVERS, ssl_context=ctx, lease_ttl_s=2)
    check(r.acquire(), "acquire with a 2 s lease over TLS")
    w = lock("py-tls-renew", servers=TLS_SERVERS, ssl_context=ctx, acquire_timeout_s=5)
    check(not w.acquire(), "renewal over TLS keeps the lock held")
    check(r.release(), "release after renewals over TLS")
    # A semaphore over TLS.
    s1 = sem("py-tls-sem", 1, servers=TLS_SERVERS, ssl_context=ctx)
    check(s1.acquire(), "semaphore slot over TLS")
    check(s1.release(), "semaphore release over TLS")
    # The low level over TLS: ping and stats.
    host, port = TLS_SERVERS[0]
    c = low.open_conn(host, port, ssl_context=ctx, connect_timeout_s=10)
    try:
        check(isinstance(low.stats(c), dict), "stats over TLS")
    finally:
        c.close()
    # A client trusting the system CAs only refuses the self-signed server.
    try:
        bad = lock("py-tls", servers=TLS_SERVERS, ssl_context=ssl.create_default_context())
        bad.acquire()
        bad.release()
        raise AssertionError("an untrusted certificate was accepted")
    except ssl.SSLCertVerificationError:
        pass

    import asyncio

    async def go():
        x = dc.AsyncDistributedLock("py-tls-async", servers=TLS_SERVERS, ssl_context=ctx)
        check(await x.acquire(), "async acquire over TLS")
        check(await x.release(), "async release over TLS")

    asyncio.run(go())


SCENARIOS = [
    lock_acquire_release,
    background_renewal,
    two_phase,
    semaphore_contention,
    disconnect_release,
    auth,
    fences_increase,
    stats_and_sharding,
    async_client,
    tls,
]


def main():
    failed = 0
    for scenario in SCENARIOS:
        try:
            scenario()
            print(f"pass  {scenario.__name__}", flush=True)
        except BaseException:
            failed += 1
            print(f"FAIL  {scenario.__name__}", flush=True)
            traceback.print_exc()
    print(f"{len(SCENARIOS) - failed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
