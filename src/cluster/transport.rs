//! The member transport: Raft messages between members over TCP on
//! `--raft-addr`, authenticated and size-capped (spec/cluster.md §2.3).
//!
//! Connections are one-way. Member A dials member B to send A's messages
//! to B; B answers on its own connection to A. So a connection has one
//! writer and one reader, and a peer's address is needed only to send.
//!
//! On a connection, in order:
//! 1. TLS, when `--raft-tls-*` is set: mutual, both sides presenting a
//!    certificate the shared CA signed (rustls, ring provider).
//! 2. The hello frame, dialer to acceptor: magic `DFLKRAFT`, version,
//!    sender id, receiver id, and the `--raft-auth-token` when one is set,
//!    compared in constant time. Nothing else is parsed before it passes.
//!    The acceptor answers `OK` and from then on only reads.
//! 3. Message frames: a 4-byte big-endian length, then a kind byte, a
//!    protobuf `eraftpb::Message` and the xxh3-64 checksum of both (8
//!    bytes, big-endian): a frame garbled on the way (plain TCP's own
//!    checksum is 16 bits) is refused before it is parsed, instead of
//!    reaching raft-rs, which trusts members and panics on an impossible
//!    commit index. A frame longer than the frame limit
//!    (4 MiB) is refused before it is read. A message that does not fit (a
//!    snapshot) travels in parts of at most the frame limit, reassembled
//!    up to the snapshot limit and parsed once complete; only `MsgSnapshot`
//!    may be sent in parts.
//!
//! The acceptor then checks each message: its `from` must be the id the
//! hello claimed, its `to` this member, and its type one that members send
//! each other ([`is_peer_message`]); local types, proposals and read-index
//! requests are dropped with the connection (members never forward
//! proposals). Anything malformed closes the connection; a rate-limited
//! log line says why, never with message contents.
//!
//! Sending never blocks the replica: each peer has a bounded queue and a
//! task that dials, handshakes, writes, and on failure drops what it was
//! sending, reports the peer unreachable and dials again with exponential
//! backoff. A full queue drops the message (Raft retransmits).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt as _};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::logging::{allow, Cause};

/// Frames are never larger than this (spec/cluster.md §2.3).
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// The hello frame's cap: magic, version, two ids, a token.
const MAX_HELLO_BYTES: usize = 8 + 1 + 8 + 8 + 2 + MAX_TOKEN_BYTES;
/// The longest member token (the auth line cap of the client protocol).
pub const MAX_TOKEN_BYTES: usize = 65_535;
/// The shortest member token (upstream's rule, spec/cluster.md §9).
pub const MIN_TOKEN_BYTES: usize = 32;
const MAGIC: &[u8; 8] = b"DFLKRAFT";
/// 2: message frames end with a checksum.
const VERSION: u8 = 2;
const ACCEPTED: &[u8; 2] = b"OK";

/// The checksum that ends a message frame ([`checksum`]).
const CHECKSUM_BYTES: usize = 8;

/// Frame kinds.
const WHOLE: u8 = 0;
const PART: u8 = 1;
const LAST_PART: u8 = 2;

/// How members prove to each other that they are members.
#[derive(Clone, Default)]
pub struct MemberAuth {
    /// The shared token (`--raft-auth-token[-file]`), at least 32 bytes.
    pub token: Option<Arc<[u8]>>,
    /// Mutual TLS (`--raft-tls-*`).
    pub tls: Option<MemberTls>,
}

impl fmt::Debug for MemberAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberAuth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The rustls configurations of mutual TLS between members.
#[derive(Clone)]
pub struct MemberTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

/// Settings of one member's transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub node_id: u64,
    pub auth: MemberAuth,
    /// Largest frame read or written.
    pub max_frame_bytes: usize,
    /// Largest message reassembled from parts (a snapshot).
    pub max_message_bytes: usize,
    /// Messages queued per peer before new ones are dropped.
    pub send_queue: usize,
    /// Time allowed for connecting plus the handshake.
    pub handshake_timeout: Duration,
    /// First and largest pause between dials of an unreachable peer.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Inbound connections at once, handshaking or established.
    pub max_inbound: usize,
}

impl TransportConfig {
    pub fn new(node_id: u64, auth: MemberAuth) -> TransportConfig {
        TransportConfig {
            node_id,
            auth,
            max_frame_bytes: MAX_FRAME_BYTES,
            max_message_bytes: 256 << 20,
            send_queue: 4096,
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_inbound: 64,
        }
    }
}

/// What the transport tells the replica about sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// Sending to this member failed; Raft should probe it.
    Unreachable(u64),
    /// A snapshot message to this member was written whole (`true`) or
    /// lost (`false`).
    SnapshotSent(u64, bool),
}

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Dropped because a peer's queue was full or its address unknown.
    pub dropped_send: AtomicU64,
    /// Dropped because the replica's inbox was full.
    pub dropped_receive: AtomicU64,
    /// Inbound connections closed for a failed handshake.
    pub refused_handshakes: AtomicU64,
    /// Inbound connections closed for a bad frame or message.
    pub refused_messages: AtomicU64,
    pub connects: AtomicU64,
}

/// A running transport. Dropping it stops its tasks.
pub struct Transport {
    cfg: Arc<TransportConfig>,
    ex: Arc<smol::Executor<'static>>,
    local_addr: SocketAddr,
    peers: HashMap<u64, PeerSender>,
    events: smol::channel::Sender<TransportEvent>,
    stats: Arc<TransportStats>,
    _accept: smol::Task<()>,
}

struct PeerSender {
    addr: String,
    queue: smol::channel::Sender<Message>,
    _task: smol::Task<()>,
}

impl Transport {
    /// Binds `listen` and starts accepting members on `ex`. Messages that
    /// pass every check go to `inbox` (dropped when it is full); send
    /// failures are reported on `events`.
    pub fn start(
        cfg: TransportConfig,
        listen: &str,
        ex: Arc<smol::Executor<'static>>,
        inbox: smol::channel::Sender<Message>,
        events: smol::channel::Sender<TransportEvent>,
    ) -> io::Result<Transport> {
        let listener = smol::block_on(async_net::TcpListener::bind(listen))?;
        let local_addr = listener.local_addr()?;
        let cfg = Arc::new(cfg);
        let stats = Arc::new(TransportStats::default());
        let accept = ex.spawn(accept_loop(
            listener,
            cfg.clone(),
            ex.clone(),
            inbox,
            stats.clone(),
        ));
        Ok(Transport {
            cfg,
            ex,
            local_addr,
            peers: HashMap::new(),
            events,
            stats,
            _accept: accept,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &Arc<TransportStats> {
        &self.stats
    }

    /// Sets (or changes) where member `id` listens. Its queue starts empty.
    pub fn set_peer(&mut self, id: u64, addr: &str) {
        if id == self.cfg.node_id {
            return;
        }
        if self.peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        let (tx, rx) = smol::channel::bounded(self.cfg.send_queue.max(1));
        let task = self.ex.spawn(send_loop(
            id,
            addr.to_owned(),
            self.cfg.clone(),
            rx,
            self.events.clone(),
            self.stats.clone(),
        ));
        self.peers.insert(
            id,
            PeerSender {
                addr: addr.to_owned(),
                queue: tx,
                _task: task,
            },
        );
    }

    /// Forgets member `id`: its queue and connection are dropped.
    pub fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    /// Queues `msg` for its `to` member. Never blocks: a full queue or an
    /// unknown member drops it.
    pub fn send(&self, msg: Message) {
        match self.peers.get(&msg.to) {
            Some(p) => {
                if p.queue.try_send(msg).is_err() {
                    self.stats.dropped_send.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.stats.dropped_send.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The message types members send each other. Everything else from the
/// network is refused: local types (`raft::is_local_msg`), proposals,
/// read-index and leader-transfer requests (spec/cluster.md §2.3).
pub fn is_peer_message(t: MessageType) -> bool {
    use MessageType::*;
    matches!(
        t,
        MsgAppend
            | MsgAppendResponse
            | MsgRequestVote
            | MsgRequestVoteResponse
            | MsgRequestPreVote
            | MsgRequestPreVoteResponse
            | MsgSnapshot
            | MsgHeartbeat
            | MsgHeartbeatResponse
            | MsgTimeoutNow
    )
}

/// Why an inbound connection was closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The hello frame was not one (magic, version, length).
    BadHello,
    /// The token is missing or wrong.
    BadToken,
    /// The hello names another member as the receiver, or id 0, or ours.
    WrongIds,
    /// A frame over the limit.
    FrameTooLarge(usize),
    /// A message over the reassembly limit.
    MessageTooLarge,
    /// An unknown frame kind, a frame too short to hold its checksum, or
    /// parts of something other than a snapshot.
    BadFrame,
    /// A message frame whose checksum does not match its bytes.
    BadChecksum,
    /// The bytes are not a Raft message.
    Undecodable,
    /// `from` is not the member that said hello, or `to` is not us.
    Spoofed,
    /// A message type members do not send each other.
    NotPeerType(MessageType),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BadHello => f.write_str("bad hello"),
            Refusal::BadToken => f.write_str("wrong or missing member token"),
            Refusal::WrongIds => f.write_str("hello with wrong member ids"),
            Refusal::FrameTooLarge(n) => write!(f, "frame of {n} bytes over the limit"),
            Refusal::MessageTooLarge => f.write_str("message over the reassembly limit"),
            Refusal::BadFrame => f.write_str("bad frame kind or length"),
            Refusal::BadChecksum => f.write_str("frame checksum mismatch"),
            Refusal::Undecodable => f.write_str("not a Raft message"),
            Refusal::Spoofed => f.write_str("message ids do not match the connection"),
            Refusal::NotPeerType(t) => write!(f, "message type {t:?} is not sent by members"),
        }
    }
}

/// Constant-time equality: the time taken depends on the lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the compiler from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// The hello frame's payload.
pub fn encode_hello(from: u64, to: u64, token: Option<&[u8]>) -> Vec<u8> {
    let token = token.unwrap_or_default();
    let mut b = Vec::with_capacity(27 + token.len());
    b.extend_from_slice(MAGIC);
    b.push(VERSION);
    b.extend_from_slice(&from.to_be_bytes());
    b.extend_from_slice(&to.to_be_bytes());
    b.extend_from_slice(&(token.len().min(MAX_TOKEN_BYTES) as u16).to_be_bytes());
    b.extend_from_slice(&token[..token.len().min(MAX_TOKEN_BYTES)]);
    b
}

/// Checks a hello payload against this member's id and token; returns the
/// sender's id.
pub fn check_hello(payload: &[u8], me: u64, token: Option<&[u8]>) -> Result<u64, Refusal> {
    if payload.len() < 27 || &payload[..8] != MAGIC || payload[8] != VERSION {
        return Err(Refusal::BadHello);
    }
    let from = u64::from_be_bytes(payload[9..17].try_into().expect("8 bytes"));
    let to = u64::from_be_bytes(payload[17..25].try_into().expect("8 bytes"));
    let len = u16::from_be_bytes(payload[25..27].try_into().expect("2 bytes")) as usize;
    let given = &payload[27..];
    if given.len() != len {
        return Err(Refusal::BadHello);
    }
    if let Some(token) = token {
        if !constant_time_eq(given, token) {
            return Err(Refusal::BadToken);
        }
    }
    if from == 0 || from == me || to != me {
        return Err(Refusal::WrongIds);
    }
    Ok(from)
}

/// Checks one decoded message against the connection it came on.
pub fn check_message(msg: &Message, from: u64, me: u64) -> Result<(), Refusal> {
    if msg.from != from || msg.to != me {
        return Err(Refusal::Spoofed);
    }
    let t = msg.get_msg_type();
    if !is_peer_message(t) || raft::raw_node::is_local_msg(t) {
        return Err(Refusal::NotPeerType(t));
    }
    Ok(())
}

/// The checksum a message frame of `kind` carrying `payload` ends with:
/// xxh3-64 of the payload, seeded with the kind, big-endian.
fn checksum(kind: u8, payload: &[u8]) -> [u8; CHECKSUM_BYTES] {
    xxhash_rust::xxh3::xxh3_64_with_seed(payload, u64::from(kind)).to_be_bytes()
}

/// Writes a frame: the hello (`kind` `None`: length and payload) or a
/// message frame (length, kind, payload, checksum).
async fn write_frame<W: futures_lite::AsyncWrite + Unpin>(
    w: &mut W,
    kind: Option<u8>,
    payload: &[u8],
) -> io::Result<()> {
    // Message frames go through a `BufWriter` (the sender's connection),
    // where four small writes cost no more system calls than one; no
    // vector is made per frame. The hello, on the bare stream, is two
    // writes, as before.
    let len = payload.len() + kind.map_or(0, |_| 1 + CHECKSUM_BYTES);
    w.write_all(&(len as u32).to_be_bytes()).await?;
    match kind {
        Some(kind) => {
            w.write_all(&[kind]).await?;
            w.write_all(payload).await?;
            w.write_all(&checksum(kind, payload)).await
        }
        None => w.write_all(payload).await,
    }
}

/// Reads one frame of at most `max` bytes. `Ok(None)` at a clean end of
/// stream before a frame starts.
async fn read_frame<R: futures_lite::AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut head[got..]).await.map_err(FrameError::Io)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()))
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > max {
        return Err(FrameError::Refused(Refusal::FrameTooLarge(len)));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(FrameError::Io)?;
    Ok(Some(body))
}

enum FrameError {
    Io(io::Error),
    Refused(Refusal),
}

/// Splits an encoded message into frame payloads, each with its kind;
/// a frame of one (kind, checksum and payload) fits in `max_frame`.
pub fn split_message(bytes: &[u8], max_frame: usize) -> Vec<(u8, &[u8])> {
    let room = max_frame.saturating_sub(1 + CHECKSUM_BYTES).max(1);
    if bytes.len() <= room {
        return vec![(WHOLE, bytes)];
    }
    let n = bytes.len().div_ceil(room);
    bytes
        .chunks(room)
        .enumerate()
        .map(|(i, c)| (if i + 1 == n { LAST_PART } else { PART }, c))
        .collect()
}

/// A message frame as [`Reassembly::push`] takes it (kind, payload,
/// checksum): for tests that build frames by hand.
#[cfg(test)]
pub(crate) fn seal(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1 + payload.len() + CHECKSUM_BYTES);
    frame.push(kind);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&checksum(kind, payload));
    frame
}

/// Reassembles frames into messages; one per connection.
pub struct Reassembly {
    buf: Vec<u8>,
    max_message: usize,
}

impl Reassembly {
    pub fn new(max_message: usize) -> Reassembly {
        Reassembly {
            buf: Vec::new(),
            max_message,
        }
    }

    /// Takes one frame (kind, payload, checksum: what follows the length);
    /// returns a complete message when there is one.
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<Message>, Refusal> {
        let (&kind, rest) = frame.split_first().ok_or(Refusal::BadFrame)?;
        let body_len = rest
            .len()
            .checked_sub(CHECKSUM_BYTES)
            .ok_or(Refusal::BadFrame)?;
        let (body, sum) = rest.split_at(body_len);
        if sum != checksum(kind, body) {
            return Err(Refusal::BadChecksum);
        }
        match kind {
            WHOLE if self.buf.is_empty() => Message::parse_from_bytes(body)
                .map(Some)
                .map_err(|_| Refusal::Undecodable),
            PART | LAST_PART => {
                if self.buf.len() + body.len() > self.max_message {
                    return Err(Refusal::MessageTooLarge);
                }
                self.buf.extend_from_slice(body);
                if kind == PART {
                    return Ok(None);
                }
                let whole = std::mem::take(&mut self.buf);
                let msg = Message::parse_from_bytes(&whole).map_err(|_| Refusal::Undecodable)?;
                if msg.get_msg_type() != MessageType::MsgSnapshot {
                    return Err(Refusal::BadFrame);
                }
                Ok(Some(msg))
            }
            _ => Err(Refusal::BadFrame),
        }
    }
}

async fn accept_loop(
    listener: async_net::TcpListener,
    cfg: Arc<TransportConfig>,
    ex: Arc<smol::Executor<'static>>,
    inbox: smol::channel::Sender<Message>,
    stats: Arc<TransportStats>,
) {
    // The newest connection of each member wins; older ones are dropped
    // (a member that reconnects does not hold two slots).
    let by_member: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    // The connections' tasks live here, so that dropping the transport
    // (and with it this loop) ends them too: a stopped member must not
    // keep reading its peers' connections into a closed inbox.
    let mut conns: Vec<smol::Task<()>> = Vec::new();
    let mut serial = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                if let Some(n) = allow(log::Level::Warn, Cause::Accept, None) {
                    log::warn!(error:% = e, suppressed = n; "raft port: accept failed");
                }
                smol::Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        conns.retain(|t| !t.is_finished());
        if conns.len() >= cfg.max_inbound {
            stats.refused_handshakes.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = stream.set_nodelay(true);
        serial += 1;
        let conn = Inbound {
            cfg: cfg.clone(),
            inbox: inbox.clone(),
            stats: stats.clone(),
            by_member: by_member.clone(),
            serial,
            peer,
        };
        conns.push(ex.spawn(conn.run(stream)));
    }
}

/// One inbound connection.
struct Inbound {
    cfg: Arc<TransportConfig>,
    inbox: smol::channel::Sender<Message>,
    stats: Arc<TransportStats>,
    by_member: Arc<Mutex<HashMap<u64, u64>>>,
    serial: u64,
    peer: SocketAddr,
}

impl Inbound {
    async fn run(self, stream: async_net::TcpStream) {
        let deadline = self.cfg.handshake_timeout;
        match self.cfg.auth.tls.clone() {
            Some(tls) => {
                let acceptor = futures_rustls::TlsAcceptor::from(tls.server);
                let accepted = acceptor
                    .accept(stream)
                    .or(async {
                        smol::Timer::after(deadline).await;
                        Err(io::ErrorKind::TimedOut.into())
                    })
                    .await;
                match accepted {
                    Ok(s) => self.serve(s).await,
                    Err(e) => self.refused(&format!("TLS handshake: {e}")),
                }
            }
            None => self.serve(stream).await,
        }
    }

    fn refused(&self, why: &str) {
        self.stats
            .refused_handshakes
            .fetch_add(1, Ordering::Relaxed);
        if let Some(n) = allow(
            log::Level::Warn,
            Cause::RaftPeerRefused,
            Some(self.peer.ip()),
        ) {
            log::warn!(peer:% = self.peer, reason = why, suppressed = n; "raft port: connection refused");
        }
    }

    async fn serve<S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin>(&self, mut s: S) {
        let me = self.cfg.node_id;
        let hello = read_frame(&mut s, MAX_HELLO_BYTES)
            .or(async {
                smol::Timer::after(self.cfg.handshake_timeout).await;
                Err(FrameError::Io(io::ErrorKind::TimedOut.into()))
            })
            .await;
        let from = match hello {
            Ok(Some(payload)) => match check_hello(&payload, me, self.cfg.auth.token.as_deref()) {
                Ok(from) => from,
                Err(r) => return self.refused(&r.to_string()),
            },
            Ok(None) => return self.refused("closed before hello"),
            Err(FrameError::Refused(r)) => return self.refused(&r.to_string()),
            Err(FrameError::Io(e)) => return self.refused(&format!("hello: {e}")),
        };
        if s.write_all(ACCEPTED).await.is_err() || s.flush().await.is_err() {
            return;
        }
        self.by_member
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(from, self.serial);
        let mut parts = Reassembly::new(self.cfg.max_message_bytes);
        // Buffered from here on: a frame's head and body, and the frames
        // that arrived together, in one read.
        let mut s = futures_lite::io::BufReader::with_capacity(IO_BUFFER, s);
        loop {
            let frame = match read_frame(&mut s, self.cfg.max_frame_bytes).await {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(FrameError::Io(_)) => return,
                Err(FrameError::Refused(r)) => return self.bad_message(r),
            };
            // A newer connection of the same member replaced this one.
            let current = self
                .by_member
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&from)
                .copied();
            if current != Some(self.serial) {
                return;
            }
            let msg = match parts.push(&frame) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(r) => return self.bad_message(r),
            };
            if let Err(r) = check_message(&msg, from, me) {
                return self.bad_message(r);
            }
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            match self.inbox.try_send(msg) {
                Ok(()) => {}
                Err(smol::channel::TrySendError::Full(_)) => {
                    self.stats.dropped_receive.fetch_add(1, Ordering::Relaxed);
                }
                // The replica is gone: so is this member.
                Err(smol::channel::TrySendError::Closed(_)) => return,
            }
        }
    }

    fn bad_message(&self, r: Refusal) {
        self.stats.refused_messages.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = allow(
            log::Level::Warn,
            Cause::RaftPeerRefused,
            Some(self.peer.ip()),
        ) {
            log::warn!(peer:% = self.peer, reason:% = r, suppressed = n; "raft port: connection closed");
        }
    }
}

/// Dials member `to` at `addr` and writes its queue, forever (until the
/// queue's sender is dropped).
async fn send_loop(
    to: u64,
    addr: String,
    cfg: Arc<TransportConfig>,
    queue: smol::channel::Receiver<Message>,
    events: smol::channel::Sender<TransportEvent>,
    stats: Arc<TransportStats>,
) {
    let mut backoff = cfg.backoff_min;
    loop {
        // Wait for something to send before dialing: an idle peer costs
        // no connection attempts.
        let Ok(first) = queue.recv().await else {
            return;
        };
        let dialed = dial(&addr, to, &cfg)
            .or(async {
                smol::Timer::after(cfg.handshake_timeout).await;
                Err(io::ErrorKind::TimedOut.into())
            })
            .await;
        let mut conn = match dialed {
            Ok(c) => c,
            Err(e) => {
                lost(&first, &events);
                // Whatever queued meanwhile is stale by the time the peer
                // is back; Raft sends afresh.
                while let Ok(m) = queue.try_recv() {
                    lost(&m, &events);
                }
                if let Some(n) = allow(log::Level::Warn, Cause::RaftPeerUnreachable, None) {
                    log::warn!(member = to, addr = addr.as_str(), error:% = e, suppressed = n;
                        "cannot reach member");
                }
                smol::Timer::after(backoff).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        backoff = cfg.backoff_min;
        let mut next = Some(first);
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match queue.recv().await {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            let bytes = match msg.write_to_bytes() {
                Ok(b) => b,
                Err(_) => {
                    lost(&msg, &events);
                    continue;
                }
            };
            let mut ok = true;
            for (kind, part) in split_message(&bytes, cfg.max_frame_bytes) {
                if write_frame(&mut conn, Some(kind), part).await.is_err() {
                    ok = false;
                    break;
                }
            }
            // Flush only when nothing else is waiting: batches writes.
            if ok && queue.is_empty() && conn.flush().await.is_err() {
                ok = false;
            }
            if !ok {
                lost(&msg, &events);
                break;
            }
            stats.sent.fetch_add(1, Ordering::Relaxed);
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                let _ = events.try_send(TransportEvent::SnapshotSent(to, true));
            }
        }
    }
}

fn lost(msg: &Message, events: &smol::channel::Sender<TransportEvent>) {
    let _ = events.try_send(TransportEvent::Unreachable(msg.to));
    if msg.get_msg_type() == MessageType::MsgSnapshot {
        let _ = events.try_send(TransportEvent::SnapshotSent(msg.to, false));
    }
}

/// A writable connection to a member, plain or TLS, buffered: the sender
/// flushes once its queue is empty, so the messages of one cycle leave in
/// one write.
type Conn = Box<dyn futures_lite::AsyncWrite + Send + Unpin>;

/// Buffer of a member connection, each way.
const IO_BUFFER: usize = 64 << 10;

use futures_lite::io::BufWriter;

async fn dial(addr: &str, to: u64, cfg: &TransportConfig) -> io::Result<Conn> {
    let stream = async_net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let hello = encode_hello(cfg.node_id, to, cfg.auth.token.as_deref());
    match &cfg.auth.tls {
        Some(tls) => {
            let name = server_name(addr)?;
            let connector = futures_rustls::TlsConnector::from(tls.client.clone());
            let mut s = connector.connect(name, stream).await?;
            handshake(&mut s, &hello).await?;
            Ok(Box::new(BufWriter::with_capacity(IO_BUFFER, s)))
        }
        None => {
            let mut s = stream;
            handshake(&mut s, &hello).await?;
            Ok(Box::new(BufWriter::with_capacity(IO_BUFFER, s)))
        }
    }
}

async fn handshake<S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin>(
    s: &mut S,
    hello: &[u8],
) -> io::Result<()> {
    write_frame(s, None, hello).await?;
    s.flush().await?;
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the member refused the handshake (token, TLS or member id)",
        )
    })?;
    if &ok != ACCEPTED {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad handshake answer",
        ));
    }
    Ok(())
}

/// The TLS name to check a member's certificate against: the host of its
/// Raft address (an IP literal or a DNS name).
fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Why the member TLS files could not be used. Names the setting.
#[derive(Debug)]
pub struct TlsLoadError {
    pub setting: &'static str,
    pub file: PathBuf,
    pub detail: String,
}

impl fmt::Display for TlsLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.setting,
            self.file.display(),
            self.detail
        )
    }
}

impl std::error::Error for TlsLoadError {}

/// The largest PEM file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Loads mutual TLS between members: this member's certificate chain and
/// key (presented both as server and as client), and the CA that signs
/// every member's certificate.
pub fn load_member_tls(cert: &Path, key: &Path, ca: &Path) -> Result<MemberTls, TlsLoadError> {
    const CERT: &str = "--raft-tls-cert (DFLOCKD_RAFT_TLS_CERT)";
    const KEY: &str = "--raft-tls-key (DFLOCKD_RAFT_TLS_KEY)";
    const CA: &str = "--raft-tls-ca (DFLOCKD_RAFT_TLS_CA)";
    let read = |setting: &'static str, file: &Path| -> Result<Vec<u8>, TlsLoadError> {
        use std::io::Read;
        let mut b = Vec::new();
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_PEM_BYTES).read_to_end(&mut b))
            .map_err(|e| TlsLoadError {
                setting,
                file: file.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(b)
    };
    let err = |setting: &'static str, file: &Path, detail: String| TlsLoadError {
        setting,
        file: file.to_owned(),
        detail,
    };
    let certs = |setting: &'static str, file: &Path| {
        let pem = read(setting, file)?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(setting, file, e.to_string()))?;
        if chain.is_empty() {
            return Err(err(setting, file, "no certificate in the file".into()));
        }
        Ok(chain)
    };
    let chain = certs(CERT, cert)?;
    let ca_certs = certs(CA, ca)?;
    let key_pem = read(KEY, key)?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| err(KEY, key, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_certs {
        roots.add(c).map_err(|e| err(CA, ca, e.to_string()))?;
    }
    let roots = Arc::new(roots);
    // An explicit provider, as everywhere in this project: `builder()`
    // panics at run time if two providers are ever enabled.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| err(CA, ca, e.to_string()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| err(CERT, cert, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key_der.clone_key())
        .map_err(|e| err(KEY, key, e.to_string()))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| err(CERT, cert, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| err(KEY, key, e.to_string()))?;
    Ok(MemberTls {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

#[cfg(test)]
pub(crate) mod tests;
