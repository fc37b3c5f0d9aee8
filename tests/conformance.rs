//! Conformance: every transcript of `spec/conformance/` (the timed cases
//! included) against in-process servers, and checks that the runner itself
//! notices a wrong server, says which request got the wrong reply, cuts
//! long replies, and stops early against a server that never answers.
//!
//! Scenarios without `!server-flags:` share one server; each scenario with
//! flags gets a fresh one, configured by [`server_config`]. A case listed
//! in `spec/conformance/expected-failures.txt` may fail; if it passes, the
//! entry is stale and this test fails so the list gets trimmed.

use std::any::Any;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use dflockd::conformance::{
    parse, parse_file, run_all, run_all_with, run_scenario, CaseReport, ExpectedFailures, Outcome,
    RunOptions, Target, Verdict, QUOTE_BYTES,
};
use dflockd::server::{spawn, ServerConfig};

/// Relative to the package root, which is where `cargo test` runs us, so
/// failure messages stay short.
const DIR: &str = "spec/conformance";

/// Maps the command-line flags transcripts use onto a [`ServerConfig`]
/// listening on `127.0.0.1:0`. Flag parsing proper lives in `src/config`;
/// this only has to cover the transcripts, and refuses anything else.
fn server_config(flags: &[String]) -> Result<ServerConfig, String> {
    let mut cfg = ServerConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        ..ServerConfig::default()
    };
    let mut args = flags.iter();
    while let Some(arg) = args.next() {
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) => (f, v.to_string()),
            None => {
                let v = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                (arg.as_str(), v.clone())
            }
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: `{v}` is not a non-negative integer"))
        };
        match flag {
            "--max-locks" => cfg.core.max_locks = num(&value)? as usize,
            "--max-waiters" => cfg.core.max_waiters = num(&value)? as usize,
            "--max-subscriptions" => cfg.core.max_subscriptions = num(&value)? as usize,
            "--max-connections" => cfg.max_connections = num(&value)? as usize,
            "--max-connections-per-ip" => cfg.max_connections_per_ip = num(&value)? as usize,
            "--default-lease-ttl" => cfg.core.default_lease_s = num(&value)?,
            "--read-timeout" => cfg.read_timeout_s = num(&value)?,
            "--write-timeout" => cfg.write_timeout_s = num(&value)?,
            "--auth-token" => cfg.core.auth_token = Some(value.into_bytes()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(cfg)
}

/// The [`dflockd::conformance::ServerFactory`] of this test.
fn start(flags: &[String]) -> Result<(SocketAddr, Box<dyn Any>), String> {
    let handle = spawn(server_config(flags)?).map_err(|e| e.to_string())?;
    Ok((handle.local_addr(), Box::new(handle)))
}

#[test]
fn transcripts() {
    let (addr, _server) = start(&[]).expect("start the shared server");
    let expected =
        ExpectedFailures::load(&Path::new(DIR).join("expected-failures.txt")).expect("load list");
    let target = Target {
        addr: Some(addr),
        factory: Some(&start),
        ..Target::default()
    };
    let report = run_all_with(
        Path::new(DIR),
        &target,
        &expected,
        &RunOptions::default(),
        &mut |case| println!("{case}"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let summary = report.summary();
    println!("{summary}");
    let problems: Vec<String> = report.problems().map(|c| c.to_string()).collect();
    assert!(summary.ok(), "{summary}:\n{}", problems.join("\n"));
    // Nothing is skipped when a factory is given.
    assert_eq!(summary.skipped, 0);
}

#[test]
fn server_config_refuses_unknown_flags() {
    let flags = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    let cfg = server_config(&flags("--max-locks 1 --auth-token=s3cret --read-timeout 2")).unwrap();
    assert_eq!(cfg.core.max_locks, 1);
    assert_eq!(cfg.core.auth_token.as_deref(), Some(&b"s3cret"[..]));
    assert_eq!(cfg.read_timeout_s, 2);
    assert!(server_config(&flags("--frobnicate 1"))
        .unwrap_err()
        .contains("unknown flag --frobnicate"));
    assert!(server_config(&flags("--max-locks"))
        .unwrap_err()
        .contains("needs a value"));
    assert!(server_config(&flags("--max-locks x"))
        .unwrap_err()
        .contains("not a non-negative integer"));
}

// ---------------------------------------------------------------------------
// The runner must catch wrong servers. These fakes are deliberately wrong.

/// Short reads: the fakes either answer at once or never.
fn quick() -> RunOptions {
    RunOptions {
        read_timeout: Duration::from_millis(500),
        ..RunOptions::default()
    }
}

/// A target for a fake server that cannot be restarted with flags.
fn fixed(addr: SocketAddr) -> Target<'static> {
    Target {
        addr: Some(addr),
        ..Target::default()
    }
}

type Handler = dyn Fn(&str, &str, &str) -> String + Send + Sync;

/// A line-protocol server on `127.0.0.1:0` that answers each three-line
/// request with `handler(command, key, argument)`. Its threads live until
/// the test process ends.
fn fake_server(handler: Arc<Handler>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let handler = handler.clone();
            std::thread::spawn(move || serve_fake(stream, &*handler));
        }
    });
    addr
}

fn serve_fake(stream: TcpStream, handler: &Handler) {
    let mut out = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream).split(b'\n');
    let mut next = || -> Option<String> {
        let line = lines.next()?.ok()?;
        let line = String::from_utf8_lossy(&line).into_owned();
        Some(line.trim_end_matches('\r').to_string())
    };
    while let (Some(cmd), Some(key), Some(arg)) = (next(), next(), next()) {
        let reply = handler(&cmd, &key, &arg);
        if out.write_all(format!("{reply}\n").as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn runner_detects_a_server_that_answers_ok_to_everything() {
    let addr = fake_server(Arc::new(|_: &str, _: &str, _: &str| "ok".to_string()));
    let target = fixed(addr);
    let report = run_all(Path::new(DIR), &target, &ExpectedFailures::none(), &quick())
        .unwrap_or_else(|e| panic!("{e}"));
    for case in &report.cases {
        println!("{case}");
    }
    let case = |name: &str| {
        report
            .case(name)
            .unwrap_or_else(|| panic!("{name} not reported"))
    };

    // Reported by name, with the transcript line and what came instead.
    let c = case("lock-acquire-release.txt");
    assert_eq!(c.verdict(), Verdict::Failed);
    assert_eq!(
        c.result.outcome,
        Outcome::Failed(
            "spec/conformance/lock-acquire-release.txt:6: expected \"ok <TOKEN:t> 33\", \
             got \"ok\" (at byte 2: expected \" \", found the end of the line) \
             (request: \"l\" \"lock-acquire-release\" \"5\")"
                .into()
        )
    );
    assert!(c
        .to_string()
        .starts_with("FAIL  lock-acquire-release.txt: "));
    for name in [
        "auth-not-configured.txt",
        "parse-bad-key.txt",
        "stats-shape.txt",
        "twophase-fast-path.txt",
        "lock-fifo.txt",
    ] {
        assert_eq!(case(name).verdict(), Verdict::Failed, "{name}");
    }
    // `ok` is the right answer to every ping.
    assert_eq!(case("ping.txt").verdict(), Verdict::Passed);
    // Pointed at an existing server, scenarios with flags are skipped.
    let skip = case("limits-max-locks.txt");
    assert!(
        matches!(&skip.result.outcome, Outcome::Skipped(why)
            if why.starts_with("needs server flags `--max-locks 1` (run with --spawn")),
        "{skip}"
    );
    let s = report.summary();
    assert!(s.skipped >= 5, "{s}");
    for c in report
        .cases
        .iter()
        .filter(|c| c.verdict() == Verdict::Skipped)
    {
        assert!(
            matches!(&c.result.outcome, Outcome::Skipped(why) if why.starts_with("needs server flags `--")),
            "{c}"
        );
    }
    assert!(s.failed > 30, "{s}");
    assert!(!s.ok());
    let transcripts = std::fs::read_dir(DIR)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".txt") && n != "expected-failures.txt")
        .count();
    assert_eq!(
        s.passed + s.failed + s.skipped,
        transcripts,
        "every transcript is reported"
    );
}

#[test]
fn runner_reports_stale_expected_failures() {
    let addr = fake_server(Arc::new(|_: &str, _: &str, _: &str| "ok".to_string()));
    let target = fixed(addr);
    let expected = ExpectedFailures::parse(
        "list",
        "ping.txt  thought broken\nlock-fifo.txt  known LIFO\nlimits-max-locks.txt  skipped anyway\n",
    )
    .unwrap();
    let report = run_all(Path::new(DIR), &target, &expected, &quick()).unwrap();
    assert_eq!(
        report.case("ping.txt").unwrap().verdict(),
        Verdict::UnexpectedPass
    );
    assert_eq!(
        report.case("lock-fifo.txt").unwrap().verdict(),
        Verdict::ExpectedFailure
    );
    assert_eq!(
        report.case("limits-max-locks.txt").unwrap().verdict(),
        Verdict::Skipped
    );
    assert!(report.problems().any(|c| c.name() == "ping.txt"));
    assert!(!report.problems().any(|c| c.name() == "lock-fifo.txt"));

    let unknown = ExpectedFailures::parse("list", "\nno-such.txt  reason\n").unwrap();
    assert_eq!(
        run_all(Path::new(DIR), &target, &unknown, &quick())
            .unwrap_err()
            .to_string(),
        "list:2: `no-such.txt` names no scenario"
    );
}

#[test]
fn runner_detects_a_server_that_does_not_close() {
    let addr = fake_server(Arc::new(|_: &str, _: &str, _: &str| "error".to_string()));
    let s = parse("close.txt", "close.txt", b"> x\n> _\n>\n< error\n< <EOF>\n").unwrap();
    assert_eq!(
        run_scenario(addr, &s, &quick()).outcome,
        Outcome::Failed("close.txt:5: expected \"<EOF>\", got nothing within 0.5s".into())
    );
}

#[test]
fn runner_detects_a_connection_closed_early() {
    // Answers the first request, then closes. It reads the whole request
    // first, so that the close is a clean end of stream, not a reset.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut out = stream.try_clone().unwrap();
            let mut lines = BufReader::new(stream).split(b'\n');
            if (0..3).all(|_| matches!(lines.next(), Some(Ok(_)))) {
                let _ = out.write_all(b"ok\n");
            }
        }
    });
    let s = parse("early.txt", "early.txt", b"> ping\n> _\n>\n< ok\n< ok\n").unwrap();
    assert_eq!(
        run_scenario(addr, &s, &quick()).outcome,
        Outcome::Failed("early.txt:5: expected \"ok\", got end of stream".into())
    );
}

/// A lock server that grants waiters last-in first-out: plausible enough to
/// pass the single-connection scenarios, wrong on fairness.
#[derive(Default)]
struct Lifo {
    locks: std::collections::BTreeMap<String, LifoLock>,
    fence: u64,
}

#[derive(Default)]
struct LifoLock {
    holder: Option<String>,
    /// Waiters, oldest first; each gets its token through its channel.
    waiters: Vec<(u64, mpsc::Sender<String>)>,
}

impl Lifo {
    fn token(&mut self) -> String {
        self.fence += 1;
        format!("{:016x}{:016x}", self.fence, 0xfeed_u64)
    }

    fn stats(&self) -> String {
        let (mut held, mut idle) = (Vec::new(), Vec::new());
        for (key, lock) in &self.locks {
            if lock.holder.is_some() || !lock.waiters.is_empty() {
                held.push(format!(
                    r#"{{"key":"{key}","owner_conn_id":1,"lease_expires_in_s":33,"waiters":{}}}"#,
                    lock.waiters.len()
                ));
            } else {
                idle.push(format!(r#"{{"key":"{key}","idle_s":0}}"#));
            }
        }
        format!(
            r#"ok {{"connections":1,"locks":[{}],"semaphores":[],"idle_locks":[{}],"idle_semaphores":[],"signal_channels":[]}}"#,
            held.join(","),
            idle.join(",")
        )
    }
}

fn lifo_handler(state: Arc<Mutex<Lifo>>) -> Arc<Handler> {
    Arc::new(move |cmd: &str, key: &str, arg: &str| {
        let mut st = state.lock().unwrap();
        match cmd {
            "ping" => "ok".into(),
            "stats" => st.stats(),
            "l" => {
                let fields: Vec<u64> = arg
                    .split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect();
                let (timeout_s, lease_s) = (fields[0], fields.get(1).copied().unwrap_or(33));
                if st.locks.get(key).is_none_or(|l| l.holder.is_none()) {
                    let tok = st.token();
                    st.locks.entry(key.into()).or_default().holder = Some(tok.clone());
                    return format!("ok {tok} {lease_s}");
                }
                if timeout_s == 0 {
                    return "timeout".into();
                }
                let (tx, rx) = mpsc::channel();
                let id = st.fence * 1000 + st.locks[key].waiters.len() as u64;
                st.locks.get_mut(key).unwrap().waiters.push((id, tx));
                drop(st);
                match rx.recv_timeout(Duration::from_secs(timeout_s)) {
                    Ok(tok) => format!("ok {tok} {lease_s}"),
                    Err(_) => {
                        let mut st = state.lock().unwrap();
                        st.locks.get_mut(key).unwrap().waiters.retain(|w| w.0 != id);
                        "timeout".into()
                    }
                }
            }
            "r" => {
                let held = st.locks.get(key).and_then(|l| l.holder.clone());
                if held.as_deref() != Some(arg.trim()) {
                    return "error".into();
                }
                let next = st.locks.get_mut(key).unwrap().waiters.pop();
                let tok = next.as_ref().map(|_| st.token());
                let lock = st.locks.get_mut(key).unwrap();
                lock.holder = tok.clone();
                if let (Some((_, tx)), Some(tok)) = (next, tok) {
                    let _ = tx.send(tok);
                }
                "ok".into()
            }
            _ => "error".into(),
        }
    })
}

#[test]
fn runner_detects_lifo_grants() {
    let addr = fake_server(lifo_handler(Arc::default()));
    let run = |name: &str| {
        let s = parse_file(&Path::new(DIR).join(name)).unwrap();
        run_scenario(addr, &s, &quick()).outcome
    };
    // The fake is right where order does not matter...
    assert_eq!(run("lock-acquire-release.txt"), Outcome::Passed);
    assert_eq!(run("lock-timeout-zero.txt"), Outcome::Passed);
    // ...and the FIFO scenario catches it: connection 2, first in the
    // queue, waits in vain while connection 3 is granted.
    assert_eq!(
        run("lock-fifo.txt"),
        Outcome::Failed(
            "spec/conformance/lock-fifo.txt:27: expected \"ok <TOKEN:t2> 33\", \
             got nothing within 0.5s (request: \"l\" \"lock-fifo\" \"10\")"
                .into()
        )
    );
}

#[test]
fn runner_reports_malformed_transcripts_as_failed_cases() {
    let dir = std::env::temp_dir().join(format!("dflockd-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.txt"), "> ping\n> _\n>\n< ok\nok\n").unwrap();
    std::fs::write(dir.join("good.txt"), "> ping\n> _\n>\n< ok\n").unwrap();
    std::fs::write(dir.join("notes.md"), "not a transcript").unwrap();
    let addr = fake_server(Arc::new(|_: &str, _: &str, _: &str| "ok".to_string()));
    let target = fixed(addr);
    let report = run_all(&dir, &target, &ExpectedFailures::none(), &quick()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(report.cases.len(), 2);
    assert_eq!(
        report.case("bad.txt").unwrap().result.outcome,
        Outcome::Failed(format!(
            "malformed transcript: {}:5: not a transcript line \
             (expected empty, `#`, `!server-flags:`, `@N`, `>`, `<` or `~`)",
            dir.join("bad.txt").display()
        ))
    );
    assert_eq!(report.case("good.txt").unwrap().verdict(), Verdict::Passed);
}

/// A server that accepts connections and never sends a byte: the run stops
/// after three silent cases instead of waiting out every read timeout, and
/// says why.
#[test]
fn runner_stops_early_against_a_silent_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // Keep every connection open and unread.
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let opts = RunOptions {
        read_timeout: Duration::from_millis(300),
        ..RunOptions::default()
    };
    let started = std::time::Instant::now();
    let report = run_all(
        Path::new(DIR),
        &fixed(addr),
        &ExpectedFailures::none(),
        &opts,
    )
    .unwrap();
    let took = started.elapsed();
    let ran: Vec<&CaseReport> = report
        .cases
        .iter()
        .filter(|c| c.verdict() != Verdict::Skipped)
        .collect();
    assert_eq!(ran.len(), 3, "{:?}", report.cases);
    assert!(ran.iter().all(|c| c.result.silent), "{:?}", ran);
    assert!(
        report
            .stopped
            .as_deref()
            .is_some_and(|s| s.starts_with("stopped after 3 cases in a row")),
        "{:?}",
        report.stopped
    );
    let s = report.summary();
    assert!(s.not_run > 40, "{s}");
    assert!(!s.ok());
    assert!(s.to_string().ends_with(&format!(", {} not run", s.not_run)));
    // Three read timeouts and a few skips, not fifty.
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// A refused connection is silent too; a server that answers, even
/// wrongly, is not.
#[test]
fn silence_is_no_connection_or_no_byte() {
    let s = parse("p.txt", "p.txt", b"> ping\n> _\n>\n< ok\n").unwrap();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let refused = run_scenario(closed, &s, &quick());
    assert!(refused.silent, "{refused:?}");
    let wrong = fake_server(Arc::new(|_: &str, _: &str, _: &str| "error".to_string()));
    let answered = run_scenario(wrong, &s, &quick());
    assert!(!answered.silent, "{answered:?}");
    assert_eq!(
        answered.outcome,
        Outcome::Failed(
            "p.txt:4: expected \"ok\", got \"error\" (request: \"ping\" \"_\" \"\")".into()
        )
    );
}

/// An 80 KB reply is quoted cut at 200 bytes, with its length.
#[test]
fn long_replies_are_cut() {
    let addr = fake_server(Arc::new(|_: &str, _: &str, _: &str| "x".repeat(81_920)));
    let s = parse("p.txt", "p.txt", b"> ping\n> _\n>\n< ok\n").unwrap();
    let Outcome::Failed(why) = run_scenario(addr, &s, &quick()).outcome else {
        panic!("a garbage reply passed");
    };
    assert!(why.len() < 700, "{} bytes: {why}", why.len());
    assert!(
        why.contains(&format!(
            "got \"{}...\" (81920 bytes)",
            "x".repeat(QUOTE_BYTES)
        )),
        "{why}"
    );
}
