//! The reference lock manager: a slow, obviously-correct transition function
//! for `spec/semantics.md`. Every rule below cites the section it
//! implements. State is plain `Vec`s searched linearly; nothing is indexed,
//! cached or clever, so that the code can be checked against the prose by
//! reading it. `src/core` must give the same replies, faster.
//!
//! Contract: every input (`handle`, `disconnect`, `cancel`, `advance`,
//! `start_drain`, `raise_fence_ceiling`)
//! takes `now` in milliseconds and first *advances* to it (§8): everything
//! whose deadline is `<= now` is processed one item at a time, in
//! (deadline, kind, sequence) order, each as of its own deadline. Only then
//! is the input applied, as of `now`. Outputs are returned in the order
//! they happen; replies to one connection are in request order, but the
//! interleaving of replies to *different* connections within one call is
//! just this machine's order (grants made by a hand-off come before the
//! reply to the request that caused them).

use crate::stats::{self, StatsView};
use crate::token;
use crate::types::{Bug, Config, Op, Output, Space, Why};

mod driver;

/// One holder of a resource slot (§2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The token text, exactly as sent to the client (§6).
    pub token: String,
    /// The fence encoded in the first half of `token`.
    pub fence: u64,
    /// The connection the slot was granted to (released on its disconnect
    /// when auto-release is on, §9).
    pub conn: u64,
    /// Dead at every `now >= deadline_ms` (§1).
    pub deadline_ms: u64,
    /// The lease of the last grant, renew or `w` reset, in seconds.
    pub lease_s: u64,
    /// The arrival number of the request this slot was granted to. Not part
    /// of the protocol: it lets the checker match grants to requests.
    pub arrival: u64,
}

/// One queued request (§3.5, §5.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Waiter {
    /// Arrival number: orders waiter timeouts with equal deadlines (§8.1).
    pub arrival: u64,
    pub conn: u64,
    /// Lease for the grant, in seconds.
    pub lease_s: u64,
    /// `Some` exactly when a connection is blocked on this waiter (an
    /// `l`/`sl`, or a `w`/`sw` with `T > 0`); a two-phase waiter that has not
    /// been waited on yet has no deadline (§8.3).
    pub deadline_ms: Option<u64>,
}

/// A lock or semaphore (§2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Resource {
    pub space: Space,
    pub key: Vec<u8>,
    /// 1 for every lock; fixed by the request that created a semaphore.
    pub limit: u64,
    /// In grant (fence) order.
    pub holders: Vec<Holder>,
    /// FIFO: the head is `waiters[0]`.
    pub waiters: Vec<Waiter>,
    /// The last instant something happened to this resource (see `touch`).
    pub last_activity_ms: u64,
}

/// A connection's two-phase state for one resource (§5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// The `e` queued a waiter with this arrival number.
    Queued { arrival: u64 },
    /// The `e` was granted `token`, immediately or while queued; `lease_s`
    /// is the `L` of the `e`, used again by the `w` reset.
    Granted { token: String, lease_s: u64 },
}

/// At most one per (connection, resource) (§5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    pub conn: u64,
    pub space: Space,
    pub key: Vec<u8>,
    pub state: RecordState,
}

/// A live connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conn {
    pub id: u64,
    /// Passed the auth handshake, or no auth token is configured (§12).
    pub authed: bool,
    /// The machine asked the driver to close it; no further request may
    /// arrive, only its `disconnect`.
    pub closing: bool,
    /// Signal pushes sent and not yet reported written (§12).
    pub pushed: usize,
    /// Closed as a slow consumer (§12, D13): it receives nothing more.
    pub evicted: bool,
    /// The fence of the grant that answered its last blocked request, until
    /// its next request or read deadline (§9.1: what a cancel that lost the
    /// race releases).
    pub answered: Option<u64>,
}

/// One signal subscription (§12).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sub {
    pub conn: u64,
    pub pattern: Vec<u8>,
    /// Empty when ungrouped.
    pub group: Vec<u8>,
}

/// Why a grant happened. Only the checker looks at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The requester's own `l`/`sl`/`e`/`se` was granted on arrival (§3.2, §5.3).
    Request,
    /// Hand-off after a release (§4).
    Release,
    /// Hand-off after a lease expiry (§8.2).
    Expiry,
    /// Hand-off after a disconnect released a slot (§9).
    Disconnect,
    /// Hand-off after a waiter left the queue (§7).
    WaiterLeft,
    /// Hand-off after the fence ceiling was raised (§6).
    CeilingRaised,
}

/// What happened inside the machine, for the model checker. Recorded only
/// after [`Machine::enable_trace`]; drained with [`Machine::take_trace`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A slot was granted (§6).
    Grant {
        space: Space,
        key: Vec<u8>,
        fence: u64,
        conn: u64,
        arrival: u64,
        at_ms: u64,
        lease_s: u64,
        from_queue: bool,
        cause: Cause,
    },
    /// A holder was evicted at its deadline `at_ms` (§8.2).
    Expire {
        space: Space,
        key: Vec<u8>,
        fence: u64,
        at_ms: u64,
    },
    /// A holder was released by `r`/`sr` or by its connection's disconnect.
    Release {
        space: Space,
        key: Vec<u8>,
        fence: u64,
    },
    /// An output, in the order it was produced relative to the events above.
    Output(Output),
}

/// One due item of §8.1, in the order the fields are compared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    deadline_ms: u64,
    /// 0 = lease expiry, 1 = waiter timeout, 2 = GC (§8.1).
    kind: u8,
    /// The fence of a lease, the arrival number of a waiter, 0 for GC.
    seq: u64,
    /// What to do when it is due (the same as `kind`, except in the broken
    /// machine `Bug::TimeoutBeforeExpiry`).
    what: DueWhat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DueWhat {
    Expiry,
    Timeout,
    Gc,
}

/// The reference state of the lock manager.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Machine {
    cfg: Config,
    bug: Bug,
    /// The instant the machine has advanced to. Never goes back (§1).
    now_ms: u64,
    /// When the next GC runs: construction time + k × `gc_interval` (§8.4).
    next_gc_ms: Option<u64>,
    next_conn_id: u64,
    /// Live connections, in id order.
    conns: Vec<Conn>,
    /// Sorted by (key, space): the order `stats` lists them in.
    resources: Vec<Resource>,
    /// Sorted by (conn, key, space).
    records: Vec<Record>,
    /// The fence of the last grant (`fence_start` before the first) (§6).
    last_fence: u64,
    /// No grant issues a fence above it (§6); only ever raised.
    fence_ceiling: u64,
    /// Arrival numbers for queued or granted requests, from 1.
    next_arrival: u64,
    /// `start_drain` was called (§12).
    draining: bool,
    /// Signal subscriptions in the order they were made (§12).
    subs: Vec<Sub>,
    /// Round-robin counters of the queue groups that have members:
    /// (pattern, group, counter).
    rr: Vec<(Vec<u8>, Vec<u8>, u64)>,
    trace_enabled: bool,
    trace: Vec<Event>,
}

impl Machine {
    /// A machine with no connections and no resources, started at `now_ms`.
    pub fn new(cfg: Config, now_ms: u64) -> Self {
        Machine::with_bug(cfg, now_ms, Bug::None)
    }

    /// A deliberately broken machine (see [`Bug`]); only for showing that the
    /// model checker's properties can fail.
    pub fn with_bug(cfg: Config, now_ms: u64, bug: Bug) -> Self {
        let next_gc_ms = if cfg.gc_interval_s == 0 {
            None
        } else {
            Some(now_ms.saturating_add(secs(cfg.gc_interval_s)))
        };
        Machine {
            last_fence: cfg.fence_start,
            fence_ceiling: cfg.fence_ceiling,
            cfg,
            bug,
            now_ms,
            next_gc_ms,
            next_conn_id: 1,
            conns: Vec::new(),
            resources: Vec::new(),
            records: Vec::new(),
            next_arrival: 1,
            draining: false,
            subs: Vec::new(),
            rr: Vec::new(),
            trace_enabled: false,
            trace: Vec::new(),
        }
    }

    /// Registers a new connection; ids come from a counter starting at 1.
    ///
    /// Connecting does not advance time: it has no outputs to carry, and
    /// nothing about a new, empty connection depends on the time.
    pub fn connect(&mut self, now_ms: u64) -> u64 {
        assert!(now_ms >= self.now_ms, "time went back");
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        self.conns.push(Conn {
            id,
            // §10: without a configured token there is no handshake.
            authed: self.cfg.auth_token.is_none(),
            closing: false,
            pushed: 0,
            evicted: false,
            answered: None,
        });
        id
    }

    /// Applies one request from `conn`, as of `now_ms`.
    ///
    /// If no reply to `conn` is among the outputs, the request is blocked
    /// (a queued `l`/`sl`/`w`/`sw`) and its reply comes from a later input.
    ///
    /// Panics if `conn` is unknown, closing, or blocked: the driver delivers
    /// one request at a time and nothing after a `Close`.
    pub fn handle(&mut self, now_ms: u64, conn: u64, op: Op) -> Vec<Output> {
        let mut out = Vec::new();
        let renew_first = self.bug == Bug::RenewResurrectsExpired && matches!(op, Op::Renew { .. });
        if !renew_first && self.bug != Bug::HandleSkipsAdvance {
            self.advance_to(now_ms, &mut out);
        }
        let c = self
            .conn_index(conn)
            .expect("request from an unknown connection");
        assert!(!self.conns[c].closing, "request after Close");
        assert!(!self.is_blocked(conn), "request from a blocked connection");
        // §9.1: a grant is remembered only until the connection's next input.
        self.conns[c].answered = None;

        // §10: once draining, every request is refused and the connection closed.
        if self.draining {
            self.reply(&mut out, conn, "error_draining");
            self.close(&mut out, conn, Why::Draining);
            return out;
        }
        // §10: with an auth token, the first request must be a matching `auth`.
        if !self.conns[c].authed {
            let ok = match (&op, &self.cfg.auth_token) {
                (Op::Auth { token }, Some(expected)) => token.trim_ascii() == expected.as_slice(),
                _ => false,
            };
            if ok {
                self.conns[c].authed = true;
                self.reply(&mut out, conn, "ok");
            } else {
                self.reply(&mut out, conn, "error_auth");
                if self.bug != Bug::AuthFailureStaysOpen {
                    let pause_ms = self.cfg.auth_failure_pause_ms;
                    self.close(&mut out, conn, Why::AuthFailed { pause_ms });
                }
            }
            return out;
        }

        match op {
            Op::Acquire {
                space,
                key,
                timeout_s,
                limit,
                lease_s,
            } => self.acquire(
                now_ms, conn, space, key, timeout_s, limit, lease_s, &mut out,
            ),
            Op::Release { space, key, token } => {
                self.release(now_ms, conn, space, &key, &token, &mut out)
            }
            Op::Renew {
                space,
                key,
                token,
                lease_s,
            } => self.renew(now_ms, conn, space, &key, &token, lease_s, &mut out),
            Op::Enqueue {
                space,
                key,
                limit,
                lease_s,
            } => self.enqueue(now_ms, conn, space, key, limit, lease_s, &mut out),
            Op::Wait {
                space,
                key,
                timeout_s,
            } => self.wait(now_ms, conn, space, &key, timeout_s, &mut out),
            Op::Stats => {
                let json = stats::to_json(&self.view(now_ms));
                self.reply(&mut out, conn, &format!("ok {json}"));
            }
            // §10: `auth` after the handshake, or without a configured token.
            Op::Auth { .. } => self.reply(&mut out, conn, "error"),
            Op::Ping => self.reply(&mut out, conn, "ok"),
            Op::Listen { pattern, group } => self.listen(conn, pattern, group, &mut out),
            Op::Unlisten { pattern, group } => {
                // §12: `ok` whether or not something was removed.
                self.unsubscribe(|s| s.conn == conn && s.pattern == pattern && s.group == group);
                self.reply(&mut out, conn, "ok");
            }
            Op::Signal { channel, payload } => self.signal(conn, &channel, &payload, &mut out),
            // D1: a malformed request answers `error`; an overlong line also closes.
            Op::Invalid { fatal } => {
                self.reply(&mut out, conn, "error");
                if fatal {
                    self.close(&mut out, conn, Why::Overlong);
                }
            }
        }
        if renew_first {
            self.advance_to(now_ms, &mut out);
        }
        self.check_invariants();
        out
    }

    /// `conn` went away (EOF, error, or closed by the driver) (§9).
    /// Unknown connections are ignored.
    pub fn disconnect(&mut self, now_ms: u64, conn: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance_to(now_ms, &mut out);
        let Some(c) = self.conn_index(conn) else {
            return out;
        };
        self.conns.remove(c);

        // §9: its waiters are removed; a blocked request gets no reply.
        if self.bug != Bug::DisconnectKeepsWaiters {
            let mut touched = Vec::new();
            for ri in 0..self.resources.len() {
                let before = self.resources[ri].waiters.len();
                self.resources[ri].waiters.retain(|w| w.conn != conn);
                if self.resources[ri].waiters.len() != before {
                    self.touch(ri, now_ms);
                    touched.push((self.resources[ri].space, self.resources[ri].key.clone()));
                }
            }
            // §7: a waiter leaving may let the queue move (only when the
            // fence ceiling stopped it, but the rule is applied uniformly).
            for (space, key) in touched {
                let ri = self.find(space, &key).expect("resource vanished");
                self.hand_off(ri, now_ms, Cause::WaiterLeft, &mut out);
            }
        }

        // §9: its two-phase records are removed.
        self.records.retain(|r| r.conn != conn);
        // §9, §12: and its subscriptions.
        self.unsubscribe(|s| s.conn == conn);

        // §9, D6: with auto-release, each held slot is released in token order.
        if self.cfg.auto_release_on_disconnect {
            let mut held: Vec<(u64, Space, Vec<u8>)> = Vec::new();
            for r in &self.resources {
                for h in &r.holders {
                    if h.conn == conn {
                        held.push((h.fence, r.space, r.key.clone()));
                    }
                }
            }
            held.sort();
            if self.bug == Bug::DisconnectReleasesReversed {
                held.reverse();
            }
            for (fence, space, key) in held {
                let ri = self.find(space, &key).expect("resource vanished");
                let hi = self.resources[ri]
                    .holders
                    .iter()
                    .position(|h| h.fence == fence)
                    .expect("holder vanished");
                self.resources[ri].holders.remove(hi);
                self.touch(ri, now_ms);
                self.event(Event::Release { space, key, fence });
                self.hand_off(ri, now_ms, Cause::Disconnect, &mut out);
            }
        }
        self.check_invariants();
        out
    }

    /// §9.1: the driver cancels `conn`'s blocked request, as one input
    /// whichever came first, the cancel or the grant: a request still
    /// blocked ends as its waiter timing out at `now_ms` would; a grant that
    /// answered it (with nothing from `conn` since) is released. Nothing
    /// happens otherwise, or when `conn` is unknown.
    pub fn cancel(&mut self, now_ms: u64, conn: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance_to(now_ms, &mut out);
        let answered = self
            .conn_index(conn)
            .and_then(|c| self.conns[c].answered.take());
        let blocked = self.resources.iter().find_map(|r| {
            r.waiters
                .iter()
                .find(|w| w.conn == conn && w.deadline_ms.is_some())
                .map(|w| w.arrival)
        });
        if let Some(arrival) = blocked {
            if self.bug == Bug::CancelKeepsWaiter {
                // Broken: answer, but leave the waiter queued (and undue).
                let (ri, wi) = self.locate_waiter(arrival).expect("blocked waiter");
                self.resources[ri].waiters[wi].deadline_ms = None;
                self.reply(&mut out, conn, "timeout");
            } else {
                self.time_out(now_ms, arrival, &mut out);
            }
        } else if let Some(fence) = answered {
            if self.bug != Bug::CancelIgnoresGrant {
                self.release_answered(now_ms, conn, fence, &mut out);
            }
        }
        self.check_invariants();
        out
    }

    /// Processes everything due at or before `now_ms` (`handle_timeout`).
    pub fn advance(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance_to(now_ms, &mut out);
        self.check_invariants();
        out
    }

    /// §6: the driver raises the fence ceiling to `ceiling` (a lower value
    /// changes nothing). Then every resource with free capacity and a
    /// waiter (only a fenced-out server has such resources) hands off, one
    /// after another in the arrival order of each one's oldest waiter,
    /// until the fences run out again.
    pub fn raise_fence_ceiling(&mut self, now_ms: u64, ceiling: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance_to(now_ms, &mut out);
        self.fence_ceiling = self.fence_ceiling.max(ceiling);
        // After advancing, every waiter is live: its oldest is its head.
        let mut stopped: Vec<(u64, Space, Vec<u8>)> = self
            .resources
            .iter()
            .filter(|r| self.has_room(r) && !r.waiters.is_empty())
            .map(|r| (r.waiters[0].arrival, r.space, r.key.clone()))
            .collect();
        if self.bug == Bug::RaiseInKeyOrder {
            stopped.sort_by(|a, b| (&a.2, a.1).cmp(&(&b.2, b.1)));
        } else {
            stopped.sort();
        }
        for (_, space, key) in stopped {
            let ri = self.find(space, &key).expect("resource vanished");
            self.hand_off(ri, now_ms, Cause::CeilingRaised, &mut out);
        }
        self.check_invariants();
        out
    }

    /// How many more grants fit under the fence ceiling (§6).
    pub fn fence_headroom(&self) -> u64 {
        if self.bug == Bug::HeadroomZero {
            return 0;
        }
        self.fence_ceiling.saturating_sub(self.last_fence)
    }

    /// The earliest deadline of anything pending: a lease, a blocked
    /// waiter, or the next GC run. `advance` at that instant has work to do
    /// (GC runs on schedule even when it finds nothing to collect).
    pub fn next_deadline(&self) -> Option<u64> {
        self.due_items().into_iter().min().map(|d| d.deadline_ms)
    }

    /// Starts draining (§12): every blocked request answers `error` and
    /// leaves its queue; every later request answers `error_draining` and
    /// closes its connection.
    pub fn start_drain(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance_to(now_ms, &mut out);
        self.draining = true;
        // Blocked waiters, answered in arrival order.
        let mut blocked: Vec<(u64, Space, Vec<u8>, u64)> = Vec::new();
        for r in &self.resources {
            for w in &r.waiters {
                if w.deadline_ms.is_some() {
                    blocked.push((w.arrival, r.space, r.key.clone(), w.conn));
                }
            }
        }
        blocked.sort();
        for (arrival, space, key, conn) in &blocked {
            let ri = self.find(*space, key).expect("resource vanished");
            self.resources[ri].waiters.retain(|w| w.arrival != *arrival);
            self.touch(ri, now_ms);
            self.reply(&mut out, *conn, "error");
        }
        // §7, uniformly: a waiter left.
        for (_, space, key, _) in blocked {
            let ri = self.find(space, &key).expect("resource vanished");
            self.hand_off(ri, now_ms, Cause::WaiterLeft, &mut out);
        }
        self.check_invariants();
        out
    }

    /// What `stats` would report at `now_ms` (the machine is not changed:
    /// a copy is advanced to `now_ms` first).
    pub fn stats_view(&self, now_ms: u64) -> StatsView {
        let mut copy = self.clone();
        copy.trace_enabled = false;
        copy.advance_to(now_ms, &mut Vec::new());
        copy.view(now_ms)
    }

    // ----- Introspection (read-only; for the checker and tests) -----

    /// Whether `conn` has a blocked request (a waiter with a deadline).
    pub fn is_blocked(&self, conn: u64) -> bool {
        self.resources.iter().any(|r| {
            r.waiters
                .iter()
                .any(|w| w.conn == conn && w.deadline_ms.is_some())
        })
    }

    /// The resources, sorted by (key, space).
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// The two-phase records, sorted by (connection, key, space).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The live connections, in id order.
    pub fn conns(&self) -> &[Conn] {
        &self.conns
    }

    /// The instant the machine has advanced to.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The fence of the last grant.
    pub fn last_fence(&self) -> u64 {
        self.last_fence
    }

    /// The same state with every connection id `c` replaced by `rename(c)`,
    /// a bijection on the ids issued so far, and re-sorted where the order
    /// is by id. For the model checker's symmetry reduction: the rules use
    /// connection ids only to tell connections apart (their order decides
    /// nothing a client can see, except the ids `stats` shows), so the
    /// renamed machine behaves the same, renamed.
    pub fn rename_conns(&self, rename: impl Fn(u64) -> u64) -> Machine {
        let mut m = self.clone();
        for c in &mut m.conns {
            c.id = rename(c.id);
        }
        m.conns.sort_by_key(|c| c.id);
        for r in &mut m.resources {
            for h in &mut r.holders {
                h.conn = rename(h.conn);
            }
            for w in &mut r.waiters {
                w.conn = rename(w.conn);
            }
        }
        for rec in &mut m.records {
            rec.conn = rename(rec.conn);
        }
        m.records
            .sort_by(|a, b| (a.conn, &a.key, a.space).cmp(&(b.conn, &b.key, b.space)));
        for sub in &mut m.subs {
            sub.conn = rename(sub.conn);
        }
        m
    }

    /// Starts recording [`Event`]s.
    pub fn enable_trace(&mut self) {
        self.trace_enabled = true;
    }

    /// The events recorded since the last call.
    pub fn take_trace(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.trace)
    }

    /// Panics unless the state is one the rules can produce (STYLE 11: a
    /// lock server stops rather than double-grants). Checked after every
    /// input, except in deliberately broken machines, so the model checker
    /// also verifies these on every state it visits.
    fn check_invariants(&self) {
        if self.bug != Bug::None {
            return;
        }
        let sorted = |a: &Resource, b: &Resource| (&a.key, a.space) < (&b.key, b.space);
        assert!(self.resources.windows(2).all(|w| sorted(&w[0], &w[1])));
        assert!(self.conns.windows(2).all(|w| w[0].id < w[1].id));
        for r in &self.resources {
            assert!(r.limit >= 1);
            if r.space == Space::Lock {
                assert_eq!(r.limit, 1, "a lock's limit is 1");
            }
            assert!(r.holders.len() as u64 <= r.limit, "over-granted {r:?}");
            assert!(
                r.holders.windows(2).all(|w| w[0].fence < w[1].fence),
                "holders in grant order"
            );
            for h in &r.holders {
                assert!(h.fence <= self.last_fence);
                assert!(h.deadline_ms > self.now_ms, "dead holder not evicted");
                assert!(!r.waiters.iter().any(|w| w.arrival == h.arrival));
            }
            // §7: a queue never waits in front of free capacity (unless no
            // fence is left to grant with).
            if (r.holders.len() as u64) < r.limit && self.fence_available() {
                assert!(r.waiters.is_empty(), "hand-off incomplete {r:?}");
            }
            for w in &r.waiters {
                assert!(w.deadline_ms.is_none_or(|d| d > self.now_ms));
                // A waiter without a deadline is exactly a queued record.
                let queued = self.records.iter().any(|rec| {
                    rec.conn == w.conn
                        && rec.space == r.space
                        && rec.key == r.key
                        && rec.state == (RecordState::Queued { arrival: w.arrival })
                });
                assert_eq!(queued, w.deadline_ms.is_none(), "record vs waiter {w:?}");
                assert!(
                    self.conn_index(w.conn).is_some(),
                    "waiter of a gone connection"
                );
            }
        }
        for rec in &self.records {
            assert!(
                self.conn_index(rec.conn).is_some(),
                "record of a gone connection"
            );
            let r = self
                .find(rec.space, &rec.key)
                .expect("record without resource");
            if let RecordState::Queued { arrival } = rec.state {
                let w = self.resources[r]
                    .waiters
                    .iter()
                    .find(|w| w.arrival == arrival);
                assert!(
                    w.is_some_and(|w| w.conn == rec.conn),
                    "queued record without waiter"
                );
            }
        }
        assert!(self.resources.len() <= self.cfg.max_locks);
        assert!(
            self.last_fence <= self.fence_ceiling || self.last_fence == self.cfg.fence_start,
            "a fence above the ceiling"
        );
    }

    // ----- Requests -----

    /// §3: `l` / `sl`.
    #[allow(clippy::too_many_arguments)]
    fn acquire(
        &mut self,
        now: u64,
        conn: u64,
        space: Space,
        key: Vec<u8>,
        timeout_s: u64,
        limit: u64,
        lease_s: Option<u64>,
        out: &mut Vec<Output>,
    ) {
        let lease_s = lease_s.unwrap_or(self.cfg.default_lease_s);
        // §3.1: get or create the resource.
        let ri = match self.get_or_create(now, space, key, limit) {
            Ok(ri) => ri,
            Err(status) => return self.reply(out, conn, status),
        };
        self.touch(ri, now);
        let r = &self.resources[ri];
        if self.has_room(r) && r.waiters.is_empty() && self.fence_available() {
            // §3.2: free capacity, nobody queued and a fence left to issue
            // (§6): grant now. Without a fence, continue as if busy.
            let arrival = self.take_arrival();
            let token = self.grant(ri, conn, lease_s, arrival, now, false, Cause::Request);
            self.reply(out, conn, &format!("ok {token} {lease_s}"));
        } else if self.queue_full(ri) {
            // §3.3: the queue is at its cap, even for T = 0.
            self.reply(out, conn, "error_max_waiters");
        } else if timeout_s == 0 {
            // §3.4: try once.
            self.reply(out, conn, "timeout");
        } else {
            // §3.5: queue and block until grant or deadline.
            let arrival = self.take_arrival();
            self.resources[ri].waiters.push(Waiter {
                arrival,
                conn,
                lease_s,
                deadline_ms: Some(now.saturating_add(secs(timeout_s))),
            });
        }
    }

    /// §4: `r` / `sr`. Bearer: any connection may release any holder.
    fn release(
        &mut self,
        now: u64,
        conn: u64,
        space: Space,
        key: &[u8],
        token: &[u8],
        out: &mut Vec<Output>,
    ) {
        let Some((ri, hi)) = self.find_holder(space, key, token) else {
            // Unknown key or token: no activity bump (§4).
            return self.reply(out, conn, "error");
        };
        let holder = self.resources[ri].holders.remove(hi);
        // §4: drop the holder connection's record if it names this token.
        self.records.retain(|rec| {
            !(rec.conn == holder.conn
                && rec.space == space
                && rec.key == key
                && matches!(&rec.state, RecordState::Granted { token, .. } if *token == holder.token))
        });
        self.touch(ri, now);
        self.event(Event::Release {
            space,
            key: key.to_vec(),
            fence: holder.fence,
        });
        // §7: hand the capacity to the queue.
        self.hand_off(ri, now, Cause::Release, out);
        self.reply(out, conn, "ok");
    }

    /// §4: `n` / `sn`. After advancing, every holder is live, so an expired
    /// lease is already gone and renew can never resurrect it.
    #[allow(clippy::too_many_arguments)]
    fn renew(
        &mut self,
        now: u64,
        conn: u64,
        space: Space,
        key: &[u8],
        token: &[u8],
        lease_s: Option<u64>,
        out: &mut Vec<Output>,
    ) {
        let lease_s = lease_s.unwrap_or(self.cfg.default_lease_s);
        let Some((ri, hi)) = self.find_holder(space, key, token) else {
            return self.reply(out, conn, "error");
        };
        let h = &mut self.resources[ri].holders[hi];
        if self.bug != Bug::RenewNoExtend {
            h.deadline_ms = now.saturating_add(secs(lease_s));
        }
        h.lease_s = lease_s;
        self.touch(ri, now);
        self.reply(out, conn, &format!("ok {lease_s}"));
    }

    /// §5: `e` / `se`.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        now: u64,
        conn: u64,
        space: Space,
        key: Vec<u8>,
        limit: u64,
        lease_s: Option<u64>,
        out: &mut Vec<Output>,
    ) {
        let lease_s = lease_s.unwrap_or(self.cfg.default_lease_s);
        // §5.1: an existing record blocks a new `e`, unless it is a granted
        // record whose holder is gone: that one is discarded (D18).
        if let Some(rec) = self.record_index(conn, space, &key) {
            let blocking = match &self.records[rec].state {
                RecordState::Queued { .. } => true,
                RecordState::Granted { token, .. } => {
                    self.find_holder(space, &key, token.as_bytes()).is_some()
                }
            };
            if blocking {
                return self.reply(out, conn, "error_already_enqueued");
            }
            self.records.remove(rec);
        }
        // §5.2: get or create the resource.
        let ri = match self.get_or_create(now, space, key.clone(), limit) {
            Ok(ri) => ri,
            Err(status) => return self.reply(out, conn, status),
        };
        self.touch(ri, now);
        let r = &self.resources[ri];
        if self.has_room(r) && r.waiters.is_empty() && self.fence_available() {
            // §5.3: immediate grant (a fence left to issue, §6); the record
            // remembers the token. Without a fence, continue as if busy.
            let arrival = self.take_arrival();
            let token = self.grant(ri, conn, lease_s, arrival, now, false, Cause::Request);
            self.add_record(Record {
                conn,
                space,
                key,
                state: RecordState::Granted {
                    token: token.clone(),
                    lease_s,
                },
            });
            self.reply(out, conn, &format!("acquired {token} {lease_s}"));
        } else if self.queue_full(ri) {
            // §5.4
            self.reply(out, conn, "error_max_waiters");
        } else {
            // §5.5: a waiter with no deadline; the connection does not block.
            let arrival = self.take_arrival();
            self.resources[ri].waiters.push(Waiter {
                arrival,
                conn,
                lease_s,
                deadline_ms: None,
            });
            self.add_record(Record {
                conn,
                space,
                key,
                state: RecordState::Queued { arrival },
            });
            self.reply(out, conn, "queued");
        }
    }

    /// §5: `w` / `sw`. The record is consumed in every outcome.
    fn wait(
        &mut self,
        now: u64,
        conn: u64,
        space: Space,
        key: &[u8],
        timeout_s: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(rec) = self.record_index(conn, space, key) else {
            return self.reply(out, conn, "error_not_enqueued");
        };
        let record = self.records.remove(rec);
        match record.state {
            RecordState::Granted { token, lease_s } => {
                match self.find_holder(space, key, token.as_bytes()) {
                    Some((ri, hi)) => {
                        // Still held: the lease restarts now (§5, `w` on a granted record).
                        self.resources[ri].holders[hi].deadline_ms =
                            now.saturating_add(secs(lease_s));
                        self.resources[ri].holders[hi].lease_s = lease_s;
                        self.touch(ri, now);
                        self.reply(out, conn, &format!("ok {token} {lease_s}"));
                    }
                    // Expired or released meanwhile (D18).
                    None => self.reply(out, conn, "error_lease_expired"),
                }
            }
            RecordState::Queued { arrival } => {
                let ri = self
                    .find(space, key)
                    .expect("queued record without resource");
                let wi = self.resources[ri]
                    .waiters
                    .iter()
                    .position(|w| w.arrival == arrival)
                    .expect("queued record without waiter");
                if timeout_s == 0 {
                    // A poll that finds it still queued: the place is lost.
                    self.resources[ri].waiters.remove(wi);
                    self.touch(ri, now);
                    self.reply(out, conn, "timeout");
                    self.hand_off(ri, now, Cause::WaiterLeft, out);
                } else {
                    // Block as in §3.5; the grant answers `ok TOK L`.
                    self.resources[ri].waiters[wi].deadline_ms =
                        Some(now.saturating_add(secs(timeout_s)));
                    self.touch(ri, now);
                }
            }
        }
    }

    // ----- Time (§8) -----

    /// Every item that could become due: leases, blocked waiters, GC.
    fn due_items(&self) -> Vec<Due> {
        let (lease_kind, waiter_kind) = if self.bug == Bug::TimeoutBeforeExpiry {
            (1, 0)
        } else {
            (0, 1)
        };
        let mut items = Vec::new();
        for r in &self.resources {
            if self.bug != Bug::LeaseNeverExpires {
                for h in &r.holders {
                    items.push(Due {
                        deadline_ms: h.deadline_ms,
                        kind: lease_kind,
                        seq: h.fence,
                        what: DueWhat::Expiry,
                    });
                }
            }
            for w in &r.waiters {
                if let Some(d) = w.deadline_ms {
                    items.push(Due {
                        deadline_ms: d,
                        kind: waiter_kind,
                        seq: w.arrival,
                        what: DueWhat::Timeout,
                    });
                }
            }
        }
        if let Some(d) = self.next_gc_ms {
            items.push(Due {
                deadline_ms: d,
                kind: 2,
                seq: 0,
                what: DueWhat::Gc,
            });
        }
        items
    }

    /// §8: process everything due at or before `now`, earliest first, each
    /// as of its own deadline; then stand at `now`.
    fn advance_to(&mut self, now: u64, out: &mut Vec<Output>) {
        assert!(now >= self.now_ms, "time went back");
        while let Some(item) = self
            .due_items()
            .into_iter()
            .filter(|d| d.deadline_ms <= now)
            .min()
        {
            let d = item.deadline_ms;
            // Items are due no earlier than where we stand (everything
            // earlier was processed by a previous advance).
            self.now_ms = self.now_ms.max(d);
            match item.what {
                DueWhat::Expiry => self.expire(d, item.seq, out),
                DueWhat::Timeout => self.time_out(d, item.seq, out),
                DueWhat::Gc => self.collect_garbage(d),
            }
        }
        self.now_ms = now;
    }

    /// §8.2: the lease with fence `fence` expires at `d`.
    fn expire(&mut self, d: u64, fence: u64, out: &mut Vec<Output>) {
        let (ri, hi) = self.locate_holder(fence).expect("due lease without holder");
        let h = self.resources[ri].holders.remove(hi);
        // The two-phase record naming this token survives (D18).
        self.touch(ri, d);
        let (space, key) = (self.resources[ri].space, self.resources[ri].key.clone());
        self.event(Event::Expire {
            space,
            key,
            fence: h.fence,
            at_ms: d,
        });
        if self.bug != Bug::NoHandoffOnExpiry {
            // A waiter alive at `d` is granted, with a lease from `d`.
            self.hand_off(ri, d, Cause::Expiry, out);
        }
    }

    /// §8.3: the blocked waiter `arrival` times out at `d`.
    fn time_out(&mut self, d: u64, arrival: u64, out: &mut Vec<Output>) {
        let (ri, wi) = self.locate_waiter(arrival).expect("due waiter vanished");
        let conn = self.resources[ri].waiters[wi].conn;
        if self.bug == Bug::TimeoutKeepsWaiter {
            // Broken: answer, but leave the waiter queued (and undue).
            self.resources[ri].waiters[wi].deadline_ms = None;
        } else {
            self.resources[ri].waiters.remove(wi);
        }
        self.touch(ri, d);
        if self.bug != Bug::TimeoutUntold {
            self.reply(out, conn, "timeout");
        }
        self.hand_off(ri, d, Cause::WaiterLeft, out);
    }

    /// §8.4: GC at `d` deletes idle, unreferenced resources.
    fn collect_garbage(&mut self, d: u64) {
        let max_idle_ms = secs(self.cfg.gc_max_idle_s);
        let records = &self.records;
        self.resources.retain(|r| {
            let referenced = records
                .iter()
                .any(|rec| rec.space == r.space && rec.key == r.key);
            let idle = r.holders.is_empty()
                && r.waiters.is_empty()
                && !referenced
                && d.saturating_sub(r.last_activity_ms) > max_idle_ms;
            !idle
        });
        self.next_gc_ms = Some(d.saturating_add(secs(self.cfg.gc_interval_s)));
    }

    // ----- Grants (§6, §7) -----

    /// §7: grant from the head of the queue while there is room, as of `at`.
    /// A head waiter dead at `at` times out instead. Without a fence left
    /// to issue, the live head stays where it is until the ceiling rises (§6).
    fn hand_off(&mut self, ri: usize, at: u64, cause: Cause, out: &mut Vec<Output>) {
        while self.has_room(&self.resources[ri]) && !self.resources[ri].waiters.is_empty() {
            let wi = match self.bug {
                Bug::GrantFromBack => self.resources[ri].waiters.len() - 1,
                _ => 0,
            };
            let w = self.resources[ri].waiters[wi].clone();
            let dead = matches!(w.deadline_ms, Some(d) if d <= at);
            if dead && self.bug != Bug::GrantTimedOutWaiter {
                // Its deadline has passed: it times out instead.
                self.resources[ri].waiters.remove(wi);
                self.touch(ri, at);
                self.reply(out, w.conn, "timeout");
                continue;
            }
            if !self.fence_available() {
                return;
            }
            if self.bug == Bug::WaiterLeftInQueue {
                // Broken: grant the head but keep an undue copy queued.
                self.resources[ri].waiters[wi].deadline_ms = None;
            } else {
                self.resources[ri].waiters.remove(wi);
            }
            let token = self.grant(ri, w.conn, w.lease_s, w.arrival, at, true, cause);
            if w.deadline_ms.is_some() {
                // A blocked `l`/`sl`/`w`/`sw` is answered, and the grant
                // remembered for a cancel that loses the race (§9.1).
                if let Some(c) = self.conn_index(w.conn) {
                    self.conns[c].answered = Some(self.last_fence);
                }
                if self.bug != Bug::GrantUntold {
                    self.reply(out, w.conn, &format!("ok {token} {}", w.lease_s));
                }
            } else {
                // A two-phase waiter not yet waited on: its record becomes granted.
                let (space, key) = (self.resources[ri].space, self.resources[ri].key.clone());
                if let Some(rec) = self.record_index(w.conn, space, &key) {
                    if self.records[rec].state == (RecordState::Queued { arrival: w.arrival }) {
                        self.records[rec].state = RecordState::Granted {
                            token,
                            lease_s: w.lease_s,
                        };
                    }
                }
            }
        }
    }

    /// §6: a new holder with a new token and a lease from `at`.
    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        ri: usize,
        conn: u64,
        lease_s: u64,
        arrival: u64,
        at: u64,
        from_queue: bool,
        cause: Cause,
    ) -> String {
        let fence = if self.bug == Bug::FenceNotIncremented && from_queue {
            self.last_fence
        } else {
            self.last_fence + 1
        };
        self.last_fence = fence;
        let token = token::token_text(self.cfg.salt_key, fence);
        self.resources[ri].holders.push(Holder {
            token: token.clone(),
            fence,
            conn,
            deadline_ms: at.saturating_add(secs(lease_s)),
            lease_s,
            arrival,
        });
        self.touch(ri, at);
        let (space, key) = (self.resources[ri].space, self.resources[ri].key.clone());
        self.event(Event::Grant {
            space,
            key,
            fence,
            conn,
            arrival,
            at_ms: at,
            lease_s,
            from_queue,
            cause,
        });
        token
    }

    // ----- Helpers -----

    /// §2: find the resource, or create it within `max_locks`. A semaphore
    /// asked for with a different limit is refused (and not touched).
    fn get_or_create(
        &mut self,
        now: u64,
        space: Space,
        key: Vec<u8>,
        limit: u64,
    ) -> Result<usize, &'static str> {
        let limit = match space {
            Space::Lock => 1,
            Space::Sem => limit,
        };
        if let Some(ri) = self.find(space, &key) {
            if self.resources[ri].limit != limit {
                return Err("error_limit_mismatch");
            }
            return Ok(ri);
        }
        if self.resources.len() >= self.cfg.max_locks {
            return Err("error_max_locks");
        }
        let at = self
            .resources
            .iter()
            .position(|r| (r.key.as_slice(), r.space) > (key.as_slice(), space))
            .unwrap_or(self.resources.len());
        self.resources.insert(
            at,
            Resource {
                space,
                key,
                limit,
                holders: Vec::new(),
                waiters: Vec::new(),
                last_activity_ms: now,
            },
        );
        Ok(at)
    }

    /// Activity rule (see `spec/semantics.md` §2 "last-activity time" and
    /// reference §3.8): a resource is touched at instant `t` when it is
    /// created, when an `l`/`sl`/`e`/`se` reaches it, when its holders change
    /// (grant, release, expiry, disconnect) or have their lease moved (renew,
    /// `w` reset), and when its queue changes (a waiter added, removed, or
    /// given a deadline by `w`). Refused requests (`error_limit_mismatch`, a
    /// bogus token, `error_already_enqueued`, ...) do not touch it.
    fn touch(&mut self, ri: usize, t: u64) {
        let r = &mut self.resources[ri];
        r.last_activity_ms = r.last_activity_ms.max(t);
    }

    fn has_room(&self, r: &Resource) -> bool {
        let held = r.holders.len() as u64;
        if self.bug == Bug::DoubleGrant {
            held <= r.limit
        } else {
            held < r.limit
        }
    }

    /// §6: a grant never issues a fence above the ceiling.
    fn fence_available(&self) -> bool {
        if self.bug == Bug::CeilingOffByOne {
            return self.last_fence < self.fence_ceiling.saturating_add(1);
        }
        self.last_fence < self.fence_ceiling
    }

    fn queue_full(&self, ri: usize) -> bool {
        self.cfg.max_waiters > 0 && self.resources[ri].waiters.len() >= self.cfg.max_waiters
    }

    fn take_arrival(&mut self) -> u64 {
        let a = self.next_arrival;
        self.next_arrival += 1;
        a
    }

    fn find(&self, space: Space, key: &[u8]) -> Option<usize> {
        self.resources
            .iter()
            .position(|r| r.space == space && r.key == key)
    }

    /// The holder of (space, key) whose token is exactly `token`.
    fn find_holder(&self, space: Space, key: &[u8], token: &[u8]) -> Option<(usize, usize)> {
        let ri = self.find(space, key)?;
        let hi = self.resources[ri]
            .holders
            .iter()
            .position(|h| h.token.as_bytes() == token)?;
        Some((ri, hi))
    }

    fn locate_holder(&self, fence: u64) -> Option<(usize, usize)> {
        for (ri, r) in self.resources.iter().enumerate() {
            if let Some(hi) = r.holders.iter().position(|h| h.fence == fence) {
                return Some((ri, hi));
            }
        }
        None
    }

    fn locate_waiter(&self, arrival: u64) -> Option<(usize, usize)> {
        for (ri, r) in self.resources.iter().enumerate() {
            if let Some(wi) = r
                .waiters
                .iter()
                .position(|w| w.arrival == arrival && w.deadline_ms.is_some())
            {
                return Some((ri, wi));
            }
        }
        None
    }

    fn record_index(&self, conn: u64, space: Space, key: &[u8]) -> Option<usize> {
        self.records
            .iter()
            .position(|r| r.conn == conn && r.space == space && r.key == key)
    }

    fn add_record(&mut self, rec: Record) {
        let at = self
            .records
            .iter()
            .position(|r| {
                (r.conn, r.key.as_slice(), r.space) > (rec.conn, rec.key.as_slice(), rec.space)
            })
            .unwrap_or(self.records.len());
        self.records.insert(at, rec);
    }

    fn conn_index(&self, conn: u64) -> Option<usize> {
        self.conns.iter().position(|c| c.id == conn)
    }

    fn reply(&mut self, out: &mut Vec<Output>, conn: u64, line: &str) {
        let o = Output::Reply {
            conn,
            line: line.to_string(),
        };
        self.event(Event::Output(o.clone()));
        out.push(o);
    }

    fn close(&mut self, out: &mut Vec<Output>, conn: u64, why: Why) {
        if let Some(c) = self.conn_index(conn) {
            self.conns[c].closing = true;
        }
        let o = Output::Close { conn, why };
        self.event(Event::Output(o.clone()));
        out.push(o);
    }

    fn event(&mut self, e: Event) {
        if self.trace_enabled {
            self.trace.push(e);
        }
    }

    /// The stats snapshot at `now` (the caller has advanced).
    fn view(&self, now: u64) -> StatsView {
        let mut v = stats::build(self.conns.len(), &self.resources, now);
        for (pattern, group) in self.sub_keys() {
            let listeners = self
                .subs
                .iter()
                .filter(|s| s.pattern == pattern && s.group == group)
                .count();
            v.signal_channels.push(stats::ChannelStat {
                pattern: String::from_utf8_lossy(&pattern).into_owned(),
                group: String::from_utf8_lossy(&group).into_owned(),
                listeners: listeners as u64,
            });
        }
        v
    }

    // ----- signals (§12) ---------------------------------------------------

    /// The driver wrote `n` of `conn`'s pushes (§12, D13).
    pub fn pushes_written(&mut self, conn: u64, n: usize) {
        if let Some(c) = self.conn_index(conn) {
            self.conns[c].pushed = self.conns[c].pushed.saturating_sub(n);
        }
    }

    fn listen(&mut self, conn: u64, pattern: Vec<u8>, group: Vec<u8>, out: &mut Vec<Output>) {
        let mine = self.subs.iter().filter(|s| s.conn == conn);
        if mine
            .clone()
            .any(|s| s.pattern == pattern && s.group == group)
        {
            // Already subscribed: a no-op `ok`, even at the cap (D12).
            return self.reply(out, conn, "ok");
        }
        let max = self.cfg.max_subscriptions;
        if max > 0 && mine.count() >= max {
            return self.reply(out, conn, "error");
        }
        self.subs.push(Sub {
            conn,
            pattern,
            group,
        });
        self.reply(out, conn, "ok");
    }

    /// Removes the subscriptions `gone` selects; a group left without
    /// members forgets its round-robin counter.
    fn unsubscribe(&mut self, gone: impl Fn(&Sub) -> bool) {
        self.subs.retain(|s| !gone(s));
        let subs = &self.subs;
        self.rr
            .retain(|(p, g, _)| subs.iter().any(|s| s.pattern == *p && s.group == *g));
    }

    /// Distinct (pattern, group) pairs, sorted by bytes.
    fn sub_keys(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut keys: Vec<(Vec<u8>, Vec<u8>)> = self
            .subs
            .iter()
            .map(|s| (s.pattern.clone(), s.group.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    fn members(&self, pattern: &[u8], group: &[u8]) -> Vec<u64> {
        self.subs
            .iter()
            .filter(|s| s.pattern == pattern && s.group == group)
            .map(|s| s.conn)
            .collect()
    }

    fn push_full(&self, conn: u64) -> bool {
        self.conn_index(conn)
            .is_none_or(|c| self.conns[c].evicted || self.conns[c].pushed >= PUSH_QUEUE_FRAMES)
    }

    fn is_evicted(&self, conn: u64) -> bool {
        self.conn_index(conn).is_none_or(|c| self.conns[c].evicted)
    }

    /// §12, D13: a full recipient is closed and never receives more.
    fn evict(&mut self, conn: u64, out: &mut Vec<Output>) {
        if let Some(c) = self.conn_index(conn) {
            self.conns[c].evicted = true;
        }
        self.close(out, conn, Why::SlowConsumer);
    }

    /// Delivery (§12): (1) exact ungrouped listeners, (2) exact groups,
    /// (3) matching wildcard ungrouped listeners not already served by an
    /// ungrouped route, (4) matching wildcard groups; patterns and groups in
    /// byte order, listeners in join order. Answers `ok <pushes>`.
    fn signal(&mut self, conn: u64, channel: &[u8], payload: &[u8], out: &mut Vec<Output>) {
        let mut line = b"sig ".to_vec();
        line.extend_from_slice(channel);
        line.push(b' ');
        line.extend_from_slice(payload);
        let line = String::from_utf8_lossy(&line).into_owned();
        let keys = self.sub_keys();
        let wild = |p: &[u8]| p.split(|&b| b == b'.').any(|t| t == b"*" || t == b">");
        let mut routes: Vec<(bool, Vec<u8>, Vec<u8>)> = Vec::new();
        for step in 1..=4 {
            for (p, g) in &keys {
                let take = match step {
                    1 => p == channel && g.is_empty(),
                    2 => p == channel && !g.is_empty(),
                    3 => wild(p) && g.is_empty() && pattern_matches(p, channel),
                    _ => wild(p) && !g.is_empty() && pattern_matches(p, channel),
                };
                if take {
                    routes.push((g.is_empty(), p.clone(), g.clone()));
                }
            }
        }
        let mut served: Vec<u64> = Vec::new();
        let mut count = 0u64;
        for (ungrouped, p, g) in routes {
            let members = self.members(&p, &g);
            if ungrouped {
                for to in members {
                    if served.contains(&to) && self.bug != Bug::SignalTwice {
                        continue;
                    }
                    served.push(to);
                    if self.is_evicted(to) {
                        continue;
                    }
                    if self.push_full(to) {
                        self.evict(to, out);
                    } else {
                        self.push(to, &line, out);
                        count += 1;
                    }
                }
            } else {
                let i = self
                    .rr
                    .iter()
                    .position(|(rp, rg, _)| *rp == p && *rg == g)
                    .unwrap_or_else(|| {
                        self.rr.push((p.clone(), g.clone(), 0));
                        self.rr.len() - 1
                    });
                let counter = self.rr[i].2;
                self.rr[i].2 = counter.wrapping_add(1);
                let n = members.len();
                let start = (counter % n as u64) as usize;
                let pick = (0..n)
                    .map(|k| members[(start + k) % n])
                    .find(|&m| !self.push_full(m));
                match pick {
                    Some(to) => {
                        self.push(to, &line, out);
                        count += 1;
                    }
                    None if !self.is_evicted(members[start]) => self.evict(members[start], out),
                    None => {}
                }
            }
        }
        self.reply(out, conn, &format!("ok {count}"));
    }

    fn push(&mut self, conn: u64, line: &str, out: &mut Vec<Output>) {
        if let Some(c) = self.conn_index(conn) {
            self.conns[c].pushed += 1;
        }
        self.reply(out, conn, line);
    }
}

/// Frames a connection's push queue holds (§12, D13).
pub const PUSH_QUEUE_FRAMES: usize = 64;

/// protocol.md §9.1: tokens split on `.`; `*` matches one token, a final `>` one or
/// more; otherwise tokens are equal and counts agree. Public so that the
/// production core's subscription trie can be tested against it.
pub fn pattern_matches(pattern: &[u8], channel: &[u8]) -> bool {
    let p: Vec<&[u8]> = pattern.split(|&b| b == b'.').collect();
    let c: Vec<&[u8]> = channel.split(|&b| b == b'.').collect();
    if p.last() == Some(&&b">"[..]) {
        let fixed = p.len() - 1;
        return c.len() > fixed && p[..fixed].iter().zip(&c).all(|(a, b)| *a == b"*" || a == b);
    }
    p.len() == c.len() && p.iter().zip(&c).all(|(a, b)| *a == b"*" || a == b)
}

/// Seconds to milliseconds, saturating.
fn secs(s: u64) -> u64 {
    s.saturating_mul(1000)
}
