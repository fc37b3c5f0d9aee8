//! What both fronts share below the protocol: TLS (loading the
//! certificate, the handshake), counting connections and sessions per
//! remote IP, socket options, and the log line of a connection refused at
//! a cap. Neither front imports the other; both import this.

pub mod per_ip;
pub mod tls;

use std::net::IpAddr;
use std::time::Duration;

use log::Level;

use crate::logging::{self, Cause};

/// Socket options for every accepted connection on either port:
/// no Nagle delay, and keepalive so that vanished peers are noticed.
pub fn tune(stream: &impl std::os::fd::AsFd) {
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = sock.set_tcp_keepalive(&keepalive);
}

/// A connection from `ip` was closed at accept by the cap `flag`
/// (rate-limited per peer).
pub fn warn_cap(ip: IpAddr, flag: &'static str, limit: usize) {
    if let Some(suppressed) = logging::allow(Level::Warn, Cause::ConnectionCap, Some(ip)) {
        log::warn!(
            peer:% = ip, cap = flag, limit, suppressed;
            "connection closed at accept: connection cap reached"
        );
    }
}
