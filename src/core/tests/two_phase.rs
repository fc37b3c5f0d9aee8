//! Two-phase acquire (`e` then `w`, `se` then `sw`; D18): the fast path,
//! a second enqueue, `w` without `e`, waiting, timing out and losing the
//! place, grants and expiries between `e` and `w`, releasing the record;
//! and that removed or dead waiters do not pile up or recurse.

use super::*;

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
