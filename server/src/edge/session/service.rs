//! A service account's session: it subscribes to the feed of committed
//! readings within its grants (plainly or in `$share` groups), receives
//! them at the QoS granted, and publishes nothing but the tracked commands
//! it may be granted, on `command/<device>`. Its session is always
//! clean: a tool that reads the stream reconnects and carries on from
//! the live data, and what it missed is in the API.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use app::model::{CommandRequest, ServiceAccount};
use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::end::End;
use super::{log_denied, sleep_until};
use crate::acl;
use crate::edge::codec::{ConnectCode, ConnectInfo, Inbound, Outbound, ReadError, Version};
use crate::edge::login::{keep_alive, keep_alive_limit};
use crate::edge::rate::Bucket;
use crate::edge::Edge;
use crate::feed::FeedMessage;
use crate::metrics::Metrics;

/// QoS 1 messages sent and not yet acknowledged, at most; beyond it the
/// session stops taking from its feed queue until PUBACKs arrive.
const MAX_IN_FLIGHT: usize = 1024;

/// How often a session checks that its account still exists.
const RECHECK: Duration = Duration::from_secs(30);

/// A session's place in the feed, given up when the session ends.
struct Member<'a> {
    feed: &'a crate::feed::Feed,
    session: u64,
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        self.feed.leave(self.session);
    }
}

/// What the login hands over.
pub(super) struct Start {
    pub session_id: u64,
    pub version: Version,
    pub connect: ConnectInfo,
    pub account: ServiceAccount,
    pub inbuf: BytesMut,
}

struct Service<'a> {
    edge: &'a Edge,
    id: u64,
    account: ServiceAccount,
    version: Version,
    out: BytesMut,
    /// Filters as the client wrote them (with any `$share/<group>/`), with
    /// the QoS granted.
    subscribed: HashMap<String, QoS>,
    in_flight: HashMap<u16, ()>,
    /// At most this many QoS 1 messages unacknowledged: [`MAX_IN_FLIGHT`],
    /// or fewer if an MQTT 5 client's Receive Maximum says so.
    max_in_flight: usize,
    last_pkid: u16,
    subscribe_bucket: Bucket,
    /// Commands published, at `--max-publish-rate` as a device's readings.
    publish_bucket: Bucket,
    /// QoS 2 commands taken whose PUBREL has not come: the same packet id
    /// again is the client sending it again, not a second command.
    awaiting_release: HashSet<u16>,
}

/// Runs a service account's session to its end.
pub(super) async fn run<R, W>(
    edge: &Edge,
    start: Start,
    rd: &mut R,
    wr: &mut W,
    stop: &CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Start {
        session_id,
        version,
        connect,
        account,
        inbuf,
    } = start;
    let settings = &edge.settings;
    // An account holds at most as many connections as a device may.
    let joined = edge.feed.join(
        session_id,
        &account.name,
        settings.max_feed_queue,
        settings.max_connections_per_device,
    );
    let Some((mut feed, removed)) = joined else {
        let metrics = &edge.metrics;
        metrics.refuse(&metrics.edge.device_connections_refused, None);
        tracing::info!(account = %account.name, "refused a connection: the service account holds its most connections");
        let mut out = BytesMut::new();
        let refusal = Outbound::ConnAck {
            code: ConnectCode::QuotaExceeded,
            assigned_id: None,
            keep_alive: None,
            session_present: false,
            session_expiry: None,
        };
        if version.write(&mut out, refusal).is_ok() {
            let _ = super::write_out(wr, &mut out).await;
        }
        return;
    };
    // Leaves the feed however the session ends, so that the feed never
    // counts a gone session as listening.
    let _member = Member {
        feed: &edge.feed,
        session: session_id,
    };
    tracing::info!(account = %account.name, "service account connected");
    let kept_alive = keep_alive(connect.keep_alive, edge.settings.max_keep_alive);
    let mut service = Service {
        edge,
        id: session_id,
        account,
        version,
        out: BytesMut::new(),
        subscribed: HashMap::new(),
        in_flight: HashMap::new(),
        max_in_flight: connect
            .receive_max
            .map_or(MAX_IN_FLIGHT, |m| MAX_IN_FLIGHT.min(usize::from(m.max(1)))),
        last_pkid: 0,
        subscribe_bucket: Bucket::new(edge.settings.max_subscribe_rate),
        publish_bucket: Bucket::new(edge.settings.max_publish_rate),
        awaiting_release: HashSet::new(),
    };
    let assigned = connect
        .client_id
        .is_empty()
        .then(|| format!("sightline-{session_id}"));
    service.say(Outbound::ConnAck {
        code: ConnectCode::Accepted,
        assigned_id: assigned,
        keep_alive: (kept_alive != connect.keep_alive).then_some(kept_alive),
        // A service account's session is not kept: its feed is of
        // committed readings, which a reader catches up on over HTTP.
        session_present: false,
        session_expiry: connect.session_expiry.filter(|s| *s > 0).map(|_| 0),
    });
    let end = match service.flush(wr).await {
        Ok(()) => {
            let limit = keep_alive_limit(kept_alive);
            service
                .serve(rd, wr, inbuf, &mut feed, limit, stop, &removed)
                .await
        }
        Err(_) => End::SocketClosed,
    };
    if let Some(goodbye) = end.goodbye() {
        service.say(Outbound::Disconnect(goodbye, end.reason()));
        let _ = service.flush(wr).await;
    }
    if let End::Protocol(why) = &end {
        Metrics::add(&edge.metrics.edge.protocol_errors, 1);
        tracing::info!(account = %service.account.name, "closing: protocol error: {why}");
    }
    tracing::info!(account = %service.account.name, "service account disconnected: {}", end.reason());
}

impl Service<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn serve<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        mut inbuf: BytesMut,
        feed: &mut mpsc::Receiver<FeedMessage>,
        keep_alive: Duration,
        stop: &CancellationToken,
        removed: &CancellationToken,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let max = self.edge.settings.max_packet_bytes;
        let packet_timeout = self.edge.settings.packet_timeout;
        let mut last_heard = Instant::now();
        let mut packet_began: Option<Instant> = None;
        // An account removed on another instance, or between its login
        // and joining the feed here, is noticed within `RECHECK`.
        let mut recheck = tokio::time::interval_at(
            (Instant::now() + Duration::from_millis(100)).into(),
            RECHECK,
        );
        loop {
            let mut handled = false;
            loop {
                match self.version.read(&mut inbuf, max) {
                    Ok(packet) => {
                        handled = true;
                        if let Err(end) = self.handle(packet).await {
                            let _ = self.flush(wr).await;
                            return end;
                        }
                    }
                    Err(ReadError::Incomplete) => break,
                    Err(ReadError::TooLarge) => return End::TooLarge,
                    Err(ReadError::Malformed(why)) => return End::Protocol(why),
                }
            }
            if handled {
                last_heard = Instant::now();
            }
            packet_began = match packet_began {
                _ if inbuf.is_empty() => None,
                _ if handled => Some(Instant::now()),
                began => began.or_else(|| Some(Instant::now())),
            };
            if self.flush(wr).await.is_err() {
                return End::WriteStalled;
            }
            super::tend(&mut inbuf);
            let expiry = last_heard + keep_alive;
            let unfinished = packet_began.map(|began| began + packet_timeout);
            let room = self.in_flight.len() < self.max_in_flight;
            tokio::select! {
                biased;
                () = stop.cancelled() => return End::Shutdown,
                () = removed.cancelled() => return End::Disabled,
                read = rd.read_buf(&mut inbuf) => match read {
                    Ok(0) | Err(_) => return End::SocketClosed,
                    Ok(_) => last_heard = Instant::now(),
                },
                Some(message) = feed.recv(), if room => {
                    self.send(message);
                    // Take what else is queued, up to the in-flight limit,
                    // so that one write carries many messages.
                    while self.in_flight.len() < self.max_in_flight && self.out.len() < 64 * 1024 {
                        match feed.try_recv() {
                            Ok(message) => self.send(message),
                            Err(_) => break,
                        }
                    }
                }
                () = tokio::time::sleep_until(expiry.into()) => {
                    Metrics::add(&self.edge.metrics.edge.keepalive_expired, 1);
                    return End::KeepAlive;
                }
                () = sleep_until(unfinished) => return End::PacketTimeout,
                _ = recheck.tick() => match self.edge.store.service_account(&self.account.name).await {
                    Ok(None) => return End::Disabled,
                    Ok(Some(_)) => {}
                    // A database that cannot answer does not end a session
                    // that logged in properly.
                    Err(e) => tracing::warn!(account = %self.account.name, "cannot recheck a service account: {e}"),
                },
            }
        }
    }

    async fn handle(&mut self, packet: Inbound) -> Result<(), End> {
        match packet {
            // The feed is read-only, and nothing a service account does may
            // act as a device: it publishes only commands it was granted,
            // which become tracked commands, not messages on the topic.
            Inbound::Publish {
                topic,
                payload,
                qos,
                pkid,
                ..
            } => match acl::service_command(&self.account.publish, &topic) {
                Some(device) => {
                    let device = device.to_owned();
                    self.command(&device, &payload, qos, pkid).await;
                    Ok(())
                }
                None => {
                    let metrics = &self.edge.metrics;
                    metrics.refuse(&metrics.edge.denied, None);
                    log_denied(&self.account.name, "publish to", &topic);
                    Err(End::Denied)
                }
            },
            Inbound::Subscribe { pkid, filters } => {
                self.allowed(filters.len())?;
                let granted = filters
                    .iter()
                    .map(|(filter, asked)| self.subscribe(filter, *asked))
                    .collect();
                self.say(Outbound::SubAck { pkid, granted });
                Ok(())
            }
            Inbound::Unsubscribe { pkid, filters } => {
                self.allowed(filters.len())?;
                let existed = filters
                    .iter()
                    .map(|filter| {
                        let was = self.subscribed.remove(filter).is_some();
                        if let (true, Some((group, plain))) = (was, acl::shared(filter)) {
                            self.edge.feed.unsubscribe(self.id, group, plain);
                        }
                        was
                    })
                    .collect();
                self.say(Outbound::UnsubAck { pkid, existed });
                Ok(())
            }
            Inbound::PubAck(pkid) => {
                self.in_flight.remove(&pkid);
                Ok(())
            }
            Inbound::PingReq => {
                self.say(Outbound::PingResp);
                Ok(())
            }
            Inbound::Disconnect { .. } => Err(End::Disconnect),
            Inbound::PubRel(pkid) => {
                self.awaiting_release.remove(&pkid);
                self.say(Outbound::PubComp(pkid));
                Ok(())
            }
            Inbound::Ack => Ok(()),
            Inbound::Connect(_) => Err(End::Protocol("a second CONNECT".into())),
            Inbound::Unexpected(what) => Err(End::Protocol(format!("unexpected {what}"))),
        }
    }

    /// Sends the command a PUBLISH on `command/<device>` carries: its
    /// payload is the API's command request. It is acknowledged once the
    /// command is accepted (sent, queued or, for an offline device,
    /// failed, exactly as the API answers 201); a refusal (unreadable,
    /// unknown device, too large, queue full) is logged and counted, and
    /// MQTT 5 hears it as "payload format invalid". The client reads the
    /// command's progress from the API, as it would after a POST.
    async fn command(&mut self, device: &str, payload: &[u8], qos: QoS, pkid: u16) {
        if qos == QoS::ExactlyOnce && self.awaiting_release.contains(&pkid) {
            self.say(Outbound::PubRec { pkid, stored: true });
            return;
        }
        // Above the rate the session waits, so TCP slows the client down.
        let now = Instant::now();
        if let Err(ready_at) = self.publish_bucket.ready(now) {
            Metrics::add(&self.edge.metrics.edge.throttled, 1);
            tokio::time::sleep_until(ready_at.into()).await;
        }
        self.publish_bucket.take(Instant::now());
        let commands = &self.edge.commands;
        let sent = match serde_json::from_slice::<CommandRequest>(payload) {
            Ok(request) => commands
                .send(device, request)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => {
                Metrics::add(&self.edge.metrics.commands.refused, 1);
                Err(format!("not a command request: {e}"))
            }
        };
        let actor = format!("service:{}", self.account.name);
        match &sent {
            Ok(c) => {
                tracing::info!(account = %self.account.name, %device, command = %c.id, "command sent over MQTT");
                self.edge.audit.command_sent(&actor, device, c, None).await;
            }
            Err(why) => log_refused_command(&self.account.name, device, why),
        }
        let stored = sent.is_ok();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.say(Outbound::PubAck { pkid, stored }),
            QoS::ExactlyOnce => {
                if stored {
                    self.awaiting_release.insert(pkid);
                }
                self.say(Outbound::PubRec { pkid, stored });
            }
        }
    }

    /// The subscribe rate and the filters-per-packet limit, as for devices.
    fn allowed(&mut self, filters: usize) -> Result<(), End> {
        let max = self.edge.settings.max_filters_per_subscribe;
        super::subscribe_allowed(&mut self.subscribe_bucket, max, filters)
    }

    /// Grants `filter` if the account's grants cover it; the feed goes out
    /// at QoS 1 at most, which is all a consumer needs to lose nothing on
    /// a live connection.
    fn subscribe(&mut self, filter: &str, asked: QoS) -> Option<QoS> {
        let metrics = &self.edge.metrics;
        let Some((group, plain)) = acl::shared(filter) else {
            metrics.refuse(&metrics.edge.denied, None);
            log_denied(&self.account.name, "subscribe to", filter);
            return None;
        };
        if !acl::service_subscribe(&self.account.subscribe, plain) {
            metrics.refuse(&metrics.edge.denied, None);
            log_denied(&self.account.name, "subscribe to", filter);
            return None;
        }
        if !self.subscribed.contains_key(filter)
            && self.subscribed.len() >= self.edge.settings.max_subscriptions
        {
            Metrics::add(&metrics.edge.subscriptions_refused, 1);
            return None;
        }
        let qos = if asked == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        self.subscribed.insert(filter.to_owned(), qos);
        self.edge.feed.subscribe(self.id, group, plain);
        Some(qos)
    }

    /// Writes one feed message at the highest QoS of the filters it
    /// matched (MQTT 3.1.1's one copy for overlapping subscriptions).
    fn send(&mut self, message: FeedMessage) {
        let acknowledged = self.subscribed.iter().any(|(filter, qos)| {
            *qos == QoS::AtLeastOnce
                && acl::shared(filter).is_some_and(|(_, f)| acl::matches(f, &message.topic))
        });
        let mut qos = QoS::AtMostOnce;
        let mut pkid = 0;
        if acknowledged {
            if let Some(p) = self.next_pkid() {
                self.in_flight.insert(p, ());
                pkid = p;
                qos = QoS::AtLeastOnce;
            }
        }
        self.say(Outbound::Publish {
            topic: message.topic.to_string(),
            payload: message.payload,
            qos,
            pkid,
            retain: false,
            dup: false,
            reply: None,
        });
    }

    fn next_pkid(&mut self) -> Option<u16> {
        super::free_pkid(&mut self.last_pkid, &self.in_flight)
    }

    fn say(&mut self, packet: Outbound) {
        if let Err(e) = self.version.write(&mut self.out, packet) {
            tracing::error!(account = %self.account.name, "cannot encode a packet: {e}");
        }
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> std::io::Result<()> {
        super::write_out(wr, &mut self.out).await
    }
}

/// Logs a refused command at a bounded rate.
fn log_refused_command(account: &str, device: &str, why: &str) {
    static LOG: std::sync::OnceLock<crate::metrics::LogLimiter> = std::sync::OnceLock::new();
    let log = LOG.get_or_init(|| crate::metrics::LogLimiter::new(20, Duration::from_secs(10)));
    if let Some(suppressed) = log.allow() {
        tracing::info!(account, device, suppressed, "refused a command: {why}");
    }
}
