//! Push parser for requests and replies. (To be written.)

use super::{ParseError, Reply, Request};

/// Result of [`decode_request`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The buffer holds no complete request yet; read more bytes.
    NeedMore,
    /// One complete, valid request occupying the first `consumed` bytes.
    Request { req: Request, consumed: usize },
    /// One complete but malformed request occupying the first `consumed`
    /// bytes (or, for [`ParseError::LineTooLong`], everything seen so far).
    Invalid { error: ParseError, consumed: usize },
}

/// Decodes the first request in `buf`.
pub fn decode_request(_buf: &[u8]) -> Decoded {
    Decoded::NeedMore
}

/// Result of [`decode_reply`].
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyDecoded {
    NeedMore,
    Reply {
        reply: Reply,
        consumed: usize,
    },
    /// A pushed `sig <channel> <payload>` line.
    Push {
        channel: Vec<u8>,
        payload: Vec<u8>,
        consumed: usize,
    },
    /// A complete line that is not a reply this protocol defines.
    Invalid {
        consumed: usize,
    },
}

/// Decodes the first reply line in `buf` (for clients and the bench).
pub fn decode_reply(_buf: &[u8]) -> ReplyDecoded {
    ReplyDecoded::NeedMore
}
