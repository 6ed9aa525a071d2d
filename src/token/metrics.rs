//! Metrics of the remote token sources: requests by host and result, and latency by host. They are
//! written once per request to the source (a cache miss, already seconds-to-milliseconds away from
//! the hot path), never on a cache hit, and outlive a reload (the new source is given the same
//! [`SourceMetrics`]), so counters stay monotonic.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Labels: `host` (the configured URL) and, for requests, `result`.
pub type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 8 s: a local introspection endpoint answers in a few ms, a timeout is seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 14,
    ))
}

/// Cheap to clone: the families are shared.
#[derive(Clone, Debug)]
pub struct SourceMetrics {
    pub requests: Family<Labels, Counter>,
    pub latency: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for SourceMetrics {
    fn default() -> SourceMetrics {
        SourceMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl SourceMetrics {
    /// Records one HTTP exchange with `host` that ended as `result` after `seconds`.
    pub fn observe(&self, host: &str, result: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&vec![("host", host.to_string()), ("result", result.into())])
            .inc();
        self.latency
            .get_or_create(&vec![("host", host.to_string())])
            .observe(seconds);
    }
}
