//! Resolving `"auto"` hyperparameters from the dataset and the model (the rules and the runs they
//! come from are in the README, "What `auto` chooses"):
//!
//! - `learning_rate`: explicit if given, else `learning_rate_multiplier` (auto = 1) × a base that
//!   grows as the model shrinks — 1e-4 (the LLaMA-Factory LoRA default, meant for 7B models) ×
//!   √(7B / parameters), within [1e-4, 2e-3] — and is divided by the adapter's scale `α / r`
//!   relative to the default r=8, α=32 (a larger scale moves the weights further per step).
//! - `n_epochs`: enough passes that the run sees about [`EXAMPLES_SEEN`] examples (3 to 25
//!   epochs), lowered so it sees at most 25,000 (at least 1).
//! - `batch_size`: one example per 25 in the set, 1 to 8: a steadier gradient than one example
//!   per step once the set has more than a few dozen.
//! - `warmup_ratio`: 0.1 of the steps.

use crate::domain::hyperparameters::{AutoOr, Hyperparameters};
use crate::model_dir::Config;

/// The learning rate `auto` gives a 7B model with the default adapter.
pub const BASE_LEARNING_RATE: f64 = 1e-4;

/// The largest learning rate `auto` gives (the smallest models with the default adapter).
pub const MAX_AUTO_LEARNING_RATE: f64 = 2e-3;

/// How many examples (counting repeats) `auto` epochs aim for.
pub const EXAMPLES_SEEN: usize = 2_000;

/// The adapter scale `α / r` the learning-rate rule is set for (r=8, α=32).
const DEFAULT_SCALE: f64 = 4.0;

/// Every value resolved to a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    /// Epochs.
    pub n_epochs: u32,
    /// Micro-batch size.
    pub batch_size: u32,
    /// Learning-rate multiplier.
    pub learning_rate_multiplier: f64,
    /// Absolute peak learning rate.
    pub learning_rate: f64,
    /// Fraction of steps spent warming up.
    pub warmup_ratio: f64,
}

/// Parameters of the model `cfg` describes (embeddings, attention, MLP, norms, an untied head).
pub fn parameter_count(cfg: &Config) -> u64 {
    let h = cfg.hidden_size as u64;
    let heads = cfg.num_attention_heads as u64;
    let head_dim = cfg.head_dim.map_or(h / heads.max(1), |d| d as u64);
    let kv = cfg.num_key_value_heads.map_or(heads, |k| k as u64) * head_dim;
    let attention = 2 * h * heads * head_dim + 2 * h * kv;
    let mlp = 3 * h * cfg.intermediate_size as u64;
    let embeddings = cfg.vocab_size as u64 * h;
    let head = if cfg.tie_word_embeddings {
        0
    } else {
        embeddings
    };
    embeddings + head + cfg.num_hidden_layers as u64 * (attention + mlp + 2 * h) + h
}

/// The learning rate `auto` picks for a model of `parameters` with LoRA rank `rank` and `alpha`.
pub fn auto_learning_rate(parameters: u64, rank: u32, alpha: f64) -> f64 {
    let by_size = (BASE_LEARNING_RATE * (7.0e9 / parameters.max(1) as f64).sqrt())
        .clamp(BASE_LEARNING_RATE, MAX_AUTO_LEARNING_RATE);
    let scale = alpha / f64::from(rank.max(1));
    if scale > 0.0 {
        by_size * DEFAULT_SCALE / scale
    } else {
        by_size
    }
}

/// Resolve against `examples` training examples on a model of `parameters`.
pub fn resolve(hp: &Hyperparameters, examples: usize, parameters: u64) -> Resolved {
    let n = examples.max(1);
    let n_epochs = match hp.n_epochs {
        AutoOr::Value(v) => v,
        AutoOr::Auto if n * 3 > 25_000 => (25_000 / n).max(1) as u32,
        AutoOr::Auto => EXAMPLES_SEEN.div_ceil(n).clamp(3, 25) as u32,
    };
    let batch_size = match hp.batch_size {
        AutoOr::Value(v) => v,
        AutoOr::Auto => ((n as f64 / 25.0).round() as u32).clamp(1, 8),
    };
    let learning_rate_multiplier = match hp.learning_rate_multiplier {
        AutoOr::Value(v) => v,
        AutoOr::Auto => 1.0,
    };
    let base = auto_learning_rate(parameters, hp.lora.rank, hp.lora.alpha);
    let learning_rate = hp.learning_rate.unwrap_or(base * learning_rate_multiplier);
    let warmup_ratio = match hp.warmup_ratio {
        AutoOr::Value(v) => v,
        AutoOr::Auto => 0.1,
    };
    Resolved {
        n_epochs,
        batch_size,
        learning_rate_multiplier,
        learning_rate,
        warmup_ratio,
    }
}

impl Resolved {
    /// Write the resolved values back into `hp` (what the job then shows).
    pub fn apply(&self, hp: &Hyperparameters) -> Hyperparameters {
        Hyperparameters {
            n_epochs: AutoOr::Value(self.n_epochs),
            batch_size: AutoOr::Value(self.batch_size),
            learning_rate_multiplier: AutoOr::Value(self.learning_rate_multiplier),
            learning_rate: Some(self.learning_rate),
            find_learning_rate: false,
            warmup_ratio: AutoOr::Value(self.warmup_ratio),
            ..hp.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: u64 = 134_515_008;
    const SEVEN_B: u64 = 6_738_415_616;

    #[test]
    fn small_sets_get_more_epochs_and_large_sets_fewer() {
        let hp = Hyperparameters::default();
        assert_eq!(resolve(&hp, 12, SMOLLM2).n_epochs, 25);
        assert_eq!(resolve(&hp, 200, SMOLLM2).n_epochs, 10);
        assert_eq!(resolve(&hp, 1000, SMOLLM2).n_epochs, 3);
        assert_eq!(resolve(&hp, 20_000, SMOLLM2).n_epochs, 1);
        assert_eq!(resolve(&hp, 12, SMOLLM2).batch_size, 1);
        assert_eq!(resolve(&hp, 50, SMOLLM2).batch_size, 2);
        assert_eq!(resolve(&hp, 200, SMOLLM2).batch_size, 8);
        assert_eq!(resolve(&hp, 5000, SMOLLM2).batch_size, 8);
        assert_eq!(resolve(&hp, 200, SMOLLM2).warmup_ratio, 0.1);
    }

    #[test]
    fn the_learning_rate_grows_as_the_model_shrinks_and_follows_the_adapter_scale() {
        let hp = Hyperparameters::default();
        let seven_b = resolve(&hp, 200, SEVEN_B).learning_rate;
        assert!((seven_b - 1.019e-4).abs() < 1e-6, "{seven_b}");
        let smollm2 = resolve(&hp, 200, SMOLLM2).learning_rate;
        assert!((smollm2 - 7.21e-4).abs() < 1e-5, "{smollm2}");
        assert_eq!(
            resolve(&hp, 200, 1_000_000).learning_rate,
            MAX_AUTO_LEARNING_RATE
        );
        // r=16 with the same alpha halves the scale, so the rate doubles.
        let mut wide = hp.clone();
        wide.lora.rank = 16;
        let doubled = resolve(&wide, 200, SMOLLM2).learning_rate;
        assert!((doubled / smollm2 - 2.0).abs() < 1e-9);
    }

    #[test]
    fn explicit_values_win() {
        let hp = Hyperparameters {
            n_epochs: AutoOr::Value(2),
            learning_rate_multiplier: AutoOr::Value(3.0),
            warmup_ratio: AutoOr::Value(0.0),
            ..Default::default()
        };
        let r = resolve(&hp, 10, SEVEN_B);
        assert_eq!(r.n_epochs, 2);
        assert_eq!(r.warmup_ratio, 0.0);
        let base = auto_learning_rate(SEVEN_B, 8, 32.0);
        assert!((r.learning_rate - 3.0 * base).abs() < 1e-12);
        let with_lr = Hyperparameters {
            learning_rate: Some(0.01),
            ..hp
        };
        assert_eq!(resolve(&with_lr, 10, SEVEN_B).learning_rate, 0.01);
    }

    #[test]
    fn smollm2_has_its_published_parameter_count() {
        let cfg: Config = serde_json::from_value(serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 8192, "tie_word_embeddings": true
        }))
        .unwrap();
        assert_eq!(parameter_count(&cfg), SMOLLM2);
    }
}
