//! The request path of the HTTP front (reference §7.2): CORS (a preflight
//! is answered here) → metrics count → per-IP rate limit → bearer auth →
//! route, 404 or 405 → handler. Also what every handler reads from a
//! request: its path segments (percent-decoded keys, session ids) and its
//! body (bounded by [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES), parsed as
//! exactly one JSON value).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ALLOW,
    AUTHORIZATION, ORIGIN, VARY,
};
use hyper::{Method, StatusCode};
use log::Level;
use serde::Deserialize;
use serde_json::json;

use super::locks::{build_request, on_session};
use super::respond::{
    bad_request, create_error, draining, error, json_resp, no_content, raw_resp, session_gone,
    unreachable_route,
};
use super::routes::Route;
use super::sessions::CreateError;
use super::{
    admin, introspect, lenient, lock, metrics, routes, signals, ui, Front, Resp, CORS_HEADERS,
    CORS_MAX_AGE, CORS_METHODS, MAX_BODY_BYTES, OPENAPI, ROUTES, SESSION_HEADER,
};
use crate::logging::{self, Cause};
use crate::sync::Arc;
use crate::wire::Key;

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

/// A request as the handlers pass it on: boxed, so that each layer's future
/// holds a pointer instead of the request's 248 bytes (an async function
/// keeps its argument and the local it moves it to, and every `.await` on a
/// layer copies that layer's whole future into its caller's).
pub(super) type Req = Box<hyper::Request<Incoming>>;

/// The outermost layer: CORS (preflight answered here, before metrics,
/// rate limit and auth), then the request counted for `/metrics` around
/// [`handle`] (one async function, not two: each level of async call
/// costs copies of its future and of the response on the way out).
pub(super) async fn serve(
    front: &Arc<Front>,
    ip: IpAddr,
    slot: &Arc<signals::StreamSlot>,
    req: Req,
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
        // Counted for `/metrics`.
        let start = Instant::now();
        let method = routes::method_index(req.method());
        // The route is looked up once, here, for the count's label and for
        // the handler.
        let matched = {
            let path = req.uri().path();
            front.router.at(path).ok().map(|m| Matched {
                index: *m.value,
                // A template has at most one parameter.
                param: m.params.iter().next().map(|(_, v)| within(path, v)),
            })
        };
        let index = matched.as_ref().map(|m| m.index);
        let resp = if rate_limited(front, ip, req.uri().path()) {
            front.rate_limited.fetch_add(1, Ordering::Relaxed);
            warn_ip(
                Cause::RateLimited,
                ip,
                "HTTP request refused: --http-rate-limit-per-ip",
            );
            error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "")
        } else {
            handle(front, ip, slot, req, matched).await
        };
        let secs = start.elapsed().as_secs_f64();
        lock(&front.requests).record(index, method, resp.status().as_u16(), secs);
        resp
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

/// Where `part`, a slice of `whole` (a path parameter of the path the
/// router matched), lies in it: kept as a range, so that the request can
/// move on while its parameter is still known without a copy.
fn within(whole: &str, part: &str) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    let range = start..start.wrapping_add(part.len());
    // The router hands out slices of the path it was given; were that ever
    // not so, the parameter is taken as empty (a 400, never a wrong key).
    if whole.get(range.clone()) == Some(part) {
        range
    } else {
        0..0
    }
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

/// A request's route, found once by [`serve`]: its index in [`ROUTES`]
/// (its route, methods and template, the metrics label) and where its path
/// parameter lies in the path, if it has one.
struct Matched {
    index: usize,
    param: Option<std::ops::Range<usize>>,
}

async fn handle(
    front: &Arc<Front>,
    ip: IpAddr,
    slot: &Arc<signals::StreamSlot>,
    req: Req,
    matched: Option<Matched>,
) -> Resp {
    let Some((&(_, route, methods), param)) =
        matched.and_then(|m| Some((ROUTES.get(m.index)?, m.param)))
    else {
        return error(StatusCode::NOT_FOUND, "not_found", "");
    };
    let param: Option<&str> = param.and_then(|r| req.uri().path().get(r));
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
        // The routes off the lock path are boxed: the future of this
        // function is as large as its largest await, and hyper moves the
        // request's future by value (about 3 KiB with these inline, copied
        // several times per request).
        Route::Metrics => Box::pin(metrics::render(front)).await,
        Route::Stats => Box::pin(introspect::stats(front, req.uri().query())).await,
        Route::KeyView => match path_key(param, "key") {
            Ok(key) => Box::pin(introspect::key(front, key, req.uri().query())).await,
            Err(r) => *r,
        },
        Route::Activity => Box::pin(introspect::activity(front)).await,
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
            if !is_session_id(id) {
                return bad_request("invalid session id");
            }
            let Some(s) = front.sessions.get(id) else {
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
            let key = match path_key(param, "key") {
                Ok(k) => k,
                Err(r) => return *r,
            };
            // A name made once: looking a header up by a string parses
            // the name first.
            const SESSION: HeaderName = HeaderName::from_static(SESSION_HEADER);
            let session = match req.headers().get(&SESSION) {
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
        Route::VoterAdd => Box::pin(admin::add_voter(front, ip, *req)).await,
        Route::VoterRemove => {
            let id = param.map(str::to_owned);
            Box::pin(admin::remove_voter(front, ip, *req, id)).await
        }
        Route::ReadIndex => Box::pin(admin::read_index(front)).await,
        Route::SignalPublish => {
            let channel = param.map(str::to_owned);
            Box::pin(signals::publish(front, channel, req.into_body())).await
        }
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
    let bad_escape = || Box::new(bad_request(&format!("invalid percent-encoding in {what}")));
    let segment = segment.ok_or_else(bad_escape)?;
    let decoded;
    // A segment without an escape is its own decoding: no copy to make.
    let bytes = if segment.contains('%') {
        decoded = percent_decode(segment).ok_or_else(bad_escape)?;
        &decoded[..]
    } else {
        segment.as_bytes()
    };
    Key::new(bytes).map_err(|_| Box::new(bad_request(&format!("invalid {what}"))))
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

/// The whole body, at most [`MAX_BODY_BYTES`] (a frame that would pass
/// the limit is refused before the rest is read, as `http_body_util`'s
/// `Limited` does). Written out rather than `Limited` + `collect`, which
/// queue even a body of one frame (every lock request's) in a `VecDeque`:
/// one frame is handed on as it came, more are joined.
pub(super) async fn read_body(mut body: Incoming) -> Result<Bytes, Box<Resp>> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Box::new(bad_request("cannot read request body")));
        };
        // Trailers carry no body bytes.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > MAX_BODY_BYTES {
            return Err(Box::new(bad_request("request body larger than 1 MiB")));
        }
        if let Some(j) = &mut joined {
            j.extend_from_slice(&data);
        } else if let Some(f) = first.take() {
            let mut j = BytesMut::with_capacity(f.len() + data.len());
            j.extend_from_slice(&f);
            j.extend_from_slice(&data);
            joined = Some(j);
        } else {
            first = Some(data);
        }
    }
    Ok(match joined {
        Some(j) => j.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// Parses exactly one JSON value of type `T` (trailing data is an error).
pub(super) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("request body required".into());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = T::deserialize(&mut de).map_err(|e| format!("invalid JSON body: {e}"))?;
    de.end()
        .map_err(|_| "trailing data after the JSON body".to_string())?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_is_found_where_it_lies_in_the_path() {
        let path = "/v1/locks/abc/release";
        assert_eq!(within(path, &path[10..13]), 10..13);
        assert_eq!(&path[within(path, &path[10..13])], "abc");
        // Not a slice of the path: an empty parameter, not a wrong one.
        assert_eq!(within(path, "abc"), 0..0);
        assert_eq!(within(path, ""), 0..0);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some(&b"a/b"[..]));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff").as_deref(), Some(&[0xff][..]));
    }
}
