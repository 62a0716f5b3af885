//! The catalog on SQLite: the embedded default.
//!
//! One file, WAL journal. SQLite has a single writer, so write transactions start with
//! `BEGIN IMMEDIATE` (taking the write lock up front instead of failing with
//! `SQLITE_BUSY` when a reader tries to upgrade) and stay short. The queries are the
//! shared ones of [`super::sql`].

use super::direct::DirectReads;
use super::shared::FullText;
use super::sql::{Dialect, SqlStore, returning_ids};
use super::{PoolConfig, StoreError};
use async_trait::async_trait;
use sqlx::Sqlite;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnection, SqliteJournalMode, SqliteQueryResult, SqliteSynchronous,
};
use std::time::Duration;

pub type SqliteStore = SqlStore<Sqlite>;

impl SqliteStore {
    /// Opens `sqlite://PATH`, creating the file and its directory if needed.
    pub async fn connect(url: &str, pool: PoolConfig) -> Result<Self, StoreError> {
        let options = Self::parse_url(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL loses no committed transaction when the *process*
            // crashes (only on power loss or an OS crash may the last ones roll back),
            // and it saves an fsync per commit.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        if let Some(parent) = options.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let path = options.get_filename().to_owned();
        let store = Self::open(options, pool).await?;
        let connections = pool.size::<Sqlite>() as usize;
        let direct = DirectReads::open(&path, connections, pool.acquire_timeout);
        Ok(store.with_direct_reads(direct))
    }
}

#[async_trait]
impl Dialect for Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    /// SQLite's `LIKE` ignores ASCII case already.
    const LIKE: &'static str = "LIKE";
    /// `games_search` (migration 0005) and `games_words` (0006).
    const FULL_TEXT: Option<FullText> = Some(FullText {
        trigrams: "games_search",
        words: "games_words",
    });
    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
    /// One relay per SQLite file (the process that serves the API): reading the rows
    /// is the claim, and no transaction stays open while the broker confirms.
    const HOLD_TURN: bool = false;
    /// One writer at a time: more connections only serve more concurrent reads.
    const DEFAULT_MAX_CONNECTIONS: u32 = 8;
    /// A write transaction (`BEGIN IMMEDIATE`) holds the whole file's write lock.
    const LOCK_ROWS: &'static str = "";
    /// SQLite has one writer at a time: writers queue for the one write connection,
    /// first come first served, rather than in SQLite's busy handler, which sleeps up
    /// to 100 ms between tries and made the latency of a create under load jump.
    const WRITE_CONNECTIONS: Option<u32> = Some(1);

    const RETURNS_IDS: bool = true;

    /// A bare `?`. For each parameter it binds, sqlx asks SQLite for the parameter's
    /// name, which SQLite finds in a list of the statement's named parameters: a
    /// batch's insert of 640 numbered ones spent 10% of the write connection's time
    /// there (perf).
    fn parameter(_n: usize) -> String {
        "?".into()
    }

    /// `RETURNING id` (the rowid, which `id` aliases).
    async fn insert_ids(
        conn: &mut SqliteConnection,
        insert: Query<'static, Sqlite, SqliteArguments>,
    ) -> sqlx::Result<Vec<i64>> {
        returning_ids(conn, insert).await
    }

    /// `SQLITE_BUSY`: another connection held the write lock past the busy timeout.
    fn is_unavailable(error: &dyn DatabaseError) -> bool {
        error.code().is_some_and(|code| code == "5")
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Developer, EventId, GameDraft, GameTitle, ProcessingStatus, ReleaseYear};
    use crate::storage::{NewGame, Store, WriteKind};

    /// A group commit's turn holds the one writer: other writes wait meanwhile, the
    /// batch of its kind commits in it, and a turn that no write took ends when it is
    /// dropped (a batch that panicked), so the writer is free again.
    #[tokio::test]
    async fn a_turn_holds_the_writer_until_its_batch_is_written_or_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let quick = PoolConfig {
            acquire_timeout: Duration::from_millis(300),
            ..PoolConfig::default()
        };
        let store = SqliteStore::connect(&url, quick).await.unwrap();
        store.migrate().await.unwrap();
        let completed = || store.set_status(1, ProcessingStatus::Completed);

        let turn = store.begin_turn(WriteKind::Creates).await;
        let waited = completed().await;
        assert!(
            matches!(waited, Err(StoreError::Unavailable(_))),
            "{waited:?}"
        );
        let draft = GameDraft {
            title: GameTitle::parse("Taken in turn").unwrap(),
            platform_id: 1,
            genre_id: 1,
            developer: Developer::parse("Test Studio").unwrap(),
            release_year: ReleaseYear::parse(1991).unwrap(),
            description: String::new(),
            image_url: None,
        };
        let new = NewGame {
            draft,
            event: EventId::generate(),
        };
        let created = store.create_games(&[new]).await.unwrap();
        assert!(created[0].is_ok(), "{created:?}");
        completed()
            .await
            .expect("the batch's commit ended the turn");
        drop(turn);

        let unused = store.begin_turn(WriteKind::Starts).await;
        assert!(
            completed().await.is_err(),
            "the unused turn holds the writer"
        );
        drop(unused);
        completed().await.expect("a dropped turn frees the writer");
    }
}
