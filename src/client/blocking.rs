//! Blocking wrappers around the async client, for code that does not run
//! an executor: each call runs its future to completion with
//! `smol::block_on`. Background renewal still runs, on smol's global
//! executor threads.
//!
//! ```
//! # let server = dflockd::server::spawn(dflockd::server::ServerConfig {
//! #     listen: "127.0.0.1:0".into(), threads: 1, ..Default::default()
//! # }).unwrap();
//! # let addr = server.local_addr().to_string();
//! use dflockd::client::blocking::Client;
//! use std::time::Duration;
//!
//! let client = Client::new([addr]);
//! let mut lock = client.lock("nightly-backup");
//! let token = lock.acquire(Duration::from_secs(5)).unwrap();
//! assert_eq!(lock.fence(), Some(token.fence));
//! lock.release().unwrap();
//! ```

use std::time::Duration;

use super::{Enqueued, Grant, Result, Token};
use crate::wire::Space;

/// Blocking [`super::Client`].
#[derive(Clone, Debug)]
pub struct Client(pub super::Client);

impl Client {
    /// See [`super::Client::new`].
    pub fn new<I, S>(servers: I) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client(super::Client::new(servers))
    }

    /// See [`super::Client::cluster`].
    pub fn cluster<I, S>(members: I) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client(super::Client::cluster(members))
    }

    /// See [`super::Client::with_failover_timeout`].
    pub fn with_failover_timeout(self, timeout: Duration) -> Client {
        Client(self.0.with_failover_timeout(timeout))
    }

    /// See [`super::Client::with_auth_token`].
    pub fn with_auth_token(self, token: impl Into<String>) -> Client {
        Client(self.0.with_auth_token(token))
    }

    /// See [`super::Client::with_tls`].
    pub fn with_tls(self, config: std::sync::Arc<rustls::ClientConfig>) -> Client {
        Client(self.0.with_tls(config))
    }

    /// See [`super::Client::with_tls_options`].
    pub fn with_tls_options(self, tls: super::TlsOptions) -> Client {
        Client(self.0.with_tls_options(tls))
    }

    /// See [`super::Client::with_lease`].
    pub fn with_lease(self, lease: Duration) -> Client {
        Client(self.0.with_lease(lease))
    }

    /// See [`super::Client::with_renewal`].
    pub fn with_renewal(self, ratio: f64, jitter: f64) -> Client {
        Client(self.0.with_renewal(ratio, jitter))
    }

    /// See [`super::Client::server_for`].
    pub fn server_for(&self, key: &str) -> &str {
        self.0.server_for(key)
    }

    /// See [`super::Client::connect_for`].
    pub fn connect_for(&self, key: &str) -> Result<Connection> {
        smol::block_on(self.0.connect_for(key)).map(Connection)
    }

    /// See [`super::Client::lock`].
    pub fn lock(&self, key: impl Into<String>) -> Lock {
        Lock(self.0.lock(key))
    }

    /// See [`super::Client::semaphore`].
    pub fn semaphore(&self, key: impl Into<String>, limit: u64) -> Semaphore {
        Semaphore(self.0.semaphore(key, limit))
    }
}

macro_rules! blocking_handle {
    ($name:ident) => {
        /// Blocking
        #[doc = concat!("[`super::", stringify!($name), "`].")]
        pub struct $name(pub super::$name);

        impl $name {
            pub fn acquire(&mut self, timeout: Duration) -> Result<Token> {
                smol::block_on(self.0.acquire(timeout))
            }
            pub fn enqueue(&mut self) -> Result<Enqueued> {
                smol::block_on(self.0.enqueue())
            }
            pub fn wait(&mut self, timeout: Duration) -> Result<Token> {
                smol::block_on(self.0.wait(timeout))
            }
            pub fn release(&mut self) -> Result<()> {
                smol::block_on(self.0.release())
            }
            pub fn renew(&mut self) -> Result<u64> {
                smol::block_on(self.0.renew())
            }
            pub fn token(&self) -> Option<Token> {
                self.0.token()
            }
            pub fn fence(&self) -> Option<u64> {
                self.0.fence()
            }
            pub fn is_lost(&self) -> bool {
                self.0.is_lost()
            }
            /// Blocks until renewal of the current grant fails, or until
            /// `timeout` passes; returns whether it was lost.
            pub fn wait_lost(&self, timeout: Duration) -> bool {
                use futures_lite::FutureExt;
                let lost = self.0.lost();
                smol::block_on(
                    async {
                        lost.await;
                        true
                    }
                    .or(async {
                        smol::Timer::after(timeout).await;
                        false
                    }),
                )
            }
            pub fn close(self) {
                self.0.close()
            }
        }
    };
}

blocking_handle!(Lock);
blocking_handle!(Semaphore);

/// Blocking [`super::Connection`] (TCP or TLS).
pub struct Connection(pub super::Connection);

impl Connection {
    /// See [`super::Connection::connect`].
    pub fn connect(addr: &str) -> Result<Connection> {
        smol::block_on(super::Connection::connect(addr)).map(Connection)
    }
    /// See [`super::Connection::connect_tls`].
    pub fn connect_tls(addr: &str, tls: &super::TlsOptions) -> Result<Connection> {
        smol::block_on(super::Connection::connect_tls(addr, tls)).map(Connection)
    }
    pub fn auth(&mut self, token: &str) -> Result<()> {
        smol::block_on(self.0.auth(token))
    }
    pub fn ping(&mut self) -> Result<()> {
        smol::block_on(self.0.ping())
    }
    pub fn stats(&mut self) -> Result<serde_json::Value> {
        smol::block_on(self.0.stats())
    }
    pub fn acquire(
        &mut self,
        space: Space,
        key: &str,
        timeout: Duration,
        limit: u64,
        lease_s: Option<u64>,
    ) -> Result<Grant> {
        smol::block_on(self.0.acquire(space, key, timeout, limit, lease_s))
    }
    pub fn release(&mut self, space: Space, key: &str, token: Token) -> Result<()> {
        smol::block_on(self.0.release_in(space, key, token))
    }
    pub fn renew(
        &mut self,
        space: Space,
        key: &str,
        token: Token,
        lease_s: Option<u64>,
    ) -> Result<u64> {
        smol::block_on(self.0.renew_in(space, key, token, lease_s))
    }
    pub fn enqueue(
        &mut self,
        space: Space,
        key: &str,
        limit: u64,
        lease_s: Option<u64>,
    ) -> Result<Enqueued> {
        smol::block_on(self.0.enqueue_in(space, key, limit, lease_s))
    }
    pub fn wait(&mut self, space: Space, key: &str, timeout: Duration) -> Result<Grant> {
        smol::block_on(self.0.wait_in(space, key, timeout))
    }
    /// See [`super::Connection::publish`].
    pub fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<u64> {
        smol::block_on(self.0.publish(channel, payload))
    }
    pub fn close(self) -> Result<()> {
        smol::block_on(self.0.close())
    }
}

/// Blocking [`super::Subscriber`]. Its reader and heartbeat run on smol's
/// global executor, so signals are buffered between calls.
#[derive(Debug)]
pub struct Subscriber(pub super::Subscriber);

impl Subscriber {
    /// See [`super::Subscriber::connect`].
    pub fn connect(
        addr: &str,
        tls: Option<&super::TlsOptions>,
        auth_token: Option<&str>,
    ) -> Result<Subscriber> {
        smol::block_on(super::Subscriber::connect(addr, tls, auth_token)).map(Subscriber)
    }
    pub fn listen(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        smol::block_on(self.0.listen(pattern, group))
    }
    pub fn unlisten(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        smol::block_on(self.0.unlisten(pattern, group))
    }
    pub fn next(&self) -> Result<super::Signal> {
        smol::block_on(self.0.next())
    }
    /// The next signal, or `None` if none arrives within `timeout`.
    pub fn next_timeout(&self, timeout: Duration) -> Option<Result<super::Signal>> {
        use futures_lite::FutureExt;
        smol::block_on(async { Some(self.0.next().await) }.or(async {
            smol::Timer::after(timeout).await;
            None
        }))
    }
    pub fn dropped(&self) -> u64 {
        self.0.dropped()
    }
    pub fn close(self) -> Result<()> {
        smol::block_on(self.0.close())
    }
}
