//! The catalog database, behind the [`Store`] trait.
//!
//! Every catalog write commits its event to the *outbox* in the same transaction, so the
//! catalog and the event stream can never disagree: a write without its event, or an
//! event without its write, is impossible. Processing results commit together with the
//! *inbox* row of the event they answer, so a redelivered event cannot apply twice.
//!
//! SQLite is the embedded default; PostgreSQL and MySQL/MariaDB are the database servers
//! for several API instances. The SQL is written once (`sql`, with the row mapping and
//! cursors in `shared`); each backend file holds only its dialect: how transactions
//! start, its error codes, its migrations, and what its SQL spells differently.

pub mod accounts;
mod direct;
mod game_stream;
pub mod mysql;
pub mod postgres;
mod retention;
mod shared;
mod sql;
pub mod sqlite;
mod writer;

use crate::broker::Headers;
use crate::domain::{
    EventId, Game, GameDraft, Genre, GenreDraft, Platform, PlatformDraft, ProcessingStatus,
};
use crate::processing::thumbnail::Thumbnail;
pub use accounts::Accounts;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

pub use game_stream::GameBatches;
pub use retention::PruneReport;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: i64 },
    /// A foreign key names a row that does not exist (`platformId`, `genreId`).
    #[error("{field}: no such {entity} {id}")]
    UnknownReference {
        field: &'static str,
        entity: &'static str,
        id: i64,
    },
    /// A uniqueness or reference rule refuses the write (e.g. deleting a used platform).
    #[error("{0}")]
    Conflict(String),
    #[error("cursor: not a cursor this server issued for this sort order")]
    InvalidCursor,
    /// The database cannot be reached now; the request may be retried.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A read of SQLite's on the calling thread failed (see `direct`).
    #[error("reading the catalog: {0}")]
    DirectRead(#[from] rusqlite::Error),
    /// A group-committed write's batch panicked (a bug); nothing of it was written.
    #[error(transparent)]
    Panicked(#[from] crate::processing::group_commit::Panicked),
}

/// A game to create, with the id its `game.created` event will carry.
pub struct NewGame {
    pub draft: GameDraft,
    pub event: EventId,
    /// The W3C `traceparent` of the request that wrote it, sent with its event.
    pub trace: Option<String>,
}

/// A game's new fields, with the id its `game.updated` event will carry.
pub struct GameUpdate {
    pub id: i64,
    pub draft: GameDraft,
    pub event: EventId,
    /// The W3C `traceparent` of the request that wrote it, sent with its event.
    pub trace: Option<String>,
}

/// `url` with its password masked, for messages and logs: a MySQL or PostgreSQL
/// `DATABASE_URL` often carries one. A URL that does not parse is not shown at all.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(a URL that does not parse)".into(),
    }
}

/// Connection pool limits (`--db-max-connections`, `--db-acquire-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Connections open at most; `None`: the backend's default (8 for SQLite, one
    /// writer at a time; 16 for a database server).
    pub max_connections: Option<u32>,
    /// How long a request waits for a free connection before it fails with 503: while
    /// the database is down or saturated, clients hear so in seconds instead of
    /// queueing behind a pool that cannot connect.
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// The group-committed writes, each batched by a group commit of its own
/// (`processing::group_commit`): see [`Store::begin_turn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteKind {
    Creates,
    Updates,
    Starts,
    Finishes,
}

/// A batch's turn at the writer ([`Store::begin_turn`]): when dropped, it ends the
/// turn's transaction if no write took it, so that the writer is never held by a batch
/// that panicked before writing.
#[derive(Default)]
pub struct Turn(Option<Box<dyn FnOnce() + Send>>);

impl Turn {
    pub(crate) fn ending_with(end: impl FnOnce() + Send + 'static) -> Self {
        Self(Some(Box::new(end)))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(end) = self.0.take() {
            end();
        }
    }
}

/// Sort orders of `GET /api/games`; `-` means descending. The original sorted by title.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GameSort {
    #[default]
    Title,
    TitleDesc,
    ReleaseYear,
    ReleaseYearDesc,
    CreatedAt,
    CreatedAtDesc,
}

impl GameSort {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "title" => Self::Title,
            "-title" => Self::TitleDesc,
            "releaseYear" => Self::ReleaseYear,
            "-releaseYear" => Self::ReleaseYearDesc,
            "createdAt" => Self::CreatedAt,
            "-createdAt" => Self::CreatedAtDesc,
            _ => return None,
        })
    }

    pub const NAMES: &'static str =
        "title, -title, releaseYear, -releaseYear, createdAt, -createdAt";
}

/// Filters of `GET /api/games`, already validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GameQuery {
    /// Substring of the title or the developer, case-insensitive.
    pub search: Option<String>,
    pub platform_id: Option<i64>,
    pub genre_id: Option<i64>,
    pub year_category: Option<String>,
    pub status: Option<ProcessingStatus>,
    pub sort: GameSort,
    /// `None`: every matching game, as the original answered.
    pub page: Option<PageRequest>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// 1..=[`PageRequest::MAX_LIMIT`].
    pub limit: u32,
    /// Opaque, from a previous page's `nextCursor`; keyset pagination, so deep pages
    /// cost the same as the first.
    pub cursor: Option<String>,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 500;
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GamePage {
    pub items: Vec<Game>,
    pub next_cursor: Option<String>,
}

/// An uploaded cover image.
#[derive(Clone, Debug, PartialEq)]
pub struct Cover {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// One game still waiting for processing, in the original's `/api/processing` shape.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PendingGame {
    pub id: i64,
    pub title: String,
    pub processing_status: ProcessingStatus,
}

/// How many games stand at each processing status (`GET /api/tasks/counts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StatusCounts {
    pub pending: u64,
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
}

impl StatusCounts {
    pub fn add(&mut self, status: ProcessingStatus, count: u64) {
        let slot = match status {
            ProcessingStatus::Pending => &mut self.pending,
            ProcessingStatus::Processing => &mut self.processing,
            ProcessingStatus::Completed => &mut self.completed,
            ProcessingStatus::Failed => &mut self.failed,
        };
        *slot += count;
    }
}

/// A game's processing at a glance (`GET /api/tasks`).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub game_id: i64,
    pub title: String,
    pub processing_status: ProcessingStatus,
    pub version: i64,
    /// Processing attempts recorded for the game's current version.
    pub attempts: i64,
    pub last_error: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

/// A message as a subscriber received it: an entry of the audit log, or a custom
/// message the custom-message consumer took.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedMessage {
    pub subscriber: String,
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    #[schema(value_type = HashMap<String, crate::broker::HeaderValue>)]
    pub headers: crate::broker::Headers,
    /// The body as JSON; a body that is not JSON is shown as a string.
    pub body: serde_json::Value,
    pub received_at: DateTime<Utc>,
}

/// How one processing attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Completed,
    /// Failed, will be retried after a backoff.
    Retry,
    /// Failed for good: the event is dead-lettered.
    Failed,
    /// Nothing to do: the event was for an older version or a deleted game.
    Skipped,
}

/// One processing attempt (`GET /api/games/{id}/history`).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub event_id: String,
    pub version: i64,
    pub attempt: i64,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: i64,
    /// The worker that made the attempt (`--worker-id`); absent for older rows.
    pub worker: Option<String>,
    /// The trace the attempt belongs to: its event's HTTP request's, or its own when
    /// the message came without `traceparent`.
    pub trace_id: Option<String>,
}

/// What a worker needs to process one version of a game.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkItem {
    pub game_id: i64,
    pub version: i64,
    pub title: String,
    pub image_url: Option<String>,
    pub has_cover: bool,
}

/// A worker's request to start processing one event.
#[derive(Clone, Debug)]
pub struct StartRequest {
    pub event_id: EventId,
    pub game_id: i64,
    /// The version the event describes; `None` (`process`: again) takes the current one.
    pub version: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StartOutcome {
    /// The inbox holds the event: it was processed already, nothing to do.
    Processed,
    /// The game is now `processing` at this version.
    Ready(WorkItem),
    /// A newer version exists; its own event will process it.
    Stale { current_version: i64 },
    /// The game was deleted.
    Missing,
    /// This version is `completed` already: another copy of its event (a redelivery, or
    /// the request of `POST /api/games?wait=`) got there first. Starting again would
    /// turn a finished game back to `processing`.
    Done,
}

/// The result of processing one event, recorded in one transaction.
#[derive(Clone, Debug)]
pub struct ProcessingRecord {
    pub event_id: EventId,
    pub game_id: i64,
    pub version: i64,
    /// 1 for the first delivery, then 2, 3, … across retries.
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub result: ProcessingResult,
    /// The worker that made the attempt.
    pub worker: String,
    /// The attempt's trace id (see [`Attempt::trace_id`]).
    pub trace_id: Option<String>,
}

#[derive(Clone, Debug)]
pub enum ProcessingResult {
    /// Store the thumbnail (if any), mark `completed`, publish `game.processed`.
    Completed { thumbnail: Option<Thumbnail> },
    /// Record the failed attempt only; the event will be delivered again later.
    Retry { error: String },
    /// Mark `failed`, publish `game.failed`.
    Failed { error: String },
    /// Nothing to apply (older version, deleted game); recorded so history explains it.
    Skipped { reason: String },
    /// A `delete` event: remove the game's derived data (thumbnail).
    CleanedUp,
}

impl ProcessingResult {
    /// Whether the event is settled by this result (all but a retry): its inbox row
    /// commits with it.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Retry { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishOutcome {
    Applied,
    /// Recorded, but a newer version was written meanwhile: its status was left alone.
    Superseded,
    /// The inbox already holds this event: nothing was written.
    AlreadyProcessed,
}

/// What the relay publishes: exchange, routing key, message id, headers and body.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxMessage {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// Outbox events not yet confirmed by the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxBacklog {
    pub pending: u64,
    /// How long the oldest has waited; `None` when nothing waits.
    pub oldest_age: Option<std::time::Duration>,
}

/// One relay's turn at the outbox: it claims the oldest unsent rows batch after
/// batch, and marks each batch sent once the broker has confirmed it.
///
/// While a turn lasts no other relay publishes, so events keep their commit order per
/// game. A claim takes the rows after those claimed before it in the turn, so the
/// relay can send a batch while the ones before it await their confirms. A turn
/// dropped before its batches are marked and it has [`ended`](OutboxTurn::end)
/// leaves their rows to be published again: at least once, never lost.
#[async_trait]
pub trait OutboxTurn: Send {
    /// The oldest unsent rows not claimed yet in this turn, at most `limit`, oldest
    /// first; empty when nothing waits.
    async fn claim(&mut self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Marks the rows of the oldest claim not marked yet as sent: its batch has been
    /// confirmed.
    async fn mark_sent(&mut self) -> Result<(), StoreError>;
    /// Ends the turn, once its claims are marked: another relay may take the next.
    async fn end(self: Box<Self>) -> Result<(), StoreError>;
}

/// The catalog database. Implementations: SQLite ([`sqlite::SqliteStore`]),
/// PostgreSQL ([`postgres::PgStore`]) and MySQL/MariaDB ([`mysql::MySqlStore`]).
#[async_trait]
pub trait Store: Accounts + Send + Sync + 'static {
    /// Applies pending migrations (schema and seed data). Safe to run repeatedly.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Fails when the database cannot be reached (readiness checks).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Where writes queue for one connection (SQLite), begins the transaction of the
    /// next `kind` batch: its group commit awaits this before it takes the batch, so
    /// that the requests that come while it waits for the writer join the batch instead
    /// of waiting for the next turn. The next write of that kind commits in it; the
    /// [`Turn`], dropped once that write has returned, rolls it back if the write did
    /// not use it. Elsewhere it does nothing. A failure to begin is left to the write,
    /// which begins again and reports it.
    async fn begin_turn(&self, kind: WriteKind) -> Turn;

    // Catalog reads.
    /// The games `query` selects, read by one statement as the caller takes them (see
    /// [`GameBatches`]).
    async fn stream_games(&self, query: &GameQuery) -> Result<GameBatches, StoreError>;
    /// The games `query` selects, in one list: a page when `query` asks for one.
    async fn list_games(&self, query: &GameQuery) -> Result<GamePage, StoreError> {
        let items = self.stream_games(query).await?.collect().await?;
        Ok(shared::games_page(query, items))
    }
    async fn game(&self, id: i64) -> Result<Option<Game>, StoreError>;
    async fn platforms(&self) -> Result<Vec<Platform>, StoreError>;
    async fn genres(&self) -> Result<Vec<Genre>, StoreError>;
    async fn cover(&self, game_id: i64) -> Result<Option<Cover>, StoreError>;
    async fn thumbnail(&self, game_id: i64) -> Result<Option<Thumbnail>, StoreError>;

    // Catalog writes: each commits its event to the outbox in the same transaction and
    // increments the game's `version`. Creates and updates take their event's id from the
    // caller, who can then follow the event (a request that waits for its processing).
    /// Creates the games of `batch` in one transaction: one answer per draft, in order,
    /// the game or why its draft was refused (a platform or genre that does not exist).
    /// An error is the transaction's: nothing was written.
    async fn create_games(
        &self,
        batch: &[NewGame],
    ) -> Result<Vec<Result<Game, StoreError>>, StoreError>;
    /// Updates the games of `batch` in one transaction, each with its `game.updated`
    /// event: one answer per update, in order, the game or why it was refused (no such
    /// game; a platform or genre that does not exist). An error is the transaction's.
    async fn update_games(
        &self,
        batch: &[GameUpdate],
    ) -> Result<Vec<Result<Game, StoreError>>, StoreError>;
    // `trace`: the W3C `traceparent` of the request that writes, sent with the event.
    async fn delete_game(&self, id: i64, trace: Option<&str>) -> Result<(), StoreError>;
    /// Replaces the uploaded cover; the game goes back to `pending` for a new thumbnail.
    async fn set_cover(
        &self,
        id: i64,
        cover: &Cover,
        trace: Option<&str>,
    ) -> Result<Game, StoreError>;
    /// The original consumer's callback: sets the status of the current version.
    async fn set_status(
        &self,
        id: i64,
        status: ProcessingStatus,
        trace: Option<&str>,
    ) -> Result<Game, StoreError>;

    async fn create_platform(&self, draft: &PlatformDraft) -> Result<Platform, StoreError>;
    async fn update_platform(&self, id: i64, draft: &PlatformDraft)
    -> Result<Platform, StoreError>;
    /// Refused with [`StoreError::Conflict`] while games use the platform.
    async fn delete_platform(&self, id: i64) -> Result<(), StoreError>;
    async fn create_genre(&self, draft: &GenreDraft) -> Result<Genre, StoreError>;
    async fn update_genre(&self, id: i64, draft: &GenreDraft) -> Result<Genre, StoreError>;
    async fn delete_genre(&self, id: i64) -> Result<(), StoreError>;

    // Processing views.
    /// Games still `pending`, newest first (the original's `/api/processing`).
    async fn pending_games(&self) -> Result<Vec<PendingGame>, StoreError>;
    /// The most recently updated games with their processing summary.
    async fn tasks(&self, limit: u32) -> Result<Vec<TaskView>, StoreError>;
    /// Games by processing status, over the whole catalog.
    async fn status_counts(&self) -> Result<StatusCounts, StoreError>;
    async fn history(&self, game_id: i64) -> Result<Vec<Attempt>, StoreError>;

    // Worker. Both calls take a batch and answer in its order; a worker's concurrent
    // deliveries share them (see `processing::group_commit`).
    /// For each request: `Processed` when the inbox holds its event, otherwise marks the
    /// game `processing` if the version is current. One transaction for the batch.
    async fn start_processing(
        &self,
        requests: &[StartRequest],
    ) -> Result<Vec<StartOutcome>, StoreError>;
    /// Records each attempt and, unless it is a retry, the inbox row, the status, the
    /// thumbnail and the `game.processed`/`game.failed` outbox event. One transaction
    /// for the batch, so it applies wholly or not at all.
    async fn finish_processing(
        &self,
        records: &[ProcessingRecord],
    ) -> Result<Vec<FinishOutcome>, StoreError>;

    // Subscribers.
    /// Records each message for its subscriber, in one statement when none was
    /// recorded before; false for one that was (a redelivery), which changes nothing.
    async fn record_received(&self, messages: &[ReceivedMessage]) -> Result<Vec<bool>, StoreError>;
    /// The latest `limit` messages a subscriber received, newest first.
    async fn received(
        &self,
        subscriber: &str,
        limit: u32,
    ) -> Result<Vec<ReceivedMessage>, StoreError>;

    // Outbox relay.
    /// Notified after every commit that wrote outbox rows, so an in-process relay
    /// publishes at once instead of waiting for its next poll.
    fn outbox_written(&self) -> &tokio::sync::Notify;
    /// Takes a turn at the outbox for one relay, or `None` while another relay has it.
    async fn outbox_turn(&self) -> Result<Option<Box<dyn OutboxTurn>>, StoreError>;
    /// Rows waiting to be published.
    /// Events not yet confirmed by the broker, and how long the oldest has waited.
    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError>;

    // History retention.
    /// Deletes what the history tables recorded before `before`: received messages,
    /// inbox rows and finished attempts, except the attempts a game's current view
    /// reads (see `retention`). In chunks, each a short write of its own, so writes go
    /// on meanwhile; stopped midway, it has deleted whole chunks.
    async fn prune_history(&self, before: DateTime<Utc>) -> Result<PruneReport, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn a_database_urls_password_is_masked_and_the_rest_kept() {
        assert_eq!(
            redacted("mysql://app:s3cret@db:3306/retrocat"),
            "mysql://app:***@db:3306/retrocat"
        );
        let plain = "postgres://postgres@127.0.0.1:5432/retrocat";
        assert_eq!(redacted(plain), plain);
        assert!(!redacted("mysql://app:s3cret@[db/x").contains("s3cret"));
    }
}
