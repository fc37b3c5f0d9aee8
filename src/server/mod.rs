//! A running server: the process around the engine and its two fronts.
//!
//! [`spawn`] opens the fence state file, binds the listeners, builds the
//! [`Engine`] and starts, on the executor threads, the engine's timer task,
//! the TCP front ([`crate::tcp`]) and, when configured, the HTTP front
//! ([`crate::http`]). [`begin_shutdown`] drains: the engine refuses new
//! work, the TCP listener closes, the server waits up to
//! `--shutdown-timeout` for connections to leave, then closes the rest.
//!
//! This module is where the fronts meet, and the only one that imports
//! both: the TCP front and the HTTP front depend on the engine, never on
//! each other or on this module.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use event_listener::Event;

use crate::engine::{fence, Engine, MonotonicClock};
use crate::rt;
use crate::sync::Arc;
use crate::tcp::TcpFront;

pub use crate::config::ServerConfig;
/// The fence state file (moved to the engine; kept here by its old name).
pub use crate::engine::fence as fence_file;
/// TLS loading (shared by both fronts; kept here by its old name).
pub use crate::net::tls;

/// A running server.
pub struct ServerHandle {
    engine: Arc<Engine>,
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    /// Cluster mode's member, when `--raft-dir` is set.
    node: Option<std::sync::Arc<crate::cluster::node::Node>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    done: Arc<Event>,
    finished: Arc<AtomicBool>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP listener's address, when the HTTP front is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Cluster mode's member (status, admin routes, metrics).
    pub fn node(&self) -> Option<&std::sync::Arc<crate::cluster::node::Node>> {
        self.node.as_ref()
    }

    /// Begins graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        begin_shutdown(&self.engine);
    }

    /// The engine, for tests that look at the lock manager's state.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Waits until the server has stopped.
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Whether the server has stopped.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Waits until the server stops.
    pub async fn stopped(&self) {
        loop {
            let l = self.done.listen();
            if self.is_finished() {
                return;
            }
            l.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            begin_shutdown(&self.engine);
            // Stop at once: no test or caller should wait for the drain.
            self.engine.abort_all();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

/// Error starting the server.
#[derive(Debug)]
pub enum StartError {
    Bind(String, io::Error),
    FenceFile(String),
    /// Cluster mode could not start (storage, member TLS, Raft).
    Cluster(String),
    /// The runtime's threads or pollers could not be created.
    Runtime(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::FenceFile(e) => f.write_str(e),
            StartError::Cluster(e) => write!(f, "cluster mode: {e}"),
            StartError::Runtime(e) => write!(f, "cannot start the runtime threads: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Opens the fence state file of `cfg` and raises `cfg.core`'s fence start
/// and ceiling from it (Decision D7).
fn open_fence(cfg: &mut ServerConfig) -> Result<Option<fence::Keeper>, StartError> {
    let Some(path) = &cfg.fence_state_file else {
        return Ok(None);
    };
    let (mut ff, persisted) =
        fence::FenceFile::open(path).map_err(|e| StartError::FenceFile(e.to_string()))?;
    let (start, ceiling) =
        fence::startup_fence(persisted, fence::wall_clock_nanos(), cfg.fence_reserve);
    fence::check_space(path, start)
        .and_then(|()| ff.persist(ceiling))
        .map_err(|e| StartError::FenceFile(e.to_string()))?;
    cfg.core.fence_start = start;
    cfg.core.fence_ceiling = ceiling;
    Ok(Some(fence::Keeper::new(ff, cfg.fence_reserve)))
}

/// How accepted connections are spread over the runtime threads
/// (spec/ARCHITECTURE.md, "The runtime", says which one the server uses and
/// why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// One listener, accepted on thread 0; each connection is handed to the
    /// thread serving the fewest connections, and stays there.
    Pin,
    /// One `SO_REUSEPORT` listener per thread; the kernel spreads
    /// connections by hashing their addresses, and the accepting thread
    /// serves them.
    ReusePort,
}

/// The accept mode the server uses.
pub const ACCEPT: Accept = Accept::Pin;

/// Where connection tasks go: the least loaded thread ([`Accept::Pin`]) or
/// the accepting thread ([`Accept::ReusePort`]).
struct Placement {
    mode: Accept,
    /// The runtime's own (std) `Arc`s: the runtime is not model-checked.
    workers: Vec<std::sync::Arc<rt::Worker>>,
    /// Connection tasks alive per thread.
    load: Vec<AtomicUsize>,
}

impl Placement {
    fn spawn(self: &std::sync::Arc<Self>, task: rt::BoxTask) {
        let i = match self.mode {
            Accept::ReusePort => rt::Worker::current().map_or(0, |w| w.index()),
            Accept::Pin => (0..self.workers.len())
                .min_by_key(|&i| self.load[i].load(Ordering::Relaxed))
                .unwrap_or(0),
        };
        self.load[i].fetch_add(1, Ordering::Relaxed);
        let place = self.clone();
        self.workers[i]
            .spawn(async move {
                task.await;
                place.load[i].fetch_sub(1, Ordering::Relaxed);
            })
            .detach();
    }
}

/// Binds the listeners and starts the server on its own threads.
pub fn spawn(mut cfg: ServerConfig) -> Result<ServerHandle, StartError> {
    let fence = open_fence(&mut cfg)?;
    let threads_n = match cfg.threads {
        0 => auto_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    };
    let mode = accept_mode();
    let listeners_n = match mode {
        Accept::Pin => 1,
        Accept::ReusePort => threads_n,
    };
    let tcp_listeners =
        bind(&cfg.listen, listeners_n).map_err(|e| StartError::Bind(cfg.listen.clone(), e))?;
    let addr = tcp_listeners[0]
        .local_addr()
        .map_err(|e| StartError::Bind(cfg.listen.clone(), e))?;
    let http_listeners = match &cfg.http {
        Some(h) => {
            Some(bind(&h.listen, listeners_n).map_err(|e| StartError::Bind(h.listen.clone(), e))?)
        }
        None => None,
    };
    let http_addr = match &http_listeners {
        Some(l) => Some(l[0].local_addr().map_err(|e| {
            StartError::Bind(
                cfg.http
                    .as_ref()
                    .map(|h| h.listen.clone())
                    .unwrap_or_default(),
                e,
            )
        })?),
        None => None,
    };

    let engine = Arc::new(Engine::new(
        cfg.core.clone(),
        fence,
        Box::new(MonotonicClock::new()),
    ));
    let member = match &cfg.cluster {
        Some(c) => Some(start_member(c, &cfg, &engine)?),
        None => None,
    };
    let tcp = TcpFront::new(engine.clone(), &cfg);
    let runtime = rt::Runtime::start(threads_n, "dflockd").map_err(StartError::Runtime)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        runtime.set_spin(cfg.spin);
        let handoff = bench_handoff_spin_us().map_or(cfg.handoff_spin, Duration::from_micros);
        runtime.set_handoff_spin(handoff);
    }
    let place = std::sync::Arc::new(Placement {
        mode,
        workers: runtime.workers().to_vec(),
        load: (0..threads_n).map(|_| AtomicUsize::new(0)).collect(),
    });

    runtime
        .spawn_on(0, crate::engine::timer::run(engine.clone()))
        .detach();
    let mut accepts = Vec::new();
    for (i, l) in tcp_listeners.into_iter().enumerate() {
        let (tcp, place) = (tcp.clone(), place.clone());
        accepts.push(runtime.spawn_on(i, async move {
            match rt::net::TcpListener::from_std(l) {
                Ok(l) => TcpFront::accept_loop(&tcp, l, &move |t| place.spawn(t)).await,
                Err(e) => log::error!(error:% = e; "cannot register the TCP listener"),
            }
        }));
    }
    if let Some(listeners) = http_listeners {
        let front = crate::http::HttpFront::new(engine.clone(), &cfg);
        runtime
            .spawn_on(0, crate::http::sweeper(front.clone()))
            .detach();
        runtime
            .spawn_on(0, crate::http::introspect::sample(front.clone()))
            .detach();
        for (i, l) in listeners.into_iter().enumerate() {
            let (front, place) = (front.clone(), place.clone());
            runtime
                .spawn_on(i, async move {
                    match rt::net::TcpListener::from_std(l) {
                        Ok(l) => {
                            let spawn = move |t| place.spawn(t);
                            crate::http::HttpFront::accept_loop(&front, l, &spawn).await
                        }
                        Err(e) => log::error!(error:% = e; "cannot register the HTTP listener"),
                    }
                })
                .detach();
        }
    }

    // The supervisor: once every TCP accept loop has ended (the drain
    // began), wait for the connections, then stop the runtime.
    let shutdown_timeout_s = cfg.shutdown_timeout_s;
    let supervisor = {
        let engine = engine.clone();
        runtime.spawn_on(0, async move {
            for a in accepts {
                a.await;
            }
            drain(&engine, &tcp, shutdown_timeout_s).await;
        })
    };
    let done = Arc::new(Event::new());
    let finished = Arc::new(AtomicBool::new(false));
    let (node, raft) = match member {
        Some((node, raft)) => (Some(node.clone()), Some((node, raft))),
        None => (None, None),
    };
    let watcher = {
        let done = done.clone();
        let finished = finished.clone();
        std::thread::Builder::new()
            .name("dflockd-main".into())
            .spawn(move || {
                futures_lite::future::block_on(supervisor);
                runtime.stop();
                runtime.join();
                // The member outlives the fronts: the drain's disconnects
                // go through its log.
                if let Some((_, raft)) = raft {
                    raft.stop();
                }
                finished.store(true, Ordering::SeqCst);
                done.notify(usize::MAX);
            })
            .map_err(StartError::Runtime)?
    };
    Ok(ServerHandle {
        engine,
        node,
        addr,
        http_addr,
        threads: vec![watcher],
        done,
        finished,
    })
}

/// The threads that run cluster mode's tasks (replica, member transport,
/// the member's leader tasks) on a smol executor of their own: they are
/// few, long-lived and do their own I/O through `async-io`, apart from the
/// fronts' per-thread runtime.
///
/// One thread: the replica's writes run on its storage thread
/// (spec/cluster.md §2.5), so nothing here blocks, and the replica, the
/// transport and the reactor hand work to each other without waking a
/// second thread (measured at ten workers: about a quarter less CPU per
/// entry on a follower, 10% on the leader, than with two threads).
struct RaftThread {
    stop: smol::channel::Sender<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Threads running the member's executor.
const RAFT_THREADS: usize = 1;

impl RaftThread {
    fn start(ex: std::sync::Arc<smol::Executor<'static>>) -> Result<RaftThread, StartError> {
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let mut threads = Vec::new();
        for i in 0..RAFT_THREADS {
            let (ex, stopped) = (ex.clone(), stopped.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dflockd-raft-{i}"))
                    .spawn(move || {
                        smol::block_on(ex.run(async move {
                            let _ = stopped.recv().await;
                        }))
                    })
                    .map_err(StartError::Runtime)?,
            );
        }
        Ok(RaftThread { stop, threads })
    }

    /// Stops running the member's tasks: from then on the member is silent,
    /// as a stopped process is to the others.
    fn stop(self) {
        drop(self.stop);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts cluster mode (spec/cluster.md §2.5): the Raft storage in
/// `--raft-dir`, the member transport, the replica task, and the member
/// as the engine's replicator.
fn start_member(
    c: &crate::config::ClusterSettings,
    cfg: &ServerConfig,
    engine: &Arc<Engine>,
) -> Result<(std::sync::Arc<crate::cluster::node::Node>, RaftThread), StartError> {
    use crate::cluster::machine::Machine;
    use crate::cluster::node::{Node, NodeConfig};
    use crate::cluster::replica::{self, Bootstrap, ReplicaConfig};
    use crate::cluster::storage::LogStore;
    use crate::cluster::transport::{load_member_tls, MemberAuth, TransportConfig};
    let m = &c.member;
    let err = |e: &dyn std::fmt::Display| StartError::Cluster(e.to_string());
    let store = LogStore::open(&m.raft_dir).map_err(|e| err(&e))?;
    // Every member listed at start is a voter of the new cluster; the
    // stored state wins once there is one.
    let bootstrap = if m.join {
        Bootstrap::Join
    } else {
        Bootstrap::New(m.peers.iter().map(|p| p.id).collect())
    };
    let mut rcfg = ReplicaConfig::new(m.node_id, m.peers.clone(), bootstrap);
    rcfg.tick = Duration::from_millis(c.tick_ms.max(1));
    let tls = match &m.raft_tls {
        Some(t) => Some(load_member_tls(&t.cert, &t.key, &t.ca).map_err(|e| err(&e))?),
        None => None,
    };
    let auth = MemberAuth {
        token: m
            .raft_auth_token
            .as_ref()
            .map(|t| std::sync::Arc::from(t.as_bytes())),
        tls,
    };
    let tcfg = TransportConfig::new(m.node_id, auth);
    let ex = std::sync::Arc::new(smol::Executor::new());
    let (applier, shared) = Node::applier(Machine::new(cfg.core.clone()));
    let handle = replica::spawn(rcfg, applier, store, tcfg, &m.raft_addr, ex.clone())
        .map_err(|e| err(&e))?;
    let client_addr = m.advertise_addr.clone().unwrap_or_else(|| {
        m.peers
            .iter()
            .find(|p| p.id == m.node_id)
            .map_or_else(|| cfg.listen.clone(), |p| p.client_addr.clone())
    });
    let node = Node::new(
        shared,
        handle,
        NodeConfig {
            orphan_ttl_ms: c.orphan_ttl_ms,
            client_addr,
        },
        ex.clone(),
    );
    node.spawn_tasks();
    engine.set_replicator(node.clone());
    let raft = RaftThread::start(ex)?;
    Ok((node, raft))
}

/// The accept mode: [`ACCEPT`], unless `DFLOCKD_BENCH_ACCEPT` (`pin` or
/// `reuseport`) asks otherwise, which only the benchmark comparing the two
/// does.
fn accept_mode() -> Accept {
    match std::env::var("DFLOCKD_BENCH_ACCEPT").as_deref() {
        Ok("pin") => Accept::Pin,
        Ok("reuseport") => Accept::ReusePort,
        _ => ACCEPT,
    }
}

/// The runtime's thread count when `--threads` is 0: one per core less
/// one, at least one. A connection is pinned to its thread and no thread
/// takes another's work, so a runtime thread that loses its core to any
/// other runnable thread (a client on the same machine, the kernel's
/// network processing, the Raft threads in cluster mode) stalls every
/// connection it serves. On the 2-core machine with the client beside the
/// server, two threads served 10 connections at 0.58 of redis-server's
/// rate and one thread at 0.92, both driven by the same client
/// (spec/ARCHITECTURE.md, "The runtime"); leaving a core spare costs at
/// most one thread's share where the clients are elsewhere.
pub fn auto_threads(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// `DFLOCKD_BENCH_HANDOFF_SPIN_US`: how long a runtime thread polls after
/// one of its connections was answered on a contended key
/// ([`ServerConfig::handoff_spin`]), for the benchmark comparing them
/// (only it sets this).
fn bench_handoff_spin_us() -> Option<u64> {
    bench_us("DFLOCKD_BENCH_HANDOFF_SPIN_US")
}

/// A benchmark's microseconds in `var`, up to 10 ms (anything else: unset).
fn bench_us(var: &str) -> Option<u64> {
    std::env::var(var)
        .ok()?
        .parse()
        .ok()
        .filter(|&n| n <= 10_000)
}

/// Connections the kernel may queue before `accept` takes them; it clamps
/// this to `net.core.somaxconn`, as Go's listener uses. std's fixed 128
/// overflows under a burst of connects (clients reconnecting after a
/// restart), and every SYN dropped for that costs its client a one-second
/// retransmit.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `n` listeners on the first address `listen` resolves to that
/// accepts a bind, like `std::net::TcpListener::bind` but with
/// [`LISTEN_BACKLOG`]. With `n` > 1 they share one port through
/// `SO_REUSEPORT` (the first one's, when `listen` asks for port 0).
fn bind(listen: &str, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut last_error = None;
    for addr in std::net::ToSocketAddrs::to_socket_addrs(listen)? {
        match bind_one(addr, n > 1) {
            Ok(first) => {
                let port = first.local_addr()?.port();
                let mut all = vec![first];
                for _ in 1..n {
                    all.push(bind_one(SocketAddr::new(addr.ip(), port), true)?);
                }
                return Ok(all);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing")
    }))
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does on Unix: a restart may rebind while old connections
    // linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Starts graceful shutdown: stop accepting, cancel blocked requests with
/// `error`, answer later requests with `error_draining`.
pub fn begin_shutdown(engine: &Engine) {
    engine.drain();
}

/// Waits for the TCP connections to finish, up to `--shutdown-timeout`,
/// then force-closes the rest and waits for their tasks to clean up.
async fn drain(engine: &Engine, tcp: &TcpFront, timeout_s: u64) {
    if timeout_s == 0 {
        tcp.all_closed().await;
        return;
    }
    let timed_out = futures_lite::future::or(
        async {
            tcp.all_closed().await;
            false
        },
        async {
            rt::sleep(Duration::from_secs(timeout_s)).await;
            true
        },
    )
    .await;
    if timed_out {
        engine.abort_all();
        tcp.all_closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::auto_threads;

    #[test]
    fn automatic_thread_count_leaves_a_core_spare() {
        assert_eq!(auto_threads(0), 1);
        assert_eq!(auto_threads(1), 1);
        assert_eq!(auto_threads(2), 1);
        assert_eq!(auto_threads(3), 2);
        assert_eq!(auto_threads(64), 63);
    }
}
