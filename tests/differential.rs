//! Differential property test: random scenarios through the model and the
//! core (see `src/differential.rs`), biased toward the edges where lock
//! servers go wrong: timeout 0, lease 1, limit 1, the waiter cap, equal
//! deadlines (on one key and across keys), a connection holding several
//! keys, a holder disconnecting with waiters queued, timers firing late,
//! a small fence ceiling, huge leases and timeouts, fences near `u64::MAX`.
//!
//! `PROPTEST_CASES` overrides the case count (CI uses the default below).
//!
//! The `planted` module shows the generators reach what they are meant to:
//! each deliberately broken model of `Bug::DIFFERENTIAL` is told apart from
//! the core within a fixed budget of cases.

use dflockd::differential::{run, Req, Scenario, Settings, Step, Tok};
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
        // Unlimited fences most of the time; otherwise a ceiling a few
        // grants away (0: fenced out from the start).
        prop_oneof![3 => Just(None), 2 => (0u8..8).prop_map(Some)],
        prop::bool::weighted(0.1),
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
                fence_ceiling,
                fences_near_max,
            )| Settings {
                default_lease_s,
                max_locks: max_locks + 1,
                max_waiters,
                auto_release_on_disconnect,
                gc_interval_s,
                gc_max_idle_s,
                auth,
                max_subscriptions,
                fence_ceiling,
                fences_near_max,
            },
        )
}

fn tok() -> impl Strategy<Value = Tok> {
    prop_oneof![8 => (0u8..4).prop_map(Tok::Seen), 1 => Just(Tok::Bogus)]
}

/// Timeouts: 0 (try once) often, otherwise short, rarely huge (the
/// arguments 250..=255, see `differential::seconds`).
fn timeout() -> impl Strategy<Value = u8> {
    prop_oneof![30 => Just(0u8), 20 => Just(1u8), 10 => 2u8..4, 1 => 250u8..=255]
}

/// Leases: absent (server default), 1 s often, else short, rarely huge.
fn lease() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![
        20 => Just(None),
        30 => Just(Some(0u8)),
        10 => (1u8..5).prop_map(Some),
        1 => (250u8..=255).prop_map(Some),
    ]
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

/// Whole seconds make deadlines coincide; odd milliseconds split them.
fn ms() -> impl Strategy<Value = u16> {
    prop_oneof![Just(1000u16), Just(500u16), 1u16..3000]
}

/// One step; `cancels` weighs cancels and read deadlines against the
/// others.
fn step(cancels: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Connect),
        1 => (0u8..4).prop_map(|conn| Step::Disconnect { conn }),
        cancels => (0u8..4).prop_map(|conn| Step::Cancel { conn }),
        cancels => (0u8..4, any::<bool>()).prop_map(|(conn, partial)| Step::ReadDeadline { conn, partial }),
        2 => ms().prop_map(|ms| Step::Advance { ms }),
        2 => Just(Step::ToNextDeadline),
        // The timer is late: the next requests reach a core behind time.
        1 => ms().prop_map(|ms| Step::Late { ms }),
        1 => Just(Step::LateToNextDeadline),
        1 => Just(Step::Drain).prop_filter("rare", |_| true),
        12 => (0u8..4, req()).prop_map(|(conn, req)| Step::Send { conn, req }),
        1 => (0u8..4, 0u8..80).prop_map(|(conn, n)| Step::Written { conn, n }),
        1 => (0u8..4, 0u8..4, 60u8..70).prop_map(|(conn, channel, count)| Step::Burst { conn, channel, count }),
        1 => (0u8..4).prop_map(|by| Step::RaiseCeiling { by }),
        2 => (0u8..4, any::<bool>(), 1u8..8, timeout(), 0u8..3, lease())
            .prop_map(|(conn, sem, keys, timeout_s, limit, lease_s)| Step::Grab { conn, sem, keys, timeout_s, limit, lease_s }),
    ]
}

/// A fragment that puts several keys under contention at one instant: a
/// connection grabs a set of keys with one lease of `l + 1` seconds, the
/// next connections queue on them (one per key, in order) with timeouts of
/// `l`, `l + 1` or `l + 2` seconds, so that expiries and timeouts fall on
/// one instant on one key and across keys; then the instant comes (with
/// the timer, late, or with a request landing on it) or the holder leaves.
fn contention() -> impl Strategy<Value = Vec<Step>> {
    (
        0u8..4,
        any::<bool>(),
        prop::sample::select(vec![3u8, 5, 6, 7]),
        0u8..3,
        prop::collection::vec((prop::bool::weighted(0.8), 0u8..3), 3),
        0u8..6,
        (0u8..4, req()),
    )
        .prop_map(|(holder, sem, keys, l, waiters, end, (conn, req))| {
            let lease_s = Some(l);
            // Limit 1, so that every grabbed key is full.
            let mut steps = vec![Step::Grab {
                conn: holder,
                sem,
                keys,
                timeout_s: 0,
                limit: 0,
                lease_s,
            }];
            let held = (0..3u8).filter(|k| keys & (1 << k) != 0);
            for (n, (key, (present, dt))) in held.zip(waiters).enumerate() {
                if present {
                    steps.push(Step::Send {
                        conn: holder.wrapping_add(1 + n as u8),
                        req: Req::Acquire {
                            sem,
                            key,
                            timeout_s: l + dt,
                            limit: 0,
                            lease_s,
                        },
                    });
                }
            }
            let lease_ms = (u16::from(l) + 1) * 1000;
            match end {
                0 => steps.push(Step::ToNextDeadline),
                1 => steps.push(Step::Advance { ms: lease_ms }),
                2 => steps.extend([Step::LateToNextDeadline, Step::Send { conn, req }]),
                3 => steps.extend([Step::Late { ms: lease_ms }, Step::Send { conn, req }]),
                4 => steps.push(Step::Disconnect { conn: holder }),
                _ => steps.extend([
                    Step::Late { ms: lease_ms },
                    Step::Disconnect { conn: holder },
                ]),
            }
            steps
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    scenario_with(1, |_| true)
}

/// Scenarios with only the steps `keep` keeps (to show what a kind of step
/// is needed for).
fn scenario_where(keep: fn(&Step) -> bool) -> impl Strategy<Value = Scenario> {
    scenario_with(1, keep)
}

/// Scenarios of [`step`]`(cancels)` and [`contention`] fragments, with
/// only the steps `keep` keeps.
fn scenario_with(cancels: u32, keep: fn(&Step) -> bool) -> impl Strategy<Value = Scenario> {
    let piece = prop_oneof![
        12 => step(cancels).prop_map(|s| vec![s]),
        1 => contention(),
    ];
    (settings(), prop::collection::vec(piece, 1..50)).prop_map(move |(settings, pieces)| {
        let mut steps: Vec<Step> = pieces.into_iter().flatten().filter(keep).collect();
        // Start with a few connections so requests have somewhere to go, and
        // keep draining rare (it ends most of the interesting behaviour):
        // at most one drain, and only in the second half.
        let mut start = vec![Step::Connect, Step::Connect, Step::Connect];
        let half = steps.len() / 2;
        let mut drained = false;
        let mut i = 0;
        steps.retain(|s| {
            i += 1;
            match s {
                Step::Drain if drained || i <= half => false,
                Step::Drain => {
                    drained = true;
                    true
                }
                _ => true,
            }
        });
        start.append(&mut steps);
        Scenario {
            settings,
            steps: start,
        }
    })
}

/// `PROPTEST_CASES` when set, else `default`: an explicit `cases` in a
/// `proptest_config` would otherwise win over the variable.
fn cases_or(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    // 10,000 cases unless PROPTEST_CASES says otherwise (scripts/mutants.sh
    // runs 1,000 per mutant).
    #![proptest_config(ProptestConfig {
        cases: cases_or(10_000),
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
            fence_ceiling: None,
            fences_near_max: false,
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

/// Each deliberately broken model of `Bug::DIFFERENTIAL` plants one bug the
/// differential generators were extended to reach (a late timer, a small
/// fence ceiling, equal deadlines across keys, a connection holding several
/// keys). Each must be told apart from the core within `BUDGET` cases of
/// the generator above, from a fixed seed, so the test is deterministic;
/// the proptest itself runs 10,000 fresh cases.
mod planted {
    use std::cell::Cell;

    use dflockd::differential::{run_against, Scenario, Step};
    use dflockd_model::Bug;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

    /// Cases per broken model (the worst needs about a tenth of it).
    const BUDGET: u32 = 2_000;

    /// The number of the first case that tells `bug` apart, if any.
    fn caught(bug: Bug, scenarios: impl Strategy<Value = Scenario>) -> Option<u32> {
        let config = Config {
            cases: BUDGET,
            max_shrink_iters: 0,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let cases = Cell::new(0u32);
        let result = runner.run(&scenarios, |s| {
            cases.set(cases.get() + 1);
            run_against(&s, bug).map_err(|d| TestCaseError::fail(d.to_string()))
        });
        match result {
            Ok(()) => None,
            Err(TestError::Fail(why, _)) => {
                eprintln!("{bug:?}: case {}: {why}", cases.get());
                Some(cases.get())
            }
            Err(e) => panic!("{bug:?}: {e}"),
        }
    }

    fn is_late(s: &Step) -> bool {
        matches!(s, Step::Late { .. } | Step::LateToNextDeadline)
    }

    macro_rules! planted {
        ($($name:ident: $bug:ident;)*) => {
            $(
                #[test]
                fn $name() {
                    let found = caught(Bug::$bug, super::scenario());
                    assert!(found.is_some(), "{:?} survived {BUDGET} cases", Bug::$bug);
                }
            )*
            /// Every differential bug has a test above.
            #[test]
            fn every_differential_bug_is_tested() {
                let tested = [$(Bug::$bug),*];
                assert_eq!(tested, Bug::DIFFERENTIAL);
            }
        };
    }

    planted! {
        // Semantics §1, §8: a request reaching a core behind time.
        handle_without_advancing_is_caught: HandleSkipsAdvance;
        // §6, with small ceilings.
        ceiling_off_by_one_is_caught: CeilingOffByOne;
        headroom_zero_is_caught: HeadroomZero;
        raising_in_key_order_is_caught: RaiseInKeyOrder;
        // §8.1: a lease and a waiter on different keys due at one instant.
        timeout_before_expiry_is_caught: TimeoutBeforeExpiry;
        // §9: one connection holding several keys, each with a waiter.
        disconnect_releasing_in_reverse_is_caught: DisconnectReleasesReversed;
    }

    /// The decisions the drivers used to make (semantics §9.1, §9.2, §10),
    /// each planted wrong, on scenarios with more cancels and read
    /// deadlines (what these bugs are about).
    fn driver_bug_caught(bug: Bug) {
        let found = caught(bug, super::scenario_with(6, |_| true));
        assert!(found.is_some(), "{bug:?} survived {BUDGET} cases");
    }

    #[test]
    fn cutting_an_idle_owner_is_caught() {
        driver_bug_caught(Bug::IdleCutsOwner);
    }

    #[test]
    fn leaving_a_failed_auth_open_is_caught() {
        driver_bug_caught(Bug::AuthFailureStaysOpen);
    }

    #[test]
    fn keeping_a_grant_that_lost_to_a_cancel_is_caught() {
        driver_bug_caught(Bug::CancelIgnoresGrant);
    }

    /// Without late steps, every request reaches a machine that has caught
    /// up, so a machine that forgets to advance cannot be told apart: the
    /// late steps are what checks semantics §8 for requests.
    #[test]
    fn only_late_steps_catch_a_request_that_does_not_advance() {
        let found = caught(
            Bug::HandleSkipsAdvance,
            super::scenario_where(|s| !is_late(s)),
        );
        assert_eq!(found, None);
    }
}
