//! Per-remote-IP admission for the HTTP front (reference §7.2, §7.3):
//! the request rate limiter (a token bucket per IP), and the per-IP
//! counter shared with the TCP listener ([`PerIp`]).
//!
//! The token bucket is a pure value: every operation takes `now` as an
//! argument, so the unit tests drive it with a virtual clock and the HTTP
//! layer passes the real one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use crate::net::per_ip::PerIp;

/// A bucket idle this long is forgotten (a returning IP starts afresh,
/// which is what a full bucket would give it anyway).
pub const BUCKET_IDLE: Duration = Duration::from_secs(600);
/// How often idle buckets are looked for.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(300);

/// One token bucket: holds up to `burst` tokens, refilled at `rate` per
/// second; a request takes one token or is refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens as of `now`.
    pub fn full(burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst as f64,
            last: now,
        }
    }

    /// Refills for the time since the last call (a clock that went
    /// backwards refills nothing), then takes one token if there is one.
    pub fn take(&mut self, rate: u64, burst: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if now > self.last {
            self.last = now;
        }
        self.tokens = (self.tokens + elapsed * rate as f64).min(burst as f64);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens currently held (as of the last [`TokenBucket::take`]).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// When the bucket was last used.
    pub fn last(&self) -> Instant {
        self.last
    }
}

/// `--http-rate-limit-per-ip` / `--http-rate-limit-burst`: one bucket per
/// remote IP. A new IP starts with a full bucket and its first request
/// takes a token (so it is left with `burst − 1`).
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    burst: u64,
    buckets: HashMap<IpAddr, TokenBucket>,
    last_sweep: Instant,
}

impl RateLimiter {
    /// `rate` > 0 requests per second with bursts of `burst` (0 means
    /// `rate`).
    pub fn new(rate: u64, burst: u64, now: Instant) -> RateLimiter {
        RateLimiter {
            rate,
            burst: if burst == 0 { rate } else { burst },
            buckets: HashMap::new(),
            last_sweep: now,
        }
    }

    /// Whether a request from `ip` at `now` is allowed. Every
    /// [`SWEEP_PERIOD`] the buckets idle for [`BUCKET_IDLE`] are dropped.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if now.saturating_duration_since(self.last_sweep) >= SWEEP_PERIOD {
            self.last_sweep = now;
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.last()) < BUCKET_IDLE);
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(rate, burst, now)
    }

    /// Remote IPs with a bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no IP has a bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn new_ip_has_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(2, 3, t0);
        // Burst of 3 at one instant, then refused.
        assert!(l.allow(ip(1), t0));
        assert!(l.allow(ip(1), t0));
        assert!(l.allow(ip(1), t0));
        assert!(!l.allow(ip(1), t0));
        // Another IP has its own bucket.
        assert!(l.allow(ip(2), t0));
        // 2/s: one token after 500 ms, not before.
        assert!(!l.allow(ip(1), t0 + Duration::from_millis(400)));
        assert!(l.allow(ip(1), t0 + Duration::from_millis(500)));
        assert!(!l.allow(ip(1), t0 + Duration::from_millis(500)));
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(l.allow(ip(1), later));
        }
        assert!(!l.allow(ip(1), later));
    }

    #[test]
    fn first_request_leaves_burst_minus_one() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(5, t0);
        assert!(b.take(1, 5, t0));
        assert_eq!(b.tokens(), 4.0);
    }

    #[test]
    fn burst_zero_means_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(2, 0, t0);
        assert!(l.allow(ip(1), t0));
        assert!(l.allow(ip(1), t0));
        assert!(!l.allow(ip(1), t0));
    }

    #[test]
    fn clock_going_backwards_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::full(1, t0);
        assert!(b.take(1, 1, t0));
        assert!(!b.take(1, 1, t0 - Duration::from_secs(5)));
        assert!(!b.take(1, 1, t0));
        assert!(b.take(1, 1, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn idle_buckets_are_dropped_after_ten_minutes() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1, 1, t0);
        assert!(l.allow(ip(1), t0));
        assert!(l.allow(ip(2), t0 + Duration::from_secs(100)));
        assert_eq!(l.len(), 2);
        // Sweep at 5 min: nothing is 10 min idle yet.
        assert!(l.allow(ip(3), t0 + SWEEP_PERIOD));
        assert_eq!(l.len(), 3);
        // Sweep at 10 min: ip 1 (idle 10 min) goes, the others stay.
        assert!(l.allow(ip(3), t0 + SWEEP_PERIOD * 2));
        assert_eq!(l.len(), 2);
        // No sweep before another 5 min: ip 2 (idle 10 min at 11:40) stays.
        assert!(l.allow(ip(3), t0 + Duration::from_secs(700)));
        assert_eq!(l.len(), 2);
        assert!(l.allow(ip(3), t0 + SWEEP_PERIOD * 3));
        assert_eq!(l.len(), 1);
        // ip 1 comes back with a full bucket.
        assert!(l.allow(ip(1), t0 + SWEEP_PERIOD * 2));
    }

    #[test]
    fn per_ip_counts_and_caps() {
        let mut p = PerIp::default();
        assert!(p.try_add(ip(1), 2));
        assert!(p.try_add(ip(1), 2));
        assert!(!p.try_add(ip(1), 2));
        assert!(p.try_add(ip(2), 2));
        assert_eq!(p.total(), 3);
        p.remove(ip(1));
        assert_eq!(p.get(ip(1)), 1);
        assert!(p.try_add(ip(1), 2));
        assert!(p.try_add(ip(3), 0));
        p.remove(ip(9));
        assert_eq!(p.total(), 4);
        assert_eq!(p.added(), 5, "refusals are not counted");
    }
}
