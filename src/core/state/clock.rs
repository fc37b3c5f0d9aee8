//! Time: what falls due and when. The core has no clock of its own; the
//! engine passes `now` with every input and asks [`Core::poll_timeout`] for
//! the next instant anything falls due (a lease expiry, a blocked waiter's
//! deadline, the idle GC of an unreferenced resource). Each due item is
//! visited once, in deadline order, so catching up after a long pause costs
//! what expired and nothing else.

use std::hash::BuildHasher;

use super::introspect::{Event, EventKind};
use super::{space_index, status, Core, Due, Effect};
use crate::core::metrics::Cause;
use crate::core::Time;
use crate::wire::Status;

impl Core {
    /// Processes everything due at or before `now`.
    pub fn handle_timeout(&mut self, now: Time, out: &mut Vec<Effect>) {
        self.advance(now, out);
        self.finish();
    }

    /// The next instant at which [`Core::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.retired_pending > 0 {
            // Purging goes on in bounded steps, one per millisecond when no
            // other input comes: the core lock is free most of the time in
            // between, whoever wins it.
            let purge = self.now.plus_millis(1);
            return Some(
                self.next_due()
                    .map_or(purge, |(t, _)| t.min(purge))
                    .min(self.next_gc),
            );
        }
        Some(
            self.next_due()
                .map_or(self.next_gc, |(t, _)| t.min(self.next_gc)),
        )
    }

    /// The earliest lease expiry or waiter deadline, if any.
    pub(super) fn next_due(&self) -> Option<(Time, Due)> {
        let lease = self.leases.first().map(|&(t, f)| (t, Due::Lease(f)));
        let waiter = self.deadlines.first().map(|&(t, w)| (t, Due::Waiter(w)));
        match (lease, waiter) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Processes every item due at or before `now`, each as of its own
    /// deadline (spec/semantics.md §8). O(log n) per item.
    pub(super) fn advance(&mut self, now: Time, out: &mut Vec<Effect>) {
        assert!(
            now >= self.now,
            "time went back: {:?} < {:?}",
            now,
            self.now
        );
        self.now = now;
        loop {
            match self.next_due() {
                Some((at, due)) if at <= now && (at, due) < (self.next_gc, Due::Gc) => match due {
                    Due::Lease(fence) => {
                        self.leases.pop_first();
                        // A retired slot's timer: `purge` removes the rest.
                        if self.holders.get(&fence).is_some_and(|h| self.live(h)) {
                            self.expire(at, fence, out);
                        }
                    }
                    Due::Waiter(w) => {
                        self.deadlines.pop_first();
                        self.time_out(at, w, out);
                    }
                    Due::Gc => unreachable!("GC is not a timer entry"),
                },
                _ if self.next_gc <= now => {
                    let at = self.next_gc;
                    self.gc(at);
                    self.next_gc = at.plus_secs(self.cfg.gc_interval_s.max(1));
                }
                _ => break,
            }
        }
    }

    /// Lease `fence` reached its deadline `at`.
    pub(super) fn expire(&mut self, at: Time, fence: u64, out: &mut Vec<Effect>) {
        let h = self
            .holders
            .remove(&fence)
            .expect("lease timer names a live holder");
        let r = self.res_mut(h.res);
        r.holders -= 1;
        let space = r.space;
        if let Some(c) = self.conns.get_mut(&h.conn) {
            c.unhold(h.res, fence);
        }
        let held = at.0.saturating_sub(h.granted.0);
        self.metrics.holder_ended(space, held, Some(Cause::Expiry));
        self.note(
            h.res,
            Event::new(at, EventKind::Expired, h.conn, fence, held),
        );
        // The holder's two-phase record stays so that `w` can answer
        // `error_lease_expired` (D18).
        self.touch(h.res, at);
        self.hand_off(at, h.res, out);
    }

    /// Waiter `w` reached its deadline `at`.
    pub(super) fn time_out(&mut self, at: Time, w: u64, out: &mut Vec<Effect>) {
        let waiter = &self.waiters[&w];
        let (conn, blocking, queued) = (waiter.conn, waiter.blocking, waiter.queued);
        if let Some(res) = self.remove_waiter(w, at) {
            if blocking {
                self.conn_mut(conn).blocked = None;
                let space = self.res_mut(res).space;
                self.metrics.timed_out(space);
                let waited = at.0.saturating_sub(queued.0);
                self.note(res, Event::new(at, EventKind::TimedOut, conn, 0, waited));
                status(out, conn, Status::Timeout);
            }
            self.hand_off(at, res, out);
        }
    }

    /// Collects the resources idle for longer than `gc_max_idle_s` at `at`.
    /// They are the oldest entries of `idle`: O(log n) per resource
    /// collected, nothing for the others.
    pub(super) fn gc(&mut self, at: Time) {
        self.settle();
        let max_idle_ms = self.cfg.gc_max_idle_s.saturating_mul(1000);
        while let Some(&(last, res)) = self.idle.first() {
            if at.0.saturating_sub(last.0) <= max_idle_ms {
                break;
            }
            self.idle.pop_first();
            let r = self.resources[res as usize]
                .take()
                .expect("the idle index names a live resource");
            let hash = self.key_hash.hash_one(r.key.as_bytes());
            match self.by_key[space_index(r.space)].find_entry(hash, |&id| id == res) {
                Ok(entry) => {
                    entry.remove();
                }
                Err(_) => panic!("a collected resource was not in the key index"),
            }
            self.free_slots.push(res);
            self.resource_count -= 1;
            self.forget_events(res);
        }
    }
}
