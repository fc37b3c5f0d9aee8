//! [`Core::verify`]: the core checks its own bookkeeping, in the manner of
//! TigerBeetle's `verify` and FoundationDB's invariant checks.
//!
//! Each index exists to answer one question fast; here each is recomputed
//! the slow way from the data it indexes and compared. A failure panics
//! with the name of the invariant that broke and what was found, so that
//! index corruption (a stale lease timer, a record counter off by one)
//! shows at the input that caused it rather than when it reaches a reply.
//!
//! Cost: O(state), with hash and tree lookups. `finish` calls it after
//! every input under `debug_assertions` (sampled for large states); the
//! differential tests and the fuzzer call it after every step.

use std::collections::HashMap;

use super::{Core, Record, ResId, PUSH_QUEUE_FRAMES};
use crate::core::hash::IdBuild;
use crate::core::metrics::How;
use crate::wire::Space;

/// A broken invariant: its name and what was found.
struct Broken {
    invariant: &'static str,
    detail: String,
}

/// `Err` naming `invariant` unless `cond` holds.
fn ensure(
    cond: bool,
    invariant: &'static str,
    detail: impl FnOnce() -> String,
) -> Result<(), Broken> {
    if cond {
        Ok(())
    } else {
        Err(Broken {
            invariant,
            detail: detail(),
        })
    }
}

impl Core {
    /// Checks that every index agrees with the data it indexes; panics
    /// naming the first broken invariant (`core invariant broken: <name>:
    /// <what was found>`). O(state): meant for debug builds and tests.
    pub fn verify(&self) {
        if let Err(b) = self.check_all() {
            panic!("core invariant broken: {}: {}", b.invariant, b.detail);
        }
    }

    fn check_all(&self) -> Result<(), Broken> {
        self.check_time()?;
        self.check_resources()?;
        self.check_holders()?;
        self.check_waiters()?;
        self.check_records()?;
        self.check_idle()?;
        self.check_connections()?;
        self.check_subscriptions()?;
        self.check_metrics()?;
        let insight = self.check_insight();
        ensure(insight.is_ok(), "introspection indexes", || {
            insight.err().unwrap_or_default()
        })
    }

    fn check_time(&self) -> Result<(), Broken> {
        ensure(self.next_gc > self.now, "gc is due in the future", || {
            format!("next gc {:?}, now {:?}", self.next_gc, self.now)
        })?;
        ensure(self.dirty.is_empty(), "every change is settled", || {
            format!("{} resources left dirty", self.dirty.len())
        })
    }

    /// The slab, its free list and the key index agree both ways.
    fn check_resources(&self) -> Result<(), Broken> {
        let live = self.resources.iter().flatten().count();
        ensure(live == self.resource_count, "resource count", || {
            format!("{live} resources, count says {}", self.resource_count)
        })?;
        ensure(
            self.resource_count <= self.cfg.max_locks,
            "resources within max_locks",
            || format!("{} > {}", self.resource_count, self.cfg.max_locks),
        )?;
        let mut free = vec![false; self.resources.len()];
        for &f in &self.free_slots {
            let slot = free.get_mut(f as usize);
            ensure(
                slot.is_some_and(|s| !std::mem::replace(s, true))
                    && self.resources[f as usize].is_none(),
                "free slots are empty and listed once",
                || format!("slot {f}"),
            )?;
        }
        ensure(
            self.free_slots.len() + live == self.resources.len(),
            "every empty slot is free",
            || {
                format!(
                    "{} free + {live} live != {}",
                    self.free_slots.len(),
                    self.resources.len()
                )
            },
        )?;
        let indexed = self.by_key[0].len() + self.by_key[1].len();
        ensure(indexed == live, "key index and resources agree", || {
            format!("{indexed} keys indexed, {live} resources")
        })?;
        for (id, r) in self.resources.iter().enumerate() {
            let Some(r) = r else { continue };
            ensure(
                self.lookup_bytes(r.space, r.key.as_bytes()) == Some(id as ResId),
                "key index and resources agree",
                || format!("{:?} {:?} does not find slot {id}", r.space, r.key),
            )?;
            ensure(
                r.limit >= 1 && (r.space == Space::Sem || r.limit == 1),
                "limits",
                || format!("{:?} {:?} has limit {}", r.space, r.key, r.limit),
            )?;
            ensure(r.holders <= r.limit, "holders within limit", || {
                format!("{:?}: {} holders, limit {}", r.key, r.holders, r.limit)
            })?;
            // A queue never waits in front of free capacity, unless no
            // fence is left to grant with.
            ensure(
                r.queue.is_empty() || r.holders >= r.limit || self.fence >= self.cfg.fence_ceiling,
                "hand-off is complete",
                || {
                    format!(
                        "{:?}: {} holders of {} with waiters",
                        r.key, r.holders, r.limit
                    )
                },
            )?;
            ensure(
                self.cfg.max_waiters == 0 || r.queue.len() <= self.cfg.max_waiters,
                "queue within max_waiters",
                || format!("{:?}: {} waiters", r.key, r.queue.len()),
            )?;
        }
        Ok(())
    }

    /// Each live holder is counted by its resource, has exactly one lease
    /// timer, and is in its connection's holdings; retired slots (released
    /// in bulk, waiting for `purge`) are exactly as many as still pending.
    fn check_holders(&self) -> Result<(), Broken> {
        let mut per_res: HashMap<ResId, u64, IdBuild> = HashMap::default();
        let mut retired = 0;
        for (&fence, h) in &self.holders {
            ensure(fence <= self.fence, "fences were issued", || {
                format!("holder fence {fence} > last fence {}", self.fence)
            })?;
            if !self.live(h) {
                // Its resource may be collected already, its timer popped.
                retired += 1;
                continue;
            }
            let r = self.resources.get(h.res as usize).and_then(Option::as_ref);
            ensure(r.is_some(), "holders name live resources", || {
                format!("fence {fence} names slot {}", h.res)
            })?;
            *per_res.entry(h.res).or_default() += 1;
            ensure(
                r.is_some_and(|r| r.space == h.space),
                "holders name live resources",
                || format!("fence {fence} filed under the wrong key space"),
            )?;
            ensure(h.expires > self.now, "expired leases are gone", || {
                format!(
                    "fence {fence} expired at {:?}, now {:?}",
                    h.expires, self.now
                )
            })?;
            ensure(
                self.leases.contains(&(h.expires, fence)),
                "each holder has one lease timer",
                || format!("fence {fence} has no timer at {:?}", h.expires),
            )?;
            if let Some(c) = self.conns.get(&h.conn) {
                ensure(
                    c.held.contains(&(h.res, fence)),
                    "each holder is in its connection's holdings",
                    || format!("fence {fence} missing from {:?}", h.conn),
                )?;
            }
        }
        ensure(
            retired == self.retired_pending,
            "retired slots are pending purge",
            || {
                format!(
                    "{retired} retired holders, {} pending",
                    self.retired_pending
                )
            },
        )?;
        for &(t, fence) in &self.leases {
            ensure(
                self.holders.get(&fence).is_some_and(|h| h.expires == t),
                "each holder has one lease timer",
                || format!("timer {t:?} names fence {fence}"),
            )?;
        }
        for (id, r) in self.resources.iter().enumerate() {
            let Some(r) = r else { continue };
            let n = per_res.get(&(id as ResId)).copied().unwrap_or(0);
            ensure(n == r.holders, "holder counts", || {
                format!("{:?}: counted {}, found {n}", r.key, r.holders)
            })?;
            if r.limit == 1 && r.holders == 1 {
                ensure(
                    self.holders
                        .get(&r.last_fence)
                        .is_some_and(|h| h.res == id as ResId && self.live(h)),
                    "a lock's last fence is its holder",
                    || format!("{:?}: last fence {}", r.key, r.last_fence),
                )?;
            }
        }
        let mut held = 0;
        for (id, c) in &self.conns {
            for &(res, fence) in &c.held {
                ensure(
                    self.holders
                        .get(&fence)
                        .is_some_and(|h| h.conn == *id && h.res == res),
                    "holdings name own live holders",
                    || format!("{id:?} holds fence {fence} on slot {res}"),
                )?;
            }
            held += c.held.len();
            let mut on: HashMap<ResId, u32, IdBuild> = HashMap::default();
            for &(res, _) in &c.held {
                *on.entry(res).or_default() += 1;
            }
            ensure(on == c.held_on, "holdings are counted per resource", || {
                format!("{id:?}: counts {:?}, slots give {on:?}", c.held_on)
            })?;
        }
        let live_owned = self
            .holders
            .values()
            .filter(|h| self.conns.contains_key(&h.conn))
            .count();
        ensure(held == live_owned, "holdings and holders agree", || {
            format!("{held} holdings, {live_owned} holders of live connections")
        })
    }

    /// Waiters, queues, deadlines and blocked connections agree.
    fn check_waiters(&self) -> Result<(), Broken> {
        let mut queued = 0;
        for r in self.resources.iter().flatten() {
            queued += r.queue.len();
        }
        ensure(
            queued == self.waiters.len(),
            "queues hold the live waiters",
            || format!("{queued} queued, {} waiters", self.waiters.len()),
        )?;
        let mut blocking = 0;
        for (&w, waiter) in &self.waiters {
            ensure(w < self.next_waiter, "arrival numbers were issued", || {
                format!("waiter {w}")
            })?;
            let r = self
                .resources
                .get(waiter.res as usize)
                .and_then(Option::as_ref);
            ensure(
                r.is_some_and(|r| r.queue.contains(w)),
                "queues hold the live waiters",
                || format!("waiter {w} not in the queue of slot {}", waiter.res),
            )?;
            let c = self.conns.get(&waiter.conn);
            ensure(
                c.is_some_and(|c| c.waiters.contains(&w)),
                "each waiter is in its connection's waiters",
                || format!("waiter {w} of {:?}", waiter.conn),
            )?;
            ensure(
                waiter.deadline.is_some() == waiter.blocking,
                "a waiter has a deadline exactly when it blocks",
                || format!("waiter {w}"),
            )?;
            if let Some(d) = waiter.deadline {
                blocking += 1;
                ensure(
                    self.deadlines.contains(&(d, w)),
                    "each blocked waiter has one deadline timer",
                    || format!("waiter {w} at {d:?}"),
                )?;
                ensure(d > self.now, "timed-out waiters are gone", || {
                    format!("waiter {w} due at {d:?}, now {:?}", self.now)
                })?;
                ensure(
                    c.is_some_and(|c| c.blocked == Some(w)),
                    "blocked points at a blocking waiter",
                    || format!("waiter {w} blocks {:?}", waiter.conn),
                )?;
            }
            // A waiter without a deadline is exactly a queued record.
            let rec = c.and_then(|c| c.records.get(&waiter.res));
            ensure(
                (rec == Some(&Record::Queued { waiter: w })) != waiter.blocking,
                "a non-blocking waiter is a queued record",
                || format!("waiter {w} (blocking {}), record {rec:?}", waiter.blocking),
            )?;
        }
        ensure(
            self.deadlines.len() == blocking,
            "each blocked waiter has one deadline timer",
            || {
                format!(
                    "{} timers, {blocking} blocked waiters",
                    self.deadlines.len()
                )
            },
        )?;
        for (id, c) in &self.conns {
            if let Some(w) = c.blocked {
                ensure(
                    self.waiters
                        .get(&w)
                        .is_some_and(|x| x.conn == *id && x.blocking),
                    "blocked points at a blocking waiter",
                    || format!("{id:?} blocked on {w}"),
                )?;
            }
            for w in &c.waiters {
                ensure(
                    self.waiters.get(w).is_some_and(|x| x.conn == *id),
                    "connection waiters are its own live waiters",
                    || format!("{id:?} lists waiter {w}"),
                )?;
            }
        }
        Ok(())
    }

    /// Two-phase records: counted by their resource, consistent with the
    /// waiter or holder they name.
    fn check_records(&self) -> Result<(), Broken> {
        let mut per_res: HashMap<ResId, u32, IdBuild> = HashMap::default();
        for (id, c) in &self.conns {
            for (&res, rec) in &c.records {
                ensure(
                    self.resources
                        .get(res as usize)
                        .is_some_and(Option::is_some),
                    "records name live resources",
                    || format!("{id:?} record on slot {res}"),
                )?;
                *per_res.entry(res).or_default() += 1;
                match *rec {
                    Record::Queued { waiter } => ensure(
                        self.waiters
                            .get(&waiter)
                            .is_some_and(|w| w.conn == *id && w.res == res && !w.blocking),
                        "a queued record names its waiter",
                        || format!("{id:?} record names waiter {waiter}"),
                    )?,
                    // The holder may be gone (D18), but a live one is this
                    // resource's.
                    Record::Granted { fence, .. } => ensure(
                        self.holders.get(&fence).is_none_or(|h| h.res == res),
                        "a granted record names its resource's holder",
                        || format!("{id:?} record names fence {fence}"),
                    )?,
                }
            }
        }
        for (id, r) in self.resources.iter().enumerate() {
            let Some(r) = r else { continue };
            let n = per_res.get(&(id as ResId)).copied().unwrap_or(0);
            ensure(n == r.records, "record counts", || {
                format!("{:?}: counted {}, found {n}", r.key, r.records)
            })?;
        }
        Ok(())
    }

    /// The idle index holds exactly the unreferenced resources, filed under
    /// their last activity.
    fn check_idle(&self) -> Result<(), Broken> {
        let mut unreferenced = 0;
        for (id, r) in self.resources.iter().enumerate() {
            let Some(r) = r else { continue };
            let want = r.unreferenced();
            ensure(r.filed == want, "idle index and resources agree", || {
                format!("{:?}: filed {}, unreferenced {want}", r.key, r.filed)
            })?;
            if want {
                unreferenced += 1;
                ensure(
                    self.idle.contains(&(r.last_activity, id as ResId)),
                    "idle index and resources agree",
                    || format!("{:?} missing from the idle index", r.key),
                )?;
            }
        }
        ensure(
            self.idle.len() == unreferenced,
            "idle index and resources agree",
            || format!("{} filed, {unreferenced} unreferenced", self.idle.len()),
        )
    }

    fn check_connections(&self) -> Result<(), Broken> {
        for (id, c) in &self.conns {
            ensure(id.0 < self.next_conn, "connection ids were issued", || {
                format!("{id:?}")
            })?;
            ensure(
                c.outstanding <= PUSH_QUEUE_FRAMES,
                "pushes within the queue",
                || format!("{id:?}: {} outstanding", c.outstanding),
            )?;
            ensure(
                self.cfg.max_subscriptions == 0 || c.subs.len() <= self.cfg.max_subscriptions,
                "subscriptions within max_subscriptions",
                || format!("{id:?}: {}", c.subs.len()),
            )?;
        }
        Ok(())
    }

    /// The trie agrees with the connections' subscription lists.
    fn check_subscriptions(&self) -> Result<(), Broken> {
        self.signals.check().map_err(|detail| Broken {
            invariant: "subscription trie",
            detail,
        })?;
        let mut total = 0;
        for (id, c) in &self.conns {
            for (pattern, group) in &c.subs {
                ensure(
                    self.signals.is_member(pattern.as_bytes(), group, *id),
                    "subscription index agrees with connections",
                    || format!("{id:?} listens on {pattern:?} {group:?}, the trie disagrees"),
                )?;
            }
            total += c.subs.len();
        }
        ensure(
            total == self.signals.member_count(),
            "subscription index agrees with connections",
            || {
                format!(
                    "{total} subscriptions, {} trie members",
                    self.signals.member_count()
                )
            },
        )
    }

    /// Counters agree with the state: every grant either still holds or
    /// has ended (and was observed by the hold histogram once).
    fn check_metrics(&self) -> Result<(), Broken> {
        // Retired holders count as holding until `purge` counts them ended.
        let mut live = [0u64; 2];
        for h in self.holders.values() {
            live[usize::from(h.space == Space::Sem)] += 1;
        }
        for (i, space) in [Space::Lock, Space::Sem].into_iter().enumerate() {
            let m = &self.metrics;
            let grants = m.grants(space, How::Immediate) + m.grants(space, How::Queued);
            let ended = m.hold(space).count();
            ensure(
                grants == ended + live[i],
                "metrics agree with holders",
                || {
                    format!(
                        "{space:?}: {grants} grants, {ended} ended, {} holding",
                        live[i]
                    )
                },
            )?;
            ensure(
                m.acquire_wait(space).count() == grants,
                "metrics agree with holders",
                || {
                    format!(
                        "{space:?}: {grants} grants, wait histogram counts {}",
                        m.acquire_wait(space).count()
                    )
                },
            )?;
        }
        Ok(())
    }
}
