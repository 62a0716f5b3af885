//! The processing views ([`Tasks`]): the original's pending list, the tasks view,
//! counts by status and a game's attempts, read from the games and their
//! `processing_attempts`.

use super::StoreError;
use super::cursor::{self, Position};
use super::game_query::{PageRequest, holding};
use super::rows::{Columns, status};
use super::sql::{Dialect, SqlStore, Value};
use crate::domain::ProcessingStatus;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Executor, QueryBuilder};

/// One game still waiting for processing, in the original's `/api/processing` shape.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PendingGame {
    pub id: i64,
    pub title: String,
    pub processing_status: ProcessingStatus,
}

/// How many games stand at each processing status (`GET /api/tasks/counts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StatusCounts {
    pub pending: u64,
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
}

impl StatusCounts {
    pub fn add(&mut self, status: ProcessingStatus, count: u64) {
        let slot = match status {
            ProcessingStatus::Pending => &mut self.pending,
            ProcessingStatus::Processing => &mut self.processing,
            ProcessingStatus::Completed => &mut self.completed,
            ProcessingStatus::Failed => &mut self.failed,
        };
        *slot += count;
    }
}

/// A game's processing at a glance (`GET /api/tasks`).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub game_id: i64,
    pub title: String,
    pub processing_status: ProcessingStatus,
    pub version: i64,
    /// Processing attempts recorded for the game's current version.
    pub attempts: i64,
    pub last_error: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

/// A page of the tasks view, and the cursor of the next one, if more follow.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskPage {
    pub items: Vec<TaskView>,
    pub next_cursor: Option<String>,
}

/// Sort orders of the tasks view; `-` means descending. Most recently changed first
/// by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TaskSort {
    #[default]
    UpdatedAtDesc,
    UpdatedAt,
    Title,
    TitleDesc,
}

impl TaskSort {
    pub const NAMES: &'static str = "-updatedAt, updatedAt, title, -title";

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "-updatedAt" => Self::UpdatedAtDesc,
            "updatedAt" => Self::UpdatedAt,
            "title" => Self::Title,
            "-title" => Self::TitleDesc,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::UpdatedAtDesc => "-updatedAt",
            Self::UpdatedAt => "updatedAt",
            Self::Title => "title",
            Self::TitleDesc => "-title",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Self::UpdatedAtDesc | Self::UpdatedAt => "g.updated_at",
            Self::Title | Self::TitleDesc => "g.title",
        }
    }

    fn descending(self) -> bool {
        matches!(self, Self::UpdatedAtDesc | Self::TitleDesc)
    }

    fn by_title(self) -> bool {
        matches!(self, Self::Title | Self::TitleDesc)
    }

    /// Where `task` stands in this order, for the cursor of a page it ends.
    fn position(self, task: &TaskView) -> Position {
        match self {
            Self::UpdatedAtDesc | Self::UpdatedAt => {
                Position::Int(task.updated_at.timestamp_millis(), task.game_id)
            }
            Self::Title | Self::TitleDesc => Position::Text(task.title.clone(), task.game_id),
        }
    }
}

/// Which games the tasks view lists (`GET /api/tasks`); every one when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// A part of the title, in any case.
    pub search: Option<String>,
    pub status: Option<ProcessingStatus>,
    /// Games that an attempt of this worker (`--worker-id`) processed.
    pub worker: Option<String>,
    /// A part of the last attempt's error, in any case.
    pub error: Option<String>,
    /// Updated at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Updated before this time.
    pub until: Option<DateTime<Utc>>,
    pub sort: TaskSort,
}

/// How one processing attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Completed,
    /// Failed, will be retried after a backoff.
    Retry,
    /// Failed for good: the event is dead-lettered.
    Failed,
    /// Nothing to do: the event was for an older version or a deleted game.
    Skipped,
}

/// One processing attempt (`GET /api/games/{id}/history`).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub event_id: String,
    pub version: i64,
    pub attempt: i64,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: i64,
    /// The worker that made the attempt (`--worker-id`); absent for older rows.
    pub worker: Option<String>,
    /// The trace the attempt belongs to: its event's HTTP request's, or its own when
    /// the message came without `traceparent`.
    pub trace_id: Option<String>,
}

/// What the processing views show: games by status, recent tasks, a game's attempts.
#[async_trait]
pub trait Tasks: Send + Sync {
    /// Games still `pending`, newest first (the original's `/api/processing`).
    async fn pending_games(&self) -> Result<Vec<PendingGame>, StoreError>;
    /// A page of the games that `filter` takes, in its order, with their processing
    /// summary.
    async fn tasks(&self, filter: &TaskFilter, page: &PageRequest) -> Result<TaskPage, StoreError>;
    /// Games by processing status, over the whole catalog.
    async fn status_counts(&self) -> Result<StatusCounts, StoreError>;
    async fn history(&self, game_id: i64) -> Result<Vec<Attempt>, StoreError>;
}

#[async_trait]
impl<DB> Tasks for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Value<DB>,
    String: Value<DB>,
{
    async fn pending_games(&self) -> Result<Vec<PendingGame>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, title FROM games WHERE processing_status = 'pending' \
             ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(DB::classify)?;
        rows.iter().map(pending_game_from_row).collect()
    }

    async fn tasks(&self, filter: &TaskFilter, page: &PageRequest) -> Result<TaskPage, StoreError> {
        let like = DB::LIKE;
        let mut sql = QueryBuilder::<DB>::new(tasks_query());
        if let Some(search) = &filter.search {
            sql.push(format_args!(" AND g.title {like} "))
                .push_bind(holding(search))
                .push(" ESCAPE '!'");
        }
        if let Some(status) = filter.status {
            sql.push(" AND g.processing_status = ")
                .push_bind(status.as_str().to_owned());
        }
        if let Some(worker) = &filter.worker {
            sql.push(
                " AND EXISTS (SELECT 1 FROM processing_attempts w \
                 WHERE w.game_id = g.id AND w.worker = ",
            )
            .push_bind(worker.clone())
            .push(")");
        }
        if let Some(error) = &filter.error {
            sql.push(format_args!(" AND ({LAST_ERROR}) {like} "))
                .push_bind(holding(error))
                .push(" ESCAPE '!'");
        }
        if let Some(since) = filter.since {
            sql.push(" AND g.updated_at >= ")
                .push_bind(since.timestamp_millis());
        }
        if let Some(until) = filter.until {
            sql.push(" AND g.updated_at < ")
                .push_bind(until.timestamp_millis());
        }
        let sort = filter.sort;
        if let Some(text) = &page.cursor {
            let position = cursor::decode(sort.name(), sort.by_title(), text)?;
            cursor::push_after(&mut sql, sort.column(), sort.descending(), position);
        }
        let direction = if sort.descending() { "DESC" } else { "ASC" };
        // One row more than asked tells whether a next page exists.
        sql.push(format_args!(
            " ORDER BY {column} {direction}, g.id {direction} LIMIT {}",
            i64::from(page.limit) + 1,
            column = sort.column(),
        ));
        let rows = sql
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(DB::classify)?;
        let mut items = rows
            .iter()
            .map(task_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = (items.len() > page.limit as usize)
            .then(|| {
                items.truncate(page.limit as usize);
                items
                    .last()
                    .map(|last| cursor::encode(sort.name(), sort.position(last)))
            })
            .flatten();
        Ok(TaskPage { items, next_cursor })
    }

    async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT processing_status, COUNT(*) AS games FROM games GROUP BY processing_status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(DB::classify)?;
        let mut counts = StatusCounts::default();
        for row in &rows {
            counts.add(status(row)?, row.int("games")? as u64);
        }
        Ok(counts)
    }

    async fn history(&self, game_id: i64) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(DB::sql(
            "SELECT event_id, version, attempt, outcome, error, started_at, finished_at, \
             duration_ms, worker, trace_id FROM processing_attempts WHERE game_id = $1 \
             ORDER BY id",
        ))
        .bind(game_id)
        .fetch_all(&self.pool)
        .await
        .map_err(DB::classify)?;
        rows.iter().map(attempt_from_row).collect()
    }
}

fn pending_game_from_row(row: &impl Columns) -> Result<PendingGame, StoreError> {
    Ok(PendingGame {
        id: row.int("id")?,
        title: row.text("title")?,
        processing_status: ProcessingStatus::Pending,
    })
}

/// The error of a game's latest attempt.
const LAST_ERROR: &str =
    "SELECT a.error FROM processing_attempts a WHERE a.game_id = g.id ORDER BY a.id DESC LIMIT 1";

/// The query behind [`task_from_row`], before its filters (`AND …`), order and limit.
fn tasks_query() -> String {
    format!(
        "SELECT g.id, g.title, g.processing_status, g.version, g.updated_at, \
         (SELECT COUNT(*) FROM processing_attempts a \
           WHERE a.game_id = g.id AND a.version = g.version) AS attempts, \
         ({LAST_ERROR}) AS last_error, \
         (SELECT a.duration_ms FROM processing_attempts a \
           WHERE a.game_id = g.id ORDER BY a.id DESC LIMIT 1) AS last_duration_ms \
         FROM games g WHERE 1 = 1"
    )
}

fn task_from_row(row: &impl Columns) -> Result<TaskView, StoreError> {
    Ok(TaskView {
        game_id: row.int("id")?,
        title: row.text("title")?,
        processing_status: status(row)?,
        version: row.int("version")?,
        attempts: row.int("attempts")?,
        last_error: row.opt_text("last_error")?,
        last_duration_ms: row.opt_int("last_duration_ms")?,
        updated_at: row.time("updated_at")?,
    })
}

fn attempt_from_row(row: &impl Columns) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        event_id: row.text("event_id")?,
        version: row.int("version")?,
        attempt: row.int("attempt")?,
        outcome: parse_outcome(&row.text("outcome")?),
        error: row.opt_text("error")?,
        started_at: row.time("started_at")?,
        finished_at: row.time("finished_at")?,
        duration_ms: row.int("duration_ms")?,
        worker: row.opt_text("worker")?,
        trace_id: row.opt_text("trace_id")?,
    })
}

fn parse_outcome(name: &str) -> AttemptOutcome {
    match name {
        "completed" => AttemptOutcome::Completed,
        "retry" => AttemptOutcome::Retry,
        "failed" => AttemptOutcome::Failed,
        _ => AttemptOutcome::Skipped,
    }
}
