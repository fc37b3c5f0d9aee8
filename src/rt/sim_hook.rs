//! The simulator's seam in the runtime: a per-thread [`Hook`] that, when
//! installed, is the clock ([`super::now`]) and the timer ([`super::Sleep`])
//! of the code running on that thread. The deterministic simulator
//! (`src/sim`) installs one on its single thread; nothing else does. Without
//! the `sim` feature there is no hook at all: `now` is a constant `None`
//! and [`active`] a constant `false`, so the server pays nothing for it.

use std::task::Context;
use std::time::Instant;

/// A simulated clock and timer wheel.
pub trait Hook {
    fn now(&self) -> Instant;
    /// Registers (or re-registers, under `id`) a wake-up of `cx`'s task at
    /// `at`; returns the registration's id.
    fn register(&self, at: Instant, id: Option<u64>, cx: &mut Context<'_>) -> u64;
    /// Forgets a registration.
    fn cancel(&self, id: u64);
}

#[cfg(feature = "sim")]
mod imp {
    use super::Hook;
    use std::cell::RefCell;
    use std::rc::Rc;

    thread_local! {
        static HOOK: RefCell<Option<Rc<dyn Hook>>> = const { RefCell::new(None) };
    }

    /// Installs `hook` on this thread (`None` removes it).
    pub fn install(hook: Option<Rc<dyn Hook>>) {
        HOOK.with(|h| *h.borrow_mut() = hook);
    }

    pub(super) fn with<R>(f: impl FnOnce(&dyn Hook) -> R) -> Option<R> {
        HOOK.with(|h| h.borrow().clone()).map(|h| f(&*h))
    }
}

#[cfg(feature = "sim")]
pub use imp::install;

#[cfg(feature = "sim")]
use imp::with;

#[cfg(not(feature = "sim"))]
#[inline(always)]
fn with<R>(_: impl FnOnce(&dyn Hook) -> R) -> Option<R> {
    None
}

/// Whether this thread runs on a simulator's clock.
#[inline]
pub fn active() -> bool {
    with(|_| ()).is_some()
}

/// The simulated instant, on a simulator's thread.
#[inline]
pub(crate) fn now() -> Option<Instant> {
    with(|h| h.now())
}

/// Registers (again) a wake-up of `cx`'s task at `at`; `None` off a
/// simulator's thread.
pub(crate) fn register(at: Instant, id: Option<u64>, cx: &mut Context<'_>) -> Option<u64> {
    with(|h| h.register(at, id, cx))
}

pub(crate) fn cancel(id: u64) {
    with(|h| h.cancel(id));
}
