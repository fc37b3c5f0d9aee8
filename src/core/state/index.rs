//! Bookkeeping over the core's indexes: finding a resource by key (or
//! creating it, within `max_locks`), a holder by fence or token, adding and
//! removing holders and waiters with every index that names them (`holders`,
//! `leases`, `deadlines`, the connection's own sets, the resource's queue),
//! and the idle order. Each helper keeps all the structures it touches in
//! agreement, which `verify.rs` checks after every input.

use std::hash::BuildHasher;

use super::compact::{Queue, ResKey};
use super::introspect::{Event, EventKind};
use super::{space_index, Conn, Core, Record, ResId, Resource, Waiter};
use crate::core::metrics::Cause;
use crate::core::{token_salt, ConnId, Time};
use crate::wire::{Key, Space, Status, Token};

impl Core {
    /// The token of `fence`.
    pub(super) fn token(&self, fence: u64) -> Token {
        Token {
            fence,
            salt: token_salt(self.cfg.salt_key, fence),
        }
    }

    /// Records activity on `res` at `t` (spec/semantics.md §2: creation, a
    /// request reaching it, any change of its holders, leases or queue).
    pub(super) fn touch(&mut self, res: ResId, t: Time) {
        let r = self.resources[res as usize]
            .as_mut()
            .expect("dangling resource id");
        if t > r.last_activity {
            if r.filed {
                // Filed under the old time: unfile; `settle` refiles.
                self.idle.remove(&(r.last_activity, res));
                r.filed = false;
            }
            r.last_activity = t;
        }
        if self.dirty.last() != Some(&res) {
            self.dirty.push(res);
        }
    }

    /// Re-files every resource changed since the last call in the idle
    /// index: O(log n) per changed resource.
    pub(super) fn settle(&mut self) {
        while let Some(res) = self.dirty.pop() {
            let Some(r) = self.resources[res as usize].as_mut() else {
                continue;
            };
            let want = r.unreferenced();
            if want != r.filed {
                if want {
                    self.idle.insert((r.last_activity, res));
                } else {
                    self.idle.remove(&(r.last_activity, res));
                }
                r.filed = want;
            }
        }
    }

    pub(super) fn conn_mut(&mut self, conn: ConnId) -> &mut Conn {
        self.conns
            .get_mut(&conn)
            .expect("input for an unknown connection")
    }

    pub(super) fn res_mut(&mut self, res: ResId) -> &mut Resource {
        self.resources[res as usize]
            .as_mut()
            .expect("dangling resource id")
    }

    /// The resource of (space, key), if it exists. One hash lookup.
    pub(super) fn lookup(&self, space: Space, key: &Key) -> Option<ResId> {
        self.lookup_bytes(space, key.as_bytes())
    }

    pub(super) fn lookup_bytes(&self, space: Space, key: &[u8]) -> Option<ResId> {
        let hash = self.key_hash.hash_one(key);
        let resources = &self.resources;
        self.by_key[space_index(space)]
            .find(hash, |&id| {
                resources[id as usize]
                    .as_ref()
                    .is_some_and(|r| r.key.as_bytes() == key)
            })
            .copied()
    }

    pub(super) fn get_or_create(
        &mut self,
        now: Time,
        space: Space,
        key: Key,
        limit: u64,
    ) -> Result<ResId, Status> {
        if let Some(res) = self.lookup(space, &key) {
            return if self.res_mut(res).limit == limit {
                Ok(res)
            } else {
                Err(Status::ErrorLimitMismatch)
            };
        }
        if self.resource_count >= self.cfg.max_locks {
            return Err(Status::ErrorMaxLocks);
        }
        let hash = self.key_hash.hash_one(key.as_bytes());
        let r = Resource {
            key: ResKey::new(&key),
            limit,
            holders: 0,
            last_fence: 0,
            queue: Queue::default(),
            last_activity: now,
            records: 0,
            space,
            filed: false,
        };
        let res = match self.free_slots.pop() {
            Some(res) => {
                self.resources[res as usize] = Some(r);
                res
            }
            None => {
                self.resources.push(Some(r));
                (self.resources.len() - 1) as ResId
            }
        };
        self.resource_count += 1;
        let (resources, key_hash) = (&self.resources, &self.key_hash);
        self.by_key[space_index(space)].insert_unique(hash, res, |&id| {
            let r = resources[id as usize]
                .as_ref()
                .expect("the key index names live resources");
            key_hash.hash_one(r.key.as_bytes())
        });
        self.dirty.push(res);
        Ok(res)
    }

    /// The fence of the live holder of (space, key) whose token is exactly
    /// `token`. O(1): one key lookup and one fence lookup.
    pub(super) fn find_holder(&self, space: Space, key: &Key, token: &[u8]) -> Option<u64> {
        let token = Token::parse(token)?;
        let res = self.lookup(space, key)?;
        let h = self.holders.get(&token.fence)?;
        (h.res == res && self.live(h) && token == self.token(token.fence)).then_some(token.fence)
    }

    /// Whether `fence` is a live holder of `res`.
    pub(super) fn holds(&self, res: ResId, fence: u64) -> bool {
        self.holders
            .get(&fence)
            .is_some_and(|h| h.res == res && self.live(h))
    }

    /// Removes a holder as of `at` (release: `cause` `None`, or disconnect),
    /// its lease timer, its place in its connection's holdings, and the
    /// connection's record naming it. Returns its resource. O(log n).
    pub(super) fn remove_holder(&mut self, at: Time, fence: u64, cause: Option<Cause>) -> ResId {
        let h = self.holders.remove(&fence).expect("holder exists");
        let res = h.res;
        let r = self.res_mut(res);
        r.holders -= 1;
        let space = r.space;
        let held = at.0.saturating_sub(h.granted.0);
        self.metrics.holder_ended(space, held, cause);
        let kind = match cause {
            None => EventKind::Released,
            Some(_) => EventKind::Disconnected,
        };
        self.note(res, Event::new(at, kind, h.conn, fence, held));
        self.leases.remove(&(h.expires, fence));
        let mut dropped_record = false;
        if let Some(c) = self.conns.get_mut(&h.conn) {
            c.unhold(res, fence);
            if let Some(Record::Granted { fence: f, .. }) = c.records.get(&res) {
                if *f == fence {
                    c.records.remove(&res);
                    dropped_record = true;
                }
            }
        }
        if dropped_record {
            self.record_removed(res);
        }
        self.dirty.push(res);
        res
    }

    /// Moves the lease of `fence` to `expires`; returns its resource.
    pub(super) fn set_expiry(&mut self, fence: u64, expires: Time) -> ResId {
        let h = self.holders.get_mut(&fence).expect("holder exists");
        let old = std::mem::replace(&mut h.expires, expires);
        let res = h.res;
        self.leases.remove(&(old, fence));
        self.leases.insert((expires, fence));
        res
    }

    pub(super) fn set_record(&mut self, conn: ConnId, res: ResId, rec: Record) {
        if self.conn_mut(conn).records.insert(res, rec).is_none() {
            self.res_mut(res).records += 1;
            self.dirty.push(res);
        }
    }

    /// A record naming `res` was dropped from its connection.
    pub(super) fn record_removed(&mut self, res: ResId) {
        self.res_mut(res).records -= 1;
        self.dirty.push(res);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_waiter(
        &mut self,
        now: Time,
        conn: ConnId,
        res: ResId,
        lease_s: u64,
        deadline: Option<Time>,
        blocking: bool,
        two_phase: bool,
    ) -> u64 {
        let w = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.insert(
            w,
            Waiter {
                conn,
                res,
                lease_s,
                deadline,
                blocking,
                two_phase,
                queued: now,
            },
        );
        self.queue_insert(res, w);
        self.dirty.push(res);
        if let Some(d) = deadline {
            self.deadlines.insert((d, w));
        }
        self.conn_mut(conn).waiters.insert(w);
        w
    }

    /// Removes waiter `w` from every index as of `at`. Returns its
    /// resource, or `None` if it was already gone. O(log n).
    pub(super) fn remove_waiter(&mut self, w: u64, at: Time) -> Option<ResId> {
        let waiter = self.waiters.remove(&w)?;
        if let Some(d) = waiter.deadline {
            self.deadlines.remove(&(d, w));
        }
        self.queue_remove(waiter.res, w);
        self.touch(waiter.res, at);
        if let Some(c) = self.conns.get_mut(&waiter.conn) {
            c.waiters.remove(&w);
            if c.blocked == Some(w) {
                c.blocked = None;
            }
        }
        Some(waiter.res)
    }
}
