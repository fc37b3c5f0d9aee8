//! The read-only views of the HTTP front (http.md §8): `GET /v1/stats`
//! (the upstream listing, or with `top`, `sort`, `prefix` or `kind` a
//! bounded top list), `GET /v1/keys/{key}` and `GET /v1/activity`. The
//! dashboard (`/ui`, [`super::ui`]) and `dflockd top` are built on them.
//!
//! Every read goes through the engine (`engine::introspect`): an
//! O(log n) read under one short lock hold, or a core [`Job`] run in bounded slices with the
//! lock released between them. Nothing here walks the state itself.
//!
//! `/v1/activity` adds what the core does not keep: a per-second history
//! of its counters (the last [`HISTORY_SECONDS`] seconds), sampled by a
//! task of the front (`sample`) with one O(1) read a second, and the
//! busiest signal subscriptions, walked at most once per
//! [`CHANNELS_MAX_AGE`] however many viewers ask (the others get the
//! last walk), with delivery rates from the walk before.
//!
//! [`Job`]: crate::core::introspect::Job

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::{bad_request, error, lock, percent_decode, raw_resp, Front, Resp};
use crate::core::introspect::{
    ChannelView, ChannelsJob, HoldersJob, KeyView, Sort, TopJob, TopQuery, MAX_LISTED,
};
use crate::core::metrics::{Cause, Histogram, BUCKET_BOUNDS_MS};
use crate::core::CoreMetrics;
use crate::engine::introspect::Counters;
use crate::rt;
use crate::sync::Arc;
use crate::wire::{Key, Space};

/// Seconds of counter history `/v1/activity` returns.
pub const HISTORY_SECONDS: usize = 300;
/// The busiest subscriptions are walked again at most this often.
pub const CHANNELS_MAX_AGE: Duration = Duration::from_secs(5);
/// Subscriptions `/v1/activity` lists.
const CHANNELS_LISTED: usize = 20;
/// Keys in a top list when `top` is not given.
const DEFAULT_TOP: usize = 10;
/// Waiters and holders a key view lists when not told.
const DEFAULT_LISTED: usize = 100;

fn json_ok(body: &impl Serialize) -> Resp {
    match serde_json::to_string(body) {
        Ok(mut text) => {
            text.push('\n');
            raw_resp(StatusCode::OK, "application/json", text.into())
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", ""),
    }
}

/// `application/x-www-form-urlencoded` decoding of one query component.
fn form_decode(s: &str) -> Option<Vec<u8>> {
    percent_decode(&s.replace('+', " "))
}

/// The query's parameters, decoded, in order; a malformed escape is a 400.
fn params(query: Option<&str>) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || "invalid percent-encoding in query".to_string();
        let name = String::from_utf8_lossy(&form_decode(name).ok_or_else(bad)?).into_owned();
        out.push((name, form_decode(value).ok_or_else(bad)?));
    }
    Ok(out)
}

fn count(name: &str, value: &[u8], max: usize) -> Result<usize, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("{name} must be an integer from 1 to {max}"))
}

fn kind(value: &[u8]) -> Result<Space, String> {
    match value {
        b"lock" => Ok(Space::Lock),
        b"semaphore" => Ok(Space::Sem),
        _ => Err("kind must be lock or semaphore".into()),
    }
}

/// The top list a `/v1/stats` query asks for; `None` for the plain
/// listing (no `top`, `sort`, `prefix` or `kind`: other parameters are
/// ignored then, as they always were).
pub(super) fn top_query(query: Option<&str>) -> Result<Option<TopQuery>, String> {
    let params = params(query)?;
    const KNOWN: [&str; 4] = ["top", "sort", "prefix", "kind"];
    if !params.iter().any(|(n, _)| KNOWN.contains(&n.as_str())) {
        return Ok(None);
    }
    let mut q = TopQuery {
        sort: Sort::Waiters,
        top: DEFAULT_TOP,
        prefix: None,
        space: None,
    };
    let mut seen = Vec::new();
    for (name, value) in &params {
        if seen.contains(name) {
            return Err(format!("query parameter `{name}` given twice"));
        }
        seen.push(name.clone());
        match name.as_str() {
            "top" => q.top = count("top", value, MAX_LISTED)?,
            "sort" => {
                q.sort = std::str::from_utf8(value)
                    .ok()
                    .and_then(Sort::parse)
                    .ok_or("sort must be waiters, held_for, fill or key")?
            }
            "prefix" => {
                if value.len() > crate::wire::MAX_LINE_BYTES {
                    return Err("prefix longer than 256 bytes".into());
                }
                q.prefix = (!value.is_empty()).then(|| value.clone());
            }
            "kind" => q.space = Some(kind(value)?),
            other => return Err(format!("unknown query parameter `{other}`")),
        }
    }
    Ok(Some(q))
}

#[derive(Serialize)]
struct TopJson<'a> {
    connections: usize,
    sort: &'static str,
    top: usize,
    prefix: Option<String>,
    kind: Option<&'static str>,
    /// Items the scan visited (0: answered from the index).
    scanned: u64,
    keys: &'a [crate::core::introspect::KeyEntry],
    /// Cluster mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<&'a Replica>,
}

/// `GET /v1/stats[?top=N&sort=…&prefix=…&kind=…]`.
pub(super) async fn stats(front: &Front, query: Option<&str>) -> Resp {
    let q = match top_query(query) {
        Ok(q) => q,
        Err(detail) => return bad_request(&detail),
    };
    let engine = &front.engine;
    let Some(q) = q else {
        let json = engine.stats_listing().await;
        return raw_resp(
            StatusCode::OK,
            "application/json",
            format!("{json}\n").into(),
        );
    };
    let (sort, top) = (q.sort, q.top);
    let prefix = q
        .prefix
        .as_deref()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let kind = q.space.map(|s| match s {
        Space::Lock => "lock",
        Space::Sem => "semaphore",
    });
    let mut job = TopJob::new(q);
    engine.run_state_job(&mut job).await;
    let (connections, scanned) = (job.connections(), job.scanned());
    let keys = job.into_result();
    let replica = replica(front);
    labelled(
        json_ok(&TopJson {
            connections,
            sort: sort.name(),
            top,
            prefix,
            kind,
            scanned,
            keys: &keys,
            replica: replica.as_ref(),
        }),
        replica.as_ref(),
    )
}

/// In cluster mode, what a state view was read from (spec/http.md §9):
/// this member's role and the log index its replica had applied. Every
/// member answers from its own applied replica; a follower's may lag the
/// leader's by what it has not applied yet.
#[derive(Serialize)]
struct Replica {
    role: &'static str,
    applied_index: u64,
}

fn replica(front: &Front) -> Option<Replica> {
    front.engine.replicator().map(|r| {
        let (role, applied_index) = r.replica_label();
        Replica {
            role,
            applied_index,
        }
    })
}

/// Adds the `X-Dflockd-Role` and `X-Dflockd-Applied-Index` headers of a
/// cluster member's state view.
fn labelled(mut resp: Resp, replica: Option<&Replica>) -> Resp {
    if let Some(r) = replica {
        let h = resp.headers_mut();
        h.insert(
            "x-dflockd-role",
            hyper::header::HeaderValue::from_static(r.role),
        );
        h.insert("x-dflockd-applied-index", r.applied_index.into());
    }
    resp
}

/// `GET /v1/keys/{key}[?kind=…&waiters=N&holders=N]`.
pub(super) async fn key(front: &Front, key: Key, query: Option<&str>) -> Resp {
    let mut spaces = vec![Space::Lock, Space::Sem];
    let (mut waiters, mut holders) = (DEFAULT_LISTED, DEFAULT_LISTED);
    let params = match params(query) {
        Ok(p) => p,
        Err(detail) => return bad_request(&detail),
    };
    for (name, value) in &params {
        let parsed = match name.as_str() {
            "kind" => kind(value).map(|s| spaces = vec![s]),
            "waiters" => count("waiters", value, MAX_LISTED).map(|n| waiters = n),
            "holders" => count("holders", value, MAX_LISTED).map(|n| holders = n),
            other => Err(format!("unknown query parameter `{other}`")),
        };
        if let Err(detail) = parsed {
            return bad_request(&detail);
        }
    }
    let engine = &front.engine;
    let mut views: Vec<KeyView> = engine.key_views(&spaces, &key, waiters);
    let replica = replica(front);
    if views.is_empty() {
        return labelled(
            error(
                StatusCode::NOT_FOUND,
                "no_such_key",
                "no lock or semaphore of that name: never used, or collected after --gc-max-idle",
            ),
            replica.as_ref(),
        );
    }
    for v in &mut views {
        if v.kind == "semaphore" && v.holders > 0 {
            let mut job = HoldersJob::new(Space::Sem, key.clone(), holders);
            engine.run_state_job(&mut job).await;
            v.holder_list = job.into_result();
        }
        v.holder_list.truncate(holders);
    }
    let mut body = json!({
        "key": String::from_utf8_lossy(key.as_bytes()),
        "resources": views,
    });
    if let Some(r) = &replica {
        body["replica"] = json!(r);
    }
    labelled(json_ok(&body), replica.as_ref())
}

// ----- activity --------------------------------------------------------------

/// The counters behind the history, read once a second.
#[derive(Clone, Copy, Default)]
struct Sample {
    grants: u64,
    timeouts: u64,
    expiries: u64,
    releases: u64,
    disconnects: u64,
    signals: u64,
    deliveries: u64,
    tcp: usize,
    sessions: usize,
}

impl Sample {
    fn of(m: &CoreMetrics, tcp: usize, sessions: usize) -> Sample {
        let both = |f: &dyn Fn(Space) -> u64| f(Space::Lock) + f(Space::Sem);
        use crate::core::metrics::How;
        Sample {
            grants: both(&|s| m.grants(s, How::Immediate) + m.grants(s, How::Queued)),
            timeouts: both(&|s| m.acquire_timeouts(s)),
            expiries: both(&|s| m.lease_expiries(s)),
            releases: both(&|s| m.releases(s)),
            disconnects: m.evictions(Cause::Disconnect),
            signals: m.signals_published(),
            deliveries: m.signal_deliveries(),
            tcp,
            sessions,
        }
    }
}

struct ChannelsWalk {
    at: Instant,
    views: Vec<ChannelView>,
    total: usize,
    /// Pushes per second since the walk before, per listed subscription.
    rates: Vec<Option<f64>>,
}

/// What `/v1/activity` keeps between requests.
#[derive(Default)]
pub(super) struct Activity {
    /// One sample a second, the newest last (at most HISTORY_SECONDS + 1).
    history: std::sync::Mutex<VecDeque<Sample>>,
    /// The last walk of the subscriptions; the async lock makes viewers
    /// that arrive during a walk wait for it rather than start their own.
    channels: smol::lock::Mutex<Option<ChannelsWalk>>,
}

/// Samples the core's counters once a second for `/v1/activity` (one
/// O(1) read under the core lock each time).
pub async fn sample(front: Arc<Front>) {
    loop {
        let m = front.engine.counters().metrics;
        let s = Sample::of(
            &m,
            front
                .engine
                .fronts
                .tcp_open
                .load(std::sync::atomic::Ordering::SeqCst),
            front.sessions.len(),
        );
        {
            let mut h = lock(&front.activity.history);
            h.push_back(s);
            while h.len() > HISTORY_SECONDS + 1 {
                h.pop_front();
            }
        }
        rt::sleep(Duration::from_secs(1)).await;
    }
}

/// The busiest subscriptions: the last walk if it is recent, else a new
/// one (with rates against the previous).
async fn channels(front: &Front) -> (Vec<serde_json::Value>, usize, f64) {
    let mut cache = front.activity.channels.lock().await;
    let stale = cache
        .as_ref()
        .is_none_or(|c| c.at.elapsed() >= CHANNELS_MAX_AGE);
    if stale {
        let mut job = ChannelsJob::new(CHANNELS_LISTED);
        front.engine.run_job(&mut job).await;
        let (views, total) = job.into_result();
        let at = Instant::now();
        let before: HashMap<(&str, &str), (u64, Instant)> = cache
            .as_ref()
            .map(|c| {
                c.views
                    .iter()
                    .map(|v| ((v.pattern.as_str(), v.group.as_str()), (v.pushes, c.at)))
                    .collect()
            })
            .unwrap_or_default();
        let rates = views
            .iter()
            .map(|v| {
                let (pushes, then) = before.get(&(v.pattern.as_str(), v.group.as_str()))?;
                let dt = at.duration_since(*then).as_secs_f64();
                (dt > 0.0 && v.pushes >= *pushes).then(|| (v.pushes - pushes) as f64 / dt)
            })
            .collect();
        *cache = Some(ChannelsWalk {
            at,
            views,
            total,
            rates,
        });
    }
    let c = cache.as_ref().expect("filled above");
    let listed = c
        .views
        .iter()
        .zip(&c.rates)
        .map(|(v, rate)| {
            json!({
                "pattern": v.pattern,
                "group": v.group,
                "listeners": v.listeners,
                "pushes": v.pushes,
                "pushes_per_s": rate,
            })
        })
        .collect();
    (listed, c.total, c.at.elapsed().as_secs_f64())
}

/// Per-bucket counts of a histogram (not cumulative), `+Inf` last.
fn buckets(h: &Histogram) -> Vec<u64> {
    let mut prev = 0;
    h.cumulative()
        .map(|(_, n)| {
            let d = n - prev;
            prev = n;
            d
        })
        .collect()
}

/// `GET /v1/activity`.
pub(super) async fn activity(front: &Front) -> Resp {
    let engine = &front.engine;
    let Counters {
        metrics: m,
        fence_headroom: headroom,
        connections,
    } = engine.counters();
    let history: Vec<Sample> = lock(&front.activity.history).iter().copied().collect();
    let per_second = |f: &dyn Fn(&Sample) -> u64| -> Vec<u64> {
        history
            .windows(2)
            .map(|w| f(&w[1]).saturating_sub(f(&w[0])))
            .collect()
    };
    let gauge =
        |f: &dyn Fn(&Sample) -> usize| -> Vec<usize> { history.iter().skip(1).map(f).collect() };
    let (signals, subscriptions, walked_s_ago) = channels(front).await;
    let evictions: serde_json::Map<String, serde_json::Value> = Cause::ALL
        .iter()
        .map(|c| (c.label().to_string(), json!(m.evictions(*c))))
        .collect();
    let hist = |lock: &Histogram, sem: &Histogram| {
        json!({
            "lock": buckets(lock),
            "semaphore": buckets(sem),
            "sum_s": (lock.sum_ms() + sem.sum_ms()) as f64 / 1000.0,
        })
    };
    let now = Sample::of(
        &m,
        front
            .engine
            .fronts
            .tcp_open
            .load(std::sync::atomic::Ordering::SeqCst),
        front.sessions.len(),
    );
    let http_open = lock(&front.conns).total();
    let replica = replica(front);
    let resp = json_ok(&json!({
        "uptime_s": front.started.elapsed().as_secs_f64(),
        "connections": {
            "total": connections,
            "tcp": now.tcp,
            "http_sessions": now.sessions,
            "http_connections": http_open,
        },
        "totals": {
            "grants": now.grants,
            "acquire_timeouts": now.timeouts,
            "lease_expiries": now.expiries,
            "releases": now.releases,
            "evictions": evictions,
            "signals_published": now.signals,
            "signal_deliveries": now.deliveries,
        },
        "histograms": {
            "bounds_s": BUCKET_BOUNDS_MS.iter().map(|&b| b as f64 / 1000.0).collect::<Vec<_>>(),
            "acquire_wait": hist(m.acquire_wait(Space::Lock), m.acquire_wait(Space::Sem)),
            "hold": hist(m.hold(Space::Lock), m.hold(Space::Sem)),
        },
        "history": {
            "interval_s": 1,
            "grants": per_second(&|s| s.grants),
            "acquire_timeouts": per_second(&|s| s.timeouts),
            "lease_expiries": per_second(&|s| s.expiries),
            "releases": per_second(&|s| s.releases),
            "disconnect_releases": per_second(&|s| s.disconnects),
            "signals_published": per_second(&|s| s.signals),
            "signal_deliveries": per_second(&|s| s.deliveries),
            "tcp": gauge(&|s| s.tcp),
            "http_sessions": gauge(&|s| s.sessions),
        },
        "signals": {
            "subscriptions": subscriptions,
            "top": signals,
            "walked_s_ago": walked_s_ago,
        },
        "fence_headroom": headroom,
        "draining": engine.is_draining(),
        // Cluster mode: this member's view (spec/http.md §8.3); a single
        // node has none.
        "cluster": engine
            .replicator()
            .map_or(serde_json::Value::Null, |r| r.view()),
    }));
    labelled(resp, replica.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<Option<TopQuery>, String> {
        top_query(Some(s))
    }

    #[test]
    fn top_queries_parse() {
        assert_eq!(q("").unwrap(), None);
        assert_eq!(
            q("_=123").unwrap(),
            None,
            "unknown alone: the plain listing"
        );
        let t = q("top=5&sort=held_for&prefix=ord%2Fers&kind=semaphore")
            .unwrap()
            .unwrap();
        assert_eq!(
            t,
            TopQuery {
                sort: Sort::HeldFor,
                top: 5,
                prefix: Some(b"ord/ers".to_vec()),
                space: Some(Space::Sem),
            }
        );
        let t = q("prefix=").unwrap().unwrap();
        assert_eq!((t.sort, t.top, t.prefix), (Sort::Waiters, 10, None));
        for (bad, why) in [
            ("top=0", "top must be an integer from 1 to 1000"),
            ("top=1001", "top must be"),
            ("top=x", "top must be"),
            ("sort=size", "sort must be"),
            ("kind=queue", "kind must be"),
            ("top=1&top=2", "given twice"),
            ("top=1&x=2", "unknown query parameter `x`"),
            ("prefix=%zz", "percent-encoding"),
        ] {
            let e = q(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("prefix={}", "a".repeat(257));
        assert!(q(&long).unwrap_err().contains("256"));
    }

    #[test]
    fn histogram_buckets_are_per_bucket() {
        let mut h = Histogram::default();
        for ms in [0, 0, 3, 400_000] {
            h.observe(ms);
        }
        let b = buckets(&h);
        assert_eq!(b.len(), BUCKET_BOUNDS_MS.len() + 1);
        assert_eq!((b[0], b[1], b[16]), (2, 1, 1));
        assert_eq!(b.iter().sum::<u64>(), 4);
    }
}
