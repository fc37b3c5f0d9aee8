//! TLS for client connections: [`TlsOptions`] (a rustls client
//! configuration and the name to verify the server certificate against),
//! [`client_config_from_ca_file`] to trust a PEM CA file, and [`Stream`],
//! the byte stream a [`Connection`](super::Connection) runs over (plain TCP
//! or TLS over TCP).
//!
//! Configurations are built with the ring provider explicitly
//! (`builder_with_provider`), never rustls's process-default provider.
//! A handshake that rustls refuses (an untrusted certificate, a name
//! mismatch, no common protocol version) is [`Error::Tls`](super::Error::Tls).
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("dflockd-doc-ca-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let ca = dir.join("ca.pem");
//! # std::fs::write(&ca, "not a certificate").unwrap();
//! use dflockd::client::{client_config_from_ca_file, Error};
//! // A file without a certificate is refused with a typed error.
//! assert!(matches!(client_config_from_ca_file(&ca), Err(Error::TlsConfig(_))));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::{Error, Result};

/// The most read from a CA file (real bundles are well under this).
const MAX_CA_FILE_BYTES: u64 = 16 << 20;

/// How a [`Client`](super::Client) or
/// [`Connection::connect_tls`](super::Connection::connect_tls) dials TLS.
#[derive(Clone)]
pub struct TlsOptions {
    /// The rustls client configuration (trusted roots, versions).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server certificate must carry (a DNS name or an IP
    /// address). `None`: the host part of each server address.
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// TLS with `config`, verifying each server against the host part of
    /// its address.
    pub fn new(config: Arc<rustls::ClientConfig>) -> TlsOptions {
        TlsOptions {
            config,
            server_name: None,
        }
    }

    /// Verifies every server certificate against `name` instead.
    pub fn with_server_name(mut self, name: impl Into<String>) -> TlsOptions {
        self.server_name = Some(name.into());
        self
    }

    /// The name to verify when dialling `addr` (`host:port`).
    pub(super) fn name_for(&self, addr: &str) -> Result<ServerName<'static>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_string(),
        };
        ServerName::try_from(name.clone())
            .map_err(|_| Error::TlsConfig(format!("{name:?} is not a valid TLS server name")))
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host;
        }
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((host, _)) if !host.contains(':') => host,
        Some(_) => addr,
        None => addr,
    }
}

/// A client configuration (TLS 1.2 and 1.3, ring provider, no client
/// certificate) trusting exactly `roots`.
pub fn client_config_from_roots(
    roots: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for cert in roots {
        store.add(cert).map_err(Error::Tls)?;
    }
    if store.is_empty() {
        return Err(Error::TlsConfig("no trusted certificate given".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(Error::Tls)?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration trusting the certificates of the PEM file `ca`
/// (a CA bundle, or the server's own self-signed certificate).
pub fn client_config_from_ca_file(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let bad = |what: String| Error::TlsConfig(format!("CA file {}: {what}", ca.display()));
    let mut pem = Vec::new();
    let file = std::fs::File::open(ca).map_err(|e| bad(format!("cannot read: {e}")))?;
    io::Read::read_to_end(&mut io::Read::take(file, MAX_CA_FILE_BYTES), &mut pem)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no PEM certificate (BEGIN CERTIFICATE) in the file".into()
        ));
    }
    client_config_from_roots(certs).map_err(|e| match e {
        Error::Tls(e) => bad(format!("certificate refused: {e}")),
        other => other,
    })
}

/// The stream under a [`Connection`](super::Connection): TCP, or TLS over
/// TCP.
pub enum Stream {
    /// Plain TCP.
    Tcp(async_net::TcpStream),
    /// TLS over TCP (boxed: the session state is large).
    Tls(Box<futures_rustls::client::TlsStream<async_net::TcpStream>>),
}

impl Stream {
    /// The TCP stream underneath.
    pub fn tcp(&self) -> &async_net::TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether this stream is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Stream::Tls(s) => f.debug_tuple("Tls").field(s.get_ref().0).finish(),
        }
    }
}

/// Runs the TLS handshake over `tcp`. A refusal by rustls (the
/// certificate, the name, the versions) is [`Error::Tls`].
pub(super) async fn handshake(
    tcp: async_net::TcpStream,
    opts: &TlsOptions,
    addr: &str,
) -> Result<Stream> {
    let name = opts.name_for(addr)?;
    let connector = futures_rustls::TlsConnector::from(opts.config.clone());
    match connector.connect(name, tcp).await {
        Ok(s) => Ok(Stream::Tls(Box::new(s))),
        Err(e) => Err(tls_error(e)),
    }
}

/// An I/O error carrying a rustls error becomes [`Error::Tls`].
fn tls_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(tls) = inner.downcast::<rustls::Error>() {
                return Error::Tls(*tls);
            }
        }
        return Error::Io(io::Error::other("TLS handshake failed"));
    }
    Error::Io(e)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("localhost:6388"), "localhost");
        assert_eq!(host_of("127.0.0.1:6388"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6388"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }

    #[test]
    fn unusable_roots_are_typed_errors() {
        // Bytes that are no certificate: a typed refusal, not a panic.
        let garbage = CertificateDer::from(vec![0u8; 8]);
        let config = client_config_from_roots([garbage]);
        assert!(matches!(
            config,
            Err(Error::Tls(_)) | Err(Error::TlsConfig(_))
        ));
        assert!(matches!(
            client_config_from_roots([]),
            Err(Error::TlsConfig(_))
        ));
    }

    #[test]
    fn server_names() {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let opts = TlsOptions::new(Arc::new(config));
        assert!(matches!(
            opts.name_for("127.0.0.1:1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            opts.name_for("localhost:1"),
            Ok(ServerName::DnsName(_))
        ));
        let named = opts.clone().with_server_name("db.example.com");
        assert!(matches!(
            named.name_for("127.0.0.1:1"),
            Ok(ServerName::DnsName(_))
        ));
        let bad = opts.with_server_name("not a name");
        assert!(matches!(
            bad.name_for("127.0.0.1:1"),
            Err(Error::TlsConfig(_))
        ));
    }
}
