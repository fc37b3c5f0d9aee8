//! Configured caps: connections (total and per IP), waiters per key on all
//! four enqueue paths, and the resource budget shared by locks and
//! semaphores.

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::Duration;

use crate::support::{entry, grant, wait_until, Client, Server, DEADLINE};

/// Connects with `connect` until the server answers a `ping` rather than
/// closing the connection; returns the admitted client.
#[track_caller]
fn admitted(mut connect: impl FnMut() -> Client) -> Client {
    let mut admitted = None;
    wait_until(DEADLINE, || {
        let mut c = connect();
        let ok = c.req_or_closed("ping", "_", "").is_some();
        if ok {
            admitted = Some(c);
        }
        ok
    });
    admitted.expect("admitted")
}

#[test]
fn max_connections_closes_the_extra_connection_silently() {
    let server = Server::start(|cfg| cfg.max_connections = 2);
    let mut a = server.client();
    let mut b = server.client();
    assert_eq!(a.req("ping", "_", ""), "ok");
    assert_eq!(b.req("ping", "_", ""), "ok");
    let mut c = server.client();
    c.expect_eof();
    // A request on a rejected connection gets nothing either.
    let mut c = server.client();
    assert_eq!(c.req_or_closed("ping", "_", ""), None);
    assert_eq!(b.stats()["connections"], 2);

    // Once one leaves, a newcomer is admitted (as soon as the server has
    // noticed the departure).
    drop(a);
    let mut d = admitted(|| server.client());
    grant(&d.req("l", "k", "0"));
    assert_eq!(d.stats()["connections"], 2);
}

#[test]
fn max_connections_per_ip_counts_each_address() {
    let server = Server::start(|cfg| cfg.max_connections_per_ip = 2);
    let lo1 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let lo2 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut a = Client::connect_from(lo1, server.addr());
    let mut b = Client::connect_from(lo1, server.addr());
    assert_eq!(a.req("ping", "_", ""), "ok");
    assert_eq!(b.req("ping", "_", ""), "ok");
    Client::connect_from(lo1, server.addr()).expect_eof();
    // Another address has its own allowance.
    let mut c = Client::connect_from(lo2, server.addr());
    let mut d = Client::connect_from(lo2, server.addr());
    assert_eq!(c.req("ping", "_", ""), "ok");
    assert_eq!(d.req("ping", "_", ""), "ok");
    Client::connect_from(lo2, server.addr()).expect_eof();
    assert_eq!(a.stats()["connections"], 4);

    drop(b);
    let mut e = admitted(|| Client::connect_from(lo1, server.addr()));
    assert_eq!(e.stats()["connections"], 4);
}

#[test]
fn max_waiters_on_lock_paths() {
    let server = Server::start(|cfg| cfg.core.max_waiters = 1);
    let mut h = server.client();
    let mut w = server.client();
    let mut x = server.client();
    h.lock("k");
    // The first waiter via `l`.
    w.send("l", "k", "10");
    server.wait_lock_waiters("k", 1);
    assert_eq!(x.req("l", "k", "10"), "error_max_waiters");
    assert_eq!(x.req("l", "k", "0"), "error_max_waiters", "even with T = 0");
    assert_eq!(x.req("e", "k", ""), "error_max_waiters");
    assert_eq!(
        x.req("w", "k", "0"),
        "error_not_enqueued",
        "no record was made"
    );
    drop(w);
    server.wait_lock_waiters("k", 0);
    // The first waiter via `e`.
    assert_eq!(x.req("e", "k", ""), "queued");
    let mut y = server.client();
    assert_eq!(y.req("e", "k", ""), "error_max_waiters");
    assert_eq!(y.req("l", "k", "5"), "error_max_waiters");
    // The cap is per key; a free key grants as usual.
    y.lock("other");
    server.wait_lock_waiters("k", 1);
}

#[test]
fn max_waiters_on_semaphore_paths() {
    let server = Server::start(|cfg| cfg.core.max_waiters = 1);
    let mut h = server.client();
    let mut w = server.client();
    let mut x = server.client();
    grant(&h.req("sl", "s", "0 2"));
    grant(&h.req("sl", "s", "0 2"));
    w.send("sl", "s", "10 2");
    server.wait_sem_waiters("s", 1);
    assert_eq!(x.req("sl", "s", "10 2"), "error_max_waiters");
    assert_eq!(x.req("sl", "s", "0 2"), "error_max_waiters");
    assert_eq!(x.req("se", "s", "2"), "error_max_waiters");
    drop(w);
    server.wait_sem_waiters("s", 0);
    assert_eq!(x.req("se", "s", "2"), "queued");
    let mut y = server.client();
    assert_eq!(y.req("se", "s", "2"), "error_max_waiters");
    assert_eq!(y.req("sl", "s", "10 2"), "error_max_waiters");
}

#[test]
fn max_locks_is_one_budget_for_locks_and_semaphores() {
    let server = Server::start(|cfg| cfg.core.max_locks = 3);
    let mut c = server.client();
    let ta = c.lock("a");
    grant(&c.req("sl", "b", "0 2"));
    grant(&c.req("e", "c", ""));
    for (cmd, key, arg) in [
        ("l", "d", "0"),
        ("l", "d", "10"),
        ("sl", "d", "0 2"),
        ("e", "d", ""),
        ("se", "d", "2"),
        // The same word in the other key space is another resource.
        ("sl", "a", "0 2"),
        ("l", "b", "0"),
    ] {
        assert_eq!(c.req(cmd, key, arg), "error_max_locks", "{cmd} {key} {arg}");
    }
    // Existing resources keep working, held or idle.
    assert_eq!(c.req("l", "a", "0"), "timeout");
    assert_eq!(c.req("r", "a", &ta), "ok");
    grant(&c.req("l", "a", "0"));
    let s = c.stats();
    assert!(entry(&s, "locks", "d").is_none() && entry(&s, "idle_locks", "d").is_none());
    assert!(entry(&s, "semaphores", "a").is_none());
}

#[test]
fn idle_gc_returns_budget() {
    let server = Server::start(|cfg| {
        cfg.core.max_locks = 1;
        cfg.core.gc_interval_s = 1;
        cfg.core.gc_max_idle_s = 0;
    });
    let mut c = server.client();
    let t = c.lock("a");
    assert_eq!(c.req("l", "b", "0"), "error_max_locks");
    assert_eq!(c.req("r", "a", &t), "ok");
    // `a` is idle; the next GC tick collects it and `b` fits.
    wait_until(DEADLINE, || c.req("sl", "b", "0 2") != "error_max_locks");
    let s = c.stats();
    assert!(entry(&s, "semaphores", "b").is_some());
    assert!(entry(&s, "idle_locks", "a").is_none());
}

// Regression: the listener used std's backlog of 128, so while the server
// was busy the 129th connect of a burst found the accept queue full and its
// SYN was dropped (a one-second retransmit at best). Holding the engine's lock
// freezes the server's tasks, so only the kernel's queue can take the burst.
#[test]
fn burst_of_connects_queues_while_the_server_is_busy() {
    let server = Server::plain();
    let mut conns = Vec::new();
    let frozen = server.handle().engine().door();
    // No panicking while the lock is held: poisoning it aborts the server
    // (and the test process) by design.
    let failed = (0..600).find_map(|i| {
        match TcpStream::connect_timeout(&server.addr(), Duration::from_secs(3)) {
            Ok(s) => {
                conns.push(s);
                None
            }
            Err(e) => Some((i, e)),
        }
    });
    drop(frozen);
    if let Some((i, e)) = failed {
        panic!("connect {i}: {e}: accept queue overflowed");
    }
    let mut conns: Vec<Client> = conns.into_iter().map(Client::from_stream).collect();
    for c in &mut conns {
        c.send("ping", "_", "");
    }
    for c in &mut conns {
        assert_eq!(c.recv_line(), "ok");
    }
    drop(conns);
    server.assert_quiet();
}

#[test]
fn max_waiters_counts_only_live_waiters() {
    let server = Server::start(|cfg| cfg.core.max_waiters = 2);
    let mut h = server.client();
    let (mut w1, mut w2, mut w3) = (server.client(), server.client(), server.client());
    let tok = h.lock("k");
    w1.send("l", "k", "30");
    server.wait_lock_waiters("k", 1);
    w2.send("l", "k", "30");
    server.wait_lock_waiters("k", 2);
    assert_eq!(w3.req("l", "k", "30"), "error_max_waiters");
    // A waiter leaving from the head of the queue frees a place.
    drop(w1);
    server.wait_lock_waiters("k", 1);
    w3.send("l", "k", "30");
    server.wait_lock_waiters("k", 2);
    assert_eq!(server.client().req("e", "k", ""), "error_max_waiters");
    assert_eq!(h.req("r", "k", &tok), "ok");
    let (t2, _) = grant(&w2.recv_line());
    assert_eq!(w2.req("r", "k", &t2), "ok");
    grant(&w3.recv_line());
}
