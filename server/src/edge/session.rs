//! One device connection, from CONNECT to the end: login, topic checks,
//! readings to ingest, PUBACK after commit, commands from the router,
//! keep-alive, Last Will and online status.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{check, Error as CodecError, QoS};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::codec::{
    ConnectCode, ConnectInfo, Goodbye, Inbound, Outbound, ReadError, Version, Will,
};
use super::{acl, Edge, HANDSHAKE_TIMEOUT};
use crate::command::Route;
use crate::ingest::decode::valid_name;
use crate::ingest::now_ms;
use crate::metrics::{LogLimiter, Metrics};
use crate::store::registry::Login;

/// The largest CONNECT accepted. It holds a client id, a login and perhaps
/// a Last Will, and it arrives before the client has proved anything, so
/// it gets a tighter limit than later packets.
const MAX_CONNECT_BYTES: usize = 64 * 1024;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 4096;

/// How long a session the server closes waits for its last readings to
/// commit.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// A device that cannot take our packets within this time is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended. Everything but a DISCONNECT from the device, a
/// newer connection of the same device, and server shutdown publishes the
/// device's Last Will.
#[derive(Debug)]
enum End {
    /// The device sent DISCONNECT.
    Disconnect,
    /// The device sent an MQTT 5 DISCONNECT asking for its will anyway.
    DisconnectWithWill,
    /// The socket closed or failed without DISCONNECT.
    SocketClosed,
    /// Nothing arrived for 1.5 x the keep-alive the device asked for.
    KeepAlive,
    /// A new connection used the same client id; MQTT says the old one goes.
    TakenOver,
    /// An operator disabled the device.
    Disabled,
    /// The server is stopping.
    Shutdown,
    /// The device used a topic that is not its own.
    Denied,
    /// The device published faster than allowed.
    RateLimited,
    /// A packet exceeded the size limit.
    TooLarge,
    /// A malformed packet or a protocol violation.
    Protocol(String),
    /// The device stopped reading what we sent it.
    WriteStalled,
}

impl End {
    fn reason(&self) -> String {
        match self {
            Self::Disconnect | Self::DisconnectWithWill => "disconnected".into(),
            Self::SocketClosed => "connection lost".into(),
            Self::KeepAlive => "keep-alive expired".into(),
            Self::TakenOver => "replaced by a new connection".into(),
            Self::Disabled => "device disabled".into(),
            Self::Shutdown => "server stopped".into(),
            Self::Denied => "refused: topic not allowed".into(),
            Self::RateLimited => "refused: publish rate exceeded".into(),
            Self::TooLarge => "refused: packet too large".into(),
            Self::Protocol(why) => format!("protocol error: {why}"),
            Self::WriteStalled => "stopped reading".into(),
        }
    }

    fn publishes_will(&self) -> bool {
        !matches!(
            self,
            Self::Disconnect | Self::TakenOver | Self::Shutdown | Self::Disabled
        )
    }

    /// What an MQTT 5 client is told when the server is the one closing.
    fn goodbye(&self) -> Option<Goodbye> {
        match self {
            Self::KeepAlive => Some(Goodbye::KeepAliveTimeout),
            Self::TakenOver => Some(Goodbye::SessionTakenOver),
            Self::Shutdown => Some(Goodbye::ShuttingDown),
            Self::Denied | Self::Disabled => Some(Goodbye::NotAuthorized),
            Self::RateLimited => Some(Goodbye::RateTooHigh),
            Self::TooLarge => Some(Goodbye::PacketTooLarge),
            Self::Protocol(_) => Some(Goodbye::ProtocolError),
            Self::Disconnect
            | Self::DisconnectWithWill
            | Self::SocketClosed
            | Self::WriteStalled => None,
        }
    }
}

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

/// Runs one connection to its end.
pub(super) async fn run<S>(
    edge: &Edge,
    stream: S,
    peer: SocketAddr,
    stop: CancellationToken,
    logging_in: super::SocketGuard<'_>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let max = edge.settings.max_packet_bytes;
    let counters = &edge.metrics.edge;
    let first = tokio::select! {
        () = stop.cancelled() => return,
        first = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            read_frame(&mut rd, &mut inbuf, MAX_CONNECT_BYTES.min(max)),
        ) => first,
    };
    match first {
        Err(_) => {
            Metrics::add(&counters.handshake_timeouts, 1);
            return;
        }
        Ok(Err(FrameError::Closed)) => return,
        Ok(Err(FrameError::TooLarge)) => {
            edge.metrics.refuse(&counters.too_large, None);
            return;
        }
        Ok(Err(FrameError::Malformed(e))) => {
            Metrics::add(&counters.protocol_errors, 1);
            tracing::debug!(%peer, "malformed first packet: {e}");
            return;
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
                let _ = send(&mut wr, &out).await;
            }
            return;
        }
    };
    let connect = match version.read(&mut inbuf, max) {
        Ok(Inbound::Connect(connect)) => connect,
        Ok(other) => {
            Metrics::add(&counters.protocol_errors, 1);
            tracing::debug!(%peer, "first packet was not CONNECT: {other:?}");
            return;
        }
        Err(e) => {
            Metrics::add(&counters.protocol_errors, 1);
            tracing::debug!(%peer, "malformed CONNECT: {e:?}");
            return;
        }
    };
    let admitted = if connect.client_id.is_empty() && !connect.clean {
        // MQTT 3.1.1 [MQTT-3.1.3-8]: an empty client id needs a clean
        // session, since there is nothing to resume a session by.
        Err((ConnectCode::BadClientId, None))
    } else {
        admit(edge, &connect).await
    };
    drop(logging_in);
    let device = match admitted {
        Ok(device) => device,
        Err((code, device)) => {
            let kind = match code {
                ConnectCode::ServerUnavailable => &counters.over_capacity,
                _ => &counters.logins_refused,
            };
            edge.metrics.refuse(kind, device.as_deref());
            log_refusal(&peer, &connect, code);
            let mut out = BytesMut::new();
            let refusal = Outbound::ConnAck {
                code,
                assigned_id: None,
            };
            if version.write(&mut out, refusal).is_ok() {
                let _ = send(&mut wr, &out).await;
            }
            return;
        }
    };

    Metrics::add(&counters.sessions, 1);
    let session_id = edge
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut session = Session {
        edge,
        device: String::new(),
        session_id,
        client_id: if connect.client_id.is_empty() {
            format!("sightline-{session_id}")
        } else {
            connect.client_id.clone()
        },
        replaced: CancellationToken::new(),
        disabled: std::sync::Arc::default(),
        stop: stop.clone(),
        version,
        keep_alive: keep_alive_limit(connect.keep_alive),
        will: connect.will,
        out: BytesMut::new(),
        pending: VecDeque::new(),
        link: None,
        subscribed: HashMap::new(),
        in_flight: HashMap::new(),
        last_pkid: 0,
        link_name: format!("device-{session_id}"),
        bucket: Bucket::new(edge.settings.max_publish_rate),
        ended_because: String::new(),
    };
    if let Some(device) = device {
        session.bind(device);
    }
    session.say(Outbound::ConnAck {
        code: ConnectCode::Accepted,
        assigned_id: connect
            .client_id
            .is_empty()
            .then(|| session.client_id.clone()),
    });
    let end = match session.flush(&mut wr).await {
        Ok(()) => session.serve(&mut rd, &mut wr, inbuf, &stop).await,
        Err(_) => End::SocketClosed,
    };
    if let Some(goodbye) = end.goodbye() {
        session.say(Outbound::Disconnect(goodbye, end.reason()));
        let _ = session.flush(&mut wr).await;
    }
    session.finish(end).await;
    edge.metrics
        .edge
        .sessions
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    session.unbind();
    // A TLS shutdown writes a close notice, which a peer that stopped
    // reading would never take; everything that matters is done by now.
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

/// Decides who a CONNECT is, or which CONNACK code refuses it (and the
/// device to charge the refusal to, when one is named). `None` is an
/// anonymous client under open registration: it becomes the device its
/// first publish names, as long as nobody has claimed that name.
async fn admit(
    edge: &Edge,
    connect: &ConnectInfo,
) -> Result<Option<String>, (ConnectCode, Option<String>)> {
    let open = edge.settings.open_registration;
    let user = connect.user.as_str();
    let password = connect.password.as_deref();
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!("cannot check a device login: {e}");
        (ConnectCode::ServerUnavailable, None)
    };
    let named = |name: &str| valid_name(name).then(|| name.to_owned());
    let device = if user.is_empty() {
        // No credentials at all: only open registration admits these.
        if !open {
            return Err((ConnectCode::NotAuthorized, None));
        }
        return admit_capacity(edge, None);
    } else {
        match edge
            .store
            .login(user, password)
            .await
            .map_err(unavailable)?
        {
            Login::Device(id) => id,
            Login::Unsecured(id) if open => id,
            Login::Unsecured(id) => return Err((ConnectCode::NotAuthorized, Some(id))),
            Login::Disabled => return Err((ConnectCode::NotAuthorized, named(user))),
            Login::BadSecret => return Err((ConnectCode::BadCredentials, named(user))),
            // Open registration hands out only names nobody has claimed: a
            // user name that is a secured device's id (sent without its
            // secret, so it was looked up as a token) is refused.
            Login::Unknown if open && valid_name(user) => {
                if edge.store.is_secured(user).await.map_err(unavailable)? {
                    return Err((ConnectCode::BadCredentials, named(user)));
                }
                user.to_owned()
            }
            Login::Unknown => return Err((ConnectCode::BadCredentials, None)),
        }
    };
    // A Last Will is a publish made on the device's behalf later, so it
    // must pass the same topic check now.
    if let Some(will) = &connect.will {
        if acl::publish(&device, &will.topic).is_none() {
            Metrics::add(&edge.metrics.edge.denied, 1);
            return Err((ConnectCode::NotAuthorized, Some(device)));
        }
    }
    admit_capacity(edge, Some(device))
}

/// Admits a client if the connection limit allows.
fn admit_capacity(
    edge: &Edge,
    device: Option<String>,
) -> Result<Option<String>, (ConnectCode, Option<String>)> {
    let sessions = edge
        .metrics
        .edge
        .sessions
        .load(std::sync::atomic::Ordering::Relaxed);
    if sessions >= edge.settings.max_connections as u64 {
        return Err((ConnectCode::ServerUnavailable, device));
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
async fn send<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(bytes))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// MQTT closes a connection after 1.5 times the keep-alive the client
/// asked for passes without a packet; 0 turns the check off.
fn keep_alive_limit(seconds: u16) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_millis(u64::from(seconds) * 1500))
}

/// A token bucket of publishes: `rate` per second, with one second's worth
/// (at least 10) of burst, so a device that wakes and flushes a backlog is
/// not punished.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        let burst = rate.max(10.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An acknowledgement owed to the device, in the order its publishes came.
#[derive(Debug)]
struct Owed {
    pkid: u16,
    /// PUBREC for QoS 2, PUBACK for QoS 1.
    exactly_once: bool,
    /// Whether it may be sent: the readings are committed, or there were
    /// none to store.
    ready: bool,
    /// Whether the message yielded any reading (MQTT 5 says so).
    stored: bool,
}

/// A logged-in device's state.
struct Session<'a> {
    edge: &'a Edge,
    /// The device this session acts for; empty until an anonymous client
    /// (open registration) names itself with its first publish.
    device: String,
    session_id: u64,
    /// The MQTT client id; an empty one (allowed with a clean session) is
    /// replaced by a unique one, so it never takes anyone over.
    client_id: String,
    /// Fires when a newer connection with the same client id takes over,
    /// or the device is disabled (then `disabled` is set first).
    replaced: CancellationToken,
    disabled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Fires when the server stops.
    stop: CancellationToken,
    version: Version,
    keep_alive: Option<Duration>,
    will: Option<Will>,
    /// Packets waiting to be written, sent after each round of reading.
    out: BytesMut,
    /// Acknowledgements owed, oldest first. MQTT requires PUBACKs in the
    /// order of the PUBLISHes, so a rejected message (acknowledged at once)
    /// waits behind an earlier one whose readings are still being written.
    pending: VecDeque<Owed>,
    /// The device's link to the router, made at its first SUBSCRIBE.
    link: Option<(LinkTx, LinkRx)>,
    /// The filters granted so far, as the device wrote them, with the QoS
    /// granted for each.
    subscribed: HashMap<String, QoS>,
    /// Commands sent at QoS 1 and not yet acknowledged, by packet id.
    in_flight: HashMap<u16, String>,
    last_pkid: u16,
    link_name: String,
    bucket: Bucket,
    ended_because: String,
}

impl Session<'_> {
    /// Makes this session the device's current one and marks it online.
    fn bind(&mut self, device: String) {
        self.edge.sessions.claim(
            (device.clone(), self.client_id.clone()),
            self.session_id,
            self.replaced.clone(),
            self.disabled.clone(),
        );
        self.edge
            .presence
            .connected(&device, self.session_id, now_ms());
        self.device = device;
    }

    /// Why `replaced` fired.
    fn cut_off(&self) -> End {
        if self.disabled.load(std::sync::atomic::Ordering::Relaxed) {
            End::Disabled
        } else {
            End::TakenOver
        }
    }

    /// Marks the device offline, unless a newer session has taken over.
    fn unbind(&self) {
        if self.device.is_empty() {
            return;
        }
        self.edge.sessions.release(
            &(self.device.clone(), self.client_id.clone()),
            self.session_id,
        );
        self.edge.presence.disconnected(
            &self.device,
            self.session_id,
            now_ms(),
            &self.ended_because,
        );
    }

    /// Binds an anonymous client (open registration) to the device its
    /// first `sensor/<id>` publish names, unless that name has a secret.
    async fn bind_by_topic(&mut self, topic: &str) -> bool {
        self.bind_by_name(acl::sensor_owner(topic)).await
    }

    /// Binds an anonymous client to `owner`, unless that name is invalid or
    /// has a secret.
    async fn bind_by_name(&mut self, owner: Option<&str>) -> bool {
        let Some(owner) = owner.filter(|owner| valid_name(owner)) else {
            return false;
        };
        match self.edge.store.is_secured(owner).await {
            Ok(false) => {
                self.bind(owner.to_owned());
                true
            }
            Ok(true) => false,
            Err(e) => {
                tracing::error!("cannot check a device name: {e}");
                false
            }
        }
    }

    async fn serve<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        mut inbuf: BytesMut,
        stop: &CancellationToken,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (committed_tx, mut committed) = mpsc::unbounded_channel::<u16>();
        let max = self.edge.settings.max_packet_bytes;
        let mut last_heard = Instant::now();
        let replaced = self.replaced.clone();
        loop {
            // Handle every whole packet already read.
            let mut handled = false;
            loop {
                match self.version.read(&mut inbuf, max) {
                    Ok(packet) => {
                        handled = true;
                        if let Err(end) = self.handle(packet, &committed_tx).await {
                            // Readings the device sent before it was cut
                            // off are stored anyway; acknowledging them
                            // spares it sending them twice. A device that
                            // said DISCONNECT expects nothing more.
                            if matches!(end, End::Disconnect | End::DisconnectWithWill) {
                                let _ = self.flush(wr).await;
                            } else {
                                self.settle(&mut committed, wr).await;
                            }
                            return end;
                        }
                    }
                    Err(ReadError::Incomplete) => break,
                    Err(ReadError::TooLarge) => return End::TooLarge,
                    Err(ReadError::Malformed(why)) => return End::Protocol(why),
                }
            }
            // Handling may have waited for the writer; the device was heard
            // from when its packets arrived, not when they were handled.
            if handled {
                last_heard = Instant::now();
            }
            if self.flush(wr).await.is_err() {
                return End::WriteStalled;
            }
            if inbuf.capacity() - inbuf.len() < READ_CHUNK / 2 {
                inbuf.reserve(READ_CHUNK);
            }
            let expiry = self.keep_alive.map(|k| last_heard + k);
            tokio::select! {
                // Bytes waiting on the socket are looked at before the
                // keep-alive deadline, so a device is never timed out while
                // its packets sit unread.
                biased;
                () = stop.cancelled() => {
                    self.settle(&mut committed, wr).await;
                    return End::Shutdown;
                }
                () = replaced.cancelled() => return self.cut_off(),
                Some(pkid) = committed.recv() => {
                    self.committed(pkid);
                    while let Ok(pkid) = committed.try_recv() {
                        self.committed(pkid);
                    }
                    self.release_acks();
                }
                read = rd.read_buf(&mut inbuf) => match read {
                    Ok(0) | Err(_) => return End::SocketClosed,
                    Ok(_) => last_heard = Instant::now(),
                },
                () = sleep_until(expiry) => return End::KeepAlive,
                delivery = next_delivery(&mut self.link) => self.deliver(delivery).await,
            }
        }
    }

    /// Handles one packet from the device.
    async fn handle(
        &mut self,
        packet: Inbound,
        committed: &mpsc::UnboundedSender<u16>,
    ) -> Result<(), End> {
        match packet {
            Inbound::Publish {
                topic,
                payload,
                qos,
                pkid,
                correlation,
            } => {
                let answer = (!self.device.is_empty())
                    .then(|| acl::answer(&self.device, &topic))
                    .flatten();
                if let Some(answer) = answer {
                    self.answer(&answer, correlation.as_deref(), &payload, qos, pkid)
                        .await
                } else {
                    self.publish(&topic, &payload, qos, pkid, committed).await
                }
            }
            Inbound::PubRel(pkid) => {
                self.say(Outbound::PubComp(pkid));
                Ok(())
            }
            Inbound::Subscribe { pkid, filters } => {
                self.subscribe(pkid, &filters).await;
                Ok(())
            }
            Inbound::Unsubscribe { pkid, filters } => {
                self.unsubscribe(pkid, &filters);
                Ok(())
            }
            Inbound::PingReq => {
                self.say(Outbound::PingResp);
                Ok(())
            }
            Inbound::Disconnect { with_will: false } => Err(End::Disconnect),
            Inbound::Disconnect { with_will: true } => Err(End::DisconnectWithWill),
            Inbound::PubAck(pkid) => {
                if let Some(id) = self.in_flight.remove(&pkid) {
                    self.edge.commands.delivered(&self.device, &id);
                }
                Ok(())
            }
            // Commands go out at QoS 1 at most, so nothing else the device
            // acknowledges needs an answer.
            Inbound::Ack => Ok(()),
            Inbound::Connect(_) => Err(End::Protocol("a second CONNECT".into())),
            Inbound::Unexpected(what) => Err(End::Protocol(format!("unexpected {what}"))),
        }
    }

    /// Hands a device's answer to a command to the command service. The
    /// answer is acknowledged once taken (or refused: MQTT 5 then hears
    /// that nothing matched).
    async fn answer(
        &mut self,
        topic: &crate::command::wire::AnswerTopic,
        correlation: Option<&[u8]>,
        payload: &Bytes,
        qos: QoS,
        pkid: u16,
    ) -> Result<(), End> {
        if !self.bucket.take(Instant::now()) {
            let metrics = &self.edge.metrics;
            metrics.refuse(&metrics.edge.rate_limited, Some(&self.device));
            return Err(End::RateLimited);
        }
        let taken = self
            .edge
            .commands
            .answer(&self.device, topic, correlation, payload)
            .await
            .is_ok();
        if qos != QoS::AtMostOnce {
            self.pending.push_back(Owed {
                pkid,
                exactly_once: qos == QoS::ExactlyOnce,
                ready: true,
                stored: taken,
            });
            self.release_acks();
        }
        Ok(())
    }

    async fn publish(
        &mut self,
        topic: &str,
        payload: &Bytes,
        qos: QoS,
        pkid: u16,
        committed: &mpsc::UnboundedSender<u16>,
    ) -> Result<(), End> {
        let metrics = &self.edge.metrics;
        if !self.bucket.take(Instant::now()) {
            metrics.refuse(&metrics.edge.rate_limited, Some(&self.device));
            return Err(End::RateLimited);
        }
        if self.device.is_empty() && !self.bind_by_topic(topic).await {
            metrics.refuse(&metrics.edge.denied, None);
            log_denied("<anonymous>", "publish to", topic);
            return Err(End::Denied);
        }
        let Some(telemetry) = acl::publish(&self.device, topic) else {
            metrics.refuse(&metrics.edge.denied, Some(&self.device));
            log_denied(&self.device, "publish to", topic);
            return Err(End::Denied);
        };
        let at = Instant::now();
        let readings = self
            .edge
            .ingest
            .decode(&self.device, topic, telemetry, payload, now_ms());
        let exactly_once = match qos {
            QoS::AtMostOnce => {
                if !readings.is_empty() {
                    self.edge.ingest.queue(readings, at);
                }
                return Ok(());
            }
            QoS::AtLeastOnce => false,
            QoS::ExactlyOnce => true,
        };
        let ready = readings.is_empty();
        if !ready {
            // Waiting for room in the writer's queue must not outlast the
            // session: a stalled database must not hold up shutdown or a
            // takeover. Readings not queued are not acknowledged, so the
            // device sends them again.
            let queued = tokio::select! {
                () = self.edge.ingest.queue_acked(readings, at, committed.clone(), pkid) => true,
                () = self.stop.cancelled() => false,
                () = self.replaced.cancelled() => false,
            };
            if !queued {
                return Err(if self.stop.is_cancelled() {
                    End::Shutdown
                } else {
                    self.cut_off()
                });
            }
        }
        self.pending.push_back(Owed {
            pkid,
            exactly_once,
            ready,
            stored: !ready,
        });
        self.release_acks();
        Ok(())
    }

    /// Before the server closes a connection (shutdown, or a device cut
    /// off), waits briefly for the writer to commit what the device already
    /// sent, and acknowledges it, so that it need not send it again.
    async fn settle<W: AsyncWrite + Unpin>(
        &mut self,
        committed: &mut mpsc::UnboundedReceiver<u16>,
        wr: &mut W,
    ) {
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        while self.pending.iter().any(|o| !o.ready) {
            match tokio::time::timeout_at(deadline, committed.recv()).await {
                Ok(Some(pkid)) => self.committed(pkid),
                _ => break,
            }
        }
        self.release_acks();
        let _ = self.flush(wr).await;
    }

    /// The writer committed the readings of `pkid`. Packet ids are unique
    /// among a client's unacknowledged messages, so the match is exact even
    /// if an earlier batch was dropped at shutdown.
    fn committed(&mut self, pkid: u16) {
        if let Some(owed) = self.pending.iter_mut().find(|o| !o.ready && o.pkid == pkid) {
            owed.ready = true;
        }
    }

    /// Sends every acknowledgement at the front of the queue that is ready.
    fn release_acks(&mut self) {
        while self.pending.front().is_some_and(|o| o.ready) {
            let Some(owed) = self.pending.pop_front() else {
                break;
            };
            let (pkid, stored) = (owed.pkid, owed.stored);
            if owed.exactly_once {
                self.say(Outbound::PubRec { pkid, stored });
            } else {
                self.say(Outbound::PubAck { pkid, stored });
            }
        }
    }

    async fn subscribe(&mut self, pkid: u16, filters: &[(String, QoS)]) {
        // An anonymous client (open registration) that subscribes to its
        // commands before it publishes anything is named by that filter.
        if self.device.is_empty() {
            if let Some((filter, _)) = filters.first() {
                self.bind_by_name(acl::command_owner(filter)).await;
            }
        }
        let metrics = &self.edge.metrics;
        let mut granted = Vec::with_capacity(filters.len());
        for (filter, asked) in filters {
            // An anonymous client has no commands to receive.
            let allowed = if self.device.is_empty() {
                None
            } else {
                acl::subscribe(&self.device, filter)
            };
            // Commands go out at QoS 1 at most: a PUBACK is all delivery
            // tracking needs, and QoS 2 would add a round trip for nothing.
            let qos = if *asked == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            let ok = match allowed {
                Some(broker_filter) => match self.link_tx() {
                    Some(tx) => match tx.subscribe(broker_filter) {
                        Ok(_) => {
                            self.subscribed.insert(filter.clone(), qos);
                            true
                        }
                        Err(e) => {
                            tracing::warn!(device = %self.device, "cannot subscribe in the router: {e}");
                            false
                        }
                    },
                    None => false,
                },
                None => {
                    metrics.refuse(&metrics.edge.denied, Some(&self.device));
                    log_denied(&self.device, "subscribe to", filter);
                    false
                }
            };
            granted.push(ok.then_some(qos));
        }
        self.say(Outbound::SubAck { pkid, granted });
        // Told after the router has the subscription, so the commands that
        // waited for the device are sent to it now.
        let route = self.route();
        if route.any() {
            self.edge
                .commands
                .subscribed(&self.device, self.session_id, route)
                .await;
        }
    }

    fn unsubscribe(&mut self, pkid: u16, filters: &[String]) {
        let mut existed = Vec::with_capacity(filters.len());
        for topic in filters {
            let was = self.subscribed.remove(topic).is_some();
            if let (true, Some(filter), Some((tx, _))) =
                (was, acl::subscribe(&self.device, topic), self.link.as_mut())
            {
                let _ = tx.unsubscribe(filter);
            }
            existed.push(was);
        }
        self.say(Outbound::UnsubAck { pkid, existed });
        if !self.route().any() {
            self.edge
                .commands
                .unsubscribed(&self.device, self.session_id);
        }
    }

    /// Which commands this session's filters receive.
    fn route(&self) -> Route {
        self.subscribed
            .keys()
            .map(|f| acl::command_route(&self.device, f))
            .fold(Route::default(), Route::or)
    }

    /// The QoS a message on `seen` (the device's view of the topic) goes
    /// out at: the highest granted to a filter of the same kind.
    fn delivery_qos(&self, seen: &str) -> QoS {
        let thingsboard = acl::command_route(&self.device, seen).thingsboard;
        let same_kind = |r: Route| if thingsboard { r.thingsboard } else { r.native };
        let acknowledged = self.subscribed.iter().any(|(filter, qos)| {
            *qos == QoS::AtLeastOnce && same_kind(acl::command_route(&self.device, filter))
        });
        if acknowledged {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        }
    }

    /// A packet id for a QoS 1 command, unused among those in flight.
    fn next_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_pkid = self.last_pkid.wrapping_add(1).max(1);
            if !self.in_flight.contains_key(&self.last_pkid) {
                return Some(self.last_pkid);
            }
        }
        None
    }

    /// The device's router link, made on first use.
    fn link_tx(&mut self) -> Option<&mut LinkTx> {
        if self.link.is_none() {
            match self.edge.broker.link(&self.link_name) {
                Ok(link) => self.link = Some(link),
                Err(e) => {
                    tracing::warn!(device = %self.device, "cannot link to the router: {e}");
                    return None;
                }
            }
        }
        self.link.as_mut().map(|(tx, _)| tx)
    }

    /// Writes a message the router delivered to the device.
    async fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Publish(topic, payload, correlation) => {
                // The command service puts the command id in the
                // correlation data; anything without one is passed on
                // untracked.
                let id = correlation.and_then(|c| String::from_utf8(c.to_vec()).ok());
                let seen = acl::delivered_topic(&self.device, &topic, id.as_deref());
                let mut qos = self.delivery_qos(&seen);
                let mut pkid = 0;
                if let (QoS::AtLeastOnce, Some(id)) = (qos, &id) {
                    match self.next_pkid() {
                        Some(p) => {
                            pkid = p;
                            self.in_flight.insert(p, id.clone());
                        }
                        None => qos = QoS::AtMostOnce,
                    }
                }
                let reply = match (&id, self.version) {
                    (Some(id), Version::V5) => Some((
                        acl::answer_topic_for(&self.device, &seen, id),
                        Bytes::from(id.clone()),
                    )),
                    _ => None,
                };
                self.say(Outbound::Publish {
                    topic: seen,
                    payload,
                    qos,
                    pkid,
                    reply,
                });
                // At QoS 0 no acknowledgement will come: handing the
                // message to the socket is as delivered as it gets.
                if let (QoS::AtMostOnce, Some(id)) = (qos, &id) {
                    self.edge.commands.delivered(&self.device, id);
                }
            }
            Delivery::Wake => {
                if let Some((_, rx)) = &self.link {
                    let _ = rx.wake().await;
                }
            }
            Delivery::Nothing => {}
            Delivery::Lost(e) => {
                tracing::warn!(device = %self.device, "router link lost: {e}");
                // Nothing reaches this session any more: its commands go
                // back to waiting (persistent) or fail, rather than being
                // sent into the void. A new SUBSCRIBE links it again.
                self.link = None;
                self.subscribed.clear();
                self.in_flight.clear();
                self.edge
                    .commands
                    .unsubscribed(&self.device, self.session_id);
            }
        }
    }

    /// Queues a packet for the device, in its protocol version.
    fn say(&mut self, packet: Outbound) {
        if let Err(e) = self.version.write(&mut self.out, packet) {
            tracing::error!(device = %self.device, "cannot encode a packet: {e}");
        }
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&self.out)).await;
        self.out.clear();
        match result {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        }
    }

    /// Cleans up after the session ended: publishes the Last Will if due,
    /// leaves the router and records why the device went away.
    async fn finish(&mut self, end: End) {
        let metrics = &self.edge.metrics;
        match &end {
            End::KeepAlive => Metrics::add(&metrics.edge.keepalive_expired, 1),
            End::TooLarge => metrics.refuse(&metrics.edge.too_large, Some(&self.device)),
            End::Protocol(why) => {
                Metrics::add(&metrics.edge.protocol_errors, 1);
                tracing::info!(device = %self.device, "closing: protocol error: {why}");
            }
            _ => {}
        }
        if end.publishes_will() {
            if let Some(will) = self.will.take() {
                self.publish_will(will);
            }
        }
        if let Some((mut tx, _)) = self.link.take() {
            crate::broker::leave(&mut tx).await;
        }
        if !self.subscribed.is_empty() {
            self.edge
                .commands
                .unsubscribed(&self.device, self.session_id);
        }
        self.ended_because = end.reason();
    }

    /// A Last Will is stored like any publish of the device: a will of
    /// `{"online":0}` on `sensor/<id>` becomes a reading.
    fn publish_will(&self, will: Will) {
        if self.device.is_empty() {
            return;
        }
        Metrics::add(&self.edge.metrics.edge.wills, 1);
        let Some(telemetry) = acl::publish(&self.device, &will.topic) else {
            return;
        };
        let readings = self.edge.ingest.decode(
            &self.device,
            &will.topic,
            telemetry,
            &will.payload,
            now_ms(),
        );
        if !readings.is_empty() {
            self.edge.ingest.queue(readings, Instant::now());
        }
    }
}

/// Logs a topic refusal at a bounded rate.
fn log_denied(device: &str, action: &str, topic: &str) {
    static LOG: std::sync::OnceLock<LogLimiter> = std::sync::OnceLock::new();
    let log = LOG.get_or_init(|| LogLimiter::new(20, Duration::from_secs(10)));
    if let Some(suppressed) = log.allow() {
        let topic: String = topic.chars().take(128).collect();
        tracing::info!(
            device,
            suppressed,
            "refused {action} {:?}",
            topic.escape_debug().to_string()
        );
    }
}

/// What the router had for the device.
enum Delivery {
    /// Topic, payload and correlation data.
    Publish(String, Bytes, Option<Bytes>),
    /// The router paused the link because its buffer filled; it must be
    /// woken or delivery stops.
    Wake,
    Nothing,
    Lost(String),
}

/// Waits for the router's next delivery, or forever if there is no link.
async fn next_delivery(link: &mut Option<(LinkTx, LinkRx)>) -> Delivery {
    let Some((_, rx)) = link.as_mut() else {
        return std::future::pending().await;
    };
    match rx.next().await {
        Ok(Some(Notification::Forward(f))) => Delivery::Publish(
            String::from_utf8_lossy(&f.publish.topic).into_owned(),
            f.publish.payload,
            f.properties.and_then(|p| p.correlation_data),
        ),
        Ok(Some(Notification::Unschedule)) => Delivery::Wake,
        Ok(_) => Delivery::Nothing,
        Err(e) => Delivery::Lost(e.to_string()),
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
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
    fn keep_alive_is_enforced_at_one_and_a_half_times() {
        assert_eq!(keep_alive_limit(0), None);
        assert_eq!(keep_alive_limit(2), Some(Duration::from_secs(3)));
    }

    #[test]
    fn the_rate_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = Bucket::new(100.0);
        b.last = start;
        let burst = (0..200).filter(|_| b.take(start)).count();
        assert_eq!(burst, 100, "one second's worth at once");
        assert!(!b.take(start));
        assert!(
            b.take(start + Duration::from_millis(20)),
            "refilled at the rate"
        );
    }
}
