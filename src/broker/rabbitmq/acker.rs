//! A delivery's acknowledgement on its consumer's channel, and dead-lettering with a
//! reason.

use super::classify;
use super::publisher::Publisher;
use crate::broker::{Acker, BrokerError, Message};
use async_trait::async_trait;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::sync::Arc;

/// A consumer's channel, closed once the consumer and every delivery it handed out are
/// gone. Closing it sooner would fail the acknowledgements of deliveries still being
/// processed (a worker shutting down finishes those); closing it returns whatever is
/// still unacknowledged to the queue.
pub(super) struct ConsumerChannel(pub(super) Channel);

impl Drop for ConsumerChannel {
    fn drop(&mut self) {
        if self.0.status().connected() {
            let channel = self.0.clone();
            tokio::spawn(async move {
                let _ = channel.close(200, "consumer done".into()).await;
            });
        }
    }
}

pub(super) struct RabbitAcker {
    pub(super) channel: Arc<ConsumerChannel>,
    pub(super) delivery_tag: u64,
    pub(super) queue: String,
    pub(super) dead_letter_queue: Option<String>,
    pub(super) message: Message,
    pub(super) publisher: Arc<Publisher>,
    pub(super) settled: bool,
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(&mut self) -> Result<(), BrokerError> {
        self.settled = true;
        self.channel
            .0
            .basic_ack(self.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(classify)
    }

    async fn nack(&mut self, requeue: bool) -> Result<(), BrokerError> {
        self.settled = true;
        self.channel
            .0
            .basic_nack(
                self.delivery_tag,
                BasicNackOptions {
                    requeue,
                    ..BasicNackOptions::default()
                },
            )
            .await
            .map_err(classify)
    }

    async fn dead_letter(&mut self, reason: &str) -> Result<(), BrokerError> {
        let Some(dlq) = self.dead_letter_queue.clone() else {
            self.nack(true).await?;
            return Err(BrokerError::NotFound(format!(
                "queue {:?} has no dead-letter queue",
                self.queue
            )));
        };
        let mut copy = self.message.clone();
        copy.properties.mark_dead_lettered(reason, &self.queue);
        // Settled only once the copy is confirmed: a crash in between duplicates the
        // message in the DLQ rather than losing it.
        match self
            .publisher
            .publish(vec![(String::new(), dlq, copy)])
            .await
        {
            Ok(()) => self.ack().await,
            Err(error) => {
                self.nack(true).await?;
                Err(error)
            }
        }
    }
}

impl Drop for RabbitAcker {
    fn drop(&mut self) {
        if !self.settled && self.channel.0.status().connected() {
            let channel = self.channel.clone();
            let tag = self.delivery_tag;
            tokio::spawn(async move {
                let _ = channel
                    .0
                    .basic_nack(
                        tag,
                        BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        },
                    )
                    .await;
            });
        }
    }
}
