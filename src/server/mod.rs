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
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Cluster mode's member, when `--raft-dir` is set.
    node: Option<std::sync::Arc<crate::cluster::node::Node>>,
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
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

    /// Begins graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        begin_shutdown(&self.engine);
    }

    /// Cluster mode's member (status, admin routes, metrics).
    pub fn node(&self) -> Option<&std::sync::Arc<crate::cluster::node::Node>> {
        self.node.as_ref()
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
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::FenceFile(e) => f.write_str(e),
            StartError::Cluster(e) => write!(f, "cluster mode: {e}"),
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

/// Binds the listeners and starts the server on its own threads.
pub fn spawn(mut cfg: ServerConfig) -> Result<ServerHandle, StartError> {
    let fence = open_fence(&mut cfg)?;
    let std_listener = bind(&cfg.listen).map_err(|e| StartError::Bind(cfg.listen.clone(), e))?;
    let addr = std_listener
        .local_addr()
        .map_err(|e| StartError::Bind(cfg.listen.clone(), e))?;
    let listener = async_net::TcpListener::try_from(std_listener)
        .map_err(|e| StartError::Bind(cfg.listen.clone(), e))?;

    let http_listener = match &cfg.http {
        Some(h) => {
            let l = bind(&h.listen).map_err(|e| StartError::Bind(h.listen.clone(), e))?;
            let a = l
                .local_addr()
                .map_err(|e| StartError::Bind(h.listen.clone(), e))?;
            let l = async_net::TcpListener::try_from(l)
                .map_err(|e| StartError::Bind(h.listen.clone(), e))?;
            Some((l, a))
        }
        None => None,
    };
    let http_addr = http_listener.as_ref().map(|(_, a)| *a);

    let threads_n = match cfg.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let engine = Arc::new(Engine::new(
        cfg.core.clone(),
        fence,
        Box::new(MonotonicClock::new()),
    ));
    let tcp = TcpFront::new(engine.clone(), &cfg);
    let http = http_listener.map(|(l, _)| (crate::http::HttpFront::new(engine.clone(), &cfg), l));

    let ex = Arc::new(smol::Executor::new());
    let node = match &cfg.cluster {
        Some(c) => Some(start_member(c, &cfg, ex.clone(), &engine)?),
        None => None,
    };
    let done = Arc::new(Event::new());
    let finished = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(Event::new());
    let stopped = Arc::new(AtomicBool::new(false));

    // The supervisor: the timer, both fronts, and the shutdown sequence.
    let main_task = {
        let engine = engine.clone();
        let ex2 = ex.clone();
        let shutdown_timeout_s = cfg.shutdown_timeout_s;
        ex.spawn(async move {
            let timer = ex2.spawn(crate::engine::timer::run(engine.clone()));
            let http = http.map(|(front, l)| {
                let ex3 = ex2.clone();
                ex2.spawn(async move {
                    crate::http::HttpFront::accept_loop(&front, l, move |task| {
                        ex3.spawn(task).detach()
                    })
                    .await
                })
            });
            let ex3 = ex2.clone();
            TcpFront::accept_loop(&tcp, listener, move |task| ex3.spawn(task).detach()).await;
            drain(&engine, &tcp, shutdown_timeout_s).await;
            drop(http);
            drop(timer);
        })
    };
    let mut threads = Vec::new();
    for i in 0..threads_n {
        let ex = ex.clone();
        let stop = stop.clone();
        let stopped = stopped.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("dflockd-{i}"))
                .spawn(move || {
                    smol::block_on(ex.run(async {
                        loop {
                            let l = stop.listen();
                            if stopped.load(Ordering::SeqCst) {
                                return;
                            }
                            l.await;
                        }
                    }))
                })
                .expect("spawn executor thread"),
        );
    }
    // A watcher thread ends the executor threads when the supervisor ends.
    {
        let done = done.clone();
        let finished = finished.clone();
        threads.push(
            std::thread::Builder::new()
                .name("dflockd-main".into())
                .spawn(move || {
                    smol::block_on(main_task);
                    stopped.store(true, Ordering::SeqCst);
                    stop.notify(usize::MAX);
                    finished.store(true, Ordering::SeqCst);
                    done.notify(usize::MAX);
                })
                .expect("spawn supervisor thread"),
        );
    }
    Ok(ServerHandle {
        engine,
        node,
        addr,
        http_addr,
        threads,
        done,
        finished,
    })
}

/// Starts cluster mode (spec/cluster.md §2.5): the Raft storage in
/// `--raft-dir`, the member transport, the replica task, and the member
/// as the engine's replicator.
fn start_member(
    c: &crate::config::ClusterSettings,
    cfg: &ServerConfig,
    ex: Arc<smol::Executor<'static>>,
    engine: &Arc<Engine>,
) -> Result<std::sync::Arc<crate::cluster::node::Node>, StartError> {
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
    let voters = m.peers.iter().map(|p| p.id).collect();
    let mut rcfg = ReplicaConfig::new(m.node_id, m.peers.clone(), Bootstrap::New(voters));
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
        ex,
    );
    node.spawn_tasks();
    engine.set_replicator(node.clone());
    Ok(node)
}

/// Connections the kernel may queue before `accept` takes them; it clamps
/// this to `net.core.somaxconn`, as Go's listener uses. std's fixed 128
/// overflows under a burst of connects (clients reconnecting after a
/// restart), and every SYN dropped for that costs its client a one-second
/// retransmit.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds the first address `listen` resolves to that accepts a bind, like
/// `std::net::TcpListener::bind` but with [`LISTEN_BACKLOG`].
fn bind(listen: &str) -> io::Result<std::net::TcpListener> {
    let mut last_error = None;
    for addr in std::net::ToSocketAddrs::to_socket_addrs(listen)? {
        match bind_one(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing")
    }))
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does on Unix: a restart may rebind while old connections
    // linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
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
