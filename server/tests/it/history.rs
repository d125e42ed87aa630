//! The series API against a real database: every bucket it returns, from
//! whichever rollup or from raw readings, must agree exactly with the raw
//! readings it covers (count, min, max, first and last time), on SQLite
//! over real HTTP and on PostgreSQL when CI provides one.

use crate::common;

use app::model::{Reading, Resolution, SeriesResponse};
use chrono_tz::Tz;
use server::history::{self, SeriesRequest};
use server::store::Store;

use common::{test_config, Scratch, TestServer};

/// 2026-01-01 00:00 UTC.
const T0: i64 = 1_767_225_600_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 60 * MINUTE;

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Three days of readings of `temp` for `device` at irregular intervals of
/// 1-13 s, with a spike, written in shuffled batches so that rollups are
/// built by merging across batches and out of order. Returns them sorted.
async fn seed(store: &Store, device: &str) -> Vec<(i64, f64)> {
    let mut rng = Lcg(7);
    let mut readings = Vec::new();
    let mut ts = T0 + 1234;
    while ts < T0 + 3 * DAY {
        let value = (rng.next() % 10_000) as f64 / 100.0 - 20.0;
        readings.push((ts, value));
        ts += 1_000 + (rng.next() % 12_000) as i64;
    }
    let spike = readings.len() / 3;
    readings[spike].1 = 1e6;
    let mut shuffled = readings.clone();
    for i in (1..shuffled.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        shuffled.swap(i, j);
    }
    let mut writer = store.writer();
    for batch in shuffled.chunks(4_000) {
        let batch: Vec<Reading> = batch
            .iter()
            .map(|&(ts, value)| Reading {
                device: device.into(),
                metric: "temp".into(),
                ts,
                value,
            })
            .collect();
        writer.write(&batch).await.expect("write");
    }
    readings
}

/// Checks every bucket of `response` against the raw readings; returns the
/// resolution used.
fn check(response: &SeriesResponse, raw: &[(i64, f64)], what: &str) -> Resolution {
    assert_eq!(response.series.len(), 1, "{what}");
    let series = &response.series[0];
    assert!(!series.buckets.is_empty(), "{what}: no buckets");
    assert!(
        series.buckets.windows(2).all(|w| w[0].end <= w[1].start),
        "{what}: buckets in order, not overlapping"
    );
    for b in &series.buckets {
        let inside: Vec<f64> = raw
            .iter()
            .filter(|(ts, _)| b.start <= *ts && *ts < b.end)
            .map(|&(_, v)| v)
            .collect();
        let min = inside.iter().copied().fold(f64::INFINITY, f64::min);
        let max = inside.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let first = raw.iter().find(|(ts, _)| b.start <= *ts).map(|r| r.0);
        let last = raw.iter().rev().find(|(ts, _)| *ts < b.end).map(|r| r.0);
        assert_eq!(b.count, inside.len() as i64, "{what}: count of {b:?}");
        assert_eq!((b.min, b.max), (min, max), "{what}: extremes of {b:?}");
        assert_eq!(
            (Some(b.first), Some(b.last)),
            (first, last),
            "{what}: {b:?}"
        );
        let avg = inside.iter().sum::<f64>() / inside.len() as f64;
        assert!(
            (b.avg - avg).abs() < 1e-6 * avg.abs().max(1.0),
            "{what}: avg"
        );
    }
    // Every reading of the requested range is in some bucket.
    let in_range = raw
        .iter()
        .filter(|(ts, _)| response.from <= *ts && *ts <= response.to)
        .count() as i64;
    let covered: i64 = series
        .buckets
        .iter()
        .map(|b| {
            raw.iter()
                .filter(|(ts, _)| b.start <= *ts && *ts < b.end)
                .filter(|(ts, _)| response.from <= *ts && *ts <= response.to)
                .count() as i64
        })
        .sum();
    assert_eq!(covered, in_range, "{what}: coverage");
    series.resolution
}

/// The requests that exercise each source: (from, to, points, tz, expected).
fn cases() -> Vec<(i64, i64, usize, &'static str, Resolution)> {
    vec![
        (T0, T0 + 3 * DAY, 1000, "UTC", Resolution::Rollup1m),
        (T0, T0 + 3 * DAY, 50, "Europe/Berlin", Resolution::Rollup15m),
        (T0, T0 + 3 * DAY, 3, "Asia/Kathmandu", Resolution::Rollup15m),
        (
            T0 + DAY,
            T0 + DAY + 2 * 60 * MINUTE,
            100,
            "America/New_York",
            Resolution::Rollup1m,
        ),
        (
            T0 + DAY,
            T0 + DAY + 10 * MINUTE,
            50,
            "UTC",
            Resolution::RawBuckets,
        ),
        (
            T0 + DAY,
            T0 + DAY + 10 * MINUTE,
            1000,
            "UTC",
            Resolution::Raw,
        ),
    ]
}

async fn check_all(store: &Store, device: &str, raw: &[(i64, f64)]) {
    for (from, to, points, tz, want) in cases() {
        let request = SeriesRequest {
            metrics: None,
            from,
            to,
            points,
            tz: tz.parse::<Tz>().expect("zone"),
            raw_since: None,
        };
        let what = format!("{from}..{to} at {points} in {tz}");
        let response = history::load(store, device, &request)
            .await
            .expect("query")
            .expect("known device");
        assert!(response.series[0].buckets.len() <= points, "{what}");
        assert_eq!(check(&response, raw, &what), want, "{what}");
    }
}

#[tokio::test]
async fn buckets_from_rollups_agree_with_raw_readings_over_http() {
    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    let store = Store::open(&url).await.expect("open");
    let raw = seed(&store, "Hist").await;
    check_all(&store, "Hist", &raw).await;

    let server = TestServer::start(test_config(&url)).await;
    // A year view of three days of data: the spike is the maximum of
    // exactly one bucket, and the API reports its resolution and step.
    let year: SeriesResponse = server
        .get_json(&format!(
            "/api/devices/Hist/series?metric=temp&from={T0}&to={}&points=1000&tz=Europe/Berlin",
            T0 + 365 * DAY
        ))
        .await;
    assert_eq!(year.tz, "Europe/Berlin");
    assert_eq!(year.step_ms, 12 * 60 * MINUTE);
    assert_eq!(check(&year, &raw, "year"), Resolution::Rollup15m);
    let spikes = year.series[0]
        .buckets
        .iter()
        .filter(|b| b.max == 1e6)
        .count();
    assert_eq!(spikes, 1);
    // Buckets start at Berlin's midnight and noon.
    assert!(year.series[0]
        .buckets
        .iter()
        .all(|b| (b.start + 60 * MINUTE).rem_euclid(12 * 60 * MINUTE) == 0));

    for (path, want) in [
        ("/api/devices/Nobody/series", 404),
        ("/api/devices/Hist/series?points=0", 400),
        ("/api/devices/Hist/series?tz=Nowhere%2FCity", 400),
        ("/api/devices/Hist/series?from=9&to=3", 400),
        ("/api/devices/Hist/series?metric=%3Cb%3E", 400),
        ("/api/devices/Hist/series?from=soon", 400),
    ] {
        assert_eq!(server.get(path).await.expect("request").0, want, "{path}");
    }
    let none: SeriesResponse = server
        .get_json("/api/devices/Hist/series?metric=nothing")
        .await;
    assert!(none.series.is_empty());
    server.stop().await.expect("clean shutdown");
}

/// The same checks on PostgreSQL, whose upsert and aggregate SQL differ.
#[tokio::test]
async fn buckets_from_rollups_agree_with_raw_readings_on_postgres() {
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let store = Store::open(&db.url).await.expect("open postgres");
    let device = format!("Hist-{}", std::process::id());
    let raw = seed(&store, &device).await;
    check_all(&store, &device, &raw).await;

    // The fleet's sparkline query and retention's chunked deletes are
    // written by hand too.
    let fleet = store.devices().await.expect("fleet on postgres");
    assert!(fleet.iter().any(|d| d.id == device));
    let now = server::clock::now_ms();
    let policy = server::store::retention::Policy {
        raw_ms: Some(now - (T0 + DAY)),
        rollups_ms: None,
    };
    let pruned = store.prune(policy, now).await.expect("prune on postgres");
    let first_day = raw.iter().filter(|(ts, _)| *ts < T0 + DAY).count() as u64;
    assert!(pruned.readings >= first_day, "{pruned:?}");
    let series = store
        .series_of(&device, Some("temp"))
        .await
        .expect("query")
        .expect("device");
    let left = store
        .raw_points(series[0].0, T0, T0 + 3 * DAY, 1_000_000)
        .await
        .expect("query");
    assert_eq!(left.len(), raw.len() - first_day as usize);
    assert!(left.iter().all(|(ts, _)| *ts >= T0 + DAY));
}

/// The value of counter `name` on the server's `/metrics` page.
async fn counter(server: &TestServer, name: &str) -> u64 {
    server
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Retention deletes old raw readings and older rollups in the background,
/// in chunks, while a QoS 1 device keeps publishing: every publish is
/// stored, none waits long for its acknowledgement, and charts of the
/// pruned period still come from rollups.
#[tokio::test]
async fn retention_prunes_in_the_background_while_ingest_continues() {
    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    let now = server::clock::now_ms();
    let store = Store::open(&url).await.expect("open");
    let mut writer = store.writer();
    // 100 days at one reading every 20 s: 432,000 readings, 70% of them
    // older than the 30-day raw retention.
    let start = now - 100 * DAY;
    let all: Vec<i64> = (0..432_000).map(|i| start + i * 20_000).collect();
    for chunk in all.chunks(50_000) {
        let batch: Vec<Reading> = chunk
            .iter()
            .map(|&ts| Reading {
                device: "Old".into(),
                metric: "temp".into(),
                ts,
                value: 1.0,
            })
            .collect();
        writer.write(&batch).await.expect("seed");
    }
    drop(writer);
    let raw_cutoff = now - 30 * DAY;
    let expired = all.iter().filter(|&&ts| ts < raw_cutoff).count() as u64;

    let mut config = test_config(&url);
    config.retain_raw = "30d".parse().expect("retention");
    config.retain_rollups = "60d".parse().expect("retention");
    let server = TestServer::start(config).await;
    let device = server.device("Fresh").await;
    let mut slowest = std::time::Duration::ZERO;
    let (mut sent, mut during) = (0u64, 0u64);
    let began = std::time::Instant::now();
    while counter(&server, "sightline_pruned_readings_total").await == 0
        || began.elapsed() < std::time::Duration::from_secs(1)
    {
        assert!(began.elapsed().as_secs() < 60, "pruning never finished");
        let pruning = counter(&server, "sightline_pruned_readings_total").await == 0;
        let t = std::time::Instant::now();
        device.publish("sensor/Fresh/temp", format!("{sent}")).await;
        sent += 1;
        while device.acked.load(std::sync::atomic::Ordering::Relaxed) < sent {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        slowest = slowest.max(t.elapsed());
        during += u64::from(pruning);
    }
    println!("{during} of {sent} publishes acknowledged during pruning; slowest {slowest:?}");
    assert!(during >= 10, "the test must publish while pruning runs");
    assert!(
        slowest < std::time::Duration::from_millis(100),
        "a publish waited {slowest:?} for its acknowledgement"
    );
    // The server's clock ran on a little after ours, which may expire a
    // few more readings (one per 20 s).
    let pruned = counter(&server, "sightline_pruned_readings_total").await;
    assert!(
        (expired..expired + 10).contains(&pruned),
        "{pruned} of {expired}"
    );

    // Raw readings older than 30 days are gone; the rest are all there.
    let series = store
        .series_of("Old", Some("temp"))
        .await
        .expect("query")
        .expect("device");
    let old = store
        .raw_points(series[0].0, start, raw_cutoff - 1, 10)
        .await
        .expect("query");
    assert!(old.is_empty(), "{old:?}");
    let kept = store
        .raw_points(series[0].0, start, now, 1_000_000)
        .await
        .expect("query");
    assert_eq!(kept.len() as u64, all.len() as u64 - pruned);
    // 40-50 days ago is drawn from rollups; 70-100 days ago is gone.
    let path =
        |from: i64, to: i64| format!("/api/devices/Old/series?from={from}&to={to}&points=100");
    let mid: SeriesResponse = server.get_json(&path(now - 50 * DAY, now - 40 * DAY)).await;
    assert_eq!(mid.series[0].resolution, Resolution::Rollup15m);
    let counted: i64 = mid.series[0].buckets.iter().map(|b| b.count).sum();
    assert!(counted >= 43_000, "10 days of rollups, {counted} readings");
    // Even a short window there, which would otherwise ask for raw
    // readings, is answered from the 1-minute rollups.
    let short: SeriesResponse = server
        .get_json(&path(now - 45 * DAY, now - 45 * DAY + 10 * MINUTE))
        .await;
    assert_eq!(short.series[0].resolution, Resolution::Rollup1m);
    assert!(short.series[0].buckets.len() >= 9, "{short:?}");
    let ancient: SeriesResponse = server.get_json(&path(start, now - 70 * DAY)).await;
    assert!(ancient.series[0].buckets.is_empty());

    let c: app::model::Counters = server.get_json("/api/stats").await;
    assert_eq!((c.stored, c.dropped), (sent, 0));
    device.disconnect().await;
    server.stop().await.expect("clean shutdown");
}

/// The fleet's sparkline is the last hour of each device's first metric
/// (by name), averaged over two-minute slots from the 1-minute rollups.
#[tokio::test]
async fn fleet_sparklines_average_the_last_hour_of_the_first_metric() {
    let scratch = Scratch::new();
    let store = Store::open(&scratch.sqlite_url()).await.expect("open");
    let now = server::clock::now_ms();
    let mut writer = store.writer();
    // Two hours of `b_temp` every 30 s (value = minutes ago), and `a_hum`,
    // which sorts first and is the one charted.
    let batch: Vec<Reading> = (0..240)
        .flat_map(|i| {
            let ts = now - i * 30_000;
            [("a_hum", (i / 2) as f64), ("b_temp", 1.0)].map(|(metric, value)| Reading {
                device: "Spark".into(),
                metric: metric.into(),
                ts,
                value,
            })
        })
        .collect();
    writer.write(&batch).await.expect("write");
    let fleet = store.devices().await.expect("fleet");
    let spark = fleet[0].sparkline.as_ref().expect("a sparkline");
    assert_eq!(spark.metric, "a_hum");
    // 30 or 31 two-minute slots in the last hour, oldest first, falling
    // from about 60 minutes ago to 0.
    assert!(
        (30..=32).contains(&spark.points.len()),
        "{}",
        spark.points.len()
    );
    assert!(spark
        .points
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 > w[1].1));
    assert!(spark.points[0].0 >= now - 62 * MINUTE);
    let newest = spark.points.last().expect("points").1;
    assert!(newest < 2.0, "{newest}");
}
