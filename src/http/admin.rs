//! Cluster mode's HTTP routes beyond the lock routes (spec/cluster.md §7):
//! membership (`POST /v1/admin/voters`, `DELETE /v1/admin/voters/{id}`)
//! and `GET /v1/readindex`.
//!
//! The membership routes are off unless `--admin-token` is set
//! (`503 admin_disabled`), and then need it in `X-Dflockd-Admin`: missing
//! is `401 unauthorized`, wrong is `403 forbidden`, compared in constant
//! time. They run on the leader only (`503 not_leader` with
//! `X-Dflockd-Leader` elsewhere). A new member joins as a learner, is
//! promoted to voter once its log caught up, and the answer lists the
//! voters after the change.

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{error, json_resp, parse, read_body, Front, Resp};
use crate::engine::{AdminError, VotersChange};

/// The admin token header.
pub const ADMIN_HEADER: &str = "x-dflockd-admin";

/// The body of `POST /v1/admin/voters`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddVoter {
    id: u64,
    raft_addr: String,
    client_addr: String,
}

/// Whether `given` equals `expected`, in time that depends only on their
/// lengths (never on where they first differ).
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for i in 0..given.len().max(expected.len()) {
        diff |= given.get(i).copied().unwrap_or(0) ^ expected.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// The admin gate: `None` when the request may proceed.
fn gate(front: &Front, ip: IpAddr, req: &hyper::Request<Incoming>) -> Option<Resp> {
    let Some(expected) = &front.admin_token else {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_disabled",
            "the membership routes need --admin-token",
        ));
    };
    let Some(given) = req.headers().get(ADMIN_HEADER) else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "X-Dflockd-Admin header required",
        ));
    };
    if !same_secret(given.as_bytes().trim_ascii(), expected) {
        super::warn_ip(
            crate::logging::Cause::AuthFailure,
            ip,
            "admin request refused: wrong X-Dflockd-Admin token",
        );
        return Some(error(StatusCode::FORBIDDEN, "forbidden", ""));
    }
    None
}

fn admin_error(e: AdminError) -> Resp {
    match e {
        AdminError::NotLeader(leader) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "not_leader", "");
            if let Some(v) = leader.and_then(|a| HeaderValue::from_str(&a).ok()) {
                r.headers_mut().insert("x-dflockd-leader", v);
            }
            r
        }
        AdminError::Conflict(why) => error(StatusCode::CONFLICT, "conflict", &why),
        AdminError::NotFound(why) => error(StatusCode::NOT_FOUND, "not_found", &why),
        AdminError::Invalid(why) => error(StatusCode::BAD_REQUEST, "bad_request", &why),
        AdminError::Unavailable(why) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &why),
    }
}

fn not_clustered() -> Resp {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_clustered",
        "this server is a single node (no --raft-dir)",
    )
}

/// `POST /v1/admin/voters`.
pub(super) async fn add_voter(front: &Front, ip: IpAddr, req: hyper::Request<Incoming>) -> Resp {
    if let Some(r) = gate(front, ip, &req) {
        return r;
    }
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let add: AddVoter = match parse(&body) {
        Ok(a) => a,
        Err(detail) => return super::bad_request(&detail),
    };
    if add.id == 0 {
        return super::bad_request("id must be > 0");
    }
    let Some(rep) = front.engine.replicator() else {
        return not_clustered();
    };
    let change = VotersChange::Add {
        id: add.id,
        raft_addr: add.raft_addr,
        client_addr: add.client_addr,
    };
    match rep.change_voters(change).await {
        Ok(voters) => json_resp(StatusCode::OK, &json!({ "voters": voters })),
        Err(e) => admin_error(e),
    }
}

/// `DELETE /v1/admin/voters/{id}`.
pub(super) async fn remove_voter(
    front: &Front,
    ip: IpAddr,
    req: hyper::Request<Incoming>,
    id: Option<String>,
) -> Resp {
    if let Some(r) = gate(front, ip, &req) {
        return r;
    }
    let Some(id) = id
        .as_deref()
        .and_then(|i| i.parse::<u64>().ok())
        .filter(|&i| i > 0)
    else {
        return super::bad_request("the member id must be an integer > 0");
    };
    let Some(rep) = front.engine.replicator() else {
        return not_clustered();
    };
    match rep.change_voters(VotersChange::Remove(id)).await {
        Ok(voters) => json_resp(StatusCode::OK, &json!({ "voters": voters })),
        Err(e) => admin_error(e),
    }
}

/// `GET /v1/readindex`: a barrier through the log.
pub(super) async fn read_index(front: &Front) -> Resp {
    let Some(rep) = front.engine.replicator() else {
        return not_clustered();
    };
    match rep.barrier().await {
        Ok(_) => json_resp(StatusCode::OK, &json!({"status": "ok"})),
        Err(e) => admin_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3cretx", b"s3cret"));
        assert!(!same_secret(b"S3cret", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
        // A 0xff byte past the end of the expected secret never matches
        // the padding.
        assert!(!same_secret(b"s3cret\xff", b"s3cret"));
    }
}
