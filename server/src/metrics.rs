//! Process-wide counters for ingest, storage and live push, readable as a
//! snapshot for the JSON API, the WebSocket and the dashboard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use app::model::Counters;

/// How many distinct devices get their own rejection counter. Beyond this
/// (for example a client inventing a new device id per message) rejections
/// are still counted in the total, but not per device, so a hostile client
/// cannot grow this map without bound.
const MAX_TRACKED_DEVICES: usize = 10_000;

/// The server's counters. Atomics keep the hot path lock-free; only the
/// per-device rejection map takes a lock, and only on a rejection.
#[derive(Debug, Default)]
pub struct Metrics {
    pub messages: AtomicU64,
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    /// WebSocket viewers currently connected.
    pub viewers: AtomicU64,
    /// Batches skipped by viewers that fell behind.
    pub viewer_lagged: AtomicU64,
    /// A `std` mutex, not a tokio one: it is held for a hash-map update and
    /// never across an `.await`.
    rejected_by_device: Mutex<HashMap<String, u64>>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` rejections, attributed to `device` when it is known.
    pub fn reject(&self, device: Option<&str>, n: u64) {
        Self::add(&self.rejected, n);
        let Some(device) = device else { return };
        let Ok(mut map) = self.rejected_by_device.lock() else {
            return;
        };
        if let Some(count) = map.get_mut(device) {
            *count += n;
        } else if map.len() < MAX_TRACKED_DEVICES {
            map.insert(device.to_owned(), n);
        }
    }

    /// Rejections attributed to `device` since start.
    pub fn rejected_for(&self, device: &str) -> u64 {
        self.rejected_by_device
            .lock()
            .map(|m| m.get(device).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Per-device rejection counts for the given devices (or all of them),
    /// skipping devices with none.
    pub fn rejected_among(&self, devices: Option<&[String]>) -> Vec<(String, u64)> {
        let Ok(map) = self.rejected_by_device.lock() else {
            return Vec::new();
        };
        let mut out: Vec<(String, u64)> = match devices {
            Some(list) => list
                .iter()
                .filter_map(|d| map.get(d).map(|n| (d.clone(), *n)))
                .collect(),
            None => map.iter().map(|(d, n)| (d.clone(), *n)).collect(),
        };
        out.sort();
        out
    }

    pub fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            messages: get(&self.messages),
            received: get(&self.received),
            stored: get(&self.stored),
            rejected: get(&self.rejected),
            dropped: get(&self.dropped),
        }
    }
}

/// Lets through at most `burst` log lines per `window` and counts the rest,
/// so a misbehaving device cannot flood the log while each kind of problem
/// still shows up.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(LimiterState {
                window_start: Instant::now(),
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// Returns `Some(suppressed)` when a line may be logged now, with the
    /// number of lines swallowed since the last one; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().ok()?;
        let now = Instant::now();
        if now.duration_since(s.window_start) >= self.window {
            s.window_start = now;
            s.used = 0;
        }
        if s.used < self.burst {
            s.used += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_what_it_swallows() {
        let limiter = LogLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        let limiter = LogLimiter::new(1, Duration::ZERO);
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), Some(0), "a new window starts at once");
    }

    #[test]
    fn per_device_rejections_are_bounded() {
        let m = Metrics::default();
        for i in 0..MAX_TRACKED_DEVICES + 5 {
            m.reject(Some(&format!("d{i}")), 1);
        }
        m.reject(None, 1);
        m.reject(Some("d0"), 2);
        assert_eq!(m.snapshot().rejected, MAX_TRACKED_DEVICES as u64 + 8);
        assert_eq!(m.rejected_for("d0"), 3);
        assert_eq!(m.rejected_for(&format!("d{}", MAX_TRACKED_DEVICES + 1)), 0);
    }
}
