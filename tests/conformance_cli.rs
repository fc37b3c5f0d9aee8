//! The conformance runner end to end (the `dflockd-conformance` binary,
//! and `dflockd conformance` once): against an in-process
//! server it passes and exits 0; against a deliberately wrong server (a
//! relay in front of a real one that answers `ok 33` to every renewal the
//! server refused, so renew-after-expiry and renew-after-release succeed)
//! it names the failing cases and exits 1; a skip without a reason is a
//! usage error. Over TLS (a server with an rcgen certificate) it passes
//! with `--tls-ca` and `--auth-token`, and with `--tls` alone (unverified);
//! an untrusted certificate or a wrong name is a usage error.

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
    assert!(text.contains("pass  timed-lease-expiry"), "{text}");
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
        text.contains("FAIL  timed-lease-expiry: builtin:timed-lease-expiry:"),
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
    assert!(stdout(&help).contains("Usage: dflockd conformance --addr"));
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
    assert!(text.contains("pass  timed-lease-expiry"), "{text}");
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
