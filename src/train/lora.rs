//! LoRA (Hu et al., arXiv:2106.09685) as PEFT does it: `y = W x + (α/r) · B A dropout(x)`, with A
//! Kaiming-uniform and B zero at the start, so a fresh adapter leaves the model unchanged.
//! The adapter tensors are the only trainable variables; they are saved in PEFT's format.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::rng::{self, purpose};
use super::{TensorContext, TrainError, io_err};
use crate::model_dir::adapter::{AdapterConfig, CONFIG_FILE, WEIGHTS_FILE};

/// What to adapt and how.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank `r`.
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout probability on the adapter's input.
    pub dropout: f64,
    /// Module names (`q_proj`, …, `down_proj`).
    pub targets: Vec<String>,
}

impl LoraSpec {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The rank, alpha and target modules of the PEFT adapter in `dir` (its
    /// `adapter_config.json`), with `dropout` for further training.
    pub fn read_peft(dir: &Path, dropout: f64) -> Result<Self, TrainError> {
        let path = dir.join(CONFIG_FILE);
        let bad = |what: &str| TrainError::Invalid(format!("{}: {what}", path.display()));
        let cfg = AdapterConfig::read(dir).map_err(|e| bad(&e.to_string()))?;
        let alpha = cfg.lora_alpha.ok_or_else(|| bad("no lora_alpha"))?;
        Ok(Self {
            rank: cfg.rank,
            alpha,
            dropout,
            targets: cfg.targets_in_module_order(),
        })
    }
}

/// One adapted module's trainable pair.
#[derive(Debug, Clone)]
pub struct AdapterVars {
    /// Module path in the base model (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// `lora_A`, `[r, in]`.
    pub a: Var,
    /// `lora_B`, `[out, r]`.
    pub b: Var,
}

/// Every adapter of a model, in a fixed order.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    /// The adapters.
    pub adapters: Vec<AdapterVars>,
}

impl LoraSet {
    /// Create fresh adapter variables for `module` (A Kaiming-uniform from the seed, B zeros).
    pub fn create(
        &mut self,
        module: &str,
        (out_dim, in_dim): (usize, usize),
        rank: usize,
        seed: u64,
        device: &Device,
    ) -> Result<AdapterVars, TrainError> {
        let index = self.adapters.len() as u64;
        let bound = 1.0 / (in_dim as f32).sqrt();
        let mut g = rng::stream(seed, purpose::LORA_INIT, index);
        let a = Tensor::from_vec(
            rng::uniform(&mut g, rank * in_dim, -bound, bound),
            (rank, in_dim),
            device,
        )
        .ctx("initialising lora_A")?;
        let b = Tensor::zeros((out_dim, rank), DType::F32, device).ctx("initialising lora_B")?;
        let vars = AdapterVars {
            module: module.to_owned(),
            a: Var::from_tensor(&a).ctx("lora_A var")?,
            b: Var::from_tensor(&b).ctx("lora_B var")?,
        };
        self.adapters.push(vars.clone());
        Ok(vars)
    }

    /// Every trainable variable, A then B for each adapter.
    pub fn vars(&self) -> Vec<Var> {
        self.adapters
            .iter()
            .flat_map(|a| [a.a.clone(), a.b.clone()])
            .collect()
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// PEFT tensor names: `base_model.model.<module>.lora_A.weight` / `lora_B.weight`.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.adapters
            .iter()
            .flat_map(|a| {
                [
                    (
                        format!("base_model.model.{}.lora_A.weight", a.module),
                        a.a.as_tensor().clone(),
                    ),
                    (
                        format!("base_model.model.{}.lora_B.weight", a.module),
                        a.b.as_tensor().clone(),
                    ),
                ]
            })
            .collect()
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into `dir`.
    pub fn save_peft(
        &self,
        dir: &Path,
        spec: &LoraSpec,
        base_model: &str,
    ) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let config = AdapterConfig {
            rank: spec.rank,
            lora_alpha: Some(spec.alpha),
            dropout: spec.dropout,
            targets: spec.targets.clone(),
            base_model: Some(base_model.to_owned()),
            use_rslora: false,
        };
        config.write(dir).map_err(io_err(&dir.join(CONFIG_FILE)))?;
        let tensors: HashMap<String, Tensor> = self
            .named_tensors()
            .into_iter()
            .map(|(n, t)| t.to_dtype(DType::F32).map(|t| (n, t)))
            .collect::<candle_core::Result<_>>()
            .ctx("collecting adapter tensors")?;
        super::tensor_file::write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)
    }

    /// Overwrite the adapter values from a PEFT `adapter_model.safetensors`.
    pub fn load_peft(&self, file: &Path, device: &Device) -> Result<(), TrainError> {
        let tensors = candle_core::safetensors::load(file, device).ctx("reading an adapter")?;
        for (name, t) in self.named_tensors() {
            let src = tensors.get(&name).ok_or_else(|| {
                TrainError::Invalid(format!("adapter tensor '{name}' is missing"))
            })?;
            if src.dims() != t.dims() {
                return Err(TrainError::Invalid(format!(
                    "adapter tensor '{name}' has shape {:?}, expected {:?}",
                    src.dims(),
                    t.dims()
                )));
            }
        }
        for a in &self.adapters {
            let get = |suffix: &str| {
                tensors[&format!("base_model.model.{}.{suffix}", a.module)].to_dtype(DType::F32)
            };
            a.a.set(&get("lora_A.weight").ctx("adapter A")?)
                .ctx("setting lora_A")?;
            a.b.set(&get("lora_B.weight").ctx("adapter B")?)
                .ctx("setting lora_B")?;
        }
        Ok(())
    }
}
