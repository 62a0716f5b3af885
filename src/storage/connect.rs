//! Which database a process uses: the one `DATABASE_URL` names, by its scheme.

use super::mysql::MySqlStore;
use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{PoolConfig, Store};
use anyhow::{Context, bail};
use std::sync::Arc;

/// Opens the catalog database `url` names, with a pool of `pool`'s limits, and applies
/// pending migrations.
pub async fn connect(url: &str, pool: PoolConfig) -> anyhow::Result<Arc<dyn Store>> {
    let opening = || format!("opening the database {}", super::redacted(url));
    let store: Arc<dyn Store> = if url.starts_with("sqlite:") {
        Arc::new(
            SqliteStore::connect(url, pool)
                .await
                .with_context(opening)?,
        )
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Arc::new(PgStore::connect(url, pool).await.with_context(opening)?)
    } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        Arc::new(MySqlStore::connect(url, pool).await.with_context(opening)?)
    } else {
        bail!(
            "DATABASE_URL {} is not supported: use sqlite://PATH, \
             postgres://USER@HOST/DATABASE or mysql://USER:PASSWORD@HOST/DATABASE \
             (mariadb:// too)",
            super::redacted(url)
        );
    };
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}
