//! The high-level handles: [`Client`] (server list, auth token, lease and
//! renewal settings), and [`Lock`] / [`Semaphore`], which behave like
//! upstream's clients (reference §9).
//!
//! Each handle dials its own connection to the server chosen by
//! [`shard`](super::shard), authenticates when a token is set, and after a
//! grant runs a background task on smol's global executor that renews the
//! lease every `lease × ratio`, drawn early by up to `jitter` of that
//! (defaults 0.5 and 10 %: between 45 % and 50 % of the lease). When a
//! renewal fails the grant is *lost*: [`Lock::is_lost`] turns true and the
//! futures from [`Lock::lost`] resolve; renewal stops there. A renewal
//! that gets no reply before the lease would end counts as failed.
//!
//! The renewal task and the holder share the connection behind an async
//! mutex, and the holder stops the task only while holding that mutex, so
//! the task is never cancelled between a request and its reply.
//!
//! A member of a cluster that is not the leader answers an acquire or an
//! enqueue with `error_not_leader [ADDR]`. The handle then closes its
//! connection and asks again: at `ADDR` when the member named the leader,
//! else at the next server of the list. It makes at most [`MAX_REDIRECTS`]
//! such hops per call, without pausing, then returns [`Error::NotLeader`];
//! the leader it found is kept for the handle's next acquire.
//!
//! A client made with [`Client::cluster`] knows that its list holds the
//! members of one cluster (spec/cluster.md §7), not shards, and survives a
//! change of leader:
//! * every connection is tagged with a fresh `stable-ref` right after
//!   `auth` (the client's random id and a counter), which also finds the
//!   leader: a member that refuses it is left for the member it names,
//!   one that cannot be reached or names nobody for the next of the list,
//!   with a short pause after each miss (25 ms doubling to 500 ms) until
//!   the client's failover time ([`Client::with_failover_timeout`], 10 s)
//!   runs out. The member found is remembered for the client's next
//!   connection.
//! * when a renewal (background or [`Lock::renew`]) or a release finds
//!   the connection gone or its member no longer leading, the handle
//!   *reclaims*: it dials the leader again, presents the same reference
//!   (taking over the orphaned session that kept its holding, §5) and
//!   repeats the request with the same token. A holding that did not come
//!   back (its orphan was released after `--orphan-ttl`, or the leader saw
//!   the connection close and released it) answers `error` to the renewal:
//!   the handle is lost and [`Lock::lost`] fires, as it does when no leader
//!   answers before the lease would end.
//! * a background renewal that gets no answer within half the lease left
//!   counts as a lost connection, so that a frozen leader leaves time to
//!   reclaim from the next one.
//! * an acquire whose connection fails after the request was sent returns
//!   the error: the grant may have been committed, and it stays with the
//!   orphan (released with its lease or the orphan) rather than being
//!   asked for twice.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_lite::FutureExt;
use smol::lock::Mutex;

use super::conn::{Connection, Enqueued, Grant};
use super::tls::TlsOptions;
use super::{shard, Error, Result, Token};
use crate::wire::Space;

/// Settings shared by every handle it creates. Cheap to clone.
///
/// ```
/// use dflockd::client::{crc32, Client};
/// let client = Client::new(["10.0.0.1:6388", "10.0.0.2:6388"]);
/// let i = (crc32(b"orders") % 2) as usize;
/// assert_eq!(client.server_for("orders"), ["10.0.0.1:6388", "10.0.0.2:6388"][i]);
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    servers: Arc<[String]>,
    auth_token: Option<String>,
    lease_s: Option<u64>,
    renew_ratio: f64,
    jitter: f64,
    tls: Option<TlsOptions>,
    /// Set by [`Client::cluster`]: the list holds the members of one cluster.
    cluster: Option<Arc<Members>>,
    failover: Duration,
}

/// What the handles of one cluster client share: the member that last
/// served as leader, and where stable references come from.
#[derive(Debug)]
struct Members {
    leader: std::sync::Mutex<Option<String>>,
    /// Random per client, so two clients never draw the same reference.
    id: u64,
    next_ref: std::sync::atomic::AtomicU64,
}

/// How long a cluster client keeps looking for a leader (for one
/// connection, or one reclaim) unless told otherwise.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// The pauses between misses while a cluster client looks for a leader.
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// How long one member gets to accept a connection and answer its
/// `stable-ref`: a frozen member must not hold up the search.
const MEMBER_ATTEMPT: Duration = Duration::from_secs(2);

impl Client {
    /// A client for the given servers (`host:port` each). Keys are sharded
    /// over them in the order given.
    ///
    /// # Panics
    /// If the list is empty.
    pub fn new<I, S>(servers: I) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let servers: Arc<[String]> = servers.into_iter().map(Into::into).collect();
        assert!(!servers.is_empty(), "Client::new: empty server list");
        Client {
            servers,
            auth_token: None,
            lease_s: None,
            renew_ratio: 0.5,
            jitter: 0.1,
            tls: None,
            cluster: None,
            failover: FAILOVER_TIMEOUT,
        }
    }

    /// A client for the members of one cluster (`host:port` of each
    /// member's client port). Every key goes to the leader, whichever
    /// member that is; see the [module docs](crate::client) for how it finds the
    /// leader, tags its connections with `stable-ref` and reclaims a
    /// holding after a failover.
    ///
    /// # Panics
    /// If the list is empty.
    pub fn cluster<I, S>(members: I) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut client = Client::new(members);
        let mut b = [0u8; 8];
        // A client whose id cannot be drawn still works: references then
        // differ by the process id and the time.
        let id = match getrandom::fill(&mut b) {
            Ok(()) => u64::from_le_bytes(b),
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                t ^ (u64::from(std::process::id()) << 32)
            }
        };
        client.cluster = Some(Arc::new(Members {
            leader: std::sync::Mutex::new(None),
            id,
            next_ref: std::sync::atomic::AtomicU64::new(0),
        }));
        client
    }

    /// How long a cluster client looks for a leader before it gives up on
    /// one connection or one reclaim (default [`FAILOVER_TIMEOUT`]). No
    /// effect on a client made with [`Client::new`].
    pub fn with_failover_timeout(mut self, timeout: Duration) -> Client {
        self.failover = timeout;
        self
    }

    /// Whether the client was made with [`Client::cluster`].
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The member this cluster client last found leading, if any.
    pub fn leader_hint(&self) -> Option<String> {
        let m = self.cluster.as_ref()?;
        m.leader.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_leader_hint(&self, addr: Option<&str>) {
        if let Some(m) = &self.cluster {
            *m.leader.lock().unwrap_or_else(|e| e.into_inner()) = addr.map(str::to_owned);
        }
    }

    /// A fresh stable reference, unique to this client and connection.
    fn fresh_reference(&self) -> Option<String> {
        let m = self.cluster.as_ref()?;
        let n = m.next_ref.fetch_add(1, Ordering::Relaxed);
        Some(format!("dflockd-{:016x}-{n}", m.id))
    }

    /// A connection to the cluster's leader, tagged with `reference`
    /// (which takes over an orphan carrying it), found before `deadline`
    /// as the [module docs](crate::client) say.
    pub async fn connect_leader(&self, reference: &str, deadline: Instant) -> Result<Connection> {
        let servers = &self.servers;
        let mut candidate = self.leader_hint().unwrap_or_else(|| servers[0].clone());
        let mut pause = FIRST_PAUSE;
        let mut hops = 0;
        loop {
            let attempt_end = deadline.min(Instant::now() + MEMBER_ATTEMPT);
            let attempt = async {
                let mut c = self.connect_to(&candidate).await?;
                c.stable_ref(reference).await?;
                Ok(c)
            };
            let timeout = async {
                smol::Timer::at(attempt_end).await;
                Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{candidate} did not answer in time"),
                )))
            };
            let err = match attempt.or(timeout).await {
                Ok(c) => {
                    self.set_leader_hint(Some(&candidate));
                    return Ok(c);
                }
                Err(e) => e,
            };
            let next = match &err {
                // Followed at once, unless it names itself (a new leader
                // that does not serve yet) or the hops go round in circles.
                Error::NotLeader(Some(addr)) if *addr != candidate && hops < servers.len() => {
                    hops += 1;
                    candidate = addr.clone();
                    continue;
                }
                Error::NotLeader(Some(addr)) => addr.clone(),
                // Unreachable, frozen, without a leader, or still keeping a
                // live session under this reference: the next member.
                Error::NotLeader(None) | Error::Io(_) | Error::Server => {
                    let at = servers.iter().position(|s| *s == candidate);
                    servers[at.map_or(0, |i| (i + 1) % servers.len())].clone()
                }
                _ => return Err(err),
            };
            hops = 0;
            self.set_leader_hint(None);
            if Instant::now() + pause >= deadline {
                return Err(err);
            }
            smol::Timer::after(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
            candidate = next;
        }
    }

    /// Sends `auth` with `token` right after connecting.
    pub fn with_auth_token(mut self, token: impl Into<String>) -> Client {
        self.auth_token = Some(token.into());
        self
    }

    /// Dials every server over TLS with `config`, verifying each server
    /// certificate against the host part of the server's address.
    /// See [`Client::with_tls_options`] to verify another name.
    pub fn with_tls(self, config: Arc<rustls::ClientConfig>) -> Client {
        self.with_tls_options(TlsOptions::new(config))
    }

    /// Dials every server over TLS as `tls` says.
    pub fn with_tls_options(mut self, tls: TlsOptions) -> Client {
        self.tls = Some(tls);
        self
    }

    /// The TLS settings, when the client dials TLS.
    pub fn tls(&self) -> Option<&TlsOptions> {
        self.tls.as_ref()
    }

    /// The lease asked for on every acquire and renewal, in whole seconds
    /// (default: the server's, 33 s on an unconfigured server).
    pub fn with_lease(mut self, lease: Duration) -> Client {
        self.lease_s = Some(super::whole_seconds(lease).max(1));
        self
    }

    /// Renew every `lease × ratio`, started early by a random fraction of up
    /// to `jitter` of that interval (0.5 and 0.1 by default; jitter 0 renews
    /// exactly at the ratio). Values are clamped to sensible ranges.
    pub fn with_renewal(mut self, ratio: f64, jitter: f64) -> Client {
        self.renew_ratio = if ratio.is_finite() {
            ratio.clamp(0.01, 0.99)
        } else {
            0.5
        };
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.1
        };
        self
    }

    /// The server that owns `key`: `servers[crc32(key) % servers.len()]`.
    pub fn server_for(&self, key: &str) -> &str {
        &self.servers[shard(key.as_bytes(), self.servers.len())]
    }

    /// A new connection (TLS when set) to the server that owns `key`,
    /// authenticated when a token is set.
    pub async fn connect_for(&self, key: &str) -> Result<Connection> {
        self.connect_to(self.server_for(key)).await
    }

    /// A new connection (TLS when set) to `addr`, authenticated when a
    /// token is set.
    pub async fn connect_to(&self, addr: &str) -> Result<Connection> {
        let mut conn = Connection::dial(addr, self.tls.as_ref()).await?;
        if let Some(token) = &self.auth_token {
            conn.auth(token).await?;
        }
        Ok(conn)
    }

    /// A handle on the lock `key`. Nothing is sent until it is used.
    pub fn lock(&self, key: impl Into<String>) -> Lock {
        Lock(Handle::new(self.clone(), Space::Lock, key.into(), 1))
    }

    /// A handle on the semaphore `key` with `limit` slots.
    pub fn semaphore(&self, key: impl Into<String>, limit: u64) -> Semaphore {
        Semaphore(Handle::new(self.clone(), Space::Sem, key.into(), limit))
    }

    /// The interval before the next renewal of a `lease_s` lease.
    fn renew_interval(&self, lease_s: u64) -> Duration {
        let base = lease_s as f64 * self.renew_ratio;
        let u = getrandom::u32().unwrap_or(0) as f64 / (u32::MAX as f64 + 1.0);
        let secs = base * (1.0 - self.jitter * u);
        Duration::from_secs_f64(secs.max(0.001))
    }
}

/// Whether a grant was lost, and a way to wait for it.
#[derive(Default)]
struct LostFlag {
    lost: AtomicBool,
    event: Event,
}

impl LostFlag {
    fn set(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    async fn wait(&self) {
        loop {
            if self.lost.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.event.listen();
            if self.lost.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

/// How many `error_not_leader` answers one acquire or enqueue follows
/// before it gives up with [`Error::NotLeader`].
pub const MAX_REDIRECTS: usize = 8;

type Shared = Arc<Mutex<Connection>>;

/// The current grant and its renewal task.
struct Held {
    grant: Grant,
    renewer: Option<smol::Task<()>>,
}

/// The state common to [`Lock`] and [`Semaphore`].
struct Handle {
    client: Client,
    space: Space,
    key: String,
    limit: u64,
    conn: Option<Shared>,
    held: Option<Held>,
    lost: Arc<LostFlag>,
    /// Where to dial instead of the key's shard: the leader (or the next
    /// member) an `error_not_leader` pointed to.
    redirected: Option<String>,
    /// In a cluster: the stable reference of the current connection.
    reference: Option<String>,
}

impl Handle {
    fn new(client: Client, space: Space, key: String, limit: u64) -> Handle {
        Handle {
            client,
            space,
            key,
            limit,
            conn: None,
            held: None,
            lost: Arc::new(LostFlag::default()),
            redirected: None,
            reference: None,
        }
    }

    /// The server this handle dials.
    fn server(&self) -> &str {
        match &self.redirected {
            Some(addr) => addr,
            None => self.client.server_for(&self.key),
        }
    }

    /// Follows `error_not_leader`: the named leader, else the server after
    /// the current one in the list.
    fn redirect(&mut self, leader: Option<String>) {
        self.reset();
        if self.client.is_cluster() {
            // The next connection looks for the leader itself.
            self.client.set_leader_hint(leader.as_deref());
            return;
        }
        let next = leader.unwrap_or_else(|| {
            let servers = &self.client.servers;
            let at = servers
                .iter()
                .position(|s| s == self.server())
                .unwrap_or_else(|| shard(self.key.as_bytes(), servers.len()));
            servers[(at + 1) % servers.len()].clone()
        });
        self.redirected = Some(next);
    }

    async fn conn(&mut self) -> Result<Shared> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let conn = match self.client.fresh_reference() {
            Some(reference) => {
                let deadline = Instant::now() + self.client.failover;
                let conn = self.client.connect_leader(&reference, deadline).await?;
                self.reference = Some(reference);
                conn
            }
            None => self.client.connect_to(self.server()).await?,
        };
        let c = Arc::new(Mutex::new(conn));
        self.conn = Some(c.clone());
        Ok(c)
    }

    fn check_idle(&self) -> Result<()> {
        if self.held.is_some() {
            return Err(Error::Invalid(format!(
                "{} is already held by this handle",
                self.key
            )));
        }
        Ok(())
    }

    /// Drops the connection (closing it) and any grant.
    fn reset(&mut self) {
        self.held = None;
        self.conn = None;
        self.reference = None;
    }

    async fn acquire(&mut self, timeout: Duration) -> Result<Token> {
        self.check_idle()?;
        let mut hops = 0;
        loop {
            let conn = self.conn().await?;
            let res = conn
                .lock()
                .await
                .acquire(
                    self.space,
                    &self.key,
                    timeout,
                    self.limit,
                    self.client.lease_s,
                )
                .await;
            match res {
                Err(Error::NotLeader(leader)) if hops < MAX_REDIRECTS => {
                    hops += 1;
                    self.redirect(leader);
                }
                res => return self.settle(conn, res),
            }
        }
    }

    async fn enqueue(&mut self) -> Result<Enqueued> {
        self.check_idle()?;
        let mut hops = 0;
        let (conn, res) = loop {
            let conn = self.conn().await?;
            let res = conn
                .lock()
                .await
                .enqueue_in(self.space, &self.key, self.limit, self.client.lease_s)
                .await;
            match res {
                Err(Error::NotLeader(leader)) if hops < MAX_REDIRECTS => {
                    hops += 1;
                    self.redirect(leader);
                }
                res => break (conn, res),
            }
        };
        match res {
            Ok(Enqueued::Acquired(grant)) => {
                self.granted(conn, grant);
                Ok(Enqueued::Acquired(grant))
            }
            Ok(Enqueued::Queued) => Ok(Enqueued::Queued),
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    async fn wait(&mut self, timeout: Duration) -> Result<Token> {
        let Some(conn) = self.conn.clone() else {
            return Err(Error::NotEnqueued);
        };
        let mut guard = conn.lock().await;
        // Stop renewing the `acquired` grant (safe: we hold the connection).
        self.held = None;
        let res = guard.wait_in(self.space, &self.key, timeout).await;
        drop(guard);
        self.settle(conn, res)
    }

    async fn release(&mut self) -> Result<()> {
        let (Some(conn), Some(_)) = (self.conn.clone(), self.held.as_ref()) else {
            return Err(Error::Invalid(format!("{} is not held", self.key)));
        };
        let mut guard = conn.lock().await;
        let held = self.held.take().expect("checked above");
        drop(held.renewer);
        let deadline = Instant::now() + self.client.failover;
        let res = on_session(
            &mut guard,
            &self.client,
            self.reference.as_deref(),
            deadline,
            Call::Release(self.space, &self.key, held.grant.token),
        )
        .await;
        drop(guard);
        self.reset();
        res.map(|_| ())
    }

    async fn renew(&mut self) -> Result<u64> {
        let (Some(conn), Some(held)) = (self.conn.clone(), self.held.as_ref()) else {
            return Err(Error::Invalid(format!("{} is not held", self.key)));
        };
        let token = held.grant.token;
        let deadline = Instant::now() + self.client.failover;
        let res = on_session(
            &mut *conn.lock().await,
            &self.client,
            self.reference.as_deref(),
            deadline,
            Call::Renew(self.space, &self.key, token, self.client.lease_s),
        )
        .await;
        if res.is_err() {
            self.lost.set();
        }
        res
    }

    /// The end of an acquire or a wait: a grant is recorded and renewed; on
    /// an error the connection is dropped (the queue place is gone anyway;
    /// upstream closes too).
    fn settle(&mut self, conn: Shared, res: Result<Grant>) -> Result<Token> {
        match res {
            Ok(grant) => {
                self.granted(conn, grant);
                Ok(grant.token)
            }
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    /// Records a grant and starts renewing it.
    fn granted(&mut self, conn: Shared, grant: Grant) {
        self.lost = Arc::new(LostFlag::default());
        let renewer = smol::spawn(renew_loop(
            conn,
            self.client.clone(),
            self.space,
            self.key.clone(),
            grant,
            self.reference.clone(),
            self.lost.clone(),
        ));
        self.held = Some(Held {
            grant,
            renewer: Some(renewer),
        });
    }

    fn token(&self) -> Option<Token> {
        self.held.as_ref().map(|h| h.grant.token)
    }

    fn lost_future(&self) -> impl Future<Output = ()> + Send + 'static {
        let flag = self.lost.clone();
        async move { flag.wait().await }
    }
}

async fn renew_loop(
    conn: Shared,
    client: Client,
    space: Space,
    key: String,
    grant: Grant,
    reference: Option<String>,
    lost: Arc<LostFlag>,
) {
    let mut lease_s = grant.lease_s;
    // When the lease runs out unless a renewal lands first.
    let mut expires = Instant::now() + Duration::from_secs(lease_s);
    loop {
        smol::Timer::after(client.renew_interval(lease_s)).await;
        let renew = async {
            let sent = Instant::now();
            let l = on_session(
                &mut *conn.lock().await,
                &client,
                reference.as_deref(),
                expires,
                Call::Renew(space, &key, grant.token, client.lease_s),
            )
            .await?;
            Ok((sent, l))
        };
        // A server that does not answer before the lease ends has lost us
        // the grant just as surely as one that answers `error`.
        let deadline = async {
            smol::Timer::at(expires).await;
            Err(Error::Timeout)
        };
        match renew.or(deadline).await {
            Ok((sent, l)) => {
                lease_s = l;
                expires = sent + Duration::from_secs(l);
            }
            Err(_) => {
                lost.set();
                return;
            }
        }
    }
}

/// A request on a held session that a cluster client repeats after a
/// reclaim.
enum Call<'a> {
    Renew(Space, &'a str, Token, Option<u64>),
    Release(Space, &'a str, Token),
}

impl Call<'_> {
    /// The renewed lease, or 0 for a release.
    async fn send(&self, conn: &mut Connection) -> Result<u64> {
        match *self {
            Call::Renew(space, key, token, lease_s) => {
                conn.renew_in(space, key, token, lease_s).await
            }
            Call::Release(space, key, token) => {
                conn.release_in(space, key, token).await.map(|()| 0)
            }
        }
    }
}

/// `future`, or a timeout error once `deadline` passes.
async fn before<T>(deadline: Instant, future: impl Future<Output = Result<T>>) -> Result<T> {
    future
        .or(async {
            smol::Timer::at(deadline).await;
            Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in time",
            )))
        })
        .await
}

/// Sends `call` on a held session. Without a stable reference that is
/// all. With one (a cluster client), a connection that fails, a member
/// that stopped leading, or no answer within half the time left before
/// `deadline`, leads to a reclaim: the old connection is closed, a new one
/// to the leader presents the reference (taking over the orphan that kept
/// the holding) and replaces it, and `call` is sent once more.
async fn on_session(
    conn: &mut Connection,
    client: &Client,
    reference: Option<&str>,
    deadline: Instant,
    call: Call<'_>,
) -> Result<u64> {
    let Some(reference) = reference else {
        return call.send(conn).await;
    };
    let now = Instant::now();
    let first = before(
        now + deadline.saturating_duration_since(now) / 2,
        call.send(conn),
    )
    .await;
    match first {
        Err(Error::Io(_) | Error::NotLeader(_)) => {}
        other => return other,
    }
    // Closed first: a leader that still serves the old connection would
    // refuse the reference while that session is live.
    let _ = before(deadline, async {
        conn.shutdown().await;
        Ok(())
    })
    .await;
    *conn = client.connect_leader(reference, deadline).await?;
    before(deadline, call.send(conn)).await
}

macro_rules! handle_methods {
    ($what:literal) => {
        /// Acquires, waiting up to `timeout` (rounded up to whole seconds;
        /// zero tries once), and starts background renewal. A timeout is
        /// [`Error::Timeout`] and closes the handle's connection.
        pub async fn acquire(&mut self, timeout: Duration) -> Result<Token> {
            self.0.acquire(timeout).await
        }

        /// Two-phase acquire, phase one (`e`/`se`): joins the queue without
        /// blocking. On `Acquired`, renewal starts at once; call
        /// [`wait`](Self::wait) either way to confirm.
        pub async fn enqueue(&mut self) -> Result<Enqueued> {
            self.0.enqueue().await
        }

        /// Two-phase acquire, phase two (`w`/`sw`): waits up to `timeout`
        /// for the grant, then renews it in the background.
        pub async fn wait(&mut self, timeout: Duration) -> Result<Token> {
            self.0.wait(timeout).await
        }

        /// Stops renewal, releases (`r`/`sr`) and closes the connection.
        pub async fn release(&mut self) -> Result<()> {
            self.0.release().await
        }

        /// Renews now; returns the new lease TTL in seconds. A failure marks
        /// the grant lost.
        pub async fn renew(&mut self) -> Result<u64> {
            self.0.renew().await
        }

        /// The token of the current grant.
        pub fn token(&self) -> Option<Token> {
            self.0.token()
        }

        /// The fence of the current grant (the token's first 16 hex digits).
        pub fn fence(&self) -> Option<u64> {
            self.0.token().map(|t| t.fence)
        }

        /// The key.
        pub fn key(&self) -> &str {
            &self.0.key
        }

        /// Whether a background renewal of the current grant failed: the
        #[doc = concat!($what, " must be assumed lost to another holder.")]
        pub fn is_lost(&self) -> bool {
            self.0.lost.lost.load(Ordering::SeqCst)
        }

        /// A future that resolves when renewal of the current grant fails.
        /// It never resolves for a grant that is released or kept; race it
        /// against the protected work (for example with
        /// `futures_lite::FutureExt::or`).
        pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
            self.0.lost_future()
        }

        /// Closes the connection without releasing: the server releases on
        /// disconnect (its default).
        pub fn close(mut self) {
            self.0.reset();
        }
    };
}

/// A distributed lock on one key. See the [module docs](super) for an
/// example.
pub struct Lock(Handle);

impl Lock {
    handle_methods!("lock");
}

/// A counting semaphore on one key with a fixed number of slots.
///
/// ```
/// # let server = dflockd::server::spawn(dflockd::server::ServerConfig {
/// #     listen: "127.0.0.1:0".into(), threads: 1, ..Default::default()
/// # }).unwrap();
/// # let addr = server.local_addr().to_string();
/// use dflockd::client::{Client, Error};
/// use std::time::Duration;
///
/// smol::block_on(async {
///     let client = Client::new([addr]);
///     let mut a = client.semaphore("pool", 2);
///     let mut b = client.semaphore("pool", 2);
///     let mut c = client.semaphore("pool", 2);
///     a.acquire(Duration::ZERO).await?;
///     b.acquire(Duration::ZERO).await?;
///     assert!(matches!(c.acquire(Duration::ZERO).await, Err(Error::Timeout)));
///     a.release().await?;
///     c.acquire(Duration::from_secs(5)).await?;
///     Ok::<(), Error>(())
/// })
/// .unwrap();
/// ```
pub struct Semaphore(Handle);

impl Semaphore {
    handle_methods!("slot");

    /// The number of slots.
    pub fn limit(&self) -> u64 {
        self.0.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_interval_is_half_the_lease_minus_early_jitter() {
        let c = Client::new(["127.0.0.1:1"]);
        for _ in 0..1000 {
            let d = c.renew_interval(10);
            assert!(
                d > Duration::from_millis(4500) && d <= Duration::from_secs(5),
                "{d:?}"
            );
        }
        let exact = Client::new(["127.0.0.1:1"]).with_renewal(0.5, 0.0);
        assert_eq!(exact.renew_interval(2), Duration::from_secs(1));
        let tiny = Client::new(["127.0.0.1:1"]).with_renewal(0.01, 1.0);
        assert!(tiny.renew_interval(0) >= Duration::from_millis(1));
    }
}
