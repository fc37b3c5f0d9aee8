//! The command-line conformance runner, shared by `dflockd conformance`
//! and the `dflockd-conformance` binary: runs the transcripts of
//! `spec/conformance/` (the copy built into the binary, or `--dir`) and
//! the built-in timed cases against any dflockd-compatible server at
//! `--addr`, prints one line per case and the summary
//! `N passed, N failed, N skipped`, and exits 1 if any case failed
//! (2 for a usage error).
//!
//! Scenarios that need server flags (`!server-flags:`) are skipped: the
//! tool cannot restart a server it did not start. `--skip-file` lists
//! further cases to skip, one per line as `name  # reason`; a skip without
//! a reason is an error. With `--auth-token`, every connection the runner
//! opens goes through a local relay that authenticates first, so the
//! transcripts run unchanged against a server that requires a token.
//!
//! With `--tls` the runner still speaks plaintext, to a local relay that
//! carries each connection over TLS to `--addr` (authenticating first with
//! `--auth-token`). `--tls-ca FILE` verifies the server certificate against
//! that PEM file (and implies `--tls`); without it the certificate is not
//! verified (traffic is encrypted, the peer is not authenticated), which
//! suits a test server with a throwaway self-signed certificate.
//! `--tls-server-name` names the certificate to expect (default: the host
//! of `--addr`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::{
    builtin_cases, load_dir, load_embedded, run_case, CaseReport, CaseResult, ExpectedFailures,
    Outcome, Report, RunOptions, Scenario, Target,
};
use crate::client::{client_config_from_ca_file, TlsOptions};

/// Run the dflockd conformance suite against a running server.
#[derive(FromArgs)]
struct Args {
    /// server address, HOST:PORT
    #[argh(option)]
    addr: String,
    /// authenticate every connection with this token first
    #[argh(option)]
    auth_token: Option<String>,
    /// connect over TLS (verified with --tls-ca; unverified without it)
    #[argh(switch)]
    tls: bool,
    /// PEM file of CA certificates to verify the server with (implies --tls)
    #[argh(option)]
    tls_ca: Option<PathBuf>,
    /// name the server certificate must carry (default: the host of --addr)
    #[argh(option)]
    tls_server_name: Option<String>,
    /// file of cases to skip: `name  # reason` per line
    #[argh(option)]
    skip_file: Option<PathBuf>,
    /// directory of transcripts to run instead of the copy of
    /// spec/conformance built into this binary
    #[argh(option)]
    dir: Option<PathBuf>,
    /// file of cases expected to fail (`name reason` per line, as
    /// spec/conformance/expected-failures.txt)
    #[argh(option)]
    expected_failures: Option<PathBuf>,
    /// seconds to wait for each reply line (default 5)
    #[argh(option, default = "5")]
    read_timeout: u64,
}

/// Runs the conformance command with `args` (the words after the command
/// name); `command` is what `--help` and errors call it. Prints the report
/// on standard output and returns the exit status: 0 when every case
/// passed or was skipped, 1 when one failed, 2 for a usage error.
pub fn main(command: &str, args: &[&str]) -> u8 {
    let args = match Args::from_args(&[command], args) {
        Ok(a) => a,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    0
                }
                Err(()) => {
                    eprintln!("{}", early.output);
                    2
                }
            };
        }
    };
    match run(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("{command}: {e}");
            2
        }
    }
}

/// Runs the suite; `Ok(false)` when a case failed.
fn run(args: &Args) -> Result<bool, String> {
    let server = resolve(&args.addr)?;
    let skips = match &args.skip_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            parse_skips(&path.display().to_string(), &text)?
        }
        None => BTreeMap::new(),
    };
    let expected = match &args.expected_failures {
        Some(path) => ExpectedFailures::load(path).map_err(|e| e.to_string())?,
        None => ExpectedFailures::none(),
    };
    let addr = match (tls_options(args)?, &args.auth_token) {
        (Some(tls), token) => tls_relay::start(&args.addr, tls, token.clone())?,
        (None, Some(token)) => start_auth_relay(server, token.clone())?,
        (None, None) => server,
    };
    let opts = RunOptions {
        read_timeout: Duration::from_secs(args.read_timeout.max(1)),
        ..RunOptions::default()
    };
    let target = Target {
        addr,
        factory: None,
    };

    let mut cases = match &args.dir {
        Some(dir) => load_dir(dir).map_err(|e| e.to_string())?,
        None => load_embedded(),
    };
    cases.extend(builtin_cases().into_iter().map(Ok));
    let name_of = |c: &Result<Scenario, CaseResult>| match c {
        Ok(s) => s.name.clone(),
        Err(r) => r.name.clone(),
    };
    let names: Vec<String> = cases.iter().map(name_of).collect();
    for (name, (_, line, origin)) in &skips {
        if !names.contains(name) {
            return Err(format!("{origin}:{line}: `{name}` names no case"));
        }
    }
    for name in expected.names() {
        if !names.iter().any(|n| n == name) {
            return Err(format!("expected failure `{name}` names no case"));
        }
    }

    let mut report = Report::default();
    for case in cases {
        let result = match case {
            Ok(scenario) => match skips.get(&scenario.name) {
                Some((reason, _, _)) => CaseResult {
                    name: scenario.name.clone(),
                    outcome: Outcome::Skipped(reason.clone()),
                },
                None => run_case(&scenario, &target, &opts),
            },
            Err(result) => result,
        };
        let case = CaseReport {
            expected_failure: expected.reason(&result.name).map(String::from),
            result,
        };
        println!("{case}");
        report.cases.push(case);
    }
    let s = report.summary();
    let failed = s.failed + s.unexpected_passes;
    let mut line = format!(
        "{} passed, {failed} failed, {} skipped",
        s.passed, s.skipped
    );
    if s.expected_failures > 0 {
        line.push_str(&format!(" ({} expected failures)", s.expected_failures));
    }
    println!("{line}");
    Ok(s.ok())
}

/// The TLS settings the flags ask for, if any.
fn tls_options(args: &Args) -> Result<Option<TlsOptions>, String> {
    if !args.tls && args.tls_ca.is_none() {
        if args.tls_server_name.is_some() {
            return Err("--tls-server-name needs --tls or --tls-ca".into());
        }
        return Ok(None);
    }
    let config = match &args.tls_ca {
        Some(ca) => client_config_from_ca_file(ca).map_err(|e| format!("--tls-ca: {e}"))?,
        None => {
            eprintln!("warning: --tls without --tls-ca: the server certificate is not verified");
            tls_relay::unverified_config()?
        }
    };
    let mut opts = TlsOptions::new(config);
    opts.server_name = args.tls_server_name.clone();
    Ok(Some(opts))
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("--addr {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {addr}: resolves to no address"))
}

/// Name → (reason, line, origin). Lines are `name  # reason`; blank lines
/// and lines starting with `#` are ignored.
fn parse_skips(
    origin: &str,
    text: &str,
) -> Result<BTreeMap<String, (String, usize, String)>, String> {
    let mut skips = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once('#').unwrap_or((line, ""));
        let (name, reason) = (name.trim(), reason.trim());
        if name.contains(char::is_whitespace) {
            return Err(format!(
                "{origin}:{}: `{name}`: one case name per line, then `# reason`",
                i + 1
            ));
        }
        if reason.is_empty() {
            return Err(format!(
                "{origin}:{}: skip of `{name}` has no reason (write `{name}  # why`)",
                i + 1
            ));
        }
        if skips
            .insert(
                name.to_string(),
                (reason.to_string(), i + 1, origin.to_string()),
            )
            .is_some()
        {
            return Err(format!("{origin}:{}: `{name}` is listed twice", i + 1));
        }
    }
    Ok(skips)
}

/// Starts a loopback relay: each accepted connection is joined to a new
/// connection to `server` that has already sent `auth` and read `ok`. If
/// authentication fails, the client's connection is closed at once.
fn start_auth_relay(server: SocketAddr, token: String) -> Result<SocketAddr, String> {
    // Check the token once up front, for a clear error.
    authed(server, &token).map_err(|e| format!("authenticating to {server}: {e}"))?;
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
    /// dial or auth closes the accepted connection at once. The first
    /// connection is made up front, for a clear error.
    pub fn start(
        server: &str,
        tls: TlsOptions,
        token: Option<String>,
    ) -> Result<SocketAddr, String> {
        let server = server.to_string();
        smol::block_on(upstream(&server, &tls, token.as_deref()))
            .map_err(|e| format!("connecting to {server} over TLS: {e}"))?;
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

#[cfg(test)]
mod tests {
    use super::parse_skips;

    #[test]
    fn skip_file() {
        let skips = parse_skips(
            "s",
            "# comment\n\nsignal-basic.txt   # no pub/sub\ntimed-lease-expiry #slow\n",
        )
        .unwrap();
        assert_eq!(skips["signal-basic.txt"].0, "no pub/sub");
        assert_eq!(skips["timed-lease-expiry"].0, "slow");
        assert!(parse_skips("s", "a.txt\n")
            .unwrap_err()
            .contains("s:1: skip of `a.txt` has no reason"));
        assert!(parse_skips("s", "a.txt #  \n")
            .unwrap_err()
            .contains("no reason"));
        assert!(parse_skips("s", "a.txt b # r\n")
            .unwrap_err()
            .contains("one case"));
        assert!(parse_skips("s", "a #r\na # s\n")
            .unwrap_err()
            .contains("twice"));
    }
}
