//! A connection's mailbox: how a reply produced on another task (a grant
//! handed off by someone else's release, a timeout fired by the timer task,
//! an `error` at shutdown) reaches the connection's own task.
//!
//! It is a mutex-protected queue plus one waker slot (only the owning task
//! ever waits on it: for a delivery, or while writing, for a forced close). Pushing after the
//! receiver has gone is harmless (the item is dropped: the core already
//! forgot the connection). The receiver never misses a push: it registers
//! its waker under the same lock it checks the queue with.
//!
//! **Answering a blocked connection from the releasing thread.** A
//! connection whose request waits in a queue, with nothing else to write
//! or read, may lend its mailbox its socket ([`Mailbox::lend`], plain TCP
//! only). The answer to its request (a grant handed off by another
//! connection's release, a timeout) is then written to the socket right
//! where the core produced it, by the thread that applied the input, with
//! one non-blocking `send`, instead of waking the connection's own thread
//! to write it: on a hot key every hand-off would otherwise cost a
//! cross-thread wake-up on the critical path (spec/ARCHITECTURE.md, "The
//! runtime"). The owner is not woken at all when the whole line went out:
//! it learns of it ([`Mailbox::take_sent`]) at its next wake-up, which the
//! peer's next request brings. Order holds because the direct write is
//! made only while the queue is empty (nothing delivered before it is
//! still unwritten) and at most once per loan; a partial write leaves the
//! rest to the owner, woken as for any delivery. The loan ends under the
//! mailbox's lock ([`Lent`]'s drop) before the owner touches its socket
//! again or closes it, so the socket is never written from two places nor
//! after it is closed.
//!
//! A mailbox made on a runtime thread ([`Mailbox::on`]) also tells that
//! thread when an answer to a blocked request is delivered
//! ([`crate::rt::Worker::expect`]): the connection's next request is due
//! soon, and the thread polls for it for a while instead of sleeping.
//!
//! The queue is bounded by construction, not by a check: the core sends a
//! connection at most one deferred reply per blocked request, a connection
//! has at most one blocked request, and the core stops pushing signals to a
//! connection with [`crate::core::PUSH_QUEUE_FRAMES`] pushes not yet
//! written (it closes it instead).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::core::{CloseReason, ConnId, Effect};
use crate::sync::{lock, Mutex};
use crate::wire::Reply;

/// Something for a connection's task to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Write this reply (the answer to the blocked request).
    Reply(Reply),
    /// The core closed the connection (a slow-consumer eviction by another
    /// connection's signal): write what was delivered before, then close.
    Close(CloseReason),
    /// The server closes the connection at once, whatever it is doing (the
    /// end of a drain's `--shutdown-timeout`, or a server dropped).
    Abort,
    /// Write the push line `sig <channel> <payload>`.
    Push {
        channel: crate::wire::Key,
        payload: std::sync::Arc<[u8]>,
    },
}

#[derive(Default)]
struct State {
    queue: VecDeque<Delivery>,
    waker: Option<Waker>,
    /// The socket lent by a blocked owner (see the module docs).
    lent: Option<RawSocket>,
    /// The answer written through the lent socket, not yet seen by the owner.
    sent: Option<Sent>,
}

/// A socket's descriptor, lent to the mailbox while its owner waits.
pub type RawSocket = i32;

/// The answer to a blocked request that another thread wrote to the
/// owner's socket ([`Mailbox::lend`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Sent {
    /// When it was written: the owner's read deadline runs from here.
    pub at: std::time::Instant,
    /// The end of the line the socket did not take at once (usually
    /// empty): the owner writes it before anything else.
    pub rest: Vec<u8>,
}

/// A loan of a socket to a mailbox ([`Mailbox::lend`]); dropping it ends
/// the loan.
pub struct Lent<'a> {
    mailbox: &'a Mailbox,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        lock(&self.mailbox.state).lent = None;
    }
}

#[derive(Default)]
pub struct Mailbox {
    state: Mutex<State>,
    /// The runtime thread serving the connection, told when the answer to
    /// its blocked request is delivered so that it polls for the next
    /// request instead of sleeping ([`crate::rt::Worker::expect`]).
    owner: Option<std::sync::Arc<crate::rt::Worker>>,
}

impl Mailbox {
    pub fn new() -> Mailbox {
        Mailbox::default()
    }

    /// A mailbox for a connection served on the runtime thread `owner`.
    pub fn on(owner: Option<std::sync::Arc<crate::rt::Worker>>) -> Mailbox {
        Mailbox {
            state: Mutex::default(),
            owner,
        }
    }

    /// Queues `d` and wakes the receiver; or, for a reply to an owner
    /// that lent its socket, writes it there (see the module docs).
    pub fn push(&self, d: Delivery) {
        if let (Some(owner), Delivery::Reply(_)) = (&self.owner, &d) {
            owner.expect();
        }
        let waker = {
            let mut s = lock(&self.state);
            match (d, s.lent) {
                (Delivery::Reply(reply), Some(fd)) if s.queue.is_empty() && s.sent.is_none() => {
                    let mut line = Vec::with_capacity(64);
                    crate::wire::encode_reply(&reply, &mut line);
                    match crate::rt::net::send_now(fd, &line) {
                        Ok(n) if n > 0 => {
                            s.lent = None;
                            let rest = line.split_off(n);
                            let whole = rest.is_empty();
                            s.sent = Some(Sent {
                                at: crate::rt::now(),
                                rest,
                            });
                            if whole {
                                // The owner learns of it at its next wake-up.
                                return;
                            }
                        }
                        // Nothing written (a full socket, an error the owner
                        // will meet on its own): the owner writes it.
                        _ => s.queue.push_back(Delivery::Reply(reply)),
                    }
                }
                (d, _) => s.queue.push_back(d),
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            if crate::planted::is(crate::planted::Bug::LostWakeup) {
                return;
            }
            w.wake();
        }
    }

    /// Lends the owner's socket `fd` to the mailbox until the returned
    /// loan is dropped: a reply pushed meanwhile, with nothing queued
    /// before it, is written to `fd` by the pushing thread. The owner must
    /// be blocked with nothing of its own to write, and must drop the loan
    /// before it writes to or closes `fd`.
    pub fn lend(&self, fd: RawSocket) -> Lent<'_> {
        lock(&self.state).lent = Some(fd);
        Lent { mailbox: self }
    }

    /// The answer another thread wrote to the lent socket, if any (once).
    pub fn take_sent(&self) -> Option<Sent> {
        lock(&self.state).sent.take()
    }

    /// Takes the oldest delivery without waiting.
    pub fn try_recv(&self) -> Option<Delivery> {
        lock(&self.state).queue.pop_front()
    }

    /// Whether a delivery is queued.
    pub fn has_mail(&self) -> bool {
        !lock(&self.state).queue.is_empty()
    }

    /// Polls for the oldest delivery, registering `cx`'s waker if none.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Delivery> {
        let mut s = lock(&self.state);
        match s.queue.pop_front() {
            Some(d) => Poll::Ready(d),
            None => {
                match &s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// Waits for the oldest delivery.
    pub fn recv(&self) -> Recv<'_> {
        Recv { mailbox: self }
    }

    /// Polls for the end of the connection without taking anything from the
    /// queue, for a task that is writing (and so not receiving): `Some` of
    /// a queued [`Delivery::Close`]'s reason (unless `close_seen`: the task
    /// knows already), `None` for a queued [`Delivery::Abort`]. Registers
    /// `cx`'s waker whenever it returns `Pending`, so a forced close also
    /// ends a write the peer never drains.
    pub fn poll_ending(&self, cx: &mut Context<'_>, close_seen: bool) -> Poll<Option<CloseReason>> {
        let mut s = lock(&self.state);
        let mut close = None;
        for d in &s.queue {
            match d {
                Delivery::Abort => return Poll::Ready(None),
                Delivery::Close(reason) if close.is_none() => close = Some(*reason),
                _ => {}
            }
        }
        if let Some(reason) = close.filter(|_| !close_seen) {
            return Poll::Ready(Some(reason));
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits until a [`Delivery::Close`] or [`Delivery::Abort`] is queued,
    /// taking nothing (for a task that cannot receive while it writes).
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| {
            let mut s = lock(&self.state);
            if s.queue
                .iter()
                .any(|d| matches!(d, Delivery::Close(_) | Delivery::Abort))
            {
                return Poll::Ready(());
            }
            match &s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => s.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

pub struct Recv<'a> {
    mailbox: &'a Mailbox,
}

impl Future for Recv<'_> {
    type Output = Delivery;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Delivery> {
        self.mailbox.poll_recv(cx)
    }
}

/// Moves every effect of `fx` out: those addressed to `me` are appended to
/// `out`, in their original order; every other one is delivered to its
/// connection's mailbox (`mailbox_of`), or dropped when that connection is
/// gone or has none. Called with the engine's lock held, so deliveries to
/// one mailbox are in core order.
pub fn route<'m>(
    mailbox_of: impl Fn(ConnId) -> Option<&'m Mailbox>,
    fx: &mut Vec<Effect>,
    me: Option<ConnId>,
    out: &mut Vec<Effect>,
) {
    for e in fx.drain(..) {
        let (conn, d) = match e {
            Effect::Reply { conn, .. } | Effect::Close { conn, .. } | Effect::Push { conn, .. }
                if Some(conn) == me =>
            {
                out.push(e);
                continue;
            }
            Effect::Reply { conn, reply } => (conn, Delivery::Reply(reply)),
            Effect::Close { conn, reason } => (conn, Delivery::Close(reason)),
            Effect::Push {
                conn,
                channel,
                payload,
            } => (conn, Delivery::Push { channel, payload }),
        };
        if let Some(mb) = mailbox_of(conn) {
            mb.push(d);
        }
    }
}
