//! The games, read and written in SQL for every backend ([`Catalog`]).
//!
//! Every write commits its event to the outbox in the same transaction
//! ([`SqlStore::commit_with_event`]) and increments the game's `version`. Creates and
//! updates come in batches from their group commits: one transaction, one multi-row
//! statement where the backend allows it, and one answer per game.

use super::game_query::{self, GamePage, GameQuery};
use super::game_stream::{self, GameBatches};
use super::outbox::OutboxMessage;
use super::rows::{self, Columns, GAME_BY_ID, GAME_COLUMNS, RETURNING_GAME};
use super::sql::{Dialect, SqlStore, Value, now_ms, push_list, upsert};
use super::writer::WriteTx;
use super::{StoreError, WriteKind};
use crate::domain::{
    CatalogEvent, EventId, Game, GameAction, GameDraft, ProcessingStatus, Thumbnail,
};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Executor, QueryBuilder};
use std::collections::HashMap;

/// A game to create, with the id its `game.created` event will carry.
pub struct NewGame {
    pub draft: GameDraft,
    pub event: EventId,
    /// The W3C `traceparent` of the request that wrote it, sent with its event.
    pub trace: Option<String>,
}

/// A game's new fields, with the id its `game.updated` event will carry.
pub struct GameUpdate {
    pub id: i64,
    pub draft: GameDraft,
    pub event: EventId,
    /// The W3C `traceparent` of the request that wrote it, sent with its event.
    pub trace: Option<String>,
}

/// An uploaded cover image.
#[derive(Clone, Debug, PartialEq)]
pub struct Cover {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// The games: their reads, and their writes, each committed with its event.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// The games `query` selects, read by one statement as the caller takes them (see
    /// [`GameBatches`]).
    async fn stream_games(&self, query: &GameQuery) -> Result<GameBatches, StoreError>;
    /// The games `query` selects, in one list: a page when `query` asks for one.
    async fn list_games(&self, query: &GameQuery) -> Result<GamePage, StoreError> {
        let items = self.stream_games(query).await?.collect().await?;
        Ok(game_query::games_page(query, items))
    }
    async fn game(&self, id: i64) -> Result<Option<Game>, StoreError>;
    async fn cover(&self, game_id: i64) -> Result<Option<Cover>, StoreError>;
    async fn thumbnail(&self, game_id: i64) -> Result<Option<Thumbnail>, StoreError>;

    // Writes: each commits its event to the outbox in the same transaction and
    // increments the game's `version`. Creates and updates take their event's id from the
    // caller, who can then follow the event (a request that waits for its processing).
    /// Creates the games of `batch` in one transaction: one answer per draft, in order,
    /// the game or why its draft was refused (a platform or genre that does not exist).
    /// An error is the transaction's: nothing was written.
    async fn create_games(
        &self,
        batch: &[NewGame],
    ) -> Result<Vec<Result<Game, StoreError>>, StoreError>;
    /// Updates the games of `batch` in one transaction, each with its `game.updated`
    /// event: one answer per update, in order, the game or why it was refused (no such
    /// game; a platform or genre that does not exist). An error is the transaction's.
    async fn update_games(
        &self,
        batch: &[GameUpdate],
    ) -> Result<Vec<Result<Game, StoreError>>, StoreError>;
    // `trace`: the W3C `traceparent` of the request that writes, sent with the event.
    async fn delete_game(&self, id: i64, trace: Option<&str>) -> Result<(), StoreError>;
    /// Replaces the uploaded cover; the game goes back to `pending` for a new thumbnail.
    async fn set_cover(
        &self,
        id: i64,
        cover: &Cover,
        trace: Option<&str>,
    ) -> Result<Game, StoreError>;
    /// The original consumer's callback: sets the status of the current version.
    async fn set_status(
        &self,
        id: i64,
        status: ProcessingStatus,
        trace: Option<&str>,
    ) -> Result<Game, StoreError>;
}

#[async_trait]
impl<DB> Catalog for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    i32: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
    Option<String>: Value<DB>,
{
    async fn stream_games(&self, query: &GameQuery) -> Result<GameBatches, StoreError> {
        if let Some(direct) = &self.direct {
            return direct.stream_games(query).await;
        }
        let mut sql = QueryBuilder::<DB>::new("");
        game_query::games_query(&mut sql, query, DB::LIKE, DB::FULL_TEXT)?;
        let persistent = query.search.is_none() || !DB::PLAN_EACH_SEARCH;
        let pool = self.pool.clone();
        let (mut batcher, batches) = game_stream::channel();
        tokio::spawn(async move {
            let read = async {
                let mut rows = sql.build().persistent(persistent).fetch(&pool);
                while let Some(row) = rows.try_next().await.map_err(DB::classify)? {
                    if batcher.push(rows::game_from_row(&row)?).await.is_err() {
                        break;
                    }
                }
                Ok(())
            };
            let read = read.await;
            batcher.finish(read).await;
        });
        Ok(batches)
    }

    async fn game(&self, id: i64) -> Result<Option<Game>, StoreError> {
        if let Some(direct) = &self.direct {
            return direct.game(id);
        }
        let mut conn = self.pool.acquire().await.map_err(DB::classify)?;
        Self::fetch_game(&mut conn, id).await
    }

    async fn cover(&self, game_id: i64) -> Result<Option<Cover>, StoreError> {
        let row = sqlx::query(DB::sql(
            "SELECT content_type, bytes FROM covers WHERE game_id = $1",
        ))
        .bind(game_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(DB::classify)?;
        row.as_ref().map(cover_from_row).transpose()
    }

    async fn thumbnail(&self, game_id: i64) -> Result<Option<Thumbnail>, StoreError> {
        let row = sqlx::query(DB::sql(
            "SELECT png, width, height FROM thumbnails WHERE game_id = $1",
        ))
        .bind(game_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(DB::classify)?;
        row.as_ref().map(thumbnail_from_row).transpose()
    }

    async fn create_games(
        &self,
        batch: &[NewGame],
    ) -> Result<Vec<Result<Game, StoreError>>, StoreError> {
        refusing_only_the_faulty(batch, |batch| async move {
            let games = self.insert_games(batch).await?;
            Ok(games.into_iter().map(Ok).collect())
        })
        .await
    }

    async fn update_games(
        &self,
        batch: &[GameUpdate],
    ) -> Result<Vec<Result<Game, StoreError>>, StoreError> {
        refusing_only_the_faulty(batch, |batch| self.write_updates(batch)).await
    }

    async fn delete_game(&self, id: i64, trace: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let game = Self::fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        sqlx::query(DB::sql("DELETE FROM games WHERE id = $1"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(DB::classify)?;
        let event = CatalogEvent::game_changed(&game, GameAction::Delete, &EventId::generate());
        self.commit_with_event(tx, &event, trace).await?;
        Ok(())
    }

    async fn set_cover(
        &self,
        id: i64,
        cover: &Cover,
        trace: Option<&str>,
    ) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(DB::sql(
            "UPDATE games SET processing_status = 'pending', version = version + 1, \
             updated_at = $1 WHERE id = $2",
        ))
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(DB::classify)?;
        if DB::rows_affected(&updated) == 0 {
            return Err(StoreError::NotFound { entity: "game", id });
        }
        sqlx::query(upsert::<DB>(
            "covers (game_id, content_type, bytes) VALUES ($1, $2, $3)",
            "game_id",
            &["content_type", "bytes"],
        ))
        .bind(id)
        .bind(&cover.content_type)
        .bind(&cover.bytes)
        .execute(&mut *tx)
        .await
        .map_err(DB::classify)?;
        let game = Self::fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        let event = CatalogEvent::game_changed(&game, GameAction::Update, &EventId::generate());
        self.commit_with_event(tx, &event, trace).await?;
        Ok(game)
    }

    async fn set_status(
        &self,
        id: i64,
        status: ProcessingStatus,
        trace: Option<&str>,
    ) -> Result<Game, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(DB::sql(
            "UPDATE games SET processing_status = $1 WHERE id = $2",
        ))
        .bind(status.as_str().to_owned())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(DB::classify)?;
        if DB::rows_affected(&updated) == 0 {
            return Err(StoreError::NotFound { entity: "game", id });
        }
        let game = Self::fetch_game(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound { entity: "game", id })?;
        let event = CatalogEvent::game_settled(id, game.version, status, &EventId::generate());
        self.commit_with_event(tx, &event, trace).await?;
        Ok(game)
    }
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    i32: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
    Option<String>: Value<DB>,
{
    async fn fetch_game(conn: &mut DB::Connection, id: i64) -> Result<Option<Game>, StoreError> {
        let sql = DB::sql(GAME_BY_ID.as_str());
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(conn)
            .await
            .map_err(DB::classify)?;
        row.as_ref().map(rows::game_from_row).transpose()
    }

    /// Binds a draft's fields as `$1`–`$8` of a game's INSERT or UPDATE: title,
    /// platform, genre, developer, year, decade, description, image URL.
    fn bind_draft<'q>(
        query: Query<'q, DB, DB::Arguments>,
        draft: &GameDraft,
    ) -> Query<'q, DB, DB::Arguments> {
        query
            .bind(draft.title.as_str().to_owned())
            .bind(draft.platform_id)
            .bind(draft.genre_id)
            .bind(draft.developer.as_str().to_owned())
            .bind(draft.release_year.get())
            .bind(draft.release_year.category())
            .bind(draft.description.clone())
            .bind(draft.image_url.as_ref().map(|url| url.as_str().to_owned()))
    }

    /// Inserts the games of `batch` with their `game.created` events in one
    /// transaction: one statement for all the games, answering them as written
    /// (`RETURNING`), then one outbox insert. Where the backend does not return rows,
    /// one statement per game, then one read of them all. A foreign key refusing a
    /// platform or genre rolls it all back; the error names the field of the
    /// statement's first draft, which is the one at fault when the statement has one
    /// row ([`Catalog::create_games`] retries a refused batch a game at a time).
    async fn insert_games(&self, batch: &[NewGame]) -> Result<Vec<Game>, StoreError> {
        let mut tx = self.begin_batch(WriteKind::Creates).await?;
        let now = now_ms();
        let insert = |chunk: &[NewGame], returning: &str| {
            let sql = format!("{} {returning}", games_insert::<DB>(chunk.len()));
            let mut insert = sqlx::query(DB::sql(AssertSqlSafe(sql)));
            for NewGame { draft, .. } in chunk {
                insert = Self::bind_draft(insert, draft).bind(now).bind(now);
            }
            insert
        };
        let games = if DB::RETURNS_ROWS {
            let written = insert(batch, RETURNING_GAME).fetch_all(&mut *tx).await;
            let rows = match written {
                Ok(rows) => rows,
                Err(error) => return Err(self.refused_write(tx, error, &batch[0].draft).await),
            };
            let mut games = rows
                .iter()
                .map(rows::game_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            // `RETURNING` need not keep the order of the `VALUES`, but the rows took
            // their ids in that order (SQLite: one past the largest rowid, under the
            // write lock; PostgreSQL: the sequence, row by row).
            games.sort_unstable_by_key(|game| game.id);
            games
        } else {
            let mut ids = Vec::with_capacity(batch.len());
            for new in batch.chunks(1) {
                match DB::insert_id(&mut tx, insert(new, "")).await {
                    Ok(id) => ids.push(id),
                    Err(error) => return Err(self.refused_write(tx, error, &new[0].draft).await),
                }
            }
            Self::read_back(&mut tx, &ids).await?
        };
        let events: Vec<OutboxMessage> = games
            .iter()
            .zip(batch)
            .map(|(game, new)| {
                let event = CatalogEvent::game_changed(game, GameAction::Create, &new.event);
                OutboxMessage::event(&event, new.trace.as_deref())
            })
            .collect();
        Self::insert_outbox(&mut tx, &events).await?;
        tx.commit().await.map_err(DB::classify)?;
        self.outbox_written.notify_one();
        Ok(games)
    }

    /// The games `ids` names, in that order, as [`GAME_COLUMNS`] reads them.
    async fn read_back(conn: &mut DB::Connection, ids: &[i64]) -> Result<Vec<Game>, StoreError> {
        let mut sql = QueryBuilder::<DB>::new(GAME_COLUMNS);
        sql.push(" WHERE g.id IN ");
        push_list(&mut sql, ids.iter().copied());
        let rows = sql.build().fetch_all(conn).await.map_err(DB::classify)?;
        let mut written = rows
            .iter()
            .map(|row| rows::game_from_row(row).map(|game| (game.id, game)))
            .collect::<Result<HashMap<_, _>, _>>()?;
        ids.iter()
            .map(|id| {
                written.remove(id).ok_or(StoreError::NotFound {
                    entity: "game",
                    id: *id,
                })
            })
            .collect()
    }

    /// Updates the games of `batch`, each read back right after its UPDATE (a game
    /// may come twice), with their `game.updated` events, in one transaction. The rows
    /// are updated in the order of their ids, as the workers lock them, so that two
    /// transactions never wait for each other's rows. A game that does not exist is
    /// answered `NotFound` and the others go on; a foreign key refusing a platform or
    /// genre rolls it all back, as for [`Self::insert_games`].
    async fn write_updates(
        &self,
        batch: &[GameUpdate],
    ) -> Result<Vec<Result<Game, StoreError>>, StoreError> {
        let mut tx = self.begin_batch(WriteKind::Updates).await?;
        let now = now_ms();
        let mut by_id: Vec<usize> = (0..batch.len()).collect();
        by_id.sort_by_key(|&index| batch[index].id);
        let mut answers: Vec<Option<Result<Game, StoreError>>> =
            batch.iter().map(|_| None).collect();
        let mut events = Vec::with_capacity(batch.len());
        for index in by_id {
            let GameUpdate {
                id,
                draft,
                event,
                trace,
            } = &batch[index];
            let update = sqlx::query(DB::sql(
                "UPDATE games SET title = $1, platform_id = $2, genre_id = $3, developer = $4, \
                 release_year = $5, year_category = $6, description = $7, image_url = $8, \
                 processing_status = 'pending', version = version + 1, updated_at = $9 \
                 WHERE id = $10",
            ));
            let updated = Self::bind_draft(update, draft)
                .bind(now)
                .bind(*id)
                .execute(&mut *tx)
                .await;
            let updated = match updated {
                Ok(updated) => updated,
                Err(error) => return Err(self.refused_write(tx, error, draft).await),
            };
            let game = match DB::rows_affected(&updated) {
                0 => None,
                _ => Self::fetch_game(&mut tx, *id).await?,
            };
            answers[index] = Some(match game {
                Some(game) => {
                    let changed = CatalogEvent::game_changed(&game, GameAction::Update, event);
                    events.push(OutboxMessage::event(&changed, trace.as_deref()));
                    Ok(game)
                }
                None => Err(StoreError::NotFound {
                    entity: "game",
                    id: *id,
                }),
            });
        }
        Self::insert_outbox(&mut tx, &events).await?;
        tx.commit().await.map_err(DB::classify)?;
        self.outbox_written.notify_one();
        Ok(answers
            .into_iter()
            .map(|answer| answer.expect("every update of the batch ran"))
            .collect())
    }

    /// What to tell the client when a game's write failed with `error`. The foreign keys
    /// are the check that the draft's platform and genre exist: a write that names a
    /// missing one is refused by them, and only then are the references looked up, to
    /// name the field at fault (SQLite's error does not name the constraint). This
    /// spares every write two queries while it holds the write lock. Should the lookup
    /// find both (one came back meanwhile), the constraint's name decides; every schema
    /// names it `games_genre_id_fkey` (PostgreSQL's default). The write's transaction
    /// `tx` is rolled back first, so that the lookup does not wait behind its locks.
    async fn refused_write(
        &self,
        tx: WriteTx<DB>,
        error: sqlx::Error,
        draft: &GameDraft,
    ) -> StoreError {
        drop(tx);
        match &error {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                let looked_up = match self.pool.acquire().await {
                    Ok(mut conn) => Self::check_references(&mut conn, draft).await,
                    Err(e) => Err(DB::classify(e)),
                };
                match looked_up {
                    Err(missing @ StoreError::UnknownReference { .. }) => missing,
                    _ if DB::constraint(db.as_ref()) == Some("games_genre_id_fkey") => {
                        StoreError::UnknownReference {
                            field: "genreId",
                            entity: "genre",
                            id: draft.genre_id,
                        }
                    }
                    _ => StoreError::UnknownReference {
                        field: "platformId",
                        entity: "platform",
                        id: draft.platform_id,
                    },
                }
            }
            _ => DB::classify(error),
        }
    }

    /// Fails with the field at fault when the draft names a platform or genre that
    /// does not exist ([`Self::refused_write`] asks, after a foreign key refused a write).
    async fn check_references(
        conn: &mut DB::Connection,
        draft: &GameDraft,
    ) -> Result<(), StoreError> {
        for (table, field, entity, id) in [
            ("platforms", "platformId", "platform", draft.platform_id),
            ("genres", "genreId", "genre", draft.genre_id),
        ] {
            let sql = DB::sql(AssertSqlSafe(format!(
                "SELECT 1 FROM {table} WHERE id = $1"
            )));
            if sqlx::query(sql)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(DB::classify)?
                .is_none()
            {
                return Err(StoreError::UnknownReference { field, entity, id });
            }
        }
        Ok(())
    }
}

/// Runs `write` for the whole batch. When a platform or genre that does not exist
/// refused it (rolling back the whole batch), runs it again for each item alone, so
/// that only the items at fault are refused.
async fn refusing_only_the_faulty<'a, T, Written>(
    batch: &'a [T],
    write: impl Fn(&'a [T]) -> Written,
) -> Result<Vec<Result<Game, StoreError>>, StoreError>
where
    Written: Future<Output = Result<Vec<Result<Game, StoreError>>, StoreError>>,
{
    match write(batch).await {
        Err(StoreError::UnknownReference { .. }) if batch.len() > 1 => {
            let mut answers = Vec::with_capacity(batch.len());
            for item in batch {
                let answer = match write(std::slice::from_ref(item)).await {
                    Ok(mut alone) => alone.remove(0),
                    Err(refused @ StoreError::UnknownReference { .. }) => Err(refused),
                    Err(error) => return Err(error),
                };
                answers.push(answer);
            }
            Ok(answers)
        }
        Err(refused @ StoreError::UnknownReference { .. }) => Ok(vec![Err(refused)]),
        written => written,
    }
}

/// An INSERT of `rows` new games, each bound by [`SqlStore::bind_draft`] then its
/// creation and update times: parameters 1–10 for the first, 11–20 for the next…
fn games_insert<DB: Dialect>(rows: usize) -> String {
    let values = (0..rows)
        .map(|row| {
            let n = |field: usize| DB::parameter(row * 10 + field);
            let draft = (1..=8).map(n).collect::<Vec<_>>().join(", ");
            format!("({draft}, 'pending', 1, {}, {})", n(9), n(10))
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO games (title, platform_id, genre_id, developer, release_year, \
         year_category, description, image_url, processing_status, version, created_at, \
         updated_at) VALUES {values}"
    )
}

fn cover_from_row(row: &impl Columns) -> Result<Cover, StoreError> {
    Ok(Cover {
        content_type: row.text("content_type")?,
        bytes: row.bytes("bytes")?,
    })
}

fn thumbnail_from_row(row: &impl Columns) -> Result<Thumbnail, StoreError> {
    Ok(Thumbnail {
        png: row.bytes("png")?,
        width: row.int("width")? as u32,
        height: row.int("height")? as u32,
    })
}
