//! What a vanished connection leaves behind: with auto-release (default)
//! nothing; without it, only its held slots (D6).

use crate::support::{entry, grant, Server};

#[test]
fn disconnect_hands_the_lock_to_the_waiter() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    a.lock("k");
    b.send("l", "k", "10");
    server.wait_lock_waiters("k", 1);
    drop(a);
    let (t, _) = grant(&b.recv_line());
    assert_eq!(b.req("r", "k", &t), "ok");
    drop(b);
    server.assert_quiet();
}

#[test]
fn disconnect_releases_every_slot_and_record() {
    let server = Server::plain();
    let mut a = server.client();
    let (mut b, mut c, mut d) = (server.client(), server.client(), server.client());
    a.lock("k1");
    a.lock("k2");
    grant(&a.req("sl", "s", "0 2"));
    grant(&a.req("sl", "s", "0 2"));
    grant(&a.req("e", "k3", ""));
    b.send("l", "k1", "10");
    c.send("sl", "s", "10 2");
    d.send("l", "k3", "10");
    server.wait_stats(|s| {
        crate::support::waiters(s, "locks", "k1") == 1
            && crate::support::waiters(s, "semaphores", "s") == 1
            && crate::support::waiters(s, "locks", "k3") == 1
    });
    drop(a);
    grant(&b.recv_line());
    grant(&c.recv_line());
    grant(&d.recv_line());
    let s = b.stats();
    assert!(entry(&s, "idle_locks", "k2").is_some(), "k2 released too");
    drop((b, c, d));
    server.assert_quiet();
}

#[test]
fn blocked_waiter_that_disconnects_leaves_the_queue() {
    let server = Server::plain();
    let mut h = server.client();
    let (mut b, mut c, mut d) = (server.client(), server.client(), server.client());
    let tok = h.lock("k");
    for (i, x) in [&mut b, &mut c, &mut d].into_iter().enumerate() {
        x.send("l", "k", "30");
        server.wait_lock_waiters("k", i as u64 + 1);
    }
    // C goes away mid-wait; the server notices without waiting 30 s.
    drop(c);
    server.wait_lock_waiters("k", 2);
    assert_eq!(h.req("r", "k", &tok), "ok");
    let (tb, _) = grant(&b.recv_line());
    assert_eq!(b.req("r", "k", &tb), "ok");
    let (td, _) = grant(&d.recv_line());
    assert_eq!(d.req("r", "k", &td), "ok");
    drop((h, b, d));
    server.assert_quiet();
}

#[test]
fn enqueued_waiter_that_disconnects_is_cancelled() {
    let server = Server::plain();
    let mut h = server.client();
    let mut w = server.client();
    let tok = h.lock("k");
    assert_eq!(w.req("e", "k", ""), "queued");
    drop(w);
    server.wait_lock_waiters("k", 0);
    assert_eq!(h.req("r", "k", &tok), "ok");
    let s = h.stats();
    assert!(entry(&s, "idle_locks", "k").is_some(), "nobody was granted");
}

#[test]
fn without_auto_release_a_held_lock_survives_but_waiters_do_not() {
    let server = Server::start(|cfg| cfg.core.auto_release_on_disconnect = false);
    let mut a = server.client();
    let (mut w1, mut w2) = (server.client(), server.client());
    let mut b = server.client();
    let tok = a.lock("k");
    grant(&a.req("sl", "s", "0 2"));
    w1.send("l", "k", "30");
    server.wait_lock_waiters("k", 1);
    assert_eq!(w2.req("e", "k", ""), "queued");
    server.wait_lock_waiters("k", 2);
    drop((w1, w2));
    server.wait_lock_waiters("k", 0);
    drop(a);
    // Only B and the stats connection remain; A's slots are still held.
    let s = server.wait_stats(|s| s["connections"] == 2);
    assert!(entry(&s, "locks", "k").is_some());
    assert_eq!(entry(&s, "semaphores", "s").expect("held")["holders"], 1);
    assert_eq!(b.req("l", "k", "0"), "timeout");
    // The token still works as a bearer credential.
    assert_eq!(b.req("n", "k", &tok), "ok 33");
    assert_eq!(b.req("r", "k", &tok), "ok");
    b.lock("k");
}

#[test]
fn without_auto_release_an_orphaned_lease_still_expires() {
    let server = Server::start(|cfg| cfg.core.auto_release_on_disconnect = false);
    let mut a = server.client();
    let mut b = server.client();
    grant(&a.req("l", "k", "0 1"));
    drop(a);
    server.wait_stats(|s| s["connections"] == 2);
    b.send("l", "k", "10");
    grant(&b.recv_line());
}

#[test]
fn half_close_while_blocked_withdraws_the_waiter() {
    let server = Server::plain();
    let mut h = server.client();
    let mut b = server.client();
    let tok = h.lock("k");
    b.send("l", "k", "30");
    server.wait_lock_waiters("k", 1);
    // The server cannot tell a half-close from a vanished peer: the
    // waiter leaves and the connection closes without an answer.
    b.shutdown_write();
    server.wait_lock_waiters("k", 0);
    b.expect_eof();
    assert_eq!(h.req("r", "k", &tok), "ok");
    let s = h.stats();
    assert!(entry(&s, "idle_locks", "k").is_some());
}

#[test]
fn blocked_wait_and_semaphore_waiters_that_disconnect_leave() {
    let server = Server::plain();
    let mut h = server.client();
    let (mut w, mut s) = (server.client(), server.client());
    h.lock("k");
    grant(&h.req("sl", "sem", "0 1"));
    assert_eq!(w.req("e", "k", ""), "queued");
    w.send("w", "k", "30");
    s.send("sl", "sem", "30 1");
    server.wait_stats(|st| {
        crate::support::waiters(st, "locks", "k") == 1
            && crate::support::waiters(st, "locks", "sem") == 1
    });
    drop((w, s));
    server.wait_stats(|st| {
        crate::support::waiters(st, "locks", "k") == 0
            && crate::support::waiters(st, "locks", "sem") == 0
    });
    drop(h);
    server.assert_quiet();
}
