//! The configured limits: the waiter cap on every enqueue path,
//! `max_locks` shared by locks and semaphores, and a semaphore limit
//! mismatch that changes nothing.

use super::*;

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
