//! The device edge with real clients: `mosquitto_pub`/`mosquitto_sub` and
//! rumqttc against the server's own MQTT listener, plain and TLS, plus raw
//! sockets where a test must control every byte (keep-alive, Last Will,
//! idle connections, garbage).

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use app::model::{DeviceDetail, Presence, ServerMsg};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing, QoS,
    SubscribeReasonCode,
};
use server::metrics::read_value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::raw::{closed_config, raw_login, read_packet, write_packet};
use common::{next_matching, spawn_server, test_config, wait_for, Counting, Scratch, TestServer};

/// What a mosquitto client printed, and whether it succeeded.
struct Run {
    ok: bool,
    text: String,
}

/// Runs `mosquitto_pub` or `mosquitto_sub` with a time limit.
async fn mosquitto(program: &str, args: &[&str]) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} timed out"))
    .unwrap_or_else(|e| panic!("cannot run {program} (scripts/setup.sh installs it): {e}"));
    Run {
        ok: out.status.success(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn options(broker: SocketAddr, client_id: &str, login: Option<(&str, &str)>) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    o.set_keep_alive(Duration::from_secs(10));
    if let Some((user, password)) = login {
        o.set_credentials(user, password);
    }
    o
}

/// Connects with rumqttc and returns `None` if the server accepted, or the
/// CONNACK code it refused with.
async fn connack(
    broker: SocketAddr,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Option<ConnectReturnCode> {
    let (_client, mut events) = AsyncClient::new(options(broker, client_id, login), 10);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(rumqttc::Packet::ConnAck(_))) => return None,
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Some(code),
                Err(e) => panic!("expected a CONNACK, got {e}"),
            }
        }
    })
    .await
    .expect("a CONNACK in time")
}

/// Polls a client's event loop until the server's CONNACK arrives.
async fn until_connected(events: &mut rumqttc::EventLoop) {
    loop {
        if let Event::Incoming(rumqttc::Packet::ConnAck(_)) = events.poll().await.expect("connects")
        {
            return;
        }
    }
}

/// Whether the server ends a client's connection within `secs` seconds.
async fn ends_within(events: &mut rumqttc::EventLoop, secs: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(secs), async {
        while events.poll().await.is_ok() {}
    })
    .await
    .is_ok()
}

async fn set_enabled(server: &TestServer, id: &str, enabled: bool) {
    let status = server
        .client()
        .put(server.url(&format!("/api/devices/{id}/enabled")))
        .json(&enabled)
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status.as_u16(), 204);
}

fn refused_for(metrics: &str, device: &str) -> u64 {
    let prefix = format!("sightline_device_refused_total{{device=\"{device}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn wrong_unknown_or_disabled_credentials_get_a_connack_refusal() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("A").await;
    let port = server.mqtt.port().to_string();
    let publish = |user: &'static str, password: String| {
        let port = port.clone();
        async move {
            mosquitto(
                "mosquitto_pub",
                &[
                    "-p",
                    &port,
                    "-u",
                    user,
                    "-P",
                    &password,
                    "-t",
                    "sensor/A",
                    "-m",
                    "{\"temp\":1}",
                ],
            )
            .await
        }
    };

    let wrong = publish("A", "wrong".into()).await;
    assert!(!wrong.ok, "{}", wrong.text);
    assert!(
        wrong.text.contains("bad user name or password"),
        "mosquitto_pub says why: {}",
        wrong.text
    );
    for login in [("nobody", "x"), ("A", "wrong")] {
        assert_eq!(
            connack(server.mqtt, "c1", Some(login)).await,
            Some(ConnectReturnCode::BadUserNamePassword),
            "{login:?}"
        );
    }
    assert_eq!(
        connack(server.mqtt, "A", None).await,
        Some(ConnectReturnCode::NotAuthorized),
        "no credentials, no open registration"
    );

    // Disabling a device also ends the connection it has open.
    let (_held, mut held_events) =
        AsyncClient::new(options(server.mqtt, "held", Some(("A", &secret))), 10);
    until_connected(&mut held_events).await;
    set_enabled(&server, "A", false).await;
    assert!(
        ends_within(&mut held_events, 2).await,
        "the disabled device's connection was ended"
    );
    let detail: DeviceDetail = server.get_json("/api/devices/A").await;
    assert_eq!(
        detail.summary.presence.and_then(|p| p.reason).as_deref(),
        Some("device disabled")
    );
    assert_eq!(
        connack(server.mqtt, "c2", Some(("A", &secret))).await,
        Some(ConnectReturnCode::NotAuthorized),
        "a disabled device is refused even with its secret"
    );
    // ThingsBoard style, the secret as the user name: the refusal is
    // charged to A, never to a "device" named after the secret.
    assert_eq!(
        connack(server.mqtt, "c2b", Some((&secret, ""))).await,
        Some(ConnectReturnCode::NotAuthorized),
    );
    let disabled = publish("A", secret.clone()).await;
    assert!(
        !disabled.ok && disabled.text.contains("not authorised"),
        "{}",
        disabled.text
    );
    set_enabled(&server, "A", true).await;
    assert_eq!(connack(server.mqtt, "c3", Some(("A", &secret))).await, None);
    assert!(publish("A", secret.clone()).await.ok);

    let metrics = server.metrics().await;
    assert_eq!(
        read_value(&metrics, "sightline_edge_logins_refused_total"),
        Some(7)
    );
    assert_eq!(
        refused_for(&metrics, "A"),
        5,
        "refusals naming A: {metrics}"
    );
    assert!(!metrics.contains(&secret), "the secret is on /metrics");
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn open_registration_never_hands_out_a_name_that_has_a_secret() {
    let scratch = Scratch::new();
    let server = TestServer::start(test_config(&scratch.sqlite_url())).await;
    let secret = server.add_device("Sec").await;
    assert_eq!(
        connack(server.mqtt, "x", Some(("Sec", ""))).await,
        Some(ConnectReturnCode::BadUserNamePassword),
        "a secured name without its secret"
    );
    // An anonymous client naming the secured device in a topic is cut off.
    let port = server.mqtt.port().to_string();
    let spoof = mosquitto(
        "mosquitto_pub",
        &[
            "-p",
            &port,
            "-q",
            "1",
            "-t",
            "sensor/Sec",
            "-m",
            "{\"temp\":66}",
        ],
    )
    .await;
    assert!(!spoof.ok, "{}", spoof.text);
    let free = mosquitto(
        "mosquitto_pub",
        &[
            "-p",
            &port,
            "-q",
            "1",
            "-t",
            "sensor/Free",
            "-m",
            "{\"temp\":1}",
        ],
    )
    .await;
    assert!(free.ok, "an unclaimed name is open: {}", free.text);
    let sec: DeviceDetail = server.get_json("/api/devices/Sec").await;
    assert!(sec.series.is_empty(), "nothing stored for Sec: {sec:?}");
    // The owner still gets in, until the device is disabled.
    assert_eq!(
        connack(server.mqtt, "y", Some(("Sec", &secret))).await,
        None
    );
    set_enabled(&server, "Sec", false).await;
    assert_eq!(
        connack(server.mqtt, "z", Some(("Sec", &secret))).await,
        Some(ConnectReturnCode::NotAuthorized)
    );
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_device_stays_inside_its_own_topics() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let a = server.add_device("A").await;
    server.add_device("B").await;
    let port = server.mqtt.port().to_string();

    let sub = mosquitto(
        "mosquitto_sub",
        &[
            "-p", &port, "-u", "A", "-P", &a, "-t", "sensor/#", "-W", "2",
        ],
    )
    .await;
    assert!(
        sub.text.contains("All subscription requests were denied"),
        "{}",
        sub.text
    );
    let spoof = mosquitto(
        "mosquitto_pub",
        &[
            "-p",
            &port,
            "-u",
            "A",
            "-P",
            &a,
            "-q",
            "1",
            "-t",
            "sensor/B",
            "-m",
            "{\"temp\":66}",
        ],
    )
    .await;
    assert!(
        !spoof.ok,
        "publishing as another device ends the connection: {}",
        spoof.text
    );

    // rumqttc: a mixed SUBSCRIBE gets one code per filter.
    let (client, mut events) = AsyncClient::new(options(server.mqtt, "a1", Some(("A", &a))), 10);
    client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("sensor/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("command/A".into(), QoS::AtMostOnce),
            rumqttc::SubscribeFilter::new("command/B".into(), QoS::AtMostOnce),
        ])
        .await
        .expect("queued");
    client
        .publish("sensor/B/temp", QoS::AtLeastOnce, false, "67")
        .await
        .expect("queued");
    let mut codes = None;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(rumqttc::Packet::SubAck(ack))) => codes = Some(ack.return_codes),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the spoofing publish closed the connection");
    assert_eq!(
        codes.expect("a SUBACK"),
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtMostOnce),
            SubscribeReasonCode::Failure
        ]
    );

    // A's own topic still works, and nothing was ever stored for B.
    let own = mosquitto(
        "mosquitto_pub",
        &[
            "-p",
            &port,
            "-u",
            "A",
            "-P",
            &a,
            "-q",
            "1",
            "-t",
            "sensor/A",
            "-m",
            "{\"temp\":21}",
        ],
    )
    .await;
    assert!(own.ok, "{}", own.text);
    let detail: DeviceDetail = server.get_json("/api/devices/A").await;
    assert_eq!(detail.summary.latest[0].value, 21.0);
    let b: DeviceDetail = server.get_json("/api/devices/B").await;
    assert!(b.series.is_empty(), "nothing stored for B: {b:?}");

    let metrics = server.metrics().await;
    assert_eq!(read_value(&metrics, "sightline_edge_denied_total"), Some(5));
    assert_eq!(refused_for(&metrics, "A"), 5, "each refusal counted for A");
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_thingsboard_device_publishes_with_its_token_under_its_own_id() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let token = server.add_device("TB1").await;
    let port = server.mqtt.port().to_string();
    let ts = server::clock::now_ms() - 60_000;
    let payload = format!(r#"[{{"ts":{ts},"values":{{"temp":21.5}}}},{{"hum":40}}]"#);
    let run = mosquitto(
        "mosquitto_pub",
        &[
            "-p",
            &port,
            "-u",
            &token,
            "-q",
            "1",
            "-t",
            "v1/devices/me/telemetry",
            "-m",
            &payload,
        ],
    )
    .await;
    assert!(run.ok, "{}", run.text);
    let detail: DeviceDetail = server.get_json("/api/devices/TB1").await;
    let latest: Vec<(String, f64)> = detail
        .summary
        .latest
        .iter()
        .map(|l| (l.metric.clone(), l.value))
        .collect();
    assert_eq!(latest, vec![("hum".into(), 40.0), ("temp".into(), 21.5)]);
    let temp = detail.summary.latest.iter().find(|l| l.metric == "temp");
    assert_eq!(temp.map(|l| l.ts), Some(ts), "the device's own timestamp");

    // rumqttc, token as user name and an empty password, QoS 1.
    let (client, mut events) = AsyncClient::new(options(server.mqtt, "tb", Some((&token, ""))), 10);
    client
        .publish(
            "v1/devices/me/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"hum":41}"#,
        )
        .await
        .expect("queued");
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(rumqttc::Packet::PubAck(_)) = events.poll().await.expect("poll")
            {
                return;
            }
        }
    })
    .await
    .expect("acknowledged");
    let detail: DeviceDetail = server.get_json("/api/devices/TB1").await;
    assert_eq!(detail.summary.latest[0].value, 41.0, "stored under TB1");
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn tls_works_with_the_dev_ca_only_and_an_idle_socket_blocks_nobody() {
    let scratch = Scratch::new();
    let certs = scratch.path("certs");
    let files =
        server::edge::tls::write_dev_cert(&certs, &["localhost".into(), "127.0.0.1".into()])
            .expect("dev certificate");
    let mut config = closed_config(&scratch);
    config.tls_cert = Some(files.cert.clone());
    config.tls_key = Some(files.key.clone());
    config.mqtt_plaintext = false;
    let server = TestServer::start(config).await;
    let secret = server.add_device("S").await;
    let mqtts = server.mqtts.expect("TLS listener").port().to_string();
    let ca = files.ca.to_string_lossy().into_owned();

    // Two sockets that never finish a handshake: one silent, one that
    // stops half way through a ClientHello.
    let _idle = TcpStream::connect(server.mqtts.expect("TLS"))
        .await
        .expect("idle");
    let mut half = TcpStream::connect(server.mqtts.expect("TLS"))
        .await
        .expect("half");
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("partial hello");

    let started = Instant::now();
    let ok = mosquitto(
        "mosquitto_pub",
        &[
            "--cafile",
            &ca,
            "-h",
            "127.0.0.1",
            "-p",
            &mqtts,
            "-u",
            "S",
            "-P",
            &secret,
            "-q",
            "1",
            "-t",
            "sensor/S",
            "-m",
            "{\"temp\":7}",
        ],
    )
    .await;
    let took = started.elapsed();
    assert!(ok.ok, "{}", ok.text);
    assert!(
        took < Duration::from_secs(1),
        "a TLS client behind idle sockets connected and published in {took:?}"
    );
    let detail: DeviceDetail = server.get_json("/api/devices/S").await;
    assert_eq!(detail.summary.latest[0].value, 7.0);

    // rumqttc over TLS, trusting the dev CA, also behind the idle sockets.
    let mqtts_addr = server.mqtts.expect("TLS");
    let started = Instant::now();
    let trusted = tls_connack(mqtts_addr, &secret, Some(&files.ca)).await;
    assert!(trusted.is_ok(), "{trusted:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let refused = tls_connack(mqtts_addr, &secret, None).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
        "without the dev CA the handshake fails: {refused:?}"
    );

    let untrusted = mosquitto(
        "mosquitto_pub",
        &[
            "--capath",
            "/etc/ssl/certs",
            "-h",
            "127.0.0.1",
            "-p",
            &mqtts,
            "-u",
            "S",
            "-P",
            &secret,
            "-q",
            "1",
            "-t",
            "sensor/S",
            "-m",
            "{\"temp\":8}",
        ],
    )
    .await;
    assert!(
        !untrusted.ok,
        "without the dev CA the server is not trusted"
    );

    // HTTPS, with the same certificate, also behind an idle socket.
    let https = server.https.expect("HTTPS listener");
    let _idle_https = TcpStream::connect(https).await.expect("idle https");
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", &ca])
        .arg(format!("https://127.0.0.1:{}/api/health", https.port()))
        .output()
        .await
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "ok",
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    let detail: DeviceDetail = server.get_json("/api/devices/S").await;
    assert_eq!(
        detail.summary.latest[0].value, 7.0,
        "the untrusted publish never arrived"
    );
    server.stop().await.expect("clean shutdown");
}

/// Connects as device S over TLS with rumqttc, trusting `ca` (or nothing),
/// and returns whether the server accepted, or the client's error.
async fn tls_connack(
    broker: SocketAddr,
    secret: &str,
    ca: Option<&std::path::Path>,
) -> Result<(), String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::{crypto::ring, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    if let Some(ca) = ca {
        for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
            roots.add(cert.expect("ca cert")).expect("add ca");
        }
    }
    let config = ClientConfig::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut o = options(broker, "s-tls", Some(("S", secret)));
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
    ));
    let (_client, mut events) = AsyncClient::new(o, 10);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("{e:?}")),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()))
}

/// The next presence change of `device` on a live socket.
async fn presence_of(ws: &mut common::Ws, device: &str) -> Presence {
    next_matching(ws, |msg| match msg {
        ServerMsg::Presence { devices } => devices.into_iter().find(|p| p.device == device),
        _ => None,
    })
    .await
}

/// The next presence change of `device`, which must come within a second
/// of the call (the event that causes it having just happened).
async fn presence_within_a_second(ws: &mut common::Ws, device: &str) -> Presence {
    tokio::time::timeout(Duration::from_secs(1), presence_of(ws, device))
        .await
        .unwrap_or_else(|_| panic!("no presence change of {device} within a second"))
}

#[tokio::test]
async fn online_and_offline_reach_the_dashboard_within_a_second() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("KA").await;
    let mut ws = server
        .live(r#"{"type":"subscribe","devices":["KA"]}"#)
        .await;

    // A rumqttc device with a 1 s keep-alive whose event loop stops being
    // polled after CONNACK, so it never sends PINGREQ: a hung device.
    let connected = Instant::now();
    let mut o = options(server.mqtt, "ka", Some(("KA", &secret)));
    o.set_keep_alive(Duration::from_secs(1));
    let (_client, mut events) = AsyncClient::new(o, 10);
    until_connected(&mut events).await;
    let online = presence_of(&mut ws, "KA").await;
    assert!(
        online.online && online.connected_since.is_some(),
        "{online:?}"
    );
    assert!(
        connected.elapsed() < Duration::from_secs(1),
        "online shown {:?} after CONNECT",
        connected.elapsed()
    );

    // Silence: keep-alive 1 s, so the server gives up after 1.5 s.
    let offline = presence_of(&mut ws, "KA").await;
    let after = connected.elapsed();
    assert!(!offline.online, "{offline:?}");
    assert_eq!(offline.reason.as_deref(), Some("keep-alive expired"));
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_millis(2500),
        "offline shown {after:?} after CONNECT; expiry is at 1.5 s"
    );
    drop(events);
    let metrics = server.metrics().await;
    assert_eq!(
        read_value(&metrics, "sightline_edge_keepalive_expired_total"),
        Some(1)
    );

    // The page data agrees.
    let detail: DeviceDetail = server.get_json("/api/devices/KA").await;
    let p = detail.summary.presence.expect("presence");
    assert!(!p.online);
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_last_will_is_stored_when_the_socket_drops_but_not_after_disconnect() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("W").await;
    let mut ws = server.live(r#"{"type":"subscribe","devices":["W"]}"#).await;
    let will = || {
        Some(LastWill::new(
            "sensor/W",
            r#"{"online":0}"#,
            QoS::AtLeastOnce,
            false,
        ))
    };

    // Each change reaches the dashboard within a second, as README says.
    let socket = raw_login(&server, "W", &secret, 30, will()).await;
    assert!(presence_within_a_second(&mut ws, "W").await.online);
    drop(socket);
    let gone = presence_within_a_second(&mut ws, "W").await;
    assert_eq!(gone.reason.as_deref(), Some("connection lost"));
    wait_for("the will to be stored", || async {
        let d: DeviceDetail = server.get_json("/api/devices/W").await;
        d.summary
            .latest
            .iter()
            .any(|l| l.metric == "online" && l.value == 0.0)
    })
    .await;

    // A clean DISCONNECT discards the will.
    let mut socket = raw_login(&server, "W", &secret, 30, will()).await;
    assert!(presence_within_a_second(&mut ws, "W").await.online);
    write_packet(&mut socket, Packet::Disconnect).await;
    let gone = presence_within_a_second(&mut ws, "W").await;
    assert_eq!(gone.reason.as_deref(), Some("disconnected"));
    let metrics = server.metrics().await;
    assert_eq!(read_value(&metrics, "sightline_edge_wills_total"), Some(1));
    let d: DeviceDetail = server.get_json("/api/devices/W").await;
    assert_eq!(d.series[0].points.len(), 1, "one will reading, not two");
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn limits_are_answered_counted_and_leave_other_devices_alone() {
    let scratch = Scratch::new();
    let mut config = closed_config(&scratch);
    config.max_connections = 2;
    let server = TestServer::start(config).await;
    let fast = server.add_device("Fast").await;
    let calm = server.add_device("Calm").await;
    let big = server.add_device("Big").await;

    // SUBSCRIBE over its rate (10/s with a burst of 10) is abuse, not a
    // backlog: disconnected and counted. (Publishing too fast only slows a
    // device down; see `hostile.rs`.)
    let (client, mut events) =
        AsyncClient::new(options(server.mqtt, "f", Some(("Fast", &fast))), 200);
    for _ in 0..100 {
        client
            .subscribe("command/Fast", QoS::AtLeastOnce)
            .await
            .expect("queued");
    }
    assert!(
        ends_within(&mut events, 5).await,
        "a device flooding SUBSCRIBE is disconnected"
    );
    drop(events);

    // A packet over the limit (1 MiB here): disconnected and counted.
    let mut o = options(server.mqtt, "b", Some(("Big", &big)));
    o.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut events) = AsyncClient::new(o, 10);
    client
        .publish("sensor/Big/n", QoS::AtMostOnce, false, vec![b'1'; 2 << 20])
        .await
        .expect("queued");
    assert!(
        ends_within(&mut events, 5).await,
        "an oversized packet ends the connection"
    );
    drop(events);

    // At the connection limit, the next device hears "server unavailable".
    let _one = raw_login(&server, "Calm", &calm, 30, None).await;
    let _two = raw_login(&server, "Fast", &fast, 30, None).await;
    assert_eq!(
        connack(server.mqtt, "x", Some(("Big", &big))).await,
        Some(ConnectReturnCode::ServiceUnavailable)
    );
    drop(_two);
    wait_for("a slot to free up", || async {
        connack(server.mqtt, "y", Some(("Big", &big)))
            .await
            .is_none()
    })
    .await;

    let metrics = server.metrics().await;
    assert_eq!(
        read_value(&metrics, "sightline_edge_subscribe_abuse_total"),
        Some(1)
    );
    assert_eq!(
        read_value(&metrics, "sightline_edge_too_large_total"),
        Some(1)
    );
    assert!(read_value(&metrics, "sightline_edge_over_capacity_total") >= Some(1));
    assert_eq!(server.get("/api/health").await.expect("health").0, 200);
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn every_acknowledged_reading_survives_kill_9() {
    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    let fast = ["--max-publish-rate", "1000000"];
    let (mut server, _, mqtt) = spawn_server(&url, &fast).await;
    let device = Counting::start(mqtt, "Durable");
    let publisher = {
        let client = device.client.clone();
        tokio::spawn(async move {
            // 10 readings every millisecond: fast enough that the writer
            // always has a batch in flight when the server dies, so an
            // acknowledgement sent before its commit would show up here.
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut i = 0u64;
            loop {
                tick.tick().await;
                for _ in 0..10 {
                    let sent = client
                        .publish("sensor/Durable/n", QoS::AtLeastOnce, false, i.to_string())
                        .await;
                    if sent.is_err() {
                        return;
                    }
                    i += 1;
                }
            }
        })
    };
    wait_for("a steady stream of acknowledgements", || async {
        device.acked.lock().expect("lock").len() >= 2000
    })
    .await;
    // Stall the database (as a slow disk or a long query would) by taking
    // SQLite's write lock, while the device keeps publishing, and kill the
    // server in the middle of the stall. Readings received during the stall
    // cannot be committed, so a server that acknowledged on receipt would
    // lose every one of them here.
    use sea_orm::ConnectionTrait;
    let lock = sea_orm::Database::connect(&url).await.expect("open db");
    lock.execute_unprepared("BEGIN IMMEDIATE")
        .await
        .expect("write lock");
    // Kill only once many publishes are out and unacknowledged: the window
    // in which a PUBACK sent before the commit would be a lie.
    let unacked = || {
        let acked = device.acked.lock().expect("lock").len() as u64;
        device.sent.load(std::sync::atomic::Ordering::Relaxed) - acked
    };
    wait_for("publishes waiting for their commit", || async {
        unacked() >= 50
    })
    .await;
    server.start_kill().expect("SIGKILL");
    server.wait().await.expect("killed");
    publisher.abort();
    lock.execute_unprepared("ROLLBACK").await.expect("unlock");
    drop(lock);
    let acked = device.acked.lock().expect("lock").clone();
    let sent = device.sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent >= acked.len() as u64 + 50,
        "at the kill, only {} of {sent} publishes were waiting for a PUBACK",
        sent - acked.len() as u64
    );

    let (_restarted, http, _) = spawn_server(&url, &fast).await;
    let response = common::api_client(&url)
        .await
        .get(format!("http://{http}/api/devices/Durable"))
        .send()
        .await
        .expect("request");
    // A 404 means the device never reached the database at all.
    let stored: BTreeSet<u64> = if response.status().as_u16() == 404 {
        BTreeSet::new()
    } else {
        let detail: DeviceDetail = response.json().await.expect("json");
        detail.series[0]
            .points
            .iter()
            .map(|(_, v)| *v as u64)
            .collect()
    };
    let missing: Vec<&u64> = acked.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged readings missing after kill -9: {:?}",
        missing.len(),
        acked.len(),
        missing.iter().take(10).collect::<Vec<_>>()
    );
    println!(
        "kill -9 mid-stream: {} acknowledged, {} stored, none missing",
        acked.len(),
        stored.len()
    );
}

/// A device whose connection died before a PUBACK reached it sends the
/// message again on its next connection, with the same packet id and
/// often without the DUP flag (rumqttc never sets it). Within the first
/// `--redelivery-window` publishes of a connection, a reading already
/// stored exactly (same series, `ts` and value) is acknowledged but not
/// stored twice, whether it was stored before or earlier in the same
/// batch; anything that differs is a new reading and is stored.
async fn a_message_sent_again_after_a_lost_puback_is_stored_once(db: common::TestDb) {
    let config = server::config::Config {
        redelivery_window: 8,
        ..test_config(&db.url)
    };
    let server = TestServer::start(config).await;
    let ts = chrono::Utc::now().timestamp_millis() - 60_000;
    let message = |pkid: u16, body: String| {
        let mut p = rumqttc::Publish::new("sensor/Again", QoS::AtLeastOnce, body);
        p.pkid = pkid;
        Packet::Publish(p)
    };
    let stamped = |t: u64, at: i64| format!(r#"{{"t":{t},"ts":{at}}}"#);

    // The first connection: both messages are stored and acknowledged,
    // but the device never hears it (the socket just goes away).
    let mut first = connect_as(server.mqtt, "Again").await;
    send_and_await_acks(
        &mut first,
        vec![message(1, stamped(1, ts)), message(2, r#"{"t":2}"#.into())],
    )
    .await;
    drop(first);

    let mut second = connect_as(server.mqtt, "Again").await;
    send_and_await_acks(
        &mut second,
        vec![
            // Sent again, exactly: not stored again.
            message(1, stamped(1, ts)),
            // Stamped by the server on arrival, so a new reading each time.
            message(2, r#"{"t":2}"#.into()),
            // The same time with another value is another reading.
            message(3, stamped(3, ts)),
            // A repeat within one connection, likely in one batch.
            message(4, stamped(4, ts + 1)),
            message(5, stamped(4, ts + 1)),
        ],
    )
    .await;
    send_and_await_acks(
        &mut second,
        vec![
            message(6, stamped(6, ts + 6)),
            message(7, stamped(7, ts + 7)),
            message(8, stamped(8, ts + 8)),
            // The ninth publish is past the window: nothing is looked up.
            message(9, stamped(1, ts)),
        ],
    )
    .await;

    let mut stored = common::stored_values_with_repeats(&db.url, "Again", "t").await;
    stored.sort_unstable();
    assert_eq!(stored, [1, 1, 2, 2, 3, 4, 6, 7, 8]);
    let metrics = server.metrics().await;
    assert_eq!(
        read_value(&metrics, "sightline_readings_redelivered_total"),
        Some(2),
        "{metrics}"
    );
    let c: app::model::Counters = server.get_json("/api/stats").await;
    assert_eq!((c.received, c.stored), (11, 9), "{c:?}");
    server.stop().await.expect("clean shutdown");
}

/// Logs in under open registration as `device`, on a raw socket.
async fn connect_as(mqtt: SocketAddr, device: &str) -> TcpStream {
    let mut socket = TcpStream::connect(mqtt).await.expect("connect");
    write_packet(&mut socket, Packet::Connect(Connect::new(device))).await;
    match read_packet(&mut socket).await {
        Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    socket
}

/// Writes `packets` (QoS 1 publishes) in one go and reads a PUBACK for
/// each, in order.
async fn send_and_await_acks(socket: &mut TcpStream, packets: Vec<Packet>) {
    let mut out = BytesMut::new();
    let mut want = Vec::new();
    for packet in packets {
        if let Packet::Publish(p) = &packet {
            want.push(p.pkid);
        }
        packet.write(&mut out, usize::MAX).expect("encodes");
    }
    socket.write_all(&out).await.expect("write");
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    while got.len() < want.len() {
        match Packet::read(&mut buf, 1 << 20) {
            Ok(Packet::PubAck(ack)) => got.push(ack.pkid),
            Ok(other) => panic!("expected PUBACK, got {other:?}"),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                let n = tokio::time::timeout(Duration::from_secs(10), socket.read_buf(&mut buf))
                    .await
                    .expect("PUBACKs within 10 s")
                    .expect("read");
                assert!(n > 0, "closed before every PUBACK");
            }
            Err(e) => panic!("bad packet: {e}"),
        }
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn redeliveries_are_stored_once_on_sqlite() {
    a_message_sent_again_after_a_lost_puback_is_stored_once(common::TestDb::sqlite()).await;
}

#[tokio::test]
async fn redeliveries_are_stored_once_on_postgres() {
    if let Some(db) = common::TestDb::postgres().await {
        a_message_sent_again_after_a_lost_puback_is_stored_once(db).await;
    }
}

/// QoS 2: the PUBREC is the acknowledgement, so it too waits for the
/// commit. While SQLite's write lock is held elsewhere nothing can be
/// committed, and no PUBREC may arrive; once the lock is released the
/// PUBREC comes, the device's PUBREL gets its PUBCOMP, and the reading is
/// stored once.
#[tokio::test]
async fn qos2_is_acknowledged_only_after_commit() {
    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    let server = TestServer::start(test_config(&url)).await;
    let (client, mut events) = AsyncClient::new(options(server.mqtt, "Exact", None), 10);
    until_connected(&mut events).await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            let name = match event {
                Event::Incoming(rumqttc::Packet::PubRec(_)) => "PUBREC",
                Event::Outgoing(Outgoing::PubRel(_)) => "PUBREL",
                Event::Incoming(rumqttc::Packet::PubComp(_)) => "PUBCOMP",
                _ => continue,
            };
            if seen_tx.send(name).is_err() {
                return;
            }
        }
    });

    use sea_orm::ConnectionTrait;
    let lock = sea_orm::Database::connect(&url).await.expect("open db");
    lock.execute_unprepared("BEGIN IMMEDIATE")
        .await
        .expect("write lock");
    client
        .publish("sensor/Exact", QoS::ExactlyOnce, false, r#"{"temp":2}"#)
        .await
        .expect("queued");
    wait_for("the reading to reach ingest", || async {
        server
            .get_json::<app::model::Counters>("/api/stats")
            .await
            .received
            == 1
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), seen.recv())
            .await
            .is_err(),
        "a PUBREC came while the reading could not be committed"
    );
    lock.execute_unprepared("ROLLBACK").await.expect("unlock");
    let mut order = Vec::new();
    while order.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the QoS 2 exchange completes")
            .expect("client running");
        order.push(next);
    }
    assert_eq!(order, ["PUBREC", "PUBREL", "PUBCOMP"]);
    let c: app::model::Counters = server.get_json("/api/stats").await;
    assert_eq!(c.stored, 1, "{c:?}");
    server.stop().await.expect("clean shutdown");
}

#[test]
fn arbitrary_bytes_never_hurt_the_listener() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as Cases, TestCaseError, TestRunner};

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let scratch = Scratch::new();
    let server = runtime.block_on(TestServer::start(test_config(&scratch.sqlite_url())));
    let mqtt = server.mqtt;
    let mut connect = BytesMut::new();
    Packet::Connect(Connect::new("Fuzz"))
        .write(&mut connect, usize::MAX)
        .expect("encodes");
    let connect = connect.to_vec();

    // Cases: raw garbage, or garbage after a valid CONNECT (so the session's
    // packet handling sees it), or a valid CONNECT then a PUBLISH with an
    // arbitrary payload (so decoding sees it). PROPTEST_CASES raises the
    // count for longer runs.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let mut runner = TestRunner::new(Cases::with_cases(cases));
    let strategy = (0u8..3, proptest::collection::vec(any::<u8>(), 0..600));
    runner
        .run(&strategy, |(shape, bytes)| {
            let mut input = Vec::new();
            match shape {
                0 => input.extend(&bytes),
                1 => {
                    input.extend(&connect);
                    input.extend(&bytes);
                }
                _ => {
                    input.extend(&connect);
                    let mut publish = BytesMut::new();
                    Packet::Publish(rumqttc::Publish::new("sensor/Fuzz", QoS::AtMostOnce, bytes))
                        .write(&mut publish, usize::MAX)
                        .expect("encodes");
                    input.extend(&publish);
                }
            }
            let answer = runtime.block_on(async {
                let mut socket = TcpStream::connect(mqtt).await.expect("connect");
                // The server may close as soon as it sees garbage, before
                // all of it is written; that is an answer, not a failure.
                let _ = socket.write_all(&input).await;
                let _ = socket.shutdown().await;
                closed_within(&mut socket, Duration::from_secs(2)).await
            });
            // Whatever the bytes, the server ends the connection once the
            // client has finished sending: a hung session fails the case.
            let Some(answer) = answer else {
                return Err(TestCaseError::fail(
                    "the connection was still open after 2 s",
                ));
            };
            // After a valid CONNECT, the first thing the client hears is
            // its CONNACK (success: open registration is on).
            if shape > 0 {
                prop_assert!(
                    answer.starts_with(&[0x20, 0x02, 0x00, 0x00]),
                    "no CONNACK first: {:?}",
                    &answer[..answer.len().min(8)]
                );
            }
            Ok(())
        })
        .expect("no case failed");

    // Still serving: a real device publishes and its reading is stored.
    runtime.block_on(async move {
        let device = server.device("AfterFuzz").await;
        device.publish("sensor/AfterFuzz", "{\"temp\":1}").await;
        wait_for("a reading after the fuzzing", || async {
            server
                .get("/api/devices/AfterFuzz")
                .await
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        })
        .await;
        assert_eq!(server.get("/api/health").await.expect("health").0, 200);
        server.stop().await.expect("clean shutdown");
    });
}

#[tokio::test]
async fn mqtt5_devices_get_mqtt5_reason_codes() {
    use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode as Code5, DisconnectReasonCode, Packet as Packet5, PubAckReason,
        SubscribeReasonCode as Sub5, UnsubAckReason,
    };
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{
        AsyncClient as Client5, ConnectionError as Error5, Event as Event5,
        MqttOptions as Options5, StateError,
    };

    let scratch = Scratch::new();
    let mut config = closed_config(&scratch);
    // A writer that rests after each commit, so that the last good reading
    // below is still uncommitted when its device is cut off.
    config.write_pause = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let secret = server.add_device("V5").await;
    server.add_device("Other").await;
    let port = server.mqtt.port().to_string();

    let wrong = mosquitto(
        "mosquitto_pub",
        &[
            "-V",
            "mqttv5",
            "-p",
            &port,
            "-u",
            "V5",
            "-P",
            "wrong",
            "-t",
            "sensor/V5",
            "-m",
            "1",
        ],
    )
    .await;
    assert!(!wrong.ok);
    assert!(
        wrong
            .text
            .to_lowercase()
            .contains("bad user name or password"),
        "{}",
        wrong.text
    );
    let good = mosquitto(
        "mosquitto_pub",
        &[
            "-V",
            "mqttv5",
            "-p",
            &port,
            "-u",
            "V5",
            "-P",
            &secret,
            "-q",
            "1",
            "-t",
            "sensor/V5",
            "-m",
            "{\"temp\":5}",
        ],
    )
    .await;
    assert!(good.ok, "{}", good.text);

    let options = |password: &str| {
        let mut o = Options5::new("v5", server.mqtt.ip().to_string(), server.mqtt.port());
        o.set_credentials("V5", password);
        o
    };
    let (_c, mut events) = Client5::new(options("wrong"), 10);
    let refused = loop {
        match events.poll().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            refused,
            Error5::ConnectionRefused(Code5::BadUserNamePassword)
        ),
        "{refused:?}"
    );

    let (client, mut events) = Client5::new(options(&secret), 10);
    client
        .subscribe("sensor/#", QoS5::AtMostOnce)
        .await
        .expect("queued");
    client.unsubscribe("sensor/#").await.expect("queued");
    client
        .publish("sensor/V5", QoS5::AtLeastOnce, false, "not json")
        .await
        .expect("queued");
    client
        .publish("sensor/V5", QoS5::AtLeastOnce, false, r#"{"temp":6}"#)
        .await
        .expect("queued");
    let mut suback = None;
    let mut unsuback = None;
    let mut assigned = None;
    let mut pubacks = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while pubacks.len() < 2 {
            match events.poll().await.expect("connected") {
                Event5::Incoming(Packet5::ConnAck(ack)) => {
                    assigned = ack.properties.and_then(|p| p.assigned_client_identifier)
                }
                Event5::Incoming(Packet5::SubAck(ack)) => suback = Some(ack.return_codes),
                Event5::Incoming(Packet5::UnsubAck(ack)) => unsuback = Some(ack.reasons),
                Event5::Incoming(Packet5::PubAck(ack)) => pubacks.push(ack.reason),
                _ => {}
            }
        }
    })
    .await
    .expect("two PUBACKs");
    assert_eq!(suback, Some(vec![Sub5::NotAuthorized]));
    assert_eq!(
        unsuback,
        Some(vec![UnsubAckReason::NoSubscriptionExisted]),
        "nothing to unsubscribe from: the filter was refused"
    );
    assert_eq!(assigned, None, "the client named itself");
    assert_eq!(
        pubacks,
        vec![PubAckReason::PayloadFormatInvalid, PubAckReason::Success],
        "a payload with no usable reading is acknowledged as invalid"
    );

    // A good reading and then a foreign topic, back to back: the device is
    // cut off, but the reading it sent first is stored and acknowledged.
    client
        .publish("sensor/V5", QoS5::AtLeastOnce, false, r#"{"temp":8}"#)
        .await
        .expect("queued");
    client
        .publish("sensor/Other", QoS5::AtLeastOnce, false, r#"{"temp":7}"#)
        .await
        .expect("queued");
    let mut last_acks = Vec::new();
    let goodbye = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event5::Incoming(Packet5::PubAck(ack))) => last_acks.push(ack.reason),
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the server ends the connection");
    // rumqttc returns the error as soon as it reads the DISCONNECT, and
    // keeps events from the same read queued; they count too.
    for event in events.state.events.drain(..) {
        if let Event5::Incoming(Packet5::PubAck(ack)) = event {
            last_acks.push(ack.reason);
        }
    }
    assert_eq!(last_acks, vec![PubAckReason::Success]);
    assert!(
        matches!(
            goodbye,
            Error5::MqttState(StateError::ServerDisconnect {
                reason_code: DisconnectReasonCode::NotAuthorized,
                ..
            })
        ),
        "the server says why it disconnects: {goodbye:?}"
    );
    let detail: DeviceDetail = server.get_json("/api/devices/V5").await;
    assert_eq!(detail.summary.latest[0].value, 8.0);

    // A client with an empty id is told the one the server chose.
    let mut o = Options5::new("", server.mqtt.ip().to_string(), server.mqtt.port());
    o.set_credentials("V5", secret.as_str());
    let (_c, mut events) = Client5::new(o, 10);
    let assigned = loop {
        if let Event5::Incoming(Packet5::ConnAck(ack)) = events.poll().await.expect("connects") {
            break ack.properties.and_then(|p| p.assigned_client_identifier);
        }
    };
    assert!(
        assigned
            .as_deref()
            .is_some_and(|id| id.starts_with("sightline-")),
        "{assigned:?}"
    );
    let other: DeviceDetail = server.get_json("/api/devices/Other").await;
    assert!(other.series.is_empty());
    server.stop().await.expect("clean shutdown");
}

/// MQTT 5 clients hear why the server refuses or ends their connection:
/// CONNACK 0x87 for a disabled device, DISCONNECT 0x96 for publishing too
/// fast, 0x95 for a packet over the limit and 0x8D for a silent client.
#[tokio::test]
async fn mqtt5_clients_hear_why_they_are_disconnected() {
    use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode as Code5, DisconnectReasonCode as Why, Packet as Packet5,
    };
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{
        AsyncClient as Client5, ConnectionError as Error5, MqttOptions as Options5, StateError,
    };

    let scratch = Scratch::new();
    let config = closed_config(&scratch);
    let server = TestServer::start(config).await;
    let options = |client: &str, device: &str, secret: &str| {
        let mut o = Options5::new(client, server.mqtt.ip().to_string(), server.mqtt.port());
        o.set_credentials(device, secret);
        o.set_max_packet_size(Some(8 << 20));
        o
    };
    // Polls until the connection ends and returns why.
    async fn ending(events: &mut rumqttc::v5::EventLoop) -> Error5 {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Err(e) = events.poll().await {
                    return e;
                }
            }
        })
        .await
        .expect("the connection ends in time")
    }
    let disconnected_because = |e: &Error5| match e {
        Error5::MqttState(StateError::ServerDisconnect { reason_code, .. }) => Some(*reason_code),
        _ => None,
    };

    // A disabled device: CONNACK 0x87.
    let off = server.add_device("Off").await;
    set_enabled(&server, "Off", false).await;
    let (_c, mut events) = Client5::new(options("off", "Off", &off), 10);
    let refused = ending(&mut events).await;
    assert!(
        matches!(refused, Error5::ConnectionRefused(Code5::NotAuthorized)),
        "{refused:?}"
    );

    // Over the SUBSCRIBE rate: DISCONNECT 0x96.
    let fast = server.add_device("Fast").await;
    let (client, mut events) = Client5::new(options("fast", "Fast", &fast), 200);
    for _ in 0..100 {
        client
            .subscribe("command/Fast", QoS5::AtLeastOnce)
            .await
            .expect("queued");
    }
    let why = ending(&mut events).await;
    assert_eq!(
        disconnected_because(&why),
        Some(Why::MessageRateTooHigh),
        "{why:?}"
    );

    // A packet over the limit (1 MiB here): DISCONNECT 0x95.
    let big = server.add_device("Big").await;
    let (client, mut events) = Client5::new(options("big", "Big", &big), 10);
    client
        .publish("sensor/Big/n", QoS5::AtMostOnce, false, vec![b'1'; 2 << 20])
        .await
        .expect("queued");
    let why = ending(&mut events).await;
    assert_eq!(
        disconnected_because(&why),
        Some(Why::PacketTooLarge),
        "{why:?}"
    );

    // Silent past 1.5 x its keep-alive of 1 s: DISCONNECT 0x8D. A raw
    // socket, since a client library would send PINGREQ on its own.
    let quiet = server.add_device("Quiet").await;
    let mut socket = TcpStream::connect(server.mqtt).await.expect("connect");
    let connect = rumqttc::v5::mqttbytes::v5::Connect {
        keep_alive: 1,
        client_id: "quiet".into(),
        clean_start: true,
        properties: None,
    };
    let login = rumqttc::v5::mqttbytes::v5::Login::new("Quiet", quiet.as_str());
    let mut out = BytesMut::new();
    Packet5::Connect(connect, None, Some(login))
        .write(&mut out, None)
        .expect("encodes");
    socket.write_all(&out).await.expect("write");
    let started = Instant::now();
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    while packets.len() < 2 {
        match Packet5::read(&mut buf, None) {
            Ok(p) => packets.push(p),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                let n = tokio::time::timeout(Duration::from_secs(5), socket.read_buf(&mut buf))
                    .await
                    .expect("the server speaks in time")
                    .expect("read");
                assert!(n > 0, "closed without DISCONNECT after {packets:?}");
            }
            Err(e) => panic!("bad packet: {e}"),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        matches!(&packets[0], Packet5::ConnAck(ack) if ack.code == Code5::Success),
        "{packets:?}"
    );
    assert!(
        matches!(&packets[1], Packet5::Disconnect(d) if d.reason_code == Why::KeepAliveTimeout),
        "{packets:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_millis(2500),
        "disconnected {elapsed:?} after CONNECT; expiry is at 1.5 s"
    );
    server.stop().await.expect("clean shutdown");
}

/// A CONNECT with a Last Will of `will_bytes` for `device`.
fn connect_with_will(device: &str, secret: &str, will_bytes: usize) -> Packet {
    let mut connect = Connect::new(device);
    connect.keep_alive = 30;
    connect.set_login(device, secret);
    connect.last_will = Some(LastWill::new(
        format!("sensor/{device}"),
        vec![b'0'; will_bytes],
        QoS::AtMostOnce,
        false,
    ));
    Packet::Connect(connect)
}

/// Reads until the server closes the socket; `None` if it is still open
/// after `limit`. Returns what the server sent before closing.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| got)
}

/// Before a client has logged in it has proved nothing, so its CONNECT may
/// be at most 64 KiB: one just under is served, one just over is closed
/// without a CONNACK and counted.
#[tokio::test]
async fn a_connect_may_be_at_most_64_kib() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("Will").await;

    let mut socket = TcpStream::connect(server.mqtt).await.expect("connect");
    write_packet(&mut socket, connect_with_will("Will", &secret, 60 * 1024)).await;
    match read_packet(&mut socket).await {
        Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    write_packet(&mut socket, Packet::Disconnect).await;

    let mut socket = TcpStream::connect(server.mqtt).await.expect("connect");
    write_packet(&mut socket, connect_with_will("Will", &secret, 65 * 1024)).await;
    let sent = closed_within(&mut socket, Duration::from_secs(5))
        .await
        .expect("an oversized CONNECT is closed at once");
    assert!(sent.is_empty(), "no CONNACK for it: {sent:?}");
    let metrics = server.metrics().await;
    assert_eq!(
        read_value(&metrics, "sightline_edge_too_large_total"),
        Some(1)
    );
    server.stop().await.expect("clean shutdown");
}

/// A socket has 10 s from accept to a whole CONNECT, however it spends
/// them: one that sends nothing and one that trickles a CONNECT a byte at
/// a time are both closed at 10 s, and counted.
#[tokio::test]
async fn a_client_has_ten_seconds_to_log_in() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let silent = async {
        let mut socket = TcpStream::connect(server.mqtt).await.expect("connect");
        let started = Instant::now();
        closed_within(&mut socket, Duration::from_secs(20))
            .await
            .expect("closed");
        started.elapsed()
    };
    let trickle = async {
        let mut socket = TcpStream::connect(server.mqtt).await.expect("connect");
        let started = Instant::now();
        // A CONNECT announcing 100 bytes, sent one byte every 400 ms: it
        // would take 40 s to finish.
        socket.write_all(&[0x10, 100]).await.expect("header");
        loop {
            tokio::time::sleep(Duration::from_millis(400)).await;
            if socket.write_all(&[0]).await.is_err() {
                break;
            }
            let mut probe = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), socket.read(&mut probe)).await
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "never closed");
        }
        started.elapsed()
    };
    let (silent, trickle) = tokio::join!(silent, trickle);
    for (what, took) in [("silent", silent), ("trickling", trickle)] {
        assert!(
            took >= Duration::from_millis(9_500) && took < Duration::from_secs(12),
            "a {what} socket was closed after {took:?}; the limit is 10 s"
        );
    }
    let metrics = server.metrics().await;
    assert_eq!(
        read_value(&metrics, "sightline_edge_handshake_timeouts_total"),
        Some(2)
    );
    server.stop().await.expect("clean shutdown");
}

/// At most 1,024 sockets may be logging in at once: the next is closed at
/// once and counted, a device already logged in is not affected, and room
/// comes back as soon as pending sockets go away.
#[tokio::test]
async fn at_most_1024_sockets_may_be_logging_in_at_once() {
    let scratch = Scratch::new();
    let server = TestServer::start(closed_config(&scratch)).await;
    let secret = server.add_device("Steady").await;
    let mut steady = raw_login(&server, "Steady", &secret, 60, None).await;

    let mut pending = Vec::with_capacity(1024);
    for _ in 0..1024 {
        pending.push(TcpStream::connect(server.mqtt).await.expect("connect"));
    }
    let mut late = TcpStream::connect(server.mqtt).await.expect("connect");
    let mut connect = Connect::new("late");
    connect.set_login("Steady", &secret);
    write_packet(&mut late, Packet::Connect(connect)).await;
    let sent = closed_within(&mut late, Duration::from_secs(5))
        .await
        .expect("the 1,025th socket is closed at once");
    assert!(sent.is_empty(), "no CONNACK for it: {sent:?}");
    assert_eq!(
        read_value(
            &server.metrics().await,
            "sightline_edge_over_capacity_total"
        ),
        Some(1)
    );

    // The device that logged in before keeps being served.
    let publish = rumqttc::Publish::new("sensor/Steady", QoS::AtLeastOnce, r#"{"t":1}"#);
    let mut publish = publish;
    publish.pkid = 1;
    write_packet(&mut steady, Packet::Publish(publish)).await;
    assert!(matches!(read_packet(&mut steady).await, Packet::PubAck(_)));

    pending.truncate(1000);
    wait_for("room for a login", || async {
        connack(server.mqtt, "again", Some(("Steady", &secret)))
            .await
            .is_none()
    })
    .await;
    drop(pending);
    server.stop().await.expect("clean shutdown");
}
