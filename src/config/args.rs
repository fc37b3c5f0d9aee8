//! The command line, parsed with Go `flag` syntax from the settings table,
//! and the `--help` text rendered from it.
//!
//! argh is not used here: it derives its parser from a struct at compile
//! time and cannot be driven by a table, and dflockd must accept Go syntax
//! anyway (`-port 1`, `--port=1`, a bare `--debug`, `--debug=false`), which
//! argh does not. The rules:
//!
//! * `-flag` and `--flag` are the same flag; `---flag` is bad syntax.
//! * `--flag=value` and `--flag value`; a value may start with `-`.
//! * A boolean flag takes the value after `=`. Otherwise it takes the next
//!   argument if that is a boolean word (`--debug false`); if not, it is
//!   true (`--debug`).
//! * `--version` is a boolean too (`--version=false` turns it off).
//! * If a flag is repeated, the last one wins.
//! * `-h`, `-help` or `--help` stops parsing and asks for help.
//! * An unknown flag is an error, as in Go.
//! * Positional arguments are errors: dflockd takes none. Go would stop
//!   parsing there and ignore the rest, which hides typos.

use std::collections::HashMap;
use std::fmt::Write;

use super::table::{Setting, SETTINGS};
use super::{parse_bool, ConfigError, Origin, COMMAND};

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Args {
    /// `-h`, `-help` or `--help` appeared before any error.
    Help,
    /// `--version` (true) appeared and every flag was known.
    Version,
    /// Run with these flags: the row of each flag given, and its value.
    Run(HashMap<&'static str, String>),
}

/// Parses `args` (without the program name).
pub(super) fn parse(args: &[String]) -> Result<Args, ConfigError> {
    let mut given: HashMap<&'static str, String> = HashMap::new();
    let mut version = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            if let Some(extra) = args.get(i) {
                return Err(unexpected_argument(extra));
            }
            break;
        }
        let body = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            // A lone `-` is an argument in Go, not a flag.
            Some(body) if arg != "-" => body,
            _ => return Err(unexpected_argument(arg)),
        };
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ConfigError::Usage(format!("bad flag syntax: {arg:?}")));
        }
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            return Ok(Args::Help);
        }
        let setting = super::table::by_flag(name);
        let is_bool = name == "version" || setting.is_some_and(Setting::is_bool);
        let value = if is_bool {
            match inline {
                Some(value) => value,
                None => match args.get(i) {
                    Some(next) if parse_bool(next).is_some() => {
                        i += 1;
                        next.clone()
                    }
                    _ => "true".to_owned(),
                },
            }
        } else if setting.is_some() {
            match inline {
                Some(value) => value,
                None => match args.get(i) {
                    Some(next) => {
                        i += 1;
                        next.clone()
                    }
                    None => {
                        return Err(ConfigError::Usage(format!(
                            "flag needs a value: --{name} (see --help)"
                        )))
                    }
                },
            }
        } else {
            return Err(ConfigError::Usage(format!(
                "unknown flag --{name} (see --help)"
            )));
        };
        match setting {
            Some(s) => {
                given.insert(s.flag, value);
            }
            None => {
                version = parse_bool(&value).ok_or(ConfigError::InvalidBool {
                    origin: Origin::Flag("version"),
                    value,
                })?;
            }
        }
    }
    Ok(if version {
        Args::Version
    } else {
        Args::Run(given)
    })
}

fn unexpected_argument(arg: &str) -> ConfigError {
    ConfigError::Usage(format!(
        "unexpected argument {arg:?}: dflockd takes only flags (see --help)"
    ))
}

/// What the program is, above the list of flags.
const DESCRIPTION: &str = "\
dflockd: a lock server with strict FIFO ordering, leases, counting
semaphores and fencing tokens. Every flag falls back to its DFLOCKD_*
environment variable, and a flag given on the command line wins. An empty
or blank variable counts as unset, except for the security settings (auth
token, token file, TLS certificate and key, fence state file, and the
cluster's directory, tokens and TLS files), where it is an error.
Durations are whole seconds. Go syntax works too: -flag value,
-flag=value, a bare boolean flag (= true) and -flag=false. Run
`dflockd conformance --help` for the conformance runner.";

/// Where the help text of each flag starts.
const HELP_COLUMN: usize = 34;
/// The width help lines are wrapped to.
const WIDTH: usize = 100;

/// The `--help` text.
pub(super) fn help() -> String {
    let mut out = format!("Usage: {COMMAND} [--flag value]... [--version]\n\n");
    out.push_str(DESCRIPTION);
    out.push_str("\n\nOptions:\n");
    let mut line = |left: String, text: String| {
        let _ = write!(out, "  {left}");
        if left.len() + 2 >= HELP_COLUMN {
            let _ = write!(out, "\n{:HELP_COLUMN$}", "");
        } else {
            let _ = write!(out, "{:pad$}", "", pad = HELP_COLUMN - 2 - left.len());
        }
        // Word-wrapped to WIDTH, continuation lines under the first.
        let mut col = HELP_COLUMN;
        for (i, word) in text.split(' ').enumerate() {
            if i > 0 && col + 1 + word.len() > WIDTH {
                let _ = write!(out, "\n{:HELP_COLUMN$}", "");
                col = HELP_COLUMN;
            } else if i > 0 {
                out.push(' ');
                col += 1;
            }
            out.push_str(word);
            col += word.len();
        }
        out.push('\n');
    };
    for s in SETTINGS {
        let legacy = s
            .legacy_env
            .map(|v| format!(", legacy {v}"))
            .unwrap_or_default();
        line(
            format!("--{} <{}>", s.flag, s.arg),
            format!(
                "{} (env {}{legacy}, default {})",
                s.help,
                s.env,
                s.default_text()
            ),
        );
    }
    line("--version".into(), "print the version and exit".into());
    line("--help, -h".into(), "display usage information".into());
    out.trim_end().to_owned()
}
