//! The replicated state machine of cluster mode: the core, driven by the
//! log (spec/cluster.md §3-§6).
//!
//! A [`LogEntry`] is one engine input for one *session*, stamped by the
//! leader with the replicated clock. [`Machine::apply`] applies it to the
//! machine's own [`Core`] and returns the core's effects; it reads no clock
//! and draws no randomness, so every member that applies the same entries
//! in the same order reaches the same state and the same effects, byte for
//! byte (the tests below compare them across machines, and across a
//! snapshot and restore).
//!
//! What the machine adds to the core:
//! * **Sessions** are named by the leader (`session`, the term in the high
//!   32 bits and a counter in the low 32, §3 rule 3) and mapped to the
//!   core's connection ids, which the core assigns in log order.
//! * **The clock** `T` is the largest stamp applied; an entry applies at
//!   `max(T, stamp)`, and a stamp below `T` counts a clock alarm (§4).
//! * **`LeaderStart`** begins a term: the first one creates the core with
//!   the fence start and salt key the first leader drew (§6); every one
//!   makes each session an orphan with deadline `T + orphan_ttl` (§5).
//! * **Orphans** are released as on disconnect at their deadline, after
//!   everything else due at that instant, in deadline then session order.
//!   `StableRef` takes an orphan over: its core connection (holdings,
//!   tokens, leases, records and queued waiters) becomes the new session's.
//!
//! A snapshot ([`Machine::snapshot_bytes`]) is the clock, the sessions and
//! the core's image ([`crate::core::CoreImage`]), as JSON.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::core::{ConnId, Core, CoreConfig, CoreImage, Effect, Time};
use crate::wire::{Reply, Request, Status};

/// What a log entry asks the machine to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A leader begins its term. `fence_start` and `salt_key` are used only
    /// by the cluster's first entry; `orphan_ttl_ms` is the leader's
    /// `--orphan-ttl`.
    LeaderStart {
        fence_start: u64,
        salt_key: [u64; 2],
        orphan_ttl_ms: u64,
        /// The leader's settings that every member must share to apply the
        /// log alike ([`Machine::settings_text`]); empty in entries written
        /// before it was added. A member whose own differ counts and logs
        /// it (`dflockd_raft_settings_mismatches`).
        #[serde(default)]
        settings: String,
    },
    /// Time passed: process what is due.
    Tick,
    /// A session opens.
    Connect { session: u64 },
    /// `stable-ref REF` on a session.
    StableRef { session: u64, reference: Vec<u8> },
    /// A decoded request of a session.
    Request { session: u64, request: Request },
    /// The HTTP front withdraws the session's blocked request.
    Cancel { session: u64 },
    /// The session's connection closed.
    Disconnect { session: u64 },
    /// `barrier`: nothing; its commit is the answer.
    Barrier,
}

/// One entry of the replicated log: an [`Op`] at the leader's stamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub stamp: Time,
    pub op: Op,
}

impl LogEntry {
    /// The entry in the log's current layout ([`codec`]: binary).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a committed entry (written by a member; see
    /// `crate::engine::Input` on trusting it), in the binary layout or as
    /// an earlier release's JSON.
    pub fn decode(bytes: &[u8]) -> Result<LogEntry, codec::DecodeError> {
        codec::decode(bytes)
    }

    /// The entry as JSON, the layout before the binary one (tests of
    /// reading an earlier release's log).
    pub fn encode_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entries serialize")
    }
}

/// One session of the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    conn: ConnId,
    reference: Option<Vec<u8>>,
    /// Set while the session is an orphan: when it is released.
    orphan_until: Option<Time>,
}

/// What applying one entry tells its proposer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The replicated clock after the entry.
    pub clock: Time,
    /// The entry named a session the machine does not know (its `Connect`
    /// was lost): nobody else will answer it.
    pub unknown_session: bool,
}

/// The replicated state machine (see the module documentation).
pub struct Machine {
    /// Limits and policies; `fence_start` and `salt_key` come from the log.
    template: CoreConfig,
    state: State,
    /// Clock alarms: stamps below the clock (a broken leader; local count).
    pub clock_alarms: u64,
    /// `LeaderStart` entries whose settings differ from this member's.
    pub settings_mismatches: u64,
}

/// Serialized only through [`Machine::snapshot_bytes`].
struct State {
    clock: Time,
    /// `None` until the cluster's first `LeaderStart`.
    salt_key: Option<[u64; 2]>,
    fence_start: u64,
    orphan_ttl_ms: u64,
    sessions: BTreeMap<u64, Session>,
    by_conn: HashMap<ConnId, u64>,
    by_ref: HashMap<Vec<u8>, u64>,
    orphans: BTreeSet<(Time, u64)>,
    core: Option<Core>,
}

impl Machine {
    /// An empty machine; `template` carries the limits (every member must
    /// run with the same ones).
    pub fn new(mut template: CoreConfig) -> Machine {
        // Authentication is per connection, on the member that serves it;
        // the fence ceiling is the replicated counter itself (§6).
        template.auth_token = None;
        template.fence_ceiling = u64::MAX;
        Machine {
            template,
            state: State {
                clock: Time(0),
                salt_key: None,
                fence_start: 0,
                orphan_ttl_ms: 0,
                sessions: BTreeMap::new(),
                by_conn: HashMap::new(),
                by_ref: HashMap::new(),
                orphans: BTreeSet::new(),
                core: None,
            },
            clock_alarms: 0,
            settings_mismatches: 0,
        }
    }

    /// The replicated clock.
    pub fn clock(&self) -> Time {
        self.state.clock
    }

    /// The core, once the cluster's first `LeaderStart` applied.
    pub fn core(&self) -> Option<&Core> {
        self.state.core.as_ref()
    }

    /// The session a core connection belongs to.
    pub fn session_of(&self, conn: ConnId) -> Option<u64> {
        self.state.by_conn.get(&conn).copied()
    }

    /// Whether `session` is live (known and not an orphan).
    pub fn is_live(&self, session: u64) -> bool {
        self.state
            .sessions
            .get(&session)
            .is_some_and(|s| s.orphan_until.is_none())
    }

    /// Sessions kept as orphans.
    pub fn orphan_count(&self) -> usize {
        self.state.orphans.len()
    }

    /// When the machine next has something due (a lease, a waiter's
    /// deadline, the GC, an orphan's release): the leader proposes a
    /// `Tick` once its clock passes it.
    pub fn next_deadline(&self) -> Option<Time> {
        let core = self.state.core.as_ref().and_then(Core::poll_timeout);
        let orphan = self.state.orphans.first().map(|(t, _)| *t);
        match (core, orphan) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The settings that change what applying an entry does, as one line:
    /// members whose lines differ would reach different states from the
    /// same log (spec/cluster.md §3).
    pub fn settings_text(&self) -> String {
        let c = &self.template;
        format!(
            "default-lease-ttl={} max-locks={} max-waiters={} auto-release-on-disconnect={} \
             gc-interval={} gc-max-idle={} key-events={}",
            c.default_lease_s,
            c.max_locks,
            c.max_waiters,
            c.auto_release_on_disconnect,
            c.gc_interval_s,
            c.gc_max_idle_s,
            c.key_events
        )
    }

    fn config(&self) -> CoreConfig {
        let mut cfg = self.template.clone();
        cfg.salt_key = self.state.salt_key.unwrap_or_default();
        cfg.fence_start = self.state.fence_start;
        cfg
    }

    /// Applies one committed entry; the core's effects (addressed by core
    /// connection, see [`Machine::session_of`]) are appended to `out`.
    pub fn apply(&mut self, entry: &LogEntry, out: &mut Vec<Effect>) -> Applied {
        let s = &mut self.state;
        // A `LeaderStart` applies at the clock the log reached, whatever
        // its stamp (§4); any other entry stamped below it is an alarm.
        if entry.stamp < s.clock && !matches!(entry.op, Op::LeaderStart { .. }) {
            self.clock_alarms += 1;
        }
        let at = entry.stamp.max(s.clock);
        s.clock = at;
        let mut unknown_session = false;
        if let Op::LeaderStart {
            fence_start,
            salt_key,
            orphan_ttl_ms,
            settings,
        } = &entry.op
        {
            if !settings.is_empty() && *settings != self.settings_text() {
                self.settings_mismatches += 1;
                // Once per term at most: LeaderStart is a term's first entry.
                log::error!(
                    leader:% = settings, member:% = self.settings_text();
                    "this member's settings differ from the leader's: members must share them, \
                     or they apply the same log differently"
                );
            }
            let s = &mut self.state;
            if s.core.is_none() {
                s.salt_key = Some(*salt_key);
                s.fence_start = *fence_start;
                let cfg = self.config();
                self.state.core = Some(Core::new(cfg, at));
            }
            self.state.orphan_ttl_ms = *orphan_ttl_ms;
        }
        let s = &mut self.state;
        let Some(core) = s.core.as_mut() else {
            // Nothing but a LeaderStart can come first; anything else is
            // skipped alike on every member.
            return Applied {
                clock: at,
                unknown_session: true,
            };
        };
        // Orphans due by now go first, each at its own deadline, after
        // everything else due then (the core processes what is due before
        // the disconnect).
        while let Some(&(deadline, session)) = s.orphans.first() {
            if deadline > at {
                break;
            }
            s.orphans.pop_first();
            if let Some(sess) = s.sessions.remove(&session) {
                core.handle_timeout(deadline, out);
                core.disconnect(deadline, sess.conn, out);
                s.by_conn.remove(&sess.conn);
                if let Some(r) = sess.reference {
                    s.by_ref.remove(&r);
                }
            }
        }
        match &entry.op {
            Op::LeaderStart { orphan_ttl_ms, .. } => {
                core.handle_timeout(at, out);
                let until = at.plus_millis(*orphan_ttl_ms);
                for (&id, sess) in s.sessions.iter_mut() {
                    if sess.orphan_until.is_none() {
                        sess.orphan_until = Some(until);
                        s.orphans.insert((until, id));
                        // Nobody is left to answer a blocked request.
                        core.cancel_blocked(at, sess.conn, out);
                    }
                }
            }
            Op::Tick | Op::Barrier => core.handle_timeout(at, out),
            Op::Connect { session } => {
                if s.sessions.contains_key(session) {
                    core.handle_timeout(at, out);
                } else {
                    let conn = core.connect(at, out);
                    s.sessions.insert(
                        *session,
                        Session {
                            conn,
                            reference: None,
                            orphan_until: None,
                        },
                    );
                    s.by_conn.insert(conn, *session);
                }
            }
            Op::StableRef { session, reference } => {
                core.handle_timeout(at, out);
                match s.sessions.get(session) {
                    None => unknown_session = true,
                    Some(sess) => {
                        let conn = sess.conn;
                        let owns = core.owns_anything(conn) || sess.reference.is_some();
                        let holder = s.by_ref.get(reference).copied();
                        let reply = match holder {
                            _ if owns => Status::Error,
                            Some(other) => {
                                let o = &s.sessions[&other];
                                match o.orphan_until {
                                    // A live session keeps its reference.
                                    None => Status::Error,
                                    Some(until) => {
                                        // Take the orphan over: its core
                                        // connection becomes this session's;
                                        // this session's empty one goes.
                                        let orphan = s.sessions.remove(&other).expect("listed");
                                        s.orphans.remove(&(until, other));
                                        core.disconnect(at, conn, out);
                                        s.by_conn.remove(&conn);
                                        s.by_conn.insert(orphan.conn, *session);
                                        let sess = s.sessions.get_mut(session).expect("listed");
                                        sess.conn = orphan.conn;
                                        sess.reference = Some(reference.clone());
                                        s.by_ref.insert(reference.clone(), *session);
                                        out.push(Effect::Reply {
                                            conn: orphan.conn,
                                            reply: Reply::Ok,
                                        });
                                        return Applied {
                                            clock: at,
                                            unknown_session,
                                        };
                                    }
                                }
                            }
                            None => {
                                s.sessions.get_mut(session).expect("listed").reference =
                                    Some(reference.clone());
                                s.by_ref.insert(reference.clone(), *session);
                                out.push(Effect::Reply {
                                    conn,
                                    reply: Reply::Ok,
                                });
                                return Applied {
                                    clock: at,
                                    unknown_session,
                                };
                            }
                        };
                        out.push(Effect::Reply {
                            conn,
                            reply: Reply::Status(reply),
                        });
                    }
                }
            }
            Op::Request { session, request } => match s.sessions.get(session) {
                // A blocked session's request never comes from a correct
                // leader (its connection waits for the answer); skipped
                // alike everywhere rather than trusted.
                Some(sess) if sess.orphan_until.is_none() && !core.is_blocked(sess.conn) => {
                    core.handle(at, sess.conn, request.clone(), out)
                }
                _ => {
                    core.handle_timeout(at, out);
                    unknown_session = true;
                }
            },
            Op::Cancel { session } => match s.sessions.get(session) {
                Some(sess) => core.cancel(at, sess.conn, out),
                None => core.handle_timeout(at, out),
            },
            Op::Disconnect { session } => match s.sessions.get(session) {
                // An orphan is released by its deadline, not by a late
                // disconnect of the connection it lost.
                Some(sess) if sess.orphan_until.is_none() => {
                    let sess = s.sessions.remove(session).expect("listed");
                    core.disconnect(at, sess.conn, out);
                    s.by_conn.remove(&sess.conn);
                    if let Some(r) = sess.reference {
                        s.by_ref.remove(&r);
                    }
                }
                _ => core.handle_timeout(at, out),
            },
        }
        Applied {
            clock: at,
            unknown_session,
        }
    }

    /// The state as bytes (spec/cluster.md §3 rule 5).
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            clock: Time,
            salt_key: Option<[u64; 2]>,
            fence_start: u64,
            orphan_ttl_ms: u64,
            sessions: &'a BTreeMap<u64, Session>,
            core: Option<CoreImage>,
        }
        let s = &self.state;
        serde_json::to_vec(&Out {
            version: 1,
            clock: s.clock,
            salt_key: s.salt_key,
            fence_start: s.fence_start,
            orphan_ttl_ms: s.orphan_ttl_ms,
            sessions: &s.sessions,
            core: s.core.as_ref().map(Core::image),
        })
        .expect("the state serializes")
    }

    /// Replaces the state with a snapshot's; every part is checked.
    pub fn restore_bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        #[derive(Deserialize)]
        struct In {
            version: u32,
            clock: Time,
            salt_key: Option<[u64; 2]>,
            fence_start: u64,
            orphan_ttl_ms: u64,
            sessions: BTreeMap<u64, Session>,
            core: Option<CoreImage>,
        }
        let i: In = serde_json::from_slice(bytes).map_err(|e| format!("machine snapshot: {e}"))?;
        if i.version != 1 {
            return Err(format!("machine snapshot version {} is unknown", i.version));
        }
        let mut st = State {
            clock: i.clock,
            salt_key: i.salt_key,
            fence_start: i.fence_start,
            orphan_ttl_ms: i.orphan_ttl_ms,
            sessions: BTreeMap::new(),
            by_conn: HashMap::new(),
            by_ref: HashMap::new(),
            orphans: BTreeSet::new(),
            core: None,
        };
        self.state.salt_key = i.salt_key;
        self.state.fence_start = i.fence_start;
        if let Some(img) = i.core {
            let core = Core::from_image(self.config(), img).map_err(|e| e.to_string())?;
            st.core = Some(core);
        }
        for (id, sess) in i.sessions {
            if st.by_conn.insert(sess.conn, id).is_some() {
                return Err("machine snapshot: two sessions share a connection".into());
            }
            if let Some(r) = &sess.reference {
                if st.by_ref.insert(r.clone(), id).is_some() {
                    return Err("machine snapshot: two sessions share a reference".into());
                }
            }
            if let Some(until) = sess.orphan_until {
                st.orphans.insert((until, id));
            }
            st.sessions.insert(id, sess);
        }
        self.state = st;
        Ok(())
    }

    /// The `stats` JSON of the replicated core (`{}` before the first
    /// leader started).
    pub fn stats_json(&self) -> String {
        self.state
            .core
            .as_ref()
            .map_or_else(|| "{}".to_owned(), Core::stats_json)
    }
}

pub mod codec;

#[cfg(test)]
mod tests;
