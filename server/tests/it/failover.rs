//! Cluster mode with real processes: an instance is killed with SIGKILL
//! under load. Its devices reconnect to the other instance (as haproxy
//! sends them), every reading that got a PUBACK is in PostgreSQL, a
//! command it was tracking is answered through the survivor, and a device
//! that does not come back shows offline everywhere within one lease.
//! PostgreSQL restarting and crashing loses nothing acknowledged, and with
//! a synchronous standby neither does losing the primary's disk.

use crate::common;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::model::{Command, CommandState};
use common::nats::NatsCluster;
use common::{
    admin_token, client_with, spawn_server, stored_values_with_repeats, test_config, wait_for,
    Counting, OwnPostgres, TestDb, TestServer,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, Request};

/// The lease the instances are started with.
const LEASE_SECS: u64 = 2;

/// One `sightline serve` child process in cluster mode.
struct Instance {
    child: tokio::process::Child,
    http: SocketAddr,
    mqtt: SocketAddr,
}

async fn instance(db_url: &str, nats: &NatsCluster) -> Instance {
    let urls = nats.urls.join(",");
    let lease = LEASE_SECS.to_string();
    let (child, http, mqtt) = spawn_server(
        db_url,
        &["--nats-url", &urls, "--presence-lease-secs", &lease],
    )
    .await;
    Instance { child, http, mqtt }
}

fn options(id: &str, at: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, at.ip().to_string(), at.port());
    o.set_keep_alive(Duration::from_secs(5));
    o
}

/// A QoS 1 device that publishes the values 0, 1, 2, … and, when its
/// connection fails, reconnects to the other instance (as haproxy would
/// send it), sending again what was not acknowledged. It records every
/// value that got a PUBACK.
struct Roaming {
    acked: Arc<Mutex<BTreeSet<u64>>>,
    publisher: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
}

impl Roaming {
    /// Ten devices publishing 500 readings/s each, half of them first on
    /// each instance.
    fn fleet(instances: [SocketAddr; 2]) -> Vec<(String, Self)> {
        (0..10)
            .map(|i| {
                let id = format!("roam-{i}");
                let device = Self::start(&id, instances, i % 2);
                (id, device)
            })
            .collect()
    }

    fn start(id: &str, instances: [SocketAddr; 2], first: usize) -> Self {
        let (client, mut events) = AsyncClient::new(options(id, instances[first]), 1000);
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = acked.clone();
        let topic = format!("sensor/{id}/n");
        let id = id.to_owned();
        let driver = tokio::spawn(async move {
            // Values go out in order, so a new packet id belongs to the
            // next value. A packet id still in flight that goes out again
            // is a retransmission after a reconnect, of the same value.
            let mut next_value = 0u64;
            let mut in_flight: HashMap<u16, u64> = HashMap::new();
            let mut carried: VecDeque<Request> = VecDeque::new();
            let mut at = first;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // rumqttc drops what was not acknowledged when the
                        // new session is not the old one; a device that
                        // must not lose readings sends them again, first.
                        carried.extend(events.pending.drain(..));
                        events.pending = std::mem::take(&mut carried);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        in_flight.entry(pkid).or_insert_with(|| {
                            next_value += 1;
                            next_value - 1
                        });
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(v) = in_flight.remove(&ack.pkid) {
                            seen.lock().expect("lock").insert(v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        carried.extend(events.pending.drain(..));
                        at = 1 - at;
                        events.mqtt_options = options(&id, instances[at]);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        let publisher = tokio::spawn(async move {
            let mut i = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            loop {
                tick.tick().await;
                // The device stamps its readings, as one that needs each
                // stored exactly once must: a redelivered message then
                // carries the very readings the store already holds.
                let ts = chrono::Utc::now().timestamp_millis();
                let body = format!(r#"{{"value":{i},"ts":{ts}}}"#);
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, body)
                    .await
                    .is_err()
                {
                    return;
                }
                i += 1;
            }
        });
        Self {
            acked,
            publisher,
            driver,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }
}

/// `device`'s connection as `http`'s API shows it: online, and why its
/// last connection ended.
async fn presence(api: &reqwest::Client, http: SocketAddr, device: &str) -> (bool, Option<String>) {
    let summary: serde_json::Value = api
        .get(format!("http://{http}/api/devices/{device}"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    (
        summary["summary"]["presence"]["online"]
            .as_bool()
            .unwrap_or(false),
        summary["summary"]["presence"]["reason"]
            .as_str()
            .map(str::to_owned),
    )
}

#[tokio::test]
async fn killing_an_instance_under_load_loses_nothing_acknowledged() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let mut a = instance(&db.url, &nats).await;
    let b = instance(&db.url, &nats).await;
    let api = client_with(&admin_token(&db.url).await);
    let both = [a.mqtt, b.mqtt];

    let devices = Roaming::fleet(both);
    // A device that tracks a command on A, and one that will not come
    // back when A dies.
    let (commanded, mut commands) = commanded_device(both).await;
    let silent = {
        let (client, mut events) = AsyncClient::new(options("silent", a.mqtt), 10);
        // One reading, so that its page exists.
        client
            .publish("sensor/silent/n", QoS::AtLeastOnce, false, "1")
            .await
            .expect("queued");
        tokio::spawn(async move {
            let _client = client;
            while events.poll().await.is_ok() {}
        })
    };
    wait_for("every device acknowledged on both instances", || async {
        devices.iter().all(|(_, d)| d.acked() >= 200)
    })
    .await;
    wait_for("the silent device online on B", || async {
        presence(&api, b.http, "silent").await.0
    })
    .await;

    // An operator on B sends a persistent two-way command; the device on
    // A receives it and has not answered when A dies.
    let response = api
        .post(format!("http://{}/api/devices/commanded/commands", b.http))
        .json(
            &serde_json::json!({"name": "ping", "persistent": true, "two_way": true,
            "timeout_ms": 60000, "ttl_ms": 60000}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 201);
    let command: Command = response.json().await.expect("a command");
    let received = tokio::time::timeout(Duration::from_secs(10), commands.recv())
        .await
        .expect("the command reached the device on A")
        .expect("device running");
    assert_eq!(received, command.id);

    let before: usize = devices.iter().map(|(_, d)| d.acked()).sum();
    a.child.start_kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = a.child.wait().await;

    // Every device goes on through B, and acknowledgements keep coming.
    wait_for("acknowledgements through B", || async {
        devices.iter().map(|(_, d)| d.acked()).sum::<usize>() > before + 5_000
    })
    .await;
    // The device that did not come back is offline on B within a lease
    // (plus B's quarter-second check and the polling here).
    wait_for("the silent device offline on B", || async {
        !presence(&api, b.http, "silent").await.0
    })
    .await;
    let offline_after = killed.elapsed();
    let (_, reason) = presence(&api, b.http, "silent").await;
    assert_eq!(reason.as_deref(), Some(server::presence::INSTANCE_LOST));
    assert!(
        offline_after < Duration::from_millis(LEASE_SECS * 1000 + 1_000),
        "offline after {offline_after:?}"
    );
    println!("the silent device showed offline on B {offline_after:?} after A died");
    // Those that came back are online on B.
    for (id, _) in &devices {
        assert!(presence(&api, b.http, id).await.0, "{id} online on B");
    }
    // The command follows its device to B and is answered there.
    let answered = {
        let path = format!("http://{}/api/commands/{}", b.http, command.id);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let c: Command = api
                .get(&path)
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("JSON");
            if c.state == CommandState::Answered || Instant::now() > deadline {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(answered.state, CommandState::Answered, "{answered:?}");
    assert_eq!(answered.response, Some(serde_json::json!({"pong": true})));

    let (acked, duplicates) = nothing_acknowledged_is_missing(&db.url, &devices).await;
    // Messages committed on A whose PUBACK died with it are sent again to
    // B, which must see that they are stored already.
    assert_eq!(duplicates, 0, "readings stored twice after the kill");
    let on_b = common::metrics_at(&api, b.http).await;
    let redelivered =
        server::metrics::read_value(&on_b, "sightline_readings_redelivered_total").unwrap_or(0);
    println!(
        "{acked} readings acknowledged, none missing, none stored twice; \
         B recognised {redelivered} redelivered readings"
    );
    commanded.abort();
    silent.abort();
}

/// Stops `devices`, lets their last acknowledgements arrive, and checks
/// that every acknowledged value is stored. Returns how many were
/// acknowledged and how many stored values are repeats.
async fn nothing_acknowledged_is_missing(
    url: &str,
    devices: &[(String, Roaming)],
) -> (usize, usize) {
    for (_, d) in devices {
        d.publisher.abort();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut acked_total, mut duplicates) = (0, 0);
    for (id, d) in devices {
        d.driver.abort();
        let acked = d.acked.lock().expect("lock").clone();
        let values = stored_values_with_repeats(url, id, "n").await;
        let distinct: BTreeSet<u64> = values.iter().copied().collect();
        let missing: Vec<&u64> = acked.difference(&distinct).take(10).collect();
        assert!(
            missing.is_empty(),
            "{id}: acknowledged but not stored: {missing:?} (of {})",
            acked.len()
        );
        acked_total += acked.len();
        duplicates += values.len() - distinct.len();
    }
    (acked_total, duplicates)
}

fn total_acked(devices: &[(String, Roaming)]) -> usize {
    devices.iter().map(|(_, d)| d.acked()).sum()
}

#[tokio::test]
async fn postgres_restarted_then_killed_loses_nothing_acknowledged_and_instances_recover() {
    let Some(pg) = OwnPostgres::start() else {
        return;
    };
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let a = instance(&pg.url, &nats).await;
    let b = instance(&pg.url, &nats).await;
    let devices = Roaming::fleet([a.mqtt, b.mqtt]);
    wait_for("every device acknowledged", || async {
        devices.iter().all(|(_, d)| d.acked() >= 200)
    })
    .await;

    // A restart, as an operator does it.
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .expect("restart");
    let before = total_acked(&devices);
    wait_for("acknowledgements after the restart", || async {
        total_acked(&devices) > before + 2_000
    })
    .await;

    // A crash: no PUBACK while it is down.
    let pg = tokio::task::spawn_blocking(move || {
        pg.crash();
        pg
    })
    .await
    .expect("crash");
    // Commits that were under way when it died may still answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let down = total_acked(&devices);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        total_acked(&devices),
        down,
        "a PUBACK while PostgreSQL was down"
    );

    // Both instances reconnect by themselves once it is back.
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .expect("start again");
    let at_down: Vec<usize> = devices.iter().map(|(_, d)| d.acked()).collect();
    wait_for("every device acknowledged again", || async {
        devices
            .iter()
            .zip(&at_down)
            .all(|((_, d), &then)| d.acked() > then + 200)
    })
    .await;
    let api = client_with(&admin_token(&pg.url).await);
    for (name, at) in [("A", a.http), ("B", b.http)] {
        let stored: u64 = {
            let text = api
                .get(format!("http://{at}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            server::metrics::read_value(&text, "sightline_readings_stored_total").unwrap_or(0)
        };
        assert!(stored > 0, "instance {name} stores again");
        let health = api
            .get(format!("http://{at}/api/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status().as_u16(), 200, "instance {name} healthy");
    }
    let (acked, duplicates) = nothing_acknowledged_is_missing(&pg.url, &devices).await;
    println!("{acked} readings acknowledged across a restart and a crash, none missing; {duplicates} stored twice");
    drop((a, b));
}

/// A device that subscribes to its commands, reports each command id it
/// receives, and answers only after its connection has moved to the other
/// instance: it was busy when the first instance died.
async fn commanded_device(
    instances: [SocketAddr; 2],
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (client, mut events) = AsyncClient::new(options("commanded", instances[0]), 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut unanswered: Vec<String> = Vec::new();
        let mut moved = false;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client
                        .subscribe("command/commanded", QoS::AtLeastOnce)
                        .await;
                    // A reading, so that open registration keeps the device.
                    let _ = client
                        .publish("sensor/commanded/n", QoS::AtLeastOnce, false, "1")
                        .await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(());
                    }
                    // Subscribed on the new instance, which has taken up
                    // the command from the database: answer it now.
                    if moved {
                        for id in unanswered.drain(..) {
                            let answer = serde_json::json!({"id": id, "result": {"pong": true}});
                            let _ = client
                                .publish(
                                    "command/commanded/response",
                                    QoS::AtLeastOnce,
                                    false,
                                    answer.to_string(),
                                )
                                .await;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let request: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    if let Some(id) = request["id"].as_str() {
                        if !moved {
                            unanswered.push(id.to_owned());
                        }
                        let _ = tx.send(id.to_owned());
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    moved = true;
                    events.mqtt_options = options("commanded", instances[1]);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("subscribed in time")
        .expect("subscribed");
    (task, rx)
}

#[tokio::test]
async fn a_synchronous_standby_holds_every_acknowledged_reading_when_the_primary_disk_is_lost() {
    let Some(primary) = OwnPostgres::start() else {
        return;
    };
    // README's recipe: a streaming standby, and commits that wait for it.
    let standby = OwnPostgres::standby_of(&primary, "standby1");
    primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'standby1'");
    primary.sql("SELECT pg_reload_conf()");
    wait_for("the standby to be synchronous", || async {
        primary.sql("SELECT sync_state FROM pg_stat_replication") == "sync"
    })
    .await;

    let server = TestServer::start(test_config(&primary.url)).await;
    let device = Counting::start(server.mqtt, "Sync");
    let publisher = device.publish_steadily("sensor/Sync/n", 2);
    device.acknowledged_more(0, 2_000).await;

    // The standby stops taking WAL (its receiver frozen, as a slow or cut
    // link would). Commits wait for it, so PUBACKs stop: with an
    // asynchronous standby they would go on, for readings only the
    // primary's disk holds.
    let receiver = standby.sql("SELECT pid FROM pg_stat_wal_receiver");
    signal(&receiver, "STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen_at = device.acked_count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = device.acked_count() - frozen_at;
    assert_eq!(during, 0, "{during} PUBACKs while the standby held nothing");

    // The primary's machine dies with its disk, mid-stream.
    primary.lose_disk();
    publisher.abort();
    drop(server);
    signal(&receiver, "CONT");

    // Every reading that got a PUBACK is on the standby once promoted.
    standby.promote();
    device
        .nothing_acknowledged_is_lost(&standby.url, "Sync")
        .await;
}

/// Sends `signal` (STOP, CONT) to process `pid`.
fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}
