//! Simulated HTTP clients: each opens HTTP/1.1 connections to the real
//! HTTP front (`http::serve_connection`, hyper included) over the
//! simulated connections, creates sessions, sends lock and semaphore
//! requests on them (long polls included), deletes and pings them or lets
//! them expire, publishes signals, subscribes to SSE streams on their own
//! connections, sends invalid requests, stalls, and closes or resets
//! connections mid-request and mid-stream. It records what it sent and the
//! responses and SSE events it read, with the simulated time of each.
//!
//! A connection carries one request, or now and then two pipelined, and
//! the client waits for their answers before it sends more; each response
//! belongs to the oldest unanswered request on its connection. A session
//! is used by one connection at a time, so its requests reach the core in
//! the order they were sent (but for one its client abandoned, which may
//! reach it late or never).

use std::rc::Rc;

use super::exec::sleep_ms;
use super::net::Shared;
use super::rng::Rng;
use super::World;

/// Pipe numbers of HTTP connections start here (TCP pipes below it), so
/// that their scheduler groups never meet the TCP connections'.
pub const PID_BASE: u64 = 1 << 30;

/// What a request asked for (what the checks need of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `POST /v1/sessions`
    Create,
    /// A lock or semaphore route.
    Lock {
        sem: bool,
        op: crate::http::Op,
        key: String,
        limit: u64,
        lease_s: Option<u64>,
        /// `acquire_timeout_s` or `timeout_s`.
        timeout_s: u64,
        token: Option<String>,
    },
    /// `DELETE /v1/sessions/{id}`
    Delete,
    /// `POST /v1/sessions/{id}/ping`
    Ping,
    /// `POST /v1/signals/{channel}`
    Publish,
    /// `GET /v1/signals?pattern=..`
    Stream,
    /// Anything else (health, stats, invalid requests).
    Other,
}

/// A response as read.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub body: String,
    pub read_ms: u64,
}

/// One request as sent.
#[derive(Clone, Debug)]
pub struct Req {
    /// The client's count of its requests (their order across its
    /// connections).
    pub seq: u64,
    pub kind: Kind,
    /// The session it was sent on (a lock route, delete, ping).
    pub session: Option<String>,
    /// When its last byte was sent (`None`: never whole).
    pub sent_ms: Option<u64>,
    pub resp: Option<Resp>,
}

enum Parse {
    Head,
    Body {
        status: u16,
        len: usize,
    },
    /// A chunked body; `sse`: an event stream, whose data is parsed into
    /// events as it comes.
    Chunked {
        status: u16,
        sse: bool,
        data: Vec<u8>,
    },
}

/// One HTTP connection, as its client saw it.
pub struct HttpRec {
    pub client: usize,
    pub inc: u64,
    pub pipe: Shared,
    pub opened_ms: u64,
    pub reqs: Vec<Req>,
    /// Responses read (each answers the oldest unanswered request).
    pub answered: usize,
    buf: Vec<u8>,
    state: Parse,
    /// SSE text not yet a whole event.
    sse_text: Vec<u8>,
    /// SSE events read: (channel, payload, time).
    pub events: Vec<(String, String, u64)>,
    /// A stream's end (its last chunk) was read.
    pub stream_ended: bool,
    pub client_closed: bool,
    pub eof: bool,
    /// A response said `Connection: close`.
    pub closing: bool,
    /// What the client could not make sense of (a check failure).
    pub errors: Vec<String>,
    /// Bytes of a request left half-sent.
    half: Option<Vec<u8>>,
}

impl HttpRec {
    pub fn new(client: usize, inc: u64, pipe: Shared, now: u64) -> HttpRec {
        HttpRec {
            client,
            inc,
            pipe,
            opened_ms: now,
            reqs: Vec::new(),
            answered: 0,
            buf: Vec::new(),
            state: Parse::Head,
            sse_text: Vec::new(),
            events: Vec::new(),
            stream_ended: false,
            client_closed: false,
            eof: false,
            closing: false,
            errors: Vec::new(),
            half: None,
        }
    }

    /// Whether a request is waiting for its response (or half-sent).
    pub fn busy(&self) -> bool {
        self.answered < self.reqs.len() || self.half.is_some()
    }

    fn usable(&self) -> bool {
        !(self.client_closed || self.eof || self.closing || self.stream_ended)
    }

    /// Sends a request whole, or (`cut`) only its first `cut` bytes.
    fn send(
        &mut self,
        seq: u64,
        kind: Kind,
        session: Option<String>,
        bytes: Vec<u8>,
        cut: usize,
        now: u64,
    ) {
        if !self.usable() {
            return;
        }
        let whole = cut >= bytes.len();
        let cut = cut.min(bytes.len());
        self.pipe.borrow_mut().client_write(&bytes[..cut]);
        self.reqs.push(Req {
            seq,
            kind,
            session,
            sent_ms: whole.then_some(now),
            resp: None,
        });
        if !whole {
            self.half = Some(bytes[cut..].to_vec());
        }
    }

    fn send_rest(&mut self, now: u64) {
        if let Some(rest) = self.half.take() {
            self.pipe.borrow_mut().client_write(&rest);
            if let Some(r) = self.reqs.last_mut() {
                r.sent_ms = Some(now);
            }
        }
    }

    pub fn close(&mut self, reset: bool) {
        self.pipe.borrow_mut().client_close(reset);
        self.client_closed = true;
        self.half = None;
    }

    /// Takes what arrived and parses it; returns the indexes of the
    /// requests answered by it.
    pub fn take_input(&mut self, now: u64) -> Vec<usize> {
        if self.client_closed || self.eof {
            return Vec::new();
        }
        let got = self.pipe.borrow_mut().client_read();
        match got {
            None => {
                self.eof = true;
                Vec::new()
            }
            Some(bytes) => {
                self.buf.extend_from_slice(&bytes);
                self.parse(now)
            }
        }
    }

    fn answer(&mut self, status: u16, body: &[u8], now: u64, out: &mut Vec<usize>) {
        let i = self.answered;
        match self.reqs.get_mut(i) {
            Some(r) => {
                r.resp = Some(Resp {
                    status,
                    body: String::from_utf8_lossy(body).into_owned(),
                    read_ms: now,
                });
                self.answered += 1;
                out.push(i);
            }
            None => self.errors.push(format!(
                "a response ({status} {:?}) with no request waiting",
                String::from_utf8_lossy(body)
            )),
        }
    }

    fn parse(&mut self, now: u64) -> Vec<usize> {
        let mut out = Vec::new();
        loop {
            match &mut self.state {
                Parse::Head => {
                    let Some(i) = find(&self.buf, b"\r\n\r\n") else {
                        return out;
                    };
                    let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let mut lines = head.split("\r\n");
                    let status = lines
                        .next()
                        .and_then(|l| l.split(' ').nth(1))
                        .and_then(|s| s.parse::<u16>().ok());
                    let Some(status) = status else {
                        self.errors
                            .push(format!("malformed response head {head:?}"));
                        self.buf.clear();
                        return out;
                    };
                    let (mut len, mut chunked, mut sse) = (0usize, false, false);
                    for l in lines {
                        let Some((name, value)) = l.split_once(':') else {
                            continue;
                        };
                        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                        match name.as_str() {
                            "content-length" => len = value.parse().unwrap_or(0),
                            "transfer-encoding" => chunked = value.contains("chunked"),
                            "content-type" => sse = value.starts_with("text/event-stream"),
                            "connection" => {
                                self.closing |= value.eq_ignore_ascii_case("close");
                            }
                            _ => {}
                        }
                    }
                    if chunked {
                        if sse {
                            // The head of a stream answers its request.
                            self.answer(status, b"", now, &mut out);
                        }
                        self.state = Parse::Chunked {
                            status,
                            sse,
                            data: Vec::new(),
                        };
                    } else {
                        self.state = Parse::Body { status, len };
                    }
                }
                Parse::Body { status, len } => {
                    if self.buf.len() < *len {
                        return out;
                    }
                    let (status, len) = (*status, *len);
                    let body: Vec<u8> = self.buf.drain(..len).collect();
                    self.state = Parse::Head;
                    self.answer(status, &body, now, &mut out);
                }
                Parse::Chunked { status, sse, data } => {
                    let Some(i) = find(&self.buf, b"\r\n") else {
                        return out;
                    };
                    let size_text = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                    let size_text = size_text.split(';').next().unwrap_or("").trim();
                    let Ok(size) = usize::from_str_radix(size_text, 16) else {
                        self.errors
                            .push(format!("malformed chunk size {size_text:?}"));
                        self.buf.clear();
                        return out;
                    };
                    if self.buf.len() < i + 2 + size + 2 {
                        return out;
                    }
                    let chunk: Vec<u8> = self.buf[i + 2..i + 2 + size].to_vec();
                    self.buf.drain(..i + 2 + size + 2);
                    let (status, sse) = (*status, *sse);
                    if size == 0 {
                        let body = std::mem::take(data);
                        self.state = Parse::Head;
                        if sse {
                            self.stream_ended = true;
                        } else {
                            self.answer(status, &body, now, &mut out);
                        }
                    } else if sse {
                        self.sse_text.extend_from_slice(&chunk);
                        self.events_from_text(now);
                    } else {
                        data.extend_from_slice(&chunk);
                    }
                }
            }
        }
    }

    fn events_from_text(&mut self, now: u64) {
        while let Some(i) = find(&self.sse_text, b"\n\n") {
            let block: Vec<u8> = self.sse_text.drain(..i + 2).collect();
            let block = String::from_utf8_lossy(&block[..i]).into_owned();
            if block.starts_with(':') {
                continue;
            }
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok());
            let field = |v: &serde_json::Value, k: &str| v[k].as_str().map(str::to_owned);
            match data.and_then(|v| Some((field(&v, "channel")?, field(&v, "payload")?))) {
                Some((ch, p)) if block.starts_with("event: sig\n") => {
                    self.events.push((ch, p, now));
                }
                _ => self.errors.push(format!("malformed SSE event {block:?}")),
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The JSON of a response body, if it is one.
pub fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null)
}

/// A grant in a response: (status, token, lease seconds).
pub fn grant(r: &Resp) -> Option<(String, String, u64)> {
    if r.status != 200 {
        return None;
    }
    let v = json(r);
    Some((
        v["status"].as_str()?.to_owned(),
        v["token"].as_str()?.to_owned(),
        v["lease_ttl_s"].as_u64()?,
    ))
}

fn http_request(method: &str, path: &str, session: Option<&str>, body: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: sim\r\n");
    if let Some(s) = session {
        r.push_str(&format!("X-Dflockd-Session: {s}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

const LOCKS: [&str; 2] = ["a", "b"];
const CHANNELS: [&str; 2] = ["ch.1", "ch.2"];
const BOGUS_SESSION: &str = "0123456789abcdef0123456789abcdef";

/// A client's memory: its sessions and the grants it read.
struct Mind {
    sessions: Vec<String>,
    /// (sem, key, token, session)
    held: Vec<(bool, String, String, String)>,
    published: u64,
    seq: u64,
}

/// A random request (kind, session, bytes).
fn request(rng: &mut Rng, mind: &mut Mind, client: usize) -> (Kind, Option<String>, Vec<u8>) {
    use crate::http::Op;
    let session = if mind.sessions.is_empty() || rng.chance(30) {
        BOGUS_SESSION.to_string()
    } else {
        mind.sessions[rng.below(mind.sessions.len() as u64) as usize].clone()
    };
    let key = LOCKS[rng.below(2) as usize].to_string();
    let lease = |rng: &mut Rng| rng.chance(500).then(|| 1 + rng.below(4));
    let lease_field = |l: Option<u64>| l.map_or(String::new(), |l| format!(",\"lease_ttl_s\":{l}"));
    let t = rng.below(4);
    let lock =
        |sem: bool, op: Op, key: &str, limit: u64, lease_s, token: Option<String>| Kind::Lock {
            sem,
            op,
            key: key.to_string(),
            limit,
            lease_s,
            timeout_s: t,
            token,
        };
    let path = |sem: bool, key: &str, op: Op| {
        let base = if sem { "semaphores" } else { "locks" };
        match op {
            Op::Acquire => format!("/v1/{base}/{key}"),
            Op::Release => format!("/v1/{base}/{key}/release"),
            Op::Renew => format!("/v1/{base}/{key}/renew"),
            Op::Enqueue => format!("/v1/{base}/{key}/enqueue"),
            Op::Wait => format!("/v1/{base}/{key}/wait"),
        }
    };
    if mind.sessions.is_empty() && rng.chance(800) {
        return (
            Kind::Create,
            None,
            http_request("POST", "/v1/sessions", None, ""),
        );
    }
    match rng.below(24) {
        0..=1 => (
            Kind::Create,
            None,
            http_request("POST", "/v1/sessions", None, ""),
        ),
        2..=6 => {
            let l = lease(rng);
            let body = format!("{{\"acquire_timeout_s\":{t}{}}}", lease_field(l));
            let p = path(false, &key, Op::Acquire);
            let k = lock(false, Op::Acquire, &key, 1, l, None);
            (
                k,
                Some(session.clone()),
                http_request("POST", &p, Some(&session), &body),
            )
        }
        7..=8 => {
            let l = lease(rng);
            let limit = 1 + rng.below(2);
            let body = format!(
                "{{\"acquire_timeout_s\":{t},\"limit\":{limit}{}}}",
                lease_field(l)
            );
            let p = path(true, "s", Op::Acquire);
            let k = lock(true, Op::Acquire, "s", limit, l, None);
            (
                k,
                Some(session.clone()),
                http_request("POST", &p, Some(&session), &body),
            )
        }
        9..=11 => {
            // Release or renew one of its grants (mostly on the session
            // and key it was granted on).
            let renew = rng.chance(400);
            let (sem, k, tok, s) = if !mind.held.is_empty() && rng.chance(900) {
                mind.held[rng.below(mind.held.len() as u64) as usize].clone()
            } else {
                (
                    false,
                    key.clone(),
                    BOGUS_SESSION.to_string(),
                    session.clone(),
                )
            };
            let s = if rng.chance(50) { session.clone() } else { s };
            let op = if renew { Op::Renew } else { Op::Release };
            let l = if renew { lease(rng) } else { None };
            let body = format!("{{\"token\":\"{tok}\"{}}}", lease_field(l));
            let p = path(sem, &k, op);
            let kind = lock(sem, op, &k, 1, l, Some(tok));
            (
                kind,
                Some(s.clone()),
                http_request("POST", &p, Some(&s), &body),
            )
        }
        12 => {
            let l = lease(rng);
            let body = if l.is_none() && rng.chance(500) {
                String::new()
            } else {
                format!("{{{}}}", lease_field(l).trim_start_matches(','))
            };
            let p = path(false, &key, Op::Enqueue);
            let k = lock(false, Op::Enqueue, &key, 1, l, None);
            (
                k,
                Some(session.clone()),
                http_request("POST", &p, Some(&session), &body),
            )
        }
        13 => {
            let body = format!("{{\"timeout_s\":{t}}}");
            let p = path(false, &key, Op::Wait);
            let k = lock(false, Op::Wait, &key, 1, None, None);
            (
                k,
                Some(session.clone()),
                http_request("POST", &p, Some(&session), &body),
            )
        }
        14 => {
            let p = format!("/v1/sessions/{session}");
            (
                Kind::Delete,
                Some(session.clone()),
                http_request("DELETE", &p, None, ""),
            )
        }
        15..=16 => {
            let p = format!("/v1/sessions/{session}/ping");
            (
                Kind::Ping,
                Some(session.clone()),
                http_request("POST", &p, None, ""),
            )
        }
        17..=18 => {
            mind.published += 1;
            let ch = CHANNELS[rng.below(2) as usize];
            let body = format!("{{\"payload\":\"h{client}.{}\"}}", mind.published);
            let p = format!("/v1/signals/{ch}");
            (Kind::Publish, None, http_request("POST", &p, None, &body))
        }
        19 => (Kind::Other, None, http_request("GET", "/health", None, "")),
        20 => (
            Kind::Other,
            None,
            http_request("GET", "/v1/stats", None, ""),
        ),
        _ => {
            // Invalid requests, each answered by the front.
            let (method, p, s, body): (&str, String, Option<&str>, &str) = match rng.below(7) {
                0 => (
                    "POST",
                    path(false, &key, Op::Acquire),
                    Some(&session),
                    "{bad",
                ),
                1 => ("POST", path(false, &key, Op::Acquire), None, "{}"),
                2 => ("GET", path(false, &key, Op::Acquire), Some(&session), ""),
                3 => ("POST", "/v1/nowhere".into(), None, ""),
                4 => ("POST", path(true, "s", Op::Acquire), Some(&session), "{}"),
                5 => ("POST", "/v1/sessions/xyz/ping".into(), None, ""),
                _ => {
                    // A head the parser refuses: answered, then closed.
                    let bytes = b"GET /v1/stats\x01 HTTP/1.1\r\nHost: sim\r\n\r\n".to_vec();
                    return (Kind::Other, None, bytes);
                }
            };
            let bytes = http_request(method, &p, s, body);
            (Kind::Other, s.map(str::to_owned), bytes)
        }
    }
}

/// One HTTP client's life.
pub async fn run(world: Rc<World>, client: usize, mut rng: Rng) {
    let mut conn: Option<usize> = None;
    let mut stream: Option<usize> = None;
    let mut mind = Mind {
        sessions: Vec::new(),
        held: Vec::new(),
        published: 0,
        seq: 0,
    };
    let mut stalled_until = 0u64;
    loop {
        let now = world.exec.now();
        let quiet = now >= world.quiesce_at;
        if now >= stalled_until || quiet {
            for slot in [&mut conn, &mut stream] {
                let Some(i) = *slot else { continue };
                let mut recs = world.http.borrow_mut();
                let c = &mut recs[i];
                for k in c.take_input(now) {
                    learn(&mut mind, &c.reqs[k]);
                }
                // A stream refused (503, 400) leaves an idle connection.
                let refused = c.reqs.first().is_some_and(|r| {
                    r.kind == Kind::Stream && r.resp.as_ref().is_some_and(|r| r.status != 200)
                });
                if c.eof || c.stream_ended || refused || c.closing && !c.busy() {
                    if !c.eof && !c.client_closed {
                        c.close(false);
                    }
                    *slot = None;
                }
            }
        }
        if quiet {
            sleep_ms(50).await;
            continue;
        }
        match conn {
            None => {
                if rng.chance(300) {
                    conn = world.connect_http(client);
                }
            }
            Some(i) => {
                let mut recs = world.http.borrow_mut();
                let c = &mut recs[i];
                if c.half.is_some() {
                    if rng.chance(700) {
                        c.send_rest(now);
                    }
                } else if !c.busy() {
                    match rng.below(100) {
                        0..=59 => {
                            // Now and then two, pipelined (hyper answers
                            // them in order, one after the other).
                            for _ in 0..if rng.chance(150) { 2 } else { 1 } {
                                let (k, s, b) = request(&mut rng, &mut mind, client);
                                mind.seq += 1;
                                c.send(mind.seq, k, s, b, usize::MAX, now);
                            }
                        }
                        60..=62 => {
                            let (k, s, b) = request(&mut rng, &mut mind, client);
                            let cut = 1 + rng.below(b.len() as u64 - 1) as usize;
                            mind.seq += 1;
                            c.send(mind.seq, k, s, b, cut, now);
                        }
                        63..=65 => stalled_until = now + rng.below(8_000),
                        66..=67 => {
                            c.close(rng.chance(300));
                            conn = None;
                        }
                        _ => {}
                    }
                } else if rng.chance(15) {
                    // Gone mid-request (a long poll, most often).
                    c.close(rng.chance(300));
                    conn = None;
                }
            }
        }
        match stream {
            None => {
                if rng.chance(40) {
                    if let Some(i) = world.connect_http(client) {
                        let pattern = ["ch.*", "ch.1", "%3E", "ch.2"][rng.below(4) as usize];
                        let group = if rng.chance(200) { "&group=g" } else { "" };
                        let p = format!("/v1/signals?pattern={pattern}{group}");
                        let b = http_request("GET", &p, None, "");
                        mind.seq += 1;
                        world.http.borrow_mut()[i].send(
                            mind.seq,
                            Kind::Stream,
                            None,
                            b,
                            usize::MAX,
                            now,
                        );
                        stream = Some(i);
                    }
                }
            }
            Some(i) => {
                if rng.chance(8) {
                    // Gone mid-stream.
                    world.http.borrow_mut()[i].close(rng.chance(300));
                    stream = None;
                }
            }
        }
        let pause = [0, 1, 10, 100, 1_000, 3_000][rng.below(6) as usize];
        sleep_ms(pause + rng.below(pause + 1)).await;
    }
}

/// What a response teaches the client: a new session, a session gone, a
/// grant.
fn learn(mind: &mut Mind, r: &Req) {
    let Some(resp) = &r.resp else { return };
    match &r.kind {
        Kind::Create => {
            if let Some(id) = json(resp)["session_id"].as_str() {
                mind.sessions.push(id.to_owned());
                if mind.sessions.len() > 3 {
                    mind.sessions.remove(0);
                }
            }
        }
        Kind::Lock { sem, key, .. } => {
            if resp.status == 410 {
                if let Some(s) = &r.session {
                    mind.sessions.retain(|x| x != s);
                    mind.held.retain(|h| &h.3 != s);
                }
            } else if let (Some((_, tok, _)), Some(s)) = (grant(resp), &r.session) {
                mind.held.push((*sem, key.clone(), tok, s.clone()));
                if mind.held.len() > 8 {
                    mind.held.remove(0);
                }
            }
        }
        Kind::Delete => {
            if let Some(s) = &r.session {
                mind.sessions.retain(|x| x != s);
                mind.held.retain(|h| &h.3 != s);
            }
        }
        _ => {}
    }
}
