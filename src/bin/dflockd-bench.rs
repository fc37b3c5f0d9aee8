//! `dflockd-bench`: a load generator for any server that speaks the dflockd v1 line protocol
//! (the Go upstream or this crate's server).
//!
//! One *op* is `l <key> <timeout> [<lease>]` followed by `r <key> <token>`; its latency is
//! measured around the pair. The flags, the header line, the report and the statistics follow
//! upstream `cmd/bench` (spec §10, decision D16: worker i uses `<key>_<i>`, `--shared-key`
//! makes every worker contend on one key). Additions of ours: `--pipeline` (a sliding window
//! of lock ops per connection on distinct keys), `--auth-token`, the choice of I/O engine
//! (`--io`), and two helpers for memory measurements (`--idle-connections`, `--hold`).
//!
//! More modes measure other paths to the same core:
//! * `--http ADDR`: the same loop over the HTTP REST front (spec/http.md), one session and one
//!   keep-alive HTTP/1.1 connection per worker, through a minimal hand-written client
//!   (`Content-Length` bodies only). Non-2xx answers and acquire timeouts are counted, not fatal.
//! * `--etcd ADDR`: the same loop against etcd's lock API (the cluster-mode baseline,
//!   `bench/etcd.rs`), over the same HTTP client.
//! * `--client`: the same loop through this crate's client library, `dflockd::client`
//!   (`--client-api connection` or `lock`), so the library's overhead over the hand-written
//!   loop is visible.
//! * `--redis-ping`: the peer through the same loop: each op is two inline `PING` round trips
//!   to redis-server at `--servers`, so a server is compared with redis with the client held
//!   fixed (redis-benchmark is a different client, with its own cost per request).
//! * `--fanout`: signal fan-out (spec/protocol.md §9). `--subscribers` connections `listen` on
//!   channel `--key`; one publisher sends `signal` for `--duration` seconds, `--pipeline`
//!   signals in flight, optionally paced by `--rate`. Each payload carries its send time, so
//!   subscribers measure publish-to-receipt latency; a subscriber the server closes (the
//!   64-frame slow-consumer rule) is reported as an eviction.
//! * `--scaling`, `--freeze N` and `--stats-stall SIZES` (in `bench/scaling.rs`): how the server's cost grows with its
//!   state. All three start the server themselves; see that module.
//!
//! The memory helpers (`--idle-connections`, `--hold`) print the server's resident memory per
//! connection or per lock when given its `--server-pid`.
//!
//! The tool is deliberately self-contained: apart from `--client`, it shares no code with the
//! server, so it cannot inherit the server's bugs, and it works against any implementation of
//! the protocol.
//!
//! Layout: this file holds `main`, which dispatches on the mode; the modules under `bench/`
//! hold the rest, one seam each: `args` (flags and their validation), `line` (the reply line
//! buffer, the reply parsers, the request encoders and the two transports), `lock_loop` (the
//! workers and the lock loop), `http`, `client` and `fanout` (the other modes), `memory` (the
//! RSS helper modes), `report` (statistics and the report) and `scaling`.

use std::io::{self, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

#[path = "bench/args.rs"]
mod args;
#[path = "bench/client.rs"]
mod client;
#[path = "bench/etcd.rs"]
mod etcd;
#[path = "bench/fanout.rs"]
mod fanout;
#[path = "bench/http.rs"]
mod http;
#[path = "bench/line.rs"]
mod line;
#[path = "bench/lock_loop.rs"]
mod lock_loop;
#[path = "bench/memory.rs"]
mod memory;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/scaling.rs"]
mod scaling;

use crate::args::{parse_command_line, Driver, Mode};
use crate::fanout::{fanout_header, fanout_report, run_fanout};
use crate::lock_loop::{fail, run_workers, Failures};
use crate::memory::{acquire_held, holding_note, keep_open, open_idle, rss_note};
use crate::report::{header, report, say, summarize};

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_command_line(&raw) {
        Ok(cfg) => Arc::new(cfg),
        Err((0, help)) => {
            say(&format!("{help}\n"));
            return ExitCode::SUCCESS;
        }
        Err((code, message)) => {
            let _ = writeln!(io::stderr(), "{message}");
            return ExitCode::from(code);
        }
    };
    match &cfg.mode {
        Mode::Bench { driver } => {
            say(&format!("{}\n\n", header(&cfg)));
            let (start, outcomes) = run_workers(&cfg, driver);
            let end = outcomes.iter().map(|o| o.finished).max().unwrap_or(start);
            let wall_s = end.saturating_duration_since(start).as_secs_f64();
            let ms: Vec<f64> = outcomes
                .iter()
                .flat_map(|o| o.latencies_ns.iter().map(|&ns| ns as f64 / 1e6))
                .collect();
            say(&report(&cfg, &summarize(ms), wall_s));
            if matches!(driver, Driver::Http { .. } | Driver::Etcd { .. }) {
                let mut failures = Failures::default();
                for outcome in outcomes {
                    failures.merge(outcome.failures);
                }
                say(&format!(
                    "  errors    : {}{}\n",
                    failures.count,
                    failures
                        .first
                        .map(|what| format!(" (first: {what})"))
                        .unwrap_or_default()
                ));
            }
        }
        Mode::Fanout(fan) => {
            say(&format!("{}\n\n", fanout_header(&cfg, fan)));
            let result = run_fanout(&cfg, fan);
            say(&fanout_report(fan, result));
        }
        Mode::Idle { connections } => {
            let before = cfg.server_pid.and_then(scaling::rss_bytes);
            let t0 = Instant::now();
            let mut clients = open_idle(&cfg, *connections).unwrap_or_else(|e| fail(0, &e));
            say(&format!(
                "idle: {connections} connections established in {:.3}s, holding {}\n",
                t0.elapsed().as_secs_f64(),
                holding_note(&cfg)
            ));
            say(&rss_note(&cfg, before, *connections, "idle connection"));
            keep_open(&cfg, &mut clients).unwrap_or_else(|e| fail(0, &e));
        }
        Mode::Hold { locks } => {
            let before = cfg.server_pid.and_then(scaling::rss_bytes);
            let t0 = Instant::now();
            let mut clients = acquire_held(&cfg, *locks);
            let took = t0.elapsed().as_secs_f64();
            say(&format!(
                "hold: {locks} locks held on {} connections, acquired in {took:.3}s ({:.1} locks/s), holding {}\n",
                clients.len(),
                *locks as f64 / took.max(f64::MIN_POSITIVE),
                holding_note(&cfg)
            ));
            say(&rss_note(&cfg, before, *locks, "held lock"));
            keep_open(&cfg, &mut clients).unwrap_or_else(|e| fail(0, &e));
        }
        Mode::Scaling(plan) => return scaling::run_scaling(plan),
        Mode::Freeze { slots, server_bin } => return scaling::run_freeze(server_bin, *slots),
        Mode::StatsStall { sizes, server_bin } => {
            return scaling::run_stats_stall(server_bin, sizes)
        }
    }
    ExitCode::SUCCESS
}
