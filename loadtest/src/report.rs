//! Results: the latency histogram, the summary every subcommand prints, and its JSON form.
//!
//! Latencies are recorded in nanoseconds (hdrhistogram, 3 significant digits) and reported in
//! microseconds. Printing is all this module does; counting happens where requests are sent.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram from 1 ns to 10 minutes; longer values are clamped, not lost.
pub fn histogram() -> Histogram<u64> {
    // Bounds and precision are constants that hdrhistogram accepts, so this cannot fail.
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

/// Latency percentiles in microseconds (0 when nothing was recorded).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        if h.is_empty() {
            return Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        Latency {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// The figures every subcommand reports for its measured period (warm-up excluded).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Requests sent during the measured period.
    pub sent: u64,
    /// Responses to those requests.
    pub received: u64,
    /// `received / duration_s`.
    pub throughput_per_s: f64,
    /// Status code → count, over `received`.
    pub status: BTreeMap<String, u64>,
    /// Requests that got no response within the timeout.
    pub timeouts: u64,
    /// Transport-level failures (refused sends, broken connections, unparseable responses).
    pub errors: u64,
    pub latency_us: Latency,
    pub duration_s: f64,
}

impl Summary {
    pub fn new(
        sent: u64,
        received: u64,
        status: BTreeMap<String, u64>,
        timeouts: u64,
        errors: u64,
        hist: &Histogram<u64>,
        duration: Duration,
    ) -> Summary {
        let duration_s = duration.as_secs_f64();
        Summary {
            sent,
            received,
            throughput_per_s: if duration_s > 0.0 {
                (received as f64 / duration_s * 10.0).round() / 10.0
            } else {
                0.0
            },
            status,
            timeouts,
            errors,
            latency_us: Latency::from_histogram(hist),
            duration_s,
        }
    }

    /// The human form: a title line, then one figure per line; `extra` lines come last.
    pub fn human(&self, title: &str, extra: &[(&str, String)]) -> String {
        let mut s = format!("{title}\n");
        let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("  {k:<12}{v}\n"));
        line(&mut s, "sent", self.sent.to_string());
        line(
            &mut s,
            "received",
            format!("{}  ({:.1}/s)", self.received, self.throughput_per_s),
        );
        let status = if self.status.is_empty() {
            "-".to_owned()
        } else {
            self.status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        line(&mut s, "status", status);
        line(&mut s, "timeouts", self.timeouts.to_string());
        line(&mut s, "errors", self.errors.to_string());
        let l = &self.latency_us;
        line(
            &mut s,
            "latency µs",
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
        );
        for (k, v) in extra {
            line(&mut s, k, v.clone());
        }
        s
    }
}

/// Status counts from an array indexed by code.
pub fn status_map(counts: &[u64]) -> BTreeMap<String, u64> {
    counts
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(code, &n)| (code.to_string(), n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_json_keys_and_percentiles() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let mut counts = vec![0u64; 700];
        counts[200] = 990;
        counts[401] = 10;
        let s = Summary::new(
            1005,
            1000,
            status_map(&counts),
            5,
            0,
            &h,
            Duration::from_secs(2),
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["throughput_per_s"], 500.0);
        assert_eq!(v["status"]["200"], 990);
        assert_eq!(v["status"]["401"], 10);
        let p50 = v["latency_us"]["p50"].as_f64().unwrap();
        assert!((499.0..=501.0).contains(&p50), "{p50}");
        let max = v["latency_us"]["max"].as_f64().unwrap();
        assert!((999.0..=1001.0).contains(&max), "{max}");
        for k in ["sent", "received", "timeouts", "errors", "duration_s"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        let human = s.human("t", &[("stray", "0".into())]);
        assert!(human.contains("200: 990  401: 10") && human.contains("stray"));
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let l = Latency::from_histogram(&histogram());
        assert_eq!(l.max, 0.0);
    }
}
