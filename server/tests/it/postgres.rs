//! PostgreSQL-specific promises: the batch writer's COPY path stores every
//! reading once with rollups that agree, and the driver sets TCP_NODELAY
//! (sqlx-core 0.9.0 did not, adding about 40 ms to every round trip).

use crate::common;

use std::time::{Duration, Instant};

use app::model::Reading;
use server::store::Store;

/// The version of `package` that Cargo.lock resolved.
fn locked_version(package: &str) -> Option<String> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .expect("read Cargo.lock");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"") {
            let version = lines.next()?.strip_prefix("version = \"")?;
            return Some(version.trim_end_matches('"').to_owned());
        }
    }
    None
}

#[test]
fn sqlx_is_not_the_release_without_tcp_nodelay() {
    // sqlx 0.9.0 stopped setting TCP_NODELAY on PostgreSQL sockets
    // (launchbadge/sqlx#4335); 0.9.1 sets it again. A `cargo update` that
    // went back would cost every statement the delayed-ACK timeout.
    for package in ["sqlx-core", "sqlx-postgres"] {
        let version = locked_version(package).unwrap_or_else(|| panic!("{package} not locked"));
        assert_ne!(version, "0.9.0", "{package} {version} lacks TCP_NODELAY");
    }
}

fn reading(device: &str, metric: &str, ts: i64, value: f64) -> Reading {
    Reading {
        device: device.into(),
        metric: metric.into(),
        ts,
        value,
    }
}

#[tokio::test]
async fn small_commits_take_no_nagle_delay() {
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let store = Store::open(&db.url).await.expect("open postgres");
    let mut writer = store.writer();
    // The first write registers the device and series; time the rest, which
    // are each BEGIN, COPY, two upserts and COMMIT on one connection.
    writer
        .write(&[reading("nagle", "temp", 0, 0.0)])
        .await
        .expect("first write");
    let mut took = Vec::new();
    for i in 1..=40 {
        let started = Instant::now();
        writer
            .write(&[reading("nagle", "temp", i, i as f64)])
            .await
            .expect("write");
        took.push(started.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    eprintln!("median single-reading commit: {median:?}");
    // Loopback round trips take well under a millisecond each; one stalled
    // by Nagle's algorithm against a delayed ACK takes about 40 ms.
    assert!(
        median < Duration::from_millis(20),
        "median single-reading commit took {median:?}"
    );
}

#[tokio::test]
async fn the_copy_path_stores_each_reading_once_with_matching_rollups() {
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let store = Store::open(&db.url).await.expect("open postgres");
    let mut writer = store.writer();
    // Two batches across devices, metrics and a minute boundary, with
    // values whose bits a text format could round (0.1, -0.0, extremes).
    let values = [0.1, -0.0, 1e300, -2.5e-300, 42.0];
    let first: Vec<Reading> = (0..5000)
        .map(|i| {
            let device = format!("copy-{}", i % 7);
            let metric = ["temp", "hum"][i % 2];
            reading(&device, metric, 59_000 + i as i64, values[i % values.len()])
        })
        .collect();
    writer.write(&first).await.expect("first batch");
    let second: Vec<Reading> = (0..3)
        .map(|i| reading("copy-0", "temp", 61_000 + i, 7.0))
        .collect();
    writer.write(&second).await.expect("second batch");
    assert_eq!(store.count_readings().await.expect("count"), 5003);

    let series = store
        .series_of("copy-1", Some("hum"))
        .await
        .expect("series")
        .expect("device copy-1");
    let points = store
        .raw_points(series[0].0, i64::MIN, i64::MAX, 10_000)
        .await
        .expect("raw points");
    let expected: Vec<(i64, f64)> = first
        .iter()
        .filter(|r| r.device == "copy-1" && r.metric == "hum")
        .map(|r| (r.ts, r.value))
        .collect();
    let got: Vec<(i64, f64)> = points.iter().map(|p| (p.0, p.1)).collect();
    assert_eq!(got.len(), expected.len());
    assert!(!got.is_empty());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.0, e.0);
        assert_eq!(g.1.to_bits(), e.1.to_bits(), "value at {} changed", g.0);
    }
}

#[tokio::test]
async fn deleting_a_device_still_deletes_its_readings() {
    // Readings carry no foreign key on PostgreSQL (migration 6 explains
    // why); a trigger keeps the cascade that the key used to give.
    use sea_orm::ConnectionTrait;
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let store = Store::open(&db.url).await.expect("open postgres");
    let mut writer = store.writer();
    let batch: Vec<Reading> = (0..100)
        .map(|i| reading(["gone", "kept"][i % 2], "temp", i as i64, 1.0))
        .collect();
    writer.write(&batch).await.expect("write");
    let sql = sea_orm::Database::connect(&db.url).await.expect("connect");
    sql.execute_unprepared("DELETE FROM device WHERE name = 'gone'")
        .await
        .expect("delete device");
    assert_eq!(store.count_readings().await.expect("count"), 50);
}

/// `sightline_background_leader` of `server`: 1 while it runs retention.
async fn leader(server: &common::TestServer) -> u64 {
    server.metric("sightline_background_leader").await
}

#[tokio::test]
async fn instances_sharing_a_database_take_turns_at_retention() {
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let mut config = common::test_config(&db.url);
    config.retain_raw = "30d".parse().expect("retention");
    let a = common::TestServer::start(config.clone()).await;
    let b = common::TestServer::start(config).await;
    common::wait_for("one instance to take the lock", || async {
        leader(&a).await + leader(&b).await == 1
    })
    .await;
    // Over several retry periods, still exactly one, and PostgreSQL
    // agrees: one session holds the lock.
    use sea_orm::ConnectionTrait;
    let sql = sea_orm::Database::connect(&db.url).await.expect("connect");
    for _ in 0..3 {
        tokio::time::sleep(server::store::leader::RETRY).await;
        assert_eq!(leader(&a).await + leader(&b).await, 1);
        let held = sql
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            ))
            .await
            .expect("pg_locks")
            .expect("a row");
        assert_eq!(held.try_get::<i64>("", "n").expect("n"), 1);
    }
    let (holder, other) = if leader(&a).await == 1 {
        (a, b)
    } else {
        (b, a)
    };
    holder.stop().await.expect("stop the holder");
    common::wait_for("the other instance to take over", || async {
        leader(&other).await == 1
    })
    .await;
}

#[tokio::test]
async fn instances_starting_together_on_a_new_database_all_start() {
    // Without the migration lock, two instances racing to create the same
    // tables failed with "duplicate key value violates unique constraint
    // pg_type_typname_nsp_index" (seen with scripts/cluster.sh).
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let opens = (0..4).map(|_| Store::open(&db.url));
    for opened in futures_util::future::join_all(opens).await {
        opened.expect("every instance opens and migrates");
    }
}
