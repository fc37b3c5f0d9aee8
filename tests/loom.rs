//! loom checks of the engine's hand-offs between threads: the mailbox
//! hand-off between tasks, and the races between a grant and the waiter's
//! own departure (disconnect, timeout, shutdown, the end of a drain's
//! abort, a handler woken by the grant that then closes, and the HTTP
//! front's cancel when a long poll's client goes away). They run the real door
//! (`engine::Engine`, `engine::mailbox`) through the `src/sync.rs` facade,
//! so every interleaving of the threads below is explored on the code the
//! server runs, not a copy of it.
//!
//! Run with:
//! `RUSTFLAGS="--cfg dflockd_loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom`
//!
//! The core itself is single-threaded behind the engine's one lock; what can
//! go wrong is in what surrounds it: a reply routed to a mailbox whose
//! receiver is leaving, a wake-up lost between checking the queue and
//! parking, a waiter answered twice, a cancel that loses the race to the
//! grant and leaves it held.
#![cfg(dflockd_loom)]

use dflockd::core::{CloseReason, ConnId, CoreConfig, Effect, Time};
use dflockd::engine::mailbox::{Delivery, Mailbox};
use dflockd::engine::{Engine, Input, ManualClock, Transport};
use dflockd::sync::Arc;
use dflockd::wire::{Key, Reply, Request, Space, Status};

use loom::thread;

fn key() -> Key {
    Key::new(b"k").unwrap()
}

fn acquire(timeout_s: u64) -> Input {
    Input::Request(Request::Acquire {
        space: Space::Lock,
        key: key(),
        timeout_s,
        limit: 1,
        lease_s: Some(30),
    })
}

/// The parts of one scenario: the engine, the holder and the waiter (each
/// with its mailbox), and the holder's token.
struct World {
    engine: Arc<Engine>,
    clock: std::sync::Arc<ManualClock>,
    holder: ConnId,
    waiter: ConnId,
    waiter_mb: Arc<Mailbox>,
    token: Vec<u8>,
}

/// A holder and a blocked waiter on `k`.
fn setup() -> World {
    let clock = std::sync::Arc::new(ManualClock::new(Time(0)));
    let engine = Arc::new(Engine::new(
        CoreConfig::default(),
        None,
        Box::new(clock.clone()),
    ));
    let holder = engine.connect(Transport::Tcp, Some(Arc::new(Mailbox::new())));
    let waiter_mb = Arc::new(Mailbox::new());
    let waiter = engine.connect(Transport::Http, Some(waiter_mb.clone()));
    let token = match engine.apply(holder, acquire(0)).0.pop() {
        Some(Effect::Reply {
            reply: Reply::Granted { token, .. },
            ..
        }) => token.to_string().into_bytes(),
        other => panic!("expected a grant, got {other:?}"),
    };
    let (fx, outcome) = engine.apply(waiter, acquire(10));
    assert!(fx.is_empty() && outcome.blocked, "the waiter blocks");
    World {
        engine,
        clock,
        holder,
        waiter,
        waiter_mb,
        token,
    }
}

/// The holder releases its token through the door; it gets only its own
/// answer back (`ok`, or `error_draining` and a close once the drain
/// began); the grant goes to the waiter's mailbox.
fn release(engine: &Engine, holder: ConnId, token: Vec<u8>) {
    let (fx, _) = engine.apply(
        holder,
        Input::Request(Request::Release {
            space: Space::Lock,
            key: key(),
            token: token.into(),
        }),
    );
    let ok = [Effect::Reply {
        conn: holder,
        reply: Reply::Ok,
    }];
    let refused = [
        Effect::Reply {
            conn: holder,
            reply: Reply::Status(Status::ErrorDraining),
        },
        Effect::Close {
            conn: holder,
            reason: CloseReason::Draining,
        },
    ];
    assert!(
        fx == ok || (engine.is_draining() && fx == refused),
        "only the releaser's own effects stay: {fx:?}"
    );
}

fn drain_mailbox(mb: &Mailbox) -> Vec<Delivery> {
    std::iter::from_fn(|| mb.try_recv()).collect()
}

/// Live holders of `k`, from a fresh connection's `stats`.
fn holders(engine: &Engine) -> usize {
    let c = engine.connect(Transport::Tcp, None);
    let json = match engine.apply(c, Input::Request(Request::Stats)).0.pop() {
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
        let tb = thread::spawn(move || b.push(Delivery::Abort));
        let first = loom::future::block_on(mb.recv());
        let second = loom::future::block_on(mb.recv());
        ta.join().unwrap();
        tb.join().unwrap();
        let mut got = vec![first, second];
        got.sort_by_key(|d| matches!(d, Delivery::Abort));
        assert_eq!(got, vec![Delivery::Reply(Reply::Ok), Delivery::Abort]);
    });
}

/// A grant handed off by a release on one thread races the waiter's
/// connection closing on another (its handler reports the disconnect and
/// stops reading its mailbox). Either the waiter leaves first (no grant is
/// made to it) or the grant lands in its mailbox and the disconnect
/// releases it. Never a leaked holder.
#[test]
fn grant_races_disconnect() {
    loom::model(|| {
        let w = setup();
        let (engine, holder, token) = (w.engine.clone(), w.holder, w.token.clone());
        w.clock.set(Time(1_000));
        let releaser = thread::spawn(move || release(&engine, holder, token));
        w.engine.apply(w.waiter, Input::Disconnect);
        releaser.join().unwrap();
        let got = drain_mailbox(&w.waiter_mb);
        assert!(got.len() <= 1, "at most one answer: {got:?}");
        assert_eq!(holders(&w.engine), 0, "nothing stays held");
        assert_eq!(w.engine.connection_count(), 2, "holder and the stats probe");
    });
}

/// A release at 9.999 s races the timer task firing at the waiter's
/// deadline (10 s), each through the door, which reads the clock under its
/// lock and never lets the core's time go back. The waiter gets exactly one
/// answer: the grant if the release went first, `timeout` otherwise.
#[test]
fn grant_races_timeout() {
    loom::model(|| {
        let w = setup();
        let (engine, holder, token) = (w.engine.clone(), w.holder, w.token.clone());
        let clock = w.clock.clone();
        let releaser = thread::spawn(move || {
            clock.set(Time(9_999));
            release(&engine, holder, token)
        });
        w.clock.set(Time(10_000));
        w.engine.apply(ConnId::ENGINE, Input::Tick);
        releaser.join().unwrap();
        let got = drain_mailbox(&w.waiter_mb);
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
        let w = setup();
        let (engine, holder, token) = (w.engine.clone(), w.holder, w.token.clone());
        w.clock.set(Time(1_000));
        let releaser = thread::spawn(move || release(&engine, holder, token));
        assert!(w.engine.drain());
        releaser.join().unwrap();
        let got = drain_mailbox(&w.waiter_mb);
        assert_eq!(got.len(), 1, "exactly one answer: {got:?}");
        assert!(matches!(
            got[0],
            Delivery::Reply(Reply::Granted { .. }) | Delivery::Reply(Reply::Status(Status::Error))
        ));
        assert!(w.engine.is_draining());
    });
}

/// The HTTP front withdraws a long poll whose client went away (one
/// `Cancel` input) while a release on another thread hands the lock to
/// that very request. Either the cancel comes first (the waiter leaves,
/// nothing is granted to it) or the grant does and the cancel releases it.
/// Either way the connection lives on owning nothing, the only thing left
/// in its mailbox is at most the stale grant the front discards, and the
/// lock is free.
#[test]
fn grant_races_cancel() {
    loom::model(|| {
        let w = setup();
        let (engine, holder, token) = (w.engine.clone(), w.holder, w.token.clone());
        w.clock.set(Time(1_000));
        let releaser = thread::spawn(move || release(&engine, holder, token));
        let (fx, outcome) = w.engine.apply(w.waiter, Input::Cancel);
        assert!(!outcome.blocked && !outcome.closed && !outcome.gone);
        assert!(
            fx.iter()
                .all(|e| matches!(e, Effect::Reply { conn, .. } if *conn == w.waiter)),
            "only the waiter's own answers stay: {fx:?}"
        );
        releaser.join().unwrap();
        let left = drain_mailbox(&w.waiter_mb);
        assert!(
            left.iter()
                .all(|d| matches!(d, Delivery::Reply(Reply::Granted { .. }))),
            "{left:?}"
        );
        assert!(left.len() <= 1);
        assert_eq!(w.engine.owned(w.waiter).held, 0);
        assert_eq!(holders(&w.engine), 0, "nothing stays held");
    });
}

/// The end of a drain aborts every connection (`Engine::abort_all`) while a
/// release on another thread hands the lock to the blocked waiter. The
/// waiter's handler takes its mail until the abort and reports its
/// disconnect: whatever order the grant and the abort landed in, nothing
/// stays held and the waiter saw at most one grant.
#[test]
fn grant_races_abort() {
    loom::model(|| {
        let w = setup();
        let (engine, holder, token) = (w.engine.clone(), w.holder, w.token.clone());
        w.clock.set(Time(1_000));
        let releaser = thread::spawn(move || release(&engine, holder, token));
        w.engine.abort_all();
        let mut grants = 0;
        loop {
            match loom::future::block_on(w.waiter_mb.recv()) {
                Delivery::Abort => break,
                Delivery::Reply(Reply::Granted { .. }) => grants += 1,
                other => panic!("unexpected delivery {other:?}"),
            }
        }
        w.engine.apply(w.waiter, Input::Disconnect);
        releaser.join().unwrap();
        assert!(grants <= 1, "{grants} grants");
        let late = drain_mailbox(&w.waiter_mb);
        assert!(
            late.iter()
                .all(|d| matches!(d, Delivery::Reply(Reply::Granted { .. }))),
            "{late:?}"
        );
        assert!(grants + late.len() <= 1);
        assert_eq!(holders(&w.engine), 0, "nothing stays held");
    });
}

/// The waiter's handler is parked on its mailbox (the real waker path)
/// when a release on another thread hands it the lock; it wakes, takes the
/// grant, and closes at once (its peer went away meanwhile): the
/// disconnect releases what was granted, and the lock ends free.
#[test]
fn grant_wakes_a_handler_that_then_closes() {
    loom::model(|| {
        let w = setup();
        let (engine, holder, token) = (w.engine.clone(), w.holder, w.token.clone());
        w.clock.set(Time(1_000));
        let releaser = thread::spawn(move || release(&engine, holder, token));
        let got = loom::future::block_on(w.waiter_mb.recv());
        assert!(
            matches!(got, Delivery::Reply(Reply::Granted { .. })),
            "{got:?}"
        );
        assert_eq!(w.engine.owned(w.waiter).held, 1);
        let (fx, outcome) = w.engine.apply(w.waiter, Input::Disconnect);
        assert!(fx.is_empty() && !outcome.gone, "{fx:?} {outcome:?}");
        releaser.join().unwrap();
        assert!(w.waiter_mb.try_recv().is_none());
        assert_eq!(holders(&w.engine), 0, "the disconnect released the grant");
    });
}

/// A blocked TCP handler lends its socket to its mailbox while a release
/// on another thread hands it the lock, and ends the loan concurrently:
/// the grant is answered exactly once, either written to the socket by
/// the releasing thread (and reported by `take_sent`) or queued for the
/// handler to write, never both, never lost, and nothing reaches the
/// socket once the loan has ended.
#[test]
fn grant_races_the_end_of_a_lent_socket() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    loom::model(|| {
        let w = setup();
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let (engine, holder, token) = (w.engine.clone(), w.holder, w.token.clone());
        w.clock.set(Time(1_000));
        let releaser = thread::spawn(move || release(&engine, holder, token));
        let loan = w.waiter_mb.lend(ours.as_raw_fd());
        drop(loan);
        let sent = w.waiter_mb.take_sent();
        let mut written = Vec::new();
        let _ = peer.read_to_end(&mut written);
        releaser.join().unwrap();
        let queued = drain_mailbox(&w.waiter_mb);
        let late_sent = w.waiter_mb.take_sent();
        assert!(late_sent.is_none(), "nothing sent after the loan ended");
        let mut after = Vec::new();
        let _ = peer.read_to_end(&mut after);
        match sent {
            Some(s) => {
                assert!(queued.is_empty(), "answered twice: {queued:?}");
                assert!(s.rest.is_empty());
                assert!(written.starts_with(b"ok ") && written.ends_with(b"\n"));
                assert!(after.is_empty());
            }
            None => {
                assert!(written.is_empty() && after.is_empty(), "written unreported");
                assert!(
                    matches!(&queued[..], [Delivery::Reply(Reply::Granted { .. })]),
                    "{queued:?}"
                );
            }
        }
        assert_eq!(w.engine.owned(w.waiter).held, 1, "granted once");
    });
}
