//! The slots a disconnect released in bulk.
//!
//! A connection's holdings are one ordered set of (resource, fence), so a
//! disconnect walks them resource by resource: a resource nobody waits for
//! loses all of the connection's slots with one subtraction, whatever their
//! number (see `Core::release_all`).
//!
//! The slots released that way still have entries in `Core::holders` and
//! `Core::leases`. They are [`Retired`]: no lookup sees them any more (a
//! holder whose connection is gone is not a holder when auto-release is on),
//! and `Core::purge` removes their entries a bounded number at a time after
//! each input, so that no input pays for a large disconnect at once.

use crate::core::Time;
use crate::wire::Space;

/// Slots of one key space released in bulk by the disconnect at `at`.
pub(super) struct Retired {
    pub at: Time,
    pub space: Space,
    /// Fences still to purge.
    pub fences: std::vec::IntoIter<u64>,
}

impl Retired {
    pub(super) fn new(at: Time, space: Space, fences: Vec<u64>) -> Retired {
        Retired {
            at,
            space,
            fences: fences.into_iter(),
        }
    }
}
