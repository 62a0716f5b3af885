//! `GET /api/queues`: every queue of the topology and the outbox, with depths,
//! consumers and rates; `GET /api/queues/history`: the same sampled over the last 15
//! minutes, with events processed and their latency. Both from the background sampler
//! (`telemetry::queues`), so a page that polls them costs the broker nothing.

use super::ApiContext;
use crate::telemetry::queues::{History, QueueView};
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(queues))
        .routes(routes!(history))
}

/// The queues and the outbox
///
/// Every queue of the topology and the outbox, as last sampled (once a second).
#[utoipa::path(get, path = "/api/queues", tag = "queues",
    responses((status = 200, description = "One row per queue, the outbox first",
        body = Vec<QueueView>)))]
async fn queues(State(ctx): State<ApiContext>) -> axum::Json<Vec<QueueView>> {
    axum::Json(ctx.queues.views().await)
}

/// The last 15 minutes of the queues
///
/// A sample a second, from this process: what the Queues page charts.
#[utoipa::path(get, path = "/api/queues/history", tag = "queues",
    responses((status = 200, description = "The samples, oldest first", body = History)))]
async fn history(State(ctx): State<ApiContext>) -> axum::Json<History> {
    axum::Json(ctx.queues.history())
}
