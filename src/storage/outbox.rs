//! The outbox in SQL ([`Outbox`]): every write inserts its events in its own
//! transaction, and the relay takes them in commit order, publishes them and marks
//! them sent once the broker has confirmed them (see [`OutboxLease`]). Sent rows are
//! kept an hour for inspection, then pruned.

use super::StoreError;
use super::rows::Columns;
use super::sql::{Dialect, SqlStore, Value, now_ms, push_list};
use super::writer::{WriteTx, Writer};
use crate::broker::{Headers, Message, Properties, Publish, headers, topology};
use crate::domain::{CatalogEvent, EventId};
use async_trait::async_trait;
use sqlx::query::Query;
use sqlx::{Database, Executor, Pool, QueryBuilder, Transaction};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Sent outbox rows are kept this long for inspection, then pruned.
const KEEP_SENT_OUTBOX_MS: i64 = 60 * 60 * 1000;

/// Sent rows are pruned on one `mark_sent` in this many, in bounded chunks.
const PRUNE_EVERY: u64 = 256;

/// What the relay publishes: exchange, routing key, message id, headers and body.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxMessage {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl OutboxMessage {
    /// `event` as the relay publishes it on `catalog.events`, with the W3C
    /// `traceparent` of the request that wrote it, if any: its consumer's span then
    /// continues that trace.
    pub fn event(event: &CatalogEvent, trace: Option<&str>) -> Self {
        let mut headers = Headers::new();
        if let Some(traceparent) = trace {
            headers.insert(headers::TRACEPARENT.into(), traceparent.into());
        }
        let message_id = event
            .message_id()
            .cloned()
            .unwrap_or_else(EventId::generate);
        Self {
            exchange: topology::EVENTS_EXCHANGE.into(),
            routing_key: event.routing_key(),
            message_id: message_id.to_string(),
            headers,
            body: event.encode(),
        }
    }

    /// The message as the relay publishes it.
    pub fn into_publish(self) -> Publish {
        let mut properties = Properties::json(self.message_id);
        properties.headers = self.headers;
        Publish {
            exchange: self.exchange,
            routing_key: self.routing_key,
            message: Message {
                body: self.body.into(),
                properties,
            },
            delay: None,
        }
    }
}

/// Outbox events not yet confirmed by the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxBacklog {
    pub pending: u64,
    /// How long the oldest has waited; `None` when nothing waits.
    pub oldest_age: Option<std::time::Duration>,
    /// The id of the newest row, sent or not; `None` in an empty outbox. Ids only grow
    /// while rows are kept, so two readings tell how many rows every writer together
    /// wrote between them (on PostgreSQL and MySQL, a few more: the ids of rolled-back
    /// writes), and with the pending counts, how many every relay sent.
    pub last_id: Option<i64>,
}

impl OutboxBacklog {
    /// The rows every writer together wrote per second between `earlier` and this
    /// reading, `elapsed` later; `None` when a reading has no id to go by.
    pub fn write_rate(&self, earlier: &Self, elapsed: Duration) -> Option<f64> {
        let written = self.written_since(earlier, elapsed)?;
        Some(written as f64 / elapsed.as_secs_f64())
    }

    /// The rows sent per second between `earlier` and this reading, `elapsed` later,
    /// by whichever relay held the lease: those written, less the backlog's growth.
    pub fn drain_rate(&self, earlier: &Self, elapsed: Duration) -> Option<f64> {
        let written = self.written_since(earlier, elapsed)?;
        let sent = (written + earlier.pending).saturating_sub(self.pending);
        Some(sent as f64 / elapsed.as_secs_f64())
    }

    /// The rows written between `earlier` and this reading; `None` without an id on
    /// either side, when the ids went back (an emptied outbox may hand them out
    /// again), or when no time passed.
    fn written_since(&self, earlier: &Self, elapsed: Duration) -> Option<u64> {
        if elapsed.is_zero() {
            return None;
        }
        u64::try_from(self.last_id?.checked_sub(earlier.last_id?)?).ok()
    }
}

/// One relay's lease on the outbox: it takes the oldest unsent rows batch after
/// batch, and marks each batch sent once the broker has confirmed it.
///
/// While a lease lasts no other relay publishes, so events keep their commit order per
/// game. A batch holds the rows after those taken before it in the lease, so the
/// relay can send a batch while the ones before it await their confirms. A lease
/// dropped before its batches are marked and it has [`ended`](OutboxLease::end)
/// leaves their rows to be published again: at least once, never lost.
#[async_trait]
pub trait OutboxLease: Send {
    /// The next batch: the oldest unsent rows not taken yet in this lease, at most
    /// `limit`, oldest first; empty when nothing waits.
    async fn take(&mut self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Marks the rows of the oldest batch not marked yet as sent: the broker has
    /// confirmed it.
    async fn mark_sent(&mut self) -> Result<(), StoreError>;
    /// Ends the lease, once its batches are marked: another relay may take the next.
    async fn end(self: Box<Self>) -> Result<(), StoreError>;
}

/// The outbox: events committed with the writes that caused them, until the relay has
/// published them.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Notified after every commit that wrote outbox rows, so an in-process relay
    /// publishes at once instead of waiting for its next poll.
    fn outbox_written(&self) -> &tokio::sync::Notify;
    /// The outbox for one relay, or `None` while another relay holds its lease.
    async fn lease_outbox(&self) -> Result<Option<Box<dyn OutboxLease>>, StoreError>;
    /// Events not yet confirmed by the broker, and how long the oldest has waited.
    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError>;
}

#[async_trait]
impl<DB> Outbox for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
{
    fn outbox_written(&self) -> &Notify {
        &self.outbox_written
    }

    async fn lease_outbox(&self) -> Result<Option<Box<dyn OutboxLease>>, StoreError> {
        let lease = if DB::HOLD_LEASE {
            let mut tx = self.pool.begin().await.map_err(DB::classify)?;
            let locked = sqlx::query("SELECT 1 FROM outbox_relay FOR UPDATE SKIP LOCKED")
                .fetch_optional(&mut *tx)
                .await
                .map_err(DB::classify)?;
            if locked.is_none() {
                return Ok(None);
            }
            Some(tx)
        } else {
            None
        };
        Ok(Some(Box::new(SqlLease {
            pool: self.pool.clone(),
            writer: self.writer.clone(),
            lease,
            after: 0,
            taken: VecDeque::new(),
            batches_taken: Arc::clone(&self.batches_taken),
        })))
    }

    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        // Index reads only, in one round trip: the count, the newest id, and the
        // oldest pending row by id (ids grow with time), where MIN(created_at) would
        // read every pending row.
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL) AS pending, \
             (SELECT MAX(id) FROM outbox) AS last_id, \
             (SELECT created_at FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1) \
             AS oldest",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(DB::classify)?;
        let (pending, last_id) = (row.int("pending")?, row.opt_int("last_id")?);
        let oldest = row.opt_int("oldest")?;
        Ok(OutboxBacklog {
            last_id,
            pending: pending as u64,
            oldest_age: oldest.map(|created| {
                Duration::from_millis(now_ms().saturating_sub(created).max(0) as u64)
            }),
        })
    }
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
{
    /// Inserts `messages` into the outbox, in order, with one statement.
    pub(super) async fn insert_outbox(
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
                .push_bind(headers_json(message))
                .push_bind(message.body.clone())
                .push_bind(now);
        });
        sql.build().execute(conn).await.map_err(DB::classify)?;
        Ok(())
    }

    /// Appends the write's event to the outbox in the same transaction, commits both,
    /// and wakes the relay of this process (relays of other processes poll). `trace`:
    /// the W3C `traceparent` of the request that wrote, sent with the event.
    pub(super) async fn commit_with_event(
        &self,
        mut tx: WriteTx<DB>,
        event: &CatalogEvent,
        trace: Option<&str>,
    ) -> Result<(), StoreError> {
        let message = OutboxMessage::event(event, trace);
        Self::insert_outbox(&mut tx, std::slice::from_ref(&message)).await?;
        tx.commit().await.map_err(DB::classify)?;
        self.outbox_written.notify_one();
        Ok(())
    }
}

/// A relay's lease on the outbox ([`Outbox::lease_outbox`]).
///
/// On a database server ([`Dialect::HOLD_LEASE`]) several API instances run a relay
/// each on one outbox. Skip-locking the outbox rows themselves would let a second
/// relay publish the rows after the first relay's batch (a game's `update` before its
/// `create`), so one relay at a time holds the outbox: the one that locks the single
/// `outbox_relay` row holds the lease, in a transaction (SKIP LOCKED: the others see
/// nothing to do instead of queueing). Each batch it takes is marked sent in that
/// transaction at once, so that the next batch passes its rows whatever order their
/// ids committed in (a sequence hands out ids before the commits); they are sent for
/// good when the lease commits, after every batch's confirm. A relay that dies
/// mid-lease drops its connection, the lock and the marks go with it, and the next one
/// publishes those rows again: at-least-once, as with one relay. No expiry to tune,
/// and the lock never blocks catalog writes (they only insert into the outbox).
///
/// SQLite has one relay per file, and its one writer commits the outbox's ids in
/// order: a batch reads the rows after the last one taken, and is marked sent by a
/// write of its own once confirmed, with no transaction open meanwhile.
struct SqlLease<DB: Database> {
    pool: Pool<DB>,
    writer: Writer<DB>,
    /// The lease's transaction, on a database server.
    lease: Option<Transaction<'static, DB>>,
    /// The last row taken, on SQLite (on a server the lease's marks hide what it took).
    after: i64,
    /// The batches awaiting their confirm, oldest first: the rows their mark is to
    /// write (none on a server: marked already), and whether it also prunes.
    taken: VecDeque<(Vec<i64>, bool)>,
    /// Batches taken so far, of every lease: one in [`PRUNE_EVERY`] prunes.
    batches_taken: Arc<AtomicU64>,
}

#[async_trait]
impl<DB> OutboxLease for SqlLease<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
{
    async fn take(&mut self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError> {
        let limit = i64::from(limit);
        let taken = match &mut self.lease {
            Some(lease) => take_in_lease::<DB>(lease, limit).await?,
            None => {
                let read = unsent_after::<DB>(self.after, limit).fetch_all(&self.pool);
                let rows = read.await.map_err(DB::classify)?;
                rows.iter().map(outbox_from_row).collect::<Result<_, _>>()?
            }
        };
        let (ids, messages): (Vec<i64>, _) = taken.into_iter().unzip();
        let Some(&last) = ids.last() else {
            return Ok(messages);
        };
        let prune = self
            .batches_taken
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY);
        // On a server the batch's rows are marked in the lease already.
        let unmarked = match self.lease {
            Some(_) => Vec::new(),
            None => {
                self.after = last;
                ids
            }
        };
        self.taken.push_back((unmarked, prune));
        Ok(messages)
    }

    async fn mark_sent(&mut self) -> Result<(), StoreError> {
        let Some((unmarked, prune)) = self.taken.pop_front() else {
            return Ok(());
        };
        match &mut self.lease {
            Some(lease) if prune => {
                let pruned = pruning_sent::<DB>().execute(&mut **lease).await;
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
        match self.lease {
            Some(lease) => lease.commit().await.map_err(DB::classify),
            None => Ok(()),
        }
    }
}

/// The oldest unsent outbox rows after `after`, at most `limit`, oldest first.
fn unsent_after<DB: Dialect>(after: i64, limit: i64) -> Query<'static, DB, DB::Arguments>
where
    i64: Value<DB>,
{
    sqlx::query(DB::sql(
        "SELECT id, exchange, routing_key, message_id, headers, body FROM outbox \
         WHERE sent_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
    ))
    .bind(after)
    .bind(limit)
}

/// On a database server: takes the oldest unsent rows, at most `limit`, oldest
/// first, and marks them sent in the lease's transaction; in one statement where the
/// server answers what it writes (`RETURNING`).
async fn take_in_lease<DB>(
    lease: &mut Transaction<'static, DB>,
    limit: i64,
) -> Result<Vec<(i64, OutboxMessage)>, StoreError>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
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
    let rows = read.fetch_all(&mut **lease).await.map_err(DB::classify)?;
    let mut taken = rows
        .iter()
        .map(outbox_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    if DB::RETURNS_ROWS {
        // `RETURNING` need not keep the order of the ids.
        taken.sort_unstable_by_key(|(id, _)| *id);
    } else if !taken.is_empty() {
        marking_sent::<DB>(taken.iter().map(|(id, _)| *id))
            .build()
            .execute(&mut **lease)
            .await
            .map_err(DB::classify)?;
    }
    Ok(taken)
}

/// The UPDATE that marks the outbox rows `ids` sent, now.
fn marking_sent<DB: Dialect>(ids: impl IntoIterator<Item = i64>) -> QueryBuilder<DB>
where
    i64: Value<DB>,
{
    let mut sql = QueryBuilder::<DB>::new("UPDATE outbox SET sent_at = ");
    sql.push_bind(now_ms()).push(" WHERE id IN ");
    push_list(&mut sql, ids);
    sql
}

/// Drops a bounded chunk of the rows sent long ago ([`KEEP_SENT_OUTBOX_MS`]).
fn pruning_sent<DB: Dialect>() -> Query<'static, DB, DB::Arguments>
where
    i64: Value<DB>,
{
    sqlx::query(DB::sql(DB::PRUNE_SENT_OUTBOX)).bind(now_ms() - KEEP_SENT_OUTBOX_MS)
}

/// An outbox row's id and message.
fn outbox_from_row(row: &impl Columns) -> Result<(i64, OutboxMessage), StoreError> {
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

fn headers_json(message: &OutboxMessage) -> String {
    serde_json::to_string(&message.headers).expect("headers serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(pending: u64, last_id: Option<i64>) -> OutboxBacklog {
        OutboxBacklog {
            pending,
            oldest_age: None,
            last_id,
        }
    }

    #[test]
    fn the_drain_rate_is_what_was_written_less_what_still_waits() {
        let ten = Duration::from_secs(10);
        // 1,000 rows written in 10 s, and the backlog grew by 200: 800 were sent.
        let (earlier, later) = (reading(500, Some(1_000)), reading(700, Some(2_000)));
        assert_eq!(later.write_rate(&earlier, ten), Some(100.0));
        assert_eq!(later.drain_rate(&earlier, ten), Some(80.0));
        // Nothing written, the backlog drained by 300.
        let rate = reading(200, Some(1_000)).drain_rate(&reading(500, Some(1_000)), ten);
        assert_eq!(rate, Some(30.0));
        // No id to go by: an empty outbox, or one emptied and begun again.
        assert_eq!(reading(0, None).drain_rate(&reading(5, Some(9)), ten), None);
        assert_eq!(
            reading(1, Some(1)).drain_rate(&reading(0, Some(9)), ten),
            None
        );
    }
}
