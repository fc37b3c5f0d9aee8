//! Core tests with a virtual clock (no sleeps, no threads).
//!
//! Most tests are tables of `(t_ms, input, expected effects)` run by
//! [`run`]. Effects are rendered one per connection, in emission order per
//! connection, joined by ` | ` (for example `c2: ok #3 10 | c1: ok`). A token
//! is shown as `#<fence>`; the formatter asserts that its salt half is
//! `token_salt(SALT, fence)`, so every table also checks the token layout.
//! The order *between* connections is not significant and is normalised
//! (sorted by connection id).
//!
//! This file holds the harness (request constructors, the effect formatter,
//! the table runner [`run`]); the tests live in `tests/`, one file per
//! topic, each reaching the harness through `use super::*`.

use super::{token_salt, CloseReason, ConnId, Core, CoreConfig, Effect, Time};
use crate::wire::{Key, Reply, Request, Space, Status, Token};
use serde_json::{json, Value};

const SALT: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

/// Test configuration: defaults, a fixed salt key, and GC far away so that
/// `poll_timeout` shows leases and waiters unless a test asks for GC.
fn cfg() -> CoreConfig {
    CoreConfig {
        gc_interval_s: 3600,
        gc_max_idle_s: 3600,
        salt_key: SALT,
        ..CoreConfig::default()
    }
}

/// `cfg()` with an auth token (`sekrit`).
fn auth_cfg() -> CoreConfig {
    CoreConfig {
        auth_token: Some(b"sekrit".to_vec()),
        ..cfg()
    }
}

// ----- request constructors -------------------------------------------------
// A lease argument of 0 means "omitted" (lease 0 is rejected by the decoder).

fn key(k: &str) -> Key {
    Key::new(k.as_bytes()).expect("valid test key")
}

fn lease(l: u64) -> Option<u64> {
    (l > 0).then_some(l)
}

/// The 32-hex token of `fence` as a client would send it.
fn tok(fence: u64) -> Box<[u8]> {
    Token {
        fence,
        salt: token_salt(SALT, fence),
    }
    .to_string()
    .into_bytes()
    .into()
}

fn l(k: &str, t: u64, ls: u64) -> Request {
    Request::Acquire {
        space: Space::Lock,
        key: key(k),
        timeout_s: t,
        limit: 1,
        lease_s: lease(ls),
    }
}

fn sl(k: &str, t: u64, n: u64, ls: u64) -> Request {
    Request::Acquire {
        space: Space::Sem,
        key: key(k),
        timeout_s: t,
        limit: n,
        lease_s: lease(ls),
    }
}

fn r_raw(space: Space, k: &str, token: &[u8]) -> Request {
    Request::Release {
        space,
        key: key(k),
        token: token.into(),
    }
}

fn r(k: &str, fence: u64) -> Request {
    r_raw(Space::Lock, k, &tok(fence))
}

fn sr(k: &str, fence: u64) -> Request {
    r_raw(Space::Sem, k, &tok(fence))
}

fn n(k: &str, fence: u64, ls: u64) -> Request {
    Request::Renew {
        space: Space::Lock,
        key: key(k),
        token: tok(fence),
        lease_s: lease(ls),
    }
}

fn sn(k: &str, fence: u64, ls: u64) -> Request {
    Request::Renew {
        space: Space::Sem,
        key: key(k),
        token: tok(fence),
        lease_s: lease(ls),
    }
}

fn e(k: &str, ls: u64) -> Request {
    Request::Enqueue {
        space: Space::Lock,
        key: key(k),
        limit: 1,
        lease_s: lease(ls),
    }
}

fn se(k: &str, n: u64, ls: u64) -> Request {
    Request::Enqueue {
        space: Space::Sem,
        key: key(k),
        limit: n,
        lease_s: lease(ls),
    }
}

fn w(k: &str, t: u64) -> Request {
    Request::Wait {
        space: Space::Lock,
        key: key(k),
        timeout_s: t,
    }
}

fn sw(k: &str, t: u64) -> Request {
    Request::Wait {
        space: Space::Sem,
        key: key(k),
        timeout_s: t,
    }
}

fn auth(t: &str) -> Request {
    Request::Auth {
        token: t.as_bytes().into(),
    }
}

// ----- formatting -------------------------------------------------------------

fn show_token(token: &Token) -> String {
    assert_eq!(
        token.salt,
        token_salt(SALT, token.fence),
        "token {token} does not carry token_salt(key, fence)"
    );
    format!("#{}", token.fence)
}

fn show_reply(reply: &Reply) -> String {
    match reply {
        Reply::Ok => "ok".to_string(),
        Reply::Granted { token, lease_s } => format!("ok {} {lease_s}", show_token(token)),
        Reply::Acquired { token, lease_s } => {
            format!("acquired {} {lease_s}", show_token(token))
        }
        Reply::OkInt(n) => format!("ok {n}"),
        Reply::Stats(json) => format!("ok {json}"),
        Reply::Status(s) => s.as_str().to_string(),
        Reply::NotLeader { .. } => unreachable!("a single-node core never redirects"),
    }
}

fn effect_conn(e: &Effect) -> ConnId {
    match e {
        Effect::Reply { conn, .. } | Effect::Close { conn, .. } | Effect::Push { conn, .. } => {
            *conn
        }
    }
}

fn show_effect(e: &Effect) -> String {
    match e {
        Effect::Reply { conn, reply } => format!("c{}: {}", conn.0, show_reply(reply)),
        Effect::Close { conn, reason } => {
            let why = match reason {
                CloseReason::Draining => "draining".to_string(),
                CloseReason::AuthFailed { pause_ms } => format!("auth {pause_ms}ms"),
                CloseReason::Overlong => "overlong".to_string(),
                CloseReason::Stalled => "stalled".to_string(),
                CloseReason::Idle => "idle".to_string(),
                CloseReason::SlowConsumer => "slow".to_string(),
            };
            format!("c{}: close ({why})", conn.0)
        }
        Effect::Push {
            conn,
            channel,
            payload,
        } => format!(
            "c{}: sig {} {}",
            conn.0,
            String::from_utf8_lossy(channel.as_bytes()),
            String::from_utf8_lossy(payload)
        ),
    }
}

/// Renders effects sorted by connection (stable: per-connection order kept).
fn show(effects: &[Effect]) -> String {
    let mut sorted: Vec<&Effect> = effects.iter().collect();
    sorted.sort_by_key(|e| effect_conn(e));
    sorted
        .iter()
        .map(|e| show_effect(e))
        .collect::<Vec<_>>()
        .join(" | ")
}

// ----- harness ------------------------------------------------------------------

/// One input of a table.
#[derive(Clone, Debug)]
enum In {
    /// A request from connection `n`.
    Req(u64, Request),
    /// `handle_timeout`.
    Tick,
    /// `disconnect`.
    Bye(u64),
    /// `handle_invalid(conn, fatal)`.
    Bad(u64, bool),
    /// `start_drain`.
    Drain,
    /// `raise_fence_ceiling`.
    Raise(u64),
    /// `connect` (the new id is asserted from the expected string: `c<n>`).
    Connect,
    /// `pushes_written(conn, n)`: the driver wrote `n` of `conn`'s pushes.
    Written(u64, usize),
    /// `read_deadline(conn, partial)`.
    Deadline(u64, bool),
    /// `cancel(conn)`.
    Cancel(u64),
}

fn c(conn: u64, req: Request) -> In {
    In::Req(conn, req)
}

struct H {
    core: Core,
    t: u64,
}

impl H {
    /// A core at t = 0 with connections 1..=conns.
    fn new(cfg: CoreConfig, conns: u64) -> H {
        let mut core = Core::new(cfg, Time(0));
        let mut out = Vec::new();
        for i in 1..=conns {
            assert_eq!(core.connect(Time(0), &mut out), ConnId(i));
        }
        assert!(out.is_empty());
        H { core, t: 0 }
    }

    fn apply(&mut self, t: u64, input: In) -> Vec<Effect> {
        self.t = t;
        let now = Time(t);
        let mut out = Vec::new();
        match input {
            In::Req(conn, req) => {
                let conn = ConnId(conn);
                self.core.handle(now, conn, req, &mut out);
                let answered = out
                    .iter()
                    .any(|e| matches!(e, Effect::Reply { conn: c, .. } if *c == conn));
                assert_eq!(
                    self.core.is_blocked(conn),
                    !answered,
                    "a request is blocked exactly when it got no reply"
                );
            }
            In::Tick => self.core.handle_timeout(now, &mut out),
            In::Bye(conn) => self.core.disconnect(now, ConnId(conn), &mut out),
            In::Bad(conn, fatal) => self.core.handle_invalid(now, ConnId(conn), fatal, &mut out),
            In::Drain => self.core.start_drain(now, &mut out),
            In::Raise(ceiling) => self.core.raise_fence_ceiling(now, ceiling, &mut out),
            In::Written(conn, n) => self.core.pushes_written(ConnId(conn), n),
            In::Deadline(conn, partial) => {
                self.core
                    .read_deadline(now, ConnId(conn), partial, &mut out)
            }
            In::Cancel(conn) => self.core.cancel(now, ConnId(conn), &mut out),
            In::Connect => {
                let id = self.core.connect(now, &mut out);
                out.push(Effect::Reply {
                    conn: id,
                    reply: Reply::Status(Status::Queued),
                });
                // Rendered as "cN: connected" below.
            }
        }
        out
    }

    fn send(&mut self, t: u64, conn: u64, req: Request) -> String {
        let out = self.apply(t, In::Req(conn, req));
        show(&out)
    }

    fn tick(&mut self, t: u64) -> String {
        let out = self.apply(t, In::Tick);
        show(&out)
    }

    /// The `stats` JSON as seen by `conn` at `t`.
    fn stats(&mut self, t: u64, conn: u64) -> Value {
        let out = self.apply(t, In::Req(conn, Request::Stats));
        let [Effect::Reply {
            reply: Reply::Stats(json),
            ..
        }] = out.as_slice()
        else {
            panic!("stats answered {}", show(&out));
        };
        assert!(!json.contains('\n'), "stats is one line");
        serde_json::from_str(json).expect("stats is JSON")
    }

    fn poll(&self) -> Option<u64> {
        self.core.poll_timeout().map(|t| t.0)
    }
}

/// Runs a table against `h`, asserting the effects of every row.
#[track_caller]
fn run(h: &mut H, rows: Vec<(u64, In, &str)>) {
    for (i, (t, input, expect)) in rows.into_iter().enumerate() {
        let desc = format!("row {i}: t={t} {input:?}");
        let connect = matches!(input, In::Connect);
        let out = h.apply(t, input);
        let got = show(&out);
        let got = if connect {
            got.replace(": queued", ": connected")
        } else {
            got
        };
        assert_eq!(got, expect, "{desc}");
    }
}

/// Runs a table on a fresh core with connections 1..=conns.
#[track_caller]
fn check(cfg: CoreConfig, conns: u64, rows: Vec<(u64, In, &str)>) -> H {
    let mut h = H::new(cfg, conns);
    run(&mut h, rows);
    h
}

/// The stats entry for `key` in array `field`, if any.
fn entry<'a>(stats: &'a Value, field: &str, key: &str) -> Option<&'a Value> {
    stats[field]
        .as_array()
        .expect("array field")
        .iter()
        .find(|e| e["key"] == key)
}

mod accessors;
mod acquire;
mod auth_drain_invalid;
mod decisions;
mod disconnect;
mod fencing;
mod gc;
mod image;
mod introspection;
mod limits;
mod metrics;
mod signals;
mod time;
mod two_phase;
