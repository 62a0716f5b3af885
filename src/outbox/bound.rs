//! A bounded work queue (`--max-queue-length`): the relay publishes to `game_events`
//! only while it holds fewer ready messages than the bound, and the outbox holds the
//! rest of the events meanwhile, visibly, until the workers make room.
//!
//! The bound is kept by the relay, not by the broker. RabbitMQ's own (`max-length` with
//! `reject-publish`) would refuse the retries too: a retry waits in a delay queue whose
//! dead-lettering into a full queue drops the message, and its event would be lost. A
//! retry, and what other processes publish, still enter the queue, so it may hold more
//! than the bound by that much.
//!
//! The relay reads the queue's depth from the broker only when the rows it sent since
//! the last reading might reach the bound: far from it, a batch costs no round trip.

use crate::broker::{Broker, BrokerError, topology};
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

/// How long a reading is trusted at most: other publishers add to the queue meanwhile.
const READING_LIFETIME: Duration = Duration::from_secs(1);

/// The bound on `game_events`, and what the relay knows of the queue's depth.
#[derive(Debug)]
pub struct QueueBound {
    max_length: u64,
    /// Ready messages at the last reading, plus every row sent since (each may route
    /// to the queue; the workers' takes are not counted, so this errs high).
    estimate: u64,
    read_at: Option<Instant>,
    /// Whether the queue was full at the last reading: logged as it starts and ends.
    full: bool,
}

impl QueueBound {
    pub fn new(max_length: NonZeroU64) -> Self {
        Self {
            max_length: max_length.get(),
            estimate: 0,
            read_at: None,
            full: false,
        }
    }

    /// How many of `wanted` rows may be sent now without the queue passing its bound,
    /// with `in_flight` rows sent and not confirmed yet: 0 while it is full.
    pub async fn room(
        &mut self,
        broker: &dyn Broker,
        wanted: u64,
        in_flight: u64,
    ) -> Result<u64, BrokerError> {
        let stale = self
            .read_at
            .is_none_or(|at| at.elapsed() >= READING_LIFETIME);
        if stale || self.estimate + wanted > self.max_length {
            let queue = topology::GAME_EVENTS_QUEUE;
            // Rows not confirmed yet may not be in the queue yet: counted, to err high.
            self.estimate = broker.queue_glance(queue).await?.ready + in_flight;
            self.read_at = Some(Instant::now());
            let full = self.estimate >= self.max_length;
            if full != self.full {
                self.full = full;
                if full {
                    tracing::warn!(
                        queue,
                        ready = self.estimate,
                        max_length = self.max_length,
                        "the queue is full (--max-queue-length): events wait in the outbox"
                    );
                } else {
                    tracing::info!(queue, ready = self.estimate, "the queue has room again");
                }
            }
        }
        Ok(wanted.min(self.max_length.saturating_sub(self.estimate)))
    }

    /// Counts `rows` sent: they may all have gone to the queue.
    pub fn sent(&mut self, rows: u64) {
        self.estimate += rows;
    }
}
