//! The connection handler driven by hand: an in-memory stream and polls
//! one at a time, so that a delivery to the mailbox and bytes on the socket
//! can be made ready for the same poll (the race the simulator found at
//! seeds 45, 135 and 159: the read was taken first and the connection's
//! own lines went out before pushes the core had routed to it earlier).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};

use super::conn::{serve_stream, Timeouts};
use crate::core::{CoreConfig, Time};
use crate::engine::mailbox::Mailbox;
use crate::engine::{Engine, Input, ManualClock, Transport};
use crate::sync::Arc;
use crate::wire::{decode_request, Decoded};

#[derive(Default)]
struct Wire {
    inp: VecDeque<u8>,
    out: Vec<u8>,
    closed: bool,
}

/// The server's end of an in-memory connection; reads wait (`Pending`)
/// until the test gives bytes and polls again.
struct Mem(Rc<RefCell<Wire>>);

impl AsyncRead for Mem {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut w = self.0.borrow_mut();
        if w.inp.is_empty() {
            return if w.closed {
                Poll::Ready(Ok(0))
            } else {
                Poll::Pending
            };
        }
        let n = w.inp.len().min(buf.len());
        for (i, b) in w.inp.drain(..n).enumerate() {
            buf[i] = b;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Mem {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.borrow_mut().out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn request(text: &str) -> Input {
    match decode_request(text.as_bytes()) {
        Decoded::Request { req, .. } => Input::Request(req),
        other => panic!("{text:?} does not decode: {other:?}"),
    }
}

/// Runs `serve_stream` one poll at a time.
struct Conn<'e> {
    wire: Rc<RefCell<Wire>>,
    fut: Pin<Box<dyn Future<Output = ()> + 'e>>,
    done: bool,
}

impl<'e> Conn<'e> {
    fn open(engine: &'e Engine) -> Conn<'e> {
        let wire = Rc::new(RefCell::new(Wire::default()));
        let timeouts = Timeouts {
            read: Duration::from_secs(3600),
            write: Some(Duration::from_secs(3600)),
        };
        let fut = Box::pin(serve_stream(
            engine,
            timeouts,
            Mem(wire.clone()),
            None,
            None,
        ));
        let mut c = Conn {
            wire,
            fut,
            done: false,
        };
        c.poll();
        c
    }

    fn poll(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        // Polled until it waits: one poll may end at a batch boundary.
        for _ in 0..16 {
            if self.done {
                return;
            }
            self.done = self.fut.as_mut().poll(&mut cx).is_ready();
        }
    }

    fn send(&self, bytes: &[u8]) {
        self.wire.borrow_mut().inp.extend(bytes);
    }

    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut self.wire.borrow_mut().out)).expect("utf-8")
    }
}

fn engine() -> Engine {
    let clock = Arc::new(ManualClock::new(Time(1_000)));
    Engine::new(CoreConfig::default(), None, Box::new(clock))
}

/// A push routed to a subscriber by another connection's signal is
/// written before the answers to requests the subscriber sent after it,
/// even when both are ready at the same poll (protocol §9.3: per
/// subscriber, pushes in the order the signals were processed).
#[test]
fn pushes_waiting_in_the_mailbox_go_before_the_connections_own_lines() {
    let e = engine();
    let mut x = Conn::open(&e);
    x.send(b"listen\nch.1\n\n");
    x.poll();
    assert_eq!(x.take(), "ok\n");
    let y = e.connect(Transport::Tcp, Some(Arc::new(Mailbox::new())));
    let (fx, _) = e.apply(y, request("signal\nch.1\np1\n"));
    assert_eq!(fx.len(), 1, "{fx:?}");
    // The subscriber's own signal arrives before it has run again.
    x.send(b"signal\nch.1\np2\n");
    x.poll();
    assert_eq!(x.take(), "sig ch.1 p1\nsig ch.1 p2\nok 1\n");
}

/// A close by the core (an overlong line) still writes the pushes routed
/// to the connection before it (`Effect::Close`'s promise), then `error`.
#[test]
fn a_core_close_writes_the_pushes_waiting_before_it() {
    let e = engine();
    let mut x = Conn::open(&e);
    x.send(b"listen\nch.1\n\n");
    x.poll();
    assert_eq!(x.take(), "ok\n");
    let y = e.connect(Transport::Tcp, Some(Arc::new(Mailbox::new())));
    e.apply(y, request("signal\nch.1\np1\n"));
    let mut overlong = b"l\n".to_vec();
    overlong.extend(std::iter::repeat_n(b'k', 70_000));
    x.send(&overlong);
    x.poll();
    assert!(x.done, "the connection closed");
    assert_eq!(x.take(), "sig ch.1 p1\nerror\n");
}
