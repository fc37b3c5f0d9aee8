//! The lock and semaphore routes: a route and its JSON body become one
//! protocol [`Request`], applied on the session's core connection through
//! the engine's door exactly as the TCP front applies a line; the reply
//! becomes an HTTP response (reference §7.5, §7.6). A blocked request waits
//! on the session's mailbox; a dropped HTTP request withdraws it
//! ([`InFlight`]).

use hyper::header::HeaderValue;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::dispatch::parse;
use super::respond::{draining, error, json_resp, no_content, raw_resp, session_gone, unexpected};
use super::routes::Op;
use super::sessions::{InFlight, Session};
use super::{Front, Resp};
use crate::core::Effect;
use crate::engine::mailbox::Delivery;
use crate::engine::{Engine, Input};
use crate::sync::Arc;
use crate::wire::{Key, Reply, Request, Space, Status, MAX_LINE_BYTES, MAX_SECONDS};

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

/// `char::is_whitespace` of an ASCII byte: tab to carriage return, space.
fn ascii_white(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ')
}

fn token(t: String) -> Result<Box<[u8]>, String> {
    // A token is ASCII hex: its bytes are checked without decoding chars.
    let white = if t.is_ascii() {
        t.bytes().any(ascii_white)
    } else {
        t.chars().any(char::is_whitespace)
    };
    if t.is_empty() || t.len() > MAX_LINE_BYTES || white {
        return Err("invalid token".into());
    }
    Ok(t.into_bytes().into_boxed_slice())
}

/// Maps a route and its body to the protocol request it stands for.
pub(super) fn build_request(
    space: Space,
    op: Op,
    key: Key,
    body: &[u8],
) -> Result<Request, String> {
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

/// Applies `request` on `session`'s core connection, as the TCP connection
/// handler does, waiting on the session's mailbox if the engine reports it
/// blocked.
pub(super) async fn on_session(
    front: &Front,
    session: &Arc<Session>,
    op: Op,
    request: Request,
) -> Resp {
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

/// A grant's JSON body, written directly rather than through a
/// `serde_json::Value` (a map, its keys and the token as strings: about
/// ten allocations on every acquire) or `format!` (its argument machinery
/// and padded hex cost more than the rest of the body): the bytes `json!`
/// renders, keys in its sorted order, as a test checks. `status` is a
/// fixed word and a token is hex digits, so nothing needs escaping.
fn grant_body(status: &'static str, token: crate::wire::Token, lease_s: u64) -> Vec<u8> {
    const HEAD: &[u8] = b"{\"lease_ttl_s\":";
    const STATUS: &[u8] = b",\"status\":\"";
    const TOKEN: &[u8] = b"\",\"token\":\"";
    const TAIL: &[u8] = b"\"}\n";
    let mut digits = [0u8; 20];
    let lease = crate::wire::decimal(&mut digits, lease_s);
    // Exactly the length: `Bytes` takes a full vector over as it is, but
    // one with spare capacity costs it another allocation.
    let len = HEAD.len() + lease.len() + STATUS.len() + status.len() + TOKEN.len() + 32;
    let mut b = Vec::with_capacity(len + TAIL.len());
    b.extend_from_slice(HEAD);
    b.extend_from_slice(lease);
    b.extend_from_slice(STATUS);
    b.extend_from_slice(status.as_bytes());
    b.extend_from_slice(TOKEN);
    token.write_hex(&mut b);
    b.extend_from_slice(TAIL);
    b
}

/// Renders a protocol reply as an HTTP response (reference §7.5, §7.6).
fn render(engine: &Engine, op: Op, reply: Reply) -> Resp {
    let grant = |status: &'static str, token: crate::wire::Token, lease_s: u64| {
        raw_resp(
            StatusCode::OK,
            "application/json",
            grant_body(status, token, lease_s).into(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{percent_decode, routes::router};

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

    #[test]
    fn ascii_white_is_char_whitespace() {
        for b in 0..=0x7f_u8 {
            assert_eq!(ascii_white(b), char::from(b).is_whitespace(), "{b:#x}");
        }
        assert!(token("ab\u{2028}cd".into()).is_err());
        assert!(token("ab\u{a0}".into()).is_err());
        assert!(token("a\u{b}b".into()).is_err());
        assert!(token("é".into()).is_ok());
    }

    #[test]
    fn a_grant_body_is_what_json_renders() {
        let mut cases = vec![
            ("ok", 1, 0, 30),
            ("acquired", u64::MAX, u64::MAX, 0),
            ("ok", 0x1234, 0xdead_beef, u64::MAX),
            ("acquired", 0, 0x0123_4567_89ab_cdef, 9),
            ("ok", 0xfedc_ba98_7654_3210, 1, 10),
        ];
        // Every decimal length, and its edges.
        let mut p: u64 = 1;
        for _ in 0..20 {
            cases.push(("ok", p, !p, p - 1));
            cases.push(("acquired", !p, p, p));
            p = p.saturating_mul(10);
        }
        for (status, fence, salt, lease_s) in cases {
            let token = crate::wire::Token { fence, salt };
            let mut expected = json!({
                "status": status,
                "token": token.to_string(),
                "lease_ttl_s": lease_s,
            })
            .to_string();
            expected.push('\n');
            let body = grant_body(status, token, lease_s);
            assert_eq!(body.len(), body.capacity());
            assert_eq!(body, expected.into_bytes());
        }
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
