//! `/api/games`: the catalog, with the original API's routes and shapes.

use super::ApiContext;
use super::error::{ApiError, FieldError};
use super::extract::{Id, Json, body_bytes};
use super::openapi::{blank_or, query_param};
use crate::broker::{BrokerError, topology};
use crate::domain::number::whole;
use crate::domain::{
    Developer, EventId, Game, GameAction, GameDraft, GameTitle, ImageUrl, ProcessingStatus,
    ReleaseYear, ValidationError,
};
use crate::storage::{
    Attempt, Cover, GamePage, GameQuery, GameSort, GameUpdate, NewGame, OutboxMessage, PageRequest,
};
use crate::telemetry::trace;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(process_complete))
        .routes(routes!(upload_cover))
        .routes(routes!(thumbnail))
        .routes(routes!(history))
}

/// The body of `POST` and `PUT /api/games`. Ids and the year may arrive as numbers or
/// as numeric strings: the original page sent its `<select>` values as strings.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GameBody {
    /// 1 to 100 characters once trimmed.
    #[schema(min_length = 1, max_length = 100)]
    title: String,
    #[serde(deserialize_with = "lenient_int")]
    #[schema(schema_with = positive_id)]
    platform_id: i64,
    #[serde(deserialize_with = "lenient_int")]
    #[schema(schema_with = positive_id)]
    genre_id: i64,
    /// 1 to 100 characters once trimmed.
    #[schema(min_length = 1, max_length = 100)]
    developer: String,
    /// From 1950 to the current year.
    #[serde(deserialize_with = "lenient_int")]
    #[schema(schema_with = release_year)]
    release_year: i64,
    /// Accepted for compatibility and ignored: the server derives the decade.
    #[serde(default)]
    #[allow(dead_code)]
    #[schema(value_type = Option<serde_json::Value>)]
    year_category: Option<serde::de::IgnoredAny>,
    /// At most 5000 characters once trimmed.
    #[serde(default)]
    #[schema(max_length = 5000)]
    description: Option<String>,
    /// An absolute http or https URL of at most 255 characters; empty for none.
    #[serde(default)]
    #[schema(max_length = 255)]
    image_url: Option<String>,
}

impl GameBody {
    /// Validates every field, reporting all refusals at once.
    fn parse(self) -> Result<GameDraft, ApiError> {
        let platform_id = positive("platformId", self.platform_id);
        let genre_id = positive("genreId", self.genre_id);
        let title = GameTitle::parse(&self.title);
        let developer = Developer::parse(&self.developer);
        let release_year = ReleaseYear::parse(self.release_year);
        let image_url = match self.image_url.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(url) => ImageUrl::parse(url).map(Some),
        };
        let description = self.description.unwrap_or_default().trim().to_owned();
        let description = if description.chars().count() > 5000 {
            Err(ValidationError::new(
                "description",
                "must be at most 5000 characters",
            ))
        } else {
            Ok(description)
        };
        let errors: Vec<FieldError> = [
            platform_id.as_ref().err(),
            genre_id.as_ref().err(),
            title.as_ref().err(),
            developer.as_ref().err(),
            release_year.as_ref().err(),
            image_url.as_ref().err(),
            description.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        .map(|e| FieldError {
            field: e.field.into(),
            reason: e.reason.clone(),
        })
        .collect();
        if !errors.is_empty() {
            let detail = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ApiError::Unprocessable { detail, errors });
        }
        Ok(GameDraft {
            title: title?,
            platform_id: platform_id?,
            genre_id: genre_id?,
            developer: developer?,
            release_year: release_year?,
            description: description?,
            image_url: image_url?,
        })
    }
}

fn positive(field: &'static str, value: i64) -> Result<i64, ValidationError> {
    if value > 0 {
        Ok(value)
    } else {
        Err(ValidationError::new(field, "must be a positive id"))
    }
}

/// What [`lenient_int`] takes, in the document: an integer from `minimum`, or a string
/// of its digits.
fn lenient_int_schema(minimum: i64, description: &str) -> Schema {
    let number = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(minimum))
        .maximum(Some(i64::MAX));
    let digits = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^\s*\+?0*[1-9][0-9]{0,17}\s*$"));
    OneOfBuilder::new()
        .item(number)
        .item(digits)
        .description(Some(description))
        .into()
}

fn positive_id() -> Schema {
    lenient_int_schema(1, "A positive id, as a number or a string of digits")
}

fn release_year() -> Schema {
    lenient_int_schema(
        crate::domain::ReleaseYear::EARLIEST.into(),
        "From 1950 to the current year, as a number or a string of digits",
    )
}

/// An integer, or a string holding one (`3` or `"3"`); anything else is refused.
fn lenient_int<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Number(serde_json::Number),
        String(String),
    }
    match IntOrString::deserialize(deserializer) {
        Ok(IntOrString::Number(number)) => {
            whole(&number).ok_or_else(|| serde::de::Error::custom("expected an integer"))
        }
        Ok(IntOrString::String(text)) => text
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("expected an integer, got {text:?}"))),
        Err(_) => Err(serde::de::Error::custom("expected an integer")),
    }
}

/// The catalog's games, filtered
///
/// The original's filters, plus `status`, `sort` and pagination. Without `limit` or
/// `cursor` it answers a plain array, as the original did; with either, a page. An
/// empty value is as if the parameter were absent, and unknown parameters are ignored.
#[utoipa::path(
    get,
    path = "/api/games",
    tag = "games",
    params(ListQuery),
    responses(
        (status = 200, description = "The games, as an array or, paginated, a page",
            body = GameList),
    )
)]
async fn list(
    State(ctx): State<ApiContext>,
    ListQuery(query): ListQuery,
) -> Result<axum::Json<GameList>, ApiError> {
    let paginated = query.page.is_some();
    let page = ctx.store.list_games(&query).await?;
    Ok(axum::Json(if paginated {
        GameList::Page(page)
    } else {
        GameList::All(page.items)
    }))
}

/// The answer of `GET /api/games`: an array without pagination, a page with it.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum GameList {
    All(Vec<Game>),
    Page(GamePage),
}

/// The filters of `GET /api/games`, validated.
struct ListQuery(GameQuery);

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parse_list_query(parts.uri.query().unwrap_or("")).map(Self)
    }
}

/// The parameters [`parse_list_query`] reads. A blank value is as if it were absent.
impl IntoParams for ListQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let text = |max: usize| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(max))
        };
        let pattern = |pattern: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern))
        };
        let integer = |minimum: i64, maximum: i64| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(minimum))
                .maximum(Some(maximum))
        };
        let statuses = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ProcessingStatus::ALL.map(ProcessingStatus::as_str)));
        let max_limit = PageRequest::MAX_LIMIT.into();
        vec![
            query_param(
                "search",
                "A substring of the title or the developer, case-insensitive",
                text(100).into(),
            ),
            query_param(
                "platformId",
                "Games of this platform",
                blank_or(integer(1, i64::MAX)),
            ),
            query_param(
                "genreId",
                "Games of this genre",
                blank_or(integer(1, i64::MAX)),
            ),
            query_param(
                "yearCategory",
                "Games of this decade, such as `1980s`",
                blank_or(pattern(r"^-?[0-9]*0s$")),
            ),
            query_param(
                "status",
                "Games at this processing status",
                blank_or(statuses),
            ),
            query_param(
                "sort",
                "`title` (the default), `releaseYear` or `createdAt`; a leading `-` reverses",
                blank_or(pattern(r"^-?(title|releaseYear|createdAt)$")),
            ),
            query_param(
                "limit",
                "A page of at most this many games (50 by default)",
                blank_or(integer(1, max_limit)),
            ),
            query_param(
                "cursor",
                "The previous page's `nextCursor`",
                ObjectBuilder::new().schema_type(Type::String).into(),
            ),
        ]
    }
}

fn parse_list_query(raw: &str) -> Result<GameQuery, ApiError> {
    let mut query = GameQuery::default();
    let mut limit = None;
    let mut cursor = None;
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match key.as_ref() {
            "search" => {
                if value.chars().count() > 100 {
                    return Err(ApiError::bad_field(
                        "search",
                        "must be at most 100 characters",
                    ));
                }
                query.search = Some(value.to_owned());
            }
            "platformId" => query.platform_id = Some(query_id("platformId", value)?),
            "genreId" => query.genre_id = Some(query_id("genreId", value)?),
            "yearCategory" => {
                let decade = value
                    .strip_suffix('s')
                    .and_then(|year| year.parse::<i32>().ok())
                    .filter(|year| year % 10 == 0);
                if decade.is_none() {
                    return Err(ApiError::bad_field(
                        "yearCategory",
                        "must be a decade such as 1980s",
                    ));
                }
                query.year_category = Some(value.to_owned());
            }
            "status" => {
                query.status = Some(ProcessingStatus::parse(value).ok_or_else(|| {
                    ApiError::bad_field(
                        "status",
                        "must be one of pending, processing, completed, failed",
                    )
                })?)
            }
            "sort" => {
                query.sort = GameSort::parse(value).ok_or_else(|| {
                    ApiError::bad_field("sort", format!("must be one of {}", GameSort::NAMES))
                })?
            }
            "limit" => {
                let max = PageRequest::MAX_LIMIT;
                limit = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=max).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_field("limit", format!("must be between 1 and {max}"))
                        })?,
                );
            }
            "cursor" => cursor = Some(value.to_owned()),
            // Unknown parameters are ignored, as the original did (cache busters…).
            _ => {}
        }
    }
    if limit.is_some() || cursor.is_some() {
        query.page = Some(PageRequest {
            limit: limit.unwrap_or(PageRequest::DEFAULT_LIMIT),
            cursor,
        });
    }
    Ok(query)
}

fn query_id(field: &'static str, value: &str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_field(field, "must be a positive integer"))
}

/// One game
#[utoipa::path(
    get,
    path = "/api/games/{id}",
    tag = "games",
    params(Id),
    responses(
        (status = 200, description = "The game", body = Game),
        (status = 404, description = "No game with this id"),
    )
)]
async fn show(State(ctx): State<ApiContext>, Id(id): Id) -> Result<axum::Json<Game>, ApiError> {
    Ok(axum::Json(existing(&ctx, id).await?))
}

async fn existing(ctx: &ApiContext, id: i64) -> Result<Game, ApiError> {
    ctx.store
        .game(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("game {id} not found")))
}

/// Create a game
///
/// Answers 201 with the game, `pending` until a worker has processed it. With `?wait=`,
/// 201 once its processing has finished, with the processed game, or 202 with the
/// pending game if the wait ran out.
#[utoipa::path(
    post,
    path = "/api/games",
    tag = "games",
    params(WaitParam),
    request_body = GameBody,
    responses(
        (status = 201, description = "Created; processed too when `wait` was given",
            body = Game, headers(("Location" = String, description = "The game's URL"))),
        (status = 202, description = "Created, still processing when `wait` ran out",
            body = Game, headers(("Location" = String, description = "The game's URL"))),
        (status = 422, description = "A field is refused, or names no such platform or genre"),
    )
)]
async fn create(
    State(ctx): State<ApiContext>,
    query: Result<Query<WaitParam>, QueryRejection>,
    Json(body): Json<GameBody>,
) -> Result<Response, ApiError> {
    let wait = parse_wait(query)?;
    let draft = body.parse()?;
    let event = EventId::generate();
    let trace = trace::traceparent(&tracing::Span::current());
    let new = NewGame {
        draft,
        event: event.clone(),
        trace: trace.clone(),
    };
    let game = ctx.creates.call(new).await??;
    let location = HeaderValue::from_str(&format!("/api/games/{}", game.id))
        .expect("a path of digits is a valid header");
    let written = Written {
        action: GameAction::Create,
        event: &event,
        trace: trace.as_deref(),
    };
    let (status, game) =
        wait_for_processing(&ctx, game, written, wait, StatusCode::CREATED).await?;
    Ok((status, [(header::LOCATION, location)], axum::Json(game)).into_response())
}

/// Update a game
///
/// Answers 200 with the game, `pending` again until a worker has processed the new
/// version; `?wait=` as for a create.
#[utoipa::path(
    put,
    path = "/api/games/{id}",
    tag = "games",
    params(Id, WaitParam),
    request_body = GameBody,
    responses(
        (status = 200, description = "Updated; processed too when `wait` was given",
            body = Game),
        (status = 202, description = "Updated, still processing when `wait` ran out",
            body = Game),
        (status = 404, description = "No game with this id"),
        (status = 422, description = "A field is refused, or names no such platform or genre"),
    )
)]
async fn update(
    State(ctx): State<ApiContext>,
    Id(id): Id,
    query: Result<Query<WaitParam>, QueryRejection>,
    Json(body): Json<GameBody>,
) -> Result<Response, ApiError> {
    let wait = parse_wait(query)?;
    let draft = body.parse()?;
    let event = EventId::generate();
    let trace = trace::traceparent(&tracing::Span::current());
    let update = GameUpdate {
        id,
        draft,
        event: event.clone(),
        trace: trace.clone(),
    };
    let game = ctx.updates.call(update).await??;
    let written = Written {
        action: GameAction::Update,
        event: &event,
        trace: trace.as_deref(),
    };
    let (status, game) = wait_for_processing(&ctx, game, written, wait, StatusCode::OK).await?;
    Ok((status, axum::Json(game)).into_response())
}

/// The longest `?wait=` a client may ask for: a request holds a connection meanwhile.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// The query of a write; other parameters are ignored.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitParam {
    /// How long to wait for the processing, at most 30 s: `5s`, `500ms`… Empty: no wait.
    #[param(pattern = r"^\s*(0|([12]?[0-9]|30)s|[0-9]{1,4}ms)?\s*$")]
    wait: Option<String>,
}

/// `?wait=5s` (or `500ms`…): how long a write waits for its processing.
fn parse_wait(
    query: Result<Query<WaitParam>, QueryRejection>,
) -> Result<Option<Duration>, ApiError> {
    let Query(WaitParam { wait }) = query?;
    let Some(value) = wait
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
    else {
        return Ok(None);
    };
    humantime::parse_duration(value)
        .ok()
        .filter(|wait| *wait <= MAX_WAIT)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_field(
                "wait",
                format!("must be a duration such as 5s or 500ms, at most {MAX_WAIT:?}"),
            )
        })
}

/// What a write's event was: its action, id and the request's trace.
struct Written<'a> {
    action: GameAction,
    event: &'a EventId,
    trace: Option<&'a str>,
}

/// Request/reply over the broker: the write's event is sent again, with the same event
/// id, as a priority-10 request on `catalog.rpc`, which the workers take ahead of any
/// backlog on `game_events`; the inbox makes the later of the two copies a no-op. On a
/// reply the game is read again and answered with `done`; when the wait runs out (or
/// the broker cannot be reached) the answer is 202 with the game as written: the event
/// in the outbox still gets it processed. The caller giving up (a closed connection)
/// drops the wait, and with it every trace of the request on this side.
async fn wait_for_processing(
    ctx: &ApiContext,
    game: Game,
    written: Written<'_>,
    wait: Option<Duration>,
    done: StatusCode,
) -> Result<(StatusCode, Game), ApiError> {
    let Some(wait) = wait else {
        return Ok((done, game));
    };
    let mut request = OutboxMessage::game_event(&game, written.action, written.event)
        .traced(written.trace)
        .into_publish();
    request.exchange = String::new();
    request.routing_key = topology::RPC_QUEUE.into();
    request.message.properties.priority = topology::RPC_MAX_PRIORITY;
    match ctx.broker.request(request, wait).await {
        Ok(_) => Ok((done, existing(ctx, game.id).await?)),
        Err(BrokerError::NoReply(_)) => Ok((StatusCode::ACCEPTED, game)),
        Err(error) => {
            tracing::warn!(%error, game_id = game.id, "cannot wait for processing");
            Ok((StatusCode::ACCEPTED, game))
        }
    }
}

/// Delete a game
#[utoipa::path(
    delete,
    path = "/api/games/{id}",
    tag = "games",
    params(Id),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No game with this id"),
    )
)]
async fn remove(State(ctx): State<ApiContext>, Id(id): Id) -> Result<StatusCode, ApiError> {
    ctx.store.delete_game(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProcessComplete {
    /// `completed` or `failed`.
    #[schema(pattern = "^(completed|failed)$")]
    status: String,
}

/// Set a game's processing status
///
/// The original consumer's callback: `{"status": "completed" | "failed"}`.
#[utoipa::path(
    put,
    path = "/api/games/{id}/process-complete",
    tag = "games",
    params(Id),
    request_body = ProcessComplete,
    responses(
        (status = 200, description = "The game with its new status", body = Game),
        (status = 404, description = "No game with this id"),
        (status = 422, description = "`status` is neither completed nor failed"),
    )
)]
async fn process_complete(
    State(ctx): State<ApiContext>,
    Id(id): Id,
    Json(body): Json<ProcessComplete>,
) -> Result<axum::Json<Game>, ApiError> {
    let status = match ProcessingStatus::parse(&body.status) {
        Some(status @ (ProcessingStatus::Completed | ProcessingStatus::Failed)) => status,
        _ => return Err(ValidationError::new("status", "must be completed or failed").into()),
    };
    Ok(axum::Json(ctx.store.set_status(id, status).await?))
}

/// Upload a game's cover
///
/// The raw image as the body, its type in Content-Type: PNG, JPEG, GIF, WebP or BMP.
/// The format is checked here, so a non-image never reaches the worker, which derives
/// the thumbnail.
#[utoipa::path(
    put,
    path = "/api/games/{id}/cover",
    tag = "games",
    params(Id),
    request_body(content = Vec<u8>, content_type = "image/*",
        description = "The image's bytes"),
    responses(
        (status = 200, description = "The game, `pending` until its thumbnail is made",
            body = Game),
        (status = 404, description = "No game with this id"),
    )
)]
async fn upload_cover(
    State(ctx): State<ApiContext>,
    Id(id): Id,
    request: Request,
) -> Result<axum::Json<Game>, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !declared.starts_with("image/") {
        return Err(ApiError::UnsupportedMediaType(
            "send the cover as the raw body with an image/* Content-Type".into(),
        ));
    }
    let bytes = body_bytes(request, &ctx).await?;
    let format = image::guess_format(&bytes).map_err(|_| {
        ApiError::UnsupportedMediaType(
            "the body is not an image in a supported format (PNG, JPEG, GIF, WebP, BMP)".into(),
        )
    })?;
    let cover = Cover {
        content_type: format.to_mime_type().to_owned(),
        bytes: bytes.to_vec(),
    };
    Ok(axum::Json(ctx.store.set_cover(id, &cover).await?))
}

/// A game's thumbnail
#[utoipa::path(
    get,
    path = "/api/games/{id}/thumbnail",
    tag = "games",
    params(Id),
    responses(
        (status = 200, description = "The thumbnail, a PNG", content_type = "image/png",
            body = Vec<u8>),
        (status = 404, description = "No game with this id, or no thumbnail yet"),
    )
)]
async fn thumbnail(State(ctx): State<ApiContext>, Id(id): Id) -> Result<Response, ApiError> {
    let thumbnail = ctx
        .store
        .thumbnail(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("game {id} has no thumbnail (yet)")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from(thumbnail.png),
    )
        .into_response())
}

/// A game's processing attempts
///
/// Every attempt, oldest first, with its outcome, error, worker and trace id.
#[utoipa::path(
    get,
    path = "/api/games/{id}/history",
    tag = "games",
    params(Id),
    responses(
        (status = 200, description = "The attempts", body = Vec<Attempt>),
        (status = 404, description = "No game with this id"),
    )
)]
async fn history(State(ctx): State<ApiContext>, Id(id): Id) -> Result<Response, ApiError> {
    // A deleted game's attempts stay in the database, but the game is gone: 404, as
    // for the game itself.
    existing(&ctx, id).await?;
    Ok(axum::Json(ctx.store.history(id).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_without_paging_is_a_plain_list() {
        let query = parse_list_query("search=mario&platformId=2&yearCategory=1980s").unwrap();
        assert_eq!(query.search.as_deref(), Some("mario"));
        assert_eq!(query.platform_id, Some(2));
        assert_eq!(query.page, None);
    }

    #[test]
    fn list_query_refuses_bad_values_naming_them() {
        for (raw, field) in [
            ("platformId=abc", "platformId"),
            ("genreId=-1", "genreId"),
            ("yearCategory=eighties", "yearCategory"),
            ("status=done", "status"),
            ("sort=rating", "sort"),
            ("limit=0", "limit"),
            ("limit=100000", "limit"),
        ] {
            match parse_list_query(raw) {
                Err(ApiError::BadRequest { errors, .. }) => assert_eq!(errors[0].field, field),
                other => panic!("{raw}: expected a 400, got {other:?}"),
            }
        }
    }
}
