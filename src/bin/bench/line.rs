//! The line protocol as the bench speaks it, written by hand so that it shares no code with
//! the server: the reply line buffer and the reply parsers (pure, unit-tested below), the
//! request encoders, and the two transports (blocking sockets, one OS thread per worker, or
//! non-blocking sockets on a small event loop) behind one [`Client`].

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::ops::Range;
use std::time::Duration;

use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::args::Config;

/// Longest reply line we accept (bytes before the `\n`). Replies are short; pushed `sig`
/// lines may carry up to 64 KiB payloads (spec §1.3), so that is the bound.
const MAX_REPLY_LINE: usize = 64 * 1024;
/// How much we ask the kernel for per read.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Everything that ends a worker. Peers send what they send: nothing here panics on it.
#[derive(Debug)]
pub(crate) enum BenchError {
    Connect {
        addr: String,
        source: io::Error,
    },
    Io(io::Error),
    Closed,
    LineTooLong,
    /// The server answered `timeout` to an acquire.
    AcquireTimeout {
        key: String,
    },
    /// Any reply we did not ask for or cannot use (`error`, `error_max_locks`, garbage ...).
    Unexpected {
        request: &'static str,
        key: String,
        reply: String,
    },
    /// A reply arrived with no request outstanding.
    Unsolicited {
        reply: String,
    },
    /// An HTTP response we cannot parse, or an answer the HTTP worker cannot go on from.
    Http(String),
    /// A call of the client library failed (client mode).
    Client {
        request: &'static str,
        key: String,
        source: dflockd::client::Error,
    },
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Connect { addr, source } => write!(f, "connect {addr}: {source}"),
            BenchError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                write!(f, "no reply from server in time ({e})")
            }
            BenchError::Io(e) => write!(f, "i/o: {e}"),
            BenchError::Closed => write!(f, "server closed the connection"),
            BenchError::LineTooLong => {
                write!(f, "reply line longer than {MAX_REPLY_LINE} bytes")
            }
            BenchError::AcquireTimeout { key } => write!(f, "acquire timed out (key {key:?})"),
            BenchError::Unexpected {
                request,
                key,
                reply,
            } => {
                write!(f, "unexpected reply to {request:?} on key {key:?}: {reply}")
            }
            BenchError::Unsolicited { reply } => write!(f, "reply without a request: {reply}"),
            BenchError::Http(detail) => write!(f, "http: {detail}"),
            BenchError::Client {
                request,
                key,
                source,
            } => write!(f, "client library {request} on key {key:?}: {source}"),
        }
    }
}

impl From<io::Error> for BenchError {
    fn from(e: io::Error) -> Self {
        BenchError::Io(e)
    }
}

/// A reply line shown in an error message: lossy UTF-8, quoted, bounded.
pub(crate) fn show_reply(line: &[u8]) -> String {
    const SHOWN: usize = 120;
    let text = String::from_utf8_lossy(&line[..line.len().min(SHOWN)]);
    let more = if line.len() > SHOWN { "..." } else { "" };
    format!("{text:?}{more}")
}

pub(crate) fn unexpected(request: &'static str, key: &str, line: &[u8]) -> BenchError {
    if request == "l" && line == b"timeout" {
        return BenchError::AcquireTimeout {
            key: key.to_string(),
        };
    }
    BenchError::Unexpected {
        request,
        key: key.to_string(),
        reply: show_reply(line),
    }
}

/// A grant is `ok <token> <lease>`; returns the token. The lease field is not needed, so it
/// is tolerated when missing, but nothing else may follow.
pub(crate) fn parse_grant(line: &[u8]) -> Option<&[u8]> {
    let mut fields = line.split(|&b| b == b' ');
    if fields.next() != Some(b"ok") {
        return None;
    }
    let token = fields.next().filter(|t| !t.is_empty())?;
    match (fields.next(), fields.next()) {
        (None, None) => Some(token),
        (Some(lease), None) if !lease.is_empty() && lease.iter().all(u8::is_ascii_digit) => {
            Some(token)
        }
        _ => None,
    }
}

/// Reply buffer: bytes accumulate across TCP segments and come out as complete lines.
///
/// Lines are returned as ranges into `data` so that a caller can keep using the other
/// fields of its connection while it looks at a line. Pushed `sig ` lines (pub/sub, spec §5.6)
/// are skipped (no reply ever begins with `sig `) unless `keep_pushes` was called, which the
/// fan-out subscribers do once their `listen` is answered.
pub(crate) struct LineBuf {
    data: Box<[u8]>,
    /// First byte not yet returned.
    start: usize,
    /// End of the bytes read so far.
    end: usize,
    /// Bytes before this index (and from `start`) are known to hold no `\n`.
    scanned: usize,
    /// Whether `sig ` lines are returned too.
    pushes: bool,
}

impl LineBuf {
    fn new() -> LineBuf {
        LineBuf {
            data: vec![0; MAX_REPLY_LINE + 1 + READ_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            scanned: 0,
            pushes: false,
        }
    }

    /// From now on, return pushed `sig ` lines too.
    pub(crate) fn keep_pushes(&mut self) {
        self.pushes = true;
    }

    /// Free space to read into, at least `READ_CHUNK` bytes: `take_line` never leaves more
    /// than `MAX_REPLY_LINE` unconsumed bytes behind.
    fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
        } else if self.data.len() - self.end < READ_CHUNK {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    /// Records that `n` bytes were read into `spare()`.
    fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }

    /// The next complete reply line (trailing `\r`s stripped), if one is buffered.
    pub(crate) fn take_line(&mut self) -> Result<Option<Range<usize>>, BenchError> {
        loop {
            let Some(offset) = self.data[self.scanned..self.end]
                .iter()
                .position(|&b| b == b'\n')
            else {
                self.scanned = self.end;
                if self.end - self.start > MAX_REPLY_LINE {
                    return Err(BenchError::LineTooLong);
                }
                return Ok(None);
            };
            let newline = self.scanned + offset;
            if newline - self.start > MAX_REPLY_LINE {
                return Err(BenchError::LineTooLong);
            }
            let mut line_end = newline;
            while line_end > self.start && self.data[line_end - 1] == b'\r' {
                line_end -= 1;
            }
            let line = self.start..line_end;
            self.start = newline + 1;
            self.scanned = self.start;
            if self.pushes || !self.data[line.clone()].starts_with(b"sig ") {
                return Ok(Some(line));
            }
        }
    }

    pub(crate) fn line(&self, range: Range<usize>) -> &[u8] {
        &self.data[range]
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

pub(crate) fn push_lock(out: &mut Vec<u8>, key: &str, timeout_s: u64, lease_s: u64) {
    out.extend_from_slice(b"l\n");
    out.extend_from_slice(key.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(timeout_s.to_string().as_bytes());
    if lease_s > 0 {
        out.push(b' ');
        out.extend_from_slice(lease_s.to_string().as_bytes());
    }
    out.push(b'\n');
}

pub(crate) fn push_release(out: &mut Vec<u8>, key: &str, token: &[u8]) {
    out.extend_from_slice(b"r\n");
    out.extend_from_slice(key.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(token);
    out.push(b'\n');
}

pub(crate) const PING: &[u8] = b"ping\n_\n\n";

// ---------------------------------------------------------------------------------------------
// Transports and connections
// ---------------------------------------------------------------------------------------------

/// A byte stream the worker loops can drive. The loops are written once, as async code; the
/// blocking transport's futures simply complete on first poll, so a worker thread runs them
/// under a trivial `block_on` and pays exactly one syscall per read or write.
pub(crate) trait Transport: Sized {
    async fn connect(addr: &str, reply_deadline: Duration) -> io::Result<Self>;
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// Blocking socket: for one OS thread per worker.
pub(crate) struct Blocking(TcpStream);

impl Transport for Blocking {
    async fn connect(addr: &str, reply_deadline: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(reply_deadline))?;
        stream.set_write_timeout(Some(reply_deadline))?;
        Ok(Blocking(stream))
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// Non-blocking socket on the async-io reactor: for many workers on few threads.
pub(crate) struct Evented(async_net::TcpStream);

impl Transport for Evented {
    async fn connect(addr: &str, _reply_deadline: Duration) -> io::Result<Self> {
        let stream = async_net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Evented(stream))
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes).await
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }
}

/// Non-blocking socket on a thread of the server's own runtime (`dflockd::rt`): registered
/// once with that thread's epoll, edge-triggered, so a reply costs one `epoll_wait` (shared by
/// every socket ready at once) and one `recv`, with no re-arm and no `recv` that says
/// `WouldBlock` (async-io's sockets add both). For many workers on one thread (`--io loop`),
/// like redis-benchmark's single event loop.
pub(crate) struct Looped(dflockd::rt::net::TcpStream);

impl Transport for Looped {
    async fn connect(addr: &str, _reply_deadline: Duration) -> io::Result<Self> {
        // A blocking connect, once per connection before the measured phase.
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Looped(dflockd::rt::net::TcpStream::from_std(stream)?))
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes).await
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }
}

/// One connection: the socket, its reply buffer and its pending output.
pub(crate) struct Client<T> {
    pub(crate) io: T,
    pub(crate) inbuf: LineBuf,
    pub(crate) out: Vec<u8>,
}

impl<T: Transport> Client<T> {
    /// Connects and, when configured, authenticates.
    pub(crate) async fn connect(addr: &str, cfg: &Config) -> Result<Client<T>, BenchError> {
        let io = T::connect(addr, cfg.reply_deadline())
            .await
            .map_err(|source| BenchError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let mut client = Client {
            io,
            inbuf: LineBuf::new(),
            out: Vec::with_capacity(4096),
        };
        if let Some(token) = &cfg.auth_token {
            client.out.extend_from_slice(b"auth\n_\n");
            client.out.extend_from_slice(token.as_bytes());
            client.out.push(b'\n');
            client.flush().await?;
            let line = client.reply().await?;
            if line != b"ok" {
                return Err(BenchError::Unexpected {
                    request: "auth",
                    key: "_".into(),
                    reply: show_reply(line),
                });
            }
        }
        Ok(client)
    }

    pub(crate) async fn flush(&mut self) -> Result<(), BenchError> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads at least one more byte into the reply buffer.
    pub(crate) async fn fill(&mut self) -> Result<(), BenchError> {
        let n = self.io.read(self.inbuf.spare()).await?;
        if n == 0 {
            return Err(BenchError::Closed);
        }
        self.inbuf.filled(n);
        Ok(())
    }

    /// The next reply line, reading as needed.
    pub(crate) async fn reply(&mut self) -> Result<&[u8], BenchError> {
        loop {
            if let Some(range) = self.inbuf.take_line()? {
                return Ok(self.inbuf.line(range));
            }
            self.fill().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Result<Vec<String>, String> {
        let mut buf = LineBuf::new();
        let mut lines = Vec::new();
        for chunk in chunks {
            let spare = buf.spare();
            spare[..chunk.len()].copy_from_slice(chunk);
            buf.filled(chunk.len());
            while let Some(range) = buf.take_line().map_err(|e| e.to_string())? {
                lines.push(String::from_utf8_lossy(buf.line(range)).into_owned());
            }
        }
        Ok(lines)
    }

    #[test]
    fn grant_parsing() {
        let ok = b"ok 0000000000000001aaaaaaaaaaaaaaaa 10";
        assert_eq!(
            parse_grant(ok),
            Some(&b"0000000000000001aaaaaaaaaaaaaaaa"[..])
        );
        assert_eq!(parse_grant(b"ok tok"), Some(&b"tok"[..]));
        for bad in [
            &b"timeout"[..],
            b"error",
            b"error_max_locks",
            b"ok",
            b"ok ",
            b"ok  10",
            b"ok tok 10 extra",
            b"ok tok ten",
            b"acquired tok 10",
            b"",
        ] {
            assert_eq!(parse_grant(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn acquire_timeout_is_named() {
        let e = unexpected("l", "k", b"timeout");
        assert!(matches!(e, BenchError::AcquireTimeout { .. }));
        let e = unexpected("r", "k", b"error");
        assert_eq!(
            e.to_string(),
            "unexpected reply to \"r\" on key \"k\": \"error\""
        );
    }

    #[test]
    fn lines_are_reassembled_across_segments() {
        let got = lines_of(&[b"o", b"k 12", b"34 10\r", b"\nok\n", b"time", b"out\n"]).unwrap();
        assert_eq!(got, ["ok 1234 10", "ok", "timeout"]);
    }

    #[test]
    fn pushed_signals_are_skipped() {
        let got = lines_of(&[b"sig a.b hello world\nok\nsig x y\n", b"ok t 1\n"]).unwrap();
        assert_eq!(got, ["ok", "ok t 1"]);
    }

    #[test]
    fn long_lines_up_to_64k_are_fine_and_longer_is_an_error() {
        let mut long = b"sig c ".to_vec();
        long.resize(MAX_REPLY_LINE, b'x');
        long.extend_from_slice(b"\nok\n");
        let chunks: Vec<&[u8]> = long.chunks(READ_CHUNK).collect();
        assert_eq!(lines_of(&chunks).unwrap(), ["ok"]);

        let too_long = vec![b'x'; MAX_REPLY_LINE + 1];
        let chunks: Vec<&[u8]> = too_long.chunks(READ_CHUNK).collect();
        assert!(lines_of(&chunks).is_err());
    }

    #[test]
    fn buffer_compacts_under_steady_traffic() {
        let mut buf = LineBuf::new();
        for i in 0..100_000u32 {
            let reply = format!("ok {i:032} 10\n");
            // Split every reply in two to exercise partial lines at the buffer's edge.
            let (a, b) = reply.as_bytes().split_at(5);
            for part in [a, b] {
                buf.spare()[..part.len()].copy_from_slice(part);
                buf.filled(part.len());
            }
            let range = buf.take_line().unwrap().unwrap();
            assert_eq!(buf.line(range), reply.trim_end().as_bytes());
        }
    }

    #[test]
    fn requests_are_three_lines() {
        let mut out = Vec::new();
        push_lock(&mut out, "bench_3", 30, 10);
        push_lock(&mut out, "k", 0, 0);
        push_release(&mut out, "bench_3", b"tok");
        assert_eq!(out, b"l\nbench_3\n30 10\nl\nk\n0\nr\nbench_3\ntok\n");
    }

    #[test]
    fn pushes_are_kept_when_asked() {
        let mut buf = LineBuf::new();
        buf.keep_pushes();
        let chunk = b"sig a 1 2\nok\n";
        buf.spare()[..chunk.len()].copy_from_slice(chunk);
        buf.filled(chunk.len());
        let first = buf.take_line().unwrap().unwrap();
        assert_eq!(buf.line(first), b"sig a 1 2");
        let second = buf.take_line().unwrap().unwrap();
        assert_eq!(buf.line(second), b"ok");
    }
}
