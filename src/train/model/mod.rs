//! Llama-family decoder models for training: the Hugging Face `config.json`, weight loading
//! (single file or shards), and the architectures we accept.

mod layers;
mod llama;
mod rope;

pub use layers::DropoutMasks;
pub use llama::{CausalLm, ForwardCtx, LayerInputs};

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{TensorContext, TrainError, io_err};

/// The architectures we can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `LlamaForCausalLM`.
    Llama,
    /// `MistralForCausalLM` (trained without a sliding window: sequences are short).
    Mistral,
    /// `Qwen2ForCausalLM` (q/k/v biases).
    Qwen2,
}

/// `config.json`, fields named as Hugging Face names them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// One of `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`.
    pub architectures: Vec<String>,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to hidden / heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Vocabulary rows.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (`llama3`, `linear`).
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// transformers ≥ 5 keeps theta and scaling here instead.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Longest position.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's optional q/k/v/o biases.
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Must be `silu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_act() -> String {
    "silu".to_owned()
}

impl Config {
    /// Read and check `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
        cfg.arch()?;
        if cfg.hidden_act != "silu" {
            return Err(TrainError::Invalid(format!(
                "hidden_act '{}' is not supported (only silu)",
                cfg.hidden_act
            )));
        }
        Ok(cfg)
    }

    /// The architecture named in `architectures`.
    pub fn arch(&self) -> Result<Arch, TrainError> {
        match self.architectures.first().map(String::as_str) {
            Some("LlamaForCausalLM") => Ok(Arch::Llama),
            Some("MistralForCausalLM") => Ok(Arch::Mistral),
            Some("Qwen2ForCausalLM") => Ok(Arch::Qwen2),
            other => Err(TrainError::Invalid(format!(
                "architecture {other:?} is not supported; expected LlamaForCausalLM, \
                 MistralForCausalLM or Qwen2ForCausalLM"
            ))),
        }
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Whether q/k/v projections carry biases.
    pub fn qkv_bias(&self) -> bool {
        matches!(self.arch(), Ok(Arch::Qwen2)) || self.attention_bias.unwrap_or(false)
    }

    /// RoPE base, wherever the config keeps it.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(10_000.0)
    }

    /// RoPE scaling, wherever the config keeps it (`None` for the default rope).
    pub fn rope_scaling(&self) -> Option<&Value> {
        let scaling = self
            .rope_scaling
            .as_ref()
            .or(self.rope_parameters.as_ref())?;
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(Value::as_str);
        (kind.is_some_and(|k| k != "default")).then_some(scaling)
    }
}

/// Frozen weights by checkpoint name.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Load `model.safetensors` or every shard named in `model.safetensors.index.json`, cast to
    /// `dtype` on `device`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, TrainError> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<std::path::PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
            let parsed: Value = serde_json::from_str(&text)
                .map_err(|e| TrainError::Invalid(format!("{}: {e}", index.display())))?;
            let mut shards: Vec<String> = parsed["weight_map"]
                .as_object()
                .ok_or_else(|| TrainError::Invalid("index has no weight_map".into()))?
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut tensors = HashMap::new();
        for file in files {
            if !file.exists() {
                return Err(TrainError::Invalid(format!(
                    "missing weights file {}",
                    file.display()
                )));
            }
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
