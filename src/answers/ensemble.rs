//! Answering with an ensemble (`/v1/ensembles`): every member answers (concurrently in the
//! engine) and the strategy picks one; a `layered` ensemble asks its member first and its
//! fallback only when the member is unsure.

use super::{AnswerError, Models};
use crate::domain::ensemble::Strategy;
use crate::domain::ensemble::choose::{Answer, choose, confident};
use crate::domain::organization::OrganizationId;
use crate::serve::events::Answer as Finished;
use crate::serve::{ChatParams, Generation};
use crate::store::ensembles::EnsembleRow;

/// What one model answered.
pub struct Answered {
    /// The model.
    pub model: String,
    /// Its final response.
    pub done: Finished,
}

impl Answered {
    /// Its text and mean token log-probability.
    pub fn answer(&self) -> Answer {
        answer_of(&self.done)
    }
}

/// The answers an ensemble generated and the one it chose.
pub struct Outcome {
    /// Every answer, in member order (then the fallback's).
    pub answered: Vec<Answered>,
    /// The index of the chosen answer.
    pub winner: usize,
    /// Each answer's score under the strategy (`None` for `layered`).
    pub scores: Option<Vec<f64>>,
    /// `layered`: `member` (the domain model was sure enough) or `fallback`.
    pub layer: Option<&'static str>,
}

/// The text and mean token log-probability of a response's first choice.
fn answer_of(done: &Finished) -> Answer {
    let (text, mean_logprob) = done.first_text_and_mean_logprob();
    Answer { text, mean_logprob }
}

impl Models<'_> {
    /// Make `model` resident for `ensemble`; a member that no longer exists is
    /// [`AnswerError::MemberGone`].
    async fn member(
        &self,
        org: &OrganizationId,
        ensemble: &str,
        model: &str,
    ) -> Result<(), AnswerError> {
        self.load(org, model)
            .await?
            .ok_or_else(|| AnswerError::MemberGone {
                ensemble: ensemble.to_owned(),
                model: model.to_owned(),
            })
    }

    /// Generate with every model of `models`: each is made resident and started before the
    /// next loads (a model with a generation in flight is never evicted), then all are awaited.
    async fn answer_all(
        &self,
        org: &OrganizationId,
        ensemble: &str,
        models: &[String],
        params: &ChatParams,
    ) -> Result<Vec<Answered>, AnswerError> {
        let mut running: Vec<Generation> = Vec::with_capacity(models.len());
        for m in models {
            self.member(org, ensemble, m).await?;
            running.push(self.engine.chat(m, params.clone(), false).await?);
        }
        let mut out = Vec::with_capacity(models.len());
        for (model, generation) in models.iter().zip(running.iter_mut()) {
            out.push(Answered {
                model: model.clone(),
                done: generation.finish().await?,
            });
        }
        Ok(out)
    }

    /// The mean token log-probability of `model`'s answer to each of `prompts` (which must ask
    /// for log-probabilities), all generated concurrently; `None` for an empty answer.
    pub async fn mean_logprobs(
        &self,
        org: &OrganizationId,
        model: &str,
        prompts: Vec<ChatParams>,
    ) -> Result<Vec<Option<f64>>, AnswerError> {
        self.make_resident(org, model).await?;
        let mut running = Vec::with_capacity(prompts.len());
        for params in prompts {
            running.push(self.engine.chat(model, params, false).await?);
        }
        let mut out = Vec::with_capacity(running.len());
        for generation in &mut running {
            out.push(answer_of(&generation.finish().await?).mean_logprob);
        }
        Ok(out)
    }

    /// Answer `params` (validated and budgeted; one choice, no tools) with `ensemble`. Every
    /// answer carries log-probabilities (the strategies need them).
    pub async fn answer_with_ensemble(
        &self,
        org: &OrganizationId,
        ensemble: &EnsembleRow,
        params: &ChatParams,
    ) -> Result<Outcome, AnswerError> {
        if params.n > 1 {
            return Err(AnswerError::invalid(
                "n must be 1 when model names an ensemble (it returns one chosen answer)",
                "n",
            ));
        }
        if params.tools.is_some() {
            return Err(AnswerError::invalid(
                "tools are not supported with ensembles yet: call a member model directly",
                "tools",
            ));
        }
        let strategy = Strategy::parse(&ensemble.strategy).ok_or_else(|| {
            AnswerError::Internal(format!("stored strategy {}", ensemble.strategy))
        })?;
        let params = ChatParams {
            logprobs: true,
            ..params.clone()
        };
        let name = ensemble.id.as_str();
        let members = &ensemble.members;
        Ok(match (strategy, &ensemble.fallback) {
            (Strategy::Layered, Some(fallback)) => {
                let threshold = ensemble.threshold.unwrap_or(0.0);
                let mut answered = self.answer_all(org, name, members, &params).await?;
                let (winner, layer) = if confident(&answered[0].answer(), threshold) {
                    (0, "member")
                } else {
                    let models = [fallback.clone()];
                    answered.extend(self.answer_all(org, name, &models, &params).await?);
                    (answered.len() - 1, "fallback")
                };
                Outcome {
                    winner,
                    answered,
                    scores: None,
                    layer: Some(layer),
                }
            }
            _ => {
                let answered = self.answer_all(org, name, members, &params).await?;
                let answers: Vec<Answer> = answered.iter().map(Answered::answer).collect();
                let c = choose(strategy, &answers);
                Outcome {
                    answered,
                    winner: c.winner,
                    scores: Some(c.scores),
                    layer: None,
                }
            }
        })
    }
}
