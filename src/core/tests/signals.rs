//! Signals through the core: delivery order and de-duplication, the
//! publisher's own signal before its count, round-robin groups,
//! `listen`/`unlisten` and the cap, subscriptions on disconnect, and
//! slow-consumer eviction (ungrouped, and within a group).

use super::*;

fn listen(p: &str, g: &str) -> Request {
    Request::Listen {
        pattern: key(p),
        group: (!g.is_empty()).then(|| g.as_bytes().into()),
    }
}

fn unlisten(p: &str, g: &str) -> Request {
    Request::Unlisten {
        pattern: key(p),
        group: (!g.is_empty()).then(|| g.as_bytes().into()),
    }
}

fn sig(ch: &str, payload: &str) -> Request {
    Request::Signal {
        channel: key(ch),
        payload: payload.as_bytes().into(),
    }
}

fn capped(n: usize) -> CoreConfig {
    CoreConfig {
        max_subscriptions: n,
        ..cfg()
    }
}

#[test]
fn delivery_order_and_dedup() {
    check(
        cfg(),
        4,
        vec![
            (0, c(1, listen("a.b", "")), "c1: ok"),
            (0, c(1, listen("a.*", "")), "c1: ok"),
            (0, c(1, listen("a.>", "")), "c1: ok"),
            (0, c(2, listen("a.>", "")), "c2: ok"),
            (0, c(3, listen("a.*", "g")), "c3: ok"),
            // Ungrouped routes de-duplicate; c1 gets one copy.
            (
                1,
                c(4, sig("a.b", "x")),
                "c1: sig a.b x | c2: sig a.b x | c3: sig a.b x | c4: ok 3",
            ),
            // `>` needs one more token; `*` exactly one.
            (2, c(4, sig("a", "x")), "c4: ok 0"),
            (
                2,
                c(4, sig("a.b.c", "y")),
                "c1: sig a.b.c y | c2: sig a.b.c y | c4: ok 2",
            ),
            // A group is not de-duplicated against ungrouped routes.
            (3, c(1, listen("a.b", "h")), "c1: ok"),
            (
                3,
                c(4, sig("a.b", "z")),
                "c1: sig a.b z | c1: sig a.b z | c2: sig a.b z | c3: sig a.b z | c4: ok 4",
            ),
        ],
    );
}

#[test]
fn publisher_receives_its_own_signal_before_the_count() {
    let mut h = H::new(cfg(), 1);
    h.send(0, 1, listen("me", ""));
    let out = h.apply(0, c(1, sig("me", "hi")));
    assert_eq!(
        out.iter().map(show_effect).collect::<Vec<_>>(),
        vec!["c1: sig me hi", "c1: ok 1"]
    );
}

#[test]
fn groups_round_robin() {
    check(
        cfg(),
        4,
        vec![
            (0, c(1, listen("jobs", "w")), "c1: ok"),
            (0, c(2, listen("jobs", "w")), "c2: ok"),
            (0, c(3, listen("jobs", "w")), "c3: ok"),
            (1, c(4, sig("jobs", "1")), "c1: sig jobs 1 | c4: ok 1"),
            (1, c(4, sig("jobs", "2")), "c2: sig jobs 2 | c4: ok 1"),
            (1, c(4, sig("jobs", "3")), "c3: sig jobs 3 | c4: ok 1"),
            (1, c(4, sig("jobs", "4")), "c1: sig jobs 4 | c4: ok 1"),
            // A second group on the same pattern gets its own copy.
            (2, c(4, listen("jobs", "v")), "c4: ok"),
            (
                2,
                c(1, sig("jobs", "5")),
                "c1: ok 2 | c2: sig jobs 5 | c4: sig jobs 5",
            ),
            // A member leaving shrinks the rotation.
            (3, In::Bye(3), ""),
            (3, c(4, unlisten("jobs", "v")), "c4: ok"),
            // Counter 5 over two members: index 1.
            (3, c(4, sig("jobs", "6")), "c2: sig jobs 6 | c4: ok 1"),
        ],
    );
}

#[test]
fn listen_unlisten_and_the_cap() {
    let h = check(
        capped(1),
        2,
        vec![
            (0, c(1, listen("x", "")), "c1: ok"),
            (0, c(1, listen("x", "")), "c1: ok"),
            (0, c(1, listen("x", "g")), "c1: error"),
            (0, c(1, listen("y", "")), "c1: error"),
            (0, c(1, unlisten("never", "")), "c1: ok"),
            (0, c(1, unlisten("x", "")), "c1: ok"),
            (0, c(1, listen("y", "")), "c1: ok"),
            (0, c(2, listen("y", "")), "c2: ok"),
            (0, c(2, sig("x", "p")), "c2: ok 0"),
            (
                0,
                c(2, sig("y", "p")),
                "c1: sig y p | c2: sig y p | c2: ok 2",
            ),
        ],
    );
    assert!(
        h.core.owns_anything(ConnId(1)),
        "a subscription is owned (D11)"
    );
}

#[test]
fn disconnect_removes_subscriptions_and_stats_count_them() {
    let mut h = H::new(cfg(), 3);
    h.send(0, 1, listen("b", ""));
    h.send(0, 2, listen("b", ""));
    h.send(0, 2, listen("a.>", "g"));
    h.send(0, 3, listen("a.>", "g"));
    let st = h.stats(0, 3);
    assert_eq!(
        st["signal_channels"],
        json!([
            {"pattern": "a.>", "group": "g", "listeners": 2},
            {"pattern": "b", "listeners": 2},
        ])
    );
    h.apply(1, In::Bye(2));
    assert_eq!(h.send(1, 3, sig("b", "p")), "c1: sig b p | c3: ok 1");
    let st = h.stats(1, 3);
    assert_eq!(
        st["signal_channels"],
        json!([
            {"pattern": "a.>", "group": "g", "listeners": 1},
            {"pattern": "b", "listeners": 1},
        ])
    );
    h.apply(1, In::Bye(1));
    h.apply(1, In::Bye(3));
    let mut out = Vec::new();
    let id = h.core.connect(Time(1), &mut out);
    let st = h.stats(1, id.0);
    assert_eq!(st["signal_channels"], json!([]));
}

/// Fills `conn`'s push queue by signalling `ch` from `from` until
/// `PUSH_QUEUE_FRAMES` are outstanding.
fn fill(h: &mut H, from: u64, conn: u64, ch: &str) {
    while h.core.outstanding_pushes(ConnId(conn)) < super::super::PUSH_QUEUE_FRAMES {
        let before = h.core.outstanding_pushes(ConnId(conn));
        h.send(0, from, sig(ch, "p"));
        assert!(
            h.core.outstanding_pushes(ConnId(conn)) > before,
            "push counted"
        );
    }
}

#[test]
fn slow_ungrouped_consumer_is_evicted_and_not_counted() {
    let mut h = H::new(cfg(), 3);
    h.send(0, 1, listen("s", ""));
    h.send(0, 2, listen("s", ""));
    fill(&mut h, 3, 1, "s");
    // c2 drains its pushes; c1 never does.
    h.apply(0, In::Written(2, 1000));
    assert_eq!(
        h.send(0, 3, sig("s", "q")),
        "c1: close (slow) | c2: sig s q | c3: ok 1"
    );
    // Evicted once: later signals skip it until the driver disconnects it.
    assert_eq!(h.send(0, 3, sig("s", "r")), "c2: sig s r | c3: ok 1");
    // Written pushes free the queue.
    assert_eq!(h.core.outstanding_pushes(ConnId(2)), 2);
    h.apply(0, In::Written(2, 2));
    assert_eq!(h.core.outstanding_pushes(ConnId(2)), 0);
}

#[test]
fn full_group_members_are_skipped_and_all_full_evicts_the_primary() {
    let mut h = H::new(cfg(), 4);
    h.send(0, 1, listen("g", "w"));
    h.send(0, 2, listen("g", "w"));
    // Fill c1 through an ungrouped subscription of its own.
    h.send(0, 1, listen("only1", ""));
    fill(&mut h, 4, 1, "only1");
    // The counter is at 0 (c1, full): c2 gets it instead; then c2 again.
    assert_eq!(h.send(0, 4, sig("g", "a")), "c2: sig g a | c4: ok 1");
    assert_eq!(h.send(0, 4, sig("g", "b")), "c2: sig g b | c4: ok 1");
    h.send(0, 2, listen("only2", ""));
    h.apply(0, In::Written(2, 2));
    fill(&mut h, 4, 2, "only2");
    // Both full: the primary (counter 2 → c1) is closed, nothing counted.
    assert_eq!(h.send(0, 4, sig("g", "c")), "c1: close (slow) | c4: ok 0");
    // Next primary is c2 (full): closed too.
    assert_eq!(h.send(0, 4, sig("g", "d")), "c2: close (slow) | c4: ok 0");
    // Both evicted: nothing more happens.
    assert_eq!(h.send(0, 4, sig("g", "e")), "c4: ok 0");
}
