//! The checks of a finished run (see the module doc of [`super`]).

use std::collections::{BTreeMap, HashMap};

use dflockd_model as model;

use super::World;
use crate::core::{CloseReason, CoreConfig};
use crate::engine::{Input, Record};
use crate::wire::{Request, Space};

pub fn all(world: &World) -> Result<(), String> {
    let mut fences: Vec<(u64, u64, u64)> = Vec::new();
    let servers = world.servers.borrow();
    let conns = world.conns.borrow();
    for s in servers.iter() {
        let journal = s.journal.lock().map_err(|_| "journal poisoned")?.clone();
        let end = s.ended_ms.unwrap_or(world.end_at);
        let replay = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            replay(&s.cfg, s.started_ms, &journal, end, world.late_max_ms + 2)
        }))
        .map_err(|p| {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!(
                "incarnation {}: the model refused the journal: {why}",
                s.inc
            )
        })??;
        for (pid, c) in conns.iter().enumerate().filter(|(_, c)| c.inc == s.inc) {
            let Some(&conn) = replay.conn_of.get(&(pid as u64)) else {
                if !c.sent.is_empty() && !s.crashed && c.pipe.borrow().server_closed_at.is_none() {
                    return Err(format!("connection {pid} was never registered"));
                }
                continue;
            };
            let what = |m: String| {
                if std::env::var_os("SIM_DEBUG").is_some() {
                    let p = c.pipe.borrow();
                    eprintln!("pipe {pid}: opened {} ms", c.opened_ms);
                    for (r, t) in c.decoded() {
                        eprintln!("  sent @{t}: {r:?}");
                    }
                    for (l, t) in &c.lines {
                        eprintln!("  read @{t}: {l:?}");
                    }
                    eprintln!(
                        "  client_closed {} eof {} server_closed_at {:?} full {} pending down {}",
                        c.client_closed,
                        c.eof,
                        p.server_closed_at,
                        p.server_write_stuck,
                        p.down.len()
                    );
                    let of_conn = |r: &Record| matches!(r, Record::Entry(e) if e.conn.0 == conn);
                    for (g, e) in journal.iter().filter(|(_, r)| of_conn(r)) {
                        eprintln!("  journal {g}: {e:?}");
                    }
                    for o in replay.out.get(&conn).into_iter().flatten() {
                        eprintln!("  model: {o:?}");
                    }
                }
                format!("incarnation {} conn {conn} (pipe {pid}): {m}", s.inc)
            };
            let expected = replay.out.get(&conn).cloned().unwrap_or_default();
            let closed_by_core = expected
                .iter()
                .any(|o| matches!(o, model::Output::Close { .. }));
            // Up to the core's close: nothing after it is written (the
            // connection stays the core's until its handler disconnects,
            // and may be routed pushes meanwhile).
            let lines: Vec<&str> = expected
                .iter()
                .take_while(|o| !matches!(o, model::Output::Close { .. }))
                .filter_map(|o| match o {
                    model::Output::Reply { line, .. } => Some(line.as_str()),
                    model::Output::Close { .. } => None,
                })
                .collect();
            // 1. What the client read is what the model says: one stream
            // of replies and pushes, in the core's order (protocol §9.3:
            // per subscriber, pushes in the order the signals were
            // processed; a publisher's own push before its `ok <n>`).
            let slow = expected.iter().any(|o| {
                matches!(
                    o,
                    model::Output::Close {
                        why: model::Why::SlowConsumer,
                        ..
                    }
                )
            });
            let want = &lines;
            let got: Vec<&str> = c.lines.iter().map(|(l, _)| l.as_str()).collect();
            if got.len() > want.len() {
                return Err(what(format!(
                    "read {} lines, the model sent {}: extra {:?}",
                    got.len(),
                    want.len(),
                    &got[want.len()..]
                )));
            }
            for (k, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                if !same_line(g, w) {
                    return Err(what(format!("line {k}: read {g:?}, model {w:?}")));
                }
            }
            // 2. The door applied what the client sent, in order.
            let sent = c.decoded();
            let applied = replay.inputs.get(&conn).cloned().unwrap_or_default();
            if applied.len() > sent.len() {
                return Err(what(format!(
                    "{} requests applied, {} sent",
                    applied.len(),
                    sent.len()
                )));
            }
            for (k, (a, (s, _))) in applied.iter().zip(&sent).enumerate() {
                let same = match (a, s) {
                    (Input::Request(x), Ok(y)) => x == y,
                    (Input::Invalid(x), Err(y)) => x == y,
                    _ => false,
                };
                if !same {
                    return Err(what(format!("request {k}: applied {a:?}, sent {s:?}")));
                }
            }
            // 3. Nothing lost where nothing excuses a loss: every line the
            // model sent was read (exactly once, with 1.), and every
            // request sent was applied. Excuses: the client closed its end,
            // the process crashed, a write outlasted `--write-timeout` on a
            // reader that stalled (protocol §2.7), and, for a subscriber
            // the core closed as slow, its queued pushes (§9.4: they "may
            // or may not be written before the close").
            let p = c.pipe.borrow();
            let excused = c.client_closed || s.crashed || p.server_write_stuck;
            if !excused {
                let missing = &want[got.len()..];
                let allowed = slow && missing.iter().all(|l| l.starts_with("sig "));
                if !missing.is_empty() && !allowed {
                    return Err(what(format!(
                        "{} lines never arrived (exactly once): first {:?}",
                        missing.len(),
                        missing[0]
                    )));
                }
                if !closed_by_core && applied.len() < sent.len() && !replay.blocked(conn) {
                    return Err(what(format!(
                        "{} requests sent were never applied",
                        sent.len() - applied.len()
                    )));
                }
                if p.server_closed_at.is_some() && !closed_by_core {
                    return Err(what("the server dropped a connection the core kept".into()));
                }
            }
            drop(p);
            // Fences, for the check across incarnations.
            for (line, _) in &c.lines {
                if let Some(f) = fence_of(line) {
                    fences.push((s.inc, f, 0));
                }
            }
        }
        super::http_check::connections(world, s, &replay, &mut fences)?;
        super::http_check::sessions(world, s, &replay)?;
        exclusion(world, s, &replay)?;
    }
    // 4. Fences strictly increase across crashes.
    let mut by_inc: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (inc, f, _) in fences {
        let e = by_inc.entry(inc).or_insert((u64::MAX, 0));
        e.0 = e.0.min(f);
        e.1 = e.1.max(f);
    }
    let mut top = 0u64;
    for (inc, (lo, hi)) in by_inc {
        if lo <= top {
            return Err(format!(
                "incarnation {inc} issued fence {lo}, not above {top} issued before a crash"
            ));
        }
        top = hi;
    }
    Ok(())
}

fn same_line(a: &str, b: &str) -> bool {
    a == b
        || match (a.strip_prefix("ok {"), b.strip_prefix("ok {")) {
            (Some(x), Some(y)) => {
                serde_json::from_str::<serde_json::Value>(&format!("{{{x}")).ok()
                    == serde_json::from_str::<serde_json::Value>(&format!("{{{y}")).ok()
            }
            _ => false,
        }
}

fn fence_of(line: &str) -> Option<u64> {
    let mut w = line.split(' ');
    match (w.next(), w.next(), w.next()) {
        (Some("ok" | "acquired"), Some(t), Some(_)) if t.len() == 32 => {
            u64::from_str_radix(&t[..16], 16).ok()
        }
        _ => None,
    }
}

/// The journal replayed through the model.
pub struct Replay {
    /// Each connection's outputs, in order.
    pub out: HashMap<u64, Vec<model::Output>>,
    /// Each connection's requests as applied.
    pub inputs: HashMap<u64, Vec<Input>>,
    /// Pipe index → connection id.
    pub conn_of: HashMap<u64, u64>,
    /// Every connect: (pipe index, connection id), in order.
    pub connects: Vec<(u64, u64)>,
    /// When each connection was disconnected.
    pub disconnected: HashMap<u64, u64>,
    model: model::Machine,
}

impl Replay {
    fn blocked(&self, conn: u64) -> bool {
        self.model.is_blocked(conn)
    }
}

pub fn model_config(cfg: &CoreConfig) -> model::Config {
    model::Config {
        default_lease_s: cfg.default_lease_s,
        max_locks: cfg.max_locks,
        max_waiters: cfg.max_waiters,
        auto_release_on_disconnect: cfg.auto_release_on_disconnect,
        gc_interval_s: cfg.gc_interval_s,
        gc_max_idle_s: cfg.gc_max_idle_s,
        auth_token: cfg.auth_token.clone(),
        fence_start: cfg.fence_start,
        fence_ceiling: cfg.fence_ceiling,
        salt_key: cfg.salt_key,
        max_subscriptions: cfg.max_subscriptions,
        auth_failure_pause_ms: cfg.auth_failure_pause_ms,
    }
}

fn space(s: Space) -> model::Space {
    match s {
        Space::Lock => model::Space::Lock,
        Space::Sem => model::Space::Sem,
    }
}

pub fn op(req: &Request) -> model::Op {
    let k = |k: &crate::wire::Key| k.as_bytes().to_vec();
    let g = |g: &Option<Box<[u8]>>| g.as_deref().map(<[u8]>::to_vec).unwrap_or_default();
    match req {
        Request::Acquire {
            space: s,
            key,
            timeout_s,
            limit,
            lease_s,
        } => model::Op::Acquire {
            space: space(*s),
            key: k(key),
            timeout_s: *timeout_s,
            limit: *limit,
            lease_s: *lease_s,
        },
        Request::Release {
            space: s,
            key,
            token,
        } => model::Op::Release {
            space: space(*s),
            key: k(key),
            token: token.to_vec(),
        },
        Request::Renew {
            space: s,
            key,
            token,
            lease_s,
        } => model::Op::Renew {
            space: space(*s),
            key: k(key),
            token: token.to_vec(),
            lease_s: *lease_s,
        },
        Request::Enqueue {
            space: s,
            key,
            limit,
            lease_s,
        } => model::Op::Enqueue {
            space: space(*s),
            key: k(key),
            limit: *limit,
            lease_s: *lease_s,
        },
        Request::Wait {
            space: s,
            key,
            timeout_s,
        } => model::Op::Wait {
            space: space(*s),
            key: k(key),
            timeout_s: *timeout_s,
        },
        Request::Stats => model::Op::Stats,
        Request::Auth { token } => model::Op::Auth {
            token: token.to_vec(),
        },
        Request::Ping => model::Op::Ping,
        Request::Listen { pattern, group } => model::Op::Listen {
            pattern: k(pattern),
            group: g(group),
        },
        Request::Unlisten { pattern, group } => model::Op::Unlisten {
            pattern: k(pattern),
            group: g(group),
        },
        Request::Signal { channel, payload } => model::Op::Signal {
            channel: k(channel),
            payload: payload.to_vec(),
        },
        // Cluster-only commands: a single node answers them `error`, as
        // the model answers a request it cannot parse (the simulator's
        // workload never sends them).
        Request::Barrier | Request::StableRef { .. } => model::Op::Invalid { fatal: false },
    }
}

/// Replays one incarnation's journal; checks on the way that nothing the
/// model had due waited longer than `slack_ms` past its deadline (the
/// timer was re-armed and fired).
fn replay(
    cfg: &CoreConfig,
    started: u64,
    journal: &[(u64, Record)],
    end: u64,
    slack_ms: u64,
) -> Result<Replay, String> {
    let mut m = model::Machine::new(model_config(cfg), started);
    let mut r = Replay {
        out: HashMap::new(),
        inputs: HashMap::new(),
        conn_of: HashMap::new(),
        connects: Vec::new(),
        disconnected: HashMap::new(),
        model: model::Machine::new(model_config(cfg), started),
    };
    let push = |r: &mut Replay, outs: Vec<model::Output>| {
        for o in outs {
            let c = match &o {
                model::Output::Reply { conn, .. } | model::Output::Close { conn, .. } => *conn,
            };
            r.out.entry(c).or_default().push(o);
        }
    };
    let on_time = |m: &mut model::Machine, r: &mut Replay, at: u64| -> Result<(), String> {
        while let Some(d) = m.next_deadline() {
            if d.saturating_add(slack_ms) >= at || d < m.now_ms() {
                break;
            }
            let outs = m.advance(d);
            if outs
                .iter()
                .any(|o| matches!(o, model::Output::Reply { .. } | model::Output::Close { .. }))
            {
                return Err(format!(
                    "an answer due at {d} ms was still not given at {at} ms (timer lateness allowed: {slack_ms} ms): {outs:?}"
                ));
            }
            push(r, outs);
        }
        Ok(())
    };
    // A `stats` reply lists the state as of its first slice (protocol §8),
    // which comes after the fence keeper's raise that its gate set off:
    // replayed in that order. (No other input comes between the gate and
    // the first slice here: the simulator runs one task at a time.)
    let mut journal = journal.to_vec();
    for i in 1..journal.len() {
        let stats_then_raise = matches!(
            (&journal[i - 1].1, &journal[i].1),
            (
                Record::Entry(crate::engine::Entry {
                    input: Input::Request(Request::Stats),
                    ..
                }),
                Record::Ceiling { .. },
            )
        );
        if stats_then_raise {
            journal.swap(i - 1, i);
        }
    }
    for (group, rec) in &journal {
        let e = match rec {
            Record::Entry(e) => e,
            Record::Ceiling { at, ceiling } => {
                on_time(&mut m, &mut r, at.0)?;
                let outs = m.raise_fence_ceiling(at.0, *ceiling);
                push(&mut r, outs);
                continue;
            }
        };
        let at = e.at.0;
        on_time(&mut m, &mut r, at)?;
        let conn = e.conn.0;
        let outs = match &e.input {
            Input::Connect { .. } => {
                let mut outs = m.advance(at);
                let id = m.connect(at);
                if id != conn {
                    return Err(format!("connection ids differ: engine {conn}, model {id}"));
                }
                r.conn_of.insert(group & 0xFFFF_FFFF, conn);
                r.connects.push((group & 0xFFFF_FFFF, conn));
                outs.extend(Vec::new());
                outs
            }
            Input::Request(req) => {
                r.inputs.entry(conn).or_default().push(e.input.clone());
                m.handle(at, conn, op(req))
            }
            Input::Invalid(err) => {
                r.inputs.entry(conn).or_default().push(e.input.clone());
                m.handle(
                    at,
                    conn,
                    model::Op::Invalid {
                        fatal: err.is_fatal(),
                    },
                )
            }
            Input::ReadDeadline { partial } => m.read_deadline(at, conn, *partial),
            Input::Cancel => m.cancel(at, conn),
            Input::Disconnect => {
                r.disconnected.entry(conn).or_insert(at);
                m.disconnect(at, conn)
            }
            Input::PushesWritten(n) => {
                m.pushes_written(conn, *n as usize);
                Vec::new()
            }
            Input::Tick => m.advance(at),
            Input::Drain => m.start_drain(at),
        };
        push(&mut r, outs);
    }
    on_time(&mut m, &mut r, end)?;
    r.model = m;
    Ok(r)
}

/// A resource: (semaphore space, key).
pub(super) type Res = (bool, Vec<u8>);
/// A client-observed hold: (start ms, end ms, limit, pipe).
pub(super) type Held = (u64, u64, u64, usize);
/// One connection's grant: (resource, start ms, end ms, limit, token).
type Mine = (Res, u64, u64, u64, String);

/// Client-observed leases never overlap beyond their limit. A client
/// counts a grant as held from when it read it until the earliest of: its
/// lease counted from when the request was sent (the server's lease starts
/// later, at the grant), the release it sent, the server closing the
/// connection, the crash. Each such interval lies within the server's own,
/// so an overlap here is a real double grant.
fn exclusion(world: &World, s: &super::Server, _r: &Replay) -> Result<(), String> {
    let conns = world.conns.borrow();
    // (space, key) -> (limit, [(start, end, who)])
    let mut leases: BTreeMap<Res, Vec<Held>> = BTreeMap::new();
    for (pid, c) in conns.iter().enumerate().filter(|(_, c)| c.inc == s.inc) {
        let sent = c.decoded();
        let p = c.pipe.borrow();
        let mut cut = s.ended_ms.unwrap_or(u64::MAX);
        if let Some(t) = p.server_closed_at {
            cut = cut.min(t);
        }
        drop(p);
        // Replies in order, skipping pushes.
        let replies: Vec<&(String, u64)> = c
            .lines
            .iter()
            .filter(|(l, _)| !l.starts_with("sig "))
            .collect();
        let mut enqueued: HashMap<(bool, Vec<u8>), u64> = HashMap::new();
        // token -> index into this connection's list
        let mut mine: Vec<Mine> = Vec::new();
        // Every request sent, with its reply if one was read: a release
        // ends the client's view of a lease when it is sent, answered or
        // not (a release pipelined behind a blocked request is applied
        // later, still inside the server's hold).
        for (k, (req, t_sent)) in sent.iter().enumerate() {
            let Ok(req) = req else { continue };
            if let Request::Release { space, key, token } = req {
                let id = (*space == Space::Sem, key.as_bytes().to_vec());
                let tok = String::from_utf8_lossy(token).into_owned();
                if let Some(m) = mine.iter_mut().rev().find(|m| m.0 == id && m.4 == tok) {
                    m.2 = m.2.min(*t_sent);
                }
                continue;
            }
            // A renew replaces the lease: `ok L` ends it L seconds after
            // it was applied, so no earlier than L after it was sent (even
            // when that is sooner than before); a refusal leaves it; an
            // unanswered one may have done either.
            if let Request::Renew {
                space,
                key,
                token,
                lease_s,
            } = req
            {
                let id = (*space == Space::Sem, key.as_bytes().to_vec());
                let tok = String::from_utf8_lossy(token).into_owned();
                if let Some(m) = mine.iter_mut().rev().find(|m| m.0 == id && m.4 == tok) {
                    let answer = replies.get(k).map(|r| r.0.as_str());
                    match answer.and_then(|l| l.strip_prefix("ok ")) {
                        Some(l) => m.2 = t_sent + l.parse::<u64>().unwrap_or(0) * 1000,
                        None if answer.is_some() => {}
                        None => {
                            let l = lease_s.unwrap_or(s.cfg.default_lease_s);
                            m.2 = m.2.min(t_sent + l * 1000);
                        }
                    }
                }
                continue;
            }
            let Some(reply) = replies.get(k) else {
                // An unanswered `w` may have restarted a granted record's
                // lease, for its `L` (at least 1 s) from when it was
                // applied (semantics §5), shortening a renewed one.
                if let Request::Wait { space, key, .. } = req {
                    let id = (*space == Space::Sem, key.as_bytes().to_vec());
                    if let Some(m) = mine.iter_mut().rev().find(|m| m.0 == id) {
                        m.2 = m.2.min(t_sent + 1000);
                    }
                }
                continue;
            };
            let (line, t_read) = (&reply.0, reply.1);
            let mut w = line.split(' ');
            let (a, b, cc) = (w.next(), w.next(), w.next());
            match req {
                Request::Acquire {
                    space, key, limit, ..
                }
                | Request::Enqueue {
                    space, key, limit, ..
                } => {
                    let id = (*space == Space::Sem, key.as_bytes().to_vec());
                    let from = if matches!(req, Request::Enqueue { .. }) {
                        enqueued.insert(id.clone(), *t_sent);
                        *t_sent
                    } else {
                        *t_sent
                    };
                    if let (Some("ok" | "acquired"), Some(tok), Some(l)) = (a, b, cc) {
                        let l: u64 = l.parse().unwrap_or(0);
                        let lim = if *space == Space::Sem { *limit } else { 1 };
                        mine.push((id, t_read, from + l * 1000, lim, tok.to_string()));
                    }
                }
                Request::Wait { space, key, .. } => {
                    let id = (*space == Space::Sem, key.as_bytes().to_vec());
                    if let (Some("ok"), Some(tok), Some(l)) = (a, b, cc) {
                        let l: u64 = l.parse().unwrap_or(0);
                        let from = enqueued.get(&id).copied().unwrap_or(*t_sent);
                        // The limit of a two-phase grant: as enqueued.
                        let lim = mine.iter().rev().find(|m| m.0 == id).map_or(1, |m| m.3);
                        // A `w` after `acquired` reports the same grant,
                        // its lease restarted (semantics §5): `L` from when
                        // the `w` was applied, so no earlier than from when
                        // it was sent (even when that is sooner than a
                        // renew had made it).
                        match mine.iter_mut().find(|m| m.4 == tok) {
                            Some(m) => m.2 = t_sent + l * 1000,
                            None => mine.push((id, t_read, from + l * 1000, lim, tok.to_string())),
                        }
                    }
                }
                _ => {}
            }
        }
        for (id, start, end, lim, _) in mine {
            let end = end.min(cut);
            if start < end {
                leases.entry(id).or_default().push((start, end, lim, pid));
            }
        }
    }
    for (id, held) in super::http_check::leases(world, s) {
        leases.entry(id).or_default().push(held);
    }
    for ((sem, key), list) in leases {
        for &(start, _, lim, who) in &list {
            let holders: Vec<usize> = list
                .iter()
                .filter(|(s2, e2, _, _)| *s2 <= start && start < *e2)
                .map(|x| x.3)
                .collect();
            if holders.len() as u64 > lim {
                if std::env::var_os("SIM_DEBUG").is_some() {
                    for &p in &holders {
                        let Some(c) = conns.get(p) else {
                            continue;
                        };
                        eprintln!("pipe {p}: sent {:?}", c.decoded());
                        eprintln!("pipe {p}: read {:?}", c.lines);
                    }
                    eprintln!("leases {list:?}");
                }
                return Err(format!(
                    "incarnation {}: at {start} ms {} clients hold {} {:?} (limit {lim}): connections {holders:?} (newest {who})",
                    s.inc,
                    holders.len(),
                    if sem { "semaphore" } else { "lock" },
                    String::from_utf8_lossy(&key)
                ));
            }
        }
    }
    Ok(())
}

/// Keeps the close reasons' names reachable for messages.
#[allow(dead_code)]
fn why(r: CloseReason) -> &'static str {
    match r {
        CloseReason::Draining => "draining",
        _ => "other",
    }
}
