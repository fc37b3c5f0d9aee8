//! The replica: the one owner of a member's `RawNode`, and the driver of
//! the `Ready` cycle that spec/cluster.md §2.5 prescribes.
//!
//! Two layers:
//! * [`Replica`] is sans-IO: `tick`, `step`, `propose`, `change_voters`
//!   and [`Replica::handle_ready`], which runs one cycle and returns the
//!   messages to send and the peer-address changes. Tests drive several of
//!   them through a simulated network, crash them between any two steps of
//!   the cycle and reopen them from disk.
//! * [`spawn`] runs a `Replica` as one smol task with a [`Transport`]: a
//!   ticker, the transport's inbox, commands from [`ReplicaHandle`]s, and
//!   the reports of its [`StorageWorker`], the thread that runs the
//!   cycles' writes in order. It batches whatever arrived together into
//!   one cycle, and never waits for an fsync: what arrives during a write
//!   joins the next cycle, and writes queued together share one fsync.
//!
//! The state machine is opaque ([`StateMachine`]): committed normal entries
//! are applied in log order, each exactly once per incarnation; a snapshot
//! is the state machine serializing itself at its applied index. The state
//! machine is volatile: at start-up it is restored from the stored
//! snapshot and the log after it is replayed (Raft's `applied` starts at
//! the snapshot's index).
//!
//! Proposals are answered only after their entry is committed and applied,
//! and only while this member still leads the entry's term (§3 rule 2): a
//! proposal whose entry was overwritten, or whose member stopped leading,
//! ends in [`ProposeError::Unknown`] (it may or may not take effect).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::FutureExt as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message,
    SnapshotMetadata,
};
use raft::{RawNode, SnapshotStatus, StateRole};

use super::storage::{DiskWriter, LogStore, StoreError, WriteBatch};
use super::transport::{Transport, TransportEvent};
use super::{parse_peer, Peer};

/// A replicated state machine: what the replica applies entries to.
pub trait StateMachine: Send + 'static {
    /// What applying an entry produces for its proposer.
    type Output: Send + 'static;

    /// Applies the committed entry at `index`, whose data is what was
    /// proposed. Deterministic: the same entries in the same order give
    /// the same state and outputs on every member. An error means this
    /// build cannot read the entry (a member of another release wrote
    /// it): the replica stops rather than skip an entry that other
    /// members may apply.
    fn apply(&mut self, index: u64, data: &[u8]) -> Result<Self::Output, String>;

    /// The state as of the last applied entry, serialized.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with a snapshot's. An error means the snapshot
    /// is unusable (it came from a member with another state machine, or
    /// is damaged); the replica stops.
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
}

/// How a member starts when its `--raft-dir` is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// A member of a new cluster: every initial member bootstraps with the
    /// same voters, so they all start from the same state (an initial
    /// snapshot at index 1, term 1, of an empty state machine).
    New(Vec<u64>),
    /// A member added to a running cluster: it starts empty and learns
    /// everything (the voters included) from the leader's snapshot.
    Join,
}

/// Settings of a replica.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub node_id: u64,
    /// Every known member's addresses (this one's included); updated by
    /// membership changes.
    pub peers: Vec<Peer>,
    pub bootstrap: Bootstrap,
    /// One Raft tick (spec: 100 ms).
    pub tick: Duration,
    /// Ticks without a leader before an election (randomized up to twice).
    pub election_ticks: usize,
    /// The bound (exclusive) of the randomized election timeout, in ticks;
    /// `None`: twice `election_ticks` (the library's default). The
    /// simulator sets `election_ticks + 1`, with a timeout it drew from its
    /// seed, because the library draws from the thread's RNG.
    pub election_ticks_max: Option<usize>,
    pub heartbeat_ticks: usize,
    /// Take a snapshot after this many applied entries, once the entries
    /// applied since the last snapshot also add up to its size
    /// ([`snapshot_due_by`]).
    pub snapshot_entries: u64,
    /// Entries kept behind a snapshot for followers just behind.
    pub keep_entries: u64,
    /// Bytes of one append message.
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// Bytes of proposals not yet committed; beyond, proposals are refused
    /// with [`ProposeError::Busy`].
    pub max_uncommitted_bytes: u64,
    /// Largest proposal.
    pub max_entry_bytes: usize,
}

impl ReplicaConfig {
    /// The defaults of spec/cluster.md §2.5 for member `node_id`.
    pub fn new(node_id: u64, peers: Vec<Peer>, bootstrap: Bootstrap) -> ReplicaConfig {
        ReplicaConfig {
            node_id,
            peers,
            bootstrap,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            election_ticks_max: None,
            heartbeat_ticks: 2,
            snapshot_entries: 10_000,
            keep_entries: 1_000,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 16 << 20,
            max_entry_bytes: 1 << 20,
        }
    }
}

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    PreCandidate,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "precandidate",
            Role::Leader => "leader",
        }
    }
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Role {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// A member's own view of the cluster (not linearizable): what `stats`
/// and the metrics show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub node_id: u64,
    pub role: Role,
    pub term: u64,
    pub leader_id: Option<u64>,
    /// The leader's client address, when known.
    pub leader_client_addr: Option<String>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
    /// Members that receive the log without voting.
    pub learners: Vec<u64>,
    /// On the leader: the learners whose log matches up to the commit
    /// index (ready to be promoted).
    pub caught_up: Vec<u64>,
    /// Proposals waiting for their entry to apply.
    pub pending_proposals: usize,
    /// Snapshots taken by this member since start.
    pub snapshots_taken: u64,
    /// Snapshots received from a leader since start.
    pub snapshots_installed: u64,
    /// Set when the replica stopped (a storage failure): the reason.
    pub stopped: Option<String>,
    /// Every member whose addresses this one knows, by id: its
    /// `--cluster-peers`, and the members added since, whose addresses
    /// travel in their conf change (or in the snapshot that taught them).
    pub members: Vec<Peer>,
}

/// Why a proposal was not (or may not have been) applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// This member does not lead. The leader's id and client address, when
    /// known: the client is told to go there (`error_not_leader`).
    NotLeader {
        leader_id: Option<u64>,
        client_addr: Option<String>,
    },
    /// Too many proposals in flight; try again.
    Busy,
    /// The proposal is larger than `max_entry_bytes`.
    TooLarge,
    /// A membership change is still being applied (one at a time).
    ChangeInProgress,
    /// The change makes no sense (removing a member that is not a voter,
    /// adding one twice, removing the last voter).
    BadChange(String),
    /// The entry was proposed, but this member lost the lead (or the entry
    /// was overwritten) before it applied: it may or may not take effect.
    Unknown,
    /// The replica has stopped.
    Stopped,
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader {
                client_addr: Some(a),
                ..
            } => write!(f, "not leader; the leader is at {a}"),
            ProposeError::NotLeader { .. } => f.write_str("not leader; no leader known"),
            ProposeError::Busy => f.write_str("too many proposals in flight"),
            ProposeError::TooLarge => f.write_str("proposal too large"),
            ProposeError::ChangeInProgress => f.write_str("a membership change is in progress"),
            ProposeError::BadChange(why) => write!(f, "bad membership change: {why}"),
            ProposeError::Unknown => f.write_str("leadership lost before the entry applied"),
            ProposeError::Stopped => f.write_str("the replica has stopped"),
        }
    }
}

impl std::error::Error for ProposeError {}

/// A membership change (spec/cluster.md §7, the admin routes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoterChange {
    /// Adds a member that receives the log but does not vote, so that it
    /// can catch up without weakening the quorum.
    AddLearner(Peer),
    /// Adds a voter, or promotes a learner to one.
    Add(Peer),
    Remove(u64),
}

/// Why a replica could not start or had to stop.
#[derive(Debug)]
pub enum ReplicaError {
    Store(StoreError),
    /// The library refused the configuration or the stored state.
    Raft(String),
    /// The state machine refused a snapshot.
    Restore(String),
    /// A committed entry this replica cannot apply (an entry or a conf
    /// change that does not decode: written by a member of another
    /// release). The member stops; skipping it could leave this member's
    /// state behind the others'.
    BadEntry {
        index: u64,
        detail: String,
    },
    /// A planted crash (tests of the cycle's crash safety).
    Crashed(CrashPoint),
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaError::Store(e) => write!(f, "{e}"),
            ReplicaError::Raft(e) => write!(f, "raft: {e}"),
            ReplicaError::Restore(e) => write!(f, "snapshot refused by the state machine: {e}"),
            ReplicaError::BadEntry { index, detail } => {
                write!(f, "committed entry {index} cannot be applied: {detail}")
            }
            ReplicaError::Crashed(p) => write!(f, "planted crash at {p:?}"),
        }
    }
}

impl std::error::Error for ReplicaError {}

impl From<StoreError> for ReplicaError {
    fn from(e: StoreError) -> ReplicaError {
        ReplicaError::Store(e)
    }
}

/// The steps of the `Ready` cycle after which a test can stop a replica
/// as if the process died there (spec/cluster.md §2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrashPoint {
    /// After step 1: messages that may precede the write were sent.
    AfterSend,
    /// After step 2: a received snapshot was installed.
    AfterSnapshot,
    /// After step 3: committed entries were applied.
    AfterApply,
    /// After step 4: entries and hard state are durable.
    AfterPersist,
    /// After step 5: votes and acknowledgements were sent.
    AfterPersistedSend,
    /// After step 6: the light ready was handled.
    AfterAdvance,
    /// After a snapshot was taken and the log compacted.
    AfterCompact,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 7] = [
        CrashPoint::AfterSend,
        CrashPoint::AfterSnapshot,
        CrashPoint::AfterApply,
        CrashPoint::AfterPersist,
        CrashPoint::AfterPersistedSend,
        CrashPoint::AfterAdvance,
        CrashPoint::AfterCompact,
    ];
}

/// Where a proposal's answer goes: called once, on the replica's task,
/// with the state machine's output or why there is none. It must not
/// block (it pushes to a mailbox or a channel): a callback rather than a
/// channel with a task waiting on it, so that a proposal costs no task of
/// its own and no wake-up beyond its answer.
/// Dropped unanswered (the replica stopped, its queue was dropped), it
/// answers [`ProposeError::Stopped`].
pub struct Reply<T>(Option<ReplyFn<T>>);

type ReplyFn<T> = Box<dyn FnOnce(Result<T, ProposeError>) + Send>;

impl<T> Reply<T> {
    pub fn new(f: impl FnOnce(Result<T, ProposeError>) + Send + 'static) -> Reply<T> {
        Reply(Some(Box::new(f)))
    }

    fn send(mut self, result: Result<T, ProposeError>) {
        if let Some(f) = self.0.take() {
            f(result)
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(ProposeError::Stopped))
        }
    }
}

impl<T: Send + 'static> From<smol::channel::Sender<Result<T, ProposeError>>> for Reply<T> {
    fn from(tx: smol::channel::Sender<Result<T, ProposeError>>) -> Reply<T> {
        Reply::new(move |r| {
            let _ = tx.try_send(r);
        })
    }
}

struct Pending<T> {
    term: u64,
    reply: Reply<T>,
}

/// What one cycle asks the caller to do.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Messages to send, in order.
    pub messages: Vec<Message>,
    /// Members whose address became known or changed.
    pub peers_added: Vec<Peer>,
    /// Members removed from the configuration.
    pub peers_removed: Vec<u64>,
    /// Writes to run in this order ([`DiskWriter::write`]), each with its
    /// sequence number; [`Replica::on_written`] is told the last one done.
    pub writes: Vec<(u64, WriteBatch)>,
}

/// A `Ready` whose write (or an earlier one) is not done yet: the
/// messages that must wait for it.
struct Flight {
    /// The write it waits for (the last one staged when it was handed back).
    seq: u64,
    /// The `Ready`'s number, for `on_persist_ready`.
    number: u64,
    messages: Vec<Message>,
}

/// The sans-IO replica.
pub struct Replica<S: StateMachine> {
    node: RawNode<LogStore>,
    sm: S,
    cfg: ReplicaConfig,
    peers: BTreeMap<u64, Peer>,
    pending: BTreeMap<u64, Pending<S::Output>>,
    pending_change: Option<(u64, Pending<()>)>,
    applied: u64,
    last_role: Role,
    snapshots_taken: u64,
    snapshots_installed: u64,
    crash_at: Option<CrashPoint>,
    /// A cycle between its two halves ([`Replica::begin_cycle`]).
    in_cycle: Option<raft::Ready>,
    /// The committed entries of a cycle whose write is staged, to apply
    /// in its last step ([`Replica::apply_cycle`]); `None` when no cycle's
    /// entries wait (none was staged, or they are applied).
    to_apply: Option<Vec<Entry>>,
    /// `Ready`s handed back whose writes are not all done, in order.
    flights: VecDeque<Flight>,
    /// The sequence number of the last write staged.
    staged: u64,
    /// The size of the entries applied since the last snapshot, each
    /// counted as its data plus [`ENTRY_COST_BYTES`].
    log_bytes: u64,
    /// The size of the last snapshot's data (taken, installed or restored
    /// from).
    snapshot_bytes: u64,
}

/// What an entry counts for beside its data when the log since the last
/// snapshot is weighed against that snapshot ([`snapshot_due_by`]): about
/// what the in-memory copy of an entry holds beside its data.
pub const ENTRY_COST_BYTES: u64 = 128;

/// Whether a member takes a snapshot: one was requested (a follower needs
/// one) or, with at least one entry applied since the last, both
/// `snapshot_entries` entries were applied since and those entries add up
/// to the last snapshot's size (`log_bytes` against `snapshot_bytes`).
/// The second half keeps the cost of snapshotting a large state bounded
/// per entry: a state of a million locks (about 200 MB) is written after
/// about as many bytes of log, not every `snapshot_entries` entries; with
/// the default limits the snapshot is far smaller than `snapshot_entries`
/// entries and the count alone decides (spec/cluster.md §2.5).
pub fn snapshot_due_by(
    since: u64,
    requested: bool,
    snapshot_entries: u64,
    log_bytes: u64,
    snapshot_bytes: u64,
) -> bool {
    since > 0 && (requested || (since >= snapshot_entries && log_bytes >= snapshot_bytes))
}

impl<S: StateMachine> Replica<S> {
    /// Opens the member's Raft state in `store`, bootstraps it if it is
    /// empty, restores `sm` from the stored snapshot and starts Raft.
    pub fn open(cfg: ReplicaConfig, mut sm: S, mut store: LogStore) -> Result<Self, ReplicaError> {
        if !store.is_initialized() {
            if let Bootstrap::New(voters) = &cfg.bootstrap {
                // Every initial member writes the same first snapshot, of
                // a fresh state machine, so they agree from index 1 on.
                let mut meta = SnapshotMetadata {
                    index: 1,
                    term: 1,
                    ..Default::default()
                };
                meta.mut_conf_state().voters = voters.clone();
                let mut snap = raft::eraftpb::Snapshot::default();
                snap.set_metadata(meta);
                snap.data = Bytes::from(encode_snapshot(cfg.peers.iter(), &sm.snapshot()));
                store.install_snapshot(&snap)?;
            }
        }
        let mut applied = 0;
        let mut snapshot_bytes = 0;
        let mut peers: BTreeMap<u64, Peer> = BTreeMap::new();
        if let Some((meta, data)) = store.snapshot_for_restore() {
            snapshot_bytes = data.len() as u64;
            let (known, sm_data) = decode_snapshot(&data).map_err(ReplicaError::Restore)?;
            sm.restore(sm_data).map_err(ReplicaError::Restore)?;
            applied = meta.index;
            peers.extend(known.into_iter().map(|p| (p.id, p)));
        }
        // The configuration wins for the members it lists (it is this
        // member's own view: how it reaches each of them); the snapshot
        // fills in members added later by membership changes.
        for p in &cfg.peers {
            peers.insert(p.id, p.clone());
        }
        let raft_cfg = raft::Config {
            id: cfg.node_id,
            election_tick: cfg.election_ticks,
            min_election_tick: cfg.election_ticks,
            max_election_tick: cfg.election_ticks_max.unwrap_or(2 * cfg.election_ticks),
            heartbeat_tick: cfg.heartbeat_ticks,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            max_uncommitted_size: cfg.max_uncommitted_bytes,
            // Not `batch_append`: raft-rs 0.7 then attaches entries to a
            // queued append that has none without checking its previous
            // index, so after a progress reset (an unreachable report, a
            // rejection) in the same `Ready` a follower's answer claims
            // more than it holds, and the leader commits on that claim
            // (tests/it/raft_batching.rs shows an entry committed on the
            // leader's copy alone; the cluster simulator's seed 1001 ended
            // in a follower's panic from it). One cycle's proposals leave
            // together in one message per member without it.
            batch_append: false,
            // A new commit index rides on the next append or heartbeat
            // instead of an append of its own to every follower: only the
            // leader answers clients, so followers need not learn it at
            // once (ten workers: a sixth fewer sends on the leader, about
            // 5% less CPU per entry on every member).
            skip_bcast_commit: true,
            applied,
            ..Default::default()
        };
        raft_cfg
            .validate()
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        let logger = super::logger::raft_logger(cfg.node_id);
        let node = RawNode::new(&raft_cfg, store, &logger)
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        Ok(Replica {
            node,
            sm,
            cfg,
            peers,
            pending: BTreeMap::new(),
            pending_change: None,
            applied,
            last_role: Role::Follower,
            snapshots_taken: 0,
            snapshots_installed: 0,
            crash_at: None,
            in_cycle: None,
            to_apply: None,
            flights: VecDeque::new(),
            staged: 0,
            log_bytes: 0,
            snapshot_bytes,
        })
    }

    /// One tick of the logical clock.
    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// A message from a member (the transport has checked it).
    pub fn step(&mut self, msg: Message) {
        // Errors are messages the library does not want (from a member it
        // does not know, of a stale term): nothing to do.
        let _ = self.node.step(msg);
    }

    /// The transport could not deliver to `id`.
    pub fn report_unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    /// A snapshot message to `id` was delivered or lost.
    pub fn report_snapshot(&mut self, id: u64, delivered: bool) {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.node.report_snapshot(id, status);
    }

    fn not_leader(&self) -> ProposeError {
        let leader = self.node.raft.leader_id;
        let leader_id = (leader != raft::INVALID_ID).then_some(leader);
        ProposeError::NotLeader {
            leader_id,
            client_addr: leader_id
                .and_then(|id| self.peers.get(&id).map(|p| p.client_addr.clone())),
        }
    }

    /// Proposes `data`; `reply` gets the state machine's output once the
    /// entry is applied here, or why not. Errors at once go to `reply` too.
    pub fn propose(&mut self, data: Vec<u8>, reply: impl Into<Reply<S::Output>>) {
        let reply = reply.into();
        match self.try_propose(data) {
            Ok(index) => {
                let term = self.node.raft.term;
                self.pending.insert(index, Pending { term, reply });
            }
            Err(e) => reply.send(Err(e)),
        }
    }

    /// Appends `data` to the log; the index of its entry.
    fn try_propose(&mut self, data: Vec<u8>) -> Result<u64, ProposeError> {
        if self.node.raft.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        if data.len() > self.cfg.max_entry_bytes {
            return Err(ProposeError::TooLarge);
        }
        // An empty entry is the library's own (a new leader's no-op); a
        // proposal is never empty, so the two cannot be confused.
        if data.is_empty() {
            return Err(ProposeError::TooLarge);
        }
        let before = self.node.raft.raft_log.last_index();
        match self.node.propose(vec![], data) {
            Ok(()) => {}
            Err(raft::Error::ProposalDropped) => {
                return Err(if self.node.raft.state == StateRole::Leader {
                    ProposeError::Busy
                } else {
                    self.not_leader()
                })
            }
            Err(_) => return Err(ProposeError::Busy),
        }
        let index = self.node.raft.raft_log.last_index();
        debug_assert_eq!(index, before + 1);
        Ok(index)
    }

    /// Proposes a membership change (one at a time); `reply` gets `Ok`
    /// once it is applied here.
    pub fn change_voters(&mut self, change: VoterChange, reply: impl Into<Reply<()>>) {
        let reply = reply.into();
        match self.try_change(change) {
            Ok(index) => {
                let term = self.node.raft.term;
                self.pending_change = Some((index, Pending { term, reply }));
            }
            Err(e) => reply.send(Err(e)),
        }
    }

    /// Appends the change to the log; the index of its entry.
    fn try_change(&mut self, change: VoterChange) -> Result<u64, ProposeError> {
        if self.node.raft.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        if self.pending_change.is_some() || self.node.raft.has_pending_conf() {
            return Err(ProposeError::ChangeInProgress);
        }
        let voters: BTreeSet<u64> = self.node.raft.prs().conf().voters().ids().iter().collect();
        let learners: BTreeSet<u64> = self
            .node
            .raft
            .prs()
            .conf()
            .to_conf_state()
            .learners
            .into_iter()
            .collect();
        let mut single = ConfChangeSingle::default();
        let mut cc = ConfChangeV2::default();
        match &change {
            VoterChange::AddLearner(peer) => {
                if voters.contains(&peer.id) {
                    return Err(ProposeError::BadChange(format!(
                        "member {} is already a voter",
                        peer.id
                    )));
                }
                if learners.contains(&peer.id) {
                    return Err(ProposeError::BadChange(format!(
                        "member {} is already a learner",
                        peer.id
                    )));
                }
                single.set_change_type(ConfChangeType::AddLearnerNode);
                single.node_id = peer.id;
                cc.context = Bytes::from(peer.to_string());
            }
            VoterChange::Add(peer) => {
                if voters.contains(&peer.id) {
                    return Err(ProposeError::BadChange(format!(
                        "member {} is already a voter",
                        peer.id
                    )));
                }
                single.set_change_type(ConfChangeType::AddNode);
                single.node_id = peer.id;
                // Every member learns the new one's addresses when it
                // applies the change.
                cc.context = Bytes::from(peer.to_string());
            }
            VoterChange::Remove(id) => {
                if !voters.contains(id) {
                    return Err(ProposeError::BadChange(format!(
                        "member {id} is not a voter"
                    )));
                }
                if voters.len() == 1 {
                    return Err(ProposeError::BadChange(
                        "cannot remove the last voter".into(),
                    ));
                }
                single.set_change_type(ConfChangeType::RemoveNode);
                single.node_id = *id;
            }
        }
        cc.mut_changes().push(single);
        let before = self.node.raft.raft_log.last_index();
        if self.node.propose_conf_change(vec![], cc).is_err() {
            return Err(ProposeError::Busy);
        }
        let index = self.node.raft.raft_log.last_index();
        if index != before + 1 {
            return Err(ProposeError::Busy);
        }
        Ok(index)
    }

    /// Stops the next cycle right after `point`, as a crash would.
    pub fn crash_at(&mut self, point: Option<CrashPoint>) {
        self.crash_at = point;
    }

    fn check_crash(&self, point: CrashPoint) -> Result<(), ReplicaError> {
        if self.crash_at == Some(point) {
            return Err(ReplicaError::Crashed(point));
        }
        Ok(())
    }

    /// Whether [`Replica::handle_ready`] has a cycle to run.
    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Runs one `Ready` cycle (spec/cluster.md §2.5), then takes a snapshot
    /// if one is due. An error is fatal: the member must stop (its durable
    /// state is consistent; a restart resumes from it).
    pub fn handle_ready(&mut self, out: &mut Outbox) -> Result<(), ReplicaError> {
        let mut early = Vec::new();
        let result = self.handle_ready_sending(out, &mut |m| early.extend(m));
        // They left first, crash or not.
        if !early.is_empty() {
            early.append(&mut out.messages);
            out.messages = early;
        }
        result
    }

    /// [`Replica::handle_ready`], handing the messages that may leave
    /// before this cycle's write (the leader's appends) to `early` at once,
    /// so that the followers write in parallel with the leader; the rest
    /// are in `out` as usual. The write runs here, on this thread; the
    /// cycles that become possible once it is done (entries now durable
    /// here that can be applied) run too.
    pub fn handle_ready_sending(
        &mut self,
        out: &mut Outbox,
        early: &mut dyn FnMut(Vec<Message>),
    ) -> Result<(), ReplicaError> {
        for _ in 0..8 {
            self.begin_cycle(early)?;
            self.stage_cycle(out)?;
            self.apply_cycle(out)?;
            let writes = std::mem::take(&mut out.writes);
            if let Some(&(last, _)) = writes.last() {
                let batches: Vec<WriteBatch> = writes.into_iter().map(|(_, b)| b).collect();
                self.writer().write(&batches)?;
                self.on_written(last, out)?;
            }
            self.finish_cycle()?;
            if !self.node.has_ready() {
                break;
            }
        }
        Ok(())
    }

    /// The first part of a cycle: step 1, the messages that may leave
    /// before the write (handed to `early`). The caller runs
    /// [`Replica::stage_cycle`], [`Replica::apply_cycle`] and
    /// [`Replica::end_cycle`] next, in that order, with nothing stepped,
    /// proposed or ticked in between. A received snapshot is installed
    /// only with no write in flight: the caller waits for them first
    /// ([`Replica::wants_drain`]).
    pub fn begin_cycle(&mut self, early: &mut dyn FnMut(Vec<Message>)) -> Result<(), ReplicaError> {
        debug_assert!(self.in_cycle.is_none(), "a cycle is half done");
        if !self.node.has_ready() {
            return Ok(());
        }
        if self.snapshot_to_install() && !self.flights.is_empty() {
            return Err(ReplicaError::Raft(
                "a snapshot to install with writes in flight".into(),
            ));
        }
        let mut rd = self.node.ready();
        // (1) Messages that may leave before the write: the leader's
        // appends (it counts itself only once its own write is done).
        let first = rd.take_messages();
        if !first.is_empty() {
            early(first);
        }
        self.check_crash(CrashPoint::AfterSend)?;
        self.in_cycle = Some(rd);
        Ok(())
    }

    /// The second part of the cycle begun by [`Replica::begin_cycle`] (if
    /// any): a received snapshot (step 2), then the write of the new
    /// entries and hard state staged in `out.writes` (step 4), for the
    /// caller to run in order and report with [`Replica::on_written`];
    /// votes and acknowledgements wait for it. The committed entries
    /// (step 3) are kept for [`Replica::apply_cycle`].
    pub fn stage_cycle(&mut self, out: &mut Outbox) -> Result<(), ReplicaError> {
        let Some(mut rd) = self.in_cycle.take() else {
            return Ok(());
        };
        self.install_ready_snapshot(&mut rd, out)?;
        self.to_apply = Some(rd.take_committed_entries());
        self.persist_ready(rd, out)
    }

    /// The third part: step 3, the committed entries applied in order.
    /// They apply after the cycle's write is staged, so that the caller
    /// can hand the write to the storage worker first: the fsync, the
    /// longest step, starts while they apply (they are committed, so no
    /// rule orders their applying against this write).
    pub fn apply_cycle(&mut self, out: &mut Outbox) -> Result<(), ReplicaError> {
        let Some(committed) = self.to_apply.take() else {
            return Ok(());
        };
        self.apply_entries(committed, out)?;
        self.check_crash(CrashPoint::AfterApply)?;
        // The committed entries of the last `Ready` are applied.
        self.node.advance_apply();
        Ok(())
    }

    /// The end of a cycle: the role's changes, then a snapshot if one is
    /// due and no write is in flight.
    pub fn end_cycle(&mut self) -> Result<(), ReplicaError> {
        self.finish_cycle()
    }

    fn finish_cycle(&mut self) -> Result<(), ReplicaError> {
        self.after_cycle();
        self.check_crash(CrashPoint::AfterAdvance)?;
        self.snapshot_if_due()
    }

    /// The writes up to `seq` (and every one before it) are durable:
    /// steps 5 and 6, the messages that waited for them leave (in `out`)
    /// and the library counts the entries as durable here.
    pub fn on_written(&mut self, seq: u64, out: &mut Outbox) -> Result<(), ReplicaError> {
        self.check_crash(CrashPoint::AfterPersist)?;
        let mut number = None;
        while self.flights.front().is_some_and(|f| f.seq <= seq) {
            let f = self.flights.pop_front().expect("checked");
            number = Some(f.number);
            out.messages.extend(f.messages);
        }
        self.check_crash(CrashPoint::AfterPersistedSend)?;
        if let Some(n) = number {
            self.node.on_persist_ready(n);
        }
        Ok(())
    }

    /// Whether writes are staged and not reported done.
    pub fn writes_in_flight(&self) -> bool {
        !self.flights.is_empty()
    }

    /// Whether the next cycle needs every write done first: a snapshot
    /// from the leader to install, or one of ours to take (both write the
    /// database outside the cycle's order).
    pub fn wants_drain(&self) -> bool {
        self.snapshot_to_install() || self.snapshot_due()
    }

    /// Whether a snapshot from the leader waits to be installed.
    fn snapshot_to_install(&self) -> bool {
        self.node.snap().is_some_and(|s| !s.is_empty())
    }

    /// Takes a snapshot if one is due; only with no write in flight.
    pub fn snapshot_if_due(&mut self) -> Result<(), ReplicaError> {
        if self.flights.is_empty() {
            self.maybe_snapshot()?;
        }
        Ok(())
    }

    /// Where the staged writes go: the database, for the storage worker.
    pub fn writer(&self) -> DiskWriter {
        self.node.store().writer()
    }

    /// Step 2 of a cycle.
    fn install_ready_snapshot(
        &mut self,
        rd: &mut raft::Ready,
        out: &mut Outbox,
    ) -> Result<(), ReplicaError> {
        // (2) A snapshot from the leader replaces the state machine.
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let learnt = self.restore(&snap.data)?;
            self.node.mut_store().install_snapshot(&snap)?;
            let meta = snap.get_metadata();
            self.applied = meta.index;
            self.snapshots_installed += 1;
            self.log_bytes = 0;
            self.snapshot_bytes = snap.data.len() as u64;
            out.peers_added.extend(learnt);
            // Nothing proposed here can still be answered: the entries up
            // to the snapshot are gone from this member's log.
            self.fail_pending_up_to(meta.index);
            self.check_crash(CrashPoint::AfterSnapshot)?;
        }
        Ok(())
    }

    /// Step 4 of a cycle: the `Ready` handed back with its write staged.
    fn persist_ready(&mut self, mut rd: raft::Ready, out: &mut Outbox) -> Result<(), ReplicaError> {
        if crate::planted::is(crate::planted::Bug::ReplyBeforeCommit)
            && self.node.raft.state == StateRole::Leader
        {
            self.apply_entries(rd.entries().to_vec(), out)?;
        }
        // (4) New entries and hard state: one write, in order with the
        // writes before it; the mirror shows them at once (the library
        // reads them back from the storage from now on).
        let number = rd.number();
        let snapshot = !rd.snapshot().is_empty();
        let mut batch = self.node.mut_store().stage(rd.take_entries(), rd.hs())?;
        // (5) Votes and append acknowledgements wait for it (and for every
        // write before it: they may acknowledge those entries too).
        let messages = rd.take_persisted_messages();
        self.node.advance_append_async(rd);
        if snapshot {
            // Installed with no write in flight (step 2): the rest of its
            // `Ready` is written here too, so that raft-rs counts the
            // snapshot as durable before it is told it is applied.
            if let Some(b) = batch.take() {
                self.writer().write(std::slice::from_ref(&b))?;
            }
        }
        match batch {
            Some(b) => {
                self.staged += 1;
                out.writes.push((self.staged, b));
                self.flights.push_back(Flight {
                    seq: self.staged,
                    number,
                    messages,
                });
            }
            None if self.flights.is_empty() => {
                // Nothing to wait for.
                out.messages.extend(messages);
                self.node.on_persist_ready(number);
            }
            None => self.flights.push_back(Flight {
                seq: self.staged,
                number,
                messages,
            }),
        }
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut Outbox) -> Result<(), ReplicaError> {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            self.applied = e.index;
            self.log_bytes = self
                .log_bytes
                .saturating_add(e.data.len() as u64 + ENTRY_COST_BYTES);
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        // A new leader's no-op: nothing to apply, and no
                        // proposal of ours can sit at its index.
                        self.complete(e.index, e.term, None);
                        continue;
                    }
                    let output = self.sm.apply(e.index, &e.data).map_err(|detail| {
                        ReplicaError::BadEntry {
                            index: e.index,
                            detail,
                        }
                    })?;
                    self.complete(e.index, e.term, Some(output));
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| {
                        ReplicaError::BadEntry {
                            index: e.index,
                            detail: err.to_string(),
                        }
                    })?;
                    self.apply_change(e.index, e.term, &cc, out)?;
                }
                EntryType::EntryConfChange => {
                    // Never proposed here; applied all the same if a
                    // library version writes one.
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(|err| {
                        ReplicaError::BadEntry {
                            index: e.index,
                            detail: err.to_string(),
                        }
                    })?;
                    let mut v2 = ConfChangeV2::default();
                    let mut single = ConfChangeSingle::default();
                    single.set_change_type(cc.get_change_type());
                    single.node_id = cc.node_id;
                    v2.mut_changes().push(single);
                    v2.context = cc.context.clone();
                    self.apply_change(e.index, e.term, &v2, out)?;
                }
            }
        }
        Ok(())
    }

    fn apply_change(
        &mut self,
        index: u64,
        term: u64,
        cc: &ConfChangeV2,
        out: &mut Outbox,
    ) -> Result<(), ReplicaError> {
        // A change the library refuses (it cannot happen for changes
        // proposed through `change_voters`) is skipped alike everywhere.
        let applied = self.node.apply_conf_change(cc);
        if applied.is_ok() {
            for single in cc.get_changes() {
                match single.get_change_type() {
                    ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                        let text = String::from_utf8_lossy(&cc.context);
                        if let Ok(peer) = parse_peer(&text) {
                            if peer.id == single.node_id {
                                self.peers.insert(peer.id, peer.clone());
                                out.peers_added.push(peer);
                            }
                        }
                    }
                    ConfChangeType::RemoveNode => {
                        if single.node_id != self.cfg.node_id {
                            self.peers.remove(&single.node_id);
                            out.peers_removed.push(single.node_id);
                        }
                    }
                }
            }
        }
        if let Some((at, _)) = &self.pending_change {
            if *at <= index {
                let (at, p) = self.pending_change.take().expect("checked");
                let result = if at == index && p.term == term {
                    applied
                        .map(|_| ())
                        .map_err(|e| ProposeError::BadChange(e.to_string()))
                } else {
                    Err(ProposeError::Unknown)
                };
                p.reply.send(result);
            }
        }
        Ok(())
    }

    /// Answers the proposal at `index` if it is ours and of this term.
    fn complete(&mut self, index: u64, term: u64, output: Option<S::Output>) {
        // Proposals below `index` lost their entries to another leader's.
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= index {
                break;
            }
            entry.remove().reply.send(Err(ProposeError::Unknown));
        }
        if let Some(p) = self.pending.remove(&index) {
            let result = match output {
                Some(o) if p.term == term => Ok(o),
                _ => Err(ProposeError::Unknown),
            };
            p.reply.send(result);
        }
    }

    fn fail_pending_up_to(&mut self, index: u64) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > index {
                break;
            }
            entry.remove().reply.send(Err(ProposeError::Unknown));
        }
        if self
            .pending_change
            .as_ref()
            .is_some_and(|(at, _)| *at <= index)
        {
            let (_, p) = self.pending_change.take().expect("checked");
            p.reply.send(Err(ProposeError::Unknown));
        }
    }

    fn fail_all_pending(&mut self) {
        self.fail_pending_up_to(u64::MAX);
    }

    /// Restores the state machine from a snapshot's data; returns the
    /// members whose addresses the snapshot taught this one.
    fn restore(&mut self, data: &[u8]) -> Result<Vec<Peer>, ReplicaError> {
        let (known, sm_data) = decode_snapshot(data).map_err(ReplicaError::Restore)?;
        self.sm.restore(sm_data).map_err(ReplicaError::Restore)?;
        // Only members this one knows nothing of: the addresses it has are
        // its own view (its configuration, or changes it applied).
        let mut learnt = Vec::new();
        for p in known {
            if p.id != self.cfg.node_id && !self.peers.contains_key(&p.id) {
                self.peers.insert(p.id, p.clone());
                learnt.push(p);
            }
        }
        Ok(learnt)
    }

    fn after_cycle(&mut self) {
        let role = Role::from(self.node.raft.state);
        if role != self.last_role {
            if self.last_role == Role::Leader {
                // §3 rule 2: a member that stops leading answers nothing it
                // proposed; the outcome is unknown to it.
                self.fail_all_pending();
            }
            if role == Role::Leader || self.last_role == Role::Leader {
                log::info!(
                    member = self.cfg.node_id, role = role.as_str(), term = self.node.raft.term;
                    "raft role changed"
                );
            }
            self.last_role = role;
        }
    }

    fn snapshot_due(&self) -> bool {
        let store = self.node.store();
        let since = self.applied.saturating_sub(store.snapshot_index());
        snapshot_due_by(
            since,
            store.snapshot_requested(),
            self.cfg.snapshot_entries,
            self.log_bytes,
            self.snapshot_bytes,
        )
    }

    fn maybe_snapshot(&mut self) -> Result<(), ReplicaError> {
        let due = self.snapshot_due();
        // A request is answered either way: by this snapshot, or by the
        // one already taken at the applied index.
        self.node.store().take_snapshot_request();
        if due {
            self.take_snapshot()
        } else {
            Ok(())
        }
    }

    /// Snapshots the state machine at its applied index and compacts the
    /// log behind it (keeping `keep_entries`).
    pub fn take_snapshot(&mut self) -> Result<(), ReplicaError> {
        let index = self.applied;
        let term = raft::Storage::term(self.node.store(), index)
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.node.raft.prs().conf().to_conf_state());
        let data = Bytes::from(encode_snapshot(self.peers.values(), &self.sm.snapshot()));
        let size = data.len() as u64;
        let keep = self.cfg.keep_entries;
        self.node.mut_store().save_snapshot(meta, data, keep)?;
        self.snapshots_taken += 1;
        self.log_bytes = 0;
        self.snapshot_bytes = size;
        self.check_crash(CrashPoint::AfterCompact)?;
        Ok(())
    }

    /// This member's view, for `stats` and metrics.
    pub fn status(&self) -> Status {
        let raft = &self.node.raft;
        let leader_id = (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id);
        Status {
            node_id: self.cfg.node_id,
            role: Role::from(raft.state),
            term: raft.term,
            leader_id,
            leader_client_addr: leader_id
                .and_then(|id| self.peers.get(&id).map(|p| p.client_addr.clone())),
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            snapshot_index: self.node.store().snapshot_index(),
            voters: {
                let mut v: Vec<u64> = raft.prs().conf().voters().ids().iter().collect();
                v.sort_unstable();
                v
            },
            learners: {
                let mut l = raft.prs().conf().to_conf_state().learners;
                l.sort_unstable();
                l
            },
            caught_up: if raft.state == StateRole::Leader {
                let committed = raft.raft_log.committed;
                let mut l = raft.prs().conf().to_conf_state().learners;
                l.retain(|id| raft.prs().get(*id).is_some_and(|p| p.matched >= committed));
                l.sort_unstable();
                l
            } else {
                Vec::new()
            },
            pending_proposals: self.pending.len() + usize::from(self.pending_change.is_some()),
            snapshots_taken: self.snapshots_taken,
            snapshots_installed: self.snapshots_installed,
            stopped: None,
            members: self.peers.values().cloned().collect(),
        }
    }

    /// The state machine (tests compare members).
    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    /// The storage (tests inspect compaction).
    pub fn store(&self) -> &LogStore {
        self.node.store()
    }

    /// Every known member's addresses.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }
}

/// A snapshot's data: the members' addresses (the replication layer's own
/// state: a member that restarts from a snapshot must still reach members
/// added by changes that were compacted away), then the state machine's.
/// Layout: 4-byte big-endian length, the addresses in `--cluster-peers`
/// syntax, then the state machine's bytes.
pub fn encode_snapshot<'a>(peers: impl Iterator<Item = &'a Peer>, sm: &[u8]) -> Vec<u8> {
    let list: Vec<String> = peers.map(Peer::to_string).collect();
    let list = list.join(",");
    let mut out = Vec::with_capacity(4 + list.len() + sm.len());
    out.extend_from_slice(&(list.len() as u32).to_be_bytes());
    out.extend_from_slice(list.as_bytes());
    out.extend_from_slice(sm);
    out
}

/// The inverse of [`encode_snapshot`]; typed errors for damaged data.
pub fn decode_snapshot(data: &[u8]) -> Result<(Vec<Peer>, &[u8]), String> {
    let len = data.get(..4).ok_or("snapshot shorter than its header")?;
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    let list = data
        .get(4..4 + len)
        .ok_or("snapshot shorter than its member list")?;
    let list = std::str::from_utf8(list).map_err(|_| "member list is not UTF-8")?;
    let peers = if list.is_empty() {
        Vec::new()
    } else {
        super::parse_peers(list).map_err(|e| format!("member list: {e}"))?
    };
    Ok((peers, &data[4 + len..]))
}

// ---------------------------------------------------------------------------
// The task.

enum Command<T> {
    Propose(Vec<u8>, Reply<T>),
    Change(VoterChange, Reply<()>),
    Campaign,
}

/// A cheap handle on a running replica.
pub struct ReplicaHandle<T> {
    commands: smol::channel::Sender<Command<T>>,
    status: Arc<Mutex<Arc<Status>>>,
    changed: Arc<event_listener::Event>,
    /// Notified only when the role, term, leader or stopped state change:
    /// what the leader's duties follow, without a wake-up per cycle (the
    /// indexes change on every one).
    role_changed: Arc<event_listener::Event>,
    local_raft_addr: std::net::SocketAddr,
    stats: Arc<super::transport::TransportStats>,
    /// The driver's task (`None` when the caller runs the driver itself,
    /// as the simulator does through [`drive`]).
    _task: Option<Arc<smol::Task<()>>>,
}

impl<T> Clone for ReplicaHandle<T> {
    fn clone(&self) -> Self {
        ReplicaHandle {
            commands: self.commands.clone(),
            status: self.status.clone(),
            changed: self.changed.clone(),
            role_changed: self.role_changed.clone(),
            local_raft_addr: self.local_raft_addr,
            stats: self.stats.clone(),
            _task: self._task.clone(),
        }
    }
}

impl<T: Send + 'static> ReplicaHandle<T> {
    /// Proposes `data` and waits for its entry to apply here.
    pub async fn propose(&self, data: Vec<u8>) -> Result<T, ProposeError> {
        let (tx, rx) = smol::channel::bounded(1);
        if self
            .commands
            .try_send(Command::Propose(data, tx.into()))
            .is_err()
        {
            return Err(if self.commands.is_closed() {
                ProposeError::Stopped
            } else {
                ProposeError::Busy
            });
        }
        rx.recv().await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// Queues `data` for proposal now (proposals queued by one thread are
    /// proposed in that order); `reply` is called with its answer, on the
    /// replica's task (or here, at once, when the queue refuses it).
    pub fn submit(&self, data: Vec<u8>, reply: Reply<T>) {
        if let Err(e) = self.commands.try_send(Command::Propose(data, reply)) {
            let closed = e.is_closed();
            if let Command::Propose(_, reply) = e.into_inner() {
                reply.send(Err(if closed {
                    ProposeError::Stopped
                } else {
                    ProposeError::Busy
                }));
            }
        }
    }

    /// Queues `data` for proposal now (proposals queued by one thread are
    /// proposed in that order) and returns the wait for its answer.
    pub fn enqueue(
        &self,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<T, ProposeError>> + Send + 'static {
        let (tx, rx) = smol::channel::bounded(1);
        let refused = match self.commands.try_send(Command::Propose(data, tx.into())) {
            Ok(()) => None,
            Err(_) if self.commands.is_closed() => Some(ProposeError::Stopped),
            Err(_) => Some(ProposeError::Busy),
        };
        async move {
            match refused {
                Some(e) => Err(e),
                None => rx.recv().await.unwrap_or(Err(ProposeError::Stopped)),
            }
        }
    }

    /// Adds or removes a voter and waits until the change is applied here.
    pub async fn change_voters(&self, change: VoterChange) -> Result<(), ProposeError> {
        let (tx, rx) = smol::channel::bounded(1);
        if self
            .commands
            .send(Command::Change(change, tx.into()))
            .await
            .is_err()
        {
            return Err(ProposeError::Stopped);
        }
        rx.recv().await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// Asks this member to start an election now (tests, leader transfer).
    pub fn campaign(&self) {
        let _ = self.commands.try_send(Command::Campaign);
    }

    /// The member's current view.
    pub fn status(&self) -> Status {
        Status::clone(&self.status_ref())
    }

    /// The member's current view, shared: what the request path reads (a
    /// reference count, not a copy of its lists).
    pub fn status_ref(&self) -> Arc<Status> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `pred` holds for the status, or `timeout` passes;
    /// returns the last status seen and whether `pred` held.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&Status) -> bool,
    ) -> (Status, bool) {
        self.wait_on(&self.changed, timeout, pred).await
    }

    /// [`ReplicaHandle::wait_for`] for a predicate on the role, term,
    /// leader and stopped state only: it is re-checked when one of them
    /// changes, not after every cycle.
    pub async fn wait_for_role(
        &self,
        timeout: Duration,
        pred: impl FnMut(&Status) -> bool,
    ) -> (Status, bool) {
        self.wait_on(&self.role_changed, timeout, pred).await
    }

    async fn wait_on(
        &self,
        event: &event_listener::Event,
        timeout: Duration,
        mut pred: impl FnMut(&Status) -> bool,
    ) -> (Status, bool) {
        // The runtime's clock and timer: the simulator's on its thread.
        let deadline = crate::rt::now() + timeout;
        loop {
            let listener = event.listen();
            let s = self.status();
            if pred(&s) {
                return (s, true);
            }
            let now = crate::rt::now();
            if now >= deadline {
                return (s, false);
            }
            listener
                .or(async {
                    crate::rt::sleep_until(deadline).await;
                })
                .await;
        }
    }

    /// The Raft listener's bound address.
    pub fn raft_addr(&self) -> std::net::SocketAddr {
        self.local_raft_addr
    }

    /// The transport's counters.
    pub fn transport_stats(&self) -> &Arc<super::transport::TransportStats> {
        &self.stats
    }
}

/// Commands queued before proposals are refused with `Busy`.
const COMMAND_QUEUE: usize = 65_536;
/// Messages from members queued before new ones are dropped.
const INBOX: usize = 16_384;
/// At most this many inputs are taken into one cycle.
const BATCH: usize = 1024;
/// Cycles run back to back while the library has a `Ready` left.
const READY_AGAIN: usize = 4;

/// Starts a replica with its transport on `ex`: the transport listens on
/// `raft_listen` and dials the other members of `cfg.peers`. The task runs
/// until every handle is dropped or the storage fails.
pub fn spawn<S: StateMachine>(
    cfg: ReplicaConfig,
    sm: S,
    store: LogStore,
    transport_cfg: super::transport::TransportConfig,
    raft_listen: &str,
    ex: Arc<smol::Executor<'static>>,
) -> Result<ReplicaHandle<S::Output>, ReplicaError> {
    let (inbox_tx, inbox) = smol::channel::bounded(INBOX);
    let (events_tx, events) = smol::channel::bounded(INBOX);
    let transport = Transport::start(transport_cfg, raft_listen, ex.clone(), inbox_tx, events_tx)
        .map_err(|e| {
        ReplicaError::Store(StoreError::Io {
            path: raft_listen.into(),
            source: e,
        })
    })?;
    let local_raft_addr = transport.local_addr();
    let stats = transport.stats().clone();
    let (mut handle, driver, worker) = drive(cfg, sm, store, transport, inbox, events)?;
    handle.local_raft_addr = local_raft_addr;
    handle.stats = stats;
    // The writes run on a thread of their own, so that the executor goes
    // on stepping messages and taking proposals during an fsync.
    let closer = worker.jobs.clone();
    let thread = std::thread::Builder::new()
        .name("dflockd-raft-disk".into())
        .spawn(move || futures_lite::future::block_on(worker.run()))
        .map_err(|e| {
            ReplicaError::Store(StoreError::Io {
                path: "storage thread".into(),
                source: e,
            })
        })?;
    let guard = WorkerGuard {
        jobs: closer,
        thread: Some(thread),
    };
    handle._task = Some(Arc::new(ex.spawn(async move {
        let guard = guard;
        driver.await;
        drop(guard);
    })));
    Ok(handle)
}

/// Stops the storage thread when the driver ends (or is dropped): the
/// queue closes, the thread finishes the writes queued and exits, and
/// the database is closed when this returns (a member reopened in the
/// same process finds it free).
struct WorkerGuard {
    jobs: smol::channel::Sender<(u64, WriteBatch)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.jobs.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The storage worker of a member (spec/cluster.md §2.5): runs the
/// cycles' writes in the order they were staged, those queued together
/// in one transaction (one fsync), and reports the last one done. The
/// server runs it on a thread of its own; the simulator as a task of the
/// member on its scheduler, so that a crash drops it with the driver
/// (each write is one transaction: it happened whole or not at all).
pub struct StorageWorker {
    writer: DiskWriter,
    jobs: smol::channel::Sender<(u64, WriteBatch)>,
    queue: smol::channel::Receiver<(u64, WriteBatch)>,
    done: smol::channel::Sender<Result<u64, StoreError>>,
}

/// Writes merged into one transaction at most.
const WRITES_PER_TRANSACTION: usize = 256;

impl StorageWorker {
    /// Runs until the driver is gone or a write fails (the failure is
    /// reported; the driver stops on it).
    pub async fn run(self) {
        let StorageWorker {
            writer,
            jobs,
            queue,
            done,
        } = self;
        // Only the driver's sender keeps the queue open.
        drop(jobs);
        let mut batches = Vec::new();
        while let Ok((mut last, b)) = queue.recv().await {
            batches.push(b);
            while batches.len() < WRITES_PER_TRANSACTION {
                match queue.try_recv() {
                    Ok((seq, b)) => {
                        last = seq;
                        batches.push(b);
                    }
                    Err(_) => break,
                }
            }
            let result = writer.write(&batches);
            batches.clear();
            let failed = result.is_err();
            if done.try_send(result.map(|()| last)).is_err() || failed {
                return;
            }
        }
    }
}

/// Where the driver sends messages and learns members' addresses: the
/// TCP [`Transport`] in the server, the simulated network in `src/sim`.
pub trait MemberNet: 'static {
    /// Queues `msg` for its `to` member; never blocks.
    fn send(&mut self, msg: Message);
    /// Sets (or changes) where member `id` listens.
    fn set_peer(&mut self, id: u64, addr: &str);
    /// Forgets member `id`.
    fn remove_peer(&mut self, id: u64);
}

impl MemberNet for Transport {
    fn send(&mut self, msg: Message) {
        Transport::send(self, msg)
    }
    fn set_peer(&mut self, id: u64, addr: &str) {
        Transport::set_peer(self, id, addr)
    }
    fn remove_peer(&mut self, id: u64) {
        Transport::remove_peer(self, id)
    }
}

/// Opens a replica over `net` and returns its handle, its driver, the
/// future that runs it, and its storage worker, which runs the driver's
/// writes (what [`spawn`] runs; the simulator runs both on its own
/// scheduler). `inbox` and `events` are what `net` delivers.
#[allow(clippy::type_complexity)]
pub fn drive<S: StateMachine, N: MemberNet>(
    cfg: ReplicaConfig,
    sm: S,
    store: LogStore,
    mut net: N,
    inbox: smol::channel::Receiver<Message>,
    events: smol::channel::Receiver<TransportEvent>,
) -> Result<
    (
        ReplicaHandle<S::Output>,
        impl std::future::Future<Output = ()>,
        StorageWorker,
    ),
    ReplicaError,
> {
    let replica = Replica::open(cfg, sm, store)?;
    for p in replica.peers() {
        net.set_peer(p.id, &p.raft_addr);
    }
    let status = Arc::new(Mutex::new(Arc::new(replica.status())));
    let changed = Arc::new(event_listener::Event::new());
    let role_changed = Arc::new(event_listener::Event::new());
    let (commands, command_rx) = smol::channel::bounded(COMMAND_QUEUE);
    let (jobs, queue) = smol::channel::unbounded();
    let (done_tx, done) = smol::channel::unbounded();
    let worker = StorageWorker {
        writer: replica.writer(),
        jobs: jobs.clone(),
        queue,
        done: done_tx,
    };
    let driver = Driver {
        jobs,
        done,
        replica,
        transport: net,
        inbox,
        events,
        commands: command_rx,
        status: status.clone(),
        changed: changed.clone(),
        role_changed: role_changed.clone(),
    };
    Ok((
        ReplicaHandle {
            commands,
            status,
            changed,
            role_changed,
            local_raft_addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            stats: Arc::default(),
            _task: None,
        },
        driver.run(),
        worker,
    ))
}

struct Driver<S: StateMachine, N: MemberNet> {
    replica: Replica<S>,
    /// Writes for the storage worker, and its reports.
    jobs: smol::channel::Sender<(u64, WriteBatch)>,
    done: smol::channel::Receiver<Result<u64, StoreError>>,
    transport: N,
    inbox: smol::channel::Receiver<Message>,
    events: smol::channel::Receiver<TransportEvent>,
    commands: smol::channel::Receiver<Command<S::Output>>,
    status: Arc<Mutex<Arc<Status>>>,
    changed: Arc<event_listener::Event>,
    role_changed: Arc<event_listener::Event>,
}

enum Wake<T> {
    Tick,
    Message(Message),
    Event(TransportEvent),
    Command(Command<T>),
    Written(Result<u64, StoreError>),
    Closed,
}

impl<S: StateMachine, N: MemberNet> Driver<S, N> {
    async fn run(mut self) {
        let tick = self.replica.cfg.tick;
        // The runtime's clock and timer (the simulator's on its thread).
        let mut next_tick = crate::rt::now() + tick;
        // One timer for the task's life, moved only when the tick passes:
        // a fresh timer per wake-up would register and cancel one on
        // every cycle.
        let mut ticker = crate::rt::Sleep::until(next_tick);
        loop {
            let wake = async {
                (&mut ticker).await;
                Wake::Tick
            }
            .or(async {
                match self.inbox.recv().await {
                    Ok(m) => Wake::Message(m),
                    Err(_) => Wake::Closed,
                }
            })
            .or(async {
                match self.events.recv().await {
                    Ok(e) => Wake::Event(e),
                    Err(_) => Wake::Closed,
                }
            })
            .or(async {
                match self.commands.recv().await {
                    Ok(c) => Wake::Command(c),
                    Err(_) => Wake::Closed,
                }
            })
            .or(async {
                match self.done.recv().await {
                    Ok(r) => Wake::Written(r),
                    Err(_) => Wake::Closed,
                }
            })
            .await;
            let mut result = Ok(());
            match wake {
                Wake::Closed => {
                    if self.commands.is_closed() {
                        return;
                    }
                }
                w => result = self.take(w),
            }
            // Whatever else arrived meanwhile joins this cycle.
            for _ in 0..BATCH {
                if result.is_err() {
                    break;
                }
                let w = if let Ok(r) = self.done.try_recv() {
                    Wake::Written(r)
                } else if let Ok(m) = self.inbox.try_recv() {
                    Wake::Message(m)
                } else if let Ok(c) = self.commands.try_recv() {
                    Wake::Command(c)
                } else if let Ok(e) = self.events.try_recv() {
                    Wake::Event(e)
                } else {
                    break;
                };
                result = self.take(w);
            }
            let now = crate::rt::now();
            if now >= next_tick {
                while now >= next_tick {
                    self.replica.tick();
                    next_tick += tick;
                }
                ticker.reset(next_tick);
            }
            // A cycle can leave another `Ready` behind (what its advance
            // produced): run it now rather than at the next wake, which
            // may be a whole tick away.
            if result.is_ok() {
                result = self.cycle().await;
            }
            for _ in 0..READY_AGAIN {
                if result.is_err() || !self.replica.has_ready() {
                    break;
                }
                result = self.cycle().await;
            }
            if let Err(e) = result {
                log::error!(
                    member = self.replica.cfg.node_id, error:% = e;
                    "raft replica stopped"
                );
                let mut s = self.replica.status();
                s.stopped = Some(e.to_string());
                self.replica.fail_all_pending();
                *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
                self.changed.notify(usize::MAX);
                self.role_changed.notify(usize::MAX);
                self.commands.close();
                return;
            }
        }
    }

    fn take(&mut self, w: Wake<S::Output>) -> Result<(), ReplicaError> {
        match w {
            Wake::Tick | Wake::Closed => {}
            Wake::Written(r) => self.written(r)?,
            Wake::Message(m) => self.replica.step(m),
            Wake::Event(TransportEvent::Unreachable(id)) => self.replica.report_unreachable(id),
            Wake::Event(TransportEvent::SnapshotSent(id, ok)) => {
                self.replica.report_snapshot(id, ok)
            }
            Wake::Command(Command::Propose(data, reply)) => self.replica.propose(data, reply),
            Wake::Command(Command::Change(change, reply)) => {
                self.replica.change_voters(change, reply)
            }
            Wake::Command(Command::Campaign) => {
                let _ = self.replica.node.campaign();
            }
        }
        Ok(())
    }

    /// The storage worker's report: the messages that waited for the
    /// writes leave now.
    fn written(&mut self, r: Result<u64, StoreError>) -> Result<(), ReplicaError> {
        let seq = r?;
        let mut out = Outbox::default();
        self.replica.on_written(seq, &mut out)?;
        for m in out.messages {
            self.transport.send(m);
        }
        Ok(())
    }

    /// Waits until every staged write is done.
    async fn drain(&mut self) -> Result<(), ReplicaError> {
        while self.replica.writes_in_flight() {
            let r = self
                .done
                .recv()
                .await
                .map_err(|_| ReplicaError::Raft("the storage worker stopped".into()))?;
            self.written(r)?;
        }
        Ok(())
    }

    async fn cycle(&mut self) -> Result<(), ReplicaError> {
        if self.replica.wants_drain() {
            // A snapshot to install or to take writes outside the order
            // of the staged writes: they finish first.
            self.drain().await?;
            self.replica.snapshot_if_due()?;
        }
        let mut out = Outbox::default();
        let transport = &mut self.transport;
        self.replica.begin_cycle(&mut |msgs| {
            for m in msgs {
                transport.send(m);
            }
        })?;
        self.replica.stage_cycle(&mut out)?;
        // The write goes to the worker before the committed entries
        // apply, so that its fsync runs meanwhile.
        for w in out.writes.drain(..) {
            // Unbounded: the driver stages one write per cycle at most,
            // and the worker merges whatever queued up.
            if self.jobs.try_send(w).is_err() {
                return Err(ReplicaError::Raft("the storage worker stopped".into()));
            }
        }
        self.replica.apply_cycle(&mut out)?;
        self.replica.end_cycle()?;
        for p in &out.peers_added {
            self.transport.set_peer(p.id, &p.raft_addr);
        }
        for id in &out.peers_removed {
            self.transport.remove_peer(*id);
        }
        for m in out.messages {
            self.transport.send(m);
        }
        let s = self.replica.status();
        let mut shared = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if **shared != s {
            let role = shared.role != s.role
                || shared.term != s.term
                || shared.leader_id != s.leader_id
                || shared.leader_client_addr != s.leader_client_addr
                || shared.stopped != s.stopped;
            *shared = Arc::new(s);
            drop(shared);
            self.changed.notify(usize::MAX);
            if role {
                self.role_changed.notify(usize::MAX);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
