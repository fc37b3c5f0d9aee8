//! The core's state as a value: what cluster mode's snapshots carry
//! (spec/cluster.md §3 rule 5).
//!
//! [`Core::image`] writes down what the lock service *is* at this instant
//! (resources with their slab slots, live holders, waiters, connections
//! with their two-phase records, the counters); [`Core::from_image`]
//! rebuilds every index from it (`by_key`, `leases`, `deadlines`, `idle`,
//! each connection's holdings and waiters). A core rebuilt from an image
//! answers every later input exactly as the core the image was taken from
//! would: slab slots, free slots and counters are kept as they were,
//! because they decide the order of later work (a disconnect walks its
//! resources in slot order).
//!
//! Left out on purpose: signal subscriptions and unwritten pushes (signals
//! are not replicated, spec/cluster.md §3 rule 4), the metrics (each
//! member counts its own), slots already released in bulk whose index
//! entries were not purged yet (no lookup sees them). Cost: O(n log n) in
//! the size of the state, once per snapshot.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::compact::{Queue, ResKey};
use super::{space_index, Conn, Core, CoreConfig, Holder, Record, ResId, Resource, Waiter};
use crate::core::{ConnId, Time};
use crate::wire::{Key, Space};

/// A core's state (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreImage {
    now: Time,
    fence: u64,
    next_conn: u64,
    next_waiter: u64,
    next_gc: Time,
    draining: bool,
    /// The slab, slot by slot (`None` for a free slot).
    resources: Vec<Option<ResourceImage>>,
    free_slots: Vec<ResId>,
    /// Live holders, by fence.
    holders: Vec<HolderImage>,
    /// Live waiters, by arrival number.
    waiters: Vec<WaiterImage>,
    /// Connections, by id.
    conns: Vec<ConnImage>,
    starved: Vec<ResId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ResourceImage {
    key: Key,
    space: Space,
    limit: u64,
    last_fence: u64,
    last_activity: Time,
    records: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HolderImage {
    fence: u64,
    conn: ConnId,
    expires: Time,
    granted: Time,
    res: ResId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WaiterImage {
    arrival: u64,
    conn: ConnId,
    res: ResId,
    lease_s: u64,
    deadline: Option<Time>,
    blocking: bool,
    two_phase: bool,
    queued: Time,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum RecordImage {
    Queued { waiter: u64 },
    Granted { fence: u64, lease_s: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ConnImage {
    id: ConnId,
    authed: bool,
    records: Vec<(ResId, RecordImage)>,
    blocked: Option<u64>,
    answered: Option<u64>,
    evicted: bool,
}

/// Why an image was refused: its parts disagree (it is damaged, or came
/// from another program). The message names the part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageError(pub String);

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "core image: {}", self.0)
    }
}

impl std::error::Error for ImageError {}

fn bad(what: &str) -> ImageError {
    ImageError(what.to_owned())
}

impl Core {
    /// The state as a value (see the module documentation).
    pub fn image(&self) -> CoreImage {
        let resources = self
            .resources
            .iter()
            .map(|r| {
                r.as_ref().map(|r| ResourceImage {
                    key: Key::new(r.key.as_bytes()).expect("a stored key was a valid key"),
                    space: r.space,
                    limit: r.limit,
                    last_fence: r.last_fence,
                    last_activity: r.last_activity,
                    records: r.records,
                })
            })
            .collect();
        let mut holders: Vec<HolderImage> = self
            .holders
            .iter()
            .filter(|(fence, h)| self.image_holder_live(**fence, h))
            .map(|(&fence, h)| HolderImage {
                fence,
                conn: h.conn,
                expires: h.expires,
                granted: h.granted,
                res: h.res,
            })
            .collect();
        holders.sort_unstable_by_key(|h| h.fence);
        let mut waiters: Vec<WaiterImage> = self
            .waiters
            .iter()
            .map(|(&arrival, w)| WaiterImage {
                arrival,
                conn: w.conn,
                res: w.res,
                lease_s: w.lease_s,
                deadline: w.deadline,
                blocking: w.blocking,
                two_phase: w.two_phase,
                queued: w.queued,
            })
            .collect();
        waiters.sort_unstable_by_key(|w| w.arrival);
        let mut conns: Vec<ConnImage> = self
            .conns
            .iter()
            .map(|(&id, c)| {
                let mut records: Vec<(ResId, RecordImage)> = c
                    .records
                    .iter()
                    .map(|(&res, r)| {
                        let r = match *r {
                            Record::Queued { waiter } => RecordImage::Queued { waiter },
                            Record::Granted { fence, lease_s } => {
                                RecordImage::Granted { fence, lease_s }
                            }
                        };
                        (res, r)
                    })
                    .collect();
                records.sort_unstable_by_key(|(res, _)| *res);
                ConnImage {
                    id,
                    authed: c.authed,
                    records,
                    blocked: c.blocked,
                    answered: c.answered,
                    evicted: c.evicted,
                }
            })
            .collect();
        conns.sort_unstable_by_key(|c| c.id);
        CoreImage {
            now: self.now,
            fence: self.fence,
            next_conn: self.next_conn,
            next_waiter: self.next_waiter,
            next_gc: self.next_gc,
            draining: self.draining,
            resources,
            free_slots: self.free_slots.clone(),
            holders,
            waiters,
            conns,
            starved: self.starved.iter().copied().collect(),
        }
    }

    /// A holder a lookup would see: one whose connection still holds the
    /// slot, or (without auto-release) whose connection is gone. A slot
    /// released in bulk and not purged yet is neither.
    fn image_holder_live(&self, fence: u64, h: &Holder) -> bool {
        match self.conns.get(&h.conn) {
            Some(c) => c.held.contains(&(h.res, fence)),
            None => !self.cfg.auto_release_on_disconnect,
        }
    }

    /// Rebuilds a core from `image` under `cfg` (the same configuration
    /// the image's core ran with: limits and the salt key are not in the
    /// image). Every cross-reference is checked: a damaged image is an
    /// error, never a core that breaks its invariants later.
    pub fn from_image(cfg: CoreConfig, image: CoreImage) -> Result<Core, ImageError> {
        let mut core = Core::new(cfg, image.now);
        core.fence = image.fence;
        core.next_conn = image.next_conn;
        core.next_waiter = image.next_waiter;
        core.next_gc = image.next_gc;
        core.draining = image.draining;
        let slots = image.resources.len();
        for (slot, r) in image.resources.into_iter().enumerate() {
            let Some(r) = r else {
                core.resources.push(None);
                continue;
            };
            let res = slot as ResId;
            let hash = std::hash::BuildHasher::hash_one(&core.key_hash, r.key.as_bytes());
            let space = space_index(r.space);
            let dup = core.by_key[space]
                .find(hash, |&id| {
                    core.resources[id as usize]
                        .as_ref()
                        .is_some_and(|o| o.key.as_bytes() == r.key.as_bytes())
                })
                .is_some();
            if dup {
                return Err(bad("a key is listed twice"));
            }
            core.resources.push(Some(Resource {
                key: ResKey::new(&r.key),
                limit: r.limit,
                holders: 0,
                last_fence: r.last_fence,
                queue: Queue::default(),
                last_activity: r.last_activity,
                records: r.records,
                space: r.space,
                filed: false,
            }));
            core.resource_count += 1;
            let (resources, key_hash) = (&core.resources, &core.key_hash);
            core.by_key[space].insert_unique(hash, res, |&id| {
                let r = resources[id as usize].as_ref().expect("live");
                std::hash::BuildHasher::hash_one(key_hash, r.key.as_bytes())
            });
        }
        for &slot in &image.free_slots {
            if core
                .resources
                .get(slot as usize)
                .is_none_or(Option::is_some)
            {
                return Err(bad("a free slot is not free"));
            }
        }
        if image.free_slots.len() + core.resource_count != slots {
            return Err(bad("free slots and resources do not add up"));
        }
        core.free_slots = image.free_slots;
        for c in image.conns {
            let mut conn = Conn {
                authed: c.authed,
                blocked: c.blocked,
                answered: c.answered,
                evicted: c.evicted,
                ..Conn::default()
            };
            for (res, r) in c.records {
                core.resource(res)?;
                let r = match r {
                    RecordImage::Queued { waiter } => Record::Queued { waiter },
                    RecordImage::Granted { fence, lease_s } => Record::Granted { fence, lease_s },
                };
                conn.records.insert(res, r);
            }
            if core.conns.insert(c.id, conn).is_some() {
                return Err(bad("a connection is listed twice"));
            }
        }
        let last_fence = core.fence;
        for h in image.holders {
            let r = core.resource(h.res)?;
            r.holders += 1;
            if r.holders > r.limit || h.fence > last_fence {
                return Err(bad("a holder breaks its resource's limit or the fence"));
            }
            let space = r.space;
            if let Some(c) = core.conns.get_mut(&h.conn) {
                c.hold(h.res, h.fence);
            } else if core.cfg.auto_release_on_disconnect {
                return Err(bad("a holder's connection is gone"));
            }
            core.leases.insert((h.expires, h.fence));
            // The restored core counts the holdings it starts with as
            // grants of its own (metrics are each member's, never state).
            core.metrics.granted(space, None);
            let holder = Holder {
                conn: h.conn,
                expires: h.expires,
                granted: h.granted,
                res: h.res,
                space,
            };
            if core.holders.insert(h.fence, holder).is_some() {
                return Err(bad("a fence is held twice"));
            }
        }
        for w in image.waiters {
            core.resource(w.res)?;
            // Through the hook that also files the key in the contended
            // index, as a queued request does (`top` reads that index).
            core.queue_insert(w.res, w.arrival);
            let conn = core
                .conns
                .get_mut(&w.conn)
                .ok_or_else(|| bad("a waiter's connection is gone"))?;
            conn.waiters.insert(w.arrival);
            if let Some(d) = w.deadline {
                core.deadlines.insert((d, w.arrival));
            }
            let waiter = Waiter {
                conn: w.conn,
                res: w.res,
                lease_s: w.lease_s,
                deadline: w.deadline,
                blocking: w.blocking,
                two_phase: w.two_phase,
                queued: w.queued,
            };
            if core.waiters.insert(w.arrival, waiter).is_some() || w.arrival >= core.next_waiter {
                return Err(bad(
                    "a waiter's arrival number is repeated or in the future",
                ));
            }
        }
        let starved: BTreeSet<ResId> = image.starved.into_iter().collect();
        for &res in &starved {
            core.resource(res)?;
        }
        core.starved = starved;
        for (slot, r) in core.resources.iter_mut().enumerate() {
            if let Some(r) = r {
                if r.unreferenced() {
                    core.idle.insert((r.last_activity, slot as ResId));
                    r.filed = true;
                }
            }
        }
        #[cfg(debug_assertions)]
        core.verify();
        Ok(core)
    }

    fn resource(&mut self, res: ResId) -> Result<&mut Resource, ImageError> {
        self.resources
            .get_mut(res as usize)
            .and_then(Option::as_mut)
            .ok_or_else(|| bad("a reference to a resource that is not there"))
    }
}
