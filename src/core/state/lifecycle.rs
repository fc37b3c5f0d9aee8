//! A connection's life beyond its requests: an invalid line, the read
//! deadline (D11: idle and owning nothing → `error` and close; a stalled
//! partial line → close; an owner stays), the close answers, cancel (a
//! blocked request withdrawn, or the grant that beat it released — one
//! input), the drain, and the disconnect that releases what it owned
//! (resource by resource, the index entries purged a bounded number per
//! input afterwards: `holdings.rs`).

use std::collections::{BTreeSet, HashMap};

use super::holdings::Retired;
use super::introspect::{Event, EventKind};
use super::{status, CloseReason, Conn, Core, Effect, Holder, ResId};
use crate::core::hash::IdBuild;
use crate::core::metrics::Cause;
use crate::core::{ConnId, Time};
use crate::wire::Status;

impl Core {
    /// A request from `conn` that could not be parsed: `error`, and for a
    /// `fatal` one (an overlong line) a close (D1).
    pub fn handle_invalid(&mut self, now: Time, conn: ConnId, fatal: bool, out: &mut Vec<Effect>) {
        self.advance(now, out);
        let draining = self.draining;
        let c = self.conn_mut(conn);
        assert!(c.blocked.is_none(), "request from a blocked connection");
        c.answered = None;
        if fatal || draining || !c.authed {
            self.closing_answer(conn, CloseReason::Overlong, out);
        } else {
            status(out, conn, Status::Error);
        }
        self.finish();
    }

    /// `conn`'s read deadline passed (protocol.md §2.4, D11); `partial`
    /// when part of a request was buffered, otherwise it sat idle since its
    /// last answer (or since it opened). A started request that stalled is
    /// cut: `error` and a close. An idle connection that owns something (a
    /// held slot, a queue position, a two-phase record, a subscription) is
    /// kept: nothing is answered, and the driver starts a new period. Any
    /// other idle connection is closed with `error`. (`error_auth` before
    /// authentication, `error_draining` once draining, as for any request.)
    /// A blocked connection has no read deadline; nothing happens. O(1).
    pub fn read_deadline(&mut self, now: Time, conn: ConnId, partial: bool, out: &mut Vec<Effect>) {
        self.advance(now, out);
        if self.is_blocked(conn) || !self.conns.contains_key(&conn) {
            return self.finish();
        }
        self.conn_mut(conn).answered = None;
        if partial {
            self.closing_answer(conn, CloseReason::Stalled, out);
        } else if !self.owns_anything(conn) {
            self.closing_answer(conn, CloseReason::Idle, out);
        }
        self.finish();
    }

    /// The last answer to `conn` before the core closes it: `error_draining`
    /// and [`CloseReason::Draining`] while draining, else `error_auth` and
    /// [`CloseReason::AuthFailed`] (a close after the configured pause)
    /// before authentication, else `error` and `reason`.
    pub(super) fn closing_answer(
        &mut self,
        conn: ConnId,
        reason: CloseReason,
        out: &mut Vec<Effect>,
    ) {
        let authed = self.conns.get(&conn).is_some_and(|c| c.authed);
        let (s, reason) = if self.draining {
            (Status::ErrorDraining, CloseReason::Draining)
        } else if !authed {
            let pause_ms = self.cfg.auth_failure_pause_ms;
            (Status::ErrorAuth, CloseReason::AuthFailed { pause_ms })
        } else {
            (Status::Error, reason)
        };
        status(out, conn, s);
        out.push(Effect::Close { conn, reason });
    }

    /// Starts graceful shutdown: every blocked request answers `error`;
    /// every later request answers `error_draining` and closes.
    /// O(b log n) for b blocked requests.
    pub fn start_drain(&mut self, now: Time, out: &mut Vec<Effect>) {
        self.advance(now, out);
        self.draining = true;
        // The blocked requests are exactly the waiters with a deadline;
        // they are answered in the order the waiters arrived.
        let mut blocked: Vec<(u64, ConnId)> = self
            .deadlines
            .iter()
            .map(|&(_, w)| (w, self.waiters[&w].conn))
            .collect();
        blocked.sort_unstable();
        let mut touched = Vec::new();
        for (w, conn) in blocked {
            if let Some(res) = self.remove_waiter(w, now) {
                touched.push(res);
                self.metrics.evicted(Cause::Drain, 1);
            }
            status(out, conn, Status::Error);
        }
        for res in touched {
            self.hand_off(now, res, out);
        }
        self.finish();
    }

    /// The connection went away (EOF, error, or closed by the driver). Its
    /// waiters and records go; its held slots are released in token order
    /// when auto-release is on (Decision D6). Costs O(log n) per thing the
    /// connection owned, plus the hand-offs that follow.
    pub fn disconnect(&mut self, now: Time, conn: ConnId, out: &mut Vec<Effect>) {
        self.advance(now, out);
        if let Some(c) = self.conns.remove(&conn) {
            self.forget(now, conn, c, out);
        }
        self.finish();
    }

    pub(super) fn forget(&mut self, now: Time, conn: ConnId, c: Conn, out: &mut Vec<Effect>) {
        let mut touched = BTreeSet::new();
        for w in c.waiters {
            let queued = self.waiters.get(&w).map_or(now, |w| w.queued);
            if let Some(res) = self.remove_waiter(w, now) {
                touched.insert(res);
                self.metrics.evicted(Cause::DisconnectWaiter, 1);
                let waited = now.0.saturating_sub(queued.0);
                self.note(res, Event::new(now, EventKind::LeftQueue, conn, 0, waited));
            }
        }
        for res in c.records.keys() {
            self.record_removed(*res);
        }
        for (pattern, group) in &c.subs {
            self.signals.remove(pattern.as_bytes(), group, conn);
        }
        if self.cfg.auto_release_on_disconnect {
            self.release_all(now, c.held, c.held_on, out);
        }
        for res in touched {
            self.hand_off(now, res, out);
        }
    }

    /// Releases a gone connection's slots (Decision D6) as releasing them
    /// one by one in token order would, with a hand-off after each; but
    /// only a release that frees a slot for a waiter has an effect. On a
    /// resource with q waiters (after the connection's own left), each of
    /// the first q releases grants one waiter (the queue waits only when
    /// the resource is full, or at the fence ceiling when no release grants
    /// anything), so those are replayed one by one, interleaved with the
    /// other resources' in token order. Every later release only lowers a
    /// count: they go at once, per resource, and their slots are retired.
    /// Costs O(log n) per resource and per replayed slot; the retired
    /// slots are purged later, `PURGE_PER_INPUT` per input.
    pub(super) fn release_all(
        &mut self,
        now: Time,
        held: BTreeSet<(ResId, u64)>,
        held_on: HashMap<ResId, u32, IdBuild>,
        out: &mut Vec<Effect>,
    ) {
        let mut replay: Vec<(u64, ResId)> = Vec::new();
        // (resource, slots released at once).
        let mut at_once: Vec<(ResId, u64)> = Vec::new();
        // In resource order: the slab and the idle index are then walked in
        // order, not at random, when a connection held many keys.
        let mut on: Vec<(ResId, u32)> = held_on.into_iter().collect();
        on.sort_unstable();
        for (res, n) in on {
            let q = self.res_mut(res).queue.len();
            if q > 0 {
                let first = held.range((res, 0)..=(res, u64::MAX)).take(q);
                replay.extend(first.map(|&(_, fence)| (fence, res)));
            }
            let n = u64::from(n);
            if n > q as u64 {
                at_once.push((res, n - q as u64));
            }
        }
        replay.sort_unstable();
        for &(fence, res) in &replay {
            self.remove_holder(now, fence, Some(Cause::Disconnect));
            self.touch(res, now);
            self.hand_off(now, res, out);
        }
        for (res, n) in at_once {
            self.note_dropped(res, now, &held, n);
            self.res_mut(res).holders -= n;
            self.touch(res, now);
            self.hand_off(now, res, out);
        }
        // The set goes whole: `purge` skips the slots replayed above.
        let retired = held.len() - replay.len();
        if retired > 0 {
            self.retired_pending += retired;
            self.retired.push_back(Retired::new(now, held));
        }
    }

    /// Purges up to `budget` retired slots from `holders` and `leases`,
    /// counting each as a release by disconnect in the metrics.
    pub(super) fn purge(&mut self, mut budget: usize) {
        while budget > 0 {
            let Some(r) = self.retired.front_mut() else {
                return;
            };
            let Some((_, fence)) = r.fences.next() else {
                self.retired.pop_front();
                continue;
            };
            let at = r.at;
            budget -= 1;
            // A slot the disconnect replayed is gone already.
            let Some(h) = self.holders.remove(&fence) else {
                continue;
            };
            self.retired_pending -= 1;
            self.leases.remove(&(h.expires, fence));
            self.metrics.holder_ended(
                h.space,
                at.0.saturating_sub(h.granted.0),
                Some(Cause::Disconnect),
            );
        }
    }

    /// Whether `h` is a live holder: not a slot a disconnect released in
    /// bulk and `purge` has not reached yet.
    pub(super) fn live(&self, h: &Holder) -> bool {
        !self.cfg.auto_release_on_disconnect || self.conns.contains_key(&h.conn)
    }

    /// Cancels `conn`'s blocked request (semantics §9.1): it ends as its
    /// waiter timing out at `now` would, so `out` gets a `timeout` reply for
    /// `conn` (the driver discards it) and any hand-off. The connection
    /// keeps everything else. Nothing happens when `conn` is unknown or not
    /// blocked (for example because the grant came first).
    pub fn cancel_blocked(&mut self, now: Time, conn: ConnId, out: &mut Vec<Effect>) {
        self.advance(now, out);
        if let Some(w) = self.conns.get(&conn).and_then(|c| c.blocked) {
            self.time_out(now, w, out);
        }
        self.finish();
    }

    /// Withdraws `conn`'s blocked request as one input (semantics §9.1):
    /// if it is still blocked, it is cancelled as [`Core::cancel_blocked`]
    /// does (`timeout` for `conn`, which the driver discards); if the grant
    /// came first (its reply is on its way to `conn`) and nothing else came
    /// from `conn` since, that grant is released, with hand-off, as an
    /// `r` with its token would. Nothing happens otherwise. O(log n).
    pub fn cancel(&mut self, now: Time, conn: ConnId, out: &mut Vec<Effect>) {
        self.advance(now, out);
        let Some(c) = self.conns.get_mut(&conn) else {
            return self.finish();
        };
        let answered = c.answered.take();
        if let Some(w) = c.blocked {
            self.time_out(now, w, out);
        } else if let Some(fence) = answered {
            if self
                .holders
                .get(&fence)
                .is_some_and(|h| h.conn == conn && self.live(h))
            {
                let res = self.remove_holder(now, fence, None);
                self.touch(res, now);
                self.hand_off(now, res, out);
            }
        }
        self.finish();
    }
}
