//! Dead letters over HTTP: list a dead-letter queue, replay or purge one message, or
//! count, replay or purge every letter a filter matches.

use super::ApiContext;
use super::auth::gate::Admin;
use super::error::ApiError;
use crate::broker::dead_letters::{
    self, BulkAction, BulkReport, DeadLetter, DeadLetterError, Filter,
};
use crate::broker::topology;
use crate::domain::time::parse_time;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(replay))
        .routes(routes!(purge))
        .routes(routes!(count_bulk))
        .routes(routes!(replay_bulk))
        .routes(routes!(purge_bulk))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Params {
    /// The dead-letter queue (`game_events.dlq` by default).
    #[param(schema_with = queue_names)]
    queue: Option<String>,
    /// For the list: at most this many messages (100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The queues [`Params::queue`] may name.
fn queue_names() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(dead_letters::QUEUES))
        .into()
}

/// A message's id in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct MessageId {
    /// The message id, or `sha256:…` for a message sent without one.
    id: String,
}

impl Params {
    fn queue(&self) -> Result<&str, ApiError> {
        dead_letter_queue(self.queue.as_deref())
    }
}

/// The dead-letter queue a query names, `game_events.dlq` when it names none.
fn dead_letter_queue(queue: Option<&str>) -> Result<&str, ApiError> {
    let queue = queue.unwrap_or(topology::GAME_EVENTS_DLQ);
    if dead_letters::QUEUES.contains(&queue) {
        Ok(queue)
    } else {
        Err(ApiError::bad_field(
            "queue",
            format!("one of {}", dead_letters::QUEUES.join(", ")),
        ))
    }
}

/// The filter of a bulk action: which letters of which dead-letter queue. Every
/// letter of `game_events.dlq` when empty.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct BulkParams {
    /// The dead-letter queue (`game_events.dlq` by default).
    #[param(schema_with = queue_names)]
    queue: Option<String>,
    /// Only letters whose reason contains this text.
    reason: Option<String>,
    /// Only letters dead-lettered before this time (RFC 3339, e.g.
    /// `2026-12-07T12:00:00Z`).
    #[param(value_type = Option<String>, format = DateTime)]
    before: Option<String>,
    /// Only letters dead-lettered at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    after: Option<String>,
}

impl BulkParams {
    fn filter(&self) -> Result<Filter, ApiError> {
        let time = |field: &'static str, text: &Option<String>| {
            text.as_deref()
                .map(|text| parse_time(text).map_err(|reason| ApiError::bad_field(field, reason)))
                .transpose()
        };
        Ok(Filter {
            reason: self.reason.clone(),
            before: time("before", &self.before)?,
            after: time("after", &self.after)?,
        })
    }
}

/// The query string, or why it could not be read.
type ParamsQuery = Result<Query<Params>, QueryRejection>;
type BulkQuery = Result<Query<BulkParams>, QueryRejection>;

/// Dead letters
///
/// The oldest messages of a dead-letter queue, left in it: reading never removes. One
/// whose sealed body cannot be opened is listed too, with `unopenable` saying why.
#[utoipa::path(get, path = "/api/dlq", tag = "dead letters",
    security(("bearer" = [])), params(Params),
    responses((status = 200, description = "The messages, oldest first", body = Vec<DeadLetter>)))]
async fn list(
    _: Admin,
    State(ctx): State<ApiContext>,
    query: ParamsQuery,
) -> Result<axum::Json<Vec<DeadLetter>>, ApiError> {
    let Query(params) = query?;
    let limit = super::list_limit(params.limit)?;
    let listed = dead_letters::list(ctx.broker.as_ref(), params.queue()?, limit as usize).await?;
    Ok(axum::Json(listed))
}

/// Replay a dead letter
///
/// Sends the message back to the queue it died in, with a fresh retry count, and
/// removes it from the dead-letter queue once the broker has confirmed the copy. A
/// message whose sealed body cannot be opened is refused and left in place: sent back,
/// no consumer could read it.
#[utoipa::path(post, path = "/api/dlq/{id}/replay", tag = "dead letters",
    security(("bearer" = [])),
    params(MessageId, Params),
    responses(
        (status = 200, description = "The message replayed", body = DeadLetter),
        (status = 404, description = "No such message among the oldest 10,000, or it names \
            no queue to replay it to (a message of `unrouted`)"),
        (status = 409, description = "Its sealed body cannot be opened (`unopenable`): \
            left in place, to purge or to replay once its key is back"),
    ))]
async fn replay(
    _: Admin,
    State(ctx): State<ApiContext>,
    Path(MessageId { id }): Path<MessageId>,
    query: ParamsQuery,
) -> Result<axum::Json<DeadLetter>, ApiError> {
    let Query(params) = query?;
    let queue = params.queue()?;
    dead_letters::replay(ctx.broker.as_ref(), queue, &id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| not_found(queue, &id))
}

/// Purge a dead letter
#[utoipa::path(delete, path = "/api/dlq/{id}", tag = "dead letters",
    security(("bearer" = [])),
    params(MessageId, Params),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such message among the oldest 10,000"),
    ))]
async fn purge(
    _: Admin,
    State(ctx): State<ApiContext>,
    Path(MessageId { id }): Path<MessageId>,
    query: ParamsQuery,
) -> Result<StatusCode, ApiError> {
    let Query(params) = query?;
    let queue = params.queue()?;
    dead_letters::purge(ctx.broker.as_ref(), queue, &id)
        .await?
        .map(|_| StatusCode::NO_CONTENT)
        .ok_or_else(|| not_found(queue, &id))
}

/// Count dead letters
///
/// How many letters of a dead-letter queue the filter matches, among its oldest 10,000:
/// what a bulk replay or purge with the same filter would take. Every letter stays.
#[utoipa::path(get, path = "/api/dlq/count", tag = "dead letters",
    security(("bearer" = [])), params(BulkParams),
    responses((status = 200, description = "What the filter matches", body = BulkReport)))]
async fn count_bulk(
    _: Admin,
    State(ctx): State<ApiContext>,
    query: BulkQuery,
) -> Result<axum::Json<BulkReport>, ApiError> {
    run_bulk(&ctx, query, BulkAction::Count).await
}

/// Replay dead letters in bulk
///
/// Sends every letter the filter matches, among the queue's oldest 10,000, back to the
/// queue it died in, as a replay of one does; `left` counts the messages past those,
/// for another call. Interrupted and run again, each letter is still processed once.
/// Letters that cannot be opened stay, counted as `skipped`.
#[utoipa::path(post, path = "/api/dlq/replay", tag = "dead letters",
    security(("bearer" = [])), params(BulkParams),
    responses((status = 200, description = "What was replayed", body = BulkReport)))]
async fn replay_bulk(
    _: Admin,
    State(ctx): State<ApiContext>,
    query: BulkQuery,
) -> Result<axum::Json<BulkReport>, ApiError> {
    run_bulk(&ctx, query, BulkAction::Replay).await
}

/// Purge dead letters in bulk
///
/// Removes every letter the filter matches, among the queue's oldest 10,000; `left`
/// counts the messages past those, for another call.
#[utoipa::path(delete, path = "/api/dlq", tag = "dead letters",
    security(("bearer" = [])), params(BulkParams),
    responses((status = 200, description = "What was purged", body = BulkReport)))]
async fn purge_bulk(
    _: Admin,
    State(ctx): State<ApiContext>,
    query: BulkQuery,
) -> Result<axum::Json<BulkReport>, ApiError> {
    run_bulk(&ctx, query, BulkAction::Purge).await
}

async fn run_bulk(
    ctx: &ApiContext,
    query: BulkQuery,
    action: BulkAction,
) -> Result<axum::Json<BulkReport>, ApiError> {
    let Query(params) = query?;
    let queue = dead_letter_queue(params.queue.as_deref())?;
    let filter = params.filter()?;
    let report = dead_letters::bulk(ctx.broker.as_ref(), queue, &filter, action, |_| {}).await?;
    Ok(axum::Json(report))
}

fn not_found(queue: &str, id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no message {id} among the oldest {} of {queue}",
        dead_letters::MAX_SCAN
    ))
}

impl From<DeadLetterError> for ApiError {
    fn from(error: DeadLetterError) -> Self {
        match error {
            DeadLetterError::Broker(error) => error.into(),
            unopenable @ DeadLetterError::Unopenable { .. } => {
                Self::Conflict(unopenable.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostile::{
        self, check_refused_query, nasty_string, numeric_text, query_pairs, uri_with_query,
    };
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            nasty_string(),
            numeric_text(),
            prop::sample::select(&dead_letters::QUEUES[..]).prop_map(str::to_owned),
        ]
    }

    proptest! {
        #![proptest_config(hostile::config(512))]

        /// `GET /api/dlq`'s query: a dead-letter queue and a limit of 1 to 1000, or a
        /// 400 naming the parameter.
        #[test]
        fn a_query_names_a_dead_letter_queue_and_a_limit_or_is_refused(
            pairs in query_pairs(&["queue", "limit"], value()),
        ) {
            let parsed = Query::<Params>::try_from_uri(&uri_with_query(&pairs)?)
                .map_err(ApiError::from)
                .and_then(|Query(params)| {
                    let limit = super::super::list_limit(params.limit)?;
                    Ok((params.queue()?.to_owned(), limit))
                });
            match parsed {
                Ok((queue, limit)) => {
                    prop_assert!(dead_letters::QUEUES.contains(&queue.as_str()));
                    prop_assert!((1..=1000).contains(&limit));
                }
                Err(error) => check_refused_query(&error, &pairs)?,
            }
        }
    }
}
