// Protobuf messages are built field by field, as raft-proto's own code does.
#![allow(clippy::field_reassign_with_default)]

use raft::Storage as _;

use super::*;

/// A fresh directory under the target's temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("dflockd-store-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = Bytes::from(format!("entry {index}@{term}"));
    e
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    let mut h = HardState::default();
    h.term = term;
    h.vote = vote;
    h.commit = commit;
    h
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn indexes(s: &LogStore, low: u64, high: u64) -> Vec<(u64, u64)> {
    s.entries(low, high, None, ctx())
        .unwrap()
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
}

#[test]
fn entries_and_hard_state_survive_reopening() {
    let dir = TempDir::new("reopen");
    {
        let mut s = LogStore::open(&dir.0).unwrap();
        assert!(!s.is_initialized());
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 0));
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], Some(&hs(1, 2, 2)))
            .unwrap();
        // A commit index alone costs no write (spec/cluster.md §2.6 rule
        // 3): it is kept in memory...
        s.set_commit(3).unwrap();
        assert_eq!(s.hard_state(), &hs(1, 2, 3));
    }
    {
        let mut s = LogStore::open(&dir.0).unwrap();
        assert_eq!(s.hard_state(), &hs(1, 2, 2));
        s.set_commit(3).unwrap();
        // ...and stored by the next transaction, here entries without a
        // hard state of their own.
        s.append(&[entry(4, 1)], None).unwrap();
    }
    let s = LogStore::open(&dir.0).unwrap();
    assert!(s.is_initialized());
    assert_eq!(indexes(&s, 1, 5), vec![(1, 1), (2, 1), (3, 1), (4, 1)]);
    assert_eq!(s.hard_state(), &hs(1, 2, 3));
    assert_eq!(s.term(0).unwrap(), 0);
    assert_eq!(s.term(2).unwrap(), 1);
    assert!(matches!(
        s.term(5),
        Err(raft::Error::Store(raft::StorageError::Unavailable))
    ));
    let e = s.entries(2, 3, None, ctx()).unwrap();
    assert_eq!(&e[0].data[..], b"entry 2@1");
}

#[test]
fn a_new_leaders_entries_replace_the_suffix_on_disk_too() {
    let dir = TempDir::new("overwrite");
    {
        let mut s = LogStore::open(&dir.0).unwrap();
        s.append(
            &[entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1)],
            Some(&hs(1, 1, 1)),
        )
        .unwrap();
        // Term 2 rewrites from index 3 and ends before the old log did.
        s.append(&[entry(3, 2)], Some(&hs(2, 0, 1))).unwrap();
        assert_eq!(indexes(&s, 1, 4), vec![(1, 1), (2, 1), (3, 2)]);
    }
    let s = LogStore::open(&dir.0).unwrap();
    assert_eq!(s.last_index().unwrap(), 3);
    assert_eq!(indexes(&s, 1, 4), vec![(1, 1), (2, 1), (3, 2)]);
}

#[test]
fn entries_respect_the_size_cap_but_return_at_least_one() {
    let dir = TempDir::new("maxsize");
    let mut s = LogStore::open(&dir.0).unwrap();
    s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
        .unwrap();
    assert_eq!(s.entries(1, 4, Some(0), ctx()).unwrap().len(), 1);
    let one = u64::from(entry(1, 1).compute_size());
    assert_eq!(s.entries(1, 4, Some(2 * one), ctx()).unwrap().len(), 2);
    assert!(matches!(
        s.entries(1, 9, None, ctx()),
        Err(raft::Error::Store(raft::StorageError::Unavailable))
    ));
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let dir = TempDir::new("contract");
    let mut s = LogStore::open(&dir.0).unwrap();
    s.append(&[entry(1, 1)], None).unwrap();
    assert!(matches!(
        s.append(&[entry(3, 1)], None),
        Err(StoreError::Contract(_))
    ));
    assert!(matches!(
        s.append(&[entry(2, 1), entry(4, 1)], None),
        Err(StoreError::Contract(_))
    ));
    assert!(matches!(s.bootstrap(&[1]), Err(StoreError::Contract(_))));
    // A snapshot past the commit index is refused.
    let mut meta = SnapshotMetadata::default();
    meta.index = 1;
    meta.term = 1;
    assert!(matches!(
        s.save_snapshot(meta, Bytes::new(), 0),
        Err(StoreError::Contract(_))
    ));
    // Nothing was written by the refused calls.
    drop(s);
    let s = LogStore::open(&dir.0).unwrap();
    assert_eq!(s.last_index().unwrap(), 1);
}

fn snapshot_meta(index: u64, term: u64, voters: &[u64]) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata::default();
    meta.index = index;
    meta.term = term;
    meta.mut_conf_state().voters = voters.to_vec();
    meta
}

#[test]
fn a_snapshot_stores_a_commit_index_not_yet_written() {
    // A restart resumes applying at the snapshot's index, which Raft
    // requires to be committed: the stored commit index must cover it even
    // when only memory had it.
    let dir = TempDir::new("snapcommit");
    {
        let mut s = LogStore::open(&dir.0).unwrap();
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        s.append(&ents, Some(&hs(1, 1, 2))).unwrap();
        s.set_commit(4).unwrap();
        s.save_snapshot(snapshot_meta(4, 1, &[1]), Bytes::from_static(b"state"), 1)
            .unwrap();
    }
    let s = LogStore::open(&dir.0).unwrap();
    assert_eq!(s.hard_state(), &hs(1, 1, 4));
    assert_eq!(s.snapshot_index(), 4);
}

#[test]
fn a_snapshot_compacts_the_log_and_keeps_a_tail() {
    let dir = TempDir::new("compact");
    {
        let mut s = LogStore::open(&dir.0).unwrap();
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 6)).collect();
        s.append(&ents, Some(&hs(2, 1, 9))).unwrap();
        s.save_snapshot(
            snapshot_meta(8, 2, &[1, 2, 3]),
            Bytes::from_static(b"state@8"),
            3,
        )
        .unwrap();
        assert_eq!(s.truncated(), (5, 1));
        assert_eq!(s.first_index().unwrap(), 6);
        assert_eq!(s.term(5).unwrap(), 1);
        assert!(matches!(
            s.term(4),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(5, 7, None, ctx()),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
        // A newer snapshot replaces the older file.
        s.save_snapshot(
            snapshot_meta(9, 2, &[1, 2, 3]),
            Bytes::from_static(b"state@9"),
            0,
        )
        .unwrap();
    }
    let s = LogStore::open(&dir.0).unwrap();
    assert_eq!(s.truncated(), (9, 2));
    assert_eq!(indexes(&s, 10, 11), vec![(10, 2)]);
    let snap = s.snapshot(0, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 9);
    assert_eq!(&snap.data[..], b"state@9");
    // Member 4 joined after it was taken: it needs a newer snapshot.
    assert!(!s.take_snapshot_request());
    assert!(s.snapshot(0, 4).is_err());
    assert!(s.take_snapshot_request());
    // So does a request past it.
    assert!(s.snapshot(10, 2).is_err());
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    let files: Vec<String> = fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

#[test]
fn an_installed_snapshot_replaces_the_log() {
    let dir = TempDir::new("install");
    {
        let mut s = LogStore::open(&dir.0).unwrap();
        s.append(&[entry(1, 1), entry(2, 1)], Some(&hs(1, 0, 1)))
            .unwrap();
        let mut snap = Snapshot::default();
        snap.set_metadata(snapshot_meta(20, 3, &[1, 2, 4]));
        snap.data = Bytes::from_static(b"leader state");
        s.install_snapshot(&snap).unwrap();
        assert_eq!(s.last_index().unwrap(), 20);
        assert_eq!(s.hard_state(), &hs(3, 0, 20));
        s.append(&[entry(21, 3)], None).unwrap();
    }
    let s = LogStore::open(&dir.0).unwrap();
    assert_eq!(s.first_index().unwrap(), 21);
    assert_eq!(s.term(20).unwrap(), 3);
    assert_eq!(indexes(&s, 21, 22), vec![(21, 3)]);
    assert_eq!(s.conf_state().voters, vec![1, 2, 4]);
    let (meta, data) = s.snapshot_for_restore().unwrap();
    assert_eq!((meta.index, &data[..]), (20, &b"leader state"[..]));
}

#[test]
fn a_missing_snapshot_is_asked_for() {
    let dir = TempDir::new("want");
    let s = LogStore::open(&dir.0).unwrap();
    assert!(!s.take_snapshot_request());
    assert!(matches!(
        s.snapshot(0, 2),
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable
        ))
    ));
    assert!(s.take_snapshot_request());
    assert!(!s.take_snapshot_request());
}

#[test]
fn stray_snapshot_files_are_removed_on_open() {
    let dir = TempDir::new("stray");
    {
        let mut s = LogStore::open(&dir.0).unwrap();
        s.append(&[entry(1, 1), entry(2, 1)], Some(&hs(1, 0, 2)))
            .unwrap();
        s.save_snapshot(snapshot_meta(2, 1, &[1]), Bytes::from_static(b"s"), 0)
            .unwrap();
    }
    // A crash after writing a newer snapshot but before recording it, and
    // one in the middle of writing the temporary file.
    let newer = dir.0.join(format!("snapshot-{:020}-{:020}.snap", 9, 9));
    fs::write(&newer, b"whatever").unwrap();
    let tmp = dir
        .0
        .join(format!("snapshot-{:020}-{:020}.snap.tmp", 10, 9));
    fs::write(&tmp, b"half").unwrap();
    let s = LogStore::open(&dir.0).unwrap();
    assert_eq!(s.snapshot_index(), 2);
    assert!(!newer.exists() && !tmp.exists());
}

/// A store with a snapshot and a few entries, and its directory.
fn populated(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    let mut s = LogStore::open(&dir.0).unwrap();
    let ents: Vec<Entry> = (1..=40).map(|i| entry(i, 1)).collect();
    s.append(&ents, Some(&hs(1, 1, 40))).unwrap();
    s.save_snapshot(
        snapshot_meta(30, 1, &[1, 2, 3]),
        Bytes::from(vec![7u8; 3000]),
        5,
    )
    .unwrap();
    dir
}

fn snapshot_file(dir: &Path) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .expect("a snapshot file")
}

/// Opening must give a typed error or a consistent store: never a panic.
/// Returns whether it opened.
fn open_without_panic(dir: &Path, what: &str) -> bool {
    let opened = std::panic::catch_unwind(|| LogStore::open(dir).map(|s| s.last_index().unwrap()));
    match opened {
        Err(_) => panic!("opening panicked after {what}"),
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            assert!(
                matches!(
                    e,
                    StoreError::Corrupt { .. }
                        | StoreError::Db { .. }
                        | StoreError::Io { .. }
                        | StoreError::Format { .. }
                ),
                "{what}: {e:?}"
            );
            // The error names the file it is about.
            assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
            false
        }
    }
}

/// The journal files of the database, largest last (the active one).
fn journals(dir: &Path) -> Vec<PathBuf> {
    let mut out = store_files(&dir.join(DB_DIR));
    out.retain(|p| p.extension().is_some_and(|x| x == "jnl"));
    out.sort_by_key(|p| fs::metadata(p).unwrap().len());
    out
}

/// Every file of the store: the database's and the snapshot's.
fn store_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// What `populated` wrote, batch by batch: nothing, the 40 entries, then
/// the snapshot that compacted them to 26..=40. A store that opens must
/// show one of these (a prefix of the committed batches), never a mix.
fn is_a_durable_prefix(s: &LogStore) -> bool {
    let span = (s.first_index().unwrap(), s.last_index().unwrap());
    match span {
        (1, 0) => !s.is_initialized(),
        (1, 40) => s.hard_state() == &hs(1, 1, 40) && s.snapshot_index() == 0,
        (26, 40) => s.hard_state() == &hs(1, 1, 40) && s.snapshot_index() == 30,
        _ => false,
    }
}

#[test]
fn a_database_file_of_the_earlier_layout_is_refused_by_name() {
    let dir = TempDir::new("legacy");
    fs::write(dir.0.join(LEGACY_DB_FILE), b"redb").unwrap();
    match LogStore::open(&dir.0) {
        Err(e @ StoreError::Legacy { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(LEGACY_DB_FILE), "{msg}");
            assert!(msg.contains("does not read"), "{msg}");
        }
        other => panic!("{:?}", other.err()),
    }
    // Nothing was created beside it.
    assert!(!dir.0.join(DB_DIR).exists());
}

#[test]
fn a_torn_journal_tail_recovers_the_durable_prefix() {
    let dir = populated("trunc-db");
    let saved = save_db(&dir.0);
    let path = journals(&dir.0).pop().expect("a journal");
    let whole = fs::read(&path).unwrap();
    // The journal is preallocated: its records end where the zeros begin.
    let used = whole.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    assert!(used > 0 && used < whole.len(), "{used} of {}", whole.len());
    let mut lengths: Vec<usize> = (0..used).step_by(used / 96 + 1).collect();
    lengths.extend([used - 1, used, whole.len()]);
    let mut kinds = std::collections::BTreeSet::new();
    // A torn write either leaves the file shorter, or (preallocated)
    // leaves zeros where the rest of the record should be.
    for zeroed in [false, true] {
        for &len in &lengths {
            let torn = if zeroed {
                let mut t = whole.clone();
                t[len..].fill(0);
                t
            } else {
                whole[..len].to_vec()
            };
            let what = format!("journal torn at {len} (zero-filled: {zeroed})");
            restore_db(&dir.0, &saved);
            fs::write(&path, &torn).unwrap();
            if open_without_panic(&dir.0, &what) {
                restore_db(&dir.0, &saved);
                fs::write(&path, &torn).unwrap();
                let s = LogStore::open(&dir.0).unwrap();
                assert!(
                    is_a_durable_prefix(&s),
                    "{what}: {:?} {:?}",
                    (s.first_index(), s.last_index()),
                    s.hard_state()
                );
                kinds.insert((
                    s.first_index().unwrap(),
                    s.last_index().unwrap(),
                    s.snapshot_index(),
                ));
            }
        }
    }
    // The tears fell inside each batch: each prefix was recovered (empty,
    // the entries alone, the entries and the snapshot).
    for k in [(1, 0, 0), (1, 40, 0), (26, 40, 30)] {
        assert!(kinds.contains(&k), "{k:?} not among {kinds:?}");
    }
}

/// Every file of the store with its bytes, to put back exactly (opening
/// may rewrite, add or remove files: recovery cuts the journal, and a
/// store that recovered a prefix removes the snapshot file it does not
/// name).
fn save_db(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    store_files(dir)
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn restore_db(dir: &Path, saved: &[(PathBuf, Vec<u8>)]) {
    fs::remove_dir_all(dir).unwrap();
    for (p, b) in saved {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b).unwrap();
    }
}

/// Flips bytes across every file of the store (the used part of the
/// preallocated journal, fjall's manifests, with `flushed` the tables the
/// memtables were written to, and the snapshot file): each open is a typed error or a
/// durable prefix, never a panic or an abort.
fn damage_everywhere(name: &str, flushed: bool) {
    let dir = populated(name);
    if flushed {
        let s = LogStore::open(&dir.0).unwrap();
        s.db.log.rotate_memtable_and_wait().unwrap();
        s.db.state.rotate_memtable_and_wait().unwrap();
    }
    let saved = save_db(&dir.0);
    let mut refused = 0;
    for (path, whole) in &saved {
        // The journal is preallocated: its zeroed tail is not read.
        let used = whole.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let step = used / 40 + 1;
        for at in (0..used).step_by(step) {
            restore_db(&dir.0, &saved);
            let mut bad = whole.clone();
            bad[at] ^= 0x5a;
            fs::write(path, &bad).unwrap();
            let what = format!("flipping byte {at} of {}", path.display());
            if open_without_panic(&dir.0, &what) {
                restore_db(&dir.0, &saved);
                fs::write(path, &bad).unwrap();
                let s = LogStore::open(&dir.0).unwrap();
                assert!(is_a_durable_prefix(&s), "{what}");
            } else {
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no damage was detected");
}

#[test]
fn a_damaged_journal_is_a_typed_error_or_a_durable_prefix() {
    damage_everywhere("flip-jnl", false);
}

#[test]
fn a_damaged_table_is_a_typed_error_or_a_durable_prefix() {
    damage_everywhere("flip-tables", true);
}

#[test]
fn a_damaged_or_truncated_snapshot_file_is_a_typed_error() {
    let dir = populated("snap-file");
    let file = snapshot_file(&dir.0);
    let whole = fs::read(&file).unwrap();
    for len in (0..whole.len()).step_by(97).chain([whole.len() - 1]) {
        fs::write(&file, &whole[..len]).unwrap();
        assert!(!open_without_panic(
            &dir.0,
            &format!("snapshot cut to {len}")
        ));
    }
    for at in (0..whole.len()).step_by(101) {
        let mut bad = whole.clone();
        bad[at] ^= 1;
        fs::write(&file, &bad).unwrap();
        match LogStore::open(&dir.0) {
            Err(StoreError::Corrupt { detail, .. }) => {
                assert!(detail.contains("snapshot"), "{detail}")
            }
            other => panic!("flipping snapshot byte {at}: {:?}", other.err()),
        }
    }
    fs::remove_file(&file).unwrap();
    assert!(matches!(LogStore::open(&dir.0), Err(StoreError::Io { .. })));
}

#[test]
fn a_newer_format_is_refused_by_name() {
    let dir = TempDir::new("format");
    {
        let s = LogStore::open(&dir.0).unwrap();
        // The first write stores the format version; the second replaces it.
        s.write(|w| {
            w.put(KEY_HARD_STATE, &[]);
            Ok(())
        })
        .unwrap();
        s.write(|w| {
            w.put(KEY_VERSION, &99u32.to_be_bytes());
            Ok(())
        })
        .unwrap();
    }
    match LogStore::open(&dir.0) {
        Err(e @ StoreError::Format { version: 99, .. }) => {
            assert!(e.to_string().contains("format 99"), "{e}")
        }
        other => panic!("{:?}", other.err()),
    }
}

/// Opens a new store in a directory named after `what`, lets `damage`
/// write to it, and requires the reopened store to be refused as damaged.
fn refused_after(what: &str, damage: impl FnOnce(&LogStore)) {
    let dir = TempDir::new(what);
    {
        let s = LogStore::open(&dir.0).unwrap();
        damage(&s);
    }
    assert!(
        matches!(LogStore::open(&dir.0), Err(StoreError::Corrupt { .. })),
        "{what}"
    );
}

#[test]
fn garbage_values_are_typed_errors() {
    for (key, value) in [
        (KEY_HARD_STATE, &b"\xff\xff\xff"[..]),
        (KEY_CONF_STATE, &b"\x0a\xff"[..]),
        (KEY_TRUNCATED, &b"short"[..]),
        (KEY_SNAPSHOT, &b"../etc/passwd"[..]),
    ] {
        refused_after(&format!("garbage-{key}"), |s| {
            s.write(|w| {
                w.put(key, value);
                Ok(())
            })
            .unwrap();
        });
    }
    // A log entry that does not parse, one filed under the wrong index,
    // and a key that is not an index.
    for (index, bytes) in [(1u64, vec![0xffu8, 0xff]), (1, pb(&entry(2, 1)).unwrap())] {
        refused_after("garbage-log", |s| {
            s.write(|w| {
                w.log_put(index, bytes.clone());
                Ok(())
            })
            .unwrap();
        });
    }
    refused_after("garbage-key", |s| {
        s.write(|w| {
            w.batch
                .insert(&w.db.log, &b"\0\0\0\0\0\0\0\x01x"[..], &b""[..]);
            Ok(())
        })
        .unwrap();
    });
    // Values without a format version are not a new database.
    refused_after("garbage-noversion", |s| {
        // A batch of its own: `LogStore::write` would add the version.
        let mut w = Writer::new(&s.db);
        w.put(KEY_HARD_STATE, &pb(&hs(1, 1, 0)).unwrap());
        w.commit(&s.db_path).unwrap();
    });
}

#[test]
fn a_panic_of_the_engine_on_its_files_is_a_typed_error() {
    // fjall asserts that every `*.jnl` in its directory is a file: a
    // directory of that name makes it panic while opening. That is the
    // directory's damage, answered as such.
    let dir = populated("engine-panic");
    fs::create_dir(dir.0.join(DB_DIR).join("99.jnl")).unwrap();
    assert!(!panic_is_contained());
    match LogStore::open(&dir.0) {
        Err(StoreError::Corrupt { path, detail }) => {
            assert_eq!(path, dir.0.join(DB_DIR));
            assert!(detail.contains("storage engine"), "{detail}");
        }
        other => panic!("{:?}", other.err()),
    }
    // The flag is down again once open returns.
    assert!(!panic_is_contained());
    fs::remove_dir(dir.0.join(DB_DIR).join("99.jnl")).unwrap();
    assert!(is_a_durable_prefix(&LogStore::open(&dir.0).unwrap()));
}
