//! Processing views: the original's `/api/processing`, and our `/api/tasks` and
//! `/api/tasks/counts`.

use super::ApiContext;
use super::error::ApiError;
use crate::storage::{PendingGame, StatusCounts, TaskView};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::routing::get;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/api/processing", get(pending))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/counts", get(counts))
}

/// Games by processing status over the whole catalog: the Processing page's counters.
async fn counts(State(ctx): State<ApiContext>) -> Result<axum::Json<StatusCounts>, ApiError> {
    Ok(axum::Json(ctx.store.status_counts().await?))
}

/// Games still pending, newest first, in the original's exact shape
/// `[{id, title, processing_status}]`.
async fn pending(State(ctx): State<ApiContext>) -> Result<axum::Json<Vec<PendingGame>>, ApiError> {
    Ok(axum::Json(ctx.store.pending_games().await?))
}

/// The most recently changed games with attempts, last error and duration;
/// `?limit=` (1..=500, default 100).
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
