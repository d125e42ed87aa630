//! The publish and subscribe rate limits: a token bucket per MQTT session,
//! and one per device for readings sent over HTTP.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket of publishes: `rate` per second, with one second's worth
/// (at least 10) of burst, so a device that wakes and flushes a backlog is
/// not punished.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: f64) -> Self {
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

/// The publish rate of devices that send readings over HTTP: one bucket per
/// device, at the same `--max-publish-rate` as an MQTT session, since each
/// request is one message. Requests come and go, so the buckets are kept
/// by device name, at most `max` of them: when that many are held, the
/// idle ones (full again) are let go first, and if none is idle the map
/// starts over, which at worst grants one extra burst.
#[derive(Debug)]
pub struct DeviceRates {
    rate: f64,
    max: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl DeviceRates {
    pub fn new(rate: f64, max: usize) -> Self {
        Self {
            rate,
            max: max.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one message of `device` at `now` if its rate allows, or says
    /// how long until it would.
    pub fn take(&self, device: &str, now: Instant) -> Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if !buckets.contains_key(device) && buckets.len() >= self.max {
            buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < b.burst
            });
            if buckets.len() >= self.max {
                buckets.clear();
            }
        }
        let bucket = match buckets.get_mut(device) {
            Some(bucket) => bucket,
            None => buckets
                .entry(device.to_owned())
                .or_insert_with(|| Bucket::new(self.rate)),
        };
        match bucket.ready(now) {
            Ok(()) => {
                bucket.take(now);
                Ok(())
            }
            Err(at) => Err(at.saturating_duration_since(now)),
        }
    }

    /// How many devices have a bucket now.
    pub fn len(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    fn each_device_has_its_own_rate_and_the_buckets_are_bounded() {
        let start = Instant::now();
        let rates = DeviceRates::new(10.0, 3);
        for _ in 0..10 {
            assert_eq!(rates.take("a", start), Ok(()));
        }
        let wait = rates.take("a", start).expect_err("a is over its rate");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(rates.take("b", start), Ok(()), "b is not held back by a");
        assert_eq!(rates.take("c", start), Ok(()));
        // A fourth device: a, b and c are all busy, so the map starts over
        // rather than growing.
        assert_eq!(rates.take("d", start), Ok(()));
        assert!(rates.len() <= 3, "{} buckets", rates.len());
        // Once the others are idle (full again), they make room first.
        let later = start + Duration::from_secs(2);
        for name in ["e", "f", "g", "h"] {
            assert_eq!(rates.take(name, later), Ok(()));
            assert!(rates.len() <= 3);
        }
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
