//! Tests of `decode`: table-driven where the inputs vary.

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
    let cases: &[(&str, Result<SensorTopic<'_>, Rejection>)] = &[
        (
            "sensor/D1",
            Ok(SensorTopic {
                device: "D1",
                metric: None,
            }),
        ),
        (
            "sensor/D1/temp",
            Ok(SensorTopic {
                device: "D1",
                metric: Some("temp"),
            }),
        ),
        (
            "sensor/a-b_c.d:e",
            Ok(SensorTopic {
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
            Ok(SensorTopic {
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
        let route = SensorTopic { device: "D", metric: metric.as_deref() };
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
