//! The client subcommands of the `dflockd` binary against in-process
//! servers on `127.0.0.1:0`: `dflockd lock` (the environment reaches the
//! command, the exit status passes through, FIFO order between concurrent
//! invocations, exit 75 on a timeout without running the command, exit 75
//! and a stopped command when the lock is lost, signals passed on, SIGKILL
//! after `--kill-after`), and `dflockd stats`, `signal`, `listen`.
//!
//! Every wait has a deadline and waits for something observable: a line
//! from a child, a process exit, a `stats` snapshot.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use dflockd::client::blocking::Connection;
use dflockd::server::{spawn, ServerConfig, ServerHandle};
use dflockd::wire::Space;

const DEADLINE: Duration = Duration::from_secs(20);

fn server_with(token: Option<&str>) -> ServerHandle {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        ..ServerConfig::default()
    };
    config.core.auth_token = token.map(|t| t.as_bytes().to_vec());
    spawn(config).expect("server starts")
}

fn server() -> ServerHandle {
    server_with(None)
}

fn dflockd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dflockd"))
}

fn temp_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-cli-{name}", std::process::id()))
}

/// A running `dflockd` subcommand whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = dflockd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run dflockd");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            stdin,
            lines,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .expect("the command printed a line in time")
    }

    /// Waits for the process to exit; returns its status and stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let status = wait_with_deadline(&mut self.child);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // By PID, and only if it is still running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_with_deadline(child: &mut Child) -> ExitStatus {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < end,
            "the process did not exit within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `stats` on `addr` until `pred` holds, with a deadline.
fn until_stats(addr: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let mut conn = Connection::connect(addr).expect("connect");
    let end = Instant::now() + DEADLINE;
    loop {
        let stats = conn.stats().expect("stats");
        if pred(&stats) {
            return;
        }
        assert!(Instant::now() < end, "stats never matched: {stats}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn waiters(stats: &serde_json::Value, key: &str) -> u64 {
    stats["locks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["key"] == key)
        .map(|l| l["waiters"].as_u64().unwrap_or(0))
        .sum()
}

fn is_free(addr: &str, key: &str) -> bool {
    let mut conn = Connection::connect(addr).expect("connect");
    match conn.acquire(Space::Lock, key, Duration::ZERO, 1, None) {
        Ok(grant) => {
            conn.release(Space::Lock, key, grant.token)
                .expect("release");
            true
        }
        Err(_) => false,
    }
}

#[test]
fn the_command_sees_key_token_and_fence_and_its_status_passes_through() {
    let server = server();
    let addr = server.local_addr().to_string();
    let out: Output = dflockd()
        .args(["lock", "cli-env", "--addr", &addr, "--"])
        .args([
            "sh",
            "-c",
            "echo \"$DFLOCKD_KEY $DFLOCKD_TOKEN $DFLOCKD_FENCE\"; exit 7",
        ])
        .output()
        .expect("run dflockd lock");
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let [key, token, fence] = words.as_slice() else {
        panic!("{text:?}");
    };
    assert_eq!(*key, "cli-env");
    assert_eq!(token.len(), 32);
    assert_eq!(
        fence.parse::<u64>().unwrap(),
        u64::from_str_radix(&token[..16], 16).unwrap()
    );
    // Released when the command exited.
    assert!(is_free(&addr, "cli-env"));

    // A semaphore slot works the same way.
    let out = dflockd()
        .args([
            "lock",
            "cli-env-sem",
            "--semaphore",
            "2",
            "--lease",
            "5",
            "--addr",
            &addr,
        ])
        .args(["--", "sh", "-c", "test -n \"$DFLOCKD_TOKEN\""])
        .output()
        .expect("run dflockd lock --semaphore");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn concurrent_invocations_run_one_after_the_other_in_fifo_order() {
    let server = server();
    let addr = server.local_addr().to_string();
    let log = temp_path("fifo.log");
    let _ = std::fs::remove_file(&log);
    let log_s = log.to_str().unwrap().to_string();
    let lock = |script: &str| {
        Running::start(&[
            "lock", "cli-fifo", "--addr", &addr, "--", "sh", "-c", script,
        ])
    };
    // A holds the lock until the test writes a line to its stdin.
    let a = lock(&format!("echo running; read x; echo A >> {log_s}"));
    assert_eq!(a.line(), "running");
    let b = lock(&format!("echo B >> {log_s}"));
    until_stats(&addr, |s| waiters(s, "cli-fifo") == 1);
    let c = lock(&format!("echo C >> {log_s}"));
    until_stats(&addr, |s| waiters(s, "cli-fifo") == 2);
    writeln!(a.stdin.as_ref().unwrap(), "go").unwrap();
    for run in [a, b, c] {
        let (status, err) = run.finish();
        assert_eq!(status.code(), Some(0), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "A\nB\nC\n");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_timeout_exits_75_without_running_the_command() {
    let server = server();
    let addr = server.local_addr().to_string();
    let mut holder = Connection::connect(&addr).unwrap();
    holder
        .acquire(Space::Lock, "cli-timeout", Duration::ZERO, 1, None)
        .unwrap();
    let marker = temp_path("timeout-ran");
    let _ = std::fs::remove_file(&marker);
    let out = dflockd()
        .args([
            "lock",
            "cli-timeout",
            "--timeout",
            "1",
            "--addr",
            &addr,
            "--",
        ])
        .args(["touch", marker.to_str().unwrap()])
        .output()
        .expect("run dflockd lock");
    assert_eq!(out.status.code(), Some(75));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cli-timeout was not granted within 1s"),
        "{err}"
    );
    assert!(!marker.exists(), "the command ran");
}

/// The token is released from another connection while the command runs:
/// the next renewal fails, the command gets SIGTERM, and `dflockd lock`
/// exits 75 saying why.
#[test]
fn a_lost_lock_stops_the_command_and_exits_75() {
    let server = server();
    let addr = server.local_addr().to_string();
    let run = Running::start(&[
        "lock",
        "cli-lost",
        "--lease",
        "2",
        "--addr",
        &addr,
        "--",
        "sh",
        "-c",
        "echo \"$DFLOCKD_TOKEN\"; exec sleep 600",
    ]);
    let token = dflockd::wire::Token::parse(run.line().as_bytes()).expect("a token");
    let mut other = Connection::connect(&addr).unwrap();
    other.release(Space::Lock, "cli-lost", token).unwrap();
    let (status, err) = run.finish();
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(
        err.contains("lost the lock on cli-lost (renewal failed); stopping the command"),
        "{err}"
    );
}

/// The server goes away while the command runs: the same.
#[test]
fn a_stopped_server_stops_the_command_and_exits_75() {
    let server = server();
    let addr = server.local_addr().to_string();
    let run = Running::start(&[
        "lock",
        "cli-gone",
        "--lease",
        "2",
        "--addr",
        &addr,
        "--",
        "sh",
        "-c",
        "echo started; exec sleep 600",
    ]);
    assert_eq!(run.line(), "started");
    server.shutdown();
    let (status, err) = run.finish();
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(err.contains("lost the lock on cli-gone"), "{err}");
}

/// A command that ignores SIGTERM gets SIGKILL after --kill-after.
#[test]
fn kill_after_sends_sigkill() {
    let server = server();
    let addr = server.local_addr().to_string();
    let run = Running::start(&[
        "lock",
        "cli-stubborn",
        "--lease",
        "2",
        "--kill-after",
        "1",
        "--addr",
        &addr,
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo \"$DFLOCKD_TOKEN\"; exec sleep 600",
    ]);
    let token = dflockd::wire::Token::parse(run.line().as_bytes()).expect("a token");
    Connection::connect(&addr)
        .unwrap()
        .release(Space::Lock, "cli-stubborn", token)
        .unwrap();
    let (status, err) = run.finish();
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(err.contains("outlived SIGTERM by 1s: SIGKILL"), "{err}");
}

/// SIGTERM to `dflockd lock` reaches the command, whose exit status then
/// passes through; the lock is released.
#[test]
fn signals_are_passed_on_to_the_command() {
    let server = server();
    let addr = server.local_addr().to_string();
    let run = Running::start(&[
        "lock",
        "cli-signal",
        "--addr",
        &addr,
        "--",
        "sh",
        "-c",
        "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    assert_eq!(run.line(), "ready");
    let pid = libc::pid_t::try_from(run.child.id()).unwrap();
    // SAFETY: kill(2) on the PID of a child this test started and has not
    // reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(run.line(), "got-term");
    let (status, err) = run.finish();
    assert_eq!(status.code(), Some(42), "{err}");
    assert!(is_free(&addr, "cli-signal"));
}

#[test]
fn usage_errors_exit_64_and_auth_errors_77() {
    let out = dflockd().args(["lock", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give the command after `--`"));
    let out = dflockd()
        .args(["lock", "k", "--tls", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let empty = temp_path("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let out = dflockd()
        .args([
            "lock",
            "k",
            "--auth-token-file",
            empty.to_str().unwrap(),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no token"));
    let help = dflockd().args(["lock", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.starts_with("Usage: dflockd lock KEY [options] -- COMMAND [ARGS...]"),
        "{help}"
    );
    assert!(
        help.contains("75 if the lock was not granted in time"),
        "{help}"
    );

    let server = server_with(Some("s3cret"));
    let addr = server.local_addr().to_string();
    let good = temp_path("good-token");
    std::fs::write(&good, "s3cret\n").unwrap();
    let wrong = temp_path("wrong-token");
    std::fs::write(&wrong, "guess\n").unwrap();
    let run = |file: &PathBuf| {
        dflockd()
            .args(["lock", "cli-auth", "--addr", &addr, "--auth-token-file"])
            .arg(file)
            .args(["--", "true"])
            .output()
            .unwrap()
    };
    assert_eq!(run(&good).status.code(), Some(0));
    let out = run(&wrong);
    assert_eq!(out.status.code(), Some(77));
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
    let out = dflockd().args(["stats", "--addr", &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(77));
    for f in [empty, good, wrong] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn stats_signal_and_listen() {
    let server = server();
    let addr = server.local_addr().to_string();
    let out = dflockd().args(["stats", "--addr", &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert!(stats["connections"].is_u64(), "{stats}");

    let listen = Running::start(&["listen", "cli.*", "--addr", &addr]);
    until_stats(&addr, |s| {
        s["signal_channels"]
            .as_array()
            .is_some_and(|c| c.iter().any(|e| e["pattern"] == "cli.*"))
    });
    let out = dflockd()
        .args(["signal", "cli.paid", "order 42 paid", "--addr", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    assert_eq!(listen.line(), "cli.paid order 42 paid");
    let out = dflockd()
        .args(["signal", "cli.*", "x", "--addr", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = dflockd()
        .args(["listen", "a.>.b", "--addr", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
