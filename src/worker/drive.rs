//! Driving one leased job through its statuses.

use tokio::sync::mpsc;

use super::Worker;
use super::lease::Lease;
use super::members::{fetch_members, train_members};
use super::trainer::{Progress, TrainingFailure, TrainingRequest};
use super::validate::{MIN_EXAMPLES, validate_dataset};
use crate::domain::job::{JobError, JobStatus};
use crate::domain::model_name::{FineTunedModelName, Suffix};
use crate::store::{JobRow, NewEvent};

impl Worker {
    /// Take a leased job to its next resting point; always leaves the lease released or the job
    /// finished.
    #[tracing::instrument(skip_all, fields(job_id = %lease.job().id, attempt = lease.claim().attempt))]
    pub(super) async fn drive(&self, lease: &Lease) -> anyhow::Result<()> {
        let claim = lease.claim();
        if claim.job.lost_leases > self.settings.max_lost_leases {
            let message = format!(
                "The job was abandoned by {} worker(s) that stopped responding; giving up",
                claim.job.lost_leases
            );
            self.store
                .fail_job(claim, &JobError::new("worker_lost", message))
                .await?;
            return Ok(());
        }
        let mut status = claim.job.status;
        if status == JobStatus::ValidatingFiles {
            if let Err(problem) = self.validate_files(&claim.job).await? {
                self.store.fail_job(claim, &problem).await?;
                return Ok(());
            }
            let event = NewEvent::info("Files validated, moving job to queued state");
            if !self
                .advance(lease, status, JobStatus::Queued, event)
                .await?
            {
                return Ok(());
            }
            status = JobStatus::Queued;
        }
        if lease.stop().is_cancelled() {
            self.store.release_job(claim).await?;
            return Ok(());
        }
        if status == JobStatus::Queued {
            let event = NewEvent::info("Fine-tuning job started");
            if !self
                .advance(lease, status, JobStatus::Running, event)
                .await?
            {
                return Ok(());
            }
        }
        self.train(lease).await
    }

    async fn advance(
        &self,
        lease: &Lease,
        from: JobStatus,
        to: JobStatus,
        event: NewEvent,
    ) -> anyhow::Result<bool> {
        let claim = lease.claim();
        let moved = self.store.advance_job(claim, &[from], to, &event).await?;
        if !moved {
            // A pause or cancel won the race: leave the job as the client set it.
            self.store.release_job(claim).await?;
        }
        Ok(moved)
    }

    /// The adapter a continuing job starts from.
    async fn init_adapter(&self, job: &JobRow) -> anyhow::Result<Option<std::path::PathBuf>> {
        let Some(id) = &job.hyperparameters.0.init_model else {
            return Ok(None);
        };
        let from = self.store.get_model(&job.organization_id, id).await?;
        let from =
            from.ok_or_else(|| anyhow::anyhow!("the model {id} to continue from is gone"))?;
        Ok(Some(self.blobs.local_dir(&from.path).await?))
    }

    async fn validate_files(&self, job: &JobRow) -> anyhow::Result<Result<(), JobError>> {
        if let Some(id) = &job.hyperparameters.0.init_model
            && self
                .store
                .get_model(&job.organization_id, id)
                .await?
                .is_none()
        {
            return Ok(Err(JobError::new(
                "invalid_model",
                format!("The model {id} this job continues from no longer exists"),
            )
            .with_param("model")));
        }
        let files = [
            Some((&job.training_file, "training_file", MIN_EXAMPLES)),
            job.validation_file
                .as_ref()
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
            if self
                .store
                .get_file(&job.organization_id, id)
                .await?
                .is_none()
            {
                return Ok(Err(JobError::new(
                    "invalid_file",
                    format!("The {what} file {id} no longer exists"),
                )
                .with_param(param)));
            }
            let path = self.blobs.local(id).await?;
            let dpo = job.hyperparameters.0.preference.is_some();
            let checked =
                tokio::task::spawn_blocking(move || validate_dataset(&path, param, min, dpo))
                    .await?;
            if let Err(problem) = checked {
                return Ok(Err(problem));
            }
        }
        Ok(Ok(()))
    }

    async fn train(&self, lease: &Lease) -> anyhow::Result<()> {
        let (claim, job) = (lease.claim(), lease.job());
        let output_dir = self.settings.jobs_dir.join(job.id.as_str());
        self.fetch_states(job, &output_dir).await?;
        let validation_file = match &job.validation_file {
            Some(id) => Some(self.blobs.local(id).await?),
            None => None,
        };
        let request = TrainingRequest {
            job_id: job.id.clone(),
            model: job.model.clone(),
            training_file: self.blobs.local(&job.training_file).await?,
            validation_file,
            hyperparameters: job.hyperparameters.0.clone(),
            seed: job.seed,
            output_dir: output_dir.clone(),
            init_adapter: self.init_adapter(job).await?,
        };
        let name = model_name(job)?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let trainer = self.trainer.clone();
        let trainer_stop = lease.stop().clone();
        let mut handle = tokio::task::spawn_blocking(move || {
            let progress = Progress::new(tx);
            if request.hyperparameters.ensemble.size > 1 {
                train_members(&*trainer, &request, &progress, &trainer_stop)
            } else {
                trainer.train(request, &progress, &trainer_stop)
            }
        });
        let result = loop {
            tokio::select! {
                Some((update, applied)) = rx.recv() => {
                    self.apply_update(claim, &name, update).await?;
                    if let Some(applied) = applied {
                        let _ = applied.send(());
                    }
                }
                joined = &mut handle => break joined,
            }
        };
        while let Ok((update, _)) = rx.try_recv() {
            self.apply_update(claim, &name, update).await?;
        }
        let error = match result {
            Ok(Ok(outcome)) => match self.publish(claim, name, outcome).await {
                Err(e) if is_storage_full(&e) => JobError::new(
                    "storage_full",
                    "The server's disk is full: the job's results could not be stored",
                ),
                published => return published,
            },
            Ok(Err(TrainingFailure::Stopped { step })) => {
                return self.after_stop(lease, step, &output_dir).await;
            }
            Ok(Err(TrainingFailure::Failed(error))) => error,
            Err(join) => JobError::new("server_error", format!("Training crashed: {join}")),
        };
        self.store.fail_job(claim, &error).await?;
        Ok(())
    }

    /// With an object store, the training states shared by the last worker to run the job
    /// (perhaps another one) replace local ones, so the run resumes where the job got to.
    /// An ensemble's members finished elsewhere are fetched whole instead (and skipped).
    async fn fetch_states(&self, job: &JobRow, output_dir: &std::path::Path) -> anyhow::Result<()> {
        let members = job.hyperparameters.0.ensemble.size.max(1);
        let mut dirs = vec![output_dir.join("state")];
        if members > 1 {
            let finished = fetch_members(&self.blobs, output_dir, members).await?;
            dirs.extend(
                (1..=members)
                    .filter(|i| !finished.contains(i))
                    .map(|i| output_dir.join(format!("member-{i}")).join("state")),
            );
        }
        for dir in dirs {
            if self.blobs.fetch_state(&dir).await? {
                tracing::info!(dir = %dir.display(), "fetched the shared training state");
            }
        }
        Ok(())
    }

    /// The trainer saved its state and stopped: requeue the job when this worker is shutting
    /// down, otherwise leave it as the client set it (and free a cancelled job's disk).
    async fn after_stop(
        &self,
        lease: &Lease,
        step: usize,
        output_dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        let claim = lease.claim();
        if self.shutdown.is_cancelled() {
            let event = NewEvent::info(format!(
                "The worker is shutting down: training paused at step {step} with its state \
                 saved; the job is queued again and resumes from there"
            ));
            if self.store.requeue_job(claim, &event).await? {
                return Ok(());
            }
        }
        self.store.release_job(claim).await?;
        let now = self
            .store
            .get_job(&claim.job.organization_id, &claim.job.id)
            .await?;
        if now.is_some_and(|j| j.status == JobStatus::Cancelled) {
            // A cancelled job never resumes: free its disk, and forget checkpoints a step
            // recorded while the cancel was on its way.
            let _ = tokio::fs::remove_dir_all(output_dir).await;
            self.blobs.unshare_dir(output_dir).await?;
            self.store.delete_checkpoints(&claim.job.id).await?;
        }
        Ok(())
    }
}

fn is_storage_full(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::store::StoreError>()
        .is_some_and(|s| s.is_storage_full())
}

/// The name the job's model (and its checkpoints) will carry.
fn model_name(job: &JobRow) -> anyhow::Result<FineTunedModelName> {
    let suffix = job.suffix.as_deref().map(Suffix::parse).transpose()?;
    Ok(FineTunedModelName::new(
        &job.model,
        &job.organization_id,
        suffix.as_ref(),
        &job.id,
    ))
}
