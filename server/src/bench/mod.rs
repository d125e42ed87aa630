//! `sightline bench`: the performance benchmark. It starts the real server
//! as a child process on a fresh SQLite file, drives it with the
//! simulator's real MQTT clients and real WebSocket viewers, and prints
//! what the issue-3 targets ask for: readings persisted per second
//! (counted in the database), the publish-to-WebSocket latency histogram,
//! the server's peak RSS, and what was dropped, rejected or refused.
//!
//! The server runs in its own process so that its RSS is its own, not the
//! load generator's, and so that it is exactly the binary users run.
//!
//! The issue-5 scenario, chart query times over a year of data, is in
//! [`history`].

pub mod commands;
pub mod feed;
pub mod history;
pub mod http_ingest;
mod probe;
mod proxy;
mod report;
pub mod soak;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use app::model::{Counters, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use rumqttc::QoS;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::simulate::{self, SimOptions, READINGS_PER_MESSAGE, STAMP_METRIC};
use crate::store::Store;
use probe::*;
pub use report::BenchReport;

/// The rows of the issue-3 table, each a preset of the options below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Readings persisted per second: 1,000 devices offering 180,000
    /// readings/s for 60 s (the target is 150,000 stored).
    Throughput,
    /// Publish-to-WebSocket latency at 10,000 readings/s, one viewer
    /// subscribed to all devices.
    Latency,
    /// 10,000 connections held while 1,000 of them publish 10,000
    /// readings/s; peak RSS.
    Connections,
    /// 1,000 WebSocket viewers, each watching 10 devices, at 10,000
    /// readings/s.
    Viewers,
    /// Series API times for 1 h, 24 h, 30 d and 1 y windows over a year of
    /// 1-minute readings (see [`history`]).
    History,
    /// Time from the API's POST to "answered" on the device page for pings
    /// to one simulated device beside a publishing fleet (see [`commands`]).
    Commands,
    /// 30 minutes of 5,000 connections, 500 connects and disconnects a
    /// second, 20,000 readings/s and 200 reconnecting viewers; RSS,
    /// descriptors and tasks each minute, and their slopes (see [`soak`]).
    Soak,
    /// Readings committed per second from 100 devices posting over HTTP
    /// keep-alive connections, each answered only after commit (see
    /// [`http_ingest`]).
    HttpIngest,
    /// The QoS 1 throughput run without and with a service account
    /// subscribed to `sensor/#`, in turns (see [`feed`]).
    Feed,
}

/// A fully resolved benchmark run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub scenario: Scenario,
    pub qos: QoS,
    /// Devices that publish.
    pub devices: usize,
    /// Messages per second per publishing device; each carries
    /// [`READINGS_PER_MESSAGE`] readings.
    pub rate: f64,
    pub seconds: u64,
    /// Connections that stay idle beside the publishing devices.
    pub idle: usize,
    /// WebSocket viewers; zero means none.
    pub viewers: usize,
    /// Devices each viewer watches; zero means all of them.
    pub watch: usize,
    /// The `sightline` binary to start as the server.
    pub server_bin: PathBuf,
    /// Extra flags passed to `sightline serve`.
    pub serve_args: Vec<String>,
    /// Keep the database and the server's log instead of deleting them.
    pub keep: bool,
    /// A PostgreSQL server to store on, in a fresh database made for the
    /// run; SQLite in the run's folder when `None`.
    pub postgres: Option<String>,
    /// Instances to run in cluster mode (one runs alone).
    pub instances: usize,
    /// The NATS servers of a cluster run.
    pub nats: Vec<String>,
    /// An nginx configuration template (`deploy/nginx.conf`): viewers then
    /// reach the instances through nginx, as browsers of a cluster do.
    pub nginx: Option<PathBuf>,
    /// Subscribe a service account to `sensor/#` at QoS 1 before the fleet
    /// starts, and count what it receives.
    pub feed_subscriber: bool,
}

impl BenchOptions {
    /// The preset for a scenario; callers override single fields after.
    pub fn preset(scenario: Scenario, server_bin: PathBuf) -> Self {
        let base = Self {
            scenario,
            qos: QoS::AtMostOnce,
            devices: 1000,
            // 1,000 devices x 10/3 messages/s x 3 readings = 10,000 readings/s.
            rate: 10.0 / 3.0,
            seconds: 30,
            idle: 0,
            viewers: 0,
            watch: 0,
            server_bin,
            serve_args: Vec::new(),
            keep: false,
            postgres: None,
            instances: 1,
            nats: Vec::new(),
            nginx: None,
            feed_subscriber: false,
        };
        match scenario {
            // 1,000 x 60 x 3 = 180,000 readings/s offered: more than the
            // target, so that the figure shows what the server stores, not
            // what the load generator manages to send on the shared cores.
            Scenario::Throughput => Self {
                rate: 60.0,
                seconds: 60,
                ..base
            },
            Scenario::Latency => Self { viewers: 1, ..base },
            Scenario::Connections => Self { idle: 9000, ..base },
            Scenario::Viewers => Self {
                viewers: 1000,
                watch: 10,
                ..base
            },
            // Only `keep` and `serve_args` apply.
            Scenario::History => base,
            // The default fleet (10,000 readings/s) publishes beside the
            // device that answers.
            Scenario::Commands => base,
            // 1,000 x 20/3 messages/s x 3 readings = 20,000 readings/s,
            // beside 4,000 idle connections: 5,000 in all.
            Scenario::Soak => Self {
                rate: 20.0 / 3.0,
                idle: 4000,
                viewers: 200,
                watch: 10,
                seconds: 30 * 60,
                ..base
            },
            Scenario::HttpIngest => Self {
                devices: 100,
                ..base
            },
            // The throughput run at QoS 1, shortened, since it runs six
            // times.
            Scenario::Feed => Self {
                qos: QoS::AtLeastOnce,
                rate: 60.0,
                seconds: 30,
                ..base
            },
        }
    }

    pub(crate) fn offered_per_sec(&self) -> f64 {
        self.devices as f64 * self.rate * READINGS_PER_MESSAGE as f64
    }
}

/// Runs the scenario `opts` selects and returns its report as text.
pub async fn report(opts: &BenchOptions) -> anyhow::Result<String> {
    if opts.postgres.is_some()
        && matches!(
            opts.scenario,
            Scenario::History
                | Scenario::Commands
                | Scenario::Soak
                | Scenario::HttpIngest
                | Scenario::Feed
        )
    {
        bail!("--postgres applies to the throughput, latency, connections and viewers scenarios");
    }
    if opts.instances > 1 && (opts.postgres.is_none() || opts.nats.is_empty()) {
        bail!("--instances above 1 runs a cluster: it needs --postgres and --nats-url");
    }
    if opts.instances > 1
        && matches!(
            opts.scenario,
            Scenario::History
                | Scenario::Commands
                | Scenario::Soak
                | Scenario::HttpIngest
                | Scenario::Feed
        )
    {
        bail!("--instances applies to the throughput, latency, connections and viewers scenarios");
    }
    Ok(match opts.scenario {
        Scenario::History => history::run(opts).await?,
        Scenario::Commands => commands::run(opts).await?,
        Scenario::Soak => soak::run(opts).await?,
        Scenario::HttpIngest => http_ingest::run(opts).await?,
        Scenario::Feed => feed::run(opts).await?,
        _ => run(opts).await?.render(opts),
    })
}

/// Runs one benchmark and returns its report.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let dir = scratch_dir()?;
    let mut result = run_in(opts, &dir).await;
    if let (Some(kept), Ok(report)) = (finish(dir, opts.keep), &mut result) {
        report.kept = Some(kept);
    }
    result
}

/// A new folder for one run's database and server log.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("sightline-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Runs a scenario that reports as text in a fresh scratch folder, which
/// is removed afterwards unless `keep`; a kept folder is named at the end
/// of the report.
pub(crate) async fn in_scratch<F, Fut>(keep: bool, scenario: F) -> anyhow::Result<String>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let dir = scratch_dir()?;
    let result = scenario(dir.clone()).await;
    match (finish(dir, keep), result) {
        (Some(kept), Ok(report)) => Ok(format!("{report}kept               {}\n", kept.display())),
        (_, result) => result,
    }
}

/// Removes a run's folder, or with `--keep` leaves it and says where.
fn finish(dir: PathBuf, keep: bool) -> Option<PathBuf> {
    if keep {
        Some(dir)
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        None
    }
}

async fn run_in(opts: &BenchOptions, dir: &Path) -> anyhow::Result<BenchReport> {
    let scratch = match &opts.postgres {
        Some(server) => Some(
            crate::store::scratch::create(server)
                .await
                .context("cannot make a database for the run")?,
        ),
        None => None,
    };
    let db_url = match &scratch {
        Some(s) => s.url.clone(),
        None => format!("sqlite://{}?mode=rwc", dir.join("bench.db").display()),
    };
    let result = measure(opts, dir, &db_url).await;
    if let Some(scratch) = scratch {
        if opts.keep {
            eprintln!("kept database {}", crate::store::redact_url(&scratch.url));
        } else if let Err(e) = scratch.drop_database().await {
            eprintln!("cannot drop the run's database: {e}");
        }
    }
    result
}

async fn measure(opts: &BenchOptions, dir: &Path, db_url: &str) -> anyhow::Result<BenchReport> {
    let db_url = db_url.to_owned();
    // One server, or the instances of a cluster, each with its own ports
    // and log; the first one's API serves the bench's own requests.
    let mut servers = Vec::new();
    for i in 0..opts.instances.max(1) {
        let http = free_addr()?;
        let mqtt = free_addr()?;
        let (log_dir, extra) = if opts.instances > 1 {
            let sub = dir.join(format!("instance-{i}"));
            std::fs::create_dir_all(&sub)?;
            (sub, vec!["--nats-url".to_owned(), opts.nats.join(",")])
        } else {
            (dir.to_owned(), Vec::new())
        };
        let child = start_server(opts, &log_dir, http, mqtt, &db_url, &extra).await?;
        servers.push((child, http, mqtt));
    }
    let https: Vec<SocketAddr> = servers.iter().map(|s| s.1).collect();
    let mqtts: Vec<SocketAddr> = servers.iter().map(|s| s.2).collect();
    let (http, mqtt) = (https[0], mqtts[0]);
    let pids: Vec<u32> = servers.iter().filter_map(|s| s.0.id()).collect();
    let nginx = match &opts.nginx {
        Some(template) => Some(proxy::start(template, dir, &https).await?),
        None => None,
    };
    let api = Api::for_db(&db_url).await?;
    let client = api.client.clone();
    let stop = CancellationToken::new();

    // Idle connections first, so the publishing fleet runs beside them.
    let idle = (opts.idle > 0).then(|| {
        tokio::spawn(simulate::hold_idle(
            mqtt,
            "idle-",
            opts.idle,
            stop.child_token(),
        ))
    });
    if opts.idle > 0 {
        wait_connections(&client, http, opts.idle as u64).await;
    }

    let epoch = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::<u64>::new()));
    let lag = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let connected = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut viewers = Vec::new();
    for i in 0..opts.viewers {
        let subscription = if opts.watch == 0 {
            r#"{"type":"subscribe_all"}"#.to_owned()
        } else {
            let devices: Vec<String> = (0..opts.watch)
                .map(|k| format!("b-{:04}", (i * opts.watch + k) % opts.devices + 1))
                .collect();
            serde_json::json!({"type": "subscribe", "devices": devices}).to_string()
        };
        // In a cluster each viewer watches from the instance after the
        // first of its devices', and counts only readings that crossed
        // from another instance.
        let at = (i * opts.watch.max(1) + 1) % https.len();
        let cross = (https.len() > 1).then_some((https.len(), at));
        // Through nginx, a viewer's instance is nginx's choice, so every
        // reading counts, from whichever instance it came.
        let seat = match &nginx {
            Some(n) => Seat {
                http: n.addr,
                subscription,
                cross: None,
            },
            None => Seat {
                http: https[at],
                subscription,
                cross,
            },
        };
        viewers.push(tokio::spawn(viewer(
            seat,
            api.clone(),
            epoch,
            samples.clone(),
            lag.clone(),
            connected.clone(),
            stop.child_token(),
        )));
    }

    let feed = if opts.feed_subscriber {
        Some(feed::subscribe(&db_url, mqtt).await?)
    } else {
        None
    };

    // The server's counters, sampled every `SAMPLE_EVERY` while the fleet
    // publishes.
    let sampler_stop = CancellationToken::new();
    let sampler = tokio::spawn(sample(client.clone(), https.clone(), sampler_stop.clone()));

    let sim = simulate::run(
        SimOptions {
            broker: mqtt,
            spread: if mqtts.len() > 1 {
                mqtts.clone()
            } else {
                Vec::new()
            },
            devices: opts.devices,
            rate: opts.rate,
            prefix: "b-".into(),
            qos: opts.qos,
            duration: Some(Duration::from_secs(opts.seconds)),
            backfill: None,
            stamp: Some(epoch),
            answer_commands: false,
        },
        CancellationToken::new(),
    )
    .await;

    // The sampler ran until here, so the moment of the last commit is known
    // to within one sample even when QoS 1 devices spent a while collecting
    // their last acknowledgements; from here `settle` polls until the
    // writer has committed everything.
    sampler_stop.cancel();
    let mut sampled = sampler.await.unwrap_or_default();
    let final_stored = settle(&client, &https, &mut sampled.stored).await;
    let last_commit = last_commit(&sampled.stored, final_stored).unwrap_or_else(Instant::now);
    let started = sim.started.unwrap_or(epoch);
    let per_second = steady_rates(&sampled.stored, started, started + sim.elapsed);
    let mut counters: Counters = get_json(&client, http, "/api/stats").await?;
    for &other in &https[1..] {
        let c: Counters = get_json(&client, other, "/api/stats").await?;
        crate::metrics::add_counters(&mut counters, &c);
    }
    // A subscriber that keeps up has every committed reading soon after
    // the last commit; it gets ten seconds to show it.
    let feed_received = match feed {
        Some((received, task)) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            let read = || received.load(std::sync::atomic::Ordering::Relaxed);
            while read() < final_stored && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            task.abort();
            Some(read())
        }
        None => None,
    };
    let server_connections = sampled.most_connections;
    let server_push = push_quantiles(&client, http).await;
    stop.cancel();
    let idle_held = match idle {
        Some(task) => task.await.unwrap_or(0),
        None => 0,
    };
    for v in viewers {
        let _ = v.await;
    }
    let lag_notices = lag.load(std::sync::atomic::Ordering::Relaxed);
    let viewers_connected = connected.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(nginx) = nginx {
        nginx.stop().await;
    }
    let peak_rss_bytes = pids.iter().filter_map(|&pid| peak_rss(pid)).sum();
    for (server, _, _) in &mut servers {
        stop_server(server).await?;
    }

    let store = Store::open(&db_url)
        .await
        .context("cannot reopen the database")?;
    let persisted = store
        .count_readings()
        .await
        .context("cannot count readings")?;
    let mut latencies_us =
        std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    latencies_us.sort_unstable();
    Ok(BenchReport {
        sent_readings: sim.readings,
        acked_messages: sim.acked,
        send_seconds: sim.elapsed.as_secs_f64(),
        persisted,
        persist_seconds: last_commit.duration_since(started).as_secs_f64(),
        per_second,
        counters,
        latencies_us,
        lag_notices,
        viewers_connected,
        peak_rss_bytes,
        idle_held,
        server_connections,
        server_push,
        feed_received,
        kept: None,
    })
}

/// An admin API token for the benchmark's own server, made in its
/// database, with an HTTP client and WebSocket requests that carry it.
#[derive(Clone, Debug)]
pub(crate) struct Api {
    pub client: reqwest::Client,
    token: String,
}

impl Api {
    pub async fn for_db(db_url: &str) -> anyhow::Result<Self> {
        let store = crate::store::Store::open(db_url).await?;
        let auth = crate::auth::Auth::new(store.clone(), Arc::default(), 60);
        let name = "bench";
        if store.account(name).await?.is_none() {
            let password: String = {
                use rand::distr::{Alphanumeric, SampleString};
                Alphanumeric.sample_string(&mut rand::rng(), 24)
            };
            auth.add_account(name, &password, app::model::Role::Admin)
                .await?;
        }
        let account = store
            .account(name)
            .await?
            .context("the bench account vanished")?;
        let token = auth.add_token(account.id, "bench").await?.token;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .build()?;
        Ok(Self { client, token })
    }

    /// The live WebSocket's opening request, with the token.
    pub fn socket(
        &self,
        http: SocketAddr,
    ) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{http}/ws").into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        Ok(request)
    }
}

pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?)
}

pub(crate) async fn start_server(
    opts: &BenchOptions,
    dir: &Path,
    http: SocketAddr,
    mqtt: SocketAddr,
    db_url: &str,
    extra: &[String],
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut server = Command::new(&opts.server_bin)
        .arg("serve")
        .args(["--http-addr", &http.to_string()])
        .args(["--mqtt-addr", &mqtt.to_string()])
        .args(["--database-url", db_url])
        .args(["--site-root", &dir.to_string_lossy()])
        // The simulated devices have no secrets.
        .arg("--open-registration")
        // Every viewer signs in with the one bench account, which stands
        // for many people here.
        .args([
            "--max-live-sockets-per-account",
            &(opts.viewers + 16).to_string(),
        ])
        .args(extra)
        .args(&opts.serve_args)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", opts.server_bin.display()))?;
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("http://{http}/api/health")).send().await {
            if r.status().is_success() {
                return Ok(server);
            }
        }
        if let Ok(Some(status)) = server.try_wait() {
            bail!("the server exited with {status}; see its log");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server did not answer on {http} within 10 s")
}

/// Asks the server to shut down gracefully (it stores everything it has
/// received first) and waits for it.
pub(crate) async fn stop_server(server: &mut Child) -> anyhow::Result<()> {
    if let Some(pid) = server.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    match tokio::time::timeout(Duration::from_secs(60), server.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => bail!("the server exited with {status}"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => bail!("the server did not stop within 60 s"),
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    http: SocketAddr,
    path: &str,
) -> anyhow::Result<T> {
    Ok(client
        .get(format!("http://{http}{path}"))
        .send()
        .await?
        .json()
        .await?)
}

/// The server's `/metrics` page.
/// A real WebSocket viewer that records, for every stamped reading, the
/// time from its publish to its arrival here.
/// Which of `n` instances the bench's device `b-NNNN` connects to: the
/// simulator spreads device `i` (numbered from 1) to instance `(i-1) % n`.
fn instance_of(device: &str, n: usize) -> Option<usize> {
    let number: usize = device.strip_prefix("b-")?.parse().ok()?;
    Some((number.checked_sub(1)?) % n)
}

/// Where a bench viewer watches from and what it watches.
struct Seat {
    http: SocketAddr,
    subscription: String,
    /// In a cluster, the number of instances and the viewer's own: only
    /// readings of devices on other instances are counted.
    cross: Option<(usize, usize)>,
}

async fn viewer(
    Seat {
        http,
        subscription,
        cross,
    }: Seat,
    api: Api,
    epoch: Instant,
    samples: Arc<Mutex<Vec<u64>>>,
    lag: Arc<std::sync::atomic::AtomicU64>,
    connected: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
) {
    let Ok(request) = api.socket(http) else {
        return;
    };
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await else {
        tracing::error!("bench viewer could not connect");
        return;
    };
    if ws.send(Message::Text(subscription.into())).await.is_err() {
        return;
    }
    connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut mine = Vec::new();
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            frame = ws.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        let now = epoch.elapsed().as_micros() as u64;
        match serde_json::from_str::<ServerMsg>(&text) {
            Ok(ServerMsg::Readings { readings }) => {
                for r in readings.iter().filter(|r| r.metric == STAMP_METRIC) {
                    if cross.is_some_and(|(n, me)| instance_of(&r.device, n) == Some(me)) {
                        continue;
                    }
                    mine.push(now.saturating_sub(r.value as u64));
                }
            }
            Ok(ServerMsg::Lagged { .. }) => {
                lag.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            _ => {}
        }
    }
    if let Ok(mut all) = samples.lock() {
        all.extend(mine);
    }
}
