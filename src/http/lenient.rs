//! Request heads the way Go's server takes them: a byte-level adapter
//! between the socket and hyper.
//!
//! hyper parses the request-target into an `http::Uri`, which refuses bytes
//! that Go's `net/http` accepts in a query or path: `"`, `#`, `<`, `>`,
//! `` ` `` and bytes of 0x80 and above that are not UTF-8. A client that
//! sends `GET /v1/signals?pattern=orders.>` as typed (curl, Python's
//! `http.client`) would get an empty `400` before our code runs. And where
//! hyper must refuse a request (a control byte in the target, a malformed
//! header), it answers `400` with no body.
//!
//! [`Lenient`] wraps the connection's read side. It frames the byte stream
//! as HTTP/1 requests itself (head, then a `Content-Length` or chunked
//! body, then the next head) and touches only request heads:
//!
//! * in the request-target of a well-formed request line, each of those
//!   bytes becomes `%XX` (the route handlers percent-decode, so the
//!   request means what Go's server would make of it); nothing else in
//!   the stream changes;
//! * a head that hyper would refuse (control byte in the target, a
//!   malformed request line or header, an HTTP version other than 1.x, a
//!   head over [`MAX_HEAD_BYTES`], more than [`MAX_HEADERS`] headers, a
//!   target over [`MAX_TARGET_BYTES`], ambiguous body framing) is replaced
//!   by a request for [`REFUSED_PATH`]`<n>` with `Connection: close`; the
//!   front answers it with a JSON body saying why ([`Refusal`]), and
//!   nothing after it is read.
//!
//! Bounded: a head is buffered up to [`MAX_HEAD_BYTES`] (hyper needs all of
//! it anyway), bodies pass straight through, and a chunked body's framing
//! lines are bounded too. Wherever the body framing does not parse, the
//! adapter stops interpreting and passes every later byte through
//! unchanged, so hyper's own parser decides; it never rewrites a byte it
//! has not framed as a request-target. Refusing ambiguous framing
//! (`Content-Length` with `Transfer-Encoding`, two different lengths) keeps
//! its framing and hyper's the same.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The longest request-target accepted (before percent-encoding).
pub const MAX_TARGET_BYTES: usize = 16 * 1024;
/// The most header lines accepted (hyper's own limit).
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size or trailer line interpreted.
const MAX_CHUNK_LINE: usize = 4096;
/// The path prefix of the request that stands for a refused one; the
/// number after it is [`Refusal::index`].
pub const REFUSED_PATH: &str = "/-/dflockd-refused/";

/// Why a request head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    ControlInTarget,
    BadRequestLine,
    BadVersion,
    TargetTooLong,
    BadHeader,
    HeadTooLarge,
    TooManyHeaders,
    BadFraming,
}

impl Refusal {
    const ALL: [Refusal; 8] = [
        Refusal::ControlInTarget,
        Refusal::BadRequestLine,
        Refusal::BadVersion,
        Refusal::TargetTooLong,
        Refusal::BadHeader,
        Refusal::HeadTooLarge,
        Refusal::TooManyHeaders,
        Refusal::BadFraming,
    ];

    pub fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The refusal named by a [`REFUSED_PATH`] request's path, if any.
    pub fn from_path(path: &str) -> Option<Refusal> {
        let n: usize = path.strip_prefix(REFUSED_PATH)?.parse().ok()?;
        Refusal::ALL.get(n).copied()
    }

    /// HTTP status, error code, and the detail of the JSON body.
    pub fn answer(self) -> (u16, &'static str, &'static str) {
        match self {
            Refusal::ControlInTarget => (
                400,
                "bad_request",
                "control character in the request target; percent-encode it",
            ),
            Refusal::BadRequestLine => (
                400,
                "bad_request",
                "malformed request line (expected METHOD SP TARGET SP HTTP/1.1)",
            ),
            Refusal::BadVersion => (
                505,
                "http_version_not_supported",
                "only HTTP/1.0 and HTTP/1.1 are served",
            ),
            Refusal::TargetTooLong => (
                414,
                "uri_too_long",
                "the request target is longer than 16384 bytes",
            ),
            Refusal::BadHeader => (400, "bad_request", "malformed header line"),
            Refusal::HeadTooLarge => (
                431,
                "request_header_fields_too_large",
                "the request head is larger than 65536 bytes",
            ),
            Refusal::TooManyHeaders => (
                431,
                "request_header_fields_too_large",
                "more than 100 header lines",
            ),
            Refusal::BadFraming => (
                400,
                "bad_request",
                "ambiguous or unsupported body framing (Content-Length and Transfer-Encoding)",
            ),
        }
    }
}

/// Whether hyper's URI parser refuses `b` in a path or query where Go's
/// server takes it. Control bytes are refused by both and are not here.
fn needs_escape(b: u8) -> bool {
    matches!(b, b'"' | b'#' | b'<' | b'>' | b'`') || b >= 0x80
}

/// RFC 9110 `tchar`, by byte: a lookup, since every header name of every
/// head is checked with it.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// Where the adapter is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Passing this many body bytes.
    Body(u64),
    /// Collecting a chunk-size line.
    ChunkSize,
    /// Passing this many chunk bytes.
    ChunkData(u64),
    /// Expecting the line end after a chunk's data.
    ChunkEnd,
    /// Collecting trailer lines up to the empty one.
    Trailers,
    /// Not interpreting any more: every byte passes unchanged.
    Through,
    /// A refusal was handed to hyper; nothing more is read.
    Refused,
}

/// How a head says its body is framed.
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Bytes of the read buffer at first; it grows (up to a head's limit plus
/// one read) only while an incomplete head or chunk line needs more.
const READ_WINDOW: usize = 4096;

/// The connection's stream with request heads made acceptable (see the
/// module documentation). Writes pass straight through.
///
/// Bytes are read into a buffer of its own, zeroed once when it is made or
/// grown (hyper's read buffer is uninitialized, and a futures-io read
/// needs an initialized slice: zeroing a window of it before every read
/// cost about 1.4% of the server's samples). Framed bytes that pass
/// unchanged, which is nearly all of them, are handed on from that buffer
/// where they lie; only a rewritten head or a stand-in request is built
/// apart, in `out`.
pub struct Lenient<I> {
    io: I,
    state: State,
    /// Bytes read: `buf[start..end]` are not handed on yet; of those, the
    /// first `ready` are framed and pass unchanged.
    buf: Vec<u8>,
    start: usize,
    ready: usize,
    end: usize,
    /// Of the bytes after the ready ones, how many have been scanned for
    /// the end of the head being collected.
    scanned: usize,
    /// A rewritten head or a stand-in request, from `out_pos`; handed on
    /// before `buf[start..]` (it is only filled while nothing is ready).
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

impl<I> Lenient<I> {
    pub fn new(io: I) -> Lenient<I> {
        Lenient {
            io,
            state: State::Head,
            buf: Vec::new(),
            start: 0,
            ready: 0,
            end: 0,
            scanned: 0,
            out: Vec::new(),
            out_pos: 0,
            eof: false,
        }
    }

    /// The bytes read and not yet framed.
    fn pending(&self) -> &[u8] {
        &self.buf[self.start + self.ready..self.end]
    }

    /// Frames the next `n` pending bytes as passing unchanged.
    fn pass(&mut self, n: usize) {
        self.ready += n;
        self.scanned = 0;
    }

    /// Drops every pending byte (after a refusal nothing more is read).
    fn drop_pending(&mut self) {
        self.end = self.start + self.ready;
        self.scanned = 0;
    }

    /// Processes what it can of the pending bytes.
    fn process(&mut self) {
        while self.out_pos == self.out.len() && !self.pending().is_empty() && self.step() {}
    }

    /// One step; false when more bytes are needed, or when a head must be
    /// rewritten while unchanged bytes before it still wait to be handed
    /// on.
    fn step(&mut self) -> bool {
        match self.state {
            State::Through => {
                self.pass(self.pending().len());
                true
            }
            State::Refused => {
                self.drop_pending();
                true
            }
            State::Body(n) => {
                let k = self
                    .pending()
                    .len()
                    .min(usize::try_from(n).unwrap_or(usize::MAX));
                self.pass(k);
                let left = n - k as u64;
                self.state = if left == 0 {
                    State::Head
                } else {
                    State::Body(left)
                };
                true
            }
            State::ChunkData(n) => {
                let k = self
                    .pending()
                    .len()
                    .min(usize::try_from(n).unwrap_or(usize::MAX));
                self.pass(k);
                let left = n - k as u64;
                self.state = if left == 0 {
                    State::ChunkEnd
                } else {
                    State::ChunkData(left)
                };
                true
            }
            State::ChunkEnd => {
                let p = self.pending();
                let end = match p {
                    [b'\n', ..] => Some(1),
                    [b'\r', b'\n', ..] => Some(2),
                    [b'\r'] => None,
                    _ => {
                        self.state = State::Through;
                        return true;
                    }
                };
                match end {
                    Some(n) => {
                        self.pass(n);
                        self.state = State::ChunkSize;
                        true
                    }
                    None => false,
                }
            }
            State::ChunkSize => {
                let Some(line) = self.line() else {
                    return false;
                };
                self.state = match chunk_size(&self.pending()[..line]) {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Through,
                };
                self.pass(line);
                true
            }
            State::Trailers => {
                let Some(line) = self.line() else {
                    return false;
                };
                let empty = matches!(&self.pending()[..line], b"\n" | b"\r\n");
                self.pass(line);
                if empty {
                    self.state = State::Head;
                }
                true
            }
            State::Head => self.head(),
        }
    }

    /// The length (terminator included) of the complete line at the start
    /// of the pending bytes; `None` while incomplete. A line longer than
    /// [`MAX_CHUNK_LINE`] stops interpretation.
    fn line(&mut self) -> Option<usize> {
        let p = self.pending();
        match memchr::memchr(b'\n', p) {
            Some(i) => Some(i + 1),
            None => {
                if p.len() > MAX_CHUNK_LINE {
                    self.state = State::Through;
                }
                None
            }
        }
    }

    fn head(&mut self) -> bool {
        // Empty lines before a request line are allowed (RFC 9112 §2.2).
        let blank = self
            .pending()
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if blank > 0 {
            self.pass(blank);
            return true;
        }
        let p = self.pending();
        let Some(end) = head_end(p, self.scanned.saturating_sub(2)) else {
            let len = p.len();
            self.scanned = len;
            if len > MAX_HEAD_BYTES {
                return self.refuse(Refusal::HeadTooLarge);
            }
            return false;
        };
        if end > MAX_HEAD_BYTES {
            return self.refuse(Refusal::HeadTooLarge);
        }
        match check_head(&p[..end]) {
            Ok((framing, escape)) => {
                if escape {
                    // Rewritten into `out`, which is handed on before
                    // anything left in the buffer: the unchanged bytes
                    // before this head go first.
                    if self.ready > 0 {
                        return false;
                    }
                    self.out.clear();
                    self.out_pos = 0;
                    escape_head(&self.buf[self.start..self.start + end], &mut self.out);
                    self.start += end;
                    self.scanned = 0;
                } else {
                    self.pass(end);
                }
                self.state = match framing {
                    Framing::None | Framing::Length(0) => State::Head,
                    Framing::Length(n) => State::Body(n),
                    Framing::Chunked => State::ChunkSize,
                };
                true
            }
            Err(why) => self.refuse(why),
        }
    }

    /// Hands hyper the stand-in request for `why` and stops reading; false
    /// (nothing done yet) while unchanged bytes before it wait.
    fn refuse(&mut self, why: Refusal) -> bool {
        if self.ready > 0 {
            return false;
        }
        self.out.clear();
        self.out_pos = 0;
        self.out.extend_from_slice(
            format!(
                "GET {REFUSED_PATH}{} HTTP/1.1\r\nhost: dflockd\r\nconnection: close\r\n\r\n",
                why.index()
            )
            .as_bytes(),
        );
        self.state = State::Refused;
        self.drop_pending();
        true
    }

    /// Bytes handed on: `n` of those [`Lenient::next_bytes`] returned.
    fn taken(&mut self, n: usize) {
        if self.out_pos < self.out.len() {
            self.out_pos += n;
            if self.out_pos == self.out.len() {
                self.out.clear();
                self.out_pos = 0;
            }
        } else {
            self.start += n;
            self.ready -= n;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
        }
    }

    /// Room to read into: compacts or grows the buffer when its tail is
    /// full. What stays pending is at most an incomplete head (refused past
    /// [`MAX_HEAD_BYTES`]) or chunk line, so it grows to a bounded size.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end < self.buf.len() {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return;
        }
        let len = (self.buf.len() * 2).clamp(READ_WINDOW, MAX_HEAD_BYTES + READ_WINDOW);
        self.buf.resize(len.max(self.buf.len() + 1), 0);
    }
}

impl<I: AsyncRead + Unpin> Lenient<I> {
    /// The next bytes to hand on: a rewritten head or stand-in, or framed
    /// bytes of the buffer; empty at the end of the stream. The caller
    /// reports how many it took with [`Lenient::taken`].
    fn poll_next_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        loop {
            if self.out_pos < self.out.len() {
                return Poll::Ready(Ok(&self.out[self.out_pos..]));
            }
            if self.ready > 0 {
                return Poll::Ready(Ok(&self.buf[self.start..self.start + self.ready]));
            }
            if self.state == State::Refused {
                // hyper answers the stand-in request and closes
                // (`Connection: close`); nothing after it is read.
                return Poll::Pending;
            }
            if !self.pending().is_empty() {
                // Left after a head rewritten into `out` was handed on.
                self.process();
                if self.ready > 0 || self.out_pos < self.out.len() {
                    continue;
                }
            }
            if self.eof {
                return Poll::Ready(Ok(&[]));
            }
            self.make_room();
            let end = self.end;
            match Pin::new(&mut self.io).poll_read(cx, &mut self.buf[end..]) {
                Poll::Ready(Ok(0)) => {
                    // End of stream: hand over what is left as it is, so
                    // hyper sees the truncated request it would have seen.
                    self.eof = true;
                    let n = self.pending().len();
                    self.pass(n);
                }
                Poll::Ready(Ok(n)) => {
                    self.end += n;
                    self.process();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Where the head at the start of `p` ends (just past its empty line: LF,
/// optional CR, LF), looking from `from`; `None` while incomplete.
fn head_end(p: &[u8], from: usize) -> Option<usize> {
    memchr::memchr_iter(b'\n', p.get(from..)?).find_map(|i| {
        let i = from + i;
        match (p.get(i + 1), p.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        }
    })
}

/// A chunk-size line's size: hex digits, then optional whitespace and
/// `;extensions`, then the line end.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    let rest_ok = rest
        .iter()
        .all(|b| *b != 0 && (*b >= 0x20 || matches!(b, b'\t' | b'\r' | b'\n')));
    if !rest_ok
        || !(rest.starts_with(b"\r\n")
            || rest.starts_with(b"\n")
            || rest.starts_with(b";")
            || rest.starts_with(b" ")
            || rest.starts_with(b"\t"))
    {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// A head's request line, split.
struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
    version: &'a [u8],
    /// The line ends with CR LF.
    crlf: bool,
    /// The rest of the head, from the line's LF.
    rest: &'a [u8],
}

/// The request line of a head; `None` unless it is three parts split by
/// single spaces.
fn request_line(head: &[u8]) -> Option<RequestLine<'_>> {
    let line_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let (line, rest) = head.split_at(line_end);
    let crlf = line.last() == Some(&b'\r');
    let line = if crlf { &line[..line.len() - 1] } else { line };
    let mut parts = line.split(|b| *b == b' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version), None) => Some(RequestLine {
            method,
            target,
            version,
            crlf,
            rest,
        }),
        _ => None,
    }
}

/// Checks a complete head; returns how its body is framed and whether its
/// request-target has bytes to percent-encode ([`escape_head`]).
fn check_head(head: &[u8]) -> Result<(Framing, bool), Refusal> {
    let Some(RequestLine {
        method,
        target,
        version,
        rest,
        ..
    }) = request_line(head)
    else {
        return Err(Refusal::BadRequestLine);
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) || target.is_empty() {
        return Err(Refusal::BadRequestLine);
    }
    if !version.starts_with(b"HTTP/") {
        return Err(Refusal::BadRequestLine);
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(Refusal::BadVersion);
    }
    // One pass without an early exit (so that it is vectorized) for both
    // questions about the target's bytes.
    let (control, escape) = target.iter().fold((false, false), |(c, e), &b| {
        (c | (b < 0x20 || b == 0x7f), e | needs_escape(b))
    });
    if control {
        return Err(Refusal::ControlInTarget);
    }
    if target.len() > MAX_TARGET_BYTES {
        return Err(Refusal::TargetTooLong);
    }
    let framing = framing(rest)?;
    Ok((framing, escape))
}

/// Appends `head` (checked by [`check_head`]) to `out` with its
/// request-target percent-encoded.
fn escape_head(head: &[u8], out: &mut Vec<u8>) {
    let Some(RequestLine {
        method,
        target,
        version,
        crlf,
        rest,
    }) = request_line(head)
    else {
        out.extend_from_slice(head);
        return;
    };
    out.reserve(head.len() + 16);
    out.extend_from_slice(method);
    out.push(b' ');
    for &b in target {
        if needs_escape(b) {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
    out.push(b' ');
    out.extend_from_slice(version);
    if crlf {
        out.push(b'\r');
    }
    out.extend_from_slice(rest);
}

/// The header lines (after the request line, up to and including the empty
/// line): well-formed, at most [`MAX_HEADERS`], and an unambiguous body
/// framing.
fn framing(headers: &[u8]) -> Result<Framing, Refusal> {
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut count = 0;
    // `headers` starts with the request line's LF; each line runs to the
    // next LF (a head ends with an empty line, so the last one has one).
    let mut from = 1;
    for lf in memchr::memchr_iter(b'\n', headers.get(1..).unwrap_or_default()) {
        let raw = &headers[from..=lf];
        from = lf + 2;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(Refusal::TooManyHeaders);
        }
        // The name is tchars up to the colon (a colon is not a tchar).
        let colon = line.iter().position(|b| !is_tchar(*b));
        let Some(colon) = colon.filter(|&c| c > 0 && line[c] == b':') else {
            return Err(Refusal::BadHeader);
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        // Without an early exit, so that it is vectorized.
        let control = value.iter().fold(false, |bad, &b| {
            bad | ((b < 0x20 && b != b'\t') || b == 0x7f)
        });
        if control {
            return Err(Refusal::BadHeader);
        }
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(Refusal::BadFraming);
            }
            let n: u64 = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(Refusal::BadFraming)?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::BadFraming);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
            let is_chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if !is_chunked || chunked.is_some() {
                return Err(Refusal::BadFraming);
            }
            chunked = Some(());
        }
    }
    match (length, chunked) {
        (Some(_), Some(())) => Err(Refusal::BadFraming),
        (Some(n), None) => Ok(Framing::Length(n)),
        (None, Some(())) => Ok(Framing::Chunked),
        (None, None) => Ok(Framing::None),
    }
}

/// As a futures-io stream (the unit tests read it this way).
impl<I: AsyncRead + Unpin> AsyncRead for Lenient<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = match this.poll_next_bytes(cx) {
            Poll::Ready(Ok(bytes)) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                n
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        this.taken(n);
        Poll::Ready(Ok(n))
    }
}

/// As hyper's I/O: the bytes are copied into hyper's (uninitialized) read
/// buffer, which is never zeroed.
impl<I: AsyncRead + Unpin> hyper::rt::Read for Lenient<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = match this.poll_next_bytes(cx) {
            Poll::Ready(Ok(bytes)) => {
                let n = bytes.len().min(buf.remaining());
                buf.put_slice(&bytes[..n]);
                n
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        this.taken(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> hyper::rt::Write for Lenient<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What hyper reads when the client sends `input`, fed to the adapter
    /// in pieces of `step` bytes.
    fn through(input: &[u8], step: usize) -> Vec<u8> {
        struct Pieces<'a>(&'a [u8], usize);
        impl AsyncRead for Pieces<'_> {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                let this = self.get_mut();
                let n = this.0.len().min(this.1).min(buf.len());
                buf[..n].copy_from_slice(&this.0[..n]);
                this.0 = &this.0[n..];
                Poll::Ready(Ok(n))
            }
        }
        let mut l = Lenient::new(Pieces(input, step));
        let mut got = Vec::new();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut buf = [0u8; 7];
        loop {
            match Pin::new(&mut l).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(0)) | Poll::Pending => return got,
                Poll::Ready(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Poll::Ready(Err(e)) => panic!("{e}"),
            }
        }
    }

    fn check(input: &str, want: &str) {
        for step in [1, 3, 8192] {
            let got = through(input.as_bytes(), step);
            assert_eq!(
                String::from_utf8_lossy(&got),
                want,
                "input {input:?}, step {step}"
            );
        }
    }

    fn refused(why: Refusal) -> String {
        format!(
            "GET {REFUSED_PATH}{} HTTP/1.1\r\nhost: dflockd\r\nconnection: close\r\n\r\n",
            why.index()
        )
    }

    #[test]
    fn targets_are_escaped_where_hyper_would_refuse() {
        check(
            "GET /v1/signals?pattern=orders.> HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/signals?pattern=orders.%3E HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        check(
            "GET /a\"#<>`{|}\\^%20 HTTP/1.0\n\n",
            "GET /a%22%23%3C%3E%60{|}\\^%20 HTTP/1.0\n\n",
        );
        check(
            "GET /caf\u{e9} HTTP/1.1\r\n\r\n",
            "GET /caf%C3%A9 HTTP/1.1\r\n\r\n",
        );
        // Untouched: headers, bodies, the next request's head is escaped too.
        check(
            "POST /a> HTTP/1.1\r\nX: <>\r\nContent-Length: 5\r\n\r\n<>GET\r\nGET /b> HTTP/1.1\r\n\r\n",
            "POST /a%3E HTTP/1.1\r\nX: <>\r\nContent-Length: 5\r\n\r\n<>GET\r\nGET /b%3E HTTP/1.1\r\n\r\n",
        );
        // Leading empty lines pass.
        check(
            "\r\n\r\nGET /> HTTP/1.1\r\n\r\n",
            "\r\n\r\nGET /%3E HTTP/1.1\r\n\r\n",
        );
    }

    #[test]
    fn chunked_bodies_are_framed_and_passed() {
        let body = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3;ext=1\r\nGET\r\n2\r\n> \r\n0\r\nTrailer: <\r\n\r\n";
        check(
            &format!("{body}GET /y> HTTP/1.1\r\n\r\n"),
            &format!("{body}GET /y%3E HTTP/1.1\r\n\r\n"),
        );
        // A chunk framing error stops interpretation: the rest passes as it is.
        let bad =
            "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /y> HTTP/1.1\r\n\r\n";
        check(bad, bad);
    }

    #[test]
    fn heads_hyper_must_refuse_become_a_stand_in_request() {
        let cases: &[(&str, Refusal)] = &[
            ("GET /a\tb HTTP/1.1\r\n\r\n", Refusal::ControlInTarget),
            ("GET /a\x01b HTTP/1.1\r\n\r\n", Refusal::ControlInTarget),
            ("GET /a\x7fb HTTP/1.1\r\n\r\n", Refusal::ControlInTarget),
            ("GET  /a HTTP/1.1\r\n\r\n", Refusal::BadRequestLine),
            ("GET /a\r\n\r\n", Refusal::BadRequestLine),
            ("G(T /a HTTP/1.1\r\n\r\n", Refusal::BadRequestLine),
            ("GET /a HTTP/2.0\r\n\r\n", Refusal::BadVersion),
            ("GET /a HTTP/1.1\r\nNo colon\r\n\r\n", Refusal::BadHeader),
            ("GET /a HTTP/1.1\r\nBad Name: x\r\n\r\n", Refusal::BadHeader),
            ("GET /a HTTP/1.1\r\n folded\r\n\r\n", Refusal::BadHeader),
            ("GET /a HTTP/1.1\r\nX: a\x00b\r\n\r\n", Refusal::BadHeader),
            (
                "POST /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::BadFraming,
            ),
            (
                "POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                Refusal::BadFraming,
            ),
            (
                "POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                Refusal::BadFraming,
            ),
            (
                "POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                Refusal::BadFraming,
            ),
        ];
        for (input, why) in cases {
            // Whatever follows the refused head is never read.
            let input = format!("{input}GET /next HTTP/1.1\r\n\r\n");
            check(&input, &refused(*why));
        }
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET_BYTES));
        check(&long_target, &refused(Refusal::TargetTooLong));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        check(&many, &refused(Refusal::TooManyHeaders));
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(MAX_HEAD_BYTES));
        check(&huge, &refused(Refusal::HeadTooLarge));
    }

    #[test]
    fn a_truncated_head_passes_as_it_is() {
        check("GET /a> HTTP/1.1\r\nHost", "GET /a> HTTP/1.1\r\nHost");
    }

    #[test]
    fn refusals_round_trip_through_their_path() {
        for why in Refusal::ALL {
            let path = format!("{REFUSED_PATH}{}", why.index());
            assert_eq!(Refusal::from_path(&path), Some(why));
        }
        assert_eq!(Refusal::from_path("/-/dflockd-refused/99"), None);
        assert_eq!(Refusal::from_path("/v1/stats"), None);
    }

    /// Requests built from arbitrary targets, header values and bodies,
    /// several on one connection, fed in arbitrary pieces.
    fn request_stream() -> impl proptest::strategy::Strategy<Value = (Vec<u8>, usize)> {
        use proptest::prelude::*;
        let byte = proptest::num::u8::ANY;
        let one = (
            proptest::collection::vec(byte, 1..40),
            proptest::collection::vec(byte, 0..20),
            proptest::collection::vec(byte, 0..40),
            any::<bool>(),
        )
            .prop_map(|(target, value, body, chunked)| {
                let mut r = b"POST /".to_vec();
                // No space or LF (they end the target) and no `%` (so the
                // check below can undo the escaping exactly).
                r.extend(target.iter().map(|b| {
                    if matches!(b, b' ' | b'\n' | b'%') {
                        b'_'
                    } else {
                        *b
                    }
                }));
                r.extend_from_slice(b" HTTP/1.1\r\nX: ");
                r.extend(value.iter().map(|b| if *b == b'\n' { b'_' } else { *b }));
                if chunked {
                    r.extend_from_slice(b"\r\nTransfer-Encoding: chunked\r\n\r\n");
                    r.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                    r.extend_from_slice(&body);
                    r.extend_from_slice(b"\r\n0\r\n\r\n");
                } else {
                    r.extend_from_slice(
                        format!("\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    r.extend_from_slice(&body);
                }
                r
            });
        (proptest::collection::vec(one, 1..4), 1usize..64)
            .prop_map(|(reqs, step)| (reqs.concat(), step))
    }

    proptest::proptest! {
        /// Peer bytes never panic the adapter, and what it hands on is
        /// bounded: at most three bytes per byte read plus one stand-in.
        #[test]
        fn arbitrary_bytes_never_panic(
            input in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            step in 1usize..64,
        ) {
            let out = through(&input, step);
            proptest::prop_assert!(out.len() <= 3 * input.len() + 128);
        }

        /// Well-framed requests: bodies and headers pass byte for byte;
        /// only targets change, and only by escaping; each request is
        /// handed on or refused, never merged with the next.
        #[test]
        fn only_targets_change((input, step) in request_stream()) {
            let out = through(&input, step);
            let text = String::from_utf8_lossy(&out);
            if text.contains(REFUSED_PATH) {
                proptest::prop_assert!(text.ends_with("connection: close\r\n\r\n"));
            } else {
                // Undo the escaping of the targets: the input comes back.
                let mut undone = Vec::new();
                let mut rest = &out[..];
                while let Some(at) = rest.windows(6).position(|w| w == b"POST /") {
                    undone.extend_from_slice(&rest[..at + 6]);
                    rest = &rest[at + 6..];
                    let end = rest.iter().position(|b| *b == b' ').expect("target end");
                    let mut t = &rest[..end];
                    while let Some(&b) = t.first() {
                        if b == b'%' && t.len() >= 3 {
                            let hex = std::str::from_utf8(&t[1..3]).expect("hex");
                            let v = u8::from_str_radix(hex, 16).expect("hex");
                            if needs_escape(v) {
                                undone.push(v);
                                t = &t[3..];
                                continue;
                            }
                        }
                        undone.push(b);
                        t = &t[1..];
                    }
                    rest = &rest[end..];
                    let next = rest.windows(6).position(|w| w == b"POST /").unwrap_or(rest.len());
                    undone.extend_from_slice(&rest[..next]);
                    rest = &rest[next..];
                }
                undone.extend_from_slice(rest);
                proptest::prop_assert_eq!(undone, input);
            }
        }
    }
}
