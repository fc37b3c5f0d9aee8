//! Introspection through the door, in bounded slices: the one place the
//! core's introspection [`Job`]s run (TCP `stats`, HTTP `/v1/stats`,
//! `/v1/keys/{key}`, `/v1/activity`, `/metrics`).
//!
//! A job step is applied like an input: under the engine's lock, at the
//! clock's reading, the core first advanced to it, and the effects that
//! advancing produced routed to their connections' mailboxes (every one is
//! another connection's: the reader has no request in the core). Between
//! steps the lock is released and the task sleeps [`SLICE_PAUSE`], so that
//! the requests queued on the lock meanwhile get it (the std mutex is not
//! fair: a task that re-locked at once could keep others out for the whole
//! scan). A scan of n items then holds the lock n / `SLICE` times for
//! about a quarter of a millisecond each, and another client's `ping`
//! waits at most about one step.
//!
//! The `stats` JSON is sorted and rendered after the last step, with no
//! lock held; a large one is rendered on the blocking thread pool so that
//! the runtime thread keeps serving its other connections. TCP `stats`
//! takes it in pieces ([`Engine::stats_pieces`]) and writes them one at a
//! time with a yield between them (`tcp::conn`): one 78 MB copy into the
//! write buffer and one `write_all` of it (a loopback socket that keeps
//! accepting never makes it yield) held the runtime thread, and every
//! connection pinned to it, for tens of milliseconds at 1M locks.
//!
//! Reads that cost O(log n) (a key's view, the counters) are one short
//! hold of the lock.

use std::time::Duration;

use super::{Door, Engine, Input, Outcome};
use crate::core::introspect::{Job, KeyView, StatsJob, Totals};
use crate::core::{ConnId, CoreMetrics, Effect};
use crate::rt;
use crate::wire::{Key, Reply, Space};

/// The pause between two steps of a job.
pub const SLICE_PAUSE: Duration = Duration::from_millis(1);

/// Entries above which the `stats` JSON is rendered off the runtime.
const RENDER_INLINE_MAX: usize = 16_384;

/// The core's counters and gauges that cost O(1) to read, as of now.
#[derive(Clone, Debug)]
pub struct Counters {
    pub metrics: CoreMetrics,
    /// Grants left under the fence ceiling.
    pub fence_headroom: u64,
    /// Live connections and sessions.
    pub connections: usize,
}

impl Door<'_> {
    /// One step of `job`, applied like an input (see the module docs).
    /// Returns whether the job is done.
    fn job_step(&mut self, job: &mut (dyn Job + Send)) -> bool {
        let at = self.clock();
        if let Some(j) = &self.engine.journal {
            // A step starts as a `Tick` does (`handle_timeout`).
            j(&super::Record::Entry(super::Entry {
                at,
                conn: ConnId::ENGINE,
                input: Input::Tick,
            }));
        }
        let mut fx = std::mem::take(&mut self.inner.scratch);
        let done = job.step(&mut self.inner.core, at, &mut fx);
        self.finish(at, None, &mut fx, &mut Vec::new());
        self.inner.scratch = fx;
        done
    }

    /// The core advanced to now (what is due is processed and routed).
    fn catch_up(&mut self) {
        self.apply(ConnId::ENGINE, Input::Tick, &mut Vec::new());
    }
}

impl Engine {
    /// Runs `job` to the end, one step per acquisition of the lock.
    pub async fn run_job(&self, job: &mut (dyn Job + Send)) {
        loop {
            if self.door().job_step(job) {
                return;
            }
            rt::sleep(SLICE_PAUSE).await;
        }
    }

    /// The core's counters, as of now.
    pub fn counters(&self) -> Counters {
        let mut door = self.door();
        door.catch_up();
        let core = &door.inner.core;
        Counters {
            metrics: core.metrics().clone(),
            fence_headroom: core.fence_headroom(),
            connections: core.connection_count(),
        }
    }

    /// The views of `key` in each of `spaces` where it exists, as of now,
    /// with at most `max_waiters` waiters listed each. O(log n +
    /// max_waiters).
    pub fn key_views(&self, spaces: &[Space], key: &Key, max_waiters: usize) -> Vec<KeyView> {
        let mut door = self.door();
        door.catch_up();
        let core = &door.inner.core;
        spaces
            .iter()
            .filter_map(|&s| core.key_view(s, key, max_waiters))
            .collect()
    }

    /// The `stats` JSON, built in slices (protocol.md §8 says what such a
    /// reply is consistent with).
    pub async fn stats_json(&self) -> String {
        let mut job = StatsJob::new();
        self.run_job(&mut job).await;
        if job.listed() <= RENDER_INLINE_MAX {
            job.render()
        } else {
            smol::unblock(move || job.render()).await
        }
    }

    /// The `stats` listing clients see (TCP `stats`, `GET /v1/stats`): in
    /// cluster mode the replicated state machine's, built by the member
    /// with its `cluster` section last; otherwise [`Engine::stats_json`].
    pub async fn stats_listing(&self) -> String {
        if let Some(rep) = self.replicator() {
            if let Some(Some(Reply::Stats(json))) =
                rep.request(ConnId(0), None, &crate::wire::Request::Stats)
            {
                return json;
            }
        }
        self.stats_json().await
    }

    /// The `stats` JSON as [`Engine::stats_json`] builds it, in consecutive
    /// pieces of about `piece_bytes` (`stats::render_pieces`): what TCP
    /// `stats` writes piece by piece, so that no step copies, reallocates
    /// or writes the whole reply at once on the runtime thread.
    /// In cluster mode the pieces are the replicated listing's
    /// ([`Engine::stats_listing`]) cut at `piece_bytes`.
    pub async fn stats_pieces(&self, piece_bytes: usize) -> Vec<Vec<u8>> {
        if self.replicator().is_some() {
            let json = self.stats_listing().await;
            return json
                .into_bytes()
                .chunks(piece_bytes.max(1))
                .map(<[u8]>::to_vec)
                .collect();
        }
        let mut job = StatsJob::new();
        self.run_job(&mut job).await;
        if job.listed() <= RENDER_INLINE_MAX {
            job.render_pieces(piece_bytes)
        } else {
            // The job (a million small readings) is dropped there too.
            smol::unblock(move || job.render_pieces(piece_bytes)).await
        }
    }

    /// What `/metrics` reads: the totals over the `stats` arrays (counted
    /// in slices), then the counters as of the end of that walk.
    pub async fn scrape(&self) -> (Totals, Counters) {
        let mut job = StatsJob::totals();
        self.run_job(&mut job).await;
        (job.totals_so_far(), self.counters())
    }
}

impl Door<'_> {
    /// The gate a `stats` request passes before its listing (see
    /// `Core::stats_gate`): nothing is appended for `conn` when it passes;
    /// its refusal (and close) otherwise. Returns whether it passed.
    pub fn stats_gate(&mut self, conn: ConnId, out: &mut Vec<Effect>) -> (bool, Outcome) {
        if !self.inner.routes.contains_key(&conn) {
            let gone = Outcome {
                gone: true,
                ..Outcome::default()
            };
            return (false, gone);
        }
        let at = self.clock();
        if let Some(j) = &self.engine.journal {
            j(&super::Record::Entry(super::Entry {
                at,
                conn,
                input: Input::Request(crate::wire::Request::Stats),
            }));
        }
        let mut fx = std::mem::take(&mut self.inner.scratch);
        let passed = self.inner.core.stats_gate(at, conn, &mut fx);
        let start = out.len();
        self.finish(at, Some(conn), &mut fx, out);
        self.inner.scratch = fx;
        let closed = out[start..]
            .iter()
            .any(|e| matches!(e, Effect::Close { .. }));
        (
            passed,
            Outcome {
                blocked: false,
                closed,
                gone: false,
            },
        )
    }
}
