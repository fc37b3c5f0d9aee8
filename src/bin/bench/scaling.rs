//! `--scaling` and `--freeze`: how the server's cost grows with its state.
//!
//! Both modes start the server themselves (the `dflockd` binary next to this one, or
//! `--server-bin`), on 127.0.0.1 with ephemeral ports and the limits the run needs, read its
//! memory from `/proc/<pid>/status`, and stop it by its PID at the end. One fresh server per
//! (dimension, size), so that one measurement's leftovers never weigh on the next.
//!
//! `--scaling` grows each dimension through `--sizes` and measures, at every size, the
//! operations that touch it:
//! * `holders`: one connection holds n slots of one semaphore. Acquire and release of one more
//!   slot; expiry hand-off (a queued waiter's grant, measured from the expiring lease's
//!   deadline); the longest `ping` stall another connection sees while the big holder
//!   disconnects, and while n leases expire.
//! * `waiters`: n waiters queue on one lock (two-phase `e`: a few probe connections first,
//!   then HTTP sessions, since a connection queues once per key). Release with hand-off to the
//!   head, `w` collecting a grant, and joining/leaving at the tail (`e`, then `w 0`).
//! * `keys`: one connection holds n locks on n keys. Acquire/release of a fresh key by another
//!   connection and by the big holder itself; the longest `ping` stall over two idle-GC ticks
//!   that have nothing to collect, while the big holder disconnects, and while the idle GC then
//!   collects the n keys; bytes of server memory per held lock.
//! * `subscriptions`: one connection holds n subscriptions (exact, `*` first, `*` last and
//!   `>` patterns). `listen`/`unlisten` by that connection, `signal` on a channel a probe
//!   listens to, and the `ping` stall while the big subscriber disconnects.
//!
//! Latencies are round trips from one request's write to its reply. A *stall* is the longest
//! round trip of a connection that pings every millisecond during the event; the work behind a
//! disconnect or a mass expiry is proportional to what goes away, so stalls are compared per
//! item. The run fails (exit 1) when, for some operation, the median at the largest size is
//! more than 3 times the median at the smallest (stall per item for stalls; the stall itself
//! for the GC ticks). Figures under the measurement's resolution count as that resolution
//! (50 µs for round trips, 5 ms for the lease timer, 1 ms for a stall, 5 ms for the longest
//! of thousands of quiet pings), so noise at the microsecond level is not a failure.
//!
//! `--stats-stall SIZES` is issue #15's: for each size n, one connection holds n locks on n keys
//! (`l k<i> 0 3600`), another asks for `stats` three times, and a third pings every millisecond.
//! It prints how long each `stats` reply took, its size, the longest `ping` stall while a
//! `stats` reply was being built, and the server's resident memory before and at its peak, and
//! fails (exit 1) when that stall is above 10 ms. The server shares the bench's session: under
//! Linux's autogrouping the two are one scheduling entity, so on a machine busy with other
//! sessions the bench's own reading of a 78 MB reply counts against the server's share too (the
//! `quiet` column shows what the machine alone does).
//!
//! `--freeze N` is issue #10's reproduction: one connection pipelines N times
//! `sl q 0 1000000000 2` (N slots of one semaphore, 2 s leases); another pings every
//! millisecond. It prints the longest `ping` stall while the N leases expire, and after a
//! refill with long leases, while their owner disconnects, and fails (exit 1) above 50 ms.

use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dflockd::conformance::spawn::unused_port;

use crate::http::{parse_response, push_http_post};
use crate::report::{percentile, say};

/// Growth allowed between the smallest and the largest size.
const MAX_GROWTH: f64 = 3.0;
/// Round trips below this are treated as this (resolution of a loopback round trip).
const FLOOR_RTT_MS: f64 = 0.05;
/// The lease timer works in milliseconds, and its wake-up on a loaded machine varies by a few
/// more from run to run (the same at every size): hand-off latencies below this are noise.
const FLOOR_TIMER_MS: f64 = 5.0;
/// Stalls below this are scheduling noise.
const FLOOR_STALL_MS: f64 = 1.0;
/// The longest of a few thousand pings on a shared machine: below this it is noise.
const FLOOR_QUIET_STALL_MS: f64 = 5.0;
/// The freeze target of issue #10.
const FREEZE_TARGET_MS: f64 = 50.0;
/// The longest `ping` stall `--stats-stall` accepts while `stats` is built.
const STATS_STALL_TARGET_MS: f64 = 10.0;
/// `stats` requests per size in `--stats-stall`.
const STATS_ROUNDS: usize = 3;
/// Requests in flight per pipelined fill.
const WINDOW: usize = 512;
/// Probe connections queued ahead of the sessions in the `waiters` dimension (hand-off samples).
const HANDOFF_PROBES: usize = 100;
/// Waiters whose expiry hand-off is timed in the `holders` dimension.
const EXPIRY_WAITERS: usize = 100;
/// A reply later than this is a failure, not a measurement.
const REPLY_DEADLINE: Duration = Duration::from_secs(600);

/// What `--scaling` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub server_bin: PathBuf,
    pub sizes: Vec<usize>,
    pub dims: Vec<Dim>,
    /// Samples per latency operation and size.
    pub samples: usize,
}

/// One dimension of the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Holders,
    Waiters,
    Keys,
    Subscriptions,
}

impl Dim {
    pub const ALL: [Dim; 4] = [Dim::Holders, Dim::Waiters, Dim::Keys, Dim::Subscriptions];

    fn name(self) -> &'static str {
        match self {
            Dim::Holders => "holders",
            Dim::Waiters => "waiters",
            Dim::Keys => "keys",
            Dim::Subscriptions => "subscriptions",
        }
    }

    pub fn parse(s: &str) -> Result<Dim, String> {
        Dim::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| {
            format!("unknown dimension {s:?} (holders, waiters, keys, subscriptions)")
        })
    }
}

/// Parses `1000,10000,...` (at least one size, each > 0, increasing).
pub fn parse_sizes(s: &str) -> Result<Vec<usize>, String> {
    let sizes: Vec<usize> = s
        .split(',')
        .map(|x| {
            x.trim()
                .replace('_', "")
                .parse::<usize>()
                .map_err(|_| format!("--sizes: {x:?} is not a count"))
        })
        .collect::<Result<_, _>>()?;
    if sizes.is_empty() || sizes.contains(&0) || sizes.windows(2).any(|w| w[0] >= w[1]) {
        return Err("--sizes must be increasing counts above 0".into());
    }
    Ok(sizes)
}

/// The `dflockd` binary next to this one (`target/<profile>/`).
pub fn sibling_server() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("dflockd")))
        .unwrap_or_else(|| PathBuf::from("dflockd"))
}

/// Resident memory of process `pid` in bytes (`VmRSS`), if it can be read.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// A size field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`) in bytes, if it can be read.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// A server this bench started. Dropping it kills that process (by its PID, through the
/// `Child` handle) and reaps it.
struct Server {
    child: Child,
    addr: String,
    http: String,
}

impl Server {
    fn start(bin: &Path, extra: &[&str]) -> Result<Server, String> {
        // Below the ephemeral range, and never the same one twice.
        let port = unused_port()?;
        let http = unused_port()?;
        let mut cmd = Command::new(bin);
        // Only our flags count: no DFLOCKD_* variable from the caller's environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("DFLOCKD_") {
                cmd.env_remove(name);
            }
        }
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(["--http-session-idle-timeout", "0", "--read-timeout", "3600"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut server = Server {
            child,
            addr: format!("127.0.0.1:{port}"),
            http: format!("127.0.0.1:{http}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("{} exited at start: {status}", bin.display()));
            }
            if TcpStream::connect(&server.addr).is_ok() && TcpStream::connect(&server.http).is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not start listening", bin.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rss(&self) -> Option<u64> {
        rss_bytes(self.child.id())
    }

    /// The peak resident memory so far (`VmHWM`).
    fn peak_rss(&self) -> Option<u64> {
        status_bytes(self.child.id(), "VmHWM:")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// A line-protocol connection with a small, growable reply buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

fn io_err(what: impl std::fmt::Display) -> String {
    what.to_string()
}

impl Conn {
    fn connect(addr: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(io_err)?;
        stream
            .set_read_timeout(Some(REPLY_DEADLINE))
            .map_err(io_err)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            start: 0,
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.write_all(bytes).map_err(io_err)
    }

    /// The next line, pushed `sig` lines included.
    fn line(&mut self) -> Result<String, String> {
        // Bytes after `start` already searched for a newline: a long line (a `stats` reply of
        // many megabytes) is scanned once, not once per read.
        let mut searched = 0;
        loop {
            let from = self.start + searched;
            if let Some(i) = self.buf[from..].iter().position(|&b| b == b'\n') {
                let raw = &self.buf[self.start..from + i];
                let line = String::from_utf8_lossy(raw)
                    .trim_end_matches('\r')
                    .to_string();
                self.start = from + i + 1;
                return Ok(line);
            }
            searched = self.buf.len() - self.start;
            self.buf.drain(..self.start);
            self.start = 0;
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).map_err(io_err)?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next reply, pushed `sig` lines skipped.
    fn reply(&mut self) -> Result<String, String> {
        loop {
            let line = self.line()?;
            if !line.starts_with("sig ") {
                return Ok(line);
            }
        }
    }

    /// One request, its reply and the round trip in milliseconds.
    fn call(&mut self, req: &str) -> Result<(String, f64), String> {
        let t0 = Instant::now();
        self.send(req.as_bytes())?;
        let reply = self.reply()?;
        Ok((reply, ms(t0.elapsed())))
    }

    /// `count` requests written by `req`, `WINDOW` in flight; every reply goes to `check`.
    fn pipeline(
        &mut self,
        count: usize,
        mut req: impl FnMut(usize, &mut Vec<u8>),
        mut check: impl FnMut(usize, &str) -> Result<(), String>,
    ) -> Result<(), String> {
        let (mut sent, mut got) = (0, 0);
        let mut out = Vec::with_capacity(WINDOW * 32);
        while got < count {
            while sent < count && sent - got < WINDOW {
                req(sent, &mut out);
                sent += 1;
            }
            if !out.is_empty() {
                self.send(&out)?;
                out.clear();
            }
            // Read half a window, then top it up again.
            let until = (got + WINDOW / 2).min(sent);
            while got < until {
                let line = self.reply()?;
                check(got, &line)?;
                got += 1;
            }
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn expect(what: &str, reply: &str, prefix: &str) -> Result<(), String> {
    if reply.starts_with(prefix) {
        Ok(())
    } else {
        Err(format!("{what}: expected {prefix:?}, got {reply:?}"))
    }
}

/// The token of `ok <token> <lease>`.
fn token_of(reply: &str) -> Result<String, String> {
    let mut words = reply.split(' ');
    match (words.next(), words.next()) {
        (Some("ok" | "acquired"), Some(t)) if t.len() == 32 => Ok(t.to_string()),
        _ => Err(format!("expected a grant, got {reply:?}")),
    }
}

/// A connection that pings every millisecond on its own thread and records every round trip.
struct Pinger {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Vec<(Instant, f64)>, String>>,
}

impl Pinger {
    fn start(addr: &str) -> Result<Pinger, String> {
        let mut conn = Conn::connect(addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let (reply, rtt) = conn.call("ping\n_\n\n")?;
                expect("ping", &reply, "ok")?;
                samples.push((t0, rtt));
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(samples)
        });
        Ok(Pinger { stop, handle })
    }

    /// Stops after the ping in flight is answered (however long the server takes).
    fn finish(self) -> Result<Vec<(Instant, f64)>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .unwrap_or_else(|_| Err("the pinger panicked".into()))
    }
}

/// Round trips of the pings that were in flight at some point of `[from, to]`.
fn stall_window(samples: &[(Instant, f64)], from: Instant, to: Instant) -> Vec<f64> {
    samples
        .iter()
        .filter(|(t0, rtt)| *t0 <= to && *t0 + Duration::from_secs_f64(rtt / 1000.0) >= from)
        .map(|(_, rtt)| *rtt)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Compare medians, resolution `floor_ms`.
    Latency { floor_ms: f64 },
    /// Compare the longest stall per item that went away (`items` 1: the
    /// longest stall itself), at least `floor_ms`.
    Stall { items: usize, floor_ms: f64 },
}

struct Row {
    dim: Dim,
    op: &'static str,
    size: usize,
    kind: Kind,
    /// Milliseconds.
    values: Vec<f64>,
}

impl Row {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self) -> f64 {
        percentile(&self.sorted(), 50.0)
    }

    fn max(&self) -> f64 {
        self.values.iter().copied().fold(0.0, f64::max)
    }

    /// The figure compared across sizes.
    fn figure(&self) -> f64 {
        match self.kind {
            Kind::Latency { floor_ms } => self.median().max(floor_ms),
            Kind::Stall { items, floor_ms } => self.max().max(floor_ms) / items.max(1) as f64,
        }
    }

    fn show(&self) -> String {
        let v = self.sorted();
        let (median, p99, max) = (percentile(&v, 50.0), percentile(&v, 99.0), self.max());
        let extra = match self.kind {
            Kind::Latency { .. } => String::new(),
            Kind::Stall { items: 1, .. } => format!("  stall {max:.3} ms"),
            Kind::Stall { items, .. } => {
                format!(
                    "  stall {max:.3} ms = {:.3} µs/item",
                    max * 1000.0 / items.max(1) as f64
                )
            }
        };
        format!(
            "  {:<14} {:<30} {:>9} {:>7} {:>10.3} {:>10.3} {:>10.3}{extra}\n",
            self.dim.name(),
            self.op,
            self.size,
            v.len(),
            median,
            p99,
            max
        )
    }
}

fn latency(dim: Dim, op: &'static str, size: usize, values: Vec<f64>) -> Row {
    Row {
        dim,
        op,
        size,
        kind: Kind::Latency {
            floor_ms: FLOOR_RTT_MS,
        },
        values,
    }
}

fn stall(dim: Dim, op: &'static str, size: usize, values: Vec<f64>) -> Row {
    Row {
        dim,
        op,
        size,
        kind: Kind::Stall {
            items: size,
            floor_ms: FLOOR_STALL_MS,
        },
        values,
    }
}

/// Pings while `event` runs and for `settle` after it returns; the stall is the longest
/// round trip of a ping in flight from the event's start to the end.
fn watch(
    addr: &str,
    settle: Duration,
    event: impl FnOnce() -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    let pinger = Pinger::start(addr)?;
    std::thread::sleep(Duration::from_millis(100));
    let from = Instant::now();
    event()?;
    std::thread::sleep(settle);
    let to = Instant::now();
    let samples = pinger.finish()?;
    Ok(stall_window(&samples, from, to))
}

// ---------------------------------------------------------------------------------------------
// Dimensions
// ---------------------------------------------------------------------------------------------

fn sl(key: &str, timeout: u64, limit: usize, lease: u64) -> String {
    format!("sl\n{key}\n{timeout} {limit} {lease}\n")
}

fn holders(bin: &Path, n: usize, k: usize, rows: &mut Vec<Row>) -> Result<(), String> {
    const SEM: &str = "scale_sem";
    let limit = n + k;
    let server = Server::start(bin, &[])?;
    let addr = server.addr.as_str();
    let mut big = Conn::connect(addr)?;
    let t_fill = Instant::now();
    let fill = sl(SEM, 0, limit, 3600);
    big.pipeline(
        n,
        |_, out| out.extend_from_slice(fill.as_bytes()),
        |_, r| expect("fill sl", r, "ok "),
    )?;
    let fill_time = t_fill.elapsed();

    // Acquire and release one more slot, `k` times.
    let mut probe = Conn::connect(addr)?;
    let (mut acq, mut rel, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..k {
        let (r, t) = probe.call(&sl(SEM, 0, limit, 3600))?;
        tokens.push(token_of(&r)?);
        acq.push(t);
    }
    for tok in &tokens {
        let (r, t) = probe.call(&format!("sr\n{SEM}\n{tok}\n"))?;
        expect("sr", &r, "ok")?;
        rel.push(t);
    }
    rows.push(latency(Dim::Holders, "sl acquire", n, acq));
    rows.push(latency(Dim::Holders, "sr release", n, rel));

    // Expiry hand-off: `k` slots with 1 s leases fill the semaphore, waiters queue behind it,
    // and each is granted when one of those leases expires.
    let mut short = Conn::connect(addr)?;
    let mut granted_at = Vec::with_capacity(k);
    let one = sl(SEM, 0, limit, 1);
    short.pipeline(
        k,
        |_, out| out.extend_from_slice(one.as_bytes()),
        |_, r| {
            granted_at.push(Instant::now());
            expect("short sl", r, "ok ")
        },
    )?;
    let m = EXPIRY_WAITERS.min(k);
    let mut waiters = Vec::with_capacity(m);
    for _ in 0..m {
        let mut w = Conn::connect(addr)?;
        w.send(sl(SEM, 30, limit, 3600).as_bytes())?;
        waiters.push(w);
    }
    let mut handoff = Vec::with_capacity(m);
    for (j, w) in waiters.iter_mut().enumerate() {
        let r = w.reply()?;
        let got = Instant::now();
        token_of(&r)?;
        let deadline = granted_at[j] + Duration::from_secs(1);
        handoff.push(ms(got.saturating_duration_since(deadline)));
    }
    rows.push(Row {
        dim: Dim::Holders,
        op: "expiry hand-off",
        size: n,
        kind: Kind::Latency {
            floor_ms: FLOOR_TIMER_MS,
        },
        values: handoff,
    });
    drop(waiters);
    drop(short);

    // The big holder disconnects: n releases.
    let stalls = watch(addr, Duration::from_millis(1000), || {
        drop(big);
        Ok(())
    })?;
    rows.push(stall(Dim::Holders, "disconnect (ping stall)", n, stalls));
    let (r, _) = probe.call(&sl(SEM, 0, limit, 3600))?;
    expect("sl after the disconnect", &r, "ok ")?;

    // n leases expire: refill with a lease that ends after the refill is done.
    let lease_s = 2 + 2 * fill_time.as_secs();
    let mut big = Conn::connect(addr)?;
    let again = sl(SEM, 0, limit, lease_s);
    let t0 = Instant::now();
    big.pipeline(
        n,
        |_, out| out.extend_from_slice(again.as_bytes()),
        |_, r| expect("refill sl", r, "ok "),
    )?;
    let t1 = Instant::now();
    let first = t0 + Duration::from_secs(lease_s);
    let last = t1 + Duration::from_secs(lease_s);
    let pinger = Pinger::start(addr)?;
    std::thread::sleep(last.saturating_duration_since(Instant::now()) + Duration::from_secs(1));
    let samples = pinger.finish()?;
    let window = stall_window(
        &samples,
        first - Duration::from_millis(100),
        last + Duration::from_millis(500),
    );
    rows.push(stall(Dim::Holders, "lease expiry (ping stall)", n, window));
    drop(server);
    Ok(())
}

fn waiters(bin: &Path, n: usize, k: usize, rows: &mut Vec<Row>) -> Result<(), String> {
    const KEY: &str = "scale_wait";
    let server = Server::start(bin, &[])?;
    let addr = server.addr.as_str();
    let mut holder = Conn::connect(addr)?;
    let (r, _) = holder.call(&format!("l\n{KEY}\n0 3600\n"))?;
    let mut token = token_of(&r)?;
    // Probes first, each confirmed queued so that their order is known.
    let probes_n = HANDOFF_PROBES.min(n);
    let mut probes = Vec::with_capacity(probes_n);
    for _ in 0..probes_n {
        let mut p = Conn::connect(addr)?;
        let (r, _) = p.call(&format!("e\n{KEY}\n3600\n"))?;
        expect("probe e", &r, "queued")?;
        probes.push(p);
    }
    // The rest are HTTP sessions, each with one two-phase waiter.
    enqueue_sessions(&server.http, KEY, n - probes_n)?;

    // Join and leave at the tail.
    let mut tail = Conn::connect(addr)?;
    let (mut join, mut leave) = (Vec::new(), Vec::new());
    for _ in 0..k {
        let (r, t) = tail.call(&format!("e\n{KEY}\n3600\n"))?;
        expect("tail e", &r, "queued")?;
        join.push(t);
        let (r, t) = tail.call(&format!("w\n{KEY}\n0\n"))?;
        expect("tail w 0", &r, "timeout")?;
        leave.push(t);
    }
    rows.push(latency(Dim::Waiters, "e joins the tail", n, join));
    rows.push(latency(Dim::Waiters, "w 0 leaves the tail", n, leave));

    // Release with hand-off to the head, probe by probe.
    let (mut release, mut collect) = (Vec::new(), Vec::new());
    let mut current = &mut holder;
    for p in probes.iter_mut() {
        let (r, t) = current.call(&format!("r\n{KEY}\n{token}\n"))?;
        expect("r", &r, "ok")?;
        release.push(t);
        let (r, t) = p.call(&format!("w\n{KEY}\n0\n"))?;
        token = token_of(&r)?;
        collect.push(t);
        current = p;
    }
    rows.push(latency(Dim::Waiters, "r hands off to the head", n, release));
    rows.push(latency(Dim::Waiters, "w collects the grant", n, collect));
    drop(server);
    Ok(())
}

/// Creates `count` HTTP sessions and queues one two-phase waiter on `key` for each, over a
/// few pipelined keep-alive connections.
fn enqueue_sessions(http: &str, key: &str, count: usize) -> Result<(), String> {
    const LANES: usize = 4;
    let handles: Vec<JoinHandle<Result<(), String>>> = (0..LANES)
        .map(|lane| {
            let http = http.to_string();
            let key = key.to_string();
            let mine = count / LANES + usize::from(lane < count % LANES);
            std::thread::spawn(move || {
                let mut conn = HttpConn::connect(&http)?;
                let ids = conn.pipeline(
                    mine,
                    |_, out| push_http_post(out, &http, "/v1/sessions", None, None, b""),
                    |_, status, body| {
                        if status != 200 {
                            return Err(format!("create session: HTTP {status}"));
                        }
                        let v: serde_json::Value = serde_json::from_slice(body).map_err(io_err)?;
                        v.get("session_id")
                            .and_then(|s| s.as_str())
                            .map(str::to_string)
                            .ok_or_else(|| "create session: no session_id".to_string())
                    },
                )?;
                let path = format!("/v1/locks/{key}/enqueue");
                conn.pipeline(
                    mine,
                    |i, out| push_http_post(out, &http, &path, Some(&ids[i]), None, b""),
                    |_, status, body| {
                        if status == 200 && body.windows(8).any(|w| w == b"\"queued\"") {
                            Ok(())
                        } else {
                            Err(format!(
                                "enqueue: HTTP {status} {}",
                                String::from_utf8_lossy(body)
                            ))
                        }
                    },
                )?;
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .unwrap_or_else(|_| Err("a session thread panicked".into()))?;
    }
    Ok(())
}

/// A keep-alive HTTP/1.1 connection for pipelined `POST`s.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    fn connect(addr: &str) -> Result<HttpConn, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(io_err)?;
        stream
            .set_read_timeout(Some(REPLY_DEADLINE))
            .map_err(io_err)?;
        Ok(HttpConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// `count` requests written by `req`, a window in flight; `check` maps each response.
    fn pipeline<T>(
        &mut self,
        count: usize,
        mut req: impl FnMut(usize, &mut Vec<u8>),
        mut check: impl FnMut(usize, u16, &[u8]) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        const HTTP_WINDOW: usize = 64;
        let mut results = Vec::with_capacity(count);
        let mut sent = 0;
        let mut out = Vec::new();
        let mut in_flight = VecDeque::new();
        while results.len() < count {
            while sent < count && in_flight.len() < HTTP_WINDOW {
                req(sent, &mut out);
                in_flight.push_back(sent);
                sent += 1;
            }
            if !out.is_empty() {
                self.stream.write_all(&out).map_err(io_err)?;
                out.clear();
            }
            loop {
                match parse_response(&self.buf).map_err(|e| e.to_string())? {
                    Some((response, used)) => {
                        self.buf.drain(..used);
                        let i = in_flight.pop_front().ok_or("an unasked-for response")?;
                        results.push(check(i, response.status, &response.body)?);
                        if response.close {
                            return Err("the server closed the HTTP connection".into());
                        }
                        if in_flight.len() < HTTP_WINDOW / 2 {
                            break;
                        }
                    }
                    None => {
                        let mut chunk = [0u8; 16 * 1024];
                        let n = self.stream.read(&mut chunk).map_err(io_err)?;
                        if n == 0 {
                            return Err("the server closed the HTTP connection".into());
                        }
                        self.buf.extend_from_slice(&chunk[..n]);
                    }
                }
                if in_flight.is_empty() {
                    break;
                }
            }
        }
        Ok(results)
    }
}

fn keys(
    bin: &Path,
    n: usize,
    k: usize,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let max_locks = (n + 2 * k + 16).to_string();
    let server = Server::start(
        bin,
        &[
            "--max-locks",
            &max_locks,
            "--gc-interval",
            "1",
            "--gc-max-idle",
            "2",
        ],
    )?;
    let addr = server.addr.as_str();
    let mut big = Conn::connect(addr)?;
    let before = server.rss();
    big.pipeline(
        n,
        |i, out| out.extend_from_slice(format!("l\nscale_key_{i}\n0 3600\n").as_bytes()),
        |_, r| expect("fill l", r, "ok "),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    if let (Some(b), Some(a)) = (before, server.rss()) {
        notes.push(format!(
            "keys {n}: server RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes per held lock",
            b as f64 / 1048576.0,
            a as f64 / 1048576.0,
            a.saturating_sub(b) as f64 / n as f64
        ));
    }
    for (who, op_acq, op_rel) in [
        ("probe", "l fresh key", "r fresh key"),
        ("big", "l by the big holder", "r by the big holder"),
    ] {
        let mut other = Conn::connect(addr)?;
        let conn = if who == "big" { &mut big } else { &mut other };
        let (mut acq, mut rel) = (Vec::new(), Vec::new());
        for j in 0..k {
            let key = format!("scale_{who}_{j}");
            let (r, t) = conn.call(&format!("l\n{key}\n0 3600\n"))?;
            let tok = token_of(&r)?;
            acq.push(t);
            let (r, t) = conn.call(&format!("r\n{key}\n{tok}\n"))?;
            expect("r", &r, "ok")?;
            rel.push(t);
        }
        rows.push(latency(Dim::Keys, op_acq, n, acq));
        rows.push(latency(Dim::Keys, op_rel, n, rel));
    }
    // The idle GC runs every second and has nothing to collect: it must not
    // visit the n held keys.
    let quiet = watch(addr, Duration::from_millis(2500), || Ok(()))?;
    rows.push(Row {
        dim: Dim::Keys,
        op: "gc tick, n held (ping stall)",
        size: n,
        kind: Kind::Stall {
            items: 1,
            floor_ms: FLOOR_QUIET_STALL_MS,
        },
        values: quiet,
    });
    // The big holder goes: n releases, then the idle GC collects the n keys (idle > 2 s).
    let pinger = Pinger::start(addr)?;
    std::thread::sleep(Duration::from_millis(100));
    let closed = Instant::now();
    drop(big);
    std::thread::sleep(Duration::from_millis(4500));
    let samples = pinger.finish()?;
    rows.push(stall(
        Dim::Keys,
        "disconnect (ping stall)",
        n,
        stall_window(&samples, closed, closed + Duration::from_millis(1500)),
    ));
    rows.push(stall(
        Dim::Keys,
        "idle gc (ping stall)",
        n,
        stall_window(
            &samples,
            closed + Duration::from_millis(1500),
            closed + Duration::from_millis(4500),
        ),
    ));
    drop(server);
    Ok(())
}

fn subscriptions(bin: &Path, n: usize, k: usize, rows: &mut Vec<Row>) -> Result<(), String> {
    let server = Server::start(bin, &[])?;
    let addr = server.addr.as_str();
    let mut big = Conn::connect(addr)?;
    big.pipeline(
        n,
        |i, out| {
            let pattern = match i % 4 {
                0 => format!("s{i}.*"),
                1 => format!("*.s{i}"),
                2 => format!("s{i}.>"),
                _ => format!("s{i}"),
            };
            out.extend_from_slice(format!("listen\n{pattern}\n\n").as_bytes());
        },
        |_, r| expect("fill listen", r, "ok"),
    )?;
    // A probe subscriber on the channel the signals go to; its pushes are drained.
    let mut sub = Conn::connect(addr)?;
    for (p, g) in [("q.x", ""), ("q.*", ""), ("q.>", ""), ("q.x", "g")] {
        let (r, _) = sub.call(&format!("listen\n{p}\n{g}\n"))?;
        expect("probe listen", &r, "ok")?;
    }
    let mut drain = sub.stream.try_clone().map_err(io_err)?;
    let drainer = std::thread::spawn(move || {
        let mut sink = [0u8; 16 * 1024];
        while matches!(drain.read(&mut sink), Ok(n) if n > 0) {}
    });
    let mut publisher = Conn::connect(addr)?;
    let (mut lis, mut unl, mut sig) = (Vec::new(), Vec::new(), Vec::new());
    for j in 0..k {
        let (r, t) = big.call(&format!("listen\nq{j}.*\n\n"))?;
        expect("listen", &r, "ok")?;
        lis.push(t);
        let (r, t) = big.call(&format!("unlisten\nq{j}.*\n\n"))?;
        expect("unlisten", &r, "ok")?;
        unl.push(t);
        let (r, t) = publisher.call(&format!("signal\nq.x\np{j}\n"))?;
        expect("signal", &r, "ok 2")?;
        sig.push(t);
    }
    rows.push(latency(Dim::Subscriptions, "listen", n, lis));
    rows.push(latency(Dim::Subscriptions, "unlisten", n, unl));
    rows.push(latency(Dim::Subscriptions, "signal (2 pushes)", n, sig));
    let stalls = watch(addr, Duration::from_millis(1000), || {
        drop(big);
        Ok(())
    })?;
    rows.push(stall(
        Dim::Subscriptions,
        "disconnect (ping stall)",
        n,
        stalls,
    ));
    drop(server);
    let _ = drainer.join();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Runs `--scaling`; exit 1 when an operation grows more than 3× (or a run fails).
pub fn run_scaling(plan: &Plan) -> ExitCode {
    say(&format!(
        "scaling: server {}, sizes {:?}, {} samples per operation\n\n",
        plan.server_bin.display(),
        plan.sizes,
        plan.samples
    ));
    say(&format!(
        "  {:<14} {:<30} {:>9} {:>7} {:>10} {:>10} {:>10}\n",
        "dimension", "operation", "size", "n", "median ms", "p99 ms", "max ms"
    ));
    let mut rows: Vec<Row> = Vec::new();
    let mut notes = Vec::new();
    for &dim in &plan.dims {
        for &size in &plan.sizes {
            let first = rows.len();
            let k = plan.samples;
            let outcome = match dim {
                Dim::Holders => holders(&plan.server_bin, size, k, &mut rows),
                Dim::Waiters => waiters(&plan.server_bin, size, k, &mut rows),
                Dim::Keys => keys(&plan.server_bin, size, k, &mut rows, &mut notes),
                Dim::Subscriptions => subscriptions(&plan.server_bin, size, k, &mut rows),
            };
            for row in &rows[first..] {
                say(&row.show());
            }
            if let Err(e) = outcome {
                say(&format!(
                    "scaling: {} at size {size} failed: {e}\n",
                    dim.name()
                ));
                return ExitCode::FAILURE;
            }
        }
    }
    say("\n");
    for note in &notes {
        say(&format!("  {note}\n"));
    }
    let verdict = verdicts(&rows);
    say(&verdict.text);
    if verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Verdict {
    ok: bool,
    text: String,
}

/// Compares, per operation, the figure at the largest size with the one at the smallest.
fn verdicts(rows: &[Row]) -> Verdict {
    let mut text = String::from("\n  growth from the smallest to the largest size:\n");
    let mut ok = true;
    let mut seen: Vec<(Dim, &str)> = Vec::new();
    for row in rows {
        if seen.contains(&(row.dim, row.op)) {
            continue;
        }
        seen.push((row.dim, row.op));
        let same: Vec<&Row> = rows
            .iter()
            .filter(|r| r.dim == row.dim && r.op == row.op)
            .collect();
        let (Some(small), Some(large)) = (
            same.iter().min_by_key(|r| r.size),
            same.iter().max_by_key(|r| r.size),
        ) else {
            continue;
        };
        let ratio = large.figure() / small.figure();
        let pass = ratio <= MAX_GROWTH;
        ok &= pass;
        let what = match row.kind {
            Kind::Latency { .. } => "median",
            Kind::Stall { items: 1, .. } => "longest stall",
            Kind::Stall { .. } => "stall per item",
        };
        text.push_str(&format!(
            "  {:<14} {:<30} {what:<15} x{ratio:<8.2} {}\n",
            row.dim.name(),
            row.op,
            if pass { "ok" } else { "GROWS" }
        ));
    }
    text.push_str(if ok {
        "  scaling: ok\n"
    } else {
        "  scaling: FAILED (some operation grows more than 3x)\n"
    });
    Verdict { ok, text }
}

/// Runs `--freeze N`; exit 1 when a stall exceeds 50 ms (or the run fails).
pub fn run_freeze(server_bin: &Path, n: usize) -> ExitCode {
    match freeze(server_bin, n) {
        Ok((expiry, disconnect)) => {
            say(&format!(
                "freeze: {n} slots of one semaphore (sl q 0 1000000000 L), server {}\n  \
                 longest ping stall while the leases expire:   {expiry:>10.3} ms\n  \
                 longest ping stall while the owner disconnects: {disconnect:>8.3} ms\n  \
                 target: below {FREEZE_TARGET_MS} ms\n",
                server_bin.display()
            ));
            if expiry < FREEZE_TARGET_MS && disconnect < FREEZE_TARGET_MS {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            say(&format!("freeze: {e}\n"));
            ExitCode::FAILURE
        }
    }
}

fn freeze(bin: &Path, n: usize) -> Result<(f64, f64), String> {
    let server = Server::start(bin, &[])?;
    let addr = server.addr.as_str();
    let pinger = Pinger::start(addr)?;
    // Phase 1: n slots with 2 s leases, as in the issue; they expire about 2 s later.
    let mut big = Conn::connect(addr)?;
    let req = "sl\nq\n0 1000000000 2\n";
    let t0 = Instant::now();
    big.pipeline(
        n,
        |_, out| out.extend_from_slice(req.as_bytes()),
        |_, r| expect("sl", r, "ok "),
    )?;
    let t1 = Instant::now();
    say(&format!(
        "freeze: {n} slots granted in {:.3}s\n",
        (t1 - t0).as_secs_f64()
    ));
    let (first, last) = (t0 + Duration::from_secs(2), t1 + Duration::from_secs(2));
    std::thread::sleep(last.saturating_duration_since(Instant::now()) + Duration::from_secs(1));
    let samples = pinger.finish()?;
    let expiry = stall_window(&samples, first, last + Duration::from_millis(500))
        .into_iter()
        .fold(0.0, f64::max);
    // Phase 2: refill with long leases, then the owner disconnects.
    let req = "sl\nq\n0 1000000000 3600\n";
    big.pipeline(
        n,
        |_, out| out.extend_from_slice(req.as_bytes()),
        |_, r| expect("sl", r, "ok "),
    )?;
    let disconnect = watch(addr, Duration::from_secs(2), || {
        drop(big);
        Ok(())
    })?
    .into_iter()
    .fold(0.0, f64::max);
    drop(server);
    Ok((expiry, disconnect))
}

/// Runs `--stats-stall`: exit 1 when a `ping` stalls more than 10 ms behind `stats`.
pub fn run_stats_stall(server_bin: &Path, sizes: &[usize]) -> ExitCode {
    say(&format!(
        "stats-stall: one connection holds n locks; another asks for `stats` {STATS_ROUNDS} times; \
         a third pings every ms\n  server {}\n  \
         (quiet: the longest ping over as long again with no `stats`: the machine's own noise)\n  \
         (RSS: before the first `stats`, and the peak by the end)\n  \
         {:>9} {:>10} {:>9} {:>12} {:>12} {:>12} {:>8} {:>8}\n",
        server_bin.display(),
        "n",
        "stats ms",
        "reply MB",
        "stall ms",
        "quiet ms",
        "median ping",
        "RSS MB",
        "peak MB"
    ));
    let mut ok = true;
    for &n in sizes {
        match stats_stall(server_bin, n) {
            Ok(m) => {
                say(&format!(
                    "  {n:>9} {:>10.1} {:>9.1} {:>12.3} {:>12.3} {:>12.3} {:>8.0} {:>8.0}\n",
                    m.reply_ms,
                    m.reply_mb,
                    m.stall_ms,
                    m.quiet_ms,
                    m.median_ping_ms,
                    m.rss_mb,
                    m.peak_mb
                ));
                ok &= m.stall_ms <= STATS_STALL_TARGET_MS;
            }
            Err(e) => {
                say(&format!("  {n:>9} failed: {e}\n"));
                ok = false;
            }
        }
    }
    say(&format!(
        "  target: longest stall at most {STATS_STALL_TARGET_MS} ms\n"
    ));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct StatsStall {
    /// Median time from sending `stats` to its whole reply.
    reply_ms: f64,
    reply_mb: f64,
    /// The longest ping round trip that overlapped a `stats` build.
    stall_ms: f64,
    /// The longest ping round trip over as long again with no `stats` in flight.
    quiet_ms: f64,
    median_ping_ms: f64,
    /// The server's resident memory before the first `stats`, and its peak by the end.
    rss_mb: f64,
    peak_mb: f64,
}

fn stats_stall(bin: &Path, n: usize) -> Result<StatsStall, String> {
    let max_locks = (n + 16).to_string();
    let server = Server::start(bin, &["--max-locks", &max_locks])?;
    let addr = server.addr.as_str();
    let mut holder = Conn::connect(addr)?;
    holder.pipeline(
        n,
        |i, out| out.extend_from_slice(format!("l\nk{i}\n0 3600\n").as_bytes()),
        |_, r| expect("l", r, "ok "),
    )?;
    let mut asker = Conn::connect(addr)?;
    let pinger = Pinger::start(addr)?;
    std::thread::sleep(Duration::from_millis(200));
    let mb = |b: Option<u64>| b.map_or(f64::NAN, |b| b as f64 / 1e6);
    let rss_mb = mb(server.rss());
    let mut rounds = Vec::new();
    for _ in 0..STATS_ROUNDS {
        let t0 = Instant::now();
        asker.send(b"stats\n_\n\n")?;
        let reply = asker.reply()?;
        let t1 = Instant::now();
        if !reply.starts_with("ok {") {
            return Err(format!("stats: unexpected reply {:.60}", reply));
        }
        rounds.push((t0, t1, reply.len()));
        std::thread::sleep(Duration::from_millis(300));
    }
    let busy: Duration = rounds.iter().map(|&(t0, t1, _)| t1 - t0).sum();
    let quiet_from = Instant::now();
    std::thread::sleep(busy);
    let quiet_to = Instant::now();
    let samples = pinger.finish()?;
    let peak_mb = mb(server.peak_rss());
    let quiet_ms = stall_window(&samples, quiet_from, quiet_to)
        .into_iter()
        .fold(0.0, f64::max);
    let stall_ms = rounds
        .iter()
        .flat_map(|&(t0, t1, _)| stall_window(&samples, t0, t1))
        .fold(0.0, f64::max);
    let mut times: Vec<f64> = rounds.iter().map(|&(t0, t1, _)| ms(t1 - t0)).collect();
    times.sort_by(f64::total_cmp);
    let mut pings: Vec<f64> = samples.iter().map(|&(_, rtt)| rtt).collect();
    pings.sort_by(f64::total_cmp);
    drop(server);
    Ok(StatsStall {
        reply_ms: percentile(&times, 50.0),
        reply_mb: rounds.last().map_or(0, |r| r.2) as f64 / 1e6,
        stall_ms,
        quiet_ms,
        median_ping_ms: percentile(&pings, 50.0),
        rss_mb,
        peak_mb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_dimensions_parse() {
        assert_eq!(parse_sizes("1000,10_000").unwrap(), vec![1000, 10_000]);
        assert!(parse_sizes("10,10").is_err());
        assert!(parse_sizes("0").is_err());
        assert!(parse_sizes("a").is_err());
        assert_eq!(Dim::parse("keys").unwrap(), Dim::Keys);
        assert!(Dim::parse("nope").is_err());
    }

    fn row(kind: Kind, size: usize, values: Vec<f64>) -> Row {
        Row {
            dim: Dim::Keys,
            op: "op",
            size,
            kind,
            values,
        }
    }

    #[test]
    fn growth_is_judged_on_medians_with_a_floor_and_on_stalls_per_item() {
        let lat = Kind::Latency { floor_ms: 0.05 };
        // Below the floor, noise does not count.
        let v = verdicts(&[
            row(lat, 10, vec![0.01]),
            row(lat, 1000, vec![0.04, 0.06, 0.12]),
        ]);
        assert!(v.ok, "{}", v.text);
        let v = verdicts(&[row(lat, 10, vec![0.1]), row(lat, 1000, vec![0.5])]);
        assert!(!v.ok, "{}", v.text);
        // 1000x the items and 500x the stall: per item it shrank.
        let stall = |items| Kind::Stall {
            items,
            floor_ms: 1.0,
        };
        let v = verdicts(&[
            row(stall(10), 10, vec![0.2, 2.0]),
            row(stall(10_000), 10_000, vec![0.2, 1000.0]),
        ]);
        assert!(v.ok, "{}", v.text);
        let v = verdicts(&[
            row(stall(10), 10, vec![2.0]),
            row(stall(100), 100, vec![100.0]),
        ]);
        assert!(!v.ok, "{}", v.text);
        // A quiet stall is compared as it is, above its floor.
        let quiet = Kind::Stall {
            items: 1,
            floor_ms: 5.0,
        };
        let v = verdicts(&[row(quiet, 10, vec![0.3]), row(quiet, 1000, vec![4.0])]);
        assert!(v.ok, "{}", v.text);
        let v = verdicts(&[row(quiet, 10, vec![0.3]), row(quiet, 1000, vec![40.0])]);
        assert!(!v.ok, "{}", v.text);
    }

    #[test]
    fn stall_window_keeps_pings_in_flight_during_the_window() {
        let t = Instant::now();
        let s = |off_ms: u64, rtt: f64| (t + Duration::from_millis(off_ms), rtt);
        let samples = [s(0, 1.0), s(10, 500.0), s(600, 1.0), s(2000, 1.0)];
        let w = stall_window(
            &samples,
            t + Duration::from_millis(100),
            t + Duration::from_millis(700),
        );
        assert_eq!(w, vec![500.0, 1.0]);
    }
}
