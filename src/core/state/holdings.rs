//! The slots a disconnect released in bulk.
//!
//! A connection's holdings are one ordered set of (resource, fence) and a
//! count per resource, so a disconnect works resource by resource: a
//! resource nobody waits for loses all of the connection's slots with one
//! subtraction, whatever their number (see `Core::release_all`).
//!
//! The slots released that way still have entries in `Core::holders` and
//! `Core::leases`. They are [`Retired`]: no lookup sees them any more (a
//! holder whose connection is gone is not a holder when auto-release is on),
//! and `Core::purge` removes their entries a bounded number at a time after
//! each input, so that no input pays for a large disconnect at once.

use std::collections::{btree_set, BTreeSet};

use super::ResId;
use crate::core::Time;

/// Slots released in bulk by the disconnect at `at`: the connection's whole
/// holdings, taken over as they were (the few it released one by one are no
/// longer in `Core::holders` and are skipped).
pub(super) struct Retired {
    pub at: Time,
    /// (resource, fence) still to purge.
    pub fences: btree_set::IntoIter<(ResId, u64)>,
}

impl Retired {
    pub(super) fn new(at: Time, fences: BTreeSet<(ResId, u64)>) -> Retired {
        Retired {
            at,
            fences: fences.into_iter(),
        }
    }
}
