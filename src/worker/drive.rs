//! Driving one claimed job through its statuses.

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Worker;
use super::trainer::{Progress, TrainerError, TrainingRequest};
use super::validate::{FileProblem, MIN_EXAMPLES, validate_dataset};
use crate::domain::hyperparameters::Hyperparameters;
use crate::domain::ids::{FileId, JobId};
use crate::domain::job::JobStatus;
use crate::domain::model_name::{FineTunedModelName, Suffix};
use crate::domain::organization::OrganizationId;
use crate::store::{ClaimedJob, NewEvent};

impl Worker {
    /// Take a claimed job to its next resting point; always leaves the lease released or the job
    /// finished.
    #[tracing::instrument(skip_all, fields(job_id = %claim.job.id, attempt = claim.attempt))]
    pub(super) async fn drive(
        &self,
        claim: &ClaimedJob,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        if claim.job.lost_leases > self.settings.max_lost_leases {
            let message = format!(
                "The job was abandoned by {} worker(s) that stopped responding; giving up",
                claim.job.lost_leases
            );
            let error = json!({"code": "worker_lost", "message": message, "param": null});
            self.store.fail_job(claim, error, &message).await?;
            return Ok(());
        }
        let mut status = claim.job.status();
        if status == JobStatus::ValidatingFiles {
            if let Err(problem) = self.validate_files(claim).await? {
                self.store
                    .fail_job(claim, problem.to_json(), &problem.message)
                    .await?;
                return Ok(());
            }
            let event = NewEvent::info("Files validated, moving job to queued state");
            if !self
                .advance(claim, status, JobStatus::Queued, event)
                .await?
            {
                return Ok(());
            }
            status = JobStatus::Queued;
        }
        if stop.is_cancelled() {
            self.store.release_job(claim).await?;
            return Ok(());
        }
        if status == JobStatus::Queued {
            let event = NewEvent::info("Fine-tuning job started");
            if !self
                .advance(claim, status, JobStatus::Running, event)
                .await?
            {
                return Ok(());
            }
        }
        self.train(claim, stop).await
    }

    async fn advance(
        &self,
        claim: &ClaimedJob,
        from: JobStatus,
        to: JobStatus,
        event: NewEvent,
    ) -> anyhow::Result<bool> {
        let moved = self.store.advance_job(claim, &[from], to, &event).await?;
        if !moved {
            // A pause or cancel won the race: leave the job as the client set it.
            self.store.release_job(claim).await?;
        }
        Ok(moved)
    }

    async fn validate_files(&self, claim: &ClaimedJob) -> anyhow::Result<Result<(), FileProblem>> {
        let job = &claim.job;
        let org = OrganizationId::from_stored(job.organization_id.clone());
        let files = [
            Some((job.training_file.as_str(), "training_file", MIN_EXAMPLES)),
            job.validation_file
                .as_deref()
                .map(|v| (v, "validation_file", 1)),
        ];
        for (id, param, min) in files.into_iter().flatten() {
            let what = if param == "training_file" {
                "training"
            } else {
                "validation"
            };
            self.store
                .insert_event(
                    &job.id,
                    &NewEvent::info(format!("Validating {what} file: {id}")),
                )
                .await?;
            let found = self.store.get_file(&org, id).await?;
            let (Some(_), Some(file_id)) = (found, FileId::parse(id)) else {
                return Ok(Err(FileProblem {
                    code: "invalid_file",
                    param,
                    message: format!("The {what} file {id} no longer exists"),
                }));
            };
            let path = self.blobs.path_of(&file_id);
            let checked =
                tokio::task::spawn_blocking(move || validate_dataset(&path, param, min)).await?;
            if let Err(problem) = checked {
                return Ok(Err(problem));
            }
        }
        Ok(Ok(()))
    }

    async fn train(&self, claim: &ClaimedJob, stop: &CancellationToken) -> anyhow::Result<()> {
        let job = &claim.job;
        let path_of = |id: &str| FileId::parse(id).map(|f| self.blobs.path_of(&f));
        let output_dir = self.settings.jobs_dir.join(&job.id);
        let request = TrainingRequest {
            job_id: job.id.clone(),
            model: job.model.clone(),
            training_file: path_of(&job.training_file).unwrap_or_default(),
            validation_file: job.validation_file.as_deref().and_then(path_of),
            hyperparameters: serde_json::from_value::<Hyperparameters>(
                job.hyperparameters.clone(),
            )?,
            seed: job.seed,
            output_dir: output_dir.clone(),
        };
        let name = model_name(job)?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let trainer = self.trainer.clone();
        let trainer_stop = stop.clone();
        let mut handle = tokio::task::spawn_blocking(move || {
            trainer.train(request, &Progress::new(tx), &trainer_stop)
        });
        let result = loop {
            tokio::select! {
                Some(update) = rx.recv() => self.apply_update(claim, &name, update).await?,
                joined = &mut handle => break joined,
            }
        };
        while let Ok(update) = rx.try_recv() {
            self.apply_update(claim, &name, update).await?;
        }
        let fail = |code: &str, message: String| {
            (
                json!({"code": code, "message": message, "param": null}),
                message,
            )
        };
        let (error, message) = match result {
            Ok(Ok(outcome)) => {
                self.publish(claim, name, outcome).await?;
                return Ok(());
            }
            Ok(Err(TrainerError::Stopped)) => {
                self.store.release_job(claim).await?;
                let org = OrganizationId::from_stored(job.organization_id.clone());
                let now = self.store.get_job(&org, &job.id).await?;
                if now.is_some_and(|j| j.status() == JobStatus::Cancelled) {
                    // A cancelled job never resumes: free its disk.
                    let _ = tokio::fs::remove_dir_all(&output_dir).await;
                }
                return Ok(());
            }
            Ok(Err(TrainerError::Unavailable(message))) => fail("trainer_unavailable", message),
            Ok(Err(TrainerError::Failed { code, message })) => fail(code, message),
            Err(join) => fail("server_error", format!("Training crashed: {join}")),
        };
        self.store.fail_job(claim, error, &message).await?;
        Ok(())
    }
}

/// The name the job's model (and its checkpoints) will carry.
fn model_name(job: &crate::store::JobRow) -> anyhow::Result<FineTunedModelName> {
    let org = OrganizationId::from_stored(job.organization_id.clone());
    let job_id =
        JobId::parse(&job.id).ok_or_else(|| anyhow::anyhow!("malformed job id {}", job.id))?;
    let suffix = job.suffix.as_deref().map(Suffix::parse).transpose()?;
    Ok(FineTunedModelName::new(
        &job.model,
        &org,
        suffix.as_ref(),
        &job_id,
    ))
}
