//! Time: lease expiry and its hand-off at the deadline even when the timer
//! is late, waiter deadlines and ties between them, renew, the release
//! errors (wrong token, unknown key, other space, released token) and the
//! token as a bearer credential from another connection.

use super::*;

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
