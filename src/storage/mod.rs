//! The catalog database, behind the [`Store`] trait.
//!
//! Every catalog write commits its event to the *outbox* in the same transaction, so the
//! catalog and the event stream can never disagree: a write without its event, or an
//! event without its write, is impossible. Processing results commit together with the
//! *inbox* row of the event they answer, so a redelivered event cannot apply twice.
//!
//! `Store` is made of one trait per concern, each with its SQL in the file of its name:
//! [`catalog`] (games), [`references`] (platforms and genres), [`processing`] (a
//! worker's start and finish, and the inbox), [`tasks`] (the processing views),
//! [`received`] (what subscribers received), [`outbox`], [`pauses`] (paused queues),
//! [`circuits`] (the workers' open circuit breakers), [`accounts`] and [`retention`].
//! The SQL is written once for every backend ([`sql`]), with rows read
//! by [`rows`] and the list query built by [`game_query`].
//!
//! SQLite is the embedded default; PostgreSQL and MySQL/MariaDB are the database servers
//! for several API instances. Each backend file holds only its dialect: how
//! transactions start, its error codes, its migrations, and what its SQL spells
//! differently.

pub mod accounts;
mod catalog;
mod circuits;
mod connect;
mod cursor;
mod direct;
mod game_query;
mod game_stream;
mod group_commit;
pub mod mysql;
mod outbox;
mod pauses;
pub mod postgres;
mod processing;
mod received;
mod references;
mod retention;
mod rows;
mod sql;
pub mod sqlite;
mod tasks;
mod writer;

use async_trait::async_trait;
use std::time::Duration;

pub use accounts::Accounts;
pub use catalog::{Catalog, Cover, GameUpdate, NewGame};
pub use circuits::{Circuit, CircuitState, Circuits, OpenCircuit};
pub use connect::connect;
pub use game_query::{GamePage, GameQuery, GameSort, PageRequest};
pub use game_stream::GameBatches;
pub use group_commit::GroupCommit;
pub use outbox::{Outbox, OutboxBacklog, OutboxLease, OutboxMessage};
pub use pauses::Pauses;
pub use processing::{
    FinishOutcome, Processing, ProcessingRecord, ProcessingResult, StartOutcome, StartRequest,
    WorkItem,
};
pub use received::{Received, ReceivedMessage};
pub use references::References;
pub use retention::{PruneReport, Retention};
pub use tasks::{
    Attempt, AttemptOutcome, PendingGame, StatusCounts, TaskFilter, TaskPage, TaskSort, TaskView,
    Tasks,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: i64 },
    /// A foreign key names a row that does not exist (`platformId`, `genreId`).
    #[error("{field}: no such {entity} {id}")]
    UnknownReference {
        field: &'static str,
        entity: &'static str,
        id: i64,
    },
    /// A uniqueness or reference rule refuses the write (e.g. deleting a used platform).
    #[error("{0}")]
    Conflict(String),
    #[error("cursor: not a cursor this server issued for this sort order")]
    InvalidCursor,
    /// The database cannot be reached now; the request may be retried.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A read of SQLite's on the calling thread failed (see `direct`).
    #[error("reading the catalog: {0}")]
    DirectRead(#[from] rusqlite::Error),
    /// A group-committed write's batch panicked (a bug); nothing of it was written.
    #[error(transparent)]
    Panicked(#[from] group_commit::Panicked),
}

/// `url` with its password masked, for messages and logs: a MySQL or PostgreSQL
/// `DATABASE_URL` often carries one. A URL that does not parse is not shown at all.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(a URL that does not parse)".into(),
    }
}

/// Connection pool limits (`--db-max-connections`, `--db-acquire-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Connections open at most; `None`: the backend's default (8 for SQLite, one
    /// writer at a time; 16 for a database server).
    pub max_connections: Option<u32>,
    /// How long a request waits for a free connection before it fails with 503: while
    /// the database is down or saturated, clients hear so in seconds instead of
    /// queueing behind a pool that cannot connect.
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// The group-committed writes, each batched by a group commit of its own
/// ([`GroupCommit`]): see [`Backend::take_writer_slot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteKind {
    Creates,
    Updates,
    Starts,
    Finishes,
}

/// A batch's slot at the writer ([`Backend::take_writer_slot`]): when dropped, it ends
/// the slot's transaction if no write took it, so that the writer is never held by a
/// batch that panicked before writing.
#[derive(Default)]
pub struct WriterSlot(Option<Box<dyn FnOnce() + Send>>);

impl WriterSlot {
    pub(crate) fn ending_with(end: impl FnOnce() + Send + 'static) -> Self {
        Self(Some(Box::new(end)))
    }
}

impl Drop for WriterSlot {
    fn drop(&mut self) {
        if let Some(end) = self.0.take() {
            end();
        }
    }
}

/// The database itself: its schema, whether it answers, and its writer.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Applies pending migrations (schema and seed data). Safe to run repeatedly.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Fails when the database cannot be reached (readiness checks).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Where writes queue for one connection (SQLite), begins the transaction of the
    /// next `kind` batch: its group commit awaits this before it takes the batch, so
    /// that the requests that come while it waits for the writer join the batch instead
    /// of waiting for the next slot. The next write of that kind commits in it; the
    /// [`WriterSlot`], dropped once that write has returned, rolls it back if the write
    /// did not use it. Elsewhere it does nothing. A failure to begin is left to the write,
    /// which begins again and reports it.
    async fn take_writer_slot(&self, kind: WriteKind) -> WriterSlot;
}

/// The catalog database: the trait of each concern, each in the file of its name.
/// Implementations: SQLite ([`sqlite::SqliteStore`]), PostgreSQL
/// ([`postgres::PgStore`]) and MySQL/MariaDB ([`mysql::MySqlStore`]).
pub trait Store:
    Backend
    + Accounts
    + Catalog
    + References
    + Tasks
    + Processing
    + Received
    + Outbox
    + Pauses
    + Circuits
    + Retention
    + 'static
{
}

impl<T> Store for T where
    T: Backend
        + Accounts
        + Catalog
        + References
        + Tasks
        + Processing
        + Received
        + Outbox
        + Pauses
        + Circuits
        + Retention
        + 'static
{
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn a_database_urls_password_is_masked_and_the_rest_kept() {
        assert_eq!(
            redacted("mysql://app:s3cret@db:3306/retrocat"),
            "mysql://app:***@db:3306/retrocat"
        );
        let plain = "postgres://postgres@127.0.0.1:5432/retrocat";
        assert_eq!(redacted(plain), plain);
        assert!(!redacted("mysql://app:s3cret@[db/x").contains("s3cret"));
    }
}
