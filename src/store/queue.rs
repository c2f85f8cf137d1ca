//! The job queue: claim with `FOR UPDATE SKIP LOCKED`, a lease renewed by heartbeat, and the
//! attempt number as a fencing token on every write a worker makes.
//!
//! Claiming commits at once; no transaction stays open while a job runs.

use std::time::Duration;

use sqlx::types::Json;

use super::jobs::JOB_COLUMNS;
use super::{Context, JobRow, NewEvent, Store, StoreError};
use crate::domain::hyperparameters::Hyperparameters;
use crate::domain::hyperparameters::WorkerDevice;
use crate::domain::ids::FileId;
use crate::domain::job::{JobError, JobStatus};

/// A job this worker holds the lease on, and the fencing token that proves it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job as claimed.
    pub job: JobRow,
    /// The attempt number every later write must match.
    pub attempt: i32,
    /// The previous holder's lease had expired: its worker died (or hung) mid-job.
    pub reclaimed: bool,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    #[sqlx(flatten)]
    job: JobRow,
    reclaimed: bool,
}

impl Store {
    /// Claim the oldest runnable job whose lease is free or expired, taking a lease of `lease`.
    #[tracing::instrument(skip(self))]
    pub async fn claim_job(
        &self,
        worker_id: &str,
        device: WorkerDevice,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        let row: Option<ClaimRow> = sqlx::query_as(&format!(
            "with next as ( \
                select id, locked_until is not null as reclaimed from fine_tuning_job \
                where status = any($3) and (locked_until is null or locked_until < now()) \
                and coalesce(hyperparameters->>'device', $4) = $4 \
                order by seq limit 1 for update skip locked) \
             update fine_tuning_job j set attempt = j.attempt + 1, \
                lost_leases = j.lost_leases + (case when j.locked_until is null then 0 else 1 end), \
                locked_by = $1, locked_until = now() + make_interval(secs => $2), updated_at = now() \
             from next where j.id = next.id returning {}, next.reclaimed",
            JOB_COLUMNS
                .split(", ")
                .map(|c| format!("j.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(worker_id)
        .bind(lease.as_secs_f64())
        .bind(&JobStatus::ACTIVE[..])
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await
        .ctx("claiming a job")?;
        Ok(row.map(|r| ClaimedJob {
            attempt: r.job.attempt,
            reclaimed: r.reclaimed,
            job: r.job,
        }))
    }

    /// Renew the lease. `None`: another worker has taken the job (stop at once); otherwise the
    /// job's current status, so the caller sees a cancel or pause.
    #[tracing::instrument(skip_all, fields(job_id = %claim.job.id))]
    pub async fn heartbeat(
        &self,
        claim: &ClaimedJob,
        lease: Duration,
    ) -> Result<Option<JobStatus>, StoreError> {
        let status: Option<JobStatus> = sqlx::query_scalar(
            "update fine_tuning_job set locked_until = now() + make_interval(secs => $3) \
             where id = $1 and attempt = $2 returning status",
        )
        .bind(&claim.job.id)
        .bind(claim.attempt)
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .ctx("renewing a job lease")?;
        Ok(status)
    }

    /// The workers holding an unexpired lease.
    #[tracing::instrument(skip_all)]
    pub async fn live_lease_holders(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "select distinct locked_by from fine_tuning_job \
             where locked_by is not null and locked_until > now()",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("listing lease holders")
    }

    /// Let the leases held by `holders` (workers known to be dead) expire now: their jobs are
    /// claimed next as reclaimed ones, resuming from their saved state. Returns how many.
    #[tracing::instrument(skip_all)]
    pub async fn expire_leases_of(&self, holders: &[&str]) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "update fine_tuning_job set locked_until = now() \
             where locked_by = any($1) and locked_until > now()",
        )
        .bind(holders)
        .execute(&self.pool)
        .await
        .ctx("releasing dead workers' leases")?;
        Ok(done.rows_affected())
    }

    /// Give the lease back without changing the status (after a pause or cancel).
    #[tracing::instrument(skip_all, fields(job_id = %claim.job.id))]
    pub async fn release_job(&self, claim: &ClaimedJob) -> Result<(), StoreError> {
        sqlx::query(
            "update fine_tuning_job set locked_by = null, locked_until = null \
             where id = $1 and attempt = $2",
        )
        .bind(&claim.job.id)
        .bind(claim.attempt)
        .execute(&self.pool)
        .await
        .ctx("releasing a job lease")?;
        Ok(())
    }

    /// Put a held running job back in the queue (its worker is shutting down after saving the
    /// training state), releasing the lease, with `event`. False when fenced off or no longer
    /// running.
    #[tracing::instrument(skip_all, fields(job_id = %claim.job.id))]
    pub async fn requeue_job(
        &self,
        claim: &ClaimedJob,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting a transaction")?;
        let done = sqlx::query(
            "update fine_tuning_job set status = $3, estimated_finish = null, locked_by = null, \
             locked_until = null, updated_at = now() where id = $1 and attempt = $2 and status = $4",
        )
        .bind(&claim.job.id)
        .bind(claim.attempt)
        .bind(JobStatus::Queued)
        .bind(JobStatus::Running)
        .execute(&mut *tx)
        .await
        .ctx("requeueing a job")?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        Self::insert_event_in(&mut tx, &claim.job.id, event).await?;
        Self::notify_runnable_in(&mut tx, &claim.job.id).await?;
        tx.commit().await.ctx("committing a requeue")?;
        Ok(true)
    }

    /// Move a held job from one of `from` to `to`, with an event. False when fenced off or the
    /// status changed under us (a cancel or pause won the race).
    #[tracing::instrument(skip_all, fields(job_id = %claim.job.id))]
    pub async fn advance_job(
        &self,
        claim: &ClaimedJob,
        from: &[JobStatus],
        to: JobStatus,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting a transaction")?;
        let done = sqlx::query(
            "update fine_tuning_job set status = $3, updated_at = now() \
             where id = $1 and attempt = $2 and status = any($4)",
        )
        .bind(&claim.job.id)
        .bind(claim.attempt)
        .bind(to)
        .bind(from)
        .execute(&mut *tx)
        .await
        .ctx("advancing a job")?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        Self::insert_event_in(&mut tx, &claim.job.id, event).await?;
        tx.commit().await.ctx("committing a job advance")?;
        Ok(true)
    }

    /// End a held job as `failed` with `error`, releasing the lease; the error's message becomes
    /// the job's last event.
    #[tracing::instrument(skip_all, fields(job_id = %claim.job.id))]
    pub async fn fail_job(&self, claim: &ClaimedJob, error: &JobError) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting a transaction")?;
        let done = sqlx::query(
            "update fine_tuning_job set status = $5, error = $3, finished_at = now(), \
             estimated_finish = null, locked_by = null, locked_until = null, updated_at = now() \
             where id = $1 and attempt = $2 and status = any($4)",
        )
        .bind(&claim.job.id)
        .bind(claim.attempt)
        .bind(Json(error))
        .bind(&JobStatus::ACTIVE[..])
        .bind(JobStatus::Failed)
        .execute(&mut *tx)
        .await
        .ctx("failing a job")?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        let event = NewEvent::error(error.message.clone());
        Self::insert_event_in(&mut tx, &claim.job.id, &event).await?;
        tx.commit().await.ctx("committing a job failure")?;
        Ok(true)
    }
}

/// What a successful job publishes.
#[derive(Debug, Clone)]
pub struct JobResults {
    /// The fine-tuned model's name.
    pub model: crate::domain::model_name::FineTunedModelName,
    /// Tokens trained on.
    pub trained_tokens: i64,
    /// Result files (bytes already in place).
    pub files: Vec<super::NewFile>,
    /// The adapter directory served as the model (the first member's for an ensemble).
    pub adapter_path: String,
    /// With `ensemble_size` > 1: every member's adapter directory, in order; the members are
    /// published as `{model}:member-N` and `model` names their `vote` ensemble.
    pub members: Vec<String>,
}

impl JobResults {
    /// The models to register, (id, adapter directory): the one model, or every member.
    pub fn published(&self) -> Vec<(String, &str)> {
        if self.members.is_empty() {
            return vec![(self.model.as_str().to_owned(), self.adapter_path.as_str())];
        }
        self.members
            .iter()
            .enumerate()
            .map(|(i, p)| (self.model.member(i + 1), p.as_str()))
            .collect()
    }
}

impl Store {
    /// Update a held job's hyperparameters (and its `method` echo) once `auto` is resolved.
    #[tracing::instrument(skip_all, fields(job_id = %claim.job.id))]
    pub async fn set_job_hyperparameters(
        &self,
        claim: &ClaimedJob,
        hp: &Hyperparameters,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "update fine_tuning_job set hyperparameters = $3, \
             method = jsonb_set(method, '{supervised,hyperparameters}', $3), updated_at = now() \
             where id = $1 and attempt = $2",
        )
        .bind(&claim.job.id)
        .bind(claim.attempt)
        .bind(Json(hp))
        .execute(&self.pool)
        .await
        .ctx("recording resolved hyperparameters")?;
        Ok(())
    }

    /// Update a held job's estimated finish time.
    #[tracing::instrument(skip_all, fields(job_id = %claim.job.id))]
    pub async fn set_estimated_finish(
        &self,
        claim: &ClaimedJob,
        seconds: f64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "update fine_tuning_job set estimated_finish = now() + make_interval(secs => $3) \
             where id = $1 and attempt = $2 and status = $4",
        )
        .bind(&claim.job.id)
        .bind(claim.attempt)
        .bind(seconds)
        .bind(JobStatus::Running)
        .execute(&self.pool)
        .await
        .ctx("recording the estimated finish")?;
        Ok(())
    }

    /// End a held running job as `succeeded`: result files, the model row and the job's final
    /// fields in one transaction. False when fenced off or no longer running.
    #[tracing::instrument(skip_all, fields(job_id = %claim.job.id))]
    pub async fn succeed_job(
        &self,
        claim: &ClaimedJob,
        results: &JobResults,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting a transaction")?;
        let ids: Vec<FileId> = results.files.iter().map(|f| f.id.clone()).collect();
        let done = sqlx::query(
            "update fine_tuning_job set status = $6, fine_tuned_model = $3, \
             trained_tokens = $4, result_files = $5, finished_at = now(), estimated_finish = null, \
             locked_by = null, locked_until = null, updated_at = now() \
             where id = $1 and attempt = $2 and status = $7",
        )
        .bind(&claim.job.id)
        .bind(claim.attempt)
        .bind(results.model.as_str())
        .bind(results.trained_tokens)
        .bind(&ids)
        .bind(JobStatus::Succeeded)
        .bind(JobStatus::Running)
        .execute(&mut *tx)
        .await
        .ctx("completing a job")?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        for file in &results.files {
            Self::insert_file_in(&mut tx, file).await?;
        }
        for (id, path) in results.published() {
            sqlx::query(
                "insert into model (id, organization_id, kind, job_id, base_model, path) \
                 values ($1, $2, 'fine_tuned', $3, $4, $5)",
            )
            .bind(id)
            .bind(&claim.job.organization_id)
            .bind(&claim.job.id)
            .bind(&claim.job.model)
            .bind(path)
            .execute(&mut *tx)
            .await
            .ctx("registering the fine-tuned model")?;
        }
        if !results.members.is_empty() {
            let members: Vec<String> = results.published().into_iter().map(|(id, _)| id).collect();
            sqlx::query(
                "insert into ensemble (id, organization_id, strategy, members, job_id) \
                 values ($1, $2, 'vote', $3, $4)",
            )
            .bind(results.model.as_str())
            .bind(&claim.job.organization_id)
            .bind(&members)
            .bind(&claim.job.id)
            .execute(&mut *tx)
            .await
            .ctx("registering the job's ensemble")?;
        }
        let event = NewEvent::info("The job has successfully completed");
        Self::insert_event_in(&mut tx, &claim.job.id, &event).await?;
        tx.commit().await.ctx("committing a job success")?;
        Ok(true)
    }
}
