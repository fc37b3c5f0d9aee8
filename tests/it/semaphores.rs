//! Counting semaphores over TCP: N holders, the N+1th queued and granted on
//! release, several grants from one release, limit mismatch.

use crate::support::{entry, grant, Server};

#[test]
fn n_holders_then_the_next_queues_until_a_release() {
    let server = Server::plain();
    let mut holders: Vec<_> = (0..3).map(|_| server.client()).collect();
    let tokens: Vec<String> = holders
        .iter_mut()
        .map(|c| grant(&c.req("sl", "s", "0 3")).0)
        .collect();
    let mut late = server.client();
    assert_eq!(late.req("sl", "s", "0 3"), "timeout", "full with T = 0");
    late.send("sl", "s", "10 3");
    server.wait_sem_waiters("s", 1);
    late.expect_silence();
    let s = server.stats();
    let e = entry(&s, "semaphores", "s").expect("listed");
    assert_eq!((&e["holders"], &e["limit"]), (&3.into(), &3.into()));

    assert_eq!(holders[1].req("sr", "s", &tokens[1]), "ok");
    let (t, _) = grant(&late.recv_line());
    let s = server.stats();
    let e = entry(&s, "semaphores", "s").expect("listed");
    assert_eq!((&e["holders"], &e["waiters"]), (&3.into(), &0.into()));

    assert_eq!(late.req("sr", "s", &t), "ok");
    for (c, t) in holders.iter_mut().zip(&tokens) {
        let want = if *t == tokens[1] { "error" } else { "ok" };
        assert_eq!(c.req("sr", "s", t), want);
    }
    drop((holders, late));
    server.assert_quiet();
}

#[test]
fn waiters_are_granted_in_arrival_order() {
    let server = Server::plain();
    let mut a = server.client();
    let t1 = grant(&a.req("sl", "s", "0 2")).0;
    let t2 = grant(&a.req("sl", "s", "0 2")).0;
    let (mut b, mut c) = (server.client(), server.client());
    b.send("sl", "s", "10 2");
    server.wait_sem_waiters("s", 1);
    c.send("sl", "s", "10 2 4");
    server.wait_sem_waiters("s", 2);

    assert_eq!(a.req("sr", "s", &t2), "ok");
    grant(&b.recv_line());
    c.expect_silence();
    assert_eq!(a.req("sr", "s", &t1), "ok");
    let (_, lease) = grant(&c.recv_line());
    assert_eq!(lease, 4, "each waiter gets its own lease");
}

#[test]
fn one_disconnect_grants_several_waiters() {
    let server = Server::plain();
    let mut a = server.client();
    grant(&a.req("sl", "s", "0 2"));
    grant(&a.req("sl", "s", "0 2"));
    let (mut b, mut c, mut d) = (server.client(), server.client(), server.client());
    for (i, x) in [&mut b, &mut c, &mut d].into_iter().enumerate() {
        x.send("sl", "s", "10 2");
        server.wait_sem_waiters("s", i as u64 + 1);
    }
    drop(a);
    grant(&b.recv_line());
    grant(&c.recv_line());
    server.wait_sem_waiters("s", 1);
    d.expect_silence();
    drop(b);
    grant(&d.recv_line());
}

#[test]
fn limit_mismatch_changes_nothing() {
    let server = Server::plain();
    let mut a = server.client();
    let mut b = server.client();
    let t = grant(&a.req("sl", "s", "0 2")).0;
    assert_eq!(b.req("sl", "s", "0 3"), "error_limit_mismatch");
    assert_eq!(b.req("sl", "s", "5 1"), "error_limit_mismatch");
    assert_eq!(b.req("se", "s", "3"), "error_limit_mismatch");
    assert_eq!(b.req("se", "s", "1 10"), "error_limit_mismatch");
    let s = b.stats();
    let e = entry(&s, "semaphores", "s").expect("listed");
    assert_eq!(
        (&e["limit"], &e["holders"], &e["waiters"]),
        (&2.into(), &1.into(), &0.into())
    );
    // The mismatched `se` left no record behind.
    assert_eq!(b.req("sw", "s", "0"), "error_not_enqueued");
    grant(&b.req("sl", "s", "0 2"));
    assert_eq!(a.req("sr", "s", &t), "ok");
}
