//! Desired state: the configuration operators set for a device, kept in
//! the store and retained on `command/<id>/desired`.
//!
//! The edge sends the stored state to a device as a retained message when
//! it subscribes (so a device that boots gets it at once), and the service
//! publishes each change through the broker's router to a device that is
//! subscribed at that moment. A PUBACK from the device marks the version
//! acknowledged. The router only carries the message; the state's one
//! copy is the database row, which is why it survives a restart and is the
//! same on every instance of a cluster.

use std::sync::Arc;

use app::model::DesiredState;
use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish, PublishProperties};

use crate::acl;
use crate::broker::{Broker, BrokerError};
use crate::bus::{Bus, Remote};
use crate::clock::now_ms;
use crate::metrics::{LogLimiter, Metrics};
use crate::store::{Store, StoreError};

/// What the correlation data of a desired state's message in the router
/// starts with, before its version; commands carry their id there instead.
const CORRELATION_PREFIX: &str = "desired:";

/// Why a desired state was not set.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("no device named {0:?}")]
    UnknownDevice(String),
    #[error("the desired state is {size} bytes; the most is {max} (--max-payload-bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("the desired state is null; to remove it, use DELETE")]
    Null,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The desired-state service. One per server; the edge and the HTTP API
/// share it.
pub struct Desired {
    store: Store,
    metrics: Arc<Metrics>,
    /// The service's own link to the broker's router, for publishing.
    link: tokio::sync::Mutex<(LinkTx, LinkRx)>,
    bus: Option<Bus>,
    /// The largest payload, the same limit devices' messages have.
    max_bytes: usize,
    ack_log: LogLimiter,
    /// Devices with a session here subscribed to their desired state, with
    /// how many such sessions. Only these are published to: a message to a
    /// topic nobody subscribes to would give the router a log for it, for
    /// good.
    watching: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired").finish_non_exhaustive()
    }
}

impl Desired {
    pub fn new(
        store: Store,
        broker: &Broker,
        metrics: Arc<Metrics>,
        bus: Option<Bus>,
        max_bytes: usize,
    ) -> Result<Arc<Self>, BrokerError> {
        Ok(Arc::new(Self {
            store,
            metrics,
            link: tokio::sync::Mutex::new(broker.link("sightline-desired")?),
            bus,
            max_bytes,
            ack_log: LogLimiter::new(20, std::time::Duration::from_secs(10)),
            watching: std::sync::Mutex::default(),
        }))
    }

    /// A device's desired state, if one is set.
    pub async fn get(&self, device: &str) -> Result<Option<DesiredState>, StoreError> {
        self.store.desired(device).await
    }

    /// Sets a device's desired state on behalf of `by`: stores it first,
    /// then sends it to the device if it is subscribed, here or on another
    /// instance.
    pub async fn set(
        &self,
        device: &str,
        payload: &serde_json::Value,
        by: &str,
    ) -> Result<DesiredState, DesiredError> {
        if payload.is_null() {
            return Err(DesiredError::Null);
        }
        let text = payload.to_string();
        if text.len() > self.max_bytes {
            return Err(DesiredError::TooLarge {
                size: text.len(),
                max: self.max_bytes,
            });
        }
        let state = self
            .store
            .set_desired(device, &text, by, now_ms())
            .await?
            .ok_or_else(|| DesiredError::UnknownDevice(device.to_owned()))?;
        Metrics::add(&self.metrics.desired_set, 1);
        self.publish(device).await;
        self.tell_others(device);
        Ok(state)
    }

    /// Removes a device's desired state; false if it had none. A subscribed
    /// device is sent an empty message on the topic, MQTT's way of saying
    /// that a retained message is gone.
    pub async fn clear(&self, device: &str) -> Result<bool, DesiredError> {
        if !self.store.device_exists(device).await? {
            return Err(DesiredError::UnknownDevice(device.to_owned()));
        }
        let cleared = self.store.clear_desired(device, now_ms()).await?;
        if cleared {
            self.publish(device).await;
            self.tell_others(device);
        }
        Ok(cleared)
    }

    /// Another instance changed the device's desired state: sends the
    /// stored one to the device if it is subscribed here.
    pub async fn changed_elsewhere(&self, device: &str) {
        self.publish(device).await;
    }

    /// A session here subscribed to the device's desired state.
    pub fn watch(&self, device: &str) {
        *self.watchers().entry(device.to_owned()).or_default() += 1;
    }

    /// A session that watched the device's desired state ended or
    /// unsubscribed.
    pub fn unwatch(&self, device: &str) {
        let mut watching = self.watchers();
        if let Some(n) = watching.get_mut(device) {
            *n -= 1;
            if *n == 0 {
                watching.remove(device);
            }
        }
    }

    fn watchers(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        self.watching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The device acknowledged `version` of its desired state (0: its
    /// removal, which records nothing). Recorded in the background, so a
    /// slow database never holds up the session.
    pub fn acknowledged(self: &Arc<Self>, device: &str, version: i64) {
        if version == 0 {
            return;
        }
        Metrics::add(&self.metrics.desired_acked, 1);
        let this = self.clone();
        let device = device.to_owned();
        tokio::spawn(async move {
            if let Err(e) = this
                .store
                .acknowledge_desired(&device, version, now_ms())
                .await
            {
                if let Some(suppressed) = this.ack_log.allow() {
                    tracing::error!(%device, suppressed, "cannot record an acknowledged desired state: {e}");
                }
            }
        });
    }

    fn tell_others(&self, device: &str) {
        if let Some(bus) = &self.bus {
            bus.tell(&Remote::DesiredChanged {
                device: device.to_owned(),
            });
        }
    }

    /// Publishes the device's stored state (or, once removed, an empty
    /// message) into the router, if a session here is subscribed to it.
    /// The state is read under the link's lock, so that when two changes
    /// race, the last message published carries the newest state. The
    /// version rides as correlation data, for the acknowledgement.
    async fn publish(&self, device: &str) {
        if !self.watchers().contains_key(device) {
            return;
        }
        let mut link = self.link.lock().await;
        let (payload, version) = match self.store.desired(device).await {
            Ok(Some(s)) => (Bytes::from(s.payload.to_string()), s.version),
            Ok(None) => (Bytes::new(), 0),
            Err(e) => {
                // The device gets the stored state when it next subscribes.
                tracing::error!(%device, "cannot read a desired state to send: {e}");
                return;
            }
        };
        let publish = Publish::new(Bytes::from(acl::desired_topic(device)), payload, false);
        let properties = PublishProperties {
            correlation_data: Some(Bytes::from(format!("{CORRELATION_PREFIX}{version}"))),
            ..PublishProperties::default()
        };
        if let Err(e) = link
            .0
            .send(Packet::Publish(publish, Some(properties)))
            .await
        {
            tracing::error!(%device, "cannot hand a desired state to the broker: {e}");
        }
    }
}

/// The version in a desired state's correlation data, as [`Desired`]
/// publishes it (0 for a removal); `None` for anything else.
pub fn version_of(correlation: Option<&[u8]>) -> Option<i64> {
    let text = std::str::from_utf8(correlation?).ok()?;
    text.strip_prefix(CORRELATION_PREFIX)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::version_of;

    #[test]
    fn only_a_desired_state_correlation_carries_a_version() {
        assert_eq!(version_of(Some(b"desired:7")), Some(7));
        assert_eq!(version_of(Some(b"desired:0")), Some(0));
        assert_eq!(version_of(Some(b"desired:x")), None);
        assert_eq!(version_of(Some(b"01JABC")), None);
        assert_eq!(version_of(None), None);
    }
}
