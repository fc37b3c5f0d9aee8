//! `dflockd lock KEY [flags] -- COMMAND [ARGS...]`: hold a lock around a
//! command, as `flock(1)`, `etcdctl lock` and `consul lock` do.
//!
//! It waits for the lock (in FIFO order with every other client), runs
//! the command with `DFLOCKD_KEY`, `DFLOCKD_TOKEN` and `DFLOCKD_FENCE` (the
//! fence counter, in decimal) in its environment, renews the lease in the
//! background while the command runs, releases the lock when the command
//! exits, and exits with the command's status (128 + N when a signal N
//! ended it). Signals sent to `dflockd lock` (HUP, INT, QUIT, TERM, USR1,
//! USR2, WINCH) are passed on to the command.
//!
//! With `--cluster`, the `--addr` servers are the members of one cluster
//! (spec/cluster.md §7): the lock is taken from the leader, and renewals
//! reclaim it from the next leader after a failover.
//!
//! When the lock cannot be had within `--timeout`, it exits 75
//! (`EX_TEMPFAIL`) without running the command. When the lock is lost
//! while the command runs (a renewal fails: the lease ran out, someone
//! released the token, the server went away), it sends the command
//! SIGTERM, then SIGKILL after `--kill-after` seconds, says so on stderr,
//! and exits 75: the command may no longer assume it holds the lock. On
//! Linux the command also gets SIGKILL if `dflockd lock` itself dies, so it
//! never runs on unprotected. Other statuses are in [`super::exit`].

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::Duration;

use argh::FromArgs;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};

use super::{exit, exit_code, parse, path, str_args, Endpoint};
use crate::client::blocking;
use crate::wire::MAX_SECONDS;

/// Hold a lock (or a semaphore slot) on KEY while COMMAND runs: wait for
/// it in FIFO order, run the command with DFLOCKD_KEY, DFLOCKD_TOKEN and
/// DFLOCKD_FENCE set, renew the lease meanwhile, release it when the
/// command exits, and exit with its status. Exits 75 if the lock is not
/// granted within --timeout (the command does not run) or is lost while
/// the command runs (the command gets SIGTERM, then SIGKILL).
#[derive(FromArgs)]
struct Args {
    /// the lock's key
    #[argh(positional)]
    key: String,
    /// seconds to wait for the lock (default: as long as it takes; 0 tries
    /// once)
    #[argh(option)]
    timeout: Option<u64>,
    /// lease in seconds, renewed in the background (default: the server's)
    #[argh(option)]
    lease: Option<u64>,
    /// take a slot of the counting semaphore KEY with this many slots
    /// instead of the lock
    #[argh(option)]
    semaphore: Option<u64>,
    /// server HOST:PORT; repeat for several (keys are sharded over them)
    /// (default 127.0.0.1:6388)
    #[argh(option)]
    addr: Vec<String>,
    /// the --addr servers are the members of one cluster, not shards:
    /// ask its leader, and reclaim the lock from the next leader after a
    /// failover
    #[argh(switch)]
    cluster: bool,
    /// connect over TLS (needs --tls-ca)
    #[argh(switch)]
    tls: bool,
    /// PEM file of CA certificates to verify the server with (implies --tls)
    #[argh(option)]
    tls_ca: Option<PathBuf>,
    /// name the server certificate must carry (default: the host of --addr)
    #[argh(option)]
    tls_server_name: Option<String>,
    /// file holding the server's auth token
    #[argh(option)]
    auth_token_file: Option<PathBuf>,
    /// seconds between SIGTERM and SIGKILL when the lock is lost (default 10)
    #[argh(option, default = "10")]
    kill_after: u64,
}

/// The signals passed on to the command.
const FORWARDED: [i32; 7] = [SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH];

/// Runs `dflockd lock` with `args` (after the subcommand word); returns
/// the exit status.
pub fn main(command: &str, args: &[OsString]) -> u8 {
    let Some(split) = args.iter().position(|a| a == "--") else {
        // `--help` needs no command.
        if args.iter().any(|a| a == "--help" || a == "help") {
            print_help(command);
            return 0;
        }
        eprintln!(
            "{command}: give the command after `--`: {command} KEY [flags] -- COMMAND [ARGS...]"
        );
        return exit::USAGE;
    };
    let (flags, program) = (&args[..split], &args[split + 1..]);
    let flags = match str_args(command, flags) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let args = match parse::<Args>(command, &flags) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if program.is_empty() {
        eprintln!("{command}: no command after `--`");
        return exit::USAGE;
    }
    match run(command, &args, program) {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("{command}: {message}");
            code
        }
    }
}

/// argh's help, with a usage line that shows the command after `--` and
/// the exit statuses at the end.
fn print_help(command: &str) {
    let help = match Args::from_args(&[command], &["--help"]) {
        Err(early) => early.output,
        Ok(_) => return,
    };
    let body = help.split_once("\n").map_or("", |(_, rest)| rest);
    println!("Usage: {command} KEY [options] -- COMMAND [ARGS...]\n{body}");
    println!(
        "\nExit status: the command's (128 + N if signal N ended it); 75 if the lock was not \
         granted in time or was lost; 64 usage error; 69 server unreachable; 77 token \
         refused; 126/127 the command could not be run."
    );
}

type Failure = (u8, String);

fn run(command: &str, args: &Args, program: &[OsString]) -> Result<u8, Failure> {
    let usage = |m: String| (exit::USAGE, m);
    if args.semaphore == Some(0) {
        return Err(usage(
            "--semaphore: a semaphore needs at least 1 slot".into(),
        ));
    }
    if args.lease.is_some_and(|l| l == 0 || l > MAX_SECONDS) {
        return Err(usage(format!(
            "--lease: between 1 and {MAX_SECONDS} seconds"
        )));
    }
    let endpoint = Endpoint::from_flags(
        args.addr.clone(),
        args.tls,
        path(&args.tls_ca),
        args.tls_server_name.clone(),
        path(&args.auth_token_file),
    )
    .map_err(usage)?;
    let mut client = if args.cluster {
        endpoint.cluster_client()
    } else {
        endpoint.client()
    };
    if let Some(lease) = args.lease {
        client = client.with_lease(Duration::from_secs(lease));
    }
    let client = blocking::Client(client);
    let mut held = match args.semaphore {
        Some(limit) => Held::Sem(client.semaphore(args.key.as_str(), limit)),
        None => Held::Lock(client.lock(args.key.as_str())),
    };
    let wait = Duration::from_secs(args.timeout.unwrap_or(MAX_SECONDS).min(MAX_SECONDS));
    let token = held.acquire(wait).map_err(|e| {
        let why = match e {
            crate::client::Error::Timeout => {
                format!("{} was not granted within {}s", args.key, wait.as_secs())
            }
            ref other => format!("cannot take {}: {other}", args.key),
        };
        (exit_code(&e), why)
    })?;

    // From here the command must not outlive the lock unnoticed.
    let mut cmd = Command::new(&program[0]);
    cmd.args(&program[1..])
        .env("DFLOCKD_KEY", &args.key)
        .env("DFLOCKD_TOKEN", token.to_string())
        .env("DFLOCKD_FENCE", token.fence.to_string());
    die_with_parent(&mut cmd);
    // Signals are caught from before the spawn, so none is lost; they are
    // passed on once the command has a PID.
    let mut signals = signal_hook::iterator::Signals::new(FORWARDED)
        .map_err(|e| (exit::UNAVAILABLE, format!("cannot catch signals: {e}")))?;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let _ = held.release();
            return Err((code, format!("cannot run {:?}: {e}", program[0])));
        }
    };
    let pid = child.id();
    let signals_handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            kill(pid, sig);
        }
    });

    // The command's exit is watched without reaping it, so its PID stays
    // ours (a zombie) until the forwarder has stopped: a late signal can
    // never reach a process that reused the PID.
    let (tx, rx) = mpsc::channel();
    let exited = tx.clone();
    std::thread::spawn(move || {
        wait_exit(pid);
        let _ = exited.send(Event::Exited);
    });
    let lost = held.lost();
    std::thread::spawn(move || {
        smol::block_on(lost);
        let _ = tx.send(Event::Lost);
    });
    let reap = |child: &mut std::process::Child| {
        signals_handle.close();
        let _ = forwarder.join();
        child.wait()
    };

    match rx.recv() {
        Ok(Event::Exited) => {
            let status = reap(&mut child);
            if held.is_lost() {
                // The renewal failed as the command was finishing: it may
                // have run part of the way without the lock.
                eprintln!(
                    "{command}: lost the lock on {} while the command ran (renewal failed)",
                    args.key
                );
                return Ok(exit::TEMPFAIL);
            }
            if let Err(e) = held.release() {
                eprintln!(
                    "{command}: could not release {} ({e}); the server frees it when the \
                     connection closes or the lease ends",
                    args.key
                );
            }
            Ok(status_code(status))
        }
        Ok(Event::Lost) => {
            eprintln!(
                "{command}: lost the lock on {} (renewal failed); stopping the command \
                 (SIGTERM, then SIGKILL after {}s)",
                args.key, args.kill_after
            );
            kill(pid, SIGTERM);
            let grace = Duration::from_secs(args.kill_after);
            let finished = loop {
                match rx.recv_timeout(grace) {
                    Ok(Event::Exited) => break true,
                    Ok(Event::Lost) => continue,
                    Err(_) => break false,
                }
            };
            if !finished {
                eprintln!(
                    "{command}: the command outlived SIGTERM by {}s: SIGKILL",
                    args.kill_after
                );
                kill(pid, libc::SIGKILL);
            }
            let _ = reap(&mut child);
            Ok(exit::TEMPFAIL)
        }
        Err(_) => Err((exit::UNAVAILABLE, "lost track of the command".into())),
    }
}

/// Blocks until the child `pid` has exited, leaving it unreaped
/// (`waitid` with `WNOWAIT`).
fn wait_exit(pid: u32) {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: waitid(2) writes only into `info`, a zeroed siginfo_t
        // we own; WNOWAIT leaves the child to be reaped by `Child::wait`.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

enum Event {
    Exited,
    Lost,
}

/// The shell's convention: the exit code, or 128 + the signal that ended
/// the command.
fn status_code(status: std::io::Result<ExitStatus>) -> u8 {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
            (None, Some(sig)) => u8::try_from(128 + (sig & 0x7f)).unwrap_or(1),
            (None, None) => 1,
        },
        Err(_) => exit::UNAVAILABLE,
    }
}

/// Sends `sig` to `pid` (the command this process started).
fn kill(pid: u32, sig: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on the PID of our own child, which is reaped only
        // after every sender has stopped, so the PID cannot be reused.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// On Linux, the command gets SIGKILL when the thread that started it
/// (this process's main thread) dies: a command must not run on after the
/// process that holds its lock is gone.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the
    // parent; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// A lock or a semaphore slot, held through the blocking client.
enum Held {
    Lock(blocking::Lock),
    Sem(blocking::Semaphore),
}

impl Held {
    fn acquire(&mut self, wait: Duration) -> crate::client::Result<crate::client::Token> {
        match self {
            Held::Lock(l) => l.acquire(wait),
            Held::Sem(s) => s.acquire(wait),
        }
    }

    fn release(&mut self) -> crate::client::Result<()> {
        match self {
            Held::Lock(l) => l.release(),
            Held::Sem(s) => s.release(),
        }
    }

    fn is_lost(&self) -> bool {
        match self {
            Held::Lock(l) => l.is_lost(),
            Held::Sem(s) => s.is_lost(),
        }
    }

    fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match self {
            Held::Lock(l) => Box::pin(l.0.lost()),
            Held::Sem(s) => Box::pin(s.0.lost()),
        };
        fut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_shell() {
        assert_eq!(status_code(Ok(ExitStatus::from_raw(0))), 0);
        assert_eq!(status_code(Ok(ExitStatus::from_raw(3 << 8))), 3);
        // Killed by SIGTERM (15).
        assert_eq!(status_code(Ok(ExitStatus::from_raw(15))), 143);
    }
}
