//! The real `dflockd` binary as a child process, for what only a process
//! shows: configuration errors and exit codes, log lines on stderr, and
//! start-up refusals.
//!
//! A [`Daemon`] starts the binary on `127.0.0.1` with port 0 (the kernel
//! picks free ports; the `listening` log lines say which), with every
//! `DFLOCKD_*` variable of the test environment removed so that only the
//! test's own settings apply, and `--log-format json` so each stderr line
//! is one JSON object. A thread collects the lines. The child is stopped
//! by its PID (SIGTERM through `kill`, or `Child::kill`), never by name,
//! and always on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::DEADLINE;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dflockd");

/// A command for the binary with a clean `DFLOCKD_*` environment.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DFLOCKD_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A running `dflockd` and the log lines it has written so far.
pub struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub tcp: SocketAddr,
    pub http: Option<SocketAddr>,
}

impl Daemon {
    /// Starts `dflockd --host 127.0.0.1 --port 0 --log-format json ARGS`
    /// with `env` and waits for its `listening` lines (one for TCP, and
    /// one for HTTP when `--http-port` is among `args`).
    #[track_caller]
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = command();
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start dflockd");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let mut d = Daemon {
            child,
            lines,
            tcp: "0.0.0.0:0".parse().expect("addr"),
            http: None,
        };
        let wants_http = args.contains(&"--http-port");
        let addr_of = |v: &Value| v["addr"].as_str().and_then(|a| a.parse().ok());
        let tcp = d.wait_for(|v| v["msg"] == "listening" && v["transport"] == "tcp");
        d.tcp = addr_of(&tcp).expect("TCP address");
        if wants_http {
            let http = d.wait_for(|v| v["msg"] == "listening" && v["transport"] == "http");
            d.http = addr_of(&http);
        }
        d
    }

    /// Every line so far, parsed (a line that is not JSON fails the test:
    /// with `--log-format json` every line must be one object).
    pub fn logs(&self) -> Vec<Value> {
        self.raw_lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Every line so far, as written.
    pub fn raw_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The log lines whose `msg` is `msg`.
    pub fn with_msg(&self, msg: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|v| v["msg"] == msg)
            .collect()
    }

    /// Waits (up to [`DEADLINE`]) for a line matching `pred` and returns it.
    #[track_caller]
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.logs().into_iter().find(&pred) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "dflockd exited ({status}):\n{}",
                    self.raw_lines().join("\n")
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no such log line within {DEADLINE:?}:\n{}",
                self.raw_lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM to this child (by PID) and waits for it to exit within
    /// `deadline`; returns its exit status code.
    #[track_caller]
    pub fn terminate(&mut self, deadline: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                start.elapsed() < deadline,
                "dflockd did not stop within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Kills this PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (it must exit within [`DEADLINE`]) and
/// returns its exit code and stderr.
#[track_caller]
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = command()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dflockd");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dflockd {args:?} did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status.code(), err)
}

/// A loopback port that was free a moment ago (for `--http-port`, where 0
/// means "off"), below the ephemeral range (`support::unused_port`).
/// Another process could still take it before the daemon binds; the
/// daemon then fails to start and the test says so.
pub fn free_port() -> String {
    crate::support::unused_port().to_string()
}
