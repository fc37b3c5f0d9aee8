//! Compact parts of a resource record. A held lock costs the server its
//! resource record, its key and a few index entries, and a million held
//! locks are a normal load; these keep the record small.
//!
//! * [`ResKey`]: a key of up to [`INLINE_KEY`] bytes (most keys) is stored
//!   inside the record rather than in an allocation of its own.
//! * [`Queue`]: the ordered set of a resource's waiters, allocated only while
//!   someone waits; most resources never have a queue.

use std::collections::BTreeSet;

use crate::wire::Key;

/// Keys up to this many bytes are stored inline.
pub(super) const INLINE_KEY: usize = 22;

/// A resource's key, stored once (the key index hashes it from here).
pub(super) enum ResKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl ResKey {
    pub(super) fn new(key: &Key) -> ResKey {
        let b = key.as_bytes();
        if b.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..b.len()].copy_from_slice(b);
            ResKey::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            ResKey::Heap(b.into())
        }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            ResKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            ResKey::Heap(b) => b,
        }
    }
}

impl std::fmt::Debug for ResKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Arrival numbers of a resource's live waiters, oldest first (FIFO order
/// is arrival order). O(log n) for every operation.
/// The set is boxed on purpose: an absent queue then costs the record 8
/// bytes rather than the 24 of an empty `BTreeSet`.
#[derive(Default)]
#[allow(clippy::box_collection)]
pub(super) struct Queue(Option<Box<BTreeSet<u64>>>);

impl Queue {
    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The oldest waiter.
    pub(super) fn first(&self) -> Option<u64> {
        self.0.as_ref().and_then(|q| q.first().copied())
    }

    /// The waiters, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().flat_map(|q| q.iter().copied())
    }

    pub(super) fn contains(&self, w: u64) -> bool {
        self.0.as_ref().is_some_and(|q| q.contains(&w))
    }

    pub(super) fn insert(&mut self, w: u64) {
        self.0.get_or_insert_with(Box::default).insert(w);
    }

    /// Removes `w`, and the allocation with the last waiter.
    pub(super) fn remove(&mut self, w: u64) {
        if let Some(q) = &mut self.0 {
            q.remove(&w);
            if q.is_empty() {
                self.0 = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_inline_and_long_ones_are_not() {
        for len in [1, INLINE_KEY, INLINE_KEY + 1, 256] {
            let raw = vec![b'k'; len];
            let k = ResKey::new(&Key::new(&raw).unwrap());
            assert_eq!(k.as_bytes(), &raw[..]);
            assert_eq!(matches!(k, ResKey::Inline { .. }), len <= INLINE_KEY);
        }
        assert_eq!(std::mem::size_of::<ResKey>(), 24);
    }

    #[test]
    fn a_queue_allocates_only_while_someone_waits() {
        let mut q = Queue::default();
        assert!(q.is_empty() && q.first().is_none());
        q.insert(7);
        q.insert(3);
        assert_eq!((q.len(), q.first()), (2, Some(3)));
        assert!(q.contains(7));
        q.remove(3);
        q.remove(7);
        assert!(q.0.is_none(), "the last waiter frees the set");
        assert_eq!(std::mem::size_of::<Queue>(), 8);
    }
}
