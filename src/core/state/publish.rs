//! Signals in the core: `listen` on a pattern (optionally in a queue
//! group; `unlisten` is one removal, in the dispatch) and `signal`, which delivers one push to every matching
//! ungrouped listener and to one member of each matching group. A listener
//! whose unwritten pushes reached the limit is evicted as a slow consumer
//! instead of buffering without bound.

use std::collections::HashMap;

use super::{reply, status, CloseReason, Conn, Core, Effect};
use crate::core::hash::IdBuild;
use crate::core::members::Members;
use crate::core::metrics::Cause;
use crate::core::signals::{self, Route, PUSH_QUEUE_FRAMES};
use crate::core::ConnId;
use crate::wire::{Key, Reply, Status};

/// One signal's delivery in progress: who was reached and what was counted.
struct Delivery<'a> {
    conns: &'a mut HashMap<ConnId, Conn, IdBuild>,
    out: &'a mut Vec<Effect>,
    channel: &'a Key,
    payload: std::sync::Arc<[u8]>,
    /// Connections an ungrouped route of this signal already reached.
    served: std::collections::HashSet<ConnId, IdBuild>,
    delivered: u64,
    slow_consumers: u64,
}

impl Delivery<'_> {
    fn full(conns: &HashMap<ConnId, Conn, IdBuild>, c: ConnId) -> bool {
        conns
            .get(&c)
            .is_none_or(|c| c.evicted || c.outstanding >= PUSH_QUEUE_FRAMES)
    }

    fn evicted(conns: &HashMap<ConnId, Conn, IdBuild>, c: ConnId) -> bool {
        conns.get(&c).is_none_or(|c| c.evicted)
    }

    fn push(&mut self, to: ConnId) {
        if let Some(c) = self.conns.get_mut(&to) {
            c.outstanding += 1;
        }
        self.out.push(Effect::Push {
            conn: to,
            channel: self.channel.clone(),
            payload: self.payload.clone(),
        });
        self.delivered += 1;
    }

    /// Delivers to every ungrouped listener of a pattern not served yet;
    /// returns the pushes made.
    fn everyone(&mut self, members: &Members) -> u64 {
        let before = self.delivered;
        for to in members.iter() {
            if !self.served.insert(to) || Self::evicted(self.conns, to) {
                continue;
            }
            if Self::full(self.conns, to) {
                self.slow_consumers += u64::from(evict(self.conns, to, self.out));
            } else {
                self.push(to);
            }
        }
        self.delivered - before
    }

    /// Delivers to one member of a queue group; returns the pushes made.
    fn one_of(&mut self, g: &mut signals::Group) -> u64 {
        let conns = &*self.conns;
        match signals::pick(g, |c| Self::full(conns, c), |c| Self::evicted(conns, c)) {
            Route::Deliver(to) => {
                self.push(to);
                1
            }
            Route::Evict(to) => {
                self.slow_consumers += u64::from(evict(self.conns, to, self.out));
                0
            }
            Route::Skip => 0,
        }
    }
}

/// Closes `conn` as a slow consumer (Decision D13). Returns whether it was
/// a live connection not evicted before.
pub(super) fn evict(
    conns: &mut HashMap<ConnId, Conn, IdBuild>,
    conn: ConnId,
    out: &mut Vec<Effect>,
) -> bool {
    let newly = conns
        .get_mut(&conn)
        .is_some_and(|c| !std::mem::replace(&mut c.evicted, true));
    out.push(Effect::Close {
        conn,
        reason: CloseReason::SlowConsumer,
    });
    newly
}

impl Core {
    pub(super) fn listen(
        &mut self,
        conn: ConnId,
        pattern: Key,
        group: Option<Box<[u8]>>,
        out: &mut Vec<Effect>,
    ) {
        let sub = (pattern, group.unwrap_or_default());
        let max = self.cfg.max_subscriptions;
        let c = self
            .conns
            .get_mut(&conn)
            .expect("input for an unknown connection");
        if c.subs.contains(&sub) {
            // Already subscribed: a no-op, even at the cap (Decision D12).
            return reply(out, conn, Reply::Ok);
        }
        if max > 0 && c.subs.len() >= max {
            return status(out, conn, Status::Error);
        }
        self.signals.add(sub.0.as_bytes(), &sub.1, conn);
        c.subs.insert(sub);
        reply(out, conn, Reply::Ok);
    }

    /// Delivers a signal (spec/semantics.md §12): exact ungrouped listeners,
    /// exact groups (one member each), wildcard ungrouped listeners not yet
    /// served by an ungrouped route, wildcard groups. Answers `ok <n>` with
    /// the number of pushes emitted. Costs the trie walk (see `signals.rs`)
    /// plus O(log n) per route and O(1) per listener reached.
    pub(super) fn signal(
        &mut self,
        conn: ConnId,
        channel: Key,
        payload: Box<[u8]>,
        out: &mut Vec<Effect>,
    ) {
        let found = self.signals.matches(channel.as_bytes());
        let index = &mut self.signals;
        let mut d = Delivery {
            conns: &mut self.conns,
            out: &mut *out,
            channel: &channel,
            payload: payload.into(),
            served: Default::default(),
            delivered: 0,
            slow_consumers: 0,
        };
        // Steps 1 and 2: the exact channel's ungrouped listeners, then its
        // groups in name order.
        // (Each route counts its pushes for introspection.)
        if let Some(f) = found.exact {
            let subs = index.subs_mut(f);
            subs.pushes += d.everyone(&subs.ungrouped);
            for g in subs.groups.values_mut() {
                g.pushes += d.one_of(g);
            }
        }
        // Step 3: matching wildcard patterns' ungrouped listeners.
        for &f in &found.wild {
            let subs = index.subs_mut(f);
            subs.pushes += d.everyone(&subs.ungrouped);
        }
        // Step 4: matching wildcard patterns' groups.
        for &f in &found.wild {
            for g in index.subs_mut(f).groups.values_mut() {
                g.pushes += d.one_of(g);
            }
        }
        let (delivered, slow) = (d.delivered, d.slow_consumers);
        self.metrics.evicted(Cause::SlowConsumer, slow);
        self.metrics.signal(delivered);
        reply(out, conn, Reply::OkInt(delivered));
    }
}
