//! Driver bugs planted on purpose, so that the simulator (`src/sim`) can
//! show it catches them, as the model's broken variants (`Bug` in
//! `dflockd-model`) show the properties can fail. Each is one line at its
//! site, guarded by [`is`], which is a constant `false` unless the crate is
//! built with the `sim` feature, and even then `false` until a test or
//! `dflockd-sim --bug NAME` sets one on its thread.

/// The bugs that can be planted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bug {
    #[default]
    None,
    /// A mailbox push does not wake its connection's task: a grant handed
    /// over by another connection's release waits for some other wake-up.
    LostWakeup,
    /// A connection the core closes drops the replies buffered before the
    /// close instead of writing them (`Effect::Close`'s promise broken).
    ReplyDroppedOnClose,
    /// The engine does not wake its timer task when the next deadline
    /// moves earlier: a lease expiry or a waiter's timeout fires late, or
    /// never.
    DeadlineNotRearmed,
    /// HTTP: a long poll (an acquire or wait blocked in the core) ignores
    /// the grant delivered to its session's mailbox and keeps waiting: the
    /// request is never answered.
    LongPollLost,
    /// HTTP: an SSE stream that gathers several waiting pushes into one
    /// body chunk keeps only the first of them (the others are reported
    /// written, and lost).
    SseChunkDrop,
    /// HTTP: the idle sweeper forgets an expired session without
    /// disconnecting its core connection: its holdings and waiters stay.
    SweepKeepsHoldings,
    /// Cluster: a new leader adds its own uptime to the last stamp when it
    /// fixes its clock (spec/cluster.md §4): the replicated clock jumps
    /// ahead of real time and leases end early.
    ClockAhead,
    /// Cluster: a leader logs the orphan TTL in seconds where milliseconds
    /// are due (spec/cluster.md §5): orphans are released at once, before
    /// their clients can reclaim them.
    OrphanTtlUnit,
    /// Cluster: the leader applies (and so answers) its new entries when
    /// it appends them, before they are committed (spec/cluster.md §3
    /// rule 2).
    ReplyBeforeCommit,
    /// Cluster: a new leader starts its clock from zero instead of the
    /// last stamp (spec/cluster.md §4); its stamps fall below the
    /// replicated clock.
    ClockRestart,
}

impl Bug {
    pub const ALL: [Bug; 10] = [
        Bug::LostWakeup,
        Bug::ReplyDroppedOnClose,
        Bug::DeadlineNotRearmed,
        Bug::LongPollLost,
        Bug::SseChunkDrop,
        Bug::SweepKeepsHoldings,
        Bug::ClockAhead,
        Bug::OrphanTtlUnit,
        Bug::ReplyBeforeCommit,
        Bug::ClockRestart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::None => "none",
            Bug::LostWakeup => "lost-wakeup",
            Bug::ReplyDroppedOnClose => "reply-dropped-on-close",
            Bug::DeadlineNotRearmed => "deadline-not-rearmed",
            Bug::LongPollLost => "long-poll-lost",
            Bug::SseChunkDrop => "sse-chunk-drop",
            Bug::SweepKeepsHoldings => "sweep-keeps-holdings",
            Bug::ClockAhead => "cluster-clock-ahead",
            Bug::OrphanTtlUnit => "cluster-orphan-ttl-unit",
            Bug::ReplyBeforeCommit => "cluster-reply-before-commit",
            Bug::ClockRestart => "cluster-clock-restart",
        }
    }

    pub fn from_name(s: &str) -> Option<Bug> {
        [Bug::None]
            .into_iter()
            .chain(Bug::ALL)
            .find(|b| b.name() == s)
    }
}

#[cfg(feature = "sim")]
thread_local! {
    static PLANTED: std::cell::Cell<Bug> = const { std::cell::Cell::new(Bug::None) };
}

/// Plants `bug` on this thread (`Bug::None` removes it).
#[cfg(feature = "sim")]
pub fn set(bug: Bug) {
    PLANTED.with(|p| p.set(bug));
}

/// Whether `bug` is planted on this thread.
#[inline]
pub fn is(bug: Bug) -> bool {
    #[cfg(feature = "sim")]
    {
        PLANTED.with(|p| p.get() == bug)
    }
    #[cfg(not(feature = "sim"))]
    {
        let _ = bug;
        false
    }
}
