//! The broker conformance suite: the behaviour retrocat relies on from any [`Broker`],
//! written once against the trait and run for each implementation.
//!
//! Each case in `cases` takes a [`Fixture`]: a broker plus unique names, so that on a
//! shared RabbitMQ server concurrent runs never touch each other's queues. The
//! `conformance_suite!` macro stamps out one `#[tokio::test]` per case for a broker
//! constructor; adding RabbitMQ is one more `mod` with one macro call. Behaviour only
//! the embedded broker has (reopening its file) is tested in `embedded_only`.
//!
//! Time is asserted in one direction only: a delayed message must not arrive *before*
//! its delay. Upper bounds are left to the timeouts that keep a failing test from
//! hanging.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use retrocat::broker::embedded::EmbeddedBroker;
use retrocat::broker::rabbitmq::RabbitMqBroker;
use retrocat::broker::sealed::{MessageKeys, SealedBroker};
use retrocat::broker::{
    Broker, BrokerError, Consumer, Delivery, ExchangeKind, ExchangeSpec, HeaderValue, Message,
    Properties, Publish, QueueSpec, QueueType, headers,
};

/// How long a delivery that should come may take before the test fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to watch for a delivery that should not come.
const QUIET_PERIOD: Duration = Duration::from_millis(150);

/// A broker for one test, with the names that test declares.
struct Fixture {
    broker: Arc<dyn Broker>,
    suffix: String,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
    home: Home,
}

/// Where the broker lives, and so how a test cleans up after itself.
enum Home {
    /// The embedded broker's directory, kept for the test's duration, then removed.
    Embedded { _dir: tempfile::TempDir },
    /// A RabbitMQ server's URL: the test's exchanges are deleted over plain AMQP, as
    /// the `Broker` trait has no use for deleting exchanges.
    RabbitMq(String),
}

impl Fixture {
    fn new(broker: Arc<dyn Broker>, home: Home) -> Self {
        Self {
            broker,
            suffix: format!("{:012x}", rand::random::<u64>() >> 16),
            queues: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
            home,
        }
    }

    fn broker(&self) -> &dyn Broker {
        &*self.broker
    }

    /// A name no other test run uses.
    fn name(&self, base: &str) -> String {
        format!("conformance.{base}.{}", self.suffix)
    }

    /// Declares `spec` under a unique version of its name, which it returns.
    async fn declare(&self, spec: QueueSpec) -> String {
        let spec = QueueSpec {
            name: self.name(&spec.name),
            ..spec
        };
        self.broker
            .declare_queue(&spec)
            .await
            .expect("declare queue");
        self.queues.lock().unwrap().push(spec.name.clone());
        spec.name
    }

    async fn queue(&self, base: &str) -> String {
        self.declare(QueueSpec::durable(base)).await
    }

    async fn exchange(&self, base: &str, kind: ExchangeKind) -> String {
        self.exchange_with(base, kind, None).await
    }

    /// Declares an exchange under a unique version of `base`, with an optional
    /// alternate exchange, and returns its name.
    async fn exchange_with(
        &self,
        base: &str,
        kind: ExchangeKind,
        alternate: Option<&str>,
    ) -> String {
        let mut spec = ExchangeSpec::new(self.name(base), kind);
        spec.alternate_exchange = alternate.map(str::to_owned);
        self.broker
            .declare_exchange(&spec)
            .await
            .expect("declare exchange");
        self.exchanges.lock().unwrap().push(spec.name.clone());
        spec.name
    }

    async fn send(&self, queue: &str, bodies: &[&str]) {
        let batch = bodies
            .iter()
            .map(|body| Publish::to_queue(queue, message(body)))
            .collect();
        self.broker.publish(batch).await.expect("publish");
    }

    async fn depth(&self, queue: &str) -> u64 {
        self.broker.queue_depth(queue).await.expect("queue depth")
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Consumer {
        self.broker.consume(queue, prefetch).await.expect("consume")
    }

    /// Deletes the test's queues and, on RabbitMQ, its exchanges.
    async fn cleanup(self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        for queue in queues {
            let _ = self.broker.delete_queue(&queue).await;
        }
        let Home::RabbitMq(url) = &self.home else {
            return;
        };
        let connection = lapin::Connection::connect(url, Default::default())
            .await
            .expect("connect to delete the test's exchanges");
        let channel = connection.create_channel().await.expect("channel");
        let exchanges = std::mem::take(&mut *self.exchanges.lock().unwrap());
        for exchange in exchanges {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
    }
}

fn message(body: &str) -> Message {
    Message {
        body: Bytes::copy_from_slice(body.as_bytes()),
        properties: Properties::default(),
    }
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.message.body).into_owned()
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(DELIVERY_TIMEOUT, consumer.next())
        .await
        .expect("a delivery within the timeout")
        .expect("the consumer is still open")
}

async fn assert_quiet(consumer: &mut Consumer) {
    if let Ok(Some(delivery)) = tokio::time::timeout(QUIET_PERIOD, consumer.next()).await {
        panic!("unexpected delivery: {} ({delivery:?})", body(&delivery));
    }
}

/// Takes `count` deliveries, acking each, and returns their bodies in arrival order.
async fn take_and_ack(consumer: &mut Consumer, count: usize) -> Vec<String> {
    let mut bodies = Vec::with_capacity(count);
    for _ in 0..count {
        let delivery = next(consumer).await;
        bodies.push(body(&delivery));
        delivery.ack().await.expect("ack");
    }
    bodies
}

/// The cases, each a behaviour every broker must have.
mod cases {
    use super::*;

    pub async fn an_acked_message_is_gone(f: &Fixture) {
        let queue = f.queue("acked").await;
        f.send(&queue, &["one"]).await;
        let mut consumer = f.consume(&queue, 10).await;
        let delivery = next(&mut consumer).await;
        assert!(!delivery.redelivered);
        delivery.ack().await.expect("ack");
        drop(consumer);

        assert_eq!(f.depth(&queue).await, 0);
        let mut fresh = f.consume(&queue, 10).await;
        assert_quiet(&mut fresh).await;
    }

    pub async fn a_nack_with_requeue_delivers_again_as_redelivered(f: &Fixture) {
        let queue = f.queue("requeue").await;
        f.send(&queue, &["again"]).await;
        let mut consumer = f.consume(&queue, 10).await;
        next(&mut consumer).await.nack(true).await.expect("nack");

        let again = next(&mut consumer).await;
        assert_eq!(body(&again), "again");
        assert!(
            again.redelivered,
            "a requeued message is marked redelivered"
        );
        again.ack().await.expect("ack");
        assert_eq!(f.depth(&queue).await, 0);
    }

    pub async fn a_nack_without_requeue_drops_the_message(f: &Fixture) {
        let queue = f.queue("drop").await;
        f.send(&queue, &["gone"]).await;
        let mut consumer = f.consume(&queue, 10).await;
        next(&mut consumer).await.nack(false).await.expect("nack");

        assert_quiet(&mut consumer).await;
        assert_eq!(f.depth(&queue).await, 0);
    }

    pub async fn a_dead_consumers_unacked_messages_go_to_another_consumer(f: &Fixture) {
        let queue = f.queue("dead_consumer").await;
        f.send(&queue, &["a", "b", "c"]).await;
        let mut doomed = f.consume(&queue, 10).await;
        let held = next(&mut doomed).await;
        assert_eq!(body(&held), "a");
        // The consumer dies: its delivery in hand and those still buffered are dropped.
        drop(held);
        drop(doomed);

        let mut survivor = f.consume(&queue, 10).await;
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            let delivery = next(&mut survivor).await;
            assert!(
                delivery.redelivered,
                "{} is marked redelivered",
                body(&delivery)
            );
            seen.insert(body(&delivery));
            delivery.ack().await.expect("ack");
        }
        assert_eq!(seen, BTreeSet::from(["a".into(), "b".into(), "c".into()]));
        assert_quiet(&mut survivor).await;
    }

    pub async fn delayed_messages_arrive_in_delay_order_and_never_early(f: &Fixture) {
        let queue = f.queue("delays").await;
        // Measured from before the publish: a safe (lenient) origin for "not before".
        let start = Instant::now();
        let batch = [300u64, 100, 200]
            .into_iter()
            .map(|ms| {
                Publish::to_queue(&queue, message(&ms.to_string()))
                    .delayed(Duration::from_millis(ms))
            })
            .collect();
        f.broker().publish(batch).await.expect("publish");
        let mut consumer = f.consume(&queue, 10).await;

        for expected in [100u64, 200, 300] {
            let delivery = next(&mut consumer).await;
            let elapsed = start.elapsed();
            assert_eq!(body(&delivery), expected.to_string());
            assert!(
                elapsed >= Duration::from_millis(expected),
                "message delayed {expected} ms arrived after {elapsed:?}"
            );
            delivery.ack().await.expect("ack");
        }
    }

    pub async fn a_delayed_message_counts_in_the_depth_while_it_waits(f: &Fixture) {
        let queue = f.queue("delay_depth").await;
        let publish = Publish::to_queue(&queue, message("later")).delayed(Duration::from_secs(30));
        f.broker().publish(vec![publish]).await.expect("publish");
        assert_eq!(f.depth(&queue).await, 1);
        let mut consumer = f.consume(&queue, 10).await;
        assert_quiet(&mut consumer).await;
    }

    pub async fn a_priority_queue_delivers_highest_priority_first_fifo_within_one(f: &Fixture) {
        let queue = f
            .declare(QueueSpec::durable("priorities").with_max_priority(10))
            .await;
        let batch = [
            (1, "p1"),
            (5, "p5-first"),
            (9, "p9"),
            (3, "p3"),
            (5, "p5-second"),
        ]
        .into_iter()
        .map(|(priority, text)| {
            let mut message = message(text);
            message.properties.priority = priority;
            Publish::to_queue(&queue, message)
        })
        .collect();
        f.broker().publish(batch).await.expect("publish");

        let mut consumer = f.consume(&queue, 10).await;
        let order = take_and_ack(&mut consumer, 5).await;
        assert_eq!(order, ["p9", "p5-first", "p5-second", "p3", "p1"]);
    }

    pub async fn a_high_priority_message_overtakes_a_backlog_being_consumed(f: &Fixture) {
        let queue = f
            .declare(QueueSpec::durable("overtake").with_max_priority(10))
            .await;
        let backlog: Vec<String> = (0..20).map(|n| format!("low-{n}")).collect();
        let batch = backlog
            .iter()
            .map(|text| {
                let mut message = message(text);
                message.properties.priority = 1;
                Publish::to_queue(&queue, message)
            })
            .collect();
        f.broker().publish(batch).await.expect("publish");
        let mut consumer = f.consume(&queue, 1).await;
        let first = next(&mut consumer).await;
        assert_eq!(body(&first), "low-0");

        let mut urgent = message("urgent");
        urgent.properties.priority = 9;
        f.broker()
            .publish(vec![Publish::to_queue(&queue, urgent)])
            .await
            .expect("publish");
        first.ack().await.expect("ack");
        assert_eq!(take_and_ack(&mut consumer, 2).await, ["urgent", "low-1"]);
    }

    pub async fn a_queue_without_max_priority_ignores_priorities(f: &Fixture) {
        let queue = f.queue("no_priorities").await;
        let batch = [(1, "first"), (9, "second"), (5, "third")]
            .into_iter()
            .map(|(priority, text)| {
                let mut message = message(text);
                message.properties.priority = priority;
                Publish::to_queue(&queue, message)
            })
            .collect();
        f.broker().publish(batch).await.expect("publish");

        let mut consumer = f.consume(&queue, 10).await;
        assert_eq!(
            take_and_ack(&mut consumer, 3).await,
            ["first", "second", "third"]
        );
    }

    pub async fn a_dead_lettered_message_lands_in_the_dlq_with_its_reason(f: &Fixture) {
        let dlq = f.queue("work.dlq").await;
        let queue = f
            .declare(QueueSpec::durable("work").with_dead_letter_queue(&dlq))
            .await;
        let mut original = message(r#"{"broken": true"#);
        original.properties = Properties::json("event-42");
        original
            .properties
            .headers
            .insert(headers::RETRY_COUNT.into(), 3.into());
        f.broker()
            .publish(vec![Publish::to_queue(&queue, original.clone())])
            .await
            .expect("publish");

        let mut consumer = f.consume(&queue, 10).await;
        next(&mut consumer)
            .await
            .dead_letter("malformed JSON")
            .await
            .expect("dead-letter");
        assert_eq!(f.depth(&queue).await, 0);
        assert_quiet(&mut consumer).await;

        let mut dead = f.consume(&dlq, 10).await;
        let delivery = next(&mut dead).await;
        let properties = &delivery.message.properties;
        assert_eq!(delivery.message.body, original.body);
        assert_eq!(properties.message_id.as_deref(), Some("event-42"));
        assert_eq!(properties.header_int(headers::RETRY_COUNT), Some(3));
        assert_eq!(
            properties.header_str(headers::DEAD_LETTER_REASON),
            Some("malformed JSON")
        );
        assert_eq!(
            properties.header_str(headers::DEAD_LETTER_QUEUE),
            Some(queue.as_str())
        );
        let at = properties
            .header_str(headers::DEAD_LETTERED_AT)
            .expect("dead-lettered-at header");
        chrono::DateTime::parse_from_rfc3339(at).expect("an RFC 3339 time");
        delivery.ack().await.expect("ack");
    }

    pub async fn dead_lettering_without_a_dlq_fails_and_keeps_the_message(f: &Fixture) {
        let queue = f.queue("no_dlq").await;
        f.send(&queue, &["keep me"]).await;
        let mut consumer = f.consume(&queue, 10).await;
        let result = next(&mut consumer)
            .await
            .dead_letter("no place to go")
            .await;
        assert!(result.is_err(), "dead-lettering without a DLQ must fail");

        let again = next(&mut consumer).await;
        assert_eq!(body(&again), "keep me");
        assert!(again.redelivered);
        again.ack().await.expect("ack");
    }

    pub async fn prefetch_bounds_unsettled_deliveries(f: &Fixture) {
        let queue = f.queue("prefetch").await;
        f.send(&queue, &["1", "2", "3", "4", "5"]).await;
        let mut consumer = f.consume(&queue, 2).await;
        let first = next(&mut consumer).await;
        let _second = next(&mut consumer).await;
        assert_quiet(&mut consumer).await;

        first.ack().await.expect("ack");
        assert_eq!(body(&next(&mut consumer).await), "3");
    }

    pub async fn competing_consumers_share_messages_each_delivered_once(f: &Fixture) {
        let queue = f.queue("competing").await;
        let consumers = [f.consume(&queue, 10).await, f.consume(&queue, 10).await];
        let bodies: Vec<String> = (0..100).map(|n| n.to_string()).collect();
        let batch = bodies
            .iter()
            .map(|text| Publish::to_queue(&queue, message(text)))
            .collect();
        f.broker().publish(batch).await.expect("publish");

        let (seen, mut received) = tokio::sync::mpsc::unbounded_channel();
        let workers: Vec<_> = consumers
            .into_iter()
            .enumerate()
            .map(|(worker, mut consumer)| {
                let seen = seen.clone();
                tokio::spawn(async move {
                    while let Some(delivery) = consumer.next().await {
                        let _ = seen.send((worker, body(&delivery)));
                        delivery.ack().await.expect("ack");
                    }
                })
            })
            .collect();
        let mut per_worker = [0; 2];
        let mut all = Vec::new();
        while all.len() < 100 {
            let (worker, text) = tokio::time::timeout(DELIVERY_TIMEOUT, received.recv())
                .await
                .expect("all 100 messages within the timeout")
                .expect("workers running");
            per_worker[worker] += 1;
            all.push(text);
        }
        tokio::time::sleep(QUIET_PERIOD).await;
        assert!(
            received.try_recv().is_err(),
            "no message is delivered twice"
        );
        for worker in workers {
            worker.abort();
        }
        all.sort_by_key(|text| text.parse::<u32>().unwrap());
        assert_eq!(all, bodies, "every message exactly once");
        assert!(
            per_worker.iter().all(|&count| count > 0),
            "both consumers got work: {per_worker:?}"
        );
    }

    pub async fn a_topic_exchange_routes_by_star_and_hash(f: &Fixture) {
        let exchange = f.exchange("topic", ExchangeKind::Topic).await;
        let star = f.queue("star").await;
        let hash = f.queue("hash").await;
        let broker = f.broker();
        broker
            .bind_queue(&star, &exchange, "game.*")
            .await
            .expect("bind");
        broker
            .bind_queue(&hash, &exchange, "game.#")
            .await
            .expect("bind");
        let keys = [
            "game.created",
            "game.created.late",
            "game",
            "platform.created",
        ];
        let batch = keys
            .iter()
            .map(|key| Publish {
                exchange: exchange.clone(),
                routing_key: (*key).to_owned(),
                message: message(key),
                delay: None,
            })
            .collect();
        broker.publish(batch).await.expect("publish");

        let mut consumer = f.consume(&star, 10).await;
        let delivery = next(&mut consumer).await;
        assert_eq!(body(&delivery), "game.created");
        assert_eq!(delivery.exchange, exchange);
        assert_eq!(delivery.routing_key, "game.created");
        delivery.ack().await.expect("ack");
        assert_quiet(&mut consumer).await;

        let mut consumer = f.consume(&hash, 10).await;
        assert_eq!(
            take_and_ack(&mut consumer, 3).await,
            ["game.created", "game.created.late", "game"]
        );
        assert_quiet(&mut consumer).await;
    }

    pub async fn a_direct_exchange_routes_by_exact_key(f: &Fixture) {
        let exchange = f.exchange("direct", ExchangeKind::Direct).await;
        let queue = f.queue("direct").await;
        f.broker()
            .bind_queue(&queue, &exchange, "exact")
            .await
            .expect("bind");
        let batch = ["exact", "exact.not", "other"]
            .iter()
            .map(|key| Publish {
                exchange: exchange.clone(),
                routing_key: (*key).to_owned(),
                message: message(key),
                delay: None,
            })
            .collect();
        f.broker().publish(batch).await.expect("publish");

        assert_eq!(f.depth(&queue).await, 1);
        let mut consumer = f.consume(&queue, 10).await;
        assert_eq!(take_and_ack(&mut consumer, 1).await, ["exact"]);
    }

    pub async fn a_fanout_exchange_copies_to_every_bound_queue(f: &Fixture) {
        let exchange = f.exchange("fanout", ExchangeKind::Fanout).await;
        let audit = f.queue("audit").await;
        let live = f.queue("live").await;
        for queue in [&audit, &live] {
            f.broker()
                .bind_queue(queue, &exchange, "")
                .await
                .expect("bind");
        }
        let publish = Publish {
            exchange: exchange.clone(),
            routing_key: "anything".into(),
            message: message("everyone"),
            delay: None,
        };
        f.broker().publish(vec![publish]).await.expect("publish");

        for queue in [&audit, &live] {
            let mut consumer = f.consume(queue, 10).await;
            assert_eq!(take_and_ack(&mut consumer, 1).await, ["everyone"]);
        }
    }

    pub async fn the_default_exchange_routes_by_queue_name(f: &Fixture) {
        let queue = f.queue("by_name").await;
        let other = f.queue("other").await;
        f.send(&queue, &["mine"]).await;
        assert_eq!(f.depth(&queue).await, 1);
        assert_eq!(f.depth(&other).await, 0);
        let mut consumer = f.consume(&queue, 10).await;
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.exchange, "");
        assert_eq!(delivery.routing_key, queue);
        delivery.ack().await.expect("ack");
    }

    pub async fn publishing_to_an_undeclared_exchange_is_not_found(f: &Fixture) {
        let publish = Publish {
            exchange: f.name("never_declared"),
            routing_key: "key".into(),
            message: message("lost"),
            delay: None,
        };
        let result = f.broker().publish(vec![publish]).await;
        assert!(
            matches!(result, Err(BrokerError::NotFound(_))),
            "expected NotFound, got {result:?}"
        );
    }

    /// AMQP drops a message no queue takes (without `mandatory`) and still confirms it:
    /// the publisher learns it was accepted, not that it was routed.
    pub async fn a_message_to_no_queue_is_confirmed_and_dropped(f: &Fixture) {
        let publish = Publish {
            exchange: String::new(),
            routing_key: f.name("no_such_queue"),
            message: message("nowhere"),
            delay: None,
        };
        let result = f.broker().publish(vec![publish]).await;
        assert!(result.is_ok(), "expected a confirm, got {result:?}");
        // The broker is still there for the next publish.
        let queue = f.queue("after_unroutable").await;
        f.send(&queue, &["routed"]).await;
        assert_eq!(f.depth(&queue).await, 1);
    }

    pub async fn an_undeclared_queue_is_not_found(f: &Fixture) {
        let queue = f.name("never_declared");
        assert!(matches!(
            f.broker().queue_depth(&queue).await,
            Err(BrokerError::NotFound(_))
        ));
        assert!(matches!(
            f.broker().consume(&queue, 1).await,
            Err(BrokerError::NotFound(_))
        ));
    }

    pub async fn declarations_are_idempotent_and_conflicts_are_topology_errors(f: &Fixture) {
        let queue = f.queue("declared").await;
        let broker = f.broker();
        broker
            .declare_queue(&QueueSpec::durable(&queue))
            .await
            .expect("the same declaration again is a no-op");
        let conflict = broker
            .declare_queue(&QueueSpec::durable(&queue).with_max_priority(5))
            .await;
        assert!(
            matches!(conflict, Err(BrokerError::Topology(_))),
            "expected a topology error, got {conflict:?}"
        );

        let exchange = f.exchange("declared", ExchangeKind::Topic).await;
        broker
            .declare_exchange(&ExchangeSpec::new(&exchange, ExchangeKind::Topic))
            .await
            .expect("the same declaration again is a no-op");
        broker
            .bind_queue(&queue, &exchange, "a.*")
            .await
            .expect("bind");
        broker
            .bind_queue(&queue, &exchange, "a.*")
            .await
            .expect("the same binding again is a no-op");
        let publish = Publish {
            exchange,
            routing_key: "a.b".into(),
            message: message("once"),
            delay: None,
        };
        broker.publish(vec![publish]).await.expect("publish");
        assert_eq!(f.depth(&queue).await, 1, "one copy despite two bindings");
    }

    pub async fn an_unroutable_message_is_kept_by_the_alternate_exchange(f: &Fixture) {
        let net = f.exchange("unrouted", ExchangeKind::Fanout).await;
        let caught = f.queue("caught").await;
        f.broker()
            .bind_queue(&caught, &net, "#")
            .await
            .expect("bind");
        let exchange = f
            .exchange_with("with_net", ExchangeKind::Topic, Some(&net))
            .await;
        let known = f.queue("known").await;
        f.broker()
            .bind_queue(&known, &exchange, "known.*")
            .await
            .expect("bind");
        let publish = |key: &str, text: &str| Publish {
            exchange: exchange.clone(),
            routing_key: key.into(),
            message: message(text),
            delay: None,
        };
        f.broker()
            .publish(vec![
                publish("known.key", "routed"),
                publish("nobody.listens", "stray"),
            ])
            .await
            .expect("publish");

        let mut consumer = f.consume(&caught, 10).await;
        let stray = next(&mut consumer).await;
        assert_eq!(body(&stray), "stray");
        assert_eq!(stray.exchange, exchange, "it keeps its original exchange");
        assert_eq!(stray.routing_key, "nobody.listens", "and routing key");
        stray.ack().await.expect("ack");
        assert_quiet(&mut consumer).await;
        assert_eq!(f.depth(&known).await, 1, "a routable message is not copied");

        let other_net = f
            .broker()
            .declare_exchange(&ExchangeSpec::new(&exchange, ExchangeKind::Topic))
            .await;
        assert!(
            matches!(other_net, Err(BrokerError::Topology(_))),
            "redeclaring without the alternate exchange is a conflict, got {other_net:?}"
        );
    }

    pub async fn properties_and_headers_round_trip(f: &Fixture) {
        let queue = f
            .declare(QueueSpec::durable("properties").with_max_priority(10))
            .await;
        let mut sent = message(r#"{"gameId":42}"#);
        sent.properties = Properties {
            message_id: Some("event-7".into()),
            content_type: Some("application/json".into()),
            correlation_id: Some("request-9".into()),
            reply_to: Some("replies".into()),
            priority: 7,
            persistent: true,
            headers: [
                (headers::RETRY_COUNT.to_owned(), HeaderValue::Int(2)),
                (
                    headers::TRACEPARENT.to_owned(),
                    HeaderValue::from("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ),
                ("x-flag".to_owned(), HeaderValue::Bool(true)),
            ]
            .into(),
        };
        f.broker()
            .publish(vec![Publish::to_queue(&queue, sent.clone())])
            .await
            .expect("publish");

        let mut consumer = f.consume(&queue, 10).await;
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.message, sent);
        delivery.ack().await.expect("ack");
    }

    pub async fn a_batch_of_a_thousand_is_consumed_exactly_once(f: &Fixture) {
        let queue = f.queue("batch").await;
        let bodies: Vec<String> = (0..1000).map(|n| n.to_string()).collect();
        let batch = bodies
            .iter()
            .map(|text| Publish::to_queue(&queue, message(text)))
            .collect();
        f.broker().publish(batch).await.expect("publish");
        assert_eq!(f.depth(&queue).await, 1000);

        let mut consumer = f.consume(&queue, 100).await;
        assert_eq!(
            take_and_ack(&mut consumer, 1000).await,
            bodies,
            "all, in order"
        );
        assert_quiet(&mut consumer).await;
        assert_eq!(f.depth(&queue).await, 0);
    }

    pub async fn an_idle_consumer_is_woken_by_a_publish(f: &Fixture) {
        let queue = f.queue("wake").await;
        let mut consumer = f.consume(&queue, 10).await;
        assert_quiet(&mut consumer).await;
        f.send(&queue, &["wake up"]).await;
        assert_eq!(take_and_ack(&mut consumer, 1).await, ["wake up"]);
    }

    /// Answers every request on `queue` with `re: <body>`, as a worker answers
    /// `catalog.rpc`, until the returned task is aborted.
    fn responder(f: &Fixture, mut consumer: Consumer) -> tokio::task::JoinHandle<()> {
        let broker = f.broker.clone();
        tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let reply = delivery
                    .message
                    .reply(format!("re: {}", body(&delivery)))
                    .expect("a request names its reply address");
                delivery.ack().await.expect("ack");
                broker.publish(vec![reply]).await.expect("reply");
            }
        })
    }

    pub async fn each_request_gets_its_own_reply(f: &Fixture) {
        let queue = f
            .declare(QueueSpec::durable("rpc").with_max_priority(10))
            .await;
        let responder = responder(f, f.consume(&queue, 10).await);
        let requests = ["a", "b", "c", "d"].map(|text| {
            let request = Publish::to_queue(&queue, message(text));
            f.broker().request(request, DELIVERY_TIMEOUT)
        });
        let replies = futures::future::join_all(requests).await;
        let bodies: Vec<String> = replies
            .into_iter()
            .map(|reply| String::from_utf8(reply.expect("a reply").body.to_vec()).unwrap())
            .collect();
        assert_eq!(bodies, ["re: a", "re: b", "re: c", "re: d"]);
        assert_eq!(f.broker().waiting_requests(), 0);
        responder.abort();
    }

    pub async fn an_unanswered_request_times_out_and_its_late_reply_is_dropped(f: &Fixture) {
        let queue = f.queue("rpc-late").await;
        let unanswered = f
            .broker()
            .request(Publish::to_queue(&queue, message("slow")), QUIET_PERIOD)
            .await;
        assert!(
            matches!(unanswered, Err(BrokerError::NoReply(_))),
            "got {unanswered:?}"
        );
        assert_eq!(f.broker().waiting_requests(), 0, "nothing left behind");

        // The request is still in the queue; answering it now reaches nobody, and
        // neither fails the responder nor reaches the next request.
        let mut consumer = f.consume(&queue, 10).await;
        let late = next(&mut consumer).await;
        assert_eq!(body(&late), "slow");
        let late_reply = late.message.reply("too late").expect("a request");
        late.ack().await.expect("ack");
        f.broker()
            .publish(vec![late_reply])
            .await
            .expect("a late reply is no error");

        let responder = responder(f, consumer);
        let reply = f
            .broker()
            .request(Publish::to_queue(&queue, message("fast")), DELIVERY_TIMEOUT)
            .await
            .expect("a reply");
        assert_eq!(reply.body, "re: fast");
        responder.abort();
    }

    pub async fn deleting_a_queue_removes_its_messages(f: &Fixture) {
        let queue = f.queue("deleted").await;
        f.send(&queue, &["x", "y"]).await;
        f.broker().delete_queue(&queue).await.expect("delete");
        assert!(matches!(
            f.broker().queue_depth(&queue).await,
            Err(BrokerError::NotFound(_))
        ));
        f.queue("deleted").await;
        assert_eq!(f.depth(&queue).await, 0, "a redeclared queue starts empty");
    }
}

/// Stamps out one `#[tokio::test]` per conformance case, each on a fresh fixture made by
/// `$open` (an async fn returning a [`Fixture`], or `None` when its broker is not
/// configured here and the case is skipped).
macro_rules! conformance_suite {
    ($open:path) => {
        conformance_suite!(@cases $open;
            an_acked_message_is_gone,
            a_nack_with_requeue_delivers_again_as_redelivered,
            a_nack_without_requeue_drops_the_message,
            a_dead_consumers_unacked_messages_go_to_another_consumer,
            delayed_messages_arrive_in_delay_order_and_never_early,
            a_delayed_message_counts_in_the_depth_while_it_waits,
            a_priority_queue_delivers_highest_priority_first_fifo_within_one,
            a_high_priority_message_overtakes_a_backlog_being_consumed,
            a_queue_without_max_priority_ignores_priorities,
            a_dead_lettered_message_lands_in_the_dlq_with_its_reason,
            dead_lettering_without_a_dlq_fails_and_keeps_the_message,
            prefetch_bounds_unsettled_deliveries,
            competing_consumers_share_messages_each_delivered_once,
            a_topic_exchange_routes_by_star_and_hash,
            a_direct_exchange_routes_by_exact_key,
            a_fanout_exchange_copies_to_every_bound_queue,
            the_default_exchange_routes_by_queue_name,
            publishing_to_an_undeclared_exchange_is_not_found,
            a_message_to_no_queue_is_confirmed_and_dropped,
            an_undeclared_queue_is_not_found,
            declarations_are_idempotent_and_conflicts_are_topology_errors,
            an_unroutable_message_is_kept_by_the_alternate_exchange,
            properties_and_headers_round_trip,
            a_batch_of_a_thousand_is_consumed_exactly_once,
            an_idle_consumer_is_woken_by_a_publish,
            deleting_a_queue_removes_its_messages,
            each_request_gets_its_own_reply,
            an_unanswered_request_times_out_and_its_late_reply_is_dropped,
        );
    };
    (@cases $open:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let Some(fixture) = $open().await else { return };
                super::cases::$case(&fixture).await;
                fixture.cleanup().await;
            }
        )+
    };
}

async fn fresh_embedded() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = EmbeddedBroker::open(&dir.path().join("broker.db"))
        .await
        .expect("open the embedded broker");
    Some(Fixture::new(Arc::new(broker), Home::Embedded { _dir: dir }))
}

/// A connection to the RabbitMQ at `TEST_RABBITMQ_URL`; the case is skipped without it.
async fn fresh_rabbitmq() -> Option<Fixture> {
    fresh_rabbitmq_of(QueueType::Classic).await
}

/// The same with `--queue-type quorum`: the queues a case declares are quorum queues
/// (but one with priorities), and must behave the same.
async fn fresh_rabbitmq_quorum() -> Option<Fixture> {
    fresh_rabbitmq_of(QueueType::Quorum).await
}

async fn fresh_rabbitmq_of(queue_type: QueueType) -> Option<Fixture> {
    let Ok(url) = std::env::var("TEST_RABBITMQ_URL") else {
        eprintln!("skipped: set TEST_RABBITMQ_URL to run the conformance suite on RabbitMQ");
        return None;
    };
    let nodes = url.parse().expect("TEST_RABBITMQ_URL is a RabbitMQ URL");
    let broker = RabbitMqBroker::connect(nodes, queue_type)
        .await
        .expect("connect to TEST_RABBITMQ_URL");
    Some(Fixture::new(Arc::new(broker), Home::RabbitMq(url)))
}

/// The embedded broker behind message encryption: sealing must be invisible to every
/// behaviour above.
async fn fresh_sealed_embedded() -> Option<Fixture> {
    let mut fixture = fresh_embedded().await?;
    let keys =
        MessageKeys::parse("k:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").expect("a valid key");
    fixture.broker = Arc::new(SealedBroker::new(fixture.broker, Arc::new(keys)));
    Some(fixture)
}

mod embedded {
    conformance_suite!(super::fresh_embedded);
}

mod sealed_embedded {
    conformance_suite!(super::fresh_sealed_embedded);
}

mod rabbitmq {
    conformance_suite!(super::fresh_rabbitmq);
}

mod rabbitmq_quorum {
    conformance_suite!(super::fresh_rabbitmq_quorum);
}

/// What only RabbitMQ has: queue types, connections that drop.
mod rabbitmq_only {
    use super::*;
    use crate::common::rabbitmq::{Amqp, Vhost, rabbitmqctl};
    use lapin::types::{AMQPValue, FieldTable};
    use retrocat::broker::rabbitmq::DELIVERY_LIMIT;
    use retrocat::broker::topology;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn a_new_connection_gets_the_whole_topology_declared_again() {
        let Some(vhost) = Vhost::create() else {
            return;
        };
        let broker = vhost.connect(QueueType::Classic).await;
        topology::declare(&broker).await.expect("declare");
        // An exclusive queue and its binding die with the connection; their owner
        // declares them again, so they must not stand in the way of the replay.
        topology::declare_live_feed(&broker, "reconnect")
            .await
            .expect("declare a live feed");
        // The broker loses the work queue, then the connection drops (a node reset).
        let vhost_arg = ["-p", vhost.name.as_str()];
        rabbitmqctl(
            &[
                &vhost_arg[..],
                &["delete_queue", topology::GAME_EVENTS_QUEUE],
            ]
            .concat(),
        )
        .expect("delete the queue");
        rabbitmqctl(
            &[
                &vhost_arg[..],
                &["close_all_connections", "test: node reset"],
            ]
            .concat(),
        )
        .expect("close the connection");

        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while broker
            .queue_depth(topology::GAME_EVENTS_QUEUE)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "game_events never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Its bindings came back with it.
        let event = Publish {
            exchange: topology::EVENTS_EXCHANGE.into(),
            routing_key: "game.created".into(),
            message: message("{}"),
            delay: None,
        };
        broker.publish(vec![event]).await.expect("publish");
        assert_eq!(
            broker
                .queue_depth(topology::GAME_EVENTS_QUEUE)
                .await
                .unwrap(),
            1
        );
    }

    /// While one caller goes round the nodes after the connection dropped, and a node
    /// that accepts and never answers holds it up for seconds, the others (a readiness
    /// probe, a request) are told the broker is unavailable instead of waiting; the
    /// reconnect then reaches the node that answers.
    #[tokio::test]
    async fn a_slow_reconnect_does_not_hold_up_the_other_callers() {
        let Some(vhost) = Vhost::create() else {
            return;
        };
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket); // accepted, never answered
            }
        });
        let silent_url = format!("amqp://guest:guest@127.0.0.1:{silent_port}/{}", vhost.name);
        let nodes = format!("{},{silent_url}", vhost.url)
            .parse()
            .expect("two nodes");
        let broker = Arc::new(
            RabbitMqBroker::connect(nodes, QueueType::Classic)
                .await
                .expect("connect to the node that answers"),
        );
        broker.ping().await.expect("connected");
        // The connection drops (noticed within moments): the next node tried is the
        // silent one.
        rabbitmqctl(&["-p", &vhost.name, "close_all_connections", "test: drop"])
            .expect("close the connection");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reconnecting = tokio::spawn({
            let broker = broker.clone();
            async move { broker.ping().await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let other = tokio::time::timeout(Duration::from_secs(5), broker.ping())
            .await
            .expect("another caller is answered without waiting out the reconnect");
        assert!(
            matches!(&other, Err(BrokerError::Unavailable(reason)) if reason.contains("reconnecting")),
            "{other:?}"
        );
        assert!(!reconnecting.is_finished(), "the silent node holds it up");
        tokio::time::timeout(Duration::from_secs(60), reconnecting)
            .await
            .expect("the reconnect goes past the silent node")
            .unwrap()
            .expect("reconnected to the node that answers");
        broker.ping().await.expect("connected again");
    }

    /// A message RabbitMQ refuses (here: a full queue that rejects publishes) fails its
    /// publish as unavailable, so that its sender tries again later: the outbox keeps
    /// the row, and an API request answers 503.
    #[tokio::test]
    async fn a_refused_message_is_unavailable_not_an_internal_error() {
        let Some(vhost) = Vhost::create() else {
            return;
        };
        let broker = vhost.connect(QueueType::Classic).await;
        let declarer = lapin::Connection::connect(&vhost.url, Default::default())
            .await
            .expect("connect");
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
        let reject = AMQPValue::LongString("reject-publish".into());
        arguments.insert("x-overflow".into(), reject);
        declarer
            .create_channel()
            .await
            .unwrap()
            .queue_declare("full".into(), Default::default(), arguments)
            .await
            .expect("declare a queue of one message");
        let publish = || broker.publish(vec![Publish::to_queue("full", message("one"))]);
        publish().await.expect("room for one");
        let refused = publish().await;
        assert!(
            matches!(&refused, Err(BrokerError::Unavailable(reason)) if reason.contains("refused")),
            "{refused:?}"
        );
    }

    /// Delayed messages sent together to a delay queue that does not exist yet are all
    /// confirmed: RabbitMQ refuses a message published to a quorum queue that another
    /// channel is still creating, so the process declares each one at a time.
    #[tokio::test]
    async fn delayed_messages_sent_together_to_new_quorum_delay_queues_are_all_confirmed() {
        let Some(vhost) = Vhost::create() else {
            return;
        };
        let broker = vhost.connect(QueueType::Quorum).await;
        topology::declare(&broker).await.expect("declare");
        // Three at a time to each of 30 new delay queues, due long after the test.
        let publishes = (0..90u64).map(|n| {
            let delayed = Publish {
                delay: Some(Duration::from_millis(600_000 + n / 3 * 20)),
                ..Publish::to_queue(topology::GAME_EVENTS_QUEUE, message("later"))
            };
            broker.publish(vec![delayed])
        });
        let refused: Vec<BrokerError> = futures::future::join_all(publishes)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        assert!(
            refused.is_empty(),
            "{} of 90 refused, such as {:?}",
            refused.len(),
            refused.first()
        );
        let stats = broker
            .queue_stats(topology::GAME_EVENTS_QUEUE)
            .await
            .unwrap();
        assert_eq!(stats.delayed, 90);
    }

    /// `--queue-type quorum`: every durable queue but the one with priorities is
    /// replicated, retries still come back through their (quorum) delay queue, a
    /// poison message ends in the dead-letter queue, and a classic redeclaration is
    /// refused with the way out.
    #[tokio::test]
    async fn quorum_covers_every_durable_queue_and_dead_letters_a_poison_message() {
        let Some(vhost) = Vhost::create() else {
            return;
        };
        let broker = vhost.connect(QueueType::Quorum).await;
        topology::declare(&broker).await.expect("declare");
        let delayed = Publish {
            delay: Some(Duration::from_millis(300)),
            ..Publish::to_queue(topology::GAME_EVENTS_QUEUE, message("retried"))
        };
        broker.publish(vec![delayed]).await.expect("publish");

        let listed =
            rabbitmqctl(&["list_queues", "-p", &vhost.name, "name", "type"]).expect("list queues");
        let types: BTreeMap<&str, &str> = listed
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .collect();
        for queue in [
            topology::GAME_EVENTS_QUEUE,
            topology::GAME_EVENTS_DLQ,
            topology::CUSTOM_QUEUE,
            topology::CUSTOM_DLQ,
            topology::RPC_DLQ,
            topology::AUDIT_QUEUE,
            topology::UNROUTED_QUEUE,
            "game_events.delay.300",
        ] {
            assert_eq!(types.get(queue), Some(&"quorum"), "{queue} in {types:?}");
        }
        assert_eq!(types.get(topology::RPC_QUEUE), Some(&"classic"));

        let mut consumer = broker
            .consume(topology::GAME_EVENTS_QUEUE, 10)
            .await
            .expect("consume");
        assert_eq!(take_and_ack(&mut consumer, 1).await, ["retried"]);
        drop(consumer);

        // A message that every consumer gives back: after the delivery limit, RabbitMQ
        // moves it to the dead-letter queue, and only once that queue has it.
        let amqp = Amqp::connect(&vhost.url).await;
        amqp.publish_original(
            topology::GAME_EVENTS_QUEUE,
            b"poison",
            FieldTable::default(),
        )
        .await;
        for _ in 0..=DELIVERY_LIMIT {
            assert!(amqp.requeue_next(topology::GAME_EVENTS_QUEUE).await);
        }
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while amqp.queue_state(topology::GAME_EVENTS_DLQ).await.0 == 0 {
            assert!(
                Instant::now() < deadline,
                "the poison message was not dead-lettered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(amqp.queue_state(topology::GAME_EVENTS_QUEUE).await.0, 0);

        let classic = vhost.connect(QueueType::Classic).await;
        match topology::declare(&classic).await {
            Err(BrokerError::Topology(reason)) => {
                assert!(
                    reason.contains("--queue-type"),
                    "says how to fix it: {reason}"
                )
            }
            other => panic!("expected a topology error, got {other:?}"),
        }
    }
}

/// What only the embedded broker does: it owns a file, so it can be stopped and reopened.
mod embedded_only {
    use super::*;

    /// Opens the broker at `path`, waiting for a previous instance in this process to
    /// finish stopping (its engine releases the file lock when it exits).
    async fn reopen(path: &Path) -> EmbeddedBroker {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            match EmbeddedBroker::open(path).await {
                Ok(broker) => return broker,
                Err(BrokerError::Unavailable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("reopen: {error}"),
            }
        }
    }

    #[tokio::test]
    async fn reopening_after_an_unclean_stop_redelivers_unacked_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.db");
        let broker = EmbeddedBroker::open(&path).await.unwrap();
        broker
            .declare_exchange(&ExchangeSpec::new("events", ExchangeKind::Topic))
            .await
            .unwrap();
        broker
            .declare_queue(&QueueSpec::durable("work"))
            .await
            .unwrap();
        broker.bind_queue("work", "events", "game.*").await.unwrap();
        let publish = |text: &str| Publish {
            exchange: "events".into(),
            routing_key: "game.created".into(),
            message: message(text),
            delay: None,
        };
        broker
            .publish(vec![
                publish("acked"),
                publish("in flight"),
                publish("waiting"),
            ])
            .await
            .unwrap();
        let mut consumer = broker.consume("work", 2).await.unwrap();
        next(&mut consumer).await.ack().await.unwrap();
        let in_flight = next(&mut consumer).await;
        assert_eq!(body(&in_flight), "in flight");
        // Stop without settling: nothing is acked or requeued on the way out that the
        // file would not also show after a crash.
        drop((in_flight, consumer, broker));

        let broker = reopen(&path).await;
        assert_eq!(broker.queue_depth("work").await.unwrap(), 2);
        broker.publish(vec![publish("after")]).await.unwrap();
        let mut consumer = broker.consume("work", 10).await.unwrap();
        let first = next(&mut consumer).await;
        assert_eq!(body(&first), "in flight");
        assert!(first.redelivered, "unacked before the stop: redelivered");
        let second = next(&mut consumer).await;
        assert_eq!(body(&second), "waiting");
        let third = next(&mut consumer).await;
        assert_eq!(body(&third), "after", "the binding survived the reopen");
        assert!(!third.redelivered);
        for delivery in [first, second, third] {
            delivery.ack().await.unwrap();
        }
        assert_quiet(&mut consumer).await;
    }

    #[tokio::test]
    async fn delayed_messages_survive_a_reopen_and_still_wait_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.db");
        let broker = EmbeddedBroker::open(&path).await.unwrap();
        broker
            .declare_queue(&QueueSpec::durable("later"))
            .await
            .unwrap();
        let start = Instant::now();
        let publish =
            Publish::to_queue("later", message("patience")).delayed(Duration::from_millis(300));
        broker.publish(vec![publish]).await.unwrap();
        drop(broker);

        let broker = reopen(&path).await;
        assert_eq!(broker.queue_depth("later").await.unwrap(), 1);
        let mut consumer = broker.consume("later", 10).await.unwrap();
        let delivery = next(&mut consumer).await;
        assert_eq!(body(&delivery), "patience");
        assert!(start.elapsed() >= Duration::from_millis(300));
        delivery.ack().await.unwrap();
    }

    #[tokio::test]
    async fn exclusive_queues_do_not_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.db");
        let broker = EmbeddedBroker::open(&path).await.unwrap();
        broker
            .declare_queue(&QueueSpec::exclusive("live_feed.one"))
            .await
            .unwrap();
        broker
            .publish(vec![Publish::to_queue("live_feed.one", message("stale"))])
            .await
            .unwrap();
        drop(broker);

        let broker = reopen(&path).await;
        assert!(matches!(
            broker.queue_depth("live_feed.one").await,
            Err(BrokerError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_second_instance_cannot_open_a_file_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("broker.db");
        let _broker = EmbeddedBroker::open(&path).await.unwrap();
        match EmbeddedBroker::open(&path).await {
            Err(BrokerError::Unavailable(message)) => {
                assert!(message.contains("in use"), "a clear message: {message}")
            }
            other => panic!("expected the file to be locked, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_embedded_broker_reports_its_kind_and_answers_pings() {
        let fixture = fresh_embedded().await.expect("embedded always runs");
        assert_eq!(fixture.broker().kind(), "embedded");
        fixture.broker().ping().await.unwrap();
    }
}
