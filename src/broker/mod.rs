//! What a message broker must do for retrocat, and the brokers that do it.
//!
//! The [`Broker`] trait is the contract: exchanges and queues declared idempotently,
//! confirmed batch publishing (a publish returns only once every message is durable),
//! delayed publishing, priorities, consumers with a prefetch window and manual
//! acknowledgement, and dead-lettering with a reason. The embedded broker
//! ([`embedded`]) implements it on SQLite for the one-process default; RabbitMQ is the
//! second implementation. `tests/broker_conformance.rs` holds both to the same behaviour.
//!
//! Delivery is at least once: a delivery that is dropped without being settled, or whose
//! consumer dies, is delivered again. Consumers are therefore idempotent.

pub mod connect;
pub mod dead_letters;
pub mod embedded;
pub mod meter;
pub mod rabbitmq;
pub mod reply;
pub mod sealed;
pub mod topology;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use meter::QueueMeter;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Header names shared by every broker and consumer.
pub mod headers {
    /// How many times the message was retried (the original consumer's header).
    pub const RETRY_COUNT: &str = "x-retry-count";
    /// Why a message was dead-lettered.
    pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
    /// The queue the message was dead-lettered from.
    pub const DEAD_LETTER_QUEUE: &str = "x-dead-letter-queue";
    /// When the message was dead-lettered (RFC 3339).
    pub const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
    /// W3C trace context, so a trace follows an event from the API to the worker.
    pub const TRACEPARENT: &str = "traceparent";
    /// The cipher a sealed body was encrypted with (see `broker::sealed`).
    pub const ENCRYPTION: &str = "x-encryption";
    /// The id of the key a sealed body was encrypted with.
    pub const KEY_ID: &str = "x-key-id";
    /// Why a delivery's sealed body could not be opened, on a delivery handed on as it
    /// is (see `broker::sealed`): set by the consuming process, never carried on the
    /// broker.
    pub const UNOPENABLE: &str = "x-unopenable";

    /// Whether `name` is a header only retrocat and the broker may set, never a client
    /// (`POST /api/messages`, `retrocat publish`). Each one is believed by whoever reads
    /// it: the dead-letter headers and the retry and replay counts make a message pass
    /// for a real dead letter (listed with its attempts, replayed where it says it came
    /// from), and the encryption markers choose how a body is opened. Compared without
    /// case, as a client could not tell `X-Retry-Count` from `x-retry-count`.
    ///
    /// The prefix `x-dead-letter` covers `x-dead-letter-*` and [`DEAD_LETTERED_AT`]
    /// alike; `x-death`, `x-first-death-*` and `x-last-death-*` are RabbitMQ's own
    /// record of a dead-lettering.
    pub fn is_reserved(name: &str) -> bool {
        const EXACT: [&str; 6] = [
            RETRY_COUNT,
            super::dead_letters::REPLAY_COUNT,
            ENCRYPTION,
            KEY_ID,
            UNOPENABLE,
            "x-death",
        ];
        const PREFIXES: [&str; 3] = ["x-dead-letter", "x-first-death-", "x-last-death-"];
        let name = name.to_ascii_lowercase();
        EXACT.contains(&name.as_str()) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn what_retrocat_and_the_broker_set_is_reserved_in_any_case() {
            for name in [
                DEAD_LETTER_REASON,
                DEAD_LETTER_QUEUE,
                DEAD_LETTERED_AT,
                "x-dead-letter-anything",
                "X-Retry-Count",
                "x-replay-count",
                "X-KEY-ID",
                ENCRYPTION,
                UNOPENABLE,
                "x-death",
                "x-first-death-queue",
            ] {
                assert!(is_reserved(name), "{name}");
            }
            for name in [
                TRACEPARENT,
                "x-origin",
                "x-retry",
                "retry-count",
                "x-deathly",
            ] {
                assert!(!is_reserved(name), "{name}");
            }
        }
    }
}

/// A header value: the subset of AMQP field types retrocat uses.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum HeaderValue {
    Int(#[serde(deserialize_with = "crate::domain::number::whole_number")] i64),
    Bool(bool),
    Str(String),
}

impl HeaderValue {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(value) => Some(*value),
            Self::Str(value) => value.parse().ok(),
            Self::Bool(_) => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(value) => Some(value),
            _ => None,
        }
    }
}

impl From<i64> for HeaderValue {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<String> for HeaderValue {
    fn from(value: String) -> Self {
        Self::Str(value)
    }
}

impl From<&str> for HeaderValue {
    fn from(value: &str) -> Self {
        Self::Str(value.to_owned())
    }
}

pub type Headers = BTreeMap<String, HeaderValue>;

/// AMQP basic properties that retrocat sets or reads.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Properties {
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// 0 (default) to 10; higher is delivered first from a queue with `max_priority`.
    pub priority: u8,
    /// Delivery mode 2: survives a broker restart.
    pub persistent: bool,
    pub headers: Headers,
}

impl Default for Properties {
    fn default() -> Self {
        Self {
            message_id: None,
            content_type: None,
            correlation_id: None,
            reply_to: None,
            priority: 0,
            persistent: true,
            headers: Headers::new(),
        }
    }
}

impl Properties {
    /// Persistent JSON with a message id: what every event we publish carries.
    pub fn json(message_id: impl Into<String>) -> Self {
        Self {
            message_id: Some(message_id.into()),
            content_type: Some("application/json".into()),
            ..Self::default()
        }
    }

    pub fn header_int(&self, name: &str) -> Option<i64> {
        self.headers.get(name).and_then(HeaderValue::as_int)
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(HeaderValue::as_str)
    }

    /// Adds the headers that say why, from where and when a message was dead-lettered.
    pub fn mark_dead_lettered(&mut self, reason: &str, queue: &str) {
        let headers = &mut self.headers;
        headers.insert(headers::DEAD_LETTER_REASON.into(), reason.into());
        headers.insert(headers::DEAD_LETTER_QUEUE.into(), queue.into());
        headers.insert(
            headers::DEAD_LETTERED_AT.into(),
            HeaderValue::Str(chrono::Utc::now().to_rfc3339()),
        );
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub body: Bytes,
    pub properties: Properties,
}

/// One message to publish. The exchange `""` is the default exchange: it routes to the
/// queue named by the routing key, as in AMQP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub exchange: String,
    pub routing_key: String,
    pub message: Message,
    /// Deliver no earlier than this long after the publish is confirmed.
    pub delay: Option<Duration>,
}

impl Publish {
    /// A message straight to a queue through the default exchange.
    pub fn to_queue(queue: &str, message: Message) -> Self {
        Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            message,
            delay: None,
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing keys are dot-separated words; `*` matches one word, `#` zero or more.
    Topic,
    /// The routing key must equal the binding key.
    Direct,
    /// Every bound queue gets every message.
    Fanout,
}

/// An exchange's declaration. Declaring the same spec twice is a no-op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
    /// Where a message that no binding matches goes instead of being dropped
    /// (RabbitMQ's `alternate-exchange`).
    pub alternate_exchange: Option<String>,
}

impl ExchangeSpec {
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Self {
            name: name.into(),
            kind,
            alternate_exchange: None,
        }
    }

    pub fn with_alternate_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.alternate_exchange = Some(exchange.into());
        self
    }
}

/// How RabbitMQ stores the durable queues retrocat declares (`--queue-type`); the
/// embedded broker has one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// One copy on one node: the fastest, and what older clients declare.
    #[default]
    Classic,
    /// Replicated (Raft) on a cluster's nodes: survives the loss of a node. Every
    /// queue but one with priorities (`catalog.rpc`).
    Quorum,
}

/// A queue's declaration. Declaring the same spec twice is a no-op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// Survives a broker restart, and so do its persistent messages.
    pub durable: bool,
    /// Belongs to this process: deleted when the broker connection closes (as a quorum
    /// queue on RabbitMQ, once unused for a minute).
    pub exclusive: bool,
    /// Enables priorities 0..=max_priority (RabbitMQ's `x-max-priority`).
    pub max_priority: Option<u8>,
    /// Where [`Delivery::dead_letter`] sends messages. Brokers republish there with the
    /// reason rather than setting a dead-letter argument on the queue, so a queue keeps
    /// the plain arguments older clients declare it with.
    pub dead_letter_queue: Option<String>,
}

impl QueueSpec {
    pub fn durable(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            durable: true,
            exclusive: false,
            max_priority: None,
            dead_letter_queue: None,
        }
    }

    pub fn exclusive(name: impl Into<String>) -> Self {
        Self {
            durable: false,
            exclusive: true,
            ..Self::durable(name)
        }
    }

    pub fn with_max_priority(mut self, max: u8) -> Self {
        self.max_priority = Some(max);
        self
    }

    pub fn with_dead_letter_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter_queue = Some(queue.into());
        self
    }
}

/// What a queue holds now, as its broker reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages waiting for a consumer.
    pub ready: u64,
    /// Delivered to a consumer and not settled yet; `None` where the broker does not
    /// say (RabbitMQ over AMQP: a passive declare counts ready messages only).
    pub unacked: Option<u64>,
    /// Waiting out a delay (retries, delayed publishes) before they become ready. On
    /// RabbitMQ, the delay queues this process declared.
    pub delayed: u64,
    pub consumers: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now; the caller retries later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A declaration conflicts with what exists (e.g. a queue with other arguments).
    #[error("topology conflict: {0}")]
    Topology(String),
    /// Publishing to an exchange or queue that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A request's reply did not come within its timeout.
    #[error("no reply within {0:?}")]
    NoReply(Duration),
    #[error("broker error: {0}")]
    Other(String),
}

/// A message broker, as retrocat uses one.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// `"embedded"` or `"rabbitmq"`, for health reports and logs.
    fn kind(&self) -> &'static str;

    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError>;

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError>;

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        pattern: &str,
    ) -> Result<(), BrokerError>;

    /// Deletes a queue and its messages (exclusive queues on shutdown, tests).
    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError>;

    /// Publishes a batch and returns once the broker has durably accepted every message
    /// (publisher confirms). On error none or some may have been accepted: the caller
    /// publishes again, and consumers' idempotency absorbs the duplicates.
    async fn publish(&self, batch: Vec<Publish>) -> Result<(), BrokerError> {
        self.send(batch).await?.await
    }

    /// Sends a batch, in order after every batch sent before, and returns its
    /// [`Confirms`]: [`Self::publish`] split in two, so that a caller can send its next
    /// batch while the broker confirms this one (the outbox relay). A broker whose
    /// acceptance is immediate (the embedded one's is its own commit) answers once it
    /// has accepted the batch, with confirms that are ready.
    async fn send(&self, batch: Vec<Publish>) -> Result<Confirms, BrokerError>;

    /// Publishes `publish` as a request (its correlation id and `reply_to` are set here)
    /// and waits up to `timeout` for the reply (see [`reply`]). On
    /// [`BrokerError::NoReply`] the request may still be handled later; its reply is
    /// then dropped.
    async fn request(&self, publish: Publish, timeout: Duration) -> Result<Message, BrokerError>;

    /// Requests waiting for their reply now: for monitoring, and to show that callers
    /// who stop waiting leave nothing behind.
    fn waiting_requests(&self) -> usize;

    /// Starts consuming a queue with at most `prefetch` unacknowledged deliveries.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError>;

    /// What a queue holds now and who consumes it, for monitoring (`GET /api/queues`).
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError>;

    /// A quick look at a queue: [`Self::queue_stats`] without the delayed messages
    /// (`delayed` is 0), for the relay's queue bound and the workers' rate shares. On
    /// RabbitMQ one round trip, where the full count takes one per delay queue too.
    async fn queue_glance(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let stats = self.queue_stats(queue).await?;
        Ok(QueueStats {
            delayed: 0,
            ..stats
        })
    }

    /// Messages ready or waiting (delayed) in a queue, excluding unacknowledged ones.
    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        let stats = self.queue_stats(queue).await?;
        Ok(stats.ready + stats.delayed)
    }

    /// Fails when the broker cannot be reached (readiness checks).
    async fn ping(&self) -> Result<(), BrokerError>;

    /// Waits until every settlement sent so far has reached the broker, then lets go of
    /// the connection. Acknowledgements do not wait for the broker (as in AMQP), so a
    /// short-lived process (a command-line tool) calls this before it exits, or its
    /// last acknowledgements may be lost and the messages delivered again.
    async fn close(&self) -> Result<(), BrokerError>;
}

/// Resolves once the broker has durably accepted every message of a batch sent with
/// [`Broker::send`], or fails as [`Broker::publish`] would. Dropped unawaited, it
/// leaves the batch unconfirmed: to be published again.
pub type Confirms = BoxFuture<'static, Result<(), BrokerError>>;

/// A stream of deliveries from one queue. Dropping it stops consumption; its
/// unacknowledged deliveries are delivered again.
pub struct Consumer {
    deliveries: tokio::sync::mpsc::Receiver<Delivery>,
}

impl Consumer {
    /// Built by broker implementations around the channel they feed.
    pub fn new(deliveries: tokio::sync::mpsc::Receiver<Delivery>) -> Self {
        Self { deliveries }
    }

    /// The next delivery, or `None` once the consumer was cancelled by the broker.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    /// Waits for the next delivery, then adds it and every other one already here (up
    /// to `limit` in all) to `batch`; 0 once the consumer was cancelled. For consumers
    /// that settle deliveries in batches.
    pub async fn next_batch(&mut self, batch: &mut Vec<Delivery>, limit: usize) -> usize {
        self.deliveries.recv_many(batch, limit).await
    }
}

/// Consumes until shutdown, whatever happens to the broker: `open` declares what it
/// needs and starts a consumer; `drain` takes deliveries until that consumer ends (the
/// broker went away) or shutdown. After a failed `open` it waits a capped, jittered
/// backoff, so a fleet of consumers does not hammer a broker coming back. `what`
/// names the consumer in logs.
pub async fn consume_until_shutdown<Open, Opened, Drain, Drained>(
    what: &str,
    shutdown: &crate::shutdown::Shutdown,
    mut open: Open,
    mut drain: Drain,
) where
    Open: FnMut() -> Opened,
    Opened: Future<Output = Result<Consumer, BrokerError>>,
    Drain: FnMut(Consumer) -> Drained,
    Drained: Future<Output = ()>,
{
    let mut backoff = crate::backoff::ReconnectBackoff::new();
    while !shutdown.is_triggered() {
        match open().await {
            Ok(consumer) => {
                backoff = crate::backoff::ReconnectBackoff::new();
                drain(consumer).await;
            }
            Err(_) if shutdown.is_triggered() => break,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, consumer = what, retry_in = ?delay, "cannot consume");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => {}
                }
            }
        }
    }
}

/// How a broker settles one delivery. Implemented by each broker.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(&mut self) -> Result<(), BrokerError>;
    /// `requeue`: deliver again (to any consumer); otherwise drop it.
    async fn nack(&mut self, requeue: bool) -> Result<(), BrokerError>;
    /// Moves the message to its queue's dead-letter queue with `reason` in the
    /// [`headers::DEAD_LETTER_REASON`] header, then settles it.
    async fn dead_letter(&mut self, reason: &str) -> Result<(), BrokerError>;
}

/// A message delivered to a consumer. Settle it exactly once with [`Delivery::ack`],
/// [`Delivery::nack`] or [`Delivery::dead_letter`]; dropping it unsettled requeues it.
pub struct Delivery {
    pub message: Message,
    pub exchange: String,
    pub routing_key: String,
    /// True when the message may have been delivered before (crash, requeue).
    pub redelivered: bool,
    acker: Box<dyn Acker>,
    meter: Arc<QueueMeter>,
}

impl Delivery {
    pub fn new(
        message: Message,
        exchange: String,
        routing_key: String,
        redelivered: bool,
        acker: Box<dyn Acker>,
        meter: Arc<QueueMeter>,
    ) -> Self {
        meter.delivered();
        Self {
            message,
            exchange,
            routing_key,
            redelivered,
            acker,
            meter,
        }
    }

    pub async fn ack(mut self) -> Result<(), BrokerError> {
        self.meter.settled(1);
        self.acker.ack().await
    }

    pub async fn nack(mut self, requeue: bool) -> Result<(), BrokerError> {
        self.meter.settled(1);
        self.acker.nack(requeue).await
    }

    pub async fn dead_letter(mut self, reason: &str) -> Result<(), BrokerError> {
        self.meter.settled(1);
        self.acker.dead_letter(reason).await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .field("message_id", &self.message.properties.message_id)
            .finish()
    }
}
