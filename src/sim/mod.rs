//! The deterministic simulator (VOPR-style): the real driver code runs on a
//! seeded single-threaded scheduler with a simulated clock, simulated
//! connections and a simulated disk, under faults, while simulated clients
//! send random valid and invalid traffic and record what they observe.
//!
//! What runs for real: the engine and its door ([`crate::engine::Engine`]),
//! its timer task ([`crate::engine::timer::run`]), one TCP connection
//! handler per client connection ([`crate::tcp::conn::serve_stream`]) and
//! the fence state file's keeper and writer ([`crate::engine::fence`]) over
//! a simulated disk. What is simulated: time ([`exec`], through the
//! runtime's seam [`crate::rt::sim_hook`] and the engine's
//! [`crate::engine::Clock`]), the byte streams ([`net`]) and the disk
//! ([`disk`]).
//!
//! Faults: reads and writes split at random points; small send buffers and
//! clients that stop reading for a while (a write that outlasts
//! `--write-timeout` drops the connection); late timers; connection resets
//! and closes; fsync, rename and directory-sync failures; crashes of the
//! server process, after which it restarts from the fence state file with
//! its wall clock stepped back.
//!
//! Checks, after the run ([`check`]): the engine's journal (every entry the
//! door applied, in order) replayed through the model gives, for each
//! connection, exactly the lines its client read, in order, and all of
//! them where nothing excuses a loss (a wire-level differential; every
//! request answered exactly once); the requests the door applied are the
//! ones the client sent; no answer the model had due was held back longer
//! than the injected timer lateness; client-observed leases never overlap
//! beyond a lock's or semaphore's limit; fences strictly increase across
//! crashes. A failure names its seed; `dflockd-sim --seed N` (or the test
//! with `SIM_SEED=N`) replays it exactly.

pub mod check;
pub mod client;
pub mod cluster;
pub mod disk;
pub mod exec;
/// The fault tests' history and checker, shared with the simulated
/// cluster ([`cluster`]).
#[path = "../../tests/cluster/history.rs"]
#[allow(dead_code, clippy::new_without_default)]
pub(crate) mod history;
pub mod http;
pub mod http_check;
pub mod net;
pub mod rng;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::{CoreConfig, Time};
use crate::engine::{fence, Engine, Record};
use crate::planted::Bug;
use crate::tcp::conn::Timeouts;
use client::ConnRec;
use exec::Exec;
use rng::Rng;

/// Where the fence state file lives on the simulated disk.
pub const FENCE_PATH: &str = "/sim/fence";

/// One run's settings (all derived from the seed unless given).
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Simulated length of the run, in milliseconds.
    pub duration_ms: u64,
    pub clients: usize,
    /// Simulated HTTP clients (besides the TCP ones, on the same engine).
    pub http_clients: usize,
    pub bug: Bug,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            duration_ms: 120_000,
            clients: 4,
            http_clients: 2,
            bug: Bug::None,
        }
    }
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub simulated_ms: u64,
    pub steps: u64,
    pub connections: usize,
    pub requests: usize,
    pub replies: usize,
    pub crashes: usize,
    pub disk_failures: u64,
    pub entries: usize,
    /// Fence ceilings the keeper raised (each replayed into the model).
    pub ceiling_raises: usize,
    /// HTTP connections, requests sent, responses read, SSE events read.
    pub http_connections: usize,
    pub http_requests: usize,
    pub http_responses: usize,
    pub sse_events: usize,
}

/// A check failed.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A cluster run's failure begins with "cluster:" (sim::cluster).
        if self.what.starts_with("cluster:") {
            return write!(
                f,
                "cluster simulation seed {} failed: {}\nreplay: cargo run --features sim --bin dflockd-sim -- --cluster --seed {} \
                 (or SIM_CLUSTER_SEED={} cargo test --all-features --test sim cluster)",
                self.seed, self.what, self.seed, self.seed
            );
        }
        write!(
            f,
            "simulation seed {} failed: {}\nreplay: cargo run --features sim --bin dflockd-sim -- --seed {} \
             (or SIM_SEED={} cargo test --all-features --test sim)",
            self.seed, self.what, self.seed, self.seed
        )
    }
}

/// A journal record: an applied entry, with the scheduler group of the task
/// that applied it (a connection's `Connect` names its connection).
pub type Journal = Arc<Mutex<Vec<(u64, Record)>>>;

/// One incarnation of the server process.
pub struct Server {
    pub inc: u64,
    pub engine: Arc<Engine>,
    pub started_ms: u64,
    pub cfg: CoreConfig,
    pub journal: Journal,
    pub ended_ms: Option<u64>,
    pub crashed: bool,
    /// The HTTP front on the same engine.
    pub front: std::sync::Arc<crate::http::HttpFront>,
}

/// The world: scheduler, disk, server incarnations and client records.
pub struct World {
    pub exec: Rc<Exec>,
    pub rng: Rc<RefCell<Rng>>,
    pub disk: disk::SimDisk,
    pub servers: RefCell<Vec<Server>>,
    pub up: RefCell<Option<usize>>,
    pub conns: RefCell<Vec<ConnRec>>,
    pub http: RefCell<Vec<http::HttpRec>>,
    pub http_settings: crate::http::HttpSettings,
    pub timeouts: Timeouts,
    pub reserve: u64,
    pub quiesce_at: u64,
    pub end_at: u64,
    pub late_max_ms: u64,
    pub cfg: CoreConfig,
}

/// Scheduler group of incarnation `inc`'s connection task for pipe `pid`
/// (`pid` = `u32::MAX`: its timer task).
pub fn group(inc: u64, pid: u64) -> u64 {
    (inc << 32) | (pid & 0xFFFF_FFFF)
}

impl World {
    /// Starts an incarnation: reads the fence file, persists the startup
    /// ceiling, builds the engine and spawns its timer. `Err` when the
    /// disk failed (the process exits, to be restarted).
    pub fn start_server(self: &Rc<Self>) -> Result<(), String> {
        let now = self.exec.now();
        let (file, persisted) = fence::FenceFile::open_on(Box::new(self.disk.clone()), FENCE_PATH)
            .map_err(|e| e.to_string())?;
        // The wall clock may have been stepped back since the last run.
        let wall = now * 1_000_000 + self.rng.borrow_mut().below(1 << 20);
        let (start, ceiling) = fence::startup_fence(persisted, wall, self.reserve);
        fence::check_space(std::path::Path::new(FENCE_PATH), start).map_err(|e| e.to_string())?;
        let mut file = file;
        file.persist(ceiling).map_err(|e| e.to_string())?;
        let mut cfg = self.cfg.clone();
        cfg.fence_start = start;
        cfg.fence_ceiling = ceiling;
        let inc = self.servers.borrow().len() as u64 + 1;
        let journal: Journal = Arc::new(Mutex::new(Vec::new()));
        let j = journal.clone();
        let engine = Engine::new(
            cfg.clone(),
            Some(fence::Keeper::new(file, self.reserve)),
            Box::new(self.exec.time.clock.clone()),
        )
        .with_journal(Box::new(move |e: &Record| {
            j.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((exec::current_group(), e.clone()));
        }));
        let engine = Arc::new(engine);
        self.exec.spawn(
            group(inc, u64::from(u32::MAX)),
            crate::engine::timer::run(engine.clone()),
        );
        let server_cfg = crate::config::ServerConfig {
            core: cfg.clone(),
            http: Some(self.http_settings.clone()),
            ..Default::default()
        };
        let front = crate::http::HttpFront::new(engine.clone(), &server_cfg);
        self.exec.spawn(
            group(inc, u64::from(u32::MAX) - 1),
            crate::http::sweeper(front.clone()),
        );
        self.servers.borrow_mut().push(Server {
            inc,
            engine,
            started_ms: now,
            cfg,
            journal,
            ended_ms: None,
            crashed: false,
            front,
        });
        *self.up.borrow_mut() = Some(self.servers.borrow().len() - 1);
        Ok(())
    }

    /// The process dies: every task of the incarnation is dropped (its
    /// connections reset), and the disk forgets what was not synced.
    pub fn crash(&self) {
        let Some(i) = self.up.borrow_mut().take() else {
            return;
        };
        let inc = {
            let mut servers = self.servers.borrow_mut();
            let s = &mut servers[i];
            s.ended_ms = Some(self.exec.now());
            s.crashed = true;
            s.inc
        };
        self.exec.kill_where(|g| g >> 32 == inc);
        self.disk.crash();
    }

    /// A new simulated connection: a random socket buffer size, reads and
    /// writes split at random points 70% of the time, and its own random
    /// stream (drawn in this order, so that a seed replays exactly).
    fn new_pipe(&self) -> net::Shared {
        let (cap, split) = {
            let mut rng = self.rng.borrow_mut();
            let cap = [64, 512, 4096, 65536][rng.below(4) as usize];
            (cap, rng.chance(700))
        };
        let fork = self.rng.borrow_mut().fork();
        net::pipe(fork, cap, split)
    }

    /// Opens a connection for client `client` to the running server, if
    /// any: returns the record's index.
    pub fn connect(self: &Rc<Self>, client: usize) -> Option<usize> {
        let i = (*self.up.borrow())?;
        let (inc, engine) = {
            let s = &self.servers.borrow()[i];
            (s.inc, s.engine.clone())
        };
        let pipe = self.new_pipe();
        let pid = {
            let mut conns = self.conns.borrow_mut();
            conns.push(ConnRec::new(client, inc, pipe.clone(), self.exec.now()));
            conns.len() - 1
        };
        let time = self.exec.time.clone();
        let end = net::ServerEnd {
            pipe,
            now: Rc::new(move || time.now_ms.get()),
        };
        let timeouts = self.timeouts;
        self.exec.spawn(group(inc, pid as u64), async move {
            crate::tcp::conn::serve_stream(&engine, timeouts, end, None, None).await;
        });
        Some(pid)
    }
}

impl World {
    /// Opens an HTTP connection for HTTP client `client` to the running
    /// server's HTTP front, if any: returns the record's index.
    pub fn connect_http(self: &Rc<Self>, client: usize) -> Option<usize> {
        let i = (*self.up.borrow())?;
        let (inc, front) = {
            let s = &self.servers.borrow()[i];
            (s.inc, s.front.clone())
        };
        let pipe = self.new_pipe();
        let hid = {
            let mut recs = self.http.borrow_mut();
            recs.push(http::HttpRec::new(
                client,
                inc,
                pipe.clone(),
                self.exec.now(),
            ));
            recs.len() - 1
        };
        let time = self.exec.time.clone();
        let end = net::ServerEnd {
            pipe,
            now: Rc::new(move || time.now_ms.get()),
        };
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        self.exec.spawn(
            group(inc, http::PID_BASE + hid as u64),
            crate::http::serve_connection(front, ip, end),
        );
        Some(hid)
    }
}

impl Exec {
    /// Drops every task whose group satisfies `f`.
    pub fn kill_where(&self, f: impl Fn(u64) -> bool) {
        self.kill_matching(f);
    }
}

/// Runs one simulation.
pub fn run(opts: &Options) -> Result<Report, Failure> {
    crate::planted::set(opts.bug);
    let out = run_inner(opts);
    crate::planted::set(Bug::None);
    out
}

/// The seed's RNG and a scheduler on it: the clock starts at a drawn
/// instant, and timers fire late by up to one of `late_max_choices` ms,
/// for a drawn share (below `late_per_mille_bound` per mille) of them.
/// The draws, in this order, are the first of every run. Returns the RNG,
/// the scheduler and the start instant (ms).
pub(crate) fn seeded_exec(
    seed: u64,
    late_max_choices: &[u64],
    late_per_mille_bound: u64,
) -> (Rc<RefCell<Rng>>, Rc<Exec>, u64) {
    let rng = Rc::new(RefCell::new(Rng::new(seed)));
    let start_ms = 1_000 + rng.borrow_mut().below(1_000_000);
    let exec = Exec::new(rng.clone(), start_ms);
    {
        let mut r = rng.borrow_mut();
        let late_max_ms = late_max_choices[r.below(late_max_choices.len() as u64) as usize];
        exec.late_max_ms.set(late_max_ms);
        exec.late_per_mille.set(r.below(late_per_mille_bound));
    }
    (rng, exec, start_ms)
}

fn run_inner(opts: &Options) -> Result<Report, Failure> {
    let fail = |what: String| Failure {
        seed: opts.seed,
        what,
    };
    let (rng, exec, start_ms) = seeded_exec(opts.seed, &[0, 5, 50, 400], 600);
    let disk_rng = rng.borrow_mut().fork();
    let fail_per_mille = [0, 20, 150][rng.borrow_mut().below(3) as usize];
    let cfg = {
        let mut r = rng.borrow_mut();
        CoreConfig {
            default_lease_s: 1 + r.below(4),
            max_locks: [3, 8, 64][r.below(3) as usize],
            max_waiters: [0, 1, 3][r.below(3) as usize],
            auto_release_on_disconnect: true,
            gc_interval_s: 1 + r.below(3),
            gc_max_idle_s: r.below(4),
            max_subscriptions: [0, 1, 3][r.below(3) as usize],
            salt_key: [r.next_u64(), r.next_u64()],
            ..CoreConfig::default()
        }
    };
    let (read_s, write_s) = {
        let mut r = rng.borrow_mut();
        (2 + r.below(4), 1 + r.below(3))
    };
    // Drawn apart from the main stream (as the reserve is).
    let http_settings = {
        let mut r = Rng::new(opts.seed ^ 0x4817_7900);
        crate::http::HttpSettings {
            session_idle_timeout_s: [1, 2, 5, 0][r.below(4) as usize],
            max_sessions: [0, 0, 3, 6][r.below(4) as usize],
            sse_ping_interval_s: [0, 1, 3][r.below(3) as usize],
            ..Default::default()
        }
    };
    let world = Rc::new(World {
        exec: exec.clone(),
        rng: rng.clone(),
        disk: disk::SimDisk::new(disk_rng, fail_per_mille),
        servers: RefCell::new(Vec::new()),
        up: RefCell::new(None),
        conns: RefCell::new(Vec::new()),
        http: RefCell::new(Vec::new()),
        http_settings,
        timeouts: Timeouts {
            read: Duration::from_secs(read_s),
            write: Some(Duration::from_secs(write_s)),
        },
        // A small reserve makes the ceiling bind (grants wait for a raise,
        // which a disk failure delays); drawn apart from the main stream so
        // that the other seeds keep their schedules.
        reserve: [3, 16, 1 << 20][Rng::new(opts.seed ^ 0x5EED_CE11).below(3) as usize],
        quiesce_at: start_ms + opts.duration_ms.saturating_sub(15_000),
        end_at: start_ms + opts.duration_ms,
        late_max_ms: exec.late_max_ms.get(),
        cfg,
    });

    // The process supervisor: starts the server, crashes it now and then,
    // restarts it (retrying while the disk fails).
    let crashes = Rc::new(RefCell::new(0usize));
    {
        let w = world.clone();
        let crashes = crashes.clone();
        let planned = rng.borrow_mut().below(3);
        exec.spawn(0, async move {
            let mut left = planned;
            loop {
                while w.start_server().is_err() {
                    exec::sleep_ms(200).await;
                }
                if left == 0 {
                    return;
                }
                left -= 1;
                let span = w.quiesce_at.saturating_sub(w.exec.now()) / 2;
                let wait = 1 + w.rng.borrow_mut().below(span.max(1));
                exec::sleep_ms(wait).await;
                if w.exec.now() >= w.quiesce_at {
                    return;
                }
                w.crash();
                *crashes.borrow_mut() += 1;
                let down = w.rng.borrow_mut().below(3_000);
                exec::sleep_ms(down).await;
            }
        });
    }
    for c in 0..opts.clients {
        let fork = rng.borrow_mut().fork();
        exec.spawn(0, client::run(world.clone(), c, fork));
    }
    for c in 0..opts.http_clients {
        let fork = rng.borrow_mut().fork();
        exec.spawn(0, http::run(world.clone(), opts.clients + c, fork));
    }
    exec.run_until(world.end_at);
    // The end: what is still running stops here, and the clients take
    // what was written to them.
    if let Some(i) = *world.up.borrow() {
        world.servers.borrow_mut()[i].ended_ms = Some(world.exec.now());
    }
    for c in world.conns.borrow_mut().iter_mut() {
        c.take_input(world.exec.now());
    }
    for c in world.http.borrow_mut().iter_mut() {
        c.take_input(world.exec.now());
    }
    let steps = exec.steps.get();
    let result = check::all(&world);
    let report = Report {
        seed: opts.seed,
        simulated_ms: opts.duration_ms,
        steps,
        connections: world.conns.borrow().len(),
        requests: world.conns.borrow().iter().map(|c| c.requests()).sum(),
        replies: world.conns.borrow().iter().map(|c| c.lines.len()).sum(),
        crashes: *crashes.borrow(),
        disk_failures: world.disk.0.lock().map(|s| s.failures).unwrap_or(0),
        entries: world
            .servers
            .borrow()
            .iter()
            .map(|s| s.journal.lock().map(|j| j.len()).unwrap_or(0))
            .sum(),
        ceiling_raises: world
            .servers
            .borrow()
            .iter()
            .map(|s| {
                s.journal.lock().map_or(0, |j| {
                    j.iter()
                        .filter(|(_, r)| matches!(r, Record::Ceiling { .. }))
                        .count()
                })
            })
            .sum(),
        http_connections: world.http.borrow().len(),
        http_requests: world.http.borrow().iter().map(|c| c.reqs.len()).sum(),
        http_responses: world.http.borrow().iter().map(|c| c.answered).sum(),
        sse_events: world.http.borrow().iter().map(|c| c.events.len()).sum(),
    };
    exec.shutdown();
    drop(world);
    result.map_err(fail)?;
    Ok(report)
}

/// The simulated time of the scheduler as a core [`Time`].
pub fn now_time(exec: &Exec) -> Time {
    Time(exec.now())
}
