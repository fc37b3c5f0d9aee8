//! Differential property test: random scenarios through the model and the
//! core (see `src/differential.rs`), biased toward the edges where lock
//! servers go wrong: timeout 0, lease 1, limit 1, the waiter cap, equal
//! deadlines, a holder disconnecting with waiters queued.
//!
//! `PROPTEST_CASES` overrides the case count (CI uses the default below).

use dflockd::differential::{run, run_against, Req, Scenario, Settings, Step, Tok};
use proptest::prelude::*;

fn settings() -> impl Strategy<Value = Settings> {
    (
        0u8..5,
        0u8..5,
        0u8..4,
        any::<bool>(),
        0u8..3,
        0u8..4,
        prop::bool::weighted(0.15),
        0u8..3,
    )
        .prop_map(
            |(
                default_lease_s,
                max_locks,
                max_waiters,
                auto_release_on_disconnect,
                gc_interval_s,
                gc_max_idle_s,
                auth,
                max_subscriptions,
            )| Settings {
                default_lease_s,
                max_locks: max_locks + 1,
                max_waiters,
                auto_release_on_disconnect,
                gc_interval_s,
                gc_max_idle_s,
                auth,
                max_subscriptions,
            },
        )
}

fn tok() -> impl Strategy<Value = Tok> {
    prop_oneof![8 => (0u8..4).prop_map(Tok::Seen), 1 => Just(Tok::Bogus)]
}

/// Timeouts: 0 (try once) often, otherwise short.
fn timeout() -> impl Strategy<Value = u8> {
    prop_oneof![3 => Just(0u8), 2 => Just(1u8), 1 => 2u8..4]
}

/// Leases: absent (server default), 1 s often, else short.
fn lease() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![2 => Just(None), 3 => Just(Some(0u8)), 1 => (1u8..5).prop_map(Some)]
}

fn req() -> impl Strategy<Value = Req> {
    let key = 0u8..3;
    prop_oneof![
        6 => (any::<bool>(), key.clone(), timeout(), 0u8..3, lease())
            .prop_map(|(sem, key, timeout_s, limit, lease_s)| Req::Acquire { sem, key, timeout_s, limit, lease_s }),
        4 => (any::<bool>(), key.clone(), tok()).prop_map(|(sem, key, token)| Req::Release { sem, key, token }),
        2 => (any::<bool>(), key.clone(), tok(), lease())
            .prop_map(|(sem, key, token, lease_s)| Req::Renew { sem, key, token, lease_s }),
        3 => (any::<bool>(), key.clone(), 0u8..3, lease())
            .prop_map(|(sem, key, limit, lease_s)| Req::Enqueue { sem, key, limit, lease_s }),
        3 => (any::<bool>(), key, timeout()).prop_map(|(sem, key, timeout_s)| Req::Wait { sem, key, timeout_s }),
        1 => Just(Req::Stats),
        1 => Just(Req::Ping),
        1 => any::<bool>().prop_map(|right| Req::Auth { right }),
        1 => any::<bool>().prop_map(|fatal| Req::Invalid { fatal }),
        3 => (0u8..8, 0u8..4).prop_map(|(pattern, group)| Req::Listen { pattern, group }),
        1 => (0u8..8, 0u8..4).prop_map(|(pattern, group)| Req::Unlisten { pattern, group }),
        3 => (0u8..4, any::<u8>()).prop_map(|(channel, payload)| Req::Signal { channel, payload }),
    ]
}

/// One step; `cancels` weighs cancels and read deadlines against the
/// 26 of everything else.
fn step(cancels: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Connect),
        1 => (0u8..4).prop_map(|conn| Step::Disconnect { conn }),
        cancels => (0u8..4).prop_map(|conn| Step::Cancel { conn }),
        cancels => (0u8..4, any::<bool>()).prop_map(|(conn, partial)| Step::ReadDeadline { conn, partial }),
        // Whole seconds make deadlines coincide; odd milliseconds split them.
        2 => prop_oneof![Just(1000u16), Just(500u16), 1u16..3000].prop_map(|ms| Step::Advance { ms }),
        2 => Just(Step::ToNextDeadline),
        1 => Just(Step::Drain).prop_filter("rare", |_| true),
        12 => (0u8..4, req()).prop_map(|(conn, req)| Step::Send { conn, req }),
        1 => (0u8..4, 0u8..80).prop_map(|(conn, n)| Step::Written { conn, n }),
        1 => (0u8..4, 0u8..4, 60u8..70).prop_map(|(conn, channel, count)| Step::Burst { conn, channel, count }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    scenario_with(1)
}

/// Scenarios whose steps are [`step`]`(cancels)`.
fn scenario_with(cancels: u32) -> impl Strategy<Value = Scenario> {
    (settings(), prop::collection::vec(step(cancels), 1..60)).prop_map(|(settings, mut steps)| {
        // Start with a few connections so requests have somewhere to go, and
        // keep draining rare (it ends most of the interesting behaviour).
        let mut start = vec![Step::Connect, Step::Connect, Step::Connect];
        let mut drained = false;
        steps.retain(|s| match s {
            Step::Drain if drained => false,
            Step::Drain => {
                drained = true;
                true
            }
            _ => true,
        });
        start.append(&mut steps);
        Scenario {
            settings,
            steps: start,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_agrees_with_model(s in scenario()) {
        if let Err(d) = run(&s) {
            prop_assert!(false, "{}", d);
        }
    }
}

/// The comparator covers the decisions the drivers used to make (semantics
/// §9.1, §9.2, §10): a model with one of them planted wrong must disagree
/// with the core on some generated scenario, and that scenario must agree
/// with the correct model, so the difference is the planted bug's.
mod planted {
    use super::*;
    use dflockd_model::Bug;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    /// Scenarios tried before giving up on finding the bug.
    const TRIES: usize = 3000;

    fn caught(bug: Bug) {
        let mut runner = TestRunner::deterministic();
        // Cancels and read deadlines are what these bugs are about: more
        // of them finds them sooner.
        let strategy = scenario_with(6);
        for _ in 0..TRIES {
            let s = strategy
                .new_tree(&mut runner)
                .expect("a scenario")
                .current();
            if let Err(d) = run_against(&s, bug) {
                assert!(
                    run(&s).is_ok(),
                    "the scenario that caught {bug:?} fails anyway"
                );
                eprintln!("{bug:?} caught: {d}");
                return;
            }
        }
        panic!("{bug:?} was never caught in {TRIES} scenarios");
    }

    #[test]
    fn cutting_an_idle_owner_is_caught() {
        caught(Bug::IdleCutsOwner);
    }

    #[test]
    fn leaving_a_failed_auth_open_is_caught() {
        caught(Bug::AuthFailureStaysOpen);
    }

    #[test]
    fn keeping_a_grant_that_lost_to_a_cancel_is_caught() {
        caught(Bug::CancelIgnoresGrant);
    }
}

/// The minimal scenarios the proptest shrank to when the core and the model
/// first disagreed, kept as named regression tests.
mod regressions {
    use super::*;

    fn settings() -> Settings {
        Settings {
            default_lease_s: 0,
            max_locks: 1,
            max_waiters: 0,
            auto_release_on_disconnect: false,
            gc_interval_s: 0,
            gc_max_idle_s: 0,
            auth: false,
            max_subscriptions: 0,
        }
    }

    fn check(steps: Vec<Step>) {
        let s = Scenario {
            settings: settings(),
            steps,
        };
        if let Err(d) = run(&s) {
            panic!("{d}");
        }
    }

    /// The core did not count a lease expiry as activity on the key, so
    /// `stats` showed it idle since the grant (the model: since the expiry).
    #[test]
    fn lease_expiry_is_activity_on_the_key() {
        check(vec![
            Step::Connect,
            Step::Send {
                conn: 0,
                req: Req::Enqueue {
                    sem: false,
                    key: 0,
                    limit: 0,
                    lease_s: None,
                },
            },
            Step::Advance { ms: 1000 },
        ]);
    }

    /// Draining answered blocked requests in hash-map order; the spec says
    /// arrival order.
    #[test]
    fn drain_answers_blocked_requests_in_arrival_order() {
        let acquire = |key| Req::Acquire {
            sem: false,
            key,
            timeout_s: 2,
            limit: 0,
            lease_s: None,
        };
        check(vec![
            Step::Connect,
            Step::Connect,
            Step::Connect,
            Step::Connect,
            Step::Send {
                conn: 3,
                req: acquire(0),
            },
            Step::Send {
                conn: 0,
                req: acquire(0),
            },
            Step::Send {
                conn: 2,
                req: acquire(0),
            },
            Step::Send {
                conn: 1,
                req: acquire(0),
            },
            Step::Drain,
        ]);
    }

    /// Signals through every route, then a burst that fills a queue group
    /// member and an ungrouped listener (eviction), with partial drains.
    #[test]
    fn signals_fill_queues_and_evict() {
        let listen = |conn, pattern, group| Step::Send {
            conn,
            req: Req::Listen { pattern, group },
        };
        check(vec![
            Step::Connect,
            Step::Connect,
            Step::Connect,
            Step::Connect,
            // c1: `c0` ungrouped and `*` ungrouped (de-duplicated).
            listen(0, 0, 0),
            listen(0, 3, 0),
            // c2, c3: group g on `>`; c3 also `c0.*` in group h.
            listen(1, 5, 2),
            listen(2, 5, 2),
            listen(2, 4, 3),
            Step::Send {
                conn: 3,
                req: Req::Signal {
                    channel: 0,
                    payload: 1,
                },
            },
            Step::Send {
                conn: 3,
                req: Req::Signal {
                    channel: 2,
                    payload: 2,
                },
            },
            Step::Written { conn: 1, n: 1 },
            Step::Burst {
                conn: 3,
                channel: 0,
                count: 69,
            },
            Step::Written { conn: 2, n: 10 },
            Step::Burst {
                conn: 3,
                channel: 0,
                count: 69,
            },
            Step::Send {
                conn: 0,
                req: Req::Stats,
            },
        ]);
    }
}

/// Cancel (semantics §9.1), as the HTTP front uses it when the client of a
/// blocking call goes away: the blocked request ends as a timeout now, the
/// queue moves on, and the connection keeps what it holds.
mod cancel {
    use dflockd::core::{ConnId, Core, CoreConfig, Effect, Time};
    use dflockd::wire::{Key, Reply, Request, Space, Status};

    fn key(k: &str) -> Key {
        Key::new(k.as_bytes()).expect("valid key")
    }

    fn acquire(k: &str, timeout_s: u64) -> Request {
        Request::Acquire {
            space: Space::Lock,
            key: key(k),
            timeout_s,
            limit: 1,
            lease_s: None,
        }
    }

    /// The replies in `out` addressed to `conn`.
    fn replies(out: &[Effect], conn: ConnId) -> Vec<Reply> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Reply { conn: c, reply } if *c == conn => Some(reply.clone()),
                _ => None,
            })
            .collect()
    }

    fn granted(out: &[Effect], conn: ConnId) -> Option<dflockd::wire::Token> {
        replies(out, conn).into_iter().find_map(|r| match r {
            Reply::Granted { token, .. } => Some(token),
            _ => None,
        })
    }

    #[test]
    fn cancel_is_a_timeout_now_and_keeps_the_rest() {
        let mut core = Core::new(CoreConfig::default(), Time(0));
        let mut out = Vec::new();
        let (a, b, c) = (
            core.connect(Time(0), &mut out),
            core.connect(Time(0), &mut out),
            core.connect(Time(0), &mut out),
        );
        core.handle(Time(0), a, acquire("k", 0), &mut out);
        let ta = granted(&out, a).expect("a holds k");
        // b holds "other", then blocks on k behind a; c queues behind b.
        core.handle(Time(0), b, acquire("other", 0), &mut out);
        assert!(granted(&out, b).is_some());
        core.handle(Time(0), b, acquire("k", 30), &mut out);
        core.handle(Time(0), c, acquire("k", 30), &mut out);
        assert!(core.is_blocked(b) && core.is_blocked(c));

        out.clear();
        core.cancel_blocked(Time(1000), b, &mut out);
        assert_eq!(replies(&out, b), [Reply::Status(Status::Timeout)]);
        assert!(!core.is_blocked(b));
        // b still holds "other": cancelling is not a disconnect.
        assert!(core.owns_anything(b));
        // A second cancel, or one for a connection that is not blocked,
        // does nothing.
        out.clear();
        core.cancel_blocked(Time(1000), b, &mut out);
        core.cancel_blocked(Time(1000), a, &mut out);
        assert!(out.is_empty(), "{out:?}");

        // a releases k: c, not b, is next.
        core.handle(
            Time(2000),
            a,
            Request::Release {
                space: Space::Lock,
                key: key("k"),
                token: ta.to_string().into_bytes().into(),
            },
            &mut out,
        );
        assert!(granted(&out, c).is_some(), "{out:?}");
        assert!(granted(&out, b).is_none(), "{out:?}");
    }
}
