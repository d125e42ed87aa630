//! The serde types that cross the wire between the server and the browser.
//!
//! Everything here is plain data so that the server, the WASM front end and
//! the integration tests agree on one definition of every message.

use serde::{Deserialize, Serialize};

mod accounts;
mod commands;

pub use accounts::*;
pub use commands::*;

/// Milliseconds since the Unix epoch, in UTC.
///
/// Timestamps travel as integers so that no time zone is ever implied; the
/// browser converts them to local time only when it draws them.
pub type EpochMs = i64;

/// One stored measurement: a device reported `value` for `metric` at `ts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Reading {
    /// The device id, as it appears in the MQTT topic `sensor/<device>`.
    #[serde(rename = "d")]
    pub device: String,
    /// The metric name, such as `temp`.
    #[serde(rename = "m")]
    pub metric: String,
    /// When the reading was taken (the device's `ts`, or the receive time).
    #[serde(rename = "t")]
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub ts: EpochMs,
    /// The measured value; never NaN or infinite.
    #[serde(rename = "v")]
    pub value: f64,
}

/// The newest value of one metric of a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct LatestValue {
    pub metric: String,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub ts: EpochMs,
    pub value: f64,
}

/// What the fleet overview shows for one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeviceSummary {
    pub id: String,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub first_seen: EpochMs,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub last_seen: EpochMs,
    /// The newest value of each metric, sorted by metric name.
    pub latest: Vec<LatestValue>,
    /// Messages or fields from this device that were rejected since the
    /// server started.
    pub rejected: u64,
    /// The device's connection; `None` if it has not connected since the
    /// server started.
    pub presence: Option<Presence>,
    /// The last hour of the device's first metric, for the fleet card.
    #[serde(default)]
    pub sparkline: Option<Sparkline>,
    /// A free-text name an operator gave the device, shown beside its id.
    /// It may contain anything printable, so it is always shown as text.
    #[serde(default)]
    pub label: Option<String>,
    /// An operator disabled the device: the broker refuses it.
    #[serde(default)]
    pub disabled: bool,
    /// The device logs in with a secret (made by an operator), rather
    /// than having registered itself.
    #[serde(default)]
    pub secured: bool,
}

/// How long a fleet card's sparkline reaches back.
pub const SPARKLINE_MS: EpochMs = 60 * 60 * 1000;

/// A small chart of one metric over the last [`SPARKLINE_MS`]: averages
/// over two-minute slots from the rollups, then live readings appended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Sparkline {
    pub metric: String,
    /// `(time, value)` in time order.
    #[cfg_attr(feature = "ssr", schema(value_type = Vec<(i64, f64)>))]
    pub points: Vec<(EpochMs, f64)>,
}

impl DeviceSummary {
    /// Folds one reading into the latest values and "last seen". Older
    /// readings (devices may send their own timestamps) never overwrite a
    /// newer latest value.
    pub fn apply(&mut self, r: &Reading) {
        self.last_seen = self.last_seen.max(r.ts);
        match self.latest.iter_mut().find(|l| l.metric == r.metric) {
            Some(l) => {
                if l.ts <= r.ts {
                    l.ts = r.ts;
                    l.value = r.value;
                }
            }
            None => {
                self.latest.push(LatestValue {
                    metric: r.metric.clone(),
                    ts: r.ts,
                    value: r.value,
                });
                self.latest.sort_by(|a, b| a.metric.cmp(&b.metric));
            }
        }
    }
}

/// The recent history of one metric, oldest point first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct MetricSeries {
    pub metric: String,
    /// `(timestamp, value)` pairs in ascending time order.
    #[cfg_attr(feature = "ssr", schema(value_type = Vec<(i64, f64)>))]
    pub points: Vec<(EpochMs, f64)>,
}

/// One bucket of a history chart: what the readings in `[start, end)`
/// amount to. Raw readings come back as buckets of one, with `end` one
/// millisecond after `start`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Bucket {
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub start: EpochMs,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub end: EpochMs,
    /// When the first and last readings in the bucket were taken.
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub first: EpochMs,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub last: EpochMs,
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
}

/// Where a series' buckets were computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Every reading, unaggregated: the range held few enough.
    Raw,
    /// Buckets aggregated from raw readings (steps under a minute).
    RawBuckets,
    /// Buckets aggregated from the 1-minute rollups.
    #[serde(rename = "rollup_1m")]
    Rollup1m,
    /// Buckets aggregated from the 15-minute rollups.
    #[serde(rename = "rollup_15m")]
    Rollup15m,
}

/// One metric's history at chart resolution, oldest bucket first. Buckets
/// without readings are left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct BucketSeries {
    pub metric: String,
    pub resolution: Resolution,
    pub buckets: Vec<Bucket>,
}

/// The answer to `GET /api/devices/{id}/series`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct SeriesResponse {
    pub device: String,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub from: EpochMs,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub to: EpochMs,
    /// The IANA time zone the bucket boundaries follow.
    pub tz: String,
    /// The usual bucket length, in milliseconds.
    pub step_ms: i64,
    pub series: Vec<BucketSeries>,
}

/// Why the broker last refused a device, and how often it has since the
/// server started: a device that lost its secret shows as offline, and
/// its page must say why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Refusal {
    /// Refusals of this device at the edge since start, of every kind.
    pub count: u64,
    /// The last refusal's reason, such as "wrong or missing secret".
    pub why: String,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub at: EpochMs,
}

/// Everything the device page needs to render before live updates arrive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeviceDetail {
    pub summary: DeviceSummary,
    /// One series per metric, covering `[from, generated_at]`.
    pub series: Vec<MetricSeries>,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub from: EpochMs,
    /// Server-wide counters, so the page shows them before any script runs.
    pub counters: Counters,
    /// The server's clock when the page data was produced. Relative times
    /// ("5 s ago") are computed against it so that the server-rendered HTML
    /// and the first client render agree.
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub generated_at: EpochMs,
    /// Why the broker last refused this device, if it has since start.
    #[serde(default)]
    pub refused: Option<Refusal>,
    /// The device's desired state, if an operator set one.
    #[serde(default)]
    pub desired: Option<DesiredState>,
}

/// The fleet overview's data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Fleet {
    pub devices: Vec<DeviceSummary>,
    pub counters: Counters,
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub generated_at: EpochMs,
}

/// Server-wide ingest counters since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Counters {
    /// MQTT messages that reached ingest.
    pub messages: u64,
    /// Readings decoded from valid messages.
    pub received: u64,
    /// Readings committed to the database.
    pub stored: u64,
    /// Messages or fields refused as invalid.
    pub rejected: u64,
    /// Valid readings that could not be queued for storage because the
    /// writer was saturated.
    pub dropped: u64,
    /// Logins, publishes and subscriptions refused at the device edge:
    /// wrong credentials, topics outside the device's own, and limits.
    pub refused: u64,
    /// Devices connected right now.
    pub connected: u64,
}

/// A device's connection, as the MQTT edge saw it. The edge knows the
/// moment a device connects or goes away, so this is exact, not guessed
/// from the age of its last reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Presence {
    pub device: String,
    pub online: bool,
    /// When the current connection was made; `None` while offline.
    #[cfg_attr(feature = "ssr", schema(value_type = Option<i64>))]
    pub connected_since: Option<EpochMs>,
    /// When the edge last heard from the device: now while online, the
    /// moment the connection ended while offline.
    #[cfg_attr(feature = "ssr", schema(value_type = i64))]
    pub last_seen: EpochMs,
    /// Why the last connection ended, e.g. "keep-alive expired".
    pub reason: Option<String>,
}

/// A new device's credentials, returned once when the device is created
/// (or its secret replaced). The server keeps only a hash of the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeviceCredentials {
    pub id: String,
    /// Log in with user name = id and password = secret, or with the
    /// secret alone as the user name (ThingsBoard's access token).
    pub secret: String,
    /// Where devices reach this server's broker: its MQTT port, and
    /// whether that port speaks TLS. The host is the one the dashboard is
    /// served from.
    #[serde(default)]
    pub mqtt_port: Option<u16>,
    #[serde(default)]
    pub mqtt_tls: bool,
}

/// A message from the browser to the live WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Replace the subscription with these devices.
    Subscribe { devices: Vec<String> },
    /// Receive readings of every device (the fleet overview).
    SubscribeAll,
}

/// A message from the live WebSocket to the browser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Newly stored readings of subscribed devices, oldest first.
    Readings { readings: Vec<Reading> },
    /// This connection fell behind and `skipped` batches of updates were
    /// dropped for it; the page should say so and may reload its history.
    Lagged { skipped: u64 },
    /// Devices that connected or went away, sent within a fraction of a
    /// second of the event; also the answer to a subscription, with the
    /// current status of every subscribed device that has one (possibly
    /// none), so a client knows when its subscription has taken effect.
    Presence { devices: Vec<Presence> },
    /// Periodic counters, with per-device rejection counts of subscribed
    /// devices.
    Stats {
        counters: Counters,
        rejected: Vec<(String, u64)>,
        /// Why subscribed devices were last refused at the edge, for the
        /// device page.
        #[serde(default)]
        refused: Vec<(String, Refusal)>,
    },
    /// A command to a subscribed device changed state.
    Command { command: Box<Command> },
}

/// The body of `PUT /api/devices/{id}/label`; `null` or blank removes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeviceLabel {
    pub label: Option<String>,
}

/// The longest device label, in characters.
pub const MAX_LABEL_CHARS: usize = 64;

/// Checks a device label and returns it trimmed, or `None` for a blank one.
/// Any printable text is allowed, markup included, since it is only ever
/// shown as text; control characters and bidirectional overrides, which
/// could disguise the label or the text around it, are refused.
pub fn clean_label(text: &str) -> Result<Option<String>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().count() > MAX_LABEL_CHARS {
        return Err(format!("a label has at most {MAX_LABEL_CHARS} characters"));
    }
    if let Some(c) = text.chars().find(|c| is_disguising(*c)) {
        return Err(format!(
            "a label cannot contain the control or direction character U+{:04X}",
            u32::from(c)
        ));
    }
    Ok(Some(text.to_owned()))
}

/// Control characters and the Unicode formatting characters that reorder
/// or hide text.
pub fn is_disguising(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// The longest device id or metric name.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` may be a device id or a metric name: 1 to
/// [`MAX_NAME_LEN`] characters from `A-Z a-z 0-9 _ - . :`, the one alphabet
/// that is safe in MQTT topics, URLs, file names, Prometheus labels and
/// HTML alike. Names made only of dots are refused because browsers
/// collapse `.` and `..` in URLs.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.bytes().all(|b| b == b'.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

#[cfg(test)]
mod label_tests {
    use super::clean_label;

    #[test]
    fn labels_keep_markup_as_text_but_refuse_disguises() {
        let hostile = "<img src=x onerror=alert(1)>";
        assert_eq!(clean_label(hostile), Ok(Some(hostile.to_owned())));
        assert_eq!(
            clean_label("  Boiler \"room\" 3 ✓ "),
            Ok(Some("Boiler \"room\" 3 ✓".to_owned()))
        );
        assert_eq!(clean_label("   "), Ok(None));
        for bad in [
            "a\u{202E}gnp.exe",
            "a\nb",
            "zero\u{200B}width",
            "x\u{2066}y",
        ] {
            assert!(clean_label(bad).is_err(), "{bad:?}");
        }
        assert!(clean_label(&"x".repeat(65)).is_err());
        assert!(clean_label(&"é".repeat(64)).is_ok());
    }
}

#[cfg(test)]
mod tests;
