//! What subscribers received ([`Received`]): the audit log's entries and the custom
//! messages, each recorded once per subscriber (a unique `(subscriber, message_id)`).

use super::StoreError;
use super::rows::Columns;
use super::sql::{Dialect, SqlStore, Value, is_duplicate};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Executor, QueryBuilder};

/// A message as a subscriber received it: an entry of the audit log, or a custom
/// message the custom-message consumer took.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedMessage {
    pub subscriber: String,
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    #[schema(value_type = HashMap<String, crate::broker::HeaderValue>)]
    pub headers: crate::broker::Headers,
    /// The body as JSON; a body that is not JSON is shown as a string.
    pub body: serde_json::Value,
    pub received_at: DateTime<Utc>,
}

/// What subscribers received: the audit log and the custom messages.
#[async_trait]
pub trait Received: Send + Sync {
    /// Records each message for its subscriber, in one statement when none was
    /// recorded before; false for one that was (a redelivery), which changes nothing.
    async fn record_received(&self, messages: &[ReceivedMessage]) -> Result<Vec<bool>, StoreError>;
    /// The latest `limit` messages a subscriber received, newest first.
    async fn received(
        &self,
        subscriber: &str,
        limit: u32,
    ) -> Result<Vec<ReceivedMessage>, StoreError>;
}

#[async_trait]
impl<DB> Received for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
{
    async fn record_received(&self, messages: &[ReceivedMessage]) -> Result<Vec<bool>, StoreError> {
        match self.insert_received(messages).await {
            Ok(()) => return Ok(vec![true; messages.len()]),
            // The unique (subscriber, message_id) key: one of them was recorded before,
            // by another delivery of the same message. One by one, so that only those
            // are refused.
            Err(error) if is_duplicate(&error) => {}
            Err(error) => return Err(DB::classify(error)),
        }
        let mut recorded = Vec::with_capacity(messages.len());
        for message in messages {
            recorded.push(
                match self.insert_received(std::slice::from_ref(message)).await {
                    Ok(()) => true,
                    Err(error) if is_duplicate(&error) => false,
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
        rows.iter().map(received_from_row).collect()
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
}

/// A row of `received_messages`; the body was stored as JSON text.
fn received_from_row(row: &impl Columns) -> Result<ReceivedMessage, StoreError> {
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
