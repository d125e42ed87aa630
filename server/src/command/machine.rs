//! The command state machine, pure: every unfinished command, which of
//! each device's sessions receive commands, and what each event does to
//! them. The service in [`super`] owns the lock, the clock, the database
//! and the broker; here every event takes the time as an argument and
//! returns what changed, so each rule is a table of tests.
//!
//! ```text
//! queued ──sent──▶ sent ──PUBACK──▶ delivered ──answer──▶ answered
//!   │  ▲             │                  │                  (or failed)
//!   │  └─session─────┤ persistent,      │
//!   │     gone       │ session gone     └─timeout──▶ expired
//!   └─TTL─▶ expired  └─timeout──▶ expired (plain) / sent again (persistent)
//! ```
//!
//! A one-way command is complete once delivered. A command that cannot be
//! sent fails at once unless it is persistent.

use std::collections::{HashMap, VecDeque};

use app::model::{Command, CommandState};

use super::wire::{self, Answer};
use crate::acl::{self, Route};

/// Finished commands kept for lists read while the saver is still writing
/// their final state.
const RECENTLY_FINISHED: usize = 256;

/// One message for the router: a command on one of its topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The command's id, which travels as MQTT 5 correlation data.
    pub id: String,
}

/// What an event did: each changed command (in order, to be written and
/// shown live) and the messages to publish.
#[derive(Debug, Default)]
pub struct Effects {
    pub changes: Vec<Command>,
    pub publish: Vec<Outgoing>,
}

/// Why a device's answer matched no waiting command.
#[derive(Debug, PartialEq, Eq)]
pub struct NotWaiting;

/// The state of every unfinished command, and of the newest finished ones.
#[derive(Debug, Default)]
pub struct Machine {
    /// Unfinished commands by id.
    active: HashMap<String, Command>,
    /// The newest finished commands, so that a list read from the database
    /// a moment before the saver writes a final state still shows it.
    finished: VecDeque<Command>,
    /// For each device, its sessions that subscribed to commands.
    routes: HashMap<String, HashMap<u64, Route>>,
}

impl Machine {
    /// Takes up the commands that were unfinished when the server last
    /// stopped: persistent commands wait again for their device, two-way
    /// commands already delivered may still be answered, and the rest
    /// fail, since their device session is gone.
    pub fn resume(&mut self, unfinished: Vec<Command>, now: i64) -> Effects {
        let mut fx = Effects::default();
        for mut c in unfinished {
            if take_up(&mut c, &mut fx) {
                self.active.insert(c.id.clone(), c);
            } else {
                finish(
                    &mut c,
                    CommandState::Failed,
                    now,
                    "the server restarted before the device acknowledged it".into(),
                    &mut fx,
                );
                self.remember(c);
            }
        }
        fx
    }

    /// Takes a new, checked command: it is sent if a session of its device
    /// receives commands, waits if it is persistent, and fails otherwise.
    /// Returns the command as it is then.
    pub fn accept(&mut self, mut c: Command, now: i64) -> (Command, Effects) {
        let mut fx = Effects::default();
        let route = self.route(&c.device);
        if route.any() {
            mark_sent(&mut c, route, now, &mut fx);
        } else if c.persistent {
            fx.changes.push(c.clone());
        } else {
            let why = format!(
                "{} is not connected and subscribed to its commands; \
                 send it again with \"Wait if the device is offline\" \
                 (persistent) to wait for the device",
                c.device
            );
            finish(&mut c, CommandState::Failed, now, why, &mut fx);
        }
        let accepted = c.clone();
        let id = c.id.clone();
        self.active.insert(id.clone(), c);
        if accepted.is_final() {
            self.retire(&id);
        }
        (accepted, fx)
    }

    /// A session of `device` subscribed to its commands on `route`: what
    /// waited for the device is sent. A new session also gets the
    /// persistent commands sent to an older one and not acknowledged: that
    /// one may be a dead connection the keep-alive has not caught yet.
    pub fn subscribed(&mut self, device: &str, session: u64, route: Route, now: i64) -> Effects {
        let sessions = self.routes.entry(device.to_owned()).or_default();
        let new_session = !sessions.contains_key(&session);
        let entry = sessions.entry(session).or_default();
        *entry = entry.or(route);
        let route = self.route(device);
        let mut waiting: Vec<&mut Command> = self
            .active
            .values_mut()
            .filter(|c| {
                c.device == device
                    && (c.state == CommandState::Queued
                        || (new_session && c.persistent && c.state == CommandState::Sent))
            })
            .collect();
        waiting.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let mut fx = Effects::default();
        for c in waiting {
            mark_sent(c, route, now, &mut fx);
        }
        fx
    }

    /// A session of `device` ended or unsubscribed from its commands. Once
    /// no session of the device receives commands, what was sent and not
    /// acknowledged waits again if persistent, and fails otherwise. With
    /// `keep` (the session was persistent) it all waits again, and is
    /// persistent from now on.
    pub fn unsubscribed(&mut self, device: &str, session: u64, now: i64, keep: bool) -> Effects {
        let mut fx = Effects::default();
        // What a persistent session was sent waits for it even while other
        // sessions of the device remain: if they end too, it is kept.
        if keep {
            for c in self.active.values_mut() {
                if c.device == device && c.state == CommandState::Sent && !c.persistent {
                    c.persistent = true;
                    fx.changes.push(c.clone());
                }
            }
        }
        let Some(sessions) = self.routes.get_mut(device) else {
            return fx;
        };
        if sessions.remove(&session).is_none() || !sessions.is_empty() {
            return fx;
        }
        self.routes.remove(device);
        let mut done = Vec::new();
        let mut sent: Vec<&mut Command> = self
            .active
            .values_mut()
            .filter(|c| c.device == device && c.state == CommandState::Sent)
            .collect();
        sent.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        for c in sent {
            if c.persistent || keep {
                c.persistent = true;
                c.state = CommandState::Queued;
                fx.changes.push(c.clone());
            } else {
                let why = "the device disconnected before acknowledging it".to_owned();
                finish(c, CommandState::Failed, now, why, &mut fx);
                done.push(c.id.clone());
            }
        }
        for id in done {
            self.retire(&id);
        }
        fx
    }

    /// The device acknowledged command `id` (or, at QoS 0, it was written
    /// to its socket). A one-way command is then complete.
    pub fn delivered(&mut self, device: &str, id: &str, now: i64) -> Effects {
        let mut fx = Effects::default();
        let Some(c) = self.active.get_mut(id) else {
            return fx;
        };
        // A command put back in the queue after its session ended (so sent
        // once) may still be acknowledged, late, by the device that got it.
        if c.device != device || c.sent_at.is_none() || c.state == CommandState::Delivered {
            return fx;
        }
        c.state = CommandState::Delivered;
        c.delivered_at = Some(now);
        if !c.two_way {
            c.completed_at = Some(now);
        }
        fx.changes.push(c.clone());
        if !c.two_way {
            self.retire(id);
        }
        fx
    }

    /// A device's answer. Any two-way command sent at least once may be
    /// answered, even one waiting again after its device dropped: the
    /// device got it.
    pub fn answered(
        &mut self,
        device: &str,
        answer: Answer,
        now: i64,
    ) -> Result<Effects, NotWaiting> {
        let c = self
            .active
            .get_mut(&answer.id)
            .filter(|c| c.device == device && c.two_way && c.sent_at.is_some())
            .ok_or(NotWaiting)?;
        // At QoS 0 the answer may be the first sign of delivery.
        c.delivered_at.get_or_insert(now);
        c.completed_at = Some(now);
        match answer.outcome {
            Ok(result) => {
                c.state = CommandState::Answered;
                c.response = Some(result);
            }
            Err(why) => {
                c.state = CommandState::Failed;
                c.error = Some(format!("the device answered: {why}"));
            }
        }
        let fx = Effects {
            changes: vec![c.clone()],
            publish: Vec::new(),
        };
        self.retire(&answer.id);
        Ok(fx)
    }

    /// Expires what is due at `now`: queued persistent commands past their
    /// TTL, and sent commands past their timeout without an acknowledgement
    /// (one-way) or an answer (two-way). A persistent command not
    /// acknowledged in time, but still within its TTL, is sent again
    /// instead (its session may be a dead connection). Returns the next
    /// deadline, if any.
    pub fn expire(&mut self, now: i64) -> (Option<i64>, Effects) {
        let mut fx = Effects::default();
        let mut next: Option<i64> = None;
        let mut due: Vec<(i64, String)> = Vec::new();
        for c in self.active.values() {
            match deadline(c) {
                Some(at) if at <= now => due.push((c.created_at, c.id.clone())),
                Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                None => {}
            }
        }
        due.sort();
        for (_, id) in due {
            let Some(device) = self.active.get(&id).map(|c| c.device.clone()) else {
                continue;
            };
            let route = self.route(&device);
            let Some(c) = self.active.get_mut(&id) else {
                continue;
            };
            if c.persistent && c.state == CommandState::Sent && now < c.created_at + c.ttl_ms {
                if route.any() {
                    mark_sent(c, route, now, &mut fx);
                } else {
                    c.state = CommandState::Queued;
                    fx.changes.push(c.clone());
                }
                if let Some(at) = deadline(c) {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
                continue;
            }
            let why = expiry_reason(c);
            finish(c, CommandState::Expired, now, why, &mut fx);
            self.retire(&id);
        }
        (next, fx)
    }

    /// Takes up, in cluster mode, the stored unfinished commands of a
    /// device that has just subscribed here: persistent commands wait to be
    /// sent, or are sent again, and delivered ones may still be answered.
    /// A plain command already sent belongs to the session it was sent
    /// to, wherever that is, and is left alone. Commands held already are
    /// skipped, so a command asked of this instance while it was reading
    /// the database is not taken twice.
    pub fn adopt(&mut self, stored: Vec<Command>) -> Effects {
        let mut fx = Effects::default();
        for mut c in stored {
            if !self.active.contains_key(&c.id) && take_up(&mut c, &mut fx) {
                self.active.insert(c.id.clone(), c);
            }
        }
        fx
    }

    /// Whether any session here receives `device`'s commands.
    pub fn holds(&self, device: &str) -> bool {
        self.routes.contains_key(device)
    }

    /// Lets go, in cluster mode, of the unfinished commands of a device
    /// that no session here receives any more. Their newest state is
    /// already queued for the database, where the instance the device
    /// subscribes on next takes them up ([`Machine::adopt`]).
    pub fn forget(&mut self, device: &str) {
        self.active.retain(|_, c| c.device != device);
    }

    /// The newest state of `id` held in memory, if any.
    pub fn current(&self, id: &str) -> Option<&Command> {
        self.active
            .get(id)
            .or_else(|| self.finished.iter().rev().find(|c| c.id == id))
    }

    /// Every command of `device` held in memory: unfinished, or finished
    /// so recently that its final state may not be written yet.
    pub fn of_device<'a>(&'a self, device: &'a str) -> impl Iterator<Item = &'a Command> + 'a {
        self.active
            .values()
            .chain(self.finished.iter())
            .filter(move |c| c.device == device)
    }

    /// Which commands any session of `device` receives.
    fn route(&self, device: &str) -> Route {
        self.routes
            .get(device)
            .map(|sessions| sessions.values().copied().fold(Route::default(), Route::or))
            .unwrap_or_default()
    }

    /// Moves a command that has just finished out of `active`.
    fn retire(&mut self, id: &str) {
        if let Some(c) = self.active.remove(id) {
            self.remember(c);
        }
    }

    /// How many commands wait (queued) for `device`.
    pub fn waiting(&self, device: &str) -> usize {
        self.active
            .values()
            .filter(|c| c.device == device && c.state == CommandState::Queued)
            .count()
    }

    /// Keeps a finished command among the newest ones.
    fn remember(&mut self, c: Command) {
        if self.finished.len() == RECENTLY_FINISHED {
            self.finished.pop_front();
        }
        self.finished.push_back(c);
    }
}

/// Whether a stored unfinished command can still complete once taken up
/// away from the session it was sent to: a persistent one waits again
/// (queued, which is written), a delivered one may still be answered, and
/// nothing else can.
fn take_up(c: &mut Command, fx: &mut Effects) -> bool {
    match c.state {
        CommandState::Sent if c.persistent => {
            c.state = CommandState::Queued;
            fx.changes.push(c.clone());
            true
        }
        // Kept as they are stored: nothing to write again.
        CommandState::Queued if c.persistent => true,
        CommandState::Delivered => true,
        _ => false,
    }
}

/// Marks `c` sent and adds the messages that send it on `route`.
fn mark_sent(c: &mut Command, route: Route, now: i64, fx: &mut Effects) {
    c.state = CommandState::Sent;
    c.sent_at = Some(now);
    fx.changes.push(c.clone());
    let (native, thingsboard) = acl::command_topics(&c.device);
    if route.native {
        fx.publish.push(Outgoing {
            topic: native,
            payload: wire::request(c),
            id: c.id.clone(),
        });
    }
    if route.thingsboard {
        fx.publish.push(Outgoing {
            topic: thingsboard,
            payload: wire::thingsboard_request(c),
            id: c.id.clone(),
        });
    }
}

/// Moves `c` to a final state with a reason.
fn finish(c: &mut Command, state: CommandState, now: i64, why: String, fx: &mut Effects) {
    c.state = state;
    c.completed_at = Some(now);
    c.error = Some(why);
    fx.changes.push(c.clone());
}

/// What the cluster's sweep does to a stored unfinished command that may
/// have no instance holding it (its device offline, or its instance
/// dead): at its deadline a queued one expires; a sent or delivered one is
/// given `grace` more, since an instance that holds it expires it itself
/// at the deadline, and then it expires too, unless it is persistent and
/// within its TTL, when it waits again for its device. `None` while it is
/// not due.
pub fn sweep(c: &Command, now: i64, grace: i64) -> Option<Command> {
    let due = match c.state {
        CommandState::Queued => deadline(c)?,
        _ => deadline(c)? + grace,
    };
    if now < due || c.is_final() {
        return None;
    }
    let mut c = c.clone();
    if c.persistent && c.state == CommandState::Sent && now < c.created_at + c.ttl_ms {
        c.state = CommandState::Queued;
    } else {
        let why = expiry_reason(&c);
        finish(
            &mut c,
            CommandState::Expired,
            now,
            why,
            &mut Effects::default(),
        );
    }
    Some(c)
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

#[cfg(test)]
mod tests;
