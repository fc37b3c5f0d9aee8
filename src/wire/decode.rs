//! Push parsers: [`decode_request`] for the server, [`decode_reply`] for
//! clients and the bench.
//!
//! Both are stateless. The caller appends whatever the socket produced to a
//! buffer, calls the decoder on the whole buffer, and on a complete result
//! drops the first `consumed` bytes. Running out of bytes is
//! [`Decoded::NeedMore`], never an error, so TCP segmentation is invisible.
//!
//! Statelessness means a request split into many tiny reads is rescanned on
//! every call. That is bounded rather than quadratic in what a peer sends: a
//! scan never looks further than one byte past the limit of each of the
//! three lines (256, 256, and 256 or 65 536 bytes), so a byte-at-a-time
//! slowloris costs at most O(line limit) per call, and the first byte past a
//! limit ends the request with the fatal [`ParseError::LineTooLong`].
//!
//! Argument parsing follows upstream's Go code because that is what existing
//! clients were tested against: fields split like `strings.Fields` (any run
//! of Unicode whitespace), integers parsed like `strconv.Atoi` (optional sign,
//! leading zeros, decimal only, must fit an `i64`), surrounding whitespace
//! trimmed like `strings.TrimSpace`. Bytes are never required to be UTF-8
//! (Decision D15); whitespace is recognised byte-wise exactly where Go's
//! rune decoder would find it (see [`space_len`]).

use super::{
    Key, ParseError, Reply, Request, Space, Status, Token, MAX_LINE_BYTES, MAX_PAYLOAD_BYTES,
    MAX_SECONDS, NOT_LEADER,
};

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
///
/// A request is three LF-terminated lines; all trailing CRs of each line
/// are stripped. On [`Decoded::Invalid`] with a non-fatal error, `consumed`
/// covers exactly the three lines of the bad request, so the caller answers
/// `error` and decodes the next request from `buf[consumed..]`. On
/// [`ParseError::LineTooLong`] (fatal, Decision D1) `consumed` is the whole
/// buffer: the stream can no longer be framed and the connection closes.
pub fn decode_request(buf: &[u8]) -> Decoded {
    let too_long = Decoded::Invalid {
        error: ParseError::LineTooLong,
        consumed: buf.len(),
    };

    let (cmd_line, rest) = match scan_line(buf, MAX_LINE_BYTES) {
        Scan::Line { line, rest } => (line, rest),
        Scan::NeedMore => return Decoded::NeedMore,
        Scan::TooLong => return too_long,
    };
    let (key_line, rest) = match scan_line(rest, MAX_LINE_BYTES) {
        Scan::Line { line, rest } => (line, rest),
        Scan::NeedMore => return Decoded::NeedMore,
        Scan::TooLong => return too_long,
    };
    // The command picks the third line's limit, so it is recognised before
    // that line is framed; an unknown command still gets all three lines
    // consumed (at the ordinary limit) so the connection can carry on.
    let cmd = Command::from_bytes(strip_cr(cmd_line));
    let arg_limit = match cmd {
        Some(Command::Auth | Command::Keyed(Keyed::Signal)) => MAX_PAYLOAD_BYTES,
        _ => MAX_LINE_BYTES,
    };
    let (arg_line, rest) = match scan_line(rest, arg_limit) {
        Scan::Line { line, rest } => (line, rest),
        Scan::NeedMore => return Decoded::NeedMore,
        Scan::TooLong => return too_long,
    };
    let consumed = buf.len() - rest.len();

    let parsed = match cmd {
        Some(cmd) => parse(cmd, strip_cr(key_line), strip_cr(arg_line)),
        None => Err(ParseError::UnknownCommand),
    };
    match parsed {
        Ok(req) => Decoded::Request { req, consumed },
        Err(error) => Decoded::Invalid { error, consumed },
    }
}

/// Outcome of looking for one line at the start of a buffer.
enum Scan<'a> {
    /// `line` excludes the LF; `rest` starts right after it.
    Line {
        line: &'a [u8],
        rest: &'a [u8],
    },
    NeedMore,
    /// More than `limit` bytes precede the LF (or are present with no LF).
    TooLong,
}

/// Finds the first line of `buf`, looking at no more than `limit + 1`
/// bytes: that is what keeps a rescan cheap however much is buffered.
fn scan_line(buf: &[u8], limit: usize) -> Scan<'_> {
    let window = &buf[..buf.len().min(limit.saturating_add(1))];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let (line, lf_and_rest) = buf.split_at(lf);
            Scan::Line {
                line,
                rest: lf_and_rest.get(1..).unwrap_or_default(),
            }
        }
        None if window.len() > limit => Scan::TooLong,
        None => Scan::NeedMore,
    }
}

/// Strips every trailing CR (`abc\r\r` → `abc`), as upstream does.
fn strip_cr(mut line: &[u8]) -> &[u8] {
    while let [head @ .., b'\r'] = line {
        line = head;
    }
    line
}

/// The command words. Commands that ignore the key line are kept apart
/// from the keyed ones so that skipping key validation is structural.
#[derive(Clone, Copy)]
enum Command {
    Stats,
    Auth,
    Ping,
    Barrier,
    StableRef,
    Keyed(Keyed),
}

/// Commands whose second line is a key, channel or pattern. Lock and
/// semaphore forms are folded together by [`Space`].
#[derive(Clone, Copy)]
enum Keyed {
    Acquire(Space),
    Release(Space),
    Renew(Space),
    Enqueue(Space),
    Wait(Space),
    Listen,
    Unlisten,
    Signal,
}

impl Command {
    /// Exact, case-sensitive match on the CR-stripped first line; anything
    /// else (including surrounding spaces or an empty line) is unknown.
    fn from_bytes(word: &[u8]) -> Option<Command> {
        use Space::{Lock, Sem};
        let keyed = match word {
            b"stats" => return Some(Command::Stats),
            b"auth" => return Some(Command::Auth),
            b"ping" => return Some(Command::Ping),
            b"barrier" => return Some(Command::Barrier),
            b"stable-ref" => return Some(Command::StableRef),
            b"l" => Keyed::Acquire(Lock),
            b"r" => Keyed::Release(Lock),
            b"n" => Keyed::Renew(Lock),
            b"e" => Keyed::Enqueue(Lock),
            b"w" => Keyed::Wait(Lock),
            b"sl" => Keyed::Acquire(Sem),
            b"sr" => Keyed::Release(Sem),
            b"sn" => Keyed::Renew(Sem),
            b"se" => Keyed::Enqueue(Sem),
            b"sw" => Keyed::Wait(Sem),
            b"listen" => Keyed::Listen,
            b"unlisten" => Keyed::Unlisten,
            b"signal" => Keyed::Signal,
            _ => return None,
        };
        Some(Command::Keyed(keyed))
    }
}

/// Validates the key line, then the argument line, of a known command.
fn parse(cmd: Command, key: &[u8], arg: &[u8]) -> Result<Request, ParseError> {
    // Commands that ignore the key line skip key validation entirely, so an
    // empty key line is fine for them (upstream behaviour).
    match cmd {
        Command::Stats => Ok(Request::Stats),
        Command::Ping => Ok(Request::Ping),
        Command::Barrier => Ok(Request::Barrier),
        // 1-64 printable ASCII, no spaces: the reference is a credential
        // that the server compares byte for byte.
        Command::StableRef => {
            let ok = (1..=super::MAX_STABLE_REF).contains(&key.len())
                && key.iter().all(|b| (0x21..=0x7e).contains(b));
            if ok {
                Ok(Request::StableRef {
                    reference: key.into(),
                })
            } else {
                Err(ParseError::BadKey)
            }
        }
        // The server decides what an empty token means (§1.6).
        Command::Auth => Ok(Request::Auth {
            token: trim_space(arg).into(),
        }),
        Command::Keyed(cmd) => parse_keyed(cmd, Key::new(key)?, arg),
    }
}

/// Parses the argument line of a keyed command whose key is already valid.
fn parse_keyed(cmd: Keyed, key: Key, arg: &[u8]) -> Result<Request, ParseError> {
    match cmd {
        Keyed::Acquire(Space::Lock) => {
            let [t, l] = fields_range::<2>(arg, 1)?;
            Ok(Request::Acquire {
                space: Space::Lock,
                key,
                timeout_s: timeout(required(t)?)?,
                limit: 1,
                lease_s: lease_opt(l)?,
            })
        }
        Keyed::Acquire(Space::Sem) => {
            let [t, n, l] = fields_range::<3>(arg, 2)?;
            Ok(Request::Acquire {
                space: Space::Sem,
                key,
                timeout_s: timeout(required(t)?)?,
                limit: limit(required(n)?)?,
                lease_s: lease_opt(l)?,
            })
        }
        Keyed::Release(space) => {
            // The whole trimmed line, inner spaces kept: `tok extra` is a
            // token that simply matches no holder.
            let token = trim_space(arg);
            if token.is_empty() {
                return Err(ParseError::EmptyToken);
            }
            Ok(Request::Release {
                space,
                key,
                token: token.into(),
            })
        }
        Keyed::Renew(space) => {
            let [tok, l] = fields_range::<2>(arg, 1)?;
            Ok(Request::Renew {
                space,
                key,
                token: required(tok)?.into(),
                lease_s: lease_opt(l)?,
            })
        }
        Keyed::Enqueue(Space::Lock) => {
            // v1 parses the whole trimmed line as one integer, so trailing
            // junk (`30 junk`) is "not an integer" rather than a field-count
            // error (Decision D14). Blank means the default lease.
            let arg = trim_space(arg);
            let lease_s = if arg.is_empty() {
                None
            } else {
                Some(lease(arg)?)
            };
            Ok(Request::Enqueue {
                space: Space::Lock,
                key,
                limit: 1,
                lease_s,
            })
        }
        Keyed::Enqueue(Space::Sem) => {
            let [n, l] = fields_range::<2>(arg, 1)?;
            Ok(Request::Enqueue {
                space: Space::Sem,
                key,
                limit: limit(required(n)?)?,
                lease_s: lease_opt(l)?,
            })
        }
        Keyed::Wait(space) => {
            // The whole trimmed line is one integer; blank is a missing
            // argument, not a bad integer.
            let arg = trim_space(arg);
            if arg.is_empty() {
                return Err(ParseError::BadArgCount);
            }
            Ok(Request::Wait {
                space,
                key,
                timeout_s: timeout(arg)?,
            })
        }
        Keyed::Listen => listen_request(key, arg),
        Keyed::Unlisten => subscription(false, key, arg),
        Keyed::Signal => signal_request(key, arg),
    }
}

/// `listen` (or `unlisten`) with this pattern and group: wildcards must be
/// whole tokens; the group is trimmed, and empty means ungrouped.
fn subscription(listen: bool, pattern: Key, group: &[u8]) -> Result<Request, ParseError> {
    check_pattern(pattern.as_bytes())?;
    let group = trim_space(group);
    let group = (!group.is_empty()).then(|| group.into());
    Ok(if listen {
        Request::Listen { pattern, group }
    } else {
        Request::Unlisten { pattern, group }
    })
}

/// `listen <pattern> <group>` as a request, validated exactly as the
/// decoder validates it (the HTTP front builds its SSE subscriptions here).
pub fn listen_request(pattern: Key, group: &[u8]) -> Result<Request, ParseError> {
    subscription(true, pattern, group)
}

/// The longest payload a `signal` on `channel` may carry: the push line
/// `sig <channel> <payload>` must fit the 64 KiB line limit of the
/// subscriber's reader.
pub fn max_signal_payload(channel: &Key) -> usize {
    MAX_PAYLOAD_BYTES.saturating_sub(b"sig ".len() + channel.as_bytes().len() + 1)
}

/// `signal <channel> <payload>` as a request, validated exactly as the
/// decoder validates it (the HTTP front publishes through here).
pub fn signal_request(channel: Key, payload: &[u8]) -> Result<Request, ParseError> {
    // A signal goes to one literal channel; wildcards are for subscribers
    // only.
    if channel.as_bytes().iter().any(|&b| b == b'*' || b == b'>') {
        return Err(ParseError::BadKey);
    }
    // The payload is the raw line (only trailing CRs stripped).
    if trim_space(payload).is_empty() || payload.len() > max_signal_payload(&channel) {
        return Err(ParseError::BadArgCount);
    }
    Ok(Request::Signal {
        channel,
        payload: payload.into(),
    })
}

/// A field that [`fields_range`]'s lower bound guarantees; a missing one is
/// still a typed error rather than a panic.
fn required(field: Option<&[u8]>) -> Result<&[u8], ParseError> {
    field.ok_or(ParseError::BadArgCount)
}

/// Checks the wildcard rules of a `listen`/`unlisten` pattern: `*` and `>`
/// must each be a whole dot-separated token, and `>` may only be the last.
/// Empty tokens (`a..b`) are allowed, as upstream.
fn check_pattern(pattern: &[u8]) -> Result<(), ParseError> {
    let mut tokens = pattern.split(|&b| b == b'.').peekable();
    while let Some(token) = tokens.next() {
        let is_last = tokens.peek().is_none();
        let bad_star = token.contains(&b'*') && token != b"*";
        let bad_gt = token.contains(&b'>') && (token != b">" || !is_last);
        if bad_star || bad_gt {
            return Err(ParseError::BadKey);
        }
    }
    Ok(())
}

/// A timeout field: an integer in `0..=MAX_SECONDS`.
fn timeout(field: &[u8]) -> Result<u64, ParseError> {
    let v = atoi(field)?;
    u64::try_from(v)
        .ok()
        .filter(|&s| s <= MAX_SECONDS)
        .ok_or(ParseError::BadTimeout)
}

/// A lease field: an integer in `1..=MAX_SECONDS`.
fn lease(field: &[u8]) -> Result<u64, ParseError> {
    let v = atoi(field)?;
    u64::try_from(v)
        .ok()
        .filter(|&s| (1..=MAX_SECONDS).contains(&s))
        .ok_or(ParseError::BadLease)
}

fn lease_opt(field: Option<&[u8]>) -> Result<Option<u64>, ParseError> {
    field.map(lease).transpose()
}

/// A semaphore limit: an integer ≥ 1 (no upper bound in v1).
fn limit(field: &[u8]) -> Result<u64, ParseError> {
    let v = atoi(field)?;
    u64::try_from(v)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or(ParseError::BadLimit)
}

/// Go's `strconv.Atoi` on a 64-bit platform: an optional `+` or `-`, then
/// one or more ASCII digits (leading zeros fine), and the value must fit an
/// `i64`. Anything else, including a value that overflows `i64`, is
/// [`ParseError::NotAnInteger`]: Atoi fails on overflow, and upstream maps
/// every Atoi failure to code 4 before any range check runs.
fn atoi(field: &[u8]) -> Result<i64, ParseError> {
    let (negative, digits) = match field {
        [b'-', digits @ ..] => (true, digits),
        [b'+', digits @ ..] => (false, digits),
        digits => (false, digits),
    };
    if digits.is_empty() {
        return Err(ParseError::NotAnInteger);
    }
    let mut value: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return Err(ParseError::NotAnInteger);
        }
        let digit = i64::from(b - b'0');
        // Accumulating towards the sign keeps `i64::MIN` representable.
        value = value
            .checked_mul(10)
            .and_then(|v| {
                if negative {
                    v.checked_sub(digit)
                } else {
                    v.checked_add(digit)
                }
            })
            .ok_or(ParseError::NotAnInteger)?;
    }
    Ok(value)
}

/// Splits `line` like Go's `strings.Fields` and requires between `min` and
/// `N` fields; the first `min` entries of the result are `Some`. A count
/// outside that range is [`ParseError::BadArgCount`]. Stops scanning at
/// field `N + 1`, so no allocation and no wasted work on junk.
fn fields_range<const N: usize>(line: &[u8], min: usize) -> Result<[Option<&[u8]>; N], ParseError> {
    let mut out = [None; N];
    let mut count = 0;
    for field in Fields(line) {
        match out.get_mut(count) {
            Some(slot) => *slot = Some(field),
            None => return Err(ParseError::BadArgCount),
        }
        count += 1;
    }
    if count < min {
        return Err(ParseError::BadArgCount);
    }
    Ok(out)
}

/// Iterator over the fields of a line, as Go's `strings.Fields`.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = trim_space_start(self.0);
        if rest.is_empty() {
            self.0 = rest;
            return None;
        }
        // Stepping one byte at a time is equivalent to Go's rune stepping:
        // whitespace encodings begin with an ASCII or lead byte, which never
        // occurs inside a valid multi-byte character, and Go steps over an
        // invalid byte one byte at a time too.
        let mut end = 0;
        while end < rest.len() && space_len(&rest[end..]) == 0 {
            end += 1;
        }
        let (field, tail) = rest.split_at(end);
        self.0 = tail;
        Some(field)
    }
}

/// Go's `strings.TrimSpace` on bytes.
fn trim_space(s: &[u8]) -> &[u8] {
    trim_space_end(trim_space_start(s))
}

fn trim_space_start(mut s: &[u8]) -> &[u8] {
    loop {
        match space_len(s) {
            0 => return s,
            n => s = s.get(n..).unwrap_or_default(),
        }
    }
}

fn trim_space_end(mut s: &[u8]) -> &[u8] {
    loop {
        match trailing_space_len(s) {
            0 => return s,
            n => s = &s[..s.len() - n],
        }
    }
}

/// Length of the whitespace character that ends `s`, or 0. Go decodes the
/// last rune by walking back to its lead byte; a whitespace character found
/// that way is exactly a whitespace encoding that ends the slice, because
/// none of its continuation bytes can be mistaken for a lead byte.
fn trailing_space_len(s: &[u8]) -> usize {
    (1..=3)
        .find(|&n| {
            s.len()
                .checked_sub(n)
                .is_some_and(|start| space_len(&s[start..]) == n)
        })
        .unwrap_or(0)
}

/// Length of the Unicode whitespace character (Go's `unicode.IsSpace`, i.e.
/// the `White_Space` property) encoded at the start of `s`, or 0 if `s` does
/// not start with one. Works on arbitrary bytes: an invalid sequence is
/// simply not whitespace, as Go decodes it to U+FFFD.
fn space_len(s: &[u8]) -> usize {
    match s {
        [b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ', ..] => 1,
        // U+0085 NEL, U+00A0 NBSP
        [0xc2, 0x85 | 0xa0, ..] => 2,
        // U+1680 OGHAM SPACE MARK
        [0xe1, 0x9a, 0x80, ..] => 3,
        // U+2000..=U+200A, U+2028, U+2029, U+202F
        [0xe2, 0x80, 0x80..=0x8a | 0xa8 | 0xa9 | 0xaf, ..] => 3,
        // U+205F MEDIUM MATHEMATICAL SPACE
        [0xe2, 0x81, 0x9f, ..] => 3,
        // U+3000 IDEOGRAPHIC SPACE
        [0xe3, 0x80, 0x80, ..] => 3,
        _ => 0,
    }
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
    /// A complete line that is not a reply this protocol defines. For a line
    /// longer than [`MAX_REPLY_LINE_BYTES`], `consumed` is everything seen so
    /// far and the stream cannot be re-synchronised: close the connection.
    Invalid {
        consumed: usize,
    },
}

/// Longest reply line [`decode_reply`] accepts, before the LF. Replies are
/// short except `ok <json>` from `stats`, whose size grows with the number
/// of keys; 1 MiB leaves ample room while still bounding a client's buffer
/// against a misbehaving server.
pub const MAX_REPLY_LINE_BYTES: usize = 1 << 20;

/// Decodes the first reply line in `buf` (for clients and the bench).
///
/// Trailing CRs are stripped, for symmetry with requests (the server sends
/// bare LFs). Integers in replies are plain unsigned decimal; the token must
/// be the 32-hex form this server issues.
pub fn decode_reply(buf: &[u8]) -> ReplyDecoded {
    let (line, rest) = match scan_line(buf, MAX_REPLY_LINE_BYTES) {
        Scan::Line { line, rest } => (strip_cr(line), rest),
        Scan::NeedMore => return ReplyDecoded::NeedMore,
        Scan::TooLong => {
            return ReplyDecoded::Invalid {
                consumed: buf.len(),
            }
        }
    };
    let consumed = buf.len() - rest.len();

    let (head, tail) = split_space(line);
    if head == b"sig" {
        // `sig <channel> <payload>`: the channel holds no spaces, so the
        // payload is everything after the first space following it.
        if let Some((channel, Some(payload))) = tail.map(split_space) {
            if !channel.is_empty() {
                return ReplyDecoded::Push {
                    channel: channel.to_vec(),
                    payload: payload.to_vec(),
                    consumed,
                };
            }
        }
        return ReplyDecoded::Invalid { consumed };
    }
    match parse_reply(head, tail) {
        Some(reply) => ReplyDecoded::Reply { reply, consumed },
        None => ReplyDecoded::Invalid { consumed },
    }
}

fn parse_reply(head: &[u8], tail: Option<&[u8]>) -> Option<Reply> {
    match (head, tail) {
        (b"ok", None) => Some(Reply::Ok),
        (b"ok", Some(json @ [b'{', ..])) => std::str::from_utf8(json)
            .ok()
            .map(|s| Reply::Stats(s.to_owned())),
        (b"ok", Some(rest)) => match split_space(rest) {
            (n, None) => parse_u64(n).map(Reply::OkInt),
            (tok, Some(l)) => {
                let (token, lease_s) = (Token::parse(tok)?, parse_u64(l)?);
                Some(Reply::Granted { token, lease_s })
            }
        },
        (b"acquired", Some(rest)) => match split_space(rest) {
            (tok, Some(l)) => {
                let (token, lease_s) = (Token::parse(tok)?, parse_u64(l)?);
                Some(Reply::Acquired { token, lease_s })
            }
            (_, None) => None,
        },
        (word, addr) if word == NOT_LEADER.as_bytes() => match addr {
            None => Some(Reply::NotLeader { leader: None }),
            Some(addr) => leader_addr(addr).map(|a| Reply::NotLeader { leader: Some(a) }),
        },
        (word, None) => Status::ALL
            .into_iter()
            .find(|s| s.as_str().as_bytes() == word)
            .map(Reply::Status),
        _ => None,
    }
}

/// The address of `error_not_leader <addr>`: one field of printable
/// ASCII (no space), at most [`MAX_LINE_BYTES`] bytes. A client dials it,
/// so anything else is refused rather than passed on.
fn leader_addr(addr: &[u8]) -> Option<String> {
    let ok = !addr.is_empty()
        && addr.len() <= MAX_LINE_BYTES
        && addr.iter().all(|b| b.is_ascii_graphic());
    ok.then(|| String::from_utf8_lossy(addr).into_owned())
}

/// Splits at the first space: `(before, Some(after))`, or `(line, None)`.
fn split_space(line: &[u8]) -> (&[u8], Option<&[u8]>) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], line.get(i + 1..)),
        None => (line, None),
    }
}

/// One or more ASCII digits that fit a `u64`.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_reply;

    fn reply(line: &[u8]) -> ReplyDecoded {
        decode_reply(line)
    }

    #[test]
    fn not_leader_with_and_without_an_address() {
        assert_eq!(
            reply(b"error_not_leader\n"),
            ReplyDecoded::Reply {
                reply: Reply::NotLeader { leader: None },
                consumed: 17
            }
        );
        assert_eq!(
            reply(b"error_not_leader 10.0.0.2:6388\r\n"),
            ReplyDecoded::Reply {
                reply: Reply::NotLeader {
                    leader: Some("10.0.0.2:6388".into())
                },
                consumed: 32
            }
        );
        for bad in [
            &b"error_not_leader \n"[..],
            b"error_not_leader a b\n",
            b"error_not_leader \xff\n",
        ] {
            assert!(
                matches!(reply(bad), ReplyDecoded::Invalid { .. }),
                "{bad:?}"
            );
        }
        for r in [
            Reply::NotLeader { leader: None },
            Reply::NotLeader {
                leader: Some("[::1]:6388".into()),
            },
        ] {
            let mut out = Vec::new();
            encode_reply(&r, &mut out);
            assert_eq!(
                reply(&out),
                ReplyDecoded::Reply {
                    reply: r,
                    consumed: out.len()
                }
            );
        }
    }
}
