//! The interface between the job loop and a training engine.
//!
//! The worker hands a [`TrainingRequest`] to a [`Trainer`] on a blocking thread, forwards its
//! [`Progress`] events to the job, and cancels its [`StopSignal`] when the job is paused or
//! cancelled. The candle trainer is one implementation; [`Unavailable`] is the honest stand-in
//! used until one is configured.

use std::path::PathBuf;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::domain::hyperparameters::Hyperparameters;
use crate::store::NewEvent;

/// Everything a trainer needs to run one job.
#[derive(Debug, Clone)]
pub struct TrainingRequest {
    /// The job being trained.
    pub job_id: String,
    /// Base model name as the client gave it.
    pub model: String,
    /// Training data on disk.
    pub training_file: PathBuf,
    /// Validation data on disk.
    pub validation_file: Option<PathBuf>,
    /// Hyperparameters (some may still be `auto`).
    pub hyperparameters: Hyperparameters,
    /// Seed.
    pub seed: i64,
    /// Where to write checkpoints and the final adapter.
    pub output_dir: PathBuf,
}

/// What a finished training run produced.
#[derive(Debug, Clone, Default)]
pub struct TrainingOutcome {
    /// Tokens trained on (all epochs).
    pub trained_tokens: i64,
    /// The final adapter directory (PEFT), served as the fine-tuned model.
    pub adapter_dir: PathBuf,
    /// Files to publish as `fine-tune-results`: (path, filename shown to clients).
    pub result_files: Vec<(PathBuf, String)>,
}

/// Something a trainer reports while it runs.
#[derive(Debug, Clone)]
pub enum TrainerUpdate {
    /// Append an event to the job.
    Event(NewEvent),
    /// `auto` hyperparameters resolved: the job's `hyperparameters` become this object.
    Resolved(serde_json::Value),
    /// Seconds left, estimated.
    Estimate(f64),
    /// A checkpoint was written at `step` into `dir`, with these metrics.
    Checkpoint {
        /// Optimizer step.
        step: u64,
        /// PEFT directory.
        dir: PathBuf,
        /// Metrics object.
        metrics: serde_json::Value,
    },
    /// The checkpoint of `step` was deleted.
    Pruned(u64),
}

/// Why training did not finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// No training engine is available in this server.
    #[error("{0}")]
    Unavailable(String),
    /// The stop signal was honoured (pause or cancel).
    #[error("training stopped on request")]
    Stopped,
    /// Training failed; `code` is shown on the job.
    #[error("{message}")]
    Failed {
        /// Machine-readable code.
        code: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// The channel a trainer reports through.
#[derive(Debug, Clone)]
pub struct Progress {
    tx: UnboundedSender<TrainerUpdate>,
}

impl Progress {
    /// Wrap the worker's channel.
    pub fn new(tx: UnboundedSender<TrainerUpdate>) -> Self {
        Self { tx }
    }

    /// Report an update (dropped if the job is no longer being watched).
    pub fn send(&self, update: TrainerUpdate) {
        let _ = self.tx.send(update);
    }

    /// Append an event to the job.
    pub fn event(&self, event: NewEvent) {
        self.send(TrainerUpdate::Event(event));
    }
}

/// Cancelled when the trainer should stop at the next step boundary.
pub type StopSignal = CancellationToken;

/// A training engine. `train` runs on a blocking thread and must poll `stop` between steps.
pub trait Trainer: Send + Sync + 'static {
    /// Train one job to completion, or until `stop` is cancelled.
    fn train(
        &self,
        request: TrainingRequest,
        progress: &Progress,
        stop: &StopSignal,
    ) -> Result<TrainingOutcome, TrainerError>;
}

/// The trainer of a server built without a training engine: every job fails with a clear error.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unavailable;

impl Trainer for Unavailable {
    fn train(
        &self,
        _request: TrainingRequest,
        _progress: &Progress,
        _stop: &StopSignal,
    ) -> Result<TrainingOutcome, TrainerError> {
        Err(TrainerError::Unavailable(
            "Training is not available yet: this ferrotune build has no training engine, so the \
             job cannot be trained"
                .to_owned(),
        ))
    }
}
