//! The replica driven by hand: members on a simulated network (a FIFO of
//! messages, members that are down or cut off), real storage on disk, a
//! toy state machine (an append-only list). Time is `tick()`; nothing
//! sleeps.
// Protobuf messages are built field by field, as raft-proto's own code does.
#![allow(clippy::field_reassign_with_default)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;
use crate::cluster::storage::tests::TempDir;

/// The toy state machine: every applied entry, in order.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub(crate) struct List {
    pub items: Vec<Vec<u8>>,
}

/// Entries starting so are refused by `List::apply`.
const UNREADABLE: &[u8] = b"!unreadable";

impl StateMachine for List {
    /// The position the entry took.
    type Output = usize;

    fn apply(&mut self, _index: u64, data: &[u8]) -> Result<usize, String> {
        // An entry this "build" cannot read, as one from another release.
        if data.starts_with(UNREADABLE) {
            return Err("an entry of another release".into());
        }
        self.items.push(data.to_vec());
        Ok(self.items.len() - 1)
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for item in &self.items {
            out.extend_from_slice(&(item.len() as u32).to_be_bytes());
            out.extend_from_slice(item);
        }
        out
    }

    fn restore(&mut self, mut data: &[u8]) -> Result<(), String> {
        let mut items = Vec::new();
        while !data.is_empty() {
            let len = data.get(..4).ok_or("truncated length")?;
            let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
            let item = data.get(4..4 + len).ok_or("truncated item")?;
            items.push(item.to_vec());
            data = &data[4 + len..];
        }
        self.items = items;
        Ok(())
    }
}

fn peer(id: u64) -> Peer {
    Peer {
        id,
        raft_addr: format!("127.0.0.1:{}", 7000 + id),
        client_addr: format!("127.0.0.1:{}", 6000 + id),
    }
}

struct Member {
    dir: TempDir,
    cfg: ReplicaConfig,
    replica: Option<Replica<List>>,
}

/// Where a proposal's answer arrives.
type Answer = smol::channel::Receiver<Result<usize, ProposeError>>;

/// Members on a simulated network.
struct Sim {
    members: BTreeMap<u64, Member>,
    net: VecDeque<Message>,
    /// Links that drop everything: (from, to).
    cut: BTreeSet<(u64, u64)>,
    /// Every successful answer: data → position, from any leader.
    acked: BTreeMap<Vec<u8>, usize>,
    /// Replies not yet seen.
    waiting: Vec<(Vec<u8>, Answer)>,
    unknown: usize,
}

fn config(id: u64, voters: &[u64], bootstrap: Bootstrap) -> ReplicaConfig {
    let mut cfg = ReplicaConfig::new(id, voters.iter().map(|&v| peer(v)).collect(), bootstrap);
    cfg.snapshot_entries = 20;
    cfg.keep_entries = 4;
    cfg
}

impl Sim {
    fn new(n: u64) -> Sim {
        let voters: Vec<u64> = (1..=n).collect();
        let mut sim = Sim {
            members: BTreeMap::new(),
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            acked: BTreeMap::new(),
            waiting: Vec::new(),
            unknown: 0,
        };
        for &id in &voters {
            let cfg = config(id, &voters, Bootstrap::New(voters.clone()));
            sim.add_member(id, cfg);
        }
        sim
    }

    fn add_member(&mut self, id: u64, cfg: ReplicaConfig) {
        let dir = TempDir::new(&format!("replica-{id}"));
        let store = LogStore::open(&dir.0).unwrap();
        let replica = Replica::open(cfg.clone(), List::default(), store).unwrap();
        self.members.insert(
            id,
            Member {
                dir,
                cfg,
                replica: Some(replica),
            },
        );
    }

    fn replica(&mut self, id: u64) -> &mut Replica<List> {
        self.members
            .get_mut(&id)
            .and_then(|m| m.replica.as_mut())
            .expect("a live member")
    }

    fn up(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|(_, m)| m.replica.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The process dies: everything in memory is gone.
    fn kill(&mut self, id: u64) {
        self.members.get_mut(&id).unwrap().replica = None;
    }

    /// The process starts again from its directory.
    fn restart(&mut self, id: u64) {
        let m = self.members.get_mut(&id).unwrap();
        assert!(m.replica.is_none());
        let store = LogStore::open(&m.dir.0).unwrap();
        m.replica = Some(Replica::open(m.cfg.clone(), List::default(), store).unwrap());
    }

    fn isolate(&mut self, id: u64) {
        for &other in self.members.keys() {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Runs every live member's cycle and delivers messages until nothing
    /// moves. A member whose cycle fails (a planted crash) is killed.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for id in self.up() {
                let mut out = Outbox::default();
                let result = self.replica(id).handle_ready(&mut out);
                match result {
                    Ok(()) => {}
                    Err(ReplicaError::Crashed(_)) => {
                        // What was sent before the crash point is on the
                        // wire; the rest died with the process.
                        moved = true;
                        self.net.extend(out.messages);
                        self.kill(id);
                        continue;
                    }
                    Err(e) => panic!("member {id}: {e}"),
                }
                moved |= !out.messages.is_empty();
                self.net.extend(out.messages);
            }
            while let Some(m) = self.net.pop_front() {
                moved = true;
                let (from, to) = (m.from, m.to);
                let snapshot = m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
                let target = self.members.get_mut(&to).and_then(|m| m.replica.as_mut());
                let delivered = match target {
                    Some(r) if !self.cut.contains(&(from, to)) => {
                        r.step(m);
                        true
                    }
                    _ => false,
                };
                // What the transport reports back to the sender.
                if let Some(r) = self.members.get_mut(&from).and_then(|m| m.replica.as_mut()) {
                    if !delivered {
                        r.report_unreachable(to);
                    }
                    if snapshot {
                        r.report_snapshot(to, delivered);
                    }
                }
            }
            self.collect();
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for id in self.up() {
                self.replica(id).tick();
            }
            self.settle();
        }
    }

    fn leader(&self) -> Option<u64> {
        let leaders: Vec<u64> = self
            .members
            .iter()
            .filter_map(|(id, m)| m.replica.as_ref().map(|r| (id, r.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .map(|(id, _)| *id)
            .collect();
        // Two members may both think they lead (a deposed one that has not
        // heard of the new term); the one of the highest term is the leader.
        leaders
            .into_iter()
            .max_by_key(|id| self.members[id].replica.as_ref().unwrap().status().term)
    }

    /// Ticks until a leader that a majority follows exists.
    fn elect(&mut self) -> u64 {
        for _ in 0..200 {
            self.tick(1);
            if let Some(l) = self.leader() {
                let term = self.members[&l].replica.as_ref().unwrap().status().term;
                let followers = self
                    .up()
                    .iter()
                    .filter(|id| {
                        let s = self.members[id].replica.as_ref().unwrap().status();
                        s.term == term && s.leader_id == Some(l)
                    })
                    .count();
                if followers * 2 > self.members.len() {
                    return l;
                }
            }
        }
        panic!("no leader elected");
    }

    fn propose_to(&mut self, id: u64, data: &[u8]) {
        let (tx, rx) = smol::channel::bounded(1);
        self.replica(id).propose(data.to_vec(), tx);
        self.waiting.push((data.to_vec(), rx));
    }

    fn collect(&mut self) {
        let mut still = Vec::new();
        for (data, rx) in self.waiting.drain(..) {
            match rx.try_recv() {
                Ok(Ok(pos)) => {
                    assert!(
                        self.acked.insert(data.clone(), pos).is_none(),
                        "{data:?} acknowledged twice"
                    );
                }
                Ok(Err(ProposeError::Unknown)) => self.unknown += 1,
                // The member died with the proposal in flight (its
                // replica dropped the reply: `Stopped`).
                Ok(Err(ProposeError::Stopped)) | Err(smol::channel::TryRecvError::Closed) => {
                    self.unknown += 1
                }
                Ok(Err(e)) => panic!("{data:?}: {e}"),
                Err(smol::channel::TryRecvError::Empty) => still.push((data, rx)),
            }
        }
        self.waiting = still;
    }

    /// Proposes `n` entries named `prefix-i` on the current leader.
    fn burst(&mut self, prefix: &str, n: usize) {
        let l = self.elect();
        for i in 0..n {
            self.propose_to(l, format!("{prefix}-{i}").as_bytes());
        }
        self.settle();
    }

    /// Every live member applied the same list, which holds every
    /// acknowledged entry at the position its answer gave, exactly once.
    fn check_agreement(&mut self) -> Vec<Vec<u8>> {
        // Let followers learn the last commit index.
        self.tick(3);
        let lists: Vec<(u64, List)> = self
            .members
            .iter()
            .filter_map(|(id, m)| m.replica.as_ref().map(|r| (*id, r.state_machine().clone())))
            .collect();
        let (first_id, first) = &lists[0];
        for (id, l) in &lists[1..] {
            assert_eq!(
                l.items, first.items,
                "members {first_id} and {id} applied different lists"
            );
        }
        for (data, pos) in &self.acked {
            assert_eq!(
                first.items.get(*pos),
                Some(data),
                "acknowledged {data:?} is not at position {pos}"
            );
        }
        let unique: BTreeSet<&Vec<u8>> = first.items.iter().collect();
        assert_eq!(unique.len(), first.items.len(), "an entry applied twice");
        first.items.clone()
    }
}

#[test]
fn three_members_elect_commit_and_agree() {
    let mut sim = Sim::new(3);
    let l = sim.elect();
    sim.burst("a", 10);
    assert_eq!(sim.acked.len(), 10);
    let items = sim.check_agreement();
    assert_eq!(items.len(), 10);
    let s = sim.replica(l).status();
    assert_eq!(s.voters, vec![1, 2, 3]);
    assert_eq!(s.leader_id, Some(l));
    assert_eq!(s.leader_client_addr, Some(peer(l).client_addr));
    assert!(
        s.commit_index >= 11 && s.applied_index == s.commit_index,
        "{s:?}"
    );
}

#[test]
fn a_committed_entry_the_state_machine_cannot_read_stops_the_member() {
    // Skipping it would leave this member behind members that can read
    // it; the member stops instead, naming the entry.
    let mut sim = Sim::new(1);
    let l = sim.elect();
    sim.burst("before", 2);
    sim.propose_to(l, UNREADABLE);
    sim.propose_to(l, b"after");
    let mut stopped = None;
    for _ in 0..100 {
        let mut out = Outbox::default();
        if let Err(e) = sim.replica(l).handle_ready(&mut out) {
            stopped = Some(e);
            break;
        }
    }
    match stopped {
        Some(ReplicaError::BadEntry { index, detail }) => {
            assert_eq!(detail, "an entry of another release");
            assert!(index > 3, "{index}");
        }
        other => panic!("the member went on: {other:?}"),
    }
    let items = &sim.replica(l).state_machine().items;
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(!items.iter().any(|i| i == b"after"));
}

#[test]
fn a_follower_names_the_leader_and_refuses() {
    let mut sim = Sim::new(3);
    let l = sim.elect();
    let f = (1..=3).find(|&i| i != l).unwrap();
    let (tx, rx) = smol::channel::bounded(1);
    sim.replica(f).propose(b"x".to_vec(), tx);
    assert_eq!(
        rx.try_recv().unwrap(),
        Err(ProposeError::NotLeader {
            leader_id: Some(l),
            client_addr: Some(peer(l).client_addr)
        })
    );
    // Empty and oversized proposals are refused on the leader.
    for data in [vec![], vec![0u8; (1 << 20) + 1]] {
        let (tx, rx) = smol::channel::bounded(1);
        sim.replica(l).propose(data, tx);
        assert_eq!(rx.try_recv().unwrap(), Err(ProposeError::TooLarge));
    }
}

#[test]
fn no_leader_is_known_before_an_election() {
    let mut sim = Sim::new(3);
    let (tx, rx) = smol::channel::bounded(1);
    sim.replica(1).propose(b"x".to_vec(), tx);
    assert_eq!(
        rx.try_recv().unwrap(),
        Err(ProposeError::NotLeader {
            leader_id: None,
            client_addr: None
        })
    );
}

#[test]
fn the_cluster_survives_the_loss_of_its_leader() {
    let mut sim = Sim::new(3);
    sim.burst("a", 5);
    let old = sim.elect();
    sim.kill(old);
    let new = sim.elect();
    assert_ne!(old, new);
    sim.burst("b", 5);
    assert_eq!(sim.acked.len(), 10);
    // The old leader comes back as a follower and catches up.
    sim.restart(old);
    sim.tick(20);
    assert_eq!(sim.check_agreement().len(), 10);
    assert_eq!(sim.replica(old).status().leader_id, Some(new));
}

#[test]
fn a_deposed_leaders_proposals_end_unknown() {
    let mut sim = Sim::new(3);
    let old = sim.elect();
    sim.isolate(old);
    // Proposed on the cut-off leader: it can never commit them.
    sim.propose_to(old, b"lost-1");
    sim.propose_to(old, b"lost-2");
    sim.settle();
    // Past an election timeout: check_quorum deposes it, the others elect.
    sim.tick(30);
    assert_ne!(sim.replica(old).status().role, Role::Leader);
    let new = sim.elect();
    assert_ne!(old, new);
    sim.burst("b", 3);
    sim.heal();
    sim.tick(30);
    assert_eq!(sim.unknown, 2, "both lost proposals end unknown");
    let items = sim.check_agreement();
    assert!(!items.iter().any(|i| i.starts_with(b"lost")), "{items:?}");
    assert_eq!(items.len(), 3);
}

#[test]
fn a_lagging_member_is_caught_up_by_snapshot() {
    let mut sim = Sim::new(3);
    let l = sim.elect();
    let lagging = (1..=3).find(|&i| i != l).unwrap();
    sim.kill(lagging);
    // Far more than snapshot_entries + keep_entries: the leader compacts
    // past what the lagging member has.
    for round in 0..4 {
        sim.burst(&format!("r{round}"), 15);
    }
    let leader = sim.elect();
    assert!(sim.replica(leader).status().snapshot_index > 10);
    assert!(sim.replica(leader).store().truncated().0 > 1);
    sim.restart(lagging);
    sim.tick(30);
    assert!(
        sim.replica(lagging).status().snapshots_installed >= 1,
        "{:?}",
        sim.replica(lagging).status()
    );
    sim.burst("after", 3);
    assert_eq!(sim.check_agreement().len(), 63);
}

#[test]
fn a_voter_is_added_and_removed() {
    let mut sim = Sim::new(3);
    sim.burst("a", 30);
    let l = sim.elect();
    // Member 4 starts empty and joins.
    let mut cfg4 = config(4, &[1, 2, 3, 4], Bootstrap::Join);
    cfg4.peers = vec![peer(1), peer(2), peer(3), peer(4)];
    sim.add_member(4, cfg4);
    let (tx, rx) = smol::channel::bounded(1);
    sim.replica(l).change_voters(VoterChange::Add(peer(4)), tx);
    // A second change while the first is in flight is refused.
    let (tx2, rx2) = smol::channel::bounded(1);
    sim.replica(l).change_voters(VoterChange::Remove(3), tx2);
    assert_eq!(rx2.try_recv().unwrap(), Err(ProposeError::ChangeInProgress));
    sim.tick(10);
    assert_eq!(rx.try_recv().unwrap(), Ok(()));
    sim.burst("b", 5);
    assert_eq!(sim.replica(4).status().voters, vec![1, 2, 3, 4]);
    assert_eq!(sim.check_agreement().len(), 35);
    // Adding a voter twice, removing a stranger: refused.
    let l = sim.elect();
    for (change, want) in [
        (VoterChange::Add(peer(2)), "already a voter"),
        (VoterChange::Remove(9), "not a voter"),
    ] {
        let (tx, rx) = smol::channel::bounded(1);
        sim.replica(l).change_voters(change, tx);
        match rx.try_recv().unwrap() {
            Err(ProposeError::BadChange(why)) => assert!(why.contains(want), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    // Remove a follower; the rest go on without it.
    let gone = (1..=4).find(|&i| i != l).unwrap();
    let (tx, rx) = smol::channel::bounded(1);
    sim.replica(l).change_voters(VoterChange::Remove(gone), tx);
    sim.tick(5);
    assert_eq!(rx.try_recv().unwrap(), Ok(()));
    sim.kill(gone);
    sim.members.remove(&gone);
    sim.burst("c", 5);
    let l = sim.elect();
    assert_eq!(sim.replica(l).status().voters.len(), 3);
    assert_eq!(sim.check_agreement().len(), 40);
}

#[test]
fn a_snapshot_is_due_after_its_entries_and_as_many_bytes_of_log() {
    // Requested: at once, with one entry applied since.
    assert!(snapshot_due_by(1, true, 10_000, 0, u64::MAX));
    assert!(!snapshot_due_by(0, true, 10_000, 0, 0));
    // Not requested, 10,000 entries to wait for: (entries since, bytes of
    // log since, bytes of the last snapshot).
    let due = |since, log, snap| snapshot_due_by(since, false, 10_000, log, snap);
    // A small state: the count decides.
    assert!(!due(9_999, 9_999 * 130, 300_000));
    assert!(due(10_000, 10_000 * 130, 300_000));
    // A large state: the count is not enough until the log since weighs
    // as much as the snapshot.
    assert!(!due(10_000, 10_000 * 130, 200_000_000));
    assert!(!due(1_000_000, 199_999_999, 200_000_000));
    assert!(due(1_000_000, 200_000_000, 200_000_000));
}

#[test]
fn a_large_state_is_snapshot_only_after_as_many_bytes_of_log() {
    let mut sim = Sim::new(3);
    let l = sim.elect();
    // One large entry: the next snapshot holds it, 64 KiB.
    sim.propose_to(l, &vec![b'x'; 64 << 10]);
    sim.burst("a", 25);
    let first = sim.replica(l).status();
    assert!(first.snapshot_index > 1, "{first:?}");
    // Far more than `snapshot_entries` (20) small entries, but far fewer
    // bytes than the snapshot: none taken.
    sim.burst("b", 100);
    let l = sim.elect();
    let held = sim.replica(l).status();
    assert_eq!(held.snapshot_index, first.snapshot_index, "{held:?}");
    // Entries of about ENTRY_COST_BYTES + 8 bytes each: a snapshot once
    // they add up to 64 KiB, and not before.
    sim.burst("c", 500);
    let l = sim.elect();
    let taken = sim.replica(l).status();
    assert!(taken.snapshot_index > first.snapshot_index, "{taken:?}");
    let weigh = (64 << 10) / (ENTRY_COST_BYTES + 8);
    assert!(
        taken.snapshot_index - first.snapshot_index >= weigh,
        "{} entries after the last, under {weigh}",
        taken.snapshot_index - first.snapshot_index
    );
    assert_eq!(sim.check_agreement().len(), 1 + 25 + 100 + 500);
}

#[test]
fn a_member_restarts_from_its_snapshot_and_log() {
    let mut sim = Sim::new(3);
    for round in 0..3 {
        sim.burst(&format!("r{round}"), 10);
    }
    // Every member restarts, one after another, from disk only.
    for id in 1..=3 {
        sim.kill(id);
        sim.restart(id);
        sim.tick(5);
    }
    sim.burst("after", 5);
    let items = sim.check_agreement();
    assert_eq!(items.len(), 35);
    // All three at once, too: the state is rebuilt from the snapshot
    // plus the log after it.
    for id in 1..=3 {
        sim.kill(id);
    }
    for id in 1..=3 {
        sim.restart(id);
    }
    sim.burst("again", 2);
    assert_eq!(sim.check_agreement().len(), 37);
}

/// Crash safety of the cycle: a member dies right after each step of
/// §2.5 while entries flow, comes back from its directory, and the
/// cluster ends with one log that holds every acknowledged entry once.
#[test]
fn a_crash_at_any_step_of_the_cycle_loses_no_acknowledged_entry() {
    for point in CrashPoint::ALL {
        for victim_is_leader in [true, false] {
            let mut sim = Sim::new(3);
            sim.burst("warm", 12);
            let l = sim.elect();
            let victim = if victim_is_leader {
                l
            } else {
                (1..=3).find(|&i| i != l).unwrap()
            };
            sim.replica(victim).crash_at(Some(point));
            // Enough entries to reach a snapshot (so AfterCompact fires).
            for i in 0..25 {
                if sim.members[&victim].replica.is_none() {
                    break;
                }
                let leader = sim.elect();
                sim.propose_to(leader, format!("x-{i}").as_bytes());
                sim.settle();
            }
            if point == CrashPoint::AfterSnapshot {
                // Only a member that receives a snapshot passes there:
                // make the victim lag, then come back.
                if let Some(r) = sim
                    .members
                    .get_mut(&victim)
                    .and_then(|m| m.replica.as_mut())
                {
                    r.crash_at(None);
                }
                sim.kill(victim);
                sim.burst("lag", 40);
                sim.restart(victim);
                sim.replica(victim).crash_at(Some(point));
                sim.tick(20);
            }
            assert!(
                sim.members[&victim].replica.is_none(),
                "{point:?} (leader {victim_is_leader}) was never reached"
            );
            sim.restart(victim);
            sim.tick(10);
            sim.burst("after", 3);
            let items = sim.check_agreement();
            assert!(
                sim.acked.len() >= 12 + 3,
                "{point:?}: only {} acknowledged",
                sim.acked.len()
            );
            assert!(items.len() >= sim.acked.len());
        }
    }
}

#[test]
fn snapshot_data_carries_the_member_addresses() {
    let data = encode_snapshot([peer(1), peer(4)].iter(), b"state");
    let (peers, rest) = decode_snapshot(&data).unwrap();
    assert_eq!(peers, vec![peer(1), peer(4)]);
    assert_eq!(rest, b"state");
    assert!(decode_snapshot(&data[..3]).is_err());
    assert!(decode_snapshot(&[0, 0, 0, 9, b'x']).is_err());
    assert!(decode_snapshot(&[0, 0, 0, 1, b'x']).is_err());
}

// ---------------------------------------------------------------------------
// Real members: smol tasks, TCP on loopback, the token.

mod loopback {
    use super::*;
    use crate::cluster::transport::tests::Runtime;
    use crate::cluster::transport::{MemberAuth, TransportConfig};

    const TOKEN: &[u8] = b"loopback-cluster-token-0123456789abcdef";

    struct Node {
        dir: TempDir,
        handle: Option<ReplicaHandle<usize>>,
        listen: String,
    }

    /// Below the ephemeral range: a restarted member binds it again.
    fn free_addr() -> String {
        let port = crate::conformance::spawn::unused_port().expect("a free loopback port");
        format!("127.0.0.1:{port}")
    }

    fn fast(mut cfg: ReplicaConfig) -> ReplicaConfig {
        cfg.tick = Duration::from_millis(10);
        cfg.snapshot_entries = 30;
        cfg.keep_entries = 5;
        cfg
    }

    fn start(rt: &Runtime, node: &mut Node, cfg: ReplicaConfig) {
        let store = LogStore::open(&node.dir.0).unwrap();
        let tcfg = TransportConfig::new(
            cfg.node_id,
            MemberAuth {
                token: Some(Arc::from(TOKEN)),
                tls: None,
            },
        );
        node.handle = Some(
            spawn(
                cfg,
                List::default(),
                store,
                tcfg,
                &node.listen,
                rt.ex.clone(),
            )
            .unwrap(),
        );
    }

    fn leader(nodes: &BTreeMap<u64, Node>) -> Option<(u64, ReplicaHandle<usize>)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            for (id, n) in nodes {
                if let Some(h) = &n.handle {
                    let (_, led) = smol::block_on(
                        h.wait_for(Duration::from_millis(50), |s| s.role == Role::Leader),
                    );
                    if led {
                        return Some((*id, h.clone()));
                    }
                }
            }
        }
        None
    }

    /// Proposes until one is acknowledged (a leader may lose the lead
    /// between being found and being asked).
    /// Proposes `data` on whoever leads until an answer comes back. An
    /// `Unknown` answer is asked again, so around a failover the entry may
    /// apply twice: positions only increase, by one or more.
    fn commit(nodes: &BTreeMap<u64, Node>, data: &str) -> usize {
        for _ in 0..20 {
            let (_, h) = leader(nodes).expect("a leader");
            match smol::block_on(h.propose(data.as_bytes().to_vec())) {
                Ok(pos) => return pos,
                Err(ProposeError::NotLeader { .. } | ProposeError::Unknown) => continue,
                Err(e) => panic!("{data}: {e}"),
            }
        }
        panic!("{data} never committed");
    }

    fn wait_applied(h: &ReplicaHandle<usize>, index: u64) -> Status {
        let (s, ok) =
            smol::block_on(h.wait_for(Duration::from_secs(20), |s| s.applied_index >= index));
        assert!(ok, "member {} stuck at {s:?}", s.node_id);
        s
    }

    #[test]
    fn three_members_on_loopback_fail_over_and_change_voters() {
        let rt = Runtime::new();
        let mut nodes: BTreeMap<u64, Node> = (1..=3)
            .map(|id| {
                (
                    id,
                    Node {
                        dir: TempDir::new(&format!("loop-{id}")),
                        handle: None,
                        listen: free_addr(),
                    },
                )
            })
            .collect();
        let peers: Vec<Peer> = nodes
            .iter()
            .map(|(id, n)| Peer {
                id: *id,
                raft_addr: n.listen.clone(),
                client_addr: format!("127.0.0.1:{}", 6400 + id),
            })
            .collect();
        let cfg = |id: u64| {
            fast(ReplicaConfig::new(
                id,
                peers.clone(),
                Bootstrap::New(vec![1, 2, 3]),
            ))
        };
        for id in 1..=3 {
            let c = cfg(id);
            start(&rt, nodes.get_mut(&id).unwrap(), c);
        }
        for i in 0..10 {
            assert_eq!(commit(&nodes, &format!("a{i}")), i);
        }
        // A follower names the leader's client address.
        let (l, lh) = leader(&nodes).unwrap();
        let f = (1..=3).find(|&i| i != l).unwrap();
        let fh = nodes[&f].handle.clone().unwrap();
        let s = wait_applied(&fh, lh.status().applied_index);
        assert_eq!(
            s.leader_client_addr,
            Some(format!("127.0.0.1:{}", 6400 + l))
        );
        match smol::block_on(fh.propose(b"x".to_vec())) {
            Err(ProposeError::NotLeader { client_addr, .. }) => {
                assert_eq!(client_addr, Some(format!("127.0.0.1:{}", 6400 + l)))
            }
            other => panic!("{other:?}"),
        }

        // The leader dies (its task and transport dropped).
        drop(lh);
        nodes.get_mut(&l).unwrap().handle = None;
        let mut last = 9;
        for i in 10..40 {
            let pos = commit(&nodes, &format!("b{i}"));
            assert!(pos > last && pos >= i, "b{i} at {pos} after {last}");
            last = pos;
        }
        let (l2, _) = leader(&nodes).unwrap();
        assert_ne!(l, l2);
        // It comes back and is caught up (by snapshot: 30 entries passed).
        let c = cfg(l);
        start(&rt, nodes.get_mut(&l).unwrap(), c);
        let (_, lh2) = leader(&nodes).unwrap();
        let target = lh2.status().applied_index;
        let back = wait_applied(nodes[&l].handle.as_ref().unwrap(), target);
        assert!(back.snapshot_index > 0, "{back:?}");

        // Member 4 joins as a voter.
        let mut n4 = Node {
            dir: TempDir::new("loop-4"),
            handle: None,
            listen: free_addr(),
        };
        let p4 = Peer {
            id: 4,
            raft_addr: n4.listen.clone(),
            client_addr: "127.0.0.1:6404".into(),
        };
        let mut peers4 = peers.clone();
        peers4.push(p4.clone());
        start(
            &rt,
            &mut n4,
            fast(ReplicaConfig::new(4, peers4, Bootstrap::Join)),
        );
        nodes.insert(4, n4);
        let (_, lh) = leader(&nodes).unwrap();
        smol::block_on(lh.change_voters(VoterChange::Add(p4))).unwrap();
        let pos = commit(&nodes, "after-join");
        let s4 = wait_applied(
            nodes[&4].handle.as_ref().unwrap(),
            lh.status().applied_index,
        );
        assert_eq!(s4.voters, vec![1, 2, 3, 4]);
        assert!(pos > last, "{pos} after {last}");

        // And leaves again.
        let (_, lh) = leader(&nodes).unwrap();
        smol::block_on(lh.change_voters(VoterChange::Remove(4))).unwrap();
        nodes.get_mut(&4).unwrap().handle = None;
        assert!(commit(&nodes, "after-leave") > pos);
        let (_, lh) = leader(&nodes).unwrap();
        assert_eq!(lh.status().voters, vec![1, 2, 3]);
        // Every member still running applied the same entries.
        let applied = lh.status().applied_index;
        for id in 1..=3 {
            let s = wait_applied(nodes[&id].handle.as_ref().unwrap(), applied);
            assert_eq!(s.voters, vec![1, 2, 3]);
        }
    }
}
