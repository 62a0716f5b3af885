//! Which broker a process uses: RabbitMQ where `RABBITMQ_URL` names one, the embedded
//! broker otherwise.

use super::Broker;
use super::embedded::EmbeddedBroker;
use super::rabbitmq::RabbitMqBroker;
use super::sealed::{MessageKeys, SealedBroker};
use anyhow::{Context, bail};
use std::path::Path;
use std::sync::Arc;

/// The RabbitMQ broker at `rabbitmq_url`, or else the embedded one, its queues kept in
/// the file `embedded_path`; as it is, bodies not sealed.
pub async fn connect(
    rabbitmq_url: Option<&str>,
    embedded_path: &Path,
) -> anyhow::Result<Arc<dyn Broker>> {
    if let Some(url) = rabbitmq_url {
        return Ok(Arc::new(rabbitmq(url).await?));
    }
    let broker = EmbeddedBroker::open(embedded_path)
        .await
        .with_context(|| format!("opening the embedded broker at {}", embedded_path.display()))?;
    Ok(Arc::new(broker))
}

/// The RabbitMQ broker at `url` (`RABBITMQ_URL`), refusing URLs of other schemes.
pub async fn rabbitmq(url: &str) -> anyhow::Result<RabbitMqBroker> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        bail!(
            "RABBITMQ_URL must start with amqp:// or amqps:// (got {url:?}); unset it to use \
             the embedded broker"
        );
    }
    RabbitMqBroker::connect(url)
        .await
        .context("is RabbitMQ running, and are RABBITMQ_URL's credentials right?")
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
