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
}

#[derive(Default)]
pub struct Mailbox {
    state: Mutex<State>,
}

impl Mailbox {
    pub fn new() -> Mailbox {
        Mailbox::default()
    }

    /// Queues `d` and wakes the receiver.
    pub fn push(&self, d: Delivery) {
        let waker = {
            let mut s = lock(&self.state);
            s.queue.push_back(d);
            s.waker.take()
        };
        if let Some(w) = waker {
            if crate::planted::is(crate::planted::Bug::LostWakeup) {
                return;
            }
            w.wake();
        }
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
