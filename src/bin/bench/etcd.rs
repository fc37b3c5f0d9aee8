//! `--etcd ADDR`: the baseline for cluster mode (spec/cluster.md, issue's
//! benchmarks). The same acquire+release loop as `--http`, against etcd's
//! lock API through its v3 JSON gateway, over the same hand-written
//! keep-alive HTTP/1.1 client: each worker grants itself a lease
//! (`/v3/lease/grant`), then loops `/v3/lock/lock` (name = the worker's
//! key, with the lease) and `/v3/lock/unlock` (the key etcd answered).
//! `--shared-key` makes every worker contend on one name, so the rate is
//! the hand-off rate. etcd's JSON fields are base64 bytes.

use crate::args::Config;
use crate::http::{show_response, HttpClient};
use crate::line::{BenchError, Transport};
use crate::lock_loop::{Failures, Gate, WorkerOutcome};
use std::time::Instant;

/// Lease of each worker's session with etcd, seconds (renewed by nobody:
/// a run is far shorter).
const LEASE_TTL_S: u64 = 600;

pub(super) async fn etcd_worker<T: Transport>(
    id: usize,
    cfg: &Config,
    gate: &Gate,
    addr: &str,
) -> Result<WorkerOutcome, BenchError> {
    let mut http = HttpClient::<T>::new(addr, cfg);
    let grant = http
        .post(
            "/v3/lease/grant",
            false,
            format!("{{\"TTL\":{LEASE_TTL_S}}}").as_bytes(),
        )
        .await?;
    let lease = serde_json::from_slice::<serde_json::Value>(&grant.body)
        .ok()
        .and_then(|v| v.get("ID")?.as_str().map(str::to_owned))
        .filter(|_| grant.status == 200)
        .ok_or_else(|| BenchError::Http(show_response("lease grant", &grant)))?;
    let lock_body = format!(
        "{{\"name\":\"{}\",\"lease\":\"{lease}\"}}",
        base64(cfg.worker_key(id).as_bytes())
    );
    let mut latencies_ns = Vec::with_capacity(cfg.rounds.max(cfg.warmup));
    let mut failures = Failures::default();
    for (measured, phase_ops) in [(false, cfg.warmup), (true, cfg.rounds)] {
        if measured {
            gate.pass().await;
        }
        latencies_ns.clear();
        failures = Failures::default();
        for _ in 0..phase_ops {
            let t0 = Instant::now();
            match etcd_lock_op(&mut http, lock_body.as_bytes()).await? {
                Ok(()) => latencies_ns.push(crate::lock_loop::elapsed_ns(t0, Instant::now())),
                Err(what) => failures.add(what),
            }
        }
    }
    Ok(WorkerOutcome {
        latencies_ns,
        finished: Instant::now(),
        failures,
    })
}

/// One lock + unlock; `Ok(Err(_))` is a failed op to count.
async fn etcd_lock_op<T: Transport>(
    http: &mut HttpClient<'_, T>,
    lock_body: &[u8],
) -> Result<Result<(), String>, BenchError> {
    let response = http.post("/v3/lock/lock", false, lock_body).await?;
    if response.status != 200 {
        return Ok(Err(show_response("lock", &response)));
    }
    let Some(key) = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v.get("key")?.as_str().map(str::to_owned))
    else {
        return Ok(Err(show_response("lock", &response)));
    };
    let body = format!("{{\"key\":\"{key}\"}}");
    let response = http.post("/v3/lock/unlock", false, body.as_bytes()).await?;
    if response.status != 200 {
        return Ok(Err(show_response("unlock", &response)));
    }
    Ok(Ok(()))
}

/// Standard base64 with padding (etcd's JSON encoding of bytes).
pub(super) fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_alphabet() {
        for (plain, coded) in [
            ("", ""),
            ("k", "aw=="),
            ("k1", "azE="),
            ("bench", "YmVuY2g="),
            ("bench_10", "YmVuY2hfMTA="),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), coded, "{plain}");
        }
    }
}
