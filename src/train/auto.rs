//! Resolving `"auto"` hyperparameters from the dataset size, OpenAI-style:
//!
//! - `n_epochs`: 3, raised so the run sees at least 100 examples (at most 25 epochs), lowered so
//!   it sees at most 25,000 (at least 1).
//! - `batch_size`: about 0.2 % of the examples, at least 1 and at most 256.
//! - `learning_rate`: explicit if given, else `learning_rate_multiplier` (auto = 1) × 1e-4, the
//!   LLaMA-Factory LoRA default.

use crate::domain::hyperparameters::{AutoOr, Hyperparameters};

/// The base learning rate the multiplier scales.
pub const BASE_LEARNING_RATE: f64 = 1e-4;

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
}

/// Resolve against `examples` training examples.
pub fn resolve(hp: &Hyperparameters, examples: usize) -> Resolved {
    let n = examples.max(1) as u64;
    let n_epochs = match hp.n_epochs {
        AutoOr::Value(v) => v,
        AutoOr::Auto if n * 3 < 100 => 100u64.div_ceil(n).min(25) as u32,
        AutoOr::Auto if n * 3 > 25_000 => (25_000 / n).max(1) as u32,
        AutoOr::Auto => 3,
    };
    let batch_size = match hp.batch_size {
        AutoOr::Value(v) => v,
        AutoOr::Auto => ((n as f64 * 0.002).round() as u32).clamp(1, 256),
    };
    let learning_rate_multiplier = match hp.learning_rate_multiplier {
        AutoOr::Value(v) => v,
        AutoOr::Auto => 1.0,
    };
    let learning_rate = hp
        .learning_rate
        .unwrap_or(BASE_LEARNING_RATE * learning_rate_multiplier);
    Resolved {
        n_epochs,
        batch_size,
        learning_rate_multiplier,
        learning_rate,
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
            ..hp.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sets_get_more_epochs_and_large_sets_fewer() {
        let hp = Hyperparameters::default();
        assert_eq!(resolve(&hp, 10).n_epochs, 10);
        assert_eq!(resolve(&hp, 2).n_epochs, 25);
        assert_eq!(resolve(&hp, 1000).n_epochs, 3);
        assert_eq!(resolve(&hp, 20_000).n_epochs, 1);
        assert_eq!(resolve(&hp, 10).batch_size, 1);
        assert_eq!(resolve(&hp, 5000).batch_size, 10);
        assert_eq!(resolve(&hp, 10).learning_rate, BASE_LEARNING_RATE);
    }

    #[test]
    fn explicit_values_win() {
        let hp = Hyperparameters {
            n_epochs: AutoOr::Value(2),
            learning_rate_multiplier: AutoOr::Value(3.0),
            ..Default::default()
        };
        let r = resolve(&hp, 10);
        assert_eq!(r.n_epochs, 2);
        assert!((r.learning_rate - 3e-4).abs() < 1e-12);
        let with_lr = Hyperparameters {
            learning_rate: Some(0.01),
            ..hp
        };
        assert_eq!(resolve(&with_lr, 10).learning_rate, 0.01);
    }
}
