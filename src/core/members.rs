//! The listeners of one (pattern, group) subscription, in join order.
//!
//! Signal delivery needs three things from a member list (spec/semantics.md
//! §12): iterate members in join order (ungrouped listeners receive in that
//! order), find the member at a given rank (a queue group's round-robin
//! counter picks `counter % len`), and let any member leave without
//! disturbing the order of the others. A `Vec` does the first two and pays
//! O(n) for the third, which is what let one client with many subscriptions
//! slow down every `unlisten` and disconnect.
//!
//! Here members sit in join-order slots; a member that leaves leaves a hole.
//! A Fenwick tree over the slots counts the live ones, so the member of rank
//! `k` is found in O(log n) and a removal costs O(log n). When holes
//! outnumber members the slots are compacted, in O(n) once per as many
//! removals: amortized O(1). `pos` maps each member to its slot.
//!
//! Most lists are tiny (one listener on a pattern). Up to [`SMALL`] slots,
//! the list is just its slots, searched in order (at most `SMALL` steps, so
//! O(1)); the tree and the positions are built when it grows past that.

use std::collections::HashMap;

use super::hash::IdBuild;
use super::ConnId;

/// Marks a slot whose member left. The core numbers connections from 1.
const HOLE: ConnId = ConnId(0);

/// Holes tolerated before a compaction, whatever the live count.
const SLACK: usize = 16;

/// Slots a list may have before it builds its tree and positions.
const SMALL: usize = 16;

#[derive(Default)]
pub struct Members {
    /// Join order; `HOLE` where a member left.
    slots: Vec<ConnId>,
    /// Live members.
    len: usize,
    /// Once `slots` outgrew `SMALL`: the tree and the positions.
    big: Option<Box<Big>>,
}

struct Big {
    /// Fenwick tree over `slots` (1-based: node `i` is `tree[i - 1]`): node
    /// `i` counts the live slots in `(i - lowbit(i), i]`.
    tree: Vec<u32>,
    /// Slot of every live member.
    pos: HashMap<ConnId, u32, IdBuild>,
}

fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

impl Members {
    /// Number of live members.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot of `conn`, if it is a member. O(1).
    fn slot(&self, conn: ConnId) -> Option<usize> {
        match &self.big {
            Some(big) => big.pos.get(&conn).map(|&s| s as usize),
            None => self.slots.iter().position(|&c| c == conn),
        }
    }

    pub fn contains(&self, conn: ConnId) -> bool {
        self.slot(conn).is_some()
    }

    /// Adds `conn` after every current member. O(log n). The caller checked
    /// it is not a member.
    pub fn push(&mut self, conn: ConnId) {
        assert!(conn != HOLE, "connection id 0 is reserved");
        debug_assert!(!self.contains(conn), "a connection joined a group twice");
        let slot = self.slots.len();
        self.slots.push(conn);
        self.len += 1;
        match &mut self.big {
            Some(big) => {
                let prior = big.pos.insert(conn, slot as u32);
                assert!(prior.is_none(), "a connection joined a group twice");
                // Node `i = slot + 1` covers `(i - lowbit(i), i]`: this slot
                // plus the live ones in `(i - lowbit(i), i - 1]`.
                let i = slot + 1;
                let below = prefix(&big.tree, i - 1) - prefix(&big.tree, i - lowbit(i));
                big.tree.push(below + 1);
            }
            None if self.slots.len() > SMALL => self.build(),
            None => {}
        }
    }

    /// Removes `conn`; false if it was not a member. Amortized O(log n).
    pub fn remove(&mut self, conn: ConnId) -> bool {
        let Some(slot) = self.slot(conn) else {
            return false;
        };
        self.slots[slot] = HOLE;
        self.len -= 1;
        if let Some(big) = &mut self.big {
            big.pos.remove(&conn);
            let mut i = slot + 1;
            while i <= big.tree.len() {
                big.tree[i - 1] -= 1;
                i += lowbit(i);
            }
        }
        let holes = self.slots.len() - self.len;
        if self.len == 0 {
            self.slots = Vec::new();
            self.big = None;
        } else if holes > SLACK && holes > self.len {
            self.compact();
        }
        true
    }

    /// Live members in join order.
    pub fn iter(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slots.iter().copied().filter(|&c| c != HOLE)
    }

    /// Every live member once, starting at rank `start % len` and wrapping
    /// around in join order. O(log n) to start, then O(1) amortized per item.
    pub fn rotation(&self, start: usize) -> impl Iterator<Item = ConnId> + '_ {
        let first = if self.is_empty() {
            0
        } else {
            self.slot_of_rank(start % self.len())
        };
        let (before, after) = self.slots.split_at(first);
        after.iter().chain(before).copied().filter(|&c| c != HOLE)
    }

    /// The member at rank `rank` (0-based, join order), if any. O(log n).
    pub fn nth(&self, rank: usize) -> Option<ConnId> {
        (rank < self.len()).then(|| self.slots[self.slot_of_rank(rank)])
    }

    /// The slot index of the live member of rank `rank < len`.
    fn slot_of_rank(&self, rank: usize) -> usize {
        let Some(big) = &self.big else {
            return self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, &c)| c != HOLE)
                .nth(rank)
                .map_or(0, |(i, _)| i);
        };
        // Descend the implicit tree: find the largest `pos` with
        // `prefix(pos) <= rank`; the member is then slot `pos`.
        let n = big.tree.len();
        let mut pos = 0;
        let mut rem = rank as u32;
        let mut step = if n == 0 { 0 } else { 1 << n.ilog2() };
        while step > 0 {
            let next = pos + step;
            if next <= n && big.tree[next - 1] <= rem {
                pos = next;
                rem -= big.tree[next - 1];
            }
            step >>= 1;
        }
        pos
    }

    /// Drops the holes; rebuilds the tree and positions, or drops them if
    /// the list is small again. O(n).
    fn compact(&mut self) {
        self.slots.retain(|&c| c != HOLE);
        self.slots.shrink_to(self.slots.len() * 2);
        if self.slots.len() > SMALL {
            self.build();
        } else {
            self.big = None;
        }
    }

    /// Builds the tree and positions over the current slots. O(n).
    fn build(&mut self) {
        let mut tree: Vec<u32> = self.slots.iter().map(|&c| u32::from(c != HOLE)).collect();
        for i in 1..=tree.len() {
            let parent = i + lowbit(i);
            if parent <= tree.len() {
                tree[parent - 1] += tree[i - 1];
            }
        }
        let pos = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, &c)| c != HOLE)
            .map(|(slot, &c)| (c, slot as u32))
            .collect();
        self.big = Some(Box::new(Big { tree, pos }));
    }

    /// Checks the internal bookkeeping (for `Core::verify`): the count, no
    /// member twice, positions and slots agree both ways, and every tree
    /// node counts its range.
    pub fn check(&self) -> Result<(), String> {
        let live: Vec<ConnId> = self.iter().collect();
        if live.len() != self.len {
            return Err(format!(
                "{} live slots, count says {}",
                live.len(),
                self.len
            ));
        }
        let mut sorted = live.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err("a member is listed twice".into());
        }
        let Some(big) = &self.big else {
            return if self.slots.len() > SMALL {
                Err(format!("{} slots without an index", self.slots.len()))
            } else {
                Ok(())
            };
        };
        if big.pos.len() != self.len {
            return Err(format!("{} positions, {} members", big.pos.len(), self.len));
        }
        for (c, &slot) in &big.pos {
            if self.slots.get(slot as usize) != Some(c) {
                return Err(format!("{c:?} is not in its slot {slot}"));
            }
        }
        if big.tree.len() != self.slots.len() {
            return Err("tree and slots differ in length".into());
        }
        for i in 1..=big.tree.len() {
            let want = self.slots[i - lowbit(i)..i]
                .iter()
                .filter(|&&c| c != HOLE)
                .count();
            if big.tree[i - 1] as usize != want {
                return Err(format!(
                    "tree node {i} counts {}, not {want}",
                    big.tree[i - 1]
                ));
            }
        }
        Ok(())
    }
}

/// Live slots in `[0, i)`.
fn prefix(tree: &[u32], mut i: usize) -> u32 {
    let mut sum = 0;
    while i > 0 {
        sum += tree[i - 1];
        i -= lowbit(i);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain join-order list, the obviously right behaviour.
    fn plain_rotation(v: &[ConnId], start: usize) -> Vec<ConnId> {
        let n = v.len();
        (0..n).map(|k| v[(start % n + k) % n]).collect()
    }

    #[test]
    fn agrees_with_a_plain_list_under_random_joins_and_leaves() {
        // A small deterministic generator: no randomness in tests.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut m = Members::default();
        let mut plain: Vec<ConnId> = Vec::new();
        let mut id = 1;
        for step in 0..20_000 {
            let r = next();
            if plain.is_empty() || r % 3 != 0 {
                m.push(ConnId(id));
                plain.push(ConnId(id));
                id += 1;
            } else {
                let victim = plain.remove((r >> 8) as usize % plain.len());
                assert!(m.remove(victim));
                assert!(!m.remove(victim), "removed twice");
            }
            // Bias toward many leaves sometimes so compaction runs.
            if step % 5000 == 4999 {
                while plain.len() > 3 {
                    let victim = plain.remove(1);
                    assert!(m.remove(victim));
                }
            }
            assert_eq!(m.len(), plain.len());
            if step % 97 == 0 {
                m.check().unwrap();
                assert_eq!(m.iter().collect::<Vec<_>>(), plain);
                let start = next() as usize;
                if !plain.is_empty() {
                    assert_eq!(
                        m.rotation(start).collect::<Vec<_>>(),
                        plain_rotation(&plain, start)
                    );
                    let k = start % plain.len();
                    assert_eq!(m.nth(k), Some(plain[k]));
                }
            }
        }
        assert!(
            m.slots.len() <= 2 * m.len() + SLACK + 1,
            "holes were compacted"
        );
    }

    /// `check` notices each kind of broken bookkeeping it names (so that
    /// `Core::verify` would): a wrong count, and a long list without its
    /// index, however long.
    #[test]
    fn check_catches_broken_bookkeeping() {
        let long = || {
            let mut m = Members::default();
            for id in 1..=(SMALL as u64 + 5) {
                m.push(ConnId(id));
            }
            m
        };
        long().check().unwrap();
        // Exactly SMALL slots need no index yet.
        let mut full = Members::default();
        for id in 1..=SMALL as u64 {
            full.push(ConnId(id));
        }
        assert!(full.big.is_none());
        full.check().unwrap();
        let mut unindexed = long();
        unindexed.big = None;
        let err = unindexed.check().unwrap_err();
        assert!(err.contains("without an index"), "{err}");
        let mut miscounted = long();
        miscounted.len += 1;
        assert!(miscounted.check().unwrap_err().contains("count says"));
    }

    #[test]
    fn empty_and_single() {
        let mut m = Members::default();
        assert_eq!(m.rotation(7).count(), 0);
        assert_eq!(m.nth(0), None);
        m.push(ConnId(5));
        assert_eq!(m.rotation(7).collect::<Vec<_>>(), vec![ConnId(5)]);
        assert!(m.contains(ConnId(5)));
        assert!(m.remove(ConnId(5)));
        assert!(m.is_empty());
        assert_eq!(m.rotation(0).count(), 0);
        m.check().unwrap();
    }
}
