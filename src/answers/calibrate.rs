//! `threshold: "auto"` for a `layered` ensemble: the domain model answers every prompt of the
//! validation file of the job that trained it (greedily, up to the job's `eval_max_new_tokens`,
//! through the serving engine as chat requests are), and the threshold is the highest value that
//! still keeps at least 95 % of those in-domain answers with the domain model.

use super::{AnswerError, Models};
use crate::domain::dataset::{EvalPrompt, read_examples};
use crate::domain::organization::OrganizationId;
use crate::serve::{ChatParams, ChatTurn};

/// The share of in-domain answers a calibrated threshold keeps with the domain model.
pub const KEEP: f64 = 0.95;

/// Confidence given to an empty answer (the lowest threshold there is).
const FLOOR: f64 = -100.0;

/// How far below the kept answers' lowest confidence the threshold sits: the same prompt served
/// again can score a hair lower (another batch size, a prompt prefix reused from the cache
/// changes the order of float sums), and an answer exactly at the threshold must not flip.
const SLACK: f64 = 0.01;

impl Models<'_> {
    /// Calibrate the threshold of `member` (the domain model) on its job's validation file.
    pub async fn calibrate_threshold(
        &self,
        org: &OrganizationId,
        member: &str,
    ) -> Result<f64, AnswerError> {
        let refuse = |why: String| {
            AnswerError::invalid(
                format!("threshold \"auto\" calibrates on {why}"),
                "threshold",
            )
        };
        let job = match self.store.job_of_model(org, member).await? {
            Some(id) => self.store.get_job(org, &id).await?,
            None => None,
        };
        let Some(job) = job else {
            return Err(refuse(format!(
                "the validation file of the job that trained the member; '{member}' was not trained \
             by a fine-tuning job"
            )));
        };
        let Some(file) = job.validation_file.clone() else {
            return Err(refuse(format!(
                "the validation file of the job that trained the member; job {} has none",
                job.id
            )));
        };
        let path = self.blobs.local(&file).await?;
        let examples = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            read_examples(std::io::BufReader::new(file)).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| AnswerError::Internal(e.to_string()))?
        .map_err(|e| AnswerError::Internal(format!("reading the validation file: {e}")))?;
        let max_tokens = job.hyperparameters.0.evaluation.eval_max_new_tokens as usize;
        let prompts: Vec<ChatParams> = examples
            .iter()
            .filter_map(EvalPrompt::of)
            .filter(|p| !p.turns.is_empty())
            .map(|p| ChatParams {
                messages: p
                    .turns
                    .iter()
                    .map(|t| ChatTurn::new(t.role.as_str(), &t.content))
                    .collect(),
                temperature: Some(0.0),
                max_tokens: Some(max_tokens),
                logprobs: true,
                n: 1,
                ..Default::default()
            })
            .collect();
        if prompts.is_empty() {
            return Err(refuse(format!(
                "the prompts of job {}'s validation file, and it has none with an answer",
                job.id
            )));
        }
        let confidences = self.mean_logprobs(org, member, prompts).await?;
        Ok(keeping(
            confidences
                .into_iter()
                .map(|c| c.unwrap_or(FLOOR))
                .collect(),
            KEEP,
        ))
    }
}

/// The highest threshold under which at least `keep` of `confidences` stay at or above it, less
/// [`SLACK`], within the API's range (−100 to 0).
fn keeping(mut confidences: Vec<f64>, keep: f64) -> f64 {
    confidences.sort_by(f64::total_cmp);
    let dropped = ((1.0 - keep) * confidences.len() as f64).floor() as usize;
    confidences
        .get(dropped.min(confidences.len().saturating_sub(1)))
        .copied()
        .map_or(FLOOR, |c| c - SLACK)
        .clamp(FLOOR, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_keeps_at_least_the_share_asked_for() {
        let c: Vec<f64> = (1..=40).map(|i| -f64::from(i) / 10.0).collect();
        let t = keeping(c.clone(), 0.95);
        let kept = c.iter().filter(|x| **x >= t).count();
        assert_eq!(kept, 38, "threshold {t}");
        assert_eq!(t, -3.8 - SLACK);
        // Twenty answers: one may fall below; nineteen stay.
        let t = keeping(c[..20].to_vec(), 0.95);
        assert_eq!(c[..20].iter().filter(|x| **x >= t).count(), 19);
        // Few answers keep them all; the range is the API's.
        assert_eq!(keeping(vec![-0.5, -0.2], 0.95), -0.5 - SLACK);
        assert_eq!(keeping(vec![-250.0], 0.95), -100.0);
        assert_eq!(keeping(Vec::new(), 0.95), -100.0);
    }
}
