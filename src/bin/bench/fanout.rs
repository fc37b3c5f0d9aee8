//! `--fanout`: signal fan-out (spec/protocol.md §9). Subscribers `listen` on one channel, one
//! publisher sends timestamped `signal`s; subscribers measure publish-to-receipt latency and
//! a subscriber the server closes (the slow-consumer rule) is reported as an eviction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use smol::lock::Barrier;

use crate::args::{Config, FanoutConfig};
use crate::line::{show_reply, unexpected, BenchError, Blocking, Client, Evented};
use crate::lock_loop::{elapsed_ns, fail, spawn_on_loops, Failures};
use crate::report::{latency_lines, summarize};

/// After the publisher stops, how long subscribers may go without a new receipt before the
/// missing deliveries are given up on, and the longest wait overall.
const DRAIN_QUIET: Duration = Duration::from_millis(500);
const DRAIN_MAX: Duration = Duration::from_secs(5);

fn push_listen(out: &mut Vec<u8>, channel: &str) {
    out.extend_from_slice(b"listen\n");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// `signal` whose payload is `<seq> <sent_ns>`, the send time in nanoseconds since the run's
/// base instant (publisher and subscribers share one process, so one monotonic clock).
fn push_signal(out: &mut Vec<u8>, channel: &str, seq: u64, sent_ns: u64) {
    out.extend_from_slice(b"signal\n");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(format!("\n{seq} {sent_ns}\n").as_bytes());
}

/// `ok <n>`, the answer to `signal`: how many subscribers the signal was queued to.
fn parse_signal_count(line: &[u8]) -> Option<u64> {
    let n = line.strip_prefix(b"ok ")?;
    if n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// A pushed `sig <channel> <seq> <sent_ns>` on `channel`: returns `sent_ns`.
fn parse_pushed_signal(line: &[u8], channel: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"sig ")?.strip_prefix(channel)?;
    let payload = rest.strip_prefix(b" ")?;
    let (seq, sent) = payload.split_at(payload.iter().position(|&b| b == b' ')?);
    let sent = &sent[1..];
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !digits(seq) || !digits(sent) {
        return None;
    }
    std::str::from_utf8(sent).ok()?.parse().ok()
}

/// Set once, awaited by many: the subscribers stop reading.
#[derive(Default)]
struct StopFlag {
    stopped: std::sync::atomic::AtomicBool,
    event: event_listener::Event,
}

impl StopFlag {
    fn set(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    async fn wait(&self) {
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.event.listen();
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

/// What the fan-out threads share.
struct FanoutShared {
    /// Every subscriber and the publisher meet here once all subscriptions are in place.
    ready: Barrier,
    stop: StopFlag,
    /// The zero of the timestamps in the payloads.
    base: Instant,
    /// Signals received by all subscribers so far (for the drain wait).
    received: AtomicU64,
}

struct SubscriberOutcome {
    latencies_ns: Vec<u64>,
    received: u64,
    /// Lines that were neither our signals nor anything else we expect.
    malformed: u64,
    /// When and why the server closed this subscriber before the end, if it did.
    evicted: Option<(Instant, String)>,
    last_receipt: Option<Instant>,
}

async fn fanout_subscriber(
    id: usize,
    cfg: &Config,
    shared: &FanoutShared,
) -> Result<SubscriberOutcome, BenchError> {
    let addr = &cfg.servers[id % cfg.servers.len()];
    let mut client = Client::<Evented>::connect(addr, cfg).await?;
    push_listen(&mut client.out, &cfg.key);
    client.flush().await?;
    let line = client.reply().await?;
    if line != b"ok" {
        return Err(unexpected("listen", &cfg.key, line));
    }
    client.inbuf.keep_pushes();
    shared.ready.wait().await;
    let mut outcome = SubscriberOutcome {
        latencies_ns: Vec::new(),
        received: 0,
        malformed: 0,
        evicted: None,
        last_receipt: None,
    };
    loop {
        let read = future::or(async { Some(client.fill().await) }, async {
            shared.stop.wait().await;
            None
        })
        .await;
        match read {
            None => break,
            Some(Err(e)) => {
                outcome.evicted = Some((Instant::now(), e.to_string()));
                break;
            }
            Some(Ok(())) => {}
        }
        // One clock read per batch of lines: they all arrived in this read.
        let now = Instant::now();
        let now_ns = elapsed_ns(shared.base, now);
        let mut got = 0;
        while let Some(range) = client.inbuf.take_line()? {
            match parse_pushed_signal(client.inbuf.line(range), cfg.key.as_bytes()) {
                Some(sent_ns) => {
                    outcome.latencies_ns.push(now_ns.saturating_sub(sent_ns));
                    got += 1;
                }
                None => outcome.malformed += 1,
            }
        }
        if got > 0 {
            outcome.received += got;
            outcome.last_receipt = Some(now);
            shared.received.fetch_add(got, Ordering::Relaxed);
        }
    }
    Ok(outcome)
}

struct PublisherOutcome {
    published: u64,
    /// Sum of the `ok <n>` counts.
    deliveries: u64,
    failures: Failures,
    started: Instant,
    finished: Instant,
}

/// Publishes on one connection for the configured duration, `--pipeline` signals in flight,
/// paced to `--rate` when set. Every signal of one write carries the same send time.
async fn fanout_publisher(
    cfg: &Config,
    fan: &FanoutConfig,
    shared: &FanoutShared,
) -> Result<PublisherOutcome, BenchError> {
    let mut client = Client::<Blocking>::connect(&cfg.servers[0], cfg).await?;
    shared.ready.wait().await;
    let started = Instant::now();
    let end = started + Duration::from_secs(fan.duration_s);
    let (mut seq, mut in_flight, mut deliveries) = (0u64, 0usize, 0u64);
    let mut failures = Failures::default();
    loop {
        let now = Instant::now();
        if now < end {
            let due = match fan.rate {
                0 => u64::MAX,
                rate => (now.duration_since(started).as_secs_f64() * rate as f64) as u64 + 1,
            };
            let sent_ns = elapsed_ns(shared.base, now);
            while in_flight < cfg.pipeline && seq < due {
                push_signal(&mut client.out, &cfg.key, seq, sent_ns);
                seq += 1;
                in_flight += 1;
            }
        }
        if in_flight == 0 {
            if now >= end {
                break;
            }
            // Ahead of the --rate schedule: sleep until the next signal is due.
            let next = started + Duration::from_secs_f64(seq as f64 / fan.rate.max(1) as f64);
            std::thread::sleep(next.saturating_duration_since(now).min(end - now));
            continue;
        }
        client.flush().await?;
        client.fill().await?;
        while let Some(range) = client.inbuf.take_line()? {
            let line = client.inbuf.line(range);
            in_flight = in_flight
                .checked_sub(1)
                .ok_or_else(|| BenchError::Unsolicited {
                    reply: show_reply(line),
                })?;
            match parse_signal_count(line) {
                Some(n) => deliveries += n,
                None => failures.add(format!("signal: {}", show_reply(line))),
            }
        }
    }
    Ok(PublisherOutcome {
        published: seq,
        deliveries,
        failures,
        started,
        finished: Instant::now(),
    })
}

pub(crate) struct FanoutResult {
    publisher: PublisherOutcome,
    subscribers: Vec<SubscriberOutcome>,
}

/// Subscribers as tasks on `--io-threads` event loops, the publisher on a thread of its own.
pub(crate) fn run_fanout(cfg: &Arc<Config>, fan: &FanoutConfig) -> FanoutResult {
    let shared = Arc::new(FanoutShared {
        ready: Barrier::new(fan.subscribers + 1),
        stop: StopFlag::default(),
        base: Instant::now(),
        received: AtomicU64::new(0),
    });
    let loops: Vec<std::thread::JoinHandle<Vec<SubscriberOutcome>>> = {
        let (shared_cfg, shared) = (Arc::clone(cfg), Arc::clone(&shared));
        spawn_on_loops(cfg.io_threads, fan.subscribers, move |id| {
            let (cfg, shared) = (Arc::clone(&shared_cfg), Arc::clone(&shared));
            async move {
                match fanout_subscriber(id, &cfg, &shared).await {
                    Ok(outcome) => outcome,
                    Err(e) => fail(id, &e),
                }
            }
        })
    };
    let publisher = {
        let (cfg, shared, fan) = (Arc::clone(cfg), Arc::clone(&shared), fan.clone());
        std::thread::spawn(
            move || match future::block_on(fanout_publisher(&cfg, &fan, &shared)) {
                Ok(outcome) => outcome,
                Err(e) => fail(fan.subscribers, &e),
            },
        )
    };
    let publisher = publisher.join().unwrap_or_else(|_| std::process::exit(1));
    // Let the subscribers read what is still on its way to them.
    let drain_start = Instant::now();
    let (mut last_count, mut last_progress) =
        (shared.received.load(Ordering::Relaxed), drain_start);
    while last_count < publisher.deliveries && drain_start.elapsed() < DRAIN_MAX {
        std::thread::sleep(Duration::from_millis(5));
        let count = shared.received.load(Ordering::Relaxed);
        if count != last_count {
            (last_count, last_progress) = (count, Instant::now());
        } else if last_progress.elapsed() >= DRAIN_QUIET {
            break;
        }
    }
    shared.stop.set();
    let mut subscribers = Vec::with_capacity(fan.subscribers);
    for handle in loops {
        match handle.join() {
            Ok(mut part) => subscribers.append(&mut part),
            Err(_) => std::process::exit(1),
        }
    }
    FanoutResult {
        publisher,
        subscribers,
    }
}

pub(crate) fn fanout_header(cfg: &Config, fan: &FanoutConfig) -> String {
    let rate = match fan.rate {
        0 => "unlimited".to_string(),
        r => format!("{r}/s"),
    };
    format!(
        "fanout: 1 publisher x {} subscribers on channel {:?} for {}s (window={}, rate={rate}, io-threads={})",
        fan.subscribers,
        cfg.key,
        fan.duration_s,
        cfg.pipeline,
        cfg.io_threads.min(fan.subscribers)
    )
}

pub(crate) fn fanout_report(fan: &FanoutConfig, result: FanoutResult) -> String {
    let per_s = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let publisher = &result.publisher;
    let publish_s = publisher
        .finished
        .saturating_duration_since(publisher.started)
        .as_secs_f64();
    let received: u64 = result.subscribers.iter().map(|s| s.received).sum();
    let malformed: u64 = result.subscribers.iter().map(|s| s.malformed).sum();
    let last = result
        .subscribers
        .iter()
        .filter_map(|s| s.last_receipt)
        .max()
        .unwrap_or(publisher.started);
    let last_s = last
        .saturating_duration_since(publisher.started)
        .as_secs_f64();
    let mut evicted: Vec<&(Instant, String)> = result
        .subscribers
        .iter()
        .filter_map(|s| s.evicted.as_ref())
        .collect();
    evicted.sort_by_key(|(at, _)| *at);
    let mut out = String::new();
    out.push_str(&format!("  wall time  : {publish_s:.3}s\n"));
    out.push_str(&format!(
        "  published  : {} signals, {:.1} signals/s\n",
        publisher.published,
        per_s(publisher.published, publish_s)
    ));
    out.push_str(&format!(
        "  deliveries : {}, {:.1} deliveries/s (sum of ok <n>)\n",
        publisher.deliveries,
        per_s(publisher.deliveries, publish_s)
    ));
    out.push_str(&format!(
        "  received   : {received}, {:.1} received/s (by subscribers; last at {last_s:.3}s)\n",
        per_s(received, publish_s)
    ));
    out.push_str(&format!(
        "  missing    : {}\n",
        publisher.deliveries.saturating_sub(received)
    ));
    out.push_str(&format!(
        "  evictions  : {} of {} subscribers{}\n",
        evicted.len(),
        fan.subscribers,
        evicted
            .first()
            .map(|(at, why)| format!(
                " (first after {:.3}s: {why})",
                at.saturating_duration_since(publisher.started)
                    .as_secs_f64()
            ))
            .unwrap_or_default()
    ));
    let errors = &publisher.failures;
    out.push_str(&format!(
        "  errors     : {}{}\n",
        errors.count + malformed,
        errors
            .first
            .as_ref()
            .map(|what| format!(" (first: {what})"))
            .unwrap_or_default()
    ));
    out.push_str("\n  latency, publish to receipt:\n");
    let ms: Vec<f64> = result
        .subscribers
        .iter()
        .flat_map(|s| s.latencies_ns.iter().map(|&ns| ns as f64 / 1e6))
        .collect();
    out.push_str(&latency_lines(&summarize(ms)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_lines() {
        let mut out = Vec::new();
        push_listen(&mut out, "ch");
        push_signal(&mut out, "ch", 3, 12345);
        assert_eq!(out, b"listen\nch\n\nsignal\nch\n3 12345\n");
        assert_eq!(parse_signal_count(b"ok 100"), Some(100));
        assert_eq!(parse_signal_count(b"ok 0"), Some(0));
        for bad in [&b"ok"[..], b"ok ", b"ok -1", b"ok 1 2", b"error", b"ok x"] {
            assert_eq!(parse_signal_count(bad), None);
        }
        assert_eq!(parse_pushed_signal(b"sig ch 3 12345", b"ch"), Some(12345));
        for bad in [
            &b"sig ch 3"[..],
            b"sig ch 3 ",
            b"sig ch x 5",
            b"sig chx 3 5",
            b"sig other 3 5",
            b"sig ch 3 5 6",
            b"ok",
        ] {
            assert_eq!(parse_pushed_signal(bad, b"ch"), None, "{bad:?}");
        }
    }
}
