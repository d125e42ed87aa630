//! Sightline's server: one process that embeds an MQTT broker, stores every
//! reading and pushes it live to a Leptos dashboard.
//!
//! Data flows through the modules in this order:
//!
//! - [`edge`]: the MQTT listener (plain and TLS). It authenticates each
//!   device, confines it to its own topics ([`acl`]), and tracks who is
//!   online ([`presence`]).
//! - [`ingest`]: decodes each publish into readings under the
//!   authenticated device, rejecting and counting bad input.
//! - [`store`]: the batch writer commits readings through sea-orm, then
//!   releases QoS 1 acknowledgements and hands the batch to a callback,
//!   which [`start`] wires to live push.
//! - [`live`]: fans batches out to the viewers' outboxes.
//! - [`http`]: the dashboard pages, static assets, JSON API and the `/ws`
//!   socket that drains the outboxes; [`history`] answers chart queries at
//!   any range from rollups, and [`export`] streams raw readings as CSV or
//!   NDJSON.
//!
//! Beside them, [`command`] tracks commands to devices from the operator's
//! request to the device's answer, and [`broker`] (rumqttd's router)
//! carries them to the devices.
//! Around them: [`config`] (layered settings), [`metrics`] (counters),
//! [`clock`] and [`names`] (the leaves), [`simulate`] (real MQTT clients
//! for demos and benchmarks) and [`bench`] (the benchmark that drives a
//! server process with them). ARCHITECTURE.md's "Layers" says which
//! module may use which.

pub mod acl;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod bus;
pub mod clock;
pub mod command;
pub mod config;
pub mod desired;
pub mod door;
pub mod edge;
pub mod export;
pub mod feed;
pub mod history;
pub mod http;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod names;
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
use presence::Tracker;
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
    #[error("the database writer stopped unexpectedly")]
    WriterStopped,
    #[error("the database writer failed: {0}")]
    WriterFailed(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("HTTP server failed: {0}")]
    HttpTask(#[source] tokio::task::JoinError),
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

/// Runs the whole server until `shutdown` completes (or a part it cannot
/// run without fails), then stops accepting work, stores every reading
/// already received and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let mut running = start(config, listeners).await?;
    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        outcome = running.failed() => outcome,
    };
    running.shutdown().await;
    outcome
}

/// A started server: its shared state, for tests that drive the router
/// without a socket, and its tasks, grouped by the order in which
/// [`Running::shutdown`] stops them.
pub struct Running {
    /// What the HTTP handlers share.
    pub state: http::AppState,
    writer: tokio::task::JoinHandle<()>,
    /// Fired when shutdown cannot wait any longer for a failing database.
    writer_give_up: CancellationToken,
    edge_stop: CancellationToken,
    /// HTTP ingest's way to the writer, closed with the device listeners.
    ingest_door: door::Door<ingest::Ingest>,
    /// MQTT over WebSocket's way to the edge, closed with the listeners.
    mqtt_ws: http::mqtt_ws::MqttOverWs,
    edge_listeners: Vec<tokio::task::JoinHandle<()>>,
    sessions: TaskTracker,
    commands_stop: CancellationToken,
    command_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Stops the HTTP servers, live sockets and the demo fleet.
    front_stop: CancellationToken,
    http: tokio::task::JoinSet<std::io::Result<()>>,
    background_stop: CancellationToken,
    background: Vec<tokio::task::JoinHandle<()>>,
    broker: Arc<Broker>,
}

/// Opens the database and starts every part of the server on `listeners`.
pub async fn start(config: Config, listeners: Listeners) -> Result<Running, ServeError> {
    // TLS files are read first, so that a bad certificate stops the start
    // before anything else happens.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some((
            edge::tls::acceptor(cert, key, &[])?,
            edge::tls::acceptor(cert, key, &[b"http/1.1"])?,
        )),
        _ => None,
    };
    let store = Store::open_with(config.database_url.expose(), config.sync).await?;
    let known_series = store.all_series().await?;
    let metrics = Arc::new(Metrics::default());
    let front_stop = CancellationToken::new();

    // The writer announces each committed batch to the hub; the store
    // itself knows nothing of live viewers.
    let (queue_tx, queue_rx) = store::queue::queue(config.writer_queue);
    let hub = Arc::new(live::Hub::new(metrics.clone(), config.viewer_buffer_bytes));
    let background_stop = CancellationToken::new();
    let mut background = Vec::new();
    let presence = Arc::new(Tracker::default());
    // In cluster mode, committed batches also go to the other instances'
    // viewers over NATS, after this instance's own.
    let (bus, inbox) = if config.nats_urls.is_empty() {
        (None, None)
    } else {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let settings = bus::Settings {
            urls: &config.nats_urls,
            prefix: &config.bus_prefix,
            queue: config.bus_queue,
            control_queue: config.bus_control_queue,
            instance: &instance,
            lease: std::time::Duration::from_secs(config.presence_lease_secs),
        };
        let (bus, inbox, tasks) = bus::start(
            settings,
            hub.clone(),
            presence.clone(),
            metrics.clone(),
            background_stop.clone(),
        )
        .await?;
        tracing::info!(
            "cluster mode: instance {instance} on NATS {}",
            config.nats_urls.join(",")
        );
        background.extend(tasks);
        (Some(bus), Some(inbox))
    };
    let feed = Arc::new(feed::Feed::new(metrics.clone()));
    let writer_give_up = CancellationToken::new();
    let writer = tokio::spawn(store::writer::run(
        store.writer(),
        queue_rx,
        {
            let hub = hub.clone();
            let bus = bus.clone();
            let feed = feed.clone();
            move |readings, received_at| {
                let batch = live::LiveBatch {
                    readings,
                    received_at,
                };
                hub.publish(&batch);
                feed.publish(&batch.readings);
                if let Some(bus) = &bus {
                    bus.send(batch.readings);
                }
            }
        },
        metrics.clone(),
        store::writer::Pace {
            batch_max: config.batch_max,
            pause: config.write_pause,
        },
        writer_give_up.clone(),
    ));

    {
        let store = store.clone();
        let stop = background_stop.clone();
        background.push(tokio::spawn(async move { store.checkpoints(stop).await }));
    }
    {
        let store = store.clone();
        let stop = background_stop.clone();
        let policy = store::retention::Policy {
            raw_ms: config.retain_raw.as_millis(),
            rollups_ms: config.retain_rollups.as_millis(),
        };
        let metrics = metrics.clone();
        // Instances sharing a PostgreSQL database take turns: deleting the
        // same rows twice over would only cost both of them.
        background.push(tokio::spawn(async move {
            let holding = &metrics.background_leader;
            store
                .exclusively(store::leader::RETENTION, holding, stop, |lost| {
                    store.retention(policy, metrics.clone(), lost)
                })
                .await;
        }));
    }
    let auth = Arc::new(
        auth::Auth::new(store.clone(), metrics.clone(), config.session_idle_minutes)
            .with_max_tokens(config.max_tokens_per_account),
    );
    background.push(tokio::spawn(auth.clone().run(background_stop.clone())));
    if config.demo {
        demo_viewer(&auth).await;
    }
    {
        let presence = presence.clone();
        let stop = background_stop.clone();
        background.push(tokio::spawn(async move { presence.run(stop).await }));
    }

    // Expired MQTT sessions go. A single server also ends the sessions its
    // last run left marked connected, so their expiry counts from now; in
    // a cluster another instance may hold them.
    match store.tidy_sessions(clock::now_ms(), bus.is_none()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("dropped {n} expired MQTT sessions"),
        Err(e) => tracing::warn!("cannot tidy stored MQTT sessions: {e}"),
    }
    let broker = Arc::new(Broker::start(config.max_connections + 64));
    let sessions = Arc::new(Sessions::default());
    let (commands, saver) = command::Commands::start(
        store.clone(),
        &broker,
        metrics.clone(),
        (config.max_payload_bytes, config.max_session_queue),
        config.command_clock,
        bus.clone(),
    )
    .await?;
    let desired = desired::Desired::new(
        store.clone(),
        &broker,
        metrics.clone(),
        bus.clone(),
        config.max_payload_bytes,
    )?;
    let commands_stop = CancellationToken::new();
    let mut command_tasks = vec![tokio::spawn(saver.run(commands_stop.clone())), {
        let commands = commands.clone();
        let stop = commands_stop.clone();
        tokio::spawn(async move { commands.run_timer(stop).await })
    }];
    if bus.is_some() {
        // Commands that no instance holds are expired by one instance at a
        // time.
        let commands = commands.clone();
        let store = store.clone();
        let metrics = metrics.clone();
        let stop = commands_stop.clone();
        command_tasks.push(tokio::spawn(async move {
            let holding = &metrics.command_sweep_leader;
            store
                .exclusively(store::leader::COMMAND_SWEEP, holding, stop, |lost| {
                    commands.run_sweep(lost)
                })
                .await;
        }));
    }

    // Devices reach ingest over MQTT (the edge) and over HTTP (through a
    // door that shutdown closes with the device listeners).
    let ingest = Arc::new(ingest::Ingest::new(
        metrics.clone(),
        queue_tx,
        config.max_payload_bytes,
        known_series,
        config.max_series_per_device,
    ));
    let ingest_door = door::Door::open(ingest.clone());
    let edge = Arc::new(Edge::new(
        EdgeSettings {
            // Payloads over the ingest limit are still read, so that they
            // are rejected and counted rather than cutting the connection.
            max_packet_bytes: (config.max_payload_bytes.saturating_mul(4)).max(1024 * 1024),
            max_connections: config.max_connections,
            max_publish_rate: config.max_publish_rate,
            max_connections_per_device: config.max_connections_per_device,
            max_keep_alive: config.max_keep_alive_secs,
            packet_timeout: std::time::Duration::from_secs(config.packet_timeout_secs),
            max_subscriptions: config.max_subscriptions,
            max_filters_per_subscribe: config.max_filters_per_subscribe,
            max_subscribe_rate: config.max_subscribe_rate,
            redelivery_window: config.redelivery_window,
            max_feed_queue: config.max_feed_queue,
            max_session_expiry: u32::try_from(config.max_session_expiry_secs).unwrap_or(u32::MAX),
            max_session_queue: config.max_session_queue,
            // The demo's simulated devices have no secrets.
            open_registration: config.open_registration || config.demo,
        },
        store.clone(),
        ingest,
        metrics.clone(),
        Services {
            broker: broker.clone(),
            presence: presence.clone(),
            sessions: sessions.clone(),
            commands: commands.clone(),
            desired: desired.clone(),
            feed: feed.clone(),
            bus: bus.clone(),
        },
    ));
    // What other instances ask of this one's edge and command service.
    if let (Some(inbox), Some(bus)) = (inbox, &bus) {
        {
            let bus = bus.clone();
            auth.announce_with(move |what| {
                bus.tell(&bus::Remote::Revoked { what: what.clone() });
            });
        }
        let bus::Inbox {
            mut remote,
            mut asked,
        } = inbox;
        {
            let commands = commands.clone();
            let bus = bus.clone();
            let stop = commands_stop.clone();
            command_tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(a) = asked.recv() => commands.take_asked(&bus, a).await,
                        () = stop.cancelled() => return,
                    }
                }
            }));
        }
        let sessions = sessions.clone();
        let commands = commands.clone();
        let auth = auth.clone();
        let store = store.clone();
        let desired = desired.clone();
        background.push(tokio::spawn(async move {
            while let Some(event) = remote.recv().await {
                match event {
                    bus::Remote::Disabled { device, deleted } => {
                        if deleted {
                            store.forget_devices();
                        }
                        let ended = sessions.disable(&device);
                        tracing::info!(%device, deleted, sessions_ended = ended, "disabled on another instance");
                    }
                    bus::Remote::Connected {
                        device,
                        client_id,
                        at,
                    } => {
                        if sessions.taken_over_elsewhere(&device, &client_id, at) {
                            tracing::info!(%device, %client_id, "taken over by another instance");
                        }
                    }
                    bus::Remote::CommandChanged { command } => {
                        commands.changed_elsewhere(*command);
                    }
                    bus::Remote::DesiredChanged { device } => {
                        desired.changed_elsewhere(&device).await;
                    }
                    bus::Remote::Revoked { what } => {
                        tracing::info!(?what, "revoked on another instance");
                        auth.revoked_elsewhere(what);
                    }
                }
            }
        }));
    }
    let sessions_tasks = TaskTracker::new();
    let edge_stop = CancellationToken::new();
    let mqtt_addr = Listeners::addr(&listeners.mqtt);
    let broker_port = mqtt_addr
        .map(|a| (a.port(), false))
        .or_else(|| Listeners::addr(&listeners.mqtts).map(|a| (a.port(), true)));
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
                sessions_tasks.clone(),
                edge_stop.clone(),
            )));
        }
    }
    let mqtt_ws = http::mqtt_ws::MqttOverWs {
        path: config.mqtt_ws_path.clone(),
        edge: door::Door::open(edge),
        sessions: sessions_tasks.clone(),
        stop: edge_stop.clone(),
    };

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
        broker: broker_port,
        bus,
        commands: commands.clone(),
        desired,
        feed,
        retain_raw_ms: config.retain_raw.as_millis(),
        audit: audit::Audit::new(store.clone(), metrics.clone()),
        live: http::socket::Live {
            auth: auth.clone(),
            hub,
            presence,
            commands,
            metrics,
            shutdown: front_stop.clone(),
            recheck: config.live_recheck,
            sockets: Arc::default(),
            max_sockets_per_account: config.max_live_sockets_per_account,
            max_devices: config.max_devices_per_live_socket,
        },
        max_request_bytes: config.max_request_bytes,
        ingest: ingest_door.clone(),
        mqtt_ws: mqtt_ws.clone(),
        device_rates: Arc::new(edge::rate::DeviceRates::new(
            config.max_publish_rate,
            config.max_connections,
        )),
        trusted_proxies: config.trusted_proxies.iter().map(|p| p.0).collect(),
        auth,
    };
    let http = serve_http(
        &state,
        listeners.http,
        listeners.https,
        tls.map(|t| t.1),
        HttpLimits {
            max_connections: config.max_http_connections,
            header_timeout: std::time::Duration::from_secs(config.http_header_timeout_secs),
        },
        &front_stop,
    )?;

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
                    front_stop.clone(),
                ));
            }
            None => tracing::warn!("demo: plain MQTT is off, so no devices are simulated"),
        }
    }

    Ok(Running {
        state,
        writer,
        writer_give_up,
        edge_stop,
        ingest_door,
        mqtt_ws,
        edge_listeners,
        sessions: sessions_tasks,
        commands_stop,
        command_tasks,
        front_stop,
        http,
        background_stop,
        background,
        broker,
    })
}

/// Serves the router on the plain and the TLS listener, whichever exist.
fn serve_http(
    state: &http::AppState,
    plain: Option<TcpListener>,
    secure: Option<TcpListener>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    limits: HttpLimits,
    stop: &CancellationToken,
) -> Result<tokio::task::JoinSet<std::io::Result<()>>, ServeError> {
    let app = http::router(state.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    if let Some(listener) = plain {
        tracing::info!(
            "serving the dashboard on http://{}",
            simulate::loopback(state.leptos.site_addr)
        );
        let app = app.clone();
        let stop = stop.clone();
        let open = open.clone();
        let metrics = state.metrics.clone();
        tasks.spawn(async move {
            // Live updates are small frames that must leave at once; Nagle's
            // algorithm would hold them back behind an unacknowledged one.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            http::serve::serve(
                listener,
                app,
                |peer: SocketAddr| peer,
                open,
                limits.header_timeout,
                metrics,
                stop,
            )
            .await
        });
    }
    if let (Some(listener), Some(acceptor)) = (secure, acceptor) {
        tracing::info!(
            "serving the dashboard on https://{}",
            edge::describe(&listener)
        );
        let listener =
            TlsListener::new(listener, acceptor, stop.clone()).map_err(ServeError::Http)?;
        let stop = stop.clone();
        let metrics = state.metrics.clone();
        let app = app.layer(axum::Extension(http::guard::Https));
        tasks.spawn(async move {
            http::serve::serve(
                listener,
                app,
                http::guard::TlsPeer,
                open,
                limits.header_timeout,
                metrics,
                stop,
            )
            .await
        });
    }
    Ok(tasks)
}

/// What the HTTP listeners allow, together.
#[derive(Clone, Copy, Debug)]
struct HttpLimits {
    max_connections: usize,
    header_timeout: std::time::Duration,
}

impl Running {
    /// Resolves when a part the server cannot run without stops on its
    /// own: the writer, or an HTTP server. `Ok` only for an HTTP server
    /// that ended cleanly.
    pub async fn failed(&mut self) -> Result<(), ServeError> {
        tokio::select! {
            result = &mut self.writer => Err(match result {
                Ok(()) => ServeError::WriterStopped,
                Err(e) => ServeError::WriterFailed(e),
            }),
            Some(result) = self.http.join_next() => match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Http(e)),
                Err(e) => Err(ServeError::HttpTask(e)),
            },
        }
    }

    /// Stops in data-flow order: stop accepting devices and end their
    /// sessions, so nothing new is queued; then let the writer commit
    /// everything queued. If the database is failing, the writer gives up
    /// after a bounded wait (counted from here, since sessions waiting for
    /// queue room end at once on shutdown) and counts what it could not
    /// store, so shutdown always ends.
    pub async fn shutdown(self) {
        self.edge_stop.cancel();
        self.ingest_door.close();
        self.mqtt_ws.edge.close();
        let give_up = self.writer_give_up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(WRITER_DRAIN_LIMIT).await;
            give_up.cancel();
        });
        for listener in self.edge_listeners {
            let _ = listener.await;
        }
        self.sessions.close();
        self.sessions.wait().await;
        // Sessions told the command service they ended; its last changes
        // are written before the database is let go.
        self.commands_stop.cancel();
        for task in self.command_tasks {
            let _ = task.await;
        }
        self.front_stop.cancel();
        // The writer ends once its queue is drained and closed, which it
        // is now that the edge (which held ingest's end) is gone.
        if !self.writer.is_finished() {
            let _ = self.writer.await;
        }
        self.background_stop.cancel();
        for task in self.background {
            let _ = task.await;
        }
        let mut http = self.http;
        while http.join_next().await.is_some() {}
        drop(self.broker);
    }
}
