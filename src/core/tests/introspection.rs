//! `poll_timeout`, the virtual clock (time never goes back), `stats` (its
//! shape and how keys are rendered) and `owns_anything`: what the core
//! reports about its own state and when it next needs a tick.

use super::*;

#[test]
fn poll_timeout_is_the_earliest_lease_waiter_or_gc_deadline() {
    let cfg = CoreConfig {
        gc_interval_s: 5,
        ..cfg()
    };
    let mut h = H::new(cfg, 3);
    assert_eq!(h.poll(), Some(5000));
    assert_eq!(h.send(1000, 1, l("a", 0, 3)), "c1: ok #1 3");
    assert_eq!(h.poll(), Some(4000));
    assert_eq!(h.send(1500, 2, l("a", 2, 10)), "");
    assert_eq!(h.poll(), Some(3500));
    // A two-phase waiter has no deadline.
    assert_eq!(h.send(1500, 3, e("a", 10)), "c3: queued");
    assert_eq!(h.poll(), Some(3500));
    assert_eq!(h.tick(3499), "");
    assert_eq!(h.tick(3500), "c2: timeout");
    assert_eq!(h.poll(), Some(4000));
    assert_eq!(h.tick(4000), "");
    // c3's record was granted at 4000 for 10 s.
    assert_eq!(h.poll(), Some(5000));
    assert_eq!(h.tick(5000), "");
    assert_eq!(h.poll(), Some(10000));
    assert_eq!(h.tick(10000), "");
    assert_eq!(h.poll(), Some(14000));
    assert_eq!(h.send(10000, 3, w("a", 0)), "c3: ok #2 10");
    assert_eq!(h.poll(), Some(15000));
    assert_eq!(h.tick(15000), "");
    assert_eq!(h.poll(), Some(20000));
}

#[test]
#[should_panic(expected = "time went back")]
fn time_going_back_panics() {
    let mut h = H::new(cfg(), 1);
    h.tick(1000);
    h.tick(999);
}

#[test]
fn connect_and_stats_advance_time_too() {
    let mut h = check(
        cfg(),
        2,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 5, 10)), ""),
            (5000, In::Connect, "c2: timeout | c3: connected"),
        ],
    );
    assert_eq!(h.core.connection_count(), 3);
    let st = h.stats(10000, 3);
    assert_eq!(st["locks"], json!([]));
}

#[test]
fn stats_json_shape_fields_sorted_entries_and_classification() {
    let mut h = check(
        cfg(),
        3,
        vec![
            (0, c(1, sl("z", 0, 3, 60)), "c1: ok #1 60"),
            (0, c(1, l("b", 0, 60)), "c1: ok #2 60"),
            (0, c(1, r("b", 2)), "c1: ok"),
            (0, c(1, sl("u", 0, 2, 60)), "c1: ok #3 60"),
            (0, c(1, sr("u", 3)), "c1: ok"),
            (0, c(1, sl("a", 0, 3, 60)), "c1: ok #4 60"),
            (0, c(1, sr("a", 4)), "c1: ok"),
            (500, c(2, sl("t", 0, 1, 60)), "c2: ok #5 60"),
            (1000, c(1, l("a", 0, 10)), "c1: ok #6 10"),
            (1000, c(2, l("a", 60, 10)), ""),
            (1000, c(3, sl("\u{e9}", 0, 1, 0)), "c3: ok #7 33"),
        ],
    );
    let mut out = Vec::new();
    h.core
        .handle(Time(3500), ConnId(3), Request::Stats, &mut out);
    let [Effect::Reply {
        reply: Reply::Stats(raw),
        ..
    }] = out.as_slice()
    else {
        panic!("{}", show(&out));
    };
    assert!(raw.starts_with(r#"{"connections":3,"locks":[{"key":"a","owner_conn_id":1,"#));
    assert!(raw.ends_with(r#""signal_channels":[]}"#));
    let st: Value = serde_json::from_str(raw).unwrap();
    assert_eq!(
        st,
        json!({
            "connections": 3,
            "locks": [
                {"key": "a", "owner_conn_id": 1, "lease_expires_in_s": 7.5, "waiters": 1},
                {"key": "t", "owner_conn_id": 2, "lease_expires_in_s": 57.0, "waiters": 0},
                {"key": "\u{e9}", "owner_conn_id": 3, "lease_expires_in_s": 30.5, "waiters": 0},
            ],
            "semaphores": [
                {"key": "z", "limit": 3, "holders": 1, "waiters": 0},
            ],
            "idle_locks": [
                {"key": "b", "idle_s": 3.5},
            ],
            "idle_semaphores": [
                {"key": "a", "idle_s": 3.5},
                {"key": "u", "idle_s": 3.5},
            ],
            "signal_channels": [],
        })
    );
    // Never in both lists, and a waiter-only lock shows owner 0.
    run(
        &mut h,
        vec![
            (3500, In::Bye(2), ""),
            (3500, c(1, r("a", 6)), "c1: ok"),
            (3500, c(3, sl("z", 0, 3, 60)), "c3: ok #8 60"),
        ],
    );
    let st = h.stats(3500, 3);
    assert_eq!(st["connections"], 2);
    assert!(entry(&st, "idle_locks", "a").is_some());
    assert!(entry(&st, "locks", "a").is_none());
    assert_eq!(entry(&st, "semaphores", "z").unwrap()["holders"], 2);
}

#[test]
fn stats_renders_non_utf8_and_control_bytes_in_keys_on_one_line() {
    let mut h = H::new(cfg(), 1);
    let k = Key::new(b"k\xff").unwrap();
    let mut out = Vec::new();
    h.core.handle(
        Time(0),
        ConnId(1),
        Request::Acquire {
            space: Space::Lock,
            key: k,
            timeout_s: 0,
            limit: 1,
            lease_s: Some(1),
        },
        &mut out,
    );
    assert_eq!(show(&out), "c1: ok #1 1");
    let st = h.stats(0, 1);
    assert_eq!(st["locks"][0]["key"], "k\u{fffd}");
    // Quotes, backslashes and control bytes stay inside one JSON line.
    let k = Key::new(b"q\"\\\x01\x0b\x7f").unwrap();
    let mut out = Vec::new();
    let req = Request::Enqueue {
        space: Space::Sem,
        key: k,
        limit: 2,
        lease_s: Some(1),
    };
    h.core.handle(Time(0), ConnId(1), req, &mut out);
    assert_eq!(show(&out), "c1: acquired #2 1");
    let st = h.stats(0, 1);
    assert_eq!(st["semaphores"][0]["key"], "q\"\\\u{1}\u{b}\u{7f}");
}

#[test]
fn owns_anything_for_each_kind_of_ownership() {
    let mut h = H::new(cfg(), 7);
    assert!(!h.core.owns_anything(ConnId(1)));
    assert!(!h.core.owns_anything(ConnId(99)));
    assert!(!h.core.is_blocked(ConnId(99)));
    run(
        &mut h,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 60, 10)), ""),
            (0, c(3, e("a", 10)), "c3: queued"),
            (0, c(4, e("b", 1)), "c4: acquired #2 1"),
            (0, c(5, sl("s", 0, 1, 10)), "c5: ok #3 10"),
            (0, c(6, Request::Ping), "c6: ok"),
            (0, c(7, e("c", 1)), "c7: acquired #4 1"),
            (0, c(7, w("c", 0)), "c7: ok #4 1"),
        ],
    );
    // holder; blocked waiter; queued record; granted record; semaphore slot; nothing.
    let owns: Vec<bool> = (1..=7).map(|i| h.core.owns_anything(ConnId(i))).collect();
    assert_eq!(owns, [true, true, true, true, true, false, true]);
    let blocked: Vec<bool> = (1..=7).map(|i| h.core.is_blocked(ConnId(i))).collect();
    assert_eq!(blocked, [false, true, false, false, false, false, false]);
    // The granted record of c4 outlives its lease (D18): still owned until `w`.
    h.tick(5000);
    assert!(h.core.owns_anything(ConnId(4)));
    assert!(!h.core.owns_anything(ConnId(7)));
    run(
        &mut h,
        vec![(5000, c(4, w("b", 0)), "c4: error_lease_expired")],
    );
    assert!(!h.core.owns_anything(ConnId(4)));
}
