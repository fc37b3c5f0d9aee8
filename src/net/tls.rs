//! TLS on both listeners (protocol.md §1.1, http.md): loading the
//! certificate and key, and the per-connection handshake.
//!
//! With `--tls-cert` and `--tls-key` every connection on the port is TLS:
//! TLS 1.2 or 1.3 only, no client certificates. The handshake must finish
//! within `--tls-handshake-timeout` (default 5 s), so a stalled handshake
//! does not hold a `--max-connections` slot for long; a peer that does not manage it (a plaintext
//! client, a TLS 1.1-only client, garbage, silence) is closed without a
//! protocol byte and never reaches the core.
//!
//! Cancel safety: the TCP front's connection handler (`crate::tcp::conn`)
//! races each read against the mailbox and a timer, dropping the read
//! future of the loser. `futures_rustls`'s
//! `TlsStream::poll_read` pulls ciphertext from the socket into the rustls
//! session (which keeps it, decrypted, in its own buffer) and only returns
//! `Ready(Ok(n))` after copying `n` plaintext bytes into the caller's
//! buffer; `Pending` means nothing was copied. A read future dropped while
//! pending therefore loses no decrypted bytes: the next read yields them.
//! The write side is different: `poll_write` may accept plaintext into the
//! session without having sent its records, so the handler flushes
//! after every `write_all`.

use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use log::Level;

use crate::engine::Engine;
use crate::logging::{self, Cause};
use crate::rt;

/// The most read from a certificate or key file. Real PEM chains are a few
/// KiB; this only keeps a wrong path (a device, a huge file) from
/// exhausting memory at startup.
const MAX_PEM_FILE_BYTES: u64 = 16 << 20;

/// Why the certificate and key could not be loaded. Every variant names
/// the file at fault; `Display` gives the text after `configuration error: `.
#[derive(Debug)]
pub enum TlsError {
    /// The file is missing or unreadable.
    Read {
        flag: &'static str,
        file: PathBuf,
        error: io::Error,
    },
    /// The file is not valid PEM (a broken section, bad base64).
    Pem {
        flag: &'static str,
        file: PathBuf,
        error: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    NoCertificate { file: PathBuf },
    /// The key file holds no private key section (PKCS#8, PKCS#1 or SEC1).
    NoPrivateKey { file: PathBuf },
    /// The private key is not the one of the first certificate.
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the pair for another reason (an unsupported key
    /// type, a key that does not parse).
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { flag, file, error } => {
                write!(f, "{flag} {}: cannot read: {error}", file.display())
            }
            TlsError::Pem { flag, file, error } => {
                write!(f, "{flag} {}: not valid PEM: {error}", file.display())
            }
            TlsError::NoCertificate { file } => write!(
                f,
                "{CERT_SETTING} {}: no PEM certificate (BEGIN CERTIFICATE) in the file",
                file.display()
            ),
            TlsError::NoPrivateKey { file } => write!(
                f,
                "{KEY_SETTING} {}: no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in the file",
                file.display()
            ),
            TlsError::KeyMismatch { cert, key } => write!(
                f,
                "{KEY_SETTING} {}: the private key does not match the certificate in {CERT_SETTING} {}",
                key.display(),
                cert.display()
            ),
            TlsError::Rejected { cert, key, error } => write!(
                f,
                "{CERT_SETTING} {} / {KEY_SETTING} {}: unusable certificate or key: {error}",
                cert.display(),
                key.display()
            ),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { error, .. } => Some(error),
            TlsError::Pem { error, .. } => Some(error),
            TlsError::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// How errors name the certificate setting: the flag and its variable, as
/// the path may have come from either.
const CERT_SETTING: &str = "--tls-cert (DFLOCKD_TLS_CERT)";
/// How errors name the key setting.
const KEY_SETTING: &str = "--tls-key (DFLOCKD_TLS_KEY)";

fn read_file(flag: &'static str, file: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |error| TlsError::Read {
        flag,
        file: file.to_owned(),
        error,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_PEM_FILE_BYTES).read_to_end(&mut bytes))
        .map_err(err)?;
    Ok(bytes)
}

/// Reads the certificate chain (leaf first) and the private key from PEM
/// files and builds the server's TLS configuration: TLS 1.3 and 1.2 with
/// the ring provider, no client authentication.
pub fn load(cert: &Path, key: &Path) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
    let cert_pem = read_file(CERT_SETTING, cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            flag: CERT_SETTING,
            file: cert.to_owned(),
            error,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            file: cert.to_owned(),
        });
    }
    let key_pem = read_file(KEY_SETTING, key)?;
    let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoPrivateKey {
                file: key.to_owned(),
            })
        }
        Err(error) => {
            return Err(TlsError::Pem {
                flag: KEY_SETTING,
                file: key.to_owned(),
                error,
            })
        }
    };
    build(chain, key_der).map_err(|error| match error {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            }
        }
        error => TlsError::Rejected {
            cert: cert.to_owned(),
            key: key.to_owned(),
            error,
        },
    })
}

/// The server configuration for one certificate chain and key.
fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<std::sync::Arc<rustls::ServerConfig>, rustls::Error> {
    // An explicit provider: `builder()` would panic at run time if another
    // dependency ever enabled a second one.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(std::sync::Arc::new(config))
}

/// How a handshake ended.
enum Handshake<S> {
    Done(io::Result<S>),
    Late,
    ShuttingDown,
}

/// Runs the server side of the TLS handshake on an accepted socket,
/// bounded by `deadline` (`--tls-handshake-timeout`) and abandoned when
/// the drain begins. `None` when it failed, was late, or the drain began
/// (the caller just drops the socket). Shared by the TCP port and the HTTP
/// front.
pub async fn handshake<S>(
    engine: &Engine,
    stream: S,
    peer: Option<SocketAddr>,
    acceptor: &TlsAcceptor,
    deadline: Duration,
) -> Option<futures_rustls::server::TlsStream<S>>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let handshake = async { Handshake::Done(acceptor.accept(stream).await) };
    let timer = async {
        rt::sleep(deadline).await;
        Handshake::Late
    };
    let shutdown = async {
        engine.drain_begun().await;
        Handshake::ShuttingDown
    };
    let outcome =
        futures_lite::future::or(handshake, futures_lite::future::or(timer, shutdown)).await;
    let failed = |why: &str| {
        let ip = peer.map(|p| p.ip());
        if let Some(suppressed) = logging::allow(Level::Debug, Cause::TlsHandshake, ip) {
            let peer = peer.map_or_else(String::new, |p| p.to_string());
            log::debug!(peer = peer.as_str(), reason = why, suppressed; "TLS handshake failed");
        }
    };
    match outcome {
        Handshake::Done(Ok(tls)) => Some(tls),
        Handshake::Done(Err(e)) => {
            failed(&e.to_string());
            None
        }
        Handshake::Late => {
            failed("not finished within --tls-handshake-timeout");
            None
        }
        Handshake::ShuttingDown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dflockd-tls-unit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn self_signed() -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("generate certificate");
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    #[test]
    fn loads_a_matching_pair() {
        let dir = temp_dir("ok");
        let (cert, key) = self_signed();
        std::fs::write(dir.join("c.pem"), cert).expect("write");
        std::fs::write(dir.join("k.pem"), key).expect("write");
        load(&dir.join("c.pem"), &dir.join("k.pem")).expect("loads");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = temp_dir("errors");
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let c = dir.join("c.pem");
        let k = dir.join("k.pem");
        let other = dir.join("other.pem");
        let garbage = dir.join("garbage.pem");
        let broken = dir.join("broken.pem");
        let missing = dir.join("missing.pem");
        std::fs::write(&c, &cert).expect("write");
        std::fs::write(&k, &key).expect("write");
        std::fs::write(&other, &other_key).expect("write");
        std::fs::write(&garbage, "this is not PEM at all\n").expect("write");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64 !!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");

        let e = load(&missing, &k).expect_err("missing cert");
        assert!(matches!(&e, TlsError::Read { flag: CERT_SETTING, file, .. } if *file == missing));
        assert!(e.to_string().starts_with(&format!(
            "{CERT_SETTING} {}: cannot read",
            missing.display()
        )));

        let e = load(&c, &missing).expect_err("missing key");
        assert!(matches!(&e, TlsError::Read { flag: KEY_SETTING, file, .. } if *file == missing));

        let e = load(&garbage, &k).expect_err("garbage cert");
        assert!(matches!(&e, TlsError::NoCertificate { file } if *file == garbage));
        assert!(e.to_string().contains(&garbage.display().to_string()));

        // A key file is not a certificate file, and the other way round.
        let e = load(&k, &k).expect_err("key as cert");
        assert!(matches!(&e, TlsError::NoCertificate { file } if *file == k));
        let e = load(&c, &c).expect_err("cert as key");
        assert!(matches!(&e, TlsError::NoPrivateKey { file } if *file == c));
        let e = load(&c, &garbage).expect_err("garbage key");
        assert!(matches!(&e, TlsError::NoPrivateKey { file } if *file == garbage));

        let e = load(&broken, &k).expect_err("broken PEM");
        assert!(matches!(&e, TlsError::Pem { flag: CERT_SETTING, file, .. } if *file == broken));

        let e = load(&c, &other).expect_err("mismatched key");
        assert!(
            matches!(&e, TlsError::KeyMismatch { cert, key } if *cert == c && *key == other),
            "{e:?}"
        );
        assert!(e.to_string().contains("does not match"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
