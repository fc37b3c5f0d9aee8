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
//! lock held; a large one is rendered on the render thread, at a lower CPU
//! priority than the runtime threads (`render_aside`), so that the
//! runtime thread keeps serving its other connections and wins the core
//! whenever it wakes. TCP `stats` takes it in pieces
//! ([`Engine::stats_pieces`]) and writes them one at a time, yielding to
//! the thread's poller between them (`tcp::conn`, [`rt::yield_io`]): one
//! 78 MB copy into the write buffer and one `write_all` of it (a loopback
//! socket that keeps accepting never makes it yield) held the runtime
//! thread, and every connection pinned to it, for tens of milliseconds at
//! 1M locks.
//!
//! Reads that cost O(log n) (a key's view, the counters) are one short
//! hold of the lock.

use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use super::{Door, Engine, Input, Outcome};
use crate::core::introspect::{self, Job, KeyView, StatsJob, Totals};
use crate::core::{ConnId, Core, CoreMetrics, Effect};
use crate::rt;
use crate::wire::{Key, Reply, Space};

/// The pause between two steps of a job.
pub const SLICE_PAUSE: Duration = Duration::from_millis(1);

/// Entries above which the `stats` JSON is rendered off the runtime.
const RENDER_INLINE_MAX: usize = 16_384;

/// How much lower than the process's the render thread's nice value is
/// (capped at 19, the lowest priority).
const RENDER_NICE: i32 = 10;

type RenderTask = Box<dyn FnOnce() + Send>;

/// The queue of the render thread, started at the first large listing;
/// `None` if it could not be started.
fn render_queue() -> Option<&'static mpsc::Sender<RenderTask>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<RenderTask>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<RenderTask>();
            std::thread::Builder::new()
                .name("dflockd-render".into())
                .spawn(move || {
                    lower_priority(RENDER_NICE);
                    for task in rx {
                        task();
                    }
                })
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

/// Lowers the calling thread's CPU priority by `by` nice steps (Linux
/// gives each thread its own nice value; elsewhere this does nothing, as
/// `setpriority` there would renice the whole process). A failure leaves
/// the priority as it was: rendering still works, only less politely.
fn lower_priority(by: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id, no memory
    // is passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        // -1 is also a valid nice value: errno tells a failure apart, and
        // then 0 is as good a base as any.
        *libc::__errno_location() = 0;
        let mut nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        if nice == -1 && *libc::__errno_location() != 0 {
            nice = 0;
        }
        libc::setpriority(libc::PRIO_PROCESS, tid, (nice + by).min(19));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = by;
}

/// Runs `f` (sorting and rendering a large listing) on the render thread:
/// one thread, at a lower CPU priority than the runtime threads, taking
/// one listing at a time. On a machine with as many cores as runtime
/// threads, a render at the same priority competes for a core with the
/// runtime thread serving other clients' requests, and the scheduler may
/// keep a waking runtime thread waiting for the render's time slice;
/// lowered, the render yields the core to any runtime thread that wakes
/// (spec/ARCHITECTURE.md, "Costs"). The blocking pool is the fallback
/// when the thread cannot be started (its threads are shared: a priority
/// lowered there could not be raised again without privileges).
async fn render_aside<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let Some(queue) = render_queue() else {
        return smol::unblock(f).await;
    };
    let (tx, rx) = smol::channel::bounded(1);
    let task: RenderTask = Box::new(move || {
        let _ = tx.send_blocking(f());
    });
    if let Err(mpsc::SendError(task)) = queue.send(task) {
        // The thread is gone (it cannot be, short of a panic in a render):
        // render on the blocking pool instead.
        smol::unblock(task).await;
    }
    rx.recv()
        .await
        .expect("rendering the stats listing panicked")
}

/// Render work between two rests of the render thread.
const RENDER_BURST: Duration = Duration::from_millis(1);
/// A rest of the render thread.
const RENDER_REST: Duration = Duration::from_millis(1);

/// The render thread's pacer: called often (see `stats::PACE_EVERY`), it
/// sleeps [`RENDER_REST`] once [`RENDER_BURST`] has passed since the last
/// rest, so a render takes at most about half a core. Why: with
/// autogrouping (Linux's default for desktop and login sessions) or a CPU
/// cgroup, the process's threads share one scheduling entity, whatever
/// their nice values; a render that ran flat out for a quarter of a
/// second at 1M keys spent the whole group's share on a busy machine, and
/// the runtime threads then waited tens of milliseconds for a core
/// (spec/ARCHITECTURE.md, "Costs").
fn pacer() -> impl FnMut() {
    let mut since = std::time::Instant::now();
    move || {
        if since.elapsed() >= RENDER_BURST {
            std::thread::sleep(RENDER_REST);
            since = std::time::Instant::now();
        }
    }
}

/// The core's counters and gauges that cost O(1) to read, as of now.
#[derive(Clone, Debug)]
pub struct Counters {
    pub metrics: CoreMetrics,
    /// Grants left under the fence ceiling.
    pub fence_headroom: u64,
    /// Live connections and sessions.
    pub connections: usize,
}

impl Counters {
    /// `core`'s counters as of its last input.
    pub fn of(core: &Core) -> Counters {
        Counters {
            metrics: core.metrics().clone(),
            fence_headroom: core.fence_headroom(),
            connections: core.connection_count(),
        }
    }
}

/// The views of `key` in `core` in each of `spaces` where it exists, with
/// at most `max_waiters` waiters listed each. O(log n + max_waiters).
pub fn key_views_of(core: &Core, spaces: &[Space], key: &Key, max_waiters: usize) -> Vec<KeyView> {
    spaces
        .iter()
        .filter_map(|&s| core.key_view(s, key, max_waiters))
        .collect()
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

    /// Runs `job` over the lock state: in cluster mode the replicated core
    /// as applied on this member (read in slices, never advanced: only the
    /// log changes it), otherwise [`Engine::run_job`]. Signals are not
    /// replicated: their jobs use [`Engine::run_job`] in both modes.
    pub async fn run_state_job(&self, job: &mut (dyn Job + Send)) {
        let Some(rep) = self.replicator() else {
            return self.run_job(job).await;
        };
        while !rep.read_job(job) {
            rt::sleep(SLICE_PAUSE).await;
        }
    }

    /// The core's counters, as of now. In cluster mode the lock counters,
    /// histograms, fence headroom and sessions are the replicated core's as
    /// applied here; the signal counters stay this member's own (signals
    /// are served by the leader from its local table, spec/cluster.md §3).
    pub fn counters(&self) -> Counters {
        let local = {
            let mut door = self.door();
            door.catch_up();
            Counters::of(&door.inner.core)
        };
        match self.replicator().and_then(|r| r.replicated_counters()) {
            Some(mut c) => {
                c.metrics.take_signals_from(&local.metrics);
                c
            }
            None => local,
        }
    }

    /// The views of `key` in each of `spaces` where it exists, as of now,
    /// with at most `max_waiters` waiters listed each. O(log n +
    /// max_waiters). In cluster mode, the replicated core's as applied here.
    pub fn key_views(&self, spaces: &[Space], key: &Key, max_waiters: usize) -> Vec<KeyView> {
        if let Some(rep) = self.replicator() {
            return rep.replicated_key_views(spaces, key, max_waiters);
        }
        let mut door = self.door();
        door.catch_up();
        key_views_of(&door.inner.core, spaces, key, max_waiters)
    }

    /// The `stats` JSON, built in slices (protocol.md §8 says what such a
    /// reply is consistent with).
    pub async fn stats_json(&self) -> String {
        self.own_stats(|job, pace| introspect::join(job.render_pieces_paced(usize::MAX, pace)))
            .await
    }

    /// This member's own core's `stats`, listed in slices, then finished
    /// by `render` (given the pacer to call now and then): here when the
    /// listing is small, on the render thread otherwise, which then also
    /// drops the job (a million small readings).
    async fn own_stats<T: Send + 'static>(
        &self,
        render: impl FnOnce(StatsJob, &mut dyn FnMut()) -> T + Send + 'static,
    ) -> T {
        let mut job = StatsJob::new();
        self.run_job(&mut job).await;
        if job.listed() <= RENDER_INLINE_MAX {
            render(job, &mut || {})
        } else {
            render_aside(move || render(job, &mut pacer())).await
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
        self.own_stats(move |job, pace| job.render_pieces_paced(piece_bytes, pace))
            .await
    }

    /// What `/metrics` reads: the totals over the `stats` arrays (counted
    /// in slices), then the counters as of the end of that walk.
    pub async fn scrape(&self) -> (Totals, Counters) {
        let mut job = StatsJob::totals();
        self.run_state_job(&mut job).await;
        let mut totals = job.totals_so_far();
        if self.replicator().is_some() {
            // Signal listeners live in this member's own core (the leader
            // serves signals); its lock tables are empty in cluster mode.
            let mut local = StatsJob::totals();
            self.run_job(&mut local).await;
            totals.signal_listeners = local.totals_so_far().signal_listeners;
        }
        (totals, self.counters())
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn my_nice() -> i32 {
        // SAFETY: system calls on the calling thread's own id.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        }
    }

    /// Large listings render on a thread of their own whose nice value is
    /// [`RENDER_NICE`] above the runtime's, and the result comes back.
    #[test]
    fn the_render_thread_runs_at_a_lower_priority() {
        let mine = my_nice();
        let (theirs, name) = futures_lite::future::block_on(render_aside(|| {
            (my_nice(), std::thread::current().name().map(String::from))
        }));
        assert_eq!(theirs, (mine + RENDER_NICE).min(19));
        assert_eq!(name.as_deref(), Some("dflockd-render"));
        // One thread serves them all.
        let again = futures_lite::future::block_on(render_aside(|| {
            std::thread::current().name().map(String::from)
        }));
        assert_eq!(again.as_deref(), Some("dflockd-render"));
    }
}
