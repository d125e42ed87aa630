//! Server configuration, layered as defaults, then a TOML file, then
//! `SIGHTLINE_*` environment variables, then command-line flags.
//!
//! Clap reads both the flags and the environment (each flag names its
//! variable), so a value from either arrives here as `Some` and wins over the
//! file, which in turn wins over [`Config::default`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

/// Everything `sightline serve` needs to run.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// Where the dashboard, JSON API and WebSocket listen.
    pub http_addr: SocketAddr,
    /// Where the embedded MQTT 3.1.1 broker listens for devices.
    pub mqtt_addr: SocketAddr,
    /// A sea-orm database URL: `sqlite://FILE?mode=rwc` or `postgres://...`.
    /// It may hold a password, so `Debug` redacts it.
    pub database_url: String,
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
    pub write_pause: std::time::Duration,
    /// Extra time ingest spends on each message, for the same purpose:
    /// tests use it to make the broker's log outrun ingest and wrap.
    pub ingest_pause: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 3000)),
            mqtt_addr: SocketAddr::from(([0, 0, 0, 0], 1883)),
            database_url: "sqlite://sightline.db?mode=rwc".into(),
            site_root: PathBuf::from("target/site"),
            max_payload_bytes: 64 * 1024,
            demo: false,
            demo_devices: 6,
            batch_max: 100_000,
            writer_queue: 500_000,
            viewer_buffer_bytes: 1024 * 1024,
            write_pause: std::time::Duration::ZERO,
            ingest_pause: std::time::Duration::ZERO,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("mqtt_addr", &self.mqtt_addr)
            .field("database_url", &redact_url(&self.database_url))
            .field("site_root", &self.site_root)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("demo", &self.demo)
            .field("demo_devices", &self.demo_devices)
            .field("batch_max", &self.batch_max)
            .field("writer_queue", &self.writer_queue)
            .field("viewer_buffer_bytes", &self.viewer_buffer_bytes)
            .field("write_pause", &self.write_pause)
            .field("ingest_pause", &self.ingest_pause)
            .finish()
    }
}

/// Replaces the password in `scheme://user:password@host` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The optional TOML file. Every key is optional and uses the same name as
/// the flag, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    http_addr: Option<SocketAddr>,
    mqtt_addr: Option<SocketAddr>,
    database_url: Option<String>,
    site_root: Option<PathBuf>,
    max_payload_bytes: Option<usize>,
    demo: Option<bool>,
    demo_devices: Option<usize>,
    batch_max: Option<usize>,
    writer_queue: Option<usize>,
    viewer_buffer_bytes: Option<usize>,
}

/// Flags of `sightline serve`. Each one may also come from its environment
/// variable; flags win over the environment.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (keys use underscores).
    #[arg(long, env = "SIGHTLINE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for the dashboard, JSON API and WebSocket [default: 0.0.0.0:3000].
    #[arg(long, env = "SIGHTLINE_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Address for the embedded MQTT 3.1.1 broker [default: 0.0.0.0:1883].
    #[arg(long, env = "SIGHTLINE_MQTT_ADDR", value_name = "ADDR")]
    pub mqtt_addr: Option<SocketAddr>,
    /// Database URL: sqlite://FILE?mode=rwc or postgres://USER:PASS@HOST/DB
    /// [default: sqlite://sightline.db?mode=rwc].
    #[arg(
        long,
        env = "SIGHTLINE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
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
    #[error("invalid setting {name}: {why}")]
    Invalid {
        name: &'static str,
        why: &'static str,
    },
}

impl ServeArgs {
    /// Applies the file (if any), then these arguments, over the defaults.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut c = Config::default();
        macro_rules! layer {
            ($($field:ident),*) => {$(
                if let Some(v) = file.$field.clone() { c.$field = v; }
                if let Some(v) = self.$field.clone() { c.$field = v; }
            )*};
        }
        layer!(
            http_addr,
            mqtt_addr,
            database_url,
            site_root,
            max_payload_bytes,
            demo,
            demo_devices,
            batch_max,
            writer_queue,
            viewer_buffer_bytes
        );
        c.validate()?;
        Ok(c)
    }
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_payload_bytes", self.max_payload_bytes),
            ("batch_max", self.batch_max),
            ("writer_queue", self.writer_queue),
            ("viewer_buffer_bytes", self.viewer_buffer_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    why: "must be greater than zero",
                });
            }
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
        ];
        for (name, value, max) in ceilings {
            if value > max {
                return Err(ConfigError::Invalid {
                    name,
                    why: "is too large (see --help for sensible values)",
                });
            }
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
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
            batch_max: Some(9),
            ..ServeArgs::default()
        };
        let c = args.resolve().expect("valid");
        assert_eq!(c.http_addr, "127.0.0.1:4000".parse().expect("addr"));
        assert_eq!(c.batch_max, 9, "flag or env beats file");
        assert!(c.demo, "file beats default");
        assert_eq!(c.mqtt_addr, Config::default().mqtt_addr, "default survives");
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
            batch_max: Some(0),
            ..ServeArgs::default()
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
    fn debug_redacts_database_password() {
        let c = Config {
            database_url: "postgres://sl:hunter2@db:5432/sl".into(),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://sl:***@db:5432/sl"), "{shown}");
        assert_eq!(
            redact_url("sqlite://a.db?mode=rwc"),
            "sqlite://a.db?mode=rwc"
        );
    }
}
