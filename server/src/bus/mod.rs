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
//! Commands follow their device. The instance where a device subscribes
//! to its commands answers requests on `<prefix>.cmd.<device>` while it
//! holds that subscription; an operator's command accepted anywhere else
//! is stored first, then sent there as a NATS request, and with nobody to
//! answer it stays stored until the device subscribes again (see
//! the command service, which sits above the bus). Each change of a command is told on
//! `<prefix>.cmdstate.<device>`, so that viewers on every instance follow
//! its progress live.
//!
//! Which devices are connected where is told on `<prefix>.presence`, under
//! a lease (see [`presence`]), and each instance's counters on
//! `<prefix>.tally`, under the same lease (see [`tally`]).
//!
//! Delivery is at most once, as NATS core is. Nothing here is needed for a
//! reading to be stored or acknowledged: a bus that is down or full costs
//! live updates on other instances (counted in `/metrics`), and pages
//! repair the gap from the database when they load their history.

mod presence;
mod tally;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::model::{Command, Reading};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::live::{Hub, LiveBatch};
use crate::metrics::Metrics;
use crate::presence::Tracker;

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

/// How long a command request waits for the instance holding its device.
/// That instance answers once it has handed the command to its broker,
/// which takes well under a millisecond; a request still unanswered after
/// this is treated as having found nobody.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A started bus: what the writer's callback hands committed batches to,
/// and what the edge and API tell other instances through.
#[derive(Clone, Debug)]
pub struct Bus {
    client: async_nats::Client,
    outgoing: mpsc::Sender<Vec<Reading>>,
    control: mpsc::Sender<(String, Vec<u8>)>,
    /// The command subscription of each device this instance holds.
    holds: Arc<std::sync::Mutex<HashMap<String, JoinHandle<()>>>>,
    asked: mpsc::Sender<Asked>,
    prefix: String,
    metrics: Arc<Metrics>,
}

/// What the bus hands this instance: events for its edge and command
/// service, and commands other instances ask it to deliver.
#[derive(Debug)]
pub struct Inbox {
    pub remote: mpsc::Receiver<Remote>,
    pub asked: mpsc::Receiver<Asked>,
}

/// A command another instance asks this one to deliver, because this one
/// holds its device's command subscription.
#[derive(Debug)]
pub struct Asked {
    pub command: Command,
    reply: Option<async_nats::Subject>,
}

/// What another instance asks of this one's edge.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Remote {
    /// The device was disabled, or deleted: end every session it holds,
    /// and after a deletion, let the writer look ids up again.
    Disabled {
        device: String,
        #[serde(default)]
        deleted: bool,
    },
    /// The device logged in elsewhere under `client_id` at `at` (ms since
    /// the epoch): end a session here under the same client id that logged
    /// in before then. Instances' clocks are assumed to agree to well
    /// within the time a device takes to reconnect.
    Connected {
        device: String,
        client_id: String,
        at: i64,
    },
    /// A command changed state on the instance that holds its device.
    CommandChanged { command: Box<Command> },
    /// An operator set or removed the device's desired state: send the
    /// stored one to the device if it is subscribed here.
    DesiredChanged { device: String },
    /// A sign-in or API token was revoked: close the live sockets here
    /// that it opened.
    Revoked {
        what: crate::store::accounts::Revoked,
    },
}

/// The kinds of event every instance listens to for all devices.
const EVENT_KINDS: [&str; 5] = ["disabled", "connected", "cmdstate", "desired", "revoked"];

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
            Remote::Disabled { device, .. } => ("disabled", device.as_str()),
            Remote::Connected { device, .. } => ("connected", device.as_str()),
            Remote::CommandChanged { command } => ("cmdstate", command.device.as_str()),
            Remote::DesiredChanged { device } => ("desired", device.as_str()),
            // Not about a device; one subject carries them all.
            Remote::Revoked { .. } => ("revoked", "any"),
        };
        let subject = subject(&self.prefix, kind, device);
        let queued = serde_json::to_vec(event)
            .ok()
            .is_some_and(|json| self.control.try_send((subject, json)).is_ok());
        if !queued {
            Metrics::add(&self.metrics.bus_control_dropped, 1);
        }
    }

    /// Sends `command` to the instance that holds its device. Returns the
    /// command as that instance took it, or `None` when no instance holds
    /// the device (or none answered in time).
    pub async fn ask(&self, command: &Command) -> Result<Option<Command>, String> {
        let json = serde_json::to_vec(command).map_err(|e| e.to_string())?;
        let request = async_nats::Request::new()
            .payload(json.into())
            .timeout(Some(ASK_TIMEOUT));
        let subject = subject(&self.prefix, "cmd", &command.device);
        match self.client.send_request(subject, request).await {
            // The holder answers `null` when it let the device go a moment
            // before the request reached it.
            Ok(reply) => serde_json::from_slice(&reply.payload)
                .map_err(|e| format!("unreadable answer from another instance: {e}")),
            Err(e) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders
                | async_nats::RequestErrorKind::TimedOut => Ok(None),
                _ => Err(e.to_string()),
            },
        }
    }

    /// Answers `asked` with the command as this instance took it, or with
    /// `None` when it does not hold the device after all.
    pub async fn reply(&self, asked: Asked, taken: Option<&Command>) {
        let Some(reply) = asked.reply else {
            return;
        };
        let json = serde_json::to_vec(&taken).unwrap_or_else(|_| b"null".to_vec());
        if self.client.publish(reply, json.into()).await.is_err() {
            Metrics::add(&self.metrics.bus_control_dropped, 1);
        }
    }

    /// Starts answering command requests for `device`, which subscribed to
    /// its commands here. Returns once the NATS server has the
    /// subscription, so that a command stored after this is either asked
    /// of this instance or found in the database by it.
    pub async fn hold(&self, device: &str) {
        if self
            .holds
            .lock()
            .is_ok_and(|h| h.get(device).is_some_and(|t| !t.is_finished()))
        {
            return;
        }
        let subject = subject(&self.prefix, "cmd", device);
        let subscriber = match self.client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("bus: cannot subscribe to {subject}: {e}");
                return;
            }
        };
        if let Err(e) = self.client.flush().await {
            tracing::warn!("bus: cannot confirm the subscription to {subject}: {e}");
        }
        let task = tokio::spawn(relay(
            subscriber,
            self.asked.clone(),
            self.metrics.clone(),
            |command, reply| Asked { command, reply },
        ));
        if let Ok(mut holds) = self.holds.lock() {
            if let Some(old) = holds.insert(device.to_owned(), task) {
                old.abort();
            }
        }
    }

    /// Stops answering command requests for `device`, whose last command
    /// subscription here ended.
    pub fn release(&self, device: &str) {
        if let Some(task) = self.holds.lock().ok().and_then(|mut h| h.remove(device)) {
            // Dropping the subscriber with its task unsubscribes.
            task.abort();
        }
    }
}

/// Where the bus connects and how it is bounded.
#[derive(Debug)]
pub struct Settings<'a> {
    pub urls: &'a [String],
    pub prefix: &'a str,
    /// Committed batches that may wait to be published.
    pub queue: usize,
    /// Control messages that may wait in each direction; beyond this they
    /// are dropped and counted. Each is under 300 bytes, or a command's
    /// size.
    pub control_queue: usize,
    /// This instance's name on the bus, unique to the process.
    pub instance: &'a str,
    /// How long this instance's word on presence holds.
    pub lease: Duration,
}

/// Connects to the NATS servers and starts the bus's tasks: one publishes
/// committed batches, one follows what local viewers watch, one tells and
/// follows presence, and one listener per kind of event. All end when
/// `stop` fires.
pub async fn start(
    settings: Settings<'_>,
    hub: Arc<Hub>,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(Bus, Inbox, Vec<JoinHandle<()>>), BusError> {
    let Settings {
        urls,
        prefix,
        queue,
        control_queue,
        instance,
        lease,
    } = settings;
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
    let (control, control_rx) = mpsc::channel(control_queue);
    let (remote_tx, remote_rx) = mpsc::channel(control_queue);
    let (asked, asked_rx) = mpsc::channel(control_queue);
    let mut listeners = Vec::new();
    for kind in EVENT_KINDS {
        let subscriber = client
            .subscribe(format!("{prefix}.{kind}.*"))
            .await
            .map_err(|e| BusError::Subscribe(e.to_string()))?;
        listeners.push(tokio::spawn(relay(
            subscriber,
            remote_tx.clone(),
            metrics.clone(),
            |event: Remote, _| event,
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
            client.clone(),
            prefix.to_owned(),
            hub,
            metrics.clone(),
            stop.clone(),
        )),
        tokio::spawn(presence::run(
            client.clone(),
            prefix.to_owned(),
            instance.to_owned(),
            tracker,
            lease,
            metrics.clone(),
            stop.clone(),
        )),
        tokio::spawn(tally::run(
            client.clone(),
            prefix.to_owned(),
            instance.to_owned(),
            lease,
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
        client,
        outgoing,
        control,
        holds: Arc::default(),
        asked,
        prefix: prefix.to_owned(),
        metrics,
    };
    let inbox = Inbox {
        remote: remote_rx,
        asked: asked_rx,
    };
    Ok((bus, inbox, tasks))
}

/// Subscribes to `subject` for a task that follows `what`, or logs why it
/// cannot (the task then has nothing to follow and ends).
async fn listen(
    client: &async_nats::Client,
    subject: &str,
    what: &str,
) -> Option<async_nats::Subscriber> {
    match client.subscribe(subject.to_owned()).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("bus: cannot follow {what} on {subject}: {e}");
            None
        }
    }
}

/// Reads `message` as a `T`, or counts and logs it as not one.
fn read<T: serde::de::DeserializeOwned>(
    message: &async_nats::Message,
    metrics: &Metrics,
) -> Option<T> {
    match serde_json::from_slice(&message.payload) {
        Ok(value) => Some(value),
        Err(e) => {
            Metrics::add(&metrics.bus_rejected, 1);
            tracing::warn!("bus: ignoring a message on {}: {e}", message.subject);
            None
        }
    }
}

/// Passes each message of `subscriber` that reads as a `T` on to a
/// handler's queue, as `wrap` makes it with the message's reply subject.
/// A message the queue has no room for is dropped and counted (a request
/// then goes unanswered, and its sender treats it as having found nobody);
/// one that does not read as a `T` is counted and logged.
async fn relay<T, U>(
    mut subscriber: async_nats::Subscriber,
    to: mpsc::Sender<U>,
    metrics: Arc<Metrics>,
    wrap: impl Fn(T, Option<async_nats::Subject>) -> U,
) where
    T: serde::de::DeserializeOwned,
{
    while let Some(message) = subscriber.next().await {
        if let Some(value) = read::<T>(&message, &metrics) {
            if to.try_send(wrap(value, message.reply)).is_err() {
                Metrics::add(&metrics.bus_control_dropped, 1);
            }
        }
    }
}

/// The subject of one `kind` of message about `device`. Device names may
/// hold `.`, NATS's token separator, and never `%`, so escaping `.` as
/// `%2E` keeps one token per device and distinct names distinct.
pub fn subject(prefix: &str, kind: &str, device: &str) -> String {
    format!("{prefix}.{kind}.{}", device.replace('.', "%2E"))
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
            let subject = subject(&prefix, "live", device);
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
                .map(|d| subject(&prefix, "live", d))
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
        assert_eq!(subject("sl", "live", "dev-1"), "sl.live.dev-1");
        assert_eq!(subject("sl", "cmd", "a.b"), "sl.cmd.a%2Eb");
        assert_ne!(subject("sl", "live", "a.b"), subject("sl", "live", "a_b"));
    }
}
