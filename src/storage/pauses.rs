//! Paused queues: the queues an operator stopped consumption of, in the
//! `paused_queues` table, so that the pause reaches every worker of every process
//! (each polls [`Pauses::paused_queues`]) and survives restarts.

use super::StoreError;
use super::rows::Columns;
use super::sql::{Dialect, SqlStore, Value, is_duplicate, now_ms};
use async_trait::async_trait;
use sqlx::Executor;

/// Paused queues: a part of every [`super::Store`].
#[async_trait]
pub trait Pauses: Send + Sync {
    /// Pauses `queue`; false if it was paused already.
    async fn pause_queue(&self, queue: &str) -> Result<bool, StoreError>;
    /// Resumes `queue`; false if it was not paused.
    async fn resume_queue(&self, queue: &str) -> Result<bool, StoreError>;
    /// The queues paused now, by name.
    async fn paused_queues(&self) -> Result<Vec<String>, StoreError>;
}

#[async_trait]
impl<DB> Pauses for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
{
    async fn pause_queue(&self, queue: &str) -> Result<bool, StoreError> {
        let insert = sqlx::query(DB::sql(
            "INSERT INTO paused_queues (queue, paused_at) VALUES ($1, $2)",
        ))
        .bind(queue.to_owned())
        .bind(now_ms());
        match self.writer.execute(insert).await {
            Ok(_) => Ok(true),
            Err(error) if is_duplicate(&error) => Ok(false),
            Err(error) => Err(DB::classify(error)),
        }
    }

    async fn resume_queue(&self, queue: &str) -> Result<bool, StoreError> {
        let delete = sqlx::query(DB::sql("DELETE FROM paused_queues WHERE queue = $1"))
            .bind(queue.to_owned());
        let deleted = self.writer.execute(delete).await.map_err(DB::classify)?;
        Ok(DB::rows_affected(&deleted) > 0)
    }

    async fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT queue FROM paused_queues ORDER BY queue")
            .fetch_all(&self.pool)
            .await
            .map_err(DB::classify)?;
        rows.iter().map(|row| Ok(row.text("queue")?)).collect()
    }
}
