//! Commands to devices, tracked to the end: accepted from an operator,
//! stored, published through the broker, acknowledged by the device,
//! answered, or expired.
//!
//! The state of every unfinished command lives here, in memory, behind one
//! lock; each change is also queued, in order, for a single task that writes
//! it to the database, so the stored row always ends at the newest state
//! even when two changes come close together. The edge reports what devices
//! do ([`Commands::subscribed`], [`Commands::delivered`], [`Commands::answer`]);
//! a timer task expires what waits too long. The broker only carries the
//! messages: it never sees the database.

pub mod cli;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use app::model::{Command, CommandRequest, CommandState};
use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish, PublishProperties};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::edge::acl;
use crate::ingest::now_ms;
use crate::metrics::{LogLimiter, Metrics};
use crate::store::{Store, StoreError};
use wire::{AnswerTopic, Refusal};

/// Why a command could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no device named {0:?}")]
    UnknownDevice(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a device's answer was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("{0}")]
    Unreadable(String),
    #[error("no command {0:?} for this device")]
    Unknown(String),
    #[error("command {0:?} is already {1}")]
    Finished(String, &'static str),
}

/// How often the timer looks for commands to expire when nothing else
/// wakes it sooner.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

/// Command changes kept for live viewers that read slowly; one that falls
/// further behind is told it lagged, and reloads its list.
const UPDATES_BUFFER: usize = 256;

/// Finished commands kept in memory for lists read while the saver is
/// still writing their final state.
const RECENTLY_FINISHED: usize = 256;

/// Which of a device's sessions receive commands, and on which topics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Subscribed to `command/<device>`.
    pub native: bool,
    /// Subscribed to ThingsBoard's `v1/devices/me/rpc/request/+`.
    pub thingsboard: bool,
}

impl Route {
    /// Whether any command reaches the session.
    pub fn any(self) -> bool {
        self.native || self.thingsboard
    }

    /// The commands either route receives.
    pub fn or(self, other: Self) -> Self {
        Self {
            native: self.native || other.native,
            thingsboard: self.thingsboard || other.thingsboard,
        }
    }
}

/// One message for the router: a command on one of its topics.
#[derive(Debug)]
struct Outgoing {
    topic: String,
    payload: Vec<u8>,
    id: String,
}

#[derive(Debug, Default)]
struct State {
    /// Unfinished commands by id.
    active: HashMap<String, Command>,
    /// The newest finished commands, so that a list read from the database
    /// a moment before the saver writes a final state still shows it.
    finished: std::collections::VecDeque<Command>,
    /// For each device, its sessions that subscribed to commands.
    routes: HashMap<String, HashMap<u64, Route>>,
}

impl State {
    /// Moves a command that has just finished out of `active`.
    fn retire(&mut self, id: &str) {
        if let Some(c) = self.active.remove(id) {
            if self.finished.len() == RECENTLY_FINISHED {
                self.finished.pop_front();
            }
            self.finished.push_back(c);
        }
    }

    /// The newest state of `id` held in memory, if any.
    fn current(&self, id: &str) -> Option<&Command> {
        self.active
            .get(id)
            .or_else(|| self.finished.iter().rev().find(|c| c.id == id))
    }

    fn route(&self, device: &str) -> Route {
        self.routes
            .get(device)
            .map(|sessions| sessions.values().copied().fold(Route::default(), Route::or))
            .unwrap_or_default()
    }
}

/// The command service. One per server; the edge and the HTTP API share it.
pub struct Commands {
    store: Store,
    metrics: Arc<Metrics>,
    /// The service's own link to the broker's router, for publishing.
    link: tokio::sync::Mutex<(LinkTx, LinkRx)>,
    state: Mutex<State>,
    saves: mpsc::UnboundedSender<Command>,
    updates: broadcast::Sender<Command>,
    timer: Notify,
    /// The largest request payload, the same limit devices' messages have.
    max_bytes: usize,
    /// Bounds the log lines of refused answers.
    answer_log: LogLimiter,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands").finish_non_exhaustive()
    }
}

/// The task that writes command changes, in the order they happened.
pub struct Saver {
    rx: mpsc::UnboundedReceiver<Command>,
    store: Store,
    metrics: Arc<Metrics>,
}

impl Commands {
    /// Starts the service and picks up the commands that were unfinished
    /// when the server last stopped: persistent commands wait again for
    /// their device, two-way commands already delivered may still be
    /// answered, and the rest fail, since their device session is gone.
    pub async fn start(
        store: Store,
        broker: &Broker,
        metrics: Arc<Metrics>,
        max_bytes: usize,
    ) -> Result<(Arc<Self>, Saver), crate::broker::BrokerError> {
        let link = broker.link("sightline-commands")?;
        let (saves, rx) = mpsc::unbounded_channel();
        let (updates, _) = broadcast::channel(UPDATES_BUFFER);
        let commands = Arc::new(Self {
            store: store.clone(),
            metrics: metrics.clone(),
            link: tokio::sync::Mutex::new(link),
            state: Mutex::new(State::default()),
            saves,
            updates,
            timer: Notify::new(),
            max_bytes,
            answer_log: LogLimiter::new(20, Duration::from_secs(10)),
        });
        match store.unfinished_commands().await {
            Ok(unfinished) => commands.resume(unfinished),
            Err(e) => tracing::error!("cannot reload unfinished commands: {e}"),
        }
        Ok((commands, Saver { rx, store, metrics }))
    }

    fn resume(&self, unfinished: Vec<Command>) {
        let now = now_ms();
        let mut state = self.lock();
        for mut c in unfinished {
            match c.state {
                CommandState::Sent if c.persistent => {
                    c.state = CommandState::Queued;
                    self.changed(&c);
                }
                // Stored as they are: nothing to write again.
                CommandState::Queued if c.persistent => {}
                CommandState::Delivered => {}
                _ => {
                    self.finish(
                        &mut c,
                        CommandState::Failed,
                        now,
                        "the server restarted before the device acknowledged it".into(),
                    );
                    continue;
                }
            }
            state.active.insert(c.id.clone(), c);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data that is
        // still consistent enough to finish commands with.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a change: queues it for the database and tells live viewers.
    /// Called with the state lock held, so changes are queued in the order
    /// they were made.
    fn changed(&self, c: &Command) {
        let _ = self.saves.send(c.clone());
        let _ = self.updates.send(c.clone());
    }

    /// Moves `c` to a final state with a reason and counts it.
    fn finish(&self, c: &mut Command, state: CommandState, now: i64, why: String) {
        c.state = state;
        c.completed_at = Some(now);
        c.error = Some(why);
        let counter = match state {
            CommandState::Expired => &self.metrics.commands.expired,
            _ => &self.metrics.commands.failed,
        };
        Metrics::add(counter, 1);
        self.changed(c);
    }

    /// Live changes of every command.
    pub fn updates(&self) -> broadcast::Receiver<Command> {
        self.updates.subscribe()
    }

    /// Accepts an operator's command: checks it, stores it, and sends it if
    /// the device is subscribed. A command that cannot be sent now waits if
    /// it is persistent and fails at once otherwise, so the operator knows.
    pub async fn send(&self, device: &str, req: CommandRequest) -> Result<Command, CommandError> {
        let refused = |e: CommandError| {
            Metrics::add(&self.metrics.commands.refused, 1);
            e
        };
        // Version 7: time-ordered, so commands created in the same
        // millisecond still list in the order they were sent.
        let id = uuid::Uuid::now_v7().simple().to_string();
        let command = wire::accept(device, req, id, now_ms(), self.max_bytes)
            .map_err(|e| refused(e.into()))?;
        // A persistent command is stored before anything else happens to
        // it, so that it waits for its device across a restart. Any other
        // command goes out at once and reaches the database through the
        // saver, in order: waiting here for SQLite's write lock, which the
        // batch writer holds while it commits readings, made the
        // operator's slowest pings wait up to a second before they were
        // even sent (BENCHMARKS.md). Such a command could not outlive a
        // restart anyway.
        let known = if command.persistent {
            self.store.save_command(&command).await?
        } else {
            self.store.device_exists(device).await?
        };
        if !known {
            return Err(refused(CommandError::UnknownDevice(device.to_owned())));
        }
        Metrics::add(&self.metrics.commands.accepted, 1);
        let (command, publish) = {
            let mut state = self.lock();
            let route = state.route(device);
            let mut c = command;
            let publish = if route.any() {
                Some(self.mark_sent(&mut c, route))
            } else if c.persistent {
                self.changed(&c);
                None
            } else {
                self.finish(
                    &mut c,
                    CommandState::Failed,
                    now_ms(),
                    format!(
                        "{device} is not connected and subscribed to its commands; \
                         send it as persistent to wait for the device"
                    ),
                );
                None
            };
            state.active.insert(c.id.clone(), c.clone());
            if c.is_final() {
                state.retire(&c.id);
            } else {
                self.timer.notify_one();
            }
            (c, publish)
        };
        if let Some(publish) = publish {
            self.publish(publish).await;
        }
        Ok(command)
    }

    /// Marks `c` sent and returns the messages that send it.
    fn mark_sent(&self, c: &mut Command, route: Route) -> Vec<Outgoing> {
        c.state = CommandState::Sent;
        c.sent_at = Some(now_ms());
        Metrics::add(&self.metrics.commands.sent, 1);
        self.changed(c);
        let (native, thingsboard) = acl::command_topics(&c.device);
        let mut out = Vec::with_capacity(2);
        if route.native {
            out.push(Outgoing {
                topic: native,
                payload: wire::request(c),
                id: c.id.clone(),
            });
        }
        if route.thingsboard {
            out.push(Outgoing {
                topic: thingsboard,
                payload: wire::thingsboard_request(c),
                id: c.id.clone(),
            });
        }
        out
    }

    /// Publishes into the router. The command id travels as MQTT 5
    /// correlation data, which the router keeps with the message; the edge
    /// reads it to track delivery, and passes it on to MQTT 5 devices.
    async fn publish(&self, messages: Vec<Outgoing>) {
        let mut link = self.link.lock().await;
        for Outgoing { topic, payload, id } in messages {
            let publish = Publish::new(Bytes::from(topic), Bytes::from(payload), false);
            let properties = PublishProperties {
                correlation_data: Some(Bytes::from(id)),
                ..PublishProperties::default()
            };
            if let Err(e) = link
                .0
                .send(Packet::Publish(publish, Some(properties)))
                .await
            {
                // The session will not see it; the command expires at its
                // timeout and says so.
                tracing::error!("cannot hand a command to the broker: {e}");
            }
        }
    }

    /// A session of `device` subscribed to its commands: sends everything
    /// that was waiting for it.
    pub async fn subscribed(&self, device: &str, session: u64, route: Route) {
        let publish: Vec<_> = {
            let mut state = self.lock();
            let sessions = state.routes.entry(device.to_owned()).or_default();
            let new_session = !sessions.contains_key(&session);
            let entry = sessions.entry(session).or_default();
            *entry = entry.or(route);
            let route = state.route(device);
            // A new session also gets the persistent commands sent to an
            // older one and not acknowledged: that one may be a dead
            // connection the keep-alive has not caught yet.
            let mut waiting: Vec<&mut Command> = state
                .active
                .values_mut()
                .filter(|c| {
                    c.device == device
                        && (c.state == CommandState::Queued
                            || (new_session && c.persistent && c.state == CommandState::Sent))
                })
                .collect();
            waiting.sort_by_key(|c| c.created_at);
            waiting
                .into_iter()
                .flat_map(|c| self.mark_sent(c, route))
                .collect()
        };
        if !publish.is_empty() {
            self.publish(publish).await;
        }
    }

    /// A session of `device` ended or unsubscribed from its commands. Once
    /// no session of the device receives commands, what was sent and not
    /// acknowledged waits again if persistent, and fails otherwise.
    pub fn unsubscribed(&self, device: &str, session: u64) {
        let mut state = self.lock();
        let Some(sessions) = state.routes.get_mut(device) else {
            return;
        };
        if sessions.remove(&session).is_none() {
            return;
        }
        if !sessions.is_empty() {
            return;
        }
        state.routes.remove(device);
        let now = now_ms();
        let mut done = Vec::new();
        for c in state.active.values_mut() {
            if c.device != device || c.state != CommandState::Sent {
                continue;
            }
            if c.persistent {
                c.state = CommandState::Queued;
                self.changed(c);
            } else {
                self.finish(
                    c,
                    CommandState::Failed,
                    now,
                    "the device disconnected before acknowledging it".into(),
                );
                done.push(c.id.clone());
            }
        }
        for id in done {
            state.retire(&id);
        }
    }

    /// The device acknowledged command `id` (or, at QoS 0, it was written
    /// to its socket). A one-way command is then complete.
    pub fn delivered(&self, device: &str, id: &str) {
        let mut state = self.lock();
        let Some(c) = state.active.get_mut(id) else {
            return;
        };
        // A command put back in the queue after its session ended (so
        // sent once) may still be acknowledged, late, by the device that
        // got it.
        if c.device != device || c.sent_at.is_none() || c.state == CommandState::Delivered {
            return;
        }
        let now = now_ms();
        c.state = CommandState::Delivered;
        c.delivered_at = Some(now);
        Metrics::add(&self.metrics.commands.delivered, 1);
        if !c.two_way {
            c.completed_at = Some(now);
        }
        self.changed(c);
        if !c.two_way {
            state.retire(id);
        }
    }

    /// Takes a device's answer from `topic`. Answers that match nothing
    /// waiting are refused with the reason, and counted.
    pub async fn answer(
        &self,
        device: &str,
        topic: &AnswerTopic,
        correlation: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), AnswerError> {
        let result = self.take_answer(device, topic, correlation, payload).await;
        if let Err(e) = &result {
            Metrics::add(&self.metrics.commands.bad_answers, 1);
            if let Some(suppressed) = self.answer_log.allow() {
                tracing::info!(device, suppressed, "refused a command answer: {e}");
            }
        }
        result
    }

    async fn take_answer(
        &self,
        device: &str,
        topic: &AnswerTopic,
        correlation: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), AnswerError> {
        if payload.len() > self.max_bytes {
            return Err(AnswerError::Unreadable(format!(
                "the answer is {} bytes; the limit is {}",
                payload.len(),
                self.max_bytes
            )));
        }
        let answer = wire::answer(topic, correlation, payload).map_err(AnswerError::Unreadable)?;
        {
            let mut state = self.lock();
            // Any command sent at least once may be answered, even one
            // waiting again after its device dropped: the device got it.
            if let Some(c) = state
                .active
                .get_mut(&answer.id)
                .filter(|c| c.device == device && c.two_way && c.sent_at.is_some())
            {
                let now = now_ms();
                // At QoS 0 the answer may be the first sign of delivery.
                c.delivered_at.get_or_insert(now);
                c.completed_at = Some(now);
                match answer.outcome {
                    Ok(result) => {
                        c.state = CommandState::Answered;
                        c.response = Some(result);
                        Metrics::add(&self.metrics.commands.answered, 1);
                    }
                    Err(why) => {
                        c.state = CommandState::Failed;
                        c.error = Some(format!("the device answered: {why}"));
                        Metrics::add(&self.metrics.commands.failed, 1);
                    }
                }
                self.changed(c);
                state.retire(&answer.id);
                return Ok(());
            }
        }
        // Not waiting: say whether it finished (or expired) or never was.
        let known = self
            .store
            .command(&answer.id)
            .await
            .ok()
            .flatten()
            .filter(|c| c.device == device);
        match known {
            Some(c) => Err(AnswerError::Finished(answer.id, c.state.label())),
            None => Err(AnswerError::Unknown(answer.id)),
        }
    }

    /// Expires commands that waited too long, until `stop` fires: queued
    /// persistent commands past their TTL, and sent commands past their
    /// timeout without an acknowledgement (one-way) or an answer (two-way).
    /// A persistent command not acknowledged in time, but still within its
    /// TTL, is sent again instead (its session may be a dead connection).
    pub async fn run_timer(&self, stop: CancellationToken) {
        loop {
            let (next, again) = self.expire(now_ms());
            if !again.is_empty() {
                self.publish(again).await;
            }
            let sleep = next
                .map(|at| Duration::from_millis((at - now_ms()).clamp(1, 1000) as u64))
                .unwrap_or(MAX_TIMER_SLEEP);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
                () = self.timer.notified() => {}
            }
        }
    }

    /// Expires what is due at `now`; returns the next deadline and the
    /// messages of persistent commands to send again.
    fn expire(&self, now: i64) -> (Option<i64>, Vec<Outgoing>) {
        let mut state = self.lock();
        let mut next: Option<i64> = None;
        let mut due = Vec::new();
        for c in state.active.values() {
            match deadline(c) {
                Some(at) if at <= now => due.push(c.id.clone()),
                Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                None => {}
            }
        }
        let mut again = Vec::new();
        for id in due {
            let Some(device) = state.active.get(&id).map(|c| c.device.clone()) else {
                continue;
            };
            let route = state.route(&device);
            let Some(c) = state.active.get_mut(&id) else {
                continue;
            };
            if c.persistent && c.state == CommandState::Sent && now < c.created_at + c.ttl_ms {
                if route.any() {
                    again.extend(self.mark_sent(c, route));
                } else {
                    c.state = CommandState::Queued;
                    self.changed(c);
                }
                next = Some(next.map_or(now + 1, |n| n.min(now + 1)));
                continue;
            }
            let why = expiry_reason(c);
            self.finish(c, CommandState::Expired, now, why);
            state.retire(&id);
        }
        (next, again)
    }

    /// A device's newest commands, as they are this instant: the database
    /// may be a moment behind the saver, so what is held in memory (the
    /// unfinished commands and the newest finished ones) takes precedence,
    /// and commands not written yet are added.
    pub async fn recent(&self, device: &str, limit: u64) -> Result<Vec<Command>, StoreError> {
        let mut list = self.store.recent_commands(device, limit).await?;
        let state = self.lock();
        for c in &mut list {
            if let Some(live) = state.current(&c.id) {
                *c = live.clone();
            }
        }
        let unwritten: Vec<Command> = state
            .active
            .values()
            .chain(state.finished.iter())
            .filter(|c| c.device == device && !list.iter().any(|l| l.id == c.id))
            .cloned()
            .collect();
        if !unwritten.is_empty() {
            list.extend(unwritten);
            // Ids are time-ordered, so they break ties of one millisecond.
            list.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            list.truncate(limit as usize);
        }
        Ok(list)
    }

    /// One command, as it is this instant.
    pub async fn get(&self, id: &str) -> Result<Option<Command>, StoreError> {
        if let Some(c) = self.lock().current(id) {
            return Ok(Some(c.clone()));
        }
        self.store.command(id).await
    }
}

/// When `c` stops waiting: a queued command at the end of its TTL, a sent
/// one at its timeout for an acknowledgement (one-way) or an answer.
fn deadline(c: &Command) -> Option<i64> {
    match (c.state, c.sent_at) {
        (CommandState::Queued, _) => Some(c.created_at + c.ttl_ms),
        (CommandState::Sent | CommandState::Delivered, Some(sent)) => Some(sent + c.timeout_ms),
        _ => None,
    }
}

/// Why `c` expired at its [`deadline`].
fn expiry_reason(c: &Command) -> String {
    match c.state {
        CommandState::Queued => format!("not delivered within its TTL of {}", seconds(c.ttl_ms)),
        CommandState::Sent => format!("not acknowledged within {}", seconds(c.timeout_ms)),
        _ => format!("no answer within {}", seconds(c.timeout_ms)),
    }
}

/// "30 s", "1.5 s" or "2 h", for reasons a person reads.
fn seconds(ms: i64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 1000 == 0 => format!("{} s", ms / 1000),
        ms => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

impl Saver {
    /// Writes every change until `stop` fires, then writes what is still
    /// queued and returns. A change that cannot be written is logged and
    /// counted; the next change of the same command rewrites the whole row
    /// anyway.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                c = self.rx.recv() => c,
                () = stop.cancelled() => None,
            };
            let mut batch: Vec<Command> = first.into_iter().collect();
            while let Ok(c) = self.rx.try_recv() {
                batch.push(c);
            }
            if batch.is_empty() {
                return;
            }
            // Only the newest state of each command needs writing.
            let mut seen = std::collections::HashSet::new();
            let mut newest: Vec<Command> = batch
                .into_iter()
                .rev()
                .filter(|c| seen.insert(c.id.clone()))
                .collect();
            newest.reverse();
            for c in newest {
                if let Err(e) = self.store.save_command(&c).await {
                    Metrics::add(&self.metrics.commands.save_errors, 1);
                    tracing::error!(command = %c.id, "cannot store a command's state: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_state_durations_plainly() {
        assert_eq!(seconds(30_000), "30 s");
        assert_eq!(seconds(1_500), "1.5 s");
        assert_eq!(seconds(7_200_000), "2 h");
    }
}
