//! Core state and transitions.
//!
//! Data layout, chosen for the uncontended fast path (acquire + release on a
//! key nobody else wants): a resource is found by one hash lookup of its key;
//! a grant pushes one holder and one timer entry; a release scans the
//! resource's holders (at most `limit`, usually 1) and removes the timer
//! entry. Waiters live in a map by arrival number; a resource's queue holds
//! arrival numbers and may contain stale ones (removed waiters), which are
//! skipped lazily, so removing a waiter from the middle of a long queue is
//! amortised O(1); stale entries are compacted away once they outnumber the
//! live ones, so a queue stays O(`live_waiters`). `live_waiters` is the
//! exact count.
//!
//! Invariants checked at run time (a lock server stops rather than
//! double-grants): a grant never makes `holders > limit`; a granted waiter is
//! removed from the queue before it becomes a holder; `now` never goes back.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use super::metrics::{Cause, CoreMetrics};
use super::signals::{self, Route, PUSH_QUEUE_FRAMES};
use super::stats;
use super::{token_salt, ConnId, Time};
use crate::wire::{Key, Reply, Request, Space, Status, Token};

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
        }
    }
}

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
    /// Close `conn` after sending everything queued for it before this effect.
    Close { conn: ConnId },
    /// Push `sig <channel> <payload>` to `conn`, in order with its replies.
    /// The push counts as outstanding for `conn` until the driver reports it
    /// written ([`Core::pushes_written`]).
    Push {
        conn: ConnId,
        channel: Key,
        payload: std::sync::Arc<[u8]>,
    },
}

/// Index of a resource in the slab.
type ResId = u32;

/// Timer kinds, in the order due items with equal deadlines are processed
/// (spec/semantics.md §8).
const KIND_LEASE: u8 = 0;
const KIND_WAITER: u8 = 1;
const KIND_GC: u8 = 2;

/// A timer entry: (deadline, kind, sequence, resource). The sequence is the
/// fence for a lease and the arrival number for a waiter.
type TimerKey = (Time, u8, u64, ResId);

struct Holder {
    token: Token,
    conn: ConnId,
    expires: Time,
    /// When the slot was granted (for the hold-time histogram).
    granted: Time,
}

struct Resource {
    space: Space,
    key: Key,
    limit: u64,
    holders: Vec<Holder>,
    /// Arrival numbers, oldest first; may contain removed waiters.
    queue: VecDeque<u64>,
    live_waiters: usize,
    last_activity: Time,
    /// Two-phase records naming this resource. A resource with records is
    /// never collected, which bounds the records by `max_locks`.
    records: usize,
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Record {
    Queued { waiter: u64 },
    Granted { fence: u64, lease_s: u64 },
}

#[derive(Default)]
struct Conn {
    authed: bool,
    /// Held slots by fence (so disconnect releases in token order).
    held: BTreeMap<u64, ResId>,
    /// Arrival numbers of this connection's live waiters.
    waiters: Vec<u64>,
    /// Two-phase records by resource.
    records: HashMap<ResId, Record, IdBuild>,
    /// The waiter this connection is blocked on, if any.
    blocked: Option<u64>,
    /// Signal subscriptions: (pattern, group), group empty when ungrouped.
    subs: Vec<(Key, Box<[u8]>)>,
    /// Pushes emitted and not yet reported written by the driver.
    outstanding: usize,
    /// Closed as a slow consumer: receives nothing more.
    evicted: bool,
}

/// Multiplicative hasher for internal integer ids (never peer-chosen).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type IdBuild = BuildHasherDefault<IdHasher>;

/// SipHash-1-3 with a secret key for peer-chosen keys (HashDoS resistance
/// without the core drawing randomness).
#[derive(Clone)]
struct KeyBuild([u64; 2]);

impl BuildHasher for KeyBuild {
    type Hasher = siphasher::sip::SipHasher13;
    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_keys(self.0[0], self.0[1])
    }
}

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
    by_key: [HashMap<Key, ResId, KeyBuild>; 2],
    waiters: HashMap<u64, Waiter, IdBuild>,
    conns: HashMap<ConnId, Conn, IdBuild>,
    timers: BTreeSet<TimerKey>,
    /// Resources whose grants stopped at the fence ceiling: free capacity
    /// and waiters, but no fence to issue. Resumed by `raise_fence_ceiling`.
    starved: BTreeSet<ResId>,
    /// Signal subscriptions by pattern and group.
    signals: signals::Index,
    /// Counters and histograms for `/metrics`; never read by a transition.
    metrics: CoreMetrics,
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
    out.push(Effect::Close { conn });
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

impl Core {
    pub fn new(cfg: CoreConfig, now: Time) -> Core {
        let hb = KeyBuild([
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
            by_key: [HashMap::with_hasher(hb.clone()), HashMap::with_hasher(hb)],
            waiters: HashMap::default(),
            conns: HashMap::default(),
            timers: BTreeSet::new(),
            starved: BTreeSet::new(),
            signals: signals::Index::default(),
            metrics: CoreMetrics::default(),
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
        id
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
        // The oldest live waiter: the queue's front, since `remove_waiter`
        // pops removed entries from the front.
        let waiters = &self.waiters;
        let mut by_arrival: Vec<(u64, ResId)> = starved
            .into_iter()
            .filter_map(|res| {
                let r = self.resources[res as usize].as_ref()?;
                let head = r.queue.iter().find(|w| waiters.contains_key(w))?;
                Some((*head, res))
            })
            .collect();
        by_arrival.sort_unstable();
        for (_, res) in by_arrival {
            self.hand_off(now, res, out);
        }
    }

    /// Applies one request from `conn`. The reply to `conn` (unless the
    /// request blocks) and any grants or timeouts for other connections are
    /// appended to `out`. If no `Reply` for `conn` is appended, the request
    /// is blocked (a queued `l`/`sl`/`w`/`sw`) and its reply comes later
    /// from another input. The driver must not send another request for
    /// `conn` while it is blocked.
    pub fn handle(&mut self, now: Time, conn: ConnId, req: Request, out: &mut Vec<Effect>) {
        self.advance(now, out);
        let draining = self.draining;
        let c = self
            .conns
            .get_mut(&conn)
            .expect("input for an unknown connection");
        assert!(c.blocked.is_none(), "request from a blocked connection");
        if draining {
            status(out, conn, Status::ErrorDraining);
            out.push(Effect::Close { conn });
            return;
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
                status(out, conn, Status::ErrorAuth);
                out.push(Effect::Close { conn });
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
            // `auth` after the handshake, or without a configured token.
            Request::Auth { .. } => status(out, conn, Status::Error),
            Request::Listen { pattern, group } => self.listen(conn, pattern, group, out),
            Request::Unlisten { pattern, group } => {
                let group = group.unwrap_or_default();
                let c = self.conn_mut(conn);
                if let Some(i) = c
                    .subs
                    .iter()
                    .position(|(p, g)| *p == pattern && *g == group)
                {
                    c.subs.remove(i);
                    self.signals.remove(pattern.as_bytes(), &group, conn);
                }
                reply(out, conn, Reply::Ok);
            }
            Request::Signal { channel, payload } => self.signal(conn, channel, payload, out),
        }
    }

    /// A request from `conn` that could not be parsed, or a read timeout.
    /// `fatal` requests (overlong line, read timeout) close the connection.
    pub fn handle_invalid(&mut self, now: Time, conn: ConnId, fatal: bool, out: &mut Vec<Effect>) {
        self.advance(now, out);
        let c = self.conn_mut(conn);
        assert!(c.blocked.is_none(), "request from a blocked connection");
        let authed = c.authed;
        if self.draining {
            status(out, conn, Status::ErrorDraining);
            out.push(Effect::Close { conn });
        } else if !authed {
            status(out, conn, Status::ErrorAuth);
            out.push(Effect::Close { conn });
        } else {
            status(out, conn, Status::Error);
            if fatal {
                out.push(Effect::Close { conn });
            }
        }
    }

    /// Starts graceful shutdown: every blocked request answers `error`;
    /// every later request answers `error_draining` and closes.
    pub fn start_drain(&mut self, now: Time, out: &mut Vec<Effect>) {
        self.advance(now, out);
        self.draining = true;
        // Answered in the order the waiters arrived.
        let mut blocked: Vec<(u64, ConnId)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| c.blocked.map(|w| (w, *id)))
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
    }

    /// The connection went away (EOF, error, or closed by the driver). Its
    /// waiters and records go; its held slots are released in token order
    /// when auto-release is on (Decision D6).
    pub fn disconnect(&mut self, now: Time, conn: ConnId, out: &mut Vec<Effect>) {
        self.advance(now, out);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let mut touched = BTreeSet::new();
        for w in c.waiters {
            if let Some(res) = self.remove_waiter(w, now) {
                touched.insert(res);
                self.metrics.evicted(Cause::DisconnectWaiter, 1);
            }
        }
        for res in c.records.keys() {
            self.res_mut(*res).records -= 1;
        }
        for (pattern, group) in &c.subs {
            self.signals.remove(pattern.as_bytes(), group, conn);
        }
        if self.cfg.auto_release_on_disconnect {
            for (fence, res) in c.held {
                self.remove_holder(now, res, fence, Some(Cause::Disconnect));
                self.touch(res, now);
                self.hand_off(now, res, out);
            }
        }
        for res in touched {
            self.hand_off(now, res, out);
        }
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
    }

    /// Processes everything due at or before `now`.
    pub fn handle_timeout(&mut self, now: Time, out: &mut Vec<Effect>) {
        self.advance(now, out);
    }

    /// The next instant at which [`Core::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        let timer = self.timers.first().map(|t| t.0);
        Some(timer.map_or(self.next_gc, |t| t.min(self.next_gc)))
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
        let r = self.res_mut(res);
        r.last_activity = r.last_activity.max(now);
        let free = (r.holders.len() as u64) < r.limit && r.live_waiters == 0;
        if free && !fenced_out {
            let token = self
                .grant(now, res, conn, lease_s, None)
                .expect("fence headroom checked above");
            return reply(out, conn, Reply::Granted { token, lease_s });
        }
        // Free but no fence to issue (§6): queue like any waiter, and the
        // ceiling's rise grants it.
        if max_waiters > 0 && r.live_waiters >= max_waiters {
            return status(out, conn, Status::ErrorMaxWaiters);
        }
        if timeout_s == 0 {
            self.metrics.timed_out(space);
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
        let found = self.find_holder(space, key, token);
        let Some((res, fence)) = found else {
            return status(out, conn, Status::Error);
        };
        self.remove_holder(now, res, fence, None);
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
        let Some((res, fence)) = self.find_holder(space, key, token) else {
            return status(out, conn, Status::Error);
        };
        self.set_expiry(res, fence, now.plus_secs(lease_s));
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
        if let Some(&res) = self.by_key[space_index(space)].get(&key) {
            if let Some(&rec) = self.conn_mut(conn).records.get(&res) {
                let live = match rec {
                    Record::Queued { .. } => true,
                    Record::Granted { fence, .. } => self.holder_index(res, fence).is_some(),
                };
                if live {
                    return status(out, conn, Status::ErrorAlreadyEnqueued);
                }
                // A granted record whose lease is gone never blocks a new `e` (D18).
                self.conn_mut(conn).records.remove(&res);
                self.res_mut(res).records -= 1;
            }
        }
        let res = match self.get_or_create(now, space, key, limit) {
            Ok(res) => res,
            Err(s) => return status(out, conn, s),
        };
        let max_waiters = self.cfg.max_waiters;
        let fenced_out = self.fence >= self.cfg.fence_ceiling;
        let r = self.res_mut(res);
        r.last_activity = r.last_activity.max(now);
        let free = (r.holders.len() as u64) < r.limit && r.live_waiters == 0;
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
        if max_waiters > 0 && r.live_waiters >= max_waiters {
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
        let res = self.by_key[space_index(space)].get(key).copied();
        let rec = res.and_then(|res| self.conn_mut(conn).records.remove(&res));
        let (Some(res), Some(rec)) = (res, rec) else {
            return status(out, conn, Status::ErrorNotEnqueued);
        };
        self.res_mut(res).records -= 1;
        match rec {
            Record::Granted { fence, lease_s } => match self.holder_index(res, fence) {
                Some(i) => {
                    let token = self.res_mut(res).holders[i].token;
                    self.set_expiry(res, fence, now.plus_secs(lease_s));
                    self.touch(res, now);
                    reply(out, conn, Reply::Granted { token, lease_s });
                }
                None => status(out, conn, Status::ErrorLeaseExpired),
            },
            Record::Queued { waiter } => {
                if timeout_s == 0 {
                    self.remove_waiter(waiter, now);
                    self.metrics.timed_out(space);
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
                self.timers.insert((deadline, KIND_WAITER, waiter, res));
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
        let group = group.unwrap_or_default();
        let max = self.cfg.max_subscriptions;
        let c = self.conn_mut(conn);
        if c.subs.iter().any(|(p, g)| *p == pattern && *g == group) {
            // Already subscribed: a no-op, even at the cap (Decision D12).
            return reply(out, conn, Reply::Ok);
        }
        if max > 0 && c.subs.len() >= max {
            return status(out, conn, Status::Error);
        }
        c.subs.push((pattern.clone(), group.clone()));
        self.signals.add(pattern.as_bytes(), &group, conn);
        reply(out, conn, Reply::Ok);
    }

    /// Delivers a signal (spec/semantics.md §12): exact ungrouped listeners,
    /// exact groups (one member each), wildcard ungrouped listeners not yet
    /// served by an ungrouped route, wildcard groups. Answers `ok <n>` with
    /// the number of pushes emitted.
    fn signal(&mut self, conn: ConnId, channel: Key, payload: Box<[u8]>, out: &mut Vec<Effect>) {
        let payload: std::sync::Arc<[u8]> = payload.into();
        let ch = channel.as_bytes();
        let conns = &mut self.conns;
        let index = &mut self.signals;
        let mut slow_consumers = 0u64;
        // Connections an ungrouped route of this signal already reached.
        let mut served: std::collections::HashSet<ConnId, IdBuild> = Default::default();
        let mut delivered = 0u64;
        let mut push =
            |conns: &mut HashMap<ConnId, Conn, IdBuild>, to: ConnId, out: &mut Vec<Effect>| {
                if let Some(c) = conns.get_mut(&to) {
                    c.outstanding += 1;
                }
                out.push(Effect::Push {
                    conn: to,
                    channel: channel.clone(),
                    payload: payload.clone(),
                });
                delivered += 1;
            };
        let full = |conns: &HashMap<ConnId, Conn, IdBuild>, c: ConnId| {
            conns
                .get(&c)
                .is_none_or(|c| c.evicted || c.outstanding >= PUSH_QUEUE_FRAMES)
        };
        let evicted = |conns: &HashMap<ConnId, Conn, IdBuild>, c: ConnId| {
            conns.get(&c).is_none_or(|c| c.evicted)
        };
        let exact = index.exact.get_mut(ch);
        let mut wild: Vec<&mut signals::Groups> = index
            .wild
            .iter_mut()
            .filter(|(p, _)| signals::matches(p, ch))
            .map(|(_, g)| g)
            .collect();
        // Steps 1 and 2: the exact channel. Step 3 and 4: matching wildcards.
        let mut steps: Vec<(bool, &mut signals::Group)> = Vec::new();
        if let Some(groups) = exact {
            // The empty (ungrouped) name sorts first.
            steps.extend(groups.iter_mut().map(|(g, m)| (g.is_empty(), m)));
        }
        let mut wild_groups = Vec::new();
        for groups in wild.iter_mut() {
            for (g, m) in groups.iter_mut() {
                if g.is_empty() {
                    steps.push((true, m));
                } else {
                    wild_groups.push((false, m));
                }
            }
        }
        steps.extend(wild_groups);
        for (ungrouped, g) in steps {
            if ungrouped {
                for &to in &g.members {
                    if !served.insert(to) || evicted(conns, to) {
                        continue;
                    }
                    if full(conns, to) {
                        slow_consumers += u64::from(evict(conns, to, out));
                    } else {
                        push(conns, to, out);
                    }
                }
            } else {
                match signals::pick(g, |c| full(conns, c), |c| evicted(conns, c)) {
                    Route::Deliver(to) => push(conns, to, out),
                    Route::Evict(to) => slow_consumers += u64::from(evict(conns, to, out)),
                    Route::Skip => {}
                }
            }
        }
        self.metrics.evicted(Cause::SlowConsumer, slow_consumers);
        self.metrics.signal(delivered);
        reply(out, conn, Reply::OkInt(delivered));
    }

    // ----- time -----------------------------------------------------------

    /// Processes every item due at or before `now`, each as of its own
    /// deadline (spec/semantics.md §8).
    fn advance(&mut self, now: Time, out: &mut Vec<Effect>) {
        assert!(
            now >= self.now,
            "time went back: {:?} < {:?}",
            now,
            self.now
        );
        self.now = now;
        loop {
            let timer = self.timers.first().copied();
            match timer {
                Some(t) if t.0 <= now && (t.0, t.1) < (self.next_gc, KIND_GC) => {
                    self.timers.remove(&t);
                    let (at, kind, seq, res) = t;
                    if kind == KIND_LEASE {
                        self.expire(at, res, seq, out);
                    } else {
                        self.time_out(at, seq, out);
                    }
                }
                _ if self.next_gc <= now => {
                    let at = self.next_gc;
                    self.gc(at);
                    self.next_gc = at.plus_secs(self.cfg.gc_interval_s.max(1));
                }
                _ => break,
            }
        }
    }

    /// Lease `fence` on `res` reached its deadline `at`.
    fn expire(&mut self, at: Time, res: ResId, fence: u64, out: &mut Vec<Effect>) {
        let r = self.res_mut(res);
        let i = r
            .holders
            .iter()
            .position(|h| h.token.fence == fence)
            .expect("lease timer names a live holder");
        let h = r.holders.swap_remove(i);
        let space = r.space;
        if let Some(c) = self.conns.get_mut(&h.conn) {
            c.held.remove(&fence);
        }
        self.metrics
            .holder_ended(space, at.0.saturating_sub(h.granted.0), Some(Cause::Expiry));
        // The holder's two-phase record stays so that `w` can answer
        // `error_lease_expired` (D18).
        self.touch(res, at);
        self.hand_off(at, res, out);
    }

    /// Waiter `w` reached its deadline `at`.
    fn time_out(&mut self, at: Time, w: u64, out: &mut Vec<Effect>) {
        let waiter = &self.waiters[&w];
        let (conn, blocking) = (waiter.conn, waiter.blocking);
        if let Some(res) = self.remove_waiter(w, at) {
            if blocking {
                self.conn_mut(conn).blocked = None;
                let space = self.res_mut(res).space;
                self.metrics.timed_out(space);
                status(out, conn, Status::Timeout);
            }
            self.hand_off(at, res, out);
        }
    }

    fn gc(&mut self, at: Time) {
        let max_idle_ms = self.cfg.gc_max_idle_s.saturating_mul(1000);
        for id in 0..self.resources.len() {
            let collect = self.resources[id].as_ref().is_some_and(|r| {
                r.holders.is_empty()
                    && r.live_waiters == 0
                    && r.records == 0
                    && at.0.saturating_sub(r.last_activity.0) > max_idle_ms
            });
            if collect {
                let r = self.resources[id].take().expect("checked above");
                self.by_key[space_index(r.space)].remove(&r.key);
                self.free_slots.push(id as ResId);
                self.resource_count -= 1;
            }
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
        let token = Token {
            fence,
            salt: token_salt(self.cfg.salt_key, fence),
        };
        let expires = at.plus_secs(lease_s);
        let r = self.res_mut(res);
        assert!(
            (r.holders.len() as u64) < r.limit,
            "grant would exceed the limit"
        );
        r.holders.push(Holder {
            token,
            conn,
            expires,
            granted: at,
        });
        r.last_activity = r.last_activity.max(at);
        let space = r.space;
        self.metrics
            .granted(space, queued.map(|q| at.0.saturating_sub(q.0)));
        self.timers.insert((expires, KIND_LEASE, fence, res));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.held.insert(fence, res);
        }
        Some(token)
    }

    /// Grants waiters from the head of `res`'s queue while capacity lasts
    /// (spec/semantics.md §7).
    fn hand_off(&mut self, at: Time, res: ResId, out: &mut Vec<Effect>) {
        loop {
            let r = self.res_mut(res);
            if r.live_waiters == 0 || (r.holders.len() as u64) >= r.limit {
                return;
            }
            let head = *r.queue.front().expect("live waiters are queued");
            let Some(w) = self.waiters.get(&head) else {
                // A removed waiter: skip it.
                self.res_mut(res).queue.pop_front();
                continue;
            };
            if w.deadline.is_some_and(|d| d <= at) {
                // Dead at `at`: a timed-out waiter is never granted. Timed out
                // here rather than through `time_out`, which would hand off
                // again: one loop, not one stack frame per dead waiter.
                let (conn, blocking) = (w.conn, w.blocking);
                self.remove_waiter(head, at);
                if blocking {
                    let space = self.res_mut(res).space;
                    self.metrics.timed_out(space);
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
                self.conn_mut(conn).blocked = None;
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

    /// Records activity on `res` at `t` (spec/semantics.md §2: creation, a
    /// request reaching it, any change of its holders, leases or queue).
    fn touch(&mut self, res: ResId, t: Time) {
        let r = self.res_mut(res);
        r.last_activity = r.last_activity.max(t);
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

    fn get_or_create(
        &mut self,
        now: Time,
        space: Space,
        key: Key,
        limit: u64,
    ) -> Result<ResId, Status> {
        let map = &self.by_key[space_index(space)];
        if let Some(&res) = map.get(&key) {
            return if self.res_mut(res).limit == limit {
                Ok(res)
            } else {
                Err(Status::ErrorLimitMismatch)
            };
        }
        if self.resource_count >= self.cfg.max_locks {
            return Err(Status::ErrorMaxLocks);
        }
        let r = Resource {
            space,
            key: key.clone(),
            limit,
            holders: Vec::new(),
            queue: VecDeque::new(),
            live_waiters: 0,
            last_activity: now,
            records: 0,
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
        self.by_key[space_index(space)].insert(key, res);
        Ok(res)
    }

    /// Finds a live holder of (space, key) with exactly this token.
    fn find_holder(&mut self, space: Space, key: &Key, token: &[u8]) -> Option<(ResId, u64)> {
        let token = Token::parse(token)?;
        let res = *self.by_key[space_index(space)].get(key)?;
        let r = self.res_mut(res);
        r.holders
            .iter()
            .any(|h| h.token == token)
            .then_some((res, token.fence))
    }

    fn holder_index(&mut self, res: ResId, fence: u64) -> Option<usize> {
        self.res_mut(res)
            .holders
            .iter()
            .position(|h| h.token.fence == fence)
    }

    /// Removes a holder as of `at` (release: `cause` `None`, or disconnect),
    /// its timer, its place in its connection's held set, and the
    /// connection's record naming it.
    fn remove_holder(&mut self, at: Time, res: ResId, fence: u64, cause: Option<Cause>) {
        let i = self.holder_index(res, fence).expect("holder exists");
        let r = self.res_mut(res);
        let h = r.holders.swap_remove(i);
        let space = r.space;
        self.metrics
            .holder_ended(space, at.0.saturating_sub(h.granted.0), cause);
        self.timers.remove(&(h.expires, KIND_LEASE, fence, res));
        let mut dropped_record = false;
        if let Some(c) = self.conns.get_mut(&h.conn) {
            c.held.remove(&fence);
            if let Some(Record::Granted { fence: f, .. }) = c.records.get(&res) {
                if *f == fence {
                    c.records.remove(&res);
                    dropped_record = true;
                }
            }
        }
        if dropped_record {
            self.res_mut(res).records -= 1;
        }
    }

    fn set_expiry(&mut self, res: ResId, fence: u64, expires: Time) {
        let i = self.holder_index(res, fence).expect("holder exists");
        let h = &mut self.res_mut(res).holders[i];
        let old = std::mem::replace(&mut h.expires, expires);
        self.timers.remove(&(old, KIND_LEASE, fence, res));
        self.timers.insert((expires, KIND_LEASE, fence, res));
    }

    fn set_record(&mut self, conn: ConnId, res: ResId, rec: Record) {
        if self.conn_mut(conn).records.insert(res, rec).is_none() {
            self.res_mut(res).records += 1;
        }
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
        let r = self.res_mut(res);
        r.queue.push_back(w);
        r.live_waiters += 1;
        if let Some(d) = deadline {
            self.timers.insert((d, KIND_WAITER, w, res));
        }
        self.conn_mut(conn).waiters.push(w);
        w
    }

    /// Removes waiter `w` from every index. Returns its resource, or `None`
    /// if it was already gone. Its queue entry is left for lazy skipping.
    fn remove_waiter(&mut self, w: u64, at: Time) -> Option<ResId> {
        let waiter = self.waiters.remove(&w)?;
        if let Some(d) = waiter.deadline {
            self.timers.remove(&(d, KIND_WAITER, w, waiter.res));
        }
        let r = self.resources[waiter.res as usize]
            .as_mut()
            .expect("dangling resource id");
        r.live_waiters -= 1;
        r.last_activity = r.last_activity.max(at);
        // Removed entries are skipped lazily, but must not pile up behind a
        // long-lived head waiter: drop them from the front, and compact once
        // they outnumber the live ones (amortised O(1) per removal, and the
        // queue never holds more than `2 * live_waiters + 8` entries).
        let live = &self.waiters;
        while r.queue.front().is_some_and(|id| !live.contains_key(id)) {
            r.queue.pop_front();
        }
        if r.queue.len() > 2 * r.live_waiters + 8 {
            r.queue.retain(|id| live.contains_key(id));
        }
        if let Some(c) = self.conns.get_mut(&waiter.conn) {
            if let Some(i) = c.waiters.iter().position(|x| *x == w) {
                c.waiters.swap_remove(i);
            }
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

    fn snapshot(&self, now: Time) -> stats::Snapshot<'_> {
        let mut snap = stats::Snapshot {
            connections: self.conns.len(),
            ..Default::default()
        };
        for r in self.resources.iter().flatten() {
            let key = r.key.as_bytes();
            let active = !r.holders.is_empty() || r.live_waiters > 0;
            let idle_s = now.0.saturating_sub(r.last_activity.0) as f64 / 1000.0;
            match (r.limit == 1, active) {
                (true, true) => {
                    let h = r.holders.first();
                    snap.locks.push(stats::LockEntry {
                        key,
                        space: r.space,
                        owner_conn_id: h.map_or(0, |h| h.conn.0),
                        lease_expires_in_s: h
                            .map_or(0.0, |h| h.expires.0.saturating_sub(now.0) as f64 / 1000.0),
                        waiters: r.live_waiters,
                    })
                }
                (false, true) => snap.semaphores.push(stats::SemEntry {
                    key,
                    space: r.space,
                    limit: r.limit,
                    holders: r.holders.len(),
                    waiters: r.live_waiters,
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
    /// Entries in the queue of (space, key), removed waiters included: lets
    /// tests bound the memory a queue holds.
    pub(super) fn queue_entries(&self, space: Space, key: &Key) -> usize {
        self.by_key[space_index(space)]
            .get(key)
            .and_then(|&res| self.resources[res as usize].as_ref())
            .map_or(0, |r| r.queue.len())
    }
}
