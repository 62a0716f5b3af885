//! Where the catalog's writes get their connection, and their transactions.
//!
//! On a database server a write takes a connection of the pool, like any query: the
//! server runs writes side by side. SQLite writes one transaction at a time, so the
//! store keeps one connection for writes ([`Dialect::ONE_WRITER`]) and the writes
//! take it in turn. It is taken from a pool of its own once and then held, behind a
//! fair lock: first come, first served. Handed from write to write through sqlx's
//! pool instead, each turn cost a task spawned to return the connection and two
//! round trips to its thread (sqlx pings a connection as it returns it to the pool
//! and as it hands it out), while every other write waited (docs/performance.md).

use super::sql::{Dialect, is_connection_error};
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::{Database, Execute, Executor, IntoArguments, Pool, Transaction};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The connection of the one writer, once taken from its pool.
type Slot<DB> = Option<PoolConnection<DB>>;

/// Where writes get their connection: see the module's documentation.
pub(super) enum Writer<DB: Database> {
    /// A connection of the pool for each write.
    Pool(Pool<DB>),
    /// The one write connection, held from write to write.
    Held(HeldWriter<DB>),
}

impl<DB: Database> Clone for Writer<DB> {
    fn clone(&self) -> Self {
        match self {
            Self::Pool(pool) => Self::Pool(pool.clone()),
            Self::Held(held) => Self::Held(held.clone()),
        }
    }
}

/// The one write connection, and where it comes from.
pub(super) struct HeldWriter<DB: Database> {
    /// Where the connection comes from, the first time and after it broke.
    pool: Pool<DB>,
    slot: Arc<Mutex<Slot<DB>>>,
    /// How long a write waits for its turn before it fails with 503, as for a pooled
    /// connection.
    acquire_timeout: Duration,
}

impl<DB: Database> Clone for HeldWriter<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            slot: Arc::clone(&self.slot),
            acquire_timeout: self.acquire_timeout,
        }
    }
}

impl<DB: Database> HeldWriter<DB> {
    /// The connection, once the writes before this one are done: within the acquire
    /// timeout, or [`sqlx::Error::PoolTimedOut`].
    async fn take_turn(&self) -> sqlx::Result<OwnedMutexGuard<Slot<DB>>> {
        let mut held =
            tokio::time::timeout(self.acquire_timeout, Arc::clone(&self.slot).lock_owned())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)?;
        if held.is_none() {
            *held = Some(self.pool.acquire().await?);
        }
        Ok(held)
    }
}

impl<DB> Writer<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// The writer of a store whose pool is `pool`: `held`, a pool of one apart from
    /// it, where the backend has one writer.
    pub(super) fn new(pool: &Pool<DB>, held: Option<Pool<DB>>, acquire_timeout: Duration) -> Self {
        match held {
            Some(pool) => Self::Held(HeldWriter {
                pool,
                slot: Arc::new(Mutex::new(None)),
                acquire_timeout,
            }),
            None => Self::Pool(pool.clone()),
        }
    }

    /// Begins a write transaction ([`Dialect::BEGIN_WRITE`]), once it is this write's
    /// turn.
    pub(super) async fn begin(&self) -> sqlx::Result<WriteTx<DB>> {
        match self {
            Self::Pool(pool) => Ok(WriteTx::Pooled(Some(
                pool.begin_with(DB::BEGIN_WRITE).await?,
            ))),
            Self::Held(writer) => {
                let mut held = writer.take_turn().await?;
                let begun = connection(&mut held).execute(DB::BEGIN_WRITE).await;
                discard_if_broken(&mut held, begun)?;
                Ok(WriteTx::Held(Some(held)))
            }
        }
    }

    /// Runs `query` alone, in a transaction of its own (autocommit).
    pub(super) async fn execute<'q>(
        &self,
        query: Query<'q, DB, DB::Arguments>,
    ) -> sqlx::Result<DB::QueryResult>
    where
        DB::Arguments: IntoArguments<DB>,
        Query<'q, DB, DB::Arguments>: Execute<'q, DB>,
    {
        match self {
            Self::Pool(pool) => query.execute(pool).await,
            Self::Held(writer) => {
                let mut held = writer.take_turn().await?;
                let result = query.execute(connection(&mut held)).await;
                discard_if_broken(&mut held, result)
            }
        }
    }
}

/// The connection a held turn holds.
fn connection<DB: Database>(held: &mut OwnedMutexGuard<Slot<DB>>) -> &mut DB::Connection {
    held.as_deref_mut().expect("a turn holds the connection")
}

/// `result`, of a statement on the held connection. A connection that failed as a
/// connection goes back to its pool, which closes it (its ping fails): the next turn
/// takes a new one.
fn discard_if_broken<DB: Database, T>(
    held: &mut OwnedMutexGuard<Slot<DB>>,
    result: sqlx::Result<T>,
) -> sqlx::Result<T> {
    if let Err(error) = &result
        && (is_connection_error(error) || matches!(error, sqlx::Error::WorkerCrashed))
    {
        tracing::warn!(%error, "the write connection broke; the next write opens another");
        held.take();
    }
    result
}

/// A write transaction: committed by [`Self::commit`], rolled back if dropped before.
/// It reads and writes as its connection (`&mut *tx`). Each variant holds its
/// transaction until it ends.
pub(super) enum WriteTx<DB: Database>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// sqlx's transaction on a connection of the pool.
    Pooled(Option<Transaction<'static, DB>>),
    /// A transaction on the held writer.
    Held(Option<OwnedMutexGuard<Slot<DB>>>),
}

impl<DB> WriteTx<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Commits the transaction, and hands the writer to the next write.
    pub(super) async fn commit(mut self) -> sqlx::Result<()> {
        match &mut self {
            Self::Pooled(tx) => tx.take().expect("an open transaction").commit().await,
            Self::Held(held) => {
                let conn = connection(held.as_mut().expect("an open transaction"));
                // On an error `self`, dropped, rolls back.
                conn.execute("COMMIT").await?;
                held.take();
                Ok(())
            }
        }
    }
}

impl<DB> Drop for WriteTx<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Rolls back a transaction that did not commit. On the held writer the rollback
    /// runs in a task of its own, which holds the writer until it is done.
    fn drop(&mut self) {
        // sqlx's transaction rolls itself back.
        let Self::Held(held) = self else {
            return;
        };
        let Some(mut held) = held.take() else {
            return; // Committed.
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left (the process is ending): the connection goes with it.
            held.take();
            return;
        };
        runtime.spawn(async move {
            let rolled_back = connection(&mut held).execute("ROLLBACK").await;
            // A ROLLBACK that fails otherwise found no transaction: SQLite ended it.
            let _ = discard_if_broken(&mut held, rolled_back);
        });
    }
}

impl<DB> Deref for WriteTx<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        let connection = match self {
            Self::Pooled(tx) => tx.as_deref(),
            Self::Held(held) => held.as_ref().and_then(|held| held.as_deref()),
        };
        connection.expect("an open transaction")
    }
}

impl<DB> DerefMut for WriteTx<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self {
            Self::Pooled(tx) => tx.as_deref_mut().expect("an open transaction"),
            Self::Held(held) => connection(held.as_mut().expect("an open transaction")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Sqlite;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    /// A held writer on a fresh file with a table `t (n)`, its turns waiting 200 ms.
    async fn held_writer(dir: &tempfile::TempDir) -> (Pool<Sqlite>, Writer<Sqlite>) {
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("w.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .connect_with(options.clone())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        let one = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let writer = Writer::new(&pool, Some(one), Duration::from_millis(200));
        (pool, writer)
    }

    async fn rows(pool: &Pool<Sqlite>) -> Vec<i64> {
        sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    /// Writes take the one connection in turn: a transaction holds it until it
    /// commits or is dropped, a dropped one is rolled back, and the next write then
    /// has the writer.
    #[tokio::test]
    async fn writes_take_the_held_connection_in_turn_and_a_dropped_one_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, writer) = held_writer(&dir).await;
        let insert = |n: i64| sqlx::query("INSERT INTO t VALUES ($1)").bind(n);

        let mut first = writer.begin().await.unwrap();
        insert(1).execute(&mut *first).await.unwrap();
        assert!(
            matches!(writer.begin().await, Err(sqlx::Error::PoolTimedOut)),
            "the first transaction holds the writer"
        );
        assert!(matches!(
            writer.execute(insert(9)).await,
            Err(sqlx::Error::PoolTimedOut)
        ));
        first.commit().await.unwrap();

        let mut dropped = writer.begin().await.unwrap();
        insert(2).execute(&mut *dropped).await.unwrap();
        drop(dropped);
        writer.execute(insert(3)).await.unwrap();
        assert_eq!(
            rows(&pool).await,
            [1, 3],
            "the dropped transaction's row is gone"
        );
    }
}
