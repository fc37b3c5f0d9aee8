//! Core state and transitions.
//!
//! Every input costs O(log n) in the size of the state, or amortized O(1),
//! plus O(log n) per item it changes (a grant, a timeout, a released slot,
//! a push); nothing scans holders, waiters, keys, connections or
//! subscriptions that the input does not touch. The table of costs per
//! input is in spec/ARCHITECTURE.md ("Costs"). The structures that give it:
//!
//! * resources live in a slab (`resources`, ids reused through
//!   `free_slots`); `by_key` finds one by its key with one hash lookup and
//!   stores only the id: the key itself is kept once, in the resource,
//!   inline when short (`compact.rs`);
//! * holders are indexed by fence in `holders`, the one map that a token,
//!   a lease timer and a connection's holdings all lead to; a resource
//!   keeps only its holder count (and, for a lock, the fence of its holder);
//! * a resource's queue is the ordered set of its waiters' arrival numbers
//!   (FIFO order is arrival order; allocated only while someone waits), so
//!   a waiter leaves from anywhere in O(log n); waiters themselves are in
//!   `waiters` by arrival number;
//! * each connection keeps what it owns: its slots as (resource, fence),
//!   waiter arrival numbers, two-phase records by resource, and its
//!   subscriptions, so a disconnect costs what the connection owns. The
//!   slots a disconnect releases on a resource nobody waits for go with one
//!   subtraction per resource; their index entries are purged a bounded
//!   number per input afterwards (`retired`, `holdings.rs`);
//! * `leases` and `deadlines` order lease expiries and blocked waiters'
//!   deadlines; `idle` orders unreferenced resources by last activity, so
//!   the idle GC visits only what it collects;
//! * signal subscriptions are a token trie (`signals.rs`).
//!
//! [`Core::verify`] checks that all of these agree with each other after
//! every input under `debug_assertions` (sampled for large states, see
//! `finish`) and after every step of the differential tests and the fuzzer.
//!
//! Invariants checked at run time in every build (a lock server stops rather
//! than double-grants): a grant never makes `holders > limit`; a granted
//! waiter is removed from the queue before it becomes a holder; `now` never
//! goes back.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::hash::{IdBuild, KeyBuild};
use super::members::Members;
use super::metrics::{Cause, CoreMetrics};
use super::signals::{self, Route, PUSH_QUEUE_FRAMES};
use super::stats;
use super::{token_salt, ConnId, Time};
use crate::wire::{Key, Reply, Request, Space, Status, Token};

mod compact;
mod holdings;
mod image;
pub mod introspect;
#[cfg(test)]
mod tests;
mod verify;

use compact::{Queue, ResKey};
use holdings::Retired;
pub use image::{CoreImage, ImageError};
use introspect::{Event, EventKind, Insight};

/// Core configuration: every limit and policy the transition function needs.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Lease used when a request omits it (`--default-lease-ttl`).
    pub default_lease_s: u64,
    /// Maximum number of resources, locks and semaphores together (`--max-locks`).
    pub max_locks: usize,
    /// Maximum queued waiters per key; 0 = unlimited (`--max-waiters`).
    pub max_waiters: usize,
    /// Release held slots when their connection goes away (`--auto-release-on-disconnect`).
    pub auto_release_on_disconnect: bool,
    /// Idle GC period (`--gc-interval`).
    pub gc_interval_s: u64,
    /// A resource idle for strictly longer than this is collected (`--gc-max-idle`).
    pub gc_max_idle_s: u64,
    /// When set, the first request of every connection must be `auth` with this token.
    pub auth_token: Option<Vec<u8>>,
    /// The first token issued has fence `fence_start + 1`.
    pub fence_start: u64,
    /// Grants are refused (never issued) with a fence above this ceiling;
    /// `u64::MAX` when no fence state file is used. See [`Core::raise_fence_ceiling`].
    pub fence_ceiling: u64,
    /// Secret key for token salts (and for hashing keys).
    pub salt_key: [u64; 2],
    /// Listen registrations per connection; 0 = unlimited (`--max-subscriptions`).
    pub max_subscriptions: usize,
    /// How long after a failed authentication its connection is closed
    /// (slows down guessing; upstream waits about 100 ms).
    pub auth_failure_pause_ms: u64,
    /// Recent events kept for key views, over all keys; 0 = none (`--key-events`).
    pub key_events: usize,
}

impl Default for CoreConfig {
    /// The defaults of the settings table (`config::table`); no auth token,
    /// fences from 1 with no ceiling, a zero salt key.
    fn default() -> Self {
        use crate::config::table as t;
        CoreConfig {
            default_lease_s: t::DEFAULT_LEASE_TTL.int_default(),
            max_locks: t::MAX_LOCKS.count_default(),
            max_waiters: t::MAX_WAITERS.count_default(),
            auto_release_on_disconnect: t::AUTO_RELEASE_ON_DISCONNECT.bool_default(),
            gc_interval_s: t::GC_INTERVAL.int_default(),
            gc_max_idle_s: t::GC_MAX_IDLE.int_default(),
            auth_token: None,
            fence_start: 0,
            fence_ceiling: u64::MAX,
            salt_key: [0, 0],
            max_subscriptions: t::MAX_SUBSCRIPTIONS.count_default(),
            auth_failure_pause_ms: AUTH_FAILURE_PAUSE_MS,
            key_events: t::KEY_EVENTS.count_default(),
        }
    }
}

/// The pause before a connection that failed authentication is closed, as
/// upstream's (about 100 ms); not a setting of its own.
pub const AUTH_FAILURE_PAUSE_MS: u64 = 100;

/// What a connection owns (see [`Core::owned`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    /// Slots held (locks and semaphores).
    pub held: usize,
    /// Queue positions (blocked requests and two-phase waiters).
    pub waiting: usize,
    /// Two-phase records.
    pub records: usize,
    /// Signal subscriptions.
    pub subscriptions: usize,
}

/// An output of the core, addressed to one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this reply line to `conn` (its answer to its oldest unanswered request).
    Reply { conn: ConnId, reply: Reply },
    /// Close `conn` after sending everything queued for it before this
    /// effect, for `reason` (which also says how long to wait first).
    Close { conn: ConnId, reason: CloseReason },
    /// Push `sig <channel> <payload>` to `conn`, in order with its replies.
    /// The push counts as outstanding for `conn` until the driver reports it
    /// written ([`Core::pushes_written`]).
    Push {
        conn: ConnId,
        channel: Key,
        payload: std::sync::Arc<[u8]>,
    },
}

/// Why the core closes a connection. The driver logs by it, and waits
/// before closing when the reason says so; both are decided here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// A request after the drain began (`error_draining`, protocol.md §2.6).
    Draining,
    /// A failed authentication (`error_auth`, protocol.md §2.2). The
    /// connection is closed `pause_ms` after the reply
    /// (`CoreConfig::auth_failure_pause_ms`), which slows down guessing.
    AuthFailed { pause_ms: u64 },
    /// An overlong line (D1).
    Overlong,
    /// A started request not complete at its read deadline (D11).
    Stalled,
    /// An idle connection that owns nothing, at its read deadline (D11).
    Idle,
    /// A slow consumer whose push queue was full (D13). Nothing is sent to
    /// it after its close.
    SlowConsumer,
}

impl CloseReason {
    /// How long the driver waits after writing what precedes the close
    /// before it closes the socket.
    pub fn linger_ms(self) -> u64 {
        match self {
            CloseReason::AuthFailed { pause_ms } => pause_ms,
            _ => 0,
        }
    }
}

/// Index of a resource in the slab.
type ResId = u32;

/// What comes due, in the order items with equal deadlines are processed
/// (spec/semantics.md §8): lease expiries, then waiter timeouts, then GC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// The lease with this fence.
    Lease(u64),
    /// The blocked waiter with this arrival number.
    Waiter(u64),
    Gc,
}

/// One held slot, filed in `Core::holders` under its fence. The token's
/// salt is not stored: it is `token_salt(salt_key, fence)`.
struct Holder {
    conn: ConnId,
    expires: Time,
    /// When the slot was granted (for the hold-time histogram).
    granted: Time,
    res: ResId,
    /// Its resource's key space (for the metrics, also once retired).
    space: Space,
}

struct Resource {
    key: ResKey,
    limit: u64,
    /// Live holders (they are in `Core::holders`).
    holders: u64,
    /// The fence of the latest grant: with `limit` 1 and one holder, the
    /// holder's (`stats` shows it).
    last_fence: u64,
    /// Arrival numbers of the live waiters, oldest first (FIFO order is
    /// arrival order).
    queue: Queue,
    last_activity: Time,
    /// Two-phase records naming this resource. A resource with records is
    /// never collected, which bounds the records by `max_locks`.
    records: u32,
    space: Space,
    /// Filed in `Core::idle` under `(last_activity, id)`: once settled,
    /// exactly when it has no holder, waiter or record.
    filed: bool,
}

impl Resource {
    /// Nothing refers to it: the idle GC may collect it once it is old.
    fn unreferenced(&self) -> bool {
        self.holders == 0 && self.queue.is_empty() && self.records == 0
    }
}

struct Waiter {
    conn: ConnId,
    res: ResId,
    lease_s: u64,
    /// `None` for a two-phase waiter that has not called `w` yet.
    deadline: Option<Time>,
    /// The connection is blocked on this waiter and expects a reply.
    blocking: bool,
    /// Created by `e`/`se`: a grant before `w` switches the record to granted.
    two_phase: bool,
    /// When it joined the queue (for the acquire-wait histogram).
    queued: Time,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Record {
    Queued { waiter: u64 },
    Granted { fence: u64, lease_s: u64 },
}

#[derive(Default)]
struct Conn {
    authed: bool,
    /// The slots it holds, as (resource, fence): grouped by resource, in
    /// token order within one.
    held: BTreeSet<(ResId, u64)>,
    /// How many of them are on each resource (a disconnect releases a
    /// resource's slots with one subtraction).
    held_on: HashMap<ResId, u32, IdBuild>,
    /// Arrival numbers of this connection's live waiters.
    waiters: BTreeSet<u64>,
    /// Two-phase records by resource.
    records: HashMap<ResId, Record, IdBuild>,
    /// The waiter this connection is blocked on, if any.
    blocked: Option<u64>,
    /// The fence of the grant that answered its last blocked request, kept
    /// until its next input: what a cancel that lost the race releases
    /// (semantics §9.1).
    answered: Option<u64>,
    /// Signal subscriptions: (pattern, group), group empty when ungrouped.
    subs: BTreeSet<(Key, Box<[u8]>)>,
    /// Pushes emitted and not yet reported written by the driver.
    outstanding: usize,
    /// Closed as a slow consumer: receives nothing more.
    evicted: bool,
}

impl Conn {
    fn hold(&mut self, res: ResId, fence: u64) {
        self.held.insert((res, fence));
        *self.held_on.entry(res).or_default() += 1;
    }

    fn unhold(&mut self, res: ResId, fence: u64) {
        if self.held.remove(&(res, fence)) {
            let n = self.held_on.get_mut(&res).expect("counted with the slot");
            *n -= 1;
            if *n == 0 {
                self.held_on.remove(&res);
            }
        }
    }
}

/// Under `debug_assertions`, the state items `verify` may check per input
/// on average: states up to this size are verified after every input,
/// larger ones after every `size / VERIFY_CREDIT_PER_INPUT` inputs, so
/// debug builds stay amortized O(1) per input even with a million locks.
#[cfg(debug_assertions)]
const VERIFY_CREDIT_PER_INPUT: usize = 32;

/// Retired slots (see `holdings.rs`) purged from the indexes after each
/// input (and each millisecond while any are left): bounds the work one
/// input adds for a large disconnect to about a millisecond, while purging
/// faster than any client can take slots.
const PURGE_PER_INPUT: usize = 4096;

/// The lock manager.
pub struct Core {
    cfg: CoreConfig,
    now: Time,
    /// Last fence issued.
    fence: u64,
    next_conn: u64,
    next_waiter: u64,
    next_gc: Time,
    draining: bool,
    resources: Vec<Option<Resource>>,
    free_slots: Vec<ResId>,
    resource_count: usize,
    /// Hashes peer-chosen keys for `by_key`.
    key_hash: KeyBuild,
    /// Resource ids by key, one table per space; the key is read from the
    /// resource, not stored here.
    by_key: [HashTable<ResId>; 2],
    /// Every live holder, by fence.
    holders: HashMap<u64, Holder, IdBuild>,
    waiters: HashMap<u64, Waiter, IdBuild>,
    conns: HashMap<ConnId, Conn, IdBuild>,
    /// (expiry, fence) of every holder.
    leases: BTreeSet<(Time, u64)>,
    /// (deadline, arrival) of every blocked waiter.
    deadlines: BTreeSet<(Time, u64)>,
    /// (last activity, id) of every unreferenced resource.
    idle: BTreeSet<(Time, ResId)>,
    /// Resources changed by the current input, to be re-filed in `idle`
    /// when it ends (`settle`).
    dirty: Vec<ResId>,
    /// Resources whose grants stopped at the fence ceiling: free capacity
    /// and waiters, but no fence to issue. Resumed by `raise_fence_ceiling`.
    starved: BTreeSet<ResId>,
    /// Slots released in bulk by disconnects, oldest first, whose entries
    /// in `holders` and `leases` are still to be purged.
    retired: VecDeque<Retired>,
    /// Slots in `retired` not purged yet.
    retired_pending: usize,
    /// Signal subscriptions by pattern and group.
    signals: signals::Index,
    /// Counters and histograms for `/metrics`; never read by a transition.
    metrics: CoreMetrics,
    /// Indexes and recent events for introspection (`introspect.rs`); never
    /// read by a transition.
    insight: Insight,
    /// Verification work earned and not yet spent (see `finish`).
    #[cfg(debug_assertions)]
    verify_credit: usize,
}

fn space_index(space: Space) -> usize {
    match space {
        Space::Lock => 0,
        Space::Sem => 1,
    }
}

fn reply(out: &mut Vec<Effect>, conn: ConnId, reply: Reply) {
    out.push(Effect::Reply { conn, reply });
}

fn status(out: &mut Vec<Effect>, conn: ConnId, s: Status) {
    reply(out, conn, Reply::Status(s));
}

/// Closes `conn` as a slow consumer (Decision D13). Returns whether it was
/// a live connection not evicted before.
fn evict(conns: &mut HashMap<ConnId, Conn, IdBuild>, conn: ConnId, out: &mut Vec<Effect>) -> bool {
    let newly = conns
        .get_mut(&conn)
        .is_some_and(|c| !std::mem::replace(&mut c.evicted, true));
    out.push(Effect::Close {
        conn,
        reason: CloseReason::SlowConsumer,
    });
    newly
}

/// Compares in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

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

impl Core {
    pub fn new(cfg: CoreConfig, now: Time) -> Core {
        let key_hash = KeyBuild([
            cfg.salt_key[0] ^ 0x6b65_7973_7061_6365,
            cfg.salt_key[1].rotate_left(17),
        ]);
        Core {
            next_gc: now.plus_secs(cfg.gc_interval_s.max(1)),
            fence: cfg.fence_start,
            now,
            next_conn: 1,
            next_waiter: 1,
            draining: false,
            resources: Vec::new(),
            free_slots: Vec::new(),
            resource_count: 0,
            key_hash,
            by_key: [HashTable::new(), HashTable::new()],
            holders: HashMap::default(),
            waiters: HashMap::default(),
            conns: HashMap::default(),
            leases: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            idle: BTreeSet::new(),
            dirty: Vec::new(),
            starved: BTreeSet::new(),
            retired: VecDeque::new(),
            retired_pending: 0,
            signals: signals::Index::new([
                cfg.salt_key[0].rotate_left(29) ^ 0x7472_6965_6e6f_6465,
                cfg.salt_key[1] ^ 0x7369_676e_616c_7321,
            ]),
            metrics: CoreMetrics::default(),
            insight: Insight::new(cfg.key_events),
            #[cfg(debug_assertions)]
            verify_credit: 0,
            cfg,
        }
    }

    /// The latest instant the core has been advanced to.
    pub fn now(&self) -> Time {
        self.now
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// What the core has counted since it started (for `/metrics`).
    pub fn metrics(&self) -> &CoreMetrics {
        &self.metrics
    }

    /// Registers a new connection (or HTTP session) and returns its id.
    pub fn connect(&mut self, now: Time, out: &mut Vec<Effect>) -> ConnId {
        self.advance(now, out);
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let conn = Conn {
            authed: self.cfg.auth_token.is_none(),
            ..Conn::default()
        };
        self.conns.insert(id, conn);
        self.finish();
        id
    }

    /// Whether `conn` may send requests other than `auth` (it
    /// authenticated, or no token is configured). Cluster mode asks before
    /// it logs a request: only authenticated requests are replicated.
    pub fn is_authed(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.authed)
    }

    /// Number of live connections and sessions.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether `conn` holds a slot, waits in a queue, has a two-phase
    /// record or a signal subscription. Such a connection is not cut for
    /// idleness (Decision D11).
    pub fn owns_anything(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| {
            !c.held.is_empty()
                || !c.waiters.is_empty()
                || !c.records.is_empty()
                || !c.subs.is_empty()
        })
    }

    /// What `conn` owns right now, counted (for the driver's log line when
    /// a connection closes). O(1).
    pub fn owned(&self, conn: ConnId) -> Owned {
        self.conns.get(&conn).map_or(Owned::default(), |c| Owned {
            held: c.held.len(),
            waiting: c.waiters.len(),
            records: c.records.len(),
            subscriptions: c.subs.len(),
        })
    }

    /// The driver wrote `n` of `conn`'s pushes to its socket: they no longer
    /// count against its push queue (Decision D13). Unknown connections and
    /// over-reports are ignored.
    pub fn pushes_written(&mut self, conn: ConnId, n: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.outstanding = c.outstanding.saturating_sub(n);
        }
    }

    /// Pushes emitted to `conn` and not yet reported written.
    pub fn outstanding_pushes(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.outstanding)
    }

    /// Whether `conn` has a request in flight that is waiting in a queue.
    pub fn is_blocked(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.blocked.is_some())
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Requests blocked in a queue right now, over all connections: the
    /// waiters with a deadline. O(1).
    pub fn blocked_requests(&self) -> usize {
        self.deadlines.len()
    }

    /// The last fence issued.
    pub fn last_fence(&self) -> u64 {
        self.fence
    }

    /// How many more grants fit under the fence ceiling.
    pub fn fence_headroom(&self) -> u64 {
        self.cfg.fence_ceiling.saturating_sub(self.fence)
    }

    /// Raises the fence ceiling (after the driver persisted it) and resumes
    /// the resources whose grants stopped at the old one, in the arrival
    /// order of their oldest waiter (spec/semantics.md §6). O(s log s) for
    /// `s` such resources, once per raise.
    pub fn raise_fence_ceiling(&mut self, now: Time, ceiling: u64, out: &mut Vec<Effect>) {
        self.advance(now, out);
        if ceiling > self.cfg.fence_ceiling {
            self.cfg.fence_ceiling = ceiling;
        }
        let starved = std::mem::take(&mut self.starved);
        // Each stopped key's oldest live waiter: its queue's first entry.
        let mut by_arrival: Vec<(u64, ResId)> = starved
            .into_iter()
            .filter_map(|res| {
                let r = self.resources[res as usize].as_ref()?;
                Some((r.queue.first()?, res))
            })
            .collect();
        by_arrival.sort_unstable();
        for (_, res) in by_arrival {
            self.hand_off(now, res, out);
        }
        self.finish();
    }

    /// Applies one request from `conn`. The reply to `conn` (unless the
    /// request blocks) and any grants or timeouts for other connections are
    /// appended to `out`. If no `Reply` for `conn` is appended, the request
    /// is blocked (a queued `l`/`sl`/`w`/`sw`) and its reply comes later
    /// from another input. The driver must not send another request for
    /// `conn` while it is blocked.
    pub fn handle(&mut self, now: Time, conn: ConnId, req: Request, out: &mut Vec<Effect>) {
        self.advance(now, out);
        self.apply(now, conn, req, out);
        self.finish();
    }

    fn apply(&mut self, now: Time, conn: ConnId, req: Request, out: &mut Vec<Effect>) {
        let draining = self.draining;
        let c = self
            .conns
            .get_mut(&conn)
            .expect("input for an unknown connection");
        assert!(c.blocked.is_none(), "request from a blocked connection");
        c.answered = None;
        if draining {
            // `error_draining` and a close.
            return self.closing_answer(conn, CloseReason::Draining, out);
        }
        if !c.authed {
            let ok = match (&req, &self.cfg.auth_token) {
                (Request::Auth { token }, Some(expected)) => constant_time_eq(token, expected),
                _ => false,
            };
            if ok {
                c.authed = true;
                reply(out, conn, Reply::Ok);
            } else {
                // Not authenticated: `error_auth`, closed after the pause.
                self.closing_answer(conn, CloseReason::Overlong, out);
            }
            return;
        }
        match req {
            Request::Acquire {
                space,
                key,
                timeout_s,
                limit,
                lease_s,
            } => self.acquire(now, conn, space, key, timeout_s, limit, lease_s, out),
            Request::Release { space, key, token } => {
                self.release(now, conn, space, &key, &token, out)
            }
            Request::Renew {
                space,
                key,
                token,
                lease_s,
            } => self.renew(now, conn, space, &key, &token, lease_s, out),
            Request::Enqueue {
                space,
                key,
                limit,
                lease_s,
            } => self.enqueue(now, conn, space, key, limit, lease_s, out),
            Request::Wait {
                space,
                key,
                timeout_s,
            } => self.wait(now, conn, space, &key, timeout_s, out),
            Request::Stats => {
                let json = stats::render(self.snapshot(now));
                reply(out, conn, Reply::Stats(json));
            }
            Request::Ping => reply(out, conn, Reply::Ok),
            // Cluster commands: a single node answers them as it answers
            // an unknown command (cluster mode serves them before the core).
            Request::Barrier | Request::StableRef { .. } => status(out, conn, Status::Error),
            // `auth` after the handshake, or without a configured token.
            Request::Auth { .. } => status(out, conn, Status::Error),
            Request::Listen { pattern, group } => self.listen(conn, pattern, group, out),
            Request::Unlisten { pattern, group } => {
                let sub = (pattern, group.unwrap_or_default());
                let c = self
                    .conns
                    .get_mut(&conn)
                    .expect("input for an unknown connection");
                if c.subs.remove(&sub) {
                    self.signals.remove(sub.0.as_bytes(), &sub.1, conn);
                }
                reply(out, conn, Reply::Ok);
            }
            Request::Signal { channel, payload } => self.signal(conn, channel, payload, out),
        }
    }

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
    fn closing_answer(&mut self, conn: ConnId, reason: CloseReason, out: &mut Vec<Effect>) {
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

    fn forget(&mut self, now: Time, conn: ConnId, c: Conn, out: &mut Vec<Effect>) {
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
    fn release_all(
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
    fn purge(&mut self, mut budget: usize) {
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
    fn live(&self, h: &Holder) -> bool {
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

    /// Ends every input: re-files the resources it changed in the idle
    /// index, and under `debug_assertions` runs [`Core::verify`]. Verifying
    /// is O(state), so in debug builds it runs after every input while the
    /// state is small and, for larger states, once per `size /
    /// VERIFY_CREDIT_PER_INPUT` inputs (amortized O(1) per input). The
    /// differential tests and the fuzzer call `verify` after every step
    /// themselves.
    fn finish(&mut self) {
        self.purge(PURGE_PER_INPUT);
        self.settle();
        #[cfg(debug_assertions)]
        {
            self.verify_credit = self.verify_credit.saturating_add(VERIFY_CREDIT_PER_INPUT);
            if self.verify_credit >= self.state_size() {
                self.verify_credit = 0;
                self.verify();
            }
        }
    }

    /// Items `verify` walks: resources, holders, waiters, connections,
    /// subscriptions.
    #[cfg(debug_assertions)]
    fn state_size(&self) -> usize {
        self.resources.len()
            + self.holders.len()
            + self.waiters.len()
            + self.conns.len()
            + self.signals.member_count()
    }

    // ----- requests -------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn acquire(
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

    fn release(
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
    fn renew(
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
    fn enqueue(
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

    fn wait(
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

    // ----- signals ----------------------------------------------------------

    fn listen(
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
    fn signal(&mut self, conn: ConnId, channel: Key, payload: Box<[u8]>, out: &mut Vec<Effect>) {
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

    // ----- time -----------------------------------------------------------

    /// The earliest lease expiry or waiter deadline, if any.
    fn next_due(&self) -> Option<(Time, Due)> {
        let lease = self.leases.first().map(|&(t, f)| (t, Due::Lease(f)));
        let waiter = self.deadlines.first().map(|&(t, w)| (t, Due::Waiter(w)));
        match (lease, waiter) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Processes every item due at or before `now`, each as of its own
    /// deadline (spec/semantics.md §8). O(log n) per item.
    fn advance(&mut self, now: Time, out: &mut Vec<Effect>) {
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
    fn expire(&mut self, at: Time, fence: u64, out: &mut Vec<Effect>) {
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
    fn time_out(&mut self, at: Time, w: u64, out: &mut Vec<Effect>) {
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
    fn gc(&mut self, at: Time) {
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

    // ----- grants and hand-off ---------------------------------------------

    /// Grants a slot of `res` to `conn` as of `at`; `queued` is when the
    /// request joined the queue, `None` if it did not. `None` when the fence
    /// ceiling is reached (nothing changes then); callers check first.
    fn grant(
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
    fn hand_off(&mut self, at: Time, res: ResId, out: &mut Vec<Effect>) {
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

    // ----- bookkeeping ------------------------------------------------------

    /// The token of `fence`.
    fn token(&self, fence: u64) -> Token {
        Token {
            fence,
            salt: token_salt(self.cfg.salt_key, fence),
        }
    }

    /// Records activity on `res` at `t` (spec/semantics.md §2: creation, a
    /// request reaching it, any change of its holders, leases or queue).
    fn touch(&mut self, res: ResId, t: Time) {
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
    fn settle(&mut self) {
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

    fn conn_mut(&mut self, conn: ConnId) -> &mut Conn {
        self.conns
            .get_mut(&conn)
            .expect("input for an unknown connection")
    }

    fn res_mut(&mut self, res: ResId) -> &mut Resource {
        self.resources[res as usize]
            .as_mut()
            .expect("dangling resource id")
    }

    /// The resource of (space, key), if it exists. One hash lookup.
    fn lookup(&self, space: Space, key: &Key) -> Option<ResId> {
        self.lookup_bytes(space, key.as_bytes())
    }

    fn lookup_bytes(&self, space: Space, key: &[u8]) -> Option<ResId> {
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

    fn get_or_create(
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
    fn find_holder(&self, space: Space, key: &Key, token: &[u8]) -> Option<u64> {
        let token = Token::parse(token)?;
        let res = self.lookup(space, key)?;
        let h = self.holders.get(&token.fence)?;
        (h.res == res && self.live(h) && token == self.token(token.fence)).then_some(token.fence)
    }

    /// Whether `fence` is a live holder of `res`.
    fn holds(&self, res: ResId, fence: u64) -> bool {
        self.holders
            .get(&fence)
            .is_some_and(|h| h.res == res && self.live(h))
    }

    /// Removes a holder as of `at` (release: `cause` `None`, or disconnect),
    /// its lease timer, its place in its connection's holdings, and the
    /// connection's record naming it. Returns its resource. O(log n).
    fn remove_holder(&mut self, at: Time, fence: u64, cause: Option<Cause>) -> ResId {
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
    fn set_expiry(&mut self, fence: u64, expires: Time) -> ResId {
        let h = self.holders.get_mut(&fence).expect("holder exists");
        let old = std::mem::replace(&mut h.expires, expires);
        let res = h.res;
        self.leases.remove(&(old, fence));
        self.leases.insert((expires, fence));
        res
    }

    fn set_record(&mut self, conn: ConnId, res: ResId, rec: Record) {
        if self.conn_mut(conn).records.insert(res, rec).is_none() {
            self.res_mut(res).records += 1;
            self.dirty.push(res);
        }
    }

    /// A record naming `res` was dropped from its connection.
    fn record_removed(&mut self, res: ResId) {
        self.res_mut(res).records -= 1;
        self.dirty.push(res);
    }

    #[allow(clippy::too_many_arguments)]
    fn add_waiter(
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
    fn remove_waiter(&mut self, w: u64, at: Time) -> Option<ResId> {
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

    /// The `stats` JSON as of the core's current time (for tests and the
    /// differential comparator; clients use the `stats` request).
    pub fn stats_json(&self) -> String {
        stats::render(self.snapshot(self.now))
    }

    /// The `stats` snapshot: O(n log n) in resources and subscriptions, as
    /// the reply lists every one of them.
    fn snapshot(&self, now: Time) -> stats::Snapshot<'_> {
        let mut snap = stats::Snapshot {
            connections: self.conns.len(),
            ..Default::default()
        };
        for r in self.resources.iter().flatten() {
            let key = r.key.as_bytes();
            let active = r.holders > 0 || !r.queue.is_empty();
            let idle_s = now.0.saturating_sub(r.last_activity.0) as f64 / 1000.0;
            match (r.limit == 1, active) {
                (true, true) => {
                    let h = (r.holders > 0).then(|| &self.holders[&r.last_fence]);
                    snap.locks.push(stats::LockEntry {
                        key,
                        space: r.space,
                        owner_conn_id: h.map_or(0, |h| h.conn.0),
                        lease_expires_in_s: h
                            .map_or(0.0, |h| h.expires.0.saturating_sub(now.0) as f64 / 1000.0),
                        waiters: r.queue.len(),
                    })
                }
                (false, true) => snap.semaphores.push(stats::SemEntry {
                    key,
                    space: r.space,
                    limit: r.limit,
                    holders: r.holders as usize,
                    waiters: r.queue.len(),
                }),
                (true, false) => snap.idle_locks.push(stats::IdleEntry {
                    key,
                    space: r.space,
                    idle_s,
                }),
                (false, false) => snap.idle_semaphores.push(stats::IdleEntry {
                    key,
                    space: r.space,
                    idle_s,
                }),
            }
        }
        for (pattern, group, listeners) in self.signals.entries() {
            snap.signal_channels.push(stats::ChannelEntry {
                pattern,
                group,
                listeners,
            });
        }
        snap
    }
}

#[cfg(test)]
impl Core {
    /// Entries in the queue of (space, key): lets tests bound the memory a
    /// queue holds.
    pub(super) fn queue_entries(&self, space: Space, key: &Key) -> usize {
        self.lookup(space, key)
            .and_then(|res| self.resources[res as usize].as_ref())
            .map_or(0, |r| r.queue.len())
    }
}
