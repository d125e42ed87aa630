//! The hand-off from ingest to the batch writer: a queue bounded in
//! readings, and the channel on which the writer tells a device session
//! that its readings are committed.

use std::sync::Arc;
use std::time::Instant;

use app::model::Reading;
use tokio::sync::{mpsc, Semaphore};

/// The readings of one message, as ingest queues them for the writer.
#[derive(Debug)]
pub struct Arrival {
    /// When ingest received the message.
    pub at: Instant,
    pub readings: Vec<Reading>,
    /// Who to tell once the readings are committed: a QoS 1 publish's
    /// session, with the packet id it must acknowledge then.
    pub ack: Option<(Committed, u16)>,
    /// Whether the message may be one the device sent before and whose
    /// acknowledgement it never got (its readings all carry the device's
    /// own `ts`): the writer then stores only those readings that are not
    /// already stored exactly (same series, timestamp and value).
    pub maybe_again: bool,
}

/// A device session's end of the commit notifications. The writer sends
/// each acknowledged packet id once its readings are in the database, in
/// the order they were queued.
pub type Committed = mpsc::UnboundedSender<u16>;

/// Creates the hand-off from ingest to the writer, bounded by the number of
/// readings waiting rather than messages: a message carries from one to
/// 256 readings, so a bound in messages would not bound memory.
pub fn queue(readings: usize) -> (QueueTx, QueueRx) {
    let capacity = readings.clamp(1, Semaphore::MAX_PERMITS);
    let budget = Arc::new(Semaphore::new(capacity));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        QueueTx {
            tx,
            budget: budget.clone(),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
        },
        QueueRx { rx, budget },
    )
}

/// Why a message could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueFull {
    /// Too many readings are already waiting: the writer is saturated.
    Full,
    /// The writer has stopped.
    Closed,
}

/// Ingest's end of the queue.
#[derive(Debug, Clone)]
pub struct QueueTx {
    /// Each arrival travels with the number of permits it holds.
    tx: mpsc::UnboundedSender<(Arrival, u32)>,
    budget: Arc<Semaphore>,
    capacity: u32,
}

impl QueueTx {
    /// Queues `arrival` if there is room for its readings; never waits.
    /// This is for QoS 0, where the device expects no acknowledgement and a
    /// saturated writer must cost counted drops, not a stalled connection.
    pub fn try_send(&self, arrival: Arrival) -> Result<(), QueueFull> {
        let n = self.permits_for(&arrival);
        let permit = self
            .budget
            .try_acquire_many(n)
            .map_err(|_| QueueFull::Full)?;
        permit.forget();
        self.tx.send((arrival, n)).map_err(|rejected| {
            self.budget.add_permits(rejected.0 .1 as usize);
            QueueFull::Closed
        })
    }

    /// Queues `arrival`, waiting for room if the writer is behind. This is
    /// for QoS 1: the device holds the message until it is acknowledged, so
    /// waiting slows only that device down and loses nothing.
    pub async fn send(&self, arrival: Arrival) -> Result<(), QueueFull> {
        let n = self.permits_for(&arrival);
        let permit = self
            .budget
            .acquire_many(n)
            .await
            .map_err(|_| QueueFull::Closed)?;
        permit.forget();
        self.tx.send((arrival, n)).map_err(|rejected| {
            self.budget.add_permits(rejected.0 .1 as usize);
            QueueFull::Closed
        })
    }

    /// One permit per reading, but never more than the queue holds, so that
    /// a message larger than a tiny queue can still wait its turn.
    fn permits_for(&self, arrival: &Arrival) -> u32 {
        u32::try_from(arrival.readings.len())
            .unwrap_or(u32::MAX)
            .min(self.capacity)
    }
}

/// The writer's end of the queue; taking a message frees its room.
#[derive(Debug)]
pub struct QueueRx {
    rx: mpsc::UnboundedReceiver<(Arrival, u32)>,
    budget: Arc<Semaphore>,
}

impl QueueRx {
    pub(super) async fn recv(&mut self) -> Option<Arrival> {
        let (arrival, permits) = self.rx.recv().await?;
        self.budget.add_permits(permits as usize);
        Some(arrival)
    }

    pub(super) fn try_recv(&mut self) -> Option<Arrival> {
        let (arrival, permits) = self.rx.try_recv().ok()?;
        self.budget.add_permits(permits as usize);
        Some(arrival)
    }
}
