//! The bus between instances in cluster mode: a NATS core connection over
//! which each instance tells the others of its committed readings, so that
//! a browser on any instance sees every device live.
//!
//! Subjects are `<prefix>.live.<device>`, one per device, so an instance
//! subscribes only to the devices its own viewers watch (or to
//! `<prefix>.live.>` while someone watches the whole fleet), and NATS
//! drops what nobody wants without it crossing the network twice. The
//! connection is made with `no_echo`: an instance's own readings reach its
//! viewers through the hub directly, never back through NATS.
//!
//! Two more subjects carry what the edge of every instance must act on:
//! `<prefix>.disabled.<device>` (an operator disabled the device: end its
//! sessions everywhere) and `<prefix>.connected.<device>` (it logged in
//! here under a client id: a session with that client id elsewhere is a
//! stale one, taken over as MQTT requires). Every instance subscribes to
//! both for all devices; they are small and rare.
//!
//! Delivery is at most once, as NATS core is. Nothing here is needed for a
//! reading to be stored or acknowledged: a bus that is down or full costs
//! live updates on other instances (counted in `/metrics`), and pages
//! repair the gap from the database when they load their history.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::model::Reading;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::live::{Hub, LiveBatch};
use crate::metrics::Metrics;

/// The most readings in one bus message. A device's share of a large
/// batch is split so that each message stays far below NATS's default
/// 1 MiB payload limit (a reading is under 200 bytes of JSON).
const READINGS_PER_MESSAGE: usize = 2_000;

/// How the bus could fail to start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot reach NATS at {urls}: {source} (check --nats-url or SIGHTLINE_NATS_URL)")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot subscribe on NATS: {0}")]
    Subscribe(String),
}

/// Control messages waiting to be published; beyond this they are dropped
/// and counted. Each is under 300 bytes.
const CONTROL_QUEUE: usize = 4096;

/// A started bus: what the writer's callback hands committed batches to,
/// and what the edge and API tell other instances through.
#[derive(Clone, Debug)]
pub struct Bus {
    outgoing: mpsc::Sender<Vec<Reading>>,
    control: mpsc::Sender<(String, Vec<u8>)>,
    prefix: String,
    metrics: Arc<Metrics>,
}

/// What another instance asks of this one's edge.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Remote {
    /// The device was disabled: end every session it holds.
    Disabled { device: String },
    /// The device logged in elsewhere under `client_id`: end a session
    /// here under the same client id.
    Connected { device: String, client_id: String },
}

impl Bus {
    /// Queues a committed batch for other instances, or counts it as
    /// dropped when `--bus-queue` batches are already waiting. Never
    /// blocks the writer.
    pub fn send(&self, readings: Vec<Reading>) {
        let n = readings.len() as u64;
        if self.outgoing.try_send(readings).is_err() {
            Metrics::add(&self.metrics.bus_dropped, n);
        }
    }

    /// Tells every other instance to act on `event`. Never blocks.
    pub fn tell(&self, event: &Remote) {
        let (kind, device) = match event {
            Remote::Disabled { device } => ("disabled", device),
            Remote::Connected { device, .. } => ("connected", device),
        };
        let subject = format!("{}.{kind}.{}", self.prefix, device.replace('.', "%2E"));
        let queued = serde_json::to_vec(event)
            .ok()
            .is_some_and(|json| self.control.try_send((subject, json)).is_ok());
        if !queued {
            Metrics::add(&self.metrics.bus_control_dropped, 1);
        }
    }
}

/// Connects to the NATS servers at `urls` and starts the bus's two tasks:
/// one publishes committed batches, the other follows what local viewers
/// watch. Both end when `stop` fires.
pub async fn start(
    urls: &[String],
    prefix: &str,
    queue: usize,
    instance: &str,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(Bus, mpsc::Receiver<Remote>, Vec<JoinHandle<()>>), BusError> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("sightline {instance}"))
        .no_echo()
        .connection_timeout(Duration::from_secs(5))
        // After the first connection, the client reconnects by itself, to
        // any server of the cluster, for as long as the process lives.
        .max_reconnects(None)
        .connect(urls)
        .await
        .map_err(|source| BusError::Connect {
            urls: urls.join(","),
            source,
        })?;
    let (outgoing, rx) = mpsc::channel(queue);
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (remote_tx, remote_rx) = mpsc::channel(CONTROL_QUEUE);
    let mut listeners = Vec::new();
    for kind in ["disabled", "connected"] {
        let subscriber = client
            .subscribe(format!("{prefix}.{kind}.*"))
            .await
            .map_err(|e| BusError::Subscribe(e.to_string()))?;
        listeners.push(tokio::spawn(listen(
            subscriber,
            remote_tx.clone(),
            metrics.clone(),
        )));
    }
    let tasks = vec![
        tokio::spawn(publish(
            client.clone(),
            prefix.to_owned(),
            rx,
            control_rx,
            metrics.clone(),
            stop.clone(),
        )),
        tokio::spawn(follow(
            client,
            prefix.to_owned(),
            hub,
            metrics.clone(),
            stop.clone(),
        )),
        // The listeners would end only with the connection; stop them with
        // the rest.
        tokio::spawn(async move {
            stop.cancelled().await;
            for l in listeners {
                l.abort();
            }
        }),
    ];
    let bus = Bus {
        outgoing,
        control,
        prefix: prefix.to_owned(),
        metrics,
    };
    Ok((bus, remote_rx, tasks))
}

/// Passes each control message of `subscriber` on to the edge's handler.
async fn listen(
    mut subscriber: async_nats::Subscriber,
    to_edge: mpsc::Sender<Remote>,
    metrics: Arc<Metrics>,
) {
    while let Some(message) = subscriber.next().await {
        match serde_json::from_slice::<Remote>(&message.payload) {
            Ok(event) => {
                if to_edge.try_send(event).is_err() {
                    Metrics::add(&metrics.bus_control_dropped, 1);
                }
            }
            Err(e) => {
                Metrics::add(&metrics.bus_rejected, 1);
                tracing::warn!("bus: ignoring a message on {}: {e}", message.subject);
            }
        }
    }
}

/// The subject that carries `device`'s readings. Device names may hold
/// `.`, NATS's token separator, and never `%`, so escaping `.` as `%2E`
/// keeps one token per device and distinct names distinct.
pub fn live_subject(prefix: &str, device: &str) -> String {
    format!("{prefix}.live.{}", device.replace('.', "%2E"))
}

/// Publishes each committed batch, one message per device (or per
/// [`READINGS_PER_MESSAGE`] of one device's readings), in commit order.
async fn publish(
    client: async_nats::Client,
    prefix: String,
    mut rx: mpsc::Receiver<Vec<Reading>>,
    mut control: mpsc::Receiver<(String, Vec<u8>)>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            // Control messages first: a disabled device must be cut off
            // everywhere even while readings queue up.
            biased;
            Some((subject, json)) = control.recv() => {
                if client.publish(subject, json.into()).await.is_err() {
                    Metrics::add(&metrics.bus_control_dropped, 1);
                }
                continue;
            }
            batch = rx.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        let mut by_device: HashMap<&str, Vec<&Reading>> = HashMap::new();
        for r in &batch {
            by_device.entry(&r.device).or_default().push(r);
        }
        for (device, readings) in by_device {
            let subject = live_subject(&prefix, device);
            for chunk in readings.chunks(READINGS_PER_MESSAGE) {
                let n = chunk.len() as u64;
                let sent = match serde_json::to_vec(chunk) {
                    Ok(json) => client.publish(subject.clone(), json.into()).await.is_ok(),
                    Err(_) => false,
                };
                if sent {
                    Metrics::add(&metrics.bus_sent, n);
                } else {
                    Metrics::add(&metrics.bus_dropped, n);
                }
            }
        }
    }
}

/// Keeps one NATS subscription per device that local viewers watch (or
/// one for every device while any viewer watches all), feeding what
/// arrives to the hub.
async fn follow(
    client: async_nats::Client,
    prefix: String,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    // Subject to the task that forwards it; dropping a task's subscriber
    // (by aborting it) unsubscribes.
    let mut held: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        let interest = hub.interest();
        let wanted: Vec<String> = if interest.all {
            vec![format!("{prefix}.live.>")]
        } else {
            interest
                .devices
                .iter()
                .map(|d| live_subject(&prefix, d))
                .collect()
        };
        held.retain(|subject, task| {
            let keep = wanted.contains(subject) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for subject in wanted {
            if held.contains_key(&subject) {
                continue;
            }
            match client.subscribe(subject.clone()).await {
                Ok(subscriber) => {
                    let task = tokio::spawn(forward(subscriber, hub.clone(), metrics.clone()));
                    held.insert(subject, task);
                }
                Err(e) => tracing::warn!("bus: cannot subscribe to {subject}: {e}"),
            }
        }
        metrics
            .bus_subscriptions
            .store(held.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            () = hub.interest_changed() => {}
            // A subscription that failed is retried now and then.
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = stop.cancelled() => break,
        }
    }
    for task in held.into_values() {
        task.abort();
    }
}

/// Hands each message of one subscription to the hub as a batch.
async fn forward(mut subscriber: async_nats::Subscriber, hub: Arc<Hub>, metrics: Arc<Metrics>) {
    while let Some(message) = subscriber.next().await {
        match serde_json::from_slice::<Vec<Reading>>(&message.payload) {
            Ok(readings) => {
                Metrics::add(&metrics.bus_received, readings.len() as u64);
                hub.publish(&LiveBatch {
                    readings,
                    received_at: Instant::now(),
                });
            }
            Err(e) => {
                Metrics::add(&metrics.bus_rejected, 1);
                tracing::warn!("bus: ignoring a message on {}: {e}", message.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_has_its_own_single_token_subject() {
        assert_eq!(live_subject("sl", "dev-1"), "sl.live.dev-1");
        assert_eq!(live_subject("sl", "a.b"), "sl.live.a%2Eb");
        assert_ne!(live_subject("sl", "a.b"), live_subject("sl", "a_b"));
    }
}
