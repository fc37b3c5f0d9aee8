//! The executable specification of cluster mode (`spec/cluster.md`).
//!
//! Three parts, in reading order:
//! 1. [`replica`]: the replicated state machine every member computes from
//!    the committed log: the single-node [`crate::Machine`], a replicated
//!    clock fed by the leader's stamps, and sessions that outlive their
//!    connection (orphans, reclaimed by `stable-ref`).
//! 2. [`spec`]: the sequential specification client histories are checked
//!    against: one single node, one connection per client, time as an
//!    explicit operation.
//! 3. [`checker`]: the stateright model: members, an abstract Raft log,
//!    clients, leader crashes and depositions, and the properties of
//!    `spec/cluster.md` §8 (`cargo run -p dflockd-model -- cluster`).

pub mod checker;
pub mod replica;
pub mod spec;

pub use checker::{ClusterBug, ClusterConfig, ClusterModel};
