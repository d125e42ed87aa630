//! Deleting a device through the API, on SQLite and on PostgreSQL: keeping
//! its readings (gone from the fleet and the broker, back when added
//! again) or with them, and the writer, which caches ids, storing the
//! next device of that name where it can be read.

use crate::common;

use std::collections::BTreeSet;

use common::{stored_values, test_config, wait_for, TestDb, TestServer};

async fn delete(server: &TestServer, id: &str, keep_data: bool) -> u16 {
    server
        .client()
        .delete(server.url(&format!("/api/devices/{id}?keep_data={keep_data}")))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

async fn status_of(server: &TestServer, path: &str) -> u16 {
    server.get(path).await.expect("request").0
}

/// Publishes `{"temp": value}` as device `id` from a new anonymous client
/// (open registration names it by its topic).
async fn publish(server: &TestServer, client: &str, id: &str, value: u64) {
    let device = server.device(client).await;
    device
        .publish(&format!("sensor/{id}"), format!("{{\"temp\":{value}}}"))
        .await;
    // The client goes once its publish had time to be acknowledged.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    device.disconnect().await;
}

async fn a_deleted_device_keeps_or_loses_its_readings_as_asked(db: TestDb) {
    let server = TestServer::start(test_config(&db.url)).await;
    let url = db.url.clone();
    let values = || {
        let url = url.clone();
        async move { stored_values(&url, "Gone", "temp").await }
    };
    publish(&server, "first", "Gone", 1).await;
    wait_for("the first reading", || async { values().await.len() == 1 }).await;

    // Deleted, readings kept: no page, not in the fleet, refused by the
    // broker, but still exportable.
    assert_eq!(delete(&server, "Gone", true).await, 204);
    assert_eq!(status_of(&server, "/api/devices/Gone").await, 404);
    let fleet = server.get("/api/devices").await.expect("fleet").1;
    assert!(!fleet.contains("\"Gone\""), "{fleet}");
    assert_eq!(values().await, BTreeSet::from([1]));
    let csv = server
        .get("/api/devices/Gone/export?format=csv&from=0")
        .await
        .expect("export");
    assert_eq!(csv.0, 200);
    assert!(csv.1.contains(",1\n"), "{}", csv.1);
    publish(&server, "second", "Gone", 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        values().await,
        BTreeSet::from([1]),
        "a deleted device is refused"
    );
    assert_eq!(delete(&server, "Gone", true).await, 404, "already deleted");

    // Added again, it has its history back.
    server.add_device("Gone").await;
    let page: serde_json::Value = server.get_json("/api/devices/Gone").await;
    assert_eq!(page["summary"]["latest"][0]["value"], 1.0);

    // Deleted with its readings: nothing of it is left.
    assert_eq!(delete(&server, "Gone", false).await, 204);
    assert_eq!(values().await, BTreeSet::new());
    assert_eq!(status_of(&server, "/api/devices/Gone").await, 404);

    // The name is free again, and the writer, which had the old ids
    // cached, stores the new device's reading where it can be read.
    publish(&server, "third", "Gone", 3).await;
    wait_for("the new device's reading", || async {
        values().await == BTreeSet::from([3])
    })
    .await;
}

#[tokio::test]
async fn deleting_a_device_on_sqlite() {
    a_deleted_device_keeps_or_loses_its_readings_as_asked(TestDb::sqlite()).await;
}

#[tokio::test]
async fn deleting_a_device_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        a_deleted_device_keeps_or_loses_its_readings_as_asked(db).await;
    }
}
