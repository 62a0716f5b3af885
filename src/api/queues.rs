//! `GET /api/queues`: every queue of the topology and the outbox, with depths,
//! consumers and rates; `GET /api/queues/history`: the same sampled over the last 15
//! minutes, with events processed and their latency. Both from the background sampler
//! (`telemetry::queues`), so a page that polls them costs the broker nothing.
//!
//! `POST /api/queues/{name}/pause` and `…/resume` (admin) stop and restart consumption
//! of a queue by every worker (`processing::pause`).

use super::ApiContext;
use super::auth::gate::Admin;
use super::error::ApiError;
use crate::processing::pause;
use crate::telemetry::queues::{History, QueueView};
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(queues))
        .routes(routes!(history))
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
}

/// A queue's name in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct QueueName {
    /// `game_events`, `catalog.rpc`, `custom_messages`, `audit` or `audit.NAME`.
    name: String,
}

/// Whether a queue is paused, after a pause or resume.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseState {
    pub name: String,
    pub paused: bool,
    /// False when the queue already was in that state.
    pub changed: bool,
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

/// Pause a queue
///
/// Every worker of every process stops taking deliveries from the queue within a
/// second; what they have in flight finishes, and the messages stay in the queue. The
/// pause is kept in the database: it survives restarts, until a resume.
#[utoipa::path(post, path = "/api/queues/{name}/pause", tag = "queues",
    security(("bearer" = [])), params(QueueName),
    responses(
        (status = 200, description = "The queue is paused", body = PauseState),
        (status = 404, description = "Not a queue retrocat consumes"),
    ))]
async fn pause_queue(
    _: Admin,
    State(ctx): State<ApiContext>,
    Path(QueueName { name }): Path<QueueName>,
) -> Result<axum::Json<PauseState>, ApiError> {
    set_paused(&ctx, name, true).await
}

/// Resume a queue
///
/// Every worker consumes the queue again within a second.
#[utoipa::path(post, path = "/api/queues/{name}/resume", tag = "queues",
    security(("bearer" = [])), params(QueueName),
    responses(
        (status = 200, description = "The queue is consumed again", body = PauseState),
        (status = 404, description = "Not a queue retrocat consumes"),
    ))]
async fn resume_queue(
    _: Admin,
    State(ctx): State<ApiContext>,
    Path(QueueName { name }): Path<QueueName>,
) -> Result<axum::Json<PauseState>, ApiError> {
    set_paused(&ctx, name, false).await
}

/// Pauses or resumes the queue `name`, if retrocat consumes it.
async fn set_paused(
    ctx: &ApiContext,
    name: String,
    paused: bool,
) -> Result<axum::Json<PauseState>, ApiError> {
    pause::check_pausable(&name).map_err(ApiError::NotFound)?;
    let changed = if paused {
        ctx.store.pause_queue(&name).await?
    } else {
        ctx.store.resume_queue(&name).await?
    };
    Ok(axum::Json(PauseState {
        name,
        paused,
        changed,
    }))
}
