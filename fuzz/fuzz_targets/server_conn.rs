//! The real per-connection handler (`tcp::conn::serve_stream`) fed
//! arbitrary bytes over an in-memory stream, in arbitrary chunks, on two
//! connections that share one lock manager. After both streams end, the
//! server must hold nothing for them: no connections, no holders (with
//! auto-release), no waiters. And it must never panic.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use arbitrary::Arbitrary;
use dflockd::core::{CoreConfig, Effect};
use dflockd::engine::{Engine, Input, MonotonicClock, Transport};
use dflockd::server::ServerConfig;
use dflockd::tcp::conn::{serve_stream, Timeouts};
use dflockd::wire::{Reply, Request};
use futures_lite::{AsyncRead, AsyncWrite};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Case {
    /// Chunks of client bytes for connection A and B.
    a: Vec<Vec<u8>>,
    b: Vec<Vec<u8>>,
    max_waiters: u8,
    max_locks: u8,
    auth: bool,
}

/// Reads the chunks one at a time, then EOF; swallows writes.
struct MemStream {
    chunks: std::vec::IntoIter<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    written: usize,
}

impl AsyncRead for MemStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.pos < self.current.len() {
                let n = buf.len().min(self.current.len() - self.pos);
                let start = self.pos;
                buf[..n].copy_from_slice(&self.current[start..start + n]);
                self.pos += n;
                return Poll::Ready(Ok(n));
            }
            match self.chunks.next() {
                Some(c) => {
                    self.current = c;
                    self.pos = 0;
                }
                None => return Poll::Ready(Ok(0)),
            }
        }
    }
}

impl AsyncWrite for MemStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn stream(chunks: Vec<Vec<u8>>) -> MemStream {
    MemStream {
        chunks: chunks.into_iter().take(64).collect::<Vec<_>>().into_iter(),
        current: Vec::new(),
        pos: 0,
        written: 0,
    }
}

fuzz_target!(|input: Case| {
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".into(),
        core: CoreConfig {
            max_waiters: usize::from(input.max_waiters % 4),
            max_locks: usize::from(input.max_locks % 8) + 1,
            auth_token: input.auth.then(|| b"secret".to_vec()),
            auth_failure_pause_ms: 0,
            ..CoreConfig::default()
        },
        ..ServerConfig::default()
    };
    let engine = Engine::new(cfg.core.clone(), None, Box::new(MonotonicClock::new()));
    let timeouts = Timeouts::of(&cfg);
    let a = serve_stream(&engine, timeouts, stream(input.a), None, None);
    let b = serve_stream(&engine, timeouts, stream(input.b), None, None);
    smol::block_on(futures_lite::future::zip(a, b));

    assert_eq!(engine.connection_count(), 0, "a connection leaked");
    let id = engine.connect(Transport::Tcp, None);
    // A fresh connection may need to authenticate first.
    engine.apply(
        id,
        Input::Request(Request::Auth {
            token: b"secret".to_vec().into(),
        }),
    );
    let (out, _) = engine.apply(id, Input::Request(Request::Stats));
    let json = out
        .iter()
        .find_map(|e| match e {
            Effect::Reply {
                reply: Reply::Stats(j),
                ..
            } => Some(j.clone()),
            _ => None,
        })
        .expect("stats reply");
    let v: serde_json::Value = serde_json::from_str(&json).expect("stats is JSON");
    for l in v["locks"].as_array().unwrap() {
        panic!("stray lock after every connection left: {l}");
    }
    for s in v["semaphores"].as_array().unwrap() {
        panic!("stray semaphore after every connection left: {s}");
    }
});
