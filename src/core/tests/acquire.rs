//! Acquire, FIFO order and semaphores: immediate grants, `timeout 0`, no
//! re-entrancy, arrival-order hand-off (also when a waiter leaves the
//! middle), and semaphore slots granted several at once.

use super::*;

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
