//! A fault-injecting TCP proxy for one directed link between members, on
//! loopback. Member A reaches member B's Raft port only through the proxy
//! of the link A→B, so the test can cut, delay or break that link alone.
//!
//! Faults (set at any time, taking effect at once):
//! * `Pass`: bytes flow both ways.
//! * `Partition`: every open connection is cut, new ones are closed at
//!   accept (the sender sees refused handshakes and backs off).
//! * `Blackhole`: connections stay open but nothing is forwarded, and
//!   nothing is lost: as behind a dead switch, where TCP retransmits what
//!   was not acknowledged, what was sent arrives once the link is back.
//!   A chunk read meanwhile waits, and no more is read, so the sender's
//!   buffers fill as they would without acknowledgements. (Dropping the
//!   chunks instead, as this proxy once did, cut holes in the middle of a
//!   byte stream, which no network does to a live TCP connection: the
//!   receiver then reads frame lengths out of the middle of messages, and
//!   a garbled frame that happens to parse reaches Raft, where a
//!   heartbeat with a commit index past the log is a panic.)
//! * `Delay(ms)`: every chunk is held that long, order kept.
//! * `Flaky(per_mille)`: each forwarded chunk cuts its connection with that
//!   probability (a lossy path: Raft sees resets and retransmits).
//!
//! Plain threads and blocking sockets: a handful of links, each with a
//! connection or two, stopped when the proxy is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Partition,
    Blackhole,
    Delay(u64),
    Flaky(u32),
}

struct Shared {
    fault: Mutex<Fault>,
    /// Both sockets of every open connection, to cut them.
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
    stop: AtomicBool,
    rng: AtomicU64,
    /// Bytes forwarded (tests of the proxy itself).
    forwarded: AtomicU64,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }

    /// A cheap shared xorshift: fault decisions need no quality.
    fn chance(&self, per_mille: u32) -> bool {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % 1000) < u64::from(per_mille)
    }
}

/// One proxied link.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 and forwards to `target`.
    pub fn start(target: SocketAddr, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::Pass),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            rng: AtomicU64::new(seed | 1),
            forwarded: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, target, s));
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
        if fault == Fault::Partition {
            cut_all(&self.shared);
        }
    }

    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        cut_all(&self.shared);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn cut_all(shared: &Shared) {
    for (a, b) in shared.open.lock().unwrap().drain(..) {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(_) => continue,
        };
        if shared.fault() == Fault::Partition {
            drop(client);
            continue;
        }
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        shared
            .open
            .lock()
            .unwrap()
            .push((client.try_clone().unwrap(), server.try_clone().unwrap()));
        for (from, to) in [
            (client.try_clone().unwrap(), server.try_clone().unwrap()),
            (server, client),
        ] {
            let s = shared.clone();
            std::thread::spawn(move || pump(from, to, s));
        }
    }
}

/// The link's fault once it is not `Blackhole`: a chunk read during a
/// blackhole waits here (polled every 2 ms) until the link heals, is cut,
/// or the proxy stops (then `Blackhole` is returned).
fn hold_while_blackholed(shared: &Shared) -> Fault {
    loop {
        let fault = shared.fault();
        if fault != Fault::Blackhole || shared.stop.load(Ordering::Relaxed) {
            return fault;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Copies one direction, applying the link's fault to each chunk.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let received = Instant::now();
        match hold_while_blackholed(&shared) {
            Fault::Pass => {}
            Fault::Partition => break,
            // The proxy is being dropped.
            Fault::Blackhole => break,
            Fault::Delay(ms) => {
                let due = received + Duration::from_millis(ms);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            Fault::Flaky(per_mille) => {
                if shared.chance(per_mille) {
                    break;
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        shared.forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut w = c.try_clone().unwrap();
                    let mut r = c;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    fn round_trip(addr: SocketAddr) -> std::io::Result<Duration> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let start = Instant::now();
        s.write_all(b"ping")?;
        let mut got = [0u8; 4];
        s.read_exact(&mut got)?;
        assert_eq!(&got, b"ping");
        Ok(start.elapsed())
    }

    #[test]
    fn the_proxy_passes_delays_partitions_and_blackholes() {
        let p = Proxy::start(echo(), 7);
        round_trip(p.addr()).unwrap();
        p.set(Fault::Delay(100));
        // Both directions are delayed.
        assert!(round_trip(p.addr()).unwrap() >= Duration::from_millis(200));
        p.set(Fault::Partition);
        assert!(round_trip(p.addr()).is_err());
        p.set(Fault::Blackhole);
        assert!(round_trip(p.addr()).is_err(), "nothing comes back");
        p.set(Fault::Pass);
        round_trip(p.addr()).unwrap();
        // An open connection is cut by a partition.
        let mut s = TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        p.set(Fault::Partition);
        assert_eq!(s.read(&mut got).unwrap_or(0), 0);
        assert!(p.forwarded() >= 12);
    }

    /// A blackhole delays a connection's bytes and loses none: what was
    /// sent during it arrives whole and in order once the link heals, as
    /// TCP delivers across a dead switch that comes back.
    #[test]
    fn a_blackhole_holds_the_bytes_and_delivers_them_whole_once_healed() {
        let p = Proxy::start(echo(), 11);
        let mut s = TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"before").unwrap();
        let mut got = [0u8; 6];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"before");
        p.set(Fault::Blackhole);
        s.write_all(b"during the fault").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(s.read(&mut got).is_err(), "nothing comes back meanwhile");
        p.set(Fault::Pass);
        s.write_all(b", and after").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![0u8; b"during the fault, and after".len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, b"during the fault, and after");
    }
}
