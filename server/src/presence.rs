//! Online status: which devices are connected, since when, and why each
//! one's last connection ended.
//!
//! The edge reports every connect and disconnect here the moment it
//! happens. Changes are gathered for [`COALESCE`] and then broadcast to
//! live viewers as one message, so a thousand devices reconnecting at once
//! cost each viewer a few messages, not a thousand, while one device's
//! change still reaches the dashboard well within a second.
//!
//! In cluster mode a device may be connected to another instance. What
//! this instance's own sessions say is kept apart from what other
//! instances report ([`Tracker::elsewhere`]), so that the bus tells the
//! others only what happened here ([`Tracker::here_changes`]), and a
//! device is online while it is connected to any live instance. When an
//! instance's lease runs out, the devices it held go offline
//! ([`Tracker::instance_lost`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::model::{DeviceSummary, Presence as Status};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

/// How long changes are gathered before they are broadcast.
const COALESCE: Duration = Duration::from_millis(50);

/// Broadcast batches a slow viewer may fall behind before it is sent a
/// full snapshot instead.
const BACKLOG: usize = 256;

/// Why a device went offline when the instance it was connected to
/// stopped renewing its lease.
pub const INSTANCE_LOST: &str = "the Sightline instance it was connected to stopped answering";

/// A batch of changed statuses, shared by every viewer.
pub type Changes = Arc<Vec<Status>>;

/// The status of every device that has connected since the server started.
#[derive(Debug)]
pub struct Tracker {
    devices: Mutex<HashMap<String, Entry>>,
    pending: Mutex<Vec<Status>>,
    changed: Notify,
    tx: broadcast::Sender<Changes>,
    /// Changes of what this instance's own sessions say, for the bus.
    here_tx: broadcast::Sender<Changes>,
}

#[derive(Debug, Default)]
struct Entry {
    /// The device's live edge sessions here and when each began. A device
    /// may hold more than one connection (say, a publisher and a command
    /// subscriber); it is online while any of them is.
    sessions: BTreeMap<u64, i64>,
    /// Other instances the device is connected to, and since when.
    elsewhere: HashMap<String, i64>,
    status: Option<Status>,
}

impl Entry {
    /// Brings the status in line with the sessions; returns it if a viewer
    /// would see a change. `now` and `reason` describe an ending.
    fn settle(&mut self, device: &str, now: i64, reason: &str) -> Option<Status> {
        let since = self
            .sessions
            .values()
            .chain(self.elsewhere.values())
            .min()
            .copied();
        let new = match (&self.status, since) {
            (Some(old), Some(since)) if old.online && old.connected_since == Some(since) => {
                return None
            }
            (_, Some(since)) => Status {
                device: device.to_owned(),
                online: true,
                connected_since: Some(since),
                last_seen: now.max(since),
                reason: None,
            },
            (Some(old), None) if !old.online => return None,
            (None, None) => return None,
            (Some(_), None) => Status {
                device: device.to_owned(),
                online: false,
                connected_since: None,
                last_seen: now,
                reason: Some(reason.to_owned()),
            },
        };
        self.status = Some(new.clone());
        Some(new)
    }

    /// What this instance's own sessions say of the device.
    fn here(&self, device: &str, now: i64, reason: &str) -> Status {
        let since = self.sessions.values().min().copied();
        Status {
            device: device.to_owned(),
            online: since.is_some(),
            connected_since: since,
            last_seen: now,
            reason: since.is_none().then(|| reason.to_owned()),
        }
    }
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            devices: Mutex::default(),
            pending: Mutex::default(),
            changed: Notify::new(),
            tx: broadcast::channel(BACKLOG).0,
            here_tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Tracker {
    /// Records that `device` connected in `session` at `now`.
    pub fn connected(&self, device: &str, session: u64, now: i64) {
        let (status, here) = {
            let Ok(mut devices) = self.devices.lock() else {
                return;
            };
            let entry = devices.entry(device.to_owned()).or_default();
            let first = entry.sessions.is_empty();
            entry.sessions.insert(session, now);
            let here = first.then(|| entry.here(device, now, ""));
            (entry.settle(device, now, ""), here)
        };
        self.push(status, here);
    }

    /// Records that `session` of `device` ended at `now` because of
    /// `reason`. The device goes offline when its last session ends.
    pub fn disconnected(&self, device: &str, session: u64, now: i64, reason: &str) {
        let (status, here) = {
            let Ok(mut devices) = self.devices.lock() else {
                return;
            };
            let Some(entry) = devices.get_mut(device) else {
                return;
            };
            if entry.sessions.remove(&session).is_none() {
                return;
            }
            let here = entry
                .sessions
                .is_empty()
                .then(|| entry.here(device, now, reason));
            (entry.settle(device, now, reason), here)
        };
        self.push(status, here);
    }

    /// Records what `instance` says of a device: connected there since
    /// `connected_since`, or not (any more).
    pub fn elsewhere(&self, instance: &str, said: &Status) {
        let status = {
            let Ok(mut devices) = self.devices.lock() else {
                return;
            };
            let entry = devices.entry(said.device.clone()).or_default();
            match said.connected_since.filter(|_| said.online) {
                Some(since) => {
                    entry.elsewhere.insert(instance.to_owned(), since);
                }
                None => {
                    if entry.elsewhere.remove(instance).is_none() {
                        return;
                    }
                }
            }
            let reason = said.reason.as_deref().unwrap_or("disconnected");
            entry.settle(&said.device, said.last_seen, reason)
        };
        self.push(status, None);
    }

    /// Takes `instance`'s word for exactly which devices are connected to
    /// it: any other device it held is no longer.
    pub fn replace_elsewhere(&self, instance: &str, online: &[Status], now: i64) {
        let keep: std::collections::HashSet<&str> =
            online.iter().map(|s| s.device.as_str()).collect();
        self.drop_instance(instance, now, "disconnected", |d| keep.contains(d));
        for s in online {
            self.elsewhere(instance, s);
        }
    }

    /// `instance` stopped renewing its lease: the devices connected only
    /// to it are offline.
    pub fn instance_lost(&self, instance: &str, now: i64) {
        self.drop_instance(instance, now, INSTANCE_LOST, |_| false);
    }

    fn drop_instance(&self, instance: &str, now: i64, reason: &str, keep: impl Fn(&str) -> bool) {
        let changes: Vec<Status> = {
            let Ok(mut devices) = self.devices.lock() else {
                return;
            };
            devices
                .iter_mut()
                .filter(|(d, e)| e.elsewhere.contains_key(instance) && !keep(d))
                .filter_map(|(d, e)| {
                    e.elsewhere.remove(instance);
                    e.settle(d, now, reason)
                })
                .collect()
        };
        for status in changes {
            self.push(Some(status), None);
        }
    }

    /// How many devices `instance` is said to hold, to check against its
    /// own count.
    pub fn held_by(&self, instance: &str) -> usize {
        self.devices.lock().map_or(0, |d| {
            d.values()
                .filter(|e| e.elsewhere.contains_key(instance))
                .count()
        })
    }

    /// What this instance's own sessions say of every device connected
    /// here.
    pub fn here(&self, now: i64) -> Vec<Status> {
        self.devices.lock().map_or_else(
            |_| Vec::new(),
            |d| {
                d.iter()
                    .filter(|(_, e)| !e.sessions.is_empty())
                    .map(|(device, e)| e.here(device, now, ""))
                    .collect()
            },
        )
    }

    /// How many devices are connected here.
    pub fn here_count(&self) -> usize {
        self.devices
            .lock()
            .map_or(0, |d| d.values().filter(|e| !e.sessions.is_empty()).count())
    }

    /// The status of one device, if it has connected since start.
    pub fn get(&self, device: &str) -> Option<Status> {
        let devices = self.devices.lock().ok()?;
        devices.get(device).and_then(|e| e.status.clone())
    }

    /// The status of every device that has connected since start.
    pub fn all(&self) -> Vec<Status> {
        self.devices
            .lock()
            .map(|d| d.values().filter_map(|e| e.status.clone()).collect())
            .unwrap_or_default()
    }

    /// Fills in the status of each summary.
    pub fn annotate(&self, summaries: &mut [DeviceSummary]) {
        let Ok(devices) = self.devices.lock() else {
            return;
        };
        for s in summaries {
            s.presence = devices.get(&s.id).and_then(|e| e.status.clone());
        }
    }

    /// Receives every batch of changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Changes> {
        self.tx.subscribe()
    }

    /// Receives every change of what this instance's own sessions say,
    /// one at a time, for the bus.
    pub fn here_changes(&self) -> broadcast::Receiver<Changes> {
        self.here_tx.subscribe()
    }

    fn push(&self, status: Option<Status>, here: Option<Status>) {
        if let Some(here) = here {
            // Nobody listening (a single server) is fine.
            let _ = self.here_tx.send(Arc::new(vec![here]));
        }
        let Some(status) = status else {
            return;
        };
        if let Ok(mut pending) = self.pending.lock() {
            pending.push(status);
        }
        self.changed.notify_one();
    }

    /// Broadcasts gathered changes until `stop` fires.
    pub async fn run(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.changed.notified() => {}
            }
            tokio::time::sleep(COALESCE).await;
            let batch = self
                .pending
                .lock()
                .map(|mut p| std::mem::take(&mut *p))
                .unwrap_or_default();
            if !batch.is_empty() {
                // Nobody listening is fine: the next page load reads `all`.
                let _ = self.tx.send(Arc::new(batch));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_online_while_any_of_its_sessions_is() {
        let p = Tracker::default();
        p.connected("A", 1, 100);
        p.connected("A", 2, 200);
        p.disconnected("A", 1, 300, "replaced by a new connection");
        let s = p.get("A").expect("known");
        assert!(s.online);
        assert_eq!(s.connected_since, Some(200));
        p.disconnected("A", 1, 350, "a repeat changes nothing");
        p.disconnected("A", 2, 400, "keep-alive expired");
        let s = p.get("A").expect("known");
        assert!(!s.online);
        assert_eq!(s.last_seen, 400);
        assert_eq!(s.reason.as_deref(), Some("keep-alive expired"));
        let changes = p.pending.lock().expect("lock").len();
        assert_eq!(changes, 3, "online, connected-since moved, offline");
    }

    fn online_at(device: &str, since: i64) -> Status {
        Status {
            device: device.into(),
            online: true,
            connected_since: Some(since),
            last_seen: since,
            reason: None,
        }
    }

    #[test]
    fn a_device_is_online_while_any_instance_holds_it_and_only_local_changes_are_told() {
        let p = Tracker::default();
        let mut told = p.here_changes();
        p.elsewhere("b", &online_at("A", 100));
        assert!(p.get("A").expect("known").online);
        assert!(
            told.try_recv().is_err(),
            "another instance's word is not told again"
        );
        p.connected("A", 1, 200);
        let here = told.try_recv().expect("told");
        assert!(here[0].online);
        assert_eq!(here[0].connected_since, Some(200));
        assert_eq!(p.get("A").expect("known").connected_since, Some(100));
        p.disconnected("A", 1, 300, "keep-alive expired");
        assert!(!told.try_recv().expect("told")[0].online);
        assert!(p.get("A").expect("known").online, "still held by b");
        assert_eq!(p.held_by("b"), 1);
        p.instance_lost("b", 400);
        let s = p.get("A").expect("known");
        assert!(!s.online);
        assert_eq!(s.reason.as_deref(), Some(INSTANCE_LOST));
        assert_eq!(s.last_seen, 400);
        assert_eq!(p.held_by("b"), 0);
    }

    #[test]
    fn a_full_list_replaces_what_an_instance_was_said_to_hold() {
        let p = Tracker::default();
        p.elsewhere("b", &online_at("A", 100));
        p.elsewhere("b", &online_at("B", 100));
        // The word that A left was lost; b's full list no longer has it.
        p.replace_elsewhere("b", &[online_at("B", 100), online_at("C", 150)], 500);
        assert!(!p.get("A").expect("known").online);
        assert!(p.get("B").expect("known").online);
        assert!(p.get("C").expect("known").online);
        assert_eq!(p.held_by("b"), 2);
        assert_eq!(p.here(600).len(), 0, "nothing is connected here");
    }
}
