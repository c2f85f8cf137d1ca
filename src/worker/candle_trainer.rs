//! The candle LoRA trainer behind the worker's [`Trainer`] interface: maps job requests to
//! [`crate::train::run`] and its updates to job events, checkpoints and estimates.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device};
use serde_json::json;

use super::trainer::{
    Progress, StopSignal, Trainer, TrainerError, TrainerUpdate, TrainingOutcome, TrainingRequest,
};
use crate::store::NewEvent;
use crate::train::TrainError;
use crate::train::run::{self, MetricsRow, RunConfig, RunEnd, Update};

/// Trains jobs on the base models it knows, on one device.
pub struct CandleTrainer {
    models: HashMap<String, PathBuf>,
    device: Device,
    dtype: DType,
}

impl CandleTrainer {
    /// A trainer for `models` (name → Hugging Face directory).
    pub fn new(models: HashMap<String, PathBuf>, device: Device, dtype: DType) -> Self {
        Self {
            models,
            device,
            dtype,
        }
    }
}

/// The metrics object of events and checkpoints (OpenAI's keys).
pub fn metrics_json(row: &MetricsRow, total_steps: Option<usize>) -> serde_json::Value {
    let mut m = json!({
        "step": row.step,
        "train_loss": row.train_loss,
        "train_mean_token_accuracy": row.train_accuracy,
    });
    if let Some(t) = total_steps {
        m["total_steps"] = json!(t);
    }
    if let Some(bytes) = row.peak_gpu_memory_bytes {
        m["peak_gpu_memory_bytes"] = json!(bytes);
    }
    if let (Some(l), Some(a)) = (row.valid_loss, row.valid_accuracy) {
        m["valid_loss"] = json!(l);
        m["valid_mean_token_accuracy"] = json!(a);
    }
    m
}

fn forward(progress: &Progress, update: Update) {
    let sent = match update {
        Update::Resolved(hp) => TrainerUpdate::Resolved(hp.to_json()),
        Update::Message(text) => TrainerUpdate::Event(NewEvent::info(text)),
        Update::Metrics { row, total_steps } => {
            let mut message = format!(
                "Step {}/{total_steps}: training loss={:.4}",
                row.step, row.train_loss
            );
            if let Some(v) = row.valid_loss {
                message.push_str(&format!(", validation loss={v:.4}"));
            }
            TrainerUpdate::Event(NewEvent::metrics(
                message,
                metrics_json(&row, Some(total_steps)),
            ))
        }
        Update::Estimate(secs) => TrainerUpdate::Estimate(secs),
        Update::Step { .. } => return,
        Update::Checkpoint { step, dir, metrics } => TrainerUpdate::Checkpoint {
            step: step as u64,
            dir,
            metrics: metrics_json(&metrics, None),
        },
        Update::Pruned(step) => TrainerUpdate::Pruned(step as u64),
    };
    progress.send(sent);
}

impl Trainer for CandleTrainer {
    fn train(
        &self,
        request: TrainingRequest,
        progress: &Progress,
        stop: &StopSignal,
    ) -> Result<TrainingOutcome, TrainerError> {
        let Some(dir) = self.models.get(&request.model) else {
            return Err(TrainerError::Failed {
                code: "model_not_available",
                message: format!("No model directory is configured for '{}'", request.model),
            });
        };
        let cfg = RunConfig {
            model_dir: dir.clone(),
            base_model_name: request.model.clone(),
            train_file: request.training_file,
            valid_file: request.validation_file,
            valid_split: None,
            template: None,
            hyperparameters: request.hyperparameters,
            seed: request.seed as u64,
            output_dir: request.output_dir,
            device: self.device.clone(),
            dtype: self.dtype,
        };
        let end = run::train(&cfg, &|| stop.is_cancelled(), &mut |u| forward(progress, u));
        match end {
            Ok(RunEnd::Finished(out)) => Ok(TrainingOutcome {
                trained_tokens: i64::try_from(out.trained_tokens).unwrap_or(i64::MAX),
                adapter_dir: out.adapter_dir,
                result_files: vec![
                    (out.metrics_csv, "step_metrics.csv".to_owned()),
                    (out.loss_svg, "loss.svg".to_owned()),
                    (out.adapter_archive, "adapter.tar.gz".to_owned()),
                ],
            }),
            Ok(RunEnd::Stopped { .. }) => Err(TrainerError::Stopped),
            Err(e @ TrainError::NonFiniteLoss { .. }) => Err(TrainerError::Failed {
                code: "training_diverged",
                message: e.to_string(),
            }),
            Err(e @ TrainError::Invalid(_)) => Err(TrainerError::Failed {
                code: "invalid_training_data",
                message: e.to_string(),
            }),
            Err(e) => Err(TrainerError::Failed {
                code: "training_failed",
                message: e.to_string(),
            }),
        }
    }
}
