//! Command-line flags and `DFLOCKD_*` environment variables, resolved into
//! one validated [`Config`].
//!
//! This is more than an argh struct because dflockd is a drop-in replacement
//! for the Go server. It must accept Go `flag` syntax (`-port 1`,
//! `--port=1`, a bare `--debug`, `--debug=false`), every flag falls back to
//! an environment variable, and the precedence is flag > env > default
//! (Decision D4). argh understands only `--flag value` and knows nothing of
//! the environment, so resolution runs in three steps:
//!
//! 1. `rewrite_args` turns Go syntax into argh's `--flag value` form. It
//!    also gives bare booleans the value `true`, and keeps only the last copy
//!    of a repeated flag (Go's rule).
//! 2. argh recognises the flags, rejects unknown ones and renders `--help`.
//!    Every value arrives as `Option<String>`: `None` means "not on the
//!    command line", so the environment may supply it.
//! 3. `Resolver` takes each setting from the flag, else the environment
//!    (an empty variable counts as unset), else the default, and validates it.
//!
//! Unlike upstream, an environment value that does not parse is an error and
//! is never silently replaced by the default. Every [`ConfigError`] names the
//! flag or variable that supplied the bad value. The flags and the
//! environment share one parser, so `--port abc` and `DFLOCKD_PORT=abc`
//! fail in the same way.
//!
//! [`Config::from_args_and_env`] takes the environment as a function, so
//! tests never touch the process environment. Its only I/O is reading the
//! auth token file. `main` is expected to do this:
//!
//! ```ignore
//! let cfg = match Config::from_process() {
//!     Ok(Parsed::Run(cfg)) => cfg,
//!     Ok(Parsed::Exit { code, output }) => { println!("{output}"); std::process::exit(code) }
//!     Err(e) => { eprintln!("configuration error: {e}"); std::process::exit(1) }
//! };
//! for w in &cfg.warnings { eprintln!("warning: {w}"); }
//! if let Some(msg) = cfg.unsupported() { eprintln!("configuration error: {msg}"); std::process::exit(1) }
//! ```

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use argh::FromArgs;

use crate::core::CoreConfig;
use crate::http::HttpSettings;

/// The program name used in `--help` output.
const COMMAND: &str = "dflockd";

/// The largest accepted duration in seconds. It is the longest whole number
/// of seconds that a Go `time.Duration` (i64 nanoseconds) can hold, and
/// upstream rejects anything larger (v1.15+).
pub const MAX_DURATION_S: u64 = 9_223_372_036;

/// The longest usable auth token. The `auth` line is capped at 64 KiB
/// (§1.3), so a longer token could never be presented by a client.
pub const MAX_AUTH_TOKEN_BYTES: usize = 65_536;

/// How much of an auth token file is read at most. Surrounding whitespace
/// is trimmed after reading, so this is more than the token cap.
const MAX_AUTH_TOKEN_FILE_BYTES: u64 = 1 << 20;

/// dflockd: a lock server with strict FIFO ordering, leases, counting
/// semaphores and fencing tokens. Every flag falls back to its DFLOCKD_*
/// environment variable, and a flag given on the command line wins.
/// Durations are whole seconds. Go syntax works too: -flag, --flag=value,
/// a bare boolean flag (= true) and --flag=false. `dflockd conformance
/// --help` describes the conformance runner.
#[derive(FromArgs, Debug)]
#[argh(help_triggers("--help"))]
struct Flags {
    /// address to listen on; an IPv6 literal needs no brackets (env DFLOCKD_HOST, default 127.0.0.1)
    #[argh(option)]
    host: Option<String>,
    /// TCP port, 0-65535 (env DFLOCKD_PORT, default 6388)
    #[argh(option)]
    port: Option<String>,
    /// lease in seconds for requests that give none, > 0 (env DFLOCKD_DEFAULT_LEASE_TTL_S, default 33)
    #[argh(option, arg_name = "secs")]
    default_lease_ttl: Option<String>,
    /// seconds between lease sweeps, > 0; kept for compatibility, since leases expire exactly at their deadline (env DFLOCKD_LEASE_SWEEP_INTERVAL_S, default 1)
    #[argh(option, arg_name = "secs")]
    lease_sweep_interval: Option<String>,
    /// seconds between idle-resource collections, > 0 (env DFLOCKD_GC_INTERVAL_S, legacy DFLOCKD_GC_LOOP_SLEEP, default 5)
    #[argh(option, arg_name = "secs")]
    gc_interval: Option<String>,
    /// seconds a resource must stay unused before it is collected, >= 0 (env DFLOCKD_GC_MAX_IDLE_S, legacy DFLOCKD_GC_MAX_UNUSED_TIME, default 60)
    #[argh(option, arg_name = "secs")]
    gc_max_idle: Option<String>,
    /// maximum number of locks and semaphores together, > 0 (env DFLOCKD_MAX_LOCKS, default 1024)
    #[argh(option, arg_name = "n")]
    max_locks: Option<String>,
    /// maximum concurrent TCP connections, 0 = unlimited (env DFLOCKD_MAX_CONNECTIONS, default 0)
    #[argh(option, arg_name = "n")]
    max_connections: Option<String>,
    /// maximum concurrent TCP connections per remote IP, 0 = unlimited (env DFLOCKD_MAX_CONNECTIONS_PER_IP, default 0)
    #[argh(option, arg_name = "n")]
    max_connections_per_ip: Option<String>,
    /// maximum queued waiters per key, 0 = unlimited (env DFLOCKD_MAX_WAITERS, default 0)
    #[argh(option, arg_name = "n")]
    max_waiters: Option<String>,
    /// maximum signal subscriptions per connection, 0 = unlimited (env DFLOCKD_MAX_SUBSCRIPTIONS, default 0)
    #[argh(option, arg_name = "n")]
    max_subscriptions: Option<String>,
    /// seconds allowed for each request line, > 0 (env DFLOCKD_READ_TIMEOUT_S, default 23)
    #[argh(option, arg_name = "secs")]
    read_timeout: Option<String>,
    /// seconds allowed for each response write, 0 = no limit (env DFLOCKD_WRITE_TIMEOUT_S, default 5)
    #[argh(option, arg_name = "secs")]
    write_timeout: Option<String>,
    /// seconds to wait for connections to finish at shutdown, 0 = forever (env DFLOCKD_SHUTDOWN_TIMEOUT_S, default 30)
    #[argh(option, arg_name = "secs")]
    shutdown_timeout: Option<String>,
    /// release what a connection holds when it disconnects; a bare flag means true (env DFLOCKD_AUTO_RELEASE_ON_DISCONNECT, default true)
    #[argh(option, arg_name = "bool")]
    auto_release_on_disconnect: Option<String>,
    /// TLS certificate (PEM); needs --tls-key (env DFLOCKD_TLS_CERT, default unset)
    #[argh(option, arg_name = "path")]
    tls_cert: Option<String>,
    /// TLS private key (PEM); needs --tls-cert (env DFLOCKD_TLS_KEY, default unset)
    #[argh(option, arg_name = "path")]
    tls_key: Option<String>,
    /// shared secret that clients must send with `auth` first; wins over every other token source (env DFLOCKD_AUTH_TOKEN, default unset)
    #[argh(option, arg_name = "token")]
    auth_token: Option<String>,
    /// file holding the auth token, whitespace trimmed (env DFLOCKD_AUTH_TOKEN_FILE, default unset)
    #[argh(option, arg_name = "path")]
    auth_token_file: Option<String>,
    /// file that keeps fencing tokens increasing across restarts (env DFLOCKD_FENCE_STATE_FILE, default unset)
    #[argh(option, arg_name = "path")]
    fence_state_file: Option<String>,
    /// HTTP API port, 0 = off; must differ from --port (env DFLOCKD_HTTP_PORT, default 0)
    #[argh(option, arg_name = "port")]
    http_port: Option<String>,
    /// HTTP API address, empty = the --host value (env DFLOCKD_HTTP_HOST, default empty)
    #[argh(option, arg_name = "host")]
    http_host: Option<String>,
    /// seconds an idle HTTP session survives, 0 = no idle reaping (env DFLOCKD_HTTP_SESSION_IDLE_S, default 20)
    #[argh(option, arg_name = "secs")]
    http_session_idle_timeout: Option<String>,
    /// maximum HTTP sessions, 0 = unlimited (env DFLOCKD_HTTP_MAX_SESSIONS, default 0)
    #[argh(option, arg_name = "n")]
    http_max_sessions: Option<String>,
    /// maximum HTTP sessions per remote IP, 0 = unlimited (env DFLOCKD_HTTP_MAX_SESSIONS_PER_IP, default 0)
    #[argh(option, arg_name = "n")]
    http_max_sessions_per_ip: Option<String>,
    /// maximum HTTP connections per remote IP, 0 = unlimited (env DFLOCKD_HTTP_MAX_CONNECTIONS_PER_IP, default 0)
    #[argh(option, arg_name = "n")]
    http_max_connections_per_ip: Option<String>,
    /// HTTP requests per second per remote IP, 0 = unlimited (env DFLOCKD_HTTP_RATE_LIMIT_PER_IP, default 0)
    #[argh(option, arg_name = "n")]
    http_rate_limit_per_ip: Option<String>,
    /// HTTP rate-limit burst, 0 = the rate (env DFLOCKD_HTTP_RATE_LIMIT_BURST, default 0)
    #[argh(option, arg_name = "n")]
    http_rate_limit_burst: Option<String>,
    /// seconds between keep-alive pings of an SSE stream's session, 0 = the open stream keeps it; must be below the session idle timeout (env DFLOCKD_HTTP_SSE_PING_S, default 15)
    #[argh(option, arg_name = "secs")]
    http_sse_ping_interval: Option<String>,
    /// comma-separated allowed CORS origins, * = any (env DFLOCKD_HTTP_CORS_ALLOWED_ORIGINS, default none)
    #[argh(option, arg_name = "origins")]
    http_cors_allowed_origins: Option<String>,
    /// log debug messages; a bare flag means true (env DFLOCKD_DEBUG, default false)
    #[argh(option, arg_name = "bool")]
    debug: Option<String>,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

/// Flags that take a value (without the leading dashes). [`rewrite_args`]
/// must know them so that it never mistakes a value for a flag.
const VALUE_FLAGS: &[&str] = &[
    "host",
    "port",
    "default-lease-ttl",
    "lease-sweep-interval",
    "gc-interval",
    "gc-max-idle",
    "max-locks",
    "max-connections",
    "max-connections-per-ip",
    "max-waiters",
    "max-subscriptions",
    "read-timeout",
    "write-timeout",
    "shutdown-timeout",
    "tls-cert",
    "tls-key",
    "auth-token",
    "auth-token-file",
    "fence-state-file",
    "http-port",
    "http-host",
    "http-session-idle-timeout",
    "http-max-sessions",
    "http-max-sessions-per-ip",
    "http-max-connections-per-ip",
    "http-rate-limit-per-ip",
    "http-rate-limit-burst",
    "http-sse-ping-interval",
    "http-cors-allowed-origins",
];

/// Boolean flags. They may be bare (`--debug` = true) or take a value
/// (`--debug=false`, `--debug false`).
const BOOL_FLAGS: &[&str] = &["auto-release-on-disconnect", "debug"];

/// Every environment variable read, canonical and legacy. [`Config::from_process`]
/// checks them for non-UTF-8 values before resolving.
const ENV_VARS: &[&str] = &[
    "DFLOCKD_HOST",
    "DFLOCKD_PORT",
    "DFLOCKD_DEFAULT_LEASE_TTL_S",
    "DFLOCKD_LEASE_SWEEP_INTERVAL_S",
    "DFLOCKD_GC_INTERVAL_S",
    "DFLOCKD_GC_LOOP_SLEEP",
    "DFLOCKD_GC_MAX_IDLE_S",
    "DFLOCKD_GC_MAX_UNUSED_TIME",
    "DFLOCKD_MAX_LOCKS",
    "DFLOCKD_MAX_CONNECTIONS",
    "DFLOCKD_MAX_CONNECTIONS_PER_IP",
    "DFLOCKD_MAX_WAITERS",
    "DFLOCKD_MAX_SUBSCRIPTIONS",
    "DFLOCKD_READ_TIMEOUT_S",
    "DFLOCKD_WRITE_TIMEOUT_S",
    "DFLOCKD_SHUTDOWN_TIMEOUT_S",
    "DFLOCKD_AUTO_RELEASE_ON_DISCONNECT",
    "DFLOCKD_TLS_CERT",
    "DFLOCKD_TLS_KEY",
    "DFLOCKD_AUTH_TOKEN",
    "DFLOCKD_AUTH_TOKEN_FILE",
    "DFLOCKD_FENCE_STATE_FILE",
    "DFLOCKD_HTTP_PORT",
    "DFLOCKD_HTTP_HOST",
    "DFLOCKD_HTTP_SESSION_IDLE_S",
    "DFLOCKD_HTTP_MAX_SESSIONS",
    "DFLOCKD_HTTP_MAX_SESSIONS_PER_IP",
    "DFLOCKD_HTTP_MAX_CONNECTIONS_PER_IP",
    "DFLOCKD_HTTP_RATE_LIMIT_PER_IP",
    "DFLOCKD_HTTP_RATE_LIMIT_BURST",
    "DFLOCKD_HTTP_SSE_PING_S",
    "DFLOCKD_HTTP_CORS_ALLOWED_ORIGINS",
    "DFLOCKD_DEBUG",
];

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
    /// Given on the command line; holds the flag, e.g. `--port`.
    Flag(&'static str),
    /// Taken from the environment; holds the variable, e.g. `DFLOCKD_PORT`.
    Env(&'static str),
    /// Nothing was given; the built-in default of this flag applies.
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
            Origin::Env(var) => format!("{var} ({flag})"),
            Origin::Flag(f) | Origin::Default(f) => f.to_owned(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) | Origin::Env(name) | Origin::Default(name) => f.write_str(name),
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
    /// value, a stray argument or bad flag syntax. Holds argh's message or ours.
    Usage(String),
    /// An environment variable's value is not valid UTF-8.
    NotUtf8 { origin: Origin },
    /// Not a decimal integer, or outside the 64-bit signed range.
    InvalidInteger { origin: Origin, value: String },
    /// Not one of 1/t/true/yes or 0/f/false/no (any case).
    InvalidBool { origin: Origin, value: String },
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
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Usage(msg) => f.write_str(msg),
            ConfigError::NotUtf8 { origin } => write!(f, "{origin}: value is not valid UTF-8"),
            ConfigError::InvalidInteger { origin, value } => {
                write!(f, "{origin}: invalid integer {value:?}")
            }
            ConfigError::InvalidBool { origin, value } => write!(
                f,
                "{origin}: invalid boolean {value:?} (use true/false, 1/0 or yes/no)"
            ),
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
        }
    }
}

impl std::error::Error for ConfigError {}

/// TLS certificate and key paths. The type holds both or neither, which is
/// the rule upstream enforces at startup (v1.10.1+). The files themselves
/// are read and checked by [`crate::server::tls::load`] when `main` starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
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
    pub max_waiters: usize,
    pub max_subscriptions: usize,
    pub read_timeout_s: u64,
    /// 0 = writes have no deadline.
    pub write_timeout_s: u64,
    /// 0 = wait forever for connections to finish.
    pub shutdown_timeout_s: u64,
    pub auto_release_on_disconnect: bool,
    pub tls: Option<TlsConfig>,
    /// Trimmed, non-empty, without CR/LF. Hidden from `Debug` output.
    pub auth_token: Option<String>,
    pub fence_state_file: Option<PathBuf>,
    pub http: HttpConfig,
    pub debug: bool,
    /// Things the operator should hear about but that do not stop startup
    /// (legacy variable names, inert HTTP options). `main` prints them.
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
            .field("max_waiters", &self.max_waiters)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("read_timeout_s", &self.read_timeout_s)
            .field("write_timeout_s", &self.write_timeout_s)
            .field("shutdown_timeout_s", &self.shutdown_timeout_s)
            .field(
                "auto_release_on_disconnect",
                &self.auto_release_on_disconnect,
            )
            .field("tls", &self.tls)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("fence_state_file", &self.fence_state_file)
            .field("http", &self.http)
            .field("debug", &self.debug)
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
        for &var in ENV_VARS {
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
    /// program name) and an environment lookup. An empty environment value
    /// counts as unset. The only side effect is reading the auth token file,
    /// if one is named.
    pub fn from_args_and_env(
        args: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Parsed, ConfigError> {
        let argv = match rewrite_args(args)? {
            Rewritten::Help => {
                return Ok(Parsed::Exit {
                    code: 0,
                    output: help_text(),
                })
            }
            Rewritten::Args(argv) => argv,
        };
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let flags = match Flags::from_args(&[COMMAND], &argv) {
            Ok(flags) => flags,
            Err(exit) => {
                return match exit.status {
                    Ok(()) => Ok(Parsed::Exit {
                        code: 0,
                        output: exit.output.trim_end().to_owned(),
                    }),
                    Err(()) => Err(ConfigError::Usage(exit.output.trim().to_owned())),
                }
            }
        };
        if flags.version {
            return Ok(Parsed::Exit {
                code: 0,
                output: version_text(),
            });
        }
        resolve(&flags, env).map(Parsed::Run)
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
    /// policy (`server::fence_file`) and the salt key from the OS RNG, so
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
        }
    }

    /// Returns a message if the configuration asks for something this build
    /// cannot do; `main` must refuse to start with it. Nothing is refused
    /// at present (the HTTP API serves TLS like the TCP port). HTTP options
    /// other than the port do nothing while the port is 0 (as upstream), so
    /// they only produce a warning in [`Config::warnings`].
    pub fn unsupported(&self) -> Option<String> {
        None
    }
}

fn version_text() -> String {
    format!("{COMMAND} {}", env!("CARGO_PKG_VERSION"))
}

/// The `--help` text, as argh renders it.
fn help_text() -> String {
    match Flags::from_args(&[COMMAND], &["--help"]) {
        Err(exit) => exit.output.trim_end().to_owned(),
        Ok(_) => String::new(),
    }
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

/// The outcome of [`rewrite_args`].
#[derive(Debug, PartialEq, Eq)]
enum Rewritten {
    /// `-h`, `-help` or `--help` appeared before any error: show help.
    Help,
    /// argv in argh's `--flag value` form.
    Args(Vec<String>),
}

/// Rewrites Go `flag` syntax into argh's form:
///
/// * `-flag` and `--flag` are the same flag; `---flag` is bad syntax.
/// * `--flag=value` becomes `--flag value`; a value may start with `-`.
/// * A boolean flag takes the value after `=`. Otherwise it takes the next
///   argument if that is a boolean word (`--debug false`); if not, it is
///   true (`--debug`).
/// * `--version` is a boolean too (`--version=false` turns it off).
/// * If a flag is repeated, the last one wins.
/// * `-h`, `-help` or `--help` stops here and asks for help.
/// * An unknown flag is an error, as in Go.
/// * Positional arguments are errors: dflockd takes none. Go would stop
///   parsing there and ignore the rest, which hides typos.
fn rewrite_args(args: &[String]) -> Result<Rewritten, ConfigError> {
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    let mut version = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            if let Some(extra) = args.get(i) {
                return Err(unexpected_argument(extra));
            }
            break;
        }
        let body = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            // A lone `-` is an argument in Go, not a flag.
            Some(body) if arg != "-" => body,
            _ => return Err(unexpected_argument(arg)),
        };
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ConfigError::Usage(format!("bad flag syntax: {arg:?}")));
        }
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            return Ok(Rewritten::Help);
        }
        let is_bool = BOOL_FLAGS.contains(&name) || name == "version";
        let value = if is_bool {
            let value = match inline {
                Some(value) => value,
                None => match args.get(i) {
                    Some(next) if parse_bool(next).is_some() => {
                        i += 1;
                        next.clone()
                    }
                    _ => "true".to_owned(),
                },
            };
            Some(value)
        } else if VALUE_FLAGS.contains(&name) {
            match inline {
                Some(value) => Some(value),
                None => {
                    let next = args.get(i).cloned();
                    if next.is_some() {
                        i += 1;
                    }
                    // With no value left, argh reports the missing value.
                    next
                }
            }
        } else {
            // Report it here: deferring to argh would first trip over the
            // unknown flag's value as a stray argument.
            return Err(ConfigError::Usage(format!(
                "unknown flag --{name} (see --help)"
            )));
        };
        if name == "version" {
            let value = value.unwrap_or_default();
            version = parse_bool(&value).ok_or(ConfigError::InvalidBool {
                origin: Origin::Flag("--version"),
                value,
            })?;
            continue;
        }
        pairs.retain(|(seen, _)| seen != name);
        pairs.push((name.to_owned(), value));
    }
    let mut argv = Vec::with_capacity(pairs.len() * 2 + 1);
    for (name, value) in pairs {
        argv.push(format!("--{name}"));
        argv.extend(value);
    }
    if version {
        argv.push("--version".to_owned());
    }
    Ok(Rewritten::Args(argv))
}

fn unexpected_argument(arg: &str) -> ConfigError {
    ConfigError::Usage(format!(
        "unexpected argument {arg:?}: dflockd takes only flags (see --help)"
    ))
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

/// An integer range and the rule text used when a value falls outside it.
#[derive(Clone, Copy)]
struct Range {
    min: i64,
    max: i64,
    rule: &'static str,
}

const POSITIVE: Range = Range {
    min: 1,
    max: i64::MAX,
    rule: "must be > 0",
};
const NON_NEGATIVE: Range = Range {
    min: 0,
    max: i64::MAX,
    rule: "must be >= 0",
};
const PORT: Range = Range {
    min: 0,
    max: 65_535,
    rule: "must be between 0 and 65535",
};
const POSITIVE_SECS: Range = Range {
    min: 1,
    max: MAX_DURATION_S as i64,
    rule: "must be between 1 and 9223372036 seconds",
};
const NON_NEGATIVE_SECS: Range = Range {
    min: 0,
    max: MAX_DURATION_S as i64,
    rule: "must be between 0 and 9223372036 seconds",
};

/// A value found on the command line or in the environment, not yet parsed.
struct Raw {
    value: String,
    origin: Origin,
}

/// Looks settings up in the flags, then the environment, then the default,
/// and collects warnings on the way.
struct Resolver<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<String>,
}

impl Resolver<'_> {
    /// An environment variable, with empty meaning unset.
    fn env(&self, var: &str) -> Option<String> {
        (self.env)(var).filter(|v| !v.is_empty())
    }

    fn lookup(
        &self,
        flag_value: &Option<String>,
        flag: &'static str,
        var: &'static str,
    ) -> Option<Raw> {
        if let Some(value) = flag_value {
            return Some(Raw {
                value: value.clone(),
                origin: Origin::Flag(flag),
            });
        }
        self.env(var).map(|value| Raw {
            value,
            origin: Origin::Env(var),
        })
    }

    /// Like [`Resolver::lookup`], but also accepts a deprecated variable
    /// name when neither the flag nor the canonical variable is set.
    fn lookup_with_legacy(
        &mut self,
        flag_value: &Option<String>,
        flag: &'static str,
        var: &'static str,
        legacy: &'static str,
    ) -> Option<Raw> {
        let found = self.lookup(flag_value, flag, var);
        if self.env(legacy).is_none() {
            return found;
        }
        match found {
            Some(raw) => {
                self.warnings.push(format!(
                    "{legacy} is deprecated and ignored because {} is set; remove it",
                    raw.origin
                ));
                Some(raw)
            }
            None => {
                self.warnings
                    .push(format!("{legacy} is deprecated; rename it to {var}"));
                self.env(legacy).map(|value| Raw {
                    value,
                    origin: Origin::Env(legacy),
                })
            }
        }
    }

    fn string(
        &self,
        flag_value: &Option<String>,
        flag: &'static str,
        var: &'static str,
        default: &str,
    ) -> (String, Origin) {
        match self.lookup(flag_value, flag, var) {
            Some(raw) => (raw.value, raw.origin),
            None => (default.to_owned(), Origin::Default(flag)),
        }
    }

    /// An optional path; an empty value (even from a flag) means unset,
    /// as upstream tests `!= ""`.
    fn path(
        &self,
        flag_value: &Option<String>,
        flag: &'static str,
        var: &'static str,
    ) -> Option<(PathBuf, Origin)> {
        self.lookup(flag_value, flag, var)
            .filter(|raw| !raw.value.is_empty())
            .map(|raw| (PathBuf::from(raw.value), raw.origin))
    }

    fn int(
        &self,
        flag_value: &Option<String>,
        flag: &'static str,
        var: &'static str,
        default: u64,
        range: Range,
    ) -> Result<(u64, Origin), ConfigError> {
        let raw = self.lookup(flag_value, flag, var);
        parse_int(raw, flag, default, range)
    }

    fn count(
        &self,
        flag_value: &Option<String>,
        flag: &'static str,
        var: &'static str,
        default: u64,
        range: Range,
    ) -> Result<(usize, Origin), ConfigError> {
        let (value, origin) = self.int(flag_value, flag, var, default, range)?;
        match usize::try_from(value) {
            Ok(n) => Ok((n, origin)),
            Err(_) => Err(ConfigError::OutOfRange {
                origin,
                value: value.to_string(),
                rule: "must fit in this platform's usize",
            }),
        }
    }

    fn bool(
        &self,
        flag_value: &Option<String>,
        flag: &'static str,
        var: &'static str,
        default: bool,
    ) -> Result<bool, ConfigError> {
        match self.lookup(flag_value, flag, var) {
            None => Ok(default),
            Some(raw) => parse_bool(&raw.value).ok_or(ConfigError::InvalidBool {
                origin: raw.origin,
                value: raw.value,
            }),
        }
    }
}

/// Parses a decimal integer (surrounding whitespace allowed) and checks
/// its range. Go's flag package would also take `0x10` or octal `010`;
/// plain decimal avoids the octal surprise.
fn parse_int(
    raw: Option<Raw>,
    flag: &'static str,
    default: u64,
    range: Range,
) -> Result<(u64, Origin), ConfigError> {
    let Some(Raw { value, origin }) = raw else {
        return Ok((default, Origin::Default(flag)));
    };
    let trimmed = value.trim();
    let Ok(n) = trimmed.parse::<i64>() else {
        return Err(ConfigError::InvalidInteger { origin, value });
    };
    if n < range.min || n > range.max {
        return Err(ConfigError::OutOfRange {
            origin,
            value: trimmed.to_owned(),
            rule: range.rule,
        });
    }
    // The range check above guarantees 0 <= n.
    u64::try_from(n)
        .map(|n| (n, origin))
        .map_err(|_| ConfigError::InvalidInteger {
            origin,
            value: value.clone(),
        })
}

fn port_of(value: u64) -> u16 {
    // Callers check the value against PORT first, so it always fits.
    u16::try_from(value).unwrap_or(u16::MAX)
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

/// Auth token sources in v1.16 order, first found wins: `--auth-token`,
/// `--auth-token-file`, `DFLOCKD_AUTH_TOKEN`, `DFLOCKD_AUTH_TOKEN_FILE`.
/// Only the winning source is read. A source that is present but blank is an error, never
/// "no auth": an operator who set a token meant to require one.
fn resolve_auth_token(f: &Flags, r: &Resolver<'_>) -> Result<Option<String>, ConfigError> {
    if let Some(token) = &f.auth_token {
        return check_token(token, Origin::Flag("--auth-token"), None).map(Some);
    }
    if let Some(file) = &f.auth_token_file {
        return read_token_file(Path::new(file), Origin::Flag("--auth-token-file")).map(Some);
    }
    if let Some(token) = r.env("DFLOCKD_AUTH_TOKEN") {
        return check_token(&token, Origin::Env("DFLOCKD_AUTH_TOKEN"), None).map(Some);
    }
    if let Some(file) = r.env("DFLOCKD_AUTH_TOKEN_FILE") {
        return read_token_file(Path::new(&file), Origin::Env("DFLOCKD_AUTH_TOKEN_FILE")).map(Some);
    }
    Ok(None)
}

/// Resolves every setting, in flag-table order, then the rules that
/// involve two settings.
fn resolve(f: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut r = Resolver {
        env,
        warnings: Vec::new(),
    };

    let (host, _) = r.string(&f.host, "--host", "DFLOCKD_HOST", "127.0.0.1");
    let (port, _) = r.int(&f.port, "--port", "DFLOCKD_PORT", 6388, PORT)?;
    let port = port_of(port);
    let (default_lease_ttl_s, _) = r.int(
        &f.default_lease_ttl,
        "--default-lease-ttl",
        "DFLOCKD_DEFAULT_LEASE_TTL_S",
        33,
        POSITIVE_SECS,
    )?;
    let (lease_sweep_interval_s, _) = r.int(
        &f.lease_sweep_interval,
        "--lease-sweep-interval",
        "DFLOCKD_LEASE_SWEEP_INTERVAL_S",
        1,
        POSITIVE_SECS,
    )?;
    let raw = r.lookup_with_legacy(
        &f.gc_interval,
        "--gc-interval",
        "DFLOCKD_GC_INTERVAL_S",
        "DFLOCKD_GC_LOOP_SLEEP",
    );
    let (gc_interval_s, _) = parse_int(raw, "--gc-interval", 5, POSITIVE_SECS)?;
    let raw = r.lookup_with_legacy(
        &f.gc_max_idle,
        "--gc-max-idle",
        "DFLOCKD_GC_MAX_IDLE_S",
        "DFLOCKD_GC_MAX_UNUSED_TIME",
    );
    let (gc_max_idle_s, _) = parse_int(raw, "--gc-max-idle", 60, NON_NEGATIVE_SECS)?;
    let (max_locks, _) = r.count(
        &f.max_locks,
        "--max-locks",
        "DFLOCKD_MAX_LOCKS",
        1024,
        POSITIVE,
    )?;
    let (max_connections, _) = r.count(
        &f.max_connections,
        "--max-connections",
        "DFLOCKD_MAX_CONNECTIONS",
        0,
        NON_NEGATIVE,
    )?;
    let (max_connections_per_ip, _) = r.count(
        &f.max_connections_per_ip,
        "--max-connections-per-ip",
        "DFLOCKD_MAX_CONNECTIONS_PER_IP",
        0,
        NON_NEGATIVE,
    )?;
    let (max_waiters, _) = r.count(
        &f.max_waiters,
        "--max-waiters",
        "DFLOCKD_MAX_WAITERS",
        0,
        NON_NEGATIVE,
    )?;
    let (max_subscriptions, _) = r.count(
        &f.max_subscriptions,
        "--max-subscriptions",
        "DFLOCKD_MAX_SUBSCRIPTIONS",
        0,
        NON_NEGATIVE,
    )?;
    let (read_timeout_s, _) = r.int(
        &f.read_timeout,
        "--read-timeout",
        "DFLOCKD_READ_TIMEOUT_S",
        23,
        POSITIVE_SECS,
    )?;
    let (write_timeout_s, _) = r.int(
        &f.write_timeout,
        "--write-timeout",
        "DFLOCKD_WRITE_TIMEOUT_S",
        5,
        NON_NEGATIVE_SECS,
    )?;
    let (shutdown_timeout_s, _) = r.int(
        &f.shutdown_timeout,
        "--shutdown-timeout",
        "DFLOCKD_SHUTDOWN_TIMEOUT_S",
        30,
        NON_NEGATIVE_SECS,
    )?;
    let auto_release_on_disconnect = r.bool(
        &f.auto_release_on_disconnect,
        "--auto-release-on-disconnect",
        "DFLOCKD_AUTO_RELEASE_ON_DISCONNECT",
        true,
    )?;

    let tls_cert = r.path(&f.tls_cert, "--tls-cert", "DFLOCKD_TLS_CERT");
    let tls_key = r.path(&f.tls_key, "--tls-key", "DFLOCKD_TLS_KEY");
    let tls = match (tls_cert, tls_key) {
        (Some((cert, _)), Some((key, _))) => Some(TlsConfig { cert, key }),
        (None, None) => None,
        (Some((_, given)), None) => {
            return Err(ConfigError::TlsIncomplete {
                given,
                missing: "--tls-key (DFLOCKD_TLS_KEY)",
            })
        }
        (None, Some((_, given))) => {
            return Err(ConfigError::TlsIncomplete {
                given,
                missing: "--tls-cert (DFLOCKD_TLS_CERT)",
            })
        }
    };

    let auth_token = resolve_auth_token(f, &r)?;
    let fence_state_file = r
        .path(
            &f.fence_state_file,
            "--fence-state-file",
            "DFLOCKD_FENCE_STATE_FILE",
        )
        .map(|(path, _)| path);

    let (http_port, http_port_origin) =
        r.int(&f.http_port, "--http-port", "DFLOCKD_HTTP_PORT", 0, PORT)?;
    let http_port = port_of(http_port);
    let (http_host, http_host_origin) =
        r.string(&f.http_host, "--http-host", "DFLOCKD_HTTP_HOST", "");
    let (session_idle_timeout_s, idle_origin) = r.int(
        &f.http_session_idle_timeout,
        "--http-session-idle-timeout",
        "DFLOCKD_HTTP_SESSION_IDLE_S",
        20,
        NON_NEGATIVE_SECS,
    )?;
    let (max_sessions, max_sessions_origin) = r.count(
        &f.http_max_sessions,
        "--http-max-sessions",
        "DFLOCKD_HTTP_MAX_SESSIONS",
        0,
        NON_NEGATIVE,
    )?;
    let (max_sessions_per_ip, max_sessions_per_ip_origin) = r.count(
        &f.http_max_sessions_per_ip,
        "--http-max-sessions-per-ip",
        "DFLOCKD_HTTP_MAX_SESSIONS_PER_IP",
        0,
        NON_NEGATIVE,
    )?;
    let (http_max_connections_per_ip, http_max_conns_origin) = r.count(
        &f.http_max_connections_per_ip,
        "--http-max-connections-per-ip",
        "DFLOCKD_HTTP_MAX_CONNECTIONS_PER_IP",
        0,
        NON_NEGATIVE,
    )?;
    let (rate_limit_per_ip, rate_origin) = r.int(
        &f.http_rate_limit_per_ip,
        "--http-rate-limit-per-ip",
        "DFLOCKD_HTTP_RATE_LIMIT_PER_IP",
        0,
        NON_NEGATIVE,
    )?;
    let (burst, burst_origin) = r.int(
        &f.http_rate_limit_burst,
        "--http-rate-limit-burst",
        "DFLOCKD_HTTP_RATE_LIMIT_BURST",
        0,
        NON_NEGATIVE,
    )?;
    let (sse_ping_interval_s, ping_origin) = r.int(
        &f.http_sse_ping_interval,
        "--http-sse-ping-interval",
        "DFLOCKD_HTTP_SSE_PING_S",
        15,
        NON_NEGATIVE_SECS,
    )?;
    let (cors, cors_origin) = r.string(
        &f.http_cors_allowed_origins,
        "--http-cors-allowed-origins",
        "DFLOCKD_HTTP_CORS_ALLOWED_ORIGINS",
        "",
    );
    let cors_allowed_origins: Vec<String> = cors
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();

    let debug = r.bool(&f.debug, "--debug", "DFLOCKD_DEBUG", false)?;

    // Rules involving two settings.
    if http_port != 0 && http_port == port {
        return Err(ConfigError::HttpPortConflict {
            origin: http_port_origin,
            port,
        });
    }
    if sse_ping_interval_s > 0
        && session_idle_timeout_s > 0
        && sse_ping_interval_s >= session_idle_timeout_s
    {
        return Err(ConfigError::SsePingNotBelowIdle {
            ping: ping_origin,
            ping_s: sse_ping_interval_s,
            idle: idle_origin,
            idle_s: session_idle_timeout_s,
        });
    }

    // HTTP options other than the port do nothing while HTTP is off, as
    // upstream; say so instead of ignoring them silently.
    if http_port == 0 {
        let given = [
            (http_host_origin, "--http-host"),
            (idle_origin, "--http-session-idle-timeout"),
            (max_sessions_origin, "--http-max-sessions"),
            (max_sessions_per_ip_origin, "--http-max-sessions-per-ip"),
            (http_max_conns_origin, "--http-max-connections-per-ip"),
            (rate_origin, "--http-rate-limit-per-ip"),
            (burst_origin, "--http-rate-limit-burst"),
            (ping_origin, "--http-sse-ping-interval"),
            (cors_origin, "--http-cors-allowed-origins"),
        ];
        for (origin, flag) in given {
            if !origin.is_default() {
                r.warnings.push(format!(
                    "{} has no effect while --http-port is 0 (HTTP API off)",
                    origin.with_flag(flag)
                ));
            }
        }
    }

    let http_host = if http_host.is_empty() {
        host.clone()
    } else {
        http_host
    };
    let http = HttpConfig {
        port: http_port,
        settings: HttpSettings {
            listen: join_host_port(&http_host, http_port),
            session_idle_timeout_s,
            max_sessions,
            max_sessions_per_ip,
            max_connections_per_ip: http_max_connections_per_ip,
            rate_limit_per_ip,
            rate_limit_burst: if burst == 0 { rate_limit_per_ip } else { burst },
            cors_allowed_origins,
            sse_ping_interval_s,
        },
        host: http_host,
    };

    Ok(Config {
        host,
        port,
        default_lease_ttl_s,
        lease_sweep_interval_s,
        gc_interval_s,
        gc_max_idle_s,
        max_locks,
        max_connections,
        max_connections_per_ip,
        max_waiters,
        max_subscriptions,
        read_timeout_s,
        write_timeout_s,
        shutdown_timeout_s,
        auto_release_on_disconnect,
        tls,
        auth_token,
        fence_state_file,
        http,
        debug,
        warnings: r.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Parsed, ConfigError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        Config::from_args_and_env(&args, &lookup)
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env) {
            Ok(Parsed::Run(cfg)) => cfg,
            other => panic!("args {args:?} env {env:?}: expected a config, got {other:?}"),
        }
    }

    /// One field of a config rendered as text, for table-driven checks.
    fn field(cfg: &Config, name: &str) -> String {
        match name {
            "host" => cfg.host.clone(),
            "port" => cfg.port.to_string(),
            "default_lease_ttl_s" => cfg.default_lease_ttl_s.to_string(),
            "lease_sweep_interval_s" => cfg.lease_sweep_interval_s.to_string(),
            "gc_interval_s" => cfg.gc_interval_s.to_string(),
            "gc_max_idle_s" => cfg.gc_max_idle_s.to_string(),
            "max_locks" => cfg.max_locks.to_string(),
            "max_connections" => cfg.max_connections.to_string(),
            "max_connections_per_ip" => cfg.max_connections_per_ip.to_string(),
            "max_waiters" => cfg.max_waiters.to_string(),
            "max_subscriptions" => cfg.max_subscriptions.to_string(),
            "read_timeout_s" => cfg.read_timeout_s.to_string(),
            "write_timeout_s" => cfg.write_timeout_s.to_string(),
            "shutdown_timeout_s" => cfg.shutdown_timeout_s.to_string(),
            "auto_release" => cfg.auto_release_on_disconnect.to_string(),
            "tls" => cfg.tls.as_ref().map_or_else(
                || "none".to_owned(),
                |t| format!("{},{}", t.cert.display(), t.key.display()),
            ),
            "auth_token" => cfg.auth_token.clone().unwrap_or_else(|| "none".to_owned()),
            "fence_state_file" => cfg
                .fence_state_file
                .as_ref()
                .map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
            "http_port" => cfg.http.port.to_string(),
            "http_host" => cfg.http.host.clone(),
            "http_idle_s" => cfg.http.settings.session_idle_timeout_s.to_string(),
            "http_max_sessions" => cfg.http.settings.max_sessions.to_string(),
            "http_max_sessions_per_ip" => cfg.http.settings.max_sessions_per_ip.to_string(),
            "http_max_connections_per_ip" => cfg.http.settings.max_connections_per_ip.to_string(),
            "http_rate" => cfg.http.settings.rate_limit_per_ip.to_string(),
            "http_burst" => cfg.http.settings.rate_limit_burst.to_string(),
            "http_sse_ping_s" => cfg.http.settings.sse_ping_interval_s.to_string(),
            "cors" => cfg.http.settings.cors_allowed_origins.join("|"),
            "debug" => cfg.debug.to_string(),
            "warnings" => cfg.warnings.len().to_string(),
            "listen" => cfg.listen_addr(),
            "unsupported" => if cfg.unsupported().is_some() {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
            _ => panic!("unknown field {name}"),
        }
    }

    /// The one checker. `expect` is one of:
    /// * `error: <text>`: fails, and the error displays exactly as `<text>`;
    /// * `error^ <text>`: fails, and the error display starts with `<text>`;
    /// * `exit <code>: <text>`: asks to exit, and the output contains `<text>`;
    /// * `field=value ...`: succeeds with those fields (see [`field`]).
    fn check(args: &[&str], env: &[(&str, &str)], expect: &str) {
        let got = run(args, env);
        let ctx = format!("args {args:?} env {env:?}");
        if let Some(want) = expect.strip_prefix("error: ") {
            match got {
                Err(e) => assert_eq!(e.to_string(), want, "{ctx}"),
                Ok(p) => panic!("{ctx}: expected error {want:?}, got {p:?}"),
            }
        } else if let Some(want) = expect.strip_prefix("error^ ") {
            match got {
                Err(e) => assert!(e.to_string().starts_with(want), "{ctx}: {e:?} vs {want:?}"),
                Ok(p) => panic!("{ctx}: expected error {want:?}, got {p:?}"),
            }
        } else if let Some(rest) = expect.strip_prefix("exit ") {
            let (want_code, want_text) = rest.split_once(": ").unwrap_or((rest, ""));
            match got {
                Ok(Parsed::Exit { code, output }) => {
                    assert_eq!(code.to_string(), want_code, "{ctx}");
                    assert!(
                        output.contains(want_text),
                        "{ctx}: {output:?} lacks {want_text:?}"
                    );
                }
                other => panic!("{ctx}: expected exit, got {other:?}"),
            }
        } else {
            let cfg = match got {
                Ok(Parsed::Run(cfg)) => cfg,
                other => panic!("{ctx}: expected a config, got {other:?}"),
            };
            for pair in expect.split_whitespace() {
                let (name, want) = pair.split_once('=').unwrap_or((pair, ""));
                assert_eq!(field(&cfg, name), want, "{ctx}: field {name}");
            }
        }
    }

    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

    fn check_all(cases: &[Case<'_>]) {
        for (args, env, expect) in cases {
            check(args, env, expect);
        }
    }

    #[derive(Clone, Copy)]
    enum Kind {
        Positive,
        NonNegative,
        Port,
        PositiveSecs,
        NonNegativeSecs,
    }

    /// Every integer setting: flag, variable, field, default, kind.
    #[rustfmt::skip]
    const INTS: &[(&str, &str, &str, u64, Kind)] = &[
        ("--port", "DFLOCKD_PORT", "port", 6388, Kind::Port),
        ("--default-lease-ttl", "DFLOCKD_DEFAULT_LEASE_TTL_S", "default_lease_ttl_s", 33, Kind::PositiveSecs),
        ("--lease-sweep-interval", "DFLOCKD_LEASE_SWEEP_INTERVAL_S", "lease_sweep_interval_s", 1, Kind::PositiveSecs),
        ("--gc-interval", "DFLOCKD_GC_INTERVAL_S", "gc_interval_s", 5, Kind::PositiveSecs),
        ("--gc-max-idle", "DFLOCKD_GC_MAX_IDLE_S", "gc_max_idle_s", 60, Kind::NonNegativeSecs),
        ("--max-locks", "DFLOCKD_MAX_LOCKS", "max_locks", 1024, Kind::Positive),
        ("--max-connections", "DFLOCKD_MAX_CONNECTIONS", "max_connections", 0, Kind::NonNegative),
        ("--max-connections-per-ip", "DFLOCKD_MAX_CONNECTIONS_PER_IP", "max_connections_per_ip", 0, Kind::NonNegative),
        ("--max-waiters", "DFLOCKD_MAX_WAITERS", "max_waiters", 0, Kind::NonNegative),
        ("--max-subscriptions", "DFLOCKD_MAX_SUBSCRIPTIONS", "max_subscriptions", 0, Kind::NonNegative),
        ("--read-timeout", "DFLOCKD_READ_TIMEOUT_S", "read_timeout_s", 23, Kind::PositiveSecs),
        ("--write-timeout", "DFLOCKD_WRITE_TIMEOUT_S", "write_timeout_s", 5, Kind::NonNegativeSecs),
        ("--shutdown-timeout", "DFLOCKD_SHUTDOWN_TIMEOUT_S", "shutdown_timeout_s", 30, Kind::NonNegativeSecs),
        ("--http-port", "DFLOCKD_HTTP_PORT", "http_port", 0, Kind::Port),
        ("--http-session-idle-timeout", "DFLOCKD_HTTP_SESSION_IDLE_S", "http_idle_s", 20, Kind::NonNegativeSecs),
        ("--http-max-sessions", "DFLOCKD_HTTP_MAX_SESSIONS", "http_max_sessions", 0, Kind::NonNegative),
        ("--http-max-sessions-per-ip", "DFLOCKD_HTTP_MAX_SESSIONS_PER_IP", "http_max_sessions_per_ip", 0, Kind::NonNegative),
        ("--http-max-connections-per-ip", "DFLOCKD_HTTP_MAX_CONNECTIONS_PER_IP", "http_max_connections_per_ip", 0, Kind::NonNegative),
        ("--http-rate-limit-per-ip", "DFLOCKD_HTTP_RATE_LIMIT_PER_IP", "http_rate", 0, Kind::NonNegative),
        ("--http-rate-limit-burst", "DFLOCKD_HTTP_RATE_LIMIT_BURST", "http_burst", 0, Kind::NonNegative),
        ("--http-sse-ping-interval", "DFLOCKD_HTTP_SSE_PING_S", "http_sse_ping_s", 15, Kind::NonNegativeSecs),
    ];

    /// The value just below the range, the value just above it (when the
    /// range has a practical top), and the rule text.
    #[rustfmt::skip]
    fn limits(kind: Kind) -> (&'static str, Option<&'static str>, &'static str) {
        match kind {
            Kind::Positive => ("0", None, "must be > 0"),
            Kind::NonNegative => ("-1", None, "must be >= 0"),
            Kind::Port => ("-1", Some("65536"), "must be between 0 and 65535"),
            Kind::PositiveSecs => ("0", Some("9223372037"), "must be between 1 and 9223372036 seconds"),
            Kind::NonNegativeSecs => ("-1", Some("9223372037"), "must be between 0 and 9223372036 seconds"),
        }
    }

    #[test]
    fn defaults() {
        check(
            &[],
            &[],
            "host=127.0.0.1 port=6388 default_lease_ttl_s=33 lease_sweep_interval_s=1 \
             gc_interval_s=5 gc_max_idle_s=60 max_locks=1024 max_connections=0 \
             max_connections_per_ip=0 max_waiters=0 max_subscriptions=0 read_timeout_s=23 \
             write_timeout_s=5 shutdown_timeout_s=30 auto_release=true tls=none auth_token=none \
             fence_state_file=none http_port=0 http_host=127.0.0.1 http_idle_s=20 \
             http_max_sessions=0 http_max_sessions_per_ip=0 http_max_connections_per_ip=0 \
             http_rate=0 http_burst=0 http_sse_ping_s=15 cors= debug=false warnings=0 \
             listen=127.0.0.1:6388 unsupported=no",
        );
        for (_, _, name, default, _) in INTS {
            check(&[], &[], &format!("{name}={default}"));
        }
    }

    #[test]
    fn integer_precedence_flag_then_env_then_default() {
        for (flag, var, name, default, _) in INTS {
            check(&[], &[(var, "")], &format!("{name}={default}"));
            check(&[], &[(var, "17")], &format!("{name}=17"));
            check(&[], &[(var, " 17 ")], &format!("{name}=17"));
            check(&[flag, "19"], &[], &format!("{name}=19"));
            check(&[flag, "19"], &[(var, "17")], &format!("{name}=19"));
            // A flag wins even over a broken environment value.
            check(&[flag, "19"], &[(var, "junk")], &format!("{name}=19"));
        }
    }

    #[test]
    fn integer_errors_name_their_source() {
        let too_big = "9223372036854775808";
        for (flag, var, _, _, kind) in INTS {
            let (below, above, rule) = limits(*kind);
            let eq = |v: &str| format!("{flag}={v}");
            check(
                &[flag, "abc"],
                &[],
                &format!("error: {flag}: invalid integer \"abc\""),
            );
            check(
                &[flag, ""],
                &[],
                &format!("error: {flag}: invalid integer \"\""),
            );
            check(
                &[&eq(too_big)],
                &[],
                &format!("error: {flag}: invalid integer \"{too_big}\""),
            );
            check(
                &[&eq(below)],
                &[],
                &format!("error: {flag}: {rule}, got {below}"),
            );
            check(
                &[],
                &[(var, "abc")],
                &format!("error: {var}: invalid integer \"abc\""),
            );
            check(
                &[],
                &[(var, "1.5")],
                &format!("error: {var}: invalid integer \"1.5\""),
            );
            check(
                &[],
                &[(var, "0x10")],
                &format!("error: {var}: invalid integer \"0x10\""),
            );
            check(
                &[],
                &[(var, too_big)],
                &format!("error: {var}: invalid integer \"{too_big}\""),
            );
            check(
                &[],
                &[(var, below)],
                &format!("error: {var}: {rule}, got {below}"),
            );
            if let Some(above) = above {
                check(
                    &[flag, above],
                    &[],
                    &format!("error: {flag}: {rule}, got {above}"),
                );
                check(
                    &[],
                    &[(var, above)],
                    &format!("error: {var}: {rule}, got {above}"),
                );
            }
        }
    }

    #[test]
    #[rustfmt::skip]
    fn durations_up_to_the_go_limit() {
        check_all(&[
            (&["--read-timeout", "9223372036"], &[], "read_timeout_s=9223372036"),
            (&["--default-lease-ttl", "9223372036"], &[], "default_lease_ttl_s=9223372036"),
            (&["--shutdown-timeout", "0"], &[], "shutdown_timeout_s=0"),
            (&["--write-timeout", "0"], &[], "write_timeout_s=0"),
            (&["--gc-max-idle", "0"], &[], "gc_max_idle_s=0"),
            (&["--read-timeout", "9223372037"], &[], "error: --read-timeout: must be between 1 and 9223372036 seconds, got 9223372037"),
            (&[], &[("DFLOCKD_SHUTDOWN_TIMEOUT_S", "99999999999")], "error: DFLOCKD_SHUTDOWN_TIMEOUT_S: must be between 0 and 9223372036 seconds, got 99999999999"),
            (&[], &[("DFLOCKD_GC_MAX_IDLE_S", "9223372036854775807")], "error: DFLOCKD_GC_MAX_IDLE_S: must be between 0 and 9223372036 seconds, got 9223372036854775807"),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn flag_syntax_forms() {
        check_all(&[
            (&["--port", "7000"], &[], "port=7000"),
            (&["--port=7000"], &[], "port=7000"),
            (&["-port", "7000"], &[], "port=7000"),
            (&["-port=7000"], &[], "port=7000"),
            (&["--port", "1", "--port", "2"], &[], "port=2"),
            (&["--port=1", "-port", "2", "--port=3"], &[], "port=3"),
            (&["--auth-token=-dash-token"], &[], "auth_token=-dash-token"),
            (&["--auth-token", "-dash-token"], &[], "auth_token=-dash-token"),
            (&["--auth-token=a=b"], &[], "auth_token=a=b"),
            (&["--max-waiters", "5", "--"], &[], "max_waiters=5"),
            (&["---port", "1"], &[], "error: bad flag syntax: \"---port\""),
            (&["--=1"], &[], "error: bad flag syntax: \"--=1\""),
            (&["-"], &[], "error: unexpected argument \"-\": dflockd takes only flags (see --help)"),
            (&["serve"], &[], "error: unexpected argument \"serve\": dflockd takes only flags (see --help)"),
            (&["--", "x"], &[], "error: unexpected argument \"x\": dflockd takes only flags (see --help)"),
            (&["--port"], &[], "error: No value provided for option '--port'."),
            (&["--bogus"], &[], "error: unknown flag --bogus (see --help)"),
            (&["-bogus=1"], &[], "error: unknown flag --bogus (see --help)"),
            (&["--bogus", "1"], &[], "error: unknown flag --bogus (see --help)"),
            (&["--Port", "1"], &[], "error: unknown flag --Port (see --help)"),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn bool_forms() {
        const BAD: &str = "(use true/false, 1/0 or yes/no)";
        check_all(&[
            (&["--debug"], &[], "debug=true"),
            (&["-debug"], &[], "debug=true"),
            (&["--debug=true"], &[], "debug=true"),
            (&["--debug=false"], &[], "debug=false"),
            (&["--debug", "false"], &[], "debug=false"),
            (&["--debug", "FALSE"], &[], "debug=false"),
            (&["--debug=0"], &[], "debug=false"),
            (&["--debug=no"], &[], "debug=false"),
            (&["--debug=t"], &[], "debug=true"),
            (&["--debug", "--port", "7"], &[], "debug=true port=7"),
            (&["--port", "7", "--debug"], &[], "debug=true port=7"),
            (&["--auto-release-on-disconnect=false"], &[], "auto_release=false"),
            (&["--auto-release-on-disconnect", "false"], &[], "auto_release=false"),
            (&["--auto-release-on-disconnect"], &[], "auto_release=true"),
            (&["--auto-release-on-disconnect"], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "no")], "auto_release=true"),
            (&[], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "no")], "auto_release=false"),
            (&[], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "0")], "auto_release=false"),
            (&[], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "False")], "auto_release=false"),
            (&[], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "")], "auto_release=true"),
            (&[], &[("DFLOCKD_DEBUG", "YES")], "debug=true"),
            (&[], &[("DFLOCKD_DEBUG", "1")], "debug=true"),
            (&["--debug=false"], &[("DFLOCKD_DEBUG", "true")], "debug=false"),
        ]);
        check(&["--debug=maybe"], &[], &format!("error: --debug: invalid boolean \"maybe\" {BAD}"));
        check(&["--debug="], &[], &format!("error: --debug: invalid boolean \"\" {BAD}"));
        check(&["--auto-release-on-disconnect=2"], &[], &format!("error: --auto-release-on-disconnect: invalid boolean \"2\" {BAD}"));
        check(&[], &[("DFLOCKD_DEBUG", "maybe")], &format!("error: DFLOCKD_DEBUG: invalid boolean \"maybe\" {BAD}"));
        check(&[], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "on")], &format!("error: DFLOCKD_AUTO_RELEASE_ON_DISCONNECT: invalid boolean \"on\" {BAD}"));
        // A bare boolean does not swallow a word that is not a boolean.
        check(&["--debug", "maybe"], &[], "error: unexpected argument \"maybe\": dflockd takes only flags (see --help)");
    }

    #[test]
    #[rustfmt::skip]
    fn strings_and_lists() {
        check_all(&[
            (&[], &[("DFLOCKD_HOST", "0.0.0.0")], "host=0.0.0.0 listen=0.0.0.0:6388 http_host=0.0.0.0"),
            (&["--host", "10.0.0.1"], &[("DFLOCKD_HOST", "0.0.0.0")], "host=10.0.0.1"),
            (&["--host", ""], &[("DFLOCKD_HOST", "0.0.0.0")], "host= listen=0.0.0.0:6388"),
            (&["--host", "::1"], &[], "host=::1 listen=[::1]:6388"),
            (&["--host", "fe80::1%eth0"], &[], "listen=[fe80::1%eth0]:6388"),
            (&["--host", "[::1]"], &[], "listen=[::1]:6388"),
            (&["--host", "localhost", "--port", "0"], &[], "listen=localhost:0"),
            (&["--http-host", "::"], &[], "http_host=:: host=127.0.0.1 warnings=1"),
            (&[], &[("DFLOCKD_HTTP_CORS_ALLOWED_ORIGINS", " https://a.example, ,https://b.example,,")], "cors=https://a.example|https://b.example"),
            (&["--http-cors-allowed-origins", "*"], &[], "cors=*"),
            (&["--http-cors-allowed-origins", ",, ,"], &[], "cors="),
            (&["--fence-state-file", "/var/lib/dflockd/fence"], &[], "fence_state_file=/var/lib/dflockd/fence"),
            (&[], &[("DFLOCKD_FENCE_STATE_FILE", "/tmp/f")], "fence_state_file=/tmp/f"),
            (&["--fence-state-file", "/a"], &[("DFLOCKD_FENCE_STATE_FILE", "/b")], "fence_state_file=/a"),
            (&["--fence-state-file="], &[], "fence_state_file=none"),
            (&["--http-rate-limit-per-ip", "50"], &[], "http_rate=50 http_burst=50"),
            (&["--http-rate-limit-per-ip", "50", "--http-rate-limit-burst", "7"], &[], "http_rate=50 http_burst=7"),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn legacy_gc_variables() {
        check_all(&[
            (&[], &[("DFLOCKD_GC_LOOP_SLEEP", "7")], "gc_interval_s=7 warnings=1"),
            (&[], &[("DFLOCKD_GC_MAX_UNUSED_TIME", "0")], "gc_max_idle_s=0 warnings=1"),
            (&[], &[("DFLOCKD_GC_INTERVAL_S", "8"), ("DFLOCKD_GC_LOOP_SLEEP", "7")], "gc_interval_s=8 warnings=1"),
            (&["--gc-interval", "9"], &[("DFLOCKD_GC_LOOP_SLEEP", "7")], "gc_interval_s=9 warnings=1"),
            (&[], &[("DFLOCKD_GC_LOOP_SLEEP", "")], "gc_interval_s=5 warnings=0"),
            // A shadowed legacy value is not parsed.
            (&[], &[("DFLOCKD_GC_MAX_IDLE_S", "1"), ("DFLOCKD_GC_MAX_UNUSED_TIME", "x")], "gc_max_idle_s=1 warnings=1"),
            (&[], &[("DFLOCKD_GC_LOOP_SLEEP", "x")], "error: DFLOCKD_GC_LOOP_SLEEP: invalid integer \"x\""),
            (&[], &[("DFLOCKD_GC_LOOP_SLEEP", "0")], "error: DFLOCKD_GC_LOOP_SLEEP: must be between 1 and 9223372036 seconds, got 0"),
            (&[], &[("DFLOCKD_GC_MAX_UNUSED_TIME", "-1")], "error: DFLOCKD_GC_MAX_UNUSED_TIME: must be between 0 and 9223372036 seconds, got -1"),
        ]);
        let cfg = config(&[], &[("DFLOCKD_GC_LOOP_SLEEP", "7")]);
        assert_eq!(cfg.warnings, ["DFLOCKD_GC_LOOP_SLEEP is deprecated; rename it to DFLOCKD_GC_INTERVAL_S"]);
        let cfg = config(&["--gc-max-idle", "3"], &[("DFLOCKD_GC_MAX_UNUSED_TIME", "7")]);
        assert_eq!(cfg.warnings, ["DFLOCKD_GC_MAX_UNUSED_TIME is deprecated and ignored because --gc-max-idle is set; remove it"]);
    }

    /// A scratch directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("dflockd-config-test-{}-{n}", std::process::id());
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn file(&self, name: &str, content: &[u8]) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, content).expect("write temp file");
            path.display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    #[rustfmt::skip]
    fn auth_token_sources_in_order() {
        let dir = TempDir::new();
        let flag_file = dir.file("flag-token", b"  from-flag-file\n");
        let env_file = dir.file("env-token", b"from-env-file\r\n");
        let tok = |t: &str| format!("auth_token={t}");
        let both_env: &[(&str, &str)] = &[("DFLOCKD_AUTH_TOKEN", " from-env "), ("DFLOCKD_AUTH_TOKEN_FILE", &env_file)];
        check(&["--auth-token", " from-flag\t", "--auth-token-file", &flag_file], both_env, &tok("from-flag"));
        check(&["--auth-token-file", &flag_file], both_env, &tok("from-flag-file"));
        check(&[], both_env, &tok("from-env"));
        check(&[], &[("DFLOCKD_AUTH_TOKEN_FILE", &env_file)], &tok("from-env-file"));
        check(&[], &[("DFLOCKD_AUTH_TOKEN", ""), ("DFLOCKD_AUTH_TOKEN_FILE", &env_file)], &tok("from-env-file"));
        // Inner spaces are kept; only the ends are trimmed.
        assert_eq!(config(&["--auth-token= with space "], &[]).auth_token.as_deref(), Some("with space"));
        // Lower-priority sources are not read, so a broken one does not matter.
        check(&["--auth-token", "x"], &[("DFLOCKD_AUTH_TOKEN_FILE", "/nonexistent/dflockd")], &tok("x"));
    }

    #[test]
    #[rustfmt::skip]
    fn auth_token_errors() {
        let dir = TempDir::new();
        let blank = dir.file("blank", b" \n\t \n");
        let empty = dir.file("empty", b"");
        let two_lines = dir.file("two-lines", b"abc\ndef\n");
        let binary = dir.file("binary", b"\xff\xfe");
        let huge = dir.file("huge", &vec![b'a'; MAX_AUTH_TOKEN_BYTES + 1]);
        let missing = dir.0.join("missing").display().to_string();
        let a_dir = dir.0.display().to_string();
        let longest = "a".repeat(MAX_AUTH_TOKEN_BYTES);
        let too_long = "a".repeat(MAX_AUTH_TOKEN_BYTES + 1);
        check(&["--auth-token", &longest], &[], &format!("auth_token={longest}"));
        check(&["--auth-token", "  "], &[], "error: --auth-token: token is empty after trimming whitespace");
        check(&["--auth-token="], &[], "error: --auth-token: token is empty after trimming whitespace");
        check(&["--auth-token", "a\nb"], &[], "error: --auth-token: token must not contain CR or LF");
        check(&["--auth-token", "a\rb"], &[], "error: --auth-token: token must not contain CR or LF");
        check(&["--auth-token", &too_long], &[], "error: --auth-token: token is longer than 65536 bytes");
        check(&[], &[("DFLOCKD_AUTH_TOKEN", " \t")], "error: DFLOCKD_AUTH_TOKEN: token is empty after trimming whitespace");
        check(&[], &[("DFLOCKD_AUTH_TOKEN", "a\nb")], "error: DFLOCKD_AUTH_TOKEN: token must not contain CR or LF");
        check(&["--auth-token-file", &blank], &[], &format!("error: --auth-token-file: {blank}: token is empty after trimming whitespace"));
        check(&["--auth-token-file", &empty], &[], &format!("error: --auth-token-file: {empty}: token is empty after trimming whitespace"));
        check(&["--auth-token-file", &two_lines], &[], &format!("error: --auth-token-file: {two_lines}: token must not contain CR or LF"));
        check(&["--auth-token-file", &binary], &[], &format!("error: --auth-token-file: {binary}: token file is not valid UTF-8"));
        check(&["--auth-token-file", &huge], &[], &format!("error: --auth-token-file: {huge}: token is longer than 65536 bytes"));
        check(&["--auth-token-file", &missing], &[], &format!("error^ --auth-token-file: cannot read {missing}: "));
        check(&["--auth-token-file", &a_dir], &[], &format!("error^ --auth-token-file: cannot read {a_dir}: "));
        check(&["--auth-token-file", ""], &[], "error^ --auth-token-file: cannot read : ");
        check(&[], &[("DFLOCKD_AUTH_TOKEN_FILE", &missing)], &format!("error^ DFLOCKD_AUTH_TOKEN_FILE: cannot read {missing}: "));
        check(&[], &[("DFLOCKD_AUTH_TOKEN_FILE", &blank)], &format!("error: DFLOCKD_AUTH_TOKEN_FILE: {blank}: token is empty after trimming whitespace"));
    }

    #[test]
    fn auth_token_is_not_in_debug_output() {
        let cfg = config(&["--auth-token", "s3cret-value"], &[]);
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    #[rustfmt::skip]
    fn tls_needs_cert_and_key() {
        const RULE: &str = "TLS needs both a certificate and a key, or neither";
        check_all(&[
            (&["--tls-cert", "c.pem", "--tls-key", "k.pem"], &[], "tls=c.pem,k.pem unsupported=no"),
            (&["--tls-cert", "c.pem"], &[("DFLOCKD_TLS_KEY", "k.pem")], "tls=c.pem,k.pem"),
            (&[], &[("DFLOCKD_TLS_CERT", "c.pem"), ("DFLOCKD_TLS_KEY", "k.pem")], "tls=c.pem,k.pem"),
            (&["--tls-cert", "", "--tls-key", ""], &[], "tls=none unsupported=no"),
        ]);
        check(&["--tls-cert", "c.pem"], &[], &format!("error: --tls-cert is set but --tls-key (DFLOCKD_TLS_KEY) is not: {RULE}"));
        check(&["--tls-key", "k.pem"], &[], &format!("error: --tls-key is set but --tls-cert (DFLOCKD_TLS_CERT) is not: {RULE}"));
        check(&[], &[("DFLOCKD_TLS_KEY", "k.pem")], &format!("error: DFLOCKD_TLS_KEY is set but --tls-cert (DFLOCKD_TLS_CERT) is not: {RULE}"));
        // An explicit empty flag unsets the value, and so beats the variable.
        check(&["--tls-cert="], &[("DFLOCKD_TLS_CERT", "c.pem"), ("DFLOCKD_TLS_KEY", "k.pem")], &format!("error: DFLOCKD_TLS_KEY is set but --tls-cert (DFLOCKD_TLS_CERT) is not: {RULE}"));
    }

    #[test]
    #[rustfmt::skip]
    fn http_port_must_differ_from_port() {
        check_all(&[
            (&["--http-port", "6389"], &[], "http_port=6389 unsupported=no"),
            (&["--http-port", "0", "--port", "0"], &[], "http_port=0 port=0"),
            (&["--http-port", "6388"], &[], "error: --http-port: must differ from --port (both are 6388)"),
            (&["--port", "7000"], &[("DFLOCKD_HTTP_PORT", "7000")], "error: DFLOCKD_HTTP_PORT: must differ from --port (both are 7000)"),
            (&[], &[("DFLOCKD_PORT", "7000"), ("DFLOCKD_HTTP_PORT", "7000")], "error: DFLOCKD_HTTP_PORT: must differ from --port (both are 7000)"),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn sse_ping_below_session_idle_timeout() {
        check_all(&[
            (&["--http-session-idle-timeout", "16"], &[], "http_idle_s=16 http_sse_ping_s=15"),
            (&["--http-session-idle-timeout", "0"], &[], "http_idle_s=0"),
            (&["--http-sse-ping-interval", "0", "--http-session-idle-timeout", "1"], &[], "http_sse_ping_s=0"),
            (&["--http-session-idle-timeout", "10"], &[], "error: --http-sse-ping-interval: must be less than --http-session-idle-timeout when both are > 0 (15 >= 10)"),
            (&["--http-sse-ping-interval", "20"], &[], "error: --http-sse-ping-interval: must be less than --http-session-idle-timeout when both are > 0 (20 >= 20)"),
            (&[], &[("DFLOCKD_HTTP_SSE_PING_S", "30"), ("DFLOCKD_HTTP_SESSION_IDLE_S", "30")], "error: DFLOCKD_HTTP_SSE_PING_S: must be less than DFLOCKD_HTTP_SESSION_IDLE_S when both are > 0 (30 >= 30)"),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn unsupported_features_are_reported_not_ignored() {
        let msg = |args: &[&str], env: &[(&str, &str)]| config(args, env).unsupported().unwrap_or_default();
        assert_eq!(msg(&["--http-port", "6389"], &[]), "");
        assert_eq!(msg(&[], &[("DFLOCKD_HTTP_PORT", "6389")]), "");
        // TLS is supported: the files are loaded (and checked) by `main`.
        assert_eq!(msg(&["--tls-cert", "c", "--tls-key", "k"], &[]), "");
        assert_eq!(msg(&[], &[("DFLOCKD_TLS_CERT", "c"), ("DFLOCKD_TLS_KEY", "k")]), "");
        // The HTTP API serves TLS too.
        assert_eq!(msg(&["--http-port", "6389", "--tls-cert", "c", "--tls-key", "k"], &[]), "");
        assert_eq!(msg(&["--http-port", "0"], &[]), "");
        // Inert HTTP options are warned about, one warning each.
        let cfg = config(&["--http-max-sessions", "5", "--http-cors-allowed-origins", "*"], &[("DFLOCKD_HTTP_SSE_PING_S", "3")]);
        assert_eq!(cfg.unsupported(), None);
        assert_eq!(cfg.warnings, [
            "--http-max-sessions has no effect while --http-port is 0 (HTTP API off)",
            "DFLOCKD_HTTP_SSE_PING_S (--http-sse-ping-interval) has no effect while --http-port is 0 (HTTP API off)",
            "--http-cors-allowed-origins has no effect while --http-port is 0 (HTTP API off)",
        ]);
        // With HTTP on, they apply.
        check(&["--http-port", "1", "--http-max-sessions", "5"], &[], "warnings=0 unsupported=no");
        check(&["--http-port", "1", "--http-rate-limit-per-ip", "5", "--http-rate-limit-burst", "9",
                "--http-max-sessions-per-ip", "2", "--http-max-connections-per-ip", "3",
                "--http-cors-allowed-origins", "*"], &[], "warnings=0 unsupported=no");
        check(&["--http-port", "1", "--http-sse-ping-interval", "5"], &[], "warnings=0 unsupported=no");
    }

    #[test]
    #[rustfmt::skip]
    fn version_and_help_exit_zero() {
        let version = format!("exit 0: dflockd {}", env!("CARGO_PKG_VERSION"));
        check_all(&[
            (&["--version"], &[], &version),
            (&["-version"], &[], &version),
            (&["--version=true"], &[], &version),
            (&["--port", "1", "--version"], &[], &version),
            // The environment is not consulted for --version.
            (&["--version"], &[("DFLOCKD_PORT", "junk")], &version),
            (&["--version=false"], &[], "port=6388"),
            (&["--version=maybe"], &[], "error: --version: invalid boolean \"maybe\" (use true/false, 1/0 or yes/no)"),
            (&["--version", "--bogus"], &[], "error: unknown flag --bogus (see --help)"),
            (&["--help"], &[], "exit 0: Usage: dflockd"),
            (&["-h"], &[], "exit 0: --auth-token-file"),
            (&["-help"], &[], "exit 0: DFLOCKD_FENCE_STATE_FILE"),
            (&["--port", "junk", "--help"], &[], "exit 0: Usage: dflockd"),
        ]);
    }

    /// The flag lists that `rewrite_args` uses agree with the argh struct,
    /// and the help text names every flag and every variable.
    #[test]
    fn flag_lists_match_argh_and_help() {
        for name in VALUE_FLAGS.iter().chain(BOOL_FLAGS) {
            let flag = format!("--{name}");
            assert!(
                Flags::from_args(&[COMMAND], &[&flag, "1"]).is_ok(),
                "argh rejects {flag}"
            );
        }
        let help = help_text();
        let mut in_help: Vec<&str> = help
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("--"))
            .filter_map(|l| l.split([' ', ',']).next())
            .filter(|n| *n != "help" && *n != "version")
            .collect();
        let mut known: Vec<&str> = VALUE_FLAGS.iter().chain(BOOL_FLAGS).copied().collect();
        in_help.sort_unstable();
        known.sort_unstable();
        assert_eq!(in_help, known, "{help}");
        for var in ENV_VARS {
            assert!(help.contains(var), "help does not mention {var}");
        }
        for (_, var, _, _, _) in INTS {
            assert!(ENV_VARS.contains(var), "{var} missing from ENV_VARS");
        }
    }

    #[test]
    fn core_config_maps_every_setting() {
        let cfg = config(
            &[
                "--default-lease-ttl=40",
                "--max-locks=7",
                "--max-waiters=3",
                "--auto-release-on-disconnect=false",
                "--gc-interval=2",
                "--gc-max-idle=0",
                "--auth-token=tok",
            ],
            &[],
        );
        let core = cfg.core_config(100, 200, [1, 2]);
        assert_eq!(core.default_lease_s, 40);
        assert_eq!(core.max_locks, 7);
        assert_eq!(core.max_waiters, 3);
        assert!(!core.auto_release_on_disconnect);
        assert_eq!(core.gc_interval_s, 2);
        assert_eq!(core.gc_max_idle_s, 0);
        assert_eq!(core.auth_token.as_deref(), Some(&b"tok"[..]));
        assert_eq!(core.fence_start, 100);
        assert_eq!(core.fence_ceiling, 200);
        assert_eq!(core.salt_key, [1, 2]);
        let core = config(&[], &[]).core_config(0, u64::MAX, [0, 0]);
        assert_eq!(core.auth_token, None);
    }

    #[test]
    fn listen_addresses() {
        let cfg = config(&["--host", "::", "--port", "1"], &[]);
        assert_eq!(cfg.listen_addr(), "[::]:1");
        assert_eq!(cfg.http_listen_addr(), None);
        let cfg = config(&["--host", "::1", "--http-port", "2"], &[]);
        assert_eq!(cfg.http_listen_addr().as_deref(), Some("[::1]:2"));
        let cfg = config(&["--http-host", "127.0.0.2", "--http-port", "2"], &[]);
        assert_eq!(cfg.http_listen_addr().as_deref(), Some("127.0.0.2:2"));
    }
}
