//! Checking an externally trained PEFT adapter before serving it: confined to the adapter root,
//! complete, LoRA on modules we serve, trained for this base model, with shapes that fit it.

use std::path::{Path, PathBuf};

use super::ServeError;
use crate::domain::hyperparameters::LORA_MODULES;
use crate::model_dir::Config;
use crate::model_dir::adapter::{AdapterConfig, CONFIG_FILE, WEIGHTS_FILE};

/// A directory that passed every check.
#[derive(Debug, Clone)]
pub struct CheckedAdapter {
    /// Canonical adapter directory.
    pub dir: PathBuf,
}

/// Check `path` (inside `root`) as an adapter for the base model `base_dir` named `base_name`.
/// The error ([`ServeError::Invalid`]) is the reason, for a 400.
pub fn check_adapter(
    root: &Path,
    path: &str,
    base_dir: &Path,
    base_name: &str,
) -> Result<CheckedAdapter, ServeError> {
    let root = root
        .canonicalize()
        .map_err(|e| ServeError::Invalid(format!("the adapter root is not usable: {e}")))?;
    let candidate = if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        root.join(path)
    };
    let dir = candidate
        .canonicalize()
        .map_err(|_| ServeError::Invalid(format!("lora_path '{path}' does not exist")))?;
    if !dir.starts_with(&root) {
        return Err(ServeError::Invalid(format!(
            "lora_path '{path}' is outside the adapter root"
        )));
    }
    if !dir.is_dir() {
        return Err(ServeError::Invalid(format!(
            "lora_path '{path}' is not a directory"
        )));
    }
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        // A file may itself be a symlink: what it resolves to must stay inside the root too.
        if let Ok(real) = dir.join(file).canonicalize()
            && !real.starts_with(&root)
        {
            return Err(ServeError::Invalid(format!(
                "{file} in lora_path '{path}' links outside the adapter root"
            )));
        }
    }
    let config = AdapterConfig::read(&dir).map_err(|e| ServeError::Invalid(e.to_string()))?;
    let unknown = config.unknown_targets();
    if config.targets.is_empty() || !unknown.is_empty() {
        return Err(ServeError::Invalid(format!(
            "target modules we cannot serve: {unknown:?}; supported: {}",
            LORA_MODULES.join(", ")
        )));
    }
    let (rank, modules) = (config.rank, &config.targets);
    if let Some(base) = &config.base_model {
        let dir_name = base_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let matches = base == base_name
            || Path::new(base) == base_dir
            || Path::new(base).file_name().and_then(|n| n.to_str()) == Some(dir_name);
        if !matches {
            return Err(ServeError::Invalid(format!(
                "the adapter was trained for '{base}', but this server serves '{base_name}'"
            )));
        }
    }
    check_shapes(&dir, rank, modules, base_dir)?;
    Ok(CheckedAdapter { dir })
}

fn check_shapes(
    dir: &Path,
    rank: usize,
    modules: &[String],
    base_dir: &Path,
) -> Result<(), ServeError> {
    let file = dir.join(WEIGHTS_FILE);
    let tensors =
        candle_core::safetensors::load(&file, &candle_core::Device::Cpu).map_err(|_| {
            ServeError::Invalid("adapter_model.safetensors is missing or unreadable".to_owned())
        })?;
    let cfg = Config::load(base_dir).map_err(|e| ServeError::Invalid(e.to_string()))?;
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.kv_heads() * cfg.head_dim(),
    );
    for (name, t) in &tensors {
        let Some(module) = modules
            .iter()
            .find(|m| name.contains(&format!(".{m}.lora_")))
        else {
            return Err(ServeError::Invalid(format!(
                "tensor '{name}' does not belong to a target module"
            )));
        };
        let (out_dim, in_dim) = match module.as_str() {
            "q_proj" => (q, h),
            "k_proj" | "v_proj" => (kv, h),
            "o_proj" => (h, q),
            "gate_proj" | "up_proj" => (i, h),
            _ => (h, i),
        };
        let want = if name.ends_with("lora_A.weight") {
            [rank, in_dim]
        } else {
            [out_dim, rank]
        };
        if t.dims() != want {
            return Err(ServeError::Invalid(format!(
                "tensor '{name}' has shape {:?}, but rank {rank} on this base needs {want:?}",
                t.dims()
            )));
        }
    }
    if tensors.is_empty() {
        return Err(ServeError::Invalid(
            "adapter_model.safetensors holds no tensors".to_owned(),
        ));
    }
    Ok(())
}
