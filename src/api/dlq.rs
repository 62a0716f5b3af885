//! Dead letters over HTTP: list a dead-letter queue, replay or purge one message.

use super::ApiContext;
use super::error::ApiError;
use crate::broker::dead_letters::{self, DeadLetter};
use crate::broker::topology;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use serde::Deserialize;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/api/dlq", get(list))
        .route("/api/dlq/{id}/replay", post(replay))
        .route("/api/dlq/{id}", delete(purge))
}

/// `?queue=` (default `game_events.dlq`) and, for the list, `?limit=` (default 100).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    queue: Option<String>,
    limit: Option<u32>,
}

impl Params {
    fn queue(&self) -> Result<&str, ApiError> {
        let queue = self.queue.as_deref().unwrap_or(topology::GAME_EVENTS_DLQ);
        if dead_letters::QUEUES.contains(&queue) {
            Ok(queue)
        } else {
            Err(ApiError::bad_field(
                "queue",
                format!("one of {}", dead_letters::QUEUES.join(", ")),
            ))
        }
    }
}

/// The query string, or why it could not be read.
type ParamsQuery = Result<Query<Params>, QueryRejection>;

async fn list(
    State(ctx): State<ApiContext>,
    query: ParamsQuery,
) -> Result<axum::Json<Vec<DeadLetter>>, ApiError> {
    let Query(params) = query?;
    let limit = super::list_limit(params.limit)?;
    let listed = dead_letters::list(ctx.broker.as_ref(), params.queue()?, limit as usize).await?;
    Ok(axum::Json(listed))
}

async fn replay(
    State(ctx): State<ApiContext>,
    Path(id): Path<String>,
    query: ParamsQuery,
) -> Result<axum::Json<DeadLetter>, ApiError> {
    let Query(params) = query?;
    let queue = params.queue()?;
    dead_letters::replay(ctx.broker.as_ref(), queue, &id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| not_found(queue, &id))
}

async fn purge(
    State(ctx): State<ApiContext>,
    Path(id): Path<String>,
    query: ParamsQuery,
) -> Result<StatusCode, ApiError> {
    let Query(params) = query?;
    let queue = params.queue()?;
    dead_letters::purge(ctx.broker.as_ref(), queue, &id)
        .await?
        .map(|_| StatusCode::NO_CONTENT)
        .ok_or_else(|| not_found(queue, &id))
}

fn not_found(queue: &str, id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no message {id} among the oldest {} of {queue}",
        dead_letters::MAX_SCAN
    ))
}
