//! The sequential specification the cluster's client-visible histories are
//! checked against: the single-node [`Machine`], one connection per client
//! for the whole run, and time as an explicit operation.
//!
//! Time is an operation because the cluster chooses it: the leader stamps
//! the replicated clock into the log, and leases run on that clock. The
//! checker records an [`SpecOp::Advance`] on a separate "clock" thread at
//! the moment a stamp commits, so a linearization must place every client
//! operation between the clock steps it was concurrent with. A stamp below
//! the clock is an operation the specification refuses
//! ([`SpecRet::WentBack`]): a single node's time never goes back.
//!
//! A client keeps one connection across failovers because it reclaims its
//! session with `stable-ref`; in the configurations checked for
//! linearizability the orphan TTL is longer than the horizon, so a session
//! only ends when the client ends it. Losing a session is therefore never
//! single-node behaviour, and releasing one early is caught.

use stateright::semantics::SequentialSpec;

use super::replica::ClientOp;
use crate::machine::Machine;
use crate::types::{Config, Output};

/// An operation of the specification.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SpecOp {
    /// The clock moves to `to_ms` (a committed stamp).
    Advance { to_ms: u64 },
    /// Client `client` sends `op` on its connection.
    Request { client: u8, op: ClientOp },
}

/// What an operation returns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SpecRet {
    /// A clock step that the specification accepts.
    Done,
    /// A clock step backwards: never a valid return.
    WentBack,
    /// The reply line to a request.
    Reply(String),
}

/// A single node serving every client on one connection each.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SingleNode {
    machine: Machine,
    now_ms: u64,
    /// The connection of client `i`.
    conns: Vec<u64>,
    limit: u64,
}

impl SingleNode {
    pub fn new(cfg: Config, limit: u64, clients: u8) -> SingleNode {
        let mut machine = Machine::new(cfg, 0);
        let conns = (0..clients).map(|_| machine.connect(0)).collect();
        SingleNode {
            machine,
            now_ms: 0,
            conns,
            limit,
        }
    }
}

impl SequentialSpec for SingleNode {
    type Op = SpecOp;
    type Ret = SpecRet;

    fn invoke(&mut self, op: &SpecOp) -> SpecRet {
        match op {
            SpecOp::Advance { to_ms } => {
                if *to_ms < self.now_ms {
                    return SpecRet::WentBack;
                }
                self.now_ms = *to_ms;
                self.machine.advance(*to_ms);
                SpecRet::Done
            }
            SpecOp::Request { client, op } => {
                let conn = self.conns[*client as usize];
                let out = self.machine.handle(self.now_ms, conn, op.to_op(self.limit));
                // Every model request is non-blocking: exactly one reply.
                let line = out.into_iter().find_map(|o| match o {
                    Output::Reply { conn: c, line } if c == conn => Some(line),
                    _ => None,
                });
                SpecRet::Reply(line.expect("a non-blocking request is answered"))
            }
        }
    }
}
