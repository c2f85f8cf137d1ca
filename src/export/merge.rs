//! Folding a PEFT LoRA adapter into its base weights: `W' = W + s · B · A` for every adapted
//! module, with `s = lora_alpha / r` (or `lora_alpha / √r` for rsLoRA), computed in f32 — one
//! tensor at a time, as the writer asks for it, so an export holds one weight in memory and not
//! the model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::ExportError;
use crate::model_dir::adapter::{AdapterConfig, WEIGHTS_FILE};
use crate::model_dir::quant::Quantization;
use crate::model_dir::tensor_files::TensorFiles;

/// One adapted module's pair (f32, on the CPU).
struct LoraPair {
    a: Tensor,
    b: Tensor,
}

/// A base model's weights with an adapter merged in, read tensor by tensor.
pub struct MergedModel {
    base: TensorFiles,
    /// The quantization whose round trip the adapter trained on (QLoRA), if any.
    stored: Option<Quantization>,
    scale: f64,
    pairs: HashMap<String, LoraPair>,
}

fn tensor_err(name: &str) -> impl Fn(candle_core::Error) -> ExportError + '_ {
    move |e| ExportError::Input(format!("tensor {name}: {e}"))
}

impl MergedModel {
    /// The base model in `base` with the adapter in `adapter` (when given), checked to fit: every
    /// `lora_A` has its `lora_B`, adapts a weight the base has, and `B · A` has its shape.
    pub fn open(base: &Path, adapter: Option<&Path>) -> Result<Self, ExportError> {
        let files =
            crate::model_dir::weight_files(base).map_err(|e| ExportError::Input(e.to_string()))?;
        let base = TensorFiles::open(&files).map_err(|e| ExportError::Input(e.to_string()))?;
        let Some(dir) = adapter else {
            return Ok(Self {
                base,
                stored: None,
                scale: 0.0,
                pairs: HashMap::new(),
            });
        };
        // An adapter trained on a quantized base (QLoRA) merges into the weights it saw.
        let stored = crate::model_dir::quant::record::read(dir)
            .map_err(|e| ExportError::Input(e.to_string()))?;
        let scale = AdapterConfig::read(dir)
            .map(|config| config.scale())
            .map_err(|e| ExportError::Input(format!("{}: {e}", dir.display())))?;
        let file = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
            .map_err(|e| ExportError::Input(format!("{}: {e}", file.display())))?;
        let mut pairs = HashMap::new();
        for (name, a) in &tensors {
            let Some(module) = name.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let b_name = format!("{module}.lora_B.weight");
            let b = tensors.get(&b_name).ok_or_else(|| {
                ExportError::Input(format!("the adapter has {name} but no {b_name}"))
            })?;
            let base_name = format!(
                "{}.weight",
                module.strip_prefix("base_model.model.").unwrap_or(module)
            );
            let shape = base.shape(&base_name).ok_or_else(|| {
                ExportError::Input(format!(
                    "the adapter adapts {base_name}, which the base model does not have"
                ))
            })?;
            let (a, b) = (
                a.to_dtype(DType::F32).map_err(tensor_err(name))?,
                b.to_dtype(DType::F32).map_err(tensor_err(&b_name))?,
            );
            let update = [b.dims()[0], a.dims().last().copied().unwrap_or(0)];
            if b.dims().len() != 2 || a.dims().len() != 2 || update[..] != *shape {
                return Err(ExportError::Input(format!(
                    "the adapter's update of {base_name} has shape {update:?}, the weight \
                     {shape:?}: it was trained for another base model"
                )));
            }
            pairs.insert(base_name, LoraPair { a, b });
        }
        if pairs.is_empty() {
            return Err(ExportError::Input(format!(
                "{} holds no LoRA weights",
                file.display()
            )));
        }
        Ok(Self {
            base,
            stored,
            scale,
            pairs,
        })
    }

    /// Every weight's name and shape, by name.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.base.shapes()
    }

    /// Weight `name` in f32 with its update added.
    pub fn tensor(&self, name: &str) -> Result<Tensor, ExportError> {
        let t = self
            .base
            .read(name)
            .map_err(|e| ExportError::Input(e.to_string()))?;
        let t = match self.stored {
            Some(how) => crate::model_dir::quant::round_trip(name, &t, how),
            None => t.to_dtype(DType::F32),
        }
        .map_err(tensor_err(name))?;
        let Some(pair) = self.pairs.get(name) else {
            return Ok(t);
        };
        pair.b
            .matmul(&pair.a)
            .and_then(|d| d * self.scale)
            .and_then(|d| t + d)
            .map_err(tensor_err(name))
    }
}
