//! Cluster mode: instances on one PostgreSQL, joined by a real 3-node NATS
//! cluster. A browser on one instance sees readings that devices publish to
//! another, exactly once, and keeps seeing them when a NATS node dies.

mod common;

use std::time::Duration;

use app::model::{Reading, ServerMsg};
use common::nats::NatsCluster;
use common::{next_matching, test_config, wait_for, TestDb, TestServer, Ws};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

/// Two instances on `db`, each told of every node of `nats`.
async fn two_instances(db: &TestDb, nats: &NatsCluster) -> (TestServer, TestServer) {
    let mut config = test_config(&db.url);
    config.nats_urls = nats.urls.clone();
    let a = TestServer::start(config.clone()).await;
    let b = TestServer::start(config).await;
    (a, b)
}

/// Waits until `server` holds `n` bus subscriptions for its viewers.
async fn wait_subscriptions(server: &TestServer, n: usize) {
    let line = format!("sightline_bus_subscriptions {n}\n");
    wait_for("bus subscriptions", || async {
        server.metrics().await.contains(&line)
    })
    .await;
}

fn readings_of(device: &'static str) -> impl FnMut(ServerMsg) -> Option<Vec<Reading>> {
    move |msg| match msg {
        ServerMsg::Readings { readings } => {
            let mine: Vec<Reading> = readings
                .into_iter()
                .filter(|r| r.device == device)
                .collect();
            (!mine.is_empty()).then_some(mine)
        }
        _ => None,
    }
}

/// Publishes a reading every 100 ms until aborted: NATS spreads interest
/// between routed nodes a moment after a subscription is made, so the
/// first readings may legitimately go nowhere.
fn keep_publishing(device: common::Device, topic: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0.. {
            device.publish(&topic, format!("{{\"temp\":{i}}}")).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Nothing more for `device` arrives on `ws` within `wait`.
async fn quiet_for(ws: &mut Ws, device: &'static str, wait: Duration) {
    let mut pick = readings_of(device);
    let _ = tokio::time::timeout(wait, async {
        while let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = ws.next().await {
            if let Ok(msg) = serde_json::from_str::<ServerMsg>(&text) {
                if let Some(extra) = pick(msg) {
                    panic!("{device} arrived again: {extra:?}");
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_viewer_on_one_instance_sees_readings_stored_by_another() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let (a, b) = two_instances(&db, &nats).await;

    // A viewer on B watches a device that is connected to A.
    let mut on_b = b
        .live(r#"{"type":"subscribe","devices":["cross-a"]}"#)
        .await;
    wait_subscriptions(&b, 1).await;
    let publisher = keep_publishing(a.device("cross-a").await, "sensor/cross-a".into());
    let seen = next_matching(&mut on_b, readings_of("cross-a")).await;
    assert_eq!(seen[0].metric, "temp");
    publisher.abort();

    // What reached B through the bus is what A stored.
    let stored = b.metrics().await;
    assert!(
        stored.contains("sightline_bus_received_readings_total"),
        "{stored}"
    );

    // A device on B, watched on B, reaches its viewer once: B's own
    // readings never come back to it through NATS.
    let mut local = b
        .live(r#"{"type":"subscribe","devices":["local-b"]}"#)
        .await;
    wait_subscriptions(&b, 2).await;
    let device = b.device("local-b").await;
    device.publish("sensor/local-b", "{\"temp\":1}").await;
    let once = next_matching(&mut local, readings_of("local-b")).await;
    assert_eq!(once.len(), 1);
    quiet_for(&mut local, "local-b", Duration::from_secs(1)).await;

    // A viewer of the whole fleet on A sees devices of both instances.
    let mut fleet = a.live(r#"{"type":"subscribe_all"}"#).await;
    wait_subscriptions(&a, 1).await;
    let publisher = keep_publishing(b.device("fleet-b").await, "sensor/fleet-b".into());
    next_matching(&mut fleet, readings_of("fleet-b")).await;
    publisher.abort();
}

#[tokio::test]
async fn live_push_across_instances_survives_a_nats_node_kill() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(mut nats) = NatsCluster::start(3) else {
        return;
    };
    let (a, b) = two_instances(&db, &nats).await;
    let mut on_b = b
        .live(r#"{"type":"subscribe","devices":["survivor"]}"#)
        .await;
    wait_subscriptions(&b, 1).await;
    let publisher = keep_publishing(a.device("survivor").await, "sensor/survivor".into());
    next_matching(&mut on_b, readings_of("survivor")).await;

    // Every node in turn but the last: whichever node A or B was on, each
    // reconnects to a survivor and resubscribes by itself.
    for node in 0..2 {
        nats.kill(node);
        // Drain what was already on its way, then expect new readings.
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                on_b.next().await;
            }
        })
        .await;
        next_matching(&mut on_b, readings_of("survivor")).await;
    }
    publisher.abort();
    // Ingest never depended on the bus: the device's readings are stored.
    let stats = a.metrics().await;
    assert!(
        stats.contains("sightline_readings_dropped_total 0\n"),
        "{stats}"
    );
}

/// Connects device `id` with its `secret` to `broker` and keeps the
/// connection until the server ends it; the task then finishes (it never
/// reconnects).
fn connect_once(broker: std::net::SocketAddr, id: &str, secret: &str) -> JoinHandle<()> {
    let mut options = rumqttc::MqttOptions::new(id, broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_credentials(id, secret);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    tokio::spawn(async move {
        let _client = client;
        while events.poll().await.is_ok() {}
    })
}

/// The value of a plain metric line `name N`.
async fn metric(server: &TestServer, name: &str) -> u64 {
    let text = server.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn a_device_disabled_on_one_instance_is_cut_off_on_another() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let (a, b) = two_instances(&db, &nats).await;
    let secret = a.add_device("victim").await;
    let on_a = connect_once(a.mqtt, "victim", &secret);
    wait_for("victim online on A", || async {
        metric(&a, "sightline_devices_connected").await == 1
    })
    .await;
    // An operator on B disables it.
    let response = b
        .client()
        .put(b.url("/api/devices/victim/enabled"))
        .json(&false)
        .send()
        .await
        .expect("disable");
    assert_eq!(response.status().as_u16(), 204);
    wait_for("victim cut off on A", || async { on_a.is_finished() }).await;
    assert_eq!(metric(&a, "sightline_devices_connected").await, 0);
}

#[tokio::test]
async fn a_client_that_reconnects_to_another_instance_takes_its_session_over() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let (a, b) = two_instances(&db, &nats).await;
    // The device's old connection on A went stale (say, a NAT dropped it
    // silently); it reconnects through the load balancer and lands on B.
    let secret = a.add_device("mover").await;
    let stale = connect_once(a.mqtt, "mover", &secret);
    wait_for("mover online on A", || async {
        metric(&a, "sightline_devices_connected").await == 1
    })
    .await;
    let fresh = connect_once(b.mqtt, "mover", &secret);
    wait_for("the stale session on A ended", || async {
        stale.is_finished()
    })
    .await;
    assert_eq!(metric(&a, "sightline_devices_connected").await, 0);
    assert_eq!(metric(&b, "sightline_devices_connected").await, 1);
    assert!(!fresh.is_finished(), "the new session must stay");
}
