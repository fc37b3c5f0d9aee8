//! The engine's inputs as values.
//!
//! Everything that can change the lock manager's state reaches it as one
//! [`Input`] for one connection, applied at one instant: that triple is an
//! [`Entry`]. Inputs are plain data with `serde` derives because the
//! replicated mode logs them before they are applied and the simulator
//! replays them (spec/cluster.md §3): two engines that apply the same
//! entries in the same order from the same configuration give the same
//! effects. Nothing else changes the state; everything around the engine
//! only moves bytes and reports what the transport saw.
//!
//! A deserialized entry is trusted as the engine's own: it comes from this
//! server's log, written by a member that decoded the request itself. Bytes
//! from a client never take this path; they go through `wire::decode_request`.

use serde::{Deserialize, Serialize};

use crate::core::{ConnId, Time};
use crate::wire::{ParseError, Request};

/// Which front a connection came through. The core does not care (a TCP
/// connection and an HTTP session are both connections); the engine counts
/// them per transport for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    /// A connection on the line-protocol port.
    Tcp,
    /// An HTTP session, an SSE stream's hidden session, or the connection
    /// of one HTTP publish.
    Http,
}

/// One input for one connection (or, for [`Input::Tick`] and
/// [`Input::Drain`], for the engine as a whole).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A connection opens; the engine chooses its id (in the replicated
    /// mode the leader does, spec/cluster.md §3 rule 3).
    Connect { transport: Transport },
    /// A decoded request.
    Request(Request),
    /// Bytes the codec rejected, with why (an overlong line is fatal).
    Invalid(ParseError),
    /// The connection's read deadline passed (protocol.md §2.4): `partial`
    /// when part of a request was buffered, otherwise it sat idle. What that
    /// means (answer `error` and close, or keep an owner) is the core's
    /// decision.
    ReadDeadline { partial: bool },
    /// Withdraw the connection's blocked request (semantics §9.1): the HTTP
    /// front's client of a long poll went away.
    Cancel,
    /// The connection went away.
    Disconnect,
    /// The driver wrote this many of the connection's signal pushes.
    PushesWritten(u32),
    /// Time passed: process what is due.
    Tick,
    /// Graceful shutdown begins (protocol.md §2.6).
    Drain,
}

impl Input {
    /// Whether the input belongs to one connection (and so is ignored once
    /// that connection is gone).
    pub fn has_conn(&self) -> bool {
        !matches!(self, Input::Tick | Input::Drain)
    }
}

/// An input stamped with the instant it applies at and the connection it
/// belongs to ([`ConnId::ENGINE`] for `Tick` and `Drain`; the new
/// connection's id for `Connect`). What the replicated log carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at: Time,
    pub conn: ConnId,
    pub input: Input,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Key, Space};

    /// Every kind of input survives a round trip through JSON, the way the
    /// replicated log will carry it.
    #[test]
    fn entries_round_trip_through_serde() {
        let key = Key::new(b"k\xff").expect("key");
        let inputs = vec![
            Input::Connect {
                transport: Transport::Tcp,
            },
            Input::Connect {
                transport: Transport::Http,
            },
            Input::Request(Request::Acquire {
                space: Space::Sem,
                key: key.clone(),
                timeout_s: 5,
                limit: 3,
                lease_s: Some(30),
            }),
            Input::Request(Request::Release {
                space: Space::Lock,
                key: key.clone(),
                token: b"0123".to_vec().into(),
            }),
            Input::Request(Request::Listen {
                pattern: Key::new(b"a.*").expect("key"),
                group: Some(b"g".to_vec().into()),
            }),
            Input::Request(Request::Signal {
                channel: key,
                payload: b"p q".to_vec().into(),
            }),
            Input::Request(Request::Stats),
            Input::Invalid(ParseError::LineTooLong),
            Input::ReadDeadline { partial: true },
            Input::Cancel,
            Input::Disconnect,
            Input::PushesWritten(7),
            Input::Tick,
            Input::Drain,
        ];
        for (i, input) in inputs.into_iter().enumerate() {
            let entry = Entry {
                at: Time(1000 + i as u64),
                conn: ConnId(i as u64),
                input,
            };
            let text = serde_json::to_string(&entry).expect("serializes");
            let back: Entry = serde_json::from_str(&text).expect("deserializes");
            assert_eq!(back, entry, "{text}");
        }
    }

    /// A key from a log is held to the key rules like one from the wire.
    #[test]
    fn invalid_keys_do_not_deserialize() {
        let bad = r#"{"at":0,"conn":1,"input":{"Request":{"Acquire":{"space":"Lock","key":[32],"timeout_s":0,"limit":1,"lease_s":null}}}}"#;
        assert!(serde_json::from_str::<Entry>(bad).is_err());
    }
}
