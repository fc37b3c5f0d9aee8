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

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::core::{ConnId, Core, Effect, Time};
use crate::sync::{lock, Arc, Mutex};
use crate::wire::{Key, Reply, Request, Space};

/// Something for a connection's task to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Write this reply (the answer to the blocked request).
    Reply(Reply),
    /// Close the connection (forced shutdown, slow-consumer eviction).
    Close,
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
            w.wake();
        }
    }

    /// Takes the oldest delivery without waiting.
    pub fn try_recv(&self) -> Option<Delivery> {
        lock(&self.state).queue.pop_front()
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

    /// Polls for a queued [`Delivery::Close`] without taking anything from
    /// the queue, registering `cx`'s waker if there is none. The task polls
    /// this while it is writing (and so not receiving), so that a forced
    /// close also ends a write the peer never drains.
    pub fn poll_close_requested(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.state);
        if s.queue.contains(&Delivery::Close) {
            return Poll::Ready(());
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits until a [`Delivery::Close`] is queued (see
    /// [`Mailbox::poll_close_requested`]).
    pub async fn close_requested(&self) {
        std::future::poll_fn(|cx| self.poll_close_requested(cx)).await
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

/// Delivers every effect addressed to a connection other than `me` to that
/// connection's mailbox (dropping it if the connection is gone) and leaves
/// only `me`'s effects in `effects`, in their original order. Called with
/// the core's lock held, so deliveries to one mailbox are in core order.
pub fn route(
    mailboxes: &HashMap<ConnId, Arc<Mailbox>>,
    effects: &mut Vec<Effect>,
    me: Option<ConnId>,
) {
    effects.retain_mut(|e| {
        let (conn, d) = match e {
            Effect::Reply { conn, reply } if Some(*conn) != me => {
                // Moved out, not cloned: the effect is dropped right after.
                (*conn, Delivery::Reply(std::mem::replace(reply, Reply::Ok)))
            }
            Effect::Close { conn } if Some(*conn) != me => (*conn, Delivery::Close),
            Effect::Push {
                conn,
                channel,
                payload,
            } if Some(*conn) != me => (
                *conn,
                Delivery::Push {
                    channel: channel.clone(),
                    payload: payload.clone(),
                },
            ),
            _ => return true,
        };
        if let Some(mb) = mailboxes.get(&conn) {
            mb.push(d);
        }
        false
    });
}

/// Withdraws `conn`'s blocked request on `key` because nobody will read its
/// answer (the HTTP client of a long poll went away). Call with the core's
/// lock held, then route `out` with `me = Some(conn)` and discard `conn`'s
/// own effects.
///
/// The core cancels the request (semantics §9.1: its waiter leaves the
/// queue, answered `timeout`). If the grant won the race, it is already in
/// `mailbox` (replies are routed under the same lock) and is released here,
/// so the slot passes on. Afterwards `mailbox` is empty and nothing is held
/// or queued for that request. Returns whether a close was delivered too
/// (the connection is being shut down).
pub fn withdraw_blocked(
    core: &mut Core,
    now: Time,
    conn: ConnId,
    mailbox: &Mailbox,
    space: Space,
    key: &Key,
    out: &mut Vec<Effect>,
) -> bool {
    core.cancel_blocked(now, conn, out);
    let mut closed = false;
    while let Some(d) = mailbox.try_recv() {
        match d {
            Delivery::Reply(Reply::Granted { token, .. }) => {
                let release = Request::Release {
                    space,
                    key: key.clone(),
                    token: token.to_string().into_bytes().into(),
                };
                core.handle(now, conn, release, out);
            }
            Delivery::Close => closed = true,
            Delivery::Reply(_) | Delivery::Push { .. } => {}
        }
    }
    closed
}
