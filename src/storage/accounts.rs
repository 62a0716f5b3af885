//! Accounts and tokens in the catalog database (see [`crate::auth`]): one table of
//! users, one of tokens, shared by every API instance, so that a token revoked or a
//! user removed stops working everywhere at once.

use super::StoreError;
use super::rows::{Columns, from_ms};
use super::sql::{Dialect, SqlStore, Value, is_duplicate, now_ms};
use crate::auth::Role;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Executor;

/// A person who logs in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// Whose a token is: a machine's, named by `retrocat token create`, or a login's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Token,
    Session,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Session => "session",
        }
    }
}

/// A token as stored: everything but the secret, of which only `digest` is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub kind: TokenKind,
    pub name: String,
    pub role: Role,
    /// The user a session belongs to.
    pub username: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|expires| expires <= now)
    }
}

/// Accounts and tokens: a part of every [`super::Store`].
#[async_trait]
pub trait Accounts: Send + Sync {
    /// Adds a user; a conflict if the name is taken.
    async fn add_user(&self, name: &str, role: Role, password_hash: &str)
    -> Result<(), StoreError>;
    async fn users(&self) -> Result<Vec<User>, StoreError>;
    /// Removes a user and ends its sessions; false if there was none of that name.
    async fn remove_user(&self, name: &str) -> Result<bool, StoreError>;
    /// A user's password hash and role, to log in.
    async fn credentials(&self, name: &str) -> Result<Option<(String, Role)>, StoreError>;
    /// Stores a token by the digest of its secret; a conflict if a token of the same
    /// kind has the name. Drops the sessions that have expired meanwhile.
    async fn add_token(&self, digest: &str, token: &TokenRecord) -> Result<(), StoreError>;
    /// The machines' tokens (not the sessions).
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Removes a machine's token; false if there was none of that name.
    async fn revoke_token(&self, name: &str) -> Result<bool, StoreError>;
    /// Ends the session named `name` (a logout); nothing if none.
    async fn end_session(&self, name: &str) -> Result<(), StoreError>;
    /// The token whose secret has `digest`, expired or not.
    async fn token(&self, digest: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Whether any user or machine token exists: protected mode ends with the first.
    async fn has_accounts(&self) -> Result<bool, StoreError>;
}

const TOKEN_COLUMNS: &str = "SELECT kind, name, role, username, created_at, expires_at FROM tokens";

#[async_trait]
impl<DB> Accounts for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
    Option<String>: Value<DB>,
    Option<i64>: Value<DB>,
{
    async fn add_user(
        &self,
        name: &str,
        role: Role,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let insert = sqlx::query(DB::sql(
            "INSERT INTO users (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        ))
        .bind(name.to_owned())
        .bind(role.as_str().to_owned())
        .bind(password_hash.to_owned())
        .bind(now_ms());
        match self.writer.execute(insert).await {
            Ok(_) => Ok(()),
            Err(error) if is_duplicate(&error) => Err(StoreError::Conflict(format!(
                "a user named {name:?} already exists"
            ))),
            Err(error) => Err(DB::classify(error)),
        }
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query("SELECT name, role, created_at FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(DB::classify)?;
        rows.iter()
            .map(|row| {
                Ok(User {
                    name: row.text("name")?,
                    role: role(row)?,
                    created_at: row.time("created_at")?,
                })
            })
            .collect()
    }

    async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(DB::classify)?;
        sqlx::query(DB::sql("DELETE FROM tokens WHERE username = $1"))
            .bind(name.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(DB::classify)?;
        let removed = sqlx::query(DB::sql("DELETE FROM users WHERE name = $1"))
            .bind(name.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(DB::classify)?;
        tx.commit().await.map_err(DB::classify)?;
        Ok(DB::rows_affected(&removed) > 0)
    }

    async fn credentials(&self, name: &str) -> Result<Option<(String, Role)>, StoreError> {
        let row = sqlx::query(DB::sql(
            "SELECT password_hash, role FROM users WHERE name = $1",
        ))
        .bind(name.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(DB::classify)?;
        row.map(|row| Ok((row.text("password_hash")?, role(&row)?)))
            .transpose()
    }

    async fn add_token(&self, digest: &str, token: &TokenRecord) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(DB::classify)?;
        sqlx::query(DB::sql(
            "DELETE FROM tokens WHERE kind = 'session' AND expires_at <= $1",
        ))
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(DB::classify)?;
        let inserted = sqlx::query(DB::sql(
            "INSERT INTO tokens (digest, kind, name, role, username, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        ))
        .bind(digest.to_owned())
        .bind(token.kind.as_str().to_owned())
        .bind(token.name.clone())
        .bind(token.role.as_str().to_owned())
        .bind(token.username.clone())
        .bind(token.created_at.timestamp_millis())
        .bind(token.expires_at.map(|at| at.timestamp_millis()))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => tx.commit().await.map_err(DB::classify),
            Err(error) if is_duplicate(&error) => Err(StoreError::Conflict(format!(
                "a token named {:?} already exists",
                token.name
            ))),
            Err(error) => Err(DB::classify(error)),
        }
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = format!("{TOKEN_COLUMNS} WHERE kind = 'token' ORDER BY name");
        let rows = sqlx::query(DB::sql(sqlx::AssertSqlSafe(sql)))
            .fetch_all(&self.pool)
            .await
            .map_err(DB::classify)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let delete = sqlx::query(DB::sql(
            "DELETE FROM tokens WHERE kind = 'token' AND name = $1",
        ))
        .bind(name.to_owned());
        let deleted = self.writer.execute(delete).await.map_err(DB::classify)?;
        Ok(DB::rows_affected(&deleted) > 0)
    }

    async fn end_session(&self, name: &str) -> Result<(), StoreError> {
        let delete = sqlx::query(DB::sql(
            "DELETE FROM tokens WHERE kind = 'session' AND name = $1",
        ))
        .bind(name.to_owned());
        self.writer.execute(delete).await.map_err(DB::classify)?;
        Ok(())
    }

    async fn token(&self, digest: &str) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!("{TOKEN_COLUMNS} WHERE digest = $1");
        let row = sqlx::query(DB::sql(sqlx::AssertSqlSafe(sql)))
            .bind(digest.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(DB::classify)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn has_accounts(&self) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 FROM users UNION ALL SELECT 1 FROM tokens WHERE kind = 'token' LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(DB::classify)?;
        Ok(row.is_some())
    }
}

fn role(row: &impl Columns) -> Result<Role, StoreError> {
    let text = row.text("role")?;
    Role::parse(&text).ok_or_else(|| {
        let error = format!("the column role holds {text:?}, which is no role");
        StoreError::Database(sqlx::Error::Decode(error.into()))
    })
}

fn token_from_row(row: &impl Columns) -> Result<TokenRecord, StoreError> {
    let kind = match row.text("kind")?.as_str() {
        "session" => TokenKind::Session,
        _ => TokenKind::Token,
    };
    Ok(TokenRecord {
        kind,
        name: row.text("name")?,
        role: role(row)?,
        username: row.opt_text("username")?,
        created_at: row.time("created_at")?,
        expires_at: row.opt_int("expires_at")?.map(from_ms),
    })
}
