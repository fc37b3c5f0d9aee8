//! A blocking TCP connection that reads one line at a time, each read with
//! its own deadline.
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

pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Pushes met while polling `stats`, oldest first.
    pushes: VecDeque<Vec<u8>>,
    eof: bool,
}

impl Conn {
    pub(crate) fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            pushes: VecDeque::new(),
            eof: false,
        })
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// The next line for a `<` line: a kept push first, else the socket.
    pub(crate) fn read_line(&mut self, timeout: Duration) -> ReadLine {
        match self.pushes.pop_front() {
            Some(line) => ReadLine::Line(line),
            None => self.read_socket_line(Instant::now() + timeout),
        }
    }

    /// The next line that is not a `sig` push; pushes are kept for later
    /// `<` lines.
    pub(crate) fn read_reply(&mut self, deadline: Instant) -> ReadLine {
        loop {
            match self.read_socket_line(deadline) {
                ReadLine::Line(line) if line.starts_with(b"sig ") => self.pushes.push_back(line),
                other => return other,
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
