//! The timer task: sleeps until the core's next deadline (a lease expiry, a
//! waiter's timeout, the GC tick) or the next retry of a failed fence state
//! file write, then applies [`Input::Tick`].
//! Inputs that create a nearer deadline wake it early (the door notifies
//! it); a later deadline never does, so the uncontended path costs it
//! nothing.

use std::time::Duration;

use super::{Engine, Input};
use crate::core::ConnId;
use crate::rt;
use crate::sync::Arc;

pub async fn run(engine: Arc<Engine>) {
    let mut out = Vec::new();
    loop {
        // Listen before reading the deadline so a notification that races
        // with this iteration is not lost.
        let nearer = engine.timer_event.listen();
        let next = {
            let mut door = engine.door();
            door.apply(ConnId::ENGINE, Input::Tick, &mut out);
            door.arm_timer()
        };
        match next {
            Some(t) => {
                let wait = Duration::from_millis(t.0.saturating_sub(engine.now().0));
                futures_lite::future::or(rt::sleep(wait), nearer).await;
            }
            None => nearer.await,
        }
    }
}
