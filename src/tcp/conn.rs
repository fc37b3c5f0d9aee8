//! One TCP connection: a `Handler` and its `Handler::run` loop.
//!
//! The loop is: decode every complete request in the read buffer, apply
//! them through the engine's door in order under one lock acquisition,
//! write all the replies with one write, then wait for more bytes, a
//! delivery in the mailbox, or a read deadline. Pipelined requests are
//! therefore answered in order and in batches.
//!
//! A request the engine reports blocked (a queued `l`/`sl`/`w`/`sw`)
//! blocks the connection: later requests stay queued here, undecided,
//! until the answer arrives through the mailbox. While blocked the handler
//! keeps reading (up to [`BLOCKED_READ_CAP`] bytes) so it notices at once
//! when the peer goes away, and the core withdraws the waiter.
//!
//! Signal pushes for this connection arrive as effects of its own requests
//! (a connection signalling itself) or through the mailbox; either way they
//! are encoded into the same output buffer as replies, in core order, so a
//! line is never split. Core order holds because the handler, holding the
//! engine's lock, first takes what its mailbox holds (delivered by earlier
//! inputs of other connections) and only then applies its own inputs, whose
//! effects come after (protocol §9.3: per subscriber, pushes in the order
//! the signals were processed). A blocked connection still wakes for them. After
//! each write the number of pushes it carried is reported to the engine
//! ([`Input::PushesWritten`]), which bounds the pushes a connection may
//! have unwritten (Decision D13).
//!
//! Read deadlines (Decision D11): the handler arms one timer per
//! `--read-timeout` and reports its expiry to the engine
//! ([`Input::ReadDeadline`], saying whether part of a request was
//! buffered); whether that closes the connection (with `error`) or keeps an
//! owner is the core's decision. A started request must make progress, one
//! line per `--read-timeout`.
//!
//! Closing: a close from the core (its own effect, or a slow-subscriber
//! eviction through the mailbox) says why. Everything the connection was
//! sent before it is still written, within `--write-timeout`; only then is
//! the socket closed, after the pause the reason asks for (a failed
//! `auth`). Only the server's abort at the end of a drain cuts a write.
//!
//! The handler is generic over the byte stream (TCP, TLS, or an in-memory
//! stream in the fuzz target and, later, the simulator) and takes its time
//! and sleeps from [`crate::rt`].
//!
//! Log lines (src/logging.rs): a malformed request, a failed `auth`, a
//! request cut at its read deadline and a slow-subscriber eviction are
//! warnings with the peer's address, each rate-limited per peer; opening
//! and closing (with how long it lasted and what it owned) are debug
//! lines. Never a key, token or payload.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use log::Level;

use crate::core::{CloseReason, ConnId, Effect, Owned};
use crate::engine::mailbox::{Delivery, Mailbox, RawSocket};
use crate::engine::{Engine, Input, Outcome, Transport};
use crate::logging::{self, Cause};
use crate::rt;
use crate::sync::Arc;
use crate::wire::{decode_request, encode_push, encode_reply, Decoded};

/// Bytes read ahead behind a blocked request before reading pauses.
pub const BLOCKED_READ_CAP: usize = 64 * 1024 + 1024;
/// Requests decoded ahead of the core in one batch.
const BATCH: usize = 64;
/// Replies buffered before a write is forced mid-batch.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Writing a `stats` reply rests [`STATS_WRITE_REST`] after this much
/// time of writing pieces ([`Handler::write_stats`]).
const STATS_WRITE_BURST: Duration = Duration::from_millis(1);
/// See [`STATS_WRITE_BURST`].
const STATS_WRITE_REST: Duration = Duration::from_millis(1);
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;

/// The deadlines a connection keeps (from `--read-timeout` and
/// `--write-timeout`).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub read: Duration,
    /// `None`: writes may take forever.
    pub write: Option<Duration>,
}

impl Timeouts {
    pub fn of(cfg: &crate::config::ServerConfig) -> Timeouts {
        Timeouts {
            read: Duration::from_secs(cfg.read_timeout_s),
            write: match cfg.write_timeout_s {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
        }
    }
}

enum Wake {
    Read(std::io::Result<usize>),
    Mail(Delivery),
    Deadline,
}

/// Serves any byte stream as one connection (TCP, TLS, or an in-memory
/// stream in the fuzz target) until it closes, then reports the disconnect.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    engine: &Engine,
    timeouts: Timeouts,
    stream: S,
    peer: Option<SocketAddr>,
    lendable: Option<RawSocket>,
) {
    let mailbox = Arc::new(Mailbox::on(rt::Worker::current()));
    let id = engine.connect(Transport::Tcp, Some(mailbox.clone()));
    let opened = rt::now();
    let peer = Peer(peer);
    log::debug!(conn = id.0, peer:% = peer; "connection opened");
    let mut handler = Handler::new(engine, timeouts, stream, id, mailbox, peer);
    handler.lendable = lendable;
    let end = handler.run().await;
    let owned = if log::log_enabled!(Level::Debug) {
        engine.owned(id)
    } else {
        Owned::default()
    };
    engine.apply(id, Input::Disconnect);
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

/// The core closes the connection for `reason`: noted in `noticed` and
/// logged, once, as soon as the handler learns of it (a slow consumer's
/// last writes may take until the write timeout, or fail).
fn note_close(noticed: &mut Option<CloseReason>, reason: CloseReason, peer: Peer) {
    if noticed.is_some() {
        return;
    }
    *noticed = Some(reason);
    match reason {
        CloseReason::SlowConsumer => warn_slow_consumer(peer),
        CloseReason::AuthFailed { .. } => warn_peer(Cause::AuthFailure, peer, |suppressed| {
            log::warn!(peer:% = peer, suppressed; "authentication failed");
        }),
        CloseReason::Draining
        | CloseReason::Overlong
        | CloseReason::Stalled
        | CloseReason::Idle => {}
    }
}

/// How a connection the core closed for `reason` ended (for the log).
fn close_end(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::SlowConsumer => "evicted as a slow subscriber",
        CloseReason::AuthFailed { .. } => "authentication failed",
        CloseReason::Draining
        | CloseReason::Overlong
        | CloseReason::Stalled
        | CloseReason::Idle => "closed by the server",
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

/// Whether `input` is a `stats` request.
fn is_stats(input: &Input) -> bool {
    matches!(input, Input::Request(crate::wire::Request::Stats))
}

/// One decoded request, valid or not, waiting for its turn in the core.
type Pending = Input;

/// One connection's state: its fields are what the loop needs between
/// iterations.
pub(crate) struct Handler<'e, S> {
    engine: &'e Engine,
    timeouts: Timeouts,
    stream: S,
    id: ConnId,
    mailbox: Arc<Mailbox>,
    peer: Peer,
    /// Bytes read and not yet decoded. Starts empty and grows with use, so
    /// an idle connection costs little memory.
    rbuf: Vec<u8>,
    /// Replies and pushes encoded and not yet written.
    wbuf: Vec<u8>,
    /// Requests decoded and not yet applied (behind a blocked one).
    pending: VecDeque<Pending>,
    /// This connection's own effects of the inputs applied so far.
    effects: Vec<Effect>,
    /// Its request waits in a queue.
    blocked: bool,
    /// The core closed it, for this reason: write what was sent before the
    /// close (within the write timeout), then end (`Effect::Close`'s
    /// promise). Nothing more is read, decoded or encoded.
    closing: Option<CloseReason>,
    /// A close the handler has learnt of and logged, perhaps while still
    /// writing (before it reached the close in its mailbox).
    noticed: Option<CloseReason>,
    /// The write buffer filled mid-batch: continue without waiting.
    more_work: bool,
    /// The read deadline (protocol.md §2.4). It moves with every request,
    /// so the timer is not re-armed each time: it stays armed at an earlier
    /// instant and, when it fires early, is re-armed to `deadline`.
    deadline: Instant,
    /// Whether the read buffer held part of a request when the deadline
    /// was last armed.
    partial: bool,
    /// A request was answered since the deadline was last armed.
    answered: bool,
    /// Signal pushes in `wbuf`, reported to the engine once written (D13).
    pushes: usize,
    /// The server aborted the connection (found while taking the mailbox
    /// under the engine's lock): how it ended.
    aborted: Option<&'static str>,
    /// A `stats` request heads `pending`, to be answered in slices.
    stats_due: bool,
    /// The plain TCP socket's descriptor, which the handler lends its
    /// mailbox while blocked with nothing else to do, so that the answer is
    /// written by the thread that produced it (`engine::mailbox`). `None`
    /// for TLS and in-memory streams.
    lendable: Option<RawSocket>,
}

impl<'e, S: AsyncRead + AsyncWrite + Unpin> Handler<'e, S> {
    fn new(
        engine: &'e Engine,
        timeouts: Timeouts,
        stream: S,
        id: ConnId,
        mailbox: Arc<Mailbox>,
        peer: Peer,
    ) -> Self {
        Handler {
            engine,
            timeouts,
            stream,
            id,
            mailbox,
            peer,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            pending: VecDeque::new(),
            effects: Vec::new(),
            blocked: false,
            closing: None,
            noticed: None,
            more_work: false,
            deadline: rt::now() + timeouts.read,
            partial: false,
            answered: false,
            pushes: 0,
            aborted: None,
            stats_due: false,
            lendable: None,
        }
    }

    /// Runs the connection until it ends; returns how it ended (for the log).
    pub async fn run(&mut self) -> &'static str {
        let mut timer = rt::Sleep::until(self.deadline);
        loop {
            // 1. Decode what we can, then apply it.
            self.decode_and_apply();
            if self.stats_due {
                if let Err(end) = self.stats().await {
                    return end;
                }
            }
            if let Some(end) = self.aborted {
                return end;
            }

            // 2. Write everything answered so far.
            if let Err(end) = self.flush().await {
                return end;
            }
            if let Some(reason) = self.closing {
                return self.close(reason).await;
            }
            if std::mem::take(&mut self.more_work) || (!self.blocked && !self.pending.is_empty()) {
                // A batch boundary: keep processing before waiting.
                continue;
            }

            // 3. Arm the read deadline: a fresh period after every answered
            // request, and one period for a partial request from when it was
            // first seen (not extended by further bytes: slowloris guard).
            // The thread's loop reading, not the clock: at most the time
            // this thread has run tasks since its last look at the poller
            // earlier (microseconds; a deadline seconds away, and a period
            // that is, if anything, that much shorter, never longer).
            if std::mem::take(&mut self.answered) || (!self.rbuf.is_empty() && !self.partial) {
                self.deadline = rt::loop_now() + self.timeouts.read;
            }
            self.partial = !self.blocked && !self.rbuf.is_empty();

            // 4. Wait. Blocked with nothing else to read, write or answer:
            // lend the socket, so that the answer goes out from where it is
            // made; the read deadline then runs again, as the answer may
            // come without waking this task.
            let lend = self.lendable.filter(|_| {
                self.blocked
                    && self.rbuf.is_empty()
                    && self.pending.is_empty()
                    && self.wbuf.is_empty()
                    && self.closing.is_none()
            });
            let can_read = !self.blocked || self.rbuf.len() < BLOCKED_READ_CAP;
            let armed = (!self.blocked || lend.is_some()).then_some(&mut timer);
            let woke = wait(
                &mut self.stream,
                &mut self.rbuf,
                &self.mailbox,
                can_read,
                armed,
                lend,
            )
            .await;
            if let Some(sent) = self.mailbox.take_sent() {
                // Answered through the lent socket: no longer blocked, and
                // the read deadline runs from the answer.
                self.blocked = false;
                self.wbuf.extend_from_slice(&sent.rest);
                self.deadline = sent.at + self.timeouts.read;
            }
            match woke {
                Wake::Read(Ok(0)) => return "closed by the peer",
                Wake::Read(Err(_)) => return "read failed",
                Wake::Read(Ok(_)) => {}
                Wake::Mail(first) => {
                    if let Some(end) = self.take_mail(first) {
                        return end;
                    }
                }
                // Still blocked (the socket was lent): no deadline applies.
                Wake::Deadline if self.blocked => timer.reset(rt::now() + self.timeouts.read),
                Wake::Deadline if rt::now() < self.deadline => {
                    // The timer was armed for an earlier deadline.
                    timer.reset(self.deadline);
                }
                Wake::Deadline => {
                    if self.read_deadline() {
                        timer.reset(self.deadline);
                    }
                }
            }
        }
    }

    /// Decodes every complete request (up to a batch) and applies them in
    /// order under one acquisition of the engine's lock, until one blocks,
    /// closes the connection, or the write buffer is full.
    fn decode_and_apply(&mut self) {
        while !self.blocked && self.closing.is_none() {
            let mut consumed = 0;
            while self.pending.len() < BATCH {
                match decode_request(&self.rbuf[consumed..]) {
                    Decoded::NeedMore => break,
                    Decoded::Request { req, consumed: n } => {
                        consumed += n;
                        self.pending.push_back(Input::Request(req));
                    }
                    Decoded::Invalid { error, consumed: n } => {
                        let peer = self.peer;
                        warn_peer(Cause::ProtocolError, peer, |suppressed| {
                            log::warn!(
                                peer:% = peer, code = error.code(), reason = error.reason(),
                                suppressed;
                                "malformed request"
                            );
                        });
                        consumed += n.max(1).min(self.rbuf.len() - consumed);
                        self.pending.push_back(Input::Invalid(error));
                        if error.is_fatal() {
                            consumed = self.rbuf.len();
                            break;
                        }
                    }
                }
            }
            self.rbuf.drain(..consumed);
            self.answered |= consumed > 0;
            if self.pending.is_empty() {
                break;
            }
            {
                let mut door = self.engine.door();
                if !self.take_mail_held() {
                    break;
                }
                while let Some(input) = self.pending.pop_front() {
                    if is_stats(&input) {
                        // Built in slices with the lock released between
                        // them (`engine::introspect`): answered on its own,
                        // in order, by `stats`.
                        self.pending.push_front(input);
                        self.stats_due = true;
                        break;
                    }
                    let outcome = door.apply(self.id, input, &mut self.effects);
                    if self.outcome(outcome) || self.effects.len() >= BATCH {
                        break;
                    }
                }
            }
            self.encode_own();
            if self.stats_due {
                break;
            }
            if self.wbuf.len() >= WRITE_BATCH_BYTES {
                self.more_work = true;
                break;
            }
        }
    }

    /// Takes in what one input meant for this connection; returns whether
    /// to stop applying the ones behind it.
    fn outcome(&mut self, outcome: Outcome) -> bool {
        if outcome.gone {
            // Only this handler disconnects its connection.
            self.closing_for(CloseReason::Draining);
        }
        if outcome.closed || outcome.gone {
            self.pending.clear();
            return true;
        }
        if outcome.blocked {
            self.blocked = true;
            return true;
        }
        false
    }

    /// Answers the `stats` request at the head of `pending` (see
    /// `decode_and_apply`): its gate under the engine's lock, after taking
    /// the mailbox as any input does (core order), then the listing in
    /// slices, written piece by piece ([`Handler::write_stats`]). Returns
    /// how the connection ends if a write of the reply failed.
    async fn stats(&mut self) -> Result<(), &'static str> {
        self.stats_due = false;
        let (passed, outcome) = {
            let mut door = self.engine.door();
            if !self.take_mail_held() || self.pending.pop_front().is_none() {
                // Still at the head of `pending`: the loop writes what was
                // taken and comes back.
                return Ok(());
            }
            door.stats_gate(self.id, &mut self.effects)
        };
        if passed {
            let pieces = self.engine.stats_pieces(WRITE_BATCH_BYTES).await;
            self.write_stats(pieces).await?;
        }
        self.outcome(outcome);
        self.encode_own();
        Ok(())
    }

    /// Writes the `stats` reply `ok <json>` (what `encode_reply` makes of
    /// `Reply::Stats`), after what was answered before it, one piece of
    /// about [`WRITE_BATCH_BYTES`] at a time with a yield to the thread's
    /// poller between pieces ([`rt::yield_io`]: a plain `yield_now` let
    /// the thread write up to 256 pieces before it looked at its other
    /// sockets), and a rest of [`STATS_WRITE_REST`] after every
    /// [`STATS_WRITE_BURST`] of writing (copying 78 MB into a loopback
    /// socket flat out spent the process's share of a busy machine's
    /// cores, and every thread of it then waited for one:
    /// spec/ARCHITECTURE.md, "Costs"), all within one write timeout as a
    /// one-piece reply is. A
    /// listing of tens of megabytes is then never copied, reallocated or
    /// written in one go, which held the runtime thread (and every
    /// connection pinned to it) for tens of milliseconds at 1M locks. The
    /// last piece and the line's end are left in `wbuf` for the loop's
    /// flush.
    async fn write_stats(&mut self, pieces: Vec<Vec<u8>>) -> Result<(), &'static str> {
        self.encode_own();
        let deadline = self.timeouts.write.map(|t| rt::now() + t);
        self.wbuf.extend_from_slice(b"ok ");
        let mut burst = rt::now();
        for piece in pieces {
            if self.wbuf.len() >= WRITE_BATCH_BYTES {
                self.flush_until(deadline).await?;
                if rt::now().saturating_duration_since(burst) >= STATS_WRITE_BURST {
                    rt::sleep(STATS_WRITE_REST).await;
                    burst = rt::now();
                } else {
                    rt::yield_io().await;
                }
            }
            self.wbuf.extend_from_slice(&piece);
        }
        self.wbuf.push(b'\n');
        self.answered = true;
        Ok(())
    }

    /// Writes what is buffered and reports the pushes it carried. Only the
    /// server's abort cuts a write short; the core's own close waits for
    /// it (within the write timeout).
    async fn flush(&mut self) -> Result<(), &'static str> {
        self.flush_until(self.timeouts.write.map(|t| rt::now() + t))
            .await
    }

    /// [`Handler::flush`], giving up at `deadline`.
    async fn flush_until(&mut self, deadline: Option<Instant>) -> Result<(), &'static str> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let (noticed, peer) = (&mut self.noticed, self.peer);
        let noticed = |reason| note_close(noticed, reason, peer);
        let written = write(
            &mut self.stream,
            &self.wbuf,
            deadline,
            &self.mailbox,
            noticed,
        );
        match written.await {
            Ok(()) => {}
            // Closing anyway: the reason is the better account.
            Err(WriteEnd::Failed) => {
                return Err(self.noticed.map_or("write failed or timed out", close_end))
            }
            Err(WriteEnd::Aborted) => return Err("closed at the end of the drain"),
        }
        self.wbuf.clear();
        if self.pushes > 0 {
            let n = std::mem::take(&mut self.pushes);
            self.engine.apply(
                self.id,
                Input::PushesWritten(n.try_into().unwrap_or(u32::MAX)),
            );
        }
        Ok(())
    }

    /// The core closes the connection for `reason`, after what came before
    /// (see [`note_close`] for the log line).
    fn closing_for(&mut self, reason: CloseReason) {
        note_close(&mut self.noticed, reason, self.peer);
        self.closing.get_or_insert(reason);
    }

    /// The core closed the connection for `reason` and what it was sent
    /// before is written: wait as long as the reason says (after a failed
    /// `auth`), and end.
    async fn close(&mut self, reason: CloseReason) -> &'static str {
        let linger = reason.linger_ms();
        if linger > 0 {
            rt::sleep(Duration::from_millis(linger)).await;
        }
        close_end(reason)
    }

    /// Takes everything delivered so far (one write for a burst), up to a
    /// close. Returns how the connection ends, if the server aborted it.
    fn take_mail(&mut self, first: Delivery) -> Option<&'static str> {
        let mut next = Some(first);
        while let Some(d) = next {
            match d {
                Delivery::Abort => return Some("closed at the end of the drain"),
                // Another connection's input closed this one (a
                // slow-subscriber eviction): what came before is written
                // first, nothing after it is taken.
                Delivery::Close(reason) => {
                    self.closing_for(reason);
                    return None;
                }
                Delivery::Reply(reply) => {
                    self.blocked = false;
                    self.answered = true;
                    encode_reply(&reply, &mut self.wbuf);
                }
                Delivery::Push { channel, payload } => {
                    encode_push(channel.as_bytes(), &payload, &mut self.wbuf);
                    self.pushes += 1;
                }
            }
            next = if self.wbuf.len() < WRITE_BATCH_BYTES {
                self.mailbox.try_recv()
            } else {
                None
            };
        }
        None
    }

    /// With the engine's lock held: takes what the mailbox holds, all of
    /// it delivered by inputs applied before the one this connection is
    /// about to apply, so that its lines go out in core order. Returns
    /// whether the connection may apply inputs now: not after a close or an
    /// abort, nor while deliveries are left over a full write buffer (the
    /// caller writes first and comes back: `more_work`).
    fn take_mail_held(&mut self) -> bool {
        let Some(first) = self.mailbox.try_recv() else {
            return true;
        };
        if let Some(end) = self.take_mail(first) {
            self.aborted = Some(end);
            return false;
        }
        if self.closing.is_some() {
            return false;
        }
        if self.mailbox.has_mail() {
            self.more_work = true;
            return false;
        }
        true
    }

    /// The read deadline passed: the engine decides. Returns whether the
    /// connection stays (a fresh period starts). Does nothing (returns
    /// `false`) when the mailbox held something to write or act on first:
    /// the loop does that and the deadline, still passed, fires again.
    fn read_deadline(&mut self) -> bool {
        let partial = !self.rbuf.is_empty();
        let mut door = self.engine.door();
        if !self.take_mail_held() {
            return false;
        }
        let outcome = door.apply(self.id, Input::ReadDeadline { partial }, &mut self.effects);
        drop(door);
        if !outcome.closed && !outcome.gone {
            self.effects.clear();
            self.deadline = rt::now() + self.timeouts.read;
            return true;
        }
        if partial {
            let peer = self.peer;
            warn_peer(Cause::ReadDeadline, peer, |suppressed| {
                log::warn!(
                    peer:% = peer, code = 10, suppressed;
                    "request not completed within --read-timeout"
                );
            });
        } else {
            log::debug!(conn = self.id.0, peer:% = self.peer; "closing an idle connection that owns nothing");
        }
        self.encode_own();
        if outcome.gone {
            self.closing_for(CloseReason::Draining);
        }
        self.rbuf.clear();
        false
    }

    /// Encodes this connection's own effects into `wbuf`, in order, and
    /// empties `effects`. Everything up to its own close is sent, nothing
    /// after it (a publisher evicted as a slow consumer of its own signal);
    /// the close's reason is kept in `closing`. Counts the pushes.
    fn encode_own(&mut self) {
        let mut effects = std::mem::take(&mut self.effects);
        for e in effects.drain(..) {
            match e {
                _ if self.closing.is_some() => {}
                Effect::Reply { reply, .. } => encode_reply(&reply, &mut self.wbuf),
                Effect::Push {
                    channel, payload, ..
                } => {
                    encode_push(channel.as_bytes(), &payload, &mut self.wbuf);
                    self.pushes += 1;
                }
                Effect::Close { reason, .. } => {
                    if crate::planted::is(crate::planted::Bug::ReplyDroppedOnClose) {
                        self.wbuf.clear();
                    }
                    self.closing_for(reason)
                }
            }
        }
        // Back, empty, to keep its allocation.
        self.effects = effects;
    }
}

async fn wait<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut Vec<u8>,
    mailbox: &Mailbox,
    can_read: bool,
    timer: Option<&mut rt::Sleep>,
    lend: Option<RawSocket>,
) -> Wake {
    if let Some(d) = mailbox.try_recv() {
        return Wake::Mail(d);
    }
    // Returned (ended under the mailbox's lock) before this function
    // returns or its future is dropped: before the socket is touched again.
    let _loan = lend.map(|fd| mailbox.lend(fd));
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
    /// The server aborted the connection (the end of a drain) while the
    /// write was stuck.
    Aborted,
}

/// Writes all of `buf`, giving up (and so closing) at `deadline` or when
/// the server aborts the connection: a peer that never reads must not hold
/// up the end of a shutdown. A close from the core that arrives meanwhile
/// (a slow consumer evicted) is reported to `closed` at once but does not
/// cut the write: what was sent before it is written first, within the
/// write timeout (`Effect::Close`'s promise).
async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &[u8],
    deadline: Option<Instant>,
    mailbox: &Mailbox,
    mut closed: impl FnMut(CloseReason),
) -> Result<(), WriteEnd> {
    // The flush is a no-op on TCP; on TLS it sends records that
    // `write_all` left inside the session (see `net::tls`).
    let mut write = std::pin::pin!(async {
        stream.write_all(buf).await.is_ok() && stream.flush().await.is_ok()
    });
    let mut timer = deadline.map(rt::Sleep::until);
    let mut close_seen = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(ok) = write.as_mut().poll(cx) {
            return Poll::Ready(if ok { Ok(()) } else { Err(WriteEnd::Failed) });
        }
        loop {
            match mailbox.poll_ending(cx, close_seen) {
                Poll::Ready(None) => return Poll::Ready(Err(WriteEnd::Aborted)),
                Poll::Ready(Some(reason)) => {
                    close_seen = true;
                    closed(reason);
                }
                Poll::Pending => break,
            }
        }
        if let Some(t) = timer.as_mut() {
            if std::pin::Pin::new(t).poll(cx).is_ready() {
                return Poll::Ready(Err(WriteEnd::Failed));
            }
        }
        Poll::Pending
    })
    .await
}
