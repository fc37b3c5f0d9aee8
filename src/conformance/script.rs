//! Client scenario scripts (`spec/conformance/client/`) as data: what the
//! scripted server ([`super::serve`]) plays against a connecting client.
//!
//! A script reads like a transcript of the conversation, in the same
//! direction: `>` lines are what the *client* sends (patterns the server
//! checks), `<` lines what the client reads (text the server sends). `~`
//! lines shape how and when the server writes. The format is in
//! `spec/conformance/client/README.md`; this parser does every check that
//! needs no client, so a broken script fails as `file:line: what is wrong`.

use std::collections::HashSet;
use std::fmt;

use super::transcript::{escape, flush, is_name, placeholder, Pat, Text};

/// The listeners of the scripted server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The address the client is given.
    Main,
    /// A second member, which `error_not_leader {peer}` names.
    Peer,
}

impl Listener {
    pub fn name(self) -> &'static str {
        match self {
            Listener::Main => "main",
            Listener::Peer => "peer",
        }
    }

    fn from_name(name: &str) -> Option<Listener> {
        match name {
            "main" => Some(Listener::Main),
            "peer" => Some(Listener::Peer),
            _ => None,
        }
    }
}

/// One parsed script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// The file name without `.txt`: what `start NAME` takes.
    pub name: String,
    /// Where it came from, for `origin:line` messages.
    pub origin: String,
    /// `!client:` lines: what the client's test does.
    pub client: String,
    /// `!correct:` lines: what a correct client does and returns.
    pub correct: String,
    /// `!servers:`: the addresses the client is given, in order.
    pub servers: Vec<Listener>,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based line number in the script.
    pub line: usize,
    /// The line's text after its marker, for messages.
    pub source: String,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `@N [main|peer]`: select the `N`th connection the server accepted
    /// (on either listener), waiting for it; it must have arrived on the
    /// named listener, if one is named.
    Select(u32, Option<Listener>),
    /// `@N close`: the server closes connection `N`.
    Close(u32),
    /// `> PATTERN`: the client sends one line matching the pattern.
    Expect(Vec<Pat>),
    /// `> <EOF>`: the client closes the connection without sending more.
    ExpectEof,
    /// `< TEXT` (with its LF) or `~ write TEXT` (without).
    Send { text: Vec<Text>, lf: bool },
    /// `~ split BYTES MS`: later sends go out `BYTES` bytes per write,
    /// `MS` ms apart; `~ split off` (`None`) ends that.
    Split(Option<(usize, u64)>),
    /// `~ pause MS`: wait before the next line.
    Pause(u64),
    /// `~ within MS`: the next `>` line must arrive within `MS` ms (instead
    /// of the server's read timeout).
    Within(u64),
}

/// A malformed script: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    pub origin: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.origin, self.line, self.message)
    }
}

impl std::error::Error for ScriptError {}

/// Parses script text; `name` is the scenario's name, `origin` what
/// messages print before `:line`.
pub fn parse_script(name: &str, origin: &str, bytes: &[u8]) -> Result<Script, ScriptError> {
    let err = |line: usize, message: String| ScriptError {
        origin: origin.to_string(),
        line,
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| err(0, "script is not UTF-8".into()))?;
    let mut p = Parser {
        script: Script {
            name: name.to_string(),
            origin: origin.to_string(),
            client: String::new(),
            correct: String::new(),
            servers: Vec::new(),
            steps: Vec::new(),
        },
        // `{main}` and `{peer}` are the listeners' addresses.
        bound: ["main", "peer"].into_iter().map(String::from).collect(),
        selected: None,
        seen: HashSet::new(),
        closed: HashSet::new(),
        body: false,
    };
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        p.line(line, i + 1).map_err(|m| err(i + 1, m))?;
    }
    let s = p.script;
    if s.client.is_empty() || s.correct.is_empty() || s.servers.is_empty() {
        return Err(err(
            0,
            "a script needs `!client:`, `!correct:` and `!servers:` headers".into(),
        ));
    }
    if s.steps.is_empty() {
        return Err(err(0, "a script needs at least one step".into()));
    }
    Ok(s)
}

struct Parser {
    script: Script,
    bound: HashSet<String>,
    selected: Option<u32>,
    /// Connections selected so far, in order: `@N` must not skip one.
    seen: HashSet<u32>,
    closed: HashSet<u32>,
    body: bool,
}

impl Parser {
    fn line(&mut self, line: &str, n: usize) -> Result<(), String> {
        if line.is_empty() || line == "#" || line.starts_with("# ") {
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix('!') {
            return self.header(rest);
        }
        self.body = true;
        let (source, action) = if let Some(rest) = line.strip_prefix('@') {
            (line.to_string(), self.at(rest)?)
        } else if line == ">" {
            self.io()?;
            (String::new(), Action::Expect(Vec::new()))
        } else if let Some(pattern) = line.strip_prefix("> ") {
            self.io()?;
            let action = if pattern == "<EOF>" {
                Action::ExpectEof
            } else {
                Action::Expect(self.pattern(pattern)?)
            };
            (pattern.to_string(), action)
        } else if line == "<" {
            self.io()?;
            (
                String::new(),
                Action::Send {
                    text: Vec::new(),
                    lf: true,
                },
            )
        } else if let Some(text) = line.strip_prefix("< ") {
            self.io()?;
            (
                text.to_string(),
                Action::Send {
                    text: self.text(text)?,
                    lf: true,
                },
            )
        } else if let Some(directive) = line.strip_prefix("~ ") {
            (directive.to_string(), self.directive(directive)?)
        } else {
            return Err(
                "not a script line (expected empty, `#`, `!`, `@N`, `>`, `<` or `~`)".into(),
            );
        };
        self.script.steps.push(Step {
            line: n,
            source,
            action,
        });
        Ok(())
    }

    fn header(&mut self, rest: &str) -> Result<(), String> {
        if self.body {
            return Err("header after the first step".into());
        }
        let (key, value) = rest.split_once(':').ok_or("a header is `!name: value`")?;
        let value = value.trim();
        let append = |to: &mut String| {
            if !to.is_empty() {
                to.push(' ');
            }
            to.push_str(value);
        };
        match key {
            "client" => append(&mut self.script.client),
            "correct" => append(&mut self.script.correct),
            "servers" => {
                if !self.script.servers.is_empty() {
                    return Err("second `!servers:` header".into());
                }
                for word in value.split(' ').filter(|w| !w.is_empty()) {
                    let l = Listener::from_name(word)
                        .ok_or_else(|| format!("`{word}` is not `main` or `peer`"))?;
                    self.script.servers.push(l);
                }
            }
            _ => {
                return Err(format!(
                    "unknown header `!{key}:` (expected `!client:`, `!correct:` or `!servers:`)"
                ))
            }
        }
        Ok(())
    }

    fn io(&self) -> Result<(), String> {
        match self.selected {
            Some(_) => Ok(()),
            None => Err(
                "no connection selected: start with `@1`, and select one after `@N close`".into(),
            ),
        }
    }

    fn at(&mut self, rest: &str) -> Result<Action, String> {
        let bad = || "expected `@N`, `@N main`, `@N peer` or `@N close`".to_string();
        let mut words = rest.split(' ');
        let num = words.next().unwrap_or_default();
        let n: u32 = num
            .parse()
            .ok()
            .filter(|n| *n > 0 && num.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(bad)?;
        let what = words.next();
        if words.next().is_some() {
            return Err(bad());
        }
        if self.closed.contains(&n) {
            return Err(format!("connection {n} was closed"));
        }
        if what == Some("close") {
            if !self.seen.contains(&n) {
                return Err(format!("connection {n} was never selected"));
            }
            self.closed.insert(n);
            if self.selected == Some(n) {
                self.selected = None;
            }
            return Ok(Action::Close(n));
        }
        let listener = match what {
            None => None,
            Some(w) => Some(Listener::from_name(w).ok_or_else(bad)?),
        };
        if !self.seen.contains(&n) {
            if n as usize != self.seen.len() + 1 {
                return Err(format!(
                    "connection {n} before connection {}: they are numbered in the order the client opens them",
                    self.seen.len() + 1
                ));
            }
            self.seen.insert(n);
        } else if listener.is_some() {
            return Err("name the listener on a connection's first `@N` only".into());
        }
        self.selected = Some(n);
        Ok(Action::Select(n, listener))
    }

    fn directive(&mut self, text: &str) -> Result<Action, String> {
        let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
        let ms = |w: &str| {
            w.parse::<u64>()
                .ok()
                .filter(|&ms| ms <= 60_000)
                .ok_or_else(|| format!("`{w}` is not a number of milliseconds up to 60000"))
        };
        match words.as_slice() {
            ["split", "off"] => Ok(Action::Split(None)),
            ["split", bytes, pause] => {
                let bytes: usize = bytes
                    .parse()
                    .ok()
                    .filter(|&b| b > 0)
                    .ok_or_else(|| format!("`{bytes}` is not a positive number of bytes"))?;
                Ok(Action::Split(Some((bytes, ms(pause)?))))
            }
            ["pause", pause] => Ok(Action::Pause(ms(pause)?)),
            ["within", limit] => Ok(Action::Within(ms(limit)?)),
            ["write", ..] => {
                self.io()?;
                let rest = text.trim_start().strip_prefix("write ").unwrap_or_default();
                Ok(Action::Send {
                    text: self.text(rest)?,
                    lf: false,
                })
            }
            _ => Err(
                "expected `~ split BYTES MS`, `~ split off`, `~ pause MS`, `~ within MS` or `~ write TEXT`"
                    .into(),
            ),
        }
    }

    /// Text the server sends: escapes and `{name}`.
    fn text(&self, text: &str) -> Result<Vec<Text>, String> {
        let mut out = Vec::new();
        let mut lit = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' => i = escape(b, i, &mut lit).map_err(|e| e.to_string())?,
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

    /// A pattern for what the client sends: escapes, `{name}`, `<INT>`,
    /// `<TOKEN>`, `<TOKEN:name>` and `<ANY>` (the rest of the line).
    fn pattern(&mut self, text: &str) -> Result<Vec<Pat>, String> {
        let mut out = Vec::new();
        let mut lit = Vec::new();
        let mut binds = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' => i = escape(b, i, &mut lit).map_err(|e| e.to_string())?,
                b'{' => {
                    let (name, next) = self.substitution(b, i)?;
                    flush(&mut lit, &mut out, Pat::Bytes);
                    out.push(Pat::Var(name));
                    i = next;
                }
                b'<' if b[i..].starts_with(b"<ANY>") => {
                    if i + 5 != b.len() {
                        return Err("`<ANY>` takes the rest of the line".into());
                    }
                    flush(&mut lit, &mut out, Pat::Bytes);
                    out.push(Pat::Any);
                    i += 5;
                }
                b'<' => match placeholder(&b[i..]) {
                    Some((Some(pat @ (Pat::Int | Pat::Token(_))), len)) => {
                        if let Pat::Token(Some(name)) = &pat {
                            binds.push(name.clone());
                        }
                        flush(&mut lit, &mut out, Pat::Bytes);
                        out.push(pat);
                        i += len;
                    }
                    Some(_) => {
                        return Err(
                            "a client line takes `<INT>`, `<TOKEN>`, `<TOKEN:name>` or `<ANY>` (and `<EOF>` alone)"
                                .into(),
                        )
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
        self.bound.extend(binds);
        Ok(out)
    }

    fn substitution(&self, b: &[u8], i: usize) -> Result<(String, usize), String> {
        let bad = || "`{` must start `{name}` (write `\\{` for a literal)".to_string();
        let close = b[i + 1..].iter().position(|&c| c == b'}').ok_or_else(bad)?;
        let name = &b[i + 1..i + 1 + close];
        if !is_name(name) {
            return Err(bad());
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if !self.bound.contains(&name) {
            return Err(format!("`{{{name}}}` is not bound by an earlier line"));
        }
        Ok((name, i + close + 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "!client: do it\n!correct: right\n!servers: main peer\n";

    fn ok(body: &str) -> Script {
        parse_script("t", "t.txt", format!("{HEAD}{body}").as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(body: &str) -> String {
        parse_script("t", "t.txt", format!("{HEAD}{body}").as_bytes())
            .expect_err("script should be rejected")
            .to_string()
    }

    #[test]
    fn lines() {
        let s = ok("@1 main\n> l\n> k <INT> <ANY>\n>\n~ split 1 5\n< ok {peer}\n~ split off\n~ within 2000\n> <TOKEN:t>\n< ok {t}\n~ pause 10\n~ write ok\n@1 close\n@2\n> <EOF>\n");
        assert_eq!(s.client, "do it");
        assert_eq!(s.servers, [Listener::Main, Listener::Peer]);
        let actions: Vec<Action> = s.steps.into_iter().map(|s| s.action).collect();
        assert_eq!(actions[0], Action::Select(1, Some(Listener::Main)));
        assert_eq!(
            actions[2],
            Action::Expect(vec![
                Pat::Bytes(b"k ".to_vec()),
                Pat::Int,
                Pat::Bytes(b" ".to_vec()),
                Pat::Any
            ])
        );
        assert_eq!(actions[3], Action::Expect(vec![]));
        assert_eq!(actions[4], Action::Split(Some((1, 5))));
        assert_eq!(
            actions[5],
            Action::Send {
                text: vec![Text::Bytes(b"ok ".to_vec()), Text::Var("peer".into())],
                lf: true
            }
        );
        assert_eq!(actions[7], Action::Within(2000));
        assert_eq!(
            actions[11],
            Action::Send {
                text: vec![Text::Bytes(b"ok".to_vec())],
                lf: false
            }
        );
        assert_eq!(actions[12], Action::Close(1));
        assert_eq!(actions[14], Action::ExpectEof);
    }

    #[test]
    fn malformed_scripts_name_the_line() {
        for (body, want) in [
            ("> l", "t.txt:4: no connection selected"),
            ("@2", "t.txt:4: connection 2 before connection 1"),
            ("@1\n@1 peer", "t.txt:5: name the listener"),
            ("@1 side", "t.txt:4: expected `@N`"),
            ("@1\n> <ANY> x", "t.txt:5: `<ANY>` takes the rest"),
            ("@1\n> <JSON>", "t.txt:5: a client line takes"),
            ("@1\n< {t}", "t.txt:5: `{t}` is not bound"),
            ("@1\n~ split 0 5", "t.txt:5: `0` is not a positive"),
            ("@1\n~ pause 70000", "t.txt:5: `70000` is not a number"),
            ("@1\n~ frob", "t.txt:5: expected `~ split"),
            ("@1\n!client: late", "t.txt:5: header after"),
            ("@1\n@1 close\n> x", "t.txt:6: no connection selected"),
            ("@1\n@1 close\n@1", "t.txt:6: connection 1 was closed"),
            ("@1\nbogus", "t.txt:5: not a script line"),
        ] {
            let got = err(body);
            assert!(
                got.starts_with(want),
                "{body:?}: got {got:?}, want {want:?}"
            );
        }
        let no_head = parse_script("t", "t.txt", b"@1\n> x\n").unwrap_err();
        assert!(
            no_head.to_string().contains("needs `!client:`"),
            "{no_head}"
        );
    }
}
