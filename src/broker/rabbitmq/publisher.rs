//! The confirm-mode channel that publishes, and the wait for its confirms.

use super::classify;
use super::link::Link;
use super::properties::{message_of, to_amqp};
use crate::broker::reply::{DIRECT_REPLY_TO, Replies};
use crate::broker::{BrokerError, Confirms, Message};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, PublisherConfirm};
use std::sync::Arc;
use tokio::sync::Mutex as AsyncMutex;

/// A confirm-mode channel for publishing, replaced when it closes. The broker's
/// publisher is shared with its deliveries' ackers (dead-lettering publishes a copy);
/// its requester also consumes the replies to what it publishes.
pub(super) struct Publisher {
    link: Arc<Link>,
    channel: AsyncMutex<Option<Channel>>,
    /// Where replies consumed on this channel go; `None` for a plain publisher.
    replies: Option<Arc<Replies>>,
}

impl Publisher {
    pub(super) fn new(link: Arc<Link>, replies: Option<Arc<Replies>>) -> Self {
        Self {
            link,
            channel: AsyncMutex::new(None),
            replies,
        }
    }

    /// A new channel in confirm mode, consuming direct reply-to for a requester. The
    /// replies of requests published on an earlier channel are lost with it: those
    /// requests time out.
    async fn open_channel(&self) -> Result<Channel, BrokerError> {
        let channel = self.link.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(classify)?;
        if let Some(replies) = self.replies.clone() {
            let mut stream = channel
                .basic_consume(
                    DIRECT_REPLY_TO.into(),
                    format!("retrocat-replies-{}", uuid::Uuid::now_v7()).into(),
                    BasicConsumeOptions {
                        no_ack: true, // required by direct reply-to
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(classify)?;
            tokio::spawn(async move {
                while let Some(Ok(delivery)) = stream.next().await {
                    replies.deliver(message_of(&delivery));
                }
            });
        }
        Ok(channel)
    }

    /// Sends a batch on the publisher channel and waits for every confirm.
    pub(super) async fn publish(
        &self,
        batch: Vec<(String, String, Message)>,
    ) -> Result<(), BrokerError> {
        self.send(batch).await?.await
    }

    /// Sends a batch on the publisher channel and returns its confirms. The channel is
    /// held while the batch is sent, so batches keep their order, but not while its
    /// confirms are awaited (RabbitMQ confirms a persistent message once it is on disk
    /// or consumed, milliseconds to tens of milliseconds): others send meanwhile.
    pub(super) async fn send(
        &self,
        batch: Vec<(String, String, Message)>,
    ) -> Result<Confirms, BrokerError> {
        let mut guard = self.channel.lock().await;
        let channel = match guard.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.open_channel().await?;
                *guard = Some(channel.clone());
                channel
            }
        };
        let mut confirms = Vec::with_capacity(batch.len());
        for (exchange, routing_key, message) in batch {
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &message.body,
                    to_amqp(&message.properties),
                )
                .await
                .map_err(classify)?;
            confirms.push((exchange, routing_key, confirm));
        }
        drop(guard);
        Ok(Box::pin(confirmed(confirms)))
    }
}

/// Waits for the confirm of each message sent. As in AMQP, a message no binding matches
/// is dropped; the topology gives the exchanges that matter an alternate exchange to
/// catch those. A refusal (a nack: a queue it routes to has no leader yet or any more,
/// or is full) is [`BrokerError::Unavailable`]: sent again later, it may be taken.
async fn confirmed(confirms: Vec<(String, String, PublisherConfirm)>) -> Result<(), BrokerError> {
    for (exchange, routing_key, confirm) in confirms {
        match confirm.await.map_err(classify)? {
            Confirmation::Ack(_) => {}
            Confirmation::Nack(_) => {
                return Err(BrokerError::Unavailable(format!(
                    "RabbitMQ refused a message for {exchange:?}/{routing_key:?}: a queue \
                     it routes to cannot take it now"
                )));
            }
            Confirmation::NotRequested => {
                return Err(BrokerError::Other(
                    "the publisher channel is not in confirm mode".into(),
                ));
            }
        }
    }
    Ok(())
}
