//! The catalog on PostgreSQL: the database server for several API instances.
//!
//! The queries are the shared ones of [`super::sql`]; what is PostgreSQL's own is here:
//! `ILIKE`, its error codes, and `RETURNING id` for new rows. Write transactions run at
//! READ COMMITTED: what must not race locks its rows (a version check is an UPDATE of
//! the row, or a `SELECT … FOR UPDATE` before the status changes; the inbox key refuses
//! a second claim), and foreign keys catch what a concurrent delete removed.

use super::sql::{Dialect, SqlStore, returning_ids};
use super::{PoolConfig, StoreError};
use async_trait::async_trait;
use sqlx::Postgres;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgArguments, PgConnection, PgQueryResult};
use sqlx::query::Query;

pub type PgStore = SqlStore<Postgres>;

impl PgStore {
    /// Connects to `postgres://USER@HOST:PORT/DATABASE`; the database must exist.
    pub async fn connect(url: &str, pool: PoolConfig) -> Result<Self, StoreError> {
        let options = Self::parse_url(url)?.application_name("retrocat");
        Self::open(options, pool).await
    }
}

#[async_trait]
impl Dialect for Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LIKE: &'static str = "ILIKE";
    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");
    const HOLD_TURN: bool = true;
    const DEFAULT_MAX_CONNECTIONS: u32 = 16;

    const RETURNS_IDS: bool = true;

    /// `RETURNING id`: the ids come back in the insert's own round trip.
    async fn insert_ids(
        conn: &mut PgConnection,
        insert: Query<'static, Postgres, PgArguments>,
    ) -> sqlx::Result<Vec<i64>> {
        returning_ids(conn, insert).await
    }

    /// Class 08: connection exceptions; 57P01-57P03: the server is shutting down or
    /// starting up; 53300: too many connections.
    fn is_unavailable(error: &dyn DatabaseError) -> bool {
        error.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P0") || code == "53300"
        })
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}
