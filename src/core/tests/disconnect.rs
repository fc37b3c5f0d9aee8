//! Disconnect: with auto-release a connection's holds are released in token
//! order and its waiters and two-phase records dropped; without it (D6)
//! held slots stay until they expire; a disconnected waiter is never
//! granted.

use super::*;

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
