//! Process-wide counters and histograms for ingest, storage and live push,
//! readable as a snapshot for the JSON API, the WebSocket and the
//! dashboard, and as Prometheus text for `/metrics`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use app::model::Counters;

/// How many distinct devices get their own counter in a [`DeviceCounts`].
/// Beyond this (for example a client inventing a new device id per
/// message) events are still counted in the total, but not per device, so
/// a hostile client cannot grow the map without bound.
const MAX_TRACKED_DEVICES: usize = 10_000;

/// Counts of some event per device, bounded to [`MAX_TRACKED_DEVICES`].
/// A `std` mutex, not a tokio one: it is held for a hash-map update and
/// never across an `.await`, and only taken when the event happens.
#[derive(Debug, Default)]
pub struct DeviceCounts(Mutex<HashMap<String, u64>>);

impl DeviceCounts {
    pub fn add(&self, device: &str, n: u64) {
        let Ok(mut map) = self.0.lock() else {
            return;
        };
        if let Some(count) = map.get_mut(device) {
            *count += n;
        } else if map.len() < MAX_TRACKED_DEVICES {
            map.insert(device.to_owned(), n);
        }
    }

    pub fn get(&self, device: &str) -> u64 {
        self.0
            .lock()
            .map(|m| m.get(device).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Counts for the given devices (or all of them), skipping zeros.
    pub fn among(&self, devices: Option<&[String]>) -> Vec<(String, u64)> {
        let Ok(map) = self.0.lock() else {
            return Vec::new();
        };
        let mut out: Vec<(String, u64)> = match devices {
            Some(list) => list
                .iter()
                .filter_map(|d| map.get(d).map(|n| (d.clone(), *n)))
                .collect(),
            None => map.iter().map(|(d, n)| (d.clone(), *n)).collect(),
        };
        out.sort();
        out
    }
}

/// What the device edge counts: its sessions and every refusal, by kind.
#[derive(Debug, Default)]
pub struct EdgeCounters {
    /// Devices connected and logged in right now.
    pub sessions: AtomicU64,
    /// CONNECTs refused for unknown, wrong or disabled credentials.
    pub logins_refused: AtomicU64,
    /// Publishes or subscriptions outside the device's own topics.
    pub denied: AtomicU64,
    /// Times a device publishing faster than allowed was slowed (its
    /// socket left unread until the rate allowed more).
    pub throttled: AtomicU64,
    /// Filters refused because the session held its most subscriptions.
    pub subscriptions_refused: AtomicU64,
    /// Sessions closed for SUBSCRIBE abuse: too many filters in one
    /// packet, or SUBSCRIBE and UNSUBSCRIBE faster than allowed.
    pub subscribe_abuse: AtomicU64,
    /// CONNECTs refused because the device held its most connections.
    pub device_connections_refused: AtomicU64,
    /// Connections closed because a begun packet was not finished in time.
    pub packet_timeouts: AtomicU64,
    /// Packets larger than the packet limit.
    pub too_large: AtomicU64,
    /// CONNECTs refused because the connection limit was reached.
    pub over_capacity: AtomicU64,
    /// Sockets that did not finish the TLS handshake or send CONNECT in time.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed for malformed packets or protocol violations.
    pub protocol_errors: AtomicU64,
    /// Sessions closed because the device fell silent past its keep-alive.
    pub keepalive_expired: AtomicU64,
    /// Last Wills published for devices that went away without DISCONNECT.
    pub wills: AtomicU64,
    /// Persistent sessions taken up by a device that came back.
    pub sessions_resumed: AtomicU64,
    /// Stored sessions dropped because their device kept more than
    /// `--max-connections-per-device` of them.
    pub sessions_dropped: AtomicU64,
    /// QoS 1 and 2 publishes sent again (DUP) under a packet id already
    /// taken: acknowledged, not stored twice.
    pub duplicates: AtomicU64,
    /// Refusals of every kind, per device, where the device is known.
    pub refused_by_device: DeviceCounts,
    /// The last refused login of each device: why, and when.
    last_refusal: Mutex<HashMap<String, (&'static str, i64)>>,
}

/// Readings sent over HTTP (`http::readings`), by outcome. Refused
/// payloads count under `rejected` like MQTT's, and refused credentials
/// also under the edge's `logins_refused`.
#[derive(Debug, Default)]
pub struct HttpIngestCounters {
    /// Requests from authenticated devices.
    pub requests: AtomicU64,
    /// Requests whose readings were committed and answered 200.
    pub stored: AtomicU64,
    /// Requests with missing, wrong, disabled or deleted credentials.
    pub unauthorized: AtomicU64,
    /// Requests refused with 429 above the device's publish rate.
    pub throttled: AtomicU64,
}

/// What happens to commands to devices, by outcome, and what was refused.
#[derive(Debug, Default)]
pub struct CommandCounters {
    /// Commands accepted from operators.
    pub accepted: AtomicU64,
    /// Commands handed to the broker for a subscribed device (a command
    /// sent again after a reconnect counts again).
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub answered: AtomicU64,
    pub failed: AtomicU64,
    pub expired: AtomicU64,
    /// Commands refused before they were stored: unknown device, bad name
    /// or params, too large.
    pub refused: AtomicU64,
    /// Commands refused because `--max-session-queue` commands already
    /// waited for their offline device.
    pub queue_full: AtomicU64,
    /// Answers from devices that matched no waiting command (unknown,
    /// finished or expired id) or could not be read.
    pub bad_answers: AtomicU64,
    /// Command changes that could not be written to the database.
    pub save_errors: AtomicU64,
}

/// Sign-ins and refused web requests.
#[derive(Debug, Default)]
pub struct AuthCounters {
    pub logins: AtomicU64,
    /// Sign-ins refused for a wrong name or password.
    pub login_failures: AtomicU64,
    /// Sign-ins refused unchecked because the account or address failed
    /// too often recently.
    pub login_throttled: AtomicU64,
    /// Requests without a valid session or token (401 or a redirect).
    pub unauthenticated: AtomicU64,
    /// Requests from a signed-in account whose role is too low (403).
    pub forbidden: AtomicU64,
    /// State-changing requests refused because they came from another
    /// origin.
    pub csrf_refused: AtomicU64,
    /// API tokens refused because the account holds its limit already.
    pub tokens_refused: AtomicU64,
    /// Audit events that could not be written.
    pub audit_errors: AtomicU64,
}

/// The server's counters. Atomics keep the hot path lock-free; only the
/// per-device maps take a lock, and only when something is refused. Each
/// counter's Prometheus name and help text are in [`PLAIN`].
#[derive(Debug, Default)]
pub struct Metrics {
    pub messages: AtomicU64,
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    /// Readings a device sent again after a lost acknowledgement that were
    /// already stored, so acknowledged without being stored twice.
    pub redelivered: AtomicU64,
    /// Readings of new metrics refused at the per-device series cap.
    pub series_refused: AtomicU64,
    /// 1 while the writer's last attempt to store a batch failed (the
    /// database is full, down or locked) and it is retrying; 0 otherwise.
    pub store_failing: AtomicU64,
    pub pruned_readings: AtomicU64,
    pub pruned_rollups: AtomicU64,
    pub pruned_commands: AtomicU64,
    /// Desired states set by operators, and acknowledged by devices.
    pub desired_set: AtomicU64,
    pub desired_acked: AtomicU64,
    /// Feed messages (one per device per commit) made for service
    /// accounts, and deliveries dropped because a subscriber's queue was
    /// full.
    pub feed_messages: AtomicU64,
    pub feed_dropped: AtomicU64,
    /// Feed subscriptions held by service accounts, plain and shared.
    pub feed_subscriptions: AtomicU64,
    pub edge: EdgeCounters,
    pub http_ingest: HttpIngestCounters,
    pub commands: CommandCounters,
    pub auth: AuthCounters,
    pub viewers: AtomicU64,
    /// Live sockets refused because the account held its most.
    pub viewers_refused: AtomicU64,
    /// HTTP connections closed at once because the connection cap was
    /// reached.
    pub http_over_capacity: AtomicU64,
    pub live_skipped: AtomicU64,
    pub live_pending_bytes: AtomicU64,
    /// Cluster mode: readings sent to and received from other instances,
    /// and readings or messages the bus could not carry.
    pub bus_sent: AtomicU64,
    pub bus_received: AtomicU64,
    pub bus_dropped: AtomicU64,
    pub bus_rejected: AtomicU64,
    /// Control messages (disable, takeover) that could not be sent or
    /// handled.
    pub bus_control_dropped: AtomicU64,
    /// 1 while this instance runs the background work (retention) that
    /// only one instance per database may run.
    pub background_leader: AtomicU64,
    /// 1 while this instance expires the commands that no instance holds
    /// (cluster mode only).
    pub command_sweep_leader: AtomicU64,
    /// Devices this instance follows on the bus for its own viewers.
    pub bus_subscriptions: AtomicU64,
    pub write_batch: BatchHistogram,
    pub write_seconds: LatencyHistogram,
    /// Measured per batch from the batch's earliest message, so it errs on
    /// the slow side.
    pub push_seconds: LatencyHistogram,
    rejected_by_device: DeviceCounts,
    /// Cluster mode: what other instances last said of their own counters.
    elsewhere: Mutex<HashMap<String, Elsewhere>>,
}

/// The most other instances whose counters are kept; a word from any
/// further one is ignored (and logged by the bus).
pub const MAX_PEERS: usize = 256;

/// Another instance's counters, as it last told them, believed until
/// `until`.
#[derive(Debug)]
struct Elsewhere {
    until: Instant,
    counters: Counters,
    rejected: HashMap<String, u64>,
}

/// Adds `more` to `sum`, field by field: counters of several instances
/// make the cluster's.
pub fn add_counters(sum: &mut Counters, more: &Counters) {
    sum.messages += more.messages;
    sum.received += more.received;
    sum.stored += more.stored;
    sum.rejected += more.rejected;
    sum.dropped += more.dropped;
    sum.refused += more.refused;
    sum.connected += more.connected;
}

/// Whether a series only grows or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One plain counter or gauge as `/metrics` shows it: name, kind, help,
/// and where its value lives.
struct Plain {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    value: fn(&Metrics) -> &AtomicU64,
}

/// Every plain counter and gauge, declared once. Kept as one row per
/// series: a table reads best as a table.
#[rustfmt::skip]
const PLAIN: &[Plain] = &[
    Plain { name: "sightline_messages_total", kind: Kind::Counter, help: "MQTT messages and HTTP ingest requests that reached ingest.", value: |m| &m.messages },
    Plain { name: "sightline_readings_received_total", kind: Kind::Counter, help: "Readings decoded from valid messages.", value: |m| &m.received },
    Plain { name: "sightline_readings_stored_total", kind: Kind::Counter, help: "Readings committed to the database.", value: |m| &m.stored },
    Plain { name: "sightline_rejected_total", kind: Kind::Counter, help: "Messages or fields refused as invalid.", value: |m| &m.rejected },
    Plain { name: "sightline_readings_dropped_total", kind: Kind::Counter, help: "Valid readings dropped because the writer was saturated.", value: |m| &m.dropped },
    Plain { name: "sightline_readings_redelivered_total", kind: Kind::Counter, help: "Readings sent again after a lost PUBACK that were already stored, acknowledged without storing them twice (--redelivery-window).", value: |m| &m.redelivered },
    Plain { name: "sightline_pruned_readings_total", kind: Kind::Counter, help: "Raw readings deleted by retention (--retain-raw).", value: |m| &m.pruned_readings },
    Plain { name: "sightline_pruned_rollups_total", kind: Kind::Counter, help: "Rollup rows deleted by retention (--retain-rollups).", value: |m| &m.pruned_rollups },
    Plain { name: "sightline_pruned_commands_total", kind: Kind::Counter, help: "Finished commands deleted by retention (kept as long as raw readings).", value: |m| &m.pruned_commands },
    Plain { name: "sightline_desired_set_total", kind: Kind::Counter, help: "Desired states set by operators (PUT /api/devices/{id}/desired or the device page).", value: |m| &m.desired_set },
    Plain { name: "sightline_feed_messages_total", kind: Kind::Counter, help: "Messages of committed readings (one per device and commit) published on sensor/<device> for service accounts.", value: |m| &m.feed_messages },
    Plain { name: "sightline_feed_subscriptions", kind: Kind::Gauge, help: "Subscriptions service accounts hold to the feed of committed readings.", value: |m| &m.feed_subscriptions },
    Plain { name: "sightline_feed_dropped_total", kind: Kind::Counter, help: "Feed messages not delivered because a service account's queue was full (--max-feed-queue).", value: |m| &m.feed_dropped },
    Plain { name: "sightline_desired_acknowledged_total", kind: Kind::Counter, help: "Desired-state messages devices acknowledged with a PUBACK.", value: |m| &m.desired_acked },
    Plain { name: "sightline_viewers", kind: Kind::Gauge, help: "Live WebSocket viewers connected.", value: |m| &m.viewers },
    Plain { name: "sightline_viewers_refused_total", kind: Kind::Counter, help: "Live sockets refused because the account held --max-live-sockets-per-account.", value: |m| &m.viewers_refused },
    Plain { name: "sightline_http_over_capacity_total", kind: Kind::Counter, help: "HTTP connections closed at once at --max-http-connections.", value: |m| &m.http_over_capacity },
    Plain { name: "sightline_live_skipped_readings_total", kind: Kind::Counter, help: "Readings skipped for viewers that fell behind.", value: |m| &m.live_skipped },
    Plain { name: "sightline_live_pending_bytes", kind: Kind::Gauge, help: "Bytes waiting in live viewers' outboxes.", value: |m| &m.live_pending_bytes },
    Plain { name: "sightline_bus_sent_readings_total", kind: Kind::Counter, help: "Committed readings published on the bus for viewers on other instances.", value: |m| &m.bus_sent },
    Plain { name: "sightline_bus_received_readings_total", kind: Kind::Counter, help: "Readings received from other instances for this instance's viewers.", value: |m| &m.bus_received },
    Plain { name: "sightline_bus_dropped_readings_total", kind: Kind::Counter, help: "Committed readings not published on the bus (its queue full or NATS unreachable); viewers elsewhere backfill them.", value: |m| &m.bus_dropped },
    Plain { name: "sightline_bus_rejected_total", kind: Kind::Counter, help: "Bus messages that were not valid readings.", value: |m| &m.bus_rejected },
    Plain { name: "sightline_bus_control_dropped_total", kind: Kind::Counter, help: "Disable, takeover or command messages between instances that could not be sent or handled.", value: |m| &m.bus_control_dropped },
    Plain { name: "sightline_bus_subscriptions", kind: Kind::Gauge, help: "Bus subscriptions held for this instance's viewers.", value: |m| &m.bus_subscriptions },
    Plain { name: "sightline_background_leader", kind: Kind::Gauge, help: "1 while this instance holds the database's background lock and runs retention.", value: |m| &m.background_leader },
    Plain { name: "sightline_command_sweep_leader", kind: Kind::Gauge, help: "1 while this instance holds the lock to expire commands that no instance holds (cluster mode).", value: |m| &m.command_sweep_leader },
    Plain { name: "sightline_devices_connected", kind: Kind::Gauge, help: "Devices connected and logged in.", value: |m| &m.edge.sessions },
    Plain { name: "sightline_edge_logins_refused_total", kind: Kind::Counter, help: "CONNECTs refused for unknown, wrong or disabled credentials.", value: |m| &m.edge.logins_refused },
    Plain { name: "sightline_edge_denied_total", kind: Kind::Counter, help: "Publishes or subscriptions outside a device's own topics.", value: |m| &m.edge.denied },
    Plain { name: "sightline_edge_throttled_total", kind: Kind::Counter, help: "Times a device above the publish rate was slowed (never disconnected).", value: |m| &m.edge.throttled },
    Plain { name: "sightline_edge_subscriptions_refused_total", kind: Kind::Counter, help: "Filters refused because the session held --max-subscriptions.", value: |m| &m.edge.subscriptions_refused },
    Plain { name: "sightline_edge_subscribe_abuse_total", kind: Kind::Counter, help: "Sessions closed for too many filters in one SUBSCRIBE or too many SUBSCRIBEs.", value: |m| &m.edge.subscribe_abuse },
    Plain { name: "sightline_edge_device_connections_refused_total", kind: Kind::Counter, help: "CONNECTs refused because the device held --max-connections-per-device.", value: |m| &m.edge.device_connections_refused },
    Plain { name: "sightline_edge_packet_timeouts_total", kind: Kind::Counter, help: "Connections closed because a begun packet was not finished in --packet-timeout-secs.", value: |m| &m.edge.packet_timeouts },
    Plain { name: "sightline_store_failing", kind: Kind::Gauge, help: "1 while the database refuses writes and the writer is retrying.", value: |m| &m.store_failing },
    Plain { name: "sightline_series_refused_total", kind: Kind::Counter, help: "Readings refused because their device held --max-series-per-device other metrics.", value: |m| &m.series_refused },
    Plain { name: "sightline_edge_too_large_total", kind: Kind::Counter, help: "Packets larger than the packet limit.", value: |m| &m.edge.too_large },
    Plain { name: "sightline_edge_over_capacity_total", kind: Kind::Counter, help: "CONNECTs refused at the connection limit.", value: |m| &m.edge.over_capacity },
    Plain { name: "sightline_edge_handshake_timeouts_total", kind: Kind::Counter, help: "Sockets that sent no CONNECT or finished no TLS handshake in time.", value: |m| &m.edge.handshake_timeouts },
    Plain { name: "sightline_edge_protocol_errors_total", kind: Kind::Counter, help: "Connections closed for malformed packets or protocol violations.", value: |m| &m.edge.protocol_errors },
    Plain { name: "sightline_edge_keepalive_expired_total", kind: Kind::Counter, help: "Sessions closed after 1.5 x keep-alive of silence.", value: |m| &m.edge.keepalive_expired },
    Plain { name: "sightline_edge_wills_total", kind: Kind::Counter, help: "Last Wills published.", value: |m| &m.edge.wills },
    Plain { name: "sightline_edge_sessions_resumed_total", kind: Kind::Counter, help: "Persistent MQTT sessions taken up by a device that came back (CONNACK session present).", value: |m| &m.edge.sessions_resumed },
    Plain { name: "sightline_edge_sessions_dropped_total", kind: Kind::Counter, help: "Stored MQTT sessions dropped because their device kept more than --max-connections-per-device of them.", value: |m| &m.edge.sessions_dropped },
    Plain { name: "sightline_edge_duplicates_total", kind: Kind::Counter, help: "QoS 1 and 2 publishes sent again (DUP) under a packet id already taken: acknowledged, not stored twice.", value: |m| &m.edge.duplicates },
    Plain { name: "sightline_http_ingest_requests_total", kind: Kind::Counter, help: "HTTP ingest requests from authenticated devices.", value: |m| &m.http_ingest.requests },
    Plain { name: "sightline_http_ingest_stored_total", kind: Kind::Counter, help: "HTTP ingest requests committed and answered 200.", value: |m| &m.http_ingest.stored },
    Plain { name: "sightline_http_ingest_unauthorized_total", kind: Kind::Counter, help: "HTTP ingest requests with missing, wrong, disabled or deleted device credentials.", value: |m| &m.http_ingest.unauthorized },
    Plain { name: "sightline_http_ingest_throttled_total", kind: Kind::Counter, help: "HTTP ingest requests refused with 429 above the device's --max-publish-rate.", value: |m| &m.http_ingest.throttled },
    Plain { name: "sightline_commands_accepted_total", kind: Kind::Counter, help: "Commands to devices accepted from operators.", value: |m| &m.commands.accepted },
    Plain { name: "sightline_commands_sent_total", kind: Kind::Counter, help: "Commands handed to the broker for a subscribed device.", value: |m| &m.commands.sent },
    Plain { name: "sightline_commands_delivered_total", kind: Kind::Counter, help: "Commands the device acknowledged.", value: |m| &m.commands.delivered },
    Plain { name: "sightline_commands_answered_total", kind: Kind::Counter, help: "Two-way commands the device answered with a result.", value: |m| &m.commands.answered },
    Plain { name: "sightline_commands_failed_total", kind: Kind::Counter, help: "Commands answered with an error or not sendable.", value: |m| &m.commands.failed },
    Plain { name: "sightline_commands_expired_total", kind: Kind::Counter, help: "Commands not delivered within their TTL or not answered in time.", value: |m| &m.commands.expired },
    Plain { name: "sightline_commands_queue_full_total", kind: Kind::Counter, help: "Commands refused because --max-session-queue commands already waited for their offline device (also counted as refused).", value: |m| &m.commands.queue_full },
    Plain { name: "sightline_commands_refused_total", kind: Kind::Counter, help: "Commands refused: unknown device, invalid name or params, too large.", value: |m| &m.commands.refused },
    Plain { name: "sightline_command_answers_rejected_total", kind: Kind::Counter, help: "Device answers for unknown, finished or expired commands, or unreadable.", value: |m| &m.commands.bad_answers },
    Plain { name: "sightline_command_save_errors_total", kind: Kind::Counter, help: "Command changes that could not be written to the database.", value: |m| &m.commands.save_errors },
    Plain { name: "sightline_logins_total", kind: Kind::Counter, help: "Successful sign-ins.", value: |m| &m.auth.logins },
    Plain { name: "sightline_login_failures_total", kind: Kind::Counter, help: "Sign-ins refused for a wrong name or password.", value: |m| &m.auth.login_failures },
    Plain { name: "sightline_login_throttled_total", kind: Kind::Counter, help: "Sign-ins refused unchecked after too many recent failures of the account or address.", value: |m| &m.auth.login_throttled },
    Plain { name: "sightline_http_unauthenticated_total", kind: Kind::Counter, help: "Web requests without a valid session or API token.", value: |m| &m.auth.unauthenticated },
    Plain { name: "sightline_http_forbidden_total", kind: Kind::Counter, help: "Web requests refused because the account's role is too low.", value: |m| &m.auth.forbidden },
    Plain { name: "sightline_api_tokens_refused_total", kind: Kind::Counter, help: "API tokens refused because the account already held --max-tokens-per-account.", value: |m| &m.auth.tokens_refused },
    Plain { name: "sightline_http_csrf_refused_total", kind: Kind::Counter, help: "State-changing web requests refused because they came from another origin.", value: |m| &m.auth.csrf_refused },
    Plain { name: "sightline_audit_errors_total", kind: Kind::Counter, help: "Audit events that could not be written to the database.", value: |m| &m.auth.audit_errors },
];

/// One histogram as `/metrics` shows it.
struct Distribution {
    name: &'static str,
    help: &'static str,
    value: fn(&Metrics) -> &Histogram,
}

/// Every histogram, declared once.
#[rustfmt::skip]
const DISTRIBUTIONS: &[Distribution] = &[
    Distribution { name: "sightline_write_batch_readings", help: "Readings per committed write transaction.", value: |m| &m.write_batch },
    Distribution { name: "sightline_write_seconds", help: "Time to write and commit one batch.", value: |m| &m.write_seconds },
    Distribution { name: "sightline_push_latency_seconds", help: "From ingest receiving a message to its readings reaching a viewer's socket.", value: |m| &m.push_seconds },
];

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` rejections, attributed to `device` when it is known.
    pub fn reject(&self, device: Option<&str>, n: u64) {
        Self::add(&self.rejected, n);
        if let Some(device) = device {
            self.rejected_by_device.add(device, n);
        }
    }

    /// Counts one refusal at the edge under `kind` (one of the counters in
    /// [`EdgeCounters`]), attributed to `device` when it is known.
    pub fn refuse(&self, kind: &AtomicU64, device: Option<&str>) {
        Self::add(kind, 1);
        if let Some(device) = device {
            self.edge.refused_by_device.add(device, 1);
        }
    }

    /// Counts a refused login under `kind` and remembers `why` (at time
    /// `at`) as the device's last refusal, for its page.
    pub fn refuse_login(&self, kind: &AtomicU64, device: Option<&str>, why: &'static str, at: i64) {
        self.refuse(kind, device);
        let Some(device) = device else {
            return;
        };
        let Ok(mut last) = self.edge.last_refusal.lock() else {
            return;
        };
        // Bounded like the counts: only names that got a count of their own.
        if last.len() < MAX_TRACKED_DEVICES || last.contains_key(device) {
            last.insert(device.to_owned(), (why, at));
        }
    }

    /// Why `device`'s login was last refused, and how often it was refused
    /// since start.
    pub fn refusal(&self, device: &str) -> Option<app::model::Refusal> {
        let (why, at) = *self.edge.last_refusal.lock().ok()?.get(device)?;
        Some(app::model::Refusal {
            count: self.edge.refused_by_device.get(device),
            why: why.to_owned(),
            at,
        })
    }

    /// Rejections attributed to `device` since start.
    pub fn rejected_for(&self, device: &str) -> u64 {
        self.rejected_by_device.get(device)
    }

    /// Records what instance `peer` says of its own counters, believed
    /// until `until`. Returns false (and records nothing) when
    /// [`MAX_PEERS`] other instances are already known.
    pub fn set_elsewhere(
        &self,
        peer: &str,
        until: Instant,
        counters: Counters,
        rejected: impl IntoIterator<Item = (String, u64)>,
    ) -> bool {
        let Ok(mut peers) = self.elsewhere.lock() else {
            return false;
        };
        let now = Instant::now();
        peers.retain(|_, e| e.until > now);
        if peers.len() >= MAX_PEERS && !peers.contains_key(peer) {
            return false;
        }
        let rejected = rejected.into_iter().take(MAX_TRACKED_DEVICES).collect();
        peers.insert(
            peer.to_owned(),
            Elsewhere {
                until,
                counters,
                rejected,
            },
        );
        true
    }

    /// Runs `f` over every other instance whose word still holds.
    fn each_elsewhere(&self, mut f: impl FnMut(&Elsewhere)) {
        let now = Instant::now();
        if let Ok(peers) = self.elsewhere.lock() {
            peers.values().filter(|e| e.until > now).for_each(&mut f);
        }
    }

    /// The counters of the whole cluster: this instance's, plus what every
    /// other live instance last said of its own. On one instance alone,
    /// the same as [`Metrics::snapshot`].
    pub fn everywhere(&self) -> Counters {
        let mut sum = self.snapshot();
        self.each_elsewhere(|e| add_counters(&mut sum, &e.counters));
        sum
    }

    /// Rejections attributed to `device` on every instance.
    pub fn rejected_everywhere(&self, device: &str) -> u64 {
        let mut n = self.rejected_for(device);
        self.each_elsewhere(|e| n += e.rejected.get(device).copied().unwrap_or(0));
        n
    }

    /// [`Metrics::rejected_among`] for the whole cluster.
    pub fn rejected_among_everywhere(&self, devices: Option<&[String]>) -> Vec<(String, u64)> {
        let mut sum: std::collections::BTreeMap<String, u64> =
            self.rejected_among(devices).into_iter().collect();
        self.each_elsewhere(|e| match devices {
            Some(list) => {
                for d in list {
                    if let Some(n) = e.rejected.get(d) {
                        *sum.entry(d.clone()).or_default() += n;
                    }
                }
            }
            None => {
                for (d, n) in &e.rejected {
                    *sum.entry(d.clone()).or_default() += n;
                }
            }
        });
        sum.into_iter().collect()
    }

    /// Per-device rejection counts for the given devices (or all of them),
    /// skipping devices with none.
    pub fn rejected_among(&self, devices: Option<&[String]>) -> Vec<(String, u64)> {
        self.rejected_by_device.among(devices)
    }

    pub fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let e = &self.edge;
        Counters {
            messages: get(&self.messages),
            received: get(&self.received),
            stored: get(&self.stored),
            rejected: get(&self.rejected),
            dropped: get(&self.dropped),
            refused: get(&e.logins_refused)
                + get(&e.denied)
                + get(&e.subscribe_abuse)
                + get(&e.device_connections_refused)
                + get(&e.too_large)
                + get(&e.over_capacity),
            connected: get(&e.sessions),
        }
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(8192);
        for series in PLAIN {
            let (name, help) = (series.name, series.help);
            let kind = match series.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let value = (series.value)(self).load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        // Tasks alive in the runtime: a leak of sessions, sockets or timers
        // shows here first (the soak benchmark reads its slope).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let name = "sightline_runtime_tasks";
            let tasks = runtime.metrics().num_alive_tasks();
            let _ = writeln!(
                out,
                "# HELP {name} Tasks alive in the server's async runtime.\n# TYPE {name} gauge\n{name} {tasks}"
            );
        }
        let refused = self.edge.refused_by_device.among(None);
        if !refused.is_empty() {
            let name = "sightline_device_refused_total";
            let _ = writeln!(
                out,
                "# HELP {name} Logins, publishes and subscriptions refused at the edge, per device.\n# TYPE {name} counter"
            );
            // Device ids are restricted to characters that are safe in a
            // label value (see `names::valid_name`).
            for (device, n) in refused {
                let _ = writeln!(out, "{name}{{device=\"{device}\"}} {n}");
            }
        }
        for d in DISTRIBUTIONS {
            (d.value)(self).render(&mut out, d.name, d.help);
        }
        out
    }
}

/// Reads one unlabelled counter or gauge from Prometheus text, as
/// [`Metrics::prometheus`] renders it.
pub fn read_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A histogram with fixed bucket bounds, updated with atomics only.
/// Observations are integers in a unit of the owner's choosing (readings,
/// microseconds); `divisor` converts them to the exposed unit.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Divides an observation into the exposed unit (1e6 for microseconds
    /// to seconds); a divisor, not a factor, so that bounds print exactly.
    divisor: f64,
    /// One counter per bound plus one for `+Inf`; not cumulative.
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

/// Latency bounds in microseconds, from 0.25 ms to 10 s.
const LATENCY_BOUNDS_US: &[u64] = &[
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// Batch-size bounds in readings.
const BATCH_BOUNDS: &[u64] = &[1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000];

/// Write transaction sizes, in readings.
#[derive(Debug)]
pub struct BatchHistogram(Histogram);

impl Default for BatchHistogram {
    fn default() -> Self {
        Self(Histogram::new(BATCH_BOUNDS, 1.0))
    }
}

impl std::ops::Deref for BatchHistogram {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// Durations, exposed in seconds.
#[derive(Debug)]
pub struct LatencyHistogram(Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self(Histogram::new(LATENCY_BOUNDS_US, 1e6))
    }
}

impl std::ops::Deref for LatencyHistogram {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

impl Histogram {
    pub fn new(bounds: &'static [u64], divisor: f64) -> Self {
        Self {
            bounds,
            divisor,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records `n` observations of `value`.
    pub fn observe_n(&self, value: u64, n: u64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum
            .fetch_add(value.saturating_mul(n), Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    pub fn observe(&self, value: u64) {
        self.observe_n(value, 1);
    }

    /// Records a duration in microseconds.
    pub fn observe_duration(&self, d: Duration, n: u64) {
        self.observe_n(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), n);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{le=\"{}\"}} {cumulative}",
                        *b as f64 / self.divisor
                    );
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.divisor;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", self.count());
    }
}

/// Lets through at most `burst` log lines per `window` and counts the rest,
/// so a misbehaving device cannot flood the log while each kind of problem
/// still shows up.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(LimiterState {
                window_start: Instant::now(),
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// Returns `Some(suppressed)` when a line may be logged now, with the
    /// number of lines swallowed since the last one; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().ok()?;
        let now = Instant::now();
        if now.duration_since(s.window_start) >= self.window {
            s.window_start = now;
            s.used = 0;
        }
        if s.used < self.burst {
            s.used += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_what_it_swallows() {
        let limiter = LogLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        let limiter = LogLimiter::new(1, Duration::ZERO);
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), Some(0), "a new window starts at once");
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_the_exposition() {
        let m = Metrics::default();
        m.push_seconds
            .observe_duration(Duration::from_micros(300), 2);
        m.push_seconds.observe_duration(Duration::from_secs(60), 1);
        m.write_batch.observe(1);
        Metrics::add(&m.edge.sessions, 7);
        let text = m.prometheus();
        for line in [
            "sightline_push_latency_seconds_bucket{le=\"0.00025\"} 0",
            "sightline_push_latency_seconds_bucket{le=\"0.0005\"} 2",
            "sightline_push_latency_seconds_bucket{le=\"10\"} 2",
            "sightline_push_latency_seconds_bucket{le=\"+Inf\"} 3",
            "sightline_push_latency_seconds_count 3",
            "sightline_write_batch_readings_bucket{le=\"1\"} 1",
            "sightline_devices_connected 7",
            "# TYPE sightline_readings_stored_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(read_value(&text, "sightline_devices_connected"), Some(7));
        assert_eq!(
            read_value(&text, "sightline_devices"),
            None,
            "names match whole"
        );
    }

    #[test]
    fn per_device_rejections_are_bounded() {
        let m = Metrics::default();
        for i in 0..MAX_TRACKED_DEVICES + 5 {
            m.reject(Some(&format!("d{i}")), 1);
        }
        m.reject(None, 1);
        m.reject(Some("d0"), 2);
        assert_eq!(m.snapshot().rejected, MAX_TRACKED_DEVICES as u64 + 8);
        assert_eq!(m.rejected_for("d0"), 3);
        assert_eq!(m.rejected_for(&format!("d{}", MAX_TRACKED_DEVICES + 1)), 0);
    }
}
