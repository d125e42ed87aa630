//! The simulator: real MQTT clients (rumqttc) that publish plausible sensor
//! readings. `sightline simulate` runs it against any broker, and
//! `serve --demo` runs a small fleet in-process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, QoS};
use tokio_util::sync::CancellationToken;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub broker: SocketAddr,
    /// When not empty, device `i` connects to `spread[i % len]` instead of
    /// `broker`, the way a load balancer would spread a fleet over
    /// instances.
    pub spread: Vec<SocketAddr>,
    pub devices: usize,
    /// Messages per second per device.
    pub rate: f64,
    /// Device ids are this prefix plus a number.
    pub prefix: String,
    pub qos: QoS,
    /// Stop after this long; `None` runs until cancelled.
    pub duration: Option<Duration>,
    /// Before going live, publish this much history (with explicit `ts`),
    /// so a demo's charts are full from the first page load.
    pub backfill: Option<Duration>,
    /// When set, the third reading of each message is `sent_us`: the
    /// microseconds from this instant to the moment the message was
    /// handed to the client. `sightline bench` uses it to measure latency
    /// end to end; it replaces `co2`, so a message still carries three
    /// readings.
    pub stamp: Option<Instant>,
    /// Subscribe to `command/<id>` and answer the built-in commands:
    /// `ping`, and `set_interval` (`{"ms": N}` or `{"seconds": S}`), which
    /// changes that device's publish interval.
    pub answer_commands: bool,
}

impl SimOptions {
    /// The in-process demo fleet: a few devices at 1 Hz.
    pub fn demo(broker: SocketAddr, devices: usize) -> Self {
        Self {
            broker,
            spread: Vec::new(),
            devices,
            rate: 1.0,
            prefix: "demo-".into(),
            qos: QoS::AtMostOnce,
            duration: None,
            backfill: Some(Duration::from_secs(15 * 60)),
            stamp: None,
            answer_commands: true,
        }
    }
}

/// What a simulation run achieved.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// When the fleet, fully connected, started publishing.
    pub started: Option<Instant>,
    pub messages: u64,
    /// QoS 1 messages the broker acknowledged.
    pub acked: u64,
    pub readings: u64,
    pub elapsed: Duration,
}

impl SimReport {
    pub fn readings_per_sec(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Metrics each simulated device reports, with a centre and a spread.
const METRICS: [(&str, f64, f64); 3] = [
    ("temp", 21.0, 3.0),
    ("hum", 45.0, 10.0),
    ("co2", 600.0, 150.0),
];

/// Readings per simulated message.
pub const READINGS_PER_MESSAGE: u64 = METRICS.len() as u64;

/// The metric that carries a send time when [`SimOptions::stamp`] is set.
pub const STAMP_METRIC: &str = "sent_us";

/// Advances each metric's random walk and renders one JSON payload, with
/// an explicit `ts` when given, and a send stamp in place of the last
/// metric when `stamp` is set.
fn next_payload(
    rng: &mut StdRng,
    values: &mut [f64],
    ts: Option<i64>,
    stamp: Option<Instant>,
) -> String {
    let mut payload = String::from("{");
    let walked = if stamp.is_some() {
        METRICS.len() - 1
    } else {
        METRICS.len()
    };
    for (i, (name, centre, spread)) in METRICS.iter().enumerate().take(walked) {
        // A random walk pulled back towards the centre looks like a real
        // sensor drifting around its set point.
        let v = &mut values[i];
        *v += (rng.random::<f64>() - 0.5) * spread * 0.1 + (centre - *v) * 0.05;
        if i > 0 {
            payload.push(',');
        }
        payload.push_str(&format!("\"{name}\":{:.2}", *v));
    }
    if let Some(epoch) = stamp {
        payload.push_str(&format!(
            ",\"{STAMP_METRIC}\":{}",
            epoch.elapsed().as_micros()
        ));
    }
    if let Some(ts) = ts {
        payload.push_str(&format!(",\"ts\":{ts}"));
    }
    payload.push('}');
    payload
}

/// Maps a wildcard listen address to loopback, so that a server listening
/// on `0.0.0.0` can be reached by clients in the same process.
pub fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// How long the fleet may take to connect before it starts anyway.
const CONNECT_WAIT: Duration = Duration::from_secs(60);

/// How often the publisher looks for devices that are due.
const PUBLISH_TICK: Duration = Duration::from_millis(1);

/// Runs the simulated fleet until the duration ends or `cancel` fires.
///
/// Every device has its own connection (a rumqttc client and its event
/// loop). One publisher task paces the whole fleet: each millisecond it
/// hands every device that is due its next message. A timer and a task
/// wake-up per device and message would cost the load generator more CPU
/// than the broker spends on the message, on cores it shares with the
/// server. Publishing starts once every device is connected, and the
/// duration counts from then, so a run's rate is not diluted by connection
/// setup.
pub async fn run(opts: SimOptions, cancel: CancellationToken) -> SimReport {
    let fleet = Arc::new(Fleet::default());
    let mut devices = Vec::with_capacity(opts.devices);
    for i in 0..opts.devices {
        let id = format!("{}{:04}", opts.prefix, i + 1);
        let broker = if opts.spread.is_empty() {
            opts.broker
        } else {
            opts.spread[i % opts.spread.len()]
        };
        devices.push(connect(id, broker, fleet.clone(), opts.answer_commands));
    }
    let all = opts.devices as u64;
    let _ = tokio::time::timeout(CONNECT_WAIT, async {
        while fleet.connected.load(Ordering::Relaxed) < all && !cancel.is_cancelled() {
            let _ =
                tokio::time::timeout(Duration::from_millis(100), fleet.changed.notified()).await;
        }
    })
    .await;

    let mut rng = StdRng::from_rng(&mut rand::rng());
    if let Some(history) = opts.backfill {
        for d in &mut devices {
            backfill(d, &opts, history, &mut rng).await;
        }
    }

    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let default_period = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
    // Random phases, so that the fleet does not publish in lockstep.
    for d in &mut devices {
        d.next = started + default_period.mul_f64(rng.random::<f64>());
    }
    let mut tick = tokio::time::interval(PUBLISH_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if deadline.is_some_and(|end| now >= end) {
            break;
        }
        for d in &mut devices {
            if d.next > now {
                continue;
            }
            // A `set_interval` command may have changed this device's pace.
            let period = match d.interval_ms.load(Ordering::Relaxed) {
                0 => default_period,
                ms => Duration::from_millis(ms),
            };
            let payload = next_payload(&mut rng, &mut d.values, None, opts.stamp);
            // A full client queue means the connection is not keeping up;
            // the message is skipped, and it was never counted as sent.
            let _ = d.client.try_publish(&d.topic, opts.qos, false, payload);
            d.next += period;
            // After a stall, resume the cadence instead of bursting to
            // catch up.
            if d.next + period < now {
                d.next = now + period;
            }
        }
    }
    let elapsed = started.elapsed();

    // A well-behaved QoS 1 device waits for its acknowledgements before it
    // disconnects; rumqttc's disconnect does not, and a message still in
    // flight then would be counted as sent yet never reach the broker.
    if opts.qos != QoS::AtMostOnce {
        let settled = async {
            while fleet.acked.load(Ordering::Relaxed) < fleet.sent.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), settled).await;
    }
    disconnect_all(devices).await;
    let messages = fleet.sent.load(Ordering::Relaxed);
    SimReport {
        started: Some(started),
        acked: fleet.acked.load(Ordering::Relaxed),
        messages,
        readings: messages * READINGS_PER_MESSAGE,
        elapsed,
    }
}

/// What the devices of one run share.
#[derive(Debug, Default)]
struct Fleet {
    /// Connections the broker has accepted and that are still open.
    connected: AtomicU64,
    changed: tokio::sync::Notify,
    /// Messages that left for the socket, counted by the event loops.
    sent: AtomicU64,
    /// PUBACKs received.
    acked: AtomicU64,
}

/// One simulated device: its client, its event loop's task, and the state
/// of its readings.
struct SimDevice {
    client: AsyncClient,
    poller: tokio::task::JoinHandle<()>,
    topic: String,
    /// The interval a `set_interval` command asked for, in milliseconds;
    /// 0 keeps the run's rate.
    interval_ms: Arc<AtomicU64>,
    values: Vec<f64>,
    next: Instant,
}

/// Opens a device's connection; its event loop runs in a task of its own
/// and counts what is sent and acknowledged.
fn connect(id: String, broker: SocketAddr, fleet: Arc<Fleet>, commands: bool) -> SimDevice {
    let broker = loopback(broker);
    let mut mqtt = MqttOptions::new(id.clone(), broker.ip().to_string(), broker.port());
    mqtt.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(mqtt, 64);
    if commands {
        // A device answers right after it acknowledges a command; with
        // Nagle's algorithm the answer would wait for the server's delayed
        // ACK of the PUBACK (40 ms here). Only devices that answer pay for
        // unbatched small packets; a high-rate load generator keeps Nagle.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        events.set_network_options(network);
    }
    let interval_ms = Arc::new(AtomicU64::new(0));
    let device = commands.then(|| CommandHandler {
        id: id.clone(),
        client: client.clone(),
        interval_ms: interval_ms.clone(),
    });
    let poller = tokio::spawn(async move {
        let mut up = false;
        loop {
            match events.poll().await {
                // Count a message as sent when it leaves for the socket,
                // not when it is queued, so that a run's report matches
                // what the broker received.
                Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                    fleet.sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    fleet.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if let Some(device) = &device {
                        device.handle(&p.payload);
                    }
                }
                Ok(Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    // Sessions are clean, so every connection subscribes
                    // again.
                    if let Some(device) = &device {
                        device.subscribe();
                    }
                    up = true;
                    fleet.connected.fetch_add(1, Ordering::Relaxed);
                    fleet.changed.notify_one();
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    if std::mem::take(&mut up) {
                        fleet.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    tracing::debug!("simulated device connection: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    SimDevice {
        client,
        poller,
        topic: format!("sensor/{id}"),
        interval_ms,
        values: METRICS.iter().map(|(_, centre, _)| *centre).collect(),
        next: Instant::now(),
    }
}

/// The shortest and longest interval `set_interval` accepts.
const INTERVAL_RANGE_MS: (u64, u64) = (100, 3_600_000);

/// A simulated device's side of commands: the built-in `ping` and
/// `set_interval`, answered on `command/<id>/response`.
struct CommandHandler {
    id: String,
    client: AsyncClient,
    interval_ms: Arc<AtomicU64>,
}

impl CommandHandler {
    fn subscribe(&self) {
        let topic = format!("command/{}", self.id);
        if let Err(e) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
            tracing::debug!("simulated device cannot subscribe to commands: {e}");
        }
    }

    /// Runs one command and answers it. This runs inside the event loop's
    /// task, so the answer is queued without waiting.
    fn handle(&self, payload: &[u8]) {
        let Ok(request) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let Some(id) = request.get("id").and_then(|v| v.as_str()) else {
            return;
        };
        let name = request.get("name").and_then(|v| v.as_str()).unwrap_or("");
        let answer = match self.run(name, request.get("params")) {
            Ok(result) => serde_json::json!({ "id": id, "result": result }),
            Err(error) => serde_json::json!({ "id": id, "error": error }),
        };
        let topic = format!("command/{}/response", self.id);
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, answer.to_string())
        {
            tracing::debug!("simulated device cannot answer a command: {e}");
        }
    }

    fn run(
        &self,
        name: &str,
        params: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        match name {
            "ping" => Ok(serde_json::json!({ "pong": crate::clock::now_ms() })),
            "set_interval" => {
                let ms = params
                    .and_then(|p| match (p.get("ms"), p.get("seconds")) {
                        (Some(ms), _) => ms.as_f64(),
                        (None, Some(s)) => s.as_f64().map(|s| s * 1000.0),
                        (None, None) => None,
                    })
                    .ok_or("set_interval needs {\"ms\": N} or {\"seconds\": S}")?;
                let (low, high) = INTERVAL_RANGE_MS;
                if !(low as f64..=high as f64).contains(&ms) {
                    return Err(format!("the interval must be {low} to {high} ms, not {ms}"));
                }
                let ms = ms.round() as u64;
                self.interval_ms.store(ms, Ordering::Relaxed);
                Ok(serde_json::json!({ "interval_ms": ms }))
            }
            other => Err(format!("unknown command {other:?}")),
        }
    }
}

/// Publishes `history` worth of past readings, with explicit timestamps,
/// so a demo's charts are full from the first page load.
async fn backfill(d: &mut SimDevice, opts: &SimOptions, history: Duration, rng: &mut StdRng) {
    let now = crate::clock::now_ms();
    let step = (1000.0 / opts.rate.max(0.001)).max(1.0) as i64;
    let mut ts = now - history.as_millis() as i64;
    while ts < now {
        let payload = next_payload(rng, &mut d.values, Some(ts), None);
        if d.client
            .publish(&d.topic, opts.qos, false, payload)
            .await
            .is_err()
        {
            break;
        }
        ts += step;
    }
}

/// Holds `count` idle connections (ids `prefix` plus a number) open until
/// `stop` fires, and returns how many were acknowledged by the broker and
/// still open at the end. Used to show how many connections the server
/// holds beside the publishing fleet.
pub async fn hold_idle(
    broker: SocketAddr,
    prefix: &str,
    count: usize,
    stop: CancellationToken,
) -> u64 {
    let fleet = Arc::new(Fleet::default());
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        devices.push(connect(
            format!("{prefix}{:05}", i + 1),
            broker,
            fleet.clone(),
            false,
        ));
        // Pace connection setup a little so the listener's accept loop is
        // not handed thousands of handshakes in one instant.
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.cancelled().await;
    let held = fleet.connected.load(Ordering::Relaxed);
    disconnect_all(devices).await;
    held
}

/// Disconnects every device and waits (a bounded time) for their event
/// loops to send the DISCONNECT.
async fn disconnect_all(devices: Vec<SimDevice>) {
    for d in &devices {
        let _ = d.client.try_disconnect();
    }
    let mut pollers: Vec<_> = devices.into_iter().map(|d| d.poller).collect();
    let all = futures_util::future::join_all(pollers.iter_mut());
    let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
    for p in pollers {
        p.abort();
    }
}
