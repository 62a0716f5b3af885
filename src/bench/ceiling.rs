//! The broker's ceiling: how many messages a second the broker alone moves on this
//! machine, now, with the same guarantees retrocat asks of it (persistent messages on a
//! durable queue, publisher confirms, manual acknowledgements). No event pipeline can
//! beat it, so end-to-end figures are reported as a share of it.

use super::load::bar;
use crate::broker::embedded::EmbeddedBroker;
use crate::broker::{Broker, BrokerError, Message, Properties, Publish, QueueSpec};
use crate::config::BrokerArgs;
use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Messages per confirmed publish, as the outbox relay batches them.
const BATCH: u64 = 100;
/// Publishes awaiting their confirms at once.
const PUBLISHERS: usize = 4;
/// The consumer's prefetch, the workers' default.
const PREFETCH: u16 = 256;
/// About the size of a game event.
const BODY_BYTES: usize = 300;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ceiling {
    /// `embedded` or `rabbitmq`.
    pub broker: String,
    pub messages: u64,
    pub seconds: f64,
    pub per_second: f64,
}

/// Measures the ceiling of a broker of `kind` (the system's): the RabbitMQ `brokers`
/// names, with its queue type, or a fresh embedded broker in the temporary directory (the system's
/// own broker file is held by the system).
pub async fn measure(kind: &str, brokers: &BrokerArgs, messages: u64) -> anyhow::Result<Ceiling> {
    let elapsed = match kind {
        "rabbitmq" => {
            let Some(nodes) = brokers.rabbitmq().map_err(anyhow::Error::msg)? else {
                bail!(
                    "the system runs on RabbitMQ: set RABBITMQ_URL (or --rabbitmq-url) to \
                     measure the broker's ceiling on it, or --ceiling-messages 0 to skip it"
                );
            };
            let broker = crate::broker::connect::rabbitmq(&nodes, brokers.queue_type).await?;
            let elapsed = publish_and_consume(&broker, messages).await;
            broker.close().await?;
            elapsed?
        }
        "embedded" => {
            let dir = std::env::temp_dir()
                .join(format!("retrocat-bench-{}", uuid::Uuid::now_v7().simple()));
            let broker = EmbeddedBroker::open(&dir.join("broker.db")).await?;
            let elapsed = publish_and_consume(&broker, messages).await;
            drop(broker);
            // The broker lets go of its file once its task ends; a leftover file in the
            // temporary directory is harmless.
            let _ = std::fs::remove_dir_all(&dir);
            elapsed?
        }
        other => bail!("the system reports an unknown broker {other:?}"),
    };
    Ok(Ceiling {
        broker: kind.to_owned(),
        messages,
        seconds: elapsed.as_secs_f64(),
        per_second: messages as f64 / elapsed.as_secs_f64(),
    })
}

/// Publishes `messages` to a fresh queue while consuming them; the time from the first
/// publish to the last acknowledgement.
async fn publish_and_consume(broker: &dyn Broker, messages: u64) -> anyhow::Result<Duration> {
    let queue = format!("bench.ceiling.{}", uuid::Uuid::now_v7().simple());
    broker.declare_queue(&QueueSpec::durable(&queue)).await?;
    let moved = async {
        let mut consumer = broker.consume(&queue, PREFETCH).await?;
        let progress = bar(messages, "ceiling");
        let message = Message {
            body: Bytes::from(vec![b'x'; BODY_BYTES]),
            properties: Properties::default(),
        };
        let start = Instant::now();
        let batches = (0..messages).step_by(BATCH as usize).map(|first| {
            let size = BATCH.min(messages - first);
            (0..size)
                .map(|_| Publish::to_queue(&queue, message.clone()))
                .collect::<Vec<_>>()
        });
        let publish = futures::stream::iter(batches)
            .map(|batch| broker.publish(batch))
            .buffer_unordered(PUBLISHERS)
            .try_for_each(|()| async { Ok(()) });
        let consume = async {
            let (mut received, mut batch) = (0, Vec::new());
            while received < messages {
                let limit = usize::from(PREFETCH);
                if consumer.next_batch(&mut batch, limit).await == 0 {
                    return Err(BrokerError::Unavailable(
                        "the consumer was cancelled".into(),
                    ));
                }
                received += batch.len() as u64;
                progress.inc(batch.len() as u64);
                for delivery in batch.drain(..) {
                    delivery.ack().await?;
                }
            }
            Ok(())
        };
        tokio::try_join!(publish, consume)?;
        progress.finish_and_clear();
        Ok::<_, BrokerError>(start.elapsed())
    }
    .await;
    let deleted = broker.delete_queue(&queue).await;
    let elapsed = moved.context("measuring the broker's ceiling")?;
    deleted.with_context(|| format!("deleting the ceiling's queue {queue}"))?;
    Ok(elapsed)
}
