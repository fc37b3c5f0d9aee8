//! The README's `curl` examples work as written: each ```` ```sh ```` block
//! that calls `curl` is run by `bash` against a server this test starts,
//! with only the address changed (`localhost:6389` and `127.0.0.1:6389`
//! become the test server's HTTP address) and the line that starts
//! `dflockd` left out (the server is already running). A block must exit 0
//! and print what its comments promise; afterwards the server holds
//! nothing. The SSE stream (`curl -N`) runs in the background while the
//! publish example runs, and must print the lines the README shows.
//!
//! The examples need `curl` and `bash`. Without `curl` the test says so
//! and passes, unless `DFLOCKD_REQUIRE_CURL=1` (set by `.ci/run`), where a
//! missing `curl` fails it.
//!
//! The client-author and shell sections run too: each ```` ```sh ```` block
//! that calls a `dflockd` subcommand runs in `bash` with the binary under
//! test first on `PATH` (the conformance run, the scripted server with
//! `dflockd lock` as its client, the cron script with the lock free and
//! held elsewhere), and each ```` ```text ```` block that starts with
//! `$ dflockd` runs its command and must print the lines shown.

use std::process::Command;
use std::time::Duration;

use dflockd::http::HttpSettings;
use dflockd::server::{spawn, ServerConfig};

const README: &str = include_str!("../README.md");

/// The fenced blocks of the README, as (info string, text), in order.
fn fenced_blocks() -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in README.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(info)) => current = Some((info.trim().to_string(), String::new())),
            (Some(_), Some("")) => blocks.extend(current.take()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The `sh` blocks of the README that call `curl`.
fn curl_blocks() -> Vec<String> {
    fenced_blocks()
        .into_iter()
        .filter(|(info, text)| info == "sh" && text.contains("curl "))
        .map(|(_, text)| text)
        .collect()
}

/// The block as the test runs it: the server line dropped, the address
/// replaced, every curl bounded in time.
fn script(block: &str, http: std::net::SocketAddr) -> String {
    let body: String = block
        .lines()
        .filter(|l| !l.trim_start().starts_with("dflockd "))
        .map(|l| {
            l.replace("localhost:6389", &http.to_string())
                .replace("127.0.0.1:6389", &http.to_string())
                + "\n"
        })
        .collect();
    format!("set -euo pipefail\ncurl() {{ command curl --max-time 20 \"$@\"; }}\n{body}")
}

fn server() -> dflockd::server::ServerHandle {
    spawn(ServerConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        http: Some(HttpSettings::default()),
        ..ServerConfig::default()
    })
    .expect("server starts")
}

fn stop(server: dflockd::server::ServerHandle) {
    server.shutdown();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.join();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("server stops within 30 s");
}

/// Whether `curl` runs here. Without it the examples are skipped (said on
/// stderr), unless `DFLOCKD_REQUIRE_CURL=1`, where that is a failure.
fn curl_available() -> bool {
    let found = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("DFLOCKD_REQUIRE_CURL").as_deref() != Ok("1"),
            "curl is required (DFLOCKD_REQUIRE_CURL=1) but not installed"
        );
        eprintln!("curl is not installed: README examples not run");
    }
    found
}

#[test]
fn readme_has_curl_examples() {
    let blocks = curl_blocks();
    assert!(
        blocks.iter().any(|b| b.contains("/v1/sessions")),
        "no session example found in README.md"
    );
}

#[test]
fn readme_curl_examples_run_as_written() {
    if !curl_available() {
        return;
    }
    for block in curl_blocks() {
        if block.contains("curl -N") || block.contains("/v1/signals/") {
            continue; // readme_signal_examples_run_as_written
        }
        let server = server();
        let http = server.http_addr().expect("HTTP is on");
        let script = script(&block, http);
        let out = Command::new("bash")
            .args(["-c", &script])
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "README block failed ({}):\n{block}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        // Each `# {json}` comment on a line that prints is a promise about
        // the shape of what it printed: the same keys, in the same order.
        for promised in block
            .lines()
            .filter_map(|l| l.split_once("# {").map(|(_, rest)| rest))
            .map(|rest| rest.split('}').next().unwrap_or(rest))
        {
            let keys: Vec<&str> = promised
                .split(',')
                .filter_map(|kv| kv.split_once(':').map(|(k, _)| k.trim()))
                .collect();
            assert!(
                stdout.lines().any(|l| keys.iter().all(|k| l.contains(k))),
                "no output line has the keys {keys:?} promised by README:\n{stdout}"
            );
        }
        // A block that ends with `/v1/stats` cleans up after itself:
        // nothing held, no session.
        if block.trim_end().ends_with("/v1/stats") {
            let stats = stdout
                .lines()
                .rev()
                .find(|l| l.starts_with("{\"connections\""))
                .unwrap_or_else(|| panic!("no stats line in:\n{stdout}"));
            let v: serde_json::Value = serde_json::from_str(stats).expect("stats JSON");
            assert_eq!(v["locks"], serde_json::json!([]), "{stats}");
            assert_eq!(v["connections"], 0, "{stats}");
        }
        stop(server);
    }
}

#[test]
fn readme_signal_examples_run_as_written() {
    if !curl_available() {
        return;
    }
    let blocks = fenced_blocks();
    let at = |pred: &dyn Fn(&str, &str) -> bool| {
        blocks
            .iter()
            .position(|(info, text)| pred(info, text))
            .expect("README block")
    };
    let stream_at = at(&|info, text| info == "sh" && text.contains("curl -N"));
    let stream = &blocks[stream_at].1;
    // The README shows the stream's output in the text block right after.
    let (info, shown) = &blocks[stream_at + 1];
    assert_eq!(info, "text", "the SSE example is followed by its output");
    let publish = &blocks[at(&|info, text| info == "sh" && text.contains("/v1/signals/"))].1;
    let promised = publish
        .lines()
        .find_map(|l| l.trim().strip_prefix("# "))
        .expect("the publish example shows its answer");

    let server = server();
    let http = server.http_addr().expect("HTTP is on");
    // `exec`, so killing the child kills curl itself.
    let mut child = Command::new("bash")
        .args([
            "-c",
            &script(stream, http).replace("\ncurl ", "\nexec curl "),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run bash");
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let next = || {
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the stream printed the next line in time")
    };
    let mut expected = shown.lines();
    // The stream is subscribed once `:ok` arrives.
    assert_eq!(Some(next().as_str()), expected.next());
    assert_eq!(Some(next().as_str()), expected.next());

    let published = Command::new("bash")
        .args(["-c", &script(publish, http)])
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&published.stdout);
    assert!(published.status.success(), "{stdout}");
    assert_eq!(stdout.trim(), promised, "publish answer");
    for line in expected {
        assert_eq!(next(), line);
    }
    let _ = child.kill();
    let _ = child.wait();
    stop(server);
}

// ---------------------------------------------------------------------------
// The client-author and shell sections: `dflockd` subcommands, run with the
// binary first on PATH, against a server this test starts (its address
// replacing `127.0.0.1:6388`, a free port replacing `7000`).

/// PATH with the directory of the `dflockd` binary under test first.
fn path_with_dflockd() -> String {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_dflockd"));
    let dir = bin.parent().expect("the binary has a directory");
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The `sh` blocks that run `dflockd` subcommands (not the curl ones).
fn cli_blocks() -> Vec<String> {
    fenced_blocks()
        .into_iter()
        .filter(|(info, text)| info == "sh" && text.contains("dflockd ") && !text.contains("curl "))
        .filter(|(_, text)| {
            text.lines()
                .any(|l| l.trim_start().starts_with("dflockd ") && !l.contains("--http-port"))
        })
        .map(|(_, text)| text)
        .collect()
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs `script` in bash with `dflockd` on PATH, killing it (by PID) if
/// it has not finished within two minutes.
fn run_bash(script: &str) -> std::process::Output {
    let child = Command::new("bash")
        .args(["-c", script])
        .env("PATH", path_with_dflockd())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bash");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out.expect("bash ran"),
        Err(_) => {
            // SAFETY: kill(2) on the PID of the bash this test started,
            // which the waiting thread has not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!("README block did not finish within 2 minutes:\n{script}");
        }
    }
}

#[test]
fn readme_has_client_author_and_shell_examples() {
    let blocks = cli_blocks();
    assert!(blocks
        .iter()
        .any(|b| b.contains("dflockd conformance --spawn")));
    assert!(blocks
        .iter()
        .any(|b| b.contains("dflockd conformance serve")));
    assert!(blocks
        .iter()
        .any(|b| b.contains("dflockd lock nightly-backup")));
}

/// Each block exits 0, and every whole-line `# TEXT` comment of a block
/// (one that is not a script with `#!`) is a line of what it printed. The
/// cron script runs twice: with the lock free it runs the job, with the
/// lock held elsewhere it skips, both exiting 0.
#[test]
fn readme_cli_examples_run_as_written() {
    for block in cli_blocks() {
        let server = server();
        let addr = server.local_addr().to_string();
        let port = free_port().to_string();
        let script = block
            .replace("127.0.0.1:6388", &addr)
            .replace("7000", &port);
        if block.starts_with("#!") {
            let out = run_bash(&script);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{block}\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("backing up with fence "), "{stdout}");
            // Another host holds it: this one skips, successfully.
            let mut other = dflockd::client::blocking::Connection::connect(&addr).unwrap();
            let held = other
                .acquire(
                    dflockd::wire::Space::Lock,
                    "nightly-backup",
                    Duration::ZERO,
                    1,
                    None,
                )
                .unwrap();
            let out = run_bash(&script);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{stdout}");
            assert_eq!(stdout, "another host holds nightly-backup: skipping\n");
            other
                .release(dflockd::wire::Space::Lock, "nightly-backup", held.token)
                .unwrap();
        } else {
            let out = run_bash(&script);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "README block failed ({}):\n{block}\nstdout:\n{stdout}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            for promised in block.lines().filter_map(|l| l.strip_prefix("# ")) {
                assert!(
                    stdout.lines().any(|l| l == promised),
                    "README promises the line {promised:?}; the block printed:\n{stdout}"
                );
            }
        }
        stop(server);
    }
}

/// The `text` blocks that show a `$ dflockd ...` command and its output.
fn shell_sessions() -> Vec<(String, Vec<String>)> {
    fenced_blocks()
        .into_iter()
        .filter(|(info, _)| info == "text")
        .filter_map(|(_, text)| {
            let mut lines = text.lines();
            let command = lines.next()?.strip_prefix("$ dflockd ")?.to_string();
            Some((command, lines.map(String::from).collect()))
        })
        .collect()
}

/// `dflockd stats`, `listen` and `signal` print what the README shows:
/// the stats of a fresh server exactly; the listener (started first, and
/// subscribed before the signal is sent) the signal's line; the publisher
/// the delivery count.
#[test]
fn readme_shell_sessions_print_what_they_show() {
    let sessions = shell_sessions();
    let session = |word: &str| {
        sessions
            .iter()
            .find(|(c, _)| c.starts_with(word))
            .unwrap_or_else(|| panic!("no `$ dflockd {word}` block in README.md"))
    };
    // Split like a shell would for these simple lines: words, and one
    // single-quoted argument at most.
    let argv = |command: &str, addr: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = command;
        while !rest.is_empty() {
            rest = rest.trim_start();
            if let Some(q) = rest.strip_prefix('\'') {
                let (arg, tail) = q.split_once('\'').expect("closing quote");
                out.push(arg.to_string());
                rest = tail;
            } else {
                let (arg, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push(arg.to_string());
                rest = tail;
            }
        }
        out.extend(["--addr".to_string(), addr.to_string()]);
        out
    };
    let server = server();
    let addr = server.local_addr().to_string();
    let dflockd = || Command::new(env!("CARGO_BIN_EXE_dflockd"));

    let (stats, shown) = session("stats");
    let out = dflockd().args(argv(stats, &addr)).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        *shown
    );

    let (listen, heard) = session("listen");
    let mut listener = dflockd()
        .args(argv(listen, &addr))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(listener.stdout.take().unwrap()));
    let mut conn = dflockd::client::blocking::Connection::connect(&addr).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while conn.stats().unwrap()["signal_channels"] == serde_json::json!([]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener never subscribed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (signal, count) = session("signal");
    let out = dflockd().args(argv(signal, &addr)).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        *count
    );
    assert_eq!(lines.next().unwrap().unwrap(), heard[0]);
    let _ = listener.kill();
    let _ = listener.wait();
    stop(server);
}
