//! The soak scenario: the server under a steady mixed load for many
//! minutes, to show that memory, file descriptors and tasks stay flat. It
//! holds 5,000 MQTT connections (1,000 of them publishing 20,000
//! readings/s), churns 500 connects and disconnects a second, and keeps
//! 200 WebSocket viewers reconnecting; each minute it prints the server's
//! RSS, open descriptors and runtime tasks, and at the end each one's
//! slope per minute.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{Connect, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::probe::{metric, rss};
use super::{free_addr, in_scratch, start_server, stop_server, Api, BenchOptions};
use crate::simulate::{self, SimOptions};

/// Connects and disconnects per second beside the steady load.
const CHURN_PER_SEC: u32 = 500;

/// How long a reconnecting viewer stays before it leaves and comes back.
const VIEWER_STAY: Duration = Duration::from_secs(10);

/// One minute's reading of the server.
#[derive(Clone, Copy, Debug)]
struct Sample {
    minute: f64,
    rss_mib: f64,
    fds: f64,
    tasks: f64,
}

/// Runs the soak for `opts.seconds` and returns its report.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    in_scratch(opts.keep, |dir| async move { soak_in(opts, &dir).await }).await
}

async fn soak_in(opts: &BenchOptions, dir: &Path) -> anyhow::Result<String> {
    let http = free_addr()?;
    let mqtt = free_addr()?;
    let db_url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let mut server = start_server(opts, dir, http, mqtt, &db_url, &[]).await?;
    let pid = server.id().context("server has no pid")?;
    let api = Api::for_db(&db_url).await?;
    let stop = CancellationToken::new();

    let idle = tokio::spawn(simulate::hold_idle(
        mqtt,
        "soak-idle-",
        opts.idle,
        stop.child_token(),
    ));
    let publishers = tokio::spawn(simulate::run(
        SimOptions {
            broker: mqtt,
            spread: Vec::new(),
            devices: opts.devices,
            rate: opts.rate,
            prefix: "soak-".into(),
            qos: opts.qos,
            duration: None,
            backfill: None,
            stamp: None,
            answer_commands: false,
        },
        stop.child_token(),
    ));
    let churn = tokio::spawn(churn(mqtt, stop.child_token()));
    let mut viewers = Vec::new();
    for i in 0..opts.viewers {
        let devices: Vec<String> = (0..opts.watch.max(1))
            .map(|k| {
                format!(
                    "soak-{:04}",
                    (i * opts.watch.max(1) + k) % opts.devices.max(1) + 1
                )
            })
            .collect();
        let subscription = serde_json::json!({"type": "subscribe", "devices": devices}).to_string();
        viewers.push(tokio::spawn(reconnecting_viewer(
            http,
            api.clone(),
            subscription,
            // Spread the reconnects over the stay, not all at once.
            VIEWER_STAY.mul_f64(i as f64 / opts.viewers.max(1) as f64),
            stop.child_token(),
        )));
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak: {} connections ({} publishing {:.0} readings/s), {CHURN_PER_SEC} connects/s churned, {} viewers reconnecting every {}s, {} min",
        opts.idle + opts.devices,
        opts.devices,
        opts.offered_per_sec(),
        opts.viewers,
        VIEWER_STAY.as_secs(),
        opts.seconds / 60
    );
    let _ = writeln!(out, "minute  rss_MiB  fds  tasks  stored");
    print!("{out}");
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    while started.elapsed() < Duration::from_secs(opts.seconds) {
        tick.tick().await;
        let minute = started.elapsed().as_secs_f64() / 60.0;
        let sample = Sample {
            minute,
            rss_mib: rss(pid).unwrap_or(0) as f64 / (1024.0 * 1024.0),
            fds: open_fds(pid).unwrap_or(0) as f64,
            tasks: metric(&api.client, http, "sightline_runtime_tasks")
                .await
                .unwrap_or(0) as f64,
        };
        let stored = metric(&api.client, http, "sightline_readings_stored_total")
            .await
            .unwrap_or(0);
        let line = format!(
            "{:6.1}  {:7.1}  {:4.0}  {:5.0}  {stored}\n",
            sample.minute, sample.rss_mib, sample.fds, sample.tasks
        );
        print!("{line}");
        out.push_str(&line);
        samples.push(sample);
    }
    stop.cancel();
    let _ = churn.await;
    for v in viewers {
        let _ = v.await;
    }
    let sim = publishers.await.context("publishers")?;
    let held = idle.await.unwrap_or(0);
    stop_server(&mut server).await?;

    // The first minute is warm-up: connections are still being made and
    // caches filled. The slope is over the rest.
    let steady: Vec<Sample> = samples.iter().copied().filter(|s| s.minute > 1.5).collect();
    let slope_of =
        |f: fn(&Sample) -> f64| slope(&steady.iter().map(|s| (s.minute, f(s))).collect::<Vec<_>>());
    let _ = writeln!(
        out,
        "slope per minute after the first: rss {:+.2} MiB, fds {:+.2}, tasks {:+.2}",
        slope_of(|s| s.rss_mib),
        slope_of(|s| s.fds),
        slope_of(|s| s.tasks)
    );
    let _ = writeln!(
        out,
        "published {} readings ({:.0}/s), {held} idle connections held at the end",
        sim.readings,
        sim.readings_per_sec()
    );
    Ok(out)
}

/// The least-squares slope of `points`; 0 with fewer than two.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

/// How many file descriptors a process has open.
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Connects, waits for CONNACK and disconnects, `CHURN_PER_SEC` times a
/// second, each as a new anonymous client, until `stop`.
async fn churn(mqtt: SocketAddr, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / CHURN_PER_SEC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        tokio::spawn(connect_and_leave(mqtt, format!("churn-{n}")));
    }
}

async fn connect_and_leave(mqtt: SocketAddr, client_id: String) {
    let attempt = async {
        let mut socket = TcpStream::connect(mqtt).await.ok()?;
        let mut out = BytesMut::new();
        let mut connect = Connect::new(client_id);
        connect.keep_alive = 30;
        Packet::Connect(connect).write(&mut out, usize::MAX).ok()?;
        Packet::Disconnect.write(&mut out, usize::MAX).ok()?;
        socket.write_all(&out).await.ok()?;
        let mut ack = [0u8; 4];
        socket.read_exact(&mut ack).await.ok()?;
        Some(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), attempt).await;
}

/// A viewer that watches its devices for `VIEWER_STAY`, leaves and comes
/// back, until `stop`.
async fn reconnecting_viewer(
    http: SocketAddr,
    api: Api,
    subscription: String,
    offset: Duration,
    stop: CancellationToken,
) {
    tokio::select! {
        () = stop.cancelled() => return,
        () = tokio::time::sleep(offset) => {}
    }
    while !stop.is_cancelled() {
        let Ok(request) = api.socket(http) else {
            return;
        };
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await {
            if ws
                .send(Message::Text(subscription.clone().into()))
                .await
                .is_ok()
            {
                let stay = tokio::time::sleep(VIEWER_STAY);
                tokio::pin!(stay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = &mut stay => break,
                        frame = ws.next() => if !matches!(frame, Some(Ok(_))) { break },
                    }
                }
            }
            let _ = ws.close(None).await;
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_slope_of_a_line_is_its_gradient() {
        let flat = [(1.0, 5.0), (2.0, 5.0), (3.0, 5.0)];
        assert_eq!(super::slope(&flat), 0.0);
        let rising = [(1.0, 1.0), (2.0, 3.0), (3.0, 5.0)];
        assert!((super::slope(&rising) - 2.0).abs() < 1e-9);
        assert_eq!(super::slope(&[(1.0, 1.0)]), 0.0);
    }
}
