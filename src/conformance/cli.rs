//! The command-line conformance runner, shared by `dflockd conformance`
//! and the `dflockd-conformance` binary: runs the transcripts of
//! `spec/conformance/` (the copy built into the binary, or `--dir`)
//! against a dflockd-compatible server, prints one line per case and the
//! summary `N passed, N failed, N skipped`, and exits 1 if any case failed
//! (2 for a usage error). `dflockd conformance serve` is the scripted
//! server for client authors instead ([`super::serve`]).
//!
//! Which server: `--addr HOST:PORT` is one that is already running, with
//! default settings unless `--assume-flags` says which flags it was
//! started with; scenarios that need other flags are skipped, saying so.
//! `--spawn 'COMMAND {port} {flags}'` starts the server under test itself
//! ([`super::spawn`]): once with no flags for the scenarios that share a
//! server, and once per scenario that needs flags, so every case runs.
//!
//! Which cases: all of them, or those named by `--case` (repeatable);
//! `--list` prints them with the flags each needs, `--dump DIR` writes the
//! built-in transcripts to a directory, and `--skip-file` lists cases to
//! skip, one per line as `name  # reason` (a skip without a reason is an
//! error). A name that names no case gets a "did you mean".
//!
//! With `--auth-token` or `--tls`, every connection the runner opens goes
//! through a local relay (`relay.rs`) that authenticates first and/or
//! speaks TLS to the server, so the transcripts run unchanged. `--tls-ca
//! FILE` verifies the server certificate against that PEM file (and
//! implies `--tls`); without it the certificate is not verified (traffic
//! is encrypted, the peer is not authenticated), which suits a test server
//! with a throwaway self-signed certificate. `--tls-server-name` names the
//! certificate to expect (default: the host of `--addr`, or `127.0.0.1`).

use std::any::Any;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use argh::FromArgs;

use super::relay;
use super::spawn::{self, Template};
use super::{
    case_name, did_you_mean, embedded_transcripts, load_dir, load_embedded, run_cases, CaseReport,
    CaseResult, ExpectedFailures, Outcome, RunOptions, Scenario, Target,
};
use crate::client::{client_config_from_ca_file, TlsOptions};

/// Run the dflockd conformance suite against a server (`dflockd conformance
/// serve --help`: the scripted server for testing clients).
#[derive(FromArgs)]
struct Args {
    /// server under test, HOST:PORT (or --spawn)
    #[argh(option)]
    addr: Option<String>,
    /// start the server under test: a command split on spaces, with
    /// `{port}` (a free loopback port) and a word `{flags}` (the server
    /// flags of each case), e.g. 'dflockd --port {port} {flags}'
    #[argh(option)]
    spawn: Option<String>,
    /// seconds a --spawn server gets to start listening (default 10)
    #[argh(option, default = "10")]
    spawn_timeout: u64,
    /// the flags the server at --addr was started with: cases that need
    /// exactly these run, the others are skipped
    #[argh(option)]
    assume_flags: Option<String>,
    /// run only this case (repeatable); see --list
    #[argh(option)]
    case: Vec<String>,
    /// list the cases and the server flags each needs, then exit
    #[argh(switch)]
    list: bool,
    /// write the transcripts built into this binary to DIR, then exit
    #[argh(option)]
    dump: Option<PathBuf>,
    /// authenticate every connection with this token first
    #[argh(option)]
    auth_token: Option<String>,
    /// connect over TLS (verified with --tls-ca; unverified without it)
    #[argh(switch)]
    tls: bool,
    /// PEM file of CA certificates to verify the server with (implies --tls)
    #[argh(option)]
    tls_ca: Option<PathBuf>,
    /// name the server certificate must carry (default: the host of --addr)
    #[argh(option)]
    tls_server_name: Option<String>,
    /// file of cases to skip: `name  # reason` per line
    #[argh(option)]
    skip_file: Option<PathBuf>,
    /// directory of transcripts to run instead of the copy of
    /// spec/conformance built into this binary (only those)
    #[argh(option)]
    dir: Option<PathBuf>,
    /// file of cases expected to fail (`name reason` per line, as
    /// spec/conformance/expected-failures.txt)
    #[argh(option)]
    expected_failures: Option<PathBuf>,
    /// seconds to wait for each reply line and each connect (default 5)
    #[argh(option, default = "5")]
    read_timeout: u64,
}

/// Runs the conformance command with `args` (the words after the command
/// name); `command` is what `--help` and errors call it. Prints the report
/// on standard output and returns the exit status: 0 when every case
/// passed or was skipped, 1 when one failed, 2 for a usage error.
pub fn main(command: &str, args: &[&str]) -> u8 {
    if args.first() == Some(&"serve") {
        return super::serve::main(&format!("{command} serve"), &args[1..]);
    }
    let args = match Args::from_args(&[command], args) {
        Ok(a) => a,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    0
                }
                Err(()) => {
                    eprintln!("{}", early.output);
                    2
                }
            };
        }
    };
    match run(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("{command}: {e}");
            2
        }
    }
}

/// Runs the suite; `Ok(false)` when a case failed. Every usage error is
/// returned (and so printed) once, before any byte is sent.
fn run(args: &Args) -> Result<bool, String> {
    let mut cases = match &args.dir {
        Some(dir) => load_dir(dir).map_err(|e| e.to_string())?,
        None => load_embedded(),
    };
    let names: Vec<String> = cases.iter().map(|c| case_name(c).to_string()).collect();
    let known = |name: &str, what: &str| -> Result<(), String> {
        if names.iter().any(|n| n == name) {
            return Ok(());
        }
        Err(format!(
            "{what}`{name}` names no case{}",
            did_you_mean(name, names.iter().map(String::as_str))
        ))
    };
    for name in &args.case {
        known(name, "--case ")?;
    }
    let skips = match &args.skip_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--skip-file: cannot read {}: {e}", path.display()))?;
            parse_skips(&path.display().to_string(), &text)?
        }
        None => BTreeMap::new(),
    };
    for (name, (_, line, origin)) in &skips {
        known(name, &format!("{origin}:{line}: "))?;
    }
    let expected = match &args.expected_failures {
        Some(path) => ExpectedFailures::load(path).map_err(|e| e.to_string())?,
        None => ExpectedFailures::none(),
    };
    expected
        .check_names(names.iter().map(String::as_str))
        .map_err(|e| e.to_string())?;
    if !args.case.is_empty() {
        cases.retain(|c| args.case.iter().any(|n| n == case_name(c)));
    }

    if args.list {
        let mut out = std::io::stdout().lock();
        for case in &cases {
            let line = match case {
                Ok(Scenario {
                    name,
                    server_flags: Some(flags),
                    ..
                }) if !flags.is_empty() => format!("{name}  (needs {})", flags.join(" ")),
                _ => case_name(case).to_string(),
            };
            // A closed pipe (`| head`) ends the listing quietly.
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
        return Ok(true);
    }
    if let Some(dir) = &args.dump {
        if args.dir.is_some() {
            return Err("--dump writes the transcripts built into this binary; drop --dir".into());
        }
        return dump(dir, &cases).map(|()| true);
    }

    let plan = plan(args)?;
    let opts = RunOptions {
        read_timeout: Duration::from_secs(args.read_timeout.max(1)),
        ..RunOptions::default()
    };
    let wrap = relay_for(args)?;
    let spawn_within = Duration::from_secs(args.spawn_timeout.max(1));
    // Spawned servers, when --spawn: each behind the relay, if any.
    let template = match &plan {
        Plan::Spawn(t) => Some(t.clone()),
        Plan::Addr { .. } => None,
    };
    let wrap_spawned = wrap.clone();
    let factory = move |flags: &[String]| -> Result<(SocketAddr, Box<dyn Any>), String> {
        let template = template.as_ref().ok_or("no --spawn command")?;
        let server = spawn::start(template, flags, spawn_within)?;
        let addr = wrap_spawned(server.addr(), false)?;
        Ok((addr, Box::new(server)))
    };
    let (target, _shared) = match &plan {
        Plan::Addr { addr, assumed } => (
            Target {
                addr: Some(wrap(*addr, true)?),
                assumed_flags: assumed.clone(),
                factory: None,
            },
            None,
        ),
        Plan::Spawn(_) => {
            // The shared server, only if some case needs default settings.
            let plain = cases.iter().any(|c| match c {
                Ok(s) => s.server_flags.as_deref().unwrap_or_default().is_empty(),
                Err(_) => false,
            });
            let shared = if plain { Some(factory(&[])?) } else { None };
            (
                Target {
                    addr: shared.as_ref().map(|(addr, _)| *addr),
                    assumed_flags: Vec::new(),
                    factory: Some(&factory),
                },
                shared,
            )
        }
    };

    // Skipped cases never reach the server.
    let cases: Vec<Result<Scenario, CaseResult>> = cases
        .into_iter()
        .map(|c| match c {
            Ok(s) => match skips.get(&s.name) {
                Some((reason, _, _)) => Err(CaseResult::new(
                    s.name.clone(),
                    Outcome::Skipped(reason.clone()),
                )),
                None => Ok(s),
            },
            failed => failed,
        })
        .collect();
    let report = run_cases(
        cases,
        &target,
        &expected,
        &opts,
        &mut |case: &CaseReport| {
            println!("{case}");
        },
    );
    if let Some(why) = &report.stopped {
        println!("{why}");
    }
    let builtin_failed = report
        .problems()
        .any(|c| matches!(&c.result.outcome, Outcome::Failed(why) if why.starts_with("builtin:")));
    if builtin_failed {
        println!(
            "(builtin:NAME is the copy of spec/conformance/NAME built into this binary; \
             `--dump DIR` writes them out)"
        );
    }
    let s = report.summary();
    let failed = s.failed + s.unexpected_passes;
    let mut line = format!(
        "{} passed, {failed} failed, {} skipped",
        s.passed, s.skipped
    );
    if s.expected_failures > 0 {
        line.push_str(&format!(" ({} expected failures)", s.expected_failures));
    }
    if s.not_run > 0 {
        line.push_str(&format!(", {} not run", s.not_run));
    }
    println!("{line}");
    Ok(s.ok())
}

/// Where the server under test comes from.
enum Plan {
    Addr {
        addr: SocketAddr,
        assumed: Vec<String>,
    },
    Spawn(Template),
}

fn plan(args: &Args) -> Result<Plan, String> {
    match (&args.addr, &args.spawn) {
        (Some(_), Some(_)) => {
            Err("--addr and --spawn both name the server under test; give one".into())
        }
        (None, None) => Err("say which server to test: --addr HOST:PORT or --spawn COMMAND".into()),
        (None, Some(command)) => {
            if args.assume_flags.is_some() {
                return Err(
                    "--assume-flags describes a server at --addr; --spawn starts each \
                     server with the flags its cases need"
                        .into(),
                );
            }
            if args.auth_token.is_some() {
                return Err(
                    "--auth-token cannot be combined with --spawn: the cases that need a \
                     token start their own server with it"
                        .into(),
                );
            }
            Template::parse(command).map(Plan::Spawn)
        }
        (Some(addr), None) => Ok(Plan::Addr {
            addr: resolve(addr)?,
            assumed: args
                .assume_flags
                .as_deref()
                .unwrap_or_default()
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(String::from)
                .collect(),
        }),
    }
}

/// Puts the relay the flags ask for (auth, TLS) in front of a server
/// address; the flag makes a first connection up front, for a clear error.
type Wrap = std::sync::Arc<dyn Fn(SocketAddr, bool) -> Result<SocketAddr, String>>;

fn relay_for(args: &Args) -> Result<Wrap, String> {
    let token = args.auth_token.clone();
    Ok(match tls_options(args)? {
        Some(tls) => std::sync::Arc::new(move |addr: SocketAddr, check: bool| {
            let mut tls = tls.clone();
            if tls.server_name.is_none() {
                tls.server_name = Some(addr.ip().to_string());
            }
            relay::start_tls(&addr.to_string(), tls, token.clone(), check)
        }),
        None => match token {
            Some(token) => std::sync::Arc::new(move |addr: SocketAddr, check: bool| {
                relay::start_auth(addr, token.clone(), check)
            }),
            None => std::sync::Arc::new(|addr: SocketAddr, _| Ok(addr)),
        },
    })
}

/// Writes `cases` (and `expected-failures.txt`) from the copy built into
/// the binary to `dir`.
fn dump(dir: &Path, cases: &[Result<Scenario, CaseResult>]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--dump: {}: {e}", dir.display()))?;
    let mut written = 0;
    for (name, bytes) in embedded_transcripts() {
        if !cases.iter().any(|c| case_name(c) == *name) {
            continue;
        }
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("--dump: {}: {e}", path.display()))?;
        written += 1;
    }
    let expected = dir.join("expected-failures.txt");
    std::fs::write(&expected, super::suite::EXPECTED_FAILURES_TEXT)
        .map_err(|e| format!("--dump: {}: {e}", expected.display()))?;
    println!(
        "wrote {written} transcripts and expected-failures.txt to {}",
        dir.display()
    );
    Ok(())
}

/// The TLS settings the flags ask for, if any.
fn tls_options(args: &Args) -> Result<Option<TlsOptions>, String> {
    if !args.tls && args.tls_ca.is_none() {
        if args.tls_server_name.is_some() {
            return Err("--tls-server-name needs --tls or --tls-ca".into());
        }
        return Ok(None);
    }
    let config = match &args.tls_ca {
        Some(ca) => client_config_from_ca_file(ca).map_err(|e| format!("--tls-ca: {e}"))?,
        None => {
            eprintln!("warning: --tls without --tls-ca: the server certificate is not verified");
            relay::unverified_config()?
        }
    };
    let mut opts = TlsOptions::new(config);
    opts.server_name = args.tls_server_name.clone();
    if opts.server_name.is_none() {
        if let Some(addr) = &args.addr {
            // The host part of HOST:PORT, without IPv6 brackets.
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            opts.server_name = Some(host.trim_start_matches('[').trim_end_matches(']').into());
        }
    }
    Ok(Some(opts))
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("--addr {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {addr}: resolves to no address"))
}

/// Name → (reason, line, origin). Lines are `name  # reason`; blank lines
/// and lines starting with `#` are ignored.
fn parse_skips(
    origin: &str,
    text: &str,
) -> Result<BTreeMap<String, (String, usize, String)>, String> {
    let mut skips = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once('#').unwrap_or((line, ""));
        let (name, reason) = (name.trim(), reason.trim());
        if name.contains(char::is_whitespace) {
            return Err(format!(
                "{origin}:{}: `{name}`: one case name per line, then `# reason`",
                i + 1
            ));
        }
        if reason.is_empty() {
            return Err(format!(
                "{origin}:{}: skip of `{name}` has no reason (write `{name}  # why`)",
                i + 1
            ));
        }
        if skips
            .insert(
                name.to_string(),
                (reason.to_string(), i + 1, origin.to_string()),
            )
            .is_some()
        {
            return Err(format!("{origin}:{}: `{name}` is listed twice", i + 1));
        }
    }
    Ok(skips)
}

#[cfg(test)]
mod tests {
    use super::parse_skips;

    #[test]
    fn skip_file() {
        let skips = parse_skips(
            "s",
            "# comment\n\nsignal-basic.txt   # no pub/sub\ntimed-lease-expiry.txt #slow\n",
        )
        .unwrap();
        assert_eq!(skips["signal-basic.txt"].0, "no pub/sub");
        assert_eq!(skips["timed-lease-expiry.txt"].0, "slow");
        assert!(parse_skips("s", "a.txt\n")
            .unwrap_err()
            .contains("s:1: skip of `a.txt` has no reason"));
        assert!(parse_skips("s", "a.txt #  \n")
            .unwrap_err()
            .contains("no reason"));
        assert!(parse_skips("s", "a.txt b # r\n")
            .unwrap_err()
            .contains("one case"));
        assert!(parse_skips("s", "a #r\na # s\n")
            .unwrap_err()
            .contains("twice"));
    }
}
