//! Flags of `dflockd-bench` and their validation: the argh definition, the upstream Go
//! spellings it accepts (`-flag=value`, `--flag=true`), and the checked [`Config`] every mode
//! runs from. Invalid combinations exit 2, `--help` exits 0, as upstream's `flag` package does.

use std::time::Duration;

use argh::FromArgs;

use crate::scaling;

/// Longest key a server accepts on its 256-byte key line (spec §1.3).
const MAX_KEY_BYTES: usize = 256;
/// Longest auth line a v1.15+ server accepts (spec §1.3).
const MAX_AUTH_BYTES: usize = 64 * 1024;
/// Longest `--client-spin`: polling past 10 ms only burns a core.
const MAX_CLIENT_SPIN_US: u64 = 10_000;
/// A blocking socket gives up on a reply this long after the acquire timeout would have.
const REPLY_GRACE: Duration = Duration::from_secs(30);

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

    /// i/o engine: "threads" (one OS thread per worker, blocking sockets), "loop" (one event
    /// loop of dflockd's runtime on --io-threads threads), "async" (smol event loops on
    /// --io-threads threads) or "auto" (threads while workers <= cores, else loop) (default auto)
    #[argh(option, default = "String::from(\"auto\")")]
    io: String,

    /// event-loop threads for --io async, and for the --fanout subscribers (default 1)
    #[argh(option, default = "1")]
    io_threads: usize,

    /// microseconds a client event-loop thread keeps polling its sockets before it sleeps
    /// (dflockd's runtime spin; needs --io loop, which auto then picks; at most 10000;
    /// 0 = sleep at once, the default). A sleeping client thread waits for its wake-up on
    /// every reply, and on a virtual CPU that halts when idle that wake-up, not the server,
    /// can set the pace: compare both to see which is measured
    #[argh(option, default = "0")]
    client_spin: u64,

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

    /// etcd mode: the same loop against etcd's lock API (v3 JSON gateway at this host:port):
    /// one lease per worker, /v3/lock/lock + /v3/lock/unlock over one keep-alive connection
    #[argh(option)]
    etcd: Option<String>,

    /// client mode: the same loop driven through this crate's client library (dflockd::client)
    #[argh(switch)]
    client: bool,

    /// peer mode: the same loop against redis-server at --servers, each op two inline PING
    /// round trips, so that a server is compared with redis through one client
    #[argh(switch)]
    redis_ping: bool,

    /// peer mode: the same loop against redis-server at --servers, each op a token taken
    /// from a list with BLPOP and given back with RPUSH: a list and token per worker, or with
    /// --shared-key one token all workers pass along one list (redis answers blocked BLPOPs
    /// first come, first served): the peer of a hot key's hand-off chain
    #[argh(switch)]
    redis_handoff: bool,

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
pub(crate) enum IoEngine {
    /// One OS thread per worker, blocking `std::net::TcpStream`.
    Threads,
    /// Non-blocking sockets on `io_threads` event-loop threads of the server's own runtime
    /// (`dflockd::rt`): edge-triggered epoll, one `recv` per reply and no re-arm.
    Loop,
    /// Non-blocking sockets on `io_threads` smol event-loop threads (async-io's reactor).
    Async,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
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
pub(crate) enum Driver {
    /// The line protocol, written by hand (the default).
    Protocol,
    /// The HTTP REST front at this address.
    Http { addr: String },
    /// etcd's lock API at this address (the cluster baseline).
    Etcd { addr: String },
    /// This crate's client library.
    Client(ClientApi),
    /// redis-server, two inline `PING`s per op (the peer, through the same client).
    RedisPing,
    /// redis-server, a token taken with `BLPOP` and given back with `RPUSH` per op; the
    /// lists are named `<lists>:<key>` (one per worker, or the one shared list).
    RedisHandoff { lists: String },
}

/// A prefix for this run's redis lists, so that no token left by an earlier run (one
/// stopped half-way) is taken: the process id and the clock.
fn handoff_lists() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("dflockd-bench:{}:{nanos}", std::process::id())
}

/// Which layer of `dflockd::client` the client mode measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientApi {
    /// `Connection::lock` / `Connection::release` on a persistent connection.
    Connection,
    /// `Lock::acquire` / `Lock::release`: a fresh connection per op (the handle closes its
    /// connection on release), with renewal armed.
    Lock,
}

/// Fan-out mode settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FanoutConfig {
    pub(crate) subscribers: usize,
    pub(crate) duration_s: u64,
    /// Signals per second, 0 = unlimited.
    pub(crate) rate: u64,
}

/// Validated flags.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) mode: Mode,
    pub(crate) workers: usize,
    pub(crate) rounds: usize,
    pub(crate) warmup: usize,
    pub(crate) key: String,
    pub(crate) shared_key: bool,
    pub(crate) timeout_s: u64,
    pub(crate) lease_s: u64,
    pub(crate) servers: Vec<String>,
    pub(crate) conns_per_worker: usize,
    pub(crate) pipeline: usize,
    pub(crate) auth_token: Option<String>,
    pub(crate) io: IoEngine,
    pub(crate) io_threads: usize,
    /// How long a client event-loop thread polls before it sleeps (`--client-spin`).
    pub(crate) client_spin: Duration,
    pub(crate) hold_secs: u64,
    pub(crate) server_pid: Option<u32>,
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
            ("--etcd", args.etcd.is_some()),
            ("--client", args.client),
            ("--redis-ping", args.redis_ping),
            ("--redis-handoff", args.redis_handoff),
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
                } else if let Some(addr) = args.etcd {
                    if addr.trim().is_empty() {
                        return Err("--etcd needs a host:port".into());
                    }
                    Driver::Etcd {
                        addr: addr.trim().to_string(),
                    }
                } else if args.client {
                    Driver::Client(client_api)
                } else if args.redis_ping {
                    if args.shared_key || args.auth_token.is_some() {
                        return Err("--redis-ping takes no --shared-key or --auth-token".into());
                    }
                    Driver::RedisPing
                } else if args.redis_handoff {
                    if args.auth_token.is_some() {
                        return Err("--redis-handoff takes no --auth-token".into());
                    }
                    // One server: the shared list and its one token live on it.
                    if servers.len() > 1 {
                        return Err("--redis-handoff takes one --servers address".into());
                    }
                    Driver::RedisHandoff {
                        lists: handoff_lists(),
                    }
                } else {
                    Driver::Protocol
                };
                if driver != Driver::Protocol && args.pipeline > 1 {
                    return Err("--pipeline > 1 needs the line-protocol mode".into());
                }
                let one_connection = matches!(
                    driver,
                    Driver::Http { .. }
                        | Driver::Etcd { .. }
                        | Driver::Client(ClientApi::Lock)
                        | Driver::RedisPing
                        | Driver::RedisHandoff { .. }
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
        if args.client_spin > MAX_CLIENT_SPIN_US {
            return Err(format!(
                "--client-spin must be at most {MAX_CLIENT_SPIN_US} µs, not {}",
                args.client_spin
            ));
        }
        let spinning = args.client_spin > 0;
        if spinning
            && !matches!(
                mode,
                Mode::Bench {
                    driver: Driver::Protocol
                        | Driver::Http { .. }
                        | Driver::Etcd { .. }
                        | Driver::RedisPing
                        | Driver::RedisHandoff { .. }
                }
            )
        {
            return Err(
                "--client-spin is for the lock loop over the line protocol, --http, --etcd, --redis-ping or --redis-handoff"
                    .into(),
            );
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let io = match args.io.as_str() {
            "threads" => IoEngine::Threads,
            "async" => IoEngine::Async,
            "loop" => IoEngine::Loop,
            // Only the runtime's loop can poll before sleeping.
            "auto" if spinning => IoEngine::Loop,
            "auto" if args.workers <= cores => IoEngine::Threads,
            "auto" => IoEngine::Loop,
            other => {
                return Err(format!(
                    "--io must be threads, loop, async or auto, not {other:?}"
                ))
            }
        };
        if spinning && io != IoEngine::Loop {
            return Err(format!(
                "--client-spin polls on dflockd's runtime: it needs --io loop (or auto), not {:?}",
                args.io
            ));
        }
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
            client_spin: Duration::from_micros(args.client_spin),
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
    pub(crate) fn worker_key(&self, id: usize) -> String {
        if self.shared_key {
            self.key.clone()
        } else {
            format!("{}_{id}", self.key)
        }
    }

    /// The keys of worker `id`'s window when `--pipeline` is above 1.
    pub(crate) fn window_keys(&self, id: usize) -> Vec<String> {
        (0..self.pipeline)
            .map(|j| format!("{}_{id}_{j}", self.key))
            .collect()
    }

    pub(crate) fn hold_key(&self, j: usize) -> String {
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
    pub(crate) fn reply_deadline(&self) -> Duration {
        Duration::from_secs(self.timeout_s).saturating_add(REPLY_GRACE)
    }
}

/// Accept Go `flag` spellings too (`-workers 5`, `--workers=5`, `-shared-key=true`), since the
/// upstream tool is a Go program and scripts written for it should run unchanged.
fn normalize_args(raw: &[String]) -> Result<Vec<String>, String> {
    const SWITCHES: [&str; 7] = [
        "shared-key",
        "client",
        "redis-ping",
        "redis-handoff",
        "fanout",
        "scaling",
        "help",
    ];
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
pub(crate) fn parse_command_line(raw: &[String]) -> Result<Config, (u8, String)> {
    let normalized = normalize_args(raw).map_err(|e| (2, format!("bench: {e}")))?;
    let strs: Vec<&str> = normalized.iter().map(String::as_str).collect();
    let args = Args::from_args(&["dflockd-bench"], &strs).map_err(|early| match early.status {
        Ok(()) => (0, early.output),
        Err(()) => (2, early.output),
    })?;
    Config::from_args(args).map_err(|e| (2, format!("bench: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::header;

    pub(crate) fn parse(args: &[&str]) -> Result<Config, (u8, String)> {
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
    fn redis_ping_is_the_peer_through_the_same_loop() {
        let cfg = parse(&["--redis-ping", "--servers", "127.0.0.1:6379"]).unwrap();
        assert_eq!(
            cfg.mode,
            Mode::Bench {
                driver: Driver::RedisPing
            }
        );
        assert!(header(&cfg).ends_with("redis-server, two inline PINGs per op)"));
        assert_eq!(parse(&["-redis-ping=true"]).unwrap().mode, cfg.mode);
        for bad in [
            &["--redis-ping", "--shared-key"][..],
            &["--redis-ping", "--auth-token", "t"],
            &["--redis-ping", "--pipeline", "2"],
            &["--redis-ping", "--http", "h:1"],
            &["--redis-ping", "--connections", "2"],
        ] {
            assert_eq!(parse(bad).err().map(|e| e.0), Some(2), "{bad:?}");
        }
    }

    #[test]
    fn redis_handoff_is_the_peer_of_a_hot_key() {
        for (args, shared) in [
            (&["--redis-handoff", "--shared-key"][..], true),
            (&["--redis-handoff"], false),
            (&["-redis-handoff=true", "-shared-key=true"], true),
        ] {
            let cfg = parse(args).unwrap();
            let Mode::Bench {
                driver: Driver::RedisHandoff { lists },
            } = &cfg.mode
            else {
                panic!("{args:?}: {:?}", cfg.mode);
            };
            assert!(lists.starts_with("dflockd-bench:"), "{lists}");
            assert_eq!(cfg.shared_key, shared);
            assert!(header(&cfg).contains("redis-server, BLPOP + RPUSH of a token per op"));
        }
        for bad in [
            &["--redis-handoff", "--auth-token", "t"][..],
            &["--redis-handoff", "--pipeline", "2"],
            &["--redis-handoff", "--connections", "2"],
            &["--redis-handoff", "--redis-ping"],
            &["--redis-handoff", "--servers", "a:1,b:2"],
        ] {
            assert_eq!(parse(bad).err().map(|e| e.0), Some(2), "{bad:?}");
        }
        assert!(parse(&["--redis-handoff", "--client-spin", "50"]).is_ok());
    }

    #[test]
    fn client_spin_runs_on_the_runtime_loop_and_is_bounded() {
        let cfg = parse(&["--workers", "1", "--client-spin", "50"]).unwrap();
        // One worker would run on a blocking thread; a spinning client needs the loop.
        assert_eq!(cfg.io, IoEngine::Loop);
        assert_eq!(cfg.client_spin, Duration::from_micros(50));
        assert!(header(&cfg).ends_with(", client polls 50 µs before it sleeps)"));
        let still = parse(&["--workers", "1"]).unwrap();
        assert_eq!(
            (still.io, still.client_spin),
            (IoEngine::Threads, Duration::ZERO)
        );
        for ok in [
            &["--client-spin", "50", "--redis-ping"][..],
            &["--client-spin", "50", "--http", "h:1", "--io", "loop"],
            &["--client-spin", "10000", "--shared-key"],
            &["-client-spin=0", "--io", "threads"],
        ] {
            assert!(parse(ok).is_ok(), "{ok:?}");
        }
        for (bad, says) in [
            (&["--client-spin", "10001"][..], "at most 10000"),
            (&["--client-spin", "5", "--io", "threads"], "--io loop"),
            (&["--client-spin", "5", "--io", "async"], "--io loop"),
            (&["--client-spin", "5", "--client"], "is for the lock loop"),
            (&["--client-spin", "5", "--fanout"], "is for the lock loop"),
        ] {
            let err = parse(bad).err().unwrap();
            assert_eq!(err.0, 2, "{bad:?}");
            assert!(err.1.contains(says), "{bad:?}: {}", err.1);
        }
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
