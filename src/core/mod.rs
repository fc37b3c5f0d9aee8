//! The sans-IO lock manager: a deterministic transition function over locks,
//! counting semaphores, leases, FIFO queues, two-phase records and idle GC.
//!
//! Contract (quinn-proto style): inputs are method calls that take `now`
//! explicitly ([`Core::connect`], [`Core::handle`], [`Core::disconnect`],
//! [`Core::handle_timeout`], [`Core::start_drain`]); outputs are [`Effect`]s
//! appended to a caller-supplied buffer, plus [`Core::poll_timeout`], the
//! next instant at which something becomes due. The core never reads a
//! clock, touches a socket or draws randomness: token salts are derived from
//! a key passed in [`CoreConfig`].
//!
//! Every input first advances the core to `now`: leases whose deadline is
//! `<= now` expire, waiters whose deadline is `<= now` time out, and the idle
//! GC runs if due. So the answer to a request never depends on how late the
//! driver's timer fired (Decisions D18, D19).
//!
//! No input scans the state: each costs O(log n) per thing it changes (the
//! table is in spec/ARCHITECTURE.md, "Costs"), and [`Core::verify`] checks
//! that every index agrees with what it indexes.

mod hash;
mod members;
pub mod metrics;
mod signals;
mod state;
mod stats;
#[cfg(test)]
mod tests;

pub use metrics::CoreMetrics;
pub use signals::PUSH_QUEUE_FRAMES;
pub use state::introspect;
pub use state::{
    CloseReason, Core, CoreConfig, CoreImage, Effect, ImageError, Owned, AUTH_FAILURE_PAUSE_MS,
};

/// Milliseconds since an arbitrary origin (the server's start). Monotonic:
/// the core panics if it ever goes back.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Time(pub u64);

impl Time {
    pub const fn from_secs(s: u64) -> Time {
        Time(s.saturating_mul(1000))
    }

    /// `self + s` seconds, saturating.
    pub fn plus_secs(self, s: u64) -> Time {
        Time(self.0.saturating_add(s.saturating_mul(1000)))
    }

    pub fn millis(self) -> u64 {
        self.0
    }

    /// `self + ms` milliseconds, saturating.
    pub fn plus_millis(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms))
    }
}

/// A connection (TCP) or session (HTTP) identity. Allocated by the core from
/// a counter starting at 1.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl ConnId {
    /// Never a connection (ids start at 1): the engine itself, in log
    /// entries of inputs that belong to no connection.
    pub const ENGINE: ConnId = ConnId(0);
}

/// Derives the salt half of a fencing token from the fence and a secret key
/// (SipHash-2-4). Deterministic so the model and tests can predict tokens;
/// unguessable without the key.
pub fn token_salt(key: [u64; 2], fence: u64) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher24::new_with_keys(key[0], key[1]);
    h.write_u64(fence);
    h.finish()
}
