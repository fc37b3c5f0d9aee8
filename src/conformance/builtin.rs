//! The built-in timed cases: behaviour that depends on time passing, which
//! `spec/conformance/README.md` keeps out of the transcript directory.
//!
//! They are written in the transcript format and run like transcripts. None
//! of them sleeps: each waits by reading (a blocked reply, a close) or by
//! polling `stats`, with 1-second leases, timeouts and `--read-timeout 1`,
//! well inside the runner's 5-second read timeout. Each takes about a
//! second. The ones that need `--read-timeout 1` are skipped against an
//! existing server, like any scenario with flags.
//!
//! Not covered: `error_draining` and the blocked-request `error` of a drain
//! (protocol.md §2.6) need the server to be signalled, which a runner that
//! only holds an address cannot do; they are tested next to the server.

use super::transcript::{parse, Scenario};

/// (name, transcript text)
const CASES: &[(&str, &str)] = &[
    (
        "timed-lease-expiry",
        "\
# A lease expires at its deadline: the waiter is granted, and the expired
# token no longer releases or renews.
@1
> l
> timed-lease-expiry
> 0 1
< ok <TOKEN:t1> 1
@2
> l
> timed-lease-expiry
> 10
< ok <TOKEN:t2> 33
@1
> r
> timed-lease-expiry
> {t1}
< error
> n
> timed-lease-expiry
> {t1}
< error
@2
> r
> timed-lease-expiry
> {t2}
< ok
",
    ),
    (
        "timed-acquire-timeout",
        "\
# A blocked l, and a w on a queued record, answer timeout when T runs out;
# both leave the queue.
@1
> l
> timed-acquire-timeout
> 0
< ok <TOKEN:t1> 33
@2
> l
> timed-acquire-timeout
> 1
< timeout
~ stats locks timed-acquire-timeout waiters 0
> e
> timed-acquire-timeout
>
< queued
> w
> timed-acquire-timeout
> 1
< timeout
~ stats locks timed-acquire-timeout waiters 0
> w
> timed-acquire-timeout
> 0
< error_not_enqueued
@1
> r
> timed-acquire-timeout
> {t1}
< ok
",
    ),
    (
        "timed-wait-lease-expired",
        "\
# w on a granted record whose lease ran out answers error_lease_expired and
# consumes the record; the stale record does not block a new e (D18).
> e
> timed-wait-lease-expired
> 1
< acquired <TOKEN:t1> 1
~ stats idle_locks timed-wait-lease-expired
> w
> timed-wait-lease-expired
> 0
< error_lease_expired
> w
> timed-wait-lease-expired
> 0
< error_not_enqueued
> e
> timed-wait-lease-expired
> 1
< acquired <TOKEN:t2> 1
~ stats idle_locks timed-wait-lease-expired
> e
> timed-wait-lease-expired
>
< acquired <TOKEN:t3> 33
> w
> timed-wait-lease-expired
> 0
< ok {t3} 33
> r
> timed-wait-lease-expired
> {t3}
< ok
",
    ),
    (
        "timed-read-timeout-idle",
        "\
!server-flags: --read-timeout 1
# A connection that owns nothing and sends nothing is answered error and
# closed after --read-timeout.
< error
< <EOF>
",
    ),
    (
        "timed-read-timeout-partial",
        "\
!server-flags: --read-timeout 1
# A started request must be complete within --read-timeout.
> l
> timed-read-timeout-partial
< error
< <EOF>
",
    ),
    (
        "timed-read-timeout-owner",
        "\
!server-flags: --read-timeout 1
# A connection that holds a lock is never closed for idleness. Connection 1
# is silent from before connection 2 opens until after connection 2 is cut
# for idleness, and still works.
@1
> l
> timed-read-timeout-owner
> 0
< ok <TOKEN:t> 33
@2
< error
< <EOF>
@1
> r
> timed-read-timeout-owner
> {t}
< ok
",
    ),
    (
        "timed-auth-read-timeout",
        "\
!server-flags: --auth-token s3cret --read-timeout 1
# Before authentication, the read timeout answers error_auth, not error.
< error_auth
< <EOF>
",
    ),
];

/// The built-in cases, parsed. Their origin is `builtin:NAME`.
pub fn builtin_cases() -> Vec<Scenario> {
    CASES
        .iter()
        .map(|(name, text)| {
            // Our own text: a parse error is a bug in this file.
            parse(name, &format!("builtin:{name}"), text.as_bytes())
                .unwrap_or_else(|e| panic!("built-in case does not parse: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_cases_parse_and_have_unique_names() {
        let cases = super::builtin_cases();
        let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len());
        assert!(names.iter().all(|n| n.starts_with("timed-")));
    }
}
