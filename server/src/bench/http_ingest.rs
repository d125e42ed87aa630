//! `sightline bench --scenario http-ingest`: readings per second that HTTP
//! ingest commits from devices that post over keep-alive connections. Each
//! of 100 devices (by default) is one client with one connection, posting
//! the simulator's three-reading message with its id and secret as HTTP
//! Basic, and sending the next only when the last was answered 200, which
//! the server gives only after commit. The figure is readings answered 200
//! per second, checked against the rows in the database at the end.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use tokio_util::sync::CancellationToken;

use super::{free_addr, in_scratch, start_server, stop_server, BenchOptions};
use crate::simulate::READINGS_PER_MESSAGE;

/// The warm-up before counting starts: connections open and the writer's
/// batches reach their working size.
const WARM_UP: Duration = Duration::from_secs(3);

/// Runs the scenario and returns the report.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    in_scratch(opts.keep, |dir| async move { run_in(opts, &dir).await }).await
}

/// What the clients counted.
#[derive(Default)]
struct Tally {
    /// Requests answered 200 inside the counted window.
    ok: AtomicU64,
    /// Requests answered 200 at any time, for the check against the
    /// database.
    ok_total: AtomicU64,
    /// Requests answered anything else, or failed.
    refused: AtomicU64,
}

async fn run_in(opts: &BenchOptions, dir: &Path) -> anyhow::Result<String> {
    let http = free_addr()?;
    let mqtt = free_addr()?;
    let db_url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let mut server = start_server(opts, dir, http, mqtt, &db_url, &[]).await?;
    let result = measure(opts, http, &db_url).await;
    stop_server(&mut server).await?;
    let (tally, latencies, seconds) = result?;
    let store = crate::store::Store::open(&db_url).await?;
    let in_db = store
        .count_readings()
        .await
        .context("cannot count readings")?;
    let answered = tally.ok_total.load(Ordering::Relaxed) * READINGS_PER_MESSAGE;
    if in_db < answered {
        bail!("{answered} readings were answered 200 but only {in_db} are stored");
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario            HTTP ingest: {} devices, one keep-alive connection each, {} readings per request, {} s counted",
        opts.devices, READINGS_PER_MESSAGE, seconds
    );
    let _ = writeln!(
        out,
        "committed           {:.0} readings/s ({:.0} requests/s answered 200 after commit)",
        (ok * READINGS_PER_MESSAGE) as f64 / seconds as f64,
        ok as f64 / seconds as f64
    );
    let _ = writeln!(
        out,
        "request->200        p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    let _ = writeln!(
        out,
        "refused             {} requests",
        tally.refused.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "stored              {in_db} readings in the database, {answered} answered 200"
    );
    Ok(out)
}

async fn measure(
    opts: &BenchOptions,
    http: SocketAddr,
    db_url: &str,
) -> anyhow::Result<(Arc<Tally>, Vec<f64>, u64)> {
    let api = super::Api::for_db(db_url).await?;
    let mut devices = Vec::new();
    for i in 1..=opts.devices {
        let id = format!("h-{i:04}");
        let created: app::model::DeviceCredentials = api
            .client
            .post(format!("http://{http}/api/devices"))
            .json(&serde_json::json!({ "id": id }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        devices.push((id, created.secret));
    }
    let tally = Arc::new(Tally::default());
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = CancellationToken::new();
    let mut clients = Vec::new();
    for (id, secret) in devices {
        let tally = tally.clone();
        let counting = counting.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            post_until_stopped(http, &id, &secret, &tally, &counting, &stop).await
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
    counting.store(false, Ordering::Relaxed);
    stop.cancel();
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await?);
    }
    if latencies.is_empty() {
        bail!("no request was answered 200 while counting; see the server's log");
    }
    latencies.sort_by(f64::total_cmp);
    Ok((tally, latencies, opts.seconds))
}

/// One device: posts, waits for the answer, and posts again. Returns the
/// times of the requests answered 200 while counting, in milliseconds.
async fn post_until_stopped(
    http: SocketAddr,
    id: &str,
    secret: &str,
    tally: &Tally,
    counting: &std::sync::atomic::AtomicBool,
    stop: &CancellationToken,
) -> Vec<f64> {
    let client = match reqwest::Client::builder().pool_max_idle_per_host(1).build() {
        Ok(client) => client,
        Err(_) => return Vec::new(),
    };
    let url = format!("http://{http}/api/devices/{id}/readings");
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    );
    let mut times = Vec::new();
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        n += 1;
        // The simulator's message: three metrics, stamped by the server.
        let body = format!(
            "{{\"temperature\":{:.2},\"humidity\":{:.2},\"pressure\":{:.1}}}",
            20.0 + (n % 100) as f64 / 10.0,
            40.0 + (n % 50) as f64 / 5.0,
            1000.0 + (n % 30) as f64
        );
        let started = Instant::now();
        let answer = client
            .post(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                tally.ok_total.fetch_add(1, Ordering::Relaxed);
                if counting.load(Ordering::Relaxed) {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    times.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            _ => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    times
}
