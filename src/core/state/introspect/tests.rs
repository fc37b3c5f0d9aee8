//! Unit tests of bounded introspection: the sliced `stats` against the
//! one-piece one, with and without inputs between its steps; the `stats`
//! gate; top lists from the index and from scans; key views and their
//! events; the bounds of the event rings.

use super::*;
use crate::core::state::CoreConfig;
use crate::wire::Status;

const SALT: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

fn cfg() -> CoreConfig {
    CoreConfig {
        gc_interval_s: 3600,
        gc_max_idle_s: 3600,
        salt_key: SALT,
        max_locks: 100_000,
        ..CoreConfig::default()
    }
}

fn key(k: &str) -> Key {
    Key::new(k.as_bytes()).expect("valid test key")
}

fn acquire(space: Space, k: &str, timeout_s: u64, limit: u64, lease_s: u64) -> Request {
    Request::Acquire {
        space,
        key: key(k),
        timeout_s,
        limit,
        lease_s: Some(lease_s),
    }
}

fn l(k: &str, timeout_s: u64, lease_s: u64) -> Request {
    acquire(Space::Lock, k, timeout_s, 1, lease_s)
}

fn sl(k: &str, timeout_s: u64, limit: u64, lease_s: u64) -> Request {
    acquire(Space::Sem, k, timeout_s, limit, lease_s)
}

/// A core, its connections, and the effects so far.
struct H {
    core: Core,
    out: Vec<Effect>,
    now: Time,
}

impl H {
    fn new(cfg: CoreConfig) -> H {
        H {
            core: Core::new(cfg, Time(0)),
            out: Vec::new(),
            now: Time(0),
        }
    }

    fn conn(&mut self) -> ConnId {
        self.core.connect(self.now, &mut self.out)
    }

    fn at(&mut self, ms: u64) -> &mut H {
        self.now = Time(ms);
        self
    }

    fn send(&mut self, c: ConnId, req: Request) -> Option<Reply> {
        self.out.clear();
        self.core.handle(self.now, c, req, &mut self.out);
        self.out.iter().find_map(|e| match e {
            Effect::Reply { conn, reply } if *conn == c => Some(reply.clone()),
            _ => None,
        })
    }

    fn token(&mut self, c: ConnId, req: Request) -> crate::wire::Token {
        match self.send(c, req) {
            Some(Reply::Granted { token, .. }) | Some(Reply::Acquired { token, .. }) => token,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn run(&mut self, job: &mut dyn Job) {
        let mut out = Vec::new();
        run_to_end(job, &mut self.core, self.now, &mut out);
    }

    fn top(
        &mut self,
        sort: Sort,
        top: usize,
        prefix: Option<&str>,
        space: Option<Space>,
    ) -> Vec<KeyEntry> {
        let mut job = TopJob::new(TopQuery {
            sort,
            top,
            prefix: prefix.map(|p| p.as_bytes().to_vec()),
            space,
        })
        .sliced(3);
        self.run(&mut job);
        job.into_result()
    }
}

fn keys(entries: &[KeyEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.key.as_str()).collect()
}

/// A state with every kind of `stats` entry: held and waited-for locks, a
/// semaphore, idle keys of both kinds, a key in both spaces, listeners.
fn busy() -> H {
    let mut h = H::new(cfg());
    let (a, b, c) = (h.conn(), h.conn(), h.conn());
    for i in 0..40 {
        h.token(a, l(&format!("lock-{i:02}"), 0, 30));
    }
    let w = h.conn();
    h.send(w, l("lock-00", 10, 30));
    h.send(
        c,
        Request::Enqueue {
            space: Space::Lock,
            key: key("lock-01"),
            limit: 1,
            lease_s: None,
        },
    );
    h.token(b, sl("pool", 0, 3, 30));
    h.token(c, sl("pool", 0, 3, 30));
    h.token(c, sl("lock-05", 0, 2, 30));
    let t = h.token(c, l("idle-lock", 0, 30));
    h.send(
        c,
        Request::Release {
            space: Space::Lock,
            key: key("idle-lock"),
            token: t.to_string().into_bytes().into(),
        },
    );
    let t = h.token(c, sl("idle-sem", 0, 4, 30));
    h.send(
        c,
        Request::Release {
            space: Space::Sem,
            key: key("idle-sem"),
            token: t.to_string().into_bytes().into(),
        },
    );
    for (p, g) in [("jobs.*", None), ("jobs.*", Some("g")), ("a.>", None)] {
        h.send(
            c,
            Request::Listen {
                pattern: key(p),
                group: g.map(|g: &str| g.as_bytes().into()),
            },
        );
    }
    h.at(1500);
    h
}

#[test]
fn sliced_stats_equal_the_one_piece_stats() {
    let mut h = busy();
    h.core.handle_timeout(h.now, &mut h.out);
    let whole = h.core.stats_json();
    for slice in [1, 2, 7, SLICE] {
        let mut job = StatsJob::new().sliced(slice);
        h.run(&mut job);
        assert_eq!(job.render(), whole, "slice {slice}");
    }
}

#[test]
fn stats_in_pieces_join_to_the_one_piece_stats() {
    let mut h = busy();
    h.core.handle_timeout(h.now, &mut h.out);
    let whole = h.core.stats_json();
    for piece in [1, 16, 100, usize::MAX] {
        let mut job = StatsJob::new().sliced(3);
        h.run(&mut job);
        let pieces = job.render_pieces(piece);
        if piece < 100 {
            assert!(pieces.len() > 3, "piece {piece}: {} pieces", pieces.len());
        }
        if piece == usize::MAX {
            assert_eq!(pieces.len(), 1);
        }
        assert!(pieces.iter().all(|p| !p.is_empty()), "piece {piece}");
        assert_eq!(pieces.concat(), whole.as_bytes(), "piece {piece}");
    }
}

/// A paced render (the render thread's) gives the same bytes, and calls
/// its pacer between its stages.
#[test]
fn a_paced_render_gives_the_one_piece_stats() {
    let mut h = busy();
    h.core.handle_timeout(h.now, &mut h.out);
    let whole = h.core.stats_json();
    let mut job = StatsJob::new().sliced(3);
    h.run(&mut job);
    let mut calls = 0;
    let json = stats::join(job.render_pieces_paced(usize::MAX, &mut || calls += 1));
    assert_eq!(json, whole);
    // Before and after the sort of the readings, before the entries, then
    // once after each sort of `stats::render_pieces_paced`.
    assert!(calls >= 7, "{calls} calls");
}

#[test]
fn totals_agree_with_the_stats_arrays() {
    let mut h = busy();
    let mut job = StatsJob::totals().sliced(5);
    h.run(&mut job);
    let t = job.totals_so_far();
    let stats: serde_json::Value = serde_json::from_str(&h.core.stats_json()).unwrap();
    let sum = |arr: &str, field: &str| -> u64 {
        stats[arr]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(t.connections, 4);
    assert_eq!(t.locks, stats["locks"].as_array().unwrap().len() as u64);
    assert_eq!(t.lock_waiters, sum("locks", "waiters"));
    assert_eq!(t.semaphore_holders, sum("semaphores", "holders"));
    assert_eq!(t.semaphore_waiters, sum("semaphores", "waiters"));
    assert_eq!(t.signal_listeners, sum("signal_channels", "listeners"));
    assert_eq!((t.lock_waiters, t.signal_listeners), (2, 3));
}

/// Inputs between the steps: every key that exists throughout is listed
/// once, with its state as of the step that read it; a key collected and
/// created again in a slot the walk has not reached is listed once, as
/// last read.
#[test]
fn a_sliced_stats_lists_each_key_once_whatever_happens_between_steps() {
    let mut c = cfg();
    c.gc_interval_s = 1;
    c.gc_max_idle_s = 0;
    let mut h = H::new(c);
    let a = h.conn();
    // Slots 0..6: k0..k5 held, and k0x (slot 6).
    let tokens: Vec<_> = (0..6)
        .map(|i| h.token(a, l(&format!("k{i}"), 0, 3600)))
        .collect();
    let t = h.token(a, l("k0x", 0, 3600));
    let mut job = StatsJob::new().sliced(2);
    let mut out = Vec::new();
    assert!(!job.step(&mut h.core, h.now, &mut out), "slots 0 and 1");
    // k0 (read already) and k0x go; the idle GC frees slots 0 and 6, 6
    // last, so k0 comes back in slot 6, ahead of the walk.
    for (k, t) in [("k0", tokens[0]), ("k0x", t)] {
        h.send(
            a,
            Request::Release {
                space: Space::Lock,
                key: key(k),
                token: t.to_string().into_bytes().into(),
            },
        );
    }
    h.at(2_000);
    h.core.handle_timeout(h.now, &mut h.out);
    assert!(
        h.core.lookup(Space::Lock, &key("k0")).is_none(),
        "collected"
    );
    let b = h.conn();
    h.token(b, l("k0", 0, 3600));
    assert_eq!(h.core.lookup(Space::Lock, &key("k0")), Some(6));
    while !job.step(&mut h.core, h.now, &mut out) {}
    let got: serde_json::Value = serde_json::from_str(&job.render()).unwrap();
    let locks = got["locks"].as_array().unwrap();
    let names: Vec<&str> = locks.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(names, ["k0", "k1", "k2", "k3", "k4", "k5"]);
    assert_eq!(
        locks[0]["owner_conn_id"].as_u64(),
        Some(b.0),
        "the latest reading"
    );
    assert_eq!(got["connections"].as_u64(), Some(2));
}

/// A connection that may not have `stats` gets exactly what `handle`
/// would answer; one that may gets nothing yet.
#[test]
fn the_stats_gate_answers_as_stats_would() {
    let mut c = cfg();
    c.auth_token = Some(b"s3cret".to_vec());
    for draining in [false, true] {
        let mut a = H::new(c.clone());
        let mut b = H::new(c.clone());
        let (ca, cb) = (a.conn(), b.conn());
        if draining {
            for h in [&mut a, &mut b] {
                h.send(
                    ConnId(1),
                    Request::Auth {
                        token: b"s3cret".to_vec().into(),
                    },
                );
                let now = h.now;
                h.core.start_drain(now, &mut h.out);
            }
        }
        let mut gate = Vec::new();
        assert!(!a.core.stats_gate(a.now, ca, &mut gate));
        b.send(cb, Request::Stats);
        assert_eq!(gate, b.out, "draining: {draining}");
        let want = if draining {
            Status::ErrorDraining
        } else {
            Status::ErrorAuth
        };
        assert!(gate.contains(&Effect::Reply {
            conn: ca,
            reply: Reply::Status(want)
        }));
    }
    let mut h = H::new(c);
    let a = h.conn();
    h.send(
        a,
        Request::Auth {
            token: b"s3cret".to_vec().into(),
        },
    );
    let mut out = Vec::new();
    assert!(h.core.stats_gate(h.now, a, &mut out));
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn busiest_keys_come_from_the_contended_index_longest_queue_first() {
    let mut h = H::new(cfg());
    let owner = h.conn();
    // q3: 3 waiters, q1: 1, q2: 2 (a semaphore), free: none.
    for (k, n) in [("q3", 3), ("q1", 1)] {
        h.token(owner, l(k, 0, 60));
        for _ in 0..n {
            let w = h.conn();
            assert_eq!(h.send(w, l(k, 30, 60)), None, "queued");
        }
    }
    h.token(owner, sl("q2", 0, 1, 60));
    for _ in 0..2 {
        let w = h.conn();
        h.send(w, sl("q2", 30, 1, 60));
    }
    h.token(owner, l("free", 0, 60));
    h.at(2_000);
    let top = h.top(Sort::Waiters, 10, None, None);
    assert_eq!(keys(&top), ["q3", "q2", "q1"]);
    assert_eq!(top[0].waiters, 3);
    assert_eq!(top[0].queue.len(), 3);
    assert_eq!(top[0].queue[0].conn, 2, "FIFO: the first waiter first");
    assert_eq!(top[0].queue[0].waiting_for_s, 2.0);
    assert_eq!(top[0].queue[0].timeout_in_s, Some(28.0));
    let holder = top[0].holder.as_ref().expect("a lock shows its holder");
    assert_eq!((holder.conn, holder.held_for_s), (owner.0, 2.0));
    assert_eq!(keys(&h.top(Sort::Waiters, 2, None, None)), ["q3", "q2"]);
    assert_eq!(
        keys(&h.top(Sort::Waiters, 10, None, Some(Space::Sem))),
        ["q2"]
    );
    assert_eq!(keys(&h.top(Sort::Waiters, 10, Some("q1"), None)), ["q1"]);
    // The index follows the queues: q3's head times out, q1's waiter is
    // granted when its holder releases.
    h.at(32_000);
    h.core.handle_timeout(h.now, &mut h.out);
    assert!(h.top(Sort::Waiters, 10, None, None).is_empty());
    h.core.verify();
}

#[test]
fn longest_held_fullest_and_key_order_come_from_scans() {
    let mut h = H::new(cfg());
    let (a, b) = (h.conn(), h.conn());
    h.token(a, l("old", 0, 600));
    h.at(1_000);
    h.token(a, sl("sem", 0, 4, 600));
    h.token(b, sl("sem", 0, 4, 600));
    h.at(2_000);
    h.token(b, l("new", 0, 600));
    h.token(b, sl("full", 0, 2, 600));
    h.token(b, sl("full", 0, 2, 600));
    h.at(5_000);
    let top = h.top(Sort::HeldFor, 10, None, None);
    assert_eq!(keys(&top), ["old", "sem", "full", "new"]);
    assert_eq!(top[0].held_for_s, Some(5.0));
    assert_eq!(top[1].held_for_s, Some(4.0), "a semaphore's oldest holder");
    assert_eq!(keys(&h.top(Sort::HeldFor, 2, None, None)), ["old", "sem"]);
    assert_eq!(
        keys(&h.top(Sort::HeldFor, 10, None, Some(Space::Sem))),
        ["sem", "full"]
    );
    assert_eq!(
        keys(&h.top(Sort::Fill, 10, None, None)),
        ["full", "new", "old", "sem"],
        "full first (most holders first among them, then by key), then by fill"
    );
    assert_eq!(
        keys(&h.top(Sort::Key, 3, None, None)),
        ["full", "new", "old"]
    );
    assert_eq!(keys(&h.top(Sort::Key, 10, Some("n"), None)), ["new"]);
    assert!(h.top(Sort::Key, 10, Some("zzz"), None).is_empty());
}

#[test]
fn more_contended_keys_than_a_slice_are_all_listed() {
    // `top` runs in slices of 3 here: five contended keys take two steps,
    // and a step that ends on its slice with room left is not the last.
    let mut h = H::new(cfg());
    let owner = h.conn();
    for i in 0..5 {
        let k = format!("k{i}");
        h.token(owner, l(&k, 0, 60));
        for _ in 0..=i {
            let w = h.conn();
            assert_eq!(h.send(w, l(&k, 30, 60)), None, "queued");
        }
    }
    let top = h.top(Sort::Waiters, 10, None, None);
    assert_eq!(keys(&top), ["k4", "k3", "k2", "k1", "k0"]);
}

#[test]
fn a_semaphores_oldest_holder_is_found_whatever_the_lease_order() {
    // The lease walk meets holders by expiry: the newer holder's short
    // lease comes first, the older holder's long one later, and the older
    // grant must still win.
    let mut h = H::new(cfg());
    let (a, b) = (h.conn(), h.conn());
    h.token(a, sl("sem", 0, 2, 600));
    h.at(1_000);
    h.token(b, sl("sem", 0, 2, 10));
    h.at(5_000);
    let top = h.top(Sort::HeldFor, 10, None, None);
    assert_eq!(keys(&top), ["sem"]);
    assert_eq!(top[0].held_for_s, Some(5.0), "held since the first grant");
}

#[test]
fn a_key_view_shows_holder_queue_and_recent_events() {
    let mut h = H::new(cfg());
    let (a, b, c) = (h.conn(), h.conn(), h.conn());
    let t = h.token(a, l("k", 0, 10));
    h.at(1_000);
    assert_eq!(h.send(b, l("k", 5, 10)), None);
    h.send(
        c,
        Request::Enqueue {
            space: Space::Lock,
            key: key("k"),
            limit: 1,
            lease_s: None,
        },
    );
    let v = h.core.key_view(Space::Lock, &key("k"), 10).expect("exists");
    assert_eq!((v.kind, v.limit, v.holders, v.waiters), ("lock", 1, 1, 2));
    assert_eq!(v.holder_list[0].fence, t.fence);
    assert_eq!(v.holder_list[0].lease_expires_in_s, 9.0);
    let q: Vec<(u64, bool, Option<f64>)> = v
        .queue
        .iter()
        .map(|w| (w.conn, w.two_phase, w.timeout_in_s))
        .collect();
    assert_eq!(q, [(b.0, false, Some(5.0)), (c.0, true, None)]);
    assert_eq!(
        h.core
            .key_view(Space::Lock, &key("k"), 1)
            .unwrap()
            .queue
            .len(),
        1
    );
    assert!(
        h.core.key_view(Space::Sem, &key("k"), 10).is_none(),
        "other space"
    );
    // b times out at 6 s; a's lease expires at 10 s and c is granted; c's
    // connection goes away with it.
    h.at(10_000);
    h.core.handle_timeout(h.now, &mut h.out);
    h.at(10_500);
    h.core.disconnect(h.now, c, &mut h.out);
    let v = h.core.key_view(Space::Lock, &key("k"), 10).unwrap();
    let events: Vec<(&str, u64, f64)> = v
        .events
        .iter()
        .map(|e| (e.event, e.conn, e.seconds))
        .collect();
    assert_eq!(
        events,
        [
            ("disconnected", c.0, 0.5),
            ("granted", c.0, 9.0),
            ("expired", a.0, 10.0),
            ("timed_out", b.0, 5.0),
            ("granted", a.0, 0.0),
        ],
        "newest first"
    );
    assert_eq!(v.events[0].ago_s, 0.0);
    assert_eq!(v.events[4].ago_s, 10.5);
    assert_eq!(v.events[4].fence, Some(t.fence));
}

#[test]
fn disconnects_and_zero_timeouts_are_events() {
    let mut h = H::new(cfg());
    let (a, b, c) = (h.conn(), h.conn(), h.conn());
    for _ in 0..3 {
        h.token(a, sl("s", 0, 3, 60));
    }
    assert_eq!(
        h.send(b, sl("s", 0, 3, 60)),
        Some(Reply::Status(Status::Timeout))
    );
    h.send(c, sl("s", 60, 3, 60));
    h.at(3_000);
    h.core.disconnect(h.now, c, &mut h.out);
    h.core.disconnect(h.now, a, &mut h.out);
    let v = h.core.key_view(Space::Sem, &key("s"), 10).unwrap();
    let events: Vec<(&str, u64, u32)> = v
        .events
        .iter()
        .map(|e| (e.event, e.conn, e.count))
        .collect();
    assert_eq!(
        events[..3],
        [
            ("disconnected", a.0, 3),
            ("left_queue", c.0, 1),
            ("timed_out", b.0, 1)
        ]
    );
    assert_eq!(v.events[1].seconds, 3.0, "c waited 3 s");
}

#[test]
fn event_rings_are_bounded_and_forget_collected_keys() {
    let mut c = cfg();
    c.key_events = EVENTS_PER_BUCKET; // one ring
    c.gc_interval_s = 1;
    c.gc_max_idle_s = 0;
    let mut h = H::new(c);
    let a = h.conn();
    for i in 0..50u64 {
        let t = h.token(a, l("busy", 0, 60));
        h.send(
            a,
            Request::Release {
                space: Space::Lock,
                key: key("busy"),
                token: t.to_string().into_bytes().into(),
            },
        );
        h.at(i);
    }
    let t = h.token(a, l("quiet", 0, 60));
    assert_eq!(h.core.insight.events.len(), EVENTS_PER_BUCKET);
    let v = h.core.key_view(Space::Lock, &key("quiet"), 0).unwrap();
    assert_eq!(v.events.len(), 1, "its own event only");
    assert_eq!(
        h.core
            .key_view(Space::Lock, &key("busy"), 0)
            .unwrap()
            .events
            .len(),
        15
    );
    h.send(
        a,
        Request::Release {
            space: Space::Lock,
            key: key("quiet"),
            token: t.to_string().into_bytes().into(),
        },
    );
    h.at(5_000);
    h.core.handle_timeout(h.now, &mut h.out);
    assert!(h.core.key_view(Space::Lock, &key("busy"), 0).is_none());
    assert_eq!(h.core.insight.events.len(), 0, "collected keys' events go");
    let mut none = cfg();
    none.key_events = 0;
    let mut h = H::new(none);
    let a = h.conn();
    h.token(a, l("k", 0, 60));
    assert!(h
        .core
        .key_view(Space::Lock, &key("k"), 0)
        .unwrap()
        .events
        .is_empty());
}

#[test]
fn a_semaphores_holders_come_from_a_lease_walk() {
    let mut h = H::new(cfg());
    let (a, b) = (h.conn(), h.conn());
    h.token(a, l("other", 0, 5));
    let first = h.token(a, sl("s", 0, 5, 100));
    h.at(1_000);
    h.token(b, sl("s", 0, 5, 50));
    h.token(b, sl("s2", 0, 5, 50));
    h.at(2_000);
    let third = h.token(a, sl("s", 0, 5, 10));
    let mut job = HoldersJob::new(Space::Sem, key("s"), 10).sliced(1);
    h.run(&mut job);
    let got: Vec<(u64, f64)> = job
        .into_result()
        .iter()
        .map(|v| (v.conn, v.held_for_s))
        .collect();
    assert_eq!(
        got,
        [(a.0, 2.0), (b.0, 1.0), (a.0, 0.0)],
        "longest held first"
    );
    let mut job = HoldersJob::new(Space::Sem, key("s"), 2);
    h.run(&mut job);
    let fences: Vec<u64> = job.into_result().iter().map(|v| v.fence).collect();
    assert_eq!(fences.len(), 2);
    assert_eq!(fences[0], first.fence);
    assert!(!fences.contains(&third.fence));
    let mut job = HoldersJob::new(Space::Sem, key("none"), 2);
    h.run(&mut job);
    assert!(job.into_result().is_empty());
}

#[test]
fn channels_count_their_pushes() {
    let mut h = H::new(cfg());
    let (a, b, c, p) = (h.conn(), h.conn(), h.conn(), h.conn());
    let listen = |pattern: &str, group: Option<&str>| Request::Listen {
        pattern: key(pattern),
        group: group.map(|g| g.as_bytes().into()),
    };
    h.send(a, listen("jobs.*", None));
    h.send(b, listen("jobs.*", None));
    h.send(b, listen("jobs.*", Some("workers")));
    h.send(c, listen("jobs.*", Some("workers")));
    h.send(c, listen("other", None));
    for _ in 0..3 {
        let r = h.send(
            p,
            Request::Signal {
                channel: key("jobs.x"),
                payload: b"hi".to_vec().into(),
            },
        );
        assert_eq!(r, Some(Reply::OkInt(3)));
    }
    let mut job = ChannelsJob::new(10).sliced(1);
    h.run(&mut job);
    let (views, total) = job.into_result();
    let got: Vec<(&str, &str, usize, u64)> = views
        .iter()
        .map(|v| (v.pattern.as_str(), v.group.as_str(), v.listeners, v.pushes))
        .collect();
    assert_eq!(
        got,
        [
            ("jobs.*", "", 2, 6),
            ("jobs.*", "workers", 2, 3),
            ("other", "", 1, 0)
        ]
    );
    assert_eq!(total, 3);
    let mut job = ChannelsJob::new(1);
    h.run(&mut job);
    assert_eq!(job.into_result().0.len(), 1);
}

/// Pushes to an exact channel's own listeners and its groups are counted
/// on that channel's rows, as wildcard patterns' are.
#[test]
fn exact_channels_count_their_pushes() {
    let mut h = H::new(cfg());
    let (a, b, p) = (h.conn(), h.conn(), h.conn());
    let listen = |pattern: &str, group: Option<&str>| Request::Listen {
        pattern: key(pattern),
        group: group.map(|g| g.as_bytes().into()),
    };
    h.send(a, listen("jobs.x", None));
    h.send(a, listen("jobs.x", Some("workers")));
    h.send(b, listen("jobs.x", Some("workers")));
    for _ in 0..2 {
        let r = h.send(
            p,
            Request::Signal {
                channel: key("jobs.x"),
                payload: b"hi".to_vec().into(),
            },
        );
        assert_eq!(r, Some(Reply::OkInt(2)));
    }
    let mut job = ChannelsJob::new(10);
    h.run(&mut job);
    let (views, _) = job.into_result();
    let got: Vec<(&str, &str, usize, u64)> = views
        .iter()
        .map(|v| (v.pattern.as_str(), v.group.as_str(), v.listeners, v.pushes))
        .collect();
    // Equal pushes: the row with more listeners first.
    assert_eq!(got, [("jobs.x", "workers", 2, 2), ("jobs.x", "", 1, 2)]);
}

/// `verify` checks the contended index against the queues.
#[test]
#[should_panic(expected = "introspection indexes")]
fn verify_catches_a_stale_contended_entry() {
    let mut h = H::new(cfg());
    let a = h.conn();
    h.token(a, l("k", 0, 60));
    h.core.insight.contended.insert((1, 0));
    h.core.verify();
}

/// `verify` checks that each recorded event sits in its slot's ring and
/// names a live key: one moved to a slot that holds nothing, in the
/// same ring, is caught.
#[test]
#[should_panic(expected = "introspection indexes")]
fn verify_catches_an_event_of_a_slot_that_holds_nothing() {
    let mut h = H::new(cfg());
    let a = h.conn();
    h.token(a, l("k", 0, 60));
    h.core.verify();
    let rings = h.core.insight.events.rings.len() as ResId;
    let event = h
        .core
        .insight
        .events
        .rings
        .iter_mut()
        .flat_map(|r| r.iter_mut())
        .next()
        .expect("the grant is an event");
    // Same ring, a slot past every resource.
    event.res += rings * 1_000;
    h.core.verify();
}

/// A stats job counts what it listed (the engine renders a short one
/// inline): one entry per held key, here with no channel beside them.
#[test]
fn a_stats_job_counts_the_entries_it_listed() {
    let mut h = H::new(cfg());
    let a = h.conn();
    for k in ["a", "b", "c"] {
        h.token(a, l(k, 0, 60));
    }
    let mut job = StatsJob::new().sliced(2);
    h.run(&mut job);
    assert_eq!(job.listed(), 3);
}

/// A top-keys job reports the connections it saw at its last step.
#[test]
fn a_top_job_counts_the_connections() {
    let mut h = H::new(cfg());
    let conns: Vec<ConnId> = (0..3).map(|_| h.conn()).collect();
    h.token(conns[0], l("k", 0, 60));
    let mut job = TopJob::new(TopQuery {
        sort: Sort::Waiters,
        top: 10,
        prefix: None,
        space: None,
    });
    h.run(&mut job);
    assert_eq!(job.connections(), 3);
}

/// A random mix of acquires, two-phase waits, releases, timeouts and
/// disconnects over a few keys: after every input the index names exactly
/// the keys with waiters (`verify`), and the longest queue is first.
#[test]
fn the_contended_index_follows_random_traffic() {
    let mut h = H::new(cfg());
    let conns: Vec<ConnId> = (0..12).map(|_| h.conn()).collect();
    let mut live = conns.clone();
    let mut held: Vec<(ConnId, &str, crate::wire::Token)> = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let names = ["a", "b", "c", "d"];
    let mut queues_seen = 0;
    for step in 0..400u64 {
        h.at(step * 100);
        let c = live[next(live.len() as u64) as usize];
        let k = names[next(4) as usize];
        if h.core.is_blocked(c) {
            continue;
        }
        match next(6) {
            0 | 1 => {
                if let Some(Reply::Granted { token, .. }) = h.send(c, l(k, 1 + next(3), 60)) {
                    held.push((c, k, token));
                }
            }
            2 => {
                h.send(
                    c,
                    Request::Enqueue {
                        space: Space::Lock,
                        key: key(k),
                        limit: 1,
                        lease_s: None,
                    },
                );
            }
            3 if !held.is_empty() => {
                let (hc, hk, t) = held.swap_remove(next(held.len() as u64) as usize);
                if live.contains(&hc) && !h.core.is_blocked(hc) {
                    h.send(
                        hc,
                        Request::Release {
                            space: Space::Lock,
                            key: key(hk),
                            token: t.to_string().into_bytes().into(),
                        },
                    );
                }
            }
            4 if live.len() > 4 => {
                let now = h.now;
                h.core.disconnect(now, c, &mut h.out);
                live.retain(|x| *x != c);
                let fresh = h.conn();
                live.push(fresh);
            }
            _ => {
                let now = h.now;
                h.core.handle_timeout(now, &mut h.out);
            }
        }
        h.core.verify();
        let top = h.top(Sort::Waiters, 4, None, None);
        assert!(top.windows(2).all(|w| w[0].waiters >= w[1].waiters));
        assert!(top.iter().all(|e| e.waiters > 0));
        queues_seen += usize::from(top.first().is_some_and(|e| e.waiters >= 2));
    }
    assert!(queues_seen > 50, "the traffic formed queues: {queues_seen}");
}
