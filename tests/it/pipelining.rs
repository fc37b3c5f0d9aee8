//! Pipelined requests: many per write, answered in order; a blocked request
//! holds back the replies behind it until it is answered; TCP segmentation
//! is invisible.

use std::io::Write;
use std::thread;

use crate::support::{check, grant, matches, wire, Server};

#[test]
fn many_requests_in_one_write_are_answered_in_order() {
    let server = Server::plain();
    let mut c = server.client();
    let input = [
        wire("l", "a", "0"),
        wire("l", "b", "0 9"),
        wire("l", "a", "0"),
        wire("bogus", "_", ""),
        wire("sl", "s", "0 2"),
        wire("e", "a", ""),
        wire("w", "a", "0"),
        wire("stats", "_", ""),
        wire("ping", "_", ""),
        wire("e", "c", "4"),
        wire("w", "c", "1"),
    ]
    .concat();
    check(
        &mut c,
        &input,
        "ok TOK 33\nok TOK 9\ntimeout\nerror\nok TOK 33\nqueued\ntimeout\nok JSON\nok\nacquired TOK 4\nok TOK 4",
    );
}

#[test]
fn thousands_of_pipelined_requests() {
    let server = Server::plain();
    let mut c = server.client();
    const N: usize = 10_000;
    let mut input = Vec::new();
    for i in 0..N {
        let key = format!("k{}", i % 50);
        // Acquire, renew, release on 50 keys, interleaved with pings.
        input.extend_from_slice(
            match i % 4 {
                0 => wire("l", &key, "0 60"),
                1 => wire("ping", "_", ""),
                2 => wire("n", &key, "00000000000000000000000000000000"),
                _ => wire("stats", "_", ""),
            }
            .as_bytes(),
        );
    }
    // Write from another thread: the replies must be read concurrently or
    // both sides' buffers could fill.
    let mut w = c.writer();
    let writer = thread::spawn(move || w.write_all(&input).expect("write"));
    let mut held = std::collections::HashSet::new();
    for i in 0..N {
        let reply = c.recv_line();
        let key = i % 50;
        match i % 4 {
            0 if held.insert(key) => assert!(matches("ok TOK 60", &reply), "{i}: {reply}"),
            0 => assert_eq!(reply, "timeout", "{i}"),
            1 => assert_eq!(reply, "ok", "{i}"),
            2 => assert_eq!(reply, "error", "{i}"),
            _ => assert!(reply.starts_with("ok {"), "{i}: {reply}"),
        }
    }
    writer.join().expect("writer");
    assert_eq!(c.req("ping", "_", ""), "ok");
}

#[test]
fn blocked_request_holds_back_later_replies() {
    let server = Server::plain();
    let mut h = server.client();
    let mut b = server.client();
    let tok = h.lock("k");
    let input = [
        wire("ping", "_", ""),
        wire("l", "k", "30"),
        wire("ping", "_", ""),
        wire("l", "k2", "0"),
        wire("stats", "_", ""),
    ]
    .concat();
    b.send_raw(input.as_bytes());
    assert_eq!(b.recv_line(), "ok", "the ping before the blocked l");
    server.wait_lock_waiters("k", 1);
    b.expect_silence();
    // Nothing behind the blocked request has been applied yet.
    let s = server.stats();
    assert!(crate::support::entry(&s, "locks", "k2").is_none());

    assert_eq!(h.req("r", "k", &tok), "ok");
    grant(&b.recv_line());
    assert_eq!(b.recv_line(), "ok");
    grant(&b.recv_line());
    assert!(b.recv_line().starts_with("ok {"));
}

#[test]
fn large_pipeline_behind_a_blocked_request_is_not_lost() {
    let server = Server::plain();
    let mut h = server.client();
    let mut b = server.client();
    let tok = h.lock("k");
    // Far more than the server reads ahead while blocked (64 KiB + 1 KiB):
    // it stops reading, TCP pushes back, nothing is dropped.
    const PINGS: usize = 40_000;
    let mut input = wire("l", "k", "30").into_bytes();
    for _ in 0..PINGS {
        input.extend_from_slice(b"ping\n_\n\n");
    }
    let mut w = b.writer();
    let writer = thread::spawn(move || w.write_all(&input).expect("write"));
    server.wait_lock_waiters("k", 1);
    b.expect_silence();
    assert_eq!(h.req("r", "k", &tok), "ok");
    grant(&b.recv_line());
    for i in 0..PINGS {
        assert_eq!(b.recv_line(), "ok", "ping {i}");
    }
    writer.join().expect("writer");
    drop((h, b));
    server.assert_quiet();
}

#[test]
fn one_byte_per_write_is_one_request() {
    let server = Server::plain();
    let mut c = server.client();
    for byte in wire("l", "k", "0 5").bytes() {
        c.send_raw(&[byte]);
    }
    let (t, l) = grant(&c.recv_line());
    assert_eq!(l, 5);
    for byte in wire("r", "k", &t).bytes() {
        c.send_raw(&[byte]);
    }
    assert_eq!(c.recv_line(), "ok");
}

#[test]
fn requests_then_half_close_are_all_answered() {
    let server = Server::plain();
    let mut c = server.client();
    let input = [
        wire("l", "k", "0"),
        wire("ping", "_", ""),
        wire("stats", "_", ""),
    ]
    .concat();
    c.send_raw(input.as_bytes());
    c.shutdown_write();
    grant(&c.recv_line());
    assert_eq!(c.recv_line(), "ok");
    assert!(c.recv_line().starts_with("ok {"));
    c.expect_eof();
    drop(c);
    server.assert_quiet();
}
