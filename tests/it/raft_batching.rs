//! Why cluster mode keeps raft-rs's `batch_append` off (spec/cluster.md
//! §2.5): with it, raft-rs 0.7 can commit an entry that only the leader
//! holds.
//!
//! The mechanism, driven here on one `RawNode` whose two followers are
//! played by hand:
//! 1. A commit broadcast queues an append with no entries to an
//!    up-to-date follower (its previous index is the leader's last entry).
//! 2. Before that message leaves, the follower is reported unreachable:
//!    its progress drops to probing from its match index, lower down.
//! 3. The next append to it is batched into the queued one. raft-rs checks
//!    only that the entries follow the queued message's own entries, and
//!    that message has none, so the entries from the match index are
//!    attached to a message whose previous index is the leader's last
//!    entry.
//! 4. A follower answers an append with "I hold up to previous index plus
//!    the number of entries", past the leader's own log, and the leader
//!    records that as the follower's match.
//! 5. The leader then counts that follower for the next entry, which it
//!    never received: committed on one copy out of three.
//!
//! In the cluster, report_unreachable comes from the transport and member
//! messages are reordered and duplicated; the simulator's seed 1001 ended
//! in a follower's panic ("to_commit … is out of range [last_index …]")
//! from the same false match. The test also runs with `batch_append` off,
//! the setting `cluster::replica` uses, where the message stays consistent
//! and the entry is not committed.

use raft::eraftpb::{ConfState, Entry, Message, MessageType};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

const LEADER: u64 = 1;
const FOLLOWER: u64 = 2;
const CUT_OFF: u64 = 3;

fn node(id: u64, batch_append: bool) -> RawNode<MemStorage> {
    let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
    let cfg = Config {
        id,
        election_tick: 10,
        heartbeat_tick: 1,
        // As the cluster's members: many entries per append.
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        batch_append,
        ..Config::default()
    };
    cfg.validate().expect("config");
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    RawNode::new(&cfg, storage, &logger).expect("raw node")
}

/// Runs every pending `Ready` as a member must (entries and hard state
/// stored before the messages that depend on them are released) and
/// returns all messages it would send.
fn drain(n: &mut RawNode<MemStorage>) -> Vec<Message> {
    let mut out = Vec::new();
    while n.has_ready() {
        let mut rd = n.ready();
        out.extend(rd.take_messages());
        if !rd.entries().is_empty() {
            n.mut_store().wl().append(rd.entries()).expect("append");
        }
        if let Some(hs) = rd.hs() {
            n.mut_store().wl().set_hardstate(hs.clone());
        }
        out.extend(rd.take_persisted_messages());
        let mut light = n.advance(rd);
        if let Some(commit) = light.commit_index() {
            n.mut_store().wl().mut_hard_state().set_commit(commit);
        }
        out.extend(light.take_messages());
        n.advance_apply();
    }
    out
}

/// A leader and its two followers, every member raft-rs's own; the test
/// carries the messages, and drops or keeps them.
struct Trio {
    leader: RawNode<MemStorage>,
    follower: RawNode<MemStorage>,
    cut_off: RawNode<MemStorage>,
}

impl Trio {
    fn start(batch_append: bool) -> Trio {
        let mut t = Trio {
            leader: node(LEADER, batch_append),
            follower: node(FOLLOWER, batch_append),
            cut_off: node(CUT_OFF, batch_append),
        };
        t.leader.campaign().expect("campaign");
        let votes = drain(&mut t.leader);
        for m in votes {
            let to = t.member(m.to);
            to.step(m).expect("vote request");
            for r in drain(to) {
                t.leader.step(r).expect("vote");
            }
        }
        assert_eq!(t.leader.raft.state, StateRole::Leader);
        t
    }

    fn member(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        match id {
            LEADER => &mut self.leader,
            FOLLOWER => &mut self.follower,
            _ => &mut self.cut_off,
        }
    }

    /// Delivers `m` to its follower and returns the follower's answers.
    fn deliver(&mut self, m: Message) -> Vec<Message> {
        let to = self.member(m.to);
        to.step(m).expect("step");
        drain(to)
    }

    /// Carries every message both ways until nothing moves.
    fn settle(&mut self) {
        let mut flying = drain(&mut self.leader);
        for _ in 0..100 {
            if flying.is_empty() {
                return;
            }
            let mut answers = Vec::new();
            for m in flying {
                answers.extend(self.deliver(m));
            }
            for a in answers {
                self.leader.step(a).expect("answer");
            }
            flying = drain(&mut self.leader);
        }
        panic!("the trio did not settle");
    }

    fn propose(&mut self) -> u64 {
        self.leader.propose(vec![], b"x".to_vec()).expect("propose");
        self.leader.raft.raft_log.last_index()
    }
}

struct Outcome {
    /// Whether every append to the cut-off follower had entries starting
    /// right after its previous index.
    consistent: bool,
    /// The match index the leader recorded for the cut-off follower, from
    /// that follower's own answer.
    cut_off_match: u64,
    /// The leader's last index when it recorded it.
    leader_last: u64,
    /// The last index CUT_OFF really holds.
    cut_off_holds: u64,
    /// Whether the last entry, which reached no follower, was committed.
    unreached_entry_committed: bool,
}

fn run(batch_append: bool) -> Outcome {
    let mut t = Trio::start(batch_append);
    for _ in 0..3 {
        t.propose();
    }
    t.settle();
    let settled = t.leader.raft.raft_log.last_index();
    assert_eq!(t.leader.raft.raft_log.committed, settled);

    // One more entry goes out to both followers and reaches both, but only
    // FOLLOWER's answer comes back. It commits the entry, and the commit
    // broadcast queues an empty append to CUT_OFF, which looks up to date.
    let sent = t.propose();
    let mut answers = Vec::new();
    for m in drain(&mut t.leader) {
        let from_follower = m.to == FOLLOWER;
        let a = t.deliver(m);
        if from_follower {
            answers.extend(a);
        }
    }
    for a in answers {
        t.leader.step(a).expect("answer");
    }
    assert_eq!(t.leader.raft.raft_log.committed, sent);
    // Before that queued append leaves, the transport reports CUT_OFF
    // unreachable, and a new proposal appends to it again.
    t.leader.report_unreachable(CUT_OFF);
    t.propose();
    let out = drain(&mut t.leader);
    let to_cut_off: Vec<Message> = out
        .into_iter()
        .filter(|m| m.to == CUT_OFF && m.get_msg_type() == MessageType::MsgAppend)
        .collect();
    assert!(!to_cut_off.is_empty(), "no append to the cut-off follower");
    let consistent = to_cut_off.iter().all(|m| {
        m.entries
            .first()
            .is_none_or(|e: &Entry| e.index == m.index + 1)
    });
    // CUT_OFF gets them now and answers as raft-rs's follower does.
    for m in to_cut_off {
        for a in t.deliver(m) {
            t.leader.step(a).expect("answer");
        }
    }
    let cut_off_match = t.leader.raft.prs().get(CUT_OFF).expect("progress").matched;
    let leader_last = t.leader.raft.raft_log.last_index();
    // Nothing reaches either follower any more: a new entry must stay
    // uncommitted.
    drain(&mut t.leader);
    let unreached = t.propose();
    drain(&mut t.leader);
    Outcome {
        consistent,
        cut_off_match,
        leader_last,
        cut_off_holds: t.cut_off.raft.raft_log.last_index(),
        unreached_entry_committed: t.leader.raft.raft_log.committed >= unreached,
    }
}

#[test]
fn with_batch_append_raft_rs_commits_an_entry_only_the_leader_holds() {
    let o = run(true);
    assert!(!o.consistent, "the batched append kept its previous index");
    assert!(
        o.cut_off_match > o.leader_last,
        "match {} within the leader's log ({})",
        o.cut_off_match,
        o.leader_last
    );
    // Committed with the leader's copy alone: CUT_OFF never got it.
    assert!(o.unreached_entry_committed);
    assert!(o.cut_off_holds < o.cut_off_match);
}

#[test]
fn without_batch_append_the_same_steps_commit_nothing_unreplicated() {
    let o = run(false);
    assert!(o.consistent);
    assert!(o.cut_off_match <= o.leader_last);
    assert!(!o.unreached_entry_committed);
    assert_eq!(o.cut_off_holds, o.cut_off_match);
}
