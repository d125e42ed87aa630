//! Turns one MQTT message (topic and payload bytes) into readings, or into
//! the precise reasons it was refused.
//!
//! This module is pure: no I/O, no clock, no shared state. The caller passes
//! the receive time, which keeps every case here a plain table-driven test.

use std::fmt;

use chrono::DateTime;
use serde_json::Value;

use crate::names::{valid_name, MAX_NAME_LEN};

/// The most readings one message may carry. A message with more fields is
/// refused as a whole rather than silently truncated.
pub const MAX_FIELDS: usize = 256;

/// The oldest timestamp accepted: 2000-01-01T00:00:00Z. Anything older is
/// almost certainly epoch *seconds* sent where milliseconds are expected.
const MIN_TS_MS: i64 = 946_684_800_000;

/// How far ahead of the server clock a device's `ts` may be. Device clocks
/// drift, but a reading from tomorrow would corrupt "latest value" forever.
const MAX_FUTURE_SKEW_MS: i64 = 24 * 3600 * 1000;

/// Where a message was addressed, parsed from its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorTopic<'a> {
    pub device: &'a str,
    /// `Some` for `sensor/<device>/<metric>` topics.
    pub metric: Option<&'a str>,
}

/// One decoded value, before it is attributed to a device.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub metric: String,
    pub ts: i64,
    pub value: f64,
}

/// Why a message or one of its fields was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The topic is not `sensor/<device>` or `sensor/<device>/<metric>`.
    UnknownTopic,
    /// The device id in the topic is empty, too long or has odd characters.
    InvalidDevice,
    /// The metric name is empty, too long or has odd characters.
    InvalidMetric(String),
    /// The payload exceeds the configured size limit.
    Oversized { len: usize, max: usize },
    /// The payload is neither JSON (with double or single quotes) nor a
    /// bare number where one is allowed.
    Malformed(String),
    /// A field holds a string, boolean, null, array or object.
    NonNumeric(String),
    /// A field is NaN or infinite (for example `1e999`).
    NotFinite(String),
    /// The `ts` field is present but unusable.
    BadTimestamp(String),
    /// The message has more than [`MAX_FIELDS`] fields.
    TooManyFields(usize),
    /// The message parsed but carried no reading at all.
    Empty,
    /// Readings of new metrics that would take the device past its series
    /// limit (`--max-series-per-device`); its existing metrics still work.
    TooManySeries { refused: u64, max: usize },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownTopic => {
                write!(
                    f,
                    "unknown topic; use sensor/<device> or sensor/<device>/<metric>"
                )
            }
            Self::InvalidDevice => write!(
                f,
                "invalid device id; use 1-{MAX_NAME_LEN} characters from A-Z a-z 0-9 _ - . :"
            ),
            Self::InvalidMetric(m) => write!(f, "invalid metric name {m:?}"),
            Self::Oversized { len, max } => write!(f, "payload of {len} bytes exceeds {max}"),
            Self::Malformed(why) => write!(f, "malformed payload: {why}"),
            Self::NonNumeric(field) => write!(f, "field {field:?} is not a number"),
            Self::NotFinite(field) => write!(f, "field {field:?} is NaN or infinite"),
            Self::BadTimestamp(why) => write!(f, "bad ts: {why}"),
            Self::TooManyFields(n) => write!(f, "{n} fields exceed the limit of {MAX_FIELDS}"),
            Self::Empty => write!(f, "no readings in payload"),
            Self::TooManySeries { refused, max } => write!(
                f,
                "{refused} readings of new metrics refused: the device has its limit of {max} metrics"
            ),
        }
    }
}

/// The result of decoding one message: the good samples and every refusal.
/// A message may yield both, for example `{"temp":21,"mode":"eco"}`.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub samples: Vec<Sample>,
    pub rejections: Vec<Rejection>,
}

/// Splits a topic into device and optional metric.
pub fn parse_topic(topic: &str) -> Result<SensorTopic<'_>, Rejection> {
    let mut parts = topic.split('/');
    if parts.next() != Some("sensor") {
        return Err(Rejection::UnknownTopic);
    }
    let device = parts.next().ok_or(Rejection::UnknownTopic)?;
    let metric = parts.next();
    if parts.next().is_some() {
        return Err(Rejection::UnknownTopic);
    }
    if !valid_name(device) {
        return Err(Rejection::InvalidDevice);
    }
    if let Some(m) = metric {
        if !valid_name(m) {
            return Err(Rejection::InvalidMetric(printable(m)));
        }
    }
    Ok(SensorTopic { device, metric })
}

/// Decodes a payload addressed to `route`, stamping readings without their
/// own `ts` with `received_ms`.
pub fn decode(
    route: &SensorTopic<'_>,
    payload: &[u8],
    received_ms: i64,
    max_len: usize,
) -> Decoded {
    let mut out = Decoded::default();
    let text = match payload_text(payload, max_len) {
        Ok(text) => text,
        Err(r) => {
            out.rejections.push(r);
            return out;
        }
    };
    match route.metric {
        Some(metric) => decode_metric_topic(metric, text, received_ms, &mut out),
        None => decode_object_topic(text, received_ms, &mut out),
    }
    if out.samples.is_empty() && out.rejections.is_empty() {
        out.rejections.push(Rejection::Empty);
    }
    out
}

/// The payload as trimmed text, if it is within the size limit and UTF-8.
fn payload_text(payload: &[u8], max_len: usize) -> Result<&str, Rejection> {
    if payload.len() > max_len {
        return Err(Rejection::Oversized {
            len: payload.len(),
            max: max_len,
        });
    }
    std::str::from_utf8(payload)
        .map(str::trim)
        .map_err(|_| Rejection::Malformed("payload is not UTF-8".into()))
}

/// `sensor/<device>/<metric>` takes a bare number, or an object with a
/// `value` and an optional `ts`.
fn decode_metric_topic(metric: &str, text: &str, received_ms: i64, out: &mut Decoded) {
    if let Ok(value) = text.parse::<f64>() {
        push_value(metric, value, received_ms, out);
        return;
    }
    let object = match parse_object(text) {
        Ok(o) => o,
        Err(r) => return out.rejections.push(r),
    };
    let ts = match timestamp(&object, received_ms) {
        Ok(ts) => ts,
        Err(r) => return out.rejections.push(r),
    };
    match object.get("value") {
        Some(v) => push_json(metric, v, ts, out),
        None => out.rejections.push(Rejection::Malformed(
            "expected a number or an object with \"value\"".into(),
        )),
    }
}

/// `sensor/<device>` takes an object whose numeric fields are metrics.
fn decode_object_topic(text: &str, received_ms: i64, out: &mut Decoded) {
    let object = match parse_object(text) {
        Ok(o) => o,
        Err(r) => return out.rejections.push(r),
    };
    let fields = object.len() - usize::from(object.contains_key("ts"));
    if fields > MAX_FIELDS {
        return out.rejections.push(Rejection::TooManyFields(fields));
    }
    let ts = match timestamp(&object, received_ms) {
        Ok(ts) => ts,
        Err(r) => return out.rejections.push(r),
    };
    decode_fields(&object, ts, out);
}

/// Decodes a payload sent to ThingsBoard's `v1/devices/me/telemetry`:
/// `{"temp":21}`, `{"ts":1700000000000,"values":{"temp":21}}`, or an array
/// of either. The device is the one that logged in, never the payload.
pub fn decode_thingsboard(payload: &[u8], received_ms: i64, max_len: usize) -> Decoded {
    let mut out = Decoded::default();
    let text = match payload_text(payload, max_len) {
        Ok(text) => text,
        Err(r) => {
            out.rejections.push(r);
            return out;
        }
    };
    let entries = match parse_value(text) {
        Ok(Value::Array(items)) => items,
        Ok(Value::Object(o)) => vec![Value::Object(o)],
        Ok(_) => {
            out.rejections.push(Rejection::Malformed(
                "expected a JSON object or an array of objects".into(),
            ));
            return out;
        }
        Err(r) => {
            out.rejections.push(r);
            return out;
        }
    };
    let fields: usize = entries.iter().map(thingsboard_fields).sum();
    if fields > MAX_FIELDS {
        out.rejections.push(Rejection::TooManyFields(fields));
        return out;
    }
    for entry in &entries {
        let Value::Object(entry) = entry else {
            out.rejections.push(Rejection::Malformed(
                "an array entry is not an object".into(),
            ));
            continue;
        };
        let ts = match timestamp(entry, received_ms) {
            Ok(ts) => ts,
            Err(r) => {
                out.rejections.push(r);
                continue;
            }
        };
        match entry.get("values") {
            Some(Value::Object(values)) => decode_fields(values, ts, &mut out),
            Some(_) => out
                .rejections
                .push(Rejection::Malformed("\"values\" is not an object".into())),
            None => decode_fields(entry, ts, &mut out),
        }
    }
    if out.samples.is_empty() && out.rejections.is_empty() {
        out.rejections.push(Rejection::Empty);
    }
    out
}

/// How many readings one ThingsBoard entry claims, for the field limit.
fn thingsboard_fields(entry: &Value) -> usize {
    match entry {
        Value::Object(o) => match o.get("values") {
            Some(Value::Object(values)) => values.len(),
            _ => o.len() - usize::from(o.contains_key("ts")),
        },
        _ => 1,
    }
}

/// Every field but `ts` is a metric.
fn decode_fields(object: &Object, ts: i64, out: &mut Decoded) {
    for (name, value) in object {
        if name == "ts" {
            continue;
        }
        if !valid_name(name) {
            out.rejections
                .push(Rejection::InvalidMetric(printable(name)));
            continue;
        }
        push_json(name, value, ts, out);
    }
}

fn push_json(metric: &str, value: &Value, ts: i64, out: &mut Decoded) {
    match value {
        // serde_json maps out-of-range literals such as 1e999 to an error at
        // parse time, but arbitrary precision is off, so `as_f64` is total.
        Value::Number(n) => match n.as_f64() {
            Some(v) => push_value(metric, v, ts, out),
            None => out.rejections.push(Rejection::NotFinite(printable(metric))),
        },
        _ => out
            .rejections
            .push(Rejection::NonNumeric(printable(metric))),
    }
}

fn push_value(metric: &str, value: f64, ts: i64, out: &mut Decoded) {
    if value.is_finite() {
        out.samples.push(Sample {
            metric: metric.to_owned(),
            ts,
            value,
        });
    } else {
        out.rejections.push(Rejection::NotFinite(printable(metric)));
    }
}

type Object = serde_json::Map<String, Value>;

/// Parses a JSON object, accepting the single-quoted form that the seed
/// article's `mosquitto_pub` example sends (`{'temp':22}`).
fn parse_object(text: &str) -> Result<Object, Rejection> {
    match parse_value(text)? {
        Value::Object(o) => Ok(o),
        Value::Number(_) => Err(Rejection::Malformed(
            "a bare number needs a metric topic: sensor/<device>/<metric>".into(),
        )),
        _ => Err(Rejection::Malformed("expected a JSON object".into())),
    }
}

/// Parses JSON, accepting single-quoted strings too.
fn parse_value(text: &str) -> Result<Value, Rejection> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(first) => match single_to_double_quotes(text) {
            Some(fixed) => {
                serde_json::from_str(&fixed).map_err(|_| Rejection::Malformed(json_error(&first)))
            }
            None => Err(Rejection::Malformed(json_error(&first))),
        },
    }
}

fn json_error(e: &serde_json::Error) -> String {
    if e.to_string().contains("number out of range") {
        "number out of range".into()
    } else {
        format!("invalid JSON at line {} column {}", e.line(), e.column())
    }
}

/// Rewrites single-quoted strings as double-quoted JSON strings. Returns
/// `None` when the text has no single quotes, so ordinary malformed JSON is
/// reported with its own error.
fn single_to_double_quotes(text: &str) -> Option<String> {
    if !text.contains('\'') {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // Copy a double-quoted string verbatim, escapes included.
                out.push('"');
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' => {
                out.push('"');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('\'') => out.push('\''),
                            Some(other) => {
                                out.push('\\');
                                out.push(other);
                            }
                            None => return None,
                        },
                        '"' => out.push_str("\\\""),
                        '\'' => break,
                        other => out.push(other),
                    }
                }
                out.push('"');
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// Reads the optional `ts` field: epoch milliseconds or RFC 3339.
fn timestamp(object: &Object, received_ms: i64) -> Result<i64, Rejection> {
    let ts = match object.get("ts") {
        None => return Ok(received_ms),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            (None, Some(f)) if f.is_finite() && f.abs() < 9.0e15 => f.round() as i64,
            _ => {
                return Err(Rejection::BadTimestamp(
                    "not an epoch in milliseconds".into(),
                ))
            }
        },
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map_err(|_| Rejection::BadTimestamp("not RFC 3339".into()))?
            .timestamp_millis(),
        Some(_) => {
            return Err(Rejection::BadTimestamp(
                "expected epoch milliseconds or an RFC 3339 string".into(),
            ))
        }
    };
    if ts < MIN_TS_MS {
        return Err(Rejection::BadTimestamp(
            "before the year 2000; send epoch milliseconds, not seconds".into(),
        ));
    }
    if ts > received_ms.saturating_add(MAX_FUTURE_SKEW_MS) {
        return Err(Rejection::BadTimestamp(
            "more than 24 h ahead of the server clock".into(),
        ));
    }
    Ok(ts)
}

/// Shortens and escapes a hostile name so that it is safe in a log line.
fn printable(name: &str) -> String {
    let mut s: String = name.chars().take(MAX_NAME_LEN).collect();
    if s.len() < name.len() {
        s.push('…');
    }
    s.escape_debug().to_string()
}

#[cfg(test)]
mod tests;
