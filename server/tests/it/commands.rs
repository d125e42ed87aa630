//! Commands to devices, end to end: the operator's API call, the broker,
//! a real rumqttc (3.1.1 and 5) or mosquitto device, its acknowledgement
//! and answer, and the stored lifecycle.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use app::model::{Command, CommandState};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use server::config::Config;
use server::metrics::read_value;
use tokio::sync::mpsc;

use common::{wait_for, Scratch, TestServer};

/// Devices log in with their secrets, as in production.
fn closed_config(scratch: &Scratch) -> Config {
    Config {
        open_registration: false,
        ..common::test_config(&scratch.sqlite_url())
    }
}

/// A message a test device received: topic, payload and QoS.
type Received = (String, Bytes, QoS);

/// A real MQTT 3.1.1 device (rumqttc) subscribed to `filter`, whose
/// received messages arrive on a channel.
struct TestDevice {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<Received>,
    poller: tokio::task::JoinHandle<()>,
}

impl TestDevice {
    async fn connect(broker: SocketAddr, user: &str, secret: &str, filter: &str, qos: QoS) -> Self {
        let mut options = MqttOptions::new(
            format!("{user}-test"),
            broker.ip().to_string(),
            broker.port(),
        );
        options.set_keep_alive(Duration::from_secs(10));
        options.set_credentials(user, secret);
        let (client, mut events) = AsyncClient::new(options, 100);
        let (tx, received) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        client
            .subscribe(filter, qos)
            .await
            .expect("subscribe queued");
        let poller = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic, p.payload, p.qos));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("test device connection failed: {e}"),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("SUBACK in time")
            .expect("subscribed");
        Self {
            client,
            received,
            poller,
        }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("a command in time")
            .expect("device running")
    }

    async fn publish(&self, topic: &str, payload: Value) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .expect("publish queued");
    }

    /// Drops the connection without DISCONNECT, like a device losing power.
    fn vanish(self) {
        self.poller.abort();
    }
}

/// POSTs a command and returns the status and the body.
async fn post(server: &TestServer, device: &str, body: &str) -> (u16, Value) {
    let response = server
        .client()
        .post(server.url(&format!("/api/devices/{device}/commands")))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// POSTs a command that must be accepted and returns it.
async fn send(server: &TestServer, device: &str, body: Value) -> Command {
    let (status, body) = post(server, device, &body.to_string()).await;
    assert_eq!(status, 201, "{body}");
    serde_json::from_value(body).expect("a command")
}

/// Polls the API until command `id` is in `state`, and returns it.
async fn until_state(server: &TestServer, id: &str, state: CommandState) -> Command {
    let path = format!("/api/commands/{id}");
    wait_for(&format!("command {id} to be {}", state.label()), || async {
        server.get_json::<Command>(&path).await.state == state
    })
    .await;
    server.get_json(&path).await
}

async fn counter(server: &TestServer, name: &str) -> u64 {
    read_value(&server.metrics().await, name).unwrap_or(0)
}

#[tokio::test]
async fn a_one_way_command_is_complete_when_the_device_acknowledges_it() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("D1").await;
    let mut device =
        TestDevice::connect(server.mqtt, "D1", &secret, "command/D1", QoS::AtLeastOnce).await;

    let sent = send(
        &server,
        "D1",
        json!({"name": "reboot", "params": {"delay": 5}, "two_way": false}),
    )
    .await;
    assert_eq!(sent.state, CommandState::Sent, "the device is subscribed");

    let (topic, payload, qos) = device.next().await;
    assert_eq!(topic, "command/D1");
    assert_eq!(qos, QoS::AtLeastOnce, "delivery is tracked with a PUBACK");
    let payload: Value = serde_json::from_slice(&payload).expect("JSON");
    assert_eq!(
        payload,
        json!({"id": sent.id, "name": "reboot", "params": {"delay": 5}})
    );

    let done = until_state(&server, &sent.id, CommandState::Delivered).await;
    assert!(done.is_final(), "a one-way command ends at delivery");
    let (sent_at, delivered_at) = (
        done.sent_at.expect("sent"),
        done.delivered_at.expect("delivered"),
    );
    assert!(done.created_at <= sent_at && sent_at <= delivered_at);
    assert_eq!(done.completed_at, Some(delivered_at));
    assert_eq!(
        counter(&server, "sightline_commands_delivered_total").await,
        1
    );

    // The device page's list shows it, newest first.
    let list: Vec<Command> = server.get_json("/api/devices/D1/commands").await;
    assert_eq!(list.first().map(|c| c.id.as_str()), Some(sent.id.as_str()));
}

#[tokio::test]
async fn a_two_way_command_is_answered_or_expires_and_late_answers_are_refused() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("D2").await;
    let mut device =
        TestDevice::connect(server.mqtt, "D2", &secret, "command/D2", QoS::AtLeastOnce).await;

    let asked = send(&server, "D2", json!({"name": "ping"})).await;
    let (_, payload, _) = device.next().await;
    let id = serde_json::from_slice::<Value>(&payload).expect("JSON")["id"].clone();
    assert_eq!(id, json!(asked.id));
    device
        .publish(
            "command/D2/response",
            json!({"id": id, "result": {"pong": 1}}),
        )
        .await;
    let answered = until_state(&server, &asked.id, CommandState::Answered).await;
    assert_eq!(answered.response, Some(json!({"pong": 1})));
    assert!(answered.delivered_at.is_some() && answered.completed_at.is_some());

    // An error answer fails the command with the device's words.
    let failing = send(&server, "D2", json!({"name": "calibrate"})).await;
    device.next().await;
    device
        .publish(
            "command/D2/response",
            json!({"id": failing.id, "error": "sensor busy"}),
        )
        .await;
    let failed = until_state(&server, &failing.id, CommandState::Failed).await;
    assert_eq!(
        failed.error.as_deref(),
        Some("the device answered: sensor busy")
    );

    // No answer: it expires at its timeout, after being delivered.
    let ignored = send(&server, "D2", json!({"name": "ping", "timeout_ms": 600})).await;
    device.next().await;
    until_state(&server, &ignored.id, CommandState::Delivered).await;
    let expired = until_state(&server, &ignored.id, CommandState::Expired).await;
    assert_eq!(expired.error.as_deref(), Some("no answer within 0.6 s"));
    let waited = expired.completed_at.expect("completed") - expired.sent_at.expect("sent");
    assert!((600..3000).contains(&waited), "expired after {waited} ms");

    // Answers for an expired command, an unknown id, or in bad JSON are
    // refused and counted; the device stays connected and is still heard.
    device
        .publish(
            "command/D2/response",
            json!({"id": ignored.id, "result": 1}),
        )
        .await;
    device
        .publish(
            "command/D2/response",
            json!({"id": "no-such-id", "result": 1}),
        )
        .await;
    device
        .client
        .publish("command/D2/response", QoS::AtLeastOnce, false, "{not json")
        .await
        .expect("queued");
    wait_for("3 refused answers", || async {
        counter(&server, "sightline_command_answers_rejected_total").await == 3
    })
    .await;
    let again = send(&server, "D2", json!({"name": "ping"})).await;
    device.next().await;
    device
        .publish(
            "command/D2/response",
            json!({"id": again.id, "result": "ok"}),
        )
        .await;
    until_state(&server, &again.id, CommandState::Answered).await;
    assert_eq!(
        server
            .get_json::<Command>(&format!("/api/commands/{}", ignored.id))
            .await
            .state,
        CommandState::Expired,
        "a late answer does not revive an expired command"
    );
}

#[tokio::test]
async fn a_persistent_command_waits_for_an_offline_device_even_across_a_restart() {
    let scratch = Scratch::new();
    persistent_across_restart(&scratch.sqlite_url(), "D3").await;
}

/// The same on PostgreSQL, whose SQL for commands is written by hand too.
#[tokio::test]
async fn a_persistent_command_waits_across_a_restart_on_postgres() {
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    persistent_across_restart(&db.url, "Cmd-1").await;
}

async fn persistent_across_restart(database_url: &str, id: &str) {
    let config = || Config {
        open_registration: false,
        ..common::test_config(database_url)
    };
    let server = TestServer::start(config()).await;
    let secret = server.add_device(id).await;

    // Offline: a plain command fails at once and says why; a persistent one
    // waits.
    let plain = send(&server, id, json!({"name": "ping"})).await;
    assert_eq!(plain.state, CommandState::Failed);
    assert!(
        plain.error.as_deref().unwrap_or("").contains("persistent"),
        "{plain:?}"
    );
    let waiting = send(
        &server,
        id,
        json!({"name": "set_interval", "params": {"ms": 250}, "persistent": true, "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(waiting.state, CommandState::Queued);
    let short = send(
        &server,
        id,
        json!({"name": "ping", "persistent": true, "ttl_ms": 1000}),
    )
    .await;
    let expired = until_state(&server, &short.id, CommandState::Expired).await;
    assert_eq!(
        expired.error.as_deref(),
        Some("not delivered within its TTL of 1 s")
    );

    // The queued command survives a restart of the server.
    server.stop().await.expect("clean stop");
    let server = TestServer::start(config()).await;
    assert_eq!(
        server
            .get_json::<Command>(&format!("/api/commands/{}", waiting.id))
            .await
            .state,
        CommandState::Queued
    );

    let filter = format!("command/{id}");
    let mut device = TestDevice::connect(server.mqtt, id, &secret, &filter, QoS::AtLeastOnce).await;
    let (_, payload, _) = device.next().await;
    let payload: Value = serde_json::from_slice(&payload).expect("JSON");
    assert_eq!(payload["id"], json!(waiting.id));
    assert_eq!(payload["params"], json!({"ms": 250}));
    device
        .publish(
            &format!("command/{id}/response"),
            json!({"id": waiting.id, "result": {"interval_ms": 250}}),
        )
        .await;
    let answered = until_state(&server, &waiting.id, CommandState::Answered).await;
    assert!(answered.sent_at.expect("sent") >= answered.created_at);
    assert_eq!(answered.response, Some(json!({"interval_ms": 250})));
    // The expired one is never delivered.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), device.next())
            .await
            .is_err(),
        "only the live command reaches the device"
    );
    // The history lists all three, newest first, as stored.
    let list: Vec<Command> = server
        .get_json(&format!("/api/devices/{id}/commands"))
        .await;
    let states: Vec<CommandState> = list.iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [
            CommandState::Expired,
            CommandState::Answered,
            CommandState::Failed
        ]
    );
}

#[tokio::test]
async fn a_persistent_command_sent_to_a_device_that_vanishes_is_sent_again() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("D4").await;

    // The first connection receives the command but never acknowledges it:
    // rumqttc with manual acks, and the socket dropped.
    let mut options =
        MqttOptions::new("d4-first", server.mqtt.ip().to_string(), server.mqtt.port());
    options.set_credentials("D4", secret.as_str());
    options.set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(options, 10);
    client
        .subscribe("command/D4", QoS::AtLeastOnce)
        .await
        .expect("queued");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.expect("connected") {
                return;
            }
        }
    })
    .await
    .expect("SUBACK");
    let command = send(&server, "D4", json!({"name": "ping", "persistent": true})).await;
    let publish = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.expect("connected") {
                return p;
            }
        }
    })
    .await
    .expect("the command arrives");
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    drop(events);
    drop(client);
    let requeued = until_state(&server, &command.id, CommandState::Queued).await;
    assert!(requeued.delivered_at.is_none());

    let mut device =
        TestDevice::connect(server.mqtt, "D4", &secret, "command/D4", QoS::AtLeastOnce).await;
    device.next().await;
    until_state(&server, &command.id, CommandState::Delivered).await;
    device
        .publish(
            "command/D4/response",
            json!({"id": command.id, "result": "pong"}),
        )
        .await;
    until_state(&server, &command.id, CommandState::Answered).await;
    device.vanish();
}

#[tokio::test]
async fn mqtt5_devices_answer_on_the_response_topic_with_correlation_data() {
    use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};

    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("V5").await;
    let mut options = Options5::new("v5", server.mqtt.ip().to_string(), server.mqtt.port());
    options.set_credentials("V5", secret.as_str());
    let (client, mut events) = Client5::new(options, 10);
    client
        .subscribe("command/V5", QoS5::AtLeastOnce)
        .await
        .expect("queued");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event5::Incoming(Packet5::SubAck(_)) = events.poll().await.expect("connected") {
                return;
            }
        }
    })
    .await
    .expect("SUBACK");

    let command = send(&server, "V5", json!({"name": "ping"})).await;
    let publish = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event5::Incoming(Packet5::Publish(p)) = events.poll().await.expect("connected") {
                return p;
            }
        }
    })
    .await
    .expect("the command arrives");
    let properties = publish.properties.expect("MQTT 5 properties");
    let response_topic = properties.response_topic.expect("a response topic");
    let correlation = properties.correlation_data.expect("correlation data");
    assert_eq!(response_topic, "command/V5/response");
    assert_eq!(correlation, Bytes::from(command.id.clone()));

    // The answer carries only the correlation data, not the id.
    let answer = PublishProperties {
        correlation_data: Some(correlation),
        ..PublishProperties::default()
    };
    client
        .publish_with_properties(
            response_topic,
            QoS5::AtLeastOnce,
            false,
            "{\"pong\":7}",
            answer,
        )
        .await
        .expect("queued");
    let answer_acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event5::Incoming(Packet5::PubAck(a)) = events.poll().await.expect("connected") {
                return a;
            }
        }
    })
    .await
    .expect("PUBACK for the answer");
    assert_eq!(
        answer_acked.reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::Success
    );
    let answered = until_state(&server, &command.id, CommandState::Answered).await;
    assert_eq!(answered.response, Some(json!({"pong": 7})));
}

#[tokio::test]
async fn thingsboard_devices_get_rpc_requests_and_answer_them() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let token = server.add_device("TB1").await;
    // ThingsBoard devices log in with the token as the user name.
    let mut device = TestDevice::connect(
        server.mqtt,
        &token,
        "",
        "v1/devices/me/rpc/request/+",
        QoS::AtLeastOnce,
    )
    .await;
    let command = send(
        &server,
        "TB1",
        json!({"name": "setGpio", "params": {"pin": 4, "value": 1}}),
    )
    .await;
    let (topic, payload, _) = device.next().await;
    assert_eq!(topic, format!("v1/devices/me/rpc/request/{}", command.id));
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).expect("JSON"),
        json!({"method": "setGpio", "params": {"pin": 4, "value": 1}})
    );
    device
        .publish(
            &format!("v1/devices/me/rpc/response/{}", command.id),
            json!({"pin": 4, "value": 1}),
        )
        .await;
    let answered = until_state(&server, &command.id, CommandState::Answered).await;
    assert_eq!(answered.response, Some(json!({"pin": 4, "value": 1})));
}

#[tokio::test]
async fn mosquitto_sub_receives_the_payload_the_api_sent() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("Device001").await;
    let port = server.mqtt.port().to_string();
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-p", &port, "-u", "Device001", "-P", &secret])
        .args(["-t", "command/Device001", "-q", "1", "-C", "1", "-W", "15"])
        .kill_on_drop(true)
        .output();
    // Persistent, so it waits for mosquitto_sub to subscribe.
    let sender = async {
        send(
            &server,
            "Device001",
            json!({"name": "set_interval", "params": {"ms": 500}, "two_way": false, "persistent": true}),
        )
        .await
    };
    let (out, command) = tokio::join!(sub, sender);
    let out = out.expect("mosquitto_sub runs (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_str::<Value>(text.trim()).expect("the payload is JSON"),
        json!({"id": command.id, "name": "set_interval", "params": {"ms": 500}})
    );
    until_state(&server, &command.id, CommandState::Delivered).await;
}

#[tokio::test]
async fn bad_commands_get_clear_errors_and_are_counted() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    server.add_device("D5").await;

    let (status, body) = post(&server, "Nobody", r#"{"name":"ping"}"#).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not found")));
    let (status, body) = post(&server, "D5", r#"{"name":"ping","params":{oops}}"#).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("invalid command"),
        "{body}"
    );
    let (status, body) = post(&server, "D5", r#"{"name":"rm -rf /"}"#).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap_or("").contains("not valid"),
        "{body}"
    );
    let (status, body) = post(&server, "D5", r#"{"name":"ping","timeout_ms":-5}"#).await;
    assert_eq!(status, 400, "{body}");
    let big = json!({"name": "load", "params": {"blob": "x".repeat(300 * 1024)}});
    let (status, body) = post(&server, "D5", &big.to_string()).await;
    assert_eq!(status, 413);
    assert!(
        body["error"].as_str().unwrap_or("").contains("limit"),
        "{body}"
    );
    let hostile =
        json!({"name": "ping", "params": {"s": "\u{0}<script>alert(1)</script>\u{202e}"}});
    let (status, body) = post(&server, "D5", &hostile.to_string()).await;
    assert_eq!(status, 201, "hostile text is data, kept as sent: {body}");
    assert_eq!(body["params"], hostile["params"]);

    assert_eq!(
        counter(&server, "sightline_commands_refused_total").await,
        5
    );
    let (status, _) = server
        .get("/api/devices/Nobody/commands")
        .await
        .expect("request");
    assert_eq!(status, 404);
    let (status, _) = server.get("/api/commands/nothing").await.expect("request");
    assert_eq!(status, 404);
    let (status, _) = server.get("/api/health").await.expect("request");
    assert_eq!(status, 200, "the server keeps serving");
}

/// The next thing the silent test connection saw: `None` for its SUBACK,
/// or a command's payload.
async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Option<Bytes>>) -> Option<Bytes> {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("in time")
        .expect("running")
}

/// Runs `sightline command …` against the test server.
async fn cli(server: &TestServer, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sightline"))
        .arg("command")
        .args(args)
        .args(["--server", &server.url("")])
        .env("SIGHTLINE_TOKEN", &server.token)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run sightline");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_cli_sends_a_command_waits_for_its_outcome_and_lists_history() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("D6").await;
    let mut device =
        TestDevice::connect(server.mqtt, "D6", &secret, "command/D6", QoS::AtLeastOnce).await;
    let answerer = async {
        let (_, payload, _) = device.next().await;
        let id = serde_json::from_slice::<Value>(&payload).expect("JSON")["id"].clone();
        device
            .publish(
                "command/D6/response",
                json!({"id": id, "result": {"pong": 3}}),
            )
            .await;
    };
    let ((ok, text), ()) = tokio::join!(cli(&server, &["send", "D6", "ping"]), answerer);
    assert!(ok, "{text}");
    assert!(
        text.contains("answered") && text.contains("{\"pong\":3}"),
        "{text}"
    );

    // Nobody answers: the CLI waits out the timeout and fails.
    let (ok, text) = cli(
        &server,
        &["send", "D6", "ping", "{\"n\":1}", "--timeout", "0.5"],
    )
    .await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("expired") && text.contains("no answer within 0.5 s"),
        "{text}"
    );
    let (ok, text) = cli(&server, &["send", "D6", "ping", "{broken"]).await;
    assert!(!ok && text.contains("not valid JSON"), "{text}");
    let (ok, text) = cli(&server, &["send", "Nobody", "ping"]).await;
    assert!(!ok && text.contains("404"), "{text}");

    let (ok, text) = cli(&server, &["list", "D6"]).await;
    assert!(ok, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("expired") && lines[1].contains("answered"),
        "{text}"
    );
}

#[tokio::test]
async fn a_persistent_command_to_a_silent_session_is_sent_again_not_expired() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("D7").await;

    // A connection that stays open but never acknowledges, like one whose
    // network died before the keep-alive noticed.
    let mut options = MqttOptions::new(
        "d7-silent",
        server.mqtt.ip().to_string(),
        server.mqtt.port(),
    );
    options.set_credentials("D7", secret.as_str());
    options.set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(options, 10);
    client
        .subscribe("command/D7", QoS::AtLeastOnce)
        .await
        .expect("queued");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let silent = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = seen_tx.send(None);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = seen_tx.send(Some(p.payload));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    assert!(next_seen(&mut seen).await.is_none(), "SUBACK first");

    let command = send(
        &server,
        "D7",
        json!({"name": "ping", "persistent": true, "timeout_ms": 500, "ttl_ms": 60000}),
    )
    .await;
    let first = next_seen(&mut seen).await.expect("the command");
    // Not acknowledged within 0.5 s: sent again, still within its TTL.
    let again = next_seen(&mut seen).await.expect("the command again");
    assert_eq!(first, again);
    let now = server
        .get_json::<Command>(&format!("/api/commands/{}", command.id))
        .await;
    assert!(
        matches!(now.state, CommandState::Sent | CommandState::Queued),
        "{now:?}"
    );

    // The device comes back on a new connection while the silent one is
    // still open: the new session gets the command and answers it.
    let mut device =
        TestDevice::connect(server.mqtt, "D7", &secret, "command/D7", QoS::AtLeastOnce).await;
    let (_, payload, _) = device.next().await;
    assert_eq!(payload, first);
    device
        .publish(
            "command/D7/response",
            json!({"id": command.id, "result": "pong"}),
        )
        .await;
    let answered = until_state(&server, &command.id, CommandState::Answered).await;
    assert_eq!(answered.response, Some(json!("pong")));
    silent.abort();
}

/// Finished commands are deleted with the raw readings of their time;
/// a command still waiting for its device is kept whatever its age.
async fn finished_commands_are_pruned_with_raw_readings(url: &str, device: &str) {
    use server::store::retention::Policy;
    const DAY: i64 = 86_400_000;
    let store = server::store::Store::open(url).await.expect("open");
    let now = server::clock::now_ms();
    store.add_device(device, now).await.expect("device");
    let command =
        |n: u32, state: CommandState, created_at: i64, completed_at: Option<i64>| Command {
            id: format!("{device}-{n}"),
            device: device.to_owned(),
            name: "ping".into(),
            params: json!({}),
            two_way: true,
            persistent: true,
            timeout_ms: 30_000,
            ttl_ms: 30 * DAY,
            state,
            created_at,
            sent_at: None,
            delivered_at: None,
            completed_at,
            response: None,
            error: completed_at.map(|_| "old".to_owned()),
        };
    let old_finished = command(
        1,
        CommandState::Expired,
        now - 10 * DAY,
        Some(now - 9 * DAY),
    );
    let old_waiting = command(2, CommandState::Queued, now - 10 * DAY, None);
    let recent = command(3, CommandState::Failed, now - 1000, Some(now - 900));
    for c in [&old_finished, &old_waiting, &recent] {
        assert!(store.save_command(c).await.expect("save"));
    }
    let policy = Policy {
        raw_ms: Some(DAY),
        rollups_ms: None,
    };
    let pruned = store.prune(policy, now).await.expect("prune");
    assert!(pruned.commands >= 1, "{pruned:?}");
    assert!(store
        .command(&old_finished.id)
        .await
        .expect("read")
        .is_none());
    assert!(store
        .command(&old_waiting.id)
        .await
        .expect("read")
        .is_some());
    assert!(store.command(&recent.id).await.expect("read").is_some());
}

#[tokio::test]
async fn finished_commands_follow_raw_retention() {
    let scratch = Scratch::new();
    finished_commands_are_pruned_with_raw_readings(&scratch.sqlite_url(), "R1").await;
    if let Some(db) = common::TestDb::postgres().await {
        finished_commands_are_pruned_with_raw_readings(&db.url, "Ret-1").await;
    }
}
