//! `dflockd-sim`: runs the deterministic simulator (`src/sim`).
//!
//! ```text
//! dflockd-sim --seed N [--seconds S] [--clients C] [--http-clients H] [--bug NAME]   # one seed, replayed exactly
//! dflockd-sim --seeds FROM..TO [...]                                # a range of seeds
//! dflockd-sim --cluster --seed N [--seconds S] [--clients C] [--bug NAME]   # a simulated 3-member cluster
//! ```
//!
//! Prints one line per seed; on a failure, the seed, what failed and the
//! command that replays it, and exits 1.

use std::process::ExitCode;

use dflockd::planted::Bug;
use dflockd::sim::{run, Options};

const USAGE: &str =
    "usage: dflockd-sim (--seed N | --seeds FROM..TO) [--cluster] [--seconds S] [--clients C] \
[--http-clients H] [--bug none|lost-wakeup|reply-dropped-on-close|deadline-not-rearmed|\
long-poll-lost|sse-chunk-drop|sweep-keeps-holdings|cluster-clock-ahead|cluster-orphan-ttl-unit|\
cluster-reply-before-commit|cluster-clock-restart] [--quiet]";

fn main() -> ExitCode {
    match parse(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dflockd-sim: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: Vec<String>) -> Result<ExitCode, String> {
    let mut seeds = None;
    let mut template = Options::new(0);
    let mut quiet = false;
    let mut cluster = false;
    let mut cluster_seconds = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--seed" => {
                let n: u64 = val("--seed")?.parse().map_err(|_| "--seed: not a number")?;
                seeds = Some(n..n + 1);
            }
            "--seeds" => {
                let v = val("--seeds")?;
                let (a, b) = v.split_once("..").ok_or("--seeds: FROM..TO")?;
                let a: u64 = a.parse().map_err(|_| "--seeds: not a number")?;
                let b: u64 = b.parse().map_err(|_| "--seeds: not a number")?;
                seeds = Some(a..b);
            }
            "--seconds" => {
                let s: u64 = val("--seconds")?
                    .parse()
                    .map_err(|_| "--seconds: not a number")?;
                template.duration_ms = s.max(20) * 1000;
                cluster_seconds = Some(s.max(20));
            }
            "--clients" => {
                template.clients = val("--clients")?
                    .parse()
                    .map_err(|_| "--clients: not a number")?;
            }
            "--http-clients" => {
                template.http_clients = val("--http-clients")?
                    .parse()
                    .map_err(|_| "--http-clients: not a number")?;
            }
            "--bug" => {
                let v = val("--bug")?;
                template.bug = Bug::from_name(&v).ok_or(format!("--bug: unknown bug {v:?}"))?;
            }
            "--quiet" => quiet = true,
            "--cluster" => cluster = true,
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let seeds = seeds.ok_or("--seed or --seeds is required")?;
    if cluster {
        return Ok(run_cluster(seeds, &template, cluster_seconds, quiet));
    }
    let (mut ran, mut ms) = (0u64, 0u64);
    let mut total = dflockd::sim::Report::default();
    for seed in seeds {
        let opts = Options {
            seed,
            ..template.clone()
        };
        match run(&opts) {
            Ok(r) => {
                ran += 1;
                ms += r.simulated_ms;
                total.requests += r.requests;
                total.crashes += r.crashes;
                total.disk_failures += r.disk_failures;
                total.ceiling_raises += r.ceiling_raises;
                total.http_requests += r.http_requests;
                total.sse_events += r.sse_events;
                if !quiet {
                    println!(
                        "seed {seed}: ok ({} s simulated, {} connections, {} requests, {} replies, {} crashes, {} disk faults, {} ceiling raises, {} entries; HTTP: {} connections, {} requests, {} responses, {} SSE events)",
                        r.simulated_ms / 1000, r.connections, r.requests, r.replies, r.crashes,
                        r.disk_failures, r.ceiling_raises, r.entries, r.http_connections,
                        r.http_requests, r.http_responses, r.sse_events
                    );
                }
            }
            Err(f) => {
                eprintln!("{f}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    println!(
        "{ran} seeds, {:.2} simulated hours, {} requests, {} HTTP requests, {} SSE events, {} crashes, {} disk faults, {} fence ceiling raises: all checks held",
        ms as f64 / 3.6e6,
        total.requests,
        total.http_requests,
        total.sse_events,
        total.crashes,
        total.disk_failures,
        total.ceiling_raises
    );
    Ok(ExitCode::SUCCESS)
}

/// `--cluster`: the simulated 3-member cluster (`dflockd::sim::cluster`).
fn run_cluster(
    seeds: std::ops::Range<u64>,
    template: &Options,
    seconds: Option<u64>,
    quiet: bool,
) -> ExitCode {
    use dflockd::sim::cluster::{run, ClusterOptions};
    let (mut ran, mut ms, mut ops, mut faults) = (0u64, 0u64, 0usize, 0usize);
    for seed in seeds {
        let mut opts = ClusterOptions::new(seed);
        opts.bug = template.bug;
        opts.clients = template.clients;
        if let Some(s) = seconds {
            opts.duration_ms = s * 1000;
        }
        match run(&opts) {
            Ok(r) => {
                ran += 1;
                ms += r.simulated_ms;
                ops += r.operations;
                faults += r.faults;
                if !quiet {
                    println!(
                        "cluster seed {seed}: ok ({} s simulated, {} operations, {} grants, {} faults, {} crashes, {} pauses, {} terms served, {} reclaims, {} snapshots taken, {} installed, {} member messages ({} dropped, {} duplicated), {} steps)",
                        r.simulated_ms / 1000, r.operations, r.grants, r.faults, r.crashes,
                        r.pauses, r.terms, r.reclaims, r.snapshots_taken, r.snapshots_installed,
                        r.messages, r.dropped, r.duplicated, r.steps
                    );
                }
            }
            Err(f) => {
                eprintln!("{f}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{ran} cluster seeds, {:.2} simulated hours, {ops} operations, {faults} faults: all checks held",
        ms as f64 / 3.6e6
    );
    ExitCode::SUCCESS
}
