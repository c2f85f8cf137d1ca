//! Chat completions of an ensemble (`/v1/ensembles`): every member answers (concurrently in the
//! engine) and the strategy picks one; a `layered` ensemble asks its member first and its
//! fallback only when the member is unsure. The response is an ordinary completion of the
//! winner with usage summed over every answer generated, plus an `ensemble` extension field; a
//! stream sends the winner once it is chosen.

use actix_web::HttpResponse;
use actix_web::web::Bytes;
use mistralrs::core::{ChatCompletionResponse, Response};
use serde::Serialize;

use super::render::{finish_reason, random_id, sse_data, sse_response};
use super::types::{
    ChatCompletionChunk, ChunkChoice, ChunkDelta, CompletionUsage, CreateChatCompletionResponse,
};
use super::{completion_from, engine_failure};
use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::domain::ensemble::Strategy;
use crate::domain::ensemble::choose::{Answer, choose, confident};
use crate::serve::{ChatParams, Generation};
use crate::store::ensembles::EnsembleRow;

/// One answer an ensemble generated.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberAnswer {
    /// The model that gave it.
    pub model: String,
    /// Its text.
    pub content: String,
    /// Mean log-probability of its tokens (null for an empty answer).
    pub mean_logprob: Option<f64>,
    /// Its score under the strategy: votes (`vote`), mean log-probability (`best_logprob`),
    /// mean ROUGE-L F1 to the other answers (`consensus`); null for `layered`.
    pub score: Option<f64>,
}

/// How an ensemble's answer was chosen.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EnsembleReport {
    /// The strategy.
    pub strategy: String,
    /// The model whose answer was returned.
    pub winner: String,
    /// `layered`: `member` (the domain model was sure enough) or `fallback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<&'static str>,
    /// `layered`: the threshold the member's mean log-probability was held to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Every answer generated, in member order (then the fallback's).
    pub answers: Vec<MemberAnswer>,
}

/// What one model answered.
struct Answered {
    model: String,
    done: ChatCompletionResponse,
}

impl Answered {
    fn answer(&self) -> Answer {
        answer_of(&self.done)
    }
}

/// The text and mean token log-probability of a response's first choice.
fn answer_of(done: &ChatCompletionResponse) -> Answer {
    let choice = done.choices.first();
    let text = choice
        .and_then(|c| c.message.content.clone())
        .unwrap_or_default();
    let lps: Vec<f64> = choice
        .and_then(|c| c.logprobs.as_ref())
        .and_then(|l| l.content.as_ref())
        .map(|c| c.iter().map(|t| f64::from(t.logprob)).collect())
        .unwrap_or_default();
    let mean_logprob = (!lps.is_empty()).then(|| lps.iter().sum::<f64>() / lps.len() as f64);
    Answer { text, mean_logprob }
}

/// Make `model` resident for an ensemble, with a 400 naming the ensemble when the member is gone.
async fn resident(
    state: &ApiState,
    caller: &Caller,
    ensemble: &str,
    model: &str,
) -> Result<(), ApiError> {
    if model == state.engine.base_name() {
        return Ok(());
    }
    let row = state
        .store
        .get_model(&caller.0, model)
        .await?
        .ok_or_else(|| {
            ApiError::invalid(
                format!("Ensemble '{ensemble}' names '{model}', which no longer exists"),
                Some("model"),
            )
            .with_code("model_not_found")
        })?;
    Ok(state
        .engine
        .ensure_loaded(model, &state.blobs.local_dir(&row.path).await?)
        .await?)
}

/// Generate with every model of `models`: each is made resident and started before the next
/// loads (a model with a generation in flight is never evicted), then all are awaited.
async fn answer_all(
    state: &ApiState,
    caller: &Caller,
    ensemble: &str,
    models: &[String],
    params: &ChatParams,
) -> Result<Vec<Answered>, ApiError> {
    let mut running = Vec::with_capacity(models.len());
    for m in models {
        resident(state, caller, ensemble, m).await?;
        running.push(state.engine.chat(m, params.clone(), false).await?);
    }
    let mut out = Vec::with_capacity(models.len());
    for (model, generation) in models.iter().zip(running.iter_mut()) {
        out.push(Answered {
            model: model.clone(),
            done: finished(generation).await?,
        });
    }
    Ok(out)
}

/// The final response of `generation`, or the error for what came instead.
async fn finished(generation: &mut Generation) -> Result<ChatCompletionResponse, ApiError> {
    match generation.recv().await {
        Some(Response::Done(done)) => Ok(done),
        other => Err(engine_failure(other)),
    }
}

/// The mean token log-probability of `model`'s answer to each of `prompts` (which must ask for
/// log-probabilities), all generated concurrently; `None` for an empty answer.
pub async fn mean_logprobs(
    state: &ApiState,
    caller: &Caller,
    model: &str,
    prompts: Vec<ChatParams>,
) -> Result<Vec<Option<f64>>, ApiError> {
    super::make_resident(state, caller, model).await?;
    let mut running = Vec::with_capacity(prompts.len());
    for params in prompts {
        running.push(state.engine.chat(model, params, false).await?);
    }
    let mut out = Vec::with_capacity(running.len());
    for generation in &mut running {
        out.push(answer_of(&finished(generation).await?).mean_logprob);
    }
    Ok(out)
}

/// Answer a chat request to `ensemble`; `params` are validated and budgeted.
pub async fn answer(
    state: &ApiState,
    caller: &Caller,
    ensemble: EnsembleRow,
    mut params: ChatParams,
    stream: bool,
    include_usage: bool,
) -> Result<HttpResponse, ApiError> {
    if params.n > 1 {
        return Err(ApiError::invalid(
            "n must be 1 when model names an ensemble (it returns one chosen answer)",
            Some("n"),
        ));
    }
    if params.tools.is_some() {
        return Err(ApiError::invalid(
            "tools are not supported with ensembles yet: call a member model directly",
            Some("tools"),
        ));
    }
    let strategy = Strategy::parse(&ensemble.strategy)
        .ok_or_else(|| ApiError::internal(format!("stored strategy {}", ensemble.strategy)))?;
    let wants_logprobs = params.logprobs;
    params.logprobs = true;
    let name = ensemble.id.as_str();
    let (answered, winner, scores, layer) = match (strategy, &ensemble.fallback) {
        (Strategy::Layered, Some(fallback)) => {
            let threshold = ensemble.threshold.unwrap_or(0.0);
            let mut answered = answer_all(state, caller, name, &ensemble.members, &params).await?;
            if confident(&answered[0].answer(), threshold) {
                (answered, 0, None, Some("member"))
            } else {
                let models = [fallback.clone()];
                answered.extend(answer_all(state, caller, name, &models, &params).await?);
                (answered, 1, None, Some("fallback"))
            }
        }
        _ => {
            let answered = answer_all(state, caller, name, &ensemble.members, &params).await?;
            let answers: Vec<Answer> = answered.iter().map(Answered::answer).collect();
            let c = choose(strategy, &answers);
            (answered, c.winner, Some(c.scores), None)
        }
    };
    let report = EnsembleReport {
        strategy: ensemble.strategy.clone(),
        winner: answered[winner].model.clone(),
        layer,
        threshold: layer.and(ensemble.threshold),
        answers: answered
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let answer = a.answer();
                MemberAnswer {
                    model: a.model.clone(),
                    content: answer.text,
                    mean_logprob: answer.mean_logprob,
                    score: scores.as_ref().map(|s| s[i]),
                }
            })
            .collect(),
    };
    let usage = CompletionUsage {
        prompt_tokens: answered.iter().map(|a| a.done.usage.prompt_tokens).sum(),
        completion_tokens: answered
            .iter()
            .map(|a| a.done.usage.completion_tokens)
            .sum(),
        total_tokens: 0,
    };
    let mut response = completion_from(
        answered
            .into_iter()
            .nth(winner)
            .expect("the winner is one of the answers")
            .done,
        name,
    );
    response.usage = CompletionUsage {
        total_tokens: usage.prompt_tokens + usage.completion_tokens,
        ..usage
    };
    if !wants_logprobs {
        for c in &mut response.choices {
            c.logprobs = None;
        }
    }
    response.ensemble = Some(report);
    if stream {
        return Ok(sse_response(futures_util::stream::iter(
            chunks_of(response, include_usage)
                .into_iter()
                .map(Ok::<_, actix_web::Error>),
        )));
    }
    Ok(HttpResponse::Ok().json(response))
}

/// The stream of a chosen answer: the role, the text (with its log-probabilities when asked),
/// the finish chunk carrying the report, the usage chunk with `include_usage`, `[DONE]`.
fn chunks_of(response: CreateChatCompletionResponse, include_usage: bool) -> Vec<Bytes> {
    let id = random_id("chatcmpl");
    let chunk = |choices: Vec<ChunkChoice>, usage: Option<CompletionUsage>, last: bool| {
        sse_data(&ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk",
            created: response.created,
            model: response.model.clone(),
            system_fingerprint: None,
            choices,
            usage: include_usage.then_some(usage),
            ensemble: if last {
                response.ensemble.clone()
            } else {
                None
            },
        })
    };
    let mut out = vec![chunk(
        vec![ChunkChoice::new(0, ChunkDelta::first(), None)],
        None,
        false,
    )];
    if let Some(c) = response.choices.first() {
        let text = c.message.content.clone().unwrap_or_default();
        if !text.is_empty() {
            let mut piece = ChunkChoice::new(0, ChunkDelta::text(&text), None);
            piece.logprobs = c.logprobs.clone();
            out.push(chunk(vec![piece], None, false));
        }
        let reason = Some(finish_reason(&c.finish_reason));
        out.push(chunk(
            vec![ChunkChoice::new(0, ChunkDelta::default(), reason)],
            None,
            true,
        ));
    }
    if include_usage {
        out.push(chunk(Vec::new(), Some(response.usage.clone()), false));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}
