//! The catalog's domain types. Values are parsed once, where they enter the system
//! (HTTP bodies, messages on the wire), so the rest of the code can trust them.

mod catalog;
mod catalog_event;
mod event;
mod game;
pub mod number;
mod outcome;
pub mod text;
mod thumbnail;
pub mod time;

pub use catalog::{GenreDraft, GenreName, PlatformDraft, PlatformName, manufacturer_name};
pub use catalog_event::{
    CatalogEvent, Change, GAME_FAILED_KEY, GAME_PROCESSED_KEY, NotAnEvent, Reference,
    ReferenceChange,
};
pub use event::{
    CustomKind, CustomMessage, EventId, GameAction, GameData, GameEvent, GameProcessed,
    PoisonMessage, WorkMessage, timestamp_now,
};
pub use game::{
    Developer, GameDraft, GameTitle, ImageUrl, ProcessingStatus, ReleaseYear, ValidationError,
    has_credentials, redacted_url, year_category,
};
pub use outcome::Outcome;
pub use thumbnail::Thumbnail;

use serde::Serialize;
use utoipa::ToSchema;

/// A game as the API shows it: the original API's camelCase fields, plus ours.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Game {
    pub id: i64,
    pub title: String,
    pub platform_id: i64,
    pub platform_name: String,
    pub genre_id: i64,
    pub genre_name: String,
    pub developer: String,
    pub release_year: i32,
    pub year_category: String,
    pub description: String,
    pub image_url: Option<String>,
    pub processing_status: ProcessingStatus,
    pub version: i64,
    /// Where the derived thumbnail can be fetched, once processing produced one.
    pub thumbnail_url: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub id: i64,
    pub name: String,
    pub manufacturer: Option<String>,
    pub release_year: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Genre {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
}
