//! Online status: which devices are connected, since when, and why each
//! one's last connection ended.
//!
//! The edge reports every connect and disconnect here the moment it
//! happens. Changes are gathered for [`COALESCE`] and then broadcast to
//! live viewers as one message, so a thousand devices reconnecting at once
//! cost each viewer a few messages, not a thousand, while one device's
//! change still reaches the dashboard well within a second.

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

/// A batch of changed statuses, shared by every viewer.
pub type Changes = Arc<Vec<Status>>;

/// The status of every device that has connected since the server started.
#[derive(Debug)]
pub struct Tracker {
    devices: Mutex<HashMap<String, Entry>>,
    pending: Mutex<Vec<Status>>,
    changed: Notify,
    tx: broadcast::Sender<Changes>,
}

#[derive(Debug)]
struct Entry {
    /// The device's live edge sessions and when each began. A device may
    /// hold more than one connection (say, a publisher and a command
    /// subscriber); it is online while any of them is.
    sessions: BTreeMap<u64, i64>,
    status: Status,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            devices: Mutex::default(),
            pending: Mutex::default(),
            changed: Notify::new(),
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Tracker {
    /// Records that `device` connected in `session` at `now`.
    pub fn connected(&self, device: &str, session: u64, now: i64) {
        let status = {
            let Ok(mut devices) = self.devices.lock() else {
                return;
            };
            let entry = devices.entry(device.to_owned()).or_insert_with(|| Entry {
                sessions: BTreeMap::new(),
                status: Status {
                    device: device.to_owned(),
                    online: false,
                    connected_since: None,
                    last_seen: now,
                    reason: None,
                },
            });
            entry.sessions.insert(session, now);
            if entry.status.online {
                // Already online through another connection: nothing a
                // viewer would see has changed.
                return;
            }
            entry.status = Status {
                device: device.to_owned(),
                online: true,
                connected_since: Some(now),
                last_seen: now,
                reason: None,
            };
            entry.status.clone()
        };
        self.push(status);
    }

    /// Records that `session` of `device` ended at `now` because of
    /// `reason`. The device goes offline when its last session ends.
    pub fn disconnected(&self, device: &str, session: u64, now: i64, reason: &str) {
        let status = {
            let Ok(mut devices) = self.devices.lock() else {
                return;
            };
            let Some(entry) = devices.get_mut(device) else {
                return;
            };
            if entry.sessions.remove(&session).is_none() {
                return;
            }
            let status = &mut entry.status;
            match entry.sessions.values().min() {
                // Still connected: it has been since its oldest live session.
                Some(&since) => {
                    if status.connected_since == Some(since) {
                        return;
                    }
                    status.connected_since = Some(since);
                }
                None => {
                    status.online = false;
                    status.connected_since = None;
                    status.last_seen = now;
                    status.reason = Some(reason.to_owned());
                }
            }
            status.clone()
        };
        self.push(status);
    }

    /// The status of one device, if it has connected since start.
    pub fn get(&self, device: &str) -> Option<Status> {
        let devices = self.devices.lock().ok()?;
        devices.get(device).map(|e| e.status.clone())
    }

    /// The status of every device that has connected since start.
    pub fn all(&self) -> Vec<Status> {
        self.devices
            .lock()
            .map(|d| d.values().map(|e| e.status.clone()).collect())
            .unwrap_or_default()
    }

    /// Fills in the status of each summary.
    pub fn annotate(&self, summaries: &mut [DeviceSummary]) {
        let Ok(devices) = self.devices.lock() else {
            return;
        };
        for s in summaries {
            s.presence = devices.get(&s.id).map(|e| e.status.clone());
        }
    }

    /// Receives every batch of changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Changes> {
        self.tx.subscribe()
    }

    fn push(&self, status: Status) {
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
}
