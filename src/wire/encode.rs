//! Encoders for requests and replies. (To be written.)

use super::{Reply, Request};

/// Appends the three lines of `req` to `out`.
pub fn encode_request(_req: &Request, _out: &mut Vec<u8>) {}

/// Appends `reply` and its LF to `out`.
pub fn encode_reply(_reply: &Reply, _out: &mut Vec<u8>) {}
