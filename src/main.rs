//! The `dflockd` daemon: parse the configuration, start the server, and
//! turn SIGINT/SIGTERM into a graceful shutdown.
//!
//! A first argument naming a subcommand runs that instead (`dflockd::cli`):
//! `dflockd lock KEY -- COMMAND`, `dflockd stats`, `dflockd signal`,
//! `dflockd listen`, and `dflockd conformance ...` (the conformance runner,
//! the same as the `dflockd-conformance` binary, and its scripted server).

use std::process::exit;

use dflockd::config::{Config, Parsed};
use dflockd::server::{self, ServerConfig};

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(code) = dflockd::cli::run_subcommand(&args) {
        exit(i32::from(code));
    }
    let cfg = match Config::from_process() {
        Ok(Parsed::Run(cfg)) => cfg,
        Ok(Parsed::Exit { code, output }) => {
            println!("{output}");
            exit(code)
        }
        Err(e) => {
            eprintln!("configuration error: {e}");
            exit(1)
        }
    };
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(msg) = cfg.unsupported() {
        eprintln!("configuration error: {msg}");
        exit(1)
    }

    // A panic means an invariant of the lock manager broke: stop the whole
    // process rather than keep serving from state that may grant wrongly.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("dflockd: internal invariant violated; aborting");
        std::process::abort();
    }));

    let mut seed = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut seed) {
        eprintln!("dflockd: cannot read the OS random source: {e}");
        exit(1)
    }
    let salt_key = [
        u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(seed[8..].try_into().expect("8 bytes")),
    ];
    // Without a fence state file the counter starts at the wall clock in
    // nanoseconds (Decision D7), so it still increases across restarts as
    // long as the clock does. With one, `server::spawn` raises it further.
    let wall_ns = server::fence_file::wall_clock_nanos();

    let tls = match &cfg.tls {
        Some(t) => match server::tls::load(&t.cert, &t.key) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("configuration error: {e}");
                exit(1)
            }
        },
        None => None,
    };

    let server_cfg = ServerConfig {
        listen: cfg.listen_addr(),
        core: cfg.core_config(wall_ns, u64::MAX, salt_key),
        read_timeout_s: cfg.read_timeout_s,
        write_timeout_s: cfg.write_timeout_s,
        shutdown_timeout_s: cfg.shutdown_timeout_s,
        max_connections: cfg.max_connections,
        max_connections_per_ip: cfg.max_connections_per_ip,
        fence_state_file: cfg.fence_state_file.clone(),
        threads: 0,
        auth_failure_pause_ms: 100,
        debug: cfg.debug,
        tls,
        http: cfg.http_settings(),
    };
    let handle = match server::spawn(server_cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("dflockd: {e}");
            exit(1)
        }
    };
    eprintln!(
        "dflockd {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        handle.local_addr()
    );
    if let Some(a) = handle.http_addr() {
        eprintln!("dflockd HTTP API listening on {a}");
    }

    let shared = handle.shared().clone();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dflockd: cannot install signal handlers: {e}");
            exit(1)
        }
    };
    std::thread::spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            seen += 1;
            if seen == 1 {
                eprintln!("dflockd: signal {sig}: draining");
                server::begin_shutdown(&shared);
            } else {
                eprintln!("dflockd: second signal: exiting now");
                exit(130);
            }
        }
    });
    handle.join();
    eprintln!("dflockd: stopped");
}
