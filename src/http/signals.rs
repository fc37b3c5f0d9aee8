//! Signals over HTTP (reference §7.4, §7.7; `spec/http.md` §7): publishing
//! with `POST /v1/signals/{channel}` and subscribing with the Server-Sent
//! Events stream `GET /v1/signals?pattern=P[&group=G]`.
//!
//! Both are the TCP commands, applied to the same core: a publish is one
//! `signal` request on a short-lived core connection that lives only under
//! one acquisition of the core lock (connect, authenticate, `signal`,
//! disconnect), so its `delivered` count is exactly what a TCP `signal`
//! would answer (Decision D13) and nothing outlives the request. A stream
//! is a hidden HTTP session (a core connection counted like any session)
//! that issued `listen`; the core pushes to its mailbox as to a TCP
//! connection's, and [`SseBody`] turns each push into one SSE event.
//!
//! Back-pressure is the core's: the body reports the pushes it has handed to
//! hyper with [`crate::engine::Input::PushesWritten`], so a client that stops
//! reading fills its 64-frame queue and the core evicts it. hyper polls a
//! body only while its write buffer has room, so an evicted stream whose
//! client never reads cannot notice the eviction itself; `cut_when_stuck`,
//! raced against the hyper connection, drops the connection then. The same
//! race ends streams when a drain begins, and [`WriteDeadline`] gives every
//! write to an HTTP client [`WRITE_DEADLINE`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite, Stream};
use http_body_util::Either;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use hyper::StatusCode;
use log::Level;
use serde::Deserialize;
use serde_json::json;

use super::sessions::Session;
use super::{
    bad_request, create_error, draining, error, json_resp, parse, path_key, percent_decode,
    read_body, unexpected, Front, Resp,
};
use crate::core::Effect;
use crate::engine::mailbox::Delivery;
use crate::engine::{Engine, Input, Transport};
use crate::logging::{self, Cause};
use crate::rt;
use crate::sync::Arc;
use crate::wire::{
    listen_request, max_signal_payload, signal_request, Key, ParseError, Reply, Request, Status,
};

/// Longest time one write to an HTTP client may stay blocked before the
/// connection is closed (reference §7.7: a stuck SSE client ends its stream).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// SSE events gathered into one body chunk when several are waiting.
const CHUNK_BYTES: usize = 64 * 1024;

// ----- publish -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    payload: String,
}

/// `POST /v1/signals/{channel}`: sessionless; answers
/// `200 {"delivered": n}`.
pub(super) async fn publish(front: &Front, param: Option<String>, body: Incoming) -> Resp {
    let channel = match path_key(param.as_deref(), "channel") {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let b: PublishBody = match parse(&body) {
        Ok(b) => b,
        Err(detail) => return bad_request(&detail),
    };
    let payload = b.payload.into_bytes();
    // The protocol cannot carry these (a line ends at LF; trailing CRs are
    // stripped), so neither can a signal published over HTTP.
    if payload.iter().any(|&c| c == b'\r' || c == b'\n') {
        return bad_request("payload must not contain CR or LF");
    }
    let max = max_signal_payload(&channel);
    let request = match signal_request(channel, &payload) {
        Ok(r) => r,
        Err(ParseError::BadKey) => {
            return bad_request("channel must not contain the wildcards `*` or `>`")
        }
        Err(_) if payload.len() > max => {
            return bad_request(&format!(
                "payload too long: at most {max} bytes on this channel"
            ))
        }
        Err(_) => return bad_request("payload must not be blank"),
    };
    match signal_once(front, request) {
        Some(Reply::OkInt(n)) => json_resp(StatusCode::OK, &json!({ "delivered": n })),
        Some(Reply::Status(Status::ErrorDraining)) => draining(),
        other => unexpected(other),
    }
}

/// Applies `request` (a `signal`) on a core connection that exists only for
/// it: connected, authenticated when the server has a token, and
/// disconnected under the same lock, so no one ever sees it and nothing of
/// it is left behind. Returns the core's last reply to it.
fn signal_once(front: &Front, request: Request) -> Option<Reply> {
    let mut effects: Vec<Effect> = Vec::new();
    let mut door = front.engine.door();
    let conn = door.connect(Transport::Http, None);
    if let Some(token) = front.auth_token.clone() {
        let auth = Request::Auth {
            token: token.into_boxed_slice(),
        };
        door.apply(conn, Input::Request(auth), &mut effects);
    }
    door.apply(conn, Input::Request(request), &mut effects);
    door.apply(conn, Input::Disconnect, &mut effects);
    drop(door);
    // Only this connection's effects are left; it subscribed to nothing, so
    // they are its replies (and a close if the server is draining).
    effects.into_iter().rev().find_map(|e| match e {
        Effect::Reply { reply, .. } => Some(reply),
        _ => None,
    })
}

// ----- subscribe ---------------------------------------------------------

/// Decodes an `application/x-www-form-urlencoded` query component: `+` is a
/// space, `%XX` a byte. `None` on a malformed escape.
fn form_decode(s: &str) -> Option<Vec<u8>> {
    percent_decode(&s.replace('+', " "))
}

/// Decoded `pattern` and `group` query parameters, when present.
type StreamParams = (Option<Vec<u8>>, Option<Vec<u8>>);

/// `pattern` and `group` of a query string (the first of each wins; other
/// parameters are ignored).
fn stream_params(query: &str) -> Result<StreamParams, &'static str> {
    let (mut pattern, mut group) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match form_decode(name).as_deref() {
            Some(b"pattern") => &mut pattern,
            Some(b"group") => &mut group,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(form_decode(value).ok_or("invalid percent-encoding in query")?);
        }
    }
    Ok((pattern, group))
}

/// The `listen` request a stream's query stands for, or the detail of its
/// `400`. Checked before anything is allocated.
pub(super) fn stream_request(query: Option<&str>) -> Result<Request, String> {
    let (pattern, group) = stream_params(query.unwrap_or(""))?;
    let pattern = pattern.ok_or("query parameter `pattern` required")?;
    let pattern = Key::new(&pattern)
        .map_err(|_| "invalid pattern: 1 to 256 bytes, no space, tab, CR or LF")?;
    let group = group.unwrap_or_default();
    if !group.is_empty() && Key::new(&group).is_err() {
        return Err("invalid group: at most 256 bytes, no space, tab, CR or LF".into());
    }
    listen_request(pattern, &group).map_err(|_| {
        "invalid pattern: `*` and `>` must be whole tokens, and `>` only the last one".into()
    })
}

/// `GET /v1/signals`: opens a hidden session, subscribes it, and answers
/// with the event stream.
pub(super) fn subscribe(
    front: &Arc<Front>,
    ip: IpAddr,
    slot: &Arc<StreamSlot>,
    request: Request,
) -> Resp {
    let engine = &front.engine;
    let session = match front.sessions.create(front, ip) {
        Ok(s) => s,
        Err(e) => {
            if !matches!(e, super::sessions::CreateError::Random) {
                super::warn_ip(
                    Cause::SessionCap,
                    ip,
                    "SSE stream refused: session cap reached",
                );
            }
            return create_error(e);
        }
    };
    let (effects, _) = engine.apply(session.conn, Input::Request(request));
    let reply = effects.into_iter().find_map(|e| match e {
        Effect::Reply { reply, .. } => Some(reply),
        _ => None,
    });
    if reply != Some(Reply::Ok) {
        front.sessions.kill(engine, &session);
        return match reply {
            // The pattern was checked above, so a refusal is the
            // subscription cap. (A fresh session has no other subscription,
            // so `--max-subscriptions` ≥ 1 never refuses it today.)
            Some(Reply::Status(Status::Error)) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "max_subscriptions",
                "--max-subscriptions reached",
            ),
            Some(Reply::Status(Status::ErrorDraining)) => draining(),
            Some(Reply::Status(Status::ErrorAuth)) => {
                error(StatusCode::UNAUTHORIZED, "unauthorized", "")
            }
            None if engine.is_draining() => draining(),
            other => unexpected(other),
        };
    }
    let body = SseBody::new(front.clone(), session, slot.clone());
    let mut r = hyper::Response::new(Either::Right(body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Appends one SSE event for a push. Channel and payload are byte strings
/// (Decision D15); bytes that are not UTF-8 are shown as U+FFFD.
fn encode_event(channel: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    // Escaped straight into `out`; writing a string to a `Vec` cannot fail.
    let json_string = |bytes: &[u8], out: &mut Vec<u8>| {
        let _ = serde_json::to_writer(&mut *out, &*String::from_utf8_lossy(bytes));
    };
    out.extend_from_slice(b"event: sig\ndata: {\"channel\":");
    json_string(channel, out);
    out.extend_from_slice(b",\"payload\":");
    json_string(payload, out);
    out.extend_from_slice(b"}\n\n");
}

/// The body of an SSE response: `:ok`, then one event per push delivered to
/// the hidden session, until the session ends (eviction, drain). Dropping
/// it (the stream ended, or hyper gave up on the client) ends the session,
/// which removes the subscription.
pub struct SseBody {
    front: Arc<Front>,
    session: Arc<Session>,
    slot: Arc<StreamSlot>,
    started: bool,
    done: bool,
    /// Pushes in the chunk last handed to hyper; reported written to the
    /// core when hyper polls again (it has taken the chunk by then).
    handed: usize,
    /// `--http-sse-ping-interval` > 0: each tick refreshes the session, so
    /// the idle sweeper sees a live stream.
    ping: Option<rt::Interval>,
    /// Interval 0: the stream counts as a request in flight instead, which
    /// the sweeper never reaps.
    pinned: bool,
}

impl SseBody {
    fn new(front: Arc<Front>, session: Arc<Session>, slot: Arc<StreamSlot>) -> SseBody {
        let interval = front.settings.sse_ping_interval_s;
        let pinned = interval == 0;
        if pinned {
            session.in_flight.fetch_add(1, Ordering::SeqCst);
        }
        slot.set(session.clone());
        SseBody {
            ping: (interval > 0).then(|| rt::Interval::new(Duration::from_secs(interval))),
            front,
            session,
            slot,
            started: false,
            done: false,
            handed: 0,
            pinned,
        }
    }
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.started {
            this.started = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b":ok\n\n")))));
        }
        if this.handed > 0 {
            let n = std::mem::take(&mut this.handed);
            let n = n.try_into().unwrap_or(u32::MAX);
            this.front
                .engine
                .apply(this.session.conn, Input::PushesWritten(n));
        }
        if let Some(t) = this.ping.as_mut() {
            while let Poll::Ready(Some(_)) = Pin::new(&mut *t).poll_next(cx) {
                this.session.touch();
            }
        }
        let mailbox = &this.session.mailbox;
        let mut out = Vec::new();
        let mut pushes = 0;
        loop {
            let d = if out.is_empty() {
                match mailbox.poll_recv(cx) {
                    Poll::Ready(d) => d,
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match mailbox.try_recv() {
                    Some(d) => d,
                    None => break,
                }
            };
            match d {
                Delivery::Push { channel, payload } => {
                    if pushes > 0 && crate::planted::is(crate::planted::Bug::SseChunkDrop) {
                        pushes += 1;
                        continue;
                    }
                    encode_event(channel.as_bytes(), &payload, &mut out);
                    pushes += 1;
                    if out.len() >= CHUNK_BYTES {
                        break;
                    }
                }
                Delivery::Close(_) => {
                    note_eviction(&this.front.engine, &this.session);
                    this.done = true;
                    break;
                }
                Delivery::Abort => {
                    this.done = true;
                    break;
                }
                // No request is ever blocked on a stream's session.
                Delivery::Reply(_) => {}
            }
        }
        if out.is_empty() {
            return Poll::Ready(None);
        }
        this.handed = pushes;
        Poll::Ready(Some(Ok(Frame::data(out.into()))))
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.front.sessions.kill(&self.front.engine, &self.session);
        if self.pinned {
            self.session.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        self.slot.clear(&self.session);
    }
}

// ----- per-connection watch ----------------------------------------------

/// The SSE stream (if any) being served on one HTTP connection.
#[derive(Default)]
pub struct StreamSlot {
    current: std::sync::Mutex<Option<Arc<Session>>>,
    changed: event_listener::Event,
    /// A stream was ever set here: until then [`cut_when_stuck`] need not
    /// be polled (see [`super::serve_connection`]).
    armed: std::sync::atomic::AtomicBool,
}

impl StreamSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Session>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, s: Arc<Session>) {
        *self.lock() = Some(s);
        self.armed.store(true, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
    }

    /// Whether a stream was ever set on this connection.
    pub(super) fn armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    fn clear(&self, s: &Session) {
        let mut cur = self.lock();
        if cur.as_deref().is_some_and(|c| std::ptr::eq(c, s)) {
            *cur = None;
        }
        drop(cur);
        self.changed.notify(usize::MAX);
    }
}

/// Runs beside one HTTP connection and resolves when the connection must be
/// dropped: its stream's session was ended (slow-consumer eviction, drain)
/// while hyper, stuck writing to a client that does not read, cannot poll
/// the body to notice. When the body is polled it takes the close itself
/// and ends the stream cleanly, so this never fires for a reading client.
/// When a drain begins, it ends the stream's session.
pub(super) async fn cut_when_stuck(front: &Front, slot: &StreamSlot) {
    loop {
        let changed = slot.changed.listen();
        let Some(session) = slot.lock().clone() else {
            changed.await;
            continue;
        };
        let close = async {
            session.mailbox.closed().await;
            note_eviction(&front.engine, &session);
            true
        };
        let drain = async {
            front.engine.drain_begun().await;
            front.sessions.kill(&front.engine, &session);
            std::future::pending().await
        };
        let other = async {
            changed.await;
            false
        };
        if futures_lite::future::or(close, futures_lite::future::or(drain, other)).await {
            return;
        }
    }
}

/// Logs a slow-subscriber eviction of a stream's session (rate-limited per
/// peer). The core closed the session while it was alive and the server
/// was not draining: only an eviction does that (a kill marks the session
/// dead before its close).
fn note_eviction(engine: &Engine, session: &Session) {
    if session.dead.load(Ordering::SeqCst) || engine.is_draining() {
        return;
    }
    let ip = session.ip;
    if let Some(suppressed) = logging::allow(Level::Warn, Cause::SlowConsumer, Some(ip)) {
        log::warn!(
            peer:% = ip, transport = "sse", suppressed;
            "closed a slow subscriber: its unwritten signal pushes reached the limit"
        );
    }
}

// ----- write deadline ----------------------------------------------------

/// An HTTP connection's socket with a deadline on every write: a write (or
/// flush) that makes no progress for the limit fails with `TimedOut`, which
/// ends the hyper connection.
pub struct WriteDeadline<I> {
    io: I,
    limit: Duration,
    timer: Option<rt::Sleep>,
}

impl<I> WriteDeadline<I> {
    pub fn new(io: I, limit: Duration) -> Self {
        WriteDeadline {
            io,
            limit,
            timer: None,
        }
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.timer = None;
            return r;
        }
        let limit = self.limit;
        let t = self.timer.get_or_insert_with(|| rt::Sleep::after(limit));
        if Pin::new(t).poll(cx).is_ready() {
            self.timer = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "write to the HTTP client timed out",
            )));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.check(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.check(cx, r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.check(cx, r)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_close(cx);
        this.check(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_queries() {
        let ok = |q: &str| match stream_request(Some(q)) {
            Ok(Request::Listen { pattern, group }) => {
                (pattern.as_bytes().to_vec(), group.map(|g| g.to_vec()))
            }
            other => panic!("{q:?}: {other:?}"),
        };
        assert_eq!(ok("pattern=a.*"), (b"a.*".to_vec(), None));
        assert_eq!(
            ok("group=w&pattern=a.%3E&pattern=ignored&x=1"),
            (b"a.>".to_vec(), Some(b"w".to_vec()))
        );
        assert_eq!(ok("pattern=a&group="), (b"a".to_vec(), None));
        assert_eq!(ok("pattern=%2Fx%ff"), (b"/x\xff".to_vec(), None));
        for bad in [
            "",
            "group=w",
            "pattern=",
            "pattern=a*",
            "pattern=a.>.b",
            "pattern=a+b",
            "pattern=a%20b",
            "pattern=%zz",
            "pattern=a&group=x%0Dy",
            "pattern=a&group=x%0Ay",
            "pattern=a&group=x+y",
        ] {
            assert!(stream_request(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(stream_request(None).is_err());
    }

    #[test]
    fn events_are_json_escaped() {
        let mut out = Vec::new();
        encode_event(b"a.b", b"say \"hi\" \\ \xc3\xa9 \xff", &mut out);
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "event: sig\ndata: {\"channel\":\"a.b\",\"payload\":\"say \\\"hi\\\" \\\\ é \u{fffd}\"}\n\n"
        );
    }

    /// A writer that never makes progress.
    struct Stuck;

    impl AsyncRead for Stuck {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[test]
    fn a_stuck_write_fails_at_the_deadline() {
        use futures_lite::AsyncWriteExt;
        let mut w = WriteDeadline::new(Stuck, Duration::from_millis(20));
        let r = futures_lite::future::block_on(w.write_all(b"x"));
        assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        let r = futures_lite::future::block_on(w.flush());
        assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
    }
}
