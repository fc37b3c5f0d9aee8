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
pub fn render(s: Snapshot<'_>) -> String {
    join(render_pieces(s, usize::MAX))
}

/// The pieces of `render_pieces` as one string (no copy when there is
/// one piece, as with an unbounded `piece_bytes`).
pub fn join(pieces: Vec<Vec<u8>>) -> String {
    let bytes = if pieces.len() == 1 {
        pieces.into_iter().next().unwrap_or_default()
    } else {
        pieces.concat()
    };
    // Only `&str`s (lossy UTF-8) and numbers were written.
    String::from_utf8(bytes).unwrap_or_else(|_| String::from("{}"))
}

/// The same JSON as [`render`], as consecutive pieces of about
/// `piece_bytes` each (one entry may run past it): a large listing is
/// written piece by piece, never copied or reallocated as a whole. Each
/// entry is serialised on its own, exactly as serde_json writes it as an
/// element of its array (compact: no spaces), so the concatenation is the
/// struct serde_json would have written in one go.
pub fn render_pieces(s: Snapshot<'_>, piece_bytes: usize) -> Vec<Vec<u8>> {
    render_pieces_paced(s, piece_bytes, &mut || {})
}

/// Entries serialised between two calls of the pacer.
pub const PACE_EVERY: usize = 4096;

/// [`render_pieces`], calling `pace` between the sorts and every
/// [`PACE_EVERY`] entries: the render thread rests there
/// (`engine::introspect`). The bytes are the same.
pub fn render_pieces_paced(
    mut s: Snapshot<'_>,
    piece_bytes: usize,
    pace: &mut dyn FnMut(),
) -> Vec<Vec<u8>> {
    s.locks
        .sort_by(|a, b| (a.key, a.space).cmp(&(b.key, b.space)));
    pace();
    s.semaphores
        .sort_by(|a, b| (a.key, a.space).cmp(&(b.key, b.space)));
    pace();
    s.idle_locks
        .sort_by(|a, b| (a.key, a.space).cmp(&(b.key, b.space)));
    pace();
    s.idle_semaphores
        .sort_by(|a, b| (a.key, a.space).cmp(&(b.key, b.space)));
    pace();
    let mut w = Pieces::new(piece_bytes, pace);
    w.raw(b"{\"connections\":");
    w.entry(&s.connections);
    w.raw(b",\"locks\":");
    w.array(s.locks.iter().map(|l| JsonLock {
        key: text(l.key),
        owner_conn_id: l.owner_conn_id,
        lease_expires_in_s: l.lease_expires_in_s,
        waiters: l.waiters,
    }));
    w.raw(b",\"semaphores\":");
    w.array(s.semaphores.iter().map(|l| JsonSem {
        key: text(l.key),
        limit: l.limit,
        holders: l.holders,
        waiters: l.waiters,
    }));
    w.raw(b",\"idle_locks\":");
    w.array(s.idle_locks.iter().map(|l| JsonIdle {
        key: text(l.key),
        idle_s: l.idle_s,
    }));
    w.raw(b",\"idle_semaphores\":");
    w.array(s.idle_semaphores.iter().map(|l| JsonIdle {
        key: text(l.key),
        idle_s: l.idle_s,
    }));
    w.raw(b",\"signal_channels\":");
    w.array(s.signal_channels.iter().map(|c| JsonChannel {
        pattern: text(c.pattern).into_owned(),
        group: (!c.group.is_empty()).then(|| text(c.group).into_owned()),
        listeners: c.listeners,
    }));
    w.raw(b"}");
    w.finish()
}

/// The pieces [`render_pieces`] fills: a new one starts once the current
/// one reaches `limit` bytes.
struct Pieces<'p> {
    limit: usize,
    done: Vec<Vec<u8>>,
    cur: Vec<u8>,
    pace: &'p mut dyn FnMut(),
    /// Entries since the pacer was last called.
    since_pace: usize,
}

impl<'p> Pieces<'p> {
    fn new(limit: usize, pace: &'p mut dyn FnMut()) -> Pieces<'p> {
        Pieces {
            limit,
            done: Vec::new(),
            cur: Vec::new(),
            pace,
            since_pace: 0,
        }
    }

    fn roll(&mut self) {
        if self.cur.len() >= self.limit {
            let cap = self.limit.saturating_add(self.limit / 8).min(1 << 20);
            let full = std::mem::replace(&mut self.cur, Vec::with_capacity(cap));
            self.done.push(full);
        }
    }

    fn raw(&mut self, b: &[u8]) {
        self.cur.extend_from_slice(b);
        self.roll();
    }

    fn entry(&mut self, v: &impl Serialize) {
        // Writing to a `Vec` cannot fail, nor can these types' serialisation.
        let _ = serde_json::to_writer(&mut self.cur, v);
        self.roll();
        self.since_pace += 1;
        if self.since_pace == PACE_EVERY {
            self.since_pace = 0;
            (self.pace)();
        }
    }

    fn array<T: Serialize>(&mut self, items: impl Iterator<Item = T>) {
        self.raw(b"[");
        for (i, v) in items.enumerate() {
            if i > 0 {
                self.cur.push(b',');
            }
            self.entry(&v);
        }
        self.raw(b"]");
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if !self.cur.is_empty() || self.done.is_empty() {
            self.done.push(self.cur);
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape serde_json gave the whole snapshot in one go (before the
    /// pieces): the pieces must join to exactly these bytes.
    #[derive(Serialize)]
    struct Whole<'a> {
        connections: usize,
        locks: Vec<JsonLock<'a>>,
        semaphores: Vec<JsonSem<'a>>,
        idle_locks: Vec<JsonIdle<'a>>,
        idle_semaphores: Vec<JsonIdle<'a>>,
        signal_channels: Vec<JsonChannel>,
    }

    fn snapshot() -> Snapshot<'static> {
        let lock = |key: &'static [u8], space, waiters| LockEntry {
            key,
            space,
            owner_conn_id: 7,
            lease_expires_in_s: 1.25,
            waiters,
        };
        let idle = |key: &'static [u8]| IdleEntry {
            key,
            space: Space::Lock,
            idle_s: 0.1 + 0.2,
        };
        Snapshot {
            connections: 3,
            locks: vec![
                lock(b"b\"q\\\n", Space::Lock, 2),
                lock(b"a\xff", Space::Lock, 0),
                lock(b"a\xff", Space::Sem, 1),
            ],
            semaphores: vec![SemEntry {
                key: b"s",
                space: Space::Sem,
                limit: u64::MAX,
                holders: 2,
                waiters: 0,
            }],
            idle_locks: vec![idle(b"i2"), idle(b"i1")],
            idle_semaphores: vec![],
            signal_channels: vec![
                ChannelEntry {
                    pattern: b"jobs.*",
                    group: b"",
                    listeners: 1,
                },
                ChannelEntry {
                    pattern: b"jobs.*",
                    group: b"g",
                    listeners: 2,
                },
            ],
        }
    }

    fn whole(mut s: Snapshot<'_>) -> String {
        s.locks
            .sort_by(|a, b| (a.key, a.space).cmp(&(b.key, b.space)));
        s.idle_locks
            .sort_by(|a, b| (a.key, a.space).cmp(&(b.key, b.space)));
        let w = Whole {
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
            idle_semaphores: Vec::new(),
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
        serde_json::to_string(&w).unwrap()
    }

    /// The pacer is called between the stages and every `PACE_EVERY`
    /// entries, and the bytes are those of the unpaced render.
    #[test]
    fn a_paced_render_calls_the_pacer_and_gives_the_same_bytes() {
        let keys: Vec<Vec<u8>> = (0..3 * PACE_EVERY + 5)
            .map(|i| format!("k{i:06}").into_bytes())
            .collect();
        let big = || Snapshot {
            connections: 1,
            locks: keys
                .iter()
                .map(|k| LockEntry {
                    key: k,
                    space: Space::Lock,
                    owner_conn_id: 1,
                    lease_expires_in_s: 2.5,
                    waiters: 0,
                })
                .collect(),
            ..Default::default()
        };
        let mut calls = 0;
        let paced = render_pieces_paced(big(), 1000, &mut || calls += 1);
        assert_eq!(join(paced), join(render_pieces(big(), 1000)));
        // Four sorts, then every PACE_EVERY entries (the connections count
        // is one too).
        assert_eq!(calls, 4 + (keys.len() + 1) / PACE_EVERY);
    }

    #[test]
    fn pieces_join_to_what_serde_json_wrote_in_one_go() {
        let expected = whole(snapshot());
        assert!(expected.contains("\"idle_semaphores\":[]"), "{expected}");
        assert_eq!(render(snapshot()), expected);
        for piece in [1, 5, 40, 1 << 16] {
            let pieces = render_pieces(snapshot(), piece);
            assert_eq!(pieces.concat(), expected.as_bytes(), "piece {piece}");
            assert!(pieces.iter().all(|p| !p.is_empty()));
            if piece == 1 {
                assert!(pieces.len() > 10, "{}", pieces.len());
            }
        }
    }
}
