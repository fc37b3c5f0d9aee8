//! The core's counters and histograms ([`crate::core::CoreMetrics`]),
//! driven through `now`: every counter, the kind it is filed under, and the
//! bucket each duration lands in, with exact values.

use super::*;
use crate::core::metrics::{Cause, Histogram, How};

/// The non-empty buckets of `h` as `(le, observations in that bucket)`, not
/// cumulative, plus the sum in milliseconds.
fn spread(h: &Histogram) -> (Vec<(&'static str, u64)>, u64) {
    let mut prev = 0;
    let mut v = Vec::new();
    for (le, cum) in h.cumulative() {
        if cum > prev {
            v.push((le, cum - prev));
        }
        prev = cum;
    }
    (v, h.sum_ms())
}

/// `[lock, semaphore]` values of a per-kind counter.
fn kinds(f: impl Fn(Space) -> u64) -> [u64; 2] {
    [f(Space::Lock), f(Space::Sem)]
}

fn evictions(h: &H) -> [u64; 5] {
    Cause::ALL.map(|c| h.core.metrics().evictions(c))
}

fn grants(h: &H, space: Space) -> [u64; 2] {
    How::ALL.map(|how| h.core.metrics().grants(space, how))
}

#[test]
fn immediate_grant_observes_zero_wait_and_release_observes_the_hold() {
    let h = check(
        cfg(),
        1,
        vec![
            (0, c(1, l("a", 0, 0)), "c1: ok #1 33"),
            (1500, c(1, r("a", 1)), "c1: ok"),
            // A failed release counts nothing.
            (1600, c(1, r("a", 1)), "c1: error"),
        ],
    );
    let m = h.core.metrics();
    assert_eq!(grants(&h, Space::Lock), [1, 0]);
    assert_eq!(grants(&h, Space::Sem), [0, 0]);
    assert_eq!(spread(m.acquire_wait(Space::Lock)), (vec![("0.001", 1)], 0));
    assert_eq!(kinds(|s| m.releases(s)), [1, 0]);
    assert_eq!(spread(m.hold(Space::Lock)), (vec![("2.5", 1)], 1500));
    assert_eq!(m.hold(Space::Sem).count(), 0);
    assert_eq!(evictions(&h), [0; 5]);
    assert_eq!(kinds(|s| m.acquire_timeouts(s)), [0, 0]);
}

/// `le` is inclusive: a wait of exactly 1000 ms is in `le="1"`, 1001 ms in
/// `le="2.5"`; a hold of exactly 1 ms is in `le="0.001"`.
#[test]
fn queued_grants_observe_their_wait_at_the_bucket_boundaries() {
    let h = check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 0)), "c1: ok #1 33"),
            (0, c(2, l("a", 10, 0)), ""),
            (0, c(3, l("a", 10, 0)), ""),
            (1000, c(1, r("a", 1)), "c1: ok | c2: ok #2 33"),
            (1001, c(2, r("a", 2)), "c2: ok | c3: ok #3 33"),
            (2501, c(3, r("a", 3)), "c3: ok"),
        ],
    );
    let m = h.core.metrics();
    assert_eq!(grants(&h, Space::Lock), [1, 2]);
    assert_eq!(
        spread(m.acquire_wait(Space::Lock)),
        (vec![("0.001", 1), ("1", 1), ("2.5", 1)], 2001)
    );
    assert_eq!(
        spread(m.hold(Space::Lock)),
        (vec![("0.001", 1), ("1", 1), ("2.5", 1)], 1000 + 1 + 1500)
    );
    assert_eq!(kinds(|s| m.releases(s)), [3, 0]);
}

/// The wait of a hand-off at an expiry runs to the lease's deadline, not to
/// the late timer tick that noticed it.
#[test]
fn a_late_timer_does_not_stretch_the_observed_durations() {
    let h = check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (1000, c(2, l("a", 60, 20)), ""),
            (25000, In::Tick, "c2: ok #2 20"),
        ],
    );
    let m = h.core.metrics();
    assert_eq!(spread(m.acquire_wait(Space::Lock)).1, 9000);
    assert_eq!(spread(m.hold(Space::Lock)), (vec![("10", 1)], 10000));
    assert_eq!(kinds(|s| m.lease_expiries(s)), [1, 0]);
}

#[test]
fn every_timeout_reply_counts_once_under_its_kind() {
    let h = check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 0)), "c1: ok #1 33"),
            // Timeout 0 on a busy key.
            (0, c(2, l("a", 0, 0)), "c2: timeout"),
            // A queued waiter's deadline, by the timer.
            (0, c(2, l("a", 1, 0)), ""),
            (1000, In::Tick, "c2: timeout"),
            // Two-phase: `w` with timeout 0, then a `w` that runs out.
            (1000, c(2, e("a", 0)), "c2: queued"),
            (1000, c(2, w("a", 0)), "c2: timeout"),
            (1000, c(2, e("a", 0)), "c2: queued"),
            (1000, c(2, w("a", 2)), ""),
            (3000, In::Tick, "c2: timeout"),
            // Semaphores: timeout 0 and a deadline found by another input.
            (3000, c(1, sl("s", 0, 1, 0)), "c1: ok #2 33"),
            (3000, c(2, sl("s", 0, 1, 0)), "c2: timeout"),
            (3000, c(2, sl("s", 1, 1, 0)), ""),
            (5000, c(3, sl("s", 0, 1, 0)), "c2: timeout | c3: timeout"),
        ],
    );
    let m = h.core.metrics();
    assert_eq!(kinds(|s| m.acquire_timeouts(s)), [4, 3]);
    // Nothing that timed out was granted or evicted.
    assert_eq!(grants(&h, Space::Lock), [1, 0]);
    assert_eq!(grants(&h, Space::Sem), [1, 0]);
    assert_eq!(evictions(&h), [0; 5]);
}

/// A waiter whose deadline equals a lease's is timed out by the hand-off
/// that the expiry starts (leases are processed first at equal deadlines).
#[test]
fn a_waiter_dead_at_the_hand_off_counts_as_a_timeout() {
    let h = check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 1)), "c1: ok #1 1"),
            (0, c(2, l("a", 1, 0)), ""),
            (1000, In::Tick, "c2: timeout"),
        ],
    );
    let m = h.core.metrics();
    assert_eq!(kinds(|s| m.acquire_timeouts(s)), [1, 0]);
    assert_eq!(kinds(|s| m.lease_expiries(s)), [1, 0]);
    assert_eq!(grants(&h, Space::Lock), [1, 0]);
}

/// An expired lease is counted once, by whichever input reaches its
/// deadline first: the timer, a renew, a wait, or an unrelated request.
#[test]
fn lease_expiries_count_on_every_path_and_observe_the_hold() {
    let h = check(
        cfg(),
        2,
        vec![
            // The timer.
            (500, c(1, l("a", 0, 2)), "c1: ok #1 2"),
            (2500, In::Tick, ""),
            // A renew after the deadline.
            (2500, c(1, l("b", 0, 1)), "c1: ok #2 1"),
            (4000, c(1, n("b", 2, 5)), "c1: error"),
            // A renew that extends, then the timer: held from the grant.
            (4000, c(1, sl("s", 0, 2, 1)), "c1: ok #3 1"),
            (4500, c(1, sn("s", 3, 2)), "c1: ok 2"),
            (6500, In::Tick, ""),
            // A two-phase grant whose lease passes before `w`.
            (7000, c(2, e("c", 1)), "c2: acquired #4 1"),
            (9000, c(2, w("c", 5)), "c2: error_lease_expired"),
        ],
    );
    let m = h.core.metrics();
    assert_eq!(kinds(|s| m.lease_expiries(s)), [3, 1]);
    assert_eq!(h.core.metrics().evictions(Cause::Expiry), 4);
    assert_eq!(
        spread(m.hold(Space::Lock)),
        (vec![("1", 2), ("2.5", 1)], 2000 + 1000 + 1000)
    );
    assert_eq!(spread(m.hold(Space::Sem)), (vec![("2.5", 1)], 2500));
    assert_eq!(kinds(|s| m.releases(s)), [0, 0]);
}

#[test]
fn disconnect_counts_released_holders_and_dropped_waiters() {
    let h = check(
        cfg(),
        4,
        vec![
            (0, c(1, l("a", 0, 0)), "c1: ok #1 33"),
            (0, c(1, sl("s", 0, 3, 0)), "c1: ok #2 33"),
            (0, c(1, sl("s", 0, 3, 0)), "c1: ok #3 33"),
            (0, c(2, l("a", 10, 0)), ""),
            (0, c(3, e("a", 0)), "c3: queued"),
            (100, In::Bye(2), ""),
            (200, In::Bye(3), ""),
            // c1's three slots go in token order; c4 queued behind c3 is granted.
            (300, c(4, l("a", 10, 0)), ""),
            (4000, In::Bye(1), "c4: ok #4 33"),
        ],
    );
    let m = h.core.metrics();
    assert_eq!(h.core.metrics().evictions(Cause::Disconnect), 3);
    assert_eq!(h.core.metrics().evictions(Cause::DisconnectWaiter), 2);
    assert_eq!(spread(m.hold(Space::Lock)), (vec![("5", 1)], 4000));
    assert_eq!(spread(m.hold(Space::Sem)), (vec![("5", 2)], 8000));
    assert_eq!(spread(m.acquire_wait(Space::Lock)).1, 3700);
    assert_eq!(grants(&h, Space::Lock), [1, 1]);
    assert_eq!(kinds(|s| m.releases(s)), [0, 0]);
}

/// Without auto-release a vanished holder keeps its slot until its lease
/// passes, and is counted as an expiry then, not as a disconnect.
#[test]
fn without_auto_release_a_vanished_holder_counts_as_an_expiry() {
    let cfg = CoreConfig {
        auto_release_on_disconnect: false,
        ..cfg()
    };
    let h = check(
        cfg,
        1,
        vec![
            (0, c(1, l("a", 0, 2)), "c1: ok #1 2"),
            (10, In::Bye(1), ""),
            (2000, In::Tick, ""),
        ],
    );
    assert_eq!(evictions(&h), [1, 0, 0, 0, 0]);
    assert_eq!(h.core.metrics().hold(Space::Lock).sum_ms(), 2000);
}

#[test]
fn drain_counts_blocked_waiters_only() {
    let h = check(
        cfg(),
        4,
        vec![
            (0, c(1, l("a", 0, 0)), "c1: ok #1 33"),
            (0, c(1, sl("s", 0, 1, 0)), "c1: ok #2 33"),
            (0, c(2, l("a", 10, 0)), ""),
            (0, c(3, sl("s", 10, 1, 0)), ""),
            // Queued but not blocked: stays.
            (0, c(4, e("a", 0)), "c4: queued"),
            (10, In::Drain, "c2: error | c3: error"),
        ],
    );
    assert_eq!(h.core.metrics().evictions(Cause::Drain), 2);
    assert_eq!(evictions(&h), [0, 0, 0, 2, 0]);
}

/// `e`/`se`: an immediate `acquired` is an immediate grant; a `queued` one
/// waits from the `e` to the hand-off (not to the `w`), and `w` collecting
/// it is no second grant.
#[test]
fn two_phase_grants_count_once_and_wait_from_the_enqueue() {
    let h = check(
        cfg(),
        2,
        vec![
            (0, c(1, e("a", 0)), "c1: acquired #1 33"),
            (100, c(2, e("a", 0)), "c2: queued"),
            (400, c(1, r("a", 1)), "c1: ok"),
            (900, c(2, w("a", 5)), "c2: ok #2 33"),
            (1400, c(2, r("a", 2)), "c2: ok"),
            (1400, c(1, se("s", 2, 0)), "c1: acquired #3 33"),
            (1400, c(1, se("t", 1, 0)), "c1: acquired #4 33"),
            (1500, c(2, se("t", 1, 0)), "c2: queued"),
            (1500, c(2, sw("t", 5)), ""),
            (3500, c(1, sr("t", 4)), "c1: ok | c2: ok #5 33"),
        ],
    );
    let m = h.core.metrics();
    assert_eq!(grants(&h, Space::Lock), [1, 1]);
    assert_eq!(grants(&h, Space::Sem), [2, 1]);
    assert_eq!(
        spread(m.acquire_wait(Space::Lock)),
        (vec![("0.001", 1), ("0.5", 1)], 300)
    );
    assert_eq!(
        spread(m.acquire_wait(Space::Sem)),
        (vec![("0.001", 2), ("2.5", 1)], 2000)
    );
    // c1's `a` held 0..400; c2's from the hand-off at 400, not from `w`.
    assert_eq!(
        spread(m.hold(Space::Lock)),
        (vec![("0.5", 1), ("1", 1)], 1400)
    );
    assert_eq!(kinds(|s| m.releases(s)), [2, 1]);
}

/// A semaphore key that happens to have limit 1 is still `kind="semaphore"`,
/// and a lock named like a semaphore key is a lock.
#[test]
fn semaphores_are_counted_under_their_own_kind() {
    let h = check(
        cfg(),
        3,
        vec![
            (0, c(1, sl("k", 0, 2, 0)), "c1: ok #1 33"),
            (0, c(2, sl("k", 0, 2, 0)), "c2: ok #2 33"),
            (0, c(3, sl("k", 5, 2, 0)), ""),
            (2000, c(1, sr("k", 1)), "c1: ok | c3: ok #3 33"),
            (2000, c(1, sl("one", 0, 1, 0)), "c1: ok #4 33"),
            (2000, c(1, l("k", 0, 0)), "c1: ok #5 33"),
        ],
    );
    let m = h.core.metrics();
    assert_eq!(grants(&h, Space::Sem), [3, 1]);
    assert_eq!(grants(&h, Space::Lock), [1, 0]);
    assert_eq!(
        spread(m.acquire_wait(Space::Sem)),
        (vec![("0.001", 3), ("2.5", 1)], 2000)
    );
    assert_eq!(spread(m.hold(Space::Sem)), (vec![("2.5", 1)], 2000));
    assert_eq!(kinds(|s| m.releases(s)), [0, 1]);
}

#[test]
fn signals_count_publishes_deliveries_and_slow_consumers() {
    let mut h = H::new(cfg(), 4);
    let listen = |p: &str, g: &str| Request::Listen {
        pattern: key(p),
        group: (!g.is_empty()).then(|| g.as_bytes().into()),
    };
    let sig = |ch: &str| Request::Signal {
        channel: key(ch),
        payload: b"p".as_slice().into(),
    };
    h.send(0, 1, listen("x", ""));
    h.send(0, 2, listen("x", ""));
    assert_eq!(
        h.send(0, 3, sig("x")),
        "c1: sig x p | c2: sig x p | c3: ok 2"
    );
    assert_eq!(h.send(0, 3, sig("nobody")), "c3: ok 0");
    let m = h.core.metrics();
    assert_eq!((m.signals_published(), m.signal_deliveries()), (2, 2));
    // c1 never drains its queue: one eviction, counted once.
    h.apply(0, In::Written(2, usize::MAX));
    let mut sent = 2;
    while h.core.outstanding_pushes(ConnId(1)) < crate::core::PUSH_QUEUE_FRAMES {
        h.send(0, 4, sig("x"));
        h.apply(0, In::Written(2, usize::MAX));
        sent += 1;
    }
    assert_eq!(
        h.send(0, 4, sig("x")),
        "c1: close (slow) | c2: sig x p | c4: ok 1"
    );
    assert_eq!(h.send(0, 4, sig("x")), "c2: sig x p | c4: ok 1");
    let m = h.core.metrics();
    assert_eq!(m.evictions(Cause::SlowConsumer), 1);
    let fills = sent - 2;
    assert_eq!(m.signals_published(), sent + 2);
    assert_eq!(m.signal_deliveries(), 2 + 2 * fills + 2);
}
