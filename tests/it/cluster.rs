//! Cluster mode in process: three members on loopback, each a whole server
//! with `--raft-dir` (spec/cluster.md). The leader answers after commit,
//! followers name it, a failover keeps fences increasing and gives held
//! locks back through `stable-ref`.

use std::net::SocketAddr;
use std::time::Duration;

use dflockd::cluster::replica::Role;
use dflockd::cluster::Peer;
use dflockd::config::{ClusterConfig, ClusterSettings};
use dflockd::server::{spawn, ServerConfig, ServerHandle};

use crate::support::{fence, grant, unused_port, wait_until, Client};

const TOKEN: &str = "a-member-token-of-at-least-32-bytes!";

/// A scratch directory removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Cluster {
    members: Vec<Option<ServerHandle>>,
    _dir: Scratch,
    configs: Vec<ServerConfig>,
}

fn member_config(
    dir: &std::path::Path,
    me: &Peer,
    peers: &[Peer],
    orphan_ttl_ms: u64,
    admin_token: Option<&str>,
    join: bool,
) -> ServerConfig {
    ServerConfig {
        listen: me.client_addr.clone(),
        threads: 1,
        http: Some(dflockd::config::HttpSettings::default()),
        cluster: Some(ClusterSettings {
            member: ClusterConfig {
                raft_dir: dir.join(me.id.to_string()),
                node_id: me.id,
                raft_addr: me.raft_addr.clone(),
                peers: peers.to_vec(),
                advertise_addr: None,
                raft_auth_token: Some(TOKEN.into()),
                raft_tls: None,
                admin_token: admin_token.map(str::to_owned),
                join,
            },
            orphan_ttl_ms,
            tick_ms: 20,
        }),
        ..ServerConfig::default()
    }
}

fn new_peer(id: u64) -> Peer {
    Peer {
        id,
        raft_addr: format!("127.0.0.1:{}", unused_port()),
        client_addr: format!("127.0.0.1:{}", unused_port()),
    }
}

impl Cluster {
    fn start(n: u64, orphan_ttl_ms: u64) -> Cluster {
        Cluster::start_with(n, orphan_ttl_ms, None)
    }

    fn start_with(n: u64, orphan_ttl_ms: u64, admin_token: Option<&str>) -> Cluster {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n_dir = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = Scratch(
            std::env::temp_dir().join(format!("dflockd-it-cluster-{}-{n_dir}", std::process::id())),
        );
        let peers: Vec<Peer> = (1..=n).map(new_peer).collect();
        let configs: Vec<ServerConfig> = peers
            .iter()
            .map(|p| member_config(&dir.0, p, &peers, orphan_ttl_ms, admin_token, false))
            .collect();
        let members = configs
            .iter()
            .map(|c| Some(spawn(c.clone()).expect("member starts")))
            .collect();
        Cluster {
            _dir: dir,
            members,
            configs,
        }
    }

    /// The member that serves as leader (its `LeaderStart` applied).
    fn leader(&self) -> usize {
        let mut found = None;
        wait_until(Duration::from_secs(20), || {
            found = self.members.iter().position(|m| {
                m.as_ref().is_some_and(|m| {
                    let s = m.node().expect("clustered").replica().status();
                    s.role == Role::Leader
                        && ping_lock(m.local_addr()).is_some_and(|r| !r.starts_with("error"))
                })
            });
            found.is_some()
        });
        found.expect("found")
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.configs[i].listen.parse().expect("addr")
    }
}

/// A barrier on a fresh connection: `ok` on a serving leader.
fn ping_lock(addr: SocketAddr) -> Option<String> {
    let mut c = Client::connect(addr);
    Some(c.req("barrier", "_", ""))
}

#[test]
fn a_cluster_serves_from_its_leader_and_survives_losing_it() {
    let mut cluster = Cluster::start(3, 60_000);
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;

    // A follower names the leader; auth, ping and stats are its own.
    let mut f = Client::connect(cluster.addr(follower));
    let expected = format!("error_not_leader {}", cluster.configs[leader].listen);
    assert_eq!(f.req("l", "k", "5"), expected);
    assert_eq!(f.req("ping", "_", ""), "ok");
    let stats = f.req("stats", "_", "");
    assert!(stats.contains("\"cluster\""), "{stats}");
    assert!(stats.contains("\"role\":\"follower\""), "{stats}");

    // Over HTTP: 503 not_leader naming the leader; the metrics show Raft.
    let fh = cluster.members[follower]
        .as_ref()
        .expect("up")
        .http_addr()
        .expect("http");
    let r = crate::http_client::call(fh, "POST", "/v1/sessions", &[], b"");
    let sid = r.json()["session_id"].as_str().expect("session").to_owned();
    let r = crate::http_client::call(
        fh,
        "POST",
        "/v1/locks/k",
        &[("X-Dflockd-Session", &sid)],
        b"{\"acquire_timeout_s\":0}",
    );
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "not_leader");
    assert_eq!(
        r.header("x-dflockd-leader"),
        Some(cluster.configs[leader].listen.as_str())
    );
    let m = crate::http_client::get(fh, "/metrics");
    assert!(m.body.contains("dflockd_raft_is_leader 0"), "{}", m.body);

    // The leader grants after commit; the grant is on every member.
    let mut c = Client::connect(cluster.addr(leader));
    assert_eq!(c.req("stable-ref", "client-a", ""), "ok");
    let (tok, _) = grant(&c.req("l", "k", "5 60"));
    let first = fence(&tok);
    assert_eq!(c.req("n", "k", &format!("{tok} 60")), "ok 60");
    let mut other = Client::connect(cluster.addr(leader));
    assert_eq!(other.req("l", "k", "0"), "timeout");
    let stats = other.req("stats", "_", "");
    assert!(stats.contains("\"role\":\"leader\""), "{stats}");
    wait_until(Duration::from_secs(10), || {
        let s = Client::connect(cluster.addr(follower)).req("stats", "_", "");
        s.contains("\"locks\":[{") || s.contains(&tok[..0]) && s.contains("\"key\":\"k\"")
    });

    // The leader goes away; another takes over.
    cluster.members[leader] = None;
    let next = cluster.leader();
    assert_ne!(next, leader);
    // The lock is still held (by the orphan)...
    let mut d = Client::connect(cluster.addr(next));
    assert_eq!(d.req("l", "k", "0"), "timeout");
    // ...and comes back to its client by stable-ref, with its token.
    let mut back = Client::connect(cluster.addr(next));
    assert_eq!(back.req("stable-ref", "client-a", ""), "ok");
    assert_eq!(back.req("n", "k", &format!("{tok} 60")), "ok 60");
    assert_eq!(back.req("r", "k", &tok), "ok");
    // Fences keep increasing across the failover.
    let (tok2, _) = grant(&d.req("l", "k", "5 60"));
    assert!(fence(&tok2) > first, "{tok2} after {tok}");
}

#[test]
fn an_orphan_is_released_after_its_ttl() {
    let mut cluster = Cluster::start(3, 1_500);
    let leader = cluster.leader();
    let mut c = Client::connect(cluster.addr(leader));
    grant(&c.req("l", "orphaned", "5 600"));
    cluster.members[leader] = None;
    let next = cluster.leader();
    let mut d = Client::connect(cluster.addr(next));
    // Held by the orphan until its TTL, then granted to the waiter.
    assert_eq!(d.req("l", "orphaned", "0"), "timeout");
    grant(&d.req("l", "orphaned", "10 60"));
}

/// The client addresses of every member, the leader last, so that a
/// cluster client has to be redirected to find it.
fn members_leader_last(cluster: &Cluster, leader: usize) -> Vec<String> {
    let mut all: Vec<String> = (0..cluster.configs.len())
        .filter(|&i| i != leader)
        .map(|i| cluster.configs[i].listen.clone())
        .collect();
    all.push(cluster.configs[leader].listen.clone());
    all
}

/// The `dflockd_raft_orphans` gauge of member `i`.
fn orphans(cluster: &Cluster, i: usize) -> Option<u64> {
    let http = cluster.members[i].as_ref()?.http_addr()?;
    let m = crate::http_client::get(http, "/metrics");
    m.body
        .lines()
        .find_map(|l| l.strip_prefix("dflockd_raft_orphans "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_cluster_client_keeps_its_lock_and_token_across_a_failover() {
    use dflockd::client::{Client as ClusterClient, Error};
    let mut cluster = Cluster::start(3, 60_000);
    let leader = cluster.leader();
    // A 4 s lease renewed every second: the background renewal meets the
    // failover within a second of it.
    let client = ClusterClient::cluster(members_leader_last(&cluster, leader))
        .with_lease(Duration::from_secs(4))
        .with_renewal(0.25, 0.0);
    let mut lock = client.lock("k");
    let mut two = client.lock("k2");
    let (token, token2) = smol::block_on(async {
        let t = lock.acquire(Duration::from_secs(5)).await?;
        let t2 = two.acquire(Duration::from_secs(5)).await?;
        Ok::<_, Error>((t, t2))
    })
    .expect("granted through the redirect");
    assert_eq!(
        client.leader_hint().as_deref(),
        Some(cluster.configs[leader].listen.as_str())
    );

    cluster.members[leader] = None;
    let next = cluster.leader();
    // Both holdings were orphaned by the new leader's `LeaderStart`; the
    // background renewal of `lock` and the explicit renewal of `two` take
    // them over (nothing else can: the orphan TTL is a minute).
    let renewed = smol::block_on(two.renew()).expect("reclaimed by the renewal");
    assert_eq!(renewed, 4);
    wait_until(Duration::from_secs(20), || {
        orphans(&cluster, next) == Some(0)
    });
    assert!(!lock.is_lost() && !two.is_lost());
    assert_eq!(lock.token(), Some(token));
    assert_eq!(two.token(), Some(token2));
    assert_eq!(
        client.leader_hint().as_deref(),
        Some(cluster.configs[next].listen.as_str())
    );
    // Still held: nobody else gets it; the holders release with their
    // first tokens.
    let mut other = Client::connect(cluster.addr(next));
    assert_eq!(other.req("l", "k", "0"), "timeout");
    smol::block_on(async {
        lock.release().await?;
        two.release().await
    })
    .expect("released with the tokens granted before the failover");
    let (tok, _) = grant(&other.req("l", "k", "5"));
    assert!(fence(&tok) > token.fence.max(token2.fence));
}

#[test]
fn a_cluster_client_whose_orphan_was_released_reports_the_lock_lost() {
    use dflockd::client::{Client as ClusterClient, Error};
    use futures_lite::FutureExt;
    let mut cluster = Cluster::start(3, 1_500);
    let leader = cluster.leader();
    // No background renewal during the test (59 s of a 60 s lease).
    let client = ClusterClient::cluster(members_leader_last(&cluster, leader))
        .with_lease(Duration::from_secs(60))
        .with_renewal(0.99, 0.0);
    let mut lock = client.lock("orphaned");
    smol::block_on(lock.acquire(Duration::from_secs(5))).expect("granted");
    let lost = lock.lost();

    cluster.members[leader] = None;
    let next = cluster.leader();
    // The orphan outlives its TTL: the waiter gets the lock.
    let mut d = Client::connect(cluster.addr(next));
    grant(&d.req("l", "orphaned", "10 60"));
    // The reclaim finds nothing to take over: the renewal is refused and
    // the lock is lost.
    assert!(matches!(smol::block_on(lock.renew()), Err(Error::Server)));
    assert!(lock.is_lost());
    let fired = smol::block_on(
        async {
            lost.await;
            true
        }
        .or(async {
            smol::Timer::after(Duration::from_secs(10)).await;
            false
        }),
    );
    assert!(fired, "the lost signal fired");
}

/// The conformance kit (`dflockd conformance --addr`) passes against the
/// leader of a cluster: every transcript that runs on a server with the
/// default flags, none failed.
#[test]
fn the_conformance_kit_passes_against_the_leader() {
    let cluster = Cluster::start(3, 60_000);
    let leader = cluster.leader();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dflockd"))
        .args([
            "conformance",
            "--dir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/spec/conformance"),
            "--addr",
            &cluster.configs[leader].listen,
        ])
        .output()
        .expect("run dflockd conformance");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.contains(" passed, "))
        .unwrap_or_default()
        .to_owned();
    assert!(
        out.status.success() && summary.contains(" 0 failed"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: u64 = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 40, "{summary}");
}

const ADMIN: &str = "an-admin-token";

/// `POST /v1/admin/voters` on `http` with `token` (None: no header).
fn add_voter(http: SocketAddr, token: Option<&str>, p: &Peer) -> crate::http_client::Resp {
    let body = format!(
        r#"{{"id":{},"raft_addr":"{}","client_addr":"{}"}}"#,
        p.id, p.raft_addr, p.client_addr
    );
    let headers: Vec<(&str, &str)> = token.map(|t| ("X-Dflockd-Admin", t)).into_iter().collect();
    crate::http_client::call(http, "POST", "/v1/admin/voters", &headers, body.as_bytes())
}

#[test]
fn the_admin_routes_are_off_without_an_admin_token() {
    let cluster = Cluster::start(3, 60_000);
    let leader = cluster.leader();
    let http = cluster.members[leader]
        .as_ref()
        .unwrap()
        .http_addr()
        .unwrap();
    let r = add_voter(http, Some("anything"), &new_peer(4));
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "admin_disabled");
    let r = crate::http_client::call(
        http,
        "DELETE",
        "/v1/admin/voters/2",
        &[("X-Dflockd-Admin", "anything")],
        b"",
    );
    assert_eq!(r.json()["error"], "admin_disabled");
    // `GET /v1/readindex` needs no admin token: a barrier on the leader,
    // not_leader on a follower.
    let r = crate::http_client::get(http, "/v1/readindex");
    assert_eq!((r.status, r.json()["status"].clone()), (200, "ok".into()));
    let f = (leader + 1) % 3;
    let fh = cluster.members[f].as_ref().unwrap().http_addr().unwrap();
    let r = crate::http_client::get(fh, "/v1/readindex");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "not_leader");
    assert_eq!(
        r.header("x-dflockd-leader"),
        Some(cluster.configs[leader].listen.as_str())
    );
    // `GET /v1/stats` lists the replicated state, with `cluster` last.
    let mut c = Client::connect(cluster.addr(leader));
    grant(&c.req("l", "seen-over-http", "5 60"));
    let r = crate::http_client::get(http, "/v1/stats");
    assert!(r.body.contains("\"key\":\"seen-over-http\""), "{}", r.body);
    assert!(r.body.contains(",\"cluster\":{"), "{}", r.body);
    // The dashboard's view: three members, the leader named, this
    // member's own indexes only.
    let a = crate::http_client::get(http, "/v1/activity").json();
    let c = &a["cluster"];
    assert_eq!(c["leader"], cluster.configs[leader].listen.as_str(), "{c}");
    let members = c["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{c}");
    let me: Vec<&serde_json::Value> = members.iter().filter(|m| m["self"] == true).collect();
    assert_eq!(me.len(), 1, "{c}");
    assert_eq!(me[0]["role"], "leader");
    assert!(me[0]["commit_index"].as_u64().is_some_and(|i| i > 1), "{c}");
    assert!(members
        .iter()
        .filter(|m| m["self"] == false)
        .all(|m| m["role"] == "follower" && m["commit_index"].is_null() && m["addr"].is_string()));
}

/// A fourth member started with `--join` is added through the admin route
/// (a learner, then a voter), receives the replicated state, and can be
/// removed again; wrong tokens, followers and bad ids are refused.
#[test]
fn a_member_joins_a_running_cluster_and_leaves_it() {
    let mut cluster = Cluster::start_with(3, 60_000, Some(ADMIN));
    let leader = cluster.leader();
    let http = cluster.members[leader]
        .as_ref()
        .unwrap()
        .http_addr()
        .unwrap();
    // State to be replicated to the newcomer.
    let mut c = Client::connect(cluster.addr(leader));
    grant(&c.req("l", "before-the-join", "5 600"));

    let fourth = new_peer(4);
    // Refusals first: no token, a wrong one, a follower, a bad body.
    let r = add_voter(http, None, &fourth);
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, "unauthorized".into())
    );
    let r = add_voter(http, Some("an-admin-tokeN"), &fourth);
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, "forbidden".into())
    );
    let f = (leader + 1) % 3;
    let fh = cluster.members[f].as_ref().unwrap().http_addr().unwrap();
    let r = add_voter(fh, Some(ADMIN), &fourth);
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, "not_leader".into())
    );
    let r = crate::http_client::call(
        http,
        "POST",
        "/v1/admin/voters",
        &[("X-Dflockd-Admin", ADMIN)],
        br#"{"id":0,"raft_addr":"127.0.0.1:1","client_addr":"127.0.0.1:2"}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");
    let r = add_voter(
        http,
        Some(ADMIN),
        &Peer {
            id: 4,
            raft_addr: "no-port".into(),
            client_addr: fourth.client_addr.clone(),
        },
    );
    assert_eq!(r.status, 400, "{r:?}");

    // The newcomer starts empty with --join, then is added.
    let mut peers: Vec<Peer> = cluster.configs[0]
        .cluster
        .as_ref()
        .unwrap()
        .member
        .peers
        .clone();
    peers.push(fourth.clone());
    let dir = cluster._dir.0.clone();
    let cfg = member_config(&dir, &fourth, &peers, 60_000, Some(ADMIN), true);
    cluster
        .members
        .push(Some(spawn(cfg.clone()).expect("the fourth member starts")));
    cluster.configs.push(cfg);
    let r = add_voter(http, Some(ADMIN), &fourth);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["voters"], serde_json::json!([1, 2, 3, 4]));
    // Adding it twice is a conflict.
    let r = add_voter(http, Some(ADMIN), &fourth);
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (409, "conflict".into())
    );
    // It holds the replicated state and counts itself a voter.
    wait_until(Duration::from_secs(10), || {
        let s = Client::connect(cluster.addr(3)).req("stats", "_", "");
        s.contains("before-the-join") && s.contains("\"voters\":[1,2,3,4]")
    });
    // Every member knows its addresses (they came with the change): in
    // `stats` and in the dashboard's view.
    for i in 0..4 {
        let addr = cluster.addr(i);
        let mut known = serde_json::Value::Null;
        wait_until(Duration::from_secs(10), || {
            let s = Client::connect(addr).req("stats", "_", "");
            let s = s.strip_prefix("ok ").expect("stats answered");
            let s: serde_json::Value = serde_json::from_str(s).expect("stats is JSON");
            known = s["cluster"]["members"][3].clone();
            known["client_addr"] == fourth.client_addr.as_str()
        });
        assert_eq!(known["id"], 4, "member {i}: {known}");
        assert_eq!(known["voter"], true, "member {i}: {known}");
        assert_eq!(known["raft_addr"], fourth.raft_addr.as_str(), "member {i}");
        let h = cluster.members[i].as_ref().unwrap().http_addr().unwrap();
        let view = crate::http_client::call(h, "GET", "/v1/activity", &[], b"").json();
        let m = view["cluster"]["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["id"] == 4)
            .cloned()
            .expect("member 4 listed");
        assert_eq!(m["addr"], fourth.client_addr.as_str(), "member {i}: {view}");
    }
    // It serves as a follower: it names the leader.
    let mut d = Client::connect(cluster.addr(3));
    assert_eq!(
        d.req("l", "k", "0"),
        format!("error_not_leader {}", cluster.configs[leader].listen)
    );

    // Removal: a bad id, an unknown one, then the newcomer.
    let del = |path: &str| {
        crate::http_client::call(http, "DELETE", path, &[("X-Dflockd-Admin", ADMIN)], b"")
    };
    assert_eq!(del("/v1/admin/voters/x").status, 400);
    let r = del("/v1/admin/voters/9");
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, "not_found".into())
    );
    let r = del("/v1/admin/voters/4");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["voters"], serde_json::json!([1, 2, 3]));
    // The three go on serving.
    let (tok, _) = grant(&c.req("l", "after-the-leave", "5 60"));
    assert_eq!(c.req("r", "after-the-leave", &tok), "ok");
}

/// A semaphore limit above 1,048,576 is refused in cluster mode (TCP
/// `error`, HTTP `400 bad_request`); the bound itself is accepted.
#[test]
fn a_semaphore_limit_above_the_cluster_bound_is_refused() {
    let cluster = Cluster::start(3, 60_000);
    let leader = cluster.leader();
    let mut c = Client::connect(cluster.addr(leader));
    assert_eq!(c.req("sl", "big", "0 1048577"), "error");
    assert_eq!(c.req("se", "big", "1048577"), "error");
    let (tok, _) = grant(&c.req("sl", "big", "0 1048576"));
    assert_eq!(c.req("sr", "big", &tok), "ok");
    let http = cluster.members[leader]
        .as_ref()
        .unwrap()
        .http_addr()
        .unwrap();
    let r = crate::http_client::call(http, "POST", "/v1/sessions", &[], b"");
    let sid = r.json()["session_id"].as_str().expect("session").to_owned();
    let r = crate::http_client::call(
        http,
        "POST",
        "/v1/semaphores/big",
        &[("X-Dflockd-Session", &sid)],
        br#"{"acquire_timeout_s":0,"limit":1048577}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "bad_request");
}

/// The state views over HTTP (`/v1/stats?top`, `/v1/keys/{key}`,
/// `/v1/activity`, the `/metrics` totals) read the replicated core, on the
/// leader and on a follower's applied replica, labelled with the member's
/// role and applied index (spec/http.md §9).
#[test]
fn the_http_state_views_read_the_replicated_core_on_every_member() {
    let cluster = Cluster::start(3, 60_000);
    let leader = cluster.leader();
    let mut c = Client::connect(cluster.addr(leader));
    grant(&c.req("l", "viewed-lock", "5 600"));
    grant(&c.req("sl", "viewed-sem", "5 3 600"));
    let mut waiter = Client::connect(cluster.addr(leader));
    waiter.send("l", "viewed-lock", "60 600");
    let get = |i: usize, path: &str| {
        let h = cluster.members[i].as_ref().unwrap().http_addr().unwrap();
        crate::http_client::call(h, "GET", path, &[], b"")
    };
    for i in [leader, (leader + 1) % 3] {
        let role = if i == leader { "leader" } else { "follower" };
        // A follower shows what it has applied: wait for the waiter.
        let mut top = None;
        wait_until(Duration::from_secs(10), || {
            let r = get(i, "/v1/stats?top=5&sort=waiters");
            let ok = r.status == 200 && r.json()["keys"][0]["waiters"] == 1;
            top = Some(r);
            ok
        });
        let top = top.unwrap();
        let j = top.json();
        assert_eq!(j["keys"][0]["key"], "viewed-lock", "member {i}: {j}");
        assert_eq!(j["replica"]["role"], role, "{j}");
        assert!(j["replica"]["applied_index"].as_u64().unwrap() > 1, "{j}");
        assert_eq!(top.header("x-dflockd-role"), Some(role));
        assert!(top.header("x-dflockd-applied-index").is_some());

        let k = get(i, "/v1/keys/viewed-sem");
        assert_eq!(k.status, 200, "member {i}: {k:?}");
        let kj = k.json();
        assert_eq!(kj["resources"][0]["kind"], "semaphore", "{kj}");
        assert_eq!(kj["resources"][0]["holders"], 1, "{kj}");
        assert_eq!(
            kj["resources"][0]["holder_list"].as_array().unwrap().len(),
            1
        );
        assert_eq!(kj["replica"]["role"], role);
        let missing = get(i, "/v1/keys/never-used");
        assert_eq!(missing.status, 404);
        assert_eq!(missing.header("x-dflockd-role"), Some(role));

        let a = get(i, "/v1/activity");
        assert_eq!(a.status, 200);
        let aj = a.json();
        assert!(
            aj["totals"]["grants"].as_u64().unwrap() >= 2,
            "member {i}: {aj}"
        );
        assert_eq!(a.header("x-dflockd-role"), Some(role));

        let m = get(i, "/metrics");
        assert_eq!(m.status, 200);
        for line in [
            "dflockd_locks_held 1",
            "dflockd_lock_waiters 1",
            "dflockd_semaphore_holders 1",
        ] {
            assert!(
                m.body.lines().any(|l| l == line),
                "member {i} lacks {line:?}"
            );
        }
    }
    drop(waiter);
    drop(c);
}
