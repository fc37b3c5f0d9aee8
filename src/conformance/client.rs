//! A blocking TCP connection that reads one line at a time, each read with
//! its own deadline, and remembers the requests still awaiting a reply so
//! a failure can show the request that got the wrong one.
//!
//! The runner never reads ahead in the transcript's sense: bytes may sit in
//! this buffer, but a line is taken only when a `<` line (or a stats poll)
//! asks for one. A `sig` push met while polling `stats` is kept aside and
//! handed to the next `<` line, so polling never steals a push the
//! transcript expects.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A line longer than this is not a protocol reply; stop buffering.
const MAX_REPLY_BYTES: usize = 1 << 20;

/// What one read produced.
#[derive(Debug)]
pub(crate) enum ReadLine {
    /// A complete line, without its LF.
    Line(Vec<u8>),
    /// The stream ended (or was reset) before an LF; `partial` is what came.
    Eof {
        partial: Vec<u8>,
    },
    /// No complete line before the deadline; `partial` is what came.
    TimedOut {
        partial: Vec<u8>,
    },
    Failed(String),
}

/// At most this many unanswered requests are remembered per connection
/// (a transcript that pipelines more shows only the oldest ones).
const MAX_REMEMBERED: usize = 64;

pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Pushes met while polling `stats`, oldest first.
    pushes: VecDeque<Vec<u8>>,
    eof: bool,
    /// Requests sent and not yet answered, oldest first, as their lines
    /// (without LFs). The newest may be incomplete (fewer than 3 lines).
    unanswered: VecDeque<Vec<Vec<u8>>>,
    /// The request the last reply read answered.
    last_answered: Option<Vec<Vec<u8>>>,
    /// Bytes received so far: whether the server ever said anything here.
    bytes_read: usize,
}

impl Conn {
    pub(crate) fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        Conn::from_stream(TcpStream::connect_timeout(&addr, timeout)?)
    }

    /// Wraps an established stream (the scripted server's side of a
    /// client's connection).
    pub(crate) fn from_stream(stream: TcpStream) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            pushes: VecDeque::new(),
            eof: false,
            unanswered: VecDeque::new(),
            last_answered: None,
            bytes_read: 0,
        })
    }

    /// Sends `bytes` (whole lines, each ending in LF) and remembers them
    /// as requests of three lines each.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line).to_vec();
            let full = self.unanswered.len() >= MAX_REMEMBERED;
            match self.unanswered.back_mut() {
                Some(req) if req.len() < 3 => req.push(line),
                _ if full => {}
                _ => self.unanswered.push_back(vec![line]),
            }
        }
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes `bytes` as they are, in one write (no request bookkeeping).
    pub(crate) fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// The oldest request still awaiting its reply (possibly incomplete).
    pub(crate) fn awaiting(&self) -> Option<&[Vec<u8>]> {
        self.unanswered.front().map(Vec::as_slice)
    }

    /// The request that the last reply read answered.
    pub(crate) fn last_answered(&self) -> Option<&[Vec<u8>]> {
        self.last_answered.as_deref()
    }

    /// Whether any byte ever came from the server on this connection.
    pub(crate) fn heard(&self) -> bool {
        self.bytes_read > 0
    }

    /// The next line for a `<` line: a kept push first, else the socket.
    /// A line that is not a `sig` push answers the oldest request.
    pub(crate) fn read_line(&mut self, timeout: Duration) -> ReadLine {
        match self.pushes.pop_front() {
            Some(line) => ReadLine::Line(line),
            None => {
                let got = self.read_socket_line(Instant::now() + timeout);
                self.answered(&got);
                got
            }
        }
    }

    fn answered(&mut self, got: &ReadLine) {
        if let ReadLine::Line(line) = got {
            if !line.starts_with(b"sig ") {
                self.last_answered = self.unanswered.pop_front();
            }
        }
    }

    /// The next line that is not a `sig` push; pushes are kept for later
    /// `<` lines.
    pub(crate) fn read_reply(&mut self, deadline: Instant) -> ReadLine {
        loop {
            match self.read_socket_line(deadline) {
                ReadLine::Line(line) if line.starts_with(b"sig ") => self.pushes.push_back(line),
                other => {
                    self.answered(&other);
                    return other;
                }
            }
        }
    }

    /// Waits for the end of the stream. `Ok(())` when it ends (a reset
    /// counts) with no byte left unread; otherwise what came instead.
    pub(crate) fn expect_eof(&mut self, timeout: Duration) -> Result<(), ReadLine> {
        if let Some(line) = self.pushes.pop_front() {
            return Err(ReadLine::Line(line));
        }
        let deadline = Instant::now() + timeout;
        loop {
            if !self.buf.is_empty() {
                return Err(match self.take_line() {
                    Some(line) => ReadLine::Line(line),
                    None => ReadLine::Eof {
                        partial: std::mem::take(&mut self.buf),
                    },
                });
            }
            if self.eof {
                return Ok(());
            }
            self.fill(deadline)?;
        }
    }

    /// Closes both directions.
    pub(crate) fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn take_line(&mut self) -> Option<Vec<u8>> {
        let pos = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
        line.pop();
        Some(line)
    }

    fn read_socket_line(&mut self, deadline: Instant) -> ReadLine {
        loop {
            if let Some(line) = self.take_line() {
                return ReadLine::Line(line);
            }
            if self.eof {
                return ReadLine::Eof {
                    partial: std::mem::take(&mut self.buf),
                };
            }
            if self.buf.len() > MAX_REPLY_BYTES {
                return ReadLine::Failed(format!(
                    "more than {MAX_REPLY_BYTES} bytes without an LF"
                ));
            }
            if let Err(e) = self.fill(deadline) {
                return e;
            }
        }
    }

    /// One read from the socket into the buffer, or the reason there was
    /// none. Sets `eof` at the end of the stream.
    fn fill(&mut self, deadline: Instant) -> Result<(), ReadLine> {
        let mut chunk = [0u8; 4096];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadLine::TimedOut {
                    partial: self.buf.clone(),
                });
            }
            // A zero timeout is an error for set_read_timeout.
            let left = (deadline - now).max(Duration::from_millis(1));
            if let Err(e) = self.stream.set_read_timeout(Some(left)) {
                return Err(ReadLine::Failed(e.to_string()));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.bytes_read += n;
                    return Ok(());
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        self.eof = true;
                        return Ok(());
                    }
                    _ => return Err(ReadLine::Failed(e.to_string())),
                },
            }
        }
    }
}
