//! What a training run is given: the model, the data, the hyperparameters and where results go.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::domain::hyperparameters::Hyperparameters;

/// What to train.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Hugging Face model directory.
    pub model_dir: PathBuf,
    /// Name written as `base_model_name_or_path` in adapters.
    pub base_model_name: String,
    /// Training data (any accepted format).
    pub train_file: PathBuf,
    /// Validation data; without it, `hyperparameters.evaluation.validation_split` may hold some out.
    pub valid_file: Option<PathBuf>,
    /// A built-in template name; `None` uses the model's own.
    pub template: Option<String>,
    /// Hyperparameters (may contain `auto`).
    pub hyperparameters: Hyperparameters,
    /// Seed for init, shuffles and dropout.
    pub seed: u64,
    /// Where checkpoints, state and results go.
    pub output_dir: PathBuf,
    /// Compute device.
    pub device: Device,
    /// Compute dtype of the frozen weights (LoRA weights stay f32).
    pub dtype: DType,
    /// A PEFT adapter directory to start from (continued training); its rank, alpha and target
    /// modules replace the hyperparameters'.
    pub init_adapter: Option<PathBuf>,
}
