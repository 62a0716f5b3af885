//! How a queue is declared on RabbitMQ, by its type: its options and arguments.
//!
//! A classic queue keeps the plain arguments the original system's clients declare
//! `game_events` with; dead letters with a reason are republished by the consumer.
//! A quorum queue is retrocat's own (those clients cannot declare it), so RabbitMQ
//! guards it too:
//! - a delivery limit: a message delivered [`DELIVERY_LIMIT`] times without being
//!   settled (a poison message that crashes every worker) goes to the dead-letter
//!   queue instead of round again. RabbitMQ also counts the deliveries a consumer gave
//!   back: those of a worker stopping or of a queue paused;
//! - at-least-once dead-lettering (which needs `overflow: reject-publish`): the
//!   message leaves its queue only once the dead-letter queue has confirmed it, so a
//!   node lost meanwhile loses nothing. That is also how a delay queue hands a
//!   message back when its delay is over.
//!
//! A queue with priorities stays classic (RabbitMQ 3.x has none on quorum queues, 4.x
//! only two levels): `catalog.rpc`. A process's own queue (an API's live feed) becomes
//! a quorum queue too, deleted once unused for [`OWN_QUEUE_IDLE_MS`] instead of with its
//! connection: a classic one dies with its node, and until that node is back RabbitMQ
//! refuses every event routed to it, which would hold the whole outbox back. A quorum
//! queue with no dead-letter queue gets a limit no one reaches ([`NO_LIMIT`]): RabbitMQ
//! 4.x would otherwise give it 20, and drop a message there once read 20 times, as
//! `dlq list` reads (-1, "no limit" on 4.x, makes 3.10 drop a message at its first return).

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

use crate::broker::{QueueSpec, QueueType};

/// Deliveries a quorum queue makes of one message before dead-lettering it.
pub const DELIVERY_LIMIT: i64 = 20;

/// The delivery limit of a quorum queue with nowhere to dead-letter to.
const NO_LIMIT: i64 = i32::MAX as i64;

/// How long a process's own queue, as a quorum queue, outlives its last use.
const OWN_QUEUE_IDLE_MS: i64 = 60_000;

/// Where a queue's dead letters go: an exchange and a routing key.
pub(super) struct DeadLetterRoute<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

/// The type `spec` gets when queues are to be `queue_type`.
fn type_of(spec: &QueueSpec, queue_type: QueueType) -> QueueType {
    if spec.max_priority.is_some() {
        QueueType::Classic
    } else {
        queue_type
    }
}

/// The options and arguments `spec` is declared with, as a queue of `queue_type`.
pub(super) fn queue(spec: &QueueSpec, queue_type: QueueType) -> (QueueDeclareOptions, FieldTable) {
    let quorum = type_of(spec, queue_type) == QueueType::Quorum;
    let options = QueueDeclareOptions {
        durable: spec.durable || quorum,
        exclusive: spec.exclusive && !quorum,
        auto_delete: spec.exclusive && !quorum,
        ..QueueDeclareOptions::default()
    };
    let mut arguments = FieldTable::default();
    if let Some(max) = spec.max_priority {
        arguments.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(max));
    }
    if quorum {
        set_quorum_type(&mut arguments);
        if spec.exclusive {
            arguments.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(OWN_QUEUE_IDLE_MS),
            );
        }
        let limit = match &spec.dead_letter_queue {
            Some(dlq) => {
                let route = DeadLetterRoute {
                    exchange: "",
                    routing_key: dlq,
                };
                dead_letter(&mut arguments, route, QueueType::Quorum);
                DELIVERY_LIMIT
            }
            None => NO_LIMIT,
        };
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
    }
    (options, arguments)
}

/// The arguments of a delay queue: messages wait `ms` milliseconds, then go on by
/// `route`; the queue is deleted once unused for `expires_ms`.
pub(super) fn delay_queue(
    ms: i64,
    expires_ms: i64,
    route: DeadLetterRoute<'_>,
    queue_type: QueueType,
) -> FieldTable {
    let mut arguments = FieldTable::default();
    if queue_type == QueueType::Quorum {
        set_quorum_type(&mut arguments);
    }
    arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
    arguments.insert("x-expires".into(), AMQPValue::LongLongInt(expires_ms));
    dead_letter(&mut arguments, route, queue_type);
    arguments
}

fn set_quorum_type(arguments: &mut FieldTable) {
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
}

fn dead_letter(arguments: &mut FieldTable, route: DeadLetterRoute<'_>, queue_type: QueueType) {
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(route.exchange.into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(route.routing_key.into()),
    );
    if queue_type == QueueType::Quorum {
        arguments.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(arguments: &FieldTable) -> Vec<String> {
        arguments
            .inner()
            .keys()
            .map(|key| key.to_string())
            .collect()
    }

    fn arguments(spec: &QueueSpec, queue_type: QueueType) -> FieldTable {
        queue(spec, queue_type).1
    }

    #[test]
    fn a_classic_queue_keeps_the_plain_arguments_older_clients_declare() {
        let spec = QueueSpec::durable("game_events").with_dead_letter_queue("game_events.dlq");
        assert!(keys(&arguments(&spec, QueueType::Classic)).is_empty());
    }

    #[test]
    fn a_quorum_work_queue_dead_letters_at_least_once_after_its_delivery_limit() {
        let spec = QueueSpec::durable("game_events").with_dead_letter_queue("game_events.dlq");
        let arguments = arguments(&spec, QueueType::Quorum);
        assert_eq!(
            keys(&arguments),
            [
                "x-dead-letter-exchange",
                "x-dead-letter-routing-key",
                "x-dead-letter-strategy",
                "x-delivery-limit",
                "x-overflow",
                "x-queue-type",
            ]
        );
        assert_eq!(
            arguments.inner().get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("game_events.dlq".into()))
        );
    }

    #[test]
    fn a_queue_with_priorities_stays_classic() {
        let rpc = QueueSpec::durable("catalog.rpc").with_max_priority(10);
        assert_eq!(
            keys(&arguments(&rpc, QueueType::Quorum)),
            ["x-max-priority"]
        );
        let dlq = QueueSpec::durable("game_events.dlq");
        let arguments = arguments(&dlq, QueueType::Quorum);
        assert_eq!(
            arguments.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(NO_LIMIT)),
            "never reached, and so never dropping a dead letter"
        );
    }

    #[test]
    fn a_process_own_queue_is_replicated_and_expires_rather_than_exclusive() {
        let feed = QueueSpec::exclusive("live_feed.1");
        let (options, arguments) = queue(&feed, QueueType::Quorum);
        assert!(options.durable && !options.exclusive && !options.auto_delete);
        assert_eq!(
            keys(&arguments),
            ["x-delivery-limit", "x-expires", "x-queue-type"]
        );
        let (options, arguments) = queue(&feed, QueueType::Classic);
        assert!(!options.durable && options.exclusive && options.auto_delete);
        assert!(keys(&arguments).is_empty());
    }
}
