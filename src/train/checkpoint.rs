//! The resumable training state (adapter, optimizer moments, step, metrics so far) written when a
//! run is paused or its worker shuts down.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::lora::LoraSet;
use super::metrics::MetricsRow;
use super::optim::AdamW;
use super::tensor_file::write_safetensors;
use super::{TensorContext, TrainError, io_err};

/// Where a paused run stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResumeState {
    /// Optimizer steps done.
    pub step: usize,
    /// Tokens trained on so far.
    pub trained_tokens: u64,
    /// Metrics logged so far.
    pub metrics: Vec<MetricsRow>,
    /// Checkpoint steps written so far.
    pub checkpoints: Vec<usize>,
    /// The evaluation with the lowest validation loss so far (its adapter is in `best/`).
    #[serde(default)]
    pub best: Option<Best>,
    /// Evaluations since `best` without a lower validation loss.
    #[serde(default)]
    pub evaluations_since_best: u32,
    /// Training stopped before the last step (early stopping).
    #[serde(default)]
    pub stopped_early: bool,
}

/// The best validation loss of a run and the step it was measured at.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Best {
    /// Optimizer step.
    pub step: usize,
    /// Validation loss there.
    pub valid_loss: f32,
}

const STATE_JSON: &str = "state.json";
const STATE_TENSORS: &str = "state.safetensors";

/// Save everything needed to continue exactly where training stopped.
pub fn save_state(
    dir: &Path,
    lora: &LoraSet,
    opt: &AdamW,
    state: &ResumeState,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut tensors: HashMap<String, Tensor> = lora.named_tensors().into_iter().collect();
    for (i, (m, v)) in opt.moments().iter().enumerate() {
        tensors.insert(format!("adam.m.{i}"), m.clone());
        tensors.insert(format!("adam.v.{i}"), v.clone());
    }
    write_safetensors(&dir.join(STATE_TENSORS), &tensors)?;
    let path = dir.join(STATE_JSON);
    let text = serde_json::to_string(state).map_err(|e| TrainError::Invalid(e.to_string()))?;
    // Written aside and renamed: a crash or a full disk never leaves a torn state behind.
    let tmp = path.with_extension("json.tmp");
    if let Err(e) = std::fs::write(&tmp, text) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&path)(e));
    }
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Restore a saved state into `lora` and `opt`; `None` when there is none.
pub fn load_state(
    dir: &Path,
    lora: &LoraSet,
    opt: &mut AdamW,
    device: &Device,
) -> Result<Option<ResumeState>, TrainError> {
    let path = dir.join(STATE_JSON);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let state: ResumeState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
    let file = dir.join(STATE_TENSORS);
    lora.load_peft(&file, device)?;
    let tensors = candle_core::safetensors::load(&file, device).ctx("reading optimizer state")?;
    let moments = (0..opt.moments().len())
        .map(|i| {
            let get = |k: String| {
                tensors
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| TrainError::Invalid(format!("optimizer state '{k}' is missing")))
            };
            Ok((get(format!("adam.m.{i}"))?, get(format!("adam.v.{i}"))?))
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    opt.restore(moments, state.step)?;
    Ok(Some(state))
}

/// Remove a saved state (after the run it belongs to finished).
pub fn clear_state(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(STATE_JSON));
    let _ = std::fs::remove_file(dir.join(STATE_TENSORS));
}
