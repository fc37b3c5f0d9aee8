//! TLS on the TCP port (protocol.md §1.1): with a certificate and key every
//! connection is TLS 1.2 or 1.3, with no client certificates; plaintext,
//! older TLS, garbage and silent peers never reach the protocol and are
//! closed, a silent one after `--read-timeout`.
//!
//! Certificates are generated per test with rcgen (nothing is checked in)
//! and loaded through `dflockd::server::tls::load`, as `main` does. The
//! client is rustls's blocking `StreamOwned` over a std `TcpStream`.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ProtocolVersion, StreamOwned};

use crate::support::{grant, wire, Server, IO_TIMEOUT};

/// A self-signed certificate for `localhost` and 127.0.0.1, written to a
/// fresh temporary directory and loaded as the server would load it.
/// Returns the server configuration and the certificate to trust.
fn certificate() -> (Arc<rustls::ServerConfig>, CertificateDer<'static>) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generate certificate");
    let dir = std::env::temp_dir().join(format!(
        "dflockd-it-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    let config = dflockd::server::tls::load(&cert, &key).expect("certificate loads");
    let _ = std::fs::remove_dir_all(&dir);
    (config, ck.cert.der().clone())
}

/// A TLS server (two executor threads), after `configure` adjusts it.
fn tls_server(
    configure: impl FnOnce(&mut dflockd::server::ServerConfig),
) -> (Server, CertificateDer<'static>) {
    let (config, cert) = certificate();
    let server = Server::start(|cfg| {
        cfg.tls = Some(config);
        configure(cfg);
    });
    (server, cert)
}

/// A client configuration trusting only `cert`, limited to `versions`.
fn client_config(
    cert: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn both_versions(cert: &CertificateDer<'static>) -> Arc<ClientConfig> {
    client_config(cert, &[&rustls::version::TLS13, &rustls::version::TLS12])
}

/// A blocking line-protocol client over TLS.
struct TlsClient {
    reader: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects and completes the handshake.
    fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsClient> {
        let mut sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        let name = ServerName::try_from("localhost").expect("server name");
        let mut conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        Ok(TlsClient {
            reader: BufReader::new(StreamOwned::new(conn, sock)),
        })
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.reader.get_ref().conn.protocol_version()
    }

    #[track_caller]
    fn send_raw(&mut self, bytes: &[u8]) {
        let s = self.reader.get_mut();
        s.write_all(bytes).expect("write");
        s.flush().expect("flush");
    }

    /// One reply line without its LF; panics on EOF, error or timeout.
    #[track_caller]
    fn recv_line(&mut self) -> String {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => panic!("connection closed while expecting a reply"),
            Ok(_) => {}
            Err(e) => panic!("no reply within {IO_TIMEOUT:?}: {e}"),
        }
        assert_eq!(buf.pop(), Some(b'\n'), "reply line cut short: {buf:?}");
        String::from_utf8(buf).expect("replies are UTF-8")
    }

    #[track_caller]
    fn req(&mut self, cmd: &str, key: &str, arg: &str) -> String {
        self.send_raw(wire(cmd, key, arg).as_bytes());
        self.recv_line()
    }

    /// Reads until the server ends the connection (close_notify, EOF or
    /// reset); returns the lines received before that. Panics if the
    /// connection is still open after [`IO_TIMEOUT`].
    #[track_caller]
    fn lines_until_closed(&mut self) -> Vec<String> {
        let mut all = Vec::new();
        match self.reader.read_to_end(&mut all) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("not closed within {IO_TIMEOUT:?}")
            }
            // EOF without close_notify, or a reset: closed all the same.
            Err(_) => {}
        }
        String::from_utf8_lossy(&all)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Reads raw bytes from `sock` until the server closes it (EOF or reset)
/// and returns them. Panics if the server keeps it open past `limit`.
#[track_caller]
fn raw_until_closed(sock: &mut TcpStream, limit: Duration) -> Vec<u8> {
    sock.set_read_timeout(Some(limit)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("server kept the connection open for {limit:?}; got {got:?}")
            }
            Err(_) => return got,
        }
    }
}

/// What a server that refused a handshake may send before closing: nothing,
/// or TLS alert records (content type 21). Never a handshake record (22,
/// a ServerHello) and never protocol text.
#[track_caller]
fn assert_only_alerts(got: &[u8]) {
    let mut rest = got;
    while !rest.is_empty() {
        assert!(
            rest.len() >= 5 && rest[0] == 21,
            "expected only TLS alerts before the close, got {got:?} ({:?})",
            String::from_utf8_lossy(got)
        );
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        assert!(rest.len() >= 5 + len, "truncated alert record: {got:?}");
        rest = &rest[5 + len..];
    }
}

fn connect_raw(addr: SocketAddr) -> TcpStream {
    let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    sock.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    sock
}

/// A ClientHello that offers TLS 1.1 at most (no supported_versions
/// extension), with two CBC-SHA suites.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version: TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut hs = vec![0x01]; // client_hello
    hs.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake, record version 1.0
    record.extend_from_slice(&u16::try_from(hs.len()).expect("small").to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[test]
fn lock_and_release_round_trip_over_tls() {
    let (server, cert) = tls_server(|_| {});
    let mut c = TlsClient::connect(server.addr(), both_versions(&cert)).expect("handshake");
    assert_eq!(c.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    let (tok, lease) = grant(&c.req("l", "k", "10"));
    assert_eq!(lease, 33);
    assert_eq!(c.req("r", "k", &tok), "ok");
    assert_eq!(c.req("r", "k", &tok), "error");
    assert_eq!(c.req("ping", "_", ""), "ok");
}

#[test]
fn tls12_client_is_served() {
    let (server, cert) = tls_server(|_| {});
    let config = client_config(&cert, &[&rustls::version::TLS12]);
    let mut c = TlsClient::connect(server.addr(), config).expect("TLS 1.2 handshake");
    assert_eq!(c.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    let (tok, _) = grant(&c.req("l", "k", "0"));
    assert_eq!(c.req("r", "k", &tok), "ok");
}

// A grant handed off through the mailbox while the waiter's task sits in a
// TLS read: the read is abandoned for the mailbox and the stream must stay
// usable (cancel safety of the TLS read).
#[test]
fn hand_off_and_pipelining_over_tls() {
    let (server, cert) = tls_server(|_| {});
    let config = both_versions(&cert);
    let mut a = TlsClient::connect(server.addr(), config.clone()).expect("handshake");
    let mut b = TlsClient::connect(server.addr(), config).expect("handshake");
    let (tok_a, _) = grant(&a.req("l", "k", "0"));
    b.send_raw(wire("l", "k", "30").as_bytes());
    let mut probe = TlsClient::connect(server.addr(), both_versions(&cert)).expect("handshake");
    let start = Instant::now();
    loop {
        let stats = probe.req("stats", "_", "");
        if stats.contains("\"waiters\":1") {
            break;
        }
        assert!(start.elapsed() < IO_TIMEOUT, "waiter never queued: {stats}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(a.req("r", "k", &tok_a), "ok");
    let (tok_b, _) = grant(&b.recv_line());
    assert!(tok_b > tok_a);
    assert_eq!(b.req("r", "k", &tok_b), "ok");

    // Many requests in one write, many replies back (several TLS records).
    let n = 2000;
    let batch = wire("ping", "_", "").repeat(n);
    b.send_raw(batch.as_bytes());
    for i in 0..n {
        assert_eq!(b.recv_line(), "ok", "reply {i}");
    }
}

#[test]
fn plaintext_client_gets_no_protocol_reply() {
    let (server, _) = tls_server(|_| {});
    let mut sock = connect_raw(server.addr());
    sock.write_all(b"l\nk\n10\n").expect("write");
    let got = raw_until_closed(&mut sock, IO_TIMEOUT);
    assert!(
        !String::from_utf8_lossy(&got).contains("ok"),
        "plaintext got a reply: {got:?}"
    );
    assert_only_alerts(&got);
}

#[test]
fn tls11_and_garbage_handshakes_are_rejected() {
    let (server, cert) = tls_server(|_| {});
    let mut sock = connect_raw(server.addr());
    sock.write_all(&tls11_client_hello()).expect("write");
    let got = raw_until_closed(&mut sock, IO_TIMEOUT);
    assert_only_alerts(&got);

    let mut sock = connect_raw(server.addr());
    sock.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4,
    ])
    .expect("write");
    let got = raw_until_closed(&mut sock, IO_TIMEOUT);
    assert_only_alerts(&got);

    let mut sock = connect_raw(server.addr());
    sock.write_all(&[0xffu8; 300]).expect("write");
    let got = raw_until_closed(&mut sock, IO_TIMEOUT);
    assert_only_alerts(&got);

    // A client that does not trust the certificate fails its handshake.
    let (_, other) = certificate();
    assert!(TlsClient::connect(server.addr(), both_versions(&other)).is_err());

    // None of that disturbed the server.
    let mut c = TlsClient::connect(server.addr(), both_versions(&cert)).expect("handshake");
    assert_eq!(c.req("ping", "_", ""), "ok");
}

// `--tls-handshake-timeout`, not `--read-timeout`, bounds the handshake:
// with a 1 s handshake deadline and a 60 s read timeout, a silent or
// stalled client is closed well before the read timeout.
#[test]
fn silent_or_stalled_handshake_is_dropped_at_the_handshake_deadline() {
    let (server, _) = tls_server(|cfg| {
        cfg.tls_handshake_timeout_s = 1;
        cfg.read_timeout_s = 60;
    });
    // Connects and sends nothing.
    let started = Instant::now();
    let mut silent = connect_raw(server.addr());
    // Starts a ClientHello and stops halfway.
    let mut stalled = connect_raw(server.addr());
    let hello = tls11_client_hello();
    stalled.write_all(&hello[..hello.len() / 2]).expect("write");

    // IO_TIMEOUT (10 s) is far below the read timeout (60 s).
    assert!(raw_until_closed(&mut silent, IO_TIMEOUT).is_empty());
    assert_only_alerts(&raw_until_closed(&mut stalled, IO_TIMEOUT));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "dropped after {:?}, before the handshake deadline",
        started.elapsed()
    );
}

// The HTTP listener applies the same handshake deadline.
#[test]
fn the_http_listener_drops_a_silent_handshake_at_the_deadline() {
    let (server, cert) = tls_server(|cfg| {
        cfg.tls_handshake_timeout_s = 1;
        cfg.read_timeout_s = 60;
        cfg.http = Some(dflockd::http::HttpSettings::default());
    });
    let http = server.handle().http_addr().expect("HTTP is on");
    let started = Instant::now();
    let mut silent = connect_raw(http);
    assert!(raw_until_closed(&mut silent, IO_TIMEOUT).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A client that completes its handshake is served.
    let mut c = TlsClient::connect(http, both_versions(&cert)).expect("handshake");
    c.send_raw(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let first = c
        .lines_until_closed()
        .into_iter()
        .next()
        .unwrap_or_default();
    assert_eq!(first.trim_end(), "HTTP/1.1 200 OK");
}

// After a completed handshake the usual idle rule applies: `error`, then
// the close, after `--read-timeout`.
#[test]
fn an_idle_connection_after_the_handshake_gets_the_read_timeout() {
    let (server, cert) = tls_server(|cfg| cfg.read_timeout_s = 1);
    let mut idle = TlsClient::connect(server.addr(), both_versions(&cert)).expect("handshake");
    assert_eq!(idle.lines_until_closed(), ["error"]);
}

#[test]
fn a_connection_counts_toward_max_connections_from_accept() {
    let (server, cert) = tls_server(|cfg| cfg.max_connections = 1);
    // Accepted but still in its handshake: it holds the only slot (the
    // accept loop takes connections in arrival order).
    let first = connect_raw(server.addr());
    let second = TlsClient::connect(server.addr(), both_versions(&cert));
    assert!(second.is_err(), "second connection admitted");
    drop(first);
    // Once the slot is free again, a TLS client gets in.
    let start = Instant::now();
    loop {
        if let Ok(mut c) = TlsClient::connect(server.addr(), both_versions(&cert)) {
            let mut buf = Vec::new();
            c.send_raw(wire("ping", "_", "").as_bytes());
            if c.reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                assert_eq!(buf, b"ok\n");
                break;
            }
        }
        assert!(start.elapsed() < IO_TIMEOUT, "never admitted again");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `cert` and `key` PEM files into a fresh temporary directory.
fn pem_files(
    cert: &str,
    key: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dflockd-it-tls-bin-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let c = dir.join("cert.pem");
    let k = dir.join("key.pem");
    std::fs::write(&c, cert).expect("write cert");
    std::fs::write(&k, key).expect("write key");
    (dir, c, k)
}

// The daemon refuses to start on unusable TLS files, naming the file.
#[test]
fn daemon_reports_bad_tls_files_as_configuration_errors() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (dir, cert, key) = pem_files("not a certificate\n", &ck.signing_key.serialize_pem());
    let missing = dir.join("missing.pem");
    for (c, k, expect) in [
        (
            &missing,
            &key,
            format!(
                "configuration error: --tls-cert (DFLOCKD_TLS_CERT) {}: cannot read",
                missing.display()
            ),
        ),
        (
            &cert,
            &key,
            format!(
                "configuration error: --tls-cert (DFLOCKD_TLS_CERT) {}: no PEM certificate",
                cert.display()
            ),
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dflockd"))
            .args(["--port", "0", "--tls-cert"])
            .arg(c)
            .arg("--tls-key")
            .arg(k)
            .env_remove("DFLOCKD_TLS_CERT")
            .env_remove("DFLOCKD_TLS_KEY")
            .output()
            .expect("run dflockd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        assert!(stderr.starts_with(&expect), "stderr: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

// The daemon serves TLS with the files given on its command line.
#[test]
fn daemon_serves_tls() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (dir, cert, key) = pem_files(&ck.cert.pem(), &ck.signing_key.serialize_pem());
    let d = crate::daemon::Daemon::start(
        &[
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
        &[],
    );
    let _ = std::fs::remove_dir_all(dir);
    let mut c = TlsClient::connect(d.tcp, both_versions(ck.cert.der())).expect("handshake");
    let (tok, _) = grant(&c.req("l", "k", "0"));
    assert_eq!(c.req("r", "k", &tok), "ok");
}

// A connection still in its handshake holds nothing in the core: shutdown
// closes it at once instead of waiting out the handshake deadline.
#[test]
fn shutdown_does_not_wait_for_a_pending_handshake() {
    let (server, cert) = tls_server(|cfg| {
        cfg.read_timeout_s = 60;
        cfg.shutdown_timeout_s = 60;
    });
    let mut pending = connect_raw(server.addr());
    // Accepted in arrival order: once this one is served, `pending` has
    // been accepted too.
    let mut c = TlsClient::connect(server.addr(), both_versions(&cert)).expect("handshake");
    assert_eq!(c.req("ping", "_", ""), "ok");
    drop(c);
    server.shutdown();
    assert!(raw_until_closed(&mut pending, IO_TIMEOUT).is_empty());
    server.join_within(IO_TIMEOUT);
}
