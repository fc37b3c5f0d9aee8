//! Running a set of transcripts: server selection per scenario, the
//! expected-failures list, the early stop against a server that never
//! answers, and the report.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::run::{run_scenario, CaseResult, Outcome, RunOptions};
use super::transcript::{parse, parse_file, Scenario};

/// Starts a fresh server with the given command-line flags (plus a listen
/// address of its choosing) and returns its address and a guard that stops
/// it when dropped.
pub type ServerFactory = dyn Fn(&[String]) -> Result<(SocketAddr, Box<dyn Any>), String>;

/// The servers a run talks to.
#[derive(Clone, Default)]
pub struct Target<'a> {
    /// The running server that scenarios may share, if any.
    pub addr: Option<SocketAddr>,
    /// The flags that server was started with (`--assume-flags`); empty
    /// for default settings. Scenarios whose `!server-flags:` are exactly
    /// these (in any order) run on it; the others need the factory.
    pub assumed_flags: Vec<String>,
    /// Starts a fresh server for each scenario that cannot run on `addr`.
    /// `None` when the runner is pointed at an existing server: such
    /// scenarios are then skipped, saying why.
    pub factory: Option<&'a ServerFactory>,
}

impl fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("assumed_flags", &self.assumed_flags)
            .field("factory", &self.factory.is_some())
            .finish()
    }
}

/// Whether two flag lists configure a server the same way: the same
/// `--flag value` pairs in any order, `--flag=value` and `--flag value`
/// alike.
pub fn same_flags(a: &[String], b: &[String]) -> bool {
    fn pairs(flags: &[String]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut words = flags.iter().peekable();
        while let Some(w) = words.next() {
            let pair = match w.split_once('=') {
                Some((f, v)) if w.starts_with("--") => (f.to_string(), v.to_string()),
                _ => match words.peek() {
                    Some(v) if !v.starts_with("--") => {
                        (w.clone(), words.next().cloned().unwrap_or_default())
                    }
                    _ => (w.clone(), String::new()),
                },
            };
            out.push(pair);
        }
        out.sort();
        out
    }
    pairs(a) == pairs(b)
}

/// Runs one scenario against `target`: on its running server when the
/// scenario's `!server-flags:` match that server's, else on a fresh server
/// from the factory, else not at all (skipped, saying what it needs).
pub fn run_case(scenario: &Scenario, target: &Target<'_>, opts: &RunOptions) -> CaseResult {
    let flags = scenario.server_flags.as_deref().unwrap_or_default();
    if let Some(addr) = target.addr {
        if same_flags(flags, &target.assumed_flags) {
            return run_scenario(addr, scenario, opts);
        }
    }
    let Some(factory) = target.factory else {
        let why = if flags.is_empty() {
            format!(
                "needs a server with default settings (this run assumes `{}`)",
                target.assumed_flags.join(" ")
            )
        } else {
            format!(
                "needs server flags `{0}` (run with --spawn, or against a server started \
                 with them and --assume-flags '{0}')",
                flags.join(" ")
            )
        };
        return CaseResult::new(&scenario.name, Outcome::Skipped(why));
    };
    match factory(flags) {
        Ok((addr, guard)) => {
            let result = run_scenario(addr, scenario, opts);
            drop(guard);
            result
        }
        Err(e) => CaseResult::new(
            &scenario.name,
            Outcome::Failed(format!(
                "{}: cannot start a server with flags `{}`: {e}",
                scenario.origin,
                flags.join(" ")
            )),
        ),
    }
}

/// `name` is not a case of `names`: a hint, when one is close. A name
/// without `.txt` whose `.txt` form exists, else the first case whose
/// name contains it.
pub fn did_you_mean<'a>(name: &str, names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    let with_txt = format!("{name}.txt");
    let hit = names
        .iter()
        .find(|n| **n == with_txt)
        .or_else(|| names.iter().find(|n| !name.is_empty() && n.contains(name)));
    match hit {
        Some(n) => format!("; did you mean `{n}`?"),
        None => String::new(),
    }
}

/// The scenarios a build is known to fail, with the reason for each
/// (`expected-failures.txt`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedFailures {
    origin: String,
    /// Name → (reason, line).
    entries: BTreeMap<String, (String, usize)>,
}

impl ExpectedFailures {
    /// An empty list.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads a list. Each line is a scenario name, whitespace, and the
    /// reason; `#` starts a comment.
    pub fn load(path: &Path) -> Result<Self, SuiteError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SuiteError::Read(path.to_path_buf(), e.to_string()))?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses list text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self, SuiteError> {
        let mut entries = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |message: String| SuiteError::ExpectedFailures {
                origin: origin.to_string(),
                line: i + 1,
                message,
            };
            let (name, reason) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad(format!("`{line}` has no reason")))?;
            if entries
                .insert(name.to_string(), (reason.trim().to_string(), i + 1))
                .is_some()
            {
                return Err(bad(format!("`{name}` is listed twice")));
            }
        }
        Ok(ExpectedFailures {
            origin: origin.to_string(),
            entries,
        })
    }

    /// Checks that every entry names one of `names`.
    pub fn check_names<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<(), SuiteError> {
        for (name, (_, line)) in &self.entries {
            if !names.clone().into_iter().any(|n| n == name) {
                return Err(SuiteError::UnknownExpected {
                    origin: self.origin.clone(),
                    line: *line,
                    name: name.clone(),
                    hint: did_you_mean(name, names.clone()),
                });
            }
        }
        Ok(())
    }

    /// Why `name` is expected to fail, if it is.
    pub fn reason(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(|(r, _)| r.as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

/// A run that could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuiteError {
    /// A file or directory could not be read.
    Read(PathBuf, String),
    /// A malformed line in an expected-failures list.
    ExpectedFailures {
        origin: String,
        line: usize,
        message: String,
    },
    /// An expected-failures entry that names no scenario.
    UnknownExpected {
        origin: String,
        line: usize,
        name: String,
        /// `; did you mean ...?`, or empty.
        hint: String,
    },
}

impl fmt::Display for SuiteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuiteError::Read(path, e) => write!(f, "cannot read {}: {e}", path.display()),
            SuiteError::ExpectedFailures {
                origin,
                line,
                message,
            } => write!(f, "{origin}:{line}: {message}"),
            SuiteError::UnknownExpected {
                origin,
                line,
                name,
                hint,
            } => write!(f, "{origin}:{line}: `{name}` names no scenario{hint}"),
        }
    }
}

impl std::error::Error for SuiteError {}

/// How a case counts in the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed,
    Skipped,
    /// Failed, and listed in expected-failures.txt.
    ExpectedFailure,
    /// Passed although listed in expected-failures.txt: the entry is stale.
    UnexpectedPass,
}

/// One case of a run, with its expected-failure entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseReport {
    pub result: CaseResult,
    /// The reason from expected-failures.txt, if listed.
    pub expected_failure: Option<String>,
}

impl CaseReport {
    pub fn name(&self) -> &str {
        &self.result.name
    }

    pub fn verdict(&self) -> Verdict {
        match (&self.result.outcome, &self.expected_failure) {
            (Outcome::Skipped(_), _) => Verdict::Skipped,
            (Outcome::Passed, None) => Verdict::Passed,
            (Outcome::Passed, Some(_)) => Verdict::UnexpectedPass,
            (Outcome::Failed(_), None) => Verdict::Failed,
            (Outcome::Failed(_), Some(_)) => Verdict::ExpectedFailure,
        }
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        let reason = self.expected_failure.as_deref().unwrap_or("");
        match (&self.result.outcome, self.verdict()) {
            (Outcome::Failed(why), Verdict::ExpectedFailure) => {
                write!(f, "xfail {name}: expected ({reason}): {why}")
            }
            (_, Verdict::UnexpectedPass) => write!(
                f,
                "XPASS {name}: passed, but expected-failures.txt lists it ({reason}); remove the entry"
            ),
            _ => write!(f, "{}", self.result),
        }
    }
}

/// Counts per verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub expected_failures: usize,
    pub unexpected_passes: usize,
    /// Cases left out by an early stop.
    pub not_run: usize,
}

impl Summary {
    /// No unexpected failure, no stale expected-failure entry, and no case
    /// left out.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.unexpected_passes == 0 && self.not_run == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped ({} expected failures, {} unexpected passes)",
            self.passed, self.failed, self.skipped, self.expected_failures, self.unexpected_passes
        )?;
        if self.not_run > 0 {
            write!(f, ", {} not run", self.not_run)?;
        }
        Ok(())
    }
}

/// Every case of a run, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub cases: Vec<CaseReport>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// The cases an early stop left out, in order.
    pub not_run: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            not_run: self.not_run.len(),
            ..Summary::default()
        };
        for case in &self.cases {
            match case.verdict() {
                Verdict::Passed => s.passed += 1,
                Verdict::Failed => s.failed += 1,
                Verdict::Skipped => s.skipped += 1,
                Verdict::ExpectedFailure => s.expected_failures += 1,
                Verdict::UnexpectedPass => s.unexpected_passes += 1,
            }
        }
        s
    }

    /// The case named `name`.
    pub fn case(&self, name: &str) -> Option<&CaseReport> {
        self.cases.iter().find(|c| c.name() == name)
    }

    /// Cases that make the run fail: unexpected failures and stale entries.
    pub fn problems(&self) -> impl Iterator<Item = &CaseReport> {
        self.cases
            .iter()
            .filter(|c| matches!(c.verdict(), Verdict::Failed | Verdict::UnexpectedPass))
    }
}

/// Loads every `*.txt` transcript in `dir` (except `expected-failures.txt`),
/// sorted by name. A transcript that does not parse is returned as its
/// error, so the run reports it as a failed case.
pub fn load_dir(dir: &Path) -> Result<Vec<Result<Scenario, CaseResult>>, SuiteError> {
    let read_err = |e: std::io::Error| SuiteError::Read(dir.to_path_buf(), e.to_string());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let name = entry.map_err(read_err)?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".txt") && name != "expected-failures.txt" {
            names.push(name.into_owned());
        }
    }
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| {
            parse_file(&dir.join(&name)).map_err(|e| {
                CaseResult::new(name, Outcome::Failed(format!("malformed transcript: {e}")))
            })
        })
        .collect())
}

/// The transcripts of `spec/conformance/` as they were when this crate was
/// built (see `build.rs`), parsed like [`load_dir`] would: sorted by name,
/// a transcript that does not parse returned as its failed case. Their
/// origin is `builtin:NAME`, so a failure says which copy ran.
pub fn load_embedded() -> Vec<Result<Scenario, CaseResult>> {
    embedded::TRANSCRIPTS
        .iter()
        .map(|(name, bytes)| {
            parse(name, &format!("builtin:{name}"), bytes).map_err(|e| {
                CaseResult::new(*name, Outcome::Failed(format!("malformed transcript: {e}")))
            })
        })
        .collect()
}

/// The name and bytes of every transcript built into the binary, sorted by
/// name (what `--dump` writes out).
pub fn embedded_transcripts() -> &'static [(&'static str, &'static [u8])] {
    embedded::TRANSCRIPTS
}

/// The name of a loaded case, parsed or not.
pub fn case_name(case: &Result<Scenario, CaseResult>) -> &str {
    match case {
        Ok(s) => &s.name,
        Err(r) => &r.name,
    }
}

/// The embedded `spec/conformance/expected-failures.txt`.
pub fn embedded_expected_failures() -> Result<ExpectedFailures, SuiteError> {
    ExpectedFailures::parse(
        "spec/conformance/expected-failures.txt",
        embedded::EXPECTED_FAILURES,
    )
}

/// The text of the embedded `expected-failures.txt` (what `--dump` writes).
pub(crate) const EXPECTED_FAILURES_TEXT: &str = embedded::EXPECTED_FAILURES;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/conformance_embedded.rs"));
}

/// Runs every transcript in `dir` against `target`, comparing failures
/// with `expected`.
pub fn run_all(
    dir: &Path,
    target: &Target<'_>,
    expected: &ExpectedFailures,
    opts: &RunOptions,
) -> Result<Report, SuiteError> {
    run_all_with(dir, target, expected, opts, &mut |_| {})
}

/// [`run_all`], calling `on_case` as each case finishes.
pub fn run_all_with(
    dir: &Path,
    target: &Target<'_>,
    expected: &ExpectedFailures,
    opts: &RunOptions,
    on_case: &mut dyn FnMut(&CaseReport),
) -> Result<Report, SuiteError> {
    let cases = load_dir(dir)?;
    expected.check_names(cases.iter().map(case_name))?;
    Ok(run_cases(cases, target, expected, opts, on_case))
}

/// Runs `cases` in order against `target`, calling `on_case` as each
/// finishes. After `opts.stop_after_silent` [silent](CaseResult::silent)
/// cases in a row it stops: the report says why and lists the rest as not
/// run.
pub fn run_cases(
    cases: Vec<Result<Scenario, CaseResult>>,
    target: &Target<'_>,
    expected: &ExpectedFailures,
    opts: &RunOptions,
    on_case: &mut dyn FnMut(&CaseReport),
) -> Report {
    let mut report = Report::default();
    let mut silent_in_a_row = 0;
    let mut cases = cases.into_iter();
    for case in cases.by_ref() {
        let result = match case {
            Ok(scenario) => run_case(&scenario, target, opts),
            Err(result) => result,
        };
        // A skipped case says nothing about the server either way.
        if result.silent {
            silent_in_a_row += 1;
        } else if !matches!(result.outcome, Outcome::Skipped(_)) {
            silent_in_a_row = 0;
        }
        let report_case = CaseReport {
            expected_failure: expected.reason(&result.name).map(String::from),
            result,
        };
        on_case(&report_case);
        report.cases.push(report_case);
        if opts.stop_after_silent > 0 && silent_in_a_row >= opts.stop_after_silent {
            report.stopped = Some(format!(
                "stopped after {silent_in_a_row} cases in a row heard nothing from the server \
                 (no connection, or not a byte within {}s): is it running, and does it speak \
                 this protocol?",
                opts.read_timeout.as_secs_f64()
            ));
            break;
        }
    }
    report.not_run = cases.map(|c| case_name(&c).to_string()).collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_failures_file() {
        let list = ExpectedFailures::parse(
            "x",
            "# comment\n\nsignal-basic.txt   not implemented # trailing\n  a.txt\tb c\n",
        )
        .unwrap();
        assert_eq!(list.reason("signal-basic.txt"), Some("not implemented"));
        assert_eq!(list.reason("a.txt"), Some("b c"));
        assert_eq!(list.reason("b.txt"), None);
        assert_eq!(
            ExpectedFailures::parse("x", "\na.txt\n")
                .unwrap_err()
                .to_string(),
            "x:2: `a.txt` has no reason"
        );
        assert_eq!(
            ExpectedFailures::parse("x", "a.txt r\na.txt s\n")
                .unwrap_err()
                .to_string(),
            "x:2: `a.txt` is listed twice"
        );
    }

    #[test]
    fn flags_compare_as_pairs() {
        let f = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(same_flags(
            &f("--auth-token s3cret --read-timeout 1"),
            &f("--read-timeout=1 --auth-token s3cret")
        ));
        assert!(!same_flags(&f("--max-locks 1"), &f("--max-locks 2")));
        assert!(!same_flags(&f("--max-locks 1"), &[]));
        assert!(same_flags(&[], &[]));
    }

    #[test]
    fn hints() {
        let names = ["ping.txt", "lock-fifo.txt", "lock-renew.txt"];
        assert_eq!(did_you_mean("ping", names), "; did you mean `ping.txt`?");
        assert_eq!(
            did_you_mean("fifo", names),
            "; did you mean `lock-fifo.txt`?"
        );
        assert_eq!(did_you_mean("zzz", names), "");
    }

    #[test]
    fn verdicts() {
        let case = |outcome, xf: Option<&str>| CaseReport {
            result: CaseResult::new("c.txt", outcome),
            expected_failure: xf.map(String::from),
        };
        let fail = || Outcome::Failed("c.txt:3: expected \"ok\", got \"error\"".into());
        let report = Report {
            cases: vec![
                case(Outcome::Passed, None),
                case(fail(), None),
                case(Outcome::Skipped("needs server flags".into()), Some("r")),
                case(fail(), Some("known")),
                case(Outcome::Passed, Some("stale")),
            ],
            ..Report::default()
        };
        let s = report.summary();
        assert_eq!(
            s.to_string(),
            "1 passed, 1 failed, 1 skipped (1 expected failures, 1 unexpected passes)"
        );
        assert!(!s.ok());
        assert_eq!(report.problems().count(), 2);
        let lines: Vec<String> = report.cases.iter().map(|c| c.to_string()).collect();
        assert_eq!(lines[0], "pass  c.txt");
        assert_eq!(
            lines[1],
            "FAIL  c.txt: c.txt:3: expected \"ok\", got \"error\""
        );
        assert_eq!(lines[2], "skip  c.txt: needs server flags");
        assert!(lines[3].starts_with("xfail c.txt: expected (known): c.txt:3"));
        assert!(lines[4].starts_with("XPASS c.txt: passed"));
    }
}
