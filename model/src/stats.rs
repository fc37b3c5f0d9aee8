//! The `stats` snapshot (reference §6): a structured, sorted view for
//! comparison with the core, and its one-line JSON rendering for the `stats`
//! reply. The view keeps times in whole milliseconds so two implementations
//! can be compared exactly; the JSON shows seconds as floats, as upstream.
//!
//! Classification is by limit, not by space (reference §13.18): every
//! resource with limit 1 (all locks, and semaphores created with limit 1) is
//! listed under `locks`/`idle_locks`; the rest under `semaphores`/
//! `idle_semaphores`. A resource with a holder or a waiter is *active*;
//! otherwise it is *idle*, never both (reference §12.28).

use serde::Serialize;

use crate::machine::Resource;

/// An active limit-1 resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LockStat {
    /// The key, rendered lossily as UTF-8.
    pub key: String,
    /// The holder's connection, 0 when only waiters exist.
    pub owner_conn_id: u64,
    /// Until the holder's deadline, clamped at 0; 0 when there is no holder.
    pub lease_expires_in_ms: u64,
    pub waiters: u64,
}

/// An active resource with limit > 1.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SemStat {
    pub key: String,
    pub limit: u64,
    pub holders: u64,
    pub waiters: u64,
}

/// A resource with no holder and no waiter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct IdleStat {
    pub key: String,
    /// Since the resource's last activity.
    pub idle_ms: u64,
}

/// Everything `stats` reports, each list sorted by key bytes (then lock
/// space before semaphore space for equal keys).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct StatsView {
    pub connections: u64,
    pub locks: Vec<LockStat>,
    pub semaphores: Vec<SemStat>,
    pub idle_locks: Vec<IdleStat>,
    pub idle_semaphores: Vec<IdleStat>,
    /// One per (pattern, group), sorted by bytes; group empty = ungrouped.
    pub signal_channels: Vec<ChannelStat>,
}

/// Listeners of one (pattern, group) subscription (§12).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ChannelStat {
    pub pattern: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    pub listeners: u64,
}

/// Builds the view from resources already sorted by (key, space).
pub(crate) fn build(connections: usize, resources: &[Resource], now_ms: u64) -> StatsView {
    let mut v = StatsView {
        connections: connections as u64,
        locks: Vec::new(),
        semaphores: Vec::new(),
        idle_locks: Vec::new(),
        idle_semaphores: Vec::new(),
        signal_channels: Vec::new(),
    };
    for r in resources {
        let key = String::from_utf8_lossy(&r.key).into_owned();
        let active = !r.holders.is_empty() || !r.waiters.is_empty();
        if !active {
            let idle = IdleStat {
                key,
                idle_ms: now_ms.saturating_sub(r.last_activity_ms),
            };
            if r.limit == 1 {
                v.idle_locks.push(idle);
            } else {
                v.idle_semaphores.push(idle);
            }
        } else if r.limit == 1 {
            let holder = r.holders.first();
            v.locks.push(LockStat {
                key,
                owner_conn_id: holder.map_or(0, |h| h.conn),
                lease_expires_in_ms: holder.map_or(0, |h| h.deadline_ms.saturating_sub(now_ms)),
                waiters: r.waiters.len() as u64,
            });
        } else {
            v.semaphores.push(SemStat {
                key,
                limit: r.limit,
                holders: r.holders.len() as u64,
                waiters: r.waiters.len() as u64,
            });
        }
    }
    v
}

/// The JSON object of the `stats` reply (without the leading `ok `), on one
/// line, with the upstream field names and order, and seconds as floats.
pub fn to_json(v: &StatsView) -> String {
    #[derive(Serialize)]
    struct Lock<'a> {
        key: &'a str,
        owner_conn_id: u64,
        lease_expires_in_s: f64,
        waiters: u64,
    }
    #[derive(Serialize)]
    struct Idle<'a> {
        key: &'a str,
        idle_s: f64,
    }
    #[derive(Serialize)]
    struct Stats<'a> {
        connections: u64,
        locks: Vec<Lock<'a>>,
        semaphores: &'a [SemStat],
        idle_locks: Vec<Idle<'a>>,
        idle_semaphores: Vec<Idle<'a>>,
        /// Always present (D8).
        signal_channels: &'a [ChannelStat],
    }
    fn secs(ms: u64) -> f64 {
        ms as f64 / 1000.0
    }
    fn idle(list: &[IdleStat]) -> Vec<Idle<'_>> {
        list.iter()
            .map(|i| Idle {
                key: &i.key,
                idle_s: secs(i.idle_ms),
            })
            .collect()
    }
    let json = Stats {
        connections: v.connections,
        locks: v
            .locks
            .iter()
            .map(|l| Lock {
                key: &l.key,
                owner_conn_id: l.owner_conn_id,
                lease_expires_in_s: secs(l.lease_expires_in_ms),
                waiters: l.waiters,
            })
            .collect(),
        semaphores: &v.semaphores,
        idle_locks: idle(&v.idle_locks),
        idle_semaphores: idle(&v.idle_semaphores),
        signal_channels: &v.signal_channels,
    };
    serde_json::to_string(&json).expect("stats always serialises")
}
