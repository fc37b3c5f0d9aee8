//! Where the engine's `now` comes from: a seam, so that the simulator can
//! run the real engine on a simulated clock, and tests on a manual one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::core::Time;

/// A monotonic source of [`Time`] (milliseconds since an arbitrary
/// origin). The engine reads it under its lock and never lets the core's
/// time go back, whatever two readings say.
pub trait Clock: Send + Sync {
    fn now(&self) -> Time;
}

/// The process's monotonic clock, counted from when it was made.
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Time {
        Time(self.origin.elapsed().as_millis() as u64)
    }
}

/// A clock that moves only when told to (tests, loom, the simulator).
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start: Time) -> ManualClock {
        ManualClock {
            ms: AtomicU64::new(start.0),
        }
    }

    /// Moves the clock to `t` (never back).
    pub fn set(&self, t: Time) {
        self.ms.fetch_max(t.0, Ordering::SeqCst);
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Time {
        Time(self.ms.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> Time {
        (**self).now()
    }
}
