//! Applying a trainer's updates to the job (events, resolved hyperparameters, estimates,
//! checkpoints) and publishing a finished job's results.

use super::Worker;
use super::trainer::{TrainerUpdate, TrainingOutcome};
use crate::domain::ids::FileId;
use crate::domain::model_name::FineTunedModelName;
use crate::domain::organization::OrganizationId;
use crate::store::{ClaimedJob, JobResults, NewFile};

impl Worker {
    /// Record one update from the trainer.
    pub(super) async fn apply_update(
        &self,
        claim: &ClaimedJob,
        name: &FineTunedModelName,
        update: TrainerUpdate,
    ) -> anyhow::Result<()> {
        match update {
            TrainerUpdate::Event(event) => self.store.insert_event(&claim.job.id, &event).await?,
            TrainerUpdate::Resolved(hp) => self.store.set_job_hyperparameters(claim, &hp).await?,
            TrainerUpdate::Estimate(secs) => self.store.set_estimated_finish(claim, secs).await?,
            TrainerUpdate::Checkpoint { step, dir, metrics } => {
                let step = i32::try_from(step)?;
                let path = dir.to_string_lossy();
                self.store
                    .insert_checkpoint(claim, step, &name.checkpoint(step as u64), &metrics, &path)
                    .await?;
            }
            TrainerUpdate::Pruned(step) => {
                self.store
                    .delete_checkpoint(&claim.job.id, i32::try_from(step)?)
                    .await?;
            }
        }
        Ok(())
    }

    /// Copy the result files in, then mark the job succeeded with its model in one transaction.
    pub(super) async fn publish(
        &self,
        claim: &ClaimedJob,
        name: FineTunedModelName,
        outcome: TrainingOutcome,
    ) -> anyhow::Result<()> {
        let org = OrganizationId::from_stored(claim.job.organization_id.clone());
        let mut files = Vec::new();
        for (path, filename) in &outcome.result_files {
            let id = FileId::generate();
            let bytes = self.blobs.import(path, &id).await?;
            files.push(NewFile {
                id,
                organization_id: org.clone(),
                bytes: i64::try_from(bytes)?,
                filename: filename.clone(),
                purpose: "fine-tune-results".to_owned(),
                dataset_format: None,
                example_count: None,
                expires_at: None,
            });
        }
        let adapter_dir = outcome.adapter_dir.clone();
        let results = JobResults {
            model: name,
            trained_tokens: outcome.trained_tokens,
            files,
            adapter_path: outcome.adapter_dir.to_string_lossy().into_owned(),
        };
        if self.store.succeed_job(claim, &results).await? {
            if let Some(hook) = &self.on_model_ready {
                hook(results.model.as_str().to_owned(), adapter_dir);
            }
        } else {
            // Fenced off or cancelled meanwhile: the results are not ours to publish.
            for f in &results.files {
                self.blobs.remove(&f.id).await?;
            }
        }
        Ok(())
    }
}
