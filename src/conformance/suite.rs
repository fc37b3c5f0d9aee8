//! Running a directory of transcripts: server selection per scenario, the
//! expected-failures list, and the report.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::builtin::builtin_cases;
use super::run::{run_scenario, CaseResult, Outcome, RunOptions};
use super::transcript::{parse, parse_file, Scenario};

/// Starts a fresh server with the given command-line flags (plus a listen
/// address of its choosing) and returns its address and a guard that stops
/// it when dropped.
pub type ServerFactory = dyn Fn(&[String]) -> Result<(SocketAddr, Box<dyn Any>), String>;

/// The servers a run talks to.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// Where scenarios without `!server-flags:` run; they may share it.
    pub addr: SocketAddr,
    /// Starts a fresh server for each scenario with `!server-flags:`.
    /// `None` when the runner is pointed at an existing server: such
    /// scenarios are then skipped.
    pub factory: Option<&'a ServerFactory>,
}

impl fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("factory", &self.factory.is_some())
            .finish()
    }
}

/// Runs one scenario against `target`: on its shared server, on a fresh
/// one when it has `!server-flags:`, or not at all when no fresh server
/// can be had.
pub fn run_case(scenario: &Scenario, target: &Target<'_>, opts: &RunOptions) -> CaseResult {
    let Some(flags) = &scenario.server_flags else {
        return run_scenario(target.addr, scenario, opts);
    };
    let Some(factory) = target.factory else {
        return CaseResult {
            name: scenario.name.clone(),
            outcome: Outcome::Skipped(format!("needs server flags `{}`", flags.join(" "))),
        };
    };
    match factory(flags) {
        Ok((addr, guard)) => {
            let result = run_scenario(addr, scenario, opts);
            drop(guard);
            result
        }
        Err(e) => CaseResult {
            name: scenario.name.clone(),
            outcome: Outcome::Failed(format!(
                "{}: cannot start a server with flags `{}`: {e}",
                scenario.origin,
                flags.join(" ")
            )),
        },
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
            SuiteError::UnknownExpected { origin, line, name } => {
                write!(f, "{origin}:{line}: `{name}` names no scenario")
            }
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
}

impl Summary {
    /// No unexpected failure and no stale expected-failure entry.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.unexpected_passes == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped ({} expected failures, {} unexpected passes)",
            self.passed, self.failed, self.skipped, self.expected_failures, self.unexpected_passes
        )
    }
}

/// Every case of a run, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub cases: Vec<CaseReport>,
}

impl Report {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
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
            parse_file(&dir.join(&name)).map_err(|e| CaseResult {
                name,
                outcome: Outcome::Failed(format!("malformed transcript: {e}")),
            })
        })
        .collect())
}

/// The transcripts of `spec/conformance/` as they were when this crate was
/// built (see `build.rs`), parsed like [`load_dir`] would: sorted by name,
/// a transcript that does not parse returned as its failed case.
pub fn load_embedded() -> Vec<Result<Scenario, CaseResult>> {
    embedded::TRANSCRIPTS
        .iter()
        .map(|(name, bytes)| {
            parse(name, &format!("spec/conformance/{name}"), bytes).map_err(|e| CaseResult {
                name: (*name).to_string(),
                outcome: Outcome::Failed(format!("malformed transcript: {e}")),
            })
        })
        .collect()
}

/// The embedded `spec/conformance/expected-failures.txt`.
pub fn embedded_expected_failures() -> Result<ExpectedFailures, SuiteError> {
    ExpectedFailures::parse(
        "spec/conformance/expected-failures.txt",
        embedded::EXPECTED_FAILURES,
    )
}

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/conformance_embedded.rs"));
}

/// Runs every transcript in `dir` (and the built-in timed cases when
/// `opts.builtin`) against `target`, comparing failures with `expected`.
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
    let mut cases = load_dir(dir)?;
    let builtin = builtin_cases();
    for name in expected.names() {
        let known = cases.iter().any(|c| match c {
            Ok(s) => s.name == name,
            Err(r) => r.name == name,
        }) || builtin.iter().any(|s| s.name == name);
        if !known {
            let line = expected.entries.get(name).map_or(0, |(_, l)| *l);
            return Err(SuiteError::UnknownExpected {
                origin: expected.origin.clone(),
                line,
                name: name.to_string(),
            });
        }
    }
    if opts.builtin {
        cases.extend(builtin.into_iter().map(Ok));
    }
    let mut report = Report::default();
    for case in cases {
        let result = match case {
            Ok(scenario) => run_case(&scenario, target, opts),
            Err(result) => result,
        };
        let report_case = CaseReport {
            expected_failure: expected.reason(&result.name).map(String::from),
            result,
        };
        on_case(&report_case);
        report.cases.push(report_case);
    }
    Ok(report)
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
    fn verdicts() {
        let case = |outcome, xf: Option<&str>| CaseReport {
            result: CaseResult {
                name: "c.txt".into(),
                outcome,
            },
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
