//! The `raft` library logs through `slog`; this drain forwards its records
//! to the project's `log` lines (spec/cluster.md §2.4), so the default
//! `slog-term`/`slog-envlogger` stack is never pulled in.
//!
//! Levels are lowered by one step: the library's `info` lines (every
//! election, every term change) become `debug`, since the replica logs the
//! role changes an operator needs itself. Warnings and errors pass through
//! the rate limiter ([`crate::logging::allow`]): a member that cannot reach
//! the others would otherwise repeat the same warning every election.
//! Nothing the library logs carries entry data, only indexes, terms and
//! member ids.

use std::fmt::{self, Write as _};

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

use crate::logging::{allow, Cause};

/// The target of every forwarded line.
pub const TARGET: &str = "dflockd::raft";

/// A root `slog` logger for one member's `RawNode`.
pub fn raft_logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(Forward.fuse(), slog::o!("member" => node_id))
}

/// The drain: one `log` record per `slog` record.
struct Forward;

impl Drain for Forward {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => log::Level::Error,
            slog::Level::Warning => log::Level::Warn,
            slog::Level::Info => log::Level::Debug,
            slog::Level::Debug | slog::Level::Trace => log::Level::Trace,
        };
        if level > log::max_level() {
            return Ok(());
        }
        let suppressed = if level <= log::Level::Warn {
            match allow(level, Cause::RaftLibrary, None) {
                Some(n) => n,
                None => return Ok(()),
            }
        } else {
            0
        };
        let mut text = Text(String::new());
        let _ = write!(text.0, "{}", record.msg());
        let _ = record.kv().serialize(record, &mut text);
        let _ = values.serialize(record, &mut text);
        if suppressed > 0 {
            let _ = write!(text.0, " suppressed={suppressed}");
        }
        log::logger().log(
            &log::Record::builder()
                .level(level)
                .target(TARGET)
                .args(format_args!("{}", text.0))
                .build(),
        );
        Ok(())
    }
}

/// Appends ` key=value` pairs to the message.
struct Text(String);

impl Serializer for Text {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_one_line_with_their_fields() {
        let mut text = Text("became leader".into());
        let _ = text.emit_arguments("term", &format_args!("{}", 7));
        assert_eq!(text.0, "became leader term=7");
        // A logger can be built and used without an installed `log` logger.
        let logger = raft_logger(3);
        slog::warn!(logger, "cannot reach"; "to" => 2);
    }
}
