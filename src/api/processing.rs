//! Processing views: the original's `/api/processing`, and our `/api/tasks` and
//! `/api/tasks/counts`.

use super::ApiContext;
use super::error::ApiError;
use crate::storage::{PendingGame, StatusCounts, TaskView};
use axum::extract::{RawQuery, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(pending))
        .routes(routes!(tasks))
        .routes(routes!(counts))
}

/// Games by processing status
///
/// Counted over the whole catalog: the Processing page's counters.
#[utoipa::path(get, path = "/api/tasks/counts", tag = "processing",
    responses((status = 200, description = "The counts", body = StatusCounts)))]
async fn counts(State(ctx): State<ApiContext>) -> Result<axum::Json<StatusCounts>, ApiError> {
    Ok(axum::Json(ctx.store.status_counts().await?))
}

/// Games still pending
///
/// Newest first, in the original's exact shape `[{id, title, processing_status}]`.
#[utoipa::path(get, path = "/api/processing", tag = "processing",
    responses((status = 200, description = "The pending games", body = Vec<PendingGame>)))]
async fn pending(State(ctx): State<ApiContext>) -> Result<axum::Json<Vec<PendingGame>>, ApiError> {
    Ok(axum::Json(ctx.store.pending_games().await?))
}

/// Recent processing
///
/// The most recently changed games with their attempts, last error and duration.
/// Other parameters are ignored.
#[utoipa::path(get, path = "/api/tasks", tag = "processing",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 500,
        description = "At most this many games (100 by default)")),
    responses((status = 200, description = "The games", body = Vec<TaskView>)))]
async fn tasks(
    State(ctx): State<ApiContext>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<Vec<TaskView>>, ApiError> {
    let mut limit = 100;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if key == "limit" {
            limit = value
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| ApiError::bad_field("limit", "must be between 1 and 500"))?;
        }
    }
    Ok(axum::Json(ctx.store.tasks(limit).await?))
}
