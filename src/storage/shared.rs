//! What every SQL backend shares: the `GET /api/games` query, cursors, row mapping and
//! the small conversions between the schema and the domain.
//!
//! The schemas agree on column types on purpose (BIGINT ids and millisecond timestamps,
//! INTEGER years, TEXT, BLOB/BYTEA/LONGBLOB), so one mapping reads a row of any backend;
//! `EXISTS` is a boolean on PostgreSQL and an integer elsewhere, which sqlx decodes as a
//! `bool` on each. Each backend file keeps only what truly differs: placeholders, transaction
//! start, locking and error codes.

use super::{
    Attempt, AttemptOutcome, Cover, GamePage, GameQuery, GameSort, OutboxMessage, PendingGame,
    ProcessingRecord, ProcessingResult, ReceivedMessage, StoreError, TaskView, WorkItem,
};
use crate::domain::{Game, Genre, Platform, ProcessingStatus};
use crate::processing::thumbnail::Thumbnail;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};
use std::sync::LazyLock;

/// Sent outbox rows are kept this long for inspection, then pruned.
pub(super) const KEEP_SENT_OUTBOX_MS: i64 = 60 * 60 * 1000;

/// Sent rows are pruned on one `mark_sent` in this many, in bounded chunks.
pub(super) const PRUNE_EVERY: u64 = 256;

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(super) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Connection-level failures mean "unavailable, retry later" on every backend.
pub(super) fn is_connection_error(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

/// Appends `(v1, v2, …)` to `sql`, each value bound; `values` must not be empty.
pub(super) fn push_list<DB: Database, T>(
    sql: &mut QueryBuilder<DB>,
    values: impl IntoIterator<Item = T>,
) where
    for<'t> T: Encode<'t, DB> + Type<DB>,
{
    sql.push("(");
    let mut list = sql.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    list.push_unseparated(")");
}

pub(super) const GAME_COLUMNS: &str = "SELECT g.id, g.title, g.platform_id, \
     p.name AS platform_name, g.genre_id, gr.name AS genre_name, g.developer, \
     g.release_year, g.year_category, g.description, g.image_url, g.processing_status, \
     g.version, g.created_at, g.updated_at, \
     EXISTS (SELECT 1 FROM thumbnails t WHERE t.game_id = g.id) AS has_thumbnail \
     FROM games g JOIN platforms p ON p.id = g.platform_id JOIN genres gr ON gr.id = g.genre_id";

/// [`GAME_COLUMNS`] of the games an INSERT into `games` writes: its `RETURNING` clause.
pub(super) const RETURNING_GAME: &str = "RETURNING id, title, platform_id, \
     (SELECT p.name FROM platforms p WHERE p.id = games.platform_id) AS platform_name, \
     genre_id, (SELECT gr.name FROM genres gr WHERE gr.id = games.genre_id) AS genre_name, \
     developer, release_year, year_category, description, image_url, processing_status, \
     version, created_at, updated_at, \
     EXISTS (SELECT 1 FROM thumbnails t WHERE t.game_id = games.id) AS has_thumbnail";

/// One game by id (`$1`; SQLite reads `$1` as the first parameter too).
pub(super) static GAME_BY_ID: LazyLock<String> =
    LazyLock::new(|| format!("{GAME_COLUMNS} WHERE g.id = $1"));

/// Typed column access for the shared mapping, implemented for every backend's row.
pub trait Columns {
    fn int(&self, column: &str) -> sqlx::Result<i64>;
    fn opt_int(&self, column: &str) -> sqlx::Result<Option<i64>>;
    fn year(&self, column: &str) -> sqlx::Result<i32>;
    fn opt_year(&self, column: &str) -> sqlx::Result<Option<i32>>;
    fn text(&self, column: &str) -> sqlx::Result<String>;
    fn opt_text(&self, column: &str) -> sqlx::Result<Option<String>>;
    fn flag(&self, column: &str) -> sqlx::Result<bool>;
    fn bytes(&self, column: &str) -> sqlx::Result<Vec<u8>>;
    fn time(&self, column: &str) -> sqlx::Result<DateTime<Utc>> {
        self.int(column).map(from_ms)
    }
}

/// The methods of [`Columns`], each a call of the row's own generic getter `$get`,
/// which decodes the column as the method's type.
macro_rules! typed_columns {
    ($get:ident) => {
        fn int(&self, column: &str) -> sqlx::Result<i64> {
            self.$get(column)
        }
        fn opt_int(&self, column: &str) -> sqlx::Result<Option<i64>> {
            self.$get(column)
        }
        fn year(&self, column: &str) -> sqlx::Result<i32> {
            self.$get(column)
        }
        fn opt_year(&self, column: &str) -> sqlx::Result<Option<i32>> {
            self.$get(column)
        }
        fn text(&self, column: &str) -> sqlx::Result<String> {
            self.$get(column)
        }
        fn opt_text(&self, column: &str) -> sqlx::Result<Option<String>> {
            self.$get(column)
        }
        fn flag(&self, column: &str) -> sqlx::Result<bool> {
            self.$get(column)
        }
        fn bytes(&self, column: &str) -> sqlx::Result<Vec<u8>> {
            self.$get(column)
        }
    };
}
pub(super) use typed_columns;

impl<R> Columns for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    typed_columns!(try_get);
}

/// A row's `processing_status` (the schema allows only the four names).
pub(super) fn status(row: &impl Columns) -> sqlx::Result<ProcessingStatus> {
    let status = row.text("processing_status")?;
    Ok(ProcessingStatus::parse(&status).unwrap_or(ProcessingStatus::Pending))
}

/// A row of [`GAME_COLUMNS`].
pub(super) fn game_from_row(row: &impl Columns) -> Result<Game, StoreError> {
    let id = row.int("id")?;
    Ok(Game {
        id,
        title: row.text("title")?,
        platform_id: row.int("platform_id")?,
        platform_name: row.text("platform_name")?,
        genre_id: row.int("genre_id")?,
        genre_name: row.text("genre_name")?,
        developer: row.text("developer")?,
        release_year: row.year("release_year")?,
        year_category: row.text("year_category")?,
        description: row.text("description")?,
        image_url: row.opt_text("image_url")?,
        processing_status: status(row)?,
        version: row.int("version")?,
        thumbnail_url: row
            .flag("has_thumbnail")?
            .then(|| format!("/api/games/{id}/thumbnail")),
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(super) fn platform_from_row(row: &impl Columns) -> Result<Platform, StoreError> {
    Ok(Platform {
        id: row.int("id")?,
        name: row.text("name")?,
        manufacturer: row.opt_text("manufacturer")?,
        release_year: row.opt_year("release_year")?,
    })
}

pub(super) fn genre_from_row(row: &impl Columns) -> Result<Genre, StoreError> {
    Ok(Genre {
        id: row.int("id")?,
        name: row.text("name")?,
        description: row.opt_text("description")?,
    })
}

pub(super) fn cover_from_row(row: &impl Columns) -> Result<Cover, StoreError> {
    Ok(Cover {
        content_type: row.text("content_type")?,
        bytes: row.bytes("bytes")?,
    })
}

pub(super) fn thumbnail_from_row(row: &impl Columns) -> Result<Thumbnail, StoreError> {
    Ok(Thumbnail {
        png: row.bytes("png")?,
        width: row.int("width")? as u32,
        height: row.int("height")? as u32,
    })
}

pub(super) fn pending_game_from_row(row: &impl Columns) -> Result<PendingGame, StoreError> {
    Ok(PendingGame {
        id: row.int("id")?,
        title: row.text("title")?,
        processing_status: ProcessingStatus::Pending,
    })
}

/// The query behind [`task_from_row`]; `$1` is the limit.
pub(super) const TASKS: &str = "SELECT g.id, g.title, g.processing_status, g.version, \
     g.updated_at, \
     (SELECT COUNT(*) FROM processing_attempts a \
       WHERE a.game_id = g.id AND a.version = g.version) AS attempts, \
     (SELECT a.error FROM processing_attempts a \
       WHERE a.game_id = g.id ORDER BY a.id DESC LIMIT 1) AS last_error, \
     (SELECT a.duration_ms FROM processing_attempts a \
       WHERE a.game_id = g.id ORDER BY a.id DESC LIMIT 1) AS last_duration_ms \
     FROM games g ORDER BY g.updated_at DESC, g.id DESC LIMIT $1";

pub(super) fn task_from_row(row: &impl Columns) -> Result<TaskView, StoreError> {
    Ok(TaskView {
        game_id: row.int("id")?,
        title: row.text("title")?,
        processing_status: status(row)?,
        version: row.int("version")?,
        attempts: row.int("attempts")?,
        last_error: row.opt_text("last_error")?,
        last_duration_ms: row.opt_int("last_duration_ms")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(super) fn attempt_from_row(row: &impl Columns) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        event_id: row.text("event_id")?,
        version: row.int("version")?,
        attempt: row.int("attempt")?,
        outcome: parse_outcome(&row.text("outcome")?),
        error: row.opt_text("error")?,
        started_at: row.time("started_at")?,
        finished_at: row.time("finished_at")?,
        duration_ms: row.int("duration_ms")?,
        worker: row.opt_text("worker")?,
        trace_id: row.opt_text("trace_id")?,
    })
}

/// A game's row as the start of processing reads it: what the worker needs.
pub(super) fn work_item_from_row(game_id: i64, row: &impl Columns) -> Result<WorkItem, StoreError> {
    Ok(WorkItem {
        game_id,
        version: row.int("version")?,
        title: row.text("title")?,
        image_url: row.opt_text("image_url")?,
        has_cover: row.flag("has_cover")?,
    })
}

/// A row of `received_messages`; the body was stored as JSON text.
pub(super) fn received_from_row(row: &impl Columns) -> Result<ReceivedMessage, StoreError> {
    let headers = row.text("headers")?;
    let body = row.bytes("body")?;
    Ok(ReceivedMessage {
        subscriber: row.text("subscriber")?,
        message_id: row.text("message_id")?,
        exchange: row.text("exchange")?,
        routing_key: row.text("routing_key")?,
        headers: serde_json::from_str(&headers).unwrap_or_default(),
        body: serde_json::from_slice(&body).unwrap_or_default(),
        received_at: row.time("received_at")?,
    })
}

/// An outbox row's id and message.
pub(super) fn outbox_from_row(row: &impl Columns) -> Result<(i64, OutboxMessage), StoreError> {
    let headers = row.text("headers")?;
    let message = OutboxMessage {
        exchange: row.text("exchange")?,
        routing_key: row.text("routing_key")?,
        message_id: row.text("message_id")?,
        // Written by us from a typed map; an unreadable value would be a bug, and
        // publishing without headers beats blocking the outbox.
        headers: serde_json::from_str(&headers).unwrap_or_default(),
        body: row.bytes("body")?,
    };
    Ok((row.int("id")?, message))
}

pub(super) fn headers_json(message: &OutboxMessage) -> String {
    serde_json::to_string(&message.headers).expect("headers serialize")
}

/// SQLite's full-text tables of the games' titles and developers (FTS5), which
/// `?search=` reads instead of scanning every game with `LIKE`
/// ([`Dialect::FULL_TEXT`]).
///
/// [`Dialect::FULL_TEXT`]: super::sql::Dialect::FULL_TEXT
#[derive(Debug, Clone, Copy)]
pub struct FullText {
    /// Tokenized in trigrams: matches a term of three characters or more as a
    /// substring, ignoring case.
    pub trigrams: &'static str,
    /// Tokenized in words (`unicode61`): finds the games that hold a term's inner
    /// words, far fewer than those that share its trigrams in a large catalog.
    pub words: &'static str,
}

/// `GET /api/games` as one query, written to `sql`: filters, keyset position, order and
/// limit. `like` is the backend's case-insensitive `LIKE` (SQLite's `LIKE` already
/// ignores ASCII case); `full_text` names its full-text tables, if it has them.
pub(super) fn games_query<Q: QuerySink>(
    sql: &mut Q,
    query: &GameQuery,
    like: &str,
    full_text: Option<FullText>,
) -> Result<(), StoreError> {
    sql.push(GAME_COLUMNS).push(" WHERE 1 = 1");
    match (&query.search, full_text) {
        (Some(search), Some(FullText { trigrams, words })) if search.chars().count() >= 3 => {
            match words_query(search) {
                // The word index narrows a large catalog to far fewer games than
                // share the term's trigrams; `LIKE` keeps those that hold the term.
                Some(words_query) => {
                    sql.push(format_args!(
                        " AND g.id IN (SELECT rowid FROM {words} WHERE {words} MATCH "
                    ))
                    .push_text(words_query)
                    .push(")");
                    push_like(sql, like, search);
                }
                // A trigram index matches a phrase of three characters or more as a
                // substring, ignoring case; inside the phrase's quotes only a quote
                // is special.
                None => {
                    sql.push(format_args!(
                        " AND g.id IN (SELECT rowid FROM {trigrams} WHERE {trigrams} MATCH "
                    ))
                    .push_text(format!("\"{}\"", search.replace('"', "\"\"")))
                    .push(")");
                }
            }
        }
        (Some(search), _) => push_like(sql, like, search),
        (None, _) => {}
    }
    if let Some(id) = query.platform_id {
        sql.push(" AND g.platform_id = ").push_int(id);
    }
    if let Some(id) = query.genre_id {
        sql.push(" AND g.genre_id = ").push_int(id);
    }
    if let Some(decade) = &query.year_category {
        sql.push(" AND g.year_category = ")
            .push_text(decade.clone());
    }
    if let Some(status) = query.status {
        sql.push(" AND g.processing_status = ")
            .push_text(status.as_str().to_owned());
    }
    let sort = query.sort;
    let column = sort.column();
    let (direction, comparison) = if sort.descending() {
        ("DESC", "<")
    } else {
        ("ASC", ">")
    };
    if let Some(cursor) = query.page.as_ref().and_then(|p| p.cursor.as_deref()) {
        let cursor = decode_cursor(sort, cursor)?;
        sql.push(format_args!(" AND ({column}, g.id) {comparison} ("));
        match cursor.v {
            serde_json::Value::String(text) => sql.push_text(text),
            value => sql.push_int(value.as_i64().unwrap_or_default()),
        };
        sql.push(", ").push_int(cursor.id).push(")");
    }
    sql.push(format_args!(
        " ORDER BY {column} {direction}, g.id {direction}"
    ));
    if let Some(page) = &query.page {
        // One row more than asked tells whether a next page exists. Written into the
        // statement, not bound: SQLite compiled the statement again on every run when
        // the limit was a parameter (13% of the server's time in a list-only load, by
        // perf). The value is a number we computed, and each page size is one statement
        // in the connection's cache.
        sql.push(format_args!(" LIMIT {}", i64::from(page.limit) + 1));
    }
    Ok(())
}

/// `AND (title LIKE '%search%' OR developer LIKE '%search%')`, with `search` literal.
fn push_like<Q: QuerySink>(sql: &mut Q, like: &str, search: &str) {
    // `!` escapes the wildcards: a backslash, the usual choice, starts an escape
    // sequence in MySQL's string literals, so `ESCAPE '\'` would not parse there.
    let escaped = search
        .replace('!', "!!")
        .replace('%', "!%")
        .replace('_', "!_");
    let pattern = format!("%{escaped}%");
    sql.push(format_args!(" AND (g.title {like} "))
        .push_text(pattern.clone())
        .push(format_args!(" ESCAPE '!' OR g.developer {like} "))
        .push_text(pattern)
        .push(" ESCAPE '!')");
}

/// An FTS5 query of the words that every title or developer holding `search` holds,
/// for the word index (`unicode61`, which splits text at every ASCII character that
/// is not a letter or a digit). The words between two separators of `search` are
/// whole words of such a text, one after the other: "Crimson Dragon Saga II" gives
/// the phrase `"Dragon Saga"`. The first and the last piece may be parts of longer
/// words ("XCrimson", "IIx"); with a single inner word, the last piece, if it is long
/// enough to begin few words, joins the phrase as a prefix: "Radiant Labyrinth Saga"
/// gives `"Labyrinth Saga" *`. `None` (the trigram index answers) when that leaves
/// one word alone, which may be in a large share of the catalog, or when `search` is
/// not ASCII: SQLite's `LIKE`, which then decides, ignores the case of ASCII
/// letters only, where the trigram index folds every letter's.
fn words_query(search: &str) -> Option<String> {
    if !search.is_ascii() {
        return None;
    }
    let pieces: Vec<&str> = search.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    let [_, inner @ .., last] = pieces.as_slice() else {
        return None;
    };
    // An empty piece: two separators in a row.
    let inner: Vec<&str> = inner.iter().copied().filter(|p| !p.is_empty()).collect();
    match inner.as_slice() {
        [] => None,
        [word] if last.len() >= 4 => Some(format!("\"{word} {last}\" *")),
        [_] => None,
        words => Some(format!("\"{}\"", words.join(" "))),
    }
}

/// Where [`games_query`] writes its statement: sqlx's `QueryBuilder`, or the SQL and
/// parameters of a direct read ([`super::direct`]).
pub(super) trait QuerySink {
    fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self;
    fn push_int(&mut self, value: i64) -> &mut Self;
    fn push_text(&mut self, value: String) -> &mut Self;
}

impl<DB> QuerySink for QueryBuilder<DB>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self {
        QueryBuilder::push(self, sql)
    }
    fn push_int(&mut self, value: i64) -> &mut Self {
        self.push_bind(value)
    }
    fn push_text(&mut self, value: String) -> &mut Self {
        self.push_bind(value)
    }
}

/// The page of [`games_query`]'s rows, with the cursor of its last row when more follow.
pub(super) fn games_page(query: &GameQuery, mut items: Vec<Game>) -> GamePage {
    let next_cursor = match &query.page {
        Some(page) if items.len() > page.limit as usize => {
            items.truncate(page.limit as usize);
            items.last().map(|last| encode_cursor(query.sort, last))
        }
        _ => None,
    };
    GamePage { items, next_cursor }
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

/// The `outcome` column of a processing attempt.
pub(super) fn outcome_name(result: &ProcessingResult) -> &'static str {
    match result {
        ProcessingResult::Completed { .. } | ProcessingResult::CleanedUp => "completed",
        ProcessingResult::Retry { .. } => "retry",
        ProcessingResult::Failed { .. } => "failed",
        ProcessingResult::Skipped { .. } => "skipped",
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

/// The `error` column of a processing attempt: why it failed or was skipped.
pub(super) fn attempt_error(record: &ProcessingRecord) -> Option<&str> {
    match &record.result {
        ProcessingResult::Retry { error } | ProcessingResult::Failed { error } => {
            Some(error.as_str())
        }
        ProcessingResult::Skipped { reason } => Some(reason.as_str()),
        _ => None,
    }
}

/// Why a platform or genre cannot be deleted yet.
pub(super) fn still_used(entity: &str, id: i64, used: i64) -> StoreError {
    StoreError::Conflict(format!(
        "{entity} {id} is used by {used} game(s); reassign or delete them first"
    ))
}

/// A unique constraint refused the write: the name is taken.
pub(super) fn is_duplicate(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::words_query;

    #[test]
    fn a_words_query_holds_the_words_that_stand_whole_in_the_term() {
        for (search, query) in [
            ("Crimson Dragon Saga II", Some("\"Dragon Saga\"")),
            (
                "Lunar Phoenix Frontier Advance",
                Some("\"Phoenix Frontier\""),
            ),
            ("Mega Man: X-2 Turbo", Some("\"Man X 2\"")),
            // A separator at either end makes the word beside it whole.
            (" Dragon Saga ", Some("\"Dragon Saga\"")),
            // One inner word: the last word joins it as a prefix, if long enough.
            ("Radiant Labyrinth Saga", Some("\"Labyrinth Saga\" *")),
            ("Dragon Saga ", None),
            ("Crimson Dragon II", None),
            // No inner word: the trigram index answers.
            ("Super Mario", None),
            ("\"hi\"", None),
            ("a", None),
            ("", None),
            // `LIKE` would tell "É" from "é", where the trigram index does not.
            ("Café Dragon Saga II", None),
        ] {
            assert_eq!(words_query(search).as_deref(), query, "{search:?}");
        }
    }
}
