//! Encoders for requests (clients, the bench, tests) and replies (the
//! server).
//!
//! Each encoder appends the canonical form to a caller-owned `Vec<u8>` and
//! allocates nothing else, so the server can reuse one output buffer per
//! connection. Canonical means: single spaces between fields, LF line ends,
//! optional fields omitted when `None`, integers in plain decimal, and `_`
//! on the ignored key line of `stats`, `ping` and `auth` (upstream's
//! convention). [`super::decode_request`] and [`super::decode_reply`] read
//! these forms back to the same values; the round trip is a property test.
//!
//! The encoders do not validate: a value that could not have come out of
//! the decoder (a token containing an LF, a lock request with a limit other
//! than 1) is written as given, and it is the caller's job not to build one.

use super::{Reply, Request, Space};

/// Appends the three lines of `req` to `out`.
///
/// Lock-space `Acquire` and `Enqueue` are written as `l` and `e`, which
/// carry no limit field; their limit is always 1 and is not written.
pub fn encode_request(req: &Request, out: &mut Vec<u8>) {
    match req {
        Request::Acquire {
            space,
            key,
            timeout_s,
            limit,
            lease_s,
        } => {
            head(out, pick(*space, "l", "sl"), key.as_bytes());
            push_u64(out, *timeout_s);
            if *space == Space::Sem {
                out.push(b' ');
                push_u64(out, *limit);
            }
            push_lease(out, *lease_s, true);
        }
        Request::Release { space, key, token } => {
            head(out, pick(*space, "r", "sr"), key.as_bytes());
            out.extend_from_slice(token);
        }
        Request::Renew {
            space,
            key,
            token,
            lease_s,
        } => {
            head(out, pick(*space, "n", "sn"), key.as_bytes());
            out.extend_from_slice(token);
            push_lease(out, *lease_s, true);
        }
        Request::Enqueue {
            space,
            key,
            limit,
            lease_s,
        } => {
            head(out, pick(*space, "e", "se"), key.as_bytes());
            let sem = *space == Space::Sem;
            if sem {
                push_u64(out, *limit);
            }
            // `e` with no lease is an empty third line.
            push_lease(out, *lease_s, sem);
        }
        Request::Wait {
            space,
            key,
            timeout_s,
        } => {
            head(out, pick(*space, "w", "sw"), key.as_bytes());
            push_u64(out, *timeout_s);
        }
        Request::Stats => head(out, "stats", b"_"),
        Request::Ping => head(out, "ping", b"_"),
        Request::Barrier => head(out, "barrier", b"_"),
        Request::StableRef { reference } => head(out, "stable-ref", reference),
        Request::Auth { token } => {
            head(out, "auth", b"_");
            out.extend_from_slice(token);
        }
        Request::Listen { pattern, group } => {
            head(out, "listen", pattern.as_bytes());
            out.extend_from_slice(group.as_deref().unwrap_or_default());
        }
        Request::Unlisten { pattern, group } => {
            head(out, "unlisten", pattern.as_bytes());
            out.extend_from_slice(group.as_deref().unwrap_or_default());
        }
        Request::Signal { channel, payload } => {
            head(out, "signal", channel.as_bytes());
            out.extend_from_slice(payload);
        }
    }
    out.push(b'\n');
}

/// Appends `reply` and its LF to `out`.
pub fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Ok => out.extend_from_slice(b"ok"),
        Reply::Granted { token, lease_s } => {
            out.extend_from_slice(b"ok ");
            token.write_hex(out);
            out.push(b' ');
            push_u64(out, *lease_s);
        }
        Reply::Acquired { token, lease_s } => {
            out.extend_from_slice(b"acquired ");
            token.write_hex(out);
            out.push(b' ');
            push_u64(out, *lease_s);
        }
        Reply::OkInt(n) => {
            out.extend_from_slice(b"ok ");
            push_u64(out, *n);
        }
        Reply::Stats(json) => {
            out.extend_from_slice(b"ok ");
            out.extend_from_slice(json.as_bytes());
        }
        Reply::Status(status) => out.extend_from_slice(status.as_str().as_bytes()),
        Reply::NotLeader { leader } => {
            out.extend_from_slice(super::NOT_LEADER.as_bytes());
            if let Some(addr) = leader {
                out.push(b' ');
                out.extend_from_slice(addr.as_bytes());
            }
        }
    }
    out.push(b'\n');
}

/// Appends the push line `sig <channel> <payload>` and its LF to `out`
/// (protocol.md §9). The decoder bounds the payload so the line fits the
/// subscriber's 64 KiB line limit.
pub fn encode_push(channel: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"sig ");
    out.extend_from_slice(channel);
    out.push(b' ');
    out.extend_from_slice(payload);
    out.push(b'\n');
}

fn pick(space: Space, lock: &'static str, sem: &'static str) -> &'static str {
    match space {
        Space::Lock => lock,
        Space::Sem => sem,
    }
}

/// Writes the command and key lines, leaving `out` at the argument line.
fn head(out: &mut Vec<u8>, cmd: &str, key: &[u8]) {
    out.extend_from_slice(cmd.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(key);
    out.push(b'\n');
}

/// Writes an optional trailing lease field, preceded by a space when it
/// follows another field on the line.
fn push_lease(out: &mut Vec<u8>, lease_s: Option<u64>, after_field: bool) {
    if let Some(lease_s) = lease_s {
        if after_field {
            out.push(b' ');
        }
        push_u64(out, lease_s);
    }
}

/// Writes `n` in decimal without going through `fmt`.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(&mut [0u8; 20], n));
}

/// `v` in decimal, as `u64`'s `Display` writes it, at the end of `digits`
/// (`u64::MAX` has 20 digits); the HTTP front sizes a body with it before
/// writing.
pub(crate) fn decimal(digits: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &digits[i..]
}

#[cfg(test)]
mod tests {
    use super::encode_push;
    use crate::wire::{decode_reply, decode_request, Decoded, ReplyDecoded, Request};

    #[test]
    fn push_line_round_trips_through_the_reply_decoder() {
        for (channel, payload) in [
            (&b"a.b"[..], &b"x"[..]),
            (b"news", b"  spaced   out "),
            (b"c", b"sig c nested"),
        ] {
            let mut out = Vec::new();
            encode_push(channel, payload, &mut out);
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(
                decode_reply(&out),
                ReplyDecoded::Push {
                    channel: channel.to_vec(),
                    payload: payload.to_vec(),
                    consumed: out.len(),
                }
            );
        }
    }

    /// The largest payload the request decoder accepts still makes a push
    /// line within the 64 KiB line limit.
    #[test]
    fn largest_accepted_payload_fits_one_push_line() {
        let channel = b"ch.x";
        let mut size = crate::wire::MAX_PAYLOAD_BYTES;
        let accepted = loop {
            let mut req = b"signal\nch.x\n".to_vec();
            req.extend(std::iter::repeat_n(b'p', size));
            req.push(b'\n');
            if let Decoded::Request {
                req: Request::Signal { payload, .. },
                ..
            } = decode_request(&req)
            {
                break payload;
            }
            size -= 1;
        };
        let mut out = Vec::new();
        encode_push(channel, &accepted, &mut out);
        assert!(out.len() - 1 <= crate::wire::MAX_PAYLOAD_BYTES);
    }
}
