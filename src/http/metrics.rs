//! `GET /metrics`: Prometheus text exposition format 0.0.4 (`spec/http.md`
//! §6).
//!
//! A scrape reads everything it reports first ([`Scrape::take`]: the core
//! is advanced to now, as any input does; the totals behind the gauges are
//! counted by a walk of the keys and subscriptions in bounded slices, as
//! `stats` is built, and the counters copied at its last slice), then
//! renders it with no lock held ([`text`]).
//! Every family is written once, contiguously, with its `# HELP` and
//! `# TYPE` lines, so the output parses with any Prometheus client.
//!
//! Series: the reference's gauges (reference §7.8) and the front's own
//! counters; the core's counters and wait/hold histograms
//! ([`crate::core::CoreMetrics`]) labelled by `kind` (`lock`, `semaphore`),
//! `how` or `cause`; connections per transport.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use hyper::StatusCode;

use super::{lock, raw_resp, Front, RequestCounts, Resp};
use crate::core::introspect::Totals;
use crate::core::metrics::{kind_label, Cause, Histogram, How};
use crate::core::CoreMetrics;
use crate::wire::Space;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers `GET /metrics`.
pub(super) async fn render(front: &Front) -> Resp {
    let scrape = Scrape::take(front).await;
    raw_resp(StatusCode::OK, CONTENT_TYPE, text(&scrape).into())
}

/// Everything one scrape reports.
struct Scrape {
    ready: bool,
    uptime_s: f64,
    /// Totals over what `stats` would list.
    totals: Totals,
    core: CoreMetrics,
    tcp_open: usize,
    tcp_accepted: u64,
    http_open: usize,
    http_accepted: u64,
    sessions: usize,
    blocked: usize,
    rate_limited: u64,
    conns_rejected: u64,
    tls_failures: u64,
    requests: RequestCounts,
    /// Grants left under the fence ceiling.
    fence_headroom: u64,
    /// Failed writes of the fence state file (0 without one).
    fence_failures: u64,
    /// Cluster mode's `dflockd_raft_*` gauges (empty on a single node).
    raft: Vec<(&'static str, &'static str, u64)>,
}

impl Scrape {
    async fn take(front: &Front) -> Scrape {
        let engine = &front.engine;
        let (totals, counters) = engine.scrape().await;
        let (core, fence_headroom) = (counters.metrics, counters.fence_headroom);
        let fence_failures = engine
            .fence_status()
            .map_or(0, |f| f.persist_failures_total);
        let (http_open, http_accepted) = {
            let conns = lock(&front.conns);
            (conns.total(), conns.added())
        };
        Scrape {
            ready: !engine.is_draining(),
            uptime_s: front.started.elapsed().as_secs_f64(),
            totals,
            core,
            tcp_open: engine.fronts.tcp_open.load(Ordering::SeqCst),
            tcp_accepted: engine.fronts.tcp_accepted.load(Ordering::Relaxed),
            http_open,
            http_accepted,
            sessions: front.sessions.len(),
            blocked: front.sessions.blocked(),
            rate_limited: front.rate_limited.load(Ordering::Relaxed),
            conns_rejected: front.conns_rejected.load(Ordering::Relaxed),
            tls_failures: front.tls_failures.load(Ordering::Relaxed),
            requests: lock(&front.requests).counts(),
            fence_headroom,
            fence_failures,
            raft: engine.replicator().map(|r| r.metrics()).unwrap_or_default(),
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A counter family labelled by `kind` (lock, semaphore).
fn per_kind(out: &mut String, name: &str, help: &str, value: impl Fn(Space) -> u64) {
    family(out, name, "counter", help);
    for space in [Space::Lock, Space::Sem] {
        let kind = kind_label(space);
        let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", value(space));
    }
}

/// A histogram family labelled by `kind`.
fn histogram(out: &mut String, name: &str, help: &str, h: impl Fn(Space) -> Histogram) {
    family(out, name, "histogram", help);
    for space in [Space::Lock, Space::Sem] {
        let labels = format!("kind=\"{}\"", kind_label(space));
        h(space).render(name, &labels, out);
    }
}

fn text(s: &Scrape) -> String {
    let t = &s.totals;
    let gauges: [(&str, &str, f64); 12] = [
        (
            "dflockd_ready",
            "1 when serving, 0 while draining.",
            if s.ready { 1.0 } else { 0.0 },
        ),
        (
            "dflockd_uptime_seconds",
            "Seconds since the HTTP front started.",
            s.uptime_s,
        ),
        (
            "dflockd_connections",
            "Core connections: TCP connections plus HTTP sessions.",
            t.connections as f64,
        ),
        (
            "dflockd_tcp_connections",
            "Open connections on the TCP protocol port.",
            s.tcp_open as f64,
        ),
        (
            "dflockd_http_connections",
            "Open connections on the HTTP port.",
            s.http_open as f64,
        ),
        (
            "dflockd_http_sessions",
            "Live HTTP sessions.",
            s.sessions as f64,
        ),
        (
            "dflockd_http_blocked_requests",
            "HTTP lock and semaphore requests waiting in a queue right now (long polls).",
            s.blocked as f64,
        ),
        (
            "dflockd_locks_held",
            "Locks currently held.",
            t.locks as f64,
        ),
        (
            "dflockd_lock_waiters",
            "Waiters queued on locks.",
            t.lock_waiters as f64,
        ),
        (
            "dflockd_semaphore_holders",
            "Semaphore slots currently held.",
            t.semaphore_holders as f64,
        ),
        (
            "dflockd_semaphore_waiters",
            "Waiters queued on semaphores.",
            t.semaphore_waiters as f64,
        ),
        (
            "dflockd_signal_listeners",
            "Signal subscriptions (TCP listeners, summed over patterns and groups).",
            t.signal_listeners as f64,
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in gauges {
        single(&mut out, name, "gauge", help, value);
    }
    single(
        &mut out,
        "dflockd_fence_headroom",
        "gauge",
        "Fencing tokens that can be issued before the fence state file must be written again (grants wait at 0).",
        s.fence_headroom,
    );
    single(
        &mut out,
        "dflockd_fence_persist_failures_total",
        "counter",
        "Writes of the fence state file that failed (retried with backoff).",
        s.fence_failures,
    );
    let counters = [
        (
            "dflockd_http_rate_limited_total",
            "HTTP requests refused with 429 by the per-IP rate limit.",
            s.rate_limited,
        ),
        (
            "dflockd_http_connections_rejected_total",
            "HTTP connections closed at accept by --http-max-connections-per-ip.",
            s.conns_rejected,
        ),
        (
            "dflockd_http_tls_handshake_failures_total",
            "HTTP connections closed because their TLS handshake failed or was late.",
            s.tls_failures,
        ),
    ];
    for (name, help, value) in counters {
        single(&mut out, name, "counter", help, value);
    }
    family(
        &mut out,
        "dflockd_http_requests_total",
        "counter",
        "HTTP requests answered, by method, route template and status.",
    );
    for ((method, path, status), (count, _)) in &s.requests {
        let _ = writeln!(
            out,
            "dflockd_http_requests_total{{method=\"{method}\",path=\"{path}\",status=\"{status}\"}} {count}"
        );
    }
    family(
        &mut out,
        "dflockd_http_request_duration_seconds",
        "summary",
        "Time spent answering HTTP requests.",
    );
    for ((method, path, status), (count, sum)) in &s.requests {
        let labels = format!("method=\"{method}\",path=\"{path}\",status=\"{status}\"");
        let _ = writeln!(
            out,
            "dflockd_http_request_duration_seconds_sum{{{labels}}} {sum}\n\
             dflockd_http_request_duration_seconds_count{{{labels}}} {count}"
        );
    }
    connections(&mut out, s);
    core_series(&mut out, &s.core);
    for (name, help, value) in &s.raft {
        single(&mut out, name, "gauge", help, value);
    }
    out
}

fn connections(out: &mut String, s: &Scrape) {
    family(
        out,
        "dflockd_connections_open",
        "gauge",
        "Open client connections by transport: TCP protocol connections, live HTTP sessions.",
    );
    let _ = writeln!(
        out,
        "dflockd_connections_open{{transport=\"tcp\"}} {}\n\
         dflockd_connections_open{{transport=\"http_session\"}} {}",
        s.tcp_open, s.sessions
    );
    family(
        out,
        "dflockd_connections_accepted_total",
        "counter",
        "Connections admitted since start by transport (those closed at accept by a connection cap excluded).",
    );
    let _ = writeln!(
        out,
        "dflockd_connections_accepted_total{{transport=\"tcp\"}} {}\n\
         dflockd_connections_accepted_total{{transport=\"http\"}} {}",
        s.tcp_accepted, s.http_accepted
    );
}

fn core_series(out: &mut String, m: &CoreMetrics) {
    family(
        out,
        "dflockd_grants_total",
        "counter",
        "Slots granted, by key space and whether the request queued first.",
    );
    for space in [Space::Lock, Space::Sem] {
        for how in How::ALL {
            let _ = writeln!(
                out,
                "dflockd_grants_total{{kind=\"{}\",how=\"{}\"}} {}",
                kind_label(space),
                how.label(),
                m.grants(space, how)
            );
        }
    }
    per_kind(
        out,
        "dflockd_acquire_timeouts_total",
        "Acquires and waits answered timeout (deadline passed, or timeout 0 on a busy key).",
        |k| m.acquire_timeouts(k),
    );
    per_kind(
        out,
        "dflockd_lease_expiries_total",
        "Holders removed because their lease passed.",
        |k| m.lease_expiries(k),
    );
    per_kind(
        out,
        "dflockd_releases_total",
        "Slots released by their holder (successful r/sr).",
        |k| m.releases(k),
    );
    family(
        out,
        "dflockd_evictions_total",
        "counter",
        "Holders, waiters and listeners removed without asking, by cause.",
    );
    for cause in Cause::ALL {
        let _ = writeln!(
            out,
            "dflockd_evictions_total{{cause=\"{}\"}} {}",
            cause.label(),
            m.evictions(cause)
        );
    }
    single(
        out,
        "dflockd_signals_published_total",
        "counter",
        "Signals published (signal requests answered).",
        m.signals_published(),
    );
    single(
        out,
        "dflockd_signal_deliveries_total",
        "counter",
        "Signal pushes emitted to listeners.",
        m.signal_deliveries(),
    );
    histogram(
        out,
        "dflockd_acquire_wait_seconds",
        "Time from queueing to grant; 0 for grants that did not queue.",
        |k| m.acquire_wait(k).clone(),
    );
    histogram(
        out,
        "dflockd_lock_hold_seconds",
        "Time from grant to release, lease expiry or disconnect.",
        |k| m.hold(k).clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{ConnId, CoreConfig, Effect, Time};
    use crate::wire::{Key, Reply, Request};
    use std::collections::{BTreeMap, HashMap};

    /// A scrape with every series non-trivial: a contended lock handed off
    /// after 1.5 s, a semaphore timeout and expiry, some requests. Driven
    /// through the engine's door on a manual clock, as a server would.
    fn sample() -> Scrape {
        use crate::engine::{Engine, Input, ManualClock, Transport};
        let clock = std::sync::Arc::new(ManualClock::new(Time(0)));
        let engine = Engine::new(CoreConfig::default(), None, Box::new(clock.clone()));
        let a = engine.connect(Transport::Tcp, None);
        let b = engine.connect(Transport::Tcp, None);
        let acquire = |space, timeout_s, limit, lease_s| {
            Input::Request(Request::Acquire {
                space,
                key: Key::new(b"k").expect("key"),
                timeout_s,
                limit,
                lease_s,
            })
        };
        let Some(Effect::Reply {
            reply: Reply::Granted { token, .. },
            ..
        }) = engine.apply(a, acquire(Space::Lock, 0, 1, None)).0.pop()
        else {
            panic!("granted")
        };
        engine.apply(b, acquire(Space::Lock, 10, 1, None));
        let release = Request::Release {
            space: Space::Lock,
            key: Key::new(b"k").expect("key"),
            token: token.to_string().into_bytes().into(),
        };
        clock.set(Time(1500));
        engine.apply(a, Input::Request(release));
        engine.apply(a, acquire(Space::Sem, 0, 1, Some(1)));
        engine.apply(b, acquire(Space::Sem, 0, 1, None));
        clock.set(Time(2500));
        engine.apply(ConnId::ENGINE, Input::Tick);
        clock.set(Time(2600));
        engine.apply(b, Input::Disconnect);
        let (totals, counters) = futures_lite::future::block_on(engine.scrape());
        let mut requests: RequestCounts = BTreeMap::new();
        requests.insert(("GET", "/v1/locks/{key}", 405), (2, 0.25));
        requests.insert(("GET", "/metrics", 200), (1, 0.001));
        Scrape {
            ready: true,
            uptime_s: 12.5,
            totals,
            core: counters.metrics,
            tcp_open: 2,
            tcp_accepted: 5,
            http_open: 1,
            http_accepted: 3,
            sessions: 1,
            blocked: 0,
            rate_limited: 0,
            conns_rejected: 0,
            tls_failures: 0,
            requests,
            fence_headroom: 7,
            fence_failures: 2,
            raft: Vec::new(),
        }
    }

    type Labels = Vec<(String, String)>;

    /// One sample line: name, labels in order, value.
    type Sample = (String, Labels, f64);

    /// Parses a sample line strictly (label values may contain braces).
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let name_end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..name_end];
        let valid_name = name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
        if name.is_empty() || !valid_name {
            return Err(format!("bad metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').ok_or("label without =")?;
                let lname = rest[..eq].to_owned();
                if lname.is_empty() || !lname.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(format!("bad label name {lname:?}"));
                }
                rest = rest[eq + 1..].strip_prefix('"').ok_or("unquoted value")?;
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let close = loop {
                    match chars.next().ok_or("unterminated value")? {
                        (_, '\\') => {
                            let (_, c) = chars.next().ok_or("dangling escape")?;
                            value.push(c);
                        }
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((lname, value));
                rest = &rest[close + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        let value = rest.strip_prefix(' ').ok_or("no space before value")?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
        };
        Ok((name.to_owned(), labels, value))
    }

    /// Checks the exposition format line by line and returns the samples.
    fn validate(text: &str) -> Vec<Sample> {
        let mut help: HashMap<String, usize> = HashMap::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut finished: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        assert!(text.ends_with('\n'));
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            if let Some(r) = line.strip_prefix("# HELP ") {
                let (name, h) = r.split_once(' ').expect("HELP has text");
                assert!(!h.trim().is_empty(), "line {n}: empty HELP");
                assert!(
                    help.insert(name.into(), n).is_none(),
                    "line {n}: second HELP"
                );
                continue;
            }
            if let Some(r) = line.strip_prefix("# TYPE ") {
                let (name, t) = r.split_once(' ').expect("TYPE has a type");
                assert!(
                    ["counter", "gauge", "histogram", "summary"].contains(&t),
                    "line {n}: type {t}"
                );
                assert!(help.contains_key(name), "line {n}: TYPE before HELP");
                assert!(
                    types.insert(name.into(), t.into()).is_none(),
                    "line {n}: second TYPE"
                );
                if let Some(prev) = current.replace(name.into()) {
                    finished.push(prev);
                }
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "line {n}: {line:?}"
            );
            let sample = parse_sample(line).unwrap_or_else(|e| panic!("line {n}: {e}: {line}"));
            let name = &sample.0;
            let fam = types
                .iter()
                .map(|(f, t)| (f.as_str(), t.as_str()))
                .find(|(f, t)| {
                    let suffixes: &[&str] = match *t {
                        "histogram" => &["_bucket", "_sum", "_count"],
                        "summary" => &["_sum", "_count", ""],
                        _ => &[""],
                    };
                    suffixes.iter().any(|s| *name == format!("{f}{s}"))
                })
                .map(|(f, _)| f.to_owned())
                .unwrap_or_else(|| panic!("line {n}: {name} has no HELP/TYPE"));
            assert_eq!(
                current.as_deref(),
                Some(fam.as_str()),
                "line {n}: {name} outside its family's block"
            );
            assert!(!finished.contains(&fam), "line {n}: family split");
            samples.push(sample);
        }
        for (fam, t) in &types {
            if t == "histogram" {
                check_histogram(fam, &samples);
            }
        }
        samples
    }

    /// Buckets per label set are cumulative, in ascending `le`, end with
    /// `+Inf`, and `+Inf` equals `_count`; `_sum` is present.
    fn check_histogram(fam: &str, samples: &[Sample]) {
        let bucket = format!("{fam}_bucket");
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for (name, labels, v) in samples {
            if *name == bucket {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.as_str())
                    .expect("le label");
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                series.entry(rest).or_default().push((le, *v));
            }
        }
        assert!(!series.is_empty(), "{fam} has no buckets");
        for (labels, buckets) in series {
            assert!(
                buckets.windows(2).all(|w| w[0].0 < w[1].0),
                "{fam} le order"
            );
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{fam} not cumulative"
            );
            let (last_le, last) = *buckets.last().expect("buckets");
            assert_eq!(last_le, f64::INFINITY, "{fam} ends with +Inf");
            let find = |suffix: &str| {
                samples
                    .iter()
                    .find(|(n, l, _)| *n == format!("{fam}{suffix}") && *l == labels)
                    .map(|s| s.2)
            };
            assert_eq!(find("_count"), Some(last), "{fam}{labels:?} +Inf = _count");
            assert!(find("_sum").is_some(), "{fam}{labels:?} has _sum");
        }
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && l.iter().zip(labels).all(|(a, b)| a.0 == b.0 && a.1 == b.1)
            })
            .unwrap_or_else(|| panic!("{name}{labels:?} missing"))
            .2
    }

    #[test]
    fn output_is_valid_exposition_format() {
        let samples = validate(&text(&sample()));
        let v = |name, labels: &[(&str, &str)]| value(&samples, name, labels);
        // The reference's gauges keep their names.
        assert_eq!(v("dflockd_ready", &[]), 1.0);
        assert_eq!(v("dflockd_fence_headroom", &[]), 7.0);
        assert_eq!(v("dflockd_fence_persist_failures_total", &[]), 2.0);
        assert_eq!(v("dflockd_connections", &[]), 1.0);
        assert_eq!(v("dflockd_http_sessions", &[]), 1.0);
        assert_eq!(
            v(
                "dflockd_http_requests_total",
                &[
                    ("method", "GET"),
                    ("path", "/v1/locks/{key}"),
                    ("status", "405")
                ]
            ),
            2.0
        );
        // The core's series.
        assert_eq!(
            v(
                "dflockd_grants_total",
                &[("kind", "lock"), ("how", "immediate")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "dflockd_grants_total",
                &[("kind", "lock"), ("how", "queued")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "dflockd_grants_total",
                &[("kind", "semaphore"), ("how", "immediate")]
            ),
            1.0
        );
        assert_eq!(
            v("dflockd_acquire_timeouts_total", &[("kind", "semaphore")]),
            1.0
        );
        assert_eq!(
            v("dflockd_lease_expiries_total", &[("kind", "semaphore")]),
            1.0
        );
        assert_eq!(v("dflockd_releases_total", &[("kind", "lock")]), 1.0);
        assert_eq!(v("dflockd_evictions_total", &[("cause", "expiry")]), 1.0);
        assert_eq!(
            v("dflockd_evictions_total", &[("cause", "disconnect")]),
            1.0
        );
        let wait = |le| {
            v(
                "dflockd_acquire_wait_seconds_bucket",
                &[("kind", "lock"), ("le", le)],
            )
        };
        assert_eq!((wait("1"), wait("2.5"), wait("+Inf")), (1.0, 2.0, 2.0));
        assert_eq!(
            v("dflockd_acquire_wait_seconds_sum", &[("kind", "lock")]),
            1.5
        );
        assert_eq!(
            v("dflockd_lock_hold_seconds_count", &[("kind", "lock")]),
            2.0
        );
        assert_eq!(
            v("dflockd_lock_hold_seconds_count", &[("kind", "semaphore")]),
            1.0
        );
        assert_eq!(v("dflockd_connections_open", &[("transport", "tcp")]), 2.0);
        assert_eq!(
            v(
                "dflockd_connections_accepted_total",
                &[("transport", "http")]
            ),
            3.0
        );
    }

    #[test]
    fn validator_rejects_malformed_output() {
        for bad in [
            "dflockd_x 1\n",
            "# HELP a h\n# TYPE a gauge\na{l=\"v} 1\n",
            "# HELP a h\n# TYPE a gauge\n# HELP b h\n# TYPE b gauge\nb 1\na 1\n",
            "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n",
            "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0\nh_count 1\n",
        ] {
            assert!(
                std::panic::catch_unwind(|| validate(bad)).is_err(),
                "accepted {bad:?}"
            );
        }
    }
}
