//! Reads of one game by id on SQLite, run on the calling thread.
//!
//! sqlx runs every SQLite connection on a thread of its own and hands each statement
//! and each row across a channel. For `GET /api/games/{id}` that hand-off was most of
//! the cost: a lookup by primary key is a few microseconds of SQLite's work, and under
//! load the server spent two thirds of its time in the kernel switching between its
//! tokio workers and the connections' threads (docs/benchmarks.md). These reads open
//! the same file read-only with rusqlite and run the lookup where the request is:
//! no more blocking than serializing the answer. Everything else (writes, lists, the
//! worker's transactions) stays on sqlx.

use super::StoreError;
use super::shared::{self, Columns, GAME_COLUMNS};
use crate::domain::Game;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Connections kept open between reads; more are opened while more read at once.
const IDLE_CONNECTIONS: usize = 8;

/// Read-only connections to the catalog's file, reused from read to read.
pub struct DirectReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl DirectReads {
    /// Reads from the database file at `path`, which sqlx has created and migrated.
    /// `None` for an in-memory database, which another connection cannot see.
    pub fn open(path: &Path) -> Option<Self> {
        path.is_file().then(|| Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The game with `id`, as [`super::Store::game`] reads it.
    pub fn game(&self, id: i64) -> Result<Option<Game>, StoreError> {
        let conn = match self.idle.lock().expect("idle connections").pop() {
            Some(conn) => conn,
            None => self.connect().map_err(classify)?,
        };
        let sql = format!("{GAME_COLUMNS} WHERE g.id = ?1");
        let game = conn
            .prepare_cached(&sql)
            .and_then(|mut statement| {
                statement
                    .query_row([id], |row| Ok(shared::game_from_row(&DirectRow(row))))
                    .optional()
            })
            .map_err(classify)?
            .transpose()?;
        let mut idle = self.idle.lock().expect("idle connections");
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(conn);
        }
        Ok(game)
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // As the sqlx pool's: a checkpoint may hold the file a moment.
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }
}

/// As [`super::sqlite`] classifies sqlx's errors: a file that is busy or cannot be
/// opened is retry-later (503); anything else is a fault.
fn classify(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{CannotOpen, DatabaseBusy, DatabaseLocked};
    match error.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | CannotOpen) => {
            StoreError::Unavailable(format!("reading the catalog: {error}"))
        }
        _ => StoreError::Database(sqlx::Error::Protocol(format!(
            "reading the catalog: {error}"
        ))),
    }
}

/// A rusqlite row, read through the same mapping as sqlx's rows.
struct DirectRow<'a, 'r>(&'a rusqlite::Row<'r>);

impl DirectRow<'_, '_> {
    fn get<T: rusqlite::types::FromSql>(&self, column: &str) -> sqlx::Result<T> {
        self.0
            .get(column)
            .map_err(|error| sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: Box::new(error),
            })
    }
}

impl Columns for DirectRow<'_, '_> {
    shared::typed_columns!(get);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStore;
    use crate::storage::{PoolConfig, Store};
    use sqlx::Connection;

    /// What the direct read answers is what sqlx's read through the pool answers: the
    /// seeded games, one with a thumbnail (its URL), and a game that does not exist.
    #[tokio::test]
    async fn reads_each_game_as_the_pool_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let url = format!("sqlite://{}", path.display());
        let store = SqliteStore::connect(&url, PoolConfig::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO thumbnails VALUES (2, 1, x'00', 1, 1)")
            .execute(&mut conn)
            .await
            .unwrap();
        let direct = DirectReads::open(&path).expect("a database file");
        let pooled = store.with_direct_reads(None);
        let with_thumbnail = direct.game(2).unwrap().expect("seeded game 2");
        assert_eq!(
            with_thumbnail.thumbnail_url.as_deref(),
            Some("/api/games/2/thumbnail")
        );
        for id in [1, 2, 3, 999_999] {
            assert_eq!(
                direct.game(id).unwrap(),
                pooled.game(id).await.unwrap(),
                "game {id}"
            );
        }
    }

    #[test]
    fn an_in_memory_database_is_read_through_the_pool() {
        assert!(DirectReads::open(Path::new(":memory:")).is_none());
    }
}
