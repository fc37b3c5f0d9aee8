//! Command-line flags and `DFLOCKD_*` environment variables, resolved into
//! one validated [`Config`].
//!
//! dflockd is a drop-in replacement for the Go server, so it accepts Go
//! `flag` syntax, every flag falls back to an environment variable, and the
//! precedence is flag > env > default (Decision D4). Every setting is one
//! row of [`table`]; from it:
//!
//! 1. `args` parses the command line (Go syntax) and renders `--help`;
//! 2. `resolve` takes each setting from the flag, else the environment,
//!    else the row's default, applies the row's "present but empty" rule,
//!    validates it and fills the [`Config`];
//! 3. the defaults of `CoreConfig`, `ServerConfig` and `HttpSettings` read
//!    the rows, and `tests/spec_drift.rs` checks the README table against
//!    them.
//!
//! "Present but empty" (the README's configuration section says the same):
//! * a **security setting** (auth token, token file, TLS certificate and
//!   key, fence state file; in cluster mode `--raft-dir`, the member and
//!   admin tokens, the member token file and the `--raft-tls-*` files)
//!   given as an empty or blank flag or variable is
//!   an error naming it, never "off": a deployment that injects an
//!   undefined secret must not run open;
//! * any **other variable** that is empty or blank counts as unset (the
//!   default applies), as upstream;
//! * any **other flag** given empty is parsed like any value: an error for
//!   numbers, booleans and choices, the empty text for `--host` (every
//!   IPv4 interface), `--http-host` (the `--host` value) and
//!   `--http-cors-allowed-origins` (none).
//!
//! Unlike upstream, an environment value that does not parse is an error
//! and is never silently replaced by the default. Every [`ConfigError`]
//! names the flag or variable that supplied the bad value. The flags and the
//! environment share one parser, so `--port abc` and `DFLOCKD_PORT=abc`
//! fail in the same way.
//!
//! [`Config::from_args_and_env`] takes the environment as a function, so
//! tests never touch the process environment. Its only I/O is reading the
//! auth token file.

mod args;
mod resolve;
mod settings;
pub mod table;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use settings::{ClusterSettings, HttpSettings, ServerConfig};
pub use table::{Setting, MAX_DURATION_S, SETTINGS};

use crate::core::CoreConfig;
use crate::logging::Format as LogFormat;

/// The program name used in `--help` output.
const COMMAND: &str = "dflockd";

/// The longest usable auth token. The `auth` line is capped at 64 KiB
/// (§1.3), so a longer token could never be presented by a client.
pub const MAX_AUTH_TOKEN_BYTES: usize = 65_536;

/// How much of an auth token file is read at most. Surrounding whitespace
/// is trimmed after reading, so this is more than the token cap.
const MAX_AUTH_TOKEN_FILE_BYTES: u64 = 1 << 20;

/// What the command line asks for.
// `Run` is much larger than `Exit`, but a `Parsed` is built once per process.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Start the server with this configuration.
    Run(Config),
    /// Print `output` (to stdout, followed by a newline) and exit with
    /// `code` without starting. Used for `--help` and `--version`, both
    /// with code 0. Errors are [`ConfigError`]s instead.
    Exit { code: i32, output: String },
}

/// Where a value came from. Errors name it, so the user knows what to fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Given on the command line; holds the flag without its dashes
    /// (`port`), displayed as `--port`.
    Flag(&'static str),
    /// Taken from the environment; holds the variable, e.g. `DFLOCKD_PORT`.
    Env(&'static str),
    /// Nothing was given; the built-in default of this flag (without its
    /// dashes) applies.
    Default(&'static str),
}

impl Origin {
    fn is_default(self) -> bool {
        matches!(self, Origin::Default(_))
    }

    /// Names the source together with its flag when that was an
    /// environment variable: `DFLOCKD_HTTP_PORT (--http-port)`.
    fn with_flag(self, flag: &str) -> String {
        match self {
            Origin::Env(var) => format!("{var} (--{flag})"),
            Origin::Flag(f) | Origin::Default(f) => format!("--{f}"),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) | Origin::Default(name) => write!(f, "--{name}"),
            Origin::Env(name) => f.write_str(name),
        }
    }
}

/// Why an auth token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthTokenProblem {
    /// Nothing is left after trimming whitespace.
    Empty,
    /// A CR or LF inside the token: it could never be sent on one line.
    ContainsNewline,
    /// Longer than [`MAX_AUTH_TOKEN_BYTES`].
    TooLong,
    /// The token file is not UTF-8 text.
    NotUtf8,
    /// Shorter than the member token's minimum (cluster mode).
    TooShort,
}

impl fmt::Display for AuthTokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthTokenProblem::Empty => f.write_str("token is empty after trimming whitespace"),
            AuthTokenProblem::ContainsNewline => f.write_str("token must not contain CR or LF"),
            AuthTokenProblem::TooLong => {
                write!(f, "token is longer than {MAX_AUTH_TOKEN_BYTES} bytes")
            }
            AuthTokenProblem::NotUtf8 => f.write_str("token file is not valid UTF-8"),
            AuthTokenProblem::TooShort => write!(
                f,
                "token is shorter than {} bytes",
                crate::cluster::transport::MIN_TOKEN_BYTES
            ),
        }
    }
}

/// A configuration that cannot be used. `Display` gives the text that
/// follows `configuration error: `, and it always names the flag or
/// environment variable at fault. Secret values (auth tokens) are never
/// echoed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The command line could not be parsed: an unknown flag, a missing
    /// value, a stray argument or bad flag syntax.
    Usage(String),
    /// An environment variable's value is not valid UTF-8.
    NotUtf8 { origin: Origin },
    /// A security setting is present but empty or blank.
    EmptySecurity { origin: Origin },
    /// Not a decimal integer, or outside the 64-bit signed range.
    InvalidInteger { origin: Origin, value: String },
    /// Not one of 1/t/true/yes or 0/f/false/no (any case).
    InvalidBool { origin: Origin, value: String },
    /// Not one of the words a choice setting takes.
    InvalidChoice {
        origin: Origin,
        value: String,
        choices: &'static [&'static str],
    },
    /// An integer outside its allowed range. `rule` reads like "must be > 0".
    OutOfRange {
        origin: Origin,
        value: String,
        rule: &'static str,
    },
    /// `--http-port` is set to the same port as `--port`.
    HttpPortConflict { origin: Origin, port: u16 },
    /// Only one of `--tls-cert` and `--tls-key` is set.
    TlsIncomplete {
        given: Origin,
        missing: &'static str,
    },
    /// The SSE ping interval is not below the HTTP session idle timeout
    /// (checked only when both are > 0).
    SsePingNotBelowIdle {
        ping: Origin,
        ping_s: u64,
        idle: Origin,
        idle_s: u64,
    },
    /// An unusable auth token. `file` is set when the token came from a file.
    AuthToken {
        origin: Origin,
        file: Option<PathBuf>,
        problem: AuthTokenProblem,
    },
    /// The auth token file could not be read.
    AuthTokenFileUnreadable {
        origin: Origin,
        file: PathBuf,
        reason: String,
    },
    /// `--raft-dir` is set but a setting cluster mode needs is not.
    ClusterMissing { missing: &'static str },
    /// `--cluster-peers` does not parse, or does not name this member.
    ClusterPeers { origin: Origin, problem: String },
    /// An address setting of cluster mode is not `host:port`.
    ClusterAddr { origin: Origin, value: String },
    /// Cluster mode without member authentication.
    RaftAuthMissing,
    /// Some but not all of `--raft-tls-cert`, `--raft-tls-key`,
    /// `--raft-tls-ca`.
    RaftTlsIncomplete {
        given: Origin,
        missing: &'static str,
    },
    /// `--fence-state-file` with `--raft-dir`.
    FenceFileInCluster { origin: Origin },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Usage(msg) => f.write_str(msg),
            ConfigError::NotUtf8 { origin } => write!(f, "{origin}: value is not valid UTF-8"),
            ConfigError::EmptySecurity { origin } => write!(
                f,
                "{origin}: is set but empty; a security setting must have a value or be left \
                 unset (an empty one never turns the feature off)"
            ),
            ConfigError::InvalidInteger { origin, value } => {
                write!(f, "{origin}: invalid integer {value:?}")
            }
            ConfigError::InvalidBool { origin, value } => write!(
                f,
                "{origin}: invalid boolean {value:?} (use true/false, 1/0 or yes/no)"
            ),
            ConfigError::InvalidChoice {
                origin,
                value,
                choices,
            } => write!(f, "{origin}: {value:?} is not one of {}", choices.join(", ")),
            ConfigError::OutOfRange {
                origin,
                value,
                rule,
            } => write!(f, "{origin}: {rule}, got {value}"),
            ConfigError::HttpPortConflict { origin, port } => {
                write!(f, "{origin}: must differ from --port (both are {port})")
            }
            ConfigError::TlsIncomplete { given, missing } => write!(
                f,
                "{given} is set but {missing} is not: TLS needs both a certificate and a key, or neither"
            ),
            ConfigError::SsePingNotBelowIdle {
                ping,
                ping_s,
                idle,
                idle_s,
            } => write!(
                f,
                "{ping}: must be less than {idle} when both are > 0 ({ping_s} >= {idle_s})"
            ),
            ConfigError::AuthToken {
                origin,
                file: None,
                problem,
            } => write!(f, "{origin}: {problem}"),
            ConfigError::AuthToken {
                origin,
                file: Some(file),
                problem,
            } => write!(f, "{origin}: {}: {problem}", file.display()),
            ConfigError::AuthTokenFileUnreadable {
                origin,
                file,
                reason,
            } => write!(f, "{origin}: cannot read {}: {reason}", file.display()),
            ConfigError::ClusterMissing { missing } => write!(
                f,
                "--raft-dir is set but {missing} is not: cluster mode needs it"
            ),
            ConfigError::ClusterPeers { origin, problem } => write!(f, "{origin}: {problem}"),
            ConfigError::ClusterAddr { origin, value } => write!(
                f,
                "{origin}: {value:?} is not host:port with a port 1-65535"
            ),
            ConfigError::RaftAuthMissing => f.write_str(
                "--raft-dir is set but the members are not authenticated: set \
                 --raft-auth-token (or --raft-auth-token-file), or --raft-tls-cert, \
                 --raft-tls-key and --raft-tls-ca, or both",
            ),
            ConfigError::RaftTlsIncomplete { given, missing } => write!(
                f,
                "{given} is set but {missing} is not: mutual TLS between members needs \
                 --raft-tls-cert, --raft-tls-key and --raft-tls-ca, or none of them"
            ),
            ConfigError::FenceFileInCluster { origin } => write!(
                f,
                "{origin}: cannot be used with --raft-dir: in cluster mode the fence counter \
                 is part of the replicated state"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// TLS certificate and key paths. The type holds both or neither, which is
/// the rule upstream enforces at startup (v1.10.1+). The files themselves
/// are read and checked by [`crate::net::tls::load`] when `main` starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The member TLS files (`--raft-tls-*`): all three or none. Loaded by
/// [`crate::cluster::transport::load_member_tls`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Cluster mode's settings (spec/cluster.md §9), present when `--raft-dir`
/// is set, validated together.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub raft_dir: PathBuf,
    pub node_id: u64,
    /// Where the member transport listens.
    pub raft_addr: String,
    /// Every member, this one included, sorted by id.
    pub peers: Vec<crate::cluster::Peer>,
    /// This member's client address as given out to clients, when it
    /// differs from its `--cluster-peers` entry.
    pub advertise_addr: Option<String>,
    /// At least 32 bytes. Hidden from `Debug`.
    pub raft_auth_token: Option<String>,
    pub raft_tls: Option<RaftTlsConfig>,
    /// Hidden from `Debug`.
    pub admin_token: Option<String>,
    /// `--join`: start empty and learn the cluster from its leader (this
    /// member is added with `POST /v1/admin/voters`) instead of
    /// bootstrapping a new cluster with every member of `--cluster-peers`.
    pub join: bool,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |t: &Option<String>| t.as_ref().map(|_| "<redacted>");
        f.debug_struct("ClusterConfig")
            .field("raft_dir", &self.raft_dir)
            .field("node_id", &self.node_id)
            .field("raft_addr", &self.raft_addr)
            .field("peers", &self.peers)
            .field("advertise_addr", &self.advertise_addr)
            .field("raft_auth_token", &hidden(&self.raft_auth_token))
            .field("raft_tls", &self.raft_tls)
            .field("admin_token", &hidden(&self.admin_token))
            .field("join", &self.join)
            .finish()
    }
}

/// Options of the HTTP REST + SSE API (§7), all used by the HTTP front
/// (`src/http`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// 0 = HTTP API off.
    pub port: u16,
    /// Already resolved: `--http-host`, or `--host` when that is empty.
    pub host: String,
    /// What the HTTP front runs with: `listen` is `host:port`, the rate
    /// limit burst is resolved (`--http-rate-limit-burst`, or the rate when
    /// that is 0), CORS origins are split on commas, trimmed, blanks
    /// dropped.
    pub settings: HttpSettings,
}

/// One setting's effective value, for the start-up log line. Secrets are
/// already masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub setting: &'static Setting,
    /// The value as given (or the default), `<set>` for a secret.
    pub value: String,
    pub origin: Origin,
}

/// A validated configuration. Fields carry their unit in the name; counts of
/// 0 mean "unlimited" where the flag documents it.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Listen address as given. It may be an IPv6 literal without brackets
    /// or empty (all interfaces); use [`Config::listen_addr`] to bind.
    pub host: String,
    pub port: u16,
    pub default_lease_ttl_s: u64,
    /// Accepted for compatibility. Leases expire at their deadline whatever
    /// this says (Decision D19).
    pub lease_sweep_interval_s: u64,
    pub gc_interval_s: u64,
    pub gc_max_idle_s: u64,
    pub max_locks: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Runtime threads (`--threads`); 0 = chosen from the core count.
    pub threads: usize,
    /// Microseconds an idle runtime thread polls before it sleeps (`--spin-us`).
    pub spin_us: u64,
    pub max_waiters: usize,
    pub max_subscriptions: usize,
    /// Recent events kept for key views (`--key-events`); 0 = none.
    pub key_events: usize,
    pub read_timeout_s: u64,
    /// 0 = writes have no deadline.
    pub write_timeout_s: u64,
    /// 0 = wait forever for connections to finish.
    pub shutdown_timeout_s: u64,
    pub auto_release_on_disconnect: bool,
    pub tls: Option<TlsConfig>,
    pub tls_handshake_timeout_s: u64,
    /// Trimmed, non-empty, without CR/LF. Hidden from `Debug` output.
    pub auth_token: Option<String>,
    pub fence_state_file: Option<PathBuf>,
    /// Fences reserved by each write of the fence state file.
    pub fence_reserve: u64,
    pub http: HttpConfig,
    /// The effective level: the more verbose of `--log-level` and
    /// `--debug` (= debug).
    pub log_level: log::LevelFilter,
    pub log_format: LogFormat,
    /// `--debug` as given; already folded into `log_level`.
    pub debug: bool,
    /// Cluster mode, when `--raft-dir` is set.
    pub cluster: Option<ClusterConfig>,
    /// Seconds an orphaned session is kept (cluster mode, §5).
    pub orphan_ttl_s: u64,
    /// Milliseconds per Raft tick (cluster mode, §2.5).
    pub raft_tick_ms: u64,
    /// Every setting's value and where it came from, in table order.
    pub effective: Vec<Effective>,
    /// Things the operator should hear about but that do not stop startup
    /// (legacy variable names, inert HTTP options). `main` logs them.
    pub warnings: Vec<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand so that the auth token never reaches a log.
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("default_lease_ttl_s", &self.default_lease_ttl_s)
            .field("lease_sweep_interval_s", &self.lease_sweep_interval_s)
            .field("gc_interval_s", &self.gc_interval_s)
            .field("gc_max_idle_s", &self.gc_max_idle_s)
            .field("max_locks", &self.max_locks)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("threads", &self.threads)
            .field("spin_us", &self.spin_us)
            .field("max_waiters", &self.max_waiters)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("key_events", &self.key_events)
            .field("read_timeout_s", &self.read_timeout_s)
            .field("write_timeout_s", &self.write_timeout_s)
            .field("shutdown_timeout_s", &self.shutdown_timeout_s)
            .field(
                "auto_release_on_disconnect",
                &self.auto_release_on_disconnect,
            )
            .field("tls", &self.tls)
            .field("tls_handshake_timeout_s", &self.tls_handshake_timeout_s)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("fence_state_file", &self.fence_state_file)
            .field("fence_reserve", &self.fence_reserve)
            .field("http", &self.http)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("debug", &self.debug)
            .field("cluster", &self.cluster)
            .field("orphan_ttl_s", &self.orphan_ttl_s)
            .field("raft_tick_ms", &self.raft_tick_ms)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Resolves the configuration of this process: `std::env::args` (the
    /// program name skipped) and the real environment.
    pub fn from_process() -> Result<Parsed, ConfigError> {
        let mut args = Vec::new();
        for arg in std::env::args_os().skip(1) {
            match arg.into_string() {
                Ok(arg) => args.push(arg),
                Err(bad) => {
                    return Err(ConfigError::Usage(format!(
                        "argument {bad:?} is not valid UTF-8"
                    )))
                }
            }
        }
        // A non-UTF-8 value cannot be passed through the string-based
        // lookup; refuse it rather than mangle a path.
        for var in table::env_vars() {
            if let Some(value) = std::env::var_os(var) {
                if value.to_str().is_none() {
                    return Err(ConfigError::NotUtf8 {
                        origin: Origin::Env(var),
                    });
                }
            }
        }
        let env = |name: &str| std::env::var(name).ok();
        Config::from_args_and_env(&args, &env)
    }

    /// Resolves a configuration from command-line `args` (without the
    /// program name) and an environment lookup. The only side effect is
    /// reading the auth token file, if one is named.
    pub fn from_args_and_env(
        args: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Parsed, ConfigError> {
        match args::parse(args)? {
            args::Args::Help => Ok(Parsed::Exit {
                code: 0,
                output: args::help(),
            }),
            args::Args::Version => Ok(Parsed::Exit {
                code: 0,
                output: version_text(),
            }),
            args::Args::Run(flags) => resolve::resolve(flags, env).map(Parsed::Run),
        }
    }

    /// The address to bind the TCP listener to. IPv6 literals get brackets
    /// (`[::1]:6388`). An empty host means every IPv4 interface; give
    /// `--host ::` to listen on IPv6 as well.
    pub fn listen_addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }

    /// The address for the HTTP listener, or `None` when HTTP is off.
    pub fn http_listen_addr(&self) -> Option<String> {
        self.http_settings().map(|s| s.listen)
    }

    /// The HTTP front's settings, or `None` when `--http-port` is 0.
    pub fn http_settings(&self) -> Option<HttpSettings> {
        (self.http.port != 0).then(|| self.http.settings.clone())
    }

    /// The core's configuration. The fence values come from the fence
    /// policy (`engine::fence`) and the salt key from the OS RNG, so
    /// the caller supplies them.
    pub fn core_config(
        &self,
        fence_start: u64,
        fence_ceiling: u64,
        salt_key: [u64; 2],
    ) -> CoreConfig {
        CoreConfig {
            default_lease_s: self.default_lease_ttl_s,
            max_locks: self.max_locks,
            max_waiters: self.max_waiters,
            auto_release_on_disconnect: self.auto_release_on_disconnect,
            gc_interval_s: self.gc_interval_s,
            gc_max_idle_s: self.gc_max_idle_s,
            auth_token: self.auth_token.as_ref().map(|t| t.as_bytes().to_vec()),
            fence_start,
            fence_ceiling,
            salt_key,
            max_subscriptions: self.max_subscriptions,
            auth_failure_pause_ms: crate::core::AUTH_FAILURE_PAUSE_MS,
            key_events: self.key_events,
        }
    }

    /// The server's configuration, around `core` (see
    /// [`Config::core_config`]) and the loaded TLS configuration, if any.
    pub fn server_config(
        &self,
        core: CoreConfig,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    ) -> ServerConfig {
        ServerConfig {
            listen: self.listen_addr(),
            core,
            read_timeout_s: self.read_timeout_s,
            write_timeout_s: self.write_timeout_s,
            shutdown_timeout_s: self.shutdown_timeout_s,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            threads: self.threads,
            spin: std::time::Duration::from_micros(self.spin_us),
            fence_state_file: self.fence_state_file.clone(),
            fence_reserve: self.fence_reserve,
            tls,
            tls_handshake_timeout_s: self.tls_handshake_timeout_s,
            http: self.http_settings(),
            cluster: self
                .cluster
                .clone()
                .map(|member| settings::ClusterSettings {
                    member,
                    orphan_ttl_ms: self.orphan_ttl_s.saturating_mul(1000),
                    tick_ms: self.raft_tick_ms,
                }),
            ..ServerConfig::default()
        }
    }

    /// Returns a message if the configuration asks for something this build
    /// cannot do; `main` must refuse to start with it. HTTP options other
    /// than the port do nothing while the port is 0 (as upstream), so they
    /// only produce a warning in [`Config::warnings`].
    ///
    /// Nothing is refused in this build (cluster mode runs since the
    /// engine's door logs its inputs); kept so that `main` has one place
    /// to refuse a combination a build cannot serve.
    pub fn unsupported(&self) -> Option<String> {
        None
    }

    /// The listeners that accept connections from other machines while no
    /// auth token is set: anyone who can reach them can take and release
    /// every lock. `main` warns about each at start-up.
    pub fn exposed_without_auth(&self) -> Vec<String> {
        if self.auth_token.is_some() {
            return Vec::new();
        }
        let mut exposed = Vec::new();
        if !is_loopback_host(&self.host) {
            exposed.push(self.listen_addr());
        }
        if self.http.port != 0 && !is_loopback_host(&self.http.host) {
            exposed.push(self.http.settings.listen.clone());
        }
        exposed
    }
}

/// Whether `host` names only the loopback interface: `localhost`, or an
/// IPv4/IPv6 loopback literal. Anything else (an empty host, a wildcard, a
/// name that resolves elsewhere) may be reachable from the network.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn version_text() -> String {
    format!("{COMMAND} {}", env!("CARGO_PKG_VERSION"))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.is_empty() {
        format!("0.0.0.0:{port}")
    } else if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Booleans: upstream's environment words (1/yes/true, 0/no/false) plus
/// Go's `strconv.ParseBool` letters (t/f) for flags, any case.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" => Some(true),
        "0" | "f" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// Validates an auth token after trimming it.
fn check_token(raw: &str, origin: Origin, file: Option<&Path>) -> Result<String, ConfigError> {
    let token = raw.trim();
    let problem = if token.is_empty() {
        Some(AuthTokenProblem::Empty)
    } else if token.contains(['\r', '\n']) {
        Some(AuthTokenProblem::ContainsNewline)
    } else if token.len() > MAX_AUTH_TOKEN_BYTES {
        Some(AuthTokenProblem::TooLong)
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfigError::AuthToken {
            origin,
            file: file.map(Path::to_path_buf),
            problem,
        }),
        None => Ok(token.to_owned()),
    }
}

/// Reads and validates an auth token file.
fn read_token_file(file: &Path, origin: Origin) -> Result<String, ConfigError> {
    let unreadable = |reason: String| ConfigError::AuthTokenFileUnreadable {
        origin,
        file: file.to_path_buf(),
        reason,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| {
            f.take(MAX_AUTH_TOKEN_FILE_BYTES + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| unreadable(e.to_string()))?;
    let token_error = |problem| ConfigError::AuthToken {
        origin,
        file: Some(file.to_path_buf()),
        problem,
    };
    if bytes.len() as u64 > MAX_AUTH_TOKEN_FILE_BYTES {
        return Err(token_error(AuthTokenProblem::TooLong));
    }
    let text = String::from_utf8(bytes).map_err(|_| token_error(AuthTokenProblem::NotUtf8))?;
    check_token(&text, origin, Some(file))
}
