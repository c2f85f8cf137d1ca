//! The candle LoRA trainer behind the worker's [`Trainer`] interface: maps a job's request onto
//! [`crate::train::run`], forwards the run's updates unchanged, and turns its errors into the
//! job's error codes.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device};

use super::trainer::{
    Progress, StopSignal, Trainer, TrainingFailure, TrainingOutcome, TrainingRequest,
};
use crate::domain::hyperparameters::WorkerDevice;
use crate::domain::job::JobError;
use crate::train::TrainError;
use crate::train::run::{self, RunConfig, RunEnd, Stop};

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

/// The job's error for a training failure. I/O failures name no server path.
fn job_error(e: &TrainError) -> JobError {
    match e {
        TrainError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
            JobError::new(
                "storage_full",
                "The server's disk is full: the job's outputs could not be written",
            )
        }
        TrainError::Io { source, .. } => JobError::new(
            "training_failed",
            format!("Training failed reading or writing its files: {source}"),
        ),
        TrainError::NonFiniteLoss { .. } => JobError::new("training_diverged", e.to_string()),
        TrainError::Invalid(_) | TrainError::ModelDir(_) => {
            JobError::new("invalid_training_data", e.to_string())
        }
        TrainError::Tensor { .. } => JobError::new("training_failed", e.to_string()),
    }
}

impl Trainer for CandleTrainer {
    fn device(&self) -> WorkerDevice {
        if self.device.is_cuda() {
            WorkerDevice::Cuda
        } else {
            WorkerDevice::Cpu
        }
    }

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
            template: None,
            hyperparameters: request.hyperparameters,
            seed: request.seed as u64,
            output_dir: request.output_dir,
            device: self.device.clone(),
            dtype: self.dtype,
            init_adapter: request.init_adapter,
        };
        let stop_kind = || match (stop.is_cancelled(), stop.discards()) {
            (false, _) => None,
            (true, false) => Some(Stop::Pause),
            (true, true) => Some(Stop::Discard),
        };
        let end = run::train_until(&cfg, &stop_kind, &mut |u| progress.send(u));
        match end {
            Ok(RunEnd::Finished(out)) => {
                let mut result_files = vec![
                    (out.metrics_csv, "step_metrics.csv".to_owned()),
                    (out.loss_svg, "loss.svg".to_owned()),
                    (out.adapter_archive, "adapter.tar.gz".to_owned()),
                ];
                if let Some(e) = out.evaluation {
                    result_files.push((e.jsonl, "eval.jsonl".to_owned()));
                    result_files.push((e.summary_csv, "eval_summary.csv".to_owned()));
                }
                Ok(TrainingOutcome {
                    trained_tokens: i64::try_from(out.trained_tokens).unwrap_or(i64::MAX),
                    adapter_dir: out.adapter_dir,
                    result_files,
                    members: Vec::new(),
                })
            }
            Ok(RunEnd::Stopped { step }) => Err(TrainingFailure::Stopped { step }),
            Err(e) => Err(TrainingFailure::Failed(job_error(&e))),
        }
    }
}
