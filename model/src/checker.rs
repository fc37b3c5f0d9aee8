//! The stateright model: a few clients drive one [`Machine`] on a few keys
//! while a virtual clock moves, and the checker explores every interleaving
//! within the bounds, checking the properties of `spec/semantics.md` §11.
//!
//! The state is the machine, the clock, what each client believes (its
//! tokens, its blocked request, its two-phase records) and a little *ghost*
//! history that the history properties need (the last fence granted, the
//! last arrival granted per key, which waiters are dead, each lease's
//! expected deadline). The ghost is fed from the machine's [`Event`] trace,
//! which interleaves grants, expiries and releases with the outputs in the
//! order they happened; replies are interpreted the way a client would.
//!
//! Bounds keep the space finite and every path acyclic (so `eventually`
//! properties are sound in stateright): the clock only moves forward and
//! stops at the horizon; each client has a budget of requests, of
//! connection drops and of cancels (§9.1); clients stop acting at the
//! horizon, where the only remaining action is firing due timers. A *terminal* state is therefore
//! one at the horizon with nothing due.
//!
//! Time moves by `Tick` (one second). With `lazy_timers`, a tick does not run
//! the machine's timers: `Fire` does, whenever something is due, so the
//! checker also explores requests that arrive before a late timer fires
//! (the machine must answer as if the timer had been on time, §8).
//!
//! With `signals`, clients also subscribe (`listen`) and publish on one
//! channel (§12), so pushes interleave with replies on the same connection.
//!
//! Clients are interchangeable, so [`State`] implements stateright's
//! [`Representative`]: with `checker().symmetry()` (depth-first only in
//! stateright 0.31), states that differ only by a permutation of the
//! clients, and the matching renaming of connection ids, count once. That
//! is what makes three clients with three requests each checkable.

use std::hash::{Hash, Hasher};

use stateright::{Model, Property, Representative};

use crate::machine::{Cause, Event, Machine, RecordState};
use crate::types::{Bug, Config, Op, Output, Space, Why};

/// The bounds and knobs of one model.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Number of clients; each starts with one connection.
    pub clients: usize,
    /// Number of keys `k0`, `k1`, ...: even-numbered keys are locks,
    /// odd-numbered keys are semaphores with limit `sem_limit`.
    pub keys: usize,
    pub sem_limit: u64,
    /// The clock stops here; clients act only before it.
    pub horizon_s: u64,
    /// Requests each client may send.
    pub ops_per_client: u8,
    /// Times each client's connection may drop (it reconnects as a new id).
    pub drops_per_client: u8,
    /// Times each client may cancel its blocked request (semantics §9.1,
    /// what the HTTP front does when its client goes away), also just
    /// after the grant reached it (the race the cancel may lose).
    pub cancels_per_client: u8,
    /// Times each client's connection may reach its read deadline while
    /// idle (semantics §9.2).
    pub idles_per_client: u8,
    /// Connections from outside that fail authentication (semantics §10);
    /// needs `machine.auth_token`, with which every client authenticates
    /// when it connects.
    pub intruders: u8,
    /// Timeouts offered to `l`/`sl`.
    pub acquire_timeouts_s: Vec<u64>,
    /// Leases offered to `l`/`sl`/`e`/`se`.
    pub leases_s: Vec<u64>,
    /// Whether clients use `e`/`se` and `w`/`sw` (with these timeouts).
    pub two_phase: bool,
    pub wait_timeouts_s: Vec<u64>,
    /// Whether clients renew (with the default lease).
    pub renew: bool,
    /// Whether the server may start draining (once).
    pub drain: bool,
    /// Whether timers may fire late (see the module docs).
    pub lazy_timers: bool,
    /// Whether clients listen and signal (see [`SUBSCRIPTIONS`]); each
    /// `listen` and `signal` counts as a request.
    pub signals: bool,
    /// The machine's configuration.
    pub machine: Config,
    /// A deliberately broken machine, or `Bug::None`.
    pub bug: Bug,
}

impl ModelConfig {
    /// The configuration CI checks (see `tests/model/check.rs`): two
    /// clients, a lock and a semaphore of limit 2, four seconds, two
    /// requests and one drop per client, late timers, draining. Two requests
    /// per client suffice for every hand-off the properties look for; a
    /// third multiplies the space by more than ten.
    pub fn ci() -> ModelConfig {
        ModelConfig {
            clients: 2,
            keys: 2,
            sem_limit: 2,
            horizon_s: 4,
            ops_per_client: 2,
            drops_per_client: 1,
            cancels_per_client: 0,
            idles_per_client: 0,
            intruders: 0,
            acquire_timeouts_s: vec![0, 2],
            leases_s: vec![1],
            two_phase: true,
            wait_timeouts_s: vec![0, 2],
            renew: true,
            drain: true,
            lazy_timers: true,
            signals: false,
            machine: Config {
                default_lease_s: 2,
                max_locks: 16,
                max_waiters: 0,
                auto_release_on_disconnect: true,
                gc_interval_s: 2,
                gc_max_idle_s: 1,
                auth_token: None,
                fence_start: 0,
                fence_ceiling: u64::MAX,
                salt_key: [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210],
                max_subscriptions: 0,
                auth_failure_pause_ms: 100,
            },
            bug: Bug::None,
        }
    }

    /// The CI configuration with signals and a waiter cap of 1: a client
    /// may listen (exactly, by wildcard, or in a queue group) and publish;
    /// a second waiter on a key is refused. No two-phase requests, no
    /// renewals and no draining, to keep the space below the CI one (with
    /// them it is 2.6 million states).
    pub fn signals() -> ModelConfig {
        let mut cfg = ModelConfig::ci();
        cfg.signals = true;
        cfg.machine.max_waiters = 1;
        cfg.two_phase = false;
        cfg.renew = false;
        cfg.drain = false;
        cfg
    }

    /// The CI configuration with a cancel and a drop per client, in any
    /// order (semantics §9, §9.1).
    pub fn cancels_and_drops() -> ModelConfig {
        let mut cfg = ModelConfig::ci();
        cfg.cancels_per_client = 1;
        cfg.drops_per_client = 1;
        cfg
    }

    /// The reachability properties this configuration cannot reach: a
    /// waiter cap needs `max_waiters`, a signal needs `signals`, a hand-off
    /// by disconnect needs drops and auto-release.
    pub fn unreachable(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.machine.max_waiters == 0 {
            names.push(CAP_REFUSES);
        }
        if !self.signals {
            names.push(SIGNAL_DELIVERED);
        }
        if self.drops_per_client == 0 || !self.machine.auto_release_on_disconnect {
            names.push(BY_DISCONNECT);
        }
        if self.keys < 2 {
            // Key 1 is the semaphore; with one key there is only the lock.
            names.push(SEM_FULL);
        }
        names
    }

    /// The nightly configuration: three clients with three requests and a
    /// drop each, on one lock, with late timers. A queue two waiters deep
    /// is what a third client adds: FIFO among waiters, a middle waiter
    /// timing out or dropping, hand-off by release, expiry and disconnect
    /// along that queue. Two-phase requests, renewals, draining and the
    /// semaphore stay in the two-client configurations: with the semaphore
    /// or two-phase requests added, the space passed 21 and 23 million
    /// states in under half an hour and was still growing; without them
    /// it is checked in minutes. Checkable only
    /// with symmetry reduction (`--symmetry`).
    pub fn nightly() -> ModelConfig {
        let mut cfg = ModelConfig::ci();
        cfg.clients = 3;
        cfg.ops_per_client = 3;
        cfg.keys = 1;
        cfg.two_phase = false;
        cfg.renew = false;
        cfg.drain = false;
        cfg
    }

    /// The decisions the drivers used to make, now the machine's (semantics
    /// §9.1, §9.2, §10): one lock and one semaphore, two clients that
    /// authenticate, may idle at their read deadline and cancel a blocked
    /// request (also after its grant), and an intruder that fails
    /// authentication. No drops, no draining, no two-phase: those are the
    /// CI configuration's.
    pub fn driver() -> ModelConfig {
        let mut cfg = ModelConfig::ci();
        cfg.horizon_s = 3;
        cfg.drops_per_client = 0;
        cfg.cancels_per_client = 1;
        cfg.idles_per_client = 1;
        cfg.intruders = 1;
        cfg.two_phase = false;
        cfg.renew = false;
        cfg.drain = false;
        cfg.acquire_timeouts_s = vec![2];
        cfg.machine.auth_token = Some(b"s3cret".to_vec());
        cfg
    }
}

/// What a client may subscribe to with `signals` (pattern, group): all
/// three match the channel clients publish on, [`CHANNEL`].
pub const SUBSCRIPTIONS: [(&str, &str); 3] = [("c", ""), ("*", ""), ("c", "g")];
/// The channel clients publish on.
pub const CHANNEL: &str = "c";

/// The stateright model over the reference machine.
#[derive(Clone, Debug)]
pub struct LockModel {
    pub cfg: ModelConfig,
    /// (space, key, limit) of key index `i`.
    resources: Vec<(Space, Vec<u8>, u64)>,
}

impl LockModel {
    pub fn new(cfg: ModelConfig) -> LockModel {
        let resources = (0..cfg.keys)
            .map(|i| {
                let key = format!("k{i}").into_bytes();
                if i % 2 == 0 {
                    (Space::Lock, key, 1)
                } else {
                    (Space::Sem, key, cfg.sem_limit)
                }
            })
            .collect();
        LockModel { cfg, resources }
    }

    fn horizon_ms(&self) -> u64 {
        self.cfg.horizon_s * 1000
    }

    /// The clock is at the horizon and nothing is due: the end of every
    /// path. (Before the timers fire, a stuck queue can still look fine.)
    fn settled(&self, s: &State) -> bool {
        s.clock_ms == self.horizon_ms() && s.machine.next_deadline().is_none_or(|d| d > s.clock_ms)
    }

    fn key_index(&self, space: Space, key: &[u8]) -> usize {
        self.resources
            .iter()
            .position(|(s, k, _)| *s == space && k == key)
            .expect("event on a key the model never uses")
    }
}

/// What a blocked request is waiting for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pending {
    pub key: usize,
    /// The machine's arrival number of the queued request.
    pub arrival: u64,
    /// When the request must stop waiting, as the client computed it.
    pub deadline_ms: u64,
}

/// A two-phase record as the client understands it from the replies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Belief {
    /// `queued`; the server may have granted it silently since.
    Queued { arrival: u64 },
    /// `acquired TOK L`.
    Granted { token: String },
}

/// One client: a connection and what it has been told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// `None` once the server closed it (after draining).
    pub conn: Option<u64>,
    pub ops_left: u8,
    pub drops_left: u8,
    pub cancels_left: u8,
    pub idles_left: u8,
    pub pending: Option<Pending>,
    /// With cancels: the grant that just answered its blocked request,
    /// until the client's next action (key, token, arrival). A cancel may
    /// still come for that request (semantics §9.1).
    pub answered: Option<(usize, String, u64)>,
    /// (key, token) the client believes it holds (some may have expired).
    pub tokens: Vec<(usize, String)>,
    pub enqueued: Vec<(usize, Belief)>,
    /// Indices into [`SUBSCRIPTIONS`] answered `ok`, in that order.
    pub subs: Vec<usize>,
}

/// Facts about the last transition only (reset on every step).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StepFacts {
    pub handoff_by_release: bool,
    pub handoff_by_expiry: bool,
    pub handoff_by_disconnect: bool,
    pub queued_granted: bool,
    pub refused_at_cap: bool,
    pub signal_delivered: bool,
}

/// History the safety properties need.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// The largest fence granted so far.
    pub max_fence: u64,
    /// Per key, the arrival number of the last request granted.
    pub last_grant_arrival: Vec<u64>,
    /// Connections that went away.
    pub dead_conns: Vec<u64>,
    /// Arrival numbers of waiters that timed out or were cancelled.
    pub dead_arrivals: Vec<u64>,
    /// (fence, expected deadline) of every live lease: grant instant + L,
    /// moved by a renew or `w` reset that the client saw succeed in time.
    pub leases: Vec<(u64, u64)>,
    /// Arrival numbers of the requests that were cancelled (semantics §9.1).
    pub cancelled: Vec<u64>,
    /// Names of the history properties some step violated.
    pub violated: Vec<&'static str>,
    pub step: StepFacts,
}

/// The owner of an intruder's connection in [`State::conn_owner`].
pub const INTRUDER: usize = usize::MAX;

/// A model state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub clock_ms: u64,
    pub machine: Machine,
    pub clients: Vec<Client>,
    /// The client each connection id belongs to (`conn_owner[id - 1]`), so
    /// that [`Representative`] can rename connections with their clients;
    /// [`INTRUDER`] for an intruder's (they keep their order, after every
    /// client's).
    pub conn_owner: Vec<usize>,
    pub drained: bool,
    /// Intruders that have tried their wrong `auth`.
    pub intruded: u8,
    pub ghost: Ghost,
}

impl State {
    fn intruders_left(&self, m: &LockModel) -> u8 {
        m.cfg.intruders.saturating_sub(self.intruded)
    }
}

/// One step of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The clock moves one second (and, without lazy timers, timers fire).
    Tick,
    /// Timers fire at the current instant (lazy timers only).
    Fire,
    /// The server starts draining.
    Drain,
    /// The client's connection drops; it reconnects as a new id.
    Drop { client: usize },
    /// The driver cancels the client's blocked request (§9.1).
    Cancel { client: usize },
    /// The client's connection reaches its read deadline, idle (§9.2).
    Idle { client: usize },
    /// A new connection sends a wrong `auth` (§10).
    Intrude,
    Acquire {
        client: usize,
        key: usize,
        timeout_s: u64,
        lease_s: u64,
    },
    /// Release the client's `token`-th token.
    Release { client: usize, token: usize },
    /// Renew the client's `token`-th token with the default lease.
    Renew { client: usize, token: usize },
    Enqueue {
        client: usize,
        key: usize,
        lease_s: u64,
    },
    Wait {
        client: usize,
        key: usize,
        timeout_s: u64,
    },
    /// `listen` to `SUBSCRIPTIONS[sub]`.
    Listen { client: usize, sub: usize },
    /// `signal` on [`CHANNEL`].
    Signal { client: usize },
}

pub(crate) const MUTUAL_EXCLUSION: &str = "mutual exclusion";
pub(crate) const SEMAPHORE_WITHIN_LIMIT: &str = "semaphore within limit";
pub(crate) const FIFO: &str = "fifo grant order";
pub(crate) const NO_DEAD_GRANT: &str = "no grant to a dead waiter";
pub(crate) const RENEW_HONOURED: &str = "renewed lease honoured";
pub(crate) const FENCES_INCREASE: &str = "fencing tokens increase";
const NO_WAITER_HOLDER: &str = "no waiter is also a holder";
pub(crate) const ANSWERED_ONCE: &str = "every blocked request is answered exactly once";
const SIGNAL_ONCE: &str = "a signal reaches each listener once";
const BY_RELEASE: &str = "lock changes hands by release";
const BY_EXPIRY: &str = "lock changes hands by expiry";
const BY_DISCONNECT: &str = "lock changes hands by disconnect";
const QUEUED_GRANTED: &str = "queued waiter granted";
const SEM_FULL: &str = "semaphore full with waiters";
const CAP_REFUSES: &str = "a full queue refuses a waiter";
const SIGNAL_DELIVERED: &str = "a signal reaches a listener";
pub(crate) const RECLAIMED: &str = "expired lease is reclaimed";
const HEAD_SERVED: &str = "head waiter granted or timed out";
const OWNER_KEPT: &str = "an owner is not cut for idleness";
const AUTH_FAILURE_CLOSES: &str = "failed authentication closes after the pause";
const CANCELLED_HOLDS_NOTHING: &str = "a cancelled request holds nothing";

/// The names of the safety (`always`) properties, as in `spec/semantics.md` §11.
pub const ALWAYS: [&str; 12] = [
    MUTUAL_EXCLUSION,
    SEMAPHORE_WITHIN_LIMIT,
    FIFO,
    NO_DEAD_GRANT,
    RENEW_HONOURED,
    FENCES_INCREASE,
    NO_WAITER_HOLDER,
    ANSWERED_ONCE,
    SIGNAL_ONCE,
    OWNER_KEPT,
    AUTH_FAILURE_CLOSES,
    CANCELLED_HOLDS_NOTHING,
];
/// The names of the reachability (`sometimes`) properties.
pub const SOMETIMES: [&str; 7] = [
    BY_RELEASE,
    BY_EXPIRY,
    BY_DISCONNECT,
    QUEUED_GRANTED,
    SEM_FULL,
    CAP_REFUSES,
    SIGNAL_DELIVERED,
];
/// The names of the liveness (`eventually`) properties.
pub const EVENTUALLY: [&str; 2] = [RECLAIMED, HEAD_SERVED];

/// What the acting client sent, to interpret its own reply.
#[derive(Clone, Debug)]
struct Sent {
    client: usize,
    action: Action,
    answered: bool,
    /// The connections a `sig` push went to during this step, in order.
    pushes: Vec<u64>,
}

impl Model for LockModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let mut machine = Machine::with_bug(self.cfg.machine.clone(), 0, self.cfg.bug);
        machine.enable_trace();
        let clients = (0..self.cfg.clients)
            .map(|_| Client {
                conn: Some(self.connect(&mut machine, 0)),
                ops_left: self.cfg.ops_per_client,
                drops_left: self.cfg.drops_per_client,
                cancels_left: self.cfg.cancels_per_client,
                idles_left: self.cfg.idles_per_client,
                pending: None,
                answered: None,
                tokens: Vec::new(),
                enqueued: Vec::new(),
                subs: Vec::new(),
            })
            .collect();
        vec![State {
            clock_ms: 0,
            machine,
            clients,
            conn_owner: (0..self.cfg.clients).collect(),
            drained: false,
            intruded: 0,
            ghost: Ghost {
                max_fence: self.cfg.machine.fence_start,
                last_grant_arrival: vec![0; self.cfg.keys],
                dead_conns: Vec::new(),
                dead_arrivals: Vec::new(),
                leases: Vec::new(),
                cancelled: Vec::new(),
                violated: Vec::new(),
                step: StepFacts::default(),
            },
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let before_horizon = s.clock_ms < self.horizon_ms();
        if before_horizon {
            actions.push(Action::Tick);
        }
        if self.cfg.lazy_timers && s.machine.next_deadline().is_some_and(|d| d <= s.clock_ms) {
            actions.push(Action::Fire);
        }
        if !before_horizon {
            return;
        }
        if self.cfg.drain && !s.drained {
            actions.push(Action::Drain);
        }
        if s.intruders_left(self) > 0 {
            actions.push(Action::Intrude);
        }
        for (ci, c) in s.clients.iter().enumerate() {
            let Some(conn) = c.conn else { continue };
            // Dropping a connection that owns nothing is indistinguishable
            // from not dropping it, so only owners drop.
            let owns = c.pending.is_some()
                || !c.tokens.is_empty()
                || !c.enqueued.is_empty()
                || !c.subs.is_empty();
            if c.drops_left > 0 && owns {
                actions.push(Action::Drop { client: ci });
            }
            if c.cancels_left > 0 && (c.pending.is_some() || c.answered.is_some()) {
                actions.push(Action::Cancel { client: ci });
            }
            if c.idles_left > 0 && c.pending.is_none() {
                actions.push(Action::Idle { client: ci });
            }
            if c.ops_left == 0 || c.pending.is_some() || s.machine.is_blocked(conn) {
                continue;
            }
            for key in 0..self.cfg.keys {
                for &timeout_s in &self.cfg.acquire_timeouts_s {
                    for &lease_s in &self.cfg.leases_s {
                        actions.push(Action::Acquire {
                            client: ci,
                            key,
                            timeout_s,
                            lease_s,
                        });
                    }
                }
            }
            for token in 0..c.tokens.len() {
                actions.push(Action::Release { client: ci, token });
                if self.cfg.renew {
                    actions.push(Action::Renew { client: ci, token });
                }
            }
            if self.cfg.signals {
                for sub in 0..SUBSCRIPTIONS.len() {
                    if !c.subs.contains(&sub) {
                        actions.push(Action::Listen { client: ci, sub });
                    }
                }
                actions.push(Action::Signal { client: ci });
            }
            if self.cfg.two_phase {
                for key in 0..self.cfg.keys {
                    let belief = c.enqueued.iter().find(|(k, _)| *k == key).map(|(_, b)| b);
                    // A queued record always refuses a new `e`; skip the
                    // pointless request to keep the space small.
                    if !matches!(belief, Some(Belief::Queued { .. })) {
                        for &lease_s in &self.cfg.leases_s {
                            actions.push(Action::Enqueue {
                                client: ci,
                                key,
                                lease_s,
                            });
                        }
                    }
                    if belief.is_some() {
                        for &timeout_s in &self.cfg.wait_timeouts_s {
                            actions.push(Action::Wait {
                                client: ci,
                                key,
                                timeout_s,
                            });
                        }
                    }
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        s.ghost.step = StepFacts::default();
        let now = s.clock_ms;
        let mut sent = None;
        let mut closed_early = Vec::new();
        match &action {
            Action::Tick => {
                s.clock_ms += 1000;
                if !self.cfg.lazy_timers {
                    s.machine.advance(s.clock_ms);
                }
            }
            Action::Fire => {
                s.machine.advance(now);
            }
            Action::Drain => {
                s.drained = true;
                s.machine.start_drain(now);
            }
            Action::Drop { client } => {
                // Time first: whatever is due before the drop still reaches
                // the client (a grant at this very instant is legitimate).
                s.machine.advance(now);
                let trace = s.machine.take_trace();
                let closed = self.absorb(&mut s, trace, &mut None);
                assert!(closed.is_empty(), "advancing closed a connection");
                let c = &mut s.clients[*client];
                let conn = c.conn.expect("drop of a closed client");
                c.drops_left -= 1;
                // Everything it was waiting for dies with the connection.
                let mut dead: Vec<u64> = c.pending.take().map(|p| p.arrival).into_iter().collect();
                for (_, b) in c.enqueued.drain(..) {
                    if let Belief::Queued { arrival } = b {
                        dead.push(arrival);
                    }
                }
                if self.cfg.machine.auto_release_on_disconnect {
                    c.tokens.clear();
                }
                c.answered = None;
                c.subs.clear();
                // Gone: a reply to the old connection reaches nobody.
                c.conn = None;
                s.ghost.dead_conns.push(conn);
                s.ghost.dead_arrivals.extend(dead);
                s.machine.disconnect(now, conn);
                // What the disconnect handed off reaches the others before
                // the client's new connection authenticates.
                let trace = s.machine.take_trace();
                let closed = self.absorb(&mut s, trace, &mut None);
                assert!(closed.is_empty(), "disconnecting closed a connection");
                s.clients[*client].conn = Some(self.connect(&mut s.machine, now));
                s.conn_owner.push(*client);
            }
            Action::Cancel { client } => {
                // The `timeout` it answers (if the request was still queued)
                // reaches the client as the end of its pending request, and
                // the waiter joins the dead: no grant may reach it later. If
                // the grant came first, the client never learns of it (the
                // front discards it): its token is forgotten, and the
                // machine must release it.
                let c = &mut s.clients[*client];
                c.cancels_left -= 1;
                let conn = c.conn.expect("cancel on a closed client");
                if let Some(p) = &c.pending {
                    s.ghost.cancelled.push(p.arrival);
                }
                if let Some((_, token, arrival)) = c.answered.take() {
                    c.tokens.retain(|(_, t)| *t != token);
                    s.ghost.cancelled.push(arrival);
                }
                s.machine.cancel(now, conn);
            }
            Action::Idle { client } => {
                // Time first: what is due before the deadline still counts
                // (a lease that ended makes the connection own nothing).
                s.machine.advance(now);
                let trace = s.machine.take_trace();
                let closed = self.absorb(&mut s, trace, &mut None);
                assert!(closed.is_empty(), "advancing closed a connection");
                let c = &mut s.clients[*client];
                c.idles_left -= 1;
                c.answered = None;
                let conn = c.conn.expect("idle on a closed client");
                let owner = s.machine.owns_anything(conn);
                let out = s.machine.read_deadline(now, conn, false);
                let cut = out.iter().any(|o| matches!(o, Output::Close { .. }));
                if owner && cut {
                    violate(&mut s.ghost, OWNER_KEPT);
                }
                // The closing `error` answers no request: the client reads
                // it as the end of the connection, which the close is.
                let trace = s.machine.take_trace().into_iter().filter(
                    |e| !matches!(e, Event::Output(Output::Reply { conn: c, .. }) if *c == conn),
                );
                closed_early = self.absorb(&mut s, trace.collect(), &mut None);
            }
            Action::Intrude => {
                // Time first, so that the intruder's own outputs are all
                // there is in the trace afterwards.
                s.machine.advance(now);
                let trace = s.machine.take_trace();
                let closed = self.absorb(&mut s, trace, &mut None);
                assert!(closed.is_empty(), "advancing closed a connection");
                s.intruded += 1;
                let conn = s.machine.connect(now);
                s.conn_owner.push(INTRUDER);
                let out = s.machine.handle(
                    now,
                    conn,
                    Op::Auth {
                        token: b"wrong".to_vec(),
                    },
                );
                let pause_ms = self.cfg.machine.auth_failure_pause_ms;
                let expected = [
                    Output::Reply {
                        conn,
                        line: "error_auth".into(),
                    },
                    Output::Close {
                        conn,
                        why: Why::AuthFailed { pause_ms },
                    },
                ];
                if out != expected {
                    violate(&mut s.ghost, AUTH_FAILURE_CLOSES);
                }
                // Its outputs reach nobody; the driver closes it either way.
                s.machine.take_trace();
                s.machine.disconnect(now, conn);
            }
            request => {
                let (client, op) = self.op_for(&s, request);
                let c = &mut s.clients[client];
                c.ops_left -= 1;
                c.answered = None;
                let conn = c.conn.expect("request from a closed client");
                s.machine.handle(now, conn, op);
                sent = Some(Sent {
                    client,
                    action: action.clone(),
                    answered: false,
                    pushes: Vec::new(),
                });
            }
        }
        let trace = s.machine.take_trace();
        let mut closed = self.absorb(&mut s, trace, &mut sent);
        closed.extend(closed_early);
        if let Some(sent) = sent {
            if !sent.answered {
                self.became_blocked(&mut s, &sent);
            }
        }
        // The driver disconnects whatever the machine closed.
        for conn in closed {
            if let Some(c) = s.clients.iter_mut().find(|c| c.conn == Some(conn)) {
                c.conn = None;
                c.pending = None;
                c.enqueued.clear();
                c.subs.clear();
            }
            s.ghost.dead_conns.push(conn);
            s.machine.disconnect(s.clock_ms, conn);
            let trace = s.machine.take_trace();
            let more = self.absorb(&mut s, trace, &mut None);
            assert!(more.is_empty(), "disconnect closed a connection");
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(MUTUAL_EXCLUSION, |_, s: &State| {
                s.machine
                    .resources()
                    .iter()
                    .filter(|r| r.space == Space::Lock)
                    .all(|r| live_holders(r, s.clock_ms) <= 1)
            }),
            Property::always(SEMAPHORE_WITHIN_LIMIT, |_, s: &State| {
                s.machine
                    .resources()
                    .iter()
                    .filter(|r| r.space == Space::Sem)
                    .all(|r| live_holders(r, s.clock_ms) <= r.limit as usize)
            }),
            Property::always(FIFO, |_, s: &State| !s.ghost.violated.contains(&FIFO)),
            Property::always(NO_DEAD_GRANT, |_, s: &State| {
                !s.ghost.violated.contains(&NO_DEAD_GRANT)
            }),
            Property::always(RENEW_HONOURED, |_, s: &State| {
                !s.ghost.violated.contains(&RENEW_HONOURED)
            }),
            Property::always(FENCES_INCREASE, |_, s: &State| {
                !s.ghost.violated.contains(&FENCES_INCREASE)
            }),
            Property::always(NO_WAITER_HOLDER, |_, s: &State| {
                s.machine.resources().iter().all(|r| {
                    r.waiters
                        .iter()
                        .all(|w| r.holders.iter().all(|h| h.arrival != w.arrival))
                })
            }),
            // The client's view: a reply never reaches a client that is not
            // waiting for one (see `deliver`), and once the server's timers
            // have run, no client is still waiting past its own deadline.
            Property::always(ANSWERED_ONCE, |_, s: &State| {
                let caught_up = s.machine.next_deadline().is_none_or(|d| d > s.clock_ms);
                let overdue = s.clients.iter().any(|c| {
                    c.pending
                        .as_ref()
                        .is_some_and(|p| p.deadline_ms <= s.clock_ms)
                });
                let lost = caught_up && overdue;
                !lost && !s.ghost.violated.contains(&ANSWERED_ONCE)
            }),
            Property::always(SIGNAL_ONCE, |_, s: &State| {
                !s.ghost.violated.contains(&SIGNAL_ONCE)
            }),
            Property::always(OWNER_KEPT, |_, s: &State| {
                !s.ghost.violated.contains(&OWNER_KEPT)
            }),
            Property::always(AUTH_FAILURE_CLOSES, |_, s: &State| {
                !s.ghost.violated.contains(&AUTH_FAILURE_CLOSES)
            }),
            // A cancelled request is never left holding a slot, whether the
            // cancel or the grant came first.
            Property::always(CANCELLED_HOLDS_NOTHING, |_, s: &State| {
                s.machine.resources().iter().all(|r| {
                    r.holders
                        .iter()
                        .all(|h| !s.ghost.cancelled.contains(&h.arrival))
                })
            }),
            Property::sometimes(BY_RELEASE, |_, s: &State| s.ghost.step.handoff_by_release),
            Property::sometimes(BY_EXPIRY, |_, s: &State| s.ghost.step.handoff_by_expiry),
            Property::sometimes(BY_DISCONNECT, |_, s: &State| {
                s.ghost.step.handoff_by_disconnect
            }),
            Property::sometimes(QUEUED_GRANTED, |_, s: &State| s.ghost.step.queued_granted),
            Property::sometimes(SEM_FULL, |_, s: &State| {
                s.machine.resources().iter().any(|r| {
                    r.space == Space::Sem
                        && r.holders.len() as u64 == r.limit
                        && !r.waiters.is_empty()
                })
            }),
            Property::sometimes(CAP_REFUSES, |_, s: &State| s.ghost.step.refused_at_cap),
            Property::sometimes(SIGNAL_DELIVERED, |_, s: &State| {
                s.ghost.step.signal_delivered
            }),
            // Liveness, judged once the clock has stopped at the horizon and
            // the timers have caught up: by then every lease whose (expected)
            // deadline has passed must be gone...
            Property::eventually(RECLAIMED, |m: &LockModel, s: &State| {
                m.settled(s) && s.ghost.leases.iter().all(|&(_, d)| d > s.clock_ms)
            }),
            // ...and no queue may be stuck: no waiter past its deadline, no
            // head waiter in front of free capacity.
            Property::eventually(HEAD_SERVED, |m: &LockModel, s: &State| {
                m.settled(s)
                    && s.machine.resources().iter().all(|r| {
                        let stuck = (r.holders.len() as u64) < r.limit && !r.waiters.is_empty();
                        let overdue = r
                            .waiters
                            .iter()
                            .any(|w| w.deadline_ms.is_some_and(|d| d <= s.clock_ms));
                        !stuck && !overdue
                    })
            }),
        ]
    }
}

/// Holders whose lease has not passed at `now` (§1).
fn live_holders(r: &crate::machine::Resource, now: u64) -> usize {
    r.holders.iter().filter(|h| h.deadline_ms > now).count()
}

/// The fence in the first half of a token.
fn fence_of(token: &str) -> u64 {
    u64::from_str_radix(&token[..16], 16).expect("machine tokens are hex")
}

impl LockModel {
    /// Connects a client, authenticating it when the machine has a token.
    /// The handshake's own outputs are nobody's business but the client's.
    fn connect(&self, machine: &mut Machine, now: u64) -> u64 {
        let conn = machine.connect(now);
        if let Some(token) = &self.cfg.machine.auth_token {
            let out = machine.handle(
                now,
                conn,
                Op::Auth {
                    token: token.clone(),
                },
            );
            assert_eq!(
                out,
                [Output::Reply {
                    conn,
                    line: "ok".into()
                }],
                "a client's handshake"
            );
            machine.take_trace();
        }
        conn
    }

    /// The request an action sends, and the client sending it.
    fn op_for(&self, s: &State, action: &Action) -> (usize, Op) {
        let res = |key: usize| &self.resources[key];
        match *action {
            Action::Acquire {
                client,
                key,
                timeout_s,
                lease_s,
            } => {
                let (space, k, limit) = res(key).clone();
                let op = Op::Acquire {
                    space,
                    key: k,
                    timeout_s,
                    limit,
                    lease_s: Some(lease_s),
                };
                (client, op)
            }
            Action::Release { client, token } => {
                let (key, tok) = &s.clients[client].tokens[token];
                let (space, k, _) = res(*key).clone();
                let op = Op::Release {
                    space,
                    key: k,
                    token: tok.clone().into_bytes(),
                };
                (client, op)
            }
            Action::Renew { client, token } => {
                let (key, tok) = &s.clients[client].tokens[token];
                let (space, k, _) = res(*key).clone();
                let op = Op::Renew {
                    space,
                    key: k,
                    token: tok.clone().into_bytes(),
                    lease_s: None,
                };
                (client, op)
            }
            Action::Enqueue {
                client,
                key,
                lease_s,
            } => {
                let (space, k, limit) = res(key).clone();
                let op = Op::Enqueue {
                    space,
                    key: k,
                    limit,
                    lease_s: Some(lease_s),
                };
                (client, op)
            }
            Action::Wait {
                client,
                key,
                timeout_s,
            } => {
                let (space, k, _) = res(key).clone();
                let op = Op::Wait {
                    space,
                    key: k,
                    timeout_s,
                };
                (client, op)
            }
            Action::Listen { client, sub } => {
                let (pattern, group) = SUBSCRIPTIONS[sub];
                let op = Op::Listen {
                    pattern: pattern.as_bytes().to_vec(),
                    group: group.as_bytes().to_vec(),
                };
                (client, op)
            }
            Action::Signal { client } => {
                let op = Op::Signal {
                    channel: CHANNEL.as_bytes().to_vec(),
                    payload: b"p".to_vec(),
                };
                (client, op)
            }
            _ => unreachable!("not a request"),
        }
    }

    /// Feeds the trace of one machine call into the ghost and the clients,
    /// in order. Returns the connections the machine closed.
    fn absorb(&self, s: &mut State, trace: Vec<Event>, sent: &mut Option<Sent>) -> Vec<u64> {
        let mut closed = Vec::new();
        for e in trace {
            match e {
                Event::Grant {
                    space,
                    key,
                    fence,
                    conn,
                    arrival,
                    at_ms,
                    lease_s,
                    from_queue,
                    cause,
                } => {
                    let k = self.key_index(space, &key);
                    self.check_grant(s, k, fence, conn, arrival, at_ms);
                    let g = &mut s.ghost;
                    g.leases.push((fence, at_ms + lease_s * 1000));
                    if from_queue {
                        g.step.queued_granted = true;
                        if space == Space::Lock {
                            match cause {
                                Cause::Release => g.step.handoff_by_release = true,
                                Cause::Expiry => g.step.handoff_by_expiry = true,
                                Cause::Disconnect => g.step.handoff_by_disconnect = true,
                                Cause::Request | Cause::WaiterLeft | Cause::CeilingRaised => {}
                            }
                        }
                    }
                }
                Event::Expire { fence, at_ms, .. } => {
                    let g = &mut s.ghost;
                    if let Some(i) = g.leases.iter().position(|&(f, _)| f == fence) {
                        // "renewed lease honoured": no lease ends before its deadline.
                        if g.leases[i].1 > at_ms {
                            violate(g, RENEW_HONOURED);
                        }
                        g.leases.remove(i);
                    }
                }
                Event::Release { fence, .. } => {
                    s.ghost.leases.retain(|&(f, _)| f != fence);
                }
                Event::Output(Output::Close { conn, .. }) => closed.push(conn),
                // A push answers nothing (§12): the publisher's reply checks it.
                Event::Output(Output::Reply { conn, line }) if line.starts_with("sig ") => {
                    if let Some(x) = sent.as_mut() {
                        x.pushes.push(conn);
                    }
                }
                Event::Output(Output::Reply { conn, line }) => self.deliver(s, conn, &line, sent),
            }
        }
        closed
    }

    /// The history checks made at every grant.
    fn check_grant(&self, s: &mut State, k: usize, fence: u64, conn: u64, arrival: u64, at: u64) {
        let g = &mut s.ghost;
        // "fencing tokens increase": greater than every earlier fence.
        if fence <= g.max_fence {
            violate(g, FENCES_INCREASE);
        }
        g.max_fence = g.max_fence.max(fence);
        // "fifo grant order": on one key, requests are granted in arrival
        // order (an immediate grant only happens with an empty queue, so
        // it too is later than every earlier grant on the key).
        if arrival <= g.last_grant_arrival[k] {
            violate(g, FIFO);
        }
        g.last_grant_arrival[k] = g.last_grant_arrival[k].max(arrival);
        // "no grant to a dead waiter": not to a closed connection, not to a
        // waiter that was answered `timeout`/`error` or cancelled, and not to
        // a blocked request at or after its deadline.
        let past_deadline = s.clients.iter().any(|c| {
            c.pending
                .as_ref()
                .is_some_and(|p| p.arrival == arrival && at >= p.deadline_ms)
        });
        let g = &mut s.ghost;
        if g.dead_conns.contains(&conn) || g.dead_arrivals.contains(&arrival) || past_deadline {
            violate(g, NO_DEAD_GRANT);
        }
    }

    /// A reply reaches a client: it answers either the request the client
    /// just sent or the request it is blocked on.
    fn deliver(&self, s: &mut State, conn: u64, line: &str, sent: &mut Option<Sent>) {
        let Some(ci) = s.clients.iter().position(|c| c.conn == Some(conn)) else {
            // A reply to a connection that is gone is dropped by the driver.
            return;
        };
        let fresh = sent.as_mut().filter(|x| x.client == ci && !x.answered);
        if let Some(x) = fresh {
            x.answered = true;
            let (action, pushes) = (x.action.clone(), x.pushes.clone());
            if line == "error_max_waiters" {
                s.ghost.step.refused_at_cap = true;
            }
            if let (Action::Signal { .. }, Some(n)) = (&action, line.strip_prefix("ok ")) {
                self.check_signal(s, n, &pushes);
            }
            return self.answer(s, ci, &action, line);
        }
        let c = &mut s.clients[ci];
        let Some(p) = c.pending.take() else {
            // "answered exactly once": nothing was waiting for this reply.
            return violate(&mut s.ghost, ANSWERED_ONCE);
        };
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["ok", tok, _] => {
                c.tokens.push((p.key, tok.to_string()));
                if self.cfg.cancels_per_client > 0 {
                    c.answered = Some((p.key, tok.to_string(), p.arrival));
                }
            }
            // `timeout`, or `error` from draining: the waiter is dead.
            _ => s.ghost.dead_arrivals.push(p.arrival),
        }
    }

    /// "a signal reaches each listener once" (§12, with no push queue near
    /// full): each client with an ungrouped subscription gets exactly one
    /// push, the group `g` exactly one among its members, nobody else any,
    /// and `ok n` counts them.
    fn check_signal(&self, s: &mut State, n: &str, pushes: &[u64]) {
        let mut ok = true;
        // Pushes through the group: each member gets at most one.
        let mut group_pushes = 0;
        let mut group_members = 0;
        let mut ungrouped_listeners = 0;
        for c in &s.clients {
            let Some(conn) = c.conn else { continue };
            let ungrouped = c.subs.iter().any(|&i| SUBSCRIPTIONS[i].1.is_empty());
            let in_group = c.subs.iter().any(|&i| !SUBSCRIPTIONS[i].1.is_empty());
            let got = pushes.iter().filter(|&&p| p == conn).count();
            match got.checked_sub(usize::from(ungrouped)) {
                Some(through_group) if through_group <= usize::from(in_group) => {
                    group_pushes += through_group;
                }
                _ => ok = false,
            }
            ungrouped_listeners += usize::from(ungrouped);
            group_members += usize::from(in_group);
        }
        let expected = ungrouped_listeners + usize::from(group_members > 0);
        ok &= group_pushes == usize::from(group_members > 0);
        ok &= pushes.len() == expected && n == expected.to_string();
        if !ok {
            violate(&mut s.ghost, SIGNAL_ONCE);
        }
        if !pushes.is_empty() {
            s.ghost.step.signal_delivered = true;
        }
    }

    /// Interprets the direct reply to a request, as a client would.
    fn answer(&self, s: &mut State, ci: usize, action: &Action, line: &str) {
        let now = s.clock_ms;
        let words: Vec<&str> = line.split(' ').collect();
        let c = &mut s.clients[ci];
        match (action, words.as_slice()) {
            (Action::Acquire { key, .. }, ["ok", tok, _]) => c.tokens.push((*key, tok.to_string())),
            (Action::Release { token, .. }, _) => {
                // Either way the client is done with this token.
                let (key, tok) = c.tokens.remove(*token);
                if line == "ok" {
                    c.enqueued.retain(|(k, b)| {
                        !(*k == key && *b == Belief::Granted { token: tok.clone() })
                    });
                }
            }
            (Action::Renew { token, .. }, ["ok", l]) => {
                let fence = fence_of(&c.tokens[*token].1);
                let l: u64 = l.parse().expect("renew reply carries the lease");
                extend_lease(&mut s.ghost, fence, now, l);
            }
            (Action::Renew { token, .. }, _) => {
                c.tokens.remove(*token);
            }
            (Action::Enqueue { key, .. }, ["acquired", tok, _]) => {
                c.tokens.push((*key, tok.to_string()));
                c.enqueued.retain(|(k, _)| k != key);
                c.enqueued.push((
                    *key,
                    Belief::Granted {
                        token: tok.to_string(),
                    },
                ));
            }
            (Action::Listen { sub, .. }, ["ok"]) => c.subs.push(*sub),
            (Action::Enqueue { key, .. }, ["queued"]) => {
                let conn = c.conn.expect("open");
                let (space, k, _) = &self.resources[*key];
                let arrival = s
                    .machine
                    .records()
                    .iter()
                    .find_map(|r| match r.state {
                        RecordState::Queued { arrival }
                            if r.conn == conn && r.space == *space && r.key == *k =>
                        {
                            Some(arrival)
                        }
                        _ => None,
                    })
                    .expect("queued without a record");
                c.enqueued.retain(|(kk, _)| kk != key);
                c.enqueued.push((*key, Belief::Queued { arrival }));
            }
            (Action::Wait { key, .. }, _) => {
                // The record is consumed in every outcome (§5).
                let i = c
                    .enqueued
                    .iter()
                    .position(|(k, _)| k == key)
                    .expect("belief");
                let (_, belief) = c.enqueued.remove(i);
                match words.as_slice() {
                    ["ok", tok, l] => {
                        if !c.tokens.iter().any(|(_, t)| t == tok) {
                            c.tokens.push((*key, tok.to_string()));
                        }
                        let l: u64 = l.parse().expect("grant carries the lease");
                        extend_lease(&mut s.ghost, fence_of(tok), now, l);
                    }
                    ["timeout"] => {
                        if let Belief::Queued { arrival } = belief {
                            s.ghost.dead_arrivals.push(arrival);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The acting client got no reply: its request is queued and blocking.
    fn became_blocked(&self, s: &mut State, sent: &Sent) {
        let (key, timeout_s) = match sent.action {
            Action::Acquire { key, timeout_s, .. } => (key, timeout_s),
            Action::Wait { key, timeout_s, .. } => {
                let c = &mut s.clients[sent.client];
                c.enqueued.retain(|(k, _)| *k != key);
                (key, timeout_s)
            }
            ref other => panic!("{other:?} got no reply"),
        };
        let c = &s.clients[sent.client];
        let conn = c.conn.expect("open");
        let arrival = s
            .machine
            .resources()
            .iter()
            .flat_map(|r| r.waiters.iter())
            .find(|w| w.conn == conn && w.deadline_ms.is_some())
            .map(|w| w.arrival)
            .expect("no reply and no blocked waiter");
        s.clients[sent.client].pending = Some(Pending {
            key,
            arrival,
            deadline_ms: s.clock_ms + timeout_s * 1000,
        });
    }
}

impl Representative for State {
    /// Of the states that differ from this one by a permutation of the
    /// clients, the one with the smallest hash: the same for every member
    /// of the class, which is all stateright needs (it keeps exploring from
    /// the state itself and stores only the representative's fingerprint).
    fn representative(&self) -> Self {
        permutations(self.clients.len())
            .iter()
            .map(|perm| self.permuted(perm))
            .min_by_key(hash_of)
            .expect("at least one permutation")
    }
}

impl State {
    /// This state with client `perm[i]` in place `i`, its connections
    /// renamed to match (ids issued in the order of (new client index, old
    /// id)), and the histories that are sets listed in sorted order.
    fn permuted(&self, perm: &[usize]) -> State {
        let mut place = vec![0; perm.len()];
        for (new, &old) in perm.iter().enumerate() {
            place[old] = new;
        }
        let mut ids: Vec<(usize, u64)> = (1u64..)
            .zip(&self.conn_owner)
            .map(|(id, &owner)| (place.get(owner).copied().unwrap_or(INTRUDER), id))
            .collect();
        ids.sort_unstable();
        let mut new_id = vec![0; ids.len()];
        for (rank, &(_, old)) in (1u64..).zip(&ids) {
            new_id[(old - 1) as usize] = rank;
        }
        let rename = |c: u64| new_id[(c - 1) as usize];
        let clients = perm
            .iter()
            .map(|&old| {
                let mut c = self.clients[old].clone();
                c.conn = c.conn.map(rename);
                c.tokens.sort();
                c.enqueued.sort_by_key(|e| e.0);
                c.subs.sort_unstable();
                c
            })
            .collect();
        let mut ghost = self.ghost.clone();
        ghost.dead_conns = ghost.dead_conns.iter().map(|&c| rename(c)).collect();
        ghost.dead_conns.sort_unstable();
        ghost.dead_arrivals.sort_unstable();
        ghost.leases.sort_unstable();
        ghost.violated.sort_unstable();
        State {
            clock_ms: self.clock_ms,
            machine: self.machine.rename_conns(rename),
            clients,
            conn_owner: ids.iter().map(|&(owner, _)| owner).collect(),
            drained: self.drained,
            intruded: self.intruded,
            ghost,
        }
    }
}

/// Every permutation of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for shorter in permutations(n - 1) {
        for at in 0..n {
            let mut p = shorter.clone();
            p.insert(at, n - 1);
            all.push(p);
        }
    }
    all
}

fn hash_of<T: Hash>(value: &T) -> u64 {
    // A fixed-key hasher, so representatives are the same on every run.
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// A renew or `w` reset succeeded at `now` for `lease_s`: a live lease's
/// expected deadline moves. One already past its deadline must not come
/// back, so its expectation stays (and "expired lease is reclaimed" fails if
/// the machine keeps it).
fn extend_lease(g: &mut Ghost, fence: u64, now: u64, lease_s: u64) {
    if let Some(l) = g.leases.iter_mut().find(|l| l.0 == fence) {
        if now < l.1 {
            l.1 = now + lease_s * 1000;
        }
    }
}

fn violate(g: &mut Ghost, name: &'static str) {
    if !g.violated.contains(&name) {
        g.violated.push(name);
    }
}
