//! Pub/sub signal routing (spec/protocol.md §9, spec/semantics.md §12).
//!
//! The index maps each subscribed pattern to its groups (the empty group
//! name is the ungrouped listeners); each group keeps its members in join
//! order and a round-robin counter. Exact (wildcard-free) patterns and
//! wildcard patterns live in separate ordered maps: an exact pattern is found
//! by one lookup of the channel; wildcard patterns are scanned in order.
//! Everything is ordered (`BTreeMap`, join-order `Vec`s) so that the set of
//! recipients, the order of pushes and the stats are deterministic.

use std::collections::BTreeMap;

use super::ConnId;

/// Frames a connection may have pushed but not yet written (the driver's
/// outbound push queue). A recipient at this count is full (Decision D13).
pub const PUSH_QUEUE_FRAMES: usize = 64;

/// One (pattern, group) subscription's listeners.
#[derive(Default)]
pub struct Group {
    /// Join order.
    pub members: Vec<ConnId>,
    /// Round-robin counter: the next signal starts at `next % members.len()`.
    pub next: u64,
}

/// A pattern's groups by name (empty = ungrouped, sorts first).
pub type Groups = BTreeMap<Box<[u8]>, Group>;
/// Patterns to their groups.
pub type Patterns = BTreeMap<Box<[u8]>, Groups>;

/// Listeners by pattern, then by group name.
#[derive(Default)]
pub struct Index {
    pub exact: Patterns,
    pub wild: Patterns,
}

/// Whether `pattern` contains a `*` or `>` token (the decoder has already
/// checked that wildcards are whole tokens).
pub fn is_wildcard(pattern: &[u8]) -> bool {
    pattern.iter().any(|&b| b == b'*' || b == b'>')
}

/// Token-by-token match: `*` matches exactly one token, a trailing `>` one
/// or more; otherwise tokens must be equal and counts must agree.
pub fn matches(pattern: &[u8], channel: &[u8]) -> bool {
    let mut p = pattern.split(|&b| b == b'.');
    let mut c = channel.split(|&b| b == b'.');
    loop {
        match (p.next(), c.next()) {
            (None, None) => return true,
            (Some(b">"), Some(_)) => return true,
            (Some(b"*"), Some(_)) => {}
            (Some(pt), Some(ct)) if pt == ct => {}
            _ => return false,
        }
    }
}

impl Index {
    fn map_mut(&mut self, pattern: &[u8]) -> &mut Patterns {
        if is_wildcard(pattern) {
            &mut self.wild
        } else {
            &mut self.exact
        }
    }

    /// Adds `conn` to (pattern, group). The caller checked it is not a member.
    pub fn add(&mut self, pattern: &[u8], group: &[u8], conn: ConnId) {
        self.map_mut(pattern)
            .entry(pattern.into())
            .or_default()
            .entry(group.into())
            .or_default()
            .members
            .push(conn);
    }

    /// Removes `conn` from (pattern, group), dropping emptied entries.
    pub fn remove(&mut self, pattern: &[u8], group: &[u8], conn: ConnId) {
        let map = self.map_mut(pattern);
        let Some(groups) = map.get_mut(pattern) else {
            return;
        };
        if let Some(g) = groups.get_mut(group) {
            g.members.retain(|c| *c != conn);
            if g.members.is_empty() {
                groups.remove(group);
            }
        }
        if groups.is_empty() {
            map.remove(pattern);
        }
    }

    /// `(pattern, group, listeners)` for every subscription, sorted by
    /// pattern then group.
    pub fn entries(&self) -> Vec<(&[u8], &[u8], usize)> {
        let mut v: Vec<(&[u8], &[u8], usize)> = self
            .exact
            .iter()
            .chain(self.wild.iter())
            .flat_map(|(p, groups)| {
                groups
                    .iter()
                    .map(move |(g, m)| (&p[..], &g[..], m.members.len()))
            })
            .collect();
        v.sort_unstable();
        v
    }
}

/// What one route of a signal resolved to.
pub enum Route {
    /// Deliver to this connection.
    Deliver(ConnId),
    /// Every candidate was full: evict this one, deliver nothing.
    Evict(ConnId),
    /// Nothing to do (the only candidate was already evicted).
    Skip,
}

/// Picks the member of a group that receives a signal: round-robin from the
/// counter, skipping members for which `full` holds; if all are full, the
/// primary (the round-robin start) is evicted unless it already was.
pub fn pick(
    g: &mut Group,
    full: impl Fn(ConnId) -> bool,
    evicted: impl Fn(ConnId) -> bool,
) -> Route {
    let n = g.members.len();
    if n == 0 {
        return Route::Skip;
    }
    let start = (g.next % n as u64) as usize;
    g.next = g.next.wrapping_add(1);
    for i in 0..n {
        let c = g.members[(start + i) % n];
        if !full(c) {
            return Route::Deliver(c);
        }
    }
    let primary = g.members[start];
    if evicted(primary) {
        Route::Skip
    } else {
        Route::Evict(primary)
    }
}
