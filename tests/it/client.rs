//! The client library (`dflockd::client`) against an in-process server:
//! every low-level call and its typed errors, the lock and semaphore
//! handles (acquire, two-phase, release, disconnect), background renewal
//! across several lease periods, the lost-grant signal (token released
//! elsewhere, server silent, server restarted), and auth.
//!
//! Time-based checks wait on the server (a blocked acquire that must time
//! out, a renewal that must fail), never on a sleep.

use std::time::Duration;

use dflockd::client::{
    blocking, client_config_from_ca_file, fence_from_token, Client, Connection, Enqueued, Error,
    Signal, Subscriber, TlsOptions, SIGNAL_BUFFER,
};
use dflockd::wire::Space;

use crate::support::{wait_until, waiters, Server};

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    smol::block_on(f)
}

#[test]
fn connection_calls_and_typed_errors() {
    let server = Server::start(|c| c.core.max_locks = 3);
    let addr = server.addr().to_string();
    block(async {
        let mut a = Connection::connect(&addr).await.unwrap();
        let mut b = Connection::connect(&addr).await.unwrap();
        a.ping().await.unwrap();

        let g = a.lock("cc", Duration::ZERO, Some(7)).await.unwrap();
        assert_eq!(g.lease_s, 7);
        assert!(matches!(
            b.lock("cc", Duration::ZERO, None).await,
            Err(Error::Timeout)
        ));
        assert_eq!(a.renew("cc", g.token, None).await.unwrap(), 33);
        // A token is a bearer credential: `b` may renew it.
        assert_eq!(b.renew("cc", g.token, Some(9)).await.unwrap(), 9);

        // Two-phase: `b` queues behind `a`, then collects the grant.
        assert_eq!(b.enqueue("cc", None).await.unwrap(), Enqueued::Queued);
        assert!(matches!(
            b.enqueue("cc", None).await,
            Err(Error::AlreadyEnqueued)
        ));
        a.release("cc", g.token).await.unwrap();
        let g2 = b.wait("cc", Duration::from_secs(10)).await.unwrap();
        assert!(g2.token.fence > g.token.fence);
        assert!(matches!(
            b.wait("cc", Duration::ZERO).await,
            Err(Error::NotEnqueued)
        ));
        assert!(matches!(a.release("cc", g.token).await, Err(Error::Server)));
        b.release("cc", g2.token).await.unwrap();

        // Semaphores.
        let s = a.sem_acquire("cs", Duration::ZERO, 2, None).await.unwrap();
        assert!(matches!(
            b.sem_acquire("cs", Duration::ZERO, 3, None).await,
            Err(Error::LimitMismatch)
        ));
        match b.sem_enqueue("cs", 2, Some(5)).await.unwrap() {
            Enqueued::Acquired(g) => assert_eq!(g.lease_s, 5),
            Enqueued::Queued => panic!("a slot was free"),
        }
        let sw = b.sem_wait("cs", Duration::ZERO).await.unwrap();
        assert_eq!(sw.lease_s, 5);
        assert_eq!(a.sem_renew("cs", s.token, Some(4)).await.unwrap(), 4);

        // The stats snapshot is JSON.
        let stats = a.stats().await.unwrap();
        assert_eq!(stats["semaphores"][0]["key"], "cs");
        assert_eq!(stats["semaphores"][0]["holders"], 2);

        // Budget: cc (idle), cs, and one more.
        a.lock("cm1", Duration::ZERO, None).await.unwrap();
        assert!(matches!(
            a.lock("cm2", Duration::ZERO, None).await,
            Err(Error::MaxLocks)
        ));
        a.sem_release("cs", s.token).await.unwrap();
        b.sem_release("cs", sw.token).await.unwrap();

        // Client-side validation never reaches the server.
        assert!(matches!(
            a.lock("bad key", Duration::ZERO, None).await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            a.sem_acquire("k", Duration::ZERO, 0, None).await,
            Err(Error::Invalid(_))
        ));
        // `auth` on a server without a token is a plain `error`: Auth.
        assert!(matches!(a.auth("x").await, Err(Error::Auth)));
        a.ping().await.unwrap();
    });
}

#[test]
fn max_waiters_is_typed() {
    let server = Server::start(|c| c.core.max_waiters = 1);
    let addr = server.addr().to_string();
    block(async {
        let mut a = Connection::connect(&addr).await.unwrap();
        let mut b = Connection::connect(&addr).await.unwrap();
        let mut c = Connection::connect(&addr).await.unwrap();
        a.lock("mw", Duration::ZERO, None).await.unwrap();
        assert_eq!(b.enqueue("mw", None).await.unwrap(), Enqueued::Queued);
        assert!(matches!(
            c.enqueue("mw", None).await,
            Err(Error::MaxWaiters)
        ));
    });
}

#[test]
fn lock_handle_acquire_release_and_handoff() {
    let server = Server::plain();
    let client = blocking::Client::new([server.addr().to_string()]);
    let mut a = client.lock("h1");
    let mut b = client.lock("h1");
    let t1 = a.acquire(Duration::from_secs(5)).unwrap();
    assert_eq!(a.token(), Some(t1));
    assert!(matches!(b.acquire(Duration::ZERO), Err(Error::Timeout)));
    // A timed-out handle closed its connection: no waiter is left.
    server.wait_stats(|s| waiters(s, "locks", "h1") == 0);
    // Acquiring twice on one handle is refused locally.
    assert!(matches!(a.acquire(Duration::ZERO), Err(Error::Invalid(_))));
    a.release().unwrap();
    assert_eq!(a.token(), None);
    assert!(matches!(a.release(), Err(Error::Invalid(_))));
    let t2 = b.acquire(Duration::ZERO).unwrap();
    assert!(t2.fence > t1.fence);
    assert_eq!(fence_from_token(&t2.to_string()), Some(t2.fence));
    // Closing without release: the server releases on disconnect.
    b.close();
    let t3 = a.acquire(Duration::from_secs(10)).unwrap();
    assert!(t3.fence > t2.fence);
    a.release().unwrap();
    server.assert_quiet();
}

#[test]
fn two_phase_handles() {
    let server = Server::plain();
    let client = blocking::Client::new([server.addr().to_string()]);
    let mut a = client.lock("tp");
    let mut b = client.lock("tp");
    let ta = match a.enqueue().unwrap() {
        Enqueued::Acquired(g) => g.token,
        Enqueued::Queued => panic!("free lock"),
    };
    assert_eq!(a.wait(Duration::ZERO).unwrap(), ta);
    assert_eq!(b.enqueue().unwrap(), Enqueued::Queued);
    server.wait_stats(|s| waiters(s, "locks", "tp") == 1);
    a.release().unwrap();
    let tb = b.wait(Duration::from_secs(10)).unwrap();
    assert!(tb.fence > ta.fence);
    // `wait` without `enqueue` is refused without a round trip.
    assert!(matches!(a.wait(Duration::ZERO), Err(Error::NotEnqueued)));
    b.release().unwrap();
    server.assert_quiet();
}

#[test]
fn semaphore_handles_with_contention() {
    let server = Server::plain();
    let client = blocking::Client::new([server.addr().to_string()]);
    let mut held: Vec<_> = (0..3).map(|_| client.semaphore("sem", 3)).collect();
    for s in &mut held {
        s.acquire(Duration::ZERO).unwrap();
    }
    let mut waiters_: Vec<_> = (0..3).map(|_| client.semaphore("sem", 3)).collect();
    let mut extra = client.semaphore("sem", 3);
    assert!(matches!(extra.acquire(Duration::ZERO), Err(Error::Timeout)));
    let mut wrong = client.semaphore("sem", 4);
    assert!(matches!(
        wrong.acquire(Duration::ZERO),
        Err(Error::LimitMismatch)
    ));
    for w in &mut waiters_ {
        assert_eq!(w.enqueue().unwrap(), Enqueued::Queued);
    }
    server.wait_sem_waiters("sem", 3);
    for (h, w) in held.iter_mut().zip(waiters_.iter_mut()) {
        h.release().unwrap();
        w.wait(Duration::from_secs(10)).unwrap();
    }
    let s = server.stats();
    assert_eq!(s["semaphores"][0]["holders"], 3);
    for w in &mut waiters_ {
        w.release().unwrap();
    }
    server.assert_quiet();
}

#[test]
fn background_renewal_keeps_a_short_lease() {
    let server = Server::plain();
    // 2 s leases renewed about every second leave a second of slack for a
    // loaded machine.
    let client = Client::new([server.addr().to_string()]).with_lease(Duration::from_secs(2));
    let addr = server.addr().to_string();
    block(async {
        let mut lock = client.lock("renewed");
        let t = lock.acquire(Duration::ZERO).await.unwrap();
        // Without renewal the 2 s lease would run out and this blocked
        // acquire would be granted; renewal keeps it for 2.5 lease periods.
        let mut other = Connection::connect(&addr).await.unwrap();
        assert!(matches!(
            other.lock("renewed", Duration::from_secs(5), None).await,
            Err(Error::Timeout)
        ));
        assert!(!lock.is_lost());
        assert_eq!(lock.token(), Some(t));
        lock.release().await.unwrap();
    });
}

#[test]
fn failed_renewal_signals_lost() {
    let server = Server::plain();
    let client = Client::new([server.addr().to_string()]).with_lease(Duration::from_secs(1));
    let addr = server.addr().to_string();
    block(async {
        let mut lock = client.lock("lost");
        let t = lock.acquire(Duration::ZERO).await.unwrap();
        let lost = lock.lost();
        // Someone else releases the token (a bearer credential): the next
        // renewal answers `error` and the holder is told.
        let mut other = Connection::connect(&addr).await.unwrap();
        other.release("lost", t).await.unwrap();
        use futures_lite::FutureExt;
        let outcome = async {
            lost.await;
            true
        }
        .or(async {
            smol::Timer::after(Duration::from_secs(10)).await;
            false
        })
        .await;
        assert!(outcome, "lost() did not resolve");
        assert!(lock.is_lost());
        assert!(matches!(lock.release().await, Err(Error::Server)));
    });

    // The blocking wrapper sees the same signal.
    let client = blocking::Client(client);
    let mut lock = client.lock("lost2");
    let t = lock.acquire(Duration::ZERO).unwrap();
    let mut other = blocking::Connection::connect(&server.addr().to_string()).unwrap();
    other.release(Space::Lock, "lost2", t).unwrap();
    assert!(lock.wait_lost(Duration::from_secs(10)));
}

/// The server restarts while a lock is held: the new process knows
/// nothing of the lease, so the holder must be told it lost the lock (its
/// renewal connection is gone), and the key is free on the new server.
#[test]
fn restarted_server_signals_lost() {
    let first = Server::plain();
    let addr = first.addr();
    let client = blocking::Client::new([addr.to_string()]).with_lease(Duration::from_secs(2));
    let mut lock = client.lock("restarted");
    lock.acquire(Duration::ZERO).unwrap();
    assert!(!lock.is_lost());
    // Stop the first server (its connections are closed) and start a
    // fresh one on the same port.
    drop(first);
    let second = Server::start(|c| c.listen = addr.to_string());
    assert_eq!(second.addr(), addr);
    assert!(lock.wait_lost(Duration::from_secs(10)), "never marked lost");
    assert!(lock.is_lost());
    // The key is free on the new server: another client takes it at once.
    let mut other = blocking::Connection::connect(&addr.to_string()).unwrap();
    let grant = other
        .acquire(Space::Lock, "restarted", Duration::ZERO, 1, None)
        .unwrap();
    // The old holder cannot release what it no longer holds.
    assert!(lock.release().is_err());
    other
        .release(Space::Lock, "restarted", grant.token)
        .unwrap();
    drop(other);
    second.assert_quiet();
}

#[test]
fn auth_handshake() {
    let server = Server::start(|c| c.core.auth_token = Some(b"s3cret".to_vec()));
    let addr = server.addr().to_string();
    let good = blocking::Client::new([addr.clone()]).with_auth_token("s3cret");
    let mut lock = good.lock("authed");
    lock.acquire(Duration::ZERO).unwrap();
    lock.release().unwrap();
    let mut conn = good.connect_for("x").unwrap();
    assert!(conn.stats().unwrap().is_object());

    let bad = blocking::Client::new([addr.clone()]).with_auth_token("nope");
    assert!(matches!(
        bad.lock("authed").acquire(Duration::ZERO),
        Err(Error::Auth)
    ));
    // Without a token the first request answers `error_auth`.
    let none = blocking::Client::new([addr]);
    assert!(matches!(
        none.lock("authed").acquire(Duration::ZERO),
        Err(Error::Auth)
    ));
}

#[test]
fn keys_shard_like_upstream() {
    let servers = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
    let client = Client::new(servers);
    for key in ["a", "orders", "123456789", "ключ"] {
        let i = (dflockd::client::crc32(key.as_bytes()) % 3) as usize;
        assert_eq!(client.server_for(key), servers[i]);
    }
}

#[test]
fn unanswered_renewal_signals_lost_when_the_lease_ends() {
    use std::io::{BufRead, BufReader, Write};
    // A fake server that grants a 1 s lease and then never answers again.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        for _ in 0..3 {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
        }
        let _ = (&stream).write_all(b"ok 0000000000000001aaaaaaaaaaaaaaaa 1\n");
        // Swallow everything until the client goes away.
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {}
    });
    let client = blocking::Client::new([addr]);
    let mut lock = client.lock("hung");
    let t = lock.acquire(Duration::ZERO).unwrap();
    assert_eq!(t.fence, 1);
    assert!(lock.wait_lost(Duration::from_secs(10)), "never marked lost");
    // The interrupted renewal left the connection unusable.
    assert!(matches!(lock.release(), Err(Error::Io(_))));
}

/// A TLS server for `localhost` / 127.0.0.1 with a fresh self-signed
/// certificate (rcgen), and that certificate's PEM written to a temporary
/// file for [`client_config_from_ca_file`]. The file is removed on drop.
struct TlsServer {
    server: Server,
    ca: std::path::PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca);
    }
}

fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
    rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("generate certificate")
}

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "dflockd-it-client-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

fn tls_server(configure: impl FnOnce(&mut dflockd::server::ServerConfig)) -> TlsServer {
    let ck = self_signed();
    let cert = temp_file("cert.pem", &ck.cert.pem());
    let key = temp_file("key.pem", &ck.signing_key.serialize_pem());
    let config = dflockd::server::tls::load(&cert, &key).expect("certificate loads");
    let _ = std::fs::remove_file(&key);
    let server = Server::start(|c| {
        c.tls = Some(config);
        configure(c);
    });
    TlsServer { server, ca: cert }
}

#[test]
fn tls_lock_round_trip_and_renewal() {
    let tls = tls_server(|_| {});
    let addr = tls.server.addr().to_string();
    let config = client_config_from_ca_file(&tls.ca).expect("CA file loads");
    let client = Client::new([addr.as_str()])
        .with_tls(config.clone())
        .with_lease(Duration::from_secs(2));
    block(async {
        let mut lock = client.lock("tls-k");
        let token = lock.acquire(Duration::from_secs(5)).await.unwrap();
        // Renewal over TLS keeps the 2 s lease for 2.5 lease periods:
        // without it this blocked acquire would be granted.
        let mut other = Connection::connect_tls(&addr, &TlsOptions::new(config.clone()))
            .await
            .unwrap();
        assert!(other.get_ref().is_tls());
        assert!(matches!(
            other.lock("tls-k", Duration::from_secs(5), None).await,
            Err(Error::Timeout)
        ));
        assert!(!lock.is_lost());
        assert_eq!(lock.renew().await.unwrap(), 2);
        lock.release().await.unwrap();
        let g = other.lock("tls-k", Duration::ZERO, None).await.unwrap();
        assert!(g.token.fence > token.fence);
        other.release("tls-k", g.token).await.unwrap();
        other.close().await.unwrap();

        // A semaphore, and an explicit server name.
        let named = Client::new([addr.as_str()])
            .with_tls_options(TlsOptions::new(config.clone()).with_server_name("localhost"));
        let mut sem = named.semaphore("tls-s", 2);
        sem.acquire(Duration::from_secs(5)).await.unwrap();
        sem.release().await.unwrap();
    });
    // The blocking wrapper dials TLS too.
    let mut conn = blocking::Connection::connect_tls(&addr, &TlsOptions::new(config)).unwrap();
    conn.ping().unwrap();
    conn.close().unwrap();
}

#[test]
fn tls_with_auth_token() {
    let tls = tls_server(|c| c.core.auth_token = Some(b"s3cret".to_vec()));
    let addr = tls.server.addr().to_string();
    let config = client_config_from_ca_file(&tls.ca).unwrap();
    let good = blocking::Client::new([addr.as_str()])
        .with_tls(config.clone())
        .with_auth_token("s3cret");
    let mut lock = good.lock("tls-auth");
    lock.acquire(Duration::from_secs(5)).unwrap();
    lock.release().unwrap();
    let bad = blocking::Client::new([addr.as_str()])
        .with_tls(config)
        .with_auth_token("wrong");
    assert!(matches!(bad.connect_for("x"), Err(Error::Auth)));
}

#[test]
fn tls_refusals_are_typed() {
    let tls = tls_server(|c| c.read_timeout_s = 2);
    let addr = tls.server.addr().to_string();

    // A client trusting another CA: the handshake fails with `Error::Tls`.
    let other_ca = temp_file("other.pem", &self_signed().cert.pem());
    let wrong = client_config_from_ca_file(&other_ca).unwrap();
    let _ = std::fs::remove_file(&other_ca);
    let client = Client::new([addr.as_str()]).with_tls(wrong.clone());
    block(async {
        let mut lock = client.lock("k");
        let e = lock.acquire(Duration::from_secs(1)).await.unwrap_err();
        assert!(
            // Both self-signed certificates have the same subject, so
            // webpki reports a bad signature rather than an unknown issuer.
            matches!(e, Error::Tls(rustls::Error::InvalidCertificate(_))),
            "{e:?}"
        );
        assert!(!lock.is_lost());
    });

    // The right CA but a name the certificate does not carry.
    let right = client_config_from_ca_file(&tls.ca).unwrap();
    let opts = TlsOptions::new(right.clone()).with_server_name("db.example.com");
    let e = blocking::Connection::connect_tls(&addr, &opts)
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Tls(rustls::Error::InvalidCertificate(_))),
        "{e:?}"
    );

    // A plaintext client against the TLS port gets no reply: an I/O error.
    let e = block(async {
        let mut c = Connection::connect(&addr).await?;
        c.ping().await
    })
    .unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e:?}");

    // Unusable settings.
    let missing = std::env::temp_dir().join("dflockd-no-such-ca.pem");
    assert!(matches!(
        client_config_from_ca_file(&missing),
        Err(Error::TlsConfig(_))
    ));
    let bad_name = TlsOptions::new(right).with_server_name("not a name!");
    let e = blocking::Connection::connect_tls(&addr, &bad_name)
        .err()
        .unwrap();
    assert!(matches!(e, Error::TlsConfig(_)), "{e:?}");
}

// ---- Signals: `Subscriber` and `Connection::publish` ----

/// The next signal, or a panic if none comes within the test deadline.
async fn next_signal(sub: &Subscriber) -> Signal {
    use futures_lite::FutureExt;
    async { sub.next().await.expect("subscriber connection ended") }
        .or(async {
            smol::Timer::after(Duration::from_secs(10)).await;
            panic!("no signal within 10 s")
        })
        .await
}

/// `None` if `sub` is still open at `until`; else what ended it early
/// (a signal, or the end of the connection).
async fn open_until(sub: &Subscriber, until: std::time::Instant) -> Option<Result<Signal, Error>> {
    use futures_lite::FutureExt;
    async { Some(sub.next().await) }
        .or(async {
            smol::Timer::at(until).await;
            None
        })
        .await
}

#[test]
fn subscriber_receives_published_signals() {
    let server = Server::plain();
    let addr = server.addr().to_string();
    block(async {
        let sub = Subscriber::connect(&addr, None, None).await.unwrap();
        sub.listen("a.*", None).await.unwrap();
        let mut publisher = Connection::connect(&addr).await.unwrap();
        assert_eq!(publisher.publish("a.b", b"hello world").await.unwrap(), 1);
        let s = next_signal(&sub).await;
        assert_eq!(s.channel, b"a.b");
        assert_eq!(s.payload, b"hello world");
        // `a.*` matches exactly one more token.
        assert_eq!(publisher.publish("a.b.c", b"x").await.unwrap(), 0);
        assert_eq!(publisher.publish("b.c", b"x").await.unwrap(), 0);
        sub.unlisten("a.*", None).await.unwrap();
        assert_eq!(publisher.publish("a.b", b"gone").await.unwrap(), 0);
        assert!(sub.try_next().is_none());
        assert_eq!(sub.dropped(), 0);
        // Publishing refusals are typed.
        assert!(matches!(
            publisher.publish("a.*", b"x").await,
            Err(Error::Server)
        ));
        assert!(matches!(
            publisher.publish("a.b", b"   ").await,
            Err(Error::Server)
        ));
        assert!(matches!(
            publisher.publish("a.b", b"x\ny").await,
            Err(Error::Invalid(_))
        ));
    });
}

#[test]
fn subscriber_group_members_take_turns() {
    let server = Server::plain();
    let addr = server.addr().to_string();
    block(async {
        let first = Subscriber::connect(&addr, None, None).await.unwrap();
        let second = Subscriber::connect(&addr, None, None).await.unwrap();
        first.listen("g.>", Some("workers")).await.unwrap();
        second.listen("g.>", Some("workers")).await.unwrap();
        let mut publisher = Connection::connect(&addr).await.unwrap();
        for i in 0..4 {
            let payload = format!("job{i}");
            assert_eq!(
                publisher
                    .publish("g.x.y", payload.as_bytes())
                    .await
                    .unwrap(),
                1
            );
        }
        // Members in the order they joined: first, second, first, second.
        for (sub, i) in [(&first, 0), (&second, 1), (&first, 2), (&second, 3)] {
            let s = next_signal(sub).await;
            assert_eq!(s.channel, b"g.x.y");
            assert_eq!(s.payload, format!("job{i}").as_bytes());
        }
        assert!(first.try_next().is_none());
        assert!(second.try_next().is_none());
    });
}

#[test]
fn subscriber_heartbeat_outlives_the_read_timeout() {
    let server = Server::start(|c| c.read_timeout_s = 1);
    let addr = server.addr().to_string();
    block(async {
        let start = std::time::Instant::now();
        // Owns nothing and stays silent: cut after the read timeout.
        let quiet = Subscriber::connect_with_heartbeat(&addr, None, None, None)
            .await
            .unwrap();
        // Owns nothing but pings: kept.
        let beating =
            Subscriber::connect_with_heartbeat(&addr, None, None, Some(Duration::from_millis(200)))
                .await
                .unwrap();
        // Silent, but a subscription counts as owning something (D11).
        let listening = Subscriber::connect_with_heartbeat(&addr, None, None, None)
            .await
            .unwrap();
        listening.listen("hb.*", None).await.unwrap();

        let deadline = start + Duration::from_secs(10);
        assert!(matches!(
            open_until(&quiet, deadline).await,
            Some(Err(Error::Io(_)))
        ));
        // Both others must still be open two read timeouts in.
        let two_timeouts = start + Duration::from_millis(2500);
        assert!(open_until(&beating, two_timeouts).await.is_none());
        assert!(open_until(&listening, two_timeouts).await.is_none());

        beating.listen("hb.>", None).await.unwrap();
        let mut publisher = Connection::connect(&addr).await.unwrap();
        assert_eq!(publisher.publish("hb.tick", b"1").await.unwrap(), 2);
        assert_eq!(next_signal(&beating).await.payload, b"1");
        assert_eq!(next_signal(&listening).await.payload, b"1");
    });
}

#[test]
fn subscriber_bad_patterns_are_typed_errors() {
    let server = Server::plain();
    let addr = server.addr().to_string();
    block(async {
        let sub = Subscriber::connect(&addr, None, None).await.unwrap();
        assert!(matches!(
            sub.listen("a.>.b", None).await,
            Err(Error::Server)
        ));
        assert!(matches!(
            sub.listen("a*", Some("g")).await,
            Err(Error::Server)
        ));
        assert!(matches!(sub.unlisten("x>", None).await, Err(Error::Server)));
        assert!(matches!(sub.listen("", None).await, Err(Error::Invalid(_))));
        assert!(matches!(
            sub.listen("ok", Some("a\nb")).await,
            Err(Error::Invalid(_))
        ));
        // Still usable after the refusals.
        sub.listen("ok.>", None).await.unwrap();
        sub.ping().await.unwrap();
        let mut publisher = Connection::connect(&addr).await.unwrap();
        assert_eq!(publisher.publish("ok.1", b"fine").await.unwrap(), 1);
        assert_eq!(next_signal(&sub).await.payload, b"fine");
    });
}

#[test]
fn subscriber_buffer_overflow_is_counted() {
    let server = Server::plain();
    let addr = server.addr().to_string();
    let sub = blocking::Subscriber::connect(&addr, None, None).unwrap();
    sub.listen("flood", None).unwrap();
    let mut publisher = blocking::Connection::connect(&addr).unwrap();
    let extra = 6;
    for i in 0..SIGNAL_BUFFER + extra {
        assert_eq!(
            publisher
                .publish("flood", i.to_string().as_bytes())
                .unwrap(),
            1
        );
    }
    wait_until(Duration::from_secs(10), || sub.dropped() == extra as u64);
    // The first SIGNAL_BUFFER signals are kept, in order.
    for i in 0..SIGNAL_BUFFER {
        let s = sub.next_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(s.payload, i.to_string().as_bytes());
    }
    assert!(sub.0.try_next().is_none());
}

#[test]
fn subscriber_auth() {
    let server = Server::start(|c| c.core.auth_token = Some(b"s3cret".to_vec()));
    let addr = server.addr().to_string();
    block(async {
        let sub = Subscriber::connect(&addr, None, Some("s3cret"))
            .await
            .unwrap();
        sub.listen("au", None).await.unwrap();
        assert!(matches!(
            Subscriber::connect(&addr, None, Some("nope")).await,
            Err(Error::Auth)
        ));
        // Without a token the first command is refused.
        let anon = Subscriber::connect(&addr, None, None).await.unwrap();
        assert!(matches!(anon.listen("au", None).await, Err(Error::Auth)));
    });
}

#[test]
fn tls_subscriber_with_auth_and_heartbeat() {
    let tls = tls_server(|c| c.core.auth_token = Some(b"s3cret".to_vec()));
    let addr = tls.server.addr().to_string();
    let options = TlsOptions::new(client_config_from_ca_file(&tls.ca).unwrap());
    block(async {
        // A fast heartbeat interleaves `ping`s with the pushes over TLS.
        let sub = Subscriber::connect_with_heartbeat(
            &addr,
            Some(&options),
            Some("s3cret"),
            Some(Duration::from_millis(20)),
        )
        .await
        .unwrap();
        sub.listen("t.>", None).await.unwrap();
        let mut publisher = Connection::connect_tls(&addr, &options).await.unwrap();
        publisher.auth("s3cret").await.unwrap();
        for i in 0..20 {
            let payload = format!("p{i}");
            assert_eq!(
                publisher.publish("t.x", payload.as_bytes()).await.unwrap(),
                1
            );
            smol::Timer::after(Duration::from_millis(5)).await;
        }
        for i in 0..20 {
            assert_eq!(next_signal(&sub).await.payload, format!("p{i}").as_bytes());
        }
        sub.ping().await.unwrap();
        sub.close().await.unwrap();
    });
}

/// A member that keeps answering `error_not_leader` with its own address
/// (a cluster without a leader, or a misconfigured one): the handle
/// follows it at most `MAX_REDIRECTS` times, then returns the error.
#[test]
fn redirects_are_bounded() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let (count, me) = (connections.clone(), addr.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let me = me.clone();
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut lines = BufReader::new(stream).lines();
                while (0..3).all(|_| matches!(lines.next(), Some(Ok(_)))) {
                    if writeln!(out, "error_not_leader {me}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut lock = blocking::Client::new([addr.as_str()]).lock("redirect-loop");
    match lock.acquire(Duration::from_secs(1)) {
        Err(Error::NotLeader(Some(leader))) => assert_eq!(leader, addr),
        other => panic!("{other:?}"),
    }
    // The first try and MAX_REDIRECTS hops, each on a new connection.
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1 + dflockd::client::MAX_REDIRECTS
    );
    // A bare Connection does not follow: it returns the error.
    let mut conn = blocking::Connection::connect(&addr).unwrap();
    assert!(matches!(
        conn.acquire(Space::Lock, "k", Duration::ZERO, 1, None),
        Err(Error::NotLeader(Some(_)))
    ));
}
