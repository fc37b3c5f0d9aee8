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
    let publish = &blocks
        .iter()
        .find(|(info, text)| info == "sh" && text.contains("/v1/signals/"))
        .expect("the publish example")
        .1;
    let promised = publish
        .lines()
        .find_map(|l| l.trim().strip_prefix("# "))
        .expect("the publish example shows its answer");
    // Every SSE example (`curl -N`), each with the publish example.
    let streams: Vec<usize> = blocks
        .iter()
        .enumerate()
        .filter(|(_, (info, text))| info == "sh" && text.contains("curl -N"))
        .map(|(i, _)| i)
        .collect();
    assert!(streams.len() >= 2, "the README shows two SSE examples");
    for stream_at in streams {
        let stream = &blocks[stream_at].1;
        // The README shows the stream's output in the text block right after.
        let (info, shown) = &blocks[stream_at + 1];
        assert_eq!(info, "text", "the SSE example is followed by its output");
        run_stream_example(stream, shown, publish, promised);
    }
}

/// Runs one SSE example in the background, the publish example beside it,
/// and checks that the stream prints what the README shows.
fn run_stream_example(stream: &str, shown: &str, publish: &str, promised: &str) {
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
            .unwrap_or_else(|_| panic!("the stream printed the next line in time:\n{stream}"))
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
