//! Platforms and genres, the reference data that games point to ([`References`]).
//!
//! Each write commits a `platform.*` or `genre.*` event with it. A platform or genre
//! that games use cannot be deleted: the count says so, and the foreign key catches a
//! game written meanwhile.

use super::StoreError;
use super::rows::Columns;
use super::sql::{Dialect, SqlStore, Value, is_duplicate};
use super::writer::WriteTx;
use crate::domain::{CatalogEvent, Change, Genre, GenreDraft, Platform, PlatformDraft, Reference};
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Executor};

/// Platforms and genres: the reference data games point to.
#[async_trait]
pub trait References: Send + Sync {
    async fn platforms(&self) -> Result<Vec<Platform>, StoreError>;
    async fn genres(&self) -> Result<Vec<Genre>, StoreError>;
    async fn create_platform(&self, draft: &PlatformDraft) -> Result<Platform, StoreError>;
    async fn update_platform(&self, id: i64, draft: &PlatformDraft)
    -> Result<Platform, StoreError>;
    /// Refused with [`StoreError::Conflict`] while games use the platform.
    async fn delete_platform(&self, id: i64) -> Result<(), StoreError>;
    async fn create_genre(&self, draft: &GenreDraft) -> Result<Genre, StoreError>;
    async fn update_genre(&self, id: i64, draft: &GenreDraft) -> Result<Genre, StoreError>;
    async fn delete_genre(&self, id: i64) -> Result<(), StoreError>;
}

#[async_trait]
impl<DB> References for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    i32: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
    Option<String>: Value<DB>,
    Option<i32>: Value<DB>,
{
    async fn platforms(&self) -> Result<Vec<Platform>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, manufacturer, release_year FROM platforms ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(DB::classify)?;
        rows.iter().map(platform_from_row).collect()
    }

    async fn genres(&self) -> Result<Vec<Genre>, StoreError> {
        let rows = sqlx::query("SELECT id, name, description FROM genres ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(DB::classify)?;
        rows.iter().map(genre_from_row).collect()
    }

    async fn create_platform(&self, draft: &PlatformDraft) -> Result<Platform, StoreError> {
        let mut tx = self.begin_write().await?;
        let insert = sqlx::query(DB::sql(
            "INSERT INTO platforms (name, manufacturer, release_year) VALUES ($1, $2, $3)",
        ))
        .bind(draft.name.as_str().to_owned())
        .bind(&draft.manufacturer)
        .bind(draft.release_year);
        let id = DB::insert_id(&mut tx, insert).await.map_err(|e| {
            Self::unique_conflict(e, &format!("platform {:?}", draft.name.as_str()))
        })?;
        let event = CatalogEvent::reference_changed(
            Reference::Platform,
            Change::Created,
            id,
            Some(draft.name.as_str()),
        );
        self.commit_with_event(tx, &event, None).await?;
        Ok(Platform {
            id,
            name: draft.name.as_str().to_owned(),
            manufacturer: draft.manufacturer.clone(),
            release_year: draft.release_year,
        })
    }

    async fn update_platform(
        &self,
        id: i64,
        draft: &PlatformDraft,
    ) -> Result<Platform, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(DB::sql(
            "UPDATE platforms SET name = $1, manufacturer = $2, release_year = $3 WHERE id = $4",
        ))
        .bind(draft.name.as_str().to_owned())
        .bind(&draft.manufacturer)
        .bind(draft.release_year)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| Self::unique_conflict(e, &format!("platform {:?}", draft.name.as_str())))?;
        self.commit_update(tx, Reference::Platform, id, draft.name.as_str(), &updated)
            .await?;
        Ok(Platform {
            id,
            name: draft.name.as_str().to_owned(),
            manufacturer: draft.manufacturer.clone(),
            release_year: draft.release_year,
        })
    }

    async fn delete_platform(&self, id: i64) -> Result<(), StoreError> {
        self.delete_reference(Reference::Platform, id).await
    }

    async fn create_genre(&self, draft: &GenreDraft) -> Result<Genre, StoreError> {
        let mut tx = self.begin_write().await?;
        let insert = sqlx::query(DB::sql(
            "INSERT INTO genres (name, description) VALUES ($1, $2)",
        ))
        .bind(draft.name.as_str().to_owned())
        .bind(&draft.description);
        let id = DB::insert_id(&mut tx, insert)
            .await
            .map_err(|e| Self::unique_conflict(e, &format!("genre {:?}", draft.name.as_str())))?;
        let event = CatalogEvent::reference_changed(
            Reference::Genre,
            Change::Created,
            id,
            Some(draft.name.as_str()),
        );
        self.commit_with_event(tx, &event, None).await?;
        Ok(Genre {
            id,
            name: draft.name.as_str().to_owned(),
            description: draft.description.clone(),
        })
    }

    async fn update_genre(&self, id: i64, draft: &GenreDraft) -> Result<Genre, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(DB::sql(
            "UPDATE genres SET name = $1, description = $2 WHERE id = $3",
        ))
        .bind(draft.name.as_str().to_owned())
        .bind(&draft.description)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| Self::unique_conflict(e, &format!("genre {:?}", draft.name.as_str())))?;
        self.commit_update(tx, Reference::Genre, id, draft.name.as_str(), &updated)
            .await?;
        Ok(Genre {
            id,
            name: draft.name.as_str().to_owned(),
            description: draft.description.clone(),
        })
    }

    async fn delete_genre(&self, id: i64) -> Result<(), StoreError> {
        self.delete_reference(Reference::Genre, id).await
    }
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
    Option<String>: Value<DB>,
{
    /// Commits the update of a platform or genre with its `{entity}.updated` event;
    /// when the update matched no row, the entity does not exist.
    async fn commit_update(
        &self,
        tx: WriteTx<DB>,
        entity: Reference,
        id: i64,
        name: &str,
        updated: &DB::QueryResult,
    ) -> Result<(), StoreError> {
        if DB::rows_affected(updated) == 0 {
            return Err(StoreError::NotFound {
                entity: entity.as_str(),
                id,
            });
        }
        let event = CatalogEvent::reference_changed(entity, Change::Updated, id, Some(name));
        self.commit_with_event(tx, &event, None).await
    }

    fn unique_conflict(error: sqlx::Error, what: &str) -> StoreError {
        if is_duplicate(&error) {
            StoreError::Conflict(format!("{what} already exists"))
        } else {
            DB::classify(error)
        }
    }

    /// Deletes a platform or genre, refused while games use it.
    async fn delete_reference(&self, entity: Reference, id: i64) -> Result<(), StoreError> {
        let (table, column) = match entity {
            Reference::Platform => ("platforms", "platform_id"),
            Reference::Genre => ("genres", "genre_id"),
        };
        let mut tx = self.begin_write().await?;
        let used = sqlx::query(DB::sql(AssertSqlSafe(format!(
            "SELECT COUNT(*) AS used FROM games WHERE {column} = $1"
        ))))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(DB::classify)?
        .int("used")?;
        if used > 0 {
            return Err(still_used(entity, id, used));
        }
        let deleted = sqlx::query(DB::sql(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE id = $1"
        ))))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|error| match &error {
            // A game written since the count now uses it: the foreign key says so.
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => still_used(entity, id, 1),
            _ => DB::classify(error),
        })?;
        if DB::rows_affected(&deleted) == 0 {
            return Err(StoreError::NotFound {
                entity: entity.as_str(),
                id,
            });
        }
        let event = CatalogEvent::reference_changed(entity, Change::Deleted, id, None);
        self.commit_with_event(tx, &event, None).await?;
        Ok(())
    }
}

fn platform_from_row(row: &impl Columns) -> Result<Platform, StoreError> {
    Ok(Platform {
        id: row.int("id")?,
        name: row.text("name")?,
        manufacturer: row.opt_text("manufacturer")?,
        release_year: row.opt_year("release_year")?,
    })
}

fn genre_from_row(row: &impl Columns) -> Result<Genre, StoreError> {
    Ok(Genre {
        id: row.int("id")?,
        name: row.text("name")?,
        description: row.opt_text("description")?,
    })
}

/// Why a platform or genre cannot be deleted yet.
fn still_used(entity: Reference, id: i64, used: i64) -> StoreError {
    let entity = entity.as_str();
    StoreError::Conflict(format!(
        "{entity} {id} is used by {used} game(s); reassign or delete them first"
    ))
}
