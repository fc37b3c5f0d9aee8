//! [`Subscriber`]: a connection that receives signals (protocol §9).
//!
//! A subscriber has a connection of its own. A background reader task (on
//! smol's global executor) reads every line the server sends: pushed
//! `sig <channel> <payload>` lines go to a local buffer of
//! [`SIGNAL_BUFFER`] signals that [`Subscriber::next`] takes from (a signal
//! arriving while the buffer is full is dropped and counted in
//! [`Subscriber::dropped`]); every other line is the reply to the oldest
//! unanswered command (`listen`, `unlisten`, `auth`, `ping`). A heartbeat
//! `ping` every [`HEARTBEAT`] keeps servers that cut idle connections
//! (upstream v1) from closing a quiet subscriber.
//!
//! Dropping the subscriber stops both tasks and closes the connection.
//!
//! ```
//! # let server = dflockd::server::spawn(dflockd::server::ServerConfig {
//! #     listen: "127.0.0.1:0".into(), threads: 1, ..Default::default()
//! # }).unwrap();
//! # let addr = server.local_addr().to_string();
//! use dflockd::client::{Connection, Error, Subscriber};
//!
//! smol::block_on(async {
//!     let sub = Subscriber::connect(&addr, None, None).await?;
//!     sub.listen("jobs.*", None).await?;
//!     let mut publisher = Connection::connect(&addr).await?;
//!     assert_eq!(publisher.publish("jobs.done", b"42").await?, 1);
//!     let signal = sub.next().await?;
//!     assert_eq!(signal.channel, b"jobs.done");
//!     assert_eq!(signal.payload, b"42");
//!     // `>` may only end a pattern: the server refuses it.
//!     assert!(matches!(sub.listen("a.>.b", None).await, Err(Error::Server)));
//!     Ok::<(), Error>(())
//! })
//! .unwrap();
//! ```

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use smol::channel::{Receiver, Sender, TrySendError};
use smol::lock::Mutex;

use super::conn::{key_of, unexpected};
use super::tls::{Stream, TlsOptions};
use super::{Error, Result};
use crate::wire::{decode_reply, encode_request, Reply, ReplyDecoded, Request, Status};

/// How often an idle subscriber sends `ping` (upstream clients' 15 s).
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// How many received signals a subscriber buffers before dropping.
pub const SIGNAL_BUFFER: usize = 64;

/// One received signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    pub channel: Vec<u8>,
    pub payload: Vec<u8>,
}

/// A subscription connection: `listen` on it, then read [`Signal`]s with
/// `next`. It answers its own heartbeats and buffers up to
/// [`SIGNAL_BUFFER`](crate::client::SIGNAL_BUFFER) signals.
pub struct Subscriber {
    shared: Arc<Shared>,
    signals: Receiver<Signal>,
    _reader: smol::Task<()>,
    _heartbeat: Option<smol::Task<()>>,
}

struct Shared {
    commands: Mutex<Commands>,
    dropped: AtomicU64,
    /// Why the reader stopped, once it has.
    closed: std::sync::Mutex<Option<(io::ErrorKind, String)>>,
}

impl Shared {
    fn closed_error(&self) -> Error {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        let (kind, msg) = closed.clone().unwrap_or((
            io::ErrorKind::UnexpectedEof,
            "the subscriber connection is closed".into(),
        ));
        Error::Io(io::Error::new(kind, msg))
    }
}

/// The write side, and the replies the reader routes to it. Held locked
/// for a whole command, so replies pair with requests in order.
struct Commands {
    writer: WriteHalf<Stream>,
    replies: Receiver<Result<Reply>>,
    out: Vec<u8>,
    /// Replies still owed to commands whose futures were dropped while
    /// waiting; discarded before the next command's reply.
    owed: usize,
    /// A command was dropped while writing: the stream may hold half a
    /// request and is unusable.
    broken: bool,
}

impl Commands {
    async fn call(&mut self, req: &Request, shared: &Shared) -> Result<Reply> {
        if self.broken {
            return Err(Error::Io(io::Error::other(
                "subscriber unusable: an earlier command was cancelled while being sent",
            )));
        }
        while self.owed > 0 {
            match self.replies.recv().await {
                Ok(_) => self.owed -= 1,
                Err(_) => return Err(shared.closed_error()),
            }
        }
        self.out.clear();
        encode_request(req, &mut self.out);
        self.broken = true;
        self.writer.write_all(&self.out).await?;
        self.writer.flush().await?;
        self.broken = false;
        self.owed = 1;
        match self.replies.recv().await {
            Ok(reply) => {
                self.owed = 0;
                reply
            }
            Err(_) => Err(shared.closed_error()),
        }
    }
}

impl Subscriber {
    /// Connects to `addr` (TLS when `tls` is set), authenticates with
    /// `auth_token` if given, and pings every [`HEARTBEAT`].
    pub async fn connect(
        addr: &str,
        tls: Option<&TlsOptions>,
        auth_token: Option<&str>,
    ) -> Result<Subscriber> {
        Subscriber::connect_with_heartbeat(addr, tls, auth_token, Some(HEARTBEAT)).await
    }

    /// [`Subscriber::connect`] with another heartbeat interval; `None` (or
    /// zero) sends no heartbeat.
    pub async fn connect_with_heartbeat(
        addr: &str,
        tls: Option<&TlsOptions>,
        auth_token: Option<&str>,
        heartbeat: Option<Duration>,
    ) -> Result<Subscriber> {
        if auth_token.is_some_and(|t| t.contains(['\n', '\r'])) {
            return Err(Error::Invalid("auth token contains a line break".into()));
        }
        let stream = Stream::connect(addr, tls).await?;
        let (reader, writer) = futures_lite::io::split(stream);
        let (reply_tx, replies) = smol::channel::unbounded();
        let (signal_tx, signals) = smol::channel::bounded(SIGNAL_BUFFER);
        let shared = Arc::new(Shared {
            commands: Mutex::new(Commands {
                writer,
                replies,
                out: Vec::new(),
                owed: 0,
                broken: false,
            }),
            dropped: AtomicU64::new(0),
            closed: std::sync::Mutex::new(None),
        });
        let reader = smol::spawn(read_loop(reader, reply_tx, signal_tx, shared.clone()));
        let mut sub = Subscriber {
            shared,
            signals,
            _reader: reader,
            _heartbeat: None,
        };
        if let Some(token) = auth_token {
            let reply = sub
                .request(&Request::Auth {
                    token: token.as_bytes().into(),
                })
                .await?;
            match reply {
                Reply::Ok => {}
                Reply::Status(Status::ErrorDraining) => return Err(Error::Draining),
                _ => return Err(Error::Auth),
            }
        }
        if let Some(every) = heartbeat.filter(|d| !d.is_zero()) {
            sub._heartbeat = Some(smol::spawn(heartbeat_loop(sub.shared.clone(), every)));
        }
        Ok(sub)
    }

    async fn request(&self, req: &Request) -> Result<Reply> {
        let mut commands = self.shared.commands.lock().await;
        commands.call(req, &self.shared).await
    }

    /// `listen`: subscribes to `pattern` (`*` matches one token, a final
    /// `>` one or more), alone or as a member of `group` (members take
    /// turns). An invalid pattern, or one past the server's subscription
    /// cap, is [`Error::Server`].
    pub async fn listen(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        let req = Request::Listen {
            pattern: key_of(pattern)?,
            group: group_of(group)?,
        };
        expect_ok(self.request(&req).await?)
    }

    /// `unlisten`: ends the subscription to (`pattern`, `group`); `ok` even
    /// if there was none.
    pub async fn unlisten(&self, pattern: &str, group: Option<&str>) -> Result<()> {
        let req = Request::Unlisten {
            pattern: key_of(pattern)?,
            group: group_of(group)?,
        };
        expect_ok(self.request(&req).await?)
    }

    /// `ping` (the heartbeat also sends these).
    pub async fn ping(&self) -> Result<()> {
        expect_ok(self.request(&Request::Ping).await?)
    }

    /// The next signal, waiting for one. Signals buffered before the
    /// connection ended are still returned; after them, the connection's
    /// end is an [`Error::Io`]. Cancel-safe.
    pub async fn next(&self) -> Result<Signal> {
        self.signals
            .recv()
            .await
            .map_err(|_| self.shared.closed_error())
    }

    /// A buffered signal, if there is one, without waiting.
    pub fn try_next(&self) -> Option<Signal> {
        self.signals.try_recv().ok()
    }

    /// How many signals arrived while the local buffer was full and were
    /// dropped.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Whether the connection has ended (the server closed it or it failed).
    pub fn is_closed(&self) -> bool {
        self.shared
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Closes the connection; its subscriptions end with it.
    pub async fn close(self) -> Result<()> {
        let mut commands = self.shared.commands.lock().await;
        commands.writer.close().await?;
        Ok(())
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("buffered", &self.signals.len())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

fn group_of(group: Option<&str>) -> Result<Option<Box<[u8]>>> {
    match group {
        None => Ok(None),
        Some(g) if g.trim().is_empty() || g.contains(['\n', '\r']) => {
            Err(Error::Invalid(format!("group {g:?}")))
        }
        Some(g) => Ok(Some(g.as_bytes().into())),
    }
}

fn expect_ok(reply: Reply) -> Result<()> {
    match reply {
        Reply::Ok => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// Reads lines until the stream ends: pushes to `signals` (dropping and
/// counting when full), everything else to `replies`.
async fn read_loop(
    mut reader: ReadHalf<Stream>,
    replies: Sender<Result<Reply>>,
    signals: Sender<Signal>,
    shared: Arc<Shared>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let end = loop {
        match decode_reply(&buf) {
            ReplyDecoded::Push {
                channel,
                payload,
                consumed,
            } => {
                buf.drain(..consumed);
                match signals.try_send(Signal { channel, payload }) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Closed(_)) => {
                        break (io::ErrorKind::Other, "the subscriber was dropped".into())
                    }
                }
            }
            ReplyDecoded::Reply { reply, consumed } => {
                buf.drain(..consumed);
                let _ = replies.send(Ok(reply)).await;
            }
            ReplyDecoded::Invalid { consumed } => {
                let whole_line = buf[..consumed].ends_with(b"\n");
                let line = String::from_utf8_lossy(&buf[..consumed])
                    .trim_end()
                    .to_string();
                buf.drain(..consumed);
                if !whole_line {
                    break (
                        io::ErrorKind::InvalidData,
                        "the server sent an overlong line".into(),
                    );
                }
                let _ = replies.send(Err(Error::Protocol(line))).await;
            }
            ReplyDecoded::NeedMore => match reader.read(&mut chunk).await {
                Ok(0) => {
                    break (
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection".into(),
                    )
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => break (e.kind(), e.to_string()),
            },
        }
    };
    *shared.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(end);
    // Dropping the senders wakes `next` and any waiting command.
}

async fn heartbeat_loop(shared: Arc<Shared>, every: Duration) {
    loop {
        async_io::Timer::after(every).await;
        let mut commands = shared.commands.lock().await;
        if commands.call(&Request::Ping, &shared).await.is_err() {
            return;
        }
    }
}
