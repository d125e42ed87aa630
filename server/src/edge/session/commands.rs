//! A session's commands: the device's subscriptions to its command
//! topics, and delivery of commands from the router at the QoS granted,
//! with answers handed to the command service; and its desired state,
//! sent retained when the device subscribes and live when it changes.

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;

use std::time::Instant;

use super::end::End;
use super::{log_denied, Session};
use crate::acl::{self, Route};
use crate::edge::codec::{Outbound, Version};
use crate::metrics::Metrics;

impl Session<'_> {
    /// Hands a device's answer to a command to the command service. The
    /// answer is acknowledged once taken (or refused: MQTT 5 then hears
    /// that nothing matched).
    pub(super) async fn answer(
        &mut self,
        topic: &crate::acl::AnswerTopic,
        correlation: Option<&[u8]>,
        payload: &Bytes,
        qos: QoS,
        pkid: u16,
    ) -> Result<(), End> {
        // The serve loop waited for the rate before reading this packet.
        self.bucket.take(Instant::now());
        let taken = self
            .edge
            .commands
            .answer(&self.device, topic, correlation, payload)
            .await
            .is_ok();
        if qos != QoS::AtMostOnce {
            self.acks.at_once(pkid, qos == QoS::ExactlyOnce, taken);
            self.release_acks();
        }
        Ok(())
    }

    /// Checks a SUBSCRIBE or UNSUBSCRIBE of `filters` filters; see
    /// [`super::subscribe_allowed`].
    pub(super) fn subscribe_allowed(&mut self, filters: usize) -> Result<(), End> {
        let max = self.edge.settings.max_filters_per_subscribe;
        super::subscribe_allowed(&mut self.subscribe_bucket, max, filters)
    }

    pub(super) async fn subscribe(&mut self, pkid: u16, filters: &[(String, QoS)]) {
        // An anonymous client (open registration) that subscribes to its
        // commands before it publishes anything is named by that filter.
        if self.device.is_empty() {
            if let Some((filter, _)) = filters.first() {
                self.bind_by_name(acl::command_owner(filter)).await;
            }
        }
        let granted: Vec<Option<QoS>> = filters
            .iter()
            .map(|(filter, asked)| self.grant(filter, *asked))
            .collect();
        self.say(Outbound::SubAck {
            pkid,
            granted: granted.clone(),
        });
        self.subscribed_now(filters, &granted, true).await;
        self.save_session().await;
    }

    /// Grants one filter if the device may have it and the session has
    /// room, subscribing in the router; the QoS granted, or `None`.
    pub(super) fn grant(&mut self, filter: &str, asked: QoS) -> Option<QoS> {
        let metrics = &self.edge.metrics;
        // An anonymous client has no commands to receive.
        let allowed = if self.device.is_empty() {
            None
        } else {
            acl::subscribe(&self.device, filter)
        };
        // Commands go out at QoS 1 at most: a PUBACK is all delivery
        // tracking needs, and QoS 2 would add a round trip for nothing.
        let qos = if asked == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        // A session holds at most `--max-subscriptions` filters, each a
        // subscription in the router.
        let full = !self.subscribed.contains_key(filter)
            && self.subscribed.len() >= self.edge.settings.max_subscriptions;
        let ok = match allowed {
            Some(_) if full => {
                Metrics::add(&metrics.edge.subscriptions_refused, 1);
                false
            }
            Some(broker_filter) => match self.link_tx() {
                Some(tx) => match tx.subscribe(broker_filter) {
                    Ok(_) => {
                        self.subscribed.insert(filter.to_owned(), qos);
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
        ok.then_some(qos)
    }

    /// After filters were granted (by a SUBSCRIBE, or by resuming a stored
    /// session): the desired state goes out if one of them receives it
    /// (retained after a SUBSCRIBE; after a resume only if the device has
    /// not acknowledged the newest), and the commands waiting are sent.
    pub(super) async fn subscribed_now(
        &mut self,
        filters: &[(String, QoS)],
        granted: &[Option<QoS>],
        subscribe: bool,
    ) {
        let desired_now = filters
            .iter()
            .zip(granted)
            .any(|((f, _), g)| g.is_some() && acl::receives_desired(&self.device, f));
        if desired_now {
            if !self.watching_desired {
                self.edge.desired.watch(&self.device);
                self.watching_desired = true;
            }
            self.send_retained_desired(subscribe).await;
        }
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

    pub(super) async fn unsubscribe(&mut self, pkid: u16, filters: &[String]) {
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
        if self.watching_desired && self.desired_qos().is_none() {
            self.edge.desired.unwatch(&self.device);
            self.watching_desired = false;
        }
        if !self.route().any() {
            self.edge
                .commands
                .unsubscribed(&self.device, self.session_id, false);
        }
        self.save_session().await;
    }

    /// Which commands this session's filters receive.
    pub(super) fn route(&self) -> Route {
        self.subscribed
            .keys()
            .map(|f| acl::command_route(&self.device, f))
            .fold(Route::default(), Route::or)
    }

    /// The QoS a message on `seen` (the device's view of the topic) goes
    /// out at: the highest granted to a filter of the same kind.
    pub(super) fn delivery_qos(&self, seen: &str) -> QoS {
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

    /// The QoS the device's desired state goes out at: the highest granted
    /// to a filter that receives it; `None` if none does.
    fn desired_qos(&self) -> Option<QoS> {
        self.subscribed
            .iter()
            .filter(|(filter, _)| acl::receives_desired(&self.device, filter))
            .map(|(_, qos)| *qos)
            .max_by_key(|qos| *qos as u8)
    }

    /// Sends the stored desired state, flagged retained, after a SUBSCRIBE
    /// that receives it: a device that boots gets its configuration at
    /// once, however long ago it was set. After a resumed session
    /// (`subscribe` false) it goes only if the device has not acknowledged
    /// it, as a message it missed while away.
    async fn send_retained_desired(&mut self, subscribe: bool) {
        match self.edge.desired.get(&self.device).await {
            Ok(Some(state)) if !subscribe && state.acked_version == Some(state.version) => {}
            Ok(Some(state)) => {
                let payload = Bytes::from(state.payload.to_string());
                self.send_desired(payload, state.version, subscribe);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(device = %self.device, "cannot read the desired state: {e}");
            }
        }
    }

    /// Writes the device's desired state (an empty payload: removed) at the
    /// QoS its subscription asks, tracking a QoS 1 send of `version` so
    /// that its PUBACK marks that version acknowledged. Only the newest
    /// send is tracked: one that replaces an unacknowledged one frees its
    /// packet id, so a device that subscribes again and again cannot grow
    /// the session's in-flight map.
    fn send_desired(&mut self, payload: Bytes, version: i64, retain: bool) {
        let Some(mut qos) = self.desired_qos() else {
            return;
        };
        let mut pkid = 0;
        if qos == QoS::AtLeastOnce {
            self.in_flight
                .retain(|_, what| !matches!(what, InFlight::Desired(_)));
            match self.next_pkid() {
                Some(p) => {
                    pkid = p;
                    self.in_flight.insert(p, InFlight::Desired(version));
                }
                None => qos = QoS::AtMostOnce,
            }
        }
        self.say(Outbound::Publish {
            topic: acl::desired_topic(&self.device),
            payload,
            qos,
            pkid,
            retain,
            dup: false,
            reply: None,
        });
    }

    /// A packet id for a QoS 1 command, unused among those in flight.
    pub(super) fn next_pkid(&mut self) -> Option<u16> {
        super::free_pkid(&mut self.last_pkid, &self.in_flight)
    }

    /// The device's router link, made on first use.
    pub(super) fn link_tx(&mut self) -> Option<&mut LinkTx> {
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
    pub(super) async fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Publish(topic, payload, correlation)
                if topic == acl::desired_topic(&self.device) =>
            {
                let version = crate::desired::version_of(correlation.as_deref()).unwrap_or(0);
                self.send_desired(payload, version, false);
            }
            Delivery::Publish(topic, payload, correlation) => {
                // The command service puts the command id in the
                // correlation data; anything without one is passed on
                // untracked.
                let id = correlation.and_then(|c| String::from_utf8(c.to_vec()).ok());
                let seen = acl::delivered_topic(&self.device, &topic, id.as_deref());
                let mut qos = self.delivery_qos(&seen);
                let mut pkid = 0;
                let mut dup = false;
                if let (QoS::AtLeastOnce, Some(id)) = (qos, &id) {
                    // A command the last connection of a persistent session
                    // was sent goes out again as it was: same packet id,
                    // flagged DUP.
                    let again = self
                        .persist
                        .redeliver
                        .remove(id)
                        .filter(|p| *p != 0 && !self.in_flight.contains_key(p));
                    match again.or_else(|| self.next_pkid()) {
                        Some(p) => {
                            dup = again.is_some();
                            pkid = p;
                            self.in_flight.insert(p, InFlight::Command(id.clone()));
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
                    retain: false,
                    dup,
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
                if self.watching_desired {
                    self.edge.desired.unwatch(&self.device);
                    self.watching_desired = false;
                }
                self.edge.commands.unsubscribed(
                    &self.device,
                    self.session_id,
                    self.persist.keep_secs > 0,
                );
            }
        }
    }
}

/// What a QoS 1 message sent to the device was, for its PUBACK.
pub(super) enum InFlight {
    /// A command, by id.
    Command(String),
    /// A version of the desired state (0: its removal).
    Desired(i64),
}

/// What the router had for the device.
pub(super) enum Delivery {
    /// Topic, payload and correlation data.
    Publish(String, Bytes, Option<Bytes>),
    /// The router paused the link because its buffer filled; it must be
    /// woken or delivery stops.
    Wake,
    Nothing,
    Lost(String),
}

/// Waits for the router's next delivery, or forever if there is no link.
pub(super) async fn next_delivery(link: &mut Option<(LinkTx, LinkRx)>) -> Delivery {
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
