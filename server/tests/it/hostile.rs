//! What a hostile or careless client meets: every resource it could make
//! the server hold is bounded by a setting and counted when hit, a device
//! flushing a backlog is slowed rather than cut off, and nobody can lock
//! the owner of an account out or write forged lines into the audit log.
//! Each test reproduces one finding of a review run against a live server.

use crate::common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use app::model::DeviceDetail;
use bytes::BytesMut;
use reqwest::header::{LOCATION, ORIGIN};
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::QoS;
use rumqttc::{ConnectReturnCode, SubscribeReasonCode};
use serde_json::Value;
use server::metrics::read_value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::raw::{closed_config, raw_login, raw_login_at, read_packet, write_packet};
use common::{test_config, wait_for, Scratch, TestServer, ADMIN_PASSWORD};

/// Whether the server closes `socket` within `limit`; whatever it sends
/// before closing is skipped.
async fn closes_within(socket: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = vec![0u8; 64 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A raw MQTT 3.1.1 login under `client_id`, returning the socket and the
/// CONNACK's code.
async fn connect_as(
    server: &TestServer,
    client_id: &str,
    device: &str,
    secret: &str,
    keep_alive: u16,
) -> (TcpStream, ConnectReturnCode) {
    let mut socket = TcpStream::connect(server.mqtt).await.expect("connect");
    let mut connect = Connect::new(client_id);
    connect.keep_alive = keep_alive;
    connect.set_login(device, secret);
    write_packet(&mut socket, Packet::Connect(connect)).await;
    match read_packet(&mut socket).await {
        Packet::ConnAck(ack) => (socket, ack.code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn subscribe(pkid: u16, filters: impl IntoIterator<Item = String>) -> Packet {
    let mut packet = Subscribe::new_many(
        filters
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce)),
    );
    packet.pkid = pkid;
    Packet::Subscribe(packet)
}

#[tokio::test]
async fn a_subscribe_flood_is_cut_off_and_pins_no_memory() {
    // The server runs as its own process, so that its memory is its own.
    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    let (_child_kept, http, mqtt) = common::spawn_server(&url, &[]).await;
    let pid = _child_kept.id().expect("server pid");
    let api = common::api_client(&url).await;
    let created: Value = api
        .post(format!("http://{http}/api/devices"))
        .json(&serde_json::json!({"id": "Dev1"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let before = common::rss_of(pid);

    // Three SUBSCRIBEs of about 40,000 invented filters each (about 1 MiB):
    // once this grew the server by 800 MB for good, since the router keeps
    // a commit log per filter. Now such a packet closes the connection.
    for k in 0..3 {
        let mut socket = raw_login_at(mqtt, "Dev1", &secret, 30, None).await;
        let filters = (0..40_000).map(|i| format!("command/Dev1/r{k}x{i}"));
        write_packet(&mut socket, subscribe(1, filters)).await;
        assert!(
            closes_within(&mut socket, Duration::from_secs(5)).await,
            "a SUBSCRIBE of 40,000 filters closes the connection"
        );
    }

    // Invented filters one at a time are refused: only the filters that
    // receive commands are granted.
    let mut socket = raw_login_at(mqtt, "Dev1", &secret, 30, None).await;
    for (pkid, filter) in [(2, "command/Dev1/x1"), (3, "command/Dev1/+")] {
        write_packet(&mut socket, subscribe(pkid, [filter.to_owned()])).await;
        match read_packet(&mut socket).await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.return_codes, [SubscribeReasonCode::Failure], "{filter}");
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
    write_packet(&mut socket, subscribe(4, ["command/Dev1/#".to_owned()])).await;
    match read_packet(&mut socket).await {
        Packet::SubAck(ack) => assert_eq!(
            ack.return_codes,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    let grown_mib = common::rss_of(pid).saturating_sub(before) / 1024;
    assert!(grown_mib < 32, "the server grew by {grown_mib} MiB");
    let metrics = common::metrics_at(&api, http).await;
    assert_eq!(
        read_value(&metrics, "sightline_edge_subscribe_abuse_total"),
        Some(3),
        "{metrics}"
    );
    println!("3 SUBSCRIBE floods of 40,000 filters: the server grew by {grown_mib} MiB");
}

#[tokio::test]
async fn a_session_holds_at_most_its_subscriptions() {
    let scratch = Scratch::new();
    let mut config = closed_config(&scratch);
    config.max_subscriptions = 1;
    let server = TestServer::start(config).await;
    let secret = server.add_device("Sub").await;
    let mut socket = raw_login(&server, "Sub", &secret, 30, None).await;
    write_packet(&mut socket, subscribe(1, ["command/Sub".to_owned()])).await;
    let Packet::SubAck(first) = read_packet(&mut socket).await else {
        panic!("expected SUBACK");
    };
    assert_eq!(
        first.return_codes,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    write_packet(&mut socket, subscribe(2, ["command/Sub/#".to_owned()])).await;
    let Packet::SubAck(second) = read_packet(&mut socket).await else {
        panic!("expected SUBACK");
    };
    assert_eq!(second.return_codes, [SubscribeReasonCode::Failure]);
    let metrics = server.metrics().await;
    assert_eq!(
        read_value(&metrics, "sightline_edge_subscriptions_refused_total"),
        Some(1)
    );
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_device_cannot_grow_its_series_without_bound() {
    let scratch = Scratch::new();
    let mut config = test_config(&scratch.sqlite_url());
    config.max_series_per_device = 10;
    let server = TestServer::start(config.clone()).await;
    let device = server.device("Many").await;
    // 20 messages of 20 new metric names each: 400 names asked for.
    for i in 0..20 {
        let fields: serde_json::Map<String, Value> = (0..20)
            .map(|j| (format!("m{i}_{j}"), Value::from(j)))
            .collect();
        device
            .publish("sensor/Many", Value::Object(fields).to_string())
            .await;
    }
    wait_for("20 acknowledgements", || async {
        device.acked.load(std::sync::atomic::Ordering::Relaxed) == 20
    })
    .await;
    let detail: DeviceDetail = server.get_json("/api/devices/Many").await;
    assert_eq!(detail.series.len(), 10, "the first ten names only");
    let metrics = server.metrics().await;
    assert_eq!(
        read_value(&metrics, "sightline_series_refused_total"),
        Some(390)
    );

    // Its existing metrics keep working.
    device.publish("sensor/Many/m0_0", "42").await;
    wait_for("the existing metric's reading", || async {
        let detail: DeviceDetail = server.get_json("/api/devices/Many").await;
        detail
            .series
            .iter()
            .any(|s| s.metric == "m0_0" && s.points.iter().any(|p| p.1 == 42.0))
    })
    .await;
    device.disconnect().await;
    server.stop().await.expect("clean shutdown");

    // After a restart the limit still counts what is stored.
    let server = TestServer::start(config).await;
    let device = server.device("Many").await;
    device.publish("sensor/Many/fresh", "1").await;
    wait_for("the acknowledgement", || async {
        device.acked.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    let detail: DeviceDetail = server.get_json("/api/devices/Many").await;
    assert_eq!(detail.series.len(), 10);
    let metrics = server.metrics().await;
    assert_eq!(
        read_value(&metrics, "sightline_series_refused_total"),
        Some(1)
    );
    device.disconnect().await;
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_and_a_device_holds_few() {
    let scratch = Scratch::new();
    let mut config = closed_config(&scratch);
    config.max_keep_alive_secs = 1;
    config.packet_timeout_secs = 1;
    config.max_connections_per_device = 2;
    let server = TestServer::start(config).await;
    let secret = server.add_device("Idle").await;

    // Keep-alive 0 asks for no timeout at all; it gets the server's 1 s,
    // so silence ends the connection after 1.5 s.
    let mut silent = raw_login(&server, "Idle", &secret, 0, None).await;
    let started = Instant::now();
    assert!(closes_within(&mut silent, Duration::from_secs(4)).await);
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1400),
        "closed after {after:?}"
    );

    // MQTT 5 clients are told the keep-alive the server uses.
    {
        use rumqttc::v5::mqttbytes::v5::{Connect as Connect5, Login, Packet as Packet5};
        let mut socket = TcpStream::connect(server.mqtt).await.expect("connect");
        let connect = Connect5 {
            keep_alive: 0,
            client_id: "idle5".into(),
            clean_start: true,
            properties: None,
        };
        let mut out = BytesMut::new();
        Packet5::Connect(connect, None, Some(Login::new("Idle", secret.as_str())))
            .write(&mut out, None)
            .expect("encodes");
        socket.write_all(&out).await.expect("write");
        let mut buf = BytesMut::new();
        let ack = loop {
            match Packet5::read(&mut buf, None) {
                Ok(Packet5::ConnAck(ack)) => break ack,
                Ok(other) => panic!("expected CONNACK, got {other:?}"),
                Err(_) => {
                    let n = socket.read_buf(&mut buf).await.expect("read");
                    assert!(n > 0, "closed before CONNACK");
                }
            }
        };
        assert_eq!(
            ack.properties.and_then(|p| p.server_keep_alive),
            Some(1),
            "Server Keep Alive"
        );
    }

    // A PUBLISH announcing 500,000 bytes, of which 1,000 arrive, is
    // dropped with its connection after the packet timeout, not held.
    let mut partial = raw_login(&server, "Idle", &secret, 60, None).await;
    let mut header = vec![0x30];
    let mut remaining = 500_000usize;
    while remaining > 0 {
        let mut byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining > 0 {
            byte |= 0x80;
        }
        header.push(byte);
    }
    partial.write_all(&header).await.expect("write");
    partial.write_all(&[b'x'; 1000]).await.expect("write");
    assert!(
        closes_within(&mut partial, Duration::from_secs(4)).await,
        "a half-sent packet is not held"
    );
    drop(silent);
    drop(partial);

    // Two connections of one device at once, under different client ids;
    // the third is refused, and the same client id still takes over.
    wait_for("the earlier connections to end", || async {
        read_value(&server.metrics().await, "sightline_devices_connected") == Some(0)
    })
    .await;
    let (_one, code) = connect_as(&server, "c1", "Idle", &secret, 30).await;
    assert_eq!(code, ConnectReturnCode::Success);
    let (_two, code) = connect_as(&server, "c2", "Idle", &secret, 30).await;
    assert_eq!(code, ConnectReturnCode::Success);
    let (_three, code) = connect_as(&server, "c3", "Idle", &secret, 30).await;
    assert_eq!(code, ConnectReturnCode::ServiceUnavailable);
    let (_again, code) = connect_as(&server, "c1", "Idle", &secret, 30).await;
    assert_eq!(code, ConnectReturnCode::Success, "a takeover is no new one");

    let metrics = server.metrics().await;
    assert_eq!(
        read_value(&metrics, "sightline_edge_packet_timeouts_total"),
        Some(1)
    );
    assert_eq!(
        read_value(&metrics, "sightline_edge_device_connections_refused_total"),
        Some(1)
    );
    server.stop().await.expect("clean shutdown");
}

/// Encodes `count` QoS 1 publishes of `device`, packet ids from `first`.
fn publishes(device: &str, first: u16, count: u16) -> BytesMut {
    let mut out = BytesMut::new();
    for i in 0..count {
        let mut p = Publish::new(
            format!("sensor/{device}/n"),
            QoS::AtLeastOnce,
            i.to_string(),
        );
        p.pkid = first + i;
        Packet::Publish(p)
            .write(&mut out, usize::MAX)
            .expect("encodes");
    }
    out
}

/// Reads PUBACKs until `count` distinct packet ids are acknowledged;
/// `Err` with how many came if the server closes first.
async fn acks(rd: &mut tokio::net::tcp::OwnedReadHalf, count: usize) -> Result<(), usize> {
    let mut buf = BytesMut::new();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < count {
        match Packet::read(&mut buf, 1 << 20) {
            Ok(Packet::PubAck(ack)) => {
                seen.insert(ack.pkid);
            }
            Ok(_) => {}
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return Err(seen.len()),
                    Ok(_) => {}
                }
            }
            Err(e) => panic!("bad packet: {e}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_backlog_is_stored_at_the_allowed_rate_without_a_disconnect() {
    const BACKLOG: u16 = 50_000;
    const RATE: f64 = 10_000.0;
    let scratch = Scratch::new();
    let mut config = closed_config(&scratch);
    config.max_publish_rate = RATE;
    let server = TestServer::start(config).await;
    let secret = server.add_device("Back").await;
    let calm = server.add_device("Calm").await;

    // The whole backlog is written as fast as the socket takes it, without
    // waiting for any acknowledgement.
    let socket = raw_login(&server, "Back", &secret, 30, None).await;
    let (mut rd, mut wr) = socket.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        wr.write_all(&publishes("Back", 1, BACKLOG))
            .await
            .expect("the server keeps reading, slowly");
        wr
    });

    // Meanwhile another device is not slowed down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = raw_login(&server, "Calm", &calm, 30, None).await;
    let (mut other_rd, mut other_wr) = other.into_split();
    let calm_started = Instant::now();
    other_wr
        .write_all(&publishes("Calm", 1, 10))
        .await
        .expect("write");
    tokio::time::timeout(Duration::from_secs(1), acks(&mut other_rd, 10))
        .await
        .expect("another device's readings are acknowledged within a second")
        .expect("and it stays connected");
    let calm_took = calm_started.elapsed();

    let stored = tokio::time::timeout(Duration::from_secs(60), acks(&mut rd, BACKLOG.into()))
        .await
        .expect("the backlog is acknowledged within a minute");
    if let Err(n) = stored {
        panic!("disconnected after {n} acknowledgements");
    }
    let took = started.elapsed();
    let mut wr = writer.await.expect("writer");

    // At no more than the rate: all but one second's burst waited for it.
    let least = Duration::from_secs_f64((f64::from(BACKLOG) - RATE) / RATE * 0.95);
    assert!(took >= least, "stored in {took:?}, faster than the rate");
    // Still connected: a ping is answered.
    let mut ping = BytesMut::new();
    Packet::PingReq
        .write(&mut ping, usize::MAX)
        .expect("encodes");
    wr.write_all(&ping).await.expect("write");
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), rd.read_exact(&mut pong))
        .await
        .expect("PINGRESP in time")
        .expect("still connected");
    assert_eq!(pong, [0xD0, 0x00]);

    let metrics = server.metrics().await;
    assert!(
        read_value(&metrics, "sightline_readings_stored_total") >= Some(u64::from(BACKLOG) + 10),
        "{metrics}"
    );
    assert!(read_value(&metrics, "sightline_edge_throttled_total") >= Some(1));
    println!("backlog of {BACKLOG} stored in {took:?}; the other device's 10 in {calm_took:?}");
    server.stop().await.expect("clean shutdown");
}

/// A client whose connections come from `ip` (any 127.x address works on
/// loopback), which does not follow redirects.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in through the form; `Ok` if it succeeded, else where it was sent.
async fn sign_in_from(
    server: &TestServer,
    client: &reqwest::Client,
    name: &str,
    password: &str,
) -> Result<(), String> {
    let response = client
        .post(server.url("/login"))
        .header(ORIGIN, server.url(""))
        .form(&[("name", name), ("password", password), ("next", "/")])
        .send()
        .await
        .expect("sign in");
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if location == "/" {
        Ok(())
    } else {
        Err(location)
    }
}

#[tokio::test]
async fn a_guesser_cannot_lock_the_owner_out() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let owner = client_from("127.0.0.1");
    let attacker = client_from("127.0.0.2");
    sign_in_from(&server, &owner, "admin", ADMIN_PASSWORD)
        .await
        .expect("the owner signs in from their usual address");

    for _ in 0..5 {
        assert_eq!(
            sign_in_from(&server, &attacker, "admin", "a guess").await,
            Err("/login?error=invalid&name=admin&next=/".to_owned())
        );
    }
    assert_eq!(
        sign_in_from(&server, &attacker, "admin", ADMIN_PASSWORD).await,
        Err("/login?error=throttled&name=admin&next=/".to_owned()),
        "the guesser's address is blocked for the account"
    );
    sign_in_from(&server, &owner, "admin", ADMIN_PASSWORD)
        .await
        .expect("the owner still gets in");

    // Guesses from a hundred addresses reach the account's ceiling: a new
    // address is refused, the owner's usual one is not.
    for i in 0..100 {
        let from = client_from(&format!("127.0.{}.{}", 10 + i / 200, 1 + i % 200));
        let _ = sign_in_from(&server, &from, "admin", "a guess").await;
    }
    assert_eq!(
        sign_in_from(&server, &client_from("127.0.99.1"), "admin", ADMIN_PASSWORD).await,
        Err("/login?error=throttled&name=admin&next=/".to_owned())
    );
    sign_in_from(&server, &owner, "admin", ADMIN_PASSWORD)
        .await
        .expect("the owner gets in from their usual address");
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_failed_sign_in_name_cannot_forge_audit_lines() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let forged = "eve\n2026-12-06 admin login ok\u{202E}txt.exe";
    let _ = sign_in_from(&server, &client_from("127.0.0.3"), forged, "x").await;
    let audit: Vec<Value> = server.get_json("/api/audit?limit=100").await;
    let failed: Vec<&str> = audit
        .iter()
        .filter(|e| e["action"] == "login_failed")
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert_eq!(
        failed,
        ["eve\u{FFFD}2026-12-06 admin login ok\u{FFFD}txt.exe"],
        "{audit:?}"
    );
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_api_token_cannot_mint_accounts_or_reset_passwords() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    {
        let store = server::store::Store::open(&server.database_url)
            .await
            .expect("store");
        server::auth::Auth::new(store, std::sync::Arc::default(), 60)
            .add_account("other", "another long password", app::model::Role::Admin)
            .await
            .expect("second admin");
    }
    let api = server.client();
    let create = api
        .post(server.url("/api/users"))
        .json(&serde_json::json!({"name": "mallory", "password": "mallory's long password", "role": "admin"}))
        .send()
        .await
        .expect("request");
    assert_eq!(create.status().as_u16(), 403);
    let why: Value = create.json().await.expect("json");
    assert!(
        why["error"]
            .as_str()
            .is_some_and(|e| e.contains("dashboard session")),
        "{why}"
    );
    for change in [
        serde_json::json!({"password": "a password mallory knows"}),
        serde_json::json!({"role": "viewer"}),
    ] {
        let status = api
            .patch(server.url("/api/users/other"))
            .json(&change)
            .send()
            .await
            .expect("request")
            .status();
        assert_eq!(status.as_u16(), 403, "{change}");
    }
    let users: Vec<Value> = server.get_json("/api/users").await;
    assert!(users.iter().all(|u| u["name"] != "mallory"), "{users:?}");
    assert!(
        users
            .iter()
            .any(|u| u["name"] == "other" && u["role"] == "admin"),
        "{users:?}"
    );
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn web_clients_are_bounded_in_time_connections_bodies_and_sockets() {
    let scratch = Scratch::new();
    let mut config = closed_config(&scratch);
    config.http_header_timeout_secs = 1;
    config.max_live_sockets_per_account = 2;
    let server = TestServer::start(config).await;

    // Half a request, then nothing: closed after the header timeout.
    let mut slow = TcpStream::connect(server.http).await.expect("connect");
    slow.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    assert!(
        closes_within(&mut slow, Duration::from_secs(4)).await,
        "a half-sent request is not held"
    );

    // A body over the limit (1 MiB by default) is refused unread.
    let big = format!("{{\"id\":\"{}\"}}", "x".repeat(2 << 20));
    let status = server
        .client()
        .post(server.url("/api/devices"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status.as_u16(), 413);

    // Two live sockets per account; the third is refused until one closes.
    let request = || common::socket_request(server.http, &server.token);
    let (one, _) = tokio_tungstenite::connect_async(request())
        .await
        .expect("first socket");
    let (_two, _) = tokio_tungstenite::connect_async(request())
        .await
        .expect("second socket");
    match tokio_tungstenite::connect_async(request()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
        }
        other => panic!("a third socket was not refused: {:?}", other.map(|_| ())),
    }
    drop(one);
    wait_for("a socket's place to free up", || async {
        tokio_tungstenite::connect_async(request()).await.is_ok()
    })
    .await;
    let metrics = server.metrics().await;
    assert!(read_value(&metrics, "sightline_viewers_refused_total") >= Some(1));
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn web_connections_beyond_the_cap_are_closed_at_once() {
    let scratch = Scratch::new();
    let mut config = closed_config(&scratch);
    config.max_http_connections = 4;
    let server = TestServer::start(config).await;
    // The health check that waited for the server may still hold its
    // connection for a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.http).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(server.http).await.expect("connect");
    assert!(
        closes_within(&mut extra, Duration::from_secs(2)).await,
        "a fifth connection is closed at once"
    );
    drop(held);
    wait_for("room for a request", || async {
        server.get("/api/health").await.is_ok_and(|(s, _)| s == 200)
    })
    .await;
    let metrics = server.metrics().await;
    assert!(read_value(&metrics, "sightline_http_over_capacity_total") >= Some(1));
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_server_function_refuses_unreadable_arguments_with_400() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    // Every dashboard server function that takes arguments is sent nothing
    // and an unknown field; those with typed arguments also get a value of
    // the wrong type.
    let functions = [
        "add_account",
        "set_role",
        "remove_account",
        "device",
        "history",
        "add_device",
        "set_enabled",
        "set_label",
        "rotate_secret",
        "delete_device",
        "commands",
        "send_command",
    ];
    let mut requests: Vec<(&str, &str)> = functions
        .iter()
        .flat_map(|f| [(*f, ""), (*f, "unknown=1")])
        .collect();
    requests.extend([
        ("set_enabled", "id=Dev1&enabled=maybe"),
        ("delete_device", "id=Dev1&confirm=Dev1&keep_data=2"),
        ("history", "id=Dev1&window=zz&points=many&tz=UTC"),
        (
            "send_command",
            "id=Dev1&name=ping&params=&two_way=no&persistent=false",
        ),
    ]);
    for (function, body) in requests {
        let response = server
            .client()
            .post(server.url(&format!("/_app/{function}")))
            // Compressed answers must be corrected too.
            .header(reqwest::header::ACCEPT_ENCODING, "gzip")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status().as_u16(),
            400,
            "/_app/{function} with {body:?} is the caller's mistake"
        );
    }
    assert_eq!(server.get("/api/health").await.expect("health").0, 200);
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_account_holds_at_most_its_api_tokens() {
    let scratch = Scratch::new();
    let mut config = closed_config(&scratch);
    config.max_tokens_per_account = 3;
    let server = TestServer::start(config).await;
    // The test server's own admin token is one of the three.
    // Tokens are minted with a dashboard session, so sign in for one.
    let owner = client_from("127.0.0.1");
    let signed_in = owner
        .post(server.url("/login"))
        .header(ORIGIN, server.url(""))
        .form(&[
            ("name", "admin"),
            ("password", ADMIN_PASSWORD),
            ("next", "/"),
        ])
        .send()
        .await
        .expect("sign in");
    let session = signed_in
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let as_owner = |request: reqwest::RequestBuilder| {
        request
            .header(ORIGIN, server.url(""))
            .header(reqwest::header::COOKIE, &session)
    };
    let mint = |label: &'static str| {
        as_owner(owner.post(server.url("/api/tokens")))
            .json(&serde_json::json!({ "label": label }))
            .send()
    };
    let mut ids = Vec::new();
    for label in ["one", "two"] {
        let created = mint(label).await.expect("mint");
        assert_eq!(created.status(), 201, "{label} fits");
        let body: Value = created.json().await.expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    let refused = mint("three").await.expect("mint");
    assert_eq!(refused.status(), 409);
    assert!(refused
        .text()
        .await
        .expect("body")
        .contains("limit of API tokens"));
    // The account page's function is held to the same bound.
    let on_page = as_owner(owner.post(server.url("/_app/add_token")))
        .form(&[("label", "three")])
        .send()
        .await
        .expect("page mint");
    assert_eq!(on_page.status(), 400);
    assert_eq!(server.metric("sightline_api_tokens_refused_total").await, 2);

    // Revoking one makes room for one.
    let revoked = as_owner(owner.delete(server.url(&format!("/api/tokens/{}", ids[0]))))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 204);
    assert_eq!(mint("three").await.expect("mint").status(), 201);
    assert_eq!(mint("four").await.expect("mint").status(), 409);
    server.stop().await.expect("clean shutdown");
}
