//! `sightline bench --scenario history`: the issue-5 chart target. It seeds
//! one metric with a year of 1-minute readings (525,600, through the real
//! writer, so rollups are built as in production), starts the server on
//! that SQLite file, and times `series?points=1000` for 1 h, 24 h, 30 d and
//! 1 y windows ending now, in several time zones. The target is a median
//! under 100 ms for every window.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use app::model::{Reading, SeriesResponse};

use super::{free_addr, in_scratch, start_server, stop_server, BenchOptions};
use crate::store::Store;

/// The device and metric the benchmark seeds.
pub const DEVICE: &str = "history-bench";
const METRIC: &str = "temp";

/// Timed requests per window and zone; the first of each is a warm-up.
const RUNS: usize = 21;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The windows the issue names.
const WINDOWS: [(&str, i64); 4] = [
    ("1 h", HOUR),
    ("24 h", DAY),
    ("30 d", 30 * DAY),
    ("1 y", 365 * DAY),
];

/// Time zones: UTC, one with DST, and one a quarter-hour off UTC.
const ZONES: [&str; 3] = ["UTC", "Europe/Berlin", "Asia/Kathmandu"];

/// Seeds `url` with a year of 1-minute readings ending at `end`, with one
/// spike; returns how long that took.
pub async fn seed(url: &str, end: i64) -> anyhow::Result<Duration> {
    let store = Store::open(url).await?;
    let mut writer = store.writer();
    let start = end - 365 * DAY;
    let started = Instant::now();
    let total = 365 * 24 * 60;
    let spike = total / 3;
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..total {
        let ts = start + i * MINUTE;
        // A daily cycle with a slow drift, so charts look like a sensor.
        let day = (ts % DAY) as f64 / DAY as f64 * std::f64::consts::TAU;
        let value = if i == spike {
            120.0
        } else {
            18.0 + 6.0 * day.sin() + (i % 997) as f64 / 997.0
        };
        batch.push(Reading {
            device: DEVICE.into(),
            metric: METRIC.into(),
            ts,
            value,
        });
        if batch.len() == batch.capacity() {
            writer.write(&batch).await?;
            batch.clear();
        }
    }
    writer.write(&batch).await?;
    Ok(started.elapsed())
}

/// Runs the scenario and returns the report.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    in_scratch(opts.keep, |dir| async move { run_in(opts, &dir).await }).await
}

async fn run_in(opts: &BenchOptions, dir: &Path) -> anyhow::Result<String> {
    let db_url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let end = crate::clock::now_ms();
    let seeding = seed(&db_url, end).await?;
    let http = free_addr()?;
    let mqtt = free_addr()?;
    let mut server = start_server(opts, dir, http, mqtt, &db_url, &[]).await?;
    let client = super::Api::for_db(&db_url).await?.client;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario            History: 525,600 readings (1 year at 1/min), series?points=1000"
    );
    let _ = writeln!(
        out,
        "seeding             {:.1} s through the writer, rollups included ({:.0} readings/s)",
        seeding.as_secs_f64(),
        525_600.0 / seeding.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<6} {:<15} {:>8} {:>8} {:>8} {:>8}  source",
        "window", "zone", "p50 ms", "p90 ms", "max ms", "buckets"
    );
    let mut worst_median: f64 = 0.0;
    for (name, span) in WINDOWS {
        for zone in ZONES {
            let path = format!(
                "/api/devices/{DEVICE}/series?metric={METRIC}&from={}&to={end}&points=1000&tz={zone}",
                end - span
            );
            let mut times = Vec::with_capacity(RUNS);
            let mut last: Option<SeriesResponse> = None;
            for run in 0..RUNS {
                let started = Instant::now();
                let response = client
                    .get(format!("http://{http}{path}"))
                    .send()
                    .await?
                    .error_for_status()?;
                let body = response.bytes().await?;
                let elapsed = started.elapsed();
                if run > 0 {
                    times.push(elapsed.as_secs_f64() * 1000.0);
                }
                last = Some(serde_json::from_slice(&body)?);
            }
            times.sort_by(f64::total_cmp);
            let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            let Some(series) = last.and_then(|r| r.series.into_iter().next()) else {
                bail!("no series in the answer for {path}");
            };
            worst_median = worst_median.max(at(0.5));
            let _ = writeln!(
                out,
                "{name:<6} {zone:<15} {:>8.1} {:>8.1} {:>8.1} {:>8}  {:?}",
                at(0.5),
                at(0.9),
                at(1.0),
                series.buckets.len(),
                series.resolution
            );
        }
    }
    let _ = writeln!(
        out,
        "slowest median      {worst_median:.1} ms (target: under 100 ms for every window)"
    );
    stop_server(&mut server).await?;
    Ok(out)
}
