//! What became of a delivery: the names the worker's replies, metrics and charts share.

use std::time::Duration;

/// What became of one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Failed; published again with a delay.
    Retried {
        attempt: u32,
        delay: Duration,
    },
    /// Failed its last attempt: the game is `failed`, the message in the dead-letter
    /// queue.
    Failed {
        reason: String,
    },
    /// Unreadable: moved to the dead-letter queue at once.
    DeadLettered {
        reason: String,
    },
    /// Already processed: acknowledged without effect.
    Duplicate,
    /// A custom message (the original producer sent those to `game_events` too): moved
    /// to `custom_messages`, where the custom-message consumer reads them.
    Forwarded,
    /// For an older version or a deleted game: nothing to do.
    Skipped,
}

impl Outcome {
    /// Every outcome's name, in the order of [`Outcome::index`].
    pub const NAMES: [&str; 7] = [
        "completed",
        "retried",
        "failed",
        "dead_lettered",
        "duplicate",
        "forwarded",
        "skipped",
    ];

    /// The outcome's name in a reply (`{"outcome": "completed"}`) and in the metrics
    /// (`retrocat_events_processed_total{outcome="completed"}`).
    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// Its place in [`Self::NAMES`].
    pub fn index(&self) -> usize {
        match self {
            Self::Completed => 0,
            Self::Retried { .. } => 1,
            Self::Failed { .. } => 2,
            Self::DeadLettered { .. } => 3,
            Self::Duplicate => 4,
            Self::Forwarded => 5,
            Self::Skipped => 6,
        }
    }
}
