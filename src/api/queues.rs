//! `GET /api/queues`: every queue of the topology and the outbox, with depths,
//! consumers and rates, from the background sampler (`telemetry::queues`), so a page
//! that polls it costs the broker nothing.

use super::ApiContext;
use crate::telemetry::queues::QueueView;
use axum::Router;
use axum::extract::State;
use axum::routing::get;

pub fn router() -> Router<ApiContext> {
    Router::new().route("/api/queues", get(queues))
}

async fn queues(State(ctx): State<ApiContext>) -> axum::Json<Vec<QueueView>> {
    axum::Json(ctx.queues.views().await)
}
