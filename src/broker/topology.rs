//! The exchanges and queues of DESIGN.md, declared idempotently by every role at start.
//!
//! ```text
//! catalog.events (topic) ── game.created|updated|deleted ──► game_events ──► workers
//!        │                                                      │  ▲
//!        ├── game.# ──► live_feed.<instance> (one per API)      │  └── <queue>.delay.<ms> (retries)
//!        └── # ──► audit, audit.<name> (subscribers)            │
//!                                                               ▼
//! catalog.dlx (direct) ── game_events ──────────────────► game_events.dlq
//!                      ── custom_messages ──────────────► custom_messages.dlq
//!                      ── catalog.rpc ──────────────────► catalog.rpc.dlq
//! catalog.custom (topic) ── custom.# ──► custom_messages
//!        └── unroutable ──► catalog.unrouted (fanout) ──► unrouted
//! catalog.rpc (priorities 0..=10), replies by direct reply-to
//! ```
//!
//! retrocat's consumers dead-letter with a reason through the default exchange, to the
//! `.dlq` by name; `catalog.dlx` is there for RabbitMQ's own dead-lettering (a policy on
//! a queue other clients consume).

use super::{Broker, BrokerError, ExchangeKind, ExchangeSpec, QueueSpec};

/// Topic exchange of domain events: `game.*`, `platform.*`, `genre.*`.
pub const EVENTS_EXCHANGE: &str = "catalog.events";
/// The work queue of game events (the original system's name).
pub const GAME_EVENTS_QUEUE: &str = "game_events";
/// Game events that exhausted their retries or could not be parsed.
pub const GAME_EVENTS_DLQ: &str = "game_events.dlq";
/// Routing keys `game_events` is bound to: the changes that need processing.
pub const GAME_EVENT_KEYS: [&str; 3] = ["game.created", "game.updated", "game.deleted"];

/// Dead letters, routed by the name of the queue they died in to its `.dlq`.
pub const DEAD_LETTER_EXCHANGE: &str = "catalog.dlx";
/// Topic exchange of the producer's custom messages.
pub const CUSTOM_EXCHANGE: &str = "catalog.custom";
/// Custom messages (`{"type": "custom", …}`) waiting for the custom-message consumer.
pub const CUSTOM_QUEUE: &str = "custom_messages";
pub const CUSTOM_DLQ: &str = "custom_messages.dlq";
/// Routing keys of `catalog.custom` that reach `custom_messages`; other keys are
/// unroutable and land in [`UNROUTED_QUEUE`].
pub const CUSTOM_KEYS: &str = "custom.#";
/// Requests that want a reply, highest priority first.
pub const RPC_QUEUE: &str = "catalog.rpc";
pub const RPC_DLQ: &str = "catalog.rpc.dlq";
pub const RPC_MAX_PRIORITY: u8 = 10;
/// The audit subscriber's queue: every domain event (`#`), for the audit log.
pub const AUDIT_QUEUE: &str = "audit";
/// Alternate exchange: what an exchange could not route is kept here, visible.
pub const UNROUTED_EXCHANGE: &str = "catalog.unrouted";
pub const UNROUTED_QUEUE: &str = "unrouted";

/// The durable queues retrocat's consumers take from, by a fixed name: those an
/// operator can pause, with the named event subscribers' `audit.NAME`.
pub const CONSUMED: [&str; 4] = [GAME_EVENTS_QUEUE, RPC_QUEUE, CUSTOM_QUEUE, AUDIT_QUEUE];

/// The prefix of each API instance's live-feed queue (`live_feed.<instance>`).
pub const LIVE_FEED_PREFIX: &str = "live_feed.";

/// Whether `queue` is one of retrocat's own queues, or a queue of the broker's: the
/// queues above with their dead-letter queues, the subscribers' `audit.NAME`, the live
/// feeds, the delay queues (`<target>.delay.<ms>`), every `catalog.*` name, and the
/// broker's `amq.*` names (direct reply-to among them). Through the default exchange a
/// client could drop anything into such a queue (a forged event, dead letter or reply),
/// so the producer refuses it ([`crate::producer::PublishPolicy`]).
pub fn is_internal_queue(queue: &str) -> bool {
    const OWNED: [&str; 5] = [
        GAME_EVENTS_QUEUE,
        CUSTOM_QUEUE,
        AUDIT_QUEUE,
        UNROUTED_QUEUE,
        "catalog",
    ];
    let queue = queue.to_ascii_lowercase();
    let owned = |name: &str| {
        queue == name
            || queue
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    OWNED.into_iter().any(owned)
        || queue.starts_with(LIVE_FEED_PREFIX)
        || queue.starts_with("amq.")
        || queue.contains(".delay.")
}

/// Declares everything every role relies on, in dependency order: exchanges, then
/// queues, then bindings. Safe to run from any number of processes at once.
pub async fn declare(broker: &dyn Broker) -> Result<(), BrokerError> {
    let exchanges = [
        ExchangeSpec::new(UNROUTED_EXCHANGE, ExchangeKind::Fanout),
        // No alternate exchange on the events: once the audit subscriber binds `#`,
        // every event has a queue. The exchange users publish to with keys of their
        // choosing is the one that needs a net.
        ExchangeSpec::new(EVENTS_EXCHANGE, ExchangeKind::Topic),
        ExchangeSpec::new(CUSTOM_EXCHANGE, ExchangeKind::Topic)
            .with_alternate_exchange(UNROUTED_EXCHANGE),
        ExchangeSpec::new(DEAD_LETTER_EXCHANGE, ExchangeKind::Direct),
    ];
    for exchange in &exchanges {
        broker.declare_exchange(exchange).await?;
    }

    let queues = [
        QueueSpec::durable(UNROUTED_QUEUE),
        QueueSpec::durable(GAME_EVENTS_DLQ),
        QueueSpec::durable(GAME_EVENTS_QUEUE).with_dead_letter_queue(GAME_EVENTS_DLQ),
        QueueSpec::durable(CUSTOM_DLQ),
        QueueSpec::durable(CUSTOM_QUEUE).with_dead_letter_queue(CUSTOM_DLQ),
        QueueSpec::durable(RPC_DLQ),
        QueueSpec::durable(RPC_QUEUE)
            .with_max_priority(RPC_MAX_PRIORITY)
            .with_dead_letter_queue(RPC_DLQ),
        // Declared by every role, so the audit log misses no event published before
        // the first worker starts.
        QueueSpec::durable(AUDIT_QUEUE),
    ];
    for queue in &queues {
        broker.declare_queue(queue).await?;
    }

    let game_events = GAME_EVENT_KEYS.map(|key| (GAME_EVENTS_QUEUE, EVENTS_EXCHANGE, key));
    let others = [
        (UNROUTED_QUEUE, UNROUTED_EXCHANGE, "#"),
        (AUDIT_QUEUE, EVENTS_EXCHANGE, "#"),
        (CUSTOM_QUEUE, CUSTOM_EXCHANGE, CUSTOM_KEYS),
        // A dead-letter queue is bound by its source queue's name, so RabbitMQ's own
        // dead-lettering (a policy `dead-letter-exchange: catalog.dlx` with
        // `dead-letter-routing-key: game_events`) lands in the same place as ours.
        (GAME_EVENTS_DLQ, DEAD_LETTER_EXCHANGE, GAME_EVENTS_QUEUE),
        (CUSTOM_DLQ, DEAD_LETTER_EXCHANGE, CUSTOM_QUEUE),
        (RPC_DLQ, DEAD_LETTER_EXCHANGE, RPC_QUEUE),
    ];
    for (queue, exchange, pattern) in game_events.into_iter().chain(others) {
        broker.bind_queue(queue, exchange, pattern).await?;
    }
    Ok(())
}

/// The queue of an event subscriber: `audit` for the audit log, `audit.NAME` for
/// another named subscriber.
pub fn subscriber_queue(name: &str) -> String {
    if name == AUDIT_QUEUE {
        AUDIT_QUEUE.into()
    } else {
        format!("{AUDIT_QUEUE}.{name}")
    }
}

/// Declares an event subscriber's durable queue, bound to every domain event: each
/// subscriber gets its own copy of every event (pub/sub).
pub async fn declare_subscriber(broker: &dyn Broker, name: &str) -> Result<(), BrokerError> {
    let queue = subscriber_queue(name);
    broker.declare_queue(&QueueSpec::durable(&queue)).await?;
    broker.bind_queue(&queue, EVENTS_EXCHANGE, "#").await
}

/// Declares this API instance's own live-feed queue, bound to every game event, so each
/// instance streams every update whichever worker produced it.
pub async fn declare_live_feed(broker: &dyn Broker, instance: &str) -> Result<String, BrokerError> {
    let queue = format!("{LIVE_FEED_PREFIX}{instance}");
    broker.declare_queue(&QueueSpec::exclusive(&queue)).await?;
    broker.bind_queue(&queue, EVENTS_EXCHANGE, "game.#").await?;
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrocats_queues_and_the_brokers_are_internal_and_others_are_not() {
        for queue in [
            GAME_EVENTS_QUEUE,
            GAME_EVENTS_DLQ,
            CUSTOM_QUEUE,
            CUSTOM_DLQ,
            RPC_QUEUE,
            RPC_DLQ,
            AUDIT_QUEUE,
            "audit.archive",
            UNROUTED_QUEUE,
            "live_feed.0190aa",
            "game_events.delay.1000",
            "catalog.custom.custom.message.delay.300",
            "orders.delay.50",
            "amq.rabbitmq.reply-to.g1h2AA",
            "Game_Events",
        ] {
            assert!(is_internal_queue(queue), "{queue}");
        }
        for queue in [
            "orders",
            "game_events_archive",
            "auditing",
            "catalogue",
            "test.tap",
        ] {
            assert!(!is_internal_queue(queue), "{queue}");
        }
    }
}
