//! Applying a trainer's updates to the job (events, resolved hyperparameters, estimates,
//! checkpoints) and publishing a finished job's results.

use super::Worker;
use super::trainer::{TrainingOutcome, Update};
use crate::domain::ids::FileId;
use crate::domain::model_name::FineTunedModelName;
use crate::store::{ClaimedJob, JobResults, NewEvent, NewFile};

impl Worker {
    /// Record one update from the trainer.
    pub(super) async fn apply_update(
        &self,
        claim: &ClaimedJob,
        name: &FineTunedModelName,
        update: Update,
    ) -> anyhow::Result<()> {
        let job_id = &claim.job.id;
        match update {
            Update::Message(text) => {
                self.store
                    .insert_event(job_id, &NewEvent::info(text))
                    .await?
            }
            Update::Metrics { row, total_steps } => {
                let event =
                    NewEvent::metrics(row.message(total_steps), row.to_json(Some(total_steps)));
                self.store.insert_event(job_id, &event).await?
            }
            Update::Resumed { step, total } => {
                let why = if claim.reclaimed {
                    " after a lost worker"
                } else {
                    ""
                };
                let text = format!("Resuming from step {step}/{total}{why}");
                self.store
                    .insert_event(job_id, &NewEvent::info(text))
                    .await?
            }
            Update::Resolved(hp) => self.store.set_job_hyperparameters(claim, &hp).await?,
            Update::Estimate(secs) => self.store.set_estimated_finish(claim, secs).await?,
            Update::Step { .. } => {}
            Update::Checkpoint { step, dir, metrics } => {
                self.blobs.share_dir(&dir).await?;
                let path = self.blobs.stored_path(&dir);
                self.store
                    .insert_checkpoint(
                        claim,
                        i32::try_from(step)?,
                        &name.checkpoint(step as u64),
                        &metrics.to_json(None),
                        &path,
                    )
                    .await?;
            }
            Update::Pruned(step) => {
                let path = self
                    .store
                    .delete_checkpoint(job_id, i32::try_from(step)?)
                    .await?;
                if let Some(path) = path {
                    self.blobs
                        .unshare_dir(&self.blobs.data_dir().join(path))
                        .await?;
                }
            }
            Update::StateSaved(dir) => self.blobs.share_state(&dir).await?,
            Update::MemberFinished(dir) => super::members::share_member(&self.blobs, &dir).await?,
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
        let mut files = Vec::new();
        for (path, filename) in &outcome.result_files {
            let id = FileId::generate();
            let bytes = self.blobs.import(path, &id).await?;
            files.push(NewFile {
                id,
                organization_id: claim.job.organization_id.clone(),
                bytes: i64::try_from(bytes)?,
                filename: filename.clone(),
                purpose: "fine-tune-results".to_owned(),
                dataset_format: None,
                example_count: None,
                expires_after_seconds: None,
            });
        }
        // An ensemble's members (the first is its adapter) were shared as each finished.
        if outcome.members.is_empty() {
            self.blobs.share_dir(&outcome.adapter_dir).await?;
        }
        let path = |p: &std::path::PathBuf| self.blobs.stored_path(p);
        let results = JobResults {
            model: name,
            trained_tokens: outcome.trained_tokens,
            files,
            adapter_path: path(&outcome.adapter_dir),
            members: outcome.members.iter().map(path).collect(),
        };
        // Attached before `succeeded` is visible: a client that reads it and asks at once finds
        // the model ready (requests still check the stored adapter path, so a prepared model
        // that is later withdrawn or replaced is never served in its place).
        if let Some(hook) = &self.on_model_ready {
            for (id, dir) in results.published() {
                hook.prepare(id, self.blobs.data_dir().join(dir)).await;
            }
        }
        if !self.store.succeed_job(claim, &results).await? {
            // Fenced off, paused or cancelled meanwhile: the results are not ours to publish,
            // and the lease (if still ours) goes back so a resume can be claimed at once.
            if let Some(hook) = &self.on_model_ready {
                for (id, _) in results.published() {
                    hook.withdraw(id).await;
                }
            }
            for f in &results.files {
                self.blobs.remove(&f.id).await?;
            }
            self.store.release_job(claim).await?;
        }
        Ok(())
    }
}
