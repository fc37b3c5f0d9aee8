//! Core state and transitions. (Being written.)

use super::{ConnId, Time};
use crate::wire::{Reply, Request};

/// Core configuration: every limit and policy the transition function needs.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Lease used when a request omits it (`--default-lease-ttl`).
    pub default_lease_s: u64,
    /// Maximum number of resources, locks and semaphores together (`--max-locks`).
    pub max_locks: usize,
    /// Maximum queued waiters per key; 0 = unlimited (`--max-waiters`).
    pub max_waiters: usize,
    /// Release held slots when their connection goes away (`--auto-release-on-disconnect`).
    pub auto_release_on_disconnect: bool,
    /// Idle GC period (`--gc-interval`).
    pub gc_interval_s: u64,
    /// A resource idle for strictly longer than this is collected (`--gc-max-idle`).
    pub gc_max_idle_s: u64,
    /// When set, the first request of every connection must be `auth` with this token.
    pub auth_token: Option<Vec<u8>>,
    /// The first token issued has fence `fence_start + 1`.
    pub fence_start: u64,
    /// Grants are refused (never issued) with a fence above this ceiling;
    /// `u64::MAX` when no fence state file is used. See [`Core::raise_fence_ceiling`].
    pub fence_ceiling: u64,
    /// Secret key for token salts.
    pub salt_key: [u64; 2],
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            default_lease_s: 33,
            max_locks: 1024,
            max_waiters: 0,
            auto_release_on_disconnect: true,
            gc_interval_s: 5,
            gc_max_idle_s: 60,
            auth_token: None,
            fence_start: 0,
            fence_ceiling: u64::MAX,
            salt_key: [0, 0],
        }
    }
}

/// An output of the core, addressed to one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this reply line to `conn` (its answer to its oldest unanswered request).
    Reply { conn: ConnId, reply: Reply },
    /// Close `conn` after sending everything queued before this effect.
    Close { conn: ConnId },
}

/// The lock manager.
pub struct Core {
    cfg: CoreConfig,
}

impl Core {
    pub fn new(cfg: CoreConfig, now: Time) -> Core {
        let _ = now;
        Core { cfg }
    }

    /// Registers a new connection and returns its id.
    pub fn connect(&mut self, now: Time) -> ConnId {
        let _ = now;
        ConnId(1)
    }

    /// Applies one request from `conn`. The reply to `conn` (if it is not
    /// left waiting) and any grants or timeouts for other connections are
    /// appended to `out`. If no `Reply` for `conn` is appended, the request
    /// is blocked (a queued `l`/`sl`/`w`/`sw`) and its reply comes later
    /// from another input.
    pub fn handle(&mut self, now: Time, conn: ConnId, req: Request, out: &mut Vec<Effect>) {
        let _ = (now, conn, req, out, &self.cfg);
    }

    /// A request from `conn` that could not be parsed.
    pub fn handle_invalid(&mut self, now: Time, conn: ConnId, fatal: bool, out: &mut Vec<Effect>) {
        let _ = (now, conn, fatal, out);
    }

    /// The connection went away (EOF, error, or closed by the driver).
    pub fn disconnect(&mut self, now: Time, conn: ConnId, out: &mut Vec<Effect>) {
        let _ = (now, conn, out);
    }

    /// Processes everything due at or before `now`.
    pub fn handle_timeout(&mut self, now: Time, out: &mut Vec<Effect>) {
        let _ = (now, out);
    }

    /// The next instant at which [`Core::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        None
    }
}
