//! The requests that take, give back or extend a slot: `acquire`
//! (blocking or not), `release`, `renew`, and the two-phase `enqueue` then
//! `wait` (reference §5). Each costs O(log n) plus what it changes; a
//! blocked request becomes a waiter ([`Core::add_waiter`]) with its
//! deadline, and a release hands the slot on ([`Core::hand_off`]).

use super::introspect::{Event, EventKind};
use super::{reply, status, Core, Effect, Record};
use crate::core::{ConnId, Time};
use crate::wire::{Key, Reply, Space, Status};

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn acquire(
        &mut self,
        now: Time,
        conn: ConnId,
        space: Space,
        key: Key,
        timeout_s: u64,
        limit: u64,
        lease_s: Option<u64>,
        out: &mut Vec<Effect>,
    ) {
        let lease_s = lease_s.unwrap_or(self.cfg.default_lease_s);
        let res = match self.get_or_create(now, space, key, limit) {
            Ok(res) => res,
            Err(s) => return status(out, conn, s),
        };
        let max_waiters = self.cfg.max_waiters;
        let fenced_out = self.fence >= self.cfg.fence_ceiling;
        self.touch(res, now);
        let r = self.res_mut(res);
        let free = r.holders < r.limit && r.queue.is_empty();
        if free && !fenced_out {
            let token = self
                .grant(now, res, conn, lease_s, None)
                .expect("fence headroom checked above");
            return reply(out, conn, Reply::Granted { token, lease_s });
        }
        // Free but no fence to issue (§6): queue like any waiter, and the
        // ceiling's rise grants it.
        if max_waiters > 0 && r.queue.len() >= max_waiters {
            return status(out, conn, Status::ErrorMaxWaiters);
        }
        if timeout_s == 0 {
            self.metrics.timed_out(space);
            self.note(res, Event::new(now, EventKind::TimedOut, conn, 0, 0));
            return status(out, conn, Status::Timeout);
        }
        let w = self.add_waiter(
            now,
            conn,
            res,
            lease_s,
            Some(now.plus_secs(timeout_s)),
            true,
            false,
        );
        self.conn_mut(conn).blocked = Some(w);
        if free {
            self.starved.insert(res);
        }
    }

    pub(super) fn release(
        &mut self,
        now: Time,
        conn: ConnId,
        space: Space,
        key: &Key,
        token: &[u8],
        out: &mut Vec<Effect>,
    ) {
        let Some(fence) = self.find_holder(space, key, token) else {
            return status(out, conn, Status::Error);
        };
        let res = self.remove_holder(now, fence, None);
        self.touch(res, now);
        self.hand_off(now, res, out);
        reply(out, conn, Reply::Ok);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn renew(
        &mut self,
        now: Time,
        conn: ConnId,
        space: Space,
        key: &Key,
        token: &[u8],
        lease_s: Option<u64>,
        out: &mut Vec<Effect>,
    ) {
        let lease_s = lease_s.unwrap_or(self.cfg.default_lease_s);
        let Some(fence) = self.find_holder(space, key, token) else {
            return status(out, conn, Status::Error);
        };
        let res = self.set_expiry(fence, now.plus_secs(lease_s));
        self.touch(res, now);
        reply(out, conn, Reply::OkInt(lease_s));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn enqueue(
        &mut self,
        now: Time,
        conn: ConnId,
        space: Space,
        key: Key,
        limit: u64,
        lease_s: Option<u64>,
        out: &mut Vec<Effect>,
    ) {
        let lease_s = lease_s.unwrap_or(self.cfg.default_lease_s);
        if let Some(res) = self.lookup(space, &key) {
            if let Some(&rec) = self.conn_mut(conn).records.get(&res) {
                let live = match rec {
                    Record::Queued { .. } => true,
                    Record::Granted { fence, .. } => self.holds(res, fence),
                };
                if live {
                    return status(out, conn, Status::ErrorAlreadyEnqueued);
                }
                // A granted record whose lease is gone never blocks a new `e` (D18).
                self.conn_mut(conn).records.remove(&res);
                self.record_removed(res);
            }
        }
        let res = match self.get_or_create(now, space, key, limit) {
            Ok(res) => res,
            Err(s) => return status(out, conn, s),
        };
        let max_waiters = self.cfg.max_waiters;
        let fenced_out = self.fence >= self.cfg.fence_ceiling;
        self.touch(res, now);
        let r = self.res_mut(res);
        let free = r.holders < r.limit && r.queue.is_empty();
        if free && !fenced_out {
            let token = self
                .grant(now, res, conn, lease_s, None)
                .expect("fence headroom checked above");
            self.set_record(
                conn,
                res,
                Record::Granted {
                    fence: token.fence,
                    lease_s,
                },
            );
            return reply(out, conn, Reply::Acquired { token, lease_s });
        }
        // Free but no fence to issue (§6): queued, granted when the
        // ceiling rises.
        if max_waiters > 0 && r.queue.len() >= max_waiters {
            return status(out, conn, Status::ErrorMaxWaiters);
        }
        let w = self.add_waiter(now, conn, res, lease_s, None, false, true);
        self.set_record(conn, res, Record::Queued { waiter: w });
        if free {
            self.starved.insert(res);
        }
        status(out, conn, Status::Queued);
    }

    pub(super) fn wait(
        &mut self,
        now: Time,
        conn: ConnId,
        space: Space,
        key: &Key,
        timeout_s: u64,
        out: &mut Vec<Effect>,
    ) {
        let res = self.lookup(space, key);
        let rec = res.and_then(|res| self.conn_mut(conn).records.remove(&res));
        let (Some(res), Some(rec)) = (res, rec) else {
            return status(out, conn, Status::ErrorNotEnqueued);
        };
        self.record_removed(res);
        match rec {
            Record::Granted { fence, lease_s } => {
                if self.holds(res, fence) {
                    let token = self.token(fence);
                    self.set_expiry(fence, now.plus_secs(lease_s));
                    self.touch(res, now);
                    reply(out, conn, Reply::Granted { token, lease_s });
                } else {
                    status(out, conn, Status::ErrorLeaseExpired)
                }
            }
            Record::Queued { waiter } => {
                if timeout_s == 0 {
                    let queued = self.waiters.get(&waiter).map_or(now, |w| w.queued);
                    self.remove_waiter(waiter, now);
                    self.metrics.timed_out(space);
                    let waited = now.0.saturating_sub(queued.0);
                    self.note(res, Event::new(now, EventKind::TimedOut, conn, 0, waited));
                    self.hand_off(now, res, out);
                    return status(out, conn, Status::Timeout);
                }
                let deadline = now.plus_secs(timeout_s);
                let w = self
                    .waiters
                    .get_mut(&waiter)
                    .expect("queued record names a live waiter");
                w.deadline = Some(deadline);
                w.blocking = true;
                self.deadlines.insert((deadline, waiter));
                self.touch(res, now);
                self.conn_mut(conn).blocked = Some(waiter);
            }
        }
    }
}
