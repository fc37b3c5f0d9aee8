//! The `stats` snapshot and its one-line JSON rendering.
//!
//! Field names and shapes follow upstream (`spec/protocol.md`); arrays are
//! always present and sorted by key (lock space first for equal keys) so that the output is deterministic
//! (upstream leaves the order unspecified). Keys are byte strings; they are
//! rendered as UTF-8 with invalid sequences replaced.

use serde::Serialize;

use crate::wire::Space;

#[derive(Default)]
pub struct Snapshot<'a> {
    pub connections: usize,
    pub locks: Vec<LockEntry<'a>>,
    pub semaphores: Vec<SemEntry<'a>>,
    pub idle_locks: Vec<IdleEntry<'a>>,
    pub idle_semaphores: Vec<IdleEntry<'a>>,
    /// Sorted by pattern, then group.
    pub signal_channels: Vec<ChannelEntry<'a>>,
}

pub struct ChannelEntry<'a> {
    pub pattern: &'a [u8],
    /// Empty when ungrouped (then omitted from the JSON).
    pub group: &'a [u8],
    pub listeners: usize,
}

pub struct LockEntry<'a> {
    pub key: &'a [u8],
    /// Orders entries with equal keys: lock space first.
    pub space: Space,
    pub owner_conn_id: u64,
    pub lease_expires_in_s: f64,
    pub waiters: usize,
}

pub struct SemEntry<'a> {
    pub key: &'a [u8],
    /// Orders entries with equal keys: lock space first.
    pub space: Space,
    pub limit: u64,
    pub holders: usize,
    pub waiters: usize,
}

pub struct IdleEntry<'a> {
    pub key: &'a [u8],
    /// Orders entries with equal keys: lock space first.
    pub space: Space,
    pub idle_s: f64,
}

#[derive(Serialize)]
struct Json<'a> {
    connections: usize,
    locks: Vec<JsonLock<'a>>,
    semaphores: Vec<JsonSem<'a>>,
    idle_locks: Vec<JsonIdle<'a>>,
    idle_semaphores: Vec<JsonIdle<'a>>,
    signal_channels: Vec<JsonChannel>,
}

#[derive(Serialize)]
struct JsonLock<'a> {
    key: std::borrow::Cow<'a, str>,
    owner_conn_id: u64,
    lease_expires_in_s: f64,
    waiters: usize,
}

#[derive(Serialize)]
struct JsonSem<'a> {
    key: std::borrow::Cow<'a, str>,
    limit: u64,
    holders: usize,
    waiters: usize,
}

#[derive(Serialize)]
struct JsonIdle<'a> {
    key: std::borrow::Cow<'a, str>,
    idle_s: f64,
}

#[derive(Serialize)]
struct JsonChannel {
    pattern: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    listeners: usize,
}

fn text(key: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(key)
}

/// Renders the snapshot as one line of JSON (no newlines: serde_json
/// escapes control characters inside strings).
pub fn render(mut s: Snapshot<'_>) -> String {
    s.locks
        .sort_by(|a, b| (a.key, a.space).cmp(&(b.key, b.space)));
    s.semaphores
        .sort_by(|a, b| (a.key, a.space).cmp(&(b.key, b.space)));
    s.idle_locks
        .sort_by(|a, b| (a.key, a.space).cmp(&(b.key, b.space)));
    s.idle_semaphores
        .sort_by(|a, b| (a.key, a.space).cmp(&(b.key, b.space)));
    let json = Json {
        connections: s.connections,
        locks: s
            .locks
            .iter()
            .map(|l| JsonLock {
                key: text(l.key),
                owner_conn_id: l.owner_conn_id,
                lease_expires_in_s: l.lease_expires_in_s,
                waiters: l.waiters,
            })
            .collect(),
        semaphores: s
            .semaphores
            .iter()
            .map(|l| JsonSem {
                key: text(l.key),
                limit: l.limit,
                holders: l.holders,
                waiters: l.waiters,
            })
            .collect(),
        idle_locks: s
            .idle_locks
            .iter()
            .map(|l| JsonIdle {
                key: text(l.key),
                idle_s: l.idle_s,
            })
            .collect(),
        idle_semaphores: s
            .idle_semaphores
            .iter()
            .map(|l| JsonIdle {
                key: text(l.key),
                idle_s: l.idle_s,
            })
            .collect(),
        signal_channels: s
            .signal_channels
            .iter()
            .map(|c| JsonChannel {
                pattern: text(c.pattern).into_owned(),
                group: (!c.group.is_empty()).then(|| text(c.group).into_owned()),
                listeners: c.listeners,
            })
            .collect(),
    };
    serde_json::to_string(&json).unwrap_or_else(|_| String::from("{}"))
}
