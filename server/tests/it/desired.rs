//! Desired state, end to end: set through the API, kept across a restart,
//! sent retained to a real MQTT device (rumqttc and mosquitto_sub) when it
//! subscribes, live while it is subscribed, acknowledged, and removed.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use app::model::DesiredState;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode};
use serde_json::{json, Value};
use server::config::Config;
use tokio::sync::mpsc;

use common::{wait_for, Scratch, TestServer};

fn closed_config(scratch: &Scratch) -> Config {
    Config {
        open_registration: false,
        max_payload_bytes: 4096,
        ..common::test_config(&scratch.sqlite_url())
    }
}

/// A rumqttc device that boots, subscribes to `filter`, and reports each
/// message it gets and its SUBACK.
struct Booted {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<Publish>,
    granted: Vec<SubscribeReasonCode>,
    poller: tokio::task::JoinHandle<()>,
}

impl Booted {
    async fn boot(broker: SocketAddr, user: &str, secret: &str, filter: &str) -> Self {
        let mut options = MqttOptions::new(
            format!("{user}-boot"),
            broker.ip().to_string(),
            broker.port(),
        );
        options.set_keep_alive(Duration::from_secs(10));
        options.set_credentials(user, secret);
        let (client, mut events) = AsyncClient::new(options, 100);
        let (tx, received) = mpsc::unbounded_channel();
        let (acked_tx, acked) = tokio::sync::oneshot::channel();
        let mut acked_tx = Some(acked_tx);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let poller = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        if let Some(a) = acked_tx.take() {
                            let _ = a.send(s.return_codes);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let granted = tokio::time::timeout(Duration::from_secs(10), acked)
            .await
            .expect("SUBACK in time")
            .expect("SUBACK");
        Self {
            client,
            received,
            granted,
            poller,
        }
    }

    async fn next(&mut self) -> Publish {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("a message in time")
            .expect("connection open")
    }

    async fn nothing_for(&mut self, wait: Duration) {
        if let Ok(Some(p)) = tokio::time::timeout(wait, self.received.recv()).await {
            panic!("unexpected message on {}: {:?}", p.topic, p.payload);
        }
    }

    async fn shut(self) {
        let _ = self.client.disconnect().await;
        self.poller.abort();
    }
}

async fn put(server: &TestServer, device: &str, body: String) -> (u16, Value) {
    let response = server
        .client()
        .put(server.url(&format!("/api/devices/{device}/desired")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn desired(server: &TestServer, device: &str) -> Option<DesiredState> {
    let (status, body) = server
        .get(&format!("/api/devices/{device}/desired"))
        .await
        .expect("request");
    match status {
        200 => Some(serde_json::from_str(&body).expect("a desired state")),
        404 => None,
        other => panic!("GET desired: {other} {body}"),
    }
}

async fn acknowledged(server: &TestServer, device: &str, version: i64) {
    wait_for(
        &format!("{device} to acknowledge version {version}"),
        || async {
            desired(server, device)
                .await
                .is_some_and(|d| d.acked_version == Some(version) && d.acked_at.is_some())
        },
    )
    .await;
}

#[tokio::test]
async fn a_device_that_boots_after_a_restart_gets_its_desired_state_retained() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("Boiler1").await;
    let config = json!({"setpoint": 21.5, "mode": "eco"});
    let (status, body) = put(&server, "Boiler1", config.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["payload"], config);
    assert_eq!(body["set_by"], "admin");
    server.stop().await.expect("clean stop");

    // Set while the device was off, kept across a restart.
    let server = TestServer::start(closed_config(&scratch)).await;
    let mut device = Booted::boot(server.mqtt, "Boiler1", &secret, "command/Boiler1/desired").await;
    assert_eq!(
        device.granted,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let got = device.next().await;
    assert_eq!(got.topic, "command/Boiler1/desired");
    assert!(got.retain, "sent because of the subscription, so retained");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(
        serde_json::from_slice::<Value>(&got.payload).expect("JSON"),
        config
    );
    // rumqttc acknowledges it, which the server records.
    acknowledged(&server, "Boiler1", 1).await;

    // A change while the device is subscribed reaches it at once, as a
    // live message (not retained), and is acknowledged in turn.
    let (status, body) = put(&server, "Boiler1", r#"{"setpoint":19}"#.into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(
        body["acked_version"], 1,
        "the last acknowledgement stays on record"
    );
    let live = device.next().await;
    assert!(!live.retain);
    assert_eq!(&live.payload[..], br#"{"setpoint":19}"#);
    acknowledged(&server, "Boiler1", 2).await;
    device.nothing_for(Duration::from_millis(300)).await;

    // The device page carries it too.
    let detail: Value = server.get_json("/api/devices/Boiler1").await;
    assert_eq!(detail["desired"]["version"], 2);

    // Removing it sends the empty message that clears a retained one.
    let response = server
        .client()
        .delete(server.url("/api/devices/Boiler1/desired"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 204);
    let cleared = device.next().await;
    assert!(cleared.payload.is_empty());
    assert!(desired(&server, "Boiler1").await.is_none());
    device.shut().await;

    // A device that boots now gets nothing.
    let mut device = Booted::boot(server.mqtt, "Boiler1", &secret, "command/Boiler1/#").await;
    device.nothing_for(Duration::from_millis(500)).await;
    device.shut().await;
    let audit: Value = server.get_json("/api/audit").await;
    let actions: Vec<&str> = audit
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("desired"))
        .collect();
    assert_eq!(
        actions,
        ["desired_clear", "desired_set", "desired_set"],
        "newest first"
    );
    // The log keeps the version and size, not the configuration.
    assert!(!audit.to_string().contains("setpoint"), "{audit}");

    // Versions go on counting after a removal (1, 2, the removal 3), so a
    // late acknowledgement of the old version 1 cannot pass for the new
    // state's.
    let (status, body) = put(&server, "Boiler1", r#"{"setpoint":18}"#.into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 4);
}

#[tokio::test]
async fn mosquitto_sub_sees_the_desired_state_flagged_retained() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("Pump7").await;
    let (status, _) = put(&server, "Pump7", r#"{"rpm":1200}"#.into()).await;
    assert_eq!(status, 200);
    let port = server.mqtt.port().to_string();
    // `--retained-only` prints only messages with the retain flag, so this
    // fails if the device got the state as an ordinary message.
    let out = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-p",
            &port,
            "-u",
            "Pump7",
            "-P",
            &secret,
            "-i",
            "pump7-boot",
        ])
        .args([
            "-t",
            "command/Pump7/#",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
            "-v",
        ])
        .arg("--retained-only")
        .kill_on_drop(true)
        .output()
        .await
        .expect("mosquitto_sub runs (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), r#"command/Pump7/desired {"rpm":1200}"#);
    acknowledged(&server, "Pump7", 1).await;
}

#[tokio::test]
async fn another_device_cannot_read_a_desired_state_and_bad_ones_are_refused() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    server.add_device("Owner1").await;
    let other = server.add_device("Other2").await;
    assert_eq!(
        put(&server, "Owner1", r#"{"secret":"plan"}"#.into())
            .await
            .0,
        200
    );
    let mut snoop = Booted::boot(server.mqtt, "Other2", &other, "command/Owner1/desired").await;
    assert_eq!(snoop.granted, [SubscribeReasonCode::Failure]);
    snoop.nothing_for(Duration::from_millis(500)).await;
    snoop.shut().await;

    for (body, want) in [
        ("null".to_owned(), 400),
        ("{not json".to_owned(), 400),
        (format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000)), 413),
    ] {
        let (status, answer) = put(&server, "Owner1", body).await;
        assert_eq!(status, want, "{answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    assert_eq!(put(&server, "Nobody9", "{}".into()).await.0, 404);
    // Nothing refused replaced the state.
    let kept = desired(&server, "Owner1").await.expect("still set");
    assert_eq!(kept.version, 1);
    assert_eq!(kept.payload, json!({"secret": "plan"}));
}

/// The store's statements on SQLite and, where CI provides it, PostgreSQL:
/// versions count up, an acknowledgement of a replaced version is not
/// recorded, and a deleted device's state goes with it even when its
/// readings are kept, so adding the id again does not bring an old
/// configuration back.
#[tokio::test]
async fn the_store_keeps_versions_and_acknowledgements_on_both_databases() {
    let mut dbs = vec![common::TestDb::sqlite()];
    dbs.extend(common::TestDb::postgres().await);
    for db in dbs {
        let store = server::store::Store::open(&db.url).await.expect("open");
        store.add_device("Valve3", 1).await.expect("add");
        let first = store
            .set_desired("Valve3", r#"{"open":true}"#, "ann", 10)
            .await;
        assert_eq!(first.expect("set").expect("device exists").version, 1);
        let second = store
            .set_desired("Valve3", r#"{"open":false}"#, "bob", 20)
            .await;
        let second = second.expect("set").expect("device exists");
        assert_eq!((second.version, second.set_by.as_str()), (2, "bob"));
        assert!(!store
            .acknowledge_desired("Valve3", 1, 30)
            .await
            .expect("ack"));
        assert!(store
            .acknowledge_desired("Valve3", 2, 40)
            .await
            .expect("ack"));
        let now = store.desired("Valve3").await.expect("get").expect("set");
        assert_eq!((now.acked_version, now.acked_at), (Some(2), Some(40)));
        assert!(now.is_acknowledged());
        assert!(store
            .set_desired("Nobody", "{}", "ann", 50)
            .await
            .expect("set")
            .is_none());

        store
            .delete_device("Valve3", true, 60)
            .await
            .expect("delete");
        assert!(store.desired("Valve3").await.expect("get").is_none());
        store.add_device("Valve3", 70).await.expect("add again");
        assert!(store.desired("Valve3").await.expect("get").is_none());
        assert_eq!(
            store
                .set_desired("Valve3", "{}", "ann", 80)
                .await
                .expect("set")
                .expect("device exists")
                .version,
            1,
            "a new device starts again at 1"
        );
    }
}

/// In a cluster, a change made through one instance reaches a device
/// subscribed on another at once, and its acknowledgement is recorded where
/// every instance reads it.
#[tokio::test]
async fn a_change_on_one_instance_reaches_a_device_on_another() {
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let Some(nats) = common::nats::NatsCluster::start(3) else {
        return;
    };
    let mut config = common::test_config(&db.url);
    config.nats_urls = nats.urls.clone();
    config.open_registration = false;
    let a = TestServer::start(config.clone()).await;
    let b = TestServer::start(config).await;
    let secret = a.add_device("Far1").await;
    let mut device = Booted::boot(a.mqtt, "Far1", &secret, "command/Far1/#").await;
    // NATS spreads the instances' subscriptions a moment after they are
    // made; a change is sent again until it arrives.
    let mut got = None;
    for attempt in 0..20 {
        let (status, body) = put(&b, "Far1", format!(r#"{{"attempt":{attempt}}}"#)).await;
        assert_eq!(status, 200, "{body}");
        if let Ok(Some(p)) =
            tokio::time::timeout(Duration::from_millis(500), device.received.recv()).await
        {
            got = Some((p, body["version"].as_i64().expect("version")));
            break;
        }
    }
    let (message, version) = got.expect("the change reached the device on A");
    assert_eq!(message.topic, "command/Far1/desired");
    acknowledged(&b, "Far1", version).await;
    device.shut().await;
}
