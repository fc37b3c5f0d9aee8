//! Unit tests of the core's indexes: holders by fence, per-connection
//! holdings, queues as ordered sets, the idle index, and `verify` catching
//! each kind of corruption by name. They sit inside `state` so that they can
//! look at (and break) the private structures; behaviour seen through
//! replies is tested in `core/tests/` (one file per topic) and against the model.

use std::hash::BuildHasher;

use super::*;
use crate::core::metrics::Cause;
use crate::wire::Token;

const SALT: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

fn cfg() -> CoreConfig {
    CoreConfig {
        gc_interval_s: 3600,
        gc_max_idle_s: 3600,
        salt_key: SALT,
        max_locks: 100_000,
        ..CoreConfig::default()
    }
}

fn key(k: &str) -> Key {
    Key::new(k.as_bytes()).expect("valid test key")
}

fn sl(k: &str, t: u64, n: u64, lease: u64) -> Request {
    Request::Acquire {
        space: Space::Sem,
        key: key(k),
        timeout_s: t,
        limit: n,
        lease_s: Some(lease),
    }
}

fn l(k: &str, t: u64, lease: u64) -> Request {
    Request::Acquire {
        space: Space::Lock,
        key: key(k),
        timeout_s: t,
        limit: 1,
        lease_s: Some(lease),
    }
}

fn release(space: Space, k: &str, token: &Token) -> Request {
    Request::Release {
        space,
        key: key(k),
        token: token.to_string().into_bytes().into(),
    }
}

/// A deterministic xorshift generator: tests draw no randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Harness {
    core: Core,
}

impl Harness {
    fn new(cfg: CoreConfig, conns: u64) -> Harness {
        let mut core = Core::new(cfg, Time(0));
        let mut out = Vec::new();
        for i in 1..=conns {
            assert_eq!(core.connect(Time(0), &mut out), ConnId(i));
        }
        Harness { core }
    }

    /// One request. The core verifies itself after inputs in debug builds
    /// (sampled once the state is large); tests add full checkpoints.
    fn send(&mut self, t: u64, conn: u64, req: Request) -> Vec<Effect> {
        let mut out = Vec::new();
        self.core.handle(Time(t), ConnId(conn), req, &mut out);
        out
    }

    /// Sends a request that must be granted at once; returns the token.
    fn grant(&mut self, t: u64, conn: u64, req: Request) -> Token {
        match self.send(t, conn, req).as_slice() {
            [Effect::Reply {
                reply: Reply::Granted { token, .. },
                ..
            }] => *token,
            other => panic!("not granted: {other:?}"),
        }
    }
}

fn replies(out: &[Effect]) -> Vec<(u64, String)> {
    out.iter()
        .map(|e| match e {
            Effect::Reply { conn, reply } => (
                conn.0,
                match reply {
                    Reply::Granted { token, .. } => format!("ok #{}", token.fence),
                    Reply::Ok => "ok".into(),
                    Reply::Status(s) => s.as_str().into(),
                    other => format!("{other:?}"),
                },
            ),
            other => (0, format!("{other:?}")),
        })
        .collect()
}

#[test]
fn holders_by_fence_on_one_big_semaphore() {
    // 3 000 slots of one semaphore held by one connection: releases in
    // random order find their holder by fence, a wrong salt or another
    // key's token finds nothing, and every index agrees after each step.
    const N: usize = 3_000;
    let mut h = Harness::new(cfg(), 2);
    let mut held: Vec<Token> = (0..N)
        .map(|_| h.grant(0, 1, sl("s", 0, N as u64 + 1, 60)))
        .collect();
    let other = h.grant(0, 2, l("other", 0, 60));
    assert_eq!(h.core.holders.len(), N + 1);
    let sem = h.core.lookup(Space::Sem, &key("s")).unwrap();
    assert_eq!(h.core.conns[&ConnId(1)].held.len(), N);
    assert!(h.core.conns[&ConnId(1)].held.iter().all(|&(r, _)| r == sem));
    // Another key's token, and a forged salt, are not holders of `s`.
    let forged = Token {
        fence: held[7].fence,
        salt: held[7].salt ^ 1,
    };
    for bad in [other, forged] {
        let out = h.send(1, 2, release(Space::Sem, "s", &bad));
        assert_eq!(replies(&out), vec![(2, "error".into())]);
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    while !held.is_empty() {
        let token = held.swap_remove(rng.below(held.len()));
        let out = h.send(2, 2, release(Space::Sem, "s", &token));
        assert_eq!(replies(&out), vec![(2, "ok".into())], "bearer release");
        let again = h.send(2, 2, release(Space::Sem, "s", &token));
        assert_eq!(replies(&again), vec![(2, "error".into())], "released twice");
        if held.len().is_multiple_of(500) {
            h.core.verify();
        }
    }
    assert!(h.core.conns[&ConnId(1)].held.is_empty());
    assert_eq!(h.core.holders.len(), 1);
    assert_eq!(h.core.leases.len(), 1);
}

#[test]
fn leases_of_one_semaphore_expire_each_at_its_deadline() {
    // Slots with leases 1..=5 s, interleaved: each expiry removes exactly
    // its holder, and a waiter queued behind the full semaphore gets the
    // first slot that expires.
    let mut h = Harness::new(cfg(), 2);
    let limit = 500;
    let tokens: Vec<Token> = (0..limit)
        .map(|i| h.grant(0, 1, sl("s", 0, limit, 1 + i % 5)))
        .collect();
    assert!(h.send(0, 2, sl("s", 10, limit, 60)).is_empty(), "queued");
    let mut out = Vec::new();
    h.core.handle_timeout(Time(1000), &mut out);
    h.core.verify();
    // 100 slots had lease 1 s; the first one's expiry went to the waiter.
    assert_eq!(replies(&out), vec![(2, format!("ok #{}", limit + 1))]);
    assert_eq!(h.core.holders.len() as u64, limit - 100 + 1);
    for t in tokens.iter().filter(|t| (t.fence - 1) % 5 == 0) {
        assert!(!h.core.holders.contains_key(&t.fence), "expired");
    }
    h.core.handle_timeout(Time(5000), &mut out);
    h.core.verify();
    assert_eq!(h.core.holders.len(), 1, "only the waiter's 60 s lease left");
}

#[test]
fn disconnect_releases_its_own_holdings_in_token_order_and_nothing_else() {
    // c1 holds slots on three keys, interleaved with c2's; c3..c5 wait on
    // the keys. c1's disconnect hands off in c1's token order.
    let mut h = Harness::new(cfg(), 5);
    let a1 = h.grant(0, 1, l("c", 0, 60));
    let _b2 = h.grant(0, 2, sl("s", 0, 2, 60));
    let b1 = h.grant(0, 1, sl("s", 0, 2, 60));
    let c1 = h.grant(0, 1, l("a", 0, 60));
    let _d2 = h.grant(0, 2, l("b", 0, 60));
    assert!(h.send(0, 3, l("a", 10, 5)).is_empty());
    assert!(h.send(0, 4, sl("s", 10, 2, 5)).is_empty());
    assert!(h.send(0, 5, l("c", 10, 5)).is_empty());
    let mut held: Vec<u64> = h.core.conns[&ConnId(1)]
        .held
        .iter()
        .map(|&(_, f)| f)
        .collect();
    held.sort_unstable();
    assert_eq!(held, vec![a1.fence, b1.fence, c1.fence]);
    let mut out = Vec::new();
    h.core.disconnect(Time(1), ConnId(1), &mut out);
    h.core.verify();
    // Token order: "c" (fence 1) first, then "s" (3), then "a" (4).
    assert_eq!(
        replies(&out),
        vec![
            (5, "ok #6".into()),
            (4, "ok #7".into()),
            (3, "ok #8".into())
        ]
    );
    assert_eq!(h.core.conns[&ConnId(2)].held.len(), 2, "c2 keeps its slots");
    assert_eq!(h.core.holders.len(), 5);
}

#[test]
fn disconnect_replays_only_the_releases_that_grant_and_retires_the_rest() {
    // c1 holds S (limit 4) fences 1, 3, 5 and lock L fence 2; c4 holds S
    // fence 4. S has two waiters, L one. Released one by one in token
    // order: 1 grants S's first waiter, 2 grants L's, 3 grants S's second;
    // 5 grants nothing and is released in bulk.
    let mut h = Harness::new(cfg(), 4);
    let s1 = h.grant(0, 1, sl("S", 0, 4, 60));
    let l2 = h.grant(0, 1, l("L", 0, 60));
    let s3 = h.grant(0, 1, sl("S", 0, 4, 60));
    let _s4 = h.grant(0, 4, sl("S", 0, 4, 60));
    let s5 = h.grant(0, 1, sl("S", 0, 4, 60));
    assert_eq!((s1.fence, l2.fence, s3.fence, s5.fence), (1, 2, 3, 5));
    assert!(h.send(0, 2, sl("S", 10, 4, 7)).is_empty());
    assert!(h.send(0, 3, sl("S", 10, 4, 7)).is_empty());
    assert!(h.send(0, 4, l("L", 10, 7)).is_empty());
    let mut out = Vec::new();
    h.core.disconnect(Time(1), ConnId(1), &mut out);
    h.core.verify();
    assert_eq!(
        replies(&out),
        vec![
            (2, "ok #6".into()),
            (4, "ok #7".into()),
            (3, "ok #8".into())
        ]
    );
    let s = h.core.lookup(Space::Sem, &key("S")).unwrap();
    assert_eq!(h.core.res_mut(s).holders, 3, "c4's slot and two grants");
    assert_eq!(h.core.retired_pending, 0, "a small batch is purged at once");
    assert_eq!(h.core.holders.len(), 4);
}

#[test]
fn a_big_disconnect_releases_at_once_and_purges_in_bounded_steps() {
    // 3 × PURGE_PER_INPUT slots of one semaphore, nobody waiting: the
    // disconnect releases them all in the counts at once; their index
    // entries go a bounded batch per input; nothing about them is visible
    // meanwhile.
    let n = 3 * PURGE_PER_INPUT + 5;
    let mut h = Harness::new(cfg(), 2);
    let mut tokens = Vec::new();
    for _ in 0..n {
        tokens.push(h.grant(0, 1, sl("s", 0, n as u64, 2)));
    }
    let mut out = Vec::new();
    h.core.disconnect(Time(1), ConnId(1), &mut out);
    assert!(out.is_empty());
    h.core.verify();
    let s = h.core.lookup(Space::Sem, &key("s")).unwrap();
    assert_eq!(h.core.res_mut(s).holders, 0);
    assert_eq!(h.core.retired_pending, n - PURGE_PER_INPUT);
    assert_eq!(h.core.poll_timeout(), Some(Time(2)), "purging goes on");
    // A retired token is not a holder.
    let out = h.send(1, 2, release(Space::Sem, "s", &tokens[n - 1]));
    assert_eq!(replies(&out), vec![(2, "error".into())]);
    assert_eq!(h.core.retired_pending, n - 2 * PURGE_PER_INPUT);
    // Their lease timers (2 s) come due before the purge ends: no effect.
    let mut out = Vec::new();
    h.core.handle_timeout(Time(2000), &mut out);
    h.core.verify();
    assert!(out.is_empty());
    h.core.handle_timeout(Time(2000), &mut out);
    assert_eq!(h.core.retired_pending, 0);
    assert!(h.core.holders.is_empty() && h.core.leases.is_empty());
    h.core.verify();
    assert_eq!(
        h.core.metrics.evictions(Cause::Disconnect),
        n as u64,
        "every slot counted as released by disconnect"
    );
    assert_eq!(h.core.metrics.hold(Space::Sem).count(), n as u64);
    assert_eq!(h.core.poll_timeout(), Some(h.core.next_gc));
}

#[test]
fn waiters_leave_from_the_middle_and_fifo_holds() {
    // 400 blocked waiters on one lock; every third cancels. Releases then
    // grant the rest strictly in arrival order.
    const N: u64 = 400;
    let mut h = Harness::new(cfg(), N + 1);
    let mut token = h.grant(0, 1, l("k", 0, 600));
    for c in 2..=N + 1 {
        assert!(h.send(0, c, l("k", 600, 600)).is_empty());
    }
    let mut out = Vec::new();
    for c in (2..=N + 1).filter(|c| c % 3 == 0) {
        h.core.cancel_blocked(Time(1), ConnId(c), &mut out);
    }
    h.core.verify();
    let rest: Vec<u64> = (2..=N + 1).filter(|c| c % 3 != 0).collect();
    let mut holder = 1;
    for &next in &rest {
        let out = h.send(2, holder, release(Space::Lock, "k", &token));
        let r = replies(&out);
        assert_eq!(r[0].0, next, "granted in arrival order");
        let Effect::Reply {
            reply: Reply::Granted { token: t, .. },
            ..
        } = &out[0]
        else {
            panic!("{r:?}");
        };
        token = *t;
        holder = next;
    }
    assert_eq!(h.core.waiters.len(), 0);
}

#[test]
fn idle_index_collects_exactly_the_old_unreferenced_resources() {
    let mut h = Harness::new(
        CoreConfig {
            gc_interval_s: 1,
            gc_max_idle_s: 10,
            ..cfg()
        },
        1,
    );
    // Keys used at t = 0, 5 and 8 s; one key stays held.
    h.grant(0, 1, l("held", 0, 60));
    for (t, k) in [(0, "a"), (0, "b"), (5000, "c"), (8000, "d")] {
        let tok = h.grant(t, 1, l(k, 0, 60));
        h.send(t, 1, release(Space::Lock, k, &tok));
    }
    assert_eq!(h.core.idle.len(), 4);
    let mut out = Vec::new();
    // GC at 11 s: a and b are idle for 11 s > 10 s.
    h.core.handle_timeout(Time(11_000), &mut out);
    h.core.verify();
    assert_eq!(h.core.resource_count, 3);
    assert!(h.core.lookup(Space::Lock, &key("a")).is_none());
    assert!(h.core.lookup(Space::Lock, &key("c")).is_some());
    // The held key's 60 s lease expires at 60 s; GC at 71 s takes it too.
    h.core.handle_timeout(Time(19_000), &mut out);
    h.core.verify();
    assert_eq!(h.core.resource_count, 1, "only the held key is left");
    assert!(h.core.lookup(Space::Lock, &key("held")).is_some());
    h.core.handle_timeout(Time(71_000), &mut out);
    h.core.verify();
    assert_eq!(h.core.resource_count, 0);
    assert!(h.core.idle.is_empty());
}

// ----- verify names what broke ------------------------------------------------

/// A small state with a holder on each space, a blocked waiter, a
/// two-phase record, an idle resource and a subscription.
fn populated() -> Harness {
    let mut h = Harness::new(cfg(), 3);
    h.grant(0, 1, l("a", 0, 60));
    h.grant(0, 1, sl("s", 0, 2, 60));
    assert!(h.send(0, 2, l("a", 30, 10)).is_empty());
    h.send(
        0,
        3,
        Request::Enqueue {
            space: Space::Lock,
            key: key("a"),
            limit: 1,
            lease_s: None,
        },
    );
    let t = h.grant(0, 3, l("idle", 0, 60));
    h.send(0, 3, release(Space::Lock, "idle", &t));
    h.send(
        0,
        3,
        Request::Listen {
            pattern: key("x.*"),
            group: Some(b"g"[..].into()),
        },
    );
    h.core.verify();
    h
}

fn res_of(h: &Harness, space: Space, k: &str) -> ResId {
    h.core.lookup(space, &key(k)).expect("exists")
}

#[test]
#[should_panic(expected = "each holder has one lease timer")]
fn verify_names_a_missing_lease_timer() {
    let mut h = populated();
    let first = *h.core.leases.first().unwrap();
    h.core.leases.remove(&first);
    h.core.verify();
}

#[test]
#[should_panic(expected = "record counts")]
fn verify_names_a_record_counter_off_by_one() {
    let mut h = populated();
    let a = res_of(&h, Space::Lock, "a");
    h.core.res_mut(a).records += 1;
    h.core.verify();
}

#[test]
#[should_panic(expected = "each holder is in its connection's holdings")]
fn verify_names_a_holder_missing_from_its_connection() {
    let mut h = populated();
    h.core.conn_mut(ConnId(1)).held.clear();
    h.core.verify();
}

#[test]
#[should_panic(expected = "blocked points at a blocking waiter")]
fn verify_names_a_connection_not_blocked_on_its_waiter() {
    let mut h = populated();
    h.core.conn_mut(ConnId(2)).blocked = None;
    h.core.verify();
}

#[test]
#[should_panic(expected = "idle index and resources agree")]
fn verify_names_a_resource_missing_from_the_idle_index() {
    let mut h = populated();
    h.core.idle.pop_first();
    h.core.verify();
}

#[test]
#[should_panic(expected = "key index and resources agree")]
fn verify_names_a_key_missing_from_the_key_index() {
    let mut h = populated();
    let a = res_of(&h, Space::Lock, "a");
    let hash = h.core.key_hash.hash_one(b"a".as_slice());
    h.core.by_key[0]
        .find_entry(hash, |&id| id == a)
        .ok()
        .unwrap()
        .remove();
    h.core.verify();
}

#[test]
#[should_panic(expected = "subscription index agrees with connections")]
fn verify_names_a_subscription_missing_from_the_trie() {
    let mut h = populated();
    h.core
        .conn_mut(ConnId(2))
        .subs
        .insert((key("y"), Box::default()));
    h.core.verify();
}

#[test]
#[should_panic(expected = "holder counts")]
fn verify_names_a_holder_count_off_by_one() {
    let mut h = populated();
    let s = res_of(&h, Space::Sem, "s");
    h.core.res_mut(s).holders += 1;
    h.core.verify();
}

#[test]
#[should_panic(expected = "queues hold the live waiters")]
fn verify_names_a_waiter_missing_from_its_queue() {
    let mut h = populated();
    let a = res_of(&h, Space::Lock, "a");
    let head = h.core.res_mut(a).queue.first().unwrap();
    h.core.res_mut(a).queue.remove(head);
    h.core.verify();
}

#[test]
#[should_panic(expected = "metrics agree with holders")]
fn verify_names_a_metric_that_disagrees() {
    let mut h = populated();
    h.core.metrics.granted(Space::Lock, None);
    h.core.verify();
}

#[test]
fn per_lock_records_stay_small() {
    // A held lock costs one resource record, one holder entry, one lease
    // entry and one holdings entry (plus the key index slot): the budget
    // behind "at most 300 bytes per held lock".
    assert!(std::mem::size_of::<Option<Resource>>() <= 72);
    assert!(std::mem::size_of::<Holder>() <= 32);
}

#[test]
fn verify_names_a_connection_blocked_on_a_waiter_it_may_not_block_on() {
    // A connection may be blocked only on a blocking waiter of its own: a
    // two-phase waiter does not block, and another connection's waiter is
    // not its to wait on. Each half alone must be named.
    let waiter_of = |h: &Harness, conn: u64| {
        h.core
            .waiters
            .iter()
            .find(|(_, w)| w.conn == ConnId(conn))
            .map(|(&id, _)| id)
            .expect("a waiter")
    };
    for (conn, owner) in [(3, 3), (1, 2)] {
        let mut h = populated();
        let w = waiter_of(&h, owner);
        h.core.conn_mut(ConnId(conn)).blocked = Some(w);
        let broken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.core.verify()))
            .expect_err("verify refuses it");
        let msg = broken.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("blocked points at a blocking waiter"),
            "c{conn} on c{owner}'s waiter: {msg}"
        );
    }
}
