//! Cluster mode: instances on one PostgreSQL, joined by a real 3-node NATS
//! cluster. A browser on one instance sees readings that devices publish to
//! another, exactly once, and keeps seeing them when a NATS node dies;
//! commands, presence, takeover and invalidation cross instances too.

use crate::common;

use std::time::Duration;

use app::model::{Command, CommandState, DeviceSummary, Reading, ServerMsg};
use common::nats::NatsCluster;
use common::{next_matching, test_config, wait_for, Counting, TestDb, TestServer, Ws};
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
async fn a_nats_node_kill_leaves_ingest_alone_and_live_push_and_commands_recover() {
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
    // A QoS 1 device on A that remembers every value A acknowledged, and a
    // device on A that answers commands sent through B.
    let device = Counting::start(a.mqtt, "survivor");
    let publisher = device.publish_steadily("sensor/survivor/n", 1);
    next_matching(&mut on_b, readings_of("survivor")).await;
    let secret = a.add_device("valve").await;
    let (_valve, mut seen) = answering_device(a.mqtt, "valve", &secret).await;
    let (sent, _) = send_until_held(&b, "valve", 0).await;
    until_state(&b, &sent.id, CommandState::Answered).await;
    assert_eq!(seen.recv().await.as_deref(), Some(sent.id.as_str()));

    // Every node in turn but the last: whichever node A or B was on, each
    // reconnects to a survivor and resubscribes by itself.
    for node in 0..2 {
        let before = device.acked_count();
        nats.kill(node);
        // Ingest never waits for the bus: acknowledgements keep flowing.
        device.acknowledged_more(before, 1_000).await;
        // Drain what was already on its way, then expect new readings.
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                on_b.next().await;
            }
        })
        .await;
        next_matching(&mut on_b, readings_of("survivor")).await;
        // A command through B reaches the device on A again, once A's
        // subscription is back on a node B can reach.
        let (sent, _) = send_until_held(&b, "valve", 100 * (node as u64 + 1)).await;
        let answered = until_state(&b, &sent.id, CommandState::Answered).await;
        assert!(answered.response.is_some(), "{answered:?}");
        assert_eq!(seen.recv().await.as_deref(), Some(sent.id.as_str()));
    }
    publisher.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    device
        .nothing_acknowledged_is_lost(&db.url, "survivor")
        .await;
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
        a.metric("sightline_devices_connected").await == 1
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
    assert_eq!(a.metric("sightline_devices_connected").await, 0);
}

/// Live sockets recheck their sign-in only once a minute, so a token
/// revoked or an account removed on one instance must close the sockets
/// it opened on another through the bus, at once.
#[tokio::test]
async fn a_token_revoked_or_an_account_removed_on_one_instance_closes_sockets_on_another() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let (a, b) = two_instances(&db, &nats).await;
    let store = server::store::Store::open(&db.url).await.expect("store");
    let auth = server::auth::Auth::new(store.clone(), std::sync::Arc::default(), 60);
    let admin = store
        .account("admin")
        .await
        .expect("account")
        .expect("admin")
        .id;
    let open_on_b = |token: String| {
        let b = b.http;
        async move {
            let (ws, _) = tokio_tungstenite::connect_async(common::socket_request(b, &token))
                .await
                .expect("socket opens");
            ws
        }
    };

    // An admin's token, revoked through A, closes its socket on B.
    let token = auth.add_token(admin, "wall screen").await.expect("token");
    let ws = open_on_b(token.token.clone()).await;
    let revoked = a
        .client()
        .delete(a.url(&format!("/api/tokens/{}", token.id)))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status().as_u16(), 204);
    assert!(
        common::closed_within(ws, Duration::from_secs(5)).await,
        "the socket on B outlived its token"
    );

    // A viewer removed through A loses its socket on B.
    auth.add_account("kiosk", common::ADMIN_PASSWORD, app::model::Role::Viewer)
        .await
        .expect("account");
    let kiosk = store
        .account("kiosk")
        .await
        .expect("account")
        .expect("kiosk")
        .id;
    let token = auth.add_token(kiosk, "kiosk").await.expect("token");
    let ws = open_on_b(token.token).await;
    let removed = a
        .client()
        .delete(a.url("/api/users/kiosk"))
        .send()
        .await
        .expect("remove");
    assert_eq!(removed.status().as_u16(), 204);
    assert!(
        common::closed_within(ws, Duration::from_secs(5)).await,
        "the socket on B outlived its account"
    );
    let metrics = b.metrics().await;
    assert_eq!(
        server::metrics::read_value(&metrics, "sightline_bus_rejected_total"),
        Some(0),
        "B could not read what A said"
    );
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
        a.metric("sightline_devices_connected").await == 1
    })
    .await;
    let fresh = connect_once(b.mqtt, "mover", &secret);
    wait_for("the stale session on A ended", || async {
        stale.is_finished()
    })
    .await;
    assert_eq!(a.metric("sightline_devices_connected").await, 0);
    assert_eq!(b.metric("sightline_devices_connected").await, 1);
    assert!(!fresh.is_finished(), "the new session must stay");
}

/// A device connected to `broker` that subscribes to its commands and
/// answers every one with `{"pong": <its params' n>}`. Returns the task,
/// and a channel of the command ids it received.
async fn answering_device(
    broker: std::net::SocketAddr,
    id: &str,
    secret: &str,
) -> (JoinHandle<()>, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut options = rumqttc::MqttOptions::new(id, broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_credentials(id, secret);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 100);
    client
        .subscribe(format!("command/{id}"), rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let answer_topic = format!("command/{id}/response");
    let task = tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = events.poll().await {
            use rumqttc::{Event, Packet};
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let request: serde_json::Value =
                        serde_json::from_slice(&p.payload).expect("a JSON command");
                    let id = request["id"].as_str().expect("an id").to_owned();
                    let answer =
                        serde_json::json!({"id": id, "result": {"pong": request["params"]["n"]}});
                    client
                        .publish(
                            &answer_topic,
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            answer.to_string(),
                        )
                        .await
                        .expect("answer queued");
                    let _ = seen_tx.send(id);
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("SUBACK in time")
        .expect("subscribed");
    (task, seen)
}

/// POSTs a command through `server`'s API and returns it as accepted.
async fn send_command(server: &TestServer, device: &str, body: serde_json::Value) -> Command {
    let response = server
        .client()
        .post(server.url(&format!("/api/devices/{device}/commands")))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 201);
    response.json().await.expect("a command")
}

/// Sends plain `ping` commands with `n` counting up from `first` through
/// `server` until one is not failed at once, and returns it with its `n`.
/// Until the holding instance's subscription has spread to every NATS
/// node, `server` finds nobody, and a plain command fails at once, as it
/// does for an offline device.
async fn send_until_held(server: &TestServer, device: &str, first: u64) -> (Command, u64) {
    for n in first..first + 50 {
        let c = send_command(
            server,
            device,
            serde_json::json!({"name": "ping", "params": {"n": n}}),
        )
        .await;
        if c.state != CommandState::Failed {
            assert_eq!(c.state, CommandState::Sent, "{c:?}");
            return (c, n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no instance held {device} within 5 s");
}

/// Polls `server`'s API until command `id` is in `state`.
async fn until_state(server: &TestServer, id: &str, state: CommandState) -> Command {
    let path = format!("/api/commands/{id}");
    wait_for(&format!("command {id} {}", state.label()), || async {
        server.get_json::<Command>(&path).await.state == state
    })
    .await;
    server.get_json(&path).await
}

#[tokio::test]
async fn a_command_sent_through_one_instance_is_answered_by_a_device_on_another() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let (a, b) = two_instances(&db, &nats).await;
    let secret = a.add_device("pump").await;
    let (_device, mut seen) = answering_device(a.mqtt, "pump", &secret).await;
    // An operator watches the device's page on B.
    let mut page = b.live(r#"{"type":"subscribe","devices":["pump"]}"#).await;

    let (sent, n) = send_until_held(&b, "pump", 0).await;
    let answered = until_state(&b, &sent.id, CommandState::Answered).await;
    assert_eq!(answered.response, Some(serde_json::json!({"pong": n})));
    assert_eq!(seen.recv().await.as_deref(), Some(sent.id.as_str()));
    // B's viewer follows the command A tracks, to its answer.
    let live = next_matching(&mut page, |m| match m {
        ServerMsg::Command { command }
            if command.id == sent.id && command.state == CommandState::Answered =>
        {
            Some(command)
        }
        _ => None,
    })
    .await;
    assert_eq!(live.response, answered.response);
}

#[tokio::test]
async fn a_persistent_command_waits_for_its_device_on_whichever_instance_it_joins() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let (a, b) = two_instances(&db, &nats).await;
    let secret = a.add_device("valve").await;

    // The device is offline: through B, a persistent command waits, and
    // one with a short TTL expires, though no instance holds it.
    let waiting = send_command(
        &b,
        "valve",
        serde_json::json!({"name": "open", "params": {"n": 1}, "persistent": true, "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(waiting.state, CommandState::Queued);
    let short = send_command(
        &b,
        "valve",
        serde_json::json!({"name": "close", "persistent": true, "ttl_ms": 1000}),
    )
    .await;
    let expired = until_state(&a, &short.id, CommandState::Expired).await;
    assert_eq!(
        expired.error.as_deref(),
        Some("not delivered within its TTL of 1 s")
    );
    assert_eq!(
        a.metric("sightline_command_sweep_leader").await
            + b.metric("sightline_command_sweep_leader").await,
        1,
        "one instance expires the commands nobody holds"
    );

    // The device comes online on A: the waiting command reaches it, and
    // the expired one does not.
    let (device, mut seen) = answering_device(a.mqtt, "valve", &secret).await;
    let answered = until_state(&b, &waiting.id, CommandState::Answered).await;
    assert_eq!(answered.response, Some(serde_json::json!({"pong": 1})));
    assert_eq!(seen.recv().await.as_deref(), Some(waiting.id.as_str()));

    // It goes away from A before a second persistent command is answered,
    // and comes back through B: the command follows it there.
    device.abort();
    wait_for("valve gone from A", || async {
        a.metric("sightline_devices_connected").await == 0
    })
    .await;
    let later = send_command(
        &a,
        "valve",
        serde_json::json!({"name": "open", "params": {"n": 2}, "persistent": true, "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(later.state, CommandState::Queued);
    let (_device, mut seen) = answering_device(b.mqtt, "valve", &secret).await;
    let answered = until_state(&a, &later.id, CommandState::Answered).await;
    assert_eq!(answered.response, Some(serde_json::json!({"pong": 2})));
    assert_eq!(seen.recv().await.as_deref(), Some(later.id.as_str()));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), seen.recv())
            .await
            .is_err(),
        "nothing else reaches the device"
    );
}

/// What `server`'s API says of `device`'s connection: online or not, and
/// why its last connection ended.
async fn presence_on(server: &TestServer, device: &str) -> (bool, Option<String>) {
    let summary: serde_json::Value = server.get_json(&format!("/api/devices/{device}")).await;
    let presence = &summary["summary"]["presence"];
    (
        presence["online"].as_bool().unwrap_or(false),
        presence["reason"].as_str().map(str::to_owned),
    )
}

#[tokio::test]
async fn every_instance_shows_where_devices_are_connected_and_a_lost_instance_lets_go_in_one_lease()
{
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let mut config = test_config(&db.url);
    config.nats_urls = nats.urls.clone();
    config.presence_lease_secs = 1;
    let a = TestServer::start(config.clone()).await;
    let b = TestServer::start(config.clone()).await;

    // A device on A is online on B, and on an instance that starts later.
    let secret = a.add_device("lamp").await;
    let on_a = connect_once(a.mqtt, "lamp", &secret);
    wait_for("lamp online on B", || async {
        presence_on(&b, "lamp").await.0
    })
    .await;
    let c = TestServer::start(config).await;
    wait_for("lamp online on C, which started later", || async {
        presence_on(&c, "lamp").await.0
    })
    .await;
    // Its connection drops: B shows it offline, with A's reason.
    on_a.abort();
    wait_for("lamp offline on B", || async {
        !presence_on(&b, "lamp").await.0
    })
    .await;
    let (_, reason) = presence_on(&b, "lamp").await;
    assert!(reason.is_some_and(|r| r != server::presence::INSTANCE_LOST));

    // An instance that dies without a word: a NATS client that says what
    // an instance says, once, then nothing.
    b.add_device("far").await;
    let ghost = async_nats::connect(nats.urls[0].as_str())
        .await
        .expect("NATS");
    let now = server::clock::now_ms();
    for word in [
        serde_json::json!({"word": "alive", "instance": "ghost", "lease_ms": 1000, "held": 1}),
        serde_json::json!({"word": "changed", "instance": "ghost", "devices": [
            {"device": "far", "online": true, "connected_since": now, "last_seen": now, "reason": null}
        ]}),
    ] {
        ghost
            .publish("sightline.presence", word.to_string().into())
            .await
            .expect("publish");
    }
    ghost.flush().await.expect("flush");
    let said = std::time::Instant::now();
    wait_for("far online on B", || async {
        presence_on(&b, "far").await.0
    })
    .await;
    wait_for("far offline on B", || async {
        !presence_on(&b, "far").await.0
    })
    .await;
    let after = said.elapsed();
    let (_, reason) = presence_on(&b, "far").await;
    assert_eq!(reason.as_deref(), Some(server::presence::INSTANCE_LOST));
    // One lease, plus the quarter second between checks and the polling.
    assert!(
        after < Duration::from_millis(1_600),
        "offline after {after:?}"
    );
    assert!(
        after >= Duration::from_millis(900),
        "offline after {after:?}: too soon"
    );
}

#[tokio::test]
async fn every_instance_counts_what_the_whole_cluster_rejected() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let (a, b) = two_instances(&db, &nats).await;
    // One device's bad payloads reach the cluster through both instances,
    // as its reconnects through a load balancer would.
    for (server, bad) in [(&a, "{not json"), (&b, r#"{"temp":"warm"}"#)] {
        let device = server.device("noisy").await;
        device.publish("sensor/noisy", bad).await;
        device.publish("sensor/noisy", r#"{"temp":1}"#).await;
        device.disconnect().await;
    }
    // Each instance's API and live socket show both rejections, whichever
    // instance the page happens to be served by.
    for server in [&a, &b] {
        wait_for("the fleet to count both rejections", || async {
            let fleet: Vec<DeviceSummary> = server.get_json("/api/devices").await;
            fleet.iter().any(|d| d.id == "noisy" && d.rejected == 2)
        })
        .await;
        let mut page = server
            .live(r#"{"type":"subscribe","devices":["noisy"]}"#)
            .await;
        let counters = next_matching(&mut page, |m| match m {
            ServerMsg::Stats {
                counters, rejected, ..
            } if rejected == vec![("noisy".to_owned(), 2)] => Some(counters),
            _ => None,
        })
        .await;
        assert!(counters.rejected >= 2, "{counters:?}");
        assert!(counters.stored >= 2, "{counters:?}");
    }
    // Each instance's own API still answers for itself alone, so that
    // monitoring can add instances up without counting twice.
    let own_a: app::model::Counters = a.get_json("/api/stats").await;
    let own_b: app::model::Counters = b.get_json("/api/stats").await;
    assert_eq!(own_a.rejected + own_b.rejected, 2);
}

#[tokio::test]
async fn with_every_nats_node_gone_ingest_goes_on_and_the_bus_queue_stays_bounded() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(mut nats) = NatsCluster::start(3) else {
        return;
    };
    let mut config = test_config(&db.url);
    config.nats_urls = nats.urls.clone();
    config.bus_queue = 4;
    let a = TestServer::start(config).await;
    let device = Counting::start(a.mqtt, "islanded");
    let publisher = device.publish_steadily("sensor/islanded/n", 2);
    device.acknowledged_more(0, 1_000).await;
    for node in 0..3 {
        nats.kill(node);
    }
    // The NATS client's own buffer fills, then the bus's queue of four
    // batches; what does not fit is dropped and counted, and PUBACKs,
    // which wait for the database alone, keep flowing.
    let before = device.acked_count();
    device.acknowledged_more(before, 10_000).await;
    wait_for("bus drops to be counted", || async {
        a.metric("sightline_bus_dropped_readings_total").await > 0
    })
    .await;
    publisher.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    device
        .nothing_acknowledged_is_lost(&db.url, "islanded")
        .await;
    assert_eq!(a.metric("sightline_readings_dropped_total").await, 0);
}
