//! Signals over HTTP: `POST /v1/signals/{channel}` and the SSE stream
//! `GET /v1/signals`, against TCP subscribers and publishers on the same
//! core: delivery both ways, wildcards and groups across transports, JSON
//! escaping, every 400, auth, the session caps, cleanup when a client goes
//! away, slow-consumer eviction of a stream that is not read, drain, and
//! the idle sweeper leaving open streams alone.
//!
//! Plain requests go through a real HTTP client (`http_client`, ureq). The
//! SSE client reads the chunked body incrementally over a plain
//! `TcpStream`, byte-exact; every read has a timeout, so a missing event
//! fails the test.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::http_client::{call, get, parse_head, start, Resp};
use crate::support::{wait_until, DEADLINE, IO_TIMEOUT};
use dflockd::http::HttpSettings;
use dflockd::server::ServerConfig;

fn http(configure: impl FnOnce(&mut HttpSettings)) -> impl FnOnce(&mut ServerConfig) {
    move |cfg| {
        let mut h = HttpSettings::default();
        configure(&mut h);
        cfg.http = Some(h);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

fn stats(addr: SocketAddr) -> Value {
    let r = get(addr, "/v1/stats");
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// Waits until the HTTP `stats` satisfy `cond`.
#[track_caller]
fn wait_stats(addr: SocketAddr, mut cond: impl FnMut(&Value) -> bool) {
    wait_until(DEADLINE, || cond(&stats(addr)));
}

fn publish_raw(addr: SocketAddr, channel: &str, body: &str) -> Resp {
    call(
        addr,
        "POST",
        &format!("/v1/signals/{channel}"),
        &[],
        body.as_bytes(),
    )
}

/// Publishes over HTTP; returns `delivered`.
#[track_caller]
fn publish(addr: SocketAddr, channel: &str, payload: &str) -> u64 {
    let r = publish_raw(addr, channel, &json!({ "payload": payload }).to_string());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()["delivered"].as_u64().expect("delivered")
}

/// An open SSE stream, read incrementally.
struct Sse {
    stream: TcpStream,
    headers: Vec<(String, String)>,
    /// Bytes after the response head, not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body bytes not yet returned as events.
    data: Vec<u8>,
    ended: bool,
}

impl Sse {
    /// Opens `GET /v1/signals?{query}`; a non-200 answer is returned whole.
    fn open(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Result<Sse, Resp> {
        Sse::open_on(connect(addr), query, headers)
    }

    fn open_on(mut stream: TcpStream, query: &str, headers: &[(&str, &str)]) -> Result<Sse, Resp> {
        let mut raw = format!("GET /v1/signals?{query} HTTP/1.1\r\nHost: t\r\n");
        for (n, v) in headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        stream.write_all(raw.as_bytes()).expect("write");
        let mut buf = Vec::new();
        let mut scratch = [0u8; 4096];
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut scratch).expect("response head");
            assert!(n > 0, "closed before the response head");
            buf.extend_from_slice(&scratch[..n]);
        };
        let (status, headers) = parse_head(&buf[..end]);
        let raw = buf[end + 4..].to_vec();
        if status != 200 {
            let len: usize = header(&headers, "content-length")
                .and_then(|l| l.parse().ok())
                .expect("content-length");
            let mut body = raw;
            while body.len() < len {
                let n = stream.read(&mut scratch).expect("response body");
                assert!(n > 0, "closed inside the body");
                body.extend_from_slice(&scratch[..n]);
            }
            return Err(Resp {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let mut sse = Sse {
            stream,
            headers,
            raw,
            data: Vec::new(),
            ended: false,
        };
        sse.dechunk();
        Ok(sse)
    }

    #[track_caller]
    fn opened(addr: SocketAddr, query: &str) -> Sse {
        let mut s = Sse::open(addr, query, &[]).unwrap_or_else(|r| panic!("{query}: {r:?}"));
        assert_eq!(s.next_event().as_deref(), Some(":ok"));
        s
    }

    /// Moves complete chunks from `raw` to `data`.
    fn dechunk(&mut self) {
        while !self.ended {
            let Some(eol) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            if size == 0 {
                self.ended = true;
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.data
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// The next event block (without its blank line), or `None` once the
    /// stream has ended (end chunk, EOF or reset). Panics if nothing comes
    /// within the read timeout.
    #[track_caller]
    fn next_event(&mut self) -> Option<String> {
        let mut scratch = vec![0u8; 64 * 1024];
        loop {
            if let Some(i) = find(&self.data, b"\n\n") {
                let ev = String::from_utf8(self.data[..i].to_vec()).expect("events are UTF-8");
                self.data.drain(..i + 2);
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            match self.stream.read(&mut scratch) {
                Ok(0) => self.ended = true,
                Ok(n) => {
                    self.raw.extend_from_slice(&scratch[..n]);
                    self.dechunk();
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => self.ended = true,
                Err(e) => panic!("no event within {IO_TIMEOUT:?}: {e}"),
            }
        }
    }

    /// The next signal as (channel, payload).
    #[track_caller]
    fn signal(&mut self) -> (String, String) {
        let ev = self.next_event().expect("the stream ended");
        let data = ev
            .strip_prefix("event: sig\ndata: ")
            .unwrap_or_else(|| panic!("not a signal event: {ev:?}"));
        let v: Value = serde_json::from_str(data).expect("JSON data");
        assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{v}");
        (
            v["channel"].as_str().expect("channel").to_owned(),
            v["payload"].as_str().expect("payload").to_owned(),
        )
    }

    /// Reads whatever is left until the stream ends.
    #[track_caller]
    fn expect_end(&mut self) {
        while let Some(ev) = self.next_event() {
            assert!(ev.starts_with("event: sig\n"), "{ev:?}");
        }
    }
}

fn listeners(stats: &Value, pattern: &str) -> u64 {
    stats["signal_channels"]
        .as_array()
        .expect("signal_channels")
        .iter()
        .filter(|e| e["pattern"] == pattern)
        .map(|e| e["listeners"].as_u64().expect("listeners"))
        .sum()
}

#[test]
fn stream_starts_with_ok_and_carries_sse_headers() {
    let (_server, addr) = start(|_| {});
    let mut s = Sse::open(addr, "pattern=orders.*", &[]).expect("stream");
    assert_eq!(
        header(&s.headers, "content-type"),
        Some("text/event-stream")
    );
    assert_eq!(header(&s.headers, "cache-control"), Some("no-cache"));
    assert_eq!(header(&s.headers, "connection"), Some("keep-alive"));
    assert_eq!(header(&s.headers, "x-accel-buffering"), Some("no"));
    assert_eq!(header(&s.headers, "transfer-encoding"), Some("chunked"));
    assert_eq!(s.next_event().as_deref(), Some(":ok"));
    // One hidden session, one subscription.
    let st = stats(addr);
    assert_eq!(st["connections"], 1);
    assert_eq!(
        st["signal_channels"],
        json!([{"pattern": "orders.*", "listeners": 1}])
    );
    assert_eq!(publish(addr, "orders.new", "hi"), 1);
    assert_eq!(s.signal(), ("orders.new".into(), "hi".into()));
}

#[test]
fn delivery_across_transports() {
    let (server, addr) = start(|_| {});
    let mut sse = Sse::opened(addr, "pattern=orders.*");
    let mut tcp = server.client();
    assert_eq!(tcp.req("listen", "orders.new", ""), "ok");
    // HTTP publish → SSE and TCP subscribers.
    assert_eq!(publish(addr, "orders.new", "from http"), 2);
    assert_eq!(sse.signal(), ("orders.new".into(), "from http".into()));
    assert_eq!(tcp.recv_line(), "sig orders.new from http");
    // TCP publish → SSE subscriber (and the TCP one).
    let mut publisher = server.client();
    assert_eq!(publisher.req("signal", "orders.new", "from tcp"), "ok 2");
    assert_eq!(sse.signal(), ("orders.new".into(), "from tcp".into()));
    assert_eq!(tcp.recv_line(), "sig orders.new from tcp");
    // Leading and inner spaces are kept, as on TCP.
    assert_eq!(publish(addr, "orders.x", "  two  words"), 1);
    assert_eq!(sse.signal(), ("orders.x".into(), "  two  words".into()));
    // A channel nobody listens to.
    assert_eq!(publish(addr, "nobody", "x"), 0);
    // Per subscriber, in publish order.
    for i in 0..20 {
        assert_eq!(publish(addr, "orders.seq", &format!("m{i}")), 1);
    }
    for i in 0..20 {
        assert_eq!(sse.signal().1, format!("m{i}"));
    }
}

#[test]
fn overlapping_wildcards_and_queue_groups() {
    let (server, addr) = start(|_| {});
    let mut star = Sse::opened(addr, "pattern=a.*");
    let mut tail = Sse::opened(addr, "pattern=a.%3E");
    let mut tcp = server.client();
    assert_eq!(tcp.req("listen", "a.*", ""), "ok");
    assert_eq!(tcp.req("listen", "a.>", ""), "ok");
    // Each stream is its own connection; the TCP one gets it once.
    assert_eq!(publish(addr, "a.b", "one"), 3);
    assert_eq!(publish(addr, "a.b.c", "two"), 2);
    assert_eq!(star.signal(), ("a.b".into(), "one".into()));
    assert_eq!(tail.signal(), ("a.b".into(), "one".into()));
    assert_eq!(tail.signal(), ("a.b.c".into(), "two".into()));
    assert_eq!(tcp.recv_line(), "sig a.b one");
    assert_eq!(tcp.recv_line(), "sig a.b.c two");

    // A group with an SSE member (joined first) and a TCP member.
    let mut sse_worker = Sse::opened(addr, "pattern=jobs&group=w");
    let mut tcp_worker = server.client();
    assert_eq!(tcp_worker.req("listen", "jobs", "w"), "ok");
    assert_eq!(
        listeners(&stats(addr), "jobs"),
        2,
        "both members are listed under (jobs, w)"
    );
    for i in 0..4 {
        assert_eq!(publish(addr, "jobs", &format!("j{i}")), 1);
    }
    assert_eq!(sse_worker.signal().1, "j0");
    assert_eq!(sse_worker.signal().1, "j2");
    assert_eq!(tcp_worker.recv_line(), "sig jobs j1");
    assert_eq!(tcp_worker.recv_line(), "sig jobs j3");
    // A stream star wildcard does not match more tokens.
    star.stream
        .set_read_timeout(Some(Duration::from_millis(150)))
        .expect("timeout");
    let mut probe = [0u8; 1];
    assert!(star.data.is_empty() && star.raw.is_empty());
    assert!(star.stream.read(&mut probe).is_err(), "a.* got a.b.c");
}

#[test]
fn events_are_json_escaped() {
    let (server, addr) = start(|_| {});
    let mut s = Sse::opened(addr, "pattern=esc");
    let payload = "say \"hi\" \\ back\\slash, tab\there, é ✓ 😀";
    assert_eq!(publish(addr, "esc", payload), 1);
    let ev = s.next_event().expect("event");
    assert!(
        ev.contains(r#"\"hi\""#) && ev.contains(r"\\ back\\slash") && ev.contains(r"\t"),
        "{ev:?}"
    );
    assert!(!ev[ev.find("data: ").expect("data")..].contains('\t'));
    let data: Value = serde_json::from_str(ev.split_once("data: ").expect("data").1).expect("json");
    assert_eq!(data["payload"], payload);
    // Bytes that are not UTF-8 (only TCP can send them) become U+FFFD.
    let mut tcp = server.client();
    tcp.send_raw(b"signal\nesc\nbad \xff\xfe end\n");
    assert_eq!(tcp.recv_line(), "ok 1");
    assert_eq!(
        s.signal(),
        ("esc".into(), "bad \u{fffd}\u{fffd} end".into())
    );
}

#[test]
fn bad_requests_are_400() {
    let (_server, addr) = start(|_| {});
    for query in [
        "",
        "group=g",
        "pattern=",
        "pattern=a*",
        "pattern=a.%3E.b",
        "pattern=foo%3E",
        "pattern=a%20b",
        "pattern=a+b",
        "pattern=a%09b",
        "pattern=%zz",
        "pattern=a&group=x%0Dy",
        "pattern=a&group=x%0Ay",
        "pattern=a&group=x%20y",
        &format!("pattern={}", "k".repeat(257)),
    ] {
        match Sse::open(addr, query, &[]) {
            Ok(_) => panic!("{query:?} opened a stream"),
            Err(r) => r.err(400, "bad_request"),
        }
    }
    let detail = |r: Resp| {
        r.err(400, "bad_request");
        r.json()["detail"].as_str().expect("detail").to_owned()
    };
    let ok_body = r#"{"payload":"x"}"#;
    assert!(detail(publish_raw(addr, "a.*", ok_body)).contains("wildcard"));
    assert!(detail(publish_raw(addr, "a.%3E", ok_body)).contains("wildcard"));
    assert_eq!(
        detail(publish_raw(addr, "a%20b", ok_body)),
        "invalid channel"
    );
    assert_eq!(
        detail(publish_raw(addr, "%zz", ok_body)),
        "invalid percent-encoding in channel"
    );
    assert_eq!(
        detail(publish_raw(addr, "c", r#"{"payload":"   "}"#)),
        "payload must not be blank"
    );
    assert_eq!(
        detail(publish_raw(addr, "c", r#"{"payload":""}"#)),
        "payload must not be blank"
    );
    for p in [
        r#"{"payload":"a\nb"}"#,
        r#"{"payload":"a\rb"}"#,
        r#"{"payload":"ab\r"}"#,
    ] {
        assert_eq!(
            detail(publish_raw(addr, "c", p)),
            "payload must not contain CR or LF"
        );
    }
    // The push line must fit 65 536 bytes: `sig c ` + payload.
    let fits = "x".repeat(65_536 - "sig c ".len());
    assert_eq!(publish(addr, "c", &fits), 0);
    let too_long = format!("{fits}x");
    assert!(detail(publish_raw(
        addr,
        "c",
        &json!({"payload": too_long}).to_string()
    ))
    .starts_with("payload too long"));
    for body in [
        r#"{"payload":"x","extra":1}"#,
        r#"{"payload":5}"#,
        r#"{"payload":null}"#,
        r#"{}"#,
        r#"{"payload":"#,
        r#"{"payload":"x"} {}"#,
        "",
        "[]",
    ] {
        publish_raw(addr, "c", body).err(400, "bad_request");
    }
    let huge = json!({ "payload": "a".repeat(1 << 20) }).to_string();
    assert_eq!(
        detail(publish_raw(addr, "c", &huge)),
        "request body larger than 1 MiB"
    );
    // Wrong methods.
    let r = call(addr, "GET", "/v1/signals/c", &[], b"");
    r.err(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = call(addr, "POST", "/v1/signals", &[], ok_body.as_bytes());
    r.err(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    // No HEAD for the stream: it is nothing without its body.
    let r = call(addr, "HEAD", "/v1/signals?pattern=a", &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")), "{r:?}");
    // Nothing was left behind.
    let st = stats(addr);
    assert_eq!(
        (st["connections"].clone(), st["signal_channels"].clone()),
        (json!(0), json!([]))
    );
}

#[test]
fn bearer_auth_on_signal_routes() {
    let (_server, addr) = start(|cfg| cfg.core.auth_token = Some(b"s3cret".to_vec()));
    match Sse::open(addr, "pattern=p", &[]) {
        Ok(_) => panic!("opened without a token"),
        Err(r) => r.err(401, "unauthorized"),
    }
    match Sse::open(addr, "pattern=p", &[("Authorization", "Bearer nope")]) {
        Ok(_) => panic!("opened with a wrong token"),
        Err(r) => r.err(401, "unauthorized"),
    }
    publish_raw(addr, "p", r#"{"payload":"x"}"#).err(401, "unauthorized");
    // With the token: the hidden session and the publisher are both
    // authenticated to the core by the server.
    let auth = [("Authorization", "Bearer s3cret")];
    let mut s = Sse::open(addr, "pattern=p", &auth).expect("stream");
    assert_eq!(s.next_event().as_deref(), Some(":ok"));
    let r = call(addr, "POST", "/v1/signals/p", &auth, br#"{"payload":"x"}"#);
    assert_eq!((r.status, r.json()), (200, json!({"delivered": 1})));
    assert_eq!(s.signal(), ("p".into(), "x".into()));
}

#[test]
fn streams_count_toward_the_session_caps() {
    let (_server, addr) = start(http(|h| h.max_sessions = 2));
    let a = Sse::opened(addr, "pattern=cap");
    let _b = Sse::opened(addr, "pattern=cap");
    match Sse::open(addr, "pattern=cap", &[]) {
        Ok(_) => panic!("a third session"),
        Err(r) => r.err(503, "max_sessions"),
    }
    call(addr, "POST", "/v1/sessions", &[], b"").err(503, "max_sessions");
    // A refused stream leaves nothing behind.
    assert_eq!(listeners(&stats(addr), "cap"), 2);
    drop(a);
    wait_stats(addr, |s| s["connections"] == 1);
    let _c = Sse::opened(addr, "pattern=cap");

    let (_server, addr) = start(http(|h| h.max_sessions_per_ip = 1));
    let _a = Sse::opened(addr, "pattern=ip");
    match Sse::open(addr, "pattern=ip", &[]) {
        Ok(_) => panic!("a second session from one IP"),
        Err(r) => r.err(503, "max_sessions_per_ip"),
    }
}

#[test]
fn client_disconnect_removes_the_subscription() {
    let (server, addr) = start(|_| {});
    let streams: Vec<Sse> = ["x.*", "x.%3E", "x.y"]
        .iter()
        .map(|p| Sse::opened(addr, &format!("pattern={p}")))
        .collect();
    let grouped = Sse::opened(addr, "pattern=x.y&group=g");
    assert_eq!(
        stats(addr)["signal_channels"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(publish(addr, "x.y", "before"), 4);
    drop(streams);
    drop(grouped);
    wait_stats(addr, |s| {
        s["signal_channels"] == json!([]) && s["connections"] == 0
    });
    assert_eq!(publish(addr, "x.y", "after"), 0);
    let mut c = server.client();
    assert_eq!(c.req("signal", "x.y", "tcp"), "ok 0");
    // The sessions are gone from the table too.
    let m = get(addr, "/metrics").body;
    assert!(m.contains("dflockd_http_sessions 0"), "{m}");
}

/// A stream whose client never reads: its pushes stay unwritten, the
/// core's 64-frame queue fills, it is evicted and its connection dropped,
/// while a subscriber that reads keeps receiving everything.
#[test]
fn unread_stream_is_evicted_while_readers_keep_receiving() {
    let (server, addr) = start(|_| {});
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket
        .connect_timeout(&addr.into(), IO_TIMEOUT)
        .expect("connect");
    let slow = TcpStream::from(socket);
    slow.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut slow = Sse::open_on(slow, "pattern=fire.hose", &[]).expect("slow stream");
    assert_eq!(slow.next_event().as_deref(), Some(":ok"));
    let mut reader = Sse::opened(addr, "pattern=fire.*");
    let mut publisher = server.client();
    let payload = "x".repeat(60_000);
    let mut counted = 0;
    let mut evicted = false;
    // Bounded: socket buffers and hyper's write buffer absorb a few MB.
    for i in 0..2_000 {
        let reply = publisher.req("signal", "fire.hose", &format!("{i} {payload}"));
        let (_, p) = reader.signal();
        assert!(p.starts_with(&format!("{i} ")), "reader missed signal {i}");
        match reply.as_str() {
            "ok 2" => counted += 1,
            "ok 1" => {
                evicted = true;
                break;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert!(evicted, "never evicted after {counted} deliveries");
    assert!(counted >= 64, "evicted after only {counted} deliveries");
    // The stream's session and subscription are gone, and its connection
    // is dropped: the client sees the end after what was already sent.
    wait_stats(addr, |s| {
        listeners(s, "fire.hose") == 0 && s["connections"] == 2
    });
    slow.expect_end();
    // The reader is unaffected.
    assert_eq!(publisher.req("signal", "fire.hose", "after"), "ok 1");
    assert_eq!(reader.signal().1, "after");
}

#[test]
fn draining_ends_streams() {
    // A TCP connection keeps the drain going, so the HTTP front is still
    // there to observe.
    let (server, addr) = start(|_| {});
    let mut tcp = server.client();
    assert_eq!(tcp.req("ping", "", ""), "ok");
    let mut s = Sse::opened(addr, "pattern=d");
    let mut idle = Sse::opened(addr, "pattern=d&group=g");
    assert_eq!(publish(addr, "d", "before"), 2);
    assert_eq!(s.signal().1, "before");
    server.shutdown();
    s.expect_end();
    idle.expect_end();
    assert_eq!(get(addr, "/ready").status, 503);
    match Sse::open(addr, "pattern=d", &[]) {
        Ok(_) => panic!("a stream while draining"),
        Err(r) => r.err(503, "draining"),
    }
    publish_raw(addr, "d", r#"{"payload":"x"}"#).err(503, "draining");
}

/// With `--http-sse-ping-interval` 0 the open stream alone keeps its
/// session: a plain session created after it is swept, the stream is not.
#[test]
fn open_streams_are_not_swept_without_pings() {
    streams_outlive_idle_sessions(1, 0);
}

/// With an interval, the stream's keep-alive refreshes its session.
#[test]
fn open_streams_are_kept_alive_by_pings() {
    streams_outlive_idle_sessions(2, 1);
}

fn streams_outlive_idle_sessions(idle_s: u64, ping_s: u64) {
    let (_server, addr) = start(http(|h| {
        h.session_idle_timeout_s = idle_s;
        h.sse_ping_interval_s = ping_s;
    }));
    let mut s = Sse::opened(addr, "pattern=alive");
    let r = call(addr, "POST", "/v1/sessions", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(stats(addr)["connections"], 2);
    // Observable: the younger plain session is reaped (stats do not touch
    // it)...
    wait_until(Duration::from_secs(4 * idle_s + 10), || {
        stats(addr)["connections"] == 1
    });
    // ...while the older stream still receives.
    assert_eq!(publish(addr, "alive", "still here"), 1);
    assert_eq!(s.signal().1, "still here");
}

// A raw `>` in the query, as curl and Python's http.client send it, works
// as upstream (Go's server takes it); so do other bytes hyper's URI parser
// alone would refuse. A keep-alive connection can carry several such
// requests, bodies included.
#[test]
fn raw_gt_and_other_go_accepted_bytes_in_the_query() {
    let (_server, addr) = start(|_| {});
    let mut raw = Sse::opened(addr, "pattern=orders.>");
    assert_eq!(publish(addr, "orders.new", "hi"), 1);
    assert_eq!(raw.signal(), ("orders.new".into(), "hi".into()));
    // `"`, `<`, `` ` `` and UTF-8, raw in the query, arrive as sent.
    let mut odd = Sse::opened(addr, "pattern=a<\"`\u{e9}");
    assert_eq!(publish(addr, "a%3C%22%60%C3%A9", "odd"), 1);
    assert_eq!(odd.signal(), ("a<\"`\u{e9}".into(), "odd".into()));
    // Keep-alive: a POST with a body, then a GET with a raw `>`, on one
    // connection; both are answered.
    let mut s = connect(addr);
    let body = r#"{"payload":"x"}"#;
    let req = format!(
        "POST /v1/signals/q.a HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}\
         GET /v1/stats?x=> HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
}

// Where the parser must refuse a request head, the client still learns why
// from a JSON body, and the connection closes.
#[test]
fn refused_heads_get_a_json_body() {
    let (_server, addr) = start(|_| {});
    for (head, status, code) in [
        ("GET /v1/stats?x=\x01 HTTP/1.1\r\nHost: t\r\n\r\n", 400, "bad_request"),
        ("GET /v1/stats HTTP/1.1\r\nBad Header\r\n\r\n", 400, "bad_request"),
        ("GET /v1/stats HTTP/3.0\r\nHost: t\r\n\r\n", 505, "http_version_not_supported"),
        (
            "POST /v1/signals/a HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "bad_request",
        ),
    ] {
        let s = crate::http_client::send_raw(addr, head.as_bytes());
        let r = crate::http_client::read_raw(s);
        assert_eq!(r.status, status, "{head:?}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
        let v: Value = serde_json::from_str(&r.body).expect("JSON body");
        assert_eq!(v["error"], code, "{r:?}");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{r:?}");
    }
}
