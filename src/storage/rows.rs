//! Rows read as the domain's types, the same on every backend and on SQLite's direct
//! reads ([`super::direct`]), through [`Columns`].
//!
//! The schemas agree on column types on purpose (BIGINT ids and millisecond timestamps,
//! INTEGER years, TEXT, BLOB/BYTEA/LONGBLOB), so one mapping reads a row of any backend;
//! `EXISTS` is a boolean on PostgreSQL and an integer elsewhere, which sqlx decodes as a
//! `bool` on each.

use super::StoreError;
use crate::domain::{Game, ProcessingStatus};
use chrono::{DateTime, TimeZone, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};
use std::sync::LazyLock;

pub(super) const GAME_COLUMNS: &str = "SELECT g.id, g.title, g.platform_id, \
     p.name AS platform_name, g.genre_id, gr.name AS genre_name, g.developer, \
     g.release_year, g.year_category, g.description, g.image_url, g.processing_status, \
     g.version, g.created_at, g.updated_at, \
     EXISTS (SELECT 1 FROM thumbnails t WHERE t.game_id = g.id) AS has_thumbnail \
     FROM games g JOIN platforms p ON p.id = g.platform_id JOIN genres gr ON gr.id = g.genre_id";

/// [`GAME_COLUMNS`] of the games an INSERT into `games` writes: its `RETURNING` clause.
pub(super) const RETURNING_GAME: &str = "RETURNING id, title, platform_id, \
     (SELECT p.name FROM platforms p WHERE p.id = games.platform_id) AS platform_name, \
     genre_id, (SELECT gr.name FROM genres gr WHERE gr.id = games.genre_id) AS genre_name, \
     developer, release_year, year_category, description, image_url, processing_status, \
     version, created_at, updated_at, \
     EXISTS (SELECT 1 FROM thumbnails t WHERE t.game_id = games.id) AS has_thumbnail";

/// One game by id (`$1`; SQLite reads `$1` as the first parameter too).
pub(super) static GAME_BY_ID: LazyLock<String> =
    LazyLock::new(|| format!("{GAME_COLUMNS} WHERE g.id = $1"));

/// Typed column access for the shared mapping, implemented for every backend's row.
pub trait Columns {
    fn int(&self, column: &str) -> sqlx::Result<i64>;
    fn opt_int(&self, column: &str) -> sqlx::Result<Option<i64>>;
    fn year(&self, column: &str) -> sqlx::Result<i32>;
    fn opt_year(&self, column: &str) -> sqlx::Result<Option<i32>>;
    fn text(&self, column: &str) -> sqlx::Result<String>;
    fn opt_text(&self, column: &str) -> sqlx::Result<Option<String>>;
    fn flag(&self, column: &str) -> sqlx::Result<bool>;
    fn bytes(&self, column: &str) -> sqlx::Result<Vec<u8>>;
    fn time(&self, column: &str) -> sqlx::Result<DateTime<Utc>> {
        self.int(column).map(from_ms)
    }
}

/// The methods of [`Columns`], each a call of the row's own generic getter `$get`,
/// which decodes the column as the method's type.
macro_rules! typed_columns {
    ($get:ident) => {
        fn int(&self, column: &str) -> sqlx::Result<i64> {
            self.$get(column)
        }
        fn opt_int(&self, column: &str) -> sqlx::Result<Option<i64>> {
            self.$get(column)
        }
        fn year(&self, column: &str) -> sqlx::Result<i32> {
            self.$get(column)
        }
        fn opt_year(&self, column: &str) -> sqlx::Result<Option<i32>> {
            self.$get(column)
        }
        fn text(&self, column: &str) -> sqlx::Result<String> {
            self.$get(column)
        }
        fn opt_text(&self, column: &str) -> sqlx::Result<Option<String>> {
            self.$get(column)
        }
        fn flag(&self, column: &str) -> sqlx::Result<bool> {
            self.$get(column)
        }
        fn bytes(&self, column: &str) -> sqlx::Result<Vec<u8>> {
            self.$get(column)
        }
    };
}
pub(super) use typed_columns;

impl<R> Columns for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    typed_columns!(try_get);
}

pub(super) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// A row's `processing_status` (the schema allows only the four names).
pub(super) fn status(row: &impl Columns) -> sqlx::Result<ProcessingStatus> {
    let status = row.text("processing_status")?;
    Ok(ProcessingStatus::parse(&status).unwrap_or(ProcessingStatus::Pending))
}

/// A row of [`GAME_COLUMNS`].
pub(super) fn game_from_row(row: &impl Columns) -> Result<Game, StoreError> {
    let id = row.int("id")?;
    Ok(Game {
        id,
        title: row.text("title")?,
        platform_id: row.int("platform_id")?,
        platform_name: row.text("platform_name")?,
        genre_id: row.int("genre_id")?,
        genre_name: row.text("genre_name")?,
        developer: row.text("developer")?,
        release_year: row.year("release_year")?,
        year_category: row.text("year_category")?,
        description: row.text("description")?,
        image_url: row.opt_text("image_url")?,
        processing_status: status(row)?,
        version: row.int("version")?,
        thumbnail_url: row
            .flag("has_thumbnail")?
            .then(|| format!("/api/games/{id}/thumbnail")),
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}
