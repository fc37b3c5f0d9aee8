//! The dashboard as people see it, against a server with real contention
//! (a lock held with three in line, a full semaphore with waiters, leases
//! that expire, acquires that time out, a steady trickle of grants and
//! signals, an HTTP session), all made by this test:
//!
//! * `/ui` in headless Chromium: the rendered DOM shows the busiest key
//!   and its waiter count, plots with data, the signal channel and a key's
//!   page; on a server with `--auth-token` the page asks for the token. A
//!   screenshot is saved.
//! * `dflockd top` driven in tmux (`send-keys`, `capture-pane`): the table
//!   shows the busiest key, `h` re-sorts, `q` quits with status 0. A text
//!   capture is saved; the README's capture must have its layout.
//! * `dflockd top` with standard output not a terminal: plain text once.
//!
//! Chromium (Debian's `chromium`, or `$DFLOCKD_CHROMIUM`) and tmux are
//! external programs. Where one is missing the test says so and passes,
//! unless `DFLOCKD_REQUIRE_UI_TOOLS=1` (set by `.ci/run`): then it fails.
//! Pictures go to `$DFLOCKD_ARTIFACTS` (CI keeps them), else to a
//! directory under `target/`; with `DFLOCKD_UPDATE_SCREENSHOTS=1` they
//! also replace the README's (`docs/screenshots/`).
//!
//! Processes: each Chromium and `dflockd top` is stopped through its own
//! PID if it outlives its deadline; the tmux server runs on a socket of
//! this test's own and is stopped with `kill-server` on that socket.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dflockd::http::HttpSettings;
use dflockd::server::{spawn, ServerConfig, ServerHandle};
use serde_json::Value;

const README: &str = include_str!("../README.md");
const DEADLINE: Duration = Duration::from_secs(60);

// ----- tools ---------------------------------------------------------------------

/// Whether a missing tool fails the test (CI) or skips it (locally).
fn required() -> bool {
    std::env::var("DFLOCKD_REQUIRE_UI_TOOLS").as_deref() == Ok("1")
}

/// The tool, or `None` (said on stderr) when it is missing and not required.
fn tool(names: &[&str], env: &str, what: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    assert!(
        !required(),
        "{what} is required (DFLOCKD_REQUIRE_UI_TOOLS=1) but not installed: \
         apt-get install {}",
        names[0]
    );
    eprintln!(
        "{what} is not installed ({}): test skipped",
        names.join(", ")
    );
    None
}

/// Where pictures go.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("DFLOCKD_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard"));
    std::fs::create_dir_all(&dir).expect("artifact directory");
    dir
}

/// Saves a picture as an artifact, and as the README's when asked to.
fn keep(name: &str, bytes: &[u8]) {
    let path = artifacts().join(name);
    std::fs::write(&path, bytes).expect("write artifact");
    eprintln!("saved {}", path.display());
    if std::env::var("DFLOCKD_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        std::fs::create_dir_all(&docs).expect("docs/screenshots");
        std::fs::write(docs.join(name), bytes).expect("write README picture");
    }
}

/// Runs `cmd` to its end within `deadline`, killing it by its PID after.
fn run_bounded(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the program");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("ran"),
        Err(_) => {
            // SAFETY: kill(2) on the PID of the child this test started,
            // not yet reaped by the waiting thread.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!("{cmd:?} did not finish within {deadline:?}");
        }
    }
}

// ----- the server and its contention ---------------------------------------------------

fn server(auth: Option<&str>) -> ServerHandle {
    let mut cfg = ServerConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        http: Some(HttpSettings::default()),
        ..ServerConfig::default()
    };
    cfg.core.auth_token = auth.map(|t| t.as_bytes().to_vec());
    spawn(cfg).expect("server starts")
}

/// A line-protocol connection.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        Conn {
            w: s.try_clone().expect("clone"),
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, cmd: &str, key: &str, arg: &str) {
        write!(self.w, "{cmd}\n{key}\n{arg}\n").expect("write");
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("a reply");
        l.trim_end().to_string()
    }

    fn call(&mut self, cmd: &str, key: &str, arg: &str) -> String {
        self.send(cmd, key, arg);
        self.line()
    }
}

fn get(http: SocketAddr, path: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(DEADLINE))
        .build()
        .into();
    agent
        .get(format!("http://{http}{path}"))
        .call()
        .expect("GET")
        .body_mut()
        .read_json()
        .expect("JSON")
}

/// Polls `cond` until it holds, failing after [`DEADLINE`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The contention the pictures show; dropping it stops the trickle and
/// closes every connection.
struct Contention {
    _conns: Vec<Conn>,
    stop: Arc<AtomicBool>,
    trickle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Contention {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.trickle.take() {
            let _ = t.join();
        }
    }
}

fn contention(server: &ServerHandle) -> Contention {
    let (tcp, http) = (server.local_addr(), server.http_addr().expect("HTTP"));
    let mut conns = Vec::new();
    let held = |key: &str, arg: &str| {
        let mut c = Conn::open(tcp);
        assert!(c.call("l", key, arg).starts_with("ok "));
        c
    };
    conns.push(held("orders", "0 600"));
    conns.push(held("payments", "0 600"));
    for (key, n) in [("orders", 3), ("payments", 1)] {
        for _ in 0..n {
            let mut c = Conn::open(tcp);
            c.send("l", key, "600");
            conns.push(c);
        }
    }
    for _ in 0..3 {
        let mut c = Conn::open(tcp);
        assert!(c.call("sl", "pool", "0 3 600").starts_with("ok "));
        conns.push(c);
    }
    for _ in 0..2 {
        let mut c = Conn::open(tcp);
        c.send("sl", "pool", "600 3");
        conns.push(c);
    }
    // Leases of one second that run out, and acquires that time out.
    let mut short = Conn::open(tcp);
    for i in 0..5 {
        assert!(short
            .call("l", &format!("jobs.{i}"), "0 1")
            .starts_with("ok "));
    }
    for _ in 0..2 {
        assert_eq!(short.call("l", "orders", "0"), "timeout");
    }
    conns.push(short);
    let mut listener = Conn::open(tcp);
    assert_eq!(listener.call("listen", "orders.*", ""), "ok");
    conns.push(listener);
    // An HTTP session.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(DEADLINE))
        .build()
        .into();
    agent
        .post(format!("http://{http}/v1/sessions"))
        .send_empty()
        .expect("a session");
    // A steady trickle of grants, releases and signals, paced (not a wait).
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        let mut c = Conn::open(tcp);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let reply = c.call("l", "ticks", "5");
                if let Some(tok) = reply.split(' ').nth(1) {
                    c.call("r", "ticks", tok);
                }
                if i.is_multiple_of(5) {
                    c.call("signal", "orders.created", &format!("order {i}"));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let key_waiters = |s: &Value, arr: &str, key: &str| {
        s[arr]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["key"] == key))
            .map_or(0, |e| e["waiters"].as_u64().unwrap_or(0))
    };
    wait_for("the queues formed and the leases expired", || {
        let s = get(http, "/v1/stats");
        let a = get(http, "/v1/activity");
        key_waiters(&s, "locks", "orders") == 3
            && key_waiters(&s, "locks", "payments") == 1
            && key_waiters(&s, "semaphores", "pool") == 2
            && a["totals"]["lease_expiries"].as_u64() >= Some(5)
            && a["history"]["grants"].as_array().map_or(0, Vec::len) >= 4
    });
    Contention {
        _conns: conns,
        stop,
        trickle: Some(trickle),
    }
}

// ----- Chromium ----------------------------------------------------------------------------

/// Runs headless Chromium on `url` with a fresh profile; `action` is
/// `--dump-dom` or `--screenshot=PATH`. Virtual time lets the page's
/// first polls run before the DOM is taken.
fn chromium(bin: &Path, url: &str, action: &str) -> Output {
    let profile = tempdir("chromium-profile");
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,1080",
        "--virtual-time-budget=6000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(action)
    .arg(url);
    let out = run_bounded(cmd, Duration::from_secs(120));
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dflockd-{what}-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The text of the first element opening with `open` (up to its closing
/// tag `close`), panicking with the DOM if there is none.
fn element<'a>(dom: &'a str, open: &str, close: &str) -> &'a str {
    let start = dom
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in the DOM:\n{dom}"));
    let end = dom[start..]
        .find(close)
        .map_or(dom.len(), |e| start + e + close.len());
    &dom[start..end]
}

/// The value of attribute `name` in the tag that starts `el`.
fn attr<'a>(el: &'a str, name: &str) -> Option<&'a str> {
    let tag = &el[..el.find('>').unwrap_or(el.len())];
    let pat = format!(" {name}=\"");
    let i = tag.find(&pat)? + pat.len();
    Some(&tag[i..i + tag[i..].find('"')?])
}

#[test]
fn the_dashboard_in_a_browser_shows_the_contention() {
    let Some(bin) = tool(
        &["chromium", "chromium-browser", "google-chrome"],
        "DFLOCKD_CHROMIUM",
        "Chromium",
    ) else {
        return;
    };
    let server = server(None);
    let http = server.http_addr().expect("HTTP");
    let _c = contention(&server);
    let dom = String::from_utf8(chromium(&bin, &format!("http://{http}/ui"), "--dump-dom").stdout)
        .expect("UTF-8");
    assert!(dom.contains(r#"<span id="status" class="status live">live</span>"#));
    // The busiest key first, with its three waiters.
    let keys = element(&dom, r#"<table id="keys">"#, "</table>");
    let first = element(keys, "<tr data-key=", "</tr>");
    assert_eq!(attr(first, "data-key"), Some("orders"), "{first}");
    assert_eq!(attr(first, "data-waiters"), Some("3"), "{first}");
    assert!(
        first.contains(r#"<td class="num waiters hot">3</td>"#),
        "{first}"
    );
    assert!(keys.contains(r#"data-key="payments""#) && keys.contains(r#"data-key="pool""#));
    // Plots with data: the wait distribution has bars, the rates lines.
    let wait = element(&dom, r#"<svg id="wait-plot""#, "</svg>");
    assert!(attr(wait, "data-total").and_then(|t| t.parse::<u64>().ok()) >= Some(10));
    assert!(wait.contains(r#"<rect class="bar""#));
    let rates = element(&dom, r#"<svg id="rates-plot""#, "</svg>");
    assert!(attr(rates, "data-total").and_then(|t| t.parse::<u64>().ok()) > Some(0));
    assert!(rates.contains("<polyline class=\"series-0\" points=\""));
    let hold = element(&dom, r#"<svg id="hold-plot""#, "</svg>");
    assert!(attr(hold, "data-total").and_then(|t| t.parse::<u64>().ok()) >= Some(5));
    let signals = element(&dom, r#"<table id="signals-table">"#, "</table>");
    assert!(signals.contains("<code>orders.*</code>"), "{signals}");
    assert!(dom.contains("Single node (not clustered)."));
    // A key's page: its holder, its queue and its events.
    let page = String::from_utf8(
        chromium(&bin, &format!("http://{http}/ui#/key/orders"), "--dump-dom").stdout,
    )
    .expect("UTF-8");
    let res = element(
        &page,
        r#"<div class="resource" data-kind="lock">"#,
        "</div>\n",
    );
    assert!(res.matches("<td>conn ").count() >= 4, "{res}");
    assert!(res.contains(r#"<tr data-event="granted">"#), "{res}");
    assert!(res.contains(r#"<tr data-event="timed_out">"#), "{res}");
    // The picture for the README.
    let shot = tempdir("screenshot").join("ui.png");
    chromium(
        &bin,
        &format!("http://{http}/ui"),
        &format!("--screenshot={}", shot.display()),
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    keep("ui.png", &png);
    let _ = std::fs::remove_dir_all(shot.parent().expect("dir"));
}

#[test]
fn on_an_auth_server_the_dashboard_asks_for_the_token() {
    let Some(bin) = tool(
        &["chromium", "chromium-browser", "google-chrome"],
        "DFLOCKD_CHROMIUM",
        "Chromium",
    ) else {
        return;
    };
    let server = server(Some("s3cret"));
    let http = server.http_addr().expect("HTTP");
    let dom = String::from_utf8(chromium(&bin, &format!("http://{http}/ui"), "--dump-dom").stdout)
        .expect("UTF-8");
    let form = element(&dom, r#"<form id="auth""#, "</form>");
    assert_eq!(attr(form, "hidden"), None, "the prompt shows: {form}");
    assert!(form.contains(r#"<input id="token" type="password""#));
    let main = element(&dom, r#"<main id="overview""#, ">");
    assert!(main.contains("hidden"), "the data stays hidden: {main}");
    assert!(dom.contains("token needed"));
}

// ----- dflockd top ---------------------------------------------------------------------------

/// A tmux server on a socket of this test's own; `kill-server` on drop.
struct Tmux {
    bin: PathBuf,
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        let mut c = Command::new(&self.bin);
        c.arg("-S").arg(&self.socket).args(args);
        run_bounded(c, Duration::from_secs(20))
    }

    fn capture(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The words of the table row of `key` in a `top` screen.
fn row<'a>(screen: &'a str, key: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .map(|l| l.split_whitespace().collect())
}

/// The README's `dflockd top` capture: its command line and screen.
fn readme_top() -> (String, Vec<String>) {
    let start = README
        .find("```text\n$ dflockd top")
        .expect("a `$ dflockd top` block in README.md");
    let block = &README[start + "```text\n".len()..];
    let block = &block[..block.find("```").expect("block end")];
    let mut lines = block.lines();
    let command = lines.next().expect("command").to_string();
    (command, lines.map(|l| l.trim_end().to_string()).collect())
}

#[test]
fn dflockd_top_in_a_terminal_shows_the_busiest_keys_and_quits_on_q() {
    let Some(bin) = tool(&["tmux"], "DFLOCKD_TMUX", "tmux") else {
        return;
    };
    let server = server(None);
    let http = server.http_addr().expect("HTTP");
    let _c = contention(&server);
    let tmux = Tmux {
        bin,
        socket: std::env::temp_dir().join(format!("dflockd-top-{}.sock", std::process::id())),
    };
    // The shell writes top's exit status to a file: tmux 3.3 sometimes
    // marks the pane dead (its terminal closed) without ever reporting
    // the status, so the status is read from the file instead.
    let status_file =
        std::env::temp_dir().join(format!("dflockd-top-{}.status", std::process::id()));
    let _ = std::fs::remove_file(&status_file);
    let top = format!(
        "{} top --addr {http}; echo $? > {}",
        env!("CARGO_BIN_EXE_dflockd"),
        status_file.display()
    );
    let out = tmux.cmd(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "132",
        "-y",
        "24",
        &top,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tmux.cmd(&["set-option", "-t", "top", "remain-on-exit", "on"]);
    let mut screen = String::new();
    wait_for("top shows orders with its 3 waiters", || {
        screen = tmux.capture();
        row(&screen, "orders").is_some_and(|r| r[1] == "lock" && r[2] == "1/1" && r[3] == "3")
    });
    let lines: Vec<&str> = screen.lines().collect();
    assert!(
        lines[0].starts_with(&format!("dflockd top · {http} · up ")),
        "{screen}"
    );
    assert!(lines[1].starts_with("grants/s "), "{screen}");
    assert_eq!(
        row(&screen, "payments").map(|r| r[3]),
        Some("1"),
        "{screen}"
    );
    assert_eq!(row(&screen, "pool").map(|r| r[2]), Some("3/3"), "{screen}");
    assert!(screen.contains("sorted by longest queue · w queue  h held  f full · q quit"));
    let capture: String = screen
        .lines()
        .map(|l| l.trim_end().to_string() + "\n")
        .collect::<String>()
        .trim_end()
        .to_string()
        + "\n";
    keep(
        "top.txt",
        capture
            .replace(&http.to_string(), "127.0.0.1:6389")
            .as_bytes(),
    );
    // The README shows this layout: the same header and footer lines, the
    // same keys in the same order.
    let (command, shown) = readme_top();
    assert_eq!(command, "$ dflockd top --addr 127.0.0.1:6389");
    let header = |ls: &[&str]| -> String {
        ls.iter()
            .find(|l| l.starts_with("KEY "))
            .map(|l| l.trim_end().to_string())
            .unwrap_or_default()
    };
    let shown_refs: Vec<&str> = shown.iter().map(String::as_str).collect();
    assert_eq!(header(&shown_refs), header(&lines), "README header line");
    assert_eq!(
        shown.last().map(String::as_str),
        lines
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim_end())
    );
    let keys_of = |ls: &[&str]| -> Vec<String> {
        let from = ls.iter().position(|l| l.starts_with("KEY ")).unwrap_or(0) + 1;
        ls[from..]
            .iter()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    };
    assert_eq!(keys_of(&shown_refs), keys_of(&lines), "README rows");
    // `h` orders by time held.
    tmux.cmd(&["send-keys", "-t", "top", "h"]);
    wait_for("top re-sorts by time held", || {
        tmux.capture().contains("sorted by longest held ·")
    });
    // `q` quits, with status 0, and leaves the alternate screen.
    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    let start = Instant::now();
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if text.ends_with('\n') {
                break text;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "top did not exit on q; screen:\n{}",
            tmux.capture()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&status_file);
    assert_eq!(status, "0\n", "top's exit status");
    assert!(!tmux.capture().contains("sorted by"), "the table is gone");
}

#[test]
fn dflockd_top_without_a_terminal_prints_plain_text_once() {
    let server = server(Some("s3cret"));
    let http = server.http_addr().expect("HTTP");
    let mut c = Conn::open(server.local_addr());
    assert_eq!(c.call("auth", "_", "s3cret"), "ok");
    assert!(c.call("l", "orders", "0 600").starts_with("ok "));
    let mut w = Conn::open(server.local_addr());
    assert_eq!(w.call("auth", "_", "s3cret"), "ok");
    w.send("l", "orders", "600");
    let dir = tempdir("top-token");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").expect("token file");
    let top = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dflockd"));
        cmd.args(["top", "--addr", &http.to_string()]).args(extra);
        run_bounded(cmd, DEADLINE)
    };
    let tok = token.display().to_string();
    let mut out = top(&["--auth-token-file", &tok]);
    wait_for("the waiter is queued", || {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if row(&text, "orders").is_some_and(|r| r[3] == "1") {
            return true;
        }
        out = top(&["--auth-token-file", &tok]);
        false
    });
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(!text.contains('\x1b'), "no escape sequences: {text:?}");
    assert_eq!(text.matches("dflockd top · ").count(), 1, "once: {text}");
    assert_eq!(text.lines().last(), Some("sorted by longest queue"));
    let twice = top(&[
        "--auth-token-file",
        &tok,
        "--count",
        "2",
        "--sort",
        "held_for",
    ]);
    let text = String::from_utf8(twice.stdout).expect("UTF-8");
    assert_eq!(text.matches("sorted by longest held").count(), 2, "{text}");
    // Without the token: refused, status 77 (EX_NOPERM), said why.
    let out = top(&[]);
    assert_eq!(out.status.code(), Some(77));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the token"));
    // The protocol port is not the HTTP port: status 69, said why.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dflockd"));
    cmd.args(["top", "--addr", &server.local_addr().to_string()]);
    let out = run_bounded(cmd, DEADLINE);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--http-port"));
    let out = top(&["--interval", "0"]);
    assert_eq!(out.status.code(), Some(64));
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a cluster member the dashboard's Cluster panel lists the three
/// members with their roles and names the leader.
#[test]
fn on_a_cluster_member_the_dashboard_shows_the_members_and_the_leader() {
    let Some(bin) = tool(
        &["chromium", "chromium-browser", "google-chrome"],
        "DFLOCKD_CHROMIUM",
        "Chromium",
    ) else {
        return;
    };
    use dflockd::cluster::Peer;
    use dflockd::config::{ClusterConfig, ClusterSettings};
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let dir = tempdir("cluster");
    // The ports are chosen before the members bind them (each member must
    // know the others' addresses), so another test may take one meanwhile:
    // a member that cannot bind means new ports, a bounded number of times.
    let start = |attempt: u32| -> Result<(Vec<Peer>, Vec<ServerHandle>), String> {
        let peers: Vec<Peer> = (1..=3)
            .map(|id| Peer {
                id,
                raft_addr: format!("127.0.0.1:{}", free()),
                client_addr: format!("127.0.0.1:{}", free()),
            })
            .collect();
        let members = peers
            .iter()
            .map(|p| {
                spawn(ServerConfig {
                    listen: p.client_addr.clone(),
                    threads: 1,
                    http: Some(HttpSettings::default()),
                    cluster: Some(ClusterSettings {
                        member: ClusterConfig {
                            raft_dir: dir.join(format!("{attempt}-{}", p.id)),
                            node_id: p.id,
                            raft_addr: p.raft_addr.clone(),
                            peers: peers.clone(),
                            advertise_addr: None,
                            raft_auth_token: Some("a-member-token-of-at-least-32-bytes!".into()),
                            raft_tls: None,
                            admin_token: None,
                            join: false,
                        },
                        orphan_ttl_ms: 60_000,
                        tick_ms: 20,
                    }),
                    ..ServerConfig::default()
                })
                .map_err(|e| format!("member {} does not start: {e}", p.id))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((peers, members))
    };
    let (peers, members) = (0..5)
        .map(start)
        .find_map(Result::ok)
        .unwrap_or_else(|| panic!("no cluster started in 5 attempts: {:?}", start(5).err()));
    // Wait (bounded) until a leader serves, then look at a follower's page.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let found = members.iter().position(|m| {
            let mut s = TcpStream::connect(m.local_addr()).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            s.write_all(b"barrier\n_\n\n").expect("write");
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).is_ok() && line.trim() == "ok"
        });
        if let Some(i) = found {
            break i;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let follower = (leader + 1) % 3;
    let http = members[follower].http_addr().expect("HTTP");
    let dom = String::from_utf8(chromium(&bin, &format!("http://{http}/ui"), "--dump-dom").stdout)
        .expect("UTF-8");
    let text = element(&dom, r#"<p id="cluster-text">"#, "</p>");
    // The leader may have changed since (a busy machine, 20 ms ticks):
    // the panel names one of the members.
    assert!(
        peers
            .iter()
            .any(|p| text.contains(&format!("Leader: {}", p.client_addr))),
        "{text}"
    );
    let table = element(&dom, r#"<table id="cluster-table""#, "</table>");
    assert_eq!(
        table.matches("<tr>").count(),
        4,
        "a header and three members: {table}"
    );
    assert!(table.contains("<td>leader</td>"), "{table}");
    assert!(table.contains("<td>follower</td>"), "{table}");
    assert!(table.contains("(this member)"), "{table}");
    drop(members);
    let _ = std::fs::remove_dir_all(&dir);
}
