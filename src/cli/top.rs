//! `dflockd top`: a refreshing terminal view of the busiest keys, like
//! `nats-top`. It reads the HTTP front's bounded views (http.md §8):
//! `GET /v1/activity` for rates and distributions, `GET /v1/stats?top=N`
//! for the keys, so it never downloads the whole listing, however many
//! locks the server holds.
//!
//! On a terminal it takes the alternate screen, redraws every `--interval`
//! seconds and reads single keys (`q` quits; `w`, `h`, `f` choose the
//! order); SIGINT and SIGTERM quit too, and the terminal is restored
//! whichever way it ends. When standard output is not a terminal it prints
//! plain text (no escape sequences) `--count` times (default once), so it
//! can be piped or logged.
//!
//! The HTTP client is a minimal HTTP/1.1 one over this crate's client
//! streams (TCP, or TLS with `--tls-ca`): one keep-alive connection,
//! `Content-Length` bodies only (which is what the server sends), responses
//! parsed with `httparse`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argh::FromArgs;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde_json::Value;

use super::{exit, parse, path, Endpoint};
use crate::client::{Stream, TlsOptions};

/// The default address: the HTTP port of a local server.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6389";
/// The largest response body read.
const MAX_BODY: usize = 8 << 20;
/// A request that takes longer than this fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Orders that need a scan of every key are asked for at most this often.
const SCAN_EVERY: Duration = Duration::from_secs(5);

/// Show the busiest keys of a server, refreshed every second: queue
/// lengths, holders, grants and timeouts per second (`q` quits; `w`, `h`,
/// `f` order by waiters, time held, fill). Reads the HTTP port.
#[derive(FromArgs)]
struct Args {
    /// the server's HTTP address HOST:PORT (its --http-port; default 127.0.0.1:6389)
    #[argh(option)]
    addr: Option<String>,
    /// connect over TLS (needs --tls-ca)
    #[argh(switch)]
    tls: bool,
    /// PEM file of CA certificates to verify the server with (implies --tls)
    #[argh(option)]
    tls_ca: Option<PathBuf>,
    /// name the server certificate must carry (default: the host of --addr)
    #[argh(option)]
    tls_server_name: Option<String>,
    /// file holding the server's auth token
    #[argh(option)]
    auth_token_file: Option<PathBuf>,
    /// seconds between refreshes, 1 to 3600 (default 1)
    #[argh(option, default = "1")]
    interval: u64,
    /// refreshes before exiting, 0 = until `q` (default: 0 on a terminal, 1 otherwise)
    #[argh(option)]
    count: Option<u64>,
    /// keys listed when standard output is not a terminal, 1 to 1000 (default 20); on a
    /// terminal, as many as fit
    #[argh(option, default = "20")]
    top: usize,
    /// first order: waiters, held_for or fill (default waiters)
    #[argh(option, default = "String::from(\"waiters\")")]
    sort: String,
}

/// How the key list is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Waiters,
    HeldFor,
    Fill,
}

impl Order {
    fn parse(s: &str) -> Option<Order> {
        Some(match s {
            "waiters" => Order::Waiters,
            "held_for" => Order::HeldFor,
            "fill" => Order::Fill,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Order::Waiters => "waiters",
            Order::HeldFor => "held_for",
            Order::Fill => "fill",
        }
    }

    /// The query of this order's list.
    fn query(self, top: usize) -> String {
        match self {
            Order::Fill => format!("/v1/stats?top={top}&sort=fill&kind=semaphore"),
            o => format!("/v1/stats?top={top}&sort={}", o.name()),
        }
    }

    /// Answered by a scan of every key (so asked for less often).
    fn scans(self) -> bool {
        self != Order::Waiters
    }
}

/// Runs `dflockd top`; returns the exit status.
pub fn main(command: &str, args: &[&str]) -> u8 {
    let args = match parse::<Args>(command, args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let usage = |msg: &str| {
        eprintln!("{command}: {msg}");
        exit::USAGE
    };
    if !(1..=3600).contains(&args.interval) {
        return usage("--interval must be between 1 and 3600 seconds");
    }
    if !(1..=1000).contains(&args.top) {
        return usage("--top must be between 1 and 1000");
    }
    let Some(order) = Order::parse(&args.sort) else {
        return usage("--sort must be waiters, held_for or fill");
    };
    let endpoint = match Endpoint::from_flags(
        vec![args
            .addr
            .clone()
            .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string())],
        args.tls,
        path(&args.tls_ca),
        args.tls_server_name.clone(),
        path(&args.auth_token_file),
    ) {
        Ok(e) => e,
        Err(e) => return usage(&e),
    };
    let tty = is_tty(libc::STDOUT_FILENO);
    let count = args.count.unwrap_or(if tty { 0 } else { 1 });
    let addr = endpoint.servers[0].clone();
    let mut http = Http::new(addr.clone(), endpoint.tls.clone(), endpoint.token.clone());
    let quit = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let _ = signal_hook::flag::register(sig, quit.clone());
    }
    let screen = if tty {
        Some(Screen::enter(is_tty(libc::STDIN_FILENO)))
    } else {
        None
    };
    let result = run(
        &mut http,
        &addr,
        order,
        args.top,
        Duration::from_secs(args.interval),
        count,
        screen.as_ref(),
        &quit,
    );
    drop(screen);
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{command}: {addr}: {e}");
            e.exit_code()
        }
    }
}

/// The refresh loop.
#[allow(clippy::too_many_arguments)]
fn run(
    http: &mut Http,
    addr: &str,
    mut order: Order,
    top: usize,
    interval: Duration,
    count: u64,
    screen: Option<&Screen>,
    quit: &AtomicBool,
) -> Result<(), TopError> {
    let mut keys: Option<(Order, Value, Instant)> = None;
    let mut shown = 0u64;
    while !quit.load(Ordering::Relaxed) {
        let (width, height) = screen.map_or((usize::MAX, usize::MAX), |s| s.size());
        let rows = if screen.is_some() {
            height.saturating_sub(HEADER_LINES + 1).clamp(1, 1000)
        } else {
            top
        };
        let activity = http.json("/v1/activity")?;
        let stale = keys
            .as_ref()
            .is_none_or(|(o, _, at)| *o != order || !order.scans() || at.elapsed() >= SCAN_EVERY);
        if stale {
            keys = Some((order, http.json(&order.query(rows))?, Instant::now()));
        }
        let list = keys.as_ref().map(|(_, v, _)| v.clone()).unwrap_or_default();
        let lines = render(&View {
            addr,
            activity: &activity,
            keys: &list,
            order,
            rows,
            width,
            interactive: screen.is_some(),
        });
        match screen {
            Some(s) => s.draw(&lines),
            None => {
                let mut out = std::io::stdout().lock();
                if shown > 0 {
                    let _ = writeln!(out);
                }
                for l in &lines {
                    let _ = writeln!(out, "{l}");
                }
                let _ = out.flush();
            }
        }
        shown += 1;
        if count > 0 && shown >= count {
            return Ok(());
        }
        // Wait for the next refresh, a key, or a signal.
        let until = Instant::now() + interval;
        while !quit.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let key = match screen {
                Some(s) if s.keys => s.read_key(left),
                _ => {
                    std::thread::sleep(left.min(Duration::from_millis(100)));
                    None
                }
            };
            match key {
                Some(b'q') | Some(b'Q') => return Ok(()),
                Some(k) => {
                    let chosen = match k {
                        b'w' => Some(Order::Waiters),
                        b'h' => Some(Order::HeldFor),
                        b'f' => Some(Order::Fill),
                        _ => None,
                    };
                    if let Some(o) = chosen {
                        order = o;
                        break;
                    }
                }
                None => {}
            }
        }
    }
    Ok(())
}

// ----- rendering -----------------------------------------------------------------

/// Lines above the key table.
const HEADER_LINES: usize = 5;

/// What one screen shows.
pub struct View<'a> {
    pub addr: &'a str,
    /// `GET /v1/activity`.
    pub activity: &'a Value,
    /// `GET /v1/stats?top=…`.
    pub keys: &'a Value,
    pub order: Order,
    /// Key rows at most.
    pub rows: usize,
    /// Characters per line at most.
    pub width: usize,
    /// Show the key help (a terminal).
    pub interactive: bool,
}

/// Seconds as people read them: `850 ms`, `4.2 s`, `3 m 5 s`, `2 h 10 m`.
pub fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{} ms", (s * 1000.0).round())
    } else if s < 60.0 {
        if s.fract() == 0.0 {
            format!("{s} s")
        } else if s < 10.0 {
            format!("{s:.1} s")
        } else {
            format!("{s:.0} s")
        }
    } else if s < 3600.0 {
        let (m, r) = ((s / 60.0).floor(), (s % 60.0).floor());
        if r == 0.0 {
            format!("{m} m")
        } else {
            format!("{m} m {r} s")
        }
    } else if s < 48.0 * 3600.0 {
        format!(
            "{} h {} m",
            (s / 3600.0).floor(),
            ((s % 3600.0) / 60.0).floor()
        )
    } else {
        format!(
            "{} d {} h",
            (s / 86400.0).floor(),
            ((s % 86400.0) / 3600.0).floor()
        )
    }
}

/// The last value of a history series (the last whole second).
fn last(activity: &Value, series: &str) -> u64 {
    activity["history"][series]
        .as_array()
        .and_then(|a| a.last())
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// `p50 ≤ x, p99 ≤ y` of a histogram (lock and semaphore buckets summed).
fn quantiles(activity: &Value, which: &str) -> String {
    let h = &activity["histograms"];
    let bounds: Vec<f64> = h["bounds_s"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let counts = |k: &str| -> Vec<u64> {
        h[which][k]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    let (l, s) = (counts("lock"), counts("semaphore"));
    let total: Vec<u64> = l
        .iter()
        .zip(s.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a + b)
        .collect();
    let n: u64 = total.iter().sum();
    if n == 0 {
        return "none yet".into();
    }
    let at = |q: f64| {
        let mut acc = 0;
        for (i, c) in total.iter().enumerate() {
            acc += c;
            if acc as f64 >= q * n as f64 {
                return match bounds.get(i) {
                    Some(b) => format!("≤{}", secs(*b)),
                    None => format!(">{}", secs(bounds.last().copied().unwrap_or(0.0))),
                };
            }
        }
        "?".into()
    };
    format!("p50 {}  p99 {}", at(0.5), at(0.99))
}

fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The screen, one string per line (no escape sequences).
pub fn render(v: &View<'_>) -> Vec<String> {
    let a = v.activity;
    let c = &a["connections"];
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let plural = |k: u64, one: &str| format!("{k} {one}{}", if k == 1 { "" } else { "s" });
    let mut lines = vec![
        format!(
            "dflockd top · {} · up {} · {} ({} TCP, {}){}",
            v.addr,
            secs(a["uptime_s"].as_f64().unwrap_or(0.0)),
            plural(n(&c["total"]), "connection"),
            n(&c["tcp"]),
            plural(n(&c["http_sessions"]), "HTTP session"),
            if a["draining"] == true {
                " · draining"
            } else {
                ""
            }
        ),
        format!(
            "grants/s {}   timeouts/s {}   expiries/s {}   releases/s {}   signals/s {}",
            last(a, "grants"),
            last(a, "acquire_timeouts"),
            last(a, "lease_expiries"),
            last(a, "releases"),
            last(a, "signals_published"),
        ),
        format!(
            "acquire wait {}   hold {}",
            quantiles(a, "acquire_wait"),
            quantiles(a, "hold")
        ),
        String::new(),
    ];
    let keys: Vec<&Value> = v.keys["keys"]
        .as_array()
        .map(|k| k.iter().collect())
        .unwrap_or_default();
    let keys: Vec<&Value> = keys
        .into_iter()
        .filter(|k| v.order != Order::Fill || n(&k["holders"]) >= n(&k["limit"]))
        .take(v.rows)
        .collect();
    let key_w = keys
        .iter()
        .map(|k| k["key"].as_str().unwrap_or("").chars().count())
        .max()
        .unwrap_or(0)
        .clamp(3, 32);
    lines.push(format!(
        "{:<key_w$}  {:<9}  {:>9}  {:>7}  {:>9}  {:<24}  NEXT IN LINE",
        "KEY", "KIND", "HOLDERS", "WAITERS", "HELD FOR", "HOLDER"
    ));
    if keys.is_empty() {
        lines.push(
            match v.order {
                Order::Waiters => "(no key has waiters)",
                Order::HeldFor => "(nothing is held)",
                Order::Fill => "(no semaphore is at its limit)",
            }
            .into(),
        );
    }
    for k in keys {
        let holder = match &k["holder"] {
            Value::Object(h) => format!(
                "conn {} (lease {})",
                h.get("conn").and_then(Value::as_u64).unwrap_or(0),
                secs(
                    h.get("lease_expires_in_s")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0)
                )
            ),
            _ if n(&k["holders"]) > 0 => format!("{} slots held", n(&k["holders"])),
            _ => "-".into(),
        };
        let queue: Vec<String> = k["queue"]
            .as_array()
            .map(|q| {
                q.iter()
                    .map(|w| {
                        format!(
                            "conn {} {}",
                            n(&w["conn"]),
                            secs(w["waiting_for_s"].as_f64().unwrap_or(0.0))
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let more = n(&k["waiters"]).saturating_sub(queue.len() as u64);
        let mut next = if queue.is_empty() {
            "-".to_string()
        } else {
            queue.join(", ")
        };
        if more > 0 {
            next.push_str(&format!(", +{more}"));
        }
        lines.push(format!(
            "{:<key_w$}  {:<9}  {:>9}  {:>7}  {:>9}  {:<24}  {}",
            cut(k["key"].as_str().unwrap_or(""), key_w),
            k["kind"].as_str().unwrap_or(""),
            format!("{}/{}", n(&k["holders"]), n(&k["limit"])),
            n(&k["waiters"]),
            k["held_for_s"].as_f64().map_or("-".into(), secs),
            holder,
            next
        ));
    }
    lines.push(String::new());
    let by = match v.order {
        Order::Waiters => "longest queue",
        Order::HeldFor => "longest held",
        Order::Fill => "semaphores at their limit",
    };
    lines.push(if v.interactive {
        format!("sorted by {by} · w queue  h held  f full · q quit")
    } else {
        format!("sorted by {by}")
    });
    lines.into_iter().map(|l| cut(&l, v.width)).collect()
}

// ----- the terminal ------------------------------------------------------------------

fn is_tty(fd: libc::c_int) -> bool {
    // SAFETY: isatty only reads the descriptor's state.
    unsafe { libc::isatty(fd) == 1 }
}

/// The alternate screen, and single-key input when standard input is a
/// terminal; both undone on drop.
struct Screen {
    /// Standard input's settings before, when we changed them.
    saved: Option<libc::termios>,
    keys: bool,
}

impl Screen {
    fn enter(keys: bool) -> Screen {
        let mut saved = None;
        if keys {
            // SAFETY: tcgetattr/tcsetattr on standard input with a
            // zeroed struct the call fills in.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0 {
                    saved = Some(t);
                    // Keys one by one, not echoed; Ctrl-C still signals.
                    t.c_lflag &= !(libc::ICANON | libc::ECHO);
                    t.c_cc[libc::VMIN] = 1;
                    t.c_cc[libc::VTIME] = 0;
                    libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
                }
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(b"\x1b[?1049h\x1b[?25l");
        let _ = out.flush();
        Screen {
            keys: saved.is_some(),
            saved,
        }
    }

    /// (columns, rows) of the terminal.
    fn size(&self) -> (usize, usize) {
        // SAFETY: TIOCGWINSZ fills a winsize struct.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
                (usize::from(ws.ws_col), usize::from(ws.ws_row))
            } else {
                (80, 24)
            }
        }
    }

    fn draw(&self, lines: &[String]) {
        let mut frame = String::from("\x1b[H\x1b[2J");
        for l in lines {
            frame.push_str(l);
            frame.push_str("\r\n");
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(frame.as_bytes());
        let _ = out.flush();
    }

    /// One key pressed within `wait`, if any.
    fn read_key(&self, wait: Duration) -> Option<u8> {
        let mut fds = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: poll on one valid pollfd; read of one byte into a local.
        unsafe {
            if libc::poll(&mut fds, 1, ms) != 1 {
                return None;
            }
            let mut b = 0u8;
            (libc::read(libc::STDIN_FILENO, (&mut b as *mut u8).cast(), 1) == 1).then_some(b)
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        if let Some(t) = &self.saved {
            // SAFETY: restores the settings read in `enter`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
            }
        }
    }
}

// ----- HTTP ----------------------------------------------------------------------------

/// Why `top` stopped.
#[derive(Debug)]
pub enum TopError {
    /// Connecting, TLS, or the connection failed.
    Connect(crate::client::Error),
    /// The server answered 401: no token, or the wrong one.
    Unauthorized,
    /// Another status, with the error code of its body.
    Status(u16, String),
    /// Not an HTTP answer this client understands.
    Protocol(String),
}

impl TopError {
    fn exit_code(&self) -> u8 {
        match self {
            TopError::Connect(e) => super::exit_code(e),
            TopError::Unauthorized => exit::NOPERM,
            TopError::Status(503, _) => exit::TEMPFAIL,
            TopError::Status(404, _) => exit::UNAVAILABLE,
            TopError::Status(..) | TopError::Protocol(_) => exit::UNAVAILABLE,
        }
    }
}

impl std::fmt::Display for TopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopError::Connect(e) => write!(f, "{e}"),
            TopError::Unauthorized => f.write_str(
                "the server refused the token (401): give its token with --auth-token-file",
            ),
            TopError::Status(404, _) => f.write_str(
                "not found (404): is this the HTTP port (--http-port) of a dflockd with /v1/activity?",
            ),
            TopError::Status(s, code) => write!(f, "HTTP {s} {code}"),
            TopError::Protocol(what) => write!(f, "unexpected answer: {what}"),
        }
    }
}

/// One keep-alive HTTP/1.1 connection, reopened when it breaks.
struct Http {
    addr: String,
    tls: Option<TlsOptions>,
    token: Option<String>,
    stream: Option<Stream>,
}

impl Http {
    fn new(addr: String, tls: Option<TlsOptions>, token: Option<String>) -> Http {
        Http {
            addr,
            tls,
            token,
            stream: None,
        }
    }

    /// `GET path`, as JSON.
    fn json(&mut self, path: &str) -> Result<Value, TopError> {
        let (status, body) = smol::block_on(async {
            let timeout = async {
                async_io::Timer::after(REQUEST_TIMEOUT).await;
                Err(TopError::Protocol(format!(
                    "no answer within {}s",
                    REQUEST_TIMEOUT.as_secs()
                )))
            };
            futures_lite::future::or(self.get(path), timeout).await
        })?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| TopError::Protocol(format!("{path}: invalid JSON: {e}")))?;
        match status {
            200 => Ok(value),
            401 => Err(TopError::Unauthorized),
            s => Err(TopError::Status(
                s,
                value["error"].as_str().unwrap_or("").to_string(),
            )),
        }
    }

    /// `GET path` on the open connection, or a new one if it is gone; a
    /// reused connection the server closed meanwhile is retried once on a
    /// new one.
    async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), TopError> {
        let reused = self.stream.is_some();
        match self.get_once(path).await {
            Err(TopError::Connect(_)) if reused => {
                self.stream = None;
                self.get_once(path).await
            }
            r => r,
        }
    }

    async fn get_once(&mut self, path: &str) -> Result<(u16, Vec<u8>), TopError> {
        if self.stream.is_none() {
            let s = Stream::connect(&self.addr, self.tls.as_ref())
                .await
                .map_err(TopError::Connect)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: dflockd-top\r\n",
            self.addr
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        let io = |e: std::io::Error| TopError::Connect(crate::client::Error::Io(e));
        let result = async {
            stream.write_all(req.as_bytes()).await.map_err(io)?;
            stream.flush().await.map_err(io)?;
            read_response(stream).await
        }
        .await;
        match result {
            Ok((status, body, close)) => {
                if close {
                    self.stream = None;
                }
                Ok((status, body))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }
}

/// Reads one response: (status, body, whether the server closes).
async fn read_response(stream: &mut Stream) -> Result<(u16, Vec<u8>, bool), TopError> {
    let io = |e: std::io::Error| TopError::Connect(crate::client::Error::Io(e));
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((status, len, close, head)) = parse_head(&buf)? {
            if len > MAX_BODY {
                return Err(TopError::Protocol(format!("a body of {len} bytes")));
            }
            let mut body = buf.split_off(head);
            while body.len() < len {
                let n = stream.read(&mut chunk).await.map_err(io)?;
                if n == 0 {
                    return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
            return Ok((status, body, close));
        }
        if buf.len() > 64 * 1024 {
            return Err(TopError::Protocol("a response head over 64 KiB".into()));
        }
    }
}

/// A complete response head: (status, Content-Length, Connection: close,
/// head length); `None` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, bool, usize)>, TopError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(TopError::Protocol(format!(
                "not HTTP ({e}): is --addr the server's --http-port?"
            )))
        }
    };
    let status = resp.code.unwrap_or(0);
    let mut len = None;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(TopError::Protocol("a chunked body".into()));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let len = len.ok_or_else(|| TopError::Protocol("no Content-Length".into()))?;
    Ok(Some((status, len, close, head)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn activity() -> Value {
        json!({
            "uptime_s": 125.0,
            "connections": {"total": 9, "tcp": 8, "http_sessions": 1},
            "history": {"grants": [10, 52], "acquire_timeouts": [0, 1], "lease_expiries": [0, 0],
                        "releases": [9, 50], "signals_published": [0, 2]},
            "histograms": {
                "bounds_s": [0.001, 0.005, 0.25],
                "acquire_wait": {"lock": [90, 5, 4, 1], "semaphore": [0, 0, 0, 0]},
                "hold": {"lock": [0, 0, 0, 0], "semaphore": [0, 0, 0, 0]}
            },
            "draining": false
        })
    }

    fn keys() -> Value {
        json!({"keys": [
            {"key": "orders", "kind": "lock", "limit": 1, "holders": 1, "waiters": 3,
             "held_for_s": 12.0,
             "holder": {"conn": 1, "fence": "7", "held_for_s": 12.0, "lease_expires_in_s": 21.5},
             "queue": [{"conn": 2, "waiting_for_s": 3.1, "timeout_in_s": 27, "two_phase": false},
                       {"conn": 3, "waiting_for_s": 0.25, "timeout_in_s": null, "two_phase": true}]},
            {"key": "pool", "kind": "semaphore", "limit": 2, "holders": 2, "waiters": 1,
             "held_for_s": null, "holder": null,
             "queue": [{"conn": 9, "waiting_for_s": 1.0, "timeout_in_s": 5, "two_phase": false}]}
        ]})
    }

    #[test]
    fn a_screen_shows_rates_distributions_and_the_busiest_keys() {
        let (a, k) = (activity(), keys());
        let lines = render(&View {
            addr: "127.0.0.1:6389",
            activity: &a,
            keys: &k,
            order: Order::Waiters,
            rows: 10,
            width: usize::MAX,
            interactive: true,
        });
        assert_eq!(
            lines[0],
            "dflockd top · 127.0.0.1:6389 · up 2 m 5 s · 9 connections (8 TCP, 1 HTTP session)"
        );
        assert_eq!(
            lines[1],
            "grants/s 52   timeouts/s 1   expiries/s 0   releases/s 50   signals/s 2"
        );
        assert_eq!(
            lines[2],
            "acquire wait p50 ≤1 ms  p99 ≤250 ms   hold none yet"
        );
        assert!(lines[4].starts_with("KEY     KIND"), "{}", lines[4]);
        assert_eq!(
            lines[5],
            "orders  lock             1/1        3       12 s  conn 1 (lease 22 s)       \
             conn 2 3.1 s, conn 3 250 ms, +1"
        );
        assert!(
            lines[6].starts_with("pool    semaphore        2/2        1          -  2 slots held")
        );
        assert_eq!(
            lines.last().unwrap(),
            "sorted by longest queue · w queue  h held  f full · q quit"
        );
        let narrow = render(&View {
            addr: "a",
            activity: &a,
            keys: &k,
            order: Order::Waiters,
            rows: 1,
            width: 20,
            interactive: false,
        });
        assert!(narrow.iter().all(|l| l.chars().count() <= 20));
        assert_eq!(narrow.len(), HEADER_LINES + 1 + 2, "one key row");
        assert_eq!(narrow.last().unwrap(), "sorted by longest q…");
    }

    #[test]
    fn empty_lists_say_so() {
        let a = activity();
        let lines = render(&View {
            addr: "a",
            activity: &a,
            keys: &json!({"keys": []}),
            order: Order::Fill,
            rows: 10,
            width: usize::MAX,
            interactive: false,
        });
        assert!(lines.contains(&"(no semaphore is at its limit)".to_string()));
    }

    #[test]
    fn durations_read_naturally() {
        for (s, t) in [
            (0.25, "250 ms"),
            (1.0, "1 s"),
            (4.25, "4.2 s"),
            (12.6, "13 s"),
            (60.0, "1 m"),
            (185.0, "3 m 5 s"),
            (7500.0, "2 h 5 m"),
            (200_000.0, "2 d 7 h"),
        ] {
            assert_eq!(secs(s), t, "{s}");
        }
    }

    #[test]
    fn response_heads() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_head(ok).unwrap(), Some((200, 2, false, ok.len() - 2)));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        let close = b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_head(close).unwrap().map(|h| h.2), Some(true));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no length");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert_eq!(
            Order::Fill.query(7),
            "/v1/stats?top=7&sort=fill&kind=semaphore"
        );
    }
}
