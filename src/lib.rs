//! dflockd: a lock server with strict FIFO ordering, leases, counting
//! semaphores and fencing tokens, wire-compatible with dflockd v1.16.
//!
//! Layout and reading order:
//! 1. [`wire`]: the line protocol as data; a push parser and encoders.
//! 2. [`core`]: the sans-IO transition function (locks, semaphores, leases,
//!    FIFO, two-phase, GC, stats). Time and token salt are arguments.
//! 3. [`server`]: the smol driver that moves bytes between sockets and the core.
//! 4. [`config`]: flags, environment variables and their validation.

pub mod config;
pub mod conformance;
pub mod core;
#[cfg(feature = "differential")]
pub mod differential;
pub mod server;
pub mod sync;
pub mod wire;
