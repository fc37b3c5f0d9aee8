//! Bounded introspection: what the dashboard (`/ui`), `GET /v1/stats?top=…`,
//! `GET /v1/keys/{key}`, `/metrics`, `dflockd top` and the `stats` reply read
//! from the core, without ever holding the core for longer than a bounded
//! slice of work.
//!
//! Two kinds of reads:
//!
//! * **From an index**, O(log n) per result. The busiest keys by queue
//!   length come from `contended`, an ordered set of (queue length,
//!   resource) over the keys that have waiters, so it costs memory only
//!   for contended keys (about 20 bytes each) and O(log c) per change of a
//!   queue's length. A key's view is one key lookup, its lock holder by
//!   fence (`last_fence`), its queue in FIFO order, and its recent events
//!   (`Events`, below).
//! * **Chunked scans** ([`Job`]) for everything without an index: the full
//!   `stats` listing, the `/metrics` totals, a key prefix search, the
//!   longest-held keys (oldest live grant: a walk of `leases`), the fullest
//!   semaphores, a semaphore's holders, the signal channels. Each
//!   [`Job::step`] first advances the core to `now` (as any input does),
//!   then visits at most [`SLICE`] items from where the previous step
//!   stopped, and returns; the driver releases the core lock between steps
//!   (`engine::introspect`). A scan of n items therefore holds the lock
//!   n / [`SLICE`] times, each for O(SLICE log n), and the requests of
//!   everyone else run in between.
//!
//! **Consistency of a scan.** Each item is read exactly as it is at the
//! step that reads it; the result as a whole is not an atomic snapshot.
//! Resources are walked by slab slot and subscriptions by trie node, and a
//! slot can be freed and reused between steps (idle GC), so an item created
//! or removed during the scan may be listed or not, and an item that exists
//! throughout is listed once: duplicates (a key collected and created
//! again in a slot not yet walked) are dropped, the latest reading kept.
//! Leases are walked in (expiry, fence) order from the last one seen, so a
//! lease renewed to an earlier expiry during the walk may be missed. A scan
//! with no other input between its steps is an exact snapshot (the tests
//! compare it with the one-piece `stats`).
//!
//! **Recent events per key** (`Events`): grants, releases, expiries,
//! timeouts, and what disconnects took, kept in a fixed number of small
//! rings (`EVENTS_PER_BUCKET` each) indexed by resource slot, so the total
//! is bounded by `--key-events` (48 bytes an event), allocated per ring on
//! its first event. Keys sharing a ring share its capacity: a busy key can
//! push a quiet neighbour's events out. A ring forgets a key's events when
//! the idle GC collects it. Recording is O(1) on the paths that already
//! count the event for `/metrics`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet, VecDeque};
use std::ops::Bound;

use serde::Serialize;

use super::{Core, Effect, ResId, Resource};
use crate::core::hash::IdBuild;
/// Joins the pieces of [`StatsJob::render_pieces`] into the one-line JSON.
pub use crate::core::stats::join;
use crate::core::{stats, ConnId, Time};
use crate::wire::{Key, Reply, Request, Space};

/// Items a scan visits per step: resource slots, leases or trie nodes.
/// Each costs a slab read and at most one or two hash lookups, so a step
/// stays well under a millisecond with a million of each.
pub const SLICE: usize = 4096;
/// Events kept per ring (see `Events`).
pub const EVENTS_PER_BUCKET: usize = 16;
/// Waiters shown with each key of a top list, oldest first.
pub const QUEUE_PREVIEW: usize = 5;
/// The largest `top` of a query, and the most holders or waiters one key
/// view lists: a reply stays a few hundred kilobytes.
pub const MAX_LISTED: usize = 1000;

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn kind_name(space: Space) -> &'static str {
    match space {
        Space::Lock => "lock",
        Space::Sem => "semaphore",
    }
}

/// Queue lengths as the index stores them.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ----- the core's introspection state --------------------------------------

/// What the core keeps only for introspection.
pub(super) struct Insight {
    /// (queue length, resource) of every resource with waiters.
    contended: BTreeSet<(u32, ResId)>,
    events: Events,
}

impl Insight {
    /// `key_events`: the total events kept (`--key-events`, 0 = none).
    pub(super) fn new(key_events: usize) -> Insight {
        Insight {
            contended: BTreeSet::new(),
            events: Events::new(key_events),
        }
    }
}

/// What happened to a key, as its view lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A slot was granted (`ms`: how long the request had queued; 0 when
    /// it did not).
    Granted,
    /// The holder released its slot (`ms`: how long it held it).
    Released,
    /// The holder's lease ran out (`ms`: how long it held it).
    Expired,
    /// A queued request answered `timeout` (`ms`: how long it had waited),
    /// or an acquire with timeout 0 found no free slot.
    TimedOut,
    /// A waiter left the queue because its connection went away.
    LeftQueue,
    /// Slots released because their connection went away (`count` of them;
    /// `ms`: the longest hold among them).
    Disconnected,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Granted => "granted",
            EventKind::Released => "released",
            EventKind::Expired => "expired",
            EventKind::TimedOut => "timed_out",
            EventKind::LeftQueue => "left_queue",
            EventKind::Disconnected => "disconnected",
        }
    }
}

/// One recorded event.
#[derive(Clone, Copy, Debug)]
pub(super) struct Event {
    at: Time,
    res: ResId,
    kind: EventKind,
    conn: ConnId,
    /// The slot's fence; 0 when the event is not about one slot.
    fence: u64,
    ms: u64,
    count: u32,
}

impl Event {
    pub(super) fn new(at: Time, kind: EventKind, conn: ConnId, fence: u64, ms: u64) -> Event {
        Event {
            at,
            res: 0,
            kind,
            conn,
            fence,
            ms,
            count: 1,
        }
    }
}

/// Recent events in rings indexed by resource slot (`res % rings`).
pub(super) struct Events {
    rings: Vec<VecDeque<Event>>,
}

impl Events {
    fn new(total: usize) -> Events {
        let rings = total.div_ceil(EVENTS_PER_BUCKET);
        Events {
            rings: (0..rings).map(|_| VecDeque::new()).collect(),
        }
    }

    fn ring(&mut self, res: ResId) -> Option<&mut VecDeque<Event>> {
        let n = self.rings.len();
        (n > 0).then(|| &mut self.rings[res as usize % n])
    }

    fn record(&mut self, res: ResId, mut e: Event) {
        if let Some(ring) = self.ring(res) {
            if ring.len() == EVENTS_PER_BUCKET {
                ring.pop_front();
            } else if ring.capacity() == 0 {
                ring.reserve_exact(EVENTS_PER_BUCKET);
            }
            e.res = res;
            ring.push_back(e);
        }
    }

    /// The slot was freed: its events belong to no key any more.
    fn forget(&mut self, res: ResId) {
        if let Some(ring) = self.ring(res) {
            ring.retain(|e| e.res != res);
        }
    }

    fn of(&self, res: ResId) -> impl Iterator<Item = &Event> {
        let n = self.rings.len();
        let ring = (n > 0).then(|| &self.rings[res as usize % n]);
        ring.into_iter().flatten().filter(move |e| e.res == res)
    }

    /// Events kept, over all rings.
    fn len(&self) -> usize {
        self.rings.iter().map(VecDeque::len).sum()
    }
}

// ----- hooks, called by the transitions ----------------------------------------

impl Core {
    /// Adds waiter `w` to `res`'s queue and refiles `res` in the contended
    /// index. O(log n).
    pub(super) fn queue_insert(&mut self, res: ResId, w: u64) {
        let r = self.res_mut(res);
        let before = r.queue.len();
        r.queue.insert(w);
        let after = r.queue.len();
        self.requeue(res, before, after);
    }

    /// Removes waiter `w` from `res`'s queue and refiles `res`. O(log n).
    pub(super) fn queue_remove(&mut self, res: ResId, w: u64) {
        let r = self.res_mut(res);
        let before = r.queue.len();
        r.queue.remove(w);
        let after = r.queue.len();
        self.requeue(res, before, after);
    }

    fn requeue(&mut self, res: ResId, before: usize, after: usize) {
        if before == after {
            return;
        }
        let index = &mut self.insight.contended;
        if before > 0 {
            index.remove(&(len32(before), res));
        }
        if after > 0 {
            index.insert((len32(after), res));
        }
    }

    /// Records an event on `res`. O(1).
    pub(super) fn note(&mut self, res: ResId, e: Event) {
        self.insight.events.record(res, e);
    }

    /// Records that a disconnect released `n` of its slots on `res` at once
    /// (their fences are in `held`, still in `holders` until purged). O(log n).
    pub(super) fn note_dropped(
        &mut self,
        res: ResId,
        at: Time,
        held: &BTreeSet<(ResId, u64)>,
        n: u64,
    ) {
        if self.insight.events.rings.is_empty() {
            return;
        }
        // The slots are still in `holders` (until purged): the oldest one
        // names the connection and the longest hold.
        let (conn, held_ms) = held
            .range((res, 0)..=(res, u64::MAX))
            .find_map(|(_, f)| self.holders.get(f))
            .map_or((ConnId(0), 0), |h| {
                (h.conn, at.0.saturating_sub(h.granted.0))
            });
        let mut e = Event::new(at, EventKind::Disconnected, conn, 0, held_ms);
        e.count = u32::try_from(n).unwrap_or(u32::MAX);
        self.note(res, e);
    }

    /// Slot `res` was collected by the idle GC.
    pub(super) fn forget_events(&mut self, res: ResId) {
        self.insight.events.forget(res);
    }

    /// Checks the contended index against the queues (for `verify`).
    pub(super) fn check_insight(&self) -> Result<(), String> {
        let mut expected = BTreeSet::new();
        for (id, r) in self.resources.iter().enumerate() {
            if let Some(r) = r {
                if !r.queue.is_empty() {
                    expected.insert((len32(r.queue.len()), id as ResId));
                }
            }
        }
        if expected != self.insight.contended {
            return Err(format!(
                "{} contended keys indexed, {} have waiters",
                self.insight.contended.len(),
                expected.len()
            ));
        }
        let cap = self.insight.events.rings.len() * EVENTS_PER_BUCKET;
        let kept = self.insight.events.len();
        if kept > cap {
            return Err(format!("{kept} events kept, room for {cap}"));
        }
        for (i, ring) in self.insight.events.rings.iter().enumerate() {
            for e in ring {
                let n = self.insight.events.rings.len();
                let live = self
                    .resources
                    .get(e.res as usize)
                    .is_some_and(Option::is_some);
                if e.res as usize % n != i || !live {
                    return Err(format!("an event of slot {} in ring {i}", e.res));
                }
            }
        }
        Ok(())
    }
}

// ----- views -------------------------------------------------------------------

/// Fences are written as decimal strings: they exceed 2^53 (they start
/// from the clock in nanoseconds), which a JSON number read by JavaScript
/// cannot hold exactly.
fn fence_text<S: serde::Serializer>(fence: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(fence)
}

fn some_fence_text<S: serde::Serializer>(fence: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match fence {
        Some(f) => s.collect_str(f),
        None => s.serialize_none(),
    }
}

/// A holder as the views show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HolderView {
    pub conn: u64,
    #[serde(serialize_with = "fence_text")]
    pub fence: u64,
    pub held_for_s: f64,
    pub lease_expires_in_s: f64,
}

/// A waiter as the views show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaiterView {
    pub conn: u64,
    pub waiting_for_s: f64,
    /// Seconds until its request times out; `None` for a two-phase waiter
    /// that has not called `w` yet.
    pub timeout_in_s: Option<f64>,
    /// Queued by `e`/`se`.
    pub two_phase: bool,
}

/// An event as a key view shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventView {
    /// Seconds before the view was taken.
    pub ago_s: f64,
    pub event: &'static str,
    pub conn: u64,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "some_fence_text"
    )]
    pub fence: Option<u64>,
    /// `granted`: queued for; `released`, `expired`, `disconnected`: held
    /// for; `timed_out`, `left_queue`: waited for.
    pub seconds: f64,
    /// Slots (more than one only for `disconnected`).
    pub count: u32,
}

/// One key of a top list.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyEntry {
    pub key: String,
    pub kind: &'static str,
    pub limit: u64,
    pub holders: u64,
    pub waiters: usize,
    /// How long the oldest holder has held it, when known: always for a
    /// lock, for a semaphore only in a `held_for` list.
    pub held_for_s: Option<f64>,
    /// A lock's holder.
    pub holder: Option<HolderView>,
    /// The first waiters, oldest first (at most [`QUEUE_PREVIEW`]).
    pub queue: Vec<WaiterView>,
    /// Seconds since its last activity, when nothing refers to it.
    pub idle_s: Option<f64>,
}

/// One key, in detail.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyView {
    pub key: String,
    pub kind: &'static str,
    pub limit: u64,
    pub holders: u64,
    pub waiters: usize,
    pub idle_s: Option<f64>,
    /// Holders, longest held first (at most the number asked for). A
    /// semaphore's are filled in by a [`HoldersJob`].
    pub holder_list: Vec<HolderView>,
    /// Waiters in FIFO order (at most the number asked for).
    pub queue: Vec<WaiterView>,
    /// Recent events, newest first.
    pub events: Vec<EventView>,
}

impl Core {
    fn holder_view(&self, fence: u64, now: Time) -> Option<HolderView> {
        let h = self.holders.get(&fence).filter(|h| self.live(h))?;
        Some(HolderView {
            conn: h.conn.0,
            fence,
            held_for_s: secs(now.0.saturating_sub(h.granted.0)),
            lease_expires_in_s: secs(h.expires.0.saturating_sub(now.0)),
        })
    }

    fn waiter_views(&self, r: &Resource, now: Time, n: usize) -> Vec<WaiterView> {
        r.queue
            .iter()
            .take(n)
            .filter_map(|w| self.waiters.get(&w))
            .map(|w| WaiterView {
                conn: w.conn.0,
                waiting_for_s: secs(now.0.saturating_sub(w.queued.0)),
                timeout_in_s: w.deadline.map(|d| secs(d.0.saturating_sub(now.0))),
                two_phase: w.two_phase,
            })
            .collect()
    }

    fn entry(&self, res: ResId, now: Time, held_for_ms: Option<u64>) -> Option<KeyEntry> {
        let r = self.resources.get(res as usize)?.as_ref()?;
        let holder = (r.limit == 1 && r.holders > 0)
            .then(|| self.holder_view(r.last_fence, now))
            .flatten();
        Some(KeyEntry {
            key: String::from_utf8_lossy(r.key.as_bytes()).into_owned(),
            kind: kind_name(r.space),
            limit: r.limit,
            holders: r.holders,
            waiters: r.queue.len(),
            held_for_s: holder
                .as_ref()
                .map(|h| h.held_for_s)
                .or(held_for_ms.map(secs)),
            holder,
            queue: self.waiter_views(r, now, QUEUE_PREVIEW),
            idle_s: r
                .unreferenced()
                .then(|| secs(now.0.saturating_sub(r.last_activity.0))),
        })
    }

    /// The view of (space, key) as of the core's time: its counts, a
    /// lock's holder, up to `max_waiters` waiters in FIFO order and its
    /// recent events. `None` if the key does not exist. O(key + log n +
    /// max_waiters log n). A semaphore's holders are not indexed by key:
    /// [`HoldersJob`] lists them.
    pub fn key_view(&self, space: Space, key: &Key, max_waiters: usize) -> Option<KeyView> {
        let now = self.now;
        let res = self.lookup(space, key)?;
        let r = self.resources[res as usize].as_ref()?;
        let holder_list = if r.limit == 1 && r.holders > 0 {
            self.holder_view(r.last_fence, now).into_iter().collect()
        } else {
            Vec::new()
        };
        let mut events: Vec<EventView> = self
            .insight
            .events
            .of(res)
            .map(|e| EventView {
                ago_s: secs(now.0.saturating_sub(e.at.0)),
                event: e.kind.name(),
                conn: e.conn.0,
                fence: (e.fence != 0).then_some(e.fence),
                seconds: secs(e.ms),
                count: e.count,
            })
            .collect();
        events.reverse();
        Some(KeyView {
            key: String::from_utf8_lossy(r.key.as_bytes()).into_owned(),
            kind: kind_name(space),
            limit: r.limit,
            holders: r.holders,
            waiters: r.queue.len(),
            idle_s: r
                .unreferenced()
                .then(|| secs(now.0.saturating_sub(r.last_activity.0))),
            holder_list,
            queue: self.waiter_views(r, now, max_waiters.min(MAX_LISTED)),
            events,
        })
    }

    /// Answers `stats` for `conn` as far as the gate every request passes
    /// first: `true` when the connection may have its stats (nothing is
    /// appended for it then; any effects for others that advancing the
    /// core produced are), `false` when it may not (draining, or not
    /// authenticated), with the refusal for `conn` appended exactly as
    /// [`Core::handle`] would have answered `stats`.
    ///
    /// The gate at the start of `apply` treats every request alike but
    /// `auth`; a `ping` passes through nothing else, so running one tells
    /// whether `stats` would pass, and when it would not, what it answers.
    pub fn stats_gate(&mut self, now: Time, conn: ConnId, out: &mut Vec<Effect>) -> bool {
        let before = out.len();
        self.handle(now, conn, Request::Ping, out);
        let pong = out[before..]
            .iter()
            .position(|e| matches!(e, Effect::Reply { conn: c, reply: Reply::Ok } if *c == conn));
        match pong {
            Some(i) => {
                out.remove(before + i);
                true
            }
            None => false,
        }
    }
}

// ----- scans -------------------------------------------------------------------

/// A read done in bounded steps (see the module documentation). The
/// driver calls [`Job::step`] under the core lock until it returns `true`,
/// releasing the lock between calls.
pub trait Job {
    /// Advances the core to `now` (effects for connections go to `out`),
    /// then does at most one slice of the work. Returns whether the job is
    /// done.
    fn step(&mut self, core: &mut Core, now: Time, out: &mut Vec<Effect>) -> bool;

    /// One slice of the work on `core` as it stands, without advancing it:
    /// how a cluster member reads its replicated core, which only the log
    /// may change (spec/cluster.md §3). Returns whether the job is done.
    fn read(&mut self, core: &Core) -> bool;
}

/// Walks up to `budget` resource slots from `*cursor`; returns whether
/// the walk is over.
fn walk_resources(
    core: &Core,
    cursor: &mut usize,
    budget: usize,
    mut f: impl FnMut(ResId, &Resource),
) -> bool {
    let end = (*cursor + budget).min(core.resources.len());
    for id in *cursor..end {
        if let Some(r) = &core.resources[id] {
            f(id as ResId, r);
        }
    }
    *cursor = end;
    end == core.resources.len()
}

/// Walks up to `budget` leases after `*cursor`, in (expiry, fence) order,
/// giving (fence, resource, granted) of the live ones; returns whether the
/// walk is over.
fn walk_leases(
    core: &Core,
    cursor: &mut Option<(Time, u64)>,
    budget: usize,
    mut f: impl FnMut(u64, ResId, Time),
) -> bool {
    let from = match *cursor {
        Some(c) => Bound::Excluded(c),
        None => Bound::Unbounded,
    };
    for (n, &(t, fence)) in core.leases.range((from, Bound::Unbounded)).enumerate() {
        if n == budget {
            return false;
        }
        *cursor = Some((t, fence));
        if let Some(h) = core.holders.get(&fence).filter(|h| core.live(h)) {
            f(fence, h.res, h.granted);
        }
    }
    true
}

// ----- `stats` in slices -----------------------------------------------------

enum Row {
    Lock {
        owner: u64,
        lease_s: f64,
        waiters: usize,
    },
    Sem {
        limit: u64,
        holders: usize,
        waiters: usize,
    },
    IdleLock {
        idle_s: f64,
    },
    IdleSem {
        idle_s: f64,
    },
}

struct Entry {
    /// Range of the key in its chunk's `bytes`.
    key: (usize, usize),
    space: Space,
    /// The step that read it: the latest reading wins.
    step: u32,
    row: Row,
}

struct Channel {
    pattern: (usize, usize),
    group: (usize, usize),
    step: u32,
    listeners: usize,
}

/// Totals over the `stats` arrays, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: usize,
    /// Entries of `locks`: active resources with limit 1.
    pub locks: u64,
    pub lock_waiters: u64,
    pub semaphore_holders: u64,
    pub semaphore_waiters: u64,
    pub signal_listeners: u64,
}

/// The `stats` listing (protocol.md §8), built in slices: every resource
/// slot, then every subscription trie node, then the connection count.
/// [`StatsJob::render`] gives the same JSON as the one-piece `stats`
/// when nothing changed in between. With `totals_only` nothing is listed,
/// only [`Totals`] are counted (for `/metrics`).
pub struct StatsJob {
    /// Items per step ([`SLICE`]).
    slice: usize,
    totals_only: bool,
    res_cursor: usize,
    node_cursor: usize,
    steps: u32,
    /// What each step listed: many small buffers rather than one that
    /// grows, so that no step copies what earlier steps listed (a
    /// reallocation of tens of megabytes under the core lock).
    chunks: Vec<Chunk>,
    listed: usize,
    totals: Totals,
    resources_done: bool,
    done: bool,
}

impl StatsJob {
    /// The same job in steps of `n` items (tests use small steps).
    pub fn sliced(mut self, n: usize) -> Self {
        self.slice = n.max(1);
        self
    }

    pub fn new() -> StatsJob {
        StatsJob::with(false)
    }

    /// Counts [`Totals`] only.
    pub fn totals() -> StatsJob {
        StatsJob::with(true)
    }

    fn with(totals_only: bool) -> StatsJob {
        StatsJob {
            slice: SLICE,
            totals_only,
            res_cursor: 0,
            node_cursor: 0,
            steps: 0,
            chunks: Vec::new(),
            listed: 0,
            totals: Totals::default(),
            resources_done: false,
            done: false,
        }
    }

    /// Entries and channels listed so far.
    pub fn listed(&self) -> usize {
        self.listed
    }

    /// The totals counted (complete once the job is done).
    pub fn totals_so_far(&self) -> Totals {
        self.totals
    }

    /// The `stats` JSON (one line). Sorting and rendering happen here,
    /// without the core.
    pub fn render(self) -> String {
        stats::join(self.render_pieces(usize::MAX))
    }

    /// The same JSON as [`StatsJob::render`], in consecutive pieces of
    /// about `piece_bytes` (`stats::render_pieces`).
    pub fn render_pieces(self, piece_bytes: usize) -> Vec<Vec<u8>> {
        self.render_pieces_paced(piece_bytes, &mut || {})
    }

    /// [`StatsJob::render_pieces`], calling `pace` between its stages and
    /// every `stats::PACE_EVERY` entries of each (the render thread rests
    /// there: `engine::introspect`). The bytes are the same.
    pub fn render_pieces_paced(self, piece_bytes: usize, pace: &mut dyn FnMut()) -> Vec<Vec<u8>> {
        // Every reading as (key, space, step, row); sorted by (key, space),
        // the latest reading last, and that one kept.
        let mut rows: Vec<(&[u8], Space, u32, &Row)> = Vec::with_capacity(self.listed);
        let mut subs: Vec<(&[u8], &[u8], u32, usize)> = Vec::new();
        for c in &self.chunks {
            let text = |r: (usize, usize)| &c.bytes[r.0..r.1];
            rows.extend(
                c.entries
                    .iter()
                    .map(|e| (text(e.key), e.space, e.step, &e.row)),
            );
            subs.extend(
                c.channels
                    .iter()
                    .map(|ch| (text(ch.pattern), text(ch.group), ch.step, ch.listeners)),
            );
        }
        pace();
        rows.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        pace();
        let mut entries: Vec<(&[u8], Space, &Row)> = Vec::with_capacity(rows.len());
        for (i, (k, space, _, row)) in rows.into_iter().enumerate() {
            if i % stats::PACE_EVERY == stats::PACE_EVERY - 1 {
                pace();
            }
            match entries.last_mut() {
                Some(last) if last.0 == k && last.1 == space => *last = (k, space, row),
                _ => entries.push((k, space, row)),
            }
        }
        subs.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let mut channels: Vec<(&[u8], &[u8], usize)> = Vec::with_capacity(subs.len());
        for (pattern, group, _, listeners) in subs {
            match channels.last_mut() {
                Some(last) if last.0 == pattern && last.1 == group => {
                    *last = (pattern, group, listeners)
                }
                _ => channels.push((pattern, group, listeners)),
            }
        }
        let mut snap = stats::Snapshot {
            connections: self.totals.connections,
            ..Default::default()
        };
        pace();
        for (i, (k, space, row)) in entries.into_iter().enumerate() {
            if i % stats::PACE_EVERY == stats::PACE_EVERY - 1 {
                pace();
            }
            match *row {
                Row::Lock {
                    owner,
                    lease_s,
                    waiters,
                } => snap.locks.push(stats::LockEntry {
                    key: k,
                    space,
                    owner_conn_id: owner,
                    lease_expires_in_s: lease_s,
                    waiters,
                }),
                Row::Sem {
                    limit,
                    holders,
                    waiters,
                } => snap.semaphores.push(stats::SemEntry {
                    key: k,
                    space,
                    limit,
                    holders,
                    waiters,
                }),
                Row::IdleLock { idle_s } => snap.idle_locks.push(stats::IdleEntry {
                    key: k,
                    space,
                    idle_s,
                }),
                Row::IdleSem { idle_s } => snap.idle_semaphores.push(stats::IdleEntry {
                    key: k,
                    space,
                    idle_s,
                }),
            }
        }
        for (pattern, group, listeners) in channels {
            snap.signal_channels.push(stats::ChannelEntry {
                pattern,
                group,
                listeners,
            });
        }
        stats::render_pieces_paced(snap, piece_bytes, pace)
    }
}

impl Default for StatsJob {
    fn default() -> Self {
        StatsJob::new()
    }
}

impl Job for StatsJob {
    fn step(&mut self, core: &mut Core, now: Time, out: &mut Vec<Effect>) -> bool {
        if self.done {
            return true;
        }
        core.handle_timeout(now, out);
        self.read(core)
    }

    fn read(&mut self, core: &Core) -> bool {
        if self.done {
            return true;
        }
        let now = core.now;
        self.steps += 1;
        let step = self.steps;
        let mut chunk = Chunk::default();
        let done = self.step_into(core, now, step, &mut chunk);
        if !chunk.entries.is_empty() || !chunk.channels.is_empty() {
            self.listed += chunk.entries.len() + chunk.channels.len();
            self.chunks.push(chunk);
        }
        done
    }
}

/// What one step of a [`StatsJob`] listed.
#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    channels: Vec<Channel>,
}

impl Chunk {
    fn push_bytes(&mut self, b: &[u8]) -> (usize, usize) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        (start, self.bytes.len())
    }
}

impl StatsJob {
    fn step_into(&mut self, core: &Core, now: Time, step: u32, chunk: &mut Chunk) -> bool {
        if !self.resources_done {
            let mut cursor = self.res_cursor;
            let mut rows: Vec<(ResId, Row)> = Vec::new();
            self.resources_done = walk_resources(core, &mut cursor, self.slice, |id, r| {
                let active = r.holders > 0 || !r.queue.is_empty();
                let idle_s = secs(now.0.saturating_sub(r.last_activity.0));
                let row = match (r.limit == 1, active) {
                    (true, true) => {
                        let h = (r.holders > 0)
                            .then(|| core.holders.get(&r.last_fence))
                            .flatten();
                        Row::Lock {
                            owner: h.map_or(0, |h| h.conn.0),
                            lease_s: h.map_or(0.0, |h| secs(h.expires.0.saturating_sub(now.0))),
                            waiters: r.queue.len(),
                        }
                    }
                    (false, true) => Row::Sem {
                        limit: r.limit,
                        holders: r.holders as usize,
                        waiters: r.queue.len(),
                    },
                    (true, false) => Row::IdleLock { idle_s },
                    (false, false) => Row::IdleSem { idle_s },
                };
                rows.push((id, row));
            });
            self.res_cursor = cursor;
            for (id, row) in rows {
                let Some(r) = core.resources[id as usize].as_ref() else {
                    continue;
                };
                if self.totals_only {
                    match row {
                        Row::Lock { waiters, .. } => {
                            self.totals.locks += 1;
                            self.totals.lock_waiters += waiters as u64;
                        }
                        Row::Sem {
                            holders, waiters, ..
                        } => {
                            self.totals.semaphore_holders += holders as u64;
                            self.totals.semaphore_waiters += waiters as u64;
                        }
                        Row::IdleLock { .. } | Row::IdleSem { .. } => {}
                    }
                } else {
                    let key = chunk.push_bytes(r.key.as_bytes());
                    chunk.entries.push(Entry {
                        key,
                        space: r.space,
                        step,
                        row,
                    });
                }
            }
            if !self.resources_done {
                return false;
            }
        }
        let nodes = core.signals.node_count();
        let end = (self.node_cursor + self.slice).min(nodes);
        for node in self.node_cursor..end {
            for (pattern, group, listeners, _) in core.signals.subs_at(node) {
                if self.totals_only {
                    self.totals.signal_listeners += listeners as u64;
                } else {
                    let pattern = chunk.push_bytes(pattern);
                    let group = chunk.push_bytes(group);
                    chunk.channels.push(Channel {
                        pattern,
                        group,
                        step,
                        listeners,
                    });
                }
            }
        }
        self.node_cursor = end;
        if end < nodes {
            return false;
        }
        self.totals.connections = core.connection_count();
        self.done = true;
        true
    }
}

// ----- top lists ---------------------------------------------------------------

/// How a top list orders keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// Longest queue first; only keys with waiters.
    Waiters,
    /// Oldest live grant first; only keys with holders.
    HeldFor,
    /// Fullest first (holders / limit, then holders); only keys with holders.
    Fill,
    /// Key order (bytewise), every key.
    Key,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "waiters" => Sort::Waiters,
            "held_for" => Sort::HeldFor,
            "fill" => Sort::Fill,
            "key" => Sort::Key,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Waiters => "waiters",
            Sort::HeldFor => "held_for",
            Sort::Fill => "fill",
            Sort::Key => "key",
        }
    }
}

/// What a top list asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopQuery {
    pub sort: Sort,
    /// 1..=[`MAX_LISTED`].
    pub top: usize,
    /// Only keys starting with these bytes.
    pub prefix: Option<Vec<u8>>,
    /// Only keys of this space.
    pub space: Option<Space>,
}

/// A candidate's rank: larger ranks first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Count(u64),
    /// Older grant ranks higher.
    Oldest(Reverse<Time>),
    /// (full, holders × 2^32 / limit, holders)
    Fill(bool, u64, u64),
    /// Smaller key ranks higher.
    Key(Reverse<Box<[u8]>>),
}

/// A candidate of a top list: its rank and (space, key).
type Candidate = (Rank, Space, Box<[u8]>);

/// The `top` largest candidates seen, each (space, key) once.
struct Best {
    top: usize,
    heap: BinaryHeap<Reverse<Candidate>>,
}

impl Best {
    fn offer(&mut self, rank: Rank, space: Space, key: &[u8]) {
        if self.heap.len() == self.top {
            match self.heap.peek() {
                Some(Reverse((least, _, _))) if rank > *least => {}
                _ => return,
            }
        }
        self.heap.push(Reverse((rank, space, key.into())));
        if self.heap.len() > self.top {
            self.heap.pop();
        }
    }
}

/// A top list (`GET /v1/stats?top=…`): by queue length from the
/// contended index, O(log n) per key listed (plus the keys skipped by a
/// `kind` filter); anything with a prefix, and every other order, by a
/// chunked scan of the resources (or, for `held_for`, of the leases),
/// keeping the best `top` on the way: O(n log top) over n / [`SLICE`]
/// steps. The keys found are read again at the last step, so each entry
/// is as of that step.
pub struct TopJob {
    /// Items per step ([`SLICE`]).
    slice: usize,
    q: TopQuery,
    res_cursor: usize,
    index_cursor: Option<(u32, ResId)>,
    lease_cursor: Option<(Time, u64)>,
    best: Best,
    /// `held_for`: the oldest grant per resource among the best so far.
    oldest: BTreeMap<ResId, Time>,
    oldest_order: BTreeSet<(Time, ResId)>,
    scanned: u64,
    result: Vec<KeyEntry>,
    connections: usize,
    done: bool,
}

impl TopJob {
    /// The same job in steps of `n` items (tests use small steps).
    pub fn sliced(mut self, n: usize) -> Self {
        self.slice = n.max(1);
        self
    }

    pub fn new(q: TopQuery) -> TopJob {
        let top = q.top.clamp(1, MAX_LISTED);
        TopJob {
            slice: SLICE,
            q: TopQuery { top, ..q },
            res_cursor: 0,
            index_cursor: None,
            lease_cursor: None,
            best: Best {
                top,
                heap: BinaryHeap::new(),
            },
            oldest: BTreeMap::new(),
            oldest_order: BTreeSet::new(),
            scanned: 0,
            result: Vec::new(),
            connections: 0,
            done: false,
        }
    }

    /// Items visited by the scan (0 when answered from the index).
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Connections (and sessions) at the last step.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// The keys, best first.
    pub fn into_result(self) -> Vec<KeyEntry> {
        self.result
    }

    fn wanted(&self, r: &Resource) -> bool {
        self.q.space.is_none_or(|s| s == r.space)
            && self
                .q
                .prefix
                .as_deref()
                .is_none_or(|p| r.key.as_bytes().starts_with(p))
    }

    fn rank(&self, r: &Resource) -> Option<Rank> {
        match self.q.sort {
            Sort::Waiters => (!r.queue.is_empty()).then(|| Rank::Count(r.queue.len() as u64)),
            Sort::Fill => (r.holders > 0).then(|| {
                let ratio = ((u128::from(r.holders) << 32) / u128::from(r.limit.max(1))) as u64;
                Rank::Fill(r.holders >= r.limit, ratio, r.holders)
            }),
            Sort::Key => Some(Rank::Key(Reverse(r.key.as_bytes().into()))),
            Sort::HeldFor => None,
        }
    }

    /// `held_for`: a live holder of `res` granted at `granted`.
    fn offer_oldest(&mut self, res: ResId, granted: Time) {
        match self.oldest.get(&res) {
            Some(&t) if t <= granted => return,
            Some(&t) => {
                self.oldest_order.remove(&(t, res));
            }
            None => {}
        }
        self.oldest.insert(res, granted);
        self.oldest_order.insert((granted, res));
        if self.oldest_order.len() > self.q.top {
            if let Some((_, r)) = self.oldest_order.pop_last() {
                self.oldest.remove(&r);
            }
        }
    }

    fn finish(&mut self, core: &Core) {
        let now = core.now;
        self.connections = core.connection_count();
        let mut found: Vec<(Rank, KeyEntry)> = Vec::new();
        if self.q.sort == Sort::HeldFor {
            for &(granted, res) in &self.oldest_order {
                let held = now.0.saturating_sub(granted.0);
                if let Some(e) = core.entry(res, now, Some(held)) {
                    found.push((Rank::Oldest(Reverse(granted)), e));
                }
            }
        } else {
            let best = std::mem::take(&mut self.best.heap);
            for Reverse((_, space, key)) in best {
                let Some(res) = core.lookup_bytes(space, &key) else {
                    continue;
                };
                let Some(r) = core.resources[res as usize].as_ref() else {
                    continue;
                };
                // Ranked again as it is now; gone from the list if it no
                // longer qualifies (its queue emptied meanwhile).
                let Some(rank) = self.rank(r) else { continue };
                if let Some(e) = core.entry(res, now, None) {
                    found.push((rank, e));
                }
            }
        }
        found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.key.cmp(&b.1.key)));
        self.result = found.into_iter().map(|(_, e)| e).collect();
        self.done = true;
    }
}

impl Job for TopJob {
    fn step(&mut self, core: &mut Core, now: Time, out: &mut Vec<Effect>) -> bool {
        if self.done {
            return true;
        }
        core.handle_timeout(now, out);
        self.read(core)
    }

    fn read(&mut self, core: &Core) -> bool {
        if self.done {
            return true;
        }
        let over = match self.q.sort {
            Sort::Waiters if self.q.prefix.is_none() => {
                // Longest queues first, straight from the index: done as
                // soon as `top` keys of the wanted kind are found.
                let upper = match self.index_cursor {
                    Some(c) => Bound::Excluded(c),
                    None => Bound::Unbounded,
                };
                let mut exhausted = true;
                let longest_first = core
                    .insight
                    .contended
                    .range((Bound::Unbounded, upper))
                    .rev();
                for (visited, &(len, res)) in longest_first.enumerate() {
                    if self.best.heap.len() == self.q.top {
                        break;
                    }
                    if visited == self.slice {
                        exhausted = false;
                        break;
                    }
                    self.index_cursor = Some((len, res));
                    if let Some(r) = core.resources[res as usize].as_ref() {
                        if self.wanted(r) {
                            self.best
                                .offer(Rank::Count(u64::from(len)), r.space, r.key.as_bytes());
                        }
                    }
                }
                exhausted || self.best.heap.len() == self.q.top
            }
            Sort::HeldFor => {
                let mut cursor = self.lease_cursor;
                let mut hits: Vec<(ResId, Time)> = Vec::new();
                let over = walk_leases(core, &mut cursor, self.slice, |_, res, granted| {
                    hits.push((res, granted));
                });
                self.scanned += hits.len() as u64;
                self.lease_cursor = cursor;
                for (res, granted) in hits {
                    let wanted = core.resources[res as usize]
                        .as_ref()
                        .is_some_and(|r| self.wanted(r));
                    if wanted {
                        self.offer_oldest(res, granted);
                    }
                }
                over
            }
            _ => {
                let mut cursor = self.res_cursor;
                let mut offers: Vec<(Rank, Space, ResId)> = Vec::new();
                let over = walk_resources(core, &mut cursor, self.slice, |id, r| {
                    if self.wanted(r) {
                        if let Some(rank) = self.rank(r) {
                            offers.push((rank, r.space, id));
                        }
                    }
                });
                self.scanned += (cursor - self.res_cursor) as u64;
                self.res_cursor = cursor;
                for (rank, space, id) in offers {
                    if let Some(r) = core.resources[id as usize].as_ref() {
                        self.best.offer(rank, space, r.key.as_bytes());
                    }
                }
                over
            }
        };
        if over {
            self.finish(core);
        }
        over
    }
}

/// A semaphore's holders, longest held first, for its key view: the
/// holders are not indexed by key, so this walks every lease (O(h) over h
/// / [`SLICE`] steps) keeping the `max` oldest of this key. Stops early
/// if the key goes away.
pub struct HoldersJob {
    /// Items per step ([`SLICE`]).
    slice: usize,
    space: Space,
    key: Key,
    max: usize,
    cursor: Option<(Time, u64)>,
    found: BTreeSet<(Time, u64)>,
    seen: HashSet<u64, IdBuild>,
    result: Vec<HolderView>,
    done: bool,
}

impl HoldersJob {
    /// The same job in steps of `n` items (tests use small steps).
    pub fn sliced(mut self, n: usize) -> Self {
        self.slice = n.max(1);
        self
    }

    pub fn new(space: Space, key: Key, max: usize) -> HoldersJob {
        HoldersJob {
            slice: SLICE,
            space,
            key,
            max: max.clamp(1, MAX_LISTED),
            cursor: None,
            found: BTreeSet::new(),
            seen: HashSet::default(),
            result: Vec::new(),
            done: false,
        }
    }

    /// The holders, longest held first (as of the last step).
    pub fn into_result(self) -> Vec<HolderView> {
        self.result
    }
}

impl Job for HoldersJob {
    fn step(&mut self, core: &mut Core, now: Time, out: &mut Vec<Effect>) -> bool {
        if self.done {
            return true;
        }
        core.handle_timeout(now, out);
        self.read(core)
    }

    fn read(&mut self, core: &Core) -> bool {
        if self.done {
            return true;
        }
        let Some(res) = core.lookup(self.space, &self.key) else {
            self.done = true;
            return true;
        };
        let mut cursor = self.cursor;
        let mut hits = Vec::new();
        let over = walk_leases(core, &mut cursor, self.slice, |fence, r, granted| {
            if r == res {
                hits.push((granted, fence));
            }
        });
        self.cursor = cursor;
        for (granted, fence) in hits {
            // A lease renewed during the walk can be met twice.
            if !self.seen.insert(fence) {
                continue;
            }
            self.found.insert((granted, fence));
            if self.found.len() > self.max {
                self.found.pop_last();
            }
        }
        if over {
            // Read again at the last step: some may have gone meanwhile.
            self.result = self
                .found
                .iter()
                .filter(|(_, fence)| core.holders.get(fence).is_some_and(|h| h.res == res))
                .filter_map(|&(_, fence)| core.holder_view(fence, core.now))
                .collect();
            self.done = true;
        }
        over
    }
}

/// A signal subscription (pattern, group) as the dashboard lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChannelView {
    pub pattern: String,
    /// Empty when ungrouped.
    pub group: String,
    pub listeners: usize,
    /// Pushes delivered through this subscription since it was created.
    pub pushes: u64,
}

/// The signal subscriptions with the most pushes delivered (then the most
/// listeners): a chunked walk of the subscription trie, O(p log top) over
/// p / [`SLICE`] steps for p trie nodes. `total` counts every (pattern,
/// group).
pub struct ChannelsJob {
    /// Items per step ([`SLICE`]).
    slice: usize,
    top: usize,
    cursor: usize,
    best: BinaryHeap<Reverse<(u64, usize, String, String)>>,
    total: usize,
    done: bool,
}

impl ChannelsJob {
    /// The same job in steps of `n` items (tests use small steps).
    pub fn sliced(mut self, n: usize) -> Self {
        self.slice = n.max(1);
        self
    }

    pub fn new(top: usize) -> ChannelsJob {
        ChannelsJob {
            slice: SLICE,
            top: top.clamp(1, MAX_LISTED),
            cursor: 0,
            best: BinaryHeap::new(),
            total: 0,
            done: false,
        }
    }

    /// (the busiest subscriptions first, how many there are in all).
    pub fn into_result(self) -> (Vec<ChannelView>, usize) {
        let mut v: Vec<_> = self.best.into_iter().map(|Reverse(x)| x).collect();
        v.sort_by(|a, b| b.cmp(a));
        let views = v
            .into_iter()
            .map(|(pushes, listeners, pattern, group)| ChannelView {
                pattern,
                group,
                listeners,
                pushes,
            })
            .collect();
        (views, self.total)
    }
}

impl Job for ChannelsJob {
    fn step(&mut self, core: &mut Core, now: Time, out: &mut Vec<Effect>) -> bool {
        if self.done {
            return true;
        }
        core.handle_timeout(now, out);
        self.read(core)
    }

    fn read(&mut self, core: &Core) -> bool {
        if self.done {
            return true;
        }
        let nodes = core.signals.node_count();
        let end = (self.cursor + self.slice).min(nodes);
        for node in self.cursor..end {
            for (pattern, group, listeners, pushes) in core.signals.subs_at(node) {
                self.total += 1;
                let entry = (
                    pushes,
                    listeners,
                    String::from_utf8_lossy(pattern).into_owned(),
                    String::from_utf8_lossy(group).into_owned(),
                );
                self.best.push(Reverse(entry));
                if self.best.len() > self.top {
                    self.best.pop();
                }
            }
        }
        self.cursor = end;
        self.done = end >= nodes;
        self.done
    }
}

/// Runs `job` to the end on `core` with no other input in between (tests,
/// and callers that own the core outright).
pub fn run_to_end(job: &mut dyn Job, core: &mut Core, now: Time, out: &mut Vec<Effect>) {
    while !job.step(core, now, out) {}
}

#[cfg(test)]
mod tests;
