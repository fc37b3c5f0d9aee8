//! The settings table: one row per setting, and everything about a setting
//! in its row (flag, environment variable, kind and range, default, help).
//!
//! Everything else is derived from these rows: the command-line parser
//! (`config/args.rs`) knows which flags exist and which take a value, the
//! `--help` text is rendered from them, the resolver (`config/resolve.rs`)
//! looks each one up on the command line, then in the environment, then
//! falls back to the row's default, the defaults of
//! [`crate::core::CoreConfig`], [`crate::server::ServerConfig`] and
//! [`crate::http::HttpSettings`] read the rows, and a test checks the
//! README's configuration table against them (`tests/spec_drift.rs`). A new
//! setting is one row here plus the field it fills.
//!
//! The table is plain data: no I/O, so the core may read its defaults.

/// What values a setting takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A decimal integer in `min..=max`; `rule` is the text of the error
    /// for a value outside it ("must be > 0").
    Int {
        min: i64,
        max: i64,
        rule: &'static str,
    },
    /// `true`/`false`, `1`/`0`, `yes`/`no`, `t`/`f`, any case. A bare flag
    /// means true.
    Bool,
    /// Free text: an address, a comma-separated list.
    Text,
    /// A file path.
    Path,
    /// A secret (the auth token): never echoed in errors or logs.
    Secret,
    /// One of these words (lower case).
    Choice(&'static [&'static str]),
}

/// A setting's built-in value, used when neither the flag nor the
/// environment gives one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Default {
    Int(u64),
    Bool(bool),
    /// Text or a choice word.
    Text(&'static str),
    /// No value: the feature is off (paths, the auth token), or the
    /// setting has no sensible default (a member's id and addresses in
    /// cluster mode).
    Unset,
}

/// One setting.
#[derive(Debug, PartialEq, Eq)]
pub struct Setting {
    /// The flag without its dashes, e.g. `max-locks`.
    pub flag: &'static str,
    /// The environment variable, e.g. `DFLOCKD_MAX_LOCKS`.
    pub env: &'static str,
    /// A deprecated variable still read when neither the flag nor `env` is
    /// set (with a warning).
    pub legacy_env: Option<&'static str>,
    pub kind: Kind,
    pub default: Default,
    /// How `--help` and the README describe the default when the value
    /// alone would not say it (`--host` for an empty `--http-host`).
    pub default_shown: Option<&'static str>,
    /// The value's placeholder in `--help` (`--port <port>`).
    pub arg: &'static str,
    /// One line of help: what the setting does and its range. The variable
    /// and the default are appended from the row.
    pub help: &'static str,
    /// A security setting: present but empty or blank (flag or variable)
    /// is a configuration error naming it, never "off". For every other
    /// setting an empty or blank variable counts as unset.
    pub security: bool,
}

impl Setting {
    /// `--flag`.
    pub fn dashed(&self) -> String {
        format!("--{}", self.flag)
    }

    /// The default as `--help` and the README show it.
    pub fn default_text(&self) -> String {
        if let Some(shown) = self.default_shown {
            return shown.to_owned();
        }
        match self.default {
            Default::Int(n) => n.to_string(),
            Default::Bool(b) => b.to_string(),
            Default::Text(t) => t.to_owned(),
            Default::Unset => "unset".to_owned(),
        }
    }

    /// The default of an integer setting. Panics on a row of another kind:
    /// a unit test reads every row through the accessor its field uses.
    pub const fn int_default(&self) -> u64 {
        match self.default {
            Default::Int(n) => n,
            _ => panic!("not an integer setting"),
        }
    }

    /// The default of an integer setting that counts things.
    pub const fn count_default(&self) -> usize {
        self.int_default() as usize
    }

    /// The default of a boolean setting.
    pub const fn bool_default(&self) -> bool {
        match self.default {
            Default::Bool(b) => b,
            _ => panic!("not a boolean setting"),
        }
    }

    /// The default of a text or choice setting.
    pub const fn text_default(&self) -> &'static str {
        match self.default {
            Default::Text(t) => t,
            _ => panic!("not a text setting"),
        }
    }

    /// Whether the flag takes no value when bare (`--debug` = true).
    pub fn is_bool(&self) -> bool {
        self.kind == Kind::Bool
    }
}

/// The largest accepted duration in seconds. It is the longest whole number
/// of seconds that a Go `time.Duration` (i64 nanoseconds) can hold, and
/// upstream rejects anything larger (v1.15+).
pub const MAX_DURATION_S: u64 = 9_223_372_036;

const POSITIVE: Kind = Kind::Int {
    min: 1,
    max: i64::MAX,
    rule: "must be > 0",
};
const NON_NEGATIVE: Kind = Kind::Int {
    min: 0,
    max: i64::MAX,
    rule: "must be >= 0",
};
const PORT_RANGE: Kind = Kind::Int {
    min: 0,
    max: 65_535,
    rule: "must be between 0 and 65535",
};
const POSITIVE_SECS: Kind = Kind::Int {
    min: 1,
    max: MAX_DURATION_S as i64,
    rule: "must be between 1 and 9223372036 seconds",
};
const NON_NEGATIVE_SECS: Kind = Kind::Int {
    min: 0,
    max: MAX_DURATION_S as i64,
    rule: "must be between 0 and 9223372036 seconds",
};

/// A row with the common fields filled in; the constants below override
/// what differs.
const ROW: Setting = Setting {
    flag: "",
    env: "",
    legacy_env: None,
    kind: NON_NEGATIVE,
    default: Default::Int(0),
    default_shown: None,
    arg: "n",
    help: "",
    security: false,
};

pub const HOST: Setting = Setting {
    flag: "host",
    env: "DFLOCKD_HOST",
    kind: Kind::Text,
    default: Default::Text("127.0.0.1"),
    arg: "host",
    help: "address to listen on; an IPv6 literal needs no brackets; an empty flag means every IPv4 interface",
    ..ROW
};
pub const PORT: Setting = Setting {
    flag: "port",
    env: "DFLOCKD_PORT",
    kind: PORT_RANGE,
    default: Default::Int(6388),
    arg: "port",
    help: "TCP port, 0-65535",
    ..ROW
};
pub const DEFAULT_LEASE_TTL: Setting = Setting {
    flag: "default-lease-ttl",
    env: "DFLOCKD_DEFAULT_LEASE_TTL_S",
    kind: POSITIVE_SECS,
    default: Default::Int(33),
    arg: "secs",
    help: "lease in seconds for requests that give none, > 0",
    ..ROW
};
pub const LEASE_SWEEP_INTERVAL: Setting = Setting {
    flag: "lease-sweep-interval",
    env: "DFLOCKD_LEASE_SWEEP_INTERVAL_S",
    kind: POSITIVE_SECS,
    default: Default::Int(1),
    arg: "secs",
    help: "seconds between lease sweeps, > 0; kept for compatibility, since leases expire exactly at their deadline",
    ..ROW
};
pub const GC_INTERVAL: Setting = Setting {
    flag: "gc-interval",
    env: "DFLOCKD_GC_INTERVAL_S",
    legacy_env: Some("DFLOCKD_GC_LOOP_SLEEP"),
    kind: POSITIVE_SECS,
    default: Default::Int(5),
    arg: "secs",
    help: "seconds between idle-resource collections, > 0",
    ..ROW
};
pub const GC_MAX_IDLE: Setting = Setting {
    flag: "gc-max-idle",
    env: "DFLOCKD_GC_MAX_IDLE_S",
    legacy_env: Some("DFLOCKD_GC_MAX_UNUSED_TIME"),
    kind: NON_NEGATIVE_SECS,
    default: Default::Int(60),
    arg: "secs",
    help: "seconds a resource must stay unused before it is collected, >= 0",
    ..ROW
};
pub const MAX_LOCKS: Setting = Setting {
    flag: "max-locks",
    env: "DFLOCKD_MAX_LOCKS",
    kind: POSITIVE,
    default: Default::Int(1024),
    help: "maximum number of locks and semaphores together, > 0",
    ..ROW
};
pub const MAX_CONNECTIONS: Setting = Setting {
    flag: "max-connections",
    env: "DFLOCKD_MAX_CONNECTIONS",
    help: "maximum concurrent TCP connections, 0 = unlimited",
    ..ROW
};
pub const MAX_CONNECTIONS_PER_IP: Setting = Setting {
    flag: "max-connections-per-ip",
    env: "DFLOCKD_MAX_CONNECTIONS_PER_IP",
    help: "maximum concurrent TCP connections per remote IP, 0 = unlimited",
    ..ROW
};
pub const MAX_WAITERS: Setting = Setting {
    flag: "max-waiters",
    env: "DFLOCKD_MAX_WAITERS",
    help: "maximum queued waiters per key, 0 = unlimited",
    ..ROW
};
pub const MAX_SUBSCRIPTIONS: Setting = Setting {
    flag: "max-subscriptions",
    env: "DFLOCKD_MAX_SUBSCRIPTIONS",
    help: "maximum signal subscriptions per connection, 0 = unlimited",
    ..ROW
};
pub const KEY_EVENTS: Setting = Setting {
    flag: "key-events",
    env: "DFLOCKD_KEY_EVENTS",
    kind: Kind::Int {
        min: 0,
        max: 1 << 24,
        rule: "must be between 0 and 16777216",
    },
    default: Default::Int(16_384),
    help: "recent events (grants, releases, expiries, timeouts, disconnects) kept for key views, over all keys (48 bytes each), 0 = none",
    ..ROW
};
pub const READ_TIMEOUT: Setting = Setting {
    flag: "read-timeout",
    env: "DFLOCKD_READ_TIMEOUT_S",
    kind: POSITIVE_SECS,
    default: Default::Int(23),
    arg: "secs",
    help: "seconds a started request has to arrive in full, and an idle connection that owns nothing may stay open, > 0",
    ..ROW
};
pub const WRITE_TIMEOUT: Setting = Setting {
    flag: "write-timeout",
    env: "DFLOCKD_WRITE_TIMEOUT_S",
    kind: NON_NEGATIVE_SECS,
    default: Default::Int(5),
    arg: "secs",
    help: "seconds allowed for each response write, 0 = no limit",
    ..ROW
};
pub const SHUTDOWN_TIMEOUT: Setting = Setting {
    flag: "shutdown-timeout",
    env: "DFLOCKD_SHUTDOWN_TIMEOUT_S",
    kind: NON_NEGATIVE_SECS,
    default: Default::Int(30),
    arg: "secs",
    help: "seconds to wait for connections to finish at shutdown, 0 = forever",
    ..ROW
};
pub const THREADS: Setting = Setting {
    flag: "threads",
    env: "DFLOCKD_THREADS",
    kind: Kind::Int {
        min: 0,
        max: 1024,
        rule: "must be between 0 and 1024",
    },
    default: Default::Int(0),
    help: "runtime threads serving connections, each connection on one of them, 1-1024, 0 = one per core less one",
    ..ROW
};
pub const SPIN_US: Setting = Setting {
    flag: "spin-us",
    env: "DFLOCKD_SPIN_US",
    kind: Kind::Int {
        min: 0,
        max: 10_000,
        rule: "must be between 0 and 10000",
    },
    default: Default::Int(50),
    arg: "µs",
    help: "microseconds an idle runtime thread keeps polling its sockets before it sleeps, 0-10000, 0 = sleep at once; saves a wake-up per request at low concurrency, spends CPU while requests come closer than this; off on one core and while the machine is busy",
    ..ROW
};
pub const AUTO_RELEASE_ON_DISCONNECT: Setting = Setting {
    flag: "auto-release-on-disconnect",
    env: "DFLOCKD_AUTO_RELEASE_ON_DISCONNECT",
    kind: Kind::Bool,
    default: Default::Bool(true),
    arg: "bool",
    help: "release what a connection holds when it disconnects; a bare flag means true",
    ..ROW
};
pub const TLS_CERT: Setting = Setting {
    flag: "tls-cert",
    env: "DFLOCKD_TLS_CERT",
    kind: Kind::Path,
    default: Default::Unset,
    arg: "path",
    help: "TLS certificate chain (PEM); needs --tls-key",
    security: true,
    ..ROW
};
pub const TLS_KEY: Setting = Setting {
    flag: "tls-key",
    env: "DFLOCKD_TLS_KEY",
    kind: Kind::Path,
    default: Default::Unset,
    arg: "path",
    help: "TLS private key (PEM); needs --tls-cert",
    security: true,
    ..ROW
};
pub const TLS_HANDSHAKE_TIMEOUT: Setting = Setting {
    flag: "tls-handshake-timeout",
    env: "DFLOCKD_TLS_HANDSHAKE_TIMEOUT_S",
    kind: POSITIVE_SECS,
    default: Default::Int(5),
    arg: "secs",
    help: "seconds a TLS client has to finish its handshake, on both listeners, > 0",
    ..ROW
};
pub const AUTH_TOKEN: Setting = Setting {
    flag: "auth-token",
    env: "DFLOCKD_AUTH_TOKEN",
    kind: Kind::Secret,
    default: Default::Unset,
    arg: "token",
    help:
        "shared secret that clients must send with `auth` first; wins over every other token source",
    security: true,
    ..ROW
};
pub const AUTH_TOKEN_FILE: Setting = Setting {
    flag: "auth-token-file",
    env: "DFLOCKD_AUTH_TOKEN_FILE",
    kind: Kind::Path,
    default: Default::Unset,
    arg: "path",
    help: "file holding the auth token, whitespace trimmed",
    security: true,
    ..ROW
};
pub const FENCE_STATE_FILE: Setting = Setting {
    flag: "fence-state-file",
    env: "DFLOCKD_FENCE_STATE_FILE",
    kind: Kind::Path,
    default: Default::Unset,
    arg: "path",
    help: "file that keeps fencing tokens increasing across restarts",
    security: true,
    ..ROW
};
pub const FENCE_RESERVE: Setting = Setting {
    flag: "fence-reserve",
    env: "DFLOCKD_FENCE_RESERVE",
    kind: Kind::Int {
        min: 2,
        max: 1 << 30,
        rule: "must be between 2 and 1073741824",
    },
    default: Default::Int(1 << 20),
    help: "fencing tokens reserved by each write of --fence-state-file (one fsync per half of this many grants), 2-1073741824",
    ..ROW
};
pub const HTTP_PORT: Setting = Setting {
    flag: "http-port",
    env: "DFLOCKD_HTTP_PORT",
    kind: PORT_RANGE,
    default: Default::Int(0),
    arg: "port",
    help: "HTTP API port, 0 = off; must differ from --port",
    ..ROW
};
pub const HTTP_HOST: Setting = Setting {
    flag: "http-host",
    env: "DFLOCKD_HTTP_HOST",
    kind: Kind::Text,
    default: Default::Text(""),
    default_shown: Some("--host"),
    arg: "host",
    help: "HTTP API address; empty = the --host value",
    ..ROW
};
pub const HTTP_SESSION_IDLE_TIMEOUT: Setting = Setting {
    flag: "http-session-idle-timeout",
    env: "DFLOCKD_HTTP_SESSION_IDLE_S",
    kind: NON_NEGATIVE_SECS,
    default: Default::Int(20),
    arg: "secs",
    help: "seconds an idle HTTP session survives, 0 = no idle reaping",
    ..ROW
};
pub const HTTP_MAX_SESSIONS: Setting = Setting {
    flag: "http-max-sessions",
    env: "DFLOCKD_HTTP_MAX_SESSIONS",
    help: "maximum HTTP sessions, 0 = unlimited",
    ..ROW
};
pub const HTTP_MAX_SESSIONS_PER_IP: Setting = Setting {
    flag: "http-max-sessions-per-ip",
    env: "DFLOCKD_HTTP_MAX_SESSIONS_PER_IP",
    help: "maximum HTTP sessions per remote IP, 0 = unlimited",
    ..ROW
};
pub const HTTP_MAX_CONNECTIONS_PER_IP: Setting = Setting {
    flag: "http-max-connections-per-ip",
    env: "DFLOCKD_HTTP_MAX_CONNECTIONS_PER_IP",
    help: "maximum HTTP connections per remote IP, 0 = unlimited",
    ..ROW
};
pub const HTTP_RATE_LIMIT_PER_IP: Setting = Setting {
    flag: "http-rate-limit-per-ip",
    env: "DFLOCKD_HTTP_RATE_LIMIT_PER_IP",
    help: "HTTP requests per second per remote IP, 0 = unlimited",
    ..ROW
};
pub const HTTP_RATE_LIMIT_BURST: Setting = Setting {
    flag: "http-rate-limit-burst",
    env: "DFLOCKD_HTTP_RATE_LIMIT_BURST",
    help: "HTTP rate-limit burst, 0 = the rate",
    ..ROW
};
pub const HTTP_SSE_PING_INTERVAL: Setting = Setting {
    flag: "http-sse-ping-interval",
    env: "DFLOCKD_HTTP_SSE_PING_S",
    kind: NON_NEGATIVE_SECS,
    default: Default::Int(15),
    arg: "secs",
    help: "seconds between keep-alive pings of an SSE stream's session, 0 = the open stream keeps it; must be below the session idle timeout",
    ..ROW
};
pub const HTTP_CORS_ALLOWED_ORIGINS: Setting = Setting {
    flag: "http-cors-allowed-origins",
    env: "DFLOCKD_HTTP_CORS_ALLOWED_ORIGINS",
    kind: Kind::Text,
    default: Default::Text(""),
    default_shown: Some("empty (CORS off)"),
    arg: "origins",
    help: "comma-separated allowed CORS origins, * = any",
    ..ROW
};
pub const LOG_LEVEL: Setting = Setting {
    flag: "log-level",
    env: "DFLOCKD_LOG_LEVEL",
    kind: Kind::Choice(&["error", "warn", "info", "debug", "trace"]),
    default: Default::Text("info"),
    arg: "level",
    help: "least severe log lines written: error, warn, info, debug or trace",
    ..ROW
};
pub const LOG_FORMAT: Setting = Setting {
    flag: "log-format",
    env: "DFLOCKD_LOG_FORMAT",
    kind: Kind::Choice(&["text", "json"]),
    default: Default::Text("text"),
    arg: "format",
    help: "log line format on stderr: text or json (one object per line)",
    ..ROW
};
pub const DEBUG: Setting = Setting {
    flag: "debug",
    env: "DFLOCKD_DEBUG",
    kind: Kind::Bool,
    default: Default::Bool(false),
    arg: "bool",
    help:
        "the same as --log-level debug (the more verbose of the two wins); a bare flag means true",
    ..ROW
};

// Cluster mode (spec/cluster.md §9). Every row is inert without
// `--raft-dir` (a warning says so).

pub const RAFT_DIR: Setting = Setting {
    flag: "raft-dir",
    env: "DFLOCKD_RAFT_DIR",
    kind: Kind::Path,
    default: Default::Unset,
    arg: "path",
    help: "turns cluster mode on: the directory of this member's Raft log, state and snapshots",
    security: true,
    ..ROW
};
pub const NODE_ID: Setting = Setting {
    flag: "node-id",
    env: "DFLOCKD_NODE_ID",
    kind: POSITIVE,
    default: Default::Unset,
    arg: "id",
    help: "cluster mode: this member's id in --cluster-peers, > 0",
    ..ROW
};
pub const RAFT_ADDR: Setting = Setting {
    flag: "raft-addr",
    env: "DFLOCKD_RAFT_ADDR",
    kind: Kind::Text,
    default: Default::Unset,
    arg: "host:port",
    help: "cluster mode: host:port the member transport listens on",
    ..ROW
};
pub const CLUSTER_PEERS: Setting = Setting {
    flag: "cluster-peers",
    env: "DFLOCKD_CLUSTER_PEERS",
    kind: Kind::Text,
    default: Default::Unset,
    arg: "list",
    help: "cluster mode: every member, this one included, as id=raftHost:port@clientHost:port,...",
    ..ROW
};
pub const ADVERTISE_ADDR: Setting = Setting {
    flag: "advertise-addr",
    env: "DFLOCKD_ADVERTISE_ADDR",
    kind: Kind::Text,
    default: Default::Unset,
    default_shown: Some("from --cluster-peers"),
    arg: "host:port",
    help: "cluster mode: the client address other members give out for this one, when it differs from its --cluster-peers entry",
    ..ROW
};
pub const RAFT_AUTH_TOKEN: Setting = Setting {
    flag: "raft-auth-token",
    env: "DFLOCKD_RAFT_AUTH_TOKEN",
    kind: Kind::Secret,
    default: Default::Unset,
    arg: "token",
    help: "cluster mode: shared secret of the members, at least 32 bytes; wins over the token file",
    security: true,
    ..ROW
};
pub const RAFT_AUTH_TOKEN_FILE: Setting = Setting {
    flag: "raft-auth-token-file",
    env: "DFLOCKD_RAFT_AUTH_TOKEN_FILE",
    kind: Kind::Path,
    default: Default::Unset,
    arg: "path",
    help: "cluster mode: file holding the members' token, whitespace trimmed",
    security: true,
    ..ROW
};
pub const RAFT_TLS_CERT: Setting = Setting {
    flag: "raft-tls-cert",
    env: "DFLOCKD_RAFT_TLS_CERT",
    kind: Kind::Path,
    default: Default::Unset,
    arg: "path",
    help: "cluster mode: this member's certificate chain (PEM) for mutual TLS between members; all three --raft-tls-* or none",
    security: true,
    ..ROW
};
pub const RAFT_TLS_KEY: Setting = Setting {
    flag: "raft-tls-key",
    env: "DFLOCKD_RAFT_TLS_KEY",
    kind: Kind::Path,
    default: Default::Unset,
    arg: "path",
    help: "cluster mode: this member's private key (PEM) for mutual TLS between members",
    security: true,
    ..ROW
};
pub const RAFT_TLS_CA: Setting = Setting {
    flag: "raft-tls-ca",
    env: "DFLOCKD_RAFT_TLS_CA",
    kind: Kind::Path,
    default: Default::Unset,
    arg: "path",
    help: "cluster mode: the CA (PEM) that signs every member's certificate",
    security: true,
    ..ROW
};
pub const ADMIN_TOKEN: Setting = Setting {
    flag: "admin-token",
    env: "DFLOCKD_ADMIN_TOKEN",
    kind: Kind::Secret,
    default: Default::Unset,
    arg: "token",
    help: "cluster mode: enables the membership routes, sent as the X-Dflockd-Admin header",
    security: true,
    ..ROW
};
pub const ORPHAN_TTL: Setting = Setting {
    flag: "orphan-ttl",
    env: "DFLOCKD_ORPHAN_TTL_S",
    kind: POSITIVE_SECS,
    default: Default::Int(30),
    arg: "secs",
    help: "cluster mode: seconds the holdings of a failed leader's clients are kept for them to reclaim, > 0",
    ..ROW
};

pub const JOIN: Setting = Setting {
    flag: "join",
    env: "DFLOCKD_JOIN",
    kind: Kind::Bool,
    default: Default::Bool(false),
    arg: "bool",
    help: "cluster mode: join a running cluster (this member is added with POST /v1/admin/voters) instead of bootstrapping a new one; no effect once the Raft directory holds state; a bare flag means true",
    ..ROW
};
pub const RAFT_TICK: Setting = Setting {
    flag: "raft-tick",
    env: "DFLOCKD_RAFT_TICK_MS",
    kind: Kind::Int {
        min: 1,
        max: 10_000,
        rule: "must be between 1 and 10000 milliseconds",
    },
    default: Default::Int(100),
    arg: "ms",
    help: "cluster mode: milliseconds per Raft tick; a leader is elected after 10-20 ticks without one and sends heartbeats every 2, 1-10000",
    ..ROW
};

/// Every setting, in `--help` order.
pub const SETTINGS: &[&Setting] = &[
    &HOST,
    &PORT,
    &DEFAULT_LEASE_TTL,
    &LEASE_SWEEP_INTERVAL,
    &GC_INTERVAL,
    &GC_MAX_IDLE,
    &MAX_LOCKS,
    &MAX_CONNECTIONS,
    &MAX_CONNECTIONS_PER_IP,
    &MAX_WAITERS,
    &MAX_SUBSCRIPTIONS,
    &KEY_EVENTS,
    &READ_TIMEOUT,
    &WRITE_TIMEOUT,
    &SHUTDOWN_TIMEOUT,
    &THREADS,
    &SPIN_US,
    &AUTO_RELEASE_ON_DISCONNECT,
    &TLS_CERT,
    &TLS_KEY,
    &TLS_HANDSHAKE_TIMEOUT,
    &AUTH_TOKEN,
    &AUTH_TOKEN_FILE,
    &FENCE_STATE_FILE,
    &FENCE_RESERVE,
    &HTTP_PORT,
    &HTTP_HOST,
    &HTTP_SESSION_IDLE_TIMEOUT,
    &HTTP_MAX_SESSIONS,
    &HTTP_MAX_SESSIONS_PER_IP,
    &HTTP_MAX_CONNECTIONS_PER_IP,
    &HTTP_RATE_LIMIT_PER_IP,
    &HTTP_RATE_LIMIT_BURST,
    &HTTP_SSE_PING_INTERVAL,
    &HTTP_CORS_ALLOWED_ORIGINS,
    &LOG_LEVEL,
    &LOG_FORMAT,
    &DEBUG,
    &RAFT_DIR,
    &NODE_ID,
    &RAFT_ADDR,
    &CLUSTER_PEERS,
    &ADVERTISE_ADDR,
    &RAFT_AUTH_TOKEN,
    &RAFT_AUTH_TOKEN_FILE,
    &RAFT_TLS_CERT,
    &RAFT_TLS_KEY,
    &RAFT_TLS_CA,
    &ADMIN_TOKEN,
    &ORPHAN_TTL,
    &RAFT_TICK,
    &JOIN,
];

/// The row of `--flag` (given without its dashes).
pub fn by_flag(flag: &str) -> Option<&'static Setting> {
    SETTINGS.iter().copied().find(|s| s.flag == flag)
}

/// Every environment variable read, canonical and legacy.
pub fn env_vars() -> impl Iterator<Item = &'static str> {
    SETTINGS
        .iter()
        .flat_map(|s| std::iter::once(s.env).chain(s.legacy_env))
}
