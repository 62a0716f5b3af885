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

mod link;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::{Mutex as AsyncMutex, mpsc};

use self::link::{Declaration, Link};
use super::meter::QueueMeter;
use super::reply::{DIRECT_REPLY_TO, Replies};

use super::{
    Acker, Broker, BrokerError, Confirms, Consumer, Delivery, ExchangeSpec, HeaderValue, Headers,
    Message, Properties, Publish, QueueSpec, QueueStats,
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
}

#[derive(Default)]
struct Declared {
    dead_letter_queues: HashMap<String, String>,
    delay_queues: HashMap<String, Vec<String>>,
}

impl RabbitMqBroker {
    /// Connects to `url` (`amqp://` or `amqps://`).
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        let link = Arc::new(Link::open(url).await?);
        let replies = Arc::new(Replies::default());
        Ok(Self {
            publisher: Arc::new(Publisher::new(link.clone(), None)),
            requester: Publisher::new(link.clone(), Some(replies.clone())),
            replies,
            link,
            declared: Arc::default(),
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
        let mut arguments = FieldTable::default();
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
        arguments.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(ms + DELAY_QUEUE_IDLE.as_millis() as i64),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(exchange.into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(routing_key.into()),
        );
        let queue = name.clone();
        self.on_own_channel(|channel| async move {
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
        })
        .await?;
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
        let Some(mut stats) = self.inspect(queue).await? else {
            return Err(BrokerError::NotFound(format!("queue {queue:?}")));
        };
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

/// A confirm-mode channel for publishing, replaced when it closes. The broker's
/// publisher is shared with its deliveries' ackers (dead-lettering publishes a copy);
/// its requester also consumes the replies to what it publishes.
struct Publisher {
    link: Arc<Link>,
    channel: AsyncMutex<Option<Channel>>,
    /// Where replies consumed on this channel go; `None` for a plain publisher.
    replies: Option<Arc<Replies>>,
}

impl Publisher {
    fn new(link: Arc<Link>, replies: Option<Arc<Replies>>) -> Self {
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
    async fn publish(&self, batch: Vec<(String, String, Message)>) -> Result<(), BrokerError> {
        self.send(batch).await?.await
    }

    /// Sends a batch on the publisher channel and returns its confirms. The channel is
    /// held while the batch is sent, so batches keep their order, but not while its
    /// confirms are awaited (RabbitMQ confirms a persistent message once it is on disk
    /// or consumed, milliseconds to tens of milliseconds): others send meanwhile.
    async fn send(&self, batch: Vec<(String, String, Message)>) -> Result<Confirms, BrokerError> {
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
/// catch those.
async fn confirmed(confirms: Vec<(String, String, PublisherConfirm)>) -> Result<(), BrokerError> {
    for (exchange, routing_key, confirm) in confirms {
        match confirm.await.map_err(classify)? {
            Confirmation::Ack(_) => {}
            Confirmation::Nack(_) => {
                return Err(BrokerError::Other(format!(
                    "RabbitMQ refused a message for {exchange:?}/{routing_key:?}"
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

/// A consumer's channel, closed once the consumer and every delivery it handed out are
/// gone. Closing it sooner would fail the acknowledgements of deliveries still being
/// processed (a worker shutting down finishes those); closing it returns whatever is
/// still unacknowledged to the queue.
struct ConsumerChannel(Channel);

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

struct RabbitAcker {
    channel: Arc<ConsumerChannel>,
    delivery_tag: u64,
    queue: String,
    dead_letter_queue: Option<String>,
    message: Message,
    publisher: Arc<Publisher>,
    settled: bool,
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

fn to_amqp(properties: &Properties) -> BasicProperties {
    let mut amqp = BasicProperties::default()
        .with_delivery_mode(if properties.persistent { 2 } else { 1 })
        .with_priority(properties.priority);
    if let Some(id) = &properties.message_id {
        amqp = amqp.with_message_id(id.as_str().into());
    }
    if let Some(content_type) = &properties.content_type {
        amqp = amqp.with_content_type(content_type.as_str().into());
    }
    if let Some(id) = &properties.correlation_id {
        amqp = amqp.with_correlation_id(id.as_str().into());
    }
    if let Some(reply_to) = &properties.reply_to {
        amqp = amqp.with_reply_to(reply_to.as_str().into());
    }
    if !properties.headers.is_empty() {
        let mut table = FieldTable::default();
        for (name, value) in &properties.headers {
            let value = match value {
                HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
                HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
                HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            };
            table.insert(name.as_str().into(), value);
        }
        amqp = amqp.with_headers(table);
    }
    amqp
}

fn message_of(delivery: &lapin::message::Delivery) -> Message {
    Message {
        body: Bytes::from(delivery.data.clone()),
        properties: from_amqp(&delivery.properties),
    }
}

fn from_amqp(amqp: &BasicProperties) -> Properties {
    let text = |value: &Option<ShortString>| value.as_ref().map(|s| s.as_str().to_owned());
    let mut headers = Headers::new();
    if let Some(table) = amqp.headers() {
        for (name, value) in table.inner() {
            let value = match value {
                AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
                AMQPValue::ShortShortInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::ShortShortUInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::ShortInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::ShortUInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::LongInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::LongUInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
                AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
                AMQPValue::LongString(s) => {
                    HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                // Headers of other types (x-death tables, floats) are not ours to read.
                _ => continue,
            };
            headers.insert(name.as_str().to_owned(), value);
        }
    }
    Properties {
        message_id: text(amqp.message_id()),
        content_type: text(amqp.content_type()),
        correlation_id: text(amqp.correlation_id()),
        reply_to: text(amqp.reply_to()),
        priority: amqp.priority().unwrap_or(0),
        persistent: *amqp.delivery_mode() == Some(2),
        headers,
    }
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

    #[test]
    fn properties_survive_the_amqp_mapping() {
        let properties = Properties {
            message_id: Some("event-1".into()),
            content_type: Some("application/json".into()),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            priority: 4,
            persistent: true,
            headers: [
                ("x-retry-count".to_owned(), HeaderValue::Int(3)),
                ("x-flag".to_owned(), HeaderValue::Bool(false)),
                ("traceparent".to_owned(), HeaderValue::from("00-abc-01")),
            ]
            .into(),
        };
        assert_eq!(from_amqp(&to_amqp(&properties)), properties);
    }
}
