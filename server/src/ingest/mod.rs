//! Ingest: receives every publish from the embedded broker's
//! in-process link, decodes it into readings, and queues them for the
//! batch writer. Bad input is rejected, counted per device and logged at a
//! bounded rate; it never stops the readings around it.

pub mod decode;

use std::sync::Arc;
use std::time::{Duration, Instant};

use app::model::Reading;
use rumqttd::Notification;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, INGEST_FILTER};
use crate::metrics::{LogLimiter, Metrics};
use crate::store::writer::{Arrival, QueueFull, QueueTx};
use decode::{decode, parse_topic};

/// How ingest could fail.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot attach ingest to the broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("ingest stopped: {0}")]
    Stopped(String),
}

/// Decodes messages and hands their readings to the writer.
pub struct Ingest {
    metrics: Arc<Metrics>,
    /// Bounded: when the writer falls behind, readings are dropped and
    /// counted here rather than piling up in memory or stalling the broker.
    writer: QueueTx,
    max_payload_bytes: usize,
    reject_log: LogLimiter,
    drop_log: LogLimiter,
    lost_log: LogLimiter,
}

impl Ingest {
    pub fn new(metrics: Arc<Metrics>, writer: QueueTx, max_payload_bytes: usize) -> Self {
        Self {
            metrics,
            writer,
            max_payload_bytes,
            reject_log: LogLimiter::new(20, Duration::from_secs(10)),
            drop_log: LogLimiter::new(5, Duration::from_secs(10)),
            lost_log: LogLimiter::new(5, Duration::from_secs(10)),
        }
    }

    /// Counts messages the broker discarded before ingest could read them.
    pub fn lost(&self, messages: u64) {
        Metrics::add(&self.metrics.lost, messages);
        if let Some(suppressed) = self.lost_log.allow() {
            tracing::error!(
                messages,
                suppressed,
                "the broker discarded messages before ingest read them (its log wrapped)"
            );
        }
    }

    /// Handles one MQTT message received at `now_ms` (wall clock, for
    /// readings without a timestamp) and `at` (monotonic, for latency).
    pub fn handle(&self, topic: &[u8], payload: &[u8], now_ms: i64, at: Instant) {
        Metrics::add(&self.metrics.messages, 1);
        let Ok(topic) = std::str::from_utf8(topic) else {
            self.reject(None, "<binary topic>", &[decode::Rejection::UnknownTopic]);
            return;
        };
        let route = match parse_topic(topic) {
            Ok(route) => route,
            Err(rejection) => {
                // Attribute the rejection to the device when the topic at
                // least names a valid one (e.g. `sensor/D1/a/b`).
                let device = topic
                    .strip_prefix("sensor/")
                    .and_then(|rest| rest.split('/').next())
                    .filter(|d| decode::valid_name(d));
                self.reject(device, topic, &[rejection]);
                return;
            }
        };
        let decoded = decode(&route, payload, now_ms, self.max_payload_bytes);
        if !decoded.rejections.is_empty() {
            self.reject(Some(route.device), topic, &decoded.rejections);
        }
        if decoded.samples.is_empty() {
            return;
        }
        let readings: Vec<Reading> = decoded
            .samples
            .into_iter()
            .map(|s| Reading {
                device: route.device.to_owned(),
                metric: s.metric,
                ts: s.ts,
                value: s.value,
            })
            .collect();
        let n = readings.len() as u64;
        Metrics::add(&self.metrics.received, n);
        if let Err(e) = self.writer.try_send(Arrival { at, readings }) {
            Metrics::add(&self.metrics.dropped, n);
            if let Some(suppressed) = self.drop_log.allow() {
                let why = match e {
                    QueueFull::Full => "the database writer is saturated",
                    QueueFull::Closed => "the database writer has stopped",
                };
                tracing::warn!(
                    device = route.device,
                    readings = n,
                    suppressed,
                    "dropped readings: {why}"
                );
            }
        }
    }

    fn reject(&self, device: Option<&str>, topic: &str, rejections: &[decode::Rejection]) {
        self.metrics.reject(device, rejections.len() as u64);
        if let Some(suppressed) = self.reject_log.allow() {
            let topic: String = topic.chars().take(128).collect();
            let reasons: Vec<String> = rejections.iter().map(ToString::to_string).collect();
            tracing::info!(topic = %topic.escape_debug(), suppressed, "rejected: {}", reasons.join("; "));
        }
    }
}

/// How long the link must stay quiet during shutdown before ingest decides
/// it has read everything.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

/// Receives publishes from the broker until `shutdown` fires. If the router
/// ever drops the link, a new one is made so ingest keeps running.
/// `pause` is zero except in tests; see [`crate::config::Config::ingest_pause`].
pub async fn run(
    broker: Arc<Broker>,
    ingest: Ingest,
    pause: Duration,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let (mut _tx, mut rx) = broker.link("ingest", INGEST_FILTER)?;
    // Timers tick in milliseconds, so a sub-millisecond pause is owed until
    // it adds up to one.
    let mut owed = Duration::ZERO;
    let mut gaps = GapTracker::default();
    let mut draining = false;
    loop {
        // On shutdown the listener is already closed; what the router still
        // holds for this link was acknowledged to devices, so it is read to
        // the end (until the link stays quiet) before ingest returns.
        let next = if draining {
            match tokio::time::timeout(DRAIN_IDLE, rx.next()).await {
                Ok(next) => next,
                Err(_) => return Ok(()),
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    draining = true;
                    continue;
                }
                next = rx.next() => next,
            }
        };
        match next {
            Ok(Some(Notification::Forward(forward))) => {
                if let Some((_, offset)) = forward.cursor {
                    let lost = gaps.next(offset);
                    if lost > 0 {
                        ingest.lost(lost);
                    }
                }
                let publish = forward.publish;
                ingest.handle(&publish.topic, &publish.payload, now_ms(), Instant::now());
                owed += pause;
                if owed >= Duration::from_millis(1) {
                    tokio::time::sleep(std::mem::take(&mut owed)).await;
                }
            }
            // rumqttd pauses a local link whose buffer filled up; without
            // this wake-up delivery stalls for good.
            Ok(Some(Notification::Unschedule)) => {
                if let Err(e) = rx.wake().await {
                    tracing::warn!("ingest link lost on wake: {e}; relinking");
                    (_tx, rx) = broker.link("ingest", INGEST_FILTER)?;
                    gaps = GapTracker::default();
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("ingest link lost: {e}; relinking");
                (_tx, rx) = broker.link("ingest", INGEST_FILTER)?;
                gaps = GapTracker::default();
            }
        }
    }
}

/// Finds messages that rumqttd dropped before ingest read them.
///
/// rumqttd acknowledges a publish (QoS 1 included) once it is appended to
/// an in-memory log, and when that log is full it drops its oldest segment
/// whether or not ingest has read it. It then moves ingest's read cursor
/// forward and only logs a warning. Every message it forwards carries its
/// absolute offset in the log, one apart for consecutive messages, so a
/// jump in offsets is exactly the number of messages lost.
#[derive(Debug, Default)]
pub struct GapTracker {
    expected: Option<u64>,
}

impl GapTracker {
    /// Takes the offset of the next forwarded message and returns how many
    /// messages were skipped before it.
    pub fn next(&mut self, offset: u64) -> u64 {
        let lost = match self.expected {
            Some(expected) => offset.saturating_sub(expected),
            None => 0,
        };
        self.expected = Some(offset + 1);
        lost
    }
}

/// The wall clock in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::GapTracker;

    #[test]
    fn gaps_in_log_offsets_are_counted_as_lost_messages() {
        let mut gaps = GapTracker::default();
        assert_eq!(gaps.next(500), 0, "the first offset sets the baseline");
        assert_eq!(gaps.next(501), 0);
        assert_eq!(gaps.next(502), 0);
        assert_eq!(gaps.next(900), 397, "offsets 503..=899 never arrived");
        assert_eq!(gaps.next(901), 0);
        assert_eq!(gaps.next(901), 0, "a repeat is not a loss");
    }
}
