//! Counters across instances: every third of a lease each instance tells
//! the others its ingest counters and its rejections per device, so that
//! every dashboard shows the cluster's totals, not those of whichever
//! instance served the page.
//!
//! Everything travels on `<prefix>.tally`. A word is absolute (counts
//! since the instance started), so a lost message costs nothing the next
//! one does not repair, and an instance whose word is not renewed within
//! its lease drops out of the totals. Rejections per device go in parts
//! of [`ENTRIES_PER_MESSAGE`], each marked with the round it belongs to;
//! a listener puts a round's parts together and takes it when the last
//! part arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::model::Counters;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, MAX_PEERS};

/// Per-device counts in one message: a device name is at most a few
/// hundred bytes, so a part stays far below NATS's 1 MiB limit.
const ENTRIES_PER_MESSAGE: usize = 2_000;

/// One part of what an instance says of its counters.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Word {
    instance: String,
    /// Counts the speaker's rounds, so that parts of two rounds never mix.
    round: u64,
    /// How long to believe this round.
    lease_ms: u64,
    /// In the first part only.
    counters: Option<Counters>,
    rejected: Vec<(String, u64)>,
    last: bool,
}

/// A round being put together.
#[derive(Debug)]
struct Round {
    round: u64,
    counters: Option<Counters>,
    rejected: Vec<(String, u64)>,
}

/// Tells other instances of this one's counters and follows theirs, until
/// `stop` fires.
pub async fn run(
    client: async_nats::Client,
    prefix: String,
    instance: String,
    lease: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let subject = format!("{prefix}.tally");
    let Some(mut words) = super::listen(&client, &subject, "counters").await else {
        return;
    };
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(lease / 3);
    let mut round = 0u64;
    let mut rounds: HashMap<String, Round> = HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                round += 1;
                let rejected = metrics.rejected_among(None);
                let mut parts = rejected.chunks(ENTRIES_PER_MESSAGE).peekable();
                let mut first = Some(metrics.snapshot());
                loop {
                    let part = parts.next().unwrap_or_default();
                    let word = Word {
                        instance: instance.clone(),
                        round,
                        lease_ms,
                        counters: first.take(),
                        rejected: part.to_vec(),
                        last: parts.peek().is_none(),
                    };
                    let sent = match serde_json::to_vec(&word) {
                        Ok(json) => client.publish(subject.clone(), json.into()).await.is_ok(),
                        Err(_) => false,
                    };
                    if !sent {
                        Metrics::add(&metrics.bus_control_dropped, 1);
                    }
                    if word.last {
                        break;
                    }
                }
            }
            word = words.next() => {
                let Some(message) = word else { return };
                let Some(word) = super::read::<Word>(&message, &metrics) else {
                    continue;
                };
                take(&mut rounds, word, &metrics);
            }
        }
    }
}

/// Adds one part to its round, and hands a finished round to `metrics`.
fn take(rounds: &mut HashMap<String, Round>, word: Word, metrics: &Metrics) {
    if rounds.len() >= MAX_PEERS && !rounds.contains_key(&word.instance) {
        // Only the instances' own words travel here; this many speakers
        // means something else is talking on the subject.
        Metrics::add(&metrics.bus_rejected, 1);
        return;
    }
    let current = rounds.entry(word.instance.clone()).or_insert(Round {
        round: word.round,
        counters: None,
        rejected: Vec::new(),
    });
    // A part of a newer round (an earlier part was lost, or the speaker
    // restarted) starts over.
    if current.round != word.round {
        *current = Round {
            round: word.round,
            counters: None,
            rejected: Vec::new(),
        };
    }
    if word.counters.is_some() {
        current.counters = word.counters;
    }
    current.rejected.extend(word.rejected);
    if word.last {
        if let Some(round) = rounds.remove(&word.instance) {
            // A round whose first part was lost is incomplete: wait for the
            // next one.
            if let Some(counters) = round.counters {
                let until = Instant::now() + Duration::from_millis(word.lease_ms);
                if !metrics.set_elsewhere(&word.instance, until, counters, round.rejected) {
                    Metrics::add(&metrics.bus_rejected, 1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(instance: &str, round: u64, first: bool, rejected: &[(&str, u64)], last: bool) -> Word {
        Word {
            instance: instance.into(),
            round,
            lease_ms: 60_000,
            counters: first.then(|| Counters {
                stored: 10,
                rejected: 3,
                ..Counters::default()
            }),
            rejected: rejected
                .iter()
                .map(|(d, n)| ((*d).to_owned(), *n))
                .collect(),
            last,
        }
    }

    #[test]
    fn a_round_counts_once_all_its_parts_are_in() {
        let metrics = Metrics::default();
        let mut rounds = HashMap::new();
        take(
            &mut rounds,
            word("b", 1, true, &[("d1", 2)], false),
            &metrics,
        );
        assert_eq!(metrics.rejected_everywhere("d1"), 0);
        take(
            &mut rounds,
            word("b", 1, false, &[("d2", 1)], true),
            &metrics,
        );
        assert_eq!(metrics.rejected_everywhere("d1"), 2);
        assert_eq!(metrics.rejected_everywhere("d2"), 1);
        assert_eq!(metrics.everywhere().stored, 10);
        // The next round replaces it rather than adding to it.
        take(
            &mut rounds,
            word("b", 2, true, &[("d1", 2)], true),
            &metrics,
        );
        assert_eq!(metrics.rejected_everywhere("d1"), 2);
        assert_eq!(metrics.rejected_everywhere("d2"), 0);
        assert_eq!(metrics.everywhere().stored, 10);
    }

    #[test]
    fn parts_of_different_rounds_never_mix() {
        let metrics = Metrics::default();
        let mut rounds = HashMap::new();
        // Round 1's last part was lost; round 2's first part starts over.
        take(
            &mut rounds,
            word("b", 1, true, &[("old", 5)], false),
            &metrics,
        );
        take(
            &mut rounds,
            word("b", 2, true, &[("new", 1)], true),
            &metrics,
        );
        assert_eq!(metrics.rejected_everywhere("old"), 0);
        assert_eq!(metrics.rejected_everywhere("new"), 1);
        // A round whose first part (with the counters) was lost is skipped.
        take(
            &mut rounds,
            word("c", 7, false, &[("x", 1)], true),
            &metrics,
        );
        assert_eq!(metrics.rejected_everywhere("x"), 0);
    }

    #[test]
    fn an_instance_that_stops_talking_drops_out_and_speakers_are_bounded() {
        let metrics = Metrics::default();
        let past = Instant::now() - Duration::from_secs(1);
        metrics.set_elsewhere(
            "gone",
            past,
            Counters {
                stored: 5,
                ..Counters::default()
            },
            [],
        );
        assert_eq!(metrics.everywhere().stored, 0);
        let until = Instant::now() + Duration::from_secs(60);
        for i in 0..MAX_PEERS {
            assert!(metrics.set_elsewhere(&format!("i{i}"), until, Counters::default(), []));
        }
        assert!(!metrics.set_elsewhere("one-more", until, Counters::default(), []));
        // A known instance may still renew its word.
        assert!(metrics.set_elsewhere(
            "i0",
            until,
            Counters {
                stored: 1,
                ..Counters::default()
            },
            []
        ));
        assert_eq!(metrics.everywhere().stored, 1);
    }
}
