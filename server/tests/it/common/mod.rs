//! Test support: starts the real server on free ports with a temporary
//! SQLite file, and talks to it with real MQTT, HTTP and WebSocket clients.

#![allow(dead_code)]

pub mod nats;
pub mod raw;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use app::model::ServerMsg;
use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};
use server::config::Config;
use server::{Listeners, ServeError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running server and what a test needs to reach it.
pub struct TestServer {
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    /// The MQTT-over-TLS listener, when the configuration has a certificate.
    pub mqtts: Option<SocketAddr>,
    /// The HTTPS listener, when the configuration has a certificate.
    pub https: Option<SocketAddr>,
    pub database_url: String,
    /// An admin's API token, made in the database before the server
    /// started.
    pub token: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

/// A temporary folder for a test's database, removed when dropped.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.path("test.db").display())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A database for one test: a fresh SQLite file, or a fresh database in
/// the PostgreSQL server that CI starts.
pub struct TestDb {
    pub url: String,
    /// Keeps the SQLite file's folder alive for the test's length.
    _scratch: Option<Scratch>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let scratch = Scratch::new();
        Self {
            url: scratch.sqlite_url(),
            _scratch: Some(scratch),
        }
    }

    /// A new, empty database of its own in the PostgreSQL server named by
    /// `SIGHTLINE_TEST_POSTGRES_URL`, so that tests never see each other's
    /// rows. Without that variable the test is skipped, with a note,
    /// unless `SIGHTLINE_REQUIRE_POSTGRES=1` (set by `scripts/test.sh`), in
    /// which case it fails: CI must never pass by skipping.
    pub async fn postgres() -> Option<Self> {
        let url = postgres_url()?;
        use sea_orm::ConnectionTrait;
        let admin = sea_orm::Database::connect(&url)
            .await
            .expect("connect to the test PostgreSQL");
        let name = format!("sl_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a database for the test");
        admin.close().await.expect("close");
        let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
        Some(Self {
            url: format!("{base}/{name}"),
            _scratch: None,
        })
    }
}

/// The shared test PostgreSQL's URL, or `None` (with a note) when the
/// test should be skipped; see [`TestDb::postgres`].
pub fn postgres_url() -> Option<String> {
    match std::env::var("SIGHTLINE_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("SIGHTLINE_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("SIGHTLINE_REQUIRE_POSTGRES=1 but SIGHTLINE_TEST_POSTGRES_URL is not set")
        }
        Err(_) => {
            eprintln!("skipped: SIGHTLINE_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A configuration on free loopback ports. Open registration is on, so
/// that tests about ingest and live push can connect devices by client id;
/// the device-edge tests turn it off.
pub fn test_config(database_url: &str) -> Config {
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Config {
        http_addr: any_port,
        https_addr: any_port,
        mqtt_addr: any_port,
        mqtts_addr: any_port,
        open_registration: true,
        database_url: database_url.into(),
        site_root: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/site"),
        ..Config::default()
    }
}

impl TestServer {
    /// Starts the server and waits until HTTP and MQTT both answer.
    pub async fn start(config: Config) -> Self {
        let listeners = Listeners::bind(&config).await.expect("bind");
        let http_addr = Listeners::addr(&listeners.http).expect("http addr");
        let mqtts = Listeners::addr(&listeners.mqtts);
        let https = Listeners::addr(&listeners.https);
        // With plain MQTT turned off, `mqtt` is the TLS listener.
        let mqtt = Listeners::addr(&listeners.mqtt)
            .or(mqtts)
            .expect("an MQTT listener");
        let (stop, stopped) = oneshot::channel::<()>();
        let database_url = config.database_url.expose().to_owned();
        let token = admin_token(&database_url).await;
        let task = tokio::spawn(server::run(config, listeners, async move {
            let _ = stopped.await;
        }));
        let server = Self {
            http: http_addr,
            mqtt,
            mqtts,
            https,
            database_url,
            token,
            stop: Some(stop),
            task: Some(task),
        };
        wait_for("the HTTP API", || async {
            server
                .get("/api/health")
                .await
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        })
        .await;
        server
    }

    /// Stops the server gracefully and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// An HTTP client that sends the admin's API token.
    pub fn client(&self) -> reqwest::Client {
        client_with(&self.token)
    }

    /// GETs a path as the admin and returns the status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), reqwest::Error> {
        let response = self.client().get(self.url(path)).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let (status, body) = self.get(path).await.expect("request");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Opens a live WebSocket with the given subscription message, and
    /// returns once the server has answered it (with the presence of the
    /// subscribed devices), so the subscription is in effect.
    pub async fn live(&self, subscription: &str) -> Ws {
        let (mut ws, _) = tokio_tungstenite::connect_async(socket_request(self.http, &self.token))
            .await
            .expect("websocket connects");
        ws.send(Message::Text(subscription.into()))
            .await
            .expect("subscribe");
        next_matching(&mut ws, |m| {
            matches!(m, ServerMsg::Presence { .. }).then_some(())
        })
        .await;
        ws
    }

    /// Creates a device through the API and returns its secret.
    pub async fn add_device(&self, id: &str) -> String {
        let response = self
            .client()
            .post(self.url("/api/devices"))
            .json(&serde_json::json!({ "id": id }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 201, "create {id}");
        let body: serde_json::Value = response.json().await.expect("json");
        body["secret"].as_str().expect("secret").to_owned()
    }

    /// The server's Prometheus text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.expect("metrics").1
    }

    /// The value of the plain (unlabelled) series `name` on `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics().await;
        server::metrics::read_value(&text, name)
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    }

    /// A connected MQTT device.
    pub async fn device(&self, client_id: &str) -> Device {
        Device::connect(self.mqtt, client_id).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A real MQTT client whose event loop runs in the background.
pub struct Device {
    pub client: AsyncClient,
    /// QoS 1 publishes the broker has acknowledged (PUBACKs received).
    pub acked: Arc<AtomicU64>,
    poller: JoinHandle<()>,
}

impl Device {
    pub async fn connect(broker: SocketAddr, client_id: &str) -> Self {
        let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
        options.set_keep_alive(Duration::from_secs(10));
        options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, events) = AsyncClient::new(options, 1000);
        let acked = Arc::new(AtomicU64::new(0));
        let poller = tokio::spawn(drive(events, acked.clone()));
        Self {
            client,
            acked,
            poller,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_qos(topic, QoS::AtLeastOnce, payload).await;
    }

    pub async fn publish_qos(&self, topic: &str, qos: QoS, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, false, payload)
            .await
            .expect("publish queued");
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.poller).await;
    }
}

async fn drive(mut events: EventLoop, acked: Arc<AtomicU64>) {
    loop {
        match events.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A QoS 1 device that remembers which of its values were acknowledged.
pub struct Counting {
    pub client: AsyncClient,
    pub acked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>,
    /// Publishes written to the socket so far.
    pub sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Counting {
    pub fn start(broker: SocketAddr, id: &str) -> Self {
        let mut o = MqttOptions::new(id, broker.ip().to_string(), broker.port());
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(o, 1000);
        let acked = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let seen = acked.clone();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let written = sent.clone();
        tokio::spawn(async move {
            // Values go out in order, so each outgoing packet id belongs to
            // the next value; a PUBACK then names the value it confirms.
            let mut next_value = 0u64;
            let mut in_flight = std::collections::HashMap::new();
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                        in_flight.insert(pkid, next_value);
                        next_value += 1;
                        written.store(next_value, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(ack))) => {
                        if let Some(v) = in_flight.remove(&ack.pkid) {
                            seen.lock().expect("lock").insert(v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Self {
            client,
            acked,
            sent,
        }
    }
}

/// Polls `check` until it holds, failing the test after 15 seconds.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads live messages until `pick` returns something, failing after 15 s.
pub async fn next_matching<T>(ws: &mut Ws, mut pick: impl FnMut(ServerMsg) -> Option<T>) -> T {
    let deadline = Duration::from_secs(15);
    tokio::time::timeout(deadline, async {
        loop {
            let msg = ws.next().await.expect("socket open").expect("frame");
            if let Message::Text(text) = msg {
                let parsed: ServerMsg = serde_json::from_str(&text).expect("server message");
                if let Some(found) = pick(parsed) {
                    return found;
                }
            }
        }
    })
    .await
    .expect("expected live message in time")
}

/// Whether the server closes `ws` within `limit`.
pub async fn closed_within(mut ws: Ws, limit: std::time::Duration) -> bool {
    use futures_util::StreamExt;
    tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return true,
                Some(Ok(m)) if m.is_close() => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// Creates the account `admin` (once) in the database at `db_url` and
/// returns a new API token of it.
pub async fn admin_token(db_url: &str) -> String {
    let store = server::store::Store::open(db_url)
        .await
        .expect("open store");
    let auth = server::auth::Auth::new(store.clone(), Arc::default(), 60);
    if store.account("admin").await.expect("account").is_none() {
        auth.add_account("admin", ADMIN_PASSWORD, app::model::Role::Admin)
            .await
            .expect("create admin");
    }
    let id = store
        .account("admin")
        .await
        .expect("account")
        .expect("admin exists")
        .id;
    auth.add_token(id, "tests").await.expect("token").token
}

/// The test admin's password.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// An HTTP client that sends `token` as a bearer token.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// The Prometheus text of the server (in-process or child) at `http`, read
/// with `api`, a client that may see it.
pub async fn metrics_at(api: &reqwest::Client, http: SocketAddr) -> String {
    api.get(format!("http://{http}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// An admin client for a server (in-process or child) on `db_url`.
pub async fn api_client(db_url: &str) -> reqwest::Client {
    client_with(&admin_token(db_url).await)
}

/// The live WebSocket's opening request, with a bearer token.
pub fn socket_request(
    http: SocketAddr,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{http}/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// Starts `sightline serve` as a child process and returns it with its
/// HTTP and MQTT addresses, read from its log. `extra` goes to `serve`.
pub async fn spawn_server(
    db_url: &str,
    extra: &[&str],
) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
        ])
        .args(["--database-url", db_url, "--open-registration"])
        .args(extra)
        .env("NO_COLOR", "1")
        .env("SIGHTLINE_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start sightline");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut http, mut mqtt) = (None, None);
    let addr_after = |line: &str, marker: &str| -> Option<SocketAddr> {
        let rest = &line[line.find(marker)? + marker.len()..];
        let addr: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        addr.parse().ok()
    };
    while http.is_none() || mqtt.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("server log in time")
            .expect("read log")
            .expect("server still running");
        http = http.or(addr_after(&line, "dashboard on http://"));
        mqtt = mqtt.or(addr_after(&line, "over MQTT on "));
    }
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, http.expect("http"), mqtt.expect("mqtt"))
}

/// The text inside the server-rendered element with `data-testid="id"`,
/// trimmed, with Leptos's hydration comments left out; `None` if the page
/// has no such element.
pub fn testid_text(page: &str, id: &str) -> Option<String> {
    let marker = format!("data-testid=\"{id}\"");
    let after = &page[page.find(&marker)? + marker.len()..];
    let mut rest = &after[after.find('>')? + 1..];
    let mut text = String::new();
    loop {
        if let Some(comment) = rest.strip_prefix("<!--") {
            rest = &comment[comment.find("-->")? + 3..];
        } else if let Some(marker) = rest.strip_prefix("<!>") {
            rest = marker;
        } else if rest.starts_with('<') || rest.is_empty() {
            return Some(text.trim().to_owned());
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            text.push_str(&rest[..end]);
            rest = &rest[end..];
        }
    }
}

impl Counting {
    /// Publishes the next values to `topic` at QoS 1, `per_ms` every
    /// millisecond, until the client is closed or the task aborted.
    pub fn publish_steadily(&self, topic: &str, per_ms: u64) -> JoinHandle<()> {
        let client = self.client.clone();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut i = 0u64;
            loop {
                tick.tick().await;
                for _ in 0..per_ms {
                    if client
                        .publish(&topic, QoS::AtLeastOnce, false, i.to_string())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    i += 1;
                }
            }
        })
    }

    /// How many values have been acknowledged.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    /// Waits until `more` values beyond `since` have been acknowledged.
    pub async fn acknowledged_more(&self, since: usize, more: usize) {
        wait_for("acknowledgements to flow", || async {
            self.acked_count() >= since + more
        })
        .await;
    }

    /// Checks that every acknowledged value of this device, named `name`
    /// and publishing to its metric `n`, is stored in the database at `url`.
    pub async fn nothing_acknowledged_is_lost(&self, url: &str, name: &str) {
        let acked = self.acked.lock().expect("lock").clone();
        let stored = stored_values(url, name, "n").await;
        let missing: Vec<&u64> = acked.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged readings missing: {:?}",
            missing.len(),
            acked.len(),
            missing.iter().take(10).collect::<Vec<_>>()
        );
        println!(
            "{name}: {} acknowledged, {} stored, none missing",
            acked.len(),
            stored.len()
        );
    }
}

/// The values stored for `device`'s `metric` in the database at `url`,
/// read straight from the store.
pub async fn stored_values(
    url: &str,
    device: &str,
    metric: &str,
) -> std::collections::BTreeSet<u64> {
    stored_values_with_repeats(url, device, metric)
        .await
        .into_iter()
        .collect()
}

/// Every value stored for `device`'s `metric`, a value stored twice
/// appearing twice, read straight from the store.
pub async fn stored_values_with_repeats(url: &str, device: &str, metric: &str) -> Vec<u64> {
    let store = server::store::Store::open(url).await.expect("open store");
    let Some(series) = store.series_of(device, Some(metric)).await.expect("series") else {
        return Vec::new();
    };
    let mut values = Vec::new();
    for (series_id, _) in series {
        let mut after = None;
        loop {
            let page = store
                .readings_page(series_id, i64::MIN, i64::MAX, after, 100_000)
                .await
                .expect("readings");
            let Some(&(ts, id, _)) = page.last() else {
                break;
            };
            values.extend(page.iter().map(|&(_, _, v)| v as u64));
            after = Some((ts, id));
        }
    }
    values
}

/// The resident memory of process `pid` in KiB. An unreadable figure
/// fails the test rather than pass any bound.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    assert!(kib > 0, "VmRSS of {pid} reads as zero");
    kib
}

/// A PostgreSQL server of a test's own, on a free loopback port, which the
/// test may restart or stop without disturbing the shared one. Stopped and
/// removed on drop.
pub struct OwnPostgres {
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
}

impl OwnPostgres {
    /// Starts one with Debian's PostgreSQL. Without it the test is skipped,
    /// unless `SIGHTLINE_REQUIRE_POSTGRES=1`, when it fails.
    pub fn start() -> Option<Self> {
        let required = std::env::var("SIGHTLINE_REQUIRE_POSTGRES").as_deref() == Ok("1");
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|dirs| {
                dirs.filter_map(Result::ok)
                    .map(|d| d.path().join("bin"))
                    .filter(|b| b.join("pg_ctl").exists())
                    .max()
            });
        let Some(bin) = bin else {
            assert!(
                !required,
                "SIGHTLINE_REQUIRE_POSTGRES=1 but no PostgreSQL is installed"
            );
            eprintln!("skipped: no PostgreSQL under /usr/lib/postgresql");
            return None;
        };
        let (port, data) = fresh_place();
        std::fs::create_dir_all(&data).expect("data dir");
        let own = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            data,
        };
        own.as_postgres(&format!("chown postgres {}", own.data.display()), false);
        own.as_postgres(
            &format!(
                "{}/initdb -D {} -A trust -U postgres",
                own.bin.display(),
                own.data.display()
            ),
            true,
        );
        let mut own = own;
        own.launch();
        Some(own)
    }

    /// Starts the server on the port in its URL. A port found free is free
    /// only until something else binds it, and the tests around open many
    /// connections, each on a port of that range: when the port was taken
    /// meanwhile, this tries another. Any other failure shows the log.
    fn launch(&mut self) {
        let data = self.data.display().to_string();
        for _ in 0..5 {
            let port = self.port();
            let start = format!(
                "{}/pg_ctl -D {data} -l {data}/log -w -o '-p {port} -k {data} -c listen_addresses=127.0.0.1' start",
                self.bin.display()
            );
            let started = std::process::Command::new("su")
                .args(["postgres", "-c", &start])
                .current_dir("/")
                .output()
                .is_ok_and(|o| o.status.success());
            if started {
                return;
            }
            let log = std::fs::read_to_string(self.data.join("log")).unwrap_or_default();
            assert!(
                log.contains("Address already in use"),
                "PostgreSQL did not start on port {port}; its log:\n{log}"
            );
            let (fresh, _) = fresh_place();
            self.url = format!("postgres://postgres@127.0.0.1:{fresh}/postgres");
        }
        panic!("PostgreSQL found no free port in five tries");
    }

    /// Restarts it the way an operator would, without waiting for clients
    /// to leave.
    pub fn restart(&self) {
        // With its log named, as at start: otherwise the new server
        // inherits the pipe this waits on, and the wait never ends.
        self.pg_ctl(&format!(
            "-l {}/log -m fast -w restart",
            self.data.display()
        ));
    }

    /// Kills the postmaster with SIGKILL, as a crash or the OOM killer
    /// would, and returns once its port refuses connections.
    pub fn crash(&self) {
        let pid_file = self.data.join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned))
            .expect("postmaster.pid");
        self.as_postgres(&format!("kill -9 {pid}"), false);
        while std::net::TcpStream::connect(("127.0.0.1", self.port())).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again after [`OwnPostgres::crash`]; it recovers from its
    /// write-ahead log. Retried while the killed server's backends are
    /// still leaving.
    pub fn start_again(&self) {
        let data = self.data.display();
        let start = format!(
            "{}/pg_ctl -D {data} -l {data}/log -w -o '-p {} -k {data} -c listen_addresses=127.0.0.1' start",
            self.bin.display(),
            self.port(),
        );
        for _ in 0..50 {
            let ok = std::process::Command::new("su")
                .args(["postgres", "-c", &start])
                .current_dir("/")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("PostgreSQL did not start again after the crash");
    }

    /// Starts a streaming standby of `primary` on a port of its own,
    /// named `name` in `primary`'s `pg_stat_replication`, from a base
    /// backup (initdb's `pg_hba.conf` already lets loopback replicate).
    pub fn standby_of(primary: &OwnPostgres, name: &str) -> Self {
        let (port, data) = fresh_place();
        let standby = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin: primary.bin.clone(),
            data,
        };
        let data = standby.data.display();
        standby.as_postgres(
            &format!("mkdir -m 700 {data} && chown postgres {data}"),
            false,
        );
        standby.as_postgres(
            &format!(
                "{}/pg_basebackup -h 127.0.0.1 -p {} -U postgres -D {data} -X stream -R -d application_name={name}",
                standby.bin.display(),
                primary.port(),
            ),
            true,
        );
        let mut standby = standby;
        standby.launch();
        standby
    }

    /// Runs one SQL statement as the superuser and returns what it printed
    /// (unaligned, tuples only).
    pub fn sql(&self, statement: &str) -> String {
        let out = std::process::Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", &self.url, "-c", statement])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) {
        self.pg_ctl("-w promote");
    }

    /// Kills the postmaster with SIGKILL and deletes its data folder: the
    /// machine and its disk are gone.
    pub fn lose_disk(&self) {
        self.crash();
        self.as_postgres(&format!("rm -rf {}", self.data.display()), false);
    }

    fn port(&self) -> u16 {
        let after_host = self.url.rsplit(':').next().unwrap_or_default();
        after_host
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the URL")
    }

    fn pg_ctl(&self, args: &str) {
        self.as_postgres(
            &format!(
                "{}/pg_ctl -D {} {args}",
                self.bin.display(),
                self.data.display()
            ),
            true,
        );
    }

    /// Runs `command` through `su postgres` (PostgreSQL refuses to run as
    /// root), or as root when `as_user` is false.
    fn as_postgres(&self, command: &str, as_user: bool) {
        let mut run = if as_user {
            let mut c = std::process::Command::new("su");
            c.args(["postgres", "-c", command]);
            c
        } else {
            let mut c = std::process::Command::new("sh");
            c.args(["-c", command]);
            c
        };
        let out = run
            .current_dir("/")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
        assert!(
            out.status.success(),
            "{command} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A free loopback port and a new folder name for a PostgreSQL of a
/// test's own.
fn fresh_place() -> (u16, PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let data = std::env::temp_dir().join(format!(
        "sightline-own-pg-{}",
        uuid::Uuid::new_v4().simple()
    ));
    (port, data)
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("su")
            .args([
                "postgres",
                "-c",
                &format!(
                    "{}/pg_ctl -D {} -m immediate -w stop",
                    self.bin.display(),
                    self.data.display()
                ),
            ])
            .current_dir("/")
            .output();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
