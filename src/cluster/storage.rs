//! The member's durable Raft state in `--raft-dir`: the log, the hard
//! state, the conf state and the latest snapshot, behind `raft::Storage`.
//!
//! Layout (spec/cluster.md §2.6):
//! * `raft-log/`: one fjall database (an LSM store whose writes go first
//!   to a checksummed journal). Keyspace `log` maps an index (8 bytes, big
//!   endian) to the protobuf bytes of its entry; keyspace `state` holds
//!   the format version, the hard state, the conf state as of the snapshot
//!   (or the bootstrap voters), the compaction point (index and term of
//!   the entry before the first one kept) and the name of the current
//!   snapshot file.
//! * `snapshot-<index>-<term>.snap`: the current snapshot, a file of its
//!   own (magic, version, metadata, data, checksum) written to a temporary
//!   name, synced, renamed and the directory synced before the database
//!   names it.
//!
//! A `Ready`'s entries and hard state are staged together
//! ([`LogStore::stage`]: the mirror shows them at once) and written by
//! [`DiskWriter::write`], on the member's storage worker, in the order
//! staged: one fjall write batch committed with `PersistMode::SyncData`
//! (one journal append and one `fdatasync`) for the writes queued
//! together. The journal frames a batch with a start marker, its item
//! count and a checksum, and recovery keeps whole batches only, so a
//! crash leaves all of a cycle's write or none of it. The replica (`replica.rs`) sends votes and
//! append acknowledgements, and tells raft-rs the entries are durable,
//! only after that write returns. Snapshots are written with no write in
//! flight. A change of the commit index alone costs no
//! transaction: it is kept in memory and stored by the next one (a commit
//! index lost in a crash is learnt again from the leader).
//!
//! Reads never touch the disk: the entries not yet compacted are mirrored
//! in memory (bounded by the snapshot interval plus the uncommitted cap),
//! so `entries`, `term` and the indexes are answered from the mirror.
//!
//! fjall runs one background thread per open store (`fjall:worker`: it
//! flushes full memtables to tables and compacts them); it never writes
//! the journal and never decides what is durable, so what a member reads
//! back after a crash depends only on the batches that were committed.
//! The thread ends when the last handle on the database is dropped.
//!
//! Untrusted bytes: a file in `--raft-dir` may be truncated or damaged.
//! Everything read back is parsed into typed errors ([`StoreError`]);
//! fjall's own checks (journal batch checksums, table block checksums)
//! run on open, a torn journal tail (a batch whose write was cut short) is
//! cut off by fjall's recovery, and a panic inside the engine while it
//! reads the files is caught and answered as [`StoreError::Corrupt`].
//! Nothing here panics on file contents. A `raft.redb` left by the
//! earlier layout is refused by name ([`StoreError::Legacy`]).

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use fjall::{KeyspaceCreateOptions, PersistMode};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};

/// The database directory inside `--raft-dir`.
pub const DB_DIR: &str = "raft-log";
/// The database file of the earlier (redb) layout: refused, not migrated.
pub const LEGACY_DB_FILE: &str = "raft.redb";
const LOG: &str = "log";
const STATE: &str = "state";
/// A memtable is flushed to a table past this size (fjall's default is 64
/// MiB): the log is compacted behind every snapshot, so little is live,
/// and a smaller memtable bounds the journal replayed on open.
const MEMTABLE_BYTES: u64 = 8 << 20;
/// fjall's smallest allowed journal budget: past it, the oldest memtables
/// are flushed so their journals can go.
const JOURNAL_BYTES: u64 = 64 << 20;

/// Bumped when the layout changes; an unknown version is refused.
const FORMAT_VERSION: u32 = 1;
const SNAP_MAGIC: &[u8; 8] = b"DFLKSNAP";
const SNAP_VERSION: u32 = 1;
/// Metadata larger than this is a damaged file, not a snapshot (it holds
/// two integers and the voter lists).
const MAX_SNAP_META_BYTES: u32 = 1 << 20;

const KEY_VERSION: &str = "version";
const KEY_HARD_STATE: &str = "hard_state";
const KEY_CONF_STATE: &str = "conf_state";
const KEY_TRUNCATED: &str = "truncated";
const KEY_SNAPSHOT: &str = "snapshot";

/// Why the Raft state could not be read or written. Display never shows
/// entry contents.
#[derive(Debug)]
pub enum StoreError {
    /// A file system operation failed.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The storage engine (fjall) refused to open or write the database.
    Db { path: PathBuf, detail: String },
    /// `--raft-dir` holds the database of an earlier layout (redb), which
    /// this build neither reads nor migrates.
    Legacy { path: PathBuf },
    /// Something in `--raft-dir` is not what this module wrote: a damaged
    /// or truncated file, a value that does not parse, an inconsistency
    /// between the parts.
    Corrupt { path: PathBuf, detail: String },
    /// Written by a newer (or unknown) layout.
    Format { path: PathBuf, version: u32 },
    /// A caller broke the storage contract (an append with a gap, a
    /// snapshot behind the log's start): a bug, reported rather than
    /// panicking inside the library.
    Contract(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Db { path, detail } => write!(f, "{}: {detail}", path.display()),
            StoreError::Legacy { path } => write!(
                f,
                "{}: Raft state of an earlier layout (redb), which this build does not read; \
                 move it away and rejoin the member with an empty --raft-dir",
                path.display()
            ),
            StoreError::Corrupt { path, detail } => {
                write!(f, "{}: damaged Raft state: {detail}", path.display())
            }
            StoreError::Format { path, version } => write!(
                f,
                "{}: Raft state format {version} is not supported (this build reads {FORMAT_VERSION})",
                path.display()
            ),
            StoreError::Contract(detail) => write!(f, "Raft storage misuse: {detail}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<StoreError> for raft::Error {
    fn from(e: StoreError) -> raft::Error {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}

thread_local! {
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside [`LogStore::open`]'s reading of the
/// files, where a panic of the storage engine is caught and answered as
/// [`StoreError::Corrupt`]: the server's panic hook, which aborts on any
/// other panic (a broken invariant), lets this one unwind.
pub fn panic_is_contained() -> bool {
    CONTAINED.with(|c| c.get())
}

/// Sets [`panic_is_contained`] for its lifetime.
struct Contained;

impl Contained {
    fn enter() -> Contained {
        CONTAINED.with(|c| c.set(true));
        Contained
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        CONTAINED.with(|c| c.set(false));
    }
}

/// The durable Raft state of one member.
pub struct LogStore {
    dir: PathBuf,
    db_path: PathBuf,
    db: Db,
    hard_state: HardState,
    /// The configuration as of the snapshot's index (or the bootstrap
    /// voters): a restarted member starts Raft from it and replays the log
    /// after the snapshot, conf changes included (spec/cluster.md §2.6).
    conf_state: ConfState,
    /// Index and term of the entry just before `entries` (0, 0 when
    /// nothing was ever compacted).
    truncated: (u64, u64),
    /// Every entry after `truncated`, in index order, without gaps.
    entries: VecDeque<Entry>,
    /// The current snapshot: metadata, file name and data.
    snapshot: Option<StoredSnapshot>,
    /// Set by `raft::Storage::snapshot` when a follower needs a snapshot
    /// newer than the one kept; the replica takes one after its cycle.
    snapshot_wanted: AtomicBool,
    /// `hard_state` differs from the stored one in its commit index only:
    /// the next transaction writes it (spec/cluster.md §2.6 rule 3).
    commit_unsaved: bool,
    /// The format version is stored (written with the first transaction).
    version_stored: AtomicBool,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMetadata,
    file: String,
    data: Bytes,
}

impl LogStore {
    /// Opens (creating if needed) the Raft state in `dir`. Every part is
    /// read and checked: the result either holds a consistent state or is a
    /// typed error naming the file.
    pub fn open(dir: &Path) -> Result<LogStore, StoreError> {
        fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        let legacy = dir.join(LEGACY_DB_FILE);
        if legacy.exists() {
            return Err(StoreError::Legacy { path: legacy });
        }
        let db_path = dir.join(DB_DIR);
        // fjall checks what it reads with checksums and returns errors, but
        // some of its checks are assertions: a panic while it opens or reads
        // back the files is the files' fault, answered as damage. The flag
        // tells the server's panic hook not to abort for it.
        let _contained = Contained::enter();
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = Db::open(&db_path)?;
            let mut store = LogStore {
                dir: dir.to_path_buf(),
                db_path: db_path.clone(),
                db,
                hard_state: HardState::default(),
                conf_state: ConfState::default(),
                truncated: (0, 0),
                entries: VecDeque::new(),
                snapshot: None,
                snapshot_wanted: AtomicBool::new(false),
                commit_unsaved: false,
                version_stored: AtomicBool::new(false),
            };
            store.load()?;
            Ok(store)
        }));
        let store = match opened {
            Ok(r) => r?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(StoreError::Corrupt {
                    path: db_path,
                    detail: format!("the storage engine failed reading it: {what}"),
                });
            }
        };
        store.remove_stray_snapshot_files();
        Ok(store)
    }

    fn load(&mut self) -> Result<(), StoreError> {
        let path = self.db_path.clone();
        let corrupt = |detail: String| StoreError::Corrupt {
            path: path.clone(),
            detail,
        };
        let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            self.db
                .state
                .get(key)
                .map(|v| v.map(|v| v.to_vec()))
                .map_err(|e| classify_db_error(&path, &e))
        };
        let Some(v) = get(KEY_VERSION)? else {
            // A new database, or one whose first write never completed:
            // nothing else may be there.
            let empty = self.db.state.first_key_value().is_none()
                && self.db.log.first_key_value().is_none();
            if !empty {
                return Err(corrupt("no format version".into()));
            }
            return Ok(());
        };
        let version = u32::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| corrupt("format version is not 4 bytes".into()))?,
        );
        if version != FORMAT_VERSION {
            return Err(StoreError::Format { path, version });
        }
        self.version_stored.store(true, Ordering::Relaxed);
        if let Some(b) = get(KEY_HARD_STATE)? {
            self.hard_state =
                HardState::parse_from_bytes(&b).map_err(|e| corrupt(format!("hard state: {e}")))?;
        }
        if let Some(b) = get(KEY_CONF_STATE)? {
            self.conf_state =
                ConfState::parse_from_bytes(&b).map_err(|e| corrupt(format!("conf state: {e}")))?;
        }
        if let Some(b) = get(KEY_TRUNCATED)? {
            if b.len() != 16 {
                return Err(corrupt("compaction point is not 16 bytes".into()));
            }
            self.truncated = (
                u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
            );
        }
        if let Some(b) = get(KEY_SNAPSHOT)? {
            let file = String::from_utf8(b).map_err(|_| corrupt("snapshot name".into()))?;
            if !is_snapshot_name(&file) {
                return Err(corrupt(format!("snapshot name {file:?}")));
            }
            let (meta, data) = read_snapshot_file(&self.dir.join(&file))?;
            self.snapshot = Some(StoredSnapshot { meta, file, data });
        }
        let first = self.truncated.0 + 1;
        for (expect, item) in (first..).zip(self.db.log.range(first.to_be_bytes()..)) {
            let (k, v) = item
                .into_inner()
                .map_err(|e| classify_db_error(&path, &e))?;
            let index = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| corrupt(format!("log key of {} bytes", k.len())))?,
            );
            if index != expect {
                return Err(corrupt(format!(
                    "log has a gap: entry {index} where {expect} was expected"
                )));
            }
            let e = Entry::parse_from_bytes(&v)
                .map_err(|e| corrupt(format!("log entry {index}: {e}")))?;
            if e.index != index {
                return Err(corrupt(format!("log entry {index} says it is {}", e.index)));
            }
            self.entries.push_back(e);
        }
        // The parts must agree with each other.
        if let Some(s) = &self.snapshot {
            if s.meta.index < self.truncated.0 {
                return Err(corrupt(format!(
                    "snapshot at {} is behind the compaction point {}",
                    s.meta.index, self.truncated.0
                )));
            }
            if s.meta.index > self.last_index_inner() {
                return Err(corrupt(format!(
                    "snapshot at {} is past the log's end {}",
                    s.meta.index,
                    self.last_index_inner()
                )));
            }
        }
        if self.hard_state.commit > self.last_index_inner() {
            return Err(corrupt(format!(
                "commit index {} is past the log's end {}",
                self.hard_state.commit,
                self.last_index_inner()
            )));
        }
        Ok(())
    }

    /// Deletes snapshot files that the database does not name: left by a
    /// crash between writing a new snapshot and recording it, or between
    /// recording it and deleting the old one. Best effort.
    fn remove_stray_snapshot_files(&self) {
        let keep = self.snapshot.as_ref().map(|s| s.file.as_str());
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stray_tmp = name.starts_with("snapshot-") && name.ends_with(".tmp");
            if (is_snapshot_name(name) && Some(name) != keep) || stray_tmp {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Whether this member has Raft state already (it was bootstrapped, or
    /// it received anything from a leader).
    pub fn is_initialized(&self) -> bool {
        !self.conf_state.voters.is_empty()
            || self.hard_state.term > 0
            || self.snapshot.is_some()
            || !self.entries.is_empty()
    }

    /// Writes the first configuration of a new cluster: `voters` at index
    /// 0. Only on an uninitialized store.
    pub fn bootstrap(&mut self, voters: &[u64]) -> Result<(), StoreError> {
        if self.is_initialized() {
            return Err(StoreError::Contract(
                "bootstrap of a member that already has Raft state".into(),
            ));
        }
        let cs = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        self.write(|w| {
            w.put(KEY_CONF_STATE, &pb(&cs)?);
            Ok(())
        })?;
        self.conf_state = cs;
        Ok(())
    }

    /// Makes a cycle's new entries and hard state durable in one
    /// transaction (spec/cluster.md §2.5 step 4): [`LogStore::stage`],
    /// then the write on this thread. Entries may overwrite a suffix of
    /// the log (a new leader's log wins).
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), StoreError> {
        match self.stage(entries.to_vec(), hs)? {
            Some(batch) => self.writer().write(std::slice::from_ref(&batch)),
            None => Ok(()),
        }
    }

    /// Takes a cycle's new entries and hard state into the mirror and
    /// returns the write that makes them durable, to be run (in order with
    /// the writes staged before it) by [`DiskWriter::write`]; `None` when
    /// nothing needs a write (a commit index alone). The mirror shows the
    /// entries at once: raft-rs reads a `Ready`'s entries from the storage
    /// as soon as it is handed back (`advance_append_async`), and counts
    /// them as durable only when told (`on_persist_ready`), which the
    /// replica does once the write returned.
    pub fn stage(
        &mut self,
        entries: Vec<Entry>,
        hs: Option<&HardState>,
    ) -> Result<Option<WriteBatch>, StoreError> {
        if entries.is_empty() && hs.is_none() {
            return Ok(None);
        }
        let old_last = self.last_index_inner();
        if let Some(first) = entries.first() {
            if first.index <= self.truncated.0 {
                return Err(StoreError::Contract(format!(
                    "append at {} overwrites the compacted log (up to {})",
                    first.index, self.truncated.0
                )));
            }
            if first.index > old_last + 1 {
                return Err(StoreError::Contract(format!(
                    "append at {} leaves a gap after {old_last}",
                    first.index,
                )));
            }
            for pair in entries.windows(2) {
                if pair[1].index != pair[0].index + 1 {
                    return Err(StoreError::Contract("entries not consecutive".into()));
                }
            }
        }
        // Entries, a term and a vote must be on disk before anything that
        // depends on them leaves; a commit index alone need not (a member
        // learns it again from the leader), so it costs no transaction of
        // its own and rides along with the next one.
        if entries.is_empty() {
            if let Some(h) = hs {
                if h.term == self.hard_state.term && h.vote == self.hard_state.vote {
                    if h.commit != self.hard_state.commit {
                        self.hard_state.commit = h.commit;
                        self.commit_unsaved = true;
                    }
                    return Ok(None);
                }
            }
        }
        // Entries past the new last index belong to a log that lost.
        let remove = match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => {
                let from = first.index.max(last.index + 1);
                (from <= old_last).then_some((from, old_last))
            }
            _ => None,
        };
        if let Some(first) = entries.first() {
            let keep = (first.index - self.truncated.0 - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend(entries.iter().cloned());
        }
        // The hard state to store: the cycle's, or the one whose commit
        // index is still unsaved.
        if let Some(h) = hs {
            self.hard_state = h.clone();
        }
        let hs = (hs.is_some() || self.commit_unsaved).then(|| self.hard_state.clone());
        self.commit_unsaved = false;
        // Once is enough: every later transaction leaves it in place.
        let version = !self.version_stored.swap(true, Ordering::Relaxed);
        Ok(Some(WriteBatch {
            remove,
            entries,
            hs,
            version,
        }))
    }

    /// The writing half of the store, for a thread of its own.
    pub fn writer(&self) -> DiskWriter {
        DiskWriter {
            db: self.db.clone(),
            path: self.db_path.clone(),
        }
    }

    /// Records a new commit index (spec/cluster.md §2.5 step 6).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StoreError> {
        if commit == self.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.append(&[], Some(&hs))
    }

    /// Installs a snapshot received from the leader (step 2): its file,
    /// then in one transaction the log emptied, the compaction point and
    /// conf state set to the snapshot's, the commit index raised to it.
    pub fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let meta = snap.get_metadata().clone();
        if meta.index < self.truncated.0 {
            return Err(StoreError::Contract(format!(
                "snapshot at {} is older than the compaction point {}",
                meta.index, self.truncated.0
            )));
        }
        let file = self.write_snapshot_file(&meta, &snap.data)?;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        let conf = meta.get_conf_state().clone();
        let (first, last) = (self.truncated.0 + 1, self.last_index_inner());
        let result = self.write(|w| {
            for index in first..=last {
                w.log_remove(index);
            }
            w.put(KEY_HARD_STATE, &pb(&hs)?);
            w.put(KEY_CONF_STATE, &pb(&conf)?);
            w.put(KEY_TRUNCATED, &truncated_bytes(meta.index, meta.term));
            w.put(KEY_SNAPSHOT, file.as_bytes());
            Ok(())
        });
        if let Err(e) = result {
            let _ = fs::remove_file(self.dir.join(&file));
            return Err(e);
        }
        self.entries.clear();
        self.truncated = (meta.index, meta.term);
        self.hard_state = hs;
        self.commit_unsaved = false;
        self.conf_state = conf;
        self.replace_snapshot(StoredSnapshot {
            meta,
            file,
            data: snap.data.clone(),
        });
        Ok(())
    }

    /// Keeps a snapshot this member made of its state at `meta.index` (an
    /// applied, hence committed, index) and compacts the log behind it,
    /// keeping the last `keep_entries` entries before it so that a
    /// follower just behind needs no snapshot.
    pub fn save_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        data: Bytes,
        keep_entries: u64,
    ) -> Result<(), StoreError> {
        if meta.index > self.hard_state.commit || meta.index < self.truncated.0 {
            return Err(StoreError::Contract(format!(
                "snapshot at {} outside [{}, commit {}]",
                meta.index, self.truncated.0, self.hard_state.commit
            )));
        }
        if self.term_inner(meta.index) != Some(meta.term) {
            return Err(StoreError::Contract(format!(
                "snapshot at {} with term {} that the log does not have",
                meta.index, meta.term
            )));
        }
        let file = self.write_snapshot_file(&meta, &data)?;
        let compact_to = meta
            .index
            .saturating_sub(keep_entries)
            .max(self.truncated.0);
        let compact_term = self.term_inner(compact_to).unwrap_or(self.truncated.1);
        // The conf state stored is the snapshot's: a restarted member
        // restores the snapshot and replays from its index, so Raft must
        // start from the configuration as of that index. The kept entries
        // before it are only sent to followers, never applied again.
        let conf = meta.get_conf_state().clone();
        let first = self.truncated.0 + 1;
        // The stored commit index must not stay behind the snapshot: a
        // restart resumes applying at the snapshot's index, which Raft
        // requires to be committed.
        let hs = self.commit_unsaved.then(|| self.hard_state.clone());
        let result = self.write(|w| {
            for index in first..=compact_to {
                w.log_remove(index);
            }
            if let Some(hs) = &hs {
                w.put(KEY_HARD_STATE, &pb(hs)?);
            }
            w.put(KEY_CONF_STATE, &pb(&conf)?);
            w.put(KEY_TRUNCATED, &truncated_bytes(compact_to, compact_term));
            w.put(KEY_SNAPSHOT, file.as_bytes());
            Ok(())
        });
        if let Err(e) = result {
            let _ = fs::remove_file(self.dir.join(&file));
            return Err(e);
        }
        if hs.is_some() {
            self.commit_unsaved = false;
        }
        let drop_n = (compact_to - self.truncated.0) as usize;
        self.entries.drain(..drop_n);
        self.truncated = (compact_to, compact_term);
        self.conf_state = conf;
        self.replace_snapshot(StoredSnapshot { meta, file, data });
        Ok(())
    }

    fn replace_snapshot(&mut self, new: StoredSnapshot) {
        if let Some(old) = self.snapshot.replace(new) {
            if Some(&old.file) != self.snapshot.as_ref().map(|s| &s.file) {
                // Best effort: a leftover is removed at the next open.
                let _ = fs::remove_file(self.dir.join(old.file));
            }
        }
    }

    /// The snapshot to restore the state machine from at start-up, if any.
    pub fn snapshot_for_restore(&self) -> Option<(SnapshotMetadata, Bytes)> {
        self.snapshot
            .as_ref()
            .map(|s| (s.meta.clone(), s.data.clone()))
    }

    /// The compaction point (index and term of the entry before the first
    /// one kept). The state machine restored from the snapshot must replay
    /// from the snapshot's index; entries between this point and it are
    /// kept for followers.
    pub fn truncated(&self) -> (u64, u64) {
        self.truncated
    }

    /// The index of the current snapshot (0 if none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Entries kept in the log (after the compaction point).
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Whether `raft::Storage::snapshot` asked for a newer snapshot (the
    /// request stays).
    pub fn snapshot_requested(&self) -> bool {
        self.snapshot_wanted.load(Ordering::Relaxed)
    }

    /// Whether `raft::Storage::snapshot` asked for a newer snapshot since
    /// the last call; clears the request.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    fn last_index_inner(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }

    fn term_inner(&self, index: u64) -> Option<u64> {
        if index == self.truncated.0 {
            return Some(self.truncated.1);
        }
        if index < self.truncated.0 {
            return None;
        }
        self.entries
            .get((index - self.truncated.0 - 1) as usize)
            .map(|e| e.term)
    }

    /// Writes a snapshot file durably: temporary name, fsync, rename,
    /// directory fsync. Returns its name.
    fn write_snapshot_file(
        &self,
        meta: &SnapshotMetadata,
        data: &[u8],
    ) -> Result<String, StoreError> {
        let name = format!("snapshot-{:020}-{:020}.snap", meta.index, meta.term);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let meta_bytes = pb(meta)?;
        let mut body = Vec::with_capacity(SNAP_MAGIC.len() + 24 + meta_bytes.len() + data.len());
        body.extend_from_slice(SNAP_MAGIC);
        body.extend_from_slice(&SNAP_VERSION.to_be_bytes());
        body.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
        body.extend_from_slice(&meta_bytes);
        body.extend_from_slice(&(data.len() as u64).to_be_bytes());
        body.extend_from_slice(data);
        let sum = checksum(&body);
        body.extend_from_slice(&sum.to_be_bytes());
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()
        };
        write().map_err(|source| io(&tmp, source))?;
        let path = self.dir.join(&name);
        fs::rename(&tmp, &path).map_err(|source| io(&path, source))?;
        sync_dir(&self.dir)?;
        Ok(name)
    }

    /// Runs `f` in one write batch committed durably
    /// (`PersistMode::SyncData`: one journal append, one `fdatasync`).
    fn write(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut w = Writer::new(&self.db);
        f(&mut w)?;
        // Once is enough: every later batch leaves it in place.
        let first = !self.version_stored.load(Ordering::Relaxed);
        if first {
            w.put_version();
        }
        w.commit(&self.db_path)?;
        if first {
            self.version_stored.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// One staged write ([`LogStore::stage`]): what a cycle's batch does to
/// the database.
#[derive(Debug)]
pub struct WriteBatch {
    /// Entries (an inclusive range of indexes) of a log that lost.
    remove: Option<(u64, u64)>,
    entries: Vec<Entry>,
    hs: Option<HardState>,
    /// The format version goes with the first batch.
    version: bool,
}

impl WriteBatch {
    /// Entries it writes.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }
}

/// The open database and its two keyspaces. Cloning shares them; the
/// engine's thread ends and the directory's lock is released when the
/// last clone is dropped.
#[derive(Clone)]
struct Db {
    db: fjall::Database,
    log: fjall::Keyspace,
    state: fjall::Keyspace,
}

impl Db {
    fn open(path: &Path) -> Result<Db, StoreError> {
        let err = |e: fjall::Error| classify_db_error(path, &e);
        verify_manifests(path)?;
        let db = fjall::Database::builder(path)
            // One background thread (flushes and compactions); the log's
            // writes and reads never wait for it.
            .worker_threads(1)
            .max_journaling_size(JOURNAL_BYTES)
            // Reads go to the mirror; only opening reads the tables.
            .cache_size(1 << 20)
            .open()
            .map_err(err)?;
        let opts = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let log = db.keyspace(LOG, opts).map_err(err)?;
        let state = db.keyspace(STATE, opts).map_err(err)?;
        Ok(Db { db, log, state })
    }
}

/// The database, shared with the thread (or simulated task) that runs
/// the cycles' writes while the replica goes on (spec/cluster.md §2.5).
#[derive(Clone)]
pub struct DiskWriter {
    db: Db,
    path: PathBuf,
}

impl DiskWriter {
    /// Runs `batches`, staged in this order, in one fjall batch committed
    /// durably (`PersistMode::SyncData`: one journal append, one
    /// `fdatasync`). A crash leaves all of them or none: with every
    /// earlier batch, a prefix of the staged writes.
    pub fn write(&self, batches: &[WriteBatch]) -> Result<(), StoreError> {
        let mut w = Writer::new(&self.db);
        for b in batches {
            if let Some((from, to)) = b.remove {
                for index in from..=to {
                    w.log_remove(index);
                }
            }
            for e in &b.entries {
                w.log_put(e.index, pb(e)?);
            }
            if b.version {
                w.put_version();
            }
        }
        // Only the last hard state counts.
        if let Some(hs) = batches.iter().rev().find_map(|b| b.hs.as_ref()) {
            w.put(KEY_HARD_STATE, &pb(hs)?);
        }
        w.commit(&self.path)
    }
}

/// One write batch being built.
struct Writer<'a> {
    batch: fjall::OwnedWriteBatch,
    db: &'a Db,
}

impl<'a> Writer<'a> {
    /// A batch to be committed durably (`PersistMode::SyncData`: one
    /// journal append, one `fdatasync`).
    fn new(db: &'a Db) -> Writer<'a> {
        Writer {
            batch: db.db.batch().durability(Some(PersistMode::SyncData)),
            db,
        }
    }

    fn commit(self, path: &Path) -> Result<(), StoreError> {
        self.batch.commit().map_err(|e| classify_db_error(path, &e))
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        self.batch.insert(&self.db.state, key, value);
    }

    fn put_version(&mut self) {
        self.put(KEY_VERSION, &FORMAT_VERSION.to_be_bytes());
    }

    fn log_put(&mut self, index: u64, bytes: Vec<u8>) {
        self.batch.insert(&self.db.log, index.to_be_bytes(), bytes);
    }

    fn log_remove(&mut self, index: u64) {
        self.batch.remove(&self.db.log, index.to_be_bytes());
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index_inner() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let start = (low - self.truncated.0 - 1) as usize;
        let end = (high - self.truncated.0 - 1) as usize;
        let mut out = Vec::with_capacity(end - start);
        let mut size = 0u64;
        for e in self.entries.range(start..end) {
            size += u64::from(e.compute_size());
            // At least one entry, whatever its size (the trait's contract).
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.term_inner(idx)
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_inner())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A snapshot older than a member's admission does not name it, and
        // the member would refuse it: such a member needs a newer one.
        let names = |meta: &SnapshotMetadata| {
            let cs = meta.get_conf_state();
            cs.voters.iter().chain(&cs.learners).any(|id| *id == to)
        };
        match &self.snapshot {
            Some(s) if s.meta.index >= request_index && names(&s.meta) => {
                let mut snap = Snapshot::default();
                snap.set_metadata(s.meta.clone());
                snap.data = s.data.clone();
                Ok(snap)
            }
            _ => {
                self.snapshot_wanted.store(true, Ordering::Relaxed);
                Err(raft::Error::Store(
                    raft::StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

/// Reads and checks a snapshot file.
fn read_snapshot_file(path: &Path) -> Result<(SnapshotMetadata, Bytes), StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.to_owned(),
    };
    let mut body = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut body))
        .map_err(|source| io(path, source))?;
    if body.len() < SNAP_MAGIC.len() + 4 + 4 + 8 + 16 {
        return Err(corrupt("snapshot file is truncated"));
    }
    let (content, sum) = body.split_at(body.len() - 16);
    if checksum(content).to_be_bytes() != sum {
        return Err(corrupt("snapshot file checksum does not match"));
    }
    if &content[..8] != SNAP_MAGIC {
        return Err(corrupt("not a snapshot file"));
    }
    let version = u32::from_be_bytes(content[8..12].try_into().expect("4 bytes"));
    if version != SNAP_VERSION {
        return Err(StoreError::Format {
            path: path.to_path_buf(),
            version,
        });
    }
    let meta_len = u32::from_be_bytes(content[12..16].try_into().expect("4 bytes"));
    if meta_len > MAX_SNAP_META_BYTES {
        return Err(corrupt("snapshot metadata too large"));
    }
    let meta_end = 16 + meta_len as usize;
    if content.len() < meta_end + 8 {
        return Err(corrupt("snapshot file is truncated"));
    }
    let meta = SnapshotMetadata::parse_from_bytes(&content[16..meta_end])
        .map_err(|_| corrupt("snapshot metadata does not parse"))?;
    let data_len = u64::from_be_bytes(content[meta_end..meta_end + 8].try_into().expect("8"));
    let data = &content[meta_end + 8..];
    if data.len() as u64 != data_len {
        return Err(corrupt("snapshot data length does not match"));
    }
    Ok((meta, Bytes::copy_from_slice(data)))
}

fn is_snapshot_name(name: &str) -> bool {
    name.len() == "snapshot-".len() + 20 + 1 + 20 + ".snap".len()
        && name.starts_with("snapshot-")
        && name.ends_with(".snap")
        && name["snapshot-".len()..name.len() - ".snap".len()]
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-')
}

/// A 128-bit SipHash with a fixed key: detects damage, not tampering (the
/// directory is the member's own).
fn checksum(bytes: &[u8]) -> u128 {
    use std::hash::Hasher as _;
    let mut h = siphasher::sip128::SipHasher::new_with_keys(0x6466_6c6f_636b_6421, 0x736e_6170);
    h.write(bytes);
    siphasher::sip128::Hasher128::finish128(&h).as_u128()
}

fn truncated_bytes(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8..].copy_from_slice(&term.to_be_bytes());
    b
}

fn pb(m: &impl protobuf::Message) -> Result<Vec<u8>, StoreError> {
    m.write_to_bytes()
        .map_err(|e| StoreError::Contract(format!("cannot encode: {e}")))
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks each keyspace's manifest (`keyspaces/<id>/v<n>`, named by
/// `current` with its xxh3-128 checksum) before fjall reads it: lsm-tree
/// 3.1 sizes a buffer from a count in that file before any check, so a
/// damaged manifest could ask for gigabytes and abort the process where a
/// typed error is due. Everything else fjall reads is checksummed as it
/// is parsed (journal batches, table blocks) or has a fixed size.
fn verify_manifests(db: &Path) -> Result<(), StoreError> {
    let keyspaces = db.join("keyspaces");
    let Ok(dir) = fs::read_dir(&keyspaces) else {
        // A new database (or none of fjall's files yet: fjall decides).
        return Ok(());
    };
    for ks in dir {
        let ks = ks.map_err(|source| io(&keyspaces, source))?.path();
        let current = ks.join("current");
        let corrupt = |path: &Path, detail: &str| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: detail.to_owned(),
        };
        let bytes = match fs::read(&current) {
            Ok(b) => b,
            // A keyspace never flushed has no manifest yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(io(&current, source)),
        };
        if bytes.len() != 25 || bytes[24] != 0 {
            return Err(corrupt(&current, "manifest pointer does not parse"));
        }
        let id = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let sum = u128::from_le_bytes(bytes[8..24].try_into().expect("16 bytes"));
        let manifest = ks.join(format!("v{id}"));
        let body = fs::read(&manifest).map_err(|source| io(&manifest, source))?;
        if xxhash_rust::xxh3::xxh3_128(&body) != sum {
            return Err(corrupt(&manifest, "manifest checksum does not match"));
        }
    }
    Ok(())
}

/// fjall's errors as ours: what it found wrong in the files (a journal
/// batch or table block whose checksum does not match, an unknown tag or
/// version, a trailer or header that does not parse) is
/// [`StoreError::Corrupt`], the rest (I/O, a locked or poisoned database)
/// [`StoreError::Db`].
fn classify_db_error(path: &Path, e: &fjall::Error) -> StoreError {
    use fjall::Error as F;
    use fjall::LsmError as L;
    let detail = e.to_string();
    let corrupt = match e {
        F::JournalRecovery(_)
        | F::InvalidVersion(_)
        | F::Decompress(_)
        | F::InvalidTrailer
        | F::InvalidTag(_)
        | F::Unrecoverable => true,
        F::Storage(inner) => !matches!(inner, L::Io(_)),
        _ => false,
    };
    if corrupt {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            detail,
        }
    } else {
        StoreError::Db {
            path: path.to_path_buf(),
            detail,
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io(dir, source))
}

#[cfg(test)]
pub(crate) mod tests;
