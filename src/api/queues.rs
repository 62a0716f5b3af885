//! `GET /api/queues`: every queue of the topology and the outbox, with depths,
//! consumers and rates; `GET /api/queues/history`: the same sampled over the last 15
//! minutes, with events processed and their latency. Both from the background sampler
//! (`telemetry::queues`), so a page that polls them costs the broker nothing.

use super::ApiContext;
use crate::telemetry::queues::{History, QueueView};
use axum::Router;
use axum::extract::State;
use axum::routing::get;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/api/queues", get(queues))
        .route("/api/queues/history", get(history))
}

async fn queues(State(ctx): State<ApiContext>) -> axum::Json<Vec<QueueView>> {
    axum::Json(ctx.queues.views().await)
}

/// The last 15 minutes, a sample a second: what the Queues page charts.
async fn history(State(ctx): State<ApiContext>) -> axum::Json<History> {
    axum::Json(ctx.queues.history())
}
