//! Pub/sub signal routing (spec/protocol.md §9, spec/semantics.md §12).
//!
//! Subscriptions live in a token trie, the structure NATS uses for its
//! subject list: a pattern is split on `.`, and each token is an edge from
//! one node to the next: a literal token through the node's `literal` table
//! (hashed with the core's secret key, as peers choose the tokens), `*`
//! through its `star` child, a final `>` through its `rest` child. The node
//! where a pattern ends holds that pattern's [`Subs`]: its ungrouped
//! listeners and its queue groups by name, each a join-ordered [`Members`]
//! list (a group also has a round-robin counter).
//!
//! Costs (n subscriptions, d tokens in the pattern or channel):
//! * `listen`/`unlisten`: one walk down the pattern's path, O(d) hash
//!   lookups, plus O(log n) in the member list; empty nodes are pruned on
//!   the way back.
//! * matching a channel: a walk that follows, at each level, the literal
//!   edge, the `*` edge and the `>` edge. It visits only nodes whose path
//!   matches a prefix of the channel, so its cost is O(d) per pattern
//!   prefix that matches, independent of the subscriptions that do not; the
//!   matched patterns are then sorted, O(m log m) for m matches.
//!
//! Everything is ordered (`BTreeMap`s, join-order members) so that the
//! recipients, the order of pushes and the stats are deterministic and the
//! same as the model's.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::hash::KeyBuild;
use super::members::Members;
use super::ConnId;

/// Frames a connection may have pushed but not yet written (the driver's
/// outbound push queue). A recipient at this count is full (Decision D13).
pub const PUSH_QUEUE_FRAMES: usize = 64;

/// One (pattern, group) subscription's listeners.
#[derive(Default)]
pub struct Group {
    /// Join order.
    pub members: Members,
    /// Round-robin counter: the next signal starts at `next % members.len()`.
    pub next: u64,
    /// Pushes delivered through the group (for introspection only).
    pub pushes: u64,
}

/// Everything subscribed under one pattern.
pub struct Subs {
    pub pattern: Box<[u8]>,
    /// Listeners without a group: each receives every signal.
    pub ungrouped: Members,
    /// Queue groups by (non-empty) name: one member of each receives.
    pub groups: BTreeMap<Box<[u8]>, Group>,
    /// Pushes delivered to the ungrouped listeners (for introspection only).
    pub pushes: u64,
}

impl Subs {
    fn is_empty(&self) -> bool {
        self.ungrouped.is_empty() && self.groups.is_empty()
    }

    fn members(&self, group: &[u8]) -> Option<&Members> {
        if group.is_empty() {
            Some(&self.ungrouped)
        } else {
            self.groups.get(group).map(|g| &g.members)
        }
    }
}

type NodeId = u32;
const ROOT: NodeId = 0;

#[derive(Default)]
struct Node {
    /// (token, child) by token.
    literal: HashTable<(Box<[u8]>, NodeId)>,
    star: Option<NodeId>,
    rest: Option<NodeId>,
    subs: Option<Box<Subs>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.star.is_none() && self.rest.is_none() && self.subs.is_none()
    }
}

/// How one node hangs from its parent.
#[derive(Clone, Copy)]
enum Edge<'a> {
    Literal(&'a [u8]),
    Star,
    Rest,
}

fn edge(token: &[u8]) -> Edge<'_> {
    match token {
        b"*" => Edge::Star,
        b">" => Edge::Rest,
        t => Edge::Literal(t),
    }
}

/// Listeners by pattern, then by group name: the trie.
pub struct Index {
    /// Node arena; `ROOT` always exists.
    nodes: Vec<Node>,
    /// Arena slots free for reuse.
    free: Vec<NodeId>,
    /// Members over all (pattern, group) pairs.
    members: usize,
    /// Hashes literal tokens (SipHash with the core's secret key).
    hash: KeyBuild,
}

impl Index {
    /// An empty index hashing tokens with `key`.
    pub fn new(key: [u64; 2]) -> Index {
        Index {
            nodes: vec![Node::default()],
            free: Vec::new(),
            members: 0,
            hash: KeyBuild(key),
        }
    }
}

/// The terminals a channel reached: the pattern equal to the channel, if
/// subscribed, and the wildcard patterns that match it, in pattern order.
pub struct Matches {
    pub exact: Option<Found>,
    pub wild: Vec<Found>,
}

/// A node holding [`Subs`], as found by [`Index::matches`].
#[derive(Clone, Copy)]
pub struct Found(NodeId);

impl Index {
    fn child(&self, node: NodeId, e: Edge<'_>) -> Option<NodeId> {
        let n = &self.nodes[node as usize];
        match e {
            Edge::Literal(t) => n
                .literal
                .find(self.hash.hash_one(t), |(k, _)| **k == *t)
                .map(|&(_, id)| id),
            Edge::Star => n.star,
            Edge::Rest => n.rest,
        }
    }

    fn alloc(&mut self) -> NodeId {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::default());
                (self.nodes.len() - 1) as NodeId
            }
        }
    }

    /// The node of `pattern`, if its path exists.
    fn find(&self, pattern: &[u8]) -> Option<NodeId> {
        let mut node = ROOT;
        for token in pattern.split(|&b| b == b'.') {
            node = self.child(node, edge(token))?;
        }
        Some(node)
    }

    /// Adds `conn` to (pattern, group). The caller checked it is not a
    /// member. O(d log n).
    pub fn add(&mut self, pattern: &[u8], group: &[u8], conn: ConnId) {
        let mut node = ROOT;
        for token in pattern.split(|&b| b == b'.') {
            let e = edge(token);
            node = match self.child(node, e) {
                Some(next) => next,
                None => {
                    let next = self.alloc();
                    let hash = &self.hash;
                    let n = &mut self.nodes[node as usize];
                    match e {
                        Edge::Literal(t) => {
                            n.literal.insert_unique(
                                hash.hash_one(t),
                                (t.into(), next),
                                |(k, _)| hash.hash_one(&**k),
                            );
                        }
                        Edge::Star => n.star = Some(next),
                        Edge::Rest => n.rest = Some(next),
                    }
                    next
                }
            };
        }
        let subs = self.nodes[node as usize].subs.get_or_insert_with(|| {
            Box::new(Subs {
                pattern: pattern.into(),
                ungrouped: Members::default(),
                groups: BTreeMap::new(),
                pushes: 0,
            })
        });
        if group.is_empty() {
            subs.ungrouped.push(conn);
        } else {
            subs.groups
                .entry(group.into())
                .or_default()
                .members
                .push(conn);
        }
        self.members += 1;
    }

    /// Removes `conn` from (pattern, group), dropping emptied groups, the
    /// pattern's entry and nodes left without children. O(d log n).
    pub fn remove(&mut self, pattern: &[u8], group: &[u8], conn: ConnId) {
        // The path from the root, so that emptied nodes can be unhooked.
        let mut path: Vec<(NodeId, Edge<'_>)> = Vec::new();
        let mut node = ROOT;
        for token in pattern.split(|&b| b == b'.') {
            let e = edge(token);
            let Some(next) = self.child(node, e) else {
                return;
            };
            path.push((node, e));
            node = next;
        }
        let n = &mut self.nodes[node as usize];
        let Some(subs) = n.subs.as_mut() else {
            return;
        };
        if group.is_empty() {
            if !subs.ungrouped.remove(conn) {
                return;
            }
        } else {
            let Some(g) = subs.groups.get_mut(group) else {
                return;
            };
            if !g.members.remove(conn) {
                return;
            }
            if g.members.is_empty() {
                subs.groups.remove(group);
            }
        }
        self.members -= 1;
        if subs.is_empty() {
            n.subs = None;
        }
        // Prune: unhook every node on the path that is now empty.
        while let Some((parent, e)) = path.pop() {
            if !self.nodes[node as usize].is_empty() {
                break;
            }
            let hash = &self.hash;
            let p = &mut self.nodes[parent as usize];
            match e {
                Edge::Literal(t) => {
                    if let Ok(entry) = p.literal.find_entry(hash.hash_one(t), |(k, _)| **k == *t) {
                        entry.remove();
                    }
                }
                Edge::Star => p.star = None,
                Edge::Rest => p.rest = None,
            }
            self.free.push(node);
            node = parent;
        }
    }

    /// Whether `conn` listens on (pattern, group). O(d log n).
    pub fn is_member(&self, pattern: &[u8], group: &[u8], conn: ConnId) -> bool {
        self.find(pattern)
            .and_then(|n| self.nodes[n as usize].subs.as_ref())
            .and_then(|s| s.members(group))
            .is_some_and(|m| m.contains(conn))
    }

    /// The subscriptions a signal on `channel` reaches (semantics §12: the
    /// exact pattern first, then wildcard patterns in byte order).
    pub fn matches(&self, channel: &[u8]) -> Matches {
        let tokens: Vec<&[u8]> = channel.split(|&b| b == b'.').collect();
        let mut exact = None;
        let mut wild = Vec::new();
        // (node, tokens consumed, whether a wildcard edge was taken)
        let mut stack = vec![(ROOT, 0usize, false)];
        while let Some((node, i, via_wild)) = stack.pop() {
            let n = &self.nodes[node as usize];
            let Some(token) = tokens.get(i) else {
                if n.subs.is_some() {
                    if via_wild {
                        wild.push(node);
                    } else {
                        exact = Some(node);
                    }
                }
                continue;
            };
            // `>` takes the one or more tokens left.
            if let Some(rest) = n.rest {
                if self.nodes[rest as usize].subs.is_some() {
                    wild.push(rest);
                }
            }
            if let Some(star) = n.star {
                stack.push((star, i + 1, true));
            }
            if let Some(&(_, next)) = n
                .literal
                .find(self.hash.hash_one(*token), |(k, _)| **k == **token)
            {
                stack.push((next, i + 1, via_wild));
            }
        }
        wild.sort_unstable_by(|a, b| self.pattern_of(*a).cmp(self.pattern_of(*b)));
        Matches {
            exact: exact.map(Found),
            wild: wild.into_iter().map(Found).collect(),
        }
    }

    fn pattern_of(&self, node: NodeId) -> &[u8] {
        self.nodes[node as usize]
            .subs
            .as_ref()
            .map_or(&[][..], |s| &s.pattern[..])
    }

    /// The subscriptions of a pattern found by [`Index::matches`].
    pub fn subs_mut(&mut self, found: Found) -> &mut Subs {
        self.nodes[found.0 as usize]
            .subs
            .as_mut()
            .expect("a match names a node with subscriptions")
    }

    /// Members over all (pattern, group) pairs.
    pub fn member_count(&self) -> usize {
        self.members
    }

    /// Trie nodes, live and free (for a chunked walk by node id).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// `(pattern, group, listeners, pushes)` of each subscription at trie
    /// node `node` (none for a free node or one without subscriptions):
    /// the ungrouped listeners first, then the groups in name order.
    pub fn subs_at(&self, node: usize) -> impl Iterator<Item = (&[u8], &[u8], usize, u64)> {
        let subs = self.nodes.get(node).and_then(|n| n.subs.as_deref());
        subs.into_iter().flat_map(|s| {
            let ungrouped = (!s.ungrouped.is_empty())
                .then(|| (&s.pattern[..], &b""[..], s.ungrouped.len(), s.pushes));
            ungrouped.into_iter().chain(
                s.groups
                    .iter()
                    .map(move |(g, m)| (&s.pattern[..], &g[..], m.members.len(), m.pushes)),
            )
        })
    }

    /// Every pattern's subscriptions (free nodes are empty, so they hold none).
    fn all_subs(&self) -> impl Iterator<Item = &Subs> {
        self.nodes.iter().filter_map(|n| n.subs.as_deref())
    }

    /// `(pattern, group, listeners)` for every subscription, sorted by
    /// pattern then group. O(n log n): this is the `stats` listing.
    pub fn entries(&self) -> Vec<(&[u8], &[u8], usize)> {
        let mut v: Vec<(&[u8], &[u8], usize)> = self
            .all_subs()
            .flat_map(|s| {
                let ungrouped = (!s.ungrouped.is_empty())
                    .then(|| (&s.pattern[..], &b""[..], s.ungrouped.len()));
                ungrouped.into_iter().chain(
                    s.groups
                        .iter()
                        .map(move |(g, m)| (&s.pattern[..], &g[..], m.members.len())),
                )
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Checks the trie's own bookkeeping (for `Core::verify`): every live
    /// node is reachable exactly once, holds something, and the pattern
    /// stored at a node spells its path; member lists are consistent and
    /// non-empty; the member count is right.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = vec![false; self.nodes.len()];
        let mut members = 0;
        // (node, path tokens so far)
        let mut stack: Vec<(NodeId, Vec<u8>)> = vec![(ROOT, Vec::new())];
        while let Some((node, path)) = stack.pop() {
            let i = node as usize;
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("node {node} is reachable twice"));
            }
            let n = &self.nodes[i];
            if node != ROOT && n.is_empty() {
                return Err(format!("node {node} ({path:?}) is empty but not pruned"));
            }
            if let Some(s) = &n.subs {
                if s.pattern[..] != path[..] {
                    return Err(format!(
                        "pattern {:?} stored at path {:?}",
                        String::from_utf8_lossy(&s.pattern),
                        String::from_utf8_lossy(&path)
                    ));
                }
                if s.is_empty() {
                    return Err("a pattern without listeners was kept".into());
                }
                s.ungrouped.check()?;
                members += s.ungrouped.len();
                for (g, grp) in &s.groups {
                    if g.is_empty() {
                        return Err("a queue group without a name".into());
                    }
                    if grp.members.is_empty() {
                        return Err(format!("group {g:?} without members was kept"));
                    }
                    grp.members.check()?;
                    members += grp.members.len();
                }
            }
            let join = |t: &[u8]| {
                let mut p = path.clone();
                if node != ROOT {
                    p.push(b'.');
                }
                p.extend_from_slice(t);
                p
            };
            for (t, c) in n.literal.iter().map(|(t, c)| (t, *c)) {
                if t[..] == b"*"[..] || t[..] == b">"[..] {
                    return Err("a wildcard token stored as a literal".into());
                }
                stack.push((c, join(t)));
            }
            if let Some(c) = n.star {
                stack.push((c, join(b"*")));
            }
            if let Some(c) = n.rest {
                if !self.nodes[c as usize].literal.is_empty()
                    || self.nodes[c as usize].star.is_some()
                    || self.nodes[c as usize].rest.is_some()
                {
                    return Err("`>` is not the last token".into());
                }
                stack.push((c, join(b">")));
            }
        }
        for &f in &self.free {
            if std::mem::replace(&mut seen[f as usize], true) {
                return Err(format!("node {f} is both free and in use"));
            }
        }
        if let Some(lost) = seen.iter().position(|s| !s) {
            return Err(format!("node {lost} is neither reachable nor free"));
        }
        if members != self.members {
            return Err(format!(
                "{members} members in the trie, count says {}",
                self.members
            ));
        }
        Ok(())
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
/// O(log n) plus one step per full member skipped.
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
    if let Some(c) = g.members.rotation(start).find(|&c| !full(c)) {
        return Route::Deliver(c);
    }
    let primary = g.members.nth(start).expect("start < len");
    if evicted(primary) {
        Route::Skip
    } else {
        Route::Evict(primary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATTERNS: &[&str] = &[
        "a", "b", "a.b", "a.*", "a.>", "*", ">", "*.b", "*.*", "a.b.c", "a.*.c", "*.>", "a..b",
        "a.*.>", "b.>", "", "*.*.*",
    ];
    const CHANNELS: &[&str] = &[
        "a", "b", "a.b", "a.c", "a.b.c", "a.x.c", "b.b", "a..b", "x.y.z.w", "", ".", "a.b.c.d",
    ];

    /// The model's reading of a channel: the exact pattern, then matching
    /// wildcard patterns in byte order, by a plain scan with the model's
    /// own `pattern_matches`.
    fn plain(subscribed: &[&str], channel: &str) -> (Option<String>, Vec<String>) {
        let mut exact = None;
        let mut wild: Vec<String> = Vec::new();
        for p in subscribed {
            if *p == channel {
                exact = Some(p.to_string());
            } else if p.split('.').any(|t| t == "*" || t == ">")
                && dflockd_model::machine::pattern_matches(p.as_bytes(), channel.as_bytes())
            {
                wild.push(p.to_string());
            }
        }
        wild.sort();
        wild.dedup();
        (exact, wild)
    }

    fn trie(idx: &Index, channel: &str) -> (Option<String>, Vec<String>) {
        let m = idx.matches(channel.as_bytes());
        let name = |f: &Found| String::from_utf8_lossy(idx.pattern_of(f.0)).into_owned();
        (
            m.exact.as_ref().map(name),
            m.wild.iter().map(name).collect(),
        )
    }

    #[test]
    fn trie_matching_agrees_with_plain_matching() {
        let mut idx = Index::new([1, 2]);
        let mut subscribed: Vec<&str> = Vec::new();
        // Add patterns one at a time, then remove them in another order,
        // comparing every channel at every step.
        for (i, p) in PATTERNS.iter().enumerate() {
            idx.add(p.as_bytes(), b"", ConnId(i as u64 + 1));
            subscribed.push(p);
            idx.check().unwrap();
            for ch in CHANNELS {
                assert_eq!(trie(&idx, ch), plain(&subscribed, ch), "channel {ch:?}");
            }
        }
        for (i, p) in PATTERNS
            .iter()
            .enumerate()
            .rev()
            .step_by(2)
            .chain(PATTERNS.iter().enumerate().rev().skip(1).step_by(2))
        {
            idx.remove(p.as_bytes(), b"", ConnId(i as u64 + 1));
            subscribed.retain(|s| s != p);
            idx.check().unwrap();
            for ch in CHANNELS {
                assert_eq!(trie(&idx, ch), plain(&subscribed, ch), "channel {ch:?}");
            }
        }
        assert_eq!(idx.nodes.len() - idx.free.len(), 1, "only the root is left");
        assert_eq!(idx.member_count(), 0);
    }

    #[test]
    fn random_patterns_and_channels_agree_with_the_model() {
        // Patterns of 1-4 tokens from a small alphabet (so that they
        // overlap), `>` only last; channels from the same literals.
        let mut x: u64 = 0x853c_49e6_748f_ea9b;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let literals = ["a", "b", "", "ab"];
        let mut idx = Index::new([3, 4]);
        let mut subscribed: Vec<String> = Vec::new();
        for round in 0..400 {
            let depth = 1 + next(4) as usize;
            let tokens: Vec<&str> = (0..depth)
                .map(|i| match next(6) {
                    0 => "*",
                    1 if i + 1 == depth => ">",
                    k => literals[(k % 4) as usize],
                })
                .collect();
            let p = tokens.join(".");
            if let Some(i) = subscribed.iter().position(|s| *s == p) {
                subscribed.remove(i);
                idx.remove(p.as_bytes(), b"", ConnId(1));
            } else {
                idx.add(p.as_bytes(), b"", ConnId(1));
                subscribed.push(p);
            }
            if round % 10 == 0 {
                idx.check().unwrap();
            }
            let refs: Vec<&str> = subscribed.iter().map(String::as_str).collect();
            for _ in 0..8 {
                let depth = 1 + next(5) as usize;
                let ch: Vec<&str> = (0..depth).map(|_| literals[next(4) as usize]).collect();
                let ch = ch.join(".");
                assert_eq!(trie(&idx, &ch), plain(&refs, &ch), "channel {ch:?}");
            }
        }
    }

    #[test]
    fn groups_and_members_are_kept_per_pattern() {
        let mut idx = Index::new([1, 2]);
        idx.add(b"a.*", b"", ConnId(1));
        idx.add(b"a.*", b"g", ConnId(2));
        idx.add(b"a.*", b"g", ConnId(3));
        idx.add(b"a.*", b"h", ConnId(1));
        assert!(idx.is_member(b"a.*", b"g", ConnId(3)));
        assert!(!idx.is_member(b"a.*", b"h", ConnId(3)));
        assert!(!idx.is_member(b"a", b"", ConnId(1)));
        assert_eq!(
            idx.entries(),
            vec![
                (&b"a.*"[..], &b""[..], 1),
                (&b"a.*"[..], &b"g"[..], 2),
                (&b"a.*"[..], &b"h"[..], 1)
            ]
        );
        let m = idx.matches(b"a.z");
        assert!(m.exact.is_none());
        let subs = idx.subs_mut(m.wild[0]);
        assert_eq!(subs.ungrouped.iter().collect::<Vec<_>>(), vec![ConnId(1)]);
        let names: Vec<&[u8]> = subs.groups.keys().map(|g| &g[..]).collect();
        assert_eq!(names, vec![&b"g"[..], b"h"], "groups in name order");
        // Round robin over the group, counter kept while it has members.
        let g = subs.groups.get_mut(&b"g"[..]).unwrap();
        let picks: Vec<u64> = (0..4)
            .map(|_| match pick(g, |_| false, |_| false) {
                Route::Deliver(c) => c.0,
                _ => 0,
            })
            .collect();
        assert_eq!(picks, vec![2, 3, 2, 3]);
        // A full member is skipped (counter 4 starts at c2, full); when all
        // are full the primary (counter 5: c3) is evicted.
        assert!(matches!(
            pick(g, |c| c == ConnId(2), |_| false),
            Route::Deliver(ConnId(3))
        ));
        assert!(matches!(
            pick(g, |_| true, |_| false),
            Route::Evict(ConnId(3))
        ));
        assert!(matches!(pick(g, |_| true, |_| true), Route::Skip));
        idx.remove(b"a.*", b"g", ConnId(2));
        idx.remove(b"a.*", b"g", ConnId(3));
        idx.check().unwrap();
        assert_eq!(idx.entries().len(), 2);
        idx.remove(b"a.*", b"h", ConnId(1));
        idx.remove(b"a.*", b"", ConnId(1));
        idx.check().unwrap();
        assert!(idx.entries().is_empty());
        assert!(idx.matches(b"a.z").wild.is_empty());
    }

    #[test]
    fn removing_what_is_not_there_changes_nothing() {
        let mut idx = Index::new([1, 2]);
        idx.add(b"x.y", b"", ConnId(1));
        idx.remove(b"x.y", b"", ConnId(2));
        idx.remove(b"x.y", b"g", ConnId(1));
        idx.remove(b"x", b"", ConnId(1));
        idx.remove(b"x.y.z", b"", ConnId(1));
        idx.check().unwrap();
        assert_eq!(idx.member_count(), 1);
        assert!(idx.matches(b"x.y").exact.is_some());
    }

    #[test]
    fn the_check_refuses_a_node_under_a_rest_wildcard() {
        // `>` matches the rest of a channel, so nothing may hang below it;
        // the check must say so even when only one kind of child is there.
        for kind in ["star", "rest"] {
            let mut idx = Index::new([1, 2]);
            idx.add(b">", b"", ConnId(1));
            idx.add(b"*", b"", ConnId(2));
            idx.check().unwrap();
            let rest = idx.nodes[ROOT as usize].rest.unwrap();
            let star = idx.nodes[ROOT as usize].star.unwrap();
            match kind {
                "star" => idx.nodes[rest as usize].star = Some(star),
                _ => idx.nodes[rest as usize].rest = Some(star),
            }
            let err = idx.check().unwrap_err();
            assert!(err.contains("`>` is not the last token"), "{kind}: {err}");
        }
    }

    #[test]
    fn the_check_refuses_a_wildcard_stored_as_a_literal() {
        // `*` and `>` have their own edges; either one filed among the
        // literal tokens would be matched literally, so the check names it.
        for wild in [&b"*"[..], &b">"[..]] {
            let mut idx = Index::new([1, 2]);
            idx.add(wild, b"", ConnId(1));
            let root = &mut idx.nodes[ROOT as usize];
            let node = root.star.take().or(root.rest.take()).unwrap();
            let hash = &idx.hash;
            idx.nodes[ROOT as usize].literal.insert_unique(
                hash.hash_one(wild),
                (wild.into(), node),
                |(k, _)| hash.hash_one(&**k),
            );
            let err = idx.check().unwrap_err();
            assert!(
                err.contains("a wildcard token stored as a literal"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_channel_reaches_only_the_patterns_of_its_branch() {
        // 10 000 patterns under their own first token: a channel under
        // another first token visits a handful of nodes, not 10 000.
        let mut idx = Index::new([1, 2]);
        for i in 0..10_000u64 {
            idx.add(format!("p{i}.*").as_bytes(), b"", ConnId(1));
        }
        idx.add(b"q.*", b"", ConnId(2));
        let m = idx.matches(b"q.1");
        assert_eq!(m.wild.len(), 1);
        assert!(m.exact.is_none());
        idx.check().unwrap();
    }
}
