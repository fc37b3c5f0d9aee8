//! The replicated state machine of cluster mode (`spec/cluster.md` §3–§5):
//! what every member computes from the committed log. It wraps the
//! single-node [`Machine`] (the lock semantics are unchanged) and adds the
//! two things only a cluster has: a replicated clock fed by the leader's
//! stamps, and sessions that outlive the connection that opened them
//! (orphans, reclaimed by `stable-ref`).
//!
//! Everything here is a pure function of the entries applied, so members
//! that apply the same log reach the same state; nothing reads a clock or
//! draws randomness.

use crate::machine::{Event, Machine};
use crate::types::{Config, Op, Output, Space};

/// One entry of the log (`spec/cluster.md` §3). The leader stamps time into
/// `LeaderStart` and `Tick`; every other entry applies at the replicated
/// clock as the last stamp left it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    /// The first entry of every leader's term: the clock it continues from.
    /// Applying it orphans every connection opened under earlier leaders.
    LeaderStart { stamp_ms: u64 },
    /// The leader's clock moved on.
    Tick { stamp_ms: u64 },
    /// A client connection presenting its `stable-ref` (the model folds
    /// the connect and the `stable-ref` request into one entry).
    Open { stable_ref: u8 },
    /// One request of a connection, already parsed.
    Request { conn: u64, op: ClientOp },
}

/// The requests the cluster model's clients send: non-blocking ones only,
/// so that every request is one atomic operation of the sequential
/// specification (a blocked request's answer depends on later inputs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientOp {
    /// `l k0 0 L` (or `sl k0 0 N L`): take a slot now or answer `timeout`.
    Acquire { lease_s: u64 },
    /// `r k0 TOK`.
    Release { token: String },
    /// `n k0 TOK` with the default lease.
    Renew { token: String },
}

impl ClientOp {
    /// The single-node request this is, on the model's one key `k0` whose
    /// limit is `limit` (1 = a lock, more = a semaphore).
    pub fn to_op(&self, limit: u64) -> Op {
        let space = if limit == 1 { Space::Lock } else { Space::Sem };
        let key = b"k0".to_vec();
        match self {
            ClientOp::Acquire { lease_s } => Op::Acquire {
                space,
                key,
                timeout_s: 0,
                limit,
                lease_s: Some(*lease_s),
            },
            ClientOp::Release { token } => Op::Release {
                space,
                key,
                token: token.clone().into_bytes(),
            },
            ClientOp::Renew { token } => Op::Renew {
                space,
                key,
                token: token.clone().into_bytes(),
                lease_s: None,
            },
        }
    }
}

/// A connection known to the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Session {
    pub conn: u64,
    pub stable_ref: u8,
    /// `Some((orphaned_at, release_at))` while no member serves it.
    pub orphan: Option<(u64, u64)>,
}

/// Deliberately broken replicated state machines (see also
/// [`super::ClusterBug`], which lists every planted bug).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReplicaBug {
    #[default]
    None,
    /// `--orphan-ttl` read as milliseconds: orphans go at the next stamp.
    OrphanTtlUnits,
}

/// What applying one entry did, for the driver and the checker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Replies and closes for connections, in order.
    pub outputs: Vec<Output>,
    /// Grants, releases and expiries inside the machine, in order, each
    /// with the replicated time it happened at.
    pub events: Vec<(u64, Event)>,
    /// `Open`: the session the connection now acts as, and whether it took
    /// over an orphan; `None` when the reference is in use by a live
    /// connection (answered `error`).
    pub opened: Option<(u64, bool)>,
    /// Orphans released: (conn, orphaned at, released at).
    pub orphans_released: Vec<(u64, u64, u64)>,
    /// Connections orphaned by a `LeaderStart`.
    pub orphaned: Vec<u64>,
    /// The entry carried a stamp below the replicated clock (a leader let
    /// the clock go back); the clock did not move.
    pub stamp_went_back: bool,
}

/// The replicated state: the lock machine, the clock, the sessions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Replica {
    pub machine: Machine,
    /// The replicated clock: the largest stamp applied (ms).
    pub now_ms: u64,
    pub sessions: Vec<Session>,
    pub orphan_ttl_s: u64,
    /// The limit of the model's one key: 1 makes it a lock.
    pub limit: u64,
    bug: ReplicaBug,
}

impl Replica {
    /// A replica whose first `clients` sessions are already open (stable
    /// references 0, 1, ...), as if their `Open` entries had been applied.
    pub fn new(
        cfg: Config,
        limit: u64,
        orphan_ttl_s: u64,
        clients: u8,
        bug: ReplicaBug,
    ) -> Replica {
        let mut machine = Machine::new(cfg, 0);
        machine.enable_trace();
        let sessions = (0..clients)
            .map(|r| Session {
                conn: machine.connect(0),
                stable_ref: r,
                orphan: None,
            })
            .collect();
        Replica {
            machine,
            now_ms: 0,
            sessions,
            orphan_ttl_s,
            limit,
            bug,
        }
    }

    /// Applies one committed entry.
    pub fn apply(&mut self, entry: &Entry) -> Applied {
        let mut a = Applied::default();
        match entry {
            Entry::LeaderStart { stamp_ms } => {
                self.advance(*stamp_ms, &mut a);
                let now = self.now_ms;
                let ttl_ms = match self.bug {
                    ReplicaBug::OrphanTtlUnits => self.orphan_ttl_s,
                    ReplicaBug::None => self.orphan_ttl_s * 1000,
                };
                for i in 0..self.sessions.len() {
                    if self.sessions[i].orphan.is_some() {
                        continue;
                    }
                    let conn = self.sessions[i].conn;
                    self.sessions[i].orphan = Some((now, now + ttl_ms));
                    // A blocked request has nobody left to answer: it ends
                    // as if cancelled (semantics §9.1); the rest is kept.
                    a.outputs.extend(self.machine.cancel(now, conn));
                    a.orphaned.push(conn);
                }
            }
            Entry::Tick { stamp_ms } => self.advance(*stamp_ms, &mut a),
            Entry::Open { stable_ref } => {
                let now = self.now_ms;
                match self
                    .sessions
                    .iter_mut()
                    .find(|s| s.stable_ref == *stable_ref)
                {
                    Some(s) if s.orphan.is_some() => {
                        s.orphan = None;
                        a.opened = Some((s.conn, true));
                    }
                    Some(_) => a.opened = None,
                    None => {
                        let conn = self.machine.connect(now);
                        self.sessions.push(Session {
                            conn,
                            stable_ref: *stable_ref,
                            orphan: None,
                        });
                        a.opened = Some((conn, false));
                    }
                }
            }
            Entry::Request { conn, op } => {
                // Only live sessions send requests; an entry for a session
                // that is gone is dropped (the engine answers nothing).
                if self
                    .sessions
                    .iter()
                    .any(|s| s.conn == *conn && s.orphan.is_none())
                {
                    let op = op.to_op(self.limit);
                    a.outputs
                        .extend(self.machine.handle(self.now_ms, *conn, op));
                }
            }
        }
        let now = self.now_ms;
        a.events
            .extend(self.machine.take_trace().into_iter().map(|e| (now, e)));
        a
    }

    /// Moves the clock to `stamp_ms` (never back), releasing every orphan
    /// whose time is up on the way, each as of its own deadline and after
    /// everything else due at that instant (`spec/cluster.md` §5).
    fn advance(&mut self, stamp_ms: u64, a: &mut Applied) {
        if stamp_ms < self.now_ms {
            a.stamp_went_back = true;
        }
        let to = stamp_ms.max(self.now_ms);
        loop {
            let due = self
                .sessions
                .iter()
                .filter_map(|s| s.orphan.map(|(at, d)| (d, s.conn, at)))
                .filter(|&(d, _, _)| d <= to)
                .min();
            let Some((d, conn, at)) = due else { break };
            let d = d.max(self.now_ms);
            a.outputs.extend(self.machine.advance(d));
            a.outputs.extend(self.machine.disconnect(d, conn));
            a.events
                .extend(self.machine.take_trace().into_iter().map(|e| (d, e)));
            self.sessions.retain(|s| s.conn != conn);
            self.now_ms = d;
            a.orphans_released.push((conn, at, d));
        }
        a.outputs.extend(self.machine.advance(to));
        self.now_ms = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(ttl_s: u64) -> Replica {
        let cfg = Config {
            default_lease_s: 5,
            gc_interval_s: 0,
            ..Config::default()
        };
        Replica::new(cfg, 1, ttl_s, 2, ReplicaBug::None)
    }

    fn acquire(r: &mut Replica, conn: u64, lease_s: u64) -> String {
        let a = r.apply(&Entry::Request {
            conn,
            op: ClientOp::Acquire { lease_s },
        });
        match &a.outputs[..] {
            [Output::Reply { line, .. }] => line.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_orphan_keeps_its_holding_until_its_ttl_then_releases_it() {
        let mut r = replica(2);
        assert!(acquire(&mut r, 1, 10).starts_with("ok "));
        let a = r.apply(&Entry::LeaderStart { stamp_ms: 1000 });
        assert_eq!(a.orphaned, vec![1, 2]);
        r.apply(&Entry::Tick { stamp_ms: 2999 });
        assert_eq!(r.machine.resources()[0].holders.len(), 1);
        let a = r.apply(&Entry::Tick { stamp_ms: 5000 });
        // Released as of its own deadline, not as of the stamp.
        assert_eq!(a.orphans_released, vec![(1, 1000, 3000), (2, 1000, 3000)]);
        assert!(r.machine.resources().iter().all(|x| x.holders.is_empty()));
        assert_eq!(r.now_ms, 5000);
    }

    #[test]
    fn stable_ref_takes_over_the_orphan_with_its_token() {
        let mut r = replica(30);
        let granted = acquire(&mut r, 1, 10);
        r.apply(&Entry::LeaderStart { stamp_ms: 0 });
        let a = r.apply(&Entry::Open { stable_ref: 0 });
        assert_eq!(a.opened, Some((1, true)));
        let token = granted.split(' ').nth(1).unwrap().to_string();
        let a = r.apply(&Entry::Request {
            conn: 1,
            op: ClientOp::Renew { token },
        });
        assert!(matches!(&a.outputs[..], [Output::Reply { line, .. }] if line == "ok 5"));
        // A reference nobody holds opens a new session.
        let a = r.apply(&Entry::Open { stable_ref: 7 });
        assert_eq!(a.opened, Some((3, false)));
        // A live session's reference cannot be taken.
        assert_eq!(r.apply(&Entry::Open { stable_ref: 7 }).opened, None);
    }

    #[test]
    fn a_stamp_below_the_clock_is_applied_at_the_clock_and_reported() {
        let mut r = replica(30);
        r.apply(&Entry::Tick { stamp_ms: 2000 });
        let a = r.apply(&Entry::LeaderStart { stamp_ms: 500 });
        assert!(a.stamp_went_back);
        assert_eq!(r.now_ms, 2000);
        assert_eq!(r.machine.now_ms(), 2000);
    }
}
