//! The runtime seam: how the server's tasks sleep and spawn. Handlers and
//! the engine's timer take time from here rather than from a runtime crate
//! directly, so that another runtime (the per-thread one, or a simulator's
//! seeded scheduler with a simulated clock) can run the same code.
//!
//! The simulator's seam is [`sim_hook`]: a thread with a [`sim_hook::Hook`]
//! installed reads [`now`] from it and its sleeps wait on it; every other
//! thread uses the monotonic clock and async-io's timers.

pub mod sim_hook;

use std::time::{Duration, Instant};

/// The current instant: the simulated one on a simulator's thread.
pub fn now() -> Instant {
    sim_hook::now().unwrap_or_else(Instant::now)
}

/// Resolves after `d`.
pub async fn sleep(d: Duration) {
    Sleep::until(now() + d).await;
}

/// Resolves at `at`.
pub async fn sleep_until(at: Instant) {
    Sleep::until(at).await;
}

/// A resettable sleep: resolves at its deadline, and can be moved to
/// another one (the read deadline of a connection moves with every request).
#[derive(Debug)]
pub enum Sleep {
    Io(async_io::Timer),
    /// On a simulator's thread: the deadline, and the simulator's timer id
    /// once registered.
    Sim(Instant, Option<u64>),
}

impl Sleep {
    pub fn until(at: Instant) -> Sleep {
        if sim_hook::active() {
            Sleep::Sim(at, None)
        } else {
            Sleep::Io(async_io::Timer::at(at))
        }
    }

    /// Moves the deadline to `at`.
    pub fn reset(&mut self, at: Instant) {
        match self {
            Sleep::Io(t) => t.set_at(at),
            Sleep::Sim(deadline, id) => {
                *deadline = at;
                sim_hook::cancel(id.take());
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Sleep::Sim(_, id) = self {
            sim_hook::cancel(id.take());
        }
    }
}

impl std::future::Future for Sleep {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match &mut *self {
            Sleep::Io(t) => std::pin::Pin::new(t).poll(cx).map(|_| ()),
            Sleep::Sim(at, id) => sim_hook::poll_sleep(*at, id, cx),
        }
    }
}
