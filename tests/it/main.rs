//! Integration tests: each module starts its own in-process server on
//! `127.0.0.1:0` and talks to it over real loopback TCP, as a client would.
//!
//! Modules by boundary:
//! * `commands`: every command and reply shape, stats, tokens, key spaces;
//! * `fifo`: arrival-order grants across connections;
//! * `contention`: safety properties with many clients at once;
//! * `semaphores`: N holders, queueing, hand-off, limit mismatch;
//! * `two_phase`: `e`/`w`/`se`/`sw` edge cases (reference §12 items 16–27);
//! * `leases`: expiry hand-off and renewal, driven by the server's timer;
//! * `disconnect`: what a vanished connection leaves behind;
//! * `auth`: the `auth` handshake;
//! * `client`: the client library against a real server;
//! * `client_guide`: `spec/client-guide.md` quotes `examples/minimal_client.rs`
//!   verbatim, and that client works against a real server;
//! * `limits`: connection caps, `max_waiters`, `max_locks`;
//! * `shutdown`: binding, graceful drain and forced close;
//! * `pipelining`: many requests per write, blocked requests in a pipeline;
//! * `bad_input`: malformed, hostile and slow peers;
//! * `tls`: TLS on the TCP port: round trips, refused handshakes, the
//!   handshake deadline.
//! * `http`: the HTTP REST front, its sessions, and cross-transport FIFO.
//! * `http_signals`: signals over HTTP: publish, the SSE stream, delivery
//!   across transports, caps, cleanup, eviction and drain.
//! * `signals`: pub/sub: wildcards, queue groups, pushes, slow consumers.
//! * `metrics`: `/metrics` counters and histograms after real traffic.
//! * `dashboard`: the views behind `/ui` (top lists, key views, activity),
//!   the `/ui` files, and `stats` built in slices.
//! * `raft_batching`: why `batch_append` stays off (raft-rs commits an
//!   entry only the leader holds).
//! * `operations`: the real binary (`daemon`): configuration rules, log
//!   lines, the fence state file failing after start-up.

mod daemon;
mod http_client;
mod support;

mod auth;
mod bad_input;
mod client;
mod client_guide;
mod cluster;
mod commands;
mod contention;
mod dashboard;
mod disconnect;
mod fifo;
mod http;
mod http_signals;
mod leases;
mod limits;
mod metrics;
mod operations;
mod pipelining;
mod raft_batching;
mod semaphores;
mod shutdown;
mod signals;
mod tls;
mod two_phase;
