//! Batches (tables `batch` and `batch_line`): the batch objects, the lease a runner holds on one,
//! and each answered line, written once (a fenced insert: only the lease holder writes, and a
//! line already answered is never answered again).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::FromRow;

use super::{Context, Store, StoreError};
use crate::domain::organization::OrganizationId;
use crate::domain::pagination::{Page, PageRequest};

/// A stored batch.
#[derive(Debug, Clone, FromRow)]
pub struct BatchRow {
    /// `batch_…`.
    pub id: String,
    /// Owner.
    pub organization_id: OrganizationId,
    /// The endpoint every line calls.
    pub endpoint: String,
    /// The requests.
    pub input_file_id: String,
    /// `24h`.
    pub completion_window: String,
    /// OpenAI's batch status.
    pub status: String,
    /// The answers, once finalized.
    pub output_file_id: Option<String>,
    /// The failed lines, once finalized (when any failed).
    pub error_file_id: Option<String>,
    /// Why the batch failed as a whole.
    pub errors: Option<Value>,
    /// Requests in the file.
    pub total: i32,
    /// Requests answered.
    pub completed: i32,
    /// Requests failed.
    pub failed: i32,
    /// The caller's metadata.
    pub metadata: Option<Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Started.
    pub in_progress_at: Option<DateTime<Utc>>,
    /// End of its completion window.
    pub expires_at: DateTime<Utc>,
    /// Its files being written.
    pub finalizing_at: Option<DateTime<Utc>>,
    /// Completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// Failed.
    pub failed_at: Option<DateTime<Utc>>,
    /// Expired.
    pub expired_at: Option<DateTime<Utc>>,
    /// Cancel asked.
    pub cancelling_at: Option<DateTime<Utc>>,
    /// Cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, organization_id, endpoint, input_file_id, completion_window, status, \
    output_file_id, error_file_id, errors, total, completed, failed, metadata, created_at, \
    in_progress_at, expires_at, finalizing_at, completed_at, failed_at, expired_at, \
    cancelling_at, cancelled_at";

/// A batch to create.
pub struct NewBatch<'a> {
    /// `batch_…`.
    pub id: &'a str,
    /// The endpoint.
    pub endpoint: &'a str,
    /// The requests file.
    pub input_file_id: &'a str,
    /// `24h`.
    pub completion_window: &'a str,
    /// Its length.
    pub window: Duration,
    /// Requests in the file.
    pub total: i32,
    /// The caller's metadata.
    pub metadata: Option<&'a Value>,
}

/// A running batch's next stage.
#[derive(Debug, Clone, Copy)]
pub enum BatchStage {
    /// Answering its lines.
    InProgress,
    /// Writing its files.
    Finalizing,
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// Every line answered.
    Completed,
    /// Cancelled: the lines answered before are in its files.
    Cancelled,
    /// Its window closed: the lines not answered are `expired` in the error file.
    Expired,
    /// It could not run (its input file is gone).
    Failed,
}

impl BatchEnd {
    /// The status and its time column.
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            Self::Completed => ("completed", "completed_at"),
            Self::Cancelled => ("cancelled", "cancelled_at"),
            Self::Expired => ("expired", "expired_at"),
            Self::Failed => ("failed", "failed_at"),
        }
    }
}

/// One answered line.
#[derive(Debug, Clone, FromRow)]
pub struct BatchLineRow {
    /// 1-based line of the input file.
    pub line: i32,
    /// Its output line.
    pub result: Value,
    /// It goes to the error file.
    pub is_error: bool,
}

impl Store {
    /// Create a batch for `org` (status `validating`).
    #[tracing::instrument(skip_all, fields(batch = %new.id))]
    pub async fn insert_batch(
        &self,
        org: &OrganizationId,
        new: &NewBatch<'_>,
    ) -> Result<BatchRow, StoreError> {
        sqlx::query_as(&format!(
            "insert into batch (id, organization_id, endpoint, input_file_id, completion_window, \
             expires_at, total, metadata) \
             values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7, $8) \
             returning {COLUMNS}"
        ))
        .bind(new.id)
        .bind(org.as_str())
        .bind(new.endpoint)
        .bind(new.input_file_id)
        .bind(new.completion_window)
        .bind(new.window.as_secs_f64())
        .bind(new.total)
        .bind(new.metadata)
        .fetch_one(&self.pool)
        .await
        .ctx("creating a batch")
    }

    /// Batch `id` of `org`.
    #[tracing::instrument(skip_all, fields(batch = %id))]
    pub async fn get_batch(
        &self,
        org: &OrganizationId,
        id: &str,
    ) -> Result<Option<BatchRow>, StoreError> {
        sqlx::query_as(&format!(
            "select {COLUMNS} from batch where id = $1 and organization_id = $2"
        ))
        .bind(id)
        .bind(org.as_str())
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a batch")
    }

    /// A page of `org`'s batches.
    #[tracing::instrument(skip_all)]
    pub async fn list_batches(
        &self,
        org: &OrganizationId,
        page: &PageRequest,
    ) -> Result<Page<BatchRow>, StoreError> {
        let c = self
            .cursor("batch", "organization_id", org.as_str(), page)
            .await?;
        let rows = sqlx::query_as(&format!(
            "select {COLUMNS} from batch where organization_id = $1 \
             and ($2::bigint is null or seq {} $2) order by seq {} limit $3",
            c.cmp, c.dir
        ))
        .bind(org.as_str())
        .bind(c.seq)
        .bind(page.limit + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("listing batches")?;
        Ok(Page::from_overfetch(rows, page.limit))
    }

    /// Ask batch `id` of `org` to stop: a batch still running becomes `cancelling` (its runner
    /// writes what was answered and ends it `cancelled`); the batch as it now is.
    #[tracing::instrument(skip_all, fields(batch = %id))]
    pub async fn cancel_batch(
        &self,
        org: &OrganizationId,
        id: &str,
    ) -> Result<Option<BatchRow>, StoreError> {
        sqlx::query(
            "update batch set status = 'cancelling', cancelling_at = now() \
             where id = $1 and organization_id = $2 \
             and status in ('validating', 'in_progress')",
        )
        .bind(id)
        .bind(org.as_str())
        .execute(&self.pool)
        .await
        .ctx("cancelling a batch")?;
        self.get_batch(org, id).await
    }

    /// Claim the oldest unfinished batch whose lease is free or expired, for `lease`.
    #[tracing::instrument(skip(self))]
    pub async fn claim_batch(
        &self,
        runner: &str,
        lease: Duration,
    ) -> Result<Option<BatchRow>, StoreError> {
        sqlx::query_as(&format!(
            "with next as (select id from batch \
                where status in ('validating', 'in_progress', 'finalizing', 'cancelling') \
                and (locked_until is null or locked_until < now()) \
                order by seq limit 1 for update skip locked) \
             update batch b set locked_by = $1, locked_until = now() + make_interval(secs => $2) \
             from next where b.id = next.id returning {}",
            COLUMNS
                .split(", ")
                .map(|c| format!("b.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(runner)
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .ctx("claiming a batch")
    }

    /// Renew `runner`'s lease on batch `id` and read its status and whether its window has
    /// closed (as stored: the window is the database's, not the claim's copy); `None` when the
    /// lease is lost.
    #[tracing::instrument(skip(self))]
    pub async fn renew_batch(
        &self,
        id: &str,
        runner: &str,
        lease: Duration,
    ) -> Result<Option<(String, bool)>, StoreError> {
        sqlx::query_as(
            "update batch set locked_until = now() + make_interval(secs => $3) \
             where id = $1 and locked_by = $2 returning status, expires_at <= now()",
        )
        .bind(id)
        .bind(runner)
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .ctx("renewing a batch lease")
    }

    /// Move batch `id` (held by `runner`) to `stage`, stamping its time column; a batch being
    /// cancelled stays so. `false` when the lease is lost or the batch is being cancelled.
    #[tracing::instrument(skip(self))]
    pub async fn set_batch_stage(
        &self,
        id: &str,
        runner: &str,
        stage: BatchStage,
    ) -> Result<bool, StoreError> {
        let (status, column) = match stage {
            BatchStage::InProgress => ("in_progress", "in_progress_at"),
            BatchStage::Finalizing => ("finalizing", "finalizing_at"),
        };
        let done = sqlx::query(&format!(
            "update batch set status = $3, {column} = coalesce({column}, now()) \
             where id = $1 and locked_by = $2 and status not in ('cancelling')"
        ))
        .bind(id)
        .bind(runner)
        .bind(status)
        .execute(&self.pool)
        .await
        .ctx("moving a batch on")?;
        Ok(done.rows_affected() == 1)
    }

    /// Keep line `line`'s answer for batch `id` and count it, once: a line already answered,
    /// or a batch `runner` no longer holds, writes nothing. `true` when written.
    #[tracing::instrument(skip(self, result))]
    pub async fn insert_batch_line(
        &self,
        id: &str,
        runner: &str,
        line: i32,
        result: &Value,
        is_error: bool,
    ) -> Result<bool, StoreError> {
        let written: Option<i32> = sqlx::query_scalar(
            "with ins as (insert into batch_line (batch_id, line, result, is_error) \
                select $1, $3, $4, $5 where exists \
                    (select 1 from batch where id = $1 and locked_by = $2) \
                on conflict do nothing returning is_error) \
             update batch set completed = completed + (select count(*) from ins where not is_error), \
                failed = failed + (select count(*) from ins where is_error) \
             where id = $1 and exists (select 1 from ins) returning total",
        )
        .bind(id)
        .bind(runner)
        .bind(line)
        .bind(result)
        .bind(is_error)
        .fetch_optional(&self.pool)
        .await
        .ctx("keeping a batch line")?;
        Ok(written.is_some())
    }

    /// The answered lines of batch `id`, in file order.
    #[tracing::instrument(skip(self))]
    pub async fn batch_lines(&self, id: &str) -> Result<Vec<BatchLineRow>, StoreError> {
        sqlx::query_as(
            "select line, result, is_error from batch_line where batch_id = $1 order by line",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .ctx("reading batch lines")
    }

    /// End batch `id` (held by `runner`) as `end` with its files or `errors`, and let it go.
    #[tracing::instrument(skip(self, errors))]
    pub async fn end_batch(
        &self,
        id: &str,
        runner: &str,
        end: BatchEnd,
        files: (Option<&str>, Option<&str>),
        errors: Option<&Value>,
    ) -> Result<bool, StoreError> {
        let (status, column) = end.columns();
        let done = sqlx::query(&format!(
            "update batch set status = $3, {column} = now(), output_file_id = $4, \
             error_file_id = $5, errors = $6, locked_by = null, locked_until = null \
             where id = $1 and locked_by = $2"
        ))
        .bind(id)
        .bind(runner)
        .bind(status)
        .bind(files.0)
        .bind(files.1)
        .bind(errors)
        .execute(&self.pool)
        .await
        .ctx("ending a batch")?;
        Ok(done.rows_affected() == 1)
    }
}
