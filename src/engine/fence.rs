//! The fence state file (`--fence-state-file`). It keeps fencing tokens
//! strictly increasing across restarts (Decision D7; reference §4 and §11,
//! v2.1).
//!
//! Why it exists: the first 16 hex digits of a token are a server-wide
//! counter (the fence). Storage that a lock protects compares fences to
//! reject writes from a holder whose lock has moved on. The counter is seeded
//! from the wall clock, which is enough while the clock only moves forward.
//! But a clock stepped back (NTP, a restored VM) would let a restarted
//! server issue fences below ones it had already handed out. With this file
//! the server records a *ceiling* before it issues any fence up to that
//! ceiling. On start it begins at max(ceiling, wall clock), so every fence
//! after a restart is above every fence before it, whatever the clock did.
//! Ceilings are reserved `--fence-reserve` fences at a time (default
//! [`FENCE_RANGE`]), which keeps fsyncs off the grant path: one per half a
//! reserve of grants.
//!
//! [`Keeper`] is the running server's side: it writes a new ceiling once
//! half the reserve is used (the engine's door calls it after every input), and when a write fails (a full disk, a
//! read-only mount) it retries with backoff instead of on every request,
//! logs the failure once and then at most once per 10 s with a count, and
//! reports what `/ready` and `/metrics` show. While no fence is left, the
//! core queues grants until the ceiling rises (spec/semantics.md §6).
//! A file at or near `u64::MAX` stops startup ([`check_space`]).
//!
//! The format is one line of text, readable by an operator:
//! `dflockd-fence v1 <ceiling in decimal> <CRC-32 in 8 lowercase hex>\n`.
//! The CRC-32 (IEEE) covers the text before the last space, that is
//! `dflockd-fence v1 <ceiling>`. Every write replaces the file atomically:
//! write a temporary file in the same directory, fsync it, rename it over the
//! target, then fsync the directory. After a crash the file holds either the
//! old or the new ceiling, never a torn mix. A file that is present but does
//! not parse, or whose checksum does not match, stops startup. Reading it as
//! 0 could reissue old fences.
//!
//! Nothing locks the file, so two servers must never share one. The
//! directory fsync happens on Unix only; elsewhere the rename is the
//! ordering point.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::core::{Core, Effect, Time};
use crate::logging;

/// The wall clock in nanoseconds since the Unix epoch (0 if the clock is
/// before it): the floor of the fence counter at startup (Decision D7).
pub fn wall_clock_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// How many fences are reserved by each persisted ceiling by default
/// (`--fence-reserve`). A server that starts at fence `s` persists
/// `s + reserve` before it serves, and persists again once half of the
/// reserve is used.
pub const FENCE_RANGE: u64 = crate::config::table::FENCE_RESERVE.int_default();

/// The fewest fences that must remain below `u64::MAX` at startup. A state
/// file closer to the top refuses to start: the counter cannot keep
/// increasing for long, and stopping now, with a message, beats refusing
/// grants later.
pub const MIN_FENCE_SPACE: u64 = 1 << 32;

/// The first two fields of the one line in the file.
const MAGIC: &str = "dflockd-fence v1";

/// A valid file is at most 47 bytes (16 + 1 + 20 + 1 + 8 + 1). Anything far
/// longer is not ours, so it is not read in full.
const MAX_FILE_BYTES: u64 = 128;

/// Computes where fences start after a restart: `(fence_start, ceiling)`.
///
/// `fence_start` = max(persisted ceiling, wall clock in nanoseconds); the
/// first token then carries `fence_start + 1`. `ceiling` = `fence_start +
/// reserve` (saturating). The server must persist it before it serves.
/// Pass `persisted_ceiling = 0` when no state file is configured.
pub fn startup_fence(persisted_ceiling: u64, wall_clock_nanos: u64, reserve: u64) -> (u64, u64) {
    let start = persisted_ceiling.max(wall_clock_nanos);
    (start, start.saturating_add(reserve))
}

/// Refuses a start at `fence_start` when fewer than [`MIN_FENCE_SPACE`]
/// fences remain below `u64::MAX` (a state file at or near the top).
pub fn check_space(path: &Path, fence_start: u64) -> Result<(), FenceFileError> {
    let left = u64::MAX - fence_start;
    if left >= MIN_FENCE_SPACE {
        return Ok(());
    }
    Err(FenceFileError::Exhausted {
        path: path.to_path_buf(),
        start: fence_start,
        left,
    })
}

/// CRC-32/IEEE (reflected polynomial 0xEDB88320, initial value and final
/// XOR 0xFFFFFFFF), the checksum of zlib and Go's `crc32.ChecksumIEEE`.
/// Bitwise rather than table-driven: it runs once per [`FENCE_RANGE`] grants.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Why the fence state file could not be used. Every variant names the
/// file.
#[derive(Debug)]
pub enum FenceFileError {
    /// An I/O operation failed. `op` says which one, e.g. "rename".
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// The file exists but is not a valid fence state file.
    Corrupt { path: PathBuf, reason: String },
    /// [`FenceFile::persist`] was asked to lower the ceiling. That would
    /// allow fences to be reissued, so it is refused.
    CeilingWentBack {
        path: PathBuf,
        persisted: u64,
        requested: u64,
    },
    /// The counter is at or near `u64::MAX`: fewer than
    /// [`MIN_FENCE_SPACE`] fences are left to issue (startup), or none can
    /// be reserved above the ceiling (a running server).
    Exhausted {
        path: PathBuf,
        start: u64,
        left: u64,
    },
}

impl fmt::Display for FenceFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceFileError::Io { path, op, source } => {
                write!(f, "fence state file {}: {op}: {source}", path.display())
            }
            FenceFileError::Corrupt { path, reason } => write!(
                f,
                "fence state file {} is corrupt ({reason}); refusing to start, because \
                 a lost ceiling could reissue fencing tokens. Restore the file, or remove it \
                 only if the wall clock is known to be past every token issued",
                path.display()
            ),
            FenceFileError::CeilingWentBack {
                path,
                persisted,
                requested,
            } => write!(
                f,
                "fence state file {}: refusing to lower the ceiling from {persisted} to {requested}",
                path.display()
            ),
            FenceFileError::Exhausted { path, start, left } => write!(
                f,
                "fence state file {}: the fencing counter is at {start}, only {left} below the \
                 64-bit limit, so fencing tokens cannot keep increasing; refusing to start. \
                 Clear the fences that clients' storage has recorded before removing or lowering \
                 this file",
                path.display()
            ),
        }
    }
}

impl std::error::Error for FenceFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FenceFileError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The file operations the fence state file needs, behind a seam: the
/// server uses [`RealDisk`]; a simulator can give the engine a disk that
/// fails, stalls or loses an unsynced write on command.
pub trait Disk: Send + fmt::Debug {
    /// The file's content, reading at most `limit + 1` bytes (so a longer
    /// file is noticed without reading it whole); `None` if it does not
    /// exist.
    fn read(&self, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>>;
    /// Creates or truncates `path`, writes `bytes` and fsyncs the file.
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a rename in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealDisk;

impl Disk for RealDisk {
    fn read(&self, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    #[cfg(unix)]
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    #[cfg(not(unix))]
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// An open fence state file: where it lives, and the ceiling it last held.
#[derive(Debug)]
pub struct FenceFile {
    disk: Box<dyn Disk>,
    path: PathBuf,
    /// The temporary file used for atomic replacement: `<name>.tmp` in
    /// the same directory, so that the rename never crosses filesystems.
    tmp_path: PathBuf,
    dir: PathBuf,
    ceiling: u64,
}

impl FenceFile {
    /// Opens the state file at `path` and returns it with the ceiling it
    /// holds. A missing file gives 0 and is created by the first
    /// [`FenceFile::persist`]. A file that cannot be read or parsed is an
    /// error.
    pub fn open(path: impl AsRef<Path>) -> Result<(FenceFile, u64), FenceFileError> {
        FenceFile::open_on(Box::new(RealDisk), path)
    }

    /// [`FenceFile::open`] on another [`Disk`].
    pub fn open_on(
        disk: Box<dyn Disk>,
        path: impl AsRef<Path>,
    ) -> Result<(FenceFile, u64), FenceFileError> {
        let path = path.as_ref().to_path_buf();
        let Some(name) = path.file_name() else {
            return Err(FenceFileError::Io {
                path,
                op: "open",
                source: io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
            });
        };
        let mut tmp_name = name.to_os_string();
        tmp_name.push(".tmp");
        let tmp_path = path.with_file_name(tmp_name);
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let ceiling = read_ceiling(&*disk, &path)?;
        let file = FenceFile {
            disk,
            path,
            tmp_path,
            dir,
            ceiling,
        };
        Ok((file, ceiling))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ceiling most recently read or persisted.
    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// Durably records `ceiling`. When this returns `Ok`, a crash at any
    /// later point still leaves at least `ceiling` in the file. Lowering
    /// the ceiling is refused. Persisting the current value again does
    /// nothing.
    pub fn persist(&mut self, ceiling: u64) -> Result<(), FenceFileError> {
        if ceiling < self.ceiling {
            return Err(FenceFileError::CeilingWentBack {
                path: self.path.clone(),
                persisted: self.ceiling,
                requested: ceiling,
            });
        }
        if ceiling == self.ceiling && self.disk.exists(&self.path) {
            return Ok(());
        }
        let line = encode(ceiling);
        if let Err(source) = self.disk.write_synced(&self.tmp_path, line.as_bytes()) {
            // Best effort: a leftover temporary file is harmless, since the
            // next persist truncates it.
            let _ = self.disk.remove(&self.tmp_path);
            return Err(FenceFileError::Io {
                path: self.tmp_path.clone(),
                op: "write temporary file",
                source,
            });
        }
        self.disk
            .rename(&self.tmp_path, &self.path)
            .map_err(|source| FenceFileError::Io {
                path: self.path.clone(),
                op: "rename temporary file over",
                source,
            })?;
        self.disk
            .sync_dir(&self.dir)
            .map_err(|source| FenceFileError::Io {
                path: self.dir.clone(),
                op: "fsync directory of the fence state file",
                source,
            })?;
        self.ceiling = ceiling;
        Ok(())
    }
}

/// The file's full content for `ceiling`.
fn encode(ceiling: u64) -> String {
    let body = format!("{MAGIC} {ceiling}");
    let crc = crc32(body.as_bytes());
    format!("{body} {crc:08x}\n")
}

/// Parses the file's content. Strict: only what [`encode`] writes is
/// accepted.
fn decode(bytes: &[u8]) -> Result<u64, String> {
    if bytes.is_empty() {
        return Err("the file is empty".to_owned());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
    if !text.starts_with(MAGIC) {
        return Err(if MAGIC.starts_with(text) {
            "truncated".to_owned()
        } else {
            format!("it does not start with {MAGIC:?}")
        });
    }
    let Some(line) = text.strip_suffix('\n') else {
        return Err("truncated (no final newline)".to_owned());
    };
    if line.contains('\n') {
        return Err("more than one line".to_owned());
    }
    let Some((body, crc_hex)) = line.rsplit_once(' ') else {
        return Err("no checksum".to_owned());
    };
    let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if crc_hex.len() != 8 || !crc_hex.bytes().all(is_lower_hex) {
        return Err(format!(
            "checksum {crc_hex:?} is not 8 lowercase hex digits"
        ));
    }
    let stored = u32::from_str_radix(crc_hex, 16).map_err(|e| e.to_string())?;
    let computed = crc32(body.as_bytes());
    if stored != computed {
        return Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
        ));
    }
    let digits = body
        .strip_prefix(MAGIC)
        .and_then(|rest| rest.strip_prefix(' '))
        .unwrap_or_default();
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return Err(format!("ceiling {digits:?} is not a decimal number"));
    }
    digits
        .parse::<u64>()
        .map_err(|_| format!("ceiling {digits} does not fit in 64 bits"))
}

/// Reads the ceiling at `path`; 0 if the file does not exist.
fn read_ceiling(disk: &dyn Disk, path: &Path) -> Result<u64, FenceFileError> {
    let bytes = match disk.read(path, MAX_FILE_BYTES) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(0),
        Err(source) => {
            return Err(FenceFileError::Io {
                path: path.to_path_buf(),
                op: "read",
                source,
            })
        }
    };
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FenceFileError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("longer than {MAX_FILE_BYTES} bytes"),
        });
    }
    decode(&bytes).map_err(|reason| FenceFileError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })
}

/// Backoff after the first failed write of the state file.
const RETRY_FIRST_MS: u64 = 100;
/// The longest wait between two attempts: a fixed disk is noticed within
/// this.
const RETRY_MAX_MS: u64 = 5_000;

/// The fence state file of a running server: when to write the next
/// ceiling, and what happened the last times. Lives under the core's lock
/// (`engine::Inner`); every method is O(1) unless it writes the file.
#[derive(Debug)]
pub struct Keeper {
    file: FenceFile,
    reserve: u64,
    /// Set while writes fail: no attempt before this instant.
    retry_at: Option<Time>,
    backoff_ms: u64,
    failures_total: u64,
    last_error: Option<String>,
}

/// What `/ready` and `/metrics` show about the fence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Writes of the state file that failed since start.
    pub persist_failures_total: u64,
    /// Grants left under the ceiling.
    pub headroom: u64,
    /// Why the ceiling cannot be raised, while that is so and the headroom
    /// is below a quarter of the reserve: the server is then not ready.
    pub unready: Option<String>,
}

impl Keeper {
    /// A keeper for `file`, which already holds the startup ceiling.
    pub fn new(file: FenceFile, reserve: u64) -> Keeper {
        Keeper {
            file,
            reserve: reserve.max(2),
            retry_at: None,
            backoff_ms: 0,
            failures_total: 0,
            last_error: None,
        }
    }

    /// Writes and installs a new ceiling (`last fence + reserve`) once half
    /// the reserve is used and no retry is pending; a raise grants what
    /// waited for a fence, into `out`. Call after every core input.
    pub fn top_up(&mut self, core: &mut Core, now: Time, out: &mut Vec<Effect>) {
        if core.fence_headroom() >= self.reserve / 2 {
            return;
        }
        if self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        let ceiling = core.last_fence().saturating_add(self.reserve);
        let result = if ceiling <= core.config().fence_ceiling {
            Err(FenceFileError::Exhausted {
                path: self.file.path().to_path_buf(),
                start: core.last_fence(),
                left: u64::MAX - core.last_fence(),
            })
        } else {
            self.file.persist(ceiling)
        };
        match result {
            Ok(()) => {
                if self.retry_at.take().is_some() {
                    log::info!(
                        path:% = self.file.path().display(), failures = self.failures_total;
                        "fence state file written again; grants resume"
                    );
                }
                self.backoff_ms = 0;
                self.last_error = None;
                core.raise_fence_ceiling(now, ceiling, out);
            }
            Err(e) => {
                self.failures_total += 1;
                self.backoff_ms = (self.backoff_ms * 2).clamp(RETRY_FIRST_MS, RETRY_MAX_MS);
                self.retry_at = Some(Time(now.0.saturating_add(self.backoff_ms)));
                let error = e.to_string();
                if let Some(suppressed) =
                    logging::allow(log::Level::Warn, logging::Cause::FencePersist, None)
                {
                    log::warn!(
                        error = error.as_str(), headroom = core.fence_headroom(),
                        retry_in_ms = self.backoff_ms, suppressed;
                        "cannot persist the fence ceiling; grants wait when no fence is left"
                    );
                }
                self.last_error = Some(error);
            }
        }
    }

    /// When the next write is due after a failure (the timer wakes for it,
    /// so a server with no traffic still recovers); `None` while healthy.
    pub fn next_attempt(&self) -> Option<Time> {
        self.retry_at
    }

    /// The fence as `/ready` and `/metrics` report it.
    pub fn status(&self, headroom: u64) -> Status {
        let unready = match &self.last_error {
            Some(e) if headroom < self.reserve / 4 => Some(format!(
                "cannot persist the fence ceiling ({e}); {headroom} grants left"
            )),
            _ => None,
        };
        Status {
            persist_failures_total: self.failures_total,
            headroom,
            unready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A scratch directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("dflockd-fence-test-{}-{n}", std::process::id());
            let dir = std::env::temp_dir().join(name);
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn absent_file_reads_as_zero_and_is_not_created() {
        let dir = TempDir::new();
        let path = dir.path("fence");
        let (file, ceiling) = FenceFile::open(&path).expect("open");
        assert_eq!(ceiling, 0);
        assert_eq!(file.ceiling(), 0);
        assert_eq!(file.path(), path);
        assert!(!path.exists());
    }

    #[test]
    fn round_trip() {
        let dir = TempDir::new();
        let path = dir.path("fence");
        for ceiling in [1, 42, 1_700_000_000_000_000_000, u64::MAX] {
            let _ = fs::remove_file(&path);
            let (mut file, _) = FenceFile::open(&path).expect("open");
            file.persist(ceiling).expect("persist");
            assert_eq!(file.ceiling(), ceiling);
            let (_, read) = FenceFile::open(&path).expect("reopen");
            assert_eq!(read, ceiling);
        }
        let text = fs::read_to_string(&path).expect("read");
        let body = format!("dflockd-fence v1 {}", u64::MAX);
        assert_eq!(text, format!("{body} {:08x}\n", crc32(body.as_bytes())));
        assert!(
            !dir.path("fence.tmp").exists(),
            "temporary file left behind"
        );
    }

    #[test]
    fn ceiling_only_increases() {
        let dir = TempDir::new();
        let path = dir.path("fence");
        let (mut file, _) = FenceFile::open(&path).expect("open");
        file.persist(10).expect("persist 10");
        file.persist(20).expect("persist 20");
        file.persist(20).expect("persisting the same value again");
        let err = file.persist(19).expect_err("lowering must fail");
        assert!(matches!(
            err,
            FenceFileError::CeilingWentBack {
                persisted: 20,
                requested: 19,
                ..
            }
        ));
        assert!(err.to_string().contains(&path.display().to_string()));
        let (mut reopened, ceiling) = FenceFile::open(&path).expect("reopen");
        assert_eq!(ceiling, 20);
        assert!(reopened.persist(5).is_err());
        reopened.persist(21).expect("persist 21");
        assert_eq!(FenceFile::open(&path).expect("reopen").1, 21);
    }

    #[test]
    fn persist_zero_creates_the_file() {
        let dir = TempDir::new();
        let path = dir.path("fence");
        let (mut file, _) = FenceFile::open(&path).expect("open");
        file.persist(0).expect("persist 0");
        assert_eq!(FenceFile::open(&path).expect("reopen").1, 0);
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_path() {
        let good = encode(1234);
        let flipped_crc = {
            // Same layout, wrong checksum.
            let body = format!("{MAGIC} 1234");
            format!("{body} {:08x}\n", crc32(body.as_bytes()) ^ 1)
        };
        let changed_ceiling = good.replace("1234", "1235");
        let leading_zero = {
            let body = format!("{MAGIC} 01234");
            format!("{body} {:08x}\n", crc32(body.as_bytes()))
        };
        let upper_hex = (0u64..)
            .map(|n| {
                let body = format!("{MAGIC} {n}");
                format!("{body} {:08X}\n", crc32(body.as_bytes()))
            })
            .find(|line| line.bytes().any(|b| (b'A'..=b'F').contains(&b)))
            .unwrap_or_default();
        let too_big = {
            let body = format!("{MAGIC} 18446744073709551616");
            format!("{body} {:08x}\n", crc32(body.as_bytes()))
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "the file is empty"),
            ("mid-number", good.as_bytes()[..20].to_vec(), "truncated"),
            (
                "truncated",
                good.as_bytes()[..good.len() - 1].to_vec(),
                "no final newline",
            ),
            (
                "half",
                good.as_bytes()[..good.len() / 2].to_vec(),
                "truncated",
            ),
            (
                "checksum mismatch",
                flipped_crc.into_bytes(),
                "checksum mismatch",
            ),
            (
                "ceiling edited",
                changed_ceiling.into_bytes(),
                "checksum mismatch",
            ),
            (
                "upper-case hex",
                upper_hex.into_bytes(),
                "not 8 lowercase hex digits",
            ),
            (
                "extra line",
                format!("{good}{good}").into_bytes(),
                "more than one line",
            ),
            (
                "wrong magic",
                b"dflockd-fence v2 1 00000000\n".to_vec(),
                "does not start with",
            ),
            ("binary", vec![0xff, 0xfe, 0, 1], "not text"),
            ("no checksum", format!("{MAGIC}\n").into_bytes(), "checksum"),
            (
                "leading zero",
                leading_zero.into_bytes(),
                "not a decimal number",
            ),
            ("overflow", too_big.into_bytes(), "does not fit in 64 bits"),
            ("huge", vec![b'x'; 4096], "longer than 128 bytes"),
        ];
        let dir = TempDir::new();
        for (name, content, reason) in cases {
            let path = dir.path(name);
            fs::write(&path, &content).expect("write");
            let err = FenceFile::open(&path).expect_err(name);
            let text = err.to_string();
            assert!(
                matches!(err, FenceFileError::Corrupt { .. }),
                "{name}: {text}"
            );
            assert!(text.contains(&path.display().to_string()), "{name}: {text}");
            assert!(text.contains(reason), "{name}: {text}");
        }
    }

    #[test]
    fn io_errors_name_the_path() {
        let dir = TempDir::new();
        // Reading a directory fails.
        let err = FenceFile::open(&dir.0).expect_err("a directory");
        assert!(matches!(err, FenceFileError::Io { .. }), "{err}");
        // Persisting into a missing directory fails, naming the file.
        let path = dir.path("missing-dir").join("fence");
        let (mut file, ceiling) = FenceFile::open(&path).expect("open");
        assert_eq!(ceiling, 0);
        let err = file.persist(7).expect_err("no directory");
        assert!(err.to_string().contains("missing-dir"), "{err}");
        assert_eq!(file.ceiling(), 0);
        // A path without a file name.
        assert!(FenceFile::open("/").is_err());
    }

    #[test]
    fn relative_paths_use_the_current_directory() {
        let (file, _) = FenceFile::open("dflockd-fence-test-never-created").expect("open");
        assert_eq!(file.dir, PathBuf::from("."));
        assert_eq!(
            file.tmp_path,
            PathBuf::from("dflockd-fence-test-never-created.tmp")
        );
    }

    #[test]
    fn startup_fence_policy() {
        // The wall clock is ahead: start there.
        assert_eq!(
            startup_fence(0, 1_000, FENCE_RANGE),
            (1_000, 1_000 + FENCE_RANGE)
        );
        assert_eq!(
            startup_fence(500, 1_000, FENCE_RANGE),
            (1_000, 1_000 + FENCE_RANGE)
        );
        // The clock went back below the persisted ceiling: start above it.
        assert_eq!(
            startup_fence(5_000, 1_000, FENCE_RANGE),
            (5_000, 5_000 + FENCE_RANGE)
        );
        assert_eq!(startup_fence(5_000, 1_000, 10), (5_000, 5_010));
        // Saturates instead of wrapping.
        assert_eq!(
            startup_fence(u64::MAX - 1, 0, FENCE_RANGE),
            (u64::MAX - 1, u64::MAX)
        );
    }

    /// A simulated restart sequence: every fence after a restart is above
    /// every fence before, even when the clock jumps back.
    #[test]
    fn restarts_keep_fences_increasing() {
        let dir = TempDir::new();
        let path = dir.path("fence");
        let mut highest_issued = 0;
        for wall in [1_000_000, 50, 2_000_000, 0] {
            let (mut file, persisted) = FenceFile::open(&path).expect("open");
            let (start, ceiling) = startup_fence(persisted, wall, FENCE_RANGE);
            file.persist(ceiling).expect("persist");
            let first = start + 1;
            assert!(first > highest_issued, "fence went back after restart");
            // Issue the whole reserved range before "crashing".
            highest_issued = ceiling;
        }
    }

    /// The keeper against a real core and a state file whose writes start
    /// failing: the temporary file's name is taken by a directory, which
    /// fails for root too. Attempts back off instead of running on every
    /// input; the last fence is issued, then grants wait; `/ready` turns
    /// unready below a quarter of the reserve; once writes work again the
    /// waiting acquire is granted at the retry.
    #[test]
    fn keeper_backs_off_waits_and_recovers() {
        use crate::core::CoreConfig;
        use crate::wire::{Key, Reply, Request, Space, Status};
        let dir = TempDir::new();
        let path = dir.path("fence");
        let (mut file, persisted) = FenceFile::open(&path).expect("open");
        let (start, ceiling) = startup_fence(persisted, 1_000, 8);
        file.persist(ceiling).expect("first write");
        let mut keeper = Keeper::new(file, 8);
        let cfg = CoreConfig {
            fence_start: start,
            fence_ceiling: ceiling,
            ..CoreConfig::default()
        };
        let mut core = Core::new(cfg, Time(0));
        let mut out = Vec::new();
        let c = core.connect(Time(0), &mut out);
        let acquire = |key: &str, timeout_s: u64| Request::Acquire {
            space: Space::Lock,
            key: Key::new(key.as_bytes()).expect("key"),
            timeout_s,
            limit: 1,
            lease_s: Some(60),
        };
        let grant = |core: &mut Core, keeper: &mut Keeper, t: u64, key: &str| {
            let mut out = Vec::new();
            core.handle(Time(t), c, acquire(key, 0), &mut out);
            keeper.top_up(core, Time(t), &mut out);
            out
        };
        std::fs::create_dir(dir.path("fence.tmp")).expect("block the temporary file");
        // Past half the reserve (fewer than 4 left), the keeper writes.
        for i in 0..5 {
            grant(&mut core, &mut keeper, 0, &format!("k{i}"));
        }
        assert_eq!(
            keeper.status(core.fence_headroom()).persist_failures_total,
            1
        );
        assert_eq!(keeper.next_attempt(), Some(Time(100)));
        // Inputs before the retry instant do not touch the file.
        for i in 5..8 {
            grant(&mut core, &mut keeper, 50, &format!("k{i}"));
        }
        assert_eq!(keeper.status(0).persist_failures_total, 1);
        assert_eq!(core.fence_headroom(), 0);
        let status = keeper.status(core.fence_headroom());
        assert!(status
            .unready
            .as_deref()
            .is_some_and(|r| r.contains("0 grants left")));
        // No fence left: `l k 0` times out, a blocked acquire waits.
        let out = grant(&mut core, &mut keeper, 60, "free");
        assert_eq!(
            out,
            [Effect::Reply {
                conn: c,
                reply: Reply::Status(Status::Timeout)
            }]
        );
        let mut out = Vec::new();
        core.handle(Time(60), c, acquire("free", 30), &mut out);
        assert!(out.is_empty(), "{out:?}");
        // The retry at 100 fails again and backs off to 200 ms.
        keeper.top_up(&mut core, Time(100), &mut out);
        assert_eq!(keeper.next_attempt(), Some(Time(300)));
        assert_eq!(keeper.status(0).persist_failures_total, 2);
        // Writable again: the retry raises the ceiling and grants.
        std::fs::remove_dir(dir.path("fence.tmp")).expect("unblock");
        keeper.top_up(&mut core, Time(299), &mut out);
        assert!(out.is_empty());
        keeper.top_up(&mut core, Time(300), &mut out);
        assert!(
            matches!(&out[..], [Effect::Reply { conn, reply: Reply::Granted { .. } }] if *conn == c),
            "{out:?}"
        );
        assert_eq!(keeper.next_attempt(), None);
        assert_eq!(keeper.status(core.fence_headroom()).unready, None);
        assert_eq!(FenceFile::open(&path).expect("reopen").1, start + 8 + 8);
    }

    #[test]
    fn a_file_near_the_top_refuses_to_start() {
        let path = Path::new("/var/lib/dflockd/fence");
        assert!(check_space(path, 0).is_ok());
        assert!(check_space(path, u64::MAX - MIN_FENCE_SPACE).is_ok());
        let e = check_space(path, u64::MAX - MIN_FENCE_SPACE + 1).expect_err("near the top");
        let text = e.to_string();
        assert!(text.contains("/var/lib/dflockd/fence"), "{text}");
        assert!(text.contains("refusing to start"), "{text}");
        assert!(check_space(path, u64::MAX).is_err());
    }
}
