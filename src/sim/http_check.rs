//! The checks of the HTTP clients' records (see [`super::http`]), run
//! by [`super::check::all`] for each server incarnation:
//!
//! * every request is answered exactly once, or its connection was seen
//!   closed (by either side, or by a crash), or it was never sent whole;
//!   no response comes without a request; no `500`;
//! * an SSE stream delivers exactly the pushes the model sent to its hidden
//!   session, in order, each once (a wire-level differential on the
//!   stream), and all of them unless the stream was cut;
//! * fences in HTTP grants go into the fence check across crashes;
//! * HTTP holders enter the mutual exclusion check beside the TCP ones
//!   ([`leases`]).

use std::collections::BTreeMap;

use dflockd_model as model;

use super::check::{Held, Replay, Res};
use super::http::{grant, json, Kind, Req, Resp, PID_BASE};
use super::{Server, World};
use crate::engine::Input;
use crate::http::Op;
use crate::wire::{Key, Request, Space};

pub fn connections(
    world: &World,
    s: &Server,
    replay: &Replay,
    fences: &mut Vec<(u64, u64, u64)>,
) -> Result<(), String> {
    let recs = world.http.borrow();
    for (hid, c) in recs.iter().enumerate().filter(|(_, c)| c.inc == s.inc) {
        let what = |m: String| format!("incarnation {} HTTP connection {hid}: {m}", s.inc);
        if let Some(e) = c.errors.first() {
            return Err(what(e.clone()));
        }
        let p = c.pipe.borrow();
        let cut = c.client_closed || s.crashed || p.server_closed_at.is_some();
        drop(p);
        for (k, r) in c.reqs.iter().enumerate() {
            match &r.resp {
                None if !cut && r.sent_ms.is_some() => {
                    return Err(what(format!(
                        "request {k} ({:?}, sent at {:?} ms) never answered",
                        r.kind, r.sent_ms
                    )));
                }
                Some(resp) if resp.status >= 500 && resp.status != 503 => {
                    return Err(what(format!(
                        "request {k} ({:?}) answered {} {:?}",
                        r.kind, resp.status, resp.body
                    )));
                }
                Some(resp) => {
                    if let Some((_, tok, _)) = grant(resp) {
                        if let Some(f) = tok.get(..16).and_then(|t| u64::from_str_radix(t, 16).ok())
                        {
                            fences.push((s.inc, f, 0));
                        }
                    }
                }
                None => {}
            }
        }
        // An SSE stream: the events read are the model's pushes to the
        // stream's hidden session, in order, each once.
        let streamed = c.reqs.first().is_some_and(|r| {
            r.kind == Kind::Stream && r.resp.as_ref().is_some_and(|r| r.status == 200)
        });
        if !streamed {
            continue;
        }
        let pid = PID_BASE + hid as u64;
        let listening = |conn: u64| {
            matches!(
                replay.inputs.get(&conn).and_then(|i| i.first()),
                Some(Input::Request(Request::Listen { .. }))
            )
        };
        let Some(conn) = replay
            .connects
            .iter()
            .filter(|(g, conn)| *g == pid && listening(*conn))
            .map(|(_, conn)| *conn)
            .next_back()
        else {
            return Err(what("a stream answered 200 but no session listened".into()));
        };
        let expected = replay.out.get(&conn).cloned().unwrap_or_default();
        let slow = expected.iter().any(|o| {
            matches!(
                o,
                model::Output::Close {
                    why: model::Why::SlowConsumer,
                    ..
                }
            )
        });
        let want: Vec<&str> = expected
            .iter()
            .take_while(|o| !matches!(o, model::Output::Close { .. }))
            .filter_map(|o| match o {
                model::Output::Reply { line, .. } if line.starts_with("sig ") => {
                    Some(line.as_str())
                }
                _ => None,
            })
            .collect();
        let got: Vec<String> = c
            .events
            .iter()
            .map(|(ch, p, _)| format!("sig {ch} {p}"))
            .collect();
        if got.len() > want.len() {
            return Err(what(format!(
                "stream (session conn {conn}) read {} events, the model pushed {}: extra {:?}",
                got.len(),
                want.len(),
                &got[want.len()..]
            )));
        }
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            if g != w {
                return Err(what(format!(
                    "stream (session conn {conn}) event {k}: read {g:?}, model {w:?}"
                )));
            }
        }
        if !cut && !slow && !c.stream_ended && got.len() < want.len() {
            return Err(what(format!(
                "stream (session conn {conn}): {} events never arrived: first {:?}",
                want.len() - got.len(),
                want[got.len()]
            )));
        }
    }
    Ok(())
}

/// The leases HTTP clients observed, per resource, for the mutual
/// exclusion check. As for TCP, a client counts a grant as held from when
/// it read it until the earliest of: its lease counted from when the
/// request was sent, a release of its token sent (on any session), the
/// crash; and, for a session
/// (which a closed HTTP connection does not end): the `DELETE` it sent,
/// and the earliest the idle sweeper could have reaped the session (2 ×
/// the idle timeout after a request that surely refreshed it, with none
/// in between). Each interval lies within the server's own.
pub fn leases(world: &World, s: &Server) -> Vec<(Res, Held)> {
    let recs = world.http.borrow();
    let idle_ms = world.http_settings.session_idle_timeout_s * 2_000;
    let crash = s.ended_ms.unwrap_or(u64::MAX);
    // (client, session) -> [(request, connection)] in the client's order.
    let mut by_session: BTreeMap<(usize, &str), Vec<(&Req, usize)>> = BTreeMap::new();
    for (hid, c) in recs.iter().enumerate().filter(|(_, c)| c.inc == s.inc) {
        for r in &c.reqs {
            if let (Some(sess), Some(_)) = (&r.session, r.sent_ms) {
                by_session
                    .entry((c.client, sess.as_str()))
                    .or_default()
                    .push((r, hid));
            }
        }
    }
    // (resource, start, end, limit, token, connection, session's end,
    // session)
    type Mine = (Res, u64, u64, u64, String, usize, u64, String);
    let mut all: Vec<Mine> = Vec::new();
    for (_, mut reqs) in by_session {
        reqs.sort_by_key(|(r, _)| r.seq);
        let sent = |r: &Req| r.sent_ms.unwrap_or(0);
        // Requests that surely refreshed the session (they reached it).
        let touches: Vec<u64> = reqs
            .iter()
            .filter(|(r, _)| match (&r.kind, &r.resp) {
                (Kind::Lock { .. }, Some(resp)) => !matches!(resp.status, 400 | 410 | 500),
                (Kind::Ping, Some(resp)) => resp.status == 204,
                _ => false,
            })
            .map(|(r, _)| sent(r))
            .collect();
        let alive_until = |from: u64| {
            if idle_ms == 0 {
                return u64::MAX;
            }
            let mut until = from + idle_ms;
            for &t in touches.iter().filter(|&&t| t > from) {
                if t > until {
                    break;
                }
                until = until.max(t + idle_ms);
            }
            until
        };
        let deleted = |from: u64| {
            reqs.iter()
                .filter(|(r, _)| r.kind == Kind::Delete && sent(r) >= from)
                .map(|(r, _)| sent(r))
                .min()
                .unwrap_or(u64::MAX)
        };
        let mine = &mut all;
        // resource -> (enqueue sent, limit)
        let mut enqueued: BTreeMap<Res, (u64, u64)> = BTreeMap::new();
        for (r, hid) in &reqs {
            let Kind::Lock {
                sem,
                op,
                key,
                limit,
                ..
            } = &r.kind
            else {
                continue;
            };
            let id: Res = (*sem, key.as_bytes().to_vec());
            let t_sent = sent(r);
            match op {
                Op::Release | Op::Renew => {}
                Op::Acquire | Op::Enqueue | Op::Wait => {
                    let (from, lim) = match op {
                        Op::Enqueue => {
                            enqueued.insert(id.clone(), (t_sent, *limit));
                            (t_sent, *limit)
                        }
                        Op::Wait => enqueued.get(&id).copied().unwrap_or((t_sent, 1)),
                        _ => (t_sent, *limit),
                    };
                    let Some((_, tok, l)) = r.resp.as_ref().and_then(grant) else {
                        continue;
                    };
                    // A wait that reports its enqueue's grant: below.
                    if mine.iter().any(|m| m.4 == tok) {
                        continue;
                    }
                    let start = r.resp.as_ref().map_or(0, |resp| resp.read_ms);
                    let bound = alive_until(from).min(deleted(from));
                    let sess = r.session.clone().unwrap_or_default();
                    mine.push((id, start, from + l * 1000, lim, tok, *hid, bound, sess));
                }
            }
        }
        if std::env::var_os("SIM_DEBUG").is_some() {
            for (r, hid) in &reqs {
                eprintln!(
                    "http {hid} session {:?} #{} @{:?}: {:?} -> {:?}",
                    r.session, r.seq, r.sent_ms, r.kind, r.resp
                );
            }
        }
    }
    // Releases and renews, by anyone (a token is not tied to the session
    // it was granted to), and waits (which restart a granted record's
    // lease: semantics §5), in the order they were sent.
    let mut ops: Vec<&Req> = recs
        .iter()
        .filter(|c| c.inc == s.inc)
        .flat_map(|c| &c.reqs)
        .filter(|r| {
            r.sent_ms.is_some()
                && matches!(
                    r.kind,
                    Kind::Lock {
                        op: Op::Release | Op::Renew | Op::Wait,
                        ..
                    }
                )
        })
        .collect();
    ops.sort_by_key(|r| r.sent_ms);
    for r in ops {
        let Kind::Lock {
            sem,
            op,
            key,
            lease_s,
            token,
            ..
        } = &r.kind
        else {
            continue;
        };
        let id: Res = (*sem, key.as_bytes().to_vec());
        let t_sent = r.sent_ms.unwrap_or(0);
        if *op == Op::Wait {
            let sess = r.session.clone().unwrap_or_default();
            match r.resp.as_ref().map(|resp| (resp, grant(resp))) {
                // The enqueue's grant, its lease restarted: `L` from when
                // the wait was applied, so from no earlier than sent.
                Some((_, Some((_, tok, l)))) => {
                    if let Some(m) = all
                        .iter_mut()
                        .find(|m| m.4 == tok && m.1 < r.resp.as_ref().map_or(0, |x| x.read_ms))
                    {
                        m.2 = t_sent + l * 1000;
                    }
                }
                Some(_) => {}
                // Unanswered: it may have restarted it, for at least 1 s.
                None => {
                    if let Some(m) = all
                        .iter_mut()
                        .rev()
                        .find(|m| m.0 == id && m.7 == sess && m.1 <= t_sent)
                    {
                        m.2 = m.2.min(t_sent + 1000);
                    }
                }
            }
            continue;
        }
        let Some(m) = all
            .iter_mut()
            .rev()
            .find(|m| m.0 == id && Some(&m.4) == token.as_ref() && m.1 <= t_sent)
        else {
            continue;
        };
        if *op == Op::Release {
            m.2 = m.2.min(t_sent);
            continue;
        }
        let remaining = r
            .resp
            .as_ref()
            .filter(|resp| resp.status == 200)
            .and_then(|resp| super::http::json(resp)["remaining_s"].as_u64());
        match (remaining, &r.resp) {
            (Some(l), _) => m.2 = t_sent + l * 1000,
            (None, Some(_)) => {}
            (None, None) => {
                let l = lease_s.unwrap_or(s.cfg.default_lease_s);
                m.2 = m.2.min(t_sent + l * 1000);
            }
        }
    }
    let mut out = Vec::new();
    for (id, start, end, lim, _, hid, bound, _) in all {
        // The session's end bounds every lease of it, renewed or not.
        let end = end.min(crash).min(bound);
        if start < end {
            out.push((id, (start, end, lim, PID_BASE as usize + hid)));
        }
    }
    out
}

/// The protocol request a lock route stands for (as the front builds it).
fn protocol(kind: &Kind) -> Option<Request> {
    let Kind::Lock {
        sem,
        op,
        key,
        limit,
        lease_s,
        timeout_s,
        token,
    } = kind
    else {
        return None;
    };
    let space = if *sem { Space::Sem } else { Space::Lock };
    let key = Key::new(key.as_bytes()).ok()?;
    let token = || {
        token
            .clone()
            .unwrap_or_default()
            .into_bytes()
            .into_boxed_slice()
    };
    Some(match op {
        Op::Acquire => Request::Acquire {
            space,
            key,
            timeout_s: *timeout_s,
            limit: *limit,
            lease_s: *lease_s,
        },
        Op::Release => Request::Release {
            space,
            key,
            token: token(),
        },
        Op::Renew => Request::Renew {
            space,
            key,
            token: token(),
            lease_s: *lease_s,
        },
        Op::Enqueue => Request::Enqueue {
            space,
            key,
            limit: *limit,
            lease_s: *lease_s,
        },
        Op::Wait => Request::Wait {
            space,
            key,
            timeout_s: *timeout_s,
        },
    })
}

/// The protocol reply line an HTTP response of a lock route renders
/// (spec/http.md), or `None` for an answer the core did not give (`400`,
/// `410`: refused before the core, or the session ended under it).
fn as_line(resp: &Resp) -> Option<String> {
    let v = json(resp);
    match resp.status {
        204 => Some("ok".into()),
        200 => {
            if let Some((status, token, lease)) = grant(resp) {
                return Some(format!("{status} {token} {lease}"));
            }
            if let Some(n) = v["remaining_s"].as_u64() {
                return Some(format!("ok {n}"));
            }
            v["status"].as_str().map(str::to_owned)
        }
        400 | 410 => None,
        _ => Some(match v["error"].as_str()? {
            // No fence could be issued: the core answered `timeout`.
            "fence_unavailable" => "timeout".into(),
            "not_held" => "error".into(),
            other => format!("error_{other}"),
        }),
    }
}

/// The HTTP lock routes against the model: each session is found in the
/// journal (the connections that connected on an HTTP connection's task,
/// other than streams and publishes, are its `POST /v1/sessions` answered
/// there, in order); the requests applied on it are the ones its client
/// sent on it, in order (a request whose connection the client closed
/// may be applied late, or not at all), and each response is the model's
/// reply to it, rendered. A session answers `410` only once its core
/// connection was disconnected (its holdings and waiters gone with it).
pub fn sessions(world: &World, s: &Server, replay: &Replay) -> Result<(), String> {
    let recs = world.http.borrow();
    // session id -> core connection
    let mut conn_of: BTreeMap<&str, u64> = BTreeMap::new();
    for (hid, c) in recs.iter().enumerate().filter(|(_, c)| c.inc == s.inc) {
        let pid = PID_BASE + hid as u64;
        let first = |conn: u64| replay.inputs.get(&conn).and_then(|i| i.first());
        let conns: Vec<u64> = replay
            .connects
            .iter()
            .filter(|(g, conn)| {
                *g == pid
                    && !matches!(
                        first(*conn),
                        Some(Input::Request(
                            Request::Listen { .. } | Request::Signal { .. }
                        ))
                    )
            })
            .map(|(_, conn)| *conn)
            .collect();
        let ids: Vec<&str> = c
            .reqs
            .iter()
            .filter(|r| r.kind == Kind::Create)
            .filter_map(|r| r.resp.as_ref())
            .filter_map(|r| {
                let at = r.body.find("\"session_id\":\"")? + 14;
                r.body.get(at..at + 32)
            })
            .collect();
        // Creates not answered (the last ones on the connection) may have
        // connected too.
        let unanswered = c
            .reqs
            .iter()
            .filter(|r| r.kind == Kind::Create && r.resp.is_none())
            .count();
        let extra = conns.len().checked_sub(ids.len());
        if extra.is_none_or(|e| e > unanswered) {
            return Err(format!(
                "incarnation {} HTTP connection {hid}: {} sessions created, {} core connections connected",
                s.inc,
                ids.len(),
                conns.len()
            ));
        }
        for (id, conn) in ids.into_iter().zip(conns) {
            conn_of.insert(id, conn);
        }
    }
    // A session's requests, in its client's order.
    let mut by_session: BTreeMap<&str, Vec<&Req>> = BTreeMap::new();
    for c in recs.iter().filter(|c| c.inc == s.inc) {
        for r in &c.reqs {
            if let (Some(sess), true) = (&r.session, matches!(r.kind, Kind::Lock { .. })) {
                by_session.entry(sess.as_str()).or_default().push(r);
            }
        }
    }
    for (id, conn) in conn_of {
        let mut reqs = by_session.remove(id).unwrap_or_default();
        reqs.sort_by_key(|r| r.seq);
        let applied = replay.inputs.get(&conn).cloned().unwrap_or_default();
        let what = |m: String| {
            if std::env::var_os("SIM_DEBUG").is_some() {
                for r in &reqs {
                    eprintln!(
                        "  sent #{} @{:?}: {:?} -> {:?}",
                        r.seq, r.sent_ms, r.kind, r.resp
                    );
                }
                for a in &applied {
                    eprintln!("  applied {a:?}");
                }
                for o in replay.out.get(&conn).into_iter().flatten() {
                    eprintln!("  model: {o:?}");
                }
                eprintln!("  disconnected at {:?}", replay.disconnected.get(&conn));
            }
            format!("incarnation {} session conn {conn}: {m}", s.inc)
        };
        let replies: Vec<&str> = replay
            .out
            .get(&conn)
            .into_iter()
            .flatten()
            .take_while(|o| !matches!(o, model::Output::Close { .. }))
            .filter_map(|o| match o {
                model::Output::Reply { line, .. } => Some(line.as_str()),
                model::Output::Close { .. } => None,
            })
            .collect();
        for r in &reqs {
            let Some(resp) = r.resp.as_ref().filter(|resp| resp.status == 410) else {
                continue;
            };
            let gone = replay
                .disconnected
                .get(&conn)
                .is_some_and(|&at| at <= resp.read_ms);
            if !gone && !s.crashed {
                return Err(what(format!(
                    "{:?} answered 410 at {} ms, but the session's core connection was not disconnected",
                    r.kind, resp.read_ms
                )));
            }
        }
        let mut next = 0;
        // Requests passed over: unanswered ones may still be applied.
        let mut skipped: Vec<usize> = Vec::new();
        for (k, input) in applied.iter().enumerate() {
            let Input::Request(req) = input else {
                return Err(what(format!("applied {input:?}")));
            };
            let same = |r: &Req| protocol(&r.kind).as_ref() == Some(req);
            // In order: the next request the core answered, past those it
            // did not (refused before it, or abandoned by the client).
            let mut found = None;
            let mut abandoned = None;
            let mut stop = None;
            for (j, r) in reqs.iter().enumerate().skip(next) {
                if same(r) && r.resp.is_some() {
                    found = Some(j);
                    break;
                }
                if same(r) {
                    abandoned = abandoned.or(Some(j));
                    continue;
                }
                if let Some(line) = r.resp.as_ref().and_then(as_line) {
                    stop = Some((r, line));
                    break;
                }
            }
            // An abandoned request (passed over before, or in the way) may
            // be applied late, or never: of identical requests, the one
            // the reply fits.
            let late = skipped.iter().position(|&j| same(reqs[j]));
            let fits = |j: usize| {
                reqs[j].resp.as_ref().and_then(as_line).as_deref() == replies.get(k).copied()
            };
            let in_order = found.filter(|&j| fits(j) || (late.is_none() && abandoned.is_none()));
            if let Some(j) = in_order {
                skipped.extend((next..j).filter(|&i| reqs[i].resp.is_none()));
                next = j + 1;
            } else if let Some(i) = late {
                skipped.remove(i);
                continue;
            } else if let Some(a) = abandoned {
                skipped.extend((next..a).filter(|&i| reqs[i].resp.is_none()));
                next = a + 1;
                continue;
            } else {
                return Err(what(match stop {
                    Some((r, line)) => {
                        format!("{:?} answered {line:?} but was never applied", r.kind)
                    }
                    None => format!("applied request {k} {req:?}, never sent"),
                }));
            }
            let r = reqs[next - 1];
            if let Some(line) = r.resp.as_ref().and_then(as_line) {
                match replies.get(k) {
                    Some(want) if *want == line => {}
                    want => {
                        return Err(what(format!(
                            "request {k} {:?}: answered {line:?}, model {want:?}",
                            r.kind
                        )))
                    }
                }
            }
        }
        for r in &reqs[next..] {
            if let Some(line) = r.resp.as_ref().and_then(as_line) {
                return Err(what(format!(
                    "{:?} answered {line:?} but was never applied",
                    r.kind
                )));
            }
        }
    }
    Ok(())
}
