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
}

impl SimOptions {
    /// The in-process demo fleet: a few devices at 1 Hz.
    pub fn demo(broker: SocketAddr, devices: usize) -> Self {
        Self {
            broker,
            devices,
            rate: 1.0,
            prefix: "demo-".into(),
            qos: QoS::AtMostOnce,
            duration: None,
            backfill: Some(Duration::from_secs(15 * 60)),
        }
    }
}

/// What a simulation run achieved.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub messages: u64,
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

/// Advances each metric's random walk and renders one JSON payload, with
/// an explicit `ts` when given.
fn next_payload(rng: &mut StdRng, values: &mut [f64], ts: Option<i64>) -> String {
    let mut payload = String::from("{");
    for (i, (name, centre, spread)) in METRICS.iter().enumerate() {
        // A random walk pulled back towards the centre looks like a real
        // sensor drifting around its set point.
        let v = &mut values[i];
        *v += (rng.random::<f64>() - 0.5) * spread * 0.1 + (centre - *v) * 0.05;
        if i > 0 {
            payload.push(',');
        }
        payload.push_str(&format!("\"{name}\":{:.2}", *v));
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

/// Runs the simulated fleet until the duration ends or `cancel` fires.
pub async fn run(opts: SimOptions, cancel: CancellationToken) -> SimReport {
    let messages = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop = cancel.child_token();
    if let Some(d) = opts.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    let mut tasks = Vec::with_capacity(opts.devices);
    for i in 0..opts.devices {
        let id = format!("{}{:04}", opts.prefix, i + 1);
        tasks.push(tokio::spawn(device(
            id,
            opts.clone(),
            messages.clone(),
            stop.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let messages = messages.load(Ordering::Relaxed);
    SimReport {
        messages,
        readings: messages * METRICS.len() as u64,
        elapsed: started.elapsed(),
    }
}

/// One simulated device: a connection that publishes on a fixed cadence,
/// starting at a random phase so that a fleet does not publish in lockstep.
async fn device(id: String, opts: SimOptions, sent: Arc<AtomicU64>, stop: CancellationToken) {
    let broker = loopback(opts.broker);
    let mut mqtt = MqttOptions::new(id.clone(), broker.ip().to_string(), broker.port());
    mqtt.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(mqtt, 64);
    // Count a message as sent when it leaves for the socket, not when it is
    // queued, and keep polling until the DISCONNECT has gone out, so that
    // a run's report matches what the broker received.
    let poll_stop = stop.clone();
    let counted = sent.clone();
    let poller = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    if poll_stop.is_cancelled() {
                        break;
                    }
                    tracing::debug!("simulated device connection: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });

    let period = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut values: Vec<f64> = METRICS.iter().map(|(_, centre, _)| *centre).collect();
    let topic = format!("sensor/{id}");

    if let Some(history) = opts.backfill {
        let now = crate::ingest::now_ms();
        let step = period.as_millis().max(1) as i64;
        let mut ts = now - history.as_millis() as i64;
        while ts < now && !stop.is_cancelled() {
            let payload = next_payload(&mut rng, &mut values, Some(ts));
            if client
                .publish(&topic, opts.qos, false, payload)
                .await
                .is_err()
            {
                break;
            }
            ts += step;
        }
    }

    tokio::time::sleep(period.mul_f64(rng.random::<f64>())).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let payload = next_payload(&mut rng, &mut values, None);
        if client
            .publish(&topic, opts.qos, false, payload)
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), poller).await;
}
