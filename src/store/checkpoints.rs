//! The `fine_tuning_job_checkpoint` table.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::FromRow;

use super::{Context, Store, StoreError};
use crate::domain::pagination::{Page, PageRequest};

/// A checkpoint as stored.
#[derive(Debug, Clone, FromRow)]
pub struct CheckpointRow {
    /// `ftckpt-…`.
    pub id: String,
    /// The job it belongs to.
    pub job_id: String,
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
    pub async fn list_checkpoints(
        &self,
        job_id: &str,
        page: &PageRequest,
    ) -> Result<Page<CheckpointRow>, StoreError> {
        let c = self
            .cursor("fine_tuning_job_checkpoint", "job_id", job_id, page)
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
