//! The feed: committed readings as MQTT messages for service accounts.
//!
//! After each commit, the writer's callback hands the batch here. If no
//! service account is subscribed, that is one atomic load and nothing
//! else. Otherwise the batch becomes one JSON message per device, on
//! `sensor/<device>`, in commit order:
//!
//! ```json
//! {"device":"Device001","readings":[{"metric":"temp","ts":1733000000000,"value":21.5}]}
//! ```
//!
//! Each service session joins with a bounded queue. A message goes once to
//! every session with a matching filter (overlapping filters still give
//! one copy), and once to each shared group (`$share/<group>/<filter>`)
//! with a matching filter, to its members in turn. A full queue drops the
//! message for that session and counts it; the writer never waits for a
//! subscriber.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use app::model::Reading;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::acl;
use crate::metrics::Metrics;

/// One feed message, shared by every session it goes to.
#[derive(Clone, Debug)]
pub struct FeedMessage {
    pub topic: Arc<str>,
    pub payload: Bytes,
}

/// The feed. One per server.
#[derive(Debug)]
pub struct Feed {
    inner: Mutex<Inner>,
    /// Subscriptions held, plain and shared; 0 makes a commit cost nothing.
    listening: AtomicUsize,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<u64, Member>,
    /// Shared groups by (account, group, filter), each with its members
    /// in join order and whose turn is next. The account is part of the
    /// key, so one account cannot join another's group and take its
    /// messages.
    groups: HashMap<(String, String, String), Group>,
}

#[derive(Debug)]
struct Member {
    /// The service account the session logged in as.
    account: String,
    /// Fires when the account is removed.
    removed: CancellationToken,
    tx: mpsc::Sender<FeedMessage>,
    /// The session's plain (unshared) filters.
    filters: Vec<String>,
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<u64>,
    next: usize,
}

#[derive(serde::Serialize)]
struct Payload<'a> {
    device: &'a str,
    readings: Vec<Item<'a>>,
}

#[derive(serde::Serialize)]
struct Item<'a> {
    metric: &'a str,
    ts: i64,
    value: f64,
}

impl Feed {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Mutex::default(),
            listening: AtomicUsize::new(0),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The maps stay consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a session of `account`; its messages arrive on the
    /// returned queue, which holds at most `capacity`, and the token fires
    /// if the account is removed. `None` if the account already holds
    /// `max_sessions` sessions.
    pub fn join(
        &self,
        session: u64,
        account: &str,
        capacity: usize,
        max_sessions: usize,
    ) -> Option<(mpsc::Receiver<FeedMessage>, CancellationToken)> {
        let mut inner = self.lock();
        let held = inner
            .sessions
            .values()
            .filter(|m| m.account == account)
            .count();
        if held >= max_sessions {
            return None;
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let removed = CancellationToken::new();
        inner.sessions.insert(
            session,
            Member {
                account: account.to_owned(),
                removed: removed.clone(),
                tx,
                filters: Vec::new(),
            },
        );
        Some((rx, removed))
    }

    /// Ends every session of a removed account; returns how many.
    pub fn end_account(&self, account: &str) -> usize {
        let inner = self.lock();
        let mut ended = 0;
        for member in inner.sessions.values().filter(|m| m.account == account) {
            member.removed.cancel();
            ended += 1;
        }
        ended
    }

    /// Adds a filter (with its shared group, if any) to a joined session.
    /// Adding one it holds already changes nothing.
    pub fn subscribe(&self, session: u64, group: Option<&str>, filter: &str) {
        let mut inner = self.lock();
        let added = match group {
            None => match inner.sessions.get_mut(&session) {
                Some(m) if !m.filters.iter().any(|f| f == filter) => {
                    m.filters.push(filter.to_owned());
                    true
                }
                _ => false,
            },
            Some(group) => {
                let Some(account) = inner.sessions.get(&session).map(|m| m.account.clone()) else {
                    return;
                };
                let key = (account, group.to_owned(), filter.to_owned());
                let members = &mut inner.groups.entry(key).or_default().members;
                let new = !members.contains(&session);
                if new {
                    members.push(session);
                }
                new
            }
        };
        if added {
            let n = self.listening.fetch_add(1, Ordering::Relaxed) + 1;
            self.metrics
                .feed_subscriptions
                .store(n as u64, Ordering::Relaxed);
        }
    }

    /// Removes a filter; false if the session did not hold it.
    pub fn unsubscribe(&self, session: u64, group: Option<&str>, filter: &str) -> bool {
        let mut inner = self.lock();
        let removed = match group {
            None => inner.sessions.get_mut(&session).is_some_and(|m| {
                let before = m.filters.len();
                m.filters.retain(|f| f != filter);
                m.filters.len() < before
            }),
            Some(group) => {
                let Some(account) = inner.sessions.get(&session).map(|m| m.account.clone()) else {
                    return false;
                };
                let key = (account, group.to_owned(), filter.to_owned());
                let removed = inner.groups.get_mut(&key).is_some_and(|g| {
                    let before = g.members.len();
                    g.members.retain(|m| *m != session);
                    g.members.len() < before
                });
                if inner.groups.get(&key).is_some_and(|g| g.members.is_empty()) {
                    inner.groups.remove(&key);
                }
                removed
            }
        };
        if removed {
            let n = self.listening.fetch_sub(1, Ordering::Relaxed) - 1;
            self.metrics
                .feed_subscriptions
                .store(n as u64, Ordering::Relaxed);
        }
        removed
    }

    /// Removes a session with all its subscriptions.
    pub fn leave(&self, session: u64) {
        let mut inner = self.lock();
        let mut gone = inner
            .sessions
            .remove(&session)
            .map_or(0, |m| m.filters.len());
        inner.groups.retain(|_, g| {
            let before = g.members.len();
            g.members.retain(|m| *m != session);
            gone += before - g.members.len();
            !g.members.is_empty()
        });
        let n = self.listening.fetch_sub(gone, Ordering::Relaxed) - gone;
        self.metrics
            .feed_subscriptions
            .store(n as u64, Ordering::Relaxed);
    }

    /// Whether any service account is subscribed.
    pub fn is_listened_to(&self) -> bool {
        self.listening.load(Ordering::Relaxed) > 0
    }

    /// Hands a committed batch to the subscribers. Called by the writer's
    /// commit callback, so it never waits.
    pub fn publish(&self, readings: &[Reading]) {
        if !self.is_listened_to() {
            return;
        }
        for message in messages(readings) {
            self.deliver(&message);
        }
    }

    fn deliver(&self, message: &FeedMessage) {
        let mut inner = self.lock();
        let Inner { sessions, groups } = &mut *inner;
        let mut dropped = 0;
        for member in sessions.values() {
            if member
                .filters
                .iter()
                .any(|f| acl::matches(f, &message.topic))
                && member.tx.try_send(message.clone()).is_err()
            {
                dropped += 1;
            }
        }
        for ((_, _, filter), group) in groups.iter_mut() {
            if !acl::matches(filter, &message.topic) || group.members.is_empty() {
                continue;
            }
            // The member whose turn it is; one with a full queue passes
            // its turn to the next, so a slow consumer does not lose what
            // a fast one could take.
            let n = group.members.len();
            let taken = (0..n).any(|i| {
                let at = (group.next + i) % n;
                let ok = sessions
                    .get(&group.members[at])
                    .is_some_and(|m| m.tx.try_send(message.clone()).is_ok());
                if ok {
                    group.next = (at + 1) % n;
                }
                ok
            });
            if !taken {
                dropped += 1;
            }
        }
        if dropped > 0 {
            Metrics::add(&self.metrics.feed_dropped, dropped);
        }
        Metrics::add(&self.metrics.feed_messages, 1);
    }
}

/// A batch as feed messages: one per device, its readings in commit order.
pub fn messages(readings: &[Reading]) -> Vec<FeedMessage> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_device: HashMap<&str, Vec<Item<'_>>> = HashMap::new();
    for r in readings {
        let items = by_device.entry(r.device.as_str()).or_insert_with(|| {
            order.push(r.device.as_str());
            Vec::new()
        });
        items.push(Item {
            metric: &r.metric,
            ts: r.ts,
            value: r.value,
        });
    }
    order
        .into_iter()
        .filter_map(|device| {
            let readings = by_device.remove(device)?;
            let json = serde_json::to_vec(&Payload { device, readings }).ok()?;
            Some(FeedMessage {
                topic: acl::feed_topic(device).into(),
                payload: Bytes::from(json),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(device: &str, metric: &str, ts: i64, value: f64) -> Reading {
        Reading {
            device: device.into(),
            metric: metric.into(),
            ts,
            value,
        }
    }

    #[test]
    fn a_batch_becomes_one_message_per_device_in_commit_order() {
        let batch = [
            reading("B", "t", 1, 1.0),
            reading("A", "t", 2, 2.0),
            reading("B", "h", 3, 3.5),
        ];
        let out = messages(&batch);
        assert_eq!(out.len(), 2);
        assert_eq!(&*out[0].topic, "sensor/B");
        assert_eq!(
            std::str::from_utf8(&out[0].payload).expect("utf-8"),
            r#"{"device":"B","readings":[{"metric":"t","ts":1,"value":1.0},{"metric":"h","ts":3,"value":3.5}]}"#
        );
        assert_eq!(&*out[1].topic, "sensor/A");
    }

    #[test]
    fn overlapping_filters_give_one_copy_and_a_group_shares_by_turns() {
        let feed = Feed::new(Arc::default());
        assert!(!feed.is_listened_to());
        let (mut solo, _) = feed.join(1, "a", 100, 4).expect("room");
        feed.subscribe(1, None, "sensor/#");
        feed.subscribe(1, None, "sensor/A");
        let (mut first, _) = feed.join(2, "a", 100, 4).expect("room");
        let (mut second, _) = feed.join(3, "a", 100, 4).expect("room");
        feed.subscribe(2, Some("g"), "sensor/#");
        feed.subscribe(3, Some("g"), "sensor/#");
        let batch: Vec<Reading> = (0..4).map(|i| reading("A", "t", i, 0.0)).collect();
        for r in &batch {
            feed.publish(std::slice::from_ref(r));
        }
        let count = |rx: &mut mpsc::Receiver<FeedMessage>| {
            std::iter::from_fn(|| rx.try_recv().ok()).count()
        };
        assert_eq!(count(&mut solo), 4, "one copy despite two filters");
        assert_eq!((count(&mut first), count(&mut second)), (2, 2));
        feed.leave(1);
        feed.leave(2);
        feed.unsubscribe(3, Some("g"), "sensor/#");
        assert!(!feed.is_listened_to(), "every subscription is gone");
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_group_passes_the_turn_on() {
        let metrics = Arc::new(Metrics::default());
        let feed = Feed::new(metrics.clone());
        let (mut slow, _) = feed.join(1, "b", 1, 4).expect("room");
        let (mut fast, removed) = feed.join(2, "b", 100, 4).expect("room");
        feed.subscribe(1, Some("g"), "sensor/+");
        feed.subscribe(2, Some("g"), "sensor/+");
        for i in 0..6 {
            feed.publish(&[reading("A", "t", i, 0.0)]);
        }
        let slow_got = std::iter::from_fn(|| slow.try_recv().ok()).count();
        let fast_got = std::iter::from_fn(|| fast.try_recv().ok()).count();
        assert_eq!(slow_got + fast_got, 6, "nothing lost while one can take it");
        assert_eq!(slow_got, 1);
        assert_eq!(metrics.feed_dropped.load(Ordering::Relaxed), 0);
        let _solo = feed.join(3, "a", 1, 4).expect("room");
        feed.subscribe(3, None, "sensor/A");
        feed.publish(&[reading("A", "t", 7, 0.0)]);
        feed.publish(&[reading("A", "t", 8, 0.0)]);
        assert_eq!(metrics.feed_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(feed.end_account("b"), 2);
        assert!(removed.is_cancelled());
    }

    #[test]
    fn groups_belong_to_their_account_and_accounts_hold_few_sessions() {
        let feed = Feed::new(Arc::default());
        let (mut mine, _) = feed.join(1, "a", 100, 2).expect("room");
        let (mut theirs, _) = feed.join(2, "b", 100, 2).expect("room");
        feed.subscribe(1, Some("g"), "sensor/#");
        feed.subscribe(2, Some("g"), "sensor/#");
        for i in 0..4 {
            feed.publish(&[reading("A", "t", i, 0.0)]);
        }
        let count = |rx: &mut mpsc::Receiver<FeedMessage>| {
            std::iter::from_fn(|| rx.try_recv().ok()).count()
        };
        // The same group name under two accounts is two groups.
        assert_eq!((count(&mut mine), count(&mut theirs)), (4, 4));
        assert!(feed.join(3, "a", 100, 2).is_some());
        assert!(feed.join(4, "a", 100, 2).is_none(), "a third session of a");
    }
}
