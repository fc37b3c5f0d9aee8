//! `dflockd listen PATTERN [--group G]`: subscribe and print one line per
//! signal, `CHANNEL PAYLOAD`, until interrupted or the connection ends.

use std::io::Write;
use std::path::PathBuf;

use argh::FromArgs;

use super::{exit, exit_code, parse, path, Endpoint};
use crate::client::blocking::Subscriber;

/// Subscribe to PATTERN (`*` is one token, `>` one or more trailing
/// tokens) and print each signal as `CHANNEL PAYLOAD` on its own line,
/// until interrupted.
#[derive(FromArgs)]
struct Args {
    /// the pattern to subscribe to
    #[argh(positional)]
    pattern: String,
    /// join this queue group: its members take turns
    #[argh(option)]
    group: Option<String>,
    /// server HOST:PORT (default 127.0.0.1:6388)
    #[argh(option)]
    addr: Option<String>,
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
}

/// Runs `dflockd listen`; returns the exit status when the connection
/// ends (SIGINT ends the process as usual).
pub fn main(command: &str, args: &[&str]) -> u8 {
    let args = match parse::<Args>(command, args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let endpoint = match Endpoint::from_flags(
        args.addr.into_iter().collect(),
        args.tls,
        path(&args.tls_ca),
        args.tls_server_name,
        path(&args.auth_token_file),
    ) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{command}: {e}");
            return exit::USAGE;
        }
    };
    let addr = &endpoint.servers[0];
    let sub = match Subscriber::connect(addr, endpoint.tls.as_ref(), endpoint.token.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{command}: {addr}: {e}");
            return exit_code(&e);
        }
    };
    match sub.listen(&args.pattern, args.group.as_deref()) {
        Ok(()) => {}
        Err(crate::client::Error::Server) => {
            eprintln!(
                "{command}: the server refused the pattern `{}` (`*` and `>` must be whole \
                 tokens, `>` only the last)",
                args.pattern
            );
            return exit::USAGE;
        }
        Err(e) => {
            eprintln!("{command}: {addr}: {e}");
            return exit_code(&e);
        }
    }
    let mut out = std::io::stdout().lock();
    loop {
        match sub.next() {
            Ok(signal) => {
                // The payload's bytes as they came: it may not be UTF-8.
                let line = [&signal.channel[..], b" ", &signal.payload[..], b"\n"].concat();
                if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                    return 0; // stdout closed (`| head`): done.
                }
            }
            Err(e) => {
                eprintln!("{command}: {addr}: {e}");
                return exit_code(&e);
            }
        }
    }
}
