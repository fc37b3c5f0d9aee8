//! The runtime seam: how the server's tasks sleep and spawn. Handlers and
//! the engine's timer take time from here rather than from a runtime crate
//! directly, so that another runtime (the per-thread one, or a simulator's
//! seeded scheduler with a simulated clock) can run the same code.

use std::time::{Duration, Instant};

/// Resolves after `d`.
pub async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

/// Resolves at `at`.
pub async fn sleep_until(at: Instant) {
    async_io::Timer::at(at).await;
}

/// A resettable sleep: resolves at its deadline, and can be moved to
/// another one (the read deadline of a connection moves with every request).
#[derive(Debug)]
pub struct Sleep(async_io::Timer);

impl Sleep {
    pub fn until(at: Instant) -> Sleep {
        Sleep(async_io::Timer::at(at))
    }

    /// Moves the deadline to `at`.
    pub fn reset(&mut self, at: Instant) {
        self.0.set_at(at);
    }
}

impl std::future::Future for Sleep {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}
