//! The binary encoding of log entries (spec/cluster.md §3, "Encoding").
//!
//! Every member decodes every committed entry, so the encoding is on the
//! apply path of the whole cluster: JSON cost about 5% of a member's
//! driver thread at ten workers. An entry is now a tag byte, then
//! little-endian base-128 integers and length-prefixed byte strings, in a
//! fixed order per variant:
//!
//! * [`BINARY_V1`] (`0xD1`): the layout below. Entries written by earlier
//!   releases are JSON objects and start with `{`; they are still read
//!   ([`decode`] tells the two apart by that first byte). Anything else is
//!   refused by name ([`DecodeError::UnknownFormat`]).
//! * Decoding trusts nothing: every length is checked against what is
//!   left, integers are at most ten bytes and must fit in 64 bits, keys
//!   pass the wire's key rules, text must be UTF-8, and the entry must end
//!   exactly where its last field does. A damaged entry is a typed
//!   [`DecodeError`], never a panic.
//!
//! Layout after the tag: `stamp`, then the op's number and fields:
//! `0 LeaderStart fence_start salt0 salt1 orphan_ttl_ms settings`,
//! `1 Tick`, `2 Connect session`, `3 StableRef session reference`,
//! `4 Request session request`, `5 Cancel session`, `6 Disconnect
//! session`, `7 Barrier`. A request is its number and fields in the
//! order of [`Request`]'s variants and fields (a space is `0` lock, `1`
//! semaphore; an option is `0`, or `1` then the value).

use std::fmt;

use super::{LogEntry, Op};
use crate::core::Time;
use crate::wire::{Key, Request, Space};

/// The tag byte of the first binary layout.
pub const BINARY_V1: u8 = 0xD1;
/// The first byte of a JSON entry (the layout before [`BINARY_V1`]).
const JSON: u8 = b'{';

/// Why an entry's bytes are not an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes at all.
    Empty,
    /// The first byte names no layout this build reads.
    UnknownFormat(u8),
    /// The bytes end inside a field.
    Truncated,
    /// An integer longer than ten bytes or past 64 bits.
    BadInteger,
    /// An op, request or space number this layout does not define.
    UnknownTag { what: &'static str, tag: u8 },
    /// A key that breaks the wire's key rules.
    BadKey,
    /// Text that is not UTF-8.
    BadText,
    /// Bytes left after the entry's last field.
    Trailing(usize),
    /// A JSON entry (an earlier release's) that does not parse.
    Json(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty entry"),
            DecodeError::UnknownFormat(b) => write!(
                f,
                "entry format byte 0x{b:02x} is unknown (this build reads JSON entries and \
                 binary layout 0x{BINARY_V1:02x})"
            ),
            DecodeError::Truncated => f.write_str("entry ends inside a field"),
            DecodeError::BadInteger => f.write_str("integer field longer than 64 bits"),
            DecodeError::UnknownTag { what, tag } => write!(f, "unknown {what} number {tag}"),
            DecodeError::BadKey => f.write_str("key breaks the key rules"),
            DecodeError::BadText => f.write_str("text field is not UTF-8"),
            DecodeError::Trailing(n) => write!(f, "{n} bytes after the entry's last field"),
            DecodeError::Json(e) => write!(f, "JSON entry: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Encodes `entry` in the current layout ([`BINARY_V1`]).
pub fn encode(entry: &LogEntry) -> Vec<u8> {
    let mut w = Vec::with_capacity(64);
    w.push(BINARY_V1);
    uint(&mut w, entry.stamp.0);
    match &entry.op {
        Op::LeaderStart {
            fence_start,
            salt_key,
            orphan_ttl_ms,
            settings,
        } => {
            w.push(0);
            uint(&mut w, *fence_start);
            uint(&mut w, salt_key[0]);
            uint(&mut w, salt_key[1]);
            uint(&mut w, *orphan_ttl_ms);
            bytes(&mut w, settings.as_bytes());
        }
        Op::Tick => w.push(1),
        Op::Connect { session } => {
            w.push(2);
            uint(&mut w, *session);
        }
        Op::StableRef { session, reference } => {
            w.push(3);
            uint(&mut w, *session);
            bytes(&mut w, reference);
        }
        Op::Request { session, request } => {
            w.push(4);
            uint(&mut w, *session);
            encode_request(&mut w, request);
        }
        Op::Cancel { session } => {
            w.push(5);
            uint(&mut w, *session);
        }
        Op::Disconnect { session } => {
            w.push(6);
            uint(&mut w, *session);
        }
        Op::Barrier => w.push(7),
    }
    w
}

/// Decodes an entry in any layout this build reads: [`BINARY_V1`], or
/// JSON (an earlier release's entries).
pub fn decode(data: &[u8]) -> Result<LogEntry, DecodeError> {
    match data.first() {
        None => Err(DecodeError::Empty),
        Some(&BINARY_V1) => {
            let mut r = Reader(&data[1..]);
            let entry = read_entry(&mut r)?;
            if !r.0.is_empty() {
                return Err(DecodeError::Trailing(r.0.len()));
            }
            Ok(entry)
        }
        Some(&JSON) => serde_json::from_slice(data).map_err(|e| DecodeError::Json(e.to_string())),
        Some(&b) => Err(DecodeError::UnknownFormat(b)),
    }
}

fn encode_request(w: &mut Vec<u8>, req: &Request) {
    match req {
        Request::Acquire {
            space,
            key,
            timeout_s,
            limit,
            lease_s,
        } => {
            w.push(0);
            self::space(w, *space);
            bytes(w, key.as_bytes());
            uint(w, *timeout_s);
            uint(w, *limit);
            opt_uint(w, *lease_s);
        }
        Request::Release { space, key, token } => {
            w.push(1);
            self::space(w, *space);
            bytes(w, key.as_bytes());
            bytes(w, token);
        }
        Request::Renew {
            space,
            key,
            token,
            lease_s,
        } => {
            w.push(2);
            self::space(w, *space);
            bytes(w, key.as_bytes());
            bytes(w, token);
            opt_uint(w, *lease_s);
        }
        Request::Enqueue {
            space,
            key,
            limit,
            lease_s,
        } => {
            w.push(3);
            self::space(w, *space);
            bytes(w, key.as_bytes());
            uint(w, *limit);
            opt_uint(w, *lease_s);
        }
        Request::Wait {
            space,
            key,
            timeout_s,
        } => {
            w.push(4);
            self::space(w, *space);
            bytes(w, key.as_bytes());
            uint(w, *timeout_s);
        }
        Request::Stats => w.push(5),
        Request::Auth { token } => {
            w.push(6);
            bytes(w, token);
        }
        Request::Ping => w.push(7),
        Request::Listen { pattern, group } => {
            w.push(8);
            bytes(w, pattern.as_bytes());
            opt_bytes(w, group.as_deref());
        }
        Request::Unlisten { pattern, group } => {
            w.push(9);
            bytes(w, pattern.as_bytes());
            opt_bytes(w, group.as_deref());
        }
        Request::Signal { channel, payload } => {
            w.push(10);
            bytes(w, channel.as_bytes());
            bytes(w, payload);
        }
        Request::Barrier => w.push(11),
        Request::StableRef { reference } => {
            w.push(12);
            bytes(w, reference);
        }
    }
}

fn read_entry(r: &mut Reader<'_>) -> Result<LogEntry, DecodeError> {
    let stamp = Time(r.uint()?);
    let op = match r.byte()? {
        0 => Op::LeaderStart {
            fence_start: r.uint()?,
            salt_key: [r.uint()?, r.uint()?],
            orphan_ttl_ms: r.uint()?,
            settings: String::from_utf8(r.bytes()?.to_vec()).map_err(|_| DecodeError::BadText)?,
        },
        1 => Op::Tick,
        2 => Op::Connect { session: r.uint()? },
        3 => Op::StableRef {
            session: r.uint()?,
            reference: r.bytes()?.to_vec(),
        },
        4 => Op::Request {
            session: r.uint()?,
            request: read_request(r)?,
        },
        5 => Op::Cancel { session: r.uint()? },
        6 => Op::Disconnect { session: r.uint()? },
        7 => Op::Barrier,
        tag => return Err(DecodeError::UnknownTag { what: "op", tag }),
    };
    Ok(LogEntry { stamp, op })
}

fn read_request(r: &mut Reader<'_>) -> Result<Request, DecodeError> {
    Ok(match r.byte()? {
        0 => Request::Acquire {
            space: r.space()?,
            key: r.key()?,
            timeout_s: r.uint()?,
            limit: r.uint()?,
            lease_s: r.opt_uint()?,
        },
        1 => Request::Release {
            space: r.space()?,
            key: r.key()?,
            token: r.bytes()?.into(),
        },
        2 => Request::Renew {
            space: r.space()?,
            key: r.key()?,
            token: r.bytes()?.into(),
            lease_s: r.opt_uint()?,
        },
        3 => Request::Enqueue {
            space: r.space()?,
            key: r.key()?,
            limit: r.uint()?,
            lease_s: r.opt_uint()?,
        },
        4 => Request::Wait {
            space: r.space()?,
            key: r.key()?,
            timeout_s: r.uint()?,
        },
        5 => Request::Stats,
        6 => Request::Auth {
            token: r.bytes()?.into(),
        },
        7 => Request::Ping,
        8 => Request::Listen {
            pattern: r.key()?,
            group: r.opt_bytes()?,
        },
        9 => Request::Unlisten {
            pattern: r.key()?,
            group: r.opt_bytes()?,
        },
        10 => Request::Signal {
            channel: r.key()?,
            payload: r.bytes()?.into(),
        },
        11 => Request::Barrier,
        12 => Request::StableRef {
            reference: r.bytes()?.into(),
        },
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "request",
                tag,
            })
        }
    })
}

/// An unsigned integer, seven bits a byte, least significant first.
fn uint(w: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        w.push((v as u8) | 0x80);
        v >>= 7;
    }
    w.push(v as u8);
}

fn bytes(w: &mut Vec<u8>, b: &[u8]) {
    uint(w, b.len() as u64);
    w.extend_from_slice(b);
}

fn opt_uint(w: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => w.push(0),
        Some(v) => {
            w.push(1);
            uint(w, v);
        }
    }
}

fn opt_bytes(w: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => w.push(0),
        Some(b) => {
            w.push(1);
            bytes(w, b);
        }
    }
}

fn space(w: &mut Vec<u8>, s: Space) {
    w.push(match s {
        Space::Lock => 0,
        Space::Sem => 1,
    });
}

/// What is left of an entry's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.0.split_first().ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    fn uint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            // The tenth byte holds the 64th bit only.
            if i == 9 && bits > 1 {
                return Err(DecodeError::BadInteger);
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadInteger)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.uint()?;
        // Checked against what is left before anything is allocated.
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.0.len())
            .ok_or(DecodeError::Truncated)?;
        let (b, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(b)
    }

    fn opt_uint(&mut self) -> Result<Option<u64>, DecodeError> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.uint()?)),
            tag => Err(DecodeError::UnknownTag {
                what: "option",
                tag,
            }),
        }
    }

    fn opt_bytes(&mut self) -> Result<Option<Box<[u8]>>, DecodeError> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?.into())),
            tag => Err(DecodeError::UnknownTag {
                what: "option",
                tag,
            }),
        }
    }

    fn space(&mut self) -> Result<Space, DecodeError> {
        match self.byte()? {
            0 => Ok(Space::Lock),
            1 => Ok(Space::Sem),
            tag => Err(DecodeError::UnknownTag { what: "space", tag }),
        }
    }

    fn key(&mut self) -> Result<Key, DecodeError> {
        Key::new(self.bytes()?).map_err(|_| DecodeError::BadKey)
    }
}
