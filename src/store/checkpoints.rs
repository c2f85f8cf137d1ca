//! The `fine_tuning_job_checkpoint` table.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::FromRow;

use super::{Context, Store, StoreError};
use crate::domain::ids::{CheckpointId, JobId};
use crate::domain::job::JobStatus;
use crate::domain::pagination::{Page, PageRequest};

/// A checkpoint as stored.
#[derive(Debug, Clone, FromRow)]
pub struct CheckpointRow {
    /// `ftckpt-…`.
    pub id: CheckpointId,
    /// The job it belongs to.
    pub job_id: JobId,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Servable name, `…:ckpt-step-N`.
    pub fine_tuned_model_checkpoint: String,
    /// Optimizer step.
    pub step_number: i32,
    /// Metrics at that step.
    pub metrics: Value,
}

impl Store {
    /// A page of a job's checkpoints, newest first.
    #[tracing::instrument(skip_all, fields(job_id = %job_id))]
    pub async fn list_checkpoints(
        &self,
        job_id: &JobId,
        page: &PageRequest,
    ) -> Result<Page<CheckpointRow>, StoreError> {
        let c = self
            .cursor(
                "fine_tuning_job_checkpoint",
                "job_id",
                job_id.as_str(),
                page,
            )
            .await?;
        let rows = sqlx::query_as(&format!(
            "select id, job_id, created_at, fine_tuned_model_checkpoint, step_number, metrics \
             from fine_tuning_job_checkpoint where job_id = $1 \
             and ($2::bigint is null or seq {} $2) order by seq {} limit $3",
            c.cmp, c.dir
        ))
        .bind(job_id)
        .bind(c.seq)
        .bind(page.limit + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("listing checkpoints")?;
        Ok(Page::from_overfetch(rows, page.limit))
    }
}

impl Store {
    /// Record a checkpoint of a held job (fenced by the claim's attempt); replaces one of the
    /// same step left by an earlier attempt.
    #[tracing::instrument(skip_all)]
    pub async fn insert_checkpoint(
        &self,
        claim: &super::ClaimedJob,
        step: i32,
        model_name: &str,
        metrics: &Value,
        path: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "insert into fine_tuning_job_checkpoint (id, job_id, fine_tuned_model_checkpoint, \
             step_number, metrics, path) \
             select $1, id, $3, $4, $5, $6 from fine_tuning_job \
             where id = $2 and attempt = $7 and status = $8 \
             on conflict on constraint fine_tuning_job_checkpoint_job_step_key \
             do update set metrics = excluded.metrics, path = excluded.path, created_at = now()",
        )
        .bind(CheckpointId::generate())
        .bind(&claim.job.id)
        .bind(model_name)
        .bind(step)
        .bind(metrics)
        .bind(path)
        .bind(claim.attempt)
        .bind(JobStatus::Running)
        .execute(&self.pool)
        .await
        .ctx("recording a checkpoint")?;
        Ok(done.rows_affected() == 1)
    }

    /// Forget every checkpoint of a job (cancelled: its files are gone).
    #[tracing::instrument(skip_all, fields(job_id = %job_id))]
    pub async fn delete_checkpoints(&self, job_id: &JobId) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.ctx("acquiring a connection")?;
        Self::delete_checkpoints_in(&mut conn, job_id).await
    }

    /// [`Self::delete_checkpoints`] inside a caller's transaction.
    pub(crate) async fn delete_checkpoints_in(
        conn: &mut sqlx::PgConnection,
        job_id: &JobId,
    ) -> Result<(), StoreError> {
        sqlx::query("delete from fine_tuning_job_checkpoint where job_id = $1")
            .bind(job_id)
            .execute(conn)
            .await
            .ctx("deleting a job's checkpoints")?;
        Ok(())
    }

    /// Forget a pruned checkpoint.
    #[tracing::instrument(skip_all, fields(job_id = %job_id))]
    pub async fn delete_checkpoint(
        &self,
        job_id: &JobId,
        step: i32,
    ) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "delete from fine_tuning_job_checkpoint where job_id = $1 and step_number = $2 \
             returning path",
        )
        .bind(job_id)
        .bind(step)
        .fetch_optional(&self.pool)
        .await
        .ctx("deleting a checkpoint")
    }
}
