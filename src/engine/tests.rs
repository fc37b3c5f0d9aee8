//! The door on a manual clock: routing, gone connections, cancel versus
//! grant as one input, the timer's wake-ups.

use super::*;
use crate::wire::{Key, Reply, Request, Space, Status};

fn engine() -> (Arc<ManualClock>, Engine) {
    let clock = Arc::new(ManualClock::new(Time(0)));
    let e = Engine::new(CoreConfig::default(), None, Box::new(clock.clone()));
    (clock, e)
}

fn acquire(timeout_s: u64) -> Input {
    Input::Request(Request::Acquire {
        space: Space::Lock,
        key: Key::new(b"k").expect("key"),
        timeout_s,
        limit: 1,
        lease_s: Some(30),
    })
}

fn release(token: &crate::wire::Token) -> Input {
    Input::Request(Request::Release {
        space: Space::Lock,
        key: Key::new(b"k").expect("key"),
        token: token.to_string().into_bytes().into(),
    })
}

fn granted(effects: &[Effect]) -> crate::wire::Token {
    match effects {
        [Effect::Reply {
            reply: Reply::Granted { token, .. },
            ..
        }] => *token,
        other => panic!("expected one grant, got {other:?}"),
    }
}

/// A grant handed off by one connection's release goes to the waiter's
/// mailbox; the releaser gets only its own `ok`.
#[test]
fn effects_for_others_go_to_their_mailboxes() {
    let (_, e) = engine();
    let (ma, mb) = (Arc::new(Mailbox::new()), Arc::new(Mailbox::new()));
    let a = e.connect(Transport::Tcp, Some(ma.clone()));
    let b = e.connect(Transport::Http, Some(mb.clone()));
    let (fx, o) = e.apply(a, acquire(0));
    let token = granted(&fx);
    assert_eq!(o, Outcome::default());
    let (fx, o) = e.apply(b, acquire(10));
    assert!(fx.is_empty() && o.blocked, "{fx:?} {o:?}");
    let (fx, o) = e.apply(a, release(&token));
    assert_eq!(
        fx,
        [Effect::Reply {
            conn: a,
            reply: Reply::Ok
        }]
    );
    assert!(!o.blocked && !o.closed);
    assert!(matches!(
        mb.try_recv(),
        Some(Delivery::Reply(Reply::Granted { .. }))
    ));
    assert!(ma.try_recv().is_none());
}

/// Inputs for a connection that has disconnected change nothing.
#[test]
fn inputs_for_a_gone_connection_are_ignored() {
    let (_, e) = engine();
    let a = e.connect(Transport::Tcp, None);
    e.apply(a, Input::Disconnect);
    let (fx, o) = e.apply(a, acquire(0));
    assert!(fx.is_empty() && o.gone, "{fx:?} {o:?}");
    assert_eq!(e.connection_count(), 0);
}

/// The HTTP front's cancel after the grant already went to the mailbox:
/// the grant is released as part of the same input and the next waiter
/// gets the lock.
#[test]
fn cancel_after_the_grant_releases_it() {
    let (clock, e) = engine();
    let (a, b, c) = (
        e.connect(Transport::Tcp, None),
        e.connect(Transport::Http, Some(Arc::new(Mailbox::new()))),
        e.connect(Transport::Tcp, Some(Arc::new(Mailbox::new()))),
    );
    let token = granted(&e.apply(a, acquire(0)).0);
    assert!(e.apply(b, acquire(10)).1.blocked);
    assert!(e.apply(c, acquire(10)).1.blocked);
    clock.advance(5);
    e.apply(a, release(&token));
    // b was granted; its client went away before reading it.
    let (fx, o) = e.apply(b, Input::Cancel);
    assert!(fx.is_empty() && !o.blocked, "{fx:?} {o:?}");
    // c holds the lock now: a fresh acquire by a times out.
    let (fx, _) = e.apply(a, acquire(0));
    assert_eq!(
        fx,
        [Effect::Reply {
            conn: a,
            reply: Reply::Status(Status::Timeout)
        }]
    );
    assert_eq!(e.owned(b).held, 0);
    assert_eq!(e.owned(c).held, 1);
}

/// A cancel while still blocked answers `timeout` to the canceller (the
/// front discards it) and leaves nothing behind.
#[test]
fn cancel_while_blocked_withdraws_the_waiter() {
    let (_, e) = engine();
    let a = e.connect(Transport::Tcp, None);
    let b = e.connect(Transport::Http, Some(Arc::new(Mailbox::new())));
    granted(&e.apply(a, acquire(0)).0);
    assert!(e.apply(b, acquire(10)).1.blocked);
    let (fx, o) = e.apply(b, Input::Cancel);
    assert_eq!(
        fx,
        [Effect::Reply {
            conn: b,
            reply: Reply::Status(Status::Timeout)
        }]
    );
    assert!(!o.blocked);
    assert_eq!(e.owned(b), Owned::default());
}

/// Stamped entries applied to two engines give the same effects: what the
/// replicated log and the simulator rely on.
#[test]
fn entries_replay_to_the_same_effects() {
    let script = |e: &Engine| -> Vec<Effect> {
        let a = e.connect(Transport::Tcp, None);
        let b = e.connect(Transport::Tcp, None);
        let mut out = Vec::new();
        let mut door = e.door();
        let entries = [
            Entry {
                at: Time(10),
                conn: a,
                input: acquire(0),
            },
            Entry {
                at: Time(20),
                conn: b,
                input: acquire(60),
            },
            Entry {
                at: Time(31_000),
                conn: ConnId::ENGINE,
                input: Input::Tick,
            },
            Entry {
                at: Time(31_000),
                conn: b,
                input: Input::Request(Request::Stats),
            },
        ];
        for entry in entries {
            door.apply_at(entry, &mut out);
        }
        out
    };
    let (one, two) = (engine().1, engine().1);
    let out = script(&one);
    assert_eq!(out, script(&two));
    // The lease of 30 s expired at 30.01 s and b was granted, then stats.
    assert!(
        matches!(
            &out[..],
            [
                Effect::Reply {
                    reply: Reply::Granted { .. },
                    ..
                },
                Effect::Reply {
                    reply: Reply::Stats(_),
                    ..
                }
            ]
        ),
        "{out:?}"
    );
}
