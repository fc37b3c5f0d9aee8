//! `dflockd stats`: print the server's `stats` snapshot (protocol.md §8)
//! as one line of JSON, for `jq` and friends.

use std::path::PathBuf;

use argh::FromArgs;

use super::{exit_code, parse, path, Endpoint};
use crate::client::blocking::Connection;

/// Print the server's stats (held and idle locks and semaphores, signal
/// subscriptions, connections) as one line of JSON.
#[derive(FromArgs)]
struct Args {
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

/// Runs `dflockd stats`; returns the exit status.
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
    match stats(&endpoint) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            eprintln!("{command}: {}: {e}", endpoint.servers[0]);
            exit_code(&e)
        }
    }
}

fn stats(endpoint: &Endpoint) -> crate::client::Result<serde_json::Value> {
    let mut conn = connect(endpoint)?;
    let stats = conn.stats();
    let _ = conn.close();
    stats
}

/// One connection to the first server of `endpoint`, authenticated.
pub(crate) fn connect(endpoint: &Endpoint) -> crate::client::Result<Connection> {
    let addr = &endpoint.servers[0];
    let mut conn = match &endpoint.tls {
        Some(tls) => Connection::connect_tls(addr, tls)?,
        None => Connection::connect(addr)?,
    };
    if let Some(token) = &endpoint.token {
        conn.auth(token)?;
    }
    Ok(conn)
}
