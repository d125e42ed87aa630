//! The embedded MQTT broker: rumqttd's router, running in-process.
//!
//! Devices never talk to rumqttd directly. The [`crate::edge`] owns every
//! device socket and gives each device that subscribes a local link to the
//! router, through which the router delivers commands to it. The broker
//! never touches the database: readings go from the edge to ingest and the
//! writer, not through the router.

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use rumqttd::RouterConfig;

/// How the broker could fail.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// rumqttd's `LinkError` is large, so only its message is kept.
    #[error("cannot attach to the broker's router: {0}")]
    Link(String),
}

/// The running router.
pub struct Broker {
    /// Makes links to the router. rumqttd does not export the router
    /// channel's message type, so the channel is captured in a closure.
    new_link: LinkFactory,
}

type LinkFactory = Box<dyn Fn(&str) -> Result<(LinkTx, LinkRx), BrokerError> + Send + Sync>;

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts the router on its own thread, sized for `max_links` links.
    pub fn start(max_links: usize) -> Self {
        let router_tx = rumqttd::Router::new(0, router_config(max_links)).spawn();
        let new_link: LinkFactory = Box::new(move |id: &str| {
            // Without dynamic filters, a publish to a topic nobody has
            // subscribed to yet fails instead of being kept for later.
            LinkBuilder::new(id, router_tx.clone())
                .dynamic_filters(true)
                .build()
                .map(|(tx, rx, _ack)| (tx, rx))
                .map_err(link_error)
        });
        Self { new_link }
    }

    /// Creates an in-process link. `id` must be unique among live links:
    /// rumqttd lets a new link with the same id take over the old one.
    pub fn link(&self, id: &str) -> Result<(LinkTx, LinkRx), BrokerError> {
        (self.new_link)(id)
    }
}

/// Removes a link from the router. Dropping a link does not: the router
/// would keep its state (and its subscriptions) forever.
pub async fn leave(tx: &mut LinkTx) {
    let bye = Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    );
    if let Err(e) = tx.send(bye).await {
        tracing::debug!("link already gone from the router: {e}");
    }
}

fn link_error(e: LinkError) -> BrokerError {
    BrokerError::Link(e.to_string())
}

/// The router now carries only commands to devices, so its log is small:
/// rumqttd keeps each filter's messages in segments and drops the oldest
/// when full, and 2 x 1 MiB holds thousands of commands.
fn router_config(max_links: usize) -> RouterConfig {
    RouterConfig {
        max_connections: max_links,
        max_outgoing_packet_count: 200,
        max_segment_size: 1024 * 1024,
        max_segment_count: 2,
        ..RouterConfig::default()
    }
}
