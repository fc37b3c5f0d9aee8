//! Differential testing: one comparator, two harnesses (STYLE convention 7).
//!
//! A [`Scenario`] is a configuration and a list of [`Step`]s: connections
//! opening and closing, requests, read deadlines, cancels, time jumps (with the timer firing, or
//! late so that the next input reaches a core that has not caught up),
//! draining, raising the fence ceiling. [`run`] applies it to the
//! reference machine of `dflockd-model` (the executable spec) and to the
//! production [`Core`] in lockstep and fails at the first difference in:
//! the reply lines, signal pushes (as their `sig ...` lines) and closes
//! (with their reason) of each step (in order), whether a connection is blocked, each connection's
//! count of unwritten pushes, the next deadline, the instant each has
//! advanced to, the fence headroom, and the `stats` snapshot. After every
//! step it also runs [`Core::verify`], which panics naming the first of the
//! core's own invariants that broke.
//!
//! A second core runs alongside, driven *eagerly*: before each input its
//! timer fires at every deadline on time, so each of its outputs happens at
//! the instant of the call that gave it. It must give the same outputs as
//! the first (semantics §8: answers do not depend on how late a timer
//! fires), and a [`model::monitor::Monitor`] watches its trace for the
//! safety properties of semantics §11, from the clients' side: the core is
//! checked against the properties themselves, not only against the model.
//!
//! The proptest in `tests/differential.rs` and the cargo-fuzz target
//! `core_vs_model` both call [`run`]; they differ only in how they generate
//! scenarios. Steps refer to connections and tokens by small indices that
//! are resolved while running (a token is one seen in an earlier reply), so
//! every generated scenario is meaningful and shrinks well.
//!
//! Built only with the `differential` feature (it pulls in the model).

use dflockd_model as model;

use crate::core::{CloseReason, ConnId, Core, CoreConfig, Effect, Time};
use crate::wire::{encode_push, encode_reply, Key, Request, Space};

/// Server settings for one scenario, small enough to hit every limit.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Settings {
    pub default_lease_s: u8,
    pub max_locks: u8,
    pub max_waiters: u8,
    pub auto_release_on_disconnect: bool,
    pub gc_interval_s: u8,
    pub gc_max_idle_s: u8,
    pub auth: bool,
    pub max_subscriptions: u8,
    /// The fence ceiling (semantics §6): unlimited, or this many fences
    /// (mod 8) above the start, so that grants stop and wait for a
    /// [`Step::RaiseCeiling`].
    pub fence_ceiling: Option<u8>,
    /// Fences start a few below `u64::MAX` instead of at 1000.
    pub fences_near_max: bool,
}

/// One step of a scenario. Indices are taken modulo what exists.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Step {
    Connect,
    /// The peer of a live connection goes away.
    Disconnect {
        conn: u8,
    },
    /// The driver cancels a live connection's blocked request, or the
    /// grant that just answered it (semantics §9.1).
    Cancel {
        conn: u8,
    },
    /// A live connection reaches its read deadline, with part of a request
    /// buffered or idle (semantics §9.2).
    ReadDeadline {
        conn: u8,
        partial: bool,
    },
    /// Time moves forward by this many milliseconds.
    Advance {
        ms: u16,
    },
    /// Time moves to the next deadline the core reports.
    ToNextDeadline,
    /// Graceful shutdown begins.
    Drain,
    /// A live connection sends a request (skipped while it is blocked, as
    /// the driver never sends one then).
    Send {
        conn: u8,
        req: Req,
    },
    /// The driver reports `n` of a live connection's pushes written.
    Written {
        conn: u8,
        n: u8,
    },
    /// A live connection sends `count` signals on one channel in a row
    /// (enough to fill a push queue within a short scenario).
    Burst {
        conn: u8,
        channel: u8,
        count: u8,
    },
    /// Time moves forward by this many milliseconds and the timer does not
    /// fire: the next input reaches a core that has not caught up, which
    /// must answer as if it had (semantics §1, §8; D18, D19).
    Late {
        ms: u16,
    },
    /// Time moves to the next deadline and the timer does not fire: the
    /// next input lands exactly on it.
    LateToNextDeadline,
    /// The driver raises the fence ceiling to the last fence issued plus
    /// `by` (0 or less than the ceiling changes nothing; semantics §6).
    RaiseCeiling {
        by: u8,
    },
    /// A live connection acquires each key of the bit set `keys` in turn,
    /// with one timeout and one lease, so that its leases end at one instant
    /// (it stops once a request blocks).
    Grab {
        conn: u8,
        sem: bool,
        keys: u8,
        timeout_s: u8,
        limit: u8,
        lease_s: Option<u8>,
    },
}

/// A request with symbolic keys and tokens.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Req {
    Acquire {
        sem: bool,
        key: u8,
        timeout_s: u8,
        limit: u8,
        lease_s: Option<u8>,
    },
    Release {
        sem: bool,
        key: u8,
        token: Tok,
    },
    Renew {
        sem: bool,
        key: u8,
        token: Tok,
        lease_s: Option<u8>,
    },
    Enqueue {
        sem: bool,
        key: u8,
        limit: u8,
        lease_s: Option<u8>,
    },
    Wait {
        sem: bool,
        key: u8,
        timeout_s: u8,
    },
    Stats,
    Ping,
    Auth {
        right: bool,
    },
    Invalid {
        fatal: bool,
    },
    Listen {
        pattern: u8,
        group: u8,
    },
    Unlisten {
        pattern: u8,
        group: u8,
    },
    Signal {
        channel: u8,
        payload: u8,
    },
}

/// A token argument: one seen in an earlier reply (counting back from the
/// newest), or one no server issued.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Tok {
    Seen(u8),
    Bogus,
}

#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Scenario {
    pub settings: Settings,
    pub steps: Vec<Step>,
}

/// Number of distinct keys a scenario uses.
pub const KEYS: u8 = 3;
/// Subscription patterns: exact, `*`, `>`, overlapping.
const PATTERNS: [&str; 8] = ["c0", "c1", "c0.x", "*", "c0.*", ">", "*.x", "c1.>"];
/// Signal channels (literal).
const CHANNELS: [&str; 4] = ["c0", "c1", "c0.x", "c1.y.z"];
/// Queue groups; empty = ungrouped (twice, so ungrouped is common).
const GROUPS: [&str; 4] = ["", "", "g", "h"];

fn pick(table: &[&'static str], i: u8) -> &'static str {
    table[usize::from(i) % table.len()]
}
const AUTH_TOKEN: &[u8] = b"s3cret";
const AUTH_FAILURE_PAUSE_MS: u64 = 100;
const SALT_KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
const FENCE_START: u64 = 1000;
/// With [`Settings::fences_near_max`]: the last fence a scenario can issue
/// is `u64::MAX`, after six grants.
const FENCE_START_NEAR_MAX: u64 = u64::MAX - 6;
/// Leases and timeouts for the arguments 250..=255: the wire's largest
/// (`wire::MAX_SECONDS`) and other large values, so deadline arithmetic
/// meets its edges.
const HUGE_SECONDS: [u64; 6] = [
    crate::wire::MAX_SECONDS,
    crate::wire::MAX_SECONDS - 1,
    1 << 32,
    (1 << 32) - 1,
    1_000_000_000,
    86_400,
];

/// A lease or timeout argument: the arguments 250..=255 are huge values,
/// the rest are small ones (`small(n)`).
fn seconds(n: u8, small: impl Fn(u8) -> u64) -> u64 {
    match n {
        250..=255 => HUGE_SECONDS[usize::from(n - 250)],
        _ => small(n),
    }
}

impl Settings {
    fn fence_start(&self) -> u64 {
        if self.fences_near_max {
            FENCE_START_NEAR_MAX
        } else {
            FENCE_START
        }
    }

    fn fence_ceiling(&self) -> u64 {
        self.fence_ceiling.map_or(u64::MAX, |n| {
            self.fence_start().saturating_add(u64::from(n % 8))
        })
    }

    fn model(&self) -> model::Config {
        model::Config {
            default_lease_s: u64::from(self.default_lease_s % 5) + 1,
            max_locks: usize::from(self.max_locks % 5) + 1,
            max_waiters: usize::from(self.max_waiters % 4),
            auto_release_on_disconnect: self.auto_release_on_disconnect,
            gc_interval_s: u64::from(self.gc_interval_s % 3) + 1,
            gc_max_idle_s: u64::from(self.gc_max_idle_s % 4),
            auth_token: self.auth.then(|| AUTH_TOKEN.to_vec()),
            fence_start: self.fence_start(),
            fence_ceiling: self.fence_ceiling(),
            salt_key: SALT_KEY,
            max_subscriptions: usize::from(self.max_subscriptions % 3),
            auth_failure_pause_ms: AUTH_FAILURE_PAUSE_MS,
        }
    }

    fn core(&self) -> CoreConfig {
        let m = self.model();
        CoreConfig {
            default_lease_s: m.default_lease_s,
            max_locks: m.max_locks,
            max_waiters: m.max_waiters,
            auto_release_on_disconnect: m.auto_release_on_disconnect,
            gc_interval_s: m.gc_interval_s,
            gc_max_idle_s: m.gc_max_idle_s,
            auth_token: m.auth_token,
            fence_start: m.fence_start,
            fence_ceiling: m.fence_ceiling,
            salt_key: SALT_KEY,
            max_subscriptions: m.max_subscriptions,
            auth_failure_pause_ms: m.auth_failure_pause_ms,
            ..CoreConfig::default()
        }
    }
}

/// Where and how the core and the model first disagreed.
#[derive(Debug)]
pub struct Divergence {
    pub step: usize,
    pub what: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: {}", self.step, self.what)
    }
}

/// The machines plus the harness's view of the world.
struct Pair {
    model: model::Machine,
    core: Core,
    /// The same core, its timer always on time (see the module docs).
    eager: Core,
    monitor: model::monitor::Monitor,
    now: u64,
    live: Vec<u64>,
    tokens: Vec<Vec<u8>>,
}

fn key_bytes(key: u8) -> Vec<u8> {
    format!("k{}", key % KEYS).into_bytes()
}

fn space(sem: bool) -> (Space, model::Space) {
    if sem {
        (Space::Sem, model::Space::Sem)
    } else {
        (Space::Lock, model::Space::Lock)
    }
}

fn limit(sem: bool, n: u8) -> u64 {
    if sem {
        u64::from(n % 3) + 1
    } else {
        1
    }
}

fn lease(l: Option<u8>) -> Option<u64> {
    l.map(|l| seconds(l, |l| u64::from(l % 5) + 1))
}

fn timeout(t: u8) -> u64 {
    seconds(t, |t| u64::from(t % 4))
}

fn core_outputs(effects: Vec<Effect>) -> Vec<model::Output> {
    effects
        .into_iter()
        .map(|e| match e {
            Effect::Reply { conn, reply } => {
                let mut line = Vec::new();
                encode_reply(&reply, &mut line);
                line.pop();
                model::Output::Reply {
                    conn: conn.0,
                    line: String::from_utf8_lossy(&line).into_owned(),
                }
            }
            Effect::Close { conn, reason } => model::Output::Close {
                conn: conn.0,
                why: why(reason),
            },
            // A push is compared as the line it becomes on the wire.
            Effect::Push {
                conn,
                channel,
                payload,
            } => {
                let mut line = Vec::new();
                encode_push(channel.as_bytes(), &payload, &mut line);
                line.pop();
                model::Output::Reply {
                    conn: conn.0,
                    line: String::from_utf8_lossy(&line).into_owned(),
                }
            }
        })
        .collect()
}

/// The model's name for a close reason.
fn why(reason: CloseReason) -> model::Why {
    match reason {
        CloseReason::Draining => model::Why::Draining,
        CloseReason::AuthFailed { pause_ms } => model::Why::AuthFailed { pause_ms },
        CloseReason::Overlong => model::Why::Overlong,
        CloseReason::Stalled => model::Why::Stalled,
        CloseReason::Idle => model::Why::Idle,
        CloseReason::SlowConsumer => model::Why::SlowConsumer,
    }
}

/// Replies are compared as lines, except `stats`, compared as JSON values.
fn same(a: &[model::Output], b: &[model::Output]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (
                model::Output::Reply { conn: c1, line: l1 },
                model::Output::Reply { conn: c2, line: l2 },
            ) => {
                c1 == c2
                    && (l1 == l2
                        || match (l1.strip_prefix("ok {"), l2.strip_prefix("ok {")) {
                            (Some(j1), Some(j2)) => {
                                json(&format!("{{{j1}")) == json(&format!("{{{j2}"))
                            }
                            _ => false,
                        })
            }
            _ => x == y,
        })
}

fn json(s: &str) -> Option<serde_json::Value> {
    serde_json::from_str(s).ok()
}

impl Pair {
    /// Applies an input to the eager core at `self.now`: first its timer
    /// fires at every deadline up to then, each on time, and the monitor
    /// sees each call's outputs at that call's instant; `told` tells the
    /// monitor of the input just before it is applied. All the outputs, in
    /// order.
    fn eager(
        &mut self,
        told: impl FnOnce(&mut model::monitor::Monitor),
        input: impl FnOnce(&mut Core, &mut Vec<Effect>),
    ) -> Vec<model::Output> {
        let mut all = Vec::new();
        while let Some(t) = self.eager.poll_timeout().filter(|t| t.0 <= self.now) {
            let mut out = Vec::new();
            self.eager.handle_timeout(t, &mut out);
            let out = core_outputs(out);
            self.monitor.outputs(t.0, &out);
            all.extend(out);
        }
        told(&mut self.monitor);
        let mut out = Vec::new();
        input(&mut self.eager, &mut out);
        let out = core_outputs(out);
        self.monitor.outputs(self.now, &out);
        all.extend(out);
        all
    }

    /// Applies an input other than a request to both cores and compares
    /// their outputs with the model's `m`.
    fn apply(
        &mut self,
        step: usize,
        what: &str,
        m: Vec<model::Output>,
        input: impl Fn(&mut Core, Time, &mut Vec<Effect>),
    ) -> Result<(), Divergence> {
        let now = Time(self.now);
        let e = self.eager(|_| {}, |core, out| input(core, now, out));
        let mut c = Vec::new();
        input(&mut self.core, now, &mut c);
        self.compare(step, what, m, c, e)
    }

    /// Compares the outputs of one input: the model's `m`, the core's `c`
    /// and the eager core's `e` (after its timer caught up).
    fn compare(
        &mut self,
        step: usize,
        what: &str,
        m: Vec<model::Output>,
        c: Vec<Effect>,
        e: Vec<model::Output>,
    ) -> Result<(), Divergence> {
        let c = core_outputs(c);
        if !same(&m, &c) {
            return Err(Divergence {
                step,
                what: format!("{what}: model {m:?}, core {c:?}"),
            });
        }
        if !same(&c, &e) {
            return Err(Divergence {
                step,
                what: format!("{what}: core {c:?}, core with its timer on time {e:?}"),
            });
        }
        if let Some(v) = self.monitor.violation() {
            return Err(Divergence {
                step,
                what: format!("{what}: the core breaks \"{}\": {}", v.property, v.what),
            });
        }
        // Remember tokens for later release/renew steps.
        for o in &m {
            if let model::Output::Reply { line, .. } = o {
                let mut words = line.split(' ');
                if let (Some("ok" | "acquired"), Some(tok), Some(_)) =
                    (words.next(), words.next(), words.next())
                {
                    if tok.len() == 32 {
                        self.tokens.push(tok.as_bytes().to_vec());
                    }
                }
            }
        }
        // A closed connection is then reported gone, as the driver does.
        for o in m {
            if let model::Output::Close { conn, .. } = o {
                self.drop_conn(step, conn)?;
            }
        }
        Ok(())
    }

    /// `conn` sends `req` (skipped while it is blocked, as the driver never
    /// sends one then).
    fn send(&mut self, step: usize, conn: u64, req: &Req) -> Result<(), Divergence> {
        if self.core.is_blocked(ConnId(conn)) {
            return Ok(());
        }
        let (mop, creq) = self.request(req);
        let what = format!("{req:?} from conn {conn}");
        let (now, id) = (Time(self.now), ConnId(conn));
        let apply = |core: &mut Core, c: &mut Vec<Effect>| match req {
            Req::Invalid { fatal } => core.handle_invalid(now, id, *fatal, c),
            _ => core.handle(now, id, creq.clone(), c),
        };
        let e = self.eager(|mon| mon.request(conn, &mop), apply);
        let m = self.model.handle(self.now, conn, mop);
        let mut c = Vec::new();
        apply(&mut self.core, &mut c);
        self.compare(step, &what, m, c, e)
    }

    fn drop_conn(&mut self, step: usize, conn: u64) -> Result<(), Divergence> {
        if let Some(i) = self.live.iter().position(|c| *c == conn) {
            self.live.remove(i);
            let (now, id) = (Time(self.now), ConnId(conn));
            let e = self.eager(
                |mon| mon.disconnect(now.0, conn),
                |core, c| core.disconnect(now, id, c),
            );
            let m = self.model.disconnect(self.now, conn);
            let mut c = Vec::new();
            self.core.disconnect(now, id, &mut c);
            self.compare(step, "disconnect", m, c, e)?;
        }
        Ok(())
    }

    fn request(&self, req: &Req) -> (model::Op, Request) {
        let tok = |t: &Tok| -> Vec<u8> {
            match t {
                Tok::Seen(i) if !self.tokens.is_empty() => {
                    let i = usize::from(*i) % self.tokens.len();
                    self.tokens[self.tokens.len() - 1 - i].clone()
                }
                _ => b"00000000000000000000000000000000".to_vec(),
            }
        };
        let k = |key: u8| -> (Vec<u8>, Key) {
            let b = key_bytes(key);
            let key = Key::new(&b).expect("generated keys are valid");
            (b, key)
        };
        match req {
            Req::Acquire {
                sem,
                key,
                timeout_s,
                limit: n,
                lease_s,
            } => {
                let (cs, ms) = space(*sem);
                let (mk, ck) = k(*key);
                let t = timeout(*timeout_s);
                let (n, l) = (limit(*sem, *n), lease(*lease_s));
                (
                    model::Op::Acquire {
                        space: ms,
                        key: mk,
                        timeout_s: t,
                        limit: n,
                        lease_s: l,
                    },
                    Request::Acquire {
                        space: cs,
                        key: ck,
                        timeout_s: t,
                        limit: n,
                        lease_s: l,
                    },
                )
            }
            Req::Release { sem, key, token } => {
                let (cs, ms) = space(*sem);
                let (mk, ck) = k(*key);
                let t = tok(token);
                (
                    model::Op::Release {
                        space: ms,
                        key: mk,
                        token: t.clone(),
                    },
                    Request::Release {
                        space: cs,
                        key: ck,
                        token: t.into(),
                    },
                )
            }
            Req::Renew {
                sem,
                key,
                token,
                lease_s,
            } => {
                let (cs, ms) = space(*sem);
                let (mk, ck) = k(*key);
                let t = tok(token);
                let l = lease(*lease_s);
                (
                    model::Op::Renew {
                        space: ms,
                        key: mk,
                        token: t.clone(),
                        lease_s: l,
                    },
                    Request::Renew {
                        space: cs,
                        key: ck,
                        token: t.into(),
                        lease_s: l,
                    },
                )
            }
            Req::Enqueue {
                sem,
                key,
                limit: n,
                lease_s,
            } => {
                let (cs, ms) = space(*sem);
                let (mk, ck) = k(*key);
                let (n, l) = (limit(*sem, *n), lease(*lease_s));
                (
                    model::Op::Enqueue {
                        space: ms,
                        key: mk,
                        limit: n,
                        lease_s: l,
                    },
                    Request::Enqueue {
                        space: cs,
                        key: ck,
                        limit: n,
                        lease_s: l,
                    },
                )
            }
            Req::Wait {
                sem,
                key,
                timeout_s,
            } => {
                let (cs, ms) = space(*sem);
                let (mk, ck) = k(*key);
                let t = timeout(*timeout_s);
                (
                    model::Op::Wait {
                        space: ms,
                        key: mk,
                        timeout_s: t,
                    },
                    Request::Wait {
                        space: cs,
                        key: ck,
                        timeout_s: t,
                    },
                )
            }
            Req::Stats => (model::Op::Stats, Request::Stats),
            Req::Ping => (model::Op::Ping, Request::Ping),
            Req::Auth { right } => {
                let t = if *right {
                    AUTH_TOKEN.to_vec()
                } else {
                    b"wrong".to_vec()
                };
                (
                    model::Op::Auth { token: t.clone() },
                    Request::Auth { token: t.into() },
                )
            }
            Req::Invalid { fatal } => (model::Op::Invalid { fatal: *fatal }, Request::Ping),
            Req::Listen { pattern, group } | Req::Unlisten { pattern, group } => {
                let p = pick(&PATTERNS, *pattern).as_bytes();
                let g = pick(&GROUPS, *group).as_bytes();
                let pk = Key::new(p).expect("generated patterns are valid");
                let cg = (!g.is_empty()).then(|| g.into());
                if matches!(req, Req::Listen { .. }) {
                    (
                        model::Op::Listen {
                            pattern: p.to_vec(),
                            group: g.to_vec(),
                        },
                        Request::Listen {
                            pattern: pk,
                            group: cg,
                        },
                    )
                } else {
                    (
                        model::Op::Unlisten {
                            pattern: p.to_vec(),
                            group: g.to_vec(),
                        },
                        Request::Unlisten {
                            pattern: pk,
                            group: cg,
                        },
                    )
                }
            }
            Req::Signal { channel, payload } => {
                let ch = pick(&CHANNELS, *channel).as_bytes();
                let payload = format!("p {payload}").into_bytes();
                (
                    model::Op::Signal {
                        channel: ch.to_vec(),
                        payload: payload.clone(),
                    },
                    Request::Signal {
                        channel: Key::new(ch).expect("generated channels are valid"),
                        payload: payload.into(),
                    },
                )
            }
        }
    }

    fn check_state(&self, step: usize) -> Result<(), Divergence> {
        // Both stand where their last input advanced them (a late step
        // moves only the harness's clock).
        let (mn, cn) = (self.model.now_ms(), self.core.now().0);
        if mn != cn {
            return Err(Divergence {
                step,
                what: format!("advanced to: model {mn}, core {cn}"),
            });
        }
        let (mh, ch) = (self.model.fence_headroom(), self.core.fence_headroom());
        if mh != ch {
            return Err(Divergence {
                step,
                what: format!("fence headroom: model {mh}, core {ch}"),
            });
        }
        let md = self.model.next_deadline();
        let cd = self.core.poll_timeout().map(|t| t.0);
        if md != cd {
            return Err(Divergence {
                step,
                what: format!("next deadline: model {md:?}, core {cd:?}"),
            });
        }
        // The eager core fired the timers the core has not: it agrees once
        // both stand at the same instant.
        if self.eager.now() == self.core.now() {
            let ed = self.eager.poll_timeout().map(|t| t.0);
            let (cj, ej) = (self.core.stats_json(), self.eager.stats_json());
            if ed != cd || cj != ej {
                return Err(Divergence {
                    step,
                    what: format!(
                        "core with its timer on time: next deadline {ed:?}, stats {ej}; \
                         core: {cd:?}, {cj}"
                    ),
                });
            }
        }
        for &conn in &self.live {
            let mp = self
                .model
                .conns()
                .iter()
                .find(|c| c.id == conn)
                .map_or(0, |c| c.pushed);
            let cp = self.core.outstanding_pushes(ConnId(conn));
            if mp != cp {
                return Err(Divergence {
                    step,
                    what: format!("conn {conn} outstanding pushes: model {mp}, core {cp}"),
                });
            }
            let (mb, cb) = (
                self.model.is_blocked(conn),
                self.core.is_blocked(ConnId(conn)),
            );
            if mb != cb {
                return Err(Divergence {
                    step,
                    what: format!("conn {conn} blocked: model {mb}, core {cb}"),
                });
            }
        }
        let mj = json(&model::stats::to_json(&self.model.stats_view(mn)));
        let cj = json(&self.core.stats_json());
        if mj != cj {
            return Err(Divergence {
                step,
                what: format!("stats: model {mj:?}, core {cj:?}"),
            });
        }
        Ok(())
    }
}

/// Runs `s` through the model and the core; `Err` at the first difference.
pub fn run(s: &Scenario) -> Result<(), Divergence> {
    run_against(s, model::Bug::None)
}

/// [`run`] with a deliberately broken model: how the tests show that the
/// comparator and the generators find what a wrong decision breaks (a
/// planted bug must make some scenario diverge).
pub fn run_against(s: &Scenario, bug: model::Bug) -> Result<(), Divergence> {
    let mut p = Pair {
        model: model::Machine::with_bug(s.settings.model(), 0, bug),
        core: Core::new(s.settings.core(), Time(0)),
        eager: Core::new(s.settings.core(), Time(0)),
        monitor: model::monitor::Monitor::new(s.settings.auto_release_on_disconnect),
        now: 0,
        live: Vec::new(),
        tokens: Vec::new(),
    };
    for (i, step) in s.steps.iter().enumerate() {
        match step {
            Step::Connect => {
                let m_id = p.model.connect(p.now);
                let now = Time(p.now);
                let mut c = Vec::new();
                let c_id = p.core.connect(now, &mut c);
                let mut e_id = None;
                let e = p.eager(|_| {}, |core, out| e_id = Some(core.connect(now, out)));
                if Some(c_id) != e_id || m_id != c_id.0 {
                    return Err(Divergence {
                        step: i,
                        what: format!("connection id: model {m_id}, cores {c_id:?} {e_id:?}"),
                    });
                }
                p.monitor.connect(m_id);
                // Connecting advances time: compare what came due.
                let m = p.model.advance(p.now);
                p.compare(i, "connect", m, c, e)?;
                p.live.push(m_id);
            }
            Step::Disconnect { conn } => {
                if !p.live.is_empty() {
                    let conn = p.live[usize::from(*conn) % p.live.len()];
                    p.drop_conn(i, conn)?;
                }
            }
            Step::Cancel { conn } => {
                if !p.live.is_empty() {
                    let conn = p.live[usize::from(*conn) % p.live.len()];
                    let m = p.model.cancel(p.now, conn);
                    let now = Time(p.now);
                    let e = p.eager(
                        |mon| mon.cancel(conn),
                        |core, out| core.cancel(now, ConnId(conn), out),
                    );
                    let mut c = Vec::new();
                    p.core.cancel(now, ConnId(conn), &mut c);
                    p.compare(i, "cancel", m, c, e)?;
                }
            }
            Step::ReadDeadline { conn, partial } => {
                if !p.live.is_empty() {
                    let conn = p.live[usize::from(*conn) % p.live.len()];
                    let m = p.model.read_deadline(p.now, conn, *partial);
                    let (now, partial) = (Time(p.now), *partial);
                    let e = p.eager(
                        |mon| mon.read_deadline(conn),
                        |core, out| core.read_deadline(now, ConnId(conn), partial, out),
                    );
                    let mut c = Vec::new();
                    p.core.read_deadline(now, ConnId(conn), partial, &mut c);
                    p.compare(i, "read deadline", m, c, e)?;
                }
            }
            Step::Advance { ms } => {
                p.now += u64::from(*ms);
                let m = p.model.advance(p.now);
                p.apply(i, "advance", m, Core::handle_timeout)?;
            }
            Step::ToNextDeadline => {
                if let Some(t) = p.core.poll_timeout() {
                    p.now = p.now.max(t.0);
                }
                let m = p.model.advance(p.now);
                p.apply(i, "advance to deadline", m, Core::handle_timeout)?;
            }
            Step::Drain => {
                let m = p.model.start_drain(p.now);
                p.apply(i, "drain", m, Core::start_drain)?;
            }
            Step::Send { conn, req } => {
                if p.live.is_empty() {
                    continue;
                }
                let conn = p.live[usize::from(*conn) % p.live.len()];
                p.send(i, conn, req)?;
            }
            Step::Written { conn, n } => {
                if p.live.is_empty() {
                    continue;
                }
                let conn = p.live[usize::from(*conn) % p.live.len()];
                p.model.pushes_written(conn, usize::from(*n));
                p.core.pushes_written(ConnId(conn), usize::from(*n));
                p.eager.pushes_written(ConnId(conn), usize::from(*n));
            }
            Step::Burst {
                conn,
                channel,
                count,
            } => {
                if p.live.is_empty() {
                    continue;
                }
                let conn = p.live[usize::from(*conn) % p.live.len()];
                for k in 0..*count {
                    // Stops when the sender is closed (it may evict itself).
                    if !p.live.contains(&conn) {
                        break;
                    }
                    let req = Req::Signal {
                        channel: *channel,
                        payload: k,
                    };
                    p.send(i, conn, &req)?;
                }
            }
            Step::Late { ms } => p.now += u64::from(*ms),
            Step::LateToNextDeadline => {
                if let Some(t) = p.core.poll_timeout() {
                    p.now = p.now.max(t.0);
                }
            }
            Step::RaiseCeiling { by } => {
                let ceiling = p.model.last_fence().saturating_add(u64::from(*by));
                let m = p.model.raise_fence_ceiling(p.now, ceiling);
                p.apply(i, "raise the fence ceiling", m, |core, now, out| {
                    core.raise_fence_ceiling(now, ceiling, out)
                })?;
            }
            Step::Grab {
                conn,
                sem,
                keys,
                timeout_s,
                limit,
                lease_s,
            } => {
                if p.live.is_empty() {
                    continue;
                }
                let conn = p.live[usize::from(*conn) % p.live.len()];
                for key in (0..KEYS).filter(|k| keys & (1 << k) != 0) {
                    if !p.live.contains(&conn) || p.core.is_blocked(ConnId(conn)) {
                        break;
                    }
                    let req = Req::Acquire {
                        sem: *sem,
                        key,
                        timeout_s: *timeout_s,
                        limit: *limit,
                        lease_s: *lease_s,
                    };
                    p.send(i, conn, &req)?;
                }
            }
        }
        p.check_state(i)?;
        // Every index of the core agrees with what it indexes (panics
        // naming the broken invariant).
        p.core.verify();
    }
    Ok(())
}
