//! A device session's persistence: MQTT's clean session (3.1.1) and
//! session expiry (5). A persistent session's subscriptions, unacknowledged
//! commands and recent packet ids are stored (`store::sessions`), so a
//! device that comes back, even after a server restart, finds its
//! subscriptions in place, its commands waiting, and its retransmitted
//! publishes recognised.

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// Whether a stored row belongs to this session.
    stored: bool,
    /// Commands the last connection was sent and did not acknowledge, by
    /// command id: each goes out again under its packet id, flagged DUP.
    pub(super) redeliver: HashMap<String, u16>,
    /// Packet ids of the newest QoS 1 and 2 publishes taken from the device.
    pub(super) received: Recent,
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

/// Packet ids seen most recently, at most `window` of them, so that a
/// publish sent again can be told from a new one in constant time.
#[derive(Debug, Default)]
pub(super) struct Recent {
    order: VecDeque<u16>,
    ids: HashSet<u16>,
    window: usize,
}

impl Recent {
    pub(super) fn new(window: usize, ids: &[u16]) -> Self {
        let mut recent = Self {
            window,
            ..Self::default()
        };
        for id in ids {
            recent.push(*id);
        }
        recent
    }

    pub(super) fn contains(&self, id: u16) -> bool {
        self.ids.contains(&id)
    }

    /// Remembers `id` as the newest, forgetting the oldest beyond the
    /// window. An id used again moves to the front.
    pub(super) fn push(&mut self, id: u16) {
        if self.window == 0 {
            return;
        }
        if !self.ids.insert(id) {
            self.order.retain(|x| *x != id);
        }
        self.order.push_back(id);
        while self.order.len() > self.window {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    pub(super) fn to_vec(&self) -> Vec<u16> {
        self.order.iter().copied().collect()
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
        if self.device.is_empty() {
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
        let state = match store
            .take_session(&self.device, &self.client_id, now_ms(), terms.resume)
            .await
        {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(device = %self.device, "cannot read a stored session: {e}");
                None
            }
        };
        if terms.keep_secs > 0 {
            let max = settings.max_connections_per_device;
            match store
                .open_session(&self.device, &self.client_id, terms.keep_secs, max)
                .await
            {
                Ok(dropped) => {
                    let metrics = &self.edge.metrics;
                    Metrics::add(&metrics.edge.sessions_dropped, dropped as u64);
                }
                Err(e) => {
                    // Without its row the session cannot be kept; say so
                    // to an MQTT 5 client rather than pretend.
                    tracing::error!(device = %self.device, "cannot store a session: {e}");
                    terms.keep_secs = 0;
                    terms.told = Some(0);
                }
            }
        }
        self.persist.keep_secs = terms.keep_secs;
        self.persist.stored = terms.keep_secs > 0 || state.is_some();
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

    /// What the session keeps now, for the store.
    fn state(&self) -> SessionState {
        let mut in_flight: Vec<(u16, String)> = self
            .in_flight
            .iter()
            .filter_map(|(pkid, what)| match what {
                super::commands::InFlight::Command(id) => Some((*pkid, id.clone())),
                super::commands::InFlight::Desired(_) => None,
            })
            .collect();
        in_flight.sort_unstable();
        let mut subscriptions: Vec<(String, u8)> = self
            .subscribed
            .iter()
            .map(|(filter, qos)| (filter.clone(), *qos as u8))
            .collect();
        subscriptions.sort_unstable();
        SessionState {
            subscriptions,
            in_flight,
            received: self.persist.received.to_vec(),
        }
    }

    /// Stores the subscriptions of a persistent session as they change, so
    /// that commands wait for the device from the moment it subscribed,
    /// even if this server dies without ending the session.
    pub(super) async fn save_session(&self) {
        if self.persist.keep_secs == 0 || self.device.is_empty() {
            return;
        }
        let state = self.state();
        if let Err(e) = self
            .edge
            .store
            .save_session(&self.device, &self.client_id, &state, None)
            .await
        {
            tracing::error!(device = %self.device, "cannot store a session: {e}");
        }
    }

    /// Stores a persistent session as its connection ends, or forgets a
    /// resumed one that is not to be kept.
    pub(super) async fn end_session(&self) {
        if !self.persist.stored || self.device.is_empty() {
            return;
        }
        let store = &self.edge.store;
        let result = if self.persist.keep_secs > 0 {
            let state = self.state();
            store
                .save_session(&self.device, &self.client_id, &state, Some(now_ms()))
                .await
        } else {
            store.discard_session(&self.device, &self.client_id).await
        };
        if let Err(e) = result {
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
    fn recent_ids_are_bounded_and_reused_ids_move_up() {
        let mut r = Recent::new(3, &[1, 2]);
        assert!(r.contains(1) && r.contains(2) && !r.contains(3));
        r.push(3);
        r.push(1);
        r.push(4);
        // 2 was the oldest once 1 was used again.
        assert_eq!(r.to_vec(), vec![3, 1, 4]);
        assert!(!r.contains(2));
        let mut off = Recent::new(0, &[1]);
        off.push(2);
        assert!(!off.contains(1) && !off.contains(2));
    }
}
