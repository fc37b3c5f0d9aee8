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
//! The `nc` sessions of "The protocol in 10 minutes" are replayed too, over
//! TCP, without `nc`: each `###` subsection is a scene, run against a fresh
//! server. A block that starts `$ nc HOST PORT` opens a terminal, named by
//! the last word of a comment after the command (`# terminal B` is `B`),
//! or unnamed; a block without it
//! continues the terminal its info string names (```` ```text B ````), or
//! the unnamed one. In a block, lines are typed or read as the protocol
//! says: three typed lines make a request, the next line shown is its
//! reply, a `sig ` line is a push, and a line that is not a command word
//! where a request would start is a line nobody asked for (the idle
//! `error`). `$` alone means the server closed the connection, `^C` that
//! the user closed it. Tokens are matched as placeholders, `stats`
//! fractions as any number; everything else must be byte for byte.
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

// ---------------------------------------------------------------------------
// "The protocol in 10 minutes": `nc` sessions replayed against a server.

/// The README section whose fenced blocks are `nc` sessions.
const SESSIONS: &str = "## The protocol in 10 minutes";

/// One `###` subsection of [`SESSIONS`]: its title and its fenced blocks
/// (info string, text), replayed in order against one fresh server.
struct Scene {
    title: String,
    blocks: Vec<(String, String)>,
}

fn scenes() -> Vec<Scene> {
    let mut scenes: Vec<Scene> = Vec::new();
    let mut inside = false;
    let mut block: Option<(String, String)> = None;
    for line in README.lines() {
        if block.is_none() && line.starts_with("## ") {
            inside = line == SESSIONS;
            continue;
        }
        if !inside {
            continue;
        }
        if block.is_none() {
            if let Some(title) = line.strip_prefix("### ") {
                scenes.push(Scene {
                    title: title.to_string(),
                    blocks: Vec::new(),
                });
                continue;
            }
        }
        match (&mut block, line.strip_prefix("```")) {
            (None, Some(info)) => block = Some((info.trim().to_string(), String::new())),
            (Some(_), Some("")) => {
                let b = block.take().expect("inside a block");
                scenes
                    .last_mut()
                    .unwrap_or_else(|| panic!("a session block before the first ### heading"))
                    .blocks
                    .push(b);
            }
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    scenes
}

/// One `nc` terminal of a scene: a connection and where its conversation
/// stands.
struct Terminal {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
    /// The server's id for this connection: terminals are the only clients
    /// of the scene's server, so the n-th one opened is connection n.
    conn: dflockd::core::ConnId,
    /// Lines of the current request typed so far (0, 1 or 2).
    typed: usize,
    /// Requests typed whose reply has not been shown yet.
    pending: usize,
    /// Whether a request was typed in the current block and not answered
    /// in it: the server must have queued it before the next block.
    fresh: bool,
}

/// What `line` of a session block is, given the terminal's state. Every
/// request is three typed lines and gets one reply, and a reply is never a
/// command word, so the protocol itself tells typing from reading.
#[derive(Debug, PartialEq)]
enum Step {
    Type,
    Read,
    /// `$` alone: the server closed the connection and `nc` exited.
    Closed,
    /// `^C`: the user interrupts `nc`, which closes the connection.
    Interrupt,
}

fn step_of(line: &str, typed: usize, pending: usize) -> Step {
    match line {
        "$" => Step::Closed,
        "^C" => Step::Interrupt,
        _ if typed == 0 && line.starts_with("sig ") => Step::Read,
        _ if typed == 0 && pending > 0 => Step::Read,
        // A line no request asked for, such as the `error` of an idle
        // connection's read deadline.
        _ if typed == 0 && !dflockd::wire::COMMANDS.contains(&line) => Step::Read,
        _ => Step::Type,
    }
}

/// Whether a token-shaped word: 32 lowercase hex digits.
fn is_token(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether the line the server sent matches the line the README shows.
/// Tokens differ on every run: the first time the README shows a token it
/// is bound to the real one, and must stay bound to it. In `ok {json}`
/// (`stats`), numbers the README writes with a fraction (seconds left,
/// seconds idle) match any number; everything else must be equal.
fn line_matches(
    shown: &str,
    got: &str,
    tokens: &mut std::collections::BTreeMap<String, String>,
) -> bool {
    fn json_matches(shown: &serde_json::Value, got: &serde_json::Value) -> bool {
        use serde_json::Value::*;
        match (shown, got) {
            (Number(s), Number(_)) if s.is_f64() => true,
            (Object(s), Object(g)) => {
                s.len() == g.len()
                    && s.iter()
                        .all(|(k, v)| g.get(k).is_some_and(|gv| json_matches(v, gv)))
            }
            (Array(s), Array(g)) => {
                s.len() == g.len() && s.iter().zip(g).all(|(a, b)| json_matches(a, b))
            }
            _ => shown == got,
        }
    }
    if let (Some(s), Some(g)) = (shown.strip_prefix("ok {"), got.strip_prefix("ok {")) {
        let parse = |t: &str| serde_json::from_str::<serde_json::Value>(&format!("{{{t}"));
        return match (parse(s), parse(g)) {
            (Ok(s), Ok(g)) => json_matches(&s, &g),
            _ => false,
        };
    }
    let (shown, got): (Vec<&str>, Vec<&str>) =
        (shown.split(' ').collect(), got.split(' ').collect());
    shown.len() == got.len()
        && shown.iter().zip(&got).all(|(s, g)| {
            if !is_token(s) {
                return s == g;
            }
            if !is_token(g) {
                return false;
            }
            let taken_by_other = tokens.iter().any(|(k, v)| k != s && v == g);
            let bound = tokens.entry(s.to_string()).or_insert_with(|| g.to_string());
            bound == g && !taken_by_other
        })
}

/// Replays one scene: opens terminals as the blocks do, types the typed
/// lines (with the real tokens pasted in), reads and compares the rest.
/// After each block it waits until the server has taken in what was typed:
/// a request left without a reply is queued, and an interrupted terminal
/// is gone.
fn run_scene(scene: &Scene) {
    use std::collections::BTreeMap;
    use std::io::{BufRead, Write};

    // A scene may shorten the read timeout (`read-timeout=N` in a block's
    // info string) so that its idle connection is cut without waiting 23 s.
    let read_timeout_s = scene
        .blocks
        .iter()
        .flat_map(|(info, _)| info.split_whitespace())
        .find_map(|w| w.strip_prefix("read-timeout=")?.parse().ok())
        .unwrap_or(ServerConfig::default().read_timeout_s);
    let server = spawn(ServerConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        read_timeout_s,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let mut terminals: BTreeMap<String, Terminal> = BTreeMap::new();
    let mut opened = 0;
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    let title = &scene.title;

    for (info, text) in &scene.blocks {
        let mut lines = text.lines().peekable();
        // A block opens a terminal (`$ nc HOST PORT`, optionally `# name`)
        // or continues the one its info string names (no name: the
        // scene's unnamed terminal).
        let mut name = info.split_whitespace().nth(1).filter(|w| !w.contains('='));
        let name = match lines.peek().and_then(|l| l.strip_prefix("$ nc ")) {
            Some(rest) => {
                // `# terminal B` names it `B`.
                let comment = rest.split_once('#').map_or("", |(_, c)| c);
                let name = comment.split_whitespace().last().unwrap_or("").to_string();
                assert!(
                    !terminals.contains_key(&name),
                    "{title}: terminal {name:?} opened twice"
                );
                lines.next();
                opened += 1;
                let stream = std::net::TcpStream::connect(server.local_addr()).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("set timeout");
                terminals.insert(
                    name.clone(),
                    Terminal {
                        reader: std::io::BufReader::new(stream.try_clone().expect("clone")),
                        writer: stream,
                        conn: dflockd::core::ConnId(opened),
                        typed: 0,
                        pending: 0,
                        fresh: false,
                    },
                );
                name
            }
            None => name.take().unwrap_or_default().to_string(),
        };
        for line in lines {
            let t = terminals
                .get_mut(&name)
                .unwrap_or_else(|| panic!("{title}: terminal {name:?} is not open for {line:?}"));
            match step_of(line, t.typed, t.pending) {
                Step::Type => {
                    let typed: Vec<String> = line
                        .split(' ')
                        .map(|w| match tokens.get(w) {
                            Some(real) => real.clone(),
                            None if is_token(w) => {
                                panic!("{title}: the README pastes a token it never showed: {w}")
                            }
                            None => w.to_string(),
                        })
                        .collect();
                    t.writer
                        .write_all(format!("{}\n", typed.join(" ")).as_bytes())
                        .expect("type a line");
                    t.typed = (t.typed + 1) % 3;
                    if t.typed == 0 {
                        t.pending += 1;
                        t.fresh = true;
                    }
                }
                Step::Read => {
                    let mut got = String::new();
                    t.reader
                        .read_line(&mut got)
                        .unwrap_or_else(|e| panic!("{title}: reading {line:?}: {e}"));
                    let got = got.trim_end_matches('\n');
                    assert!(
                        line_matches(line, got, &mut tokens),
                        "{title}: the README shows {line:?}, the server sent {got:?}"
                    );
                    if !line.starts_with("sig ") && t.pending > 0 {
                        t.pending -= 1;
                        t.fresh = false;
                    }
                }
                Step::Closed => {
                    let mut rest = String::new();
                    let n = t.reader.read_line(&mut rest);
                    assert!(
                        matches!(n, Ok(0)) || n.is_err(),
                        "{title}: the README shows the connection closed, the server sent {rest:?}"
                    );
                    terminals.remove(&name);
                }
                Step::Interrupt => {
                    let _ = t.writer.shutdown(std::net::Shutdown::Both);
                    terminals.remove(&name);
                }
            }
        }
        // Let the server catch up with what was typed before the next block.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let settled = {
                let door = server.engine().door();
                door.connection_count() == terminals.len()
                    && terminals
                        .values()
                        .all(|t| !t.fresh || door.is_blocked(t.conn))
            };
            if settled {
                // Queued requests may be answered by what later blocks do.
                terminals.values_mut().for_each(|t| t.fresh = false);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{title}: the server did not take in the block within 10 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for (name, t) in &terminals {
        assert!(
            t.typed == 0 && t.pending == 0,
            "{title}: terminal {name:?} ends with a request unanswered"
        );
    }
    drop(terminals);
    stop(server);
}

#[test]
fn readme_protocol_sessions_run_as_written() {
    let scenes = scenes();
    assert!(
        scenes.len() >= 6 && scenes.iter().all(|s| !s.blocks.is_empty()),
        "the README's {SESSIONS:?} section has its scenes, each with sessions"
    );
    let all: String = scenes
        .iter()
        .flat_map(|s| s.blocks.iter().map(|(_, t)| t.as_str()))
        .collect();
    // What the section promises to show.
    for feature in [
        "\nlisten\n",
        "\n\nok\n",
        "\nsig ",
        "\nsl\n",
        "\ne\n",
        "\n$\n",
        "^C",
    ] {
        assert!(all.contains(feature), "no session shows {feature:?}");
    }
    for scene in &scenes {
        run_scene(scene);
    }
}

#[test]
fn session_steps() {
    assert_eq!(step_of("l", 0, 0), Step::Type);
    assert_eq!(step_of("orders", 1, 0), Step::Type);
    assert_eq!(step_of("", 2, 0), Step::Type);
    assert_eq!(step_of("ok 33", 0, 1), Step::Read);
    assert_eq!(step_of("sig a.b hi", 0, 0), Step::Read);
    assert_eq!(step_of("error", 0, 0), Step::Read);
    assert_eq!(step_of("ping", 0, 0), Step::Type);
    assert_eq!(step_of("$", 0, 0), Step::Closed);
    assert_eq!(step_of("^C", 0, 1), Step::Interrupt);
    let mut tokens = std::collections::BTreeMap::new();
    let (t1, t2) = (
        "18ee304792b9ea893c1f5a7e90d2b4c6",
        "000000000000000175a1b0c2d3e4f5a6",
    );
    assert!(line_matches(
        &format!("ok {t1} 33"),
        &format!("ok {t2} 33"),
        &mut tokens
    ));
    assert!(!line_matches(
        &format!("ok {t1} 33"),
        &format!("ok {t2} 34"),
        &mut tokens
    ));
    // A bound token stays bound; another README token cannot take it.
    assert!(!line_matches(
        &format!("ok {t1} 33"),
        &format!("ok {} 33", "1".repeat(32)),
        &mut tokens
    ));
    assert!(!line_matches(
        &format!("ok {} 33", "2".repeat(32)),
        &format!("ok {t2} 33"),
        &mut tokens
    ));
    assert!(line_matches(
        r#"ok {"a":[{"idle_s":12.5,"n":1}]}"#,
        r#"ok {"a":[{"idle_s":0,"n":1}]}"#,
        &mut tokens
    ));
    assert!(!line_matches(
        r#"ok {"a":[{"idle_s":12.5,"n":1}]}"#,
        r#"ok {"a":[{"idle_s":0,"n":2}]}"#,
        &mut tokens
    ));
}
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
        .filter(|(info, text)| {
            info == "sh"
                && text.contains("dflockd ")
                && !text.contains("curl ")
                // The cluster runs in `readme_cluster_example_runs_as_written`.
                && !text.contains("--raft-dir")
        })
        .filter(|(_, text)| {
            text.lines().any(|l| {
                l.trim_start().starts_with("dflockd ")
                    && !l.contains("--http-port")
                    // The daemon itself (flags, no subcommand) is started by
                    // `readme_production_example_starts`.
                    && !l.trim_start().starts_with("dflockd --")
            })
        })
        .map(|(_, text)| text)
        .collect()
}

/// A loopback port below the ephemeral range that was free a moment ago
/// (`dflockd::conformance::spawn::unused_port`).
fn free_port() -> u16 {
    dflockd::conformance::spawn::unused_port().expect("a free loopback port")
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

/// "Running in production": the example command line starts a server as
/// written, with its paths pointed at scratch files (a token, a generated
/// certificate and key, a fence state file), its address at loopback and
/// its ports at free ones. It must log both listeners in JSON and stop on
/// SIGTERM.
#[test]
fn readme_production_example_starts() {
    let block = fenced_blocks()
        .into_iter()
        .find(|(info, text)| info == "sh" && text.trim_start().starts_with("dflockd --host"))
        .map(|(_, text)| text)
        .expect("the README's production example");
    let dir = std::env::temp_dir().join(format!("dflockd-readme-prod-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let file = |name: &str, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write scratch file");
        path.display().to_string()
    };
    let token = file("token", "a-long-random-secret\n");
    let cert = file("cert.pem", &ck.cert.pem());
    let key = file("key.pem", &ck.signing_key.serialize_pem());
    let fence = dir.join("fence").display().to_string();
    let words: Vec<String> = block
        .replace("\\\n", " ")
        .split_whitespace()
        .map(|w| match w {
            "10.0.0.5" => "127.0.0.1".to_owned(),
            "/etc/dflockd/token" => token.clone(),
            "/etc/dflockd/cert.pem" => cert.clone(),
            "/etc/dflockd/key.pem" => key.clone(),
            "/var/lib/dflockd/fence" => fence.clone(),
            "6389" => free_port().to_string(),
            w => w.to_owned(),
        })
        .collect();
    assert_eq!(words[0], "dflockd", "{block}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dflockd"))
        .args(&words[1..])
        .args(["--port", &free_port().to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start dflockd");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut listening = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while listening.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            // SAFETY: kill(2) on the PID of the child this test started.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
            panic!("no two `listening` lines within 60 s; saw {listening:?}");
        };
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("--log-format json printed a non-JSON line {line:?}: {e}"));
        if v["msg"] == "listening" {
            assert_eq!(v["tls"], true, "{line}");
            listening.push(v["transport"].as_str().unwrap_or_default().to_owned());
        }
    }
    listening.sort();
    assert_eq!(listening, ["http", "tcp"]);
    // SAFETY: kill(2) on the PID of the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().expect("wait for dflockd");
    assert!(
        status.success(),
        "SIGTERM ends the server cleanly: {status}"
    );
    assert!(
        std::path::Path::new(&fence).exists(),
        "the fence state file was written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// "Run a 3-member cluster on one machine": the block runs in bash as
/// written, with `dflockd` first on PATH and its six ports moved to free
/// ones (`700N` and `710N` become `{a}N` and `{b}N`). It starts three
/// members (stopped by PID, by the block itself or, if it fails, here),
/// takes a lock through the leader, kills the leader with `kill -9`, takes
/// the lock through the next one, and prints what its comments promise.
#[test]
fn readme_cluster_example_runs_as_written() {
    let block = fenced_blocks()
        .into_iter()
        .find(|(info, text)| info == "sh" && text.contains("--raft-dir"))
        .map(|(_, text)| text)
        .expect("the README's cluster example");
    // Two prefixes whose ports 1-3 are free now, below the ephemeral range.
    let free = |p: u32| {
        (1..=3).all(|i| std::net::TcpListener::bind(("127.0.0.1", (p * 10 + i) as u16)).is_ok())
    };
    let mut prefixes = (2000 + std::process::id() % 1000..3200).filter(|&p| free(p));
    let a = prefixes.next().expect("free ports");
    let b = prefixes.next().expect("free ports");
    let script = block
        .replace("700", &a.to_string())
        .replace("710", &b.to_string());
    // Whatever the block leaves running if it fails midway is stopped by
    // PID: the members' PIDs are printed to a file as they start.
    let pids = std::env::temp_dir().join(format!("dflockd-readme-cluster-{}", std::process::id()));
    let traced = script.replace(
        "    pids[$i]=$!\n",
        &format!("    pids[$i]=$!; echo $! >>{}\n", pids.display()),
    );
    assert_ne!(traced, script, "the block records each member's PID");
    let out = run_bash(&format!("set -e\n{traced}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if let Ok(text) = std::fs::read_to_string(&pids) {
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on a PID the block started; after a clean
            // run it is gone and this is a harmless ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = std::fs::remove_file(&pids);
    assert!(
        out.status.success(),
        "README cluster block failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
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
