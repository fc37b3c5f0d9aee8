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

use crate::support::{fence, grant, wait_until, Client};

const TOKEN: &str = "a-member-token-of-at-least-32-bytes!";

fn free() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

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

impl Cluster {
    fn start(n: u64, orphan_ttl_ms: u64) -> Cluster {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n_dir = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = Scratch(
            std::env::temp_dir().join(format!("dflockd-it-cluster-{}-{n_dir}", std::process::id())),
        );
        let peers: Vec<Peer> = (1..=n)
            .map(|id| Peer {
                id,
                raft_addr: format!("127.0.0.1:{}", free()),
                client_addr: format!("127.0.0.1:{}", free()),
            })
            .collect();
        let configs: Vec<ServerConfig> = peers
            .iter()
            .map(|p| ServerConfig {
                listen: p.client_addr.clone(),
                threads: 1,
                http: Some(dflockd::config::HttpSettings::default()),
                cluster: Some(ClusterSettings {
                    member: ClusterConfig {
                        raft_dir: dir.0.join(p.id.to_string()),
                        node_id: p.id,
                        raft_addr: p.raft_addr.clone(),
                        peers: peers.clone(),
                        advertise_addr: None,
                        raft_auth_token: Some(TOKEN.into()),
                        raft_tls: None,
                        admin_token: None,
                    },
                    orphan_ttl_ms,
                    tick_ms: 20,
                }),
                ..ServerConfig::default()
            })
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
    wait_until(Duration::from_secs(20), || orphans(&cluster, next) == Some(0));
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
