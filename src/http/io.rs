//! The byte stream under hyper: a futures-io stream (the socket, TLS, the
//! write deadline and [`super::lenient`]) seen as hyper's `Read`/`Write`.
//!
//! Why not smol-hyper's `FuturesIo`: a futures-io read needs an
//! initialized `&mut [u8]`, and that adapter zeroes all of hyper's unused
//! read buffer (8 KiB and up) before every read, which measured as the
//! largest single cost of an HTTP request in the server's profile. Here at
//! most [`READ_WINDOW`] bytes are zeroed and offered per read; a lock
//! request's head and body are far smaller, and a larger body only takes
//! more reads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// Bytes offered to one read.
const READ_WINDOW: usize = 4096;

/// A futures-io stream as hyper's I/O.
pub struct HyperIo<T>(pub T);

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the first `len` bytes of the cursor's spare capacity are
        // initialized (zeroed) before a slice of them is made, and `advance`
        // covers only the `n ≤ len` bytes the read reported filled.
        unsafe {
            let spare = buf.as_mut();
            let len = spare.len().min(READ_WINDOW);
            spare.as_mut_ptr().write_bytes(0, len);
            let slice = std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), len);
            match Pin::new(&mut self.get_mut().0).poll_read(cx, slice) {
                Poll::Ready(Ok(n)) => {
                    buf.advance(n.min(len));
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}
