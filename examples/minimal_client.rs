//! A complete, minimal dflockd client: locks with fencing tokens, and
//! signals, in plain blocking `std` Rust with no dependencies, so that it
//! reads as a recipe for any language. `spec/client-guide.md` walks
//! through it piece by piece; `tests/it/client_guide.rs` checks that the
//! guide quotes this file verbatim and runs it against a real server.
//!
//! Run it against a server started with `cargo run --release`:
//!
//! ```sh
//! cargo run --example minimal_client -- 127.0.0.1:6388
//! ```

// ANCHOR: imports
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;
// ANCHOR_END: imports

// ANCHOR: errors
/// What can go wrong, in the terms a caller acts on.
#[derive(Debug)]
pub enum Error {
    /// The socket failed, or a read timed out. Drop the connection: a
    /// reply may still be on its way and would be read as the next one's.
    Io(io::Error),
    /// The server closed the connection. The request that was waiting for
    /// a reply was not carried out.
    Closed,
    /// The server refused the request with this status word (`error`,
    /// `error_max_locks`, ...). The request was not carried out.
    Refused(String),
    /// A reply this client does not understand, or a field it cannot send.
    Protocol(String),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        use io::ErrorKind::*;
        match e.kind() {
            // The server is gone, whichever way the socket noticed.
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Error::Closed,
            _ => Error::Io(e),
        }
    }
}
// ANCHOR_END: errors

// ANCHOR: connection
/// How long to wait for the reply to a request that does not block.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to the server. Replies come back in request order, one
/// line each; pushed `sig` lines may come in between.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Signals that arrived while we were reading a reply.
    signals: VecDeque<Signal>,
}

/// A pushed signal: `sig <channel> <payload>`.
#[derive(Debug, PartialEq)]
pub struct Signal {
    pub channel: String,
    pub payload: String,
}

impl Connection {
    /// Connects and, if the server wants a token, authenticates: `auth`
    /// must be the first request on the connection.
    pub fn connect(addr: &str, auth_token: Option<&str>) -> Result<Connection, Error> {
        let stream = TcpStream::connect(addr)?;
        // Requests are small and we wait for each reply: send at once.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut conn = Connection {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            signals: VecDeque::new(),
        };
        if let Some(token) = auth_token {
            conn.request("auth", "_", token)?;
        }
        Ok(conn)
    }
    // ANCHOR_END: connection

    // ANCHOR: request
    /// Sends one request, three lines, and returns its reply line when it
    /// is an outcome (`ok ...`, `acquired ...`, `queued`, `timeout`).
    /// Every other status word is a refusal.
    pub fn request(&mut self, command: &str, key: &str, arg: &str) -> Result<String, Error> {
        // A line break inside a field would end the request early, and the
        // rest would be read as another request.
        if [command, key, arg].iter().any(|f| f.contains(['\n', '\r'])) {
            return Err(Error::Protocol("a field holds a line break".into()));
        }
        // One write, so the three lines leave together.
        self.writer
            .write_all(format!("{command}\n{key}\n{arg}\n").as_bytes())?;
        let reply = self.reply()?;
        let status = reply.split(' ').next().unwrap_or_default();
        match status {
            "ok" | "acquired" | "queued" | "timeout" => Ok(reply),
            // The server's goodbye (protocol.md §2.4) is also `error`, but
            // end of stream follows it: then this request was not even
            // looked at, and the caller must not read a verdict into it.
            "error" if self.closed_by_server() => Err(Error::Closed),
            _ => Err(Error::Refused(status.to_string())),
        }
    }
    // ANCHOR_END: request

    // ANCHOR: reader
    /// The next reply line. Pushed `sig` lines can arrive at any time,
    /// even between a request and its reply; they are set aside for
    /// [`Connection::next_signal`], and the first other line is the reply.
    fn reply(&mut self) -> Result<String, Error> {
        loop {
            let line = self.read_line()?;
            match line.strip_prefix("sig ") {
                Some(push) => self.signals.push_back(Signal::parse(push)),
                None => return Ok(line),
            }
        }
    }

    /// One line without its LF (and without a CR before it). End of
    /// stream is [`Error::Closed`], also in the middle of a line.
    fn read_line(&mut self) -> Result<String, Error> {
        let mut line = Vec::new();
        // Replies are short except `stats`; bound what we buffer.
        let limit = 1 << 20;
        (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut line)?;
        if line.pop() != Some(b'\n') {
            return Err(if line.len() as u64 == limit {
                Error::Protocol("reply line too long".into())
            } else {
                Error::Closed
            });
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        // Payloads are bytes; this client shows them as text.
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Whether the server has closed the connection after the line just
    /// read, as far as this socket can tell without waiting.
    fn closed_by_server(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false; // more lines follow, so no end yet
        }
        let mut byte = [0u8; 1];
        let peeked = self
            .writer
            .set_nonblocking(true)
            .and_then(|()| self.writer.peek(&mut byte));
        let _ = self.writer.set_nonblocking(false);
        match peeked {
            Ok(0) => true,                                   // end of stream
            Ok(_) => false,                                  // more bytes
            Err(e) => e.kind() != io::ErrorKind::WouldBlock, // reset
        }
    }
}
// ANCHOR_END: reader

// ANCHOR: signals
impl Connection {
    /// Subscribes to `pattern` (`*` is one token, `>` the rest), alone
    /// (`group` empty) or taking turns with the other members of `group`.
    pub fn listen(&mut self, pattern: &str, group: &str) -> Result<(), Error> {
        self.request("listen", pattern, group).map(drop)
    }

    /// Publishes `payload` on `channel`; returns how many pushes the server
    /// queued (one per subscriber route, possibly 0).
    pub fn publish(&mut self, channel: &str, payload: &str) -> Result<u64, Error> {
        let reply = self.request("signal", channel, payload)?;
        let count = reply.strip_prefix("ok ").and_then(|n| n.parse().ok());
        count.ok_or(Error::Protocol(reply))
    }

    /// The next signal: one set aside while reading a reply, or the next
    /// line to arrive. With no request outstanding, a line that is not a
    /// `sig` can only be the server's goodbye.
    pub fn next_signal(&mut self) -> Result<Signal, Error> {
        if let Some(signal) = self.signals.pop_front() {
            return Ok(signal);
        }
        let line = self.read_line()?;
        match line.strip_prefix("sig ") {
            Some(push) => Ok(Signal::parse(push)),
            None => Err(Error::Closed),
        }
    }
}

impl Signal {
    /// `<channel> <payload>`: a channel has no spaces, a payload may.
    fn parse(push: &str) -> Signal {
        let (channel, payload) = push.split_once(' ').unwrap_or((push, ""));
        Signal {
            channel: channel.to_string(),
            payload: payload.to_string(),
        }
    }
}
// ANCHOR_END: signals

// ANCHOR: lock
/// A lock held through a connection of its own: acquired, renewed and
/// released there. While it holds the lock, that connection is never
/// closed for idleness (protocol.md §2.4), so when a renewal fails, the
/// lock is lost: a refusal means the lease had ended, and a closed
/// connection released what it held.
pub struct Lock {
    conn: Connection,
    key: String,
    token: String,
    lease_s: u64,
}

impl Lock {
    /// Waits up to `timeout_s` seconds for the lock `key`, with a lease of
    /// `lease_s` seconds. `Ok(None)`: not granted in time.
    pub fn acquire(
        addr: &str,
        auth_token: Option<&str>,
        key: &str,
        timeout_s: u64,
        lease_s: u64,
    ) -> Result<Option<Lock>, Error> {
        // Its own connection: giving up on a blocked request means closing
        // the connection, which would release whatever else it held.
        let mut conn = Connection::connect(addr, auth_token)?;
        // The reply may take `timeout_s`: outwait the server. If this read
        // times out anyway, the error drops `conn`, and closing it makes
        // the server forget the request.
        let outwait = Duration::from_secs(timeout_s) + REPLY_TIMEOUT;
        conn.writer.set_read_timeout(Some(outwait))?;
        let reply = conn.request("l", key, &format!("{timeout_s} {lease_s}"))?;
        conn.writer.set_read_timeout(Some(REPLY_TIMEOUT))?;
        match reply.split(' ').collect::<Vec<_>>()[..] {
            ["ok", token, lease] if is_token(token) => Ok(Some(Lock {
                conn,
                key: key.to_string(),
                token: token.to_string(),
                lease_s: lease.parse().map_err(|_| Error::Protocol(reply.clone()))?,
            })),
            ["timeout"] => Ok(None),
            _ => Err(Error::Protocol(reply)),
        }
    }

    /// The fencing token: the first 16 hex digits of the token, a number
    /// that grows with every grant the server makes.
    pub fn fence(&self) -> u64 {
        u64::from_str_radix(&self.token[..16], 16).expect("checked by is_token")
    }

    /// How often to renew: half the lease leaves time for one retry.
    pub fn renew_every(&self) -> Duration {
        Duration::from_secs(self.lease_s) / 2
    }

    /// Extends the lease to `lease_s` seconds from now. Any error: the
    /// lock may be someone else's by now. Stop working on what it protects.
    pub fn renew(&mut self) -> Result<(), Error> {
        let arg = format!("{} {}", self.token, self.lease_s);
        self.conn.request("n", &self.key, &arg).map(drop)
    }

    /// Releases the lock and closes its connection.
    pub fn release(mut self) -> Result<(), Error> {
        self.conn.request("r", &self.key, &self.token).map(drop)
    }
}

/// 32 lowercase hex digits, the shape of every token the server issues.
fn is_token(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
// ANCHOR_END: lock

// ANCHOR: fencing
/// The other half of fencing, on the resource the lock protects: a store
/// that remembers the highest fence it has seen and refuses writes that
/// carry a lower one. A holder whose lease ran out while it was paused
/// cannot overwrite the work of the holder after it.
#[derive(Default)]
pub struct FencedStore {
    highest_fence: u64,
    pub value: String,
}

impl FencedStore {
    pub fn write(&mut self, fence: u64, value: &str) -> Result<(), String> {
        if fence < self.highest_fence {
            return Err(format!(
                "stale fence {fence}: {} wrote since",
                self.highest_fence
            ));
        }
        self.highest_fence = fence;
        self.value = value.to_string();
        Ok(())
    }
}
// ANCHOR_END: fencing

// ANCHOR: sharding
/// Which of `n` servers owns `key`: the CRC-32 (IEEE) of the key, modulo
/// `n`. Every dflockd client shards this way, so clients written in
/// different languages agree on where each lock lives.
pub fn shard(key: &str, n: usize) -> usize {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in key.as_bytes() {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    (!crc) as usize % n
}
// ANCHOR_END: sharding

// ANCHOR: main
fn main() -> Result<(), Error> {
    let addr = std::env::args().nth(1);
    demo(addr.as_deref().unwrap_or("127.0.0.1:6388"))
}

/// The walkthrough's story: take a lock, write under its fence, renew,
/// release; then publish a signal and receive it.
pub fn demo(addr: &str) -> Result<(), Error> {
    let mut store = FencedStore::default();
    let Some(mut lock) = Lock::acquire(addr, None, "report", 10, 30)? else {
        println!("someone else holds `report`; try again later");
        return Ok(());
    };
    println!("holding `report` with fence {}", lock.fence());
    store
        .write(lock.fence(), "monthly figures")
        .map_err(Error::Protocol)?;
    lock.renew()?; // in a real program: every lock.renew_every()
    lock.release()?;

    let mut listener = Connection::connect(addr, None)?;
    listener.listen("report.*", "")?;
    let mut publisher = Connection::connect(addr, None)?;
    let pushes = publisher.publish("report.done", "monthly figures are in")?;
    let signal = listener.next_signal()?;
    println!("{pushes} push(es); received {signal:?}");
    Ok(())
}
// ANCHOR_END: main
