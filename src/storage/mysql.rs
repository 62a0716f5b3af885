//! The catalog on MySQL 8 and MariaDB ≥ 10.6: the database the original system used.
//!
//! The queries are the shared ones of [`super::sql`]; what is MySQL's own is here: `?`
//! placeholders, no `RETURNING`, `ON DUPLICATE KEY UPDATE`, its error numbers, and
//! `DELETE … LIMIT`. Only syntax that both MySQL 8 and MariaDB read is used; where the
//! two differ, a comment says so. Sessions run at READ COMMITTED, as on PostgreSQL:
//! InnoDB's default REPEATABLE READ locks the gaps between index records, and two
//! writers that lock a gap and then insert into it deadlock. The statements that must
//! not race (version checks, the inbox insert) lock the row they change, and foreign
//! keys catch what a concurrent delete removed.

use super::sql::{Dialect, SqlStore};
use super::{PoolConfig, StoreError};
use async_trait::async_trait;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::mysql::{
    MySqlArguments, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlQueryResult,
};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, MySql, SqlSafeStr, SqlStr};

pub type MySqlStore = SqlStore<MySql>;

impl MySqlStore {
    /// Connects to `mysql://USER:PASSWORD@HOST:PORT/DATABASE` (`mariadb://` reads the
    /// same); the database must exist.
    pub async fn connect(url: &str, pool: PoolConfig) -> Result<Self, StoreError> {
        Self::open(Self::parse_url(url)?, pool).await
    }
}

/// Error numbers that mean "retry later" besides SQLSTATE class 08 (connection
/// exceptions: too many connections, server shutdown) and 40001 (deadlock).
const RETRY_LATER: [u16; 4] = [
    1205, // ER_LOCK_WAIT_TIMEOUT (SQLSTATE HY000, shared with unrelated errors)
    1317, // ER_QUERY_INTERRUPTED: the server is shutting down, or the query was killed
    1927, // ER_CONNECTION_KILLED (MariaDB)
    4031, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8.0.24+): disconnected while idle
];

#[async_trait]
impl Dialect for MySql {
    const BEGIN_WRITE: &'static str = "BEGIN";
    /// The text columns sort in byte order (`utf8mb4_bin`), which is case-sensitive;
    /// the search compares in a case-insensitive collation that both MySQL and MariaDB
    /// have. Unlike PostgreSQL's `ILIKE`, it also ignores accents (`é` matches `e`).
    const LIKE: &'static str = "COLLATE utf8mb4_general_ci LIKE";
    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/mysql");
    /// `FOR UPDATE SKIP LOCKED`: MySQL 8.0.1+, MariaDB 10.6+.
    const HOLD_LEASE: bool = true;
    const DEFAULT_MAX_CONNECTIONS: u32 = 16;
    /// MySQL has no `RETURNING`, and a multi-row INSERT reports only its first id.
    const RETURNS_ROWS: bool = false;
    /// MySQL refuses a `LIMIT` in an `IN` subquery, and a subquery on the table a
    /// DELETE deletes from; its own `DELETE … LIMIT` walks the `sent_at` index instead.
    const PRUNE_SENT_OUTBOX: &'static str =
        "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT 10000";
    /// See the module documentation. With binary logging on, MySQL needs
    /// `binlog_format=ROW` (its default) for READ COMMITTED.
    const SESSION_SETUP: Option<&'static str> =
        Some("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");

    fn sql(shared: impl SqlSafeStr) -> SqlStr {
        AssertSqlSafe(question_marks(shared.into_sql_str().as_str())).into_sql_str()
    }

    /// Any unique key: the tables upserted have none but the primary key.
    fn on_conflict_update(_key: &str) -> String {
        "ON DUPLICATE KEY UPDATE".into()
    }

    /// MySQL 8.0.20+ deprecates `VALUES(column)` for a row alias (`… AS new`), which
    /// MariaDB does not read; both accept `VALUES()`.
    fn proposed(column: &str) -> String {
        format!("VALUES({column})")
    }

    /// sqlx's migrator locks with `GET_LOCK(name, -1)`: MySQL waits as long as it
    /// takes, but MariaDB refuses the negative timeout (warning 1411, result NULL) and
    /// the migrator goes on unlocked, so two processes would apply the same migration.
    /// This lock works on both (lock names are at most 64 characters, hence the CRC).
    async fn lock_migrations(pool: &MySqlPool) -> Result<Option<MySqlConnection>, StoreError> {
        // Detached: the pool opens a replacement, so the migrator has a connection even
        // in a pool of one.
        let mut conn = pool.acquire().await.map_err(Self::classify)?.detach();
        let locked: Option<i64> = sqlx::query_scalar(
            "SELECT GET_LOCK(CONCAT('retrocat_migrate_', CRC32(DATABASE())), 3600)",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(Self::classify)?;
        match locked {
            Some(1) => Ok(Some(conn)),
            _ => Err(StoreError::Unavailable(
                "another process has been migrating this database for an hour".into(),
            )),
        }
    }

    /// The server reports the `AUTO_INCREMENT` value it assigned with the insert.
    async fn insert_id(
        conn: &mut MySqlConnection,
        insert: Query<'static, MySql, MySqlArguments>,
    ) -> sqlx::Result<i64> {
        let id = insert.execute(conn).await?.last_insert_id();
        i64::try_from(id).map_err(|e| sqlx::Error::Decode(e.into()))
    }

    /// sqlx connects with `CLIENT_FOUND_ROWS`, so an UPDATE that sets the values a row
    /// already has still counts it (MySQL's default counts changed rows only).
    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }

    fn is_unavailable(error: &dyn DatabaseError) -> bool {
        let Some(error) = error.try_downcast_ref::<MySqlDatabaseError>() else {
            return false;
        };
        error
            .code()
            .is_some_and(|state| state.starts_with("08") || state == "40001")
            || RETRY_LATER.contains(&error.number())
    }

    /// MySQL names no constraint in its error packet, but its foreign-key messages do:
    /// "… CONSTRAINT `games_genre_id_fkey` FOREIGN KEY (`genre_id`) …".
    fn constraint(error: &dyn DatabaseError) -> Option<&str> {
        let (_, rest) = error.message().split_once("CONSTRAINT `")?;
        rest.split_once('`').map(|(name, _)| name)
    }
}

/// The shared SQL's `$1, $2, …` as MySQL's `?`, outside string literals. `?` binds by
/// position, so this is only right while each statement numbers its placeholders in
/// the order it binds them, once each; the assertion keeps that true.
fn question_marks(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let (mut in_literal, mut next) = (false, 1);
    while let Some(c) = chars.next() {
        if c == '\'' {
            in_literal = !in_literal;
        }
        if c != '$' || in_literal {
            out.push(c);
            continue;
        }
        let mut number = String::new();
        while let Some(digit) = chars.next_if(char::is_ascii_digit) {
            number.push(digit);
        }
        assert_eq!(
            number.parse::<u32>().ok(),
            Some(next),
            "placeholders must be $1, $2, … in binding order: {sql}"
        );
        next += 1;
        out.push('?');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::question_marks;

    #[test]
    fn numbered_placeholders_become_question_marks_outside_literals() {
        assert_eq!(
            question_marks("UPDATE t SET a = $1, s = 'cost: $5' WHERE id = $2 LIMIT $3"),
            "UPDATE t SET a = ?, s = 'cost: $5' WHERE id = ? LIMIT ?"
        );
        let eleven = (1..=11).map(|n| format!("${n}")).collect::<Vec<_>>();
        assert_eq!(question_marks(&eleven.join(",")), ["?"; 11].join(","));
    }

    #[test]
    #[should_panic(expected = "binding order")]
    fn placeholders_out_of_binding_order_are_refused() {
        question_marks("SELECT 1 WHERE a = $2 AND b = $1");
    }

    #[test]
    #[should_panic(expected = "binding order")]
    fn a_placeholder_used_twice_is_refused() {
        question_marks("SELECT 1 WHERE a = $1 OR b = $1");
    }
}
