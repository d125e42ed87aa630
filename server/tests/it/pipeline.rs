//! The whole path, end to end: a real MQTT client publishes to the embedded
//! broker, the reading lands in a real SQLite file, and a real WebSocket
//! client receives it live.

use crate::common;

use std::time::Duration;

use app::model::{Counters, DeviceDetail, DeviceSummary, Reading, ServerMsg};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use common::{next_matching, test_config, wait_for, Scratch, TestServer};
use rumqttc::QoS;
use server::store::Store;

fn readings_of(msg: ServerMsg) -> Option<Vec<Reading>> {
    match msg {
        ServerMsg::Readings { readings } => Some(readings),
        _ => None,
    }
}

#[tokio::test]
async fn seed_publish_is_stored_and_pushed_live() {
    let scratch = Scratch::new();
    let server = TestServer::start(test_config(&scratch.sqlite_url())).await;
    let mut viewer = server.live(r#"{"type":"subscribe_all"}"#).await;
    let mut device_viewer = server
        .live(r#"{"type":"subscribe","devices":["Device001"]}"#)
        .await;
    let mut other_viewer = server
        .live(r#"{"type":"subscribe","devices":["Other"]}"#)
        .await;

    let device = server.device("Device001").await;
    device.publish("sensor/Device001", "{'temp':22}").await;

    let live = next_matching(&mut viewer, readings_of).await;
    assert_eq!(live.len(), 1);
    assert_eq!(
        (
            live[0].device.as_str(),
            live[0].metric.as_str(),
            live[0].value
        ),
        ("Device001", "temp", 22.0)
    );
    let ts = live[0].ts;
    let now = server::clock::now_ms();
    assert!(
        (now - ts).abs() < 10_000,
        "receive time is used when no ts is sent"
    );
    assert_eq!(next_matching(&mut device_viewer, readings_of).await, live);

    // The reading is already committed when it is pushed.
    let store = Store::open(&server.database_url)
        .await
        .expect("open the same file");
    let (summary, series) = store
        .device("Device001", 0)
        .await
        .expect("query")
        .expect("device exists");
    assert_eq!(summary.latest.len(), 1);
    assert_eq!(
        (summary.latest[0].metric.as_str(), summary.latest[0].value),
        ("temp", 22.0)
    );
    assert_eq!(series[0].points, vec![(ts, 22.0)]);

    // A viewer subscribed to another device gets counters but no readings.
    let got = next_matching(&mut other_viewer, |m| match m {
        ServerMsg::Readings { readings } => Some(Err(readings)),
        ServerMsg::Stats { counters, .. } if counters.stored >= 1 => Some(Ok(counters)),
        _ => None,
    })
    .await;
    assert!(
        got.is_ok(),
        "foreign readings leaked to a subscriber: {got:?}"
    );

    // Several metrics, a device timestamp and a bare number on a metric topic.
    device
        .publish(
            "sensor/Device001",
            r#"{"temp":22.5,"hum":41,"ts":1767225600000}"#,
        )
        .await;
    device.publish("sensor/Device001/pressure", "1013.2").await;
    wait_for("four stored readings", || async {
        store.count_readings().await.expect("count") == 4
    })
    .await;
    let devices: Vec<DeviceSummary> = server.get_json("/api/devices").await;
    assert_eq!(devices.len(), 1);
    let metrics: Vec<(&str, f64)> = devices[0]
        .latest
        .iter()
        .map(|l| (l.metric.as_str(), l.value))
        .collect();
    // `temp` keeps 22: the device's own 2026-01-01 timestamp is older than
    // the first reading, so it does not replace the latest value.
    assert_eq!(
        metrics,
        vec![("hum", 41.0), ("pressure", 1013.2), ("temp", 22.0)]
    );
    let detail: DeviceDetail = server.get_json("/api/devices/Device001").await;
    let hum = detail
        .series
        .iter()
        .find(|s| s.metric == "hum")
        .expect("hum series");
    assert!(
        hum.points.is_empty(),
        "a reading dated 2026-01-01 is outside the 15 minute window"
    );

    device.disconnect().await;
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn bad_input_is_rejected_counted_and_never_costs_good_readings() {
    let scratch = Scratch::new();
    let mut config = test_config(&scratch.sqlite_url());
    config.max_payload_bytes = 1024;
    let server = TestServer::start(config).await;
    let device = server.device("Device001").await;

    // (topic, payload, good readings, rejections), interleaved on purpose.
    let oversized = format!("{{\"temp\":1,\"pad\":\"{}\"}}", "x".repeat(2000));
    let cases: Vec<(&str, String, u64, u64)> = vec![
        ("sensor/Device001", "{'temp':20}".into(), 1, 0),
        ("sensor/Device001", "{not json".into(), 0, 1),
        ("sensor/Device001", "{'temp':21}".into(), 1, 0),
        ("sensor/Device001/temp", "NaN".into(), 0, 1),
        ("sensor/Device001", r#"{"temp":1e999}"#.into(), 0, 1),
        ("sensor/Device001", oversized, 0, 1),
        (
            "sensor/Device001",
            r#"{"temp":22,"mode":"eco","<script>":1}"#.into(),
            1,
            2,
        ),
        ("sensor/Device001/a/b", "1".into(), 0, 1),
        (
            "sensor/Device001",
            r#"{"temp":23,"ts":1700000000}"#.into(),
            0,
            1,
        ),
        ("sensor/Device001", "\u{0}\u{1}binary".into(), 0, 1),
        ("sensor/Device001", "{'temp':24}".into(), 1, 0),
    ];
    let mut good = 0;
    let mut rejected = 0;
    for (topic, payload, g, r) in &cases {
        device.publish(topic, payload.clone()).await;
        good += g;
        rejected += r;
    }
    wait_for("every message to be handled", || async {
        let c: Counters = server.get_json("/api/stats").await;
        c.messages == cases.len() as u64 && c.stored == good
    })
    .await;
    let counters: Counters = server.get_json("/api/stats").await;
    assert_eq!(
        counters,
        Counters {
            messages: cases.len() as u64,
            received: good,
            stored: good,
            rejected,
            dropped: 0,
            refused: 0,
            connected: 1,
        }
    );
    let devices: Vec<DeviceSummary> = server.get_json("/api/devices").await;
    assert_eq!(devices[0].rejected, rejected);
    assert_eq!(
        devices[0].latest[0].value, 24.0,
        "the last good reading is latest"
    );

    let store = Store::open(&server.database_url).await.expect("open");
    let (_, series) = store
        .device("Device001", 0)
        .await
        .expect("query")
        .expect("device");
    let values: Vec<f64> = series[0].points.iter().map(|p| p.1).collect();
    assert_eq!(values, vec![20.0, 21.0, 22.0, 24.0]);

    // The server keeps serving pages after all of that.
    let (status, page) = server.get("/devices/Device001").await.expect("page");
    assert_eq!(status, 200);
    assert_eq!(
        common::testid_text(&page, "device-rejected").as_deref(),
        Some(rejected.to_string().as_str()),
        "the page shows the device's rejections"
    );
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn readings_survive_a_restart() {
    let scratch = Scratch::new();
    let config = test_config(&scratch.sqlite_url());
    let server = TestServer::start(config.clone()).await;
    let device = server.device("Device001").await;
    for i in 0..50 {
        device
            .publish("sensor/Device001", format!("{{\"temp\":{i}}}"))
            .await;
    }
    // Stop the moment the broker has acknowledged the last message, before
    // ingest has necessarily read it: shutdown must still store all 50.
    wait_for("the broker to acknowledge all 50", || async {
        device.acked.load(std::sync::atomic::Ordering::Relaxed) == 50
    })
    .await;
    server.stop().await.expect("clean shutdown");
    device.disconnect().await;

    let mut again = test_config(&scratch.sqlite_url());
    again.site_root = config.site_root;
    let server = TestServer::start(again).await;
    let detail: DeviceDetail = server.get_json("/api/devices/Device001").await;
    assert_eq!(detail.series[0].points.len(), 50);
    assert_eq!(detail.summary.latest[0].value, 49.0);
    let (_, page) = server.get("/devices/Device001").await.expect("page");
    assert!(
        page.contains(">49<"),
        "the server-rendered page shows the stored value"
    );
    server.stop().await.expect("clean shutdown");
}

/// Shutdown while readings are still queued for the writer: the drain that
/// ARCHITECTURE.md promises. A slow writer (10 readings per 300 ms) keeps
/// most of 100 readings waiting when the stop comes; every one of them is
/// stored before `run` returns, and the QoS 1 device hears a PUBACK for
/// each of its own before its connection closes. That device is a raw
/// socket, so that every byte the server sent before closing is counted
/// (a client library may drop what arrives with the close).
#[tokio::test]
async fn shutdown_stores_every_reading_still_queued() {
    use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    let mut config = test_config(&url);
    config.write_pause = Duration::from_millis(300);
    config.batch_max = 10;
    let server = TestServer::start(config).await;
    let fire_and_forget = server.device("Unacked").await;

    let mut acked_device = tokio::net::TcpStream::connect(server.mqtt)
        .await
        .expect("connect");
    let mut out = bytes::BytesMut::new();
    Packet::Connect(Connect::new("Acked"))
        .write(&mut out, usize::MAX)
        .expect("encodes");
    for i in 0..50u16 {
        let mut publish = Publish::new("sensor/Acked/n", QoS::AtLeastOnce, i.to_string());
        publish.pkid = i + 1;
        Packet::Publish(publish)
            .write(&mut out, usize::MAX)
            .expect("encodes");
    }
    acked_device.write_all(&out).await.expect("write");
    for i in 0..50 {
        fire_and_forget
            .publish_qos("sensor/Unacked/n", QoS::AtMostOnce, format!("{i}"))
            .await;
    }
    wait_for("all 100 readings to reach ingest", || async {
        let c: Counters = server.get_json("/api/stats").await;
        c.received == 100
    })
    .await;
    let at_stop: Counters = server.get_json("/api/stats").await;
    assert!(
        at_stop.stored <= 60,
        "the writer was meant to be far behind at the stop: {at_stop:?}"
    );

    server.stop().await.expect("clean shutdown");
    let store = Store::open(&url).await.expect("reopen");
    assert_eq!(
        store.count_readings().await.expect("count"),
        100,
        "readings queued at the stop were lost"
    );
    // Everything the server sent before closing: the CONNACK, then a
    // PUBACK for each message, in order.
    let mut sent = bytes::BytesMut::new();
    tokio::time::timeout(Duration::from_secs(5), acked_device.read_buf(&mut sent))
        .await
        .expect("the server closed the connection")
        .expect("read");
    while tokio::time::timeout(Duration::from_secs(5), acked_device.read_buf(&mut sent))
        .await
        .expect("the server closed the connection")
        .is_ok_and(|n| n > 0)
    {}
    let mut acks = Vec::new();
    while let Ok(packet) = Packet::read(&mut sent, 1 << 20) {
        match packet {
            Packet::ConnAck(_) => {}
            Packet::PubAck(ack) => acks.push(ack.pkid),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        acks,
        (1..=50).collect::<Vec<u16>>(),
        "the session settles: what it stored during shutdown is acknowledged"
    );
}

#[tokio::test]
async fn pages_show_real_values_before_any_script_runs() {
    let scratch = Scratch::new();
    let server = TestServer::start(test_config(&scratch.sqlite_url())).await;
    let (status, empty) = server.get("/").await.expect("fleet page");
    assert_eq!(status, 200);
    assert!(empty.contains("No devices yet"));

    let device = server.device("Device001").await;
    device
        .publish("sensor/Device001", r#"{"temp":22.25,"hum":41}"#)
        .await;
    wait_for("the reading to be stored", || async {
        let c: Counters = server.get_json("/api/stats").await;
        c.stored == 2
    })
    .await;
    let (_, fleet) = server.get("/").await.expect("fleet page");
    assert!(
        !fleet.contains("<template"),
        "content is inline, not streamed for a script to move"
    );
    for needle in [
        "Device001",
        "class=\"metric-value\">22.25<",
        "class=\"metric-value\">41<",
        "/pkg/frontend.js",
        "/pkg/echarts.min.js",
    ] {
        assert!(fleet.contains(needle), "fleet page lacks {needle:?}");
    }
    let (_, page) = server.get("/devices/Device001").await.expect("device page");
    for needle in [
        "Device001",
        "temp",
        "hum",
        "22.25",
        "<polyline",
        "data-points=\"1\"",
    ] {
        assert!(page.contains(needle), "device page lacks {needle:?}");
    }
    let (status, _) = server
        .get("/devices/Nobody")
        .await
        .expect("unknown device page");
    assert_eq!(
        status, 404,
        "an unknown device gets a page that says so, as a 404"
    );
    let (status, _) = server
        .get("/api/devices/Nobody")
        .await
        .expect("unknown device api");
    assert_eq!(status, 404);
    device.disconnect().await;
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn startup_errors_name_the_cause_and_the_option() {
    let scratch = Scratch::new();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut config = test_config(&scratch.sqlite_url());
    config.mqtt_addr = taken.local_addr().expect("addr");
    let text = server::Listeners::bind(&config)
        .await
        .expect_err("port taken")
        .to_string();
    assert!(
        text.contains("--mqtt-addr") && text.contains("in use"),
        "{text}"
    );

    let mut config = test_config(&scratch.sqlite_url());
    config.http_addr = taken.local_addr().expect("addr");
    let text = server::Listeners::bind(&config)
        .await
        .expect_err("port taken")
        .to_string();
    assert!(
        text.contains("--http-addr") && text.contains("in use"),
        "{text}"
    );

    let config = test_config("sqlite:///nonexistent-dir/sub/x.db?mode=rwc");
    let listeners = server::Listeners::bind(&config).await.expect("http binds");
    let text = server::run(config, listeners, std::future::pending())
        .await
        .expect_err("no such folder")
        .to_string();
    assert!(
        text.contains("--database-url") && text.contains("unable to open"),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}

/// The same path against PostgreSQL. CI starts a server and sets
/// `SIGHTLINE_TEST_POSTGRES_URL`; elsewhere the test says it was skipped.
#[tokio::test]
async fn postgres_stores_and_serves_readings() {
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let url = db.url.clone();
    let server = TestServer::start(test_config(&url)).await;
    let name = "pg-device".to_owned();
    let device = server.device(&name).await;
    device
        .publish(&format!("sensor/{name}"), "{'temp':22,'hum':40.5}")
        .await;
    let store = Store::open(&url).await.expect("open postgres");
    wait_for("rows in PostgreSQL", || async {
        matches!(store.device(&name, 0).await, Ok(Some((s, _))) if s.latest.len() == 2)
    })
    .await;
    let detail: DeviceDetail = server.get_json(&format!("/api/devices/{name}")).await;
    assert_eq!(detail.summary.latest[1].value, 22.0);
    device.disconnect().await;
    server.stop().await.expect("clean shutdown");
}

/// Reads one gauge or counter from `/metrics`.
#[tokio::test]
async fn a_stalled_viewer_stays_bounded_while_a_healthy_one_gets_everything() {
    let scratch = Scratch::new();
    let mut config = test_config(&scratch.sqlite_url());
    let cap = 256 * 1024;
    config.viewer_buffer_bytes = cap;
    config.batch_max = 2000;
    let server = TestServer::start(config).await;
    let mut stalled = server.live(r#"{"type":"subscribe_all"}"#).await;
    let mut healthy = server
        .live(r#"{"type":"subscribe","devices":["Flood"]}"#)
        .await;
    let device = server.device("Flood").await;
    device.publish("sensor/Flood", "{'warm':1}").await;
    next_matching(&mut stalled, readings_of).await;
    next_matching(&mut healthy, readings_of).await;

    // The healthy viewer reads everything in the background and notes any
    // lag notice; the stalled one reads nothing while about 20 MB of live
    // updates are produced, far more than its cap and socket buffers.
    let messages = 1000u64;
    let expected = messages * 200;
    let reader = tokio::spawn(async move {
        let (mut readings, mut lagged) = (0u64, 0u64);
        // Stats arrive every second, so only silence about readings ends
        // the wait early.
        let mut last_reading = tokio::time::Instant::now();
        while readings < expected && last_reading.elapsed() < Duration::from_secs(15) {
            let Ok(Some(Ok(msg))) =
                tokio::time::timeout(Duration::from_secs(1), healthy.next()).await
            else {
                continue;
            };
            if let Message::Text(text) = msg {
                match serde_json::from_str::<ServerMsg>(&text).expect("server message") {
                    ServerMsg::Readings { readings: r } => {
                        readings += r.len() as u64;
                        last_reading = tokio::time::Instant::now();
                    }
                    ServerMsg::Lagged { skipped } => lagged += skipped,
                    ServerMsg::Stats { .. }
                    | ServerMsg::Presence { .. }
                    | ServerMsg::Command { .. } => {}
                }
            }
        }
        (readings, lagged)
    });
    let fields: Vec<String> = (0..200)
        .map(|i| format!("\"metric_with_a_deliberately_long_name_to_fill_buffers_{i:03}\":{i}"))
        .collect();
    let payload = format!("{{{}}}", fields.join(","));
    let mut most_pending = 0;
    for n in 0..messages {
        device.publish("sensor/Flood", payload.clone()).await;
        if n % 100 == 0 {
            most_pending = most_pending.max(server.metric("sightline_live_pending_bytes").await);
        }
    }
    wait_for("every reading to be stored", || async {
        let c: Counters = server.get_json("/api/stats").await;
        c.stored == expected + 1
    })
    .await;
    most_pending = most_pending.max(server.metric("sightline_live_pending_bytes").await);

    let counters: Counters = server.get_json("/api/stats").await;
    assert_eq!(
        counters.dropped, 0,
        "a stalled viewer must not cost readings"
    );
    // Two viewers, each allowed its cap plus one batch in flight.
    let bound = 2 * (cap as u64 + 2000 * 100);
    assert!(
        most_pending <= bound,
        "viewer outboxes held {most_pending} bytes, above {bound}"
    );
    assert!(server.metric("sightline_live_skipped_readings_total").await > 0);

    let (readings, lagged) = reader.await.expect("reader");
    assert_eq!(lagged, 0, "the healthy viewer must never be told it lagged");
    assert_eq!(readings, expected, "the healthy viewer gets every reading");

    let skipped = next_matching(&mut stalled, |m| match m {
        ServerMsg::Lagged { skipped } => Some(skipped),
        _ => None,
    })
    .await;
    assert!(skipped > 0, "the stalled viewer is told what it missed");
    device.disconnect().await;
    server.stop().await.expect("clean shutdown");
}

/// A viewer that stops reading altogether is disconnected once a send to
/// it has waited 10 s, which frees what it pinned; ingest never waits for
/// it.
#[tokio::test]
async fn a_viewer_that_stops_reading_is_disconnected_after_ten_seconds() {
    let scratch = Scratch::new();
    let mut config = test_config(&scratch.sqlite_url());
    config.batch_max = 2000;
    let server = TestServer::start(config).await;
    let stalled = server.live(r#"{"type":"subscribe_all"}"#).await;
    assert_eq!(server.metric("sightline_viewers").await, 1);
    let device = server.device("Flood").await;
    // About 20 MB of live updates: far more than the viewer's outbox and
    // both ends' socket buffers, so a send to it blocks.
    let fields: Vec<String> = (0..200)
        .map(|i| format!("\"metric_with_a_deliberately_long_name_to_fill_buffers_{i:03}\":{i}"))
        .collect();
    let payload = format!("{{{}}}", fields.join(","));
    let flood_started = tokio::time::Instant::now();
    for _ in 0..1000 {
        device.publish("sensor/Flood", payload.clone()).await;
    }
    wait_for("every reading to be stored", || async {
        let c: Counters = server.get_json("/api/stats").await;
        c.stored == 200_000
    })
    .await;
    let deadline = flood_started + Duration::from_secs(40);
    while server.metric("sightline_viewers").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled viewer was still connected 40 s after the flood began"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_after = flood_started.elapsed();
    assert!(
        cut_after >= Duration::from_secs(10),
        "disconnected {cut_after:?} after the flood began: sends may wait 10 s"
    );
    let c: Counters = server.get_json("/api/stats").await;
    assert_eq!(c.dropped, 0, "a stalled viewer must not cost readings");
    assert_eq!(server.metric("sightline_live_pending_bytes").await, 0);
    drop(stalled);
    device.disconnect().await;
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn overload_is_counted_reading_for_reading() {
    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    let mut config = test_config(&url);
    // A writer that stores at most 20 readings per 20 ms, behind a queue
    // of 8 messages, while the device sends as fast as it can.
    config.write_pause = Duration::from_millis(20);
    config.batch_max = 20;
    config.writer_queue = 8;
    // The device floods on purpose; this test is about the writer, not
    // the per-device rate limit.
    config.max_publish_rate = 1e6;
    let server = TestServer::start(config).await;
    let device = server.device("Burst").await;
    // QoS 0: the device expects no acknowledgement, so a saturated writer
    // must drop (and count) rather than hold the connection up.
    let sent = 3000u64;
    for i in 0..sent {
        device
            .publish_qos("sensor/Burst/temp", QoS::AtMostOnce, format!("{i}"))
            .await;
    }
    wait_for("every reading to be stored or dropped", || async {
        let c: Counters = server.get_json("/api/stats").await;
        c.received == sent && c.stored + c.dropped == sent
    })
    .await;
    let counters: Counters = server.get_json("/api/stats").await;
    assert!(
        counters.dropped > 0,
        "the writer was slow enough to overflow"
    );
    assert!(counters.stored > 0);
    assert_eq!(counters.received, sent);
    let dropped = server.metric("sightline_readings_dropped_total").await;
    assert_eq!(dropped, counters.dropped, "/metrics agrees with the API");
    device.disconnect().await;
    server.stop().await.expect("clean shutdown");

    // What was counted as stored is exactly what the database holds.
    let store = Store::open(&url).await.expect("reopen");
    assert_eq!(
        store.count_readings().await.expect("count"),
        counters.stored
    );
}

#[tokio::test]
async fn qos1_waits_for_a_slow_writer_and_acknowledges_only_what_is_stored() {
    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    let mut config = test_config(&url);
    // The same slow writer as above, but the device asks for QoS 1: the
    // edge holds each PUBACK until the readings are committed, and waits
    // for room in the queue instead of dropping.
    config.write_pause = Duration::from_millis(20);
    config.batch_max = 20;
    config.writer_queue = 8;
    let server = TestServer::start(config).await;
    let device = server.device("Patient").await;
    let sent = 600u64;
    for i in 0..sent {
        device.publish("sensor/Patient/temp", format!("{i}")).await;
        // Never more acknowledged than committed, at any moment.
        let acked = device.acked.load(std::sync::atomic::Ordering::Relaxed);
        let c: Counters = server.get_json("/api/stats").await;
        assert!(acked <= c.stored, "acked {acked} before storing ({c:?})");
    }
    wait_for("every publish to be acknowledged", || async {
        device.acked.load(std::sync::atomic::Ordering::Relaxed) == sent
    })
    .await;
    let c: Counters = server.get_json("/api/stats").await;
    assert_eq!((c.stored, c.dropped), (sent, 0), "{c:?}");
    device.disconnect().await;
    server.stop().await.expect("clean shutdown");
    let store = Store::open(&url).await.expect("reopen");
    assert_eq!(store.count_readings().await.expect("count"), sent);
}

#[tokio::test]
async fn assets_are_served_compressed_and_revalidated() {
    let scratch = Scratch::new();
    let server = TestServer::start(test_config(&scratch.sqlite_url())).await;
    let client = server.client();
    let response = client
        .get(server.url("/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("page");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-encoding")
            .map(|v| v.as_bytes()),
        Some(&b"gzip"[..]),
        "pages are compressed for clients that accept it"
    );
    let response = client
        .get(server.url("/pkg/main.css"))
        .send()
        .await
        .expect("asset");
    assert_eq!(
        response.status(),
        200,
        "the bundle must be built first (scripts/build.sh; scripts/test.sh does it)"
    );
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .map(|v| v.as_bytes()),
        Some(&b"no-cache"[..]),
        "fixed bundle names must be revalidated"
    );
    server.stop().await.expect("clean shutdown");
}
