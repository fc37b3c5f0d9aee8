//! What an operator sees, from the real binary ([`crate::daemon`]): the
//! "present but empty" configuration rules and their exit codes, the log
//! lines (start-up, listeners, warnings rate-limited per peer, debug
//! open/close, drain and stop; never a token or payload), the fence state
//! file failing after start-up (retries with backoff, waiting grants,
//! `/ready`, metrics, recovery) and refusing to start near `u64::MAX`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{free_port, run_to_exit, Daemon};
use crate::http_client::{call, get};
use crate::support::{grant, wire, Client, DEADLINE, IO_TIMEOUT};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("dflockd-it-ops-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ----- configuration ---------------------------------------------------------

/// A security setting present but empty or blank, by flag or variable,
/// stops the binary with exit 1 and a message naming it. (Before this rule,
/// `DFLOCKD_AUTH_TOKEN=""` started the server with no authentication.)
#[test]
fn empty_security_settings_refuse_to_start() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (&[], &[("DFLOCKD_AUTH_TOKEN", "")], "DFLOCKD_AUTH_TOKEN"),
        (&[], &[("DFLOCKD_AUTH_TOKEN", " \t")], "DFLOCKD_AUTH_TOKEN"),
        (
            &[],
            &[("DFLOCKD_AUTH_TOKEN_FILE", "")],
            "DFLOCKD_AUTH_TOKEN_FILE",
        ),
        (&[], &[("DFLOCKD_TLS_CERT", "")], "DFLOCKD_TLS_CERT"),
        (&[], &[("DFLOCKD_TLS_KEY", " ")], "DFLOCKD_TLS_KEY"),
        (
            &[],
            &[("DFLOCKD_FENCE_STATE_FILE", "")],
            "DFLOCKD_FENCE_STATE_FILE",
        ),
        (&["--auth-token="], &[], "--auth-token"),
        (&["--auth-token-file", " "], &[], "--auth-token-file"),
        (&["--tls-cert="], &[], "--tls-cert"),
        (&["--tls-key="], &[], "--tls-key"),
        (&["--fence-state-file="], &[], "--fence-state-file"),
    ];
    for (args, env, named) in cases {
        let mut all = vec!["--port", "0"];
        all.extend_from_slice(args);
        let (code, stderr) = run_to_exit(&all, env);
        assert_eq!(code, Some(1), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("configuration error: {named}: is set but empty")),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

/// Every other variable that is empty or blank counts as unset; every
/// other flag given empty is an error for numbers, booleans and choices.
#[test]
fn other_empty_variables_are_unset_and_empty_flags_are_values() {
    let d = Daemon::start(
        &["--log-level", "debug"],
        &[
            ("DFLOCKD_MAX_LOCKS", ""),
            ("DFLOCKD_READ_TIMEOUT_S", "  "),
            ("DFLOCKD_LOG_LEVEL", ""),
            ("DFLOCKD_DEBUG", " "),
            ("DFLOCKD_HOST", ""),
        ],
    );
    let start = d.with_msg(&format!("starting dflockd {}", env!("CARGO_PKG_VERSION")));
    let start = start.first().expect("start-up line");
    assert_eq!(start["max-locks"], "1024", "{start}");
    assert_eq!(start["read-timeout"], "23", "{start}");
    drop(d);
    for (flag, word) in [
        ("--port=", "invalid integer"),
        ("--debug=", "invalid boolean"),
        ("--log-level=", "is not one of"),
    ] {
        let (code, stderr) = run_to_exit(&[flag], &[]);
        assert_eq!(code, Some(1), "{flag}: {stderr}");
        let name = flag.trim_end_matches('=');
        assert!(
            stderr.starts_with(&format!("configuration error: {name}: ")),
            "{stderr}"
        );
        assert!(stderr.contains(word), "{stderr}");
    }
    // --help renders from the table and exits 0.
    let out = crate::daemon::command()
        .arg("--help")
        .output()
        .expect("run --help");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--tls-handshake-timeout <secs>"), "{help}");
    assert!(help.contains("DFLOCKD_LOG_FORMAT"), "{help}");
}

// ----- log lines ---------------------------------------------------------------

/// Start-up (effective configuration with the token masked), listeners,
/// a malformed request and a failed auth (peer and reason), drain and
/// stop; the token never appears.
#[test]
fn start_up_warnings_drain_and_stop_are_logged_without_secrets() {
    const TOKEN: &str = "s3cret-do-not-log";
    let mut d = Daemon::start(&["--auth-token", TOKEN], &[]);
    let start = d.with_msg(&format!("starting dflockd {}", env!("CARGO_PKG_VERSION")));
    let start = start.first().expect("start-up line");
    assert_eq!(start["level"], "info");
    assert_eq!(start["auth-token"], "<set>");
    assert_eq!(start["port"], "0");
    assert_eq!(d.with_msg("listening")[0]["transport"], "tcp");

    // A failed auth: `error_auth`, a warning naming the peer.
    let mut c = Client::connect(d.tcp);
    let local = c.writer().local_addr().expect("local addr").to_string();
    assert_eq!(c.req("auth", "_", "wrong-token"), "error_auth");
    let auth = d.wait_for(|v| v["msg"] == "authentication failed");
    assert_eq!(auth["level"], "warn");
    assert_eq!(auth["peer"], local.as_str());

    // A malformed request after a good auth: code and reason.
    let mut c = Client::connect(d.tcp);
    assert_eq!(c.req("auth", "_", TOKEN), "ok");
    assert_eq!(c.req("bogus", "k", ""), "error");
    let bad = d.wait_for(|v| v["msg"] == "malformed request");
    assert_eq!(bad["code"], 3, "{bad}");
    assert_eq!(bad["reason"], "unknown command");
    assert_eq!(
        bad["peer"],
        c.writer().local_addr().expect("addr").to_string().as_str()
    );

    // Clients leave, so the drain ends at once.
    drop(c);
    assert_eq!(d.terminate(DEADLINE), Some(0));
    let msgs: Vec<String> = d.logs().iter().map(|v| v["msg"].to_string()).collect();
    assert!(msgs.iter().any(|m| m.starts_with("\"draining")), "{msgs:?}");
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("\"stopped\""),
        "{msgs:?}"
    );
    let all = d.raw_lines().join("\n");
    assert!(!all.contains(TOKEN), "the token reached the log:\n{all}");
}

/// Text format: one line per event, `key=value` fields.
#[test]
fn the_text_format() {
    let out = crate::daemon::command()
        .args(["--port", "0", "--host", "192.0.2.1"])
        .output()
        .expect("run");
    // 192.0.2.1 (TEST-NET-1) is not an address of this machine, so the
    // bind fails, after the warning about listening beyond loopback
    // without a token. Nothing is sent anywhere.
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].contains(" INFO  dflockd: starting dflockd "),
        "{err}"
    );
    assert!(lines[0].contains(" host=192.0.2.1 port=0 "), "{err}");
    let warn = lines
        .iter()
        .find(|l| l.contains(" WARN "))
        .unwrap_or_else(|| panic!("no warning:\n{err}"));
    assert!(
        warn.contains("listening beyond loopback without an auth token"),
        "{err}"
    );
    assert!(warn.contains("addr=192.0.2.1:0"), "{err}");
    assert!(
        err.contains("cannot start: cannot listen on 192.0.2.1:0"),
        "{err}"
    );
}

/// A request cut at its read deadline is a warning (code 10); an idle
/// connection closed for owning nothing is only a debug line.
#[test]
fn read_deadline_cuts_are_logged() {
    let mut d = Daemon::start(&["--read-timeout", "1", "--debug"], &[]);
    let mut partial = Client::connect(d.tcp);
    partial.send_raw(b"l\nhalf-a-request");
    let idle = Client::connect(d.tcp);
    let idle_addr = idle.writer().local_addr().expect("addr").to_string();
    let cut = d.wait_for(|v| v["msg"] == "request not completed within --read-timeout");
    assert_eq!(cut["level"], "warn");
    assert_eq!(cut["code"], 10);
    assert_eq!(partial.recv_line(), "error");
    let closed = d.wait_for(|v| {
        v["msg"] == "closing an idle connection that owns nothing"
            && v["peer"] == idle_addr.as_str()
    });
    assert_eq!(closed["level"], "debug");
    // The half request's bytes are not in the log.
    assert!(!d.raw_lines().join("\n").contains("half-a-request"));
}

/// Debug lines: a connection's open and close, with how long it lasted
/// and what it owned when it closed.
#[test]
fn debug_lines_show_connections_and_what_they_owned() {
    let mut d = Daemon::start(&["--debug"], &[]);
    let mut c = Client::connect(d.tcp);
    let local = c.writer().local_addr().expect("addr").to_string();
    grant(&c.req("l", "debug-k", "0"));
    assert_eq!(c.req("listen", "debug.*", ""), "ok");
    drop(c);
    let opened = d.wait_for(|v| v["msg"] == "connection opened" && v["peer"] == local.as_str());
    assert_eq!(opened["level"], "debug");
    let closed = d.wait_for(|v| v["msg"] == "connection closed" && v["peer"] == local.as_str());
    assert_eq!(closed["held"], 1, "{closed}");
    assert_eq!(closed["subscriptions"], 1, "{closed}");
    assert_eq!(closed["end"], "closed by the peer", "{closed}");
    assert!(closed["duration_ms"].is_u64(), "{closed}");
    assert_eq!(closed["conn"], opened["conn"]);
}

/// Connection caps and slow-subscriber evictions are warnings with the
/// peer; a signal payload never reaches the log.
#[test]
fn caps_and_evictions_are_logged() {
    let mut d = Daemon::start(&["--max-connections", "2"], &[]);
    let mut slow = crate::signals::small_buffer_client(d.tcp);
    assert_eq!(slow.req("listen", "firehose", ""), "ok");
    let mut publisher = Client::connect(d.tcp);
    // A third connection is closed at accept.
    let mut third = TcpStream::connect(d.tcp).expect("connect");
    third.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    assert_eq!(third.read(&mut [0u8; 1]).unwrap_or(0), 0);
    let cap = d.wait_for(|v| v["msg"] == "connection closed at accept: connection cap reached");
    assert_eq!(cap["cap"], "--max-connections");
    // Fill the slow subscriber's queue until it is evicted.
    let payload = format!("payload-marker-{}", "x".repeat(60_000));
    let mut evicted = false;
    for _ in 0..2_000 {
        if publisher.req("signal", "firehose", &payload) == "ok 0" {
            evicted = true;
            break;
        }
    }
    assert!(evicted, "never evicted");
    let ev = d.wait_for(|v| {
        v["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("closed a slow subscriber"))
    });
    assert_eq!(ev["level"], "warn");
    let all = d.raw_lines().join("\n");
    assert!(!all.contains("payload-marker"), "a payload reached the log");
}

/// The closing figure of the logging work: 100,000 malformed requests from
/// one client produce a handful of log lines, not 100,000. (Counted, not
/// timed; the count is printed.)
#[test]
fn a_flood_of_malformed_requests_is_a_handful_of_lines() {
    let d = Daemon::start(&[], &[]);
    let before = d.raw_lines().len();
    let mut c = Client::connect(d.tcp);
    let started = Instant::now();
    let batch = wire("bogus", "k", "").repeat(1000);
    for _ in 0..100 {
        c.send_raw(batch.as_bytes());
        for _ in 0..1000 {
            assert_eq!(c.recv_line(), "error");
        }
    }
    let elapsed = started.elapsed();
    // Every reply arrived, so every request was seen (and offered to the
    // log) by now; a last ping makes sure.
    assert_eq!(c.req("ping", "_", ""), "ok");
    let lines = d.raw_lines().len() - before;
    eprintln!("100000 malformed requests in {elapsed:?}: {lines} log lines");
    assert!(
        lines < 100,
        "{lines} log lines:\n{}",
        d.raw_lines().join("\n")
    );
    assert!(lines >= 1, "the first malformed request was not logged");
}

/// HTTP: a missing bearer token and a refused head are warnings.
#[test]
fn http_auth_failures_and_refusals_are_logged() {
    let port = free_port();
    let mut d = Daemon::start(&["--http-port", &port, "--auth-token", "t0k"], &[]);
    let http = d.http.expect("HTTP address");
    assert_eq!(get(http, "/v1/stats").status, 401);
    d.wait_for(|v| v["msg"] == "authentication failed: no valid bearer token");
    let mut s = TcpStream::connect(http).expect("connect");
    s.write_all(b"GET /v1/stats\x01 HTTP/1.1\r\n\r\n")
        .expect("write");
    let refused = d.wait_for(|v| v["msg"] == "HTTP request refused by the parser");
    assert_eq!(refused["status"], 400);
    assert!(!d.raw_lines().join("\n").contains("t0k"));
}

// ----- the fence state file ---------------------------------------------------

/// The state file at `path` holding `ceiling`, in the format the server
/// writes (fence_file.rs).
fn write_state(path: &str, ceiling: u64) {
    let body = format!("dflockd-fence v1 {ceiling}");
    let crc = dflockd::server::fence_file::crc32(body.as_bytes());
    std::fs::write(path, format!("{body} {crc:08x}\n")).expect("write state file");
}

/// A state file at or near `u64::MAX` stops startup with a message saying
/// so (before, the server started and refused every grant with `error`).
#[test]
fn a_state_file_near_the_top_refuses_to_start() {
    let dir = Scratch::new("near-max");
    let file = dir.path("fence");
    for ceiling in [u64::MAX, u64::MAX - 1000] {
        write_state(&file, ceiling);
        let (code, stderr) = run_to_exit(&["--port", "0", "--fence-state-file", &file], &[]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("cannot start: fence state file"),
            "{stderr}"
        );
        assert!(stderr.contains("refusing to start"), "{stderr}");
        assert!(stderr.contains(&file), "{stderr}");
    }
}

/// What the fence tests do to the state file's storage after start-up.
trait Breakage {
    fn break_it(&self);
    fn mend(&self);
}

/// The temporary file's name taken by a directory: every write fails
/// (`Is a directory`), for root too.
struct TmpIsADirectory(String);

impl Breakage for TmpIsADirectory {
    fn break_it(&self) {
        std::fs::create_dir(&self.0).expect("mkdir fence.tmp");
    }
    fn mend(&self) {
        std::fs::remove_dir(&self.0).expect("rmdir fence.tmp");
    }
}

/// The whole (tiny) filesystem full: writes fail with `No space left on
/// device`, as on a full disk.
struct FullDisk(PathBuf);

impl Breakage for FullDisk {
    fn break_it(&self) {
        let mut f = std::fs::File::create(&self.0).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    fn mend(&self) {
        std::fs::remove_file(&self.0).expect("remove filler");
    }
}

/// The state file's directory remounted read-only: writes fail with
/// `Read-only file system`, for root too.
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn remount(&self, how: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", how])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount -o {how} {}", self.0.display());
    }
}

impl Breakage for ReadOnlyMount {
    fn break_it(&self) {
        self.remount("remount,ro");
    }
    fn mend(&self) {
        self.remount("remount,rw");
    }
}

/// A tmpfs of 1 MiB mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (with a message) where mounting is not possible: not root,
    /// no `CAP_SYS_ADMIN`, no `mount`.
    fn mount(dir: &Path) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "dflockd-it-tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Drives a server whose state file starts failing after start-up:
/// grants use up the reserve, `l k 0` then answers `timeout` (never
/// `error`), HTTP answers `503 fence_unavailable`, `/ready` is 503 with a
/// reason, a blocked acquire waits and is served once writes work again;
/// failures are counted, retried with backoff and logged a few times, not
/// once per request.
fn fence_failure_and_recovery(dir: &Path, breakage: &dyn Breakage) {
    let file = dir.join("fence").display().to_string();
    let port = free_port();
    let mut d = Daemon::start(
        &[
            "--fence-state-file",
            &file,
            "--fence-reserve",
            "64",
            "--http-port",
            &port,
        ],
        &[],
    );
    let http = d.http.expect("HTTP address");
    breakage.break_it();
    let mut c = Client::connect(d.tcp);
    let mut grants = 0;
    let timed_out = loop {
        let reply = c.req("l", &format!("k{grants}"), "0");
        if reply == "timeout" {
            break true;
        }
        grant(&reply);
        grants += 1;
        assert!(grants <= 64, "more grants than the reserve");
        if grants == 64 {
            break false;
        }
    };
    if !timed_out {
        assert_eq!(c.req("l", "one-more", "0"), "timeout");
    }
    // Between 32 and 64 grants were issued: the first write was attempted
    // at half the reserve, and no fence is left now.
    assert!(grants >= 32, "only {grants} grants");
    // Many more requests: none of them answers `error`.
    for i in 0..200 {
        assert_eq!(c.req("l", &format!("more{i}"), "0"), "timeout");
    }
    // HTTP says why.
    let sid = call(http, "POST", "/v1/sessions", &[], b"").json()["session_id"]
        .as_str()
        .expect("session")
        .to_owned();
    let r = call(
        http,
        "POST",
        "/v1/locks/http-k",
        &[("X-Dflockd-Session", &sid)],
        br#"{"acquire_timeout_s": 0}"#,
    );
    r.err(503, "fence_unavailable");
    let ready = get(http, "/ready");
    assert_eq!(ready.status, 503, "{ready:?}");
    assert_eq!(ready.json()["status"], "fence_unavailable");
    let metrics = get(http, "/metrics").body;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(metric("dflockd_fence_headroom"), 0.0);
    assert!(metric("dflockd_fence_persist_failures_total") >= 1.0);
    // Hundreds of requests, a few log lines.
    let failures = d
        .logs()
        .iter()
        .filter(|v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("cannot persist the fence ceiling"))
        })
        .count();
    assert!((1..=3).contains(&failures), "{failures} failure lines");

    // A blocked acquire waits for the ceiling, and gets it once the file
    // can be written again (retries are at most 5 s apart).
    let mut waiter = Client::connect(d.tcp);
    waiter.send_raw(wire("l", "after-recovery", "30").as_bytes());
    assert_eq!(waiter.try_recv_line(Duration::from_millis(300)), None);
    breakage.mend();
    let reply = waiter.recv_line();
    grant(&reply);
    d.wait_for(|v| v["msg"] == "fence state file written again; grants resume");
    assert_eq!(get(http, "/ready").status, 200);
    grant(&c.req("l", "fresh", "0"));
    let line: Value = d
        .with_msg("cannot persist the fence ceiling; grants wait when no fence is left")[0]
        .clone();
    assert!(
        line["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{line}"
    );
}

#[test]
fn fence_file_failing_after_start_up_tmp_is_a_directory() {
    let dir = Scratch::new("fence-dir");
    let tmp = dir.path("fence.tmp");
    fence_failure_and_recovery(&dir.0, &TmpIsADirectory(tmp));
}

/// The same on a full disk: a 1 MiB tmpfs filled after start-up. Skipped
/// (with a message) where a tmpfs cannot be mounted.
#[test]
fn fence_file_failing_after_start_up_full_disk() {
    let dir = Scratch::new("fence-full");
    let Some(mount) = Tmpfs::mount(&dir.0) else {
        return;
    };
    let filler = mount.0.join("filler");
    fence_failure_and_recovery(&mount.0, &FullDisk(filler));
    drop(mount);
}

/// The same when the directory becomes read-only after start-up (a tmpfs
/// remounted `ro`). Skipped (with a message) where a tmpfs cannot be
/// mounted.
#[test]
fn fence_file_failing_after_start_up_read_only_directory() {
    let dir = Scratch::new("fence-ro");
    let Some(mount) = Tmpfs::mount(&dir.0) else {
        return;
    };
    fence_failure_and_recovery(&mount.0, &ReadOnlyMount(mount.0.clone()));
    drop(mount);
}

/// Cluster mode's settings are checked in full by the real binary, and a
/// valid member is then refused with the message the README quotes (the
/// server does not run on the replication layer yet): a process someone
/// took for a cluster member never serves as a lone node.
#[test]
fn cluster_mode_is_checked_and_a_bad_raft_dir_stops_the_start() {
    let peers = "1=127.0.0.1:7001@127.0.0.1:6401,2=127.0.0.1:7002@127.0.0.1:6402";
    // A file where the Raft directory should be: the member cannot open
    // its storage and exits, naming cluster mode, never the token.
    let not_a_dir =
        std::env::temp_dir().join(format!("dflockd-it-raft-file-{}", std::process::id()));
    std::fs::write(&not_a_dir, b"x").expect("scratch file");
    let not_a_dir = not_a_dir.to_str().expect("utf-8").to_owned();
    let member = [
        "--port",
        "0",
        "--raft-dir",
        &not_a_dir,
        "--node-id",
        "1",
        "--raft-addr",
        "127.0.0.1:7001",
        "--cluster-peers",
        peers,
    ];
    let token = [(
        "DFLOCKD_RAFT_AUTH_TOKEN",
        "0123456789abcdef0123456789abcdef",
    )];
    let (code, stderr) = run_to_exit(&member, &token);
    assert_eq!(code, Some(1), "{stderr}");
    let _ = std::fs::remove_file(&not_a_dir);
    assert!(stderr.contains("cluster mode"), "{stderr}");
    assert!(
        !stderr.contains("0123456789abcdef"),
        "the token leaked: {stderr}"
    );
    // Errors name the setting at fault.
    let (code, stderr) = run_to_exit(&member, &[("DFLOCKD_RAFT_AUTH_TOKEN", "too-short")]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.trim(),
        "configuration error: DFLOCKD_RAFT_AUTH_TOKEN: token is shorter than 32 bytes"
    );
    let mut with_fence = member.to_vec();
    with_fence.extend(["--fence-state-file", "/tmp/f"]);
    let (code, stderr) = run_to_exit(&with_fence, &token);
    assert_eq!(code, Some(1));
    assert!(
        stderr
            .starts_with("configuration error: --fence-state-file: cannot be used with --raft-dir"),
        "{stderr}"
    );
}

/// Raft state the member cannot use stops the start with exit 1 and a
/// message naming the file (spec/cluster.md §2.6): the database of the
/// earlier layout (`raft.redb`), and a directory that makes the storage
/// engine panic while reading it, which is answered as damage instead of
/// the abort a panic otherwise means.
#[test]
fn unusable_raft_state_exits_1_naming_the_file() {
    use dflockd::cluster::storage::{LogStore, DB_DIR, LEGACY_DB_FILE};
    let peers = "1=127.0.0.1:21471@127.0.0.1:21461";
    let token = [(
        "DFLOCKD_RAFT_AUTH_TOKEN",
        "0123456789abcdef0123456789abcdef",
    )];
    let member = |dir: &str| {
        [
            "--port",
            "0",
            "--raft-dir",
            dir,
            "--node-id",
            "1",
            "--raft-addr",
            "127.0.0.1:21471",
            "--cluster-peers",
            peers,
        ]
        .map(str::to_owned)
    };
    let old = Scratch::new("raft-legacy");
    std::fs::write(old.0.join(LEGACY_DB_FILE), b"redb").expect("scratch file");
    let args = member(&old.path(""));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = run_to_exit(&args, &token);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&old.path(LEGACY_DB_FILE)), "{stderr}");
    assert!(stderr.contains("earlier layout"), "{stderr}");

    let damaged = Scratch::new("raft-engine-panic");
    drop(LogStore::open(&damaged.0).expect("a new store"));
    std::fs::create_dir(damaged.0.join(DB_DIR).join("99.jnl")).expect("scratch dir");
    let args = member(&damaged.path(""));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = run_to_exit(&args, &token);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("damaged Raft state"), "{stderr}");
    assert!(stderr.contains(&damaged.path(DB_DIR)), "{stderr}");
    assert!(!stderr.contains("invariant"), "{stderr}");
}
