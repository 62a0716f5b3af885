//! The exchanges and queues of DESIGN.md, declared idempotently by every role at start.

use super::{Broker, BrokerError, ExchangeKind, QueueSpec};

/// Topic exchange of domain events: `game.*`, `platform.*`, `genre.*`.
pub const EVENTS_EXCHANGE: &str = "catalog.events";
/// The work queue of game events (the original system's name).
pub const GAME_EVENTS_QUEUE: &str = "game_events";
/// Game events that exhausted their retries or could not be parsed.
pub const GAME_EVENTS_DLQ: &str = "game_events.dlq";
/// Routing keys `game_events` is bound to: the changes that need processing.
pub const GAME_EVENT_KEYS: [&str; 3] = ["game.created", "game.updated", "game.deleted"];
/// Published when processing of a game's version finished, well or not.
pub const GAME_PROCESSED_KEY: &str = "game.processed";
pub const GAME_FAILED_KEY: &str = "game.failed";

/// Declares what every role relies on: the events exchange, `game_events` and its
/// dead-letter queue, bound to the changes that need processing.
pub async fn declare(broker: &dyn Broker) -> Result<(), BrokerError> {
    broker
        .declare_exchange(EVENTS_EXCHANGE, ExchangeKind::Topic)
        .await?;
    broker
        .declare_queue(&QueueSpec::durable(GAME_EVENTS_DLQ))
        .await?;
    broker
        .declare_queue(
            // No queue arguments: the original consumer declares `game_events` as plain
            // durable, and RabbitMQ refuses a redeclaration with different arguments.
            &QueueSpec::durable(GAME_EVENTS_QUEUE).with_dead_letter_queue(GAME_EVENTS_DLQ),
        )
        .await?;
    for key in GAME_EVENT_KEYS {
        broker
            .bind_queue(GAME_EVENTS_QUEUE, EVENTS_EXCHANGE, key)
            .await?;
    }
    Ok(())
}

/// Declares this API instance's own live-feed queue, bound to every game event, so each
/// instance streams every update whichever worker produced it.
pub async fn declare_live_feed(broker: &dyn Broker, instance: &str) -> Result<String, BrokerError> {
    let queue = format!("live_feed.{instance}");
    broker.declare_queue(&QueueSpec::exclusive(&queue)).await?;
    broker.bind_queue(&queue, EVENTS_EXCHANGE, "game.#").await?;
    Ok(queue)
}
