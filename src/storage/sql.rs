//! The catalog in SQL, written once for every backend.
//!
//! The queries are portable: numbered placeholders (`$1`, which SQLite reads too),
//! `RETURNING`, `ON CONFLICT`, integer millisecond timestamps. What differs between
//! backends is a [`Dialect`]: how a write transaction starts, which error codes mean
//! "unavailable", the case-insensitive `LIKE`, and how a relay takes its turn at the
//! outbox. `sqlite.rs` and `postgres.rs` hold those and the connection settings.

use super::shared::{self, Columns, GAME_COLUMNS, KEEP_SENT_OUTBOX_MS, PRUNE_EVERY, now_ms};
use super::{
    Attempt, Cover, FinishOutcome, GamePage, GameQuery, OutboxClaim, OutboxMessage, PendingGame,
    ProcessingRecord, ProcessingResult, ReceivedMessage, StartOutcome, Store, StoreError, TaskView,
};
use crate::domain::{
    EventId, Game, GameAction, GameDraft, Genre, GenreDraft, Platform, PlatformDraft,
    ProcessingStatus,
};
use crate::processing::thumbnail::Thumbnail;
use async_trait::async_trait;
use sqlx::Connection;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::pool::PoolOptions;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder,
    Transaction, Type,
};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// What a backend adds to the shared SQL.
#[async_trait]
pub trait Dialect: Database {
    /// Starts a write transaction.
    const BEGIN_WRITE: &'static str;
    /// The case-insensitive `LIKE` of `?search=`.
    const LIKE: &'static str;
    /// This backend's schema and seed data (`migrations/<backend>`).
    const MIGRATOR: Migrator;
    /// Whether a relay's turn at the outbox lasts until its rows are marked sent (see
    /// [`Dialect::outbox_turn`]).
    const HOLD_TURN: bool;

    /// Rows written by a statement (each driver has its own result type).
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// True for an error code that means "the database cannot serve now, retry later".
    fn is_unavailable(code: &str) -> bool;

    /// Starts a relay's turn at the outbox: a transaction that reads the rows to
    /// publish, or `None` while another relay has the turn. When
    /// [`Dialect::HOLD_TURN`], the transaction stays open until the rows are marked
    /// sent, so no other relay publishes them (or anything after them) meanwhile.
    async fn outbox_turn(
        pool: &Pool<Self>,
    ) -> Result<Option<Transaction<'static, Self>>, StoreError>;

    /// Connection-level failures mean "unavailable, retry later"; the rest are bugs.
    fn classify(error: sqlx::Error) -> StoreError {
        match error {
            _ if shared::is_connection_error(&error) => StoreError::Unavailable(error.to_string()),
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| Self::is_unavailable(&c)) =>
            {
                StoreError::Unavailable(format!("database unavailable: {db}"))
            }
            other => StoreError::Database(other),
        }
    }
}

/// The catalog on one SQL backend: [`super::sqlite::SqliteStore`] or
/// [`super::postgres::PgStore`].
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    outbox_written: Notify,
    claims: AtomicU64,
}

impl<DB: Dialect> SqlStore<DB> {
    /// The connection options `DATABASE_URL` names.
    pub(super) fn parse_url(url: &str) -> Result<ConnectOptions<DB>, StoreError> {
        ConnectOptions::<DB>::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid DATABASE_URL {url:?}: {e}")))
    }

    /// Opens a pool of at most `max_connections`.
    pub(super) async fn open(
        options: ConnectOptions<DB>,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let pool = PoolOptions::<DB>::new()
            .max_connections(max_connections)
            // Fail fast while the database is down or saturated: a request gets its
            // 503 in seconds instead of queueing behind a pool that cannot connect.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(DB::classify)?;
        Ok(Self {
            pool,
            outbox_written: Notify::new(),
            claims: AtomicU64::new(0),
        })
    }
}

type ConnectOptions<DB> = <<DB as Database>::Connection as Connection>::Options;

// The bounds spell out what the shared SQL needs of a driver: executing on a
// connection, reading rows through `Columns`, and binding the value types it writes.
// Text is bound as owned `String`s: a generic bound on borrowed `&str` trips rustc's
// higher-ranked lifetime check ("`Encode` is not general enough") in these async
// methods, and a copy of a short string is nothing next to a database round trip.
impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    DB::Row: Columns,
    usize: ColumnIndex<DB::Row>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Vec<u8>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB>,
    for<'t> Option<i32>: Encode<'t, DB>,
    for<'t> Option<i64>: Encode<'t, DB>,
    for<'r> i64: Decode<'r, DB>,
{
    async fn begin_write(&self) -> Result<Transaction<'static, DB>, StoreError> {
        self.pool
            .begin_with(DB::BEGIN_WRITE)
            .await
            .map_err(DB::classify)
    }

    /// Commits the update of a platform or genre with its `{entity}.updated` event;
    /// when the update changed no row, the entity does not exist.
    async fn commit_update(
        &self,
        tx: Transaction<'static, DB>,
        entity: &'static str,
        id: i64,
        name: &str,
        updated: &DB::QueryResult,
    ) -> Result<(), StoreError> {
        if DB::rows_affected(updated) == 0 {
            return Err(StoreError::NotFound { entity, id });
        }
        let message = OutboxMessage::reference_event(entity, "updated", id, Some(name));
        self.commit_with_event(tx, &message).await
    }

    /// Appends the write's event to the outbox in the same transaction, commits both,
    /// and wakes the relay of this process (relays of other processes poll).
    async fn commit_with_event(
        &self,
        mut tx: Transaction<'static, DB>,
        message: &OutboxMessage,
    ) -> Result<(), StoreError> {
        Self::insert_outbox(&mut tx, message).await?;
        tx.commit().await.map_err(DB::classify)?;
        self.outbox_written.notify_one();
        Ok(())
    }

    async fn fetch_game(conn: &mut DB::Connection, id: i64) -> Result<Option<Game>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!("{GAME_COLUMNS} WHERE g.id = $1"));
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(conn)
            .await
            .map_err(DB::classify)?;
        row.as_ref().map(shared::game_from_row).transpose()
    }

    async fn insert_outbox(
        conn: &mut DB::Connection,
        message: &OutboxMessage,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO outbox (exchange, routing_key, message_id, headers, body, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&message.exchange)
        .bind(&message.routing_key)
        .bind(&message.message_id)
        .bind(shared::headers_json(message))
        .bind(&message.body)
        .bind(now_ms())
        .execute(conn)
        .await
        .map_err(DB::classify)?;
        Ok(())
    }

    /// Fails with the field at fault when the draft names a platform or genre that
    /// does not exist.
    async fn check_references(
        conn: &mut DB::Connection,
        draft: &GameDraft,
    ) -> Result<(), StoreError> {
        for (table, field, entity, id) in [
            ("platforms", "platformId", "platform", draft.platform_id),
            ("genres", "genreId", "genre", draft.genre_id),
        ] {
            let sql = sqlx::AssertSqlSafe(format!("SELECT 1 FROM {table} WHERE id = $1"));
            if sqlx::query(sql)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(DB::classify)?
                .is_none()
            {
                return Err(StoreError::UnknownReference { field, entity, id });
            }
        }
        Ok(())
    }

    fn unique_conflict(error: sqlx::Error, what: &str) -> StoreError {
        if shared::is_duplicate(&error) {
            StoreError::Conflict(format!("{what} already exists"))
        } else {
            DB::classify(error)
        }
    }

    /// A concurrent delete may remove a platform or genre between [`check_references`] and
    /// the write; the foreign key then refuses the write, and the client hears which field.
    fn missing_reference(error: sqlx::Error, draft: &GameDraft) -> StoreError {
        match &error {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                if db.constraint() == Some("games_genre_id_fkey") {
                    StoreError::UnknownReference {
                        field: "genreId",
                        entity: "genre",
                        id: draft.genre_id,
                    }
                } else {
                    StoreError::UnknownReference {
                        field: "platformId",
                        entity: "platform",
                        id: draft.platform_id,
                    }
                }
            }
            _ => DB::classify(error),
        }
    }

    /// Deletes a platform or genre, refused while games use it.
    async fn delete_reference(
        &self,
        table: &'static str,
        entity: &'static str,
        column: &'static str,
        id: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let used: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM games WHERE {column} = $1"
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(DB::classify)?;
        if used > 0 {
            return Err(shared::still_used(entity, id, used));
        }
        let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE id = $1"
        )))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|error| match &error {
            // A game written since the count now uses it: the foreign key says so.
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                shared::still_used(entity, id, 1)
            }
            _ => DB::classify(error),
        })?;
        if DB::rows_affected(&deleted) == 0 {
            return Err(StoreError::NotFound { entity, id });
        }
        self.commit_with_event(
            tx,
            &OutboxMessage::reference_event(entity, "deleted", id, None),
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Dialect,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    DB::Row: Columns,
    usize: ColumnIndex<DB::Row>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Vec<u8>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB>,
    for<'t> Option<i32>: Encode<'t, DB>,
    for<'t> Option<i64>: Encode<'t, DB>,
    for<'r> i64: Decode<'r, DB>,
{
    async fn migrate(&self) -> Result<(), StoreError> {
        // On a database server the migrator holds a lock while it runs (PostgreSQL: an
        // advisory lock), so several processes migrating at once apply each migration
        // once.
        DB::MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Database(e.into()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(DB::classify)?;
        Ok(())
    }

    async fn list_games(&self, query: &GameQuery) -> Result<GamePage, StoreError> {
        let mut sql = shared::games_query::<DB>(query, DB::LIKE)?;
        let rows = sql
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(DB::classify)?;
        let items = rows
            .iter()
            .map(shared::game_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(shared::games_page(query, items))
    }

    async fn game(&self, id: i64) -> Result<Option<Game>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(DB::classify)?;
        Self::fetch_game(&mut conn, id).await
    }

    async fn platforms(&self) -> Result<Vec<Platform>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, manufacturer, release_year FROM platforms ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(DB::classify)?;
        rows.iter().map(shared::platform_from_row).collect()
    }

    async fn genres(&self) -> Result<Vec<Genre>, StoreError> {
        let rows = sqlx::query("SELECT id, name, description FROM genres ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(DB::classify)?;
        rows.iter().map(shared::genre_from_row).collect()
    }

    async fn cover(&self, game_id: i64) -> Result<Option<Cover>, StoreError> {
        let row = sqlx::query("SELECT content_type, bytes FROM covers WHERE game_id = $1")
            .bind(game_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(DB::classify)?;
        row.as_ref().map(shared::cover_from_row).transpose()
    }

    async fn thumbnail(&self, game_id: i64) -> Result<Option<Thumbnail>, StoreError> {
        let row = sqlx::query("SELECT png, width, height FROM thumbnails WHERE game_id = $1")
            .bind(game_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(DB::classify)?;
        row.as_ref().map(shared::thumbnail_from_row).transpose()
    }

    async fn create_game(&self, draft: &GameDraft, event: &EventId) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        Self::check_references(&mut tx, draft).await?;
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO games (title, platform_id, genre_id, developer, release_year, \
             year_category, description, image_url, processing_status, version, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 1, $9, $10) RETURNING id",
        )
        .bind(draft.title.as_str().to_owned())
        .bind(draft.platform_id)
        .bind(draft.genre_id)
        .bind(draft.developer.as_str().to_owned())
        .bind(draft.release_year.get())
        .bind(draft.release_year.category())
        .bind(&draft.description)
        .bind(draft.image_url.as_ref().map(|url| url.as_str().to_owned()))
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| Self::missing_reference(e, draft))?;
        let game = Self::fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        self.commit_with_event(
            tx,
            &OutboxMessage::game_event(&game, GameAction::Create, event),
        )
        .await?;
        Ok(game)
    }

    async fn update_game(
        &self,
        id: i64,
        draft: &GameDraft,
        event: &EventId,
    ) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        Self::check_references(&mut tx, draft).await?;
        let updated = sqlx::query(
            "UPDATE games SET title = $1, platform_id = $2, genre_id = $3, developer = $4, \
             release_year = $5, year_category = $6, description = $7, image_url = $8, \
             processing_status = 'pending', version = version + 1, updated_at = $9 WHERE id = $10",
        )
        .bind(draft.title.as_str().to_owned())
        .bind(draft.platform_id)
        .bind(draft.genre_id)
        .bind(draft.developer.as_str().to_owned())
        .bind(draft.release_year.get())
        .bind(draft.release_year.category())
        .bind(&draft.description)
        .bind(draft.image_url.as_ref().map(|url| url.as_str().to_owned()))
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| Self::missing_reference(e, draft))?;
        if DB::rows_affected(&updated) == 0 {
            return Err(StoreError::NotFound { entity: "game", id });
        }
        let game = Self::fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        self.commit_with_event(
            tx,
            &OutboxMessage::game_event(&game, GameAction::Update, event),
        )
        .await?;
        Ok(game)
    }

    async fn delete_game(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let game = Self::fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        sqlx::query("DELETE FROM games WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(DB::classify)?;
        self.commit_with_event(
            tx,
            &OutboxMessage::game_event(&game, GameAction::Delete, &EventId::generate()),
        )
        .await?;
        Ok(())
    }

    async fn set_cover(&self, id: i64, cover: &Cover) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE games SET processing_status = 'pending', version = version + 1, \
             updated_at = $1 WHERE id = $2",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(DB::classify)?;
        if DB::rows_affected(&updated) == 0 {
            return Err(StoreError::NotFound { entity: "game", id });
        }
        sqlx::query(
            "INSERT INTO covers (game_id, content_type, bytes) VALUES ($1, $2, $3) \
             ON CONFLICT (game_id) DO UPDATE SET content_type = excluded.content_type, \
             bytes = excluded.bytes",
        )
        .bind(id)
        .bind(&cover.content_type)
        .bind(&cover.bytes)
        .execute(&mut *tx)
        .await
        .map_err(DB::classify)?;
        let game = Self::fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        self.commit_with_event(
            tx,
            &OutboxMessage::game_event(&game, GameAction::Update, &EventId::generate()),
        )
        .await?;
        Ok(game)
    }

    async fn set_status(&self, id: i64, status: ProcessingStatus) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query("UPDATE games SET processing_status = $1 WHERE id = $2")
            .bind(status.as_str().to_owned())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(DB::classify)?;
        if DB::rows_affected(&updated) == 0 {
            return Err(StoreError::NotFound { entity: "game", id });
        }
        let game = Self::fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        let message = OutboxMessage::game_processed(id, game.version, status, &EventId::generate());
        self.commit_with_event(tx, &message).await?;
        Ok(game)
    }

    async fn create_platform(&self, draft: &PlatformDraft) -> Result<Platform, StoreError> {
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO platforms (name, manufacturer, release_year) VALUES ($1, $2, $3) \
             RETURNING id",
        )
        .bind(draft.name.as_str().to_owned())
        .bind(&draft.manufacturer)
        .bind(draft.release_year)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| Self::unique_conflict(e, &format!("platform {:?}", draft.name.as_str())))?;
        let message =
            OutboxMessage::reference_event("platform", "created", id, Some(draft.name.as_str()));
        self.commit_with_event(tx, &message).await?;
        Ok(Platform {
            id,
            name: draft.name.as_str().to_owned(),
            manufacturer: draft.manufacturer.clone(),
            release_year: draft.release_year,
        })
    }

    async fn update_platform(
        &self,
        id: i64,
        draft: &PlatformDraft,
    ) -> Result<Platform, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE platforms SET name = $1, manufacturer = $2, release_year = $3 WHERE id = $4",
        )
        .bind(draft.name.as_str().to_owned())
        .bind(&draft.manufacturer)
        .bind(draft.release_year)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| Self::unique_conflict(e, &format!("platform {:?}", draft.name.as_str())))?;
        self.commit_update(tx, "platform", id, draft.name.as_str(), &updated)
            .await?;
        Ok(Platform {
            id,
            name: draft.name.as_str().to_owned(),
            manufacturer: draft.manufacturer.clone(),
            release_year: draft.release_year,
        })
    }

    async fn delete_platform(&self, id: i64) -> Result<(), StoreError> {
        self.delete_reference("platforms", "platform", "platform_id", id)
            .await
    }

    async fn create_genre(&self, draft: &GenreDraft) -> Result<Genre, StoreError> {
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO genres (name, description) VALUES ($1, $2) RETURNING id",
        )
        .bind(draft.name.as_str().to_owned())
        .bind(&draft.description)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| Self::unique_conflict(e, &format!("genre {:?}", draft.name.as_str())))?;
        let message =
            OutboxMessage::reference_event("genre", "created", id, Some(draft.name.as_str()));
        self.commit_with_event(tx, &message).await?;
        Ok(Genre {
            id,
            name: draft.name.as_str().to_owned(),
            description: draft.description.clone(),
        })
    }

    async fn update_genre(&self, id: i64, draft: &GenreDraft) -> Result<Genre, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query("UPDATE genres SET name = $1, description = $2 WHERE id = $3")
            .bind(draft.name.as_str().to_owned())
            .bind(&draft.description)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| Self::unique_conflict(e, &format!("genre {:?}", draft.name.as_str())))?;
        self.commit_update(tx, "genre", id, draft.name.as_str(), &updated)
            .await?;
        Ok(Genre {
            id,
            name: draft.name.as_str().to_owned(),
            description: draft.description.clone(),
        })
    }

    async fn delete_genre(&self, id: i64) -> Result<(), StoreError> {
        self.delete_reference("genres", "genre", "genre_id", id)
            .await
    }

    async fn pending_games(&self) -> Result<Vec<PendingGame>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, title FROM games WHERE processing_status = 'pending' \
             ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(DB::classify)?;
        rows.iter().map(shared::pending_game_from_row).collect()
    }

    async fn tasks(&self, limit: u32) -> Result<Vec<TaskView>, StoreError> {
        let rows = sqlx::query(shared::TASKS)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(DB::classify)?;
        rows.iter().map(shared::task_from_row).collect()
    }

    async fn history(&self, game_id: i64) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, version, attempt, outcome, error, started_at, finished_at, \
             duration_ms, worker FROM processing_attempts WHERE game_id = $1 ORDER BY id",
        )
        .bind(game_id)
        .fetch_all(&self.pool)
        .await
        .map_err(DB::classify)?;
        rows.iter().map(shared::attempt_from_row).collect()
    }

    async fn is_processed(&self, event_id: &EventId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM inbox WHERE event_id = $1")
            .bind(event_id.as_str().to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(DB::classify)?;
        Ok(row.is_some())
    }

    async fn start_processing(
        &self,
        game_id: i64,
        version: Option<i64>,
    ) -> Result<StartOutcome, StoreError> {
        // One statement: the version check and the status change cannot be split by a
        // concurrent update or a concurrent copy of the event. A given version that is
        // completed stays so; without a version (`process`: again) it starts anew.
        let row = sqlx::query(
            "UPDATE games SET processing_status = 'processing' \
             WHERE id = $1 AND version = COALESCE($2, version) \
             AND ($3 IS NULL OR processing_status <> 'completed') \
             RETURNING version, title, image_url, \
             EXISTS (SELECT 1 FROM covers c WHERE c.game_id = games.id) AS has_cover",
        )
        .bind(game_id)
        .bind(version)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(DB::classify)?;
        if let Some(row) = row {
            return Ok(StartOutcome::Ready(shared::work_item_from_row(
                game_id, &row,
            )?));
        }
        let current = sqlx::query("SELECT version, processing_status FROM games WHERE id = $1")
            .bind(game_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(DB::classify)?;
        let Some(current) = current else {
            return Ok(StartOutcome::Missing);
        };
        let current_version = current.int("version")?;
        Ok(if Some(current_version) == version {
            StartOutcome::Done
        } else {
            StartOutcome::Stale { current_version }
        })
    }

    async fn finish_processing(
        &self,
        record: &ProcessingRecord,
    ) -> Result<FinishOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let is_final = !matches!(record.result, ProcessingResult::Retry { .. });
        if is_final {
            // The inbox row is the exactly-once guard: it commits with the effect.
            let inserted = sqlx::query(
                "INSERT INTO inbox (event_id, processed_at) VALUES ($1, $2) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(record.event_id.as_str().to_owned())
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(DB::classify)?;
            if DB::rows_affected(&inserted) == 0 {
                // Another delivery of this event settled it meanwhile. If this one
                // started after that (it passed `is_processed` just before), its
                // `start_processing` set the game `processing` again: give the game
                // back the status the settled attempt left, or it stays `processing`.
                sqlx::query(
                    "UPDATE games SET processing_status = \
                     (SELECT a.outcome FROM processing_attempts a \
                      WHERE a.game_id = $1 AND a.event_id = $2 \
                      AND a.outcome IN ('completed', 'failed') ORDER BY a.id DESC LIMIT 1) \
                     WHERE id = $1 AND version = $3 AND processing_status = 'processing' \
                     AND EXISTS (SELECT 1 FROM processing_attempts a \
                      WHERE a.game_id = $1 AND a.event_id = $2 \
                      AND a.outcome IN ('completed', 'failed'))",
                )
                .bind(record.game_id)
                .bind(record.event_id.as_str().to_owned())
                .bind(record.version)
                .execute(&mut *tx)
                .await
                .map_err(DB::classify)?;
                tx.commit().await.map_err(DB::classify)?;
                return Ok(FinishOutcome::AlreadyProcessed);
            }
        }
        let started = record.started_at.timestamp_millis();
        let finished = record.finished_at.timestamp_millis();
        sqlx::query(
            "INSERT INTO processing_attempts (event_id, game_id, version, attempt, outcome, \
             error, started_at, finished_at, duration_ms, worker) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(record.event_id.as_str().to_owned())
        .bind(record.game_id)
        .bind(record.version)
        .bind(i64::from(record.attempt))
        .bind(shared::outcome_name(&record.result).to_owned())
        .bind(shared::attempt_error(record).map(str::to_owned))
        .bind(started)
        .bind(finished)
        .bind((finished - started).max(0))
        .bind(&record.worker)
        .execute(&mut *tx)
        .await
        .map_err(DB::classify)?;

        let status = match &record.result {
            ProcessingResult::Completed { .. } => ProcessingStatus::Completed,
            ProcessingResult::Failed { .. } => ProcessingStatus::Failed,
            ProcessingResult::CleanedUp => {
                sqlx::query(
                    "DELETE FROM thumbnails WHERE game_id = $1 \
                     AND NOT EXISTS (SELECT 1 FROM games WHERE id = $2)",
                )
                .bind(record.game_id)
                .bind(record.game_id)
                .execute(&mut *tx)
                .await
                .map_err(DB::classify)?;
                tx.commit().await.map_err(DB::classify)?;
                return Ok(FinishOutcome::Applied);
            }
            ProcessingResult::Retry { .. } | ProcessingResult::Skipped { .. } => {
                tx.commit().await.map_err(DB::classify)?;
                return Ok(FinishOutcome::Applied);
            }
        };
        // Only the version this event describes may change: a newer write wins.
        let updated =
            sqlx::query("UPDATE games SET processing_status = $1 WHERE id = $2 AND version = $3")
                .bind(status.as_str().to_owned())
                .bind(record.game_id)
                .bind(record.version)
                .execute(&mut *tx)
                .await
                .map_err(DB::classify)?;
        if DB::rows_affected(&updated) == 0 {
            tx.commit().await.map_err(DB::classify)?;
            return Ok(FinishOutcome::Superseded);
        }
        if let ProcessingResult::Completed { thumbnail } = &record.result {
            match thumbnail {
                Some(thumbnail) => {
                    sqlx::query(
                        "INSERT INTO thumbnails (game_id, version, png, width, height) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (game_id) DO UPDATE SET \
                         version = excluded.version, png = excluded.png, \
                         width = excluded.width, height = excluded.height",
                    )
                    .bind(record.game_id)
                    .bind(record.version)
                    .bind(&thumbnail.png)
                    .bind(i64::from(thumbnail.width))
                    .bind(i64::from(thumbnail.height))
                    .execute(&mut *tx)
                    .await
                    .map_err(DB::classify)?;
                }
                // This version has no cover: an older thumbnail no longer applies.
                None => {
                    sqlx::query("DELETE FROM thumbnails WHERE game_id = $1")
                        .bind(record.game_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(DB::classify)?;
                }
            }
        }
        let message =
            OutboxMessage::game_processed(record.game_id, record.version, status, &record.event_id);
        self.commit_with_event(tx, &message).await?;
        Ok(FinishOutcome::Applied)
    }

    async fn record_received(&self, message: &ReceivedMessage) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO received_messages (subscriber, message_id, exchange, routing_key, \
             headers, body, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (subscriber, message_id) DO NOTHING",
        )
        .bind(message.subscriber.clone())
        .bind(message.message_id.clone())
        .bind(message.exchange.clone())
        .bind(message.routing_key.clone())
        .bind(serde_json::to_string(&message.headers).expect("headers serialize"))
        .bind(serde_json::to_vec(&message.body).expect("JSON serializes"))
        .bind(message.received_at.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(DB::classify)?;
        Ok(DB::rows_affected(&inserted) > 0)
    }

    async fn received(
        &self,
        subscriber: &str,
        limit: u32,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT subscriber, message_id, exchange, routing_key, headers, body, received_at \
             FROM received_messages WHERE subscriber = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(subscriber.to_owned())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(DB::classify)?;
        rows.iter().map(shared::received_from_row).collect()
    }

    fn outbox_written(&self) -> &Notify {
        &self.outbox_written
    }

    async fn claim_outbox(&self, limit: u32) -> Result<Box<dyn OutboxClaim>, StoreError> {
        let Some(mut turn) = DB::outbox_turn(&self.pool).await? else {
            return Ok(Box::new(SqlClaim::<DB>::empty(self.pool.clone())));
        };
        let rows = sqlx::query(
            "SELECT id, exchange, routing_key, message_id, headers, body FROM outbox \
             WHERE sent_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *turn)
        .await
        .map_err(DB::classify)?;
        let (ids, messages) = rows
            .iter()
            .map(shared::outbox_from_row)
            .collect::<Result<_, _>>()?;
        let turn = if DB::HOLD_TURN {
            Some(turn)
        } else {
            turn.commit().await.map_err(DB::classify)?;
            None
        };
        Ok(Box::new(SqlClaim {
            pool: self.pool.clone(),
            turn,
            ids,
            messages,
            prune: self
                .claims
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(PRUNE_EVERY),
        }))
    }

    async fn outbox_depth(&self) -> Result<u64, StoreError> {
        let depth: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(DB::classify)?;
        Ok(depth as u64)
    }
}

/// Rows claimed by one relay, and its turn at the outbox when the backend holds it.
struct SqlClaim<DB: Database> {
    pool: Pool<DB>,
    turn: Option<Transaction<'static, DB>>,
    ids: Vec<i64>,
    messages: Vec<OutboxMessage>,
    /// Also drop rows sent long ago (now and then, in bounded chunks).
    prune: bool,
}

impl<DB: Database> SqlClaim<DB> {
    /// Another relay has the turn: nothing to publish.
    fn empty(pool: Pool<DB>) -> Self {
        Self {
            pool,
            turn: None,
            ids: Vec::new(),
            messages: Vec::new(),
            prune: false,
        }
    }
}

#[async_trait]
impl<DB> OutboxClaim for SqlClaim<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    fn take_messages(&mut self) -> Vec<OutboxMessage> {
        std::mem::take(&mut self.messages)
    }

    async fn mark_sent(self: Box<Self>) -> Result<(), StoreError> {
        let Self {
            pool,
            turn,
            ids,
            prune,
            ..
        } = *self;
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = match turn {
            Some(turn) => turn,
            None => pool
                .begin_with(DB::BEGIN_WRITE)
                .await
                .map_err(DB::classify)?,
        };
        let now = now_ms();
        let mut sql = QueryBuilder::<DB>::new("UPDATE outbox SET sent_at = ");
        sql.push_bind(now).push(" WHERE id IN (");
        let mut list = sql.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        sql.push(")");
        sql.build().execute(&mut *tx).await.map_err(DB::classify)?;
        if prune {
            sqlx::query(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
                 WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT 10000)",
            )
            .bind(now - KEEP_SENT_OUTBOX_MS)
            .execute(&mut *tx)
            .await
            .map_err(DB::classify)?;
        }
        tx.commit().await.map_err(DB::classify)
    }
}
