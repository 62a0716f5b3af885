//! The catalog on SQLite: the embedded default.
//!
//! One file, WAL journal. SQLite has a single writer, so write transactions start with
//! `BEGIN IMMEDIATE` (taking the write lock up front instead of failing with
//! `SQLITE_BUSY` when a reader tries to upgrade) and stay short. The queries are the
//! shared ones of [`super::sql`].

use super::direct::DirectReads;
use super::game_query::FullText;
use super::sql::{Dialect, SqlStore, returning_id};
use super::{PoolConfig, StoreError};
use async_trait::async_trait;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnection, SqliteJournalMode, SqliteQueryResult, SqliteSynchronous,
};
use sqlx::{Pool, Sqlite};
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
        Ok(
            match DirectReads::open(&path, connections, pool.acquire_timeout) {
                Some(direct) => store
                    .with_direct_reads(Some(direct))
                    .with_background(checkpoint_beside_the_writer),
                // In memory: no file, no WAL.
                None => store,
            },
        )
    }
}

/// How often the WAL is checkpointed while the catalog is being written.
const BUSY_CHECKPOINTS: Duration = Duration::from_millis(50);
/// How seldom, at most, while nothing is written.
const IDLE_CHECKPOINTS: Duration = Duration::from_secs(2);

/// Checkpoints the catalog's WAL beside the write connection, so that the writer
/// seldom has to.
///
/// SQLite checkpoints in the connection whose commit takes the WAL past 1,000 pages:
/// the one write connection, while every other write waits for it. A checkpoint copies
/// the WAL's pages into the database file and syncs both (`synchronous = NORMAL`):
/// 3–6 ms, once every few hundred commits, in the middle of a batch's writer slot. Here a
/// task checkpoints every 50 ms while the catalog is written, from a connection of the
/// pool: PASSIVE, so it neither waits for the writer nor holds it up. The writer's own
/// checkpoint then finds the pages copied already and only restarts the WAL, which a
/// checkpoint beside a busy writer cannot do: that is why the writer keeps its own.
async fn checkpoint_beside_the_writer(pool: Pool<Sqlite>) {
    let mut last = None;
    let mut pause = BUSY_CHECKPOINTS;
    loop {
        tokio::time::sleep(pause).await;
        // Pages in the WAL, and pages of them in the database file.
        let frames: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await;
        pause = match frames {
            Ok((_, wal, copied)) if last == Some((wal, copied)) => {
                (pause * 2).min(IDLE_CHECKPOINTS)
            }
            Ok((_, wal, copied)) => {
                last = Some((wal, copied));
                BUSY_CHECKPOINTS
            }
            // The writer checkpoints as ever meanwhile.
            Err(error) => {
                tracing::debug!(%error, "a checkpoint beside the writer failed");
                IDLE_CHECKPOINTS
            }
        };
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
    const HOLD_LEASE: bool = false;
    /// One writer at a time: more connections only serve more concurrent reads.
    const DEFAULT_MAX_CONNECTIONS: u32 = 8;
    /// A write transaction (`BEGIN IMMEDIATE`) holds the whole file's write lock.
    const LOCK_ROWS: &'static str = "";
    /// SQLite has one writer at a time: writers queue for the one write connection,
    /// first come first served, rather than in SQLite's busy handler, which sleeps up
    /// to 100 ms between tries and made the latency of a create under load jump.
    const ONE_WRITER: bool = true;

    const RETURNS_ROWS: bool = true;

    /// A bare `?`. For each parameter it binds, sqlx asks SQLite for the parameter's
    /// name, which SQLite finds in a list of the statement's named parameters: a
    /// batch's insert of 640 numbered ones spent 10% of the write connection's time
    /// there (perf).
    fn parameter(_n: usize) -> String {
        "?".into()
    }

    /// `RETURNING id` (the rowid, which `id` aliases).
    async fn insert_id(
        conn: &mut SqliteConnection,
        insert: Query<'static, Sqlite, SqliteArguments>,
    ) -> sqlx::Result<i64> {
        returning_id(conn, insert).await
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
    use crate::storage::{Backend, Catalog, NewGame, WriteKind};

    /// A group commit's writer slot holds the one writer: other writes wait meanwhile, the
    /// batch of its kind commits in it, and a slot that no write took ends when it is
    /// dropped (a batch that panicked), so the writer is free again.
    #[tokio::test]
    async fn a_writer_slot_holds_the_writer_until_its_batch_is_written_or_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let quick = PoolConfig {
            acquire_timeout: Duration::from_millis(300),
            ..PoolConfig::default()
        };
        let store = SqliteStore::connect(&url, quick).await.unwrap();
        store.migrate().await.unwrap();
        let completed = || store.set_status(1, ProcessingStatus::Completed, None);

        let slot = store.take_writer_slot(WriteKind::Creates).await;
        let waited = completed().await;
        assert!(
            matches!(waited, Err(StoreError::Unavailable(_))),
            "{waited:?}"
        );
        let draft = GameDraft {
            title: GameTitle::parse("Taken in its slot").unwrap(),
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
            trace: None,
        };
        let created = store.create_games(&[new]).await.unwrap();
        assert!(created[0].is_ok(), "{created:?}");
        completed()
            .await
            .expect("the batch's commit ended the slot");
        drop(slot);

        let unused = store.take_writer_slot(WriteKind::Starts).await;
        assert!(
            completed().await.is_err(),
            "the unused slot holds the writer"
        );
        drop(unused);
        completed().await.expect("a dropped slot frees the writer");
    }

    /// A write reaches the database file itself within moments, checkpointed beside the
    /// writer: the writer alone would leave it in the WAL until the WAL holds 1,000
    /// pages.
    #[tokio::test]
    async fn writes_are_checkpointed_into_the_database_file_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let url = format!("sqlite://{}", path.display());
        let store = SqliteStore::connect(&url, PoolConfig::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
            .set_status(1, ProcessingStatus::Failed, None)
            .await
            .unwrap();

        // `immutable`: the file alone, without its WAL.
        let file = format!("file:{}?immutable=1", path.display());
        let status_in_file = || {
            let flags =
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
            let conn = rusqlite::Connection::open_with_flags(&file, flags).unwrap();
            conn.query_row(
                "SELECT processing_status FROM games WHERE id = 1",
                [],
                |row| row.get::<_, String>(0),
            )
            // Not even the migrations' tables, at first.
            .ok()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while status_in_file().as_deref() != Some("failed") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the write is still only in the WAL"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
