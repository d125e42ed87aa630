//! The wall clock, in the epoch milliseconds that storage and the wire use.
//!
//! A leaf: it imports nothing of the crate, and every layer may use it.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Where a service reads the time. Services that act on deadlines (the
/// command timer) take one, so that tests can run them under
/// `tokio::time::pause()` and move time on without waiting for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    Wall,
    /// Tokio's clock, from `base_ms` at the instant `start`: it stands still
    /// and jumps with tokio's when that is paused.
    Tokio {
        base_ms: i64,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's from the wall clock's now.
    pub fn tokio() -> Self {
        Self::Tokio {
            base_ms: now_ms(),
            start: tokio::time::Instant::now(),
        }
    }

    /// The time in epoch milliseconds.
    pub fn now_ms(self) -> i64 {
        match self {
            Self::Wall => now_ms(),
            Self::Tokio { base_ms, start } => {
                let elapsed = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
                base_ms.saturating_add(elapsed)
            }
        }
    }
}
