//! The HTTP client of the integration tests. Requests go through `ureq`, a
//! real HTTP/1.1 client, so the server is exercised the way HTTP clients
//! talk to it (their framing, their headers). [`raw`] sends hand-written
//! bytes for what a well-behaved client will not send: malformed requests,
//! a connection dropped mid-request, a request whose path it would
//! normalise or refuse.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Server, IO_TIMEOUT};
use dflockd::http::HttpSettings;
use dflockd::server::ServerConfig;

/// One whole HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error response with this status and code.
    #[track_caller]
    pub fn err(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.json()["error"], code, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
    }
}

/// A ureq agent that reports every status as a response (not an error),
/// keeps no idle connections (tests count connections per IP), and gives
/// up after [`IO_TIMEOUT`].
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .timeout_global(Some(IO_TIMEOUT))
        .build()
        .into()
}

/// One request through ureq. `path` is sent as written (percent-escapes
/// included).
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(body.to_vec()).expect("a valid request");
    let resp = match agent().run(req) {
        Ok(r) => r,
        // The server may answer (and close) before it has read a huge
        // body; ureq reports the failed upload. Ask the raw way instead,
        // which reads the answer the server did send.
        Err(ureq::Error::Io(_)) if body.len() > 1 << 16 => {
            return read_raw(send_raw(addr, &raw(method, path, headers, body)));
        }
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = resp.into_body();
    let body = body
        .with_config()
        .limit(16 << 20)
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
    Resp {
        status,
        headers,
        body,
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    call(addr, "GET", path, &[], b"")
}

/// The bytes of a request, written by hand (`Connection: close`).
pub fn raw(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// Opens a connection and writes `bytes` (as much as the server takes).
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may answer (and close) before taking a huge body.
    let _ = s.write_all(bytes);
    s
}

/// The status code and headers of a response head (without its blank line).
pub fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// A server with the HTTP front on (default settings, then `configure`),
/// and its HTTP address.
pub fn start(configure: impl FnOnce(&mut ServerConfig)) -> (Server, SocketAddr) {
    let server = Server::start(|cfg| {
        cfg.http = Some(HttpSettings::default());
        configure(cfg);
    });
    let addr = server.handle().http_addr().expect("HTTP is on");
    (server, addr)
}

/// Reads a `Connection: close` response to its end.
pub fn read_raw(mut s: TcpStream) -> Resp {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&buf)));
    let (status, headers) = parse_head(&buf[..end]);
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&buf[end + 4..]).into_owned(),
    }
}
