//! Tests of `machine`: table-driven where the inputs vary.

use super::*;
use app::model::CommandState::{Answered, Delivered, Expired, Failed, Queued, Sent};
use serde_json::json;

const TIMEOUT: i64 = 1_000;
const TTL: i64 = 10_000;
const NATIVE: Route = Route {
    native: true,
    thingsboard: false,
};
const BOTH: Route = Route {
    native: true,
    thingsboard: true,
};

/// What happens to command `c` of device `d`.
#[derive(Clone, Debug)]
enum Event {
    /// The operator sends it.
    Send { persistent: bool, two_way: bool },
    /// Session `n` of `d` subscribes to its commands on a route.
    Subscribe(u64, Route),
    /// Session `n` of `d` ends.
    Gone(u64),
    /// Session `n` of `d`, a persistent MQTT session, ends.
    GoneKept(u64),
    /// `d` acknowledges it.
    Ack,
    /// `d` answers it, with a result or an error.
    Answer(Result<i64, &'static str>),
    /// The timer runs.
    Tick,
    /// The server restarts: the command comes back as last stored.
    Restart,
    /// In cluster mode, `d` subscribes on another instance, which takes
    /// up the command as last stored.
    Adopt,
}
use Event::*;

fn send(persistent: bool, two_way: bool) -> Event {
    Send {
        persistent,
        two_way,
    }
}

/// Runs `events`, each at its millisecond, against a fresh machine, and
/// checks after each the command's state (`None`: not known) and how
/// many messages the event published.
fn check(events: &[(i64, Event, Option<CommandState>, usize)]) {
    let mut m = Machine::default();
    let mut stored: Option<Command> = None;
    for (i, (at, event, state, published)) in events.iter().enumerate() {
        let fx = match event.clone() {
            Send {
                persistent,
                two_way,
            } => m.accept(command(persistent, two_way, *at), *at).1,
            Subscribe(n, route) => m.subscribed("d", n, route, *at),
            Gone(n) => m.unsubscribed("d", n, *at, false),
            GoneKept(n) => m.unsubscribed("d", n, *at, true),
            Ack => m.delivered("d", "c", *at),
            Answer(outcome) => {
                let answer = wire::Answer {
                    id: "c".into(),
                    outcome: outcome.map(|v| json!(v)).map_err(str::to_owned),
                };
                m.answered("d", answer, *at).unwrap_or_default()
            }
            Tick => m.expire(*at).1,
            Restart => {
                m = Machine::default();
                m.resume(stored.clone().into_iter().collect(), *at)
            }
            Adopt => {
                m = Machine::default();
                m.adopt(stored.clone().into_iter().collect())
            }
        };
        if let Some(c) = fx.changes.iter().rev().find(|c| c.id == "c") {
            stored = Some(c.clone());
        }
        let now = m.current("c").map(|c| c.state);
        assert_eq!(
            (now, fx.publish.len()),
            (*state, *published),
            "after step {i}, {event:?} at {at}"
        );
    }
}

fn command(persistent: bool, two_way: bool, now: i64) -> Command {
    Command {
        id: "c".into(),
        device: "d".into(),
        name: "ping".into(),
        params: json!({}),
        two_way,
        persistent,
        timeout_ms: TIMEOUT,
        ttl_ms: TTL,
        state: Queued,
        created_at: now,
        sent_at: None,
        delivered_at: None,
        completed_at: None,
        response: None,
        error: None,
    }
}

#[test]
fn a_persistent_session_keeps_what_it_was_sent() {
    // A plain command sent to a persistent session that ends before
    // acknowledging it waits for the device, goes out again when it
    // subscribes, and survives a restart meanwhile.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (1, send(false, false), Some(Sent), 1),
        (2, GoneKept(1), Some(Queued), 0),
        (3, Restart, Some(Queued), 0),
        (4, Subscribe(2, NATIVE), Some(Sent), 1),
        (5, Ack, Some(Delivered), 0),
    ]);
    // A persistent session that ends while a clean one stays keeps the
    // command for itself: when the clean one ends too, it waits.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (0, Subscribe(2, NATIVE), None, 0),
        (1, send(false, false), Some(Sent), 1),
        (2, GoneKept(1), Some(Sent), 0),
        (3, Gone(2), Some(Queued), 0),
        (4, Subscribe(3, NATIVE), Some(Sent), 1),
    ]);
    // Without the session it fails, as before.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (1, send(false, false), Some(Sent), 1),
        (2, Gone(1), Some(Failed), 0),
    ]);
}

#[test]
fn transitions() {
    // A plain command to a device that is not subscribed fails at once.
    check(&[(0, send(false, true), Some(Failed), 0)]);
    // Sent, acknowledged, answered; or answered with an error.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (1, send(false, true), Some(Sent), 1),
        (5, Ack, Some(Delivered), 0),
        (9, Answer(Ok(1)), Some(Answered), 0),
    ]);
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (1, send(false, true), Some(Sent), 1),
        (9, Answer(Err("busy")), Some(Failed), 0),
    ]);
    // One-way: complete once delivered; a second PUBACK changes nothing.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (1, send(false, false), Some(Sent), 1),
        (5, Ack, Some(Delivered), 0),
        (6, Ack, Some(Delivered), 0),
    ]);
    // Both routes: one message on each.
    check(&[
        (0, Subscribe(1, BOTH), None, 0),
        (1, send(false, true), Some(Sent), 2),
    ]);
    // Persistent: waits for a subscriber, then goes out.
    check(&[
        (0, send(true, true), Some(Queued), 0),
        (5, Subscribe(1, NATIVE), Some(Sent), 1),
        (6, Ack, Some(Delivered), 0),
    ]);
    // The session ends before the PUBACK: a plain command fails, a
    // persistent one waits again and goes to the next session.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (1, send(false, true), Some(Sent), 1),
        (2, Gone(1), Some(Failed), 0),
    ]);
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (1, send(true, true), Some(Sent), 1),
        (2, Gone(1), Some(Queued), 0),
        (3, Subscribe(2, NATIVE), Some(Sent), 1),
    ]);
    // Another session of the device keeps receiving: nothing changes.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (0, Subscribe(2, NATIVE), None, 0),
        (1, send(false, true), Some(Sent), 1),
        (2, Gone(1), Some(Sent), 0),
    ]);
    // A new session also gets a persistent command still unacknowledged
    // on an older one, which may be dead.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (1, send(true, true), Some(Sent), 1),
        (2, Subscribe(2, NATIVE), Some(Sent), 1),
        (2, Subscribe(2, NATIVE), Some(Sent), 0),
    ]);
    // An answer to a command never sent is not taken.
    check(&[
        (0, send(true, true), Some(Queued), 0),
        (1, Answer(Ok(1)), Some(Queued), 0),
    ]);
    // A late acknowledgement of a command waiting again still counts.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (1, send(true, true), Some(Sent), 1),
        (2, Gone(1), Some(Queued), 0),
        (3, Ack, Some(Delivered), 0),
    ]);
}

#[test]
fn deadlines() {
    // Queued past its TTL: expired, not a millisecond before.
    check(&[
        (0, send(true, true), Some(Queued), 0),
        (TTL - 1, Tick, Some(Queued), 0),
        (TTL, Tick, Some(Expired), 0),
    ]);
    // Sent and not answered within the timeout: expired.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (1, send(false, true), Some(Sent), 1),
        (5, Ack, Some(Delivered), 0),
        (TIMEOUT, Tick, Some(Delivered), 0),
        (1 + TIMEOUT, Tick, Some(Expired), 0),
    ]);
    // Persistent and unacknowledged at its timeout: sent again while
    // its TTL lasts, queued again if nobody receives, then expired.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (0, send(true, true), Some(Sent), 1),
        (TIMEOUT, Tick, Some(Sent), 1),
        (2 * TIMEOUT, Tick, Some(Sent), 1),
        (2 * TIMEOUT + 1, Gone(1), Some(Queued), 0),
        (TTL, Tick, Some(Expired), 0),
    ]);
}

#[test]
fn a_restart_keeps_what_can_still_complete() {
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (0, send(true, true), Some(Sent), 1),
        (5, Restart, Some(Queued), 0),
    ]);
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (0, send(false, true), Some(Sent), 1),
        (5, Restart, Some(Failed), 0),
    ]);
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (0, send(false, true), Some(Sent), 1),
        (1, Ack, Some(Delivered), 0),
        (5, Restart, Some(Delivered), 0),
        (6, Answer(Ok(2)), Some(Answered), 0),
    ]);
}

#[test]
fn another_instance_takes_up_what_can_still_complete() {
    // A persistent command whose session ended is sent again where the
    // device subscribes next.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (0, send(true, true), Some(Sent), 1),
        (1, Gone(1), Some(Queued), 0),
        (2, Adopt, Some(Queued), 0),
        (3, Subscribe(2, NATIVE), Some(Sent), 1),
        (4, Answer(Ok(1)), Some(Answered), 0),
    ]);
    // A delivered command may be answered on the new instance.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (0, send(false, true), Some(Sent), 1),
        (1, Ack, Some(Delivered), 0),
        (2, Adopt, Some(Delivered), 0),
        (3, Answer(Ok(2)), Some(Answered), 0),
    ]);
    // A plain command already sent stays with the session it went to.
    check(&[
        (0, Subscribe(1, NATIVE), None, 0),
        (0, send(false, true), Some(Sent), 1),
        (2, Adopt, None, 0),
    ]);
}

#[test]
fn the_sweep_expires_what_nobody_holds_after_a_holders_own_deadline() {
    const GRACE: i64 = 500;
    let mut c = command(true, true, 0);
    assert!(sweep(&c, TTL - 1, GRACE).is_none());
    let expired = sweep(&c, TTL, GRACE).expect("due");
    assert_eq!(expired.state, Expired);
    assert_eq!(
        expired.error.as_deref(),
        Some("not delivered within its TTL of 10 s")
    );
    c.state = Sent;
    c.sent_at = Some(100);
    assert!(
        sweep(&c, 100 + TIMEOUT, GRACE).is_none(),
        "an instance that holds it expires it first"
    );
    let again = sweep(&c, 100 + TIMEOUT + GRACE, GRACE).expect("due");
    assert_eq!(again.state, Queued, "persistent and within its TTL");
    c.persistent = false;
    let expired = sweep(&c, 100 + TIMEOUT + GRACE, GRACE).expect("due");
    assert_eq!(expired.state, Expired);
    assert_eq!(
        expired.error.as_deref(),
        Some("not acknowledged within 1 s")
    );
    c.state = Answered;
    assert!(sweep(&c, i64::MAX / 2, GRACE).is_none(), "finished");
}

#[test]
fn the_next_deadline_is_the_earliest() {
    let mut m = Machine::default();
    m.accept(command(true, true, 0), 0);
    assert_eq!(m.expire(5).0, Some(TTL));
    m.subscribed("d", 1, NATIVE, 100);
    assert_eq!(m.expire(100).0, Some(100 + TIMEOUT));
}

#[test]
fn reasons_state_durations_plainly() {
    assert_eq!(seconds(30_000), "30 s");
    assert_eq!(seconds(1_500), "1.5 s");
    assert_eq!(seconds(7_200_000), "2 h");
}
