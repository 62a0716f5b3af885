//! The catalog in SQL, written once for every backend.
//!
//! The queries are portable: numbered placeholders (`$1`, which SQLite reads too and
//! [`Dialect::sql`] turns into MySQL's `?`), integer millisecond timestamps, row-value
//! comparisons, `FOR UPDATE SKIP LOCKED`. What differs between backends is a
//! [`Dialect`]: how a write transaction starts, which error codes mean "unavailable",
//! the case-insensitive `LIKE`, how an insert reports its new id, upserts, and how a
//! read locks rows. `sqlite.rs`, `postgres.rs` and `mysql.rs` hold those and the
//! connection settings.
//!
//! A worker's status writes come in batches (see [`Store::start_processing`]), written
//! with multi-row statements built by sqlx's `QueryBuilder`, which spells each
//! backend's placeholders itself.

use super::direct::DirectReads;
use super::game_stream::{self, GameBatches};
use super::shared::{
    self, Columns, FullText, GAME_BY_ID, GAME_COLUMNS, KEEP_SENT_OUTBOX_MS, PRUNE_EVERY,
    RETURNING_GAME, now_ms, push_list,
};
use super::writer::{WriteTx, Writer};
use super::{
    Attempt, Cover, FinishOutcome, GameQuery, GameUpdate, NewGame, OutboxBacklog, OutboxMessage,
    OutboxTurn, PendingGame, PoolConfig, ProcessingRecord, ProcessingResult, PruneReport,
    ReceivedMessage, StartOutcome, StartRequest, StatusCounts, Store, StoreError, TaskView, Turn,
    WriteKind,
};
use crate::domain::{
    EventId, Game, GameAction, GameDraft, Genre, GenreDraft, Platform, PlatformDraft,
    ProcessingStatus,
};
use crate::processing::thumbnail::Thumbnail;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::Connection;
use sqlx::database::HasStatementCache;
use sqlx::error::DatabaseError;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::pool::PoolOptions;
use sqlx::query::Query;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Execute, Executor, IntoArguments, Pool,
    QueryBuilder, SqlSafeStr, SqlStr, Transaction, Type,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

/// What a backend adds to the shared SQL.
#[async_trait]
pub trait Dialect: Database + HasStatementCache {
    /// Starts a write transaction.
    const BEGIN_WRITE: &'static str;
    /// The case-insensitive `LIKE` of `?search=`.
    const LIKE: &'static str;
    /// Full-text tables of the games' titles and developers (SQLite's FTS5), that
    /// `?search=` uses for terms of three characters or more instead of scanning with
    /// `LIKE`. Backends without them use `LIKE`: PostgreSQL serves it from its pg_trgm
    /// indexes, MySQL scans.
    const FULL_TEXT: Option<FullText> = None;
    /// Plan each search for its own term instead of caching its statement. PostgreSQL
    /// gives a cached statement a generic plan after five runs, made for any term: it
    /// cannot tell that a term is selective, and walks the title index past every
    /// game instead of using the trigram indexes. Elsewhere, re-preparing only costs.
    const PLAN_EACH_SEARCH: bool = false;
    /// This backend's schema and seed data (`migrations/<backend>`).
    const MIGRATOR: Migrator;
    /// Whether a relay's turn at the outbox lasts until its rows are marked sent: on a
    /// database server, where the relays of several API instances share one outbox (see
    /// [`SqlStore::outbox_turn`]).
    const HOLD_TURN: bool;
    /// The pool size when `--db-max-connections` is not set.
    const DEFAULT_MAX_CONNECTIONS: u32;
    /// What a `SELECT` adds to lock the rows it reads until the transaction ends.
    const LOCK_ROWS: &'static str = " FOR UPDATE";
    /// Deletes up to 10,000 outbox rows sent before `$1`: a bounded chunk, so pruning
    /// never holds the relay's turn for long.
    const PRUNE_SENT_OUTBOX: &'static str = "DELETE FROM outbox WHERE id IN (SELECT id \
         FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT 10000)";
    /// Whether the database takes one write transaction at a time: writes then take
    /// turns at one connection of their own ([`Writer`]); otherwise each takes a
    /// connection of the pool.
    const ONE_WRITER: bool = false;
    /// A statement run on every new connection, for session settings the connection
    /// options cannot express.
    const SESSION_SETUP: Option<&'static str> = None;

    /// A shared statement as this backend reads it. The shared SQL numbers its
    /// placeholders (`$1`); a backend that spells them otherwise rewrites them here.
    fn sql(shared: impl SqlSafeStr) -> SqlStr {
        shared.into_sql_str()
    }

    /// The placeholder of a generated statement's `n`th parameter, where the
    /// parameters come in the order they are bound: `$n`, as the shared SQL numbers
    /// them, unless the backend reads a bare `?` as the next one.
    fn parameter(n: usize) -> String {
        format!("${n}")
    }

    /// What turns an INSERT into an upsert when a row with the unique `key` exists;
    /// a `SET` list follows.
    fn on_conflict_update(key: &str) -> String {
        format!("ON CONFLICT ({key}) DO UPDATE SET")
    }

    /// In an upsert's `SET` list: `column`'s value in the row the INSERT proposed.
    fn proposed(column: &str) -> String {
        format!("excluded.{column}")
    }

    /// Waits until no other process migrates this database, where sqlx's migrator does
    /// not ensure it. The lock is the session of the connection returned, outside the
    /// pool: closing it (or dropping it, if migrating is cut short) releases the lock.
    async fn lock_migrations(_pool: &Pool<Self>) -> Result<Option<Self::Connection>, StoreError> {
        Ok(None)
    }

    /// Whether an INSERT answers the rows it wrote (`RETURNING`). Where it does, a
    /// batch of new games is one statement; elsewhere, one per game and a read of
    /// them all.
    const RETURNS_ROWS: bool;

    /// Runs `insert`, an INSERT of one row into a table whose `id` the database
    /// assigns, and returns that id.
    async fn insert_id(
        conn: &mut Self::Connection,
        insert: Query<'static, Self, Self::Arguments>,
    ) -> sqlx::Result<i64>;

    /// Rows written by a statement (each driver has its own result type): rows the
    /// statement matched, also when it set the values they already had.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// True for an error that means "the database cannot serve now, retry later".
    fn is_unavailable(error: &dyn DatabaseError) -> bool;

    /// The name of the constraint an error is about, where the backend reports it.
    fn constraint(error: &dyn DatabaseError) -> Option<&str> {
        error.constraint()
    }

    /// Connection-level failures mean "unavailable, retry later"; the rest are bugs.
    fn classify(error: sqlx::Error) -> StoreError {
        match error {
            _ if shared::is_connection_error(&error) => StoreError::Unavailable(error.to_string()),
            sqlx::Error::Database(ref db) if Self::is_unavailable(db.as_ref()) => {
                StoreError::Unavailable(format!("database unavailable: {db}"))
            }
            other => StoreError::Database(other),
        }
    }
}

/// Runs `write` for the whole batch. When a platform or genre that does not exist
/// refused it (rolling back the whole batch), runs it again for each item alone, so
/// that only the items at fault are refused.
async fn refusing_only_the_faulty<'a, T, Written>(
    batch: &'a [T],
    write: impl Fn(&'a [T]) -> Written,
) -> Result<Vec<Result<Game, StoreError>>, StoreError>
where
    Written: Future<Output = Result<Vec<Result<Game, StoreError>>, StoreError>>,
{
    match write(batch).await {
        Err(StoreError::UnknownReference { .. }) if batch.len() > 1 => {
            let mut answers = Vec::with_capacity(batch.len());
            for item in batch {
                let answer = match write(std::slice::from_ref(item)).await {
                    Ok(mut alone) => alone.remove(0),
                    Err(refused @ StoreError::UnknownReference { .. }) => Err(refused),
                    Err(error) => return Err(error),
                };
                answers.push(answer);
            }
            Ok(answers)
        }
        Err(refused @ StoreError::UnknownReference { .. }) => Ok(vec![Err(refused)]),
        written => written,
    }
}

/// An INSERT of `rows` new games, each bound by [`SqlStore::bind_draft`] then its
/// creation and update times: parameters 1–10 for the first, 11–20 for the next…
fn games_insert<DB: Dialect>(rows: usize) -> String {
    let values = (0..rows)
        .map(|row| {
            let n = |field: usize| DB::parameter(row * 10 + field);
            let draft = (1..=8).map(n).collect::<Vec<_>>().join(", ");
            format!("({draft}, 'pending', 1, {}, {})", n(9), n(10))
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO games (title, platform_id, genre_id, developer, release_year, \
         year_category, description, image_url, processing_status, version, created_at, \
         updated_at) VALUES {values}"
    )
}

/// Runs `insert`, an INSERT of one row, with `RETURNING id`, and returns that id.
pub(super) async fn returning_id<DB>(
    conn: &mut DB::Connection,
    mut insert: Query<'static, DB, DB::Arguments>,
) -> sqlx::Result<i64>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let arguments = insert.take_arguments().map_err(sqlx::Error::Encode)?;
    let returning = AssertSqlSafe(format!("{} RETURNING id", insert.sql().as_str()));
    let row = sqlx::query_with(returning, arguments.unwrap_or_default())
        .fetch_one(conn)
        .await?;
    sqlx::Row::try_get::<i64, _>(&row, 0)
}

/// `INSERT INTO {into}` that replaces `columns` of the row whose unique `key` exists.
fn upsert<DB: Dialect>(into: &'static str, key: &'static str, columns: &[&'static str]) -> SqlStr {
    let set = columns
        .iter()
        .map(|c| format!("{c} = {}", DB::proposed(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let on_conflict = DB::on_conflict_update(key);
    DB::sql(AssertSqlSafe(format!(
        "INSERT INTO {into} {on_conflict} {set}"
    )))
}

/// A game as a finish finds it, its row locked.
struct LockedGame {
    version: i64,
    /// It has a thumbnail.
    thumbnailed: bool,
}

/// The write transactions begun for group commits' turns ([`Store::begin_turn`]), by
/// kind, each with its turn's number.
type Turns<DB> = std::sync::Mutex<HashMap<WriteKind, (u64, WriteTx<DB>)>>;

/// The catalog on one SQL backend: [`super::sqlite::SqliteStore`],
/// [`super::postgres::PgStore`] or [`super::mysql::MySqlStore`].
pub struct SqlStore<DB: Database>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    pub(super) pool: Pool<DB>,
    /// Where writes get their connection: `pool` itself, or on SQLite one connection
    /// held for them ([`Dialect::ONE_WRITER`]).
    pub(super) writer: Writer<DB>,
    outbox_written: Notify,
    claims: Arc<AtomicU64>,
    /// Where [`Store::game`] and [`Store::list_games`] read, if not through `pool`: on
    /// SQLite, rusqlite without sqlx's connection threads (see [`DirectReads`]).
    direct: Option<DirectReads>,
    /// A task of the backend's that lives as long as the store: on SQLite, the
    /// checkpoints beside the writer (see [`super::sqlite`]). Held to be dropped.
    _background: Option<AbortOnDropHandle<()>>,
    /// The transactions [`Store::begin_turn`] began, each for the next batch of its kind.
    turns: Arc<Turns<DB>>,
    next_turn: AtomicU64,
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// The connection options `DATABASE_URL` names.
    pub(super) fn parse_url(url: &str) -> Result<ConnectOptions<DB>, StoreError> {
        ConnectOptions::<DB>::from_str(url).map_err(|e| {
            let url = super::redacted(url);
            StoreError::Unavailable(format!("invalid DATABASE_URL {url}: {e}"))
        })
    }

    /// Opens a pool with `config`'s limits (the backend's default size unless set).
    pub(super) async fn open(
        options: ConnectOptions<DB>,
        config: PoolConfig,
    ) -> Result<Self, StoreError> {
        let pool_of = |size: u32| {
            let mut pool = PoolOptions::<DB>::new()
                .max_connections(size)
                // Fail fast while the database is down or saturated: a request gets its
                // 503 in seconds instead of queueing behind a pool that cannot connect.
                .acquire_timeout(config.acquire_timeout);
            if let Some(setup) = DB::SESSION_SETUP {
                pool = pool.after_connect(move |conn, _| {
                    Box::pin(async move { conn.execute(setup).await.map(drop) })
                });
            }
            pool
        };
        let pool = pool_of(config.size::<DB>())
            .connect_with(options.clone())
            .await
            .map_err(DB::classify)?;
        let held = if DB::ONE_WRITER {
            let one = pool_of(1).connect_with(options).await;
            Some(one.map_err(DB::classify)?)
        } else {
            None
        };
        let writer = Writer::new(&pool, held, config.acquire_timeout);
        Ok(Self {
            pool,
            writer,
            outbox_written: Notify::new(),
            claims: Arc::default(),
            direct: None,
            _background: None,
            turns: Default::default(),
            next_turn: AtomicU64::new(0),
        })
    }

    pub(super) fn with_direct_reads(self, direct: Option<DirectReads>) -> Self {
        Self { direct, ..self }
    }

    /// Runs `task`, given the pool, for as long as the store lives.
    pub(super) fn with_background<Task>(self, task: impl FnOnce(Pool<DB>) -> Task) -> Self
    where
        Task: Future<Output = ()> + Send + 'static,
    {
        let task = tokio::spawn(task(self.pool.clone()));
        Self {
            _background: Some(AbortOnDropHandle::new(task)),
            ..self
        }
    }
}

impl PoolConfig {
    /// Connections in the pool: as set, or the backend's default.
    pub(super) fn size<DB: Dialect>(&self) -> u32 {
        self.max_connections.unwrap_or(DB::DEFAULT_MAX_CONNECTIONS)
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
    async fn begin_write(&self) -> Result<WriteTx<DB>, StoreError> {
        self.writer.begin().await.map_err(DB::classify)
    }

    /// The write transaction of a batch of `kind`: the one its group commit began
    /// while it waited for its turn ([`Store::begin_turn`]), or a new one.
    async fn begin_batch(&self, kind: WriteKind) -> Result<WriteTx<DB>, StoreError> {
        let begun = self.turns.lock().expect("never poisoned").remove(&kind);
        match begun {
            Some((_, tx)) => Ok(tx),
            None => self.begin_write().await,
        }
    }

    /// Commits the update of a platform or genre with its `{entity}.updated` event;
    /// when the update matched no row, the entity does not exist.
    async fn commit_update(
        &self,
        tx: WriteTx<DB>,
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
        mut tx: WriteTx<DB>,
        message: &OutboxMessage,
    ) -> Result<(), StoreError> {
        Self::insert_outbox(&mut tx, std::slice::from_ref(message)).await?;
        tx.commit().await.map_err(DB::classify)?;
        self.outbox_written.notify_one();
        Ok(())
    }

    async fn fetch_game(conn: &mut DB::Connection, id: i64) -> Result<Option<Game>, StoreError> {
        let sql = DB::sql(GAME_BY_ID.as_str());
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(conn)
            .await
            .map_err(DB::classify)?;
        row.as_ref().map(shared::game_from_row).transpose()
    }

    /// Binds a draft's fields as `$1`–`$8` of a game's INSERT or UPDATE: title,
    /// platform, genre, developer, year, decade, description, image URL.
    fn bind_draft<'q>(
        query: Query<'q, DB, DB::Arguments>,
        draft: &GameDraft,
    ) -> Query<'q, DB, DB::Arguments> {
        query
            .bind(draft.title.as_str().to_owned())
            .bind(draft.platform_id)
            .bind(draft.genre_id)
            .bind(draft.developer.as_str().to_owned())
            .bind(draft.release_year.get())
            .bind(draft.release_year.category())
            .bind(draft.description.clone())
            .bind(draft.image_url.as_ref().map(|url| url.as_str().to_owned()))
    }

    /// Inserts the games of `batch` with their `game.created` events in one
    /// transaction: one statement for all the games, answering them as written
    /// (`RETURNING`), then one outbox insert. Where the backend does not return rows,
    /// one statement per game, then one read of them all. A foreign key refusing a
    /// platform or genre rolls it all back; the error names the field of the
    /// statement's first draft, which is the one at fault when the statement has one
    /// row ([`Store::create_games`] retries a refused batch a game at a time).
    async fn insert_games(&self, batch: &[NewGame]) -> Result<Vec<Game>, StoreError> {
        let mut tx = self.begin_batch(WriteKind::Creates).await?;
        let now = now_ms();
        let insert = |chunk: &[NewGame], returning: &str| {
            let sql = format!("{} {returning}", games_insert::<DB>(chunk.len()));
            let mut insert = sqlx::query(DB::sql(AssertSqlSafe(sql)));
            for NewGame { draft, .. } in chunk {
                insert = Self::bind_draft(insert, draft).bind(now).bind(now);
            }
            insert
        };
        let games = if DB::RETURNS_ROWS {
            let written = insert(batch, RETURNING_GAME).fetch_all(&mut *tx).await;
            let rows = match written {
                Ok(rows) => rows,
                Err(error) => return Err(self.refused_write(tx, error, &batch[0].draft).await),
            };
            let mut games = rows
                .iter()
                .map(shared::game_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            // `RETURNING` need not keep the order of the `VALUES`, but the rows took
            // their ids in that order (SQLite: one past the largest rowid, under the
            // write lock; PostgreSQL: the sequence, row by row).
            games.sort_unstable_by_key(|game| game.id);
            games
        } else {
            let mut ids = Vec::with_capacity(batch.len());
            for new in batch.chunks(1) {
                match DB::insert_id(&mut tx, insert(new, "")).await {
                    Ok(id) => ids.push(id),
                    Err(error) => return Err(self.refused_write(tx, error, &new[0].draft).await),
                }
            }
            Self::read_back(&mut tx, &ids).await?
        };
        let events: Vec<OutboxMessage> = games
            .iter()
            .zip(batch)
            .map(|(game, new)| {
                OutboxMessage::game_event(game, GameAction::Create, &new.event)
                    .traced(new.trace.as_deref())
            })
            .collect();
        Self::insert_outbox(&mut tx, &events).await?;
        tx.commit().await.map_err(DB::classify)?;
        self.outbox_written.notify_one();
        Ok(games)
    }

    /// The games `ids` names, in that order, as [`GAME_COLUMNS`] reads them.
    async fn read_back(conn: &mut DB::Connection, ids: &[i64]) -> Result<Vec<Game>, StoreError> {
        let mut sql = QueryBuilder::<DB>::new(GAME_COLUMNS);
        sql.push(" WHERE g.id IN ");
        push_list(&mut sql, ids.iter().copied());
        let rows = sql.build().fetch_all(conn).await.map_err(DB::classify)?;
        let mut written = rows
            .iter()
            .map(|row| shared::game_from_row(row).map(|game| (game.id, game)))
            .collect::<Result<HashMap<_, _>, _>>()?;
        ids.iter()
            .map(|id| {
                written.remove(id).ok_or(StoreError::NotFound {
                    entity: "game",
                    id: *id,
                })
            })
            .collect()
    }

    /// Updates the games of `batch`, each read back right after its UPDATE (a game
    /// may come twice), with their `game.updated` events, in one transaction. The rows
    /// are updated in the order of their ids, as the workers lock them, so that two
    /// transactions never wait for each other's rows. A game that does not exist is
    /// answered `NotFound` and the others go on; a foreign key refusing a platform or
    /// genre rolls it all back, as for [`Self::insert_games`].
    async fn write_updates(
        &self,
        batch: &[GameUpdate],
    ) -> Result<Vec<Result<Game, StoreError>>, StoreError> {
        let mut tx = self.begin_batch(WriteKind::Updates).await?;
        let now = now_ms();
        let mut by_id: Vec<usize> = (0..batch.len()).collect();
        by_id.sort_by_key(|&index| batch[index].id);
        let mut answers: Vec<Option<Result<Game, StoreError>>> =
            batch.iter().map(|_| None).collect();
        let mut events = Vec::with_capacity(batch.len());
        for index in by_id {
            let GameUpdate {
                id,
                draft,
                event,
                trace,
            } = &batch[index];
            let update = sqlx::query(DB::sql(
                "UPDATE games SET title = $1, platform_id = $2, genre_id = $3, developer = $4, \
                 release_year = $5, year_category = $6, description = $7, image_url = $8, \
                 processing_status = 'pending', version = version + 1, updated_at = $9 \
                 WHERE id = $10",
            ));
            let updated = Self::bind_draft(update, draft)
                .bind(now)
                .bind(*id)
                .execute(&mut *tx)
                .await;
            let updated = match updated {
                Ok(updated) => updated,
                Err(error) => return Err(self.refused_write(tx, error, draft).await),
            };
            let game = match DB::rows_affected(&updated) {
                0 => None,
                _ => Self::fetch_game(&mut tx, *id).await?,
            };
            answers[index] = Some(match game {
                Some(game) => {
                    events.push(
                        OutboxMessage::game_event(&game, GameAction::Update, event)
                            .traced(trace.as_deref()),
                    );
                    Ok(game)
                }
                None => Err(StoreError::NotFound {
                    entity: "game",
                    id: *id,
                }),
            });
        }
        Self::insert_outbox(&mut tx, &events).await?;
        tx.commit().await.map_err(DB::classify)?;
        self.outbox_written.notify_one();
        Ok(answers
            .into_iter()
            .map(|answer| answer.expect("every update of the batch ran"))
            .collect())
    }

    /// Inserts `messages` into the outbox, in order, with one statement.
    async fn insert_outbox(
        conn: &mut DB::Connection,
        messages: &[OutboxMessage],
    ) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut sql = QueryBuilder::<DB>::new(
            "INSERT INTO outbox (exchange, routing_key, message_id, headers, body, created_at) ",
        );
        sql.push_values(messages, |mut row, message| {
            row.push_bind(message.exchange.clone())
                .push_bind(message.routing_key.clone())
                .push_bind(message.message_id.clone())
                .push_bind(shared::headers_json(message))
                .push_bind(message.body.clone())
                .push_bind(now);
        });
        sql.build().execute(conn).await.map_err(DB::classify)?;
        Ok(())
    }

    /// Fails with the field at fault when the draft names a platform or genre that
    /// does not exist ([`Self::refused_write`] asks, after a foreign key refused a write).
    async fn check_references(
        conn: &mut DB::Connection,
        draft: &GameDraft,
    ) -> Result<(), StoreError> {
        for (table, field, entity, id) in [
            ("platforms", "platformId", "platform", draft.platform_id),
            ("genres", "genreId", "genre", draft.genre_id),
        ] {
            let sql = DB::sql(AssertSqlSafe(format!(
                "SELECT 1 FROM {table} WHERE id = $1"
            )));
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

    /// What to tell the client when a game's write failed with `error`. The foreign keys
    /// are the check that the draft's platform and genre exist: a write that names a
    /// missing one is refused by them, and only then are the references looked up, to
    /// name the field at fault (SQLite's error does not name the constraint). This
    /// spares every write two queries while it holds the write lock. Should the lookup
    /// find both (one came back meanwhile), the constraint's name decides; every schema
    /// names it `games_genre_id_fkey` (PostgreSQL's default). The write's transaction
    /// `tx` is rolled back first, so that the lookup does not wait behind its locks.
    async fn refused_write(
        &self,
        tx: WriteTx<DB>,
        error: sqlx::Error,
        draft: &GameDraft,
    ) -> StoreError {
        drop(tx);
        match &error {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                let looked_up = match self.pool.acquire().await {
                    Ok(mut conn) => Self::check_references(&mut conn, draft).await,
                    Err(e) => Err(DB::classify(e)),
                };
                match looked_up {
                    Err(missing @ StoreError::UnknownReference { .. }) => missing,
                    _ if DB::constraint(db.as_ref()) == Some("games_genre_id_fkey") => {
                        StoreError::UnknownReference {
                            field: "genreId",
                            entity: "genre",
                            id: draft.genre_id,
                        }
                    }
                    _ => StoreError::UnknownReference {
                        field: "platformId",
                        entity: "platform",
                        id: draft.platform_id,
                    },
                }
            }
            _ => DB::classify(error),
        }
    }

    /// Which of `events` the inbox holds: processed already.
    async fn in_inbox<'e>(
        conn: &mut DB::Connection,
        events: impl Iterator<Item = &'e str>,
    ) -> Result<HashSet<String>, StoreError> {
        let events: Vec<String> = events.map(str::to_owned).collect();
        if events.is_empty() {
            return Ok(HashSet::new());
        }
        let mut sql = QueryBuilder::<DB>::new("SELECT event_id FROM inbox WHERE event_id IN ");
        push_list(&mut sql, events);
        let rows = sql.build().fetch_all(conn).await.map_err(DB::classify)?;
        Ok(rows
            .iter()
            .map(|row| row.text("event_id"))
            .collect::<sqlx::Result<_>>()?)
    }

    /// Claims `events` in the inbox, in key order, as concurrent batches must take the
    /// keys' locks in one order: which of them it held already, processed by another
    /// delivery. `None` where the backend has no `RETURNING` (MySQL) and another
    /// delivery's claim of one of them committed while this one was being written: the
    /// transaction is then refused as a whole.
    async fn claim_events<'e>(
        conn: &mut DB::Connection,
        events: impl Iterator<Item = &'e EventId>,
    ) -> Result<Option<HashSet<String>>, StoreError> {
        let mut events: Vec<String> = events.map(|event| event.as_str().to_owned()).collect();
        events.sort_unstable();
        events.dedup();
        if events.is_empty() {
            return Ok(Some(HashSet::new()));
        }
        let now = now_ms();
        let insert = |events: &[String]| {
            let mut sql = QueryBuilder::<DB>::new("INSERT INTO inbox (event_id, processed_at) ");
            sql.push_values(events, |mut row, event| {
                row.push_bind(event.clone()).push_bind(now);
            });
            sql
        };
        if DB::RETURNS_ROWS {
            // One statement: the events it did not insert were there. A concurrent
            // claim of one of them is waited for, then counts as there.
            let mut sql = insert(&events);
            sql.push(" ON CONFLICT (event_id) DO NOTHING RETURNING event_id");
            let rows = sql.build().fetch_all(conn).await.map_err(DB::classify)?;
            let claimed = rows
                .iter()
                .map(|row| row.text("event_id"))
                .collect::<sqlx::Result<HashSet<String>>>()?;
            return Ok(Some(
                events
                    .into_iter()
                    .filter(|e| !claimed.contains(e))
                    .collect(),
            ));
        }
        // MySQL has no `ON CONFLICT DO NOTHING`, and its `INSERT IGNORE` would also turn
        // other errors into warnings: a read, then a plain INSERT of the others, which
        // says "duplicate" when a concurrent claim came first.
        let seen = Self::in_inbox(conn, events.iter().map(String::as_str)).await?;
        let new: Vec<String> = events.into_iter().filter(|e| !seen.contains(e)).collect();
        if !new.is_empty() {
            match insert(&new).build().execute(&mut *conn).await {
                Err(error) if shared::is_duplicate(&error) => return Ok(None),
                other => other.map_err(DB::classify)?,
            };
        }
        Ok(Some(seen))
    }

    /// Each of `games` that exists, as a finish settles it, its row locked until the
    /// transaction ends (in id order, as every batch locks them).
    async fn lock_games(
        conn: &mut DB::Connection,
        games: impl IntoIterator<Item = i64>,
    ) -> Result<HashMap<i64, LockedGame>, StoreError> {
        let mut sql = QueryBuilder::<DB>::new(
            "SELECT id, version, \
             EXISTS (SELECT 1 FROM thumbnails t WHERE t.game_id = games.id) AS thumbnailed \
             FROM games WHERE id IN ",
        );
        push_list(&mut sql, games);
        sql.push(" ORDER BY id").push(DB::LOCK_ROWS);
        let rows = sql.build().fetch_all(conn).await.map_err(DB::classify)?;
        Ok(rows
            .iter()
            .map(|row| {
                let game = LockedGame {
                    version: row.int("version")?,
                    thumbnailed: row.flag("thumbnailed")?,
                };
                Ok((row.int("id")?, game))
            })
            .collect::<sqlx::Result<_>>()?)
    }

    /// Writes a batch of finished attempts in one transaction (see
    /// [`Store::finish_processing`]), or nothing: `None` when the inbox refused one of
    /// the events, claimed meanwhile by a concurrent delivery.
    async fn finish_batch(
        &self,
        records: &[ProcessingRecord],
    ) -> Result<Option<Vec<FinishOutcome>>, StoreError> {
        let mut tx = self.begin_batch(WriteKind::Finishes).await?;
        // The inbox row is the exactly-once guard: it commits with the effect. A final
        // result whose event the inbox held, or an earlier record of this batch claims,
        // comes from a duplicate delivery: nothing of it is written.
        let finals = records.iter().filter(|r| r.result.is_final());
        let Some(seen) = Self::claim_events(&mut tx, finals.map(|r| &r.event_id)).await? else {
            return Ok(None);
        };
        let mut claims = HashSet::new();
        let duplicate: Vec<bool> = records
            .iter()
            .map(|r| {
                let event = r.event_id.as_str();
                r.result.is_final() && (seen.contains(event) || !claims.insert(event))
            })
            .collect();
        let written: Vec<&ProcessingRecord> = records
            .iter()
            .zip(&duplicate)
            .filter(|(_, duplicate)| !**duplicate)
            .map(|(record, _)| record)
            .collect();
        if !written.is_empty() {
            let mut sql = QueryBuilder::<DB>::new(
                "INSERT INTO processing_attempts (event_id, game_id, version, attempt, \
                 outcome, error, started_at, finished_at, duration_ms, worker, trace_id) ",
            );
            sql.push_values(&written, |mut row, record| {
                let started = record.started_at.timestamp_millis();
                let finished = record.finished_at.timestamp_millis();
                row.push_bind(record.event_id.as_str().to_owned())
                    .push_bind(record.game_id)
                    .push_bind(record.version)
                    .push_bind(i64::from(record.attempt))
                    .push_bind(shared::outcome_name(&record.result).to_owned())
                    .push_bind(shared::attempt_error(record).map(str::to_owned))
                    .push_bind(started)
                    .push_bind(finished)
                    .push_bind((finished - started).max(0))
                    .push_bind(record.worker.clone())
                    .push_bind(record.trace_id.clone());
            });
            sql.build().execute(&mut *tx).await.map_err(DB::classify)?;
        }

        // Only the version a record describes may change: a newer write wins.
        let settling: Vec<(&ProcessingRecord, ProcessingStatus)> = written
            .iter()
            .filter_map(|record| match record.result {
                ProcessingResult::Completed { .. } => Some((*record, ProcessingStatus::Completed)),
                ProcessingResult::Failed { .. } => Some((*record, ProcessingStatus::Failed)),
                _ => None,
            })
            .collect();
        let current = if settling.is_empty() {
            HashMap::new()
        } else {
            Self::lock_games(&mut tx, settling.iter().map(|(r, _)| r.game_id)).await?
        };
        let is_current = |record: &ProcessingRecord| {
            current
                .get(&record.game_id)
                .is_some_and(|game| game.version == record.version)
        };
        let applied: Vec<(&ProcessingRecord, ProcessingStatus)> = settling
            .into_iter()
            .filter(|(record, _)| is_current(record))
            .collect();
        for status in [ProcessingStatus::Completed, ProcessingStatus::Failed] {
            let games: Vec<i64> = applied
                .iter()
                .filter(|(_, s)| *s == status)
                .map(|(r, _)| r.game_id)
                .collect();
            if !games.is_empty() {
                let mut sql = QueryBuilder::<DB>::new("UPDATE games SET processing_status = ");
                sql.push_bind(status.as_str().to_owned())
                    .push(" WHERE id IN ");
                push_list(&mut sql, games);
                sql.build().execute(&mut *tx).await.map_err(DB::classify)?;
            }
        }
        // A completed version stores its thumbnail, or drops an older one (no cover)
        // if there is one: only a finish holding the game's lock writes it. A deleted
        // game's goes.
        let mut uncovered = Vec::new();
        for (record, _) in &applied {
            match &record.result {
                ProcessingResult::Completed {
                    thumbnail: Some(thumbnail),
                } => {
                    sqlx::query(upsert::<DB>(
                        "thumbnails (game_id, version, png, width, height) \
                         VALUES ($1, $2, $3, $4, $5)",
                        "game_id",
                        &["version", "png", "width", "height"],
                    ))
                    .bind(record.game_id)
                    .bind(record.version)
                    .bind(thumbnail.png.clone())
                    .bind(i64::from(thumbnail.width))
                    .bind(i64::from(thumbnail.height))
                    .execute(&mut *tx)
                    .await
                    .map_err(DB::classify)?;
                }
                ProcessingResult::Completed { thumbnail: None }
                    if current[&record.game_id].thumbnailed =>
                {
                    uncovered.push(record.game_id)
                }
                _ => {}
            }
        }
        let cleaned: Vec<i64> = written
            .iter()
            .filter(|r| matches!(r.result, ProcessingResult::CleanedUp))
            .map(|r| r.game_id)
            .collect();
        for (games, condition) in [
            (uncovered, ""),
            (
                cleaned,
                " AND NOT EXISTS (SELECT 1 FROM games g WHERE g.id = thumbnails.game_id)",
            ),
        ] {
            if !games.is_empty() {
                let mut sql = QueryBuilder::<DB>::new("DELETE FROM thumbnails WHERE game_id IN ");
                push_list(&mut sql, games);
                sql.push(condition);
                sql.build().execute(&mut *tx).await.map_err(DB::classify)?;
            }
        }
        let events: Vec<OutboxMessage> = applied
            .iter()
            .map(|(r, status)| {
                OutboxMessage::game_processed(r.game_id, r.version, *status, &r.event_id)
            })
            .collect();
        Self::insert_outbox(&mut tx, &events).await?;
        tx.commit().await.map_err(DB::classify)?;
        if !events.is_empty() {
            self.outbox_written.notify_one();
        }

        for record in records
            .iter()
            .filter(|r| r.result.is_final() && seen.contains(r.event_id.as_str()))
        {
            self.restore_settled_status(record).await?;
        }
        let outcomes = records
            .iter()
            .zip(duplicate)
            .map(|(record, duplicate)| match &record.result {
                _ if duplicate => FinishOutcome::AlreadyProcessed,
                ProcessingResult::Completed { .. } | ProcessingResult::Failed { .. }
                    if !is_current(record) =>
                {
                    FinishOutcome::Superseded
                }
                _ => FinishOutcome::Applied,
            })
            .collect();
        Ok(Some(outcomes))
    }

    /// Inserts `messages` into `received_messages` with one statement: all or none.
    async fn insert_received(&self, messages: &[ReceivedMessage]) -> sqlx::Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut sql = QueryBuilder::<DB>::new(
            "INSERT INTO received_messages (subscriber, message_id, exchange, routing_key, \
             headers, body, received_at) ",
        );
        sql.push_values(messages, |mut row, message| {
            row.push_bind(message.subscriber.clone())
                .push_bind(message.message_id.clone())
                .push_bind(message.exchange.clone())
                .push_bind(message.routing_key.clone())
                .push_bind(serde_json::to_string(&message.headers).expect("headers serialize"))
                .push_bind(serde_json::to_vec(&message.body).expect("JSON serializes"))
                .push_bind(message.received_at.timestamp_millis());
        });
        self.writer.execute(sql.build()).await.map(drop)
    }

    /// Another delivery of this event settled it meanwhile. If this one's start came
    /// after that settlement, the game now reads `processing`: give it back the status
    /// the settled attempt recorded, or it stays `processing`. Outside the refused
    /// transaction, which PostgreSQL aborted.
    async fn restore_settled_status(&self, record: &ProcessingRecord) -> Result<(), StoreError> {
        let restore = sqlx::query(DB::sql(
            "UPDATE games SET processing_status = COALESCE((SELECT a.outcome \
             FROM processing_attempts a WHERE a.game_id = $1 AND a.event_id = $2 \
             AND a.outcome IN ('completed', 'failed') ORDER BY a.id DESC LIMIT 1), \
             processing_status) \
             WHERE id = $3 AND version = $4 AND processing_status = 'processing'",
        ))
        .bind(record.game_id)
        .bind(record.event_id.as_str().to_owned())
        .bind(record.game_id)
        .bind(record.version);
        self.writer.execute(restore).await.map_err(DB::classify)?;
        Ok(())
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
        let used: i64 = sqlx::query_scalar(DB::sql(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM games WHERE {column} = $1"
        ))))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(DB::classify)?;
        if used > 0 {
            return Err(shared::still_used(entity, id, used));
        }
        let deleted = sqlx::query(DB::sql(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE id = $1"
        ))))
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
        // once; where its lock falls short, the dialect holds one of its own meanwhile.
        let lock = DB::lock_migrations(&self.pool).await?;
        let migrated = DB::MIGRATOR.run(&self.pool).await;
        if let Some(lock) = lock {
            let _ = lock.close().await;
        }
        migrated.map_err(|e| StoreError::Database(e.into()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(DB::classify)?;
        Ok(())
    }

    async fn stream_games(&self, query: &GameQuery) -> Result<GameBatches, StoreError> {
        if let Some(direct) = &self.direct {
            return direct.stream_games(query).await;
        }
        let mut sql = QueryBuilder::<DB>::new("");
        shared::games_query(&mut sql, query, DB::LIKE, DB::FULL_TEXT)?;
        let persistent = query.search.is_none() || !DB::PLAN_EACH_SEARCH;
        let pool = self.pool.clone();
        let (mut batcher, batches) = game_stream::channel();
        tokio::spawn(async move {
            let read = async {
                let mut rows = sql.build().persistent(persistent).fetch(&pool);
                while let Some(row) = rows.try_next().await.map_err(DB::classify)? {
                    if batcher.push(shared::game_from_row(&row)?).await.is_err() {
                        break;
                    }
                }
                Ok(())
            };
            let read = read.await;
            batcher.finish(read).await;
        });
        Ok(batches)
    }

    async fn game(&self, id: i64) -> Result<Option<Game>, StoreError> {
        if let Some(direct) = &self.direct {
            return direct.game(id);
        }
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
        let row = sqlx::query(DB::sql(
            "SELECT content_type, bytes FROM covers WHERE game_id = $1",
        ))
        .bind(game_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(DB::classify)?;
        row.as_ref().map(shared::cover_from_row).transpose()
    }

    async fn thumbnail(&self, game_id: i64) -> Result<Option<Thumbnail>, StoreError> {
        let row = sqlx::query(DB::sql(
            "SELECT png, width, height FROM thumbnails WHERE game_id = $1",
        ))
        .bind(game_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(DB::classify)?;
        row.as_ref().map(shared::thumbnail_from_row).transpose()
    }

    async fn begin_turn(&self, kind: WriteKind) -> Turn {
        // On a server the batches do not queue for one connection, and a transaction
        // begun early would only hold one of the pool's idle.
        if !DB::ONE_WRITER {
            return Turn::default();
        }
        let Ok(tx) = self.begin_write().await else {
            return Turn::default();
        };
        let number = self.next_turn.fetch_add(1, Ordering::Relaxed);
        self.turns
            .lock()
            .expect("never poisoned")
            .insert(kind, (number, tx));
        let turns = Arc::clone(&self.turns);
        Turn::ending_with(move || {
            // Another group commit of the kind (a second worker's) may have begun the
            // next turn meanwhile: only this one's transaction goes.
            let mut turns = turns.lock().expect("never poisoned");
            if turns.get(&kind).is_some_and(|(begun, _)| *begun == number) {
                turns.remove(&kind);
            }
        })
    }

    async fn create_games(
        &self,
        batch: &[NewGame],
    ) -> Result<Vec<Result<Game, StoreError>>, StoreError> {
        refusing_only_the_faulty(batch, |batch| async move {
            let games = self.insert_games(batch).await?;
            Ok(games.into_iter().map(Ok).collect())
        })
        .await
    }

    async fn update_games(
        &self,
        batch: &[GameUpdate],
    ) -> Result<Vec<Result<Game, StoreError>>, StoreError> {
        refusing_only_the_faulty(batch, |batch| self.write_updates(batch)).await
    }

    async fn delete_game(&self, id: i64, trace: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let game = Self::fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        sqlx::query(DB::sql("DELETE FROM games WHERE id = $1"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(DB::classify)?;
        self.commit_with_event(
            tx,
            &OutboxMessage::game_event(&game, GameAction::Delete, &EventId::generate())
                .traced(trace),
        )
        .await?;
        Ok(())
    }

    async fn set_cover(
        &self,
        id: i64,
        cover: &Cover,
        trace: Option<&str>,
    ) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(DB::sql(
            "UPDATE games SET processing_status = 'pending', version = version + 1, \
             updated_at = $1 WHERE id = $2",
        ))
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(DB::classify)?;
        if DB::rows_affected(&updated) == 0 {
            return Err(StoreError::NotFound { entity: "game", id });
        }
        sqlx::query(upsert::<DB>(
            "covers (game_id, content_type, bytes) VALUES ($1, $2, $3)",
            "game_id",
            &["content_type", "bytes"],
        ))
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
            &OutboxMessage::game_event(&game, GameAction::Update, &EventId::generate())
                .traced(trace),
        )
        .await?;
        Ok(game)
    }

    async fn set_status(
        &self,
        id: i64,
        status: ProcessingStatus,
        trace: Option<&str>,
    ) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(DB::sql(
            "UPDATE games SET processing_status = $1 WHERE id = $2",
        ))
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
        let message = OutboxMessage::game_processed(id, game.version, status, &EventId::generate())
            .traced(trace);
        self.commit_with_event(tx, &message).await?;
        Ok(game)
    }

    async fn create_platform(&self, draft: &PlatformDraft) -> Result<Platform, StoreError> {
        let mut tx = self.begin_write().await?;
        let insert = sqlx::query(DB::sql(
            "INSERT INTO platforms (name, manufacturer, release_year) VALUES ($1, $2, $3)",
        ))
        .bind(draft.name.as_str().to_owned())
        .bind(&draft.manufacturer)
        .bind(draft.release_year);
        let id = DB::insert_id(&mut tx, insert).await.map_err(|e| {
            Self::unique_conflict(e, &format!("platform {:?}", draft.name.as_str()))
        })?;
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
        let updated = sqlx::query(DB::sql(
            "UPDATE platforms SET name = $1, manufacturer = $2, release_year = $3 WHERE id = $4",
        ))
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
        let insert = sqlx::query(DB::sql(
            "INSERT INTO genres (name, description) VALUES ($1, $2)",
        ))
        .bind(draft.name.as_str().to_owned())
        .bind(&draft.description);
        let id = DB::insert_id(&mut tx, insert)
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
        let updated = sqlx::query(DB::sql(
            "UPDATE genres SET name = $1, description = $2 WHERE id = $3",
        ))
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
        let rows = sqlx::query(DB::sql(shared::TASKS))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(DB::classify)?;
        rows.iter().map(shared::task_from_row).collect()
    }

    async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT processing_status, COUNT(*) AS games FROM games GROUP BY processing_status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(DB::classify)?;
        let mut counts = StatusCounts::default();
        for row in &rows {
            counts.add(shared::status(row)?, row.int("games")? as u64);
        }
        Ok(counts)
    }

    async fn history(&self, game_id: i64) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(DB::sql(
            "SELECT event_id, version, attempt, outcome, error, started_at, finished_at, \
             duration_ms, worker, trace_id FROM processing_attempts WHERE game_id = $1 \
             ORDER BY id",
        ))
        .bind(game_id)
        .fetch_all(&self.pool)
        .await
        .map_err(DB::classify)?;
        rows.iter().map(shared::attempt_from_row).collect()
    }

    async fn start_processing(
        &self,
        requests: &[StartRequest],
    ) -> Result<Vec<StartOutcome>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_batch(WriteKind::Starts).await?;
        let processed =
            Self::in_inbox(&mut tx, requests.iter().map(|r| r.event_id.as_str())).await?;
        // Read and locked in id order, so two workers' batches never wait on each other
        // in a cycle; the status change below commits with what was read.
        let mut sql = QueryBuilder::<DB>::new(
            "SELECT id, version, processing_status, title, image_url, \
             EXISTS (SELECT 1 FROM covers c WHERE c.game_id = games.id) AS has_cover \
             FROM games WHERE id IN ",
        );
        push_list(&mut sql, requests.iter().map(|r| r.game_id));
        sql.push(" ORDER BY id").push(DB::LOCK_ROWS);
        let rows = sql
            .build()
            .fetch_all(&mut *tx)
            .await
            .map_err(DB::classify)?;
        let mut games = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id = row.int("id")?;
            let completed = row.text("processing_status")? == ProcessingStatus::Completed.as_str();
            games.insert(id, (shared::work_item_from_row(id, row)?, completed));
        }
        let mut starting = Vec::new();
        let outcomes = requests
            .iter()
            .map(|request| {
                if processed.contains(request.event_id.as_str()) {
                    return StartOutcome::Processed;
                }
                let Some((item, completed)) = games.get(&request.game_id) else {
                    return StartOutcome::Missing;
                };
                match request.version {
                    Some(version) if version != item.version => StartOutcome::Stale {
                        current_version: item.version,
                    },
                    // A given version that is completed stays so (another copy of its
                    // event got there first); without a version (`process`: again) it
                    // starts anew.
                    Some(_) if *completed => StartOutcome::Done,
                    _ => {
                        starting.push(item.game_id);
                        StartOutcome::Ready(item.clone())
                    }
                }
            })
            .collect();
        if !starting.is_empty() {
            let mut sql = QueryBuilder::<DB>::new(
                "UPDATE games SET processing_status = 'processing' WHERE id IN ",
            );
            push_list(&mut sql, starting);
            sql.build().execute(&mut *tx).await.map_err(DB::classify)?;
        }
        tx.commit().await.map_err(DB::classify)?;
        Ok(outcomes)
    }

    async fn finish_processing(
        &self,
        records: &[ProcessingRecord],
    ) -> Result<Vec<FinishOutcome>, StoreError> {
        if let Some(outcomes) = self.finish_batch(records).await? {
            return Ok(outcomes);
        }
        // Another delivery of one of these events committed its inbox row while this
        // batch was being written: one by one, so that only its record is refused.
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            match self.finish_batch(std::slice::from_ref(record)).await? {
                Some(outcome) => outcomes.extend(outcome),
                None => {
                    self.restore_settled_status(record).await?;
                    outcomes.push(FinishOutcome::AlreadyProcessed);
                }
            }
        }
        Ok(outcomes)
    }

    async fn record_received(&self, messages: &[ReceivedMessage]) -> Result<Vec<bool>, StoreError> {
        match self.insert_received(messages).await {
            Ok(()) => return Ok(vec![true; messages.len()]),
            // The unique (subscriber, message_id) key: one of them was recorded before,
            // by another delivery of the same message. One by one, so that only those
            // are refused.
            Err(error) if shared::is_duplicate(&error) => {}
            Err(error) => return Err(DB::classify(error)),
        }
        let mut recorded = Vec::with_capacity(messages.len());
        for message in messages {
            recorded.push(
                match self.insert_received(std::slice::from_ref(message)).await {
                    Ok(()) => true,
                    Err(error) if shared::is_duplicate(&error) => false,
                    Err(error) => return Err(DB::classify(error)),
                },
            );
        }
        Ok(recorded)
    }

    async fn received(
        &self,
        subscriber: &str,
        limit: u32,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let rows = sqlx::query(DB::sql(
            "SELECT subscriber, message_id, exchange, routing_key, headers, body, received_at \
             FROM received_messages WHERE subscriber = $1 ORDER BY id DESC LIMIT $2",
        ))
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

    async fn outbox_turn(&self) -> Result<Option<Box<dyn OutboxTurn>>, StoreError> {
        let turn = if DB::HOLD_TURN {
            let mut tx = self.pool.begin().await.map_err(DB::classify)?;
            let turn = sqlx::query("SELECT 1 FROM outbox_relay FOR UPDATE SKIP LOCKED")
                .fetch_optional(&mut *tx)
                .await
                .map_err(DB::classify)?;
            if turn.is_none() {
                return Ok(None);
            }
            Some(tx)
        } else {
            None
        };
        Ok(Some(Box::new(SqlTurn {
            pool: self.pool.clone(),
            writer: self.writer.clone(),
            turn,
            after: 0,
            claimed: VecDeque::new(),
            claims: Arc::clone(&self.claims),
        })))
    }

    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        // Two index reads: the count, and the oldest row by id (ids grow with time),
        // where MIN(created_at) would read every pending row.
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(DB::classify)?;
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT created_at FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(DB::classify)?;
        Ok(OutboxBacklog {
            pending: pending as u64,
            oldest_age: oldest.map(|created| {
                Duration::from_millis(now_ms().saturating_sub(created).max(0) as u64)
            }),
        })
    }

    async fn prune_history(&self, before: DateTime<Utc>) -> Result<PruneReport, StoreError> {
        self.prune(before).await
    }
}

/// A relay's turn at the outbox ([`Store::outbox_turn`]).
///
/// On a database server ([`Dialect::HOLD_TURN`]) several API instances run a relay
/// each on one outbox. Skip-locking the outbox rows themselves would let a second
/// relay publish the rows after the first relay's batch (a game's `update` before its
/// `create`), so the relays take turns instead: the one that locks the single
/// `outbox_relay` row holds the turn, in a transaction (SKIP LOCKED: the others see
/// nothing to do instead of queueing). Its claims mark their rows sent in that
/// transaction at once, so that the next claims pass them whatever order their ids
/// committed in (a sequence hands out ids before the commits); they are sent for
/// good when the turn commits, after every batch's confirm. A relay that dies
/// mid-turn drops its connection, the lock and the marks go with it, and the next one
/// publishes those rows again: at-least-once, as with one relay. No lease to tune,
/// and the lock never blocks catalog writes (they only insert into the outbox).
///
/// SQLite has one relay per file, and its one writer commits the outbox's ids in
/// order: a claim reads the rows after the last one claimed, and each batch is marked
/// sent by a write of its own once confirmed, with no transaction open meanwhile.
struct SqlTurn<DB: Database> {
    pool: Pool<DB>,
    writer: Writer<DB>,
    /// The turn's transaction, on a database server.
    turn: Option<Transaction<'static, DB>>,
    /// The last row claimed, on SQLite (on a server the turn's marks hide its claims).
    after: i64,
    /// The claims awaiting their confirm, oldest first: the rows their mark is to
    /// write (none on a server: marked already), and whether it also prunes.
    claimed: VecDeque<(Vec<i64>, bool)>,
    /// Claims so far, of every turn: one in [`PRUNE_EVERY`] prunes.
    claims: Arc<AtomicU64>,
}

#[async_trait]
impl<DB> OutboxTurn for SqlTurn<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    DB::Row: Columns,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    async fn claim(&mut self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError> {
        let limit = i64::from(limit);
        let claimed = match &mut self.turn {
            Some(turn) => claim_in_turn::<DB>(turn, limit).await?,
            None => {
                let read = unsent_after::<DB>(self.after, limit).fetch_all(&self.pool);
                let rows = read.await.map_err(DB::classify)?;
                rows.iter()
                    .map(shared::outbox_from_row)
                    .collect::<Result<_, _>>()?
            }
        };
        let (ids, messages): (Vec<i64>, _) = claimed.into_iter().unzip();
        let Some(&last) = ids.last() else {
            return Ok(messages);
        };
        let prune = self
            .claims
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY);
        // On a server the claim marked its rows in the turn already.
        let unmarked = match self.turn {
            Some(_) => Vec::new(),
            None => {
                self.after = last;
                ids
            }
        };
        self.claimed.push_back((unmarked, prune));
        Ok(messages)
    }

    async fn mark_sent(&mut self) -> Result<(), StoreError> {
        let Some((unmarked, prune)) = self.claimed.pop_front() else {
            return Ok(());
        };
        match &mut self.turn {
            Some(turn) if prune => {
                let pruned = pruning_sent::<DB>().execute(&mut **turn).await;
                pruned.map_err(DB::classify)?;
            }
            Some(_) => {}
            None => {
                let mut mark = marking_sent::<DB>(unmarked);
                self.writer
                    .execute(mark.build())
                    .await
                    .map_err(DB::classify)?;
                if prune {
                    let pruned = self.writer.execute(pruning_sent::<DB>()).await;
                    pruned.map_err(DB::classify)?;
                }
            }
        }
        Ok(())
    }

    async fn end(self: Box<Self>) -> Result<(), StoreError> {
        match self.turn {
            Some(turn) => turn.commit().await.map_err(DB::classify),
            None => Ok(()),
        }
    }
}

/// The oldest unsent outbox rows after `after`, at most `limit`, oldest first.
fn unsent_after<DB: Dialect>(after: i64, limit: i64) -> Query<'static, DB, DB::Arguments>
where
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    sqlx::query(DB::sql(
        "SELECT id, exchange, routing_key, message_id, headers, body FROM outbox \
         WHERE sent_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
    ))
    .bind(after)
    .bind(limit)
}

/// On a database server: claims the oldest unsent rows, at most `limit`, oldest
/// first, and marks them sent in the turn's transaction; in one statement where the
/// server answers what it writes (`RETURNING`).
async fn claim_in_turn<DB>(
    turn: &mut Transaction<'static, DB>,
    limit: i64,
) -> Result<Vec<(i64, OutboxMessage)>, StoreError>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    DB::Row: Columns,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let read = if DB::RETURNS_ROWS {
        sqlx::query(DB::sql(
            "UPDATE outbox SET sent_at = $1 WHERE id IN (SELECT id FROM outbox \
             WHERE sent_at IS NULL ORDER BY id LIMIT $2) \
             RETURNING id, exchange, routing_key, message_id, headers, body",
        ))
        .bind(now_ms())
        .bind(limit)
    } else {
        unsent_after::<DB>(0, limit)
    };
    let rows = read.fetch_all(&mut **turn).await.map_err(DB::classify)?;
    let mut claimed = rows
        .iter()
        .map(shared::outbox_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    if DB::RETURNS_ROWS {
        // `RETURNING` need not keep the order of the ids.
        claimed.sort_unstable_by_key(|(id, _)| *id);
    } else if !claimed.is_empty() {
        marking_sent::<DB>(claimed.iter().map(|(id, _)| *id))
            .build()
            .execute(&mut **turn)
            .await
            .map_err(DB::classify)?;
    }
    Ok(claimed)
}

/// The UPDATE that marks the outbox rows `ids` sent, now.
fn marking_sent<DB: Dialect>(ids: impl IntoIterator<Item = i64>) -> QueryBuilder<DB>
where
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let mut sql = QueryBuilder::<DB>::new("UPDATE outbox SET sent_at = ");
    sql.push_bind(now_ms()).push(" WHERE id IN ");
    push_list(&mut sql, ids);
    sql
}

/// Drops a bounded chunk of the rows sent long ago ([`KEEP_SENT_OUTBOX_MS`]).
fn pruning_sent<DB: Dialect>() -> Query<'static, DB, DB::Arguments>
where
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    sqlx::query(DB::sql(DB::PRUNE_SENT_OUTBOX)).bind(now_ms() - KEEP_SENT_OUTBOX_MS)
}
