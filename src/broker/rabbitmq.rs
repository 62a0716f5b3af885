//! The [`Broker`] on RabbitMQ, through lapin: what runs when `RABBITMQ_URL` is set.
//!
//! One connection per process. Publishing goes through one confirm-mode channel, so a
//! batch returns only once RabbitMQ has confirmed every message; each consumer gets its
//! own channel with its prefetch as QoS. Declarations and queue lookups use a short-lived
//! channel each, because RabbitMQ answers a conflict or a missing queue by closing the
//! channel it came on.
//!
//! Two things AMQP lacks are built from its parts, with the same behaviour as the
//! embedded broker:
//! - delays: a delayed message waits in a delay queue (`<target>.delay.<ms>`) whose
//!   message TTL is the delay and whose dead-letter route is the message's real
//!   destination; the queue is re-declared on each use and expires when idle;
//! - dead-lettering with a reason: the consumer republishes the message, with the
//!   reason headers, to its queue's dead-letter queue and acknowledges it only after
//!   the broker confirmed the copy.

mod acker;
mod arguments;
mod link;
mod nodes;
mod properties;
mod publisher;
mod tls;
mod turns;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::Channel;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::mpsc;

pub use self::arguments::DELIVERY_LIMIT;
pub use self::nodes::Nodes;
pub use self::tls::TlsFiles;

use self::acker::{ConsumerChannel, RabbitAcker};
use self::arguments::DeadLetterRoute;
use self::link::{Declaration, Link};
use self::properties::message_of;
use self::publisher::Publisher;
use self::turns::Turns;
use super::meter::QueueMeter;
use super::reply::Replies;

use super::{
    Broker, BrokerError, Confirms, Consumer, Delivery, ExchangeSpec, Message, Publish, QueueSpec,
    QueueStats, QueueType,
};

/// How long an unused delay queue outlives its last message before RabbitMQ deletes it.
const DELAY_QUEUE_IDLE: Duration = Duration::from_secs(60);

pub struct RabbitMqBroker {
    link: Arc<Link>,
    publisher: Arc<Publisher>,
    /// Requests go through a channel of their own that also consumes direct reply-to:
    /// RabbitMQ delivers a reply only to the channel its request was published on.
    requester: Publisher,
    replies: Arc<Replies>,
    /// What this process declared, so a consumer knows its queue's dead-letter queue and
    /// the depth of a queue can include the delay queues feeding it.
    declared: Arc<Mutex<Declared>>,
    /// Delay queues are declared one at a time each ([`Turns`]).
    delay_queue_turns: Turns,
}

#[derive(Default)]
struct Declared {
    dead_letter_queues: HashMap<String, String>,
    delay_queues: HashMap<String, Vec<String>>,
}

impl RabbitMqBroker {
    /// Connects to the first of `nodes` that answers; every durable queue it declares
    /// is of `queue_type` where RabbitMQ allows it.
    pub async fn connect(nodes: Nodes, queue_type: QueueType) -> Result<Self, BrokerError> {
        let link = Arc::new(Link::open(nodes, queue_type).await?);
        let replies = Arc::new(Replies::default());
        Ok(Self {
            publisher: Arc::new(Publisher::new(link.clone(), None)),
            requester: Publisher::new(link.clone(), Some(replies.clone())),
            replies,
            link,
            declared: Arc::default(),
            delay_queue_turns: Turns::default(),
        })
    }

    /// Runs `op` on a channel of its own and closes it, whatever the outcome.
    async fn on_own_channel<T, F, Fut>(&self, op: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        self.link.on_own_channel(op).await
    }

    /// Declares the delay queue that holds messages for `exchange`/`routing_key` for
    /// `delay`, and returns its name.
    async fn declare_delay_queue(
        &self,
        exchange: &str,
        routing_key: &str,
        delay: Duration,
    ) -> Result<String, BrokerError> {
        let ms = delay_bucket(delay);
        let target = if exchange.is_empty() {
            routing_key.to_owned()
        } else {
            format!("{exchange}.{routing_key}")
        };
        let name = format!("{target}.delay.{ms}");
        let expires = ms + DELAY_QUEUE_IDLE.as_millis() as i64;
        let route = DeadLetterRoute {
            exchange,
            routing_key,
        };
        let arguments = arguments::delay_queue(ms, expires, route, self.link.queue_type());
        let queue = name.clone();
        let declare = self.on_own_channel(|channel| async move {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    arguments,
                )
                .await
        });
        self.delay_queue_turns.one_at_a_time(&name, declare).await?;
        if exchange.is_empty() {
            let mut declared = self.declared.lock().expect("declared lock");
            let delays = declared.delay_queues.entry(target).or_default();
            if !delays.contains(&name) {
                delays.push(name.clone());
            }
        }
        Ok(name)
    }

    /// A queue's ready messages and consumers (a passive declare), or `None` when it
    /// does not exist.
    async fn inspect(&self, queue: &str) -> Result<Option<QueueStats>, BrokerError> {
        let name = queue.to_owned();
        let result = self
            .on_own_channel(|channel| async move {
                channel
                    .queue_declare(
                        name.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
            })
            .await;
        match result {
            Ok(state) => Ok(Some(QueueStats {
                ready: u64::from(state.message_count()),
                consumers: u64::from(state.consumer_count()),
                ..QueueStats::default()
            })),
            Err(BrokerError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

#[async_trait]
impl Broker for RabbitMqBroker {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        self.link.declare(Declaration::Exchange(spec.clone())).await
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.link.declare(Declaration::Queue(spec.clone())).await?;
        if let Some(dlq) = &spec.dead_letter_queue {
            self.declared
                .lock()
                .expect("declared lock")
                .dead_letter_queues
                .insert(spec.name.clone(), dlq.clone());
        }
        Ok(())
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        pattern: &str,
    ) -> Result<(), BrokerError> {
        let binding = Declaration::Binding {
            queue: queue.to_owned(),
            exchange: exchange.to_owned(),
            pattern: pattern.to_owned(),
        };
        self.link.declare(binding).await
    }

    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        let delays = self
            .declared
            .lock()
            .expect("declared lock")
            .delay_queues
            .remove(name)
            .unwrap_or_default();
        self.link.forget_queue(name);
        for queue in delays.iter().map(String::as_str).chain([name]) {
            let queue = queue.to_owned();
            self.on_own_channel(|channel| async move {
                channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await
            })
            .await?;
        }
        Ok(())
    }

    async fn send(&self, batch: Vec<Publish>) -> Result<Confirms, BrokerError> {
        let mut routed = Vec::with_capacity(batch.len());
        let mut delay_queues: HashMap<(String, String, Duration), String> = HashMap::new();
        for publish in batch {
            match publish.delay.filter(|delay| !delay.is_zero()) {
                None => routed.push((publish.exchange, publish.routing_key, publish.message)),
                Some(delay) => {
                    let key = (publish.exchange.clone(), publish.routing_key.clone(), delay);
                    let queue = match delay_queues.get(&key) {
                        Some(queue) => queue.clone(),
                        None => {
                            self.ensure_exchange_exists(&publish.exchange).await?;
                            let queue = self
                                .declare_delay_queue(&publish.exchange, &publish.routing_key, delay)
                                .await?;
                            delay_queues.insert(key, queue.clone());
                            queue
                        }
                    };
                    routed.push((String::new(), queue, publish.message));
                }
            }
        }
        self.publisher.send(routed).await
    }

    async fn request(
        &self,
        mut publish: Publish,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        if publish.delay.is_some() {
            return Err(BrokerError::Other("a request cannot be delayed".into()));
        }
        let pending = self.replies.expect();
        pending.address(&mut publish.message);
        self.requester
            .publish(vec![(
                publish.exchange,
                publish.routing_key,
                publish.message,
            )])
            .await?;
        pending.wait(timeout).await
    }

    fn waiting_requests(&self) -> usize {
        self.replies.waiting()
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
        let channel = self.link.channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(classify)?;
        let tag = ShortString::from(format!("retrocat-{}", uuid::Uuid::now_v7()));
        let mut stream = channel
            .basic_consume(
                queue.into(),
                tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(classify)?;
        let channel = Arc::new(ConsumerChannel(channel));
        let dead_letter_queue = self
            .declared
            .lock()
            .expect("declared lock")
            .dead_letter_queues
            .get(queue)
            .cloned();
        let source = queue.to_owned();
        let meter = QueueMeter::of(queue);
        let publisher = self.publisher.clone();
        let (sender, receiver) = mpsc::channel(usize::from(prefetch.max(1)));
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    () = sender.closed() => break,
                };
                let Some(Ok(delivery)) = next else { return };
                let message = message_of(&delivery);
                let acker = RabbitAcker {
                    channel: channel.clone(),
                    delivery_tag: delivery.delivery_tag,
                    queue: source.clone(),
                    dead_letter_queue: dead_letter_queue.clone(),
                    message: message.clone(),
                    publisher: publisher.clone(),
                    settled: false,
                };
                let delivery = Delivery::new(
                    message,
                    delivery.exchange.to_string(),
                    delivery.routing_key.to_string(),
                    delivery.redelivered,
                    Box::new(acker),
                    meter.clone(),
                );
                if sender.send(delivery).await.is_err() {
                    break;
                }
            }
            // The consumer was dropped: no more deliveries. Those in hand are settled on
            // the channel, which closes once they are (see `ConsumerChannel`).
            let _ = channel
                .0
                .basic_cancel(tag, BasicCancelOptions::default())
                .await;
        });
        Ok(Consumer::new(receiver))
    }

    /// Over AMQP: ready messages and consumers of the queue, and the messages in the
    /// delay queues this process declared for it. Unacknowledged counts need the
    /// management API.
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let mut stats = self.queue_glance(queue).await?;
        let delays = self
            .declared
            .lock()
            .expect("declared lock")
            .delay_queues
            .get(queue)
            .cloned()
            .unwrap_or_default();
        for delay_queue in delays {
            if let Some(delayed) = self.inspect(&delay_queue).await? {
                stats.delayed += delayed.ready;
            }
        }
        Ok(stats)
    }

    async fn queue_glance(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        self.inspect(queue)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("queue {queue:?}")))
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        self.link.connection().await.map(drop)
    }

    async fn close(&self) -> Result<(), BrokerError> {
        self.link.close().await
    }
}

impl RabbitMqBroker {
    /// Fails with [`BrokerError::NotFound`] unless `exchange` exists (`""` always does):
    /// a delayed message must not wait only to be dropped at its destination.
    async fn ensure_exchange_exists(&self, exchange: &str) -> Result<(), BrokerError> {
        if exchange.is_empty() {
            return Ok(());
        }
        let name = exchange.to_owned();
        self.on_own_channel(|channel| async move {
            channel
                .exchange_declare(
                    name.as_str().into(),
                    lapin::ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
        })
        .await
    }
}

/// The delay queue a delay waits in, in milliseconds: the delay rounded *up* to two
/// significant digits, but never by more than 20 ms. Delays so share a bounded number
/// of queues (retry delays are jittered in coarse steps to share them too), and a
/// message is never delivered early, nor more than 20 ms late plus RabbitMQ's own
/// expiry latency: within the 100 ms the embedded broker also keeps.
fn delay_bucket(delay: Duration) -> i64 {
    const MAX_UNIT_MS: u64 = 20;
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut unit = 1;
    while ms / unit >= 100 {
        unit *= 10;
    }
    let unit = unit.min(MAX_UNIT_MS);
    i64::try_from(ms.div_ceil(unit).saturating_mul(unit)).unwrap_or(i64::MAX)
}

/// Maps lapin's errors to what callers act on: retry later, fix the topology, or a
/// missing exchange or queue.
fn classify(error: lapin::Error) -> BrokerError {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                BrokerError::NotFound(amqp.get_message().to_string())
            }
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
                BrokerError::Topology(amqp.get_message().to_string())
            }
            _ => BrokerError::Other(error.to_string()),
        },
        // Connection and channel failures: the caller retries once the broker is back.
        _ => BrokerError::Unavailable(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_two_significant_digits_or_20_ms() {
        let bucket = |ms| delay_bucket(Duration::from_millis(ms));
        assert_eq!(bucket(0), 1);
        assert_eq!(bucket(87), 87);
        assert_eq!(bucket(100), 100);
        assert_eq!(bucket(123), 130);
        assert_eq!(bucket(1234), 1240);
        assert_eq!(bucket(1300), 1300);
        assert_eq!(bucket(23_456), 23_460);
        assert_eq!(bucket(60_000), 60_000);
    }
}
