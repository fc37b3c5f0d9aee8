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
//! else at the next server of the list (in cluster mode the list holds
//! the members, not shards). It makes at most [`MAX_REDIRECTS`] such hops
//! per call, without pausing, then returns [`Error::NotLeader`]; the
//! leader it found is kept for the handle's next acquire.

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
}

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
        let c = Arc::new(Mutex::new(self.client.connect_to(self.server()).await?));
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
        let res = guard
            .release_in(self.space, &self.key, held.grant.token)
            .await;
        drop(guard);
        self.reset();
        res
    }

    async fn renew(&mut self) -> Result<u64> {
        let (Some(conn), Some(held)) = (self.conn.clone(), self.held.as_ref()) else {
            return Err(Error::Invalid(format!("{} is not held", self.key)));
        };
        let token = held.grant.token;
        let res = conn
            .lock()
            .await
            .renew_in(self.space, &self.key, token, self.client.lease_s)
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
    lost: Arc<LostFlag>,
) {
    let mut lease_s = grant.lease_s;
    // When the lease runs out unless a renewal lands first.
    let mut expires = Instant::now() + Duration::from_secs(lease_s);
    loop {
        smol::Timer::after(client.renew_interval(lease_s)).await;
        let renew = async {
            let sent = Instant::now();
            let l = conn
                .lock()
                .await
                .renew_in(space, &key, grant.token, client.lease_s)
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
