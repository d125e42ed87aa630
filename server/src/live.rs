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
//! reading altogether is disconnected after [`SEND_TIMEOUT`]. Either way a
//! slow browser costs bounded memory and never slows ingest or its
//! neighbours.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::model::{ClientMsg, Reading, ServerMsg};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::presence::Presence;

/// A viewer that cannot take a message within this time is disconnected;
/// its browser reconnects and reloads history when it is responsive again.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How often each viewer receives the server's counters.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The most devices one subscription may name.
const MAX_SUBSCRIBED_DEVICES: usize = 1_000;

/// Client messages larger than this are refused; a subscription is small.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

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
struct Fragment {
    json: Arc<str>,
    readings: u64,
    received_at: Instant,
}

/// What one viewer has waiting, guarded by its outbox's mutex.
#[derive(Debug, Default)]
struct Pending {
    fragments: Vec<Fragment>,
    bytes: usize,
    /// Readings skipped since the viewer last heard about it.
    skipped: u64,
}

/// A viewer's queue of fragments, bounded in bytes.
#[derive(Debug)]
struct Outbox {
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

    fn take(&self, metrics: &Metrics) -> Pending {
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
}

impl Hub {
    /// `outbox_cap_bytes` bounds the memory one viewer can pin.
    pub fn new(metrics: Arc<Metrics>, outbox_cap_bytes: usize) -> Self {
        Self {
            registry: Mutex::default(),
            metrics,
            outbox_cap_bytes,
        }
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

    fn join(&self) -> (u64, Arc<Outbox>) {
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

    fn subscribe(&self, id: u64, outbox: &Arc<Outbox>, old: &Subscription, new: &Subscription) {
        if let Ok(mut r) = self.registry.lock() {
            r.remove(id, old);
            r.add(id, outbox, new);
        }
    }

    fn leave(&self, id: u64, outbox: &Outbox, subscription: &Subscription) {
        if let Ok(mut r) = self.registry.lock() {
            r.remove(id, subscription);
        }
        outbox.take(&self.metrics);
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
fn readings_frame(fragments: &[Fragment]) -> Utf8Bytes {
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

fn encode(msg: &ServerMsg) -> Utf8Bytes {
    // Serialising these plain structs cannot fail; an empty string would
    // only be skipped by the client.
    Utf8Bytes::from(serde_json::to_string(msg).unwrap_or_default())
}

/// What the WebSocket handler needs.
#[derive(Clone, Debug)]
pub struct Live {
    pub hub: Arc<Hub>,
    pub presence: Arc<Presence>,
    pub commands: Arc<crate::command::Commands>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Where revoked sessions and tokens are announced.
    pub auth: Arc<crate::auth::Auth>,
    /// How often a socket checks that its session or token still holds
    /// (and so keeps its session in use).
    pub recheck: Duration,
}

/// What a viewer asked to see.
#[derive(Debug)]
enum Subscription {
    Nothing,
    All,
    Devices(HashSet<String>),
}

/// `GET /ws`: upgrades to a live connection.
/// The gate in front has checked the caller, who is kept so that the
/// socket closes when that session or token is revoked.
pub async fn websocket(
    State(live): State<Live>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| viewer(socket, live, caller))
}

async fn viewer(socket: WebSocket, live: Live, caller: crate::auth::Caller) {
    Metrics::add(&live.metrics.viewers, 1);
    let (id, outbox) = live.hub.join();
    let (mut sink, mut stream) = socket.split();
    let mut subscription = Subscription::Nothing;
    let mut stats = tokio::time::interval(STATS_EVERY);
    let mut presence = live.presence.subscribe();
    let mut commands = live.commands.updates();
    let mut revocations = live.auth.revocations();
    // Expiry and changes made by another process (`sightline user`) are
    // not announced; the socket checks its sign-in again now and then.
    let mut recheck = tokio::time::interval(live.recheck);
    recheck.tick().await;
    loop {
        let mut frames = Vec::new();
        let mut delivered: Vec<(Instant, u64)> = Vec::new();
        tokio::select! {
            _ = live.shutdown.cancelled() => break,
            revoked = revocations.recv() => match revoked {
                Ok(r) if r.ends(&caller) => {
                    tracing::info!(account = %caller.name, "closing a live socket whose sign-in was revoked");
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                // Revocations are rare; 64 missed at once means a mass
                // revocation, and closing is the safe answer (the page
                // reconnects if it still may).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                _ => {}
            },
            _ = recheck.tick() => match live.auth.still_valid(&caller).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(account = %caller.name, "closing a live socket whose sign-in ended");
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                // The database is failing: keep serving, check next time.
                Err(e) => tracing::warn!("cannot recheck a live socket's sign-in: {e}"),
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<ClientMsg>(&text) {
                        Ok(msg) => {
                            let new = subscribe(msg);
                            live.hub.subscribe(id, &outbox, &subscription, &new);
                            subscription = new;
                            // The answer to a subscription is the current
                            // presence of what it covers: a page that
                            // reconnected may have missed changes, and a
                            // client can tell its subscription has taken
                            // effect.
                            let statuses = live
                                .presence
                                .all()
                                .into_iter()
                                .filter(|p| subscription.includes(&p.device))
                                .collect();
                            frames.push(encode(&ServerMsg::Presence { devices: statuses }));
                        }
                        Err(e) => tracing::debug!("ignoring bad client message: {e}"),
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            () = outbox.ready.notified() => {
                let pending = outbox.take(&live.metrics);
                if pending.skipped > 0 {
                    frames.push(encode(&ServerMsg::Lagged { skipped: pending.skipped }));
                }
                if !pending.fragments.is_empty() {
                    frames.push(readings_frame(&pending.fragments));
                    delivered = pending
                        .fragments
                        .iter()
                        .map(|f| (f.received_at, f.readings))
                        .collect();
                }
            },
            changes = presence.recv() => {
                let statuses = match changes {
                    Ok(changes) => changes.iter().filter(|p| subscription.includes(&p.device)).cloned().collect(),
                    // Fell behind: send everything instead of what was missed.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => live
                        .presence
                        .all()
                        .into_iter()
                        .filter(|p| subscription.includes(&p.device))
                        .collect(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => Vec::new(),
                };
                if !statuses.is_empty() {
                    frames.push(encode(&ServerMsg::Presence { devices: statuses }));
                }
            },
            update = commands.recv() => match update {
                Ok(command) => {
                    // Only a device page watches commands; the fleet page
                    // subscribes to everything and has no use for them.
                    if matches!(&subscription, Subscription::Devices(d) if d.contains(&command.device)) {
                        frames.push(encode(&ServerMsg::Command { command: Box::new(command) }));
                    }
                }
                // Command changes were missed (256 behind): the page is
                // told, as for readings, and reloads what it shows.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    if matches!(&subscription, Subscription::Devices(_)) {
                        frames.push(encode(&ServerMsg::Lagged { skipped: n }));
                    }
                }
                // The channel cannot close while `live` holds the service.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
            _ = stats.tick() => {
                let devices = match &subscription {
                    Subscription::Devices(d) => Some(d.iter().cloned().collect::<Vec<_>>()),
                    _ => None,
                };
                frames.push(encode(&ServerMsg::Stats {
                    counters: live.metrics.snapshot(),
                    rejected: live.metrics.rejected_among(devices.as_deref()),
                }));
            }
        };
        let mut failed = false;
        for frame in frames {
            match tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Text(frame))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => failed = true,
                Err(_) => {
                    tracing::info!("disconnecting a live viewer that stopped reading");
                    failed = true;
                }
            }
            if failed {
                break;
            }
        }
        if failed {
            break;
        }
        for (received_at, readings) in delivered {
            live.metrics
                .push_seconds
                .observe_duration(received_at.elapsed(), readings);
        }
    }
    live.hub.leave(id, &outbox, &subscription);
    live.metrics.viewers.fetch_sub(1, Ordering::Relaxed);
}

impl Subscription {
    fn includes(&self, device: &str) -> bool {
        match self {
            Self::Nothing => false,
            Self::All => true,
            Self::Devices(devices) => devices.contains(device),
        }
    }
}

fn subscribe(msg: ClientMsg) -> Subscription {
    match msg {
        ClientMsg::SubscribeAll => Subscription::All,
        ClientMsg::Subscribe { devices } => {
            Subscription::Devices(devices.into_iter().take(MAX_SUBSCRIBED_DEVICES).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
