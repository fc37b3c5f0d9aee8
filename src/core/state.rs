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
//! This file holds the structures, the configuration, the effects, the
//! queries and the dispatch of a request ([`Core::handle`]); the
//! transitions live in submodules by idea: `requests` (acquire, release,
//! renew, enqueue, wait), `handoff` (grant and FIFO hand-off), `clock`
//! (what falls due), `lifecycle` (invalid input, read deadlines, cancel,
//! drain, disconnect), `publish` (listen and signal delivery) and `index`
//! (keeping the indexes in step when holders and waiters come and go).
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

use hashbrown::HashTable;

use super::hash::{IdBuild, KeyBuild};
use super::metrics::CoreMetrics;
use super::signals::{self, PUSH_QUEUE_FRAMES};
use super::stats;
use super::{ConnId, Time};
use crate::wire::{Key, Reply, Request, Space, Status};

mod clock;
mod compact;
mod handoff;
mod holdings;
mod image;
mod index;
pub mod introspect;
mod lifecycle;
mod publish;
mod requests;
#[cfg(test)]
mod tests;
mod verify;

use compact::{Queue, ResKey};
use holdings::Retired;
pub use image::{CoreImage, ImageError};
use introspect::Insight;

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

    // ----- grants and hand-off ---------------------------------------------

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
