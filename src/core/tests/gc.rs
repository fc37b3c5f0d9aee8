//! The idle GC: what it collects, when, and what it must leave alone.

use super::*;

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
