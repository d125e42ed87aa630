//! Live push: fans stored readings out to browsers over WebSockets.
//!
//! One `broadcast` channel carries every committed batch. Each viewer reads
//! it at its own pace; a viewer that falls more than the channel's capacity
//! behind skips ahead and is told how much it missed, so a slow browser
//! costs bounded memory and never slows ingest.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use app::model::{ClientMsg, Reading, ServerMsg};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A viewer that cannot take a message within this time is disconnected;
/// its browser reconnects and reloads history when it is responsive again.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How often each viewer receives the server's counters.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The most devices one subscription may name.
const MAX_SUBSCRIBED_DEVICES: usize = 1_000;

/// Client messages larger than this are refused; a subscription is small.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// One committed batch, as sent to every viewer.
#[derive(Debug)]
pub struct LiveBatch {
    readings: Vec<Reading>,
    /// The batch serialised once for all viewers that watch every device,
    /// instead of once per viewer.
    all_json: OnceLock<Utf8Bytes>,
}

impl LiveBatch {
    pub fn new(readings: Vec<Reading>) -> Self {
        Self {
            readings,
            all_json: OnceLock::new(),
        }
    }

    fn all(&self) -> Option<Utf8Bytes> {
        if self.readings.is_empty() {
            return None;
        }
        Some(
            self.all_json
                .get_or_init(|| {
                    encode(&ServerMsg::Readings {
                        readings: self.readings.clone(),
                    })
                })
                .clone(),
        )
    }

    fn only(&self, devices: &HashSet<String>) -> Option<Utf8Bytes> {
        let readings: Vec<Reading> = self
            .readings
            .iter()
            .filter(|r| devices.contains(&r.device))
            .cloned()
            .collect();
        (!readings.is_empty()).then(|| encode(&ServerMsg::Readings { readings }))
    }
}

fn encode(msg: &ServerMsg) -> Utf8Bytes {
    // Serialising these plain structs cannot fail; an empty string would
    // only be skipped by the client.
    Utf8Bytes::from(serde_json::to_string(msg).unwrap_or_default())
}

/// What the WebSocket handler needs.
#[derive(Clone, Debug)]
pub struct Live {
    pub batches: broadcast::Sender<Arc<LiveBatch>>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

/// What a viewer asked to see.
enum Subscription {
    Nothing,
    All,
    Devices(HashSet<String>),
}

/// `GET /ws`: upgrades to a live connection.
pub async fn websocket(State(live): State<Live>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| viewer(socket, live))
}

async fn viewer(socket: WebSocket, live: Live) {
    Metrics::add(&live.metrics.viewers, 1);
    let mut batches = live.batches.subscribe();
    let (mut sink, mut stream) = socket.split();
    let mut subscription = Subscription::Nothing;
    let mut stats = tokio::time::interval(STATS_EVERY);
    loop {
        let outgoing = tokio::select! {
            _ = live.shutdown.cancelled() => break,
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<ClientMsg>(&text) {
                        Ok(msg) => subscription = subscribe(msg),
                        Err(e) => tracing::debug!("ignoring bad client message: {e}"),
                    }
                    None
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => None,
            },
            batch = batches.recv() => match batch {
                Ok(batch) => match &subscription {
                    Subscription::Nothing => None,
                    Subscription::All => batch.all(),
                    Subscription::Devices(devices) => batch.only(devices),
                },
                Err(RecvError::Lagged(skipped)) => {
                    Metrics::add(&live.metrics.viewer_lagged, skipped);
                    Some(encode(&ServerMsg::Lagged { skipped }))
                }
                Err(RecvError::Closed) => break,
            },
            _ = stats.tick() => {
                let devices = match &subscription {
                    Subscription::Devices(d) => Some(d.iter().cloned().collect::<Vec<_>>()),
                    _ => None,
                };
                Some(encode(&ServerMsg::Stats {
                    counters: live.metrics.snapshot(),
                    rejected: live.metrics.rejected_among(devices.as_deref()),
                }))
            }
        };
        if let Some(text) = outgoing {
            match tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Text(text))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::info!("disconnecting a live viewer that stopped reading");
                    break;
                }
            }
        }
    }
    live.metrics
        .viewers
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

fn subscribe(msg: ClientMsg) -> Subscription {
    match msg {
        ClientMsg::SubscribeAll => Subscription::All,
        ClientMsg::Subscribe { devices } => {
            Subscription::Devices(devices.into_iter().take(MAX_SUBSCRIBED_DEVICES).collect())
        }
    }
}
