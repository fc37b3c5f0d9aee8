//! One TCP connection's task.
//!
//! The loop is: decode every complete request in the read buffer, apply
//! them to the core in order under one lock acquisition, write all the
//! replies with one write, then wait for more bytes, a delivery in the
//! mailbox, or a read deadline. Pipelined requests are therefore answered
//! in order and in batches.
//!
//! A request the core leaves unanswered (a queued `l`/`sl`/`w`/`sw`) blocks
//! the connection: later requests stay queued here, undecided, until the
//! answer arrives through the mailbox. While blocked the task keeps reading
//! (up to [`BLOCKED_READ_CAP`] bytes) so it notices at once when the peer
//! goes away, and the core withdraws the waiter.
//!
//! Signal pushes for this connection arrive as effects of its own requests
//! (a connection signalling itself) or through the mailbox; either way they
//! are encoded into the same output buffer as replies, in core order, so a
//! line is never split. A blocked connection still wakes for them. After
//! each write the number of pushes it carried is reported to the core
//! ([`crate::core::Core::pushes_written`]), which bounds the pushes a
//! connection may have unwritten (Decision D13).
//!
//! Read deadlines (Decision D11): a started request must make progress, one
//! line per `--read-timeout`; an idle connection is closed with `error` after
//! `--read-timeout` unless it owns something in the core (a held slot, a
//! queue position, a two-phase record, a signal subscription), in which
//! case its leases are its liveness check and TCP keepalive finds dead
//! peers.
//!
//! Log lines (src/logging.rs): a malformed request, a failed `auth`, a
//! request cut at its read deadline and a slow-subscriber eviction are
//! warnings with the peer's address, each rate-limited per peer; opening
//! and closing (with how long it lasted and what it owned) are debug
//! lines. Never a key, token or payload.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use log::Level;

use super::mailbox::{Delivery, Mailbox};
use super::{register, unregister, Shared};
use crate::core::{ConnId, Effect, Owned};
use crate::logging::{self, Cause};
use crate::sync::Arc;
use crate::wire::{
    decode_request, encode_push, encode_reply, Decoded, ParseError, Reply, Request, Status,
};

/// Bytes read ahead behind a blocked request before reading pauses.
pub const BLOCKED_READ_CAP: usize = 64 * 1024 + 1024;
/// Requests decoded ahead of the core in one batch.
const BATCH: usize = 64;
/// Replies buffered before a write is forced mid-batch.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;

/// One decoded request, valid or not.
enum Pending {
    Request(Request),
    Invalid(ParseError),
}

enum Wake {
    Read(std::io::Result<usize>),
    Mail(Delivery),
    Deadline,
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve(shared: &Arc<Shared>, stream: async_net::TcpStream) {
    tune(&stream);
    let peer = stream.peer_addr().ok();
    serve_from(shared, stream, peer).await;
}

/// Socket options for every accepted TCP connection, plain or TLS:
/// no Nagle delay, and keepalive so that vanished peers are noticed.
pub fn tune(stream: &async_net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Serves any byte stream as one connection (TCP, TLS, or an in-memory
/// stream in the fuzz target) until it closes, then cleans up in the core.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(shared: &Shared, stream: S) {
    serve_from(shared, stream, None).await;
}

/// [`serve_stream`] for a stream from `peer` (named in log lines).
pub async fn serve_from<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    mut stream: S,
    peer: Option<SocketAddr>,
) {
    let mailbox = Arc::new(Mailbox::new());
    let id = register(shared, mailbox.clone());
    let opened = Instant::now();
    let peer = Peer(peer);
    log::debug!(conn = id.0, peer:% = peer; "connection opened");
    let end = run(shared, &mut stream, id, &mailbox, peer).await;
    let owned = if log::log_enabled!(Level::Debug) {
        shared.lock().core.owned(id)
    } else {
        Owned::default()
    };
    unregister(shared, id);
    log::debug!(
        conn = id.0, peer:% = peer, duration_ms = opened.elapsed().as_millis() as u64, end,
        held = owned.held, waiting = owned.waiting, records = owned.records,
        subscriptions = owned.subscriptions;
        "connection closed"
    );
}

/// A peer address for log lines: `-` when unknown (an in-memory stream).
#[derive(Clone, Copy)]
struct Peer(Option<SocketAddr>);

impl Peer {
    fn ip(self) -> Option<std::net::IpAddr> {
        self.0.map(|a| a.ip())
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A warning about `peer`, if its (cause, peer) window lets one through.
fn warn_peer(cause: Cause, peer: Peer, what: impl FnOnce(u64)) {
    if let Some(suppressed) = logging::allow(Level::Warn, cause, peer.ip()) {
        what(suppressed);
    }
}

/// Runs the connection until it ends; returns how it ended (for the log).
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    stream: &mut S,
    id: ConnId,
    mailbox: &Mailbox,
    peer: Peer,
) -> &'static str {
    let read_timeout = Duration::from_secs(shared.cfg.read_timeout_s);
    let write_timeout = match shared.cfg.write_timeout_s {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    // Buffers start empty and grow with use, so an idle connection costs
    // little memory.
    let mut rbuf: Vec<u8> = Vec::new();
    let mut wbuf: Vec<u8> = Vec::new();
    let mut more_work = false;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut effects: Vec<Effect> = Vec::new();
    let mut blocked = false;
    let mut closing = false;
    let mut auth_failed = false;
    let mut evicted = false;
    // The read deadline (protocol.md §2.4). It moves with every request, so
    // the reactor timer is not re-armed each time: it stays armed at an
    // earlier instant and, when it fires early, is re-armed to `deadline`.
    let mut deadline = Instant::now() + read_timeout;
    let mut timer = async_io::Timer::at(deadline);
    // Whether the read buffer held part of a request when the deadline was
    // last armed, and whether a request was answered since.
    let mut partial = false;
    let mut answered = false;
    // Signal pushes in `wbuf`, reported to the core once written (D13).
    let mut pushes = 0usize;

    loop {
        // 1. Decode what we can, then apply it.
        while !blocked && !closing {
            let mut consumed = 0;
            while pending.len() < BATCH {
                match decode_request(&rbuf[consumed..]) {
                    Decoded::NeedMore => break,
                    Decoded::Request { req, consumed: n } => {
                        consumed += n;
                        pending.push_back(Pending::Request(req));
                    }
                    Decoded::Invalid { error, consumed: n } => {
                        warn_peer(Cause::ProtocolError, peer, |suppressed| {
                            log::warn!(
                                peer:% = peer, code = error.code(), reason = error.reason(),
                                suppressed;
                                "malformed request"
                            );
                        });
                        consumed += n.max(1).min(rbuf.len() - consumed);
                        pending.push_back(Pending::Invalid(error));
                        if error.is_fatal() {
                            consumed = rbuf.len();
                            break;
                        }
                    }
                }
            }
            rbuf.drain(..consumed);
            answered |= consumed > 0;
            if pending.is_empty() {
                break;
            }
            if matches!(pending.front(), Some(Pending::Request(Request::Stats))) {
                // Built in slices with the core lock released in between
                // (`server::introspect`), so answered on its own, in order.
                pending.pop_front();
                let before = effects.len();
                super::introspect::stats_reply(shared, id, &mut effects).await;
                if effects[before..]
                    .iter()
                    .any(|e| matches!(e, Effect::Close { .. }))
                {
                    closing = true;
                    pending.clear();
                }
            } else {
                let mut inner = shared.lock();
                while let Some(p) = pending.pop_front() {
                    if matches!(p, Pending::Request(Request::Stats)) {
                        pending.push_front(p);
                        break;
                    }
                    let now = shared.clock(&inner);
                    let before = effects.len();
                    match p {
                        Pending::Request(req) => inner.core.handle(now, id, req, &mut effects),
                        Pending::Invalid(e) => {
                            inner
                                .core
                                .handle_invalid(now, id, e.is_fatal(), &mut effects)
                        }
                    }
                    shared.after_core(&mut inner, &mut effects, Some(id));
                    // `after_core` left only our own effects, in order.
                    let mine = &effects[before..];
                    if mine.iter().any(|e| matches!(e, Effect::Close { .. })) {
                        closing = true;
                        pending.clear();
                        break;
                    }
                    if !mine.iter().any(|e| matches!(e, Effect::Reply { .. })) {
                        blocked = true;
                        break;
                    }
                    if effects.len() >= BATCH {
                        break;
                    }
                }
            }
            encode_own(
                &mut effects,
                &mut wbuf,
                &mut pushes,
                &mut auth_failed,
                &mut evicted,
            );
            if wbuf.len() >= WRITE_BATCH_BYTES {
                more_work = true;
                break;
            }
        }

        // 2. Write everything answered so far.
        if !wbuf.is_empty() {
            match write(stream, &wbuf, write_timeout, mailbox).await {
                Ok(()) => {}
                Err(WriteEnd::Failed) => return "write failed or timed out",
                Err(WriteEnd::CloseRequested) if shared.is_shutting_down() => {
                    return "closed at the end of the drain"
                }
                Err(WriteEnd::CloseRequested) => {
                    warn_slow_consumer(peer);
                    return "evicted as a slow subscriber";
                }
            }
            wbuf.clear();
            if pushes > 0 {
                shared
                    .lock()
                    .core
                    .pushes_written(id, std::mem::take(&mut pushes));
            }
        }
        if closing {
            if evicted {
                warn_slow_consumer(peer);
                return "evicted as a slow subscriber";
            }
            if auth_failed {
                warn_peer(Cause::AuthFailure, peer, |suppressed| {
                    log::warn!(peer:% = peer, suppressed; "authentication failed");
                });
                if shared.cfg.auth_failure_pause_ms > 0 {
                    async_io::Timer::after(Duration::from_millis(shared.cfg.auth_failure_pause_ms))
                        .await;
                }
                return "authentication failed";
            }
            return "closed by the server";
        }
        if std::mem::take(&mut more_work) || (!blocked && !pending.is_empty()) {
            // A batch boundary: keep processing before waiting.
            continue;
        }

        // 3. Arm the read deadline: a fresh period after every answered
        // request, and one period for a partial request from when it was
        // first seen (not extended by further bytes: slowloris guard).
        if std::mem::take(&mut answered) || (!rbuf.is_empty() && !partial) {
            deadline = Instant::now() + read_timeout;
        }
        partial = !blocked && !rbuf.is_empty();

        // 4. Wait.
        let can_read = !blocked || rbuf.len() < BLOCKED_READ_CAP;
        let wake = wait(
            stream,
            &mut rbuf,
            mailbox,
            can_read,
            (!blocked).then_some(&mut timer),
        )
        .await;
        match wake {
            Wake::Read(Ok(0)) => return "closed by the peer",
            Wake::Read(Err(_)) => return "read failed",
            Wake::Read(Ok(_)) => {}
            Wake::Mail(first) => {
                // Take everything delivered so far: one write for a burst.
                let mut next = Some(first);
                while let Some(d) = next {
                    match d {
                        // Another connection's input closed this one: only
                        // a slow-subscriber eviction does (or a forced
                        // close at the end of a drain).
                        Delivery::Close if shared.is_shutting_down() => {
                            return "closed at the end of the drain"
                        }
                        Delivery::Close => {
                            warn_slow_consumer(peer);
                            return "evicted as a slow subscriber";
                        }
                        Delivery::Reply(reply) => {
                            blocked = false;
                            answered = true;
                            encode_reply(&reply, &mut wbuf);
                        }
                        Delivery::Push { channel, payload } => {
                            encode_push(channel.as_bytes(), &payload, &mut wbuf);
                            pushes += 1;
                        }
                    }
                    next = if wbuf.len() < WRITE_BATCH_BYTES {
                        mailbox.try_recv()
                    } else {
                        None
                    };
                }
            }
            Wake::Deadline if Instant::now() < deadline => {
                // The timer was armed for an earlier deadline.
                timer.set_at(deadline);
            }
            Wake::Deadline => {
                let mut inner = shared.lock();
                let now = shared.clock(&inner);
                if rbuf.is_empty() && inner.core.owns_anything(id) {
                    drop(inner);
                    deadline = Instant::now() + read_timeout;
                    timer.set_at(deadline);
                    continue;
                }
                inner.core.handle_invalid(now, id, true, &mut effects);
                shared.after_core(&mut inner, &mut effects, Some(id));
                drop(inner);
                if rbuf.is_empty() {
                    log::debug!(conn = id.0, peer:% = peer; "closing an idle connection that owns nothing");
                } else {
                    warn_peer(Cause::ReadDeadline, peer, |suppressed| {
                        log::warn!(
                            peer:% = peer, code = 10, suppressed;
                            "request not completed within --read-timeout"
                        );
                    });
                }
                closing |= encode_own(
                    &mut effects,
                    &mut wbuf,
                    &mut pushes,
                    &mut auth_failed,
                    &mut evicted,
                );
                rbuf.clear();
            }
        }
    }
}

fn warn_slow_consumer(peer: Peer) {
    warn_peer(Cause::SlowConsumer, peer, |suppressed| {
        log::warn!(
            peer:% = peer, suppressed;
            "closed a slow subscriber: its unwritten signal pushes reached the limit"
        );
    });
}

/// Encodes this connection's own effects (what `after_core` left) into
/// `wbuf`, in order, and empties `effects`. Everything up to its own close
/// is sent, nothing after it (a publisher evicted as a slow consumer of its
/// own signal). Counts the pushes, notes an `error_auth`, and returns
/// whether a close was among them. A close that does not follow an error
/// status (draining, auth, an overlong line, a read deadline) is that
/// self-eviction, noted in `evicted`.
fn encode_own(
    effects: &mut Vec<Effect>,
    wbuf: &mut Vec<u8>,
    pushes: &mut usize,
    auth_failed: &mut bool,
    evicted: &mut bool,
) -> bool {
    let mut closed = false;
    let mut after_error = false;
    for e in effects.drain(..) {
        match e {
            _ if closed => {}
            Effect::Reply { reply, .. } => {
                *auth_failed |= reply == Reply::Status(Status::ErrorAuth);
                after_error = matches!(
                    reply,
                    Reply::Status(Status::Error | Status::ErrorAuth | Status::ErrorDraining)
                );
                encode_reply(&reply, wbuf);
            }
            Effect::Push {
                channel, payload, ..
            } => {
                encode_push(channel.as_bytes(), &payload, wbuf);
                *pushes += 1;
                after_error = false;
            }
            Effect::Close { .. } => {
                closed = true;
                *evicted |= !after_error;
            }
        }
    }
    closed
}

async fn wait<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut Vec<u8>,
    mailbox: &Mailbox,
    can_read: bool,
    timer: Option<&mut async_io::Timer>,
) -> Wake {
    if let Some(d) = mailbox.try_recv() {
        return Wake::Mail(d);
    }
    let mail = async { Wake::Mail(mailbox.recv().await) };
    let timer = async {
        match timer {
            Some(t) => {
                t.await;
                Wake::Deadline
            }
            None => std::future::pending().await,
        }
    };
    let read = async {
        if !can_read {
            return std::future::pending().await;
        }
        // Read into a chunk on the stack of one poll, not a buffer kept per
        // connection: a waiting connection then holds no read buffer at
        // all. A poll that returns `Pending` has read nothing, so if another
        // branch wins, the dropped read has changed nothing.
        let r = std::future::poll_fn(|cx| {
            let mut chunk = [0u8; READ_CHUNK];
            let r = std::pin::Pin::new(&mut *stream).poll_read(cx, &mut chunk);
            if let std::task::Poll::Ready(Ok(n)) = r {
                rbuf.extend_from_slice(&chunk[..n]);
            }
            r
        })
        .await;
        Wake::Read(r)
    };
    futures_lite::future::or(read, futures_lite::future::or(mail, timer)).await
}

/// Why a write gave up.
enum WriteEnd {
    /// The socket failed, or the write did not finish within the timeout.
    Failed,
    /// Another input closed the connection (an eviction, or the forced
    /// close at the end of a drain) while the write was stuck.
    CloseRequested,
}

/// Writes all of `buf`, giving up (and so closing) after `timeout` or when
/// the connection is force-closed: a peer that never reads must not hold
/// up the end of a shutdown, nor keep an evicted subscriber open.
async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &[u8],
    timeout: Option<Duration>,
    mailbox: &Mailbox,
) -> Result<(), WriteEnd> {
    // The flush is a no-op on TCP; on TLS it sends records that
    // `write_all` left inside the session (see `server::tls`).
    let write = async {
        match stream.write_all(buf).await.is_ok() && stream.flush().await.is_ok() {
            true => Ok(()),
            false => Err(WriteEnd::Failed),
        }
    };
    let closed = async {
        mailbox.close_requested().await;
        Err(WriteEnd::CloseRequested)
    };
    let timer = async {
        match timeout {
            Some(t) => {
                async_io::Timer::after(t).await;
                Err(WriteEnd::Failed)
            }
            None => std::future::pending().await,
        }
    };
    futures_lite::future::or(write, futures_lite::future::or(closed, timer)).await
}
