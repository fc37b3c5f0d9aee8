//! The harness every integration test uses: an in-process server on
//! `127.0.0.1:0`, a blocking line-protocol client over real loopback TCP,
//! `stats` helpers, a deadline-bounded polling helper and the table-driven
//! [`check`] helper.
//!
//! Nothing here sleeps in place of a condition. Sockets carry read timeouts
//! ([`IO_TIMEOUT`]) so a server bug fails a test instead of hanging it; state
//! that another connection should have reached is awaited by polling `stats`
//! with [`wait_until`]. The only fixed waits are [`QUIET`] windows used to
//! assert that a reply has *not* arrived, each backed by a `stats` check
//! where one is possible.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dflockd::server::{spawn, ServerConfig, ServerHandle};
use serde_json::Value;

/// Read timeout on every test socket (and connect timeout): a reply that
/// does not arrive within this fails the test. Generous, because it only
/// costs time when something is broken, and a loaded machine (two cores
/// shared with compilers) can stall a healthy server for seconds.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline for [`wait_until`] and friends (same reasoning).
pub const DEADLINE: Duration = Duration::from_secs(10);
/// How long to listen for a reply that must not come.
pub const QUIET: Duration = Duration::from_millis(150);

/// Polls `cond` every few milliseconds until it holds; panics if it still
/// does not after `deadline`. Returns how long it took.
#[track_caller]
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > deadline {
            panic!("condition not reached within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `s` is a token this server issues: 32 lowercase hex digits.
pub fn is_token(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The fence (first 16 hex digits) of a token.
pub fn fence(token: &str) -> u64 {
    assert!(is_token(token), "not a token: {token:?}");
    u64::from_str_radix(&token[..16], 16).expect("hex")
}

/// Splits a grant reply (`ok TOK L` or `acquired TOK L`) into token and lease.
#[track_caller]
pub fn grant(reply: &str) -> (String, u64) {
    let parts: Vec<&str> = reply.split(' ').collect();
    match parts.as_slice() {
        [word, tok, lease]
            if (*word == "ok" || *word == "acquired")
                && is_token(tok)
                && lease.parse::<u64>().is_ok() =>
        {
            (tok.to_string(), lease.parse().expect("checked"))
        }
        _ => panic!("expected a grant, got {reply:?}"),
    }
}

/// Whether one reply line matches a pattern. Patterns are the reply with
/// placeholders: `TOK` matches a token, `#` an unsigned integer, `*` any
/// word, and a trailing `JSON` the rest of the line as a JSON object.
pub fn matches(pattern: &str, actual: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix("JSON") {
        return actual
            .strip_prefix(prefix)
            .is_some_and(|rest| serde_json::from_str::<Value>(rest).is_ok_and(|v| v.is_object()));
    }
    let p: Vec<&str> = pattern.split(' ').collect();
    let a: Vec<&str> = actual.split(' ').collect();
    p.len() == a.len()
        && p.iter().zip(&a).all(|(p, a)| match *p {
            "TOK" => is_token(a),
            "#" => !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()),
            "*" => true,
            lit => lit == *a,
        })
}

/// Table-driven request/reply check: writes `input` (raw wire bytes, any
/// number of requests) in one write and expects one reply line per line of
/// `expect`, matched with [`matches`].
#[track_caller]
pub fn check(c: &mut Client, input: &str, expect: &str) {
    c.send_raw(input.as_bytes());
    for pattern in expect.lines() {
        let got = c.recv_line();
        assert!(
            matches(pattern, &got),
            "input {input:?}: expected {pattern:?}, got {got:?}"
        );
    }
}

/// Builds one request's wire bytes.
pub fn wire(cmd: &str, key: &str, arg: &str) -> String {
    format!("{cmd}\n{key}\n{arg}\n")
}

/// An in-process server, stopped (forcefully) when dropped.
pub struct Server {
    handle: Option<ServerHandle>,
    addr: SocketAddr,
}

impl Server {
    /// Starts a server on `127.0.0.1:0` with two executor threads, after
    /// letting `configure` adjust the defaults.
    pub fn start(configure: impl FnOnce(&mut ServerConfig)) -> Server {
        let mut cfg = ServerConfig {
            listen: "127.0.0.1:0".into(),
            threads: 2,
            ..Default::default()
        };
        configure(&mut cfg);
        let handle = spawn(cfg).expect("server starts");
        let addr = handle.local_addr();
        Server {
            handle: Some(handle),
            addr,
        }
    }

    /// A server with the default configuration.
    pub fn plain() -> Server {
        Server::start(|_| {})
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("server not joined yet")
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Begins graceful shutdown.
    pub fn shutdown(&self) {
        self.handle().shutdown();
    }

    /// Waits (on another thread, so a hang fails instead of blocking the
    /// suite) for [`ServerHandle::join`] to return within `deadline`.
    #[track_caller]
    pub fn join_within(mut self, deadline: Duration) {
        let handle = self.handle.take().expect("joined twice");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            handle.join();
            let _ = tx.send(());
        });
        rx.recv_timeout(deadline)
            .unwrap_or_else(|_| panic!("server did not stop within {deadline:?}"));
    }

    /// `stats` over a fresh connection.
    pub fn stats(&self) -> Value {
        self.client().stats()
    }

    /// Polls `stats` over one connection until `cond` holds; returns the
    /// matching snapshot.
    #[track_caller]
    pub fn wait_stats(&self, mut cond: impl FnMut(&Value) -> bool) -> Value {
        let mut c = self.client();
        let start = Instant::now();
        loop {
            let last = c.stats();
            if cond(&last) {
                return last;
            }
            if start.elapsed() > DEADLINE {
                panic!("stats never reached the expected state; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until exactly `n` requests are blocked in the core, over all
    /// connections (the engine says which are: not inferred from a missing
    /// reply).
    #[track_caller]
    pub fn wait_blocked(&self, n: usize) {
        let engine = self.handle().engine();
        wait_until(DEADLINE, || engine.blocked_requests() == n);
    }

    /// Waits until the lock `key` has exactly `n` queued waiters.
    #[track_caller]
    pub fn wait_lock_waiters(&self, key: &str, n: u64) {
        self.wait_stats(|s| waiters(s, "locks", key) == n);
    }

    /// Waits until the semaphore `key` has exactly `n` queued waiters.
    #[track_caller]
    pub fn wait_sem_waiters(&self, key: &str, n: u64) {
        self.wait_stats(|s| waiters(s, "semaphores", key) == n);
    }

    /// Asserts, once every client of the test has been dropped, that the
    /// server settles with no stray holders, waiters or connections: only the
    /// `stats` connection itself remains.
    #[track_caller]
    pub fn assert_quiet(&self) {
        self.wait_stats(|s| {
            s["connections"] == 1
                && s["locks"].as_array().is_some_and(|a| a.is_empty())
                && s["semaphores"].as_array().is_some_and(|a| a.is_empty())
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // ServerHandle's own Drop stops the server at once.
        drop(self.handle.take());
    }
}

/// The entry for `key` in one of the stats arrays (`locks`, `semaphores`,
/// `idle_locks`, `idle_semaphores`).
pub fn entry<'a>(stats: &'a Value, array: &str, key: &str) -> Option<&'a Value> {
    stats[array]
        .as_array()
        .expect("stats arrays are always present")
        .iter()
        .find(|e| e["key"] == key)
}

/// Queued waiters on `key` in `locks` or `semaphores` (0 when not listed).
pub fn waiters(stats: &Value, array: &str, key: &str) -> u64 {
    entry(stats, array, key).map_or(0, |e| e["waiters"].as_u64().expect("waiters"))
}

/// A blocking protocol client with a read timeout.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        Client::from_stream(stream)
    }

    /// Connects from a chosen local address (any of 127.0.0.0/8 is local).
    #[track_caller]
    pub fn connect_from(local: IpAddr, addr: SocketAddr) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::new(local, 0).into())
            .expect("bind local address");
        socket
            .connect_timeout(&addr.into(), IO_TIMEOUT)
            .expect("connect");
        Client::from_stream(socket.into())
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let writer = stream.try_clone().expect("clone");
        Client {
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// A second handle on the socket for writing from another thread.
    pub fn writer(&self) -> TcpStream {
        self.writer.try_clone().expect("clone")
    }

    #[track_caller]
    pub fn send(&mut self, cmd: &str, key: &str, arg: &str) {
        self.send_raw(wire(cmd, key, arg).as_bytes());
    }

    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    /// Reads one reply line (without its LF); panics on EOF or timeout.
    #[track_caller]
    pub fn recv_line(&mut self) -> String {
        match self.read_line() {
            Ok(Some(line)) => line,
            Ok(None) => panic!("connection closed while expecting a reply"),
            Err(e) => panic!("no reply within {IO_TIMEOUT:?}: {e}"),
        }
    }

    /// Reads one line: `Ok(None)` on EOF.
    fn read_line(&mut self) -> std::io::Result<Option<String>> {
        let mut buf = Vec::new();
        let n = self.reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        assert_eq!(buf.pop(), Some(b'\n'), "reply line cut short: {buf:?}");
        Ok(Some(String::from_utf8(buf).expect("replies are UTF-8")))
    }

    /// Reads one line, or `None` when the server closed the connection
    /// (EOF, or a reset when it closed with our bytes unread).
    #[track_caller]
    pub fn recv_line_or_eof(&mut self) -> Option<String> {
        match self.read_line() {
            Ok(line) => line,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("no line and no close within {IO_TIMEOUT:?}: {e}"),
        }
    }

    /// Waits up to `wait` for a reply line; `None` if none arrived.
    #[track_caller]
    pub fn try_recv_line(&mut self, wait: Duration) -> Option<String> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(wait))
            .expect("timeout");
        let r = self.read_line();
        self.reader
            .get_ref()
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("timeout");
        match r {
            Ok(Some(line)) => Some(line),
            Ok(None) => panic!("connection closed while waiting quietly"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Asserts that nothing arrives for [`QUIET`].
    #[track_caller]
    pub fn expect_silence(&mut self) {
        if let Some(line) = self.try_recv_line(QUIET) {
            panic!("expected no reply yet, got {line:?}");
        }
    }

    /// Sends one request and reads its reply.
    #[track_caller]
    pub fn req(&mut self, cmd: &str, key: &str, arg: &str) -> String {
        self.send(cmd, key, arg);
        self.recv_line()
    }

    /// Sends one request and reads its reply, or `None` if the server
    /// closed the connection instead (EOF or reset).
    #[track_caller]
    pub fn req_or_closed(&mut self, cmd: &str, key: &str, arg: &str) -> Option<String> {
        // Writing to a connection the server already closed may fail; the
        // read below reports the close either way.
        let _ = self.writer.write_all(wire(cmd, key, arg).as_bytes());
        match self.read_line() {
            Ok(line) => line,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("no reply and no close within {IO_TIMEOUT:?}: {e}"),
        }
    }

    /// Asserts the server closes the connection with no further bytes
    /// (EOF, or a reset when it closed with our bytes unread).
    #[track_caller]
    pub fn expect_eof(&mut self) {
        assert!(
            self.reader.buffer().is_empty(),
            "unread bytes before EOF: {:?}",
            String::from_utf8_lossy(self.reader.buffer())
        );
        let mut buf = [0u8; 512];
        match self.reader.get_mut().read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("expected EOF, got {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected EOF, got error {e}"),
        }
    }

    /// Closes our sending side (the server sees EOF).
    pub fn shutdown_write(&self) {
        self.writer.shutdown(Shutdown::Write).expect("shutdown");
    }

    /// `l key 0`, asserting an immediate grant; returns the token.
    #[track_caller]
    pub fn lock(&mut self, key: &str) -> String {
        let reply = self.req("l", key, "0");
        grant(&reply).0
    }

    /// `stats`, parsed.
    #[track_caller]
    pub fn stats(&mut self) -> Value {
        let reply = self.req("stats", "_", "");
        let json = reply
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("bad stats reply {reply:?}"));
        serde_json::from_str(json).expect("stats is JSON")
    }
}

/// A loopback port below the kernel's ephemeral range that was free a
/// moment ago, for a server a test must name before it starts (cluster
/// members, `--http-port` of the binary): the library's picker
/// ([`dflockd::conformance::spawn::unused_port`] says why not `bind(":0")`).
pub fn unused_port() -> u16 {
    dflockd::conformance::spawn::unused_port().expect("a free loopback port")
}
