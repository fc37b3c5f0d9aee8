//! Introspection reads against the running core, in bounded slices: the
//! one place the driver runs the core's introspection [`Job`]s (TCP
//! `stats`, HTTP `/v1/stats`, `/v1/keys/{key}`, `/v1/activity`,
//! `/metrics`).
//!
//! A job step runs under the core lock like any input (the core is first
//! advanced to now, its effects routed to the mailboxes); between steps the
//! lock is released and the task sleeps [`SLICE_PAUSE`], so that the
//! requests queued on the lock meanwhile get it (the std mutex is not fair:
//! a task that re-locked at once could keep others out for the whole
//! scan). A scan of n items then holds the lock n / `SLICE` times for about
//! a quarter of a millisecond each, and another client's `ping` waits at
//! most about one step.
//!
//! The `stats` JSON is sorted and rendered after the last step, with no
//! lock held; a large one is rendered on the blocking thread pool so that
//! the executor thread keeps serving other connections.

use std::time::Duration;

use crate::core::introspect::{Job, StatsJob};
use crate::core::{ConnId, Core, Effect};
use crate::server::Shared;
use crate::wire::Reply;

/// The pause between two steps of a job.
pub const SLICE_PAUSE: Duration = Duration::from_millis(1);

/// Entries above which the `stats` JSON is rendered off the executor.
const RENDER_INLINE_MAX: usize = 16_384;

/// Runs `job` to the end, one step per lock acquisition.
pub async fn run(shared: &Shared, job: &mut (dyn Job + Send)) {
    let mut effects: Vec<Effect> = Vec::new();
    loop {
        let done = {
            let mut inner = shared.lock();
            let now = shared.clock(&inner);
            let done = job.step(&mut inner.core, now, &mut effects);
            // Every effect is another connection's: all go to mailboxes.
            shared.after_core(&mut inner, &mut effects, None);
            done
        };
        effects.clear();
        if done {
            return;
        }
        async_io::Timer::after(SLICE_PAUSE).await;
    }
}

/// Reads the core once, advanced to now, under one short lock hold (for
/// reads that cost O(log n): a key view, the counters).
pub fn read<T>(shared: &Shared, f: impl FnOnce(&Core) -> T) -> T {
    let mut effects = Vec::new();
    let mut inner = shared.lock();
    let now = shared.clock(&inner);
    inner.core.handle_timeout(now, &mut effects);
    shared.after_core(&mut inner, &mut effects, None);
    f(&inner.core)
}

/// The `stats` JSON, built in slices (protocol.md §8 says what such a
/// reply is consistent with).
pub async fn stats_json(shared: &Shared) -> String {
    let mut job = StatsJob::new();
    run(shared, &mut job).await;
    if job.listed() <= RENDER_INLINE_MAX {
        job.render()
    } else {
        smol::unblock(move || job.render()).await
    }
}

/// Answers a TCP `stats` request from `conn`: the core's gate first
/// (authentication, draining: a refusal and its close are appended to
/// `effects` as any reply), then the listing in slices, appended as the
/// reply.
pub async fn stats_reply(shared: &Shared, conn: ConnId, effects: &mut Vec<Effect>) {
    {
        let mut inner = shared.lock();
        let now = shared.clock(&inner);
        let passed = inner.core.stats_gate(now, conn, effects);
        shared.after_core(&mut inner, effects, Some(conn));
        if !passed {
            return;
        }
    }
    let json = stats_json(shared).await;
    effects.push(Effect::Reply {
        conn,
        reply: Reply::Stats(json),
    });
}
