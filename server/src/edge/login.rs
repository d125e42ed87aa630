//! Login: from a new socket to an admitted device. Reads the CONNECT
//! within a deadline and a size limit (the client has proved nothing yet),
//! checks the credentials and the Last Will's topic, and answers a refusal
//! with the CONNACK code that says why.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{check, Error as CodecError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::codec::{ConnectCode, ConnectInfo, Inbound, Outbound, Version};
use super::{Edge, SocketGuard, HANDSHAKE_TIMEOUT};
use crate::acl;
use crate::metrics::{LogLimiter, Metrics};
use crate::names::valid_name;
use crate::store::registry::Login;

/// The largest CONNECT accepted. It holds a client id, a login and perhaps
/// a Last Will, and it arrives before the client has proved anything, so
/// it gets a tighter limit than later packets.
pub(super) const MAX_CONNECT_BYTES: usize = 64 * 1024;

/// Bytes read from the socket at a time.
pub(super) const READ_CHUNK: usize = 4096;

/// A device that cannot take our packets within this time is disconnected.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why reading the first packet's frame failed.
enum FrameError {
    Closed,
    TooLarge,
    Malformed(CodecError),
}

/// Reads until `buf` holds one whole packet, without decoding it.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(), FrameError> {
    loop {
        let needed = match check(buf.iter(), max) {
            Ok(header) if buf.len() >= header.frame_length() => return Ok(()),
            Ok(header) => header.frame_length() - buf.len(),
            Err(CodecError::InsufficientBytes(n)) => n,
            Err(CodecError::PayloadSizeLimitExceeded(_)) => return Err(FrameError::TooLarge),
            Err(e) => return Err(FrameError::Malformed(e)),
        };
        // Grow with the bytes that actually arrive, not with the length the
        // header announces, so that a client announcing a large packet and
        // sending nothing pins no memory.
        buf.reserve(needed.min(READ_CHUNK));
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(FrameError::Closed),
            Ok(_) => {}
        }
    }
}

/// What a successful login leaves: the client's protocol version, its
/// CONNECT, the device it is (`None`: an anonymous client under open
/// registration, named by its first publish) and whatever it sent after
/// the CONNECT.
pub(super) struct Admitted {
    pub version: Version,
    pub connect: ConnectInfo,
    pub who: Who,
    pub inbuf: BytesMut,
}

/// Who an admitted client is.
pub(super) enum Who {
    /// A device; `None` is an anonymous client under open registration.
    Device(Option<String>),
    /// A service account, which reads the feed and publishes nothing.
    Service(app::model::ServiceAccount),
}

/// Reads the CONNECT within [`HANDSHAKE_TIMEOUT`] and decides who the
/// client is. A refused client has been answered (when it can be) and
/// counted; `None` then, and the connection is to be closed.
pub(super) async fn login<R, W>(
    edge: &Edge,
    rd: &mut R,
    wr: &mut W,
    peer: SocketAddr,
    stop: &CancellationToken,
    logging_in: SocketGuard<'_>,
) -> Option<Admitted>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let max = edge.settings.max_packet_bytes;
    let counters = &edge.metrics.edge;
    let first = tokio::select! {
        () = stop.cancelled() => return None,
        first = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            read_frame(rd, &mut inbuf, MAX_CONNECT_BYTES.min(max)),
        ) => first,
    };
    match first {
        Err(_) => {
            Metrics::add(&counters.handshake_timeouts, 1);
            return None;
        }
        Ok(Err(FrameError::Closed)) => return None,
        Ok(Err(FrameError::TooLarge)) => {
            edge.metrics.refuse(&counters.too_large, None);
            return None;
        }
        Ok(Err(FrameError::Malformed(e))) => {
            Metrics::add(&counters.protocol_errors, 1);
            tracing::debug!(%peer, "malformed first packet: {e}");
            return None;
        }
        Ok(Ok(())) => {}
    }
    let version = match Version::of_connect(&inbuf) {
        Ok(version) => version,
        Err(level) => {
            // MQTT 3.1.1 answers an unknown protocol level with return
            // code 1 before closing, so the client can say why.
            Metrics::add(&counters.protocol_errors, 1);
            tracing::info!(%peer, ?level, "refused a client of an unsupported MQTT version");
            let mut out = BytesMut::new();
            let refusal =
                rumqttc::mqttbytes::v4::Packet::ConnAck(rumqttc::mqttbytes::v4::ConnAck::new(
                    rumqttc::mqttbytes::v4::ConnectReturnCode::RefusedProtocolVersion,
                    false,
                ));
            if refusal.write(&mut out, usize::MAX).is_ok() {
                let _ = send(wr, &out).await;
            }
            return None;
        }
    };
    let connect = match version.read(&mut inbuf, max) {
        Ok(Inbound::Connect(connect)) => connect,
        Ok(other) => {
            Metrics::add(&counters.protocol_errors, 1);
            tracing::debug!(%peer, "first packet was not CONNECT: {other:?}");
            return None;
        }
        Err(e) => {
            Metrics::add(&counters.protocol_errors, 1);
            tracing::debug!(%peer, "malformed CONNECT: {e:?}");
            return None;
        }
    };
    let admitted = if connect.client_id.is_empty() && !connect.clean {
        // MQTT 3.1.1 [MQTT-3.1.3-8]: an empty client id needs a clean
        // session, since there is nothing to resume a session by.
        Err((
            ConnectCode::BadClientId,
            None,
            "an empty client id needs a clean session",
        ))
    } else {
        admit(edge, &connect).await
    };
    drop(logging_in);
    let who = match admitted {
        Ok(who) => who,
        Err((code, device, why)) => {
            let kind = match code {
                ConnectCode::ServerUnavailable => &counters.over_capacity,
                _ => &counters.logins_refused,
            };
            edge.metrics
                .refuse_login(kind, device.as_deref(), why, crate::clock::now_ms());
            log_refusal(&peer, &connect, code);
            let mut out = BytesMut::new();
            let refusal = Outbound::ConnAck {
                code,
                assigned_id: None,
                keep_alive: None,
                session_present: false,
                session_expiry: None,
            };
            if version.write(&mut out, refusal).is_ok() {
                let _ = send(wr, &out).await;
            }
            return None;
        }
    };
    Some(Admitted {
        version,
        connect,
        who,
        inbuf,
    })
}

/// A refused CONNECT: the CONNACK code, the device to charge it to, and
/// why, in words for the device's page.
type Refused = (ConnectCode, Option<String>, &'static str);

/// The reasons a device's page is most likely to show.
pub const BAD_SECRET: &str = "wrong or missing secret";
pub const DISABLED: &str = "disabled by an operator";
/// The device was deleted (its readings kept).
pub const DELETED: &str = "deleted by an operator";
const NO_SECRET_YET: &str = "it has no secret, and open registration is off";

/// Decides who a CONNECT is, or which CONNACK code refuses it, the device
/// to charge the refusal to (when one is named) and why, in words for the
/// device's page. `None` is an
/// anonymous client under open registration: it becomes the device its
/// first publish names, as long as nobody has claimed that name.
async fn admit(edge: &Edge, connect: &ConnectInfo) -> Result<Who, Refused> {
    let open = edge.settings.open_registration;
    let user = connect.user.as_str();
    let password = connect.password.as_deref();
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!("cannot check a device login: {e}");
        (
            ConnectCode::ServerUnavailable,
            None,
            "the database was unavailable",
        )
    };
    let named = |name: &str| valid_name(name).then(|| name.to_owned());
    // Service accounts are looked up first: their names are kept apart
    // from devices' when either is made.
    if let (false, Some(password)) = (user.is_empty(), password.filter(|p| !p.is_empty())) {
        if let Some(account) = edge
            .store
            .service_login(user, password)
            .await
            .map_err(unavailable)?
        {
            if connect.will.is_some() {
                return Err((
                    ConnectCode::NotAuthorized,
                    None,
                    "a service account cannot have a Last Will",
                ));
            }
            admit_capacity(edge, None)?;
            return Ok(Who::Service(account));
        }
    }
    let device = if user.is_empty() {
        // No credentials at all: only open registration admits these.
        if !open {
            return Err((ConnectCode::NotAuthorized, None, "no credentials"));
        }
        return admit_capacity(edge, None).map(Who::Device);
    } else {
        match edge
            .store
            .login(user, password)
            .await
            .map_err(unavailable)?
        {
            Login::Device(id) => id,
            Login::Unsecured(id) if open => id,
            Login::Unsecured(id) => {
                return Err((ConnectCode::NotAuthorized, Some(id), NO_SECRET_YET))
            }
            // Charged to the id the registry names, never to the user name,
            // which is the secret itself in a ThingsBoard-style login.
            Login::Disabled(id) => return Err((ConnectCode::NotAuthorized, Some(id), DISABLED)),
            Login::Removed(id) => return Err((ConnectCode::NotAuthorized, Some(id), DELETED)),
            Login::BadSecret => return Err((ConnectCode::BadCredentials, named(user), BAD_SECRET)),
            // Open registration hands out only names nobody has claimed: a
            // user name that is a secured device's id (sent without its
            // secret, so it was looked up as a token) is refused.
            Login::Unknown if open && valid_name(user) => {
                if edge.store.is_secured(user).await.map_err(unavailable)? {
                    return Err((ConnectCode::BadCredentials, named(user), BAD_SECRET));
                }
                user.to_owned()
            }
            Login::Unknown => return Err((ConnectCode::BadCredentials, None, "unknown device")),
        }
    };
    // A Last Will is a publish made on the device's behalf later, so it
    // must pass the same topic check now.
    if let Some(will) = &connect.will {
        if acl::publish(&device, &will.topic).is_none() {
            Metrics::add(&edge.metrics.edge.denied, 1);
            return Err((
                ConnectCode::NotAuthorized,
                Some(device),
                "its Last Will names a topic outside its own",
            ));
        }
    }
    admit_capacity(edge, Some(device)).map(Who::Device)
}

/// Admits a client if the connection limit allows.
fn admit_capacity(edge: &Edge, device: Option<String>) -> Result<Option<String>, Refused> {
    let sessions = edge
        .metrics
        .edge
        .sessions
        .load(std::sync::atomic::Ordering::Relaxed);
    if sessions >= edge.settings.max_connections as u64 {
        return Err((
            ConnectCode::ServerUnavailable,
            device,
            "the server was at its connection limit",
        ));
    }
    Ok(device)
}

/// Logs a refused CONNECT at a bounded rate; a misconfigured fleet can
/// retry thousands of times a second.
fn log_refusal(peer: &SocketAddr, connect: &ConnectInfo, code: ConnectCode) {
    static LOG: std::sync::OnceLock<LogLimiter> = std::sync::OnceLock::new();
    let log = LOG.get_or_init(|| LogLimiter::new(20, Duration::from_secs(10)));
    if let Some(suppressed) = log.allow() {
        let user: String = connect.user.chars().take(64).collect();
        let client: String = connect.client_id.chars().take(64).collect();
        tracing::info!(
            %peer,
            client = %client.escape_debug(),
            user = %user.escape_debug(),
            suppressed,
            "refused a device login: {code:?}"
        );
    }
}

/// Writes encoded packets straight away (used around the session).
pub(super) async fn send<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    // Flushed, since a WebSocket holds what it is given until then.
    let write = async {
        wr.write_all(bytes).await?;
        wr.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The keep-alive the server uses for a client that asked for `asked`
/// seconds: its own, unless that is 0 (none at all) or above `max`, which
/// get `max`. Without this, keep-alive 0 would let an idle connection hold
/// its buffers for ever.
pub(super) fn keep_alive(asked: u16, max: u16) -> u16 {
    if asked == 0 || asked > max {
        max
    } else {
        asked
    }
}

/// MQTT closes a connection after 1.5 times the keep-alive passes without
/// a packet.
pub(super) fn keep_alive_limit(seconds: u16) -> Duration {
    Duration::from_millis(u64::from(seconds) * 1500)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that announces a large CONNECT and sends only a little of
    /// it makes the server hold what it sent, not what it announced.
    #[tokio::test]
    async fn a_frame_buffer_grows_with_bytes_received_not_with_lengths_announced() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        // A CONNECT announcing 60,000 bytes (varint 0xE0 0xD4 0x03), then
        // ten of them.
        client
            .write_all(&[0x10, 0xE0, 0xD4, 0x03])
            .await
            .expect("write");
        client.write_all(&[0; 10]).await.expect("write");
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let read = tokio::time::timeout(
            Duration::from_millis(200),
            read_frame(&mut server, &mut buf, MAX_CONNECT_BYTES),
        )
        .await;
        assert!(read.is_err(), "still waiting for the rest of the frame");
        assert_eq!(buf.len(), 14);
        assert!(
            buf.capacity() <= 2 * READ_CHUNK + 64,
            "{} bytes reserved for 14 received",
            buf.capacity()
        );
    }

    #[test]
    fn keep_alive_is_enforced_at_one_and_a_half_times_of_at_most_the_maximum() {
        assert_eq!(keep_alive_limit(2), Duration::from_secs(3));
        assert_eq!(keep_alive(0, 1200), 1200, "none at all gets the maximum");
        assert_eq!(keep_alive(65_535, 1200), 1200);
        assert_eq!(keep_alive(1201, 1200), 1200);
        assert_eq!(keep_alive(1200, 1200), 1200);
        assert_eq!(keep_alive(30, 1200), 30);
    }
}
