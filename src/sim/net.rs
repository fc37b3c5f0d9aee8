//! Simulated connections: an in-memory duplex stream whose server end
//! implements the same `AsyncRead`/`AsyncWrite` the TCP front serves, with
//! faults: reads and writes split at random points, a small and random
//! send buffer (so a reader that stalls blocks the server's writes), and
//! resets.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_lite::{AsyncRead, AsyncWrite};

use super::rng::Rng;

/// Both directions of one connection.
pub struct Pipe {
    /// Client to server, and its reader's (the server's) waker.
    pub up: VecDeque<u8>,
    up_waker: Option<Waker>,
    /// Server to client, at most `cap` bytes, and the waiting writer.
    pub down: VecDeque<u8>,
    down_writer: Option<Waker>,
    down_reader: Option<Waker>,
    pub cap: usize,
    /// The client closed its end (the server reads EOF, its writes fail).
    pub client_closed: bool,
    /// The client reset the connection (reads and writes fail).
    pub reset: bool,
    /// When the server's end was closed or dropped, and whether a write
    /// of the server's was waiting for room in the full send buffer then
    /// (it outlasted `--write-timeout` on a reader that stalled).
    pub server_closed_at: Option<u64>,
    pub server_write_stuck: bool,
    /// Split reads and writes at random points.
    pub split: bool,
    rng: Rng,
}

pub type Shared = Rc<RefCell<Pipe>>;

pub fn pipe(rng: Rng, cap: usize, split: bool) -> Shared {
    Rc::new(RefCell::new(Pipe {
        up: VecDeque::new(),
        up_waker: None,
        down: VecDeque::new(),
        down_writer: None,
        down_reader: None,
        cap: cap.max(1),
        client_closed: false,
        reset: false,
        server_closed_at: None,
        server_write_stuck: false,
        split,
        rng,
    }))
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

impl Pipe {
    fn cut(&mut self, n: usize) -> usize {
        if self.split && n > 1 && self.rng.chance(500) {
            1 + self.rng.below(n as u64) as usize
        } else {
            n
        }
    }

    /// The client sends `bytes`.
    pub fn client_write(&mut self, bytes: &[u8]) {
        if self.client_closed || self.reset || self.server_closed_at.is_some() {
            return;
        }
        self.up.extend(bytes);
        wake(&mut self.up_waker);
    }

    /// The client takes what arrived; `None` at end of stream.
    pub fn client_read(&mut self) -> Option<Vec<u8>> {
        if self.down.is_empty() && self.server_closed_at.is_some() {
            return None;
        }
        let n = self.down.len();
        let bytes: Vec<u8> = self.down.drain(..n).collect();
        wake(&mut self.down_writer);
        Some(bytes)
    }

    pub fn client_close(&mut self, reset: bool) {
        self.client_closed = true;
        self.reset |= reset;
        wake(&mut self.up_waker);
        wake(&mut self.down_writer);
    }

    /// Registers the client's task to wake when something arrives.
    pub fn client_wait(&mut self, cx: &mut Context<'_>) {
        self.down_reader = Some(cx.waker().clone());
    }

    fn server_close(&mut self, now: u64) {
        if self.server_closed_at.is_none() {
            self.server_closed_at = Some(now);
            self.server_write_stuck = self.down.len() >= self.cap && self.down_writer.is_some();
        }
        wake(&mut self.down_reader);
    }
}

/// The server's end of a [`Pipe`].
pub struct ServerEnd {
    pub pipe: Shared,
    pub now: Rc<dyn Fn() -> u64>,
}

impl Drop for ServerEnd {
    fn drop(&mut self) {
        let now = (self.now)();
        self.pipe.borrow_mut().server_close(now);
    }
}

impl AsyncRead for ServerEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut p = self.pipe.borrow_mut();
        if p.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if p.up.is_empty() {
            if p.client_closed {
                return Poll::Ready(Ok(0));
            }
            p.up_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = p.up.len().min(buf.len());
        let n = p.cut(n);
        for (i, b) in p.up.drain(..n).enumerate() {
            buf[i] = b;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for ServerEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut p = self.pipe.borrow_mut();
        if p.reset || p.client_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = p.cap.saturating_sub(p.down.len());
        if room == 0 {
            p.down_writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        let n = p.cut(n);
        p.down.extend(&buf[..n]);
        wake(&mut p.down_reader);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let now = (self.now)();
        self.pipe.borrow_mut().server_close(now);
        Poll::Ready(Ok(()))
    }
}
