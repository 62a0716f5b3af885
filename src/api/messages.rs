//! The producer's routes: the original message-producer's two (it ran on port 3001;
//! here they share the API's port), which send where the original sent, and ours, which
//! reaches the exchanges `--publish-exchanges` lists ([`producer::PublishPolicy`]).

use super::ApiContext;
use super::auth::gate::Admin;
use super::error::ApiError;
use super::extract::Json;
use crate::broker::Headers;
use crate::domain::number::{optional_whole_number, whole_number};
use crate::domain::{GameAction, GameData, GameEvent, ValidationError, timestamp_now};
use crate::producer::{self, Outgoing, PublishPolicy, SendError};
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The parsers of what a stranger sends here, for the cargo-fuzz targets (`fuzz/`).
#[cfg(fuzzing)]
pub(super) mod fuzz {
    use super::{GameEventBody, MessageBody};
    use crate::api::extract::decode_json;
    use crate::producer::PublishPolicy;

    /// The bodies of `POST /api/messages/game-event` and `POST /api/messages`.
    pub fn message_bodies(body: &[u8]) {
        let _ = decode_json::<GameEventBody>(body).and_then(GameEventBody::event);
        let _ = decode_json::<MessageBody>(body)
            .and_then(|message| message.admit(&PublishPolicy::default()));
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(send_message))
        .routes(routes!(send_game_event))
        .routes(routes!(send_custom))
}

type Created = (StatusCode, axum::Json<Value>);

/// The original producer's body: `gameId` and `action` required, `gameData` optional.
/// Other fields are ignored, as the original producer ignored them.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct GameEventBody {
    #[serde(default, deserialize_with = "optional_whole_number")]
    #[schema(value_type = i64, required = true, minimum = 1)]
    game_id: Option<i64>,
    #[schema(value_type = GameAction, required = true)]
    action: Option<GameAction>,
    game_data: Option<GameData>,
}

impl GameEventBody {
    /// The event to send, as the original producer built it; or why not.
    fn event(self) -> Result<GameEvent, ApiError> {
        let (Some(game_id), Some(action)) = (self.game_id, self.action) else {
            return Err(ApiError::bad_field(
                if self.game_id.is_none() {
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
        Ok(GameEvent {
            game_id,
            action,
            game_data: Some(self.game_data.unwrap_or_default()),
            timestamp: Some(timestamp_now()),
            event_id: None,
            version: None,
        })
    }
}

/// Send a game event
///
/// A game event straight to `game_events`, answered as the original producer answered.
#[utoipa::path(post, path = "/api/messages/game-event", tag = "messages",
    security(("bearer" = [])),
    request_body = GameEventBody,
    responses(
        (status = 201, description = "Sent: the broker has confirmed it", body = Object),
        (status = 422, description = "`gameId` is not a positive integer"),
    ))]
async fn send_game_event(
    _: Admin,
    State(ctx): State<ApiContext>,
    Json(body): Json<GameEventBody>,
) -> Result<Created, ApiError> {
    let event = body.event()?;
    let (game_id, action) = (event.game_id, event.action);
    producer::send_game_event(ctx.broker.as_ref(), event).await?;
    Ok(created(json!({
        "message": "Game event message sent successfully",
        "gameId": game_id,
        "action": action,
        "status": "success",
    })))
}

/// Other fields are ignored, as the original producer ignored them.
#[derive(Deserialize, ToSchema)]
struct CustomBody {
    #[schema(schema_with = some_message, required = true)]
    message: Option<Value>,
}

/// Any JSON value but `null`.
fn not_null() -> Schema {
    let any = vec![
        Type::Object,
        Type::Array,
        Type::Boolean,
        Type::Number,
        Type::String,
    ];
    ObjectBuilder::new()
        .schema_type(SchemaType::Array(any))
        .into()
}

/// Any JSON value but `null` and the empty string.
fn some_message() -> Schema {
    let not_text = SchemaType::Array(vec![Type::Object, Type::Array, Type::Boolean, Type::Number]);
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(not_text))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1)),
        )
        .description(Some("Any JSON value but null and the empty string"))
        .into()
}

/// Send a custom message
///
/// `{"message": …}` to `custom_messages`, in the original producer's envelope.
#[utoipa::path(post, path = "/api/messages/custom", tag = "messages",
    security(("bearer" = [])),
    request_body = CustomBody,
    responses((status = 201, description = "Sent: the broker has confirmed it", body = Object)))]
async fn send_custom(
    _: Admin,
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
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MessageBody {
    /// `catalog.custom` by default; one of the server's `--publish-exchanges`
    /// (`catalog.custom` unless configured). `""` is the default exchange, which routes
    /// by queue name, never into retrocat's own queues. At most 255 bytes.
    #[schema(max_length = 255)]
    exchange: Option<String>,
    /// `custom.message` by default. At most 255 bytes.
    #[schema(max_length = 255)]
    routing_key: Option<String>,
    /// The message, sent in the original producer's envelope: any JSON value but null.
    #[schema(schema_with = not_null)]
    message: Value,
    /// 0 (the default) to 10: higher is delivered first from a priority queue.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(maximum = 10)]
    priority: u8,
    /// Deliver after this many milliseconds, at most 24 hours.
    #[serde(default, deserialize_with = "optional_whole_number")]
    #[schema(maximum = 86_400_000)]
    delay_ms: Option<u64>,
    /// AMQP headers: strings, integers or booleans. Those retrocat and the broker set
    /// (`x-dead-letter-*`, `x-retry-count`, `x-replay-count`, `x-encryption`,
    /// `x-key-id`, `x-unopenable`, `x-death`, in any case) are refused.
    #[serde(default)]
    #[schema(value_type = HashMap<String, crate::broker::HeaderValue>)]
    headers: Headers,
    /// Whether the message survives a broker restart (`true` by default).
    persistent: Option<bool>,
    /// Wait this long for the consumer's reply (request/reply), at most 30 s.
    #[serde(default, deserialize_with = "optional_whole_number")]
    #[schema(minimum = 1, maximum = 30_000)]
    wait_ms: Option<u64>,
}

/// The longest `waitMs`: the HTTP request stays open meanwhile.
const MAX_WAIT_MS: u64 = 30_000;

impl MessageBody {
    /// The message as `policy` admits it, and how long to wait for its reply; or why
    /// not. [`producer::send`] still checks the limits AMQP sets.
    fn admit(self, policy: &PublishPolicy) -> Result<(Outgoing, Option<Duration>), ApiError> {
        let defaults = Outgoing::custom(self.message);
        let outgoing = Outgoing {
            exchange: self.exchange.unwrap_or(defaults.exchange.clone()),
            routing_key: self.routing_key.unwrap_or(defaults.routing_key.clone()),
            priority: self.priority,
            delay: self.delay_ms.map(Duration::from_millis),
            headers: self.headers,
            persistent: self.persistent.unwrap_or(true),
            ..defaults
        };
        let outgoing = policy.admit(outgoing)?;
        let wait = match self.wait_ms {
            None => None,
            Some(wait_ms) if (1..=MAX_WAIT_MS).contains(&wait_ms) => {
                Some(Duration::from_millis(wait_ms))
            }
            Some(_) => return Err(ApiError::bad_field("waitMs", "from 1 to 30000")),
        };
        Ok((outgoing, wait))
    }
}

/// Send a message
///
/// To an exchange the server allows (`--publish-exchanges`, `catalog.custom` by
/// default) and any routing key. Answers the message id once the broker has confirmed
/// it; with `waitMs`, also the consumer's reply, or 504 when none came in time.
#[utoipa::path(post, path = "/api/messages", tag = "messages",
    security(("bearer" = [])),
    request_body = MessageBody,
    responses(
        (status = 201, description = "Sent, and answered when `waitMs` was given",
            body = Object),
        (status = 400, description = "The body is malformed, or names a header reserved \
            for retrocat and the broker (`x-dead-letter-*`, `x-retry-count`, \
            `x-replay-count`, `x-encryption`, `x-key-id`, `x-unopenable`, `x-death`): \
            the answer names it"),
        (status = 404, description = "No such exchange"),
        (status = 422, description = "A field is refused: among them an exchange the \
            server does not allow (the answer lists those it does), or the default \
            exchange straight into one of retrocat's queues"),
        (status = 504, description = "No reply within `waitMs`"),
    ))]
async fn send_message(
    _: Admin,
    State(ctx): State<ApiContext>,
    Json(body): Json<MessageBody>,
) -> Result<Created, ApiError> {
    let (outgoing, wait) = body.admit(&ctx.publish_policy)?;
    let (exchange, routing_key) = (outgoing.exchange.clone(), outgoing.routing_key.clone());
    let Some(wait) = wait else {
        let message_id = producer::send(ctx.broker.as_ref(), outgoing).await?;
        return Ok(created(json!({
            "messageId": message_id,
            "exchange": exchange,
            "routingKey": routing_key,
        })));
    };
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
                // The producer's `delay` is the body's `delayMs`; its other names match.
                let field = match refused.field {
                    "delay" => "delayMs",
                    field => field,
                };
                ValidationError::new(field, refused.reason).into()
            }
            SendError::ReservedHeaders(names) => {
                ApiError::bad_field("headers", producer::reserved_reason(&names))
            }
            SendError::Broker(error) => error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::decode_json;
    use crate::broker::headers;
    use crate::hostile::{
        self, check_refused_body, json_value, nasty_number, nasty_string, object_of,
    };
    use proptest::prelude::*;

    const GAME_EVENT_FIELDS: &[&str] = &["gameId", "action", "gameData"];
    const MESSAGE_FIELDS: &[&str] = &[
        "exchange",
        "routingKey",
        "message",
        "priority",
        "delayMs",
        "headers",
        "persistent",
        "waitMs",
    ];

    fn field_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => nasty_string().prop_map(Value::String),
            3 => nasty_number().prop_map(Value::Number),
            1 => prop::sample::select(&["create", "delete", "process", "catalog.custom"][..])
                .prop_map(Value::from),
            1 => Just(json!({"x-origin": "test", "X-Retry-Count": 1})),
            2 => json_value(),
        ]
    }

    fn body() -> impl Strategy<Value = Value> {
        prop_oneof![
            json_value(),
            object_of(GAME_EVENT_FIELDS, field_value()),
            object_of(MESSAGE_FIELDS, field_value()),
        ]
    }

    /// A delay past 24 hours is refused naming the body's `delayMs`, not the
    /// producer's `delay`, which no body has.
    #[test]
    fn a_refused_delay_names_delay_ms() {
        let body = json!({"message": "x", "delayMs": 90_000_000});
        let (outgoing, _) = decode_json::<MessageBody>(body.to_string().as_bytes())
            .and_then(|message| message.admit(&PublishPolicy::default()))
            .unwrap();
        let refused = ApiError::from(SendError::Refused(outgoing.validate().unwrap_err()));
        match refused {
            ApiError::Unprocessable { errors, .. } => assert_eq!(errors[0].field, "delayMs"),
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(hostile::config(512))]

        /// What `POST /api/messages/game-event` sends is an event the worker decodes
        /// back to the same.
        #[test]
        fn a_game_event_body_gives_an_event_the_worker_reads_or_names_the_field(body in body()) {
            match decode_json::<GameEventBody>(&serde_json::to_vec(&body).unwrap())
                .and_then(GameEventBody::event)
            {
                Ok(event) => {
                    prop_assert!(event.game_id > 0);
                    let decoded = GameEvent::decode(&event.encode(), None).unwrap();
                    prop_assert_eq!(GameEvent { event_id: None, ..decoded }, event);
                }
                Err(error) => check_refused_body(&error, &body, GAME_EVENT_FIELDS)?,
            }
        }

        /// What `POST /api/messages` admits goes where the policy allows, with no
        /// reserved header and a wait within bounds; a refusal names the field.
        #[test]
        fn a_message_body_is_admitted_within_bounds_or_names_the_field(body in body()) {
            let policy = PublishPolicy::new(["catalog.custom", "amq.default"]);
            match decode_json::<MessageBody>(&serde_json::to_vec(&body).unwrap())
                .and_then(|message| message.admit(&policy))
            {
                Ok((outgoing, wait)) => {
                    prop_assert!(["catalog.custom", ""].contains(&outgoing.exchange.as_str()));
                    prop_assert!(!outgoing.headers.keys().any(|name| headers::is_reserved(name)));
                    let bounded = |wait: Duration| (1..=MAX_WAIT_MS).contains(&(wait.as_millis() as u64));
                    prop_assert!(wait.is_none_or(bounded), "{wait:?}");
                    // Checked again as it is sent: refused there, it names a field too.
                    if let Err(refused) = outgoing.validate() {
                        let error = ApiError::from(SendError::Refused(refused));
                        check_refused_body(&error, &body, MESSAGE_FIELDS)?;
                    }
                }
                Err(error) => check_refused_body(&error, &body, MESSAGE_FIELDS)?,
            }
        }

        #[test]
        fn a_custom_body_decodes_or_names_the_field(body in body()) {
            if let Err(error) = decode_json::<CustomBody>(&serde_json::to_vec(&body).unwrap()) {
                check_refused_body(&error, &body, &["message"])?;
            }
        }
    }
}
