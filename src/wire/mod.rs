//! The TCP line protocol as pure data: request and reply types, a push
//! parser for requests ([`decode_request`]), and encoders for requests and
//! replies. Nothing here touches a socket, a clock or the core.
//!
//! Framing (see `spec/protocol.md`): every request is exactly three
//! LF-terminated lines (`<cmd>\n<key>\n<arg>\n`); every reply is one
//! LF-terminated line. Trailing CRs are stripped from each request line.
//! A line may hold at most [`MAX_LINE_BYTES`] bytes before its LF (counting
//! any CRs), except the third line of `auth` and `signal`, which may hold
//! [`MAX_PAYLOAD_BYTES`].
//!
//! The decoder never panics on any input: running out of bytes is
//! [`Decoded::NeedMore`], a malformed request is [`Decoded::Invalid`] with a
//! typed [`ParseError`] and the number of bytes it consumed, so the caller can
//! answer `error` and carry on with the next request.

mod decode;
mod encode;

pub use decode::{
    decode_reply, decode_request, listen_request, max_signal_payload, signal_request, Decoded,
    ReplyDecoded, MAX_REPLY_LINE_BYTES,
};
pub(crate) use encode::decimal;
pub use encode::{encode_push, encode_reply, encode_request};

/// Longest request line accepted, in bytes before the LF (CRs included).
pub const MAX_LINE_BYTES: usize = 256;
/// Longest third line of `auth` and `signal`, in bytes before the LF.
pub const MAX_PAYLOAD_BYTES: usize = 65_536;
/// Largest number of seconds accepted in any timeout or lease field
/// (`i64::MAX` nanoseconds, as upstream).
pub const MAX_SECONDS: u64 = 9_223_372_036;

/// Which key space a keyed command addresses. Locks and semaphores live in
/// separate key spaces (Decision D5): `l k` and `sl k` never meet.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Space {
    Lock,
    Sem,
}

/// A validated key, channel or pattern: 1..=256 bytes, no space, tab, CR or
/// LF. Any other byte (including non-UTF-8) is allowed (Decision D15).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(into = "Vec<u8>", try_from = "Vec<u8>")]
pub struct Key(Box<[u8]>);

impl From<Key> for Vec<u8> {
    fn from(k: Key) -> Vec<u8> {
        k.0.into_vec()
    }
}

/// Deserializing checks the key rules, as decoding does.
impl TryFrom<Vec<u8>> for Key {
    type Error = &'static str;
    fn try_from(bytes: Vec<u8>) -> Result<Key, &'static str> {
        Key::new(&bytes).map_err(|_| "not a valid key: 1 to 256 bytes, no space, tab, CR or LF")
    }
}

impl Key {
    /// Validates `bytes` as a key.
    pub fn new(bytes: &[u8]) -> Result<Key, ParseError> {
        if bytes.is_empty() || bytes.len() > MAX_LINE_BYTES {
            return Err(ParseError::BadKey);
        }
        if bytes
            .iter()
            .any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Err(ParseError::BadKey);
        }
        Ok(Key(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A fencing token: `<16 hex fence><16 hex salt>` (Decision D7). The fence is
/// a server-wide counter bumped on every grant, so tokens compare in grant
/// order; the salt makes tokens unguessable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token {
    pub fence: u64,
    pub salt: u64,
}

impl Token {
    /// Parses exactly 32 lowercase hex digits. Anything else is not a token
    /// this server could have issued.
    pub fn parse(bytes: &[u8]) -> Option<Token> {
        if bytes.len() != 32 {
            return None;
        }
        let mut words = [0u64; 2];
        for (i, b) in bytes.iter().enumerate() {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return None,
            };
            words[i / 16] = (words[i / 16] << 4) | u64::from(d);
        }
        Some(Token {
            fence: words[0],
            salt: words[1],
        })
    }

    /// Writes the 32 lowercase hex digits.
    pub fn write_hex(&self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for word in [self.fence, self.salt] {
            for shift in (0..16).rev() {
                out.push(HEX[((word >> (shift * 4)) & 0xf) as usize]);
            }
        }
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.fence, self.salt)
    }
}

/// One decoded request. Lock commands are the semaphore commands with
/// `space: Space::Lock` and a limit of 1.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Request {
    /// `l key T [L]` / `sl key T N [L]`
    Acquire {
        space: Space,
        key: Key,
        timeout_s: u64,
        limit: u64,
        lease_s: Option<u64>,
    },
    /// `r key TOK` / `sr key TOK`. The token is the whole trimmed third line.
    Release {
        space: Space,
        key: Key,
        token: Box<[u8]>,
    },
    /// `n key TOK [L]` / `sn key TOK [L]`
    Renew {
        space: Space,
        key: Key,
        token: Box<[u8]>,
        lease_s: Option<u64>,
    },
    /// `e key [L]` / `se key N [L]`
    Enqueue {
        space: Space,
        key: Key,
        limit: u64,
        lease_s: Option<u64>,
    },
    /// `w key T` / `sw key T`
    Wait {
        space: Space,
        key: Key,
        timeout_s: u64,
    },
    /// `stats`
    Stats,
    /// `auth _ TOKEN` (token trimmed of surrounding whitespace)
    Auth { token: Box<[u8]> },
    /// `ping`
    Ping,
    /// `listen pattern [group]`
    Listen {
        pattern: Key,
        group: Option<Box<[u8]>>,
    },
    /// `unlisten pattern [group]`
    Unlisten {
        pattern: Key,
        group: Option<Box<[u8]>>,
    },
    /// `signal channel payload`
    Signal { channel: Key, payload: Box<[u8]> },
    /// `barrier`: cluster mode's linearizable no-op (spec/cluster.md §7).
    Barrier,
    /// `stable-ref REF`: tags the connection with a client-chosen
    /// reference of 1-64 printable ASCII characters (spec/cluster.md §5).
    StableRef { reference: Box<[u8]> },
}

/// Longest `stable-ref` reference.
pub const MAX_STABLE_REF: usize = 64;

/// Why a request was rejected. The numbers are upstream's internal protocol
/// error codes; on the wire every one of them is just `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ParseError {
    /// 3: unknown command.
    UnknownCommand,
    /// 4: a field that must be an integer is not one.
    NotAnInteger,
    /// 5: empty key, key with whitespace, or a wildcard where a literal channel is required.
    BadKey,
    /// 6: negative or too large timeout.
    BadTimeout,
    /// 7: empty token.
    EmptyToken,
    /// 8: wrong number of fields; blank or oversize signal payload.
    BadArgCount,
    /// 9: lease ≤ 0 or too large.
    BadLease,
    /// 12: a line longer than its limit. Fatal: the connection is closed.
    LineTooLong,
    /// 13: semaphore limit ≤ 0.
    BadLimit,
}

impl ParseError {
    /// Upstream's numeric protocol error code (never sent on the wire).
    pub fn code(self) -> u8 {
        match self {
            ParseError::UnknownCommand => 3,
            ParseError::NotAnInteger => 4,
            ParseError::BadKey => 5,
            ParseError::BadTimeout => 6,
            ParseError::EmptyToken => 7,
            ParseError::BadArgCount => 8,
            ParseError::BadLease => 9,
            ParseError::LineTooLong => 12,
            ParseError::BadLimit => 13,
        }
    }

    /// A short description for log lines (spec/protocol.md §5.4's table).
    pub fn reason(self) -> &'static str {
        match self {
            ParseError::UnknownCommand => "unknown command",
            ParseError::NotAnInteger => "not an integer",
            ParseError::BadKey => "invalid key or channel",
            ParseError::BadTimeout => "timeout out of range",
            ParseError::EmptyToken => "empty token",
            ParseError::BadArgCount => "wrong field count or bad payload",
            ParseError::BadLease => "lease out of range",
            ParseError::LineTooLong => "line too long",
            ParseError::BadLimit => "limit out of range",
        }
    }

    /// Whether the connection must be closed after answering `error`
    /// (Decision D1: only an overlong line is fatal).
    pub fn is_fatal(self) -> bool {
        matches!(self, ParseError::LineTooLong)
    }
}

/// One reply line (without its LF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `ok`
    Ok,
    /// `ok TOK L`: a grant from `l`, `sl`, `w`, `sw`.
    Granted { token: Token, lease_s: u64 },
    /// `acquired TOK L`: an immediate grant from `e`, `se`.
    Acquired { token: Token, lease_s: u64 },
    /// `ok N`: the new lease of `n`/`sn`, or the delivery count of `signal`.
    OkInt(u64),
    /// `ok <json>`: the `stats` snapshot, one line of JSON.
    Stats(String),
    /// A status with no fields (`queued`, `timeout`, `error`, `error_*`).
    Status(Status),
    /// `error_not_leader` or `error_not_leader <host:port>`: the server is
    /// a cluster member that is not the leader and refuses the request;
    /// `leader` is the client address of the member to ask instead, when
    /// the server knows it. Cluster mode only: a single-node server never
    /// sends it (protocol.md §4).
    NotLeader { leader: Option<String> },
}

/// The status word of [`Reply::NotLeader`]. It is not in [`Status`]
/// because it may carry an address.
pub const NOT_LEADER: &str = "error_not_leader";

/// Every bare status word a reply can carry. The order and spelling are the
/// protocol's; `spec/protocol.md` lists the same set (a test checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Queued,
    Timeout,
    Error,
    ErrorMaxLocks,
    ErrorMaxWaiters,
    ErrorLimitMismatch,
    ErrorAlreadyEnqueued,
    ErrorNotEnqueued,
    ErrorLeaseExpired,
    ErrorAuth,
    ErrorDraining,
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::Queued,
        Status::Timeout,
        Status::Error,
        Status::ErrorMaxLocks,
        Status::ErrorMaxWaiters,
        Status::ErrorLimitMismatch,
        Status::ErrorAlreadyEnqueued,
        Status::ErrorNotEnqueued,
        Status::ErrorLeaseExpired,
        Status::ErrorAuth,
        Status::ErrorDraining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Timeout => "timeout",
            Status::Error => "error",
            Status::ErrorMaxLocks => "error_max_locks",
            Status::ErrorMaxWaiters => "error_max_waiters",
            Status::ErrorLimitMismatch => "error_limit_mismatch",
            Status::ErrorAlreadyEnqueued => "error_already_enqueued",
            Status::ErrorNotEnqueued => "error_not_enqueued",
            Status::ErrorLeaseExpired => "error_lease_expired",
            Status::ErrorAuth => "error_auth",
            Status::ErrorDraining => "error_draining",
        }
    }
}

/// The command words of the protocol, in the order `spec/protocol.md`
/// lists them (a test checks the two agree).
pub const COMMANDS: [&str; 18] = [
    "l",
    "r",
    "n",
    "e",
    "w",
    "sl",
    "sr",
    "sn",
    "se",
    "sw",
    "stats",
    "auth",
    "ping",
    "listen",
    "unlisten",
    "signal",
    "barrier",
    "stable-ref",
];
