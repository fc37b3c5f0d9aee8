//! Cluster mode's replication layer (spec/cluster.md): several members
//! agree on one log of opaque entries through TiKV's `raft` library, and
//! each member applies the committed entries, in order, to its own copy of
//! a state machine.
//!
//! This layer knows nothing of locks: an entry is bytes, the state
//! machine is a [`replica::StateMachine`] (apply an entry, serialize
//! itself, restore from a snapshot). Cluster mode proper plugs the engine's
//! inputs in as entries and the engine in as the state machine.
//!
//! Reading order:
//! 1. [`storage`]: the log, hard state, conf state and snapshots in
//!    `--raft-dir` (fjall), with the fsync rules of spec/cluster.md §2.6.
//! 2. [`transport`]: authenticated, size-capped TCP (optionally mutual
//!    TLS) between members; only peer message types reach the library.
//! 3. [`replica`]: the one task that owns the `RawNode`: ticks, steps,
//!    proposals, the `Ready` cycle of §2.5, snapshots, membership, status.
//! 4. [`logger`]: the library's `slog` records forwarded to our log lines.
//!
//! [`Peer`] and [`parse_peers`] are the `--cluster-peers` syntax, shared by
//! the configuration and by membership changes (a new voter's addresses
//! travel in its conf change in the same syntax).

/// The largest semaphore limit cluster mode accepts (upstream's bound,
/// spec/cluster.md §7): it bounds what one entry can make a snapshot hold.
/// A larger one is refused before it reaches the log: `error` over TCP,
/// `400 bad_request` over HTTP.
pub const MAX_SEMAPHORE_LIMIT: u64 = 1 << 20;

/// Whether `req` asks for a semaphore limit above [`MAX_SEMAPHORE_LIMIT`].
pub fn limit_too_large(req: &crate::wire::Request) -> bool {
    use crate::wire::Request;
    matches!(
        req,
        Request::Acquire { limit, .. } | Request::Enqueue { limit, .. }
            if *limit > MAX_SEMAPHORE_LIMIT
    )
}

pub mod logger;
pub mod machine;
pub mod node;
pub mod replica;
pub mod storage;
pub mod transport;

use std::fmt;

/// One member as `--cluster-peers` names it: `id=raftHost:port@clientHost:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The member id, > 0.
    pub id: u64,
    /// Where its Raft transport listens (`--raft-addr` on that member).
    pub raft_addr: String,
    /// The client address other members give out for it in
    /// `error_not_leader` (its `--advertise-addr`, or the one listed).
    pub client_addr: String,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}@{}", self.id, self.raft_addr, self.client_addr)
    }
}

/// Why a `--cluster-peers` value (or one member of it) was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeersError {
    /// Nothing but separators.
    Empty,
    /// A member without `=` or `@`: `id=raftHost:port@clientHost:port`.
    Shape(String),
    /// The id is not an integer > 0.
    Id(String),
    /// An address is not `host:port` with a port 1-65535.
    Addr(String),
    /// The same id twice.
    DuplicateId(u64),
    /// The same Raft address for two members.
    DuplicateAddr(String),
}

impl fmt::Display for PeersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeersError::Empty => f.write_str("names no member"),
            PeersError::Shape(m) => write!(f, "{m:?} is not id=raftHost:port@clientHost:port"),
            PeersError::Id(id) => write!(f, "member id {id:?} is not an integer > 0"),
            PeersError::Addr(a) => write!(f, "{a:?} is not host:port with a port 1-65535"),
            PeersError::DuplicateId(id) => write!(f, "member id {id} is listed twice"),
            PeersError::DuplicateAddr(a) => write!(f, "Raft address {a} is listed twice"),
        }
    }
}

impl std::error::Error for PeersError {}

/// Parses one member, `id=raftHost:port@clientHost:port`.
pub fn parse_peer(text: &str) -> Result<Peer, PeersError> {
    let text = text.trim();
    let shape = || PeersError::Shape(text.to_owned());
    let (id, addrs) = text.split_once('=').ok_or_else(shape)?;
    // The client address follows the last `@`, so a Raft host can never
    // contain one by accident and an IPv6 literal stays in brackets.
    let (raft, client) = addrs.rsplit_once('@').ok_or_else(shape)?;
    let id = id.trim();
    let id_n: u64 = id
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| PeersError::Id(id.to_owned()))?;
    Ok(Peer {
        id: id_n,
        raft_addr: check_addr(raft.trim())?,
        client_addr: check_addr(client.trim())?,
    })
}

/// Parses a whole `--cluster-peers` value: members separated by commas,
/// ids and Raft addresses unique. Sorted by id.
pub fn parse_peers(text: &str) -> Result<Vec<Peer>, PeersError> {
    let mut peers = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let peer = parse_peer(part)?;
        if peers.iter().any(|p: &Peer| p.id == peer.id) {
            return Err(PeersError::DuplicateId(peer.id));
        }
        if peers.iter().any(|p: &Peer| p.raft_addr == peer.raft_addr) {
            return Err(PeersError::DuplicateAddr(peer.raft_addr));
        }
        peers.push(peer);
    }
    if peers.is_empty() {
        return Err(PeersError::Empty);
    }
    peers.sort_by_key(|p| p.id);
    Ok(peers)
}

/// `host:port` with a non-empty host and a port 1-65535; an IPv6 host in
/// brackets. Names are not resolved here (that happens on each dial).
pub fn check_addr(addr: &str) -> Result<String, PeersError> {
    let bad = || PeersError::Addr(addr.to_owned());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && !host.contains([':', '@', ',', '=', '[', ']'])
            && !host.contains(char::is_whitespace)
    };
    if port_ok && host_ok {
        Ok(addr.to_owned())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_in_the_documented_syntax() {
        let peers =
            parse_peers("2=127.0.0.1:7002@127.0.0.1:6402, 1=[::1]:7001@db1.example:6401,").unwrap();
        assert_eq!(
            peers,
            vec![
                Peer {
                    id: 1,
                    raft_addr: "[::1]:7001".into(),
                    client_addr: "db1.example:6401".into()
                },
                Peer {
                    id: 2,
                    raft_addr: "127.0.0.1:7002".into(),
                    client_addr: "127.0.0.1:6402".into()
                },
            ]
        );
        assert_eq!(peers[0].to_string(), "1=[::1]:7001@db1.example:6401");
        assert_eq!(parse_peer(&peers[0].to_string()).unwrap(), peers[0]);
    }

    #[test]
    fn bad_peers_are_typed_errors() {
        let check = |text: &str, want: PeersError| assert_eq!(parse_peers(text), Err(want));
        check(" , ", PeersError::Empty);
        check("1=a:1", PeersError::Shape("1=a:1".into()));
        check("a:1@b:2", PeersError::Shape("a:1@b:2".into()));
        check("0=a:1@b:2", PeersError::Id("0".into()));
        check("x=a:1@b:2", PeersError::Id("x".into()));
        check("1=a@b:2", PeersError::Addr("a".into()));
        check("1=a:0@b:2", PeersError::Addr("a:0".into()));
        check("1=a:1@b:99999", PeersError::Addr("b:99999".into()));
        check("1=:1@b:2", PeersError::Addr(":1".into()));
        check("1=::1:7@b:2", PeersError::Addr("::1:7".into()));
        check("1=[zz]:7@b:2", PeersError::Addr("[zz]:7".into()));
        check("1=a:1@b:2,1=c:1@d:2", PeersError::DuplicateId(1));
        check(
            "1=a:1@b:2,2=a:1@d:2",
            PeersError::DuplicateAddr("a:1".into()),
        );
    }
}
