//! `dflockd-conformance`: the conformance runner as its own binary; the
//! same as `dflockd conformance` (see `dflockd::conformance::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ExitCode::from(dflockd::conformance::cli::main(
        "dflockd-conformance",
        &args,
    ))
}
