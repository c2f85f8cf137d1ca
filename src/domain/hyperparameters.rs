//! Training hyperparameters: OpenAI's three (each a number or `"auto"`) plus our LoRA knobs.
//!
//! Parsed from `method.supervised.hyperparameters` or the deprecated top-level `hyperparameters`;
//! every out-of-range value is rejected with the exact parameter path.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::DomainError;

/// A value the client may leave to the service with `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AutoOr<T> {
    /// Resolved by the trainer from the dataset size.
    Auto,
    /// Set by the client.
    Value(T),
}

impl<T: Serialize> Serialize for AutoOr<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Value(v) => v.serialize(s),
        }
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for AutoOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if s == "auto" => Ok(Self::Auto),
            other => serde_json::from_value(other)
                .map(Self::Value)
                .map_err(de::Error::custom),
        }
    }
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    /// Cosine decay to zero.
    Cosine,
    /// Linear decay to zero.
    Linear,
    /// Constant after warm-up.
    Constant,
}

/// The projection modules LoRA can target in Llama-family models.
pub const LORA_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The adapter's shape (flat on the wire: `lora_rank`, `lora_alpha`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    /// LoRA rank `r`.
    #[serde(rename = "lora_rank")]
    pub rank: u32,
    /// LoRA `alpha`; the update is scaled by `alpha / r`.
    #[serde(rename = "lora_alpha")]
    pub alpha: f64,
    /// Dropout on the LoRA input.
    #[serde(rename = "lora_dropout")]
    pub dropout: f64,
    /// Modules that get adapters.
    #[serde(rename = "lora_target")]
    pub target: Vec<String>,
}

/// The smallest training set that spares a validation split when none is asked for.
pub const AUTO_SPLIT_MIN: usize = 100;

/// Validation and the end-of-run evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationSettings {
    /// Without a validation file: hold out this fraction (< 1) or this many (≥ 1) of the
    /// training examples for validation (LLaMA-Factory's `val_size`); 0 holds out none. Unset,
    /// sets of [`AUTO_SPLIT_MIN`] examples or more spare 10 % (at most 50) for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_split: Option<f64>,
    /// At the end, answer every validation prompt with the base and the fine-tuned model and
    /// score the answers (ROUGE, BLEU) against the references.
    #[serde(default = "yes")]
    pub predict_with_generate: bool,
    /// New tokens per answer in that evaluation.
    #[serde(default = "default_eval_tokens")]
    pub eval_max_new_tokens: u32,
    /// Stop training when the validation loss has not improved for this many evaluations in a
    /// row (LLaMA-Factory's `early_stopping_steps`); `None`: train every epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping_patience: Option<u32>,
    /// The fine-tuned model is the checkpoint with the lowest validation loss rather than the
    /// last step (LLaMA-Factory's and the Trainer's `load_best_model_at_end`). `None`: on when
    /// there is validation data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_best_model_at_end: Option<bool>,
}

/// QLoRA: how the frozen projections are stored.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct QuantizationSettings {
    /// Store the frozen projections in 4 or 8 bits (LLaMA-Factory's `quantization_bit`).
    #[serde(
        rename = "quantization_bit",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bit: Option<u32>,
    /// The format of that storage (default: `nf4` for 4 bits, `q8_0` for 8).
    #[serde(
        rename = "quantization_method",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub method: Option<QuantizationMethod>,
    /// With `nf4`: store the block scales in 8 bits too (QLoRA's double quantization; default
    /// on, as in LLaMA-Factory).
    #[serde(
        rename = "double_quantization",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub double: Option<bool>,
}

/// Several adapters trained as one ensemble.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnsembleSettings {
    /// Train this many adapters (1–8), differing by seed, and serve them as one `vote` ensemble
    /// under the job's model name; each is also served as `{model}:member-N`.
    #[serde(rename = "ensemble_size", default = "one")]
    pub size: u32,
    /// With `ensemble_size` > 1: train each member on a bootstrap sample of the training
    /// examples (as many, drawn with replacement) instead of all of them.
    #[serde(rename = "ensemble_bootstrap", default)]
    pub bootstrap: bool,
}

/// Everything a supervised LoRA job is trained with: flat on the wire (and in the database),
/// grouped here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// Passes over the training set.
    pub n_epochs: AutoOr<u32>,
    /// Examples per micro-batch.
    pub batch_size: AutoOr<u32>,
    /// Multiplier on the default learning rate.
    pub learning_rate_multiplier: AutoOr<f64>,
    /// Absolute learning rate; wins over the multiplier when set.
    pub learning_rate: Option<f64>,
    /// `learning_rate: "find"`: a learning-rate range test before training picks the rate.
    #[serde(default, skip_serializing_if = "is_false")]
    pub find_learning_rate: bool,
    /// The adapter: rank, alpha, dropout, target modules.
    #[serde(flatten)]
    pub lora: LoraSettings,
    /// Schedule after warm-up.
    pub lr_scheduler_type: LrScheduler,
    /// Fraction of steps spent warming up.
    #[serde(default = "auto")]
    pub warmup_ratio: AutoOr<f64>,
    /// NEFTune: uniform noise of this scale (divided by √(length · hidden)) added to the token
    /// embeddings of training examples (LLaMA-Factory's `neftune_noise_alpha`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neftune_noise_alpha: Option<f64>,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: u32,
    /// Cut-off length in tokens.
    pub max_length: u32,
    /// Optional source/target split of `max_length` (LLaMA-Factory's knobs).
    pub max_source_length: Option<u32>,
    /// See `max_source_length`.
    pub max_target_length: Option<u32>,
    /// Emit a metrics event every this many optimizer steps.
    pub logging_steps: u32,
    /// Write a checkpoint every this many optimizer steps.
    pub save_steps: u32,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Gradient-norm clipping threshold (0 disables clipping).
    pub max_grad_norm: f64,
    /// Keep activations only between decoder layers and recompute each layer in the backward
    /// pass: less memory, about a third more compute. `None`: on when training on a GPU (as
    /// LLaMA-Factory does), off on the CPU.
    #[serde(default)]
    pub gradient_checkpointing: Option<bool>,
    /// Validation: the held-out split and the end-of-run generation evaluation.
    #[serde(flatten)]
    pub evaluation: EvaluationSettings,
    /// QLoRA storage of the frozen weights.
    #[serde(flatten)]
    pub quantization: QuantizationSettings,
    /// Several adapters trained as one ensemble.
    #[serde(flatten)]
    pub ensemble: EnsembleSettings,
    /// The fine-tuned model (`ft:…`) whose adapter this job continues from: set when a job is
    /// created with `model: "ft:…"` (the job's `model` is then that model's base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_model: Option<String>,
    /// The kind of device a worker needs to run this job (`cpu` or `cuda`); unset, any worker
    /// takes it. A job asking for `cuda` waits for a GPU worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<WorkerDevice>,
    /// Preference tuning (`method.type = "dpo"`): `None` for supervised jobs.
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub preference: Option<super::preference::PreferenceSettings>,
}

/// The kind of device a worker trains on, which it advertises when it claims jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerDevice {
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
}

impl WorkerDevice {
    /// `cpu` or `cuda`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// How QLoRA stores frozen weights: NF4 or a ggml block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuantizationMethod {
    /// QLoRA's NormalFloat-4, blocks of 64 with an absmax scale.
    #[serde(rename = "nf4")]
    Nf4,
    /// 4-bit blocks of 32 with one scale.
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 4-bit k-quants in super-blocks of 256.
    #[serde(rename = "q4_k")]
    Q4K,
    /// 8-bit blocks of 32.
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl QuantizationMethod {
    /// Bits per weight of the codes.
    pub fn bits(self) -> u32 {
        match self {
            Self::Nf4 | Self::Q4_0 | Self::Q4K => 4,
            Self::Q8_0 => 8,
        }
    }
}

impl Hyperparameters {
    /// The QLoRA storage asked for, if any: the method, or the default of the bit width.
    pub fn quantization(&self) -> Option<QuantizationMethod> {
        match (self.quantization.bit, self.quantization.method) {
            (_, Some(m)) => Some(m),
            (Some(8), None) => Some(QuantizationMethod::Q8_0),
            (Some(_), None) => Some(QuantizationMethod::Nf4),
            (None, None) => None,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !b
}

fn auto<T>() -> AutoOr<T> {
    AutoOr::Auto
}

fn one() -> u32 {
    1
}

fn default_eval_tokens() -> u32 {
    128
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Self {
            n_epochs: AutoOr::Auto,
            batch_size: AutoOr::Auto,
            learning_rate_multiplier: AutoOr::Auto,
            learning_rate: None,
            find_learning_rate: false,
            lora: LoraSettings {
                rank: 8,
                alpha: 32.0,
                dropout: 0.05,
                target: LORA_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            },
            lr_scheduler_type: LrScheduler::Cosine,
            warmup_ratio: AutoOr::Auto,
            neftune_noise_alpha: None,
            gradient_accumulation_steps: 1,
            max_length: 1024,
            max_source_length: None,
            max_target_length: None,
            logging_steps: 10,
            save_steps: 100,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            gradient_checkpointing: None,
            evaluation: EvaluationSettings {
                validation_split: None,
                predict_with_generate: true,
                eval_max_new_tokens: default_eval_tokens(),
                early_stopping_patience: None,
                load_best_model_at_end: None,
            },
            quantization: QuantizationSettings::default(),
            ensemble: EnsembleSettings {
                size: 1,
                bootstrap: false,
            },
            init_model: None,
            device: None,
            preference: None,
        }
    }
}

impl Hyperparameters {
    /// Apply the fields of a request object onto `self`; `prefix` names the object in errors.
    pub fn apply(mut self, object: &Value, prefix: &str) -> Result<Self, DomainError> {
        let Value::Object(map) = object else {
            return Err(DomainError::invalid(
                prefix,
                format!("{prefix} must be an object"),
            ));
        };
        let f = Fields { map, prefix };
        for key in map.keys() {
            match key.as_str() {
                "n_epochs" => self.n_epochs = f.auto_int(key, 1, 50)?,
                "batch_size" => self.batch_size = f.auto_int(key, 1, 256)?,
                "learning_rate_multiplier" => {
                    self.learning_rate_multiplier = match &map[key] {
                        Value::String(s) if s == "auto" => AutoOr::Auto,
                        _ => AutoOr::Value(f.float(key, 0.0, 100.0, false)?),
                    }
                }
                "learning_rate" => match &map[key] {
                    Value::String(s) if s == "find" => {
                        (self.learning_rate, self.find_learning_rate) = (None, true)
                    }
                    _ => {
                        let lr = f.float(key, 0.0, 1.0, false).map_err(|mut e| {
                            e.message = "learning_rate must be a number in (0, 1] or \"find\" (a \
                                         learning-rate range test picks it)"
                                .into();
                            e
                        })?;
                        (self.learning_rate, self.find_learning_rate) = (Some(lr), false)
                    }
                },
                "lora_rank" => self.lora.rank = f.int(key, 1, 1024)?,
                "lora_alpha" => self.lora.alpha = f.float(key, 0.0, 4096.0, false)?,
                "lora_dropout" => self.lora.dropout = f.float(key, 0.0, 1.0, true)?,
                "lora_target" => self.lora.target = f.modules(key)?,
                "lr_scheduler_type" => self.lr_scheduler_type = f.scheduler(key)?,
                "warmup_ratio" => {
                    self.warmup_ratio = match &map[key] {
                        Value::String(s) if s == "auto" => AutoOr::Auto,
                        _ => AutoOr::Value(f.float(key, 0.0, 1.0, true)?),
                    }
                }
                "neftune_noise_alpha" => {
                    self.neftune_noise_alpha = Some(f.float(key, 0.0, 100.0, false)?)
                }
                "early_stopping_patience" | "early_stopping_steps" => {
                    self.evaluation.early_stopping_patience = Some(f.int(key, 1, 10_000)?)
                }
                "load_best_model_at_end" | "load_best_at_end" => {
                    self.evaluation.load_best_model_at_end = Some(f.boolean(key)?)
                }
                "gradient_accumulation_steps" => {
                    self.gradient_accumulation_steps = f.int(key, 1, 1024)?
                }
                "max_length" => self.max_length = f.int(key, 16, 131_072)?,
                "max_source_length" => self.max_source_length = Some(f.int(key, 1, 131_072)?),
                "max_target_length" => self.max_target_length = Some(f.int(key, 1, 131_072)?),
                "logging_steps" => self.logging_steps = f.int(key, 1, 1_000_000)?,
                "save_steps" => self.save_steps = f.int(key, 1, 1_000_000)?,
                "weight_decay" => self.weight_decay = f.float(key, 0.0, 1.0, true)?,
                "max_grad_norm" => self.max_grad_norm = f.float(key, 0.0, 1.0e6, true)?,
                "gradient_checkpointing" => self.gradient_checkpointing = Some(f.boolean(key)?),
                "validation_split" => self.evaluation.validation_split = Some(f.split(key)?),
                "predict_with_generate" => {
                    self.evaluation.predict_with_generate = f.boolean(key)?
                }
                "eval_max_new_tokens" => {
                    self.evaluation.eval_max_new_tokens = f.int(key, 1, 4096)?
                }
                "quantization_bit" => {
                    let bits = f.int(key, 4, 8)?;
                    if bits != 4 && bits != 8 {
                        return Err(f.err(key, "quantization_bit must be 4 or 8".into()));
                    }
                    self.quantization.bit = Some(bits);
                }
                "quantization_method" => self.quantization.method = Some(f.method(key)?),
                "double_quantization" => self.quantization.double = Some(f.boolean(key)?),
                "ensemble_size" => {
                    self.ensemble.size =
                        f.int(key, 1, crate::domain::ensemble::MAX_MEMBERS as u32)?
                }
                "ensemble_bootstrap" => self.ensemble.bootstrap = f.boolean(key)?,
                "device" => {
                    let device = serde_json::from_value(map[key].clone())
                        .map_err(|_| f.err(key, "device must be cpu or cuda".into()))?;
                    self.device = Some(device);
                }
                "beta" | "pref_beta" | "pref_loss" | "pref_ftx" | "simpo_gamma" => {
                    let Some(p) = self.preference.as_mut() else {
                        return Err(f.err(key, format!("{key} applies to method type dpo only")));
                    };
                    p.apply(key, &map[key]).map_err(|e| f.err(key, e.message))?;
                }
                other => {
                    return Err(DomainError::invalid(
                        format!("{prefix}.{other}"),
                        format!("Unknown hyperparameter '{other}'"),
                    ));
                }
            }
        }
        if self.quantization.double.is_some()
            && self
                .quantization()
                .is_some_and(|m| m != QuantizationMethod::Nf4)
        {
            return Err(DomainError::invalid(
                format!("{prefix}.double_quantization"),
                "double_quantization applies to quantization_method nf4 only".to_owned(),
            ));
        }
        if self.find_learning_rate && self.preference.is_some() {
            return Err(DomainError::invalid(
                format!("{prefix}.learning_rate"),
                "learning_rate \"find\" applies to supervised jobs only".to_owned(),
            ));
        }
        if self.ensemble.bootstrap && self.ensemble.size < 2 {
            return Err(DomainError::invalid(
                format!("{prefix}.ensemble_bootstrap"),
                "ensemble_bootstrap applies with ensemble_size 2 or more".to_owned(),
            ));
        }
        if let (Some(bits), Some(m)) = (self.quantization.bit, self.quantization.method)
            && bits != m.bits()
        {
            return Err(DomainError::invalid(
                format!("{prefix}.quantization_method"),
                format!(
                    "quantization_method {m:?} stores {} bits, not {bits}",
                    m.bits()
                ),
            ));
        }
        Ok(self)
    }

    /// The object shown on the job (`"auto"` until resolved).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("hyperparameters serialize to JSON")
    }
}

struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
}

impl Fields<'_> {
    fn err(&self, key: &str, message: String) -> DomainError {
        DomainError::invalid(format!("{}.{key}", self.prefix), message)
    }

    fn int(&self, key: &str, min: u32, max: u32) -> Result<u32, DomainError> {
        self.map[key]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                self.err(
                    key,
                    format!("{key} must be an integer between {min} and {max}"),
                )
            })
    }

    fn auto_int(&self, key: &str, min: u32, max: u32) -> Result<AutoOr<u32>, DomainError> {
        match &self.map[key] {
            Value::String(s) if s == "auto" => Ok(AutoOr::Auto),
            _ => self.int(key, min, max).map(AutoOr::Value).map_err(|mut e| {
                e.message = format!("{key} must be \"auto\" or an integer between {min} and {max}");
                e
            }),
        }
    }

    /// A finite number in `(min, max]`, or `[min, max)` when `min_inclusive`.
    fn float(
        &self,
        key: &str,
        min: f64,
        max: f64,
        min_inclusive: bool,
    ) -> Result<f64, DomainError> {
        let v = self.map[key].as_f64().filter(|v| v.is_finite());
        let ok = v.is_some_and(|v| {
            if min_inclusive {
                v >= min && v < max
            } else {
                v > min && v <= max
            }
        });
        let range = if min_inclusive {
            format!("in [{min}, {max})")
        } else {
            format!("in ({min}, {max}]")
        };
        v.filter(|_| ok)
            .ok_or_else(|| self.err(key, format!("{key} must be a number {range}")))
    }

    fn boolean(&self, key: &str) -> Result<bool, DomainError> {
        self.map[key]
            .as_bool()
            .ok_or_else(|| self.err(key, format!("{key} must be true or false")))
    }

    /// A fraction in (0, 1) or a whole count from 1.
    fn split(&self, key: &str) -> Result<f64, DomainError> {
        self.map[key]
            .as_f64()
            .filter(|v| (*v >= 0.0 && *v < 1.0) || (*v >= 1.0 && v.fract() == 0.0 && *v <= 1.0e6))
            .ok_or_else(|| {
                self.err(
                    key,
                    format!(
                        "{key} must be a fraction in [0, 1) or a whole number of examples (0: \
                         no validation split)"
                    ),
                )
            })
    }

    fn modules(&self, key: &str) -> Result<Vec<String>, DomainError> {
        let names: Vec<String> = match &self.map[key] {
            Value::String(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| self.err(key, "lora_target must be a list of strings".into()))?,
            _ => return Err(self.err(key, "lora_target must be a list of module names".into())),
        };
        if names.iter().any(|n| n == "all") {
            return Ok(LORA_MODULES.iter().map(|m| (*m).to_owned()).collect());
        }
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| !LORA_MODULES.contains(&n.as_str()))
            .collect();
        if names.is_empty() || !unknown.is_empty() {
            return Err(self.err(
                key,
                format!(
                    "lora_target must name modules from {} (or \"all\"); unknown: {unknown:?}",
                    LORA_MODULES.join(", ")
                ),
            ));
        }
        let mut out: Vec<String> = Vec::new();
        for n in names {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        Ok(out)
    }

    fn method(&self, key: &str) -> Result<QuantizationMethod, DomainError> {
        serde_json::from_value(self.map[key].clone()).map_err(|_| {
            self.err(
                key,
                "quantization_method must be one of nf4, q4_k, q4_0, q8_0".into(),
            )
        })
    }

    fn scheduler(&self, key: &str) -> Result<LrScheduler, DomainError> {
        serde_json::from_value(self.map[key].clone()).map_err(|_| {
            self.err(
                key,
                "lr_scheduler_type must be one of cosine, linear, constant".into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_match_the_seed_recipe() {
        let hp = Hyperparameters::default();
        assert_eq!(
            (hp.lora.rank, hp.lora.alpha, hp.lora.dropout),
            (8, 32.0, 0.05)
        );
        assert_eq!(hp.lora.target.len(), 7);
        assert_eq!(hp.to_json()["n_epochs"], json!("auto"));
    }

    #[test]
    fn values_are_applied_and_round_trip_through_json() {
        let hp = Hyperparameters::default()
            .apply(
                &json!({"n_epochs": 3, "batch_size": "auto", "learning_rate": 1e-4,
                        "lora_target": "q_proj, v_proj", "lr_scheduler_type": "linear"}),
                "hyperparameters",
            )
            .unwrap();
        assert_eq!(hp.n_epochs, AutoOr::Value(3));
        assert_eq!(hp.lora.target, vec!["q_proj", "v_proj"]);
        let back: Hyperparameters = serde_json::from_value(hp.to_json()).unwrap();
        assert_eq!(back, hp);
    }

    #[test]
    fn the_learning_and_stopping_options_are_read_under_both_names() {
        let hp = Hyperparameters::default()
            .apply(
                &json!({"warmup_ratio": "auto", "early_stopping_steps": 3,
                        "load_best_at_end": false, "neftune_noise_alpha": 5,
                        "validation_split": 0}),
                "h",
            )
            .unwrap();
        assert_eq!(hp.warmup_ratio, AutoOr::Auto);
        assert_eq!(hp.evaluation.early_stopping_patience, Some(3));
        assert_eq!(hp.evaluation.load_best_model_at_end, Some(false));
        assert_eq!(hp.neftune_noise_alpha, Some(5.0));
        assert_eq!(hp.evaluation.validation_split, Some(0.0));
        assert!(!hp.find_learning_rate);
        let found = hp
            .clone()
            .apply(&json!({"learning_rate": "find"}), "h")
            .unwrap();
        assert!(found.find_learning_rate && found.learning_rate.is_none());
        let back: Hyperparameters = serde_json::from_value(found.to_json()).unwrap();
        assert_eq!(back, found);
        let back: Hyperparameters = serde_json::from_value(hp.to_json()).unwrap();
        assert_eq!(back, hp);
        // Jobs stored before `warmup_ratio` could be auto read back with their number.
        let mut old = Hyperparameters::default().to_json();
        old["warmup_ratio"] = json!(0.0);
        let old: Hyperparameters = serde_json::from_value(old).unwrap();
        assert_eq!(old.warmup_ratio, AutoOr::Value(0.0));
    }

    #[test]
    fn out_of_range_and_unknown_values_name_their_param() {
        let cases = [
            (json!({"n_epochs": 0}), "h.n_epochs"),
            (json!({"n_epochs": 51}), "h.n_epochs"),
            (json!({"batch_size": "big"}), "h.batch_size"),
            (
                json!({"learning_rate_multiplier": 0}),
                "h.learning_rate_multiplier",
            ),
            (json!({"lora_dropout": 1.0}), "h.lora_dropout"),
            (
                json!({"gradient_checkpointing": "yes"}),
                "h.gradient_checkpointing",
            ),
            (
                json!({"lora_target": ["q_proj", "lm_head"]}),
                "h.lora_target",
            ),
            (json!({"lr_scheduler_type": "step"}), "h.lr_scheduler_type"),
            (json!({"lora_rnak": 8}), "h.lora_rnak"),
            (json!({"validation_split": -0.1}), "h.validation_split"),
            (json!({"warmup_ratio": "some"}), "h.warmup_ratio"),
            (json!({"warmup_ratio": 1.5}), "h.warmup_ratio"),
            (
                json!({"early_stopping_patience": 0}),
                "h.early_stopping_patience",
            ),
            (
                json!({"early_stopping_steps": -1}),
                "h.early_stopping_steps",
            ),
            (
                json!({"load_best_model_at_end": "yes"}),
                "h.load_best_model_at_end",
            ),
            (json!({"neftune_noise_alpha": 0}), "h.neftune_noise_alpha"),
            (json!({"learning_rate": "search"}), "h.learning_rate"),
            (json!({"neftune_noise_alpha": 101}), "h.neftune_noise_alpha"),
            (json!({"validation_split": 2.5}), "h.validation_split"),
            (json!({"validation_split": "10%"}), "h.validation_split"),
            (
                json!({"predict_with_generate": 1}),
                "h.predict_with_generate",
            ),
            (json!({"eval_max_new_tokens": 0}), "h.eval_max_new_tokens"),
            (json!({"quantization_bit": 6}), "h.quantization_bit"),
            (json!({"quantization_bit": "4"}), "h.quantization_bit"),
            (
                json!({"quantization_bit": 8, "quantization_method": "nf4"}),
                "h.quantization_method",
            ),
            (
                json!({"quantization_method": "q4_k", "double_quantization": true}),
                "h.double_quantization",
            ),
            (
                json!({"quantization_bit": 4, "double_quantization": "yes"}),
                "h.double_quantization",
            ),
            (
                json!({"quantization_method": "gptq"}),
                "h.quantization_method",
            ),
            (json!({"device": "tpu"}), "h.device"),
            (json!({"device": 1}), "h.device"),
            (
                json!({"quantization_bit": 4, "quantization_method": "q8_0"}),
                "h.quantization_method",
            ),
        ];
        for (input, param) in cases {
            let err = Hyperparameters::default().apply(&input, "h").unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{input}");
        }
    }

    #[test]
    fn four_bits_default_to_nf4_and_eight_to_q8_0() {
        let hp = |v| Hyperparameters::default().apply(&v, "h").unwrap();
        let four = hp(json!({"quantization_bit": 4}));
        assert_eq!(four.quantization(), Some(QuantizationMethod::Nf4));
        assert_eq!(
            hp(json!({"quantization_bit": 8})).quantization(),
            Some(QuantizationMethod::Q8_0)
        );
        let plain = hp(json!({"quantization_bit": 4, "double_quantization": false}));
        assert_eq!(plain.quantization.double, Some(false));
        assert_eq!(Hyperparameters::default().quantization(), None);
    }

    #[test]
    fn validation_splits_are_fractions_or_counts() {
        let hp = |v| Hyperparameters::default().apply(&json!({"validation_split": v}), "h");
        assert_eq!(
            hp(json!(0.2)).unwrap().evaluation.validation_split,
            Some(0.2)
        );
        assert_eq!(
            hp(json!(12)).unwrap().evaluation.validation_split,
            Some(12.0)
        );
        let plain = Hyperparameters::default();
        assert!(plain.evaluation.predict_with_generate);
        assert!(plain.to_json().get("validation_split").is_none());
        // Jobs stored before these fields existed still load, with the defaults.
        let mut old = plain.to_json();
        for k in ["predict_with_generate", "eval_max_new_tokens"] {
            old.as_object_mut().unwrap().remove(k);
        }
        let back: Hyperparameters = serde_json::from_value(old).unwrap();
        assert_eq!(back, plain);
    }
}
