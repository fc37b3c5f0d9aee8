//! Malformed, hostile and slow peers. A malformed request costs an `error`
//! and the connection stays open; an overlong line or a request that stalls
//! past the read timeout costs the connection; nothing costs the server.

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{check, entry, grant, wire, Client, Server, IO_TIMEOUT};

/// Expects `error` and then the server closing the connection.
#[track_caller]
fn expect_fatal(c: &mut Client) {
    assert_eq!(c.recv_line(), "error");
    c.expect_eof();
}

#[test]
fn line_limit_is_256_bytes() {
    let server = Server::plain();
    let k256 = "a".repeat(256);
    let mut c = server.client();
    check(&mut c, &wire("l", &k256, "0"), "ok TOK 33");
    // The CR counts towards the limit but is stripped afterwards.
    check(
        &mut c,
        &wire("l", &format!("{}\r", &k256[..255]), "0"),
        "ok TOK 33",
    );
    let arg256 = format!("0{}", " ".repeat(255));
    check(&mut c, &wire("l", "b", &arg256), "ok TOK 33");
    let s = c.stats();
    assert!(entry(&s, "locks", &k256).is_some());
    assert!(entry(&s, "locks", &k256[..255]).is_some());

    let k257 = "a".repeat(257);
    let fatal = [
        wire("l", &k257, "0"),
        wire("l", &format!("{k256}\r"), "0"),
        wire(&"l".repeat(257), "k", "0"),
        wire("l", "k", &format!("0{}", " ".repeat(256))),
        // Other commands have the same limit on their third line.
        wire("r", "k", &"f".repeat(257)),
        // The line limit applies before the line is complete.
        "x".repeat(257),
    ];
    for input in fatal {
        let mut c = server.client();
        c.send_raw(input.as_bytes());
        expect_fatal(&mut c);
    }
    // Earlier complete requests in the same write are still answered.
    let mut c = server.client();
    c.send_raw(format!("ping\n_\n\n{}", "x".repeat(300)).as_bytes());
    assert_eq!(c.recv_line(), "ok");
    expect_fatal(&mut c);
}

#[test]
fn megabyte_line_is_cut_off_early() {
    let server = Server::plain();
    let mut c = server.client();
    let mut w = c.writer();
    // The server closes long before this is written: ignore write errors.
    let writer = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..16 {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    expect_fatal(&mut c);
    writer.join().expect("writer");
    drop(c);
    server.assert_quiet();
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn binary_garbage_costs_one_error_per_three_lines() {
    let server = Server::plain();
    let mut c = server.client();
    for seed in 1..=20u64 {
        let mut bytes: Vec<u8> = noise(seed, 1000)
            .into_iter()
            .filter(|b| *b != b'\n')
            .collect();
        // Cut into 9 lines of at most 60 bytes: three requests.
        bytes.truncate(9 * 60);
        let mut input = Vec::new();
        for line in bytes.chunks(60) {
            input.extend_from_slice(line);
            input.push(b'\n');
        }
        c.send_raw(&input);
        for _ in 0..3 {
            assert_eq!(c.recv_line(), "error", "seed {seed}");
        }
    }
    assert_eq!(c.req("ping", "_", ""), "ok");
    // NUL bytes and lone CRs inside a line are ordinary garbage too.
    check(&mut c, "\0\0\0\n\r\r\x01\n\0\n", "error");
    check(&mut c, "ping\0\n_\n\n", "error");
    assert_eq!(c.req("ping", "_", ""), "ok");
}

#[test]
fn non_utf8_and_control_bytes_in_keys_are_accepted() {
    let server = Server::plain();
    let mut c = server.client();
    let keys: [&[u8]; 4] = [
        b"\xff\xfe\x80",
        b"caf\xc3\xa9-\xc3",
        b"\x00\x01\x02\x1b[0m",
        // Unicode whitespace is not a separator in a key (only space, tab).
        "k\u{a0}\u{2003}x".as_bytes(),
    ];
    for key in keys {
        let req = |cmd: &str, arg: &str| {
            let mut v = format!("{cmd}\n").into_bytes();
            v.extend_from_slice(key);
            v.extend_from_slice(format!("\n{arg}\n").as_bytes());
            v
        };
        c.send_raw(&req("l", "0"));
        let (t, _) = grant(&c.recv_line());
        c.send_raw(&req("e", ""));
        assert_eq!(c.recv_line(), "queued");
        c.send_raw(&req("sl", "0 2"));
        grant(&c.recv_line());
        // `stats` stays one line of valid JSON.
        assert_eq!(c.stats()["connections"], 1);
        c.send_raw(&req("r", &t));
        assert_eq!(c.recv_line(), "ok");
        c.send_raw(&req("w", "0"));
        grant(&c.recv_line());
    }
}

#[test]
fn huge_integers() {
    let server = Server::plain();
    let mut c = server.client();
    let max = dflockd::wire::MAX_SECONDS;
    let cases: &[(String, String)] = &[
        (wire("l", "a", "99999999999999999999"), "error".into()),
        (wire("l", "a", &(max + 1).to_string()), "error".into()),
        (wire("l", "a", "-9223372036854775808"), "error".into()),
        (wire("l", "a", &format!("0 {}", max + 1)), "error".into()),
        (wire("l", "a", "0 9223372036854775807"), "error".into()),
        (wire("w", "a", "99999999999999999999"), "error".into()),
        (wire("sl", "s", "0 9223372036854775808"), "error".into()),
        (wire("e", "a", "99999999999999999999"), "error".into()),
        (
            wire(
                "n",
                "a",
                &format!("{} 99999999999999999999", "0".repeat(32)),
            ),
            "error".into(),
        ),
        // The largest accepted values work.
        (wire("l", "a", &max.to_string()), "ok TOK 33".into()),
        (wire("l", "b", &format!("0 {max}")), format!("ok TOK {max}")),
        (wire("sl", "s", "0 9223372036854775807"), "ok TOK 33".into()),
        (
            wire("sw", "s", &max.to_string()),
            "error_not_enqueued".into(),
        ),
        // Go's Atoi: sign and leading zeros are fine.
        (wire("l", "c", "+0 007"), "ok TOK 7".into()),
    ];
    for (input, expect) in cases {
        check(&mut c, input, expect);
    }
    let s = c.stats();
    let left = entry(&s, "locks", "b").expect("held")["lease_expires_in_s"]
        .as_f64()
        .expect("float");
    assert!(left > 1e9, "huge lease {left}");
}

#[test]
fn zero_and_negative_values_are_errors_and_the_connection_stays() {
    let server = Server::plain();
    let mut c = server.client();
    let tok = "0".repeat(32);
    let inputs = [
        wire("l", "k", "0 0"),
        wire("l", "k", "-1"),
        wire("l", "k", "0 -5"),
        wire("l", "k", "1 2 3"),
        wire("l", "k", ""),
        wire("l", "k", "abc"),
        wire("l", "k", "1.5"),
        wire("l", "k", "0x10"),
        wire("l", "k", "- 1"),
        wire("sl", "k", "0 0"),
        wire("sl", "k", "0 -1"),
        wire("sl", "k", "-1 2"),
        wire("sl", "k", "10"),
        wire("se", "k", "0"),
        wire("se", "k", "-2"),
        wire("se", "k", "2 0"),
        wire("se", "k", ""),
        wire("e", "k", "0"),
        wire("e", "k", "-1"),
        wire("e", "k", "30 junk"),
        wire("w", "k", "-1"),
        wire("w", "k", ""),
        wire("sw", "k", "-1"),
        wire("n", "k", &format!("{tok} 0")),
        wire("n", "k", &format!("{tok} -3")),
        wire("n", "k", ""),
        wire("sn", "k", &format!("{tok} 0")),
        wire("r", "k", ""),
        wire("r", "k", "   "),
        wire("sr", "k", "\t"),
        wire("l", "k y", "0"),
        wire("l", "k\ty", "0"),
        wire("L", "k", "0"),
        wire(" l", "k", "0"),
        wire("", "", ""),
    ];
    for input in &inputs {
        check(&mut c, input, "error");
    }
    // All in one write, too.
    check(&mut c, &inputs.concat(), &"error\n".repeat(inputs.len()));
    assert_eq!(c.req("ping", "_", ""), "ok");
    // None of them created anything.
    let s = c.stats();
    for array in ["locks", "semaphores", "idle_locks", "idle_semaphores"] {
        assert_eq!(s[array], serde_json::json!([]), "{array}");
    }
}

#[test]
fn every_command_with_junk_arguments_keeps_the_connection() {
    let server = Server::plain();
    let mut c = server.client();
    let keys = ["k", "*", ">", "a.*.b", "\u{fffd}"];
    let args = [
        "",
        " ",
        "x",
        "-1",
        "99999999999999999999",
        "1 2 3 4",
        "\x01\x02",
        "0 0 0",
    ];
    let mut sent = 0;
    let mut input = String::new();
    for cmd in dflockd::wire::COMMANDS {
        for key in keys {
            for arg in args {
                input.push_str(&wire(cmd, key, arg));
                sent += 1;
            }
        }
    }
    c.send_raw(input.as_bytes());
    for _ in 0..sent {
        c.recv_line();
    }
    assert_eq!(c.req("ping", "_", ""), "ok");
    drop(c);
    server.assert_quiet();
}

#[test]
fn half_a_request_then_eof_gets_no_reply_and_leaves_nothing() {
    let server = Server::plain();
    let full = wire("l", "k", "0");
    for cut in 1..full.len() {
        let mut c = server.client();
        c.send_raw(&full.as_bytes()[..cut]);
        c.shutdown_write();
        c.expect_eof();
    }
    // Half a request, then the socket just goes away.
    for cut in [1, 3, 5] {
        let mut c = server.client();
        c.send_raw(&full.as_bytes()[..cut]);
    }
    server.assert_quiet();
    let s = server.stats();
    assert!(entry(&s, "idle_locks", "k").is_none(), "never applied");
}

#[test]
fn slowloris_line_is_cut_after_the_read_timeout() {
    let server = Server::start(|cfg| cfg.read_timeout_s = 1);
    let mut c = server.client();
    c.send_raw(b"l\n");
    let started = Instant::now();
    let mut w = c.writer();
    // A byte every 100 ms, never finishing the key line: the client's
    // pacing is the behaviour under test.
    let trickle = thread::spawn(move || {
        for _ in 0..50 {
            if w.write_all(b"k").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    expect_fatal(&mut c);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");
    trickle.join().expect("trickle");
}

#[test]
fn slow_but_steady_lines_are_served() {
    let server = Server::start(|cfg| cfg.read_timeout_s = 1);
    let mut c = server.client();
    // Each line arrives well within the read timeout of the previous one,
    // though the whole request takes longer than one read timeout.
    for line in ["l\n", "k\n", "0\n"] {
        thread::sleep(Duration::from_millis(400));
        c.send_raw(line.as_bytes());
    }
    let (t, _) = grant(&c.recv_line());
    assert_eq!(c.req("r", "k", &t), "ok");
}

// Regression: the idle deadline was armed at connect and never re-armed by
// complete requests, so a connection that owned nothing was cut one read
// timeout after connecting however busy it was.
#[test]
fn active_connection_owning_nothing_is_not_cut() {
    let server = Server::start(|cfg| cfg.read_timeout_s = 1);
    let mut c = server.client();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1800) {
        assert_eq!(
            c.req("ping", "_", ""),
            "ok",
            "after {:?}",
            started.elapsed()
        );
        thread::sleep(Duration::from_millis(300));
    }
    // Once it falls silent, the idle window runs from its last request.
    let last = Instant::now();
    assert_eq!(c.req("ping", "_", ""), "ok");
    expect_fatal(&mut c);
    let idle = last.elapsed();
    assert!(
        idle >= Duration::from_millis(900),
        "cut after {idle:?} idle"
    );
}

// Decision D11: idleness cuts a connection that owns nothing, never one that
// holds a lock or waits in a queue.
#[test]
fn idle_connection_is_cut_unless_it_owns_something() {
    let server = Server::start(|cfg| cfg.read_timeout_s = 1);
    let mut holder = server.client();
    let mut queued = server.client();
    let mut blocked = server.client();
    let tok = holder.lock("k");
    assert_eq!(queued.req("e", "k", ""), "queued");
    blocked.send("l", "k", "30");
    server.wait_lock_waiters("k", 2);
    let mut idle = server.client();
    let started = Instant::now();
    expect_fatal(&mut idle);
    assert!(started.elapsed() >= Duration::from_millis(900));
    // By now the owners' own deadlines have passed at least once; a second
    // idle connection makes sure they have been looked at again.
    let mut idle2 = server.client();
    expect_fatal(&mut idle2);
    assert_eq!(holder.req("ping", "_", ""), "ok");
    assert_eq!(queued.req("ping", "_", ""), "ok");
    let s = holder.stats();
    assert_eq!(s["connections"], 3);
    // The blocked request is still waiting, and still answered.
    assert_eq!(holder.req("r", "k", &tok), "ok");
    assert!(grant(&queued.req("w", "k", "0")).0 > tok);
    drop(queued);
    grant(&blocked.recv_line());
}

// A waiter granted by a hand-off while it was blocked is answered by the
// releasing connection's thread through its lent socket, without its own
// handler waking (spec/ARCHITECTURE.md, "The runtime"); it is still held to
// D11: once its lease is over it owns nothing, and, silent since the grant,
// it is cut at its read deadline.
#[test]
fn a_waiter_answered_by_a_hand_off_is_still_held_to_the_read_deadline() {
    let server = Server::start(|cfg| cfg.read_timeout_s = 1);
    let mut holder = server.client();
    let mut waiter = server.client();
    let tok = holder.lock("k");
    waiter.send("l", "k", "30 2");
    server.wait_lock_waiters("k", 1);
    assert_eq!(holder.req("r", "k", &tok), "ok");
    let (_, lease) = grant(&waiter.recv_line());
    assert_eq!(lease, 2);
    let granted = Instant::now();
    // An owner stays past its read deadline; once the lease has expired it
    // owns nothing and is cut.
    expect_fatal(&mut waiter);
    assert!(
        granted.elapsed() >= Duration::from_millis(1900),
        "cut while it owned the lock"
    );
    let s = server.wait_stats(|s| s["connections"] == 1);
    assert!(entry(&s, "idle_locks", "k").is_some(), "nothing left held");
}

#[test]
fn owner_stalling_mid_request_is_cut() {
    let server = Server::start(|cfg| cfg.read_timeout_s = 1);
    let mut holder = server.client();
    holder.lock("k");
    // Owning something exempts idleness, not a stalled request.
    holder.send_raw(b"ping\n_\n");
    expect_fatal(&mut holder);
    let s = server.wait_stats(|s| s["connections"] == 1);
    assert!(entry(&s, "idle_locks", "k").is_some(), "released on close");
}

#[test]
fn large_signal_payload_is_framed_as_one_request() {
    let server = Server::plain();
    let mut c = server.client();
    // The third line of `signal` (and `auth`) may hold 64 KiB; whatever
    // the answer, it is one reply and the stream stays in step.
    let payload = "p".repeat(60_000);
    c.send_raw(format!("signal\nchan\n{payload}\nping\n_\n\n").as_bytes());
    c.recv_line();
    assert_eq!(c.recv_line(), "ok");
    // Any other command's third line is still capped at 256 bytes.
    c.send_raw(format!("listen\nchan\n{payload}\n").as_bytes());
    expect_fatal(&mut c);
}

#[test]
fn ten_thousand_connections_come_and_go() {
    let server = Server::plain();
    const BATCH: usize = 200;
    for batch in 0..50 {
        let mut conns = Vec::with_capacity(BATCH);
        for i in 0..BATCH {
            let mut s =
                std::net::TcpStream::connect_timeout(&server.addr(), IO_TIMEOUT).expect("connect");
            match i % 4 {
                // A request whose reply is never read.
                0 => s.write_all(wire("l", &format!("k{}", i % 10), "0").as_bytes()),
                1 => s.write_all(wire("sl", "s", "10 3").as_bytes()),
                // Half a request.
                2 => s.write_all(b"e\nk"),
                _ => Ok(()),
            }
            .expect("write");
            // Most close with a reset, which also spares the client side a
            // TIME_WAIT per connection.
            if (i + batch) % 5 != 0 {
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .expect("linger");
            }
            conns.push(s);
        }
        drop(conns);
    }
    // Only the stats connection is left, holding and queued nothing.
    server.assert_quiet();
}

#[test]
fn client_that_never_reads_is_dropped_after_the_write_timeout() {
    let server = Server::start(|cfg| cfg.write_timeout_s = 1);
    let mut c = server.client();
    // Make `stats` large (about 250 KB), then ask for it 200 times
    // without reading: far more than the socket buffers hold.
    let long = "k".repeat(200);
    let mut setup = String::new();
    for i in 0..1000 {
        setup.push_str(&wire("l", &format!("{i:04}{long}"), "0"));
    }
    c.send_raw(setup.as_bytes());
    for _ in 0..1000 {
        grant(&c.recv_line());
    }
    c.send_raw(wire("stats", "_", "").repeat(200).as_bytes());
    // The server gives up on the write, closes, and releases the locks.
    let s = server.wait_stats(|s| s["connections"] == 1);
    assert_eq!(s["locks"], serde_json::json!([]));
    drop(c);
}
