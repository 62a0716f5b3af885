//! `/api/games`: the catalog, with the original API's routes and shapes.

use super::ApiContext;
use super::error::{ApiError, FieldError};
use super::extract::{Id, Json, body_bytes};
use crate::broker::{BrokerError, topology};
use crate::domain::{
    Developer, EventId, Game, GameAction, GameDraft, GameTitle, ImageUrl, ProcessingStatus,
    ReleaseYear, ValidationError,
};
use crate::storage::{Cover, GameQuery, GameSort, GameUpdate, NewGame, OutboxMessage, PageRequest};
use crate::telemetry::trace;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Router, body::Body};
use serde::Deserialize;
use std::time::Duration;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/api/games", get(list).post(create))
        .route("/api/games/{id}", get(show).put(update).delete(remove))
        .route("/api/games/{id}/process-complete", put(process_complete))
        .route("/api/games/{id}/cover", put(upload_cover))
        .route("/api/games/{id}/thumbnail", get(thumbnail))
        .route("/api/games/{id}/history", get(history))
}

/// The body of `POST` and `PUT /api/games`. Ids and the year may arrive as numbers or
/// as numeric strings: the original page sent its `<select>` values as strings.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GameBody {
    title: String,
    #[serde(deserialize_with = "lenient_int")]
    platform_id: i64,
    #[serde(deserialize_with = "lenient_int")]
    genre_id: i64,
    developer: String,
    #[serde(deserialize_with = "lenient_int")]
    release_year: i64,
    /// Accepted for compatibility and ignored: the server derives the decade.
    #[serde(default)]
    #[allow(dead_code)]
    year_category: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
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

/// An integer, or a string holding one (`3` or `"3"`); anything else is refused.
fn lenient_int<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(i64),
        String(String),
    }
    match IntOrString::deserialize(deserializer) {
        Ok(IntOrString::Int(value)) => Ok(value),
        Ok(IntOrString::String(text)) => text
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("expected an integer, got {text:?}"))),
        Err(_) => Err(serde::de::Error::custom("expected an integer")),
    }
}

/// `GET /api/games`: the original's filters, plus `status`, `sort` and pagination.
/// Without `limit`/`cursor` it answers a plain array, as the original did.
async fn list(
    State(ctx): State<ApiContext>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = parse_list_query(raw.as_deref().unwrap_or(""))?;
    let paginated = query.page.is_some();
    let page = ctx.store.list_games(&query).await?;
    Ok(if paginated {
        axum::Json(page).into_response()
    } else {
        axum::Json(page.items).into_response()
    })
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

async fn show(State(ctx): State<ApiContext>, Id(id): Id) -> Result<axum::Json<Game>, ApiError> {
    Ok(axum::Json(existing(&ctx, id).await?))
}

async fn existing(ctx: &ApiContext, id: i64) -> Result<Game, ApiError> {
    ctx.store
        .game(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("game {id} not found")))
}

/// `POST /api/games`: 201 with the game. With `?wait=`, 201 once its processing has
/// finished, with the processed game, or 202 with the pending game if the wait ran out.
async fn create(
    State(ctx): State<ApiContext>,
    RawQuery(raw): RawQuery,
    Json(body): Json<GameBody>,
) -> Result<Response, ApiError> {
    let wait = parse_wait(raw.as_deref())?;
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

/// `PUT /api/games/{id}`: 200 with the game; `?wait=` as for `POST`.
async fn update(
    State(ctx): State<ApiContext>,
    Id(id): Id,
    RawQuery(raw): RawQuery,
    Json(body): Json<GameBody>,
) -> Result<Response, ApiError> {
    let wait = parse_wait(raw.as_deref())?;
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

/// `?wait=5s` (or `500ms`, `1m`…): how long a write waits for its processing.
fn parse_wait(raw: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(value) = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .find(|(key, _)| key == "wait")
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
    else {
        return Ok(None);
    };
    humantime::parse_duration(&value)
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

async fn remove(State(ctx): State<ApiContext>, Id(id): Id) -> Result<StatusCode, ApiError> {
    ctx.store.delete_game(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessComplete {
    status: String,
}

/// The original consumer's callback: `{"status": "completed" | "failed"}`.
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

/// `PUT /api/games/{id}/cover`: the raw image as the body, its type in Content-Type.
/// The format is checked here, so a non-image never reaches the worker.
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

async fn history(State(ctx): State<ApiContext>, Id(id): Id) -> Result<Response, ApiError> {
    let attempts = ctx.store.history(id).await?;
    if attempts.is_empty() {
        existing(&ctx, id).await?;
    }
    Ok(axum::Json(attempts).into_response())
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
