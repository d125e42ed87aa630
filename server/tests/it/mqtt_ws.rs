//! MQTT over WebSocket on the HTTP listener, driven with raw MQTT packets
//! in binary WebSocket messages: the same login as TCP (a wrong secret
//! gets CONNACK "bad user name or password"), the same topic rules, a
//! reading stored under the device that logged in, and messages over the
//! packet limit or that are not MQTT end the connection.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, Publish};
use rumqttc::mqttbytes::QoS;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use common::raw::closed_config;
use common::{stored_values, Scratch, TestServer};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/mqtt` with the `mqtt` subprotocol, as MQTT.js and paho do.
async fn open(server: &TestServer) -> Ws {
    let mut request = format!("ws://{}/mqtt", server.http)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().expect("header"));
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"mqtt"[..])
    );
    ws
}

async fn send(ws: &mut Ws, packet: Packet) {
    let mut buf = BytesMut::new();
    packet.write(&mut buf, usize::MAX).expect("encodes");
    ws.send(Message::Binary(buf.freeze())).await.expect("send");
}

/// The next MQTT packet, or `None` once the server has closed.
async fn receive(ws: &mut Ws) -> Option<Packet> {
    let mut buf = BytesMut::new();
    loop {
        match Packet::read(&mut buf, 1 << 20) {
            Ok(p) => return Some(p),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("bad packet: {e}"),
        }
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => buf.extend_from_slice(&bytes),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return None,
            Ok(Some(Ok(other))) => panic!("not MQTT: {other:?}"),
            Err(_) => panic!("nothing from the server in 5 s"),
        }
    }
}

fn connect(device: &str, secret: &str) -> Packet {
    let mut connect = Connect::new(device);
    connect.keep_alive = 30;
    connect.set_login(device, secret);
    Packet::Connect(connect)
}

#[tokio::test]
async fn a_device_logs_in_and_publishes_over_websocket_like_over_tcp() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("WsDevice").await;

    let mut ws = open(&server).await;
    send(&mut ws, connect("WsDevice", "wrong")).await;
    match receive(&mut ws).await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::BadUserNamePassword),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let mut ws = open(&server).await;
    send(&mut ws, connect("WsDevice", &secret)).await;
    match receive(&mut ws).await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut publish = Publish::new("sensor/WsDevice", QoS::AtLeastOnce, r#"{"temp":12}"#);
    publish.pkid = 7;
    send(&mut ws, Packet::Publish(publish)).await;
    match receive(&mut ws).await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.pkid, 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // PUBACK means stored, as on TCP.
    assert_eq!(
        stored_values(&server.database_url, "WsDevice", "temp").await,
        BTreeSet::from([12])
    );
    // Another device's topic ends the connection, as on TCP.
    let mut foreign = Publish::new("sensor/Other", QoS::AtLeastOnce, r#"{"temp":1}"#);
    foreign.pkid = 8;
    send(&mut ws, Packet::Publish(foreign)).await;
    assert!(
        receive(&mut ws).await.is_none(),
        "still open after a foreign topic"
    );
    assert!(stored_values(&server.database_url, "Other", "temp")
        .await
        .is_empty());
}

#[tokio::test]
async fn oversized_or_non_mqtt_messages_end_the_connection() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("WsBig").await;

    // A message above the packet limit (4 x --max-payload-bytes, at least
    // 1 MiB) is refused by the WebSocket itself, before it is buffered.
    let mut ws = open(&server).await;
    send(&mut ws, connect("WsBig", &secret)).await;
    assert!(matches!(receive(&mut ws).await, Some(Packet::ConnAck(_))));
    let _ = ws.send(Message::Binary(vec![0u8; 2 << 20].into())).await;
    assert!(
        receive(&mut ws).await.is_none(),
        "a 2 MiB message was taken"
    );

    // Text is not MQTT.
    let mut ws = open(&server).await;
    send(&mut ws, connect("WsBig", &secret)).await;
    assert!(matches!(receive(&mut ws).await, Some(Packet::ConnAck(_))));
    ws.send(Message::Text("hello".into())).await.expect("send");
    assert!(receive(&mut ws).await.is_none(), "text was taken");

    // The server still serves devices over WebSocket afterwards.
    let mut ws = open(&server).await;
    send(&mut ws, connect("WsBig", &secret)).await;
    assert!(matches!(receive(&mut ws).await, Some(Packet::ConnAck(_))));
}
