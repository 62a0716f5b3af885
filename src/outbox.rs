//! The transactional outbox and its relay.
//!
//! A catalog write inserts its event into the `outbox` table in the same transaction
//! (see [`crate::storage`]); the relay publishes unsent rows to the broker and marks them
//! sent only after the broker confirmed them. With the broker down, writes still succeed
//! and events wait, visibly, in the outbox. A crash between publish and mark-sent
//! publishes a row twice: consumers are idempotent, so that costs nothing but a
//! redundant delivery.

use crate::broker::{Broker, Message, Properties, Publish, topology};
use crate::domain::{
    EventId, Game, GameAction, GameData, GameEvent, GameProcessed, ProcessingStatus, timestamp_now,
};
use crate::shutdown::Shutdown;
use crate::storage::{OutboxMessage, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

impl OutboxMessage {
    /// The event of a catalog write, in the original system's format plus
    /// `eventId`/`version`.
    pub fn game_event(game: &Game, action: GameAction, event_id: &EventId) -> Self {
        let game_data = (action != GameAction::Delete).then(|| GameData {
            title: Some(game.title.clone()),
            platform_id: Some(game.platform_id),
            genre_id: Some(game.genre_id),
            developer: Some(game.developer.clone()),
            release_year: Some(game.release_year),
            year_category: Some(game.year_category.clone()),
            description: Some(game.description.clone()),
            image_url: game.image_url.clone(),
        });
        let event = GameEvent {
            game_id: game.id,
            action,
            game_data,
            timestamp: Some(timestamp_now()),
            event_id: Some(event_id.clone()),
            version: Some(game.version),
        };
        Self {
            exchange: topology::EVENTS_EXCHANGE.into(),
            routing_key: action.routing_key().into(),
            message_id: event_id.to_string(),
            headers: Default::default(),
            body: event.encode(),
        }
    }

    /// `game.processed` or `game.failed`: the outcome of processing one version.
    pub fn game_processed(
        game_id: i64,
        version: i64,
        status: ProcessingStatus,
        event_id: &EventId,
    ) -> Self {
        let routing_key = match status {
            ProcessingStatus::Failed => topology::GAME_FAILED_KEY,
            _ => topology::GAME_PROCESSED_KEY,
        };
        let body = GameProcessed {
            game_id,
            version,
            processing_status: status,
            event_id: event_id.clone(),
            timestamp: timestamp_now(),
        };
        Self {
            exchange: topology::EVENTS_EXCHANGE.into(),
            routing_key: routing_key.into(),
            message_id: EventId::generate().to_string(),
            headers: Default::default(),
            body: serde_json::to_vec(&body).expect("GameProcessed always serializes"),
        }
    }

    /// `platform.*` / `genre.*`: reference data changed. `entity` is `platform` or
    /// `genre`, `change` is `created`, `updated` or `deleted`.
    pub fn reference_event(entity: &str, change: &str, id: i64, name: Option<&str>) -> Self {
        let event_id = EventId::generate();
        let body = serde_json::json!({
            "id": id,
            "action": change,
            "name": name,
            "eventId": event_id,
            "timestamp": timestamp_now(),
        });
        Self {
            exchange: topology::EVENTS_EXCHANGE.into(),
            routing_key: format!("{entity}.{change}"),
            message_id: event_id.to_string(),
            headers: Default::default(),
            body: body.to_string().into_bytes(),
        }
    }

    /// The message as the relay publishes it.
    pub fn into_publish(self) -> Publish {
        let mut properties = Properties::json(self.message_id);
        properties.headers = self.headers;
        Publish {
            exchange: self.exchange,
            routing_key: self.routing_key,
            message: Message {
                body: self.body.into(),
                properties,
            },
            delay: None,
        }
    }
}

/// Relay settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Rows published per broker round trip.
    pub batch_size: u32,
    /// How often to look for rows written by other processes.
    pub poll_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
}

/// Publishes outbox rows to the broker, oldest first.
pub struct Relay {
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    config: RelayConfig,
}

impl Relay {
    pub fn new(store: Arc<dyn Store>, broker: Arc<dyn Broker>, config: RelayConfig) -> Self {
        Self {
            store,
            broker,
            config,
        }
    }

    /// Publishes until shutdown. Errors (broker or database down) are logged and retried
    /// with capped exponential backoff; rows stay in the outbox meanwhile.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = reconnect_backoff();
        while !shutdown.is_triggered() {
            // Register interest before looking, so a commit between the look and the
            // wait is not missed.
            let written = self.store.outbox_written().notified();
            match self.relay_batch().await {
                Ok(sent) if sent == self.config.batch_size as usize => {
                    backoff = reconnect_backoff();
                    continue;
                }
                Ok(_) => {
                    backoff = reconnect_backoff();
                    tokio::select! {
                        _ = written => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.wait() => {}
                    }
                }
                Err(error) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(%error, retry_in = ?delay, "outbox relay failed; events wait in the outbox");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait() => {}
                    }
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Publishes one batch of pending rows; returns how many were sent.
    #[tracing::instrument(skip(self), err)]
    pub async fn relay_batch(&self) -> Result<usize, RelayError> {
        let mut claim = self.store.claim_outbox(self.config.batch_size).await?;
        let batch: Vec<Publish> = claim
            .take_messages()
            .into_iter()
            .map(OutboxMessage::into_publish)
            .collect();
        let sent = batch.len();
        if sent == 0 {
            return Ok(0);
        }
        self.broker.publish(batch).await?;
        claim.mark_sent().await?;
        tracing::debug!(sent, "outbox rows published");
        Ok(sent)
    }
}

/// Delays between attempts to reach a database or broker that is down: from 100 ms,
/// doubling, capped at 5 s, plus up to as much again of random jitter (backon's), so
/// many processes don't retry in lockstep: never more than 10 s.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_from_100_ms_and_never_exceed_10_s() {
        let delays: Vec<Duration> = reconnect_backoff().take(40).collect();
        assert!(delays[0] >= Duration::from_millis(100));
        assert!(delays[0] <= Duration::from_millis(200));
        assert!(
            delays.iter().all(|delay| *delay <= Duration::from_secs(10)),
            "{delays:?}"
        );
        assert!(delays[39] >= Duration::from_secs(5), "{delays:?}");
    }
}
