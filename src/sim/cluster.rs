//! A simulated three-member cluster (spec/cluster.md §10, the simulator
//! section of spec/ARCHITECTURE.md): the real member code runs on the
//! simulator's scheduler and clock, with a simulated network between the
//! members, crashes, restarts and pauses, while simulated clients take and
//! give back locks and record a history that the fault tests' checker
//! (`tests/cluster/history.rs`, shared) reads afterwards.
//!
//! What runs for real, per member: the replica's driver and `RawNode`
//! ([`crate::cluster::replica::drive`]) and its storage worker (a task
//! here, a thread in the server), its Raft storage
//! ([`crate::cluster::storage::LogStore`], fjall in a directory of its own
//! under a temporary directory, reopened after a crash), the member
//! ([`crate::cluster::node::Node`]: sessions, stamps on the replicated
//! clock, `LeaderStart`, ticks, orphans, `stable-ref`, stepping down) with
//! its state machine, the engine and its door, the engine's timer, and one
//! TCP connection handler per client connection
//! ([`crate::tcp::conn::serve_stream`]). What is simulated: time, the
//! members' network ([`SimNet`]: per-message delay, so reordering, loss,
//! duplication, cut links), the client connections ([`super::net`]), and
//! the process faults: a crash drops every task of the member (its
//! connections reset, its fjall database closed; what its cycle had not
//! written is lost, as the cycle's write is the fsync), a restart reopens
//! its directory, a pause freezes its tasks past the election timeout.
//! The Raft transport (TCP, TLS, authentication) does not run here; it has
//! its own tests.
//!
//! Checks: the fault tests' checker (mutual exclusion on live leases,
//! fences increasing in real-time order, no acknowledged grant lost,
//! service restored within a bound after every fault and during minority
//! faults), every request answered at most once (a line nobody asked for
//! fails the run), and the members' state machines applied the same entry
//! at every index. A failure names its seed; `dflockd-sim --cluster --seed
//! N` replays it exactly.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};

use super::exec::{sleep_ms, Exec};
use super::history::{self, Call, Event, Fault, Outcome};
use super::net;
use super::rng::Rng;
use super::Failure;
use crate::cluster::machine::{Applied, Machine};
use crate::cluster::node::{Applier, Node, NodeConfig};
use crate::cluster::replica::{self, Bootstrap, MemberNet, ReplicaConfig, Role, StateMachine};
use crate::cluster::storage::LogStore;
use crate::cluster::transport::TransportEvent;
use crate::cluster::Peer;
use crate::core::CoreConfig;
use crate::engine::Engine;
use crate::planted::Bug;
use crate::tcp::conn::Timeouts;

/// Members of the simulated cluster.
pub const MEMBERS: usize = 3;
/// One Raft tick (the fault tests run at 20 ms, the default is 100 ms).
const TICK_MS: u64 = 50;
/// How long an operation may take before the client gives up on it.
const OP_TIMEOUT_MS: u64 = 2_000;
/// The service must answer within this after a fault heals.
pub const RESTORE_BOUND_MS: u64 = 6_000;
/// `--orphan-ttl`: longer than any lease the clients take.
const ORPHAN_TTL_MS: u64 = 5_000;

/// One run's settings.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub seed: u64,
    /// Simulated length of the run, in milliseconds.
    pub duration_ms: u64,
    pub clients: usize,
    pub bug: Bug,
}

impl ClusterOptions {
    pub fn new(seed: u64) -> ClusterOptions {
        ClusterOptions {
            seed,
            duration_ms: 30_000,
            clients: 4,
            bug: Bug::None,
        }
    }
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct ClusterReport {
    pub seed: u64,
    pub simulated_ms: u64,
    pub steps: u64,
    pub operations: usize,
    pub grants: usize,
    pub faults: usize,
    pub crashes: usize,
    pub pauses: usize,
    /// Leaders that served (one `LeaderStart` applied each).
    pub terms: usize,
    pub messages: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// Releases that went to a new leader after the holder's connection
    /// broke, and came back `ok` (a reclaimed orphan).
    pub reclaims: usize,
    /// Snapshots the members took, and installed from a leader.
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
}

thread_local! {
    /// The seeded draws a new leader logs in its `LeaderStart` (fence
    /// start and salt key) while a cluster simulation runs on this thread.
    static DRAWS: RefCell<Option<Rng>> = const { RefCell::new(None) };
}

/// The fence start and salt key for a `LeaderStart`, on a thread that
/// runs a cluster simulation (`None` elsewhere).
pub fn leader_draws() -> Option<(u64, [u64; 2])> {
    DRAWS.with(|d| {
        d.borrow_mut().as_mut().map(|r| {
            // About the wall clock in nanoseconds, as in production.
            let start = 1_700_000_000_000_000_000 + r.below(1 << 50);
            (start, [r.next_u64(), r.next_u64()])
        })
    })
}

/// Each member's applied entries: index to a hash of the entry, and the
/// indexes where one member applied two different entries.
#[derive(Default)]
struct Applies {
    by_member: Vec<BTreeMap<u64, u64>>,
    conflicts: Vec<String>,
    leader_starts: usize,
}

/// The member's state machine as the server builds it, journaled.
struct Journaled {
    inner: Applier,
    member: usize,
    applies: Arc<Mutex<Applies>>,
}

impl StateMachine for Journaled {
    type Output = Applied;

    fn apply(&mut self, index: u64, data: &[u8]) -> Result<Applied, String> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut h);
        let h = h.finish();
        {
            let mut a = self.applies.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = a.by_member[self.member].insert(index, h) {
                if old != h {
                    let m = self.member + 1;
                    a.conflicts.push(format!(
                        "member {m} applied two different entries at index {index}"
                    ));
                }
            }
            if matches!(
                crate::cluster::machine::LogEntry::decode(data).map(|e| e.op),
                Ok(crate::cluster::machine::Op::LeaderStart { .. })
            ) && self.member == 0
            {
                a.leader_starts += 1;
            }
        }
        self.inner.apply(index, data)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.inner.snapshot()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.inner.restore(data)
    }
}

/// A running incarnation of a member.
struct Up {
    inc: u64,
    node: Arc<Node>,
    engine: Arc<Engine>,
    inbox: smol::channel::Sender<Message>,
    paused: bool,
}

struct Member {
    id: u64,
    dir: PathBuf,
    up: Option<Up>,
}

/// The network's settings and state.
struct NetState {
    delay_max_ms: u64,
    drop_per_mille: u64,
    dup_per_mille: u64,
    /// Directed links cut: (from, to) member ids.
    cut: std::collections::BTreeSet<(u64, u64)>,
    /// A fault's extra loss and delay on every link.
    extra_drop: u64,
    extra_delay_ms: u64,
    messages: u64,
    dropped: u64,
    duplicated: u64,
}

/// The world of one cluster run.
pub struct ClusterWorld {
    exec: Rc<Exec>,
    rng: Rc<RefCell<Rng>>,
    members: RefCell<Vec<Member>>,
    peers: Vec<Peer>,
    net: RefCell<NetState>,
    applies: Arc<Mutex<Applies>>,
    core: CoreConfig,
    /// Entries between snapshots, and kept behind one.
    snapshot_entries: u64,
    keep_entries: u64,
    next_inc: Cell<u64>,
    next_pid: Cell<u64>,
    events: RefCell<Vec<Event>>,
    faults: RefCell<Vec<Fault>>,
    /// Lines nobody asked for (a request answered twice).
    extra_lines: RefCell<Vec<String>>,
    reclaims: Cell<usize>,
    /// Snapshots taken and installed by the incarnations that ended.
    snapshots: Cell<(u64, u64)>,
    crashes: Cell<usize>,
    pauses: Cell<usize>,
}

fn group(inc: u64, pid: u64) -> u64 {
    (inc << 32) | (pid & 0xFFFF_FFFF)
}

/// A member's side of the simulated network.
pub struct SimNet {
    world: Rc<ClusterWorld>,
    from: u64,
    events: smol::channel::Sender<TransportEvent>,
}

impl MemberNet for SimNet {
    fn send(&mut self, msg: Message) {
        self.world.clone().send(self.from, msg, self.events.clone());
    }
    // The simulated network knows every member by id.
    fn set_peer(&mut self, _id: u64, _addr: &str) {}
    fn remove_peer(&mut self, _id: u64) {}
}

impl ClusterWorld {
    fn send(
        self: Rc<Self>,
        from: u64,
        msg: Message,
        events: smol::channel::Sender<TransportEvent>,
    ) {
        let to = msg.to;
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let (copies, delays) = {
            let mut n = self.net.borrow_mut();
            let mut r = self.rng.borrow_mut();
            n.messages += 1;
            let lost =
                n.cut.contains(&(from, to)) || r.chance(n.drop_per_mille) || r.chance(n.extra_drop);
            let copies = if lost {
                n.dropped += 1;
                0
            } else if r.chance(n.dup_per_mille) {
                n.duplicated += 1;
                2
            } else {
                1
            };
            let delays: Vec<u64> = (0..copies)
                .map(|_| r.below(n.delay_max_ms + 1) + r.below(n.extra_delay_ms + 1))
                .collect();
            (copies, delays)
        };
        if copies == 0 {
            if snapshot {
                let _ = events.try_send(TransportEvent::SnapshotSent(to, false));
            } else {
                let _ = events.try_send(TransportEvent::Unreachable(to));
            }
            return;
        }
        for (i, d) in delays.into_iter().enumerate() {
            let w = self.clone();
            let msg = msg.clone();
            let events = events.clone();
            self.exec.spawn(0, async move {
                sleep_ms(d).await;
                let delivered = !w.net.borrow().cut.contains(&(from, to))
                    && w.members.borrow()[(to - 1) as usize]
                        .up
                        .as_ref()
                        .is_some_and(|u| u.inbox.try_send(msg).is_ok());
                if snapshot && i == 0 {
                    let _ = events.try_send(TransportEvent::SnapshotSent(to, delivered));
                }
            });
        }
    }

    /// Starts member `i` from its directory.
    fn start(self: &Rc<Self>, i: usize) -> Result<(), String> {
        let (id, dir) = {
            let m = &self.members.borrow()[i];
            (m.id, m.dir.clone())
        };
        let inc = self.next_inc.get();
        self.next_inc.set(inc + 1);
        let store = LogStore::open(&dir).map_err(|e| e.to_string())?;
        let mut rcfg = ReplicaConfig::new(
            id,
            self.peers.clone(),
            Bootstrap::New(self.peers.iter().map(|p| p.id).collect()),
        );
        rcfg.tick = Duration::from_millis(TICK_MS);
        // The library draws election timeouts from the thread's RNG: the
        // simulator draws one per incarnation instead.
        let e = 10 + self.rng.borrow_mut().below(10) as usize;
        rcfg.election_ticks = e;
        rcfg.election_ticks_max = Some(e + 1);
        rcfg.snapshot_entries = self.snapshot_entries;
        rcfg.keep_entries = self.keep_entries;
        let (applier, shared) = Node::applier(Machine::new(self.core.clone()));
        let sm = Journaled {
            inner: applier,
            member: i,
            applies: self.applies.clone(),
        };
        let (inbox_tx, inbox) = smol::channel::bounded(16_384);
        let (events_tx, events) = smol::channel::bounded(16_384);
        let net = SimNet {
            world: self.clone(),
            from: id,
            events: events_tx,
        };
        let (handle, driver, worker) =
            replica::drive(rcfg, sm, store, net, inbox, events).map_err(|e| e.to_string())?;
        let node = Node::new(
            shared,
            handle,
            NodeConfig {
                orphan_ttl_ms: ORPHAN_TTL_MS,
                client_addr: self.peers[i].client_addr.clone(),
            },
            // Never run: the simulator runs the member's tasks itself.
            Arc::new(smol::Executor::new()),
        );
        self.exec.spawn(group(inc, u64::from(u32::MAX)), driver);
        // The storage worker is a task of the member here: its writes run
        // when the scheduler picks it (so a crash can come with writes
        // staged and not run), each whole or not at all.
        self.exec
            .spawn(group(inc, u64::from(u32::MAX) - 16), worker.run());
        for (k, t) in node.tasks().into_iter().enumerate() {
            self.exec
                .spawn(group(inc, u64::from(u32::MAX) - 1 - k as u64), t);
        }
        let engine = Arc::new(Engine::new(
            self.core.clone(),
            None,
            Box::new(self.exec.time.clock.clone()),
        ));
        engine.set_replicator(node.clone());
        self.exec.spawn(
            group(inc, u64::from(u32::MAX) - 3),
            crate::engine::timer::run(engine.clone()),
        );
        self.members.borrow_mut()[i].up = Some(Up {
            inc,
            node,
            engine,
            inbox: inbox_tx,
            paused: false,
        });
        Ok(())
    }

    /// Member `i`'s process dies: its tasks are dropped (the driver with
    /// its storage, the connections with their sockets).
    fn crash(&self, i: usize) {
        let up = self.members.borrow_mut()[i].up.take();
        if let Some(up) = up {
            self.count_snapshots(&up);
            if up.paused {
                self.exec.resume(up.inc);
            }
            self.exec.kill_where(|g| g >> 32 == up.inc);
            self.crashes.set(self.crashes.get() + 1);
        }
    }

    fn count_snapshots(&self, up: &Up) {
        let st = up.node.replica().status_ref();
        let (t, i) = self.snapshots.get();
        self.snapshots
            .set((t + st.snapshots_taken, i + st.snapshots_installed));
    }

    fn leader(&self) -> Option<usize> {
        self.members.borrow().iter().position(|m| {
            m.up.as_ref()
                .is_some_and(|u| !u.paused && u.node.replica().status_ref().role == Role::Leader)
        })
    }

    fn set_paused(&self, i: usize, paused: bool) {
        let mut members = self.members.borrow_mut();
        if let Some(up) = members[i].up.as_mut() {
            up.paused = paused;
            if paused {
                self.exec.pause(up.inc);
            } else {
                self.exec.resume(up.inc);
            }
        }
    }

    fn isolate(&self, i: usize, cut: bool) {
        let id = i as u64 + 1;
        let mut n = self.net.borrow_mut();
        for other in 1..=MEMBERS as u64 {
            if other != id {
                for link in [(id, other), (other, id)] {
                    if cut {
                        n.cut.insert(link);
                    } else {
                        n.cut.remove(&link);
                    }
                }
            }
        }
    }

    /// A new client connection to member `i`, if it runs.
    fn connect(self: &Rc<Self>, i: usize) -> Option<net::Shared> {
        let (inc, engine) = {
            let m = &self.members.borrow()[i];
            let up = m.up.as_ref()?;
            (up.inc, up.engine.clone())
        };
        let (cap, split) = {
            let mut r = self.rng.borrow_mut();
            ([64, 512, 4096][r.below(3) as usize], r.chance(500))
        };
        let fork = self.rng.borrow_mut().fork();
        let pipe = net::pipe(fork, cap, split);
        let pid = self.next_pid.get();
        self.next_pid.set(pid + 1);
        let time = self.exec.time.clone();
        let end = net::ServerEnd {
            pipe: pipe.clone(),
            now: Rc::new(move || time.now_ms.get()),
        };
        let timeouts = Timeouts {
            read: Duration::from_secs(3_600),
            write: Some(Duration::from_secs(5)),
        };
        self.exec.spawn(group(inc, pid), async move {
            crate::tcp::conn::serve_stream(&engine, timeouts, end, None, None).await;
        });
        Some(pipe)
    }
}

/// Waits until something arrives on the pipe or the server closes it.
struct Readable(net::Shared);

impl Future for Readable {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut p = self.0.borrow_mut();
        if !p.down.is_empty() || p.server_closed_at.is_some() {
            return Poll::Ready(());
        }
        p.client_wait(cx);
        Poll::Pending
    }
}

enum Exchange {
    Reply(String),
    /// The request may have arrived: its outcome is unknown.
    Lost,
    /// Nothing was sent.
    NotSent,
}

/// A simulated client (the fault tests' client, with `stable-ref`).
struct Client {
    world: Rc<ClusterWorld>,
    n: usize,
    name: String,
    target: usize,
    conn: Option<(net::Shared, Vec<u8>)>,
    /// The reference's generation: a fresh one per connection unless the
    /// client holds something (then it reclaims with the same).
    generation: u64,
    /// Tokens of the grants held, by fence.
    tokens: HashMap<u64, String>,
    reads: u64,
    /// The connection broke while something was held.
    broke_holding: bool,
    rng: Rng,
}

impl Client {
    fn now(&self) -> u64 {
        self.world.exec.now()
    }

    /// Reads one line before `deadline`; `None` when the connection ends
    /// or the time runs out.
    async fn read_line(&mut self, deadline: u64) -> Option<String> {
        loop {
            let (pipe, buf) = self.conn.as_mut()?;
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            let got = pipe.borrow_mut().client_read();
            match got {
                None => return None,
                Some(bytes) if !bytes.is_empty() => {
                    buf.extend(bytes);
                    continue;
                }
                Some(_) => {}
            }
            let pipe = pipe.clone();
            let now = self.now();
            if now >= deadline {
                return None;
            }
            futures_lite::future::or(Readable(pipe), sleep_ms(deadline - now)).await;
        }
    }

    /// Lines that arrived while no request was outstanding.
    fn check_quiet(&mut self) {
        let Some((pipe, buf)) = self.conn.as_mut() else {
            return;
        };
        if let Some(bytes) = pipe.borrow_mut().client_read() {
            buf.extend(bytes);
        }
        if buf.contains(&b'\n') {
            let text = String::from_utf8_lossy(buf).into_owned();
            self.world.extra_lines.borrow_mut().push(format!(
                "{} read {text:?} at {}ms with no request outstanding (a request answered twice)",
                self.name,
                self.world.exec.now()
            ));
            buf.clear();
        }
    }

    fn drop_conn(&mut self) {
        if let Some((pipe, _)) = self.conn.take() {
            pipe.borrow_mut().client_close(false);
        }
        if !self.tokens.is_empty() {
            self.broke_holding = true;
        }
    }

    fn next_member(&mut self) {
        self.target = (self.target + 1) % MEMBERS;
        self.drop_conn();
    }

    fn follow(&mut self, hint: Option<&str>) {
        let at = hint.and_then(|h| self.world.peers.iter().position(|p| p.client_addr == h));
        match at {
            Some(i) if i != self.target => {
                self.drop_conn();
                self.target = i;
            }
            _ => self.next_member(),
        }
    }

    /// Connects to the target and presents the reference: `Ok` on the
    /// leader; otherwise nothing was sent of the operation.
    async fn open(&mut self, deadline: u64) -> bool {
        if let Some((pipe, buf)) = &self.conn {
            // Closed by the member (it crashed or stopped leading) with
            // nothing unread: nothing of the next request was sent, so it
            // goes to the leader on a new connection, which presents the
            // same reference when the client holds something (and so
            // takes its orphan back).
            let closed = {
                let p = pipe.borrow();
                p.server_closed_at.is_some() && p.down.is_empty()
            };
            if !(closed && buf.is_empty()) {
                return true;
            }
            self.drop_conn();
        }
        let Some(pipe) = self.world.connect(self.target) else {
            self.target = (self.target + 1) % MEMBERS;
            return false;
        };
        if self.tokens.is_empty() {
            self.generation += 1;
        }
        let line = format!("stable-ref\nc{}-{}\n_\n", self.n, self.generation);
        pipe.borrow_mut().client_write(line.as_bytes());
        self.conn = Some((pipe, Vec::new()));
        match self.read_line(deadline).await.as_deref() {
            Some("ok") => true,
            Some(r) if r.starts_with("error_not_leader") => {
                let hint = r.split(' ').nth(1).map(str::to_owned);
                self.follow(hint.as_deref());
                false
            }
            // The reference is a live session's (its old connection is
            // not closed yet there), or the connection broke.
            _ => {
                self.generation += 1;
                self.next_member();
                false
            }
        }
    }

    async fn exchange(&mut self, line: &str, deadline: u64) -> Exchange {
        if self.now() >= deadline {
            return Exchange::NotSent;
        }
        if !self.open(deadline).await {
            return Exchange::NotSent;
        }
        self.check_quiet();
        let Some((pipe, _)) = self.conn.as_ref() else {
            return Exchange::NotSent;
        };
        pipe.borrow_mut()
            .client_write(format!("{line}\n").as_bytes());
        match self.read_line(deadline).await {
            Some(r) => Exchange::Reply(r),
            None => {
                self.drop_conn();
                Exchange::Lost
            }
        }
    }

    fn line(&mut self, call: &Call) -> String {
        match call {
            Call::Acquire { key, lease_ms } => format!("l\n{key}\n0 {}", lease_ms / 1000),
            Call::Release { key, fence } => {
                let token = self.tokens.get(fence).cloned().unwrap_or_default();
                format!("r\n{key}\n{token}")
            }
            Call::Fence => {
                self.reads += 1;
                format!("l\nfinal-read-{}-{}\n0 1", self.name, self.reads)
            }
        }
    }

    /// The reply in the checker's words (as the fault tests translate).
    fn translate(&mut self, call: &Call, reply: &str) -> String {
        history::translate(&mut self.tokens, call, reply)
    }

    /// Runs `call` to a definite answer, or until the timeout (unknown).
    async fn run(&mut self, call: Call) -> Outcome {
        let line = self.line(&call);
        let invoke_ms = self.now();
        let deadline = invoke_ms + OP_TIMEOUT_MS;
        let outcome = loop {
            let reply = match self.exchange(&line, deadline).await {
                Exchange::Reply(r) => self.translate(&call, &r),
                Exchange::Lost => {
                    self.next_member();
                    break Outcome::Unknown;
                }
                Exchange::NotSent => {
                    if self.now() >= deadline {
                        break Outcome::Fail("unreachable".into());
                    }
                    sleep_ms(10 + self.rng.below(20)).await;
                    continue;
                }
            };
            match history::answer(&reply) {
                history::Answer::Settled(outcome) => break outcome,
                history::Answer::NotLeader(hint) => {
                    self.follow(hint);
                    if self.now() >= deadline {
                        break Outcome::Fail("not_leader".into());
                    }
                    sleep_ms(5 + self.rng.below(20)).await;
                }
                history::Answer::Unknown => {
                    self.next_member();
                    break Outcome::Unknown;
                }
            }
        };
        // A release answered by a leader the client reached after its
        // connection broke while it held: through its orphan.
        let reclaiming = self.broke_holding && matches!(call, Call::Release { .. });
        if let Call::Release { fence, .. } = &call {
            // Whatever the answer, the client is done with that grant (an
            // unknown release leaves it to its lease).
            self.tokens.remove(fence);
        }
        if reclaiming && outcome == Outcome::Ok(0) {
            self.world.reclaims.set(self.world.reclaims.get() + 1);
        }
        if self.tokens.is_empty() {
            self.broke_holding = false;
        }
        self.world.events.borrow_mut().push(Event {
            client: self.name.clone(),
            call,
            invoke_ms,
            complete_ms: self.now(),
            outcome: outcome.clone(),
        });
        outcome
    }
}

/// A client's workload until `stop_at`, then one final fence read.
async fn workload(world: Rc<ClusterWorld>, n: usize, rng: Rng, stop_at: u64) {
    let mut c = Client {
        world: world.clone(),
        n,
        name: format!("c{n}"),
        target: n % MEMBERS,
        conn: None,
        generation: 0,
        tokens: HashMap::new(),
        reads: 0,
        broke_holding: false,
        rng,
    };
    while c.now() < stop_at {
        let key = if c.rng.below(2) == 0 { "k1" } else { "k2" };
        let lease_ms = 1_000 * (2 + c.rng.below(3));
        match c
            .run(Call::Acquire {
                key: key.into(),
                lease_ms,
            })
            .await
        {
            Outcome::Ok(fence) => {
                let hold = c.rng.below(1_200);
                sleep_ms(hold).await;
                c.run(Call::Release {
                    key: key.into(),
                    fence,
                })
                .await;
            }
            _ => sleep_ms(5 + c.rng.below(50)).await,
        }
        // Now and then a client leaves its connection idle a while.
        if c.rng.chance(100) {
            sleep_ms(c.rng.below(2_000)).await;
        }
    }
    // The final read: a grant on a fresh key, after every fault healed,
    // retried until it is answered.
    for _ in 0..5 {
        if matches!(c.run(Call::Fence).await, Outcome::Ok(_)) {
            break;
        }
    }
    c.drop_conn();
}

/// The nemesis: faults one after another, each healed before the next.
async fn nemesis(world: Rc<ClusterWorld>, mut rng: Rng, from: u64, until: u64) {
    sleep_ms(from.saturating_sub(world.exec.now())).await;
    while world.exec.now() < until {
        let start = world.exec.now();
        let lead = world.leader();
        let pick = |rng: &mut Rng| {
            lead.filter(|_| rng.chance(700))
                .unwrap_or(rng.below(3) as usize)
        };
        let (what, minority) = match rng.below(6) {
            0 | 1 => {
                let i = pick(&mut rng);
                world.crash(i);
                sleep_ms(200 + rng.below(4_000)).await;
                // A restart the storage refuses is a failure of the run.
                if let Err(e) = world.start(i) {
                    world
                        .extra_lines
                        .borrow_mut()
                        .push(format!("member {} did not restart: {e}", i + 1));
                }
                (
                    format!(
                        "kill -9 member {}{}",
                        i + 1,
                        if Some(i) == lead { " (leader)" } else { "" }
                    ),
                    true,
                )
            }
            2 => {
                let i = pick(&mut rng);
                world.set_paused(i, true);
                world.pauses.set(world.pauses.get() + 1);
                sleep_ms(1_500 + rng.below(3_000)).await;
                world.set_paused(i, false);
                (
                    format!(
                        "SIGSTOP member {}{}",
                        i + 1,
                        if Some(i) == lead { " (leader)" } else { "" }
                    ),
                    true,
                )
            }
            3 => {
                let i = pick(&mut rng);
                world.isolate(i, true);
                sleep_ms(1_000 + rng.below(4_000)).await;
                world.isolate(i, false);
                (format!("member {} cut off", i + 1), true)
            }
            4 => {
                let i = rng.below(3) as usize;
                let j = (i + 1 + rng.below(2) as usize) % MEMBERS;
                world.isolate(i, true);
                world.isolate(j, true);
                sleep_ms(1_000 + rng.below(2_000)).await;
                world.isolate(i, false);
                world.isolate(j, false);
                ("no quorum".to_owned(), false)
            }
            _ => {
                {
                    let mut n = world.net.borrow_mut();
                    n.extra_drop = 100 + rng.below(200);
                    n.extra_delay_ms = 20 + rng.below(150);
                }
                sleep_ms(1_000 + rng.below(4_000)).await;
                let mut n = world.net.borrow_mut();
                n.extra_drop = 0;
                n.extra_delay_ms = 0;
                ("every link lossy and slow".to_owned(), false)
            }
        };
        world.faults.borrow_mut().push(Fault {
            what,
            start_ms: start,
            end_ms: world.exec.now(),
            minority,
        });
        sleep_ms(1_000 + rng.below(4_000)).await;
    }
}

/// Where the members' directories go: memory when the machine has it
/// (each cycle's write is an fsync), else the temporary directory.
fn base_dir(seed: u64) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUN: AtomicU64 = AtomicU64::new(0);
    let shm = std::path::Path::new("/dev/shm");
    let root = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    root.join(format!(
        "dflockd-simcluster-{}-{seed}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs one cluster simulation.
pub fn run(opts: &ClusterOptions) -> Result<ClusterReport, Failure> {
    crate::planted::set(opts.bug);
    DRAWS.with(|d| *d.borrow_mut() = Some(Rng::new(opts.seed ^ 0xC1A5_7E55)));
    let dir = base_dir(opts.seed);
    let out = run_inner(opts, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    DRAWS.with(|d| *d.borrow_mut() = None);
    crate::planted::set(Bug::None);
    out
}

fn run_inner(opts: &ClusterOptions, dir: &std::path::Path) -> Result<ClusterReport, Failure> {
    let fail = |what: String| Failure {
        seed: opts.seed,
        what,
    };
    let (rng, exec, start_ms) = super::seeded_exec(opts.seed, &[0, 2, 10], 300);
    let net_state = {
        let mut r = rng.borrow_mut();
        NetState {
            delay_max_ms: [1, 5, 20][r.below(3) as usize],
            drop_per_mille: [0, 5, 20][r.below(3) as usize],
            dup_per_mille: [0, 5, 20][r.below(3) as usize],
            cut: Default::default(),
            extra_drop: 0,
            extra_delay_ms: 0,
            messages: 0,
            dropped: 0,
            duplicated: 0,
        }
    };
    let peers: Vec<Peer> = (1..=MEMBERS as u64)
        .map(|id| Peer {
            id,
            raft_addr: format!("10.0.0.{id}:7000"),
            client_addr: format!("10.0.0.{id}:6388"),
        })
        .collect();
    let members = peers
        .iter()
        .map(|p| {
            let d = dir.join(format!("member-{}", p.id));
            std::fs::create_dir_all(&d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
            Ok(Member {
                id: p.id,
                dir: d,
                up: None,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    // Drawn apart from the main stream, so that the schedules stay.
    let (snapshot_entries, keep_entries) =
        [(10_000, 1_000), (300, 30), (60, 4)][Rng::new(opts.seed ^ 0x5A_945E).below(3) as usize];
    let world = Rc::new(ClusterWorld {
        exec: exec.clone(),
        rng: rng.clone(),
        members: RefCell::new(members),
        peers,
        net: RefCell::new(net_state),
        applies: Arc::new(Mutex::new(Applies {
            by_member: vec![BTreeMap::new(); MEMBERS],
            ..Default::default()
        })),
        core: CoreConfig {
            auto_release_on_disconnect: true,
            ..CoreConfig::default()
        },
        snapshot_entries,
        keep_entries,
        next_inc: Cell::new(1),
        next_pid: Cell::new(1),
        events: RefCell::new(Vec::new()),
        faults: RefCell::new(Vec::new()),
        extra_lines: RefCell::new(Vec::new()),
        reclaims: Cell::new(0),
        snapshots: Cell::new((0, 0)),
        crashes: Cell::new(0),
        pauses: Cell::new(0),
    });
    for i in 0..MEMBERS {
        world
            .start(i)
            .map_err(|e| fail(format!("member {} did not start: {e}", i + 1)))?;
    }
    let end_at = start_ms + opts.duration_ms;
    // Faults from 2 s in until 12 s before the end; the clients stop 4 s
    // before the end and read the fence counter.
    let stop_at = end_at.saturating_sub(4_000);
    let faults_until = end_at.saturating_sub(12_000);
    for n in 0..opts.clients {
        let fork = rng.borrow_mut().fork();
        exec.spawn(0, workload(world.clone(), n, fork, stop_at));
    }
    let fork = rng.borrow_mut().fork();
    exec.spawn(
        0,
        nemesis(world.clone(), fork, start_ms + 2_000, faults_until),
    );
    exec.run_until(end_at);
    let steps = exec.steps.get();
    for m in world.members.borrow().iter() {
        if let Some(up) = &m.up {
            world.count_snapshots(up);
        }
    }

    let h = history::History {
        events: world.events.borrow().clone(),
        faults: world.faults.borrow().clone(),
    };
    // A fault that the next one follows within the bound is judged with
    // it (the checker asks for service within the bound after each fault,
    // and after the last of a burst): the nemesis spaces faults 1-5 s.
    let judged = history::History {
        events: h.events.clone(),
        faults: h
            .faults
            .iter()
            .enumerate()
            .filter(|(i, f)| {
                h.faults
                    .get(i + 1)
                    .is_none_or(|next| next.start_ms >= f.end_ms + RESTORE_BOUND_MS)
            })
            .map(|(_, f)| f.clone())
            .collect(),
    };
    let mut bad = history::check(&judged, RESTORE_BOUND_MS, stop_at);
    bad.extend(world.extra_lines.borrow().iter().cloned());
    let (leader_starts, conflicts) = {
        let a = world.applies.lock().unwrap_or_else(|e| e.into_inner());
        let mut conflicts = a.conflicts.clone();
        let mut seen: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
        for (m, applied) in a.by_member.iter().enumerate() {
            for (&index, &h) in applied {
                match seen.get(&index) {
                    Some(&(other, h2)) if h2 != h => conflicts.push(format!(
                        "members {} and {} applied different entries at index {index}",
                        other + 1,
                        m + 1
                    )),
                    Some(_) => {}
                    None => {
                        seen.insert(index, (m, h));
                    }
                }
            }
        }
        (a.leader_starts, conflicts)
    };
    bad.extend(conflicts);
    let finals = h
        .events
        .iter()
        .filter(|e| e.call == Call::Fence && matches!(e.outcome, Outcome::Ok(_)))
        .count();
    if finals == 0 && opts.clients > 0 {
        bad.push("no final fence read succeeded after the faults healed".into());
    }
    let n = world.net.borrow();
    let report = ClusterReport {
        seed: opts.seed,
        simulated_ms: opts.duration_ms,
        steps,
        operations: h.events.len(),
        grants: h
            .events
            .iter()
            .filter(|e| {
                matches!(e.call, Call::Acquire { .. }) && matches!(e.outcome, Outcome::Ok(_))
            })
            .count(),
        faults: h.faults.len(),
        crashes: world.crashes.get(),
        pauses: world.pauses.get(),
        terms: leader_starts,
        messages: n.messages,
        dropped: n.dropped,
        duplicated: n.duplicated,
        reclaims: world.reclaims.get(),
        snapshots_taken: world.snapshots.get().0,
        snapshots_installed: world.snapshots.get().1,
    };
    drop(n);
    exec.shutdown();
    // Break the world's cycles (members' tasks hold it) before the
    // directories go.
    for m in world.members.borrow_mut().iter_mut() {
        m.up = None;
    }
    drop(world);
    if bad.is_empty() {
        Ok(report)
    } else {
        let mut text = bad.join("\n  ");
        text.push_str("\n  history:");
        for f in &h.faults {
            text.push_str(&format!("\n    {f:?}"));
        }
        Err(fail(format!("cluster: {text}")))
    }
}
