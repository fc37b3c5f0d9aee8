//! The HTTP REST front (reference §7, `spec/http.md`): another front of
//! the same engine, not another core. Every lock and semaphore route
//! becomes one [`Request`], applied through the engine's door
//! ([`Input::Request`]) exactly as the TCP front applies it; an HTTP
//! session is a core connection. It imports the engine and `net`, never the
//! TCP front.
//!
//! Shape: one accept loop ([`HttpFront::accept_loop`]) that applies the
//! per-IP connection cap and, with `--tls-cert`/`--tls-key`, the TLS
//! handshake of the TCP port (`net::tls::handshake`); one hyper HTTP/1 connection per
//! socket (smol-hyper I/O and timer); a matchit router; a session table
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
pub mod introspect;
mod lenient;
pub mod limits;

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
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ALLOW,
    AUTHORIZATION, CONTENT_TYPE, ORIGIN, VARY,
};
use hyper::{Method, StatusCode};
use log::Level;
use serde::Deserialize;
use serde_json::json;

use crate::config::ServerConfig;
use crate::core::Effect;
use crate::engine::mailbox::Delivery;
use crate::engine::{Engine, Input};
use crate::logging::{self, Cause};
use crate::rt;
use crate::sync::Arc;
use crate::wire::{Key, Reply, Request, Space, Status, MAX_LINE_BYTES, MAX_SECONDS};
use limits::{PerIp, RateLimiter};
use sessions::{CreateError, InFlight, Session, Sessions};

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

/// What a lock or semaphore route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Acquire,
    Release,
    Renew,
    Enqueue,
    Wait,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Release => "release",
            Op::Renew => "renew",
            Op::Enqueue => "enqueue",
            Op::Wait => "wait",
        }
    }
}

/// A matched route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Metrics,
    OpenApi,
    Stats,
    SessionCreate,
    Session,
    SessionPing,
    Key(Space, Op),
    /// `POST /v1/signals/{channel}`
    SignalPublish,
    /// `GET /v1/signals` (SSE)
    SignalStream,
    /// `GET /v1/keys/{key}`
    KeyView,
    /// `GET /v1/activity`
    Activity,
    /// `GET /ui`, `/ui/app.js`, `/ui/app.css`
    Ui(ui::Asset),
    /// `POST /v1/admin/voters` (cluster mode)
    VoterAdd,
    /// `DELETE /v1/admin/voters/{id}` (cluster mode)
    VoterRemove,
    /// `GET /v1/readindex` (cluster mode)
    ReadIndex,
}

/// Every route: path template, what it is, the methods it allows.
pub const ROUTES: &[(&str, Route, &[Method])] = &[
    ("/health", Route::Health, &[Method::GET, Method::HEAD]),
    ("/ready", Route::Ready, &[Method::GET, Method::HEAD]),
    ("/metrics", Route::Metrics, &[Method::GET, Method::HEAD]),
    (
        "/v1/openapi.json",
        Route::OpenApi,
        &[Method::GET, Method::HEAD],
    ),
    ("/v1/stats", Route::Stats, &[Method::GET, Method::HEAD]),
    ("/v1/sessions", Route::SessionCreate, &[Method::POST]),
    ("/v1/sessions/{id}", Route::Session, &[Method::DELETE]),
    (
        "/v1/sessions/{id}/ping",
        Route::SessionPing,
        &[Method::POST],
    ),
    (
        "/v1/locks/{key}",
        Route::Key(Space::Lock, Op::Acquire),
        &[Method::POST],
    ),
    (
        "/v1/locks/{key}/release",
        Route::Key(Space::Lock, Op::Release),
        &[Method::POST],
    ),
    (
        "/v1/locks/{key}/renew",
        Route::Key(Space::Lock, Op::Renew),
        &[Method::POST],
    ),
    (
        "/v1/locks/{key}/enqueue",
        Route::Key(Space::Lock, Op::Enqueue),
        &[Method::POST],
    ),
    (
        "/v1/locks/{key}/wait",
        Route::Key(Space::Lock, Op::Wait),
        &[Method::POST],
    ),
    (
        "/v1/semaphores/{key}",
        Route::Key(Space::Sem, Op::Acquire),
        &[Method::POST],
    ),
    (
        "/v1/semaphores/{key}/release",
        Route::Key(Space::Sem, Op::Release),
        &[Method::POST],
    ),
    (
        "/v1/semaphores/{key}/renew",
        Route::Key(Space::Sem, Op::Renew),
        &[Method::POST],
    ),
    (
        "/v1/semaphores/{key}/enqueue",
        Route::Key(Space::Sem, Op::Enqueue),
        &[Method::POST],
    ),
    (
        "/v1/semaphores/{key}/wait",
        Route::Key(Space::Sem, Op::Wait),
        &[Method::POST],
    ),
    // No HEAD: a stream is nothing without its body.
    ("/v1/signals", Route::SignalStream, &[Method::GET]),
    (
        "/v1/signals/{channel}",
        Route::SignalPublish,
        &[Method::POST],
    ),
    (
        "/v1/keys/{key}",
        Route::KeyView,
        &[Method::GET, Method::HEAD],
    ),
    (
        "/v1/activity",
        Route::Activity,
        &[Method::GET, Method::HEAD],
    ),
    ("/v1/admin/voters", Route::VoterAdd, &[Method::POST]),
    (
        "/v1/admin/voters/{id}",
        Route::VoterRemove,
        &[Method::DELETE],
    ),
    ("/v1/readindex", Route::ReadIndex, &[Method::GET]),
    (
        "/ui",
        Route::Ui(ui::Asset::Page),
        &[Method::GET, Method::HEAD],
    ),
    (
        "/ui/app.js",
        Route::Ui(ui::Asset::Script),
        &[Method::GET, Method::HEAD],
    ),
    (
        "/ui/app.css",
        Route::Ui(ui::Asset::Style),
        &[Method::GET, Method::HEAD],
    ),
];

type Router = matchit::Router<(Route, &'static [Method], &'static str)>;

fn router() -> Router {
    let mut r = matchit::Router::new();
    for (path, route, methods) in ROUTES {
        // The table is static and its templates distinct.
        r.insert(*path, (*route, *methods, *path))
            .expect("route templates are valid and distinct");
    }
    r
}

/// (method, route template, status) → (requests, seconds spent).
type RequestCounts = BTreeMap<(&'static str, &'static str, u16), (u64, f64)>;

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
    requests: std::sync::Mutex<RequestCounts>,
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
            requests: std::sync::Mutex::new(BTreeMap::new()),
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
            async move { Ok::<_, Infallible>(serve(&front, ip, &slot, req).await) }
        })
    };
    let io = lenient::Lenient::new(signals::WriteDeadline::new(io, signals::WRITE_DEADLINE));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(rt::HyperTimer)
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(smol_hyper::rt::FuturesIo::new(io), svc);
    futures_lite::future::or(
        async {
            let _ = conn.await;
        },
        signals::cut_when_stuck(&front, &slot),
    )
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

// ----- responses ---------------------------------------------------------

fn json_resp(status: StatusCode, body: &serde_json::Value) -> Resp {
    let mut text = body.to_string();
    text.push('\n');
    raw_resp(status, "application/json", text.into())
}

fn raw_resp(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    let mut r = hyper::Response::new(Either::Left(Full::new(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn no_content() -> Resp {
    let mut r = hyper::Response::new(Either::Left(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn error(status: StatusCode, code: &str, detail: &str) -> Resp {
    let body = if detail.is_empty() {
        json!({ "error": code })
    } else {
        json!({ "error": code, "detail": detail })
    };
    json_resp(status, &body)
}

fn bad_request(detail: &str) -> Resp {
    error(StatusCode::BAD_REQUEST, "bad_request", detail)
}

fn draining() -> Resp {
    error(StatusCode::SERVICE_UNAVAILABLE, "draining", "")
}

fn session_gone() -> Resp {
    error(StatusCode::GONE, "session_gone", "")
}

// ----- dispatch ----------------------------------------------------------

/// The CORS headers for a request with this `Origin` (reference §7.2):
/// none when CORS is off, the request has no `Origin`, or the origin is
/// not allowed.
fn cors_headers(front: &Front, headers: &HeaderMap) -> Option<HeaderMap> {
    let allowed = &front.settings.cors_allowed_origins;
    if allowed.is_empty() {
        return None;
    }
    let origin = headers.get(ORIGIN)?;
    let any = allowed.iter().any(|a| a == "*");
    if !any && !allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
        return None;
    }
    let mut h = HeaderMap::new();
    if any {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    } else {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(VARY, HeaderValue::from_static("Origin"));
    }
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_METHODS),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_HEADERS),
    );
    h.insert(
        ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(CORS_MAX_AGE),
    );
    Some(h)
}

/// The outermost layer: CORS (preflight answered here, before metrics,
/// rate limit and auth), then [`counted`].
async fn serve(
    front: &Arc<Front>,
    ip: IpAddr,
    slot: &Arc<signals::StreamSlot>,
    req: hyper::Request<Incoming>,
) -> Resp {
    if let Some(why) = lenient::Refusal::from_path(req.uri().path()) {
        return refused(ip, why);
    }
    let cors = cors_headers(front, req.headers());
    let preflight = !front.settings.cors_allowed_origins.is_empty()
        && req.method() == Method::OPTIONS
        && req
            .headers()
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|v| !v.is_empty());
    let mut resp = if preflight {
        no_content()
    } else {
        counted(front, ip, slot, req).await
    };
    if let Some(cors) = cors {
        resp.headers_mut().extend(cors);
    }
    resp
}

/// The answer to a request head the parser had to refuse (see
/// [`lenient`]): its status and a JSON body that says why; the connection
/// closes after it.
fn refused(ip: IpAddr, why: lenient::Refusal) -> Resp {
    let (status, code, detail) = why.answer();
    if let Some(suppressed) = logging::allow(Level::Warn, Cause::HttpRefused, Some(ip)) {
        log::warn!(peer:% = ip, status, reason = detail, suppressed; "HTTP request refused by the parser");
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = error(status, code, detail);
    r.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Handles one request and counts it for `/metrics`.
async fn counted(
    front: &Arc<Front>,
    ip: IpAddr,
    slot: &Arc<signals::StreamSlot>,
    req: hyper::Request<Incoming>,
) -> Resp {
    let start = Instant::now();
    // Bounded label values: the known methods, and route templates.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let template = front
        .router
        .at(req.uri().path())
        .map_or("unmatched", |m| m.value.2);
    let resp = if rate_limited(front, ip, req.uri().path()) {
        front.rate_limited.fetch_add(1, Ordering::Relaxed);
        warn_ip(
            Cause::RateLimited,
            ip,
            "HTTP request refused: --http-rate-limit-per-ip",
        );
        error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "")
    } else {
        handle(front, ip, slot, req).await
    };
    let mut requests = lock(&front.requests);
    let entry = requests
        .entry((method, template, resp.status().as_u16()))
        .or_insert((0, 0.0));
    entry.0 += 1;
    entry.1 += start.elapsed().as_secs_f64();
    resp
}

/// `--http-rate-limit-per-ip`: whether this request is over the limit of
/// its remote IP. `/health` and `/ready` are exempt.
fn rate_limited(front: &Front, ip: IpAddr, path: &str) -> bool {
    let Some(limiter) = &front.limiter else {
        return false;
    };
    if path == "/health" || path == "/ready" {
        return false;
    }
    !lock(limiter).allow(ip, Instant::now())
}

async fn handle(
    front: &Arc<Front>,
    ip: IpAddr,
    slot: &Arc<signals::StreamSlot>,
    req: hyper::Request<Incoming>,
) -> Resp {
    let path = req.uri().path().to_owned();
    let Ok(m) = front.router.at(&path) else {
        return error(StatusCode::NOT_FOUND, "not_found", "");
    };
    let (route, methods, _) = *m.value;
    let param = m
        .params
        .get("key")
        .or_else(|| m.params.get("id"))
        .or_else(|| m.params.get("channel"))
        .map(str::to_owned);
    if !methods.contains(req.method()) {
        let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "");
        if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
            r.headers_mut().insert(ALLOW, v);
        }
        return r;
    }
    let engine = &front.engine;
    match route {
        Route::Health => return json_resp(StatusCode::OK, &json!({"status": "ok"})),
        Route::Ready => {
            let fence_unready = engine.fence_status().and_then(|f| f.unready);
            return if engine.is_draining() {
                json_resp(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "draining"}),
                )
            } else if let Some(detail) = fence_unready {
                json_resp(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "fence_unavailable", "detail": detail}),
                )
            } else {
                json_resp(StatusCode::OK, &json!({"status": "ok"}))
            };
        }
        Route::OpenApi => {
            return raw_resp(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(OPENAPI.as_bytes()),
            )
        }
        Route::Ui(asset) => return ui::serve(asset),
        _ => {}
    }
    if engine.is_draining() {
        return draining();
    }
    if !authorized(front, &req) {
        warn_ip(
            Cause::AuthFailure,
            ip,
            "authentication failed: no valid bearer token",
        );
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "");
    }
    match route {
        Route::Metrics => metrics::render(front).await,
        Route::Stats => introspect::stats(front, req.uri().query()).await,
        Route::KeyView => match path_key(param.as_deref(), "key") {
            Ok(key) => introspect::key(front, key, req.uri().query()).await,
            Err(r) => *r,
        },
        Route::Activity => introspect::activity(front).await,
        Route::SessionCreate => match front.sessions.create(front, ip) {
            Ok(s) => json_resp(
                StatusCode::OK,
                &json!({
                    "session_id": s.id,
                    "idle_timeout_s": front.settings.session_idle_timeout_s,
                }),
            ),
            Err(e) => {
                if !matches!(e, CreateError::Random) {
                    warn_ip(
                        Cause::SessionCap,
                        ip,
                        "HTTP session refused: session cap reached",
                    );
                }
                create_error(e)
            }
        },
        Route::Session | Route::SessionPing => {
            let id = param.unwrap_or_default();
            if !is_session_id(&id) {
                return bad_request("invalid session id");
            }
            let Some(s) = front.sessions.get(&id) else {
                return session_gone();
            };
            if route == Route::Session {
                if front.sessions.kill(engine, &s) {
                    no_content()
                } else {
                    session_gone()
                }
            } else {
                s.touch();
                no_content()
            }
        }
        Route::Key(space, op) => {
            let key = match path_key(param.as_deref(), "key") {
                Ok(k) => k,
                Err(r) => return *r,
            };
            let session = match req.headers().get(SESSION_HEADER) {
                None => return bad_request("X-Dflockd-Session header required"),
                Some(v) => match v.to_str().ok().and_then(|v| front.sessions.get(v)) {
                    Some(s) => s,
                    None => return session_gone(),
                },
            };
            let body = match read_body(req.into_body()).await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let request = match build_request(space, op, key, &body) {
                Ok(r) => r,
                Err(detail) => return bad_request(&detail),
            };
            if engine.replicator().is_some() && crate::cluster::limit_too_large(&request) {
                return bad_request(&format!(
                    "limit: at most {} in cluster mode",
                    crate::cluster::MAX_SEMAPHORE_LIMIT
                ));
            }
            on_session(front, &session, op, request).await
        }
        Route::VoterAdd => admin::add_voter(front, ip, req).await,
        Route::VoterRemove => admin::remove_voter(front, ip, req, param).await,
        Route::ReadIndex => admin::read_index(front).await,
        Route::SignalPublish => signals::publish(front, param, req.into_body()).await,
        Route::SignalStream => match signals::stream_request(req.uri().query()) {
            Ok(request) => signals::subscribe(front, ip, slot, request),
            Err(detail) => bad_request(&detail),
        },
        Route::Health | Route::Ready | Route::OpenApi | Route::Ui(_) => unreachable_route(),
    }
}

/// A warning about a request from `ip`, rate-limited per (cause, peer).
pub(super) fn warn_ip(cause: Cause, ip: IpAddr, msg: &str) {
    if let Some(suppressed) = logging::allow(Level::Warn, cause, Some(ip)) {
        log::warn!(peer:% = ip, suppressed; "{msg}");
    }
}

/// Why a session (plain or an SSE stream's) could not be created.
fn create_error(e: CreateError) -> Resp {
    match e {
        CreateError::MaxSessions => error(StatusCode::SERVICE_UNAVAILABLE, "max_sessions", ""),
        CreateError::MaxSessionsPerIp => {
            error(StatusCode::SERVICE_UNAVAILABLE, "max_sessions_per_ip", "")
        }
        CreateError::Random => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "session_create_failed",
            "",
        ),
    }
}

/// Not reachable: those routes returned above. Answer 500 rather than panic.
fn unreachable_route() -> Resp {
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "")
}

fn authorized(front: &Front, req: &hyper::Request<Incoming>) -> bool {
    let Some(expected) = &front.auth_token else {
        return true;
    };
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let given = given.trim_ascii();
    // Constant time in the position of the first difference.
    let mut diff = u8::from(given.len() != expected.len());
    for i in 0..given.len().max(expected.len()) {
        diff |= given.get(i).copied().unwrap_or(0) ^ expected.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// 32 lowercase hex digits.
pub fn is_session_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A `{key}` or `{channel}` path segment (`what` names it in the 400):
/// percent-decoded, then held to the protocol's key rules.
pub(crate) fn path_key(segment: Option<&str>, what: &str) -> Result<Key, Box<Resp>> {
    match segment.map(percent_decode) {
        Some(Some(bytes)) => {
            Key::new(&bytes).map_err(|_| Box::new(bad_request(&format!("invalid {what}"))))
        }
        _ => Err(Box::new(bad_request(&format!(
            "invalid percent-encoding in {what}"
        )))),
    }
}

/// Decodes `%XX` escapes; `None` on a malformed escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

async fn read_body(body: Incoming) -> Result<Bytes, Box<Resp>> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.is::<http_body_util::LengthLimitError>() {
                Err(Box::new(bad_request("request body larger than 1 MiB")))
            } else {
                Err(Box::new(bad_request("cannot read request body")))
            }
        }
    }
}

// ----- request bodies ----------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    #[serde(default)]
    acquire_timeout_s: u64,
    #[serde(default)]
    lease_ttl_s: u64,
    limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
    #[serde(default)]
    lease_ttl_s: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueBody {
    #[serde(default)]
    lease_ttl_s: u64,
    limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitBody {
    #[serde(default)]
    timeout_s: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    token: String,
}

/// Parses exactly one JSON value of type `T` (trailing data is an error).
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("request body required".into());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = T::deserialize(&mut de).map_err(|e| format!("invalid JSON body: {e}"))?;
    de.end()
        .map_err(|_| "trailing data after the JSON body".to_string())?;
    Ok(v)
}

fn seconds(v: u64, what: &str) -> Result<u64, String> {
    if v > MAX_SECONDS {
        return Err(format!("{what} too large"));
    }
    Ok(v)
}

/// `lease_ttl_s` 0 or absent means the server default.
fn lease(v: u64) -> Result<Option<u64>, String> {
    Ok(match seconds(v, "lease_ttl_s")? {
        0 => None,
        l => Some(l),
    })
}

fn limit(space: Space, v: Option<u64>) -> Result<u64, String> {
    match (space, v) {
        (Space::Lock, None) => Ok(1),
        (Space::Lock, Some(_)) => Err("unknown field `limit`".into()),
        (Space::Sem, Some(n)) if n >= 1 => Ok(n),
        (Space::Sem, _) => Err("limit must be an integer ≥ 1".into()),
    }
}

fn token(t: String) -> Result<Box<[u8]>, String> {
    if t.is_empty() || t.len() > MAX_LINE_BYTES || t.chars().any(char::is_whitespace) {
        return Err("invalid token".into());
    }
    Ok(t.into_bytes().into_boxed_slice())
}

/// Maps a route and its body to the protocol request it stands for.
fn build_request(space: Space, op: Op, key: Key, body: &[u8]) -> Result<Request, String> {
    Ok(match op {
        Op::Acquire => {
            let b: AcquireBody = parse(body)?;
            Request::Acquire {
                space,
                key,
                timeout_s: seconds(b.acquire_timeout_s, "acquire_timeout_s")?,
                limit: limit(space, b.limit)?,
                lease_s: lease(b.lease_ttl_s)?,
            }
        }
        Op::Release => {
            let b: ReleaseBody = parse(body)?;
            Request::Release {
                space,
                key,
                token: token(b.token)?,
            }
        }
        Op::Renew => {
            let b: TokenBody = parse(body)?;
            Request::Renew {
                space,
                key,
                token: token(b.token)?,
                lease_s: lease(b.lease_ttl_s)?,
            }
        }
        Op::Enqueue => {
            // A lock enqueue may have an empty body (defaults).
            let b: EnqueueBody = if space == Space::Lock && body.iter().all(u8::is_ascii_whitespace)
            {
                EnqueueBody {
                    lease_ttl_s: 0,
                    limit: None,
                }
            } else {
                parse(body)?
            };
            Request::Enqueue {
                space,
                key,
                limit: limit(space, b.limit)?,
                lease_s: lease(b.lease_ttl_s)?,
            }
        }
        Op::Wait => {
            let b: WaitBody = parse(body)?;
            Request::Wait {
                space,
                key,
                timeout_s: seconds(b.timeout_s, "timeout_s")?,
            }
        }
    })
}

// ----- applying a request on a session -----------------------------------

/// Applies `request` on `session`'s core connection, as the TCP connection
/// handler does, waiting on the session's mailbox if the engine reports it
/// blocked.
async fn on_session(front: &Front, session: &Arc<Session>, op: Op, request: Request) -> Resp {
    let engine = &front.engine;
    let mut guard = InFlight::new(&front.sessions, engine, session);
    guard.take_turn().await;
    let (effects, outcome) = engine.apply(session.conn, Input::Request(request));
    if outcome.gone {
        return session_gone();
    }
    let mut reply = None;
    for e in effects {
        match e {
            Effect::Reply { reply: r, .. } => reply = Some(r),
            // A close comes with the reply it follows (draining).
            Effect::Close { .. } => {}
            // Sessions of lock routes never listen (only an SSE stream's
            // hidden session does), so nothing is pushed to them.
            Effect::Push { .. } => {}
        }
    }
    let reply = match reply {
        Some(r) => r,
        None if outcome.blocked => {
            // Blocked: the answer comes through the mailbox. If this future
            // is dropped meanwhile, the guard withdraws the request.
            guard.block();
            let r = loop {
                match session.mailbox.recv().await {
                    Delivery::Reply(_) if crate::planted::is(crate::planted::Bug::LongPollLost) => {
                    }
                    Delivery::Reply(r) => break r,
                    // Lock-route sessions never listen; no push comes here.
                    Delivery::Push { .. } => {}
                    Delivery::Close(_) | Delivery::Abort => {
                        guard.unblock();
                        front.sessions.kill(engine, session);
                        return if engine.is_draining() {
                            draining()
                        } else {
                            session_gone()
                        };
                    }
                }
            };
            guard.unblock();
            r
        }
        None => return unexpected(None),
    };
    if outcome.closed {
        front.sessions.kill(engine, session);
    }
    render(engine, op, reply)
}

/// Renders a protocol reply as an HTTP response (reference §7.5, §7.6).
fn render(engine: &Engine, op: Op, reply: Reply) -> Resp {
    let grant = |status: &str, token: crate::wire::Token, lease_s: u64| {
        json_resp(
            StatusCode::OK,
            &json!({"status": status, "token": token.to_string(), "lease_ttl_s": lease_s}),
        )
    };
    match reply {
        Reply::Granted { token, lease_s } => grant("ok", token, lease_s),
        Reply::Acquired { token, lease_s } => grant("acquired", token, lease_s),
        Reply::OkInt(l) if op == Op::Renew => {
            json_resp(StatusCode::OK, &json!({ "remaining_s": l }))
        }
        Reply::Ok if op == Op::Release => no_content(),
        // A cluster member that does not lead (spec/cluster.md §7).
        Reply::NotLeader { leader } => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "not_leader", "");
            if let Some(v) = leader.and_then(|a| HeaderValue::from_str(&a).ok()) {
                r.headers_mut().insert("x-dflockd-leader", v);
            }
            r
        }
        // No fence left to issue (semantics §6): the acquire could not be
        // granted whatever the queue did, so say why instead of `timeout`.
        Reply::Status(Status::Timeout)
            if matches!(op, Op::Acquire | Op::Wait) && engine.fence_headroom() == 0 =>
        {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "fence_unavailable",
                "no fencing token can be issued until the fence state file is written",
            )
        }
        Reply::Status(Status::Timeout) => json_resp(StatusCode::OK, &json!({"status": "timeout"})),
        Reply::Status(Status::Queued) => json_resp(StatusCode::OK, &json!({"status": "queued"})),
        Reply::Status(s) => {
            let (code, name) = match s {
                Status::ErrorMaxLocks => (StatusCode::SERVICE_UNAVAILABLE, "max_locks"),
                Status::ErrorMaxWaiters => (StatusCode::SERVICE_UNAVAILABLE, "max_waiters"),
                Status::ErrorLimitMismatch => (StatusCode::CONFLICT, "limit_mismatch"),
                Status::ErrorAlreadyEnqueued => (StatusCode::CONFLICT, "already_enqueued"),
                Status::ErrorNotEnqueued => (StatusCode::CONFLICT, "not_enqueued"),
                Status::ErrorLeaseExpired => (StatusCode::CONFLICT, "lease_expired"),
                Status::ErrorAuth => (StatusCode::UNAUTHORIZED, "unauthorized"),
                Status::ErrorDraining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
                // A blocked request cancelled by the start of a drain.
                Status::Error if engine.is_draining() => {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining")
                }
                // Only a release or renew of a token that is not held
                // answers a plain `error`; anything else is unexpected.
                Status::Error if matches!(op, Op::Release | Op::Renew) => {
                    return error(StatusCode::NOT_FOUND, "not_held", op.name())
                }
                Status::Error => return unexpected(Some(Reply::Status(s))),
                Status::Queued | Status::Timeout => (StatusCode::OK, "unreachable"),
            };
            error(code, name, "")
        }
        other => unexpected(Some(other)),
    }
}

/// `500 unexpected_protocol_response`, with the reply line (if any) as the
/// detail.
fn unexpected(reply: Option<Reply>) -> Resp {
    let line = match reply {
        Some(r) => {
            let mut line = Vec::new();
            crate::wire::encode_reply(&r, &mut line);
            String::from_utf8_lossy(&line).trim_end().to_owned()
        }
        None => String::new(),
    };
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "unexpected_protocol_response",
        &line,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"].as_str().map(|s| &s[..3]), Some("3.1"));
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                if method != "parameters" {
                    documented.push((path.clone(), method.to_uppercase()));
                }
            }
        }
        let mut routed: Vec<(String, String)> = Vec::new();
        for (path, _, methods) in ROUTES {
            for m in *methods {
                if *m != Method::HEAD {
                    routed.push((path.to_string(), m.as_str().to_string()));
                }
            }
        }
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some(&b"a/b"[..]));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff").as_deref(), Some(&[0xff][..]));
    }

    #[test]
    fn bodies_map_to_requests() {
        let k = || Key::new(b"k").expect("key");
        assert!(matches!(
            build_request(Space::Lock, Op::Acquire, k(), br#"{"acquire_timeout_s":5}"#),
            Ok(Request::Acquire {
                timeout_s: 5,
                limit: 1,
                lease_s: None,
                ..
            })
        ));
        assert!(build_request(Space::Lock, Op::Acquire, k(), br#"{"x":1}"#).is_err());
        assert!(build_request(Space::Lock, Op::Acquire, k(), br#"{} {}"#).is_err());
        assert!(build_request(
            Space::Lock,
            Op::Acquire,
            k(),
            br#"{"acquire_timeout_s":-1}"#
        )
        .is_err());
        assert!(build_request(Space::Sem, Op::Acquire, k(), br#"{"limit":0}"#).is_err());
        assert!(build_request(Space::Lock, Op::Enqueue, k(), b"").is_ok());
        assert!(build_request(Space::Sem, Op::Enqueue, k(), b"").is_err());
        assert!(build_request(Space::Lock, Op::Release, k(), br#"{"token":"a b"}"#).is_err());
    }

    proptest::proptest! {
        /// Peer input never panics the request mapping.
        #[test]
        fn arbitrary_input_never_panics(
            path in ".{0,64}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let _ = router().at(&path);
            let _ = percent_decode(&path);
            for space in [Space::Lock, Space::Sem] {
                for op in [Op::Acquire, Op::Release, Op::Renew, Op::Enqueue, Op::Wait] {
                    let key = Key::new(b"k").expect("key");
                    let _ = build_request(space, op, key, &body);
                }
            }
        }
    }
}
