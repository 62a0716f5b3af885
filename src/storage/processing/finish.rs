//! A finish: the results of a batch of attempts, written in one transaction with the
//! inbox rows of the events they settle.

use super::{FinishOutcome, ProcessingRecord, ProcessingResult};
use crate::domain::{CatalogEvent, ProcessingStatus};
use crate::storage::outbox::OutboxMessage;
use crate::storage::rows::Columns;
use crate::storage::sql::{Dialect, SqlStore, Value, push_list, upsert};
use crate::storage::{StoreError, WriteKind};
use sqlx::{Executor, QueryBuilder};
use std::collections::{HashMap, HashSet};

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
    Option<String>: Value<DB>,
{
    /// Writes a batch of finished attempts in one transaction (see
    /// [`Processing::finish_processing`]), or nothing: `None` when the inbox refused one
    /// of the events, claimed meanwhile by a concurrent delivery. The steps: claim the
    /// events in the inbox, record the attempts, settle the games' statuses, store or
    /// drop thumbnails, and append the `game.processed`/`game.failed` events.
    pub(super) async fn finish_batch(
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
        let duplicate = duplicates(records, &seen);
        let written: Vec<&ProcessingRecord> = records
            .iter()
            .zip(&duplicate)
            .filter(|(_, duplicate)| !**duplicate)
            .map(|(record, _)| record)
            .collect();
        Self::record_attempts(&mut tx, &written).await?;
        let settled = Self::settle_statuses(&mut tx, &written).await?;
        Self::store_thumbnails(&mut tx, &settled, &written).await?;
        let events: Vec<OutboxMessage> = settled
            .applied
            .iter()
            .map(|(r, status)| {
                let event = CatalogEvent::game_settled(r.game_id, r.version, *status, &r.event_id);
                OutboxMessage::event(&event, None)
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
                    if !settled.is_current(record) =>
                {
                    FinishOutcome::Superseded
                }
                _ => FinishOutcome::Applied,
            })
            .collect();
        Ok(Some(outcomes))
    }

    /// Records the attempts `written`, with one statement.
    async fn record_attempts(
        conn: &mut DB::Connection,
        written: &[&ProcessingRecord],
    ) -> Result<(), StoreError> {
        if written.is_empty() {
            return Ok(());
        }
        let mut sql = QueryBuilder::<DB>::new(
            "INSERT INTO processing_attempts (event_id, game_id, version, attempt, \
             outcome, error, started_at, finished_at, duration_ms, worker, trace_id) ",
        );
        sql.push_values(written, |mut row, record| {
            let started = record.started_at.timestamp_millis();
            let finished = record.finished_at.timestamp_millis();
            row.push_bind(record.event_id.as_str().to_owned())
                .push_bind(record.game_id)
                .push_bind(record.version)
                .push_bind(i64::from(record.attempt))
                .push_bind(outcome_name(&record.result).to_owned())
                .push_bind(attempt_error(record).map(str::to_owned))
                .push_bind(started)
                .push_bind(finished)
                .push_bind((finished - started).max(0))
                .push_bind(record.worker.clone())
                .push_bind(record.trace_id.clone());
        });
        sql.build().execute(conn).await.map_err(DB::classify)?;
        Ok(())
    }

    /// Sets the status of each game that a completed or failed record of `written`
    /// settles, if the record describes its current version: a newer write wins.
    async fn settle_statuses<'r>(
        conn: &mut DB::Connection,
        written: &[&'r ProcessingRecord],
    ) -> Result<Settled<'r>, StoreError> {
        let settling: Vec<(&ProcessingRecord, ProcessingStatus)> = written
            .iter()
            .filter_map(|record| match record.result {
                ProcessingResult::Completed { .. } => Some((*record, ProcessingStatus::Completed)),
                ProcessingResult::Failed { .. } => Some((*record, ProcessingStatus::Failed)),
                _ => None,
            })
            .collect();
        let mut settled = Settled {
            current: HashMap::new(),
            applied: Vec::new(),
        };
        if settling.is_empty() {
            return Ok(settled);
        }
        settled.current = Self::lock_games(conn, settling.iter().map(|(r, _)| r.game_id)).await?;
        settled.applied = settling
            .into_iter()
            .filter(|(record, _)| settled.is_current(record))
            .collect();
        for status in [ProcessingStatus::Completed, ProcessingStatus::Failed] {
            let games: Vec<i64> = settled
                .applied
                .iter()
                .filter(|(_, s)| *s == status)
                .map(|(r, _)| r.game_id)
                .collect();
            if !games.is_empty() {
                let mut sql = QueryBuilder::<DB>::new("UPDATE games SET processing_status = ");
                sql.push_bind(status.as_str().to_owned())
                    .push(" WHERE id IN ");
                push_list(&mut sql, games);
                sql.build()
                    .execute(&mut *conn)
                    .await
                    .map_err(DB::classify)?;
            }
        }
        Ok(settled)
    }

    /// A completed version stores its thumbnail, or drops an older one (no cover) if
    /// there is one: only a finish holding the game's lock writes it. A deleted game's
    /// goes.
    async fn store_thumbnails(
        conn: &mut DB::Connection,
        settled: &Settled<'_>,
        written: &[&ProcessingRecord],
    ) -> Result<(), StoreError> {
        let mut uncovered = Vec::new();
        for (record, _) in &settled.applied {
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
                    .execute(&mut *conn)
                    .await
                    .map_err(DB::classify)?;
                }
                ProcessingResult::Completed { thumbnail: None }
                    if settled.current[&record.game_id].thumbnailed =>
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
                sql.build()
                    .execute(&mut *conn)
                    .await
                    .map_err(DB::classify)?;
            }
        }
        Ok(())
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

    /// Another delivery of this event settled it meanwhile. If this one's start came
    /// after that settlement, the game now reads `processing`: give it back the status
    /// the settled attempt recorded, or it stays `processing`. Outside the refused
    /// transaction, which PostgreSQL aborted.
    pub(super) async fn restore_settled_status(
        &self,
        record: &ProcessingRecord,
    ) -> Result<(), StoreError> {
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
}

/// A game as a finish finds it, its row locked.
struct LockedGame {
    version: i64,
    /// It has a thumbnail.
    thumbnailed: bool,
}

/// The games a finish settles, locked as it found them, and the records it applies.
struct Settled<'r> {
    current: HashMap<i64, LockedGame>,
    /// The completed and failed records of the games' current versions.
    applied: Vec<(&'r ProcessingRecord, ProcessingStatus)>,
}

impl Settled<'_> {
    /// Whether `record` describes its game's current version.
    fn is_current(&self, record: &ProcessingRecord) -> bool {
        self.current
            .get(&record.game_id)
            .is_some_and(|game| game.version == record.version)
    }
}

/// Which of `records` come from a duplicate delivery: a final result whose event the
/// inbox held (`seen`), or one that an earlier record of the batch settles.
fn duplicates(records: &[ProcessingRecord], seen: &HashSet<String>) -> Vec<bool> {
    let mut claims = HashSet::new();
    records
        .iter()
        .map(|r| {
            let event = r.event_id.as_str();
            r.result.is_final() && (seen.contains(event) || !claims.insert(event))
        })
        .collect()
}

/// The `outcome` column of a processing attempt.
fn outcome_name(result: &ProcessingResult) -> &'static str {
    match result {
        ProcessingResult::Completed { .. } | ProcessingResult::CleanedUp => "completed",
        ProcessingResult::Retry { .. } => "retry",
        ProcessingResult::Failed { .. } => "failed",
        ProcessingResult::Skipped { .. } => "skipped",
    }
}

/// The `error` column of a processing attempt: why it failed or was skipped.
fn attempt_error(record: &ProcessingRecord) -> Option<&str> {
    match &record.result {
        ProcessingResult::Retry { error } | ProcessingResult::Failed { error } => {
            Some(error.as_str())
        }
        ProcessingResult::Skipped { reason } => Some(reason.as_str()),
        _ => None,
    }
}
