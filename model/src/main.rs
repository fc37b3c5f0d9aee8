//! `dflockd-model`: runs the stateright model of `spec/semantics.md`.
//!
//! ```text
//! dflockd-model check [--preset ci|signals|cancels-and-drops|driver|nightly]
//!                     [--clients N] [--keys K] [--depth D] [--horizon S]
//!                     [--ops O] [--drops R] [--cancels C] [--drain] [--no-drain] [--eager-timers]
//!                     [--no-auto-release] [--max-waiters W] [--signals] [--bug NAME]
//!                     [--symmetry] [--threads T]
//! dflockd-model explore [--addr 127.0.0.1:3000] [same model options]
//! dflockd-model cluster [--orphans] [--clients N] [--members M] [--horizon S]
//!                       [--ops O] [--failovers F] [--no-depose] [--recover]
//!                       [--limit N] [--leases L,..] [--orphan-ttl S] [--bug NAME]
//!                       [--threads T]
//! ```
//!
//! `check` explores the whole bounded space breadth-first and prints each
//! property's result; it exits 1 if a property fails. `--symmetry` explores
//! depth-first instead and counts states that differ only by a permutation
//! of the clients once (stateright supports symmetry only depth-first);
//! `--preset nightly` is three clients with three requests each, which
//! needs it (see `ModelConfig::nightly`). `explore` serves
//! stateright's web explorer, on loopback unless told otherwise. `cluster`
//! checks the cluster-mode model (`spec/cluster.md` §8), starting from the
//! CI configuration (`--orphans`: the orphan-TTL one). `--preset driver`
//! (or `--driver`) starts from the configuration of the decisions the
//! drivers used to make (read deadlines, failed authentication, cancel
//! versus grant); options after a preset adjust it.

use std::process::ExitCode;
use std::time::Instant;

use dflockd_model::checker::{LockModel, ModelConfig, ALWAYS, EVENTUALLY, SOMETIMES};
use dflockd_model::cluster::{checker as cl, ClusterBug, ClusterConfig, ClusterModel};
use dflockd_model::Bug;
use stateright::{Checker, Model};

const USAGE: &str =
    "usage: dflockd-model check|explore [--preset ci|signals|cancels-and-drops|driver|nightly] \
[--clients N] [--keys K] [--depth D] [--horizon S] [--ops O] [--drops R] [--cancels C] [--drain] [--no-drain] \
[--eager-timers] [--no-auto-release] [--max-waiters W] [--signals] [--bug NAME] [--symmetry] \
[--threads T] [--addr HOST:PORT]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("{msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let Some(command) = args.first() else {
        return Err("missing command".into());
    };
    if command == "cluster" {
        return cluster(&args[1..]);
    }
    let mut cfg = ModelConfig::ci();
    let mut depth = 0usize;
    let mut threads = 1usize;
    let mut symmetry = false;
    let mut addr = "127.0.0.1:3000".to_string();
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let mut value = || rest.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--preset" => {
                cfg = match value()?.as_str() {
                    "ci" => ModelConfig::ci(),
                    "signals" => ModelConfig::signals(),
                    "cancels-and-drops" => ModelConfig::cancels_and_drops(),
                    "driver" => ModelConfig::driver(),
                    "nightly" => ModelConfig::nightly(),
                    other => return Err(format!("unknown preset {other}")),
                }
            }
            "--clients" => cfg.clients = number(value()?)?,
            "--keys" => cfg.keys = number(value()?)?,
            "--depth" => depth = number(value()?)?,
            "--horizon" => cfg.horizon_s = number(value()?)?,
            "--ops" => cfg.ops_per_client = number(value()?)?,
            "--drops" => cfg.drops_per_client = number(value()?)?,
            "--cancels" => cfg.cancels_per_client = number(value()?)?,
            "--driver" => cfg = ModelConfig::driver(),
            "--max-waiters" => cfg.machine.max_waiters = number(value()?)?,
            "--threads" => threads = number(value()?)?,
            "--addr" => addr = value()?.clone(),
            "--bug" => cfg.bug = bug(value()?)?,
            "--leases" => cfg.leases_s = numbers(value()?)?,
            "--timeouts" => cfg.acquire_timeouts_s = numbers(value()?)?,
            "--wait-timeouts" => cfg.wait_timeouts_s = numbers(value()?)?,
            "--gc-interval" => cfg.machine.gc_interval_s = number(value()?)?,
            "--no-two-phase" => cfg.two_phase = false,
            "--no-renew" => cfg.renew = false,
            "--drain" => cfg.drain = true,
            "--no-drain" => cfg.drain = false,
            "--signals" => cfg.signals = true,
            "--symmetry" => symmetry = true,
            "--eager-timers" => cfg.lazy_timers = false,
            "--no-auto-release" => cfg.machine.auto_release_on_disconnect = false,
            other => return Err(format!("unknown option {other}")),
        }
    }
    let model = LockModel::new(cfg);
    match command.as_str() {
        "check" => Ok(check(model, depth, threads, symmetry)),
        "explore" => {
            println!("serving the explorer on http://{addr}/");
            model.checker().serve(addr.as_str());
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command {other}")),
    }
}

fn check(model: LockModel, depth: usize, threads: usize, symmetry: bool) -> ExitCode {
    println!("{:#?}\nsymmetry: {symmetry}", model.cfg);
    let unreachable = model.cfg.unreachable();
    let start = Instant::now();
    let mut builder = model.checker().threads(threads);
    if depth > 0 {
        builder = builder.target_max_depth(depth);
    }
    if symmetry {
        verdicts(
            &progress(builder.symmetry().spawn_dfs(), start),
            start,
            &unreachable,
        )
    } else {
        verdicts(&progress(builder.spawn_bfs(), start), start, &unreachable)
    }
}

/// Waits for a check, printing its counts to stderr once a minute, so a
/// nightly-size run shows how far it has come (and how fast it grows)
/// before it ends.
fn progress<C: Checker<LockModel>>(checker: C, start: Instant) -> C {
    let mut next = Instant::now() + PROGRESS_EVERY;
    while !checker.is_done() {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if Instant::now() >= next {
            next += PROGRESS_EVERY;
            eprintln!(
                "[{:>6.0?}] states explored: {}, unique: {}, max depth: {}",
                start.elapsed(),
                checker.state_count(),
                checker.unique_state_count(),
                checker.max_depth()
            );
        }
    }
    checker.join()
}

const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Prints the counts and each property's verdict; a reachability property
/// in `unreachable` is expected not to be found.
fn verdicts(checker: &impl Checker<LockModel>, start: Instant, unreachable: &[&str]) -> ExitCode {
    println!(
        "states explored: {}\nunique states: {}\nmax depth: {}\ntime: {:.2?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        start.elapsed()
    );
    let mut ok = true;
    let mut report = |names: &[&'static str], kind: &str, found_is_good: bool| {
        for &name in names {
            let found = checker.discovery(name);
            let expected = found_is_good && !unreachable.contains(&name);
            let pass = found.is_some() == expected;
            ok &= pass;
            let verdict = if pass { "ok  " } else { "FAIL" };
            let note = if found_is_good && !expected {
                " (not reachable in this configuration)"
            } else {
                ""
            };
            println!("{verdict} {kind:10} {name}{note}");
            if let (false, Some(path)) = (pass, found) {
                println!("     counterexample: {:?}", path.into_actions());
            }
        }
    };
    report(&ALWAYS, "always", false);
    report(&SOMETIMES, "sometimes", true);
    report(&EVENTUALLY, "eventually", false);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn cluster(args: &[String]) -> Result<ExitCode, String> {
    let mut cfg = ClusterConfig::ci();
    let mut threads = 1usize;
    if args.iter().any(|a| a == "--orphans") {
        cfg = ClusterConfig::orphans();
    }
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let mut value = || rest.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--orphans" => {}
            "--clients" => cfg.clients = number(value()?)?,
            "--members" => cfg.members = number(value()?)?,
            "--horizon" => cfg.horizon_s = number(value()?)?,
            "--ops" => cfg.ops_per_client = number(value()?)?,
            "--failovers" => cfg.failovers = number(value()?)?,
            "--no-depose" => cfg.depose = false,
            "--recover" => cfg.recover = true,
            "--limit" => cfg.limit = number(value()?)?,
            "--leases" => cfg.leases_s = numbers(value()?)?,
            "--orphan-ttl" => cfg.orphan_ttl_s = number(value()?)?,
            "--threads" => threads = number(value()?)?,
            "--bug" => {
                let name = value()?;
                cfg.bug = ClusterBug::ALL
                    .into_iter()
                    .find(|b| format!("{b:?}") == *name)
                    .ok_or_else(|| format!("unknown bug {name}; one of {:?}", ClusterBug::ALL))?;
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if cfg.linearizability && cfg.orphan_ttl_s <= cfg.horizon_s {
        return Err("linearizability needs --orphan-ttl above --horizon (or --orphans)".into());
    }
    println!("{cfg:#?}");
    let start = Instant::now();
    let checker = ClusterModel::new(cfg)
        .checker()
        .threads(threads)
        .spawn_bfs()
        .join();
    println!(
        "states explored: {}\nunique states: {}\nmax depth: {}\ntime: {:.2?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        start.elapsed()
    );
    let mut ok = true;
    for name in cl::ALWAYS {
        let found = checker.discovery(name);
        ok &= found.is_none();
        println!(
            "{} always     {name}",
            if found.is_none() { "ok  " } else { "FAIL" }
        );
        if let Some(path) = found {
            println!("     counterexample: {:?}", path.into_actions());
        }
    }
    for name in cl::SOMETIMES {
        let found = checker.discovery(name).is_some();
        println!(
            "{} sometimes  {name}",
            if found { "ok  " } else { "not reached" }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

fn numbers(s: &str) -> Result<Vec<u64>, String> {
    s.split(',').map(number).collect()
}

fn bug(name: &str) -> Result<Bug, String> {
    if name == "None" {
        return Ok(Bug::None);
    }
    Bug::ALL
        .into_iter()
        .find(|b| format!("{b:?}") == name)
        .ok_or_else(|| format!("unknown bug {name}; one of {:?}", Bug::ALL))
}
