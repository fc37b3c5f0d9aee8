//! A toy replicated lock service on `dflockd::cluster`, run as a real
//! member process by the fault tests until the real server runs on the
//! replication layer.
//!
//! The state machine is a lock table on a replicated clock: `acquire`
//! grants a key with a lease and a fence from one counter, `release`
//! gives it back, `fence` reads the counter through the log. The leader
//! stamps every entry with its clock (spec/cluster.md §4: it continues
//! from the largest stamp it applied, so the clock never goes back), and
//! applying never reads a clock. A client that retries an `acquire` whose
//! answer it lost gets the same grant back, its lease renewed.
//!
//! Client protocol (one line each way, TCP): `acquire KEY CLIENT LEASE_MS`
//! → `ok FENCE` | `busy`; `release KEY CLIENT FENCE` → `ok` |
//! `not_holder`; `fence` → `ok FENCE`; any of them → `not_leader [ADDR]`
//! or `error TEXT`. And `role` → `leader TERM`, `follower TERM`, ...

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dflockd::cluster::replica::{
    self, Bootstrap, ProposeError, ReplicaConfig, ReplicaHandle, Role, StateMachine,
};
use dflockd::cluster::storage::LogStore;
use dflockd::cluster::transport::{MemberAuth, TransportConfig};
use dflockd::cluster::{parse_peers, Peer};

/// The variable that turns the test binary into a member process.
pub const MEMBER_ENV: &str = "DFLOCKD_TOY_MEMBER";
/// The members' log level (server and toy alike; `warn` when unset).
pub const LOG_LEVEL_ENV: &str = "DFLOCKD_FAULT_LOG_LEVEL";

/// One toy member's settings, passed in [`MEMBER_ENV`] as `key=value;...`.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub id: u64,
    pub dir: PathBuf,
    pub raft_listen: String,
    pub client_listen: String,
    /// Every member, as this one reaches it (through the proxies).
    pub peers: Vec<Peer>,
    pub voters: Vec<u64>,
    pub token: String,
    pub tick_ms: u64,
    pub snapshot_entries: u64,
}

impl MemberSpec {
    pub fn encode(&self) -> String {
        let peers: Vec<String> = self.peers.iter().map(Peer::to_string).collect();
        let voters: Vec<String> = self.voters.iter().map(u64::to_string).collect();
        format!(
            "id={};dir={};raft={};client={};peers={};voters={};token={};tick={};snap={}",
            self.id,
            self.dir.display(),
            self.raft_listen,
            self.client_listen,
            peers.join(","),
            voters.join(","),
            self.token,
            self.tick_ms,
            self.snapshot_entries
        )
    }

    pub fn decode(text: &str) -> MemberSpec {
        let get = |k: &str| {
            text.split(';')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{MEMBER_ENV} lacks {k}"))
                .to_owned()
        };
        MemberSpec {
            id: get("id").parse().unwrap(),
            dir: PathBuf::from(get("dir")),
            raft_listen: get("raft"),
            client_listen: get("client"),
            peers: parse_peers(&get("peers")).unwrap(),
            voters: get("voters")
                .split(',')
                .map(|v| v.parse().unwrap())
                .collect(),
            token: get("token"),
            tick_ms: get("tick").parse().unwrap(),
            snapshot_entries: get("snap").parse().unwrap(),
        }
    }
}

/// A logged operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Acquire {
        key: String,
        client: String,
        lease_ms: u64,
        stamp: u64,
    },
    Release {
        key: String,
        client: String,
        fence: u64,
        stamp: u64,
    },
    Fence {
        stamp: u64,
    },
}

impl Op {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Op::Acquire {
                key,
                client,
                lease_ms,
                stamp,
            } => format!("A {key} {client} {lease_ms} {stamp}"),
            Op::Release {
                key,
                client,
                fence,
                stamp,
            } => format!("R {key} {client} {fence} {stamp}"),
            Op::Fence { stamp } => format!("F {stamp}"),
        }
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Op> {
        let text = std::str::from_utf8(bytes).ok()?;
        let w: Vec<&str> = text.split(' ').collect();
        match w.as_slice() {
            ["A", key, client, lease, stamp] => Some(Op::Acquire {
                key: key.to_string(),
                client: client.to_string(),
                lease_ms: lease.parse().ok()?,
                stamp: stamp.parse().ok()?,
            }),
            ["R", key, client, fence, stamp] => Some(Op::Release {
                key: key.to_string(),
                client: client.to_string(),
                fence: fence.parse().ok()?,
                stamp: stamp.parse().ok()?,
            }),
            ["F", stamp] => Some(Op::Fence {
                stamp: stamp.parse().ok()?,
            }),
            _ => None,
        }
    }

    fn stamp(&self) -> u64 {
        match self {
            Op::Acquire { stamp, .. } | Op::Release { stamp, .. } | Op::Fence { stamp } => *stamp,
        }
    }
}

/// What applying an op answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Granted(u64),
    Busy,
    Released,
    NotHolder,
    Fence(u64),
    Garbage,
}

/// The replicated lock table.
#[derive(Default, Debug, Clone)]
pub struct Locks {
    /// The replicated clock: the largest stamp applied (ms).
    pub now: u64,
    pub fence: u64,
    /// key → (client, fence, lease deadline).
    pub holders: BTreeMap<String, (String, u64, u64)>,
    /// Shared with the client front: the clock, for the leader's stamps.
    pub clock: Arc<AtomicU64>,
}

impl StateMachine for Locks {
    type Output = Reply;

    fn apply(&mut self, _index: u64, data: &[u8]) -> Result<Reply, String> {
        Ok(self.apply_op(data))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.snapshot_text()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.restore_text(data)
    }
}

impl Locks {
    /// The toy answers garbage with a reply of its own (its client never
    /// sends any; the real machine stops on an entry it cannot read).
    fn apply_op(&mut self, data: &[u8]) -> Reply {
        let Some(op) = Op::decode(data) else {
            return Reply::Garbage;
        };
        // The clock never goes back, whatever a stamp says.
        self.now = self.now.max(op.stamp());
        self.clock.store(self.now, Ordering::Relaxed);
        match op {
            Op::Acquire {
                key,
                client,
                lease_ms,
                ..
            } => match self.holders.get_mut(&key) {
                // The holder asks again (it lost the answer): the same
                // grant, its lease counted afresh, as the client counts it.
                Some((c, f, until)) if *c == client => {
                    *until = self.now + lease_ms;
                    Reply::Granted(*f)
                }
                Some((_, _, until)) if *until > self.now => Reply::Busy,
                _ => {
                    self.fence += 1;
                    self.holders
                        .insert(key, (client, self.fence, self.now + lease_ms));
                    Reply::Granted(self.fence)
                }
            },
            Op::Release {
                key, client, fence, ..
            } => match self.holders.get(&key) {
                Some((c, f, until)) if *c == client && *f == fence && *until > self.now => {
                    self.holders.remove(&key);
                    Reply::Released
                }
                _ => Reply::NotHolder,
            },
            Op::Fence { .. } => Reply::Fence(self.fence),
        }
    }

    fn snapshot_text(&self) -> Vec<u8> {
        let mut out = format!("{} {}\n", self.now, self.fence);
        for (k, (c, f, u)) in &self.holders {
            out.push_str(&format!("{k} {c} {f} {u}\n"));
        }
        out.into_bytes()
    }

    fn restore_text(&mut self, data: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
        let mut lines = text.lines();
        let head: Vec<u64> = lines
            .next()
            .ok_or("empty snapshot")?
            .split(' ')
            .map(|n| n.parse().map_err(|_| "bad header"))
            .collect::<Result<_, _>>()?;
        let [now, fence] = head[..] else {
            return Err("bad header".into());
        };
        let mut holders = BTreeMap::new();
        for line in lines {
            let w: Vec<&str> = line.split(' ').collect();
            let [k, c, f, u] = w[..] else {
                return Err("bad holder".into());
            };
            holders.insert(
                k.to_owned(),
                (
                    c.to_owned(),
                    f.parse().map_err(|_| "bad fence")?,
                    u.parse().map_err(|_| "bad deadline")?,
                ),
            );
        }
        self.now = now;
        self.fence = fence;
        self.holders = holders;
        self.clock.store(now, Ordering::Relaxed);
        Ok(())
    }
}

/// The leader's clock: continues from the largest stamp applied when it
/// took over, at the rate of its monotonic clock (spec/cluster.md §4).
struct LeaderClock {
    start: Instant,
    /// (term, offset in ms) of the current leadership.
    term_offset: Mutex<(u64, i64)>,
    applied: Arc<AtomicU64>,
}

impl LeaderClock {
    fn stamp(&self, term: u64) -> u64 {
        let mono = self.start.elapsed().as_millis() as i64;
        let applied = self.applied.load(Ordering::Relaxed) as i64;
        let mut g = self.term_offset.lock().unwrap();
        if g.0 != term {
            *g = (term, applied - mono);
        }
        (mono + g.1).max(applied) as u64
    }
}

/// The member process: never returns (it is killed by PID).
pub fn run_member(spec: MemberSpec) -> ! {
    // The replica's and the transport's log lines (the server's logger),
    // to stderr: the evidence a failing test shows.
    let level = std::env::var(LOG_LEVEL_ENV)
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    let _ = dflockd::logging::init(level, dflockd::logging::Format::Text);
    let ex = Arc::new(smol::Executor::new());
    for _ in 0..2 {
        let ex = ex.clone();
        std::thread::spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())));
    }
    let clock = Arc::new(AtomicU64::new(0));
    let sm = Locks {
        clock: clock.clone(),
        ..Locks::default()
    };
    let bootstrap = if spec.voters.contains(&spec.id) {
        Bootstrap::New(spec.voters.clone())
    } else {
        Bootstrap::Join
    };
    let mut cfg = ReplicaConfig::new(spec.id, spec.peers.clone(), bootstrap);
    cfg.tick = Duration::from_millis(spec.tick_ms);
    cfg.snapshot_entries = spec.snapshot_entries;
    cfg.keep_entries = spec.snapshot_entries / 4;
    let store = LogStore::open(&spec.dir).unwrap_or_else(|e| {
        eprintln!("member {}: {e}", spec.id);
        std::process::exit(2)
    });
    let tcfg = TransportConfig::new(
        spec.id,
        MemberAuth {
            token: Some(Arc::from(spec.token.as_bytes())),
            tls: None,
        },
    );
    let handle = replica::spawn(cfg, sm, store, tcfg, &spec.raft_listen, ex).unwrap_or_else(|e| {
        eprintln!("member {}: {e}", spec.id);
        std::process::exit(2)
    });
    let listener = TcpListener::bind(&spec.client_listen).unwrap();
    let leader_clock = Arc::new(LeaderClock {
        start: Instant::now(),
        term_offset: Mutex::new((0, 0)),
        applied: clock,
    });
    // On a line of its own: libtest has already written "test ... " here.
    println!("\nTOY-MEMBER-READY {}", spec.id);
    let _ = std::io::stdout().flush();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let handle = handle.clone();
        let leader_clock = leader_clock.clone();
        std::thread::spawn(move || serve(conn, handle, leader_clock));
    }
    unreachable!("the listener never ends");
}

fn serve(conn: TcpStream, handle: ReplicaHandle<Reply>, clock: Arc<LeaderClock>) {
    let mut out = conn.try_clone().unwrap();
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let answer = answer(&line, &handle, &clock);
        if out.write_all(format!("{answer}\n").as_bytes()).is_err() {
            return;
        }
    }
}

fn answer(line: &str, handle: &ReplicaHandle<Reply>, clock: &LeaderClock) -> String {
    let status = handle.status();
    if line == "role" {
        return format!("{} {}", status.role.as_str(), status.term);
    }
    if status.role != Role::Leader {
        return match status.leader_client_addr {
            Some(a) => format!("not_leader {a}"),
            None => "not_leader".to_owned(),
        };
    }
    let stamp = clock.stamp(status.term);
    let w: Vec<&str> = line.split(' ').collect();
    let op = match w.as_slice() {
        ["acquire", key, client, lease] => Op::Acquire {
            key: key.to_string(),
            client: client.to_string(),
            lease_ms: lease.parse().unwrap_or(1000),
            stamp,
        },
        ["release", key, client, fence] => Op::Release {
            key: key.to_string(),
            client: client.to_string(),
            fence: fence.parse().unwrap_or(0),
            stamp,
        },
        ["fence"] => Op::Fence { stamp },
        _ => return "error unknown command".to_owned(),
    };
    match smol::block_on(handle.propose(op.encode())) {
        Ok(Reply::Granted(f)) | Ok(Reply::Fence(f)) => format!("ok {f}"),
        Ok(Reply::Released) => "ok".to_owned(),
        Ok(Reply::Busy) => "busy".to_owned(),
        Ok(Reply::NotHolder) => "not_holder".to_owned(),
        Ok(Reply::Garbage) => "error garbage".to_owned(),
        Err(ProposeError::NotLeader {
            client_addr: Some(a),
            ..
        }) => format!("not_leader {a}"),
        Err(ProposeError::NotLeader { .. }) => "not_leader".to_owned(),
        Err(e) => format!("error {e}"),
    }
}
