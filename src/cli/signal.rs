//! `dflockd signal CHANNEL PAYLOAD`: publish one signal (protocol.md §9)
//! and print how many deliveries it made.

use std::path::PathBuf;

use argh::FromArgs;

use super::{exit_code, parse, path, Endpoint};

/// Publish PAYLOAD on CHANNEL (no wildcards) and print how many
/// subscribers it reached.
#[derive(FromArgs)]
struct Args {
    /// the channel, dot-separated tokens
    #[argh(positional)]
    channel: String,
    /// the payload: one line, not blank (quote it if it has spaces)
    #[argh(positional)]
    payload: String,
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

/// Runs `dflockd signal`; returns the exit status.
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
            return super::exit::USAGE;
        }
    };
    let sent = super::stats::connect(&endpoint).and_then(|mut conn| {
        let n = conn.publish(&args.channel, args.payload.as_bytes());
        let _ = conn.close();
        n
    });
    match sent {
        Ok(n) => {
            println!("{n}");
            0
        }
        Err(crate::client::Error::Server) => {
            eprintln!(
                "{command}: the server refused the signal (a channel with `*` or `>`, or a \
                 blank or oversized payload)"
            );
            super::exit::USAGE
        }
        Err(e) => {
            eprintln!("{command}: {}: {e}", endpoint.servers[0]);
            exit_code(&e)
        }
    }
}
