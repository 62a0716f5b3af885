//! The producer's routes: the original message-producer's two (it ran on port 3001;
//! here they share the API's port) and ours, which reaches any exchange.

use super::ApiContext;
use super::error::ApiError;
use super::extract::Json;
use crate::broker::Headers;
use crate::domain::{GameAction, GameData, GameEvent, ValidationError, timestamp_now};
use crate::producer::{self, Outgoing, SendError};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/api/messages", post(send_message))
        .route("/api/messages/game-event", post(send_game_event))
        .route("/api/messages/custom", post(send_custom))
}

type Created = (StatusCode, axum::Json<Value>);

/// The original producer's body: `gameId` and `action` required, `gameData` optional.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GameEventBody {
    game_id: Option<i64>,
    action: Option<GameAction>,
    game_data: Option<GameData>,
}

/// `POST /api/messages/game-event`: a game event straight to `game_events`, answered
/// as the original producer answered.
async fn send_game_event(
    State(ctx): State<ApiContext>,
    Json(body): Json<GameEventBody>,
) -> Result<Created, ApiError> {
    let (Some(game_id), Some(action)) = (body.game_id, body.action) else {
        return Err(ApiError::bad_field(
            if body.game_id.is_none() {
                "gameId"
            } else {
                "action"
            },
            "gameId and action are required",
        ));
    };
    if game_id <= 0 {
        return Err(ValidationError::new("gameId", "must be a positive integer").into());
    }
    let event = GameEvent {
        game_id,
        action,
        game_data: Some(body.game_data.unwrap_or_default()),
        timestamp: Some(timestamp_now()),
        event_id: None,
        version: None,
    };
    producer::send_game_event(ctx.broker.as_ref(), event).await?;
    Ok(created(json!({
        "message": "Game event message sent successfully",
        "gameId": game_id,
        "action": action,
        "status": "success",
    })))
}

#[derive(Deserialize)]
struct CustomBody {
    message: Option<Value>,
}

/// `POST /api/messages/custom`: `{"message": …}` to `custom_messages`.
async fn send_custom(
    State(ctx): State<ApiContext>,
    Json(body): Json<CustomBody>,
) -> Result<Created, ApiError> {
    let message = body
        .message
        .filter(|message| !message.is_null() && message != "")
        .ok_or_else(|| ApiError::bad_field("message", "message is required"))?;
    producer::send(ctx.broker.as_ref(), Outgoing::custom(message)).await?;
    Ok(created(json!({
        "message": "Custom message sent successfully",
        "status": "success",
    })))
}

/// Ours: a custom message to any exchange and routing key, with its options.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MessageBody {
    exchange: Option<String>,
    routing_key: Option<String>,
    message: Value,
    #[serde(default)]
    priority: u8,
    delay_ms: Option<u64>,
    #[serde(default)]
    headers: Headers,
    persistent: Option<bool>,
    /// Wait this long for the consumer's reply (request/reply), at most 30 s.
    wait_ms: Option<u64>,
}

/// The longest `waitMs`: the HTTP request stays open meanwhile.
const MAX_WAIT_MS: u64 = 30_000;

/// `POST /api/messages`: answers the message id once the broker confirmed it; with
/// `waitMs`, also the consumer's reply, or 504 when none came in time.
async fn send_message(
    State(ctx): State<ApiContext>,
    Json(body): Json<MessageBody>,
) -> Result<Created, ApiError> {
    let defaults = Outgoing::custom(body.message);
    let outgoing = Outgoing {
        exchange: body.exchange.unwrap_or(defaults.exchange.clone()),
        routing_key: body.routing_key.unwrap_or(defaults.routing_key.clone()),
        priority: body.priority,
        delay: body.delay_ms.map(Duration::from_millis),
        headers: body.headers,
        persistent: body.persistent.unwrap_or(true),
        ..defaults
    };
    let (exchange, routing_key) = (outgoing.exchange.clone(), outgoing.routing_key.clone());
    let Some(wait_ms) = body.wait_ms else {
        let message_id = producer::send(ctx.broker.as_ref(), outgoing).await?;
        return Ok(created(json!({
            "messageId": message_id,
            "exchange": exchange,
            "routingKey": routing_key,
        })));
    };
    if !(1..=MAX_WAIT_MS).contains(&wait_ms) {
        return Err(ApiError::bad_field("waitMs", "from 1 to 30000"));
    }
    let wait = Duration::from_millis(wait_ms);
    let (message_id, reply) = producer::request(ctx.broker.as_ref(), outgoing, wait).await?;
    let reply = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&reply.body).into_owned()));
    Ok(created(json!({
        "messageId": message_id,
        "exchange": exchange,
        "routingKey": routing_key,
        "reply": reply,
    })))
}

fn created(body: Value) -> Created {
    (StatusCode::CREATED, axum::Json(body))
}

impl From<SendError> for ApiError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::Refused(refused) => {
                ValidationError::new(refused.field, refused.reason).into()
            }
            SendError::Broker(error) => error.into(),
        }
    }
}
