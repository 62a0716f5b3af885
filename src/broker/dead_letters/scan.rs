//! A pass over the messages a dead-letter queue holds, oldest first, shared by every
//! reader of one ([`super::list`], [`super::replay`], [`super::purge`] and
//! [`super::bulk`]): each message is taken as a delivery, and those not acted on are
//! kept, unsettled, until the pass ends, then put back in their place. Kept, none of
//! them comes round again within the pass.

use crate::broker::{Broker, BrokerError, Consumer, Delivery};
use std::time::Duration;

/// How long to wait for the next message the queue said it holds; past it, someone
/// else took it.
const NEXT_DELIVERY: Duration = Duration::from_secs(2);

/// How long [`put_back`] waits at most for the broker to count what it put back.
const PUT_BACK_WAIT: Duration = Duration::from_secs(1);

/// One pass over a queue.
pub(super) struct Scan<'a> {
    broker: &'a dyn Broker,
    queue: &'a str,
    /// `None` when there is nothing to look at.
    consumer: Option<Consumer>,
    /// Messages still to look at.
    left: u64,
    kept: Vec<Delivery>,
}

impl<'a> Scan<'a> {
    /// A pass over the `count` oldest messages of `queue`.
    pub async fn begin(
        broker: &'a dyn Broker,
        queue: &'a str,
        count: u64,
    ) -> Result<Self, BrokerError> {
        let consumer = match u16::try_from(count) {
            Ok(0) => None,
            prefetch => Some(broker.consume(queue, prefetch.unwrap_or(u16::MAX)).await?),
        };
        Ok(Self {
            broker,
            queue,
            consumer,
            left: count,
            kept: Vec::new(),
        })
    }

    /// The next message; `None` once the pass has taken its count, or when the next
    /// does not come (someone else took the rest).
    pub async fn next(&mut self) -> Option<Delivery> {
        if self.left == 0 {
            return None;
        }
        let consumer = self.consumer.as_mut()?;
        let delivery = tokio::time::timeout(NEXT_DELIVERY, consumer.next())
            .await
            .ok()??;
        self.left -= 1;
        Some(delivery)
    }

    /// Holds `delivery` until the pass ends, then puts it back.
    pub fn keep(&mut self, delivery: Delivery) {
        self.kept.push(delivery);
    }

    /// Ends the pass: stops consuming, and puts back what it kept.
    pub async fn end(self) {
        drop(self.consumer);
        put_back(self.broker, self.queue, self.kept).await;
    }
}

/// Requeues deliveries of `queue` taken only to be read, each in its place, and waits
/// (up to [`PUT_BACK_WAIT`]) until the broker counts them ready again: dropped
/// unsettled they would go back too, but on RabbitMQ only once a background task got
/// to it, and even a requeue it was told of is counted a moment later; a replay or
/// purge right after a list or another pass, which reads the depth first, would miss
/// them. A failed requeue is no loss: the delivery goes back with its channel.
pub(super) async fn put_back(broker: &dyn Broker, queue: &str, held: Vec<Delivery>) {
    if held.is_empty() {
        return;
    }
    let expected = broker
        .queue_depth(queue)
        .await
        .map(|depth| depth + held.len() as u64);
    for delivery in held {
        if let Err(error) = delivery.nack(true).await {
            tracing::debug!(%error, "dead letter left to go back with its channel");
        }
    }
    let Ok(expected) = expected else { return };
    let counted = async {
        while broker
            .queue_depth(queue)
            .await
            .is_ok_and(|depth| depth < expected)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(PUT_BACK_WAIT, counted).await;
}
