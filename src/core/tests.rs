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
//! The `random` module at the bottom drives random operation sequences through
//! the core and through a naive reference transition function written from
//! `spec/semantics.md`, and checks invariants after every step.

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
#[derive(Debug)]
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

// ----- acquire, FIFO, semaphores ----------------------------------------------------

#[test]
fn immediate_grant_release_and_regrant() {
    check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 0, 0)), "c2: timeout"),
            (5, c(1, r("a", 1)), "c1: ok"),
            (5, c(2, l("a", 0, 0)), "c2: ok #2 33"),
            // Another key is independent.
            (6, c(1, l("b", 0, 7)), "c1: ok #3 7"),
        ],
    );
}

#[test]
fn timeout_zero_on_held_key_times_out_without_queueing() {
    let mut h = check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 0, 10)), "c2: timeout"),
            (0, c(1, sl("s", 0, 1, 10)), "c1: ok #2 10"),
            (0, c(2, sl("s", 0, 1, 10)), "c2: timeout"),
        ],
    );
    let st = h.stats(0, 3);
    assert_eq!(entry(&st, "locks", "a").unwrap()["waiters"], 0);
    assert_eq!(st["locks"].as_array().unwrap().len(), 2);
    assert!(st["locks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["waiters"] == 0));
}

#[test]
fn no_reentrancy_holder_queues_behind_itself() {
    check(
        cfg(),
        1,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (0, c(1, l("a", 5, 60)), ""),
            (4999, In::Tick, ""),
            (5000, In::Tick, "c1: timeout"),
        ],
    );
}

#[test]
fn fifo_three_contenders_granted_in_arrival_order() {
    check(
        cfg(),
        4,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (1, c(2, l("a", 60, 10)), ""),
            (2, c(3, l("a", 60, 11)), ""),
            (3, c(4, l("a", 60, 12)), ""),
            (100, c(1, r("a", 1)), "c1: ok | c2: ok #2 10"),
            (200, c(2, r("a", 2)), "c2: ok | c3: ok #3 11"),
            (300, c(3, r("a", 3)), "c3: ok | c4: ok #4 12"),
            (400, c(4, r("a", 4)), "c4: ok"),
        ],
    );
}

#[test]
fn fifo_survives_a_waiter_leaving_the_middle() {
    check(
        cfg(),
        4,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (0, c(2, l("a", 30, 10)), ""),
            (0, c(3, l("a", 5, 10)), ""),
            (0, c(4, l("a", 30, 10)), ""),
            (5000, In::Tick, "c3: timeout"),
            (6000, c(1, r("a", 1)), "c1: ok | c2: ok #2 10"),
            (7000, c(2, r("a", 2)), "c2: ok | c4: ok #3 10"),
        ],
    );
}

#[test]
fn semaphore_n_holders_then_queue_then_grant_on_release() {
    check(
        cfg(),
        5,
        vec![
            (0, c(1, sl("s", 0, 2, 10)), "c1: ok #1 10"),
            (0, c(2, sl("s", 0, 2, 10)), "c2: ok #2 10"),
            (0, c(3, sl("s", 0, 2, 10)), "c3: timeout"),
            (1, c(3, sl("s", 10, 2, 10)), ""),
            (2, c(4, sl("s", 10, 2, 20)), ""),
            (100, c(1, sr("s", 1)), "c1: ok | c3: ok #3 10"),
            (200, c(5, sl("s", 0, 2, 10)), "c5: timeout"),
            (300, c(2, sr("s", 2)), "c2: ok | c4: ok #4 20"),
            // The lock space is a different resource.
            (300, c(5, r("s", 3)), "c5: error"),
            (300, c(5, sr("s", 3)), "c5: ok"),
        ],
    );
}

#[test]
fn semaphore_several_granted_at_once_when_several_slots_free() {
    // Two holders' leases expire at the same deadline: both waiters granted.
    check(
        cfg(),
        5,
        vec![
            (0, c(1, sl("s", 0, 2, 10)), "c1: ok #1 10"),
            (0, c(2, sl("s", 0, 2, 10)), "c2: ok #2 10"),
            (1, c(3, sl("s", 60, 2, 5)), ""),
            (2, c(4, sl("s", 60, 2, 6)), ""),
            (3, c(5, sl("s", 60, 2, 7)), ""),
            (10000, In::Tick, "c3: ok #3 5 | c4: ok #4 6"),
            (15000, In::Tick, "c5: ok #5 7"),
        ],
    );
    // A connection holding two slots disconnects: both handed off, in token order.
    check(
        cfg(),
        4,
        vec![
            (0, c(1, sl("s", 0, 3, 60)), "c1: ok #1 60"),
            (0, c(1, sl("s", 0, 3, 60)), "c1: ok #2 60"),
            (0, c(2, sl("s", 0, 3, 60)), "c2: ok #3 60"),
            (1, c(3, sl("s", 60, 3, 8)), ""),
            (2, c(4, sl("s", 60, 3, 9)), ""),
            (3, In::Bye(1), "c3: ok #4 8 | c4: ok #5 9"),
        ],
    );
}

// ----- time ---------------------------------------------------------------------

#[test]
fn lease_expiry_hands_off_at_the_deadline_even_when_the_timer_is_late() {
    let mut h = check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (1000, c(2, l("a", 60, 20)), ""),
            // The timer fires 15 s late: the grant happened at 10000.
            (25000, In::Tick, "c2: ok #2 20"),
        ],
    );
    // The new lease runs from the old deadline: 10000 + 20000 = 30000.
    let st = h.stats(25000, 3);
    let a = entry(&st, "locks", "a").unwrap();
    assert_eq!(a["owner_conn_id"], 2);
    assert_eq!(a["lease_expires_in_s"], 5.0);
    assert_eq!(h.poll(), Some(30000));
    run(
        &mut h,
        vec![
            (29999, c(3, l("a", 0, 5)), "c3: timeout"),
            (30000, c(3, l("a", 0, 5)), "c3: ok #3 5"),
        ],
    );
    // The same moment, seen through renew: live at 29999, dead at 30000.
    let mut h = check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (1000, c(2, l("a", 60, 20)), ""),
            (29999, In::Tick, "c2: ok #2 20"),
        ],
    );
    run(&mut h, vec![(29999, c(2, n("a", 2, 1)), "c2: ok 1")]);
    let mut h = check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (1000, c(2, l("a", 60, 20)), ""),
        ],
    );
    // No tick at all: one input advances through the grant and its expiry.
    run(
        &mut h,
        vec![(30000, c(3, l("a", 0, 5)), "c2: ok #2 20 | c3: ok #3 5")],
    );
}

#[test]
fn lease_expiry_without_waiters_frees_the_key() {
    check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 2)), "c1: ok #1 2"),
            (1999, c(2, l("a", 0, 2)), "c2: timeout"),
            (2000, c(2, l("a", 0, 2)), "c2: ok #2 2"),
            (2000, c(1, r("a", 1)), "c1: error"),
        ],
    );
}

#[test]
fn waiter_dead_exactly_at_its_deadline() {
    // Timer at the deadline.
    check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (1000, c(2, l("a", 5, 10)), ""),
            (5999, In::Tick, ""),
            (6000, In::Tick, "c2: timeout"),
            (6000, c(1, r("a", 1)), "c1: ok"),
        ],
    );
    // A release at the waiter's deadline does not grant it.
    check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (1000, c(2, l("a", 5, 10)), ""),
            (6000, c(1, r("a", 1)), "c1: ok | c2: timeout"),
        ],
    );
    // One millisecond earlier it does.
    check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (1000, c(2, l("a", 5, 10)), ""),
            (5999, c(1, r("a", 1)), "c1: ok | c2: ok #2 10"),
        ],
    );
}

#[test]
fn equal_deadlines_lease_expiry_and_waiter_timeout_waiter_times_out() {
    for tick_at in [10000, 15000] {
        check(
            cfg(),
            3,
            vec![
                (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
                (0, c(2, l("a", 10, 10)), ""),
                (tick_at, In::Tick, "c2: timeout"),
                (tick_at, c(3, l("a", 0, 10)), "c3: ok #2 10"),
            ],
        );
    }
    // The next waiter, still alive at the deadline, gets the lock from the deadline.
    let mut h = check(
        cfg(),
        4,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 10, 7)), ""),
            (0, c(3, l("a", 20, 7)), ""),
            (12000, In::Tick, "c2: timeout | c3: ok #2 7"),
        ],
    );
    assert_eq!(h.poll(), Some(17000));
    run(&mut h, vec![(16999, c(4, l("a", 0, 1)), "c4: timeout")]);
}

#[test]
fn renew_extends_sets_custom_or_default_lease_and_fails_after_expiry() {
    check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (5000, c(1, n("a", 1, 20)), "c1: ok 20"),
            (24999, c(2, l("a", 0, 10)), "c2: timeout"),
            (24999, c(1, n("a", 1, 0)), "c1: ok 33"),
            (57998, c(2, l("a", 0, 10)), "c2: timeout"),
            (57999, c(1, n("a", 1, 5)), "c1: error"),
            // Never resurrected: the key is free.
            (57999, c(2, l("a", 0, 10)), "c2: ok #2 10"),
        ],
    );
    check(
        cfg(),
        2,
        vec![
            (0, c(1, sl("s", 0, 2, 3)), "c1: ok #1 3"),
            (2999, c(1, sn("s", 1, 4)), "c1: ok 4"),
            (6998, c(2, sn("s", 1, 0)), "c2: ok 33"),
            (39998, c(2, sn("s", 1, 1)), "c2: error"),
            (39998, c(2, n("s", 1, 1)), "c2: error"),
        ],
    );
}

#[test]
fn release_errors_wrong_token_unknown_key_other_space_and_released_token() {
    let mut bad_salt = tok(1).to_vec();
    bad_salt[31] = if bad_salt[31] == b'0' { b'1' } else { b'0' };
    let upper = tok(1).to_ascii_uppercase();
    let mut h = check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (0, c(1, l("b", 0, 60)), "c1: ok #2 60"),
            (1000, c(2, r("zz", 1)), "c2: error"),
            (1000, c(2, r_raw(Space::Lock, "a", &bad_salt)), "c2: error"),
            (1000, c(2, r_raw(Space::Lock, "a", &upper)), "c2: error"),
            (
                1000,
                c(2, r_raw(Space::Lock, "a", b"not-a-token")),
                "c2: error",
            ),
            (1000, c(2, r("a", 2)), "c2: error"),
            (1000, c(2, sr("a", 1)), "c2: error"),
            (1000, c(2, n("a", 2, 5)), "c2: error"),
        ],
    );
    // Failed releases and renews do not bump activity.
    let st = h.stats(1000, 2);
    assert_eq!(
        entry(&st, "locks", "a").unwrap()["lease_expires_in_s"],
        59.0
    );
    run(
        &mut h,
        vec![
            (2000, c(1, r("a", 1)), "c1: ok"),
            (2000, c(1, r("a", 1)), "c1: error"),
            (6000, c(2, r("a", 1)), "c2: error"),
            (6000, c(2, n("a", 1, 1)), "c2: error"),
        ],
    );
    let st = h.stats(6000, 2);
    assert_eq!(entry(&st, "idle_locks", "a").unwrap()["idle_s"], 4.0);
}

#[test]
fn bearer_token_release_and_renew_from_another_connection() {
    check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(3, l("a", 60, 10)), ""),
            (1000, c(2, n("a", 1, 30)), "c2: ok 30"),
            (2000, c(2, r("a", 1)), "c2: ok | c3: ok #2 10"),
        ],
    );
}

// ----- two-phase -----------------------------------------------------------------

#[test]
fn two_phase_acquired_then_wait_fast_path_resets_the_lease() {
    check(
        cfg(),
        2,
        vec![
            (0, c(1, e("a", 10)), "c1: acquired #1 10"),
            (8000, c(1, w("a", 5)), "c1: ok #1 10"),
            // Lease reset to 8000 + 10000.
            (17999, c(2, l("a", 0, 1)), "c2: timeout"),
            (18000, c(2, l("a", 0, 1)), "c2: ok #2 1"),
            // The record was consumed.
            (18000, c(1, w("a", 5)), "c1: error_not_enqueued"),
        ],
    );
    check(
        cfg(),
        1,
        vec![
            (0, c(1, se("s", 2, 0)), "c1: acquired #1 33"),
            (0, c(1, sw("s", 0)), "c1: ok #1 33"),
        ],
    );
}

#[test]
fn two_phase_second_enqueue_is_already_enqueued() {
    // Acquired case.
    check(
        cfg(),
        1,
        vec![
            (0, c(1, e("a", 10)), "c1: acquired #1 10"),
            (1, c(1, e("a", 10)), "c1: error_already_enqueued"),
            (1, c(1, se("a", 2, 10)), "c1: acquired #2 10"),
            (1, c(1, se("a", 2, 10)), "c1: error_already_enqueued"),
        ],
    );
    // Queued case.
    check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (0, c(2, e("a", 10)), "c2: queued"),
            (1, c(2, e("a", 10)), "c2: error_already_enqueued"),
            // Still only one waiter.
            (2, c(1, r("a", 1)), "c1: ok"),
            (3, c(2, w("a", 0)), "c2: ok #2 10"),
        ],
    );
    // After the waiter was granted silently, its live lease still counts.
    check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (0, c(2, e("a", 10)), "c2: queued"),
            (1, c(1, r("a", 1)), "c1: ok"),
            (2, c(2, e("a", 10)), "c2: error_already_enqueued"),
        ],
    );
}

#[test]
fn two_phase_wait_without_enqueue_is_not_enqueued() {
    check(
        cfg(),
        2,
        vec![
            (0, c(1, w("a", 5)), "c1: error_not_enqueued"),
            (0, c(2, l("a", 0, 10)), "c2: ok #1 10"),
            (0, c(1, w("a", 5)), "c1: error_not_enqueued"),
            (0, c(1, w("a", 0)), "c1: error_not_enqueued"),
            // Another connection's record is not ours; the other space neither.
            (0, c(2, e("b", 10)), "c2: acquired #2 10"),
            (0, c(1, w("b", 0)), "c1: error_not_enqueued"),
            (0, c(2, sw("b", 0)), "c2: error_not_enqueued"),
            (0, c(2, w("b", 0)), "c2: ok #2 10"),
        ],
    );
}

#[test]
fn two_phase_wait_zero_while_queued_times_out_and_loses_the_position() {
    check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (0, c(2, e("a", 10)), "c2: queued"),
            (0, c(3, l("a", 60, 10)), ""),
            (1000, c(2, w("a", 0)), "c2: timeout"),
            (2000, c(1, r("a", 1)), "c1: ok | c3: ok #2 10"),
            (2000, c(2, w("a", 0)), "c2: error_not_enqueued"),
        ],
    );
}

#[test]
fn two_phase_wait_blocks_then_granted_or_times_out() {
    check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (0, c(2, e("a", 10)), "c2: queued"),
            (1000, c(2, w("a", 5)), ""),
            (2000, c(1, r("a", 1)), "c1: ok | c2: ok #2 10"),
            // Lease from the grant: 2000 + 10000.
            (11999, c(3, l("a", 0, 1)), "c3: timeout"),
            (12000, c(3, l("a", 0, 1)), "c3: ok #3 1"),
        ],
    );
    check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (0, c(2, e("a", 10)), "c2: queued"),
            (0, c(3, l("a", 60, 10)), ""),
            (1000, c(2, w("a", 5)), ""),
            (6000, In::Tick, "c2: timeout"),
            (6000, c(2, w("a", 5)), "c2: error_not_enqueued"),
            (7000, c(1, r("a", 1)), "c1: ok | c3: ok #2 10"),
        ],
    );
}

#[test]
fn two_phase_wait_after_acquired_lease_expired_is_lease_expired_d18() {
    check(
        cfg(),
        2,
        vec![
            (0, c(1, e("a", 10)), "c1: acquired #1 10"),
            // Exactly at the deadline, without any tick before.
            (10000, c(1, w("a", 5)), "c1: error_lease_expired"),
            (10000, c(1, w("a", 5)), "c1: error_not_enqueued"),
            (10000, c(1, e("a", 10)), "c1: acquired #2 10"),
            (10000, c(1, w("a", 5)), "c1: ok #2 10"),
        ],
    );
    // An expired record never blocks a fresh `e`, which starts a new record.
    check(
        cfg(),
        2,
        vec![
            (0, c(1, e("a", 10)), "c1: acquired #1 10"),
            (9999, c(1, e("a", 10)), "c1: error_already_enqueued"),
            (10000, c(1, e("a", 10)), "c1: acquired #2 10"),
            (10001, c(1, w("a", 5)), "c1: ok #2 10"),
        ],
    );
    // The slot expired and went to the next waiter; `w` still says lease expired.
    check(
        cfg(),
        2,
        vec![
            (0, c(1, e("a", 10)), "c1: acquired #1 10"),
            (0, c(2, l("a", 60, 10)), ""),
            (10000, In::Tick, "c2: ok #2 10"),
            (12000, c(1, w("a", 5)), "c1: error_lease_expired"),
        ],
    );
}

#[test]
fn two_phase_queued_enqueue_granted_before_wait_then_wait_returns_it() {
    check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (0, c(2, e("a", 20)), "c2: queued"),
            (3000, c(1, r("a", 1)), "c1: ok"),
            (5000, c(2, w("a", 1)), "c2: ok #2 20"),
            // Lease reset by `w`: 5000 + 20000.
            (24999, c(3, l("a", 0, 1)), "c3: timeout"),
            (25000, c(3, l("a", 0, 1)), "c3: ok #3 1"),
        ],
    );
    // Granted silently by a lease expiry at the old deadline, then `sw`.
    check(
        cfg(),
        2,
        vec![
            (0, c(1, sl("s", 0, 1, 10)), "c1: ok #1 10"),
            (0, c(2, se("s", 1, 5)), "c2: queued"),
            (14999, c(2, sw("s", 0)), "c2: ok #2 5"),
        ],
    );
}

#[test]
fn two_phase_queued_enqueue_granted_then_expired_before_wait_is_lease_expired() {
    check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, e("a", 5)), "c2: queued"),
            // Granted at 10000 with a lease until 15000, then expired.
            (15000, c(2, w("a", 10)), "c2: error_lease_expired"),
            (15000, c(3, l("a", 0, 1)), "c3: ok #3 1"),
        ],
    );
}

#[test]
fn two_phase_release_of_the_token_clears_the_record() {
    check(
        cfg(),
        2,
        vec![
            (0, c(1, e("a", 10)), "c1: acquired #1 10"),
            (1, c(1, r("a", 1)), "c1: ok"),
            (2, c(1, w("a", 0)), "c1: error_not_enqueued"),
            // Queued, granted silently, then released by another connection.
            (3, c(2, l("a", 0, 60)), "c2: ok #2 60"),
            (4, c(1, e("a", 10)), "c1: queued"),
            (5, c(2, r("a", 2)), "c2: ok"),
            (6, c(2, r("a", 3)), "c2: ok"),
            (7, c(1, w("a", 0)), "c1: error_not_enqueued"),
        ],
    );
}

#[test]
fn two_phase_release_does_not_clobber_another_pending_record_edge26() {
    // Same key: the connection's own earlier `l` is released while its `e` waits.
    check(
        cfg(),
        1,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(1, e("a", 10)), "c1: queued"),
            (1, c(1, r("a", 1)), "c1: ok"),
            (2, c(1, w("a", 0)), "c1: ok #2 10"),
        ],
    );
    // Different key.
    check(
        cfg(),
        1,
        vec![
            (0, c(1, e("a", 10)), "c1: acquired #1 10"),
            (0, c(1, e("b", 10)), "c1: acquired #2 10"),
            (1, c(1, r("a", 1)), "c1: ok"),
            (2, c(1, w("b", 0)), "c1: ok #2 10"),
        ],
    );
    // Same semaphore: the connection holds one slot from `sl` and another
    // from `se`; releasing the first keeps the record naming the second.
    check(
        cfg(),
        2,
        vec![
            (0, c(1, sl("s", 0, 2, 10)), "c1: ok #1 10"),
            (0, c(1, se("s", 2, 10)), "c1: acquired #2 10"),
            (1, c(2, sr("s", 1)), "c2: ok"),
            (2, c(1, sw("s", 0)), "c1: ok #2 10"),
        ],
    );
}

#[test]
fn removed_waiters_do_not_accumulate_in_a_queue_behind_a_live_waiter() {
    // c2's two-phase waiter sits at the head for as long as c1 holds the
    // lock; c3 and c4 keep joining and leaving behind it.
    let mut h = check(
        CoreConfig {
            max_waiters: 3,
            ..cfg()
        },
        4,
        vec![
            (0, c(1, l("a", 0, 86400)), "c1: ok #1 86400"),
            (0, c(2, e("a", 10)), "c2: queued"),
        ],
    );
    let mut t = 0;
    for _ in 0..5000 {
        assert_eq!(h.send(t, 3, e("a", 10)), "c3: queued");
        assert_eq!(h.send(t, 3, w("a", 0)), "c3: timeout");
        assert_eq!(h.send(t, 4, l("a", 1, 10)), "");
        t += 1000;
        assert_eq!(h.tick(t), "c4: timeout");
    }
    let entries = h.core.queue_entries(Space::Lock, &key("a"));
    assert!(entries <= 16, "{entries} queue entries for one live waiter");
    // FIFO is intact.
    run(
        &mut h,
        vec![
            (t, c(4, l("a", 60, 10)), ""),
            (t, c(1, r("a", 1)), "c1: ok"),
            (t, c(2, w("a", 0)), "c2: ok #2 10"),
            (t, c(2, r("a", 2)), "c2: ok | c4: ok #3 10"),
        ],
    );
}

#[test]
fn many_waiters_dead_at_the_lease_deadline_do_not_recurse_per_waiter() {
    // A holder's lease and a whole herd of waiters end at the same instant:
    // the hand-off at that instant times every waiter out. That must not
    // take stack proportional to the herd.
    const HERD: u64 = 100_000;
    let mut h = H::new(cfg(), HERD + 2);
    assert_eq!(h.send(0, 1, l("a", 0, 30)), "c1: ok #1 30");
    let mut out = Vec::new();
    for conn in 2..HERD + 2 {
        h.core
            .handle(Time(0), ConnId(conn), l("a", 30, 10), &mut out);
    }
    assert!(out.is_empty());
    h.core.handle_timeout(Time(30_000), &mut out);
    assert_eq!(out.len() as u64, HERD);
    assert!(out.iter().all(|e| matches!(
        e,
        Effect::Reply {
            reply: Reply::Status(Status::Timeout),
            ..
        }
    )));
    assert_eq!(
        h.send(30_000, HERD + 1, l("a", 0, 10)),
        format!("c{}: ok #2 10", HERD + 1)
    );
}

// ----- limits ---------------------------------------------------------------------------

#[test]
fn max_waiters_on_all_four_enqueue_paths_including_timeout_zero() {
    let cfg = CoreConfig {
        max_waiters: 1,
        ..cfg()
    };
    check(
        cfg,
        4,
        vec![
            // Locks: one blocking waiter fills the queue.
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            (0, c(2, l("a", 60, 10)), ""),
            (0, c(3, l("a", 60, 10)), "c3: error_max_waiters"),
            (0, c(3, l("a", 0, 10)), "c3: error_max_waiters"),
            (0, c(3, e("a", 10)), "c3: error_max_waiters"),
            // Semaphores: a two-phase waiter fills the queue.
            (0, c(1, sl("s", 0, 1, 60)), "c1: ok #2 60"),
            (0, c(3, se("s", 1, 10)), "c3: queued"),
            (0, c(4, sl("s", 60, 1, 10)), "c4: error_max_waiters"),
            (0, c(4, sl("s", 0, 1, 10)), "c4: error_max_waiters"),
            (0, c(4, se("s", 1, 10)), "c4: error_max_waiters"),
            // Room again once the waiter leaves.
            (1, c(3, sw("s", 0)), "c3: timeout"),
            (1, c(4, sl("s", 0, 1, 10)), "c4: timeout"),
            (1, c(4, se("s", 1, 10)), "c4: queued"),
        ],
    );
}

#[test]
fn max_locks_shared_by_locks_and_semaphores_and_namespaces_count_twice() {
    let cfg = CoreConfig {
        max_locks: 2,
        ..cfg()
    };
    check(
        cfg,
        2,
        vec![
            (0, c(1, l("a", 0, 60)), "c1: ok #1 60"),
            // Same key in the semaphore space is a second resource.
            (0, c(1, sl("a", 0, 2, 60)), "c1: ok #2 60"),
            (0, c(1, l("b", 0, 60)), "c1: error_max_locks"),
            (0, c(1, sl("b", 0, 2, 60)), "c1: error_max_locks"),
            (0, c(1, e("b", 60)), "c1: error_max_locks"),
            (0, c(1, se("b", 2, 60)), "c1: error_max_locks"),
            // Existing resources still work.
            (0, c(2, l("a", 0, 60)), "c2: timeout"),
            (0, c(2, sl("a", 0, 2, 60)), "c2: ok #3 60"),
            // Releasing does not delete a resource (GC does).
            (1, c(1, r("a", 1)), "c1: ok"),
            (1, c(1, l("b", 0, 60)), "c1: error_max_locks"),
        ],
    );
}

#[test]
fn limit_mismatch_changes_nothing_and_does_not_bump_activity() {
    let mut h = check(
        cfg(),
        2,
        vec![
            (0, c(1, sl("s", 0, 2, 60)), "c1: ok #1 60"),
            (0, c(1, sr("s", 1)), "c1: ok"),
            (1000, c(2, sl("s", 0, 3, 60)), "c2: error_limit_mismatch"),
            (1000, c(2, se("s", 1, 60)), "c2: error_limit_mismatch"),
            (1000, c(2, sl("s", 60, 1, 60)), "c2: error_limit_mismatch"),
            // The lock space has no limit to mismatch.
            (1000, c(2, l("s", 0, 60)), "c2: ok #2 60"),
        ],
    );
    let st = h.stats(3000, 2);
    let s = entry(&st, "idle_semaphores", "s").unwrap();
    assert_eq!(s["idle_s"], 3.0);
    assert!(h.core.owns_anything(ConnId(2)));
}

// ----- GC ---------------------------------------------------------------------------------

fn gc_cfg() -> CoreConfig {
    CoreConfig {
        gc_interval_s: 5,
        gc_max_idle_s: 10,
        ..cfg()
    }
}

#[test]
fn gc_removes_idle_resources_strictly_after_max_idle_at_gc_ticks() {
    let mut h = check(
        gc_cfg(),
        1,
        vec![
            (0, c(1, l("a", 0, 100)), "c1: ok #1 100"),
            (5000, c(1, r("a", 1)), "c1: ok"),
        ],
    );
    // GC ticks at 5000, 10000, 15000, 20000. At 15000 the key has been idle
    // exactly 10 s: not strictly more, kept.
    assert_eq!(h.poll(), Some(10000));
    let st = h.stats(15000, 1);
    assert_eq!(entry(&st, "idle_locks", "a").unwrap()["idle_s"], 10.0);
    let st = h.stats(19999, 1);
    assert!(entry(&st, "idle_locks", "a").is_some());
    assert_eq!(h.poll(), Some(20000));
    assert_eq!(h.tick(20000), "");
    let st = h.stats(20000, 1);
    assert_eq!(st["idle_locks"], json!([]));
}

#[test]
fn gc_never_removes_a_held_key() {
    let mut h = check(
        gc_cfg(),
        1,
        vec![(0, c(1, l("a", 0, 100)), "c1: ok #1 100")],
    );
    let st = h.stats(99_999, 1);
    assert!(entry(&st, "locks", "a").is_some());
    // Held by a connection that went away with auto-release off: still held.
    let cfg = CoreConfig {
        auto_release_on_disconnect: false,
        ..gc_cfg()
    };
    let mut h = check(
        cfg,
        2,
        vec![
            (0, c(1, sl("s", 0, 2, 100)), "c1: ok #1 100"),
            (0, In::Bye(1), ""),
        ],
    );
    let st = h.stats(99_999, 2);
    assert_eq!(entry(&st, "semaphores", "s").unwrap()["holders"], 1);
}

#[test]
fn gc_never_removes_a_key_with_waiters() {
    // Waiters without holders only exist while hand-off is stalled at the
    // fence ceiling.
    let cfg = CoreConfig {
        fence_ceiling: 1,
        ..gc_cfg()
    };
    let mut h = check(
        cfg,
        2,
        vec![
            (0, c(1, l("a", 0, 1)), "c1: ok #1 1"),
            (0, c(2, e("a", 10)), "c2: queued"),
        ],
    );
    let st = h.stats(60_000, 1);
    let a = entry(&st, "locks", "a").unwrap();
    assert_eq!(a["owner_conn_id"], 0);
    assert_eq!(a["waiters"], 1);
    let mut out = Vec::new();
    h.core.raise_fence_ceiling(Time(60_000), 10, &mut out);
    assert_eq!(show(&out), "");
    run(&mut h, vec![(60_000, c(2, w("a", 0)), "c2: ok #2 10")]);
}

#[test]
fn gc_never_removes_a_key_referenced_by_a_two_phase_record() {
    let mut h = check(gc_cfg(), 1, vec![(0, c(1, e("a", 1)), "c1: acquired #1 1")]);
    // Lease expired at 1000; the granted record survives (D18) and pins the key.
    let st = h.stats(60_000, 1);
    assert!(entry(&st, "idle_locks", "a").is_some());
    run(
        &mut h,
        vec![(60_000, c(1, w("a", 0)), "c1: error_lease_expired")],
    );
    // Record consumed: collected at the next tick (idle since 0, the grant).
    assert_eq!(h.tick(65_000), "");
    let st = h.stats(65_000, 1);
    assert_eq!(st["idle_locks"], json!([]));
}

#[test]
fn gc_lets_a_semaphore_be_recreated_with_another_limit_and_frees_max_locks() {
    let cfg = CoreConfig {
        max_locks: 1,
        ..gc_cfg()
    };
    check(
        cfg,
        1,
        vec![
            (0, c(1, sl("s", 0, 2, 1)), "c1: ok #1 1"),
            (0, c(1, sr("s", 1)), "c1: ok"),
            (10_000, c(1, sl("s", 0, 3, 1)), "c1: error_limit_mismatch"),
            (10_000, c(1, l("b", 0, 1)), "c1: error_max_locks"),
            // Collected at the GC tick of 15000 (idle 15 s > 10 s).
            (15_000, c(1, sl("s", 0, 3, 1)), "c1: ok #2 1"),
            (16_000, c(1, l("b", 0, 1)), "c1: error_max_locks"),
            (30_000, c(1, l("b", 0, 1)), "c1: ok #3 1"),
        ],
    );
}

// ----- disconnect ------------------------------------------------------------------------------

#[test]
fn disconnect_with_auto_release_releases_in_token_order_and_drops_waiters_and_records() {
    let mut h = check(
        cfg(),
        6,
        vec![
            (0, c(4, l("x", 0, 60)), "c4: ok #1 60"),
            (0, c(1, l("a", 0, 10)), "c1: ok #2 10"),
            (0, c(1, l("b", 0, 10)), "c1: ok #3 10"),
            (0, c(1, e("x", 10)), "c1: queued"),
            (0, c(1, e("y", 10)), "c1: acquired #4 10"),
            (0, c(6, l("y", 60, 10)), ""),
            (0, c(5, l("x", 60, 10)), ""),
            (0, c(1, l("x", 60, 10)), ""),
            (0, c(2, l("b", 60, 10)), ""),
            (0, c(3, l("a", 60, 10)), ""),
        ],
    );
    assert!(h.core.owns_anything(ConnId(1)));
    assert_eq!(h.core.connection_count(), 6);
    // a (#2) is released before b (#3), then y (#4).
    run(
        &mut h,
        vec![(
            1000,
            In::Bye(1),
            "c2: ok #6 10 | c3: ok #5 10 | c6: ok #7 10",
        )],
    );
    assert_eq!(h.core.connection_count(), 5);
    assert!(!h.core.owns_anything(ConnId(1)));
    assert!(!h.core.is_blocked(ConnId(1)));
    // c1's two waiters on x are gone: c5 is next.
    run(
        &mut h,
        vec![(2000, c(4, r("x", 1)), "c4: ok | c5: ok #8 10")],
    );
    let st = h.stats(2000, 4);
    assert_eq!(entry(&st, "locks", "x").unwrap()["waiters"], 0);
    assert_eq!(st["connections"], 5);
}

#[test]
fn disconnect_without_auto_release_keeps_held_slots_until_expiry_d6() {
    let cfg = CoreConfig {
        auto_release_on_disconnect: false,
        ..cfg()
    };
    let mut h = check(
        cfg,
        5,
        vec![
            (0, c(4, l("x", 0, 60)), "c4: ok #1 60"),
            (0, c(1, l("a", 0, 10)), "c1: ok #2 10"),
            (0, c(1, e("b", 20)), "c1: acquired #3 20"),
            (0, c(1, e("x", 10)), "c1: queued"),
            (0, c(1, l("x", 60, 10)), ""),
            (0, c(5, l("x", 60, 10)), ""),
            (0, c(2, l("a", 60, 10)), ""),
            (0, c(3, l("b", 60, 10)), ""),
            (1000, In::Bye(1), ""),
        ],
    );
    // The dead connection no longer owns anything, but its slots are held.
    assert!(!h.core.owns_anything(ConnId(1)));
    let st = h.stats(1000, 4);
    assert_eq!(entry(&st, "locks", "a").unwrap()["owner_conn_id"], 1);
    run(
        &mut h,
        vec![
            // Waiters and records of c1 are gone: c5 is next on x.
            (2000, c(4, r("x", 1)), "c4: ok | c5: ok #4 10"),
            (10000, In::Tick, "c2: ok #5 10"),
            // Bearer release of the dead connection's slot.
            (11000, c(4, r("b", 3)), "c3: ok #6 10 | c4: ok"),
        ],
    );
}

#[test]
fn disconnected_blocked_waiter_is_never_granted() {
    let mut h = check(
        cfg(),
        4,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 60, 10)), ""),
            (0, c(3, sl("s", 0, 1, 10)), "c3: ok #2 10"),
            (0, c(4, sl("s", 60, 1, 10)), ""),
            (1000, In::Bye(2), ""),
            (1000, In::Bye(4), ""),
            (2000, c(1, r("a", 1)), "c1: ok"),
            (10000, In::Tick, ""),
        ],
    );
    let st = h.stats(10000, 1);
    assert!(entry(&st, "idle_locks", "a").is_some());
    // A limit-1 semaphore is listed with the locks.
    assert!(entry(&st, "idle_locks", "s").is_some());
    assert_eq!(st["idle_semaphores"], json!([]));
}

// ----- auth, draining, invalid requests -------------------------------------------------------------

fn auth_cfg() -> CoreConfig {
    CoreConfig {
        auth_token: Some(b"sekrit".to_vec()),
        ..cfg()
    }
}

#[test]
fn auth_first_request_must_be_auth_with_the_right_token() {
    check(
        auth_cfg(),
        8,
        vec![
            (0, c(1, auth("sekrit")), "c1: ok"),
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(1, auth("sekrit")), "c1: error"),
            (
                0,
                c(2, auth("wrong")),
                "c2: error_auth | c2: close (auth 100ms)",
            ),
            (
                0,
                c(3, auth("sekri")),
                "c3: error_auth | c3: close (auth 100ms)",
            ),
            (
                0,
                c(4, auth("sekrit2")),
                "c4: error_auth | c4: close (auth 100ms)",
            ),
            (
                0,
                c(5, l("a", 0, 10)),
                "c5: error_auth | c5: close (auth 100ms)",
            ),
            (
                0,
                c(6, Request::Ping),
                "c6: error_auth | c6: close (auth 100ms)",
            ),
            (
                0,
                In::Bad(7, false),
                "c7: error_auth | c7: close (auth 100ms)",
            ),
            (0, c(8, auth("")), "c8: error_auth | c8: close (auth 100ms)"),
        ],
    );
}

#[test]
fn auth_without_a_configured_token_is_an_error_and_commands_work_directly() {
    check(
        cfg(),
        1,
        vec![
            (0, c(1, Request::Ping), "c1: ok"),
            (0, c(1, auth("anything")), "c1: error"),
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
        ],
    );
}

#[test]
fn draining_answers_blocked_requests_error_then_error_draining_and_close() {
    let mut h = check(
        cfg(),
        6,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 60, 10)), ""),
            (0, c(3, e("a", 10)), "c3: queued"),
            (0, c(3, w("a", 60)), ""),
            (0, c(4, e("a", 10)), "c4: queued"),
            (1000, In::Drain, "c2: error | c3: error"),
        ],
    );
    assert!(h.core.is_draining());
    assert!(!h.core.is_blocked(ConnId(2)));
    assert!(!h.core.owns_anything(ConnId(2)));
    run(
        &mut h,
        vec![
            (
                1000,
                c(1, r("a", 1)),
                "c1: error_draining | c1: close (draining)",
            ),
            (
                1000,
                c(5, Request::Ping),
                "c5: error_draining | c5: close (draining)",
            ),
            (
                1000,
                In::Bad(6, true),
                "c6: error_draining | c6: close (draining)",
            ),
            // Leases still expire; the remaining two-phase waiter is granted
            // silently, nobody else is.
            (10000, In::Tick, ""),
            (
                10000,
                c(4, w("a", 0)),
                "c4: error_draining | c4: close (draining)",
            ),
        ],
    );
}

#[test]
fn invalid_request_non_fatal_keeps_the_connection_fatal_closes_it() {
    check(
        cfg(),
        2,
        vec![
            (0, In::Bad(1, false), "c1: error"),
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, In::Bad(2, true), "c2: error | c2: close (overlong)"),
        ],
    );
}

// ----- read deadlines, cancel (the decisions drivers used to make) --------------------------------------

/// Semantics §9.2, D11: an owner stays at its read deadline (a slot, a
/// two-phase record even after its lease, a subscription); an idle
/// connection that owns nothing is closed with `error`; a stalled request
/// is cut, owner or not; a blocked connection has no read deadline.
#[test]
fn read_deadline_keeps_owners_and_cuts_the_rest() {
    let listen = Request::Listen {
        pattern: key("x"),
        group: None,
    };
    check(
        cfg(),
        5,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(4, listen), "c4: ok"),
            (0, c(5, l("a", 60, 10)), ""),
            (5000, In::Deadline(1, false), ""),
            (5000, In::Deadline(4, false), ""),
            (5000, In::Deadline(5, false), ""),
            (5000, In::Deadline(2, false), "c2: error | c2: close (idle)"),
            (5000, c(3, e("b", 10)), "c3: acquired #2 10"),
            // c1's lease ended at 10 s (and c5 got the lock): c1 owns nothing.
            (
                11000,
                In::Deadline(1, false),
                "c1: error | c1: close (idle) | c5: ok #3 10",
            ),
            (30000, In::Deadline(3, false), ""),
            (
                30000,
                In::Deadline(3, true),
                "c3: error | c3: close (stalled)",
            ),
        ],
    );
}

/// Before authentication the closing answer is `error_auth`, and the close
/// waits the configured pause; while draining it is `error_draining`.
#[test]
fn read_deadline_before_auth_and_while_draining() {
    let cfg = CoreConfig {
        auth_failure_pause_ms: 250,
        ..auth_cfg()
    };
    check(
        cfg,
        3,
        vec![
            (0, c(1, auth("sekrit")), "c1: ok"),
            (
                0,
                In::Deadline(2, true),
                "c2: error_auth | c2: close (auth 250ms)",
            ),
            (
                0,
                c(3, Request::Ping),
                "c3: error_auth | c3: close (auth 250ms)",
            ),
            (1000, In::Drain, ""),
            (
                1000,
                In::Deadline(1, false),
                "c1: error_draining | c1: close (draining)",
            ),
        ],
    );
}

/// Semantics §9.1: a cancel is one input whichever came first. Still
/// blocked: withdrawn (`timeout`). Granted since, with nothing sent after:
/// the grant is released and the queue moves on. Anything sent since makes
/// the grant the connection's own.
#[test]
fn cancel_withdraws_or_releases_the_grant_that_beat_it() {
    let mut h = check(
        cfg(),
        4,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 30, 10)), ""),
            (0, c(3, l("a", 30, 10)), ""),
            (0, c(4, l("a", 30, 10)), ""),
            (1000, c(1, r("a", 1)), "c1: ok | c2: ok #2 10"),
            (1000, In::Cancel(2), "c3: ok #3 10"),
            (1000, In::Cancel(2), ""),
            (2000, In::Cancel(4), "c4: timeout"),
            (2000, c(3, Request::Ping), "c3: ok"),
            (2000, In::Cancel(3), ""),
        ],
    );
    assert_eq!(h.core.owned(ConnId(2)).held, 0);
    assert_eq!(h.core.owned(ConnId(3)).held, 1);
    // A grant released or expired before the cancel leaves nothing to do.
    run(
        &mut h,
        vec![
            (2000, c(1, l("a", 30, 10)), ""),
            (12000, In::Tick, "c1: ok #4 10"),
            (23000, In::Cancel(1), ""),
        ],
    );
    assert_eq!(h.core.owned(ConnId(1)).held, 0);
}

// ----- fencing tokens ---------------------------------------------------------------------------------

#[test]
fn fencing_tokens_strictly_increase_across_keys_spaces_and_kinds_of_grant() {
    check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(1, sl("a", 0, 2, 10)), "c1: ok #2 10"),
            (0, c(2, e("b", 10)), "c2: acquired #3 10"),
            (0, c(3, l("a", 60, 10)), ""),
            (0, c(2, se("c", 1, 10)), "c2: acquired #4 10"),
            (5, c(1, r("a", 1)), "c1: ok | c3: ok #5 10"),
            (6, c(2, sl("c", 60, 1, 10)), ""),
            (10000, In::Tick, "c2: ok #6 10"),
        ],
    );
}

#[test]
fn first_fence_is_fence_start_plus_one_and_salt_is_token_salt() {
    let cfg = CoreConfig {
        fence_start: 1_000_000,
        ..cfg()
    };
    let mut h = H::new(cfg, 1);
    let mut out = Vec::new();
    h.core.handle(Time(0), ConnId(1), l("a", 0, 10), &mut out);
    let [Effect::Reply {
        reply: Reply::Granted { token, lease_s: 10 },
        ..
    }] = out.as_slice()
    else {
        panic!("{}", show(&out));
    };
    assert_eq!(token.fence, 1_000_001);
    assert_eq!(token.salt, token_salt(SALT, 1_000_001));
    assert_eq!(h.core.last_fence(), 1_000_001);
    let text = token.to_string();
    assert_eq!(text.len(), 32);
    assert_eq!(&text[..16], "00000000000f4241");
    assert_eq!(&text[16..], format!("{:016x}", token_salt(SALT, 1_000_001)));
    // The salt depends on the key.
    assert_ne!(token_salt([1, 2], 5), token_salt([1, 3], 5));
    assert_ne!(token_salt(SALT, 5), token_salt(SALT, 6));
}

#[test]
fn token_salt_is_siphash_2_4_of_the_fence_reference_vector() {
    // SipHash-2-4 reference vector: key 00..0f, message 00..07 (the fence
    // 0x0706050403020100 as 8 little-endian bytes).
    let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
    assert_eq!(
        token_salt(key, 0x0706_0504_0302_0100),
        0x93f5_f579_9a93_2462
    );
}

// semantics.md §6: at the ceiling nothing is granted and nothing is
// refused: a request that would be granted at once queues like any other
// (`l k 0` answers `timeout`, `e` answers `queued`), hand-offs stop, and a
// raise resumes the stopped resources in the arrival order of their oldest
// waiter, as far as the new ceiling allows.
#[test]
fn fence_ceiling_queues_grants_and_a_raise_serves_them_in_arrival_order() {
    let cfg = CoreConfig {
        fence_ceiling: 2,
        ..cfg()
    };
    let mut h = check(
        cfg,
        5,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("b", 0, 10)), "c2: ok #2 10"),
            // Free keys, but no fence to issue: never `error`.
            (0, c(3, l("c", 0, 10)), "c3: timeout"),
            (0, c(3, sl("s", 0, 2, 10)), "c3: timeout"),
            (0, c(4, l("a", 60, 10)), ""),
            (0, c(5, l("c", 5, 10)), ""),
            (0, c(3, e("d", 10)), "c3: queued"),
            // The release's hand-off stops at the ceiling.
            (1000, c(1, r("a", 1)), "c1: ok"),
            // Queue order holds while stalled: a newcomer does not overtake.
            (1000, c(2, l("a", 0, 10)), "c2: timeout"),
        ],
    );
    assert_eq!(h.core.fence_headroom(), 0);
    let st = h.stats(2000, 2);
    let a = entry(&st, "locks", "a").unwrap();
    assert_eq!(
        (a["owner_conn_id"].clone(), a["waiters"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(entry(&st, "locks", "c").unwrap()["waiters"], json!(1));
    run(
        &mut h,
        vec![
            // A lower ceiling is ignored.
            (2000, In::Raise(1), ""),
            // One fence: the oldest waiter (c4 on `a`) gets it; `c` and `d`
            // stay stopped.
            (2500, In::Raise(3), "c4: ok #3 10"),
            // Two more: c5 on `c`, then c3's two-phase record on `d`.
            (3000, In::Raise(5), "c5: ok #4 10"),
            (3000, c(3, w("d", 0)), "c3: ok #5 10"),
            (3000, In::Raise(10), ""),
            (3000, c(3, l("s", 0, 10)), "c3: ok #6 10"),
        ],
    );
    // The lease of a grant made at a raise runs from the raise.
    assert_eq!(h.tick(10000), "");
    assert_eq!(h.poll(), Some(12500));
}

// A blocked acquire on a free key is served by the raise within its
// timeout, or times out at its deadline if the ceiling does not rise.
#[test]
fn fence_ceiling_blocked_acquire_on_a_free_key() {
    let cfg = CoreConfig {
        fence_ceiling: 0,
        ..cfg()
    };
    check(
        cfg,
        2,
        vec![
            (0, c(1, l("a", 2, 10)), ""),
            (0, c(2, sl("b", 1, 3, 10)), ""),
            (1000, In::Tick, "c2: timeout"),
            (1500, In::Raise(1), "c1: ok #1 10"),
        ],
    );
}

#[test]
fn fence_ceiling_stalled_waiter_that_times_out_is_never_granted() {
    let cfg = CoreConfig {
        fence_ceiling: 1,
        ..cfg()
    };
    check(
        cfg,
        2,
        vec![
            (0, c(1, l("a", 0, 1)), "c1: ok #1 1"),
            (0, c(2, l("a", 5, 10)), ""),
            (5000, In::Tick, "c2: timeout"),
            (6000, In::Raise(5), ""),
        ],
    );
}

// ----- poll_timeout, time, stats, ownership --------------------------------------------------------------

#[test]
fn poll_timeout_is_the_earliest_lease_waiter_or_gc_deadline() {
    let cfg = CoreConfig {
        gc_interval_s: 5,
        ..cfg()
    };
    let mut h = H::new(cfg, 3);
    assert_eq!(h.poll(), Some(5000));
    assert_eq!(h.send(1000, 1, l("a", 0, 3)), "c1: ok #1 3");
    assert_eq!(h.poll(), Some(4000));
    assert_eq!(h.send(1500, 2, l("a", 2, 10)), "");
    assert_eq!(h.poll(), Some(3500));
    // A two-phase waiter has no deadline.
    assert_eq!(h.send(1500, 3, e("a", 10)), "c3: queued");
    assert_eq!(h.poll(), Some(3500));
    assert_eq!(h.tick(3499), "");
    assert_eq!(h.tick(3500), "c2: timeout");
    assert_eq!(h.poll(), Some(4000));
    assert_eq!(h.tick(4000), "");
    // c3's record was granted at 4000 for 10 s.
    assert_eq!(h.poll(), Some(5000));
    assert_eq!(h.tick(5000), "");
    assert_eq!(h.poll(), Some(10000));
    assert_eq!(h.tick(10000), "");
    assert_eq!(h.poll(), Some(14000));
    assert_eq!(h.send(10000, 3, w("a", 0)), "c3: ok #2 10");
    assert_eq!(h.poll(), Some(15000));
    assert_eq!(h.tick(15000), "");
    assert_eq!(h.poll(), Some(20000));
}

#[test]
#[should_panic(expected = "time went back")]
fn time_going_back_panics() {
    let mut h = H::new(cfg(), 1);
    h.tick(1000);
    h.tick(999);
}

#[test]
fn connect_and_stats_advance_time_too() {
    let mut h = check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 5, 10)), ""),
            (5000, In::Connect, "c2: timeout | c3: connected"),
        ],
    );
    assert_eq!(h.core.connection_count(), 3);
    let st = h.stats(10000, 3);
    assert_eq!(st["locks"], json!([]));
}

#[test]
fn stats_json_shape_fields_sorted_entries_and_classification() {
    let mut h = check(
        cfg(),
        3,
        vec![
            (0, c(1, sl("z", 0, 3, 60)), "c1: ok #1 60"),
            (0, c(1, l("b", 0, 60)), "c1: ok #2 60"),
            (0, c(1, r("b", 2)), "c1: ok"),
            (0, c(1, sl("u", 0, 2, 60)), "c1: ok #3 60"),
            (0, c(1, sr("u", 3)), "c1: ok"),
            (0, c(1, sl("a", 0, 3, 60)), "c1: ok #4 60"),
            (0, c(1, sr("a", 4)), "c1: ok"),
            (500, c(2, sl("t", 0, 1, 60)), "c2: ok #5 60"),
            (1000, c(1, l("a", 0, 10)), "c1: ok #6 10"),
            (1000, c(2, l("a", 60, 10)), ""),
            (1000, c(3, sl("\u{e9}", 0, 1, 0)), "c3: ok #7 33"),
        ],
    );
    let mut out = Vec::new();
    h.core
        .handle(Time(3500), ConnId(3), Request::Stats, &mut out);
    let [Effect::Reply {
        reply: Reply::Stats(raw),
        ..
    }] = out.as_slice()
    else {
        panic!("{}", show(&out));
    };
    assert!(raw.starts_with(r#"{"connections":3,"locks":[{"key":"a","owner_conn_id":1,"#));
    assert!(raw.ends_with(r#""signal_channels":[]}"#));
    let st: Value = serde_json::from_str(raw).unwrap();
    assert_eq!(
        st,
        json!({
            "connections": 3,
            "locks": [
                {"key": "a", "owner_conn_id": 1, "lease_expires_in_s": 7.5, "waiters": 1},
                {"key": "t", "owner_conn_id": 2, "lease_expires_in_s": 57.0, "waiters": 0},
                {"key": "\u{e9}", "owner_conn_id": 3, "lease_expires_in_s": 30.5, "waiters": 0},
            ],
            "semaphores": [
                {"key": "z", "limit": 3, "holders": 1, "waiters": 0},
            ],
            "idle_locks": [
                {"key": "b", "idle_s": 3.5},
            ],
            "idle_semaphores": [
                {"key": "a", "idle_s": 3.5},
                {"key": "u", "idle_s": 3.5},
            ],
            "signal_channels": [],
        })
    );
    // Never in both lists, and a waiter-only lock shows owner 0.
    run(
        &mut h,
        vec![
            (3500, In::Bye(2), ""),
            (3500, c(1, r("a", 6)), "c1: ok"),
            (3500, c(3, sl("z", 0, 3, 60)), "c3: ok #8 60"),
        ],
    );
    let st = h.stats(3500, 3);
    assert_eq!(st["connections"], 2);
    assert!(entry(&st, "idle_locks", "a").is_some());
    assert!(entry(&st, "locks", "a").is_none());
    assert_eq!(entry(&st, "semaphores", "z").unwrap()["holders"], 2);
}

#[test]
fn stats_renders_non_utf8_and_control_bytes_in_keys_on_one_line() {
    let mut h = H::new(cfg(), 1);
    let k = Key::new(b"k\xff").unwrap();
    let mut out = Vec::new();
    h.core.handle(
        Time(0),
        ConnId(1),
        Request::Acquire {
            space: Space::Lock,
            key: k,
            timeout_s: 0,
            limit: 1,
            lease_s: Some(1),
        },
        &mut out,
    );
    assert_eq!(show(&out), "c1: ok #1 1");
    let st = h.stats(0, 1);
    assert_eq!(st["locks"][0]["key"], "k\u{fffd}");
    // Quotes, backslashes and control bytes stay inside one JSON line.
    let k = Key::new(b"q\"\\\x01\x0b\x7f").unwrap();
    let mut out = Vec::new();
    let req = Request::Enqueue {
        space: Space::Sem,
        key: k,
        limit: 2,
        lease_s: Some(1),
    };
    h.core.handle(Time(0), ConnId(1), req, &mut out);
    assert_eq!(show(&out), "c1: acquired #2 1");
    let st = h.stats(0, 1);
    assert_eq!(st["semaphores"][0]["key"], "q\"\\\u{1}\u{b}\u{7f}");
}

#[test]
fn owns_anything_for_each_kind_of_ownership() {
    let mut h = H::new(cfg(), 7);
    assert!(!h.core.owns_anything(ConnId(1)));
    assert!(!h.core.owns_anything(ConnId(99)));
    assert!(!h.core.is_blocked(ConnId(99)));
    run(
        &mut h,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 60, 10)), ""),
            (0, c(3, e("a", 10)), "c3: queued"),
            (0, c(4, e("b", 1)), "c4: acquired #2 1"),
            (0, c(5, sl("s", 0, 1, 10)), "c5: ok #3 10"),
            (0, c(6, Request::Ping), "c6: ok"),
            (0, c(7, e("c", 1)), "c7: acquired #4 1"),
            (0, c(7, w("c", 0)), "c7: ok #4 1"),
        ],
    );
    // holder; blocked waiter; queued record; granted record; semaphore slot; nothing.
    let owns: Vec<bool> = (1..=7).map(|i| h.core.owns_anything(ConnId(i))).collect();
    assert_eq!(owns, [true, true, true, true, true, false, true]);
    let blocked: Vec<bool> = (1..=7).map(|i| h.core.is_blocked(ConnId(i))).collect();
    assert_eq!(blocked, [false, true, false, false, false, false, false]);
    // The granted record of c4 outlives its lease (D18): still owned until `w`.
    h.tick(5000);
    assert!(h.core.owns_anything(ConnId(4)));
    assert!(!h.core.owns_anything(ConnId(7)));
    run(
        &mut h,
        vec![(5000, c(4, w("b", 0)), "c4: error_lease_expired")],
    );
    assert!(!h.core.owns_anything(ConnId(4)));
}

// ----- metrics ------------------------------------------------------------------

mod metrics;

// ----- accessors ----------------------------------------------------------------

mod accessors;

// ----- signals ------------------------------------------------------------------

mod signals {
    use super::*;

    fn listen(p: &str, g: &str) -> Request {
        Request::Listen {
            pattern: key(p),
            group: (!g.is_empty()).then(|| g.as_bytes().into()),
        }
    }

    fn unlisten(p: &str, g: &str) -> Request {
        Request::Unlisten {
            pattern: key(p),
            group: (!g.is_empty()).then(|| g.as_bytes().into()),
        }
    }

    fn sig(ch: &str, payload: &str) -> Request {
        Request::Signal {
            channel: key(ch),
            payload: payload.as_bytes().into(),
        }
    }

    fn capped(n: usize) -> CoreConfig {
        CoreConfig {
            max_subscriptions: n,
            ..cfg()
        }
    }

    #[test]
    fn delivery_order_and_dedup() {
        check(
            cfg(),
            4,
            vec![
                (0, c(1, listen("a.b", "")), "c1: ok"),
                (0, c(1, listen("a.*", "")), "c1: ok"),
                (0, c(1, listen("a.>", "")), "c1: ok"),
                (0, c(2, listen("a.>", "")), "c2: ok"),
                (0, c(3, listen("a.*", "g")), "c3: ok"),
                // Ungrouped routes de-duplicate; c1 gets one copy.
                (
                    1,
                    c(4, sig("a.b", "x")),
                    "c1: sig a.b x | c2: sig a.b x | c3: sig a.b x | c4: ok 3",
                ),
                // `>` needs one more token; `*` exactly one.
                (2, c(4, sig("a", "x")), "c4: ok 0"),
                (
                    2,
                    c(4, sig("a.b.c", "y")),
                    "c1: sig a.b.c y | c2: sig a.b.c y | c4: ok 2",
                ),
                // A group is not de-duplicated against ungrouped routes.
                (3, c(1, listen("a.b", "h")), "c1: ok"),
                (
                    3,
                    c(4, sig("a.b", "z")),
                    "c1: sig a.b z | c1: sig a.b z | c2: sig a.b z | c3: sig a.b z | c4: ok 4",
                ),
            ],
        );
    }

    #[test]
    fn publisher_receives_its_own_signal_before_the_count() {
        let mut h = H::new(cfg(), 1);
        h.send(0, 1, listen("me", ""));
        let out = h.apply(0, c(1, sig("me", "hi")));
        assert_eq!(
            out.iter().map(show_effect).collect::<Vec<_>>(),
            vec!["c1: sig me hi", "c1: ok 1"]
        );
    }

    #[test]
    fn groups_round_robin() {
        check(
            cfg(),
            4,
            vec![
                (0, c(1, listen("jobs", "w")), "c1: ok"),
                (0, c(2, listen("jobs", "w")), "c2: ok"),
                (0, c(3, listen("jobs", "w")), "c3: ok"),
                (1, c(4, sig("jobs", "1")), "c1: sig jobs 1 | c4: ok 1"),
                (1, c(4, sig("jobs", "2")), "c2: sig jobs 2 | c4: ok 1"),
                (1, c(4, sig("jobs", "3")), "c3: sig jobs 3 | c4: ok 1"),
                (1, c(4, sig("jobs", "4")), "c1: sig jobs 4 | c4: ok 1"),
                // A second group on the same pattern gets its own copy.
                (2, c(4, listen("jobs", "v")), "c4: ok"),
                (
                    2,
                    c(1, sig("jobs", "5")),
                    "c1: ok 2 | c2: sig jobs 5 | c4: sig jobs 5",
                ),
                // A member leaving shrinks the rotation.
                (3, In::Bye(3), ""),
                (3, c(4, unlisten("jobs", "v")), "c4: ok"),
                // Counter 5 over two members: index 1.
                (3, c(4, sig("jobs", "6")), "c2: sig jobs 6 | c4: ok 1"),
            ],
        );
    }

    #[test]
    fn listen_unlisten_and_the_cap() {
        let h = check(
            capped(1),
            2,
            vec![
                (0, c(1, listen("x", "")), "c1: ok"),
                (0, c(1, listen("x", "")), "c1: ok"),
                (0, c(1, listen("x", "g")), "c1: error"),
                (0, c(1, listen("y", "")), "c1: error"),
                (0, c(1, unlisten("never", "")), "c1: ok"),
                (0, c(1, unlisten("x", "")), "c1: ok"),
                (0, c(1, listen("y", "")), "c1: ok"),
                (0, c(2, listen("y", "")), "c2: ok"),
                (0, c(2, sig("x", "p")), "c2: ok 0"),
                (
                    0,
                    c(2, sig("y", "p")),
                    "c1: sig y p | c2: sig y p | c2: ok 2",
                ),
            ],
        );
        assert!(
            h.core.owns_anything(ConnId(1)),
            "a subscription is owned (D11)"
        );
    }

    #[test]
    fn disconnect_removes_subscriptions_and_stats_count_them() {
        let mut h = H::new(cfg(), 3);
        h.send(0, 1, listen("b", ""));
        h.send(0, 2, listen("b", ""));
        h.send(0, 2, listen("a.>", "g"));
        h.send(0, 3, listen("a.>", "g"));
        let st = h.stats(0, 3);
        assert_eq!(
            st["signal_channels"],
            json!([
                {"pattern": "a.>", "group": "g", "listeners": 2},
                {"pattern": "b", "listeners": 2},
            ])
        );
        h.apply(1, In::Bye(2));
        assert_eq!(h.send(1, 3, sig("b", "p")), "c1: sig b p | c3: ok 1");
        let st = h.stats(1, 3);
        assert_eq!(
            st["signal_channels"],
            json!([
                {"pattern": "a.>", "group": "g", "listeners": 1},
                {"pattern": "b", "listeners": 1},
            ])
        );
        h.apply(1, In::Bye(1));
        h.apply(1, In::Bye(3));
        let mut out = Vec::new();
        let id = h.core.connect(Time(1), &mut out);
        let st = h.stats(1, id.0);
        assert_eq!(st["signal_channels"], json!([]));
    }

    /// Fills `conn`'s push queue by signalling `ch` from `from` until
    /// `PUSH_QUEUE_FRAMES` are outstanding.
    fn fill(h: &mut H, from: u64, conn: u64, ch: &str) {
        while h.core.outstanding_pushes(ConnId(conn)) < super::super::PUSH_QUEUE_FRAMES {
            let before = h.core.outstanding_pushes(ConnId(conn));
            h.send(0, from, sig(ch, "p"));
            assert!(
                h.core.outstanding_pushes(ConnId(conn)) > before,
                "push counted"
            );
        }
    }

    #[test]
    fn slow_ungrouped_consumer_is_evicted_and_not_counted() {
        let mut h = H::new(cfg(), 3);
        h.send(0, 1, listen("s", ""));
        h.send(0, 2, listen("s", ""));
        fill(&mut h, 3, 1, "s");
        // c2 drains its pushes; c1 never does.
        h.apply(0, In::Written(2, 1000));
        assert_eq!(
            h.send(0, 3, sig("s", "q")),
            "c1: close (slow) | c2: sig s q | c3: ok 1"
        );
        // Evicted once: later signals skip it until the driver disconnects it.
        assert_eq!(h.send(0, 3, sig("s", "r")), "c2: sig s r | c3: ok 1");
        // Written pushes free the queue.
        assert_eq!(h.core.outstanding_pushes(ConnId(2)), 2);
        h.apply(0, In::Written(2, 2));
        assert_eq!(h.core.outstanding_pushes(ConnId(2)), 0);
    }

    #[test]
    fn full_group_members_are_skipped_and_all_full_evicts_the_primary() {
        let mut h = H::new(cfg(), 4);
        h.send(0, 1, listen("g", "w"));
        h.send(0, 2, listen("g", "w"));
        // Fill c1 through an ungrouped subscription of its own.
        h.send(0, 1, listen("only1", ""));
        fill(&mut h, 4, 1, "only1");
        // The counter is at 0 (c1, full): c2 gets it instead; then c2 again.
        assert_eq!(h.send(0, 4, sig("g", "a")), "c2: sig g a | c4: ok 1");
        assert_eq!(h.send(0, 4, sig("g", "b")), "c2: sig g b | c4: ok 1");
        h.send(0, 2, listen("only2", ""));
        h.apply(0, In::Written(2, 2));
        fill(&mut h, 4, 2, "only2");
        // Both full: the primary (counter 2 → c1) is closed, nothing counted.
        assert_eq!(h.send(0, 4, sig("g", "c")), "c1: close (slow) | c4: ok 0");
        // Next primary is c2 (full): closed too.
        assert_eq!(h.send(0, 4, sig("g", "d")), "c2: close (slow) | c4: ok 0");
        // Both evicted: nothing more happens.
        assert_eq!(h.send(0, 4, sig("g", "e")), "c4: ok 0");
    }
}
