//! The server's runtime: one executor per thread, each with its own poller,
//! so that a connection's read, its engine call and its reply run on one
//! thread and an uncontended request wakes no other thread.
//!
//! Why not smol's shared executor: async-io has one global reactor, so a
//! socket that becomes readable while another thread holds the reactor
//! lock costs a wake-up of that thread and then of the task's; and the
//! shared `Executor` notifies a sibling thread on every task wake. On the
//! 2-core machine this measured 3 to 3.7 context switches per
//! acquire+release and an erratic single connection (spec/ARCHITECTURE.md,
//! "The runtime"). Here:
//!
//! * each runtime thread ([`Worker`]) owns a poller (its own epoll, used
//!   directly and edge-triggered: `reactor`), a run queue of its tasks,
//!   a queue other threads inject into, and its timers;
//! * a task is spawned on one thread and only ever runs there (it is
//!   *pinned*): its waker pushes it onto that thread's local queue when it
//!   is woken there, or into that thread's injector plus one notification
//!   of its poller when woken from another thread (a grant handed off to
//!   a connection served elsewhere: one wake-up of that thread);
//! * sockets ([`net`]) register with the poller of the thread that made
//!   them and implement futures-io `AsyncRead`/`AsyncWrite`, so rustls
//!   (futures-rustls) and hyper (through `http::lenient`'s adapter) run over them
//!   unchanged;
//! * a thread sleeps in `epoll_wait` until its nearest timer
//!   ([`time::Sleep`]) or an event, after polling without waiting for up
//!   to the spin time ([`Runtime::set_spin`], the server's `--spin-us`);
//!   and after one of its connections was
//!   answered by a hand-off on a contended key ([`Worker::expect`]) it
//!   first polls without waiting for a while, since that connection's
//!   release is due: a hot key's chain of hand-offs then costs no wake-up
//!   per step. A poll that finds the machine busy (its yield lost the core
//!   for a time slice) stops all polling for a while (`QUIET_AFTER`).
//!
//! Code that is not on a runtime thread (a test's `block_on`, the fuzz
//! target, the client library) still works: [`time::Sleep`] falls back to
//! async-io's timer there. The deterministic simulator (`src/sim`) runs the
//! same code on its seeded single-threaded scheduler through [`sim_hook`]:
//! on its thread [`now`] is the simulated clock and sleeps wait on its
//! timers (it spawns the driver's tasks itself, so [`spawn`] is not part of
//! the seam).
//!
//! Built from smol-rs parts: `async-task` (tasks), `concurrent-queue` (the
//! injector), and `polling` where there is no epoll.

pub mod net;
mod reactor;
pub mod sim_hook;
pub mod time;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use async_task::{Runnable, Task};
use concurrent_queue::ConcurrentQueue;
use slab::Slab;

pub use reactor::Backend;
pub use time::{sleep, sleep_until, HyperTimer, Interval, Sleep};

/// The current instant: the simulated one on a simulator's thread (see
/// [`sim_hook`]), else the monotonic clock. Driver code that measures
/// deadlines reads time here, never `Instant::now()` directly.
#[inline]
pub fn now() -> Instant {
    sim_hook::now().unwrap_or_else(Instant::now)
}

/// The instant the runtime thread running here last read the clock (after
/// each look at its poller, the reading its timers fired by), or, off a
/// runtime thread, [`now`]. Never later than [`now`], and earlier by at
/// most the time the thread has run tasks since: for deadlines and due
/// checks where that does not matter (a sleep's due check, which only
/// decides whether to wait for the timer that fires by this same reading;
/// an idle stamp; a deadline seconds away), so that a request does not read
/// the clock for each of them (a vDSO `clock_gettime` costs about 26 ns
/// here, and an HTTP request read it about ten times).
#[inline]
pub fn loop_now() -> Instant {
    if let Some(t) = sim_hook::now() {
        return t;
    }
    LOOP_NOW
        .with(std::cell::Cell::get)
        .unwrap_or_else(Instant::now)
}

thread_local! {
    /// The clock reading of [`loop_now`]; set only on runtime threads.
    static LOOP_NOW: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// A future the fronts hand over to run as a task of its own.
pub type BoxTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a front's new connection tasks go (the server decides: the
/// accepting thread, or the least loaded one).
pub type Spawn = dyn Fn(BoxTask) + Send + Sync;

/// How long a runtime thread keeps polling without waiting after one of
/// its connections was answered by another connection's release (a
/// hand-off on a contended key): that connection's release is due, and on
/// a hot key the chain of hand-offs then runs without a wake-up per step.
/// Nothing is spent while no key is contended (spec/ARCHITECTURE.md, "The
/// runtime", "Polling while a hand-off is due").
pub const DEFAULT_HANDOFF_SPIN: Duration = Duration::from_micros(500);

/// A yield of a polling thread that took this long gave the core to
/// another thread for a time slice (the scheduler's slices are
/// milliseconds; our own client, woken by a reply, runs for microseconds
/// before it sleeps again): the machine is busy.
const YIELDED: Duration = Duration::from_micros(200);

/// How long no thread polls after one found the machine busy.
const BUSY_BACKOFF: Duration = Duration::from_millis(100);

/// Until when (nanoseconds after [`base`]) no runtime thread polls before
/// sleeping, because one found the machine busy. There, a polling thread
/// does harm: its yield hands the core to another runnable thread for a
/// whole time slice, during which it is runnable but not running, so the
/// request it polls for waits for the slice instead of preempting at once
/// as a woken sleeper does; and its polling counts against its share of
/// the core. With two busy loops beside it, polling after a hand-off
/// halved a hot key's throughput until this stopped it
/// (spec/ARCHITECTURE.md, "The runtime").
static QUIET_AFTER: AtomicU64 = AtomicU64::new(0);

/// Tasks run from the local queue before the thread looks at the poller
/// again, so a busy thread still serves its sockets.
const RUN_BUDGET: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One runtime thread: what other threads may touch.
pub struct Worker {
    index: usize,
    poller: reactor::Poller,
    /// Tasks woken from other threads.
    injector: ConcurrentQueue<Runnable>,
    /// A notification is pending or the thread is awake: injecting needs no
    /// `Poller::notify`.
    notified: AtomicBool,
    /// Registered sockets by poller key (see [`net`]).
    sources: Mutex<Slab<Arc<net::Source>>>,
    /// Pending sleeps: (deadline, id) → waker.
    timers: Mutex<BTreeMap<(Instant, u64), Waker>>,
    next_timer: AtomicU64,
    /// A waker of every live task, so that stopping can cancel them all.
    active: Mutex<Slab<Option<Waker>>>,
    stopping: AtomicBool,
    /// How long the thread polls without waiting before it sleeps in the
    /// poller, in nanoseconds (0: never; [`Runtime::set_spin`]).
    spin_ns: AtomicU64,
    /// Until when (nanoseconds after [`base`]) the thread polls without
    /// waiting because one of its connections was just answered on a
    /// contended key and its next request (the release) is due
    /// ([`Worker::expect`]).
    expect_until: AtomicU64,
    /// How long [`Worker::expect`] keeps the thread polling, in
    /// nanoseconds (0: it does nothing; [`Runtime::set_handoff_spin`]).
    handoff_spin_ns: AtomicU64,
}

/// The instant the runtime's nanosecond deadlines count from.
fn base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `at` in nanoseconds after [`base`] (0 before it).
fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

thread_local! {
    /// The runtime thread running here, and its local run queue.
    static CURRENT: RefCell<Option<Local>> = const { RefCell::new(None) };
}

struct Local {
    worker: Arc<Worker>,
    queue: VecDeque<Runnable>,
    /// Tasks waiting in [`yield_io`]: woken after the next look at the
    /// poller and the timers.
    after_poll: Vec<Waker>,
}

impl Worker {
    fn new(index: usize, backend: Backend) -> std::io::Result<Arc<Worker>> {
        Ok(Arc::new(Worker {
            index,
            poller: reactor::Poller::new(backend)?,
            injector: ConcurrentQueue::unbounded(),
            notified: AtomicBool::new(true),
            sources: Mutex::new(Slab::new()),
            timers: Mutex::new(BTreeMap::new()),
            next_timer: AtomicU64::new(0),
            active: Mutex::new(Slab::new()),
            stopping: AtomicBool::new(false),
            spin_ns: AtomicU64::new(0),
            expect_until: AtomicU64::new(0),
            handoff_spin_ns: AtomicU64::new(0),
        }))
    }

    /// The worker of the runtime thread this code runs on, if any.
    pub fn current() -> Option<Arc<Worker>> {
        CURRENT.with(|c| c.borrow().as_ref().map(|l| l.worker.clone()))
    }

    /// Which thread of its runtime this is (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Queues a woken task: locally when woken on its own thread, else
    /// through the injector, waking the thread if it may be asleep.
    fn schedule(self: &Arc<Self>, r: Runnable) {
        let r = match CURRENT.with(|c| match c.try_borrow_mut() {
            Ok(mut c) => match c.as_mut() {
                Some(l) if Arc::ptr_eq(&l.worker, self) => {
                    l.queue.push_back(r);
                    None
                }
                _ => Some(r),
            },
            // The queue is being drained right here (a task dropped while
            // stopping woke another): inject it.
            Err(_) => Some(r),
        }) {
            None => return,
            Some(r) => r,
        };
        // Unbounded: a push fails only once the queue is closed, when the
        // worker has stopped; the task is then cancelled by dropping it.
        let _ = self.injector.push(r);
        // Pairs with the fence in `run` before the thread looks at the
        // injector one last time: either it sees this task there, or this
        // swap sees its `notified = false` and rings.
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.notified.swap(true, Ordering::SeqCst) {
            let _ = self.poller.notify();
        }
    }

    /// One of this thread's connections was answered from elsewhere (a
    /// grant handed off by another connection's release): its next
    /// request, usually the release, is due soon, so the thread polls
    /// without waiting for up to the hand-off spin before it sleeps, and
    /// serves it without a wake-up. Costs nothing when no key is
    /// contended (spec/ARCHITECTURE.md, "The runtime").
    pub fn expect(&self) {
        let ns = self.handoff_spin_ns.load(Ordering::Relaxed);
        if ns == 0 {
            return;
        }
        let until = nanos(Instant::now()).saturating_add(ns);
        // A thread asleep now is not woken for this (measured: waking it
        // cost more than it saved); it polls after the next thing it does.
        self.expect_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Spawns `future` on this thread.
    pub fn spawn<F>(self: &Arc<Self>, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let slot = lock(&self.active).insert(None);
        let guard = ActiveSlot {
            worker: self.clone(),
            slot,
        };
        let future = async move {
            let _guard = guard;
            future.await
        };
        let worker = self.clone();
        let (runnable, task) = async_task::spawn(future, move |r| worker.schedule(r));
        if let Some(w) = lock(&self.active).get_mut(slot) {
            *w = Some(runnable.waker());
        }
        runnable.schedule();
        task
    }

    /// The next time a timer is due.
    fn next_timer(&self) -> Option<Instant> {
        lock(&self.timers).keys().next().map(|&(at, _)| at)
    }

    /// Wakes every timer due at `now`.
    /// Runs after every look at the poller, so the usual case (nothing
    /// due) only reads the first deadline: splitting the map off every
    /// time allocated and rebuilt its nodes.
    fn fire_timers(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut timers = lock(&self.timers);
            while let Some(entry) = timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
        }
        for w in due {
            w.wake();
        }
    }

    /// The thread's loop: run queued tasks, then wait on the poller until
    /// an event, the nearest timer or a notification; until stopped.
    fn run(self: Arc<Self>) {
        CURRENT.with(|c| {
            *c.borrow_mut() = Some(Local {
                worker: self.clone(),
                queue: VecDeque::new(),
                after_poll: Vec::new(),
            })
        });
        let mut events = Vec::new();
        loop {
            for _ in 0..RUN_BUDGET {
                let next =
                    CURRENT.with(|c| c.borrow_mut().as_mut().and_then(|l| l.queue.pop_front()));
                match next {
                    Some(r) => {
                        r.run();
                    }
                    None => break,
                }
            }
            let mut busy = false;
            while let Ok(r) = self.injector.pop() {
                CURRENT.with(|c| {
                    if let Some(l) = c.borrow_mut().as_mut() {
                        l.queue.push_back(r)
                    }
                });
                busy = true;
            }
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            busy |= CURRENT.with(|c| {
                c.borrow()
                    .as_ref()
                    .is_some_and(|l| !l.queue.is_empty() || !l.after_poll.is_empty())
            });
            events.clear();
            // Work found while spinning is in `events` (or the injector).
            let spun = !busy && self.spin(&mut events);
            let timeout = if busy || spun {
                Some(Duration::ZERO)
            } else {
                // About to sleep: from now on, injecting must notify. Look
                // at the injector once more after saying so.
                self.notified.store(false, Ordering::SeqCst);
                std::sync::atomic::fence(Ordering::SeqCst);
                if self.injector.is_empty() && !self.stopping.load(Ordering::SeqCst) {
                    self.next_timer()
                        .map(|at| at.saturating_duration_since(Instant::now()))
                } else {
                    Some(Duration::ZERO)
                }
            };
            if !spun {
                let _ = self.poller.wait(&mut events, timeout);
            }
            self.notified.store(true, Ordering::SeqCst);
            for ev in events.drain(..) {
                net::dispatch(&self, ev);
            }
            let now = Instant::now();
            LOOP_NOW.set(Some(now));
            self.fire_timers(now);
            // After what the poller and the timers woke, so those run first.
            let yielded = CURRENT.with(|c| {
                c.borrow_mut()
                    .as_mut()
                    .map(|l| std::mem::take(&mut l.after_poll))
            });
            for w in yielded.into_iter().flatten() {
                w.wake();
            }
        }
        self.cancel_all();
        LOOP_NOW.set(None);
        CURRENT.with(|c| *c.borrow_mut() = None);
    }

    /// Before sleeping: polls without waiting for up to the spin time,
    /// while the thread still counts as awake (`notified` stays true, so an
    /// injecting thread writes no eventfd and this one is not woken).
    /// Returns true when it found something to do: events (in `events`),
    /// injected tasks, or a stop.
    fn spin(&self, events: &mut Vec<reactor::Ready>) -> bool {
        let ns = self.spin_ns.load(Ordering::Relaxed);
        let expect = self.expect_until.load(Ordering::Relaxed);
        if ns == 0 && expect == 0 {
            return false;
        }
        let start = Instant::now();
        let Some(mut until) = spin_until(start, ns, expect) else {
            return false;
        };
        if nanos(start) < QUIET_AFTER.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(at) = self.next_timer() {
            until = until.min(at);
        }
        loop {
            let _ = self.poller.wait(events, Some(Duration::ZERO));
            if !events.is_empty()
                || !self.injector.is_empty()
                || self.stopping.load(Ordering::SeqCst)
            {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            // Hands the core to any other runnable thread (on a machine
            // that is busy, the client this thread waits for): a spin that
            // only burns the time slice measured slower than none at all.
            let before = Instant::now();
            std::thread::yield_now();
            let after = Instant::now();
            if after.saturating_duration_since(before) >= YIELDED {
                // Another thread had this core for a time slice: the
                // machine is busy. Polling there does harm (see
                // `QUIET_AFTER`): sleep, and let no thread of the process
                // poll for a while.
                QUIET_AFTER.store(nanos(after + BUSY_BACKOFF), Ordering::Relaxed);
                return false;
            }
        }
    }

    /// Stopping: every live task is woken and then dropped without being
    /// run, which drops its future (closing its sockets) on this thread.
    fn cancel_all(&self) {
        loop {
            let wakers: Vec<Waker> = lock(&self.active).drain().flatten().collect();
            for w in wakers {
                w.wake();
            }
            let mut dropped = false;
            loop {
                let next =
                    CURRENT.with(|c| c.borrow_mut().as_mut().and_then(|l| l.queue.pop_front()));
                let Some(r) = next.or_else(|| self.injector.pop().ok()) else {
                    break;
                };
                drop(r);
                dropped = true;
            }
            if !dropped && lock(&self.active).is_empty() {
                break;
            }
        }
        self.injector.close();
    }
}

/// Until when a thread that goes idle at `start` polls: the plain spin
/// (`spin_ns` from `start`) or the end of a due hand-off's window
/// (`expect_until`, nanoseconds after [`base`]), whichever is later;
/// `None` when neither reaches past `start`.
fn spin_until(start: Instant, spin_ns: u64, expect_until: u64) -> Option<Instant> {
    let plain = start + Duration::from_nanos(spin_ns);
    let until = match expect_until.checked_sub(nanos(start)) {
        Some(rest) => plain.max(start + Duration::from_nanos(rest)),
        None => plain,
    };
    (until > start).then_some(until)
}

/// Yields to the thread's sockets and timers: the task runs again only
/// after its thread has looked at its poller (without waiting) and fired
/// its due timers, and after the tasks those woke. A long piece of work
/// cut into parts (the `stats` reply's pieces) yields here between parts:
/// `futures_lite::future::yield_now` only re-queues the task, and the
/// thread runs up to `RUN_BUDGET` queued tasks before it looks at the
/// poller, so a task that yields that way can keep a ready socket of the
/// same thread waiting for 256 of its parts. Off a runtime thread (a
/// test's `block_on`, the simulator) it is `yield_now`.
pub fn yield_io() -> YieldIo {
    YieldIo { yielded: false }
}

/// The future of [`yield_io`].
#[derive(Debug)]
pub struct YieldIo {
    yielded: bool,
}

impl Future for YieldIo {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.yielded {
            return std::task::Poll::Ready(());
        }
        self.yielded = true;
        let parked = CURRENT.with(|c| match c.try_borrow_mut() {
            Ok(mut c) => c
                .as_mut()
                .map(|l| l.after_poll.push(cx.waker().clone()))
                .is_some(),
            Err(_) => false,
        });
        if !parked {
            cx.waker().wake_by_ref();
        }
        std::task::Poll::Pending
    }
}

/// A task's entry in [`Worker::active`], removed when its future ends or
/// is dropped.
struct ActiveSlot {
    worker: Arc<Worker>,
    slot: usize,
}

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        let mut active = lock(&self.worker.active);
        if active.contains(self.slot) {
            active.remove(self.slot);
        }
    }
}

/// A set of runtime threads.
pub struct Runtime {
    workers: Vec<Arc<Worker>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Runtime {
    /// Starts `n` threads named `{name}-{i}`, on the best poller.
    pub fn start(n: usize, name: &str) -> std::io::Result<Runtime> {
        Runtime::start_with(n, name, Backend::best())
    }

    /// Starts `n` threads named `{name}-{i}` on `backend`.
    pub fn start_with(n: usize, name: &str, backend: Backend) -> std::io::Result<Runtime> {
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let w = Worker::new(i, backend)?;
            workers.push(w.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || w.run())?,
            );
        }
        Ok(Runtime { workers, threads })
    }

    /// Lets every thread poll without waiting for up to `spin` before it
    /// sleeps in its poller (zero: never), so that a request arriving
    /// within that time is served without a wake-up (spec/ARCHITECTURE.md,
    /// "The runtime").
    pub fn set_spin(&self, spin: Duration) {
        let ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
        for w in &self.workers {
            w.spin_ns.store(ns, Ordering::Relaxed);
        }
    }

    /// How long a thread keeps polling after one of its connections was
    /// answered on a contended key ([`Worker::expect`]; zero: not at
    /// all).
    pub fn set_handoff_spin(&self, spin: Duration) {
        let ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
        for w in &self.workers {
            w.handoff_spin_ns.store(ns, Ordering::Relaxed);
        }
    }

    /// The threads' workers, in order.
    pub fn workers(&self) -> &[Arc<Worker>] {
        &self.workers
    }

    /// Spawns `future` on thread `i` (modulo the thread count).
    pub fn spawn_on<F>(&self, i: usize, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.workers[i % self.workers.len()].spawn(future)
    }

    /// Stops every thread: each cancels its tasks and ends. Returns at once.
    pub fn stop(&self) {
        for w in &self.workers {
            w.stopping.store(true, Ordering::SeqCst);
            let _ = w.poller.notify();
        }
    }

    /// Waits for the threads to end (after [`Runtime::stop`]).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Spawns `future` on the runtime thread this code runs on.
///
/// # Panics
///
/// When called outside a runtime thread.
pub fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Worker::current()
        .expect("rt::spawn outside a runtime thread")
        .spawn(future)
}

#[cfg(test)]
mod tests;
