//! Replaying one scenario against a server address.
//!
//! A failure names the transcript line, what came instead (quoted, cut at
//! [`QUOTE_BYTES`](super::matcher::QUOTE_BYTES)), and the request that got
//! the wrong reply. A case that heard nothing at all from the server (no
//! connection, or no byte before the read timeout) is marked
//! [`silent`](CaseResult::silent), so a run can stop early against a server
//! that never answers.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{Conn, ReadLine};
use super::matcher::{describe_entries, match_line, quoted, show, stats_holds};
use super::transcript::{Action, Check, Expect, Pat, Scenario, Step, Text};

/// How the runner behaves; `Default` is what README.md describes.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// How long one `<` line (or one `~ stats` poll), and one connect, may
    /// wait. 5 s.
    pub read_timeout: Duration,
    /// Pause between two `stats` requests of a `~ stats` poll. 10 ms.
    pub poll_interval: Duration,
    /// Stop the run after this many [silent](CaseResult::silent) cases in
    /// a row; the rest are reported as not run. 3; 0 never stops.
    pub stop_after_silent: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            read_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(10),
            stop_after_silent: 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The first failure, as `origin:line: what happened`.
    Failed(String),
    /// Not run, and why.
    Skipped(String),
}

/// The result of one scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    pub outcome: Outcome,
    /// Failed without hearing a byte from the server: a connection could
    /// not be opened, or a read timed out before anything arrived.
    pub silent: bool,
}

impl CaseResult {
    /// A result that is not [silent](CaseResult::silent).
    pub fn new(name: impl Into<String>, outcome: Outcome) -> CaseResult {
        CaseResult {
            name: name.into(),
            outcome,
            silent: false,
        }
    }
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Passed => write!(f, "pass  {}", self.name),
            Outcome::Failed(why) => write!(f, "FAIL  {}: {why}", self.name),
            Outcome::Skipped(why) => write!(f, "skip  {}: {why}", self.name),
        }
    }
}

/// Replays `scenario` against the server at `addr`, ignoring its
/// `!server-flags:` header (the caller chose the server), and closes every
/// connection it opened.
pub fn run_scenario(addr: SocketAddr, scenario: &Scenario, opts: &RunOptions) -> CaseResult {
    let mut run = Run {
        addr,
        opts,
        conns: BTreeMap::new(),
        vars: HashMap::new(),
        selected: Some(1),
        heard: false,
        no_answer: false,
        wrong_reply: false,
    };
    let mut outcome = Outcome::Passed;
    let mut silent = false;
    for step in &scenario.steps {
        if let Err(why) = run.step(step) {
            let request = run.awaiting();
            outcome = Outcome::Failed(format!("{}:{}: {why}{request}", scenario.origin, step.line));
            silent = run.no_answer && !run.heard && !run.conns.values().any(Conn::heard);
            break;
        }
    }
    for (_, conn) in std::mem::take(&mut run.conns) {
        conn.close();
    }
    CaseResult {
        name: scenario.name.clone(),
        outcome,
        silent,
    }
}

struct Run<'a> {
    addr: SocketAddr,
    opts: &'a RunOptions,
    /// Open connections by number; closed ones are removed.
    conns: BTreeMap<u32, Conn>,
    vars: HashMap<String, Vec<u8>>,
    selected: Option<u32>,
    /// Whether a connection closed by the transcript had heard anything.
    heard: bool,
    /// Set by a failure that is the server not answering (connect failed,
    /// read timed out) rather than answering wrongly.
    no_answer: bool,
    /// Set by a failure on a reply line that did not match its pattern.
    wrong_reply: bool,
}

impl Run<'_> {
    /// `" (request: ...)"`, for a failure message: the request a wrong
    /// reply answered, else the oldest unanswered request on the selected
    /// connection; empty when there is none.
    fn awaiting(&self) -> String {
        let conn = self.selected.and_then(|n| self.conns.get(&n));
        let req = if self.wrong_reply {
            conn.and_then(Conn::last_answered)
        } else {
            conn.and_then(Conn::awaiting)
        };
        let Some(req) = req else {
            return String::new();
        };
        let lines: Vec<String> = req.iter().map(|l| quoted(l)).collect();
        let incomplete = if req.len() < 3 {
            format!(", {} of its 3 lines sent", req.len())
        } else {
            String::new()
        };
        format!(" (request: {}{incomplete})", lines.join(" "))
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match &step.action {
            Action::Select(n) => {
                self.selected = Some(*n);
                Ok(())
            }
            Action::Close(n) => {
                if let Some(conn) = self.conns.remove(n) {
                    self.heard |= conn.heard();
                    conn.close();
                }
                if self.selected == Some(*n) {
                    self.selected = None;
                }
                Ok(())
            }
            Action::Send(pieces) => {
                let mut bytes = Vec::new();
                for piece in pieces {
                    match piece {
                        Text::Bytes(b) => bytes.extend_from_slice(b),
                        Text::Var(name) => bytes.extend_from_slice(self.var(name)?),
                    }
                }
                bytes.push(b'\n');
                let (n, conn) = self.conn()?;
                conn.send(&bytes)
                    .map_err(|e| format!("cannot send on connection {n}: {e}"))
            }
            Action::Expect(Expect::Eof) => {
                let timeout = self.opts.read_timeout;
                let (_, conn) = self.conn()?;
                let res = conn.expect_eof(timeout);
                res.map_err(|got| {
                    self.no_answer = matches!(got, ReadLine::TimedOut { .. });
                    format!("expected \"<EOF>\", got {}", describe_read(&got, timeout))
                })
            }
            Action::Expect(Expect::Line(pats)) => self.expect_line(&step.source, pats),
            Action::Check(Check::Increasing(names)) => {
                for pair in names.windows(2) {
                    let (a, b) = (self.var(&pair[0])?, self.var(&pair[1])?);
                    if a >= b {
                        return Err(format!(
                            "expected {} < {}, got {} = {} and {} = {}",
                            pair[0],
                            pair[1],
                            pair[0],
                            show(a),
                            pair[1],
                            show(b)
                        ));
                    }
                }
                Ok(())
            }
            Action::Check(Check::Stats { array, key, cond }) => {
                let timeout = self.opts.read_timeout;
                let interval = self.opts.poll_interval;
                let deadline = Instant::now() + timeout;
                let (_, conn) = self.conn()?;
                let mut last;
                loop {
                    let stats = match poll_stats(conn, deadline, timeout) {
                        Ok(stats) => stats,
                        Err(e) => {
                            self.no_answer = !conn.heard();
                            return Err(e);
                        }
                    };
                    if stats_holds(&stats, *array, key, cond)? {
                        return Ok(());
                    }
                    last = describe_entries(&stats, *array, key);
                    if Instant::now() + interval >= deadline {
                        break;
                    }
                    std::thread::sleep(interval);
                }
                Err(format!(
                    "stats check \"{}\" did not hold within {}; last: {last}",
                    step.source,
                    secs(timeout)
                ))
            }
        }
    }

    fn expect_line(&mut self, source: &str, pats: &[Pat]) -> Result<(), String> {
        let timeout = self.opts.read_timeout;
        let (_, conn) = self.conn()?;
        let got = conn.read_line(timeout);
        let line = match got {
            ReadLine::Line(line) => line,
            other => {
                self.no_answer = matches!(other, ReadLine::TimedOut { .. });
                return Err(format!(
                    "expected \"{source}\", got {}",
                    describe_read(&other, timeout)
                ));
            }
        };
        match match_line(pats, &self.vars, &line) {
            Ok(binds) => {
                self.vars.extend(binds);
                Ok(())
            }
            Err(why) => {
                self.wrong_reply = !line.starts_with(b"sig ");
                // For a plain literal the two lines say it all.
                let detail = if pats.iter().all(|p| matches!(p, Pat::Bytes(_))) {
                    String::new()
                } else {
                    format!(" ({why})")
                };
                Err(format!(
                    "expected \"{source}\", got {}{detail}",
                    quoted(&line)
                ))
            }
        }
    }

    fn var(&self, name: &str) -> Result<&[u8], String> {
        self.vars
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("`{name}` is not bound"))
    }

    /// The selected connection, opened on first use.
    fn conn(&mut self) -> Result<(u32, &mut Conn), String> {
        let n = self
            .selected
            .ok_or("no connection selected (the selected one was closed)")?;
        if !self.conns.contains_key(&n) {
            let conn = Conn::connect(self.addr, self.opts.read_timeout).map_err(|e| {
                self.no_answer = true;
                format!("cannot open connection {n} to {}: {e}", self.addr)
            })?;
            self.conns.insert(n, conn);
        }
        let conn = self.conns.get_mut(&n).ok_or("connection vanished")?;
        Ok((n, conn))
    }
}

/// Sends one `stats` request and parses its `ok <json>` reply.
fn poll_stats(conn: &mut Conn, deadline: Instant, timeout: Duration) -> Result<Value, String> {
    conn.send(b"stats\n_\n\n")
        .map_err(|e| format!("cannot send stats: {e}"))?;
    let line = match conn.read_reply(deadline) {
        ReadLine::Line(line) => line,
        other => {
            return Err(format!(
                "expected the reply to stats, got {}",
                describe_read(&other, timeout)
            ))
        }
    };
    let json = line
        .strip_prefix(b"ok ")
        .ok_or_else(|| format!("stats answered {}", quoted(&line)))?;
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| format!("stats answered invalid JSON ({e}): {}", quoted(&line)))?;
    if !v.is_object() {
        return Err(format!("stats answered {}", quoted(&line)));
    }
    Ok(v)
}

pub(crate) fn describe_read(got: &ReadLine, timeout: Duration) -> String {
    let partial = |p: &[u8]| {
        if p.is_empty() {
            String::new()
        } else {
            format!(" after the partial line {}", quoted(p))
        }
    };
    match got {
        ReadLine::Line(line) => quoted(line),
        ReadLine::Eof { partial: p } => format!("end of stream{}", partial(p)),
        ReadLine::TimedOut { partial: p } if p.is_empty() => {
            format!("nothing within {}", secs(timeout))
        }
        ReadLine::TimedOut { partial: p } => {
            format!("no LF within {}{}", secs(timeout), partial(p))
        }
        ReadLine::Failed(e) => format!("a read error: {e}"),
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
