//! `/metrics` against a real server: contention, a timeout, a lease expiry,
//! a disconnect, a semaphore and a signal over TCP, then a scrape whose
//! counters are asserted exactly and whose wait/hold histograms have the
//! expected counts. Durations measured on the real clock are only bounded
//! (the core tests pin exact buckets with a virtual clock).

use std::net::SocketAddr;

use crate::support::{entry, grant, wait_until, Client, Server, DEADLINE};
use dflockd::http::HttpSettings;

/// Samples of one scrape: `(name{labels}, value)`, labels as written.
struct Scrape(Vec<(String, f64)>);

impl Scrape {
    #[track_caller]
    fn get(&self, series: &str) -> f64 {
        self.0
            .iter()
            .find(|(s, _)| s == series)
            .unwrap_or_else(|| panic!("{series} missing"))
            .1
    }
}

/// `GET /metrics` over a fresh HTTP connection; counts the connection in
/// `scrapes`.
fn scrape(addr: SocketAddr, scrapes: &mut u64) -> Scrape {
    *scrapes += 1;
    let r = crate::http_client::get(addr, "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = r.body;
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample");
            let value = if value == "+Inf" {
                f64::INFINITY
            } else {
                value.parse().expect("number")
            };
            (series.to_owned(), value)
        })
        .collect();
    Scrape(samples)
}

/// Polls `stats` on `probe` until `cond` holds.
#[track_caller]
fn wait_stats(probe: &mut Client, mut cond: impl FnMut(&serde_json::Value) -> bool) {
    wait_until(DEADLINE, || cond(&probe.stats()));
}

#[test]
fn scrape_counts_grants_timeouts_expiries_and_evictions() {
    let server = Server::start(|cfg| cfg.http = Some(HttpSettings::default()));
    let http = server.handle().http_addr().expect("HTTP is on");
    let mut scrapes = 0;
    // Every TCP connection of the test is one of these six.
    let mut probe = server.client();
    let mut a = server.client();
    let mut b = server.client();
    let mut c = server.client();
    let mut d = server.client();
    let mut f = server.client();

    // Contention: b queues behind a and is granted on a's release.
    let ta = a.lock("k");
    b.send("l", "k", "10");
    wait_stats(&mut probe, |s| {
        entry(s, "locks", "k").is_some_and(|e| e["waiters"] == 1)
    });
    assert_eq!(a.req("r", "k", &ta), "ok");
    let (tb, _) = grant(&b.recv_line());
    assert_eq!(b.req("r", "k", &tb), "ok");

    // A queued acquire that times out, and a 1 s lease nobody renews.
    a.lock("x");
    c.send("l", "x", "1");
    grant(&d.req("l", "e", "0 1"));
    assert_eq!(c.recv_line(), "timeout");
    wait_stats(&mut probe, |s| entry(s, "locks", "e").is_none());

    // A holder that goes away.
    f.lock("g");
    drop(f);
    wait_stats(&mut probe, |s| entry(s, "locks", "g").is_none());

    // A semaphore slot, and a signal to one listener.
    let (ts, _) = grant(&a.req("sl", "s", "0 2"));
    assert_eq!(a.req("sr", "s", &ts), "ok");
    assert_eq!(c.req("listen", "ch", ""), "ok");
    assert_eq!(a.req("signal", "ch", "hello"), "ok 1");
    assert_eq!(c.recv_line(), "sig ch hello");

    // The TCP count drops when f's task has ended.
    let mut m = scrape(http, &mut scrapes);
    wait_until(DEADLINE, || {
        m = scrape(http, &mut scrapes);
        m.get("dflockd_connections_open{transport=\"tcp\"}") == 5.0
    });

    let exact = [
        ("dflockd_grants_total{kind=\"lock\",how=\"immediate\"}", 4),
        ("dflockd_grants_total{kind=\"lock\",how=\"queued\"}", 1),
        (
            "dflockd_grants_total{kind=\"semaphore\",how=\"immediate\"}",
            1,
        ),
        ("dflockd_grants_total{kind=\"semaphore\",how=\"queued\"}", 0),
        ("dflockd_acquire_timeouts_total{kind=\"lock\"}", 1),
        ("dflockd_acquire_timeouts_total{kind=\"semaphore\"}", 0),
        ("dflockd_lease_expiries_total{kind=\"lock\"}", 1),
        ("dflockd_lease_expiries_total{kind=\"semaphore\"}", 0),
        ("dflockd_releases_total{kind=\"lock\"}", 2),
        ("dflockd_releases_total{kind=\"semaphore\"}", 1),
        ("dflockd_evictions_total{cause=\"expiry\"}", 1),
        ("dflockd_evictions_total{cause=\"disconnect\"}", 1),
        ("dflockd_evictions_total{cause=\"disconnect_waiter\"}", 0),
        ("dflockd_evictions_total{cause=\"drain\"}", 0),
        ("dflockd_evictions_total{cause=\"slow_consumer\"}", 0),
        ("dflockd_signals_published_total", 1),
        ("dflockd_signal_deliveries_total", 1),
        // Every grant is observed once; a's hold on `x` is still running.
        ("dflockd_acquire_wait_seconds_count{kind=\"lock\"}", 5),
        (
            "dflockd_acquire_wait_seconds_bucket{kind=\"lock\",le=\"+Inf\"}",
            5,
        ),
        ("dflockd_acquire_wait_seconds_count{kind=\"semaphore\"}", 1),
        (
            "dflockd_acquire_wait_seconds_bucket{kind=\"semaphore\",le=\"0.001\"}",
            1,
        ),
        ("dflockd_lock_hold_seconds_count{kind=\"lock\"}", 4),
        (
            "dflockd_lock_hold_seconds_bucket{kind=\"lock\",le=\"+Inf\"}",
            4,
        ),
        ("dflockd_lock_hold_seconds_count{kind=\"semaphore\"}", 1),
        ("dflockd_connections_open{transport=\"tcp\"}", 5),
        ("dflockd_connections_open{transport=\"http_session\"}", 0),
        ("dflockd_connections_accepted_total{transport=\"tcp\"}", 6),
        ("dflockd_connections", 5),
        ("dflockd_locks_held", 1),
        ("dflockd_signal_listeners", 1),
    ];
    for (series, want) in exact {
        assert_eq!(m.get(series), want as f64, "{series}");
    }
    assert_eq!(
        m.get("dflockd_connections_accepted_total{transport=\"http\"}"),
        scrapes as f64
    );
    // The four uncontended grants waited 0 ms; b's wait is real time.
    let instant = m.get("dflockd_acquire_wait_seconds_bucket{kind=\"lock\",le=\"0.001\"}");
    assert!((4.0..=5.0).contains(&instant), "{instant}");
    // The expired lease was held exactly its 1 s: above le="0.5", at most
    // le="1"; the sum includes it.
    let hold = |le: &str| {
        m.get(&format!(
            "dflockd_lock_hold_seconds_bucket{{kind=\"lock\",le=\"{le}\"}}"
        ))
    };
    assert!(hold("0.5") <= 3.0, "{}", hold("0.5"));
    assert!(m.get("dflockd_lock_hold_seconds_sum{kind=\"lock\"}") >= 1.0);
}
