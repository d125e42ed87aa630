//! Ingest: turns a device's publish into readings and queues them for the
//! batch writer. The edge calls it for every telemetry publish, with the
//! device it authenticated; bad input is rejected, counted per device and
//! logged at a bounded rate, and never stops the readings around it.

pub mod decode;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::model::Reading;

use crate::acl::Telemetry;
use crate::metrics::{LogLimiter, Metrics};
use crate::store::queue::{Arrival, Committed, QueueFull, QueueTx};
pub use decode::Rejection;
use decode::{decode, decode_thingsboard, parse_topic, Decoded};

/// Decodes messages and hands their readings to the writer.
pub struct Ingest {
    metrics: Arc<Metrics>,
    /// Bounded: when the writer falls behind, QoS 0 readings are dropped
    /// and counted here rather than piling up in memory.
    writer: QueueTx,
    max_payload_bytes: usize,
    series: SeriesLimit,
    reject_log: LogLimiter,
    drop_log: LogLimiter,
}

impl Ingest {
    /// `series` is every `(device, metric)` already stored, and
    /// `max_series` how many metrics one device may have.
    pub fn new(
        metrics: Arc<Metrics>,
        writer: QueueTx,
        max_payload_bytes: usize,
        series: Vec<(String, String)>,
        max_series: usize,
    ) -> Self {
        Self {
            metrics,
            writer,
            max_payload_bytes,
            series: SeriesLimit::new(series, max_series),
            reject_log: LogLimiter::new(20, Duration::from_secs(10)),
            drop_log: LogLimiter::new(5, Duration::from_secs(10)),
        }
    }

    /// Decodes one message that `device` published to `topic` (already
    /// allowed by the edge as `telemetry`), received at `now_ms` (wall
    /// clock, for readings without a timestamp). Rejections are counted
    /// here; the good readings are returned for [`Self::queue`], so one bad
    /// field never costs the good ones beside it.
    pub fn decode(
        &self,
        device: &str,
        topic: &str,
        telemetry: Telemetry,
        payload: &[u8],
        now_ms: i64,
    ) -> Vec<Reading> {
        self.decode_as(device, topic, telemetry, payload, now_ms, Whole::No)
            .0
    }

    /// Decodes a message all or nothing, as HTTP ingest needs: a request
    /// is answered once, so it is either stored whole (and answered 200)
    /// or refused whole with every reason (and answered 400), and the
    /// client knows exactly what to send again. Nothing of a refused
    /// message takes a place under the series limit.
    pub fn decode_whole(
        &self,
        device: &str,
        topic: &str,
        telemetry: Telemetry,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<Vec<Reading>, Vec<Rejection>> {
        let (readings, rejections) =
            self.decode_as(device, topic, telemetry, payload, now_ms, Whole::Yes);
        if rejections.is_empty() {
            Ok(readings)
        } else {
            Err(rejections)
        }
    }

    fn decode_as(
        &self,
        device: &str,
        topic: &str,
        telemetry: Telemetry,
        payload: &[u8],
        now_ms: i64,
        whole: Whole,
    ) -> (Vec<Reading>, Vec<Rejection>) {
        Metrics::add(&self.metrics.messages, 1);
        let mut decoded = match telemetry {
            // The edge has checked that the topic is the device's own; the
            // topic still has to be well formed.
            Telemetry::Sensor => match parse_topic(topic) {
                Ok(route) => decode(&route, payload, now_ms, self.max_payload_bytes),
                Err(rejection) => Decoded {
                    samples: Vec::new(),
                    rejections: vec![rejection],
                },
            },
            Telemetry::ThingsBoard => decode_thingsboard(payload, now_ms, self.max_payload_bytes),
        };
        let invalid = decoded.rejections.len() as u64;
        // A message refused whole must not claim series for metrics it
        // will never store.
        let refused = if whole == Whole::Yes && invalid > 0 {
            0
        } else {
            self.series.admit(device, &mut decoded, whole)
        };
        Metrics::add(&self.metrics.series_refused, refused);
        if !decoded.rejections.is_empty() {
            self.metrics.reject(Some(device), invalid + refused);
            if let Some(suppressed) = self.reject_log.allow() {
                let topic: String = topic.chars().take(128).collect();
                let reasons: Vec<String> =
                    decoded.rejections.iter().map(ToString::to_string).collect();
                tracing::info!(device, topic = %topic.escape_debug(), suppressed, "rejected: {}", reasons.join("; "));
            }
            if whole == Whole::Yes {
                return (Vec::new(), decoded.rejections);
            }
        }
        let readings: Vec<Reading> = decoded
            .samples
            .into_iter()
            .map(|s| Reading {
                device: device.to_owned(),
                metric: s.metric,
                ts: s.ts,
                value: s.value,
            })
            .collect();
        Metrics::add(&self.metrics.received, readings.len() as u64);
        (readings, decoded.rejections)
    }

    /// Queues readings of a QoS 0 message without waiting. If the writer is
    /// saturated they are dropped and counted.
    pub fn queue(&self, readings: Vec<Reading>, at: Instant) {
        let n = readings.len() as u64;
        let device = readings.first().map(|r| r.device.clone());
        let arrival = Arrival {
            at,
            readings,
            ack: None,
            maybe_again: false,
        };
        if let Err(e) = self.writer.try_send(arrival) {
            self.dropped(device.as_deref().unwrap_or_default(), n, &e);
        }
    }

    /// Queues readings of a QoS 1 or 2 message, waiting for room if the
    /// writer is behind; the session's `Committed` channel hears the packet
    /// id in `ack` once they are stored. If the writer has stopped
    /// (shutdown) the readings are not acknowledged and are counted as
    /// dropped; the device will send them again. `maybe_again` marks a
    /// message that may be such a redelivery.
    pub async fn queue_acked(
        &self,
        readings: Vec<Reading>,
        at: Instant,
        ack: (Committed, u16),
        maybe_again: bool,
    ) {
        let n = readings.len() as u64;
        let device = readings.first().map(|r| r.device.clone());
        let arrival = Arrival {
            at,
            readings,
            ack: Some(ack),
            maybe_again,
        };
        if let Err(e) = self.writer.send(arrival).await {
            self.dropped(device.as_deref().unwrap_or_default(), n, &e);
        }
    }

    fn dropped(&self, device: &str, readings: u64, why: &QueueFull) {
        Metrics::add(&self.metrics.dropped, readings);
        if let Some(suppressed) = self.drop_log.allow() {
            let why = match why {
                QueueFull::Full => "the database writer is saturated",
                QueueFull::Closed => "the database writer has stopped",
            };
            tracing::warn!(device, readings, suppressed, "dropped readings: {why}");
        }
    }
}

/// Whether a message is taken all or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Whole {
    /// MQTT: the good readings are stored, the bad ones refused.
    No,
    /// HTTP: one bad reading refuses the whole request.
    Yes,
}

/// The metric names each device has, which hold it to at most `max`: a
/// device that invents a metric name per message would otherwise grow
/// every page and API answer that lists its series, for every viewer.
/// Readings of names it already has are always admitted. A `std` mutex,
/// held for a few hash lookups per message and never across an `.await`.
struct SeriesLimit {
    max: usize,
    known: Mutex<HashMap<String, HashSet<String>>>,
}

impl SeriesLimit {
    fn new(series: Vec<(String, String)>, max: usize) -> Self {
        let mut known: HashMap<String, HashSet<String>> = HashMap::new();
        for (device, metric) in series {
            known.entry(device).or_default().insert(metric);
        }
        Self {
            max,
            known: Mutex::new(known),
        }
    }

    /// Moves the samples of `decoded` whose metric would take `device` past
    /// the limit into its rejections, and returns how many there were.
    /// With [`Whole::Yes`], no new metric is taken unless all of them fit.
    fn admit(&self, device: &str, decoded: &mut Decoded, whole: Whole) -> u64 {
        let Ok(mut known) = self.known.lock() else {
            return 0;
        };
        let mine = match known.get_mut(device) {
            Some(mine) => mine,
            None => known.entry(device.to_owned()).or_default(),
        };
        let mut refused = 0;
        let max = self.max;
        if whole == Whole::Yes {
            let new: HashSet<&str> = decoded
                .samples
                .iter()
                .map(|s| s.metric.as_str())
                .filter(|m| !mine.contains(*m))
                .collect();
            if mine.len() + new.len() > max {
                refused = decoded
                    .samples
                    .iter()
                    .filter(|s| new.contains(s.metric.as_str()))
                    .count() as u64;
            } else {
                mine.extend(new.into_iter().map(str::to_owned));
            }
        } else {
            decoded.samples.retain(|s| {
                if mine.contains(&s.metric) {
                    return true;
                }
                if mine.len() < max {
                    mine.insert(s.metric.clone());
                    return true;
                }
                refused += 1;
                false
            });
        }
        if refused > 0 {
            decoded
                .rejections
                .push(Rejection::TooManySeries { refused, max });
        }
        refused
    }
}
