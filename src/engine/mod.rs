//! The engine: the only door to the core.
//!
//! Both fronts (the TCP line protocol in `src/tcp`, the HTTP API in
//! `src/http`) and the timer turn what they see into [`Input`] values and
//! hand them to one method, [`Door::apply`]. It is the only code that calls
//! the core (a test in `tests/spec_drift.rs` keeps it so), and it does,
//! under the one lock, everything that must follow every input:
//!
//! 1. read the clock, never earlier than the core's own time;
//! 2. apply the input to the core;
//! 3. top up the fence state file's ceiling when the headroom runs low
//!    (grants that waited for a fence come out here too);
//! 4. route the effects addressed to other connections to their
//!    mailboxes (in core order, because it happens under the lock);
//! 5. wake the timer task when the next deadline moved earlier.
//!
//! What is left for the caller is its own effects, in order, and an
//! [`Outcome`]: whether its request is now blocked in a queue, whether its
//! connection must close, or whether it was gone already. Every protocol
//! decision is the core's; a front keeps only bytes, sockets, timers and TLS.
//!
//! Inputs are values ([`Input`], [`Entry`]) so that the replicated mode can
//! log them before applying them and the simulator can replay them
//! (spec/cluster.md §3). Time comes from a [`Clock`], the fence file's
//! disk from a [`fence::Disk`]: the seams a simulator swaps.

mod clock;
pub mod fence;
mod input;
pub mod introspect;
pub mod mailbox;
pub mod timer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use event_listener::Event;

use crate::core::{ConnId, Core, CoreConfig, Effect, Owned, Time};
use crate::sync::{lock, Arc, Mutex, MutexGuard};

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use input::{Entry, Input, Transport};
use mailbox::{Delivery, Mailbox};

/// Cluster mode's side of the door (`crate::cluster::node`): the requests
/// that go through the replicated log, and what it must hear about the
/// connections that sent them (spec/cluster.md §3, §7). A single node has
/// none, and the door is exactly as without it.
pub trait Replicator: Send + Sync {
    /// An authenticated request of `conn`. `None`: not the replicator's
    /// (the local core answers it: `auth`, `ping`, and signals on the
    /// leader). `Some(Some(reply))`: answer this now (`error_not_leader`,
    /// `stats`). `Some(None)`: the answer comes later through `mailbox`.
    fn request(
        &self,
        conn: ConnId,
        mailbox: Option<&Arc<Mailbox>>,
        req: &crate::wire::Request,
    ) -> Option<Option<crate::wire::Reply>>;
    /// `conn` closed. `shutting_down`: this server is stopping, so the
    /// session is left to become an orphan (its client reclaims it from the
    /// next leader) rather than released.
    fn disconnect(&self, conn: ConnId, shutting_down: bool);
    /// Withdraw `conn`'s blocked request; `false` when it has none here.
    fn cancel(&self, conn: ConnId) -> bool;
    /// Whether `conn` has a session in the replicated state (it must not
    /// be closed as idle).
    fn keeps(&self, conn: ConnId) -> bool;
    /// `None` while this member serves as leader; otherwise the leader's
    /// client address, when known.
    fn leader_hint(&self) -> Option<Option<String>>;
    /// The `dflockd_raft_*` gauges for `/metrics`: (name, help, value).
    fn metrics(&self) -> Vec<(&'static str, &'static str, u64)>;
    /// A membership change from the admin routes (spec/cluster.md §7),
    /// answered with the voters once it is applied.
    fn change_voters(&self, change: VotersChange) -> AdminFuture;
    /// The dashboard's view of the cluster (`/v1/activity`'s `cluster`):
    /// this member's idea of the members, their roles, the leader and its
    /// own commit and applied index.
    fn view(&self) -> serde_json::Value;
    /// A linearizable no-op (`GET /v1/readindex`): answers once everything
    /// acknowledged before it is applied here.
    fn barrier(&self) -> AdminFuture;
    /// One slice of an introspection job on the replicated core as applied
    /// on this member ([`crate::core::introspect::Job::read`]: the core is
    /// not advanced, only the log changes it). Returns whether it is done;
    /// before the cluster's first leader started there is nothing to read.
    fn read_job(&self, job: &mut (dyn crate::core::introspect::Job + Send)) -> bool;
    /// The replicated core's counters as applied here, O(1); `None` before
    /// the cluster's first leader started.
    fn replicated_counters(&self) -> Option<introspect::Counters>;
    /// The views of `key` in the replicated core as applied here.
    fn replicated_key_views(
        &self,
        spaces: &[crate::wire::Space],
        key: &crate::wire::Key,
        max_waiters: usize,
    ) -> Vec<crate::core::introspect::KeyView>;
    /// What the state views are read from on this member: its role and the
    /// log index its replica has applied (spec/http.md §9).
    fn replica_label(&self) -> (&'static str, u64);
}

/// What the admin routes ask a cluster member to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VotersChange {
    /// Adds member `id` (as a learner first, then a voter once it caught
    /// up); every member learns its addresses.
    Add {
        id: u64,
        raft_addr: String,
        client_addr: String,
    },
    Remove(u64),
}

/// Why an admin request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminError {
    /// This member does not lead; the leader's client address, if known.
    NotLeader(Option<String>),
    /// The request does not fit the configuration (already a voter, a
    /// change in progress, the last voter).
    Conflict(String),
    /// No such voter.
    NotFound(String),
    /// A malformed id or address.
    Invalid(String),
    /// The change did not finish (the new member did not catch up, the
    /// outcome was lost with the leadership, the member stopped).
    Unavailable(String),
}

/// The answer to an admin request: the voters after it.
pub type AdminFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<u64>, AdminError>> + Send + 'static>,
>;

/// What one input meant for the connection that sent it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Its request waits in a queue: the answer comes later, through the
    /// connection's mailbox, from another input.
    pub blocked: bool,
    /// The connection is to be closed after the effects the caller got
    /// for it (nothing after the close is there).
    pub closed: bool,
    /// The connection had already gone: nothing was applied.
    pub gone: bool,
}

/// Where a connection's effects go when another connection's input
/// produces them. A connection without a mailbox (an HTTP publish, which
/// lives only under one acquisition of the lock) receives nothing there.
struct Route {
    mailbox: Option<Arc<Mailbox>>,
    transport: Transport,
}

/// The core and what must change with it, under one lock.
struct Inner {
    core: Core,
    routes: HashMap<ConnId, Route>,
    /// What the timer task is sleeping until.
    timer_at: Option<Time>,
    /// The fence state file, with `--fence-state-file`.
    fence: Option<fence::Keeper>,
    /// The effects of the input being applied, before routing (kept to
    /// reuse its allocation).
    scratch: Vec<Effect>,
    /// Live connections per [`Transport`].
    open: [usize; 2],
}

impl Inner {
    /// The timer's next wake-up: the core's next deadline, or an earlier
    /// retry of the fence state file.
    fn next_wake(&self) -> Option<Time> {
        let core = self.core.poll_timeout();
        match self.fence.as_ref().and_then(fence::Keeper::next_attempt) {
            Some(retry) => Some(core.map_or(retry, |c| c.min(retry))),
            None => core,
        }
    }
}

/// Counters the fronts keep about their sockets, read by `/metrics`. They
/// live here because both fronts and the metrics route share the engine
/// and nothing else.
#[derive(Debug, Default)]
pub struct Fronts {
    /// Open connections on the TCP port, TLS handshakes included.
    pub tcp_open: AtomicUsize,
    /// TCP connections admitted since start.
    pub tcp_accepted: AtomicU64,
}

/// The lock manager behind its door. Shared by every task of a server.
pub struct Engine {
    inner: Mutex<Inner>,
    clock: Box<dyn Clock>,
    /// Wakes the timer task when a nearer deadline appears.
    timer_event: Event,
    draining: AtomicBool,
    /// Cluster mode, once set ([`Engine::set_replicator`]).
    replicator: std::sync::OnceLock<std::sync::Arc<dyn Replicator>>,
    /// Fires when the drain begins.
    drain_event: Event,
    pub fronts: Fronts,
    /// Sees every entry the door applies, in order (the simulator's
    /// record of what the core was given).
    journal: Option<Journal>,
}

/// A callback given each [`Record`] (see [`Engine::with_journal`]).
pub type Journal = Box<dyn Fn(&Record) + Send + Sync>;

/// What the journal sees, in the order it happened under the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An entry, as about to be applied (a `stats` request at its gate, an
    /// introspection step as the `Tick` it starts with).
    Entry(Entry),
    /// The fence keeper installed a higher ceiling after the entry before
    /// it (`fence::Keeper::top_up`; it may grant what waited for a fence).
    Ceiling { at: Time, ceiling: u64 },
}

impl Engine {
    /// An engine over a fresh core. `fence` keeps the fence state file
    /// (`--fence-state-file`), whose startup ceiling is already in `cfg`.
    pub fn new(cfg: CoreConfig, fence: Option<fence::Keeper>, clock: Box<dyn Clock>) -> Engine {
        let core = Core::new(cfg, clock.now());
        Engine {
            inner: Mutex::new(Inner {
                core,
                routes: HashMap::new(),
                timer_at: None,
                fence,
                scratch: Vec::new(),
                open: [0; 2],
            }),
            clock,
            timer_event: Event::new(),
            draining: AtomicBool::new(false),
            replicator: std::sync::OnceLock::new(),
            drain_event: Event::new(),
            fronts: Fronts::default(),
            journal: None,
        }
    }

    /// Turns cluster mode on (once, before the fronts start).
    pub fn set_replicator(&self, r: std::sync::Arc<dyn Replicator>) {
        let _ = self.replicator.set(r);
    }

    /// Cluster mode's side, when on.
    pub fn replicator(&self) -> Option<&std::sync::Arc<dyn Replicator>> {
        self.replicator.get()
    }

    /// The same engine, calling `journal` with each entry it applies, under
    /// its lock, in the order applied: the connection's `Connect` (stamped
    /// with its id), every input that reached the core, and every raise of
    /// the fence ceiling.
    pub fn with_journal(mut self, journal: Journal) -> Engine {
        self.journal = Some(journal);
        self
    }

    /// Takes the lock: inputs applied through the returned door are applied
    /// back to back. Hold it only for non-blocking work (never across an
    /// await, a socket write or a mailbox wait).
    pub fn door(&self) -> Door<'_> {
        Door {
            engine: self,
            inner: lock(&self.inner),
        }
    }

    /// The engine's clock reading (the core may be ahead of it by a
    /// millisecond after a reading from another thread).
    pub fn now(&self) -> Time {
        self.clock.now()
    }

    /// Registers a connection and returns its id. Effects for it produced
    /// by other connections' inputs go to `mailbox`.
    pub fn connect(&self, transport: Transport, mailbox: Option<Arc<Mailbox>>) -> ConnId {
        self.door().connect(transport, mailbox)
    }

    /// Applies one input and returns the caller's own effects.
    pub fn apply(&self, conn: ConnId, input: Input) -> (Vec<Effect>, Outcome) {
        let mut out = Vec::new();
        let outcome = self.door().apply(conn, input, &mut out);
        (out, outcome)
    }

    /// Begins graceful shutdown (once): blocked requests answer `error`,
    /// later requests `error_draining`. Returns whether this call began it.
    pub fn drain(&self) -> bool {
        let mut out = Vec::new();
        let mut door = self.door();
        if self.is_draining() {
            return false;
        }
        door.apply(ConnId::ENGINE, Input::Drain, &mut out);
        true
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once the drain has begun (at once if it has).
    pub async fn drain_begun(&self) {
        loop {
            let l = self.drain_event.listen();
            if self.is_draining() {
                return;
            }
            l.await;
        }
    }

    /// Closes every connection at once, whatever it is doing (the end of a
    /// drain, or a server handle dropped).
    pub fn abort_all(&self) {
        let inner = lock(&self.inner);
        for r in inner.routes.values() {
            if let Some(mb) = &r.mailbox {
                mb.push(Delivery::Abort);
            }
        }
    }

    /// What `conn` owns right now (for a log line when it closes).
    pub fn owned(&self, conn: ConnId) -> Owned {
        lock(&self.inner).core.owned(conn)
    }

    /// Live connections and sessions.
    pub fn connection_count(&self) -> usize {
        lock(&self.inner).core.connection_count()
    }

    /// Requests blocked in a queue right now (the core says which are).
    pub fn blocked_requests(&self) -> usize {
        lock(&self.inner).core.blocked_requests()
    }

    /// Live connections that came through `transport`.
    pub fn connections_of(&self, transport: Transport) -> usize {
        lock(&self.inner).open[transport as usize]
    }

    /// Grants left under the fence ceiling.
    pub fn fence_headroom(&self) -> u64 {
        lock(&self.inner).core.fence_headroom()
    }

    /// The fence as `/ready` and `/metrics` report it; `None` without a
    /// fence state file.
    pub fn fence_status(&self) -> Option<fence::Status> {
        let inner = lock(&self.inner);
        let headroom = inner.core.fence_headroom();
        inner.fence.as_ref().map(|k| k.status(headroom))
    }
}

/// The engine's lock, held: see [`Engine::door`].
pub struct Door<'a> {
    engine: &'a Engine,
    inner: MutexGuard<'a, Inner>,
}

impl Door<'_> {
    /// The clock reading for the next input: never earlier than the core's
    /// own time, even if two threads' readings of the clock disagree.
    fn clock(&self) -> Time {
        self.engine.clock.now().max(self.inner.core.now())
    }

    /// Registers a connection (see [`Engine::connect`]).
    pub fn connect(&mut self, transport: Transport, mailbox: Option<Arc<Mailbox>>) -> ConnId {
        let at = self.clock();
        let mut fx = std::mem::take(&mut self.inner.scratch);
        let id = self.inner.core.connect(at, &mut fx);
        if let Some(j) = &self.engine.journal {
            j(&Record::Entry(Entry {
                at,
                conn: id,
                input: Input::Connect { transport },
            }));
        }
        self.inner.routes.insert(id, Route { mailbox, transport });
        self.inner.open[transport as usize] += 1;
        let mut out = Vec::new();
        self.finish(at, None, &mut fx, &mut out);
        self.inner.scratch = fx;
        id
    }

    /// Applies `input` for `conn` at the clock's current reading. The
    /// effects addressed to `conn` are appended to `out`, in order; all
    /// others are delivered to their connections' mailboxes.
    pub fn apply(&mut self, conn: ConnId, input: Input, out: &mut Vec<Effect>) -> Outcome {
        let at = self.clock();
        self.apply_at(Entry { at, conn, input }, out)
    }

    /// Applies a stamped entry (its time is clamped to the core's): what
    /// [`Door::apply`] does after reading the clock, and what a replica or
    /// the simulator calls with the stamp from its log.
    pub fn apply_at(&mut self, entry: Entry, out: &mut Vec<Effect>) -> Outcome {
        let Entry { at, conn, input } = entry;
        let at = at.max(self.inner.core.now());
        if input.has_conn() && !self.inner.routes.contains_key(&conn) {
            return Outcome {
                gone: true,
                ..Outcome::default()
            };
        }
        if let Some(outcome) = self.replicated(conn, &input, out) {
            return outcome;
        }
        // Cluster mode's inputs went to the log above; the journal
        // records what reaches this engine's own core.
        if let Some(j) = &self.engine.journal {
            j(&Record::Entry(Entry {
                at,
                conn,
                input: input.clone(),
            }));
        }
        let mut fx = std::mem::take(&mut self.inner.scratch);
        let core = &mut self.inner.core;
        let me = match input {
            Input::Connect { .. } => {
                // Connecting is `Door::connect`, which creates the route.
                unreachable!("Input::Connect goes through Door::connect")
            }
            Input::Request(req) => {
                core.handle(at, conn, req, &mut fx);
                Some(conn)
            }
            Input::Invalid(e) => {
                core.handle_invalid(at, conn, e.is_fatal(), &mut fx);
                Some(conn)
            }
            Input::ReadDeadline { partial } => {
                core.read_deadline(at, conn, partial, &mut fx);
                Some(conn)
            }
            Input::Cancel => {
                core.cancel(at, conn, &mut fx);
                Some(conn)
            }
            Input::Disconnect => {
                core.disconnect(at, conn, &mut fx);
                if let Some(r) = self.inner.routes.remove(&conn) {
                    self.inner.open[r.transport as usize] -= 1;
                }
                None
            }
            Input::PushesWritten(n) => {
                core.pushes_written(conn, n as usize);
                Some(conn)
            }
            Input::Tick => {
                core.handle_timeout(at, &mut fx);
                None
            }
            Input::Drain => {
                core.start_drain(at, &mut fx);
                self.engine.draining.store(true, Ordering::SeqCst);
                self.engine.drain_event.notify(usize::MAX);
                None
            }
        };
        let start = out.len();
        self.finish(at, me, &mut fx, out);
        self.inner.scratch = fx;
        let blocked = me.is_some_and(|c| self.inner.core.is_blocked(c));
        let closed = out[start..]
            .iter()
            .any(|e| matches!(e, Effect::Close { .. }));
        Outcome {
            blocked,
            closed,
            gone: false,
        }
    }

    /// Cluster mode: what the replicator takes instead of the local core.
    /// The local core keeps authentication, `ping` and signals.
    fn replicated(
        &mut self,
        conn: ConnId,
        input: &Input,
        out: &mut Vec<Effect>,
    ) -> Option<Outcome> {
        let rep = self.engine.replicator.get()?;
        match input {
            Input::Request(req)
                if self.inner.core.is_authed(conn) && !self.engine.is_draining() =>
            {
                let mailbox = self
                    .inner
                    .routes
                    .get(&conn)
                    .and_then(|r| r.mailbox.as_ref());
                match rep.request(conn, mailbox, req)? {
                    Some(reply) => {
                        out.push(Effect::Reply { conn, reply });
                        Some(Outcome::default())
                    }
                    None => Some(Outcome {
                        blocked: true,
                        ..Outcome::default()
                    }),
                }
            }
            Input::Disconnect => {
                rep.disconnect(conn, self.engine.is_draining());
                None
            }
            Input::Cancel => rep.cancel(conn).then(Outcome::default),
            Input::ReadDeadline { partial: false } => rep.keeps(conn).then(Outcome::default),
            _ => None,
        }
    }

    /// What follows every input: the fence top-up, routing, the timer.
    /// `fx` holds the input's effects and is left empty; `me`'s go to `out`.
    fn finish(
        &mut self,
        at: Time,
        me: Option<ConnId>,
        fx: &mut Vec<Effect>,
        out: &mut Vec<Effect>,
    ) {
        let inner = &mut *self.inner;
        if let Some(keeper) = inner.fence.as_mut() {
            let before = inner.core.config().fence_ceiling;
            keeper.top_up(&mut inner.core, at, fx);
            let ceiling = inner.core.config().fence_ceiling;
            if let Some(j) = self.engine.journal.as_ref().filter(|_| ceiling != before) {
                j(&Record::Ceiling { at, ceiling });
            }
        }
        mailbox::route(
            |c| inner.routes.get(&c).and_then(|r| r.mailbox.as_deref()),
            fx,
            me,
            out,
        );
        let next = inner.next_wake();
        let planted = crate::planted::is(crate::planted::Bug::DeadlineNotRearmed);
        if next.is_some() && (inner.timer_at.is_none() || next < inner.timer_at) && !planted {
            inner.timer_at = next;
            self.engine.timer_event.notify(1);
        }
    }

    /// Records that the timer task now sleeps until the next wake-up, and
    /// returns it.
    fn arm_timer(&mut self) -> Option<Time> {
        let next = self.inner.next_wake();
        self.inner.timer_at = next;
        next
    }

    /// What `conn` owns right now.
    pub fn owned(&self, conn: ConnId) -> Owned {
        self.inner.core.owned(conn)
    }

    /// Whether `conn`'s request waits in a queue.
    pub fn is_blocked(&self, conn: ConnId) -> bool {
        self.inner.core.is_blocked(conn)
    }

    /// Live connections and sessions.
    pub fn connection_count(&self) -> usize {
        self.inner.core.connection_count()
    }
}

#[cfg(test)]
mod tests;
