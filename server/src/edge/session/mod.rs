//! One device session, from an admitted CONNECT to the end: topic checks,
//! readings to ingest, acknowledgements after commit, keep-alive, Last Will
//! and online status. Login is in `edge::login`, the order of
//! acknowledgements in `edge::acks`, and commands (subscriptions and
//! delivery) in [`commands`].

mod commands;
mod end;
mod persist;
mod service;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::QoS;
use rumqttd::local::{LinkRx, LinkTx};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::acks::{Ack, Acks};
use super::codec::{ConnectCode, Inbound, Outbound, ReadError, Version, Will};
use super::login::{keep_alive, keep_alive_limit, login, Admitted, Who, READ_CHUNK, WRITE_TIMEOUT};
use super::rate::Bucket;
use super::{Edge, SocketGuard};
use crate::acl;
use crate::clock::now_ms;
use crate::metrics::{LogLimiter, Metrics};
use crate::names::valid_name;
use commands::{next_delivery, InFlight};
use end::End;

/// How long a session the server closes waits for its last readings to
/// commit.
pub(super) const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Runs one connection to its end: login, then the session.
pub(super) async fn run<S>(
    edge: &Edge,
    stream: S,
    peer: SocketAddr,
    stop: CancellationToken,
    logging_in: SocketGuard<'_>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let Some(Admitted {
        version,
        connect,
        who,
        inbuf,
    }) = login(edge, &mut rd, &mut wr, peer, &stop, logging_in).await
    else {
        return;
    };
    Metrics::add(&edge.metrics.edge.sessions, 1);
    let session_id = edge
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let device = match who {
        Who::Device(device) => device,
        Who::Service(account) => {
            let start = service::Start {
                session_id,
                version,
                connect,
                account,
                inbuf,
            };
            service::run(edge, start, &mut rd, &mut wr, &stop).await;
            edge.metrics
                .edge
                .sessions
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
            return;
        }
    };
    let settings = &edge.settings;
    let keep_alive = keep_alive(connect.keep_alive, settings.max_keep_alive);
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
        keep_alive: keep_alive_limit(keep_alive),
        will: connect.will.clone(),
        out: BytesMut::new(),
        acks: Acks::default(),
        link: None,
        subscribed: HashMap::new(),
        in_flight: HashMap::new(),
        watching_desired: false,
        last_pkid: 0,
        link_name: format!("device-{session_id}"),
        bucket: Bucket::new(settings.max_publish_rate),
        subscribe_bucket: Bucket::new(settings.max_subscribe_rate),
        acked_publishes: 0,
        ended_because: String::new(),
        persist: persist::Persistence::default(),
        predecessor: None,
        done: CancellationToken::new(),
    };
    // However the session ends, the connection that replaces it may go on
    // once it has stored what it keeps.
    let _done = session.done.clone().drop_guard();
    if let Some(device) = device {
        if !session.bind(device.clone()) {
            edge.metrics
                .refuse(&edge.metrics.edge.device_connections_refused, Some(&device));
            tracing::info!(%device, %peer, "refused a connection: the device holds its most connections");
            session.say(Outbound::ConnAck {
                code: ConnectCode::QuotaExceeded,
                assigned_id: None,
                keep_alive: None,
                session_present: false,
                session_expiry: None,
            });
            let _ = session.flush(&mut wr).await;
            edge.metrics
                .edge
                .sessions
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
    }
    let (session_present, session_expiry, resumed) = session.open_session(&connect).await;
    session.say(Outbound::ConnAck {
        code: ConnectCode::Accepted,
        assigned_id: connect
            .client_id
            .is_empty()
            .then(|| session.client_id.clone()),
        keep_alive: (keep_alive != connect.keep_alive).then_some(keep_alive),
        session_present,
        session_expiry,
    });
    if let Some(state) = resumed {
        session.restore(state).await;
    }
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
    /// How long the device may stay silent: 1.5 times its keep-alive,
    /// which is never 0 (none) nor above the server's maximum.
    keep_alive: Duration,
    will: Option<Will>,
    /// Packets waiting to be written, sent after each round of reading.
    out: BytesMut,
    /// Acknowledgements owed, in the order MQTT requires.
    acks: Acks,
    /// The device's link to the router, made at its first SUBSCRIBE.
    link: Option<(LinkTx, LinkRx)>,
    /// The filters granted so far, as the device wrote them, with the QoS
    /// granted for each.
    subscribed: HashMap<String, QoS>,
    /// Messages sent at QoS 1 and not yet acknowledged, by packet id.
    in_flight: HashMap<u16, InFlight>,
    /// Whether the desired-state service counts this session as subscribed
    /// to the device's desired state.
    watching_desired: bool,
    last_pkid: u16,
    link_name: String,
    /// Publishes allowed by `--max-publish-rate`.
    bucket: Bucket,
    /// SUBSCRIBEs and UNSUBSCRIBEs allowed by `--max-subscribe-rate`.
    subscribe_bucket: Bucket,
    /// QoS 1 and 2 publishes with readings received on this connection.
    /// The first `--redelivery-window` of them may be messages the device
    /// sends again because their acknowledgement was lost with its last
    /// connection.
    acked_publishes: usize,
    ended_because: String,
    /// What of the session outlives the connection.
    persist: persist::Persistence,
    /// Fires once the session this one replaced has stored its state.
    predecessor: Option<CancellationToken>,
    /// Fired when this session has ended and stored its state.
    done: CancellationToken,
}

impl Session<'_> {
    /// Makes this session the device's current one and marks it online;
    /// false if the device already holds its most connections.
    fn bind(&mut self, device: String) -> bool {
        let since = now_ms();
        let handle = super::Handle {
            session: self.session_id,
            since,
            end: self.replaced.clone(),
            disabled: self.disabled.clone(),
            done: self.done.clone(),
        };
        let max = self.edge.settings.max_connections_per_device;
        match self
            .edge
            .sessions
            .claim(&device, &self.client_id, handle, max)
        {
            super::Claim::Full => return false,
            super::Claim::Claimed(before) => self.predecessor = before,
        }
        self.edge
            .presence
            .connected(&device, self.session_id, since);
        // A session under this client id on another instance is a stale
        // one (the device reconnected here through the load balancer).
        if let Some(bus) = &self.edge.bus {
            bus.tell(&crate::bus::Remote::Connected {
                device: device.clone(),
                client_id: self.client_id.clone(),
                at: since,
            });
        }
        self.device = device;
        true
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
        self.edge
            .sessions
            .release(&self.device, &self.client_id, self.session_id);
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
                let bound = self.bind(owner.to_owned());
                if !bound {
                    let metrics = &self.edge.metrics;
                    metrics.refuse(&metrics.edge.device_connections_refused, Some(owner));
                }
                bound
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
        let packet_timeout = self.edge.settings.packet_timeout;
        let mut last_heard = Instant::now();
        // When the device began the packet that is still partly in
        // `inbuf`: it must finish within `packet_timeout`, or a client
        // could pin a buffer of up to `max` bytes by never finishing one.
        let mut packet_began: Option<Instant> = None;
        // Set while the device is above its publish rate: until then its
        // socket is not read, so TCP slows it down and nobody else.
        let mut throttled: Option<Instant> = None;
        let replaced = self.replaced.clone();
        loop {
            // Handle every whole packet already read, unless the next one
            // is a publish beyond the rate.
            let mut handled = false;
            loop {
                if is_publish(&inbuf) {
                    let now = Instant::now();
                    if let Err(ready_at) = self.bucket.ready(now) {
                        Metrics::add(&self.edge.metrics.edge.throttled, 1);
                        throttled = Some(ready_at);
                        break;
                    }
                }
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
            // While throttled, its silence is ours, not its own.
            if handled || throttled.is_some() {
                last_heard = Instant::now();
            }
            packet_began = match packet_began {
                _ if inbuf.is_empty() => None,
                _ if handled || throttled.is_some() => Some(Instant::now()),
                Some(began) => Some(began),
                None => Some(Instant::now()),
            };
            if self.flush(wr).await.is_err() {
                return End::WriteStalled;
            }
            tend(&mut inbuf);
            let expiry = last_heard + self.keep_alive;
            let unfinished = packet_began.map(|began| began + packet_timeout);
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
                    self.acks.committed(pkid);
                    self.committed(pkid);
                    while let Ok(pkid) = committed.try_recv() {
                        self.acks.committed(pkid);
                        self.committed(pkid);
                    }
                    self.release_acks();
                }
                () = sleep_until(throttled), if throttled.is_some() => throttled = None,
                read = rd.read_buf(&mut inbuf), if throttled.is_none() => match read {
                    Ok(0) | Err(_) => return End::SocketClosed,
                    Ok(_) => last_heard = Instant::now(),
                },
                () = tokio::time::sleep_until(expiry.into()), if throttled.is_none() => {
                    return End::KeepAlive;
                }
                () = sleep_until(unfinished), if throttled.is_none() => return End::PacketTimeout,
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
                dup,
                correlation,
            } => {
                let answer = (!self.device.is_empty())
                    .then(|| acl::answer(&self.device, &topic))
                    .flatten();
                if let Some(answer) = answer {
                    self.answer(&answer, correlation.as_deref(), &payload, qos, pkid)
                        .await
                } else if dup && self.sent_before(&topic, &payload, qos, pkid) {
                    self.duplicate(qos, pkid);
                    Ok(())
                } else {
                    self.publish(&topic, &payload, qos, pkid, committed).await
                }
            }
            Inbound::PubRel(pkid) => {
                // The device has its PUBREC: the id is free for a new
                // message from now on.
                self.persist.received.remove(pkid);
                self.say(Outbound::PubComp(pkid));
                Ok(())
            }
            Inbound::Subscribe { pkid, filters } => {
                self.subscribe_allowed(filters.len())?;
                self.subscribe(pkid, &filters).await;
                Ok(())
            }
            Inbound::Unsubscribe { pkid, filters } => {
                self.subscribe_allowed(filters.len())?;
                self.unsubscribe(pkid, &filters).await;
                Ok(())
            }
            Inbound::PingReq => {
                self.say(Outbound::PingResp);
                Ok(())
            }
            Inbound::Disconnect { with_will: false } => Err(End::Disconnect),
            Inbound::Disconnect { with_will: true } => Err(End::DisconnectWithWill),
            Inbound::PubAck(pkid) => {
                match self.in_flight.remove(&pkid) {
                    Some(InFlight::Command(id)) => self.edge.commands.delivered(&self.device, &id),
                    Some(InFlight::Desired(version)) => {
                        self.edge.desired.acknowledged(&self.device, version);
                    }
                    None => {}
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

    async fn publish(
        &mut self,
        topic: &str,
        payload: &Bytes,
        qos: QoS,
        pkid: u16,
        committed: &mpsc::UnboundedSender<u16>,
    ) -> Result<(), End> {
        let metrics = &self.edge.metrics;
        // The serve loop waited for the rate before reading this packet.
        self.bucket.take(Instant::now());
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
        let received_ms = now_ms();
        let readings =
            self.edge
                .ingest
                .decode(&self.device, topic, telemetry, payload, received_ms);
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
            // Only readings with the device's own `ts` can be recognised
            // when sent again: those stamped here get a new time each
            // time, and two of them stamped in the same millisecond with
            // the same value are two readings, not one sent twice.
            let maybe_again = self.acked_publishes < self.edge.settings.redelivery_window
                && readings.iter().all(|r| r.ts != received_ms);
            self.acked_publishes += 1;
            let ack = (committed.clone(), pkid);
            let queued = tokio::select! {
                () = self.edge.ingest.queue_acked(readings, at, ack, maybe_again) => true,
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
        if ready {
            self.acks.at_once(pkid, exactly_once, false);
        } else {
            self.acks.after_commit(pkid, exactly_once);
            // Once committed, the same message sent again under this id is
            // recognised, even on the device's next connection.
            let print = persist::fingerprint(topic, payload, qos);
            self.persist.pending.insert(pkid, print);
        }
        self.release_acks();
        Ok(())
    }

    /// Whether a publish flagged DUP is one whose readings are already
    /// committed: the same message, under the same packet id, on a topic
    /// the device may publish to.
    fn sent_before(&self, topic: &str, payload: &[u8], qos: QoS, pkid: u16) -> bool {
        qos != QoS::AtMostOnce
            && !self.device.is_empty()
            && acl::publish(&self.device, topic).is_some()
            && self
                .persist
                .received
                .contains(pkid, persist::fingerprint(topic, payload, qos))
    }

    /// A QoS 1 or 2 publish sent again under a packet id whose readings
    /// were already taken (its acknowledgement was lost with a
    /// connection): acknowledged, in order, and not stored twice.
    fn duplicate(&mut self, qos: QoS, pkid: u16) {
        // The serve loop waited for the rate before reading this packet.
        self.bucket.take(Instant::now());
        Metrics::add(&self.edge.metrics.edge.duplicates, 1);
        self.acks.at_once(pkid, qos == QoS::ExactlyOnce, true);
        self.release_acks();
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
        while self.acks.waiting() {
            match tokio::time::timeout_at(deadline, committed.recv()).await {
                Ok(Some(pkid)) => {
                    self.acks.committed(pkid);
                    self.committed(pkid);
                }
                _ => break,
            }
        }
        self.release_acks();
        let _ = self.flush(wr).await;
    }

    /// Sends every acknowledgement that may go now, in publish order.
    fn release_acks(&mut self) {
        while let Some(Ack {
            pkid,
            exactly_once,
            stored,
        }) = self.acks.next_ready()
        {
            if exactly_once {
                self.say(Outbound::PubRec { pkid, stored });
            } else {
                self.say(Outbound::PubAck { pkid, stored });
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
        write_out(wr, &mut self.out).await
    }

    /// Cleans up after the session ended: publishes the Last Will if due,
    /// leaves the router and records why the device went away.
    async fn finish(&mut self, end: End) {
        let metrics = &self.edge.metrics;
        match &end {
            End::KeepAlive => Metrics::add(&metrics.edge.keepalive_expired, 1),
            End::TooLarge => metrics.refuse(&metrics.edge.too_large, Some(&self.device)),
            End::SubscribeFlood | End::TooManyFilters => {
                metrics.refuse(&metrics.edge.subscribe_abuse, Some(&self.device));
                tracing::info!(device = %self.device, "closing: {}", end.reason());
            }
            End::PacketTimeout => Metrics::add(&metrics.edge.packet_timeouts, 1),
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
        self.end_session().await;
        if !self.subscribed.is_empty() {
            self.edge.commands.unsubscribed(
                &self.device,
                self.session_id,
                self.persist.keep_secs > 0,
            );
        }
        if self.watching_desired {
            self.edge.desired.unwatch(&self.device);
            self.watching_desired = false;
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

/// Writes the packets waiting in `out`, within [`WRITE_TIMEOUT`], and
/// empties it. Flushed, since a WebSocket (and TLS) holds what it is given
/// until then; on plain TCP the flush costs nothing.
async fn write_out<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut BytesMut) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        wr.write_all(out).await?;
        wr.flush().await
    };
    let result = tokio::time::timeout(WRITE_TIMEOUT, write).await;
    out.clear();
    result.unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)))
}

/// Readies the read buffer for the next read: a buffer that a large packet
/// grew is let go once empty, so an idle connection does not keep it, and
/// one nearly full gets room for another chunk.
fn tend(inbuf: &mut BytesMut) {
    if inbuf.is_empty() && inbuf.capacity() > 4 * READ_CHUNK {
        *inbuf = BytesMut::with_capacity(READ_CHUNK);
    } else if inbuf.capacity() - inbuf.len() < READ_CHUNK / 2 {
        inbuf.reserve(READ_CHUNK);
    }
}

/// A packet id for a QoS 1 message, after `last` and unused among those
/// `in_flight`; `None` if all are in use.
fn free_pkid<V>(last: &mut u16, in_flight: &HashMap<u16, V>) -> Option<u16> {
    for _ in 0..u16::MAX {
        *last = last.wrapping_add(1).max(1);
        if !in_flight.contains_key(last) {
            return Some(*last);
        }
    }
    None
}

/// Checks a SUBSCRIBE or UNSUBSCRIBE of `filters` filters against the
/// subscribe rate and the filters-per-packet limit. Either is abuse, not a
/// mistake a client makes in the field (it needs at most a few filters,
/// once per connection), so it closes the connection.
fn subscribe_allowed(bucket: &mut Bucket, max_filters: usize, filters: usize) -> Result<(), End> {
    if !bucket.take(Instant::now()) {
        return Err(End::SubscribeFlood);
    }
    if filters > max_filters {
        return Err(End::TooManyFilters);
    }
    Ok(())
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

/// Whether the next packet in `inbuf` is a PUBLISH (packet type 3), the
/// only kind the publish rate applies to.
fn is_publish(inbuf: &[u8]) -> bool {
    inbuf.first().is_some_and(|b| b >> 4 == 3)
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
