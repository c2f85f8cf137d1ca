//! `POST /v1/fine_tuning/jobs`: the wire request and the job specification parsed from it.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::DomainError;
use super::hyperparameters::Hyperparameters;
use super::ids::FileId;
use super::model_name::Suffix;
use super::preference::PreferenceSettings;

/// The create-job request body as clients send it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CreateFineTuningJobRequest {
    /// The base model to fine-tune (see `GET /v1/models`).
    #[schema(min_length = 1)]
    pub model: String,
    /// A `fine-tune` file id.
    #[schema(pattern = r"^file-[A-Za-z0-9_-]{1,64}$")]
    pub training_file: String,
    /// An optional `fine-tune` file id for validation metrics.
    #[serde(default)]
    #[schema(pattern = r"^file-[A-Za-z0-9_-]{1,64}$")]
    pub validation_file: Option<String>,
    /// Up to 64 characters added to the fine-tuned model's name.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub suffix: Option<String>,
    /// Seed for shuffling and initialisation (0–2147483647); generated when absent. An integral
    /// float (`42.0`, as some JSON clients send) is the same integer.
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub seed: Option<i64>,
    /// Up to 16 string pairs to tag the job with.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Accepted and echoed (no integration is run).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub integrations: Option<Value>,
    /// `{type: "supervised", supervised: {hyperparameters: {...}}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub method: Option<Value>,
    /// Deprecated top-level hyperparameters (`n_epochs`, `batch_size`,
    /// `learning_rate_multiplier`, and the LoRA extensions).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub hyperparameters: Option<Value>,
}

/// A job ready to be stored: every field checked.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Base model name.
    pub model: String,
    /// Training file.
    pub training_file: FileId,
    /// Validation file.
    pub validation_file: Option<FileId>,
    /// Model-name suffix.
    pub suffix: Option<Suffix>,
    /// Seed.
    pub seed: i64,
    /// Metadata pairs.
    pub metadata: Option<Value>,
    /// Echoed integrations.
    pub integrations: Option<Value>,
    /// Resolved-or-auto hyperparameters.
    pub hyperparameters: Hyperparameters,
}

impl JobSpec {
    /// Check every field of the request; the files' existence is checked by the caller.
    pub fn parse(req: CreateFineTuningJobRequest) -> Result<Self, DomainError> {
        if req.model.trim().is_empty() {
            return Err(DomainError::invalid("model", "model must not be empty"));
        }
        super::text::storable("model", &req.model)?;
        let training_file = parse_file_id(&req.training_file, "training_file")?;
        let validation_file = req
            .validation_file
            .as_deref()
            .map(|v| parse_file_id(v, "validation_file"))
            .transpose()?;
        let suffix = req.suffix.as_deref().map(Suffix::parse).transpose()?;
        let seed = match req.seed {
            None => i64::from(rand::random::<u32>() >> 1),
            Some(s) if (0..=2_147_483_647).contains(&s) => s,
            Some(_) => {
                return Err(DomainError::invalid(
                    "seed",
                    "seed must be between 0 and 2147483647",
                ));
            }
        };
        let metadata = req.metadata.map(parse_metadata).transpose()?;
        if let Some(i) = &req.integrations {
            if !i.is_array() && !i.is_null() {
                return Err(DomainError::invalid(
                    "integrations",
                    "integrations must be a list",
                ));
            }
            super::text::storable_json("integrations", i)?;
        }
        let mut hyperparameters = Hyperparameters::default();
        if let Some(h) = req.hyperparameters.as_ref().filter(|h| !h.is_null()) {
            hyperparameters = hyperparameters.apply(h, "hyperparameters")?;
        }
        if let Some(method) = req.method.as_ref().filter(|m| !m.is_null()) {
            hyperparameters = apply_method(method, hyperparameters)?;
        }
        if validation_file.is_some()
            && hyperparameters
                .evaluation
                .validation_split
                .is_some_and(|s| s > 0.0)
        {
            return Err(DomainError::invalid(
                "hyperparameters.validation_split",
                "validation_split holds out training examples for validation; it cannot be \
                 combined with a validation_file",
            ));
        }
        Ok(Self {
            model: req.model,
            training_file,
            validation_file,
            suffix,
            seed,
            metadata,
            integrations: req.integrations.filter(|i| !i.is_null()),
            hyperparameters,
        })
    }

    /// The `method` object echoed on the job.
    pub fn method_json(hyperparameters: &Hyperparameters) -> Value {
        let hp = hyperparameters.to_json();
        match hyperparameters.preference {
            Some(_) => json!({"type": "dpo", "dpo": {"hyperparameters": hp}}),
            None => json!({"type": "supervised", "supervised": {"hyperparameters": hp}}),
        }
    }
}

/// An integer, also when written as an integral float (`957423.0`).
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(format!("expected an integer, got {n}"))),
    }
}

fn parse_file_id(raw: &str, param: &str) -> Result<FileId, DomainError> {
    FileId::parse(raw).ok_or_else(|| {
        DomainError::invalid(param, format!("Invalid file id '{raw}': expected 'file-…'"))
            .with_code("invalid_file_id")
    })
}

fn parse_metadata(value: Value) -> Result<Value, DomainError> {
    let Value::Object(map) = value else {
        if value.is_null() {
            return Ok(Value::Object(Map::new()));
        }
        return Err(DomainError::invalid(
            "metadata",
            "metadata must be an object of strings",
        ));
    };
    if map.len() > 16 {
        return Err(DomainError::invalid(
            "metadata",
            "metadata may have at most 16 pairs",
        ));
    }
    super::text::storable_json("metadata", &Value::Object(map.clone()))?;
    for (k, v) in &map {
        if k.chars().count() > 64 {
            return Err(DomainError::invalid(
                "metadata",
                "metadata keys may be at most 64 characters",
            ));
        }
        match v.as_str() {
            Some(s) if s.chars().count() <= 512 => {}
            Some(_) => {
                return Err(DomainError::invalid(
                    format!("metadata.{k}"),
                    "metadata values may be at most 512 characters",
                ));
            }
            None => {
                return Err(DomainError::invalid(
                    format!("metadata.{k}"),
                    "metadata values must be strings",
                ));
            }
        }
    }
    Ok(Value::Object(map))
}

fn apply_method(method: &Value, mut hp: Hyperparameters) -> Result<Hyperparameters, DomainError> {
    let kind = method.get("type").and_then(Value::as_str);
    let key = match kind {
        Some("supervised") | None => "supervised",
        Some("dpo") => {
            hp.preference
                .get_or_insert_with(PreferenceSettings::default);
            "dpo"
        }
        Some("reinforcement") => {
            return Err(DomainError::invalid(
                "method.type",
                "method type 'reinforcement' is not supported yet; use 'supervised' or 'dpo'",
            )
            .with_code("unsupported_method"));
        }
        Some(other) => {
            return Err(DomainError::invalid(
                "method.type",
                format!("Unknown method type '{other}': expected supervised, dpo or reinforcement"),
            ));
        }
    };
    match method.get(key).and_then(|s| s.get("hyperparameters")) {
        Some(h) if !h.is_null() => hp.apply(h, &format!("method.{key}.hyperparameters")),
        _ => Ok(hp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hyperparameters::AutoOr;

    fn request(extra: Value) -> CreateFineTuningJobRequest {
        let mut base = json!({"model": "tiny", "training_file": "file-abc"});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn method_hyperparameters_override_top_level_ones() {
        let spec = JobSpec::parse(request(json!({
            "hyperparameters": {"n_epochs": 2},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "lora_rank": 16}}}
        })))
        .unwrap();
        assert_eq!(spec.hyperparameters.n_epochs, AutoOr::Value(4));
        assert_eq!(spec.hyperparameters.lora.rank, 16);
        assert!((0..=2_147_483_647).contains(&spec.seed));
    }

    #[test]
    fn dpo_jobs_carry_their_settings_and_echo_their_method() {
        let spec = JobSpec::parse(request(
            json!({"method": {"type": "dpo", "dpo": {"hyperparameters":
            {"beta": 0.2, "n_epochs": 2, "pref_loss": "ipo", "pref_ftx": 0.5}}}}),
        ))
        .unwrap();
        let p = spec.hyperparameters.preference.unwrap();
        assert_eq!((p.beta, p.pref_ftx), (0.2, 0.5));
        assert_eq!(p.pref_loss, crate::domain::preference::PrefLoss::Ipo);
        let method = JobSpec::method_json(&spec.hyperparameters);
        assert_eq!(method["type"], "dpo");
        assert_eq!(method["dpo"]["hyperparameters"]["beta"], 0.2);
        assert_eq!(method["dpo"]["hyperparameters"]["n_epochs"], 2);
        // Stored and read back (the worker's copy), the settings survive; SFT jobs have none.
        let stored = serde_json::to_value(&spec.hyperparameters).unwrap();
        let back: Hyperparameters = serde_json::from_value(stored).unwrap();
        assert_eq!(back.preference, Some(p));
        let sft = JobSpec::parse(request(json!({}))).unwrap().hyperparameters;
        let back: Hyperparameters =
            serde_json::from_value(serde_json::to_value(&sft).unwrap()).unwrap();
        assert_eq!(back.preference, None);
        assert!(serde_json::to_value(&sft).unwrap().get("beta").is_none());
    }

    #[test]
    fn bad_fields_are_rejected_with_their_param() {
        let cases = [
            (json!({"seed": -1}), "seed"),
            (json!({"suffix": "a:b"}), "suffix"),
            (json!({"validation_file": "nope"}), "validation_file"),
            (json!({"metadata": {"k": 1}}), "metadata.k"),
            (json!({"method": {"type": "reinforcement"}}), "method.type"),
            (
                json!({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}),
                "method.dpo.hyperparameters.beta",
            ),
            (
                json!({"method": {"type": "dpo", "dpo": {"hyperparameters": {"pref_loss": "hinge"}}}}),
                "method.dpo.hyperparameters.pref_loss",
            ),
            (
                json!({"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}}),
                "method.supervised.hyperparameters.beta",
            ),
            (json!({"integrations": "wandb"}), "integrations"),
            (
                json!({"validation_file": "file-abc", "hyperparameters": {"validation_split": 0.1}}),
                "hyperparameters.validation_split",
            ),
        ];
        for (extra, param) in cases {
            let err = JobSpec::parse(request(extra.clone())).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{extra}");
        }
    }
}
