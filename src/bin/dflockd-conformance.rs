//! `dflockd-conformance`: runs the transcripts of `spec/conformance/` and
//! the runner's built-in timed cases against any dflockd-compatible server
//! at `--addr`, prints one line per case and the summary
//! `N passed, N failed, N skipped`, and exits 1 if any case failed
//! (2 for a usage error).
//!
//! Scenarios that need server flags (`!server-flags:`) are skipped: the
//! tool cannot restart a server it did not start. `--skip-file` lists
//! further cases to skip, one per line as `name  # reason`; a skip without
//! a reason is an error. With `--auth-token`, every connection the runner
//! opens goes through a local relay that authenticates first, so the
//! transcripts run unchanged against a server that requires a token.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use dflockd::conformance::{
    builtin_cases, load_dir, run_case, CaseReport, CaseResult, ExpectedFailures, Outcome, Report,
    RunOptions, Scenario, Target,
};

/// Run the dflockd conformance suite against a running server.
#[derive(FromArgs)]
struct Args {
    /// server address, HOST:PORT
    #[argh(option)]
    addr: String,
    /// authenticate every connection with this token first
    #[argh(option)]
    auth_token: Option<String>,
    /// file of cases to skip: `name  # reason` per line
    #[argh(option)]
    skip_file: Option<PathBuf>,
    /// directory of transcripts (default spec/conformance)
    #[argh(option, default = "PathBuf::from(\"spec/conformance\")")]
    dir: PathBuf,
    /// file of cases expected to fail (`name reason` per line, as
    /// spec/conformance/expected-failures.txt)
    #[argh(option)]
    expected_failures: Option<PathBuf>,
    /// seconds to wait for each reply line (default 5)
    #[argh(option, default = "5")]
    read_timeout: u64,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dflockd-conformance: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the suite; `Ok(false)` when a case failed.
fn run(args: &Args) -> Result<bool, String> {
    let server = resolve(&args.addr)?;
    let skips = match &args.skip_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            parse_skips(&path.display().to_string(), &text)?
        }
        None => BTreeMap::new(),
    };
    let expected = match &args.expected_failures {
        Some(path) => ExpectedFailures::load(path).map_err(|e| e.to_string())?,
        None => ExpectedFailures::none(),
    };
    let addr = match &args.auth_token {
        Some(token) => start_auth_relay(server, token.clone())?,
        None => server,
    };
    let opts = RunOptions {
        read_timeout: Duration::from_secs(args.read_timeout.max(1)),
        ..RunOptions::default()
    };
    let target = Target {
        addr,
        factory: None,
    };

    let mut cases = load_dir(&args.dir).map_err(|e| e.to_string())?;
    cases.extend(builtin_cases().into_iter().map(Ok));
    let name_of = |c: &Result<Scenario, CaseResult>| match c {
        Ok(s) => s.name.clone(),
        Err(r) => r.name.clone(),
    };
    let names: Vec<String> = cases.iter().map(name_of).collect();
    for (name, (_, line, origin)) in &skips {
        if !names.contains(name) {
            return Err(format!("{origin}:{line}: `{name}` names no case"));
        }
    }
    for name in expected.names() {
        if !names.iter().any(|n| n == name) {
            return Err(format!("expected failure `{name}` names no case"));
        }
    }

    let mut report = Report::default();
    for case in cases {
        let result = match case {
            Ok(scenario) => match skips.get(&scenario.name) {
                Some((reason, _, _)) => CaseResult {
                    name: scenario.name.clone(),
                    outcome: Outcome::Skipped(reason.clone()),
                },
                None => run_case(&scenario, &target, &opts),
            },
            Err(result) => result,
        };
        let case = CaseReport {
            expected_failure: expected.reason(&result.name).map(String::from),
            result,
        };
        println!("{case}");
        report.cases.push(case);
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
    println!("{line}");
    Ok(s.ok())
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

/// Starts a loopback relay: each accepted connection is joined to a new
/// connection to `server` that has already sent `auth` and read `ok`. If
/// authentication fails, the client's connection is closed at once.
fn start_auth_relay(server: SocketAddr, token: String) -> Result<SocketAddr, String> {
    // Check the token once up front, for a clear error.
    authed(server, &token).map_err(|e| format!("authenticating to {server}: {e}"))?;
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot start the relay: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let token = token.clone();
            std::thread::spawn(move || {
                if let Ok(upstream) = authed(server, &token) {
                    pipe(client, upstream);
                }
            });
        }
    });
    Ok(addr)
}

/// A connection to `server` on which `auth` answered `ok`.
fn authed(server: SocketAddr, token: &str) -> Result<TcpStream, String> {
    let mut s =
        TcpStream::connect_timeout(&server, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    s.write_all(format!("auth\n_\n{token}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    // Byte by byte, so nothing after the reply is swallowed.
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(1, &s);
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    if line != b"ok\n" {
        return Err(format!(
            "auth answered {:?}",
            String::from_utf8_lossy(&line).trim_end()
        ));
    }
    Ok(s)
}

/// Copies bytes both ways until each side ends, passing each end of
/// stream on as a half-close.
fn pipe(client: TcpStream, upstream: TcpStream) {
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || copy_then_close(client, upstream));
    copy_then_close(u2, c2);
    let _ = up.join();
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::parse_skips;

    #[test]
    fn skip_file() {
        let skips = parse_skips(
            "s",
            "# comment\n\nsignal-basic.txt   # no pub/sub\ntimed-lease-expiry #slow\n",
        )
        .unwrap();
        assert_eq!(skips["signal-basic.txt"].0, "no pub/sub");
        assert_eq!(skips["timed-lease-expiry"].0, "slow");
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
