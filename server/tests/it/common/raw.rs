//! Raw MQTT for tests that must control every byte: a closed configuration
//! (devices must log in), and packets written and read on a bare socket.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::{ConnectReturnCode, LastWill};
use server::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{test_config, Scratch, TestServer};

/// Devices must log in: open registration is off, as in production.
pub fn closed_config(scratch: &Scratch) -> Config {
    Config {
        open_registration: false,
        ..test_config(&scratch.sqlite_url())
    }
}

/// Writes one packet to a raw socket.
pub async fn write_packet(socket: &mut TcpStream, packet: Packet) {
    let mut buf = BytesMut::new();
    packet.write(&mut buf, usize::MAX).expect("encodes");
    socket.write_all(&buf).await.expect("write");
}

/// Reads one packet from a raw socket (bytes after it are lost: use it
/// where the server sends one packet at a time).
pub async fn read_packet(socket: &mut TcpStream) -> Packet {
    let mut buf = BytesMut::new();
    loop {
        match Packet::read(&mut buf, 1 << 20) {
            Ok(p) => return p,
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                let n = socket.read_buf(&mut buf).await.expect("read");
                assert!(n > 0, "closed before a whole packet");
            }
            Err(e) => panic!("bad packet: {e}"),
        }
    }
}

/// Connects a raw socket and logs in as `device`.
pub async fn raw_login(
    server: &TestServer,
    device: &str,
    secret: &str,
    keep_alive: u16,
    will: Option<LastWill>,
) -> TcpStream {
    raw_login_at(server.mqtt, device, secret, keep_alive, will).await
}

/// Connects a raw socket to the broker at `mqtt` and logs in as `device`.
pub async fn raw_login_at(
    mqtt: std::net::SocketAddr,
    device: &str,
    secret: &str,
    keep_alive: u16,
    will: Option<LastWill>,
) -> TcpStream {
    let mut socket = TcpStream::connect(mqtt).await.expect("connect");
    let mut connect = Connect::new(device);
    connect.keep_alive = keep_alive;
    connect.set_login(device, secret);
    connect.last_will = will;
    write_packet(&mut socket, Packet::Connect(connect)).await;
    match read_packet(&mut socket).await {
        Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    socket
}
