//! Log lines: the `log` facade, one logger that writes text or JSON lines
//! to stderr, and the rate limiter every peer-triggered line goes through.
//!
//! Events are logged where they happen (`log::warn!` and friends with
//! key-value fields). What may be logged is fixed here and in
//! spec/ARCHITECTURE.md: peer addresses, reason codes, counts, durations,
//! paths of our own files. Never a token, an auth secret, a signal payload
//! or a key, so no line needs scrubbing.
//!
//! A flood of bad input must not become a flood of log lines: every line
//! that a peer can provoke asks [`allow`] first, which lets the first one
//! of its (cause, peer) through and then at most one per [`WINDOW`], with
//! the number suppressed in between carried as `suppressed=N` on the next.
//! Records of other crates (rustls speaks `log`) pass only at `trace`,
//! since some of them are provoked by peers and are not rate-limited.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `2026-01-02T03:04:05.678Z WARN  target: message key=value ...`
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `msg`, then the
    /// fields.
    Json,
}

struct Logger {
    level: LevelFilter,
    format: Format,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        if m.target().starts_with("dflockd") {
            m.level() <= self.level
        } else {
            self.level == LevelFilter::Trace
        }
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = render(self.format, SystemTime::now(), record);
        // One write per line, so lines from several threads never mix.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger for the whole process (once; later calls fail).
pub fn init(level: LevelFilter, format: Format) -> Result<(), log::SetLoggerError> {
    log::set_logger(Box::leak(Box::new(Logger { level, format })))?;
    log::set_max_level(level);
    Ok(())
}

/// One line, with its newline.
pub fn render(format: Format, at: SystemTime, record: &Record<'_>) -> String {
    let mut fields = Fields(Vec::new());
    let _ = record.key_values().visit(&mut fields);
    let ts = timestamp(at);
    let mut out = String::with_capacity(128);
    match format {
        Format::Text => {
            let _ = write!(
                out,
                "{ts} {:<5} {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
            for (k, v) in &fields.0 {
                let _ = write!(out, " {k}=");
                match v {
                    Field::Str(s) if needs_quotes(s) => {
                        let _ = write!(out, "{s:?}");
                    }
                    Field::Str(s) => out.push_str(s),
                    Field::Num(n) => out.push_str(n),
                }
            }
        }
        Format::Json => {
            let _ = write!(
                out,
                "{{\"ts\":\"{ts}\",\"level\":\"{}\",\"target\":{},\"msg\":{}",
                record.level().as_str().to_ascii_lowercase(),
                json_string(record.target()),
                json_string(&record.args().to_string()),
            );
            for (k, v) in &fields.0 {
                let _ = write!(out, ",{}:", json_string(k));
                match v {
                    Field::Str(s) => out.push_str(&json_string(s)),
                    Field::Num(n) => out.push_str(n),
                }
            }
            out.push('}');
        }
    }
    out.push('\n');
    out
}

enum Field {
    Str(String),
    /// A number or boolean, already rendered.
    Num(String),
}

struct Fields(Vec<(String, Field)>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let field = if let Some(n) = value.to_u64() {
            Field::Num(n.to_string())
        } else if let Some(n) = value.to_i64() {
            Field::Num(n.to_string())
        } else if let Some(b) = value.to_bool() {
            Field::Num(b.to_string())
        } else {
            Field::Str(value.to_string())
        };
        self.0.push((key.as_str().to_owned(), field));
        Ok(())
    }
}

fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// RFC 3339 in UTC with milliseconds: `2026-01-02T03:04:05.678Z`.
pub fn timestamp(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

// ----- rate limiting ---------------------------------------------------------

/// What a rate-limited line is about. Each cause is limited separately,
/// and per peer where there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// A malformed request on the TCP port (protocol.md §5.4).
    ProtocolError,
    /// A started request not finished within `--read-timeout`.
    ReadDeadline,
    /// A failed `auth` (TCP) or a missing or wrong bearer token (HTTP).
    AuthFailure,
    /// A subscriber closed because its push queue was full (D13).
    SlowConsumer,
    /// A connection closed at accept by a connection cap.
    ConnectionCap,
    /// An HTTP session refused by a session cap.
    SessionCap,
    /// An HTTP request over `--http-rate-limit-per-ip`.
    RateLimited,
    /// An HTTP request the parser could not take.
    HttpRefused,
    /// A TLS handshake that failed or was late.
    TlsHandshake,
    /// The fence state file could not be written.
    FencePersist,
    /// `accept` failed on a listener (out of file descriptors, usually).
    Accept,
    /// A warning or error of the Raft library (cluster mode).
    RaftLibrary,
    /// A connection to the Raft port that failed its handshake or sent
    /// something a member would not send (cluster mode).
    RaftPeerRefused,
    /// A member that could not be reached or dropped its connection.
    RaftPeerUnreachable,
}

/// At most one line per (cause, peer) per window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Peers tracked at once; beyond this, new peers share their cause's entry.
const MAX_KEYS: usize = 1024;

/// The state behind [`allow`], usable with any clock (tests).
#[derive(Default)]
pub struct Limiter {
    entries: HashMap<(Cause, Option<IpAddr>), Entry>,
    last_sweep: Option<Instant>,
}

struct Entry {
    logged: Instant,
    suppressed: u64,
}

impl Limiter {
    /// Whether a line of `cause` about `peer` may be written at `now`:
    /// `Some(n)` with the lines suppressed since the last one of this key,
    /// or `None` to suppress this one (it is counted). O(1) amortised; the
    /// table holds at most 1024 peers plus one entry per cause.
    pub fn check(&mut self, cause: Cause, peer: Option<IpAddr>, now: Instant) -> Option<u64> {
        let mut key = (cause, peer);
        if peer.is_some() && !self.entries.contains_key(&key) && self.entries.len() >= MAX_KEYS {
            self.sweep(now);
            if self.entries.len() >= MAX_KEYS {
                // Too many misbehaving peers at once: the newcomer shares
                // its cause's entry, so the table stays bounded.
                key = (cause, None);
            }
        }
        match self.entries.get_mut(&key) {
            Some(e) if now.saturating_duration_since(e.logged) < WINDOW => {
                e.suppressed += 1;
                None
            }
            Some(e) => {
                e.logged = now;
                Some(std::mem::take(&mut e.suppressed))
            }
            None => {
                self.entries.insert(
                    key,
                    Entry {
                        logged: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// Forgets peers quiet for a whole window, at most once per window (a
    /// bounded pass over at most [`MAX_KEYS`] entries). Their suppressed
    /// counts move to their cause's shared entry, so no count is lost.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < WINDOW)
        {
            return;
        }
        self.last_sweep = Some(now);
        let mut carried: Vec<(Cause, u64)> = Vec::new();
        self.entries.retain(|(cause, peer), e| {
            let stale = peer.is_some() && now.saturating_duration_since(e.logged) >= WINDOW;
            if stale && e.suppressed > 0 {
                carried.push((*cause, e.suppressed));
            }
            !stale
        });
        for (cause, n) in carried {
            self.entries
                .entry((cause, None))
                .or_insert(Entry {
                    // Due at once: the carried count is reported next time.
                    logged: now.checked_sub(WINDOW).unwrap_or(now),
                    suppressed: 0,
                })
                .suppressed += n;
        }
    }

    /// Entries held (for tests of the bound).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn limiter() -> &'static Mutex<Limiter> {
    static LIMITER: OnceLock<Mutex<Limiter>> = OnceLock::new();
    LIMITER.get_or_init(Mutex::default)
}

/// Whether to write a `level` line of `cause` about `peer` now; see
/// [`Limiter::check`]. `None` at once, without touching the limiter, when
/// `level` is not logged at all.
pub fn allow(level: Level, cause: Cause, peer: Option<IpAddr>) -> Option<u64> {
    if level > log::max_level() {
        return None;
    }
    limiter()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .check(cause, peer, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = UNIX_EPOCH + Duration::from_millis(1_767_323_045_678);
        assert_eq!(timestamp(at), "2026-01-02T03:04:05.678Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let at = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(at), "2000-02-29T00:00:00.000Z");
    }

    fn line(format: Format) -> String {
        let peer = "127.0.0.1:5000";
        let kvs: &[(&str, log::kv::Value<'_>)] = &[
            ("peer", log::kv::Value::from_display(&peer)),
            ("code", 5u64.into()),
            ("reason", "invalid key".into()),
        ];
        let args = format_args!("malformed request");
        let record = Record::builder()
            .args(args)
            .level(Level::Warn)
            .target("dflockd::server")
            .key_values(&kvs)
            .build();
        render(format, UNIX_EPOCH, &record)
    }

    #[test]
    fn text_and_json_lines() {
        assert_eq!(
            line(Format::Text),
            "1970-01-01T00:00:00.000Z WARN  dflockd::server: malformed request \
             peer=127.0.0.1:5000 code=5 reason=\"invalid key\"\n"
        );
        let json = line(Format::Json);
        assert!(json.ends_with("}\n"), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("one JSON object");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["msg"], "malformed request");
        assert_eq!(v["peer"], "127.0.0.1:5000");
        assert_eq!(v["code"], 5);
        assert_eq!(v["reason"], "invalid key");
    }

    #[test]
    fn one_line_per_key_per_window_with_the_suppressed_count() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        assert_eq!(l.check(Cause::ProtocolError, a, t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.check(Cause::ProtocolError, a, t0), None);
        }
        // Another peer, or another cause, has its own window.
        assert_eq!(l.check(Cause::ProtocolError, b, t0), Some(0));
        assert_eq!(l.check(Cause::AuthFailure, a, t0), Some(0));
        assert_eq!(l.check(Cause::ProtocolError, a, t0 + WINDOW / 2), None);
        assert_eq!(l.check(Cause::ProtocolError, a, t0 + WINDOW), Some(1001));
        assert_eq!(l.check(Cause::ProtocolError, a, t0 + WINDOW), None);
    }

    #[test]
    fn many_peers_share_an_entry_and_the_table_stays_bounded() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let peer = |i: u32| Some(IpAddr::from(i.to_be_bytes()));
        let mut written = 0;
        for i in 0..10 * MAX_KEYS as u32 {
            written += usize::from(l.check(Cause::ProtocolError, peer(i), t0).is_some());
        }
        // One line per tracked peer, then one for all the others.
        assert_eq!(written, MAX_KEYS + 1);
        assert!(l.len() <= MAX_KEYS + 1);
        // After a quiet window the old peers are swept: their suppressed
        // counts are carried to the shared entry, and new peers get their
        // own entries again.
        let later = t0 + WINDOW;
        assert_eq!(
            l.check(Cause::ProtocolError, peer(u32::MAX), later),
            Some(0)
        );
        assert!(l.len() <= 3, "{}", l.len());
        assert_eq!(
            l.check(Cause::ProtocolError, None, later),
            Some(9 * MAX_KEYS as u64 - 1)
        );
    }
}
