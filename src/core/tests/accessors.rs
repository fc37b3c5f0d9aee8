//! The core's read-only accessors and labels, which the drivers and
//! `/metrics` rely on and the differential tests do not see: each value is
//! pinned here (found by mutation testing, `scripts/mutants.sh`).

use super::*;
use crate::core::metrics::{kind_label, Cause, How};
use crate::core::Owned;

#[test]
fn time_converts_seconds_and_saturates() {
    assert_eq!(Time::from_secs(3), Time(3000));
    assert_eq!(Time(5).millis(), 5);
    assert_eq!(Time(500).plus_secs(2), Time(2500));
    assert_eq!(Time(u64::MAX - 1).plus_secs(1), Time(u64::MAX));
    assert_eq!(Time::from_secs(u64::MAX), Time(u64::MAX));
}

#[test]
fn accessors_report_the_state_they_name() {
    let cfg = CoreConfig {
        fence_start: 10,
        fence_ceiling: 12,
        max_locks: 7,
        ..cfg()
    };
    let mut h = H::new(cfg, 2);
    assert_eq!(h.core.config().max_locks, 7);
    assert_eq!(h.core.connection_count(), 2);
    assert_eq!((h.core.last_fence(), h.core.fence_headroom()), (10, 2));
    assert_eq!(h.core.owned(ConnId(1)), Owned::default());

    h.send(1500, 1, l("a", 0, 0));
    h.send(1500, 1, e("b", 0));
    h.send(1500, 2, l("a", 5, 0));
    h.send(
        1500,
        1,
        Request::Listen {
            pattern: key("ch"),
            group: None,
        },
    );
    assert_eq!(h.core.now(), Time(1500));
    assert_eq!((h.core.last_fence(), h.core.fence_headroom()), (12, 0));
    let owned = |h: &H, conn| h.core.owned(ConnId(conn));
    assert_eq!(
        owned(&h, 1),
        Owned {
            held: 2,
            waiting: 0,
            records: 1,
            subscriptions: 1,
        }
    );
    assert_eq!(
        owned(&h, 2),
        Owned {
            held: 0,
            waiting: 1,
            records: 0,
            subscriptions: 0,
        }
    );
    assert_eq!(owned(&h, 9), Owned::default());

    assert!(!h.core.is_draining());
    h.apply(2000, In::Drain);
    assert!(h.core.is_draining());
    assert_eq!(h.core.now(), Time(2000));
}

/// The label values of `/metrics` are the ones spec/http.md §6.3 lists.
#[test]
fn metric_labels_are_the_documented_ones() {
    assert_eq!(kind_label(Space::Lock), "lock");
    assert_eq!(kind_label(Space::Sem), "semaphore");
    assert_eq!(How::ALL.map(How::label), ["immediate", "queued"]);
    assert_eq!(
        Cause::ALL.map(Cause::label),
        [
            "expiry",
            "disconnect",
            "disconnect_waiter",
            "drain",
            "slow_consumer"
        ]
    );
    let doc = include_str!("../../../spec/http.md");
    let labels = How::ALL.map(How::label).into_iter();
    for label in labels.chain(Cause::ALL.map(Cause::label)) {
        assert!(doc.contains(&format!("`{label}`")) || doc.contains(&format!("\"{label}\"")));
    }
}
