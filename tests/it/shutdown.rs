//! Server lifecycle: binding (errors, IPv6), then graceful shutdown:
//! blocked requests answer `error`, later requests `error_draining` and
//! close, the listener stops accepting, and the server stops once its
//! clients have left (or are force-closed after `shutdown_timeout_s`).

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{wait_until, Server, DEADLINE, IO_TIMEOUT};

/// Waits until connecting to `addr` is refused.
#[track_caller]
fn wait_refused(addr: SocketAddr) {
    wait_until(DEADLINE, || {
        TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
    });
}

/// Whether the server reports stopped within `deadline` ([`ServerHandle::stopped`]).
fn stopped_within(server: &Server, deadline: Duration) -> bool {
    smol::block_on(futures_lite::future::or(
        async {
            server.handle().stopped().await;
            true
        },
        async {
            async_io::Timer::after(deadline).await;
            false
        },
    ))
}

#[test]
fn drain_cancels_blocked_requests_and_refuses_new_ones() {
    let server = Server::plain();
    let mut a = server.client();
    let (mut b, mut w) = (server.client(), server.client());
    let tok = a.lock("k");
    b.send("l", "k", "30");
    assert_eq!(w.req("e", "k", ""), "queued");
    w.send("w", "k", "30");
    // Both `l` and `w` blocked: the `e` alone already made two waiters, so
    // counting waiters would not tell that `w` had reached the core.
    server.wait_blocked(2);

    server.shutdown();
    assert_eq!(b.recv_line(), "error", "blocked l is cancelled");
    assert_eq!(w.recv_line(), "error", "blocked w is cancelled");
    assert_eq!(a.req("r", "k", &tok), "error_draining");
    a.expect_eof();
    wait_refused(server.addr());
    // B and W are still connected, so the server keeps waiting for them.
    assert!(!server.handle().is_finished());
    assert_eq!(b.req("ping", "_", ""), "error_draining");
    b.expect_eof();
    assert!(!server.handle().is_finished());
    assert_eq!(w.req("stats", "_", ""), "error_draining");
    w.expect_eof();
    server.join_within(DEADLINE);
}

#[test]
fn pipelined_requests_behind_a_cancelled_one_are_refused() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    a.lock("k");
    b.send_raw(b"l\nk\n30\nping\n_\n\nping\n_\n\n");
    server.wait_lock_waiters("k", 1);
    server.shutdown();
    assert_eq!(b.recv_line(), "error");
    assert_eq!(b.recv_line(), "error_draining");
    b.expect_eof();
}

#[test]
fn stops_once_idle_clients_leave() {
    let server = Server::plain();
    let mut a = server.client();
    assert_eq!(a.req("ping", "_", ""), "ok");
    server.shutdown();
    wait_refused(server.addr());
    assert!(!stopped_within(&server, crate::support::QUIET));
    drop(a);
    // Well before the 30 s shutdown timeout.
    assert!(stopped_within(&server, DEADLINE), "stopped() completes");
    server.join_within(DEADLINE);
}

#[test]
fn shutdown_timeout_force_closes_lingering_clients() {
    let server = Server::start(|cfg| cfg.shutdown_timeout_s = 1);
    let mut idle = server.client();
    let mut holder = server.client();
    assert_eq!(idle.req("ping", "_", ""), "ok");
    holder.lock("k");
    let started = Instant::now();
    server.shutdown();
    idle.expect_eof();
    holder.expect_eof();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "force-closed after {took:?}"
    );
    server.join_within(DEADLINE);
}

#[test]
fn shutdown_with_no_clients_stops_at_once() {
    let server = Server::plain();
    server.shutdown();
    server.shutdown();
    server.join_within(DEADLINE);
}

// Regression: a client that never reads leaves its connection stuck in a
// write. The forced close only queued a `Close` in the mailbox, which the
// task does not look at while writing, so with no write deadline the
// server never stopped (and dropping its handle hung).
#[test]
fn forced_close_ends_a_connection_stuck_writing() {
    let server = Server::start(|cfg| {
        cfg.write_timeout_s = 0;
        cfg.shutdown_timeout_s = 1;
    });
    let mut c = server.client();
    // Make `stats` large (about 250 KB), then ask for it 200 times
    // without reading: far more than the socket buffers hold.
    let long = "k".repeat(200);
    let mut setup = String::new();
    for i in 0..1000 {
        setup.push_str(&crate::support::wire("l", &format!("{i:04}{long}"), "0"));
    }
    c.send_raw(setup.as_bytes());
    for _ in 0..1000 {
        crate::support::grant(&c.recv_line());
    }
    c.send_raw(
        crate::support::wire("stats", "_", "")
            .repeat(200)
            .as_bytes(),
    );
    // Once replies start arriving, the server is in its (endless) write.
    let stream = c.writer();
    let mut byte = [0u8; 1];
    assert_eq!(stream.peek(&mut byte).expect("peek"), 1);
    server.shutdown();
    server.join_within(DEADLINE);
    drop(c);
}

#[test]
fn bind_failures_are_start_errors() {
    let server = Server::plain();
    for listen in [server.addr().to_string(), "not an address".to_string()] {
        let cfg = dflockd::server::ServerConfig {
            listen: listen.clone(),
            ..Default::default()
        };
        match dflockd::server::spawn(cfg) {
            Err(dflockd::server::StartError::Bind(addr, _)) => assert_eq!(addr, listen),
            Err(e) => panic!("{listen}: unexpected error {e}"),
            Ok(_) => panic!("{listen}: bound twice"),
        }
    }
    // The running server is unaffected.
    assert_eq!(server.client().req("ping", "_", ""), "ok");
}

#[test]
fn listens_on_ipv6_loopback() {
    let server = Server::start(|cfg| cfg.listen = "[::1]:0".into());
    assert!(server.addr().is_ipv6());
    let mut c = server.client();
    assert_eq!(c.req("ping", "_", ""), "ok");
    server.shutdown();
    drop(c);
    server.join_within(DEADLINE);
}
