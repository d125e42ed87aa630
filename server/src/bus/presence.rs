//! Presence across instances: each instance tells the others which devices
//! connect to it and leave, and renews a lease on its word; when the lease
//! runs out, its devices go offline everywhere.
//!
//! Everything travels on the one subject `<prefix>.presence`. Changes are
//! told as they happen. Every third of a lease each instance says it is
//! alive and how many devices it holds; a listener whose count differs
//! twice running (a change was lost: NATS core delivers at most once), or
//! that has not heard of the instance before, asks it for the full list,
//! which replaces what the listener held for it. A starting instance asks
//! everyone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::model::Presence as Status;
use futures_util::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::presence::Tracker;

/// Statuses in one message, far below NATS's 1 MiB limit (a status is
/// under 200 bytes of JSON).
const STATUSES_PER_MESSAGE: usize = 2_000;

/// Changes gathered into one message when many come at once.
const CHANGES_PER_MESSAGE: usize = 500;

/// What instances say to each other about presence.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(tag = "word", rename_all = "snake_case")]
enum Word {
    /// What changed for these devices on `instance`.
    Changed {
        instance: String,
        devices: Vec<Status>,
    },
    /// `instance` is alive and holds `held` devices; believe it for
    /// `lease_ms`.
    Alive {
        instance: String,
        lease_ms: u64,
        held: usize,
    },
    /// Part of the full list of devices connected to `instance`; the last
    /// part says so.
    Snapshot {
        instance: String,
        devices: Vec<Status>,
        last: bool,
    },
    /// Asks `instance` (or every instance, for `*`) for its full list.
    Want { instance: String },
}

/// What this instance knows of another.
#[derive(Debug)]
struct Peer {
    deadline: Instant,
    /// Alive messages in a row whose count disagreed with ours.
    disagreements: u32,
    /// The parts of a full list being received.
    snapshot: Option<Vec<Status>>,
}

impl Peer {
    /// An instance first heard of, believed until `deadline`.
    fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            disagreements: 0,
            snapshot: None,
        }
    }
}

/// Tells other instances of this one's devices and follows theirs, until
/// `stop` fires.
pub async fn run(
    client: async_nats::Client,
    prefix: String,
    instance: String,
    tracker: Arc<Tracker>,
    lease: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let subject = format!("{prefix}.presence");
    let Some(mut words) = super::listen(&client, &subject, "presence").await else {
        return;
    };
    let say = |word: Word| {
        let client = client.clone();
        let subject = subject.clone();
        let metrics = metrics.clone();
        async move {
            let sent = match serde_json::to_vec(&word) {
                Ok(json) => client.publish(subject, json.into()).await.is_ok(),
                Err(_) => false,
            };
            if !sent {
                Metrics::add(&metrics.bus_control_dropped, 1);
            }
        }
    };
    let mut here = tracker.here_changes();
    let mut peers: HashMap<String, Peer> = HashMap::new();
    let mut heartbeat = tokio::time::interval(lease / 3);
    let mut check = tokio::time::interval(Duration::from_millis(250));
    say(Word::Want {
        instance: "*".into(),
    })
    .await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            change = here.recv() => match change {
                Ok(first) => {
                    let mut devices: Vec<Status> = first.to_vec();
                    while devices.len() < CHANGES_PER_MESSAGE {
                        match here.try_recv() {
                            Ok(more) => devices.extend(more.iter().cloned()),
                            Err(_) => break,
                        }
                    }
                    say(Word::Changed { instance: instance.clone(), devices }).await;
                }
                // Changes were missed: the full list replaces them.
                Err(RecvError::Lagged(_)) => {
                    snapshot(&tracker, &instance, &say).await;
                }
                Err(RecvError::Closed) => return,
            },
            _ = heartbeat.tick() => {
                let held = tracker.here_count();
                let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
                say(Word::Alive { instance: instance.clone(), lease_ms, held }).await;
            }
            _ = check.tick() => {
                let now = Instant::now();
                peers.retain(|peer, p| {
                    let alive = p.deadline > now;
                    if !alive {
                        tracing::warn!(%peer, "instance lost: its lease ran out");
                        tracker.instance_lost(peer, now_ms());
                    }
                    alive
                });
            }
            word = words.next() => {
                let Some(message) = word else { return };
                let Some(word) = super::read::<Word>(&message, &metrics) else {
                    continue;
                };
                match word {
                    Word::Want { instance: wanted } => {
                        if wanted == "*" || wanted == instance {
                            snapshot(&tracker, &instance, &say).await;
                        }
                    }
                    Word::Changed { instance: peer, devices } => {
                        for s in &devices {
                            tracker.elsewhere(&peer, s);
                        }
                        // Its word lasts one lease unless it renews it.
                        peers.entry(peer).or_insert_with(|| Peer::new(Instant::now() + lease));
                    }
                    Word::Alive { instance: peer, lease_ms, held } => {
                        let deadline = Instant::now() + Duration::from_millis(lease_ms);
                        let agrees = tracker.held_by(&peer) == held;
                        let ask = match peers.get_mut(&peer) {
                            Some(p) => {
                                p.deadline = deadline;
                                p.disagreements = if agrees { 0 } else { p.disagreements + 1 };
                                p.disagreements == 2
                            }
                            None => {
                                peers.insert(peer.clone(), Peer::new(deadline));
                                !agrees
                            }
                        };
                        if ask {
                            say(Word::Want { instance: peer }).await;
                        }
                    }
                    Word::Snapshot { instance: peer, devices, last } => {
                        let p = peers
                            .entry(peer.clone())
                            .or_insert_with(|| Peer::new(Instant::now() + lease));
                        p.snapshot.get_or_insert_with(Vec::new).extend(devices);
                        if last {
                            let list = p.snapshot.take().unwrap_or_default();
                            tracker.replace_elsewhere(&peer, &list, now_ms());
                        }
                    }
                }
            }
        }
    }
}

/// Says the full list of devices connected here, in parts.
async fn snapshot<F, Fut>(tracker: &Tracker, instance: &str, say: &F)
where
    F: Fn(Word) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let here = tracker.here(now_ms());
    let mut parts = here.chunks(STATUSES_PER_MESSAGE).peekable();
    if parts.peek().is_none() {
        say(Word::Snapshot {
            instance: instance.to_owned(),
            devices: Vec::new(),
            last: true,
        })
        .await;
    }
    while let Some(part) = parts.next() {
        say(Word::Snapshot {
            instance: instance.to_owned(),
            devices: part.to_vec(),
            last: parts.peek().is_none(),
        })
        .await;
    }
}
