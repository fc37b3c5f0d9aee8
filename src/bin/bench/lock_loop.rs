//! The lock loop: one worker per connection runs `l`/`r` ops one at a time or in a sliding
//! window (`--pipeline`), behind a start gate so that every worker begins together; and the
//! two ways to run the workers (OS threads with blocking sockets, or a few event loops).

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_lite::future;
use smol::lock::Barrier;

use crate::args::{Config, Driver, IoEngine};
use crate::client::client_worker;
use crate::http::http_worker;
use crate::line::{
    parse_grant, push_lock, push_release, show_reply, unexpected, BenchError, Blocking, Client,
    Evented, Looped, Transport,
};

/// The warm-up/measure boundary: every worker and the main thread meet at `warmed_up`, the
/// main thread reads the clock, then everyone meets at `go`. Reading the clock between the two
/// barriers means the measured window can only be too long, never too short.
pub(crate) struct Gate {
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

    pub(crate) async fn pass(&self) {
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
pub(crate) struct WorkerOutcome {
    pub(crate) latencies_ns: Vec<u64>,
    pub(crate) finished: Instant,
    pub(crate) failures: Failures,
}

/// Ops that failed without ending the worker.
#[derive(Default)]
pub(crate) struct Failures {
    pub(crate) count: u64,
    pub(crate) first: Option<String>,
}

impl Failures {
    pub(crate) fn add(&mut self, what: String) {
        self.count += 1;
        self.first.get_or_insert(what);
    }

    pub(crate) fn merge(&mut self, other: Failures) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

pub(crate) fn elapsed_ns(since: Instant, now: Instant) -> u64 {
    u64::try_from(now.duration_since(since).as_nanos()).unwrap_or(u64::MAX)
}

async fn bench_worker<T: Transport>(
    id: usize,
    cfg: &Config,
    gate: &Gate,
    driver: &Driver,
) -> Result<WorkerOutcome, BenchError> {
    let addr = &cfg.servers[id % cfg.servers.len()];
    let mut clients = Vec::with_capacity(cfg.conns_per_worker);
    for _ in 0..cfg.conns_per_worker {
        clients.push(Client::<T>::connect(addr, cfg).await?);
    }
    let mut latencies_ns = Vec::with_capacity(cfg.rounds.max(cfg.warmup));
    if let Driver::RedisHandoff { lists } = driver {
        let list = format!("{lists}:{}", cfg.worker_key(id));
        let client = &mut clients[0];
        // The token: one per worker's own list, or one for the shared list, put there by
        // worker 0 (the others wait for it in BLPOP).
        if !cfg.shared_key || id == 0 {
            redis_integer(client, &format!("RPUSH {list} t\r\n"), "RPUSH").await?;
        }
        handoffs(client, &list, cfg, cfg.warmup, &mut latencies_ns).await?;
        latencies_ns.clear();
        gate.pass().await;
        handoffs(client, &list, cfg, cfg.rounds, &mut latencies_ns).await?;
        // Leave nothing behind: an own list is deleted by its worker; the shared one by the
        // last worker to finish (every other worker has given the token back by then).
        let last = !cfg.shared_key
            || redis_integer(client, &format!("INCR {list}:done\r\n"), "INCR").await?
                == i64::try_from(cfg.workers).unwrap_or(i64::MAX);
        if last {
            redis_integer(client, &format!("DEL {list} {list}:done\r\n"), "DEL").await?;
        }
    } else if *driver == Driver::RedisPing {
        let client = &mut clients[0];
        pings(client, cfg.warmup, &mut latencies_ns).await?;
        latencies_ns.clear();
        gate.pass().await;
        pings(client, cfg.rounds, &mut latencies_ns).await?;
    } else if cfg.pipeline == 1 {
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

/// `ops` pairs of inline `PING` round trips to redis-server: the peer's cost of two requests,
/// through the same sockets, buffers and event loop as [`one_at_a_time`].
async fn pings<T: Transport>(
    client: &mut Client<T>,
    ops: usize,
    latencies_ns: &mut Vec<u64>,
) -> Result<(), BenchError> {
    for _ in 0..ops {
        let t0 = Instant::now();
        for _ in 0..2 {
            client.io.write_all(b"PING\r\n").await?;
            let line = client.reply().await?;
            if line.strip_suffix(b"\r").unwrap_or(line) != b"+PONG" {
                return Err(unexpected("PING", "-", line));
            }
        }
        latencies_ns.push(elapsed_ns(t0, Instant::now()));
    }
    Ok(())
}

/// `ops` hand-offs on the redis list `list`: take the token (`BLPOP`, waiting at most the
/// acquire timeout), give it back (`RPUSH`), two round trips like `l` + `r`. On a shared list
/// the `RPUSH` answers the longest-waiting `BLPOP`, as a release grants the first waiter.
async fn handoffs<T: Transport>(
    client: &mut Client<T>,
    list: &str,
    cfg: &Config,
    ops: usize,
    latencies_ns: &mut Vec<u64>,
) -> Result<(), BenchError> {
    let take = format!("BLPOP {list} {}\r\n", cfg.timeout_s.max(1));
    let mut give = Vec::with_capacity(list.len() + 16);
    for _ in 0..ops {
        let t0 = Instant::now();
        client.io.write_all(take.as_bytes()).await?;
        // `*2`, then the list's name and the token as two bulk strings; `*-1` on a timeout.
        let head = client.reply().await?;
        if head.strip_suffix(b"\r").unwrap_or(head) != b"*2" {
            return Err(unexpected("BLPOP", list, head));
        }
        for _ in 0..3 {
            client.reply().await?;
        }
        let token = client.reply().await?;
        give.clear();
        give.extend_from_slice(b"RPUSH ");
        give.extend_from_slice(list.as_bytes());
        give.push(b' ');
        give.extend_from_slice(token.strip_suffix(b"\r").unwrap_or(token));
        give.extend_from_slice(b"\r\n");
        client.io.write_all(&give).await?;
        let line = client.reply().await?;
        if !line.starts_with(b":") {
            return Err(unexpected("RPUSH", list, line));
        }
        latencies_ns.push(elapsed_ns(t0, Instant::now()));
    }
    Ok(())
}

/// Sends one inline redis command and reads its integer reply (`:<n>`).
async fn redis_integer<T: Transport>(
    client: &mut Client<T>,
    command: &str,
    what: &'static str,
) -> Result<i64, BenchError> {
    client.io.write_all(command.as_bytes()).await?;
    let line = client.reply().await?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.strip_prefix(b":")
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| unexpected(what, "-", line))
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
pub(crate) fn fail(worker: usize, error: &BenchError) -> ! {
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
        Driver::Protocol | Driver::RedisPing | Driver::RedisHandoff { .. } => {
            future::block_on(bench_worker::<Blocking>(id, cfg, gate, driver))
        }
        Driver::Http { addr } => future::block_on(http_worker::<Blocking>(id, cfg, gate, addr)),
        Driver::Etcd { addr } => {
            future::block_on(crate::etcd::etcd_worker::<Blocking>(id, cfg, gate, addr))
        }
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
        Driver::Protocol | Driver::RedisPing | Driver::RedisHandoff { .. } => {
            bench_worker::<Evented>(id, cfg, gate, driver).await
        }
        Driver::Http { addr } => http_worker::<Evented>(id, cfg, gate, addr).await,
        Driver::Etcd { addr } => crate::etcd::etcd_worker::<Evented>(id, cfg, gate, addr).await,
        Driver::Client(api) => client_worker(id, cfg, gate, *api).await,
    }
}

/// Runs every worker as a task of one `dflockd::rt` runtime of `threads` threads (worker `i`
/// on thread `i % threads`), from a thread of its own that returns the outcomes in order.
/// The client library's sockets are async-io's, so `--client` runs on [`spawn_on_loops`].
fn spawn_on_runtime(
    cfg: &Arc<Config>,
    driver: &Driver,
    gate: &Arc<Gate>,
) -> std::thread::JoinHandle<Vec<WorkerOutcome>> {
    let (cfg, driver, gate) = (Arc::clone(cfg), driver.clone(), Arc::clone(gate));
    std::thread::spawn(move || {
        let runtime = match dflockd::rt::Runtime::start(cfg.io_threads, "bench-loop") {
            Ok(runtime) => runtime,
            Err(e) => fail(0, &BenchError::Io(e)),
        };
        runtime.set_spin(cfg.client_spin);
        let tasks: Vec<_> = (0..cfg.workers)
            .map(|id| {
                let (cfg, driver, gate) = (Arc::clone(&cfg), driver.clone(), Arc::clone(&gate));
                runtime.spawn_on(id, async move {
                    let outcome = match driver {
                        Driver::Protocol | Driver::RedisPing | Driver::RedisHandoff { .. } => {
                            bench_worker::<Looped>(id, &cfg, &gate, &driver).await
                        }
                        Driver::Http { addr } => {
                            http_worker::<Looped>(id, &cfg, &gate, &addr).await
                        }
                        Driver::Etcd { addr } => {
                            crate::etcd::etcd_worker::<Looped>(id, &cfg, &gate, &addr).await
                        }
                        Driver::Client(_) => unreachable!("--client runs on spawn_on_loops"),
                    };
                    outcome.unwrap_or_else(|e| fail(id, &e))
                })
            })
            .collect();
        let outcomes = tasks.into_iter().map(future::block_on).collect();
        runtime.stop();
        runtime.join();
        outcomes
    })
}

/// Spreads tasks `0..count` over `threads` event-loop threads (task `i` on
/// loop `i % threads`); each thread returns its tasks' outputs in order.
pub(crate) fn spawn_on_loops<T, Fut>(
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
pub(crate) fn run_workers(cfg: &Arc<Config>, driver: &Driver) -> (Instant, Vec<WorkerOutcome>) {
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
        IoEngine::Loop if !matches!(driver, Driver::Client(_)) => {
            vec![spawn_on_runtime(cfg, driver, &gate)]
        }
        IoEngine::Async | IoEngine::Loop => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::tests::parse;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A scripted redis: for each of `replies`, reads a command line and writes the reply;
    /// returns the lines it read.
    fn scripted(replies: Vec<&'static str>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let peer = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut seen = Vec::new();
            for reply in replies {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                seen.push(line.trim_end().to_string());
                writer.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        (addr, peer)
    }

    #[test]
    fn a_handoff_takes_the_token_and_gives_it_back() {
        // The replies to BLPOP, RPUSH, BLPOP, RPUSH and INCR.
        let (addr, peer) = scripted(vec![
            "*2\r\n$4\r\nlist\r\n$3\r\ntok\r\n",
            ":1\r\n",
            "*2\r\n$4\r\nlist\r\n$3\r\ntok\r\n",
            ":1\r\n",
            ":3\r\n",
        ]);
        let cfg = parse(&["--timeout", "7"]).unwrap();
        let mut latencies = Vec::new();
        let n = future::block_on(async {
            let mut client = Client::<Blocking>::connect(&addr, &cfg).await.unwrap();
            handoffs(&mut client, "list", &cfg, 2, &mut latencies)
                .await
                .unwrap();
            redis_integer(&mut client, "INCR list:done\r\n", "INCR")
                .await
                .unwrap()
        });
        assert_eq!((latencies.len(), n), (2, 3));
        let seen = peer.join().unwrap();
        assert_eq!(
            seen,
            [
                "BLPOP list 7",
                "RPUSH list tok",
                "BLPOP list 7",
                "RPUSH list tok",
                "INCR list:done"
            ]
        );
    }

    #[test]
    fn a_handoff_that_times_out_or_is_refused_is_an_error() {
        for reply in ["*-1\r\n", "-ERR wrong\r\n"] {
            let (addr, peer) = scripted(vec![reply]);
            let cfg = parse(&[]).unwrap();
            let err = future::block_on(async {
                let mut client = Client::<Blocking>::connect(&addr, &cfg).await.unwrap();
                handoffs(&mut client, "list", &cfg, 1, &mut Vec::new()).await
            })
            .unwrap_err();
            assert!(err.to_string().contains("BLPOP"), "{err}");
            peer.join().unwrap();
        }
        let (addr, peer) = scripted(vec!["+OK\r\n"]);
        let cfg = parse(&[]).unwrap();
        let err = future::block_on(async {
            let mut client = Client::<Blocking>::connect(&addr, &cfg).await.unwrap();
            redis_integer(&mut client, "DEL list\r\n", "DEL").await
        })
        .unwrap_err();
        assert!(err.to_string().contains("DEL"), "{err}");
        peer.join().unwrap();
    }
}
