//! The HTTP REST front: every route and error code, sessions and their
//! expiry, cross-transport FIFO, what a vanished HTTP client leaves behind,
//! and HTTPS (an SSE stream included). Requests go through a real HTTP
//! client (`http_client`, ureq); hand-written bytes only where a real
//! client would not send them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::http_client::{self, get, raw, read_raw, send_raw, start, Resp};
use crate::support::{grant, IO_TIMEOUT as IO};

fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    http_client::call(addr, method, path, headers, body.as_bytes())
}

fn new_session(addr: SocketAddr) -> String {
    let r = call(addr, "POST", "/v1/sessions", &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.json()["session_id"].as_str().expect("id").to_owned();
    assert!(dflockd::http::is_session_id(&id));
    id
}

/// A POST on a session.
fn post(addr: SocketAddr, sid: &str, path: &str, body: Value) -> Resp {
    call(
        addr,
        "POST",
        path,
        &[("X-Dflockd-Session", sid)],
        &body.to_string(),
    )
}

fn stats(addr: SocketAddr) -> Value {
    get(addr, "/v1/stats").json()
}

#[test]
fn health_ready_openapi_stats_metrics() {
    let (_server, addr) = start(|_| {});
    let r = get(addr, "/health");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(r.body.ends_with("}\n"));
    let r = get(addr, "/ready");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = get(addr, "/v1/openapi.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["openapi"], "3.1.0");
    let s = stats(addr);
    assert_eq!(s["connections"], 0);
    assert!(s["locks"].as_array().is_some());
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    for g in [
        "dflockd_ready 1",
        "dflockd_connections 0",
        "dflockd_http_sessions 0",
        "# TYPE dflockd_locks_held gauge",
        "dflockd_lock_waiters 0",
        "dflockd_semaphore_holders 0",
        "dflockd_semaphore_waiters 0",
        "dflockd_uptime_seconds",
        "dflockd_signal_listeners 0",
    ] {
        assert!(r.body.contains(g), "{g} missing in {}", r.body);
    }
    // Request counters by route template; the 404 above is `unmatched`.
    get(addr, "/nope");
    let r = get(addr, "/metrics");
    for line in [
        "dflockd_http_requests_total{method=\"GET\",path=\"/health\",status=\"200\"} 1",
        "dflockd_http_requests_total{method=\"GET\",path=\"unmatched\",status=\"404\"} 1",
        "dflockd_http_request_duration_seconds_count{method=\"GET\",path=\"/v1/stats\",status=\"200\"} 1",
    ] {
        assert!(r.body.contains(line), "{line} missing in {}", r.body);
    }
}

/// The HTTP listener closes with the server.
#[test]
fn listener_stops_with_the_server() {
    let (server, addr) = start(|_| {});
    assert_eq!(get(addr, "/health").status, 200);
    server.shutdown();
    server.join_within(Duration::from_secs(10));
    assert!(TcpStream::connect_timeout(&addr, IO).is_err());
}

#[test]
fn routing_errors() {
    let (_server, addr) = start(|_| {});
    get(addr, "/nope").err(404, "not_found");
    get(addr, "/v1/locks").err(404, "not_found");
    let r = get(addr, "/v1/locks/k");
    r.err(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = call(addr, "POST", "/health", &[], "");
    r.err(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn session_lifecycle() {
    let (_server, addr) = start(|_| {});
    let r = call(addr, "POST", "/v1/sessions", &[], "");
    assert_eq!(r.json()["idle_timeout_s"], 20);
    let sid = r.json()["session_id"].as_str().expect("id").to_owned();
    assert_eq!(stats(addr)["connections"], 1);
    let ping = format!("/v1/sessions/{sid}/ping");
    assert_eq!(call(addr, "POST", &ping, &[], "").status, 204);
    let tok = post(addr, &sid, "/v1/locks/a", json!({"acquire_timeout_s": 0}));
    assert_eq!(tok.json()["status"], "ok");
    assert_eq!(stats(addr)["locks"].as_array().map(Vec::len), Some(1));
    // DELETE = disconnect cleanup: the lock is released.
    let del = format!("/v1/sessions/{sid}");
    assert_eq!(call(addr, "DELETE", &del, &[], "").status, 204);
    let s = stats(addr);
    assert_eq!(s["connections"], 0);
    assert_eq!(s["locks"], json!([]));
    call(addr, "DELETE", &del, &[], "").err(410, "session_gone");
    call(addr, "POST", &ping, &[], "").err(410, "session_gone");
    post(addr, &sid, "/v1/locks/a", json!({})).err(410, "session_gone");
    call(addr, "DELETE", "/v1/sessions/XYZ", &[], "").err(400, "bad_request");
    call(addr, "POST", "/v1/sessions/0123/ping", &[], "").err(400, "bad_request");
}

#[test]
fn max_sessions() {
    let (_server, addr) = start(|cfg| {
        if let Some(h) = cfg.http.as_mut() {
            h.max_sessions = 2;
        }
    });
    let a = new_session(addr);
    new_session(addr);
    call(addr, "POST", "/v1/sessions", &[], "").err(503, "max_sessions");
    assert_eq!(
        call(addr, "DELETE", &format!("/v1/sessions/{a}"), &[], "").status,
        204
    );
    new_session(addr);
}

#[test]
fn lock_routes() {
    let (_server, addr) = start(|_| {});
    let sid = new_session(addr);
    let other = new_session(addr);
    let r = post(
        addr,
        &sid,
        "/v1/locks/k",
        json!({"acquire_timeout_s": 0, "lease_ttl_s": 40}),
    );
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["lease_ttl_s"], 40);
    let tok = body["token"].as_str().expect("token").to_owned();
    assert_eq!(tok.len(), 32);
    // Contended, try once: timeout is a 200.
    let r = post(addr, &other, "/v1/locks/k", json!({"acquire_timeout_s": 0}));
    assert_eq!((r.status, r.json()), (200, json!({"status": "timeout"})));
    // Renew.
    let r = post(
        addr,
        &sid,
        "/v1/locks/k/renew",
        json!({"token": tok, "lease_ttl_s": 50}),
    );
    assert_eq!((r.status, r.json()), (200, json!({"remaining_s": 50})));
    let r = post(
        addr,
        &sid,
        "/v1/locks/k/renew",
        json!({"token": "0".repeat(32)}),
    );
    r.err(404, "not_held");
    assert_eq!(r.json()["detail"], "renew");
    // Release.
    let r = post(addr, &sid, "/v1/locks/k/release", json!({"token": tok}));
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    post(addr, &sid, "/v1/locks/k/release", json!({"token": tok})).err(404, "not_held");
    // A key literally named `release`, and an encoded slash.
    let r = post(
        addr,
        &sid,
        "/v1/locks/release",
        json!({"acquire_timeout_s": 0}),
    );
    assert_eq!(r.json()["status"], "ok");
    let r = post(
        addr,
        &sid,
        "/v1/locks/a%2Fb",
        json!({"acquire_timeout_s": 0}),
    );
    assert_eq!(r.json()["status"], "ok");
    let keys: Vec<Value> = stats(addr)["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .map(|l| l["key"].clone())
        .collect();
    assert_eq!(keys, [json!("a/b"), json!("release")]);
}

#[test]
fn two_phase_routes() {
    let (_server, addr) = start(|_| {});
    let a = new_session(addr);
    let b = new_session(addr);
    // Lock enqueue with an empty body: defaults.
    let r = call(
        addr,
        "POST",
        "/v1/locks/t/enqueue",
        &[("X-Dflockd-Session", &a)],
        "",
    );
    assert_eq!(r.json()["status"], "acquired");
    let tok = r.json()["token"].as_str().expect("token").to_owned();
    post(addr, &a, "/v1/locks/t/enqueue", json!({})).err(409, "already_enqueued");
    let r = post(addr, &b, "/v1/locks/t/enqueue", json!({"lease_ttl_s": 9}));
    assert_eq!(r.json(), json!({"status": "queued"}));
    post(addr, &b, "/v1/locks/other/wait", json!({"timeout_s": 0})).err(409, "not_enqueued");
    // A's wait returns its fast-path grant.
    let r = post(addr, &a, "/v1/locks/t/wait", json!({"timeout_s": 0}));
    assert_eq!(r.json()["token"], tok.as_str());
    // B waits (blocking) while A releases.
    let waiter = std::thread::spawn({
        let b = b.clone();
        move || post(addr, &b, "/v1/locks/t/wait", json!({"timeout_s": 10}))
    });
    // B's record is already queued, so whether its wait arrives before or
    // after the release, the answer is the same grant: no ordering needed.
    assert_eq!(
        post(addr, &a, "/v1/locks/t/release", json!({"token": tok})).status,
        204
    );
    let r = waiter.join().expect("waiter");
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["lease_ttl_s"], 9);
}

#[test]
fn semaphore_routes() {
    let (_server, addr) = start(|_| {});
    let a = new_session(addr);
    let b = new_session(addr);
    let body = json!({"acquire_timeout_s": 0, "limit": 2});
    let ta = post(addr, &a, "/v1/semaphores/s", body.clone()).json();
    let tb = post(addr, &b, "/v1/semaphores/s", body.clone()).json();
    assert_eq!((&ta["status"], &tb["status"]), (&json!("ok"), &json!("ok")));
    assert_eq!(
        post(addr, &a, "/v1/semaphores/s", body.clone()).json(),
        json!({"status": "timeout"})
    );
    post(
        addr,
        &a,
        "/v1/semaphores/s",
        json!({"acquire_timeout_s": 0, "limit": 3}),
    )
    .err(409, "limit_mismatch");
    let r = post(
        addr,
        &a,
        "/v1/semaphores/s/renew",
        json!({"token": ta["token"]}),
    );
    assert_eq!(r.status, 200);
    assert!(r.json()["remaining_s"].as_u64().is_some());
    assert_eq!(
        post(
            addr,
            &a,
            "/v1/semaphores/s/release",
            json!({"token": ta["token"]})
        )
        .status,
        204
    );
    let r = post(addr, &a, "/v1/semaphores/s/enqueue", json!({"limit": 2}));
    assert_eq!(r.json()["status"], "acquired");
    let r = post(addr, &a, "/v1/semaphores/s/wait", json!({"timeout_s": 0}));
    assert_eq!(r.json()["status"], "ok");
    // Locks and semaphores are separate key spaces.
    let r = post(addr, &a, "/v1/locks/s", json!({"acquire_timeout_s": 0}));
    assert_eq!(r.json()["status"], "ok");
    post(addr, &a, "/v1/semaphores/s/enqueue", json!({})).err(400, "bad_request");
    post(addr, &a, "/v1/semaphores/s", json!({"limit": 0})).err(400, "bad_request");
}

#[test]
fn limits_map_to_503() {
    let (_server, addr) = start(|cfg| {
        cfg.core.max_locks = 1;
        cfg.core.max_waiters = 1;
    });
    let a = new_session(addr);
    let b = new_session(addr);
    let c = new_session(addr);
    post(addr, &a, "/v1/locks/x", json!({"acquire_timeout_s": 0}));
    post(addr, &a, "/v1/locks/y", json!({"acquire_timeout_s": 0})).err(503, "max_locks");
    let queued = post(addr, &b, "/v1/locks/x/enqueue", json!({}));
    assert_eq!(queued.json()["status"], "queued");
    post(addr, &c, "/v1/locks/x/enqueue", json!({})).err(503, "max_waiters");
}

#[test]
fn bad_input_is_4xx() {
    let (_server, addr) = start(|_| {});
    let sid = new_session(addr);
    let h = [("X-Dflockd-Session", sid.as_str())];
    let path = "/v1/locks/k";
    for body in [
        "{",
        "{\"acquire_timeout_s\":1} {}",
        "[]",
        "{\"extra\":1}",
        "{\"acquire_timeout_s\":-1}",
        "",
        "{\"acquire_timeout_s\":\"1\"}",
        "{\"lease_ttl_s\":99999999999999}",
    ] {
        call(addr, "POST", path, &h, body).err(400, "bad_request");
    }
    call(addr, "POST", "/v1/locks/k/release", &h, "{\"token\":\"\"}").err(400, "bad_request");
    call(
        addr,
        "POST",
        "/v1/locks/k/release",
        &h,
        "{\"token\":\"a b\"}",
    )
    .err(400, "bad_request");
    call(addr, "POST", "/v1/locks/k/renew", &h, "{}").err(400, "bad_request");
    call(addr, "POST", "/v1/locks/%zz", &h, "{}").err(400, "bad_request");
    call(addr, "POST", "/v1/locks/a%20b", &h, "{}").err(400, "bad_request");
    let long = "k".repeat(257);
    call(addr, "POST", &format!("/v1/locks/{long}"), &h, "{}").err(400, "bad_request");
    // Session header missing / unknown.
    let r = call(addr, "POST", path, &[], "{}");
    r.err(400, "bad_request");
    assert_eq!(r.json()["detail"], "X-Dflockd-Session header required");
    call(addr, "POST", path, &[("X-Dflockd-Session", "nope")], "{}").err(410, "session_gone");
    // A body over 1 MiB.
    let huge = format!(
        "{{\"acquire_timeout_s\":0,\"x\":\"{}\"}}",
        "a".repeat(1 << 20)
    );
    let r = call(addr, "POST", path, &h, &huge);
    r.err(400, "bad_request");
    assert_eq!(r.json()["detail"], "request body larger than 1 MiB");
    // Nothing was created.
    assert_eq!(stats(addr)["locks"], json!([]));
}

#[test]
fn bearer_auth() {
    let (_server, addr) = start(|cfg| cfg.core.auth_token = Some(b"s3cret".to_vec()));
    assert_eq!(get(addr, "/health").status, 200);
    assert_eq!(get(addr, "/ready").status, 200);
    assert_eq!(get(addr, "/v1/openapi.json").status, 200);
    get(addr, "/v1/stats").err(401, "unauthorized");
    get(addr, "/metrics").err(401, "unauthorized");
    call(addr, "POST", "/v1/sessions", &[], "").err(401, "unauthorized");
    call(
        addr,
        "POST",
        "/v1/sessions",
        &[("Authorization", "Bearer nope")],
        "",
    )
    .err(401, "unauthorized");
    let auth = ("Authorization", "Bearer s3cret");
    let r = call(addr, "POST", "/v1/sessions", &[auth], "");
    assert_eq!(r.status, 200);
    let sid = r.json()["session_id"].as_str().expect("id").to_owned();
    // The session's core connection is authenticated by the bridge.
    let r = call(
        addr,
        "POST",
        "/v1/locks/k",
        &[auth, ("X-Dflockd-Session", &sid)],
        "{\"acquire_timeout_s\":0}",
    );
    assert_eq!(r.json()["status"], "ok");
    call(
        addr,
        "POST",
        "/v1/locks/k",
        &[("X-Dflockd-Session", &sid)],
        "{}",
    )
    .err(401, "unauthorized");
}

/// A TCP waiter and an HTTP waiter on one key are granted in arrival order.
#[test]
fn cross_transport_fifo() {
    let (server, addr) = start(|_| {});
    let mut holder = server.client();
    let tok = holder.lock("f");
    // TCP first, then HTTP, then TCP again.
    let mut t1 = server.client();
    t1.send("l", "f", "10");
    server.wait_lock_waiters("f", 1);
    let sid = new_session(addr);
    let http = std::thread::spawn({
        let sid = sid.clone();
        move || post(addr, &sid, "/v1/locks/f", json!({"acquire_timeout_s": 10}))
    });
    server.wait_lock_waiters("f", 2);
    let mut t2 = server.client();
    t2.send("l", "f", "10");
    server.wait_lock_waiters("f", 3);

    assert_eq!(holder.req("r", "f", &tok), "ok");
    let (tok1, _) = grant(&t1.recv_line());
    assert!(!http.is_finished());
    assert_eq!(t1.req("r", "f", &tok1), "ok");
    let r = http.join().expect("http waiter");
    assert_eq!(r.json()["status"], "ok");
    t2.expect_silence();
    let tok_h = r.json()["token"].as_str().expect("token").to_owned();
    assert_eq!(
        post(addr, &sid, "/v1/locks/f/release", json!({"token": tok_h})).status,
        204
    );
    let (tok2, _) = grant(&t2.recv_line());
    assert_eq!(t2.req("r", "f", &tok2), "ok");
}

/// An HTTP client that goes away during a blocking acquire leaves nothing
/// behind: the waiter leaves the queue at once (semantics §9.1), and the
/// session lives on with what it already held.
#[test]
fn client_disconnect_during_acquire_leaks_nothing() {
    let (server, addr) = start(|_| {});
    let mut holder = server.client();
    let tok = holder.lock("d");
    let sid = new_session(addr);
    let kept = post(
        addr,
        &sid,
        "/v1/locks/kept",
        json!({"acquire_timeout_s": 0}),
    );
    assert_eq!(kept.json()["status"], "ok");
    let raw = raw(
        "POST",
        "/v1/locks/d",
        &[("X-Dflockd-Session", &sid)],
        br#"{"acquire_timeout_s":30}"#,
    );
    let s = send_raw(addr, &raw);
    server.wait_lock_waiters("d", 1);
    wait_blocked(addr, 1);
    drop(s);
    wait_blocked(addr, 0);
    // The waiter leaves; the session and its other lock stay.
    server.wait_stats(|st| crate::support::waiters(st, "locks", "d") == 0);
    assert_eq!(
        call(addr, "POST", &format!("/v1/sessions/{sid}/ping"), &[], "").status,
        204
    );
    let st = stats(addr);
    assert!(
        crate::support::entry(&st, "locks", "kept").is_some(),
        "{st}"
    );
    // The session is usable: its next request is served at once.
    let again = post(addr, &sid, "/v1/locks/d", json!({"acquire_timeout_s": 0}));
    assert_eq!(again.json(), json!({"status": "timeout"}));
    // Released by its holder, "d" goes to nobody (no leftover waiter).
    assert_eq!(holder.req("r", "d", &tok), "ok");
    let st = stats(addr);
    assert!(crate::support::entry(&st, "locks", "d").is_none(), "{st}");
    let release = post(
        addr,
        &sid,
        "/v1/locks/kept/release",
        json!({"token": kept.json()["token"]}),
    );
    assert_eq!(release.status, 204);
    assert_eq!(
        call(addr, "DELETE", &format!("/v1/sessions/{sid}"), &[], "").status,
        204
    );
    drop(holder);
    server.assert_quiet();
}

/// The same for a two-phase wait: the queued record is consumed and its
/// waiter withdrawn, so the next waiter in line is granted instead.
#[test]
fn client_disconnect_during_wait_withdraws_only_that_wait() {
    let (server, addr) = start(|_| {});
    let mut holder = server.client();
    let tok = holder.lock("w");
    let sid = new_session(addr);
    let r = post(addr, &sid, "/v1/locks/w/enqueue", json!({}));
    assert_eq!(r.json(), json!({"status": "queued"}));
    let mut behind = server.client();
    behind.send("l", "w", "30");
    server.wait_lock_waiters("w", 2);
    let raw = raw(
        "POST",
        "/v1/locks/w/wait",
        &[("X-Dflockd-Session", &sid)],
        br#"{"timeout_s":30}"#,
    );
    let s = send_raw(addr, &raw);
    // The wait is blocked in the core...
    wait_blocked(addr, 1);
    drop(s);
    wait_blocked(addr, 0);
    server.wait_lock_waiters("w", 1);
    // ...and once withdrawn, the TCP waiter behind it is next.
    assert_eq!(holder.req("r", "w", &tok), "ok");
    let (t2, _) = grant(&behind.recv_line());
    assert_eq!(behind.req("r", "w", &t2), "ok");
    post(addr, &sid, "/v1/locks/w/wait", json!({"timeout_s": 0})).err(409, "not_enqueued");
    assert_eq!(
        call(addr, "DELETE", &format!("/v1/sessions/{sid}"), &[], "").status,
        204
    );
    drop((holder, behind));
    server.assert_quiet();
}

/// Waits until `/metrics` shows `n` HTTP requests blocked in the core.
#[track_caller]
fn wait_blocked(addr: SocketAddr, n: u64) {
    let want = format!("dflockd_http_blocked_requests {n}");
    crate::support::wait_until(crate::support::DEADLINE, || {
        get(addr, "/metrics").body.lines().any(|l| l == want)
    });
}

/// Decision D9: a session with no request for 2 × the idle timeout dies,
/// and its locks are released.
#[test]
fn idle_sessions_expire() {
    let (_server, addr) = start(|cfg| {
        if let Some(h) = cfg.http.as_mut() {
            h.session_idle_timeout_s = 1;
        }
    });
    let sid = new_session(addr);
    let kept = new_session(addr);
    let r = post(addr, &sid, "/v1/locks/e", json!({"acquire_timeout_s": 0}));
    assert_eq!(r.json()["status"], "ok");
    // Keep one alive with pings until the other has expired (its lock goes).
    let start = std::time::Instant::now();
    while stats(addr)["locks"] != json!([]) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "session never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
        let ping = format!("/v1/sessions/{kept}/ping");
        assert_eq!(call(addr, "POST", &ping, &[], "").status, 204);
    }
    // Not before 2 × the idle timeout.
    assert!(start.elapsed() >= Duration::from_millis(1900));
    post(addr, &sid, "/v1/locks/e", json!({})).err(410, "session_gone");
    let s = stats(addr);
    assert_eq!(s["locks"], json!([]));
    assert_eq!(s["connections"], 1);
}

/// Decision D10: draining answers 503 everywhere but /health and /ready.
#[test]
fn draining_is_503() {
    let (server, addr) = start(|cfg| cfg.shutdown_timeout_s = 30);
    let sid = new_session(addr);
    // A TCP connection keeps the drain from finishing.
    let _c = server.client();
    server.shutdown();
    let r = get(addr, "/ready");
    assert_eq!((r.status, r.json()), (503, json!({"status": "draining"})));
    assert_eq!(get(addr, "/health").status, 200);
    get(addr, "/v1/stats").err(503, "draining");
    call(addr, "POST", "/v1/sessions", &[], "").err(503, "draining");
    post(addr, &sid, "/v1/locks/k", json!({})).err(503, "draining");
}

/// Requests on one session are serialised: a second request waits behind a
/// blocked one (the core never sees two requests from one connection).
#[test]
fn requests_on_one_session_are_serialised() {
    let (server, addr) = start(|_| {});
    let mut holder = server.client();
    let tok = holder.lock("q");
    let sid = new_session(addr);
    let first = std::thread::spawn({
        let sid = sid.clone();
        move || post(addr, &sid, "/v1/locks/q", json!({"acquire_timeout_s": 10}))
    });
    server.wait_lock_waiters("q", 1);
    let second = std::thread::spawn({
        let sid = sid.clone();
        move || {
            post(
                addr,
                &sid,
                "/v1/locks/other",
                json!({"acquire_timeout_s": 0}),
            )
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !second.is_finished(),
        "the second request overtook the first"
    );
    // HEAD works on GET routes meanwhile.
    assert_eq!(call(addr, "HEAD", "/v1/stats", &[], "").status, 200);
    assert_eq!(holder.req("r", "q", &tok), "ok");
    assert_eq!(first.join().expect("first").json()["status"], "ok");
    assert_eq!(second.join().expect("second").json()["status"], "ok");
}

/// DELETE while a request of the session is blocked: the request answers
/// 410 and its waiter leaves the queue.
#[test]
fn delete_during_blocked_request() {
    let (server, addr) = start(|_| {});
    let mut holder = server.client();
    let tok = holder.lock("z");
    let sid = new_session(addr);
    let blocked = std::thread::spawn({
        let sid = sid.clone();
        move || post(addr, &sid, "/v1/locks/z", json!({"acquire_timeout_s": 30}))
    });
    server.wait_lock_waiters("z", 1);
    assert_eq!(
        call(addr, "DELETE", &format!("/v1/sessions/{sid}"), &[], "").status,
        204
    );
    blocked.join().expect("blocked").err(410, "session_gone");
    server.wait_lock_waiters("z", 0);
    assert_eq!(holder.req("r", "z", &tok), "ok");
    drop(holder);
    server.assert_quiet();
}

// ----- TLS, CORS, rate limit, per-IP caps ---------------------------------

/// Sends a request from a chosen loopback address (127.0.0.0/8 is local),
/// so a test can act as several remote IPs.
fn call_from(
    local: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut s = connect_from(local, addr);
    s.write_all(&raw(method, path, headers, b""))
        .expect("write");
    read_raw(s)
}

fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(local, 0).into())
        .expect("bind local address");
    socket.connect_timeout(&addr.into(), IO).expect("connect");
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(IO)).expect("timeout");
    s
}

fn other_ip() -> std::net::IpAddr {
    std::net::IpAddr::from([127, 0, 0, 2])
}

/// The value of an unlabelled series in `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `/metrics` read from 127.0.0.2 (so it neither spends 127.0.0.1's rate
/// limit nor counts toward its connections).
fn metrics_from_other_ip(addr: SocketAddr) -> String {
    let r = call_from(other_ip(), addr, "GET", "/metrics", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

#[test]
fn https_when_tls_is_configured() {
    use rustls::pki_types::ServerName;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = std::env::temp_dir().join(format!("dflockd-it-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("c.pem"), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.join("k.pem"), ck.signing_key.serialize_pem()).expect("write key");
    let server_tls =
        dflockd::server::tls::load(&dir.join("c.pem"), &dir.join("k.pem")).expect("loads");
    let _ = std::fs::remove_dir_all(&dir);
    let (_server, addr) = start(|cfg| {
        cfg.tls = Some(server_tls);
        cfg.read_timeout_s = 2;
    });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("trust");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let https = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| -> Resp {
        let sock = TcpStream::connect_timeout(&addr, IO).expect("connect");
        sock.set_read_timeout(Some(IO)).expect("timeout");
        let name = ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(client.clone(), name).expect("client");
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(&raw(method, path, headers, body.as_bytes()))
            .expect("write");
        let mut buf = Vec::new();
        // The server closes after `Connection: close`; a missing
        // close_notify is not an error here.
        let _ = tls.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("header end");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        Resp {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    };
    let r = https("GET", "/health", &[], "");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = https("POST", "/v1/sessions", &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.json()["session_id"].as_str().expect("id").to_owned();
    let r = https(
        "POST",
        "/v1/locks/k",
        &[("X-Dflockd-Session", &sid)],
        r#"{"acquire_timeout_s":0}"#,
    );
    assert_eq!((r.status, &r.json()["status"]), (200, &json!("ok")));
    let r = https("GET", "/v1/stats", &[], "");
    assert_eq!(r.json()["locks"][0]["key"], "k");

    // Plaintext HTTP on the TLS port gets no HTTP response.
    let mut s = send_raw(addr, &raw("GET", "/health", &[], b""));
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // A silent client is dropped at the handshake deadline.
    let mut silent = TcpStream::connect_timeout(&addr, IO).expect("connect");
    silent.set_read_timeout(Some(IO)).expect("timeout");
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    assert!(buf.is_empty());
    let text = https("GET", "/metrics", &[], "").body;
    assert!(metric(&text, "dflockd_http_tls_handshake_failures_total").unwrap_or(0.0) >= 2.0);

    // An SSE stream over TLS: `:ok` first, then a signal published over
    // HTTPS, read incrementally from the open stream.
    let sock = TcpStream::connect_timeout(&addr, IO).expect("connect");
    sock.set_read_timeout(Some(IO)).expect("timeout");
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(client.clone(), name).expect("client");
    let mut stream = rustls::StreamOwned::new(conn, sock);
    stream
        .write_all(b"GET /v1/signals?pattern=tls.* HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut seen = Vec::new();
    let mut read_until = |needle: &[u8]| {
        let mut buf = [0u8; 4096];
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = stream.read(&mut buf).expect("stream stays open");
            assert!(n > 0, "stream ended: {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    read_until(b":ok\n\n");
    let r = https(
        "POST",
        "/v1/signals/tls.x",
        &[],
        r#"{"payload":"over tls"}"#,
    );
    assert_eq!((r.status, r.json()), (200, json!({"delivered": 1})));
    read_until(b"data: {\"channel\":\"tls.x\",\"payload\":\"over tls\"}\n\n");
}

#[test]
fn cors_headers_and_preflight() {
    let (_server, addr) = start(|cfg| {
        cfg.core.auth_token = Some(b"secret".to_vec());
        if let Some(h) = &mut cfg.http {
            h.cors_allowed_origins = vec!["https://a.example".into(), "https://b.example".into()];
        }
    });
    // Allowed origin: echoed, with Vary and the fixed lists.
    let r = call(
        addr,
        "GET",
        "/health",
        &[("Origin", "https://b.example")],
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://b.example")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, POST, DELETE, OPTIONS")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Authorization, Content-Type, X-Dflockd-Session")
    );
    assert_eq!(r.header("access-control-max-age"), Some("300"));
    // On errors too (here 401: CORS comes before auth).
    let r = call(
        addr,
        "GET",
        "/v1/stats",
        &[("Origin", "https://a.example")],
        "",
    );
    r.err(401, "unauthorized");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    // Other origin, or none: no CORS headers.
    for h in [&[("Origin", "https://evil.example")][..], &[]] {
        let r = call(addr, "GET", "/health", h, "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), None);
        assert_eq!(r.header("access-control-allow-methods"), None);
    }
    // Preflight: 204 without auth, with headers for an allowed origin...
    let pre = |origin: &str| {
        call(
            addr,
            "OPTIONS",
            "/v1/locks/k",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
            ],
            "",
        )
    };
    let r = pre("https://a.example");
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    // ... and without them for another origin.
    let r = pre("https://evil.example");
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Even on an unknown path.
    let r = call(
        addr,
        "OPTIONS",
        "/nowhere",
        &[("Access-Control-Request-Method", "GET")],
        "",
    );
    assert_eq!(r.status, 204);
    // A plain OPTIONS (or one with an empty request method) is routed as
    // usual.
    let r = call(addr, "OPTIONS", "/health", &[], "");
    r.err(405, "method_not_allowed");
    let r = call(
        addr,
        "OPTIONS",
        "/health",
        &[("Access-Control-Request-Method", "")],
        "",
    );
    r.err(405, "method_not_allowed");
}

#[test]
fn cors_wildcard_and_off() {
    let (_server, addr) = start(|cfg| {
        if let Some(h) = &mut cfg.http {
            h.cors_allowed_origins = vec!["*".into()];
        }
    });
    let r = call(
        addr,
        "GET",
        "/health",
        &[("Origin", "https://x.example")],
        "",
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("vary"), None);
    drop(_server);

    // CORS off: no headers, and a preflight is just an OPTIONS (405).
    let (_server, addr) = start(|_| {});
    let r = call(
        addr,
        "GET",
        "/health",
        &[("Origin", "https://x.example")],
        "",
    );
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = call(
        addr,
        "OPTIONS",
        "/health",
        &[
            ("Origin", "https://x.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
        "",
    );
    r.err(405, "method_not_allowed");
}

#[test]
fn rate_limit_per_ip_with_burst() {
    let (_server, addr) = start(|cfg| {
        if let Some(h) = &mut cfg.http {
            h.rate_limit_per_ip = 1;
            h.rate_limit_burst = 3;
            h.cors_allowed_origins = vec!["*".into()];
        }
    });
    // The burst (any route, even a 404), then 429.
    assert_eq!(get(addr, "/v1/stats").status, 200);
    get(addr, "/nowhere").err(404, "not_found");
    assert_eq!(get(addr, "/v1/stats").status, 200);
    get(addr, "/v1/stats").err(429, "rate_limited");
    call(addr, "POST", "/v1/sessions", &[], "").err(429, "rate_limited");
    // /health and /ready are exempt.
    assert_eq!(get(addr, "/health").status, 200);
    assert_eq!(get(addr, "/ready").status, 200);
    // A preflight is answered before the limit.
    let r = call(
        addr,
        "OPTIONS",
        "/v1/stats",
        &[
            ("Origin", "https://x"),
            ("Access-Control-Request-Method", "GET"),
        ],
        "",
    );
    assert_eq!(r.status, 204);
    // Another IP has its own bucket; the refusals are counted.
    let text = metrics_from_other_ip(addr);
    assert_eq!(metric(&text, "dflockd_http_rate_limited_total"), Some(2.0));
    assert!(text.contains(
        "dflockd_http_requests_total{method=\"GET\",path=\"/v1/stats\",status=\"429\"} 1\n"
    ));
    // The bucket refills at 1/s: a request is allowed again within ~1 s.
    let mut status = 0;
    let waited = crate::support::wait_until(Duration::from_secs(5), || {
        status = get(addr, "/v1/stats").status;
        status == 200
    });
    assert_eq!(status, 200, "allowed again after {waited:?}");
}

#[test]
fn max_connections_per_ip_closes_at_accept() {
    let (_server, addr) = start(|cfg| {
        if let Some(h) = &mut cfg.http {
            h.max_connections_per_ip = 2;
        }
    });
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    let a = connect_from(local, addr);
    let b = connect_from(local, addr);
    // Both accepted (the reader from 127.0.0.2 is the third).
    crate::support::wait_until(IO, || {
        metric(&metrics_from_other_ip(addr), "dflockd_http_connections") == Some(3.0)
    });
    // A third from the same IP is closed without a byte.
    let mut c = connect_from(local, addr);
    let _ = c.write_all(&raw("GET", "/health", &[], b""));
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    let text = metrics_from_other_ip(addr);
    assert_eq!(
        metric(&text, "dflockd_http_connections_rejected_total"),
        Some(1.0)
    );
    // Closing one frees a slot.
    drop(a);
    crate::support::wait_until(IO, || {
        metric(&metrics_from_other_ip(addr), "dflockd_http_connections") == Some(2.0)
    });
    assert_eq!(get(addr, "/health").status, 200);
    drop(b);
}

#[test]
fn max_sessions_per_ip() {
    let (_server, addr) = start(|cfg| {
        if let Some(h) = &mut cfg.http {
            h.max_sessions_per_ip = 1;
        }
    });
    let sid = new_session(addr);
    call(addr, "POST", "/v1/sessions", &[], "").err(503, "max_sessions_per_ip");
    // Another IP has its own allowance.
    let r = call_from(other_ip(), addr, "POST", "/v1/sessions", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    // Ending the session frees the slot.
    let r = call(addr, "DELETE", &format!("/v1/sessions/{sid}"), &[], "");
    assert_eq!(r.status, 204);
    new_session(addr);
}

#[test]
fn transport_gauges() {
    let (server, addr) = start(|_| {});
    let mut c = server.client();
    c.lock("k");
    let text = get(addr, "/metrics").body;
    assert_eq!(metric(&text, "dflockd_tcp_connections"), Some(1.0));
    assert_eq!(metric(&text, "dflockd_http_connections"), Some(1.0));
    assert_eq!(metric(&text, "dflockd_http_rate_limited_total"), Some(0.0));
    assert!(text.contains("# TYPE dflockd_http_rate_limited_total counter\n"));
}

// The daemon starts the HTTP API over TLS (no longer refused) and passes
// the CORS, rate-limit and per-IP flags through without a warning.
#[test]
fn daemon_passes_http_flags() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = std::env::temp_dir().join(format!("dflockd-it-http-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("c.pem"), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.join("k.pem"), ck.signing_key.serialize_pem()).expect("write key");
    let cert = dir.join("c.pem").display().to_string();
    let key = dir.join("k.pem").display().to_string();
    let port = crate::daemon::free_port();
    let d = crate::daemon::Daemon::start(
        &[
            "--http-port",
            &port,
            "--http-rate-limit-per-ip",
            "1",
            "--http-rate-limit-burst",
            "1",
            "--http-cors-allowed-origins",
            "*",
            "--http-max-sessions-per-ip",
            "1",
            "--http-max-connections-per-ip",
            "8",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(d.http.map(|a| a.port().to_string()), Some(port));
    let listening = d.with_msg("listening");
    assert!(listening.iter().all(|v| v["tls"] == true), "{listening:?}");
    let warnings: Vec<_> = d
        .logs()
        .into_iter()
        .filter(|v| v["level"] == "warn")
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}
