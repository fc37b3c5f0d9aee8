//! The validated settings of the two fronts, as the configuration builds
//! them ([`super::Config::server_config`]) and tests write them by hand:
//! [`ServerConfig`] for the process and its TCP front, [`HttpSettings`]
//! for the HTTP front. They live here, beside the settings table they are
//! derived from, so that neither front imports the other's module for its
//! settings (`server::ServerConfig` and `http::HttpSettings` re-export them).

use std::path::PathBuf;

use crate::core::CoreConfig;

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
    /// Runtime threads (`--threads`); 0 = one per available core less
    /// one, at least one ([`crate::server::auto_threads`]).
    pub threads: usize,
    /// How long an idle runtime thread polls its sockets without waiting
    /// before it sleeps in `epoll_wait` (`--spin-us`,
    /// [`crate::rt::Runtime::set_spin`]; zero: never). Ignored on a
    /// machine with one core, where a spinning thread would only delay the
    /// one it waits for.
    pub spin: std::time::Duration,
    /// How long a runtime thread keeps polling without waiting after one
    /// of its connections was answered on a contended key, its release
    /// being due ([`crate::rt::Worker::expect`]; default
    /// [`crate::rt::DEFAULT_HANDOFF_SPIN`], zero: never). Ignored on one
    /// core, as [`ServerConfig::spin`] is.
    pub handoff_spin: std::time::Duration,
    /// When set, every connection is TLS (protocol.md §1.1); see [`crate::net::tls::load`].
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Seconds a TLS client has to finish its handshake, on both listeners.
    pub tls_handshake_timeout_s: u64,
    /// The HTTP REST front (`--http-port` ≠ 0); `None` = off.
    pub http: Option<HttpSettings>,
    /// Cluster mode (`--raft-dir`); `None` = a single node.
    pub cluster: Option<ClusterSettings>,
}

/// Cluster mode's settings, already validated (spec/cluster.md §9).
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub member: super::ClusterConfig,
    /// `--orphan-ttl` in milliseconds.
    pub orphan_ttl_ms: u64,
    /// One Raft tick (100 ms; tests shorten it).
    pub tick_ms: u64,
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
            threads: t::THREADS.count_default(),
            spin: std::time::Duration::from_micros(t::SPIN_US.int_default()),
            handoff_spin: crate::rt::DEFAULT_HANDOFF_SPIN,
            tls: None,
            tls_handshake_timeout_s: t::TLS_HANDSHAKE_TIMEOUT.int_default(),
            http: None,
            cluster: None,
        }
    }
}

/// Settings of the HTTP front, already validated (from `--http-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// `host:port` to listen on.
    pub listen: String,
    /// `--http-session-idle-timeout`; 0 = sessions are never reaped.
    pub session_idle_timeout_s: u64,
    /// `--http-max-sessions`; 0 = unlimited.
    pub max_sessions: usize,
    /// `--http-max-sessions-per-ip`; 0 = unlimited.
    pub max_sessions_per_ip: usize,
    /// `--http-max-connections-per-ip`; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// `--http-rate-limit-per-ip`: requests per second; 0 = unlimited.
    pub rate_limit_per_ip: u64,
    /// `--http-rate-limit-burst`; 0 = the rate.
    pub rate_limit_burst: u64,
    /// `--http-cors-allowed-origins`, split; empty = CORS off; `*` = any.
    pub cors_allowed_origins: Vec<String>,
    /// `--http-sse-ping-interval`: an SSE stream refreshes its hidden
    /// session this often, so the idle sweeper keeps it; 0 = the stream
    /// counts as a request in flight instead (never swept).
    pub sse_ping_interval_s: u64,
}

impl Default for HttpSettings {
    /// Loopback on an ephemeral port; everything else from the settings
    /// table (`config::table`): 20 s idle timeout, no limits, no CORS, SSE
    /// keep-alive every 15 s.
    fn default() -> Self {
        use crate::config::table as t;
        HttpSettings {
            listen: "127.0.0.1:0".into(),
            session_idle_timeout_s: t::HTTP_SESSION_IDLE_TIMEOUT.int_default(),
            max_sessions: t::HTTP_MAX_SESSIONS.count_default(),
            max_sessions_per_ip: t::HTTP_MAX_SESSIONS_PER_IP.count_default(),
            max_connections_per_ip: t::HTTP_MAX_CONNECTIONS_PER_IP.count_default(),
            rate_limit_per_ip: t::HTTP_RATE_LIMIT_PER_IP.int_default(),
            rate_limit_burst: t::HTTP_RATE_LIMIT_BURST.int_default(),
            cors_allowed_origins: Vec::new(),
            sse_ping_interval_s: t::HTTP_SSE_PING_INTERVAL.int_default(),
        }
    }
}
