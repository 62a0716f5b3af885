//! The catalog on SQLite: the embedded default.
//!
//! One file, WAL journal. SQLite has a single writer, so write transactions start with
//! `BEGIN IMMEDIATE` (taking the write lock up front instead of failing with
//! `SQLITE_BUSY` when a reader tries to upgrade) and stay short.

use super::{
    Attempt, AttemptOutcome, Cover, FinishOutcome, GamePage, GameQuery, GameSort, OutboxMessage,
    OutboxRow, PendingGame, ProcessingRecord, ProcessingResult, StartOutcome, Store, StoreError,
    TaskView, WorkItem,
};
use crate::domain::{
    EventId, Game, GameAction, GameDraft, Genre, GenreDraft, Platform, PlatformDraft,
    ProcessingStatus,
};
use crate::processing::thumbnail::Thumbnail;
use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Sent outbox rows are kept this long for inspection, then pruned.
const KEEP_SENT_OUTBOX_MS: i64 = 60 * 60 * 1000;

pub struct SqliteStore {
    pool: SqlitePool,
    outbox_written: Notify,
    mark_sent_calls: AtomicU64,
}

impl SqliteStore {
    /// Opens `sqlite://PATH`, creating the file and its directory if needed.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid DATABASE_URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL loses no committed transaction when the *process*
            // crashes (only on power loss or an OS crash may the last ones roll back),
            // and it saves an fsync per commit.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        if let Some(parent) = options.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(classify)?;
        Ok(Self {
            pool,
            outbox_written: Notify::new(),
            mark_sent_calls: AtomicU64::new(0),
        })
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)
    }

    /// Appends the write's event to the outbox in the same transaction, commits both,
    /// and wakes the relay.
    async fn commit_with_event(
        &self,
        mut tx: sqlx::Transaction<'static, Sqlite>,
        message: &OutboxMessage,
    ) -> Result<(), StoreError> {
        insert_outbox(&mut tx, message).await?;
        tx.commit().await.map_err(classify)?;
        self.outbox_written.notify_one();
        Ok(())
    }
}

/// Connection-level failures mean "unavailable, retry later"; the rest are bugs.
fn classify(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(error.to_string())
        }
        sqlx::Error::Database(ref db) if db.code().as_deref() == Some("5") => {
            StoreError::Unavailable(format!("database busy: {db}"))
        }
        other => StoreError::Database(other),
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

const GAME_COLUMNS: &str = "SELECT g.id, g.title, g.platform_id, p.name AS platform_name, \
     g.genre_id, gr.name AS genre_name, g.developer, g.release_year, g.year_category, \
     g.description, g.image_url, g.processing_status, g.version, g.created_at, g.updated_at, \
     EXISTS (SELECT 1 FROM thumbnails t WHERE t.game_id = g.id) AS has_thumbnail \
     FROM games g JOIN platforms p ON p.id = g.platform_id JOIN genres gr ON gr.id = g.genre_id";

fn game_from_row(row: &SqliteRow) -> Result<Game, StoreError> {
    let id: i64 = row.try_get("id")?;
    let status: String = row.try_get("processing_status")?;
    let has_thumbnail: bool = row.try_get("has_thumbnail")?;
    Ok(Game {
        id,
        title: row.try_get("title")?,
        platform_id: row.try_get("platform_id")?,
        platform_name: row.try_get("platform_name")?,
        genre_id: row.try_get("genre_id")?,
        genre_name: row.try_get("genre_name")?,
        developer: row.try_get("developer")?,
        release_year: row.try_get("release_year")?,
        year_category: row.try_get("year_category")?,
        description: row.try_get("description")?,
        image_url: row.try_get("image_url")?,
        processing_status: ProcessingStatus::parse(&status).unwrap_or(ProcessingStatus::Pending),
        version: row.try_get("version")?,
        thumbnail_url: has_thumbnail.then(|| format!("/api/games/{id}/thumbnail")),
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
    })
}

async fn fetch_game(conn: &mut SqliteConnection, id: i64) -> Result<Option<Game>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!("{GAME_COLUMNS} WHERE g.id = ?"));
    let row = sqlx::query(sql).bind(id).fetch_optional(conn).await?;
    row.as_ref().map(game_from_row).transpose()
}

async fn insert_outbox(
    conn: &mut SqliteConnection,
    message: &OutboxMessage,
) -> Result<(), StoreError> {
    let headers = serde_json::to_string(&message.headers).expect("headers serialize");
    sqlx::query(
        "INSERT INTO outbox (exchange, routing_key, message_id, headers, body, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&message.exchange)
    .bind(&message.routing_key)
    .bind(&message.message_id)
    .bind(headers)
    .bind(&message.body)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Fails with the field at fault when the draft names a platform or genre that
/// does not exist.
async fn check_references(
    conn: &mut SqliteConnection,
    draft: &GameDraft,
) -> Result<(), StoreError> {
    for (table, field, entity, id) in [
        ("platforms", "platformId", "platform", draft.platform_id),
        ("genres", "genreId", "genre", draft.genre_id),
    ] {
        let sql = sqlx::AssertSqlSafe(format!("SELECT 1 FROM {table} WHERE id = ?"));
        if sqlx::query(sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .is_none()
        {
            return Err(StoreError::UnknownReference { field, entity, id });
        }
    }
    Ok(())
}

fn unique_conflict(error: sqlx::Error, what: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("{what} already exists"))
        }
        _ => classify(error),
    }
}

/// The position of the last row of a page, handed back as `nextCursor`.
#[derive(Serialize, Deserialize)]
struct Cursor {
    /// Which sort the cursor belongs to.
    s: String,
    /// The last row's sort value (text or integer).
    v: serde_json::Value,
    id: i64,
}

impl GameSort {
    fn column(self) -> &'static str {
        match self {
            Self::Title | Self::TitleDesc => "g.title",
            Self::ReleaseYear | Self::ReleaseYearDesc => "g.release_year",
            Self::CreatedAt | Self::CreatedAtDesc => "g.created_at",
        }
    }

    fn descending(self) -> bool {
        matches!(
            self,
            Self::TitleDesc | Self::ReleaseYearDesc | Self::CreatedAtDesc
        )
    }

    fn name(self) -> &'static str {
        match self {
            Self::Title => "title",
            Self::TitleDesc => "-title",
            Self::ReleaseYear => "releaseYear",
            Self::ReleaseYearDesc => "-releaseYear",
            Self::CreatedAt => "createdAt",
            Self::CreatedAtDesc => "-createdAt",
        }
    }

    fn cursor_value(self, game: &Game) -> serde_json::Value {
        match self {
            Self::Title | Self::TitleDesc => game.title.clone().into(),
            Self::ReleaseYear | Self::ReleaseYearDesc => game.release_year.into(),
            Self::CreatedAt | Self::CreatedAtDesc => game.created_at.timestamp_millis().into(),
        }
    }
}

fn encode_cursor(sort: GameSort, game: &Game) -> String {
    let cursor = Cursor {
        s: sort.name().into(),
        v: sort.cursor_value(game),
        id: game.id,
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&cursor).expect("cursor serializes"))
}

fn decode_cursor(sort: GameSort, text: &str) -> Result<Cursor, StoreError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| StoreError::InvalidCursor)?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidCursor)?;
    let value_fits = match sort {
        GameSort::Title | GameSort::TitleDesc => cursor.v.is_string(),
        _ => cursor.v.is_i64(),
    };
    if cursor.s != sort.name() || !value_fits {
        return Err(StoreError::InvalidCursor);
    }
    Ok(cursor)
}

fn attempt_outcome(result: &ProcessingResult) -> AttemptOutcome {
    match result {
        ProcessingResult::Completed { .. } | ProcessingResult::CleanedUp => {
            AttemptOutcome::Completed
        }
        ProcessingResult::Retry { .. } => AttemptOutcome::Retry,
        ProcessingResult::Failed { .. } => AttemptOutcome::Failed,
        ProcessingResult::Skipped { .. } => AttemptOutcome::Skipped,
    }
}

fn outcome_name(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Completed => "completed",
        AttemptOutcome::Retry => "retry",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Skipped => "skipped",
    }
}

fn parse_outcome(name: &str) -> AttemptOutcome {
    match name {
        "completed" => AttemptOutcome::Completed,
        "retry" => AttemptOutcome::Retry,
        "failed" => AttemptOutcome::Failed,
        _ => AttemptOutcome::Skipped,
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Database(e.into()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn list_games(&self, query: &GameQuery) -> Result<GamePage, StoreError> {
        let mut sql = QueryBuilder::<Sqlite>::new(GAME_COLUMNS);
        sql.push(" WHERE 1 = 1");
        if let Some(search) = &query.search {
            let escaped = search
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let pattern = format!("%{escaped}%");
            sql.push(" AND (g.title LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR g.developer LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '\\')");
        }
        if let Some(id) = query.platform_id {
            sql.push(" AND g.platform_id = ").push_bind(id);
        }
        if let Some(id) = query.genre_id {
            sql.push(" AND g.genre_id = ").push_bind(id);
        }
        if let Some(decade) = &query.year_category {
            sql.push(" AND g.year_category = ")
                .push_bind(decade.clone());
        }
        if let Some(status) = query.status {
            sql.push(" AND g.processing_status = ")
                .push_bind(status.as_str());
        }
        let sort = query.sort;
        let (column, direction, comparison) = if sort.descending() {
            (sort.column(), "DESC", "<")
        } else {
            (sort.column(), "ASC", ">")
        };
        if let Some(cursor) = query.page.as_ref().and_then(|p| p.cursor.as_deref()) {
            let cursor = decode_cursor(sort, cursor)?;
            sql.push(format_args!(" AND ({column}, g.id) {comparison} ("));
            match cursor.v {
                serde_json::Value::String(text) => sql.push_bind(text),
                value => sql.push_bind(value.as_i64().unwrap_or_default()),
            };
            sql.push(", ").push_bind(cursor.id).push(")");
        }
        sql.push(format_args!(
            " ORDER BY {column} {direction}, g.id {direction}"
        ));
        if let Some(page) = &query.page {
            sql.push(" LIMIT ").push_bind(i64::from(page.limit) + 1);
        }
        let rows = sql.build().fetch_all(&self.pool).await.map_err(classify)?;
        let mut items = rows
            .iter()
            .map(game_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = match &query.page {
            Some(page) if items.len() > page.limit as usize => {
                items.truncate(page.limit as usize);
                items.last().map(|last| encode_cursor(sort, last))
            }
            _ => None,
        };
        Ok(GamePage { items, next_cursor })
    }

    async fn game(&self, id: i64) -> Result<Option<Game>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        fetch_game(&mut conn, id).await
    }

    async fn platforms(&self) -> Result<Vec<Platform>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, manufacturer, release_year FROM platforms ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(Platform {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    manufacturer: row.try_get("manufacturer")?,
                    release_year: row.try_get("release_year")?,
                })
            })
            .collect()
    }

    async fn genres(&self) -> Result<Vec<Genre>, StoreError> {
        let rows = sqlx::query("SELECT id, name, description FROM genres ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(Genre {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                })
            })
            .collect()
    }

    async fn cover(&self, game_id: i64) -> Result<Option<Cover>, StoreError> {
        let row = sqlx::query("SELECT content_type, bytes FROM covers WHERE game_id = ?")
            .bind(game_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        row.map(|row| {
            Ok(Cover {
                content_type: row.try_get("content_type")?,
                bytes: row.try_get("bytes")?,
            })
        })
        .transpose()
    }

    async fn thumbnail(&self, game_id: i64) -> Result<Option<Thumbnail>, StoreError> {
        let row = sqlx::query("SELECT png, width, height FROM thumbnails WHERE game_id = ?")
            .bind(game_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        row.map(|row| {
            Ok(Thumbnail {
                png: row.try_get("png")?,
                width: row.try_get::<i64, _>("width")? as u32,
                height: row.try_get::<i64, _>("height")? as u32,
            })
        })
        .transpose()
    }

    async fn create_game(&self, draft: &GameDraft) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        check_references(&mut tx, draft).await?;
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO games (title, platform_id, genre_id, developer, release_year, \
             year_category, description, image_url, processing_status, version, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 1, ?, ?) RETURNING id",
        )
        .bind(draft.title.as_str())
        .bind(draft.platform_id)
        .bind(draft.genre_id)
        .bind(draft.developer.as_str())
        .bind(draft.release_year.get())
        .bind(draft.release_year.category())
        .bind(&draft.description)
        .bind(draft.image_url.as_ref().map(|url| url.as_str()))
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let game = fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        self.commit_with_event(tx, &OutboxMessage::game_event(&game, GameAction::Create))
            .await?;
        Ok(game)
    }

    async fn update_game(&self, id: i64, draft: &GameDraft) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        check_references(&mut tx, draft).await?;
        let updated = sqlx::query(
            "UPDATE games SET title = ?, platform_id = ?, genre_id = ?, developer = ?, \
             release_year = ?, year_category = ?, description = ?, image_url = ?, \
             processing_status = 'pending', version = version + 1, updated_at = ? WHERE id = ?",
        )
        .bind(draft.title.as_str())
        .bind(draft.platform_id)
        .bind(draft.genre_id)
        .bind(draft.developer.as_str())
        .bind(draft.release_year.get())
        .bind(draft.release_year.category())
        .bind(&draft.description)
        .bind(draft.image_url.as_ref().map(|url| url.as_str()))
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound { entity: "game", id });
        }
        let game = fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        self.commit_with_event(tx, &OutboxMessage::game_event(&game, GameAction::Update))
            .await?;
        Ok(game)
    }

    async fn delete_game(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let game = fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        sqlx::query("DELETE FROM games WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.commit_with_event(tx, &OutboxMessage::game_event(&game, GameAction::Delete))
            .await?;
        Ok(())
    }

    async fn set_cover(&self, id: i64, cover: &Cover) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE games SET processing_status = 'pending', version = version + 1, \
             updated_at = ? WHERE id = ?",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound { entity: "game", id });
        }
        sqlx::query(
            "INSERT INTO covers (game_id, content_type, bytes) VALUES (?, ?, ?) \
             ON CONFLICT (game_id) DO UPDATE SET content_type = excluded.content_type, \
             bytes = excluded.bytes",
        )
        .bind(id)
        .bind(&cover.content_type)
        .bind(&cover.bytes)
        .execute(&mut *tx)
        .await?;
        let game = fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        self.commit_with_event(tx, &OutboxMessage::game_event(&game, GameAction::Update))
            .await?;
        Ok(game)
    }

    async fn set_status(&self, id: i64, status: ProcessingStatus) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query("UPDATE games SET processing_status = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound { entity: "game", id });
        }
        let game = fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        let message = OutboxMessage::game_processed(id, game.version, status, &EventId::generate());
        self.commit_with_event(tx, &message).await?;
        Ok(game)
    }

    async fn create_platform(&self, draft: &PlatformDraft) -> Result<Platform, StoreError> {
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO platforms (name, manufacturer, release_year) VALUES (?, ?, ?) \
             RETURNING id",
        )
        .bind(draft.name.as_str())
        .bind(&draft.manufacturer)
        .bind(draft.release_year)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| unique_conflict(e, &format!("platform {:?}", draft.name.as_str())))?;
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
            "UPDATE platforms SET name = ?, manufacturer = ?, release_year = ? WHERE id = ?",
        )
        .bind(draft.name.as_str())
        .bind(&draft.manufacturer)
        .bind(draft.release_year)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_conflict(e, &format!("platform {:?}", draft.name.as_str())))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                entity: "platform",
                id,
            });
        }
        let message =
            OutboxMessage::reference_event("platform", "updated", id, Some(draft.name.as_str()));
        self.commit_with_event(tx, &message).await?;
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
        let id: i64 =
            sqlx::query_scalar("INSERT INTO genres (name, description) VALUES (?, ?) RETURNING id")
                .bind(draft.name.as_str())
                .bind(&draft.description)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| unique_conflict(e, &format!("genre {:?}", draft.name.as_str())))?;
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
        let updated = sqlx::query("UPDATE genres SET name = ?, description = ? WHERE id = ?")
            .bind(draft.name.as_str())
            .bind(&draft.description)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_conflict(e, &format!("genre {:?}", draft.name.as_str())))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                entity: "genre",
                id,
            });
        }
        let message =
            OutboxMessage::reference_event("genre", "updated", id, Some(draft.name.as_str()));
        self.commit_with_event(tx, &message).await?;
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
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(PendingGame {
                    id: row.try_get("id")?,
                    title: row.try_get("title")?,
                    processing_status: ProcessingStatus::Pending,
                })
            })
            .collect()
    }

    async fn tasks(&self, limit: u32) -> Result<Vec<TaskView>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.id, g.title, g.processing_status, g.version, g.updated_at, \
             (SELECT COUNT(*) FROM processing_attempts a \
               WHERE a.game_id = g.id AND a.version = g.version) AS attempts, \
             (SELECT a.error FROM processing_attempts a \
               WHERE a.game_id = g.id ORDER BY a.id DESC LIMIT 1) AS last_error, \
             (SELECT a.duration_ms FROM processing_attempts a \
               WHERE a.game_id = g.id ORDER BY a.id DESC LIMIT 1) AS last_duration_ms \
             FROM games g ORDER BY g.updated_at DESC, g.id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("processing_status")?;
                Ok(TaskView {
                    game_id: row.try_get("id")?,
                    title: row.try_get("title")?,
                    processing_status: ProcessingStatus::parse(&status)
                        .unwrap_or(ProcessingStatus::Pending),
                    version: row.try_get("version")?,
                    attempts: row.try_get("attempts")?,
                    last_error: row.try_get("last_error")?,
                    last_duration_ms: row.try_get("last_duration_ms")?,
                    updated_at: from_ms(row.try_get("updated_at")?),
                })
            })
            .collect()
    }

    async fn history(&self, game_id: i64) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, version, attempt, outcome, error, started_at, finished_at, \
             duration_ms, worker FROM processing_attempts WHERE game_id = ? ORDER BY id",
        )
        .bind(game_id)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let outcome: String = row.try_get("outcome")?;
                Ok(Attempt {
                    event_id: row.try_get("event_id")?,
                    version: row.try_get("version")?,
                    attempt: row.try_get("attempt")?,
                    outcome: parse_outcome(&outcome),
                    error: row.try_get("error")?,
                    started_at: from_ms(row.try_get("started_at")?),
                    finished_at: from_ms(row.try_get("finished_at")?),
                    duration_ms: row.try_get("duration_ms")?,
                    worker: row.try_get("worker")?,
                })
            })
            .collect()
    }

    async fn is_processed(&self, event_id: &EventId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM inbox WHERE event_id = ?")
            .bind(event_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        Ok(row.is_some())
    }

    async fn start_processing(
        &self,
        game_id: i64,
        version: Option<i64>,
    ) -> Result<StartOutcome, StoreError> {
        // One statement: the version check and the status change cannot be split by a
        // concurrent update.
        let row = sqlx::query(
            "UPDATE games SET processing_status = 'processing' \
             WHERE id = ? AND version = COALESCE(?, version) \
             RETURNING version, title, image_url, \
             EXISTS (SELECT 1 FROM covers c WHERE c.game_id = games.id) AS has_cover",
        )
        .bind(game_id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        if let Some(row) = row {
            return Ok(StartOutcome::Ready(WorkItem {
                game_id,
                version: row.try_get("version")?,
                title: row.try_get("title")?,
                image_url: row.try_get("image_url")?,
                has_cover: row.try_get("has_cover")?,
            }));
        }
        let current: Option<i64> = sqlx::query_scalar("SELECT version FROM games WHERE id = ?")
            .bind(game_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        Ok(match current {
            Some(current_version) => StartOutcome::Stale { current_version },
            None => StartOutcome::Missing,
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
                "INSERT INTO inbox (event_id, processed_at) VALUES (?, ?) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(record.event_id.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Ok(FinishOutcome::AlreadyProcessed);
            }
        }
        let error = match &record.result {
            ProcessingResult::Retry { error } | ProcessingResult::Failed { error } => {
                Some(error.as_str())
            }
            ProcessingResult::Skipped { reason } => Some(reason.as_str()),
            _ => None,
        };
        let started = record.started_at.timestamp_millis();
        let finished = record.finished_at.timestamp_millis();
        sqlx::query(
            "INSERT INTO processing_attempts (event_id, game_id, version, attempt, outcome, \
             error, started_at, finished_at, duration_ms, worker) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(record.event_id.as_str())
        .bind(record.game_id)
        .bind(record.version)
        .bind(i64::from(record.attempt))
        .bind(outcome_name(attempt_outcome(&record.result)))
        .bind(error)
        .bind(started)
        .bind(finished)
        .bind((finished - started).max(0))
        .bind(&record.worker)
        .execute(&mut *tx)
        .await?;

        let status = match &record.result {
            ProcessingResult::Completed { .. } => ProcessingStatus::Completed,
            ProcessingResult::Failed { .. } => ProcessingStatus::Failed,
            ProcessingResult::CleanedUp => {
                sqlx::query(
                    "DELETE FROM thumbnails WHERE game_id = ? \
                     AND NOT EXISTS (SELECT 1 FROM games WHERE id = ?)",
                )
                .bind(record.game_id)
                .bind(record.game_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await.map_err(classify)?;
                return Ok(FinishOutcome::Applied);
            }
            ProcessingResult::Retry { .. } | ProcessingResult::Skipped { .. } => {
                tx.commit().await.map_err(classify)?;
                return Ok(FinishOutcome::Applied);
            }
        };
        // Only the version this event describes may change: a newer write wins.
        let updated =
            sqlx::query("UPDATE games SET processing_status = ? WHERE id = ? AND version = ?")
                .bind(status.as_str())
                .bind(record.game_id)
                .bind(record.version)
                .execute(&mut *tx)
                .await?;
        if updated.rows_affected() == 0 {
            tx.commit().await.map_err(classify)?;
            return Ok(FinishOutcome::Superseded);
        }
        if let ProcessingResult::Completed { thumbnail } = &record.result {
            match thumbnail {
                Some(thumbnail) => {
                    sqlx::query(
                        "INSERT INTO thumbnails (game_id, version, png, width, height) \
                         VALUES (?, ?, ?, ?, ?) ON CONFLICT (game_id) DO UPDATE SET \
                         version = excluded.version, png = excluded.png, \
                         width = excluded.width, height = excluded.height",
                    )
                    .bind(record.game_id)
                    .bind(record.version)
                    .bind(&thumbnail.png)
                    .bind(i64::from(thumbnail.width))
                    .bind(i64::from(thumbnail.height))
                    .execute(&mut *tx)
                    .await?;
                }
                // This version has no cover: an older thumbnail no longer applies.
                None => {
                    sqlx::query("DELETE FROM thumbnails WHERE game_id = ?")
                        .bind(record.game_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        let message =
            OutboxMessage::game_processed(record.game_id, record.version, status, &record.event_id);
        self.commit_with_event(tx, &message).await?;
        Ok(FinishOutcome::Applied)
    }

    fn outbox_written(&self) -> &Notify {
        &self.outbox_written
    }

    async fn pending_outbox(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, exchange, routing_key, message_id, headers, body FROM outbox \
             WHERE sent_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let headers: String = row.try_get("headers")?;
                Ok(OutboxRow {
                    id: row.try_get("id")?,
                    message: OutboxMessage {
                        exchange: row.try_get("exchange")?,
                        routing_key: row.try_get("routing_key")?,
                        message_id: row.try_get("message_id")?,
                        // Written by us from a typed map; an unreadable value would be
                        // a bug, and publishing without headers beats blocking the outbox.
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                        body: row.try_get("body")?,
                    },
                })
            })
            .collect()
    }

    async fn mark_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut sql = QueryBuilder::<Sqlite>::new("UPDATE outbox SET sent_at = ");
        sql.push_bind(now).push(" WHERE id IN (");
        let mut list = sql.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        sql.push(")");
        sql.build().execute(&self.pool).await.map_err(classify)?;
        // Now and then, drop rows sent long ago, in bounded chunks.
        if self
            .mark_sent_calls
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(256)
        {
            sqlx::query(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
                 WHERE sent_at IS NOT NULL AND sent_at < ? LIMIT 10000)",
            )
            .bind(now - KEEP_SENT_OUTBOX_MS)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        }
        Ok(())
    }

    async fn outbox_depth(&self) -> Result<u64, StoreError> {
        let depth: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(depth as u64)
    }
}

impl SqliteStore {
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
            "SELECT COUNT(*) FROM games WHERE {column} = ?"
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if used > 0 {
            return Err(StoreError::Conflict(format!(
                "{entity} {id} is used by {used} game(s); reassign or delete them first"
            )));
        }
        let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE id = ?"
        )))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if deleted.rows_affected() == 0 {
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
