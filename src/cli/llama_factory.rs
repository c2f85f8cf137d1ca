//! LLaMA-Factory's training config (the keys of its `examples/train_lora/*.yaml`), read from
//! JSON or YAML into a typed struct: synonyms are serde aliases, numbers may be quoted, and keys
//! we do not know are collected so that each one gets a warning.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, Visitor};
use serde_json::{Map, Number, Value};

/// The keys of a LLaMA-Factory config that `ferrotune train` reads. All are optional here; the
/// caller says which are required. Value ranges are checked by `Hyperparameters::apply`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LlamaFactoryConfig {
    /// Base model directory (relative to the config file).
    pub model_name_or_path: Option<String>,
    /// Training file (relative to `dataset_dir`, else to the config file).
    #[serde(alias = "data_path")]
    pub dataset: Option<String>,
    /// Validation file (relative like `dataset`).
    pub eval_dataset: Option<String>,
    /// Directory `dataset` is relative to.
    pub dataset_dir: Option<String>,
    /// Chat template name; `default` means the model's own.
    pub template: Option<String>,
    /// Must be `lora` when given.
    pub finetuning_type: Option<String>,
    /// `sft` (default) or `dpo`.
    pub stage: Option<String>,
    /// A PEFT adapter directory to continue training from (relative to the config file).
    pub adapter_name_or_path: Option<String>,
    /// DPO's β.
    #[serde(deserialize_with = "number")]
    pub pref_beta: Option<f64>,
    /// `sigmoid` (DPO), `ipo` or `simpo`.
    pub pref_loss: Option<String>,
    /// Weight of the SFT term on the chosen answers.
    #[serde(deserialize_with = "number")]
    pub pref_ftx: Option<f64>,
    /// SimPO's margin γ.
    #[serde(deserialize_with = "number")]
    pub simpo_gamma: Option<f64>,
    /// LoRA rank.
    #[serde(deserialize_with = "number")]
    pub lora_rank: Option<u32>,
    /// LoRA alpha.
    #[serde(deserialize_with = "number")]
    pub lora_alpha: Option<f64>,
    /// Dropout on the LoRA input.
    #[serde(deserialize_with = "number")]
    pub lora_dropout: Option<f64>,
    /// `"q_proj,v_proj"`, `"all"` or a list of module names, passed on as given.
    pub lora_target: Option<Value>,
    /// Absolute learning rate, or `find` (ours: a learning-rate range test picks it).
    #[serde(alias = "lr", deserialize_with = "learning_rate")]
    pub learning_rate: Option<LearningRate>,
    /// Epochs; a fraction is rounded up.
    #[serde(deserialize_with = "number")]
    pub num_train_epochs: Option<f64>,
    /// Examples per micro-batch.
    #[serde(deserialize_with = "number")]
    pub per_device_train_batch_size: Option<u32>,
    /// Micro-batches per optimizer step.
    #[serde(deserialize_with = "number")]
    pub gradient_accumulation_steps: Option<u32>,
    /// `cosine`, `linear` or `constant`.
    pub lr_scheduler_type: Option<String>,
    /// Fraction of steps spent warming up.
    #[serde(deserialize_with = "number")]
    pub warmup_ratio: Option<f64>,
    /// Source part of the cut-off length.
    #[serde(deserialize_with = "number")]
    pub max_source_length: Option<u32>,
    /// Target part of the cut-off length.
    #[serde(deserialize_with = "number")]
    pub max_target_length: Option<u32>,
    /// Cut-off length in tokens.
    #[serde(deserialize_with = "number")]
    pub cutoff_len: Option<u32>,
    /// Metrics every this many steps.
    #[serde(deserialize_with = "number")]
    pub logging_steps: Option<u32>,
    /// A checkpoint every this many steps.
    #[serde(deserialize_with = "number")]
    pub save_steps: Option<u32>,
    /// AdamW weight decay.
    #[serde(deserialize_with = "number")]
    pub weight_decay: Option<f64>,
    /// Gradient-norm clipping threshold.
    #[serde(deserialize_with = "number")]
    pub max_grad_norm: Option<f64>,
    /// Recompute each layer in the backward pass.
    #[serde(alias = "use_gradient_checkpointing")]
    pub gradient_checkpointing: Option<bool>,
    /// The inverse of `gradient_checkpointing` (LLaMA-Factory's own switch).
    pub disable_gradient_checkpointing: Option<bool>,
    /// Half precision (f16) on a GPU.
    pub fp16: Option<bool>,
    /// bfloat16 on a GPU (the default there); `false` trains in f32.
    pub bf16: Option<bool>,
    /// Held-out fraction (< 1) or count (≥ 1) of the training examples.
    #[serde(deserialize_with = "number")]
    pub val_size: Option<f64>,
    /// Answer the validation prompts at the end and score them (ROUGE, BLEU).
    pub predict_with_generate: Option<bool>,
    /// The fine-tuned model is the checkpoint with the lowest validation loss.
    pub load_best_model_at_end: Option<bool>,
    /// Stop after this many evaluations without a lower validation loss.
    #[serde(alias = "early_stopping_patience", deserialize_with = "number")]
    pub early_stopping_steps: Option<u32>,
    /// NEFTune's noise scale on the token embeddings.
    #[serde(deserialize_with = "number")]
    pub neftune_noise_alpha: Option<f64>,
    /// New tokens per answer in that evaluation.
    #[serde(deserialize_with = "number")]
    pub max_new_tokens: Option<u32>,
    /// QLoRA: store the frozen projections in 4 or 8 bits.
    #[serde(deserialize_with = "number")]
    pub quantization_bit: Option<u32>,
    /// `bitsandbytes` (LLaMA-Factory's default: then `quantization_type` says the format), or
    /// one of ours: `nf4`, `q4_k`, `q4_0`, `q8_0`.
    pub quantization_method: Option<String>,
    /// With bitsandbytes 4-bit: `nf4` (the default; `fp4` is not supported).
    pub quantization_type: Option<String>,
    /// NF4's double quantization of the block scales (default on).
    pub double_quantization: Option<bool>,
    /// Seed for init, shuffles and dropout.
    #[serde(deserialize_with = "number")]
    pub seed: Option<u64>,
    /// Where checkpoints and results go (relative to the config file).
    pub output_dir: Option<String>,
    /// `auto`, `cpu`, `cuda` or `cuda:N` (ours, not LLaMA-Factory's).
    pub device: Option<String>,
    /// Understood; training is all this command does.
    #[allow(dead_code)]
    pub do_train: Option<IgnoredAny>,
    /// Understood; the output directory is resumed from, never wiped.
    #[allow(dead_code)]
    pub overwrite_output_dir: Option<IgnoredAny>,
    /// Understood; there is no dataset cache.
    #[allow(dead_code)]
    pub overwrite_cache: Option<IgnoredAny>,
    /// Understood; the loss curve is always plotted.
    #[allow(dead_code)]
    pub plot_loss: Option<IgnoredAny>,
    /// Understood; metrics go to the output directory only.
    #[allow(dead_code)]
    pub report_to: Option<IgnoredAny>,
    /// Understood; every micro-batch is packed without attention across its examples.
    #[allow(dead_code)]
    pub neat_packing: Option<IgnoredAny>,
    /// `true` (examples concatenated up to `cutoff_len`, attending across each other) is not
    /// done: micro-batches are packed as with `neat_packing`, which is warned about.
    pub packing: Option<bool>,
    /// Every other key, in name order: each is warned about and ignored.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

impl LlamaFactoryConfig {
    /// Read `path` (JSON when it ends in `.json`, else YAML) and warn about each unknown key.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<Self>(&text).map_err(anyhow::Error::from)
        } else {
            serde_norway::from_str::<Self>(&text).map_err(anyhow::Error::from)
        };
        let cfg = parsed.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if cfg.packing == Some(true) {
            tracing::warn!(
                "packing: true is not supported; each micro-batch is packed without attention \
                 across examples instead (neat_packing)"
            );
        }
        for key in cfg.unknown.keys() {
            tracing::warn!("config key '{key}' is not supported and is ignored");
        }
        Ok(cfg)
    }

    /// Gradient checkpointing as asked: `gradient_checkpointing` (or its alias), else the
    /// inverse of `disable_gradient_checkpointing`.
    pub fn gradient_checkpointing(&self) -> Option<bool> {
        self.gradient_checkpointing
            .or(self.disable_gradient_checkpointing.map(|off| !off))
    }

    /// The hyperparameters object, in our names, for `Hyperparameters::apply`.
    pub fn hyperparameters(&self) -> Map<String, Value> {
        let mut hp = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                hp.insert(key.to_owned(), v);
            }
        };
        put("lora_rank", self.lora_rank.map(Value::from));
        put("pref_beta", self.pref_beta.map(Value::from));
        put("pref_loss", self.pref_loss.clone().map(Value::from));
        put("pref_ftx", self.pref_ftx.map(Value::from));
        put("simpo_gamma", self.simpo_gamma.map(Value::from));
        put("lora_alpha", self.lora_alpha.map(Value::from));
        put("lora_dropout", self.lora_dropout.map(Value::from));
        put("lora_target", self.lora_target.clone());
        put(
            "learning_rate",
            self.learning_rate.map(|lr| match lr {
                LearningRate::Value(v) => Value::from(v),
                LearningRate::Find => Value::from("find"),
            }),
        );
        put(
            "batch_size",
            self.per_device_train_batch_size.map(Value::from),
        );
        put(
            "gradient_accumulation_steps",
            self.gradient_accumulation_steps.map(Value::from),
        );
        put(
            "lr_scheduler_type",
            self.lr_scheduler_type.clone().map(Value::from),
        );
        put("warmup_ratio", self.warmup_ratio.map(Value::from));
        put("max_source_length", self.max_source_length.map(Value::from));
        put("max_target_length", self.max_target_length.map(Value::from));
        put("max_length", self.cutoff_len.map(Value::from));
        put("logging_steps", self.logging_steps.map(Value::from));
        put("save_steps", self.save_steps.map(Value::from));
        put("weight_decay", self.weight_decay.map(Value::from));
        put("max_grad_norm", self.max_grad_norm.map(Value::from));
        put(
            "gradient_checkpointing",
            self.gradient_checkpointing().map(Value::from),
        );
        put("validation_split", self.val_size.map(Value::from));
        put(
            "load_best_model_at_end",
            self.load_best_model_at_end.map(Value::from),
        );
        put(
            "early_stopping_patience",
            self.early_stopping_steps.map(Value::from),
        );
        put(
            "neftune_noise_alpha",
            self.neftune_noise_alpha.map(Value::from),
        );
        put(
            "predict_with_generate",
            self.predict_with_generate.map(Value::from),
        );
        put("eval_max_new_tokens", self.max_new_tokens.map(Value::from));
        put("quantization_bit", self.quantization_bit.map(Value::from));
        let method = self.quantization_format();
        put("quantization_method", method.clone().map(Value::from));
        // Only NF4 has double quantization; without a method, 4 bits default to it.
        let nf4 = match method.as_deref() {
            Some(m) => m == "nf4",
            None => self.quantization_bit.is_some_and(|b| b != 8),
        };
        if nf4 {
            put(
                "double_quantization",
                self.double_quantization.map(Value::from),
            );
        }
        let epochs = self.num_train_epochs.map(|e| e.ceil().max(1.0) as u64);
        put("n_epochs", epochs.map(Value::from));
        hp
    }
}

impl LlamaFactoryConfig {
    /// Our `quantization_method` for LLaMA-Factory's pair: bitsandbytes (its default) stands
    /// for its `quantization_type` in 4 bits and for our 8-bit default in 8.
    fn quantization_format(&self) -> Option<String> {
        match self.quantization_method.as_deref() {
            None | Some("bitsandbytes") if self.quantization_bit == Some(8) => None,
            None | Some("bitsandbytes") => self.quantization_type.clone(),
            Some(other) => Some(other.to_owned()),
        }
    }
}

/// `learning_rate`: a rate, or `find`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LearningRate {
    /// This rate.
    Value(f64),
    /// The rate a learning-rate range test finds.
    Find,
}

/// `find`, or what [`number`] reads.
fn learning_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LearningRate>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if s == "find" => Ok(Some(LearningRate::Find)),
        Value::Null => Ok(None),
        other => number::<_, f64>(other)
            .map(|v| v.map(LearningRate::Value))
            .map_err(|e| de::Error::custom(format!("learning_rate: {e}, or find"))),
    }
}

/// A number, or a string holding one (YAML configs sometimes quote `"1.0e-4"`), or null.
fn number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    // A visitor, so that errors are raised inside the format's deserializer and carry the key.
    d.deserialize_any(NumberVisitor(PhantomData))
}

struct NumberVisitor<T>(PhantomData<T>);

impl<T: DeserializeOwned> NumberVisitor<T> {
    fn convert<E: de::Error>(n: Number) -> Result<Option<T>, E> {
        T::deserialize(Value::Number(n))
            .map(Some)
            .map_err(E::custom)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for NumberVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a numeric string")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Self::convert(Number::from(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Self::convert(Number::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        match Number::from_f64(v) {
            Some(n) => Self::convert(n),
            None => Err(E::invalid_value(de::Unexpected::Float(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let t = v.trim();
        let n = t
            .parse::<u64>()
            .ok()
            .map(Number::from)
            .or_else(|| t.parse::<i64>().ok().map(Number::from))
            .or_else(|| t.parse::<f64>().ok().and_then(Number::from_f64));
        match n {
            Some(n) => Self::convert(n),
            None => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> LlamaFactoryConfig {
        serde_norway::from_str(text).unwrap()
    }

    #[test]
    fn synonyms_are_aliases() {
        let cfg = yaml("lr: 2.0e-4\ndata_path: d.json\nuse_gradient_checkpointing: false\n");
        assert_eq!(cfg.learning_rate, Some(LearningRate::Value(2e-4)));
        assert_eq!(cfg.dataset.as_deref(), Some("d.json"));
        assert_eq!(cfg.gradient_checkpointing(), Some(false));
        let off = yaml("disable_gradient_checkpointing: true\n");
        assert_eq!(off.gradient_checkpointing(), Some(false));
        assert!(cfg.unknown.is_empty() && off.unknown.is_empty());
    }

    #[test]
    fn quoted_numbers_parse_and_epochs_round_up() {
        let cfg = yaml("learning_rate: \"1.0e-4\"\nlora_rank: \"16\"\nnum_train_epochs: 2.5\n");
        let hp = cfg.hyperparameters();
        assert_eq!(hp["learning_rate"], Value::from(1e-4));
        assert_eq!(hp["lora_rank"], Value::from(16));
        assert_eq!(hp["n_epochs"], Value::from(3));
        let json: LlamaFactoryConfig = serde_json::from_str(r#"{"lr": "3e-5"}"#).unwrap();
        assert_eq!(json.learning_rate, Some(LearningRate::Value(3e-5)));
        let bad = serde_norway::from_str::<LlamaFactoryConfig>("learning_rate: fast\n");
        assert!(bad.unwrap_err().to_string().contains("learning_rate"));
        let find = yaml("learning_rate: find\n");
        assert_eq!(find.hyperparameters()["learning_rate"], Value::from("find"));
    }

    #[test]
    fn unknown_keys_are_collected_and_understood_ones_are_not() {
        let cfg = yaml(
            "mystery: 1\ndo_train: true\nreport_to: none\nplot_loss: true\n\
             deepspeed: {stage: 3}\nlora_target: [q_proj, v_proj]\n",
        );
        let unknown: Vec<&str> = cfg.unknown.keys().map(String::as_str).collect();
        assert_eq!(unknown, ["deepspeed", "mystery"]);
        let targets = cfg.hyperparameters()["lora_target"].clone();
        assert_eq!(targets, serde_json::json!(["q_proj", "v_proj"]));
    }

    #[test]
    fn bitsandbytes_quantization_maps_to_ours() {
        let method = |text: &str| {
            let hp = yaml(text).hyperparameters();
            (
                hp.get("quantization_method").cloned(),
                hp.get("double_quantization").cloned(),
            )
        };
        let s = |v: &str| Some(Value::from(v));
        // LLaMA-Factory's defaults: bitsandbytes, nf4, double quantization.
        let seed = "quantization_bit: 4\nquantization_method: bitsandbytes\n\
                    quantization_type: nf4\ndouble_quantization: false\n";
        assert_eq!(method(seed), (s("nf4"), Some(Value::from(false))));
        assert_eq!(method("quantization_bit: 4\n"), (None, None));
        assert_eq!(
            method("quantization_bit: 8\ndouble_quantization: true\n"),
            (None, None)
        );
        assert_eq!(
            method("quantization_bit: 4\nquantization_method: q4_k\ndouble_quantization: true\n"),
            (s("q4_k"), None)
        );
        // Formats we lack reach the API's validation, which names them.
        assert_eq!(
            method("quantization_bit: 4\nquantization_type: fp4\n").0,
            s("fp4")
        );
        assert_eq!(method("quantization_method: hqq\n").0, s("hqq"));
    }
}
