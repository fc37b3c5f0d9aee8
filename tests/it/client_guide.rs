//! `spec/client-guide.md` cannot rot: the guide quotes
//! `examples/minimal_client.rs` verbatim and in full (every `ANCHOR:`
//! region once, and nothing of the example left unquoted), and the
//! example, compiled into this test, does what the guide says against a
//! real server: locks and fences, a blocked acquire on its own connection,
//! refusals, the server's goodbye at the read deadline, signals pushed
//! between a request and its reply, auth, and sharding.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{wait_until, Server, DEADLINE};

// The example's `main` is its entry point, unused here.
#[allow(dead_code)]
#[path = "../../examples/minimal_client.rs"]
mod minimal_client;

use minimal_client::{shard, Connection, Error, FencedStore, Lock, Signal};

const GUIDE: &str = include_str!("../../spec/client-guide.md");
const EXAMPLE: &str = include_str!("../../examples/minimal_client.rs");
const EXAMPLE_PATH: &str = "examples/minimal_client.rs";

/// The example's `ANCHOR: name` regions, by name, without the markers.
fn anchors(source: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut open: Option<(String, String)> = None;
    for line in source.lines() {
        let marker = line.trim_start().strip_prefix("// ANCHOR");
        match (marker, &mut open) {
            (Some(m), None) => {
                let name = m.strip_prefix(": ").expect("`// ANCHOR: name`");
                open = Some((name.to_string(), String::new()));
            }
            (Some(m), Some((name, text))) => {
                assert_eq!(m, format!("_END: {name}"), "anchors do not nest");
                out.insert(name.clone(), std::mem::take(text));
                open = None;
            }
            (None, Some((_, text))) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an ANCHOR is never closed");
    out
}

/// The guide's quotes: `<!-- quote: PATH#name -->` followed by a fenced
/// block, as (name, block text).
fn quotes(guide: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(target) = line
            .trim()
            .strip_prefix("<!-- quote: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        let (path, name) = target.split_once('#').expect("quote: PATH#name");
        assert_eq!(path, EXAMPLE_PATH, "the guide quotes only the example");
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence, "```rust",
            "a quote marker is followed by a rust block"
        );
        let mut text = String::new();
        for l in lines.by_ref().take_while(|l| *l != "```") {
            text.push_str(l);
            text.push('\n');
        }
        out.push((name.to_string(), text));
    }
    out
}

#[test]
fn the_guide_quotes_the_whole_example_verbatim() {
    let regions = anchors(EXAMPLE);
    let quoted = quotes(GUIDE);
    assert!(regions.len() >= 8, "anchors: {:?}", regions.keys());
    let mut seen = BTreeMap::new();
    for (name, text) in &quoted {
        let region = regions
            .get(name)
            .unwrap_or_else(|| panic!("the guide quotes #{name}, which the example lacks"));
        assert_eq!(
            text, region,
            "the guide's #{name} differs from {EXAMPLE_PATH}"
        );
        *seen.entry(name.clone()).or_insert(0) += 1;
    }
    for name in regions.keys() {
        assert_eq!(seen.get(name), Some(&1), "#{name} is quoted once");
    }
    // Nothing of the example is outside the quoted regions but its
    // opening comment.
    let mut inside = false;
    for line in EXAMPLE.lines() {
        let t = line.trim();
        if t.starts_with("// ANCHOR: ") {
            inside = true;
        } else if t.starts_with("// ANCHOR_END: ") {
            inside = false;
        } else {
            assert!(
                inside || t.is_empty() || t.starts_with("//!"),
                "{EXAMPLE_PATH} has a line the guide does not show: {line:?}"
            );
        }
    }
}

#[test]
fn anchor_and_quote_readers() {
    let src = "//! x\n// ANCHOR: a\nfn a() {}\n    // ANCHOR_END: a\n";
    assert_eq!(anchors(src)["a"], "fn a() {}\n");
    let guide = "t\n<!-- quote: examples/minimal_client.rs#a -->\n```rust\nfn a() {}\n```\n";
    assert_eq!(
        quotes(guide),
        vec![("a".to_string(), "fn a() {}\n".to_string())]
    );
}

#[test]
fn the_demo_runs() {
    let server = Server::plain();
    minimal_client::demo(&server.addr().to_string()).expect("the demo runs");
    // It leaves nothing held.
    // (`wait_stats` asks over a connection of its own.)
    let stats = server.wait_stats(|s| s["connections"] == 1);
    assert_eq!(stats["locks"], serde_json::json!([]));
}

#[test]
fn locks_fences_and_refusals() {
    let server = Server::plain();
    let addr = server.addr().to_string();
    let mut store = FencedStore::default();

    let mut first = Lock::acquire(&addr, None, "guide-lock", 5, 7)
        .expect("acquire")
        .expect("free, so granted");
    assert_eq!(first.renew_every(), Duration::from_millis(3500));
    first.renew().expect("renew");
    store.write(first.fence(), "one").expect("first write");
    let old_fence = first.fence();

    // Held: a zero timeout answers `timeout`, and the caller gets None.
    assert!(Lock::acquire(&addr, None, "guide-lock", 0, 7)
        .expect("acquire")
        .is_none());
    first.release().expect("release");

    let second = Lock::acquire(&addr, None, "guide-lock", 5, 7)
        .expect("acquire")
        .expect("granted");
    assert!(second.fence() > old_fence, "fences grow with every grant");
    store.write(second.fence(), "two").expect("newer fence");
    // The first holder, paused past its lease, comes back: refused.
    assert!(store.write(old_fence, "stale").is_err());
    assert_eq!(store.value, "two");
    second.release().expect("release");

    // A refusal names its status word and leaves the connection usable.
    let mut conn = Connection::connect(&addr, None).expect("connect");
    let stale = "0".repeat(32);
    assert!(matches!(
        conn.request("r", "guide-lock", &stale),
        Err(Error::Refused(s)) if s == "error"
    ));
    assert_eq!(conn.request("ping", "_", "").expect("ping"), "ok");
    // A field with a line break is refused before anything is sent.
    assert!(matches!(
        conn.request("l", "a\nb", "0"),
        Err(Error::Protocol(_))
    ));
    assert_eq!(conn.request("ping", "_", "").expect("ping"), "ok");
}

#[test]
fn a_blocked_acquire_waits_on_its_own_connection() {
    let server = Server::plain();
    let addr = server.addr().to_string();
    let holder = Lock::acquire(&addr, None, "guide-queue", 0, 30)
        .expect("acquire")
        .expect("granted");
    let fence = holder.fence();
    let waiter = {
        let addr = addr.clone();
        std::thread::spawn(move || Lock::acquire(&addr, None, "guide-queue", 20, 30))
    };
    server.wait_lock_waiters("guide-queue", 1);
    holder.release().expect("release");
    let next = waiter
        .join()
        .expect("thread")
        .expect("acquire")
        .expect("granted after the release");
    assert!(next.fence() > fence);
    next.release().expect("release");
}

#[test]
fn the_goodbye_is_closed_not_a_refusal() {
    let server = Server::start(|c| c.read_timeout_s = 2);
    let mut conn = Connection::connect(&server.addr().to_string(), None).expect("connect");
    // The connection owns nothing and says nothing: after the read timeout
    // the server sends `error` and closes it. Wait until the server has
    // registered it, then until it has closed it.
    let count = || server.handle().engine().connection_count();
    wait_until(DEADLINE, || count() == 1);
    wait_until(DEADLINE, || count() == 0);
    // The request meets the goodbye where its reply should be.
    let got = conn.request("ping", "_", "");
    assert!(matches!(got, Err(Error::Closed)), "{got:?}");
}

#[test]
fn pushes_between_a_request_and_its_reply() {
    let server = Server::plain();
    let addr = server.addr().to_string();
    let mut me = Connection::connect(&addr, None).expect("connect");
    me.listen("guide.*", "").expect("listen");
    // A subscribed publisher gets its own push before its `ok 1`: the
    // reader sets it aside and still finds the reply.
    assert_eq!(me.publish("guide.x", "to myself").expect("publish"), 1);
    assert_eq!(
        me.next_signal().expect("the push set aside"),
        Signal {
            channel: "guide.x".into(),
            payload: "to myself".into()
        }
    );
    // Listening alone and in a group: two pushes, counted twice.
    me.listen("guide.y", "team").expect("listen in a group");
    me.listen("guide.y", "").expect("listen alone");
    let mut other = Connection::connect(&addr, None).expect("connect");
    assert_eq!(other.publish("guide.y", "a  b").expect("publish"), 2);
    for _ in 0..2 {
        let s = me.next_signal().expect("signal");
        assert_eq!(
            (s.channel.as_str(), s.payload.as_str()),
            ("guide.y", "a  b")
        );
    }
    assert!(matches!(
        other.publish("guide.*", "wildcards are for listeners"),
        Err(Error::Refused(s)) if s == "error"
    ));
}

#[test]
fn auth_comes_first() {
    let server = Server::start(|c| {
        c.core.auth_token = Some(b"s3cret".to_vec());
        c.core.auth_failure_pause_ms = 0;
    });
    let addr = server.addr().to_string();
    let mut ok = Connection::connect(&addr, Some("s3cret")).expect("authenticated");
    assert_eq!(ok.request("ping", "_", "").expect("ping"), "ok");
    assert!(matches!(
        Connection::connect(&addr, Some("wrong")),
        Err(Error::Refused(s)) if s == "error_auth"
    ));
    let lock = Lock::acquire(&addr, Some("s3cret"), "guide-auth", 0, 10)
        .expect("acquire")
        .expect("granted");
    lock.release().expect("release");
}

#[test]
fn shards_like_the_client_library() {
    for key in [
        "",
        "orders",
        "report",
        "a/b",
        "ünïcode",
        "x".repeat(300).as_str(),
    ] {
        for n in [1, 2, 3, 7] {
            assert_eq!(
                shard(key, n),
                dflockd::client::shard(key.as_bytes(), n),
                "{key:?} {n}"
            );
        }
    }
}
