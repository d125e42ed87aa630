//! Live push: fans stored readings out to browsers over WebSockets.
//!
//! The writer hands every committed batch to the [`Hub`]. The hub keeps a
//! registry from device to the viewers watching it, serialises each
//! device's readings once per batch, and appends that JSON fragment to the
//! outbox of every viewer that asked for the device. A viewer's task wakes
//! only when its outbox has something, joins the waiting fragments into one
//! WebSocket frame and sends it. So a batch costs one serialisation per
//! device, not one per viewer, and viewers that watch other devices are
//! never woken.
//!
//! Each outbox is capped in bytes. A viewer that does not keep up has new
//! fragments skipped (and counted) once its cap is reached, is told how
//! many readings it missed, and reloads its history; one that stops
//! reading altogether is disconnected by its socket (`http::socket`).
//! Either way a slow browser costs bounded memory and never slows ingest or
//! its neighbours.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use app::model::{ClientMsg, Reading};
use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::names::valid_name;

/// One committed batch, as the writer hands it over.
#[derive(Debug)]
pub struct LiveBatch {
    pub readings: Vec<Reading>,
    /// When ingest received the batch's earliest message; push latency is
    /// measured from here.
    pub received_at: Instant,
}

/// Serialised readings bound for one or more viewers: JSON objects joined
/// by commas, ready to be spliced into a `readings` message. Cloning shares
/// the text.
#[derive(Clone, Debug)]
pub struct Fragment {
    json: Arc<str>,
    /// How many readings the fragment holds.
    pub readings: u64,
    /// When ingest received the earliest of them.
    pub received_at: Instant,
}

/// What one viewer has waiting, guarded by its outbox's mutex.
#[derive(Debug, Default)]
pub struct Pending {
    pub fragments: Vec<Fragment>,
    bytes: usize,
    /// Readings skipped since the viewer last heard about it.
    pub skipped: u64,
}

/// A viewer's queue of fragments, bounded in bytes.
#[derive(Debug)]
pub struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
    cap_bytes: usize,
}

impl Outbox {
    /// Queues `fragment`, or skips (and counts) it if the viewer is already
    /// `cap_bytes` behind, then wakes the viewer either way.
    fn push(&self, fragment: &Fragment, metrics: &Metrics) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        let len = fragment.json.len();
        // An empty outbox always takes the fragment, so that a batch larger
        // than the cap still reaches a viewer that keeps up; a viewer can
        // therefore pin at most the cap plus one batch.
        if p.bytes > 0 && p.bytes + len > self.cap_bytes {
            p.skipped += fragment.readings;
            Metrics::add(&metrics.live_skipped, fragment.readings);
        } else {
            p.bytes += len;
            Metrics::add(&metrics.live_pending_bytes, len as u64);
            p.fragments.push(fragment.clone());
        }
        drop(p);
        self.ready.notify_one();
    }

    /// Resolves when something has been queued since the last `take`.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Everything waiting, which empties the outbox.
    pub fn take(&self, metrics: &Metrics) -> Pending {
        let Ok(mut p) = self.pending.lock() else {
            return Pending::default();
        };
        let taken = std::mem::take(&mut *p);
        metrics
            .live_pending_bytes
            .fetch_sub(taken.bytes as u64, Ordering::Relaxed);
        taken
    }
}

/// Viewers by id.
type Watchers = HashMap<u64, Arc<Outbox>>;

/// One device's readings in a batch, and the viewers they go to.
type Group<'a> = (Vec<&'a Reading>, Vec<Arc<Outbox>>);

/// Who watches what.
#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    all: Watchers,
    by_device: HashMap<String, Watchers>,
}

impl Registry {
    fn remove(&mut self, id: u64, subscription: &Subscription) {
        match subscription {
            Subscription::Nothing => {}
            Subscription::All => {
                self.all.remove(&id);
            }
            Subscription::Devices(devices) => {
                for d in devices {
                    if let Some(viewers) = self.by_device.get_mut(d) {
                        viewers.remove(&id);
                        if viewers.is_empty() {
                            self.by_device.remove(d);
                        }
                    }
                }
            }
        }
    }

    fn add(&mut self, id: u64, outbox: &Arc<Outbox>, subscription: &Subscription) {
        match subscription {
            Subscription::Nothing => {}
            Subscription::All => {
                self.all.insert(id, outbox.clone());
            }
            Subscription::Devices(devices) => {
                for d in devices {
                    self.by_device
                        .entry(d.clone())
                        .or_default()
                        .insert(id, outbox.clone());
                }
            }
        }
    }
}

/// The fan-out point between the writer and every viewer.
#[derive(Debug)]
pub struct Hub {
    registry: Mutex<Registry>,
    metrics: Arc<Metrics>,
    outbox_cap_bytes: usize,
    /// Woken whenever who watches what changes, for the cluster bus.
    interest_changed: Notify,
}

/// What this instance's viewers watch, as the cluster bus needs to know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// Some viewer watches every device.
    pub all: bool,
    /// The devices watched one by one.
    pub devices: HashSet<String>,
}

impl Hub {
    /// `outbox_cap_bytes` bounds the memory one viewer can pin.
    pub fn new(metrics: Arc<Metrics>, outbox_cap_bytes: usize) -> Self {
        Self {
            registry: Mutex::default(),
            metrics,
            outbox_cap_bytes,
            interest_changed: Notify::new(),
        }
    }

    /// What viewers watch now.
    pub fn interest(&self) -> Interest {
        match self.registry.lock() {
            Ok(r) => Interest {
                all: !r.all.is_empty(),
                devices: r.by_device.keys().cloned().collect(),
            },
            Err(_) => Interest::default(),
        }
    }

    /// Resolves after what viewers watch may have changed; changes while
    /// nobody waits are remembered, so none is missed.
    pub async fn interest_changed(&self) {
        self.interest_changed.notified().await;
    }

    /// Hands a committed batch to every viewer that watches any of its
    /// devices. Never blocks on a viewer.
    pub fn publish(&self, batch: &LiveBatch) {
        // Only who gets what is decided under the registry's lock; the
        // serialising happens after it is released, so viewers joining or
        // leaving never wait behind a large batch.
        let mut all: Vec<Arc<Outbox>> = Vec::new();
        let mut groups: HashMap<&str, Group<'_>> = HashMap::new();
        {
            let Ok(registry) = self.registry.lock() else {
                return;
            };
            all.extend(registry.all.values().cloned());
            if !registry.by_device.is_empty() {
                // Group the readings of watched devices, keeping their order.
                for r in &batch.readings {
                    if let Some(group) = groups.get_mut(r.device.as_str()) {
                        group.0.push(r);
                    } else if let Some(viewers) = registry.by_device.get(&r.device) {
                        groups.insert(&r.device, (vec![r], viewers.values().cloned().collect()));
                    }
                }
            }
        }
        if !all.is_empty() && !batch.readings.is_empty() {
            let fragment = fragment(batch.readings.iter(), batch.received_at);
            for outbox in &all {
                outbox.push(&fragment, &self.metrics);
            }
        }
        for (readings, viewers) in groups.into_values() {
            let fragment = fragment(readings.into_iter(), batch.received_at);
            for outbox in &viewers {
                outbox.push(&fragment, &self.metrics);
            }
        }
    }

    /// A new viewer: its id and its empty outbox.
    pub fn join(&self) -> (u64, Arc<Outbox>) {
        let outbox = Arc::new(Outbox {
            pending: Mutex::default(),
            ready: Notify::new(),
            cap_bytes: self.outbox_cap_bytes,
        });
        let id = match self.registry.lock() {
            Ok(mut r) => {
                r.next_id += 1;
                r.next_id
            }
            Err(_) => 0,
        };
        (id, outbox)
    }

    /// Moves viewer `id` from its `old` subscription to `new`.
    pub fn subscribe(&self, id: u64, outbox: &Arc<Outbox>, old: &Subscription, new: &Subscription) {
        if let Ok(mut r) = self.registry.lock() {
            r.remove(id, old);
            r.add(id, outbox, new);
        }
        self.interest_changed.notify_one();
    }

    /// Forgets viewer `id` and what it had waiting.
    pub fn leave(&self, id: u64, outbox: &Outbox, subscription: &Subscription) {
        if let Ok(mut r) = self.registry.lock() {
            r.remove(id, subscription);
        }
        outbox.take(&self.metrics);
        self.interest_changed.notify_one();
    }
}

/// Serialises readings once into a comma-joined fragment.
fn fragment<'a>(readings: impl Iterator<Item = &'a Reading>, received_at: Instant) -> Fragment {
    let mut json = Vec::with_capacity(64);
    let mut n = 0;
    for r in readings {
        if n > 0 {
            json.push(b',');
        }
        // Serialising a plain struct into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut json, r);
        n += 1;
    }
    Fragment {
        json: String::from_utf8(json).unwrap_or_default().into(),
        readings: n,
        received_at,
    }
}

/// Joins fragments into one `readings` message, byte for byte what serde
/// would produce for [`ServerMsg::Readings`].
pub fn readings_frame(fragments: &[Fragment]) -> Utf8Bytes {
    const HEAD: &str = r#"{"type":"readings","readings":["#;
    let len: usize = fragments.iter().map(|f| f.json.len() + 1).sum();
    let mut frame = String::with_capacity(HEAD.len() + len + 2);
    frame.push_str(HEAD);
    for (i, f) in fragments.iter().enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(&f.json);
    }
    frame.push_str("]}");
    Utf8Bytes::from(frame)
}

/// What a viewer asked to see: nothing yet, every device, or some.
#[derive(Debug)]
pub enum Subscription {
    Nothing,
    All,
    Devices(HashSet<String>),
}

impl Subscription {
    /// Whether the subscription covers `device`.
    pub fn includes(&self, device: &str) -> bool {
        match self {
            Self::Nothing => false,
            Self::All => true,
            Self::Devices(devices) => devices.contains(device),
        }
    }
}

impl Subscription {
    /// The subscription a client asked for, with at most `max` devices and
    /// only valid device names: whatever a client sends, its subscription
    /// costs the hub no more than `max` entries.
    pub fn asked(msg: ClientMsg, max: usize) -> Self {
        match msg {
            ClientMsg::SubscribeAll => Self::All,
            ClientMsg::Subscribe { devices } => Self::Devices(
                devices
                    .into_iter()
                    .filter(|d| valid_name(d))
                    .take(max)
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::model::ServerMsg;

    fn reading(device: &str, v: f64) -> Reading {
        Reading {
            device: device.into(),
            metric: "temp".into(),
            ts: 1,
            value: v,
        }
    }

    fn watch(hub: &Hub, devices: &[&str]) -> (u64, Arc<Outbox>) {
        let (id, outbox) = hub.join();
        let sub = Subscription::Devices(devices.iter().map(|d| d.to_string()).collect());
        hub.subscribe(id, &outbox, &Subscription::Nothing, &sub);
        (id, outbox)
    }

    #[test]
    fn a_subscription_names_at_most_max_valid_devices() {
        let asked = ClientMsg::Subscribe {
            devices: ["A", "bad name", "B", "", "C"]
                .iter()
                .map(|d| d.to_string())
                .collect(),
        };
        let Subscription::Devices(devices) = Subscription::asked(asked, 2) else {
            panic!("a device subscription");
        };
        let mut devices: Vec<_> = devices.into_iter().collect();
        devices.sort();
        assert_eq!(devices, ["A", "B"]);
    }

    #[test]
    fn viewers_get_only_their_devices_in_one_valid_message() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(metrics.clone(), 1 << 20);
        let (_, a) = watch(&hub, &["a", "c"]);
        let (_, b) = watch(&hub, &["b"]);
        hub.publish(&LiveBatch {
            readings: vec![
                reading("a", 1.0),
                reading("b", 2.0),
                reading("c", 3.0),
                reading("a", 4.0),
            ],
            received_at: Instant::now(),
        });
        let got = a.take(&metrics);
        let msg: ServerMsg = serde_json::from_str(&readings_frame(&got.fragments)).expect("valid");
        let ServerMsg::Readings { mut readings } = msg else {
            panic!("not readings: {msg:?}")
        };
        readings.sort_by(|x, y| x.value.total_cmp(&y.value));
        let values: Vec<f64> = readings.iter().map(|r| r.value).collect();
        assert_eq!(values, [1.0, 3.0, 4.0]);
        assert_eq!(b.take(&metrics).fragments.len(), 1);
        assert_eq!(metrics.live_pending_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_outbox_skips_and_counts_instead_of_growing() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(metrics.clone(), 200);
        let (id, slow) = watch(&hub, &["a"]);
        for i in 0..100 {
            hub.publish(&LiveBatch {
                readings: vec![reading("a", f64::from(i))],
                received_at: Instant::now(),
            });
        }
        let pending = slow.take(&metrics);
        assert!(pending.bytes <= 200, "{} bytes pending", pending.bytes);
        assert_eq!(pending.fragments.len() as u64 + pending.skipped, 100);
        assert_eq!(
            metrics.live_skipped.load(Ordering::Relaxed),
            pending.skipped
        );
        hub.leave(id, &slow, &Subscription::Devices(["a".to_string()].into()));
        assert!(hub.registry.lock().expect("lock").by_device.is_empty());
    }
}
