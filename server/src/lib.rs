//! Sightline's server: one process that embeds an MQTT broker, stores every
//! reading and pushes it live to a Leptos dashboard.
//!
//! Data flows through the modules in this order:
//!
//! - [`edge`]: the MQTT listener (plain and TLS). It authenticates each
//!   device, confines it to its own topics, and tracks who is online.
//! - [`ingest`]: decodes each publish into readings under the
//!   authenticated device, rejecting and counting bad input.
//! - [`store`]: the batch writer commits readings through sea-orm, then
//!   releases QoS 1 acknowledgements and hands the batch to live push.
//! - [`live`]: fans batches and [`presence`] changes out to browsers over
//!   WebSockets.
//! - [`http`]: the dashboard pages, static assets, JSON API and `/ws`;
//!   [`history`] answers chart queries at any range from rollups, and
//!   [`export`] streams raw readings as CSV or NDJSON.
//!
//! Beside them, [`command`] tracks commands to devices from the operator's
//! request to the device's answer, and [`broker`] (rumqttd's router)
//! carries them to the devices.
//! Around them: [`config`] (layered settings), [`metrics`] (counters),
//! [`simulate`] (real MQTT clients for demos and benchmarks) and [`bench`]
//! (the benchmark that drives a server process with them).

pub mod audit;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod command;
pub mod config;
pub mod edge;
pub mod export;
pub mod history;
pub mod http;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod presence;
pub mod simulate;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use leptos::config::LeptosOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use broker::Broker;
use config::Config;
use edge::tls::{TlsError, TlsListener};
use edge::{Edge, EdgeSettings, Services, Sessions};
use metrics::Metrics;
use presence::Presence;
use store::{Store, StoreError};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for {what} on {addr}: {source} (change --{flag} or SIGHTLINE_{env})")]
    Bind {
        what: &'static str,
        flag: &'static str,
        env: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the database writer stopped: {0}")]
    Writer(String),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// How long shutdown waits for a failing database before the writer counts
/// its remaining readings as dropped.
const WRITER_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The sockets the server listens on, bound before [`run`] so that tests can
/// use port 0 and startup errors name the address at fault. Each is `None`
/// when that listener is turned off.
#[derive(Debug, Default)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
    pub mqtt: Option<TcpListener>,
    pub mqtts: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener the configuration turns on.
    pub async fn bind(config: &Config) -> Result<Self, ServeError> {
        let tls = config.tls();
        Ok(Self {
            http: bind(
                config.http_plaintext,
                "HTTP",
                "http-addr",
                "HTTP_ADDR",
                config.http_addr,
            )
            .await?,
            https: bind(tls, "HTTPS", "https-addr", "HTTPS_ADDR", config.https_addr).await?,
            mqtt: bind(
                config.mqtt_plaintext,
                "MQTT",
                "mqtt-addr",
                "MQTT_ADDR",
                config.mqtt_addr,
            )
            .await?,
            mqtts: bind(
                tls,
                "MQTT over TLS",
                "mqtts-addr",
                "MQTTS_ADDR",
                config.mqtts_addr,
            )
            .await?,
        })
    }

    /// Where each listener ended up, for logs and tests.
    pub fn addr(listener: &Option<TcpListener>) -> Option<SocketAddr> {
        listener.as_ref().and_then(|l| l.local_addr().ok())
    }
}

async fn bind(
    on: bool,
    what: &'static str,
    flag: &'static str,
    env: &'static str,
    addr: SocketAddr,
) -> Result<Option<TcpListener>, ServeError> {
    if !on {
        return Ok(None);
    }
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| ServeError::Bind {
            what,
            flag,
            env,
            addr,
            source,
        })
}

/// The demo's read-only account: created once with a random password,
/// which is printed, since the demo is meant to be opened at once.
async fn demo_viewer(auth: &auth::Auth) {
    const NAME: &str = "demo";
    match auth.store().account(NAME).await {
        Ok(Some(_)) => tracing::info!(
            "demo: sign in as the viewer \"{NAME}\" with the password printed when it was created"
        ),
        Ok(None) => {
            let password: String = {
                use rand::distr::{Alphanumeric, SampleString};
                Alphanumeric.sample_string(&mut rand::rng(), 16)
            };
            match auth.add_account(NAME, &password, app::model::Role::Viewer).await {
                Ok(()) => println!(
                    "demo: a viewer account was created; sign in as \"{NAME}\" with password \"{password}\" (add an admin with `sightline user add --admin NAME`)"
                ),
                Err(e) => tracing::warn!("demo: cannot create the viewer account: {e}"),
            }
        }
        Err(e) => tracing::warn!("demo: cannot look up the viewer account: {e}"),
    }
}

/// Runs the whole server until `shutdown` completes, then stops accepting
/// work, stores every reading already received and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // TLS files are read first, so that a bad certificate stops the start
    // before anything else happens.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some((
            edge::tls::acceptor(cert, key, &[])?,
            edge::tls::acceptor(cert, key, &[b"http/1.1"])?,
        )),
        _ => None,
    };
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

    let background = CancellationToken::new();
    let checkpoints = {
        let store = store.clone();
        let stop = background.clone();
        tokio::spawn(async move { store.checkpoints(stop).await })
    };
    let retention = {
        let store = store.clone();
        let stop = background.clone();
        let policy = store::retention::Policy {
            raw: config.retain_raw,
            rollups: config.retain_rollups,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move { store.retention(policy, metrics, stop).await })
    };
    let auth = Arc::new(auth::Auth::new(
        store.clone(),
        metrics.clone(),
        config.session_idle_minutes,
    ));
    let auth_task = tokio::spawn(auth.clone().run(background.clone()));
    if config.demo {
        demo_viewer(&auth).await;
    }
    let presence = Arc::new(Presence::default());
    let presence_task = {
        let presence = presence.clone();
        let stop = background.clone();
        tokio::spawn(async move { presence.run(stop).await })
    };

    // The demo's simulated devices have no secrets.
    let open_registration = config.open_registration || config.demo;
    let broker = Arc::new(Broker::start(config.max_connections + 64));
    let sessions = Arc::new(Sessions::default());
    let (commands, saver) = command::Commands::start(
        store.clone(),
        &broker,
        metrics.clone(),
        config.max_payload_bytes,
    )
    .await?;
    let commands_stop = CancellationToken::new();
    let command_tasks = [tokio::spawn(saver.run(commands_stop.clone())), {
        let commands = commands.clone();
        let stop = commands_stop.clone();
        tokio::spawn(async move { commands.run_timer(stop).await })
    }];
    let edge = Arc::new(Edge::new(
        EdgeSettings {
            // Payloads over the ingest limit are still read, so that they
            // are rejected and counted rather than cutting the connection.
            max_packet_bytes: (config.max_payload_bytes.saturating_mul(4)).max(1024 * 1024),
            max_connections: config.max_connections,
            max_publish_rate: config.max_publish_rate,
            open_registration,
        },
        store.clone(),
        ingest::Ingest::new(metrics.clone(), queue_tx, config.max_payload_bytes),
        metrics.clone(),
        Services {
            broker: broker.clone(),
            presence: presence.clone(),
            sessions: sessions.clone(),
            commands: commands.clone(),
        },
    ));
    let session_tasks = TaskTracker::new();
    let edge_stop = CancellationToken::new();
    let mqtt_addr = Listeners::addr(&listeners.mqtt);
    let mut edge_listeners = Vec::new();
    for (listener, acceptor, what) in [
        (listeners.mqtt, None, "MQTT"),
        (
            listeners.mqtts,
            tls.as_ref().map(|t| t.0.clone()),
            "MQTT over TLS",
        ),
    ] {
        if let Some(listener) = listener {
            tracing::info!(
                "devices connect over {what} on {}",
                edge::describe(&listener)
            );
            edge_listeners.push(tokio::spawn(edge::serve(
                edge.clone(),
                listener,
                acceptor,
                session_tasks.clone(),
                edge_stop.clone(),
            )));
        }
    }
    drop(edge);

    let http_addr = Listeners::addr(&listeners.http)
        .or_else(|| Listeners::addr(&listeners.https))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let state = http::AppState {
        leptos: LeptosOptions::builder()
            .output_name("frontend")
            .site_root(config.site_root.to_string_lossy().into_owned())
            .site_pkg_dir("pkg")
            .site_addr(http_addr)
            .build(),
        store: store.clone(),
        metrics: metrics.clone(),
        presence: presence.clone(),
        sessions,
        commands: commands.clone(),
        retain_raw: config.retain_raw,
        audit: audit::Audit::new(store.clone(), metrics.clone()),
        live: live::Live {
            auth: auth.clone(),
            hub,
            presence: presence.clone(),
            commands: commands.clone(),
            metrics: metrics.clone(),
            shutdown: token.clone(),
            recheck: config.live_recheck,
        },
        auth,
    };
    let app = http::router(state);
    let mut http_tasks = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.http {
        tracing::info!(
            "serving the dashboard on http://{}",
            simulate::loopback(http_addr)
        );
        let app = app.clone();
        let stop = token.clone();
        http_tasks.spawn(async move {
            // Live updates are small frames that must leave at once; Nagle's
            // algorithm would hold them back behind an unacknowledged one.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        });
    }
    if let (Some(listener), Some((_, acceptor))) = (listeners.https, &tls) {
        tracing::info!(
            "serving the dashboard on https://{}",
            edge::describe(&listener)
        );
        let listener = TlsListener::new(listener, acceptor.clone(), token.clone())
            .map_err(ServeError::Http)?;
        let stop = token.clone();
        let app = app.layer(axum::Extension(http::guard::Https));
        http_tasks.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<http::guard::TlsPeer>(),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        });
    }

    if config.demo {
        match mqtt_addr {
            Some(addr) => {
                let target = simulate::loopback(addr);
                tracing::info!(
                    "demo: simulating {} devices against {target}",
                    config.demo_devices
                );
                tokio::spawn(simulate::run(
                    simulate::SimOptions::demo(target, config.demo_devices),
                    token.clone(),
                ));
            }
            None => tracing::warn!("demo: plain MQTT is off, so no devices are simulated"),
        }
    }

    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        result = &mut writer => Err(ServeError::Writer(match result {
            Ok(()) => "it stopped".to_owned(),
            Err(e) => e.to_string(),
        })),
        Some(result) = http_tasks.join_next() => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Http(e)),
            Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
        },
    };

    // Stop in data-flow order: stop accepting devices and end their
    // sessions, so nothing new is queued; then let the writer commit
    // everything queued. If the database is failing, the writer gives up
    // after a bounded wait (counted from here, since sessions waiting for
    // queue room end at once on shutdown) and counts what it could not
    // store, so shutdown always ends.
    edge_stop.cancel();
    let give_up = writer_token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(WRITER_DRAIN_LIMIT).await;
        give_up.cancel();
    });
    for listener in edge_listeners {
        let _ = listener.await;
    }
    session_tasks.close();
    session_tasks.wait().await;
    // Sessions told the command service they ended; its last changes are
    // written before the database is let go.
    commands_stop.cancel();
    for task in command_tasks {
        let _ = task.await;
    }
    token.cancel();
    if !writer.is_finished() {
        let _ = writer.await;
    }
    background.cancel();
    let _ = checkpoints.await;
    let _ = retention.await;
    let _ = presence_task.await;
    let _ = auth_task.await;
    while http_tasks.join_next().await.is_some() {}
    drop(broker);
    outcome
}
