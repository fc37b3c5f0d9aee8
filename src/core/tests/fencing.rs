//! Fencing tokens: fences strictly increase across keys, spaces and kinds
//! of grant; the first fence and the salt (the SipHash-2-4 reference
//! vector); the fence ceiling queues grants, and a raise serves them in
//! arrival order.

use super::*;

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
