//! Server configuration, layered as defaults, then a TOML file, then
//! `SIGHTLINE_*` environment variables, then command-line flags.
//!
//! Every setting is declared twice and no more: as a field of [`Config`]
//! (with its default in `Config::default`) and as an optional field of
//! [`Overrides`], which is both the TOML file's shape and the flags (clap
//! reads each flag's environment variable too). The layers are merged as
//! data: each one's present values are laid over the defaults in turn.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::store::{DatabaseUrl, Durability};

/// How often a live socket rechecks its sign-in unless a test says
/// otherwise.
const LIVE_RECHECK: Duration = Duration::from_secs(60);

fn live_recheck() -> Duration {
    LIVE_RECHECK
}

/// A reverse proxy, by address or network, whose `X-Forwarded-For`
/// header is believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustedProxy(pub ipnet::IpNet);

impl FromStr for TrustedProxy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(Self)
            .map_err(|_| {
                format!("{text:?} is neither an IP address nor a network such as 10.0.0.0/8")
            })
    }
}

impl TryFrom<String> for TrustedProxy {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<TrustedProxy> for String {
    fn from(proxy: TrustedProxy) -> Self {
        proxy.0.to_string()
    }
}

/// Everything `sightline serve` needs to run.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Config {
    /// Where the dashboard, JSON API and WebSocket listen.
    pub http_addr: SocketAddr,
    /// Whether plain (unencrypted) HTTP is served on `http_addr`.
    pub http_plaintext: bool,
    /// Where HTTPS is served when a TLS certificate is configured.
    pub https_addr: SocketAddr,
    /// Where devices connect over plain MQTT 3.1.1.
    pub mqtt_addr: SocketAddr,
    /// Whether plain MQTT is served at all; turn it off to require TLS.
    pub mqtt_plaintext: bool,
    /// Where devices connect over MQTT with TLS, when a certificate is
    /// configured.
    pub mqtts_addr: SocketAddr,
    /// The server's TLS certificate chain (PEM); with `tls_key`, turns on
    /// MQTT over TLS and HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Lets devices connect without a secret under any unclaimed name and
    /// registers them on their first reading. For demos and trials.
    pub open_registration: bool,
    /// Devices connected at once.
    pub max_connections: usize,
    /// Publishes per second one device may sustain. A device above it is
    /// slowed (the edge stops reading its socket), never disconnected.
    pub max_publish_rate: f64,
    /// Connections one device may hold at once, under different client
    /// ids; more are refused with CONNACK "quota exceeded".
    pub max_connections_per_device: usize,
    /// The longest keep-alive the server honours, in seconds. A device
    /// asking for 0 (none) or more gets this one, as AWS IoT does with its
    /// 1,200 s; MQTT 5 clients are told it (Server Keep Alive).
    pub max_keep_alive_secs: u16,
    /// Seconds a device has to finish sending a packet it has begun; a
    /// partial packet left longer closes the connection, so it cannot pin
    /// its buffer.
    pub packet_timeout_secs: u64,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Filters one SUBSCRIBE may carry; more close the connection as
    /// abuse.
    pub max_filters_per_subscribe: usize,
    /// SUBSCRIBE and UNSUBSCRIBE packets per second one session may send
    /// (with one second's burst, at least 10); more close the connection.
    pub max_subscribe_rate: f64,
    /// Metric names one device may have; readings of new names beyond it
    /// are rejected and counted, while existing series keep working.
    pub max_series_per_device: usize,
    /// QoS 1 and 2 publishes at the start of each MQTT connection whose
    /// readings (when they carry the device's own `ts`) are first looked up
    /// in the store. A device resends what
    /// was not acknowledged as the first thing on its next connection
    /// (often without the DUP flag), so an exact repeat of a stored
    /// reading there is a redelivery, acknowledged and not stored again.
    /// Set it to at least the devices' in-flight limit; 0 stores repeats.
    pub redelivery_window: usize,
    /// Feed messages (one per device and commit) waiting for one service
    /// account session; more are dropped for that session and counted.
    pub max_feed_queue: usize,
    /// The longest a persistent MQTT session (3.1.1 without a clean
    /// session, or 5 with a session expiry) is kept after its connection
    /// ends; 3.1.1 sessions get exactly this, and MQTT 5 asks within it.
    pub max_session_expiry_secs: u64,
    /// Commands that may wait for one offline device, whether sent as
    /// persistent or kept for its persistent session; more are refused
    /// and counted.
    pub max_session_queue: usize,
    /// HTTP and HTTPS connections open at once, live sockets included;
    /// more are closed as soon as they are accepted. With
    /// `max_connections`, this must stay below the process's file
    /// descriptor limit, which both listeners share.
    pub max_http_connections: usize,
    /// Seconds a web client has to send a request's headers, counted from
    /// when its connection is ready for one (so an idle kept-alive
    /// connection is closed after this long too).
    pub http_header_timeout_secs: u64,
    /// The largest request body accepted, in bytes; larger ones get 413.
    pub max_request_bytes: usize,
    /// Live sockets (`/ws`) one account may hold open at once.
    pub max_live_sockets_per_account: usize,
    /// Devices one live socket may watch; names beyond it, and invalid
    /// names, are ignored.
    pub max_devices_per_live_socket: usize,
    /// A sea-orm database URL: `sqlite://FILE?mode=rwc` or `postgres://...`.
    /// It may hold a password, so `Debug` redacts it.
    pub database_url: DatabaseUrl,
    /// When a SQLite commit, and so a PUBACK, is durable: `full` survives
    /// power loss, `normal` the process being killed.
    pub sync: Durability,
    /// Cluster mode: the NATS servers that carry live readings between
    /// instances. Empty (the default) runs one instance alone.
    pub nats_urls: Vec<String>,
    /// The first token of every bus subject, so that several Sightline
    /// clusters can share one NATS cluster.
    pub bus_prefix: String,
    /// Committed batches that may wait to be published on the bus; more
    /// are dropped (and counted) for viewers on other instances only.
    pub bus_queue: usize,
    /// Messages between instances (disables, takeovers, command requests
    /// and changes) that may wait in each direction; more are dropped and
    /// counted.
    pub bus_control_queue: usize,
    /// Cluster mode: how long an instance's word that a device is
    /// connected to it holds without being renewed. An instance renews it
    /// every third of this; when it stops (killed, cut off), its devices
    /// show offline everywhere after at most this long.
    pub presence_lease_secs: u64,
    /// Reverse proxies (nginx in front of the instances, say) whose
    /// `X-Forwarded-For` header names the browser's address. Without them
    /// every browser behind a proxy shares its address, and so its
    /// sign-in limits.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// The folder whose `pkg/` holds the built front end (WASM, JS glue,
    /// CSS, `echarts.min.js`).
    pub site_root: PathBuf,
    /// Payloads larger than this are rejected and counted.
    pub max_payload_bytes: usize,
    /// Runs a small simulated fleet in-process so the first start shows
    /// live charts.
    pub demo: bool,
    /// How many simulated devices `demo` starts.
    pub demo_devices: usize,
    /// The most readings written in one database transaction.
    pub batch_max: usize,
    /// How many decoded readings may wait for the writer before new ones are
    /// dropped (and counted). This bounds the memory readings can occupy
    /// between ingest and the writer (about 100 bytes each), and how long a
    /// database stall can last before anything is dropped: the default is
    /// over three seconds at 150,000 readings/s.
    pub writer_queue: usize,
    /// How many bytes of live updates may wait for one WebSocket viewer.
    /// Beyond this, updates for that viewer are skipped (and counted) and it
    /// is told so, which bounds the memory a slow viewer can pin.
    pub viewer_buffer_bytes: usize,
    /// Extra time the writer waits after each batch. Always zero in
    /// production and not settable from outside; tests use it to make
    /// ingest outpace storage and check that overload is counted.
    #[serde(skip)]
    pub write_pause: Duration,
    /// How long raw readings are kept; older ones are deleted in the
    /// background, and charts of that time come from rollups.
    pub retain_raw: Retention,
    /// How long 1-minute and 15-minute rollups are kept.
    pub retain_rollups: Retention,
    /// How long a dashboard session lasts without use before it must sign
    /// in again.
    pub session_idle_minutes: u64,
    /// API tokens one account may hold at once; more are refused until it
    /// revokes one.
    pub max_tokens_per_account: usize,
    /// The path of MQTT over WebSocket on the HTTP and HTTPS listeners.
    pub mqtt_ws_path: String,
    /// How often a live socket checks that its sign-in still holds, which
    /// also counts as use of its session. One minute, and not settable
    /// from outside; tests shorten it so as not to wait for it.
    #[serde(skip, default = "live_recheck")]
    pub live_recheck: Duration,
    /// Where the command service reads the time: the wall clock, and not
    /// settable from outside; tests use tokio's, to move its deadlines on
    /// under `tokio::time::pause()`.
    #[serde(skip)]
    pub command_clock: Clock,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 3000)),
            http_plaintext: true,
            https_addr: SocketAddr::from(([0, 0, 0, 0], 3443)),
            mqtt_addr: SocketAddr::from(([0, 0, 0, 0], 1883)),
            mqtt_plaintext: true,
            mqtts_addr: SocketAddr::from(([0, 0, 0, 0], 8883)),
            tls_cert: None,
            tls_key: None,
            open_registration: false,
            max_connections: 20_000,
            max_publish_rate: 1_000.0,
            max_connections_per_device: 4,
            max_keep_alive_secs: 1_200,
            packet_timeout_secs: 30,
            max_subscriptions: 8,
            max_filters_per_subscribe: 8,
            max_subscribe_rate: 10.0,
            max_series_per_device: 256,
            redelivery_window: 100,
            max_feed_queue: 10_000,
            max_session_expiry_secs: 7 * 24 * 3_600,
            max_session_queue: 1_000,
            max_http_connections: 4_096,
            http_header_timeout_secs: 15,
            max_request_bytes: 1024 * 1024,
            max_live_sockets_per_account: 32,
            max_devices_per_live_socket: 256,
            database_url: DatabaseUrl::from("sqlite://sightline.db?mode=rwc"),
            sync: Durability::Normal,
            nats_urls: Vec::new(),
            bus_prefix: "sightline".to_owned(),
            bus_queue: 1024,
            bus_control_queue: 4096,
            presence_lease_secs: 6,
            trusted_proxies: Vec::new(),
            site_root: PathBuf::from("target/site"),
            max_payload_bytes: 64 * 1024,
            demo: false,
            demo_devices: 6,
            batch_max: 100_000,
            writer_queue: 500_000,
            viewer_buffer_bytes: 1024 * 1024,
            write_pause: Duration::ZERO,
            retain_raw: Retention::FOREVER,
            retain_rollups: Retention::FOREVER,
            session_idle_minutes: 8 * 60,
            max_tokens_per_account: 100,
            mqtt_ws_path: "/mqtt".to_owned(),
            live_recheck: LIVE_RECHECK,
            command_clock: Clock::Wall,
        }
    }
}

/// How long data is kept: a duration such as `30d`, or forever.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Retention(Option<i64>);

impl Retention {
    /// Keep everything.
    pub const FOREVER: Self = Self(None);

    /// A retention of `ms` milliseconds.
    pub fn millis(ms: i64) -> Self {
        Self(Some(ms))
    }

    /// The oldest timestamp kept at time `now`, if anything is pruned.
    pub fn cutoff(self, now: i64) -> Option<i64> {
        self.0.map(|ms| now.saturating_sub(ms))
    }

    /// The duration in milliseconds; `None` for forever.
    pub fn as_millis(self) -> Option<i64> {
        self.0
    }
}

/// Why a retention setting could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid retention {0:?}: use a number and a unit (ms, s, m, h, d, w, y), such as 30d, or \"forever\"")]
pub struct RetentionError(String);

impl FromStr for Retention {
    type Err = RetentionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.eq_ignore_ascii_case("forever") {
            return Ok(Self::FOREVER);
        }
        let bad = || RetentionError(s.to_owned());
        let digits = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = text.split_at(digits);
        let number: i64 = number.parse().map_err(|_| bad())?;
        let unit_ms: i64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            // A year of 365.25 days, so that "5y" keeps five calendar years.
            "y" => 31_557_600_000,
            _ => return Err(bad()),
        };
        match number.checked_mul(unit_ms) {
            Some(ms) if ms > 0 => Ok(Self(Some(ms))),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Retention {
    type Error = RetentionError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("forever"),
            // The largest unit that says it exactly, so that the text reads
            // back as the same retention.
            Some(ms) if ms % 86_400_000 == 0 => write!(f, "{}d", ms / 86_400_000),
            Some(ms) if ms % 1_000 == 0 => write!(f, "{}s", ms / 1_000),
            Some(ms) => write!(f, "{ms}ms"),
        }
    }
}

impl From<Retention> for String {
    fn from(r: Retention) -> Self {
        r.to_string()
    }
}

/// `sightline serve`'s arguments: the config file, and the overrides
/// given as flags or environment variables (flags win over the
/// environment).
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (keys use underscores).
    #[arg(long, env = "SIGHTLINE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// The settings one layer gives, each optional: the TOML file (whose keys
/// are the flags' names with underscores), or the flags and environment.
/// [`Config`] says what each one means.
#[derive(Clone, Debug, Default, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Address for the dashboard, JSON API and WebSocket [default: 0.0.0.0:3000].
    #[arg(long, env = "SIGHTLINE_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Serve plain HTTP on --http-addr; set false to serve HTTPS only [default: true].
    #[arg(long, env = "SIGHTLINE_HTTP_PLAINTEXT", value_name = "BOOL")]
    pub http_plaintext: Option<bool>,
    /// Address for HTTPS, served when --tls-cert and --tls-key are given [default: 0.0.0.0:3443].
    #[arg(long, env = "SIGHTLINE_HTTPS_ADDR", value_name = "ADDR")]
    pub https_addr: Option<SocketAddr>,
    /// Address for devices over plain MQTT 3.1.1 [default: 0.0.0.0:1883].
    #[arg(long, env = "SIGHTLINE_MQTT_ADDR", value_name = "ADDR")]
    pub mqtt_addr: Option<SocketAddr>,
    /// Serve plain MQTT on --mqtt-addr; set false to require TLS [default: true].
    #[arg(long, env = "SIGHTLINE_MQTT_PLAINTEXT", value_name = "BOOL")]
    pub mqtt_plaintext: Option<bool>,
    /// Address for devices over MQTT with TLS, served when --tls-cert and --tls-key are given [default: 0.0.0.0:8883].
    #[arg(long, env = "SIGHTLINE_MQTTS_ADDR", value_name = "ADDR")]
    pub mqtts_addr: Option<SocketAddr>,
    /// TLS certificate chain (PEM) for MQTT over TLS and HTTPS; `sightline cert dev` makes one.
    #[arg(long, env = "SIGHTLINE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SIGHTLINE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Let devices connect without a secret under any unclaimed name (demos and trials only).
    #[arg(long, env = "SIGHTLINE_OPEN_REGISTRATION", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub open_registration: Option<bool>,
    /// Devices connected at once; more are refused with CONNACK "server unavailable" [default: 20000].
    #[arg(long, env = "SIGHTLINE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Publishes per second one device may sustain (one second's burst allowed); faster devices are slowed, not disconnected [default: 1000].
    #[arg(long, env = "SIGHTLINE_MAX_PUBLISH_RATE", value_name = "PER_SEC")]
    pub max_publish_rate: Option<f64>,
    /// Connections one device may hold at once under different client ids [default: 4].
    #[arg(long, env = "SIGHTLINE_MAX_CONNECTIONS_PER_DEVICE", value_name = "N")]
    pub max_connections_per_device: Option<usize>,
    /// Longest keep-alive honoured, in seconds; 0 or longer requests get this [default: 1200].
    #[arg(long, env = "SIGHTLINE_MAX_KEEP_ALIVE_SECS", value_name = "SECS")]
    pub max_keep_alive_secs: Option<u16>,
    /// Seconds a device has to finish a packet it has begun sending [default: 30].
    #[arg(long, env = "SIGHTLINE_PACKET_TIMEOUT_SECS", value_name = "SECS")]
    pub packet_timeout_secs: Option<u64>,
    /// Subscriptions one MQTT session may hold [default: 8].
    #[arg(long, env = "SIGHTLINE_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// Filters one SUBSCRIBE may carry; more close the connection [default: 8].
    #[arg(long, env = "SIGHTLINE_MAX_FILTERS_PER_SUBSCRIBE", value_name = "N")]
    pub max_filters_per_subscribe: Option<usize>,
    /// SUBSCRIBE and UNSUBSCRIBE packets per second one session may send; more close the connection [default: 10].
    #[arg(long, env = "SIGHTLINE_MAX_SUBSCRIBE_RATE", value_name = "PER_SEC")]
    pub max_subscribe_rate: Option<f64>,
    /// Metric names one device may have; new names beyond it are rejected and counted [default: 256].
    #[arg(long, env = "SIGHTLINE_MAX_SERIES_PER_DEVICE", value_name = "N")]
    pub max_series_per_device: Option<usize>,
    /// QoS 1/2 publishes at the start of each connection checked against the store, so a redelivered reading is not stored twice; 0 turns it off [default: 100].
    #[arg(long, env = "SIGHTLINE_REDELIVERY_WINDOW", value_name = "N")]
    pub redelivery_window: Option<usize>,
    /// Feed messages waiting for one service account session; more are dropped and counted [default: 10000].
    #[arg(long, env = "SIGHTLINE_MAX_FEED_QUEUE", value_name = "N")]
    pub max_feed_queue: Option<usize>,
    /// Seconds a persistent MQTT session outlives its connection at most; 3.1.1 sessions get exactly this [default: 604800].
    #[arg(long, env = "SIGHTLINE_MAX_SESSION_EXPIRY_SECS", value_name = "SECS")]
    pub max_session_expiry_secs: Option<u64>,
    /// Commands that may wait for one offline device (persistent, or kept by its MQTT session); more are refused [default: 1000].
    #[arg(long, env = "SIGHTLINE_MAX_SESSION_QUEUE", value_name = "N")]
    pub max_session_queue: Option<usize>,
    /// HTTP and HTTPS connections open at once, live sockets included [default: 4096].
    #[arg(long, env = "SIGHTLINE_MAX_HTTP_CONNECTIONS", value_name = "N")]
    pub max_http_connections: Option<usize>,
    /// Seconds a web client has to send a request's headers; also closes idle kept-alive connections [default: 15].
    #[arg(long, env = "SIGHTLINE_HTTP_HEADER_TIMEOUT_SECS", value_name = "SECS")]
    pub http_header_timeout_secs: Option<u64>,
    /// Largest request body accepted, in bytes; larger ones get 413 [default: 1048576].
    #[arg(long, env = "SIGHTLINE_MAX_REQUEST_BYTES", value_name = "BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Live sockets (/ws) one account may hold open at once [default: 32].
    #[arg(long, env = "SIGHTLINE_MAX_LIVE_SOCKETS_PER_ACCOUNT", value_name = "N")]
    pub max_live_sockets_per_account: Option<usize>,
    /// Devices one live socket may watch [default: 256].
    #[arg(long, env = "SIGHTLINE_MAX_DEVICES_PER_LIVE_SOCKET", value_name = "N")]
    pub max_devices_per_live_socket: Option<usize>,
    /// Database URL: sqlite://FILE?mode=rwc or postgres://USER:PASS@HOST/DB
    /// [default: sqlite://sightline.db?mode=rwc].
    #[arg(
        long,
        env = "SIGHTLINE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<DatabaseUrl>,
    /// When a SQLite commit (and so a PUBACK) is durable: full survives power loss, normal only the process being killed [default: normal].
    #[arg(long, env = "SIGHTLINE_SYNC", value_name = "full|normal")]
    pub sync: Option<Durability>,
    /// Cluster mode: NATS server URLs, comma-separated (nats://HOST:PORT,...); needs PostgreSQL [default: none, one instance alone].
    #[arg(
        long = "nats-url",
        env = "SIGHTLINE_NATS_URL",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub nats_urls: Option<Vec<String>>,
    /// First token of every NATS subject, so clusters can share NATS [default: sightline].
    #[arg(long, env = "SIGHTLINE_BUS_PREFIX", value_name = "TOKEN")]
    pub bus_prefix: Option<String>,
    /// Committed batches that may wait for the bus before live updates to other instances are dropped and counted [default: 1024].
    #[arg(long, env = "SIGHTLINE_BUS_QUEUE", value_name = "N")]
    pub bus_queue: Option<usize>,
    /// Control messages between instances (disables, takeovers, commands) that may wait in each direction before more are dropped and counted [default: 4096].
    #[arg(long, env = "SIGHTLINE_BUS_CONTROL_QUEUE", value_name = "N")]
    pub bus_control_queue: Option<usize>,
    /// Cluster mode: seconds a dead instance's devices may still show online elsewhere [default: 6].
    #[arg(long, env = "SIGHTLINE_PRESENCE_LEASE_SECS", value_name = "SECONDS")]
    pub presence_lease_secs: Option<u64>,
    /// Reverse proxy whose X-Forwarded-For is believed: an address or a network (10.0.0.0/8), comma-separated [default: none].
    #[arg(
        long = "trusted-proxy",
        env = "SIGHTLINE_TRUSTED_PROXIES",
        value_name = "ADDR|NET",
        value_delimiter = ','
    )]
    pub trusted_proxies: Option<Vec<TrustedProxy>>,
    /// Folder whose pkg/ holds the built front end (WASM, JS, CSS, ECharts) [default: target/site].
    #[arg(long, env = "SIGHTLINE_SITE_ROOT", value_name = "DIR")]
    pub site_root: Option<PathBuf>,
    /// Largest accepted MQTT payload in bytes; larger ones are rejected and counted [default: 65536].
    #[arg(long, env = "SIGHTLINE_MAX_PAYLOAD_BYTES", value_name = "BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Run a small simulated fleet in-process so the dashboard shows live data at once.
    #[arg(long, env = "SIGHTLINE_DEMO", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub demo: Option<bool>,
    /// Number of simulated devices for --demo [default: 6].
    #[arg(long, env = "SIGHTLINE_DEMO_DEVICES", value_name = "N")]
    pub demo_devices: Option<usize>,
    /// Most readings written per database transaction [default: 100000].
    #[arg(long, env = "SIGHTLINE_BATCH_MAX", value_name = "N")]
    pub batch_max: Option<usize>,
    /// Readings that may wait for the database writer before new ones are dropped and counted [default: 500000].
    #[arg(long, env = "SIGHTLINE_WRITER_QUEUE", value_name = "N")]
    pub writer_queue: Option<usize>,
    /// Bytes of live updates that may wait for one slow viewer before updates are skipped and it is told [default: 1048576].
    #[arg(long, env = "SIGHTLINE_VIEWER_BUFFER_BYTES", value_name = "BYTES")]
    pub viewer_buffer_bytes: Option<usize>,
    /// How long raw readings are kept, such as 30d or 12w; older ones are deleted in the background and charts use rollups [default: forever].
    #[arg(long, env = "SIGHTLINE_RETAIN_RAW", value_name = "DURATION")]
    pub retain_raw: Option<Retention>,
    /// How long 1-minute and 15-minute rollups are kept, such as 5y; at least --retain-raw [default: forever].
    #[arg(long, env = "SIGHTLINE_RETAIN_ROLLUPS", value_name = "DURATION")]
    pub retain_rollups: Option<Retention>,
    /// Minutes a dashboard session may go unused before it ends [default: 480].
    #[arg(long, env = "SIGHTLINE_SESSION_IDLE_MINUTES", value_name = "MINUTES")]
    pub session_idle_minutes: Option<u64>,
    /// API tokens one account may hold at once [default: 100].
    #[arg(long, env = "SIGHTLINE_MAX_TOKENS_PER_ACCOUNT", value_name = "N")]
    pub max_tokens_per_account: Option<usize>,
    /// Path of MQTT over WebSocket (subprotocol mqtt) on the HTTP and HTTPS listeners [default: /mqtt].
    #[arg(long, env = "SIGHTLINE_MQTT_WS_PATH", value_name = "PATH")]
    pub mqtt_ws_path: Option<String>,
}

/// Why the configuration could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (check --config or SIGHTLINE_CONFIG)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("settings could not be merged: {0}")]
    Merge(#[from] serde_json::Error),
    #[error("invalid setting {name}: {why}")]
    Invalid {
        name: &'static str,
        why: &'static str,
    },
}

impl ServeArgs {
    /// The configuration these arguments select: the defaults, overlaid by
    /// the file, overlaid by the flags and environment; then checked.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => Overrides::default(),
        };
        let mut merged = serde_json::to_value(Config::default())?;
        for layer in [&file, &self.overrides] {
            overlay(&mut merged, serde_json::to_value(layer)?);
        }
        // Settings that cannot be given from outside (skipped by serde) keep
        // their defaults.
        let c: Config = serde_json::from_value(merged)?;
        c.validate()?;
        Ok(c)
    }
}

/// Lays the values present in `layer` (an object) over `base`.
fn overlay(base: &mut serde_json::Value, layer: serde_json::Value) {
    let (Some(base), serde_json::Value::Object(layer)) = (base.as_object_mut(), layer) else {
        return;
    };
    for (key, value) in layer {
        if !value.is_null() {
            base.insert(key, value);
        }
    }
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_payload_bytes", self.max_payload_bytes),
            ("batch_max", self.batch_max),
            ("writer_queue", self.writer_queue),
            ("viewer_buffer_bytes", self.viewer_buffer_bytes),
            ("max_connections", self.max_connections),
            ("session_idle_minutes", self.session_idle_minutes as usize),
            ("max_tokens_per_account", self.max_tokens_per_account),
            (
                "max_connections_per_device",
                self.max_connections_per_device,
            ),
            ("max_keep_alive_secs", usize::from(self.max_keep_alive_secs)),
            ("packet_timeout_secs", self.packet_timeout_secs as usize),
            ("max_subscriptions", self.max_subscriptions),
            ("max_filters_per_subscribe", self.max_filters_per_subscribe),
            ("max_series_per_device", self.max_series_per_device),
            ("max_feed_queue", self.max_feed_queue),
            ("max_session_queue", self.max_session_queue),
            ("max_http_connections", self.max_http_connections),
            (
                "http_header_timeout_secs",
                self.http_header_timeout_secs as usize,
            ),
            ("max_request_bytes", self.max_request_bytes),
            (
                "max_live_sockets_per_account",
                self.max_live_sockets_per_account,
            ),
            (
                "max_devices_per_live_socket",
                self.max_devices_per_live_socket,
            ),
            ("bus_queue", self.bus_queue),
            ("bus_control_queue", self.bus_control_queue),
            ("presence_lease_secs", self.presence_lease_secs as usize),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    why: "must be greater than zero",
                });
            }
        }
        if !self.nats_urls.is_empty() && !self.database_url.expose().starts_with("postgres") {
            return Err(ConfigError::Invalid {
                name: "database_url",
                why: "cluster mode (--nats-url) needs PostgreSQL: a SQLite file belongs to one \
                      machine, so instances would each store and serve different data",
            });
        }
        // The WebSocket path sits beside the app's own routes, so it must
        // be a plain path that none of them use.
        let path_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.');
        let taken = ["/ws", "/login", "/logout", "/admin", "/account", "/metrics"];
        let reserved = ["/api/", "/pkg/", "/_app/", "/devices/"];
        let p = self.mqtt_ws_path.as_str();
        if p.len() < 2
            || !p.starts_with('/')
            || p.ends_with('/')
            || !p.chars().all(path_ok)
            || taken.contains(&p)
            || reserved
                .iter()
                .any(|r| p.starts_with(r) || p == r.trim_end_matches('/'))
        {
            return Err(ConfigError::Invalid {
                name: "mqtt_ws_path",
                why: "must be a path such as /mqtt (letters, digits, '/', '_', '-', '.') that \
                      the dashboard and API do not use",
            });
        }
        let token_ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if self.bus_prefix.is_empty() || !self.bus_prefix.chars().all(token_ok) {
            return Err(ConfigError::Invalid {
                name: "bus_prefix",
                why: "must be one NATS token: letters, digits, '_' or '-'",
            });
        }
        // A batch larger than this would stall the writer for seconds per
        // transaction, and a viewer buffer beyond 64 MiB times a thousand
        // viewers is no longer a bound worth having.
        let ceilings = [
            (
                "viewer_buffer_bytes",
                self.viewer_buffer_bytes,
                64 * 1024 * 1024,
            ),
            ("batch_max", self.batch_max, 1_000_000),
            ("writer_queue", self.writer_queue, 10_000_000),
            ("max_connections", self.max_connections, 1_000_000),
            // A device cannot have more messages in flight than there are
            // packet ids.
            ("redelivery_window", self.redelivery_window, 65_535),
            ("max_feed_queue", self.max_feed_queue, 1_000_000),
            ("max_session_queue", self.max_session_queue, 1_000_000),
            // MQTT 5 carries a session expiry in 32 bits.
            (
                "max_session_expiry_secs",
                usize::try_from(self.max_session_expiry_secs).unwrap_or(usize::MAX),
                u32::MAX as usize,
            ),
        ];
        for (name, value, max) in ceilings {
            if value > max {
                return Err(ConfigError::Invalid {
                    name,
                    why: "is too large (see --help for sensible values)",
                });
            }
        }
        for (name, rate) in [
            ("max_publish_rate", self.max_publish_rate),
            ("max_subscribe_rate", self.max_subscribe_rate),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::Invalid {
                    name,
                    why: "must be a positive number",
                });
            }
        }
        // Rollups are what charts of pruned periods are drawn from, so they
        // must outlive the raw readings.
        let outlives = match (self.retain_rollups.as_millis(), self.retain_raw.as_millis()) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(rollups), Some(raw)) => rollups >= raw,
        };
        if !outlives {
            return Err(ConfigError::Invalid {
                name: "retain_rollups",
                why: "must be at least as long as retain_raw",
            });
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                name: "tls_cert",
                why: "needs tls_key too, and the other way round",
            });
        }
        if !self.mqtt_plaintext && !self.tls() {
            return Err(ConfigError::Invalid {
                name: "mqtt_plaintext",
                why: "is off and no TLS certificate is set, so devices could not connect at all",
            });
        }
        if !self.http_plaintext && !self.tls() {
            return Err(ConfigError::Invalid {
                name: "http_plaintext",
                why: "is off and no TLS certificate is set, so the dashboard could not be reached",
            });
        }
        Ok(())
    }

    /// Whether a TLS certificate and key are configured.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

fn read_file(path: &Path) -> Result<Overrides, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn layers_file_under_flags() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(
            file,
            "http_addr = \"127.0.0.1:4000\"\nbatch_max = 7\ndemo = true"
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(file.path().to_owned()),
            overrides: Overrides {
                batch_max: Some(9),
                ..Overrides::default()
            },
        };
        let c = args.resolve().expect("valid");
        assert_eq!(c.http_addr, "127.0.0.1:4000".parse().expect("addr"));
        assert_eq!(c.batch_max, 9, "flag or env beats file");
        assert!(c.demo, "file beats default");
        assert_eq!(c.mqtt_addr, Config::default().mqtt_addr, "default survives");
        assert_eq!(
            c.live_recheck, LIVE_RECHECK,
            "settings hidden from outside keep their defaults"
        );
    }

    #[test]
    fn rejects_unknown_keys_and_zero_sizes() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "htp_addr = \"x\"").expect("write");
        let args = ServeArgs {
            config: Some(file.path().to_owned()),
            ..ServeArgs::default()
        };
        assert!(matches!(args.resolve(), Err(ConfigError::Parse { .. })));
        let args = ServeArgs {
            config: None,
            overrides: Overrides {
                batch_max: Some(0),
                ..Overrides::default()
            },
        };
        assert!(matches!(
            args.resolve(),
            Err(ConfigError::Invalid {
                name: "batch_max",
                ..
            })
        ));
    }

    #[test]
    fn cluster_mode_refuses_sqlite() {
        let args = |db: &str| ServeArgs {
            config: None,
            overrides: Overrides {
                nats_urls: Some(vec!["nats://127.0.0.1:4222".into()]),
                database_url: Some(DatabaseUrl::from(db)),
                ..Overrides::default()
            },
        };
        let refused = args("sqlite://one.db?mode=rwc").resolve();
        assert!(
            matches!(
                &refused,
                Err(ConfigError::Invalid {
                    name: "database_url",
                    ..
                })
            ),
            "{refused:?}"
        );
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("needs PostgreSQL"), "{message}");
        assert!(args("postgres://sl@db/sl").resolve().is_ok());
    }

    #[test]
    fn debug_redacts_database_password() {
        let c = Config {
            database_url: DatabaseUrl::from("postgres://sl:hunter2@db:5432/sl"),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://sl:***@db:5432/sl"), "{shown}");
    }

    #[test]
    fn the_mqtt_websocket_path_stays_clear_of_the_app_routes() {
        let with = |path: &str| Config {
            mqtt_ws_path: path.to_owned(),
            ..Config::default()
        };
        for good in ["/mqtt", "/mqtt-ws", "/iot/mqtt"] {
            assert!(with(good).validate().is_ok(), "{good}");
        }
        for bad in [
            "",
            "/",
            "mqtt",
            "/ws",
            "/api/mqtt",
            "/pkg",
            "/_app/x",
            "/mqtt/",
            "/a b",
        ] {
            assert!(with(bad).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_default_survives_the_merge() {
        let c = ServeArgs::default().resolve().expect("defaults are valid");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn retention_reads_units_and_forever_and_writes_them_back() {
        assert_eq!(
            "30d".parse::<Retention>().ok(),
            Some(Retention::millis(30 * 86_400_000))
        );
        assert_eq!(
            "90m".parse::<Retention>().ok(),
            Some(Retention::millis(90 * 60_000))
        );
        assert_eq!(
            "forever".parse::<Retention>().ok(),
            Some(Retention::FOREVER)
        );
        assert_eq!(
            "5y".parse::<Retention>()
                .ok()
                .and_then(Retention::as_millis),
            Some(5 * 31_557_600_000)
        );
        for bad in ["", "30", "d", "0d", "-1d", "3 weeks", "99999999999999y"] {
            assert!(bad.parse::<Retention>().is_err(), "{bad:?}");
        }
        for ms in [30 * 86_400_000, 90_000, 400, 86_400_001] {
            let r = Retention::millis(ms);
            assert_eq!(r.to_string().parse::<Retention>().ok(), Some(r), "{r}");
        }
        assert_eq!(Retention::millis(30 * 86_400_000).to_string(), "30d");
        assert_eq!(Retention::millis(400).to_string(), "400ms");
        assert_eq!(Retention::FOREVER.cutoff(1_000), None);
        assert_eq!(Retention::millis(400).cutoff(1_000), Some(600));
    }
}
