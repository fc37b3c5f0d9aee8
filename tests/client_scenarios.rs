//! The scripted server of `spec/conformance/client/` against clients:
//! this project's client library passes every scenario (each driven the
//! way the script's `!client:` header says, through the control port as a
//! client author in another language would), and a deliberately broken
//! client, one that takes one `read` for one reply, fails the split-reply
//! scenario. The `dflockd conformance serve` command is checked end to end
//! once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use dflockd::client::blocking::{Client, Subscriber};
use dflockd::client::Error;
use dflockd::conformance::serve::{builtin_scripts, ScriptedServer, ServeOptions};

/// The control connection of a scripted server.
struct Control {
    out: TcpStream,
    lines: std::io::Lines<BufReader<TcpStream>>,
}

impl Control {
    fn connect(addr: SocketAddr) -> Control {
        let out = TcpStream::connect(addr).expect("connect to the control port");
        out.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set a read timeout");
        let lines = BufReader::new(out.try_clone().expect("clone")).lines();
        Control { out, lines }
    }

    fn ask(&mut self, request: &str) -> String {
        writeln!(self.out, "{request}").expect("send a control request");
        self.lines
            .next()
            .expect("an answer")
            .expect("an answer in time")
    }
}

fn server() -> ScriptedServer {
    ScriptedServer::start(&ServeOptions::default(), builtin_scripts()).expect("listen")
}

const T1: &str = "0000000000000001c0ffee00c0ffee00";

/// What this project's client does in each scenario, as `!client:` says,
/// with the outcome `!correct:` promises asserted.
fn drive(name: &str, main: &str, peer: &str) {
    let five = Duration::from_secs(5);
    match name {
        "split-reply" => {
            let mut lock = Client::new([main]).lock("split-reply");
            assert_eq!(lock.acquire(five).unwrap().to_string(), T1);
            assert_eq!(lock.fence(), Some(1));
            lock.release().unwrap();
        }
        "subscriber-pushes" => {
            let sub = Subscriber::connect(main, None, None).unwrap();
            sub.listen("subscriber-pushes.*", None).unwrap();
            for (channel, payload) in [
                ("subscriber-pushes.a", "first"),
                ("subscriber-pushes.b", "second, with spaces"),
            ] {
                let s = sub.next_timeout(five).expect("a signal").unwrap();
                assert_eq!(
                    (&s.channel[..], &s.payload[..]),
                    (channel.as_bytes(), payload.as_bytes())
                );
            }
            sub.unlisten("subscriber-pushes.*", None).unwrap();
            let s = sub.next_timeout(five).expect("a signal").unwrap();
            assert_eq!(s.payload, b"third");
            sub.close().unwrap();
        }
        "draining" => {
            let mut lock = Client::new([main]).lock("draining");
            assert!(matches!(lock.acquire(five), Err(Error::Draining)));
        }
        "close-mid-reply" => {
            let mut lock = Client::new([main]).lock("close-mid-reply");
            let got = lock.acquire(five);
            assert!(matches!(got, Err(Error::Io(_))), "{got:?}");
            assert_eq!(lock.token(), None);
        }
        "lease-expiry" => {
            let mut lock = Client::new([main]).lock("lease-expiry");
            assert_eq!(lock.acquire(five).unwrap().to_string(), T1);
            assert!(lock.wait_lost(five), "the lock was not reported lost");
            assert!(lock.is_lost());
            lock.close();
        }
        "not-leader-redirect" => {
            let mut lock = Client::new([main]).lock("not-leader-redirect");
            assert_eq!(lock.acquire(five).unwrap().fence, 2);
            lock.release().unwrap();
        }
        "not-leader-unknown" => {
            let client = Client::new([main, peer]);
            assert_eq!(client.server_for("not-leader-unknown"), main);
            let mut lock = client.lock("not-leader-unknown");
            assert_eq!(lock.acquire(five).unwrap().fence, 3);
            lock.release().unwrap();
        }
        "slow-reply" => {
            let mut lock = Client::new([main]).lock("slow-reply");
            assert_eq!(lock.acquire(five).unwrap().fence, 4);
            lock.release().unwrap();
        }
        "auth-failure" => {
            let mut lock = Client::new([main])
                .with_auth_token("s3cret")
                .lock("auth-failure");
            let got = lock.acquire(five);
            assert!(matches!(got, Err(Error::Auth)), "{got:?}");
        }
        other => panic!("no driver for scenario `{other}`: add one here"),
    }
}

#[test]
fn this_client_passes_every_scenario() {
    let server = server();
    let (main, peer) = (
        server.main_addr().to_string(),
        server.peer_addr().to_string(),
    );
    let mut control = Control::connect(server.control_addr());
    let listed = control.ask("list");
    let names: Vec<&str> = listed
        .strip_prefix("ok ")
        .expect("ok NAME ...")
        .split(' ')
        .collect();
    let scripts: Vec<String> = server.scripts().iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, scripts);
    assert!(names.len() >= 9, "{names:?}");
    let mut failed = Vec::new();
    for name in names {
        assert_eq!(control.ask(&format!("start {name}")), "ok");
        drive(name, &main, &peer);
        let verdict = control.ask("verdict");
        println!("{name}: {verdict}");
        if verdict != "pass" {
            failed.push(format!("{name}: {verdict}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// A client that reads a reply with one `read` call: against a server
/// that writes one reply in one segment it works; against split-reply it
/// sees `o`, gives up, and the scenario fails.
#[test]
fn a_client_that_reads_one_segment_per_reply_fails_split_reply() {
    let server = server();
    let naive_acquire = |key: &str| -> Result<String, String> {
        let mut s = TcpStream::connect(server.main_addr()).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(s, "l\n{key}\n5\n").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        let reply = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
        let token = reply
            .strip_prefix("ok ")
            .and_then(|r| r.split(' ').next())
            .filter(|t| t.len() == 32)
            .ok_or(format!("bad reply {reply:?}"))?
            .to_string();
        write!(s, "r\n{key}\n{token}\n").map_err(|e| e.to_string())?;
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if &buf[..n] != b"ok\n" {
            return Err("release refused".into());
        }
        Ok(token)
    };
    server.start_scenario("split-reply").unwrap();
    let got = naive_acquire("split-reply");
    assert_eq!(got, Err("bad reply \"o\"".to_string()));
    let verdict = server.verdict().unwrap();
    let why = verdict.expect_err("the broken client passed split-reply");
    assert!(why.starts_with("builtin:client/split-reply.txt:"), "{why}");
    // The same client gets by when the reply comes in one piece, which is
    // how it went unnoticed: slow-reply writes it at once.
    server.start_scenario("slow-reply").unwrap();
    assert_eq!(
        naive_acquire("slow-reply").unwrap(),
        "0000000000000004c0ffee00c0ffee00"
    );
}

/// Wrong behaviour is named precisely: a client that skips `auth`.
#[test]
fn verdicts_say_what_the_client_did_instead() {
    let server = server();
    server.start_scenario("auth-failure").unwrap();
    let mut lock = Client::new([server.main_addr().to_string()]).lock("auth-failure");
    // Without a token the client sends `l` first; the script waits for
    // `auth` and never answers, so give up quickly.
    let _ = lock.acquire(Duration::ZERO);
    lock.close();
    let why = server.verdict().unwrap().unwrap_err();
    assert!(
        why.starts_with("builtin:client/auth-failure.txt:")
            && why.contains("expected the client to send \"auth\", got \"l\""),
        "{why}"
    );
    let mut control = Control::connect(server.control_addr());
    assert!(control
        .ask("start no-such")
        .starts_with("error no scenario `no-such`"));
    assert_eq!(
        control.ask("start split-reply.txt"),
        "ok",
        "a .txt suffix is accepted"
    );
    assert!(control.ask("bogus").starts_with("error unknown request"));
    assert!(control
        .ask("addrs")
        .starts_with(&format!("ok main={} peer=", server.main_addr())));
}

/// `dflockd conformance serve --scenario NAME` prints its addresses, then a
/// verdict line per run, and plays the scenario again.
#[test]
fn the_serve_command_prints_verdicts() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dflockd"))
        .args(["conformance", "serve", "--scenario", "draining"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run dflockd conformance serve");
    // The child's lines, read on a thread so that each wait has a deadline
    // (a verdict that never comes fails the test instead of hanging it).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut next_line = |what: &str| -> String {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("conformance serve printed no {what} within 30 s ({e})");
            }
        }
    };
    let first = next_line("first line");
    let words: Vec<&str> = first.split(' ').collect();
    let ["main", main, "peer", _, "control", _] = words.as_slice() else {
        panic!("first line: {first:?}");
    };
    for _ in 0..2 {
        let mut lock = Client::new([*main]).lock("draining");
        assert!(matches!(
            lock.acquire(Duration::from_secs(5)),
            Err(Error::Draining)
        ));
        assert_eq!(next_line("verdict"), "pass  draining");
    }
    let _ = child.kill();
    let _ = child.wait();

    let list = Command::new(env!("CARGO_BIN_EXE_dflockd"))
        .args(["conformance", "serve", "--list"])
        .output()
        .expect("run dflockd conformance serve --list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("split-reply\n  client (given main): Acquire the lock `split-reply`"),
        "{text}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_dflockd"))
        .args(["conformance", "serve", "--scenario", "split"])
        .output()
        .expect("run dflockd conformance serve --scenario split");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("did you mean `split-reply`?"));
}
