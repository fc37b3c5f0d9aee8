//! The executable specification of dflockd (`spec/semantics.md`).
//!
//! Two halves. [`Machine`] is a slow, obviously-correct reference lock
//! manager: the transition function the production core (`src/core`) must
//! agree with, reply for reply, in the differential tests. [`checker`] wraps
//! it in a stateright model with bounded clients, keys and time, and checks
//! the properties named in `spec/semantics.md` §11.
//!
//! Reading order:
//! 1. [`types`]: the configuration, the requests ([`Op`]) and outputs ([`Output`]).
//! 2. [`machine`]: the state and every rule, each citing its section of the spec.
//! 3. [`token`] and [`stats`]: the token format and the `stats` snapshot.
//! 4. [`checker`]: the model, its actions and the properties.
//!
//! The crate is self-contained on purpose: it does not depend on the root
//! crate, on smol, or on any I/O, so nothing shared can hide a bug from the
//! comparison.

pub mod checker;
pub mod machine;
pub mod stats;
pub mod token;
pub mod types;

pub use machine::{Cause, Event, Machine};
pub use stats::StatsView;
pub use types::{Bug, Config, Op, Output, Space};
