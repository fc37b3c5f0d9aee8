//! The route table of the HTTP front: every path template, what it is
//! ([`Route`]) and the methods it allows, in one static table
//! ([`ROUTES`]) from which the matchit router is built and against which
//! the OpenAPI document is checked (a route added here and not documented
//! there fails `openapi_lists_exactly_the_routes`).

use hyper::Method;

use super::ui;
use crate::wire::Space;

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
    pub(super) fn name(self) -> &'static str {
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

/// Routes to a route's index in [`ROUTES`].
pub(super) type Router = matchit::Router<usize>;

pub(super) fn router() -> Router {
    let mut r = matchit::Router::new();
    for (i, (path, _, _)) in ROUTES.iter().enumerate() {
        // The table is static and its templates distinct.
        r.insert(*path, i)
            .expect("route templates are valid and distinct");
    }
    r
}

/// The labels of the methods a request is counted by in `/metrics`
/// (bounded label values), indexed by [`method_index`]; the last, `other`,
/// counts every other method.
pub(super) const METHOD_LABELS: [&str; 8] = [
    "GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "other",
];

/// The index of `m`'s label in [`METHOD_LABELS`].
pub(super) fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::DELETE => 3,
        Method::PUT => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each counted method's label is its own name; any other is `other`.
    #[test]
    fn method_labels_name_their_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::DELETE,
            Method::PUT,
            Method::PATCH,
            Method::OPTIONS,
        ] {
            assert_eq!(METHOD_LABELS[method_index(&m)], m.as_str());
        }
        let odd = Method::from_bytes(b"PURGE").expect("a token");
        for m in [Method::TRACE, Method::CONNECT, odd] {
            assert_eq!(METHOD_LABELS[method_index(&m)], "other");
        }
    }
    use crate::http::OPENAPI;

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
}
