//! A worker's writes ([`Processing`]): it starts an event's processing, then records
//! its result. The *inbox* holds the ids of settled events: its row commits with the
//! result, so a redelivered event cannot apply twice.

mod finish;

use super::rows::Columns;
use super::sql::{Dialect, SqlStore, Value, is_duplicate, now_ms, push_list};
use super::{StoreError, WriteKind};
use crate::domain::{EventId, ProcessingStatus, Thumbnail};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Executor, QueryBuilder};
use std::collections::{HashMap, HashSet};

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

/// A worker's writes: the start of an event's processing and its result. Both take a
/// batch and answer in its order; a worker's concurrent deliveries share them (see
/// [`super::GroupCommit`]).
#[async_trait]
pub trait Processing: Send + Sync {
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
}

#[async_trait]
impl<DB> Processing for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
    Option<String>: Value<DB>,
{
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
            games.insert(id, (work_item_from_row(id, row)?, completed));
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
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
    Option<String>: Value<DB>,
{
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
                Err(error) if is_duplicate(&error) => return Ok(None),
                other => other.map_err(DB::classify)?,
            };
        }
        Ok(Some(seen))
    }
}

/// A game's row as the start of processing reads it: what the worker needs.
fn work_item_from_row(game_id: i64, row: &impl Columns) -> Result<WorkItem, StoreError> {
    Ok(WorkItem {
        game_id,
        version: row.int("version")?,
        title: row.text("title")?,
        image_url: row.opt_text("image_url")?,
        has_cover: row.flag("has_cover")?,
    })
}
