//! The publish rate limit: a token bucket per session.

use std::time::Instant;

/// A token bucket of publishes: `rate` per second, with one second's worth
/// (at least 10) of burst, so a device that wakes and flushes a backlog is
/// not punished.
#[derive(Debug)]
pub(super) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(super) fn new(rate: f64) -> Self {
        let burst = rate.max(10.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Whether one more publish may pass at `now`.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_rate_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = Bucket::new(100.0);
        b.last = start;
        let burst = (0..200).filter(|_| b.take(start)).count();
        assert_eq!(burst, 100, "one second's worth at once");
        assert!(!b.take(start));
        assert!(
            b.take(start + Duration::from_millis(20)),
            "refilled at the rate"
        );
    }
}
