//! The candle LoRA trainer behind the worker's [`Trainer`] interface: maps a job's request onto
//! [`crate::train::run`], forwards the run's updates unchanged, and turns its errors into the
//! job's error codes.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device};

use super::trainer::{
    Progress, StopSignal, Trainer, TrainingFailure, TrainingOutcome, TrainingRequest,
};
use crate::domain::job::JobError;
use crate::train::TrainError;
use crate::train::run::{self, RunConfig, RunEnd};

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

/// The job error code of a training failure.
fn error_code(e: &TrainError) -> &'static str {
    match e {
        TrainError::NonFiniteLoss { .. } => "training_diverged",
        TrainError::Invalid(_) | TrainError::ModelDir(_) => "invalid_training_data",
        _ => "training_failed",
    }
}

impl Trainer for CandleTrainer {
    fn train(
        &self,
        request: TrainingRequest,
        progress: &Progress,
        stop: &StopSignal,
    ) -> Result<TrainingOutcome, TrainingFailure> {
        let Some(dir) = self.models.get(&request.model) else {
            return Err(TrainingFailure::Failed(JobError::new(
                "model_not_available",
                format!("No model directory is configured for '{}'", request.model),
            )));
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
        let end = run::train(&cfg, &|| stop.is_cancelled(), &mut |u| progress.send(u));
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
            Ok(RunEnd::Stopped { step }) => Err(TrainingFailure::Stopped { step }),
            Err(e) => Err(TrainingFailure::Failed(JobError::new(
                error_code(&e),
                e.to_string(),
            ))),
        }
    }
}
