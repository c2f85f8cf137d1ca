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
use std::sync::Arc;

use super::{TensorContext, TrainError};
use crate::model_dir::quant::{QuantizedWeight, Storage, block_kind};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use layers::FrozenWeight;

/// Frozen weights by checkpoint name: dense, or (QLoRA) quantized projections.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    quantized: HashMap<String, QuantizedWeight>,
}

impl Weights {
    /// Load `model.safetensors` or every shard named in `model.safetensors.index.json`, cast to
    /// `dtype` on `device`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, TrainError> {
        Self::load_stored(dir, device, dtype, Storage::Dense)
    }

    /// [`Self::load`], with the seven projections' weights stored as `storage` says — quantized
    /// tensor by tensor as they are read from the memory-mapped files (so no dense copy of the
    /// whole model is ever held), or taken from the directory's stored GGUF blocks. Projections
    /// whose rows no block of the format divides stay dense.
    pub fn load_stored(
        dir: &Path,
        device: &Device,
        dtype: DType,
        storage: Storage,
    ) -> Result<Self, TrainError> {
        let mut quantized: HashMap<String, QuantizedWeight> = HashMap::new();
        if storage == Storage::StoredBlocks {
            let stored = crate::model_dir::stored_blocks::read(dir, device)
                .ctx("reading the stored GGUF blocks")?;
            for (name, q) in stored {
                quantized.insert(name, QuantizedWeight::Ggml(Arc::new(q)));
            }
        }
        let files = crate::model_dir::weight_files(dir)?;
        // SAFETY: the mapped weight files are only read, and ferrotune never writes into a model
        // directory it loads; a file changed underneath by another program is outside what any
        // mmap-based loader (candle's, transformers') can guard against.
        let st = unsafe { MmapedSafetensors::multi(&files) }.ctx("mapping the weight files")?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if quantized.contains_key(&name) {
                continue;
            }
            let row = view.shape().last().copied().unwrap_or(0);
            let kind = match storage {
                Storage::Quantize(how) => block_kind(&name, row, how),
                _ => None,
            };
            match kind {
                Some(how) => {
                    let t = st
                        .load(&name, &Device::Cpu)
                        .and_then(|t| QuantizedWeight::quantize(&t, how, device))
                        .ctx("quantizing a frozen weight")?;
                    quantized.insert(name, t);
                }
                None => {
                    let t = st.load(&name, device).ctx("loading weights")?;
                    tensors.insert(name, t.to_dtype(dtype).ctx("casting weights")?);
                }
            }
        }
        Ok(Self { tensors, quantized })
    }

    /// The quantized projections: how many, in which formats, and in how many MiB — e.g.
    /// `210 projections in q4_1, 63.3 MiB`; `None` when all are dense.
    pub fn quantized_summary(&self) -> Option<String> {
        if self.quantized.is_empty() {
            return None;
        }
        let mut kinds: Vec<String> = self.quantized.values().map(|q| q.format()).collect();
        kinds.sort();
        kinds.dedup();
        let bytes: usize = self.quantized.values().map(|q| q.storage_bytes()).sum();
        Some(format!(
            "{} projections in {}, {:.1} MiB",
            self.quantized.len(),
            kinds.join(" + "),
            bytes as f64 / (1u64 << 20) as f64
        ))
    }

    /// Wrap tensors already in memory.
    pub fn from_map(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors,
            quantized: HashMap::new(),
        }
    }

    /// A required tensor.
    pub fn get(&self, name: &str) -> Result<Tensor, TrainError> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| TrainError::Invalid(format!("weight '{name}' is missing")))
    }

    /// A required projection weight, as stored.
    pub(crate) fn frozen(&self, name: &str) -> Result<FrozenWeight, TrainError> {
        match self.quantized.get(name) {
            Some(q) => Ok(FrozenWeight::Quantized(q.clone())),
            None => self.get(name).map(FrozenWeight::Dense),
        }
    }

    /// An optional tensor.
    pub fn maybe(&self, name: &str) -> Option<Tensor> {
        self.tensors.get(name).cloned()
    }
}
