//! Sightline's server: one process that embeds an MQTT broker, stores every
//! reading and pushes it live to a Leptos dashboard.
//!
//! Data flows through the modules in this order:
//!
//! - [`broker`]: rumqttd, embedded; devices publish to `sensor/...`.
//! - [`ingest`]: receives each publish over an in-process link and decodes
//!   it into readings, rejecting and counting bad input.
//! - [`store`]: the batch writer commits readings through sea-orm, then
//!   hands each committed batch to live push.
//! - [`live`]: fans batches out to browsers over WebSockets.
//! - [`http`]: the dashboard pages, static assets, JSON API and `/ws`.
//!
//! Around them: [`config`] (layered settings), [`metrics`] (counters) and
//! [`simulate`] (real MQTT clients for demos and benchmarks) and [`bench`]
//! (the benchmark that drives a server process with them).

pub mod bench;
pub mod broker;
pub mod config;
pub mod http;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod simulate;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use leptos::config::LeptosOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use broker::{Broker, BrokerError, BrokerSettings};
use config::Config;
use metrics::Metrics;
use store::{Store, StoreError};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen for HTTP on {addr}: {source} (change --http-addr or SIGHTLINE_HTTP_ADDR)"
    )]
    HttpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error("the database writer stopped: {0}")]
    Writer(String),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// How long shutdown waits for a failing database before the writer counts
/// its remaining readings as dropped.
const WRITER_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The sockets the server listens on, bound before [`run`] so that tests can
/// use port 0 and startup errors name the address at fault.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    /// rumqttd binds its own socket, so the MQTT side is an address that
    /// [`Broker::start`] checks before handing it over.
    pub mqtt: SocketAddr,
}

impl Listeners {
    /// Binds the HTTP socket at `config.http_addr`.
    pub async fn bind(config: &Config) -> Result<Self, ServeError> {
        let http = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| ServeError::HttpBind {
                addr: config.http_addr,
                source,
            })?;
        Ok(Self {
            http,
            mqtt: config.mqtt_addr,
        })
    }
}

/// Runs the whole server until `shutdown` completes, then stops accepting
/// work, stores every reading already received and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = Store::open(&config.database_url).await?;
    let metrics = Arc::new(Metrics::default());
    let token = CancellationToken::new();

    let (queue_tx, queue_rx) = store::writer::queue(config.writer_queue);
    let hub = Arc::new(live::Hub::new(metrics.clone(), config.viewer_buffer_bytes));
    let writer_token = CancellationToken::new();
    let mut writer = tokio::spawn(store::writer::run(
        store.writer(),
        queue_rx,
        hub.clone(),
        metrics.clone(),
        store::writer::Pace {
            batch_max: config.batch_max,
            pause: config.write_pause,
        },
        writer_token.clone(),
    ));

    let checkpoint_token = CancellationToken::new();
    let checkpoints = {
        let store = store.clone();
        let stop = checkpoint_token.clone();
        tokio::spawn(async move { store.checkpoints(stop).await })
    };

    let (broker, broker_stopped) = Broker::start(&BrokerSettings {
        listen: listeners.mqtt,
        max_packet_bytes: (config.max_payload_bytes.saturating_mul(4)).max(1024 * 1024),
    })?;
    let broker = Arc::new(broker);
    let ingest = ingest::Ingest::new(metrics.clone(), queue_tx, config.max_payload_bytes);
    let mut ingest_task = tokio::spawn(ingest::run(
        broker.clone(),
        ingest,
        config.ingest_pause,
        token.clone(),
    ));

    let http_addr = listeners.http.local_addr().map_err(ServeError::Http)?;
    let state = http::AppState {
        leptos: LeptosOptions::builder()
            .output_name("frontend")
            .site_root(config.site_root.to_string_lossy().into_owned())
            .site_pkg_dir("pkg")
            .site_addr(http_addr)
            .build(),
        store: store.clone(),
        metrics: metrics.clone(),
        mqtt_port: listeners.mqtt.port(),
        live: live::Live {
            hub,
            metrics: metrics.clone(),
            shutdown: token.clone(),
        },
    };
    let app = http::router(state);
    let http_token = token.clone();
    let mut http_task = tokio::spawn(async move {
        // Live updates are small frames that must leave at once; Nagle's
        // algorithm would hold them back behind an unacknowledged one.
        let http = axum::serve::ListenerExt::tap_io(listeners.http, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(http, app)
            .with_graceful_shutdown(async move { http_token.cancelled().await })
            .await
    });

    if config.demo {
        let target = simulate::loopback(listeners.mqtt);
        tracing::info!(
            "demo: simulating {} devices against {target}",
            config.demo_devices
        );
        tokio::spawn(simulate::run(
            simulate::SimOptions::demo(target, config.demo_devices),
            token.clone(),
        ));
    }
    tracing::info!(
        "serving the dashboard on http://{} and MQTT on {}",
        simulate::loopback(http_addr),
        listeners.mqtt
    );

    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        why = broker_stopped => Err(ServeError::Broker(BrokerError::Stopped(
            why.unwrap_or_else(|_| "listener thread ended".into()),
        ))),
        result = &mut ingest_task => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(ServeError::Ingest(ingest::IngestError::Stopped(e.to_string()))),
        },
        result = &mut writer => Err(ServeError::Writer(match result {
            Ok(()) => "it stopped".to_owned(),
            Err(e) => e.to_string(),
        })),
        result = &mut http_task => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Http(e)),
            Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
        },
    };

    // Stop in data-flow order: close the device listener so nothing new is
    // acknowledged, let ingest read what the broker still holds, then let
    // the writer commit everything queued. If the database is failing, the
    // writer gives up after a bounded wait and counts what it could not
    // store, so shutdown always ends.
    broker.stop_listener();
    token.cancel();
    if !ingest_task.is_finished() {
        let _ = ingest_task.await;
    }
    if !writer.is_finished() {
        let give_up = writer_token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(WRITER_DRAIN_LIMIT).await;
            give_up.cancel();
        });
        let _ = writer.await;
    }
    checkpoint_token.cancel();
    let _ = checkpoints.await;
    if !http_task.is_finished() {
        let _ = http_task.await;
    }
    drop(broker);
    outcome
}
