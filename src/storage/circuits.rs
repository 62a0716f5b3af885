//! Open circuits: the cover hosts whose circuit breaker holds fetches back in some
//! worker, in the `open_circuits` table, so that `GET /api/queues` (served by the API,
//! which fetches nothing) shows every worker's breakers.
//!
//! Each worker process reports the breakers it has open or half-open, once a second
//! while it has any ([`Circuits::report_circuits`]): the report replaces that worker's
//! rows. A worker that stopped reporting (it closed its last breaker, or it died) is
//! not shown once its rows are [`STALE_AFTER`] old, and its rows are deleted by the
//! next report of any worker.

use super::StoreError;
use super::rows::{Columns, from_ms};
use super::sql::{Dialect, SqlStore, Value, now_ms};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Executor;

/// How long a report stands: a worker reports every second while it has a breaker open.
const STALE_AFTER_MS: i64 = 5_000;

/// A breaker that holds fetches back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CircuitState {
    /// Every fetch from the host is refused until `until`.
    Open,
    /// One fetch probes the host; the others wait for its outcome until `until`.
    HalfOpen,
}

impl CircuitState {
    const ALL: [Self; 2] = [Self::Open, Self::HalfOpen];

    /// As the API and the table store it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// A cover host whose breaker holds fetches back, as its worker reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Circuit {
    /// The cover host (`host:port`).
    pub target: String,
    pub state: CircuitState,
    /// When the breaker lets a probe through.
    pub until: DateTime<Utc>,
}

/// One worker's breaker for one cover host, as `GET /api/queues` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenCircuit {
    #[serde(flatten)]
    pub circuit: Circuit,
    /// The worker process whose breaker it is (`--worker-id`).
    pub worker: String,
}

/// Open circuits: a part of every [`super::Store`].
#[async_trait]
pub trait Circuits: Send + Sync {
    /// Replaces what `worker` reported before with `circuits`; an empty list clears
    /// its report.
    async fn report_circuits(&self, worker: &str, circuits: &[Circuit]) -> Result<(), StoreError>;
    /// Every worker's open circuits, by host then worker; reports older than a few
    /// seconds are left out.
    async fn open_circuits(&self) -> Result<Vec<OpenCircuit>, StoreError>;
}

#[async_trait]
impl<DB> Circuits for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
{
    async fn report_circuits(&self, worker: &str, circuits: &[Circuit]) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query(DB::sql(
            "DELETE FROM open_circuits WHERE worker = $1 OR reported_at < $2",
        ))
        .bind(worker.to_owned())
        .bind(now - STALE_AFTER_MS)
        .execute(&mut *tx)
        .await
        .map_err(DB::classify)?;
        for circuit in circuits {
            sqlx::query(DB::sql(
                "INSERT INTO open_circuits (worker, target, state, until_at, reported_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            ))
            .bind(worker.to_owned())
            .bind(circuit.target.clone())
            .bind(circuit.state.as_str().to_owned())
            .bind(circuit.until.timestamp_millis())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(DB::classify)?;
        }
        tx.commit().await.map_err(DB::classify)
    }

    async fn open_circuits(&self) -> Result<Vec<OpenCircuit>, StoreError> {
        let rows = sqlx::query(DB::sql(
            "SELECT worker, target, state, until_at FROM open_circuits \
             WHERE reported_at >= $1 ORDER BY target, worker",
        ))
        .bind(now_ms() - STALE_AFTER_MS)
        .fetch_all(&self.pool)
        .await
        .map_err(DB::classify)?;
        rows.iter()
            .map(|row| {
                let circuit = Circuit {
                    target: row.text("target")?,
                    // The schema allows only the two names.
                    state: CircuitState::parse(&row.text("state")?).unwrap_or(CircuitState::Open),
                    until: from_ms(row.int("until_at")?),
                };
                Ok(OpenCircuit {
                    circuit,
                    worker: row.text("worker")?,
                })
            })
            .collect()
    }
}
