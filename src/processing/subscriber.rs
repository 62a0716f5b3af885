//! Subscribers: consumers that keep what they receive.
//!
//! - The audit subscriber reads its own queue, bound to `catalog.events` with `#`, so it
//!   gets every domain event whoever else consumes them (pub/sub: each subscriber's
//!   queue gets its copy). Any number of further named subscribers
//!   (`--subscribers audit,archive`) each get every event too, in a queue of their own.
//! - The custom-message consumer reads `custom_messages` (what the producer sends).
//!
//! Each keeps an entry per message (`GET /api/audit`, `GET /api/messages/received`),
//! idempotently: a redelivered message finds its entry and adds nothing. A message
//! that asks for a reply (`retrocat publish --wait`) gets one once it is recorded.

use super::pause::{PauseWatch, QueuePause};
use crate::broker::{Broker, BrokerError, Consumer, Delivery, topology};
use crate::domain::EventId;
use crate::shutdown::Shutdown;
use crate::storage::{ReceivedMessage, Store, StoreError};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The subscriber name of the custom-message consumer.
pub const CUSTOM: &str = "custom";
/// The subscriber name of the audit log.
pub const AUDIT: &str = "audit";

pub struct Subscriber {
    name: String,
    queue: String,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    prefetch: u16,
}

impl Subscriber {
    /// The custom-message consumer, on `custom_messages`.
    pub fn custom(store: Arc<dyn Store>, broker: Arc<dyn Broker>, prefetch: u16) -> Self {
        Self {
            name: CUSTOM.into(),
            queue: topology::CUSTOM_QUEUE.into(),
            store,
            broker,
            prefetch,
        }
    }

    /// A subscriber of every domain event: `audit`, or another name (see
    /// [`parse_name`]), each on its own queue ([`topology::subscriber_queue`]).
    pub fn events(
        name: &str,
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        prefetch: u16,
    ) -> Self {
        Self {
            name: name.into(),
            queue: topology::subscriber_queue(name),
            store,
            broker,
            prefetch,
        }
    }

    /// Declares its queue (the audit queue is also part of the common topology; other
    /// subscribers receive from their first start on), then consumes it until
    /// shutdown, reconnecting when the broker goes away, and holding no consumer while
    /// the queue is paused.
    pub async fn run(self, pauses: &PauseWatch, shutdown: Shutdown) {
        let this = Arc::new(self);
        let pause = pauses.of(&this.queue);
        let open = || async {
            if !pause.resumed(&shutdown).await {
                return Err(BrokerError::Unavailable("shutting down".into()));
            }
            if this.name != CUSTOM {
                topology::declare_subscriber(this.broker.as_ref(), &this.name).await?;
            }
            this.broker.consume(&this.queue, this.prefetch).await
        };
        let drain = |consumer| this.clone().drain(consumer, &pause, &shutdown);
        crate::broker::consume_until_shutdown(&this.name, &shutdown, open, drain).await;
    }

    /// Records what the consumer has ready (up to the prefetch window) at a time: one
    /// statement per batch, then the acknowledgements. Returns once the consumer ends,
    /// the queue is paused, or shutdown is requested.
    async fn drain(
        self: Arc<Self>,
        mut consumer: Consumer,
        pause: &QueuePause,
        shutdown: &Shutdown,
    ) {
        let limit = usize::from(self.prefetch.max(1));
        let mut batch = Vec::with_capacity(limit);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => return,
                () = pause.paused() => return,
                received = consumer.next_batch(&mut batch, limit) => if received == 0 {
                    return;
                },
            }
            if let Err(error) = self.handle(std::mem::take(&mut batch)).await {
                // The deliveries went back unsettled; don't hot-loop while the database
                // is down.
                tracing::warn!(%error, subscriber = self.name, "messages not recorded; they will be redelivered");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Records a batch of deliveries, acknowledges them, and answers those that ask
    /// for a reply.
    async fn handle(&self, deliveries: Vec<Delivery>) -> Result<(), SubscriberError> {
        let received: Vec<ReceivedMessage> = deliveries
            .iter()
            .map(|delivery| self.received(delivery))
            .collect();
        self.store.record_received(&received).await?;
        for (delivery, received) in deliveries.into_iter().zip(received) {
            let answer = json!({
                "received": true,
                "subscriber": self.name,
                "messageId": received.message_id,
            });
            let reply = delivery.message.reply(answer.to_string());
            delivery.ack().await?;
            if let Some(reply) = reply
                && let Err(error) = self.broker.publish(vec![reply]).await
            {
                tracing::debug!(%error, "reply not sent");
            }
        }
        Ok(())
    }

    /// The record of one delivery: its body as JSON (or as a string, if it is not).
    fn received(&self, delivery: &Delivery) -> ReceivedMessage {
        let message = &delivery.message;
        let message_id = message
            .properties
            .message_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| EventId::from_body(&message.body).to_string());
        let body = serde_json::from_slice(&message.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&message.body).into_owned())
        });
        ReceivedMessage {
            subscriber: self.name.clone(),
            message_id,
            exchange: delivery.exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            headers: message.properties.headers.clone(),
            body,
            received_at: chrono::Utc::now(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
}

/// A subscriber name: 1 to 50 of `a-z 0-9 _ -`, and not `custom` (the custom-message
/// consumer's). It names a queue, so it must stay short and plain.
pub fn parse_name(name: &str) -> Result<String, String> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if name.is_empty() || name.len() > 50 || !plain {
        return Err(format!(
            "{name:?}: a subscriber name is 1 to 50 of a-z, 0-9, _ and -"
        ));
    }
    if name == CUSTOM {
        return Err("\"custom\" is the custom-message consumer's name".into());
    }
    Ok(name.to_owned())
}
