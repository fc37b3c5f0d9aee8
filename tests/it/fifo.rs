//! Strict arrival-order grants on one key across separate connections.

use std::time::{Duration, Instant};

use crate::support::{fence, grant, Client, Server};

/// Queues `clients` on lock `key` in the given order, each with `l key T`,
/// waiting for the server to count each one before the next arrives.
fn queue_in_order(server: &Server, key: &str, timeout_s: &str, clients: &mut [&mut Client]) {
    for (i, c) in clients.iter_mut().enumerate() {
        c.send("l", key, timeout_s);
        server.wait_lock_waiters(key, i as u64 + 1);
    }
}

#[test]
fn three_contenders_are_granted_in_arrival_order() {
    let server = Server::plain();
    let mut h = server.client();
    let (mut b, mut c, mut d) = (server.client(), server.client(), server.client());
    let tok = h.lock("k");
    queue_in_order(&server, "k", "10", &mut [&mut b, &mut c, &mut d]);
    b.expect_silence();

    assert_eq!(h.req("r", "k", &tok), "ok");
    let (tb, _) = grant(&b.recv_line());
    server.wait_lock_waiters("k", 2);
    c.expect_silence();
    d.expect_silence();

    assert_eq!(b.req("r", "k", &tb), "ok");
    let (tc, _) = grant(&c.recv_line());
    d.expect_silence();

    // Anyone may release: the holder of the first token hands C's on.
    assert_eq!(h.req("r", "k", &tc), "ok");
    let (td, _) = grant(&d.recv_line());
    assert!(fence(&tok) < fence(&tb) && fence(&tb) < fence(&tc) && fence(&tc) < fence(&td));
    assert_eq!(d.req("r", "k", &td), "ok");
    drop((h, b, c, d));
    server.assert_quiet();
}

#[test]
fn newcomer_queues_behind_waiters() {
    let server = Server::plain();
    let mut h = server.client();
    let (mut b, mut late) = (server.client(), server.client());
    let tok = h.lock("k");
    queue_in_order(&server, "k", "10", &mut [&mut b]);
    // A try-once acquire never jumps the queue.
    assert_eq!(late.req("l", "k", "0"), "timeout");
    late.send("l", "k", "10");
    server.wait_lock_waiters("k", 2);
    assert_eq!(h.req("r", "k", &tok), "ok");
    let (tb, _) = grant(&b.recv_line());
    late.expect_silence();
    assert_eq!(b.req("r", "k", &tb), "ok");
    grant(&late.recv_line());
}

#[test]
fn timed_out_waiter_leaves_the_middle_of_the_queue() {
    let server = Server::plain();
    let mut h = server.client();
    let (mut b, mut c, mut d) = (server.client(), server.client(), server.client());
    let tok = h.lock("k");
    b.send("l", "k", "10");
    server.wait_lock_waiters("k", 1);
    let sent = Instant::now();
    c.send("l", "k", "1");
    server.wait_lock_waiters("k", 2);
    d.send("l", "k", "10");
    server.wait_lock_waiters("k", 3);

    assert_eq!(c.recv_line(), "timeout");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "timeout after {waited:?}"
    );
    server.wait_lock_waiters("k", 2);
    assert_eq!(
        c.req("ping", "_", ""),
        "ok",
        "a timeout leaves the connection usable"
    );

    assert_eq!(h.req("r", "k", &tok), "ok");
    let (tb, _) = grant(&b.recv_line());
    assert_eq!(b.req("r", "k", &tb), "ok");
    let (td, _) = grant(&d.recv_line());
    assert_eq!(d.req("r", "k", &td), "ok");
    drop((h, b, c, d));
    server.assert_quiet();
}

#[test]
fn mixed_blocking_and_two_phase_waiters_share_one_queue() {
    let server = Server::plain();
    let mut h = server.client();
    let (mut b, mut c, mut d) = (server.client(), server.client(), server.client());
    let tok = h.lock("k");
    assert_eq!(b.req("e", "k", ""), "queued");
    server.wait_lock_waiters("k", 1);
    c.send("l", "k", "10");
    server.wait_lock_waiters("k", 2);
    assert_eq!(d.req("e", "k", ""), "queued");
    server.wait_lock_waiters("k", 3);

    // B's record is granted by the release; its `w` then answers at once.
    assert_eq!(h.req("r", "k", &tok), "ok");
    server.wait_lock_waiters("k", 2);
    c.expect_silence();
    let (tb, _) = grant(&b.req("w", "k", "0"));

    assert_eq!(b.req("r", "k", &tb), "ok");
    let (tc, _) = grant(&c.recv_line());
    assert_eq!(c.req("r", "k", &tc), "ok");
    let (td, _) = grant(&d.req("w", "k", "5"));
    assert!(fence(&tb) < fence(&tc) && fence(&tc) < fence(&td));
}
