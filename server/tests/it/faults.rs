//! Faults the server lives through without losing a reading it has
//! acknowledged: the disk filling up, PostgreSQL restarting, and the
//! database stalling. In each, QoS 1 publishes wait unacknowledged (the
//! device keeps them), QoS 0 readings beyond the writer's queue are
//! dropped and counted, memory stays bounded, and the server recovers by
//! itself.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::QoS;
use server::metrics::read_value;

use common::{test_config, wait_for, Counting, OwnPostgres, TestServer};

/// A tmpfs of `mib` MiB mounted on a fresh folder, unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(mib: u32) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sightline-small-disk-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {} (the disk-full test needs root)",
            dir.display()
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Fills the filesystem of `path` with one file, all but `leave` bytes.
fn fill(path: &Path, leave: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let len = file.metadata().expect("filler size").len();
    file.set_len(len.saturating_sub(leave)).expect("leave room");
    file.sync_all().expect("sync");
}

/// The status of `/api/health`. One client for the whole run: a new one
/// per call would grow this process (which holds the server, whose memory
/// is measured) by its own allocations.
async fn health(server: &TestServer) -> u16 {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(reqwest::Client::new);
    match client.get(server.url("/api/health")).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// Publishes 10 QoS 0 readings every millisecond on `sensor/Zero/n`: enough
/// that the database file must keep growing, and that the writer's queue
/// overflows within a second of the writer stopping.
fn qos0_stream(client: rumqttc::AsyncClient) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0u64.. {
            tick.tick().await;
            for k in 0..10 {
                let _ = client
                    .publish(
                        "sensor/Zero/n",
                        QoS::AtMostOnce,
                        false,
                        (i * 10 + k).to_string(),
                    )
                    .await;
            }
        }
    })
}

#[tokio::test]
async fn a_full_disk_holds_acknowledgements_back_and_loses_nothing() {
    let disk = SmallDisk::mount(32);
    // Only 2 MiB are left for the database, which it fills within seconds.
    // (Filling the disk under a running database is less telling: SQLite
    // then goes on committing into write-ahead-log space it already holds,
    // and those readings are rightly acknowledged.)
    fill(&disk.path("filler"), 2 << 20);
    let url = format!("sqlite://{}?mode=rwc", disk.path("db.sqlite").display());
    let mut config = test_config(&url);
    config.writer_queue = 5_000;
    let server = TestServer::start(config).await;
    let device = Counting::start(server.mqtt, "Full");
    let publisher = device.publish_steadily("sensor/Full/n", 5);
    let zero = server.device("Zero").await;
    let zero_publisher = qos0_stream(zero.client.clone());

    // The disk fills up. Commits fail, so their publishes wait
    // unacknowledged (the device's window of 100 in flight fills) while
    // health says so.
    let unacked = || {
        let acked = device.acked_count() as u64;
        device.sent.load(std::sync::atomic::Ordering::Relaxed) - acked
    };
    wait_for("health degraded with the window full", || async {
        health(&server).await == 503 && unacked() >= 90
    })
    .await;
    let at_full = device.acked_count();
    assert!(at_full > 0, "nothing was stored before the disk filled");
    // SQLite may go on committing into space its files already hold (the
    // log is reused once checkpointed); what it commits is stored, so it is
    // acknowledged. What matters is that nothing is acknowledged that is
    // not stored, checked below.

    // Space returns: ingest resumes without a restart.
    std::fs::remove_file(disk.path("filler")).expect("free the space");
    wait_for("health to recover", || async {
        health(&server).await == 200
    })
    .await;
    device.acknowledged_more(at_full, 2_000).await;
    publisher.abort();
    zero_publisher.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().await.expect("clean shutdown");

    device.nothing_acknowledged_is_lost(&url, "Full").await;
    use sea_orm::ConnectionTrait;
    let db = sea_orm::Database::connect(&url).await.expect("open");
    let check = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "PRAGMA integrity_check",
        ))
        .await
        .expect("integrity_check")
        .expect("a row");
    let verdict: String = check.try_get_by_index(0).expect("text");
    assert_eq!(verdict, "ok");
}

#[tokio::test]
async fn postgres_restarting_mid_ingest_loses_no_acknowledged_reading() {
    let Some(pg) = OwnPostgres::start() else {
        return;
    };
    let server = TestServer::start(test_config(&pg.url)).await;
    let device = Counting::start(server.mqtt, "Pg");
    let publisher = device.publish_steadily("sensor/Pg/n", 5);
    device.acknowledged_more(0, 2_000).await;

    let before = device.acked_count();
    let restart = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    });
    let pg = restart.await.expect("restart");
    // The writer reconnects by itself, and the dashboard answers again.
    device.acknowledged_more(before, 2_000).await;
    wait_for("the dashboard's data to answer", || async {
        server
            .get("/api/devices/Pg")
            .await
            .is_ok_and(|(s, _)| s == 200)
    })
    .await;
    assert_eq!(health(&server).await, 200);
    publisher.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().await.expect("clean shutdown");
    device.nothing_acknowledged_is_lost(&pg.url, "Pg").await;
}

#[tokio::test]
async fn a_stalled_database_bounds_memory_and_loses_nothing_acknowledged() {
    // The server runs as its own process here, so that its memory is its
    // own and not the test's.
    let scratch = common::Scratch::new();
    let url = scratch.sqlite_url();
    let (mut child, http, mqtt) = common::spawn_server(&url, &["--writer-queue", "20000"]).await;
    let pid = child.id().expect("server pid");
    let api = common::api_client(&url).await;
    let status = |path: &'static str| {
        let api = api.clone();
        async move {
            match api.get(format!("http://{http}{path}")).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        }
    };
    let device = Counting::start(mqtt, "Stall");
    let publisher = device.publish_steadily("sensor/Stall/n", 10);
    let zero = common::Device::connect(mqtt, "Zero").await;
    let zero_publisher = qos0_stream(zero.client.clone());
    device.acknowledged_more(0, 2_000).await;
    let before_kib = common::rss_of(pid);

    // Another connection holds SQLite's write lock for 30 s, as a long
    // migration or a stuck disk would.
    use sea_orm::ConnectionTrait;
    let lock = sea_orm::Database::connect(&url).await.expect("open db");
    lock.execute_unprepared("BEGIN IMMEDIATE")
        .await
        .expect("write lock");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stalled_at = device.acked_count();
    let mut peak_kib = before_kib;
    let mut at_10s_kib = 0;
    let mut degraded = false;
    for second in 2..=30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = common::rss_of(pid);
        peak_kib = peak_kib.max(now);
        if second == 10 {
            at_10s_kib = now;
        }
        degraded |= status("/api/health").await == 503;
    }
    // Once the writer's queue is full, memory stops growing: the last
    // twenty seconds of the stall add (next to) nothing.
    let late_mib = peak_kib.saturating_sub(at_10s_kib) / 1024;
    assert!(
        late_mib < 16,
        "memory kept growing during the stall: {late_mib} MiB in its last 20 s"
    );
    assert_eq!(
        device.acked_count(),
        stalled_at,
        "acknowledged while nothing could be committed"
    );
    assert!(degraded, "health never reported the stall");
    lock.execute_unprepared("ROLLBACK").await.expect("unlock");
    drop(lock);

    device.acknowledged_more(stalled_at, 2_000).await;
    wait_for("health to recover", || async {
        status("/api/health").await == 200
    })
    .await;
    let grown_mib = peak_kib.saturating_sub(before_kib) / 1024;
    assert!(
        grown_mib < 100,
        "memory grew by {grown_mib} MiB during a 30 s stall"
    );
    let metrics = common::metrics_at(&api, http).await;
    assert!(
        read_value(&metrics, "sightline_readings_dropped_total") > Some(0),
        "QoS 0 readings beyond the queue are dropped and counted"
    );
    publisher.abort();
    zero_publisher.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SIGTERM: the server stores what it holds and exits.
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let _ = child.wait().await;
    device.nothing_acknowledged_is_lost(&url, "Stall").await;
    println!(
        "30 s stall: server memory grew by {grown_mib} MiB at most, {late_mib} MiB of it in the last 20 s"
    );
}
