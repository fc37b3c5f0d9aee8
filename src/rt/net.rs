//! Sockets on a runtime thread's own poller.
//!
//! [`Async<T>`] wraps a non-blocking socket registered once with the
//! poller of the thread that made it, edge-triggered for reads and writes
//! (`super::reactor`): it is never re-armed. A read or write is tried
//! first; only when it would block does the task leave its waker, and an
//! edge that arrived between the failed attempt and leaving the waker is
//! not lost: each edge bumps a counter, and an attempt that saw an older
//! counter tries again instead of waiting. A short read or write (less
//! than asked) means the socket had no more to give, so the next attempt
//! waits for an edge without a system call: a request costs the server
//! one `recv` and one `send`, not a third `recv` that says `WouldBlock`.
//! Once the peer has hung up, transfers are always tried: the end of the
//! stream may have come with the last bytes, and no later edge announces it.
//! Reads and writes are futures-io
//! `AsyncRead`/`AsyncWrite`, so TLS and HTTP run over it unchanged. Its
//! wakers are woken by the same thread's loop (`dispatch`), which puts
//! the task back on that thread's local queue: no other thread is involved.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_lite::{AsyncRead, AsyncWrite};

use super::reactor::Ready;
use super::{lock, Worker};

/// A registered socket's wakers and edge counters.
pub(crate) struct Source {
    key: usize,
    worker: Arc<Worker>,
    state: Mutex<Edges>,
}

struct Edges {
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// Readable (writable) edges seen so far.
    read_edges: u64,
    write_edges: u64,
    /// Whether a read (write) may succeed: false from a `WouldBlock` or a
    /// short transfer until the next edge.
    readable: bool,
    writable: bool,
    /// The peer hung up (or the socket failed): an end of stream or an
    /// error is always there to read, so transfers are always tried.
    hung_up: bool,
}

impl Default for Edges {
    fn default() -> Edges {
        Edges {
            reader: None,
            writer: None,
            read_edges: 0,
            write_edges: 0,
            readable: true,
            writable: true,
            hung_up: false,
        }
    }
}

impl Edges {
    fn edges(&self, write: bool) -> u64 {
        if write {
            self.write_edges
        } else {
            self.read_edges
        }
    }

    fn ready(&self, write: bool) -> bool {
        self.hung_up || if write { self.writable } else { self.readable }
    }

    fn set_ready(&mut self, write: bool, ready: bool) {
        if write {
            self.writable = ready;
        } else {
            self.readable = ready;
        }
    }

    /// Leaves `cx`'s waker for the next edge.
    fn park(&mut self, cx: &Context<'_>, write: bool) {
        let slot = if write {
            &mut self.writer
        } else {
            &mut self.reader
        };
        match slot {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
    }
}

/// Wakes the tasks waiting on the socket an event is about.
pub(crate) fn dispatch(worker: &Worker, ev: Ready) {
    let Some(source) = lock(&worker.sources).get(ev.key).cloned() else {
        return;
    };
    let (reader, writer) = {
        let mut s = lock(&source.state);
        let mut reader = None;
        let mut writer = None;
        s.hung_up |= ev.hup;
        if ev.readable {
            s.read_edges += 1;
            s.readable = true;
            reader = s.reader.take();
        }
        if ev.writable {
            s.write_edges += 1;
            s.writable = true;
            writer = s.writer.take();
        }
        (reader, writer)
    };
    if let Some(w) = reader {
        w.wake();
    }
    if let Some(w) = writer {
        w.wake();
    }
}

/// A non-blocking socket registered with the current runtime thread.
pub struct Async<T: AsFd> {
    io: Option<T>,
    source: Arc<Source>,
}

impl<T: AsFd> Async<T> {
    /// Registers `io` (made non-blocking by the caller) with the poller of
    /// the runtime thread this runs on.
    fn register(io: T) -> io::Result<Async<T>> {
        let worker = Worker::current()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "not on a runtime thread"))?;
        let fd = io.as_fd().as_raw_fd();
        let source = {
            let mut sources = lock(&worker.sources);
            let entry = sources.vacant_entry();
            let source = Arc::new(Source {
                key: entry.key(),
                worker: worker.clone(),
                state: Mutex::new(Edges::default()),
            });
            // SAFETY: the fd is deleted from the poller in `Drop`, before
            // `io` (which owns it) is closed.
            unsafe {
                worker.poller.add(fd, source.key)?;
            }
            entry.insert(source.clone());
            source
        };
        Ok(Async {
            io: Some(io),
            source,
        })
    }

    fn get_ref(&self) -> &T {
        self.io.as_ref().expect("present until dropped")
    }

    /// Runs a non-blocking operation, waiting for readiness (`write` picks
    /// which) whenever it would block. `drained` tells from a result that
    /// the socket had no more to give (a short read or write): the next
    /// attempt then waits for an edge instead of making a system call
    /// that would only say `WouldBlock`.
    fn poll_io<R>(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        mut op: impl FnMut(&T) -> io::Result<R>,
        drained: impl Fn(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        loop {
            let seen = {
                let mut s = lock(&self.source.state);
                if !s.ready(write) {
                    s.park(cx, write);
                    return Poll::Pending;
                }
                s.edges(write)
            };
            match op(self.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut s = lock(&self.source.state);
                    if s.edges(write) != seen {
                        // An edge came after the attempt began: the socket
                        // may be ready again, and no later edge will say so.
                        continue;
                    }
                    s.set_ready(write, false);
                    s.park(cx, write);
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(r) => {
                    if drained(&r) {
                        // A stream socket that gave less than asked had
                        // nothing more at that moment; whatever comes later
                        // raises an edge.
                        let mut s = lock(&self.source.state);
                        if s.edges(write) == seen {
                            s.set_ready(write, false);
                        }
                    }
                    return Poll::Ready(Ok(r));
                }
                r => return Poll::Ready(r),
            }
        }
    }
}

impl<T: AsFd> Drop for Async<T> {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            let worker = &self.source.worker;
            let _ = worker.poller.delete(io.as_fd());
            let mut sources = lock(&worker.sources);
            if sources
                .get(self.source.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.source))
            {
                sources.remove(self.source.key);
            }
            drop(sources);
            drop(io);
        }
    }
}

impl<T: AsFd> AsFd for Async<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.get_ref().as_fd()
    }
}

/// A TCP connection on a runtime thread.
pub type TcpStream = Async<std::net::TcpStream>;

impl TcpStream {
    /// Takes over an accepted or connected std socket; it is served by the
    /// runtime thread this runs on.
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        s.set_nonblocking(true)?;
        Async::register(s)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().peer_addr()
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.get_ref().set_nodelay(on)
    }

    /// The descriptor a blocked connection lends its mailbox
    /// (`engine::mailbox`, "Answering a blocked connection from the
    /// releasing thread"); `None` where [`send_now`] is not supported.
    pub fn lendable(&self) -> Option<crate::engine::mailbox::RawSocket> {
        #[cfg(unix)]
        {
            Some(self.get_ref().as_raw_fd())
        }
        #[cfg(not(unix))]
        {
            None
        }
    }
}

/// Writes what the socket `fd` takes of `buf` at once, from any thread,
/// without blocking and without `SIGPIPE`: the bytes written, or the
/// error (`WouldBlock` when it took none). The caller guarantees that `fd`
/// stays open for the call and that nobody else writes to it meanwhile
/// (see `engine::mailbox`). The owner's readiness state is not touched: a
/// write that filled the socket only makes the owner's next attempt meet
/// `WouldBlock` and wait for an edge, as it would anyway.
pub fn send_now(fd: crate::engine::mailbox::RawSocket, buf: &[u8]) -> io::Result<usize> {
    #[cfg(unix)]
    {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let flags = libc::MSG_DONTWAIT;
        // SAFETY: `buf` is valid for `buf.len()` bytes; `fd` is open (the
        // caller's guarantee). A closed or foreign descriptor would only
        // fail the call.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (fd, buf);
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let len = buf.len();
        self.poll_io(cx, false, |mut s| s.read(buf), |&n| n > 0 && n < len)
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let len = buf.len();
        self.poll_io(cx, true, |mut s| s.write(buf), |&n| n < len)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        self.poll_io(cx, true, |mut s| s.write_vectored(bufs), |&n| n < len)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

/// A TCP listener on a runtime thread.
pub type TcpListener = Async<std::net::TcpListener>;

impl TcpListener {
    /// Takes over a bound, listening std socket; its accepts wake the
    /// runtime thread this runs on.
    pub fn from_std(l: std::net::TcpListener) -> io::Result<TcpListener> {
        l.set_nonblocking(true)?;
        Async::register(l)
    }

    /// Accepts a connection, as a std socket (blocking mode untouched): it
    /// becomes a [`TcpStream`] on whichever thread will serve it.
    pub async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_io(cx, false, |l| l.accept(), |_| false)).await
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().local_addr()
    }
}
