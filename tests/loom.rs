//! loom checks of the concurrency the server adds around the core: the
//! mailbox hand-off between tasks, and the races between a grant and the
//! waiter's own departure (disconnect, timeout, shutdown, and the HTTP
//! front's cancel when a long poll's client goes away). Every
//! interleaving of the threads below is explored.
//!
//! Run with:
//! `RUSTFLAGS="--cfg dflockd_loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom`
//!
//! The core itself is single-threaded behind one mutex; what can go wrong is
//! in what surrounds it: a reply routed to a mailbox whose receiver is
//! leaving, a wake-up lost between checking the queue and parking, a waiter
//! answered twice.
#![cfg(dflockd_loom)]

use std::collections::HashMap;

use dflockd::core::{ConnId, Core, CoreConfig, Effect, Time};
use dflockd::server::mailbox::{route, withdraw_blocked, Delivery, Mailbox};
use dflockd::sync::{lock, Arc, Mutex};
use dflockd::wire::{Key, Reply, Request, Space, Status};

use loom::thread;

/// The server's shared state reduced to what the races involve.
struct Hub {
    core: Core,
    mailboxes: HashMap<ConnId, Arc<Mailbox>>,
}

fn key() -> Key {
    Key::new(b"k").unwrap()
}

fn acquire(timeout_s: u64) -> Request {
    Request::Acquire {
        space: Space::Lock,
        key: key(),
        timeout_s,
        limit: 1,
        lease_s: Some(30),
    }
}

/// A holder, a blocked waiter, and the holder's token.
fn setup() -> (Arc<Mutex<Hub>>, ConnId, ConnId, Arc<Mailbox>, Vec<u8>) {
    let mut core = Core::new(CoreConfig::default(), Time(0));
    let mut out = Vec::new();
    let holder = core.connect(Time(0), &mut out);
    let waiter = core.connect(Time(0), &mut out);
    core.handle(Time(0), holder, acquire(0), &mut out);
    let token = match out.pop() {
        Some(Effect::Reply {
            reply: Reply::Granted { token, .. },
            ..
        }) => token.to_string().into_bytes(),
        other => panic!("expected a grant, got {other:?}"),
    };
    core.handle(Time(0), waiter, acquire(10), &mut out);
    assert!(out.is_empty(), "the waiter blocks");
    let mb = Arc::new(Mailbox::new());
    let mut mailboxes = HashMap::new();
    mailboxes.insert(waiter, mb.clone());
    mailboxes.insert(holder, Arc::new(Mailbox::new()));
    (
        Arc::new(Mutex::new(Hub { core, mailboxes })),
        holder,
        waiter,
        mb,
        token,
    )
}

/// Releases `token` as `holder` at `clock`, read under the lock and clamped
/// to the core's time, as the server does.
fn release_from(hub: &Mutex<Hub>, holder: ConnId, token: Vec<u8>, clock: Time) {
    let mut h = lock(hub);
    let now = h.core.now().max(clock);
    let mut out = Vec::new();
    h.core.handle(
        now,
        holder,
        Request::Release {
            space: Space::Lock,
            key: key(),
            token: token.into(),
        },
        &mut out,
    );
    let hub = &mut *h;
    route(&hub.mailboxes, &mut out, Some(holder));
    assert!(
        out.iter().all(
            |e| matches!(e, Effect::Reply { conn, .. } | Effect::Close { conn } if *conn == holder)
        ),
        "only the releaser's own effects stay: {out:?}"
    );
}

/// Runs one core input on `hub` as the server does: under the lock, with
/// the clock clamped to the core's time, routing every effect (none is the
/// caller's own).
fn apply(hub: &Mutex<Hub>, clock: Time, input: impl FnOnce(&mut Hub, Time, &mut Vec<Effect>)) {
    let mut h = lock(hub);
    let now = h.core.now().max(clock);
    let mut out = Vec::new();
    input(&mut h, now, &mut out);
    route(&h.mailboxes, &mut out, None);
}

fn drain_mailbox(mb: &Mailbox) -> Vec<Delivery> {
    std::iter::from_fn(|| mb.try_recv()).collect()
}

fn holders(hub: &Mutex<Hub>) -> usize {
    let mut h = lock(hub);
    let mut out = Vec::new();
    let c = h.core.connect(Time(20_000), &mut out);
    h.core.handle(Time(20_000), c, Request::Stats, &mut out);
    let json = match out.pop() {
        Some(Effect::Reply {
            reply: Reply::Stats(j),
            ..
        }) => j,
        other => panic!("expected stats, got {other:?}"),
    };
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["locks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["owner_conn_id"] != 0)
        .count()
}

/// A push and a receiver parking concurrently: the wake-up is never lost.
#[test]
fn mailbox_push_wakes_receiver() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        let tx = mb.clone();
        let t = thread::spawn(move || tx.push(Delivery::Reply(Reply::Ok)));
        let got = loom::future::block_on(mb.recv());
        assert_eq!(got, Delivery::Reply(Reply::Ok));
        t.join().unwrap();
        assert!(mb.try_recv().is_none());
    });
}

/// Two pushes from two threads arrive, both, once each.
#[test]
fn mailbox_two_pushers() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        let a = mb.clone();
        let b = mb.clone();
        let ta = thread::spawn(move || a.push(Delivery::Reply(Reply::Ok)));
        let tb = thread::spawn(move || b.push(Delivery::Close));
        let first = loom::future::block_on(mb.recv());
        let second = loom::future::block_on(mb.recv());
        ta.join().unwrap();
        tb.join().unwrap();
        let mut got = vec![first, second];
        got.sort_by_key(|d| matches!(d, Delivery::Close));
        assert_eq!(got, vec![Delivery::Reply(Reply::Ok), Delivery::Close]);
    });
}

/// A grant handed off by a release races the waiter's disconnect. Either
/// the waiter leaves first (no grant is made to it) or the grant lands in
/// its mailbox and the disconnect releases it. Never a leaked holder.
#[test]
fn grant_races_disconnect() {
    loom::model(|| {
        let (hub, holder, waiter, mb, token) = setup();
        let h1 = hub.clone();
        let releaser = thread::spawn(move || release_from(&h1, holder, token, Time(1_000)));
        apply(&hub, Time(1_000), |h, now, out| {
            h.core.disconnect(now, waiter, out);
            h.mailboxes.remove(&waiter);
        });
        releaser.join().unwrap();
        let got = drain_mailbox(&mb);
        assert!(got.len() <= 1, "at most one answer: {got:?}");
        assert_eq!(holders(&hub), 0, "nothing stays held");
    });
}

/// A release at 9.999 s races the timer task firing at the waiter's
/// deadline (10 s). Each thread reads its clock under the lock, as the
/// server does, clamped to the core's time. The waiter gets exactly one
/// answer: the grant if the release went first, `timeout` otherwise.
#[test]
fn grant_races_timeout() {
    loom::model(|| {
        let (hub, holder, _waiter, mb, token) = setup();
        let h1 = hub.clone();
        let releaser = thread::spawn(move || release_from(&h1, holder, token, Time(9_999)));
        apply(&hub, Time(10_000), |h, now, out| {
            h.core.handle_timeout(now, out)
        });
        releaser.join().unwrap();
        let got = drain_mailbox(&mb);
        assert_eq!(got.len(), 1, "exactly one answer: {got:?}");
        assert!(matches!(
            got[0],
            Delivery::Reply(Reply::Granted { .. })
                | Delivery::Reply(Reply::Status(Status::Timeout))
        ));
    });
}

/// Shutdown cancels a blocked waiter while a release hands it the lock: one
/// answer, either the grant or `error`.
#[test]
fn grant_races_drain() {
    loom::model(|| {
        let (hub, holder, _waiter, mb, token) = setup();
        let h1 = hub.clone();
        let releaser = thread::spawn(move || release_from(&h1, holder, token, Time(1_000)));
        apply(&hub, Time(1_000), |h, now, out| {
            h.core.start_drain(now, out)
        });
        releaser.join().unwrap();
        let got = drain_mailbox(&mb);
        assert_eq!(got.len(), 1, "exactly one answer: {got:?}");
        assert!(matches!(
            got[0],
            Delivery::Reply(Reply::Granted { .. }) | Delivery::Reply(Reply::Status(Status::Error))
        ));
    });
}

/// The HTTP front withdraws a long poll whose client went away while a
/// release hands the lock to that very request. Either the cancel comes
/// first (the waiter leaves, nothing is granted to it) or the grant does
/// and is released by the withdrawal. Either way the connection lives on,
/// owning nothing, with nothing left in its mailbox, and the lock is free.
#[test]
fn grant_races_cancel() {
    loom::model(|| {
        let (hub, holder, waiter, mb, token) = setup();
        let h1 = hub.clone();
        let releaser = thread::spawn(move || release_from(&h1, holder, token, Time(1_000)));
        {
            let mut h = lock(&hub);
            let now = h.core.now().max(Time(1_000));
            let mut out = Vec::new();
            let closed =
                withdraw_blocked(&mut h.core, now, waiter, &mb, Space::Lock, &key(), &mut out);
            assert!(!closed);
            let hub = &mut *h;
            route(&hub.mailboxes, &mut out, Some(waiter));
            assert!(
                out.iter()
                    .all(|e| matches!(e, Effect::Reply { conn, .. } if *conn == waiter)),
                "only the waiter's own answers stay: {out:?}"
            );
            assert!(!hub.core.is_blocked(waiter));
        }
        releaser.join().unwrap();
        assert!(drain_mailbox(&mb).is_empty(), "nothing left to deliver");
        assert!(!lock(&hub).core.owns_anything(waiter));
        assert_eq!(holders(&hub), 0, "nothing stays held");
    });
}
