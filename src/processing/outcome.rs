//! How each delivery's [`Outcome`] is counted: in the Prometheus metrics and in the
//! Queues page's charts.

use crate::domain::Outcome;
use crate::telemetry::charts;
use crate::telemetry::metrics::{EVENT_END_TO_END, EVENT_PROCESSING_DURATION, EVENTS_PROCESSED};
use chrono::Utc;
use metrics::{Counter, Histogram};
use std::time::Duration;

/// The metrics of one consumed queue's deliveries, registered once: recording one is
/// then an atomic addition, where `counter!` would look its name and labels up in the
/// recorder's registry for every delivery.
pub struct OutcomeMetrics {
    processed: [Counter; Outcome::NAMES.len()],
    duration: Histogram,
}

impl OutcomeMetrics {
    /// Handles of the process's recorder; where none is installed (a worker without
    /// `--listen`), handles that record nothing.
    pub fn new(queue: &'static str) -> Self {
        Self {
            processed: Outcome::NAMES.map(|outcome| {
                metrics::counter!(EVENTS_PROCESSED, "queue" => queue, "outcome" => outcome)
            }),
            duration: metrics::histogram!(EVENT_PROCESSING_DURATION, "queue" => queue),
        }
    }

    /// A delivery settled with `outcome`, `took` after it arrived.
    pub fn settled(&self, outcome: &Outcome, took: Duration) {
        self.processed[outcome.index()].increment(1);
        self.duration.record(took);
        charts::processed(outcome.index());
    }
}

/// The end-to-end latency of games, from their write to their final status.
pub struct EndToEnd(Histogram);

impl Default for EndToEnd {
    fn default() -> Self {
        Self(metrics::histogram!(EVENT_END_TO_END))
    }
}

impl EndToEnd {
    /// A game reached its final status (completed or failed): the time since its
    /// event's write (the `timestamp` the writer stamped). Events without a readable
    /// timestamp are left out, and a writer's clock ahead of ours counts as zero.
    pub fn finished(&self, written: Option<&str>) {
        let Some(written) =
            written.and_then(|stamp| chrono::DateTime::parse_from_rfc3339(stamp).ok())
        else {
            return;
        };
        let seconds = (Utc::now() - written.with_timezone(&Utc))
            .as_seconds_f64()
            .max(0.0);
        self.0.record(seconds);
        charts::end_to_end(seconds);
    }
}
