//! Table-driven transcripts of the reference machine: every rule of
//! `spec/semantics.md` that has an edge, and the upstream edge cases of the
//! reference §12 (items 11–29), as adjusted by the project's decisions
//! (notably D18: a two-phase record survives the expiry of its token).
//! Expected outputs were written from the spec, not recorded from the code.

use dflockd_model::stats::{IdleStat, LockStat, SemStat, StatsView};
use dflockd_model::{Config, Machine, Op, Output, Space};

use super::script::check;

fn cfg() -> Config {
    Config::default()
}

/// One `#[test]` per transcript: `name, config, script`.
macro_rules! transcripts {
    ($($name:ident, $cfg:expr, $script:expr;)*) => {
        $(
            #[test]
            fn $name() {
                check($cfg, $script);
            }
        )*
    };
}

const FOUR_CONNS: &str = "
    0 - connect => c1
    0 - connect => c2
    0 - connect => c3
    0 - connect => c4
";

fn with_conns(script: &str) -> String {
    format!("{FOUR_CONNS}{script}")
}

transcripts! {
    // §3.2, §3.4, ref §12.11
    immediate_grant_then_try_once_times_out, cfg(), &with_conns("
        0 c1 l a 10     => c1 ok T1 33
        0 c2 l a 0      => c2 timeout
    ");

    // §3.5, §7, ref §12.12: hand-off grants arrive before the releaser's `ok`.
    three_contenders_are_granted_in_arrival_order, cfg(), &with_conns("
        0    c1 l a 10 5  => c1 ok T1 5
        100  c2 l a 10
        200  c3 l a 10 7
        300  c4 l a 10
        1000 c1 r a T1    => c2 ok T2 33; c1 ok
        2000 c2 r a T2    => c3 ok T3 7; c2 ok
        3000 c3 r a T3    => c4 ok T4 33; c3 ok
    ");

    // §3, no re-entrancy: a holder asking again queues behind itself.
    holder_asking_again_queues_behind_itself, cfg(), &with_conns("
        0    c1 l a 0     => c1 ok T1 33
        0    c1 l a 2
        2000 - advance    => c1 timeout
    ");

    // §2, ref §12.13: creation beyond max_locks fails; both spaces share it,
    // and the same key in the other space is another resource.
    max_locks_is_shared_by_locks_and_semaphores,
    Config { max_locks: 2, ..cfg() }, &with_conns("
        0 c1 l a 0      => c1 ok T1 33
        0 c1 sl b 0 2   => c1 ok T2 33
        0 c1 l c 0      => c1 error_max_locks
        0 c1 se c 2     => c1 error_max_locks
        0 c1 sl a 0 2   => c1 error_max_locks
        0 c1 l a 0      => c1 timeout
        0 c1 e b        => c1 error_max_locks
    ");

    // §4, ref §12.14
    release_needs_the_exact_token_on_the_exact_resource, cfg(), &with_conns("
        0 c1 l a 10         => c1 ok T1 33
        0 c1 r a T2         => c1 error
        0 c1 r b T1         => c1 error
        0 c1 r a garbage    => c1 error
        0 c1 sr a T1        => c1 error
        0 c1 r a T1         => c1 ok
        0 c1 r a T1         => c1 error
    ");

    // §2, D5: lock `a` and semaphore `a` are unrelated.
    lock_and_semaphore_spaces_are_separate, cfg(), &with_conns("
        0 c1 l a 0      => c1 ok T1 33
        0 c2 sl a 0 1   => c2 ok T2 33
        0 c2 r a T2     => c2 error
        0 c2 sr a T1    => c2 error
        0 c2 n a T2     => c2 error
        0 c2 sn a T1    => c2 error
        0 c2 sr a T2    => c2 ok
        0 c1 r a T1     => c1 ok
    ");

    // §4: bearer release; it drops the holder connection's record.
    any_connection_may_release_and_the_record_goes, cfg(), &with_conns("
        0 c1 e a        => c1 acquired T1 33
        0 c2 r a T1     => c2 ok
        0 c1 w a 0      => c1 error_not_enqueued
    ");

    // §4, §1: renew works until the deadline, with default or given lease.
    renew_moves_the_deadline_until_it_passes, cfg(), &with_conns("
        0    c1 l a 10 2    => c1 ok T1 2
        1999 c1 n a T1      => c1 ok 33
        1999 c1 n a T1 4    => c1 ok 4
        5998 c2 n a T1 1    => c2 ok 1
        6997 c2 l a 0       => c2 timeout
        6998 c1 n a T1      => c1 error
        6998 c2 l a 0       => c2 ok T2 33
    ");

    // §4, ref §12.15: renew after expiry fails; the slot already moved on,
    // as of the deadline, even though no timer ran before the renew.
    renew_after_expiry_fails_and_the_waiter_already_has_it, cfg(), &with_conns("
        0    c1 l a 10 2    => c1 ok T1 2
        500  c2 l a 10 5
        2000 c1 n a T1      => c2 ok T2 5; c1 error
        6999 c3 l a 0       => c3 timeout
        7000 c3 l a 0       => c3 ok T3 33
    ");

    // §5.1, ref §12.16
    second_enqueue_on_a_key_is_refused_acquired_or_queued, cfg(), &with_conns("
        0 c1 e a        => c1 acquired T1 33
        0 c1 e a        => c1 error_already_enqueued
        0 c2 e a        => c2 queued
        0 c2 e a        => c2 error_already_enqueued
        0 c2 se a 1     => c2 acquired T2 33
    ");

    // §5 `w` on a granted record, ref §12.17: same token, lease restarted.
    wait_after_immediate_grant_returns_the_token_and_resets_the_lease, cfg(), &with_conns("
        0    c1 e a 5       => c1 acquired T1 5
        3000 c1 w a 10      => c1 ok T1 5
        3000 c1 w a 10      => c1 error_not_enqueued
        7999 c2 l a 0       => c2 timeout
        8000 c2 l a 0       => c2 ok T2 33
    ");

    // §5 `w` with T = 0, ref §12.18: a poll that loses the place.
    wait_poll_while_queued_times_out_and_consumes_the_record, cfg(), &with_conns("
        0    c1 l a 10      => c1 ok T1 33
        0    c2 e a         => c2 queued
        1000 c2 w a 0       => c2 timeout
        1000 c2 w a 0       => c2 error_not_enqueued
        1000 c1 r a T1      => c1 ok
    ");

    // §5, ref §12.19
    wait_without_enqueue_is_not_enqueued, cfg(), &with_conns("
        0 c1 w a 5      => c1 error_not_enqueued
        0 c1 e a        => c1 acquired T1 33
        0 c1 sw a 5     => c1 error_not_enqueued
        0 c2 w a 0      => c2 error_not_enqueued
    ");

    // §5, D18, ref §12.20: the immediate grant expired; the next waiter got
    // it at the deadline; `w` says lease expired once, then not enqueued.
    wait_after_the_immediate_grant_expired, cfg(), &with_conns("
        0    c1 e a 2       => c1 acquired T1 2
        500  c2 l a 10 5
        2000 - advance      => c2 ok T2 5
        3000 c1 w a 10      => c1 error_lease_expired
        3000 c1 w a 10      => c1 error_not_enqueued
    ");

    // D18: the same, with no timer before the `w`: identical answers.
    wait_after_the_immediate_grant_expired_without_a_timer, cfg(), &with_conns("
        0    c1 e a 2       => c1 acquired T1 2
        500  c2 l a 10 5
        3000 c1 w a 10      => c2 ok T2 5; c1 error_lease_expired
        6999 c3 l a 0       => c3 timeout
        7000 c3 l a 0       => c3 ok T3 33
    ");

    // §5.1, D18: an expired granted record never blocks a new `e`.
    enqueue_after_the_granted_lease_expired_starts_afresh, cfg(), &with_conns("
        0    c1 e a 2       => c1 acquired T1 2
        1999 c1 e a 2       => c1 error_already_enqueued
        2000 c1 e a 2       => c1 acquired T2 2
        2000 c1 w a 0       => c1 ok T2 2
    ");

    // §5.5: granted while queued, before `w`: the record turns granted
    // silently, and `w` restarts the lease of the `e`.
    queued_enqueue_granted_before_wait, cfg(), &with_conns("
        0    c1 l a 10 3    => c1 ok T1 3
        0    c2 e a 4       => c2 queued
        1000 c1 r a T1      => c1 ok
        2000 c2 w a 10      => c2 ok T2 4
        5999 c3 l a 0       => c3 timeout
        6000 c3 l a 0       => c3 ok T3 33
    ");

    // §5.5, D18: granted while queued, expired before `w`.
    queued_enqueue_granted_then_expired_before_wait, cfg(), &with_conns("
        0    c1 l a 10 3    => c1 ok T1 3
        0    c2 e a 1       => c2 queued
        3000 - advance
        4000 c2 w a 10      => c2 error_lease_expired
        4000 c2 e a 1       => c2 acquired T3 1
    ");

    // §5 `w` with T > 0 on a queued record: blocks like `l`.
    wait_blocks_until_granted, cfg(), &with_conns("
        0    c1 l a 10      => c1 ok T1 33
        0    c2 e a 7       => c2 queued
        0    c2 w a 5
        1000 c1 r a T1      => c2 ok T2 7; c1 ok
    ");

    wait_blocks_until_timeout, cfg(), &with_conns("
        0    c1 l a 10      => c1 ok T1 33
        0    c2 e a         => c2 queued
        1000 c2 w a 5
        5999 - advance
        6000 - advance      => c2 timeout
        6000 c2 w a 5       => c2 error_not_enqueued
        6000 c1 r a T1      => c1 ok
    ");

    // §9, ref §12.21: a disconnect cancels waiters (no reply to a blocked
    // request), drops records, and releases held slots in token order.
    disconnect_cancels_waiters_and_releases_in_token_order, cfg(), &with_conns("
        0    c1 l a 10      => c1 ok T1 33
        0    c1 l b 10      => c1 ok T2 33
        0    c2 l b 10
        0    c3 l a 10
        0    c4 e a         => c4 queued
        1000 c3 bye
        2000 c1 bye         => c2 ok T4 33
        2000 c4 w a 0       => c4 ok T3 33
    ");

    // D6: without auto-release, held slots survive the disconnect (bearer
    // release still works) but waiters and records do not.
    disconnect_without_auto_release_keeps_held_slots,
    Config { auto_release_on_disconnect: false, ..cfg() }, &with_conns("
        0    c1 l a 10      => c1 ok T1 33
        0    c4 l b 10      => c4 ok T2 33
        0    c1 e b         => c1 queued
        0    c2 l a 10
        1000 c1 bye
        2000 c4 r b T2      => c4 ok
        3000 c3 r a T1      => c2 ok T3 33; c3 ok
    ");

    // §8.2, ref §12.22
    lease_expiry_hands_the_lock_to_the_next_waiter, cfg(), &with_conns("
        0    c1 l a 10 1    => c1 ok T1 1
        0    c2 l a 10 2
        999  - advance
        1000 - advance      => c2 ok T2 2
    ");

    // §8.1: a late timer processes each item as of its own deadline.
    late_timer_replays_each_expiry_at_its_deadline, cfg(), &with_conns("
        0    c1 l a 10 1    => c1 ok T1 1
        0    c2 l a 10 1
        0    c3 l a 10 1
        5000 - advance      => c2 ok T2 1; c3 ok T3 1
        5000 c4 l a 0       => c4 ok T4 33
    ");

    // §1, §7, §8.1: expiry and timeout on one instant: the expiry comes
    // first, and the waiter, dead at that instant, times out.
    expiry_and_timeout_on_one_instant_times_out, cfg(), &with_conns("
        0    c1 l a 10 2    => c1 ok T1 2
        0    c2 l a 2
        2000 - advance      => c2 timeout
        2000 c3 l a 0       => c3 ok T2 33
    ");

    // §8.1: equal waiter deadlines time out in arrival order, not key order.
    equal_timeouts_fire_in_arrival_order, cfg(), &with_conns("
        0    c1 l b 10      => c1 ok T1 33
        0    c2 l b 3
        1000 c1 l a 10      => c1 ok T2 33
        1000 c3 l a 2
        3000 - advance      => c2 timeout; c3 timeout
    ");

    // §8.1: equal lease deadlines expire in fence order.
    equal_expiries_fire_in_fence_order, cfg(), &with_conns("
        0    c1 l b 10 1    => c1 ok T1 1
        0    c2 l b 10
        0    c1 l a 10 1    => c1 ok T2 1
        0    c3 l a 10
        1000 - advance      => c2 ok T3 33; c3 ok T4 33
    ");

    // ref §12.24: N holders, the N+1th waits, FIFO, limit mismatch.
    semaphore_holds_n_and_queues_the_rest, cfg(), &with_conns("
        0    - connect      => c5
        0    c1 sl s 0 2    => c1 ok T1 33
        0    c2 sl s 0 2    => c2 ok T2 33
        0    c3 sl s 0 2    => c3 timeout
        0    c3 sl s 10 2
        0    c4 sl s 10 2 9
        0    c5 sl s 10 3   => c5 error_limit_mismatch
        0    c5 se s 3      => c5 error_limit_mismatch
        0    c5 se s 2      => c5 queued
        1000 c1 sr s T1     => c3 ok T3 33; c1 ok
        2000 c2 sr s T2     => c4 ok T4 9; c2 ok
        2000 c5 sw s 0      => c5 timeout
    ");

    // ref §12.25: the waiter cap applies to l, e, sl, se, even with T = 0.
    max_waiters_applies_to_every_queueing_command,
    Config { max_waiters: 1, ..cfg() }, &with_conns("
        0 c1 l a 0          => c1 ok T1 33
        0 c2 l a 10
        0 c3 l a 10         => c3 error_max_waiters
        0 c3 l a 0          => c3 error_max_waiters
        0 c3 e a            => c3 error_max_waiters
        0 c4 sl s 0 1       => c4 ok T2 33
        0 c4 se s 1         => c4 queued
        0 c3 sl s 10 1      => c3 error_max_waiters
        0 c3 se s 1         => c3 error_max_waiters
    ");

    // ref §12.26: releasing one token leaves the connection's other record.
    release_does_not_clobber_another_record, cfg(), &with_conns("
        0 c1 e a            => c1 acquired T1 33
        0 c2 l b 10         => c2 ok T2 33
        0 c1 e b            => c1 queued
        0 c1 r a T1         => c1 ok
        0 c1 w b 0          => c1 timeout
        0 c1 w a 0          => c1 error_not_enqueued
    ");

    // ref §12.27 as amended by D18: release clears the record; expiry and a
    // failed renew leave it for `w` to report the loss.
    records_after_release_expiry_and_failed_renew, cfg(), &with_conns("
        0    c1 e a 1       => c1 acquired T1 1
        0    c1 r a T1      => c1 ok
        0    c1 w a 0       => c1 error_not_enqueued
        0    c2 e b 1       => c2 acquired T2 1
        1000 c2 n b T2      => c2 error
        1000 c2 w b 0       => c2 error_lease_expired
        1000 c2 e b 1       => c2 acquired T3 1
    ");

    // §10, ref §12.29
    auth_first_request_must_be_auth,
    Config { auth_token: Some(b"sekrit".to_vec()), ..cfg() }, &with_conns("
        0 c1 auth sekrit    => c1 ok
        0 c1 ping           => c1 ok
        0 c1 auth sekrit    => c1 error
        0 c1 l a 0          => c1 ok T1 33
        0 c2 auth wrong     => c2 error_auth; close c2 auth
        0 c3 ping           => c3 error_auth; close c3 auth
        0 c4 invalid        => c4 error_auth; close c4 auth
    ");

    auth_without_a_server_token_is_an_error, cfg(), &with_conns("
        0 c1 auth anything  => c1 error
        0 c1 l a 0          => c1 ok T1 33
    ");

    // D1
    invalid_requests_answer_error_and_only_fatal_ones_close, cfg(), &with_conns("
        0 c1 invalid        => c1 error
        0 c1 ping           => c1 ok
        0 c1 fatal          => c1 error; close c1 overlong
    ");

    // §10: blocked requests answer `error`; later requests are refused and
    // closed; a non-blocking two-phase waiter stays queued.
    draining_fails_blocked_requests_and_refuses_new_ones, cfg(), &with_conns("
        0    c1 l a 10      => c1 ok T1 33
        0    c2 l a 10
        0    c3 e a         => c3 queued
        0    c4 l b 10      => c4 ok T2 33
        0    c4 l b 10
        1000 - drain        => c2 error; c4 error
        1000 c1 r a T1      => c1 error_draining; close c1 draining
        1000 c1 bye
        1000 c3 w a 0       => c3 error_draining; close c3 draining
        1000 c4 ping        => c4 error_draining; close c4 draining
    ");

    // §8 before draining: what was due is answered first.
    draining_advances_first, cfg(), &with_conns("
        0    c1 l a 10 1    => c1 ok T1 1
        0    c2 l a 10
        0    c3 l a 10
        1000 - drain        => c2 ok T2 33; c3 error
    ");

    // §6: no fence above the ceiling (here the largest u64). While none is
    // left, nothing is granted and nothing refused for want of one: a free
    // key answers as a busy one would, and a queue waits at its head.
    fences_run_out_at_the_ceiling,
    Config { fence_start: u64::MAX - 1, ..cfg() }, &with_conns("
        0    c1 l a 0       => c1 ok T18446744073709551615 33
        0    c2 l b 0       => c2 timeout
        0    c2 e b         => c2 queued
        0    c2 l a 5
        0    c3 e a         => c3 queued
        1000 c1 r a T18446744073709551615 => c1 ok
        1000 c4 l a 0       => c4 timeout
        5000 - advance      => c2 timeout
    ");

    // §6: raising the ceiling resumes the stopped resources in the arrival
    // order of each one's oldest waiter, until the fences run out again; a
    // lower ceiling changes nothing; dead waiters in front of a stopped
    // head still time out.
    raising_the_ceiling_resumes_in_arrival_order,
    Config { fence_start: 10, fence_ceiling: 11, ..cfg() }, &with_conns("
        0    c1 l a 0 2     => c1 ok T11 2
        0    c2 l b 9
        0    c3 se c 2      => c3 queued
        0    c4 l a 9
        100  - raise 5
        200  - raise 12     => c2 ok T12 33
        300  - raise 14
        300  c3 sw c 0      => c3 ok T13 33
        2000 - advance      => c4 ok T14 33
        2000 c1 l d 0       => c1 timeout
    ");

    // §6: with the ceiling reached, `l k 0` on a free key answers `timeout`
    // and a waiter there is granted when the ceiling rises; one that timed
    // out meanwhile never is; a dead waiter in front of the head is removed.
    fenced_out_free_key_waits_for_the_ceiling,
    Config { fence_start: 10, fence_ceiling: 10, ..cfg() }, &with_conns("
        0    c1 l a 0       => c1 timeout
        0    c1 l a 1
        0    c2 l a 5
        1000 - advance      => c1 timeout
        1500 c3 l b 1
        1500 - raise 11     => c2 ok T11 33
        2500 - advance      => c3 timeout
        3000 - raise 20
        3000 c3 l b 0       => c3 ok T12 33
    ");

    // §6: the first fence is fence_start + 1.
    first_fence_follows_fence_start,
    Config { fence_start: 41, ..cfg() }, &with_conns("
        0 c1 l a 0      => c1 ok T42 33
        0 c1 e b        => c1 acquired T43 33
    ");

    // §9.2, D11: at its read deadline an owner stays (a held slot, a
    // two-phase record even after its lease, a subscription), an idle
    // connection that owns nothing is closed with `error`, and a stalled
    // request is cut, owner or not.
    read_deadline_keeps_owners_and_cuts_the_rest, cfg(), &with_conns("
        0     c1 l a 0       => c1 ok T1 33
        0     c4 listen x    => c4 ok
        23000 c1 idle
        23000 c4 idle
        23000 c2 idle        => c2 error; close c2 idle
        23000 c3 e b         => c3 acquired T2 33
        34000 c1 idle        => c1 error; close c1 idle
        60000 c3 idle
        60000 c3 stall       => c3 error; close c3 stalled
    ");

    // §9.2 with §10: before authentication the closing answer is
    // `error_auth`, closed after the pause; while draining, `error_draining`.
    read_deadline_before_auth_and_while_draining,
    Config { auth_token: Some(b"sekrit".to_vec()), ..cfg() }, &with_conns("
        0     c1 auth sekrit => c1 ok
        0     c2 stall       => c2 error_auth; close c2 auth
        0     c3 idle        => c3 error_auth; close c3 auth
        1000  - drain
        1000  c1 idle        => c1 error_draining; close c1 draining
    ");

    // §9.1: a cancel that comes after the grant releases it, and the queue
    // moves on; once the connection has sent anything since, the grant is
    // its own and a cancel does nothing.
    cancel_after_the_grant_releases_it, cfg(), &with_conns("
        0    c1 l a 0       => c1 ok T1 33
        0    c2 l a 10
        0    c3 l a 10
        0    c4 l a 10
        1000 c1 r a T1      => c2 ok T2 33; c1 ok
        1000 c2 cancel      => c3 ok T3 33
        2000 c3 ping        => c3 ok
        2000 c3 cancel
        2000 c1 l a 0       => c1 timeout
        2000 c2 cancel
    ");
}

// ----- Tests that look at more than the replies -----

#[test]
fn auth_token_is_trimmed() {
    let mut m = Machine::new(
        Config {
            auth_token: Some(b"sekrit".to_vec()),
            ..cfg()
        },
        0,
    );
    let c = m.connect(0);
    let out = m.handle(
        0,
        c,
        Op::Auth {
            token: b" \tsekrit\r\n ".to_vec(),
        },
    );
    assert_eq!(
        out,
        vec![Output::Reply {
            conn: c,
            line: "ok".into()
        }]
    );
}

#[test]
fn tokens_use_the_salt_key() {
    let key = [0xdead_beef, 42];
    let mut m = Machine::new(
        Config {
            salt_key: key,
            fence_start: 7,
            ..cfg()
        },
        0,
    );
    let c = m.connect(0);
    let out = m.handle(
        0,
        c,
        Op::Acquire {
            space: Space::Lock,
            key: b"k".to_vec(),
            timeout_s: 0,
            limit: 1,
            lease_s: Some(5),
        },
    );
    let want = format!("ok {:016x}{:016x} 5", 8, dflockd_model::token::salt(key, 8));
    assert_eq!(
        out,
        vec![Output::Reply {
            conn: c,
            line: want
        }]
    );
}

fn lock(key: &str, owner: u64, expires_in_ms: u64, waiters: u64) -> LockStat {
    LockStat {
        key: key.into(),
        owner_conn_id: owner,
        lease_expires_in_ms: expires_in_ms,
        waiters,
    }
}

fn idle(key: &str, idle_ms: u64) -> IdleStat {
    IdleStat {
        key: key.into(),
        idle_ms,
    }
}

// ref §12.28, §13.18: held under locks/semaphores, released under idle_*,
// never both; limit-1 semaphores count as locks; sorted by key.
#[test]
fn stats_classify_by_activity_and_limit() {
    let m = check(
        cfg(),
        &with_conns(
            "
        0    c1 l b 10 10   => c1 ok T1 10
        0    c2 l b 10
        0    c1 sl a 0 1    => c1 ok T2 33
        0    c1 sl s 0 3    => c1 ok T3 33
        0    c4 se s 3      => c4 acquired T4 33
        0    c3 l z 0       => c3 ok T5 33
        1000 c3 r z T5      => c3 ok
        1500 c1 se t 2      => c1 acquired T6 33
        1500 c1 sr t T6     => c1 ok
    ",
        ),
    );
    let want = StatsView {
        connections: 4,
        locks: vec![lock("a", 1, 31_000, 0), lock("b", 1, 8_000, 1)],
        semaphores: vec![SemStat {
            key: "s".into(),
            limit: 3,
            holders: 2,
            waiters: 0,
        }],
        idle_locks: vec![idle("z", 1_000)],
        idle_semaphores: vec![idle("t", 500)],
        signal_channels: Vec::new(),
    };
    assert_eq!(m.stats_view(2000), want);
}

#[test]
fn stats_reply_is_one_line_of_json_with_every_field() {
    let mut m = check(
        cfg(),
        &with_conns(
            "
        0    c1 l a 10 10   => c1 ok T1 10
        0    c2 l a 10
        0    c1 sl s 0 2    => c1 ok T2 33
    ",
        ),
    );
    let out = m.handle(2500, 3, Op::Stats);
    let [Output::Reply { conn: 3, line }] = out.as_slice() else {
        panic!("{out:?}")
    };
    let json = line.strip_prefix("ok ").expect("ok <json>");
    assert!(!json.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    let want = serde_json::json!({
        "connections": 4,
        "locks": [{"key": "a", "owner_conn_id": 1, "lease_expires_in_s": 7.5, "waiters": 1}],
        "semaphores": [{"key": "s", "limit": 2, "holders": 1, "waiters": 0}],
        "idle_locks": [],
        "idle_semaphores": [],
        "signal_channels": [],
    });
    assert_eq!(v, want);
}

// §2: a refused `sl` (limit mismatch) does not count as activity.
#[test]
fn limit_mismatch_does_not_bump_activity() {
    let m = check(
        cfg(),
        &with_conns(
            "
        0    c1 se s 2      => c1 acquired T1 33
        0    c1 sr s T1     => c1 ok
        3000 c2 sl s 0 5    => c2 error_limit_mismatch
        3000 c2 sr s T1     => c2 error
    ",
        ),
    );
    assert_eq!(m.stats_view(4000).idle_semaphores, vec![idle("s", 4000)]);
}

// §8.4, ref §12.23: GC runs every interval from the start, collects idle
// resources (strictly older than max idle), never a held one, never one a
// record names; a collected key no longer counts against max_locks and
// forgets its semaphore limit.
#[test]
fn gc_collects_only_idle_unreferenced_resources() {
    let c = Config {
        gc_interval_s: 5,
        gc_max_idle_s: 3,
        max_locks: 4,
        ..cfg()
    };
    let mut m = check(
        c,
        &with_conns(
            "
        0    c1 l held 0    => c1 ok T1 33
        0    c1 l old 0     => c1 ok T2 33
        1000 c1 r old T2    => c1 ok
        2000 c1 sl new 0 2  => c1 ok T3 33
        2000 c1 sr new T3   => c1 ok
    ",
        ),
    );
    // At 5000: `old` idle 4000 > 3000: gone; `new` idle exactly 3000: kept.
    let v = m.stats_view(5000);
    assert_eq!(v.locks, vec![lock("held", 1, 28_000, 0)]);
    assert_eq!(v.idle_locks, vec![]);
    assert_eq!(v.idle_semaphores, vec![idle("new", 3000)]);
    // At 10000 `new` goes too, and its limit is forgotten.
    let out = m.handle(
        10_000,
        2,
        Op::Acquire {
            space: Space::Sem,
            key: b"new".to_vec(),
            timeout_s: 0,
            limit: 5,
            lease_s: None,
        },
    );
    assert!(matches!(&out[..], [Output::Reply { conn: 2, line }] if line.starts_with("ok ")));
}

#[test]
fn gc_keeps_a_resource_named_by_a_record() {
    let c = Config {
        gc_interval_s: 5,
        gc_max_idle_s: 1,
        ..cfg()
    };
    let mut m = check(
        c,
        &with_conns(
            "
        0    c1 e a 1       => c1 acquired T1 1
        1000 c2 e b 1       => c2 acquired T2 1
        1000 c2 r b T2      => c2 ok
    ",
        ),
    );
    // `a`: expired at 1000, idle since, but c1's record names it.
    let v = m.stats_view(5000);
    assert_eq!(v.idle_locks, vec![idle("a", 4000)]);
    let out = m.handle(
        6000,
        1,
        Op::Wait {
            space: Space::Lock,
            key: b"a".to_vec(),
            timeout_s: 0,
        },
    );
    assert_eq!(
        out,
        vec![Output::Reply {
            conn: 1,
            line: "error_lease_expired".into()
        }]
    );
    assert_eq!(m.stats_view(10_000).idle_locks, vec![]);
}

// §8: the next deadline is the earliest lease, blocked waiter, or GC run.
#[test]
fn next_deadline_is_the_earliest_pending_item() {
    let mut m = Machine::new(
        Config {
            gc_interval_s: 5,
            ..cfg()
        },
        200,
    );
    assert_eq!(m.next_deadline(), Some(5200));
    let c1 = m.connect(200);
    let c2 = m.connect(200);
    let acquire = |timeout_s, lease_s| Op::Acquire {
        space: Space::Lock,
        key: b"a".to_vec(),
        timeout_s,
        limit: 1,
        lease_s: Some(lease_s),
    };
    m.handle(300, c1, acquire(0, 3));
    assert_eq!(m.next_deadline(), Some(3300));
    m.handle(400, c2, acquire(2, 3));
    assert_eq!(m.next_deadline(), Some(2400));
    assert_eq!(
        m.advance(2400),
        vec![Output::Reply {
            conn: c2,
            line: "timeout".into()
        }]
    );
    assert_eq!(m.next_deadline(), Some(3300));
    m.advance(3300);
    assert_eq!(m.next_deadline(), Some(5200));
    m.advance(5200);
    assert_eq!(m.next_deadline(), Some(10_200));

    let no_gc = Machine::new(
        Config {
            gc_interval_s: 0,
            ..cfg()
        },
        0,
    );
    assert_eq!(no_gc.next_deadline(), None);
}

// A two-phase waiter that was never waited on has no deadline (§8.3).
#[test]
fn unwaited_enqueue_has_no_deadline() {
    let mut m = check(
        Config {
            gc_interval_s: 0,
            ..cfg()
        },
        &with_conns(
            "
        0 c1 l a 10 4   => c1 ok T1 4
        0 c2 e a        => c2 queued
    ",
        ),
    );
    assert_eq!(m.next_deadline(), Some(4000));
    assert!(!m.is_blocked(2));
    m.handle(
        1000,
        2,
        Op::Wait {
            space: Space::Lock,
            key: b"a".to_vec(),
            timeout_s: 2,
        },
    );
    assert!(m.is_blocked(2));
    assert_eq!(m.next_deadline(), Some(3000));
}
