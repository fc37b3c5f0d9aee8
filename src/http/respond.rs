//! Building responses: every answer is JSON (`Content-Type:
//! application/json`, `X-Content-Type-Options: nosniff`, body + `\n`)
//! except `/metrics` and the dashboard's assets, and every error is
//! `{"error":"<code>","detail":".."}` with the status and code the
//! reference gives it (§7.6). One place for the shapes, so the routes only
//! choose which.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use serde_json::json;

use super::sessions::CreateError;
use super::Resp;
use crate::wire::Reply;

/// Made at compile time: a name given as a string is parsed on every
/// insert.
const NOSNIFF: HeaderName = HeaderName::from_static("x-content-type-options");

pub(super) fn json_resp(status: StatusCode, body: &serde_json::Value) -> Resp {
    let mut text = body.to_string();
    text.push('\n');
    raw_resp(status, "application/json", text.into())
}

pub(super) fn raw_resp(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    let mut r = hyper::Response::new(Either::Left(Full::new(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(NOSNIFF, HeaderValue::from_static("nosniff"));
    r
}

pub(super) fn no_content() -> Resp {
    let mut r = hyper::Response::new(Either::Left(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r.headers_mut()
        .insert(NOSNIFF, HeaderValue::from_static("nosniff"));
    r
}

pub(super) fn error(status: StatusCode, code: &str, detail: &str) -> Resp {
    let body = if detail.is_empty() {
        json!({ "error": code })
    } else {
        json!({ "error": code, "detail": detail })
    };
    json_resp(status, &body)
}

pub(super) fn bad_request(detail: &str) -> Resp {
    error(StatusCode::BAD_REQUEST, "bad_request", detail)
}

pub(super) fn draining() -> Resp {
    error(StatusCode::SERVICE_UNAVAILABLE, "draining", "")
}

pub(super) fn session_gone() -> Resp {
    error(StatusCode::GONE, "session_gone", "")
}
/// Why a session (plain or an SSE stream's) could not be created.
pub(super) fn create_error(e: CreateError) -> Resp {
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
pub(super) fn unreachable_route() -> Resp {
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "")
}

/// `500 unexpected_protocol_response`, with the reply line (if any) as the
/// detail.
pub(super) fn unexpected(reply: Option<Reply>) -> Resp {
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
