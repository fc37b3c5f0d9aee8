//! Statistics and the report: percentiles (upstream's linear interpolation), the sample
//! standard deviation, the header and report lines in upstream's layout, and `say`, which
//! writes to stdout and flushes at once.

use std::io::{self, Write as _};

use crate::args::{Config, Driver, Mode};

/// Latency summary in milliseconds.
#[derive(Debug, PartialEq)]
pub(crate) struct Summary {
    count: usize,
    mean: f64,
    min: f64,
    max: f64,
    p50: f64,
    p99: f64,
    stdev: f64,
}

/// Linear interpolation at rank `p/100 × (n−1)` over sorted samples (upstream's definition).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return 0.0;
    };
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    match sorted.get(lo + 1) {
        Some(&hi) => {
            let frac = rank - lo as f64;
            sorted[lo] * (1.0 - frac) + hi * frac
        }
        None => last,
    }
}

/// Sample standard deviation (n − 1 in the denominator); 0 for fewer than two samples.
fn sample_stdev(samples: &[f64], mean: f64) -> f64 {
    if samples.len() < 2 {
        return 0.0;
    }
    let sum_sq: f64 = samples.iter().map(|x| (x - mean) * (x - mean)).sum();
    (sum_sq / (samples.len() - 1) as f64).sqrt()
}

/// Summarises latencies (milliseconds, any order).
pub(crate) fn summarize(mut ms: Vec<f64>) -> Summary {
    ms.sort_by(f64::total_cmp);
    let count = ms.len();
    let mean = if count == 0 {
        0.0
    } else {
        ms.iter().sum::<f64>() / count as f64
    };
    Summary {
        count,
        mean,
        min: ms.first().copied().unwrap_or(0.0),
        max: ms.last().copied().unwrap_or(0.0),
        p50: percentile(&ms, 50.0),
        p99: percentile(&ms, 99.0),
        stdev: sample_stdev(&ms, mean),
    }
}

pub(crate) fn header(cfg: &Config) -> String {
    let (key, mut mode) = match (cfg.shared_key, cfg.pipeline) {
        (true, _) => (cfg.key.clone(), "shared key (contended)".to_string()),
        (false, 1) => (
            format!("{}_<id>", cfg.key),
            "unique per-worker keys".to_string(),
        ),
        (false, p) => (
            format!("{}_<id>_<j>", cfg.key),
            format!("unique per-worker keys, pipeline={p}"),
        ),
    };
    match &cfg.mode {
        Mode::Bench {
            driver: Driver::Http { addr },
        } => mode.push_str(&format!(", http {addr}")),
        Mode::Bench {
            driver: Driver::Etcd { addr },
        } => mode.push_str(&format!(", etcd lock API {addr}")),
        Mode::Bench {
            driver: Driver::Client(api),
        } => mode.push_str(&format!(", client library ({api:?} API)")),
        Mode::Bench {
            driver: Driver::RedisPing,
        } => mode = "redis-server, two inline PINGs per op".to_string(),
        Mode::Bench {
            driver: Driver::RedisHandoff { .. },
        } => mode = "redis-server, BLPOP + RPUSH of a token per op".to_string(),
        _ => {}
    }
    if !cfg.client_spin.is_zero() {
        mode.push_str(&format!(
            ", client polls {} µs before it sleeps",
            cfg.client_spin.as_micros()
        ));
    }
    format!(
        "bench: {} workers x {} rounds (key={key:?}, conns/worker={}, {mode})",
        cfg.workers, cfg.rounds, cfg.conns_per_worker
    )
}

pub(crate) fn report(cfg: &Config, summary: &Summary, wall_s: f64) -> String {
    let ops_per_s = if wall_s > 0.0 {
        summary.count as f64 / wall_s
    } else {
        0.0
    };
    let mut out = String::new();
    out.push_str(&format!("  total ops : {}\n", summary.count));
    out.push_str(&format!("  wall time : {wall_s:.3}s\n"));
    out.push_str(&format!("  throughput: {ops_per_s:.1} ops/s\n"));
    if cfg.pipeline > 1 {
        out.push_str(&format!("  requests/s: {:.1} req/s\n", 2.0 * ops_per_s));
    }
    out.push('\n');
    out.push_str(&latency_lines(summary));
    out
}

/// The latency block of a report.
pub(crate) fn latency_lines(summary: &Summary) -> String {
    let mut out = String::new();
    for (name, value) in [
        ("mean", summary.mean),
        ("min", summary.min),
        ("max", summary.max),
        ("p50", summary.p50),
        ("p99", summary.p99),
        ("stdev", summary.stdev),
    ] {
        out.push_str(&format!("  {name:<10}: {value:.3} ms\n"));
    }
    out
}

/// Writes to stdout and flushes at once (the memory helpers are watched by a script). A closed
/// pipe (`| head`) is not worth a panic.
pub(crate) fn say(text: &str) {
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::tests::parse;

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentile_interpolates_linearly_between_ranks() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        // rank 0.5 × 3 = 1.5 → halfway between 2 and 3.
        assert!(approx(percentile(&xs, 50.0), 2.5));
        // rank 0.99 × 3 = 2.97 → 3 + 0.97 × (4 − 3).
        assert!(approx(percentile(&xs, 99.0), 3.97));
        assert!(approx(percentile(&xs, 0.0), 1.0));
        assert!(approx(percentile(&xs, 100.0), 4.0));
        assert!(approx(percentile(&[7.0], 99.0), 7.0));
        assert!(approx(percentile(&[], 50.0), 0.0));
        let hundred: Vec<f64> = (1..=101).map(f64::from).collect();
        assert!(approx(percentile(&hundred, 99.0), 100.0));
    }

    #[test]
    fn stdev_is_the_sample_form() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        // Sum of squared deviations from 5 is 32; 32 / 7 is the sample variance.
        assert!(approx(sample_stdev(&xs, 5.0), (32.0f64 / 7.0).sqrt()));
        assert!(approx(sample_stdev(&[3.0], 3.0), 0.0));
        assert!(approx(sample_stdev(&[], 0.0), 0.0));
    }

    #[test]
    fn summary_sorts_and_reports_extremes() {
        let s = summarize(vec![3.0, 1.0, 2.0]);
        assert_eq!(s.count, 3);
        assert!(approx(s.mean, 2.0));
        assert!(approx(s.min, 1.0));
        assert!(approx(s.max, 3.0));
        assert!(approx(s.p50, 2.0));
        assert!(approx(s.p99, 2.98));
        assert!(approx(s.stdev, 1.0));
    }

    #[test]
    fn report_layout() {
        let cfg = parse(&["--pipeline", "2"]).unwrap();
        let text = report(&cfg, &summarize(vec![1.0, 2.0]), 0.5);
        assert_eq!(
            text,
            "  total ops : 2\n  wall time : 0.500s\n  throughput: 4.0 ops/s\n  requests/s: 8.0 req/s\n\n  \
             mean      : 1.500 ms\n  min       : 1.000 ms\n  max       : 2.000 ms\n  p50       : 1.500 ms\n  \
             p99       : 1.990 ms\n  stdev     : 0.707 ms\n"
        );
    }
}
