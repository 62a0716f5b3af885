//! Live updates: `GET /api/stream` (Server-Sent Events), fed by this instance's own
//! live-feed queue.
//!
//! Each API instance declares an exclusive queue bound to every `game.*` event, so a
//! browser connected to any instance sees every update, whichever worker produced it.
//! The [`LiveFeed`] consumes that queue and fans messages out to the connected streams.

use super::ApiContext;
use crate::broker::{Broker, Consumer, Delivery, topology};
use crate::domain::{EventId, GameEvent, GameProcessed, ProcessingStatus};
use crate::shutdown::Shutdown;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// One update, as sent to browsers: the SSE event name is the routing key.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveEvent {
    #[serde(skip)]
    pub kind: String,
    pub game_id: i64,
    pub version: Option<i64>,
    pub processing_status: Option<ProcessingStatus>,
    pub event_id: Option<EventId>,
    /// When the event was written; for `game.processed` and `game.failed`, in the
    /// transaction that wrote the game's final status, just before its commit.
    pub timestamp: Option<String>,
}

impl LiveEvent {
    /// Reads a `catalog.events` message; `None` for messages that are not about games.
    fn from_delivery(delivery: &Delivery) -> Option<Self> {
        let body = &delivery.message.body;
        let kind = delivery.routing_key.clone();
        if kind == topology::GAME_PROCESSED_KEY || kind == topology::GAME_FAILED_KEY {
            let processed: GameProcessed = serde_json::from_slice(body).ok()?;
            return Some(Self {
                kind,
                game_id: processed.game_id,
                version: Some(processed.version),
                processing_status: Some(processed.processing_status),
                event_id: Some(processed.event_id),
                timestamp: Some(processed.timestamp),
            });
        }
        let event =
            GameEvent::decode(body, delivery.message.properties.message_id.as_deref()).ok()?;
        Some(Self {
            kind,
            game_id: event.game_id,
            version: event.version,
            processing_status: None,
            event_id: event.event_id,
            timestamp: event.timestamp,
        })
    }
}

/// Fans this instance's live-feed queue out to every connected stream.
#[derive(Clone)]
pub struct LiveFeed {
    sender: broadcast::Sender<LiveEvent>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        // Slow browsers that fall this far behind get a `resync` event instead.
        let (sender, _) = broadcast::channel(1024);
        Self { sender }
    }
}

impl LiveFeed {
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.sender.subscribe()
    }

    /// Declares this instance's queue and relays it until shutdown, reconnecting when
    /// the broker goes away. The queue is exclusive: it disappears with the instance.
    pub async fn run(self, broker: Arc<dyn Broker>, instance: String, shutdown: Shutdown) {
        let open = || async {
            let queue = topology::declare_live_feed(broker.as_ref(), &instance).await?;
            broker.consume(&queue, 256).await
        };
        let (sender, stop) = (&self.sender, &shutdown);
        let drain = |mut consumer: Consumer| async move {
            loop {
                let delivery = tokio::select! {
                    delivery = consumer.next() => delivery,
                    _ = stop.wait() => break,
                };
                let Some(delivery) = delivery else { break };
                if let Some(event) = LiveEvent::from_delivery(&delivery) {
                    // No subscriber is fine: nobody is watching.
                    let _ = sender.send(event);
                }
                // Notifications only: losing one costs a browser a refresh.
                if let Err(error) = delivery.ack().await {
                    tracing::debug!(%error, "live-feed ack failed");
                }
            }
        };
        crate::broker::consume_until_shutdown("live feed", &shutdown, open, drain).await;
    }
}

/// Live updates
///
/// Server-Sent Events, one per game update, named by routing key (`game.created`,
/// `game.processed`…), with a `LiveEvent` as data; `resync`, with `{"missed": n}`,
/// when this stream fell behind by n events. Ends when the server shuts down, so open streams never hold a graceful
/// shutdown open.
#[utoipa::path(get, path = "/api/stream", tag = "games",
    responses((status = 200, description = "The event stream", content_type = "text/event-stream",
        body = LiveEvent)))]
async fn stream(
    State(ctx): State<ApiContext>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let shutdown = ctx.shutdown.clone();
    let events = BroadcastStream::new(ctx.live.subscribe())
        .map(|received| {
            Ok(match received {
                Ok(event) => Event::default()
                    .event(event.kind.clone())
                    .json_data(&event)
                    .unwrap_or_else(|_| Event::default().comment("unencodable event")),
                Err(BroadcastStreamRecvError::Lagged(missed)) => Event::default()
                    .event("resync")
                    .data(format!("{{\"missed\":{missed}}}")),
            })
        })
        .take_until(async move { shutdown.wait().await });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
