//! Logging helpers: a rate limit for warnings that a failing peer or resource would otherwise
//! repeat for every request, and the debug line for a rejected request.
//!
//! Nothing here formats a token or a secret: callers pass only labels, addresses and the Call-ID.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one event through per interval and counts the rest, so the next line that gets through can
/// say how many were left out. Shared by threads (atomics), used off the hot path.
#[derive(Debug)]
pub struct RateLimit {
    epoch: Instant,
    interval_ms: u64,
    /// Milliseconds since `epoch` of the last event let through, plus one (0: none yet).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub fn new(interval: Duration) -> RateLimit {
        RateLimit {
            epoch: Instant::now(),
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event may be logged, `n` being how many were suppressed since the last
    /// one logged; `None` when it must not.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(self.epoch.elapsed().as_millis() as u64 + 1)
    }

    fn allow_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(self.interval_ms) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // One winner per interval when several threads race.
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_and_the_rest_counted() {
        let r = RateLimit::new(Duration::from_millis(100));
        assert_eq!(r.allow_at(1), Some(0));
        assert_eq!(r.allow_at(50), None);
        assert_eq!(r.allow_at(100), None);
        assert_eq!(r.allow_at(101), Some(2));
        assert_eq!(r.allow_at(150), None);
        assert_eq!(r.allow_at(500), Some(1));
    }
}
