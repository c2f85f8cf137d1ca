//! The `fine_tuning_job` table: creation, reads, lists and client-requested transitions.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::FromRow;
use sqlx::types::Json;

use super::{Context, NewEvent, Store, StoreError};
use crate::domain::hyperparameters::Hyperparameters;
use crate::domain::ids::{FileId, JobId};
use crate::domain::job::{JobAction, JobError, JobStatus};
use crate::domain::job_request::JobSpec;
use crate::domain::organization::OrganizationId;
use crate::domain::pagination::{Page, PageRequest};

/// A job as stored.
#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    /// `ftjob-…`.
    pub id: JobId,
    /// Owner.
    pub organization_id: OrganizationId,
    /// Base model.
    pub model: String,
    /// Training file id.
    pub training_file: FileId,
    /// Validation file id.
    pub validation_file: Option<FileId>,
    /// Model-name suffix.
    pub suffix: Option<String>,
    /// Seed.
    pub seed: i64,
    /// Status.
    pub status: JobStatus,
    /// Hyperparameters (requested, then resolved).
    pub hyperparameters: Json<Hyperparameters>,
    /// Method object.
    pub method: Value,
    /// Metadata pairs.
    pub metadata: Option<Value>,
    /// Echoed integrations.
    pub integrations: Option<Value>,
    /// Set once failed.
    pub error: Option<Json<JobError>>,
    /// Set once succeeded.
    pub fine_tuned_model: Option<String>,
    /// Result file ids.
    pub result_files: Vec<FileId>,
    /// Tokens trained on.
    pub trained_tokens: Option<i64>,
    /// Estimated finish time while running.
    pub estimated_finish: Option<DateTime<Utc>>,
    /// When it reached a final status.
    pub finished_at: Option<DateTime<Utc>>,
    /// Queue fencing token.
    pub attempt: i32,
    /// Claims after an expired lease.
    pub lost_leases: i32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

pub(crate) const JOB_COLUMNS: &str = "id, organization_id, model, training_file, validation_file, \
    suffix, seed, status, hyperparameters, method, metadata, integrations, error, fine_tuned_model, \
    result_files, trained_tokens, estimated_finish, finished_at, attempt, lost_leases, created_at";

/// The outcome of a client's cancel/pause/resume.
#[derive(Debug)]
pub enum Transition {
    /// Applied; the job as it now is.
    Done(Box<JobRow>),
    /// No such job for this organization.
    NotFound,
    /// The job's status does not allow the action.
    Conflict(JobStatus),
}

impl Store {
    /// Insert a job in `validating_files` with its "Created" event, in one transaction.
    #[tracing::instrument(skip_all, fields(job_id = %id))]
    pub async fn insert_job(
        &self,
        id: &JobId,
        org: &OrganizationId,
        spec: &JobSpec,
    ) -> Result<JobRow, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting a transaction")?;
        let job: JobRow = sqlx::query_as(&format!(
            "insert into fine_tuning_job (id, organization_id, model, training_file, \
             validation_file, suffix, seed, status, hyperparameters, method, metadata, integrations) \
             values ($1, $2, $3, $4, $5, $6, $7, $12, $8, $9, $10, $11) \
             returning {JOB_COLUMNS}"
        ))
        .bind(id)
        .bind(org)
        .bind(&spec.model)
        .bind(&spec.training_file)
        .bind(&spec.validation_file)
        .bind(spec.suffix.as_ref().map(|s| s.as_str()))
        .bind(spec.seed)
        .bind(Json(&spec.hyperparameters))
        .bind(JobSpec::method_json(&spec.hyperparameters))
        .bind(&spec.metadata)
        .bind(&spec.integrations)
        .bind(JobStatus::ValidatingFiles)
        .fetch_one(&mut *tx)
        .await
        .ctx("inserting a job")?;
        Self::insert_event_in(
            &mut tx,
            id,
            &NewEvent::info(format!("Created fine-tuning job: {id}")),
        )
        .await?;
        Self::notify_runnable_in(&mut tx, id).await?;
        tx.commit().await.ctx("committing a new job")?;
        Ok(job)
    }

    /// One job of `org`.
    #[tracing::instrument(skip_all, fields(job_id = %id))]
    pub async fn get_job(
        &self,
        org: &OrganizationId,
        id: &JobId,
    ) -> Result<Option<JobRow>, StoreError> {
        sqlx::query_as(&format!(
            "select {JOB_COLUMNS} from fine_tuning_job where id = $1 and organization_id = $2"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a job")
    }

    /// Which of `ids` name cancelled jobs.
    #[tracing::instrument(skip_all)]
    pub async fn cancelled_jobs(&self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_scalar("select id from fine_tuning_job where id = any($1) and status = $2")
            .bind(ids)
            .bind(JobStatus::Cancelled)
            .fetch_all(&self.pool)
            .await
            .ctx("finding cancelled jobs")
    }

    /// A page of `org`'s jobs, newest first, whose metadata contains `metadata` (if given).
    #[tracing::instrument(skip_all)]
    pub async fn list_jobs(
        &self,
        org: &OrganizationId,
        metadata: Option<&Value>,
        page: &PageRequest,
    ) -> Result<Page<JobRow>, StoreError> {
        let c = self
            .cursor("fine_tuning_job", "organization_id", org.as_str(), page)
            .await?;
        let rows = sqlx::query_as(&format!(
            "select {JOB_COLUMNS} from fine_tuning_job where organization_id = $1 \
             and ($2::jsonb is null or metadata @> $2) and ($3::bigint is null or seq {} $3) \
             order by seq {} limit $4",
            c.cmp, c.dir
        ))
        .bind(org)
        .bind(metadata)
        .bind(c.seq)
        .bind(page.limit + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("listing jobs")?;
        Ok(Page::from_overfetch(rows, page.limit))
    }

    /// Apply a client's cancel/pause/resume atomically, with its event.
    #[tracing::instrument(skip(self, org))]
    pub async fn transition_job(
        &self,
        org: &OrganizationId,
        id: &JobId,
        action: JobAction,
    ) -> Result<Transition, StoreError> {
        let target = JobStatus::target(action);
        let sources = JobStatus::allowed_sources(action);
        let mut tx = self.pool.begin().await.ctx("starting a transaction")?;
        let updated: Option<JobRow> = sqlx::query_as(&format!(
            "update fine_tuning_job set status = $3, updated_at = now(), estimated_finish = null, \
             finished_at = case when $5 then now() else finished_at end \
             where id = $1 and organization_id = $2 and status = any($4) returning {JOB_COLUMNS}"
        ))
        .bind(id)
        .bind(org)
        .bind(target)
        .bind(sources)
        .bind(target.is_terminal())
        .fetch_optional(&mut *tx)
        .await
        .ctx("changing a job's status")?;
        let Some(job) = updated else {
            drop(tx);
            return Ok(match self.get_job(org, id).await? {
                None => Transition::NotFound,
                Some(job) => Transition::Conflict(job.status),
            });
        };
        let message = match action {
            JobAction::Cancel => "Fine-tuning job cancelled",
            JobAction::Pause => "Fine-tuning job paused",
            JobAction::Resume => "Fine-tuning job resumed",
        };
        Self::insert_event_in(&mut tx, id, &NewEvent::info(message)).await?;
        if action == JobAction::Cancel {
            // A cancelled job's checkpoints are deleted with its files: stop listing them.
            Self::delete_checkpoints_in(&mut tx, id).await?;
        }
        if !target.is_terminal() && target != JobStatus::Paused {
            Self::notify_runnable_in(&mut tx, id).await?;
        }
        tx.commit().await.ctx("committing a job transition")?;
        Ok(Transition::Done(Box::new(job)))
    }
}
