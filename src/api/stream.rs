//! Live updates: `GET /api/stream` (Server-Sent Events), fed by this instance's own
//! live-feed queue.
//!
//! Each API instance declares an exclusive queue bound to every `game.*` event, so a
//! browser connected to any instance sees every update, whichever worker produced it.
//! The [`LiveFeed`] consumes that queue and fans messages out to the connected streams.
//!
//! Open streams are capped (`--max-stream-subscribers`): each costs this process about
//! 84 KB (5,000 took 418 MB), and a client that opens them by the thousand must not be
//! able to take the memory the rest of the API needs. Past the cap, a new stream gets a
//! 503 with `Retry-After`; a stream that ends, for whatever reason, frees its place.

use super::ApiContext;
use super::error::ApiError;
use crate::broker::{Broker, Consumer, Delivery, topology};
use crate::domain::{CatalogEvent, EventId, ProcessingStatus};
use crate::shutdown::Shutdown;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Serialize;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
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
        let message = &delivery.message;
        let message_id = message.properties.message_id.as_deref();
        let kind = delivery.routing_key.clone();
        match CatalogEvent::decode(&kind, &message.body, message_id).ok()? {
            CatalogEvent::GameSettled(settled) => Some(Self {
                kind,
                game_id: settled.game_id,
                version: Some(settled.version),
                processing_status: Some(settled.processing_status),
                event_id: Some(settled.event_id),
                timestamp: Some(settled.timestamp),
            }),
            CatalogEvent::GameChanged(event) => Some(Self {
                kind,
                game_id: event.game_id,
                version: event.version,
                processing_status: None,
                event_id: event.event_id,
                timestamp: event.timestamp,
            }),
            CatalogEvent::ReferenceChanged(_) => None,
        }
    }
}

/// Streams open at once when no cap is configured (`--max-stream-subscribers`).
pub const DEFAULT_MAX_SUBSCRIBERS: u32 = 1000;

/// How long a client turned away at the cap is told to wait: places free as browsers
/// leave, which no server can predict, so a short wait that does not invite hammering.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long a stream opened as the instance starts waits for its feed to be consuming,
/// so that it sees every event after its headers; past it (the broker is away), it
/// opens anyway.
const FEED_WAIT: Duration = Duration::from_secs(2);

/// Fans this instance's live-feed queue out to every connected stream, at most
/// `max_subscribers` of them at once.
#[derive(Clone)]
pub struct LiveFeed {
    sender: broadcast::Sender<LiveEvent>,
    /// One permit per place; a [`Subscription`] holds one until it is dropped.
    places: Arc<Semaphore>,
    /// Whether the feed's queue has been bound and consumed: events routed before
    /// that reach no stream.
    consuming: Arc<watch::Sender<bool>>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SUBSCRIBERS)
    }
}

/// One stream's subscription: the feed's events, and the place among the subscribers
/// it holds until it is dropped (the client left, or the server is shutting down).
pub struct Subscription {
    events: BroadcastStream<LiveEvent>,
    _place: OwnedSemaphorePermit,
}

impl Stream for Subscription {
    type Item = Result<LiveEvent, BroadcastStreamRecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_next_unpin(cx)
    }
}

impl LiveFeed {
    /// A feed that takes at most `max_subscribers` streams at once.
    pub fn new(max_subscribers: u32) -> Self {
        // Slow browsers that fall this far behind get a `resync` event instead.
        let (sender, _) = broadcast::channel(1024);
        let places = Semaphore::new(max_subscribers as usize);
        Self {
            sender,
            places: Arc::new(places),
            consuming: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Waits, up to `within`, until the feed is consuming its queue.
    async fn consuming(&self, within: Duration) {
        let mut consuming = self.consuming.subscribe();
        let _ = tokio::time::timeout(within, consuming.wait_for(|consuming| *consuming)).await;
    }

    /// A subscription to every event from now on, or `None` when every place is taken.
    pub fn subscribe(&self) -> Option<Subscription> {
        // Never closed, so the only error is that no place is free.
        let place = self.places.clone().try_acquire_owned().ok()?;
        Some(Subscription {
            events: BroadcastStream::new(self.sender.subscribe()),
            _place: place,
        })
    }

    /// Declares this instance's queue and relays it until shutdown, reconnecting when
    /// the broker goes away. The queue is exclusive: it disappears with the instance
    /// (as a quorum queue on RabbitMQ, a minute later).
    pub async fn run(self, broker: Arc<dyn Broker>, instance: String, shutdown: Shutdown) {
        let open = || async {
            let queue = topology::declare_live_feed(broker.as_ref(), &instance).await?;
            let consumer = broker.consume(&queue, 256).await?;
            self.consuming.send_replace(true);
            Ok(consumer)
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
/// when this stream fell behind by n events. Ends when the server shuts down, so open
/// streams never hold a graceful shutdown open. At most `--max-stream-subscribers`
/// streams are open at once on an instance; past that, a 503 says when to try again.
#[utoipa::path(get, path = "/api/stream", tag = "games",
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream",
            body = LiveEvent),
        (status = 503, description = "As many streams are open as this instance takes \
            (--max-stream-subscribers): try again after Retry-After",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again")))))]
async fn stream(
    State(ctx): State<ApiContext>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    ctx.live.consuming(FEED_WAIT).await;
    let subscription = ctx.live.subscribe().ok_or_else(|| ApiError::AtCapacity {
        detail: "too many live streams are open on this server; try again later".into(),
        retry_after: RETRY_AFTER,
    })?;
    let shutdown = ctx.shutdown.clone();
    let events = subscription
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
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::LiveFeed;

    #[test]
    fn a_stream_that_ends_frees_its_place_for_the_next() {
        let feed = LiveFeed::new(2);
        let first = feed.subscribe().expect("a first place");
        let _second = feed.subscribe().expect("a second place");
        assert!(feed.subscribe().is_none(), "past the cap");
        drop(first);
        assert!(feed.subscribe().is_some(), "the first stream's place");
    }
}
