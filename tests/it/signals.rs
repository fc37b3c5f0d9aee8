//! Pub/sub signals over real sockets: wildcard de-duplication, queue groups,
//! self-delivery, pushes interleaved with a blocked request, slow-consumer
//! eviction, the subscription cap, cleanup on disconnect, `signal_channels`
//! in `stats`, and subscribers kept past the idle read timeout (D11).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;

use crate::support::{grant, Client, Server, IO_TIMEOUT};

#[test]
fn overlapping_wildcards_deliver_once_per_connection() {
    let server = Server::plain();
    let mut sub = server.client();
    for p in ["w.a", "w.*", "w.>"] {
        assert_eq!(sub.req("listen", p, ""), "ok");
    }
    let mut other = server.client();
    assert_eq!(other.req("listen", "w.>", ""), "ok");
    let mut publisher = server.client();
    assert_eq!(publisher.req("signal", "w.a", "one"), "ok 2");
    assert_eq!(sub.recv_line(), "sig w.a one");
    assert_eq!(other.recv_line(), "sig w.a one");
    assert_eq!(publisher.req("signal", "w.a", "two"), "ok 2");
    // The next line is the next signal: "one" came once.
    assert_eq!(sub.recv_line(), "sig w.a two");
    sub.expect_silence();
}

#[test]
fn queue_groups_round_robin_and_each_group_gets_a_copy() {
    let server = Server::plain();
    let mut members: Vec<Client> = (0..3).map(|_| server.client()).collect();
    for m in &mut members {
        assert_eq!(m.req("listen", "jobs", "workers"), "ok");
    }
    let mut auditor = server.client();
    assert_eq!(auditor.req("listen", "jobs", "audit"), "ok");
    let mut publisher = server.client();
    for i in 0..6 {
        assert_eq!(publisher.req("signal", "jobs", &format!("j{i}")), "ok 2");
    }
    // Join order, round-robin: member k gets jobs k and k + 3.
    for (k, m) in members.iter_mut().enumerate() {
        assert_eq!(m.recv_line(), format!("sig jobs j{k}"));
        assert_eq!(m.recv_line(), format!("sig jobs j{}", k + 3));
    }
    for i in 0..6 {
        assert_eq!(auditor.recv_line(), format!("sig jobs j{i}"));
    }
}

#[test]
fn publisher_receives_its_own_signal() {
    let server = Server::plain();
    let mut c = server.client();
    assert_eq!(c.req("listen", "self", ""), "ok");
    c.send("signal", "self", "echo");
    assert_eq!(c.recv_line(), "sig self echo");
    assert_eq!(c.recv_line(), "ok 1");
}

#[test]
fn pushes_arrive_while_a_request_is_blocked() {
    let server = Server::plain();
    let mut holder = server.client();
    let token = holder.lock("sig-blocked");
    let mut sub = server.client();
    assert_eq!(sub.req("listen", "news", ""), "ok");
    sub.send("l", "sig-blocked", "10");
    server.wait_lock_waiters("sig-blocked", 1);
    let mut publisher = server.client();
    assert_eq!(publisher.req("signal", "news", "while blocked"), "ok 1");
    assert_eq!(sub.recv_line(), "sig news while blocked");
    assert_eq!(holder.req("r", "sig-blocked", &token), "ok");
    grant(&sub.recv_line());
}

/// A subscriber that never reads, with a small receive buffer: its pushes
/// stay unwritten, its queue fills, and it is closed rather than counted.
#[test]
fn slow_consumer_is_evicted_and_not_counted() {
    let server = Server::plain();
    let slow = small_buffer_client(server.addr());
    let mut slow = slow;
    assert_eq!(slow.req("listen", "firehose", ""), "ok");
    let mut publisher = server.client();
    let payload = "x".repeat(60_000);
    let mut counted = 0;
    let mut evicted = false;
    // Bounded: the server's socket buffers absorb a few MB at most.
    for _ in 0..2_000 {
        match publisher.req("signal", "firehose", &payload).as_str() {
            "ok 1" => counted += 1,
            "ok 0" => {
                evicted = true;
                break;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert!(evicted, "never evicted after {counted} deliveries");
    assert!(counted >= 64, "evicted with only {counted} deliveries");
    // Its subscription is gone once the server has closed it.
    server.wait_stats(|s| s["signal_channels"] == json!([]));
    assert_eq!(publisher.req("signal", "firehose", "again"), "ok 0");
}

/// `Effect::Close`'s promise: everything sent to a connection before the
/// core closes it is written before the socket closes, within the write
/// timeout. A subscriber pipelines far more `stats` than the socket buffers
/// hold and does not read, so its connection is stuck writing; the small
/// pushes sent meanwhile wait in its mailbox until its queue is full and it
/// is evicted, so the mailbox holds them and the close in one burst. Once
/// it reads again it receives every push counted for it (each `ok 1`), in
/// order, and the answers to the `stats` requests the core took before the
/// eviction (the first at least; none after it, as nothing follows a
/// close: the handler takes its mailbox before applying a request), then
/// the end of the stream. (Before, a close taken from the mailbox in the
/// same burst as pushes ended the connection with them unwritten.)
#[test]
fn an_evicted_subscriber_gets_everything_sent_before_its_close() {
    let server = Server::start(|cfg| cfg.write_timeout_s = 60);
    // About 140 KB of `stats` per request.
    let mut holder = server.client();
    let long = "k".repeat(200);
    let mut setup = String::new();
    for i in 0..500 {
        setup.push_str(&crate::support::wire("l", &format!("{i:04}{long}"), "0"));
    }
    holder.send_raw(setup.as_bytes());
    for _ in 0..500 {
        grant(&holder.recv_line());
    }
    let mut slow = small_buffer_client(server.addr());
    assert_eq!(slow.req("listen", "firehose", ""), "ok");
    let stats = 150;
    slow.send_raw(
        crate::support::wire("stats", "_", "")
            .repeat(stats)
            .as_bytes(),
    );
    let mut publisher = server.client();
    let mut delivered = 0;
    let mut evicted = false;
    for i in 0..2_000 {
        match publisher.req("signal", "firehose", &i.to_string()).as_str() {
            "ok 1" => delivered += 1,
            "ok 0" => {
                evicted = true;
                break;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert!(evicted, "never evicted after {delivered} deliveries");
    let (mut pushes, mut answers) = (0, 0);
    while let Some(line) = slow.recv_line_or_eof() {
        if line.starts_with("ok {") {
            answers += 1;
        } else {
            assert_eq!(line, format!("sig firehose {pushes}"));
            pushes += 1;
        }
    }
    assert_eq!(pushes, delivered);
    assert!((1..=stats).contains(&answers), "{answers} stats answered");
}

pub(crate) fn small_buffer_client(addr: SocketAddr) -> Client {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket
        .connect_timeout(&addr.into(), IO_TIMEOUT)
        .expect("connect");
    Client::from_stream(TcpStream::from(socket))
}

#[test]
fn max_subscriptions_caps_listens_per_connection() {
    let server = Server::start(|cfg| cfg.core.max_subscriptions = 2);
    let mut c = server.client();
    assert_eq!(c.req("listen", "a", ""), "ok");
    assert_eq!(c.req("listen", "a", "g"), "ok");
    assert_eq!(c.req("listen", "b", ""), "error");
    // Re-listening an existing one at the cap is ok (D12).
    assert_eq!(c.req("listen", "a", "g"), "ok");
    assert_eq!(c.req("unlisten", "a", ""), "ok");
    assert_eq!(c.req("listen", "b", ""), "ok");
    let mut d = server.client();
    assert_eq!(d.req("listen", "b", ""), "ok");
}

#[test]
fn disconnect_removes_subscriptions_from_stats() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    assert_eq!(a.req("listen", "st.>", "grp"), "ok");
    assert_eq!(b.req("listen", "st.>", "grp"), "ok");
    assert_eq!(b.req("listen", "st.x", ""), "ok");
    assert_eq!(
        server.stats()["signal_channels"],
        json!([
            {"pattern": "st.>", "group": "grp", "listeners": 2},
            {"pattern": "st.x", "listeners": 1},
        ])
    );
    drop(b);
    server.wait_stats(|s| {
        s["signal_channels"] == json!([{"pattern": "st.>", "group": "grp", "listeners": 1}])
    });
    let mut publisher = server.client();
    assert_eq!(publisher.req("signal", "st.x", "p"), "ok 1");
    assert_eq!(a.recv_line(), "sig st.x p");
}

#[test]
fn a_subscriber_is_not_cut_for_idleness() {
    let server = Server::start(|cfg| cfg.read_timeout_s = 1);
    let mut sub = server.client();
    assert_eq!(sub.req("listen", "quiet", ""), "ok");
    // Well past the read timeout, nothing arrives (no `error`, no close).
    assert_eq!(sub.try_recv_line(Duration::from_millis(2_500)), None);
    let mut publisher = server.client();
    assert_eq!(publisher.req("signal", "quiet", "still here"), "ok 1");
    assert_eq!(sub.recv_line(), "sig quiet still here");
}
