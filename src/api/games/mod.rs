//! `/api/games`: the catalog, with the original API's routes and shapes.

mod body;
mod list;

use super::ApiContext;
use super::admission::Admitted;
use super::error::ApiError;
use super::extract::{Id, Json, body_bytes};
use crate::api::auth::gate::{Admin, Editor};
use crate::broker::{BrokerError, topology};
use crate::domain::{
    CatalogEvent, EventId, Game, GameAction, GameDraft, ProcessingStatus, ValidationError,
};
use crate::processing::thumbnail::ThumbnailError;
use crate::storage::{Attempt, Cover, GameUpdate, NewGame, OutboxMessage};
use crate::telemetry::trace;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use body::GameBody;
use list::{GameList, ListQuery};
use serde::Deserialize;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The parsers of what a stranger sends here, for the cargo-fuzz targets (`fuzz/`).
#[cfg(fuzzing)]
pub(super) mod fuzz {
    use super::body::GameBody;
    use crate::api::extract::decode_json;

    /// `GET /api/games`'s query string.
    pub fn list_query(raw: &str) {
        let _ = super::list::parse_list_query(raw);
    }

    /// `POST /api/games`'s and `PUT /api/games/{id}`'s body.
    pub fn game_body(body: &[u8]) {
        let _ = decode_json::<GameBody>(body).and_then(GameBody::parse);
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(process_complete))
        .routes(routes!(upload_cover))
        .routes(routes!(thumbnail))
        .routes(routes!(history))
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
) -> Result<GameList, ApiError> {
    if query.page.is_some() {
        return Ok(GameList::Page(ctx.store.list_games(&query).await?));
    }
    GameList::all(ctx.store.stream_games(&query).await?).await
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
    security(("bearer" = [])),
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
    _: Editor,
    _: Admitted,
    State(ctx): State<ApiContext>,
    query: Result<Query<WaitParam>, QueryRejection>,
    Json(body): Json<GameBody>,
) -> Result<Response, ApiError> {
    let (wait, draft, written) = prepare(query, body, GameAction::Create)?;
    let new = NewGame {
        draft,
        event: written.event.clone(),
        trace: written.trace.clone(),
    };
    let game = ctx.creates.call(new).await??;
    let location = HeaderValue::from_str(&format!("/api/games/{}", game.id))
        .expect("a path of digits is a valid header");
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
    security(("bearer" = [])),
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
    _: Editor,
    _: Admitted,
    State(ctx): State<ApiContext>,
    Id(id): Id,
    query: Result<Query<WaitParam>, QueryRejection>,
    Json(body): Json<GameBody>,
) -> Result<Response, ApiError> {
    let (wait, draft, written) = prepare(query, body, GameAction::Update)?;
    let update = GameUpdate {
        id,
        draft,
        event: written.event.clone(),
        trace: written.trace.clone(),
    };
    let game = ctx.updates.call(update).await??;
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

/// What a write's event is: its action, id and the request's trace.
struct Written {
    action: GameAction,
    event: EventId,
    trace: Option<String>,
}

/// What a create or an update starts from: the wait asked for, the game validated, and
/// its event, with a new id and the request's trace context.
fn prepare(
    query: Result<Query<WaitParam>, QueryRejection>,
    body: GameBody,
    action: GameAction,
) -> Result<(Option<Duration>, GameDraft, Written), ApiError> {
    let wait = parse_wait(query)?;
    let draft = body.parse()?;
    let written = Written {
        action,
        event: EventId::generate(),
        trace: request_trace(),
    };
    Ok((wait, draft, written))
}

/// The W3C `traceparent` of the request being served, for its event.
fn request_trace() -> Option<String> {
    trace::traceparent(&tracing::Span::current())
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
    written: Written,
    wait: Option<Duration>,
    done: StatusCode,
) -> Result<(StatusCode, Game), ApiError> {
    let Some(wait) = wait else {
        return Ok((done, game));
    };
    let event = CatalogEvent::game_changed(&game, written.action, &written.event);
    let mut request = OutboxMessage::event(&event, written.trace.as_deref()).into_publish();
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
    security(("bearer" = [])),
    params(Id),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No game with this id"),
    )
)]
async fn remove(
    _: Editor,
    _: Admitted,
    State(ctx): State<ApiContext>,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ctx.store
        .delete_game(id, request_trace().as_deref())
        .await?;
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
    security(("bearer" = [])),
    params(Id),
    request_body = ProcessComplete,
    responses(
        (status = 200, description = "The game with its new status", body = Game),
        (status = 404, description = "No game with this id"),
        (status = 422, description = "`status` is neither completed nor failed"),
    )
)]
async fn process_complete(
    _: Admin,
    State(ctx): State<ApiContext>,
    Id(id): Id,
    Json(body): Json<ProcessComplete>,
) -> Result<axum::Json<Game>, ApiError> {
    let status = match ProcessingStatus::parse(&body.status) {
        Some(status @ (ProcessingStatus::Completed | ProcessingStatus::Failed)) => status,
        _ => return Err(ValidationError::new("status", "must be completed or failed").into()),
    };
    let trace = request_trace();
    Ok(axum::Json(
        ctx.store.set_status(id, status, trace.as_deref()).await?,
    ))
}

/// Upload a game's cover
///
/// The raw image as the body, its type in Content-Type: PNG, JPEG, GIF, WebP or BMP.
/// The format and the size its header declares are checked here, so a non-image or an
/// image too large to decode (`--max-image-memory`) never reaches the worker, which
/// derives the thumbnail.
#[utoipa::path(
    put,
    path = "/api/games/{id}/cover",
    tag = "games",
    security(("bearer" = [])),
    params(Id),
    request_body(content = Vec<u8>, content_type = "image/*",
        description = "The image's bytes"),
    responses(
        (status = 200, description = "The game, `pending` until its thumbnail is made",
            body = Game),
        (status = 404, description = "No game with this id"),
        (status = 422, description = "Too large to decode: its header declares more \
            pixels than `--max-image-memory` allows"),
    )
)]
async fn upload_cover(
    _: Editor,
    _: Admitted,
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
    ctx.decode_budget
        .check(&bytes)
        .map_err(|error| match error {
            ThumbnailError::TooLarge(_) => ValidationError::new("cover", error.to_string()).into(),
            _ => ApiError::UnsupportedMediaType(error.to_string()),
        })?;
    let cover = Cover {
        content_type: format.to_mime_type().to_owned(),
        bytes: bytes.to_vec(),
    };
    let trace = request_trace();
    Ok(axum::Json(
        ctx.store.set_cover(id, &cover, trace.as_deref()).await?,
    ))
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
    use crate::hostile::{self, check_refused_query, nasty_string, query_pairs, uri_with_query};
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            nasty_string(),
            (
                0u64..100_000,
                prop::sample::select(&["ms", "s", "m", "h", "d", "y", ""][..])
            )
                .prop_map(|(n, unit)| format!("{n}{unit}")),
            prop::sample::select(
                &[
                    "30s",
                    "30s 1ns",
                    "1h",
                    "99999999999999999999d",
                    "0",
                    "5s 500ms"
                ][..]
            )
            .prop_map(str::to_owned),
        ]
    }

    proptest! {
        #![proptest_config(hostile::config(512))]

        /// `?wait=` of a write: none, a duration of at most 30 s, or a 400 naming it.
        #[test]
        fn a_wait_is_at_most_thirty_seconds_or_refused(
            pairs in query_pairs(&["wait"], value()),
        ) {
            match parse_wait(Query::try_from_uri(&uri_with_query(&pairs)?)) {
                Ok(wait) => prop_assert!(wait.is_none_or(|wait| wait <= MAX_WAIT)),
                Err(error) => check_refused_query(&error, &pairs)?,
            }
        }
    }
}
