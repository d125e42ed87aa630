//! The live WebSocket, `/ws`: one task per viewer that carries its
//! subscription to the [`Hub`], and sends readings, presence, command
//! changes and counters as they come.
//!
//! A viewer that cannot take a message within [`SEND_TIMEOUT`] is
//! disconnected, and one whose sign-in ends or is revoked is closed. An
//! account may hold `--max-live-sockets-per-account` sockets, and each may
//! watch `--max-devices-per-live-socket` devices.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::model::{ClientMsg, ServerMsg};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Caller};
use crate::command::Commands;
use crate::http::error::HttpError;
use crate::live::{readings_frame, Hub, Subscription};
use crate::metrics::Metrics;
use crate::presence::Tracker;

/// Client messages larger than this are refused; a subscription is small.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// How much the socket reads from a viewer at a time. tungstenite zeroes
/// this much of its read buffer on every read attempt, including each
/// one that finds nothing, and the viewer's task tries one every time it
/// wakes to send: at its default (128 KiB) that zeroing was a quarter of
/// the server's CPU with 1,000 viewers (`perf`, BENCHMARKS.md). Viewers
/// send a few small messages; a larger one still arrives over several
/// reads.
const READ_CHUNK: usize = 4 * 1024;

/// How often each viewer receives the server's counters.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// A viewer that cannot take a message within this time is disconnected;
/// its browser reconnects and reloads history when it is responsive again.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

fn encode(msg: &ServerMsg) -> Utf8Bytes {
    // Serialising these plain structs cannot fail; an empty string would
    // only be skipped by the client.
    Utf8Bytes::from(serde_json::to_string(msg).unwrap_or_default())
}

/// What the WebSocket handler needs.
#[derive(Clone, Debug)]
pub struct Live {
    pub hub: Arc<Hub>,
    pub presence: Arc<Tracker>,
    pub commands: Arc<Commands>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Where revoked sessions and tokens are announced.
    pub auth: Arc<Auth>,
    /// How often a socket checks that its session or token still holds
    /// (and so keeps its session in use).
    pub recheck: Duration,
    /// Live sockets open, by account id.
    pub sockets: Arc<Mutex<HashMap<i64, usize>>>,
    pub max_sockets_per_account: usize,
    /// Devices one socket may watch.
    pub max_devices: usize,
}

/// An account's place among its live sockets, given back on drop.
struct Place {
    sockets: Arc<Mutex<HashMap<i64, usize>>>,
    account: i64,
}

impl Place {
    /// Takes a place for `account`, unless it holds `max` already.
    fn take(live: &Live, account: i64) -> Option<Self> {
        let mut open = live.sockets.lock().ok()?;
        let held = open.entry(account).or_default();
        if *held >= live.max_sockets_per_account {
            return None;
        }
        *held += 1;
        Some(Self {
            sockets: live.sockets.clone(),
            account,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut open) = self.sockets.lock() {
            if let Some(held) = open.get_mut(&self.account) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    open.remove(&self.account);
                }
            }
        }
    }
}

/// `GET /ws`: upgrades to a live connection.
/// The gate in front has checked the caller, who is kept so that the
/// socket closes when that session or token is revoked.
pub async fn websocket(
    State(live): State<Live>,
    axum::Extension(caller): axum::Extension<Caller>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(place) = Place::take(&live, caller.account_id) else {
        Metrics::add(&live.metrics.viewers_refused, 1);
        return HttpError::Throttled(format!(
            "this account has {} live connections open already; close a tab or dashboard",
            live.max_sockets_per_account
        ))
        .into_response();
    };
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(READ_CHUNK)
        .on_upgrade(move |socket| viewer(socket, live, caller, place))
}

async fn viewer(socket: WebSocket, live: Live, caller: Caller, _place: Place) {
    Metrics::add(&live.metrics.viewers, 1);
    let (id, outbox) = live.hub.join();
    let (mut sink, mut stream) = socket.split();
    let mut subscription = Subscription::Nothing;
    let mut stats = tokio::time::interval(STATS_EVERY);
    let mut presence = live.presence.subscribe();
    let mut commands = live.commands.updates();
    let mut revocations = live.auth.revocations();
    // Expiry and changes made by another process (`sightline user`) are
    // not announced; the socket checks its sign-in again now and then.
    let mut recheck = tokio::time::interval(live.recheck);
    recheck.tick().await;
    loop {
        let mut frames = Vec::new();
        let mut delivered: Vec<(Instant, u64)> = Vec::new();
        tokio::select! {
            _ = live.shutdown.cancelled() => break,
            revoked = revocations.recv() => match revoked {
                Ok(r) if r.ends(&caller) => {
                    tracing::info!(account = %caller.name, "closing a live socket whose sign-in was revoked");
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                // Revocations are rare; 64 missed at once means a mass
                // revocation, and closing is the safe answer (the page
                // reconnects if it still may).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                _ => {}
            },
            _ = recheck.tick() => match live.auth.still_valid(&caller).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(account = %caller.name, "closing a live socket whose sign-in ended");
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                // The database is failing: keep serving, check next time.
                Err(e) => tracing::warn!("cannot recheck a live socket's sign-in: {e}"),
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<ClientMsg>(&text) {
                        Ok(msg) => {
                            let new = Subscription::asked(msg, live.max_devices);
                            live.hub.subscribe(id, &outbox, &subscription, &new);
                            subscription = new;
                            // The answer to a subscription is the current
                            // presence of what it covers: a page that
                            // reconnected may have missed changes, and a
                            // client can tell its subscription has taken
                            // effect.
                            let statuses = live
                                .presence
                                .all()
                                .into_iter()
                                .filter(|p| subscription.includes(&p.device))
                                .collect();
                            frames.push(encode(&ServerMsg::Presence { devices: statuses }));
                        }
                        Err(e) => tracing::debug!("ignoring bad client message: {e}"),
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            () = outbox.ready() => {
                let pending = outbox.take(&live.metrics);
                if pending.skipped > 0 {
                    frames.push(encode(&ServerMsg::Lagged { skipped: pending.skipped }));
                }
                if !pending.fragments.is_empty() {
                    frames.push(readings_frame(&pending.fragments));
                    delivered = pending
                        .fragments
                        .iter()
                        .map(|f| (f.received_at, f.readings))
                        .collect();
                }
            },
            changes = presence.recv() => {
                let statuses = match changes {
                    Ok(changes) => changes.iter().filter(|p| subscription.includes(&p.device)).cloned().collect(),
                    // Fell behind: send everything instead of what was missed.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => live
                        .presence
                        .all()
                        .into_iter()
                        .filter(|p| subscription.includes(&p.device))
                        .collect(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => Vec::new(),
                };
                if !statuses.is_empty() {
                    frames.push(encode(&ServerMsg::Presence { devices: statuses }));
                }
            },
            update = commands.recv() => match update {
                Ok(command) => {
                    // Only a device page watches commands; the fleet page
                    // subscribes to everything and has no use for them.
                    if matches!(&subscription, Subscription::Devices(d) if d.contains(&command.device)) {
                        frames.push(encode(&ServerMsg::Command { command: Box::new(command) }));
                    }
                }
                // Command changes were missed (256 behind): the page is
                // told, as for readings, and reloads what it shows.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    if matches!(&subscription, Subscription::Devices(_)) {
                        frames.push(encode(&ServerMsg::Lagged { skipped: n }));
                    }
                }
                // The channel cannot close while `live` holds the service.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
            _ = stats.tick() => {
                let devices = match &subscription {
                    Subscription::Devices(d) => Some(d.iter().cloned().collect::<Vec<_>>()),
                    _ => None,
                };
                // Refusals are the device page's, so only listed devices
                // get them.
                let refused = devices
                    .iter()
                    .flatten()
                    .filter_map(|d| Some((d.clone(), live.metrics.refusal(d)?)))
                    .collect();
                frames.push(encode(&ServerMsg::Stats {
                    counters: live.metrics.everywhere(),
                    rejected: live.metrics.rejected_among_everywhere(devices.as_deref()),
                    refused,
                }));
            }
        };
        let mut failed = false;
        for frame in frames {
            match tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Text(frame))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => failed = true,
                Err(_) => {
                    tracing::info!("disconnecting a live viewer that stopped reading");
                    failed = true;
                }
            }
            if failed {
                break;
            }
        }
        if failed {
            break;
        }
        for (received_at, readings) in delivered {
            live.metrics
                .push_seconds
                .observe_duration(received_at.elapsed(), readings);
        }
    }
    live.hub.leave(id, &outbox, &subscription);
    live.metrics.viewers.fetch_sub(1, Ordering::Relaxed);
}
