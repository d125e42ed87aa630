//! The device edge: the MQTT listener that owns every device connection.
//!
//! rumqttd alone cannot refuse a login with a CONNACK, confine a device to
//! its own topics, tell who published a message, report connects and
//! disconnects, or hold a QoS 1 acknowledgement until the reading is
//! stored. So the edge owns the sockets (plain TCP, or TLS through rustls)
//! and speaks MQTT 3.1.1 and 5 itself, with rumqttc's packet codecs
//! ([`codec`]):
//!
//! 1. A socket must finish its TLS handshake and send CONNECT within
//!    [`HANDSHAKE_TIMEOUT`]. Each socket runs in its own task, so a silent
//!    one never delays anyone else's handshake.
//! 2. CONNECT is checked against the device registry, and refused with a
//!    proper CONNACK code when the login is wrong, unknown or disabled
//!    (`login`).
//! 3. Each PUBLISH is checked against the device's own topics
//!    ([`crate::acl`]), decoded under the *authenticated* device id, and
//!    queued for the writer. A QoS 1 PUBACK (QoS 2 PUBREC) is sent only
//!    once the writer has committed the readings, in publish order
//!    (`acks`). A device above `--max-publish-rate` is slowed, not cut
//!    off: its socket is left unread until the rate allows (`rate`).
//! 4. A SUBSCRIBE to the device's own command topics gets the device a
//!    local link to rumqttd's router, which delivers commands to it, at
//!    QoS 1 when the device asked for it; its PUBACK and its answer are
//!    reported to [`crate::command`].
//! 5. Connects, DISCONNECTs, closed sockets and keep-alive expiry update
//!    [`crate::presence`] at once; a Last Will is honoured.

mod acks;
pub mod codec;
mod login;
pub mod rate;

/// Why a device's login was refused, in the words its page shows; HTTP
/// ingest refuses in the same words.
pub use login::{BAD_SECRET, DELETED, DISABLED};
mod session;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::command::Commands;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::presence::Tracker;
use crate::store::Store;

/// How long a new socket has to finish TLS and send its CONNECT.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sockets that may be between accept and a decided CONNECT at once. Each
/// may hold a partial CONNECT (up to 64 KiB) for up to
/// [`HANDSHAKE_TIMEOUT`], so this bounds what clients that never log in can
/// make the server hold, whatever the connection limit.
const MAX_PENDING_LOGINS: usize = 1024;

/// Sockets accepted beyond the connection limit, so that a device over the
/// limit still gets a CONNACK that says why, instead of a reset. Beyond
/// this many more, sockets are closed at once.
const ACCEPT_HEADROOM: usize = 256;

/// The edge's limits and modes.
#[derive(Clone, Debug)]
pub struct EdgeSettings {
    /// The largest MQTT packet read at all; a larger one closes the
    /// connection. Payloads over the (smaller) ingest limit are read,
    /// rejected and counted instead.
    pub max_packet_bytes: usize,
    /// Devices connected at once; more get CONNACK "server unavailable".
    pub max_connections: usize,
    /// Publishes per second one device may sustain; a device that exceeds
    /// it (beyond one second's burst) is slowed: its socket is not read
    /// until the rate allows, so TCP pushes back on it alone.
    pub max_publish_rate: f64,
    /// Connections one device may hold at once.
    pub max_connections_per_device: usize,
    /// The longest keep-alive honoured; 0 or longer requests get it.
    pub max_keep_alive: u16,
    /// How long a begun packet may take to arrive in full.
    pub packet_timeout: Duration,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Filters one SUBSCRIBE may carry.
    pub max_filters_per_subscribe: usize,
    /// SUBSCRIBE and UNSUBSCRIBE packets per second one session may send.
    pub max_subscribe_rate: f64,
    /// QoS 1 and 2 publishes at the start of each connection that may be
    /// redeliveries, and so are checked against the store.
    pub redelivery_window: usize,
    /// Feed messages waiting for one service account session; more are
    /// dropped and counted.
    pub max_feed_queue: usize,
    /// The longest a persistent session is kept after its connection.
    pub max_session_expiry: u32,
    /// Unacknowledged commands a persistent session stores, at most.
    pub max_session_queue: usize,
    /// Lets devices without a secret connect under the name they give,
    /// registering them on their first reading. Only for demos and trials.
    pub open_registration: bool,
}

/// The server-wide services sessions report to, besides storage.
#[derive(Debug)]
pub struct Services {
    pub broker: Arc<Broker>,
    pub presence: Arc<Tracker>,
    pub sessions: Arc<Sessions>,
    /// Told when devices subscribe to commands, acknowledge and answer them.
    pub commands: Arc<Commands>,
    /// Told when devices acknowledge their desired state; read when they
    /// subscribe to it.
    pub desired: Arc<crate::desired::Desired>,
    /// Committed readings for service accounts.
    pub feed: Arc<crate::feed::Feed>,
    /// In cluster mode, tells other instances which device logged in here.
    pub bus: Option<crate::bus::Bus>,
}

/// Everything device sessions share.
pub struct Edge {
    settings: EdgeSettings,
    store: Store,
    ingest: Arc<Ingest>,
    broker: Arc<Broker>,
    presence: Arc<Tracker>,
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
    commands: Arc<Commands>,
    desired: Arc<crate::desired::Desired>,
    feed: Arc<crate::feed::Feed>,
    bus: Option<crate::bus::Bus>,
    /// Records the commands service accounts send over MQTT.
    audit: crate::audit::Audit,
    next_session: AtomicU64,
    /// Sockets open, logged in or not.
    sockets: AtomicUsize,
    /// Sockets that have not had their CONNECT decided yet.
    logging_in: AtomicUsize,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Edge {
    pub fn new(
        settings: EdgeSettings,
        store: Store,
        ingest: Arc<Ingest>,
        metrics: Arc<Metrics>,
        services: Services,
    ) -> Self {
        if settings.open_registration {
            tracing::warn!(
                "open registration is on: any client may connect without a secret under a \
                 device name nobody has claimed; use it only for demos and trials"
            );
        }
        let Services {
            broker,
            presence,
            sessions,
            commands,
            desired,
            feed,
            bus,
        } = services;
        Self {
            audit: crate::audit::Audit::new(store.clone(), metrics.clone()),
            settings,
            store,
            ingest,
            broker,
            presence,
            metrics,
            sessions,
            commands,
            desired,
            feed,
            bus,
            next_session: AtomicU64::new(1),
            sockets: AtomicUsize::new(0),
            logging_in: AtomicUsize::new(0),
        }
    }
}

/// What the edge knows of one live session, for ending it from outside.
#[derive(Debug)]
struct Handle {
    session: u64,
    /// When the session logged in (ms since the epoch), so that word of an
    /// older login elsewhere, arriving late, never ends a newer one here.
    since: i64,
    /// Fires to end the session.
    end: CancellationToken,
    /// Set before `end` fires when the device was disabled, rather than
    /// replaced by a newer connection.
    disabled: Arc<AtomicBool>,
    /// Fires once the session has ended and stored what it keeps, so that
    /// the connection replacing it resumes from that.
    done: CancellationToken,
}

/// What [`Sessions::claim`] did.
enum Claim {
    /// The device already holds its most connections.
    Full,
    /// Claimed; with the `done` token of the session it replaced.
    Claimed(Option<CancellationToken>),
}

/// The current session of each connected client, by device and then
/// client id, so that a second connection with the same client id replaces
/// the first (as MQTT requires), so that disabling a device ends its
/// sessions, and so that a device's connections can be counted. One device
/// may hold several connections under different client ids.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, HashMap<String, Handle>>>);

impl Sessions {
    /// Makes `session` the current session of `client_id` of `device`,
    /// ending the one it replaces. Refused (false) when the device already
    /// holds `max_per_device` sessions under other client ids: a device, or
    /// a leaked secret, cannot open connections by the thousand, each
    /// holding buffers.
    fn claim(&self, device: &str, client_id: &str, handle: Handle, max_per_device: usize) -> Claim {
        let Ok(mut sessions) = self.0.lock() else {
            return Claim::Full;
        };
        let mine = sessions.entry(device.to_owned()).or_default();
        if !mine.contains_key(client_id) && mine.len() >= max_per_device {
            if mine.is_empty() {
                sessions.remove(device);
            }
            return Claim::Full;
        }
        Claim::Claimed(mine.insert(client_id.to_owned(), handle).map(|old| {
            old.end.cancel();
            old.done
        }))
    }

    fn release(&self, device: &str, client_id: &str, session: u64) {
        if let Ok(mut sessions) = self.0.lock() {
            let Some(mine) = sessions.get_mut(device) else {
                return;
            };
            if mine.get(client_id).is_some_and(|h| h.session == session) {
                mine.remove(client_id);
            }
            if mine.is_empty() {
                sessions.remove(device);
            }
        }
    }

    /// Ends the session of `client_id` of `device` because the same client
    /// logged in on another instance at `at`; true if there was one that
    /// logged in here before then.
    pub fn taken_over_elsewhere(&self, device: &str, client_id: &str, at: i64) -> bool {
        let Ok(sessions) = self.0.lock() else {
            return false;
        };
        match sessions.get(device).and_then(|mine| mine.get(client_id)) {
            Some(h) if h.since <= at => {
                h.end.cancel();
                true
            }
            _ => false,
        }
    }

    /// Ends every session of `device` because it was disabled, and returns
    /// how many there were.
    pub fn disable(&self, device: &str) -> usize {
        let Ok(sessions) = self.0.lock() else {
            return 0;
        };
        let Some(mine) = sessions.get(device) else {
            return 0;
        };
        for h in mine.values() {
            h.disabled.store(true, Ordering::Relaxed);
            h.end.cancel();
        }
        mine.len()
    }
}

/// Counts a socket (open, or still logging in) for as long as it lives.
struct SocketGuard<'a>(&'a AtomicUsize);

impl Drop for SocketGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts devices on `listener` (through TLS if `tls` is given) until
/// `stop` fires. Every connection runs on `tracker`, so the caller can wait
/// for all of them to end.
pub async fn serve(
    edge: Arc<Edge>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    while let Some((tcp, peer)) = accept(&listener, &stop, "MQTT").await {
        if !edge.take_socket() {
            continue;
        }
        // Acknowledgements and commands are small packets that must leave
        // at once.
        let _ = tcp.set_nodelay(true);
        let edge = edge.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _open = SocketGuard(&edge.sockets);
            let login = SocketGuard(&edge.logging_in);
            match tls {
                None => session::run(&edge, tcp, peer, stop, login).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        () = stop.cancelled() => return,
                        done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => done,
                    };
                    match handshake {
                        Ok(Ok(stream)) => session::run(&edge, stream, peer, stop, login).await,
                        Ok(Err(e)) => {
                            Metrics::add(&edge.metrics.edge.protocol_errors, 1);
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                        }
                        Err(_) => {
                            Metrics::add(&edge.metrics.edge.handshake_timeouts, 1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

/// Runs one device session over a stream that arrived some other way than
/// the MQTT listeners: MQTT over WebSocket, upgraded by the HTTP server. It
/// gets the same connection limits, login, topic rules and rates as a TCP
/// socket, and runs on `tracker` so that shutdown waits for it too.
pub fn serve_stream<S>(
    edge: &Arc<Edge>,
    stream: S,
    peer: SocketAddr,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if !edge.take_socket() {
        return;
    }
    let edge = edge.clone();
    let stop = stop.clone();
    tracker.spawn(async move {
        let _open = SocketGuard(&edge.sockets);
        let login = SocketGuard(&edge.logging_in);
        session::run(&edge, stream, peer, stop, login).await;
    });
}

impl Edge {
    /// The largest packet a device may send, which also bounds a WebSocket
    /// message carrying MQTT.
    pub fn max_packet_bytes(&self) -> usize {
        self.settings.max_packet_bytes
    }

    /// Counts a new socket, open and logging in, unless that would pass
    /// the connection limit or the limit of sockets logging in at once;
    /// then it is refused, counted, and must be closed. The caller's
    /// [`SocketGuard`]s give both places back.
    fn take_socket(&self) -> bool {
        let open = self.sockets.fetch_add(1, Ordering::Relaxed) + 1;
        let pending = self.logging_in.fetch_add(1, Ordering::Relaxed) + 1;
        if open > self.settings.max_connections + ACCEPT_HEADROOM || pending > MAX_PENDING_LOGINS {
            self.sockets.fetch_sub(1, Ordering::Relaxed);
            self.logging_in.fetch_sub(1, Ordering::Relaxed);
            self.metrics.refuse(&self.metrics.edge.over_capacity, None);
            return false;
        }
        true
    }
}

/// Accepts the next connection, or returns `None` once `stop` fires.
/// Accept errors (usually: out of file descriptors) are logged and retried
/// after a pause that lets closing sockets free some, instead of spinning.
pub(crate) async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    tracing::warn!("cannot accept an {what} connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The address a listener is bound to, for logs.
pub fn describe(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".into(), |a: SocketAddr| a.to_string())
}
