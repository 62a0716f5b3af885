//! The catalog on PostgreSQL: the database server for several API instances.
//!
//! The queries are the shared ones of [`super::sql`]; what is PostgreSQL's own is here:
//! `ILIKE`, its error codes, and how the relays of several API instances take turns at
//! the outbox. Write transactions run at READ COMMITTED: the statements that must not
//! race (version checks, the inbox insert) are single statements that lock the row
//! they change, and foreign keys catch what a concurrent delete removed.

use super::StoreError;
use super::sql::{Dialect, SqlStore};
use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::{Pool, Postgres, Transaction};

pub type PgStore = SqlStore<Postgres>;

impl PgStore {
    /// Connects to `postgres://USER@HOST:PORT/DATABASE`; the database must exist.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = Self::parse_url(url)?.application_name("retrocat");
        Self::open(options, 16).await
    }
}

#[async_trait]
impl Dialect for Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LIKE: &'static str = "ILIKE";
    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");
    const HOLD_TURN: bool = true;

    /// Class 08: connection exceptions; 57P01-57P03: the server is shutting down or
    /// starting up; 53300: too many connections.
    fn is_unavailable(code: &str) -> bool {
        code.starts_with("08") || code.starts_with("57P0") || code == "53300"
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    async fn outbox_turn(
        pool: &Pool<Self>,
    ) -> Result<Option<Transaction<'static, Self>>, StoreError> {
        // Several API instances run a relay each on one database. Skip-locking the
        // outbox rows themselves would let a second relay publish the rows after the
        // first relay's batch (a game's `update` before its `create`), so the relays
        // take turns instead: the one that locks the single `outbox_relay` row reads,
        // publishes and marks sent in one transaction (SKIP LOCKED: the others see
        // nothing to do instead of queueing). A relay that dies mid-batch drops its
        // connection, the lock goes with it, and the next one publishes the batch
        // again: at-least-once, as with one relay. No lease to tune, and the lock never
        // blocks catalog writes (they only insert into the outbox).
        let mut tx = pool.begin().await.map_err(Self::classify)?;
        let turn = sqlx::query("SELECT 1 FROM outbox_relay FOR UPDATE SKIP LOCKED")
            .fetch_optional(&mut *tx)
            .await
            .map_err(Self::classify)?;
        Ok(turn.map(|_| tx))
    }
}
