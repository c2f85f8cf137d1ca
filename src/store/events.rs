//! The `fine_tuning_job_event` table.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgConnection};

use super::{Context, Store, StoreError};
use crate::domain::ids::{EventId, JobId};
use crate::domain::pagination::{Page, PageRequest};

/// An event as stored.
#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    /// `ftevent-…`.
    pub id: EventId,
    /// When it happened.
    pub created_at: DateTime<Utc>,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// Human-readable message.
    pub message: String,
    /// `message` or `metrics`.
    #[sqlx(rename = "type")]
    pub kind: String,
    /// Metrics payload.
    pub data: Option<Value>,
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `info`, `warn` or `error`.
    pub level: &'static str,
    /// Message.
    pub message: String,
    /// `message` or `metrics`.
    pub kind: &'static str,
    /// Metrics payload.
    pub data: Option<Value>,
}

impl NewEvent {
    /// An `info` message.
    pub fn info(message: impl Into<String>) -> Self {
        Self {
            level: "info",
            message: message.into(),
            kind: "message",
            data: None,
        }
    }

    /// An `error` message.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            level: "error",
            ..Self::info(message)
        }
    }

    /// A `metrics` event with its data.
    pub fn metrics(message: impl Into<String>, data: Value) -> Self {
        Self {
            kind: "metrics",
            data: Some(data),
            ..Self::info(message)
        }
    }
}

impl Store {
    /// Append an event to a job.
    #[tracing::instrument(skip_all, fields(job_id = %job_id))]
    pub async fn insert_event(&self, job_id: &JobId, event: &NewEvent) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.ctx("acquiring a connection")?;
        Self::insert_event_in(&mut conn, job_id, event).await
    }

    /// Append an event inside a caller's transaction. A metrics event for a step the job already
    /// has metrics for is dropped (a resumed job re-runs the steps after its last checkpoint).
    pub(crate) async fn insert_event_in(
        conn: &mut PgConnection,
        job_id: &JobId,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "insert into fine_tuning_job_event (id, job_id, level, message, type, data) \
             values ($1, $2, $3, $4, $5, $6) on conflict do nothing",
        )
        .bind(EventId::generate())
        .bind(job_id)
        .bind(event.level)
        .bind(&event.message)
        .bind(event.kind)
        .bind(&event.data)
        .execute(conn)
        .await
        .ctx("inserting a job event")?;
        Ok(())
    }

    /// A page of a job's events, newest first.
    #[tracing::instrument(skip_all, fields(job_id = %job_id))]
    pub async fn list_events(
        &self,
        job_id: &JobId,
        page: &PageRequest,
    ) -> Result<Page<EventRow>, StoreError> {
        let c = self
            .cursor("fine_tuning_job_event", "job_id", job_id.as_str(), page)
            .await?;
        let rows = sqlx::query_as(&format!(
            "select id, created_at, level, message, type, data from fine_tuning_job_event \
             where job_id = $1 and ($2::bigint is null or seq {} $2) order by seq {} limit $3",
            c.cmp, c.dir
        ))
        .bind(job_id)
        .bind(c.seq)
        .bind(page.limit + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("listing job events")?;
        Ok(Page::from_overfetch(rows, page.limit))
    }
}

impl Store {
    /// The `data` of every metrics event of a job, step order (what the dashboard's charts draw).
    #[tracing::instrument(skip_all, fields(job_id = %job_id))]
    pub async fn metrics_series(&self, job_id: &JobId) -> Result<Vec<Value>, StoreError> {
        let rows: Vec<(Value,)> = sqlx::query_as(
            "select data from fine_tuning_job_event \
             where job_id = $1 and type = 'metrics' and data is not null \
             order by (data->>'step')::bigint",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await
        .ctx("reading a job's metrics")?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }
}
