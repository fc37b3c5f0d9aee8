//! Grants and FIFO hand-off: the one place a waiter becomes a holder.
//! [`Core::grant`] checks the invariant a lock server stops rather than
//! break (`holders ≤ limit`, the waiter left the queue first);
//! [`Core::hand_off`] grants the head of a resource's queue while a slot is
//! free, in arrival order, and nothing else.

use super::introspect::{Event, EventKind};
use super::{reply, status, Core, Effect, Holder, Record, ResId};
use crate::core::{ConnId, Time};
use crate::wire::{Reply, Status, Token};

impl Core {
    /// Grants a slot of `res` to `conn` as of `at`; `queued` is when the
    /// request joined the queue, `None` if it did not. `None` when the fence
    /// ceiling is reached (nothing changes then); callers check first.
    pub(super) fn grant(
        &mut self,
        at: Time,
        res: ResId,
        conn: ConnId,
        lease_s: u64,
        queued: Option<Time>,
    ) -> Option<Token> {
        if self.fence >= self.cfg.fence_ceiling {
            return None;
        }
        self.fence += 1;
        let fence = self.fence;
        let token = self.token(fence);
        let expires = at.plus_secs(lease_s);
        let r = self.res_mut(res);
        assert!(r.holders < r.limit, "grant would exceed the limit");
        r.holders += 1;
        r.last_fence = fence;
        let space = r.space;
        self.touch(res, at);
        let waited = queued.map(|q| at.0.saturating_sub(q.0));
        self.metrics.granted(space, waited);
        let e = Event::new(at, EventKind::Granted, conn, fence, waited.unwrap_or(0));
        self.note(res, e);
        let prior = self.holders.insert(
            fence,
            Holder {
                conn,
                expires,
                granted: at,
                res,
                space,
            },
        );
        assert!(prior.is_none(), "a fence was issued twice");
        self.leases.insert((expires, fence));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.hold(res, fence);
        }
        Some(token)
    }

    /// Grants waiters from the head of `res`'s queue while capacity lasts
    /// (spec/semantics.md §7). O(log n) per waiter granted or timed out.
    pub(super) fn hand_off(&mut self, at: Time, res: ResId, out: &mut Vec<Effect>) {
        loop {
            let r = self.res_mut(res);
            if r.holders >= r.limit {
                return;
            }
            let Some(head) = r.queue.first() else {
                return;
            };
            let w = self
                .waiters
                .get(&head)
                .expect("a queued arrival names a live waiter");
            if w.deadline.is_some_and(|d| d <= at) {
                // Dead at `at`: a timed-out waiter is never granted. Timed out
                // here rather than through `time_out`, which would hand off
                // again: one loop, not one stack frame per dead waiter.
                let (conn, blocking, queued) = (w.conn, w.blocking, w.queued);
                self.remove_waiter(head, at);
                if blocking {
                    let space = self.res_mut(res).space;
                    self.metrics.timed_out(space);
                    let waited = at.0.saturating_sub(queued.0);
                    self.note(res, Event::new(at, EventKind::TimedOut, conn, 0, waited));
                    status(out, conn, Status::Timeout);
                }
                continue;
            }
            if self.fence >= self.cfg.fence_ceiling {
                // Resume when the driver raises the ceiling.
                self.starved.insert(res);
                return;
            }
            let (conn, lease_s, blocking, two_phase, queued) =
                (w.conn, w.lease_s, w.blocking, w.two_phase, w.queued);
            // Take the waiter out of the queue before it becomes a holder.
            self.remove_waiter(head, at);
            let token = self
                .grant(at, res, conn, lease_s, Some(queued))
                .expect("fence headroom checked above");
            if blocking {
                let c = self.conn_mut(conn);
                c.blocked = None;
                c.answered = Some(token.fence);
                reply(out, conn, Reply::Granted { token, lease_s });
            } else if two_phase {
                self.set_record(
                    conn,
                    res,
                    Record::Granted {
                        fence: token.fence,
                        lease_s,
                    },
                );
            }
        }
    }
}
