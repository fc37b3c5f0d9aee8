//! The safety properties of `spec/semantics.md` §11, checked from the
//! clients' side over a trace of any implementation.
//!
//! A [`Monitor`] is told what each connection sent and what came back, at
//! the instant it came back, and reports the first violation under its §11
//! name. It sees only what clients see: requests, reply lines, and when
//! connections go away or cancel (a cancelled request, §9.1, ends with its
//! `timeout` like any other, or releases the grant that answered it first:
//! [`Monitor::cancel`]). It never looks inside the machine it watches, so it can watch the production core as well as
//! [`crate::Machine`]; the differential tests (`src/differential.rs`) run
//! it over the core on every scenario.
//!
//! What a client can tell, and so what is checked:
//!
//! * **mutual exclusion**, **semaphore within limit**: a grant (`ok TOK L`,
//!   `acquired TOK L`) while the leases clients were told of on that
//!   resource already fill its limit. A lease runs from the instant of the
//!   reply that told of it until released, renewed or past its deadline.
//! * **fifo grant order**: a grant to a request while a request that
//!   joined the queue earlier is still blocked on it and alive; an
//!   immediate grant while anyone is blocked on the resource.
//! * **no grant to a dead waiter**: a grant at or after the waiter's
//!   deadline, or to a connection that went away.
//! * **renewed lease honoured**: a release, renew or `w` that fails on a
//!   lease before its deadline (the lease was lost early).
//! * **expired lease is reclaimed**: a release, renew or `w` that succeeds
//!   on a lease past its deadline (it came back).
//! * **fencing tokens increase**: each grant told at its own instant has a
//!   fence above every fence told before; a fence is never told twice for
//!   two grants.
//! * **every blocked request is answered exactly once**: a reply nobody
//!   waits for; a request left unanswered by the end of the call that
//!   received it without blocking; a blocked request still unanswered at
//!   the end of a call at or after its deadline.
//!
//! The monitor must be told of outputs at their exact instants: drive the
//! watched implementation so that its timer fires at every deadline on time
//! (`advance` to each next deadline before an input). A two-phase grant
//! made while nobody waits is silent; the monitor learns of it only when
//! `w` reveals its token, and checks it from then on.

use crate::types::{Op, Output, Space};

/// The first property a trace broke, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// A property name of `spec/semantics.md` §11.
    pub property: &'static str,
    pub what: String,
}

// The names are the checker's own, so a property reads the same wherever
// it is reported.
use crate::checker::{
    ANSWERED_ONCE, FENCES_INCREASE, FIFO, MUTUAL_EXCLUSION, NO_DEAD_GRANT, RECLAIMED,
    RENEW_HONOURED, SEMAPHORE_WITHIN_LIMIT,
};

/// The §11 names the monitor can report.
pub const PROPERTIES: [&str; 8] = [
    MUTUAL_EXCLUSION,
    SEMAPHORE_WITHIN_LIMIT,
    FIFO,
    NO_DEAD_GRANT,
    RENEW_HONOURED,
    FENCES_INCREASE,
    ANSWERED_ONCE,
    RECLAIMED,
];

/// A lease a client was told of.
#[derive(Clone, Debug)]
struct Lease {
    space: Space,
    key: Vec<u8>,
    token: String,
    conn: u64,
    /// Dead at every instant `>= deadline_ms`.
    deadline_ms: u64,
}

/// A request sent and not answered yet.
#[derive(Clone, Debug)]
struct Outstanding {
    op: Op,
    /// Set once the call that received it ended without answering it: the
    /// request waits in a queue, until this deadline.
    blocked_until: Option<u64>,
    /// Its place in the queue (in the order requests joined queues).
    arrival: Option<u64>,
    /// The resource's limit, as the request gave it.
    limit: u64,
}

/// A two-phase record, as its client knows it.
#[derive(Clone, Debug)]
enum Record {
    Acquired { token: String },
    Queued { arrival: u64, limit: u64 },
}

#[derive(Clone, Debug)]
struct Conn {
    id: u64,
    outstanding: Option<Outstanding>,
    /// The token of the grant that answered its last blocked request, until
    /// it sends anything else: what a cancel that lost the race releases
    /// (§9.1).
    answered: Option<String>,
    /// Its read deadline passed in the current call: an `error` that
    /// answers no request may come before the close (§9.2).
    idle_error: bool,
    records: Vec<(Space, Vec<u8>, Record)>,
}

/// Watches one trace (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Monitor {
    auto_release: bool,
    conns: Vec<Conn>,
    leases: Vec<Lease>,
    next_arrival: u64,
    max_fence: u64,
    fences: Vec<u64>,
    violation: Option<Violation>,
}

fn fence_of(token: &str) -> Option<u64> {
    token
        .get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
}

impl Monitor {
    /// A monitor for a server that releases a connection's slots when it
    /// goes away exactly when `auto_release` (semantics §9).
    pub fn new(auto_release: bool) -> Monitor {
        Monitor {
            auto_release,
            ..Monitor::default()
        }
    }

    /// The first violation seen, if any.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    /// A new connection `conn`.
    pub fn connect(&mut self, conn: u64) {
        self.conns.push(Conn {
            id: conn,
            outstanding: None,
            answered: None,
            idle_error: false,
            records: Vec::new(),
        });
    }

    /// `conn` sends `op` (call this before the call that applies it).
    pub fn request(&mut self, conn: u64, op: &Op) {
        let limit = match op {
            Op::Acquire {
                space: Space::Sem,
                limit,
                ..
            }
            | Op::Enqueue {
                space: Space::Sem,
                limit,
                ..
            } => *limit,
            _ => 1,
        };
        if let Some(c) = self.conn_mut(conn) {
            if c.outstanding.is_some() {
                return self.fail(ANSWERED_ONCE, format!("conn {conn} sent while waiting"));
            }
            c.answered = None;
            c.outstanding = Some(Outstanding {
                op: op.clone(),
                blocked_until: None,
                arrival: None,
                limit,
            });
        }
    }

    /// `conn`'s driver cancels its blocked request (§9.1; call this before
    /// the call that applies it, after the timers due at `now` have run).
    /// A request still blocked ends with its `timeout` like any other; if
    /// a grant answered it first, with nothing sent since, that lease ends
    /// now: the server releases it.
    pub fn cancel(&mut self, conn: u64) {
        let Some(c) = self.conn_mut(conn) else {
            return;
        };
        if c.outstanding.is_some() {
            return;
        }
        if let Some(token) = c.answered.take() {
            self.leases.retain(|l| l.token != token);
            for c in &mut self.conns {
                c.records
                    .retain(|r| !matches!(&r.2, Record::Acquired { token: t } if *t == token));
            }
        }
    }

    /// `conn`'s read deadline passed (§9.2; call this before the call that
    /// applies it): an idle connection that owns nothing is told `error`
    /// and closed (`error_draining` while draining), which answers no
    /// request.
    pub fn read_deadline(&mut self, conn: u64) {
        if let Some(c) = self.conn_mut(conn) {
            c.idle_error = true;
        }
    }

    /// `conn` went away at `now` (call this before the outputs of the call
    /// that reports it): whatever it waited for is dead, and its leases end
    /// with auto-release.
    pub fn disconnect(&mut self, now: u64, conn: u64) {
        self.conns.retain(|c| c.id != conn);
        if self.auto_release {
            self.leases
                .retain(|l| l.conn != conn || l.deadline_ms <= now);
        }
    }

    /// The outputs of one call made at instant `now`, then the end of that
    /// call. The reply to the request the call applied is taken first: the
    /// request acted at the start of the call, even though the grants it
    /// caused (a release handing off) are listed before its reply.
    pub fn outputs(&mut self, now: u64, outputs: &[Output]) {
        let replies = outputs.iter().filter_map(|o| match o {
            // A push answers nothing (§12).
            Output::Reply { conn, line } if !line.starts_with("sig ") => Some((*conn, line)),
            _ => None,
        });
        let fresh = |m: &Monitor, conn: u64| {
            m.conns.iter().any(|c| {
                c.id == conn
                    && c.outstanding
                        .as_ref()
                        .is_some_and(|o| o.blocked_until.is_none())
            })
        };
        let (direct, others): (Vec<_>, Vec<_>) = replies.partition(|(c, _)| fresh(self, *c));
        for (conn, line) in direct.into_iter().chain(others) {
            self.reply(now, conn, line);
        }
        self.end_of_call(now);
    }

    /// A request not answered by the end of its call is blocked until its
    /// deadline; a blocked request must be answered by then.
    fn end_of_call(&mut self, now: u64) {
        let mut joined = Vec::new();
        let mut lost = Vec::new();
        for c in &mut self.conns {
            c.idle_error = false;
            let Some(o) = c.outstanding.as_mut() else {
                continue;
            };
            match o.blocked_until {
                Some(d) if d <= now => lost.push(c.id),
                Some(_) => {}
                None => {
                    let (space, key, timeout_s) = match &o.op {
                        Op::Acquire {
                            space,
                            key,
                            timeout_s,
                            ..
                        }
                        | Op::Wait {
                            space,
                            key,
                            timeout_s,
                        } if *timeout_s > 0 => (*space, key.clone(), *timeout_s),
                        _ => {
                            lost.push(c.id);
                            continue;
                        }
                    };
                    o.blocked_until = Some(now.saturating_add(timeout_s.saturating_mul(1000)));
                    // A `w` keeps the place its `e` took (and consumes its
                    // record); an `l` joins now and leaves a pending `e` of
                    // the same key where it is, for a later `w`.
                    let queued = match &o.op {
                        Op::Wait { .. } => c
                            .records
                            .iter()
                            .position(|r| r.0 == space && r.1 == key)
                            .map(|i| c.records.remove(i).2),
                        _ => None,
                    };
                    match (&o.op, queued) {
                        (Op::Wait { .. }, Some(Record::Queued { arrival, limit })) => {
                            o.arrival = Some(arrival);
                            o.limit = limit;
                        }
                        (Op::Wait { .. }, _) => lost.push(c.id),
                        _ => joined.push(c.id),
                    }
                }
            }
        }
        for conn in joined {
            let arrival = self.take_arrival();
            if let Some(o) = self.conn_mut(conn).and_then(|c| c.outstanding.as_mut()) {
                o.arrival = Some(arrival);
            }
        }
        if let Some(conn) = lost.first() {
            self.fail(
                ANSWERED_ONCE,
                format!("conn {conn}'s request is unanswered at {now} ms"),
            );
        }
    }

    fn take_arrival(&mut self) -> u64 {
        self.next_arrival += 1;
        self.next_arrival
    }

    fn conn_mut(&mut self, conn: u64) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == conn)
    }

    fn fail(&mut self, property: &'static str, what: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation { property, what });
        }
    }

    /// The live lease of (space, key) with this token, if any.
    fn lease(&self, space: Space, key: &[u8], token: &[u8]) -> Option<usize> {
        self.leases
            .iter()
            .position(|l| l.space == space && l.key == key && l.token.as_bytes() == token)
    }

    fn reply(&mut self, now: u64, conn: u64, line: &str) {
        let Some(c) = self.conn_mut(conn) else {
            let property = if line.starts_with("ok ") {
                NO_DEAD_GRANT
            } else {
                ANSWERED_ONCE
            };
            return self.fail(property, format!("{line:?} to conn {conn}, which is gone"));
        };
        if c.outstanding.is_none() && c.idle_error && line.starts_with("error") {
            c.idle_error = false;
            return;
        }
        let Some(o) = c.outstanding.take() else {
            return self.fail(
                ANSWERED_ONCE,
                format!("{line:?} to conn {conn}: no request"),
            );
        };
        let words: Vec<&str> = line.split(' ').collect();
        // A grant that ends a blocked `l` or `w` is what a cancel releases.
        c.answered = match (&o.op, words.as_slice()) {
            (Op::Acquire { .. } | Op::Wait { .. }, ["ok", token, _])
                if o.blocked_until.is_some() =>
            {
                Some(token.to_string())
            }
            _ => None,
        };
        match (&o.op, words.as_slice()) {
            (Op::Acquire { space, key, .. }, ["ok", token, lease]) => {
                self.grant(now, conn, *space, key, &o, token, lease);
            }
            (Op::Enqueue { space, key, .. }, ["acquired", token, lease]) => {
                self.grant(now, conn, *space, key, &o, token, lease);
                self.set_record(
                    conn,
                    *space,
                    key,
                    Record::Acquired {
                        token: token.to_string(),
                    },
                );
            }
            (Op::Enqueue { space, key, .. }, ["queued"]) => {
                let arrival = self.take_arrival();
                let limit = o.limit;
                self.set_record(conn, *space, key, Record::Queued { arrival, limit });
            }
            (Op::Wait { space, key, .. }, _) => self.waited(now, conn, *space, key, &o, &words),
            (Op::Release { space, key, token }, _) => {
                let live = self.lease(*space, key, token);
                match (live, line) {
                    (Some(i), "ok") if self.leases[i].deadline_ms <= now => self.fail(
                        RECLAIMED,
                        format!("conn {conn} released a lease past its deadline at {now} ms"),
                    ),
                    (Some(i), "ok") => {
                        let gone = self.leases.remove(i);
                        for c in &mut self.conns {
                            c.records.retain(|r| {
                                !matches!(&r.2, Record::Acquired { token } if *token == gone.token)
                            });
                        }
                    }
                    (Some(i), "error") if self.leases[i].deadline_ms > now => self.fail(
                        RENEW_HONOURED,
                        format!("release of a live lease failed at {now} ms"),
                    ),
                    _ => {}
                }
            }
            (
                Op::Renew {
                    space, key, token, ..
                },
                _,
            ) => {
                let live = self.lease(*space, key, token);
                match (live, words.as_slice()) {
                    (Some(i), ["ok", _]) if self.leases[i].deadline_ms <= now => self.fail(
                        RECLAIMED,
                        format!("conn {conn} renewed a lease past its deadline at {now} ms"),
                    ),
                    (Some(i), ["ok", lease]) => {
                        let lease_s: u64 = lease.parse().unwrap_or(0);
                        self.leases[i].deadline_ms = now.saturating_add(lease_s * 1000);
                    }
                    (Some(i), ["error"]) if self.leases[i].deadline_ms > now => self.fail(
                        RENEW_HONOURED,
                        format!("renew of a live lease failed at {now} ms"),
                    ),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn set_record(&mut self, conn: u64, space: Space, key: &[u8], rec: Record) {
        if let Some(c) = self.conn_mut(conn) {
            c.records.retain(|r| !(r.0 == space && r.1 == key));
            c.records.push((space, key.to_vec(), rec));
        }
    }

    /// The answer to `w` (§5): its record is consumed either way.
    fn waited(
        &mut self,
        now: u64,
        conn: u64,
        space: Space,
        key: &[u8],
        o: &Outstanding,
        words: &[&str],
    ) {
        let record = self.conn_mut(conn).and_then(|c| {
            let i = c.records.iter().position(|r| r.0 == space && r.1 == key)?;
            Some(c.records.remove(i).2)
        });
        match (record, words) {
            // Granted while queued and not waited on: told only now, under
            // the limit its `e`/`se` gave (a `w` carries none of its own).
            (Some(Record::Queued { limit, .. }), ["ok", token, lease])
                if o.blocked_until.is_none() =>
            {
                let fence = fence_of(token).unwrap_or(0);
                if self.fences.contains(&fence) {
                    return self.fail(FENCES_INCREASE, format!("fence {fence} told twice"));
                }
                self.fences.push(fence);
                self.told(now, conn, space, key, limit, token, lease);
            }
            (Some(Record::Acquired { token: had }), ["ok", token, lease]) => {
                match self.lease(space, key, token.as_bytes()) {
                    Some(i) if *token == had && self.leases[i].deadline_ms > now => {
                        let lease_s: u64 = lease.parse().unwrap_or(0);
                        self.leases[i].deadline_ms = now.saturating_add(lease_s * 1000);
                    }
                    Some(_) if *token == had => self.fail(
                        RECLAIMED,
                        format!("`w` at {now} ms revived a lease past its deadline"),
                    ),
                    _ => {}
                }
            }
            (Some(Record::Acquired { token }), ["error_lease_expired"]) => {
                if let Some(i) = self.lease(space, key, token.as_bytes()) {
                    if self.leases[i].deadline_ms > now {
                        self.fail(
                            RENEW_HONOURED,
                            format!("`w` at {now} ms found a live lease expired"),
                        );
                    }
                }
            }
            // A blocked `w` granted from the queue.
            (_, ["ok", token, lease]) if o.blocked_until.is_some() => {
                self.grant(now, conn, space, key, o, token, lease);
            }
            _ => {}
        }
    }

    /// A grant told at its own instant `now`: to a request just sent, or to
    /// one blocked in a queue.
    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        now: u64,
        conn: u64,
        space: Space,
        key: &[u8],
        o: &Outstanding,
        token: &str,
        lease: &str,
    ) {
        let fence = fence_of(token).unwrap_or(0);
        if fence <= self.max_fence || self.fences.contains(&fence) {
            return self.fail(
                FENCES_INCREASE,
                format!("fence {fence} after fence {}", self.max_fence),
            );
        }
        self.max_fence = fence;
        self.fences.push(fence);
        match (o.blocked_until, o.arrival) {
            (Some(deadline), _) if deadline <= now => {
                return self.fail(
                    NO_DEAD_GRANT,
                    format!("conn {conn} granted at {now} ms, its deadline {deadline} ms"),
                );
            }
            (Some(_), Some(arrival)) => {
                if let Some(first) = self.blocked_before(now, conn, space, key, Some(arrival)) {
                    return self.fail(
                        FIFO,
                        format!("conn {conn} granted at {now} ms while conn {first} waits ahead"),
                    );
                }
            }
            _ => {
                if let Some(first) = self.blocked_before(now, conn, space, key, None) {
                    return self.fail(
                        FIFO,
                        format!(
                            "conn {conn} granted on arrival at {now} ms while conn {first} waits"
                        ),
                    );
                }
            }
        }
        self.told(now, conn, space, key, o.limit, token, lease);
    }

    /// A connection other than `conn` blocked on (space, key), alive at
    /// `now`, that joined the queue before `arrival` (or at all).
    fn blocked_before(
        &self,
        now: u64,
        conn: u64,
        space: Space,
        key: &[u8],
        arrival: Option<u64>,
    ) -> Option<u64> {
        self.conns.iter().find_map(|c| {
            let o = c.outstanding.as_ref()?;
            let (s, k) = match &o.op {
                Op::Acquire { space, key, .. } | Op::Wait { space, key, .. } => (*space, key),
                _ => return None,
            };
            let ahead = match (o.arrival, arrival) {
                (Some(a), Some(mine)) => a < mine,
                (Some(_), None) => true,
                (None, _) => false,
            };
            let alive = o.blocked_until.is_some_and(|d| d > now);
            (c.id != conn && s == space && k == key && ahead && alive).then_some(c.id)
        })
    }

    /// A client is told it holds a slot of (space, key) from `now`.
    #[allow(clippy::too_many_arguments)]
    fn told(
        &mut self,
        now: u64,
        conn: u64,
        space: Space,
        key: &[u8],
        limit: u64,
        token: &str,
        lease: &str,
    ) {
        let live = self
            .leases
            .iter()
            .filter(|l| l.space == space && l.key == key && l.deadline_ms > now)
            .count() as u64;
        if live >= limit {
            let property = match space {
                Space::Lock => MUTUAL_EXCLUSION,
                Space::Sem => SEMAPHORE_WITHIN_LIMIT,
            };
            return self.fail(
                property,
                format!("conn {conn} granted at {now} ms with {live} of {limit} slots held"),
            );
        }
        let lease_s: u64 = lease.parse().unwrap_or(0);
        // Leases past their deadline stay listed: a release or renew that
        // finds one is a lease that came back.
        self.leases.push(Lease {
            space,
            key: key.to_vec(),
            token: token.to_string(),
            conn,
            deadline_ms: now.saturating_add(lease_s.saturating_mul(1000)),
        });
    }
}
