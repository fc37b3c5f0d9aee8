//! The README's `curl` examples work as written: each ```` ```sh ```` block
//! that calls `curl` is run by `bash` against a server this test starts,
//! with only the address changed (`localhost:6389` becomes the test
//! server's HTTP port) and the line that starts `dflockd` left out (the
//! server is already running). The block must exit 0 and print what its
//! comments promise; afterwards the server holds nothing.
//!
//! The examples need `curl` and `bash`. Without `curl` the test says so
//! and passes, unless `DFLOCKD_REQUIRE_CURL=1` (set by `.ci/run`), where a
//! missing `curl` fails it.

use std::process::Command;
use std::time::Duration;

use dflockd::http::HttpSettings;
use dflockd::server::{spawn, ServerConfig};

const README: &str = include_str!("../README.md");

/// The `sh` blocks of the README that call `curl`.
fn curl_blocks() -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in README.lines() {
        match &mut current {
            None if line.trim_start() == "```sh" => current = Some(String::new()),
            Some(block) if line.trim_start() == "```" => {
                if block.contains("curl ") {
                    blocks.push(std::mem::take(block));
                }
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
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
    if !have_curl() {
        assert!(
            std::env::var("DFLOCKD_REQUIRE_CURL").as_deref() != Ok("1"),
            "curl is required (DFLOCKD_REQUIRE_CURL=1) but not installed"
        );
        eprintln!("curl is not installed: README examples not run");
        return;
    }
    for block in curl_blocks() {
        let server = spawn(ServerConfig {
            listen: "127.0.0.1:0".into(),
            threads: 2,
            http: Some(HttpSettings::default()),
            ..ServerConfig::default()
        })
        .expect("server starts");
        let http = server.http_addr().expect("HTTP is on");
        let script: String = block
            .lines()
            .filter(|l| !l.trim_start().starts_with("dflockd "))
            .map(|l| l.replace("localhost:6389", &http.to_string()))
            .map(|l| l + "\n")
            .collect();
        // Every curl gives up rather than hang the suite.
        let script =
            format!("set -euo pipefail\ncurl() {{ command curl --max-time 20 \"$@\"; }}\n{script}");
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
        // The block cleans up after itself: nothing held, no session.
        let stats_line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("{\"connections\""));
        if let Some(stats) = stats_line {
            let v: serde_json::Value = serde_json::from_str(stats).expect("stats JSON");
            assert_eq!(v["locks"], serde_json::json!([]), "{stats}");
            assert_eq!(v["connections"], 0, "{stats}");
        }
        server.shutdown();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            server.join();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("server stops within 30 s");
    }
}
