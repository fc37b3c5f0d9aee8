//! Leases driven by the server's own timer: an expired holder is evicted at
//! its deadline and the next waiter is granted with no client action; a
//! renewed lease is honoured. These wait on real time (1-second leases), so
//! there are few of them.

use std::time::{Duration, Instant};

use crate::support::{entry, fence, grant, Server};

#[test]
fn expiry_hands_the_lock_to_the_next_waiter() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    let granted_at = Instant::now();
    let (ta, lease) = grant(&a.req("l", "k", "0 1"));
    assert_eq!(lease, 1);
    b.send("l", "k", "10");
    server.wait_lock_waiters("k", 1);
    // Nobody touches the key: the timer alone moves it.
    let (tb, _) = grant(&b.recv_line());
    let waited = granted_at.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "handed off after {waited:?}"
    );
    assert!(fence(&tb) > fence(&ta));
    // The expired token is dead for good.
    assert_eq!(a.req("n", "k", &ta), "error");
    assert_eq!(a.req("r", "k", &ta), "error");
    assert_eq!(b.req("r", "k", &tb), "ok");
}

#[test]
fn semaphore_slot_expiry_hands_off() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    grant(&a.req("sl", "s", "0 2 1"));
    let t2 = grant(&a.req("sl", "s", "0 2 60")).0;
    b.send("sl", "s", "10 2");
    server.wait_sem_waiters("s", 1);
    grant(&b.recv_line());
    let s = b.stats();
    let e = entry(&s, "semaphores", "s").expect("listed");
    assert_eq!((&e["holders"], &e["waiters"]), (&2.into(), &0.into()));
    assert_eq!(a.req("sr", "s", &t2), "ok", "the long lease is untouched");
}

#[test]
fn renewed_lease_is_honoured() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    let (t, _) = grant(&a.req("l", "k", "0 1"));
    assert_eq!(a.req("n", "k", &format!("{t} 30")), "ok 30");
    // Had the renewal been lost, B would be granted after one second;
    // instead its two-second acquire times out.
    let sent = Instant::now();
    b.send("l", "k", "2");
    assert_eq!(b.recv_line(), "timeout");
    assert!(sent.elapsed() >= Duration::from_millis(1950));
    let s = a.stats();
    let left = entry(&s, "locks", "k").expect("held")["lease_expires_in_s"]
        .as_f64()
        .expect("float");
    assert!(left > 20.0, "lease left {left}");
    assert_eq!(a.req("r", "k", &t), "ok");
}
