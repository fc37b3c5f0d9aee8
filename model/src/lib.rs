//! The executable specification of dflockd (`spec/semantics.md`).
//!
//! Two halves. [`Machine`] is a slow, obviously-correct reference lock
//! manager: the transition function the production core (`src/core`) must
//! agree with, reply for reply, in the differential tests. [`checker`] wraps
//! it in a stateright model with bounded clients, keys and time, and checks
//! the properties named in `spec/semantics.md` §11 (`cargo run -p
//! dflockd-model -- check`, or `-- explore` for stateright's web explorer).
//!
//! Reading order:
//! 1. [`types`]: the configuration, the requests ([`Op`]) and outputs ([`Output`]).
//! 2. [`machine`]: the state and every rule, each citing its section of the spec.
//! 3. [`token`] and [`stats`]: the token format and the `stats` snapshot.
//! 4. [`checker`]: the model, its actions and the properties.
//! 5. [`monitor`]: the safety properties from the clients' side, for traces
//!    of any implementation (the differential tests watch the core with it).
//! 6. [`cluster`]: cluster mode: the replicated state machine around the
//!    same [`Machine`], and a model of it across leader failures.
//!
//! Driving the machine (what a differential test must respect):
//! * time is in milliseconds and never goes back; every input except
//!   [`Machine::connect`] first advances to its `now`;
//! * one request at a time per connection: no request from a connection
//!   that is blocked ([`Machine::is_blocked`]), closed by an
//!   [`Output::Close`], or unknown; after a `Close` the driver calls
//!   [`Machine::disconnect`];
//! * replies to one connection come in request order; the order of outputs
//!   for *different* connections within one call is the order things
//!   happened (a hand-off grant before the reply to the release that caused
//!   it; draining errors in arrival order; disconnect releases in token
//!   order), which a comparator may or may not choose to hold the core to.
//!
//! The crate is self-contained on purpose: it does not depend on the root
//! crate, on smol, or on any I/O, so nothing shared can hide a bug from the
//! comparison.

pub mod checker;
pub mod cluster;
pub mod machine;
pub mod monitor;
pub mod stats;
pub mod token;
pub mod types;

pub use machine::{Cause, Event, Machine};
pub use stats::StatsView;
pub use types::{Bug, Config, Op, Output, Space, Why};
