//! The vocabulary of the reference machine: its configuration, the requests
//! it accepts (already parsed, see `src/wire` in the root crate for the
//! bytes), and the outputs it produces. These are plain duplicates of the
//! production types on purpose: the model must not depend on the code it
//! checks, so a bug in a shared type could not hide from the comparison.

/// Every limit and policy the lock manager needs. Field names carry their
/// unit (`_s` = seconds); the machine itself counts milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Lease used when a request omits it (`--default-lease-ttl`).
    pub default_lease_s: u64,
    /// Maximum number of resources, locks and semaphores together (§2).
    pub max_locks: usize,
    /// Maximum waiters per resource queue; 0 = unlimited (§3.3, §5.4).
    pub max_waiters: usize,
    /// Release held slots when their connection goes away (§9, D6).
    pub auto_release_on_disconnect: bool,
    /// Idle GC period (§8.4). 0 disables GC (the CLI never allows it; the
    /// model treats it as "never due" instead of looping forever).
    pub gc_interval_s: u64,
    /// A resource idle for strictly longer than this is collected (§8.4).
    pub gc_max_idle_s: u64,
    /// When set, the first request of every connection must be `auth` (§12).
    pub auth_token: Option<Vec<u8>>,
    /// The first grant has fence `fence_start + 1` (§6).
    pub fence_start: u64,
    /// No grant issues a fence above this (§6): `u64::MAX` without a fence
    /// state file; the driver raises it with
    /// [`crate::Machine::raise_fence_ceiling`].
    pub fence_ceiling: u64,
    /// SipHash-2-4 key for the salt half of tokens (§6).
    pub salt_key: [u64; 2],
    /// Listen registrations per connection; 0 = unlimited (§12, D12).
    pub max_subscriptions: usize,
    /// How long after a failed authentication its connection is closed
    /// (§10; slows down guessing).
    pub auth_failure_pause_ms: u64,
}

impl Default for Config {
    /// The server's defaults (reference §8 of dflockd-v1.md), with a zero
    /// salt key and fence start so tokens are predictable in tests.
    fn default() -> Self {
        Config {
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
            max_subscriptions: 0,
            auth_failure_pause_ms: 100,
        }
    }
}

/// Which key space a request addresses. The same key in both spaces names
/// two unrelated resources (§2, D5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    Lock,
    Sem,
}

/// One request, already parsed. Lock commands are the semaphore commands
/// with `space: Space::Lock`; their `limit` is ignored (a lock's limit is
/// always 1, §2).
///
/// Preconditions the parser guarantees and the machine relies on: keys are
/// non-empty, leases are `>= 1`, semaphore limits are `>= 1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `l key T [L]` / `sl key T N [L]` (§3).
    Acquire {
        space: Space,
        key: Vec<u8>,
        timeout_s: u64,
        limit: u64,
        lease_s: Option<u64>,
    },
    /// `r key TOK` / `sr key TOK` (§4).
    Release {
        space: Space,
        key: Vec<u8>,
        token: Vec<u8>,
    },
    /// `n key TOK [L]` / `sn key TOK [L]` (§4).
    Renew {
        space: Space,
        key: Vec<u8>,
        token: Vec<u8>,
        lease_s: Option<u64>,
    },
    /// `e key [L]` / `se key N [L]` (§5).
    Enqueue {
        space: Space,
        key: Vec<u8>,
        limit: u64,
        lease_s: Option<u64>,
    },
    /// `w key T` / `sw key T` (§5).
    Wait {
        space: Space,
        key: Vec<u8>,
        timeout_s: u64,
    },
    /// `stats`.
    Stats,
    /// `auth _ TOKEN`.
    Auth { token: Vec<u8> },
    /// `ping`.
    Ping,
    /// `listen pattern [group]` (§12); `group` empty when ungrouped. The
    /// parser has checked the pattern syntax.
    Listen { pattern: Vec<u8>, group: Vec<u8> },
    /// `unlisten pattern [group]` (§12).
    Unlisten { pattern: Vec<u8>, group: Vec<u8> },
    /// `signal channel payload` (§12); the channel has no wildcard.
    Signal { channel: Vec<u8>, payload: Vec<u8> },
    /// A request that could not be parsed; `fatal` for an overlong line
    /// (D1: answered `error`, then the connection is closed).
    Invalid { fatal: bool },
}

/// What the machine asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// Send `line` (without its LF, exactly as on the wire) to `conn`. It
    /// answers the oldest unanswered request of `conn`, except a line that
    /// starts with `sig `: that is a signal push (§12), which answers
    /// nothing and counts against `conn`'s push queue until the driver
    /// reports it written ([`crate::Machine::pushes_written`]).
    Reply { conn: u64, line: String },
    /// Close `conn` after everything sent before, for `why`. The driver
    /// then reports the closed connection back with `disconnect`.
    Close { conn: u64, why: Why },
}

/// Why the machine closes a connection: what the driver logs, and for a
/// failed authentication, how long it waits before closing (§10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Why {
    /// A request after draining began (§10).
    Draining,
    /// A failed authentication: closed `pause_ms` after the reply (§10).
    AuthFailed { pause_ms: u64 },
    /// An overlong line (D1).
    Overlong,
    /// A started request not complete at its read deadline (§9.2, D11).
    Stalled,
    /// An idle connection that owns nothing, at its read deadline (§9.2).
    Idle,
    /// A slow consumer with a full push queue (§12, D13).
    SlowConsumer,
}

/// Deliberately broken variants of the machine, used only to show that
/// every property of the stateright model can fail (a property that no bug
/// can break checks nothing). `Bug::None` is the specification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Bug {
    /// The specification.
    #[default]
    None,
    /// Hand-off grants the *last* waiter instead of the head (§7).
    GrantFromBack,
    /// The immediate-grant check is off by one (`holders <= limit`), so a
    /// full resource grants one slot too many (§3.2).
    DoubleGrant,
    /// Leases are never due, so they never expire (§8.2).
    LeaseNeverExpires,
    /// Hand-off grants reuse the last fence instead of issuing a new one (§6).
    FenceNotIncremented,
    /// Hand-off grants a waiter whose deadline is `<= now` instead of timing
    /// it out (§7), visible when an expiry and a timeout fall on one instant.
    GrantTimedOutWaiter,
    /// A waiter timeout answers `timeout` but leaves the waiter queued (§8.3).
    TimeoutKeepsWaiter,
    /// Disconnect keeps the connection's waiters queued (§9).
    DisconnectKeepsWaiters,
    /// Renew answers `ok L` without moving the deadline (§4).
    RenewNoExtend,
    /// Renew is applied before advancing time, so it extends a lease whose
    /// deadline has passed but that no timer has evicted yet (§4, §8).
    RenewResurrectsExpired,
    /// Hand-off grants the head waiter but leaves a copy of it queued (§7).
    WaiterLeftInQueue,
    /// Lease expiry frees the slot but does not hand it to the queue (§8.2).
    NoHandoffOnExpiry,
    /// Cancel answers `timeout` but leaves the waiter queued (§9.1).
    CancelKeepsWaiter,
    /// A waiter timeout removes the waiter without telling its blocked
    /// client (§8.3): a lost reply.
    TimeoutUntold,
    /// A hand-off grants a blocked waiter without telling it (§7): a lost
    /// reply, and a lease nobody knows it holds.
    GrantUntold,
    /// Signal delivery forgets which connections an ungrouped route already
    /// reached, so a connection subscribed twice gets the signal twice (§12).
    SignalTwice,
    // ----- the decisions a driver used to make (§9.1, §9.2, §10) -----
    /// A read deadline closes an idle connection even when it owns
    /// something, as upstream did (§9.2, D11).
    IdleCutsOwner,
    /// A failed authentication answers `error_auth` but leaves the
    /// connection open, free to guess again (§10).
    AuthFailureStaysOpen,
    /// A cancel that lost the race to the grant does nothing: the slot
    /// stays held for a request nobody waits for (§9.1).
    CancelIgnoresGrant,

    // The variants below change replies, not the properties the stateright
    // model checks; the differential tests (`tests/differential.rs`) catch
    // them by comparing the machine with the core (`Bug::DIFFERENTIAL`).
    /// A request is applied without advancing time first (§1, §8): a request
    /// that arrives before a late timer sees leases and waiters that are
    /// already dead.
    HandleSkipsAdvance,
    /// Grants may issue the fence one above the ceiling (§6).
    CeilingOffByOne,
    /// [`crate::Machine::fence_headroom`] always says 0.
    HeadroomZero,
    /// Raising the ceiling resumes stopped resources in key order instead
    /// of the arrival order of their oldest waiter (§6).
    RaiseInKeyOrder,
    /// At one instant, waiter timeouts are processed before lease expiries
    /// (§8.1 orders lease expiry first).
    TimeoutBeforeExpiry,
    /// Disconnect releases held slots in reverse token order (§9).
    DisconnectReleasesReversed,
}

impl Bug {
    /// The broken variants the stateright model catches (see
    /// `model/tests/model/check.rs`).
    pub const ALL: [Bug; 18] = [
        Bug::GrantFromBack,
        Bug::DoubleGrant,
        Bug::LeaseNeverExpires,
        Bug::FenceNotIncremented,
        Bug::GrantTimedOutWaiter,
        Bug::TimeoutKeepsWaiter,
        Bug::DisconnectKeepsWaiters,
        Bug::RenewNoExtend,
        Bug::RenewResurrectsExpired,
        Bug::WaiterLeftInQueue,
        Bug::NoHandoffOnExpiry,
        Bug::CancelKeepsWaiter,
        Bug::TimeoutUntold,
        Bug::GrantUntold,
        Bug::SignalTwice,
        Bug::IdleCutsOwner,
        Bug::AuthFailureStaysOpen,
        Bug::CancelIgnoresGrant,
    ];

    /// The broken variants only the differential comparator catches (see
    /// `tests/differential.rs`): each changes what some reply says or when,
    /// and the core shows the difference.
    pub const DIFFERENTIAL: [Bug; 6] = [
        Bug::HandleSkipsAdvance,
        Bug::CeilingOffByOne,
        Bug::HeadroomZero,
        Bug::RaiseInKeyOrder,
        Bug::TimeoutBeforeExpiry,
        Bug::DisconnectReleasesReversed,
    ];
}
