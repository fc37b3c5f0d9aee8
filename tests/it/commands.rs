//! Every command and every reply shape over TCP, the `stats` document,
//! fencing tokens and the separate lock / semaphore key spaces.

use crate::support::{check, entry, fence, grant, is_token, wire, Server};

#[test]
fn status_table_on_one_connection() {
    let server = Server::plain();
    let mut c = server.client();
    let tok0 = "0123456789abcdef0123456789abcdef";
    let cases: &[(String, &str)] = &[
        (wire("ping", "_", ""), "ok"),
        (wire("w", "none", "0"), "error_not_enqueued"),
        (wire("sw", "none", "0"), "error_not_enqueued"),
        (wire("r", "none", tok0), "error"),
        (wire("sr", "none", tok0), "error"),
        (wire("n", "none", tok0), "error"),
        (wire("sn", "none", tok0), "error"),
        (wire("l", "k", "0"), "ok TOK 33"),
        // No re-entrancy: the holder's own second acquire does not succeed.
        (wire("l", "k", "0"), "timeout"),
        (wire("l", "k2", "0 10"), "ok TOK 10"),
        (wire("sl", "s", "0 2"), "ok TOK 33"),
        (wire("sl", "s", "0 2 7"), "ok TOK 7"),
        (wire("sl", "s", "0 3"), "error_limit_mismatch"),
        (wire("se", "s", "3"), "error_limit_mismatch"),
        (wire("sl", "s", "0 2"), "timeout"),
        (wire("e", "k", ""), "queued"),
        (wire("e", "k", ""), "error_already_enqueued"),
        (wire("w", "k", "0"), "timeout"),
        (wire("w", "k", "0"), "error_not_enqueued"),
        (wire("e", "k3", "12"), "acquired TOK 12"),
        (wire("w", "k3", "3"), "ok TOK 12"),
        (wire("se", "s3", "4 9"), "acquired TOK 9"),
        (wire("sw", "s3", "0"), "ok TOK 9"),
        (wire("stats", "_", ""), "ok JSON"),
        (wire("bogus", "_", ""), "error"),
        (wire("auth", "_", "x"), "error"),
        (wire("ping", "_", ""), "ok"),
    ];
    for (input, expect) in cases {
        check(&mut c, input, expect);
    }
}

#[test]
fn lock_release_and_renew() {
    let server = Server::plain();
    let mut c = server.client();
    let (tok, lease) = grant(&c.req("l", "k", "0"));
    assert_eq!(lease, 33, "default lease");
    assert_eq!(c.req("n", "k", &tok), "ok 33");
    assert_eq!(c.req("n", "k", &format!("{tok} 7")), "ok 7");
    // Wrong token, wrong key, wrong space: all plain `error`. The salt
    // half is checked, not just the fence.
    let other_fence = format!("{:016x}{}", fence(&tok) + 1, &tok[16..]);
    let salt = u64::from_str_radix(&tok[16..], 16).expect("hex");
    let other_salt = format!("{}{:016x}", &tok[..16], salt ^ 1);
    for bad in [
        other_fence,
        other_salt,
        tok.to_uppercase(),
        format!("{tok}0"),
    ] {
        assert_eq!(c.req("r", "k", &bad), "error", "{bad}");
        assert_eq!(c.req("n", "k", &bad), "error", "{bad}");
    }
    assert_eq!(c.req("r", "other", &tok), "error");
    assert_eq!(c.req("sr", "k", &tok), "error");
    assert_eq!(c.req("r", "k", &tok), "ok");
    assert_eq!(c.req("r", "k", &tok), "error");
    assert_eq!(c.req("n", "k", &tok), "error");
    // Free again.
    grant(&c.req("l", "k", "0"));
    drop(c);
    server.assert_quiet();
}

#[test]
fn token_is_a_bearer_credential() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    let tok = a.lock("k");
    assert_eq!(b.req("n", "k", &format!("{tok} 40")), "ok 40");
    assert_eq!(b.req("r", "k", &tok), "ok");
    assert_eq!(a.req("r", "k", &tok), "error");
}

#[test]
fn semaphore_commands() {
    let server = Server::plain();
    let mut c = server.client();
    let (t1, l1) = grant(&c.req("sl", "s", "0 2"));
    let (t2, l2) = grant(&c.req("sl", "s", "0 2 5"));
    assert_eq!((l1, l2), (33, 5));
    assert_eq!(c.req("sn", "s", &t2), "ok 33");
    assert_eq!(c.req("sn", "s", &format!("{t1} 9")), "ok 9");
    assert_eq!(c.req("n", "s", &t1), "error", "lock renew on a semaphore");
    assert_eq!(c.req("sr", "s", &t1), "ok");
    assert_eq!(c.req("sr", "s", &t2), "ok");
    assert_eq!(c.req("sr", "s", &t2), "error");
    assert_eq!(c.req("sn", "s", &t2), "error");
}

#[test]
fn enqueue_and_wait_commands() {
    let server = Server::plain();
    let mut c = server.client();
    let (t, l) = grant(&c.req("e", "k", ""));
    assert_eq!(l, 33);
    assert!(c.req("e", "k", "").starts_with("error_already_enqueued"));
    let (t2, l2) = grant(&c.req("w", "k", "5"));
    assert_eq!((t2.as_str(), l2), (t.as_str(), 33), "w returns the e token");
    let (t3, l3) = grant(&c.req("se", "s", "2 8"));
    let (t4, l4) = grant(&c.req("sw", "s", "0"));
    assert_eq!((t4, l4), (t3, l3));
    assert_eq!(l3, 8);
}

#[test]
fn ping_stats_and_auth_ignore_the_key_line() {
    let server = Server::plain();
    let mut c = server.client();
    check(&mut c, "ping\n\n\n", "ok");
    check(&mut c, "ping\n_\nanything at all\n", "ok");
    check(&mut c, "stats\n\n\n", "ok JSON");
    check(&mut c, "stats\nwith spaces\nx y\n", "ok JSON");
    // A keyed command with an empty key line is an error, connection open.
    check(&mut c, "l\n\n0\n", "error");
    check(&mut c, "ping\n_\n\n", "ok");
}

#[test]
fn crlf_line_endings_are_accepted() {
    let server = Server::plain();
    let mut c = server.client();
    check(&mut c, "l\r\nk\r\n0 12\r\n", "ok TOK 12");
    check(&mut c, "ping\r\r\n_\r\n\r\n", "ok");
}

#[test]
fn stats_document() {
    let server = Server::plain();
    let mut c = server.client();
    let s = c.stats();
    assert_eq!(s["connections"], 1);
    for array in [
        "locks",
        "semaphores",
        "idle_locks",
        "idle_semaphores",
        "signal_channels",
    ] {
        assert_eq!(s[array], serde_json::json!([]), "{array} present and empty");
    }

    let mut other = server.client();
    let tok = c.lock("held");
    grant(&c.req("sl", "sem", "0 3 20"));
    grant(&c.req("sl", "one", "0 1"));
    grant(&other.req("l", "gone", "0"));
    let s = other.stats();
    assert_eq!(s["connections"], 2);
    let lock = entry(&s, "locks", "held").expect("held lock listed");
    assert!(lock["owner_conn_id"].as_u64().expect("id") >= 1);
    let left = lock["lease_expires_in_s"].as_f64().expect("float");
    assert!(left > 30.0 && left <= 33.0, "lease left {left}");
    assert_eq!(lock["waiters"], 0);
    let sem = entry(&s, "semaphores", "sem").expect("semaphore listed");
    assert_eq!(
        (&sem["limit"], &sem["holders"], &sem["waiters"]),
        (&3.into(), &1.into(), &0.into())
    );
    // A limit-1 semaphore is classified as a lock (D5).
    assert!(entry(&s, "locks", "one").is_some());
    assert!(entry(&s, "semaphores", "one").is_none());

    assert_eq!(c.req("r", "held", &tok), "ok");
    let s = c.stats();
    assert!(entry(&s, "locks", "held").is_none(), "never in both");
    let idle = entry(&s, "idle_locks", "held").expect("released lock is idle");
    assert!(idle["idle_s"].as_f64().expect("float") >= 0.0);

    // A disconnect releases `gone` and `stats` no longer counts `other`.
    drop(other);
    let s = server.wait_stats(|s| s["connections"] == 2);
    assert!(entry(&s, "idle_locks", "gone").is_some());
}

#[test]
fn tokens_are_fencing_tokens_in_grant_order() {
    let salt_key = [0x1234, 0x5678];
    let server = Server::start(|cfg| {
        cfg.core.fence_start = 1000;
        cfg.core.salt_key = salt_key;
    });
    let mut a = server.client();
    let mut b = server.client();
    let tokens = [
        a.lock("x"),
        grant(&b.req("sl", "x", "0 2")).0,
        grant(&a.req("e", "y", "")).0,
        b.lock("z"),
        grant(&a.req("se", "w", "3")).0,
    ];
    for (i, tok) in tokens.iter().enumerate() {
        assert!(is_token(tok));
        let f = fence(tok);
        assert_eq!(f, 1001 + i as u64, "fences count grants server-wide");
        let salt = u64::from_str_radix(&tok[16..], 16).expect("hex");
        assert_eq!(salt, dflockd::core::token_salt(salt_key, f));
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens sort in grant order"
    );
    // Renewal and `w` keep the token; nothing else consumes a fence.
    a.req("n", "x", &tokens[0]);
    a.req("w", "y", "0");
    assert_eq!(fence(&b.lock("fresh")), 1006);
}

#[test]
fn lock_and_semaphore_key_spaces_are_separate() {
    let server = Server::plain();
    let mut c = server.client();
    let lt = c.lock("k");
    let (st, _) = grant(&c.req("sl", "k", "0 2"));
    assert_eq!(c.req("sr", "k", &lt), "error");
    assert_eq!(c.req("r", "k", &st), "error");
    assert_eq!(c.req("sn", "k", &lt), "error");
    assert_eq!(c.req("n", "k", &st), "error");
    // A `se` record is not a `e` record.
    grant(&c.req("se", "q", "2"));
    assert_eq!(c.req("w", "q", "0"), "error_not_enqueued");
    grant(&c.req("sw", "q", "0"));
    let s = c.stats();
    assert!(entry(&s, "locks", "k").is_some());
    assert!(entry(&s, "semaphores", "k").is_some());
    assert_eq!(c.req("r", "k", &lt), "ok");
    assert_eq!(c.req("sr", "k", &st), "ok");
}

// §2 and §4: only successful operations refresh a resource's idle time.
#[test]
fn failed_operations_do_not_refresh_idle_time() {
    let server = Server::plain();
    let mut c = server.client();
    let t = c.lock("k");
    assert_eq!(c.req("r", "k", &t), "ok");
    let (ts, _) = grant(&c.req("sl", "s", "0 2"));
    assert_eq!(c.req("sr", "s", &ts), "ok");
    let idle = |s: &serde_json::Value, array: &str, key: &str| {
        entry(s, array, key).map_or(0.0, |e| e["idle_s"].as_f64().expect("float"))
    };
    server.wait_stats(|s| {
        idle(s, "idle_locks", "k") >= 0.3 && idle(s, "idle_semaphores", "s") >= 0.3
    });
    let bogus = "0".repeat(32);
    assert_eq!(c.req("r", "k", &bogus), "error");
    assert_eq!(c.req("n", "k", &bogus), "error");
    assert_eq!(c.req("r", "k", &t), "error");
    assert_eq!(c.req("sr", "s", &ts), "error");
    assert_eq!(c.req("sn", "s", &ts), "error");
    assert_eq!(c.req("sl", "s", "0 3"), "error_limit_mismatch");
    assert_eq!(c.req("se", "s", "3"), "error_limit_mismatch");
    let s = c.stats();
    assert!(
        idle(&s, "idle_locks", "k") >= 0.3,
        "lock idle time reset: {s}"
    );
    assert!(
        idle(&s, "idle_semaphores", "s") >= 0.3,
        "semaphore idle time reset: {s}"
    );
}
