//! The runtime on its own: tasks run on the thread they were spawned on,
//! wakes from other threads arrive, timers fire, sockets echo, and
//! stopping drops every task's future.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Waits for a value on `rx`, at most a few seconds.
fn recv<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the runtime answered")
}

#[test]
fn tasks_stay_on_the_thread_they_were_spawned_on() {
    let rt = Runtime::start(2, "rt-test").expect("start");
    let (tx, rx) = mpsc::channel();
    for i in 0..2 {
        let tx = tx.clone();
        rt.spawn_on(i, async move {
            let first = std::thread::current().id();
            for _ in 0..10 {
                futures_lite::future::yield_now().await;
                assert_eq!(std::thread::current().id(), first);
            }
            let index = Worker::current().expect("on a runtime thread").index();
            tx.send(index).expect("send");
        })
        .detach();
    }
    let mut got = [recv(&rx), recv(&rx)];
    got.sort();
    assert_eq!(got, [0, 1]);
    rt.stop();
    rt.join();
}

/// A waker used from another thread puts the task back on its own thread
/// (through the injector and one notify).
#[test]
fn a_wake_from_another_thread_runs_the_task_on_its_own() {
    let rt = Runtime::start(2, "rt-test").expect("start");
    let (tx, rx) = mpsc::channel();
    let event = std::sync::Arc::new(event_listener::Event::new());
    let e2 = event.clone();
    rt.spawn_on(0, async move {
        let home = std::thread::current().id();
        let l = e2.listen();
        tx.send(home).expect("send");
        l.await;
        tx.send(std::thread::current().id()).expect("send");
    })
    .detach();
    let home = recv(&rx);
    // Notify from this (non-runtime) thread.
    event.notify(1);
    assert_eq!(recv(&rx), home);
    rt.stop();
    rt.join();
}

#[test]
fn sleeps_fire_in_order_and_resets_move_them() {
    let rt = Runtime::start(1, "rt-test").expect("start");
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for (name, ms) in [("b", 60u64), ("a", 20)] {
        let tx = tx.clone();
        rt.spawn_on(0, async move {
            sleep(Duration::from_millis(ms)).await;
            tx.send(name).expect("send");
        })
        .detach();
    }
    let tx2 = tx.clone();
    rt.spawn_on(0, async move {
        let mut s = Sleep::after(Duration::from_secs(3600));
        s.reset(Instant::now() + Duration::from_millis(40));
        s.await;
        tx2.send("reset").expect("send");
    })
    .detach();
    assert_eq!([recv(&rx), recv(&rx), recv(&rx)], ["a", "reset", "b"]);
    assert!(start.elapsed() >= Duration::from_millis(60));
    rt.stop();
    rt.join();
}

/// hyper's sleeps of one connection share one registration: a later sleep
/// made while an earlier one is registered still waits for its own
/// deadline (woken by the earlier registration, it registers again), an
/// earlier one made while a later one is registered is not late, and none
/// is ready before its deadline.
#[test]
fn hyper_sleeps_of_a_connection_keep_their_own_deadlines() {
    use hyper::rt::Timer;
    let rt = Runtime::start(1, "rt-test").expect("start");
    let (tx, rx) = mpsc::channel();
    rt.spawn_on(0, async move {
        let timer = HyperTimer::default();
        let start = Instant::now();
        // Registered for 20 ms, then dropped unfinished (a head arrived).
        let first = timer.sleep_until(start + Duration::from_millis(20));
        let polled = futures_lite::future::poll_once(first).await;
        assert!(polled.is_none());
        // Later than the registration: woken by it at 20 ms, not ready.
        timer.sleep_until(start + Duration::from_millis(60)).await;
        let later = start.elapsed();
        // Earlier than what is registered now (60 ms has fired; register
        // one far ahead first, then one 20 ms ahead).
        let far = timer.sleep_until(Instant::now() + Duration::from_secs(3600));
        assert!(futures_lite::future::poll_once(far).await.is_none());
        let t = Instant::now();
        timer.sleep(Duration::from_millis(20)).await;
        tx.send((later, t.elapsed())).expect("send");
    })
    .detach();
    let (later, earlier) = recv(&rx);
    assert!(later >= Duration::from_millis(60), "{later:?}");
    assert!(earlier >= Duration::from_millis(20), "{earlier:?}");
    assert!(earlier < Duration::from_secs(5), "{earlier:?}");
    rt.stop();
    rt.join();
}

/// A task that yields with `yield_io` lets its thread fire a due timer
/// (and run what it woke) before it runs again: once the deadline has
/// passed, the yielding task runs at most twice before the sleeper does.
/// (With `yield_now` it could run up to `RUN_BUDGET` times.)
#[test]
fn yield_io_lets_due_timers_and_their_tasks_run_first() {
    let rt = Runtime::start(1, "rt-test").expect("start");
    let (tx, rx) = mpsc::channel();
    let woke = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_millis(20);
    let w = woke.clone();
    rt.spawn_on(0, async move {
        sleep_until(deadline).await;
        w.store(true, Ordering::SeqCst);
    })
    .detach();
    rt.spawn_on(0, async move {
        let mut late_turns = 0;
        while !woke.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                late_turns += 1;
            }
            yield_io().await;
        }
        tx.send(late_turns).expect("send");
    })
    .detach();
    let late_turns = recv(&rx);
    assert!(late_turns <= 2, "ran {late_turns} times past the deadline");
    rt.stop();
    rt.join();
}

/// Off the runtime, `yield_io` yields once and completes.
#[test]
fn yield_io_works_off_the_runtime() {
    futures_lite::future::block_on(async {
        for _ in 0..3 {
            yield_io().await;
        }
    });
}

/// Off the runtime (a plain `block_on`), a sleep still sleeps.
#[test]
fn sleeps_work_off_the_runtime() {
    let start = Instant::now();
    futures_lite::future::block_on(sleep(Duration::from_millis(20)));
    assert!(start.elapsed() >= Duration::from_millis(20));
}

#[test]
fn sockets_echo_on_their_thread() {
    echo_on(Backend::best());
}

/// The portable poller (`polling`, edge mode) drives the same readiness
/// logic.
#[test]
fn sockets_echo_on_the_portable_poller() {
    echo_on(Backend::Portable);
}

fn echo_on(backend: Backend) {
    let rt = Runtime::start_with(2, "rt-test", backend).expect("start");
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = std_listener.local_addr().expect("addr");
    rt.spawn_on(1, async move {
        let listener = net::TcpListener::from_std(std_listener).expect("register");
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            rt_echo(s).await;
        }
    })
    .detach();
    for round in 0..3 {
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let msg = format!("hello {round}\n");
        c.write_all(msg.as_bytes()).expect("write");
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).expect("read");
        assert_eq!(back, msg.as_bytes());
    }
    rt.stop();
    rt.join();
}

/// A write larger than the socket buffers blocks and resumes on writable
/// edges; a read resumes on readable ones; nothing is lost in between.
#[test]
fn large_transfers_resume_on_edges() {
    for backend in [Backend::best(), Backend::Portable] {
        let rt = Runtime::start_with(1, "rt-test", backend).expect("start");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std_listener.local_addr().expect("addr");
        const LEN: usize = 8 << 20;
        let (tx, rx) = mpsc::channel();
        rt.spawn_on(0, async move {
            let listener = net::TcpListener::from_std(std_listener).expect("register");
            let (s, _) = listener.accept().await.expect("accept");
            let mut s = net::TcpStream::from_std(s).expect("register");
            let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
            s.write_all(&data).await.expect("write");
            // Then read back what the peer sends after it has read it all.
            let mut back = vec![0u8; LEN];
            s.read_exact(&mut back).await.expect("read");
            tx.send(back == data).expect("send");
        })
        .detach();
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut got = vec![0u8; LEN];
        // 8 MiB exceeds loopback's socket buffers, so the server's write
        // blocks and resumes at least once.
        c.read_exact(&mut got).expect("read");
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        c.write_all(&got).expect("write back");
        assert!(recv(&rx), "{backend:?}: the echo came back intact");
        rt.stop();
        rt.join();
    }
}

async fn rt_echo(s: std::net::TcpStream) {
    let mut s = net::TcpStream::from_std(s).expect("register");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.expect("read");
    s.write_all(&buf[..n]).await.expect("write");
}

/// Stopping drops the futures of tasks that never finished (their sockets
/// close, their guards run).
#[test]
fn stopping_drops_every_unfinished_task() {
    struct Counted(std::sync::Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let rt = Runtime::start(2, "rt-test").expect("start");
    let dropped = std::sync::Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    for i in 0..4 {
        let c = Counted(dropped.clone());
        let tx = tx.clone();
        rt.spawn_on(i, async move {
            let _c = c;
            tx.send(()).expect("send");
            std::future::pending::<()>().await;
        })
        .detach();
    }
    for _ in 0..4 {
        recv(&rx);
    }
    rt.stop();
    rt.join();
    assert_eq!(dropped.load(Ordering::SeqCst), 4);
}

/// A peer that sends a few bytes and hangs up at once: the short read that
/// takes the bytes must not leave the reader waiting for an edge that
/// already came (the end of stream is always readable). Both pollers.
#[test]
fn a_short_read_before_a_hang_up_still_sees_the_end() {
    for backend in [Backend::best(), Backend::Portable] {
        let rt = Runtime::start_with(1, "rt-test", backend).expect("start");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std_listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        rt.spawn_on(0, async move {
            let listener = net::TcpListener::from_std(std_listener).expect("register");
            let (s, _) = listener.accept().await.expect("accept");
            let mut s = net::TcpStream::from_std(s).expect("register");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            tx.send(got).expect("send");
        })
        .detach();
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.write_all(b"l orders 60\n").expect("write");
        c.shutdown(std::net::Shutdown::Both).expect("shutdown");
        assert_eq!(recv(&rx), b"l orders 60\n", "{backend:?}");
        rt.stop();
        rt.join();
    }
}

#[test]
fn a_due_hand_off_keeps_an_idle_thread_polling_for_its_window() {
    let start = base() + Duration::from_secs(1);
    let at = |d: Duration| nanos(start + d);
    // Neither a plain spin nor a window: sleep at once.
    assert_eq!(spin_until(start, 0, 0), None);
    // A window that already ended: sleep at once.
    assert_eq!(spin_until(start, 0, at(Duration::ZERO)), None);
    // A window still open: poll until its end.
    let end = start + Duration::from_micros(300);
    assert_eq!(
        spin_until(start, 0, at(Duration::from_micros(300))),
        Some(end)
    );
    // The plain spin and a window: the later end.
    assert_eq!(
        spin_until(start, 50_000, at(Duration::from_micros(300))),
        Some(end)
    );
    assert_eq!(
        spin_until(start, 500_000, at(Duration::from_micros(300))),
        Some(start + Duration::from_micros(500))
    );

    // `expect` opens the window from now, only when a hand-off spin is set,
    // and never shortens one already open.
    let w = Worker::new(0, Backend::best()).unwrap();
    w.expect();
    assert_eq!(w.expect_until.load(Ordering::Relaxed), 0);
    w.handoff_spin_ns.store(200_000, Ordering::Relaxed);
    let before = nanos(Instant::now());
    w.expect();
    let until = w.expect_until.load(Ordering::Relaxed);
    assert!(until >= before + 200_000, "{until} < {before} + 200µs");
    w.expect_until.store(u64::MAX - 1, Ordering::Relaxed);
    w.expect();
    assert_eq!(w.expect_until.load(Ordering::Relaxed), u64::MAX - 1);

    // A connection's mailbox tells its thread of an answer delivered to it
    // (the grant a release handed off), not of a push.
    use crate::engine::mailbox::{Delivery, Mailbox};
    let mb = Mailbox::on(Some(w.clone()));
    w.expect_until.store(0, Ordering::Relaxed);
    mb.push(Delivery::Push {
        channel: crate::wire::Key::new(b"c").unwrap(),
        payload: std::sync::Arc::from(&b"x"[..]),
    });
    assert_eq!(w.expect_until.load(Ordering::Relaxed), 0);
    mb.push(Delivery::Reply(crate::wire::Reply::Ok));
    assert!(w.expect_until.load(Ordering::Relaxed) > 0);
}
