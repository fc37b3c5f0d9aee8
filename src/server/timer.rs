//! The timer task: sleeps until the core's next deadline (a lease expiry, a
//! waiter's timeout, the GC tick) or the next retry of a failed fence state
//! file write, then lets the core process what is due.
//! Other tasks wake it early when they create a nearer deadline
//! ([`super::Shared::after_core`]); a later deadline never wakes it, so the
//! uncontended fast path costs it nothing.

use super::Shared;
use crate::sync::Arc;

pub async fn run(shared: Arc<Shared>) {
    let mut effects = Vec::new();
    loop {
        // Listen before reading the deadline so a notification that races
        // with this iteration is not lost.
        let nearer = shared.timer_event.listen();
        let next = {
            let mut inner = shared.lock();
            let now = shared.clock(&inner);
            inner.core.handle_timeout(now, &mut effects);
            shared.after_core(&mut inner, &mut effects, None);
            let next = inner.next_wake();
            inner.timer_at = next;
            next
        };
        match next {
            Some(t) => {
                let at = shared.instant_of(t);
                futures_lite::future::or(
                    async {
                        async_io::Timer::at(at).await;
                    },
                    nearer,
                )
                .await;
            }
            None => nearer.await,
        }
    }
}
