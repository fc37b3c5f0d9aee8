//! The conformance runner: replays the transcripts of `spec/conformance/`
//! against any server address and says, line by line, where a server
//! departs from the protocol.
//!
//! It is a client, not part of the server: plain blocking `std::net`
//! sockets, one thread, a read deadline on every line. Nothing here knows
//! how the server under test is built, so the same code serves
//! `cargo test` (servers spawned in-process) and a runner pointed at a
//! `host:port` somewhere else (scenarios that need server flags are then
//! skipped).
//!
//! Pieces, in reading order:
//! * [`transcript`]: the file format (README.md there) parsed into a
//!   [`Scenario`], with every static check, so a broken transcript fails as
//!   `file:line: what is wrong` before any byte is sent;
//! * [`run_scenario`]: one scenario against one address, failing with
//!   `file:line: expected "PATTERN", got "LINE"` at the first mismatch;
//! * [`run_cases`] / [`run_all`]: a set of scenarios (a directory, or the
//!   copy built into the binary), each on the shared server or on a fresh
//!   one from a [`ServerFactory`] when it needs `!server-flags:`, compared
//!   against `expected-failures.txt`, stopping early against a server that
//!   never answers;
//! * [`cli`]: `dflockd conformance`, which can also start the server under
//!   test itself (`--spawn`);
//! * [`serve`]: the other direction, for client authors: a scripted server
//!   that plays the [`script`]s of `spec/conformance/client/` against a
//!   client and says whether it did the right thing.

pub mod cli;
mod client;
mod matcher;
mod relay;
mod run;
pub mod script;
pub mod serve;
pub mod spawn;
mod suite;
pub mod transcript;

pub use matcher::{stats_shape, QUOTE_BYTES};
pub use run::{run_scenario, CaseResult, Outcome, RunOptions};
pub use suite::{
    case_name, did_you_mean, embedded_expected_failures, embedded_transcripts, load_dir,
    load_embedded, run_all, run_all_with, run_case, run_cases, same_flags, CaseReport,
    ExpectedFailures, Report, ServerFactory, SuiteError, Summary, Target, Verdict,
};
pub use transcript::{parse, parse_file, Scenario, TranscriptError};
