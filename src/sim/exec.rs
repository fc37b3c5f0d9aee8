//! The seeded single-threaded scheduler: tasks, a simulated clock, timers
//! that may fire late, and the runtime seam ([`crate::rt::sim_hook`]) that
//! lets the real driver code sleep on it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use super::rng::Rng;
use crate::engine::ManualClock;
use crate::rt::sim_hook::{self, Hook};

type Fut = Pin<Box<dyn Future<Output = ()>>>;

struct Task {
    fut: Option<Fut>,
    group: u64,
}

struct TaskWaker {
    id: usize,
    ready: Arc<Mutex<BTreeSet<usize>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.id);
    }
}

thread_local! {
    /// The group of the task being polled (the simulator tags the journal's
    /// `Connect` entries with it).
    static CURRENT_GROUP: Cell<u64> = const { Cell::new(0) };
}

pub fn current_group() -> u64 {
    CURRENT_GROUP.with(|g| g.get())
}

/// The clock and the timers, shared with the runtime seam.
pub struct Time {
    pub base: Instant,
    pub now_ms: Cell<u64>,
    timers: RefCell<BTreeMap<(u64, u64), Waker>>,
    by_id: RefCell<HashMap<u64, u64>>,
    next_id: Cell<u64>,
    pub clock: Arc<ManualClock>,
}

impl Time {
    fn ms_of(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.base);
        // Round up: a sleep never ends early.
        (d.as_nanos().div_ceil(1_000_000)) as u64
    }
}

impl Hook for Time {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms.get())
    }
    fn register(&self, at: Instant, id: Option<u64>, cx: &mut Context<'_>) -> u64 {
        if let Some(id) = id {
            self.cancel(id);
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let ms = self.ms_of(at);
        self.timers
            .borrow_mut()
            .insert((ms, id), cx.waker().clone());
        self.by_id.borrow_mut().insert(id, ms);
        id
    }
    fn cancel(&self, id: u64) {
        if let Some(ms) = self.by_id.borrow_mut().remove(&id) {
            self.timers.borrow_mut().remove(&(ms, id));
        }
    }
}

/// The scheduler.
pub struct Exec {
    pub time: Rc<Time>,
    tasks: RefCell<Vec<Option<Task>>>,
    ready: Arc<Mutex<BTreeSet<usize>>>,
    pub rng: Rc<RefCell<Rng>>,
    /// The most a timer fires late, and how often it does (per mille).
    pub late_max_ms: Cell<u64>,
    pub late_per_mille: Cell<u64>,
    pub steps: Cell<u64>,
    /// Groups whose tasks are frozen (a `SIGSTOP`ped process: `paused`
    /// selects them by `group >> 32`), and the frozen tasks that were
    /// woken meanwhile, run again when their group resumes.
    paused: RefCell<BTreeSet<u64>>,
    parked: RefCell<Vec<usize>>,
}

impl Exec {
    pub fn new(rng: Rc<RefCell<Rng>>, start_ms: u64) -> Rc<Exec> {
        let time = Rc::new(Time {
            base: Instant::now(),
            now_ms: Cell::new(start_ms),
            timers: RefCell::new(BTreeMap::new()),
            by_id: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            clock: Arc::new(ManualClock::new(crate::core::Time(start_ms))),
        });
        sim_hook::install(Some(time.clone()));
        Rc::new(Exec {
            time,
            tasks: RefCell::new(Vec::new()),
            ready: Arc::new(Mutex::new(BTreeSet::new())),
            rng,
            late_max_ms: Cell::new(0),
            late_per_mille: Cell::new(0),
            steps: Cell::new(0),
            paused: RefCell::new(BTreeSet::new()),
            parked: RefCell::new(Vec::new()),
        })
    }

    pub fn now(&self) -> u64 {
        self.time.now_ms.get()
    }

    /// Spawns `f` in `group` (0: the simulator's own tasks).
    pub fn spawn(&self, group: u64, f: impl Future<Output = ()> + 'static) {
        let mut tasks = self.tasks.borrow_mut();
        let id = match tasks.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                tasks.push(None);
                tasks.len() - 1
            }
        };
        tasks[id] = Some(Task {
            fut: Some(Box::pin(f)),
            group,
        });
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    }

    /// Drops every task whose group `f` selects (a crash of the server
    /// process).
    pub(super) fn kill_matching(&self, f: impl Fn(u64) -> bool) {
        let dropped: Vec<Fut> = {
            let mut tasks = self.tasks.borrow_mut();
            tasks
                .iter_mut()
                .filter(|t| t.as_ref().is_some_and(|t| f(t.group)))
                .filter_map(|t| t.take().and_then(|t| t.fut))
                .collect()
        };
        drop(dropped);
    }

    /// Freezes the tasks of groups whose high half is `high`: woken, they
    /// are not polled until [`Exec::resume`].
    pub fn pause(&self, high: u64) {
        self.paused.borrow_mut().insert(high);
    }

    /// Thaws what [`Exec::pause`] froze: the tasks woken meanwhile run.
    pub fn resume(&self, high: u64) {
        self.paused.borrow_mut().remove(&high);
        let parked = std::mem::take(&mut *self.parked.borrow_mut());
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(parked);
    }

    fn pick(&self) -> Option<usize> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready.is_empty() {
            return None;
        }
        let k = self.rng.borrow_mut().below(ready.len() as u64) as usize;
        let id = *ready.iter().nth(k).expect("k < len");
        ready.remove(&id);
        Some(id)
    }

    fn poll(&self, id: usize) {
        let (fut, group) = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(id).and_then(Option::as_mut) {
                Some(t) if self.paused.borrow().contains(&(t.group >> 32)) => {
                    self.parked.borrow_mut().push(id);
                    return;
                }
                Some(t) => match t.fut.take() {
                    Some(f) => (f, t.group),
                    None => return,
                },
                None => return,
            }
        };
        let mut fut = fut;
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            ready: self.ready.clone(),
        }));
        let mut cx = Context::from_waker(&waker);
        CURRENT_GROUP.with(|g| g.set(group));
        let done = fut.as_mut().poll(&mut cx).is_ready();
        CURRENT_GROUP.with(|g| g.set(0));
        self.steps.set(self.steps.get() + 1);
        let mut tasks = self.tasks.borrow_mut();
        if done {
            // The slot may have been killed meanwhile: either way it is free.
            tasks[id] = None;
            drop(tasks);
            drop(fut);
        } else if let Some(t) = tasks[id].as_mut() {
            t.fut = Some(fut);
        } else {
            drop(tasks);
            drop(fut);
        }
    }

    /// Runs tasks, moving the clock to the next timer whenever none is
    /// ready, until the clock would pass `until_ms`.
    pub fn run_until(&self, until_ms: u64) {
        loop {
            if let Some(id) = self.pick() {
                self.poll(id);
                continue;
            }
            let next = self.time.timers.borrow().keys().next().map(|&(ms, _)| ms);
            let Some(next) = next else {
                self.set_now(until_ms);
                return;
            };
            if next > until_ms {
                self.set_now(until_ms);
                return;
            }
            let late = {
                let mut rng = self.rng.borrow_mut();
                if self.late_max_ms.get() > 0 && rng.below(1000) < self.late_per_mille.get() {
                    rng.below(self.late_max_ms.get() + 1)
                } else {
                    0
                }
            };
            let to = next.saturating_add(late).min(until_ms).max(self.now());
            self.set_now(to);
            let due: Vec<Waker> = {
                let mut timers = self.time.timers.borrow_mut();
                let later = timers.split_off(&(to + 1, 0));
                let due = std::mem::replace(&mut *timers, later);
                let mut by_id = self.time.by_id.borrow_mut();
                due.into_iter()
                    .map(|((_, id), w)| {
                        by_id.remove(&id);
                        w
                    })
                    .collect()
            };
            for w in due {
                w.wake();
            }
        }
    }

    fn set_now(&self, ms: u64) {
        if ms > self.now() {
            self.time.now_ms.set(ms);
            self.time.clock.set(crate::core::Time(ms));
        }
    }

    /// Ends the simulation: drops every task and removes the seam.
    pub fn shutdown(&self) {
        let all: Vec<Fut> = self
            .tasks
            .borrow_mut()
            .iter_mut()
            .filter_map(|t| t.take().and_then(|t| t.fut))
            .collect();
        drop(all);
        sim_hook::install(None);
    }
}

/// A sleep on the simulated clock for the simulator's own tasks.
pub async fn sleep_ms(ms: u64) {
    crate::rt::sleep(Duration::from_millis(ms)).await;
}
