//! The history of a fault test and its checker, Jepsen-style: clients
//! record each operation's invocation and completion (times in ms since
//! the test began, the fence of a grant), the nemesis records its faults,
//! and [`check`] reads the whole history afterwards.
//!
//! Properties, each with its planted-bug test below:
//! * **mutual exclusion on live leases**: two different grants of one key
//!   are never both valid for their clients at the same instant. A grant is
//!   valid from its acknowledgement until its lease runs out counted from
//!   the *invocation* (the client cannot know when the server granted), or
//!   until its client invokes the release, whichever comes first.
//! * **fences increase in real-time order**: a grant acknowledged before
//!   another was invoked has a smaller fence; no fence is given to two
//!   different grants.
//! * **no acknowledged grant lost**: a release answered `not_holder` before
//!   the lease could have run out means the service forgot a grant; and the
//!   fence counter read at the end is at least every fence acknowledged.
//! * **service restored within a bound**: after each fault ends (and during
//!   a minority fault that lasts long enough), some operation succeeds
//!   within the bound.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Acquire {
        key: String,
        lease_ms: u64,
    },
    Release {
        key: String,
        fence: u64,
    },
    /// Reads the fence counter through the log.
    Fence,
}

/// How it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the fence for `Acquire` and `Fence`, 0 for `Release`.
    Ok(u64),
    /// Definitely not done (`busy`, `not_holder`, `not_leader`).
    Fail(String),
    /// Unknown: timed out or the connection broke; it may have happened.
    Unknown,
}

/// One operation.
#[derive(Clone, Debug)]
pub struct Event {
    pub client: String,
    pub call: Call,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub outcome: Outcome,
}

/// One fault, from injection to healing.
#[derive(Clone, Debug)]
pub struct Fault {
    pub what: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Whether a majority stayed connected and running throughout.
    pub minority: bool,
}

/// A shared recorder for clients and the nemesis.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
    faults: Arc<Mutex<Vec<Fault>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            events: Arc::default(),
            faults: Arc::default(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Time since the history's time 0.
    pub fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    pub fn record(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }

    pub fn fault(&self, f: Fault) {
        self.faults.lock().unwrap().push(f);
    }

    pub fn history(&self) -> History {
        History {
            events: self.events.lock().unwrap().clone(),
            faults: self.faults.lock().unwrap().clone(),
        }
    }
}

/// A finished history.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    pub faults: Vec<Fault>,
}

/// A grant as the client saw it.
#[derive(Clone, Debug)]
struct Grant {
    client: String,
    key: String,
    fence: u64,
    /// When the grant may have been made: the invocation of the first of
    /// the client's attempts that ended in this grant (a retried acquire
    /// whose first answer was lost returns the grant the first made).
    invoke_ms: u64,
    ok_ms: u64,
    /// Until when the client may use it.
    valid_until_ms: u64,
    lease_until_ms: u64,
}
/// What a reply in the checker's words (see [`translate`]) means for a
/// client's call.
pub enum Answer<'a> {
    /// Done: `ok` (with the fence of a grant, 0 otherwise), `busy` or
    /// `not_holder`.
    Settled(Outcome),
    /// A definite "not here", with the leader's address when known.
    NotLeader(Option<&'a str>),
    /// Anything else: the entry may yet apply.
    Unknown,
}

/// Reads a translated reply (the fault tests and the cluster simulator
/// each then retry their own way).
pub fn answer(translated: &str) -> Answer<'_> {
    let mut w = translated.splitn(2, ' ');
    match (w.next(), w.next()) {
        (Some("ok"), f) => {
            Answer::Settled(Outcome::Ok(f.and_then(|f| f.parse().ok()).unwrap_or(0)))
        }
        (Some("busy"), _) => Answer::Settled(Outcome::Fail("busy".into())),
        (Some("not_holder"), _) => Answer::Settled(Outcome::Fail("not_holder".into())),
        (Some("not_leader"), hint) => Answer::NotLeader(hint),
        _ => Answer::Unknown,
    }
}

/// A member's reply to `call` in the checker's words: `ok FENCE` for a
/// grant (its token kept in `tokens` under its fence, for the release),
/// `busy`, `ok`, `not_holder` (the token is not a live holder: the grant
/// is gone; its token is dropped), `not_leader [ADDR]`, or `error REPLY`
/// (to an acquire: the session was unknown to the log, or the leader was
/// too busy; left as unknown). The fault tests and the cluster simulator
/// both translate with it.
pub fn translate(
    tokens: &mut std::collections::HashMap<u64, String>,
    call: &Call,
    reply: &str,
) -> String {
    let w: Vec<&str> = reply.split(' ').collect();
    match (call, w.as_slice()) {
        (Call::Acquire { .. } | Call::Fence, ["ok", token, _lease]) => {
            match token
                .get(..16)
                .and_then(|f| u64::from_str_radix(f, 16).ok())
            {
                Some(fence) => {
                    if matches!(call, Call::Acquire { .. }) {
                        tokens.insert(fence, token.to_string());
                    }
                    format!("ok {fence}")
                }
                None => format!("bad grant {reply}"),
            }
        }
        (Call::Acquire { .. } | Call::Fence, ["timeout"]) => "busy".to_owned(),
        (Call::Release { fence, .. }, ["ok"]) => {
            tokens.remove(fence);
            "ok".to_owned()
        }
        (Call::Release { fence, .. }, ["error"]) => {
            tokens.remove(fence);
            "not_holder".to_owned()
        }
        (_, ["error_not_leader"]) => "not_leader".to_owned(),
        (_, ["error_not_leader", addr]) => format!("not_leader {addr}"),
        _ => format!("error {reply}"),
    }
}

/// The checker's verdict: every violation found, in words.
pub fn check(h: &History, restore_bound_ms: u64, end_ms: u64) -> Vec<String> {
    let mut bad = Vec::new();
    let grants = grants(h);

    // Mutual exclusion on live leases.
    let mut by_key: BTreeMap<&str, Vec<&Grant>> = BTreeMap::new();
    for g in &grants {
        by_key.entry(&g.key).or_default().push(g);
    }
    for (key, gs) in &by_key {
        for (i, a) in gs.iter().enumerate() {
            for b in &gs[i + 1..] {
                if a.fence == b.fence {
                    continue;
                }
                let overlap = a.ok_ms < b.valid_until_ms && b.ok_ms < a.valid_until_ms;
                if overlap {
                    bad.push(format!(
                        "mutual exclusion: {key} held by {} (fence {}, valid {}..{}) and {} (fence {}, valid {}..{})",
                        a.client, a.fence, a.ok_ms, a.valid_until_ms,
                        b.client, b.fence, b.ok_ms, b.valid_until_ms
                    ));
                }
            }
        }
    }

    // Fences increase in real-time order; one fence per grant.
    let mut owner: BTreeMap<u64, (&str, &str)> = BTreeMap::new();
    for g in &grants {
        if let Some((c, k)) = owner.insert(g.fence, (&g.client, &g.key)) {
            if (c, k) != (g.client.as_str(), g.key.as_str()) {
                bad.push(format!(
                    "fence {} given to {c} on {k} and to {} on {}",
                    g.fence, g.client, g.key
                ));
            }
        }
    }
    for a in &grants {
        for b in &grants {
            if a.ok_ms < b.invoke_ms && a.fence >= b.fence && a.fence != b.fence {
                bad.push(format!(
                    "fence order: {} got {} at {}ms, then {} invoked at {}ms got {}",
                    a.client, a.fence, a.ok_ms, b.client, b.invoke_ms, b.fence
                ));
            }
        }
    }

    // No acknowledged grant lost.
    for e in &h.events {
        let (Call::Release { key, fence }, Outcome::Fail(why)) = (&e.call, &e.outcome) else {
            continue;
        };
        if why != "not_holder" {
            continue;
        }
        // The latest acknowledgement of that grant before the release.
        if let Some(g) = grants
            .iter()
            .filter(|g| g.fence == *fence && g.key == *key && g.client == e.client)
            .filter(|g| g.ok_ms <= e.invoke_ms)
            .max_by_key(|g| g.lease_until_ms)
        {
            if e.complete_ms < g.lease_until_ms {
                bad.push(format!(
                    "lost grant: {} on {key} (fence {fence}) answered not_holder at {}ms, its lease ran to {}ms",
                    e.client, e.complete_ms, g.lease_until_ms
                ));
            }
        }
    }
    let max_fence = grants.iter().map(|g| g.fence).max().unwrap_or(0);
    for e in &h.events {
        if let (Call::Fence, Outcome::Ok(f)) = (&e.call, &e.outcome) {
            // Only a read invoked after every grant was acknowledged must
            // see them all.
            let after_all = grants.iter().all(|g| g.ok_ms < e.invoke_ms);
            if after_all && *f < max_fence {
                bad.push(format!(
                    "lost grant: the fence counter read {f} after fence {max_fence} was acknowledged"
                ));
            }
        }
    }

    // Service restored within the bound.
    let oks: Vec<u64> = h
        .events
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Ok(_)))
        .map(|e| e.complete_ms)
        .collect();
    let served_in = |from: u64, to: u64| oks.iter().any(|&t| from <= t && t <= to);
    for f in &h.faults {
        if f.end_ms + restore_bound_ms <= end_ms
            && !served_in(f.end_ms, f.end_ms + restore_bound_ms)
        {
            bad.push(format!(
                "unavailable: nothing succeeded within {restore_bound_ms}ms after {} ended at {}ms",
                f.what, f.end_ms
            ));
        }
        if f.minority
            && f.start_ms + restore_bound_ms <= f.end_ms
            && !served_in(f.start_ms, f.start_ms + restore_bound_ms)
        {
            bad.push(format!(
                "unavailable: nothing succeeded within {restore_bound_ms}ms into {} (a minority fault) from {}ms",
                f.what, f.start_ms
            ));
        }
    }
    bad
}

/// Acknowledged grants with their validity as their client saw it.
fn grants(h: &History) -> Vec<Grant> {
    let mut out = Vec::new();
    for e in &h.events {
        let (Call::Acquire { key, lease_ms }, Outcome::Ok(fence)) = (&e.call, &e.outcome) else {
            continue;
        };
        let lease_until_ms = e.invoke_ms + lease_ms;
        // The client stops using it when it invokes the release.
        let released = h
            .events
            .iter()
            .filter(|r| {
                r.client == e.client
                    && matches!(&r.call, Call::Release { key: k, fence: f } if k == key && f == fence)
                    && r.invoke_ms >= e.complete_ms
            })
            .map(|r| r.invoke_ms)
            .min();
        out.push(Grant {
            client: e.client.clone(),
            key: key.clone(),
            fence: *fence,
            invoke_ms: first_attempt(h, e, key, *fence),
            ok_ms: e.complete_ms,
            valid_until_ms: released.map_or(lease_until_ms, |r| r.min(lease_until_ms)),
            lease_until_ms,
        });
    }
    out
}

/// The invocation of the earliest attempt that may have made the grant
/// `e` acknowledged: walking back through the same client's operations
/// (a client runs one at a time), acquires of `key` whose outcome is
/// unknown or this very grant belong to it; a definite other answer on
/// `key`, or a release of it that succeeded, ends the walk.
fn first_attempt(h: &History, e: &Event, key: &str, fence: u64) -> u64 {
    let mut mine: Vec<&Event> = h
        .events
        .iter()
        .filter(|x| x.client == e.client && x.invoke_ms <= e.invoke_ms)
        .collect();
    mine.sort_by_key(|x| x.invoke_ms);
    let mut start = e.invoke_ms;
    for x in mine.iter().rev() {
        match (&x.call, &x.outcome) {
            (Call::Acquire { key: k, .. }, Outcome::Unknown) if k == key => start = x.invoke_ms,
            (Call::Acquire { key: k, .. }, Outcome::Ok(f)) if k == key && *f == fence => {
                start = x.invoke_ms
            }
            // `not_leader` or `unreachable`: that attempt did nothing, so
            // an earlier unknown one may still be the grant; walk on.
            (Call::Acquire { key: k, .. }, Outcome::Fail(why)) if k == key && why != "busy" => {}
            (Call::Acquire { key: k, .. }, _) if k == key => break,
            (Call::Release { key: k, .. }, Outcome::Ok(_)) if k == key => break,
            _ => {}
        }
    }
    start
}

#[cfg(test)]
mod tests {
    //! The checker catches each planted bug, and passes a clean history.
    use super::*;

    fn acq(client: &str, key: &str, at: u64, ok: u64, fence: u64) -> Event {
        Event {
            client: client.into(),
            call: Call::Acquire {
                key: key.into(),
                lease_ms: 1000,
            },
            invoke_ms: at,
            complete_ms: ok,
            outcome: Outcome::Ok(fence),
        }
    }

    fn rel(client: &str, key: &str, fence: u64, at: u64, done: u64, outcome: Outcome) -> Event {
        Event {
            client: client.into(),
            call: Call::Release {
                key: key.into(),
                fence,
            },
            invoke_ms: at,
            complete_ms: done,
            outcome,
        }
    }

    fn fence_read(at: u64, got: u64) -> Event {
        Event {
            client: "reader".into(),
            call: Call::Fence,
            invoke_ms: at,
            complete_ms: at + 5,
            outcome: Outcome::Ok(got),
        }
    }

    fn clean() -> History {
        History {
            events: vec![
                acq("a", "k", 0, 10, 1),
                rel("a", "k", 1, 50, 60, Outcome::Ok(0)),
                acq("b", "k", 55, 70, 2),
                // b's lease ends at 1055; c is granted after it.
                acq("c", "k", 900, 1100, 3),
                // A retried acquire that returned the same grant.
                acq("c", "k", 1120, 1130, 3),
                rel("c", "k", 3, 1200, 1210, Outcome::Ok(0)),
                // An expired lease's release may fail.
                rel("b", "k", 2, 1300, 1310, Outcome::Fail("not_holder".into())),
                fence_read(1400, 3),
            ],
            faults: vec![Fault {
                what: "kill -9 leader".into(),
                start_ms: 20,
                end_ms: 1000,
                minority: true,
            }],
        }
    }

    #[test]
    fn a_clean_history_passes() {
        assert_eq!(check(&clean(), 200, 1500), Vec::<String>::new());
    }

    #[test]
    fn a_retried_acquire_keeps_its_first_fence_without_blame() {
        let mut h = clean();
        // d's first attempt timed out but made grant 4 on "x"; e then got
        // 5; d's retry returns 4. Not a fence-order violation.
        h.events.push(Event {
            outcome: Outcome::Unknown,
            ..acq("d", "x", 1500, 2500, 0)
        });
        h.events.push(acq("e", "y", 1600, 1610, 5));
        h.events.push(acq("d", "x", 2600, 2610, 4));
        assert_eq!(check(&h, 10_000, 2700), Vec::<String>::new());
        // An attempt between them that did nothing (no leader) changes
        // nothing; one answered `busy` would end the walk.
        h.events.push(Event {
            outcome: Outcome::Fail("not_leader".into()),
            ..acq("d", "x", 2550, 2560, 0)
        });
        assert_eq!(check(&h, 10_000, 2700), Vec::<String>::new());
        h.events.pop();
        // Without the lost first attempt it is one.
        h.events.retain(|e| e.outcome != Outcome::Unknown);
        let bad = check(&h, 10_000, 2700);
        assert!(bad.iter().any(|b| b.starts_with("fence order")), "{bad:?}");
    }

    #[test]
    fn overlapping_holders_are_caught() {
        let mut h = clean();
        h.events.push(acq("d", "k", 20, 30, 9));
        let bad = check(&h, 10_000, 1500);
        assert!(
            bad.iter().any(|b| b.starts_with("mutual exclusion")),
            "{bad:?}"
        );
    }

    #[test]
    fn a_fence_that_goes_back_is_caught() {
        let mut h = clean();
        h.events.push(acq("d", "other", 1500, 1510, 2));
        let bad = check(&h, 10_000, 1600);
        assert!(bad.iter().any(|b| b.starts_with("fence order")), "{bad:?}");
        assert!(
            bad.iter().any(|b| b.starts_with("fence 2 given to")),
            "{bad:?}"
        );
    }

    #[test]
    fn a_lost_grant_is_caught() {
        let mut h = clean();
        h.events.push(acq("d", "x", 1500, 1510, 4));
        h.events.push(rel(
            "d",
            "x",
            4,
            1600,
            1610,
            Outcome::Fail("not_holder".into()),
        ));
        let bad = check(&h, 10_000, 1700);
        assert!(
            bad.iter().any(|b| b.starts_with("lost grant: d")),
            "{bad:?}"
        );
        let mut h = clean();
        h.events.push(fence_read(1500, 2));
        let bad = check(&h, 10_000, 1600);
        assert!(
            bad.iter()
                .any(|b| b.starts_with("lost grant: the fence counter")),
            "{bad:?}"
        );
    }

    #[test]
    fn a_service_that_does_not_come_back_is_caught() {
        let mut h = clean();
        h.faults.push(Fault {
            what: "partition".into(),
            start_ms: 1500,
            end_ms: 1600,
            minority: false,
        });
        let bad = check(&h, 200, 2000);
        assert!(bad.iter().any(|b| b.starts_with("unavailable")), "{bad:?}");
        // A minority fault must not stop service while it lasts either.
        let h = History {
            events: vec![acq("a", "k", 0, 10, 1), acq("a", "j", 5000, 5010, 2)],
            faults: vec![Fault {
                what: "SIGSTOP leader".into(),
                start_ms: 100,
                end_ms: 4000,
                minority: true,
            }],
        };
        let bad = check(&h, 2000, 6000);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("(a minority fault)"), "{bad:?}");
    }
}
