//! The HTTP REST front (reference §7, `spec/http.md`): another front of
//! the same engine, not another core. Every lock and semaphore route
//! becomes one [`Request`](crate::wire::Request), applied through the engine's door
//! ([`Input::Request`](crate::engine::Input::Request)) exactly as the TCP front applies it; an HTTP
//! session is a core connection. It imports the engine and `net`, never the
//! TCP front.
//!
//! Shape: one accept loop ([`HttpFront::accept_loop`]) that applies the
//! per-IP connection cap and, with `--tls-cert`/`--tls-key`, the TLS
//! handshake of the TCP port (`net::tls::handshake`); one hyper HTTP/1 connection per
//! socket (`lenient::Lenient` as its I/O, the runtime's timer); a matchit router; a session table
//! with an idle sweeper ([`sessions`]); per-IP admission ([`limits`]).
//!
//! Signals ([`signals`]): `POST /v1/signals/{channel}` publishes with the
//! protocol's `signal`; `GET /v1/signals` is a Server-Sent Events stream fed
//! by a hidden session that issued `listen`.
//!
//! Views ([`introspect`], [`ui`]): `GET /v1/stats` (whole, or a bounded
//! top list), `GET /v1/keys/{key}`, `GET /v1/activity`, and the dashboard
//! at `/ui`; every read of the core in bounded slices.
//!
//! Request path (reference §7.2): CORS → metrics → per-IP rate limit →
//! bearer auth → route/404/405 → handler. Everything answers JSON
//! (`Content-Type: application/json`, `X-Content-Type-Options: nosniff`,
//! body + `\n`) except `/metrics`. Errors are `{"error":"<code>","detail":".."}`.

mod admin;
mod dispatch;
pub mod introspect;
mod lenient;
pub mod limits;
mod locks;
mod respond;
mod routes;

pub use crate::config::HttpSettings;
mod metrics;
pub mod sessions;
pub mod signals;
pub mod ui;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};

use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::rt;
use crate::sync::Arc;
pub(crate) use dispatch::path_key;
use dispatch::serve;
pub use dispatch::{is_session_id, percent_decode};
use dispatch::{parse, read_body, warn_ip};
use limits::{PerIp, RateLimiter};
use respond::{bad_request, create_error, draining, error, json_resp, raw_resp, unexpected};
use routes::{router, Router};
pub use routes::{Op, Route, ROUTES};
use sessions::Sessions;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The OpenAPI 3.1 document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../spec/openapi.json");
/// The session header of every lock and semaphore route.
pub const SESSION_HEADER: &str = "x-dflockd-session";

/// Methods announced to CORS clients.
const CORS_METHODS: &str = "GET, POST, DELETE, OPTIONS";
/// Request headers announced to CORS clients.
const CORS_HEADERS: &str = "Authorization, Content-Type, X-Dflockd-Session";
/// Seconds a browser may cache a preflight answer.
const CORS_MAX_AGE: &str = "300";

/// A response: a whole body, or an SSE stream.
type Resp = hyper::Response<Either<Full<Bytes>, signals::SseBody>>;

/// (method, route template, status) → (requests, seconds spent).
type RequestCounts = BTreeMap<(&'static str, &'static str, u16), (u64, f64)>;

/// The request counts as the request path keeps them: one slot per
/// (route, method) pair, found by index (a route's place in [`ROUTES`],
/// one more for a path no route matches; a method's in
/// [`routes::METHOD_LABELS`]), holding (status, requests, seconds) per
/// status seen. O(1) to find the slot, then a scan of the few statuses a
/// route answers; no string is compared or hashed per request.
struct RequestTally {
    slots: Vec<Vec<(u16, u64, f64)>>,
}

impl RequestTally {
    const METHODS: usize = routes::METHOD_LABELS.len();

    fn new() -> RequestTally {
        RequestTally {
            slots: vec![Vec::new(); (ROUTES.len() + 1) * Self::METHODS],
        }
    }

    /// Counts one request; `route` is `None` for an unmatched path.
    fn record(&mut self, route: Option<usize>, method: usize, status: u16, secs: f64) {
        let route = route.map_or(ROUTES.len(), |r| r.min(ROUTES.len()));
        let method = method.min(Self::METHODS - 1);
        let slot = &mut self.slots[route * Self::METHODS + method];
        match slot.iter_mut().find(|(s, _, _)| *s == status) {
            Some((_, n, sum)) => {
                *n += 1;
                *sum += secs;
            }
            None => slot.push((status, 1, secs)),
        }
    }

    /// The counts by label, for `/metrics`.
    fn counts(&self) -> RequestCounts {
        let mut out = RequestCounts::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let (route, method) = (i / Self::METHODS, i % Self::METHODS);
            let template = ROUTES.get(route).map_or("unmatched", |r| r.0);
            for &(status, n, sum) in slot {
                out.insert((routes::METHOD_LABELS[method], template, status), (n, sum));
            }
        }
        out
    }
}

/// The HTTP front of one server.
pub struct HttpFront {
    engine: Arc<Engine>,
    settings: HttpSettings,
    /// `--auth-token`: every route but `/health`, `/ready` and the OpenAPI
    /// document needs it as a bearer token.
    auth_token: Option<Vec<u8>>,
    /// `--admin-token` (cluster mode): the membership routes need it in
    /// `X-Dflockd-Admin`; without it they are off.
    admin_token: Option<Vec<u8>>,
    tls: Option<futures_rustls::TlsAcceptor>,
    tls_handshake_timeout: Duration,
    sessions: Sessions,
    router: Router,
    started: Instant,
    /// Per (method, route template, status): request count and seconds.
    requests: std::sync::Mutex<RequestTally>,
    /// `--http-rate-limit-per-ip`; `None` = unlimited.
    limiter: Option<std::sync::Mutex<RateLimiter>>,
    /// Open HTTP connections per remote IP (capped by
    /// `--http-max-connections-per-ip`).
    conns: std::sync::Mutex<PerIp>,
    /// Requests refused with 429.
    rate_limited: AtomicU64,
    /// Connections closed at accept by the per-IP cap.
    conns_rejected: AtomicU64,
    /// TLS handshakes that failed, were late, or were cut by shutdown.
    tls_failures: AtomicU64,
    /// History and caches of `/v1/activity`.
    activity: introspect::Activity,
}

/// The front's state, as the route handlers call it.
type Front = HttpFront;

/// An open HTTP connection counted in [`Front::conns`]; uncounted on drop.
struct ConnSlot {
    front: Arc<Front>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        lock(&self.front.conns).remove(self.ip);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HttpFront {
    /// The HTTP front of a server configured with `cfg` (whose `http` is
    /// set), on `engine`.
    pub fn new(engine: Arc<Engine>, cfg: &ServerConfig) -> Arc<HttpFront> {
        let settings = cfg.http.clone().unwrap_or_default();
        let limiter = (settings.rate_limit_per_ip > 0).then(|| {
            std::sync::Mutex::new(RateLimiter::new(
                settings.rate_limit_per_ip,
                settings.rate_limit_burst,
                Instant::now(),
            ))
        });
        Arc::new(HttpFront {
            engine,
            settings,
            auth_token: cfg.core.auth_token.clone(),
            admin_token: cfg
                .cluster
                .as_ref()
                .and_then(|c| c.member.admin_token.as_ref())
                .map(|t| t.as_bytes().to_vec()),
            tls: cfg.tls.clone().map(futures_rustls::TlsAcceptor::from),
            tls_handshake_timeout: Duration::from_secs(cfg.tls_handshake_timeout_s),
            sessions: Sessions::default(),
            router: router(),
            started: Instant::now(),
            requests: std::sync::Mutex::new(RequestTally::new()),
            limiter,
            conns: std::sync::Mutex::new(PerIp::default()),
            rate_limited: AtomicU64::new(0),
            conns_rejected: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            activity: introspect::Activity::default(),
        })
    }

    /// Accepts HTTP connections until the task is dropped (when the server
    /// stops), handing each to `spawn` as a task that takes the socket over
    /// on whichever runtime thread runs it. It keeps accepting while the
    /// server drains, so `/ready` and the 503 `draining` answers are served
    /// (Decision D10).
    pub async fn accept_loop(this: &Arc<Self>, listener: rt::net::TcpListener, spawn: &rt::Spawn) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                rt::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let ip = peer.ip();
            // `--http-max-connections-per-ip`: closed at once, nothing written.
            if !lock(&this.conns).try_add(ip, this.settings.max_connections_per_ip) {
                this.conns_rejected.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                crate::net::warn_cap(
                    ip,
                    "--http-max-connections-per-ip",
                    this.settings.max_connections_per_ip,
                );
                continue;
            }
            let slot = ConnSlot {
                front: this.clone(),
                ip,
            };
            let front = this.clone();
            spawn(Box::pin(async move {
                let _slot = slot;
                let stream = match rt::net::TcpStream::from_std(stream) {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!(error:% = e; "cannot register an accepted HTTP connection");
                        return;
                    }
                };
                let _ = stream.set_nodelay(true);
                match &front.tls {
                    None => serve_connection(front.clone(), ip, stream).await,
                    Some(acceptor) => {
                        let deadline = front.tls_handshake_timeout;
                        let handshake = crate::net::tls::handshake(
                            &front.engine,
                            stream,
                            Some(peer),
                            acceptor,
                            deadline,
                        );
                        match handshake.await {
                            Some(tls) => serve_connection(front.clone(), ip, tls).await,
                            None => {
                                front.tls_failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }));
        }
    }
}

/// Serves HTTP/1 on one connection (plain or TLS) from `ip`. Every write
/// has [`signals::WRITE_DEADLINE`]; an SSE stream on the connection may cut
/// it short ([`signals::cut_when_stuck`]). The simulator (`src/sim`) runs
/// it on its simulated connections (hence no `Send` bound here: the
/// accept loop's spawn asks for it).
pub(crate) async fn serve_connection<I>(front: Arc<Front>, ip: IpAddr, io: I)
where
    I: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let slot = Arc::new(signals::StreamSlot::default());
    let svc = {
        let front = front.clone();
        let slot = slot.clone();
        hyper::service::service_fn(move |req| {
            let front = front.clone();
            let slot = slot.clone();
            async move { Ok::<_, Infallible>(serve(&front, ip, &slot, Box::new(req)).await) }
        })
    };
    let io = lenient::Lenient::new(signals::WriteDeadline::new(io, signals::WRITE_DEADLINE));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(rt::HyperTimer::default())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(io, svc);
    // `cut_when_stuck` beside the connection, polled only once the
    // connection has opened a stream: the slot is set by the stream route,
    // which runs inside `conn` (this task), so until then there is nothing
    // to watch, and polling it after every wake of the task (it listens on
    // an `event_listener`, whose registration takes a lock) cost about 1%
    // of an HTTP request's CPU time.
    let mut conn = std::pin::pin!(conn);
    let mut cut = std::pin::pin!(signals::cut_when_stuck(&front, &slot));
    std::future::poll_fn(|cx| {
        if std::future::Future::poll(conn.as_mut(), cx).is_ready() {
            return std::task::Poll::Ready(());
        }
        if slot.armed() && std::future::Future::poll(cut.as_mut(), cx).is_ready() {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    })
    .await;
}

/// Reaps sessions idle for more than 2 × the idle timeout (Decision D9);
/// one task per front.
pub async fn sweeper(front: Arc<Front>) {
    let idle = front.settings.session_idle_timeout_s;
    if idle == 0 {
        return;
    }
    let max_idle = Duration::from_secs(idle.saturating_mul(2));
    let period = Duration::from_millis((idle * 1000 / 4).clamp(100, 30_000));
    loop {
        rt::sleep(period).await;
        front.sessions.sweep(&front.engine, max_idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_by_route_method_and_status() {
        let mut t = RequestTally::new();
        let stats = ROUTES
            .iter()
            .position(|r| r.0 == "/v1/stats")
            .expect("route");
        let get = routes::method_index(&hyper::Method::GET);
        t.record(Some(stats), get, 200, 0.5);
        t.record(Some(stats), get, 200, 0.25);
        t.record(Some(stats), get, 429, 0.125);
        t.record(None, routes::method_index(&hyper::Method::TRACE), 404, 1.0);
        // An index out of range counts as unmatched, never panics.
        t.record(Some(usize::MAX), usize::MAX, 404, 1.0);
        let counts = t.counts();
        assert_eq!(counts.get(&("GET", "/v1/stats", 200)), Some(&(2, 0.75)));
        assert_eq!(counts.get(&("GET", "/v1/stats", 429)), Some(&(1, 0.125)));
        assert_eq!(counts.get(&("other", "unmatched", 404)), Some(&(2, 2.0)));
        assert_eq!(counts.len(), 3);
    }
}
