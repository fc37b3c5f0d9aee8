//! `--client`: the lock loop through this crate's client library, `dflockd::client`
//! (`--client-api connection` or `lock`), so the library's overhead over the hand-written loop
//! is visible.

use std::io;
use std::time::{Duration, Instant};

use crate::args::{ClientApi, Config};
use crate::line::BenchError;
use crate::lock_loop::{elapsed_ns, Failures, Gate, WorkerOutcome};

fn client_error<'k>(
    request: &'static str,
    key: &'k str,
) -> impl FnOnce(dflockd::client::Error) -> BenchError + 'k {
    move |source| BenchError::Client {
        request,
        key: key.to_string(),
        source,
    }
}

/// The lock loop through `dflockd::client`: the library's own request encoding, reply decoding
/// and buffering, so its overhead over the hand-written protocol loop shows.
pub(crate) async fn client_worker(
    id: usize,
    cfg: &Config,
    gate: &Gate,
    api: ClientApi,
) -> Result<WorkerOutcome, BenchError> {
    use dflockd::client;
    let addr = &cfg.servers[id % cfg.servers.len()];
    let key = cfg.worker_key(id);
    let timeout = Duration::from_secs(cfg.timeout_s);
    let lease_s = (cfg.lease_s > 0).then_some(cfg.lease_s);
    let mut latencies_ns = Vec::with_capacity(cfg.rounds.max(cfg.warmup));
    match api {
        ClientApi::Connection => {
            let mut conns = Vec::with_capacity(cfg.conns_per_worker);
            for _ in 0..cfg.conns_per_worker {
                let mut conn = client::Connection::connect(addr).await.map_err(|source| {
                    BenchError::Connect {
                        addr: addr.clone(),
                        source: io::Error::other(source),
                    }
                })?;
                if let Some(token) = &cfg.auth_token {
                    conn.auth(token).await.map_err(client_error("auth", "_"))?;
                }
                conns.push(conn);
            }
            for (measured, phase_ops) in [(false, cfg.warmup), (true, cfg.rounds)] {
                if measured {
                    gate.pass().await;
                }
                latencies_ns.clear();
                for op in 0..phase_ops {
                    let conn = &mut conns[op % cfg.conns_per_worker];
                    let t0 = Instant::now();
                    let grant = conn
                        .lock(&key, timeout, lease_s)
                        .await
                        .map_err(client_error("lock", &key))?;
                    conn.release(&key, grant.token)
                        .await
                        .map_err(client_error("release", &key))?;
                    latencies_ns.push(elapsed_ns(t0, Instant::now()));
                }
            }
        }
        ClientApi::Lock => {
            let mut client = client::Client::new([addr.as_str()]);
            if let Some(lease_s) = lease_s {
                client = client.with_lease(Duration::from_secs(lease_s));
            }
            if let Some(token) = &cfg.auth_token {
                client = client.with_auth_token(token.as_str());
            }
            let mut lock = client.lock(key.as_str());
            for (measured, phase_ops) in [(false, cfg.warmup), (true, cfg.rounds)] {
                if measured {
                    gate.pass().await;
                }
                latencies_ns.clear();
                for _ in 0..phase_ops {
                    let t0 = Instant::now();
                    lock.acquire(timeout)
                        .await
                        .map_err(client_error("Lock::acquire", &key))?;
                    lock.release()
                        .await
                        .map_err(client_error("Lock::release", &key))?;
                    latencies_ns.push(elapsed_ns(t0, Instant::now()));
                }
            }
        }
    }
    Ok(WorkerOutcome {
        latencies_ns,
        finished: Instant::now(),
        failures: Failures::default(),
    })
}
