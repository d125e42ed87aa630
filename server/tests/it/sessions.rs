//! Persistent MQTT sessions with real clients: `mosquitto_sub -c`, rumqttc
//! over MQTT 5 with a session expiry, and raw 3.1.1 packets. Subscriptions
//! and commands outlive the connection and a server restart, redelivery
//! carries DUP and the original packet id, a publish sent again after a
//! lost PUBACK is stored once, and every kept thing is bounded.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use app::model::{Command, CommandState};
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish as Publish4};
use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet as Packet5, Publish};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::QoS;
use serde_json::{json, Value};
use server::config::Config;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use common::raw::{read_packet, write_packet};
use common::{wait_for, Scratch, TestServer};

fn config(scratch: &Scratch) -> Config {
    Config {
        open_registration: false,
        ..common::test_config(&scratch.sqlite_url())
    }
}

/// POSTs a plain command (not flagged persistent) and returns the status
/// and body.
async fn post(server: &TestServer, device: &str, n: u64) -> (u16, Value) {
    let response = server
        .client()
        .post(server.url(&format!("/api/devices/{device}/commands")))
        .header("content-type", "application/json")
        .body(json!({"name": "set", "params": {"n": n}}).to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Sends a plain command that must be accepted, and returns it.
async fn send(server: &TestServer, device: &str, n: u64) -> Command {
    let (status, body) = post(server, device, n).await;
    assert_eq!(status, 201, "{body}");
    serde_json::from_value(body).expect("a command")
}

async fn until_state(server: &TestServer, id: &str, state: CommandState) {
    let path = format!("/api/commands/{id}");
    wait_for(&format!("command {id} to be {}", state.label()), || async {
        server.get_json::<Command>(&path).await.state == state
    })
    .await;
}

/// Waits until no device is connected: a client that just left has been
/// seen to go, and its session has ended.
async fn all_gone(server: &TestServer) {
    wait_for("every device to be gone", || async {
        server.metric("sightline_devices_connected").await == 0
    })
    .await;
}

/// Runs `mosquitto_sub` as `device` with a persistent session (`-c`) on
/// its commands at QoS 1, with `extra` arguments; returns its output.
async fn mosquitto_sub(broker: SocketAddr, device: &str, secret: &str, extra: &[&str]) -> String {
    let out = tokio::process::Command::new("mosquitto_sub")
        .args(["-p", &broker.port().to_string(), "-h", "127.0.0.1"])
        .args(["-u", device, "-P", secret, "-i", &format!("{device}-sub")])
        .args(["-c", "-q", "1", "-t", &format!("command/{device}/#"), "-v"])
        .args(extra)
        .kill_on_drop(true)
        .output()
        .await
        .expect("mosquitto_sub runs (scripts/setup.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `n` parameter of each command in `mosquitto_sub -v` output.
fn numbers(output: &str) -> Vec<u64> {
    output
        .lines()
        .map(|line| {
            let (_, payload) = line.split_once(' ').expect("topic and payload");
            let v: Value = serde_json::from_str(payload).expect("a JSON command");
            v["params"]["n"].as_u64().expect("n")
        })
        .collect()
}

#[tokio::test]
async fn mosquitto_sub_with_a_persistent_session_gets_every_command_sent_while_away() {
    let scratch = Scratch::new();
    let server = TestServer::start(config(&scratch)).await;
    let secret = server.add_device("Valve1").await;
    // Subscribe with a persistent session, then leave (-E: exit once
    // subscribed).
    let first = mosquitto_sub(server.mqtt, "Valve1", &secret, &["-E"]).await;
    assert_eq!(first, "");
    all_gone(&server).await;

    // Plain commands to the device while it is away wait for it, as MQTT
    // keeps messages for a persistent session's subscriptions.
    let mut sent = Vec::new();
    for n in 0..3 {
        let c = send(&server, "Valve1", n).await;
        assert_eq!(c.state, CommandState::Queued, "{c:?}");
        assert!(c.persistent, "kept for the session: {c:?}");
        sent.push(c.id);
    }
    server.stop().await.expect("clean stop");

    // After a restart the device comes back: every command arrives once,
    // in order, without it having to subscribe again first (it does
    // anyway, as mosquitto_sub always does; that sends nothing twice).
    let server = TestServer::start(config(&scratch)).await;
    let out = mosquitto_sub(server.mqtt, "Valve1", &secret, &["-C", "4", "-W", "3"]).await;
    assert_eq!(numbers(&out), [0, 1, 2], "{out}");
    for id in &sent {
        until_state(&server, id, CommandState::Delivered).await;
    }
    // Nothing is left to send: a third connection gets nothing.
    let out = mosquitto_sub(server.mqtt, "Valve1", &secret, &["-C", "1", "-W", "2"]).await;
    assert_eq!(out, "");

    // Without a persistent session a command to an offline device fails at
    // once, as before: a clean connection forgets the session.
    let clean = tokio::process::Command::new("mosquitto_sub")
        .args(["-p", &server.mqtt.port().to_string(), "-h", "127.0.0.1"])
        .args(["-u", "Valve1", "-P", &secret, "-i", "Valve1-sub"])
        .args(["-q", "1", "-t", "command/Valve1/#", "-E"])
        .output()
        .await
        .expect("mosquitto_sub runs");
    assert!(clean.status.success());
    all_gone(&server).await;
    let (status, body) = post(&server, "Valve1", 9).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "failed", "{body}");
}

/// An MQTT 5 client (rumqttc) that acknowledges only when told to, and
/// reports what it receives.
struct Client5 {
    client: AsyncClient,
    connack: ConnAck,
    received: mpsc::UnboundedReceiver<Publish>,
    poller: tokio::task::JoinHandle<()>,
}

impl Client5 {
    async fn connect(broker: SocketAddr, device: &str, secret: &str, expiry: Option<u32>) -> Self {
        let mut options = MqttOptions::new(
            format!("{device}-v5"),
            broker.ip().to_string(),
            broker.port(),
        );
        options.set_keep_alive(Duration::from_secs(10));
        options.set_credentials(device, secret);
        options.set_clean_start(false);
        options.set_session_expiry_interval(expiry);
        options.set_manual_acks(true);
        let (client, mut events) = AsyncClient::new(options, 100);
        let (tx, received) = mpsc::unbounded_channel();
        let (connack_tx, connack) = tokio::sync::oneshot::channel();
        let mut connack_tx = Some(connack_tx);
        let poller = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet5::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Packet5::ConnAck(ack))) => {
                        if let Some(c) = connack_tx.take() {
                            let _ = c.send(ack);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let connack = tokio::time::timeout(Duration::from_secs(10), connack)
            .await
            .expect("CONNACK in time")
            .expect("CONNACK");
        Self {
            client,
            connack,
            received,
            poller,
        }
    }

    async fn next(&mut self) -> Publish {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("a message in time")
            .expect("connection open")
    }

    /// Drops the connection without DISCONNECT, as a device that loses
    /// power does.
    fn vanish(self) {
        self.poller.abort();
    }
}

fn command_id(p: &Publish) -> String {
    let v: Value = serde_json::from_slice(&p.payload).expect("a JSON command");
    v["id"].as_str().expect("an id").to_owned()
}

#[tokio::test]
async fn an_mqtt5_session_resumes_after_a_restart_and_redelivers_with_dup() {
    let scratch = Scratch::new();
    let server = TestServer::start(Config {
        max_session_expiry_secs: 3_600,
        ..config(&scratch)
    })
    .await;
    let secret = server.add_device("Pump2").await;
    // Asking for a session that never expires gets the server's maximum,
    // and is told so.
    let mut device = Client5::connect(server.mqtt, "Pump2", &secret, Some(u32::MAX)).await;
    assert!(!device.connack.session_present);
    let told = device.connack.properties.as_ref();
    assert_eq!(told.and_then(|p| p.session_expiry_interval), Some(3_600));
    device
        .client
        .subscribe("command/Pump2/#", QoS5::AtLeastOnce)
        .await
        .expect("subscribe");
    // A command sent while subscribed arrives and is acknowledged, so the
    // next one goes out under packet id 2; the device loses power before
    // acknowledging that one.
    let mut warm_up = None;
    for attempt in 0.. {
        let c = send(&server, "Pump2", 0).await;
        if c.state == CommandState::Sent {
            warm_up = Some(c);
            break;
        }
        // The SUBACK may not have been handled yet.
        assert!(attempt < 50, "never subscribed: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warm_up = warm_up.expect("sent");
    let acked = loop {
        let p = device.next().await;
        if command_id(&p) == warm_up.id {
            break p;
        }
    };
    device.client.ack(&acked).await.expect("ack");
    until_state(&server, &warm_up.id, CommandState::Delivered).await;
    let mut first = None;
    for attempt in 0.. {
        let c = send(&server, "Pump2", 1).await;
        if c.state == CommandState::Sent {
            first = Some(c);
            break;
        }
        // The SUBACK may not have been handled yet.
        assert!(attempt < 50, "never subscribed: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.expect("sent");
    let got = loop {
        let p = device.next().await;
        if command_id(&p) == first.id {
            break p;
        }
    };
    assert!(!got.dup);
    let first_pkid = got.pkid;
    assert_ne!(first_pkid, 1, "a fresh connection's first id would be 1");
    device.vanish();
    until_state(&server, &first.id, CommandState::Queued).await;
    // Another arrives while it is away.
    let second = send(&server, "Pump2", 2).await;
    assert_eq!(second.state, CommandState::Queued);
    server.stop().await.expect("clean stop");

    let server = TestServer::start(Config {
        max_session_expiry_secs: 3_600,
        ..config(&scratch)
    })
    .await;
    let mut device = Client5::connect(server.mqtt, "Pump2", &secret, Some(600)).await;
    assert!(device.connack.session_present, "{:?}", device.connack);
    // Without subscribing again: the unacknowledged one first, flagged
    // DUP under its packet id, then the new one.
    let again = device.next().await;
    assert_eq!(command_id(&again), first.id);
    assert!(again.dup, "{again:?}");
    assert_eq!(again.pkid, first_pkid);
    let new = device.next().await;
    assert_eq!(command_id(&new), second.id);
    assert!(!new.dup);
    device.client.ack(&again).await.expect("ack");
    device.client.ack(&new).await.expect("ack");
    until_state(&server, &first.id, CommandState::Delivered).await;
    until_state(&server, &second.id, CommandState::Delivered).await;
    assert_eq!(
        server.metric("sightline_edge_sessions_resumed_total").await,
        1
    );
    let _ = device.client.disconnect().await;

    // An MQTT 5 session without an expiry ends with its connection.
    let quick = Client5::connect(server.mqtt, "Pump2", &secret, None).await;
    assert!(quick.connack.session_present, "resumed, then not kept");
    let _ = quick.client.disconnect().await;
    wait_for("the session to be forgotten", || async {
        let again = Client5::connect(server.mqtt, "Pump2", &secret, None).await;
        let present = again.connack.session_present;
        let _ = again.client.disconnect().await;
        !present
    })
    .await;
}

/// Logs in on a raw 3.1.1 socket as `client_id` of `device`, with or
/// without a clean session, and returns the socket and whether the server
/// said a session was present.
async fn raw_connect(
    broker: SocketAddr,
    device: &str,
    client_id: &str,
    secret: &str,
    clean: bool,
) -> (TcpStream, bool) {
    let mut socket = TcpStream::connect(broker).await.expect("connect");
    let mut connect = Connect::new(client_id);
    connect.keep_alive = 30;
    connect.clean_session = clean;
    connect.set_login(device, secret);
    write_packet(&mut socket, Packet::Connect(connect)).await;
    match read_packet(&mut socket).await {
        Packet::ConnAck(ack) => {
            assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
            (socket, ack.session_present)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn reading(pkid: u16, dup: bool, kwh: u64) -> Packet {
    let mut p = Publish4::new(
        "sensor/Meter3",
        QoS::AtLeastOnce,
        json!({"kwh": kwh}).to_string(),
    );
    p.pkid = pkid;
    p.dup = dup;
    Packet::Publish(p)
}

#[tokio::test]
async fn a_publish_sent_again_after_a_lost_puback_is_stored_once() {
    let scratch = Scratch::new();
    let server = TestServer::start(config(&scratch)).await;
    let secret = server.add_device("Meter3").await;
    let (mut socket, present) = raw_connect(server.mqtt, "Meter3", "m3", &secret, false).await;
    assert!(!present);
    // The reading carries no timestamp of its own, so only the packet id
    // can tell a retransmission from a new reading.
    write_packet(&mut socket, reading(7, false, 1)).await;
    let url = server.database_url.clone();
    wait_for("the reading to be stored", || async {
        common::stored_values_with_repeats(&url, "Meter3", "kwh").await == [1]
    })
    .await;
    // The PUBACK is lost with the connection.
    drop(socket);

    let (mut socket, present) = raw_connect(server.mqtt, "Meter3", "m3", &secret, false).await;
    assert!(present, "the session was kept");
    write_packet(&mut socket, reading(7, true, 1)).await;
    match read_packet(&mut socket).await {
        Packet::PubAck(a) => assert_eq!(a.pkid, 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // The same id with DUP for another message is not that one sent again
    // (the device had its acknowledgement, used the id again, and lost
    // this one): it is stored.
    write_packet(&mut socket, reading(7, true, 2)).await;
    match read_packet(&mut socket).await {
        Packet::PubAck(a) => assert_eq!(a.pkid, 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    drop(socket);
    wait_for("the second reading", || async {
        common::stored_values_with_repeats(&url, "Meter3", "kwh").await == [1, 2]
    })
    .await;
    // After a restart the session still knows the ids it took.
    all_gone(&server).await;
    server.stop().await.expect("clean stop");
    let server = TestServer::start(config(&scratch)).await;
    let (mut socket, present) = raw_connect(server.mqtt, "Meter3", "m3", &secret, false).await;
    assert!(present);
    write_packet(&mut socket, reading(7, true, 2)).await;
    match read_packet(&mut socket).await {
        Packet::PubAck(a) => assert_eq!(a.pkid, 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    drop(socket);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        common::stored_values_with_repeats(&url, "Meter3", "kwh").await,
        [1, 2]
    );
    assert_eq!(server.metric("sightline_edge_duplicates_total").await, 1);

    // A clean session forgets it all: the next one starts empty.
    let (socket, present) = raw_connect(server.mqtt, "Meter3", "m3", &secret, true).await;
    assert!(!present);
    drop(socket);
    let (_socket, present) = raw_connect(server.mqtt, "Meter3", "m3", &secret, false).await;
    assert!(!present);
}

#[tokio::test]
async fn stored_sessions_and_the_commands_they_keep_are_bounded() {
    let scratch = Scratch::new();
    let server = TestServer::start(Config {
        max_session_queue: 2,
        max_connections_per_device: 2,
        ..config(&scratch)
    })
    .await;
    let secret = server.add_device("Lamp4").await;
    // Three client ids with persistent sessions, one after another: the
    // device keeps two, and the longest-ended goes.
    for id in ["a", "b", "c"] {
        let (socket, present) = raw_connect(server.mqtt, "Lamp4", id, &secret, false).await;
        assert!(!present);
        drop(socket);
        // Each ends (stores its end time) before the next starts.
        all_gone(&server).await;
    }
    assert_eq!(
        server.metric("sightline_edge_sessions_dropped_total").await,
        1
    );
    let (socket, present) = raw_connect(server.mqtt, "Lamp4", "a", &secret, false).await;
    assert!(!present, "the oldest session was dropped");
    drop(socket);
    all_gone(&server).await;

    // A persistent session subscribed to commands keeps at most
    // --max-session-queue of them for the device; more are refused.
    let out = mosquitto_sub(server.mqtt, "Lamp4", &secret, &["-E"]).await;
    assert_eq!(out, "");
    all_gone(&server).await;
    for n in 0..2 {
        assert_eq!(send(&server, "Lamp4", n).await.state, CommandState::Queued);
    }
    let (status, body) = post(&server, "Lamp4", 2).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("--max-session-queue")),
        "{body}"
    );
    assert_eq!(
        server.metric("sightline_commands_queue_full_total").await,
        1
    );
}

/// The session store's statements on SQLite and, where CI provides it,
/// PostgreSQL: a session resumes as saved, a clean start or an expiry
/// forgets it, a device keeps a bounded number, and only a live session
/// subscribed to commands keeps them.
#[tokio::test]
async fn the_session_store_works_on_both_databases() {
    use server::store::sessions::SessionState;
    let mut dbs = vec![common::TestDb::sqlite()];
    dbs.extend(common::TestDb::postgres().await);
    for db in dbs {
        let store = server::store::Store::open(&db.url).await.expect("open");
        store.add_device("Fan5", 1).await.expect("add");
        let now = 1_000_000;
        assert_eq!(
            store
                .open_session("Fan5", "x", (60, 1), false, 2)
                .await
                .expect("open"),
            0
        );
        assert!(!store
            .session_keeps_commands("Fan5", now)
            .await
            .expect("keeps"));
        let state = SessionState {
            subscriptions: vec![("command/Fan5/#".into(), 1)],
            in_flight: vec![(3, "c1".into())],
            received: vec![(7, 70), (9, u64::MAX)],
        };
        // Only the connection that holds the row may write it: a late save
        // by one that was replaced changes nothing.
        store
            .save_session("Fan5", "x", &state, Some(1), Some(now))
            .await
            .expect("save");
        store
            .save_session("Fan5", "x", &SessionState::default(), Some(2), Some(now))
            .await
            .expect("save");
        assert!(store
            .session_keeps_commands("Fan5", now)
            .await
            .expect("keeps"));
        // Expired a minute after it ended.
        assert!(!store
            .session_keeps_commands("Fan5", now + 60_000)
            .await
            .expect("keeps"));
        let resumed = store.take_session("Fan5", "x", now + 1, true).await;
        assert_eq!(resumed.expect("take"), Some(state.clone()), "{}", db.url);
        // A clean start forgets it.
        let clean = store.take_session("Fan5", "x", now + 2, false).await;
        assert_eq!(clean.expect("take"), None);
        assert_eq!(
            store
                .take_session("Fan5", "x", now + 3, true)
                .await
                .expect("take"),
            None
        );
        // An expired one is not resumed, and goes.
        store
            .open_session("Fan5", "y", (1, 3), false, 2)
            .await
            .expect("open");
        store
            .save_session("Fan5", "y", &state, None, Some(now))
            .await
            .expect("save");
        assert_eq!(
            store
                .take_session("Fan5", "y", now + 1_000, true)
                .await
                .expect("take"),
            None
        );
        // At most two per device: the longest-ended goes.
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            store
                .open_session("Fan5", id, (60, 4), false, 2)
                .await
                .expect("open");
            let ended = Some(now + i as i64);
            store
                .save_session("Fan5", id, &SessionState::default(), Some(4), ended)
                .await
                .expect("save");
        }
        let kept_a = store.take_session("Fan5", "a", now + 10, true).await;
        assert_eq!(kept_a.expect("take"), None, "a was dropped for c");
        let kept_c = store.take_session("Fan5", "c", now + 10, true).await;
        assert!(kept_c.expect("take").is_some());
        assert_eq!(
            store
                .tidy_sessions(now + 120_000, true)
                .await
                .expect("tidy"),
            2,
            "b and c expired"
        );
    }
}
