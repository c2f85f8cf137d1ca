//! LoRA supervised fine-tuning with candle. Knows nothing of HTTP or SQL: the worker drives it
//! through [`run::train`] and hears back through a callback.
//!
//! - [`model`]: Llama-family decoders (Llama, Mistral, Qwen2) with LoRA, written with
//!   differentiable ops only (candle's fused rms_norm/softmax/rope have no backward).
//! - [`lora`]: the adapter layer and the set of trainable tensors, saved in PEFT format.
//! - [`tiny`]: `model init-tiny`, a deterministic tiny model in Hugging Face layout.
//! - [`data`]: label masks, truncation, batches (chat templates are [`crate::model_dir::template`]).
//! - [`ops`]: softmax and log-softmax that keep only their output for the backward pass.
//! - [`optim`]: AdamW, gradient clipping, learning-rate schedules.
//! - [`step`]: one micro-batch's forward and backward, optionally with gradient checkpointing.
//! - [`run`]: the training loop, metrics, checkpoints, pause/resume state.
//! - [`metrics`]: one step's metrics and their wire forms (event JSON, result CSV).
//! - [`tensor_file`]: safetensors files written atomically with PEFT's metadata.
//! - [`report`]: the loss-curve SVG.
//! - [`generate`]: greedy decoding with a KV cache.
//! - [`eval`]: base vs fine-tuned answers to the validation prompts, scored with
//!   [`crate::domain::scores`], `eval.jsonl`.

pub mod auto;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod eval;
pub mod fused;
pub mod generate;
pub mod gpu_memory;
pub mod lora;
pub mod loss;
pub mod lr_find;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod preference;
pub mod report;
pub mod rng;
pub mod run;
pub mod step;
pub mod tensor_file;
pub mod tiny;

/// A failure in training, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Tensor math failed (shape, device, out of memory).
    #[error("tensor error while {context}: {source}")]
    Tensor {
        /// What the trainer was doing.
        context: &'static str,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The model directory or data is not usable.
    #[error("{0}")]
    Invalid(String),
    /// The base model directory cannot be used.
    #[error(transparent)]
    ModelDir(#[from] crate::model_dir::ModelDirError),
    /// The loss became NaN or infinite.
    #[error("the training loss became {loss} at step {step}; try a lower learning rate")]
    NonFiniteLoss {
        /// Optimizer step.
        step: usize,
        /// The loss value.
        loss: f32,
    },
}

/// Attach context to candle errors.
pub(crate) trait TensorContext<T> {
    /// Wrap with `context`.
    fn ctx(self, context: &'static str) -> Result<T, TrainError>;
}

impl<T> TensorContext<T> for candle_core::Result<T> {
    fn ctx(self, context: &'static str) -> Result<T, TrainError> {
        self.map_err(|source| TrainError::Tensor { context, source })
    }
}

/// Wrap an I/O error with its path.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    }
}
