//! Counters and histograms the core keeps about itself, for `/metrics`.
//!
//! Everything here is a fixed-size array updated in O(1) with no
//! allocation: the core bumps a counter or one histogram bucket on each
//! grant, timeout, release, expiry or eviction, on its hot path. Nothing in
//! here feeds back into a reply or an effect, so the differential tests
//! against the model are untouched by it.
//!
//! Durations are measured on the core's own clock (the `now` of its inputs,
//! milliseconds), so they are exact under a virtual clock:
//! * acquire wait: from the moment a request was queued (`l`/`sl` that
//!   blocked, or `e`/`se` that answered `queued`) to its grant. A grant that
//!   did not queue observes 0, so the histogram's count equals the grant
//!   count and its quantiles are over every grant, contended or not.
//! * hold: from a grant to the holder's end: release, lease expiry, or
//!   release because its connection went away. A `w`/`sw` that collects a
//!   two-phase grant does not restart it.

use crate::wire::Space;

/// Upper bounds of the histogram buckets in milliseconds (`le` in seconds:
/// 0.001 … 300), chosen for lock waits and holds: sub-millisecond
/// uncontended grants land in the first bucket, the default 33 s lease and
/// typical acquire timeouts fall between 30 and 60. One more bucket, `+Inf`,
/// takes everything above 300 s.
pub const BUCKET_BOUNDS_MS: [u64; 16] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000,
];

/// The `le` label of each bound in [`BUCKET_BOUNDS_MS`], in seconds.
const BUCKET_LE: [&str; 16] = [
    "0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
    "60", "120", "300",
];

/// A fixed-bucket histogram of millisecond durations, rendered in seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket, not cumulative: slot `i` holds values in
    /// `(BUCKET_BOUNDS_MS[i-1], BUCKET_BOUNDS_MS[i]]`; the last slot holds
    /// values above every bound.
    counts: [u64; BUCKET_BOUNDS_MS.len() + 1],
    sum_ms: u64,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&mut self, ms: u64) {
        // Most observations are uncontended grants (0 ms): skip the search.
        let i = if ms <= BUCKET_BOUNDS_MS[0] {
            0
        } else {
            BUCKET_BOUNDS_MS.partition_point(|&b| b < ms)
        };
        self.counts[i] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observations in milliseconds.
    pub fn sum_ms(&self) -> u64 {
        self.sum_ms
    }

    /// `(le, cumulative count)` for every bucket, ending with `("+Inf", count)`.
    pub fn cumulative(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let les = BUCKET_LE.iter().copied().chain(std::iter::once("+Inf"));
        les.zip(self.counts.iter().scan(0u64, |acc, n| {
            *acc += n;
            Some(*acc)
        }))
    }

    /// Appends the `_bucket`, `_sum` and `_count` samples of `name` with
    /// `labels` (`k="v"` pairs, comma-separated, may be empty).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        use std::fmt::Write;
        let sep = if labels.is_empty() { "" } else { "," };
        for (le, n) in self.cumulative() {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let sum_s = self.sum_ms as f64 / 1000.0;
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {sum_s}");
        let _ = writeln!(out, "{name}_count{braced} {}", self.count());
    }
}

/// How a grant came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Granted by the request itself (`l`/`sl`/`e`/`se` on a free slot).
    Immediate,
    /// Granted to a queued waiter by a hand-off.
    Queued,
}

impl How {
    pub const ALL: [How; 2] = [How::Immediate, How::Queued];

    pub fn label(self) -> &'static str {
        match self {
            How::Immediate => "immediate",
            How::Queued => "queued",
        }
    }
}

/// Why a holder, a waiter or a connection was removed without asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A holder's lease passed (whichever input found it due).
    Expiry,
    /// A holder released because its connection went away
    /// (`--auto-release-on-disconnect`).
    Disconnect,
    /// A queued waiter (blocking or two-phase) dropped because its
    /// connection went away.
    DisconnectWaiter,
    /// A blocked waiter answered `error` when graceful shutdown began.
    Drain,
    /// A signal listener closed because its push queue was full (D13).
    SlowConsumer,
}

impl Cause {
    pub const ALL: [Cause; 5] = [
        Cause::Expiry,
        Cause::Disconnect,
        Cause::DisconnectWaiter,
        Cause::Drain,
        Cause::SlowConsumer,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cause::Expiry => "expiry",
            Cause::Disconnect => "disconnect",
            Cause::DisconnectWaiter => "disconnect_waiter",
            Cause::Drain => "drain",
            Cause::SlowConsumer => "slow_consumer",
        }
    }
}

/// The `kind` label of a key space.
pub fn kind_label(space: Space) -> &'static str {
    match space {
        Space::Lock => "lock",
        Space::Sem => "semaphore",
    }
}

#[inline]
fn kind(space: Space) -> usize {
    match space {
        Space::Lock => 0,
        Space::Sem => 1,
    }
}

/// Everything the core counts, per key space where that makes sense.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreMetrics {
    grants: [[u64; 2]; 2],
    acquire_timeouts: [u64; 2],
    lease_expiries: [u64; 2],
    releases: [u64; 2],
    evictions: [u64; Cause::ALL.len()],
    signals_published: u64,
    signal_deliveries: u64,
    acquire_wait: [Histogram; 2],
    hold: [Histogram; 2],
}

impl CoreMetrics {
    /// Grants in `space` that came about as `how`.
    pub fn grants(&self, space: Space, how: How) -> u64 {
        self.grants[kind(space)][how as usize]
    }

    /// Acquires and waits in `space` answered `timeout` (a queued waiter's
    /// deadline passed, or timeout 0 found no free slot).
    pub fn acquire_timeouts(&self, space: Space) -> u64 {
        self.acquire_timeouts[kind(space)]
    }

    /// Holders in `space` removed because their lease passed.
    pub fn lease_expiries(&self, space: Space) -> u64 {
        self.lease_expiries[kind(space)]
    }

    /// Successful `r`/`sr` in `space`.
    pub fn releases(&self, space: Space) -> u64 {
        self.releases[kind(space)]
    }

    /// Removals for `cause`, both key spaces together.
    pub fn evictions(&self, cause: Cause) -> u64 {
        self.evictions[cause as usize]
    }

    /// Takes the signal counters of `other` in place of these (cluster
    /// mode: the lock counters are the replicated core's, the signals the
    /// member's own).
    pub fn take_signals_from(&mut self, other: &CoreMetrics) {
        self.signals_published = other.signals_published;
        self.signal_deliveries = other.signal_deliveries;
    }

    /// `signal` requests answered.
    pub fn signals_published(&self) -> u64 {
        self.signals_published
    }

    /// Pushes emitted by `signal` requests (the sum of their `ok <n>`).
    pub fn signal_deliveries(&self) -> u64 {
        self.signal_deliveries
    }

    /// Queue-to-grant times in `space` (0 for grants that did not queue).
    pub fn acquire_wait(&self, space: Space) -> &Histogram {
        &self.acquire_wait[kind(space)]
    }

    /// Grant-to-end times of holders in `space`.
    pub fn hold(&self, space: Space) -> &Histogram {
        &self.hold[kind(space)]
    }

    // ----- updates, by the core -------------------------------------------

    /// A grant; `waited_ms` is `None` when the request did not queue.
    #[inline]
    pub(super) fn granted(&mut self, space: Space, waited_ms: Option<u64>) {
        let how = if waited_ms.is_some() {
            How::Queued
        } else {
            How::Immediate
        };
        self.grants[kind(space)][how as usize] += 1;
        self.acquire_wait[kind(space)].observe(waited_ms.unwrap_or(0));
    }

    #[inline]
    pub(super) fn timed_out(&mut self, space: Space) {
        self.acquire_timeouts[kind(space)] += 1;
    }

    /// A holder ended after `held_ms`: released (`cause` `None`), or
    /// removed for `cause`.
    #[inline]
    pub(super) fn holder_ended(&mut self, space: Space, held_ms: u64, cause: Option<Cause>) {
        match cause {
            None => self.releases[kind(space)] += 1,
            Some(cause) => {
                if cause == Cause::Expiry {
                    self.lease_expiries[kind(space)] += 1;
                }
                self.evictions[cause as usize] += 1;
            }
        }
        self.hold[kind(space)].observe(held_ms);
    }

    /// A waiter or connection removed for `cause`.
    pub(super) fn evicted(&mut self, cause: Cause, n: u64) {
        self.evictions[cause as usize] += n;
    }

    pub(super) fn signal(&mut self, delivered: u64) {
        self.signals_published += 1;
        self.signal_deliveries += delivered;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_labels_are_the_bounds_in_seconds() {
        for (ms, le) in BUCKET_BOUNDS_MS.iter().zip(BUCKET_LE) {
            assert_eq!((*ms as f64 / 1000.0).to_string(), le);
        }
        assert!(BUCKET_BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
    }

    /// A value equal to a bound is in that bucket (`le` is inclusive); one
    /// millisecond more is in the next.
    #[test]
    fn observations_land_in_the_le_bucket() {
        for (i, &b) in BUCKET_BOUNDS_MS.iter().enumerate() {
            let mut h = Histogram::default();
            h.observe(b);
            h.observe(b + 1);
            let cum: Vec<u64> = h.cumulative().map(|(_, n)| n).collect();
            assert_eq!(cum[..i], vec![0; i][..], "below {b}");
            assert_eq!(cum[i], 1, "at {b}");
            assert_eq!(cum[i + 1..], vec![2; 16 - i][..], "above {b}");
        }
        let mut h = Histogram::default();
        h.observe(0);
        h.observe(300_001);
        h.observe(u64::MAX);
        let cum: Vec<(&str, u64)> = h.cumulative().collect();
        assert_eq!(cum[0], ("0.001", 1));
        assert_eq!(cum[15], ("300", 1));
        assert_eq!(cum[16], ("+Inf", 3));
        assert_eq!((h.count(), h.sum_ms()), (3, u64::MAX));
    }

    #[test]
    fn renders_cumulative_buckets_sum_and_count() {
        let mut h = Histogram::default();
        h.observe(0);
        h.observe(1500);
        h.observe(1500);
        let mut out = String::new();
        h.render("w", "kind=\"lock\"", &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 19);
        assert_eq!(lines[0], "w_bucket{kind=\"lock\",le=\"0.001\"} 1");
        assert_eq!(lines[8], "w_bucket{kind=\"lock\",le=\"1\"} 1");
        assert_eq!(lines[9], "w_bucket{kind=\"lock\",le=\"2.5\"} 3");
        assert_eq!(lines[16], "w_bucket{kind=\"lock\",le=\"+Inf\"} 3");
        assert_eq!(lines[17], "w_sum{kind=\"lock\"} 3");
        assert_eq!(lines[18], "w_count{kind=\"lock\"} 3");
        let mut out = String::new();
        Histogram::default().render("w", "", &mut out);
        assert!(out.starts_with("w_bucket{le=\"0.001\"} 0\n"));
        assert!(out.ends_with("w_sum 0\nw_count 0\n"));
    }
}
