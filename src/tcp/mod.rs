//! The TCP front: the line protocol's listener and one `conn::Handler`
//! per connection.
//!
//! The accept loop applies admission (`--max-connections`, per-IP cap:
//! accept, then close without a byte), sets TCP keepalive, performs the TLS
//! handshake when configured and hands the stream to the connection
//! handler, which talks to the engine only. Nothing here decides a
//! protocol outcome; it imports the engine and `net`, never the HTTP front.

pub mod conn;
#[cfg(test)]
mod conn_tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use event_listener::Event;
use log::Level;

use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::logging::{self, Cause};
use crate::net::{self, per_ip::PerIp};
use crate::rt;
use crate::sync::Arc;

/// The TCP front of one server.
pub struct TcpFront {
    engine: Arc<Engine>,
    timeouts: conn::Timeouts,
    max_connections: usize,
    max_connections_per_ip: usize,
    tls: Option<futures_rustls::TlsAcceptor>,
    tls_handshake_timeout: Duration,
    per_ip: std::sync::Mutex<PerIp>,
    /// Fires each time a connection ends.
    conn_closed: Event,
}

impl TcpFront {
    pub fn new(engine: Arc<Engine>, cfg: &ServerConfig) -> Arc<TcpFront> {
        Arc::new(TcpFront {
            engine,
            timeouts: conn::Timeouts::of(cfg),
            max_connections: cfg.max_connections,
            max_connections_per_ip: cfg.max_connections_per_ip,
            tls: cfg.tls.clone().map(futures_rustls::TlsAcceptor::from),
            tls_handshake_timeout: Duration::from_secs(cfg.tls_handshake_timeout_s),
            per_ip: std::sync::Mutex::new(PerIp::default()),
            conn_closed: Event::new(),
        })
    }

    /// Open connections, TLS handshakes included.
    pub fn open(&self) -> usize {
        self.engine.fronts.tcp_open.load(Ordering::SeqCst)
    }

    /// Accepts connections until the drain begins, handing each to
    /// `spawn` as a task that takes the socket over on whichever runtime
    /// thread runs it (see `server::Placement`).
    pub async fn accept_loop(this: &Arc<Self>, listener: rt::net::TcpListener, spawn: &rt::Spawn) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted =
                futures_lite::future::or(async { Some(listener.accept().await) }, async {
                    this.engine.drain_begun().await;
                    None
                })
                .await;
            let Some(accepted) = accepted else { return };
            let (stream, peer) = match accepted {
                Ok(x) => {
                    backoff = Duration::from_millis(5);
                    x
                }
                Err(e) => {
                    // Out of file descriptors, usually: the operator's to fix.
                    if let Some(suppressed) = logging::allow(Level::Warn, Cause::Accept, None) {
                        log::warn!(error:% = e, suppressed; "cannot accept a TCP connection");
                    }
                    rt::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            if !this.admit(peer.ip()) {
                drop(stream);
                continue;
            }
            let front = this.clone();
            spawn(Box::pin(async move {
                match rt::net::TcpStream::from_std(stream) {
                    Ok(stream) => front.serve(stream, peer).await,
                    Err(e) => log::warn!(error:% = e; "cannot register an accepted TCP connection"),
                }
                front.release_admission(peer.ip());
            }));
        }
    }

    /// Serves one admitted connection: TLS first when configured.
    async fn serve(&self, stream: rt::net::TcpStream, peer: SocketAddr) {
        net::tune(&stream);
        match &self.tls {
            None => {
                let fd = stream.lendable();
                conn::serve_stream(&self.engine, self.timeouts, stream, Some(peer), fd).await
            }
            Some(acceptor) => {
                let deadline = self.tls_handshake_timeout;
                let handshake =
                    net::tls::handshake(&self.engine, stream, Some(peer), acceptor, deadline);
                if let Some(mut tls) = handshake.await {
                    conn::serve_stream(&self.engine, self.timeouts, &mut tls, Some(peer), None)
                        .await;
                    // Best effort, without waiting: a close_notify alert if
                    // the socket takes it at once, then the FIN.
                    let close = futures_lite::AsyncWriteExt::close(&mut tls);
                    let _ = futures_lite::future::poll_once(close).await;
                }
            }
        }
    }

    /// `--max-connections` and `--max-connections-per-ip`: a connection over
    /// a cap is closed without a byte written.
    fn admit(&self, ip: IpAddr) -> bool {
        let fronts = &self.engine.fronts;
        let max = self.max_connections;
        let prev = fronts.tcp_open.fetch_add(1, Ordering::SeqCst);
        if max > 0 && prev >= max {
            fronts.tcp_open.fetch_sub(1, Ordering::SeqCst);
            net::warn_cap(ip, "--max-connections", max);
            return false;
        }
        let max_ip = self.max_connections_per_ip;
        if max_ip > 0 {
            let admitted = self
                .per_ip
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_add(ip, max_ip);
            if !admitted {
                fronts.tcp_open.fetch_sub(1, Ordering::SeqCst);
                net::warn_cap(ip, "--max-connections-per-ip", max_ip);
                return false;
            }
        }
        fronts.tcp_accepted.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn release_admission(&self, ip: IpAddr) {
        if self.max_connections_per_ip > 0 {
            self.per_ip
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(ip);
        }
        self.engine.fronts.tcp_open.fetch_sub(1, Ordering::SeqCst);
        self.conn_closed.notify(usize::MAX);
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let l = self.conn_closed.listen();
            if self.open() == 0 {
                return;
            }
            l.await;
        }
    }
}
