//! `sightline bench --scenario commands`: how long an operator waits for a
//! device's answer. One simulated device answers `ping` while a fleet
//! publishes readings beside it (10,000 readings/s by default); the
//! benchmark sends 1,000 pings, 20 ms apart, through the HTTP API and times
//! each from the POST to the moment a WebSocket viewer of the device page
//! sees it "answered", which is what the operator waits for.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use app::model::{Command, CommandRequest, CommandState, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{free_addr, in_scratch, start_server, stop_server, BenchOptions};
use crate::simulate::{self, SimOptions};

/// Timed commands; the first few are warm-up and not counted.
const COMMANDS: usize = 1000;
const WARM_UP: usize = 10;

/// The pause between one answer and the next ping, so that the pings
/// spread over 20 s of the writer's transactions rather than a fraction
/// of one.
const PACE: Duration = Duration::from_millis(20);

/// The device that answers.
const DEVICE: &str = "cmd-0001";

/// Runs the scenario and returns the report.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    in_scratch(opts.keep, |dir| async move { run_in(opts, &dir).await }).await
}

fn fleet(
    broker: std::net::SocketAddr,
    devices: usize,
    rate: f64,
    prefix: &str,
    answer_commands: bool,
) -> SimOptions {
    SimOptions {
        broker,
        spread: Vec::new(),
        devices,
        rate,
        prefix: prefix.into(),
        qos: rumqttc::QoS::AtMostOnce,
        duration: None,
        backfill: None,
        stamp: None,
        answer_commands,
    }
}

async fn run_in(opts: &BenchOptions, dir: &Path) -> anyhow::Result<String> {
    let http = free_addr()?;
    let mqtt = free_addr()?;
    let db_url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let mut server = start_server(opts, dir, http, mqtt, &db_url, &[]).await?;
    let stop = CancellationToken::new();
    let load = tokio::spawn(simulate::run(
        fleet(mqtt, opts.devices, opts.rate, "load-", false),
        stop.clone(),
    ));
    let answerer = tokio::spawn(simulate::run(
        fleet(mqtt, 1, 1.0, "cmd-", true),
        stop.clone(),
    ));
    let result = match super::Api::for_db(&db_url).await {
        Ok(api) => measure(http, &api, opts.devices).await,
        Err(e) => Err(e),
    };
    stop.cancel();
    let _ = load.await;
    let _ = answerer.await;
    stop_server(&mut server).await?;
    let Measured {
        times,
        server_side,
        stored_per_sec,
    } = result?;

    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario            Commands: {} pings to one simulated device, beside {} devices offering {:.0} readings/s",
        times.len(),
        opts.devices,
        opts.offered_per_sec()
    );
    let _ = writeln!(
        out,
        "load while timing   {stored_per_sec:.0} readings/s stored"
    );
    let _ = writeln!(
        out,
        "POST->answered      p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (seen on the device page's WebSocket)",
        at(&times, 0.5),
        at(&times, 0.9),
        at(&times, 0.99),
        at(&times, 1.0)
    );
    let _ = writeln!(
        out,
        "sent->answered      p50 {:.0} ms, max {:.0} ms (server clock, broker to device and back)",
        at(&server_side, 0.5),
        at(&server_side, 1.0)
    );
    Ok(out)
}

/// What the timed pings measured.
struct Measured {
    /// POST to "answered" on the WebSocket, in milliseconds, sorted.
    times: Vec<f64>,
    /// The server's sent-to-answered times, in milliseconds, sorted.
    server_side: Vec<f64>,
    /// Readings the server stored per second while the pings ran.
    stored_per_sec: f64,
}

async fn stored(
    client: &reqwest::Client,
    http: std::net::SocketAddr,
) -> anyhow::Result<(u64, u64)> {
    let c: app::model::Counters = client
        .get(format!("http://{http}/api/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok((c.stored, c.connected))
}

/// Waits for the whole load fleet to be connected and publishing, then
/// sends the pings.
async fn measure(
    http: std::net::SocketAddr,
    api: &super::Api,
    load: usize,
) -> anyhow::Result<Measured> {
    let client = api.client.clone();
    let connected = Instant::now() + Duration::from_secs(90);
    while stored(&client, http).await?.1 < load as u64 + 1 {
        if Instant::now() > connected {
            bail!("the load fleet did not connect within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The fleet starts publishing once every device is connected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let post = |request: &CommandRequest| {
        client
            .post(format!("http://{http}/api/devices/{DEVICE}/commands"))
            .json(request)
            .send()
    };
    let ping = CommandRequest {
        name: "ping".into(),
        params: serde_json::json!({}),
        two_way: true,
        persistent: false,
        timeout_ms: Some(10_000),
        ttl_ms: None,
    };
    // The device is ready once a ping is sent rather than refused: it
    // exists (from its first reading) and has subscribed.
    let ready = Instant::now() + Duration::from_secs(60);
    loop {
        let response = post(&ping).await?;
        if response.status() != reqwest::StatusCode::NOT_FOUND {
            let c: Command = response.error_for_status()?.json().await?;
            if c.state != CommandState::Failed {
                break;
            }
        }
        if Instant::now() > ready {
            bail!("the simulated device did not subscribe within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(api.socket(http)?)
        .await
        .context("cannot open the live WebSocket")?;
    let subscribe = serde_json::json!({"type": "subscribe", "devices": [DEVICE]}).to_string();
    ws.send(Message::Text(subscribe.into())).await?;
    // Let the subscription land before the first timed command.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut times = Vec::with_capacity(COMMANDS);
    let mut server_side = Vec::with_capacity(COMMANDS);
    let (stored_before, _) = stored(&client, http).await?;
    let timing = Instant::now();
    for i in 0..COMMANDS + WARM_UP {
        let started = Instant::now();
        let sent: Command = post(&ping).await?.error_for_status()?.json().await?;
        let done = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(frame) = ws.next().await {
                let Ok(Message::Text(text)) = frame else {
                    continue;
                };
                if let Ok(ServerMsg::Command { command }) = serde_json::from_str(&text) {
                    if command.id == sent.id && command.is_final() {
                        return Some(*command);
                    }
                }
            }
            None
        })
        .await
        .context("no final state within 15 s")?
        .context("the WebSocket closed")?;
        let elapsed = started.elapsed();
        if done.state != CommandState::Answered {
            bail!(
                "ping {} ended {}: {:?}",
                done.id,
                done.state.label(),
                done.error
            );
        }
        tokio::time::sleep(PACE).await;
        if i >= WARM_UP {
            times.push(elapsed.as_secs_f64() * 1000.0);
            if let (Some(end), Some(sent_at)) = (done.completed_at, done.sent_at) {
                server_side.push((end - sent_at) as f64);
            }
        }
    }
    let (stored_after, _) = stored(&client, http).await?;
    times.sort_by(f64::total_cmp);
    server_side.sort_by(f64::total_cmp);
    Ok(Measured {
        times,
        server_side,
        stored_per_sec: (stored_after - stored_before) as f64 / timing.elapsed().as_secs_f64(),
    })
}
