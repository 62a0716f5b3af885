//! The catalog on PostgreSQL: the database server for several API instances.
//!
//! The queries are the shared ones of [`super::sql`]; what is PostgreSQL's own is here:
//! `ILIKE`, its error codes, and `RETURNING id` for new rows. Write transactions run at
//! READ COMMITTED: what must not race locks its rows (a version check is an UPDATE of
//! the row, or a `SELECT … FOR UPDATE` before the status changes; the inbox key refuses
//! a second claim), and foreign keys catch what a concurrent delete removed.

use super::sql::{Dialect, SqlStore, returning_id};
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
    const HOLD_LEASE: bool = true;
    const DEFAULT_MAX_CONNECTIONS: u32 = 16;

    const RETURNS_ROWS: bool = true;
    /// A generic plan walks `games_by_title` and filters: 2 s at a million games.
    const PLAN_EACH_SEARCH: bool = true;

    /// `RETURNING id`: the ids come back in the insert's own round trip.
    async fn insert_id(
        conn: &mut PgConnection,
        insert: Query<'static, Postgres, PgArguments>,
    ) -> sqlx::Result<i64> {
        returning_id(conn, insert).await
    }

    /// Class 08: connection exceptions; 57P01-57P03: the server is shutting down or
    /// starting up; 53300: too many connections; 40001 and 40P01: the transaction was
    /// rolled back, as a serialization failure or to break a deadlock, and can simply
    /// run again.
    fn is_unavailable(error: &dyn DatabaseError) -> bool {
        error.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("57P0")
                || ["53300", "40001", "40P01"].contains(&code.as_ref())
        })
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, PgConnection};

    /// Two transactions that each wait for the other's lock: PostgreSQL rolls one back
    /// (after its `deadlock_timeout`, 1 s by default), and that is a retry-later, not
    /// a bug.
    #[tokio::test]
    async fn a_deadlock_victim_may_retry() {
        let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
            eprintln!("skipped: set TEST_POSTGRES_URL to run this test against PostgreSQL");
            return;
        };
        let mut first = PgConnection::connect(&url).await.expect("connect");
        let mut second = PgConnection::connect(&url).await.expect("connect");
        // Keys of this process's own, apart from other tests' on the same server.
        let one = i64::from(std::process::id()) << 1;
        let two = one | 1;
        let lock = |key: i64| sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(key);
        let mut a = first.begin().await.unwrap();
        let mut b = second.begin().await.unwrap();
        lock(one).execute(&mut *a).await.unwrap();
        lock(two).execute(&mut *b).await.unwrap();
        let (a_waits, b_waits) =
            tokio::join!(lock(two).execute(&mut *a), lock(one).execute(&mut *b));
        let victim = a_waits.err().or(b_waits.err()).expect("one is rolled back");
        assert!(
            matches!(Postgres::classify(victim), StoreError::Unavailable(_)),
            "a deadlock is classified as retry-later"
        );
    }
}
