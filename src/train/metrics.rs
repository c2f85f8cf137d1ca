//! The metrics of one optimizer step and their wire forms: the JSON of metrics events and
//! checkpoints (OpenAI's keys) and the rows of the `step_metrics.csv` result file.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::eval::GenerationMetrics;
use super::{TrainError, io_err};

/// Metrics of one optimizer step, named as OpenAI names them in events and checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsRow {
    /// 1-based optimizer step.
    pub step: usize,
    /// Training loss: the mean of [`Self::step_loss`] over the steps since the last logging step
    /// (this one included), as the Trainer and LLaMA-Factory log it.
    pub train_loss: f32,
    /// Mean training loss over this step's micro-batches alone (older saved states: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_loss: Option<f32>,
    /// Mean token accuracy over the step's micro-batches.
    #[serde(alias = "train_accuracy")]
    pub train_mean_token_accuracy: f32,
    /// Validation loss, when evaluated at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_loss: Option<f32>,
    /// Validation token accuracy, when evaluated at this step.
    #[serde(
        default,
        alias = "valid_accuracy",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_mean_token_accuracy: Option<f32>,
    /// Loss over the whole validation set, reported once, at the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_valid_loss: Option<f32>,
    /// Token accuracy over the whole validation set, at the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_valid_mean_token_accuracy: Option<f32>,
    /// Learning rate the optimizer step used (after warm-up and schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Training tokens per second over the step (micro-batches, backward and optimizer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f32>,
    /// Preference tuning's implicit rewards (TRL's names), on DPO jobs.
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub rewards: Option<Rewards>,
    /// Peak GPU memory held by tensors during the step, in bytes (`None` on the CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gpu_memory_bytes: Option<u64>,
    /// ROUGE and BLEU of greedy answers to the validation prompts, base and fine-tuned: on the
    /// last step's row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationMetrics>,
}

/// A DPO step's rewards under TRL's names: the step's pairs, and the validation pairs when
/// evaluated at this step (`eval_…`). In f32 like the losses, so that a resumed run's saved
/// rows read back exactly.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Rewards {
    /// Mean implicit reward of the chosen answers.
    #[serde(rename = "rewards/chosen")]
    pub chosen: f32,
    /// Mean implicit reward of the rejected answers.
    #[serde(rename = "rewards/rejected")]
    pub rejected: f32,
    /// Pairs whose chosen reward is the higher.
    #[serde(rename = "rewards/accuracies")]
    pub accuracies: f32,
    /// Mean chosen minus rejected reward.
    #[serde(rename = "rewards/margins")]
    pub margins: f32,
    /// Validation `rewards/chosen`.
    #[serde(
        rename = "eval_rewards/chosen",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_chosen: Option<f32>,
    /// Validation `rewards/rejected`.
    #[serde(
        rename = "eval_rewards/rejected",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_rejected: Option<f32>,
    /// Validation `rewards/accuracies`.
    #[serde(
        rename = "eval_rewards/accuracies",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_accuracies: Option<f32>,
    /// Validation `rewards/margins`.
    #[serde(
        rename = "eval_rewards/margins",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_margins: Option<f32>,
}

/// The result file's header: OpenAI's column names (`train_loss` there is each step's own loss,
/// as in OpenAI's per-step file), then the logged mean since the last logging step.
pub const CSV_HEADER: &str =
    "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,train_loss_mean";

impl MetricsRow {
    /// The `data` of a metrics event (with `total_steps`) or a checkpoint's `metrics` (without).
    pub fn to_json(&self, total_steps: Option<usize>) -> Value {
        let mut m = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        if let Some(t) = total_steps {
            m["total_steps"] = json!(t);
        }
        m
    }

    /// The metrics event's message: `Step 30/300: training loss=0.1500, validation loss=0.27`.
    pub fn message(&self, total_steps: usize) -> String {
        let mut message = format!(
            "Step {}/{total_steps}: training loss={:.4}",
            self.step, self.train_loss
        );
        if let Some(v) = self.valid_loss {
            message.push_str(&format!(", validation loss={v:.4}"));
        }
        if let Some(g) = &self.generation {
            message.push_str(&format!(
                ", ROUGE-L base={:.3} fine-tuned={:.3} ({} prompts)",
                g.base.rouge_l, g.fine_tuned.rouge_l, g.samples
            ));
        }
        message
    }

    /// One CSV line (no newline) under [`CSV_HEADER`].
    pub fn csv_line(&self) -> String {
        let opt = |v: Option<f32>| v.map(|v| v.to_string()).unwrap_or_default();
        format!(
            "{},{},{},{},{},{}",
            self.step,
            self.step_loss.unwrap_or(self.train_loss),
            self.train_mean_token_accuracy,
            opt(self.valid_loss),
            opt(self.valid_mean_token_accuracy),
            self.train_loss
        )
    }
}

/// Write `rows` as the `step_metrics.csv` result file.
pub fn write_csv(path: &Path, rows: &[MetricsRow]) -> Result<(), TrainError> {
    let mut text = format!("{CSV_HEADER}\n");
    for r in rows {
        text.push_str(&r.csv_line());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(valid: Option<f32>) -> MetricsRow {
        MetricsRow {
            step: 3,
            train_loss: 1.5,
            step_loss: Some(1.25),
            train_mean_token_accuracy: 0.25,
            valid_loss: valid,
            valid_mean_token_accuracy: valid.map(|_| 0.5),
            full_valid_loss: None,
            full_valid_mean_token_accuracy: None,
            learning_rate: None,
            tokens_per_second: None,
            rewards: None,
            peak_gpu_memory_bytes: None,
            generation: None,
        }
    }

    #[test]
    fn events_use_openai_keys_and_leave_out_what_was_not_measured() {
        let m = row(None).to_json(Some(10));
        assert_eq!(
            m,
            json!({"step": 3, "total_steps": 10, "train_loss": 1.5, "step_loss": 1.25,
                   "train_mean_token_accuracy": 0.25})
        );
        let m = row(Some(2.0)).to_json(None);
        assert_eq!(m["valid_loss"], 2.0);
        assert_eq!(m["valid_mean_token_accuracy"], 0.5);
        assert!(m.get("total_steps").is_none());
    }

    #[test]
    fn csv_rows_leave_unmeasured_columns_empty() {
        assert_eq!(row(None).csv_line(), "3,1.25,0.25,,,1.5");
        assert_eq!(row(Some(2.0)).csv_line(), "3,1.25,0.25,2,0.5,1.5");
        assert_eq!(row(None).message(10), "Step 3/10: training loss=1.5000");
    }

    #[test]
    fn states_saved_with_the_old_field_names_still_load() {
        let old = r#"{"step":1,"train_loss":1.0,"train_accuracy":0.5,"valid_loss":null,"valid_accuracy":null}"#;
        let r: MetricsRow = serde_json::from_str(old).unwrap();
        assert_eq!(r.train_mean_token_accuracy, 0.5);
    }
}
