//! Game events, in the original system's wire format.
//!
//! The original backend published `{"gameId", "action", "gameData", "timestamp"}` and its
//! consumer read exactly that; we add `eventId` and `version`, which old consumers ignore.
//! Decoding is lenient where the original was (no `eventId`, no `version`, no
//! `timestamp`), and strict where processing depends on it (`gameId`, `action`).

use super::number::optional_whole_number;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Identifies one event across redeliveries: the inbox records it once processed.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    /// A new, time-ordered id for an event we create.
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }

    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// An id for a message that arrived without one (the original producer set none):
    /// a digest of the body, so a redelivery of the same message maps to the same id.
    pub fn from_body(body: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(body);
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("sha256:{hex}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GameAction {
    Create,
    Update,
    Delete,
    /// The original producer's "process this game again".
    Process,
}

impl GameAction {
    /// The routing key on `catalog.events`.
    pub fn routing_key(self) -> &'static str {
        match self {
            Self::Create => "game.created",
            Self::Update | Self::Process => "game.updated",
            Self::Delete => "game.deleted",
        }
    }
}

/// The game's fields as the original event carried them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GameData {
    pub title: Option<String>,
    #[serde(default, deserialize_with = "optional_whole_number")]
    pub platform_id: Option<i64>,
    #[serde(default, deserialize_with = "optional_whole_number")]
    pub genre_id: Option<i64>,
    pub developer: Option<String>,
    #[serde(default, deserialize_with = "optional_whole_number")]
    pub release_year: Option<i32>,
    pub year_category: Option<String>,
    pub description: Option<String>,
    pub image_url: Option<String>,
}

/// One change to a game, as it travels through `game_events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GameEvent {
    pub game_id: i64,
    pub action: GameAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub game_data: Option<GameData>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    /// The game's version this event describes; absent in the original's messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

/// Why a message cannot be processed at all: it goes to the dead-letter queue with this
/// reason rather than being retried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PoisonMessage(pub String);

impl GameEvent {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a GameEvent always serializes")
    }

    /// Parses a message body; `message_id` is the AMQP property, used when the body
    /// carries no `eventId`.
    pub fn decode(body: &[u8], message_id: Option<&str>) -> Result<Self, PoisonMessage> {
        let mut event: Self = serde_json::from_slice(body).map_err(|e| {
            PoisonMessage(format!("not a game event ({e}); expected {{\"gameId\": number, \"action\": \"create|update|delete|process\", ...}}"))
        })?;
        if event.game_id <= 0 {
            return Err(PoisonMessage(format!(
                "gameId must be a positive integer, got {}",
                event.game_id
            )));
        }
        if event.event_id.is_none() {
            event.event_id = Some(match message_id {
                Some(id) if !id.is_empty() => EventId::new(id),
                _ => EventId::from_body(body),
            });
        }
        Ok(event)
    }

    /// The event id: always present on a decoded or freshly built event.
    pub fn id(&self) -> EventId {
        self.event_id
            .clone()
            .unwrap_or_else(|| EventId::from_body(&self.encode()))
    }
}

/// A custom message, in the original producer's format:
/// `{"type": "custom", "message": …, "timestamp": "…"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CustomMessage {
    #[serde(rename = "type")]
    pub kind: CustomKind,
    /// Whatever the sender wrote: text or any JSON value.
    pub message: serde_json::Value,
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// The `type` tag of a [`CustomMessage`]: always `"custom"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CustomKind {
    Custom,
}

/// What may arrive on `game_events`: game events, ours or the original producer's, and
/// the custom messages the original producer sent to the same queue.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkMessage {
    Game(GameEvent),
    Custom(CustomMessage),
}

impl WorkMessage {
    /// Parses a delivery's body. Game events, the hot path, are tried first; only a body
    /// that is not one pays for the second parse.
    pub fn decode(body: &[u8], message_id: Option<&str>) -> Result<Self, PoisonMessage> {
        GameEvent::decode(body, message_id)
            .map(Self::Game)
            .or_else(|poison| {
                serde_json::from_slice(body)
                    .map(Self::Custom)
                    .map_err(|_| poison)
            })
    }
}

/// The outcome of processing one version of a game (`game.processed` / `game.failed`):
/// what the live stream and the audit log show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GameProcessed {
    pub game_id: i64,
    pub version: i64,
    pub processing_status: crate::domain::ProcessingStatus,
    /// The event whose processing produced this result.
    pub event_id: EventId,
    pub timestamp: String,
}

/// Now, as the original system wrote timestamps (JavaScript's `toISOString`).
pub fn timestamp_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_original_systems_message() {
        let body = br#"{"gameId":42,"action":"create","gameData":{"title":"Tetris","platformId":4,"genreId":6,"developer":"Nintendo","releaseYear":1989,"yearCategory":"1980s","description":"Blocks","imageUrl":null},"timestamp":"2024-05-01T10:00:00.000Z"}"#;
        let event = GameEvent::decode(body, None).unwrap();
        assert_eq!(event.game_id, 42);
        assert_eq!(event.action, GameAction::Create);
        assert_eq!(event.game_data.unwrap().title.as_deref(), Some("Tetris"));
        assert_eq!(event.version, None);
        // Same body, same id: a redelivery is recognised by the inbox.
        assert_eq!(
            GameEvent::decode(body, None).unwrap().event_id,
            GameEvent::decode(body, None).unwrap().event_id
        );
    }

    #[test]
    fn the_message_id_property_names_an_event_without_event_id() {
        let event = GameEvent::decode(br#"{"gameId":1,"action":"delete"}"#, Some("m-1")).unwrap();
        assert_eq!(event.event_id, Some(EventId::new("m-1")));
    }

    #[test]
    fn poison_messages_are_refused_with_a_reason() {
        for body in [
            &b"not json"[..],
            br#"{"action":"create"}"#,
            br#"{"gameId":1,"action":"explode"}"#,
            br#"{"gameId":-3,"action":"create"}"#,
        ] {
            assert!(GameEvent::decode(body, None).is_err(), "{body:?}");
        }
    }

    #[test]
    fn the_original_producers_custom_message_is_told_apart_from_game_events() {
        let body = br#"{"type":"custom","message":"hello","timestamp":"2024-05-01T10:00:00.000Z"}"#;
        match WorkMessage::decode(body, None).unwrap() {
            WorkMessage::Custom(custom) => assert_eq!(custom.message, "hello"),
            other => panic!("expected a custom message, got {other:?}"),
        }
        let event = br#"{"gameId":1,"action":"create"}"#;
        assert!(matches!(
            WorkMessage::decode(event, None),
            Ok(WorkMessage::Game(_))
        ));
        // Neither: the game event's reason is the one reported.
        let poison = WorkMessage::decode(br#"{"type":"other"}"#, None).unwrap_err();
        assert!(poison.0.contains("gameId"), "{poison}");
    }

    #[test]
    fn delete_events_carry_no_game_data() {
        let event = GameEvent {
            game_id: 7,
            action: GameAction::Delete,
            game_data: None,
            timestamp: Some("t".into()),
            event_id: Some(EventId::new("e")),
            version: Some(3),
        };
        let json: serde_json::Value = serde_json::from_slice(&event.encode()).unwrap();
        assert!(json.get("gameData").is_none());
        assert_eq!(json["gameId"], 7);
        assert_eq!(json["action"], "delete");
    }

    mod properties {
        use super::*;
        use crate::hostile::{self, json_value, nasty_string};
        use proptest::collection::vec;
        use proptest::option;
        use proptest::prelude::*;

        const EVENT_KEYS: &[&str] = &[
            "gameId",
            "action",
            "gameData",
            "timestamp",
            "eventId",
            "version",
        ];

        fn game_data() -> impl Strategy<Value = GameData> {
            let text = || option::of(nasty_string());
            (
                (text(), option::of(any::<i64>()), option::of(any::<i64>())),
                (text(), option::of(any::<i32>()), text(), text(), text()),
            )
                .prop_map(
                    |(
                        (title, platform_id, genre_id),
                        (developer, release_year, year_category, description, image_url),
                    )| GameData {
                        title,
                        platform_id,
                        genre_id,
                        developer,
                        release_year,
                        year_category,
                        description,
                        image_url,
                    },
                )
        }

        /// A valid event, as our own producer or the original's could send it.
        fn game_event() -> impl Strategy<Value = GameEvent> {
            (
                1..=i64::MAX,
                prop::sample::select(
                    &[
                        GameAction::Create,
                        GameAction::Update,
                        GameAction::Delete,
                        GameAction::Process,
                    ][..],
                ),
                option::of(game_data()),
                option::of(nasty_string()),
                option::of(nasty_string().prop_map(EventId::new)),
                option::of(any::<i64>()),
            )
                .prop_map(
                    |(game_id, action, game_data, timestamp, event_id, version)| GameEvent {
                        game_id,
                        action,
                        game_data,
                        timestamp,
                        event_id,
                        version,
                    },
                )
        }

        /// What decoding `body` must give: an event the worker can process (a positive
        /// game id, an event id) that encodes back to itself, or a reason; and for a
        /// delivery on `game_events`, a custom message only when it is no game event.
        fn check(body: &[u8], message_id: Option<&str>) -> Result<(), TestCaseError> {
            let decoded = GameEvent::decode(body, message_id);
            match &decoded {
                Ok(event) => {
                    prop_assert!(event.game_id > 0, "{event:?}");
                    prop_assert!(event.event_id.is_some(), "{event:?}");
                    prop_assert_eq!(GameEvent::decode(&event.encode(), None), Ok(event.clone()));
                }
                Err(poison) => prop_assert!(!poison.0.is_empty()),
            }
            match (WorkMessage::decode(body, message_id), decoded) {
                (Ok(WorkMessage::Game(work)), Ok(event)) => prop_assert_eq!(work, event),
                (Ok(WorkMessage::Custom(custom)), Err(_)) => {
                    prop_assert_eq!(custom.kind, CustomKind::Custom)
                }
                (Err(work), Err(poison)) => prop_assert_eq!(work, poison),
                (work, event) => prop_assert!(false, "{work:?} but {event:?}"),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(hostile::config(512))]

            #[test]
            fn arbitrary_bytes_decode_or_give_a_reason(
                body in vec(any::<u8>(), 0..256),
                message_id in option::of(nasty_string()),
            ) {
                check(&body, message_id.as_deref())?;
            }

            /// JSON, mostly shaped like an event, with hostile values in its fields.
            #[test]
            fn arbitrary_json_decodes_or_gives_a_reason(
                value in prop_oneof![json_value(), hostile::object_of(EVENT_KEYS, json_value())],
                message_id in option::of(nasty_string()),
            ) {
                check(&serde_json::to_vec(&value).unwrap(), message_id.as_deref())?;
            }

            #[test]
            fn an_encoded_event_decodes_to_itself(event in game_event()) {
                let body = event.encode();
                let expected = GameEvent {
                    event_id: event.event_id.clone().or(Some(EventId::from_body(&body))),
                    ..event.clone()
                };
                prop_assert_eq!(GameEvent::decode(&body, None), Ok(expected.clone()));
                prop_assert_eq!(
                    WorkMessage::decode(&body, None),
                    Ok(WorkMessage::Game(expected))
                );
                let named = GameEvent::decode(&body, Some("m-1")).unwrap();
                prop_assert_eq!(
                    named.event_id,
                    event.event_id.or(Some(EventId::new("m-1")))
                );
            }

            /// The original producer's custom message, whatever it carries, is told
            /// apart from game events and arrives as it was sent.
            #[test]
            fn an_encoded_custom_message_decodes_to_itself(
                message in json_value(),
                timestamp in option::of(nasty_string()),
            ) {
                let custom = CustomMessage { kind: CustomKind::Custom, message, timestamp };
                let body = serde_json::to_vec(&custom).unwrap();
                prop_assert_eq!(WorkMessage::decode(&body, None), Ok(WorkMessage::Custom(custom)));
            }
        }
    }
}
