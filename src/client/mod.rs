//! The client library: talk to a dflockd server (this one or upstream
//! dflockd v1.x) from Rust, asynchronously on smol or through the
//! [`blocking`] wrapper.
//!
//! Two levels:
//! * [`Connection`]: one TCP (or any other byte stream) connection and one
//!   call per protocol command (`l`, `r`, `n`, `e`, `w`, `sl`, …, `stats`,
//!   `auth`, `ping`). Replies come back typed; every refusal is an
//!   [`Error`] variant named after its status word.
//! * [`Client`], [`Lock`] and [`Semaphore`]: the behaviour of upstream's
//!   clients (reference §9). A key is sharded over the server list with
//!   [`shard`] (`crc32(key) % n`), each handle dials its own connection and
//!   authenticates on it, a grant starts background renewal at half the
//!   lease (minus up to 10 % early jitter), a failed renewal marks the handle
//!   [lost](Lock::is_lost) and wakes [`Lock::lost`], and release sends
//!   `r`/`sr` and then closes the connection.
//! * [`Client::cluster`]: the same handles against the members of a
//!   cluster: they find the leader, tag each connection with
//!   `stable-ref`, and after a failover reclaim their holdings from the
//!   new leader, or report them lost.
//! * [`Subscriber`]: signals (`listen`/`unlisten`, pushed `sig` lines) on a
//!   connection of its own, with a heartbeat `ping`; publish with
//!   [`Connection::publish`].
//!
//! Durations are sent as whole seconds, rounded up, like upstream clients:
//! a 1.2 s timeout is sent as `2`.
//!
//! TLS: [`Client::with_tls`] and [`Connection::connect_tls`] dial TLS with
//! a rustls configuration ([`TlsOptions`]); [`client_config_from_ca_file`]
//! builds one trusting a PEM CA file. [`Connection::from_stream`] accepts
//! any other `AsyncRead + AsyncWrite` stream.
//!
//! ```
//! # let server = dflockd::server::spawn(dflockd::server::ServerConfig {
//! #     listen: "127.0.0.1:0".into(), threads: 1, ..Default::default()
//! # }).unwrap();
//! # let addr = server.local_addr().to_string();
//! use dflockd::client::Client;
//! use std::time::Duration;
//!
//! smol::block_on(async {
//!     let client = Client::new([addr.as_str()]);
//!     let mut lock = client.lock("report-job");
//!     let token = lock.acquire(Duration::from_secs(5)).await?;
//!     assert!(token.fence > 0);
//!     assert!(!lock.is_lost());
//!     lock.release().await?;
//!     Ok::<(), dflockd::client::Error>(())
//! })
//! .unwrap();
//! ```

pub mod blocking;
mod conn;
mod crc;
mod handle;
mod subscriber;
mod tls;

pub use crate::wire::Token;
pub use conn::{Connection, Enqueued, Grant, CONNECT_TIMEOUT};
pub use crc::{crc32, shard};
pub use handle::{Client, Lock, Semaphore, FAILOVER_TIMEOUT, MAX_REDIRECTS};
pub use subscriber::{Signal, Subscriber, HEARTBEAT, SIGNAL_BUFFER};
pub use tls::{client_config_from_ca_file, client_config_from_roots, Stream, TlsOptions};

use std::fmt;
use std::time::Duration;

use crate::wire::Status;

/// Everything a client call can fail with: one variant per refusal status
/// of the protocol, plus transport and protocol failures.
#[derive(Debug)]
pub enum Error {
    /// `timeout`: not granted within the timeout.
    Timeout,
    /// `error_max_locks`: the server's resource budget is full.
    MaxLocks,
    /// `error_max_waiters`: the key's queue is full.
    MaxWaiters,
    /// `error_limit_mismatch`: the semaphore exists with another limit.
    LimitMismatch,
    /// `error_already_enqueued`: this connection already has a two-phase record.
    AlreadyEnqueued,
    /// `error_not_enqueued`: `w`/`sw` without a two-phase record.
    NotEnqueued,
    /// `error_lease_expired`: the two-phase grant's lease ran out before `w`.
    LeaseExpired,
    /// `error_auth`, or an `auth` that did not answer `ok`.
    Auth,
    /// `error_draining`: the server is shutting down.
    Draining,
    /// `error_not_leader [ADDR]`: a cluster member that is not the leader
    /// refused the request; `ADDR` names the leader when the member knows
    /// it. [`Lock`] and [`Semaphore`] follow it on their own (see
    /// [`Client`]); a bare [`Connection`] returns it.
    NotLeader(Option<String>),
    /// Plain `error`: malformed request, or a token that is not a live holder.
    Server,
    /// The connection failed (connect, read, write, or end of stream).
    Io(std::io::Error),
    /// TLS was refused: the server certificate is not trusted or does not
    /// carry the expected name, no common protocol version, or a
    /// certificate given to trust does not parse.
    Tls(rustls::Error),
    /// The TLS settings are unusable (an unreadable or empty CA file, an
    /// invalid server name).
    TlsConfig(String),
    /// A reply line this protocol does not define, or one that does not fit
    /// the request (lossily decoded).
    Protocol(String),
    /// A key or argument the client refuses to send (empty key, whitespace
    /// in a key, a newline in a token, a zero limit).
    Invalid(String),
}

impl Error {
    /// The error for a status word that refuses a request. `queued` is not a
    /// refusal and maps to [`Error::Protocol`].
    pub fn from_status(status: Status) -> Error {
        match status {
            Status::Timeout => Error::Timeout,
            Status::Error => Error::Server,
            Status::ErrorMaxLocks => Error::MaxLocks,
            Status::ErrorMaxWaiters => Error::MaxWaiters,
            Status::ErrorLimitMismatch => Error::LimitMismatch,
            Status::ErrorAlreadyEnqueued => Error::AlreadyEnqueued,
            Status::ErrorNotEnqueued => Error::NotEnqueued,
            Status::ErrorLeaseExpired => Error::LeaseExpired,
            Status::ErrorAuth => Error::Auth,
            Status::ErrorDraining => Error::Draining,
            Status::Queued => Error::Protocol("unexpected `queued`".into()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => f.write_str("timed out"),
            Error::MaxLocks => f.write_str("server refused: error_max_locks"),
            Error::MaxWaiters => f.write_str("server refused: error_max_waiters"),
            Error::LimitMismatch => f.write_str("server refused: error_limit_mismatch"),
            Error::AlreadyEnqueued => f.write_str("server refused: error_already_enqueued"),
            Error::NotEnqueued => f.write_str("server refused: error_not_enqueued"),
            Error::LeaseExpired => f.write_str("server refused: error_lease_expired"),
            Error::Auth => f.write_str("authentication failed"),
            Error::Draining => f.write_str("server is draining"),
            Error::NotLeader(Some(addr)) => write!(f, "not the leader; the leader is {addr}"),
            Error::NotLeader(None) => f.write_str("not the leader; the leader is unknown"),
            Error::Server => f.write_str("server answered error"),
            Error::Io(e) => write!(f, "connection failed: {e}"),
            Error::Tls(e) => write!(f, "TLS failed: {e}"),
            Error::TlsConfig(what) => write!(f, "TLS configuration: {what}"),
            Error::Protocol(line) => write!(f, "unexpected reply: {line}"),
            Error::Invalid(what) => write!(f, "invalid argument: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// Shorthand for client results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A duration as the whole seconds sent on the wire, rounded up
/// (upstream clients do the same): 0 → 0, 1 ms → 1, 1.2 s → 2.
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The fence of a token string: its first 16 hex digits as a number
/// (upstream Python's `fence_from_token`). `None` unless the string is a
/// token this protocol issues (32 lowercase hex digits).
pub fn fence_from_token(token: &str) -> Option<u64> {
    Token::parse(token.as_bytes()).map(|t| t.fence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1200)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
    }

    #[test]
    fn fences() {
        assert_eq!(
            fence_from_token("18eb96c95bb368014f0c2a9e7d13b658"),
            Some(0x18eb96c95bb36801)
        );
        assert_eq!(fence_from_token("18EB96C95BB368014F0C2A9E7D13B658"), None);
        assert_eq!(fence_from_token("abc"), None);
    }

    #[test]
    fn statuses_map_to_variants() {
        for s in Status::ALL {
            let e = Error::from_status(s);
            let ok = matches!(
                (s, &e),
                (Status::Timeout, Error::Timeout)
                    | (Status::Error, Error::Server)
                    | (Status::ErrorMaxLocks, Error::MaxLocks)
                    | (Status::ErrorMaxWaiters, Error::MaxWaiters)
                    | (Status::ErrorLimitMismatch, Error::LimitMismatch)
                    | (Status::ErrorAlreadyEnqueued, Error::AlreadyEnqueued)
                    | (Status::ErrorNotEnqueued, Error::NotEnqueued)
                    | (Status::ErrorLeaseExpired, Error::LeaseExpired)
                    | (Status::ErrorAuth, Error::Auth)
                    | (Status::ErrorDraining, Error::Draining)
                    | (Status::Queued, Error::Protocol(_))
            );
            assert!(ok, "{s:?} -> {e:?}");
        }
    }
}
