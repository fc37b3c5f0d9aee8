//! Two-phase acquire (`e`/`w`, `se`/`sw`) over TCP: the edge cases of the
//! reference's §12 items 16–27 and Decision D18.

use crate::support::{entry, grant, Server};

// 16: a second `e` on the same connection and key, acquired or queued.
#[test]
fn second_enqueue_is_rejected_whether_acquired_or_queued() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    grant(&a.req("e", "k", ""));
    assert_eq!(a.req("e", "k", ""), "error_already_enqueued");
    assert_eq!(a.req("e", "k", "10"), "error_already_enqueued");
    assert_eq!(b.req("e", "k", ""), "queued");
    assert_eq!(b.req("e", "k", ""), "error_already_enqueued");
    // Only one waiter was added.
    server.wait_lock_waiters("k", 1);
    // Semaphores alike.
    grant(&a.req("se", "s", "1"));
    assert_eq!(a.req("se", "s", "1"), "error_already_enqueued");
}

// 17: `w` after an immediate `acquired` returns the same token and resets
// the lease to the `e`'s L; the record is then consumed.
#[test]
fn wait_after_acquired_returns_the_same_token() {
    let server = Server::plain();
    let mut a = server.client();
    let (t, l) = grant(&a.req("e", "k", "50"));
    assert_eq!(l, 50);
    assert_eq!(a.req("n", "k", &format!("{t} 2")), "ok 2");
    let (t2, l2) = grant(&a.req("w", "k", "5"));
    assert_eq!((t2.as_str(), l2), (t.as_str(), 50));
    let s = a.stats();
    let left = entry(&s, "locks", "k").expect("held")["lease_expires_in_s"]
        .as_f64()
        .expect("float");
    assert!(left > 45.0, "lease reset by w: {left}");
    assert_eq!(a.req("w", "k", "5"), "error_not_enqueued");
    // Still held: the second `w` did not release anything.
    assert_eq!(a.req("r", "k", &t), "ok");
}

// 18: `w k 0` while still queued times out and the place is lost.
#[test]
fn wait_zero_while_queued_times_out_and_loses_the_place() {
    let server = Server::plain();
    let mut h = server.client();
    let (mut w, mut x) = (server.client(), server.client());
    let tok = h.lock("k");
    assert_eq!(w.req("e", "k", ""), "queued");
    assert_eq!(x.req("e", "k", ""), "queued");
    server.wait_lock_waiters("k", 2);
    assert_eq!(w.req("w", "k", "0"), "timeout");
    server.wait_lock_waiters("k", 1);
    assert_eq!(w.req("w", "k", "0"), "error_not_enqueued");
    assert_eq!(h.req("r", "k", &tok), "ok");
    grant(&x.req("w", "k", "0"));
    // A fresh `e` after losing the place queues again.
    assert_eq!(w.req("e", "k", ""), "queued");
}

// 19: `w` without `e` on this connection.
#[test]
fn wait_without_enqueue() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    assert_eq!(a.req("w", "nothing", "5"), "error_not_enqueued");
    assert_eq!(a.req("sw", "nothing", "5"), "error_not_enqueued");
    // Held by someone else (via `l`), or enqueued by someone else.
    a.lock("k");
    assert_eq!(b.req("w", "k", "5"), "error_not_enqueued");
    grant(&a.req("e", "k2", ""));
    assert_eq!(b.req("w", "k2", "0"), "error_not_enqueued");
    assert_eq!(b.req("sw", "k2", "0"), "error_not_enqueued");
}

// 20 + D18: `w` after the `acquired` lease expired answers
// `error_lease_expired`, the next waiter was granted at expiry, and the
// stale record neither survives the `w` nor blocks a new `e`.
#[test]
fn wait_after_the_acquired_lease_expired() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    let (t, _) = grant(&a.req("e", "k", "1"));
    b.send("l", "k", "10");
    server.wait_lock_waiters("k", 1);
    let (tb, _) = grant(&b.recv_line());
    assert!(tb > t);
    assert_eq!(a.req("w", "k", "5"), "error_lease_expired");
    assert_eq!(a.req("w", "k", "5"), "error_not_enqueued");
    assert_eq!(a.req("e", "k", ""), "queued");
    assert_eq!(b.req("r", "k", &tb), "ok");
    grant(&a.req("w", "k", "5"));
}

// D18: an expired granted record never blocks a new `e`, even before `w`.
#[test]
fn expired_record_does_not_block_a_new_enqueue() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    grant(&a.req("se", "s", "1 1"));
    b.send("sl", "s", "10 1");
    server.wait_lock_waiters("s", 1);
    grant(&b.recv_line());
    assert_eq!(a.req("se", "s", "1"), "queued");
    assert_eq!(a.req("sw", "s", "0"), "timeout");
}

#[test]
fn queued_then_granted_before_wait() {
    let server = Server::plain();
    let mut h = server.client();
    let mut w = server.client();
    let tok = h.lock("k");
    assert_eq!(w.req("e", "k", "9"), "queued");
    assert_eq!(h.req("r", "k", &tok), "ok");
    // Granted while W was not looking: the lock is held, nobody queued.
    let s = server.wait_stats(|s| entry(s, "locks", "k").is_some_and(|e| e["waiters"] == 0));
    assert!(entry(&s, "locks", "k").expect("held")["owner_conn_id"] != 0);
    assert_eq!(w.req("e", "k", ""), "error_already_enqueued");
    let (t, l) = grant(&w.req("w", "k", "0"));
    assert_eq!(l, 9);
    assert_eq!(w.req("r", "k", &t), "ok");
}

#[test]
fn wait_blocks_until_granted() {
    let server = Server::plain();
    let mut h = server.client();
    let mut w = server.client();
    let tok = h.lock("q");
    assert_eq!(w.req("e", "q", "7"), "queued");
    w.send("w", "q", "10");
    w.expect_silence();
    assert_eq!(h.req("r", "q", &tok), "ok");
    let (_, l) = grant(&w.recv_line());
    assert_eq!(l, 7);
}

#[test]
fn blocking_wait_times_out_and_consumes_the_record() {
    let server = Server::plain();
    let mut h = server.client();
    let mut w = server.client();
    h.lock("k");
    assert_eq!(w.req("e", "k", ""), "queued");
    w.send("w", "k", "1");
    assert_eq!(w.recv_line(), "timeout");
    server.wait_lock_waiters("k", 0);
    assert_eq!(w.req("w", "k", "0"), "error_not_enqueued");
}

// 26: releasing a token does not clobber a different pending record of the
// same connection (another key, or the same key queued behind itself).
#[test]
fn release_does_not_clobber_another_record() {
    let server = Server::plain();
    let mut a = server.client();
    let mut h = server.client();
    let (t1, _) = grant(&a.req("e", "k1", ""));
    let th = h.lock("k2");
    assert_eq!(a.req("e", "k2", ""), "queued");
    assert_eq!(a.req("r", "k1", &t1), "ok");
    assert_eq!(
        a.req("w", "k1", "0"),
        "error_not_enqueued",
        "27: release clears"
    );
    assert_eq!(h.req("r", "k2", &th), "ok");
    grant(&a.req("w", "k2", "0"));

    // Same key: A holds via `l`, then queues behind itself with `e`.
    let t = a.lock("k3");
    assert_eq!(a.req("e", "k3", ""), "queued");
    assert_eq!(a.req("r", "k3", &t), "ok");
    let (t2, _) = grant(&a.req("w", "k3", "0"));
    assert_ne!(t2, t);
}

// 27: a release by anyone clears the record; a fresh `e` then works.
#[test]
fn release_by_another_connection_clears_the_record() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    let (t, _) = grant(&a.req("e", "k", ""));
    assert_eq!(b.req("r", "k", &t), "ok");
    assert_eq!(a.req("w", "k", "0"), "error_not_enqueued");
    grant(&a.req("e", "k", ""));
}

#[test]
fn semaphore_two_phase() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    let mut c = server.client();
    let (ta, _) = grant(&a.req("se", "s", "2"));
    grant(&b.req("se", "s", "2"));
    assert_eq!(c.req("se", "s", "2 5"), "queued");
    server.wait_sem_waiters("s", 1);
    assert_eq!(c.req("w", "s", "0"), "error_not_enqueued", "lock space");
    c.send("sw", "s", "10");
    c.expect_silence();
    assert_eq!(a.req("sr", "s", &ta), "ok");
    let (_, l) = grant(&c.recv_line());
    assert_eq!(l, 5);
}

// D18 and §8: a resource named by a two-phase record is never collected,
// so `w` still answers `error_lease_expired` after idle GC ticks.
#[test]
fn record_of_an_expired_grant_survives_gc() {
    let server = Server::start(|cfg| {
        cfg.core.gc_interval_s = 1;
        cfg.core.gc_max_idle_s = 0;
    });
    let mut a = server.client();
    let mut m = server.client();
    grant(&a.req("e", "k", "1"));
    // Wait for the lease to expire (k turns idle).
    server.wait_stats(|s| entry(s, "idle_locks", "k").is_some());
    // A marker released now is collected by the next GC tick; once it is
    // gone, a tick has run after k turned idle.
    let t = m.lock("marker");
    assert_eq!(m.req("r", "marker", &t), "ok");
    let s = server.wait_stats(|s| entry(s, "idle_locks", "marker").is_none());
    assert!(
        entry(&s, "idle_locks", "k").is_some(),
        "k kept for its record"
    );
    assert_eq!(a.req("w", "k", "0"), "error_lease_expired");
    // With the record consumed, k is ordinary idle garbage.
    server.wait_stats(|s| entry(s, "idle_locks", "k").is_none());
}
