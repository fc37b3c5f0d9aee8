//! [`Connection`]: one connection to a server and one async call per
//! protocol command. Requests are built as [`Request`] values and written
//! with [`encode_request`]; replies are read with [`decode_reply`], so the
//! client and the server share one codec.
//!
//! A connection is strictly request/reply: each call writes one request
//! and reads its reply. Pushed `sig` lines are skipped: subscribe with a
//! [`Subscriber`](super::Subscriber), on its own connection. A blocking call (`l`, `w`, `sl`, `sw` with a timeout)
//! holds the connection until the server answers.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_lite::FutureExt;

use super::tls::{Stream, TlsOptions};
use super::{whole_seconds, Error, Result};
use crate::wire::{decode_reply, encode_request, Key, Reply, ReplyDecoded, Request, Space, Token};

/// How long [`Connection::connect`] waits for TCP to connect (upstream's
/// dial timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive idle time on client connections (upstream's 30 s).
const KEEPALIVE: Duration = Duration::from_secs(30);

/// A grant: the token and the lease TTL the server gave it, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub token: Token,
    pub lease_s: u64,
}

/// What `e`/`se` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// `acquired TOK L`: granted at once; a `w`/`sw` must still follow.
    Acquired(Grant),
    /// `queued`: in the FIFO queue; `w`/`sw` collects the outcome.
    Queued,
}

/// One connection to a dflockd server over any byte stream `S`
/// (by default a [`Stream`]: plain TCP from [`Connection::connect`], TLS
/// from [`Connection::connect_tls`]; plug anything else in with
/// [`Connection::from_stream`]).
///
/// ```
/// # let server = dflockd::server::spawn(dflockd::server::ServerConfig {
/// #     listen: "127.0.0.1:0".into(), threads: 1, ..Default::default()
/// # }).unwrap();
/// # let addr = server.local_addr().to_string();
/// use dflockd::client::{Connection, Error};
/// use std::time::Duration;
///
/// smol::block_on(async {
///     let mut a = Connection::connect(&addr).await?;
///     let mut b = Connection::connect(&addr).await?;
///     let grant = a.lock("k", Duration::ZERO, None).await?;
///     assert_eq!(grant.lease_s, 33);
///     // Held by `a`: `b` times out at once.
///     assert!(matches!(b.lock("k", Duration::ZERO, None).await, Err(Error::Timeout)));
///     assert_eq!(a.renew("k", grant.token, Some(60)).await?, 60);
///     a.release("k", grant.token).await?;
///     // Releasing twice is a plain `error`.
///     assert!(matches!(a.release("k", grant.token).await, Err(Error::Server)));
///     Ok::<(), Error>(())
/// })
/// .unwrap();
/// ```
pub struct Connection<S = Stream> {
    stream: S,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Set while a request awaits its reply. Still set when a call starts,
    /// it means an earlier call was cancelled mid-request: its reply may
    /// still arrive, so replies can no longer be paired with requests.
    in_flight: bool,
}

impl Connection<Stream> {
    /// Connects over TCP to `addr` (`host:port`), trying each address it
    /// resolves to, within [`CONNECT_TIMEOUT`].
    pub async fn connect(addr: &str) -> Result<Self> {
        Ok(Connection::from_stream(Stream::Tcp(
            tcp_connect(addr).await?,
        )))
    }

    /// Connects over TCP to `addr` and runs the TLS handshake with `tls`,
    /// each within [`CONNECT_TIMEOUT`]. A certificate rustls refuses is
    /// [`Error::Tls`].
    pub async fn connect_tls(addr: &str, tls: &TlsOptions) -> Result<Self> {
        Connection::dial(addr, Some(tls)).await
    }

    /// [`Connection::connect_tls`] when `tls` is set, else
    /// [`Connection::connect`].
    pub async fn dial(addr: &str, tls: Option<&TlsOptions>) -> Result<Self> {
        Ok(Connection::from_stream(Stream::connect(addr, tls).await?))
    }
}

impl Stream {
    /// Connects over TCP to `addr` (nodelay, 30 s keepalive), then runs
    /// the TLS handshake when `tls` is set; each step within
    /// [`CONNECT_TIMEOUT`]. For a raw byte stream (a relay); most code
    /// wants [`Connection::dial`].
    pub async fn connect(addr: &str, tls: Option<&TlsOptions>) -> Result<Stream> {
        let tcp = tcp_connect(addr).await?;
        let Some(tls) = tls else {
            return Ok(Stream::Tcp(tcp));
        };
        let handshake = super::tls::handshake(tcp, tls, addr);
        let timeout = async {
            async_io::Timer::after(CONNECT_TIMEOUT).await;
            Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the TLS handshake with {addr} took longer than {CONNECT_TIMEOUT:?}"),
            )))
        };
        handshake.or(timeout).await
    }
}

/// A TCP connection to `addr` within [`CONNECT_TIMEOUT`], with nodelay and
/// keepalive set.
async fn tcp_connect(addr: &str) -> Result<async_net::TcpStream> {
    let attempt = async {
        let addrs: Vec<SocketAddr> = async_net::resolve(addr).await?;
        let mut last = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        );
        for a in addrs {
            match async_net::TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    // As upstream clients: notice a vanished server.
                    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE);
                    let _ = socket2::SockRef::from(&s).set_tcp_keepalive(&keepalive);
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    let timeout = async {
        async_io::Timer::after(CONNECT_TIMEOUT).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to {addr} took longer than {CONNECT_TIMEOUT:?}"),
        ))
    };
    Ok(attempt.or(timeout).await?)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps an established stream (plain TCP, TLS, an in-memory pipe).
    /// Nothing is sent: call [`Connection::auth`] first if the server
    /// requires a token.
    pub fn from_stream(stream: S) -> Self {
        Connection {
            stream,
            buf: Vec::new(),
            out: Vec::new(),
            in_flight: false,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Sends one request and reads its reply.
    ///
    /// If a previous call was cancelled (its future dropped) between
    /// sending and reading, the connection can no longer pair replies with
    /// requests, and every later call fails with an [`Error::Io`].
    pub async fn request(&mut self, req: &Request) -> Result<Reply> {
        if self.in_flight {
            return Err(Error::Io(std::io::Error::other(
                "connection unusable: an earlier request was cancelled before its reply",
            )));
        }
        self.in_flight = true;
        self.out.clear();
        encode_request(req, &mut self.out);
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        let reply = self.read_reply().await;
        // An I/O error leaves the flag set: the stream is broken anyway.
        if !matches!(reply, Err(Error::Io(_))) {
            self.in_flight = false;
        }
        reply
    }

    /// Reads the next reply line, skipping pushed `sig` lines.
    async fn read_reply(&mut self) -> Result<Reply> {
        loop {
            match decode_reply(&self.buf) {
                ReplyDecoded::Reply { reply, consumed } => {
                    self.buf.drain(..consumed);
                    return Ok(reply);
                }
                ReplyDecoded::Push { consumed, .. } => {
                    self.buf.drain(..consumed);
                }
                ReplyDecoded::Invalid { consumed } => {
                    let line = String::from_utf8_lossy(&self.buf[..consumed])
                        .trim_end()
                        .to_string();
                    self.buf.drain(..consumed);
                    return Err(Error::Protocol(line));
                }
                ReplyDecoded::NeedMore => {
                    let mut chunk = [0u8; 4096];
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(Error::Io(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        )));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// Closes the connection (both directions). With the server's default
    /// `--auto-release-on-disconnect`, whatever it held is released.
    pub async fn close(mut self) -> Result<()> {
        self.stream.close().await?;
        Ok(())
    }

    /// Closes the stream in place (errors ignored): the connection is then
    /// unusable. For replacing a connection behind a shared reference.
    pub(super) async fn shutdown(&mut self) {
        let _ = self.stream.close().await;
        self.in_flight = true;
    }

    /// `auth`: authenticates with `token`. Must be the first request on a
    /// server with `--auth-token`. Anything but `ok` is [`Error::Auth`]
    /// (except `error_draining`, which is [`Error::Draining`]).
    pub async fn auth(&mut self, token: &str) -> Result<()> {
        if token.contains(['\n', '\r']) {
            return Err(Error::Invalid("auth token contains a line break".into()));
        }
        let reply = self
            .request(&Request::Auth {
                token: token.as_bytes().into(),
            })
            .await?;
        match reply {
            Reply::Ok => Ok(()),
            Reply::Status(crate::wire::Status::ErrorDraining) => Err(Error::Draining),
            _ => Err(Error::Auth),
        }
    }

    /// `ping`: answers `ok`.
    pub async fn ping(&mut self) -> Result<()> {
        let reply = self.request(&Request::Ping).await?;
        expect_ok(reply)
    }

    /// `stable-ref`: tags this connection's session with `reference` (1 to
    /// 64 printable ASCII characters) on a cluster member. Once per
    /// connection, before anything is held or queued. If the leader keeps
    /// an orphaned session with the same reference (its connection was
    /// lost in a failover), this connection takes it over, holdings and
    /// tokens included (spec/cluster.md §5); renew a token to learn
    /// whether it came back. A follower answers [`Error::NotLeader`]; a
    /// single node, and a leader where a connected session already carries
    /// the reference, answer [`Error::Server`].
    pub async fn stable_ref(&mut self, reference: &str) -> Result<()> {
        let ok = !reference.is_empty()
            && reference.len() <= 64
            && reference.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(Error::Invalid(format!(
                "stable reference {reference:?}: must be 1 to 64 printable ASCII characters"
            )));
        }
        let reply = self
            .request(&Request::StableRef {
                reference: reference.as_bytes().into(),
            })
            .await?;
        expect_ok(reply)
    }

    /// `barrier`: on a cluster leader, answers once everything acknowledged
    /// before it is applied on this member (a linearizable no-op). A
    /// follower answers [`Error::NotLeader`], a single node [`Error::Server`].
    pub async fn barrier(&mut self) -> Result<()> {
        let reply = self.request(&Request::Barrier).await?;
        expect_ok(reply)
    }

    /// `stats`: the server's JSON snapshot.
    pub async fn stats(&mut self) -> Result<serde_json::Value> {
        match self.request(&Request::Stats).await? {
            Reply::Stats(json) => {
                serde_json::from_str(&json).map_err(|e| Error::Protocol(format!("ok {json} ({e})")))
            }
            other => Err(unexpected(other)),
        }
    }

    /// `l`: acquires the lock `key`, waiting up to `timeout` (rounded up to
    /// whole seconds; zero tries once). `lease_s` of `None` takes the
    /// server's default.
    pub async fn lock(
        &mut self,
        key: &str,
        timeout: Duration,
        lease_s: Option<u64>,
    ) -> Result<Grant> {
        self.acquire(Space::Lock, key, timeout, 1, lease_s).await
    }

    /// `sl`: acquires a slot of the semaphore `key` with `limit` slots.
    pub async fn sem_acquire(
        &mut self,
        key: &str,
        timeout: Duration,
        limit: u64,
        lease_s: Option<u64>,
    ) -> Result<Grant> {
        self.acquire(Space::Sem, key, timeout, limit, lease_s).await
    }

    /// `l` or `sl`, by `space`.
    pub async fn acquire(
        &mut self,
        space: Space,
        key: &str,
        timeout: Duration,
        limit: u64,
        lease_s: Option<u64>,
    ) -> Result<Grant> {
        let req = Request::Acquire {
            space,
            key: key_of(key)?,
            timeout_s: whole_seconds(timeout),
            limit: check_limit(limit)?,
            lease_s: check_lease(lease_s)?,
        };
        grant_of(self.request(&req).await?)
    }

    /// `r`: releases the lock `key` held by `token`.
    pub async fn release(&mut self, key: &str, token: Token) -> Result<()> {
        self.release_in(Space::Lock, key, token).await
    }

    /// `sr`: releases a semaphore slot.
    pub async fn sem_release(&mut self, key: &str, token: Token) -> Result<()> {
        self.release_in(Space::Sem, key, token).await
    }

    /// `r` or `sr`, by `space`.
    pub async fn release_in(&mut self, space: Space, key: &str, token: Token) -> Result<()> {
        let req = Request::Release {
            space,
            key: key_of(key)?,
            token: token.to_string().into_bytes().into(),
        };
        expect_ok(self.request(&req).await?)
    }

    /// `n`: renews the lock lease; returns the new TTL in seconds.
    pub async fn renew(&mut self, key: &str, token: Token, lease_s: Option<u64>) -> Result<u64> {
        self.renew_in(Space::Lock, key, token, lease_s).await
    }

    /// `sn`: renews a semaphore slot's lease.
    pub async fn sem_renew(
        &mut self,
        key: &str,
        token: Token,
        lease_s: Option<u64>,
    ) -> Result<u64> {
        self.renew_in(Space::Sem, key, token, lease_s).await
    }

    /// `n` or `sn`, by `space`.
    pub async fn renew_in(
        &mut self,
        space: Space,
        key: &str,
        token: Token,
        lease_s: Option<u64>,
    ) -> Result<u64> {
        let req = Request::Renew {
            space,
            key: key_of(key)?,
            token: token.to_string().into_bytes().into(),
            lease_s: check_lease(lease_s)?,
        };
        match self.request(&req).await? {
            Reply::OkInt(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    /// `e`: phase one of a two-phase lock acquire. Never blocks.
    pub async fn enqueue(&mut self, key: &str, lease_s: Option<u64>) -> Result<Enqueued> {
        self.enqueue_in(Space::Lock, key, 1, lease_s).await
    }

    /// `se`: phase one of a two-phase semaphore acquire.
    pub async fn sem_enqueue(
        &mut self,
        key: &str,
        limit: u64,
        lease_s: Option<u64>,
    ) -> Result<Enqueued> {
        self.enqueue_in(Space::Sem, key, limit, lease_s).await
    }

    /// `e` or `se`, by `space`.
    pub async fn enqueue_in(
        &mut self,
        space: Space,
        key: &str,
        limit: u64,
        lease_s: Option<u64>,
    ) -> Result<Enqueued> {
        let req = Request::Enqueue {
            space,
            key: key_of(key)?,
            limit: check_limit(limit)?,
            lease_s: check_lease(lease_s)?,
        };
        match self.request(&req).await? {
            Reply::Acquired { token, lease_s } => Ok(Enqueued::Acquired(Grant { token, lease_s })),
            Reply::Status(crate::wire::Status::Queued) => Ok(Enqueued::Queued),
            other => Err(unexpected(other)),
        }
    }

    /// `w`: phase two; waits up to `timeout` for the grant.
    pub async fn wait(&mut self, key: &str, timeout: Duration) -> Result<Grant> {
        self.wait_in(Space::Lock, key, timeout).await
    }

    /// `sw`: phase two for a semaphore.
    pub async fn sem_wait(&mut self, key: &str, timeout: Duration) -> Result<Grant> {
        self.wait_in(Space::Sem, key, timeout).await
    }

    /// `signal`: publishes `payload` on `channel` (no `*` or `>`); returns
    /// how many pushes the server queued (possibly 0): one per delivery
    /// route, so a connection reached both on its own and through a queue
    /// group counts twice (protocol.md §9.2).
    /// A wildcard channel or a blank or overlong payload is
    /// [`Error::Server`]; a line break in either is [`Error::Invalid`].
    pub async fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<u64> {
        if payload.contains(&b'\n') || payload.contains(&b'\r') {
            return Err(Error::Invalid(
                "signal payload contains a line break".into(),
            ));
        }
        let req = Request::Signal {
            channel: key_of(channel)?,
            payload: payload.into(),
        };
        match self.request(&req).await? {
            Reply::OkInt(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// `w` or `sw`, by `space`.
    pub async fn wait_in(&mut self, space: Space, key: &str, timeout: Duration) -> Result<Grant> {
        let req = Request::Wait {
            space,
            key: key_of(key)?,
            timeout_s: whole_seconds(timeout),
        };
        grant_of(self.request(&req).await?)
    }
}

pub(super) fn key_of(key: &str) -> Result<Key> {
    Key::new(key.as_bytes()).map_err(|_| {
        Error::Invalid(format!(
            "key {key:?}: must be 1 to 256 bytes without space, tab, CR or LF"
        ))
    })
}

fn check_limit(limit: u64) -> Result<u64> {
    if limit == 0 || limit > i64::MAX as u64 {
        return Err(Error::Invalid(format!("semaphore limit {limit}")));
    }
    Ok(limit)
}

fn check_lease(lease_s: Option<u64>) -> Result<Option<u64>> {
    match lease_s {
        Some(l) if l == 0 || l > crate::wire::MAX_SECONDS => {
            Err(Error::Invalid(format!("lease {l} s")))
        }
        other => Ok(other),
    }
}

fn expect_ok(reply: Reply) -> Result<()> {
    match reply {
        Reply::Ok => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn grant_of(reply: Reply) -> Result<Grant> {
    match reply {
        Reply::Granted { token, lease_s } => Ok(Grant { token, lease_s }),
        other => Err(unexpected(other)),
    }
}

/// A status becomes its error variant; any other reply shape is a
/// protocol error.
pub(super) fn unexpected(reply: Reply) -> Error {
    match reply {
        Reply::Status(s) => Error::from_status(s),
        Reply::NotLeader { leader } => Error::NotLeader(leader),
        other => {
            let mut line = Vec::new();
            crate::wire::encode_reply(&other, &mut line);
            Error::Protocol(String::from_utf8_lossy(&line).trim_end().to_string())
        }
    }
}
