//! The smol driver: sockets in, core calls, replies out.
//!
//! Shape (spec/ARCHITECTURE.md):
//! * one accept loop, which admits or silently drops connections;
//! * one task per connection ([`conn`]): read bytes, decode requests, call
//!   the core under the [`Shared`] mutex, write the replies;
//! * one timer task ([`timer`]) that sleeps until the core's next deadline;
//! * effects for *other* connections (a hand-off grant, a timeout) go to
//!   that connection's [`mailbox::Mailbox`]. The uncontended fast path
//!   (request and reply on the same connection) never crosses tasks.
//!
//! Nothing here decides a protocol outcome: every answer comes from the core.

pub mod conn;
pub mod fence_file;
pub mod introspect;
pub mod mailbox;
pub mod per_ip;
pub mod timer;
pub mod tls;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use event_listener::Event;
use log::Level;

use crate::core::{ConnId, Core, CoreConfig, Effect, Time};
use crate::logging::{self, Cause};
use crate::sync::{lock, Arc, Mutex, MutexGuard};
use mailbox::{Delivery, Mailbox};

/// Everything the driver needs to know, already validated.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `host:port` to listen on (IPv6 literals bracketed).
    pub listen: String,
    pub core: CoreConfig,
    pub read_timeout_s: u64,
    /// 0 disables the write deadline.
    pub write_timeout_s: u64,
    /// 0 waits forever for connections to finish.
    pub shutdown_timeout_s: u64,
    /// 0 = unlimited.
    pub max_connections: usize,
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
    pub fence_state_file: Option<PathBuf>,
    /// Fences reserved by each write of the fence state file
    /// (`--fence-reserve`); a write happens once half of them are used.
    pub fence_reserve: u64,
    /// Executor threads; 0 = one per available core.
    pub threads: usize,
    /// Pause before closing a connection that failed authentication
    /// (slows down guessing; upstream waits about 100 ms).
    pub auth_failure_pause_ms: u64,
    /// When set, every connection is TLS (protocol.md §1.1); see [`tls::load`].
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Seconds a TLS client has to finish its handshake, on both listeners.
    pub tls_handshake_timeout_s: u64,
    /// The HTTP REST front (`--http-port` ≠ 0); `None` = off.
    pub http: Option<crate::http::HttpSettings>,
}

impl Default for ServerConfig {
    /// The defaults of the settings table (`config::table`), on the default
    /// address; no TLS, no HTTP, no fence state file.
    fn default() -> Self {
        use crate::config::table as t;
        ServerConfig {
            listen: format!("{}:{}", t::HOST.text_default(), t::PORT.int_default()),
            core: CoreConfig::default(),
            read_timeout_s: t::READ_TIMEOUT.int_default(),
            write_timeout_s: t::WRITE_TIMEOUT.int_default(),
            shutdown_timeout_s: t::SHUTDOWN_TIMEOUT.int_default(),
            max_connections: t::MAX_CONNECTIONS.count_default(),
            max_connections_per_ip: t::MAX_CONNECTIONS_PER_IP.count_default(),
            fence_state_file: None,
            fence_reserve: t::FENCE_RESERVE.int_default(),
            threads: 0,
            auth_failure_pause_ms: 100,
            tls: None,
            tls_handshake_timeout_s: t::TLS_HANDSHAKE_TIMEOUT.int_default(),
            http: None,
        }
    }
}

/// The lock manager plus the routing table for its effects, under one mutex.
pub struct Inner {
    pub core: Core,
    mailboxes: HashMap<ConnId, Arc<Mailbox>>,
    /// What the timer task is currently sleeping until.
    timer_at: Option<Time>,
    /// The fence state file, with `--fence-state-file`.
    fence: Option<fence_file::Keeper>,
}

impl Inner {
    /// The timer task's next wake-up: the core's next deadline, or an
    /// earlier retry of the fence state file.
    fn next_wake(&self) -> Option<Time> {
        let core = self.core.poll_timeout();
        match self
            .fence
            .as_ref()
            .and_then(fence_file::Keeper::next_attempt)
        {
            Some(retry) => Some(core.map_or(retry, |c| c.min(retry))),
            None => core,
        }
    }
}

/// State shared by every task of one server.
pub struct Shared {
    inner: Mutex<Inner>,
    origin: Instant,
    /// Wakes the timer task when a nearer deadline appears.
    timer_event: Event,
    /// Fires when shutdown begins.
    shutdown_event: Event,
    shutting_down: AtomicBool,
    /// Fires each time a connection task ends.
    conn_closed: Event,
    tcp_conns: AtomicUsize,
    /// TCP connections admitted since start (past the connection caps).
    tcp_accepted: AtomicU64,
    per_ip: std::sync::Mutex<per_ip::PerIp>,
    pub cfg: ServerConfig,
}

impl Shared {
    /// Shared state for a server that is not listening yet (or, in the fuzz
    /// target and tests, never will: connections are fed by
    /// [`conn::serve_stream`]).
    pub fn new(cfg: ServerConfig, fence: Option<fence_file::Keeper>) -> Arc<Shared> {
        let core = Core::new(cfg.core.clone(), Time(0));
        Arc::new(Shared {
            inner: Mutex::new(Inner {
                core,
                mailboxes: HashMap::new(),
                timer_at: None,
                fence,
            }),
            origin: Instant::now(),
            timer_event: Event::new(),
            shutdown_event: Event::new(),
            shutting_down: AtomicBool::new(false),
            conn_closed: Event::new(),
            tcp_conns: AtomicUsize::new(0),
            tcp_accepted: AtomicU64::new(0),
            per_ip: std::sync::Mutex::new(per_ip::PerIp::default()),
            cfg,
        })
    }

    /// Milliseconds since the server started.
    pub fn now(&self) -> Time {
        Time(self.origin.elapsed().as_millis() as u64)
    }

    /// The clock reading to give the core, taken with its lock held. Never
    /// earlier than the core's own time, even if two threads' readings of
    /// the monotonic clock were to disagree.
    pub fn clock(&self, inner: &Inner) -> Time {
        self.now().max(inner.core.now())
    }

    pub fn instant_of(&self, t: Time) -> Instant {
        self.origin + Duration::from_millis(t.0)
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Delivers effects addressed to connections other than `me` to their
    /// mailboxes and leaves only `me`'s in `effects`. Also tops up the fence
    /// ceiling and re-arms the timer. Call with the lock held, after every
    /// core input.
    pub fn after_core(&self, inner: &mut Inner, effects: &mut Vec<Effect>, me: Option<ConnId>) {
        self.top_up_fence(inner, effects);
        mailbox::route(&inner.mailboxes, effects, me);
        let next = inner.next_wake();
        if next.is_some() && (inner.timer_at.is_none() || next < inner.timer_at) {
            inner.timer_at = next;
            self.timer_event.notify(1);
        }
    }

    /// With a fence state file, persists a new ceiling before the core runs
    /// out of headroom (see [`fence_file::Keeper::top_up`]: one fsync per
    /// half reserve of grants, retries with backoff). Grants that were
    /// waiting for the ceiling are appended to `effects`.
    fn top_up_fence(&self, inner: &mut Inner, effects: &mut Vec<Effect>) {
        if inner.fence.is_none() {
            return;
        }
        let now = self.clock(inner);
        let Inner { core, fence, .. } = inner;
        if let Some(keeper) = fence.as_mut() {
            keeper.top_up(core, now, effects);
        }
    }

    /// The fence as `/ready` and `/metrics` report it; `None` without a
    /// fence state file.
    pub(crate) fn fence_status(&self) -> Option<fence_file::Status> {
        let inner = self.lock();
        let headroom = inner.core.fence_headroom();
        inner.fence.as_ref().map(|k| k.status(headroom))
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Resolves once graceful shutdown has begun (at once if it has).
    pub(crate) async fn shutdown_begun(&self) {
        loop {
            let l = self.shutdown_event.listen();
            if self.is_shutting_down() {
                return;
            }
            l.await;
        }
    }

    /// Open connections on the TCP protocol port (including those still in
    /// their TLS handshake); for `/metrics`.
    pub(crate) fn tcp_connections(&self) -> usize {
        self.tcp_conns.load(Ordering::SeqCst)
    }

    /// TCP connections admitted since the server started (those closed at
    /// accept by `--max-connections*` excluded); for `/metrics`.
    pub(crate) fn tcp_accepted(&self) -> u64 {
        self.tcp_accepted.load(Ordering::Relaxed)
    }
}

/// A running server.
pub struct ServerHandle {
    shared: Arc<Shared>,
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
        begin_shutdown(&self.shared);
    }

    /// The shared state, for tests that inspect the core.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
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
            begin_shutdown(&self.shared);
            // Stop at once: no test or caller should wait for the drain.
            force_close_all(&self.shared);
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
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::FenceFile(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StartError {}

/// Binds the listener and starts the server on its own threads.
pub fn spawn(mut cfg: ServerConfig) -> Result<ServerHandle, StartError> {
    let fence = match &cfg.fence_state_file {
        Some(path) => {
            let (mut ff, persisted) = fence_file::FenceFile::open(path)
                .map_err(|e| StartError::FenceFile(e.to_string()))?;
            let (start, ceiling) = fence_file::startup_fence(
                persisted,
                fence_file::wall_clock_nanos(),
                cfg.fence_reserve,
            );
            fence_file::check_space(path, start)
                .and_then(|()| ff.persist(ceiling))
                .map_err(|e| StartError::FenceFile(e.to_string()))?;
            cfg.core.fence_start = start;
            cfg.core.fence_ceiling = ceiling;
            Some(fence_file::Keeper::new(ff, cfg.fence_reserve))
        }
        None => None,
    };
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
    let shared = Shared::new(cfg, fence);

    let ex = Arc::new(smol::Executor::new());
    let done = Arc::new(Event::new());
    let finished = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(Event::new());
    let stopped = Arc::new(AtomicBool::new(false));

    // The supervisor: accept loop, timer, and the shutdown sequence.
    let main_task = {
        let shared = shared.clone();
        let ex2 = ex.clone();
        ex.spawn(async move {
            let timer = ex2.spawn(timer::run(shared.clone()));
            let http = http_listener
                .map(|(l, _)| ex2.spawn(crate::http::run(shared.clone(), ex2.clone(), l)));
            accept_loop(&shared, &ex2, listener).await;
            drain(&shared).await;
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
        shared,
        addr,
        http_addr,
        threads,
        done,
        finished,
    })
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
pub fn begin_shutdown(shared: &Arc<Shared>) {
    if shared.shutting_down.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut effects = Vec::new();
    let mut inner = shared.lock();
    let now = shared.clock(&inner);
    inner.core.start_drain(now, &mut effects);
    shared.after_core(&mut inner, &mut effects, None);
    drop(inner);
    shared.shutdown_event.notify(usize::MAX);
}

fn force_close_all(shared: &Arc<Shared>) {
    let inner = shared.lock();
    for mb in inner.mailboxes.values() {
        mb.push(Delivery::Close);
    }
}

async fn accept_loop(
    shared: &Arc<Shared>,
    ex: &Arc<smol::Executor<'static>>,
    listener: async_net::TcpListener,
) {
    let mut backoff = Duration::from_millis(5);
    let tls = shared
        .cfg
        .tls
        .clone()
        .map(futures_rustls::TlsAcceptor::from);
    loop {
        let shutdown = shared.shutdown_event.listen();
        if shared.is_shutting_down() {
            return;
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shutdown.await;
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // Out of file descriptors, usually: the operator's to fix.
                if let Some(suppressed) = logging::allow(Level::Warn, Cause::Accept, None) {
                    log::warn!(error:% = e, suppressed; "cannot accept a TCP connection");
                }
                async_io::Timer::after(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if !admit(shared, peer.ip()) {
            drop(stream);
            continue;
        }
        let shared2 = shared.clone();
        match &tls {
            None => ex.spawn(async move {
                conn::serve(&shared2, stream).await;
                release_admission(&shared2, peer.ip());
            }),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                ex.spawn(async move {
                    tls::serve(&shared2, stream, acceptor).await;
                    release_admission(&shared2, peer.ip());
                })
            }
        }
        .detach();
    }
}

/// `--max-connections` and `--max-connections-per-ip`: a connection over a
/// cap is closed without a byte written.
fn admit(shared: &Shared, ip: IpAddr) -> bool {
    let max = shared.cfg.max_connections;
    let prev = shared.tcp_conns.fetch_add(1, Ordering::SeqCst);
    if max > 0 && prev >= max {
        shared.tcp_conns.fetch_sub(1, Ordering::SeqCst);
        warn_cap(ip, "--max-connections", max);
        return false;
    }
    let max_ip = shared.cfg.max_connections_per_ip;
    if max_ip > 0 {
        let admitted = shared
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_add(ip, max_ip);
        if !admitted {
            shared.tcp_conns.fetch_sub(1, Ordering::SeqCst);
            warn_cap(ip, "--max-connections-per-ip", max_ip);
            return false;
        }
    }
    shared.tcp_accepted.fetch_add(1, Ordering::Relaxed);
    true
}

/// A connection from `ip` was closed at accept by the cap `flag`
/// (rate-limited per peer).
pub(crate) fn warn_cap(ip: IpAddr, flag: &'static str, limit: usize) {
    if let Some(suppressed) = logging::allow(Level::Warn, Cause::ConnectionCap, Some(ip)) {
        log::warn!(
            peer:% = ip, cap = flag, limit, suppressed;
            "connection closed at accept: connection cap reached"
        );
    }
}

fn release_admission(shared: &Shared, ip: IpAddr) {
    if shared.cfg.max_connections_per_ip > 0 {
        shared
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ip);
    }
    shared.tcp_conns.fetch_sub(1, Ordering::SeqCst);
    shared.conn_closed.notify(usize::MAX);
}

/// Waits for connections to finish, up to `--shutdown-timeout`, then
/// force-closes the rest and waits for their tasks to clean up.
async fn drain(shared: &Arc<Shared>) {
    let wait_all = async {
        loop {
            let l = shared.conn_closed.listen();
            if shared.tcp_conns.load(Ordering::SeqCst) == 0 {
                return;
            }
            l.await;
        }
    };
    let timeout = shared.cfg.shutdown_timeout_s;
    if timeout == 0 {
        wait_all.await;
        return;
    }
    let timed_out = futures_lite::future::or(
        async {
            wait_all.await;
            false
        },
        async {
            async_io::Timer::after(Duration::from_secs(timeout)).await;
            true
        },
    )
    .await;
    if timed_out {
        force_close_all(shared);
        loop {
            let l = shared.conn_closed.listen();
            if shared.tcp_conns.load(Ordering::SeqCst) == 0 {
                return;
            }
            l.await;
        }
    }
}

/// Registers a connection with the core and the routing table.
pub(crate) fn register(shared: &Shared, mailbox: Arc<Mailbox>) -> ConnId {
    let mut effects = Vec::new();
    let mut inner = shared.lock();
    let now = shared.clock(&inner);
    let id = inner.core.connect(now, &mut effects);
    inner.mailboxes.insert(id, mailbox);
    shared.after_core(&mut inner, &mut effects, None);
    id
}

/// Removes a connection: core cleanup, then the routing entry.
pub(crate) fn unregister(shared: &Shared, id: ConnId) {
    let mut effects = Vec::new();
    let mut inner = shared.lock();
    let now = shared.clock(&inner);
    inner.core.disconnect(now, id, &mut effects);
    inner.mailboxes.remove(&id);
    shared.after_core(&mut inner, &mut effects, None);
}
