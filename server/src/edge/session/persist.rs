//! A device session's persistence: MQTT's clean session (3.1.1) and
//! session expiry (5). A persistent session's subscriptions, unacknowledged
//! commands and recent packet ids are stored (`store::sessions`), so a
//! device that comes back, even after a server restart, finds its
//! subscriptions in place, its commands waiting, and its retransmitted
//! publishes recognised.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::mqttbytes::QoS;

use super::{Session, SETTLE_LIMIT};
use crate::clock::now_ms;
use crate::edge::codec::{ConnectInfo, Version};
use crate::metrics::Metrics;
use crate::store::sessions::SessionState;

/// What a session keeps, and what it took up from the one before.
#[derive(Debug, Default)]
pub(super) struct Persistence {
    /// Seconds the session is kept after the connection ends; 0: not kept.
    pub(super) keep_secs: u32,
    /// Commands the last connection was sent and did not acknowledge, by
    /// command id: each goes out again under its packet id, flagged DUP.
    pub(super) redeliver: HashMap<String, u16>,
    /// Packet ids (with each message's fingerprint) of the newest QoS 1
    /// and 2 publishes whose readings are committed.
    pub(super) received: Recent,
    /// Those queued and not yet committed, by packet id: they join
    /// `received` once committed, so a message that was never stored is
    /// never taken for a duplicate.
    pub(super) pending: HashMap<u16, u64>,
    /// Identifies this connection's hold on the stored row, so that a
    /// connection that was replaced cannot overwrite its successor's.
    owner: i64,
    /// The subscriptions last stored, so an unchanged set is not written
    /// again.
    saved: Option<Vec<(String, u8)>>,
}

/// The longest client id whose session is stored; a longer one (MQTT
/// allows 65,535 bytes) gets a session that ends with its connection.
const MAX_STORED_CLIENT_ID: usize = 256;

/// A message's fingerprint: its topic, payload and QoS, hashed (FNV-1a,
/// stable across builds since it is stored). A packet id sent again is a
/// retransmission only if the message is the same, since a device may use
/// an id again once its acknowledgement arrived.
pub(super) fn fingerprint(topic: &str, payload: &[u8], qos: QoS) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let separator = [0xff, qos as u8];
    let bytes = topic.as_bytes().iter().chain(&separator).chain(payload);
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// How a CONNECT asks for its session: whether to resume a stored one, how
/// long to keep it after the connection, and what to tell an MQTT 5
/// client whose expiry was cut to the server's maximum.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Terms {
    pub(super) resume: bool,
    pub(super) keep_secs: u32,
    pub(super) told: Option<u32>,
}

/// The session terms of `connect`, within `max` seconds. MQTT 3.1.1 has only
/// the clean session flag: a session without it lasts as long as the
/// server keeps any. MQTT 5 separates resuming (clean start) from keeping
/// (session expiry, absent meaning 0).
pub(super) fn terms(version: Version, connect: &ConnectInfo, max: u32) -> Terms {
    match version {
        Version::V4 => Terms {
            resume: !connect.clean,
            keep_secs: if connect.clean { 0 } else { max },
            told: None,
        },
        Version::V5 => {
            let asked = connect.session_expiry.unwrap_or(0);
            Terms {
                resume: !connect.clean,
                keep_secs: asked.min(max),
                told: (asked > max).then_some(max),
            }
        }
    }
}

/// Packet ids seen most recently, each with its message's fingerprint, at
/// most `window` of them, so that a publish sent again can be told from a
/// new one in constant time.
#[derive(Debug, Default)]
pub(super) struct Recent {
    /// Ids in the order they were taken; an id taken again appears again,
    /// and only its newest entry (matched by `seq`) counts.
    order: VecDeque<(u16, u64)>,
    ids: HashMap<u16, (u64, u64)>,
    seq: u64,
    window: usize,
}

impl Recent {
    pub(super) fn new(window: usize, ids: &[(u16, u64)]) -> Self {
        let mut recent = Self {
            window,
            ..Self::default()
        };
        for (id, print) in ids {
            recent.push(*id, *print);
        }
        recent
    }

    /// Whether `id` was taken for a message with fingerprint `print`.
    pub(super) fn contains(&self, id: u16, print: u64) -> bool {
        self.ids.get(&id).is_some_and(|(p, _)| *p == print)
    }

    /// Remembers `id` as the newest, forgetting the oldest beyond the
    /// window.
    pub(super) fn push(&mut self, id: u16, print: u64) {
        if self.window == 0 {
            return;
        }
        self.seq += 1;
        self.ids.insert(id, (print, self.seq));
        self.order.push_back((id, self.seq));
        self.trim();
    }

    /// Forgets `id`: a QoS 2 message's PUBREL says the client has its
    /// acknowledgement, so the id is free for a new message.
    pub(super) fn remove(&mut self, id: u16) {
        self.ids.remove(&id);
        self.trim();
    }

    /// Forgets the oldest ids beyond the window, and compacts the order
    /// once stale entries (ids taken again, or removed) outnumber the
    /// window, so both stay within twice the window.
    fn trim(&mut self) {
        if self.order.len() > 2 * self.window.max(1) {
            let ids = &self.ids;
            self.order
                .retain(|(id, seq)| ids.get(id).is_some_and(|(_, s)| s == seq));
        }
        while self.ids.len() > self.window {
            let Some((id, seq)) = self.order.pop_front() else {
                break;
            };
            if self.ids.get(&id).is_some_and(|(_, s)| *s == seq) {
                self.ids.remove(&id);
            }
        }
    }

    pub(super) fn to_vec(&self) -> Vec<(u16, u64)> {
        self.order
            .iter()
            .filter_map(|(id, seq)| {
                let (print, s) = self.ids.get(id)?;
                (s == seq).then_some((*id, *print))
            })
            .collect()
    }
}

impl Session<'_> {
    /// Takes up (or clears) the device's stored session as its CONNECT
    /// asks, before CONNACK: returns whether a session is present and the
    /// expiry to tell the client, and keeps the stored state for
    /// [`Session::restore`]. An anonymous client (open registration) has
    /// no device yet, so nothing of it is kept.
    pub(super) async fn open_session(
        &mut self,
        connect: &ConnectInfo,
    ) -> (bool, Option<u32>, Option<SessionState>) {
        let settings = &self.edge.settings;
        let mut terms = terms(self.version, connect, settings.max_session_expiry);
        self.persist.received = Recent::new(settings.redelivery_window, &[]);
        if self.device.is_empty() || self.client_id.len() > MAX_STORED_CLIENT_ID {
            let told = (terms.keep_secs > 0).then_some(0);
            return (false, told, None);
        }
        // The connection this one replaced stores its state as it ends;
        // wait for that, so nothing it held is lost.
        if let Some(before) = self.predecessor.take() {
            let wait = SETTLE_LIMIT + Duration::from_secs(1);
            let _ = tokio::time::timeout(wait, before.cancelled()).await;
        }
        let store = &self.edge.store;
        let (device, client_id) = (&self.device, &self.client_id);
        let state = match store
            .take_session(device, client_id, now_ms(), terms.resume)
            .await
        {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(%device, "cannot read a stored session: {e}");
                None
            }
        };
        if terms.keep_secs > 0 {
            self.persist.owner = rand::random::<i64>();
            let max = settings.max_connections_per_device;
            let opened = store.open_session(
                device,
                client_id,
                (terms.keep_secs, self.persist.owner),
                state.is_some(),
                max,
            );
            match opened.await {
                Ok(dropped) => {
                    let metrics = &self.edge.metrics;
                    Metrics::add(&metrics.edge.sessions_dropped, dropped as u64);
                }
                Err(e) => {
                    // Without its row the session cannot be kept; say so
                    // to an MQTT 5 client rather than pretend.
                    tracing::error!(%device, "cannot store a session: {e}");
                    terms.keep_secs = 0;
                    terms.told = Some(0);
                }
            }
        }
        if terms.keep_secs == 0 && state.is_some() {
            // Resumed but not to be kept: it lives in this connection now.
            if let Err(e) = store.discard_session(device, client_id, None).await {
                tracing::error!(%device, "cannot forget a session: {e}");
            }
        }
        self.persist.keep_secs = terms.keep_secs;
        if state.is_some() {
            Metrics::add(&self.edge.metrics.edge.sessions_resumed, 1);
        }
        (state.is_some(), terms.told, state)
    }

    /// Puts a resumed session back in place after CONNACK: its
    /// subscriptions (so commands that waited go out now, those sent before
    /// flagged DUP), its desired state if the device has not acknowledged
    /// the newest, and its recent packet ids.
    pub(super) async fn restore(&mut self, state: SessionState) {
        self.persist.received = Recent::new(self.edge.settings.redelivery_window, &state.received);
        // New packet ids start past those the stored commands keep, so
        // that nothing sent first (the desired state) takes one of them.
        if let Some(last) = state.in_flight.iter().map(|(pkid, _)| *pkid).max() {
            self.last_pkid = last;
        }
        self.persist.redeliver = state
            .in_flight
            .into_iter()
            .map(|(pkid, id)| (id, pkid))
            .collect();
        let filters: Vec<(String, QoS)> = state
            .subscriptions
            .into_iter()
            .map(|(filter, qos)| {
                let qos = if qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                (filter, qos)
            })
            .collect();
        let granted: Vec<Option<QoS>> = filters
            .iter()
            .map(|(filter, qos)| self.grant(filter, *qos))
            .collect();
        self.subscribed_now(&filters, &granted, false).await;
    }

    /// Notes that the readings of the publish with packet id `pkid` are
    /// committed: the same message sent again is now a duplicate.
    pub(super) fn committed(&mut self, pkid: u16) {
        if let Some(print) = self.persist.pending.remove(&pkid) {
            self.persist.received.push(pkid, print);
        }
    }

    /// What the session keeps now, for the store: at most
    /// `--max-session-queue` unacknowledged commands, the oldest first.
    fn state(&self) -> SessionState {
        let mut in_flight: Vec<(u16, String)> = self
            .in_flight
            .iter()
            .filter_map(|(pkid, what)| match what {
                super::commands::InFlight::Command(id) => Some((*pkid, id.clone())),
                super::commands::InFlight::Desired(_) => None,
            })
            .chain(
                self.persist
                    .redeliver
                    .iter()
                    .map(|(id, pkid)| (*pkid, id.clone())),
            )
            .collect();
        in_flight.sort_unstable();
        in_flight.dedup_by_key(|(pkid, _)| *pkid);
        in_flight.truncate(self.edge.settings.max_session_queue);
        SessionState {
            subscriptions: self.subscriptions(),
            in_flight,
            received: self.persist.received.to_vec(),
        }
    }

    fn subscriptions(&self) -> Vec<(String, u8)> {
        let mut subscriptions: Vec<(String, u8)> = self
            .subscribed
            .iter()
            .map(|(filter, qos)| (filter.clone(), *qos as u8))
            .collect();
        subscriptions.sort_unstable();
        subscriptions
    }

    /// Stores the subscriptions of a persistent session when they change,
    /// so that commands wait for the device from the moment it subscribed,
    /// even if this server dies without ending the session.
    pub(super) async fn save_session(&mut self) {
        if self.persist.keep_secs == 0 {
            return;
        }
        let subscriptions = self.subscriptions();
        if self.persist.saved.as_ref() == Some(&subscriptions) {
            return;
        }
        let state = self.state();
        let store = &self.edge.store;
        let owner = Some(self.persist.owner);
        match store
            .save_session(&self.device, &self.client_id, &state, owner, None)
            .await
        {
            Ok(()) => self.persist.saved = Some(subscriptions),
            Err(e) => tracing::error!(device = %self.device, "cannot store a session: {e}"),
        }
    }

    /// Stores a persistent session as its connection ends, unless a newer
    /// connection holds it by now.
    pub(super) async fn end_session(&self) {
        if self.persist.keep_secs == 0 {
            return;
        }
        let state = self.state();
        let owner = Some(self.persist.owner);
        if let Err(e) = self
            .edge
            .store
            .save_session(&self.device, &self.client_id, &state, owner, Some(now_ms()))
            .await
        {
            tracing::error!(device = %self.device, "cannot store a session: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(clean: bool, session_expiry: Option<u32>) -> ConnectInfo {
        ConnectInfo {
            client_id: "c".into(),
            clean,
            keep_alive: 30,
            will: None,
            user: String::new(),
            password: None,
            session_expiry,
            receive_max: None,
        }
    }

    #[test]
    fn terms_follow_each_version() {
        let t = |resume, keep_secs, told| Terms {
            resume,
            keep_secs,
            told,
        };
        let cases = [
            (Version::V4, connect(true, None), t(false, 0, None)),
            (Version::V4, connect(false, None), t(true, 100, None)),
            // MQTT 5: an absent expiry is 0, so the session ends with the
            // connection even without a clean start.
            (Version::V5, connect(false, None), t(true, 0, None)),
            (Version::V5, connect(true, Some(60)), t(false, 60, None)),
            (Version::V5, connect(false, Some(60)), t(true, 60, None)),
            // Above the server's maximum (u32::MAX means never): cut, and
            // the client is told.
            (
                Version::V5,
                connect(false, Some(u32::MAX)),
                t(true, 100, Some(100)),
            ),
        ];
        for (version, c, want) in cases {
            assert_eq!(terms(version, &c, 100), want, "{version:?} {c:?}");
        }
    }

    #[test]
    fn recent_ids_are_bounded_and_match_only_the_same_message() {
        let mut r = Recent::new(3, &[(1, 10), (2, 20)]);
        assert!(r.contains(1, 10) && r.contains(2, 20) && !r.contains(3, 30));
        // The same id for another message is not a duplicate.
        assert!(!r.contains(1, 11));
        r.push(3, 30);
        r.push(1, 11);
        r.push(4, 40);
        // 2 was the oldest once 1 was taken again.
        assert_eq!(r.to_vec(), vec![(3, 30), (1, 11), (4, 40)]);
        assert!(!r.contains(2, 20) && !r.contains(1, 10) && r.contains(1, 11));
        r.remove(3);
        assert!(!r.contains(3, 30));
        assert_eq!(r.to_vec(), vec![(1, 11), (4, 40)]);
        // Ids taken again and again keep the order within twice the window.
        for _ in 0..100 {
            r.push(1, 11);
        }
        assert!(r.order.len() <= 6, "{}", r.order.len());
        let mut off = Recent::new(0, &[(1, 10)]);
        off.push(2, 20);
        assert!(!off.contains(1, 10) && !off.contains(2, 20));
    }

    #[test]
    fn a_fingerprint_tells_messages_apart() {
        let a = fingerprint("sensor/a", b"{}", QoS::AtLeastOnce);
        assert_eq!(a, fingerprint("sensor/a", b"{}", QoS::AtLeastOnce));
        assert_ne!(a, fingerprint("sensor/a", b"{ }", QoS::AtLeastOnce));
        assert_ne!(a, fingerprint("sensor/b", b"{}", QoS::AtLeastOnce));
        assert_ne!(a, fingerprint("sensor/a", b"{}", QoS::ExactlyOnce));
    }
}
