//! A cluster member inside the server: the engine's requests become log
//! entries, and the committed log drives the replicated core
//! (spec/cluster.md §3-§7).
//!
//! [`Node`] is the engine's [`Replicator`]: the engine's door hands it
//! every authenticated request that changes lock state (and `barrier`,
//! `stable-ref`), the disconnects and cancels of the connections that sent
//! them, and `stats`. On a follower it answers at once with
//! `error_not_leader <leader>`. On the leader it stamps the request with
//! the replicated clock, proposes it, and answers nothing: the reply comes
//! from applying the committed entry ([`Applier`], the replica's state
//! machine), which routes the core's effects to the mailboxes of the
//! connections this member serves. Every member applies every entry; a
//! follower has no connections to route to, so its effects are dropped.
//!
//! The leader's duties run in [`Node::spawn_tasks`]:
//! * on winning a term it proposes `LeaderStart`; until that entry is
//!   applied it serves nothing (it answers `error_not_leader` with its own
//!   address, and the client retries). The applied `LeaderStart` gives the
//!   clock `T` it continues from: from then on its stamps are its monotonic
//!   clock plus an offset fixed then, so **the clock never goes back**
//!   across leaders (§4);
//! * it proposes `Tick` when its clock passes the machine's next deadline
//!   (leases, waiters, orphans) or a second after its last stamp;
//! * when it stops leading it closes every client connection it serves
//!   (their sessions become orphans at the next leader's `LeaderStart`).
//!
//! Locks: the engine's door lock may be held while this module takes its
//! own `local` lock; the replica task takes `machine` then `local`. Nothing
//! takes the door lock from here, so the order is acyclic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;

use super::machine::{Applied, LogEntry, Machine, Op};
use super::replica::{
    ProposeError, ReplicaHandle, Reply as ProposalReply, Role, StateMachine, Status, VoterChange,
};
use crate::core::{ConnId, Effect, Time};
use crate::engine::mailbox::{Delivery, Mailbox};
use crate::engine::{AdminError, AdminFuture, Replicator, VotersChange};
use crate::sync::Arc as SArc;
use crate::wire::{Reply, Request, Status as WireStatus};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection this member serves, with a session in the log.
struct Local {
    session: u64,
    mailbox: Option<SArc<Mailbox>>,
}

/// What the engine side and the replica task share.
pub struct Shared {
    machine: Mutex<Machine>,
    /// Connections served here: by engine connection and by session.
    local: Mutex<LocalTable>,
    /// The machine's next deadline (ms of `T`; `u64::MAX` for none).
    next_deadline: AtomicU64,
    /// Wakes the ticker when the next deadline moved earlier.
    deadline_moved: Event,
    /// The replicated clock after the last applied entry.
    clock: AtomicU64,
}

#[derive(Default)]
struct LocalTable {
    by_conn: HashMap<ConnId, Local>,
    by_session: HashMap<u64, SArc<Mailbox>>,
}

/// The replica's state machine: decodes and applies committed entries and
/// routes the effects to the connections served here.
pub struct Applier {
    shared: Arc<Shared>,
    fx: Vec<Effect>,
}

impl StateMachine for Applier {
    type Output = Applied;

    fn apply(&mut self, _index: u64, data: &[u8]) -> Result<Applied, String> {
        // A correct leader proposes only entries that decode, and Raft
        // hands every member the same bytes: an entry that does not decode
        // was written by a member of another release, which other members
        // may apply. Skipping it here would let this member's state fall
        // behind theirs, so the replica stops (`ReplicaError::BadEntry`).
        let entry = LogEntry::decode(data).map_err(|e| e.to_string())?;
        let mut m = lock(&self.shared.machine);
        self.fx.clear();
        let applied = m.apply(&entry, &mut self.fx);
        self.shared.clock.store(applied.clock.0, Ordering::SeqCst);
        let next = m.next_deadline().map_or(u64::MAX, |t| t.0);
        if self.shared.next_deadline.swap(next, Ordering::SeqCst) > next {
            self.shared.deadline_moved.notify(1);
        }
        let local = lock(&self.shared.local);
        if !local.by_session.is_empty() {
            for f in self.fx.drain(..) {
                let conn = match &f {
                    Effect::Reply { conn, .. }
                    | Effect::Close { conn, .. }
                    | Effect::Push { conn, .. } => *conn,
                };
                let Some(mb) = m.session_of(conn).and_then(|s| local.by_session.get(&s)) else {
                    continue;
                };
                match f {
                    Effect::Reply { reply, .. } => mb.push(Delivery::Reply(reply)),
                    Effect::Close { reason, .. } => mb.push(Delivery::Close(reason)),
                    // The replicated core never serves signals.
                    Effect::Push { .. } => {}
                }
            }
        }
        Ok(applied)
    }

    fn snapshot(&self) -> Vec<u8> {
        lock(&self.shared.machine).snapshot_bytes()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let mut m = lock(&self.shared.machine);
        m.restore_bytes(data)?;
        self.shared.clock.store(m.clock().0, Ordering::SeqCst);
        Ok(())
    }
}

/// The leader's clock: `T = mono + offset`, fixed when its `LeaderStart`
/// applied (spec/cluster.md §4).
#[derive(Clone, Copy, Debug, Default)]
struct LeaderClock {
    /// The term this member leads and serves; 0 = not serving.
    term: u64,
    /// `T - mono` in milliseconds at the `LeaderStart`.
    offset: i128,
}

/// Cluster mode's settings the node needs at run time.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub orphan_ttl_ms: u64,
    /// This member's own client address (for the hint while it starts
    /// leading).
    pub client_addr: String,
}

/// A member: the engine's [`Replicator`] (see the module documentation).
pub struct Node {
    shared: Arc<Shared>,
    handle: ReplicaHandle<Applied>,
    cfg: NodeConfig,
    origin: Instant,
    leader: Mutex<LeaderClock>,
    /// Session counter (low 32 bits of a session id).
    counter: AtomicU64,
    /// Stamp of the last entry this leader proposed (ms of `T`).
    last_stamp: AtomicU64,
    ex: Arc<smol::Executor<'static>>,
}

impl Node {
    /// The state machine to give the replica, and the shared half.
    pub fn applier(machine: Machine) -> (Applier, Arc<Shared>) {
        let shared = Arc::new(Shared {
            clock: AtomicU64::new(machine.clock().0),
            machine: Mutex::new(machine),
            local: Mutex::new(LocalTable::default()),
            next_deadline: AtomicU64::new(u64::MAX),
            deadline_moved: Event::new(),
        });
        (
            Applier {
                shared: shared.clone(),
                fx: Vec::new(),
            },
            shared,
        )
    }

    pub fn new(
        shared: Arc<Shared>,
        handle: ReplicaHandle<Applied>,
        cfg: NodeConfig,
        ex: Arc<smol::Executor<'static>>,
    ) -> Arc<Node> {
        Arc::new(Node {
            shared,
            handle,
            cfg,
            // The runtime's clock: the simulator's on its thread.
            origin: crate::rt::now(),
            leader: Mutex::new(LeaderClock::default()),
            counter: AtomicU64::new(0),
            last_stamp: AtomicU64::new(0),
            ex,
        })
    }

    /// The replica (status, admin routes).
    pub fn replica(&self) -> &ReplicaHandle<Applied> {
        &self.handle
    }

    fn mono_ms(&self) -> i128 {
        crate::rt::now()
            .saturating_duration_since(self.origin)
            .as_millis() as i128
    }

    /// The stamp for an entry proposed now, while serving `term`.
    fn stamp(&self, clock: LeaderClock) -> Time {
        let t = (self.mono_ms() + clock.offset).max(0) as u64;
        self.last_stamp.fetch_max(t, Ordering::SeqCst);
        Time(t)
    }

    /// The leader clock when this member leads and serves the current term.
    fn serving(&self, status: &Status) -> Option<LeaderClock> {
        let c = *lock(&self.leader);
        (status.role == Role::Leader && c.term == status.term && c.term != 0).then_some(c)
    }

    fn not_leader(&self, status: &Status) -> Reply {
        let leader = if status.role == Role::Leader {
            // Starting to lead: the client may come back here.
            Some(self.cfg.client_addr.clone())
        } else {
            status.leader_client_addr.clone()
        };
        Reply::NotLeader { leader }
    }

    /// Proposes `op` now and, when `answer` is set, answers the
    /// connection's blocked request if the entry is refused or lost.
    fn propose(&self, clock: LeaderClock, op: Op, answer: Option<SArc<Mailbox>>) {
        let data = LogEntry {
            stamp: self.stamp(clock),
            op,
        }
        .encode();
        // Queued now, in the caller's order: a session's entries reach
        // the log in the order its connection sent them. The answer of an
        // applied entry comes from the machine's effects (`Applier`); the
        // callback only answers what the machine will not.
        self.handle.submit(
            data,
            ProposalReply::new(move |result: Result<Applied, ProposeError>| {
                let Some(mb) = answer else { return };
                match result {
                    Ok(a) if a.unknown_session => {
                        mb.push(Delivery::Reply(Reply::Status(WireStatus::Error)))
                    }
                    Ok(_) => {}
                    Err(ProposeError::NotLeader { client_addr, .. }) => {
                        mb.push(Delivery::Reply(Reply::NotLeader {
                            leader: client_addr,
                        }))
                    }
                    Err(ProposeError::Busy | ProposeError::TooLarge) => {
                        mb.push(Delivery::Reply(Reply::Status(WireStatus::Error)))
                    }
                    // It may or may not take effect: the connection cannot
                    // know its state any more; it reconnects and reclaims.
                    Err(_) => mb.push(Delivery::Abort),
                }
            }),
        );
    }

    /// Starts the leader's tasks on the executor.
    pub fn spawn_tasks(self: &Arc<Node>) {
        for task in self.tasks() {
            self.ex.spawn(task).detach();
        }
    }

    /// The leader's two tasks ([`Node::spawn_tasks`] spawns them; the
    /// simulator runs them on its own scheduler).
    pub fn tasks(
        self: &Arc<Node>,
    ) -> [std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>; 2] {
        let (a, b) = (self.clone(), self.clone());
        [Box::pin(a.watch()), Box::pin(b.tick())]
    }

    /// Follows role changes: begins each term it wins with `LeaderStart`,
    /// and closes its clients when it stops leading.
    async fn watch(self: Arc<Node>) {
        let mut started = 0u64;
        loop {
            let (status, _) = self
                .handle
                .wait_for_role(Duration::from_secs(1), |s| {
                    s.stopped.is_some()
                        || (s.role != Role::Leader && started != 0)
                        || (s.role == Role::Leader && started != s.term)
                })
                .await;
            if status.stopped.is_some() {
                self.step_down();
                return;
            }
            if status.role != Role::Leader {
                if started != 0 {
                    started = 0;
                    self.step_down();
                }
                continue;
            }
            if started == status.term {
                continue;
            }
            // A new term won: stop serving the old one, then start.
            self.step_down();
            started = status.term;
            let (fence_start, salt_key) = leader_start_draws();
            let mut orphan_ttl_ms = self.cfg.orphan_ttl_ms;
            if crate::planted::is(crate::planted::Bug::OrphanTtlUnit) {
                orphan_ttl_ms /= 1000;
            }
            let data = LogEntry {
                stamp: Time(self.shared.clock.load(Ordering::SeqCst)),
                op: Op::LeaderStart {
                    fence_start,
                    salt_key,
                    orphan_ttl_ms,
                    settings: lock(&self.shared.machine).settings_text(),
                },
            }
            .encode();
            match self.handle.propose(data).await {
                Ok(applied) => {
                    let mut c = lock(&self.leader);
                    c.term = status.term;
                    c.offset = applied.clock.0 as i128 - self.mono_ms();
                    if crate::planted::is(crate::planted::Bug::ClockAhead) {
                        c.offset += self.mono_ms();
                    }
                    if crate::planted::is(crate::planted::Bug::ClockRestart) {
                        c.offset = -self.mono_ms();
                    }
                    self.last_stamp.store(applied.clock.0, Ordering::SeqCst);
                    log::info!(term = status.term, clock_ms = applied.clock.0; "serving as leader");
                }
                Err(e) => {
                    log::warn!(term = status.term, error:% = e; "could not start the term");
                    started = 0;
                }
            }
        }
    }

    /// Stops serving: every connection served here is closed.
    fn step_down(&self) {
        *lock(&self.leader) = LeaderClock::default();
        let mut local = lock(&self.shared.local);
        for (_, l) in local.by_conn.drain() {
            if let Some(mb) = l.mailbox {
                mb.push(Delivery::Abort);
            }
        }
        local.by_session.clear();
    }

    /// Proposes `Tick` when the leader's clock passes the next deadline, or
    /// a second after its last stamp.
    async fn tick(self: Arc<Node>) {
        loop {
            let moved = self.shared.deadline_moved.listen();
            let status = self.handle.status_ref();
            if status.stopped.is_some() {
                return;
            }
            let wait = match self.serving(&status) {
                None => Duration::from_millis(100),
                Some(clock) => {
                    let now = (self.mono_ms() + clock.offset).max(0) as u64;
                    let due = self
                        .shared
                        .next_deadline
                        .load(Ordering::SeqCst)
                        .min(self.last_stamp.load(Ordering::SeqCst) + 1000);
                    if now >= due {
                        let data = LogEntry {
                            stamp: self.stamp(clock),
                            op: Op::Tick,
                        }
                        .encode();
                        let _ = self.handle.propose(data).await;
                        continue;
                    }
                    Duration::from_millis((due - now).min(1000))
                }
            };
            futures_lite::future::or(
                async {
                    crate::rt::sleep(wait).await;
                },
                moved,
            )
            .await;
        }
    }

    /// `stats` with the `cluster` object (spec/cluster.md §7).
    pub fn stats_json(&self) -> String {
        let status = self.handle.status();
        let mut json = lock(&self.shared.machine).stats_json();
        // Appended last, so the single node's members keep their order
        // (protocol.md §8).
        if json.ends_with('}') {
            json.pop();
            json.push_str(",\"cluster\":");
            json.push_str(&status_json(&status).to_string());
            json.push('}');
        }
        json
    }

    /// What `/metrics` adds: `(name, help, value)`.
    pub fn raft_metrics(&self) -> Vec<(&'static str, &'static str, u64)> {
        let s = self.handle.status();
        let m = lock(&self.shared.machine);
        vec![
            ("dflockd_raft_term", "Current Raft term.", s.term),
            (
                "dflockd_raft_is_leader",
                "1 when this member leads.",
                u64::from(s.role == Role::Leader),
            ),
            (
                "dflockd_raft_commit_index",
                "Highest committed log index.",
                s.commit_index,
            ),
            (
                "dflockd_raft_applied_index",
                "Highest applied log index.",
                s.applied_index,
            ),
            (
                "dflockd_raft_snapshot_index",
                "Index of the current snapshot.",
                s.snapshot_index,
            ),
            (
                "dflockd_raft_pending_proposals",
                "Proposals waiting for their entry to apply.",
                s.pending_proposals as u64,
            ),
            (
                "dflockd_raft_snapshots_taken",
                "Snapshots taken since start.",
                s.snapshots_taken,
            ),
            (
                "dflockd_raft_snapshots_installed",
                "Snapshots received from a leader since start.",
                s.snapshots_installed,
            ),
            (
                "dflockd_raft_voters",
                "Voters in the configuration.",
                s.voters.len() as u64,
            ),
            (
                "dflockd_raft_orphans",
                "Sessions kept as orphans.",
                m.orphan_count() as u64,
            ),
            (
                "dflockd_raft_clock_alarms",
                "Entries stamped below the replicated clock.",
                m.clock_alarms,
            ),
            (
                "dflockd_raft_settings_mismatches",
                "LeaderStart entries whose settings differ from this member's.",
                m.settings_mismatches,
            ),
            (
                "dflockd_raft_clock_ms",
                "The replicated clock.",
                m.clock().0,
            ),
        ]
    }
}

/// The `cluster` object of `stats`.
pub fn status_json(s: &Status) -> serde_json::Value {
    serde_json::json!({
        "node_id": s.node_id,
        "role": s.role.as_str(),
        "term": s.term,
        "leader_id": s.leader_id,
        "leader_addr": s.leader_client_addr,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "voters": s.voters,
        "members": members_json(s),
    })
}

/// The `members` array of `stats`' `cluster`: each voter and learner with
/// the addresses this member knows for it (null when it knows none).
pub fn members_json(s: &Status) -> Vec<serde_json::Value> {
    let mut ids: Vec<u64> = s.voters.iter().chain(&s.learners).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    ids.iter()
        .map(|&id| {
            let p = s.members.iter().find(|p| p.id == id);
            serde_json::json!({
                "id": id,
                "voter": s.voters.contains(&id),
                "raft_addr": p.map(|p| p.raft_addr.clone()),
                "client_addr": p.map(|p| p.client_addr.clone()),
            })
        })
        .collect()
}

/// How long a member added by the admin route has to catch up as a
/// learner before it is promoted.
const JOIN_CATCH_UP: Duration = Duration::from_secs(30);

/// How long an admin answer waits for the member's shared status to show
/// a change it applied (it is published at the end of the same cycle).
const STATUS_CATCH_UP: Duration = Duration::from_secs(5);

/// A refused or lost membership change, for the admin routes.
fn admin_error(e: ProposeError) -> AdminError {
    match e {
        ProposeError::NotLeader { client_addr, .. } => AdminError::NotLeader(client_addr),
        ProposeError::ChangeInProgress => {
            AdminError::Conflict("another membership change is in progress".into())
        }
        ProposeError::BadChange(why) => AdminError::Conflict(why),
        other => AdminError::Unavailable(other.to_string()),
    }
}

impl Node {
    /// `Some(leader address)` unless this member leads and serves.
    fn leader_addr_if_not_leading(&self) -> Option<Option<String>> {
        let status = self.handle.status();
        match self.serving(&status) {
            Some(_) => None,
            None => match self.not_leader(&status) {
                Reply::NotLeader { leader } => Some(leader),
                _ => Some(None),
            },
        }
    }
}

/// The fence start and salt key a new leader logs in its `LeaderStart`:
/// the wall clock and the operating system's randomness, or on a
/// simulator's thread its seeded draws (so that a seed replays exactly).
fn leader_start_draws() -> (u64, [u64; 2]) {
    #[cfg(feature = "sim")]
    if let Some(d) = crate::sim::cluster::leader_draws() {
        return d;
    }
    (crate::engine::fence::wall_clock_nanos(), random_key())
}

/// A fresh salt key from the operating system (the first leader's draw,
/// logged in its `LeaderStart`).
fn random_key() -> [u64; 2] {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system provides randomness");
    [
        u64::from_le_bytes(b[..8].try_into().expect("8")),
        u64::from_le_bytes(b[8..].try_into().expect("8")),
    ]
}

/// Whether the request must go through the log (or, for signals, be served
/// by the leader): everything but `auth`, `ping` and `stats`.
fn leader_only(req: &Request) -> bool {
    !matches!(req, Request::Auth { .. } | Request::Ping | Request::Stats)
}

impl Replicator for Node {
    fn request(
        &self,
        conn: ConnId,
        mailbox: Option<&SArc<Mailbox>>,
        req: &Request,
    ) -> Option<Option<Reply>> {
        if matches!(req, Request::Stats) {
            return Some(Some(Reply::Stats(self.stats_json())));
        }
        if !leader_only(req) {
            return None;
        }
        let status = self.handle.status_ref();
        let Some(clock) = self.serving(&status) else {
            return Some(Some(self.not_leader(&status)));
        };
        if super::limit_too_large(req) {
            return Some(Some(Reply::Status(WireStatus::Error)));
        }
        if matches!(
            req,
            Request::Listen { .. } | Request::Unlisten { .. } | Request::Signal { .. }
        ) {
            // Signals are not replicated: the leader serves them from its
            // own table (spec/cluster.md §3 rule 4).
            return None;
        }
        let (session, fresh) = {
            let mut local = lock(&self.shared.local);
            match local.by_conn.get(&conn) {
                Some(l) => (l.session, false),
                None => {
                    let n = self.counter.fetch_add(1, Ordering::SeqCst) & 0xffff_ffff;
                    let session = (status.term << 32) | n;
                    local.by_conn.insert(
                        conn,
                        Local {
                            session,
                            mailbox: mailbox.cloned(),
                        },
                    );
                    if let Some(mb) = mailbox {
                        local.by_session.insert(session, mb.clone());
                    }
                    (session, true)
                }
            }
        };
        if fresh {
            self.propose(clock, Op::Connect { session }, None);
        }
        let op = match req {
            Request::Barrier => Op::Barrier,
            Request::StableRef { reference } => Op::StableRef {
                session,
                reference: reference.to_vec(),
            },
            r => Op::Request {
                session,
                request: r.clone(),
            },
        };
        if matches!(op, Op::Barrier) {
            // A barrier's answer is its commit.
            let data = LogEntry {
                stamp: self.stamp(clock),
                op,
            }
            .encode();
            let mb = mailbox.cloned();
            self.handle.submit(
                data,
                ProposalReply::new(move |r: Result<Applied, ProposeError>| {
                    if let Some(mb) = mb {
                        mb.push(match r {
                            Ok(_) => Delivery::Reply(Reply::Ok),
                            Err(ProposeError::NotLeader { client_addr, .. }) => {
                                Delivery::Reply(Reply::NotLeader {
                                    leader: client_addr,
                                })
                            }
                            Err(_) => Delivery::Reply(Reply::Status(WireStatus::Error)),
                        });
                    }
                }),
            );
            return Some(None);
        }
        self.propose(clock, op, mailbox.cloned());
        Some(None)
    }

    fn disconnect(&self, conn: ConnId, shutting_down: bool) {
        let l = {
            let mut local = lock(&self.shared.local);
            let l = local.by_conn.remove(&conn);
            if let Some(l) = &l {
                local.by_session.remove(&l.session);
            }
            l
        };
        let Some(l) = l else { return };
        if shutting_down {
            return;
        }
        let status = self.handle.status_ref();
        if let Some(clock) = self.serving(&status) {
            self.propose(clock, Op::Disconnect { session: l.session }, None);
        }
    }

    fn cancel(&self, conn: ConnId) -> bool {
        let session = lock(&self.shared.local)
            .by_conn
            .get(&conn)
            .map(|l| l.session);
        let Some(session) = session else { return false };
        let status = self.handle.status_ref();
        if let Some(clock) = self.serving(&status) {
            self.propose(clock, Op::Cancel { session }, None);
        }
        true
    }

    fn keeps(&self, conn: ConnId) -> bool {
        lock(&self.shared.local).by_conn.contains_key(&conn)
    }

    fn metrics(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.raft_metrics()
    }

    fn change_voters(&self, change: VotersChange) -> AdminFuture {
        let handle = self.handle.clone();
        let leader = self.leader_addr_if_not_leading();
        Box::pin(async move {
            if let Some(addr) = leader {
                return Err(AdminError::NotLeader(addr));
            }
            match change {
                VotersChange::Add {
                    id,
                    raft_addr,
                    client_addr,
                } => {
                    let peer = super::parse_peer(&format!("{id}={raft_addr}@{client_addr}"))
                        .map_err(|e| AdminError::Invalid(e.to_string()))?;
                    // A learner first: it catches up without counting
                    // towards the quorum, then it is promoted.
                    handle
                        .change_voters(VoterChange::AddLearner(peer.clone()))
                        .await
                        .map_err(admin_error)?;
                    let (_, caught_up) = handle
                        .wait_for(JOIN_CATCH_UP, |s| {
                            s.caught_up.contains(&id) || s.role != Role::Leader
                        })
                        .await;
                    let s = handle.status();
                    if !caught_up || !s.caught_up.contains(&id) {
                        return Err(AdminError::Unavailable(format!(
                            "member {id} did not catch up within {}s; it stays a learner \
                             (remove it, or add it again once it runs)",
                            JOIN_CATCH_UP.as_secs()
                        )));
                    }
                    handle
                        .change_voters(VoterChange::Add(peer))
                        .await
                        .map_err(admin_error)?;
                    // Applied; the shared status follows at the cycle's end.
                    let (s, _) = handle
                        .wait_for(STATUS_CATCH_UP, |s| s.voters.contains(&id))
                        .await;
                    Ok(s.voters)
                }
                VotersChange::Remove(id) => {
                    let s = handle.status();
                    if !s.voters.contains(&id) && !s.learners.contains(&id) {
                        return Err(AdminError::NotFound(format!("member {id} is not a voter")));
                    }
                    handle
                        .change_voters(VoterChange::Remove(id))
                        .await
                        .map_err(admin_error)?;
                    let (s, _) = handle
                        .wait_for(STATUS_CATCH_UP, |s| {
                            !s.voters.contains(&id) && !s.learners.contains(&id)
                        })
                        .await;
                    Ok(s.voters)
                }
            }
        })
    }

    fn barrier(&self) -> AdminFuture {
        let status = self.handle.status();
        let Some(clock) = self.serving(&status) else {
            let leader = match self.not_leader(&status) {
                Reply::NotLeader { leader } => leader,
                _ => None,
            };
            return Box::pin(async move { Err(AdminError::NotLeader(leader)) });
        };
        let data = LogEntry {
            stamp: self.stamp(clock),
            op: Op::Barrier,
        }
        .encode();
        let applied = self.handle.enqueue(data);
        let handle = self.handle.clone();
        Box::pin(async move {
            applied.await.map_err(admin_error)?;
            Ok(handle.status().voters)
        })
    }

    fn view(&self) -> serde_json::Value {
        let s = self.handle.status();
        let mut ids: Vec<u64> = s.voters.iter().chain(&s.learners).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let members: Vec<serde_json::Value> = ids
            .iter()
            .map(|&id| {
                let me = id == s.node_id;
                let role = if me {
                    s.role.as_str()
                } else if s.leader_id == Some(id) {
                    "leader"
                } else if s.learners.contains(&id) {
                    "learner"
                } else {
                    "follower"
                };
                // The replica's list: the configured members and those
                // added since (their addresses came with the change).
                let addr = s
                    .members
                    .iter()
                    .find(|p| p.id == id)
                    .map(|p| p.client_addr.clone());
                // Only this member's own indexes are known here.
                serde_json::json!({
                    "id": id,
                    "addr": addr,
                    "role": role,
                    "self": me,
                    "commit_index": me.then_some(s.commit_index),
                    "applied_index": me.then_some(s.applied_index),
                })
            })
            .collect();
        serde_json::json!({
            "node_id": s.node_id,
            "term": s.term,
            "leader": s.leader_client_addr.clone().or_else(|| s.leader_id.map(|i| i.to_string())),
            "members": members,
        })
    }

    fn read_job(&self, job: &mut (dyn crate::core::introspect::Job + Send)) -> bool {
        match lock(&self.shared.machine).core() {
            Some(core) => job.read(core),
            None => true,
        }
    }

    fn replicated_counters(&self) -> Option<crate::engine::introspect::Counters> {
        let m = lock(&self.shared.machine);
        Some(crate::engine::introspect::Counters::of(m.core()?))
    }

    fn replicated_key_views(
        &self,
        spaces: &[crate::wire::Space],
        key: &crate::wire::Key,
        max_waiters: usize,
    ) -> Vec<crate::core::introspect::KeyView> {
        let m = lock(&self.shared.machine);
        m.core().map_or_else(Vec::new, |core| {
            crate::engine::introspect::key_views_of(core, spaces, key, max_waiters)
        })
    }

    fn replica_label(&self) -> (&'static str, u64) {
        let s = self.handle.status_ref();
        (s.role.as_str(), s.applied_index)
    }

    fn leader_hint(&self) -> Option<Option<String>> {
        let status = self.handle.status_ref();
        match self.serving(&status) {
            Some(_) => None,
            None => match self.not_leader(&status) {
                Reply::NotLeader { leader } => Some(leader),
                _ => Some(None),
            },
        }
    }
}
