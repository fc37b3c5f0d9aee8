//! `--spawn`: the runner starts the server under test itself, once per
//! configuration, so every case runs and none is skipped.
//!
//! The command is a template split on spaces (no quoting; write a wrapper
//! script for anything fancier, and `exec` the server from it so stopping
//! the script's PID stops the server). `{port}` becomes a free loopback
//! port and a word `{flags}` the case's server flags, one word each. The
//! server must listen on `127.0.0.1:{port}`.
//!
//! Readiness is watched without connecting where the system allows it
//! (Linux's `/proc/net/tcp`, `tcp6`): a probe connection could still be
//! counted by a server started with `--max-connections 1` when the case's
//! first connection arrives. Elsewhere the runner connects once.
//!
//! A server is stopped by its PID: SIGTERM, then SIGKILL if it has not
//! exited within [`STOP_GRACE`]. Its output is kept (the last
//! [`KEPT_LINES`] lines) for the message when it fails to start.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a stopped server gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How many lines of a server's output are kept for error messages.
pub const KEPT_LINES: usize = 20;

/// Poll interval while waiting for a server to listen or to exit.
const POLL: Duration = Duration::from_millis(10);

/// A `--spawn` command template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    words: Vec<String>,
}

impl Template {
    /// Splits `command` on spaces; it must contain `{port}` and the word
    /// `{flags}`.
    pub fn parse(command: &str) -> Result<Template, String> {
        let words: Vec<String> = command
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect();
        if words.is_empty() {
            return Err("--spawn: empty command".into());
        }
        if !words.iter().any(|w| w.contains("{port}")) {
            return Err(format!(
                "--spawn `{command}`: has no `{{port}}` (where the server's port goes)"
            ));
        }
        if !words.iter().any(|w| w == "{flags}") {
            return Err(format!(
                "--spawn `{command}`: has no word `{{flags}}` (where each case's server flags go)"
            ));
        }
        Ok(Template { words })
    }

    /// The command line for a server on `port` with `flags`.
    pub fn argv(&self, port: u16, flags: &[String]) -> Vec<String> {
        let mut argv = Vec::new();
        for w in &self.words {
            if w == "{flags}" {
                argv.extend(flags.iter().cloned());
            } else {
                argv.push(w.replace("{port}", &port.to_string()));
            }
        }
        argv
    }
}

/// A running server started by the runner; stopped when dropped.
pub struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Starts `template` with `flags` on a free loopback port and waits until
/// it listens there, for at most `ready_within`.
pub fn start(
    template: &Template,
    flags: &[String],
    ready_within: Duration,
) -> Result<Server, String> {
    let port = unused_port()?;
    let argv = template.argv(port, flags);
    let shown = argv.join(" ");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(out) = child.stdout.take() {
        keep_tail(out, tail.clone());
    }
    if let Some(err) = child.stderr.take() {
        keep_tail(err, tail.clone());
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + ready_within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(format!(
                    "`{shown}` exited ({status}) before listening on {addr}{}",
                    last_output(&tail)
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(format!("`{shown}`: {e}")),
        }
        if listening(addr) {
            return Ok(Server { child, addr });
        }
        if Instant::now() >= deadline {
            stop(&mut child);
            return Err(format!(
                "`{shown}` did not listen on {addr} within {}s{}",
                ready_within.as_secs_f64(),
                last_output(&tail)
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// A loopback port below the kernel's ephemeral range that was free a
/// moment ago, for a server that must be named its port before it starts
/// (the scripted servers here, the tests' daemons and cluster members, the
/// bench's scaling runs). A port from `bind(":0")` comes from the
/// ephemeral range, so once released any outgoing connection on the
/// machine may take it before the server binds it (or while a killed
/// member is down); a busy machine showed that as "Address already in
/// use". Below the range only another explicit bind can collide: test
/// processes start apart (by process id) and step apart within one, and a
/// port is handed out only if it binds now.
pub fn unused_port() -> Result<u16, String> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let low = ephemeral_floor();
    let span = low.saturating_sub(FIRST).max(1_000);
    let base = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = FIRST + base.wrapping_add(n.wrapping_mul(101)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(format!("no free loopback port from {FIRST} below {low}"))
}

/// The lowest port [`unused_port`] hands out.
const FIRST: u32 = 10_000;

/// The first port of the kernel's ephemeral range (32768 where it cannot
/// be read).
fn ephemeral_floor() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
}

/// Reads `from` line by line into `tail`, keeping the last lines.
fn keep_tail(from: impl Read + Send + 'static, tail: Arc<Mutex<VecDeque<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() == KEPT_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    });
}

fn last_output(tail: &Mutex<VecDeque<String>>) -> String {
    let t = tail.lock().unwrap_or_else(|e| e.into_inner());
    if t.is_empty() {
        return "; it printed nothing".into();
    }
    let lines: Vec<&str> = t.iter().map(String::as_str).collect();
    format!("; its last output:\n    {}", lines.join("\n    "))
}

/// Whether something listens on `addr`: from `/proc/net/tcp` where it
/// exists (no connection made), else by connecting once.
fn listening(addr: SocketAddr) -> bool {
    match proc_listening(addr.port()) {
        Some(found) => found,
        None => TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
    }
}

/// `Some(true)` if a TCP socket in LISTEN state has local port `port`,
/// per `/proc/net/tcp` and `/proc/net/tcp6`; `None` when neither can be
/// read (not Linux).
fn proc_listening(port: u16) -> Option<bool> {
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        if listens_in(&text, port) {
            return Some(true);
        }
    }
    readable.then_some(false)
}

/// Whether a `/proc/net/tcp` table lists a socket with local port `port`
/// in state `0A` (LISTEN).
fn listens_in(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, local, _, state, ..] if local.ends_with(&want) && *state == "0A")
    })
}

/// SIGTERM by PID, then SIGKILL after [`STOP_GRACE`]; reaps the child.
fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on the PID of a child this process started and
        // has not reaped yet, so the PID cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = Template::parse("dflockd  --port {port} {flags} --debug").unwrap();
        let flags = vec!["--max-locks".to_string(), "1".to_string()];
        assert_eq!(
            t.argv(4711, &flags),
            ["dflockd", "--port", "4711", "--max-locks", "1", "--debug"]
        );
        assert_eq!(t.argv(4711, &[]), ["dflockd", "--port", "4711", "--debug"]);
        assert!(Template::parse("server --addr=127.0.0.1:{port} {flags}").is_ok());
        assert!(Template::parse("dflockd {flags}")
            .unwrap_err()
            .contains("{port}"));
        assert!(Template::parse("dflockd --port {port}")
            .unwrap_err()
            .contains("{flags}"));
        assert!(Template::parse("  ").is_err());
    }

    #[test]
    fn proc_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000\n";
        assert!(listens_in(table, 0x1F90));
        // Established, not listening.
        assert!(!listens_in(table, 0x1F91));
        assert!(!listens_in(table, 80));
    }

    #[test]
    fn unused_ports_are_below_the_ephemeral_range_distinct_and_bindable() {
        let range = FIRST..ephemeral_floor();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let port = unused_port().expect("a port");
            assert!(range.contains(&u32::from(port)), "{port} not in {range:?}");
            assert!(seen.insert(port), "{port} handed out twice");
        }
        // Free when handed out: the listener a server would open binds.
        let port = unused_port().expect("a port");
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
