//! Every SQL statement of the embedded broker, on the engine's one connection.
//!
//! Two message tables keep the hot query simple: `messages` holds ready (and leased)
//! messages, read in delivery order through one index; `delayed` holds messages whose
//! time has not come, read by due time. A delayed message moves to `messages` when due
//! and gets a new `seq` then, so it queues behind what was ready before it (as a
//! RabbitMQ message does when its TTL dead-letters it back to a queue).

use std::collections::HashMap;

use bytes::Bytes;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::routing;
use crate::broker::{BrokerError, ExchangeSpec, QueueSpec};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS exchanges (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    alternate_exchange TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    durable INTEGER NOT NULL,
    exclusive INTEGER NOT NULL,
    max_priority INTEGER,
    dead_letter_queue TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS bindings (
    exchange TEXT NOT NULL,
    queue TEXT NOT NULL,
    pattern TEXT NOT NULL,
    PRIMARY KEY (exchange, queue, pattern)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL
) STRICT;
-- Delivery order: highest (effective) priority first, then FIFO.
CREATE INDEX IF NOT EXISTS messages_in_delivery_order ON messages (queue, priority DESC, seq);
CREATE TABLE IF NOT EXISTS delayed (
    seq INTEGER PRIMARY KEY,
    visible_at INTEGER NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS delayed_by_due_time ON delayed (visible_at, seq);
CREATE INDEX IF NOT EXISTS delayed_by_queue ON delayed (queue);
";

/// Rows per multi-row INSERT. Chunks are this size or a smaller power of two, so at most
/// seven distinct statements per table live in the connection's statement cache.
const INSERT_CHUNK: usize = 64;

pub(super) fn sql_error(error: sqlx::Error) -> BrokerError {
    BrokerError::Other(format!("embedded broker database: {error}"))
}

/// A message row to insert. `properties` is the JSON of [`crate::broker::Properties`].
pub(super) struct NewRow {
    pub seq: i64,
    pub queue: String,
    pub priority: u8,
    pub exchange: String,
    pub routing_key: String,
    pub properties: String,
    pub body: Bytes,
    /// Milliseconds since the Unix epoch; `None` for a ready message.
    pub visible_at: Option<i64>,
}

/// A ready message as read in delivery order.
pub(super) struct StoredRow {
    pub seq: i64,
    pub priority: u8,
    pub exchange: String,
    pub routing_key: String,
    pub properties: String,
    pub body: Vec<u8>,
}

/// What `open` finds in the file.
pub(super) struct Loaded {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<(String, String, String)>,
    /// Messages per queue in `messages`, then in `delayed`.
    pub ready_counts: HashMap<String, u64>,
    pub delayed_counts: HashMap<String, u64>,
    /// Greater than every `seq` in the file.
    pub next_seq: i64,
    pub next_due: Option<i64>,
}

pub(super) async fn create_schema(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SCHEMA).execute(&mut *conn).await?;
    // Files written before exchanges had alternates gain the column.
    let has_alternate: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('exchanges') \
         WHERE name = 'alternate_exchange')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !has_alternate {
        sqlx::raw_sql("ALTER TABLE exchanges ADD COLUMN alternate_exchange TEXT")
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Exclusive and non-durable queues belong to the process that declared them: like
/// RabbitMQ after a restart, the broker forgets them and their messages.
pub(super) async fn drop_transient_queues(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let transient: Vec<String> =
        sqlx::query_scalar("SELECT name FROM queues WHERE exclusive OR NOT durable")
            .fetch_all(&mut *conn)
            .await?;
    for queue in transient {
        delete_queue(conn, &queue).await?;
    }
    Ok(())
}

pub(super) async fn load(conn: &mut SqliteConnection) -> Result<Loaded, BrokerError> {
    let corrupt = |what: String| BrokerError::Other(format!("embedded broker database: {what}"));

    let mut exchanges = Vec::new();
    for row in sqlx::query("SELECT name, kind, alternate_exchange FROM exchanges")
        .fetch_all(&mut *conn)
        .await
        .map_err(sql_error)?
    {
        let name: String = row.try_get("name").map_err(sql_error)?;
        let kind: String = row.try_get("kind").map_err(sql_error)?;
        let kind = routing::parse_kind(&kind)
            .ok_or_else(|| corrupt(format!("exchange {name:?} has unknown kind {kind:?}")))?;
        exchanges.push(ExchangeSpec {
            alternate_exchange: row.try_get("alternate_exchange").map_err(sql_error)?,
            ..ExchangeSpec::new(name, kind)
        });
    }

    let mut queues = Vec::new();
    for row in
        sqlx::query("SELECT name, durable, exclusive, max_priority, dead_letter_queue FROM queues")
            .fetch_all(&mut *conn)
            .await
            .map_err(sql_error)?
    {
        let name: String = row.try_get("name").map_err(sql_error)?;
        let max_priority: Option<i64> = row.try_get("max_priority").map_err(sql_error)?;
        let max_priority = max_priority
            .map(u8::try_from)
            .transpose()
            .map_err(|_| corrupt(format!("queue {name:?} has an invalid max_priority")))?;
        queues.push(QueueSpec {
            durable: row.try_get("durable").map_err(sql_error)?,
            exclusive: row.try_get("exclusive").map_err(sql_error)?,
            max_priority,
            dead_letter_queue: row.try_get("dead_letter_queue").map_err(sql_error)?,
            name,
        });
    }

    let bindings = sqlx::query_as("SELECT exchange, queue, pattern FROM bindings")
        .fetch_all(&mut *conn)
        .await
        .map_err(sql_error)?;

    // One pass over each index at open; from then on the engine keeps the counts.
    let ready_counts = count_per_queue(conn, "SELECT queue, COUNT(*) FROM messages GROUP BY queue")
        .await
        .map_err(sql_error)?;
    let delayed_counts =
        count_per_queue(conn, "SELECT queue, COUNT(*) FROM delayed GROUP BY queue")
            .await
            .map_err(sql_error)?;

    let max_seq: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(seq) FROM (SELECT MAX(seq) AS seq FROM messages
                               UNION ALL SELECT MAX(seq) FROM delayed)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(sql_error)?;
    let next_due = next_due(conn).await.map_err(sql_error)?;

    Ok(Loaded {
        exchanges,
        queues,
        bindings,
        ready_counts,
        delayed_counts,
        next_seq: max_seq.unwrap_or(0) + 1,
        next_due,
    })
}

async fn count_per_queue(
    conn: &mut SqliteConnection,
    sql: &'static str,
) -> Result<HashMap<String, u64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(queue, count)| (queue, count.unsigned_abs()))
        .collect())
}

pub(super) async fn insert_exchange(
    conn: &mut SqliteConnection,
    spec: &ExchangeSpec,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT OR IGNORE INTO exchanges (name, kind, alternate_exchange) VALUES (?1, ?2, ?3)",
    )
    .bind(&spec.name)
    .bind(routing::kind_name(spec.kind))
    .bind(&spec.alternate_exchange)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts or updates a queue: only its dead-letter queue may change on redeclaration.
pub(super) async fn upsert_queue(
    conn: &mut SqliteConnection,
    spec: &QueueSpec,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO queues (name, durable, exclusive, max_priority, dead_letter_queue)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (name) DO UPDATE SET dead_letter_queue = excluded.dead_letter_queue",
    )
    .bind(&spec.name)
    .bind(spec.durable)
    .bind(spec.exclusive)
    .bind(spec.max_priority.map(i64::from))
    .bind(&spec.dead_letter_queue)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn insert_binding(
    conn: &mut SqliteConnection,
    exchange: &str,
    queue: &str,
    pattern: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT OR IGNORE INTO bindings (exchange, queue, pattern) VALUES (?1, ?2, ?3)")
        .bind(exchange)
        .bind(queue)
        .bind(pattern)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes a queue, its bindings and its messages, in one transaction.
pub(super) async fn delete_queue(
    conn: &mut SqliteConnection,
    queue: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for sql in [
        "DELETE FROM messages WHERE queue = ?1",
        "DELETE FROM delayed WHERE queue = ?1",
        "DELETE FROM bindings WHERE queue = ?1",
        "DELETE FROM queues WHERE name = ?1",
    ] {
        sqlx::query(sql).bind(queue).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Inserts rows into `messages` or `delayed` (by `visible_at`) with multi-row INSERTs:
/// one statement per chunk instead of one per message keeps a publish batch cheap.
pub(super) async fn insert_rows(
    conn: &mut SqliteConnection,
    rows: &[NewRow],
) -> Result<(), sqlx::Error> {
    let (delayed, ready): (Vec<&NewRow>, Vec<&NewRow>) =
        rows.iter().partition(|row| row.visible_at.is_some());
    for (sql, rows) in [(INSERT_READY, ready), (INSERT_DELAYED, delayed)] {
        let mut rest = rows.as_slice();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_size(rest.len()));
            insert_chunk(&mut *conn, sql, chunk).await?;
            rest = tail;
        }
    }
    Ok(())
}

const INSERT_READY: &str =
    "INSERT INTO messages (seq, queue, priority, exchange, routing_key, properties, body) ";
const INSERT_DELAYED: &str = "INSERT INTO delayed \
    (seq, visible_at, queue, priority, exchange, routing_key, properties, body) ";

fn chunk_size(remaining: usize) -> usize {
    if remaining >= INSERT_CHUNK {
        INSERT_CHUNK
    } else {
        1 << remaining.ilog2()
    }
}

async fn insert_chunk(
    conn: &mut SqliteConnection,
    insert: &'static str,
    rows: &[&NewRow],
) -> Result<(), sqlx::Error> {
    let mut query = QueryBuilder::<Sqlite>::new(insert);
    query.push_values(rows, |mut values, row| {
        values.push_bind(row.seq);
        if let Some(visible_at) = row.visible_at {
            values.push_bind(visible_at);
        }
        values
            .push_bind(row.queue.as_str())
            .push_bind(i64::from(row.priority))
            .push_bind(row.exchange.as_str())
            .push_bind(row.routing_key.as_str())
            .push_bind(row.properties.as_str())
            .push_bind(row.body.as_ref());
    });
    query.build().execute(conn).await?;
    Ok(())
}

/// Deletes settled messages by `seq`, in one statement.
pub(super) async fn delete_messages(
    conn: &mut SqliteConnection,
    seqs: &[i64],
) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM messages WHERE seq IN (SELECT value FROM json_each(?1))")
        .bind(json_array(seqs))
        .execute(conn)
        .await?;
    Ok(())
}

/// Up to `limit` ready messages of `queue` that come after `after` in delivery order
/// (`(priority, seq)`, priority descending); from the start when `after` is `None`.
pub(super) async fn fetch_ready(
    conn: &mut SqliteConnection,
    queue: &str,
    after: Option<(u8, i64)>,
    limit: usize,
) -> Result<Vec<StoredRow>, sqlx::Error> {
    // Priorities are at most 255, so 256 puts "the start" before every message.
    let (priority, seq) = after.map_or((256, 0), |(priority, seq)| (i64::from(priority), seq));
    let rows = sqlx::query(
        "SELECT seq, priority, exchange, routing_key, properties, body FROM messages
         WHERE queue = ?1 AND (priority < ?2 OR (priority = ?2 AND seq > ?3))
         ORDER BY priority DESC, seq
         LIMIT ?4",
    )
    .bind(queue)
    .bind(priority)
    .bind(seq)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let priority: i64 = row.try_get("priority")?;
            Ok(StoredRow {
                seq: row.try_get("seq")?,
                priority: u8::try_from(priority).map_err(|error| sqlx::Error::ColumnDecode {
                    index: "priority".into(),
                    source: Box::new(error),
                })?,
                exchange: row.try_get("exchange")?,
                routing_key: row.try_get("routing_key")?,
                properties: row.try_get("properties")?,
                body: row.try_get("body")?,
            })
        })
        .collect()
}

/// A delayed message made ready: its queue, effective priority and new `seq`.
pub(super) struct Promoted {
    pub queue: String,
    pub priority: u8,
    pub seq: i64,
}

/// Moves up to `limit` delayed messages due at `now` into `messages`, giving them new
/// sequence numbers from `next_seq` in due order. Three statements whatever the count.
pub(super) async fn promote_due(
    conn: &mut SqliteConnection,
    now: i64,
    limit: usize,
    next_seq: i64,
) -> Result<Vec<Promoted>, sqlx::Error> {
    let due: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT seq, queue, priority FROM delayed WHERE visible_at <= ?1
         ORDER BY visible_at, seq LIMIT ?2",
    )
    .bind(now)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let mut pairs = Vec::with_capacity(due.len());
    let mut promoted = Vec::with_capacity(due.len());
    for ((old_seq, queue, priority), new_seq) in due.into_iter().zip(next_seq..) {
        pairs.push([old_seq, new_seq]);
        promoted.push(Promoted {
            queue,
            // Written by us from a u8; a corrupt value falls back to the lowest priority.
            priority: u8::try_from(priority).unwrap_or(0),
            seq: new_seq,
        });
    }
    let pairs =
        serde_json::to_string(&pairs).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    sqlx::query(
        "INSERT INTO messages (seq, queue, priority, exchange, routing_key, properties, body)
         SELECT pair.value ->> 1, d.queue, d.priority, d.exchange, d.routing_key, d.properties, d.body
         FROM json_each(?1) AS pair JOIN delayed AS d ON d.seq = pair.value ->> 0",
    )
    .bind(&pairs)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM delayed WHERE seq IN (SELECT value ->> 0 FROM json_each(?1))")
        .bind(&pairs)
        .execute(&mut *conn)
        .await?;
    Ok(promoted)
}

/// When the next delayed message is due, if any.
pub(super) async fn next_due(conn: &mut SqliteConnection) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MIN(visible_at) FROM delayed")
        .fetch_one(conn)
        .await
}

fn json_array(seqs: &[i64]) -> String {
    let mut json = String::with_capacity(seqs.len() * 8 + 2);
    json.push('[');
    for (index, seq) in seqs.iter().enumerate() {
        if index > 0 {
            json.push(',');
        }
        json.push_str(&seq.to_string());
    }
    json.push(']');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_chunks_are_full_or_a_power_of_two() {
        let mut sizes = Vec::new();
        let mut remaining = 64 + 64 + 45;
        while remaining > 0 {
            let size = chunk_size(remaining);
            sizes.push(size);
            remaining -= size;
        }
        assert_eq!(sizes, [64, 64, 32, 8, 4, 1]);
    }

    #[test]
    fn seqs_become_a_json_array() {
        assert_eq!(json_array(&[]), "[]");
        assert_eq!(json_array(&[3, 10, 7]), "[3,10,7]");
    }
}
