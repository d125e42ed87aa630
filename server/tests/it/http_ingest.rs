//! HTTP ingest with a real HTTP client against a real server and SQLite
//! file: both routes store what MQTT would, answer only after commit,
//! refuse bad payloads whole with their reasons, refuse wrong credentials,
//! hold a device to its publish rate, and count all of it.

use crate::common;

use std::collections::BTreeSet;

use base64::Engine;
use common::{stored_values, test_config, TestDb, TestServer};

/// A client with no API token: devices have none.
fn device_client() -> reqwest::Client {
    reqwest::Client::new()
}

fn basic(user: &str, secret: &str) -> String {
    let pair = format!("{user}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// POSTs `body` to the device route with Basic credentials; returns the
/// status, the `Retry-After` header and the JSON answer.
async fn post_readings(
    server: &TestServer,
    id: &str,
    user: &str,
    secret: &str,
    body: &str,
) -> (u16, Option<String>, serde_json::Value) {
    let response = device_client()
        .post(server.url(&format!("/api/devices/{id}/readings")))
        .header("authorization", basic(user, secret))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    answer(response).await
}

async fn post_thingsboard(
    server: &TestServer,
    token: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let response = device_client()
        .post(server.url(&format!("/api/v1/{token}/telemetry")))
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let (status, _, json) = answer(response).await;
    (status, json)
}

async fn answer(response: reqwest::Response) -> (u16, Option<String>, serde_json::Value) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, retry_after, json)
}

#[tokio::test]
async fn both_routes_store_before_they_answer() {
    let db = TestDb::sqlite();
    let server = TestServer::start(test_config(&db.url)).await;
    let secret = server.add_device("modem-1").await;

    // The device's own route, with a timestamp of its own and without.
    let (status, _, body) = post_readings(
        &server,
        "modem-1",
        "modem-1",
        &secret,
        r#"{"temp": 21.5, "rssi": -71, "ts": 1767225600000}"#,
    )
    .await;
    assert_eq!((status, &body), (200, &serde_json::json!({"stored": 2})));
    // 200 means committed: the reading is in the database now, not soon.
    assert_eq!(
        stored_values(&db.url, "modem-1", "temp").await,
        BTreeSet::from([21])
    );
    let (status, _, _) =
        post_readings(&server, "modem-1", "modem-1", &secret, r#"{"temp": 22}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        stored_values(&db.url, "modem-1", "temp").await,
        BTreeSet::from([21, 22])
    );

    // ThingsBoard's route: the secret is the access token, and its
    // timestamped array shape is taken as on MQTT.
    let (status, body) = post_thingsboard(
        &server,
        &secret,
        r#"[{"ts": 1767225601000, "values": {"temp": 23}}, {"ts": 1767225602000, "values": {"temp": 24, "rssi": -70}}]"#,
    )
    .await;
    assert_eq!((status, &body), (200, &serde_json::json!({"stored": 3})));
    assert_eq!(
        stored_values(&db.url, "modem-1", "temp").await,
        BTreeSet::from([21, 22, 23, 24])
    );

    // The device page shows them, as for any reading.
    let page: serde_json::Value = server.get_json("/api/devices/modem-1").await;
    let latest = page["summary"]["latest"].to_string();
    assert!(latest.contains("rssi"), "{latest}");

    // Sending a timestamped request again after a lost answer stores
    // nothing twice.
    let again = r#"{"temp": 21.5, "rssi": -71, "ts": 1767225600000}"#;
    let (status, _, _) = post_readings(&server, "modem-1", "modem-1", &secret, again).await;
    assert_eq!(status, 200);
    let temps = common::stored_values_with_repeats(&db.url, "modem-1", "temp").await;
    assert_eq!(temps.len(), 4, "stored once: {temps:?}");

    assert_eq!(server.metric("sightline_http_ingest_stored_total").await, 4);
    assert_eq!(
        server.metric("sightline_http_ingest_requests_total").await,
        4
    );
}

#[tokio::test]
async fn a_bad_payload_is_refused_whole_with_every_reason() {
    let db = TestDb::sqlite();
    let server = TestServer::start(test_config(&db.url)).await;
    let secret = server.add_device("modem-2").await;
    let rejected_before = server.metric("sightline_rejected_total").await;

    // One good field beside two bad ones: nothing is stored, and the
    // answer names both bad ones, so the client knows what to fix.
    let (status, _, body) = post_readings(
        &server,
        "modem-2",
        "modem-2",
        &secret,
        r#"{"temp": 21, "mode": "eco", "hum": null}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let reasons = body["reasons"].as_array().expect("reasons").clone();
    assert_eq!(reasons.len(), 2, "{body}");
    assert!(body.to_string().contains("mode") && body.to_string().contains("hum"));
    assert!(body["error"]
        .as_str()
        .unwrap_or("")
        .contains("nothing was stored"));
    assert_eq!(
        stored_values(&db.url, "modem-2", "temp").await,
        BTreeSet::new()
    );

    for (bad, why) in [
        ("not json", "malformed"),
        ("{}", "no readings"),
        (r#"{"temp": 1e999}"#, "out of range"),
        (r#"{"temp": 1, "ts": 12}"#, "ts"),
        ("\u{0}\u{1}<script>", "malformed"),
    ] {
        let (status, _, body) = post_readings(&server, "modem-2", "modem-2", &secret, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["reasons"].to_string().to_lowercase().contains(why),
            "{bad}: {body}"
        );
    }
    let (status, body) = post_thingsboard(&server, &secret, "[1, 2]").await;
    assert_eq!(status, 400, "{body}");

    // Over --max-payload-bytes: 413, also stored nothing.
    let big = format!(r#"{{"temp": 1, "pad": "{}"}}"#, "x".repeat(70_000));
    let (status, _, body) = post_readings(&server, "modem-2", "modem-2", &secret, &big).await;
    assert_eq!(status, 413, "{body}");

    assert!(server.metric("sightline_rejected_total").await >= rejected_before + 8);
    // The server still takes good readings from the same device.
    let (status, _, _) =
        post_readings(&server, "modem-2", "modem-2", &secret, r#"{"temp": 5}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        stored_values(&db.url, "modem-2", "temp").await,
        BTreeSet::from([5])
    );
    assert_eq!(
        stored_values(&db.url, "modem-2", "mode").await,
        BTreeSet::new()
    );
}

#[tokio::test]
async fn wrong_credentials_are_refused_and_shown_on_the_device_page() {
    let db = TestDb::sqlite();
    let server = TestServer::start(test_config(&db.url)).await;
    let secret = server.add_device("modem-3").await;
    let other = server.add_device("modem-4").await;
    let body = r#"{"temp": 1}"#;

    let url = server.url("/api/devices/modem-3/readings");
    let no_auth = device_client()
        .post(&url)
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(no_auth.status().as_u16(), 401);
    assert!(no_auth.headers().contains_key("www-authenticate"));

    let cases = [
        // Wrong secret for the device.
        ("modem-3", "modem-3", "wrong", 401),
        // Another device's valid credentials for this device's path.
        ("modem-3", "modem-4", other.as_str(), 401),
        // A device that does not exist.
        ("ghost", "ghost", "whatever", 401),
    ];
    for (path_id, user, secret, want) in cases {
        let (status, _, answer) = post_readings(&server, path_id, user, secret, body).await;
        assert_eq!(status, want, "{path_id} as {user}: {answer}");
    }
    let (status, _) = post_thingsboard(&server, "not-a-token", body).await;
    assert_eq!(status, 401);
    // An API token is not a device credential.
    let as_admin = server
        .client()
        .post(server.url("/api/devices/modem-3/readings"))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(as_admin.status().as_u16(), 401);

    // Disabled: 403, with its secret right.
    let disable = server
        .client()
        .put(server.url("/api/devices/modem-3/enabled"))
        .json(&false)
        .send()
        .await
        .expect("request");
    assert_eq!(disable.status().as_u16(), 204);
    let (status, _, _) = post_readings(&server, "modem-3", "modem-3", &secret, body).await;
    assert_eq!(status, 403);
    let (status, _) = post_thingsboard(&server, &secret, body).await;
    assert_eq!(status, 403);

    // Nothing was stored for either device, and the device's page says why
    // it was refused.
    assert_eq!(
        stored_values(&db.url, "modem-3", "temp").await,
        BTreeSet::new()
    );
    assert_eq!(
        stored_values(&db.url, "modem-4", "temp").await,
        BTreeSet::new()
    );
    let page: serde_json::Value = server.get_json("/api/devices/modem-3").await;
    assert_eq!(page["refused"]["why"], "disabled by an operator", "{page}");
    assert!(
        page["refused"]["count"].as_u64().unwrap_or(0) >= 3,
        "{page}"
    );
    assert_eq!(
        server
            .metric("sightline_http_ingest_unauthorized_total")
            .await,
        8
    );
    // A refusal on ThingsBoard's route is charged to the device, never to
    // the token in the path, which is its secret.
    for path in ["/metrics", "/api/stats", "/api/devices"] {
        let (_, text) = server.get(path).await.expect(path);
        assert!(!text.contains(&secret), "{path} shows the secret");
    }
}

#[tokio::test]
async fn a_device_above_its_rate_gets_429_with_retry_after() {
    let db = TestDb::sqlite();
    let mut config = test_config(&db.url);
    // A burst of 10 (the least burst), then 2 a second.
    config.max_publish_rate = 2.0;
    let server = TestServer::start(config).await;
    let secret = server.add_device("chatty").await;
    let quiet = server.add_device("quiet").await;

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..15 {
        let body = format!(r#"{{"n": {i}}}"#);
        let (status, retry, _) = post_readings(&server, "chatty", "chatty", &secret, &body).await;
        statuses.push(status);
        if status == 429 {
            retry_after = retry;
        }
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((10..=11).contains(&ok), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let wait: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // Refused requests stored nothing; the accepted ones are all there.
    assert_eq!(stored_values(&db.url, "chatty", "n").await.len(), ok);
    // The rate is the device's own: another device is not held back.
    let (status, _, _) = post_readings(&server, "quiet", "quiet", &quiet, r#"{"n": 1}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        server.metric("sightline_http_ingest_throttled_total").await,
        (15 - ok) as u64
    );
}

#[tokio::test]
async fn a_browser_on_another_site_cannot_post_readings() {
    let db = TestDb::sqlite();
    let server = TestServer::start(test_config(&db.url)).await;
    let secret = server.add_device("modem-5").await;
    // A page elsewhere making the browser send credentials it remembers.
    let response = device_client()
        .post(server.url("/api/devices/modem-5/readings"))
        .header("authorization", basic("modem-5", &secret))
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .body(r#"{"temp": 66}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        stored_values(&db.url, "modem-5", "temp").await,
        BTreeSet::new()
    );
}

/// Runs curl as a device's script would, returning the status and body.
async fn curl(args: &[&str]) -> (u16, String) {
    let output = tokio::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), body.to_owned())
}

#[tokio::test]
async fn curl_sends_readings_on_both_routes_as_the_readme_shows() {
    let db = TestDb::sqlite();
    let server = TestServer::start(test_config(&db.url)).await;
    let secret = server.add_device("curl-1").await;
    let readings = server.url("/api/devices/curl-1/readings");
    let thingsboard = server.url(&format!("/api/v1/{secret}/telemetry"));
    let user = format!("curl-1:{secret}");
    let json = "content-type: application/json";

    let (status, body) = curl(&[
        "-u",
        &user,
        "-H",
        json,
        "-d",
        r#"{"temp":21.5,"hum":40,"ts":1767225600000}"#,
        &readings,
    ])
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"stored":2}"#));
    let (status, body) = curl(&[
        "-d",
        r#"[{"ts":1767225601000,"values":{"temp":22.5}}]"#,
        &thingsboard,
    ])
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"stored":1}"#));
    assert_eq!(
        stored_values(&db.url, "curl-1", "temp").await,
        BTreeSet::from([21, 22])
    );

    // The bad cases: a bad field, a wrong secret, a wrong token, no
    // credentials.
    let (status, body) = curl(&["-u", &user, "-d", r#"{"temp":"warm"}"#, &readings]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#"field \"temp\" is not a number"#), "{body}");
    let (status, _) = curl(&["-u", "curl-1:wrong", "-d", r#"{"temp":1}"#, &readings]).await;
    assert_eq!(status, 401);
    let wrong_token = server.url("/api/v1/wrong-token/telemetry");
    let (status, _) = curl(&["-d", r#"{"temp":1}"#, &wrong_token]).await;
    assert_eq!(status, 401);
    let (status, _) = curl(&["-d", r#"{"temp":1}"#, &readings]).await;
    assert_eq!(status, 401);
    assert_eq!(
        stored_values(&db.url, "curl-1", "temp").await,
        BTreeSet::from([21, 22])
    );
}

#[tokio::test]
async fn no_answer_until_the_readings_are_committed() {
    let db = TestDb::sqlite();
    let server = TestServer::start(test_config(&db.url)).await;
    let secret = server.add_device("patient").await;

    // Another connection holds SQLite's write lock, as a long migration or
    // a stuck disk would: the writer cannot commit.
    use sea_orm::ConnectionTrait;
    let lock = sea_orm::Database::connect(&db.url).await.expect("open db");
    lock.execute_unprepared("BEGIN IMMEDIATE")
        .await
        .expect("write lock");
    let request = {
        let url = server.url("/api/devices/patient/readings");
        let auth = basic("patient", &secret);
        tokio::spawn(async move {
            device_client()
                .post(url)
                .header("authorization", auth)
                .body(r#"{"temp": 7}"#)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        !request.is_finished(),
        "answered while nothing could be committed"
    );
    lock.execute_unprepared("ROLLBACK").await.expect("unlock");
    drop(lock);
    assert_eq!(request.await.expect("request task"), 200);
    assert_eq!(
        stored_values(&db.url, "patient", "temp").await,
        BTreeSet::from([7])
    );
}
