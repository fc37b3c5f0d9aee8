//! The users' side on the command line: the subcommands of `dflockd`
//! other than the server itself, one module each.
//!
//! * `dflockd lock KEY [flags] -- COMMAND [ARGS...]` ([`lock`]): hold a
//!   lock (or a semaphore slot) around a command, as `flock(1)` does for a
//!   file;
//! * `dflockd stats` ([`stats`]), `dflockd signal CHANNEL PAYLOAD`
//!   ([`signal`]) and `dflockd listen PATTERN` ([`listen`]): small
//!   companions in the same style;
//! * `dflockd top` ([`top`]): a refreshing terminal view of the busiest
//!   keys, read from the HTTP port's bounded views;
//! * `dflockd conformance ...`: the conformance runner and the scripted
//!   server ([`crate::conformance::cli`]).
//!
//! They share the connection flags ([`Endpoint`]) and the exit statuses of
//! [`exit`], which follow `sysexits.h` so a shell script can tell "try
//! again later" (75) from "cannot reach the server" (69). Everything goes
//! through the client library ([`crate::client`]).

pub mod listen;
pub mod lock;
pub mod signal;
pub mod stats;
pub mod top;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use argh::FromArgs;

use crate::client::{client_config_from_ca_file, Error, TlsOptions};

/// Exit statuses of the client subcommands (`sysexits.h` names).
pub mod exit {
    /// `EX_USAGE`: bad flags, an unreadable or empty token file, a request
    /// the server can never grant as asked (a semaphore limit that
    /// disagrees with the existing one).
    pub const USAGE: u8 = 64;
    /// `EX_UNAVAILABLE`: the server could not be reached, or TLS failed,
    /// or it answered something this protocol does not define.
    pub const UNAVAILABLE: u8 = 69;
    /// `EX_TEMPFAIL`: not now: the lock was not granted in time, the
    /// server asked to come back later (draining, a full queue or key
    /// budget, no leader found), or the lock was lost while held.
    pub const TEMPFAIL: u8 = 75;
    /// `EX_NOPERM`: the server refused the token.
    pub const NOPERM: u8 = 77;
}

/// The exit status for a client error.
pub fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Timeout
        | Error::MaxLocks
        | Error::MaxWaiters
        | Error::Draining
        | Error::NotLeader(_)
        | Error::LeaseExpired => exit::TEMPFAIL,
        Error::Auth => exit::NOPERM,
        Error::LimitMismatch | Error::Invalid(_) | Error::TlsConfig(_) => exit::USAGE,
        Error::AlreadyEnqueued
        | Error::NotEnqueued
        | Error::Server
        | Error::Io(_)
        | Error::Tls(_)
        | Error::Protocol(_) => exit::UNAVAILABLE,
    }
}

/// If `args` (the process arguments after the program name) start with a
/// subcommand, runs it and returns its exit status; `None` means "run the
/// server".
pub fn run_subcommand(args: &[OsString]) -> Option<u8> {
    let first = args.first()?.to_str()?;
    let rest = &args[1..];
    let code = match first {
        "lock" => lock::main("dflockd lock", rest),
        "stats" => with_str_args("dflockd stats", rest, stats::main),
        "signal" => with_str_args("dflockd signal", rest, signal::main),
        "listen" => with_str_args("dflockd listen", rest, listen::main),
        "top" => with_str_args("dflockd top", rest, top::main),
        "conformance" => with_str_args("dflockd conformance", rest, |c, a| {
            crate::conformance::cli::main(c, a)
        }),
        _ => return None,
    };
    Some(code)
}

/// Runs `f` on `args` as UTF-8 strings, refusing any that is not.
fn with_str_args(command: &str, args: &[OsString], f: impl Fn(&str, &[&str]) -> u8) -> u8 {
    match str_args(command, args) {
        Ok(args) => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            f(command, &args)
        }
        Err(code) => code,
    }
}

fn str_args(command: &str, args: &[OsString]) -> Result<Vec<String>, u8> {
    args.iter()
        .map(|a| {
            a.to_str().map(String::from).ok_or_else(|| {
                eprintln!("{command}: argument {a:?} is not valid UTF-8");
                exit::USAGE
            })
        })
        .collect()
}

/// Parses `args` with argh; `--help` prints and is `Err(0)`, a bad flag
/// prints and is `Err(USAGE)`.
fn parse<T: FromArgs>(command: &str, args: &[&str]) -> Result<T, u8> {
    T::from_args(&[command], args).map_err(|early| match early.status {
        Ok(()) => {
            println!("{}", early.output);
            0
        }
        Err(()) => {
            eprintln!("{}", early.output);
            exit::USAGE
        }
    })
}

/// Where and how the client subcommands connect: the flags they share.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `--addr`, in order (default `127.0.0.1:6388`).
    pub servers: Vec<String>,
    pub tls: Option<TlsOptions>,
    pub token: Option<String>,
}

/// The default server address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:6388";

impl Endpoint {
    /// Builds the endpoint from the shared flags. TLS needs a CA file
    /// (`--tls-ca`; `--tls` alone is refused: this build carries no
    /// system trust store, and an unverified lock server is no lock
    /// server). The token file must hold a non-empty token; surrounding
    /// whitespace (a trailing newline) is trimmed.
    pub fn from_flags(
        addrs: Vec<String>,
        tls: bool,
        tls_ca: Option<&Path>,
        tls_server_name: Option<String>,
        token_file: Option<&Path>,
    ) -> Result<Endpoint, String> {
        let servers = if addrs.is_empty() {
            vec![DEFAULT_ADDR.to_string()]
        } else {
            addrs
        };
        let tls =
            match (tls, tls_ca) {
                (_, Some(ca)) => {
                    let config =
                        client_config_from_ca_file(ca).map_err(|e| format!("--tls-ca: {e}"))?;
                    let mut opts = TlsOptions::new(config);
                    opts.server_name = tls_server_name;
                    Some(opts)
                }
                (true, None) => return Err(
                    "--tls needs --tls-ca FILE, the PEM certificate(s) to verify the server with"
                        .into(),
                ),
                (false, None) => {
                    if tls_server_name.is_some() {
                        return Err("--tls-server-name needs --tls-ca".into());
                    }
                    None
                }
            };
        let token = token_file.map(read_token).transpose()?;
        Ok(Endpoint {
            servers,
            tls,
            token,
        })
    }

    /// A client for these servers, with TLS and the token when set.
    pub fn client(&self) -> crate::client::Client {
        self.configure(crate::client::Client::new(self.servers.iter().cloned()))
    }

    /// A client for the members of one cluster (`Client::cluster`): it
    /// follows the leader and reclaims its holdings after a failover.
    pub fn cluster_client(&self) -> crate::client::Client {
        self.configure(crate::client::Client::cluster(self.servers.iter().cloned()))
    }

    fn configure(&self, mut c: crate::client::Client) -> crate::client::Client {
        if let Some(tls) = &self.tls {
            c = c.with_tls_options(tls.clone());
        }
        if let Some(token) = &self.token {
            c = c.with_auth_token(token.clone());
        }
        c
    }
}

/// The longest token file read (the protocol's 64 KiB third line).
const MAX_TOKEN_FILE_BYTES: u64 = 65_536;

/// Reads an auth token file: trimmed, non-empty, one line.
pub fn read_token(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let what = |e: String| format!("--auth-token-file {}: {e}", path.display());
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| what(e.to_string()))?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(what(format!("longer than {MAX_TOKEN_FILE_BYTES} bytes")));
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(what("the file holds no token".into()));
    }
    if token.contains(['\n', '\r']) {
        return Err(what("the token must be one line".into()));
    }
    Ok(token.to_string())
}

/// A path flag that may be absent, as a `&Path`.
fn path(p: &Option<PathBuf>) -> Option<&Path> {
    p.as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files() {
        let dir = std::env::temp_dir().join(format!("dflockd-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        assert_eq!(read_token(&file("a", "s3cret\n")).unwrap(), "s3cret");
        assert!(read_token(&file("b", " \n"))
            .unwrap_err()
            .contains("holds no token"));
        assert!(read_token(&file("c", "a\nb\n"))
            .unwrap_err()
            .contains("one line"));
        assert!(read_token(&dir.join("missing"))
            .unwrap_err()
            .contains("--auth-token-file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::from_flags(vec![], false, None, None, None).unwrap();
        assert_eq!(e.servers, [DEFAULT_ADDR]);
        assert!(Endpoint::from_flags(vec![], true, None, None, None)
            .unwrap_err()
            .contains("--tls needs --tls-ca"));
        assert!(
            Endpoint::from_flags(vec![], false, None, Some("x".into()), None)
                .unwrap_err()
                .contains("needs --tls-ca")
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&Error::Timeout), exit::TEMPFAIL);
        assert_eq!(exit_code(&Error::Draining), exit::TEMPFAIL);
        assert_eq!(exit_code(&Error::Auth), exit::NOPERM);
        assert_eq!(exit_code(&Error::LimitMismatch), exit::USAGE);
        assert_eq!(
            exit_code(&Error::Io(std::io::ErrorKind::ConnectionRefused.into())),
            exit::UNAVAILABLE
        );
    }
}
