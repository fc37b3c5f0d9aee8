//! Tests of the executable specification, one binary, by boundary:
//!
//! * `script`: a tiny transcript language that drives a [`Machine`] on a
//!   virtual clock and compares every output (the `check` helper);
//! * `edge_cases`: table-driven transcripts for the rules of
//!   `spec/semantics.md` and the upstream edge cases (reference §12);
//! * `check`: the stateright model: the CI configuration passes every
//!   property with a pinned state count, and each deliberately broken
//!   machine is caught by the property meant to catch it;
//! * `monitor`: the client-side monitor of §11 fires on broken machines;
//! * `cluster`: the cluster-mode model (`spec/cluster.md` §8), the same
//!   way: two configurations pinned, every planted bug caught.
//!
//! [`Machine`]: dflockd_model::Machine

mod check;
mod cluster;
mod edge_cases;
mod monitor;
mod script;
