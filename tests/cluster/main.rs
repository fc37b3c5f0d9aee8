//! Fault tests of cluster mode, Jepsen-style, on loopback only.
//!
//! Three member processes talk to each other through one fault-injecting
//! proxy per directed link (`proxy.rs`). The members are the real `dflockd`
//! binary in cluster mode (`--raft-dir`, the line protocol's `l` and `r`),
//! or, to test the harness and the replication layer alone, this binary
//! re-run as a toy lock service on `dflockd::cluster` (`toy.rs`). Clients take and
//! release locks and record every operation (`history.rs`) while a nemesis
//! follows a random schedule of faults: `kill -9` of the leader or of any
//! member and a restart, `SIGSTOP` of the leader past its election timeout
//! and `SIGCONT`, one member cut off, every link delayed, lossy links, no
//! quorum at all. Afterwards the checker verifies mutual exclusion on live
//! leases, fence order, that no acknowledged grant was lost, and that
//! service came back within a bound after every fault.
//!
//! Modules by boundary:
//! * `toy`: the member process (state machine, leader clock, client port);
//! * `process`: start, `kill -9`, `SIGSTOP`/`SIGCONT`, restart, by PID;
//! * `proxy`: the per-link faults;
//! * `history`: the recorder and the checker, with planted-bug tests.
//!
//! A failure carries its evidence, since the members' directories go
//! with the test: each member's state (running, frozen, killed, or ended
//! on its own with its exit code or signal) and the last lines of its
//! stderr, where the harness also notes when it started, killed, froze
//! and resumed it; with the schedule and the faults' times. With
//! `DFLOCKD_ARTIFACTS` set (CI sets it) the members' whole stderr files
//! are copied there too. A passing run prints none of it. The members log
//! at `warn`; `DFLOCKD_FAULT_LOG_LEVEL=debug` adds the Raft library's
//! elections and role changes. The members' directories live on a
//! tmpfs when there is one (`scratch_root`: `fsync` on a disk shared
//! with a build stalls every member at once for seconds);
//! `DFLOCKD_FAULT_DIR` puts them elsewhere.
//!
//! CI runs `DFLOCKD_FAULT_SCHEDULES` schedules against the real server
//! (default 20) and `DFLOCKD_TOY_SCHEDULES` against the toy (default 5),
//! about two minutes together on two cores; `scripts/cluster-soak.sh`
//! runs many more. Every schedule prints its seed; `DFLOCKD_FAULT_SEED`
//! replays one (against both kinds of member).

mod history;
mod process;
mod proxy;
mod toy;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dflockd::cluster::Peer;
use history::{Call, Event, Fault as FaultRecord, Outcome, Recorder};
use process::{wait_until, Launch, Member};
use proxy::{Fault, Proxy};
use toy::MemberSpec;

/// Not a test: the body of a member process. The fault tests run this
/// binary again with `DFLOCKD_TOY_MEMBER` set and only this test selected.
#[test]
#[ignore = "run by the fault tests as a member process"]
fn toy_member_process() {
    match std::env::var(toy::MEMBER_ENV) {
        Ok(spec) => toy::run_member(MemberSpec::decode(&spec)),
        Err(_) => panic!("{} is not set: this is not a test", toy::MEMBER_ENV),
    }
}

const TOKEN: &str = "fault-test-member-token-0123456789abcdef";
/// One Raft tick: elections take 10-20 ticks (200-400 ms).
const TICK_MS: u64 = 20;
/// How long service may take to come back after a fault ends, or to
/// continue once a minority fault began (an election, a process start, a
/// busy two-core machine).
const RESTORE_BOUND_MS: u64 = 6_000;
/// Lease of every grant: the toy takes milliseconds; the server whole
/// seconds, of which one is the least.
const TOY_LEASE_MS: u64 = 700;
const SERVER_LEASE_MS: u64 = 1_000;

/// Which service the members run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Toy,
    Server,
}

impl Kind {
    fn lease_ms(self) -> u64 {
        match self {
            Kind::Toy => TOY_LEASE_MS,
            Kind::Server => SERVER_LEASE_MS,
        }
    }
}
/// One client operation's limit before its outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_millis(1_000);

/// A fresh directory, removed on drop, under [`scratch_root`].
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        use std::sync::atomic::AtomicU64;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = scratch_root().join(format!(
            "dflockd-faults-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Free space a tmpfs needs to hold the members' directories: a cluster's
/// take well under a megabyte, and two clusters run at once on two cores
/// (a container's default `/dev/shm` of 64 MiB qualifies).
const SCRATCH_ROOM: u64 = 16 << 20;

/// Where the members' directories and stderr files go:
/// `DFLOCKD_FAULT_DIR` when set, else `/dev/shm` when it is a tmpfs with
/// [`SCRATCH_ROOM`] free, else the temp directory.
///
/// Memory, not the disk, because the disk is shared with whatever else the
/// machine runs, and a member's `fsync` waits for it: beside a build that
/// links (CI runs the suite on two cores beside other work), the three
/// members' `fsync`s were seen blocked together for seconds behind the
/// device's cache flush (`blkdev_issue_flush`, `folio_wait_writeback`),
/// and service came back later than the restore bound after a fault
/// although no fault of the schedule caused the wait. On a tmpfs `fsync`
/// returns at once. The faults injected lose nothing by it: a `kill -9`
/// loses no written data on any file system (the page cache keeps it), so
/// the members recover through the same paths; durability against power
/// loss is not what these tests inject.
fn scratch_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("DFLOCKD_FAULT_DIR") {
            return PathBuf::from(dir);
        }
        let shm = std::path::Path::new("/dev/shm");
        if is_tmpfs(shm) && free_bytes(shm).is_some_and(|b| b >= SCRATCH_ROOM) {
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    })
    .clone()
}

/// Whether `dir` is the mount point of a tmpfs (per `/proc/mounts`).
fn is_tmpfs(dir: &std::path::Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (_, at, kind) = (f.next(), f.next(), f.next());
        at == dir.to_str() && kind == Some("tmpfs")
    })
}

/// Bytes free to an unprivileged writer on the file system of `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) writes only into the zeroed struct we pass, and
    // reads the NUL-terminated path we own for the call's duration.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The members' log level: `DFLOCKD_FAULT_LOG_LEVEL`, else `warn` (`debug`
/// adds the Raft library's elections and role changes, `trace` its
/// every message).
fn member_log_level() -> String {
    std::env::var(toy::LOG_LEVEL_ENV).unwrap_or_else(|_| "warn".to_owned())
}

/// A port for a member's listener that a restart can bind again: below the
/// kernel's ephemeral range, so that no outgoing connection takes it while
/// its member is down (`dflockd::conformance::spawn::unused_port`).
fn free_addr() -> SocketAddr {
    let port = dflockd::conformance::spawn::unused_port().expect("a free loopback port");
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Three members and the six proxies between them.
struct Cluster {
    kind: Kind,
    seed: u64,
    /// [`process::oom_kills`] when the cluster started.
    oom_kills_at_start: Option<u64>,
    _dir: TempDir,
    members: Vec<Member>,
    /// `links[i][j]`: the proxy member `i` goes through to reach `j`.
    links: Vec<Vec<Option<Proxy>>>,
    client_addrs: Vec<String>,
}

impl Cluster {
    fn start(kind: Kind, n: usize, seed: u64) -> Cluster {
        let dir = TempDir::new(&format!("{kind:?}-s{seed}"));
        let raft: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let client: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let links: Vec<Vec<Option<Proxy>>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        (i != j).then(|| Proxy::start(raft[j], seed * 31 + (i * n + j) as u64))
                    })
                    .collect()
            })
            .collect();
        let voters: Vec<u64> = (1..=n as u64).collect();
        let mut members = Vec::new();
        for i in 0..n {
            let peers = (0..n)
                .map(|j| Peer {
                    id: j as u64 + 1,
                    raft_addr: match &links[i][j] {
                        Some(p) => p.addr().to_string(),
                        None => raft[i].to_string(),
                    },
                    client_addr: client[j].to_string(),
                })
                .collect();
            let id = i as u64 + 1;
            let member_dir = dir.0.join(format!("m{id}"));
            let launch = match kind {
                Kind::Toy => Launch::Toy(MemberSpec {
                    id,
                    dir: member_dir,
                    raft_listen: raft[i].to_string(),
                    client_listen: client[i].to_string(),
                    peers,
                    voters: voters.clone(),
                    token: TOKEN.to_owned(),
                    tick_ms: TICK_MS,
                    snapshot_entries: 40,
                }),
                Kind::Server => {
                    let peers: Vec<String> = peers.iter().map(Peer::to_string).collect();
                    let args = [
                        ("--host", "127.0.0.1".to_owned()),
                        ("--port", client[i].port().to_string()),
                        ("--raft-dir", member_dir.display().to_string()),
                        ("--node-id", id.to_string()),
                        ("--raft-addr", raft[i].to_string()),
                        ("--cluster-peers", peers.join(",")),
                        ("--raft-auth-token", TOKEN.to_owned()),
                        ("--raft-tick", TICK_MS.to_string()),
                        ("--log-level", member_log_level()),
                    ];
                    Launch::Server {
                        dir: member_dir,
                        args: args
                            .iter()
                            .flat_map(|(f, v)| [f.to_string(), v.clone()])
                            .collect(),
                        client: client[i],
                    }
                }
            };
            members.push(Member::new(id, launch));
        }
        for m in &mut members {
            m.start();
        }
        Cluster {
            kind,
            seed,
            oom_kills_at_start: process::oom_kills(),
            _dir: dir,
            members,
            links,
            client_addrs: client.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The members whose process ended without the harness killing it.
    fn exited_by_themselves(&mut self) -> Vec<u64> {
        let mut ids = Vec::new();
        for m in &mut self.members {
            if m.exited_by_itself() {
                ids.push(m.id);
            }
        }
        ids
    }

    /// Every member's state and the tail of its stderr; the whole stderr
    /// files are copied to `$DFLOCKD_ARTIFACTS/cluster/` when it is set.
    fn evidence(&mut self) -> String {
        let mut text = match (self.oom_kills_at_start, process::oom_kills()) {
            (Some(then), Some(now)) => format!(
                "OOM kills in this memory cgroup: {now} ({} since the cluster started)\n",
                now.saturating_sub(then)
            ),
            _ => String::new(),
        };
        for m in &mut self.members {
            text.push_str(&m.report());
            text.push('\n');
        }
        if let Some(root) = std::env::var_os("DFLOCKD_ARTIFACTS") {
            let dir = PathBuf::from(root).join("cluster").join(format!(
                "{:?}-s{}-{}",
                self.kind,
                self.seed,
                std::process::id()
            ));
            let copied = std::fs::create_dir_all(&dir).is_ok()
                && self.members.iter().all(|m| {
                    std::fs::copy(m.stderr_path(), dir.join(format!("m{}.stderr", m.id))).is_ok()
                });
            if copied {
                text.push_str(&format!("whole stderr files: {}\n", dir.display()));
            }
        }
        text
    }

    /// Sets the fault of every link touching member `i` (both ways).
    fn isolate(&self, i: usize, fault: Fault) {
        for (a, row) in self.links.iter().enumerate() {
            for (b, p) in row.iter().enumerate() {
                if let Some(p) = p {
                    if a == i || b == i {
                        p.set(fault);
                    }
                }
            }
        }
    }

    fn all_links(&self, fault: Fault) {
        for p in self.links.iter().flatten().flatten() {
            p.set(fault);
        }
    }

    /// The member that says it leads with the highest term, if any.
    fn leader(&self) -> Option<usize> {
        let mut best = None;
        for (i, addr) in self.client_addrs.iter().enumerate() {
            if !self.members[i].is_up() {
                continue;
            }
            let role = match self.kind {
                Kind::Toy => request(addr, "role").and_then(|reply| {
                    let mut w = reply.split(' ');
                    let role = w.next()?.to_owned();
                    Some((role, w.next()?.parse().ok()?))
                }),
                // `stats` carries the member's own view in `cluster`.
                Kind::Server => request(addr, "stats\n_\n").and_then(|reply| {
                    let v: serde_json::Value =
                        serde_json::from_str(reply.strip_prefix("ok ")?).ok()?;
                    let c = &v["cluster"];
                    Some((c["role"].as_str()?.to_owned(), c["term"].as_u64()?))
                }),
            };
            if let Some((role, term)) = role {
                if role == "leader" && best.is_none_or(|(_, t)| term > t) {
                    best = Some((i, term));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn wait_leader(&self) -> usize {
        let mut found = None;
        wait_until("a leader", Duration::from_secs(20), || {
            found = self.leader();
            found.is_some()
        });
        found.expect("checked")
    }
}

impl Drop for Cluster {
    /// A test that panics with the cluster up (no leader, no final read, a
    /// failed check) shows the members' evidence with its message.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let evidence = self.evidence();
            eprintln!(
                "{:?} cluster of seed {} at the failure:\n{evidence}",
                self.kind, self.seed
            );
        }
    }
}

/// The faults so far with their times, for a failure message.
fn fault_timeline(rec: &Recorder) -> String {
    let mut text = String::new();
    for f in &rec.history().faults {
        text.push_str(&format!(
            "  {}..{}ms: {}{}\n",
            f.start_ms,
            f.end_ms,
            f.what,
            if f.minority { " (minority)" } else { "" }
        ));
    }
    text
}

/// One request on a fresh connection (status questions).
fn request(addr: &str, line: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).ok()?;
    Some(reply.trim().to_owned())
}

/// How one attempt of a request ended.
enum Exchange {
    /// No connection: nothing was sent.
    NotSent,
    /// Sent, but no answer came back (broken connection, time out).
    Lost,
    Reply(String),
}

/// A client of the toy service: follows `not_leader`, otherwise tries the
/// other members; records every operation. A request that was sent and
/// not answered is recorded as unknown and not retried: a retry could
/// apply it twice (a release) or report the second attempt's answer as
/// the first's.
struct Client {
    kind: Kind,
    name: String,
    members: Vec<String>,
    target: String,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
    rec: Recorder,
    /// The server's tokens of the grants this client holds, by fence (a
    /// release names its token; the history names grants by fence).
    tokens: std::collections::HashMap<u64, String>,
    /// Final reads so far (each takes a fresh key on the server).
    reads: u64,
}

impl Client {
    fn new(kind: Kind, name: &str, members: &[String], rec: Recorder) -> Client {
        Client {
            kind,
            name: name.to_owned(),
            members: members.to_vec(),
            target: members[0].clone(),
            conn: None,
            rec,
            tokens: Default::default(),
            reads: 0,
        }
    }

    /// The request line(s) of `call`.
    fn line(&mut self, call: &Call) -> String {
        match (self.kind, call) {
            (Kind::Toy, Call::Acquire { key, lease_ms }) => {
                format!("acquire {key} {} {lease_ms}", self.name)
            }
            (Kind::Toy, Call::Release { key, fence }) => {
                format!("release {key} {} {fence}", self.name)
            }
            (Kind::Toy, Call::Fence) => "fence".to_owned(),
            // Try once (timeout 0): a busy key is a definite "no".
            (Kind::Server, Call::Acquire { key, lease_ms }) => {
                format!("l\n{key}\n0 {}", lease_ms.div_ceil(1000))
            }
            (Kind::Server, Call::Release { key, fence }) => {
                let token = self.tokens.get(fence).cloned().unwrap_or_default();
                format!("r\n{key}\n{token}")
            }
            // The server has no fence read: a grant on a key never used
            // before carries a fence above every fence issued so far.
            (Kind::Server, Call::Fence) => {
                self.reads += 1;
                format!("l\nfinal-read-{}-{}\n0 1", self.name, self.reads)
            }
        }
    }

    /// A reply of the server in the toy's words: `ok FENCE`, `ok`, `busy`,
    /// `not_holder`, `not_leader [ADDR]`, or anything else (unknown).
    fn translate(&mut self, call: &Call, reply: &str) -> String {
        if self.kind == Kind::Toy {
            return reply.to_owned();
        }
        history::translate(&mut self.tokens, call, reply)
    }

    fn next_member(&mut self) {
        let i = self
            .members
            .iter()
            .position(|m| *m == self.target)
            .unwrap_or(0);
        self.target = self.members[(i + 1) % self.members.len()].clone();
        self.conn = None;
    }

    /// One line out, one line back, within what is left of `deadline`.
    fn exchange(&mut self, line: &str, deadline: Instant) -> Exchange {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Exchange::NotSent;
        }
        if self.conn.is_none() {
            let Ok(addr) = self.target.parse::<SocketAddr>() else {
                return Exchange::NotSent;
            };
            let Ok(s) = TcpStream::connect_timeout(&addr, left) else {
                return Exchange::NotSent;
            };
            let Ok(r) = s.try_clone() else {
                return Exchange::NotSent;
            };
            self.conn = Some((s, BufReader::new(r)));
        }
        let Some((s, r)) = self.conn.as_mut() else {
            return Exchange::NotSent;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        // From the first byte written on, the request may have arrived:
        // a failure after that leaves its outcome unknown.
        let sent = s.write_all(format!("{line}\n").as_bytes());
        let mut reply = String::new();
        match sent.and_then(|_| r.read_line(&mut reply)) {
            Ok(n) if n > 0 => Exchange::Reply(reply.trim().to_owned()),
            _ => {
                self.conn = None;
                Exchange::Lost
            }
        }
    }

    /// Runs `call` to a definite answer, or until the timeout (unknown).
    fn run(&mut self, call: Call) -> Outcome {
        let line = self.line(&call);
        let invoke_ms = self.rec.now_ms();
        let deadline = Instant::now() + OP_TIMEOUT;
        let outcome = loop {
            let reply = match self.exchange(&line, deadline) {
                Exchange::Reply(r) => self.translate(&call, &r),
                // It may have been applied: never retried, never guessed.
                Exchange::Lost => {
                    self.next_member();
                    break Outcome::Unknown;
                }
                Exchange::NotSent => {
                    if Instant::now() >= deadline {
                        break Outcome::Fail("unreachable".into());
                    }
                    // Could not connect (the member is down): nothing was
                    // sent, so trying another is safe.
                    self.next_member();
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            match history::answer(&reply) {
                history::Answer::Settled(outcome) => break outcome,
                // A definite "not here": follow the hint or try the next.
                history::Answer::NotLeader(hint) => {
                    match hint {
                        Some(addr) if addr != self.target => {
                            self.target = addr.to_owned();
                            self.conn = None;
                        }
                        _ => {
                            self.next_member();
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    if Instant::now() >= deadline {
                        break Outcome::Fail("not_leader".into());
                    }
                }
                // `error`: the leader lost the lead with the entry in
                // flight: it may yet apply.
                history::Answer::Unknown => {
                    self.next_member();
                    break Outcome::Unknown;
                }
            }
        };
        self.rec.record(Event {
            client: self.name.clone(),
            call,
            invoke_ms,
            complete_ms: self.rec.now_ms(),
            outcome: outcome.clone(),
        });
        outcome
    }
}

/// A client's workload until `stop`: take one of two keys, hold it a
/// little, give it back.
fn workload(mut c: Client, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let lease_ms = c.kind.lease_ms();
    while !stop.load(Ordering::Relaxed) {
        let key = if rng.below(2) == 0 { "k1" } else { "k2" };
        let outcome = c.run(Call::Acquire {
            key: key.into(),
            lease_ms,
        });
        match outcome {
            Outcome::Ok(fence) => {
                std::thread::sleep(Duration::from_millis(rng.below(30)));
                c.run(Call::Release {
                    key: key.into(),
                    fence,
                });
            }
            _ => std::thread::sleep(Duration::from_millis(5 + rng.below(20))),
        }
    }
}

/// xorshift64: schedules need reproducible choices, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The faults a schedule draws from.
#[derive(Clone, Copy, Debug)]
enum Nemesis {
    KillLeader,
    KillAny,
    FreezeLeader,
    IsolateOne,
    DelayAll,
    FlakyAll,
    NoQuorum,
}

const NEMESES: [Nemesis; 7] = [
    Nemesis::KillLeader,
    Nemesis::KillAny,
    Nemesis::FreezeLeader,
    Nemesis::IsolateOne,
    Nemesis::DelayAll,
    Nemesis::FlakyAll,
    Nemesis::NoQuorum,
];

/// Injects one fault for `hold`, heals it, records it.
fn inject(c: &mut Cluster, n: Nemesis, rng: &mut Rng, hold: Duration, rec: &Recorder) {
    let start_ms = rec.now_ms();
    let members = c.members.len();
    let (what, minority) = match n {
        Nemesis::KillLeader | Nemesis::KillAny => {
            let victim = match n {
                Nemesis::KillLeader => c.wait_leader(),
                _ => rng.below(members as u64) as usize,
            };
            c.members[victim].kill9();
            std::thread::sleep(hold);
            c.members[victim].start();
            (format!("kill -9 member {} and restart", victim + 1), true)
        }
        Nemesis::FreezeLeader => {
            let victim = c.wait_leader();
            c.members[victim].freeze();
            std::thread::sleep(hold);
            c.members[victim].thaw();
            (format!("SIGSTOP leader {} then SIGCONT", victim + 1), true)
        }
        Nemesis::IsolateOne => {
            let victim = rng.below(members as u64) as usize;
            c.isolate(victim, Fault::Partition);
            std::thread::sleep(hold);
            c.isolate(victim, Fault::Pass);
            (format!("member {} cut off", victim + 1), true)
        }
        Nemesis::DelayAll => {
            let ms = 20 + rng.below(60);
            c.all_links(Fault::Delay(ms));
            std::thread::sleep(hold);
            c.all_links(Fault::Pass);
            (format!("every link delayed {ms}ms"), false)
        }
        Nemesis::FlakyAll => {
            let per_mille = 20 + rng.below(100) as u32;
            c.all_links(Fault::Flaky(per_mille));
            std::thread::sleep(hold);
            c.all_links(Fault::Pass);
            (format!("every link drops {per_mille}/1000 chunks"), false)
        }
        Nemesis::NoQuorum => {
            c.all_links(if rng.below(2) == 0 {
                Fault::Partition
            } else {
                Fault::Blackhole
            });
            std::thread::sleep(hold);
            c.all_links(Fault::Pass);
            ("every link cut (no quorum)".to_owned(), false)
        }
    };
    rec.fault(FaultRecord {
        what,
        start_ms,
        end_ms: rec.now_ms(),
        minority,
    });
}

/// One schedule: a cluster, four clients, `faults` random faults, then a
/// quiet spell and the final read; returns the checker's findings.
fn run_schedule(kind: Kind, seed: u64, faults: usize) -> Vec<String> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut cluster = Cluster::start(kind, 3, seed);
    cluster.wait_leader();
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let c = Client::new(kind, &format!("c{i}"), &cluster.client_addrs, rec.clone());
            let stop = stop.clone();
            let s = seed * 101 + i;
            std::thread::spawn(move || workload(c, stop, s))
        })
        .collect();
    let mut plan = Vec::new();
    for _ in 0..faults {
        let n = NEMESES[rng.below(NEMESES.len() as u64) as usize];
        let hold = Duration::from_millis(500 + rng.below(1000));
        plan.push((n, hold));
    }
    eprintln!("{kind:?} schedule {seed}: {plan:?}");
    // The history's time 0 in UTC: the harness's lines in the members'
    // stderr carry UTC times.
    let t0 = dflockd::logging::timestamp(std::time::SystemTime::now() - rec.elapsed());
    // A member that ends on its own is a finding at once, with its
    // evidence, found after the fault that preceded it or in the quiet.
    let mut exited = Vec::new();
    for (n, hold) in &plan {
        std::thread::sleep(Duration::from_millis(200 + rng.below(400)));
        inject(&mut cluster, *n, &mut rng, *hold, &rec);
        exited = cluster.exited_by_themselves();
        if !exited.is_empty() {
            break;
        }
    }
    // Quiet: service must come back, and the clients see it.
    let quiet_until = Instant::now() + Duration::from_millis(RESTORE_BOUND_MS);
    let last_fault_end = rec.history().faults.last().map_or(0, |f| f.end_ms);
    while exited.is_empty() && Instant::now() < quiet_until {
        let served = rec
            .history()
            .events
            .iter()
            .any(|e| matches!(e.outcome, Outcome::Ok(_)) && e.complete_ms >= last_fault_end);
        if served {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        exited = cluster.exited_by_themselves();
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client panicked");
    }
    // What a finding of this schedule says besides the checker's words.
    let context = |cluster: &mut Cluster, rec: &Recorder| {
        format!(
            "schedule {plan:?}; history time 0 = {t0}, now {}ms; faults:\n{}{}",
            rec.now_ms(),
            fault_timeline(rec),
            cluster.evidence()
        )
    };
    if exited.is_empty() {
        // The final read below may take a while: look once more first.
        exited = cluster.exited_by_themselves();
    }
    if !exited.is_empty() {
        return vec![format!(
            "member(s) {exited:?} exited by themselves (found at {}ms)\n{}",
            rec.now_ms(),
            context(&mut cluster, &rec)
        )];
    }
    // The final read of the fence counter, after every grant.
    let mut reader = Client::new(kind, "reader", &cluster.client_addrs, rec.clone());
    let read_deadline = Instant::now() + Duration::from_millis(RESTORE_BOUND_MS);
    while !matches!(reader.run(Call::Fence), Outcome::Ok(_)) {
        if Instant::now() >= read_deadline {
            return vec![format!(
                "no final read within {RESTORE_BOUND_MS}ms of the quiet spell\n{}",
                context(&mut cluster, &rec)
            )];
        }
    }
    let exited = cluster.exited_by_themselves();
    if !exited.is_empty() {
        return vec![format!(
            "member(s) {exited:?} exited by themselves during the final read (found at {}ms)\n{}",
            rec.now_ms(),
            context(&mut cluster, &rec)
        )];
    }
    let h = rec.history();
    let grants = h
        .events
        .iter()
        .filter(|e| matches!(e.call, Call::Acquire { .. }) && matches!(e.outcome, Outcome::Ok(_)))
        .count();
    eprintln!(
        "schedule {seed}: {} operations, {grants} grants, {} faults",
        h.events.len(),
        h.faults.len()
    );
    let mut bad = history::check(&h, RESTORE_BOUND_MS, rec.now_ms());
    if !bad.is_empty() {
        if let Ok(path) = std::env::var("DFLOCKD_FAULT_DUMP") {
            let mut text = String::new();
            for f in &h.faults {
                text.push_str(&format!("{f:?}\n"));
            }
            let mut events = h.events.clone();
            events.sort_by_key(|e| e.invoke_ms);
            for e in &events {
                text.push_str(&format!("{e:?}\n"));
            }
            let _ = std::fs::write(format!("{path}.{seed}"), text);
        }
    }
    if grants < 5 {
        bad.push(format!("only {grants} grants: the workload barely ran"));
    }
    if !bad.is_empty() {
        bad.push(context(&mut cluster, &rec));
    }
    bad
}

/// The seeds to run: `DFLOCKD_FAULT_SEED` alone, else 1..=`count` (from
/// `var`, or `default`).
fn seeds(var: &str, default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("DFLOCKD_FAULT_SEED") {
        return vec![s.parse().expect("DFLOCKD_FAULT_SEED is a number")];
    }
    let count: u64 = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    (1..=count).collect()
}

/// Runs `seeds` as schedules of two faults each against `kind`; every
/// history must pass the checker. Prints each seed and the time taken.
fn run_schedules(kind: Kind, seeds: Vec<u64>) {
    let started = Instant::now();
    let mut failures = Vec::new();
    for &seed in &seeds {
        let bad = run_schedule(kind, seed, 2);
        if !bad.is_empty() {
            failures.push(format!(
                "{kind:?} schedule {seed} (replay: DFLOCKD_FAULT_SEED={seed}):\n  {}",
                bad.join("\n  ")
            ));
        }
    }
    eprintln!(
        "{kind:?}: {} fault schedules in {:.1}s, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Random fault schedules against three `dflockd` members: every history
/// must pass the checker.
#[test]
fn random_fault_schedules_against_the_server_keep_locks_safe_and_service_restored() {
    run_schedules(Kind::Server, seeds("DFLOCKD_FAULT_SCHEDULES", 20));
}

/// The same against three toy members: the replication layer alone.
#[test]
fn random_fault_schedules_against_the_toy_keep_locks_safe_and_service_restored() {
    run_schedules(Kind::Toy, seeds("DFLOCKD_TOY_SCHEDULES", 5));
}

/// A member that ends on its own is reported with how it ended (the
/// signal) and its stderr, where the harness noted its start and its end.
#[test]
fn a_member_that_ends_by_itself_is_reported_with_its_status_and_stderr() {
    let mut cluster = Cluster::start(Kind::Toy, 1, 9_001);
    // Alone in its process group: no orphaned-group SIGHUP reaches a
    // frozen member (see `Member::start`).
    let first = cluster.members[0].pid().expect("started");
    // SAFETY: getpgid(2) on the PID of a child we have not reaped.
    assert_eq!(
        unsafe { libc::getpgid(first as libc::pid_t) },
        first as libc::pid_t
    );
    // Killed by the harness and restarted is not ended by itself.
    cluster.members[0].kill9();
    assert!(cluster.exited_by_themselves().is_empty());
    assert!(cluster
        .evidence()
        .contains("member 1: down (killed by the harness)"));
    cluster.members[0].start();
    let pid = cluster.members[0].pid().expect("started");
    // SAFETY: kill(2) on the PID of a child this test started and has not
    // reaped. Not through the harness's `kill9`: to the harness, the
    // member ends by itself.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    wait_until("the member to end", Duration::from_secs(10), || {
        cluster.exited_by_themselves() == [1]
    });
    let evidence = cluster.evidence();
    for expected in [
        format!("member 1: ended; EXITED BY ITSELF, pid {pid}: signal: 15 (SIGTERM)"),
        format!("HARNESS member 1 (pid {first}): started"),
        format!("HARNESS member 1 (pid {first}): kill -9"),
        format!("HARNESS member 1 (pid {pid}): started"),
        format!("HARNESS member 1 (pid {pid}): found exited by itself: signal: 15 (SIGTERM)"),
    ] {
        assert!(
            evidence.contains(&expected),
            "{expected:?} not in:\n{evidence}"
        );
    }
    if process::oom_kills().is_some() {
        assert!(evidence.contains("OOM kills in this memory cgroup: "));
    }
    // A restart does not hide it.
    cluster.members[0].kill9();
    cluster.members[0].start();
    assert_eq!(cluster.exited_by_themselves(), [1]);
}

/// The report shows a file's last lines only.
#[test]
fn the_report_shows_the_last_lines_of_a_member_stderr() {
    let dir = TempDir::new("tail");
    let path = dir.0.join("m.stderr");
    let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&path, text).unwrap();
    let tail = process::tail(&path, process::STDERR_TAIL_LINES);
    assert_eq!(tail.lines().count(), process::STDERR_TAIL_LINES);
    assert!(tail.starts_with("    line 61\n"));
    assert!(tail.ends_with("    line 100"));
    assert!(process::tail(&dir.0.join("none"), 40).contains("unreadable"));
}

#[test]
fn every_kind_of_fault_once_against_the_server() {
    every_kind_of_fault_once(Kind::Server);
}

#[test]
fn every_kind_of_fault_once_against_the_toy() {
    every_kind_of_fault_once(Kind::Toy);
}

/// Each kind of fault once, in a fixed order, with a longer hold: every
/// nemesis is exercised in every run whatever the random draws.
fn every_kind_of_fault_once(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3, 1000);
    cluster.wait_leader();
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let c = Client::new(kind, &format!("c{i}"), &cluster.client_addrs, rec.clone());
            let stop = stop.clone();
            std::thread::spawn(move || workload(c, stop, 7 + i))
        })
        .collect();
    let mut rng = Rng(99);
    for n in NEMESES {
        // The election timeout is 200-400 ms: 1.2 s outlasts it, so a
        // frozen leader is deposed and a cut-off one steps down.
        inject(&mut cluster, n, &mut rng, Duration::from_millis(1200), &rec);
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let mut reader = Client::new(kind, "reader", &cluster.client_addrs, rec.clone());
    let deadline = Instant::now() + Duration::from_millis(RESTORE_BOUND_MS);
    while !matches!(reader.run(Call::Fence), Outcome::Ok(_)) {
        assert!(Instant::now() < deadline, "no final read");
    }
    let exited = cluster.exited_by_themselves();
    assert!(
        exited.is_empty(),
        "member(s) {exited:?} exited by themselves; faults:\n{}",
        fault_timeline(&rec)
    );
    let h = rec.history();
    assert_eq!(h.faults.len(), NEMESES.len());
    let bad = history::check(&h, RESTORE_BOUND_MS, rec.now_ms());
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // The faults did bite: some operation failed or was left unknown.
    assert!(
        h.events
            .iter()
            .any(|e| !matches!(e.outcome, Outcome::Ok(_))),
        "no operation was disturbed"
    );
}
