//! The memory helper modes, `--idle-connections` and `--hold`: open idle connections or hold
//! many locks, print the server's resident memory per connection or per lock when given
//! `--server-pid`, and keep the connections alive (pinged) until interrupted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;

use crate::args::Config;
use crate::line::{
    parse_grant, push_lock, show_reply, unexpected, BenchError, Blocking, Client, PING,
};
use crate::lock_loop::fail;
use crate::scaling;

/// Idle helper connections are pinged this often: well inside upstream's 23 s read timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Opens `n` connections round-robin over the servers and pings each once, so every one is
/// accepted and registered by the server before we report.
pub(crate) fn open_idle(cfg: &Config, n: usize) -> Result<Vec<Client<Blocking>>, BenchError> {
    future::block_on(async {
        let mut clients = Vec::with_capacity(n);
        for c in 0..n {
            let mut client =
                Client::<Blocking>::connect(&cfg.servers[c % cfg.servers.len()], cfg).await?;
            client.out.extend_from_slice(PING);
            client.flush().await?;
            clients.push(client);
        }
        for client in &mut clients {
            let line = client.reply().await?;
            if line != b"ok" {
                return Err(unexpected("ping", "_", line));
            }
        }
        Ok(clients)
    })
}

/// Acquires the hold keys `j ≡ id (mod workers)` on one connection, `window` in flight.
async fn hold_worker(
    id: usize,
    cfg: &Config,
    locks: usize,
) -> Result<Client<Blocking>, BenchError> {
    let addr = &cfg.servers[id % cfg.servers.len()];
    let mut client = Client::<Blocking>::connect(addr, cfg).await?;
    let mut next_keys = (id..locks).step_by(cfg.workers).map(|j| cfg.hold_key(j));
    let mut in_flight: VecDeque<String> = VecDeque::with_capacity(cfg.pipeline);
    for key in next_keys.by_ref().take(cfg.pipeline) {
        push_lock(&mut client.out, &key, cfg.timeout_s, cfg.lease_s);
        in_flight.push_back(key);
    }
    while !in_flight.is_empty() {
        client.flush().await?;
        client.fill().await?;
        while let Some(range) = client.inbuf.take_line()? {
            let line = client.inbuf.line(range);
            let key = in_flight
                .pop_front()
                .ok_or_else(|| BenchError::Unsolicited {
                    reply: show_reply(line),
                })?;
            if parse_grant(line).is_none() {
                return Err(unexpected("l", &key, line));
            }
            if let Some(key) = next_keys.next() {
                push_lock(&mut client.out, &key, cfg.timeout_s, cfg.lease_s);
                in_flight.push_back(key);
            }
        }
    }
    Ok(client)
}

pub(crate) fn acquire_held(cfg: &Arc<Config>, locks: usize) -> Vec<Client<Blocking>> {
    let handles: Vec<_> = (0..cfg.workers)
        .map(|id| {
            let cfg = Arc::clone(cfg);
            std::thread::spawn(
                move || match future::block_on(hold_worker(id, &cfg, locks)) {
                    Ok(client) => client,
                    Err(e) => fail(id, &e),
                },
            )
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| std::process::exit(1)))
        .collect()
}

/// Keeps helper connections open for `--hold-secs` (0 = until killed), pinging them so a
/// server with an idle read timeout does not cut them.
pub(crate) fn keep_open(cfg: &Config, clients: &mut [Client<Blocking>]) -> Result<(), BenchError> {
    let deadline = (cfg.hold_secs > 0).then(|| Instant::now() + Duration::from_secs(cfg.hold_secs));
    loop {
        let pause = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                left.min(KEEPALIVE_INTERVAL)
            }
            None => KEEPALIVE_INTERVAL,
        };
        std::thread::sleep(pause);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        future::block_on(async {
            for client in clients.iter_mut() {
                client.out.extend_from_slice(PING);
                client.flush().await?;
            }
            for client in clients.iter_mut() {
                let line = client.reply().await?;
                if line != b"ok" {
                    return Err(unexpected("ping", "_", line));
                }
            }
            Ok(())
        })?;
    }
}

/// With `--server-pid`: the server's resident memory before and after, and the growth per
/// item (a settle pause first, so that the server has processed everything it answered).
pub(crate) fn rss_note(cfg: &Config, before: Option<u64>, items: usize, what: &str) -> String {
    let Some(pid) = cfg.server_pid else {
        return String::new();
    };
    std::thread::sleep(Duration::from_millis(500));
    match (before, scaling::rss_bytes(pid)) {
        (Some(b), Some(a)) => format!(
            "rss: server {pid} {:.1} MiB -> {:.1} MiB: {:.0} bytes per {what}\n",
            b as f64 / 1048576.0,
            a as f64 / 1048576.0,
            a.saturating_sub(b) as f64 / items as f64
        ),
        _ => format!("rss: cannot read /proc/{pid}/status\n"),
    }
}

pub(crate) fn holding_note(cfg: &Config) -> String {
    if cfg.hold_secs == 0 {
        "until killed".to_string()
    } else {
        format!("for {}s", cfg.hold_secs)
    }
}
