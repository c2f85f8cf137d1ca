//! A PEFT LoRA adapter's `adapter_config.json`: written beside every adapter the trainer saves,
//! read back to continue training, to check an external adapter, to serve one and to merge one.
//! One reader for all of them, so they agree on what an adapter is.

use std::path::Path;

use serde_json::{Value, json};

use crate::domain::hyperparameters::LORA_MODULES;

/// The config file's name in an adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file's name in an adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// What an adapter's config says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// Rank `r` (at least 1).
    pub rank: usize,
    /// `lora_alpha` as written (`None` when the file has none).
    pub lora_alpha: Option<f64>,
    /// `lora_dropout` (0 when absent).
    pub dropout: f64,
    /// `target_modules`, in the file's order.
    pub targets: Vec<String>,
    /// `base_model_name_or_path`, when set and not empty.
    pub base_model: Option<String>,
    /// `use_rslora`: the update is scaled by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

/// Why an adapter directory's config cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdapterConfigError {
    /// No readable `adapter_config.json`.
    #[error("adapter_config.json is missing")]
    Missing,
    /// Not JSON.
    #[error("adapter_config.json is not valid JSON: {0}")]
    NotJson(String),
    /// Another PEFT method.
    #[error("only LoRA adapters (peft_type LORA) are supported, not {0}")]
    NotLora(String),
    /// Weight-decomposed LoRA.
    #[error("DoRA adapters are not supported")]
    Dora,
    /// `r` absent or zero.
    #[error("adapter_config.json needs a rank r >= 1")]
    NoRank,
    /// `target_modules` absent or not names.
    #[error("adapter_config.json needs target_modules, a list of module names")]
    NoTargets,
}

impl AdapterConfig {
    /// Read and check `dir/adapter_config.json`.
    pub fn read(dir: &Path) -> Result<Self, AdapterConfigError> {
        let text = std::fs::read_to_string(dir.join(CONFIG_FILE))
            .map_err(|_| AdapterConfigError::Missing)?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| AdapterConfigError::NotJson(e.to_string()))?;
        Self::parse(&value)
    }

    /// Check a parsed config.
    pub fn parse(value: &Value) -> Result<Self, AdapterConfigError> {
        if let Some(kind) = value["peft_type"].as_str().filter(|t| *t != "LORA") {
            return Err(AdapterConfigError::NotLora(kind.to_owned()));
        }
        if value["use_dora"].as_bool() == Some(true) {
            return Err(AdapterConfigError::Dora);
        }
        let rank = value["r"]
            .as_u64()
            .filter(|r| *r >= 1)
            .ok_or(AdapterConfigError::NoRank)? as usize;
        let targets: Vec<String> = match &value["target_modules"] {
            Value::String(one) => vec![one.clone()],
            Value::Array(items) => items
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or(AdapterConfigError::NoTargets)?,
            _ => return Err(AdapterConfigError::NoTargets),
        };
        Ok(Self {
            rank,
            lora_alpha: value["lora_alpha"].as_f64(),
            dropout: value["lora_dropout"].as_f64().unwrap_or(0.0),
            targets,
            base_model: value["base_model_name_or_path"]
                .as_str()
                .filter(|b| !b.is_empty())
                .map(str::to_owned),
            use_rslora: value["use_rslora"].as_bool() == Some(true),
        })
    }

    /// `lora_alpha`, or the rank when the file has none (a scale of 1).
    pub fn alpha(&self) -> f64 {
        self.lora_alpha.unwrap_or(self.rank as f64)
    }

    /// The factor the update `B A x` is scaled by.
    pub fn scale(&self) -> f64 {
        let r = self.rank as f64;
        if self.use_rslora {
            self.alpha() / r.sqrt()
        } else {
            self.alpha() / r
        }
    }

    /// The targets in the order of [`LORA_MODULES`] (q, k, v, o, gate, up, down), unknown last.
    pub fn targets_in_module_order(&self) -> Vec<String> {
        let mut targets = self.targets.clone();
        targets.sort_by_key(|t| {
            LORA_MODULES
                .iter()
                .position(|m| m == t)
                .unwrap_or(usize::MAX)
        });
        targets
    }

    /// The targets that are not decoder projections this project trains and serves.
    pub fn unknown_targets(&self) -> Vec<&str> {
        self.targets
            .iter()
            .map(String::as_str)
            .filter(|m| !LORA_MODULES.contains(m))
            .collect()
    }

    /// Write `dir/adapter_config.json` as PEFT writes it for an inference-mode LoRA adapter.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.rank,
            "lora_alpha": self.alpha(),
            "lora_dropout": self.dropout,
            "target_modules": self.targets,
            "base_model_name_or_path": self.base_model.clone().unwrap_or_default(),
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "use_dora": false,
            "use_rslora": self.use_rslora,
            "revision": null,
        });
        let text = serde_json::to_string_pretty(&config).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(CONFIG_FILE), text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<AdapterConfig, AdapterConfigError> {
        AdapterConfig::parse(&v)
    }

    #[test]
    fn a_written_config_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AdapterConfig {
            rank: 8,
            lora_alpha: Some(32.0),
            dropout: 0.05,
            targets: vec!["q_proj".into(), "v_proj".into()],
            base_model: Some("smollm2-135m-instruct".into()),
            use_rslora: false,
        };
        cfg.write(dir.path()).unwrap();
        assert_eq!(AdapterConfig::read(dir.path()).unwrap(), cfg);
        assert_eq!(cfg.scale(), 4.0);
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            AdapterConfig::read(empty.path()).unwrap_err().to_string(),
            "adapter_config.json is missing"
        );
        let lora = |extra: Value| {
            let mut v = json!({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        assert_eq!(
            parse(lora(json!({"peft_type": "IA3"}))),
            Err(AdapterConfigError::NotLora("IA3".into()))
        );
        assert_eq!(
            parse(lora(json!({"use_dora": true}))),
            Err(AdapterConfigError::Dora)
        );
        assert_eq!(
            parse(lora(json!({"r": 0}))),
            Err(AdapterConfigError::NoRank)
        );
        assert_eq!(
            parse(lora(json!({"target_modules": [1]}))),
            Err(AdapterConfigError::NoTargets)
        );
        let one = parse(lora(
            json!({"target_modules": "o_proj", "use_rslora": true}),
        ))
        .unwrap();
        assert_eq!(one.targets, ["o_proj"]);
        assert_eq!(one.scale(), 4.0);
        assert_eq!(
            parse(json!({"r": 4, "target_modules": ["mlp"]}))
                .unwrap()
                .unknown_targets(),
            ["mlp"]
        );
    }
}
