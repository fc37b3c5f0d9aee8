//! The same log gives the same state and effects on every member, and a
//! snapshot restored mid-log continues exactly as the member it came from.

use super::*;
use crate::wire::{Key, Space, Token};

/// A small deterministic generator (no randomness in tests).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn entry(stamp: u64, op: Op) -> LogEntry {
    LogEntry {
        stamp: Time(stamp),
        op,
    }
}

fn start(stamp: u64) -> LogEntry {
    entry(
        stamp,
        Op::LeaderStart {
            fence_start: 1_000_000,
            salt_key: [7, 11],
            orphan_ttl_ms: 3_000,
            settings: String::new(),
        },
    )
}

/// Writes a random log of `n` entries while applying it to a machine (so
/// that releases and renewals name tokens that were really granted), and
/// returns the log.
fn random_log(seed: u64, n: usize) -> Vec<LogEntry> {
    let mut rng = Lcg(seed);
    let mut m = Machine::new(CoreConfig::default());
    let mut log = vec![start(10)];
    let mut fx = Vec::new();
    m.apply(&log[0], &mut fx);
    let mut stamp = 10;
    let mut next_session = 1u64;
    let mut live: Vec<u64> = Vec::new();
    let mut tokens: Vec<(u64, Space, Key, Token)> = Vec::new();
    let keys: Vec<Key> = (0..4)
        .map(|i| Key::new(format!("k{i}").as_bytes()).expect("key"))
        .collect();
    while log.len() < n {
        stamp += rng.below(700);
        let op = match rng.below(20) {
            0 => Op::LeaderStart {
                fence_start: 5,
                salt_key: [1, 2],
                orphan_ttl_ms: 1_000 + rng.below(4_000),
                settings: String::new(),
            },
            1..=3 => {
                let s = (1 << 32) | next_session;
                next_session += 1;
                live.push(s);
                Op::Connect { session: s }
            }
            4 if !live.is_empty() => {
                let s = live.swap_remove(rng.below(live.len() as u64) as usize);
                Op::Disconnect { session: s }
            }
            5 if !live.is_empty() => Op::StableRef {
                session: live[rng.below(live.len() as u64) as usize],
                reference: format!("ref{}", rng.below(4)).into_bytes(),
            },
            6 => Op::Tick,
            7 => Op::Barrier,
            8 | 9 if !tokens.is_empty() => {
                let (s, space, key, tok) =
                    tokens.swap_remove(rng.below(tokens.len() as u64) as usize);
                let token = tok.to_string().into_bytes().into_boxed_slice();
                let request = if rng.below(2) == 0 {
                    Request::Release { space, key, token }
                } else {
                    Request::Renew {
                        space,
                        key,
                        token,
                        lease_s: Some(1 + rng.below(3)),
                    }
                };
                Op::Request {
                    session: s,
                    request,
                }
            }
            10 if !live.is_empty() => Op::Cancel {
                session: live[rng.below(live.len() as u64) as usize],
            },
            _ if !live.is_empty() => {
                let session = live[rng.below(live.len() as u64) as usize];
                let key = keys[rng.below(keys.len() as u64) as usize].clone();
                let sem = rng.below(3) == 0;
                let request = match rng.below(3) {
                    0 => Request::Enqueue {
                        space: if sem { Space::Sem } else { Space::Lock },
                        key,
                        limit: if sem { 2 } else { 1 },
                        lease_s: Some(1 + rng.below(3)),
                    },
                    _ => Request::Acquire {
                        space: if sem { Space::Sem } else { Space::Lock },
                        key,
                        timeout_s: rng.below(3),
                        limit: if sem { 2 } else { 1 },
                        lease_s: Some(1 + rng.below(3)),
                    },
                };
                Op::Request { session, request }
            }
            _ => Op::Tick,
        };
        if let Op::Request { session, .. } | Op::StableRef { session, .. } = &op {
            let conn = m.state.sessions.get(session).map(|s| s.conn);
            if conn.is_some_and(|c| m.core().expect("started").is_blocked(c)) {
                continue;
            }
        }
        let e = entry(stamp, op);
        fx.clear();
        m.apply(&e, &mut fx);
        for f in &fx {
            if let Effect::Reply {
                conn,
                reply: Reply::Granted { token, .. } | Reply::Acquired { token, .. },
            } = f
            {
                if let (Some(s), Op::Request { request, .. }) = (m.session_of(*conn), &e.op) {
                    let (space, key) = match request {
                        Request::Acquire { space, key, .. }
                        | Request::Enqueue { space, key, .. } => (*space, key.clone()),
                        _ => continue,
                    };
                    tokens.push((s, space, key, *token));
                }
            }
        }
        log.push(e);
    }
    log
}

/// Effects as text, with the session each is for (core connection ids are
/// internal; sessions are what the leader routes by).
fn run(m: &mut Machine, log: &[LogEntry]) -> Vec<String> {
    let mut out = Vec::new();
    let mut fx = Vec::new();
    for e in log {
        fx.clear();
        let applied = m.apply(e, &mut fx);
        out.push(format!("{:?} {:?}", e.op, applied));
        for f in &fx {
            let conn = match f {
                Effect::Reply { conn, .. }
                | Effect::Close { conn, .. }
                | Effect::Push { conn, .. } => *conn,
            };
            out.push(format!("  {:?} {f:?}", m.session_of(conn)));
        }
    }
    out
}

#[test]
fn the_same_log_gives_the_same_state_and_effects_on_every_member() {
    for seed in 1..=20 {
        let log = random_log(seed, 600);
        let mut members: Vec<Machine> = (0..3)
            .map(|_| Machine::new(CoreConfig::default()))
            .collect();
        let effects: Vec<Vec<String>> = members.iter_mut().map(|m| run(m, &log)).collect();
        assert!(
            effects[0].iter().any(|l| l.contains("Granted")),
            "seed {seed}: the log grants something"
        );
        for (i, m) in members.iter().enumerate().skip(1) {
            assert_eq!(effects[i], effects[0], "seed {seed}: member {i}'s effects");
            assert_eq!(
                m.snapshot_bytes(),
                members[0].snapshot_bytes(),
                "seed {seed}: member {i}'s state"
            );
        }
    }
}

#[test]
fn a_member_restored_from_a_snapshot_continues_exactly_as_its_source() {
    for seed in 1..=20 {
        let log = random_log(100 + seed, 600);
        let cut = 150 + (seed as usize * 17) % 300;
        let mut source = Machine::new(CoreConfig::default());
        run(&mut source, &log[..cut]);
        let snap = source.snapshot_bytes();
        let mut restored = Machine::new(CoreConfig::default());
        restored.restore_bytes(&snap).expect("restores");
        assert_eq!(restored.snapshot_bytes(), snap, "seed {seed}: round trip");
        let a = run(&mut source, &log[cut..]);
        let b = run(&mut restored, &log[cut..]);
        assert_eq!(a, b, "seed {seed}: effects after the snapshot");
        assert_eq!(
            restored.snapshot_bytes(),
            source.snapshot_bytes(),
            "seed {seed}"
        );
    }
}

#[test]
fn a_damaged_snapshot_is_refused() {
    let log = random_log(7, 200);
    let mut m = Machine::new(CoreConfig::default());
    run(&mut m, &log);
    let snap = m.snapshot_bytes();
    let mut fresh = Machine::new(CoreConfig::default());
    assert!(fresh.restore_bytes(&snap[..snap.len() / 2]).is_err());
    assert!(fresh.restore_bytes(b"{\"version\":2}").is_err());
}

fn session_req(session: u64, request: Request) -> Op {
    Op::Request { session, request }
}

fn lock(key: &str, lease_s: u64) -> Request {
    Request::Acquire {
        space: Space::Lock,
        key: Key::new(key.as_bytes()).expect("key"),
        timeout_s: 0,
        limit: 1,
        lease_s: Some(lease_s),
    }
}

fn replies(m: &Machine, fx: &[Effect], session: u64) -> Vec<Reply> {
    fx.iter()
        .filter_map(|f| match f {
            Effect::Reply { conn, reply } if m.session_of(*conn) == Some(session) => {
                Some(reply.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn orphans_keep_their_holdings_for_the_ttl_then_release_them() {
    let mut m = Machine::new(CoreConfig::default());
    let mut fx = Vec::new();
    m.apply(&start(1_000), &mut fx);
    m.apply(&entry(1_000, Op::Connect { session: 1 }), &mut fx);
    m.apply(&entry(1_000, Op::Connect { session: 2 }), &mut fx);
    fx.clear();
    m.apply(&entry(1_000, session_req(1, lock("a", 60))), &mut fx);
    assert!(matches!(replies(&m, &fx, 1)[..], [Reply::Granted { .. }]));
    // A new leader: session 1 is an orphan until 1_000 + 3_000.
    m.apply(&start(1_500), &mut fx);
    assert_eq!(m.orphan_count(), 2);
    assert_eq!(m.next_deadline(), Some(Time(4_500)));
    m.apply(&entry(2_000, Op::Connect { session: 3 }), &mut fx);
    fx.clear();
    m.apply(&entry(4_499, session_req(3, lock("a", 60))), &mut fx);
    assert_eq!(replies(&m, &fx, 3), vec![Reply::Status(Status::Timeout)]);
    // At the deadline the orphan goes, and with it its lock.
    fx.clear();
    m.apply(&entry(4_500, session_req(3, lock("a", 60))), &mut fx);
    assert!(matches!(replies(&m, &fx, 3)[..], [Reply::Granted { .. }]));
    assert_eq!(m.orphan_count(), 0);
}

#[test]
fn a_stable_ref_takes_the_orphan_over_with_its_tokens() {
    let mut m = Machine::new(CoreConfig::default());
    let mut fx = Vec::new();
    m.apply(&start(1_000), &mut fx);
    m.apply(&entry(1_000, Op::Connect { session: 1 }), &mut fx);
    let sref = |session| Op::StableRef {
        session,
        reference: b"client-7".to_vec(),
    };
    fx.clear();
    m.apply(&entry(1_000, sref(1)), &mut fx);
    assert_eq!(replies(&m, &fx, 1), vec![Reply::Ok]);
    fx.clear();
    m.apply(&entry(1_000, session_req(1, lock("a", 60))), &mut fx);
    let [Reply::Granted { token, .. }] = &replies(&m, &fx, 1)[..] else {
        panic!("granted");
    };
    let token = token.to_string();
    m.apply(&start(2_000), &mut fx);
    // A second connection may not take a live session's reference.
    m.apply(&entry(2_000, Op::Connect { session: 2 }), &mut fx);
    m.apply(&entry(2_000, Op::Connect { session: 3 }), &mut fx);
    fx.clear();
    m.apply(&entry(2_100, sref(2)), &mut fx);
    assert_eq!(replies(&m, &fx, 2), vec![Reply::Ok], "takes the orphan");
    fx.clear();
    m.apply(&entry(2_100, sref(3)), &mut fx);
    assert_eq!(replies(&m, &fx, 3), vec![Reply::Status(Status::Error)]);
    // The token works for session 2, past the orphan's deadline.
    fx.clear();
    let renew = Request::Renew {
        space: Space::Lock,
        key: Key::new(b"a").expect("key"),
        token: token.into_bytes().into(),
        lease_s: Some(60),
    };
    m.apply(&entry(9_000, session_req(2, renew)), &mut fx);
    assert_eq!(replies(&m, &fx, 2), vec![Reply::OkInt(60)]);
}

#[test]
fn the_clock_never_goes_back_and_a_late_stamp_counts_an_alarm() {
    let mut m = Machine::new(CoreConfig::default());
    let mut fx = Vec::new();
    m.apply(&start(5_000), &mut fx);
    assert_eq!(m.apply(&entry(4_000, Op::Tick), &mut fx).clock, Time(5_000));
    assert_eq!(m.clock_alarms, 1);
    assert_eq!(
        m.apply(&entry(6_000, Op::Barrier), &mut fx).clock,
        Time(6_000)
    );
}

#[test]
fn a_leader_start_with_other_settings_is_counted() {
    let mut m = Machine::new(CoreConfig::default());
    let mut other = CoreConfig::default();
    other.max_locks += 1;
    let theirs = Machine::new(other).settings_text();
    assert_ne!(theirs, m.settings_text());
    let leader_start = |settings: String| {
        entry(
            1_000,
            Op::LeaderStart {
                fence_start: 1,
                salt_key: [1, 2],
                orphan_ttl_ms: 1_000,
                settings,
            },
        )
    };
    let mut fx = Vec::new();
    m.apply(&leader_start(m.settings_text()), &mut fx);
    assert_eq!(m.settings_mismatches, 0);
    m.apply(&leader_start(String::new()), &mut fx);
    assert_eq!(m.settings_mismatches, 0, "an entry from before the field");
    m.apply(&leader_start(theirs), &mut fx);
    assert_eq!(m.settings_mismatches, 1);
}

#[test]
fn fences_keep_increasing_across_leader_starts() {
    let mut m = Machine::new(CoreConfig::default());
    let mut fx = Vec::new();
    m.apply(&start(1), &mut fx);
    let mut last = 0;
    for i in 0..5u64 {
        let s = 10 + i;
        m.apply(&entry(i * 100, Op::Connect { session: s }), &mut fx);
        fx.clear();
        m.apply(
            &entry(i * 100, session_req(s, lock(&format!("k{i}"), 5))),
            &mut fx,
        );
        let [Reply::Granted { token, .. }] = &replies(&m, &fx, s)[..] else {
            panic!("granted");
        };
        assert!(token.fence > last && token.fence > 1_000_000);
        last = token.fence;
        m.apply(&start(i * 100 + 50), &mut fx);
    }
}

/// The HTTP views read a member's replicated core with `Job::read`
/// (spec/http.md §9): reading never changes it, so a member that was read
/// mid-log goes on exactly as one that was not (same effects, same state),
/// and the reads see what the log built.
#[test]
fn reading_the_core_in_slices_never_changes_the_replicated_state() {
    use crate::core::introspect::{HoldersJob, Job, Sort, StatsJob, TopJob, TopQuery};
    for seed in 1..=10 {
        let log = random_log(300 + seed, 600);
        let cut = 200 + (seed as usize * 23) % 300;
        let mut read = Machine::new(CoreConfig::default());
        let mut untouched = Machine::new(CoreConfig::default());
        assert_eq!(
            run(&mut read, &log[..cut]),
            run(&mut untouched, &log[..cut])
        );
        let before = read.snapshot_bytes();
        let core = read.core().expect("started");
        let mut stats = StatsJob::new();
        while !stats.read(core) {}
        assert!(
            stats.render().contains("\"k"),
            "seed {seed}: the listing names keys"
        );
        for sort in [Sort::Waiters, Sort::HeldFor, Sort::Fill, Sort::Key] {
            let mut top = TopJob::new(TopQuery {
                sort,
                top: 3,
                prefix: None,
                space: None,
            });
            while !top.read(core) {}
        }
        let mut holders = HoldersJob::new(Space::Sem, Key::new(b"k1").expect("key"), 10);
        while !holders.read(core) {}
        assert_eq!(
            read.snapshot_bytes(),
            before,
            "seed {seed}: a read changed the state"
        );
        let a = run(&mut read, &log[cut..]);
        let b = run(&mut untouched, &log[cut..]);
        assert_eq!(a, b, "seed {seed}: effects after the read");
        assert_eq!(
            read.snapshot_bytes(),
            untouched.snapshot_bytes(),
            "seed {seed}"
        );
    }
}

/// One entry of every op and every request, with options set and unset.
fn every_kind_of_entry() -> Vec<LogEntry> {
    let key = |k: &str| Key::new(k.as_bytes()).expect("key");
    let tok: Box<[u8]> = b"0123456789abcdef0123456789abcdef".to_vec().into();
    let requests = vec![
        lock("a", 30),
        Request::Acquire {
            space: Space::Sem,
            key: key("s"),
            timeout_s: u64::MAX,
            limit: 5,
            lease_s: None,
        },
        Request::Release {
            space: Space::Lock,
            key: key("a"),
            token: tok.clone(),
        },
        Request::Renew {
            space: Space::Sem,
            key: key("s"),
            token: tok.clone(),
            lease_s: Some(0),
        },
        Request::Renew {
            space: Space::Lock,
            key: key("a"),
            token: tok.clone(),
            lease_s: None,
        },
        Request::Enqueue {
            space: Space::Sem,
            key: key("\u{e9}\u{ff}k"),
            limit: 1 << 20,
            lease_s: Some(1),
        },
        Request::Wait {
            space: Space::Lock,
            key: key("a"),
            timeout_s: 0,
        },
        Request::Stats,
        Request::Auth { token: tok.clone() },
        Request::Ping,
        Request::Listen {
            pattern: key("a.*"),
            group: Some(b"g".to_vec().into()),
        },
        Request::Unlisten {
            pattern: key("a.>"),
            group: None,
        },
        Request::Signal {
            channel: key("c"),
            payload: b"hello world".to_vec().into(),
        },
        Request::Barrier,
        Request::StableRef {
            reference: b"ref-1".to_vec().into(),
        },
    ];
    let mut log = vec![
        entry(
            u64::MAX,
            Op::LeaderStart {
                fence_start: u64::MAX,
                salt_key: [0, u64::MAX],
                orphan_ttl_ms: 30_000,
                settings: "max-locks=1024 \u{e9}".into(),
            },
        ),
        start(0),
        entry(1, Op::Tick),
        entry(2, Op::Connect { session: 1 << 32 }),
        entry(
            3,
            Op::StableRef {
                session: 7,
                reference: b"r".to_vec(),
            },
        ),
        entry(4, Op::Cancel { session: 0 }),
        entry(5, Op::Disconnect { session: u64::MAX }),
        entry(6, Op::Barrier),
    ];
    for (i, r) in requests.into_iter().enumerate() {
        log.push(entry(100 + i as u64, session_req(i as u64 * 300, r)));
    }
    log
}

#[test]
fn entries_round_trip_in_the_binary_layout_and_earlier_json_is_still_read() {
    let mut all = every_kind_of_entry();
    for seed in 0..8 {
        all.extend(random_log(seed, 300));
    }
    for e in &all {
        let bin = e.encode();
        assert_eq!(bin[0], codec::BINARY_V1);
        assert_eq!(&LogEntry::decode(&bin).expect("binary decodes"), e);
        // An earlier release's log (JSON) is read as before.
        let json = e.encode_json();
        assert_eq!(&LogEntry::decode(&json).expect("JSON decodes"), e);
        assert!(bin.len() < json.len(), "{e:?}: binary is not smaller");
    }
}

#[test]
fn a_damaged_entry_is_a_typed_error_never_a_panic() {
    use codec::DecodeError;
    for e in every_kind_of_entry() {
        let bin = e.encode();
        // Every cut short is refused (no field is optional at the end).
        for n in 0..bin.len() {
            assert!(LogEntry::decode(&bin[..n]).is_err(), "{e:?} cut at {n}");
        }
        // Every byte flipped either way: an error or some entry, no panic.
        for i in 1..bin.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut b = bin.clone();
                b[i] ^= flip;
                let _ = LogEntry::decode(&b);
            }
        }
        let mut long = bin.clone();
        long.push(0);
        assert_eq!(LogEntry::decode(&long), Err(DecodeError::Trailing(1)));
    }
    assert_eq!(LogEntry::decode(b""), Err(DecodeError::Empty));
    let unknown = LogEntry::decode(&[0x02, 0, 1]).unwrap_err();
    assert_eq!(unknown, DecodeError::UnknownFormat(0x02));
    assert!(unknown.to_string().contains("0x02"), "{unknown}");
    // Eleven continuation bytes, and a tenth byte past the 64th bit.
    let mut over = vec![codec::BINARY_V1];
    over.extend([0xff; 11]);
    assert_eq!(LogEntry::decode(&over), Err(DecodeError::BadInteger));
    let mut wide = vec![codec::BINARY_V1];
    wide.extend([0xff; 9]);
    wide.push(0x02);
    assert_eq!(LogEntry::decode(&wide), Err(DecodeError::BadInteger));
    // A length past the end is refused before anything is allocated.
    let huge = [codec::BINARY_V1, 0, 3, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert_eq!(LogEntry::decode(&huge), Err(DecodeError::Truncated));
    // A key with a space breaks the key rules; an unknown op number.
    let mut bad_key = entry(1, session_req(1, lock("ab", 5))).encode();
    let at = bad_key.iter().position(|&b| b == b'a').expect("key");
    bad_key[at] = b' ';
    assert_eq!(LogEntry::decode(&bad_key), Err(DecodeError::BadKey));
    assert_eq!(
        LogEntry::decode(&[codec::BINARY_V1, 0, 9]),
        Err(DecodeError::UnknownTag { what: "op", tag: 9 })
    );
    assert!(matches!(
        LogEntry::decode(b"{\"stamp\":"),
        Err(DecodeError::Json(_))
    ));
}
