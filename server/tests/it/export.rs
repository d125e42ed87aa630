//! Export over real HTTP from a real SQLite file: every row, in order, in
//! CSV or NDJSON, filtered by metric and time range.

use crate::common;

use app::model::Reading;
use server::store::Store;

use common::{test_config, Scratch, TestServer};

const T0: i64 = 1_780_000_000_000;

/// Stores `n` readings of `metric` for device `Exp`, one a second from T0.
async fn seed(url: &str, metric: &str, n: i64) {
    let store = Store::open(url).await.expect("open");
    let mut writer = store.writer();
    let batch: Vec<Reading> = (0..n)
        .map(|i| Reading {
            device: "Exp".into(),
            metric: metric.into(),
            ts: T0 + i * 1000,
            value: i as f64,
        })
        .collect();
    writer.write(&batch).await.expect("write");
}

#[tokio::test]
async fn export_streams_every_row_in_order_in_both_formats() {
    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    // More than two pages of the exporter's 5,000-row reads.
    seed(&url, "temp", 12_345).await;
    seed(&url, "hum", 10).await;
    let server = TestServer::start(test_config(&url)).await;

    let response = server
        .client()
        .get(server.url("/api/devices/Exp/export"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(disposition, "attachment; filename=\"Exp.csv\"");
    let csv = response.text().await.expect("body");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "device,metric,ts,time,value");
    assert_eq!(lines.len(), 1 + 12_345 + 10);
    // Metrics in name order, each in time order.
    assert_eq!(lines[1], format!("Exp,hum,{T0},2026-05-28T20:26:40.000Z,0"));
    let temps: Vec<i64> = lines
        .iter()
        .filter(|l| l.starts_with("Exp,temp,"))
        .map(|l| l.split(',').nth(2).expect("ts").parse().expect("number"))
        .collect();
    assert_eq!(temps.len(), 12_345);
    assert!(temps.windows(2).all(|w| w[0] < w[1]), "in time order");

    let from = T0 + 100_000;
    let to = T0 + 5_099_000;
    let (status, ndjson) = server
        .get(&format!(
            "/api/devices/Exp/export?metric=temp&from={from}&to={to}&format=ndjson"
        ))
        .await
        .expect("request");
    assert_eq!(status, 200);
    let rows: Vec<Reading> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).expect("one reading per line"))
        .collect();
    assert_eq!(rows.len(), 5_000, "both ends of the range are included");
    assert_eq!((rows[0].ts, rows[4_999].ts), (from, to));
    assert!(rows.iter().all(|r| r.metric == "temp" && r.device == "Exp"));

    for (path, want) in [
        ("/api/devices/Nobody/export", 404),
        ("/api/devices/Exp/export?format=xml", 400),
        ("/api/devices/Exp/export?from=5&to=4", 400),
        ("/api/devices/Exp/export?from=yesterday", 400),
        ("/api/devices/Exp/export?metric=%3Cscript%3E", 400),
    ] {
        assert_eq!(server.get(path).await.expect("request").0, want, "{path}");
    }
    let (status, body) = server
        .get("/api/devices/Exp/export?metric=nothing")
        .await
        .expect("request");
    assert_eq!(
        (status, body.as_str()),
        (200, "device,metric,ts,time,value\n")
    );
    server.stop().await.expect("clean shutdown");
}

/// Reads a whole export of device `Exp` slowly, tracking the server's
/// peak RSS; returns (rows, peak KiB).
async fn slow_export(http: std::net::SocketAddr, url: &str, pid: u32) -> (u64, u64) {
    let mut peak = common::rss_of(pid);
    let mut response = common::api_client(url)
        .await
        .get(format!("http://{http}/api/devices/Exp/export"))
        .send()
        .await
        .expect("request");
    let (mut lines, mut chunks) = (0u64, 0u64);
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        chunks += 1;
        if chunks % 64 == 0 {
            peak = peak.max(common::rss_of(pid));
            // Read slowly enough that a server which buffered the body
            // instead of waiting for the client would show it.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    (lines.saturating_sub(1), peak)
}

/// The server's memory must not depend on the size of an export. Three
/// full exports of 1M rows (about 150 MB of CSV in all) are read slowly;
/// the server may only grow by SQLite's shared page cache, whose budget is
/// fixed by configuration (80 MiB; see `READER_CACHE_KIB` in `store`) and
/// fills over the first reads, plus a little for the allocator. A server
/// that held an export, or leaked per row, would grow by at least one
/// export's 50 MB per round.
#[tokio::test]
async fn a_million_row_export_runs_in_flat_server_memory() {
    let scratch = Scratch::new();
    let url = scratch.sqlite_url();
    seed(&url, "temp", 1_000_000).await;
    let (server, http, _) = common::spawn_server(&url, &[]).await;
    let pid = server.id().expect("pid");
    let start = common::rss_of(pid);
    let mut peaks = Vec::new();
    for round in 0..3 {
        let (rows, peak) = slow_export(http, &url, pid).await;
        assert_eq!(rows, 1_000_000, "every row, round {round}");
        peaks.push(peak);
    }
    let grew = peaks
        .iter()
        .max()
        .copied()
        .unwrap_or(start)
        .saturating_sub(start);
    println!(
        "3 x 1M-row exports: server RSS {start} KiB at start, peaks {peaks:?} KiB (+{grew} KiB)"
    );
    assert!(
        grew < 96 * 1024,
        "server RSS grew by {grew} KiB over three exports (peaks {peaks:?})"
    );
}
