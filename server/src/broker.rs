//! The embedded MQTT broker: rumqttd's router and its MQTT 3.1.1 listener,
//! plus the in-process link through which ingest receives every publish.
//!
//! The broker never touches the database. It hands messages to ingest over
//! rumqttd's local link and nothing else.

use std::net::SocketAddr;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{ConnectionSettings, LinkType, RouterConfig, Server, ServerSettings};
use tokio::sync::oneshot;

/// The filter through which ingest sees every publish: readings arrive on
/// `sensor/...`, and anything on a topic the server does not know is
/// rejected and counted there, so a misconfigured device is visible instead
/// of silently ignored.
pub const INGEST_FILTER: &str = "#";

/// How the broker could fail.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "cannot listen for MQTT on {addr}: {source} (change --mqtt-addr or SIGHTLINE_MQTT_ADDR)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the MQTT listener thread: {0}")]
    Thread(std::io::Error),
    /// rumqttd's `LinkError` is large, so only its message is kept.
    #[error("cannot attach to the broker's router: {0}")]
    Link(String),
    #[error("the MQTT listener stopped: {0}")]
    Stopped(String),
}

/// Sizing of the embedded broker.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    pub listen: SocketAddr,
    /// The largest MQTT packet the broker accepts at all. Anything larger
    /// drops the connection inside rumqttd, so this is set well above the
    /// ingest payload limit: oversized payloads then reach ingest, which
    /// rejects and counts them.
    pub max_packet_bytes: usize,
}

/// A running broker: its router, the ingest link and the listener thread.
pub struct Broker {
    /// Makes links to the router. rumqttd does not export the router
    /// channel's message type, so the channel is captured in a closure.
    new_link: LinkFactory,
    /// Taking (or dropping) this stops the listener thread, which closes
    /// every device connection.
    shutdown: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

type LinkFactory = Box<dyn Fn(&str) -> Result<(LinkTx, LinkRx), BrokerError> + Send + Sync>;

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts the router and the listener. The listen address is checked
    /// first, because rumqttd binds inside its own thread and would only log
    /// a taken port. The returned receiver fires if the listener stops on
    /// its own, which the caller should treat as fatal.
    pub fn start(
        settings: &BrokerSettings,
    ) -> Result<(Self, oneshot::Receiver<String>), BrokerError> {
        drop(
            std::net::TcpListener::bind(settings.listen).map_err(|source| BrokerError::Bind {
                addr: settings.listen,
                source,
            })?,
        );

        let router_tx = rumqttd::Router::new(0, router_config()).spawn();
        let server = server_settings(settings);
        let (stop_tx, stop_rx) = oneshot::channel::<String>();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let new_link: LinkFactory = {
            let router_tx = router_tx.clone();
            Box::new(move |id: &str| {
                LinkBuilder::new(id, router_tx.clone())
                    .dynamic_filters(true)
                    .build()
                    .map(|(tx, rx, _ack)| (tx, rx))
                    .map_err(link_error)
            })
        };
        let listen = server.listen;
        let server = Server::new(server, router_tx, rumqttd::protocol::v4::V4);
        std::thread::Builder::new()
            .name("mqtt-listener".into())
            .spawn(move || listener_thread(server, listen, shutdown_rx, stop_tx))
            .map_err(BrokerError::Thread)?;
        let broker = Self {
            new_link,
            shutdown: std::sync::Mutex::new(Some(shutdown_tx)),
        };
        Ok((broker, stop_rx))
    }

    /// Stops accepting devices and closes their connections, so that no
    /// new message is acknowledged while the server shuts down.
    pub fn stop_listener(&self) {
        if let Ok(mut slot) = self.shutdown.lock() {
            drop(slot.take());
        }
    }

    /// Creates an in-process link subscribed to `filter`. Its client id is
    /// random, so no device can guess it and take the link over.
    pub fn link(&self, purpose: &str, filter: &str) -> Result<(LinkTx, LinkRx), BrokerError> {
        let id = format!("sightline-{purpose}-{}", uuid::Uuid::new_v4().simple());
        let (mut tx, rx) = (self.new_link)(&id)?;
        tx.subscribe(filter).map_err(link_error)?;
        Ok((tx, rx))
    }
}

/// How many MQTT clients are connected to the listener on `port`, read
/// from the kernel's socket table because rumqttd 0.20 reports neither
/// connects nor disconnects. It counts established TCP connections, so a
/// client that has connected but not yet authenticated is included. `None`
/// where the table is not available (outside Linux).
pub fn connected_clients(port: u16) -> Option<u64> {
    let mut found = None;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        *found.get_or_insert(0) += count_established(&text, port);
    }
    found
}

/// Counts rows of a `/proc/net/tcp` table whose local port is `port` and
/// whose state is ESTABLISHED (`01`).
fn count_established(table: &str, port: u16) -> u64 {
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1).unwrap_or_default();
            let state = cols.nth(1).unwrap_or_default();
            local.ends_with(&port) && state == "01"
        })
        .count() as u64
}

fn link_error(e: LinkError) -> BrokerError {
    BrokerError::Link(e.to_string())
}

/// rumqttd keeps each filter's messages in a log of segments and drops the
/// oldest segment when the log is full, consumed or not, so the log is
/// always full at steady state and its size is the broker's memory. Its
/// accounting counts only topic and payload bytes, while each retained
/// message really costs several times that, so the log is kept small:
/// ingest reads it continuously, and 4 x 2 MiB still holds about 100,000
/// typical messages of slack for a stall.
fn router_config() -> RouterConfig {
    RouterConfig {
        max_connections: 20_010,
        // Forwards handed to a link per round; ingest is the only
        // subscriber, and larger rounds mean fewer wake-ups per message.
        max_outgoing_packet_count: 1000,
        max_segment_size: 2 * 1024 * 1024,
        max_segment_count: 4,
        ..RouterConfig::default()
    }
}

fn server_settings(settings: &BrokerSettings) -> ServerSettings {
    ServerSettings {
        name: "mqtt-v4".into(),
        listen: settings.listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: settings.max_packet_bytes,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

/// Runs rumqttd's listener on a runtime of its own, so its blocking sends to
/// the router never stall the server's async workers.
fn listener_thread(
    mut server: Server<rumqttd::protocol::v4::V4>,
    listen: SocketAddr,
    shutdown: oneshot::Receiver<()>,
    stopped: oneshot::Sender<String>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = stopped.send(format!("cannot build runtime: {e}"));
            return;
        }
    };
    runtime.block_on(async move {
        tokio::select! {
            result = server.start(LinkType::Remote) => {
                let why = match result {
                    Ok(()) => "listener returned".to_owned(),
                    Err(e) => format!("{e} on {listen}"),
                };
                let _ = stopped.send(why);
            }
            _ = shutdown => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::count_established;

    #[test]
    fn counts_established_connections_on_the_listener_port_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:075B 00000000:0000 0A 00000000:00000000\n\
   1: 0100007F:075B 0100007F:D2F0 01 00000000:00000000\n\
   2: 0100007F:075B 0100007F:D2F2 01 00000000:00000000\n\
   3: 0100007F:D2F0 0100007F:075B 01 00000000:00000000\n\
   4: 0100007F:075B 0100007F:D2F4 06 00000000:00000000\n";
        assert_eq!(count_established(table, 1883), 2);
        assert_eq!(count_established(table, 1884), 0);
    }
}
