//! dflockd: a lock server with strict FIFO ordering, leases, counting
//! semaphores and fencing tokens, wire-compatible with dflockd v1.16.
//!
//! Layout and reading order:
//! 1. [`wire`]: the line protocol as data; a push parser and encoders.
//! 2. [`core`]: the sans-IO transition function (locks, semaphores, leases,
//!    FIFO, two-phase, GC, stats), and its bounded introspection
//!    ([`core::introspect`]). Time and token salt are arguments.
//! 3. [`engine`]: the only door to the core: inputs as values in, effects
//!    routed out, the clock, the timer and the fence file around it.
//! 4. The fronts, which move bytes between sockets and the engine:
//!    [`tcp`] (the line protocol) and [`http`] (the REST API and SSE, with
//!    the read-only views and the `/ui` dashboard), on [`net`] (TLS,
//!    per-IP admission) and [`rt`] (the per-thread runtime); [`server`]
//!    starts the engine with both fronts and drains them.
//! 5. [`config`]: the settings table, flags, environment variables and
//!    their validation; [`logging`]: log lines and their rate limits.
//! 6. [`conformance`]: the transcript runner for `spec/conformance/`.
//! 7. [`client`]: the client library (connections, lock and semaphore
//!    handles with background renewal, CRC-32 sharding).
//!    [`cli`]: the client subcommands of `dflockd` (`lock`, `stats`,
//!    `signal`, `listen`, `top`), built on it.
//! 8. `differential` (feature `differential`): the model-versus-core
//!    comparator used by the proptest and the fuzzer.
//! 9. [`sync`]: the std/loom facade for the server's own concurrency.
//! 10. [`cluster`]: cluster mode (spec/cluster.md): Raft storage in
//!     `--raft-dir`, the member transport, the replica driver, and the
//!     engine's inputs as the replicated log.

pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conformance;
pub mod core;
#[cfg(feature = "differential")]
pub mod differential;
pub mod engine;
pub mod http;
pub mod logging;
pub mod net;
pub mod planted;
pub mod rt;
pub mod server;
#[cfg(feature = "sim")]
pub mod sim;
pub mod sync;
pub mod tcp;
pub mod wire;
