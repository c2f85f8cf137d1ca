//! Preference-tuning settings (`method.type = "dpo"`): OpenAI's `beta` and LLaMA-Factory's
//! `pref_loss`, `pref_ftx` and `simpo_gamma`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DomainError;

/// How a pair's log-probabilities become a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefLoss {
    /// DPO: `-log σ(β · ((πc − refc) − (πr − refr)))`.
    Sigmoid,
    /// IPO: `(h − 1/(2β))²` on the per-token mean log-ratios `h`.
    Ipo,
    /// SimPO (reference-free): `-log σ(β · (πc/|c| − πr/|r|) − γ)`.
    Simpo,
}

/// The settings of a DPO job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreferenceSettings {
    /// Strength of the KL penalty towards the reference (0.1, OpenAI's and TRL's default).
    pub beta: f64,
    /// The loss.
    pub pref_loss: PrefLoss,
    /// Weight of an SFT term on the chosen answers (0: none).
    pub pref_ftx: f64,
    /// SimPO's target margin γ.
    pub simpo_gamma: f64,
}

impl Default for PreferenceSettings {
    fn default() -> Self {
        Self {
            beta: 0.1,
            pref_loss: PrefLoss::Sigmoid,
            pref_ftx: 0.0,
            simpo_gamma: 0.5,
        }
    }
}

impl PreferenceSettings {
    /// Set `key` from `value`; the error (for parameter `key`) says what is allowed.
    pub fn apply(&mut self, key: &str, value: &Value) -> Result<(), DomainError> {
        let bad = |message: &str| DomainError::invalid(key, message);
        let number = |lo: f64, hi: f64| {
            value
                .as_f64()
                .filter(|v| v.is_finite() && *v > lo && *v <= hi)
                .ok_or_else(|| bad(&format!("{key} must be a number in ({lo}, {hi}]")))
        };
        match key {
            "beta" | "pref_beta" => self.beta = number(0.0, 100.0)?,
            "pref_ftx" => {
                self.pref_ftx = value
                    .as_f64()
                    .filter(|v| v.is_finite() && (0.0..=100.0).contains(v))
                    .ok_or_else(|| bad("pref_ftx must be a number in [0, 100]"))?
            }
            "simpo_gamma" => {
                self.simpo_gamma = value
                    .as_f64()
                    .filter(|v| v.is_finite() && (0.0..=100.0).contains(v))
                    .ok_or_else(|| bad("simpo_gamma must be a number in [0, 100]"))?
            }
            "pref_loss" => {
                self.pref_loss = serde_json::from_value(value.clone())
                    .map_err(|_| bad("pref_loss must be one of sigmoid, ipo, simpo"))?
            }
            other => return Err(bad(&format!("unknown preference setting {other}"))),
        }
        Ok(())
    }
}
