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
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use layers::FrozenWeight;

/// Frozen weights by checkpoint name: dense, or (QLoRA) quantized projections.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    quantized: HashMap<String, Arc<QTensor>>,
}

impl Weights {
    /// Load `model.safetensors` or every shard named in `model.safetensors.index.json`, cast to
    /// `dtype` on `device`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, TrainError> {
        Self::load_quantized(dir, device, dtype, None)
    }

    /// [`Self::load`], storing the seven projections' weights as `quant` (QLoRA) as they are
    /// read — tensor by tensor from the memory-mapped files, so no dense copy of the whole model
    /// is ever held. q4_k rows that 256 does not divide take q5_0, as llama.cpp does; rows no
    /// candidate divides stay dense.
    pub fn load_quantized(
        dir: &Path,
        device: &Device,
        dtype: DType,
        quant: Option<GgmlDType>,
    ) -> Result<Self, TrainError> {
        let files = crate::model_dir::weight_files(dir)?;
        // SAFETY: the mapped weight files are only read, and ferrotune never writes into a model
        // directory it loads; a file changed underneath by another program is outside what any
        // mmap-based loader (candle's, transformers') can guard against.
        let st = unsafe { MmapedSafetensors::multi(&files) }.ctx("mapping the weight files")?;
        let mut tensors = HashMap::new();
        let mut quantized = HashMap::new();
        for (name, view) in st.tensors() {
            let row = view.shape().last().copied().unwrap_or(0);
            match quant.and_then(|q| block_kind(&name, row, q)) {
                Some(kind) => {
                    let t = st
                        .load(&name, &Device::Cpu)
                        .and_then(|t| t.to_dtype(DType::F32))
                        .and_then(|t| QTensor::quantize_onto(&t, kind, device))
                        .ctx("quantizing a frozen weight")?;
                    quantized.insert(name, Arc::new(t));
                }
                None => {
                    let t = st.load(&name, device).ctx("loading weights")?;
                    tensors.insert(name, t.to_dtype(dtype).ctx("casting weights")?);
                }
            }
        }
        Ok(Self { tensors, quantized })
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

/// The block kind a decoder projection's weight (`model.layers.N.*_proj.weight`) with rows of
/// `row` values takes under `quant`; `None` for other tensors and rows no candidate divides.
fn block_kind(name: &str, row: usize, quant: GgmlDType) -> Option<GgmlDType> {
    if !(name.starts_with("model.layers.") && name.ends_with("_proj.weight")) {
        return None;
    }
    let candidates = match quant {
        GgmlDType::Q4K => vec![GgmlDType::Q4K, GgmlDType::Q5_0],
        other => vec![other],
    };
    candidates
        .into_iter()
        .find(|k| row > 0 && row.is_multiple_of(k.block_size()))
}
