//! The conformance runner end to end (the `dflockd-conformance` binary,
//! and `dflockd conformance`): against an in-process server it passes and
//! exits 0; with `--spawn` it starts this server itself per configuration
//! and runs every case, none skipped; against a deliberately wrong server
//! (a relay in front of a real one that answers `ok 33` to every renewal
//! the server refused, so renew-after-expiry and renew-after-release
//! succeed) it names the failing cases and exits 1; against a silent
//! server it stops after three cases; a garbage reply is cut. `--case`,
//! `--list`, `--dump`, `--assume-flags`; a skip without a reason, or a
//! name that names no case, is a usage error said once, with a hint. Over
//! TLS (a server with an rcgen certificate) it passes with `--tls-ca` and
//! `--auth-token`, and with `--tls` alone (unverified); an untrusted
//! certificate or a wrong name is a usage error.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::mpsc;

use dflockd::server::{spawn, ServerConfig, ServerHandle};

/// Skips that exercise `--skip-file` (the scenarios would pass).
const SIGNAL_SKIPS: &str = "\
# skipped on purpose, to exercise --skip-file
signal-basic.txt      # skipped on purpose
signal-errors.txt     # skipped on purpose
";

fn server() -> ServerHandle {
    spawn(ServerConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        ..ServerConfig::default()
    })
    .expect("server starts")
}

/// Writes `text` to a file unique to this test and returns its path.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("write temp file");
    path
}

fn cli(args: &[&str]) -> Output {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/spec/conformance");
    Command::new(env!("CARGO_BIN_EXE_dflockd-conformance"))
        .args(["--dir", dir])
        .args(args)
        .output()
        .expect("run dflockd-conformance")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `line` reads `N passed, F failed, N skipped` with `F` = `failed`.
fn is_summary(line: &str, failed: usize) -> bool {
    let words: Vec<&str> = line.split(' ').collect();
    matches!(
        words.as_slice(),
        [p, "passed,", f, "failed,", s, "skipped"]
            if p.parse::<usize>().is_ok()
                && f.parse::<usize>() == Ok(failed)
                && s.parse::<usize>().is_ok()
    )
}

#[test]
fn passes_against_this_server() {
    let server = server();
    let skips = temp_file("skips-ok.txt", SIGNAL_SKIPS);
    let addr = server.local_addr().to_string();
    let out = cli(&["--addr", &addr, "--skip-file", skips.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(is_summary(last, 0), "summary: {last:?}\n{text}");
    assert!(text.contains("pass  lock-fifo.txt"), "{text}");
    assert!(text.contains("pass  timed-lease-expiry.txt"), "{text}");
    assert!(
        text.contains("skip  signal-basic.txt: skipped on purpose"),
        "{text}"
    );
}

#[test]
fn names_the_cases_a_wrong_server_fails() {
    let server = server();
    let fake = renew_always_ok(server.local_addr());
    let skips = temp_file("skips-fake.txt", SIGNAL_SKIPS);
    let addr = fake.to_string();
    let out = cli(&["--addr", &addr, "--skip-file", skips.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "FAIL  timed-lease-expiry.txt: {}/spec/conformance/timed-lease-expiry.txt:",
            env!("CARGO_MANIFEST_DIR")
        )),
        "{text}"
    );
    assert!(text.contains("FAIL  lock-renew.txt: "), "{text}");
    assert!(text.contains("pass  lock-fifo.txt"), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(!is_summary(last, 0) && last.ends_with(" skipped"), "{last}");
}

#[test]
fn a_skip_needs_a_reason() {
    let skips = temp_file("skips-bad.txt", "lock-fifo.txt\n");
    // No server is contacted: the skip file is checked first.
    let out = cli(&[
        "--addr",
        "127.0.0.1:9",
        "--skip-file",
        skips.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skip of `lock-fifo.txt` has no reason"),
        "{err}"
    );
}

/// `dflockd conformance` is the same runner, and without `--dir` it runs
/// the transcripts built into the binary: the same cases as the directory,
/// from a working directory that has no `spec/`.
#[test]
fn the_subcommand_runs_the_built_in_transcripts() {
    let server = server();
    let skips = temp_file("skips-sub.txt", SIGNAL_SKIPS);
    let addr = server.local_addr().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_dflockd"))
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .args(["conformance", "--addr", &addr, "--skip-file"])
        .arg(&skips)
        .output()
        .expect("run dflockd conformance");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(is_summary(last, 0), "summary: {last:?}\n{text}");
    let reported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(_, rest)| rest))
        .map(|rest| rest.split(':').next().unwrap_or(rest))
        .filter(|name| name.ends_with(".txt"))
        .collect();
    let mut on_disk: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/spec/conformance"))
            .expect("read spec/conformance")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".txt") && n != "expected-failures.txt")
            .collect();
    on_disk.sort();
    assert_eq!(reported, on_disk, "{text}");

    let help = Command::new(env!("CARGO_BIN_EXE_dflockd"))
        .args(["conformance", "--help"])
        .output()
        .expect("run dflockd conformance --help");
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("Usage: dflockd conformance [--addr <addr>]"));
    let bad = Command::new(env!("CARGO_BIN_EXE_dflockd"))
        .args(["conformance", "--no-such-flag"])
        .output()
        .expect("run dflockd conformance --no-such-flag");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--no-such-flag"));
}

/// A relay on `127.0.0.1:0` in front of `server` that turns every `error`
/// answering an `n` into `ok 33`: a server that revives expired and
/// released leases.
fn renew_always_ok(server: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(server) else {
                continue;
            };
            let (tx, rx) = mpsc::channel::<Vec<u8>>();
            let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            // Requests: note each command word, then forward the lines.
            std::thread::spawn(move || {
                let (mut reader, mut up) = (BufReader::new(client), upstream);
                let mut n = 0usize;
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|k| k > 0) {
                    if n.is_multiple_of(3) {
                        let _ = tx.send(line.clone());
                    }
                    n += 1;
                    if up.write_all(&line).is_err() {
                        break;
                    }
                    line.clear();
                }
                let _ = up.shutdown(Shutdown::Write);
            });
            // Replies: in request order, so each pairs with the next word.
            std::thread::spawn(move || {
                let (mut reader, mut down) = (BufReader::new(u2), c2);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|k| k > 0) {
                    let cmd = rx.try_recv().unwrap_or_default();
                    let out: &[u8] = if cmd == b"n\n" && line == b"error\n" {
                        b"ok 33\n"
                    } else {
                        &line
                    };
                    if down.write_all(out).is_err() {
                        break;
                    }
                    line.clear();
                }
                let _ = down.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// A TLS server with a fresh self-signed certificate for `localhost` and
/// 127.0.0.1 (rcgen), requiring `token` when set, and the certificate's
/// PEM file to trust.
fn tls_server(name: &str, token: Option<&str>) -> (ServerHandle, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("generate certificate");
    let cert = temp_file(&format!("{name}-cert.pem"), &ck.cert.pem());
    let key = temp_file(&format!("{name}-key.pem"), &ck.signing_key.serialize_pem());
    let tls = dflockd::server::tls::load(&cert, &key).expect("certificate loads");
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        tls: Some(tls),
        ..ServerConfig::default()
    };
    config.core.auth_token = token.map(|t| t.as_bytes().to_vec());
    (spawn(config).expect("server starts"), cert)
}

#[test]
fn passes_over_tls_with_a_ca_and_auth() {
    let (server, ca) = tls_server("tls-ca", Some("s3cret"));
    let skips = temp_file("skips-tls.txt", SIGNAL_SKIPS);
    let addr = server.local_addr().to_string();
    let out = cli(&[
        "--addr",
        &addr,
        "--tls-ca",
        ca.to_str().unwrap(),
        "--auth-token",
        "s3cret",
        "--skip-file",
        skips.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(is_summary(last, 0), "summary: {last:?}\n{text}");
    assert!(text.contains("pass  lock-fifo.txt"), "{text}");
    assert!(text.contains("pass  timed-lease-expiry.txt"), "{text}");
}

#[test]
fn tls_refusals_are_usage_errors() {
    let (server, ca) = tls_server("tls-refuse", None);
    let addr = server.local_addr().to_string();
    // A CA that did not sign the server certificate.
    let (_other, other_ca) = tls_server("tls-other", None);
    let out = cli(&["--addr", &addr, "--tls-ca", other_ca.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("over TLS") && err.contains("TLS failed"),
        "{err}"
    );
    // A name the certificate does not carry.
    let out = cli(&[
        "--addr",
        &addr,
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-server-name",
        "db.example.com",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // --tls-server-name alone means nothing.
    let out = cli(&["--addr", &addr, "--tls-server-name", "localhost"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --tls"), "{err}");
}

#[test]
fn unverified_tls_reaches_the_server() {
    let (server, _ca) = tls_server("tls-unverified", None);
    let addr = server.local_addr().to_string();
    // One transcript is enough to show the relay works without a CA.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-tls-one-case", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/spec/conformance/lock-fifo.txt"
    );
    std::fs::copy(src, dir.join("lock-fifo.txt")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dflockd-conformance"))
        .args(["--dir", dir.to_str().unwrap(), "--addr", &addr, "--tls"])
        .output()
        .expect("run dflockd-conformance");
    let text = stdout(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
    assert!(text.contains("pass  lock-fifo.txt"), "{text}");
    assert!(err.contains("not verified"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The transcripts of spec/conformance, sorted.
fn transcripts_on_disk() -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/spec/conformance"))
            .expect("read spec/conformance")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".txt") && n != "expected-failures.txt")
            .collect();
    names.sort();
    names
}

fn dflockd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dflockd"))
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .args(args)
        .output()
        .expect("run dflockd")
}

/// `--spawn` starts this server once with default settings and once per
/// case that needs flags: every case runs, none is skipped.
#[test]
fn spawn_runs_every_case() {
    let spawn = format!(
        "{} --port {{port}} {{flags}}",
        env!("CARGO_BIN_EXE_dflockd")
    );
    let out = dflockd(&["conformance", "--spawn", &spawn]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = transcripts_on_disk().len();
    assert!(n >= 57, "{n} transcripts");
    assert_eq!(
        text.lines().last(),
        Some(format!("{n} passed, 0 failed, 0 skipped").as_str()),
        "{text}"
    );
    for flagged in [
        "pass  limits-max-connections.txt",
        "pass  auth-wrong-token.txt",
        "pass  timed-read-timeout-owner.txt",
    ] {
        assert!(text.contains(flagged), "{text}");
    }
}

#[test]
fn spawn_reports_a_server_that_does_not_start() {
    let out = dflockd(&[
        "conformance",
        "--spawn",
        "/bin/sh -c exit {port} {flags}",
        "--case",
        "ping.txt",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exited") && err.contains("before listening"),
        "{err}"
    );
}

/// `--list` names every case and the flags it needs; `--case` runs only
/// the named ones; `--dump` writes them out, and `--dir` on the dump runs
/// exactly those (nothing built in is added).
#[test]
fn list_case_and_dump() {
    let out = dflockd(&["conformance", "--list"]);
    assert_eq!(out.status.code(), Some(0));
    let list = stdout(&out);
    let names: Vec<&str> = list
        .lines()
        .map(|l| l.split("  ").next().unwrap_or(l))
        .collect();
    assert_eq!(names, transcripts_on_disk(), "{list}");
    assert!(
        list.contains("limits-max-locks.txt  (needs --max-locks 1)\n"),
        "{list}"
    );
    assert!(
        list.contains(
            "timed-auth-read-timeout.txt  (needs --auth-token s3cret --read-timeout 1)\n"
        ),
        "{list}"
    );

    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-dump", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dflockd(&[
        "conformance",
        "--dump",
        dir.to_str().unwrap(),
        "--case",
        "ping.txt",
        "--case",
        "lock-fifo.txt",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut dumped: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dumped.sort();
    assert_eq!(
        dumped,
        ["expected-failures.txt", "lock-fifo.txt", "ping.txt"]
    );
    let spec = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/spec/conformance/lock-fifo.txt"
    );
    assert_eq!(
        std::fs::read(dir.join("lock-fifo.txt")).unwrap(),
        std::fs::read(spec).unwrap()
    );

    let server = server();
    let addr = server.local_addr().to_string();
    let out = dflockd(&[
        "conformance",
        "--addr",
        &addr,
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        text,
        "pass  lock-fifo.txt\npass  ping.txt\n2 passed, 0 failed, 0 skipped\n"
    );
    let out = dflockd(&["conformance", "--addr", &addr, "--case", "ping.txt"]);
    assert_eq!(
        stdout(&out),
        "pass  ping.txt\n1 passed, 0 failed, 0 skipped\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A name that names no case is a usage error, said once, with a hint.
#[test]
fn unknown_names_are_said_once_with_a_hint() {
    let out = dflockd(&["conformance", "--addr", "127.0.0.1:9", "--case", "ping"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--case `ping` names no case; did you mean `ping.txt`?"),
        "{err}"
    );
    assert_eq!(err.matches("names no case").count(), 1, "{err}");

    let skips = temp_file("skips-hint.txt", "# x\nping  # not this one\n");
    let out = dflockd(&[
        "conformance",
        "--addr",
        "127.0.0.1:9",
        "--skip-file",
        skips.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":2: `ping` names no case; did you mean `ping.txt`?"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(stdout(&out).is_empty());
}

/// A server that accepts and never answers: the run stops after three
/// cases that heard nothing, in seconds, and says why.
#[test]
fn stops_early_against_a_silent_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let out = dflockd(&["conformance", "--addr", &addr, "--read-timeout", "1"]);
    let took = started.elapsed();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(text.matches("FAIL  ").count(), 3, "{text}");
    assert!(
        text.contains("stopped after 3 cases in a row heard nothing"),
        "{text}"
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("0 passed, 3 failed, ") && last.ends_with(" not run"),
        "{last}"
    );
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
}

/// 80 KB of garbage for a reply: the report quotes 200 bytes and the
/// length, names the request and the built-in copy it came from.
#[test]
fn garbage_replies_are_cut_in_the_report() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut lines = BufReader::new(stream).split(b'\n');
                while (0..3).all(|_| matches!(lines.next(), Some(Ok(_)))) {
                    let mut garbage = vec![b'#'; 81_920];
                    garbage.push(b'\n');
                    if out.write_all(&garbage).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let out = dflockd(&["conformance", "--addr", &addr, "--case", "ping.txt"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1));
    let fail = text
        .lines()
        .find(|l| l.starts_with("FAIL  "))
        .expect("a FAIL line");
    assert!(fail.len() < 700, "{} bytes: {fail}", fail.len());
    assert!(
        fail.starts_with("FAIL  ping.txt: builtin:ping.txt:6: expected \"ok\", got \"####"),
        "{fail}"
    );
    assert!(
        fail.ends_with("...\" (81920 bytes) (request: \"ping\" \"_\" \"\")"),
        "{fail}"
    );
    assert!(text.contains("`--dump DIR` writes them out"), "{text}");
}

/// `--assume-flags`: the cases that need exactly the server's flags run on
/// it, the ones that need default settings are skipped, saying so.
#[test]
fn assume_flags_runs_the_matching_cases() {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        ..ServerConfig::default()
    };
    config.core.max_locks = 1;
    let server = spawn(config).expect("server starts");
    let addr = server.local_addr().to_string();
    let out = dflockd(&[
        "conformance",
        "--addr",
        &addr,
        "--assume-flags",
        "--max-locks 1",
        "--case",
        "limits-max-locks.txt",
        "--case",
        "lock-fifo.txt",
        "--case",
        "auth-success.txt",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("pass  limits-max-locks.txt\n"), "{text}");
    assert!(
        text.contains("skip  lock-fifo.txt: needs a server with default settings (this run assumes `--max-locks 1`)"),
        "{text}"
    );
    assert!(
        text.contains("skip  auth-success.txt: needs server flags `--auth-token s3cret`"),
        "{text}"
    );
}
