//! Llama-family decoder models for training and their frozen weights. The model directory
//! itself (`config.json`, weight files) is read by [`crate::model_dir`].

mod layers;
mod llama;
mod rope;

pub use crate::model_dir::{Arch, Config};
pub use layers::DropoutMasks;
pub use llama::{CausalLm, ForwardCtx, KvCache, LayerInputs};

use std::collections::HashMap;
use std::path::Path;

use super::{TensorContext, TrainError};
use candle_core::{DType, Device, Tensor};

/// Frozen weights by checkpoint name.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Load `model.safetensors` or every shard named in `model.safetensors.index.json`, cast to
    /// `dtype` on `device`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, TrainError> {
        let files = crate::model_dir::weight_files(dir)?;
        let mut tensors = HashMap::new();
        for file in files {
            for (name, t) in candle_core::safetensors::load(&file, device).ctx("loading weights")? {
                tensors.insert(name, t.to_dtype(dtype).ctx("casting weights")?);
            }
        }
        Ok(Self { tensors })
    }

    /// Wrap tensors already in memory.
    pub fn from_map(tensors: HashMap<String, Tensor>) -> Self {
        Self { tensors }
    }

    /// A required tensor.
    pub fn get(&self, name: &str) -> Result<Tensor, TrainError> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| TrainError::Invalid(format!("weight '{name}' is missing")))
    }

    /// An optional tensor.
    pub fn maybe(&self, name: &str) -> Option<Tensor> {
        self.tensors.get(name).cloned()
    }
}
