//! Processing views: the original's `/api/processing`, and our `/api/tasks` and
//! `/api/tasks/counts`.

use super::ApiContext;
use super::error::ApiError;
use super::openapi::{blank_or, query_param};
use crate::domain::ProcessingStatus;
use crate::domain::text::{MAX_SEARCH_CHARS, ONE_LINE_PATTERN, check_one_line, check_search};
use crate::domain::time::parse_time;
use crate::storage::{
    PageRequest, PendingGame, StatusCounts, TaskFilter, TaskPage, TaskSort, TaskView,
};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
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
/// The games that the filters take, most recently changed first unless `sort` says
/// otherwise, with their attempts, last error and duration. Without `limit` or
/// `cursor`, the first 100 as an array; with either, a page, as `GET /api/games`
/// pages. A blank filter is as if absent; other parameters are ignored.
#[utoipa::path(get, path = "/api/tasks", tag = "processing",
    params(TaskQuery),
    responses((status = 200, description = "The games, as an array or, paginated, a page",
        body = TaskList)))]
async fn tasks(
    State(ctx): State<ApiContext>,
    TaskQuery {
        filter,
        page,
        paged,
    }: TaskQuery,
) -> Result<axum::Json<TaskList>, ApiError> {
    let found = ctx.store.tasks(&filter, &page).await?;
    Ok(axum::Json(if paged {
        TaskList::Page(found)
    } else {
        TaskList::All(found.items)
    }))
}

/// The answer of `GET /api/tasks`: an array, or a page.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum TaskList {
    All(Vec<TaskView>),
    Page(TaskPage),
}

/// The filters, order and page of `GET /api/tasks`, validated.
struct TaskQuery {
    filter: TaskFilter,
    page: PageRequest,
    /// `limit` or `cursor` was given: the answer is a page.
    paged: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for TaskQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parse_task_query(parts.uri.query().unwrap_or(""))
    }
}

/// As many tasks as an answer holds when the query does not say.
const DEFAULT_LIMIT: u32 = 100;

fn parse_task_query(query: &str) -> Result<TaskQuery, ApiError> {
    let mut filter = TaskFilter::default();
    let mut page = PageRequest {
        limit: DEFAULT_LIMIT,
        cursor: None,
    };
    let mut paged = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        // As `GET /api/games` reads its filters: spaces around a value are dropped, and
        // a blank one is as if absent.
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let text = |field: &'static str| {
            check_one_line(value)
                .map(|()| Some(value.to_string()))
                .map_err(|reason| ApiError::bad_field(field, reason))
        };
        let time = |field: &'static str| {
            parse_time(value)
                .map(Some)
                .map_err(|reason| ApiError::bad_field(field, reason))
        };
        match key.as_ref() {
            "limit" => {
                let max = PageRequest::MAX_LIMIT;
                page.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_field("limit", format!("must be between 1 and {max}"))
                    })?;
                paged = true;
            }
            "cursor" => {
                page.cursor = Some(value.to_owned());
                paged = true;
            }
            "sort" => {
                filter.sort = TaskSort::parse(value).ok_or_else(|| {
                    ApiError::bad_field("sort", format!("must be one of {}", TaskSort::NAMES))
                })?;
            }
            "search" => {
                check_search(value).map_err(|reason| ApiError::bad_field("search", reason))?;
                filter.search = Some(value.to_owned());
            }
            "worker" => filter.worker = text("worker")?,
            "error" => filter.error = text("error")?,
            "status" => {
                let status = ProcessingStatus::parse(value).ok_or_else(|| {
                    ApiError::bad_field("status", "pending, processing, completed or failed")
                })?;
                filter.status = Some(status);
            }
            "since" => filter.since = time("since")?,
            "until" => filter.until = time("until")?,
            _ => {}
        }
    }
    Ok(TaskQuery {
        filter,
        page,
        paged,
    })
}

/// The parameters [`parse_task_query`] reads.
impl IntoParams for TaskQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let text = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(ONE_LINE_PATTERN))
        };
        let time = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        };
        let statuses = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ProcessingStatus::ALL.map(ProcessingStatus::as_str)));
        let limit = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(PageRequest::MAX_LIMIT));
        let sorts = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^-?(updatedAt|title)$"));
        vec![
            query_param(
                "search",
                "A part of the title, in any case",
                text().max_length(Some(MAX_SEARCH_CHARS)).into(),
            ),
            query_param(
                "status",
                "Games at this processing status",
                blank_or(statuses),
            ),
            query_param(
                "worker",
                "Games an attempt of this worker (`--worker-id`) processed",
                text().into(),
            ),
            query_param(
                "error",
                "A part of the last attempt's error, in any case",
                text().into(),
            ),
            query_param(
                "since",
                "Changed at or after this time (RFC 3339)",
                blank_or(time()),
            ),
            query_param(
                "until",
                "Changed before this time (RFC 3339)",
                blank_or(time()),
            ),
            query_param(
                "sort",
                "`-updatedAt` (the default) or `title`; a leading `-` reverses",
                blank_or(sorts),
            ),
            query_param(
                "limit",
                "A page of at most this many games (100 by default)",
                blank_or(limit),
            ),
            query_param(
                "cursor",
                "The previous page's `nextCursor`",
                ObjectBuilder::new().schema_type(Type::String).into(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_query_reads_its_filters_and_refuses_bad_ones_by_name() {
        let TaskQuery {
            filter,
            page,
            paged,
        } = parse_task_query(
            "search=Zel&status=failed&worker=w1&error=503&since=2026-12-07T12:00:00Z&limit=7&colour=red&until=&sort=title",
        )
        .unwrap();
        assert_eq!((page.limit, paged), (7, true));
        assert_eq!(filter.sort, TaskSort::Title);
        assert_eq!(filter.search.as_deref(), Some("Zel"));
        assert_eq!(filter.status, Some(ProcessingStatus::Failed));
        assert_eq!(filter.worker.as_deref(), Some("w1"));
        assert_eq!(filter.error.as_deref(), Some("503"));
        assert_eq!(
            filter.since.unwrap().to_rfc3339(),
            "2026-12-07T12:00:00+00:00"
        );
        assert_eq!(filter.until, None, "a blank filter is as if absent");
        let TaskQuery { page, paged, .. } = parse_task_query("search=Zel").unwrap();
        assert_eq!((page.limit, paged), (DEFAULT_LIMIT, false), "an array");
        for (query, field) in [
            ("status=done", "status"),
            ("since=yesterday", "since"),
            ("search=a%00b", "search"),
            (&format!("search={}", "a".repeat(101)), "search"),
            ("limit=0", "limit"),
            ("sort=attempts", "sort"),
        ] {
            let Err(ApiError::BadRequest { errors, .. }) = parse_task_query(query) else {
                panic!("{query} was taken");
            };
            assert_eq!(errors[0].field, field, "{query}");
        }
    }
}
