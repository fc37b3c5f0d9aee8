//! Local relays between the runner and the server under test: the runner
//! always speaks plaintext to a loopback port, and the relay carries each
//! connection on, authenticating first (`--auth-token`) and/or over TLS
//! (`--tls`), so the transcripts run unchanged.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

pub(crate) use tls_relay::{start as start_tls, unverified_config};

/// Starts a loopback relay: each accepted connection is joined to a new
/// connection to `server` that has already sent `auth` and read `ok`. If
/// authentication fails, the client's connection is closed at once.
pub(crate) fn start_auth(
    server: SocketAddr,
    token: String,
    check_first: bool,
) -> Result<SocketAddr, String> {
    // Check the token once up front, for a clear error (not against a
    // server the runner started: the extra connection could count against
    // a `--max-connections` cap).
    if check_first {
        authed(server, &token).map_err(|e| format!("authenticating to {server}: {e}"))?;
    }
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot start the relay: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let token = token.clone();
            std::thread::spawn(move || {
                if let Ok(upstream) = authed(server, &token) {
                    pipe(client, upstream);
                }
            });
        }
    });
    Ok(addr)
}

/// A connection to `server` on which `auth` answered `ok`.
fn authed(server: SocketAddr, token: &str) -> Result<TcpStream, String> {
    let mut s =
        TcpStream::connect_timeout(&server, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    s.write_all(format!("auth\n_\n{token}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    // Byte by byte, so nothing after the reply is swallowed.
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(1, &s);
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    if line != b"ok\n" {
        return Err(format!(
            "auth answered {:?}",
            String::from_utf8_lossy(&line).trim_end()
        ));
    }
    Ok(s)
}

/// Copies bytes both ways until each side ends, passing each end of
/// stream on as a half-close.
fn pipe(client: TcpStream, upstream: TcpStream) {
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || copy_then_close(client, upstream));
    copy_then_close(u2, c2);
    let _ = up.join();
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// The TLS relay: plaintext on a loopback port, TLS to the server.
mod tls_relay {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use crate::client::{Stream, TlsOptions};
    use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// Starts the relay on `127.0.0.1:0` and returns its address. Each
    /// accepted connection gets its own TLS connection to `server`, on
    /// which `auth` answered `ok` first when `token` is set; a failed
    /// dial or auth closes the accepted connection at once. With
    /// `check_first`, one connection is made up front, for a clear error.
    pub fn start(
        server: &str,
        tls: TlsOptions,
        token: Option<String>,
        check_first: bool,
    ) -> Result<SocketAddr, String> {
        let server = server.to_string();
        if check_first {
            smol::block_on(upstream(&server, &tls, token.as_deref()))
                .map_err(|e| format!("connecting to {server} over TLS: {e}"))?;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("cannot start the relay: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let listener = async_net::TcpListener::try_from(listener).map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let ex = smol::LocalExecutor::new();
            smol::block_on(ex.run(async {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        // Out of descriptors, say: do not spin.
                        async_io::Timer::after(std::time::Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let (server, tls, token) = (server.clone(), tls.clone(), token.clone());
                    ex.spawn(async move {
                        if let Ok(up) = upstream(&server, &tls, token.as_deref()).await {
                            pipe(client, up).await;
                        }
                    })
                    .detach();
                }
            }));
        });
        Ok(addr)
    }

    /// A TLS stream to `server`, authenticated when `token` is set.
    async fn upstream(
        server: &str,
        tls: &TlsOptions,
        token: Option<&str>,
    ) -> Result<Stream, String> {
        let mut s = Stream::connect(server, Some(tls))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(token) = token {
            s.write_all(format!("auth\n_\n{token}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            // Byte by byte, so nothing after the reply is swallowed.
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while line.last() != Some(&b'\n') && line.len() < 256 {
                match s.read(&mut b).await {
                    Ok(1) => line.push(b[0]),
                    Ok(_) => return Err("the server closed the connection".into()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            if line != b"ok\n" {
                return Err(format!(
                    "auth answered {:?}",
                    String::from_utf8_lossy(&line).trim_end()
                ));
            }
        }
        Ok(s)
    }

    /// Copies bytes both ways; each end of stream is passed on as a
    /// half-close (`close_notify` and a write shutdown towards the
    /// server). Done when both directions are.
    async fn pipe(client: async_net::TcpStream, upstream: Stream) {
        let (mut up_r, mut up_w) = futures_lite::io::split(upstream);
        let client_r = client.clone();
        let to_server = async {
            let mut c = client_r;
            let mut buf = [0u8; 8192];
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if up_w.write_all(&buf[..n]).await.is_err() || up_w.flush().await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = up_w.close().await;
        };
        let to_client = async {
            let mut c = client.clone();
            let mut buf = [0u8; 8192];
            loop {
                match up_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if c.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = client.shutdown(std::net::Shutdown::Write);
        };
        futures_lite::future::zip(to_server, to_client).await;
    }

    /// A configuration that accepts any server certificate (signatures on
    /// the handshake are still checked): `--tls` without `--tls-ca`.
    pub fn unverified_config() -> Result<Arc<rustls::ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AnyCertificate(provider.clone()));
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
