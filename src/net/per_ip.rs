//! Counting per remote IP against an optional cap: open TCP connections
//! (`--max-connections-per-ip`), open HTTP connections and live HTTP
//! sessions (`--http-max-*-per-ip`).

use std::collections::HashMap;
use std::net::IpAddr;

/// Counts something per remote IP (open connections, live sessions) against
/// an optional cap.
#[derive(Debug, Default)]
pub struct PerIp {
    counts: HashMap<IpAddr, usize>,
    /// Successful [`PerIp::try_add`] calls since creation.
    added: u64,
}

impl PerIp {
    /// Counts one more for `ip` unless it already has `max` (0 = no cap).
    pub fn try_add(&mut self, ip: IpAddr, max: usize) -> bool {
        let n = self.counts.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            if *n == 0 {
                self.counts.remove(&ip);
            }
            return false;
        }
        *n += 1;
        self.added += 1;
        true
    }

    /// Counts one less for `ip`.
    pub fn remove(&mut self, ip: IpAddr) {
        if let Some(n) = self.counts.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&ip);
            }
        }
    }

    /// The count for `ip`.
    pub fn get(&self, ip: IpAddr) -> usize {
        self.counts.get(&ip).copied().unwrap_or(0)
    }

    /// The sum over every IP.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// How many were ever counted in (successful [`PerIp::try_add`] calls);
    /// for connections, the ones admitted.
    pub fn added(&self) -> u64 {
        self.added
    }
}
