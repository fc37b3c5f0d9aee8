//! `dflockd-bench`: a load generator for any server that speaks the dflockd v1 line protocol
//! (the Go upstream or this crate's server).
//!
//! One *op* is `l <key> <timeout> [<lease>]` followed by `r <key> <token>`; its latency is
//! measured around the pair. The flags, the header line, the report and the statistics follow
//! upstream `cmd/bench` (spec §10, decision D16: worker i uses `<key>_<i>`, `--shared-key`
//! makes every worker contend on one key). Additions of ours: `--pipeline` (a sliding window
//! of lock ops per connection on distinct keys), `--auth-token`, the choice of I/O engine
//! (`--io`), and two helpers for memory measurements (`--idle-connections`, `--hold`).
//!
//! Three more modes measure other paths to the same core:
//! * `--http ADDR`: the same loop over the HTTP REST front (spec/http.md), one session and one
//!   keep-alive HTTP/1.1 connection per worker, through a minimal hand-written client
//!   (`Content-Length` bodies only). Non-2xx answers and acquire timeouts are counted, not fatal.
//! * `--client`: the same loop through this crate's client library, `dflockd::client`
//!   (`--client-api connection` or `lock`), so the library's overhead over the hand-written
//!   loop is visible.
//! * `--fanout`: signal fan-out (spec/protocol.md §9). `--subscribers` connections `listen` on
//!   channel `--key`; one publisher sends `signal` for `--duration` seconds, `--pipeline`
//!   signals in flight, optionally paced by `--rate`. Each payload carries its send time, so
//!   subscribers measure publish-to-receipt latency; a subscriber the server closes (the
//!   64-frame slow-consumer rule) is reported as an eviction.
//! * `--scaling`, `--freeze N` and `--stats-stall SIZES` (in `bench/scaling.rs`): how the server's cost grows with its
//!   state. All three start the server themselves; see that module.
//!
//! The memory helpers (`--idle-connections`, `--hold`) print the server's resident memory per
//! connection or per lock when given its `--server-pid`.
//!
//! The tool is deliberately self-contained: apart from `--client`, it shares no code with the
//! server, so it cannot inherit the server's bugs, and it works against any implementation of
//! the protocol.
//!
//! Layout of this file: flags and their validation; the reply line buffer and the reply
//! parsers (pure, unit-tested at the bottom); the two transports (blocking sockets driven one
//! OS thread per worker, or non-blocking sockets on a small event loop); the worker loops;
//! the HTTP, client-library and fan-out modes; the RSS helper modes; the statistics and the
//! report.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argh::FromArgs;

#[path = "bench/scaling.rs"]
mod scaling;
use futures_lite::future;
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use smol::lock::Barrier;

/// Longest reply line we accept (bytes before the `\n`). Replies are short; pushed `sig`
/// lines may carry up to 64 KiB payloads (spec §1.3), so that is the bound.
const MAX_REPLY_LINE: usize = 64 * 1024;
/// How much we ask the kernel for per read.
const READ_CHUNK: usize = 16 * 1024;
/// Longest key a server accepts on its 256-byte key line (spec §1.3).
const MAX_KEY_BYTES: usize = 256;
/// Longest auth line a v1.15+ server accepts (spec §1.3).
const MAX_AUTH_BYTES: usize = 64 * 1024;
/// Idle helper connections are pinged this often: well inside upstream's 23 s read timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A blocking socket gives up on a reply this long after the acquire timeout would have.
const REPLY_GRACE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------

#[derive(FromArgs, Debug)]
/// Measure lock acquire+release latency and throughput against a dflockd server.
struct Args {
    /// number of concurrent workers (default 10)
    #[argh(option, default = "10")]
    workers: usize,

    /// measured acquire+release ops per worker (default 50)
    #[argh(option, default = "50")]
    rounds: usize,

    /// lock key prefix; worker i uses <key>_<i> (default "bench")
    #[argh(option, default = "String::from(\"bench\")")]
    key: String,

    /// all workers contend on the literal --key
    #[argh(switch)]
    shared_key: bool,

    /// acquire timeout in seconds (default 30)
    #[argh(option, default = "30")]
    timeout: u64,

    /// comma-separated host:port list; worker i uses servers[i % n] (default 127.0.0.1:6388)
    #[argh(option, default = "String::from(\"127.0.0.1:6388\")")]
    servers: String,

    /// lease TTL in seconds sent with each acquire; 0 omits it so the server default applies
    /// (default 10)
    #[argh(option, default = "10")]
    lease: u64,

    /// persistent connections per worker, rotated per round (default 0, meaning 1)
    #[argh(option, default = "0")]
    connections: usize,

    /// unmeasured warm-up ops per worker; all workers finish them before the clock starts
    /// (default 10)
    #[argh(option, default = "10")]
    warmup: usize,

    /// lock ops kept in flight per worker connection, each on its own key <key>_<i>_<j>
    /// (default 1)
    #[argh(option, default = "1")]
    pipeline: usize,

    /// send `auth` with this token first on every connection
    #[argh(option)]
    auth_token: Option<String>,

    /// i/o engine: "threads" (one OS thread per worker, blocking sockets), "async" (event loop
    /// on --io-threads threads) or "auto" (threads while workers <= cores) (default auto)
    #[argh(option, default = "String::from(\"auto\")")]
    io: String,

    /// event-loop threads for --io async, and for the --fanout subscribers (default 1)
    #[argh(option, default = "1")]
    io_threads: usize,

    /// memory helper: open N idle connections (one ping each), report, keep them open
    #[argh(option)]
    idle_connections: Option<usize>,

    /// memory helper: acquire N distinct locks over --workers connections, --pipeline in flight
    /// each, report, keep them held
    #[argh(option)]
    hold: Option<usize>,

    /// how long the memory helpers keep their connections; 0 = until killed (default 60)
    #[argh(option, default = "60")]
    hold_secs: u64,

    /// HTTP mode: each worker opens a session on the REST API at this host:port and loops
    /// acquire+release over one keep-alive HTTP/1.1 connection; non-2xx answers are counted
    /// (--servers is not used)
    #[argh(option)]
    http: Option<String>,

    /// client mode: the same loop driven through this crate's client library (dflockd::client)
    #[argh(switch)]
    client: bool,

    /// client mode: "connection" (one Connection per worker, lock + release on it) or "lock"
    /// (a Lock handle per worker: dial, l, r and close per op) (default connection)
    #[argh(option)]
    client_api: Option<String>,

    /// fan-out mode: --subscribers connections listen on channel --key, one publisher sends
    /// `signal` for --duration seconds with --pipeline signals in flight
    #[argh(switch)]
    fanout: bool,

    /// fan-out mode: number of subscriber connections (default 100)
    #[argh(option, default = "100")]
    subscribers: usize,

    /// fan-out mode: seconds to publish (default 5)
    #[argh(option, default = "5")]
    duration: u64,

    /// fan-out mode: publish at most this many signals per second, 0 = as fast as the window
    /// allows (default 0)
    #[argh(option, default = "0")]
    rate: u64,

    /// memory helpers: the server's PID, to print its resident memory per connection or lock
    #[argh(option)]
    server_pid: Option<u32>,

    /// scaling mode: grow each dimension through --sizes on a server this bench starts and
    /// measure the operations that touch it; exit 1 if one grows more than 3x
    #[argh(switch)]
    scaling: bool,

    /// freeze mode: one connection takes N slots of one semaphore with 2 s leases; print the
    /// longest ping stall while they expire and while their owner disconnects (exit 1 above
    /// 50 ms)
    #[argh(option)]
    freeze: Option<usize>,

    /// stats-stall mode: for each of these comma-separated sizes n, one connection holds n
    /// locks while another asks for `stats`; print the longest ping stall meanwhile (exit 1
    /// above 10 ms)
    #[argh(option)]
    stats_stall: Option<String>,

    /// scaling mode: comma-separated sizes (default 1000,10000,100000,1000000)
    #[argh(option, default = "String::from(\"1000,10000,100000,1000000\")")]
    sizes: String,

    /// scaling mode: comma-separated dimensions among holders, waiters, keys, subscriptions
    /// (default all)
    #[argh(
        option,
        default = "String::from(\"holders,waiters,keys,subscriptions\")"
    )]
    dims: String,

    /// scaling mode: samples per operation and size (default 1000)
    #[argh(option, default = "1000")]
    samples: usize,

    /// scaling and freeze modes: the server binary to start (default: dflockd next to this
    /// binary)
    #[argh(option)]
    server_bin: Option<String>,
}

/// How the workers drive their sockets.
///
/// Measured against a trivial server on 2 shared cores (bench CPU per op, user + sys): with one
/// worker, blocking threads cost ~10 µs and the event loop ~15 µs (it adds a failed read, a
/// re-arm and an `epoll_wait` per reply); with 50 workers, threads cost ~12 µs and one event
/// loop ~8 µs (one wake-up serves many ready sockets instead of a context switch per reply).
/// Hence `auto`: threads while there are no more workers than cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IoEngine {
    /// One OS thread per worker, blocking `std::net::TcpStream`.
    Threads,
    /// Non-blocking sockets on `io_threads` event-loop threads.
    Async,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    /// Workers loop acquire+release, through `driver`.
    Bench {
        driver: Driver,
    },
    Idle {
        connections: usize,
    },
    Hold {
        locks: usize,
    },
    Fanout(FanoutConfig),
    Scaling(scaling::Plan),
    Freeze {
        slots: usize,
        server_bin: std::path::PathBuf,
    },
    StatsStall {
        sizes: Vec<usize>,
        server_bin: std::path::PathBuf,
    },
}

/// What a lock-bench worker talks through.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Driver {
    /// The line protocol, written by hand (the default).
    Protocol,
    /// The HTTP REST front at this address.
    Http { addr: String },
    /// This crate's client library.
    Client(ClientApi),
}

/// Which layer of `dflockd::client` the client mode measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientApi {
    /// `Connection::lock` / `Connection::release` on a persistent connection.
    Connection,
    /// `Lock::acquire` / `Lock::release`: a fresh connection per op (the handle closes its
    /// connection on release), with renewal armed.
    Lock,
}

/// Fan-out mode settings.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FanoutConfig {
    subscribers: usize,
    duration_s: u64,
    /// Signals per second, 0 = unlimited.
    rate: u64,
}

/// Validated flags.
#[derive(Debug)]
struct Config {
    mode: Mode,
    workers: usize,
    rounds: usize,
    warmup: usize,
    key: String,
    shared_key: bool,
    timeout_s: u64,
    lease_s: u64,
    servers: Vec<String>,
    conns_per_worker: usize,
    pipeline: usize,
    auth_token: Option<String>,
    io: IoEngine,
    io_threads: usize,
    hold_secs: u64,
    server_pid: Option<u32>,
}

impl Config {
    fn from_args(args: Args) -> Result<Config, String> {
        if args.workers == 0 {
            return Err("--workers must be > 0".into());
        }
        if args.rounds == 0 {
            return Err("--rounds must be > 0".into());
        }
        if args.pipeline == 0 {
            return Err("--pipeline must be > 0".into());
        }
        if args.io_threads == 0 {
            return Err("--io-threads must be > 0".into());
        }
        let servers: Vec<String> = args
            .servers
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        if servers.iter().any(String::is_empty) {
            return Err(format!("--servers has an empty entry: {:?}", args.servers));
        }
        if args.key.is_empty()
            || args
                .key
                .bytes()
                .any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Err(format!(
                "--key must be non-empty without whitespace: {:?}",
                args.key
            ));
        }
        if let Some(token) = &args.auth_token {
            if token.contains('\n') || token.len() > MAX_AUTH_BYTES {
                return Err("--auth-token must be one line of at most 64 KiB".into());
            }
        }
        let conns_per_worker = args.connections.max(1);
        if args.pipeline > 1 && conns_per_worker > 1 {
            return Err(
                "--pipeline > 1 keeps its window on one connection; drop --connections".into(),
            );
        }
        if args.pipeline > 1 && args.shared_key {
            // Pipelined acquires on one contended key would queue behind each other on the
            // server, with their own releases stuck behind them: a self-inflicted deadlock.
            return Err(
                "--pipeline > 1 needs distinct keys; it cannot be combined with --shared-key"
                    .into(),
            );
        }
        let chosen: Vec<&str> = [
            ("--idle-connections", args.idle_connections.is_some()),
            ("--hold", args.hold.is_some()),
            ("--http", args.http.is_some()),
            ("--client", args.client),
            ("--fanout", args.fanout),
            ("--scaling", args.scaling),
            ("--freeze", args.freeze.is_some()),
            ("--stats-stall", args.stats_stall.is_some()),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
        if chosen.len() > 1 {
            return Err(format!("{} are exclusive", chosen.join(" and ")));
        }
        if args.client_api.is_some() && !args.client {
            return Err("--client-api needs --client".into());
        }
        let client_api = match args.client_api.as_deref() {
            None | Some("connection") => ClientApi::Connection,
            Some("lock") => ClientApi::Lock,
            Some(other) => {
                return Err(format!(
                    "--client-api must be connection or lock, not {other:?}"
                ))
            }
        };
        if args.server_pid.is_some() && args.idle_connections.is_none() && args.hold.is_none() {
            return Err("--server-pid is for --idle-connections and --hold".into());
        }
        let server_bin = args
            .server_bin
            .map_or_else(scaling::sibling_server, std::path::PathBuf::from);
        let mode = match (args.idle_connections, args.hold) {
            _ if args.scaling => {
                if args.samples == 0 {
                    return Err("--samples must be > 0".into());
                }
                let dims = args
                    .dims
                    .split(',')
                    .map(|d| scaling::Dim::parse(d.trim()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--dims: {e}"))?;
                Mode::Scaling(scaling::Plan {
                    server_bin,
                    sizes: scaling::parse_sizes(&args.sizes)?,
                    dims,
                    samples: args.samples,
                })
            }
            _ if args.stats_stall.is_some() => Mode::StatsStall {
                sizes: scaling::parse_sizes(args.stats_stall.as_deref().unwrap_or_default())
                    .map_err(|e| format!("--stats-stall: {e}"))?,
                server_bin,
            },
            _ if args.freeze.is_some() => match args.freeze {
                Some(0) | None => return Err("--freeze must be > 0".into()),
                Some(slots) => Mode::Freeze { slots, server_bin },
            },
            (Some(0), _) => return Err("--idle-connections must be > 0".into()),
            (_, Some(0)) => return Err("--hold must be > 0".into()),
            (Some(n), _) => Mode::Idle { connections: n },
            (_, Some(n)) => Mode::Hold { locks: n },
            (None, None) if args.fanout => {
                if args.subscribers == 0 {
                    return Err("--subscribers must be > 0".into());
                }
                if args.duration == 0 {
                    return Err("--duration must be > 0".into());
                }
                if args.key.contains(['*', '>']) {
                    return Err(format!(
                        "--fanout publishes on channel --key, which cannot hold * or >: {:?}",
                        args.key
                    ));
                }
                Mode::Fanout(FanoutConfig {
                    subscribers: args.subscribers,
                    duration_s: args.duration,
                    rate: args.rate,
                })
            }
            (None, None) => {
                let driver = if let Some(addr) = args.http {
                    if addr.trim().is_empty() {
                        return Err("--http needs a host:port".into());
                    }
                    Driver::Http {
                        addr: addr.trim().to_string(),
                    }
                } else if args.client {
                    Driver::Client(client_api)
                } else {
                    Driver::Protocol
                };
                if driver != Driver::Protocol && args.pipeline > 1 {
                    return Err("--pipeline > 1 needs the line-protocol mode".into());
                }
                let one_connection = matches!(
                    driver,
                    Driver::Http { .. } | Driver::Client(ClientApi::Lock)
                );
                if one_connection && conns_per_worker > 1 {
                    return Err(
                        "--connections > 1 is for the line protocol and --client-api connection"
                            .into(),
                    );
                }
                Mode::Bench { driver }
            }
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let io = match args.io.as_str() {
            "threads" => IoEngine::Threads,
            "async" => IoEngine::Async,
            "auto" if args.workers <= cores => IoEngine::Threads,
            "auto" => IoEngine::Async,
            other => {
                return Err(format!(
                    "--io must be threads, async or auto, not {other:?}"
                ))
            }
        };
        let cfg = Config {
            mode,
            workers: args.workers,
            rounds: args.rounds,
            warmup: args.warmup,
            key: args.key,
            shared_key: args.shared_key,
            timeout_s: args.timeout,
            lease_s: args.lease,
            servers,
            conns_per_worker,
            pipeline: args.pipeline,
            auth_token: args.auth_token,
            io,
            io_threads: args.io_threads,
            hold_secs: args.hold_secs,
            server_pid: args.server_pid,
        };
        let longest = cfg.longest_key_len();
        if longest > MAX_KEY_BYTES {
            return Err(format!(
                "--key is too long: generated keys reach {longest} bytes, servers accept {MAX_KEY_BYTES}"
            ));
        }
        Ok(cfg)
    }

    /// The key worker `id` uses when `--pipeline` is 1.
    fn worker_key(&self, id: usize) -> String {
        if self.shared_key {
            self.key.clone()
        } else {
            format!("{}_{id}", self.key)
        }
    }

    /// The keys of worker `id`'s window when `--pipeline` is above 1.
    fn window_keys(&self, id: usize) -> Vec<String> {
        (0..self.pipeline)
            .map(|j| format!("{}_{id}_{j}", self.key))
            .collect()
    }

    fn hold_key(&self, j: usize) -> String {
        format!("{}_hold_{j}", self.key)
    }

    fn longest_key_len(&self) -> usize {
        let digits = |n: usize| n.saturating_sub(1).to_string().len();
        let bench = match (self.shared_key, self.pipeline) {
            // The fan-out channel is the key itself.
            _ if matches!(self.mode, Mode::Fanout(_)) => self.key.len(),
            (true, _) => self.key.len(),
            (false, 1) => self.key.len() + 1 + digits(self.workers),
            (false, p) => self.key.len() + 2 + digits(self.workers) + digits(p),
        };
        let hold = match &self.mode {
            Mode::Hold { locks } => self.key.len() + "_hold_".len() + digits(*locks),
            _ => 0,
        };
        bench.max(hold)
    }

    /// A blocking read gives up this long after it was issued.
    fn reply_deadline(&self) -> Duration {
        Duration::from_secs(self.timeout_s).saturating_add(REPLY_GRACE)
    }
}

/// Accept Go `flag` spellings too (`-workers 5`, `--workers=5`, `-shared-key=true`), since the
/// upstream tool is a Go program and scripts written for it should run unchanged.
fn normalize_args(raw: &[String]) -> Result<Vec<String>, String> {
    const SWITCHES: [&str; 5] = ["shared-key", "client", "fanout", "scaling", "help"];
    let mut out = Vec::with_capacity(raw.len());
    let mut value_expected = false;
    for arg in raw {
        if value_expected {
            out.push(arg.clone());
            value_expected = false;
            continue;
        }
        if arg == "-h" {
            out.push("--help".to_string());
            continue;
        }
        let name = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic()) => rest,
            _ => {
                out.push(arg.clone());
                continue;
            }
        };
        match name.split_once('=') {
            Some((switch, value)) if SWITCHES.contains(&switch) && switch != "help" => {
                match value {
                    "1" | "t" | "T" | "true" | "TRUE" | "True" => out.push(format!("--{switch}")),
                    "0" | "f" | "F" | "false" | "FALSE" | "False" => {}
                    _ => return Err(format!("invalid boolean value {value:?} for --{switch}")),
                }
            }
            Some((name, value)) => {
                out.push(format!("--{name}"));
                out.push(value.to_string());
            }
            None => {
                out.push(format!("--{name}"));
                value_expected = !SWITCHES.contains(&name);
            }
        }
    }
    Ok(out)
}

/// Parses the command line; `Err` carries the exit code and what to print.
fn parse_command_line(raw: &[String]) -> Result<Config, (u8, String)> {
    let normalized = normalize_args(raw).map_err(|e| (2, format!("bench: {e}")))?;
    let strs: Vec<&str> = normalized.iter().map(String::as_str).collect();
    let args = Args::from_args(&["dflockd-bench"], &strs).map_err(|early| match early.status {
        Ok(()) => (0, early.output),
        Err(()) => (2, early.output),
    })?;
    Config::from_args(args).map_err(|e| (2, format!("bench: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// Everything that ends a worker. Peers send what they send: nothing here panics on it.
#[derive(Debug)]
enum BenchError {
    Connect {
        addr: String,
        source: io::Error,
    },
    Io(io::Error),
    Closed,
    LineTooLong,
    /// The server answered `timeout` to an acquire.
    AcquireTimeout {
        key: String,
    },
    /// Any reply we did not ask for or cannot use (`error`, `error_max_locks`, garbage ...).
    Unexpected {
        request: &'static str,
        key: String,
        reply: String,
    },
    /// A reply arrived with no request outstanding.
    Unsolicited {
        reply: String,
    },
    /// An HTTP response we cannot parse, or an answer the HTTP worker cannot go on from.
    Http(String),
    /// A call of the client library failed (client mode).
    Client {
        request: &'static str,
        key: String,
        source: dflockd::client::Error,
    },
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Connect { addr, source } => write!(f, "connect {addr}: {source}"),
            BenchError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                write!(f, "no reply from server in time ({e})")
            }
            BenchError::Io(e) => write!(f, "i/o: {e}"),
            BenchError::Closed => write!(f, "server closed the connection"),
            BenchError::LineTooLong => {
                write!(f, "reply line longer than {MAX_REPLY_LINE} bytes")
            }
            BenchError::AcquireTimeout { key } => write!(f, "acquire timed out (key {key:?})"),
            BenchError::Unexpected {
                request,
                key,
                reply,
            } => {
                write!(f, "unexpected reply to {request:?} on key {key:?}: {reply}")
            }
            BenchError::Unsolicited { reply } => write!(f, "reply without a request: {reply}"),
            BenchError::Http(detail) => write!(f, "http: {detail}"),
            BenchError::Client {
                request,
                key,
                source,
            } => write!(f, "client library {request} on key {key:?}: {source}"),
        }
    }
}

impl From<io::Error> for BenchError {
    fn from(e: io::Error) -> Self {
        BenchError::Io(e)
    }
}

/// A reply line shown in an error message: lossy UTF-8, quoted, bounded.
fn show_reply(line: &[u8]) -> String {
    const SHOWN: usize = 120;
    let text = String::from_utf8_lossy(&line[..line.len().min(SHOWN)]);
    let more = if line.len() > SHOWN { "..." } else { "" };
    format!("{text:?}{more}")
}

fn unexpected(request: &'static str, key: &str, line: &[u8]) -> BenchError {
    if request == "l" && line == b"timeout" {
        return BenchError::AcquireTimeout {
            key: key.to_string(),
        };
    }
    BenchError::Unexpected {
        request,
        key: key.to_string(),
        reply: show_reply(line),
    }
}

/// A grant is `ok <token> <lease>`; returns the token. The lease field is not needed, so it
/// is tolerated when missing, but nothing else may follow.
fn parse_grant(line: &[u8]) -> Option<&[u8]> {
    let mut fields = line.split(|&b| b == b' ');
    if fields.next() != Some(b"ok") {
        return None;
    }
    let token = fields.next().filter(|t| !t.is_empty())?;
    match (fields.next(), fields.next()) {
        (None, None) => Some(token),
        (Some(lease), None) if !lease.is_empty() && lease.iter().all(u8::is_ascii_digit) => {
            Some(token)
        }
        _ => None,
    }
}

/// Reply buffer: bytes accumulate across TCP segments and come out as complete lines.
///
/// Lines are returned as ranges into `data` so that a caller can keep using the other
/// fields of its connection while it looks at a line. Pushed `sig ` lines (pub/sub, spec §5.6)
/// are skipped (no reply ever begins with `sig `) unless `keep_pushes` was called, which the
/// fan-out subscribers do once their `listen` is answered.
struct LineBuf {
    data: Box<[u8]>,
    /// First byte not yet returned.
    start: usize,
    /// End of the bytes read so far.
    end: usize,
    /// Bytes before this index (and from `start`) are known to hold no `\n`.
    scanned: usize,
    /// Whether `sig ` lines are returned too.
    pushes: bool,
}

impl LineBuf {
    fn new() -> LineBuf {
        LineBuf {
            data: vec![0; MAX_REPLY_LINE + 1 + READ_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            scanned: 0,
            pushes: false,
        }
    }

    /// From now on, return pushed `sig ` lines too.
    fn keep_pushes(&mut self) {
        self.pushes = true;
    }

    /// Free space to read into, at least `READ_CHUNK` bytes: `take_line` never leaves more
    /// than `MAX_REPLY_LINE` unconsumed bytes behind.
    fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
        } else if self.data.len() - self.end < READ_CHUNK {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    /// Records that `n` bytes were read into `spare()`.
    fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }

    /// The next complete reply line (trailing `\r`s stripped), if one is buffered.
    fn take_line(&mut self) -> Result<Option<Range<usize>>, BenchError> {
        loop {
            let Some(offset) = self.data[self.scanned..self.end]
                .iter()
                .position(|&b| b == b'\n')
            else {
                self.scanned = self.end;
                if self.end - self.start > MAX_REPLY_LINE {
                    return Err(BenchError::LineTooLong);
                }
                return Ok(None);
            };
            let newline = self.scanned + offset;
            if newline - self.start > MAX_REPLY_LINE {
                return Err(BenchError::LineTooLong);
            }
            let mut line_end = newline;
            while line_end > self.start && self.data[line_end - 1] == b'\r' {
                line_end -= 1;
            }
            let line = self.start..line_end;
            self.start = newline + 1;
            self.scanned = self.start;
            if self.pushes || !self.data[line.clone()].starts_with(b"sig ") {
                return Ok(Some(line));
            }
        }
    }

    fn line(&self, range: Range<usize>) -> &[u8] {
        &self.data[range]
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

fn push_lock(out: &mut Vec<u8>, key: &str, timeout_s: u64, lease_s: u64) {
    out.extend_from_slice(b"l\n");
    out.extend_from_slice(key.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(timeout_s.to_string().as_bytes());
    if lease_s > 0 {
        out.push(b' ');
        out.extend_from_slice(lease_s.to_string().as_bytes());
    }
    out.push(b'\n');
}

fn push_release(out: &mut Vec<u8>, key: &str, token: &[u8]) {
    out.extend_from_slice(b"r\n");
    out.extend_from_slice(key.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(token);
    out.push(b'\n');
}

const PING: &[u8] = b"ping\n_\n\n";

// ---------------------------------------------------------------------------------------------
// Transports and connections
// ---------------------------------------------------------------------------------------------

/// A byte stream the worker loops can drive. The loops are written once, as async code; the
/// blocking transport's futures simply complete on first poll, so a worker thread runs them
/// under a trivial `block_on` and pays exactly one syscall per read or write.
trait Transport: Sized {
    async fn connect(addr: &str, reply_deadline: Duration) -> io::Result<Self>;
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// Blocking socket: for one OS thread per worker.
struct Blocking(TcpStream);

impl Transport for Blocking {
    async fn connect(addr: &str, reply_deadline: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(reply_deadline))?;
        stream.set_write_timeout(Some(reply_deadline))?;
        Ok(Blocking(stream))
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// Non-blocking socket on the async-io reactor: for many workers on few threads.
struct Evented(async_net::TcpStream);

impl Transport for Evented {
    async fn connect(addr: &str, _reply_deadline: Duration) -> io::Result<Self> {
        let stream = async_net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Evented(stream))
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes).await
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }
}

/// One connection: the socket, its reply buffer and its pending output.
struct Client<T> {
    io: T,
    inbuf: LineBuf,
    out: Vec<u8>,
}

impl<T: Transport> Client<T> {
    /// Connects and, when configured, authenticates.
    async fn connect(addr: &str, cfg: &Config) -> Result<Client<T>, BenchError> {
        let io = T::connect(addr, cfg.reply_deadline())
            .await
            .map_err(|source| BenchError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let mut client = Client {
            io,
            inbuf: LineBuf::new(),
            out: Vec::with_capacity(4096),
        };
        if let Some(token) = &cfg.auth_token {
            client.out.extend_from_slice(b"auth\n_\n");
            client.out.extend_from_slice(token.as_bytes());
            client.out.push(b'\n');
            client.flush().await?;
            let line = client.reply().await?;
            if line != b"ok" {
                return Err(BenchError::Unexpected {
                    request: "auth",
                    key: "_".into(),
                    reply: show_reply(line),
                });
            }
        }
        Ok(client)
    }

    async fn flush(&mut self) -> Result<(), BenchError> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads at least one more byte into the reply buffer.
    async fn fill(&mut self) -> Result<(), BenchError> {
        let n = self.io.read(self.inbuf.spare()).await?;
        if n == 0 {
            return Err(BenchError::Closed);
        }
        self.inbuf.filled(n);
        Ok(())
    }

    /// The next reply line, reading as needed.
    async fn reply(&mut self) -> Result<&[u8], BenchError> {
        loop {
            if let Some(range) = self.inbuf.take_line()? {
                return Ok(self.inbuf.line(range));
            }
            self.fill().await?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------------

/// The warm-up/measure boundary: every worker and the main thread meet at `warmed_up`, the
/// main thread reads the clock, then everyone meets at `go`. Reading the clock between the two
/// barriers means the measured window can only be too long, never too short.
struct Gate {
    warmed_up: Barrier,
    go: Barrier,
}

impl Gate {
    fn new(workers: usize) -> Gate {
        Gate {
            warmed_up: Barrier::new(workers + 1),
            go: Barrier::new(workers + 1),
        }
    }

    async fn pass(&self) {
        self.warmed_up.wait().await;
        self.go.wait().await;
    }

    /// The main thread's side: returns the start of the measured phase.
    fn open(&self) -> Instant {
        future::block_on(self.warmed_up.wait());
        let start = Instant::now();
        future::block_on(self.go.wait());
        start
    }
}

/// What a worker hands back: per-op latencies of the measured phase, when it finished, and
/// the failed ops it counted instead of stopping (HTTP mode only).
struct WorkerOutcome {
    latencies_ns: Vec<u64>,
    finished: Instant,
    failures: Failures,
}

/// Ops that failed without ending the worker.
#[derive(Default)]
struct Failures {
    count: u64,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, what: String) {
        self.count += 1;
        self.first.get_or_insert(what);
    }

    fn merge(&mut self, other: Failures) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

fn elapsed_ns(since: Instant, now: Instant) -> u64 {
    u64::try_from(now.duration_since(since).as_nanos()).unwrap_or(u64::MAX)
}

async fn bench_worker<T: Transport>(
    id: usize,
    cfg: &Config,
    gate: &Gate,
) -> Result<WorkerOutcome, BenchError> {
    let addr = &cfg.servers[id % cfg.servers.len()];
    let mut clients = Vec::with_capacity(cfg.conns_per_worker);
    for _ in 0..cfg.conns_per_worker {
        clients.push(Client::<T>::connect(addr, cfg).await?);
    }
    let mut latencies_ns = Vec::with_capacity(cfg.rounds.max(cfg.warmup));
    if cfg.pipeline == 1 {
        let key = cfg.worker_key(id);
        one_at_a_time(&mut clients, &key, cfg, cfg.warmup, &mut latencies_ns).await?;
        latencies_ns.clear();
        gate.pass().await;
        one_at_a_time(&mut clients, &key, cfg, cfg.rounds, &mut latencies_ns).await?;
    } else {
        let keys = cfg.window_keys(id);
        let client = &mut clients[0];
        windowed(client, &keys, cfg, cfg.warmup, &mut latencies_ns).await?;
        latencies_ns.clear();
        gate.pass().await;
        windowed(client, &keys, cfg, cfg.rounds, &mut latencies_ns).await?;
    }
    Ok(WorkerOutcome {
        latencies_ns,
        finished: Instant::now(),
        failures: Failures::default(),
    })
}

/// `ops` acquire+release pairs on `key`, one request on the wire at a time, rotating over the
/// worker's connections per op (upstream `--connections`).
async fn one_at_a_time<T: Transport>(
    clients: &mut [Client<T>],
    key: &str,
    cfg: &Config,
    ops: usize,
    latencies_ns: &mut Vec<u64>,
) -> Result<(), BenchError> {
    let mut lock_request = Vec::new();
    push_lock(&mut lock_request, key, cfg.timeout_s, cfg.lease_s);
    let mut token = Vec::with_capacity(64);
    let connections = clients.len();
    for op in 0..ops {
        let client = &mut clients[op % connections];
        let t0 = Instant::now();
        client.io.write_all(&lock_request).await?;
        let line = client.reply().await?;
        let granted = parse_grant(line).ok_or_else(|| unexpected("l", key, line))?;
        token.clear();
        token.extend_from_slice(granted);
        push_release(&mut client.out, key, &token);
        client.flush().await?;
        let line = client.reply().await?;
        if line != b"ok" {
            return Err(unexpected("r", key, line));
        }
        latencies_ns.push(elapsed_ns(t0, Instant::now()));
    }
    Ok(())
}

/// `ops` acquire+release pairs over a sliding window of `keys.len()` keys on one connection.
///
/// Each key is a slot that is always either acquiring or releasing; the server answers in
/// request order, so a FIFO of slot indices tells which slot a reply belongs to. All replies
/// already buffered are handled before the follow-up requests go out in one write.
async fn windowed<T: Transport>(
    client: &mut Client<T>,
    keys: &[String],
    cfg: &Config,
    ops: usize,
    latencies_ns: &mut Vec<u64>,
) -> Result<(), BenchError> {
    struct Slot {
        lock_request: Vec<u8>,
        started: Instant,
        releasing: bool,
    }
    let now = Instant::now();
    let mut slots: Vec<Slot> = keys
        .iter()
        .map(|key| {
            let mut lock_request = Vec::new();
            push_lock(&mut lock_request, key, cfg.timeout_s, cfg.lease_s);
            Slot {
                lock_request,
                started: now,
                releasing: false,
            }
        })
        .collect();
    let mut in_flight: VecDeque<usize> = VecDeque::with_capacity(keys.len());
    let mut issued = 0;
    let mut done = 0;
    for (j, slot) in slots.iter_mut().enumerate().take(ops) {
        client.out.extend_from_slice(&slot.lock_request);
        in_flight.push_back(j);
        issued += 1;
    }
    while done < ops {
        client.flush().await?;
        client.fill().await?;
        while let Some(range) = client.inbuf.take_line()? {
            let line = client.inbuf.line(range);
            let j = in_flight
                .pop_front()
                .ok_or_else(|| BenchError::Unsolicited {
                    reply: show_reply(line),
                })?;
            let slot = &mut slots[j];
            if !slot.releasing {
                let token = parse_grant(line).ok_or_else(|| unexpected("l", &keys[j], line))?;
                push_release(&mut client.out, &keys[j], token);
                slot.releasing = true;
                in_flight.push_back(j);
            } else {
                if line != b"ok" {
                    return Err(unexpected("r", &keys[j], line));
                }
                let now = Instant::now();
                latencies_ns.push(elapsed_ns(slot.started, now));
                done += 1;
                if issued < ops {
                    client.out.extend_from_slice(&slot.lock_request);
                    slot.started = now;
                    slot.releasing = false;
                    in_flight.push_back(j);
                    issued += 1;
                }
            }
        }
    }
    Ok(())
}

/// Prints the first worker error and ends the process with status 1; later errors are not
/// printed (they are usually the same refusal seen by every worker).
fn fail(worker: usize, error: &BenchError) -> ! {
    static FIRST: Mutex<()> = Mutex::new(());
    let _guard = FIRST.lock();
    let _ = writeln!(io::stderr(), "worker {worker} error: {error}");
    std::process::exit(1)
}

/// One worker on an OS thread of its own, blocking sockets.
fn worker_on_thread(
    id: usize,
    cfg: &Config,
    driver: &Driver,
    gate: &Gate,
) -> Result<WorkerOutcome, BenchError> {
    match driver {
        Driver::Protocol => future::block_on(bench_worker::<Blocking>(id, cfg, gate)),
        Driver::Http { addr } => future::block_on(http_worker::<Blocking>(id, cfg, gate, addr)),
        // The library's sockets are async-io's: `smol::block_on` runs the reactor on this
        // thread instead of handing every wake-up over from async-io's fallback thread.
        Driver::Client(api) => smol::block_on(client_worker(id, cfg, gate, *api)),
    }
}

/// One worker as a task on an event loop.
async fn worker_on_loop(
    id: usize,
    cfg: &Config,
    driver: &Driver,
    gate: &Gate,
) -> Result<WorkerOutcome, BenchError> {
    match driver {
        Driver::Protocol => bench_worker::<Evented>(id, cfg, gate).await,
        Driver::Http { addr } => http_worker::<Evented>(id, cfg, gate, addr).await,
        Driver::Client(api) => client_worker(id, cfg, gate, *api).await,
    }
}

/// Spreads tasks `0..count` over `threads` event-loop threads (task `i` on
/// loop `i % threads`); each thread returns its tasks' outputs in order.
fn spawn_on_loops<T, Fut>(
    threads: usize,
    count: usize,
    task: impl Fn(usize) -> Fut + Send + Sync + 'static,
) -> Vec<std::thread::JoinHandle<Vec<T>>>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let threads = threads.max(1);
    let task = Arc::new(task);
    (0..threads.min(count))
        .map(|thread| {
            let task = Arc::clone(&task);
            std::thread::spawn(move || {
                let executor = smol::LocalExecutor::new();
                let tasks: Vec<_> = (thread..count)
                    .step_by(threads)
                    .map(|id| executor.spawn(task(id)))
                    .collect();
                smol::block_on(executor.run(async {
                    let mut outcomes = Vec::with_capacity(tasks.len());
                    for task in tasks {
                        outcomes.push(task.await);
                    }
                    outcomes
                }))
            })
        })
        .collect()
}

/// Runs every worker; returns the start of the measured phase and the outcomes.
fn run_workers(cfg: &Arc<Config>, driver: &Driver) -> (Instant, Vec<WorkerOutcome>) {
    let gate = Arc::new(Gate::new(cfg.workers));
    let handles: Vec<std::thread::JoinHandle<Vec<WorkerOutcome>>> = match cfg.io {
        IoEngine::Threads => (0..cfg.workers)
            .map(|id| {
                let (cfg, gate, driver) = (Arc::clone(cfg), Arc::clone(&gate), driver.clone());
                std::thread::spawn(move || match worker_on_thread(id, &cfg, &driver, &gate) {
                    Ok(outcome) => vec![outcome],
                    Err(e) => fail(id, &e),
                })
            })
            .collect(),
        IoEngine::Async => {
            let (shared_cfg, gate, driver) = (Arc::clone(cfg), Arc::clone(&gate), driver.clone());
            spawn_on_loops(cfg.io_threads, cfg.workers, move |id| {
                let (cfg, gate, driver) =
                    (Arc::clone(&shared_cfg), Arc::clone(&gate), driver.clone());
                async move {
                    match worker_on_loop(id, &cfg, &driver, &gate).await {
                        Ok(outcome) => outcome,
                        Err(e) => fail(id, &e),
                    }
                }
            })
        }
    };
    let start = gate.open();
    let mut outcomes = Vec::with_capacity(cfg.workers);
    for handle in handles {
        match handle.join() {
            Ok(mut part) => outcomes.append(&mut part),
            // A worker thread can only panic on a bug of ours; its message is already printed.
            Err(_) => std::process::exit(1),
        }
    }
    (start, outcomes)
}

// ---------------------------------------------------------------------------------------------
// HTTP mode
// ---------------------------------------------------------------------------------------------

/// Longest response head (status line and headers) we accept.
const MAX_HTTP_HEAD: usize = 16 * 1024;
/// Longest response body we accept; the API answers with small JSON objects.
const MAX_HTTP_BODY: usize = 1024 * 1024;

/// Why a response cannot be read. The server is a peer: nothing it sends panics the bench.
#[derive(Debug, PartialEq, Eq)]
enum HttpError {
    HeadTooLong,
    BadStatusLine(String),
    BadHeader(String),
    BadContentLength(String),
    BodyTooLong(usize),
    /// A `Transfer-Encoding` (chunked or any other): this client reads `Content-Length`
    /// bodies only, which is what the server sends.
    TransferEncoding(String),
    /// A response with a body but no `Content-Length` (it would end at the close).
    NoLength,
    /// A 1xx response: we never send `Expect`, so none should come.
    Interim(u16),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::HeadTooLong => write!(f, "response head longer than {MAX_HTTP_HEAD} bytes"),
            HttpError::BadStatusLine(line) => write!(f, "malformed status line {line}"),
            HttpError::BadHeader(line) => write!(f, "malformed header line {line}"),
            HttpError::BadContentLength(v) => write!(f, "unusable Content-Length {v}"),
            HttpError::BodyTooLong(n) => {
                write!(f, "response body of {n} bytes, more than {MAX_HTTP_BODY}")
            }
            HttpError::TransferEncoding(v) => {
                write!(
                    f,
                    "Transfer-Encoding {v} is not supported (Content-Length only)"
                )
            }
            HttpError::NoLength => write!(f, "response body without Content-Length"),
            HttpError::Interim(code) => write!(f, "unexpected interim response {code}"),
        }
    }
}

/// One parsed response.
#[derive(Debug, PartialEq, Eq)]
struct HttpResponse {
    status: u16,
    /// The server closes the connection after this response.
    close: bool,
    body: Vec<u8>,
}

/// Parses the response at the start of `buf`: `Ok(None)` while it is incomplete, else the
/// response and the number of bytes it took (a push parser, like the reply `LineBuf`).
fn parse_response(buf: &[u8]) -> Result<Option<(HttpResponse, usize)>, HttpError> {
    // Fail at once on a peer that does not speak HTTP (the line-protocol port, say) rather
    // than wait for a blank line that never comes.
    let prefix = buf.len().min(5);
    if buf[..prefix] != b"HTTP/"[..prefix] {
        let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
        return Err(HttpError::BadStatusLine(show_reply(line)));
    }
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HTTP_HEAD + 3 {
            return Err(HttpError::HeadTooLong);
        }
        return Ok(None);
    };
    if head_len > MAX_HTTP_HEAD {
        return Err(HttpError::HeadTooLong);
    }
    let mut lines = buf[..head_len]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let (http10, status) = parse_status_line(status_line)
        .ok_or_else(|| HttpError::BadStatusLine(show_reply(status_line)))?;
    if (100..200).contains(&status) {
        return Err(HttpError::Interim(status));
    }
    let mut content_length: Option<usize> = None;
    let (mut close, mut keep_alive) = (false, false);
    for line in lines {
        let bad = || HttpError::BadHeader(show_reply(line));
        let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty()
            || name
                .iter()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad());
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| HttpError::BadContentLength(show_reply(value)))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::BadContentLength(show_reply(value)));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !value.eq_ignore_ascii_case(b"identity") {
                return Err(HttpError::TransferEncoding(show_reply(value)));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let body_len = match (status, content_length) {
        (204 | 304, _) => 0,
        (_, Some(n)) if n > MAX_HTTP_BODY => return Err(HttpError::BodyTooLong(n)),
        (_, Some(n)) => n,
        (_, None) => return Err(HttpError::NoLength),
    };
    let body_start = head_len + 4;
    let Some(body) = buf.get(body_start..body_start + body_len) else {
        return Ok(None);
    };
    let response = HttpResponse {
        status,
        close: close || (http10 && !keep_alive),
        body: body.to_vec(),
    };
    Ok(Some((response, body_start + body_len)))
}

/// `HTTP/1.x NNN [reason]` → (is HTTP/1.0, status).
fn parse_status_line(line: &[u8]) -> Option<(bool, u16)> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let (code, reason) = match rest.iter().position(|&b| b == b' ') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if !matches!(minor, b'0' | b'1')
        || code.len() != 3
        || !code.iter().all(u8::is_ascii_digit)
        || reason.is_some_and(|r| r.iter().any(|&b| b.is_ascii_control() && b != b'\t'))
    {
        return None;
    }
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (100..=599)
        .contains(&status)
        .then_some((minor == b'0', status))
}

/// A key as one path segment: everything but RFC 3986 unreserved bytes percent-encoded.
fn encode_path_segment(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Appends a `POST` with a JSON body (possibly empty).
fn push_http_post(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    session: Option<&str>,
    bearer: Option<&str>,
    body: &[u8],
) {
    out.extend_from_slice(format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    if let Some(session) = session {
        out.extend_from_slice(format!("X-Dflockd-Session: {session}\r\n").as_bytes());
    }
    if let Some(token) = bearer {
        out.extend_from_slice(format!("Authorization: Bearer {token}\r\n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
}

/// A response shown in a failure count: status and the start of the body.
fn show_response(what: &str, response: &HttpResponse) -> String {
    format!(
        "{what}: HTTP {} {}",
        response.status,
        show_reply(response.body.trim_ascii_end())
    )
}

/// The token of an acquire answer `{"status":"ok","token":...}`; anything else (a
/// `{"status":"timeout"}` included) is a failure to count.
fn parse_acquired(body: &[u8]) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("acquire: unreadable body {} ({e})", show_reply(body)))?;
    match (value.get("status"), value.get("token")) {
        (Some(status), Some(serde_json::Value::String(token))) if status == "ok" => {
            Ok(token.clone())
        }
        (Some(status), _) if status == "timeout" => Err("acquire: timeout".to_string()),
        _ => Err(format!("acquire: unexpected body {}", show_reply(body))),
    }
}

/// One keep-alive HTTP/1.1 connection and the session it works in; reconnects after a
/// response that announced a close.
struct HttpClient<'a, T> {
    addr: &'a str,
    cfg: &'a Config,
    io: Option<T>,
    /// Unparsed response bytes.
    inbuf: Vec<u8>,
    chunk: Box<[u8]>,
    out: Vec<u8>,
    session: String,
}

impl<'a, T: Transport> HttpClient<'a, T> {
    fn new(addr: &'a str, cfg: &'a Config) -> Self {
        HttpClient {
            addr,
            cfg,
            io: None,
            inbuf: Vec::with_capacity(READ_CHUNK),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::with_capacity(1024),
            session: String::new(),
        }
    }

    /// Sends one `POST` and reads its response.
    async fn post(
        &mut self,
        path: &str,
        with_session: bool,
        body: &[u8],
    ) -> Result<HttpResponse, BenchError> {
        let io = match &mut self.io {
            Some(io) => io,
            None => {
                let io = T::connect(self.addr, self.cfg.reply_deadline())
                    .await
                    .map_err(|source| BenchError::Connect {
                        addr: self.addr.to_string(),
                        source,
                    })?;
                self.inbuf.clear();
                self.io.insert(io)
            }
        };
        self.out.clear();
        let session = with_session.then_some(self.session.as_str());
        let bearer = self.cfg.auth_token.as_deref();
        push_http_post(&mut self.out, self.addr, path, session, bearer, body);
        io.write_all(&self.out).await?;
        loop {
            match parse_response(&self.inbuf).map_err(|e| BenchError::Http(e.to_string()))? {
                Some((response, used)) => {
                    self.inbuf.drain(..used);
                    if response.close {
                        self.io = None;
                    }
                    return Ok(response);
                }
                None => {
                    let n = io.read(&mut self.chunk).await?;
                    if n == 0 {
                        return Err(BenchError::Closed);
                    }
                    self.inbuf.extend_from_slice(&self.chunk[..n]);
                }
            }
        }
    }

    /// `POST /v1/sessions`; without a session nothing else can be measured.
    async fn open_session(&mut self) -> Result<(), BenchError> {
        let response = self.post("/v1/sessions", false, b"").await?;
        let id = (response.status == 200)
            .then(|| serde_json::from_slice::<serde_json::Value>(&response.body).ok())
            .flatten()
            .and_then(|v| v.get("session_id")?.as_str().map(str::to_string))
            .ok_or_else(|| BenchError::Http(show_response("create session", &response)))?;
        self.session = id;
        Ok(())
    }
}

async fn http_worker<T: Transport>(
    id: usize,
    cfg: &Config,
    gate: &Gate,
    addr: &str,
) -> Result<WorkerOutcome, BenchError> {
    let mut http = HttpClient::<T>::new(addr, cfg);
    http.open_session().await?;
    let key = encode_path_segment(&cfg.worker_key(id));
    let paths = (
        format!("/v1/locks/{key}"),
        format!("/v1/locks/{key}/release"),
    );
    let acquire_body = if cfg.lease_s > 0 {
        format!(
            "{{\"acquire_timeout_s\":{},\"lease_ttl_s\":{}}}",
            cfg.timeout_s, cfg.lease_s
        )
    } else {
        format!("{{\"acquire_timeout_s\":{}}}", cfg.timeout_s)
    };
    let mut latencies_ns = Vec::with_capacity(cfg.rounds.max(cfg.warmup));
    let mut failures = Failures::default();
    for (measured, phase_ops) in [(false, cfg.warmup), (true, cfg.rounds)] {
        if measured {
            gate.pass().await;
        }
        latencies_ns.clear();
        failures = Failures::default();
        for _ in 0..phase_ops {
            let t0 = Instant::now();
            match http_lock_op(&mut http, &paths, acquire_body.as_bytes()).await? {
                Ok(()) => latencies_ns.push(elapsed_ns(t0, Instant::now())),
                Err(what) => failures.add(what),
            }
        }
    }
    Ok(WorkerOutcome {
        latencies_ns,
        finished: Instant::now(),
        failures,
    })
}

/// One acquire + release. `Ok(Err(_))` is a failed op to count (a non-2xx answer, an acquire
/// timeout); a `410 session_gone` also opens a new session so the next op can succeed.
async fn http_lock_op<T: Transport>(
    http: &mut HttpClient<'_, T>,
    (acquire_path, release_path): &(String, String),
    acquire_body: &[u8],
) -> Result<Result<(), String>, BenchError> {
    let response = http.post(acquire_path, true, acquire_body).await?;
    if response.status != 200 {
        if response.status == 410 {
            http.open_session().await?;
        }
        return Ok(Err(show_response("acquire", &response)));
    }
    let token = match parse_acquired(&response.body) {
        Ok(token) => token,
        Err(what) => return Ok(Err(what)),
    };
    let body = serde_json::json!({ "token": token }).to_string();
    let response = http.post(release_path, true, body.as_bytes()).await?;
    if !(200..300).contains(&response.status) {
        if response.status == 410 {
            http.open_session().await?;
        }
        return Ok(Err(show_response("release", &response)));
    }
    Ok(Ok(()))
}

// ---------------------------------------------------------------------------------------------
// Client-library mode
// ---------------------------------------------------------------------------------------------

fn client_error<'k>(
    request: &'static str,
    key: &'k str,
) -> impl FnOnce(dflockd::client::Error) -> BenchError + 'k {
    move |source| BenchError::Client {
        request,
        key: key.to_string(),
        source,
    }
}

/// The lock loop through `dflockd::client`: the library's own request encoding, reply decoding
/// and buffering, so its overhead over the hand-written protocol loop shows.
async fn client_worker(
    id: usize,
    cfg: &Config,
    gate: &Gate,
    api: ClientApi,
) -> Result<WorkerOutcome, BenchError> {
    use dflockd::client;
    let addr = &cfg.servers[id % cfg.servers.len()];
    let key = cfg.worker_key(id);
    let timeout = Duration::from_secs(cfg.timeout_s);
    let lease_s = (cfg.lease_s > 0).then_some(cfg.lease_s);
    let mut latencies_ns = Vec::with_capacity(cfg.rounds.max(cfg.warmup));
    match api {
        ClientApi::Connection => {
            let mut conns = Vec::with_capacity(cfg.conns_per_worker);
            for _ in 0..cfg.conns_per_worker {
                let mut conn = client::Connection::connect(addr).await.map_err(|source| {
                    BenchError::Connect {
                        addr: addr.clone(),
                        source: io::Error::other(source),
                    }
                })?;
                if let Some(token) = &cfg.auth_token {
                    conn.auth(token).await.map_err(client_error("auth", "_"))?;
                }
                conns.push(conn);
            }
            for (measured, phase_ops) in [(false, cfg.warmup), (true, cfg.rounds)] {
                if measured {
                    gate.pass().await;
                }
                latencies_ns.clear();
                for op in 0..phase_ops {
                    let conn = &mut conns[op % cfg.conns_per_worker];
                    let t0 = Instant::now();
                    let grant = conn
                        .lock(&key, timeout, lease_s)
                        .await
                        .map_err(client_error("lock", &key))?;
                    conn.release(&key, grant.token)
                        .await
                        .map_err(client_error("release", &key))?;
                    latencies_ns.push(elapsed_ns(t0, Instant::now()));
                }
            }
        }
        ClientApi::Lock => {
            let mut client = client::Client::new([addr.as_str()]);
            if let Some(lease_s) = lease_s {
                client = client.with_lease(Duration::from_secs(lease_s));
            }
            if let Some(token) = &cfg.auth_token {
                client = client.with_auth_token(token.as_str());
            }
            let mut lock = client.lock(key.as_str());
            for (measured, phase_ops) in [(false, cfg.warmup), (true, cfg.rounds)] {
                if measured {
                    gate.pass().await;
                }
                latencies_ns.clear();
                for _ in 0..phase_ops {
                    let t0 = Instant::now();
                    lock.acquire(timeout)
                        .await
                        .map_err(client_error("Lock::acquire", &key))?;
                    lock.release()
                        .await
                        .map_err(client_error("Lock::release", &key))?;
                    latencies_ns.push(elapsed_ns(t0, Instant::now()));
                }
            }
        }
    }
    Ok(WorkerOutcome {
        latencies_ns,
        finished: Instant::now(),
        failures: Failures::default(),
    })
}

// ---------------------------------------------------------------------------------------------
// Fan-out mode
// ---------------------------------------------------------------------------------------------

/// After the publisher stops, how long subscribers may go without a new receipt before the
/// missing deliveries are given up on, and the longest wait overall.
const DRAIN_QUIET: Duration = Duration::from_millis(500);
const DRAIN_MAX: Duration = Duration::from_secs(5);

fn push_listen(out: &mut Vec<u8>, channel: &str) {
    out.extend_from_slice(b"listen\n");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// `signal` whose payload is `<seq> <sent_ns>`, the send time in nanoseconds since the run's
/// base instant (publisher and subscribers share one process, so one monotonic clock).
fn push_signal(out: &mut Vec<u8>, channel: &str, seq: u64, sent_ns: u64) {
    out.extend_from_slice(b"signal\n");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(format!("\n{seq} {sent_ns}\n").as_bytes());
}

/// `ok <n>`, the answer to `signal`: how many subscribers the signal was queued to.
fn parse_signal_count(line: &[u8]) -> Option<u64> {
    let n = line.strip_prefix(b"ok ")?;
    if n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// A pushed `sig <channel> <seq> <sent_ns>` on `channel`: returns `sent_ns`.
fn parse_pushed_signal(line: &[u8], channel: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"sig ")?.strip_prefix(channel)?;
    let payload = rest.strip_prefix(b" ")?;
    let (seq, sent) = payload.split_at(payload.iter().position(|&b| b == b' ')?);
    let sent = &sent[1..];
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !digits(seq) || !digits(sent) {
        return None;
    }
    std::str::from_utf8(sent).ok()?.parse().ok()
}

/// Set once, awaited by many: the subscribers stop reading.
#[derive(Default)]
struct StopFlag {
    stopped: std::sync::atomic::AtomicBool,
    event: event_listener::Event,
}

impl StopFlag {
    fn set(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    async fn wait(&self) {
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.event.listen();
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

/// What the fan-out threads share.
struct FanoutShared {
    /// Every subscriber and the publisher meet here once all subscriptions are in place.
    ready: Barrier,
    stop: StopFlag,
    /// The zero of the timestamps in the payloads.
    base: Instant,
    /// Signals received by all subscribers so far (for the drain wait).
    received: AtomicU64,
}

struct SubscriberOutcome {
    latencies_ns: Vec<u64>,
    received: u64,
    /// Lines that were neither our signals nor anything else we expect.
    malformed: u64,
    /// When and why the server closed this subscriber before the end, if it did.
    evicted: Option<(Instant, String)>,
    last_receipt: Option<Instant>,
}

async fn fanout_subscriber(
    id: usize,
    cfg: &Config,
    shared: &FanoutShared,
) -> Result<SubscriberOutcome, BenchError> {
    let addr = &cfg.servers[id % cfg.servers.len()];
    let mut client = Client::<Evented>::connect(addr, cfg).await?;
    push_listen(&mut client.out, &cfg.key);
    client.flush().await?;
    let line = client.reply().await?;
    if line != b"ok" {
        return Err(unexpected("listen", &cfg.key, line));
    }
    client.inbuf.keep_pushes();
    shared.ready.wait().await;
    let mut outcome = SubscriberOutcome {
        latencies_ns: Vec::new(),
        received: 0,
        malformed: 0,
        evicted: None,
        last_receipt: None,
    };
    loop {
        let read = future::or(async { Some(client.fill().await) }, async {
            shared.stop.wait().await;
            None
        })
        .await;
        match read {
            None => break,
            Some(Err(e)) => {
                outcome.evicted = Some((Instant::now(), e.to_string()));
                break;
            }
            Some(Ok(())) => {}
        }
        // One clock read per batch of lines: they all arrived in this read.
        let now = Instant::now();
        let now_ns = elapsed_ns(shared.base, now);
        let mut got = 0;
        while let Some(range) = client.inbuf.take_line()? {
            match parse_pushed_signal(client.inbuf.line(range), cfg.key.as_bytes()) {
                Some(sent_ns) => {
                    outcome.latencies_ns.push(now_ns.saturating_sub(sent_ns));
                    got += 1;
                }
                None => outcome.malformed += 1,
            }
        }
        if got > 0 {
            outcome.received += got;
            outcome.last_receipt = Some(now);
            shared.received.fetch_add(got, Ordering::Relaxed);
        }
    }
    Ok(outcome)
}

struct PublisherOutcome {
    published: u64,
    /// Sum of the `ok <n>` counts.
    deliveries: u64,
    failures: Failures,
    started: Instant,
    finished: Instant,
}

/// Publishes on one connection for the configured duration, `--pipeline` signals in flight,
/// paced to `--rate` when set. Every signal of one write carries the same send time.
async fn fanout_publisher(
    cfg: &Config,
    fan: &FanoutConfig,
    shared: &FanoutShared,
) -> Result<PublisherOutcome, BenchError> {
    let mut client = Client::<Blocking>::connect(&cfg.servers[0], cfg).await?;
    shared.ready.wait().await;
    let started = Instant::now();
    let end = started + Duration::from_secs(fan.duration_s);
    let (mut seq, mut in_flight, mut deliveries) = (0u64, 0usize, 0u64);
    let mut failures = Failures::default();
    loop {
        let now = Instant::now();
        if now < end {
            let due = match fan.rate {
                0 => u64::MAX,
                rate => (now.duration_since(started).as_secs_f64() * rate as f64) as u64 + 1,
            };
            let sent_ns = elapsed_ns(shared.base, now);
            while in_flight < cfg.pipeline && seq < due {
                push_signal(&mut client.out, &cfg.key, seq, sent_ns);
                seq += 1;
                in_flight += 1;
            }
        }
        if in_flight == 0 {
            if now >= end {
                break;
            }
            // Ahead of the --rate schedule: sleep until the next signal is due.
            let next = started + Duration::from_secs_f64(seq as f64 / fan.rate.max(1) as f64);
            std::thread::sleep(next.saturating_duration_since(now).min(end - now));
            continue;
        }
        client.flush().await?;
        client.fill().await?;
        while let Some(range) = client.inbuf.take_line()? {
            let line = client.inbuf.line(range);
            in_flight = in_flight
                .checked_sub(1)
                .ok_or_else(|| BenchError::Unsolicited {
                    reply: show_reply(line),
                })?;
            match parse_signal_count(line) {
                Some(n) => deliveries += n,
                None => failures.add(format!("signal: {}", show_reply(line))),
            }
        }
    }
    Ok(PublisherOutcome {
        published: seq,
        deliveries,
        failures,
        started,
        finished: Instant::now(),
    })
}

struct FanoutResult {
    publisher: PublisherOutcome,
    subscribers: Vec<SubscriberOutcome>,
}

/// Subscribers as tasks on `--io-threads` event loops, the publisher on a thread of its own.
fn run_fanout(cfg: &Arc<Config>, fan: &FanoutConfig) -> FanoutResult {
    let shared = Arc::new(FanoutShared {
        ready: Barrier::new(fan.subscribers + 1),
        stop: StopFlag::default(),
        base: Instant::now(),
        received: AtomicU64::new(0),
    });
    let loops: Vec<std::thread::JoinHandle<Vec<SubscriberOutcome>>> = {
        let (shared_cfg, shared) = (Arc::clone(cfg), Arc::clone(&shared));
        spawn_on_loops(cfg.io_threads, fan.subscribers, move |id| {
            let (cfg, shared) = (Arc::clone(&shared_cfg), Arc::clone(&shared));
            async move {
                match fanout_subscriber(id, &cfg, &shared).await {
                    Ok(outcome) => outcome,
                    Err(e) => fail(id, &e),
                }
            }
        })
    };
    let publisher = {
        let (cfg, shared, fan) = (Arc::clone(cfg), Arc::clone(&shared), fan.clone());
        std::thread::spawn(
            move || match future::block_on(fanout_publisher(&cfg, &fan, &shared)) {
                Ok(outcome) => outcome,
                Err(e) => fail(fan.subscribers, &e),
            },
        )
    };
    let publisher = publisher.join().unwrap_or_else(|_| std::process::exit(1));
    // Let the subscribers read what is still on its way to them.
    let drain_start = Instant::now();
    let (mut last_count, mut last_progress) =
        (shared.received.load(Ordering::Relaxed), drain_start);
    while last_count < publisher.deliveries && drain_start.elapsed() < DRAIN_MAX {
        std::thread::sleep(Duration::from_millis(5));
        let count = shared.received.load(Ordering::Relaxed);
        if count != last_count {
            (last_count, last_progress) = (count, Instant::now());
        } else if last_progress.elapsed() >= DRAIN_QUIET {
            break;
        }
    }
    shared.stop.set();
    let mut subscribers = Vec::with_capacity(fan.subscribers);
    for handle in loops {
        match handle.join() {
            Ok(mut part) => subscribers.append(&mut part),
            Err(_) => std::process::exit(1),
        }
    }
    FanoutResult {
        publisher,
        subscribers,
    }
}

fn fanout_header(cfg: &Config, fan: &FanoutConfig) -> String {
    let rate = match fan.rate {
        0 => "unlimited".to_string(),
        r => format!("{r}/s"),
    };
    format!(
        "fanout: 1 publisher x {} subscribers on channel {:?} for {}s (window={}, rate={rate}, io-threads={})",
        fan.subscribers,
        cfg.key,
        fan.duration_s,
        cfg.pipeline,
        cfg.io_threads.min(fan.subscribers)
    )
}

fn fanout_report(fan: &FanoutConfig, result: FanoutResult) -> String {
    let per_s = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let publisher = &result.publisher;
    let publish_s = publisher
        .finished
        .saturating_duration_since(publisher.started)
        .as_secs_f64();
    let received: u64 = result.subscribers.iter().map(|s| s.received).sum();
    let malformed: u64 = result.subscribers.iter().map(|s| s.malformed).sum();
    let last = result
        .subscribers
        .iter()
        .filter_map(|s| s.last_receipt)
        .max()
        .unwrap_or(publisher.started);
    let last_s = last
        .saturating_duration_since(publisher.started)
        .as_secs_f64();
    let mut evicted: Vec<&(Instant, String)> = result
        .subscribers
        .iter()
        .filter_map(|s| s.evicted.as_ref())
        .collect();
    evicted.sort_by_key(|(at, _)| *at);
    let mut out = String::new();
    out.push_str(&format!("  wall time  : {publish_s:.3}s\n"));
    out.push_str(&format!(
        "  published  : {} signals, {:.1} signals/s\n",
        publisher.published,
        per_s(publisher.published, publish_s)
    ));
    out.push_str(&format!(
        "  deliveries : {}, {:.1} deliveries/s (sum of ok <n>)\n",
        publisher.deliveries,
        per_s(publisher.deliveries, publish_s)
    ));
    out.push_str(&format!(
        "  received   : {received}, {:.1} received/s (by subscribers; last at {last_s:.3}s)\n",
        per_s(received, publish_s)
    ));
    out.push_str(&format!(
        "  missing    : {}\n",
        publisher.deliveries.saturating_sub(received)
    ));
    out.push_str(&format!(
        "  evictions  : {} of {} subscribers{}\n",
        evicted.len(),
        fan.subscribers,
        evicted
            .first()
            .map(|(at, why)| format!(
                " (first after {:.3}s: {why})",
                at.saturating_duration_since(publisher.started)
                    .as_secs_f64()
            ))
            .unwrap_or_default()
    ));
    let errors = &publisher.failures;
    out.push_str(&format!(
        "  errors     : {}{}\n",
        errors.count + malformed,
        errors
            .first
            .as_ref()
            .map(|what| format!(" (first: {what})"))
            .unwrap_or_default()
    ));
    out.push_str("\n  latency, publish to receipt:\n");
    let ms: Vec<f64> = result
        .subscribers
        .iter()
        .flat_map(|s| s.latencies_ns.iter().map(|&ns| ns as f64 / 1e6))
        .collect();
    out.push_str(&latency_lines(&summarize(ms)));
    out
}

// ---------------------------------------------------------------------------------------------
// Memory helpers
// ---------------------------------------------------------------------------------------------

/// Opens `n` connections round-robin over the servers and pings each once, so every one is
/// accepted and registered by the server before we report.
fn open_idle(cfg: &Config, n: usize) -> Result<Vec<Client<Blocking>>, BenchError> {
    future::block_on(async {
        let mut clients = Vec::with_capacity(n);
        for c in 0..n {
            let mut client =
                Client::<Blocking>::connect(&cfg.servers[c % cfg.servers.len()], cfg).await?;
            client.out.extend_from_slice(PING);
            client.flush().await?;
            clients.push(client);
        }
        for client in &mut clients {
            let line = client.reply().await?;
            if line != b"ok" {
                return Err(unexpected("ping", "_", line));
            }
        }
        Ok(clients)
    })
}

/// Acquires the hold keys `j ≡ id (mod workers)` on one connection, `window` in flight.
async fn hold_worker(
    id: usize,
    cfg: &Config,
    locks: usize,
) -> Result<Client<Blocking>, BenchError> {
    let addr = &cfg.servers[id % cfg.servers.len()];
    let mut client = Client::<Blocking>::connect(addr, cfg).await?;
    let mut next_keys = (id..locks).step_by(cfg.workers).map(|j| cfg.hold_key(j));
    let mut in_flight: VecDeque<String> = VecDeque::with_capacity(cfg.pipeline);
    for key in next_keys.by_ref().take(cfg.pipeline) {
        push_lock(&mut client.out, &key, cfg.timeout_s, cfg.lease_s);
        in_flight.push_back(key);
    }
    while !in_flight.is_empty() {
        client.flush().await?;
        client.fill().await?;
        while let Some(range) = client.inbuf.take_line()? {
            let line = client.inbuf.line(range);
            let key = in_flight
                .pop_front()
                .ok_or_else(|| BenchError::Unsolicited {
                    reply: show_reply(line),
                })?;
            if parse_grant(line).is_none() {
                return Err(unexpected("l", &key, line));
            }
            if let Some(key) = next_keys.next() {
                push_lock(&mut client.out, &key, cfg.timeout_s, cfg.lease_s);
                in_flight.push_back(key);
            }
        }
    }
    Ok(client)
}

fn acquire_held(cfg: &Arc<Config>, locks: usize) -> Vec<Client<Blocking>> {
    let handles: Vec<_> = (0..cfg.workers)
        .map(|id| {
            let cfg = Arc::clone(cfg);
            std::thread::spawn(
                move || match future::block_on(hold_worker(id, &cfg, locks)) {
                    Ok(client) => client,
                    Err(e) => fail(id, &e),
                },
            )
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| std::process::exit(1)))
        .collect()
}

/// Keeps helper connections open for `--hold-secs` (0 = until killed), pinging them so a
/// server with an idle read timeout does not cut them.
fn keep_open(cfg: &Config, clients: &mut [Client<Blocking>]) -> Result<(), BenchError> {
    let deadline = (cfg.hold_secs > 0).then(|| Instant::now() + Duration::from_secs(cfg.hold_secs));
    loop {
        let pause = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                left.min(KEEPALIVE_INTERVAL)
            }
            None => KEEPALIVE_INTERVAL,
        };
        std::thread::sleep(pause);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        future::block_on(async {
            for client in clients.iter_mut() {
                client.out.extend_from_slice(PING);
                client.flush().await?;
            }
            for client in clients.iter_mut() {
                let line = client.reply().await?;
                if line != b"ok" {
                    return Err(unexpected("ping", "_", line));
                }
            }
            Ok(())
        })?;
    }
}

/// With `--server-pid`: the server's resident memory before and after, and the growth per
/// item (a settle pause first, so that the server has processed everything it answered).
fn rss_note(cfg: &Config, before: Option<u64>, items: usize, what: &str) -> String {
    let Some(pid) = cfg.server_pid else {
        return String::new();
    };
    std::thread::sleep(Duration::from_millis(500));
    match (before, scaling::rss_bytes(pid)) {
        (Some(b), Some(a)) => format!(
            "rss: server {pid} {:.1} MiB -> {:.1} MiB: {:.0} bytes per {what}\n",
            b as f64 / 1048576.0,
            a as f64 / 1048576.0,
            a.saturating_sub(b) as f64 / items as f64
        ),
        _ => format!("rss: cannot read /proc/{pid}/status\n"),
    }
}

fn holding_note(cfg: &Config) -> String {
    if cfg.hold_secs == 0 {
        "until killed".to_string()
    } else {
        format!("for {}s", cfg.hold_secs)
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and report
// ---------------------------------------------------------------------------------------------

/// Latency summary in milliseconds.
#[derive(Debug, PartialEq)]
struct Summary {
    count: usize,
    mean: f64,
    min: f64,
    max: f64,
    p50: f64,
    p99: f64,
    stdev: f64,
}

/// Linear interpolation at rank `p/100 × (n−1)` over sorted samples (upstream's definition).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return 0.0;
    };
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    match sorted.get(lo + 1) {
        Some(&hi) => {
            let frac = rank - lo as f64;
            sorted[lo] * (1.0 - frac) + hi * frac
        }
        None => last,
    }
}

/// Sample standard deviation (n − 1 in the denominator); 0 for fewer than two samples.
fn sample_stdev(samples: &[f64], mean: f64) -> f64 {
    if samples.len() < 2 {
        return 0.0;
    }
    let sum_sq: f64 = samples.iter().map(|x| (x - mean) * (x - mean)).sum();
    (sum_sq / (samples.len() - 1) as f64).sqrt()
}

/// Summarises latencies (milliseconds, any order).
fn summarize(mut ms: Vec<f64>) -> Summary {
    ms.sort_by(f64::total_cmp);
    let count = ms.len();
    let mean = if count == 0 {
        0.0
    } else {
        ms.iter().sum::<f64>() / count as f64
    };
    Summary {
        count,
        mean,
        min: ms.first().copied().unwrap_or(0.0),
        max: ms.last().copied().unwrap_or(0.0),
        p50: percentile(&ms, 50.0),
        p99: percentile(&ms, 99.0),
        stdev: sample_stdev(&ms, mean),
    }
}

fn header(cfg: &Config) -> String {
    let (key, mut mode) = match (cfg.shared_key, cfg.pipeline) {
        (true, _) => (cfg.key.clone(), "shared key (contended)".to_string()),
        (false, 1) => (
            format!("{}_<id>", cfg.key),
            "unique per-worker keys".to_string(),
        ),
        (false, p) => (
            format!("{}_<id>_<j>", cfg.key),
            format!("unique per-worker keys, pipeline={p}"),
        ),
    };
    match &cfg.mode {
        Mode::Bench {
            driver: Driver::Http { addr },
        } => mode.push_str(&format!(", http {addr}")),
        Mode::Bench {
            driver: Driver::Client(api),
        } => mode.push_str(&format!(", client library ({api:?} API)")),
        _ => {}
    }
    format!(
        "bench: {} workers x {} rounds (key={key:?}, conns/worker={}, {mode})",
        cfg.workers, cfg.rounds, cfg.conns_per_worker
    )
}

fn report(cfg: &Config, summary: &Summary, wall_s: f64) -> String {
    let ops_per_s = if wall_s > 0.0 {
        summary.count as f64 / wall_s
    } else {
        0.0
    };
    let mut out = String::new();
    out.push_str(&format!("  total ops : {}\n", summary.count));
    out.push_str(&format!("  wall time : {wall_s:.3}s\n"));
    out.push_str(&format!("  throughput: {ops_per_s:.1} ops/s\n"));
    if cfg.pipeline > 1 {
        out.push_str(&format!("  requests/s: {:.1} req/s\n", 2.0 * ops_per_s));
    }
    out.push('\n');
    out.push_str(&latency_lines(summary));
    out
}

/// The latency block of a report.
fn latency_lines(summary: &Summary) -> String {
    let mut out = String::new();
    for (name, value) in [
        ("mean", summary.mean),
        ("min", summary.min),
        ("max", summary.max),
        ("p50", summary.p50),
        ("p99", summary.p99),
        ("stdev", summary.stdev),
    ] {
        out.push_str(&format!("  {name:<10}: {value:.3} ms\n"));
    }
    out
}

/// Writes to stdout and flushes at once (the memory helpers are watched by a script). A closed
/// pipe (`| head`) is not worth a panic.
fn say(text: &str) {
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_command_line(&raw) {
        Ok(cfg) => Arc::new(cfg),
        Err((0, help)) => {
            say(&format!("{help}\n"));
            return ExitCode::SUCCESS;
        }
        Err((code, message)) => {
            let _ = writeln!(io::stderr(), "{message}");
            return ExitCode::from(code);
        }
    };
    match &cfg.mode {
        Mode::Bench { driver } => {
            say(&format!("{}\n\n", header(&cfg)));
            let (start, outcomes) = run_workers(&cfg, driver);
            let end = outcomes.iter().map(|o| o.finished).max().unwrap_or(start);
            let wall_s = end.saturating_duration_since(start).as_secs_f64();
            let ms: Vec<f64> = outcomes
                .iter()
                .flat_map(|o| o.latencies_ns.iter().map(|&ns| ns as f64 / 1e6))
                .collect();
            say(&report(&cfg, &summarize(ms), wall_s));
            if matches!(driver, Driver::Http { .. }) {
                let mut failures = Failures::default();
                for outcome in outcomes {
                    failures.merge(outcome.failures);
                }
                say(&format!(
                    "  errors    : {}{}\n",
                    failures.count,
                    failures
                        .first
                        .map(|what| format!(" (first: {what})"))
                        .unwrap_or_default()
                ));
            }
        }
        Mode::Fanout(fan) => {
            say(&format!("{}\n\n", fanout_header(&cfg, fan)));
            let result = run_fanout(&cfg, fan);
            say(&fanout_report(fan, result));
        }
        Mode::Idle { connections } => {
            let before = cfg.server_pid.and_then(scaling::rss_bytes);
            let t0 = Instant::now();
            let mut clients = open_idle(&cfg, *connections).unwrap_or_else(|e| fail(0, &e));
            say(&format!(
                "idle: {connections} connections established in {:.3}s, holding {}\n",
                t0.elapsed().as_secs_f64(),
                holding_note(&cfg)
            ));
            say(&rss_note(&cfg, before, *connections, "idle connection"));
            keep_open(&cfg, &mut clients).unwrap_or_else(|e| fail(0, &e));
        }
        Mode::Hold { locks } => {
            let before = cfg.server_pid.and_then(scaling::rss_bytes);
            let t0 = Instant::now();
            let mut clients = acquire_held(&cfg, *locks);
            let took = t0.elapsed().as_secs_f64();
            say(&format!(
                "hold: {locks} locks held on {} connections, acquired in {took:.3}s ({:.1} locks/s), holding {}\n",
                clients.len(),
                *locks as f64 / took.max(f64::MIN_POSITIVE),
                holding_note(&cfg)
            ));
            say(&rss_note(&cfg, before, *locks, "held lock"));
            keep_open(&cfg, &mut clients).unwrap_or_else(|e| fail(0, &e));
        }
        Mode::Scaling(plan) => return scaling::run_scaling(plan),
        Mode::Freeze { slots, server_bin } => return scaling::run_freeze(server_bin, *slots),
        Mode::StatsStall { sizes, server_bin } => {
            return scaling::run_stats_stall(server_bin, sizes)
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Result<Vec<String>, String> {
        let mut buf = LineBuf::new();
        let mut lines = Vec::new();
        for chunk in chunks {
            let spare = buf.spare();
            spare[..chunk.len()].copy_from_slice(chunk);
            buf.filled(chunk.len());
            while let Some(range) = buf.take_line().map_err(|e| e.to_string())? {
                lines.push(String::from_utf8_lossy(buf.line(range)).into_owned());
            }
        }
        Ok(lines)
    }

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentile_interpolates_linearly_between_ranks() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        // rank 0.5 × 3 = 1.5 → halfway between 2 and 3.
        assert!(approx(percentile(&xs, 50.0), 2.5));
        // rank 0.99 × 3 = 2.97 → 3 + 0.97 × (4 − 3).
        assert!(approx(percentile(&xs, 99.0), 3.97));
        assert!(approx(percentile(&xs, 0.0), 1.0));
        assert!(approx(percentile(&xs, 100.0), 4.0));
        assert!(approx(percentile(&[7.0], 99.0), 7.0));
        assert!(approx(percentile(&[], 50.0), 0.0));
        let hundred: Vec<f64> = (1..=101).map(f64::from).collect();
        assert!(approx(percentile(&hundred, 99.0), 100.0));
    }

    #[test]
    fn stdev_is_the_sample_form() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        // Sum of squared deviations from 5 is 32; 32 / 7 is the sample variance.
        assert!(approx(sample_stdev(&xs, 5.0), (32.0f64 / 7.0).sqrt()));
        assert!(approx(sample_stdev(&[3.0], 3.0), 0.0));
        assert!(approx(sample_stdev(&[], 0.0), 0.0));
    }

    #[test]
    fn summary_sorts_and_reports_extremes() {
        let s = summarize(vec![3.0, 1.0, 2.0]);
        assert_eq!(s.count, 3);
        assert!(approx(s.mean, 2.0));
        assert!(approx(s.min, 1.0));
        assert!(approx(s.max, 3.0));
        assert!(approx(s.p50, 2.0));
        assert!(approx(s.p99, 2.98));
        assert!(approx(s.stdev, 1.0));
    }

    #[test]
    fn grant_parsing() {
        let ok = b"ok 0000000000000001aaaaaaaaaaaaaaaa 10";
        assert_eq!(
            parse_grant(ok),
            Some(&b"0000000000000001aaaaaaaaaaaaaaaa"[..])
        );
        assert_eq!(parse_grant(b"ok tok"), Some(&b"tok"[..]));
        for bad in [
            &b"timeout"[..],
            b"error",
            b"error_max_locks",
            b"ok",
            b"ok ",
            b"ok  10",
            b"ok tok 10 extra",
            b"ok tok ten",
            b"acquired tok 10",
            b"",
        ] {
            assert_eq!(parse_grant(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn acquire_timeout_is_named() {
        let e = unexpected("l", "k", b"timeout");
        assert!(matches!(e, BenchError::AcquireTimeout { .. }));
        let e = unexpected("r", "k", b"error");
        assert_eq!(
            e.to_string(),
            "unexpected reply to \"r\" on key \"k\": \"error\""
        );
    }

    #[test]
    fn lines_are_reassembled_across_segments() {
        let got = lines_of(&[b"o", b"k 12", b"34 10\r", b"\nok\n", b"time", b"out\n"]).unwrap();
        assert_eq!(got, ["ok 1234 10", "ok", "timeout"]);
    }

    #[test]
    fn pushed_signals_are_skipped() {
        let got = lines_of(&[b"sig a.b hello world\nok\nsig x y\n", b"ok t 1\n"]).unwrap();
        assert_eq!(got, ["ok", "ok t 1"]);
    }

    #[test]
    fn long_lines_up_to_64k_are_fine_and_longer_is_an_error() {
        let mut long = b"sig c ".to_vec();
        long.resize(MAX_REPLY_LINE, b'x');
        long.extend_from_slice(b"\nok\n");
        let chunks: Vec<&[u8]> = long.chunks(READ_CHUNK).collect();
        assert_eq!(lines_of(&chunks).unwrap(), ["ok"]);

        let too_long = vec![b'x'; MAX_REPLY_LINE + 1];
        let chunks: Vec<&[u8]> = too_long.chunks(READ_CHUNK).collect();
        assert!(lines_of(&chunks).is_err());
    }

    #[test]
    fn buffer_compacts_under_steady_traffic() {
        let mut buf = LineBuf::new();
        for i in 0..100_000u32 {
            let reply = format!("ok {i:032} 10\n");
            // Split every reply in two to exercise partial lines at the buffer's edge.
            let (a, b) = reply.as_bytes().split_at(5);
            for part in [a, b] {
                buf.spare()[..part.len()].copy_from_slice(part);
                buf.filled(part.len());
            }
            let range = buf.take_line().unwrap().unwrap();
            assert_eq!(buf.line(range), reply.trim_end().as_bytes());
        }
    }

    #[test]
    fn requests_are_three_lines() {
        let mut out = Vec::new();
        push_lock(&mut out, "bench_3", 30, 10);
        push_lock(&mut out, "k", 0, 0);
        push_release(&mut out, "bench_3", b"tok");
        assert_eq!(out, b"l\nbench_3\n30 10\nl\nk\n0\nr\nbench_3\ntok\n");
    }

    fn parse(args: &[&str]) -> Result<Config, (u8, String)> {
        let raw: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse_command_line(&raw)
    }

    #[test]
    fn defaults_match_upstream() {
        let cfg = parse(&[]).unwrap();
        assert_eq!((cfg.workers, cfg.rounds, cfg.warmup), (10, 50, 10));
        assert_eq!(
            (cfg.timeout_s, cfg.lease_s, cfg.conns_per_worker),
            (30, 10, 1)
        );
        assert_eq!(cfg.servers, ["127.0.0.1:6388"]);
        assert_eq!(cfg.worker_key(7), "bench_7");
        assert_eq!(
            cfg.mode,
            Mode::Bench {
                driver: Driver::Protocol
            }
        );
        assert_eq!(
            header(&cfg),
            "bench: 10 workers x 50 rounds (key=\"bench_<id>\", conns/worker=1, unique per-worker keys)"
        );
    }

    #[test]
    fn go_flag_spellings_are_accepted() {
        let cfg = parse(&[
            "-workers",
            "3",
            "--rounds=7",
            "-shared-key=true",
            "-servers",
            "a:1, b:2",
        ])
        .unwrap();
        assert_eq!((cfg.workers, cfg.rounds, cfg.shared_key), (3, 7, true));
        assert_eq!(cfg.worker_key(2), "bench");
        assert_eq!(cfg.servers, ["a:1", "b:2"]);
        assert!(!parse(&["--shared-key=false"]).unwrap().shared_key);
        assert_eq!(parse(&["--help"]).err().map(|e| e.0), Some(0));
        assert_eq!(parse(&["-h"]).err().map(|e| e.0), Some(0));
    }

    #[test]
    fn invalid_flags_exit_2() {
        for bad in [
            &["--workers", "0"][..],
            &["--rounds", "0"],
            &["--timeout", "-1"],
            &["--workers", "x"],
            &["--bogus"],
            &["--servers", "a:1,,b:2"],
            &["--key", "a b"],
            &["--pipeline", "0"],
            &["--pipeline", "4", "--shared-key"],
            &["--pipeline", "4", "--connections", "2"],
            &["--hold", "5", "--idle-connections", "5"],
            &["--io", "fibers"],
            &["--shared-key=maybe"],
        ] {
            assert_eq!(parse(bad).err().map(|e| e.0), Some(2), "{bad:?}");
        }
        let long_key = "k".repeat(MAX_KEY_BYTES);
        assert_eq!(parse(&["--key", &long_key]).err().map(|e| e.0), Some(2));
        assert!(parse(&["--key", &long_key, "--shared-key"]).is_ok());
    }

    #[test]
    fn pipeline_keys_are_distinct_per_worker_and_slot() {
        let cfg = parse(&["--pipeline", "3"]).unwrap();
        assert_eq!(cfg.window_keys(4), ["bench_4_0", "bench_4_1", "bench_4_2"]);
        assert!(header(&cfg).contains("pipeline=3"));
    }

    #[test]
    fn report_layout() {
        let cfg = parse(&["--pipeline", "2"]).unwrap();
        let text = report(&cfg, &summarize(vec![1.0, 2.0]), 0.5);
        assert_eq!(
            text,
            "  total ops : 2\n  wall time : 0.500s\n  throughput: 4.0 ops/s\n  requests/s: 8.0 req/s\n\n  \
             mean      : 1.500 ms\n  min       : 1.000 ms\n  max       : 2.000 ms\n  p50       : 1.500 ms\n  \
             p99       : 1.990 ms\n  stdev     : 0.707 ms\n"
        );
    }

    fn response(raw: &[u8]) -> Result<Option<(HttpResponse, usize)>, HttpError> {
        parse_response(raw)
    }

    #[test]
    fn http_response_with_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":true}\nHTTP/1.1 204 No Content\r\n\r\n";
        let (first, used) = response(raw).unwrap().unwrap();
        assert_eq!(
            first,
            HttpResponse {
                status: 200,
                close: false,
                body: b"{\"a\":true}\n".to_vec()
            }
        );
        // Pipelined responses come out one at a time; a 204 has no body.
        let (second, used2) = response(&raw[used..]).unwrap().unwrap();
        assert_eq!((second.status, second.body.len()), (204, 0));
        assert_eq!(used + used2, raw.len());
    }

    #[test]
    fn http_response_incomplete_needs_more() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody";
        for cut in 0..raw.len() {
            assert_eq!(response(&raw[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(response(raw).unwrap().is_some());
    }

    #[test]
    fn http_connection_close_is_noticed() {
        let close = b"HTTP/1.1 503 Service Unavailable\r\nConnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n";
        assert!(response(close).unwrap().unwrap().0.close);
        let http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(response(http10).unwrap().unwrap().0.close);
        let http10_keep = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert!(!response(http10_keep).unwrap().unwrap().0.close);
    }

    #[test]
    fn http_chunked_and_lengthless_bodies_are_refused() {
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n";
        assert!(matches!(
            response(chunked),
            Err(HttpError::TransferEncoding(_))
        ));
        let no_length = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbody";
        assert_eq!(response(no_length), Err(HttpError::NoLength));
        let too_big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_HTTP_BODY + 1
        );
        assert_eq!(
            response(too_big.as_bytes()),
            Err(HttpError::BodyTooLong(MAX_HTTP_BODY + 1))
        );
    }

    #[test]
    fn http_malformed_heads_are_errors() {
        for bad in [
            &b"error\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded: value\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ] {
            assert!(response(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Status line with no reason phrase is fine; a repeated equal length too.
        let ok = b"HTTP/1.1 404\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(response(ok).unwrap().unwrap().0.status, 404);
        // A prefix of "HTTP/" may still become a response; anything else cannot.
        assert_eq!(response(b"HT"), Ok(None));
        assert!(response(b"HH").is_err());
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(MAX_HTTP_HEAD + 10, b'x');
        assert_eq!(response(&huge), Err(HttpError::HeadTooLong));
    }

    #[test]
    fn http_requests_and_paths() {
        let mut out = Vec::new();
        push_http_post(
            &mut out,
            "h:1",
            "/v1/locks/k",
            Some("abc"),
            Some("tok"),
            b"{}",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/locks/k HTTP/1.1\r\nHost: h:1\r\nX-Dflockd-Session: abc\r\n\
             Authorization: Bearer tok\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{}"
        );
        assert_eq!(encode_path_segment("bench_7"), "bench_7");
        assert_eq!(encode_path_segment("a/b%c?d#é"), "a%2Fb%25c%3Fd%23%C3%A9");
    }

    #[test]
    fn acquire_bodies() {
        assert_eq!(
            parse_acquired(br#"{"lease_ttl_s":10,"status":"ok","token":"t1"}"#),
            Ok("t1".to_string())
        );
        assert_eq!(
            parse_acquired(br#"{"status":"timeout"}"#),
            Err("acquire: timeout".to_string())
        );
        assert!(parse_acquired(br#"{"status":"ok"}"#).is_err());
        assert!(parse_acquired(br#"{"status":"ok","token":7}"#).is_err());
        assert!(parse_acquired(b"not json").is_err());
    }

    #[test]
    fn signal_lines() {
        let mut out = Vec::new();
        push_listen(&mut out, "ch");
        push_signal(&mut out, "ch", 3, 12345);
        assert_eq!(out, b"listen\nch\n\nsignal\nch\n3 12345\n");
        assert_eq!(parse_signal_count(b"ok 100"), Some(100));
        assert_eq!(parse_signal_count(b"ok 0"), Some(0));
        for bad in [&b"ok"[..], b"ok ", b"ok -1", b"ok 1 2", b"error", b"ok x"] {
            assert_eq!(parse_signal_count(bad), None);
        }
        assert_eq!(parse_pushed_signal(b"sig ch 3 12345", b"ch"), Some(12345));
        for bad in [
            &b"sig ch 3"[..],
            b"sig ch 3 ",
            b"sig ch x 5",
            b"sig chx 3 5",
            b"sig other 3 5",
            b"sig ch 3 5 6",
            b"ok",
        ] {
            assert_eq!(parse_pushed_signal(bad, b"ch"), None, "{bad:?}");
        }
    }

    #[test]
    fn pushes_are_kept_when_asked() {
        let mut buf = LineBuf::new();
        buf.keep_pushes();
        let chunk = b"sig a 1 2\nok\n";
        buf.spare()[..chunk.len()].copy_from_slice(chunk);
        buf.filled(chunk.len());
        let first = buf.take_line().unwrap().unwrap();
        assert_eq!(buf.line(first), b"sig a 1 2");
        let second = buf.take_line().unwrap().unwrap();
        assert_eq!(buf.line(second), b"ok");
    }

    #[test]
    fn new_modes_parse() {
        let cfg = parse(&["--http", "127.0.0.1:6389", "--workers", "2"]).unwrap();
        assert_eq!(
            cfg.mode,
            Mode::Bench {
                driver: Driver::Http {
                    addr: "127.0.0.1:6389".into()
                }
            }
        );
        assert!(header(&cfg).ends_with("unique per-worker keys, http 127.0.0.1:6389)"));
        let cfg = parse(&["-client", "--client-api=lock"]).unwrap();
        assert_eq!(
            cfg.mode,
            Mode::Bench {
                driver: Driver::Client(ClientApi::Lock)
            }
        );
        let cfg = parse(&["--client=true", "--workers", "3"]).unwrap();
        assert_eq!(
            (cfg.mode, cfg.workers),
            (
                Mode::Bench {
                    driver: Driver::Client(ClientApi::Connection)
                },
                3
            )
        );
        let cfg = parse(&[
            "--fanout",
            "--subscribers",
            "7",
            "--pipeline",
            "8",
            "--rate",
            "100",
        ])
        .unwrap();
        assert_eq!(
            cfg.mode,
            Mode::Fanout(FanoutConfig {
                subscribers: 7,
                duration_s: 5,
                rate: 100
            })
        );
        assert_eq!(cfg.pipeline, 8);
        assert!(!parse(&["--fanout=false"]).unwrap().shared_key);
    }

    #[test]
    fn new_modes_reject_bad_combinations() {
        for bad in [
            &["--http", "a:1", "--client"][..],
            &["--fanout", "--client"],
            &["--fanout", "--hold", "3"],
            &["--http", "a:1", "--pipeline", "2"],
            &["--client", "--pipeline", "2"],
            &["--http", "a:1", "--connections", "2"],
            &["--client", "--client-api", "lock", "--connections", "2"],
            &["--client-api", "lock"],
            &["--client", "--client-api", "pool"],
            &["--http", " "],
            &["--fanout", "--subscribers", "0"],
            &["--fanout", "--duration", "0"],
            &["--fanout", "--key", "a.*"],
            &["--client=maybe"],
        ] {
            assert_eq!(parse(bad).err().map(|e| e.0), Some(2), "{bad:?}");
        }
        assert!(parse(&["--client", "--connections", "2"]).is_ok());
    }

    #[test]
    fn scaling_freeze_and_rss_flags() {
        let cfg = parse(&[
            "--scaling",
            "--sizes",
            "10,100",
            "--dims",
            "keys,holders",
            "--samples",
            "5",
            "--server-bin",
            "/x/dflockd",
        ])
        .unwrap();
        assert_eq!(
            cfg.mode,
            Mode::Scaling(scaling::Plan {
                server_bin: "/x/dflockd".into(),
                sizes: vec![10, 100],
                dims: vec![scaling::Dim::Keys, scaling::Dim::Holders],
                samples: 5,
            })
        );
        let Mode::Scaling(plan) = parse(&["-scaling=true"]).unwrap().mode else {
            panic!("not scaling");
        };
        assert_eq!(plan.sizes, vec![1000, 10_000, 100_000, 1_000_000]);
        assert_eq!(plan.dims, scaling::Dim::ALL.to_vec());
        assert!(plan.server_bin.ends_with("dflockd"), "next to the bench");
        assert_eq!(
            parse(&["--freeze", "400000", "--server-bin", "s"])
                .unwrap()
                .mode,
            Mode::Freeze {
                slots: 400_000,
                server_bin: "s".into()
            }
        );
        assert_eq!(
            parse(&["--stats-stall", "100000,1000000", "--server-bin", "s"])
                .unwrap()
                .mode,
            Mode::StatsStall {
                sizes: vec![100_000, 1_000_000],
                server_bin: "s".into()
            }
        );
        let cfg = parse(&["--idle-connections", "3", "--server-pid", "42"]).unwrap();
        assert_eq!(cfg.server_pid, Some(42));
        for bad in [
            &["--scaling", "--freeze", "3"][..],
            &["--scaling", "--hold", "3"],
            &["--scaling", "--sizes", "100,10"],
            &["--scaling", "--sizes", "0"],
            &["--scaling", "--dims", "keys,queues"],
            &["--scaling", "--samples", "0"],
            &["--freeze", "0"],
            &["--stats-stall", "10,1"],
            &["--stats-stall", "5", "--freeze", "3"],
            &["--server-pid", "42"],
        ] {
            assert_eq!(parse(bad).err().map(|e| e.0), Some(2), "{bad:?}");
        }
    }
}
