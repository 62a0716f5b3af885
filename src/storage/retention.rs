//! History retention: what the history tables recorded before a cutoff is deleted, so
//! that none of them grows without bound ([`Retention::prune_history`], run in the
//! background by every process that runs workers, `--retain`).
//!
//! The history tables are `received_messages` (the audit log and the custom-message
//! consumer's log), the `inbox` (ids of processed events) and `processing_attempts`.
//! Of the attempts, those a game's current view reads are kept however old they are:
//! the attempts of its current version (`GET /api/tasks` counts them) and its latest
//! one (whose error and duration it shows). An attempt is recorded when it has
//! finished, so there is never a row of one still running; the retries of an event
//! still being processed are attempts of its game's current version, and stay.
//! Dead letters live in the broker and are never pruned; sent outbox rows have their
//! own, shorter life (see `outbox::pruning_sent`).
//!
//! Pruning must not hold up the writes it runs beside. It goes in chunks of at most
//! [`CHUNK`] rows: a read picks a chunk's rows on a connection of the pool, outside any
//! write, and one DELETE by primary key removes them, in a transaction of its own. On
//! SQLite, where every write takes turns at one connection, a prune thus holds the
//! writer for one short DELETE at a time, and yields between chunks so the writes
//! queued meanwhile go first. A prune stopped midway has deleted whole chunks: nothing
//! is left half done.
//!
//! Rows are picked without an index of their own where the table's ids already follow
//! time: `received_messages` and `processing_attempts` take their ids as they are
//! written, just after the time they record, so a walk by id from the oldest row
//! stops at the first row recorded after the cutoff. A row written a little out of
//! order (a long attempt finishing after a newer one) waits for the next prune. The
//! inbox is keyed by event id, which says nothing of time (a client may choose it):
//! its `processed_at` has an index (migration `retention`).

use super::StoreError;
use super::rows::Columns;
use super::sql::{Dialect, SqlStore, Value, push_list};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Executor, QueryBuilder};

/// Rows one chunk deletes at most, which bounds how long a write may wait behind one.
/// Deleting 1,000 rows of `received_messages` by id on SQLite (3.40, from Python; of
/// 200,000 rows with 400-byte bodies, on this 2-core machine while it compiled) took
/// 8 ms (median; 22 ms at most) where message ids follow time, as ours do (UUIDv7),
/// and 45 ms (88 ms) where they are random, as a client's may be: each row's entry in
/// the unique index is then on a page of its own. 2,000 rows took twice as long.
const CHUNK: usize = 1_000;

/// How many rows each history table lost to one [`Retention::prune_history`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Messages of `received_messages`: audit log and custom messages.
    pub received: u64,
    /// Processed event ids of the inbox.
    pub inbox: u64,
    /// Finished processing attempts.
    pub attempts: u64,
}

impl PruneReport {
    /// Rows pruned in all.
    pub fn total(&self) -> u64 {
        self.received + self.inbox + self.attempts
    }
}

/// A history table walked by id from its oldest row ([`SqlStore::prune_walking`]).
struct Walk {
    table: &'static str,
    /// The rows after the id `$1`, at most `$2`, in id order: `id`, `at` (the time the
    /// row records) and, where some old rows are kept, `kept`.
    rows_after: &'static str,
    keeps: bool,
}

const RECEIVED: Walk = Walk {
    table: "received_messages",
    rows_after: "SELECT id, received_at AS at FROM received_messages WHERE id > $1 \
         ORDER BY id LIMIT $2",
    keeps: false,
};

/// An attempt is kept while its game exists and it is of the game's current version,
/// or is the game's latest attempt: what `GET /api/tasks` reads (`tasks::TASKS`).
/// Neither changes back once false (versions only grow, and later attempts stay
/// later), so a row found prunable may be deleted after the read.
const ATTEMPTS: Walk = Walk {
    table: "processing_attempts",
    rows_after: "SELECT a.id, a.finished_at AS at, \
         EXISTS (SELECT 1 FROM games g WHERE g.id = a.game_id AND (g.version = a.version \
           OR NOT EXISTS (SELECT 1 FROM processing_attempts b \
             WHERE b.game_id = a.game_id AND b.id > a.id))) AS kept \
         FROM processing_attempts a WHERE a.id > $1 ORDER BY a.id LIMIT $2",
    keeps: true,
};

/// History retention: a part of every [`super::Store`].
#[async_trait]
pub trait Retention: Send + Sync {
    /// Deletes what the history tables recorded before `before`: received messages,
    /// inbox rows and finished attempts, except the attempts a game's current view
    /// reads. In chunks, each a short write of its own, so writes go on meanwhile;
    /// stopped midway, it has deleted whole chunks.
    async fn prune_history(&self, before: DateTime<Utc>) -> Result<PruneReport, StoreError>;
}

#[async_trait]
impl<DB> Retention for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
{
    async fn prune_history(&self, before: DateTime<Utc>) -> Result<PruneReport, StoreError> {
        let before = before.timestamp_millis();
        Ok(PruneReport {
            received: self.prune_walking(&RECEIVED, before).await?,
            inbox: self.prune_inbox(before).await?,
            attempts: self.prune_walking(&ATTEMPTS, before).await?,
        })
    }
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
{
    /// Deletes the rows of `walk`'s table recorded before `before` (milliseconds),
    /// except those it keeps, a chunk at a time from the oldest id, until the first row
    /// recorded since.
    async fn prune_walking(&self, walk: &Walk, before: i64) -> Result<u64, StoreError> {
        let (mut after, mut pruned) = (0, 0);
        loop {
            let rows = sqlx::query(DB::sql(walk.rows_after))
                .bind(after)
                .bind(CHUNK as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(DB::classify)?;
            let mut done = rows.len() < CHUNK;
            let mut old = Vec::with_capacity(rows.len());
            for row in &rows {
                if row.int("at")? >= before {
                    done = true;
                    break;
                }
                after = row.int("id")?;
                if !(walk.keeps && row.flag("kept")?) {
                    old.push(after);
                }
            }
            pruned += self.delete_chunk(walk.table, "id", old).await?;
            if done {
                return Ok(pruned);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Deletes the inbox rows of events processed before `before` (milliseconds), a
    /// chunk at a time, oldest first.
    async fn prune_inbox(&self, before: i64) -> Result<u64, StoreError> {
        let mut pruned = 0;
        loop {
            let rows = sqlx::query(DB::sql(
                "SELECT event_id FROM inbox WHERE processed_at < $1 \
                 ORDER BY processed_at LIMIT $2",
            ))
            .bind(before)
            .bind(CHUNK as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(DB::classify)?;
            let events = rows
                .iter()
                .map(|row| row.text("event_id"))
                .collect::<sqlx::Result<Vec<String>>>()?;
            let full = events.len() == CHUNK;
            let deleted = self.delete_chunk("inbox", "event_id", events).await?;
            pruned += deleted;
            // A full chunk of which nothing was deleted would come back as it was.
            if !full || deleted == 0 {
                return Ok(pruned);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Deletes the rows of `table` whose `key` is one of `keys`, in one statement at
    /// the writer: how many it deleted (another process's prune may have taken some).
    async fn delete_chunk<K>(
        &self,
        table: &'static str,
        key: &'static str,
        keys: Vec<K>,
    ) -> Result<u64, StoreError>
    where
        K: Value<DB>,
    {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut sql = QueryBuilder::<DB>::new(format!("DELETE FROM {table} WHERE {key} IN "));
        push_list(&mut sql, keys);
        let deleted = self.writer.execute(sql.build()).await;
        Ok(DB::rows_affected(&deleted.map_err(DB::classify)?))
    }
}
