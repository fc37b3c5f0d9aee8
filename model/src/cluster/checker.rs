//! The stateright model of cluster mode: a few members replicate the
//! [`Replica`] through an abstract Raft log, a few clients use it across
//! leader failures, and the checker explores every interleaving within the
//! bounds (`spec/cluster.md` §8).
//!
//! **What is abstracted, and why.** Consensus is the Raft library's job and
//! is trusted: the model does not exchange votes or append messages. It
//! keeps one sequence of uncommitted entries (the current leader's log
//! suffix) and lets the checker choose, at every step, whether the next
//! entry commits; when a leader changes, whether each uncommitted entry
//! reached the new leader (a prefix survives and is committed by it, the
//! rest is lost); and whether the old leader crashed or lives on unaware
//! (a *zombie*, whose proposals never commit, until it learns the new term
//! and steps down). Those are exactly the outcomes Raft allows a proposer
//! to observe, whatever the peer network did (loss, duplication,
//! reordering, partitions): an entry commits late, commits after its
//! proposer died, or never; commits happen in log order; a leader can be
//! replaced without knowing it.
//!
//! **What is checked** is our use of it: replies only after commit, the
//! replicated clock across leader changes, orphans and their TTL, fences.
//! The client side is a connection per client that breaks when its member
//! crashes or steps down (its request or reply in flight is lost); the
//! client then reconnects to a member that believes it leads and presents
//! its `stable-ref`. Clients may re-send an operation whose reply was lost
//! (a duplicate at the service level), and everything that different
//! clients and members do is interleaved in every order.
//!
//! **Time.** Real time moves in one-second ticks up to the horizon. Each
//! member has a perfect monotonic clock that starts when it (re)boots; a
//! leader's replicated clock is its monotonic clock plus an offset fixed
//! when it takes over, so that it continues from the largest stamp in its
//! log (§4). Stamps enter the log as `LeaderStart` and `Tick` entries.
//!
//! **Linearizability.** Client operations are recorded in a stateright
//! [`LinearizabilityTester`] against [`SingleNode`], the single-node
//! machine with one connection per client; committed stamps are recorded on
//! a separate clock thread (see [`super::spec`]). An operation whose reply
//! was lost stays in flight forever, and the client continues on a new
//! thread.

use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
use stateright::{Model, Property};

use super::replica::{Applied, ClientOp, Entry, Replica, ReplicaBug};
use super::spec::{SingleNode, SpecOp, SpecRet};
use crate::machine::Event;
use crate::types::Config;

/// Deliberately broken clusters, each caught by a named property (see
/// `model/tests/model/cluster.rs`). `ClusterBug::None` is the design.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ClusterBug {
    /// The design.
    #[default]
    None,
    /// The leader answers a request as soon as it has proposed it, from its
    /// own log (committed state plus its uncommitted entries), instead of
    /// after the entry commits.
    ReplyBeforeCommit,
    /// A new leader starts the replicated clock from zero (its own
    /// monotonic clock since it took over) instead of continuing from the
    /// largest stamp in its log.
    ClockRestart,
    /// `--orphan-ttl` is applied in the wrong unit (seconds read as
    /// milliseconds), so orphans are released at the next stamp.
    OrphanReleasedEarly,
    /// A new leader continues from the largest stamp but forgets to
    /// subtract its own monotonic reading, so the clock jumps ahead by the
    /// new leader's uptime and leases end early in real time.
    ClockDoubleCounts,
}

impl ClusterBug {
    /// Every broken variant.
    pub const ALL: [ClusterBug; 4] = [
        ClusterBug::ReplyBeforeCommit,
        ClusterBug::ClockRestart,
        ClusterBug::OrphanReleasedEarly,
        ClusterBug::ClockDoubleCounts,
    ];
}

/// The bounds and knobs of one cluster model.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub members: u8,
    pub clients: u8,
    /// Real time stops here (seconds).
    pub horizon_s: u64,
    /// Requests each client may send (re-sends included).
    pub ops_per_client: u8,
    /// Leader failures in total: crashes, plus depositions when `depose`.
    pub failovers: u8,
    /// A new leader may be elected while the old one lives on, unaware.
    pub depose: bool,
    /// Crashed members may restart (with a fresh monotonic clock).
    pub recover: bool,
    /// Leases offered to acquires.
    pub leases_s: Vec<u64>,
    /// The limit of the one key: 1 = a lock, more = a semaphore.
    pub limit: u64,
    /// `--orphan-ttl` in seconds.
    pub orphan_ttl_s: u64,
    /// Record the history and check it against [`SingleNode`]. Only sound
    /// when orphans cannot expire within the horizon (the single node has
    /// no failover, so it never ends a session on its own).
    pub linearizability: bool,
    /// The lock machine's configuration (the same for every member).
    pub machine: Config,
    pub bug: ClusterBug,
}

impl ClusterConfig {
    /// The configuration CI checks for linearizability: three members, two
    /// clients on one lock, one leader failure (crash or deposition), two
    /// requests per client, one second of real time, acquires with a lease
    /// of two seconds (so a holding outlives the horizon and a lost one
    /// shows), renewals with the default of one second (so a lease can
    /// expire after a failover), and an orphan TTL longer than the horizon.
    pub fn ci() -> ClusterConfig {
        ClusterConfig {
            members: 3,
            clients: 2,
            horizon_s: 1,
            ops_per_client: 2,
            failovers: 1,
            depose: true,
            recover: false,
            leases_s: vec![2],
            limit: 1,
            orphan_ttl_s: 10,
            linearizability: true,
            machine: Config {
                default_lease_s: 1,
                max_locks: 16,
                max_waiters: 0,
                auto_release_on_disconnect: true,
                gc_interval_s: 0,
                gc_max_idle_s: 60,
                auth_token: None,
                fence_start: 0,
                fence_ceiling: u64::MAX,
                salt_key: [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210],
                max_subscriptions: 0,
                auth_failure_pause_ms: 100,
            },
            bug: ClusterBug::None,
        }
    }

    /// The configuration CI checks for orphan expiry: an orphan TTL of one
    /// second inside a two-second horizon (leases of two seconds, so an
    /// orphan's holding outlives its TTL), crashes only. Linearizability
    /// against the single node does not apply (sessions end by TTL).
    pub fn orphans() -> ClusterConfig {
        ClusterConfig {
            horizon_s: 2,
            depose: false,
            orphan_ttl_s: 1,
            linearizability: false,
            ..ClusterConfig::ci()
        }
    }
}

/// A member that believes it leads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lead {
    pub term: u8,
    /// Replicated clock = monotonic clock + offset (ms).
    pub offset_ms: i64,
    /// The last stamp it proposed.
    pub last_stamp_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub alive: bool,
    /// Real time of its last (re)start: its monotonic clock reads
    /// `real - boot`.
    pub boot_ms: u64,
    pub lead: Option<Lead>,
}

/// An uncommitted entry, with who proposed it and whom to answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proposal {
    pub term: u8,
    pub proposer: u8,
    /// (client, message sequence) to answer once committed.
    pub answer: Option<(u8, u8)>,
    pub entry: Entry,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    Down,
    Opening { member: u8 },
    Up { member: u8, conn: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Req {
    Open,
    Op(ClientOp),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resp {
    Opened {
        conn: u64,
    },
    Refused,
    /// The reply line and (ghost) the replicated time it was computed at.
    Reply {
        line: String,
        stamp_ms: u64,
    },
}

/// Where a client's one exchange stands (a connection carries one request
/// at a time). A request reaches its member in the step that sends it: a
/// request lost on the way is indistinguishable, to everyone, from one
/// proposed and lost in a failover, which the model does explore.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Wire {
    Idle,
    /// Proposed (or held by a zombie); waiting for the commit.
    AtMember,
    /// A reply on its way back: lost if the member crashes first.
    ToClient(Resp),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pending {
    pub op: ClientOp,
    /// The largest fence acknowledged to anyone when this was sent.
    pub max_fence_before: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    pub link: Link,
    pub wire: Wire,
    /// Numbers the messages it sends, so that a commit answers only the
    /// message that proposed it.
    pub seq: u8,
    pub pending: Option<Pending>,
    /// Its thread in the history; a new one after a lost reply.
    pub epoch: u8,
    pub ops_left: u8,
    /// Tokens it believes it holds.
    pub tokens: Vec<String>,
}

/// A grant some client was told about, on the replicated timeline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    pub fence: u64,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Facts about the last step only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StepFacts {
    pub holding_reclaimed: bool,
    pub entry_outlived_leader: bool,
    pub expiry_after_failover: bool,
    pub orphan_released: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    pub leases: Vec<Lease>,
    /// Committed ends of holdings (release, expiry, disconnect) by fence,
    /// kept for grants whose reply arrives after the end.
    pub ended: Vec<(u64, u64)>,
    pub acked_fences: Vec<u64>,
    pub max_acked_fence: u64,
    pub violated: Vec<&'static str>,
    pub step: StepFacts,
}

/// Thread ids of the history: (client, epoch); the clock is `CLOCK`.
pub type Thread = (u8, u8);
const CLOCK: Thread = (u8::MAX, 0);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub real_ms: u64,
    pub term: u8,
    /// The member the log currently follows (None between a crash and the
    /// next election).
    pub leader: Option<u8>,
    pub members: Vec<Member>,
    /// Uncommitted entries, in log order.
    pub log: Vec<Proposal>,
    /// The committed state (identical on every member that has applied it).
    pub replica: Replica,
    pub clients: Vec<Client>,
    pub failovers_left: u8,
    pub history: Option<LinearizabilityTester<Thread, SingleNode>>,
    /// Whether `history` is linearizable (kept up to date: appending can
    /// only break it).
    pub linearizable: bool,
    pub ghost: Ghost,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Real time moves one second.
    Tick,
    /// The leader stamps its clock into the log.
    LogTime,
    /// The next entry commits (entries of earlier terms commit with the
    /// current leader's first entry).
    Commit,
    /// The leader crashes.
    Crash {
        member: u8,
    },
    Recover {
        member: u8,
    },
    /// `member` becomes leader; the first `survive` uncommitted entries
    /// reached it. If the old leader is alive it becomes a zombie.
    Elect {
        member: u8,
        survive: u8,
    },
    /// A zombie learns of the new term.
    StepDown {
        member: u8,
    },
    /// The reply on its way to the client arrives.
    Deliver {
        client: u8,
    },
    /// The client connects to `member` and presents its `stable-ref`.
    Open {
        client: u8,
        member: u8,
    },
    /// The client sends a request on its connection.
    Invoke {
        client: u8,
        op: ClientOp,
    },
}

pub const LINEARIZABLE: &str = "linearizable";
pub const LIVE_LIMIT: &str = "at most limit holders with a live lease";
pub const FENCES: &str = "fencing tokens increase across failover";
pub const CLOCK_BACK: &str = "replicated clock never goes back";
pub const CLOCK_AHEAD: &str = "replicated clock never ahead of real time";
pub const ORPHAN_KEPT: &str = "orphan kept for orphan ttl";
pub const RECLAIMED: &str = "holding reclaimed after failover";
pub const OUTLIVED: &str = "entry committed after its leader failed";
pub const EXPIRY_AFTER: &str = "lease expires after failover";
pub const ORPHAN_RELEASED: &str = "orphan released after its ttl";

/// Safety properties.
pub const ALWAYS: [&str; 6] = [
    LINEARIZABLE,
    LIVE_LIMIT,
    FENCES,
    CLOCK_BACK,
    CLOCK_AHEAD,
    ORPHAN_KEPT,
];
/// Reachability properties.
pub const SOMETIMES: [&str; 4] = [RECLAIMED, OUTLIVED, EXPIRY_AFTER, ORPHAN_RELEASED];

/// The stateright model.
#[derive(Clone, Debug)]
pub struct ClusterModel {
    pub cfg: ClusterConfig,
}

impl ClusterModel {
    pub fn new(cfg: ClusterConfig) -> ClusterModel {
        ClusterModel { cfg }
    }

    fn horizon_ms(&self) -> u64 {
        self.cfg.horizon_s * 1000
    }

    /// The replicated clock of a leader now.
    fn clock_of(s: &State, m: u8) -> Option<u64> {
        let member = &s.members[m as usize];
        let lead = member.lead.as_ref()?;
        let mono = (s.real_ms - member.boot_ms) as i64;
        Some((mono + lead.offset_ms).max(0) as u64)
    }

    fn is_true_leader(s: &State, m: u8) -> bool {
        s.leader == Some(m)
            && s.members[m as usize]
                .lead
                .as_ref()
                .is_some_and(|l| l.term == s.term)
    }

    /// The leader proposes a `Tick` if its clock moved since its last stamp.
    fn stamp_if_moved(&self, s: &mut State, m: u8) {
        let Some(t) = Self::clock_of(s, m) else {
            return;
        };
        let lead = s.members[m as usize].lead.as_mut().expect("leads");
        if t > lead.last_stamp_ms {
            lead.last_stamp_ms = t;
            let term = lead.term;
            s.log.push(Proposal {
                term,
                proposer: m,
                answer: None,
                entry: Entry::Tick { stamp_ms: t },
            });
        }
    }

    /// Every client connected through `m` loses its connection; a request
    /// in flight stays unanswered in the history forever.
    fn drop_clients_of(s: &mut State, m: u8) {
        for c in &mut s.clients {
            let through_m = match c.link {
                Link::Opening { member } | Link::Up { member, .. } => member == m,
                Link::Down => false,
            };
            if through_m {
                c.link = Link::Down;
                c.wire = Wire::Idle;
                if c.pending.take().is_some() {
                    c.epoch += 1;
                }
            }
        }
    }

    fn record(s: &mut State, thread: Thread, op: SpecOp, ret: Option<SpecRet>) {
        let Some(h) = s.history.as_mut() else { return };
        h.on_invoke(thread, op).expect("one operation per thread");
        if let Some(ret) = ret {
            h.on_return(thread, ret).expect("in flight");
            if s.linearizable {
                s.linearizable = h.serialized_history().is_some();
            }
        }
    }

    /// Applies one committed proposal everywhere and answers its client.
    fn commit(&self, s: &mut State, p: Proposal) {
        let before = s.replica.now_ms;
        if p.term < s.term && p.proposer != s.leader.unwrap_or(u8::MAX) {
            s.ghost.step.entry_outlived_leader = true;
        }
        if let Entry::LeaderStart { stamp_ms } | Entry::Tick { stamp_ms } = p.entry {
            if stamp_ms > s.real_ms {
                violate(&mut s.ghost, CLOCK_AHEAD);
            }
            if stamp_ms != before {
                // The clock step as the implementation took it; the single
                // node refuses a step back.
                Self::record(
                    s,
                    CLOCK,
                    SpecOp::Advance { to_ms: stamp_ms },
                    Some(SpecRet::Done),
                );
            }
        }
        let held: Vec<u64> = s
            .replica
            .machine
            .resources()
            .iter()
            .flat_map(|r| r.holders.iter().map(|h| h.conn))
            .collect();
        let a = s.replica.apply(&p.entry);
        if a.stamp_went_back {
            violate(&mut s.ghost, CLOCK_BACK);
        }
        self.absorb_events(s, &a);
        if let Some((conn, true)) = a.opened {
            if held.contains(&conn) {
                s.ghost.step.holding_reclaimed = true;
            }
        }
        // Answer, if the proposer is the leader that commits it (a deposed
        // leader never hears of commits in a term it does not know) and
        // the client is still waiting on this very message.
        let Some((ci, seq)) = p.answer else { return };
        let proposer_leads = p.term == s.term && Self::is_true_leader(s, p.proposer);
        let c = &s.clients[ci as usize];
        let waiting = c.seq == seq && c.wire == Wire::AtMember;
        let via = match c.link {
            Link::Opening { member } | Link::Up { member, .. } => Some(member),
            Link::Down => None,
        };
        if !(proposer_leads && waiting && via == Some(p.proposer)) {
            return;
        }
        let resp = match (&p.entry, a.opened) {
            // The answer to an `Open` is not modelled in flight: losing it
            // is the same as the client reconnecting again.
            (Entry::Open { .. }, Some((conn, _))) => {
                return self.receive(s, ci, Resp::Opened { conn })
            }
            (Entry::Open { .. }, None) => return self.receive(s, ci, Resp::Refused),
            (Entry::Request { conn, .. }, _) => Resp::Reply {
                line: reply_to(&a, *conn),
                stamp_ms: s.replica.now_ms,
            },
            _ => return,
        };
        s.clients[ci as usize].wire = Wire::ToClient(resp);
    }

    /// Lease ends, expiries after a failover, orphan TTLs.
    fn absorb_events(&self, s: &mut State, a: &Applied) {
        for (at, e) in &a.events {
            match e {
                Event::Expire { fence, at_ms, .. } => {
                    end_lease(&mut s.ghost, *fence, *at_ms);
                    if s.term > 1 {
                        s.ghost.step.expiry_after_failover = true;
                    }
                }
                Event::Release { fence, .. } => end_lease(&mut s.ghost, *fence, *at),
                Event::Grant { .. } | Event::Output(_) => {}
            }
        }
        for &(_, orphaned_at, released_at) in &a.orphans_released {
            s.ghost.step.orphan_released = true;
            if released_at < orphaned_at + self.cfg.orphan_ttl_s * 1000 {
                violate(&mut s.ghost, ORPHAN_KEPT);
            }
        }
    }

    /// A response reaches client `ci`.
    fn receive(&self, s: &mut State, ci: u8, resp: Resp) {
        let c = &mut s.clients[ci as usize];
        c.wire = Wire::Idle;
        match resp {
            Resp::Opened { conn } => {
                let Link::Opening { member } = c.link else {
                    unreachable!("opened while not opening")
                };
                c.link = Link::Up { member, conn };
            }
            Resp::Refused => c.link = Link::Down,
            Resp::Reply { line, stamp_ms } => {
                let p = c.pending.take().expect("a reply answers a pending request");
                let thread = (ci, c.epoch);
                let words: Vec<&str> = line.split(' ').collect();
                match (&p.op, words.as_slice()) {
                    (ClientOp::Acquire { .. }, ["ok", tok, l]) => {
                        c.tokens.push(tok.to_string());
                        let fence = fence_of(tok);
                        let l: u64 = l.parse().expect("grant carries the lease");
                        let g = &mut s.ghost;
                        if fence <= p.max_fence_before || g.acked_fences.contains(&fence) {
                            violate(g, FENCES);
                        }
                        g.acked_fences.push(fence);
                        g.max_acked_fence = g.max_acked_fence.max(fence);
                        let ended = g
                            .ended
                            .iter()
                            .find(|&&(f, _)| f == fence)
                            .map(|&(_, at)| at);
                        g.leases.push(Lease {
                            fence,
                            start_ms: stamp_ms,
                            end_ms: (stamp_ms + l * 1000).min(ended.unwrap_or(u64::MAX)),
                        });
                        check_live_limit(g, self.cfg.limit);
                    }
                    (ClientOp::Release { token }, _) => {
                        c.tokens.retain(|t| t != token);
                        if line == "ok" {
                            end_lease(&mut s.ghost, fence_of(token), stamp_ms);
                        }
                    }
                    (ClientOp::Renew { token }, ["ok", l]) => {
                        let l: u64 = l.parse().expect("renew carries the lease");
                        let fence = fence_of(token);
                        if let Some(x) = s.ghost.leases.iter_mut().find(|x| x.fence == fence) {
                            if stamp_ms < x.end_ms {
                                x.end_ms = stamp_ms + l * 1000;
                            }
                        }
                        check_live_limit(&mut s.ghost, self.cfg.limit);
                    }
                    (ClientOp::Renew { token }, _) => c.tokens.retain(|t| t != token),
                    _ => {}
                }
                Self::record_return(s, thread, SpecRet::Reply(line));
            }
        }
    }

    fn record_return(s: &mut State, thread: Thread, ret: SpecRet) {
        let Some(h) = s.history.as_mut() else { return };
        h.on_return(thread, ret).expect("in flight");
        if s.linearizable {
            s.linearizable = h.serialized_history().is_some();
        }
    }
}

impl Model for ClusterModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let cfg = &self.cfg;
        let replica_bug = match cfg.bug {
            ClusterBug::OrphanReleasedEarly => ReplicaBug::OrphanTtlUnits,
            _ => ReplicaBug::None,
        };
        let replica = Replica::new(
            cfg.machine.clone(),
            cfg.limit,
            cfg.orphan_ttl_s,
            cfg.clients,
            replica_bug,
        );
        // Member 0 leads term 1; its `LeaderStart` at 0 is applied, and
        // every client has opened its session through it.
        let members = (0..cfg.members)
            .map(|m| Member {
                alive: true,
                boot_ms: 0,
                lead: (m == 0).then_some(Lead {
                    term: 1,
                    offset_ms: 0,
                    last_stamp_ms: 0,
                }),
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|c| Client {
                link: Link::Up {
                    member: 0,
                    conn: replica.sessions[c as usize].conn,
                },
                wire: Wire::Idle,
                seq: 0,
                pending: None,
                epoch: 0,
                ops_left: cfg.ops_per_client,
                tokens: Vec::new(),
            })
            .collect();
        let history = cfg.linearizability.then(|| {
            LinearizabilityTester::new(SingleNode::new(cfg.machine.clone(), cfg.limit, cfg.clients))
        });
        vec![State {
            real_ms: 0,
            term: 1,
            leader: Some(0),
            members,
            log: Vec::new(),
            replica,
            clients,
            failovers_left: cfg.failovers,
            history,
            linearizable: true,
            ghost: Ghost::default(),
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.real_ms < self.horizon_ms() {
            actions.push(Action::Tick);
        }
        if let Some(l) = s.leader {
            if s.members[l as usize].alive {
                let lead = s.members[l as usize].lead.as_ref().expect("leader leads");
                if Self::clock_of(s, l).is_some_and(|t| t > lead.last_stamp_ms) {
                    actions.push(Action::LogTime);
                }
                if !s.log.is_empty() {
                    actions.push(Action::Commit);
                }
                if s.failovers_left > 0 {
                    actions.push(Action::Crash { member: l });
                }
            }
        }
        let alive = s.members.iter().filter(|m| m.alive).count();
        let majority = alive * 2 > s.members.len();
        // Members that never restarted are interchangeable (same clock,
        // same everything): only the first eligible one is elected.
        let mut elected_one = false;
        for (m, member) in s.members.iter().enumerate() {
            let m = m as u8;
            if !member.alive {
                if self.cfg.recover {
                    actions.push(Action::Recover { member: m });
                }
                continue;
            }
            let zombie = member.lead.as_ref().is_some_and(|l| l.term < s.term);
            if zombie {
                actions.push(Action::StepDown { member: m });
            }
            // An election: after a crash, or (deposition) while the old
            // leader lives on.
            let can_elect = match s.leader {
                None => majority,
                Some(l) => self.cfg.depose && s.failovers_left > 0 && l != m && !zombie && majority,
            };
            let interchangeable = member.boot_ms == 0;
            if can_elect && member.lead.is_none() && !(interchangeable && elected_one) {
                elected_one |= interchangeable;
                for survive in 0..=s.log.len() as u8 {
                    actions.push(Action::Elect { member: m, survive });
                }
            }
        }
        for (ci, c) in s.clients.iter().enumerate() {
            let ci = ci as u8;
            match c.wire {
                Wire::ToClient(_) => {
                    actions.push(Action::Deliver { client: ci });
                    continue;
                }
                Wire::AtMember => continue,
                Wire::Idle => {}
            }
            match c.link {
                Link::Down => {
                    for (m, member) in s.members.iter().enumerate() {
                        if member.alive && member.lead.is_some() {
                            actions.push(Action::Open {
                                client: ci,
                                member: m as u8,
                            });
                        }
                    }
                }
                Link::Opening { .. } => {}
                Link::Up { .. } => {
                    if c.ops_left == 0 || c.pending.is_some() {
                        continue;
                    }
                    for &lease_s in &self.cfg.leases_s {
                        actions.push(Action::Invoke {
                            client: ci,
                            op: ClientOp::Acquire { lease_s },
                        });
                    }
                    for t in &c.tokens {
                        actions.push(Action::Invoke {
                            client: ci,
                            op: ClientOp::Release { token: t.clone() },
                        });
                        actions.push(Action::Invoke {
                            client: ci,
                            op: ClientOp::Renew { token: t.clone() },
                        });
                    }
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        s.ghost.step = StepFacts::default();
        match action {
            Action::Tick => s.real_ms += 1000,
            Action::LogTime => {
                let l = s.leader.expect("a leader");
                self.stamp_if_moved(&mut s, l);
            }
            Action::Commit => {
                // Raft commits an earlier term's entries only together with
                // one of the current term.
                let n = match s.log.iter().position(|p| p.term == s.term) {
                    Some(i) if s.log[0].term < s.term => i + 1,
                    _ => 1,
                };
                for p in s.log.drain(..n).collect::<Vec<_>>() {
                    self.commit(&mut s, p);
                }
            }
            Action::Crash { member } => {
                let m = &mut s.members[member as usize];
                m.alive = false;
                m.lead = None;
                s.leader = None;
                s.failovers_left -= 1;
                Self::drop_clients_of(&mut s, member);
            }
            Action::Recover { member } => {
                let m = &mut s.members[member as usize];
                m.alive = true;
                m.boot_ms = s.real_ms;
            }
            Action::Elect { member, survive } => {
                if s.leader.is_some() {
                    // Deposition: the old leader lives on as a zombie.
                    s.failovers_left -= 1;
                }
                s.log.truncate(survive as usize);
                s.term += 1;
                s.leader = Some(member);
                // Continue the clock from the largest stamp in the new
                // leader's log: the committed clock or a surviving stamp.
                let last = s
                    .log
                    .iter()
                    .filter_map(|p| match p.entry {
                        Entry::LeaderStart { stamp_ms } | Entry::Tick { stamp_ms } => {
                            Some(stamp_ms)
                        }
                        _ => None,
                    })
                    .fold(s.replica.now_ms, u64::max);
                let mono = (s.real_ms - s.members[member as usize].boot_ms) as i64;
                let offset_ms = match self.cfg.bug {
                    ClusterBug::ClockRestart => -mono,
                    ClusterBug::ClockDoubleCounts => last as i64,
                    _ => last as i64 - mono,
                };
                let stamp = (mono + offset_ms).max(0) as u64;
                s.members[member as usize].lead = Some(Lead {
                    term: s.term,
                    offset_ms,
                    last_stamp_ms: stamp,
                });
                s.log.push(Proposal {
                    term: s.term,
                    proposer: member,
                    answer: None,
                    entry: Entry::LeaderStart { stamp_ms: stamp },
                });
            }
            Action::StepDown { member } => {
                s.members[member as usize].lead = None;
                Self::drop_clients_of(&mut s, member);
            }
            Action::Open { client, member } => {
                let c = &mut s.clients[client as usize];
                c.link = Link::Opening { member };
                c.seq += 1;
                self.deliver_to_member(&mut s, client, Req::Open);
            }
            Action::Invoke { client, op } => {
                let max_fence_before = s.ghost.max_acked_fence;
                let c = &mut s.clients[client as usize];
                c.seq += 1;
                c.ops_left -= 1;
                c.pending = Some(Pending {
                    op: op.clone(),
                    max_fence_before,
                });
                let thread = (client, c.epoch);
                Self::record(
                    &mut s,
                    thread,
                    SpecOp::Request {
                        client,
                        op: op.clone(),
                    },
                    None,
                );
                self.deliver_to_member(&mut s, client, Req::Op(op));
            }
            Action::Deliver { client } => {
                let c = &s.clients[client as usize];
                match c.wire.clone() {
                    Wire::ToClient(resp) => self.receive(&mut s, client, resp),
                    Wire::Idle | Wire::AtMember => unreachable!("nothing on the wire"),
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(LINEARIZABLE, |_, s: &State| s.linearizable),
            Property::always(LIVE_LIMIT, |_, s: &State| {
                !s.ghost.violated.contains(&LIVE_LIMIT)
            }),
            Property::always(FENCES, |_, s: &State| !s.ghost.violated.contains(&FENCES)),
            Property::always(CLOCK_BACK, |_, s: &State| {
                !s.ghost.violated.contains(&CLOCK_BACK)
            }),
            Property::always(CLOCK_AHEAD, |_, s: &State| {
                !s.ghost.violated.contains(&CLOCK_AHEAD)
            }),
            Property::always(ORPHAN_KEPT, |_, s: &State| {
                !s.ghost.violated.contains(&ORPHAN_KEPT)
            }),
            Property::sometimes(RECLAIMED, |_, s: &State| s.ghost.step.holding_reclaimed),
            Property::sometimes(OUTLIVED, |_, s: &State| s.ghost.step.entry_outlived_leader),
            Property::sometimes(EXPIRY_AFTER, |_, s: &State| {
                s.ghost.step.expiry_after_failover
            }),
            Property::sometimes(ORPHAN_RELEASED, |_, s: &State| s.ghost.step.orphan_released),
        ]
    }
}

impl ClusterModel {
    /// A client's request reaches member `m`.
    fn deliver_to_member(&self, s: &mut State, ci: u8, req: Req) {
        let c = &s.clients[ci as usize];
        let (m, conn) = match c.link {
            Link::Opening { member } => (member, None),
            Link::Up { member, conn } => (member, Some(conn)),
            Link::Down => unreachable!("a message on a closed connection"),
        };
        let seq = c.seq;
        let leads = s.members[m as usize].lead.is_some();
        if !leads {
            // `error_not_leader`: the client goes elsewhere.
            let c = &mut s.clients[ci as usize];
            c.link = Link::Down;
            c.wire = Wire::Idle;
            if c.pending.take().is_some() {
                c.epoch += 1;
            }
            return;
        }
        s.clients[ci as usize].wire = Wire::AtMember;
        if !Self::is_true_leader(s, m) {
            // A zombie proposes into a term that is over: never committed.
            return;
        }
        self.stamp_if_moved(s, m);
        let entry = match req {
            Req::Open => Entry::Open { stable_ref: ci },
            Req::Op(op) => Entry::Request {
                conn: conn.expect("requests only on open connections"),
                op,
            },
        };
        let term = s.term;
        s.log.push(Proposal {
            term,
            proposer: m,
            answer: Some((ci, seq)),
            entry: entry.clone(),
        });
        if self.cfg.bug == ClusterBug::ReplyBeforeCommit {
            if let Entry::Request { conn, .. } = entry {
                // Broken: answer from the leader's own log right away.
                let mut ahead = s.replica.clone();
                let mut last = Applied::default();
                for p in &s.log {
                    last = ahead.apply(&p.entry);
                }
                let line = reply_to(&last, conn);
                s.clients[ci as usize].wire = Wire::ToClient(Resp::Reply {
                    line,
                    stamp_ms: ahead.now_ms,
                });
            }
        }
    }
}

/// The reply to `conn` among an entry's outputs.
fn reply_to(a: &Applied, conn: u64) -> String {
    a.outputs
        .iter()
        .find_map(|o| match o {
            crate::types::Output::Reply { conn: c, line } if *c == conn => Some(line.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "error".to_string())
}

/// The fence in the first half of a token.
fn fence_of(token: &str) -> u64 {
    u64::from_str_radix(&token[..16], 16).expect("tokens are hex")
}

fn end_lease(g: &mut Ghost, fence: u64, at_ms: u64) {
    if !g.ended.iter().any(|&(f, _)| f == fence) {
        g.ended.push((fence, at_ms));
    }
    if let Some(l) = g.leases.iter_mut().find(|l| l.fence == fence) {
        l.end_ms = l.end_ms.min(at_ms.max(l.start_ms));
    }
}

/// "At most `limit` holders with a live lease at any instant": grants that
/// clients were told about, on the replicated timeline, each from its
/// grant stamp to its (renewed) deadline or the committed end of it.
fn check_live_limit(g: &mut Ghost, limit: u64) {
    let over = g.leases.iter().any(|a| {
        let live_at_a = g
            .leases
            .iter()
            .filter(|b| b.start_ms <= a.start_ms && a.start_ms < b.end_ms)
            .count();
        live_at_a as u64 > limit
    });
    if over {
        violate(g, LIVE_LIMIT);
    }
}

fn violate(g: &mut Ghost, name: &'static str) {
    if !g.violated.contains(&name) {
        g.violated.push(name);
    }
}
