//! The decisions the drivers used to make and the core now makes: read
//! deadlines (D11: an owner stays, an idle connection is closed, a stalled
//! partial request is cut) and cancel versus grant.

use super::*;

/// Semantics §9.2, D11: an owner stays at its read deadline (a slot, a
/// two-phase record even after its lease, a subscription); an idle
/// connection that owns nothing is closed with `error`; a stalled request
/// is cut, owner or not; a blocked connection has no read deadline.
#[test]
fn read_deadline_keeps_owners_and_cuts_the_rest() {
    let listen = Request::Listen {
        pattern: key("x"),
        group: None,
    };
    check(
        cfg(),
        5,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(4, listen), "c4: ok"),
            (0, c(5, l("a", 60, 10)), ""),
            (5000, In::Deadline(1, false), ""),
            (5000, In::Deadline(4, false), ""),
            (5000, In::Deadline(5, false), ""),
            (5000, In::Deadline(2, false), "c2: error | c2: close (idle)"),
            (5000, c(3, e("b", 10)), "c3: acquired #2 10"),
            // c1's lease ended at 10 s (and c5 got the lock): c1 owns nothing.
            (
                11000,
                In::Deadline(1, false),
                "c1: error | c1: close (idle) | c5: ok #3 10",
            ),
            (30000, In::Deadline(3, false), ""),
            (
                30000,
                In::Deadline(3, true),
                "c3: error | c3: close (stalled)",
            ),
        ],
    );
}

/// Before authentication the closing answer is `error_auth`, and the close
/// waits the configured pause; while draining it is `error_draining`.
#[test]
fn read_deadline_before_auth_and_while_draining() {
    let cfg = CoreConfig {
        auth_failure_pause_ms: 250,
        ..auth_cfg()
    };
    check(
        cfg,
        3,
        vec![
            (0, c(1, auth("sekrit")), "c1: ok"),
            (
                0,
                In::Deadline(2, true),
                "c2: error_auth | c2: close (auth 250ms)",
            ),
            (
                0,
                c(3, Request::Ping),
                "c3: error_auth | c3: close (auth 250ms)",
            ),
            (1000, In::Drain, ""),
            (
                1000,
                In::Deadline(1, false),
                "c1: error_draining | c1: close (draining)",
            ),
        ],
    );
}

/// Semantics §9.1: a cancel is one input whichever came first. Still
/// blocked: withdrawn (`timeout`). Granted since, with nothing sent after:
/// the grant is released and the queue moves on. Anything sent since makes
/// the grant the connection's own.
#[test]
fn cancel_withdraws_or_releases_the_grant_that_beat_it() {
    let mut h = check(
        cfg(),
        4,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 30, 10)), ""),
            (0, c(3, l("a", 30, 10)), ""),
            (0, c(4, l("a", 30, 10)), ""),
            (1000, c(1, r("a", 1)), "c1: ok | c2: ok #2 10"),
            (1000, In::Cancel(2), "c3: ok #3 10"),
            (1000, In::Cancel(2), ""),
            (2000, In::Cancel(4), "c4: timeout"),
            (2000, c(3, Request::Ping), "c3: ok"),
            (2000, In::Cancel(3), ""),
        ],
    );
    assert_eq!(h.core.owned(ConnId(2)).held, 0);
    assert_eq!(h.core.owned(ConnId(3)).held, 1);
    // A grant released or expired before the cancel leaves nothing to do.
    run(
        &mut h,
        vec![
            (2000, c(1, l("a", 30, 10)), ""),
            (12000, In::Tick, "c1: ok #4 10"),
            (23000, In::Cancel(1), ""),
        ],
    );
    assert_eq!(h.core.owned(ConnId(1)).held, 0);
}
