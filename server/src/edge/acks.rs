//! The order of acknowledgements, pure. MQTT requires PUBACKs (and QoS 2
//! PUBRECs) in the order of the PUBLISHes they answer, while readings are
//! acknowledged only once the writer has committed them. So an answer that
//! is ready at once (a message with no reading to store, a command answer)
//! waits behind an earlier publish whose readings are still being written.

use std::collections::VecDeque;

/// An acknowledgement owed to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    /// PUBREC for QoS 2, PUBACK for QoS 1.
    pub exactly_once: bool,
    /// Whether the message yielded anything (MQTT 5 says so in the reason
    /// code).
    pub stored: bool,
}

#[derive(Debug)]
struct Owed {
    ack: Ack,
    /// Whether it may be sent: the readings are committed, or there were
    /// none to store.
    ready: bool,
}

/// The acknowledgements a session owes, oldest first.
#[derive(Debug, Default)]
pub struct Acks {
    owed: VecDeque<Owed>,
}

impl Acks {
    /// A publish whose readings went to the writer: owed once they are
    /// committed.
    pub fn after_commit(&mut self, pkid: u16, exactly_once: bool) {
        self.owed.push_back(Owed {
            ack: Ack {
                pkid,
                exactly_once,
                stored: true,
            },
            ready: false,
        });
    }

    /// A publish that is answered as it is: nothing to store (`stored`
    /// false), or taken at once.
    pub fn at_once(&mut self, pkid: u16, exactly_once: bool, stored: bool) {
        self.owed.push_back(Owed {
            ack: Ack {
                pkid,
                exactly_once,
                stored,
            },
            ready: true,
        });
    }

    /// The writer committed the readings of `pkid`. Packet ids are unique
    /// among a client's unacknowledged messages, so the match is exact even
    /// if an earlier batch was dropped at shutdown.
    pub fn committed(&mut self, pkid: u16) {
        if let Some(owed) = self
            .owed
            .iter_mut()
            .find(|o| !o.ready && o.ack.pkid == pkid)
        {
            owed.ready = true;
        }
    }

    /// Whether any publish still waits for its commit.
    pub fn waiting(&self) -> bool {
        self.owed.iter().any(|o| !o.ready)
    }

    /// Takes the oldest acknowledgement if it may be sent now. Called until
    /// `None`, it gives every acknowledgement that may go, in order, with
    /// no allocation on a session's hot path.
    pub fn next_ready(&mut self) -> Option<Ack> {
        if self.owed.front()?.ready {
            self.owed.pop_front().map(|owed| owed.ack)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What happens, in order: a publish whose readings go to the writer
    /// (`Stored`), one answered at once (`Empty`: nothing to store), or a
    /// commit of a packet id.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Stored(u16),
        Empty(u16),
        Commit(u16),
    }
    use Step::*;

    /// Every acknowledgement that may be sent now.
    fn release(acks: &mut Acks) -> Vec<Ack> {
        std::iter::from_fn(|| acks.next_ready()).collect()
    }

    /// Runs `steps` and checks the packet ids released after each.
    fn check(steps: &[(Step, &[u16])]) {
        let mut acks = Acks::default();
        for (i, (step, expected)) in steps.iter().enumerate() {
            match *step {
                Stored(p) => acks.after_commit(p, false),
                Empty(p) => acks.at_once(p, false, false),
                Commit(p) => acks.committed(p),
            }
            let released: Vec<u16> = release(&mut acks).iter().map(|a| a.pkid).collect();
            assert_eq!(released, *expected, "after step {i}: {step:?} in {steps:?}");
        }
        assert!(!acks.waiting(), "everything was committed in {steps:?}");
    }

    #[test]
    fn acknowledgements_follow_publish_order_whatever_the_commit_order() {
        // Committed in order.
        check(&[
            (Stored(1), &[]),
            (Stored(2), &[]),
            (Commit(1), &[1]),
            (Commit(2), &[2]),
        ]);
        // Committed out of order: the later one waits for the earlier.
        check(&[
            (Stored(1), &[]),
            (Stored(2), &[]),
            (Commit(2), &[]),
            (Commit(1), &[1, 2]),
        ]);
        // Nothing to store: at once, unless an earlier publish is pending.
        check(&[(Empty(1), &[1])]);
        check(&[
            (Stored(1), &[]),
            (Empty(2), &[]),
            (Stored(3), &[]),
            (Commit(3), &[]),
            (Commit(1), &[1, 2, 3]),
        ]);
        // A packet id reused after its acknowledgement is a new publish.
        check(&[
            (Stored(7), &[]),
            (Commit(7), &[7]),
            (Stored(7), &[]),
            (Commit(7), &[7]),
        ]);
        // A commit for an id nobody waits for (dropped earlier) is ignored.
        check(&[(Commit(9), &[]), (Empty(1), &[1])]);
    }

    #[test]
    fn the_kind_and_outcome_of_each_acknowledgement_are_kept() {
        let mut acks = Acks::default();
        acks.after_commit(1, true);
        acks.at_once(2, false, false);
        acks.at_once(3, true, true);
        assert!(acks.waiting());
        assert!(release(&mut acks).is_empty());
        acks.committed(1);
        assert_eq!(
            release(&mut acks),
            vec![
                Ack {
                    pkid: 1,
                    exactly_once: true,
                    stored: true
                },
                Ack {
                    pkid: 2,
                    exactly_once: false,
                    stored: false
                },
                Ack {
                    pkid: 3,
                    exactly_once: true,
                    stored: true
                },
            ]
        );
    }
}
