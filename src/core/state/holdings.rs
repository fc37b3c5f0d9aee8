//! What a connection holds, per resource, and the slots a disconnect
//! released in bulk.
//!
//! A connection's holdings are grouped by resource ([`Fences`]: one fence
//! inline, more in an ordered set), so that a disconnect works per resource
//! rather than per slot: a resource nobody waits for loses all of the
//! connection's slots with one subtraction, whatever their number.
//!
//! The slots released that way still have entries in `Core::holders` and
//! `Core::leases`. They are [`Retired`]: no lookup sees them any more (a
//! holder whose connection is gone is not a holder when auto-release is on),
//! and `Core::purge` removes their entries a bounded number at a time after
//! each input, so that no input pays for a large disconnect at once.

use std::collections::{btree_set, BTreeSet};

use crate::core::Time;
use crate::wire::Space;

/// The fences a connection holds on one resource.
#[derive(Debug)]
pub(super) enum Fences {
    One(u64),
    Many(Box<BTreeSet<u64>>),
}

impl Fences {
    pub(super) fn len(&self) -> usize {
        match self {
            Fences::One(_) => 1,
            Fences::Many(set) => set.len(),
        }
    }

    pub(super) fn contains(&self, fence: u64) -> bool {
        match self {
            Fences::One(f) => *f == fence,
            Fences::Many(set) => set.contains(&fence),
        }
    }

    /// Adds `fence`. O(log n).
    pub(super) fn insert(&mut self, fence: u64) {
        match self {
            Fences::One(f) => {
                let set = BTreeSet::from([*f, fence]);
                *self = Fences::Many(Box::new(set));
            }
            Fences::Many(set) => {
                set.insert(fence);
            }
        }
    }

    /// Removes `fence`; true when nothing is left. O(log n).
    pub(super) fn remove(&mut self, fence: u64) -> bool {
        match self {
            Fences::One(f) => *f == fence,
            Fences::Many(set) => {
                set.remove(&fence);
                match set.len() {
                    0 => true,
                    1 => {
                        let last = *set.first().expect("one left");
                        *self = Fences::One(last);
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let (one, many) = match self {
            Fences::One(f) => (Some(*f), None),
            Fences::Many(set) => (None, Some(set.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// The first `n` fences in token order, and the rest (if any).
    /// O(n + log len).
    pub(super) fn split(self, n: usize) -> (Vec<u64>, Option<Fences>) {
        if n == 0 {
            return (Vec::new(), Some(self));
        }
        match self {
            Fences::One(f) => (vec![f], None),
            Fences::Many(mut set) => {
                let first: Vec<u64> = set.iter().copied().take(n).collect();
                if first.len() == set.len() {
                    return (first, None);
                }
                let next = *set.iter().nth(n).expect("more than n");
                let rest = set.split_off(&next);
                (first, Some(Fences::Many(Box::new(rest))))
            }
        }
    }
}

/// Fences still to purge, as released.
pub(super) enum Pending {
    Set(btree_set::IntoIter<u64>),
    List(std::vec::IntoIter<u64>),
}

impl Pending {
    /// Fences left.
    pub(super) fn len(&self) -> usize {
        match self {
            Pending::Set(it) => it.len(),
            Pending::List(it) => it.len(),
        }
    }
}

impl Iterator for Pending {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        match self {
            Pending::Set(it) => it.next(),
            Pending::List(it) => it.next(),
        }
    }
}

/// Slots of one key space released in bulk by the disconnect at `at`.
pub(super) struct Retired {
    pub at: Time,
    pub space: Space,
    pub fences: Pending,
}

impl Retired {
    pub(super) fn new(at: Time, space: Space, fences: Fences) -> Retired {
        let fences = match fences {
            Fences::One(f) => Pending::List(vec![f].into_iter()),
            Fences::Many(set) => Pending::Set((*set).into_iter()),
        };
        Retired { at, space, fences }
    }

    pub(super) fn list(at: Time, space: Space, fences: Vec<u64>) -> Retired {
        Retired {
            at,
            space,
            fences: Pending::List(fences.into_iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_stay_ordered_and_compact() {
        let mut f = Fences::One(5);
        f.insert(3);
        f.insert(9);
        assert_eq!(f.iter().collect::<Vec<_>>(), vec![3, 5, 9]);
        assert!(f.contains(9) && !f.contains(4));
        assert!(!f.remove(5));
        assert!(!f.remove(3));
        assert!(matches!(f, Fences::One(9)), "back to one inline fence");
        assert!(f.remove(9));
    }

    #[test]
    fn split_takes_the_first_in_token_order() {
        let mut f = Fences::One(10);
        for x in [4, 8, 2, 6] {
            f.insert(x);
        }
        let (first, rest) = f.split(2);
        assert_eq!(first, vec![2, 4]);
        let rest = rest.expect("three left");
        assert_eq!(rest.iter().collect::<Vec<_>>(), vec![6, 8, 10]);
        let (all, none) = rest.split(7);
        assert_eq!(all, vec![6, 8, 10]);
        assert!(none.is_none());
        let (nothing, same) = Fences::One(1).split(0);
        assert!(nothing.is_empty());
        assert_eq!(same.unwrap().len(), 1);
    }

    #[test]
    fn retired_fences_come_out_once() {
        let set = Fences::Many(Box::new(BTreeSet::from([1, 2, 3])));
        let r = Retired::new(Time(7), Space::Sem, set);
        assert_eq!(r.fences.collect::<Vec<_>>(), vec![1, 2, 3]);
        let r = Retired::list(Time(7), Space::Lock, vec![9, 4]);
        assert_eq!(r.fences.count(), 2);
    }
}
