//! Transcript files as data: the parser for the format of
//! `spec/conformance/README.md` and the typed scenario it produces.
//!
//! Parsing does every check that does not need a server, so a broken
//! transcript is reported as `file:line: what is wrong` before a single byte
//! is sent: unknown line kinds, bad escapes, misplaced placeholders, names
//! used before they are bound, I/O on a closed connection, and a `~ stats`
//! poll on a connection that still owes a reply. A transcript has no
//! branches, so these static checks are exact.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

/// One parsed transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// What reports and `expected-failures.txt` call the scenario: the file
    /// name (`lock-fifo.txt`) or a built-in case's name.
    pub name: String,
    /// Where it came from, the prefix of `origin:line` messages: a path, or
    /// `builtin:NAME`.
    pub origin: String,
    /// The `!server-flags:` header split into arguments, if present.
    pub server_flags: Option<Vec<String>>,
    pub steps: Vec<Step>,
}

/// One line that does something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based line number in the transcript.
    pub line: usize,
    /// The text after the `>`/`<`/`~` marker (or the whole line for `@`),
    /// for messages.
    pub source: String,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `@N`
    Select(u32),
    /// `@N close`
    Close(u32),
    /// `> TEXT`: the pieces of TEXT; the runner appends the LF.
    Send(Vec<Text>),
    /// `< PATTERN`
    Expect(Expect),
    /// `~ CHECK`
    Check(Check),
}

/// A piece of the text of a `>` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    /// Bytes after escape processing.
    Bytes(Vec<u8>),
    /// `{name}`: the value bound to `name`.
    Var(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `< <EOF>`: the server closes the connection without sending a byte.
    Eof,
    /// One line matching these pieces, in order.
    Line(Vec<Pat>),
}

/// A piece of a `<` pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pat {
    /// Bytes compared exactly.
    Bytes(Vec<u8>),
    /// `{name}`: the bound value, compared exactly.
    Var(String),
    /// `<TOKEN>` or `<TOKEN:name>`: 32 lowercase hex digits, bound to the
    /// name if there is one.
    Token(Option<String>),
    /// `<INT>`: the longest run of ASCII digits, at least one.
    Int,
    /// `<JSON>`: the rest of the line is one JSON object.
    Json,
    /// `<STATS>`: the rest of the line is a `stats` object (protocol.md §8).
    Stats,
    /// `<ANY>`: the rest of the line, whatever it is (client scenario
    /// scripts only, for what a client may send either way, such as an
    /// optional lease field).
    Any,
}

/// A `~` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// `~ stats ARRAY KEY [absent | FIELD VALUE]`, polled.
    Stats {
        array: StatsArray,
        key: String,
        cond: StatsCond,
    },
    /// `~ increasing NAME NAME ...`: bound tokens strictly increase as strings.
    Increasing(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatsCond {
    /// `~ stats ARRAY KEY`: an entry for KEY exists.
    Present,
    /// `~ stats ARRAY KEY absent`: no entry for KEY.
    Absent,
    /// `~ stats ARRAY KEY FIELD VALUE`: an entry for KEY has FIELD = VALUE
    /// (as numbers when VALUE is an integer, else as strings).
    Equals { field: String, value: String },
}

/// The JSON type of a `stats` member, as protocol.md §8 gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    /// A JSON integer.
    Int,
    /// Any JSON number ≥ 0.
    Num,
}

/// The arrays of the `stats` object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsArray {
    Locks,
    Semaphores,
    IdleLocks,
    IdleSemaphores,
    SignalChannels,
}

impl StatsArray {
    pub const ALL: [StatsArray; 5] = [
        StatsArray::Locks,
        StatsArray::Semaphores,
        StatsArray::IdleLocks,
        StatsArray::IdleSemaphores,
        StatsArray::SignalChannels,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StatsArray::Locks => "locks",
            StatsArray::Semaphores => "semaphores",
            StatsArray::IdleLocks => "idle_locks",
            StatsArray::IdleSemaphores => "idle_semaphores",
            StatsArray::SignalChannels => "signal_channels",
        }
    }

    pub fn from_name(name: &str) -> Option<StatsArray> {
        StatsArray::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The member that names an entry: what `KEY` in a `~ stats` line is
    /// compared with.
    pub fn key_member(self) -> &'static str {
        match self {
            StatsArray::SignalChannels => "pattern",
            _ => "key",
        }
    }

    /// Every member of an entry: name, type, required (protocol.md §8).
    pub fn members(self) -> &'static [(&'static str, Kind, bool)] {
        match self {
            StatsArray::Locks => &[
                ("key", Kind::Str, true),
                ("owner_conn_id", Kind::Int, true),
                ("lease_expires_in_s", Kind::Num, true),
                ("waiters", Kind::Int, true),
            ],
            StatsArray::Semaphores => &[
                ("key", Kind::Str, true),
                ("limit", Kind::Int, true),
                ("holders", Kind::Int, true),
                ("waiters", Kind::Int, true),
            ],
            StatsArray::IdleLocks | StatsArray::IdleSemaphores => {
                &[("key", Kind::Str, true), ("idle_s", Kind::Num, true)]
            }
            StatsArray::SignalChannels => &[
                ("pattern", Kind::Str, true),
                ("group", Kind::Str, false),
                ("listeners", Kind::Int, true),
            ],
        }
    }
}

/// A malformed transcript: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranscriptError {
    pub origin: String,
    /// 1-based; 0 when the error is about the whole file.
    pub line: usize,
    pub kind: TranscriptErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TranscriptErrorKind {
    /// The file could not be read.
    Read(String),
    /// The file is not UTF-8.
    NotUtf8,
    /// A line that is none of the kinds the format defines.
    UnknownLine,
    /// A `!` line other than `!server-flags:`.
    UnknownHeader,
    /// A header after the first line that is not empty or a comment.
    HeaderAfterBody,
    /// A second `!server-flags:` line.
    DuplicateHeader,
    /// `@` not followed by a positive integer (and optionally ` close`).
    BadConnection,
    /// `@N` or `@N close` for a connection that was already closed.
    ConnectionClosed(u32),
    /// `@N close` for a connection no line has used yet.
    NeverOpened(u32),
    /// A `>`, `<` or `~ stats` line after the selected connection was closed.
    NoConnectionSelected,
    /// A backslash sequence the format does not define.
    BadEscape(String),
    /// `{` not followed by `name}`.
    BadSubstitution,
    /// `{name}` or `~ increasing` naming a value no earlier line bound.
    Unbound(String),
    /// `<EOF>` inside a longer pattern, or text after `<JSON>`/`<STATS>`.
    MisplacedPlaceholder(&'static str),
    /// A `~` line that does not parse.
    BadCheck(String),
    /// `~ stats` on a connection that still owes the reply to a request.
    AwaitingReply(u32),
}

impl fmt::Display for TranscriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.origin, self.kind)
        } else {
            write!(f, "{}:{}: {}", self.origin, self.line, self.kind)
        }
    }
}

impl fmt::Display for TranscriptErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TranscriptErrorKind::*;
        match self {
            Read(e) => write!(f, "cannot read transcript: {e}"),
            NotUtf8 => write!(f, "transcript is not UTF-8"),
            UnknownLine => write!(
                f,
                "not a transcript line (expected empty, `#`, `!server-flags:`, `@N`, `>`, `<` or `~`)"
            ),
            UnknownHeader => write!(f, "unknown header (only `!server-flags:` is defined)"),
            HeaderAfterBody => write!(f, "header after the first non-comment line"),
            DuplicateHeader => write!(f, "second `!server-flags:` header"),
            BadConnection => write!(f, "expected `@N` or `@N close` with N a positive integer"),
            ConnectionClosed(n) => write!(f, "connection {n} was closed; its number is not reused"),
            NeverOpened(n) => write!(f, "connection {n} was never opened, so it cannot be closed"),
            NoConnectionSelected => {
                write!(f, "the selected connection was closed; select one with `@N` first")
            }
            BadEscape(s) => write!(f, "invalid escape `{s}`"),
            BadSubstitution => write!(f, "`{{` must start `{{name}}` (write `\\{{` for a literal)"),
            Unbound(n) => write!(f, "`{n}` is not bound by an earlier line"),
            MisplacedPlaceholder(p) => write!(f, "misplaced {p}"),
            BadCheck(s) => write!(f, "bad check: {s}"),
            AwaitingReply(n) => write!(
                f,
                "`~ stats` on connection {n}, which still awaits the reply to a request"
            ),
        }
    }
}

impl std::error::Error for TranscriptError {}

/// Reads and parses a transcript file. The scenario's name is the file name.
pub fn parse_file(path: &Path) -> Result<Scenario, TranscriptError> {
    let origin = path.display().to_string();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| origin.clone());
    let bytes = std::fs::read(path).map_err(|e| TranscriptError {
        origin: origin.clone(),
        line: 0,
        kind: TranscriptErrorKind::Read(e.to_string()),
    })?;
    parse(&name, &origin, &bytes)
}

/// Parses transcript text. `name` is what reports call the scenario,
/// `origin` what error messages print before `:line`.
pub fn parse(name: &str, origin: &str, bytes: &[u8]) -> Result<Scenario, TranscriptError> {
    let err = |line: usize, kind| TranscriptError {
        origin: origin.to_string(),
        line,
        kind,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| err(0, TranscriptErrorKind::NotUtf8))?;
    let mut p = Parser::default();
    for (i, raw) in text.split('\n').enumerate() {
        // Tolerate a file saved with CRLF line ends; a CR meant to be sent
        // is written `\r`.
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        p.line(line, i + 1).map_err(|k| err(i + 1, k))?;
    }
    Ok(Scenario {
        name: name.to_string(),
        origin: origin.to_string(),
        server_flags: p.server_flags,
        steps: p.steps,
    })
}

/// Per-connection bookkeeping for the static checks.
#[derive(Default)]
struct ConnState {
    lines_sent: usize,
    replies_read: usize,
}

struct Parser {
    server_flags: Option<Vec<String>>,
    steps: Vec<Step>,
    body_started: bool,
    selected: Option<u32>,
    conns: HashMap<u32, ConnState>,
    closed: HashSet<u32>,
    bound: HashSet<String>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            server_flags: None,
            steps: Vec::new(),
            body_started: false,
            selected: Some(1),
            conns: HashMap::new(),
            closed: HashSet::new(),
            bound: HashSet::new(),
        }
    }
}

type Res<T> = Result<T, TranscriptErrorKind>;

impl Parser {
    fn line(&mut self, line: &str, n: usize) -> Res<()> {
        if line.is_empty() || line == "#" || line.starts_with("# ") {
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix('!') {
            let flags = rest
                .strip_prefix("server-flags:")
                .ok_or(TranscriptErrorKind::UnknownHeader)?;
            if self.body_started {
                return Err(TranscriptErrorKind::HeaderAfterBody);
            }
            if self.server_flags.is_some() {
                return Err(TranscriptErrorKind::DuplicateHeader);
            }
            self.server_flags = Some(
                flags
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            );
            return Ok(());
        }
        self.body_started = true;
        let (source, action) = if let Some(rest) = line.strip_prefix('@') {
            (line.to_string(), self.at(rest)?)
        } else if line == ">" {
            self.io_conn()?.lines_sent += 1;
            (String::new(), Action::Send(Vec::new()))
        } else if let Some(text) = line.strip_prefix("> ") {
            let pieces = self.send_text(text)?;
            self.io_conn()?.lines_sent += 1;
            (text.to_string(), Action::Send(pieces))
        } else if let Some(pattern) = line.strip_prefix("< ") {
            let (expect, binds) = self.pattern(pattern)?;
            let is_reply = match &expect {
                Expect::Eof => false,
                Expect::Line(pats) => {
                    !matches!(pats.first(), Some(Pat::Bytes(b)) if b.starts_with(b"sig "))
                }
            };
            let conn = self.io_conn()?;
            if is_reply {
                conn.replies_read += 1;
            }
            self.bound.extend(binds);
            (pattern.to_string(), Action::Expect(expect))
        } else if let Some(check) = line.strip_prefix("~ ") {
            (check.to_string(), Action::Check(self.check(check)?))
        } else {
            return Err(TranscriptErrorKind::UnknownLine);
        };
        self.steps.push(Step {
            line: n,
            source,
            action,
        });
        Ok(())
    }

    /// The selected connection, for a line that does I/O on it.
    fn io_conn(&mut self) -> Res<&mut ConnState> {
        let n = self
            .selected
            .ok_or(TranscriptErrorKind::NoConnectionSelected)?;
        Ok(self.conns.entry(n).or_default())
    }

    fn at(&mut self, rest: &str) -> Res<Action> {
        let (num, close) = match rest.split_once(' ') {
            Some((num, "close")) => (num, true),
            Some(_) => return Err(TranscriptErrorKind::BadConnection),
            None => (rest, false),
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TranscriptErrorKind::BadConnection);
        }
        let n: u32 = num
            .parse()
            .map_err(|_| TranscriptErrorKind::BadConnection)?;
        if n == 0 {
            return Err(TranscriptErrorKind::BadConnection);
        }
        if self.closed.contains(&n) {
            return Err(TranscriptErrorKind::ConnectionClosed(n));
        }
        if !close {
            self.selected = Some(n);
            return Ok(Action::Select(n));
        }
        if !self.conns.contains_key(&n) {
            return Err(TranscriptErrorKind::NeverOpened(n));
        }
        self.closed.insert(n);
        if self.selected == Some(n) {
            self.selected = None;
        }
        Ok(Action::Close(n))
    }

    fn send_text(&self, text: &str) -> Res<Vec<Text>> {
        let mut out = Vec::new();
        let mut lit = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' => i = escape(b, i, &mut lit)?,
                b'{' => {
                    let (name, next) = self.substitution(b, i)?;
                    flush(&mut lit, &mut out, Text::Bytes);
                    out.push(Text::Var(name));
                    i = next;
                }
                c => {
                    lit.push(c);
                    i += 1;
                }
            }
        }
        flush(&mut lit, &mut out, Text::Bytes);
        Ok(out)
    }

    /// Parses a `<` pattern; also returns the names it binds, which count as
    /// bound only after the line.
    fn pattern(&self, text: &str) -> Res<(Expect, Vec<String>)> {
        if text == "<EOF>" {
            return Ok((Expect::Eof, Vec::new()));
        }
        let mut out = Vec::new();
        let mut binds = Vec::new();
        let mut lit = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' => i = escape(b, i, &mut lit)?,
                b'{' => {
                    let (name, next) = self.substitution(b, i)?;
                    flush(&mut lit, &mut out, Pat::Bytes);
                    out.push(Pat::Var(name));
                    i = next;
                }
                b'<' => match placeholder(&b[i..]) {
                    Some((None, _)) => {
                        return Err(TranscriptErrorKind::MisplacedPlaceholder(
                            "`<EOF>`: it must be the whole pattern",
                        ))
                    }
                    Some((Some(pat), len)) => {
                        let end = i + len;
                        match &pat {
                            Pat::Json | Pat::Stats if end != b.len() => {
                                return Err(TranscriptErrorKind::MisplacedPlaceholder(
                                    "`<JSON>`/`<STATS>`: it takes the rest of the line",
                                ))
                            }
                            Pat::Token(Some(name)) => binds.push(name.clone()),
                            _ => {}
                        }
                        flush(&mut lit, &mut out, Pat::Bytes);
                        out.push(pat);
                        i = end;
                    }
                    None => {
                        lit.push(b'<');
                        i += 1;
                    }
                },
                c => {
                    lit.push(c);
                    i += 1;
                }
            }
        }
        flush(&mut lit, &mut out, Pat::Bytes);
        Ok((Expect::Line(out), binds))
    }

    /// `{name}` at `b[i]`: the name and the index after the `}`.
    fn substitution(&self, b: &[u8], i: usize) -> Res<(String, usize)> {
        let close = b[i + 1..]
            .iter()
            .position(|&c| c == b'}')
            .ok_or(TranscriptErrorKind::BadSubstitution)?;
        let name = &b[i + 1..i + 1 + close];
        if !is_name(name) {
            return Err(TranscriptErrorKind::BadSubstitution);
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if !self.bound.contains(&name) {
            return Err(TranscriptErrorKind::Unbound(format!("{{{name}}}")));
        }
        Ok((name, i + close + 2))
    }

    fn check(&mut self, text: &str) -> Res<Check> {
        let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
        let bad = |s: &str| TranscriptErrorKind::BadCheck(s.to_string());
        match words.first().copied() {
            Some("increasing") => {
                let names = &words[1..];
                if names.len() < 2 {
                    return Err(bad("`~ increasing` needs at least two names"));
                }
                for name in names {
                    if !is_name(name.as_bytes()) {
                        return Err(bad(&format!("`{name}` is not a name")));
                    }
                    if !self.bound.contains(*name) {
                        return Err(TranscriptErrorKind::Unbound((*name).to_string()));
                    }
                }
                Ok(Check::Increasing(
                    names.iter().map(|s| s.to_string()).collect(),
                ))
            }
            Some("stats") => {
                let (array, key, cond) = match words[1..] {
                    [array, key] => (array, key, StatsCond::Present),
                    [array, key, "absent"] => (array, key, StatsCond::Absent),
                    [array, key, field, value] => (
                        array,
                        key,
                        StatsCond::Equals {
                            field: field.to_string(),
                            value: value.to_string(),
                        },
                    ),
                    _ => {
                        return Err(bad(
                            "expected `~ stats ARRAY KEY`, `~ stats ARRAY KEY absent` or `~ stats ARRAY KEY FIELD VALUE`",
                        ))
                    }
                };
                let array = StatsArray::from_name(array)
                    .ok_or_else(|| bad(&format!("`{array}` is not a stats array")))?;
                if let StatsCond::Equals { field, .. } = &cond {
                    if !array.members().iter().any(|(m, _, _)| m == field) {
                        return Err(bad(&format!(
                            "`{field}` is not a member of {} entries",
                            array.name()
                        )));
                    }
                }
                let sel = self
                    .selected
                    .ok_or(TranscriptErrorKind::NoConnectionSelected)?;
                let conn = self.conns.entry(sel).or_default();
                if !conn.lines_sent.is_multiple_of(3) || conn.lines_sent / 3 > conn.replies_read {
                    return Err(TranscriptErrorKind::AwaitingReply(sel));
                }
                Ok(Check::Stats {
                    array,
                    key: key.to_string(),
                    cond,
                })
            }
            _ => Err(bad("expected `~ stats ...` or `~ increasing ...`")),
        }
    }
}

pub(crate) fn is_name(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

pub(crate) fn flush<T>(lit: &mut Vec<u8>, out: &mut Vec<T>, wrap: fn(Vec<u8>) -> T) {
    if !lit.is_empty() {
        out.push(wrap(std::mem::take(lit)));
    }
}

/// The escape at `b[i]` (a backslash): appends its byte to `lit` and
/// returns the index after it.
pub(crate) fn escape(b: &[u8], i: usize, lit: &mut Vec<u8>) -> Res<usize> {
    let bad = |len: usize| {
        let end = (i + len).min(b.len());
        TranscriptErrorKind::BadEscape(String::from_utf8_lossy(&b[i..end]).into_owned())
    };
    match b.get(i + 1) {
        Some(b'r') => lit.push(b'\r'),
        Some(b't') => lit.push(b'\t'),
        Some(b'\\') => lit.push(b'\\'),
        Some(b'{') => lit.push(b'{'),
        Some(b'x') => {
            let hex = b.get(i + 2..i + 4).ok_or_else(|| bad(4))?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad(4))?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(4));
            }
            lit.push(u8::from_str_radix(hex, 16).map_err(|_| bad(4))?);
            return Ok(i + 4);
        }
        _ => return Err(bad(2)),
    }
    Ok(i + 2)
}

/// A placeholder at the start of `b` (which starts with `<`) and its
/// length. `Some((None, _))` is `<EOF>`, which is only valid as the whole
/// pattern; `None` means the `<` is literal.
pub(crate) fn placeholder(b: &[u8]) -> Option<(Option<Pat>, usize)> {
    for (text, pat) in [
        (&b"<TOKEN>"[..], Some(Pat::Token(None))),
        (b"<INT>", Some(Pat::Int)),
        (b"<JSON>", Some(Pat::Json)),
        (b"<STATS>", Some(Pat::Stats)),
        (b"<EOF>", None),
    ] {
        if b.starts_with(text) {
            return Some((pat, text.len()));
        }
    }
    let rest = b.strip_prefix(b"<TOKEN:")?;
    let end = rest.iter().position(|&c| c == b'>')?;
    let name = &rest[..end];
    if !is_name(name) {
        return None;
    }
    Some((
        Some(Pat::Token(Some(String::from_utf8_lossy(name).into_owned()))),
        b"<TOKEN:".len() + end + 1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Scenario {
        parse("t.txt", "t.txt", text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> String {
        parse("t.txt", "t.txt", text.as_bytes())
            .expect_err("transcript should be rejected")
            .to_string()
    }

    fn actions(text: &str) -> Vec<Action> {
        ok(text).steps.into_iter().map(|s| s.action).collect()
    }

    #[test]
    fn line_kinds() {
        let s = ok("!server-flags: --max-locks  1\n# c\n#\n\n@2\n> l\n>\n< ok <TOKEN:t> 33\n@2 close\n@3\n> r\n> {t}\n");
        assert_eq!(s.server_flags, Some(vec!["--max-locks".into(), "1".into()]));
        assert_eq!(s.steps.len(), 8);
        assert_eq!(s.steps[0].line, 5);
        assert_eq!(
            s.steps[3].action,
            Action::Expect(Expect::Line(vec![
                Pat::Bytes(b"ok ".to_vec()),
                Pat::Token(Some("t".into())),
                Pat::Bytes(b" 33".to_vec()),
            ]))
        );
        assert_eq!(s.steps[4].action, Action::Close(2));
        assert_eq!(s.steps[7].action, Action::Send(vec![Text::Var("t".into())]));
    }

    #[test]
    fn escapes_and_literals() {
        assert_eq!(
            actions(r"> a\r\t\x20\xFF\\\{b}<TOKEN>"),
            vec![Action::Send(vec![Text::Bytes(
                b"a\r\t \xff\\{b}<TOKEN>".to_vec()
            )])]
        );
        // An escaped `<` is never a placeholder; an unknown `<...>` is literal.
        assert_eq!(
            actions(r"< \x3cINT> <int> <TOKEN:> <"),
            vec![Action::Expect(Expect::Line(vec![Pat::Bytes(
                b"<INT> <int> <TOKEN:> <".to_vec()
            )]))]
        );
        assert_eq!(
            actions("< <INT><JSON>"),
            vec![Action::Expect(Expect::Line(vec![Pat::Int, Pat::Json]))]
        );
        assert_eq!(actions("< <EOF>"), vec![Action::Expect(Expect::Eof)]);
    }

    #[test]
    fn checks() {
        assert_eq!(
            actions("~ stats locks k waiters 1\n~ stats idle_locks k\n~ stats semaphores k absent"),
            vec![
                Action::Check(Check::Stats {
                    array: StatsArray::Locks,
                    key: "k".into(),
                    cond: StatsCond::Equals {
                        field: "waiters".into(),
                        value: "1".into()
                    }
                }),
                Action::Check(Check::Stats {
                    array: StatsArray::IdleLocks,
                    key: "k".into(),
                    cond: StatsCond::Present
                }),
                Action::Check(Check::Stats {
                    array: StatsArray::Semaphores,
                    key: "k".into(),
                    cond: StatsCond::Absent
                }),
            ]
        );
        assert_eq!(
            actions("< <TOKEN:a>\n< <TOKEN:b>\n~ increasing a b")[2],
            Action::Check(Check::Increasing(vec!["a".into(), "b".into()]))
        );
    }

    #[test]
    fn malformed_transcripts_name_the_line() {
        for (text, want) in [
            ("> ok\nbogus", "t.txt:2: not a transcript line"),
            ("< x\n!server-flags: -x", "t.txt:2: header after"),
            ("!server-flags: a\n!server-flags: b", "t.txt:2: second"),
            ("!bogus: a", "t.txt:1: unknown header"),
            ("@0", "t.txt:1: expected `@N`"),
            ("@x", "t.txt:1: expected `@N`"),
            ("@1 open", "t.txt:1: expected `@N`"),
            (
                "> a\n@1 close\n> b",
                "t.txt:3: the selected connection was closed",
            ),
            ("> a\n@1 close\n@1", "t.txt:3: connection 1 was closed"),
            ("@2 close", "t.txt:1: connection 2 was never opened"),
            (r"> a\q", "t.txt:1: invalid escape `\\q`"),
            (r"> a\x4", "t.txt:1: invalid escape `\\x4`"),
            (r"> a\xzz", "t.txt:1: invalid escape `\\xzz`"),
            ("> {t}", "t.txt:1: `{t}` is not bound"),
            ("> {t", "t.txt:1: `{` must start"),
            ("> {}", "t.txt:1: `{` must start"),
            ("< <TOKEN:t> {t}", "t.txt:1: `{t}` is not bound"),
            ("< ok <EOF>", "t.txt:1: misplaced `<EOF>`"),
            ("< ok <JSON> x", "t.txt:1: misplaced `<JSON>`"),
            ("~ stats lockz k", "t.txt:1: bad check: `lockz`"),
            ("~ stats locks k holders 1", "t.txt:1: bad check: `holders`"),
            ("~ stats locks", "t.txt:1: bad check: expected"),
            ("~ frobnicate", "t.txt:1: bad check"),
            ("~ increasing a", "t.txt:1: bad check"),
            ("< <TOKEN:a>\n~ increasing a b", "t.txt:2: `b` is not bound"),
            (
                "> l\n> k\n> 0\n~ stats locks k",
                "t.txt:4: `~ stats` on connection 1",
            ),
            (
                "> l\n> k\n~ stats locks k",
                "t.txt:3: `~ stats` on connection 1",
            ),
        ] {
            let got = err(text);
            assert!(
                got.starts_with(want),
                "{text:?}: got {got:?}, want {want:?}"
            );
        }
        assert_eq!(
            parse("t", "t", b"> \xff").unwrap_err().to_string(),
            "t: transcript is not UTF-8"
        );
    }

    #[test]
    fn replies_and_pushes_balance_the_stats_precondition() {
        // Three requests answered, one of them preceded by a push: no
        // request awaits its reply.
        ok("> a\n> b\n> c\n< sig x y\n< ok\n~ stats locks k");
        ok("@2\n> l\n> k\n> 5\n@1\n~ stats locks k waiters 1");
    }

    #[test]
    fn crlf_files_are_tolerated() {
        assert_eq!(
            actions("> a\r\n< b\r\n"),
            vec![
                Action::Send(vec![Text::Bytes(b"a".to_vec())]),
                Action::Expect(Expect::Line(vec![Pat::Bytes(b"b".to_vec())]))
            ]
        );
    }
}
