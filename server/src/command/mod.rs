//! Commands to devices, tracked to the end: accepted from an operator,
//! stored, published through the broker, acknowledged by the device,
//! answered, or expired.
//!
//! The state of every unfinished command lives in [`machine::Machine`], the
//! pure state machine, in memory behind one lock; each change it reports is
//! queued, in order, for a single task that writes it to the database, so
//! the stored row always ends at the newest state even when two changes
//! come close together. The edge reports what devices
//! do ([`Commands::subscribed`], [`Commands::delivered`], [`Commands::answer`]);
//! a timer task expires what waits too long. The broker only carries the
//! messages: it never sees the database.
//!
//! In cluster mode a command is handled by the instance where its device
//! subscribed to its commands. An operator's command accepted on another
//! instance is stored first and then asked of that instance over the bus;
//! with no instance holding the device, a persistent command stays stored
//! as queued, and the instance the device subscribes on next takes it up
//! from the database ([`Machine::adopt`]). One instance at a time, under a
//! database lock, expires the stored commands that nobody holds
//! ([`Commands::run_sweep`]).

pub mod cli;
pub mod machine;
pub mod wire;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use app::model::{Command, CommandRequest, CommandState};
use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish, PublishProperties};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::acl::{AnswerTopic, Route};
use crate::broker::Broker;
use crate::bus::{Asked, Bus, Remote};
use crate::clock::Clock;
use crate::metrics::{LogLimiter, Metrics};
use crate::store::{Store, StoreError};
use machine::{Effects, Machine, Outgoing};
use wire::Refusal;

/// Why a command could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no device named {0:?}")]
    UnknownDevice(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(
        "{device} already has {max} commands waiting for it to come back (--max-session-queue)"
    )]
    QueueFull { device: String, max: usize },
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
/// wakes it sooner; also how often the cluster's sweep runs.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

/// How long past its deadline the cluster's sweep leaves a sent command to
/// the instance that holds it, whose own timer expires it first.
const SWEEP_GRACE_MS: i64 = 5_000;

/// How long to wait before asking again when no instance held a device:
/// NATS spreads a new subscription to its other nodes a moment after it
/// is made, so a device that has just subscribed may not be found at once.
const ASK_AGAIN: Duration = Duration::from_millis(200);

/// Command changes kept for live viewers that read slowly; one that falls
/// further behind is told it lagged, and reloads its list.
const UPDATES_BUFFER: usize = 256;

/// The command service. One per server; the edge and the HTTP API share it.
pub struct Commands {
    store: Store,
    metrics: Arc<Metrics>,
    /// The service's own link to the broker's router, for publishing.
    link: tokio::sync::Mutex<(LinkTx, LinkRx)>,
    machine: Mutex<Machine>,
    saves: mpsc::UnboundedSender<Command>,
    updates: broadcast::Sender<Command>,
    timer: Notify,
    /// The largest request payload, the same limit devices' messages have.
    max_bytes: usize,
    /// The most commands that may wait for one offline device.
    max_waiting: usize,
    /// Bounds the log lines of refused answers.
    answer_log: LogLimiter,
    /// Where the service reads the time; tests use tokio's.
    clock: Clock,
    /// The bus to other instances, in cluster mode.
    bus: Option<Bus>,
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
    /// when the server last stopped (see [`Machine::resume`]).
    pub async fn start(
        store: Store,
        broker: &Broker,
        metrics: Arc<Metrics>,
        limits: (usize, usize),
        clock: Clock,
        bus: Option<Bus>,
    ) -> Result<(Arc<Self>, Saver), crate::broker::BrokerError> {
        let (max_bytes, max_waiting) = limits;
        let link = broker.link("sightline-commands")?;
        let (saves, rx) = mpsc::unbounded_channel();
        let (updates, _) = broadcast::channel(UPDATES_BUFFER);
        let commands = Arc::new(Self {
            store: store.clone(),
            metrics: metrics.clone(),
            link: tokio::sync::Mutex::new(link),
            machine: Mutex::new(Machine::default()),
            saves,
            updates,
            timer: Notify::new(),
            max_bytes,
            max_waiting,
            answer_log: LogLimiter::new(20, Duration::from_secs(10)),
            clock,
            bus,
        });
        // In cluster mode the unfinished commands belong to the instances
        // their devices are on; each is taken up where its device
        // subscribes next, and the sweep expires what nobody takes.
        if commands.bus.is_some() {
            return Ok((commands, Saver { rx, store, metrics }));
        }
        match store.unfinished_commands().await {
            Ok(unfinished) => {
                let now = commands.clock.now_ms();
                let mut machine = commands.lock();
                let fx = machine.resume(unfinished, now);
                commands.record(&fx);
            }
            Err(e) => tracing::error!("cannot reload unfinished commands: {e}"),
        }
        Ok((commands, Saver { rx, store, metrics }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        // A panic elsewhere while holding the lock leaves plain data that is
        // still consistent enough to finish commands with.
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records what an event changed: each change is counted, queued for
    /// the database and shown to live viewers. Called with the lock held,
    /// so changes are queued in the order they were made.
    fn record(&self, fx: &Effects) {
        for c in &fx.changes {
            let _ = self.saves.send(c.clone());
            self.announce(c);
        }
    }

    /// Counts a change and shows it to live viewers, here and, in cluster
    /// mode, on every other instance.
    fn announce(&self, c: &Command) {
        let counters = &self.metrics.commands;
        let counter = match c.state {
            CommandState::Queued => None,
            CommandState::Sent => Some(&counters.sent),
            CommandState::Delivered => Some(&counters.delivered),
            CommandState::Answered => Some(&counters.answered),
            CommandState::Failed => Some(&counters.failed),
            CommandState::Expired => Some(&counters.expired),
        };
        if let Some(counter) = counter {
            Metrics::add(counter, 1);
        }
        let _ = self.updates.send(c.clone());
        if let Some(bus) = &self.bus {
            bus.tell(&Remote::CommandChanged {
                command: Box::new(c.clone()),
            });
        }
    }

    /// Runs `event` on the machine at the current time, records what it
    /// changed, and publishes what it sends.
    async fn apply(&self, event: impl FnOnce(&mut Machine, i64) -> Effects) {
        let publish = {
            let mut machine = self.lock();
            let fx = event(&mut machine, self.clock.now_ms());
            self.record(&fx);
            fx.publish
        };
        self.publish(publish).await;
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
        let mut command = wire::accept(device, req, id, self.clock.now_ms(), self.max_bytes)
            .map_err(|e| refused(e.into()))?;
        // A device whose persistent MQTT session subscribed to its
        // commands gets them when it comes back, as MQTT keeps messages
        // for such a session: the command is persistent, stored before it
        // is sent, so that it survives even a crash while it is in flight.
        if !command.persistent
            && self
                .store
                .session_keeps_commands(device, self.clock.now_ms())
                .await?
        {
            command.persistent = true;
        }
        if command.persistent {
            self.check_room(device).await.map_err(refused)?;
        }
        // A persistent command is stored before anything else happens to
        // it, so that it waits for its device across a restart. Any other
        // command goes out at once and reaches the database through the
        // saver, in order: waiting here for SQLite's write lock, which the
        // batch writer holds while it commits readings, made the
        // operator's slowest pings wait up to a second before they were
        // even sent (BENCHMARKS.md). Such a command could not outlive a
        // restart anyway.
        // In cluster mode every command is stored first: the instance
        // that holds the device saves its later steps, and a page on this
        // one reads the command back from the database meanwhile.
        let known = if command.persistent || self.bus.is_some() {
            self.store.save_command(&command).await?
        } else {
            self.store.device_exists(device).await?
        };
        if !known {
            return Err(refused(CommandError::UnknownDevice(device.to_owned())));
        }
        Metrics::add(&self.metrics.commands.accepted, 1);
        if let Some(bus) = &self.bus {
            if !self.lock().holds(device) {
                return Ok(self.send_elsewhere(bus, command).await);
            }
        }
        let (command, publish) = {
            let mut machine = self.lock();
            let (command, fx) = machine.accept(command, self.clock.now_ms());
            self.record(&fx);
            if !command.is_final() {
                self.timer.notify_one();
            }
            (command, fx.publish)
        };
        self.publish(publish).await;
        Ok(command)
    }

    /// Refuses a command that would wait beyond `--max-session-queue` for
    /// its device. A single server holds every waiting command in memory;
    /// in a cluster the database knows them all.
    async fn check_room(&self, device: &str) -> Result<(), CommandError> {
        let waiting = if self.bus.is_some() {
            self.store.waiting_commands(device).await?
        } else {
            self.lock().waiting(device)
        };
        if waiting >= self.max_waiting {
            Metrics::add(&self.metrics.commands.queue_full, 1);
            return Err(CommandError::QueueFull {
                device: device.to_owned(),
                max: self.max_waiting,
            });
        }
        Ok(())
    }

    /// Sends a stored (or, if plain, checked) command to the instance that
    /// holds its device. With none, a persistent command stays stored as
    /// queued, and a plain one fails as it would on a single server.
    async fn send_elsewhere(&self, bus: &Bus, command: Command) -> Command {
        for attempt in 0..2 {
            match bus.ask(&command).await {
                Ok(Some(taken)) => return taken,
                Ok(None) if attempt == 0 => tokio::time::sleep(ASK_AGAIN).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(command = %command.id, "cannot ask other instances: {e}");
                    break;
                }
            }
        }
        if command.persistent {
            // Stored already, and found in the database by the instance
            // the device subscribes on next.
            self.announce(&command);
            return command;
        }
        let mut machine = self.lock();
        let (command, fx) = machine.accept(command, self.clock.now_ms());
        self.record(&fx);
        command
    }

    /// Takes a command another instance asked this one to deliver, and
    /// answers with the command as taken, or with nothing if no session
    /// here receives its device's commands any more.
    pub async fn take_asked(&self, bus: &Bus, asked: Asked) {
        let (taken, publish) = {
            let mut machine = self.lock();
            let c = &asked.command;
            if let Some(held) = machine.current(&c.id) {
                // Taken up from the database while the request travelled.
                (Some(held.clone()), Vec::new())
            } else if machine.holds(&c.device) {
                let (taken, fx) = machine.accept(c.clone(), self.clock.now_ms());
                self.record(&fx);
                if !taken.is_final() {
                    self.timer.notify_one();
                }
                (Some(taken), fx.publish)
            } else {
                (None, Vec::new())
            }
        };
        self.publish(publish).await;
        bus.reply(asked, taken.as_ref()).await;
    }

    /// A command changed state on another instance: tells this
    /// instance's viewers.
    pub fn changed_elsewhere(&self, command: Command) {
        let _ = self.updates.send(command);
    }

    /// Publishes into the router. The command id travels as MQTT 5
    /// correlation data, which the router keeps with the message; the edge
    /// reads it to track delivery, and passes it on to MQTT 5 devices.
    async fn publish(&self, messages: Vec<Outgoing>) {
        if messages.is_empty() {
            return;
        }
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

    /// A session of `device` subscribed to its commands on `route`: sends
    /// everything that was waiting for it.
    pub async fn subscribed(&self, device: &str, session: u64, route: Route) {
        if let Some(bus) = &self.bus {
            if !self.lock().holds(device) {
                // Subscribed before reading, so that a command stored
                // after the read is asked of this instance.
                bus.hold(device).await;
                match self.store.unfinished_commands_of(device).await {
                    Ok(stored) => {
                        let mut machine = self.lock();
                        let fx = machine.adopt(stored);
                        self.record(&fx);
                    }
                    Err(e) => tracing::error!(%device, "cannot read waiting commands: {e}"),
                }
            }
        }
        self.apply(|m, now| m.subscribed(device, session, route, now))
            .await;
        self.timer.notify_one();
    }

    /// A session of `device` ended or unsubscribed from its commands. With
    /// `keep` (a persistent session ended), what it was sent and did not
    /// acknowledge waits for it as persistent, to go out again.
    pub fn unsubscribed(&self, device: &str, session: u64, keep: bool) {
        let mut machine = self.lock();
        let fx = machine.unsubscribed(device, session, self.clock.now_ms(), keep);
        self.record(&fx);
        if let Some(bus) = &self.bus {
            if !machine.holds(device) {
                machine.forget(device);
                bus.release(device);
            }
        }
    }

    /// The device acknowledged command `id` (or, at QoS 0, it was written
    /// to its socket).
    pub fn delivered(&self, device: &str, id: &str) {
        let mut machine = self.lock();
        let fx = machine.delivered(device, id, self.clock.now_ms());
        self.record(&fx);
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
        let id = answer.id.clone();
        {
            let mut machine = self.lock();
            if let Ok(fx) = machine.answered(device, answer, self.clock.now_ms()) {
                self.record(&fx);
                return Ok(());
            }
        }
        // Not waiting: say whether it finished (or expired) or never was.
        let known = self
            .store
            .command(&id)
            .await
            .ok()
            .flatten()
            .filter(|c| c.device == device);
        match known {
            Some(c) => Err(AnswerError::Finished(id, c.state.label())),
            None => Err(AnswerError::Unknown(id)),
        }
    }

    /// Expires commands that waited too long, until `stop` fires (see
    /// [`Machine::expire`]), and sends again the persistent ones whose
    /// session did not acknowledge them in time.
    pub async fn run_timer(&self, stop: CancellationToken) {
        loop {
            let (next, again) = {
                let mut machine = self.lock();
                let (next, fx) = machine.expire(self.clock.now_ms());
                self.record(&fx);
                (next, fx.publish)
            };
            self.publish(again).await;
            let sleep = next
                .map(|at| {
                    let ms = (at - self.clock.now_ms()).clamp(1, 1000);
                    Duration::from_millis(u64::try_from(ms).unwrap_or(1))
                })
                .unwrap_or(MAX_TIMER_SLEEP);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
                () = self.timer.notified() => {}
            }
        }
    }

    /// Expires, in cluster mode, the stored commands that no instance
    /// holds (see [`machine::sweep`]), until `stop` fires. Runs on one
    /// instance at a time.
    pub async fn run_sweep(&self, stop: CancellationToken) {
        loop {
            match self.store.unfinished_commands().await {
                Ok(stored) => {
                    let now = self.clock.now_ms();
                    for c in stored {
                        if stop.is_cancelled() {
                            return;
                        }
                        let Some(swept) = machine::sweep(&c, now, SWEEP_GRACE_MS) else {
                            continue;
                        };
                        // Written here under a condition, not through the
                        // saver, which would overwrite a step an instance
                        // took meanwhile.
                        match self.store.replace_command_if(&swept, c.state).await {
                            Ok(true) => self.announce(&swept),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(command = %c.id, "cannot expire: {e}"),
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot read unfinished commands: {e}"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(MAX_TIMER_SLEEP) => {}
            }
        }
    }

    /// A device's newest commands, as they are this instant: the database
    /// may be a moment behind the saver, so what is held in memory (the
    /// unfinished commands and the newest finished ones) takes precedence,
    /// and commands not written yet are added.
    pub async fn recent(&self, device: &str, limit: u64) -> Result<Vec<Command>, StoreError> {
        let mut list = self.store.recent_commands(device, limit).await?;
        let machine = self.lock();
        for c in &mut list {
            if let Some(live) = machine.current(&c.id) {
                *c = live.clone();
            }
        }
        let unwritten: Vec<Command> = machine
            .of_device(device)
            .filter(|c| !list.iter().any(|l| l.id == c.id))
            .cloned()
            .collect();
        if !unwritten.is_empty() {
            list.extend(unwritten);
            // Ids are time-ordered, so they break ties of one millisecond.
            list.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            list.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
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
