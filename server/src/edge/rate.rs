//! The publish and subscribe rate limits: a token bucket per session.

use std::time::{Duration, Instant};

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

    /// Adds the tokens earned since the last look.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Whether one more may pass at `now`, without taking it; if not, when
    /// it may.
    pub(super) fn ready(&mut self, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate;
            Err(now + Duration::from_secs_f64(wait))
        }
    }

    /// Whether one more may pass at `now`; if so, it is counted.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
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

    #[test]
    fn an_empty_bucket_says_when_the_next_one_may_pass() {
        let start = Instant::now();
        let mut b = Bucket::new(100.0);
        b.last = start;
        while b.take(start) {}
        let at = b.ready(start).expect_err("empty");
        let wait = at - start;
        assert!(
            wait > Duration::from_millis(9) && wait <= Duration::from_millis(10),
            "{wait:?}"
        );
        assert_eq!(b.ready(at), Ok(()), "ready when it said");
        assert!(b.take(at));
    }
}
