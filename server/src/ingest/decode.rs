//! Turns one MQTT message (topic and payload bytes) into readings, or into
//! the precise reasons it was refused.
//!
//! This module is pure: no I/O, no clock, no shared state. The caller passes
//! the receive time, which keeps every case here a plain table-driven test.

use std::fmt;

use chrono::DateTime;
use serde_json::Value;

/// The longest device id or metric name we accept. Longer names are almost
/// always a client bug and would bloat every stored row.
pub const MAX_NAME_LEN: usize = 64;

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
pub struct Route<'a> {
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
pub fn parse_topic(topic: &str) -> Result<Route<'_>, Rejection> {
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
    Ok(Route { device, metric })
}

/// Device ids and metric names are restricted to a conservative alphabet so
/// that they are safe in topics, URLs, file names and HTML alike. Names made
/// only of dots are refused because browsers collapse `.` and `..` in URLs.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.bytes().all(|b| b == b'.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Decodes a payload addressed to `route`, stamping readings without their
/// own `ts` with `received_ms`.
pub fn decode(route: &Route<'_>, payload: &[u8], received_ms: i64, max_len: usize) -> Decoded {
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
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;
    const MAX: usize = 1024;

    fn sample(metric: &str, ts: i64, value: f64) -> Sample {
        Sample {
            metric: metric.into(),
            ts,
            value,
        }
    }

    /// Decodes `payload` on `topic` and compares against the expected samples
    /// and rejections, so each case below reads as one line of a table.
    fn check(topic: &str, payload: &str, samples: Vec<Sample>, rejections: Vec<Rejection>) {
        let route = parse_topic(topic).expect("test topics are valid");
        let decoded = decode(&route, payload.as_bytes(), NOW, MAX);
        assert_eq!(
            decoded,
            Decoded {
                samples,
                rejections
            },
            "topic {topic:?} payload {payload:?}"
        );
    }

    #[test]
    fn accepts_what_devices_really_send() {
        check(
            "sensor/D1",
            r#"{"temp":22.5,"hum":41}"#,
            vec![sample("hum", NOW, 41.0), sample("temp", NOW, 22.5)],
            vec![],
        );
        check(
            "sensor/Device001",
            "{'temp':22}",
            vec![sample("temp", NOW, 22.0)],
            vec![],
        );
        check(
            "sensor/D1",
            "{ 'a' : 1 , \"b\": 2 }",
            vec![sample("a", NOW, 1.0), sample("b", NOW, 2.0)],
            vec![],
        );
        check(
            "sensor/D1/temp",
            "21.5",
            vec![sample("temp", NOW, 21.5)],
            vec![],
        );
        check(
            "sensor/D1/temp",
            " -3e2\n",
            vec![sample("temp", NOW, -300.0)],
            vec![],
        );
        check(
            "sensor/D1/temp",
            r#"{"value":4,"ts":1700000000000}"#,
            vec![sample("temp", 1_700_000_000_000, 4.0)],
            vec![],
        );
        check(
            "sensor/D1",
            r#"{"t":1,"ts":1700000000123}"#,
            vec![sample("t", 1_700_000_000_123, 1.0)],
            vec![],
        );
        check(
            "sensor/D1",
            r#"{"t":1,"ts":"2023-11-14T22:13:20.5Z"}"#,
            vec![sample("t", 1_700_000_000_500, 1.0)],
            vec![],
        );
        check(
            "sensor/D1",
            r#"{"t":1,"ts":"2023-11-14T23:13:20+01:00"}"#,
            vec![sample("t", 1_700_000_000_000, 1.0)],
            vec![],
        );
        check(
            "sensor/D1",
            "{'t':1,'ts':'2023-11-14T22:13:20Z'}",
            vec![sample("t", 1_700_000_000_000, 1.0)],
            vec![],
        );
    }

    #[test]
    fn rejects_bad_fields_but_keeps_good_ones() {
        check(
            "sensor/D1",
            r#"{"temp":21,"mode":"eco","on":true,"x":null,"arr":[1],"obj":{}}"#,
            vec![sample("temp", NOW, 21.0)],
            vec![
                Rejection::NonNumeric("arr".into()),
                Rejection::NonNumeric("mode".into()),
                Rejection::NonNumeric("obj".into()),
                Rejection::NonNumeric("on".into()),
                Rejection::NonNumeric("x".into()),
            ],
        );
        check(
            "sensor/D1",
            r#"{"ok":1,"bad name":2,"<script>":3}"#,
            vec![sample("ok", NOW, 1.0)],
            vec![
                Rejection::InvalidMetric("<script>".into()),
                Rejection::InvalidMetric("bad name".into()),
            ],
        );
    }

    #[test]
    fn rejects_non_finite_values() {
        check(
            "sensor/D1/temp",
            "NaN",
            vec![],
            vec![Rejection::NotFinite("temp".into())],
        );
        check(
            "sensor/D1/temp",
            "inf",
            vec![],
            vec![Rejection::NotFinite("temp".into())],
        );
        check(
            "sensor/D1/temp",
            "-infinity",
            vec![],
            vec![Rejection::NotFinite("temp".into())],
        );
        check(
            "sensor/D1/temp",
            "1e999",
            vec![],
            vec![Rejection::NotFinite("temp".into())],
        );
        check(
            "sensor/D1",
            r#"{"t":1e999}"#,
            vec![],
            vec![Rejection::Malformed("number out of range".into())],
        );
    }

    #[test]
    fn rejects_malformed_payloads() {
        let malformed = |why: &str| vec![Rejection::Malformed(why.into())];
        check(
            "sensor/D1",
            "",
            vec![],
            malformed("invalid JSON at line 1 column 0"),
        );
        check(
            "sensor/D1",
            "{",
            vec![],
            malformed("invalid JSON at line 1 column 1"),
        );
        check(
            "sensor/D1",
            "{'temp':",
            vec![],
            malformed("invalid JSON at line 1 column 2"),
        );
        check(
            "sensor/D1",
            "[1,2]",
            vec![],
            malformed("expected a JSON object"),
        );
        check(
            "sensor/D1",
            "\"hi\"",
            vec![],
            malformed("expected a JSON object"),
        );
        check(
            "sensor/D1",
            "22",
            vec![],
            malformed("a bare number needs a metric topic: sensor/<device>/<metric>"),
        );
        check(
            "sensor/D1/temp",
            "warm",
            vec![],
            malformed("invalid JSON at line 1 column 1"),
        );
        check(
            "sensor/D1/temp",
            r#"{"v":1}"#,
            vec![],
            malformed("expected a number or an object with \"value\""),
        );
        check("sensor/D1", "{}", vec![], vec![Rejection::Empty]);
        check(
            "sensor/D1",
            r#"{"ts":1700000000000}"#,
            vec![],
            vec![Rejection::Empty],
        );
    }

    #[test]
    fn rejects_bad_timestamps() {
        let bad = |why: &str| vec![Rejection::BadTimestamp(why.into())];
        check(
            "sensor/D1",
            r#"{"t":1,"ts":1700000000}"#,
            vec![],
            bad("before the year 2000; send epoch milliseconds, not seconds"),
        );
        check(
            "sensor/D1",
            r#"{"t":1,"ts":"yesterday"}"#,
            vec![],
            bad("not RFC 3339"),
        );
        check(
            "sensor/D1",
            r#"{"t":1,"ts":true}"#,
            vec![],
            bad("expected epoch milliseconds or an RFC 3339 string"),
        );
        check(
            "sensor/D1",
            r#"{"t":1,"ts":99999999999999999999}"#,
            vec![],
            bad("not an epoch in milliseconds"),
        );
        check(
            "sensor/D1",
            &format!(r#"{{"t":1,"ts":{}}}"#, NOW + 25 * 3600 * 1000),
            vec![],
            bad("more than 24 h ahead of the server clock"),
        );
    }

    #[test]
    fn rejects_oversized_and_binary_payloads() {
        let route = parse_topic("sensor/D1").expect("valid");
        let big = vec![b' '; MAX + 1];
        assert_eq!(
            decode(&route, &big, NOW, MAX).rejections,
            vec![Rejection::Oversized {
                len: MAX + 1,
                max: MAX
            }]
        );
        assert_eq!(
            decode(&route, &[0xff, 0xfe], NOW, MAX).rejections,
            vec![Rejection::Malformed("payload is not UTF-8".into())]
        );
        let many: String = (0..=MAX_FIELDS)
            .map(|i| format!("\"m{i}\":1"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            decode(&route, format!("{{{many}}}").as_bytes(), NOW, usize::MAX).rejections,
            vec![Rejection::TooManyFields(MAX_FIELDS + 1)]
        );
    }

    #[test]
    fn parses_topics() {
        let cases: &[(&str, Result<Route<'_>, Rejection>)] = &[
            (
                "sensor/D1",
                Ok(Route {
                    device: "D1",
                    metric: None,
                }),
            ),
            (
                "sensor/D1/temp",
                Ok(Route {
                    device: "D1",
                    metric: Some("temp"),
                }),
            ),
            (
                "sensor/a-b_c.d:e",
                Ok(Route {
                    device: "a-b_c.d:e",
                    metric: None,
                }),
            ),
            ("sensor", Err(Rejection::UnknownTopic)),
            ("sensor/", Err(Rejection::InvalidDevice)),
            ("sensors/D1", Err(Rejection::UnknownTopic)),
            ("other/D1", Err(Rejection::UnknownTopic)),
            ("sensor/D1/temp/x", Err(Rejection::UnknownTopic)),
            ("sensor/D 1", Err(Rejection::InvalidDevice)),
            ("sensor/<script>", Err(Rejection::InvalidDevice)),
            ("sensor/..", Err(Rejection::InvalidDevice)),
            ("sensor/.", Err(Rejection::InvalidDevice)),
            (
                "sensor/v1.2",
                Ok(Route {
                    device: "v1.2",
                    metric: None,
                }),
            ),
            ("sensor/D1/", Err(Rejection::InvalidMetric(String::new()))),
            (
                "sensor/D1/t\"x",
                Err(Rejection::InvalidMetric("t\\\"x".into())),
            ),
        ];
        for (topic, expected) in cases {
            assert_eq!(&parse_topic(topic), expected, "topic {topic:?}");
        }
        let long = format!("sensor/{}", "x".repeat(MAX_NAME_LEN + 1));
        assert_eq!(parse_topic(&long), Err(Rejection::InvalidDevice));
    }

    #[test]
    fn converts_single_quotes_without_touching_double_quoted_strings() {
        let cases = [
            ("{'a':1}", Some(r#"{"a":1}"#)),
            (r#"{'a':"it's"}"#, Some(r#"{"a":"it's"}"#)),
            (r#"{'say':'"hi"'}"#, Some(r#"{"say":"\"hi\""}"#)),
            (r"{'it\'s':1}", Some(r#"{"it's":1}"#)),
            ("{\"a\":1}", None),
        ];
        for (input, expected) in cases {
            assert_eq!(
                single_to_double_quotes(input).as_deref(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn decodes_every_thingsboard_telemetry_shape() {
        let tb = |payload: &str| decode_thingsboard(payload.as_bytes(), NOW, MAX);
        assert_eq!(
            tb(r#"{"temp":21.5}"#).samples,
            vec![sample("temp", NOW, 21.5)]
        );
        let ts = NOW - 1000;
        assert_eq!(
            tb(&format!(r#"{{"ts":{ts},"values":{{"a":1,"b":2}}}}"#)).samples,
            vec![sample("a", ts, 1.0), sample("b", ts, 2.0)]
        );
        let both = tb(&format!(r#"[{{"ts":{ts},"values":{{"a":1}}}},{{"b":2}}]"#));
        assert_eq!(
            both.samples,
            vec![sample("a", ts, 1.0), sample("b", NOW, 2.0)]
        );
        assert!(both.rejections.is_empty());
        let bad = tb(r#"[{"a":"x"},3,{"values":7}]"#);
        assert!(bad.samples.is_empty());
        assert_eq!(bad.rejections.len(), 3, "{:?}", bad.rejections);
        assert_eq!(tb("[]").rejections, vec![Rejection::Empty]);
        assert!(matches!(tb("42").rejections[..], [Rejection::Malformed(_)]));
        let many: Vec<String> = (0..300).map(|i| format!(r#"{{"m{i}":1}}"#)).collect();
        let many = format!("[{}]", many.join(","));
        assert_eq!(
            decode_thingsboard(many.as_bytes(), NOW, 1 << 20).rejections,
            vec![Rejection::TooManyFields(300)]
        );
    }

    /// Payloads that look like what devices send, with the odd twist.
    fn jsonish() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(
            r#"\[?\{(['"][a-z<>ts]{0,4}['"] ?: ?(-?[0-9]{1,18}(\.[0-9]{0,3})?(e[0-9]{1,3})?|"[^"]{0,4}"|null|true|\[\]|\{"values":\{"a":1\}\}),?){0,6}\}\]?"#,
        )
        .expect("valid regex")
    }

    proptest::proptest! {
        #[test]
        fn any_payload_decodes_to_valid_readings_or_reasons(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            text in jsonish(),
            metric in proptest::option::of("[a-z]{1,5}"),
        ) {
            let route = Route { device: "D", metric: metric.as_deref() };
            for payload in [bytes.as_slice(), text.as_bytes()] {
                for decoded in [
                    decode(&route, payload, NOW, MAX),
                    decode_thingsboard(payload, NOW, MAX),
                ] {
                    proptest::prop_assert!(decoded.samples.len() <= MAX_FIELDS);
                    proptest::prop_assert!(
                        !decoded.samples.is_empty() || !decoded.rejections.is_empty(),
                        "every message yields readings or reasons"
                    );
                    for s in &decoded.samples {
                        proptest::prop_assert!(s.value.is_finite());
                        proptest::prop_assert!(valid_name(&s.metric));
                        proptest::prop_assert!(s.ts >= MIN_TS_MS && s.ts <= NOW + MAX_FUTURE_SKEW_MS);
                    }
                }
            }
        }
    }
}
