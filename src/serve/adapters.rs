//! Checking an externally trained PEFT adapter before serving it: confined to the adapter root,
//! complete, LoRA on modules we serve, trained for this base model, with shapes that fit it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::domain::hyperparameters::LORA_MODULES;
use crate::model_dir::Config;

/// A directory that passed every check.
#[derive(Debug, Clone)]
pub struct CheckedAdapter {
    /// Canonical adapter directory.
    pub dir: PathBuf,
}

/// Check `path` (inside `root`) as an adapter for the base model `base_dir` named `base_name`.
/// The error is the reason, for a 400.
pub fn check_adapter(
    root: &Path,
    path: &str,
    base_dir: &Path,
    base_name: &str,
) -> Result<CheckedAdapter, String> {
    let root = root
        .canonicalize()
        .map_err(|e| format!("the adapter root is not usable: {e}"))?;
    let candidate = if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        root.join(path)
    };
    let dir = candidate
        .canonicalize()
        .map_err(|_| format!("lora_path '{path}' does not exist"))?;
    if !dir.starts_with(&root) {
        return Err(format!("lora_path '{path}' is outside the adapter root"));
    }
    if !dir.is_dir() {
        return Err(format!("lora_path '{path}' is not a directory"));
    }
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        // A file may itself be a symlink: what it resolves to must stay inside the root too.
        if let Ok(real) = dir.join(file).canonicalize()
            && !real.starts_with(&root)
        {
            return Err(format!(
                "{file} in lora_path '{path}' links outside the adapter root"
            ));
        }
    }
    let config_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|_| "adapter_config.json is missing".to_owned())?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| format!("adapter_config.json is not valid JSON: {e}"))?;
    if config
        .get("peft_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "LORA")
    {
        return Err("only LoRA adapters (peft_type LORA) can be served".to_owned());
    }
    if config.get("use_dora").and_then(Value::as_bool) == Some(true) {
        return Err("DoRA adapters cannot be served".to_owned());
    }
    let rank = config
        .get("r")
        .and_then(Value::as_u64)
        .filter(|r| *r >= 1)
        .ok_or("adapter_config.json needs a rank r >= 1")? as usize;
    let modules: Vec<String> = config
        .get("target_modules")
        .and_then(Value::as_array)
        .ok_or("target_modules must be a list")?
        .iter()
        .map(|m| {
            m.as_str()
                .map(str::to_owned)
                .ok_or("target_modules must be strings")
        })
        .collect::<Result<_, _>>()?;
    let unknown: Vec<&String> = modules
        .iter()
        .filter(|m| !LORA_MODULES.contains(&m.as_str()))
        .collect();
    if modules.is_empty() || !unknown.is_empty() {
        return Err(format!(
            "target modules we cannot serve: {unknown:?}; supported: {}",
            LORA_MODULES.join(", ")
        ));
    }
    if let Some(base) = config
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty())
    {
        let dir_name = base_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let matches = base == base_name
            || Path::new(base) == base_dir
            || Path::new(base).file_name().and_then(|n| n.to_str()) == Some(dir_name);
        if !matches {
            return Err(format!(
                "the adapter was trained for '{base}', but this server serves '{base_name}'"
            ));
        }
    }
    check_shapes(&dir, rank, &modules, base_dir)?;
    Ok(CheckedAdapter { dir })
}

fn check_shapes(
    dir: &Path,
    rank: usize,
    modules: &[String],
    base_dir: &Path,
) -> Result<(), String> {
    let file = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu)
        .map_err(|_| "adapter_model.safetensors is missing or unreadable".to_owned())?;
    let cfg = Config::load(base_dir).map_err(|e| e.to_string())?;
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
            return Err(format!(
                "tensor '{name}' does not belong to a target module"
            ));
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
            return Err(format!(
                "tensor '{name}' has shape {:?}, but rank {rank} on this base needs {want:?}",
                t.dims()
            ));
        }
    }
    if tensors.is_empty() {
        return Err("adapter_model.safetensors holds no tensors".to_owned());
    }
    Ok(())
}
