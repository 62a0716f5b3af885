//! Reads of the catalog on SQLite without sqlx's connection threads.
//!
//! sqlx runs every SQLite connection on a thread of its own and hands each statement
//! and each row across a channel. For `GET /api/games/{id}` that hand-off was most of
//! the cost: a lookup by primary key is a few microseconds of SQLite's work, and under
//! load the server spent two thirds of its time in the kernel switching between its
//! tokio workers and the connections' threads (docs/performance.md). These reads open
//! the same file read-only with rusqlite. A game by id is read where the request is:
//! no more blocking than serializing the answer. A list may scan (a search that
//! matches most of the catalog, or the original's unpaged list), so it runs on tokio's
//! blocking pool: one hand-off there and one back, where sqlx made one a row. Writes
//! and the worker's transactions stay on sqlx.

use super::game_query::{self, QuerySink};
use super::game_stream::{self, GameBatches, Stopped};
use super::rows::{self, Columns, GAME_BY_ID};
use super::sql::Dialect;
use super::{GameQuery, StoreError};
use crate::domain::Game;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Params, Statement, params_from_iter};
use sqlx::Sqlite;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

/// Read-only connections to the catalog's file, reused from read to read.
#[derive(Clone)]
pub struct DirectReads(Arc<Shared>);

struct Shared {
    path: PathBuf,
    /// Connections kept open between reads, and lists read at once; more games by id
    /// may be read at once (one a tokio worker), on connections opened for the moment.
    connections: usize,
    idle: Mutex<Vec<Connection>>,
    lists: Arc<Semaphore>,
    /// How long a list waits for its turn before it fails with 503, as for a pooled
    /// connection.
    acquire_timeout: Duration,
    /// The names of [`GAME_COLUMNS`](rows::GAME_COLUMNS), in order.
    columns: OnceLock<Vec<String>>,
}

impl DirectReads {
    /// Reads from the database file at `path`, which sqlx has created and migrated,
    /// within the limits of its pool: `connections` open, `acquire_timeout`. `None` for
    /// an in-memory database, which another connection cannot see.
    pub fn open(path: &Path, connections: usize, acquire_timeout: Duration) -> Option<Self> {
        let connections = connections.max(1);
        path.is_file().then(|| {
            Self(Arc::new(Shared {
                path: path.to_owned(),
                connections,
                idle: Mutex::new(Vec::with_capacity(connections)),
                lists: Arc::new(Semaphore::new(connections)),
                acquire_timeout,
                columns: OnceLock::new(),
            }))
        })
    }

    /// The game with `id`, as [`super::Catalog::game`] reads it.
    pub fn game(&self, id: i64) -> Result<Option<Game>, StoreError> {
        let games = self.with_connection(|conn| self.games(conn, &GAME_BY_ID, [id]))?;
        games.into_iter().next().transpose()
    }

    /// A list of games, as [`super::Catalog::stream_games`] reads it: on a blocking
    /// thread that holds one of the connections until the list has been taken.
    pub async fn stream_games(&self, query: &GameQuery) -> Result<GameBatches, StoreError> {
        let mut sql = DirectQuery::default();
        game_query::games_query(&mut sql, query, Sqlite::LIKE, Sqlite::FULL_TEXT)?;
        let lists = self.0.lists.clone().acquire_owned();
        let Ok(permit) = tokio::time::timeout(self.0.acquire_timeout, lists).await else {
            return Err(StoreError::Unavailable(
                "every catalog connection is busy; try again".into(),
            ));
        };
        let permit = permit.expect("the semaphore is never closed");
        let (mut batcher, batches) = game_stream::channel();
        let runtime = Handle::current();
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let read = this.with_connection(|conn| {
                let mut statement = conn.prepare_cached(&sql.sql)?;
                let names = this.column_names(&statement);
                let mut rows = statement.query(params_from_iter(sql.params))?;
                while let Some(row) = rows.next()? {
                    let pushed = rows::game_from_row(&DirectRow { row, names })
                        .map(|game| batcher.blocking_push(&runtime, game));
                    match pushed {
                        Ok(Ok(())) => {}
                        Ok(Err(Stopped)) => break,
                        Err(error) => return Ok(Err(error)),
                    }
                }
                Ok(Ok(()))
            });
            batcher.blocking_finish(&runtime, read.and_then(|read| read));
        });
        Ok(batches)
    }

    /// Runs `read` on an idle connection, or a new one, and keeps the connection for
    /// the next read unless enough are idle already.
    fn with_connection<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let idle = self.0.idle.lock().expect("idle connections").pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.connect().map_err(classify)?,
        };
        let result = read(&conn).map_err(classify);
        let mut idle = self.0.idle.lock().expect("idle connections");
        if idle.len() < self.0.connections {
            idle.push(conn);
        }
        result
    }

    /// The games `sql` reads, each mapped as sqlx's rows are. Every statement here
    /// selects [`GAME_COLUMNS`](rows::GAME_COLUMNS), so their names are read from
    /// the first one only.
    fn games(
        &self,
        conn: &Connection,
        sql: &str,
        params: impl Params,
    ) -> rusqlite::Result<Vec<Result<Game, StoreError>>> {
        let mut statement = conn.prepare_cached(sql)?;
        let names = self.column_names(&statement);
        statement
            .query_map(params, |row| {
                Ok(rows::game_from_row(&DirectRow { row, names }))
            })?
            .collect()
    }

    /// The names of the columns of `statement`, one of the game statements.
    fn column_names(&self, statement: &Statement) -> &[String] {
        self.0.columns.get_or_init(|| {
            statement
                .column_names()
                .into_iter()
                .map(str::to_owned)
                .collect()
        })
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.0.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // As the sqlx pool's: a checkpoint may hold the file a moment.
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }
}

/// The statement of a list: its SQL with `?` for each parameter, in order.
#[derive(Default)]
struct DirectQuery {
    sql: String,
    params: Vec<Value>,
}

impl QuerySink for DirectQuery {
    fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self {
        use std::fmt::Write;
        write!(self.sql, "{sql}").expect("writing to a String cannot fail");
        self
    }
    fn push_int(&mut self, value: i64) -> &mut Self {
        self.params.push(Value::Integer(value));
        self.push("?")
    }
    fn push_text(&mut self, value: String) -> &mut Self {
        self.params.push(Value::Text(value));
        self.push("?")
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
        _ => StoreError::DirectRead(error),
    }
}

/// A rusqlite row, read through the same mapping as sqlx's rows. A column is found
/// among the names of [`GAME_COLUMNS`](rows::GAME_COLUMNS), read once: rusqlite's
/// own lookup by name asks SQLite for each column's name at every call (a quarter of
/// a list's time, by perf).
struct DirectRow<'a, 'r> {
    row: &'a rusqlite::Row<'r>,
    names: &'a [String],
}

impl DirectRow<'_, '_> {
    fn get<T: rusqlite::types::FromSql>(&self, column: &str) -> sqlx::Result<T> {
        let index = self
            .names
            .iter()
            .position(|name| name == column)
            .ok_or_else(|| sqlx::Error::ColumnNotFound(column.to_owned()))?;
        self.row
            .get(index)
            .map_err(|error| sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: Box::new(error),
            })
    }
}

impl Columns for DirectRow<'_, '_> {
    rows::typed_columns!(get);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProcessingStatus;
    use crate::storage::sqlite::SqliteStore;
    use crate::storage::{Backend, Catalog, GamePage, GameSort, PageRequest, PoolConfig};
    use sqlx::Connection;

    /// A list as [`Catalog::list_games`] makes it from the direct reads' batches.
    async fn list(direct: &DirectReads, query: &GameQuery) -> Result<GamePage, StoreError> {
        let items = direct.stream_games(query).await?.collect().await?;
        Ok(game_query::games_page(query, items))
    }

    /// A migrated catalog, its seeds in it, in `catalog.db` of a directory of its own.
    async fn seeded_catalog() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let store = SqliteStore::connect(&url, PoolConfig::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        (dir, store)
    }

    /// What the direct reads answer is what sqlx's reads through the pool answer: each
    /// seeded game, one with a thumbnail (its URL), a game that does not exist, and
    /// lists with every kind of filter, a search by the trigram index and by `LIKE`,
    /// a sort, a next page by cursor, the unpaged list, and a cursor we never issued.
    #[tokio::test]
    async fn read_as_the_pool_reads() {
        let (dir, store) = seeded_catalog().await;
        let path = dir.path().join("catalog.db");
        let url = format!("sqlite://{}", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO thumbnails VALUES (2, 1, x'00', 1, 1)")
            .execute(&mut conn)
            .await
            .unwrap();
        let direct = DirectReads::open(&path, 2, Duration::from_secs(5)).expect("a database file");
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

        let page = |limit, cursor: Option<String>| Some(PageRequest { limit, cursor });
        let first = GameQuery {
            sort: GameSort::ReleaseYearDesc,
            page: page(3, None),
            ..GameQuery::default()
        };
        let cursor = list(&direct, &first).await.unwrap().next_cursor;
        assert!(cursor.is_some(), "the seeds fill more than one page of 3");
        let queries = [
            first.clone(),
            GameQuery {
                page: page(3, cursor),
                ..first.clone()
            },
            GameQuery::default(),
            GameQuery {
                search: Some("mario".into()),
                ..GameQuery::default()
            },
            GameQuery {
                search: Some("ma".into()),
                page: page(50, None),
                ..GameQuery::default()
            },
            GameQuery {
                platform_id: Some(1),
                genre_id: Some(1),
                year_category: Some("1980s".into()),
                status: Some(ProcessingStatus::Completed),
                ..GameQuery::default()
            },
        ];
        for query in &queries {
            let listed = list(&direct, query).await.unwrap();
            assert_eq!(listed, pooled.list_games(query).await.unwrap(), "{query:?}");
        }
        for matching in [&queries[3], &queries[5]] {
            assert!(!list(&direct, matching).await.unwrap().items.is_empty());
        }

        let forged = GameQuery {
            page: page(3, Some("not-a-cursor".into())),
            ..GameQuery::default()
        };
        assert!(matches!(
            list(&direct, &forged).await,
            Err(StoreError::InvalidCursor)
        ));
    }

    /// With every connection busy with a list for longer than the acquire timeout, a
    /// list fails with 503 (retry later), as a request waiting for the pool does.
    #[tokio::test]
    async fn a_list_waits_for_a_connection_no_longer_than_the_acquire_timeout() {
        let (dir, _store) = seeded_catalog().await;
        let path = dir.path().join("catalog.db");
        let direct = DirectReads::open(&path, 1, Duration::from_millis(20)).unwrap();
        let busy = direct.0.lists.acquire().await.unwrap();
        assert!(matches!(
            list(&direct, &GameQuery::default()).await,
            Err(StoreError::Unavailable(_))
        ));
        drop(busy);
        assert!(
            !list(&direct, &GameQuery::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }

    #[test]
    fn an_in_memory_database_is_read_through_the_pool() {
        assert!(DirectReads::open(Path::new(":memory:"), 2, Duration::from_secs(5)).is_none());
    }
}
