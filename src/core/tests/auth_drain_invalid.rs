//! Auth, draining and invalid requests: the first request must be `auth`
//! when a token is configured, a drain refuses new work, and an invalid
//! request is answered (or closes the connection) as the spec says.

use super::*;

#[test]
fn auth_first_request_must_be_auth_with_the_right_token() {
    check(
        auth_cfg(),
        8,
        vec![
            (0, c(1, auth("sekrit")), "c1: ok"),
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(1, auth("sekrit")), "c1: error"),
            (
                0,
                c(2, auth("wrong")),
                "c2: error_auth | c2: close (auth 100ms)",
            ),
            (
                0,
                c(3, auth("sekri")),
                "c3: error_auth | c3: close (auth 100ms)",
            ),
            (
                0,
                c(4, auth("sekrit2")),
                "c4: error_auth | c4: close (auth 100ms)",
            ),
            (
                0,
                c(5, l("a", 0, 10)),
                "c5: error_auth | c5: close (auth 100ms)",
            ),
            (
                0,
                c(6, Request::Ping),
                "c6: error_auth | c6: close (auth 100ms)",
            ),
            (
                0,
                In::Bad(7, false),
                "c7: error_auth | c7: close (auth 100ms)",
            ),
            (0, c(8, auth("")), "c8: error_auth | c8: close (auth 100ms)"),
        ],
    );
}

#[test]
fn auth_without_a_configured_token_is_an_error_and_commands_work_directly() {
    check(
        cfg(),
        1,
        vec![
            (0, c(1, Request::Ping), "c1: ok"),
            (0, c(1, auth("anything")), "c1: error"),
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
        ],
    );
}

#[test]
fn draining_answers_blocked_requests_error_then_error_draining_and_close() {
    let mut h = check(
        cfg(),
        6,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(2, l("a", 60, 10)), ""),
            (0, c(3, e("a", 10)), "c3: queued"),
            (0, c(3, w("a", 60)), ""),
            (0, c(4, e("a", 10)), "c4: queued"),
            (1000, In::Drain, "c2: error | c3: error"),
        ],
    );
    assert!(h.core.is_draining());
    assert!(!h.core.is_blocked(ConnId(2)));
    assert!(!h.core.owns_anything(ConnId(2)));
    run(
        &mut h,
        vec![
            (
                1000,
                c(1, r("a", 1)),
                "c1: error_draining | c1: close (draining)",
            ),
            (
                1000,
                c(5, Request::Ping),
                "c5: error_draining | c5: close (draining)",
            ),
            (
                1000,
                In::Bad(6, true),
                "c6: error_draining | c6: close (draining)",
            ),
            // Leases still expire; the remaining two-phase waiter is granted
            // silently, nobody else is.
            (10000, In::Tick, ""),
            (
                10000,
                c(4, w("a", 0)),
                "c4: error_draining | c4: close (draining)",
            ),
        ],
    );
}

#[test]
fn invalid_request_non_fatal_keeps_the_connection_fatal_closes_it() {
    check(
        cfg(),
        2,
        vec![
            (0, In::Bad(1, false), "c1: error"),
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, In::Bad(2, true), "c2: error | c2: close (overlong)"),
        ],
    );
}
