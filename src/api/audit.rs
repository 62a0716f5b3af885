//! What the subscribers received: the audit log (`GET /api/audit`) and the custom
//! messages the custom-message consumer took (`GET /api/messages/received`).

use super::ApiContext;
use super::error::ApiError;
use crate::processing::subscriber::{self, AUDIT, CUSTOM};
use crate::storage::ReceivedMessage;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use serde::Deserialize;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/api/audit", get(audit))
        .route("/api/messages/received", get(received))
}

/// `?subscriber=` (default `audit`) and `?limit=` (1 to 1000, default 100).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    subscriber: Option<String>,
    limit: Option<u32>,
}

/// The events a subscriber of `catalog.events` received, newest first.
async fn audit(
    State(ctx): State<ApiContext>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<axum::Json<Vec<ReceivedMessage>>, ApiError> {
    let Query(params) = query?;
    let subscriber = match params.subscriber.as_deref() {
        None => AUDIT.to_owned(),
        Some(name) => subscriber::parse_name(name)
            .map_err(|reason| ApiError::bad_field("subscriber", reason))?,
    };
    let limit = super::list_limit(params.limit)?;
    Ok(axum::Json(ctx.store.received(&subscriber, limit).await?))
}

/// `?limit=` alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitParam {
    limit: Option<u32>,
}

/// The custom messages the custom-message consumer received, newest first.
async fn received(
    State(ctx): State<ApiContext>,
    query: Result<Query<LimitParam>, QueryRejection>,
) -> Result<axum::Json<Vec<ReceivedMessage>>, ApiError> {
    let Query(params) = query?;
    let limit = super::list_limit(params.limit)?;
    Ok(axum::Json(ctx.store.received(CUSTOM, limit).await?))
}
