//! The `auth` handshake: success, wrong token, a first request that is not
//! `auth`, and `auth` on a server without a token.

use crate::support::{check, grant, wait_until, wire, Server, DEADLINE};

const TOKEN: &[u8] = b"s3cret-token";

fn auth_server() -> Server {
    Server::start(|cfg| cfg.core.auth_token = Some(TOKEN.to_vec()))
}

#[test]
fn correct_token_then_normal_operation() {
    let server = auth_server();
    let mut c = server.client();
    assert_eq!(c.req("auth", "_", "s3cret-token"), "ok");
    let t = c.lock("k");
    // A second `auth` is just an error; the connection stays open.
    assert_eq!(c.req("auth", "_", "s3cret-token"), "error");
    assert_eq!(c.req("r", "k", &t), "ok");
    assert_eq!(c.req("ping", "_", ""), "ok");
}

#[test]
fn token_is_trimmed_and_key_line_ignored() {
    let server = auth_server();
    let mut c = server.client();
    check(&mut c, "auth\n\n \t s3cret-token \r\n", "ok");
    check(&mut c, &wire("ping", "_", ""), "ok");
}

#[test]
fn wrong_token_gets_error_auth_then_close() {
    let server = auth_server();
    for bad in ["wrong", "s3cret-toke", "s3cret-token2", "S3CRET-TOKEN", ""] {
        let mut c = server.client();
        assert_eq!(c.req("auth", "_", bad), "error_auth", "token {bad:?}");
        c.expect_eof();
    }
    // Rejected connections are gone: stats sees only this one.
    let mut c = server.client();
    assert_eq!(c.req("auth", "_", "s3cret-token"), "ok");
    wait_until(DEADLINE, || c.stats()["connections"] == 1);
}

#[test]
fn first_request_other_than_auth_is_rejected() {
    let server = auth_server();
    let inputs = [
        wire("l", "k", "0"),
        wire("ping", "_", ""),
        wire("stats", "_", ""),
        // Unparsable first requests count as failed authentication too.
        wire("bogus", "_", ""),
        wire("l", "", "0"),
        format!("{}\n_\n_\n", "x".repeat(300)),
    ];
    for input in inputs {
        let mut c = server.client();
        c.send_raw(input.as_bytes());
        assert_eq!(c.recv_line(), "error_auth", "input {input:?}");
        c.expect_eof();
    }
    // And nothing they asked for happened.
    let mut c = server.client();
    assert_eq!(c.req("auth", "_", "s3cret-token"), "ok");
    grant(&c.req("l", "k", "0"));
}

#[test]
fn long_token_up_to_64_kib() {
    let long = "t".repeat(60_000);
    let server = Server::start(|cfg| cfg.core.auth_token = Some(long.clone().into_bytes()));
    let mut c = server.client();
    assert_eq!(c.req("auth", "_", &long), "ok");
    let mut c = server.client();
    // One byte over the 64 KiB payload limit: a fatal framing error.
    assert_eq!(c.req("auth", "_", &"t".repeat(65_537)), "error_auth");
    c.expect_eof();
}

#[test]
fn server_without_token_answers_auth_with_error() {
    let server = Server::plain();
    let mut c = server.client();
    assert_eq!(c.req("auth", "_", "anything"), "error");
    assert_eq!(c.req("auth", "_", ""), "error");
    grant(&c.req("l", "k", "0"));
}

#[test]
fn idle_unauthenticated_connection_gets_error_auth() {
    let server = Server::start(|cfg| {
        cfg.core.auth_token = Some(TOKEN.to_vec());
        cfg.read_timeout_s = 1;
    });
    let mut c = server.client();
    assert_eq!(c.recv_line(), "error_auth");
    c.expect_eof();
}

#[test]
fn requests_pipelined_behind_auth() {
    let server = auth_server();
    // Behind a successful auth, they run.
    let mut c = server.client();
    let ok = [
        wire("auth", "_", "s3cret-token"),
        wire("l", "a", "0"),
        wire("ping", "_", ""),
    ]
    .concat();
    check(&mut c, &ok, "ok\nok TOK 33\nok");
    // Behind a failed one, nothing runs and nothing more is answered.
    let mut d = server.client();
    let bad = [
        wire("auth", "_", "nope"),
        wire("l", "b", "0"),
        wire("ping", "_", ""),
    ]
    .concat();
    d.send_raw(bad.as_bytes());
    assert_eq!(d.recv_line(), "error_auth");
    d.expect_eof();
    let s = c.stats();
    assert!(crate::support::entry(&s, "locks", "a").is_some());
    assert!(crate::support::entry(&s, "locks", "b").is_none());
    assert!(crate::support::entry(&s, "idle_locks", "b").is_none());
}
