//! Service accounts and the feed of committed readings, with real
//! clients: mosquitto_sub (plain and `$share`), the README's paho-mqtt
//! script, and a 1,000-device simulated fleet.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rumqttc::QoS;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use common::{wait_for, Scratch, TestServer};

/// Makes a service account through the API and returns its secret.
async fn service_account(server: &TestServer, name: &str, grants: &[&str]) -> String {
    let response = server
        .client()
        .post(server.url("/api/service-accounts"))
        .json(&json!({"name": name, "subscribe": grants}))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().expect("secret").to_owned()
}

/// A mosquitto_sub whose output lines (`topic payload`) arrive on a
/// channel.
struct Sub {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Sub {
    fn start(server: &TestServer, user: &str, secret: &str, client_id: &str, topic: &str) -> Self {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-p",
                &server.mqtt.port().to_string(),
                "-u",
                user,
                "-P",
                secret,
            ])
            .args(["-i", client_id, "-t", topic, "-q", "1", "-v", "-V", "5"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub runs (scripts/setup.sh installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Every line received so far.
    fn drain(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.lines.try_recv().ok()).collect()
    }
}

/// `(device, metric, ts, value)` of every reading in feed lines.
fn feed_readings(lines: &[String]) -> Vec<(String, String, i64, f64)> {
    let mut out = Vec::new();
    for line in lines {
        let (topic, payload) = line.split_once(' ').expect("topic and payload");
        let message: Value = serde_json::from_str(payload).expect("JSON");
        let device = message["device"].as_str().expect("device").to_owned();
        assert_eq!(topic, format!("sensor/{device}"));
        for r in message["readings"].as_array().expect("readings") {
            out.push((
                device.clone(),
                r["metric"].as_str().expect("metric").to_owned(),
                r["ts"].as_i64().expect("ts"),
                r["value"].as_f64().expect("value"),
            ));
        }
    }
    out
}

/// Every stored reading, in the order it was committed.
async fn stored_in_commit_order(url: &str) -> Vec<(String, String, i64, f64)> {
    let db = sea_orm::Database::connect(url).await.expect("connect");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT d.name, s.metric, r.ts, r.value FROM reading r \
             JOIN series s ON s.id = r.series_id JOIN device d ON d.id = s.device_id \
             ORDER BY r.id",
        ))
        .await
        .expect("query");
    rows.iter()
        .map(|r| {
            (
                r.try_get_by_index::<String>(0).expect("name"),
                r.try_get_by_index::<String>(1).expect("metric"),
                r.try_get_by_index::<i64>(2).expect("ts"),
                r.try_get_by_index::<f64>(3).expect("value"),
            )
        })
        .collect()
}

/// Per device, its readings in order.
fn by_device(readings: &[(String, String, i64, f64)]) -> BTreeMap<&str, Vec<(&str, i64, u64)>> {
    let mut map: BTreeMap<&str, Vec<(&str, i64, u64)>> = BTreeMap::new();
    for (d, m, ts, v) in readings {
        map.entry(d).or_default().push((m, *ts, v.to_bits()));
    }
    map
}

async fn wait_subscriptions(server: &TestServer, n: u64) {
    wait_for(&format!("{n} feed subscriptions"), || async {
        server.metric("sightline_feed_subscriptions").await == n
    })
    .await;
}

#[tokio::test]
async fn a_service_account_sees_every_reading_of_a_thousand_devices_once_in_commit_order() {
    let scratch = Scratch::new();
    let server = TestServer::start(common::test_config(&scratch.sqlite_url())).await;
    let secret = service_account(&server, "reader", &["sensor/#"]).await;
    let mut all = Sub::start(&server, "reader", &secret, "reader-all", "sensor/#");
    let mut first = Sub::start(&server, "reader", &secret, "reader-g1", "$share/g/sensor/#");
    let mut second = Sub::start(&server, "reader", &secret, "reader-g2", "$share/g/sensor/#");
    wait_subscriptions(&server, 3).await;

    let report = server::simulate::run(
        server::simulate::SimOptions {
            devices: 1000,
            rate: 2.0,
            prefix: "fleet-".into(),
            qos: QoS::AtLeastOnce,
            duration: Some(Duration::from_secs(3)),
            backfill: None,
            answer_commands: false,
            ..server::simulate::SimOptions::demo(server.mqtt, 1000)
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    assert!(report.acked > 1000, "the fleet published: {report:?}");
    let stored = server.metric("sightline_readings_stored_total").await;
    let (mut seen_all, mut seen_first, mut seen_second) = (Vec::new(), Vec::new(), Vec::new());
    wait_for("the feed to carry every stored reading", || {
        seen_all.extend(all.drain());
        seen_first.extend(first.drain());
        seen_second.extend(second.drain());
        let done = feed_readings(&seen_all).len() as u64 >= stored
            && (feed_readings(&seen_first).len() + feed_readings(&seen_second).len()) as u64
                >= stored;
        async move { done }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen_all.extend(all.drain());
    seen_first.extend(first.drain());
    seen_second.extend(second.drain());

    let committed = stored_in_commit_order(&server.database_url).await;
    assert_eq!(committed.len() as u64, stored);
    let fed = feed_readings(&seen_all);
    assert_eq!(fed.len(), committed.len(), "every reading exactly once");
    assert_eq!(
        by_device(&fed),
        by_device(&committed),
        "per device, the feed's order is the commit order"
    );
    assert_eq!(by_device(&fed).len(), 1000);

    // The shared group split the same stream: together everything, and
    // nothing twice.
    let (a, b) = (feed_readings(&seen_first), feed_readings(&seen_second));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both consumers took a share"
    );
    let key = |r: &(String, String, i64, f64)| (r.0.clone(), r.1.clone(), r.2);
    let split: BTreeSet<_> = a.iter().chain(&b).map(key).collect();
    assert_eq!(a.len() + b.len(), committed.len(), "no duplicates");
    assert_eq!(split, committed.iter().map(key).collect::<BTreeSet<_>>());
    assert_eq!(server.metric("sightline_feed_dropped_total").await, 0);
    for sub in [&mut all, &mut first, &mut second] {
        let _ = sub.child.kill().await;
    }
}

#[tokio::test]
async fn the_readme_python_subscriber_does_the_seed_subscribers_job() {
    let Ok(python) = std::env::var("SIGHTLINE_PYTHON") else {
        assert!(
            std::env::var("SIGHTLINE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "SIGHTLINE_PYTHON is not set (scripts/env.sh sets it, scripts/setup.sh installs it)"
        );
        eprintln!("skipped: SIGHTLINE_PYTHON is not set");
        return;
    };
    let scratch = Scratch::new();
    let server = TestServer::start(common::test_config(&scratch.sqlite_url())).await;
    let secret = service_account(&server, "pyreader", &["sensor/Device001"]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/feed_subscriber.py");
    let mut child = Command::new(&python)
        .arg(script)
        .args([
            "--port",
            &server.mqtt.port().to_string(),
            "--user",
            "pyreader",
        ])
        .args([
            "--password",
            &secret,
            "--topic",
            "sensor/Device001",
            "--count",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    wait_subscriptions(&server, 1).await;
    let device = server.device("Device001").await;
    let other = server.device("Device002").await;
    other.publish("sensor/Device002", r#"{"temp":99}"#).await;
    device
        .publish_qos(
            "sensor/Device001",
            QoS::AtLeastOnce,
            r#"{"temp":21.5,"humidity":40}"#,
        )
        .await;
    device
        .publish_qos("sensor/Device001/temp", QoS::AtLeastOnce, "22")
        .await;
    let out = tokio::time::timeout(Duration::from_secs(20), async {
        let mut stdout = child.stdout.take().expect("stdout");
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
            .await
            .expect("read");
        (child.wait().await.expect("exit"), text)
    })
    .await
    .expect("the script got its readings in time");
    assert!(out.0.success(), "{}", out.1);
    let lines: Vec<Vec<&str>> = out.1.lines().map(|l| l.split(' ').collect()).collect();
    let seen: Vec<(&str, &str, &str)> = lines.iter().map(|l| (l[0], l[1], l[3])).collect();
    assert_eq!(
        seen,
        [
            // A message's fields in the order ingest stores them.
            ("Device001", "humidity", "40.0"),
            ("Device001", "temp", "21.5"),
            ("Device001", "temp", "22.0")
        ],
        "only the granted device, in order"
    );
}

#[tokio::test]
async fn a_service_account_gets_only_its_grants_publishes_nothing_and_ends_when_removed() {
    let scratch = Scratch::new();
    let server = TestServer::start(common::test_config(&scratch.sqlite_url())).await;
    let secret = service_account(&server, "narrow", &["sensor/A1"]).await;
    let port = server.mqtt.port().to_string();
    let sub = |topic: &'static str, password: String| {
        let port = port.clone();
        async move {
            Command::new("mosquitto_sub")
                .args(["-p", &port, "-u", "narrow", "-P", &password, "-t", topic])
                .args(["-C", "1", "-W", "3", "-V", "5"])
                .kill_on_drop(true)
                .output()
                .await
                .expect("mosquitto_sub runs")
        }
    };
    // Outside its grants: the subscription is refused.
    for topic in [
        "sensor/#",
        "sensor/B2",
        "#",
        "command/A1",
        "$share/g/sensor/#",
    ] {
        let out = sub(topic, secret.clone()).await;
        // mosquitto_sub says so on stderr (and exits 0).
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("All subscription requests were denied"),
            "{topic} was granted: {err}"
        );
    }
    // A wrong secret is refused at CONNECT.
    let out = sub("sensor/A1", "wrong".into()).await;
    assert!(!out.status.success());
    // It may not publish, not even as the device it reads.
    let out = Command::new("mosquitto_pub")
        .args(["-p", &port, "-u", "narrow", "-P", &secret, "-q", "1"])
        .args(["-t", "sensor/A1", "-m", r#"{"temp":1}"#])
        .output()
        .await
        .expect("mosquitto_pub runs");
    assert!(!out.status.success(), "a service account published");
    assert!(common::stored_values(&server.database_url, "A1", "temp")
        .await
        .is_empty());

    // Names are kept apart from devices', both ways.
    server.add_device("Taken1").await;
    let clash = server
        .client()
        .post(server.url("/api/service-accounts"))
        .json(&json!({"name": "Taken1", "subscribe": ["sensor/#"]}))
        .send()
        .await
        .expect("request");
    assert_eq!(clash.status().as_u16(), 409);
    let clash = server
        .client()
        .post(server.url("/api/devices"))
        .json(&json!({"id": "narrow"}))
        .send()
        .await
        .expect("request");
    assert_eq!(clash.status().as_u16(), 409);
    for bad in [
        json!({"name": "x", "subscribe": ["#"]}),
        json!({"name": "x", "subscribe": []}),
        json!({"name": "bad name", "subscribe": ["sensor/#"]}),
        json!({"name": "x", "subscribe": ["sensor/#"], "publish": ["a"]}),
    ] {
        let r = server
            .client()
            .post(server.url("/api/service-accounts"))
            .json(&bad)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }

    // Removing it ends its connection at once.
    let mut live = Sub::start(&server, "narrow", &secret, "narrow-live", "sensor/A1");
    wait_subscriptions(&server, 1).await;

    // An account holds at most --max-connections-per-device connections.
    let mut more = Vec::new();
    for i in 1..4 {
        more.push(Sub::start(
            &server,
            "narrow",
            &secret,
            &format!("narrow-{i}"),
            "sensor/A1",
        ));
    }
    wait_subscriptions(&server, 4).await;
    let out = sub("sensor/A1", secret.clone()).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Quota exceeded"), "a fifth connection: {err}");
    for mut extra in more {
        let _ = extra.child.kill().await;
    }
    wait_subscriptions(&server, 1).await;
    let gone = server
        .client()
        .delete(server.url("/api/service-accounts/narrow"))
        .send()
        .await
        .expect("request");
    assert_eq!(gone.status().as_u16(), 204);
    // (mosquitto_sub exits 0 after the server's DISCONNECT; that it
    // exits at all is the point.)
    tokio::time::timeout(Duration::from_secs(10), live.child.wait())
        .await
        .expect("mosquitto_sub ended")
        .expect("exit");
    assert_eq!(server.metric("sightline_feed_subscriptions").await, 0);
    let listed: Value = server.get_json("/api/service-accounts").await;
    assert_eq!(listed, json!([]));
}

/// Runs `mosquitto_pub` as service account `user` (MQTT 5, QoS 1) and
/// returns whether it succeeded, with its stderr.
async fn publish_as(
    server: &TestServer,
    user: &str,
    secret: &str,
    topic: &str,
    msg: &str,
) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args([
            "-p",
            &server.mqtt.port().to_string(),
            "-u",
            user,
            "-P",
            secret,
        ])
        .args(["-q", "1", "-V", "5", "-t", topic, "-m", msg])
        .output()
        .await
        .expect("mosquitto_pub runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_service_account_granted_commands_sends_tracked_ones_and_nothing_else() {
    let scratch = Scratch::new();
    let server = TestServer::start(common::test_config(&scratch.sqlite_url())).await;
    let device_secret = server.add_device("Pump1").await;
    server.add_device("Pump2").await;
    let response = server
        .client()
        .post(server.url("/api/service-accounts"))
        .json(&json!({"name": "nodered", "publish": ["command/Pump1"]}))
        .send()
        .await
        .expect("request");
    let made: Value = response.json().await.expect("json");
    assert_eq!(
        made["account"]["publish"],
        json!(["command/Pump1"]),
        "{made}"
    );
    assert_eq!(made["account"]["subscribe"], json!([]));
    let secret = made["secret"].as_str().expect("secret").to_owned();

    // The device listens for its commands.
    let mut device = Sub::start(&server, "Pump1", &device_secret, "pump1", "command/Pump1");
    // Probes from the API until one is sent, which means the device has
    // subscribed; its copies are read and set aside.
    wait_for("the device to subscribe to its commands", || async {
        let response = server
            .client()
            .post(server.url("/api/devices/Pump1/commands"))
            .json(&json!({"name": "probe", "two_way": false}))
            .send()
            .await
            .expect("request");
        let body: Value = response.json().await.expect("json");
        body["state"] == "sent" || body["state"] == "delivered"
    })
    .await;
    let mut probes = Vec::new();
    wait_for("the probe to arrive", || {
        probes.extend(device.drain());
        let arrived = !probes.is_empty();
        async move { arrived }
    })
    .await;
    let (ok, err) = publish_as(
        &server,
        "nodered",
        &secret,
        "command/Pump1",
        r#"{"name":"reboot","params":{"delay":5},"two_way":false}"#,
    )
    .await;
    assert!(ok, "{err}");
    // It arrives as a tracked command, in the command service's own
    // shape, and is delivered and audited as the service account's.
    let mut got = Vec::new();
    wait_for("the device to get the command", || {
        got.extend(device.drain());
        let done = !got.is_empty();
        async move { done }
    })
    .await;
    let (topic, payload) = got[0].split_once(' ').expect("topic and payload");
    assert_eq!(topic, "command/Pump1");
    let command: Value = serde_json::from_str(payload).expect("JSON");
    assert_eq!(command["name"], "reboot");
    assert_eq!(command["params"], json!({"delay": 5}));
    let id = command["id"].as_str().expect("an id").to_owned();
    wait_for("the command to be delivered", || async {
        let c: Value = server.get_json(&format!("/api/commands/{id}")).await;
        c["state"] == "delivered"
    })
    .await;
    let audit: Value = server.get_json("/api/audit").await;
    assert!(
        audit
            .as_array()
            .expect("a list")
            .iter()
            .any(|e| e["action"] == "command_send"
                && e["actor"] == "service:nodered"
                && e["target"] == "Pump1"),
        "{audit}"
    );

    // An unreadable command is refused (MQTT 5: payload format invalid)
    // and counted; the connection goes on.
    let refused = server.metric("sightline_commands_refused_total").await;
    let (_, err) = publish_as(&server, "nodered", &secret, "command/Pump1", "reboot").await;
    assert!(
        err.to_lowercase().contains("payload format invalid"),
        "{err}"
    );
    assert_eq!(
        server.metric("sightline_commands_refused_total").await,
        refused + 1
    );

    // Outside its grant: another device's commands, a device's readings,
    // desired state or answers. Each ends the connection, and nothing
    // reaches a device.
    for topic in [
        "command/Pump2",
        "sensor/Pump1",
        "command/Pump1/desired",
        "command/Pump1/response",
    ] {
        let (ok, _) = publish_as(&server, "nodered", &secret, topic, r#"{"name":"x"}"#).await;
        assert!(!ok, "{topic} was allowed");
    }
    let pump2: Value = server.get_json("/api/devices/Pump2/commands").await;
    assert_eq!(pump2, json!([]));
    assert!(common::stored_values(&server.database_url, "Pump1", "name")
        .await
        .is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(device.drain().len(), 0, "nothing else reached the device");

    // Grants are checked when the account is made.
    for publish in [json!(["command/#"]), json!(["sensor/#"]), json!([])] {
        let response = server
            .client()
            .post(server.url("/api/service-accounts"))
            .json(&json!({"name": "bad", "publish": publish}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 400, "{publish}");
    }
}

#[tokio::test]
async fn a_subscriber_that_stops_acknowledging_holds_at_most_1024_messages_in_flight() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    let scratch = Scratch::new();
    let server = TestServer::start(common::test_config(&scratch.sqlite_url())).await;
    let secret = service_account(&server, "slow", &["sensor/#"]).await;
    let mut options = MqttOptions::new("slow-1", "127.0.0.1", server.mqtt.port());
    options.set_credentials("slow", secret);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(options, 100);
    client
        .subscribe("sensor/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, mut received) = mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let _ = tx.send(p);
            }
        }
    });
    wait_subscriptions(&server, 1).await;
    // 1,100 devices, one message each at least: more than may be in
    // flight.
    let report = server::simulate::run(
        server::simulate::SimOptions {
            devices: 1100,
            rate: 1.0,
            prefix: "slow-".into(),
            qos: QoS::AtLeastOnce,
            duration: Some(Duration::from_secs(2)),
            backfill: None,
            answer_commands: false,
            ..server::simulate::SimOptions::demo(server.mqtt, 1100)
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    assert!(report.acked >= 1100, "the fleet published: {report:?}");
    let stored = server.metric("sightline_readings_stored_total").await;
    let mut held = Vec::new();
    wait_for("1,024 unacknowledged messages", || {
        while let Ok(p) = received.try_recv() {
            held.push(p);
        }
        let n = held.len();
        async move { n >= 1024 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(p) = received.try_recv() {
        held.push(p);
    }
    assert_eq!(held.len(), 1024, "no more than 1,024 in flight");
    // Acknowledged, the rest follows: nothing was dropped meanwhile.
    let count = |ps: &[rumqttc::Publish]| -> u64 {
        ps.iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(&p.payload).expect("JSON");
                v["readings"].as_array().map_or(0, |r| r.len() as u64)
            })
            .sum()
    };
    let mut total = count(&held);
    for p in &held {
        client.ack(p).await.expect("ack");
    }
    tokio::time::timeout(Duration::from_secs(30), async {
        while total < stored {
            let p = received.recv().await.expect("connection open");
            total += count(std::slice::from_ref(&p));
            client.ack(&p).await.expect("ack");
        }
    })
    .await
    .expect("every stored reading in time");
    assert_eq!(total, stored);
    assert_eq!(server.metric("sightline_feed_dropped_total").await, 0);
    poller.abort();
}

#[tokio::test]
async fn an_mqtt5_subscriber_gets_no_more_unacknowledged_than_its_receive_maximum() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let scratch = Scratch::new();
    let server = TestServer::start(common::test_config(&scratch.sqlite_url())).await;
    let secret = service_account(&server, "small", &["sensor/#"]).await;
    let mut options = MqttOptions::new("small-1", "127.0.0.1", server.mqtt.port());
    options.set_credentials("small", secret);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_manual_acks(true);
    options.set_receive_maximum(Some(10));
    let (client, mut events) = AsyncClient::new(options, 100);
    client
        .subscribe("sensor/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, mut received) = mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let _ = tx.send(p);
            }
        }
    });
    wait_subscriptions(&server, 1).await;
    // One message per device: 30 of them.
    for n in 0..30 {
        let device = server.device(&format!("rm-{n}")).await;
        device
            .publish(&format!("sensor/rm-{n}"), r#"{"v":1}"#)
            .await;
        device.disconnect().await;
    }
    wait_for("30 readings stored", || async {
        server.metric("sightline_readings_stored_total").await == 30
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut held = Vec::new();
    while let Ok(p) = received.try_recv() {
        held.push(p);
    }
    assert_eq!(held.len(), 10, "the client's Receive Maximum");
    let mut got = held.len();
    for p in &held {
        client.ack(p).await.expect("ack");
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while got < 30 {
            let p = received.recv().await.expect("connection open");
            got += 1;
            client.ack(&p).await.expect("ack");
        }
    })
    .await
    .expect("the rest after acknowledging");
    poller.abort();
}
