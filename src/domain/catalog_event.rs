//! What `catalog.events` carries: one [`CatalogEvent`] per catalog write or settled
//! processing, with its routing key and its body in the original system's JSON shape.
//!
//! Storage writes these into the outbox with the write that caused them; the live
//! stream and the audit log read them back from the broker.

use super::event::{EventId, GameAction, GameData, GameEvent, GameProcessed, timestamp_now};
use super::{Game, ProcessingStatus};
use serde::{Deserialize, Serialize};

/// Routing key of a version processed successfully.
pub const GAME_PROCESSED_KEY: &str = "game.processed";
/// Routing key of a version whose processing failed for good.
pub const GAME_FAILED_KEY: &str = "game.failed";

/// One event of the catalog.
#[derive(Clone, Debug, PartialEq)]
pub enum CatalogEvent {
    /// A game written: `game.created`, `game.updated` or `game.deleted`.
    GameChanged(GameEvent),
    /// The outcome of processing one version: `game.processed` or `game.failed`.
    GameSettled(GameProcessed),
    /// A platform or genre written: `platform.created`, `genre.deleted`…
    ReferenceChanged(ReferenceChange),
}

/// The reference data games point to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    Platform,
    Genre,
}

impl Reference {
    /// The entity's name, as errors and routing keys spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Genre => "genre",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "platform" => Some(Self::Platform),
            "genre" => Some(Self::Genre),
            _ => None,
        }
    }
}

/// What a write did to a platform or genre.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Updated,
    Deleted,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }
}

/// A platform or genre written: `{"id", "action", "name", "eventId", "timestamp"}`;
/// `name` is null for a deletion. The entity is the routing key's first word.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceChange {
    #[serde(skip, default = "platform")]
    pub entity: Reference,
    pub id: i64,
    pub action: Change,
    pub name: Option<String>,
    pub event_id: EventId,
    pub timestamp: String,
}

fn platform() -> Reference {
    Reference::Platform
}

/// Why a message of `catalog.events` is not a catalog event.
#[derive(Debug, thiserror::Error)]
#[error("not a catalog event on {routing_key:?}: {reason}")]
pub struct NotAnEvent {
    routing_key: String,
    reason: String,
}

impl CatalogEvent {
    /// The event of a write of `game` (its fields as written), in the original
    /// system's format plus `eventId` and `version`.
    pub fn game_changed(game: &Game, action: GameAction, event_id: &EventId) -> Self {
        let game_data = (action != GameAction::Delete).then(|| GameData {
            title: Some(game.title.clone()),
            platform_id: Some(game.platform_id),
            genre_id: Some(game.genre_id),
            developer: Some(game.developer.clone()),
            release_year: Some(game.release_year),
            year_category: Some(game.year_category.clone()),
            description: Some(game.description.clone()),
            image_url: game.image_url.clone(),
        });
        Self::GameChanged(GameEvent {
            game_id: game.id,
            action,
            game_data,
            timestamp: Some(timestamp_now()),
            event_id: Some(event_id.clone()),
            version: Some(game.version),
        })
    }

    /// The outcome of processing `version` of a game, for the event `event_id`.
    pub fn game_settled(
        game_id: i64,
        version: i64,
        status: ProcessingStatus,
        event_id: &EventId,
    ) -> Self {
        Self::GameSettled(GameProcessed {
            game_id,
            version,
            processing_status: status,
            event_id: event_id.clone(),
            timestamp: timestamp_now(),
        })
    }

    /// A platform or genre written; `name` is `None` for a deletion.
    pub fn reference_changed(
        entity: Reference,
        action: Change,
        id: i64,
        name: Option<&str>,
    ) -> Self {
        Self::ReferenceChanged(ReferenceChange {
            entity,
            id,
            action,
            name: name.map(str::to_owned),
            event_id: EventId::generate(),
            timestamp: timestamp_now(),
        })
    }

    /// The routing key on `catalog.events`.
    pub fn routing_key(&self) -> String {
        match self {
            Self::GameChanged(event) => event.action.routing_key().to_owned(),
            Self::GameSettled(settled) if settled.processing_status == ProcessingStatus::Failed => {
                GAME_FAILED_KEY.to_owned()
            }
            Self::GameSettled(_) => GAME_PROCESSED_KEY.to_owned(),
            Self::ReferenceChanged(change) => {
                format!("{}.{}", change.entity.as_str(), change.action.as_str())
            }
        }
    }

    /// The message id it is sent with: the event's own id. A settlement's body names
    /// the event it settles, so it has none of its own: `None`.
    pub fn message_id(&self) -> Option<&EventId> {
        match self {
            Self::GameChanged(event) => event.event_id.as_ref(),
            Self::GameSettled(_) => None,
            Self::ReferenceChanged(change) => Some(&change.event_id),
        }
    }

    /// The body, as JSON.
    pub fn encode(&self) -> Vec<u8> {
        let encoded = match self {
            Self::GameChanged(event) => return event.encode(),
            Self::GameSettled(settled) => serde_json::to_vec(settled),
            Self::ReferenceChanged(change) => serde_json::to_vec(change),
        };
        encoded.expect("a catalog event always serializes")
    }

    /// Reads a message of `catalog.events` by its routing key; `message_id` is the
    /// AMQP property, for a game event whose body carries no `eventId`.
    pub fn decode(
        routing_key: &str,
        body: &[u8],
        message_id: Option<&str>,
    ) -> Result<Self, NotAnEvent> {
        let refused = |reason: String| NotAnEvent {
            routing_key: routing_key.to_owned(),
            reason,
        };
        if routing_key == GAME_PROCESSED_KEY || routing_key == GAME_FAILED_KEY {
            let settled = serde_json::from_slice(body).map_err(|e| refused(e.to_string()))?;
            return Ok(Self::GameSettled(settled));
        }
        if routing_key.starts_with("game.") {
            let event = GameEvent::decode(body, message_id).map_err(|e| refused(e.0))?;
            return Ok(Self::GameChanged(event));
        }
        let entity = routing_key
            .split_once('.')
            .and_then(|(entity, _)| Reference::parse(entity))
            .ok_or_else(|| refused("an unknown routing key".into()))?;
        let change: ReferenceChange =
            serde_json::from_slice(body).map_err(|e| refused(e.to_string()))?;
        Ok(Self::ReferenceChanged(ReferenceChange { entity, ..change }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn decoded(event: &CatalogEvent) -> CatalogEvent {
        let id = event.message_id().map(EventId::as_str);
        CatalogEvent::decode(&event.routing_key(), &event.encode(), id).unwrap()
    }

    #[test]
    fn every_kind_of_event_decodes_to_itself_from_its_routing_key() {
        let settled = |status| CatalogEvent::game_settled(7, 3, status, &EventId::new("e-1"));
        for event in [
            settled(ProcessingStatus::Completed),
            settled(ProcessingStatus::Failed),
            CatalogEvent::reference_changed(Reference::Genre, Change::Created, 4, Some("Rhythm")),
            CatalogEvent::reference_changed(Reference::Platform, Change::Deleted, 9, None),
        ] {
            assert_eq!(decoded(&event), event, "{}", event.routing_key());
        }
    }

    #[test]
    fn events_keep_the_routing_keys_and_bodies_consumers_read() {
        let failed =
            CatalogEvent::game_settled(7, 3, ProcessingStatus::Failed, &EventId::new("e-1"));
        assert_eq!(failed.routing_key(), "game.failed");
        let body: Value = serde_json::from_slice(&failed.encode()).unwrap();
        assert_eq!(body["gameId"], 7);
        assert_eq!(body["processingStatus"], "failed");
        assert_eq!(body["eventId"], "e-1");

        let deleted =
            CatalogEvent::reference_changed(Reference::Platform, Change::Deleted, 9, None);
        assert_eq!(deleted.routing_key(), "platform.deleted");
        let body: Value = serde_json::from_slice(&deleted.encode()).unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["action", "eventId", "id", "name", "timestamp"]);
        assert_eq!(body["action"], "deleted");
        assert_eq!(body["name"], json!(null));
        assert_eq!(
            Some(body["eventId"].as_str().unwrap()),
            deleted.message_id().map(EventId::as_str)
        );
    }

    #[test]
    fn a_message_of_another_kind_is_refused_with_its_routing_key() {
        let error = CatalogEvent::decode("tape.rewound", b"{}", None).unwrap_err();
        assert!(error.to_string().contains("tape.rewound"), "{error}");
        let error = CatalogEvent::decode("game.processed", b"[]", None).unwrap_err();
        assert!(error.to_string().contains("game.processed"), "{error}");
    }
}
