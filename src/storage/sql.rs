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
//! A worker's status writes come in batches (see [`Processing::start_processing`]), written
//! with multi-row statements built by sqlx's `QueryBuilder`, which spells each
//! backend's placeholders itself.

use super::direct::DirectReads;
use super::game_query::FullText;
use super::rows::Columns;
use super::writer::{WriteTx, Writer};
use super::{Backend, PoolConfig, StoreError, WriteKind, WriterSlot};
use async_trait::async_trait;
use chrono::Utc;
use sqlx::Connection;
use sqlx::database::HasStatementCache;
use sqlx::error::DatabaseError;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::pool::PoolOptions;
use sqlx::query::Query;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Execute, Executor, IntoArguments, Pool,
    QueryBuilder, SqlSafeStr, SqlStr, Type,
};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

/// What a backend adds to the shared SQL.
#[async_trait]
pub trait Dialect:
    Database<Arguments: IntoArguments<Self>, Row: Columns, Connection: Migrate> + HasStatementCache
{
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
    /// Whether a relay's outbox lease is a transaction that lasts until its rows are
    /// marked sent: on a database server, where the relays of several API instances
    /// share one outbox (see [`super::outbox`]'s `SqlLease`).
    const HOLD_LEASE: bool;
    /// The pool size when `--db-max-connections` is not set.
    const DEFAULT_MAX_CONNECTIONS: u32;
    /// What a `SELECT` adds to lock the rows it reads until the transaction ends.
    const LOCK_ROWS: &'static str = " FOR UPDATE";
    /// Deletes up to 10,000 outbox rows sent before `$1`: a bounded chunk, so pruning
    /// never holds the relay's lease for long.
    const PRUNE_SENT_OUTBOX: &'static str = "DELETE FROM outbox WHERE id IN (SELECT id \
         FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT 10000)";
    /// Whether the database takes one write transaction at a time: writes then queue
    /// for one connection of their own ([`Writer`]), a writer slot each; otherwise each
    /// takes a connection of the pool.
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
            _ if is_connection_error(&error) => StoreError::Unavailable(error.to_string()),
            sqlx::Error::Database(ref db) if Self::is_unavailable(db.as_ref()) => {
                StoreError::Unavailable(format!("database unavailable: {db}"))
            }
            other => StoreError::Database(other),
        }
    }
}

/// A type the shared SQL binds as a parameter and reads from a row, on backend `DB`.
///
/// The impls of the shared SQL name the types they bind, `String: Value<DB>`, as rustc
/// cannot infer such bounds from `DB: Dialect` alone. Text is bound as owned `String`s:
/// a generic bound on borrowed `&str` trips rustc's higher-ranked lifetime check
/// ("`Encode` is not general enough") in async methods, and a copy of a short string
/// is nothing next to a database round trip.
pub trait Value<DB: Database>: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> {}

impl<DB: Database, T> Value<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>
{
}

/// The write transactions begun for group commits' writer slots
/// ([`Backend::take_writer_slot`]), by kind, each with its slot's number.
type Slots<DB> = std::sync::Mutex<HashMap<WriteKind, (u64, WriteTx<DB>)>>;

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
    pub(super) outbox_written: Notify,
    /// Batches the relays took from the outbox so far: one in every few prunes it.
    pub(super) batches_taken: Arc<AtomicU64>,
    /// Where [`Catalog::game`] and [`Catalog::list_games`] read, if not through `pool`: on
    /// SQLite, rusqlite without sqlx's connection threads (see [`DirectReads`]).
    pub(super) direct: Option<DirectReads>,
    /// A task of the backend's that lives as long as the store: on SQLite, the
    /// checkpoints beside the writer (see [`super::sqlite`]). Held to be dropped.
    _background: Option<AbortOnDropHandle<()>>,
    /// The transactions [`Backend::take_writer_slot`] began, each for the next batch of
    /// its kind.
    slots: Arc<Slots<DB>>,
    next_slot: AtomicU64,
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
            batches_taken: Arc::default(),
            direct: None,
            _background: None,
            slots: Default::default(),
            next_slot: AtomicU64::new(0),
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

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    pub(super) async fn begin_write(&self) -> Result<WriteTx<DB>, StoreError> {
        self.writer.begin().await.map_err(DB::classify)
    }

    /// The write transaction of a batch of `kind`: the one its group commit began
    /// while it waited for its writer slot ([`Backend::take_writer_slot`]), or a new one.
    pub(super) async fn begin_batch(&self, kind: WriteKind) -> Result<WriteTx<DB>, StoreError> {
        let begun = self.slots.lock().expect("never poisoned").remove(&kind);
        match begun {
            Some((_, tx)) => Ok(tx),
            None => self.begin_write().await,
        }
    }
}

#[async_trait]
impl<DB> Backend for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
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

    async fn take_writer_slot(&self, kind: WriteKind) -> WriterSlot {
        // On a server the batches do not queue for one connection, and a transaction
        // begun early would only hold one of the pool's idle.
        if !DB::ONE_WRITER {
            return WriterSlot::default();
        }
        let Ok(tx) = self.begin_write().await else {
            return WriterSlot::default();
        };
        let number = self.next_slot.fetch_add(1, Ordering::Relaxed);
        self.slots
            .lock()
            .expect("never poisoned")
            .insert(kind, (number, tx));
        let slots = Arc::clone(&self.slots);
        WriterSlot::ending_with(move || {
            // Another group commit of the kind (a second worker's) may have taken the
            // next slot meanwhile: only this one's transaction goes.
            let mut slots = slots.lock().expect("never poisoned");
            if slots.get(&kind).is_some_and(|(begun, _)| *begun == number) {
                slots.remove(&kind);
            }
        })
    }
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
pub(super) fn upsert<DB: Dialect>(
    into: &'static str,
    key: &'static str,
    columns: &[&'static str],
) -> SqlStr {
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

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
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

/// A unique constraint refused the write: the name is taken.
pub(super) fn is_duplicate(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}
