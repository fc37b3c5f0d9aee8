//! Many connections on a few keys at once, from several threads: the
//! safety properties of spec/semantics.md §11 (mutual exclusion, semaphore
//! within limit, fencing tokens increase) observed from the outside.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use crate::support::{fence, grant, Client, Server};

const KEYS: usize = 3;
const SEM_LIMIT: usize = 2;

#[derive(Default)]
struct Observed {
    held: [AtomicBool; KEYS],
    last_fence: [AtomicU64; KEYS],
    sem_holders: AtomicUsize,
    grants: AtomicUsize,
}

impl Observed {
    /// Records that this thread now holds lock `key` with `token`.
    fn enter(&self, key: usize, token: &str) {
        assert!(
            !self.held[key].swap(true, Ordering::SeqCst),
            "mutual exclusion violated on k{key}"
        );
        let f = fence(token);
        let prev = self.last_fence[key].fetch_max(f, Ordering::SeqCst);
        assert!(prev < f, "fence went from {prev} to {f} on k{key}");
        self.grants.fetch_add(1, Ordering::SeqCst);
    }

    fn leave(&self, key: usize) {
        self.held[key].store(false, Ordering::SeqCst);
    }
}

fn worker(server_addr: std::net::SocketAddr, seed: u64, seen: &Observed) {
    let mut c = Client::connect(server_addr);
    let mut x = seed | 1;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = (x % KEYS as u64) as usize;
        let name = format!("k{key}");
        match (x >> 8) % 4 {
            0 => {
                let reply = c.req("l", &name, "5");
                if reply == "timeout" {
                    continue;
                }
                let (t, _) = grant(&reply);
                seen.enter(key, &t);
                seen.leave(key);
                assert_eq!(c.req("r", &name, &t), "ok");
            }
            1 => {
                let reply = c.req("e", &name, "");
                let reply = if reply == "queued" {
                    c.req("w", &name, "5")
                } else {
                    reply
                };
                if reply == "timeout" {
                    continue;
                }
                let (t, _) = grant(&reply);
                seen.enter(key, &t);
                if reply.starts_with("acquired") {
                    // Phase two after an immediate grant keeps the token.
                    assert_eq!(grant(&c.req("w", &name, "0")).0, t);
                }
                seen.leave(key);
                assert_eq!(c.req("r", &name, &t), "ok");
            }
            2 => {
                let reply = c.req("sl", "sem", &format!("5 {SEM_LIMIT}"));
                if reply == "timeout" {
                    continue;
                }
                let (t, _) = grant(&reply);
                let n = seen.sem_holders.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(n <= SEM_LIMIT, "{n} semaphore holders");
                seen.sem_holders.fetch_sub(1, Ordering::SeqCst);
                assert_eq!(c.req("sr", "sem", &t), "ok");
            }
            _ => {
                // Hold, then vanish: the disconnect releases.
                let reply = c.req("l", &name, "5");
                if reply == "timeout" {
                    continue;
                }
                let (t, _) = grant(&reply);
                seen.enter(key, &t);
                seen.leave(key);
                c = Client::connect(server_addr);
            }
        }
    }
}

#[test]
fn safety_properties_hold_under_contention() {
    let server = Server::plain();
    let seen = Arc::new(Observed::default());
    let workers: Vec<_> = (0..6u64)
        .map(|i| {
            let seen = seen.clone();
            let addr = server.addr();
            thread::spawn(move || worker(addr, 0x9e37_79b9_7f4a_7c15 ^ (i * 7919), &seen))
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    assert!(seen.grants.load(Ordering::SeqCst) > 500);
    server.assert_quiet();
}
