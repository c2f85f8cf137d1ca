//! A Hugging Face model directory: `config.json` (the architectures we accept), the weight files
//! (one `model.safetensors` or the shards of `model.safetensors.index.json`) and the tokenizer
//! files. Shared by the trainer and the serving engine; reads files, holds no tensors.

pub mod adapter;
pub mod gguf;
pub mod lora_gguf;
pub mod quant;
mod spm;
pub mod stored_blocks;
pub mod template;
pub mod tensor_files;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `config.json`.
pub const CONFIG: &str = "config.json";
/// The tokenizer (Hugging Face `tokenizers` format).
pub const TOKENIZER: &str = "tokenizer.json";
/// Special tokens and the chat template.
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// Generation defaults (only bos/eos ids are used by the engine).
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// The shard index of a multi-file checkpoint.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";
/// The weights of a single-file checkpoint.
pub const SINGLE_WEIGHTS: &str = "model.safetensors";

/// Why a model directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file did not parse.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: String,
        /// serde's message.
        message: String,
    },
    /// The directory holds something we cannot train or serve.
    #[error("{0}")]
    Unsupported(String),
    /// Tensor math on the weights failed (reading, quantizing, writing).
    #[error("tensor error while {context}: {source}")]
    Tensor {
        /// What was being done.
        context: &'static str,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
}

/// Wrap an I/O error with its path.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelDirError + '_ {
    move |source| ModelDirError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ModelDirError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| ModelDirError::Json {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

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
    /// The stored weights' dtype (`float32`, `bfloat16`, …), when the config says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
}

fn default_act() -> String {
    "silu".to_owned()
}

impl Arch {
    /// llama.cpp's name for the architecture (`general.architecture` in GGUF).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama | Self::Mistral => "llama",
            Self::Qwen2 => "qwen2",
        }
    }
}

impl Config {
    /// Read and check `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelDirError> {
        let cfg: Self = read_json(&dir.join(CONFIG))?;
        cfg.arch()?;
        if cfg.hidden_act != "silu" {
            return Err(ModelDirError::Unsupported(format!(
                "hidden_act '{}' is not supported (only silu)",
                cfg.hidden_act
            )));
        }
        Ok(cfg)
    }

    /// The architecture named in `architectures`.
    pub fn arch(&self) -> Result<Arch, ModelDirError> {
        match self.architectures.first().map(String::as_str) {
            Some("LlamaForCausalLM") => Ok(Arch::Llama),
            Some("MistralForCausalLM") => Ok(Arch::Mistral),
            Some("Qwen2ForCausalLM") => Ok(Arch::Qwen2),
            other => Err(ModelDirError::Unsupported(format!(
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

/// The weight files of `dir`: every shard named in the index (sorted, once each), else the single
/// `model.safetensors`. Files that do not exist are an error.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelDirError> {
    let index = dir.join(SHARD_INDEX);
    let files = if index.exists() {
        let parsed: Value = read_json(&index)?;
        let mut shards: Vec<String> = parsed["weight_map"]
            .as_object()
            .ok_or_else(|| {
                ModelDirError::Unsupported(format!("{} has no weight_map", index.display()))
            })?
            .values()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        shards.sort();
        shards.dedup();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        vec![dir.join(SINGLE_WEIGHTS)]
    };
    if let Some(missing) = files.iter().find(|f| !f.exists()) {
        return Err(ModelDirError::Unsupported(format!(
            "missing weights file {}",
            missing.display()
        )));
    }
    Ok(files)
}

/// `tokenizer_config.json` as JSON (an empty object when absent).
pub fn read_tokenizer_config(dir: &Path) -> Result<Value, ModelDirError> {
    let path = dir.join(TOKENIZER_CONFIG);
    if !path.exists() {
        return Ok(Value::Object(Default::default()));
    }
    read_json(&path)
}

/// `SIZE:MTIME_NANOS` of `file`: what changes when the file is replaced or rewritten.
pub fn file_stamp(file: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(file)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{}:{modified}", meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_listed_once_each_and_missing_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let index = r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}}"#;
        std::fs::write(dir.path().join(SHARD_INDEX), index).unwrap();
        std::fs::write(dir.path().join("m-1.safetensors"), b"").unwrap();
        let err = weight_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("m-2.safetensors"), "{err}");
        std::fs::write(dir.path().join("m-2.safetensors"), b"").unwrap();
        let files = weight_files(dir.path()).unwrap();
        assert_eq!(
            files,
            vec![
                dir.path().join("m-1.safetensors"),
                dir.path().join("m-2.safetensors")
            ]
        );
    }

    #[test]
    fn a_directory_without_an_index_uses_its_single_weights_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(weight_files(dir.path()).is_err());
        std::fs::write(dir.path().join(SINGLE_WEIGHTS), b"").unwrap();
        assert_eq!(
            weight_files(dir.path()).unwrap(),
            vec![dir.path().join(SINGLE_WEIGHTS)]
        );
    }
}
