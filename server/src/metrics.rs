//! Process-wide counters and histograms for ingest, storage and live push,
//! readable as a snapshot for the JSON API, the WebSocket and the
//! dashboard, and as Prometheus text for `/metrics`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use app::model::Counters;

/// How many distinct devices get their own counter in a [`DeviceCounts`].
/// Beyond this (for example a client inventing a new device id per
/// message) events are still counted in the total, but not per device, so
/// a hostile client cannot grow the map without bound.
const MAX_TRACKED_DEVICES: usize = 10_000;

/// Counts of some event per device, bounded to [`MAX_TRACKED_DEVICES`].
/// A `std` mutex, not a tokio one: it is held for a hash-map update and
/// never across an `.await`, and only taken when the event happens.
#[derive(Debug, Default)]
pub struct DeviceCounts(Mutex<HashMap<String, u64>>);

impl DeviceCounts {
    pub fn add(&self, device: &str, n: u64) {
        let Ok(mut map) = self.0.lock() else {
            return;
        };
        if let Some(count) = map.get_mut(device) {
            *count += n;
        } else if map.len() < MAX_TRACKED_DEVICES {
            map.insert(device.to_owned(), n);
        }
    }

    pub fn get(&self, device: &str) -> u64 {
        self.0
            .lock()
            .map(|m| m.get(device).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Counts for the given devices (or all of them), skipping zeros.
    pub fn among(&self, devices: Option<&[String]>) -> Vec<(String, u64)> {
        let Ok(map) = self.0.lock() else {
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
}

/// What the device edge counts: its sessions and every refusal, by kind.
#[derive(Debug, Default)]
pub struct EdgeCounters {
    /// Devices connected and logged in right now.
    pub sessions: AtomicU64,
    /// CONNECTs refused for unknown, wrong or disabled credentials.
    pub logins_refused: AtomicU64,
    /// Publishes or subscriptions outside the device's own topics.
    pub denied: AtomicU64,
    /// Devices disconnected for publishing faster than allowed.
    pub rate_limited: AtomicU64,
    /// Packets larger than the packet limit.
    pub too_large: AtomicU64,
    /// CONNECTs refused because the connection limit was reached.
    pub over_capacity: AtomicU64,
    /// Sockets that did not finish the TLS handshake or send CONNECT in time.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed for malformed packets or protocol violations.
    pub protocol_errors: AtomicU64,
    /// Sessions closed because the device fell silent past its keep-alive.
    pub keepalive_expired: AtomicU64,
    /// Last Wills published for devices that went away without DISCONNECT.
    pub wills: AtomicU64,
    /// Refusals of every kind, per device, where the device is known.
    pub refused_by_device: DeviceCounts,
}

/// What happens to commands to devices, by outcome, and what was refused.
#[derive(Debug, Default)]
pub struct CommandCounters {
    /// Commands accepted from operators.
    pub accepted: AtomicU64,
    /// Commands handed to the broker for a subscribed device (a command
    /// sent again after a reconnect counts again).
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub answered: AtomicU64,
    pub failed: AtomicU64,
    pub expired: AtomicU64,
    /// Commands refused before they were stored: unknown device, bad name
    /// or params, too large.
    pub refused: AtomicU64,
    /// Answers from devices that matched no waiting command (unknown,
    /// finished or expired id) or could not be read.
    pub bad_answers: AtomicU64,
    /// Command changes that could not be written to the database.
    pub save_errors: AtomicU64,
}

/// Sign-ins and refused web requests.
#[derive(Debug, Default)]
pub struct AuthCounters {
    pub logins: AtomicU64,
    /// Sign-ins refused for a wrong name or password.
    pub login_failures: AtomicU64,
    /// Sign-ins refused unchecked because the account or address failed
    /// too often recently.
    pub login_throttled: AtomicU64,
    /// Requests without a valid session or token (401 or a redirect).
    pub unauthenticated: AtomicU64,
    /// Requests from a signed-in account whose role is too low (403).
    pub forbidden: AtomicU64,
    /// State-changing requests refused because they came from another
    /// origin.
    pub csrf_refused: AtomicU64,
    /// Audit events that could not be written.
    pub audit_errors: AtomicU64,
}

/// The server's counters. Atomics keep the hot path lock-free; only the
/// per-device maps take a lock, and only when something is refused.
#[derive(Debug)]
pub struct Metrics {
    pub messages: AtomicU64,
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    /// Raw readings and rollup rows deleted by retention.
    pub pruned_readings: AtomicU64,
    pub pruned_rollups: AtomicU64,
    /// Finished commands deleted by retention (with raw readings).
    pub pruned_commands: AtomicU64,
    pub edge: EdgeCounters,
    pub commands: CommandCounters,
    pub auth: AuthCounters,
    /// WebSocket viewers currently connected.
    pub viewers: AtomicU64,
    /// Readings not sent to viewers that fell behind (each such viewer is
    /// told, and reloads its history).
    pub live_skipped: AtomicU64,
    /// Bytes waiting in viewers' outboxes, across all viewers.
    pub live_pending_bytes: AtomicU64,
    /// Readings per committed write transaction.
    pub write_batch: Histogram,
    /// Time to write and commit one batch.
    pub write_seconds: Histogram,
    /// From ingest receiving a message to its readings being handed to a
    /// viewer's WebSocket. Measured per batch from the batch's earliest
    /// message, so it errs on the slow side.
    pub push_seconds: Histogram,
    rejected_by_device: DeviceCounts,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            messages: AtomicU64::default(),
            received: AtomicU64::default(),
            stored: AtomicU64::default(),
            rejected: AtomicU64::default(),
            dropped: AtomicU64::default(),
            pruned_readings: AtomicU64::default(),
            pruned_rollups: AtomicU64::default(),
            pruned_commands: AtomicU64::default(),
            edge: EdgeCounters::default(),
            commands: CommandCounters::default(),
            auth: AuthCounters::default(),
            viewers: AtomicU64::default(),
            live_skipped: AtomicU64::default(),
            live_pending_bytes: AtomicU64::default(),
            write_batch: Histogram::new(BATCH_BOUNDS, 1.0),
            write_seconds: Histogram::latency(),
            push_seconds: Histogram::latency(),
            rejected_by_device: DeviceCounts::default(),
        }
    }
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` rejections, attributed to `device` when it is known.
    pub fn reject(&self, device: Option<&str>, n: u64) {
        Self::add(&self.rejected, n);
        if let Some(device) = device {
            self.rejected_by_device.add(device, n);
        }
    }

    /// Counts one refusal at the edge under `kind` (one of the counters in
    /// [`EdgeCounters`]), attributed to `device` when it is known.
    pub fn refuse(&self, kind: &AtomicU64, device: Option<&str>) {
        Self::add(kind, 1);
        if let Some(device) = device {
            self.edge.refused_by_device.add(device, 1);
        }
    }

    /// Rejections attributed to `device` since start.
    pub fn rejected_for(&self, device: &str) -> u64 {
        self.rejected_by_device.get(device)
    }

    /// Per-device rejection counts for the given devices (or all of them),
    /// skipping devices with none.
    pub fn rejected_among(&self, devices: Option<&[String]>) -> Vec<(String, u64)> {
        self.rejected_by_device.among(devices)
    }

    pub fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let e = &self.edge;
        Counters {
            messages: get(&self.messages),
            received: get(&self.received),
            stored: get(&self.stored),
            rejected: get(&self.rejected),
            dropped: get(&self.dropped),
            refused: get(&e.logins_refused)
                + get(&e.denied)
                + get(&e.rate_limited)
                + get(&e.too_large)
                + get(&e.over_capacity),
            connected: get(&e.sessions),
        }
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        // Name, type, help text and value of every plain counter and gauge.
        let mut plain = vec![
            (
                "sightline_messages_total",
                "counter",
                "MQTT messages that reached ingest.",
                get(&self.messages),
            ),
            (
                "sightline_readings_received_total",
                "counter",
                "Readings decoded from valid messages.",
                get(&self.received),
            ),
            (
                "sightline_readings_stored_total",
                "counter",
                "Readings committed to the database.",
                get(&self.stored),
            ),
            (
                "sightline_rejected_total",
                "counter",
                "Messages or fields refused as invalid.",
                get(&self.rejected),
            ),
            (
                "sightline_readings_dropped_total",
                "counter",
                "Valid readings dropped because the writer was saturated.",
                get(&self.dropped),
            ),
            (
                "sightline_pruned_readings_total",
                "counter",
                "Raw readings deleted by retention (--retain-raw).",
                get(&self.pruned_readings),
            ),
            (
                "sightline_pruned_rollups_total",
                "counter",
                "Rollup rows deleted by retention (--retain-rollups).",
                get(&self.pruned_rollups),
            ),
            (
                "sightline_pruned_commands_total",
                "counter",
                "Finished commands deleted by retention (kept as long as raw readings).",
                get(&self.pruned_commands),
            ),
            (
                "sightline_viewers",
                "gauge",
                "Live WebSocket viewers connected.",
                get(&self.viewers),
            ),
            (
                "sightline_live_skipped_readings_total",
                "counter",
                "Readings skipped for viewers that fell behind.",
                get(&self.live_skipped),
            ),
            (
                "sightline_live_pending_bytes",
                "gauge",
                "Bytes waiting in live viewers' outboxes.",
                get(&self.live_pending_bytes),
            ),
        ];
        let e = &self.edge;
        plain.extend([
            (
                "sightline_devices_connected",
                "gauge",
                "Devices connected and logged in.",
                get(&e.sessions),
            ),
            (
                "sightline_edge_logins_refused_total",
                "counter",
                "CONNECTs refused for unknown, wrong or disabled credentials.",
                get(&e.logins_refused),
            ),
            (
                "sightline_edge_denied_total",
                "counter",
                "Publishes or subscriptions outside a device's own topics.",
                get(&e.denied),
            ),
            (
                "sightline_edge_rate_limited_total",
                "counter",
                "Devices disconnected for exceeding the publish rate.",
                get(&e.rate_limited),
            ),
            (
                "sightline_edge_too_large_total",
                "counter",
                "Packets larger than the packet limit.",
                get(&e.too_large),
            ),
            (
                "sightline_edge_over_capacity_total",
                "counter",
                "CONNECTs refused at the connection limit.",
                get(&e.over_capacity),
            ),
            (
                "sightline_edge_handshake_timeouts_total",
                "counter",
                "Sockets that sent no CONNECT or finished no TLS handshake in time.",
                get(&e.handshake_timeouts),
            ),
            (
                "sightline_edge_protocol_errors_total",
                "counter",
                "Connections closed for malformed packets or protocol violations.",
                get(&e.protocol_errors),
            ),
            (
                "sightline_edge_keepalive_expired_total",
                "counter",
                "Sessions closed after 1.5 x keep-alive of silence.",
                get(&e.keepalive_expired),
            ),
            (
                "sightline_edge_wills_total",
                "counter",
                "Last Wills published.",
                get(&e.wills),
            ),
        ]);
        let c = &self.commands;
        plain.extend([
            (
                "sightline_commands_accepted_total",
                "counter",
                "Commands to devices accepted from operators.",
                get(&c.accepted),
            ),
            (
                "sightline_commands_sent_total",
                "counter",
                "Commands handed to the broker for a subscribed device.",
                get(&c.sent),
            ),
            (
                "sightline_commands_delivered_total",
                "counter",
                "Commands the device acknowledged.",
                get(&c.delivered),
            ),
            (
                "sightline_commands_answered_total",
                "counter",
                "Two-way commands the device answered with a result.",
                get(&c.answered),
            ),
            (
                "sightline_commands_failed_total",
                "counter",
                "Commands answered with an error or not sendable.",
                get(&c.failed),
            ),
            (
                "sightline_commands_expired_total",
                "counter",
                "Commands not delivered within their TTL or not answered in time.",
                get(&c.expired),
            ),
            (
                "sightline_commands_refused_total",
                "counter",
                "Commands refused: unknown device, invalid name or params, too large.",
                get(&c.refused),
            ),
            (
                "sightline_command_answers_rejected_total",
                "counter",
                "Device answers for unknown, finished or expired commands, or unreadable.",
                get(&c.bad_answers),
            ),
            (
                "sightline_command_save_errors_total",
                "counter",
                "Command changes that could not be written to the database.",
                get(&c.save_errors),
            ),
        ]);
        let a = &self.auth;
        plain.extend([
            (
                "sightline_logins_total",
                "counter",
                "Successful sign-ins.",
                get(&a.logins),
            ),
            (
                "sightline_login_failures_total",
                "counter",
                "Sign-ins refused for a wrong name or password.",
                get(&a.login_failures),
            ),
            (
                "sightline_login_throttled_total",
                "counter",
                "Sign-ins refused unchecked after too many recent failures of the account or address.",
                get(&a.login_throttled),
            ),
            (
                "sightline_http_unauthenticated_total",
                "counter",
                "Web requests without a valid session or API token.",
                get(&a.unauthenticated),
            ),
            (
                "sightline_http_forbidden_total",
                "counter",
                "Web requests refused because the account's role is too low.",
                get(&a.forbidden),
            ),
            (
                "sightline_http_csrf_refused_total",
                "counter",
                "State-changing web requests refused because they came from another origin.",
                get(&a.csrf_refused),
            ),
            (
                "sightline_audit_errors_total",
                "counter",
                "Audit events that could not be written to the database.",
                get(&a.audit_errors),
            ),
        ]);
        for (name, kind, help, value) in plain {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let refused = self.edge.refused_by_device.among(None);
        if !refused.is_empty() {
            let name = "sightline_device_refused_total";
            let _ = writeln!(
                out,
                "# HELP {name} Logins, publishes and subscriptions refused at the edge, per device.\n# TYPE {name} counter"
            );
            // Device ids are restricted to characters that are safe in a
            // label value (see `valid_name`).
            for (device, n) in refused {
                let _ = writeln!(out, "{name}{{device=\"{device}\"}} {n}");
            }
        }
        self.write_batch.render(
            &mut out,
            "sightline_write_batch_readings",
            "Readings per committed write transaction.",
        );
        self.write_seconds.render(
            &mut out,
            "sightline_write_seconds",
            "Time to write and commit one batch.",
        );
        self.push_seconds.render(
            &mut out,
            "sightline_push_latency_seconds",
            "From ingest receiving a message to its readings reaching a viewer's socket.",
        );
        out
    }
}

/// Reads one unlabelled counter or gauge from Prometheus text, as
/// [`Metrics::prometheus`] renders it.
pub fn read_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A histogram with fixed bucket bounds, updated with atomics only.
/// Observations are integers in a unit of the owner's choosing (readings,
/// microseconds); `divisor` converts them to the exposed unit.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Divides an observation into the exposed unit (1e6 for microseconds
    /// to seconds); a divisor, not a factor, so that bounds print exactly.
    divisor: f64,
    /// One counter per bound plus one for `+Inf`; not cumulative.
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

/// Latency bounds in microseconds, from 0.25 ms to 10 s.
const LATENCY_BOUNDS_US: &[u64] = &[
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// Batch-size bounds in readings.
const BATCH_BOUNDS: &[u64] = &[1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000];

impl Histogram {
    pub fn new(bounds: &'static [u64], divisor: f64) -> Self {
        Self {
            bounds,
            divisor,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// A histogram of durations, exposed in seconds.
    pub fn latency() -> Self {
        Self::new(LATENCY_BOUNDS_US, 1e6)
    }

    /// Records `n` observations of `value`.
    pub fn observe_n(&self, value: u64, n: u64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum
            .fetch_add(value.saturating_mul(n), Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    pub fn observe(&self, value: u64) {
        self.observe_n(value, 1);
    }

    /// Records a duration in microseconds.
    pub fn observe_duration(&self, d: Duration, n: u64) {
        self.observe_n(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), n);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{le=\"{}\"}} {cumulative}",
                        *b as f64 / self.divisor
                    );
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.divisor;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", self.count());
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
    fn histogram_buckets_are_cumulative_in_the_exposition() {
        let m = Metrics::default();
        m.push_seconds
            .observe_duration(Duration::from_micros(300), 2);
        m.push_seconds.observe_duration(Duration::from_secs(60), 1);
        m.write_batch.observe(1);
        Metrics::add(&m.edge.sessions, 7);
        let text = m.prometheus();
        for line in [
            "sightline_push_latency_seconds_bucket{le=\"0.00025\"} 0",
            "sightline_push_latency_seconds_bucket{le=\"0.0005\"} 2",
            "sightline_push_latency_seconds_bucket{le=\"10\"} 2",
            "sightline_push_latency_seconds_bucket{le=\"+Inf\"} 3",
            "sightline_push_latency_seconds_count 3",
            "sightline_write_batch_readings_bucket{le=\"1\"} 1",
            "sightline_devices_connected 7",
            "# TYPE sightline_readings_stored_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(read_value(&text, "sightline_devices_connected"), Some(7));
        assert_eq!(
            read_value(&text, "sightline_devices"),
            None,
            "names match whole"
        );
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
