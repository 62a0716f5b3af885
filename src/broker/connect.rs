//! Which broker a process uses: RabbitMQ where `RABBITMQ_URL` names one, the embedded
//! broker otherwise.

use super::embedded::EmbeddedBroker;
use super::rabbitmq::{Nodes, RabbitMqBroker};
use super::sealed::{MessageKeys, SealedBroker};
use super::{Broker, QueueType};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// The RabbitMQ broker at `rabbitmq`'s nodes, its durable queues of `queue_type`, or
/// else the embedded one, its queues kept in the file `embedded_path`; as it is,
/// bodies not sealed.
pub async fn connect(
    rabbitmq: Option<&Nodes>,
    queue_type: QueueType,
    embedded_path: &Path,
) -> anyhow::Result<Arc<dyn Broker>> {
    if let Some(nodes) = rabbitmq {
        return Ok(Arc::new(self::rabbitmq(nodes, queue_type).await?));
    }
    let broker = EmbeddedBroker::open(embedded_path)
        .await
        .with_context(|| format!("opening the embedded broker at {}", embedded_path.display()))?;
    Ok(Arc::new(broker))
}

/// The RabbitMQ broker at `nodes` (`RABBITMQ_URL`), its durable queues of `queue_type`.
pub async fn rabbitmq(nodes: &Nodes, queue_type: QueueType) -> anyhow::Result<RabbitMqBroker> {
    RabbitMqBroker::connect(nodes.clone(), queue_type)
        .await
        .with_context(|| {
            format!("is RabbitMQ running at {nodes}, and are RABBITMQ_URL's credentials right?")
        })
}

/// `broker` with bodies sealed and opened by `keys` (`RETROCAT_MESSAGE_KEYS`), and
/// plain messages refused if `require_sealed`; `broker` itself without keys.
pub fn sealed(
    broker: Arc<dyn Broker>,
    keys: Option<Arc<MessageKeys>>,
    require_sealed: bool,
) -> Arc<dyn Broker> {
    match keys {
        Some(keys) => Arc::new(SealedBroker::new(broker, keys).requiring_sealed(require_sealed)),
        None => broker,
    }
}
