//! dflockd: a lock server with strict FIFO ordering, leases, counting
//! semaphores and fencing tokens, wire-compatible with dflockd v1.16.
//!
//! Layout and reading order:
//! 1. [`wire`]: the line protocol as data; a push parser and encoders.
//! 2. [`core`]: the sans-IO transition function (locks, semaphores, leases,
//!    FIFO, two-phase, GC, stats), and its bounded introspection
//!    ([`core::introspect`]). Time and token salt are arguments.
//! 3. [`server`]: the smol driver that moves bytes between sockets and the core.
//!    [`http`]: the HTTP REST front, another driver of the same core, with
//!    the read-only views and the `/ui` dashboard.
//! 4. [`config`]: the settings table, flags, environment variables and
//!    their validation; [`logging`]: log lines and their rate limits.
//! 5. [`conformance`]: the transcript runner for `spec/conformance/`.
//! 6. [`client`]: the client library (connections, lock and semaphore
//!    handles with background renewal, CRC-32 sharding).
//!    [`cli`]: the client subcommands of `dflockd` (`lock`, `stats`,
//!    `signal`, `listen`, `top`), built on it.
//! 7. `differential` (feature `differential`): the model-versus-core
//!    comparator used by the proptest and the fuzzer.
//! 8. [`sync`]: the std/loom facade for the server's own concurrency.

pub mod cli;
pub mod client;
pub mod config;
pub mod conformance;
pub mod core;
#[cfg(feature = "differential")]
pub mod differential;
pub mod http;
pub mod logging;
pub mod server;
pub mod sync;
pub mod wire;
