//! The synchronisation primitives the server builds its own concurrency
//! from, behind one facade so that `tests/loom.rs` can swap in loom's
//! model-checked versions (`RUSTFLAGS="--cfg dflockd_loom"`). Only code we
//! wrote uses this module; smol's internals are not model-checked.

#[cfg(dflockd_loom)]
pub use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(dflockd_loom))]
pub use std::sync::{Arc, Mutex, MutexGuard};

/// Locks `m`, treating poisoning as fatal: a panic while the lock manager
/// was mid-transition means its state can no longer be trusted, and a lock
/// server stops rather than risks a wrong grant.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(_) => {
            eprintln!("dflockd: lock manager state poisoned by an earlier panic; aborting");
            std::process::abort()
        }
    }
}
