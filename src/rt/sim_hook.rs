//! The simulator's seam in the runtime: a per-thread [`Hook`] that, when
//! installed, is the clock ([`super::now`]) and the timer ([`super::Sleep`])
//! of the code running on that thread. The deterministic simulator
//! (`src/sim`) installs one on its single thread; nothing else does, and
//! without one every call here is a thread-local read that finds nothing.

use std::cell::RefCell;
use std::rc::Rc;
use std::task::{Context, Poll};
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

thread_local! {
    static HOOK: RefCell<Option<Rc<dyn Hook>>> = const { RefCell::new(None) };
}

/// Installs `hook` on this thread (`None` removes it).
pub fn install(hook: Option<Rc<dyn Hook>>) {
    HOOK.with(|h| *h.borrow_mut() = hook);
}

fn with<R>(f: impl FnOnce(&dyn Hook) -> R) -> Option<R> {
    HOOK.with(|h| h.borrow().clone()).map(|h| f(&*h))
}

pub fn active() -> bool {
    HOOK.with(|h| h.borrow().is_some())
}

pub(crate) fn now() -> Option<Instant> {
    with(|h| h.now())
}

pub(crate) fn cancel(id: Option<u64>) {
    if let Some(id) = id {
        with(|h| h.cancel(id));
    }
}

pub(crate) fn poll_sleep(at: Instant, id: &mut Option<u64>, cx: &mut Context<'_>) -> Poll<()> {
    let r = with(|h| {
        if h.now() >= at {
            if let Some(i) = id.take() {
                h.cancel(i);
            }
            Poll::Ready(())
        } else {
            *id = Some(h.register(at, *id, cx));
            Poll::Pending
        }
    });
    // A simulated sleep polled off the simulator's thread (it never is):
    // over at once rather than never.
    r.unwrap_or(Poll::Ready(()))
}
