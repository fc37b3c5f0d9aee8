//! Sleeps: on a runtime thread, a timer of that thread's loop (its poller
//! waits no longer than the nearest one); on a simulator's thread, a timer
//! of its simulated clock ([`super::sim_hook`]); anywhere else, async-io's
//! timer. The choice is made at the first poll, on the thread the future
//! runs on. Deadlines are read from [`super::now`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::{lock, Worker};

/// A resettable sleep until a deadline.
#[derive(Debug)]
pub struct Sleep {
    at: Instant,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Not polled yet (or reset): no timer registered anywhere.
    Idle,
    /// Registered with a runtime thread under (deadline, id).
    Runtime(Arc<Worker>, (Instant, u64)),
    /// Registered with the simulator's clock under this id.
    Sim(u64),
    /// Not on a runtime thread.
    Io(async_io::Timer),
    Done,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Worker({})", self.index)
    }
}

impl Sleep {
    pub fn until(at: Instant) -> Sleep {
        Sleep {
            at,
            state: State::Idle,
        }
    }

    pub fn after(d: Duration) -> Sleep {
        Sleep::until(super::now() + d)
    }

    /// The deadline.
    pub fn deadline(&self) -> Instant {
        self.at
    }

    /// Moves the deadline to `at` (the sleep may be pending again).
    pub fn reset(&mut self, at: Instant) {
        self.unregister();
        self.at = at;
        self.state = State::Idle;
    }

    fn unregister(&mut self) {
        match &self.state {
            State::Runtime(worker, key) => {
                lock(&worker.timers).remove(key);
            }
            State::Sim(id) => super::sim_hook::cancel(*id),
            _ => {}
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if matches!(this.state, State::Done) {
            return Poll::Ready(());
        }
        // The thread's last clock reading: never later than now, so never
        // early; when it says "not yet" although the deadline just passed,
        // the timer registered below fires by the thread's next reading.
        if super::loop_now() >= this.at {
            this.unregister();
            this.state = State::Done;
            return Poll::Ready(());
        }
        match &mut this.state {
            State::Io(t) => {
                if Pin::new(t).poll(cx).is_ready() {
                    this.state = State::Done;
                    return Poll::Ready(());
                }
            }
            State::Runtime(worker, key) => {
                // Keep the registered waker current (the task may have moved
                // to another future's waker, e.g. inside a select).
                let mut timers = lock(&worker.timers);
                match timers.get_mut(key) {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    Some(w) => *w = cx.waker().clone(),
                    // Fired, but the deadline is not reached on this clock
                    // reading: register again.
                    None => {
                        timers.insert(*key, cx.waker().clone());
                    }
                }
            }
            State::Sim(id) => {
                // Re-registered so that the waker is the current one.
                if let Some(id2) = super::sim_hook::register(this.at, Some(*id), cx) {
                    *id = id2;
                }
            }
            State::Idle if super::sim_hook::active() => {
                if let Some(id) = super::sim_hook::register(this.at, None, cx) {
                    this.state = State::Sim(id);
                }
            }
            State::Idle => match Worker::current() {
                Some(worker) => {
                    let key = (this.at, worker.next_timer.fetch_add(1, Ordering::Relaxed));
                    lock(&worker.timers).insert(key, cx.waker().clone());
                    this.state = State::Runtime(worker, key);
                }
                None => {
                    let mut t = async_io::Timer::at(this.at);
                    if Pin::new(&mut t).poll(cx).is_ready() {
                        this.state = State::Done;
                        return Poll::Ready(());
                    }
                    this.state = State::Io(t);
                }
            },
            State::Done => unreachable!("checked above"),
        }
        Poll::Pending
    }
}

/// Resolves after `d`.
pub async fn sleep(d: Duration) {
    Sleep::after(d).await
}

/// Resolves at `at`.
pub async fn sleep_until(at: Instant) {
    Sleep::until(at).await
}

/// Ticks every `period` (the first tick one period from now); a stream
/// that never ends. Missed ticks are not made up.
#[derive(Debug)]
pub struct Interval {
    period: Duration,
    sleep: Sleep,
}

impl Interval {
    pub fn new(period: Duration) -> Interval {
        Interval {
            period,
            sleep: Sleep::after(period),
        }
    }
}

impl futures_lite::Stream for Interval {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.sleep).poll(cx) {
            Poll::Ready(()) => {
                let next = (this.sleep.deadline() + this.period).max(super::now());
                this.sleep.reset(next);
                Poll::Ready(Some(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// hyper's timer (header read deadlines, keep-alive) on these sleeps, so
/// that an HTTP connection's timers fire on its own thread. One per
/// connection.
///
/// hyper makes a new sleep for the header read deadline of every request
/// (ten seconds ahead) and drops it when the head has arrived, which with
/// a plain [`Sleep`] cost an insertion into and a removal from the thread's
/// timers per request (about 1% of an HTTP request's CPU time). Here the
/// connection keeps one registered [`Sleep`] across requests: a new
/// deadline later than the registered one leaves the registration alone
/// (when it fires, the sleep that is still waiting registers again for its
/// own deadline), so a connection's timer is touched about once per
/// deadline period instead of twice per request. A sleep is never ready
/// before its own deadline.
#[derive(Clone, Debug, Default)]
pub struct HyperTimer {
    shared: Arc<std::sync::Mutex<Shared>>,
}

/// The registration a connection's hyper sleeps share.
#[derive(Debug, Default)]
struct Shared {
    /// Registered at or before the deadline of every sleep waiting on it.
    sleep: Option<Sleep>,
    /// The waker `sleep` was last polled with.
    waker: Option<std::task::Waker>,
}

struct HyperSleep {
    at: Instant,
    shared: Arc<std::sync::Mutex<Shared>>,
}

impl Future for HyperSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = super::loop_now();
        if now >= self.at {
            return Poll::Ready(());
        }
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let Shared { sleep, waker } = &mut *shared;
        // A registration that has not fired (its deadline is after now, by
        // the same clock reading the thread's timers fire by) and is not
        // after this deadline wakes this task in time.
        let keep = sleep
            .as_ref()
            .is_some_and(|s| s.deadline() <= self.at && now < s.deadline());
        if keep && waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if !keep {
            *sleep = Some(Sleep::until(self.at));
        }
        if let Some(s) = sleep {
            // Not ready: its deadline is after now.
            let _ = Pin::new(s).poll(cx);
        }
        *waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl hyper::rt::Sleep for HyperSleep {}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(super::loop_now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep {
            at: deadline,
            shared: self.shared.clone(),
        })
    }

    /// hyper computes its deadlines (the header read timeout, ten seconds,
    /// once per request) from this: the runtime's clock, so that on a
    /// simulator's thread they are on the simulated clock like the sleeps
    /// themselves; the thread's last reading, as for the sleeps' due checks.
    fn now(&self) -> Instant {
        super::loop_now()
    }
}
