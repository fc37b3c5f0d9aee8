//! The `dflockd` daemon: parse the configuration, start logging and the
//! server, and turn SIGINT/SIGTERM into a graceful shutdown.
//!
//! A first argument naming a subcommand runs that instead (`dflockd::cli`):
//! `dflockd lock KEY -- COMMAND`, `dflockd stats`, `dflockd signal`,
//! `dflockd listen`, `dflockd top`, and `dflockd conformance ...` (the conformance runner,
//! the same as the `dflockd-conformance` binary, and its scripted server).
//!
//! Configuration errors go to stderr as `configuration error: ...` with
//! exit status 1, before the logger exists (its level and format are part
//! of the configuration). Everything after is a log line.

use std::process::exit;

use dflockd::config::{Config, Parsed};
use dflockd::server;

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
    if let Some(msg) = cfg.unsupported() {
        eprintln!("configuration error: {msg}");
        exit(1)
    }
    // The certificate and key are configuration too: checked before the
    // first log line.
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

    if let Err(e) = dflockd::logging::init(cfg.log_level, cfg.log_format) {
        eprintln!("dflockd: cannot start logging: {e}");
        exit(1)
    }

    // A panic means an invariant of the lock manager broke: stop the whole
    // process rather than keep serving from state that may grant wrongly.
    // The one exception: the Raft storage engine reading damaged files at
    // start-up, caught there and answered as a typed error naming the file.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if dflockd::cluster::storage::panic_is_contained() {
            return;
        }
        default_hook(info);
        log::error!("internal invariant violated; aborting");
        std::process::abort();
    }));

    // The effective configuration, one field per setting, secrets masked
    // (`Config::effective` holds `<set>` for them).
    let settings: Vec<(&str, &str)> = cfg
        .effective
        .iter()
        .map(|e| (e.setting.flag, e.value.as_str()))
        .collect();
    log::logger().log(
        &log::Record::builder()
            .level(log::Level::Info)
            .target("dflockd")
            .args(format_args!(
                "starting dflockd {}",
                env!("CARGO_PKG_VERSION")
            ))
            .key_values(&settings.as_slice())
            .build(),
    );
    for w in &cfg.warnings {
        log::warn!("{w}");
    }
    for addr in cfg.exposed_without_auth() {
        log::warn!(
            addr = addr.as_str();
            "listening beyond loopback without an auth token: anyone who can reach this \
             address can take and release every lock (set --auth-token or --auth-token-file)"
        );
    }

    let mut seed = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut seed) {
        log::error!("cannot read the OS random source: {e}");
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

    let server_cfg = cfg.server_config(cfg.core_config(wall_ns, u64::MAX, salt_key), tls);
    let handle = match server::spawn(server_cfg) {
        Ok(h) => h,
        Err(e) => {
            log::error!("cannot start: {e}");
            exit(1)
        }
    };
    let engine = handle.engine().clone();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            exit(1)
        }
    };
    // Announced only once SIGINT/SIGTERM are handled: a supervisor that
    // stops the server as soon as it listens gets a graceful shutdown.
    log::info!(
        transport = "tcp", addr:% = handle.local_addr(), tls = cfg.tls.is_some();
        "listening"
    );
    if let Some(a) = handle.http_addr() {
        log::info!(transport = "http", addr:% = a, tls = cfg.tls.is_some(); "listening");
    }

    std::thread::spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            seen += 1;
            if seen == 1 {
                log::info!(
                    signal = sig, shutdown_timeout_s = cfg.shutdown_timeout_s;
                    "draining: refusing new requests, waiting for clients to leave"
                );
                server::begin_shutdown(&engine);
            } else {
                log::warn!(signal = sig; "second signal: exiting now");
                exit(130);
            }
        }
    });
    handle.join();
    log::info!("stopped");
}
