//! The transport's pure parts (hello, frames, filters) and real loopback
//! connections: delivery, refusals, parts of a large snapshot, mutual TLS,
//! reconnecting to a member that comes up late.
// Protobuf messages are built field by field, as raft-proto's own code does.
#![allow(clippy::field_reassign_with_default)]

use std::time::Instant;

use super::*;
use crate::cluster::storage::tests::TempDir;

const TOKEN: &[u8] = b"0123456789abcdef0123456789abcdef-members";

#[test]
fn constant_time_eq_compares_whole_slices() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(constant_time_eq(b"", b""));
}

#[test]
fn hello_checks() {
    let good = encode_hello(2, 1, Some(TOKEN));
    assert_eq!(check_hello(&good, 1, Some(TOKEN)), Ok(2));
    assert_eq!(
        check_hello(&good, 3, Some(TOKEN)),
        Err(Refusal::WrongIds),
        "addressed to another member"
    );
    assert_eq!(
        check_hello(&encode_hello(2, 1, Some(b"wrong")), 1, Some(TOKEN)),
        Err(Refusal::BadToken)
    );
    assert_eq!(
        check_hello(&encode_hello(2, 1, None), 1, Some(TOKEN)),
        Err(Refusal::BadToken)
    );
    // Without a token (TLS only), any token field is ignored.
    assert_eq!(check_hello(&encode_hello(2, 1, None), 1, None), Ok(2));
    for bad in [
        encode_hello(0, 1, Some(TOKEN)),
        encode_hello(1, 1, Some(TOKEN)),
    ] {
        assert_eq!(check_hello(&bad, 1, Some(TOKEN)), Err(Refusal::WrongIds));
    }
    let mut wrong_magic = good.clone();
    wrong_magic[0] = b'X';
    let mut wrong_len = good.clone();
    wrong_len.pop();
    for bad in [wrong_magic, wrong_len, vec![], good[..26].to_vec()] {
        assert_eq!(check_hello(&bad, 1, Some(TOKEN)), Err(Refusal::BadHello));
    }
}

fn msg(t: MessageType, from: u64, to: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = to;
    m.term = 3;
    m
}

#[test]
fn only_peer_message_types_pass() {
    use MessageType::*;
    for t in [
        MsgAppend,
        MsgAppendResponse,
        MsgRequestVote,
        MsgRequestVoteResponse,
        MsgRequestPreVote,
        MsgRequestPreVoteResponse,
        MsgSnapshot,
        MsgHeartbeat,
        MsgHeartbeatResponse,
        MsgTimeoutNow,
    ] {
        assert_eq!(check_message(&msg(t, 2, 1), 2, 1), Ok(()), "{t:?}");
    }
    for t in [
        MsgHup,
        MsgBeat,
        MsgPropose,
        MsgUnreachable,
        MsgSnapStatus,
        MsgCheckQuorum,
        MsgTransferLeader,
        MsgReadIndex,
        MsgReadIndexResp,
    ] {
        assert_eq!(
            check_message(&msg(t, 2, 1), 2, 1),
            Err(Refusal::NotPeerType(t)),
            "{t:?}"
        );
    }
    assert_eq!(
        check_message(&msg(MsgAppend, 3, 1), 2, 1),
        Err(Refusal::Spoofed)
    );
    assert_eq!(
        check_message(&msg(MsgAppend, 2, 4), 2, 1),
        Err(Refusal::Spoofed)
    );
}

#[test]
fn large_messages_travel_in_parts_and_only_snapshots_may() {
    let mut snap = msg(MessageType::MsgSnapshot, 2, 1);
    snap.mut_snapshot().data = bytes::Bytes::from(vec![9u8; 10_000]);
    let bytes = snap.write_to_bytes().unwrap();
    let parts = split_message(&bytes, 1000);
    assert!(parts.len() > 10);
    let mut r = Reassembly::new(1 << 20);
    let mut got = None;
    for (kind, body) in &parts {
        let frame = seal(*kind, body);
        assert!(frame.len() <= 1000);
        if let Some(m) = r.push(&frame).unwrap() {
            got = Some(m);
        }
    }
    assert_eq!(got.unwrap(), snap);
    // Over the reassembly limit.
    let mut small = Reassembly::new(5_000);
    let err = parts
        .iter()
        .map(|(k, b)| small.push(&seal(*k, b)))
        .find_map(Result::err);
    assert_eq!(err, Some(Refusal::MessageTooLarge));
    // An append in parts is refused.
    let mut append = msg(MessageType::MsgAppend, 2, 1);
    append.context = bytes::Bytes::from(vec![1u8; 3000]);
    let bytes = append.write_to_bytes().unwrap();
    let mut r = Reassembly::new(1 << 20);
    let mut last = Ok(None);
    for (k, b) in split_message(&bytes, 1000) {
        last = r.push(&seal(k, b));
    }
    assert_eq!(last, Err(Refusal::BadFrame));
    assert_eq!(
        Reassembly::new(10).push(&seal(7, &[1, 2])),
        Err(Refusal::BadFrame)
    );
    assert_eq!(Reassembly::new(10).push(&[]), Err(Refusal::BadFrame));
    // Too short to hold a checksum.
    assert_eq!(
        Reassembly::new(10).push(&[WHOLE, 1, 2]),
        Err(Refusal::BadFrame)
    );
    assert_eq!(
        Reassembly::new(10).push(&seal(WHOLE, &[0xff, 0xff])),
        Err(Refusal::Undecodable)
    );
}

/// A frame garbled on the way is refused by its checksum before it is
/// parsed: every single-bit flip of a heartbeat's frame (kind, payload or
/// checksum), none of which would otherwise be noticed by the parser for
/// certain (a flipped `commit` still decodes, and raft-rs panics on a
/// commit index beyond its log).
#[test]
fn a_garbled_frame_is_refused_by_its_checksum() {
    let mut heartbeat = msg(MessageType::MsgHeartbeat, 2, 1);
    heartbeat.commit = 7;
    let good = seal(WHOLE, &heartbeat.write_to_bytes().unwrap());
    assert_eq!(Reassembly::new(1 << 20).push(&good), Ok(Some(heartbeat)));
    for bit in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let got = Reassembly::new(1 << 20).push(&bad);
        // A flip in the kind byte may also be an unknown kind; never a message.
        assert!(
            matches!(got, Err(Refusal::BadChecksum | Refusal::BadFrame)),
            "bit {bit}: {got:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Loopback.

/// An executor with one thread, stopped on drop.
pub(crate) struct Runtime {
    pub ex: Arc<smol::Executor<'static>>,
    stop: Option<smol::channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    pub(crate) fn new() -> Runtime {
        let ex = Arc::new(smol::Executor::new());
        let (stop, rx) = smol::channel::bounded::<()>(1);
        let ex2 = ex.clone();
        let thread = std::thread::spawn(move || {
            smol::block_on(ex2.run(async move {
                let _ = rx.recv().await;
            }))
        });
        Runtime {
            ex,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct End {
    transport: Transport,
    inbox: smol::channel::Receiver<Message>,
    events: smol::channel::Receiver<TransportEvent>,
}

fn end(rt: &Runtime, cfg: TransportConfig, listen: &str) -> End {
    let (tx, inbox) = smol::channel::bounded(64);
    let (etx, events) = smol::channel::bounded(64);
    let transport = Transport::start(cfg, listen, rt.ex.clone(), tx, etx).unwrap();
    End {
        transport,
        inbox,
        events,
    }
}

fn token_auth() -> MemberAuth {
    MemberAuth {
        token: Some(Arc::from(TOKEN)),
        tls: None,
    }
}

fn recv<T>(rx: &smol::channel::Receiver<T>) -> Option<T> {
    smol::block_on(async {
        rx.recv()
            .or(async {
                smol::Timer::after(Duration::from_secs(10)).await;
                Err(smol::channel::RecvError)
            })
            .await
            .ok()
    })
}

/// Waits (bounded) until `cond` holds; for counters the other side bumps.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn messages_cross_between_members_with_the_token() {
    let rt = Runtime::new();
    let a = end(&rt, TransportConfig::new(1, token_auth()), "127.0.0.1:0");
    let mut b = end(&rt, TransportConfig::new(2, token_auth()), "127.0.0.1:0");
    b.transport
        .set_peer(1, &a.transport.local_addr().to_string());
    for i in 0..20 {
        let mut m = msg(MessageType::MsgHeartbeat, 2, 1);
        m.commit = i;
        b.transport.send(m);
    }
    for i in 0..20 {
        assert_eq!(recv(&a.inbox).unwrap().commit, i, "in order");
    }
    // Unknown destination: dropped and counted.
    b.transport.send(msg(MessageType::MsgHeartbeat, 2, 9));
    assert_eq!(b.transport.stats().dropped_send.load(Ordering::Relaxed), 1);
}

#[test]
fn a_wrong_token_is_refused_before_any_message() {
    let rt = Runtime::new();
    let a = end(&rt, TransportConfig::new(1, token_auth()), "127.0.0.1:0");
    let wrong = MemberAuth {
        token: Some(Arc::from(&b"another-token-of-more-than-32-bytes!!"[..])),
        tls: None,
    };
    let mut b = end(&rt, TransportConfig::new(2, wrong), "127.0.0.1:0");
    b.transport
        .set_peer(1, &a.transport.local_addr().to_string());
    b.transport.send(msg(MessageType::MsgHeartbeat, 2, 1));
    assert_eq!(recv(&b.events), Some(TransportEvent::Unreachable(1)));
    eventually("the refusal", || {
        a.transport
            .stats()
            .refused_handshakes
            .load(Ordering::Relaxed)
            >= 1
    });
    assert!(a.inbox.is_empty());
}

/// Speaks the protocol by hand: a valid hello, then whatever `after` says.
fn raw_session(addr: SocketAddr, after: &[u8]) -> io::Result<usize> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let hello = encode_hello(2, 1, Some(TOKEN));
    s.write_all(&(hello.len() as u32).to_be_bytes())?;
    s.write_all(&hello)?;
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok)?;
    assert_eq!(&ok, ACCEPTED);
    s.write_all(after)?;
    // The acceptor closes the connection: read sees the end.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
}

/// A message frame on the wire: length, then kind, body and checksum.
fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let sealed = seal(kind, body);
    let mut f = (sealed.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&sealed);
    f
}

#[test]
fn bad_frames_and_messages_close_the_connection() {
    let rt = Runtime::new();
    let a = end(&rt, TransportConfig::new(1, token_auth()), "127.0.0.1:0");
    let addr = a.transport.local_addr();
    let bodies: Vec<Vec<u8>> = vec![
        // A length over 4 MiB, refused before reading it.
        ((MAX_FRAME_BYTES + 2) as u32).to_be_bytes().to_vec(),
        frame(WHOLE, &[0xff, 0xff, 0xff]),
        frame(9, b"x"),
        // A heartbeat whose last checksum byte was flipped on the way.
        {
            let mut f = frame(
                WHOLE,
                &msg(MessageType::MsgHeartbeat, 2, 1)
                    .write_to_bytes()
                    .unwrap(),
            );
            *f.last_mut().unwrap() ^= 1;
            f
        },
        frame(
            WHOLE,
            &msg(MessageType::MsgPropose, 2, 1).write_to_bytes().unwrap(),
        ),
        frame(
            WHOLE,
            &msg(MessageType::MsgHup, 2, 1).write_to_bytes().unwrap(),
        ),
        // Claims to come from member 3 on member 2's connection.
        frame(
            WHOLE,
            &msg(MessageType::MsgAppend, 3, 1).write_to_bytes().unwrap(),
        ),
    ];
    for (i, body) in bodies.iter().enumerate() {
        raw_session(addr, body).unwrap();
        eventually("the refusal", || {
            a.transport.stats().refused_messages.load(Ordering::Relaxed) as usize > i
        });
    }
    assert!(a.inbox.is_empty(), "nothing reached the replica");
    // The listener still serves members.
    let good = frame(
        WHOLE,
        &msg(MessageType::MsgHeartbeat, 2, 1)
            .write_to_bytes()
            .unwrap(),
    );
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let hello = encode_hello(2, 1, Some(TOKEN));
    s.write_all(&(hello.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&hello).unwrap();
    s.write_all(&good).unwrap();
    assert_eq!(
        recv(&a.inbox).unwrap().get_msg_type(),
        MessageType::MsgHeartbeat
    );
}

#[test]
fn a_silent_or_garbage_peer_is_dropped_at_the_handshake() {
    let rt = Runtime::new();
    let mut cfg = TransportConfig::new(1, token_auth());
    cfg.handshake_timeout = Duration::from_millis(200);
    let a = end(&rt, cfg, "127.0.0.1:0");
    use std::io::{Read, Write};
    // Silent: closed at the deadline.
    let mut silent = std::net::TcpStream::connect(a.transport.local_addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(silent.read(&mut buf).unwrap(), 0);
    // A hello length over its cap.
    let mut big = std::net::TcpStream::connect(a.transport.local_addr()).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    big.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    assert_eq!(big.read(&mut buf).unwrap_or(0), 0);
    eventually("both refusals", || {
        a.transport
            .stats()
            .refused_handshakes
            .load(Ordering::Relaxed)
            >= 2
    });
}

#[test]
fn a_snapshot_larger_than_a_frame_arrives_whole() {
    let rt = Runtime::new();
    let mut small = TransportConfig::new(1, token_auth());
    small.max_frame_bytes = 4096;
    let a = end(&rt, small.clone(), "127.0.0.1:0");
    small.node_id = 2;
    let mut b = end(&rt, small, "127.0.0.1:0");
    b.transport
        .set_peer(1, &a.transport.local_addr().to_string());
    let mut snap = msg(MessageType::MsgSnapshot, 2, 1);
    snap.mut_snapshot().data = bytes::Bytes::from(vec![5u8; 100_000]);
    b.transport.send(snap.clone());
    assert_eq!(recv(&a.inbox).unwrap(), snap);
    assert_eq!(recv(&b.events), Some(TransportEvent::SnapshotSent(1, true)));
}

#[test]
fn a_member_that_starts_late_is_reached_after_backoff() {
    let rt = Runtime::new();
    // Reserve a port, then free it for member 1 to take later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut b = end(&rt, TransportConfig::new(2, token_auth()), "127.0.0.1:0");
    b.transport.set_peer(1, &addr);
    b.transport.send(msg(MessageType::MsgHeartbeat, 2, 1));
    assert_eq!(recv(&b.events), Some(TransportEvent::Unreachable(1)));
    let a = end(&rt, TransportConfig::new(1, token_auth()), &addr);
    // Raft keeps sending (heartbeats); one gets through once A is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        b.transport.send(msg(MessageType::MsgHeartbeat, 2, 1));
        if let Ok(m) = a.inbox.try_recv() {
            break m;
        }
        assert!(Instant::now() < deadline, "never reconnected");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(got.from, 2);
}

#[test]
fn a_full_queue_drops_instead_of_blocking() {
    let rt = Runtime::new();
    let mut cfg = TransportConfig::new(2, token_auth());
    cfg.send_queue = 4;
    let mut b = end(&rt, cfg, "127.0.0.1:0");
    // Nobody listens there; the sender task is stuck dialing or backing off.
    b.transport.set_peer(1, "127.0.0.1:9");
    let start = Instant::now();
    for _ in 0..1000 {
        b.transport.send(msg(MessageType::MsgHeartbeat, 2, 1));
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(b.transport.stats().dropped_send.load(Ordering::Relaxed) >= 900);
}

// ---------------------------------------------------------------------------
// Mutual TLS.

struct Pki {
    dir: TempDir,
    ca_pem: String,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} members CA"));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki {
            dir: TempDir::new(name),
            ca_pem: cert.pem(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a member certificate for 127.0.0.1 and the CA; returns the
    /// three paths (cert, key, ca).
    fn member(&self, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let paths = (
            self.dir.0.join(format!("{name}.crt")),
            self.dir.0.join(format!("{name}.key")),
            self.dir.0.join("ca.crt"),
        );
        std::fs::write(&paths.0, cert.pem()).unwrap();
        std::fs::write(&paths.1, key.serialize_pem()).unwrap();
        std::fs::write(&paths.2, &self.ca_pem).unwrap();
        paths
    }

    fn auth(&self, name: &str) -> MemberAuth {
        let (c, k, ca) = self.member(name);
        MemberAuth {
            token: None,
            tls: Some(load_member_tls(&c, &k, &ca).unwrap()),
        }
    }
}

#[test]
fn members_talk_over_mutual_tls() {
    let rt = Runtime::new();
    let pki = Pki::new("mtls");
    let a = end(&rt, TransportConfig::new(1, pki.auth("a")), "127.0.0.1:0");
    let mut b = end(&rt, TransportConfig::new(2, pki.auth("b")), "127.0.0.1:0");
    b.transport
        .set_peer(1, &a.transport.local_addr().to_string());
    b.transport.send(msg(MessageType::MsgHeartbeat, 2, 1));
    assert_eq!(recv(&a.inbox).unwrap().from, 2);

    // A member certificate from another CA is refused, both ways round.
    let other = Pki::new("mtls-other");
    let mut c = end(&rt, TransportConfig::new(3, other.auth("c")), "127.0.0.1:0");
    c.transport
        .set_peer(1, &a.transport.local_addr().to_string());
    c.transport.send(msg(MessageType::MsgHeartbeat, 3, 1));
    assert_eq!(recv(&c.events), Some(TransportEvent::Unreachable(1)));
    eventually("the TLS refusal", || {
        a.transport
            .stats()
            .refused_handshakes
            .load(Ordering::Relaxed)
            >= 1
    });
    // A plain client without any certificate is refused too.
    let mut plain = end(&rt, TransportConfig::new(4, token_auth()), "127.0.0.1:0");
    plain
        .transport
        .set_peer(1, &a.transport.local_addr().to_string());
    plain.transport.send(msg(MessageType::MsgHeartbeat, 4, 1));
    assert_eq!(recv(&plain.events), Some(TransportEvent::Unreachable(1)));
    assert!(a.inbox.is_empty());
}

#[test]
fn member_tls_files_that_do_not_load_name_the_setting() {
    let pki = Pki::new("mtls-bad");
    let (cert, key, ca) = pki.member("m");
    let missing = pki.dir.0.join("missing.pem");
    let garbage = pki.dir.0.join("garbage.pem");
    std::fs::write(&garbage, "not a pem file").unwrap();
    let cases = [
        (missing.clone(), key.clone(), ca.clone(), "--raft-tls-cert"),
        (cert.clone(), missing.clone(), ca.clone(), "--raft-tls-key"),
        (cert.clone(), key.clone(), missing.clone(), "--raft-tls-ca"),
        (garbage.clone(), key.clone(), ca.clone(), "--raft-tls-cert"),
        (cert.clone(), garbage.clone(), ca.clone(), "--raft-tls-key"),
        (cert.clone(), key.clone(), garbage.clone(), "--raft-tls-ca"),
    ];
    for (c, k, a, setting) in cases {
        match load_member_tls(&c, &k, &a) {
            Err(e) => assert!(e.to_string().starts_with(setting), "{e}"),
            Ok(_) => panic!("{setting}: loaded"),
        }
    }
}

/// RUSTSEC-2024-0437 (protobuf 2.x, uncontrolled recursion on nested
/// unknown groups): the largest message a frame can carry, made of nothing
/// but nested group starts, is refused as undecodable on a small (2 MiB)
/// stack instead of overflowing it. The transport's other defences (only
/// members are parsed, frames are capped) stand in front of this.
#[test]
fn nested_unknown_groups_in_a_full_frame_are_refused_without_overflow() {
    // Field 1000, wire type 3 (start group): tag 8003, varint c3 3e.
    let mut groups = Vec::new();
    while 1 + groups.len() + 2 + CHECKSUM_BYTES <= MAX_FRAME_BYTES {
        groups.extend_from_slice(&[0xc3, 0x3e]);
    }
    let frame = seal(WHOLE, &groups);
    let refused = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || Reassembly::new(MAX_FRAME_BYTES).push(&frame))
        .unwrap()
        .join()
        .expect("no panic");
    assert_eq!(refused, Err(Refusal::Undecodable));
}
